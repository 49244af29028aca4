//! cgroup `connect4` / `connect6`: TCP connect() and UDP connect().
//!
//! Returning 0 makes connect() fail with EPERM; 1 lets it proceed
//! (https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/cgroup.c,
//! `__cgroup_bpf_run_filter_sock_addr`).

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use enforcer_common::Hook;

use crate::{
    counters::count_connection,
    decide::{Dest, decide},
};

const REFUSE: i32 = 0;
const PROCEED: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel passes a valid bpf_sock_addr; user_ip4 is readable
    // in connect4 programs (a 4-byte context load).
    let ip = unsafe { (*ctx.sock_addr).user_ip4 };
    apply(Hook::Connect4, Dest::V4(ip.to_ne_bytes()))
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    let mut b = [0u8; 16];
    for i in 0..4 {
        // SAFETY: see above; volatile keeps LLVM from merging two words into
        // one 8-byte load, which the verifier would reject.
        let word = unsafe { core::ptr::read_volatile(&(*ctx.sock_addr).user_ip6[i]) };
        b[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    apply(Hook::Connect6, Dest::from_v6(b))
}

#[inline(always)]
fn apply(hook: Hook, dest: Dest) -> i32 {
    let d = decide(dest);
    count_connection(hook, &d);
    if d.refuses() { REFUSE } else { PROCEED }
}
