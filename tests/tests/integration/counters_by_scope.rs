//! The decision counters by scope entry: two scope cgroups each send
//! their own mix of approved and refused connections; the `scope` series
//! of `enforcer_connections_total` say exactly what each sent, they add up
//! to the kernel's totals (`status`), nothing is counted as `overflow`,
//! and events name their entry. After a reload that removes one entry and
//! adds another, and after an agent restart, every count stays under the
//! entry it was made for.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    os::unix::fs::MetadataExt as _,
    path::Path,
    time::{Duration, Instant},
};

use enforcer_tests::{
    agent::Agent,
    metrics::Metrics,
    privileged,
    probe::{Proto, Runner},
    sandbox::PORT,
    scenario::*,
    skip_unless,
};

const CONNECTIONS: &str = "enforcer_connections_total";
const PACKETS: &str = "enforcer_packets_total";

fn approved() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(APPROVED_V4), PORT)
}

fn denied() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(DENIED_V4), PORT)
}

fn label(p: &Path) -> String {
    p.display().to_string()
}

/// Polls `status` until every cgroup of `cgroups` is covered with its
/// current id (the coverage loop then also wrote its scope slot).
fn wait_covered(s: &Scenario, agent: &Agent, cgroups: &[&Path]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = s.status();
        let covered = cgroups.iter().all(|cg| {
            let id = fs::metadata(cg).expect("stat the cgroup").ino();
            st["agent"]["coverage"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["scope"] == label(cg) && e["state"] == "covered" && e["id"] == id)
        });
        if covered {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not covered: {st:#}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `n` TCP connects from `cgroup` to `dst`, each refused or not as `refused`.
fn send(s: &Scenario, cgroup: &Path, dst: SocketAddr, n: u32, refused: bool) {
    let got = Runner::new(&s.sb)
        .in_cgroup(Some(cgroup))
        .connect(Proto::Tcp, dst, n);
    assert_eq!(got.len(), n as usize);
    for a in &got {
        assert_eq!(
            a.refused(),
            refused,
            "{dst} from {}: {a:?}",
            cgroup.display()
        );
    }
}

fn conns(m: &Metrics, scope: &str, verdict: &str) -> f64 {
    m.sum(CONNECTIONS, &[("scope", scope), ("verdict", verdict)])
}

/// Per verdict: the scope series add up to the kernel's totals, which
/// `status` reads without scopes; and nothing went to `overflow`.
fn assert_sums(s: &Scenario, m: &Metrics) {
    let st = s.status();
    for verdict in ["allowed", "denied"] {
        let total = st["kernel"]["connections"][verdict].as_f64().unwrap_or(0.0);
        assert_eq!(
            m.sum(CONNECTIONS, &[("verdict", verdict)]),
            total,
            "{verdict}: the scope series add up to the total\n{}",
            m.text
        );
    }
    for family in [CONNECTIONS, PACKETS, "enforcer_bytes_total"] {
        assert_eq!(
            m.sum(family, &[("scope", "overflow")]),
            0.0,
            "{family}: nothing counted outside an entry\n{}",
            m.text
        );
        assert!(
            m.series(family)
                .iter()
                .all(|s| s.labels.contains_key("scope")),
            "{family}: every series has a scope\n{}",
            m.text
        );
    }
    assert_eq!(
        m.sum("enforcer_scope_overflow_total", &[]),
        0.0,
        "{}",
        m.text
    );
}

#[test]
fn each_scope_entry_counts_what_it_sent_across_a_reload_and_a_restart() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let [a, b, c] = ["svc-a", "svc-b", "svc-c"].map(|n| s.sb.cgroup.join(n));
    for cg in [&a, &b, &c] {
        fs::create_dir(cg).expect("create a service cgroup");
    }
    let (la, lb, lc) = (label(&a), label(&b), label(&c));
    let events = s.events_table(1000, 1000);
    let mut agent = s.start(&s.config_scoped("enforce", "allow", &[], &[&a, &b], "", &events));
    wait_covered(&s, &agent, &[&a, &b]);

    send(&s, &a, approved(), 3, false);
    send(&s, &a, denied(), 2, true);
    send(&s, &b, approved(), 1, false);
    send(&s, &b, denied(), 4, true);

    let m = agent.scrape();
    assert_eq!(conns(&m, &la, "allowed"), 3.0, "{}", m.text);
    assert_eq!(conns(&m, &la, "denied"), 2.0, "{}", m.text);
    assert_eq!(conns(&m, &lb, "allowed"), 1.0, "{}", m.text);
    assert_eq!(conns(&m, &lb, "denied"), 4.0, "{}", m.text);
    // The approved connections' packets, by the packet hook, are each
    // entry's too.
    for l in [&la, &lb] {
        assert!(
            m.sum(PACKETS, &[("scope", l), ("verdict", "allowed")]) > 0.0,
            "{l}: packets\n{}",
            m.text
        );
    }
    assert_sums(&s, &m);

    // Events say their entry.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = fs::read_to_string(s.events_file()).unwrap_or_default();
        let scopes: Vec<String> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|e| e["scope"].as_str().unwrap_or("-").to_owned())
            .collect();
        if scopes.len() >= 6 {
            assert_eq!(scopes.iter().filter(|s| **s == la).count(), 2, "{text}");
            assert_eq!(scopes.iter().filter(|s| **s == lb).count(), 4, "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "events: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Reload: "a" removed, "c" added.
    let loads = |m: &Metrics| m.sum("enforcer_policy_loads_total", &[("result", "success")]);
    let before = loads(&m);
    fs::write(
        &agent.config,
        s.config_scoped("enforce", "allow", &[], &[&b, &c], "", &events),
    )
    .expect("write the new config");
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    agent.wait_for_metrics("the reload", Duration::from_secs(30), |m| loads(m) > before);
    wait_covered(&s, &agent, &[&b, &c]);

    // "a" is out of scope now: not decided, not counted.
    send(&s, &a, denied(), 1, false);
    send(&s, &b, denied(), 2, true);
    send(&s, &c, approved(), 1, false);
    send(&s, &c, denied(), 1, true);

    let check = |m: &Metrics| {
        assert_eq!(
            conns(m, &la, "allowed"),
            3.0,
            "a keeps its counts\n{}",
            m.text
        );
        assert_eq!(conns(m, &la, "denied"), 2.0, "{}", m.text);
        assert_eq!(conns(m, &lb, "allowed"), 1.0, "{}", m.text);
        assert_eq!(conns(m, &lb, "denied"), 6.0, "{}", m.text);
        assert_eq!(conns(m, &lc, "allowed"), 1.0, "c's own only\n{}", m.text);
        assert_eq!(conns(m, &lc, "denied"), 1.0, "{}", m.text);
        assert_sums(&s, m);
    };
    check(&agent.scrape());

    // A restarted agent adopts the counts with their names.
    agent.stop();
    let mut agent = s.start(&s.config_scoped("enforce", "allow", &[], &[&b, &c], "", &events));
    wait_covered(&s, &agent, &[&b, &c]);
    check(&agent.scrape());
    send(&s, &c, denied(), 1, true);
    assert_eq!(conns(&agent.scrape(), &lc, "denied"), 2.0);

    // The kernel's own accounting: the counts by scope cost less than the
    // totals they break down (on any number of CPUs: both are per-CPU,
    // 16 bytes x 8,192 keys against 779,904 bytes).
    let memory =
        enforcer::datapath::map_memory(&s.pin_dir).unwrap_or_else(|e| panic!("map memory: {e}"));
    let sum = |names: &[&str]| -> u64 {
        names
            .iter()
            .map(|n| {
                *memory
                    .get(*n)
                    .unwrap_or_else(|| panic!("no {n} in {memory:?}"))
            })
            .sum()
    };
    let totals = sum(&["CONN_COUNTS", "PKT_COUNTS", "BYTE_COUNTS"]);
    let scoped = sum(&[
        "SCOPE_COUNTS",
        "SCOPE_MISSES",
        "SCOPE_BY_CG",
        "SCOPE_BY_IF",
        "SCOPE_NAMES",
    ]);
    println!(
        "map memory on {} CPUs: totals {:.2} MiB, by scope {:.2} MiB ({memory:?})",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        totals as f64 / 1048576.0,
        scoped as f64 / 1048576.0
    );
    assert!(scoped < totals, "by scope {scoped} B, totals {totals} B");
    agent.uninstall();
}
