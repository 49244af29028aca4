//! Events: every refused or would-refuse decision becomes one JSON line
//! whose fields are those of the process and socket that caused it, and a
//! burst above the in-kernel rate limit is accounted for exactly.

use std::{
    net::{IpAddr, SocketAddr},
    os::unix::fs::MetadataExt as _,
    time::{SystemTime, UNIX_EPOCH},
};

use enforcer_tests::{
    events, privileged,
    probe::{Proto, Runner},
    sandbox::PORT,
    scenario::*,
    skip_unless,
};
use serde_json::{Value, json};

const NOBODY: u32 = 65534;

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Seconds since the epoch of an RFC 3339 UTC time as the agent writes it
/// (`2026-11-23T10:00:00.123456Z`).
fn parse_time(t: &str) -> f64 {
    let parsed = humantime::parse_rfc3339(t).unwrap_or_else(|e| panic!("event time {t:?}: {e}"));
    parsed
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[test]
fn every_event_field_is_that_of_the_process_and_socket() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let file = s.events_file();
    let _agent = s.start(&s.config_with("enforce", "allow", &[], "", &s.events_table(1000, 1000)));
    // Events name processes, users and destinations: not for every user.
    let mode = std::fs::metadata(&file).expect("events file").mode() & 0o777;
    assert_eq!(mode, 0o640, "events file mode {mode:o}");
    let cgroup_id = std::fs::metadata(&s.sb.cgroup).expect("cgroup").ino();
    let cgroup_path = s.sb.cgroup.display().to_string();

    let before = unix_now();
    // Three roads, three processes: TCP connect as an unprivileged user,
    // an unconnected UDP datagram over IPv6, and an ICMP echo over a raw
    // socket (root: raw sockets need CAP_NET_RAW).
    let nobody = Runner::new(&s.sb).as_user(NOBODY);
    let tcp = nobody.connect(Proto::Tcp, SocketAddr::new(IpAddr::V4(DENIED_V4), PORT), 1);
    let udp = nobody.connect(
        Proto::UdpSendto,
        SocketAddr::new(IpAddr::V6(DENIED_V6), PORT),
        1,
    );
    let ping = Runner::new(&s.sb).ping(IpAddr::V4(DENIED_V4), 1);
    let after = unix_now();
    assert!(tcp[0].refused() && udp[0].refused(), "{tcp:?} {udp:?}");
    assert!(!ping[0].ok, "the echo request is dropped: {ping:?}");

    let all = events::wait_for(&file, "three events", |e| e.len() >= 3);
    assert_eq!(all.len(), 3, "one event per refused decision: {all:#?}");

    let located_by = json!({ "path": s.db.display().to_string(), "kind": "csv" });
    let pid = |a: &enforcer_tests::probe::Attempt| json!(a.pid.expect("ee-probe reports its pid"));
    let expected = [
        json!({
            "hook": "connect4", "family": "ipv4", "protocol": "tcp",
            "dst": DENIED_V4.to_string(), "dport": PORT, "country": DENIED_COUNTRY,
            "verdict": "denied", "mode": "enforce", "reason": "geoip",
            "pid": pid(&tcp[0]), "tgid": pid(&tcp[0]), "uid": NOBODY, "gid": NOBODY,
            "comm": "ee-probe", "cgroup_id": cgroup_id, "cgroup": cgroup_path,
            // The scope entry is the sandbox cgroup itself.
            "scope": cgroup_path,
            // The test database located the destination.
            "located_by": located_by,
            "direction": "outbound",
        }),
        json!({
            "hook": "sendmsg6", "family": "ipv6", "protocol": "udp",
            "dst": DENIED_V6.to_string(), "dport": PORT, "country": DENIED_COUNTRY,
            "verdict": "denied", "mode": "enforce", "reason": "geoip",
            "pid": pid(&udp[0]), "tgid": pid(&udp[0]), "uid": NOBODY, "gid": NOBODY,
            "comm": "ee-probe", "cgroup_id": cgroup_id, "cgroup": cgroup_path,
            // The scope entry is the sandbox cgroup itself.
            "scope": cgroup_path,
            // The test database located the destination.
            "located_by": located_by,
            "direction": "outbound",
        }),
        // A raw socket never went through connect/sendmsg: the packet hook
        // knows the socket's owner uid, not the process (the kernel runs it
        // for the packet, possibly in softirq).
        json!({
            "hook": "skb_egress", "family": "ipv4", "protocol": "icmp",
            "dst": DENIED_V4.to_string(), "country": DENIED_COUNTRY,
            "verdict": "denied", "mode": "enforce", "reason": "geoip",
            "uid": 0, "cgroup_id": cgroup_id, "cgroup": cgroup_path,
            // The scope entry is the sandbox cgroup itself.
            "scope": cgroup_path,
            // The test database located the destination.
            "located_by": located_by,
            "direction": "outbound",
            // IPv4 header (20) + the probe's 16-byte echo request.
            "bytes": 36,
        }),
    ];
    for want in expected {
        let want = want.as_object().expect("object");
        let got = all
            .iter()
            .find(|e| e["hook"] == want["hook"])
            .unwrap_or_else(|| panic!("no {} event in {all:#?}", want["hook"]));
        for (k, v) in want {
            assert_eq!(&got[k], v, "field {k} of {got:#}");
        }
        // Nothing else is claimed: no pid on a packet event, no port on ICMP.
        let extra: Vec<&String> = got
            .as_object()
            .expect("object")
            .keys()
            // The local port is the kernel's choice (absent when the
            // socket was not bound yet): checked for its type only.
            .filter(|k| !want.contains_key(*k) && !matches!(k.as_str(), "time" | "sport"))
            .collect();
        assert!(extra.is_empty(), "unexpected fields {extra:?} in {got:#}");
        if let Some(p) = got.get("sport") {
            assert!(
                p.as_u64().is_some_and(|p| p > 0 && p < 65536),
                "sport {p} in {got:#}"
            );
        }
        let t = parse_time(got["time"].as_str().expect("time is a string"));
        assert!(
            t >= before - 1.0 && t <= after + 1.0,
            "event time {t} outside the test's window [{before}, {after}]"
        );
    }
}

#[test]
fn a_burst_above_the_rate_limit_is_suppressed_and_counted_exactly() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    const SENT: u32 = 60;
    const BURST: u32 = 4;
    let s = Scenario::new();
    let file = s.events_file();
    let agent = s.start(&s.config_with("enforce", "allow", &[], "", &s.events_table(1, BURST)));

    let got = Runner::new(&s.sb).connect(
        Proto::UdpSendto,
        SocketAddr::new(IpAddr::V4(DENIED_V4), PORT),
        SENT,
    );
    assert!(got.iter().all(|a| a.refused()), "{got:?}");

    // Every decision is either delivered as an event or counted as
    // suppressed: wait until the two add up (the agent reads the ring
    // buffer asynchronously), then check they agree with the file.
    let delivered_of = |m: &enforcer_tests::metrics::Metrics| {
        m.sum(
            "enforcer_events_total",
            &[("hook", "sendmsg4"), ("verdict", "denied")],
        )
    };
    let suppressed_of = |m: &enforcer_tests::metrics::Metrics| {
        m.sum(
            "enforcer_events_suppressed_total",
            &[("reason", "rate_limit")],
        )
    };
    let m = agent.wait_for_metrics(
        "delivered + suppressed to reach the datagrams sent",
        std::time::Duration::from_secs(10),
        |m| delivered_of(m) + suppressed_of(m) >= f64::from(SENT),
    );
    let (delivered, suppressed) = (delivered_of(&m), suppressed_of(&m));
    let lines = events::read(&file);
    let in_file = events::matching(&lines, &[("hook", Value::from("sendmsg4"))]).len() as f64;
    assert_eq!(
        delivered, in_file,
        "enforcer_events_total is what was written\n{}",
        m.text
    );
    assert_eq!(
        suppressed,
        f64::from(SENT) - delivered,
        "suppressed = sent - delivered\n{}",
        m.text
    );
    assert!(
        delivered >= f64::from(BURST) && delivered < f64::from(SENT),
        "the burst passes, the rest is limited: {delivered} of {SENT}"
    );
    assert_eq!(
        m.sum(
            "enforcer_events_suppressed_total",
            &[("reason", "ring_full")]
        ),
        0.0
    );
    assert_eq!(
        m.sum(
            "enforcer_connections_total",
            &[("hook", "sendmsg4"), ("verdict", "denied")]
        ),
        f64::from(SENT),
        "suppressing the event never suppresses the count"
    );
}
