//! The highest violation-event rate the agent keeps up with: refused
//! connects from the sandbox client at a paced rate, stepping up through a
//! bounded list of rates, until the kernel reports an event it could not
//! hand over (`enforcer_events_suppressed_total{reason="ring_full"}`) or the
//! agent did not read and write every event. The agent runs with a rate
//! limit far above the highest step, so only the ring buffer and the
//! agent's reader can be the limit. Traffic stays in the sandbox.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use enforcer_tests::{agent::Agent, sandbox::addr, scenario::Scenario};

use crate::{connect, report::Row};

/// Rates tried, per second, lowest first; each for [`STEP`].
const RATES: &[u32] = &[
    1_000, 2_000, 5_000, 10_000, 20_000, 35_000, 50_000, 70_000, 100_000,
];
const STEP: Duration = Duration::from_millis(1000);

fn counts(agent: &Agent) -> (f64, f64) {
    let m = agent.scrape();
    (
        m.sum("enforcer_events_total", &[]),
        m.sum("enforcer_events_suppressed_total", &[]),
    )
}

/// One bounded search: the highest rate of [`RATES`] at which every event
/// arrived (0 when even the first failed), and the rate the client really
/// reached at that step.
fn search(scn: &Scenario, agent: &Agent) -> Result<(f64, f64)> {
    let mut best = (0.0, 0.0);
    for &rate in RATES {
        let count = (u64::from(rate) * STEP.as_millis() as u64 / 1000) as u32;
        let (e0, s0) = counts(agent);
        let (achieved, ok, failed) = connect::paced(scn, addr::DENIED_V4.into(), count, rate)?;
        if ok != 0 || failed != count {
            bail!("event rate: {ok} refused connects succeeded");
        }
        // The agent reads the ring buffer asynchronously: wait for it.
        let deadline = Instant::now() + Duration::from_secs(3);
        let (mut e1, mut s1) = counts(agent);
        while e1 - e0 < f64::from(count) && s1 == s0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            (e1, s1) = counts(agent);
        }
        let kept_up = s1 == s0 && e1 - e0 >= f64::from(count);
        println!(
            "  events: {rate}/s asked, {achieved:.0}/s reached: {} events, {} suppressed: {}",
            e1 - e0,
            s1 - s0,
            if kept_up { "kept up" } else { "fell behind" }
        );
        if !kept_up {
            break;
        }
        best = (f64::from(rate), achieved);
        if achieved < f64::from(rate) * 0.9 {
            // The client cannot go faster: higher steps would not test more.
            break;
        }
    }
    Ok(best)
}

pub fn measure(scn: &Scenario, db: &std::path::Path, runs: usize) -> Result<Vec<Row>> {
    let top = RATES.last().copied().unwrap_or(0);
    let config = scn.config_with(
        "enforce",
        "deny",
        &[db.to_owned()],
        "",
        &scn.events_table(top * 10, top * 10),
    );
    let mut agent = scn.start(&config);
    let mut step = Row::new(
        "violation events",
        "highest rate with every event delivered (step passed)",
        "events/s",
    );
    let mut reached = Row::new(
        "violation events",
        "client rate reached at that step",
        "events/s",
    );
    let r = (|| -> Result<()> {
        for _ in 0..runs {
            let (s, a) = search(scn, &agent)?;
            step.samples.push(s);
            reached.samples.push(a);
        }
        Ok(())
    })();
    agent.stop();
    agent.uninstall();
    r?;
    Ok(vec![step, reached])
}

/// How the event rate was measured, for the report.
pub fn note() -> String {
    format!(
        "violation events: the agent in enforce mode with its event rate limit at 10x the top step, events written to a file; refused connects from the sandbox client paced at each of {RATES:?} per second for {} ms; a step passes when the agent counted every event and the kernel suppressed none (ring buffer full); the search stops at the first failing step or when the client cannot reach the rate",
        STEP.as_millis()
    )
}
