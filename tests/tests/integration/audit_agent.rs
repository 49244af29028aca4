//! The running agent's audit log, verified by `enforcer audit verify`:
//! start, events, a mode switch through the control socket (with the
//! caller's uid and reason), a failed and a good reload, a checkpoint, the
//! stop; then a second agent adopts and continues the same chain.

use std::{net::IpAddr, time::Duration};

use enforcer_tests::{
    agent::{Agent, enforcer_at, verified_audit_summary},
    privileged,
    probe::{Proto, attempt},
    scenario::*,
    skip_unless,
};

#[test]
fn the_agent_writes_a_verifiable_record_of_what_it_did() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let socket = s.control_socket();
    let config = s
        .config_with("observe", "allow", &[], "", &s.events_table(1000, 1000))
        // Checkpoints every second, so this short run has a few.
        .replace("[audit]\n", "[audit]\ncheckpoint_interval = \"1s\"\n");
    let mut agent = s.start(&config);
    let denied = IpAddr::V4(DENIED_V4);

    assert!(attempt(&s.sb, Proto::Tcp, denied).ok, "observe");
    let out = enforcer_at(
        &socket,
        &["mode", "enforce", "--reason", "ticket 9: go live"],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(attempt(&s.sb, Proto::Tcp, denied).refused(), "enforce");
    agent.wait_for_metrics("both events", Duration::from_secs(30), |m| {
        m.sum("enforcer_events_total", &[]) == 2.0
    });

    let good = std::fs::read_to_string(&agent.config).expect("config");
    std::fs::write(
        &agent.config,
        good.replace("approved = [\"EEA\"]", "approved = [\"EEA\", \"UK\"]"),
    )
    .expect("break config");
    assert!(!enforcer_at(&socket, &["reload"]).status.success());
    std::fs::write(&agent.config, &good).expect("restore config");
    assert!(enforcer_at(&socket, &["reload"]).status.success());
    // At least one checkpoint while running (interval 1 s).
    std::thread::sleep(Duration::from_millis(1500));
    let records = agent.scrape().sum("enforcer_audit_records_total", &[]);
    assert!(agent.stop().success(), "{}", agent.log());

    let v = verified_audit_summary(&s.audit_log());
    let kinds = &v["kinds"];
    assert_eq!(kinds["agent_start"], 1, "{v:#}");
    assert_eq!(kinds["agent_stop"], 1, "{v:#}");
    assert_eq!(kinds["event"], 2, "{v:#}");
    assert!(kinds["checkpoint"].as_u64().unwrap_or(0) >= 2, "{v:#}");
    assert_eq!(v["events"]["by_verdict"]["would_deny"], 1, "{v:#}");
    assert_eq!(v["events"]["by_verdict"]["denied"], 1, "{v:#}");
    assert_eq!(
        v["policy_loads"]["ok"], 2,
        "start and the good reload: {v:#}"
    );
    assert_eq!(v["policy_loads"]["failed"], 1, "{v:#}");
    let failure = v["policy_loads"]["failures"][0].to_string();
    assert!(failure.contains("UK"), "the failure says why: {failure}");
    let timeline = v["mode_timeline"].as_array().expect("timeline");
    assert_eq!(timeline.len(), 1, "{v:#}");
    assert_eq!(timeline[0]["from"], "observe");
    assert_eq!(timeline[0]["to"], "enforce");
    assert_eq!(timeline[0]["uid"], 0);
    assert_eq!(timeline[0]["reason"], "ticket 9: go live");
    assert_eq!(v["last_checkpoint"]["mode"], "enforce", "{v:#}");
    assert!(
        v["records"].as_f64().unwrap_or(0.0) >= records,
        "every record the metric counted is in the file: {v:#}"
    );
    let first_records = v["records"].as_u64().expect("records");

    // A second agent adopts the pins and continues the same chain.
    let mut second = Agent::start_with(&agent.config, &s.pin_dir)
        .unwrap_or_else(|f| panic!("restart: {}", f.stderr));
    assert!(second.stop().success(), "{}", second.log());
    drop(agent);
    let v = verified_audit_summary(&s.audit_log());
    assert_eq!(v["agent"]["starts"], 2, "{v:#}");
    assert_eq!(v["agent"]["adopted"], 1, "{v:#}");
    assert!(v["records"].as_u64().expect("records") > first_records);
    assert_eq!(
        v["last_checkpoint"]["mode"], "enforce",
        "the switch outlived the restart: {v:#}"
    );
}
