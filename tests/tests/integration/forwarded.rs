//! Forwarded traffic: a container's packets routed by the host, decided by
//! the tcx egress program on a configured interface of the router (the
//! agent runs in the router's network namespace). Enforce drops them,
//! observe counts them as would-deny; counters and events say so exactly;
//! the interface list follows reloads; enforcement outlives the agent; a
//! missing interface fails the start with nothing attached.
//!
//! Exact counts come from UDP (one datagram each, its echo proving it
//! arrived) and ICMP (one echo request each). TCP is checked for the
//! verdict, and its counts only within what the test can justify: a
//! refused SYN is retransmitted (initial RTO 1 s, RFC 6298) within ee-probe's
//! 3 s connect timeout, and an accepted connection sends a number of
//! segments the test does not control.

use std::{net::IpAddr, time::Duration};

use enforcer_tests::{
    agent::{Agent, enforcer_binary},
    kernel::agent_programs,
    metrics::Metrics,
    privileged,
    router::{ROUTER_IN, ROUTER_OUT, Router},
    scenario::*,
    skip_unless,
};
use serde_json::Value;

/// Datagrams per destination.
const N: u32 = 2;
/// IP packet sizes (the counters count from the IP header on): a 4-byte
/// UDP payload, and ping's default 56-byte ICMP payload.
const UDP4_BYTES: f64 = 20.0 + 8.0 + 4.0;
const UDP6_BYTES: f64 = 40.0 + 8.0 + 4.0;
const PING4_BYTES: f64 = 20.0 + 8.0 + 56.0;
const PING6_BYTES: f64 = 40.0 + 8.0 + 56.0;

const APPROVED: [(IpAddr, &str); 2] = [
    (IpAddr::V4(APPROVED_V4), "ipv4"),
    (IpAddr::V6(APPROVED_V6), "ipv6"),
];
const DENIED: [(IpAddr, &str); 2] = [
    (IpAddr::V4(DENIED_V4), "ipv4"),
    (IpAddr::V6(DENIED_V6), "ipv6"),
];

fn tcx(m: &Metrics, metric: &str, family: &str, country: &str, verdict: &str) -> f64 {
    m.sum(
        metric,
        &[
            ("hook", "tcx_egress"),
            ("family", family),
            ("country", country),
            ("verdict", verdict),
        ],
    )
}

fn packets(m: &Metrics, family: &str, country: &str, verdict: &str) -> f64 {
    tcx(m, "enforcer_packets_total", family, country, verdict)
}

fn bytes(m: &Metrics, family: &str, country: &str, verdict: &str) -> f64 {
    tcx(m, "enforcer_bytes_total", family, country, verdict)
}

fn all_tcx_packets(m: &Metrics) -> f64 {
    m.sum("enforcer_packets_total", &[("hook", "tcx_egress")])
}

/// Sends `N` UDP datagrams (each waiting for its echo) and one ping to
/// each destination; `through` says whether they must get through.
fn send_udp_and_ping(r: &Router, dests: &[(IpAddr, &str)], through: bool) {
    for &(ip, _) in dests {
        for a in r.probe("udp-echo", ip, N) {
            assert_eq!(a.ok, through, "UDP echo to {ip}: {a:?}");
        }
        assert_eq!(r.ping(ip), through, "ping {ip}");
    }
}

/// The exact UDP + ICMP counts after [`send_udp_and_ping`] to `dests`.
fn assert_udp_and_ping_counted(
    m: &Metrics,
    dests: &[(IpAddr, &str)],
    country: &str,
    verdict: &str,
) {
    for &(ip, family) in dests {
        assert_eq!(
            packets(m, family, country, verdict),
            N as f64 + 1.0,
            "{ip}: {N} datagrams and one echo request\n{}",
            m.text
        );
        let expected = if family == "ipv4" {
            N as f64 * UDP4_BYTES + PING4_BYTES
        } else {
            N as f64 * UDP6_BYTES + PING6_BYTES
        };
        assert_eq!(
            bytes(m, family, country, verdict),
            expected,
            "{ip}: bytes from the IP header on (no Ethernet header)\n{}",
            m.text
        );
    }
}

/// One TCP connection to each destination: `through` says whether it
/// connects; if not, it must time out (dropped on the way), not fail with
/// EPERM.
fn tcp_attempts(r: &Router, dests: &[(IpAddr, &str)], through: bool) {
    for &(ip, _) in dests {
        let a = r.probe("tcp", ip, 1).remove(0);
        if through {
            assert!(a.ok, "TCP to {ip} must connect: {a:?}");
        } else {
            assert!(
                !a.ok
                    && !a.refused()
                    && a.error.as_deref().is_some_and(|e| e.contains("timed out")),
                "TCP to {ip} must time out (its SYNs dropped on the router), not be refused \
                 by a local hook: {a:?}"
            );
        }
    }
}

/// The tcx_egress events in the events file, once the agent has read as
/// many as the kernel counted packets for `verdict` (each such packet is
/// reported; the default rate limit is far above what a test sends).
fn tcx_events(r: &Router, agent: &Agent, verdict: &str) -> Vec<Value> {
    let m = agent.scrape();
    let expected = m.sum(
        "enforcer_packets_total",
        &[("hook", "tcx_egress"), ("verdict", verdict)],
    );
    assert!(expected > 0.0, "nothing to report?\n{}", m.text);
    agent.wait_for_metrics("the events to be read", Duration::from_secs(60), |m| {
        m.sum(
            "enforcer_events_total",
            &[("hook", "tcx_egress"), ("verdict", verdict)],
        ) == expected
    });
    let events: Vec<Value> = r
        .events()
        .into_iter()
        .filter(|e| e["hook"] == "tcx_egress")
        .collect();
    assert_eq!(
        events.len() as f64,
        expected,
        "one event per {verdict} packet: {events:#?}"
    );
    let m = agent.scrape();
    assert_eq!(
        m.sum("enforcer_events_suppressed_total", &[]),
        0.0,
        "{}",
        m.text
    );
    events
}

/// Checks every event is a forwarded packet to a denied destination, and
/// the UDP and ICMP ones are there exactly.
fn assert_events(events: &[Value], verdict: &str, mode: &str) {
    let denied = [DENIED_V4.to_string(), DENIED_V6.to_string()];
    for e in events {
        assert_eq!(e["verdict"], verdict, "{e}");
        assert_eq!(e["mode"], mode, "{e}");
        assert_eq!(e["country"], DENIED_COUNTRY, "{e}");
        assert_eq!(e["reason"], "geoip", "{e}");
        assert_eq!(e["cgroup_id"], 0, "no local cgroup: {e}");
        assert_eq!(
            e["scope"], ROUTER_OUT,
            "the interface is its scope entry: {e}"
        );
        assert!(
            denied.iter().any(|d| e["dst"] == d.as_str()),
            "only denied destinations are reported: {e}"
        );
        for absent in ["pid", "tgid", "uid", "gid", "comm", "cgroup"] {
            assert!(
                e.get(absent).is_none(),
                "a forwarded packet has no local {absent}: {e}"
            );
        }
    }
    let count = |dst: String, protocol: &str, bytes: f64| {
        events
            .iter()
            .filter(|e| {
                e["dst"] == dst.as_str()
                    && e["protocol"] == protocol
                    && e["bytes"].as_f64() == Some(bytes)
            })
            .count()
    };
    assert_eq!(count(DENIED_V4.to_string(), "udp", UDP4_BYTES), N as usize);
    assert_eq!(count(DENIED_V6.to_string(), "udp", UDP6_BYTES), N as usize);
    assert_eq!(count(DENIED_V4.to_string(), "icmp", PING4_BYTES), 1);
    assert_eq!(count(DENIED_V6.to_string(), "icmpv6", PING6_BYTES), 1);
    for e in events.iter().filter(|e| e["protocol"] == "udp") {
        assert_eq!(e["dport"], 7000, "{e}");
    }
}

#[test]
fn enforce_drops_forwarded_traffic_to_non_approved_destinations() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let r = Router::new();
    let agent = r.start(&r.config("enforce", &[ROUTER_OUT]));
    assert_eq!(r.tcx_programs(ROUTER_OUT), 1, "{}", agent.log());
    assert_eq!(
        r.tcx_programs(ROUTER_IN),
        0,
        "only the configured interface"
    );
    assert_eq!(agent_programs(&r.cgroup), 5, "the cgroup scope as before");
    let tcx_pins: Vec<String> = r
        .link_pins()
        .into_iter()
        .filter(|p| p.starts_with("tcx_egress-"))
        .collect();
    assert!(
        tcx_pins.len() == 1 && tcx_pins[0].ends_with("-eesb_2ero"),
        "one pinned tcx link, the '.' of {ROUTER_OUT} encoded: {tcx_pins:?}"
    );

    send_udp_and_ping(&r, &APPROVED, true);
    send_udp_and_ping(&r, &DENIED, false);
    let m = agent.scrape();
    assert_udp_and_ping_counted(&m, &APPROVED, APPROVED_COUNTRY, "allowed");
    assert_udp_and_ping_counted(&m, &DENIED, DENIED_COUNTRY, "denied");
    assert_eq!(
        all_tcx_packets(&m),
        4.0 * (N as f64 + 1.0),
        "nothing else was decided on the router's egress: not the replies \
         (they leave by the other interface), not the router's own ARP/ND/MLD\n{}",
        m.text
    );
    assert_eq!(
        m.sum(
            "enforcer_packets_total",
            &[("hook", "tcx_egress"), ("scope", ROUTER_OUT)]
        ),
        all_tcx_packets(&m),
        "forwarded packets count under their interface's scope entry\n{}",
        m.text
    );

    // The router's own packets carry their socket: the tcx program leaves
    // them to the cgroup hooks (and the router's ping is in no scope).
    assert!(
        r.ping_from(&r.router_ns, IpAddr::V4(DENIED_V4)),
        "a locally generated packet is not decided by tcx"
    );
    assert_eq!(
        all_tcx_packets(&agent.scrape()),
        all_tcx_packets(&m),
        "locally generated packets are not counted"
    );

    // TCP: the SYNs to the denied address are dropped on the router.
    tcp_attempts(&r, &APPROVED, true);
    tcp_attempts(&r, &DENIED, false);
    let t = agent.scrape();
    for (family, verdict, country) in [
        ("ipv4", "denied", DENIED_COUNTRY),
        ("ipv6", "denied", DENIED_COUNTRY),
        ("ipv4", "allowed", APPROVED_COUNTRY),
        ("ipv6", "allowed", APPROVED_COUNTRY),
    ] {
        let delta = packets(&t, family, country, verdict) - packets(&m, family, country, verdict);
        if verdict == "denied" {
            assert!(
                (1.0..=3.0).contains(&delta),
                "{family}: a SYN and at most two retransmits in 3 s, got {delta}\n{}",
                t.text
            );
        } else {
            assert!(
                delta >= 3.0,
                "{family}: at least SYN, ACK and the request, got {delta}\n{}",
                t.text
            );
        }
    }

    let events = tcx_events(&r, &agent, "denied");
    assert_events(&events, "denied", "enforce");
    let tcp_events = events.iter().filter(|e| e["protocol"] == "tcp").count() as f64;
    let tcp_denied = (packets(&t, "ipv4", DENIED_COUNTRY, "denied")
        + packets(&t, "ipv6", DENIED_COUNTRY, "denied"))
        - (packets(&m, "ipv4", DENIED_COUNTRY, "denied")
            + packets(&m, "ipv6", DENIED_COUNTRY, "denied"));
    assert_eq!(tcp_events, tcp_denied, "one event per dropped SYN");
}

#[test]
fn observe_counts_forwarded_traffic_as_would_deny() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let r = Router::new();
    let agent = r.start(&r.config("observe", &[ROUTER_OUT]));
    assert_eq!(r.tcx_programs(ROUTER_OUT), 1, "{}", agent.log());

    send_udp_and_ping(&r, &APPROVED, true);
    send_udp_and_ping(&r, &DENIED, true);
    let m = agent.scrape();
    assert_udp_and_ping_counted(&m, &APPROVED, APPROVED_COUNTRY, "allowed");
    assert_udp_and_ping_counted(&m, &DENIED, DENIED_COUNTRY, "would_deny");
    assert_eq!(all_tcx_packets(&m), 4.0 * (N as f64 + 1.0), "{}", m.text);
    assert_eq!(
        m.sum(
            "enforcer_packets_total",
            &[("hook", "tcx_egress"), ("verdict", "denied")]
        ),
        0.0,
        "observe refuses nothing\n{}",
        m.text
    );

    tcp_attempts(&r, &DENIED, true);
    let t = agent.scrape();
    for family in ["ipv4", "ipv6"] {
        let delta = packets(&t, family, DENIED_COUNTRY, "would_deny")
            - packets(&m, family, DENIED_COUNTRY, "would_deny");
        assert!(
            delta >= 3.0,
            "{family}: a whole connection counted as would-deny, got {delta}\n{}",
            t.text
        );
    }
    let events = tcx_events(&r, &agent, "would_deny");
    assert_events(&events, "would_deny", "observe");
}

#[test]
fn interfaces_follow_reloads_and_enforcement_outlives_the_agent() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let r = Router::new();
    let denied = IpAddr::V4(DENIED_V4);
    let approved = IpAddr::V4(APPROVED_V4);
    let dropped = |what: &str| {
        let a = r.probe("udp-echo", denied, 1).remove(0);
        assert!(!a.ok, "{what}: the denied datagram is dropped: {a:?}");
    };
    let passes = |what: &str| {
        let a = r.probe("udp-echo", denied, 1).remove(0);
        assert!(a.ok, "{what}: the denied datagram is not decided: {a:?}");
    };
    let mut agent = r.start(&r.config("enforce", &[ROUTER_OUT]));
    dropped("at start");

    let reload = |agent: &Agent, interfaces: &[&str], loads: f64| {
        std::fs::write(&agent.config, r.config("enforce", interfaces)).expect("rewrite config");
        agent.signal(nix::sys::signal::Signal::SIGHUP);
        agent.wait_for_metrics("the reload", Duration::from_secs(60), |m| {
            m.sum("enforcer_policy_loads_total", &[("result", "success")]) == loads
        });
    };

    // Adding an interface attaches it and keeps the one already there.
    reload(&agent, &[ROUTER_OUT, ROUTER_IN], 2.0);
    assert_eq!(r.tcx_programs(ROUTER_OUT), 1, "kept, not attached twice");
    assert_eq!(r.tcx_programs(ROUTER_IN), 1, "attached on reload");
    dropped("with both interfaces");
    // The server's replies leave the router by ROUTER_IN: now decided
    // (198.18.0.2 is in no database; unknown = "allow").
    assert!(r.probe("udp-echo", approved, 1).remove(0).ok);
    let m = agent.scrape();
    assert!(
        packets(&m, "ipv4", "unknown", "allowed") >= 1.0,
        "the echo to the container was decided on {ROUTER_IN}\n{}",
        m.text
    );

    // Removing every interface detaches them: forwarded traffic is no
    // longer decided.
    reload(&agent, &[], 3.0);
    assert_eq!(r.tcx_programs(ROUTER_OUT), 0, "detached on reload");
    assert_eq!(r.tcx_programs(ROUTER_IN), 0, "detached on reload");
    assert!(
        !r.link_pins().iter().any(|p| p.starts_with("tcx_egress-")),
        "{:?}",
        r.link_pins()
    );
    passes("without interfaces");
    assert_eq!(agent_programs(&r.cgroup), 5, "the cgroup links stay");

    reload(&agent, &[ROUTER_OUT], 4.0);
    assert_eq!(r.tcx_programs(ROUTER_OUT), 1);
    dropped("after attaching again");

    // No agent: the pinned link keeps deciding.
    assert!(agent.stop().success(), "{}", agent.log());
    assert_eq!(r.tcx_programs(ROUTER_OUT), 1);
    dropped("with no agent running");

    // A new agent adopts the pins and replaces the link (no duplicate).
    let mut second = r.start(&r.config("enforce", &[ROUTER_OUT]));
    assert!(second.log().contains("adopting"), "{}", second.log());
    assert_eq!(r.tcx_programs(ROUTER_OUT), 1, "replaced, not added to");
    dropped("after adoption");

    // Uninstall removes it.
    second.uninstall();
    assert!(!r.pin_dir.exists());
    assert_eq!(r.tcx_programs(ROUTER_OUT), 0);
    passes("after uninstall");
}

#[test]
fn a_non_ethernet_interface_fails_the_start_and_attaches_nothing() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let r = Router::new();
    let start_fails = |name: &str, interfaces: &[&str], needles: &[&str]| {
        let path = r.write_config(name, &r.config("enforce", interfaces));
        let file = path.display().to_string();
        let failure = match r.try_start(&path) {
            Ok(mut agent) => {
                agent.uninstall();
                panic!("the agent started with {interfaces:?}");
            }
            Err(f) => f,
        };
        assert!(!failure.status.success());
        for needle in needles
            .iter()
            .copied()
            .chain([file.as_str(), "scope.interfaces"])
        {
            assert!(
                failure.stderr.contains(needle),
                "the error must name {needle:?}:\n{}",
                failure.stderr
            );
        }
        assert!(
            !r.pin_dir.exists(),
            "nothing pinned: {}",
            r.pin_dir.display()
        );
        assert_eq!(r.tcx_programs(ROUTER_OUT), 0, "nothing attached");
        assert_eq!(agent_programs(&r.cgroup), 0, "nothing attached");
    };
    // The existing interface comes first: it is not attached either,
    // because every interface is resolved before anything is. (A missing
    // one is not an error: scope.rs.)
    start_fails(
        "loopback.toml",
        &[ROUTER_OUT, "lo"],
        &["\"lo\"", "not Ethernet"],
    );

    // `config check` resolves interfaces where it runs: it lists the
    // router's in the router's namespace; the root namespace has none of
    // that name, which it reports as waiting.
    let path = r.write_config("check.toml", &r.config("enforce", &[ROUTER_OUT]));
    let out = r
        .command_in(&r.router_ns, enforcer_binary())
        .args(["config", "check", "--config"])
        .arg(&path)
        .output()
        .expect("run enforcer config check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("forward:  {ROUTER_OUT} (ifindex ")),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(enforcer_binary())
        .args(["config", "check", "--config"])
        .arg(&path)
        .output()
        .expect("run enforcer config check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout.contains(&format!("forward:  {ROUTER_OUT} (does not exist yet"))
            && String::from_utf8_lossy(&out.stderr).contains(ROUTER_OUT),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!r.pin_dir.exists(), "config check touches no kernel state");
}
