//! The coverage window of a service restart: how long after a scope
//! cgroup is created again (as systemd does on every restart) the kernel
//! lists the agent's programs on it. A process that starts in the new
//! cgroup and connects inside this window is not decided; see
//! `enforcer/src/agent/coverage.rs` and the README's "Scope that follows
//! the services".
//!
//! Measured from the test's side with the kernel's own answer
//! (`BPF_PROG_QUERY`, polled every 100 µs), not from the agent's log: the
//! real agent binary, scoped to a child cgroup of a sandbox, in enforce
//! mode, the cgroup removed and created again `ROUNDS` times.

use std::{
    fs,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use enforcer_tests::{kernel::agent_programs, sandbox::remove_cgroup, scenario::Scenario};

use crate::report::{Report, Row};

/// Re-creations measured (bounded: each is a few milliseconds).
const ROUNDS: usize = 50;

pub fn measure(rep: &mut Report) -> Result<()> {
    let scn = Scenario::new();
    let svc = scn.sb.cgroup.join("svc");
    fs::create_dir(&svc).context("creating the service cgroup")?;
    let config = scn.config_scoped("enforce", "allow", &[], &[&svc], "", "");
    let _agent = scn.start(&config);
    let mut row = Row::new(
        "coverage",
        "scope cgroup created again -> every hook attached",
        "ms",
    );
    for round in 0..ROUNDS {
        remove_cgroup(&svc);
        fs::create_dir(&svc).context("creating the service cgroup again")?;
        let created = Instant::now();
        while agent_programs(&svc) < 5 {
            if created.elapsed() > Duration::from_secs(10) {
                bail!("round {round}: the re-created cgroup was not covered within 10 s");
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        row.samples.push(created.elapsed().as_secs_f64() * 1e3);
    }
    rep.push(row);
    rep.notes.push(format!(
        "coverage: the real agent scoped to one cgroup, which is removed and created again {ROUNDS} times; the time from mkdir() returning to BPF_PROG_QUERY listing the agent's program on all five cgroup hooks, polled every 100 µs (inotify wakes the agent; a periodic check every second is the backstop)"
    ));
    Ok(())
}
