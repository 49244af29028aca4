//! The sample of allowed destinations (`ALLOWED_SAMPLE`, `[events]
//! allowed_file`) and `enforcer whatif --sample`: an agent in observe mode
//! with an events file; connections to the sandbox's approved (DE) peers,
//! IPv4 and IPv6, and to a refused (US) one. The sample file gets the DE
//! destinations, with the scope entry, a count of at least one and at
//! most the decisions the kernel counted for them (the sample counts
//! uncached decisions only), and nothing refused; the agent's metric
//! counts its lines. Then whatif with a candidate that no longer
//! approves DE reports exactly those destinations as approved -> refused,
//! computed here from the traffic, the test database and the approved
//! lists (a model, not the agent's code); without `--sample` it reports
//! none of them and says allowed traffic is not covered.

use std::{
    collections::BTreeSet,
    fs,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use enforcer_tests::{
    agent::enforcer,
    events, privileged,
    probe::{Proto, Runner},
    sandbox::PORT,
    scenario::*,
    skip_unless,
};
use serde_json::Value;

/// The test database's countries (`TEST_DB_CSV`); the rest is unknown.
fn country(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) if a == APPROVED_V4 => Some("DE"),
        IpAddr::V4(a) if a == DENIED_V4 => Some("US"),
        IpAddr::V6(a) if a == APPROVED_V6 => Some("DE"),
        IpAddr::V6(a) if a == DENIED_V6 => Some("US"),
        _ => None,
    }
}

/// The model: approved under an approved list (unknown denied).
fn approved(list: &[&str], ip: IpAddr) -> bool {
    country(ip).is_some_and(|c| list.contains(&c))
}

/// The recording's policy, as far as the test database goes: the EEA
/// (DE in, US out).
const RECORDED: &[&str] = &["DE"];
/// The candidate: FR only, so DE is refused.
const CANDIDATE: &[&str] = &["FR"];

fn whatif_json(args: &[&str]) -> Value {
    let mut all = vec!["whatif"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    let out = enforcer(&all);
    assert!(
        out.status.success(),
        "whatif {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("whatif JSON")
}

/// `(dst, scope)` of the listed rows.
fn keys(rows: &Value) -> BTreeSet<(String, Option<String>)> {
    rows.as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["dst"].as_str().expect("dst").to_owned(),
                r["scope"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

#[test]
fn the_sample_holds_allowed_destinations_and_whatif_sees_them_refused() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let mut agent =
        s.start(&s.config_with("observe", "deny", &[], "", &s.events_table(1000, 1000)));
    let sample_file = {
        let mut p = s.events_file().into_os_string();
        p.push(".allowed.jsonl");
        std::path::PathBuf::from(p)
    };
    let scope = s.sb.cgroup.display().to_string();

    // (peer, connections): two approved peers, one refused.
    let traffic: Vec<(IpAddr, u32)> = vec![
        (IpAddr::V4(APPROVED_V4), 5),
        (IpAddr::V6(APPROVED_V6), 3),
        (IpAddr::V4(DENIED_V4), 2),
    ];
    for (ip, n) in &traffic {
        let got = Runner::new(&s.sb).connect(Proto::Tcp, SocketAddr::new(*ip, PORT), *n);
        // Observe: everything goes through.
        assert!(got.iter().all(|a| !a.refused()), "{ip}: {got:?}");
    }
    let allowed: BTreeSet<IpAddr> = traffic
        .iter()
        .map(|(ip, _)| *ip)
        .filter(|ip| approved(RECORDED, *ip))
        .collect();
    let refused: BTreeSet<IpAddr> = traffic
        .iter()
        .map(|(ip, _)| *ip)
        .filter(|ip| !approved(RECORDED, *ip))
        .collect();
    assert!(!allowed.is_empty() && !refused.is_empty());

    // The agent's pass every 10 s writes them while it runs (no restart
    // or stop needed); wait up to two passes and a little more.
    let m = agent.wait_for_metrics("the allowed sample's lines", Duration::from_secs(25), |m| {
        m.sum("enforcer_allowed_sample_lines_total", &[]) >= allowed.len() as f64
    });
    assert_eq!(m.sum("enforcer_allowed_sample_errors_total", &[]), 0.0);
    // The kernel's decisions for DE, cached or not, by family: a sample
    // entry's count can be no more than these.
    let decisions = |family: &str| {
        let l = [
            ("country", "DE"),
            ("verdict", "allowed"),
            ("family", family),
        ];
        m.sum("enforcer_connections_total", &l) + m.sum("enforcer_packets_total", &l)
    };
    let lines = events::read(&sample_file);
    for l in &lines {
        let dst: IpAddr = l["dst"].as_str().expect("dst").parse().expect("an address");
        assert!(!refused.contains(&dst), "a refused destination: {l}");
        assert!(l["verdict"] == "allowed" || l["verdict"] == "exempt", "{l}");
    }
    for ip in &allowed {
        let sent = traffic.iter().find(|(a, _)| a == ip).expect("sent").1;
        let mine: Vec<&Value> = lines
            .iter()
            .filter(|l| l["dst"] == ip.to_string())
            .collect();
        assert!(!mine.is_empty(), "{ip} not in the sample:\n{lines:#?}");
        // Its last line has the entry's total so far.
        let last = mine.last().expect("a line");
        assert_eq!(last["scope"], scope, "{last}");
        assert_eq!(last["country"], "DE", "{last}");
        assert_eq!(last["verdict"], "allowed", "{last}");
        assert_eq!(last["reason"], "geoip", "{last}");
        let family = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
        assert_eq!(last["family"], family, "{last}");
        assert!(
            last["first_seen"].as_str() <= last["last_seen"].as_str(),
            "{last}"
        );
        let count = last["count"].as_u64().expect("a count");
        let kernel = decisions(family);
        eprintln!("{ip}: sample count {count}, kernel decisions {kernel}, connections {sent}");
        // Each of the `sent` connections was decided at connect() or from
        // the per-CPU verdict cache; only the former are counted.
        assert!(
            count >= 1 && count as f64 <= kernel && kernel >= f64::from(sent),
            "{ip}: count {count}, kernel decisions {kernel}, connections {sent}\n{last}"
        );
    }
    // Its memory, the kernel's own accounting: bounded by its size.
    let memory = enforcer::datapath::map_memory(&s.pin_dir).expect("map memory");
    let bytes = memory
        .get("ALLOWED_SAMPLE")
        .copied()
        .expect("ALLOWED_SAMPLE is pinned");
    eprintln!("ALLOWED_SAMPLE: {bytes} bytes (4096 entries)");
    assert!(
        bytes > 4096 * 56 && bytes < 1024 * 1024,
        "ALLOWED_SAMPLE takes {bytes} bytes"
    );
    agent.stop();
    // A clean stop makes one more pass: nothing new, nothing lost.
    let after = events::read(&sample_file);
    assert!(after.len() >= lines.len(), "the file only grows");

    // whatif: a candidate approving FR only. The model: the destinations
    // approved by the recording (the sample's) and refused by the
    // candidate, in the sandbox's scope entry.
    let cand = s.dir.path().join("candidate.toml");
    fs::write(
        &cand,
        format!(
            "mode = \"enforce\"\napproved = [\"FR\"]\nunknown = \"deny\"\n\
             [geoip]\nsources = [{:?}]\n[scope]\nhost_wide = true\n",
            s.db.display().to_string()
        ),
    )
    .expect("write the candidate");
    let expect: BTreeSet<(String, Option<String>)> = allowed
        .iter()
        .filter(|ip| approved(RECORDED, **ip) && !approved(CANDIDATE, **ip))
        .map(|ip| (ip.to_string(), Some(scope.clone())))
        .collect();
    assert_eq!(expect.len(), 2, "both DE peers");
    let c = cand.to_str().expect("utf-8");
    let ev = s.events_file();
    let e = ev.to_str().expect("utf-8");
    let sf = sample_file.to_str().expect("utf-8");
    let v = whatif_json(&["--config", c, "--events", e, "--sample", sf]);
    let changed = &v["changed"];
    let a2r: BTreeSet<_> = changed
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["before"] == "approved" && r["after"] == "refused")
        .map(|r| {
            (
                r["dst"].as_str().expect("dst").to_owned(),
                r["scope"].as_str().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(a2r, expect, "{v:#}");
    assert_eq!(keys(changed), expect, "nothing else changes\n{v:#}");
    assert_eq!(v["totals"]["approved_to_refused"], 2, "{v:#}");
    assert_eq!(v["totals"]["refused_to_approved"], 0, "{v:#}");
    assert_eq!(v["totals"]["sample_lines"], after.len(), "{v:#}");
    assert_eq!(v["allowed_traffic_covered"], "sampled", "{v:#}");
    assert_eq!(v["sample_bound"], 4096, "{v:#}");
    assert!(
        v["note"].as_str().expect("note").contains("at most 4096"),
        "{v:#}"
    );
    // One group: approved -> refused, DE, the sandbox's scope.
    let groups = v["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 1, "{v:#}");
    assert_eq!(
        (
            &groups[0]["from"],
            &groups[0]["to"],
            &groups[0]["country"],
            &groups[0]["scope"],
            &groups[0]["destinations"]
        ),
        (
            &Value::from("approved"),
            &Value::from("refused"),
            &Value::from("DE"),
            &Value::from(scope.clone()),
            &Value::from(2)
        ),
        "{v:#}"
    );
    // The refused peer stays refused: unchanged.
    assert!(
        keys(&v["unchanged"])
            .iter()
            .any(|(d, _)| refused.contains(&d.parse().expect("ip"))),
        "{v:#}"
    );

    // Without the sample, the approved side is invisible.
    let v = whatif_json(&["--config", c, "--events", e]);
    assert_eq!(v["totals"]["approved_to_refused"], 0, "{v:#}");
    assert_eq!(v["allowed_traffic_covered"], false, "{v:#}");

    // A sample line that is not one: counted with its line, skipped.
    let broken = s.dir.path().join("broken.allowed.jsonl");
    let mut text = fs::read_to_string(&sample_file).expect("read the sample");
    text.push_str("{\"dst\":\"198.51.100.20\",\"verdict\":\"would_deny\"}\n");
    fs::write(&broken, text).expect("write");
    let v = whatif_json(&["--config", c, "--sample", broken.to_str().expect("utf-8")]);
    assert_eq!(v["totals"]["unreadable_lines"], 1, "{v:#}");
    assert_eq!(v["unreadable"][0]["line"], after.len() + 1, "{v:#}");
    assert_eq!(keys(&v["changed"]), expect, "{v:#}");
}
