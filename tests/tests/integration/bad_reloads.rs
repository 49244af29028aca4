//! Bad input at reload time never changes what is in force: a corrupt
//! database, a config with an unknown country code, and a database whose
//! table does not fit the maps each make `enforcer reload` fail with an
//! error that names the problem, count a failed load, show the error in
//! `enforcer status` and the audit log, and leave the previous policy
//! serving (same generation, same verdicts).

use std::{fmt::Write as _, fs, net::IpAddr, path::Path};

use enforcer_tests::{
    agent::{Agent, enforcer_at, verified_audit_summary},
    privileged,
    probe::{Proto, attempt},
    scenario::*,
    skip_unless,
};

fn generation(socket: &Path) -> u64 {
    let out = enforcer_at(socket, &["status", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    v["agent"]["generation"].as_u64().expect("generation")
}

/// Reloads with `config` in place and checks the failure and that nothing
/// changed; `needles` must all be in the error.
fn assert_reload_fails(s: &Scenario, agent: &Agent, config: &str, needles: &[&str], failures: f64) {
    let socket = s.control_socket();
    let before = generation(&socket);
    fs::write(&agent.config, config).expect("write config");
    let out = enforcer_at(&socket, &["reload"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the reload must fail: {out:?}");
    for n in needles {
        assert!(err.contains(n), "the error must name {n:?}: {err}");
    }
    let m = agent.scrape();
    assert_eq!(
        m.sum("enforcer_policy_loads_total", &[("result", "failure")]),
        failures,
        "{}",
        m.text
    );
    assert_eq!(generation(&socket), before, "no slot was flipped");
    assert!(
        attempt(&s.sb, Proto::Tcp, IpAddr::V4(DENIED_V4)).refused(),
        "the previous policy still refuses"
    );
    assert!(
        attempt(&s.sb, Proto::Tcp, IpAddr::V4(APPROVED_V4)).ok,
        "and still allows"
    );
}

#[test]
fn bad_reloads_leave_the_previous_policy_serving() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let good = s.config("enforce", "allow", &[]);
    let agent = s.start(&good);

    // 1. A corrupt database: bytes that are not a MaxMind DB.
    let corrupt = s.dir.path().join("corrupt.mmdb");
    fs::write(
        &corrupt,
        b"\x00\x01 definitely not a MaxMind DB \xab\xcd\xefMaxMind.com",
    )
    .expect("write corrupt db");
    let corrupt_text = corrupt.display().to_string();
    assert_reload_fails(
        &s,
        &agent,
        &s.config("enforce", "allow", std::slice::from_ref(&corrupt)),
        &[&corrupt_text],
        1.0,
    );

    // 2. A country code that does not exist.
    assert_reload_fails(
        &s,
        &agent,
        &good.replace("approved = [\"EEA\"]", "approved = [\"EEA\", \"UK\"]"),
        &["\"UK\"", "not an assigned"],
        2.0,
    );

    // 3. A table one prefix larger than the maps hold: alternate countries
    // so that nothing aggregates.
    let capacity = enforcer_common::GEO_CAPACITY;
    let mut big = String::with_capacity(26 * (capacity as usize + 1));
    big.push_str("cidr,country\n");
    let base = u32::from(std::net::Ipv4Addr::new(11, 0, 0, 0));
    for i in 0..=capacity {
        let ip = std::net::Ipv4Addr::from(base + i);
        let _ = writeln!(big, "{ip}/32,{}", if i % 2 == 0 { "FR" } else { "IT" });
    }
    let huge = s.dir.path().join("huge.csv");
    fs::write(&huge, big).expect("write huge db");
    assert_reload_fails(
        &s,
        &agent,
        &s.config("enforce", "allow", std::slice::from_ref(&huge)),
        &["GeoIP IPv4 table", &capacity.to_string()],
        3.0,
    );

    // The status says what went wrong last; a good reload clears it.
    let out = enforcer_at(&s.control_socket(), &["status"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("last error"),
        "{out:?}"
    );
    fs::write(&agent.config, &good).expect("restore config");
    let out = enforcer_at(&s.control_socket(), &["reload"]);
    assert!(out.status.success(), "{out:?}");

    // Each failure is in the audit log, with its error, and the log verifies.
    let v = verified_audit_summary(&s.audit_log());
    assert_eq!(v["policy_loads"]["failed"], 3, "{v:#}");
    assert_eq!(v["policy_loads"]["ok"], 2, "{v:#}");
    let failures = v["policy_loads"]["failures"].to_string();
    for needle in [corrupt_text.as_str(), "not an assigned", "GeoIP IPv4 table"] {
        assert!(failures.contains(needle), "{needle:?} in {failures}");
    }
}
