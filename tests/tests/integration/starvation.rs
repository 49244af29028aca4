//! No local user can starve the agent through its metrics port: another
//! uid (nobody) opens 2,000 connections to `/metrics` and sends each only
//! the first line of a request. Meanwhile the control socket still answers
//! `status`, a reload still goes through, the audit log still writes, and
//! once the connections are gone the metrics are served again. (Before the
//! listener had a connection cap and a header timeout, 1,093 such
//! connections held all 1,024 of the agent's descriptors.)

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Stdio},
    time::Duration,
};

use enforcer_tests::{
    agent::{Agent, enforcer_at},
    exec_as::{self, ReachableCopy},
    privileged,
    sandbox::probe_binary,
    scenario::*,
    skip_unless,
};

const NOBODY: u32 = 65_534;
const CONNECTIONS: usize = 2_000;

#[test]
fn half_open_metrics_connections_do_not_starve_the_agent() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let socket = s.control_socket();
    // The agent under the usual default limit of 1,024 open files, soft
    // and hard, so it cannot raise it: only its own bounds protect it.
    let config = s.dir.path().join("enforcer.toml");
    std::fs::write(&config, s.config("enforce", "allow", &[])).expect("write config");
    let agent = Agent::start_with_nofile(&config, &s.pin_dir, 1_024)
        .unwrap_or_else(|f| panic!("agent failed to start ({}):\n{}", f.status, f.stderr));

    // nobody, with room for the connections (root raises the limit before
    // giving up its uid), on loopback to the agent's metrics port.
    let probe = ReachableCopy::of(&probe_binary());
    let addr = agent.metrics;
    let mut cmd = Command::new(probe.path());
    cmd.args([
        "halfopen",
        &addr.ip().to_string(),
        &addr.port().to_string(),
        &CONNECTIONS.to_string(),
        "60000",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped());
    exec_as::limit_open_files(&mut cmd, 4096);
    exec_as::as_user(&mut cmd, NOBODY, &[]);
    let mut client = cmd.spawn().expect("run ee-probe halfopen as nobody");
    let mut stdout = BufReader::new(client.stdout.take().expect("probe stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("probe report");
    let report: serde_json::Value = serde_json::from_str(line.trim()).expect("probe JSON");
    // A few may time out in the kernel's queues; more than the 1,024
    // descriptors a default agent would have had must get through.
    let opened = report["opened"].as_u64().unwrap_or(0);
    let failed = report["failed"].as_u64().unwrap_or(0);
    assert_eq!(opened + failed, CONNECTIONS as u64, "{report}");
    assert!(
        opened > 1_024,
        "the flood got through to the agent: {report}"
    );

    // With them held: the control socket answers and a reload works.
    let out = enforcer_at(&socket, &["status", "--json"]);
    assert!(
        out.status.success(),
        "status while the port is flooded: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = enforcer_at(&socket, &["reload"]);
    assert!(
        out.status.success(),
        "reload while the port is flooded: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Let them go; the metrics are served again and nothing failed.
    if let Some(mut stdin) = client.stdin.take() {
        let _ = writeln!(stdin, "quit");
    }
    let _ = client.wait();
    let m = agent.wait_for_metrics("a scrape after the flood", Duration::from_secs(30), |m| {
        m.sum("enforcer_policy_loads_total", &[("result", "success")]) == 2.0
    });
    assert_eq!(
        m.sum("enforcer_audit_write_errors_total", &[]),
        0.0,
        "{}",
        m.text
    );
    let log = agent.log();
    assert!(
        !log.contains("Too many open files"),
        "the agent ran out of descriptors:\n{log}"
    );
}
