//! Enforcement outlives the agent: SIGTERM leaves it in place, a new agent
//! adopts the pinned maps (counters continue), `uninstall` removes it all.
//! Also the agent with a real GeoIP database layered under the test one.

use std::net::IpAddr;

use enforcer_tests::{
    agent::{Agent, enforcer, enforcer_at, verified_audit_summary},
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

    // `enforcer status` reads it all from the pins, with no agent running.
    let out = enforcer(&[
        "status",
        "--json",
        "--pin-dir",
        &s.pin_dir.display().to_string(),
        "--socket",
        &s.control_socket().display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    assert!(all["agent"].is_null(), "no agent runs: {all:#}");
    assert!(
        all["agent_unreachable"]
            .as_str()
            .is_some_and(|e| e.contains("control.sock")),
        "status says why the agent did not answer: {all:#}"
    );
    let status = &all["kernel"];
    assert_eq!(status["mode"], "enforce", "{status:#}");
    assert_eq!(status["connections"]["denied"], 2, "{status:#}");
    assert_eq!(
        status["denied_or_would_deny_by_country"][DENIED_COUNTRY], 2,
        "{status:#}"
    );
    assert_eq!(
        status["links"].as_array().map(Vec::len),
        Some(5),
        "{status:#}"
    );

    // A new agent adopts the pins, replaces the links (no duplicates) and
    // switches to observe; the counters continue from the first agent's.
    let mut second = s.start(&s.config("observe", "allow", &[]));
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

    // A runtime mode change, kept in the run directory for restarts...
    let out = enforcer_at(
        &s.control_socket(),
        &["mode", "enforce", "--reason", "before the uninstall"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runtime_modes = s.run_dir().join(enforcer::paths::RUNTIME_MODE_NAME);
    assert!(runtime_modes.exists(), "{}", runtime_modes.display());

    // `enforcer uninstall` (after the agent stopped) leaves nothing: no
    // pins, no programs, no runtime mode state that a later fresh start
    // would come back in; and it said who and why in the audit log first.
    second.uninstall();
    assert!(
        !runtime_modes.exists(),
        "the runtime mode state goes with the pins"
    );
    let summary = verified_audit_summary(&s.audit_log());
    let uninstalls = summary["uninstalls"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(uninstalls.len(), 1, "{summary:#}");
    assert_eq!(
        uninstalls[0]["reason"], "integration test cleanup",
        "{summary:#}"
    );
    assert_eq!(uninstalls[0]["uid"], 0, "{summary:#}");
    assert_eq!(
        summary["kinds"]["uninstall"], 1,
        "the last record, after the agent's stop: {summary:#}"
    );
    assert!(!s.pin_dir.exists());
    assert_eq!(agent_programs(&s.sb.cgroup), 0);
    let config = s.dir.path().join("enforcer.toml").display().to_string();
    let pin_dir = s.pin_dir.display().to_string();
    let out = enforcer(&["uninstall", "--pin-dir", &pin_dir, "--config", &config]);
    assert!(!out.status.success(), "no reason, no uninstall");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--reason"));
    let out = enforcer(&[
        "uninstall",
        "--pin-dir",
        &pin_dir,
        "--config",
        &config,
        "--reason",
        "again",
    ]);
    assert!(out.status.success(), "uninstall is idempotent");
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing installed"));
}

/// An upgrade to a new layout version: the maps and links an agent of the
/// previous layout left (here this agent's own, renamed to the previous
/// version's directory: attached, enforcing, holding counts) are not
/// adopted but retired once the new ones are attached, with no moment
/// unenforced. Its counters are carried: the new layout's continue from
/// them.
#[test]
fn a_new_layout_retires_the_previous_one() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let denied = IpAddr::V4(DENIED_V4);
    let version = enforcer_common::LAYOUT_VERSION;
    let ours = s.pin_dir.join(format!("v{version}"));
    let previous = s.pin_dir.join(format!("v{}", version - 1));

    let mut first = s.start(&s.config("enforce", "allow", &[]));
    assert!(attempt(&s.sb, Proto::Tcp, denied).refused());
    assert!(first.stop().success(), "{}", first.log());
    std::fs::rename(&ours, &previous).expect("rename the layout directory");
    assert!(
        attempt(&s.sb, Proto::Tcp, denied).refused(),
        "the previous layout's programs still enforce"
    );
    assert_eq!(agent_programs(&s.sb.cgroup), 5);

    // Observe mode: had the previous programs stayed attached, their
    // refusal would still win.
    let second = s.start(&s.config("observe", "allow", &[]));
    assert!(
        !second.log().contains("adopting"),
        "another layout is never adopted:\n{}",
        second.log()
    );
    assert!(
        second
            .log()
            .contains("detached and removed the pins of another layout version"),
        "{}",
        second.log()
    );
    assert!(!previous.exists(), "the previous layout's pins are gone");
    assert!(ours.exists());
    assert_eq!(agent_programs(&s.sb.cgroup), 5, "only the new links");
    assert!(
        attempt(&s.sb, Proto::Tcp, denied).ok,
        "only the new layout's programs decide"
    );
    for name in [
        "CONN_COUNTS",
        "PKT_COUNTS",
        "BYTE_COUNTS",
        "EVENT_STATS",
        "DP_ERRORS",
    ] {
        let carried = ours
            .join("maps")
            .join(format!("carried-v{}-{name}", version - 1));
        assert!(carried.exists(), "{} is pinned", carried.display());
    }
    let m = second.scrape();
    assert_eq!(
        m.sum("enforcer_connections_total", &[("verdict", "denied")]),
        2.0,
        "the previous layout's counts (both refusals) continue\n{}",
        m.text
    );
    assert_eq!(
        m.sum(
            "enforcer_connections_total",
            &[("scope", "carried"), ("verdict", "denied")]
        ),
        2.0,
        "carried counts have no scope entry: they are under scope=\"carried\"\n{}",
        m.text
    );
    assert_eq!(
        m.sum(
            "enforcer_connections_total",
            &[("country", DENIED_COUNTRY), ("verdict", "would_deny")]
        ),
        1.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.series("enforcer_datapath_errors_total").len(),
        enforcer_common::Fault::COUNT,
        "{}",
        m.text
    );
    assert_eq!(
        m.sum("enforcer_datapath_errors_total", &[]),
        0.0,
        "{}",
        m.text
    );
}

/// `enforcer status --json`'s `kernel` part (from the agent when one runs,
/// else from the pins).
fn kernel_status(s: &Scenario) -> serde_json::Value {
    let out = enforcer(&[
        "status",
        "--json",
        "--pin-dir",
        &s.pin_dir.display().to_string(),
        "--socket",
        &s.control_socket().display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    all["kernel"].clone()
}

/// (denied, denied or would deny to the denied country) as `status` says.
fn refusals(s: &Scenario) -> (u64, u64) {
    let k = kernel_status(s);
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    (
        n(&k["connections"]["denied"]),
        n(&k["denied_or_would_deny_by_country"][DENIED_COUNTRY]),
    )
}

/// The package upgrade from the previous release (EE_PREVIOUS_ENFORCER_BIN)
/// to this one, when it changes the layout: what the previous agent counted
/// is carried, so `status` and the metrics continue from it; a restart with
/// the same layout keeps it; `uninstall` removes it with everything else.
#[test]
fn counters_continue_across_a_layout_upgrade() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let previous = enforcer_tests::agent::previous_agent_binary();
    skip_unless!(
        previous.is_some(),
        "{}",
        enforcer_tests::agent::PREVIOUS_MISSING
    );
    let previous = previous.unwrap_or_default();
    let s = Scenario::new();
    let denied = IpAddr::V4(DENIED_V4);
    let config = s.config("enforce", "allow", &[]);
    let config_path = s.dir.path().join("enforcer.toml");
    std::fs::write(&config_path, &config).expect("write config");
    let mut old =
        Agent::start_binary(&previous, &config_path, &s.pin_dir, None).unwrap_or_else(|f| {
            panic!(
                "the previous agent failed to start ({}):\n{}",
                f.status, f.stderr
            )
        });
    let old_layout: Vec<String> = std::fs::read_dir(&s.pin_dir)
        .expect("the previous agent's pins")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('v'))
        .collect();
    let ours = format!("v{}", enforcer_common::LAYOUT_VERSION);
    skip_unless!(
        old_layout.len() == 1 && old_layout[0] != ours,
        "the previous release has this layout: nothing to carry"
    );
    let old_layout = old_layout[0].clone();

    const N: u64 = 7;
    for _ in 0..N {
        assert!(attempt(&s.sb, Proto::Tcp, denied).refused());
    }
    let (before, before_country) = refusals(&s);
    assert!(
        before >= N && before_country >= N,
        "{before} {before_country}"
    );
    old.stop();
    old.leave_pins();
    drop(old);

    let mut agent = s.start(&config);
    assert!(
        agent.log().contains(&format!(
            "counters carried from layout {}",
            &old_layout[1..]
        )),
        "{}",
        agent.log()
    );
    let maps = s.pin_dir.join(&ours).join("maps");
    for name in [
        "CONN_COUNTS",
        "PKT_COUNTS",
        "BYTE_COUNTS",
        "EVENT_STATS",
        "DP_ERRORS",
    ] {
        let carried = maps.join(format!("carried-{old_layout}-{name}"));
        assert!(carried.exists(), "{} is pinned", carried.display());
    }
    let (after, after_country) = refusals(&s);
    assert!(
        after >= before && after_country >= before_country,
        "the previous layout's counts continue: {before} -> {after}, {before_country} -> {after_country}"
    );
    let k = kernel_status(&s);
    assert_eq!(
        k["counters_carried_from"],
        serde_json::json!([old_layout[1..].parse::<u32>().unwrap_or(0)]),
        "{k:#}"
    );

    const M: u64 = 5;
    for _ in 0..M {
        assert!(attempt(&s.sb, Proto::Tcp, denied).refused());
    }
    let (grown, grown_country) = refusals(&s);
    eprintln!(
        "denied: {before} under {old_layout} ({N} refusals), {after} after the upgrade, \
         {grown} after {M} more; to {DENIED_COUNTRY}: {before_country}, {after_country}, {grown_country}"
    );
    assert_eq!((grown, grown_country), (after + M, after_country + M));
    let m = agent.scrape();
    assert_eq!(
        m.sum(
            "enforcer_connections_total",
            &[("country", DENIED_COUNTRY), ("verdict", "denied")]
        ),
        grown_country as f64,
        "the metrics say what status says\n{}",
        m.text
    );
    // The previous layout counted by no scope entry: its counts are
    // `carried`, this layout's are the sandbox cgroup's.
    let scope = s.sb.cgroup.display().to_string();
    for (label, want) in [("carried", after_country), (scope.as_str(), M)] {
        assert_eq!(
            m.sum(
                "enforcer_connections_total",
                &[
                    ("scope", label),
                    ("country", DENIED_COUNTRY),
                    ("verdict", "denied")
                ]
            ),
            want as f64,
            "scope {label}\n{}",
            m.text
        );
    }

    // A restart with the same layout adopts the pins, carried ones too.
    agent.stop();
    agent.leave_pins();
    drop(agent);
    let mut agent = s.start(&config);
    assert!(agent.log().contains("adopting"), "{}", agent.log());
    assert_eq!(refusals(&s), (grown, grown_country));

    agent.uninstall();
    assert!(!s.pin_dir.exists(), "nothing is left");
    assert_eq!(agent_programs(&s.sb.cgroup), 0);
}

#[test]
fn real_database_layered_under_the_test_database() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let real = real_geoip("GeoLite2-Country.mmdb");
    skip_unless!(
        real.is_some(),
        "EE_GEOIP_DIR has no GeoLite2-Country.mmdb (run `cargo xtask geoip fetch`)"
    );
    let real = real.expect("checked");
    let s = Scenario::new();
    let agent = s.start(&s.config("enforce", "deny", std::slice::from_ref(&real)));
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
    // The database's identity and the maps' fill, as the agent reports them.
    let info = geoip::Source::open(&real)
        .and_then(|src| src.load())
        .expect("load the real database")
        .info;
    let epoch = info.build_epoch.expect("a MaxMind DB has a build epoch") as f64;
    let name = [("database", "GeoLite2-Country.mmdb")];
    assert_eq!(
        m.sum("enforcer_geoip_database_build_timestamp_seconds", &name),
        epoch,
        "{}",
        m.text
    );
    let age = m.sum("enforcer_geoip_database_age_seconds", &name);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(
        (now - epoch - age).abs() < 600.0,
        "age {age} is now - build time ({})",
        now - epoch
    );
    // The flat tables' own limits: IPv4 starts inside split /16s and IPv6
    // ranges.
    let starts = m.sum("enforcer_map_entries", &[("map", "geo_ipv4_entries")]);
    let ranges = m.sum("enforcer_map_entries", &[("map", "geo_ipv6_ranges")]);
    assert!(
        starts > 10_000.0 && ranges > 10_000.0,
        "a world database has many IPv4 ranges in split /16s ({starts}) and many IPv6 ranges ({ranges}; {v6} prefixes)"
    );
    assert_eq!(
        m.sum("enforcer_map_capacity", &[("map", "geo_ipv4_entries")]),
        enforcer_common::GEO4_TREE_CAPACITY as f64
    );
    assert_eq!(
        m.sum("enforcer_map_capacity", &[("map", "geo_ipv6_ranges")]),
        f64::from(enforcer_common::GEO6_CAPACITY)
    );
    for hook in ["connect4", "connect6", "sendmsg4", "sendmsg6", "skb_egress"] {
        assert_eq!(
            m.sum("enforcer_programs_attached", &[("hook", hook)]),
            1.0,
            "{hook}: one scope cgroup\n{}",
            m.text
        );
    }

    // Elsewhere the real database decides. The sandbox has no route to the
    // Internet, so a destination the datapath lets through fails later, in
    // routing (ENETUNREACH), and one it refuses fails with EPERM: the errno
    // tells which layer answered, and no packet leaves either way.
    let table = geoip::Source::open(&real)
        .and_then(|src| src.load())
        .expect("load the real database")
        .table;
    let country = |ip: IpAddr| table.lookup(ip).map(|(_, c)| c.as_str().to_owned());
    let in_country = |code: &str, v6: bool| -> IpAddr {
        let hit = if v6 {
            table
                .v6
                .prefixes()
                .find(|(_, c)| c.as_str() == code)
                .map(|(n, _)| IpAddr::V6((u128::from(n.network()) + 1).into()))
        } else {
            table
                .v4
                .prefixes()
                .find(|(_, c)| c.as_str() == code)
                .map(|(n, _)| IpAddr::V4((u32::from(n.network()) + 1).into()))
        };
        hit.unwrap_or_else(|| panic!("the real database has no {code} network"))
    };
    for v6 in [false, true] {
        let approved = in_country("DE", v6);
        let denied = in_country("CN", v6);
        assert_eq!(country(approved).as_deref(), Some("DE"));
        assert_eq!(country(denied).as_deref(), Some("CN"));
        let a = attempt(&s.sb, Proto::Tcp, approved);
        assert!(
            !a.ok && a.errno == Some(libc::ENETUNREACH),
            "{approved} (DE) passes the datapath and fails in routing: {a:?}"
        );
        let d = attempt(&s.sb, Proto::Udp, denied);
        assert!(d.refused(), "{denied} (CN) is refused: {d:?}");
    }
    let m = agent.scrape();
    assert_eq!(
        m.sum(
            "enforcer_connections_total",
            &[("country", "CN"), ("verdict", "denied")]
        ),
        2.0,
        "{}",
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
        agent.wait_for_metrics(what, std::time::Duration::from_secs(60), ok)
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

#[test]
fn reloads_apply_database_changes_in_place_both_ways() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let agent = s.start(&s.config("enforce", "deny", &[]));
    let check = |approved: IpAddr, denied: IpAddr| {
        for proto in [Proto::Tcp, Proto::Udp] {
            let a = attempt(&s.sb, proto, approved);
            assert!(a.ok, "{approved} ({proto:?}) is approved now: {a:?}");
            let d = attempt(&s.sb, proto, denied);
            assert!(d.refused(), "{denied} ({proto:?}) is refused now: {d:?}");
        }
    };
    let reload = |loads: f64| {
        agent.signal(nix::sys::signal::Signal::SIGHUP);
        agent.wait_for_metrics(
            &format!("reload {loads}"),
            std::time::Duration::from_secs(60),
            |m| m.sum("enforcer_policy_loads_total", &[("result", "success")]) >= loads,
        );
    };
    check(IpAddr::V4(APPROVED_V4), IpAddr::V4(DENIED_V4));
    check(IpAddr::V6(APPROVED_V6), IpAddr::V6(DENIED_V6));

    // Swap the countries of the two hosts in the database the agent reads:
    // the reload writes only the difference into the inactive slot.
    let swapped = TEST_DB_CSV
        .replace(",DE", ",XX")
        .replace(",US", ",DE")
        .replace(",XX", ",US");
    std::fs::write(&s.db, swapped).expect("rewrite the test database");
    reload(2.0);
    check(IpAddr::V4(DENIED_V4), IpAddr::V4(APPROVED_V4));
    check(IpAddr::V6(DENIED_V6), IpAddr::V6(APPROVED_V6));

    // And back: the slot written now is the one first filled at start.
    std::fs::write(&s.db, TEST_DB_CSV).expect("restore the test database");
    reload(3.0);
    check(IpAddr::V4(APPROVED_V4), IpAddr::V4(DENIED_V4));
    check(IpAddr::V6(APPROVED_V6), IpAddr::V6(DENIED_V6));
    let m = agent.scrape();
    assert!(
        m.sum("enforcer_geoip_prefixes", &[("family", "ipv4")]) == 2.0
            && m.sum("enforcer_geoip_prefixes", &[("family", "ipv6")]) == 2.0,
        "{}",
        m.text
    );
}

/// geoipupdate's way: a new file written beside the database and renamed
/// over it. The agent reloads by itself (no signal), and a file that does
/// not load leaves the policy in force.
#[test]
fn replacing_a_database_file_reloads_it() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let denied = IpAddr::V4(DENIED_V4);
    let agent = s.start(&s.config("enforce", "allow", &[]));
    assert!(attempt(&s.sb, Proto::Tcp, denied).refused());
    let loads = |result: &str| -> f64 {
        agent
            .scrape()
            .sum("enforcer_policy_loads_total", &[("result", result)])
    };
    assert_eq!(loads("success"), 1.0);

    let replace = |text: &str| {
        let tmp = s.dir.path().join(".test-geo.csv.new");
        std::fs::write(&tmp, text).expect("write the new database");
        std::fs::rename(&tmp, &s.db).expect("rename it over the old one");
    };
    replace(&TEST_DB_CSV.replace("198.51.100.20/32,US", "198.51.100.20/32,DE"));
    agent.wait_for_metrics(
        "the reload the rename triggers",
        std::time::Duration::from_secs(30),
        |m| m.sum("enforcer_policy_loads_total", &[("result", "success")]) == 2.0,
    );
    assert!(
        attempt(&s.sb, Proto::Tcp, denied).ok,
        "the new database locates it in DE"
    );
    assert!(agent.log().contains("replaced on disk"), "{}", agent.log());

    // A broken database: the reload fails and the last good one serves.
    replace("cidr,country\n198.51.100.20/32,NOT-A-CODE\n");
    agent.wait_for_metrics(
        "the failed reload",
        std::time::Duration::from_secs(30),
        |m| m.sum("enforcer_policy_loads_total", &[("result", "failure")]) == 1.0,
    );
    assert!(attempt(&s.sb, Proto::Tcp, denied).ok, "the DE answer stays");
    assert_eq!(loads("success"), 2.0);
}
