//! The packet backstop (cgroup `skb/egress`): what the socket hooks do not
//! see. A TCP connection made before the agent started, raw ICMP, TCP Fast
//! Open; in enforce mode none of them delivers data to a non-approved peer,
//! in observe mode all of them do and are counted as would-deny; and the
//! byte counters agree with a known transfer within the headers' size.

use std::net::IpAddr;

use enforcer_tests::{
    events,
    metrics::Metrics,
    privileged,
    probe::{ECHO_PORT, Runner},
    sandbox::sh,
    scenario::*,
    skip_unless,
};
use serde_json::Value;

fn packets(m: &Metrics, country: &str, verdict: &str) -> f64 {
    m.sum(
        "enforcer_packets_total",
        &[
            ("hook", "skb_egress"),
            ("country", country),
            ("verdict", verdict),
        ],
    )
}

fn skb_events<'a>(all: &'a [Value], dst: IpAddr, verdict: &str) -> Vec<&'a Value> {
    events::matching(
        all,
        &[
            ("hook", Value::from("skb_egress")),
            ("dst", Value::from(dst.to_string())),
            ("verdict", Value::from(verdict)),
        ],
    )
}

/// A connection established while no agent runs, then the agent starts:
/// the next data on it meets the packet hook.
fn established_connection(mode: &str, verdict: &str) {
    let s = Scenario::new();
    let r = Runner::new(&s.sb);
    for dst in [IpAddr::V4(DENIED_V4), IpAddr::V6(DENIED_V6)] {
        let mut held = r.hold(dst);
        assert!(held.connected().ok, "{dst}: {:?}", held.connected());
        let before = held.send(100);
        assert_eq!(before.echoed, Some(100), "no agent yet: {before:?}");
        held_after_start(&s, &mut held, dst, mode, verdict);
    }
}

fn held_after_start(
    s: &Scenario,
    held: &mut enforcer_tests::probe::Held,
    dst: IpAddr,
    mode: &str,
    verdict: &str,
) {
    let agent = s.start(&s.config_with(mode, "allow", &[], "", &s.events_table(1000, 1000)));
    let after = held.send(100);
    let m = agent.scrape();
    if mode == "enforce" {
        assert!(
            !after.ok,
            "{dst}: data on a connection made before the agent started must not get through: {after:?}"
        );
    } else {
        assert_eq!(
            after.echoed,
            Some(100),
            "{dst}: observe lets it through: {after:?}"
        );
    }
    // The data segment at least (TCP retransmits it while it is dropped).
    assert!(packets(&m, DENIED_COUNTRY, verdict) >= 1.0, "{}", m.text);
    assert_eq!(
        m.sum("enforcer_connections_total", &[("country", DENIED_COUNTRY)]),
        0.0,
        "connect() happened before the agent: only the packet hook saw it\n{}",
        m.text
    );
    // One decision per socket: the verdict is cached in socket storage, so
    // retransmits and ACKs do not make more events.
    let all = events::wait_for(&s.events_file(), "the skb event", |e| {
        !skb_events(e, dst, verdict).is_empty()
    });
    let mine = skb_events(&all, dst, verdict);
    assert_eq!(mine.len(), 1, "{mine:#?}");
    assert_eq!(mine[0]["dport"], Value::from(ECHO_PORT));
    assert_eq!(mine[0]["protocol"], Value::from("tcp"));
    drop(agent);
}

#[test]
fn a_connection_made_before_the_agent_is_cut_in_enforce_mode() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    established_connection("enforce", "denied");
}

#[test]
fn a_connection_made_before_the_agent_is_counted_in_observe_mode() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    established_connection("observe", "would_deny");
}

/// ICMP echo over a raw socket: no connect, no sendmsg hook, only packets.
fn raw_icmp(mode: &str, verdict: &str) {
    const N: u16 = 3;
    let s = Scenario::new();
    let agent = s.start(&s.config_with(mode, "allow", &[], "", &s.events_table(1000, 1000)));
    let r = Runner::new(&s.sb);
    for approved in [IpAddr::V4(APPROVED_V4), IpAddr::V6(APPROVED_V6)] {
        for p in r.ping(approved, N) {
            assert!(p.ok, "echo to approved {approved}: {p:?}");
        }
    }
    for denied in [IpAddr::V4(DENIED_V4), IpAddr::V6(DENIED_V6)] {
        for p in r.ping(denied, N) {
            assert_eq!(
                p.ok,
                mode == "observe",
                "echo to {denied} in {mode} mode: {p:?}"
            );
        }
    }
    // Exactly one packet per request (one raw socket per request, so one
    // decision and one event each).
    let m = agent.scrape();
    assert_eq!(
        packets(&m, DENIED_COUNTRY, verdict),
        f64::from(2 * N),
        "{}",
        m.text
    );
    assert_eq!(
        packets(&m, APPROVED_COUNTRY, "allowed"),
        f64::from(2 * N),
        "{}",
        m.text
    );
    for (dst, family, protocol, len) in [
        (IpAddr::V4(DENIED_V4), "ipv4", "icmp", 20 + 16),
        (IpAddr::V6(DENIED_V6), "ipv6", "icmpv6", 40 + 16),
    ] {
        assert_eq!(
            m.sum(
                "enforcer_bytes_total",
                &[
                    ("hook", "skb_egress"),
                    ("family", family),
                    ("verdict", verdict)
                ]
            ),
            f64::from(N) * f64::from(len),
            "{}",
            m.text
        );
        let all = events::wait_for(&s.events_file(), "ping events", |e| {
            skb_events(e, dst, verdict).len() >= usize::from(N)
        });
        let mine = skb_events(&all, dst, verdict);
        assert_eq!(mine.len(), usize::from(N), "{mine:#?}");
        assert!(
            mine.iter()
                .all(|e| e["protocol"] == protocol && e["bytes"] == len)
        );
    }
}

#[test]
fn raw_icmp_to_a_non_approved_peer_is_dropped_in_enforce_mode() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    raw_icmp("enforce", "denied");
}

#[test]
fn raw_icmp_to_a_non_approved_peer_is_counted_in_observe_mode() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    raw_icmp("observe", "would_deny");
}

/// TCP Fast Open: the data rides in the SYN. Both ends have it enabled
/// without cookies (net.ipv4.tcp_fastopen: client 0x1|0x4, server
/// 0x2|0x400; Documentation/networking/ip-sysctl.rst), so the first SYN
/// carries the payload.
fn fast_open(mode: &str) {
    let s = Scenario::new();
    sh(
        "ip",
        &[
            "netns",
            "exec",
            &s.sb.client_ns,
            "sysctl",
            "-qw",
            "net.ipv4.tcp_fastopen=5",
        ],
    );
    sh(
        "ip",
        &[
            "netns",
            "exec",
            &s.sb.server_ns,
            "sysctl",
            "-qw",
            "net.ipv4.tcp_fastopen=1026",
        ],
    );
    let agent = s.start(&s.config_with(mode, "allow", &[], "", &s.events_table(1000, 1000)));
    let r = Runner::new(&s.sb);
    for approved in [IpAddr::V4(APPROVED_V4), IpAddr::V6(APPROVED_V6)] {
        let a = r.tfo(approved, 64);
        assert_eq!(
            a.echoed,
            Some(64),
            "Fast Open to approved {approved}: {a:?}"
        );
    }
    for denied in [IpAddr::V4(DENIED_V4), IpAddr::V6(DENIED_V6)] {
        let a = r.tfo(denied, 64);
        if mode == "enforce" {
            assert!(
                a.refused(),
                "Fast Open to {denied} must not deliver data: {a:?}"
            );
        } else {
            assert_eq!(a.echoed, Some(64), "observe lets it through: {a:?}");
        }
    }
    let m = agent.scrape();
    let verdict = if mode == "enforce" {
        "denied"
    } else {
        "would_deny"
    };
    // sendto(MSG_FASTOPEN) goes through the connect hooks (the kernel runs
    // them from tcp_sendmsg_fastopen), so the SYN never exists.
    for hook in ["connect4", "connect6"] {
        assert_eq!(
            m.sum(
                "enforcer_connections_total",
                &[
                    ("hook", hook),
                    ("country", DENIED_COUNTRY),
                    ("verdict", verdict)
                ]
            ),
            1.0,
            "{}",
            m.text
        );
    }
    // And one event each, for the right destination; nothing else.
    let all = events::wait_for(&s.events_file(), "two Fast Open events", |e| e.len() >= 2);
    for (hook, dst) in [
        ("connect4", IpAddr::V4(DENIED_V4)),
        ("connect6", IpAddr::V6(DENIED_V6)),
    ] {
        let mine = events::matching(
            &all,
            &[
                ("hook", Value::from(hook)),
                ("dst", Value::from(dst.to_string())),
                ("dport", Value::from(ECHO_PORT)),
                ("verdict", Value::from(verdict)),
            ],
        );
        assert_eq!(mine.len(), 1, "{all:#?}");
    }
    assert_eq!(all.len(), 2, "{all:#?}");
}

#[test]
fn tcp_fast_open_to_a_non_approved_peer_delivers_nothing_in_enforce_mode() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    fast_open("enforce");
}

#[test]
fn tcp_fast_open_is_counted_in_observe_mode() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    fast_open("observe");
}

#[test]
fn byte_counters_match_a_known_transfer_within_the_headers() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    const SENT: usize = 200_000;
    let s = Scenario::new();
    let agent = s.start(&s.config("enforce", "allow", &[]));
    let r = Runner::new(&s.sb);
    for (ip, family, ip_header) in [
        (IpAddr::V4(APPROVED_V4), "ipv4", 20.0),
        (IpAddr::V6(APPROVED_V6), "ipv6", 40.0),
    ] {
        let a = r.transfer(ip, SENT);
        assert_eq!(a.echoed, Some(SENT as u64), "{a:?}");
        let m = agent.scrape();
        let labels = [
            ("hook", "skb_egress"),
            ("family", family),
            ("country", APPROVED_COUNTRY),
            ("verdict", "allowed"),
        ];
        let bytes = m.sum("enforcer_bytes_total", &labels);
        let packets = m.sum("enforcer_packets_total", &labels);
        // Every packet the client sent (handshake, data, ACKs of the echo,
        // FIN) is counted from its IP header on: the payload plus, per
        // packet, an IP header and a TCP header of 20 to 60 bytes. (The
        // hook sees GSO super-packets, one header each: packets counts
        // those.)
        let overhead = bytes - SENT as f64;
        assert!(
            packets > 0.0
                && overhead >= packets * (ip_header + 20.0)
                && overhead <= packets * (ip_header + 60.0),
            "{family}: {bytes} bytes in {packets} packets for {SENT} bytes of payload\n{}",
            m.text
        );
        eprintln!("{family}: {SENT} payload bytes -> {bytes} counted in {packets} packets");
    }
}
