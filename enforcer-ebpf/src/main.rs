//! The egress-enforcer datapath.
//!
//! Every hook asks one question, through [`decide`]: is this destination in an
//! approved jurisdiction, and what does the current mode do about it? The
//! hooks only translate their context into an address, apply the answer and
//! count it.
//!
//! - [`connect`]: cgroup `connect4`/`connect6`, so TCP connect() and UDP
//!   connect() to a refused destination fail with EPERM;
//! - [`sendmsg`]: cgroup `sendmsg4`/`sendmsg6`, so sendto() on unconnected
//!   UDP sockets fails with EPERM;
//! - [`sock_addr`]: what those four share, including the verdict they cache
//!   on the socket;
//! - [`skb`]: cgroup `skb/egress`, the packet-level backstop for what the
//!   socket hooks do not see (sockets connected before the agent attached,
//!   raw sockets), deciding once per socket through that cache;
//! - [`tcx`]: tcx egress on configured interfaces, for the traffic the host
//!   forwards (containers, VMs), which no local socket sends.
//!
//! Shared: [`decide`], [`mode`] (global mode or per-cgroup override),
//! [`scope`] (the scope entry a decision is counted under), [`counters`],
//! [`sample`] (the bounded sample of allowed destinations for `whatif`),
//! [`events`] (rate-limited ring buffer), [`packet`] (IP
//! header parsing), [`diagnostics`] (internal failures: counted and logged
//! through aya-log), [`maps`].
#![no_std]
#![no_main]
// Atomic adds on per-CPU counters (see counters.rs); the datapath is built
// with the nightly toolchain anyway (-Z build-std=core).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod connect;
mod counters;
mod decide;
mod diagnostics;
mod events;
mod geo;
mod maps;
mod mode;
mod packet;
mod runtime;
mod sample;
mod scope;
mod sendmsg;
mod skb;
mod sock_addr;
mod tcx;
