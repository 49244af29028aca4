//! Destinations no database locates follow `unknown`; the built-in
//! never-geolocated ranges are never refused.

use std::net::{IpAddr, SocketAddr};

use enforcer_tests::{
    privileged,
    probe::{Proto, attempt, attempts_to},
    scenario::*,
    skip_unless,
};

/// Decisions made by the connect hooks. (The datagram a connected UDP probe
/// then sends to a `::ffff:` address passes the kernel's sendmsg4 hook too;
/// tests/connect.rs counts that.)
fn connects(m: &enforcer_tests::metrics::Metrics, labels: &[(&str, &str)]) -> f64 {
    ["connect4", "connect6"]
        .iter()
        .map(|hook| {
            let mut l = labels.to_vec();
            l.push(("hook", hook));
            m.sum("enforcer_connections_total", &l)
        })
        .sum()
}

#[test]
fn unknown_deny_refuses_and_unknown_allow_lets_through() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    for (unknown, refused) in [("deny", true), ("allow", false)] {
        let s = Scenario::new();
        let agent = s.start(&s.config("enforce", unknown, &[]));
        for ip in [
            IpAddr::V4(UNKNOWN_V4),
            IpAddr::V6(UNKNOWN_V6),
            mapped(UNKNOWN_V4),
        ] {
            for proto in [Proto::Tcp, Proto::Udp] {
                let a = attempt(&s.sb, proto, ip);
                if refused {
                    assert!(a.refused(), "unknown = {unknown}: {proto:?} {ip}: {a:?}");
                } else {
                    assert!(a.ok, "unknown = {unknown}: {proto:?} {ip}: {a:?}");
                }
            }
        }
        let m = agent.scrape();
        let verdict = if refused { "denied" } else { "allowed" };
        assert_eq!(
            connects(&m, &[("country", "unknown"), ("verdict", verdict)]),
            6.0,
            "unknown = {unknown}\n{}",
            m.text
        );
    }
}

#[test]
fn builtin_ranges_are_never_refused() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    // The strictest policy: enforce, only the EEA, unknown denied.
    let agent = s.start(&s.config("enforce", "deny", &[]));
    let exempt: &[&str] = &[
        "127.0.0.1",
        "127.1.2.3",
        "0.0.0.0",
        "10.1.2.3",
        "172.16.0.9",
        "172.31.255.254",
        "192.168.1.1",
        "169.254.10.10",
        "224.0.0.251",
        "239.1.2.3",
        "255.255.255.255",
        "::1",
        "fd00::1",
        "fc00::9",
        "fe80::1",
        "ff02::1",
        "::ffff:10.0.0.1",
        "::ffff:127.0.0.1",
    ];
    let mut made = 0;
    for ip in exempt {
        let ip: IpAddr = ip.parse().expect("address");
        for proto in [Proto::Tcp, Proto::Udp] {
            // Multicast and broadcast take no TCP.
            let multicast_like =
                ip.is_multicast() || ip == IpAddr::V4(std::net::Ipv4Addr::BROADCAST);
            if proto == Proto::Tcp && multicast_like {
                continue;
            }
            let a = attempts_to(&s.sb, proto, SocketAddr::new(ip, 9), 1, true).remove(0);
            assert!(
                !a.refused(),
                "{proto:?} to built-in range {ip} must not be refused: {a:?}"
            );
            made += 1;
        }
    }
    // The control: the same policy does refuse what it should.
    let control = attempt(&s.sb, Proto::Tcp, IpAddr::V4(UNKNOWN_V4));
    assert!(
        control.refused(),
        "unknown must be refused under this policy: {control:?}"
    );

    let m = agent.scrape();
    assert_eq!(
        connects(&m, &[("verdict", "exempt")]),
        made as f64,
        "{}",
        m.text
    );
    assert_eq!(
        m.sum("enforcer_connections_total", &[("verdict", "denied")]),
        1.0,
        "{}",
        m.text
    );
}
