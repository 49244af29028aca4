//! Support for the privileged integration tests (`tests/tests/integration/`:
//! one test binary, one module per concern; see tests/README.md), for
//! `cargo xtask demo` and for the benchmark (the `enforcer-bench` crate).
//!
//! - [`sandbox`]: two network namespaces joined by a veth pair and a child
//!   cgroup, removed on drop (also when a test panics), with stale ones of
//!   dead test processes swept on creation;
//! - [`agent`]: the real `enforcer` binary started with a config, waited
//!   for through sd_notify READY=1, stopped with SIGTERM and uninstalled;
//! - [`probe`]: real clients run inside the sandbox (`ee-probe`): TCP, UDP,
//!   held connections, transfers, TCP Fast Open, raw ICMP;
//! - [`metrics`]: scraping and reading `/metrics`;
//! - [`events`]: reading the agent's event file;
//! - [`kernel`]: asking the kernel what is attached to a cgroup;
//! - [`exec_as`]: a copy of a built binary that another uid can exec;
//! - [`scenario`]: the common set-up of one test;
//! - [`container`]: a booted Debian 12 machine (systemd-nspawn, real
//!   systemd 252) on an overlay of the cached root fs, in the sandbox's
//!   client namespace, removed on drop;
//! - [`prometheus`]: a real Prometheus and Alertmanager for the fleet
//!   test, and a webhook receiver collecting the alerts, killed on drop;
//! - [`postgres`]: PostgreSQL servers in the sandbox's server namespace,
//!   the peers the storage host writes user rows to;
//! - [`rsyslog`]: rsyslog instances running the shipped configurations
//!   (packaging/rsyslog/), a host's and a collector's, killed on drop;
//! - [`tamper`]: rewriting an audit log and re-hashing it as root would;
//! - [`router`]: three network namespaces (container, router, server) for
//!   forwarded traffic, with the agent in the router's, and running things
//!   inside a namespace from the test process.
//!
//! Everything here panics on failure, with a message saying what failed:
//! these are tests (aya's test/ does the same).

pub mod agent;
pub mod container;
pub mod events;
pub mod exec_as;
pub mod kernel;
pub mod metrics;
pub mod postgres;
pub mod probe;
pub mod prometheus;
pub mod router;
pub mod rsyslog;
pub mod sandbox;
pub mod scenario;
pub mod tamper;
pub mod testrun;

/// Whether the tests run in CI, where a skipped kernel test is a failure.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Skips a test that cannot run here: prints `skipping: <why>`, and fails
/// instead when running in CI.
#[macro_export]
macro_rules! skip_unless {
    ($cond:expr, $($why:tt)+) => {
        if !$cond {
            let why = format!($($why)+);
            if $crate::in_ci() {
                panic!("cannot run in CI: {why}");
            }
            eprintln!("skipping: {why}");
            return;
        }
    };
}

/// Whether this process can do what the kernel tests need (root).
pub fn privileged() -> bool {
    nix::unistd::geteuid().is_root()
}
