//! The egress-enforcer agent as a library; `main.rs` is a thin wrapper.
//!
//! Modules by concern:
//! - [`agent`]: the running agent: start-up, main loop, reloads, control
//!   requests;
//! - [`config`]: the TOML config, validated before anything touches the kernel;
//! - [`policy`]: config + GeoIP sources -> what one policy slot holds;
//! - [`flip`]: address space new GeoIP data moves between allowed and
//!   refused (`geoip diff`, the reload guard);
//! - [`baseline`]: the GeoIP data in force, kept in the runtime directory
//!   so a restarted agent's reload guard can compare with it;
//! - [`datapath`]: load/adopt, slot writer and flip, attach/pin, counters,
//!   uninstall;
//! - [`scope`]: configured cgroups -> attach targets;
//! - [`events`]: the kernel's refused/would-refuse events to JSON lines;
//! - [`metrics`]: the Prometheus collector and `GET /metrics`;
//! - [`status`]: what the agent reports about itself and what the kernel
//!   holds (shared by `status`, the metrics and the control socket);
//! - [`control`]: the unix control socket (protocol, peer check, server,
//!   client);
//! - [`runtime_mode`]: mode changes made through it, kept across reloads
//!   and restarts;
//! - [`watch`]: reload when a GeoIP database is replaced on disk;
//! - [`audit`]: the tamper-evident audit log (writer and verifier);
//! - [`paths`]: runtime paths and their discovery;
//! - [`cli`]: one module per CLI verb.
//!
//! Library modules return `thiserror` errors; the CLI verbs and the agent
//! are the application layer and use `anyhow` to add context.

pub mod agent;
pub mod allowed_sample;
pub mod audit;
pub mod baseline;
pub mod cli;
pub mod config;
pub mod control;
pub mod datapath;
pub mod events;
pub mod flip;
pub mod metrics;
pub mod paths;
pub mod policy;
pub mod runtime_mode;
pub mod scope;
pub mod status;
pub mod watch;
pub mod whatif;
