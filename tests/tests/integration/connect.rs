//! TCP connect() and connected UDP through the cgroup connect4/connect6
//! hooks, in enforce and observe mode, and the counters that record them.

use std::net::IpAddr;

use enforcer_tests::{
    metrics::Metrics,
    privileged,
    probe::{Proto, attempts},
    scenario::*,
    skip_unless,
};

const N: u32 = 3;

/// (destination, hook, family) for the three ways to address one host.
fn destinations(
    v4: std::net::Ipv4Addr,
    v6: std::net::Ipv6Addr,
) -> [(IpAddr, &'static str, &'static str); 3] {
    [
        (IpAddr::V4(v4), "connect4", "ipv4"),
        (IpAddr::V6(v6), "connect6", "ipv6"),
        // A dual-stack socket connecting to ::ffff:a.b.c.d goes out over
        // IPv4; only connect6 sees it, and decides it as IPv4.
        (mapped(v4), "connect6", "ipv4"),
    ]
}

fn count(m: &Metrics, hook: &str, family: &str, country: &str, verdict: &str) -> f64 {
    m.sum(
        "enforcer_connections_total",
        &[
            ("hook", hook),
            ("family", family),
            ("country", country),
            ("verdict", verdict),
        ],
    )
}

#[test]
fn enforce_refuses_non_approved_and_counts_every_attempt() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let agent = s.start(&s.config("enforce", "allow", &[]));

    for (ip, ..) in destinations(APPROVED_V4, APPROVED_V6) {
        for proto in [Proto::Tcp, Proto::Udp] {
            for a in attempts(&s.sb, proto, ip, N) {
                assert!(a.ok, "{proto:?} to approved {ip} must connect: {a:?}");
            }
        }
    }
    for (ip, ..) in destinations(DENIED_V4, DENIED_V6) {
        for proto in [Proto::Tcp, Proto::Udp] {
            for a in attempts(&s.sb, proto, ip, N) {
                assert!(
                    a.refused(),
                    "{proto:?} to non-approved {ip} must fail with EPERM: {a:?}"
                );
            }
        }
    }

    let m = agent.scrape();
    let per_dest = 2.0 * N as f64; // TCP + UDP
    for (ip, hook, family) in destinations(APPROVED_V4, APPROVED_V6) {
        assert_eq!(
            count(&m, hook, family, APPROVED_COUNTRY, "allowed"),
            per_dest,
            "{ip}\n{}",
            m.text
        );
    }
    for (ip, hook, family) in destinations(DENIED_V4, DENIED_V6) {
        assert_eq!(
            count(&m, hook, family, DENIED_COUNTRY, "denied"),
            per_dest,
            "{ip}\n{}",
            m.text
        );
    }
    // A connected IPv6 socket sends to ::ffff:a.b.c.d through udp_sendmsg
    // with a sockaddr_in, so each of the N datagrams to the approved mapped
    // address passes the sendmsg4 hook too (see the sendto test below).
    assert_eq!(
        count(&m, "sendmsg4", "ipv4", APPROVED_COUNTRY, "allowed"),
        N as f64,
        "{}",
        m.text
    );
    // Nothing else was counted: no would-deny in enforce mode, no stray verdicts.
    let total = m.sum("enforcer_connections_total", &[]);
    assert_eq!(total, 6.0 * per_dest + N as f64, "{}", m.text);
    assert_eq!(m.sum("enforcer_mode", &[("mode", "enforce")]), 1.0);
}

#[test]
fn observe_lets_non_approved_through_and_counts_would_deny() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let agent = s.start(&s.config("observe", "allow", &[]));

    for (ip, ..) in destinations(DENIED_V4, DENIED_V6) {
        for proto in [Proto::Tcp, Proto::Udp] {
            for a in attempts(&s.sb, proto, ip, N) {
                assert!(
                    a.ok,
                    "observe mode must let {proto:?} to {ip} through: {a:?}"
                );
            }
        }
    }
    for (ip, ..) in destinations(APPROVED_V4, APPROVED_V6) {
        let a = attempts(&s.sb, Proto::Tcp, ip, 1).remove(0);
        assert!(a.ok, "approved {ip}: {a:?}");
    }

    let m = agent.scrape();
    for (ip, hook, family) in destinations(DENIED_V4, DENIED_V6) {
        assert_eq!(
            count(&m, hook, family, DENIED_COUNTRY, "would_deny"),
            2.0 * N as f64,
            "{ip}\n{}",
            m.text
        );
        assert_eq!(
            count(&m, hook, family, DENIED_COUNTRY, "denied"),
            0.0,
            "{ip}\n{}",
            m.text
        );
    }
    for (ip, hook, family) in destinations(APPROVED_V4, APPROVED_V6) {
        assert_eq!(
            count(&m, hook, family, APPROVED_COUNTRY, "allowed"),
            1.0,
            "{ip}\n{}",
            m.text
        );
    }
    assert_eq!(m.sum("enforcer_mode", &[("mode", "observe")]), 1.0);
}

#[test]
fn processes_outside_the_scope_cgroup_are_not_touched() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let agent = s.start(&s.config("enforce", "deny", &[]));
    let dst = std::net::SocketAddr::new(IpAddr::V4(DENIED_V4), enforcer_tests::sandbox::PORT);
    let inside = enforcer_tests::probe::attempts_to(&s.sb, Proto::Tcp, dst, 1, true).remove(0);
    assert!(inside.refused(), "inside the scope: {inside:?}");
    let outside = enforcer_tests::probe::attempts_to(&s.sb, Proto::Tcp, dst, 1, false).remove(0);
    assert!(
        outside.ok,
        "outside the scope cgroup nothing is enforced: {outside:?}"
    );
    let m = agent.scrape();
    assert_eq!(
        m.sum("enforcer_connections_total", &[]),
        1.0,
        "only the scoped attempt is counted\n{}",
        m.text
    );
}

#[test]
fn unconnected_udp_sendto_is_decided_per_datagram() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    for (mode, verdict) in [("enforce", "denied"), ("observe", "would_deny")] {
        let s = Scenario::new();
        let agent = s.start(&s.config(mode, "allow", &[]));
        // udpv6_sendmsg hands a datagram for ::ffff:a.b.c.d to udp_sendmsg
        // with a sockaddr_in before the IPv6 sendmsg hook would run, so the
        // kernel runs sendmsg4 for it
        // (https://github.com/torvalds/linux/blob/v6.18/net/ipv6/udp.c).
        let hook_of = |ip: IpAddr| match ip {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => ("sendmsg6", "ipv6"),
            _ => ("sendmsg4", "ipv4"),
        };
        for (ip, ..) in destinations(DENIED_V4, DENIED_V6) {
            for a in attempts(&s.sb, Proto::UdpSendto, ip, N) {
                if mode == "enforce" {
                    assert!(
                        a.refused(),
                        "sendto {ip} in enforce mode must fail with EPERM: {a:?}"
                    );
                } else {
                    assert!(a.ok, "sendto {ip} in observe mode must be sent: {a:?}");
                }
            }
        }
        for (ip, ..) in destinations(APPROVED_V4, APPROVED_V6) {
            for a in attempts(&s.sb, Proto::UdpSendto, ip, N) {
                assert!(a.ok, "sendto approved {ip}: {a:?}");
            }
        }
        let m = agent.scrape();
        for (dests, country, verdict) in [
            (destinations(DENIED_V4, DENIED_V6), DENIED_COUNTRY, verdict),
            (
                destinations(APPROVED_V4, APPROVED_V6),
                APPROVED_COUNTRY,
                "allowed",
            ),
        ] {
            let mut expected: std::collections::BTreeMap<(&str, &str), f64> = Default::default();
            for (ip, ..) in dests {
                *expected.entry(hook_of(ip)).or_default() += N as f64;
            }
            for ((hook, family), n) in expected {
                assert_eq!(
                    count(&m, hook, family, country, verdict),
                    n,
                    "{mode} {hook} {family} {country}\n{}",
                    m.text
                );
            }
        }
        // The connect hooks saw none of it: nothing was connected.
        assert_eq!(
            m.sum("enforcer_connections_total", &[("hook", "connect4")]),
            0.0,
            "{}",
            m.text
        );
        assert_eq!(
            m.sum("enforcer_connections_total", &[("hook", "connect6")]),
            0.0,
            "{}",
            m.text
        );
    }
}
