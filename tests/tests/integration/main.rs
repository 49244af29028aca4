//! The privileged integration tests of egress-enforcer, as one test binary
//! with one module per concern (see tests/README.md).
//!
//! One binary links the agent library and the support crate once instead
//! of once per file, and `cargo test` runs its tests on threads in one
//! process: everything a test creates is therefore named after the process
//! *and* a per-process counter (the sandbox, scenario and router helpers of
//! `enforcer_tests` do that), and no test may change process-wide state
//! (working directory, environment, signal dispositions, its own uid or
//! namespaces outside a thread of its own). Test names are
//! `<module>::<test>`; `cargo xtask test -- <module>::` runs one concern.

mod allowed_sample;
mod audit;
mod audit_agent;
mod audit_report;
mod audit_signing;
mod backstop;
mod bad_input;
mod bad_reloads;
mod check;
mod connect;
mod continuity;
mod control;
mod counters_by_scope;
mod diagnostics;
mod events;
mod exceptions;
mod flat_tables;
mod fleet;
mod forwarded;
mod geoip_diff;
mod guard;
mod inbound;
mod kubernetes;
mod lifecycle;
mod offline;
mod operator;
mod overrides;
mod package_upgrade;
mod packet_test_run;
mod privileges;
mod promtool;
mod refresh;
mod reload_guard;
mod scope;
mod shipping;
mod sinks;
mod sources;
mod starvation;
mod storage_host;
mod top;
mod tunnelled;
mod unknown_and_exempt;
mod whatif;
