//! Per-cgroup mode overrides: the deepest ancestor of a process's cgroup
//! that has an override decides its mode, for the socket hooks and for the
//! packet hook alike; everything else follows the global mode.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use enforcer_tests::{
    privileged,
    probe::{Proto, Runner},
    sandbox::PORT,
    scenario::*,
    skip_unless,
};

/// `S` (the scope) / `a` (enforce) / `b` (observe) / `c` (no override).
struct Tree {
    s: PathBuf,
    a: PathBuf,
    b: PathBuf,
    c: PathBuf,
}

fn tree(scenario: &Scenario) -> Tree {
    let s = scenario.sb.cgroup.clone();
    let a = s.join("a");
    let b = a.join("b");
    let c = b.join("c");
    std::fs::create_dir_all(&c).expect("create child cgroups");
    Tree { s, a, b, c }
}

fn overrides(list: &[(&Path, &str)]) -> String {
    list.iter()
        .map(|(cg, mode)| {
            format!(
                "[[scope.override]]\ncgroup = {:?}\nmode = \"{mode}\"\n",
                cg.display().to_string()
            )
        })
        .collect()
}

/// TCP and UDP connects to the non-approved host, v4 and v6, from `cgroup`:
/// whether each was refused.
fn refused_from(s: &Scenario, cgroup: &Path) -> Vec<bool> {
    let r = Runner::new(&s.sb).in_cgroup(Some(cgroup));
    let mut out = Vec::new();
    for ip in [IpAddr::V4(DENIED_V4), IpAddr::V6(DENIED_V6)] {
        for proto in [Proto::Tcp, Proto::Udp] {
            let a = r.connect(proto, SocketAddr::new(ip, PORT), 1).remove(0);
            assert!(a.ok || a.refused(), "{a:?}");
            out.push(a.refused());
        }
    }
    out
}

#[test]
fn the_deepest_override_decides_under_a_global_observe() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let t = tree(&s);
    let agent = s.start(&s.config_with(
        "observe",
        "allow",
        &[],
        "",
        &overrides(&[(&t.a, "enforce"), (&t.b, "observe")]),
    ));
    for (cgroup, refused, why) in [
        (&t.s, false, "no override: the global observe"),
        (&t.a, true, "its own override: enforce"),
        (&t.b, false, "its own override (observe) beats its parent's"),
        (&t.c, false, "inherits b's override, the deepest ancestor's"),
    ] {
        let got = refused_from(&s, cgroup);
        assert!(
            got.iter().all(|&r| r == refused),
            "{}: {why}: refused = {got:?}",
            cgroup.display()
        );
    }
    let m = agent.scrape();
    let q = |verdict| {
        m.sum(
            "enforcer_connections_total",
            &[("country", DENIED_COUNTRY), ("verdict", verdict)],
        )
    };
    assert_eq!(q("denied"), 4.0, "a's four attempts\n{}", m.text);
    assert_eq!(q("would_deny"), 12.0, "the other twelve\n{}", m.text);
    assert_eq!(
        m.sum("enforcer_mode", &[("mode", "observe")]),
        1.0,
        "the global mode is still observe"
    );
}

#[test]
fn an_observe_override_under_a_global_enforce_also_covers_packets() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let t = tree(&s);
    // Connections made before the agent starts are decided by the packet
    // hook, which must apply the same override.
    let mut held_s = Runner::new(&s.sb)
        .in_cgroup(Some(&t.s))
        .hold(IpAddr::V4(DENIED_V4));
    let mut held_c = Runner::new(&s.sb)
        .in_cgroup(Some(&t.c))
        .hold(IpAddr::V4(DENIED_V4));
    assert!(held_s.connected().ok && held_c.connected().ok);

    let agent = s.start(&s.config_with(
        "enforce",
        "allow",
        &[],
        "",
        &overrides(&[(&t.b, "observe")]),
    ));
    assert!(refused_from(&s, &t.s).iter().all(|&r| r), "global enforce");
    assert!(refused_from(&s, &t.a).iter().all(|&r| r), "global enforce");
    assert!(refused_from(&s, &t.b).iter().all(|&r| !r), "b observes");
    assert!(refused_from(&s, &t.c).iter().all(|&r| !r), "c inherits b");

    let in_s = held_s.send(10);
    assert!(!in_s.ok, "enforced on the packet path in s: {in_s:?}");
    let in_c = held_c.send(10);
    assert_eq!(
        in_c.echoed,
        Some(10),
        "observed on the packet path in c: {in_c:?}"
    );
    let m = agent.scrape();
    let skb = |verdict| {
        m.sum(
            "enforcer_packets_total",
            &[
                ("hook", "skb_egress"),
                ("country", DENIED_COUNTRY),
                ("verdict", verdict),
            ],
        )
    };
    assert!(
        skb("denied") >= 1.0 && skb("would_deny") >= 1.0,
        "{}",
        m.text
    );
}
