//! Answers to accepted connections (issue 15, item 9): a server in scope
//! accepting a client from a non-approved country. The answer leaves
//! through the scope's packet hook like any other packet: in enforce mode
//! the SYN-ACK is dropped, the client times out, and the event says
//! `direction: "inbound"` with the service's port as `sport`; in observe
//! mode the client is served and the packets are counted as `would_deny`.
//!
//! The server (`ee-probe serve`) runs in the sandbox's client namespace and
//! scope cgroup; the client runs in the server namespace, whose route back
//! to the sandbox uses the non-approved address as its source.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use enforcer_tests::{
    events,
    metrics::Metrics,
    privileged,
    sandbox::{SERVER_IF, enter, probe_binary, sh},
    scenario::*,
    skip_unless,
};
use serde_json::Value;

/// The service's port (the sandbox's own server uses PORT and PORT + 1).
const SERVICE: u16 = 7100;

/// A server process, killed and reaped on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(s: &Scenario) -> Server {
    let mut cmd = s.sb.client_command(probe_binary());
    cmd.args(["serve", &SERVICE.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = Server(cmd.spawn().expect("spawn ee-probe serve"));
    let out = child.0.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(out)
        .read_line(&mut line)
        .expect("read ee-probe serve");
    assert_eq!(line.trim(), "ready", "ee-probe serve did not start");
    child
}

/// One TCP connection from the non-approved address to the service.
fn connect_from_denied(s: &Scenario) -> Value {
    // Only the test's own namespace: its route back to the sandbox now
    // leaves from the non-approved address.
    sh(
        "ip",
        &[
            "-n",
            &s.sb.server_ns,
            "route",
            "replace",
            &format!("{CLIENT_V4}/32"),
            "dev",
            SERVER_IF,
            "src",
            &DENIED_V4.to_string(),
        ],
    );
    let mut cmd = Command::new(probe_binary());
    enter(&mut cmd, &s.sb.server_ns, None);
    let out = cmd
        .args([
            "connect",
            "tcp",
            &CLIENT_V4.to_string(),
            &SERVICE.to_string(),
            "1",
        ])
        .output()
        .expect("run ee-probe connect");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().next().unwrap_or(""))
        .unwrap_or_else(|e| panic!("ee-probe output {text:?}: {e}"))
}

fn packets(m: &Metrics, verdict: &str) -> f64 {
    m.sum(
        "enforcer_packets_total",
        &[
            ("hook", "skb_egress"),
            ("family", "ipv4"),
            ("country", DENIED_COUNTRY),
            ("verdict", verdict),
        ],
    )
}

#[test]
fn enforce_drops_the_answer_to_a_non_approved_client_and_says_inbound() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let file = s.events_file();
    let agent = s.start(&s.config_with("enforce", "allow", &[], "", &s.events_table(1000, 1000)));
    let _server = serve(&s);

    let got = connect_from_denied(&s);
    assert_eq!(got["ok"], false, "the client must time out: {got}");
    let m = agent.scrape();
    assert!(packets(&m, "denied") >= 1.0, "{}", m.text);

    let all = events::wait_for(&file, "an inbound event", |e| {
        e.iter().any(|e| e["direction"] == "inbound")
    });
    let inbound: Vec<&Value> = all.iter().filter(|e| e["direction"] == "inbound").collect();
    for e in &inbound {
        assert_eq!(e["hook"], "skb_egress", "{e:#}");
        assert_eq!(e["protocol"], "tcp", "{e:#}");
        assert_eq!(e["dst"], DENIED_V4.to_string(), "{e:#}");
        assert_eq!(e["sport"], SERVICE, "the local (service) port: {e:#}");
        assert_eq!(e["country"], DENIED_COUNTRY, "{e:#}");
        assert_eq!(e["verdict"], "denied", "{e:#}");
        assert!(
            e["dport"].as_u64().is_some_and(|p| p != u64::from(SERVICE)),
            "dport is the client's port: {e:#}"
        );
    }
    // Nothing the server sent is reported as outbound: it never connected.
    assert!(all.iter().all(|e| e["direction"] == "inbound"), "{all:#?}");
}

#[test]
fn observe_serves_a_non_approved_client_and_counts_would_deny() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let file = s.events_file();
    let agent = s.start(&s.config_with("observe", "allow", &[], "", &s.events_table(1000, 1000)));
    let _server = serve(&s);

    let got = connect_from_denied(&s);
    assert_eq!(got["ok"], true, "observe mode serves the client: {got}");
    let m = agent.scrape();
    assert!(packets(&m, "would_deny") >= 1.0, "{}", m.text);
    assert_eq!(packets(&m, "denied"), 0.0, "{}", m.text);
    let all = events::wait_for(&file, "an inbound event", |e| {
        e.iter().any(|e| e["direction"] == "inbound")
    });
    assert!(
        all.iter().any(|e| e["direction"] == "inbound"
            && e["sport"] == SERVICE
            && e["verdict"] == "would_deny"),
        "{all:#?}"
    );
}
