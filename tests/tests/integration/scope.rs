//! Scope that follows the services: a scope cgroup removed and created
//! again (a service restart), one that does not exist when the agent
//! starts, a link pin deleted, a link detached by another process, a
//! scope interface created late and re-created. Each is covered again,
//! and the repair is visible in `status`, the metrics, the log and the
//! audit log.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    os::unix::fs::MetadataExt as _,
    path::Path,
    time::{Duration, Instant},
};

use enforcer_tests::{
    agent::{Agent, enforcer, enforcer_at, verified_audit_summary},
    kernel::{agent_programs, detach_pinned_link},
    privileged,
    probe::{Proto, Runner},
    router::Router,
    sandbox::{PORT, remove_cgroup, sh},
    scenario::*,
    skip_unless,
};

/// How long a repair may take: the loop looks every second and on every
/// inotify or netlink notification; this is generous for a loaded machine.
const REPAIR: Duration = Duration::from_secs(15);

fn denied_v4() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(DENIED_V4), PORT)
}

/// The coverage entry of `scope` in a status answer.
fn entry(st: &serde_json::Value, scope: &Path) -> serde_json::Value {
    st["agent"]["coverage"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["scope"] == scope.display().to_string())
        .cloned()
        .unwrap_or_else(|| panic!("no coverage entry for {}: {st:#}", scope.display()))
}

/// Polls `status` until the entry of `cgroup` is covered with the cgroup's
/// current id; returns how long that took.
fn wait_covered(s: &Scenario, agent: &Agent, cgroup: &Path) -> Duration {
    let id = fs::metadata(cgroup).expect("stat the cgroup").ino();
    let start = Instant::now();
    loop {
        let e = entry(&s.status(), cgroup);
        if e["state"] == "covered" && e["id"] == id {
            assert!(
                e["hooks"]
                    .as_object()
                    .is_some_and(|h| h.len() == 5 && h.values().all(|v| v == true)),
                "every hook attached: {e:#}"
            );
            return start.elapsed();
        }
        assert!(
            start.elapsed() < REPAIR,
            "{} (id {id}) was not covered: {e:#}\n{}",
            cgroup.display(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn repairs(agent: &Agent, cause: &str) -> f64 {
    agent
        .scrape()
        .sum("enforcer_coverage_repairs_total", &[("cause", cause)])
}

/// A service restarted 50 times (its cgroup removed and created again, as
/// systemd does): once `status` says the new cgroup is covered, a new
/// process there is refused, every round.
#[test]
fn a_restarted_service_is_covered_again_in_every_round() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    const ROUNDS: u32 = 50;
    let s = Scenario::new();
    let svc = s.sb.cgroup.join("svc");
    fs::create_dir(&svc).expect("create the service cgroup");
    let config = s.config_scoped("enforce", "allow", &[], &[&svc], "", "");
    let mut agent = s.start(&config);
    let runner = Runner::new(&s.sb).in_cgroup(Some(&svc));
    assert!(runner.connect(Proto::Tcp, denied_v4(), 1)[0].refused());

    let mut windows = Vec::new();
    for round in 1..=ROUNDS {
        remove_cgroup(&svc);
        fs::create_dir(&svc).expect("create the service cgroup again");
        windows.push(wait_covered(&s, &agent, &svc));
        let a = runner.connect(Proto::Tcp, denied_v4(), 1);
        assert!(
            a[0].refused(),
            "round {round}: the new cgroup is covered but the connection was not refused: {a:?}\n{}",
            agent.log()
        );
    }
    windows.sort();
    println!(
        "status saw the re-created cgroup covered after: median {:?}, worst {:?} (includes status polling)",
        windows[windows.len() / 2],
        windows[windows.len() - 1]
    );
    assert_eq!(repairs(&agent, "cgroup_recreated"), f64::from(ROUNDS));
    let m = agent.scrape();
    let scope = svc.display().to_string();
    assert_eq!(
        m.sum("enforcer_scope_attached", &[("scope", scope.as_str())]),
        5.0,
        "{}",
        m.text
    );
    assert!(agent.log().contains("scope entry covered again"));
    agent.stop();
    let summary = verified_audit_summary(&s.audit_log());
    assert_eq!(
        summary["coverage"]["repaired"], ROUNDS,
        "one audit record per repair: {summary:#}"
    );
}

/// An agent started while its scope cgroup does not exist runs, says it
/// is waiting, and refuses from the cgroup once it is created.
#[test]
fn an_absent_scope_cgroup_waits_and_is_covered_once_created() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let later = s.sb.cgroup.join("later");
    let config = s.config_scoped("enforce", "allow", &[], &[&later], "", "");
    let path = s.dir.path().join("check.toml");
    fs::write(&path, &config).expect("write config");
    let out = enforcer(&["config", "check", "--config", &path.display().to_string()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success()
            && stdout.contains(&format!(
                "scope:    {} (does not exist yet",
                later.display()
            ))
            && stderr.contains("does not exist"),
        "config check reports the absent cgroup as waiting:\n{stdout}{stderr}"
    );

    let mut agent = s.start(&config);
    let e = entry(&s.status(), &later);
    assert_eq!(e["state"], "waiting", "{e:#}");
    let scope = later.display().to_string();
    assert_eq!(
        agent
            .scrape()
            .sum("enforcer_scope_waiting", &[("scope", scope.as_str())]),
        1.0
    );
    let out = enforcer_at(&s.control_socket(), &["status"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("does not exist; covered when it is created"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    fs::create_dir(&later).expect("create the scope cgroup");
    wait_covered(&s, &agent, &later);
    let a = Runner::new(&s.sb)
        .in_cgroup(Some(&later))
        .connect(Proto::Tcp, denied_v4(), 1);
    assert!(a[0].refused(), "{a:?}\n{}", agent.log());
    assert_eq!(repairs(&agent, "cgroup_created"), 1.0);
    assert_eq!(
        agent
            .scrape()
            .sum("enforcer_scope_waiting", &[("scope", scope.as_str())]),
        0.0
    );
    agent.stop();
}

/// A link pin deleted no longer detaches anything (the agent holds the
/// link) and is pinned again; a link detached by another process is
/// attached again. Both are logged, audited and counted.
#[test]
fn a_deleted_pin_and_a_detached_link_are_repaired() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let config = s.config("enforce", "allow", &[]);
    let mut agent = s.start(&config);
    let cgroup = &s.sb.cgroup;
    let id = fs::metadata(cgroup).expect("stat").ino();
    let links = enforcer::paths::PinLayout::new(&s.pin_dir).links;

    let pin = links.join(format!("connect4-cg{id}"));
    fs::remove_file(&pin).expect("delete a link pin");
    let runner = Runner::new(&s.sb);
    let a = runner.connect(Proto::Tcp, denied_v4(), 1);
    assert!(
        a[0].refused(),
        "the held link still decides after its pin is gone: {a:?}"
    );
    agent.wait_for_metrics("the pin repair", REPAIR, |m| {
        m.sum(
            "enforcer_coverage_repairs_total",
            &[("cause", "pin_deleted")],
        ) == 1.0
    });
    assert!(pin.exists(), "pinned again");

    let pin6 = links.join(format!("connect6-cg{id}"));
    detach_pinned_link(&pin6);
    agent.wait_for_metrics("the re-attach", REPAIR, |m| {
        m.sum(
            "enforcer_coverage_repairs_total",
            &[("cause", "link_detached")],
        ) == 1.0
    });
    assert_eq!(agent_programs(cgroup), 5, "one program per hook again");
    let a = runner.connect(Proto::Tcp, SocketAddr::new(IpAddr::V6(DENIED_V6), PORT), 1);
    assert!(a[0].refused(), "IPv6 refused again: {a:?}");
    let log = agent.log();
    assert!(
        log.contains("scope entry covered again")
            && log.contains("pin_deleted")
            && log.contains("link_detached"),
        "{log}"
    );
    agent.stop();
    let summary = verified_audit_summary(&s.audit_log());
    assert_eq!(summary["coverage"]["repaired"], 2, "{summary:#}");
}

/// A scope interface that does not exist at start is covered once it is
/// created, and again after it is deleted and created again (a new index).
#[test]
fn a_scope_interface_created_late_and_recreated_is_covered() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    const IFACE: &str = "eesb-x";
    const PEER: &str = "eesb-y";
    let r = Router::new();
    let mut agent = r.start(&r.config("enforce", &[IFACE]));
    let waiting =
        |m: &enforcer_tests::metrics::Metrics| m.sum("enforcer_scope_waiting", &[("scope", IFACE)]);
    assert_eq!(waiting(&agent.scrape()), 1.0);
    let add = || {
        sh(
            "ip",
            &[
                "-n",
                &r.router_ns,
                "link",
                "add",
                IFACE,
                "type",
                "veth",
                "peer",
                "name",
                PEER,
            ],
        );
    };
    add();
    agent.wait_for_metrics("the new interface covered", REPAIR, |m| {
        m.sum(
            "enforcer_coverage_repairs_total",
            &[("cause", "interface_created")],
        ) == 1.0
    });
    assert_eq!(r.tcx_programs(IFACE), 1);
    let first = r.link_pins();

    sh("ip", &["-n", &r.router_ns, "link", "del", IFACE]);
    add();
    let m = agent.wait_for_metrics("the re-created interface covered", REPAIR, |m| {
        m.sum(
            "enforcer_coverage_repairs_total",
            &[("cause", "interface_recreated")],
        ) == 1.0
    });
    assert_eq!(waiting(&m), 0.0);
    assert_eq!(
        m.sum("enforcer_scope_attached", &[("scope", IFACE)]),
        1.0,
        "{}",
        m.text
    );
    assert_eq!(r.tcx_programs(IFACE), 1);
    let second = r.link_pins();
    assert!(
        second.iter().any(|p| p.contains("-eesb-x")) && first != second,
        "the new device's link is pinned under its new index: {first:?} -> {second:?}"
    );
    sh("ip", &["-n", &r.router_ns, "link", "del", IFACE]);
    agent.uninstall();
}

/// A cgroup with an enforce override under a global observe, re-created
/// (its service restarted): the override is written again under the new
/// cgroup id, so the restarted service is enforced, not observed.
#[test]
fn a_recreated_override_cgroup_keeps_its_mode() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let svc = s.sb.cgroup.join("svc");
    fs::create_dir(&svc).expect("create the service cgroup");
    let config = s.config_with(
        "observe",
        "allow",
        &[],
        "",
        &format!(
            "[[scope.override]]\ncgroup = {:?}\nmode = \"enforce\"\n",
            svc.display().to_string()
        ),
    );
    let mut agent = s.start(&config);
    let runner = Runner::new(&s.sb).in_cgroup(Some(&svc));
    assert!(runner.connect(Proto::Tcp, denied_v4(), 1)[0].refused());
    for round in 1..=3u32 {
        remove_cgroup(&svc);
        fs::create_dir(&svc).expect("create the service cgroup again");
        agent.wait_for_metrics("the override written again", REPAIR, |m| {
            m.sum(
                "enforcer_coverage_repairs_total",
                &[("cause", "override_cgroup_changed")],
            ) == f64::from(round)
        });
        let a = runner.connect(Proto::Tcp, denied_v4(), 1);
        assert!(
            a[0].refused(),
            "round {round}: the re-created cgroup is enforced: {a:?}\n{}",
            agent.log()
        );
        let st = s.status();
        assert!(
            st["agent"]["overrides"][0]["cgroup"] == svc.display().to_string()
                && st["agent"]["overrides"][0]["mode"] == "enforce",
            "{st:#}"
        );
    }
    // Outside the override, the global observe still decides.
    let a = Runner::new(&s.sb).connect(Proto::Tcp, denied_v4(), 1);
    assert!(a[0].ok, "{a:?}");
    agent.stop();
}
