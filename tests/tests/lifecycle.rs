//! Enforcement outlives the agent: SIGTERM leaves it in place, a new agent
//! adopts the pinned maps (counters continue), `uninstall` removes it all.
//! Also the agent with a real GeoIP database layered under the test one.

use std::net::IpAddr;

use enforcer_tests::{
    agent::enforcer,
    kernel::agent_programs,
    privileged,
    probe::{Proto, attempt},
    scenario::*,
    skip_unless,
};

#[test]
fn enforcement_survives_the_agent_and_uninstall_removes_it() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let denied = IpAddr::V4(DENIED_V4);

    let mut first = s.start(&s.config("enforce", "allow", &[]));
    assert!(attempt(&s.sb, Proto::Tcp, denied).refused());
    assert!(
        first.stop().success(),
        "SIGTERM is a clean stop:\n{}",
        first.log()
    );
    assert!(
        first.log().contains("enforcement stays in place"),
        "{}",
        first.log()
    );

    // No agent runs; the pinned links and maps keep refusing.
    assert!(
        attempt(&s.sb, Proto::Tcp, denied).refused(),
        "enforcement must outlive the agent"
    );
    assert_eq!(agent_programs(&s.sb.cgroup), 5);

    // A new agent adopts the pins, replaces the links (no duplicates) and
    // switches to observe; the counters continue from the first agent's.
    let second = s.start(&s.config("observe", "allow", &[]));
    assert!(second.log().contains("adopting"), "{}", second.log());
    assert_eq!(
        agent_programs(&s.sb.cgroup),
        5,
        "old links replaced, not added to"
    );
    assert!(
        attempt(&s.sb, Proto::Tcp, denied).ok,
        "observe mode lets it through"
    );
    let m = second.scrape();
    let q = |verdict| {
        m.sum(
            "enforcer_connections_total",
            &[("country", DENIED_COUNTRY), ("verdict", verdict)],
        )
    };
    assert_eq!(
        q("denied"),
        2.0,
        "counts from before the restart continue\n{}",
        m.text
    );
    assert_eq!(q("would_deny"), 1.0, "{}", m.text);
    drop(second);

    // Dropping the agent ran `enforcer uninstall`: nothing is left.
    assert!(!s.pin_dir.exists());
    assert_eq!(agent_programs(&s.sb.cgroup), 0);
    let out = enforcer(&["uninstall", "--pin-dir", &s.pin_dir.display().to_string()]);
    assert!(out.status.success(), "uninstall is idempotent");
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing installed"));
}

#[test]
fn real_database_layered_under_the_test_database() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let real = real_geoip("GeoLite2-Country.mmdb");
    skip_unless!(
        real.is_some(),
        "EE_GEOIP_DIR has no GeoLite2-Country.mmdb (run `cargo xtask geoip fetch`)"
    );
    let s = Scenario::new();
    let agent = s.start(&s.config("enforce", "deny", &[real.expect("checked")]));
    // The test database wins where it has an answer.
    assert!(attempt(&s.sb, Proto::Tcp, IpAddr::V4(APPROVED_V4)).ok);
    assert!(attempt(&s.sb, Proto::Tcp, IpAddr::V4(DENIED_V4)).refused());
    let m = agent.scrape();
    let v4 = m.sum("enforcer_geoip_prefixes", &[("family", "ipv4")]);
    let v6 = m.sum("enforcer_geoip_prefixes", &[("family", "ipv6")]);
    assert!(
        v4 > 100_000.0 && v6 > 50_000.0,
        "a world database is loaded: {v4} + {v6}\n{}",
        m.text
    );
}

#[test]
fn sighup_reloads_and_a_bad_reload_keeps_the_policy_in_force() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let denied = IpAddr::V4(DENIED_V4);
    let agent = s.start(&s.config("observe", "allow", &[]));
    assert!(attempt(&s.sb, Proto::Tcp, denied).ok);

    let wait_for = |what: &str, ok: &dyn Fn(&enforcer_tests::metrics::Metrics) -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let m = agent.scrape();
            if ok(&m) {
                return m;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}:\n{}",
                agent.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };

    std::fs::write(&agent.config, s.config("enforce", "allow", &[])).expect("rewrite config");
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for("enforce mode", &|m| {
        m.sum("enforcer_mode", &[("mode", "enforce")]) == 1.0
    });
    assert!(
        attempt(&s.sb, Proto::Tcp, denied).refused(),
        "the reloaded policy is in force"
    );

    // A broken config: the reload fails, is counted, and changes nothing.
    std::fs::write(
        &agent.config,
        "mode = \"observe\"\napproved = [\"NOWHERE\"]\n",
    )
    .expect("break config");
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    let m = wait_for("the failed reload", &|m| {
        m.sum("enforcer_policy_loads_total", &[("result", "failure")]) == 1.0
    });
    assert_eq!(m.sum("enforcer_mode", &[("mode", "enforce")]), 1.0);
    assert!(
        attempt(&s.sb, Proto::Tcp, denied).refused(),
        "a failed reload leaves the policy in force"
    );
    assert!(agent.log().contains("reload failed"), "{}", agent.log());
    assert!(
        agent.log().contains(&agent.config.display().to_string()),
        "the error names the file:\n{}",
        agent.log()
    );
    assert_eq!(
        agent_programs(&s.sb.cgroup),
        5,
        "reloads keep the agent's links, they do not add more"
    );
}
