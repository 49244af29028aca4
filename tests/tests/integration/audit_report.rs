//! `enforcer audit report` over the log of a real agent run: observe,
//! would-refusals to two countries, `enforcer mode enforce`, refusals, a
//! reload, a restart on the same pin directory and log, more refusals.
//! Every figure of the JSON is computed again here from the log's JSON
//! lines by this test's own small parser, and the HTML must show the same
//! figures.
//!
//! `EE_REPORT_COPY=FILE` keeps a copy of the HTML page (for a look in a
//! browser); the scenario's directory is removed at the end.

use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, Ipv4Addr},
    path::Path,
    process::{Command, Output},
    time::{Duration, SystemTime},
};

use enforcer_tests::{
    agent::{Agent, enforcer, enforcer_at, enforcer_binary},
    privileged,
    probe::{Proto, attempt},
    scenario::*,
    skip_unless,
};
use serde_json::Value;

/// The second non-approved country: the sandbox's "unknown" server
/// address, mapped by an extra CSV source.
const CN_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 30);

fn report(args: &[&str]) -> Output {
    Command::new(enforcer_binary())
        .args(["audit", "report"])
        .args(args)
        .output()
        .expect("run enforcer audit report")
}

fn micros(t: &str) -> i64 {
    let st = humantime::parse_rfc3339(t).expect("RFC 3339 time");
    st.duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_micros() as i64
}

/// The figures, computed from the log's lines with the rules of
/// docs/events-and-audit.md ("The audit report") for what this run holds:
/// agent up/down, crash, the global mode (stated by checkpoints and
/// mode changes, forgotten at a start).
#[derive(Debug, Default)]
struct Expected {
    enforced: u64,
    observed: u64,
    not_covered: u64,
    period: u64,
    by_country: BTreeMap<String, (u64, u64)>,
    by_day: BTreeMap<String, (u64, u64)>,
    modes: Vec<(String, String, u64, String)>,
    policy_loads: u64,
    checkpoints: u64,
}

fn expected(log: &Path) -> Expected {
    let recs: Vec<Value> = fs::read_to_string(log)
        .expect("log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record"))
        .collect();
    let mut e = Expected::default();
    let mut up = false;
    let mut mode: Option<String> = None;
    let mut clock = micros(
        recs.first().expect("records")["time"]
            .as_str()
            .expect("time"),
    );
    let start = clock;
    for (i, r) in recs.iter().enumerate() {
        let kind = r["kind"].as_str().expect("kind");
        let t = micros(r["time"].as_str().expect("time"));
        if i > 0 {
            // A clock stepping back is not counted twice.
            let d = (t - clock).max(0) as u64;
            clock = clock.max(t);
            let crash = kind == "agent_start" && up;
            match mode.as_deref() {
                _ if crash || !up => e.not_covered += d,
                Some("enforce") => e.enforced += d,
                Some("observe") => e.observed += d,
                _ => e.not_covered += d,
            }
        }
        match kind {
            "agent_start" => {
                up = true;
                mode = None;
            }
            "agent_stop" => up = false,
            "checkpoint" => {
                up = true;
                mode = Some(r["mode"].as_str().expect("mode").to_owned());
                e.checkpoints += 1;
            }
            "mode_change" => {
                mode = Some(r["to"].as_str().expect("to").to_owned());
                e.modes.push((
                    r["from"].as_str().expect("from").to_owned(),
                    r["to"].as_str().expect("to").to_owned(),
                    r["uid"].as_u64().expect("uid"),
                    r["reason"].as_str().expect("reason").to_owned(),
                ));
            }
            "policy_load" => e.policy_loads += 1,
            "event" => {
                let denied = r["verdict"] == "denied";
                let day = r["event_time"].as_str().expect("event_time")[..10].to_owned();
                let country = r["country"].as_str().expect("country").to_owned();
                for v in [
                    e.by_country.entry(country).or_default(),
                    e.by_day.entry(day).or_default(),
                ] {
                    if denied { v.0 += 1 } else { v.1 += 1 }
                }
            }
            _ => {}
        }
    }
    e.period = (clock - start) as u64;
    e
}

fn pct(v: u64, total: u64) -> f64 {
    (v as f64 * 100_000.0 / total as f64).round() / 1000.0
}

#[test]
fn the_report_states_what_the_log_of_a_real_run_holds() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let socket = s.control_socket();
    let keys = s.dir.path().join("keys");
    fs::create_dir(&keys).expect("keys dir");
    let origin = format!("{}.test/egress-enforcer", s.sb.id);
    let out = enforcer(&[
        "audit",
        "keygen",
        "--name",
        &origin,
        "--out",
        &keys.display().to_string(),
    ]);
    assert!(out.status.success(), "keygen: {out:?}");
    let public = keys.join("audit.pub").display().to_string();
    let cn = s.dir.path().join("cn.csv");
    fs::write(&cn, "cidr,country\n198.51.100.30/32,CN\n").expect("extra source");
    let config = s
        .config_with(
            "observe",
            "allow",
            std::slice::from_ref(&cn),
            "",
            &s.events_table(1000, 1000),
        )
        .replace(
            "[audit]\n",
            &format!(
                "[audit]\ncheckpoint_interval = \"1s\"\nsigning_key = {:?}\norigin = {origin:?}\n",
                keys.join("audit.key").display().to_string()
            ),
        );
    let us = IpAddr::V4(DENIED_V4);
    let cn_ip = IpAddr::V4(CN_V4);
    let mut agent = s.start(&config);
    // Observe: three would-refusals (US 1, CN 2).
    assert!(attempt(&s.sb, Proto::Tcp, us).ok, "observe");
    assert!(attempt(&s.sb, Proto::Tcp, cn_ip).ok, "observe");
    assert!(attempt(&s.sb, Proto::Tcp, cn_ip).ok, "observe");
    std::thread::sleep(Duration::from_millis(300));
    let out = enforcer_at(
        &socket,
        &["mode", "enforce", "--reason", "ticket 17: go live"],
    );
    assert!(out.status.success(), "{out:?}");
    // Enforce: two refusals (US 1, CN 1).
    assert!(attempt(&s.sb, Proto::Tcp, us).refused(), "enforce");
    assert!(attempt(&s.sb, Proto::Tcp, cn_ip).refused(), "enforce");
    assert!(enforcer_at(&socket, &["reload"]).status.success());
    agent.wait_for_metrics("five events", Duration::from_secs(30), |m| {
        m.sum("enforcer_events_total", &[]) == 5.0
    });
    std::thread::sleep(Duration::from_millis(1200));
    assert!(agent.stop().success(), "{}", agent.log());
    // Down for a while, then a second agent on the same pins and log.
    std::thread::sleep(Duration::from_millis(500));
    let mut second = Agent::start_with(&agent.config, &s.pin_dir)
        .unwrap_or_else(|f| panic!("restart: {}", f.stderr));
    assert!(attempt(&s.sb, Proto::Tcp, us).refused(), "enforce kept");
    assert!(attempt(&s.sb, Proto::Tcp, us).refused(), "enforce kept");
    assert!(attempt(&s.sb, Proto::Tcp, cn_ip).refused(), "enforce kept");
    second.wait_for_metrics("three events", Duration::from_secs(30), |m| {
        m.sum("enforcer_events_total", &[]) == 3.0
    });
    std::thread::sleep(Duration::from_millis(1200));
    assert!(second.stop().success(), "{}", second.log());
    drop(agent);

    let log = s.audit_log();
    let log_arg = log.display().to_string();
    let out = report(&["--format", "json", "--key", &public, &log_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let e = expected(&log);
    eprintln!("independent: {e:?}");
    assert_eq!(v["ok"], true, "{v:#}");
    let hosts = v["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 1, "{v:#}");
    let h = &hosts[0];
    assert_eq!(h["host"], origin.as_str());
    assert_eq!(h["host_from"], "checkpoint origin");
    assert_eq!(h["chain"]["intact"], true, "{:#}", h["chain"]);
    assert_eq!(h["period"]["duration_us"], e.period);

    // Time shares: record times are in the log, so exact.
    let g = &h["scopes"][0];
    assert_eq!(g["scope"], "(global)");
    assert_eq!(g["enforced_us"], e.enforced, "{g:#}");
    assert_eq!(g["observed_us"], e.observed, "{g:#}");
    assert_eq!(g["not_covered_us"], e.not_covered, "{g:#}");
    assert_eq!(g["enforced_pct"], pct(e.enforced, e.period));
    assert_eq!(g["observed_pct"], pct(e.observed, e.period));
    assert_eq!(g["not_covered_pct"], pct(e.not_covered, e.period));
    assert!(e.enforced > 0 && e.observed > 0, "{e:?}");
    // The stop-to-start interval alone is at least the 500 ms waited.
    assert!(e.not_covered >= 500_000, "{e:?}");
    assert_eq!(e.enforced + e.observed + e.not_covered, e.period);

    // Refusals and would-refusals by country and by day.
    assert_eq!(
        e.by_country,
        BTreeMap::from([
            ("CN".to_owned(), (2, 2)),
            (DENIED_COUNTRY.to_owned(), (3, 1))
        ]),
        "what the test did"
    );
    for (m, json) in [
        (&e.by_country, &h["events"]["by_country"]),
        (&e.by_day, &h["events"]["by_day"]),
    ] {
        let got: BTreeMap<String, (u64, u64)> = json
            .as_object()
            .expect("map")
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    (
                        v["denied"].as_u64().expect("n"),
                        v["would_deny"].as_u64().expect("n"),
                    ),
                )
            })
            .collect();
        assert_eq!(&got, m, "{json:#}");
    }
    assert_eq!(h["events"]["total"]["denied"], 5);
    assert_eq!(h["events"]["total"]["would_deny"], 3);
    let scopes = h["events"]["by_scope"].as_object().expect("by scope");
    assert_eq!(scopes.len(), 1, "one scope, the sandbox: {scopes:?}");

    // The mode and policy timeline.
    let timeline = h["timeline"].as_array().expect("timeline");
    let modes: Vec<(String, String, u64, String)> = timeline
        .iter()
        .filter(|t| t["kind"] == "mode_change")
        .map(|t| {
            let who = t["who"].as_str().expect("who");
            (
                t["what"].as_str().expect("what").to_owned(),
                who.to_owned(),
                0,
                t["why"].as_str().expect("why").to_owned(),
            )
        })
        .collect();
    assert_eq!(modes.len(), e.modes.len(), "{timeline:#?}");
    assert_eq!(e.modes[0].3, "ticket 17: go live");
    for (got, want) in modes.iter().zip(&e.modes) {
        assert_eq!(got.0, format!("mode {} -> {}", want.0, want.1));
        assert!(got.1.starts_with(&format!("uid {}", want.2)), "{got:?}");
        assert_eq!(got.3, want.3);
    }
    let loads: Vec<&Value> = timeline
        .iter()
        .filter(|t| t["kind"] == "policy_load")
        .collect();
    assert_eq!(loads.len() as u64, e.policy_loads);
    assert_eq!(e.policy_loads, 3, "start, reload, start");
    let triggers: Vec<&str> = loads
        .iter()
        .map(|t| t["why"].as_str().expect("why"))
        .collect();
    assert_eq!(
        triggers,
        ["trigger start", "trigger control", "trigger start"]
    );
    for t in &loads {
        assert_eq!(t["policy_sha256"].as_str().map(str::len), Some(64), "{t:#}");
        assert_eq!(
            t["database_sha256"].as_array().map(Vec::len),
            Some(2),
            "{t:#}"
        );
    }
    assert_eq!(
        timeline
            .iter()
            .filter(|t| t["kind"] == "agent_start")
            .count(),
        2
    );

    // Every checkpoint signed and verified.
    let sig = &h["signatures"];
    assert_eq!(sig["checkpoints"], e.checkpoints, "{sig:#}");
    assert_eq!(sig["verified"], e.checkpoints, "{sig:#}");
    assert!(e.checkpoints >= 4, "{sig:#}");
    let conclusion = h["conclusion"].as_str().expect("conclusion");
    eprintln!("conclusion: {conclusion}");
    assert!(
        conclusion.contains(&format!(
            "{}/{} checkpoints verified",
            e.checkpoints, e.checkpoints
        )) && conclusion.contains("chain intact")
            && conclusion.contains("5 refusals (CN 2, US 3), 3 would-refusals (CN 2, US 1)"),
        "{conclusion}"
    );

    // The page shows the same figures.
    let html_path = s.dir.path().join("report.html");
    let out = report(&[
        "--key",
        &public,
        "--out",
        &html_path.display().to_string(),
        &log_arg,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = fs::read_to_string(&html_path).expect("report.html");
    if let Some(copy) = std::env::var_os("EE_REPORT_COPY") {
        fs::copy(&html_path, copy).expect("copy the report");
    }
    assert!(
        !html.contains("<script") && !html.contains("<link"),
        "self-contained"
    );
    assert!(html.contains(conclusion), "the conclusion");
    for p in [
        pct(e.enforced, e.period),
        pct(e.observed, e.period),
        pct(e.not_covered, e.period),
    ] {
        assert!(
            html.contains(&format!("<td class=\"n\">{p:.1}%</td>")),
            "{p:.1}% in the shares table"
        );
    }
    for (country, (denied, would)) in &e.by_country {
        assert!(
            html.contains(&format!(
                "<tr><td>{country}</td><td class=\"n\">{denied}</td><td class=\"n\">{would}</td></tr>"
            )),
            "{country} counts"
        );
    }
    for (day, (denied, would)) in &e.by_day {
        assert!(
            html.contains(&format!(
                "<tr><td>{day}</td><td class=\"n\">{denied}</td><td class=\"n\">{would}</td>"
            )),
            "{day} counts"
        );
    }
    assert!(html.contains("ticket 17: go live"));
    assert!(html.contains(&format!(
        "{} checkpoints: {} verified, 0 bad",
        e.checkpoints, e.checkpoints
    )));
    in_a_browser(&html_path, conclusion, &s.dir.path().join("report.png"));

    // A broken chain: still a report, saying so, and exit status 1.
    let broken = s.dir.path().join("broken.jsonl");
    let text = fs::read_to_string(&log).expect("log");
    fs::write(
        &broken,
        text.replacen("\"country\":\"CN\"", "\"country\":\"DE\"", 1),
    )
    .expect("edit");
    let out = report(&["--format", "json", &broken.display().to_string()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(v["ok"], false);
    assert!(
        v["hosts"][0]["conclusion"]
            .as_str()
            .is_some_and(|c| c.contains("CHAIN BROKEN")),
        "{v:#}"
    );
    let out = report(&["--format", "json", "/nonexistent/audit.jsonl"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(v["ok"], false);
}

/// The page as a browser makes of it (Debian's `chromium`, headless): its
/// DOM still holds the conclusion (the HTML parses as written), and its
/// screenshot is a drawn page, not a blank one (a blank 1280x2000 PNG is a
/// few KiB; the report's charts and tables make it hundreds).
fn in_a_browser(html: &Path, conclusion: &str, png: &Path) {
    let chromium = |extra: &[String]| -> Output {
        Command::new("timeout")
            .arg("120")
            .arg("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .args(extra)
            .arg(format!("file://{}", html.display()))
            .output()
            .expect("run chromium (Debian's chromium; `cargo xtask setup` installs it)")
    };
    let dom = chromium(&["--dump-dom".to_owned()]);
    assert!(dom.status.success(), "chromium --dump-dom: {dom:?}");
    assert!(
        String::from_utf8_lossy(&dom.stdout).contains(conclusion),
        "the conclusion in chromium's DOM"
    );
    let shot = chromium(&[
        format!("--screenshot={}", png.display()),
        "--window-size=1280,2000".to_owned(),
    ]);
    assert!(shot.status.success(), "chromium --screenshot: {shot:?}");
    let size = fs::metadata(png).map(|m| m.len()).unwrap_or(0);
    assert!(size > 50_000, "a drawn page, not a blank one: {size} bytes");
}
