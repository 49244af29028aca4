//! The agent's HTTP endpoint and the shipped Prometheus rules, checked
//! with the ecosystem's own tool, Debian's `promtool`:
//!
//! - a live scrape in the 0.0.4 text format (curl, promtool, `Accept:
//!   text/plain`) passes `promtool check metrics` (exit 0, no lint
//!   finding); the OpenMetrics one (what Prometheus asks for) has no lint
//!   finding either, and promtool's only complaints about it are the ones
//!   its 0.0.4-only parser makes about every OpenMetrics counter; it still
//!   parses as the other tests read it;
//! - `/healthz`, `/readyz` and `/` answer; `process_*` metrics and the
//!   reload gauges are there;
//! - packaging/prometheus/egress-enforcer-rules.yml passes
//!   `promtool check rules` and its unit tests (`promtool test rules`),
//!   which need no root.

use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use enforcer_tests::{
    agent::enforcer_at,
    metrics::{Metrics, OPENMETRICS_ACCEPT, get},
    privileged,
    probe::{Proto, Runner},
    sandbox::PORT,
    scenario::*,
    skip_unless,
};

fn have_promtool() -> bool {
    Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `promtool check metrics` on `text` (its stdin).
fn check_metrics(text: &str) -> Output {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("promtool stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    child.wait_with_output().expect("promtool output")
}

/// curl, as an operator would run it, with an `Accept` header or none.
fn curl(url: &str, accept: Option<&str>) -> (String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-D", "-"]);
    if let Some(a) = accept {
        cmd.args(["-H", &format!("Accept: {a}")]);
    }
    let out = cmd.arg(url).output().expect("run curl");
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("curl output is UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    (head.to_owned(), body.to_owned())
}

fn assert_promtool_clean(what: &str, body: &str) {
    let out = check_metrics(body);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim().is_empty(),
        "promtool check metrics on the {what} scrape: {}\nstdout (lint):\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
}

#[test]
fn live_scrapes_pass_promtool_and_health_endpoints_answer() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    skip_unless!(
        have_promtool(),
        "needs promtool (Debian package prometheus)"
    );
    let s = Scenario::new();
    // One entry covered (a service cgroup) and one that does not exist
    // (waiting): the agent is ready all the same.
    let svc = s.sb.cgroup.join("app.service");
    std::fs::create_dir(&svc).expect("create the service cgroup");
    let absent = s.sb.cgroup.join("not-started.service");
    let config = s.config_scoped("observe", "allow", &[], &[&svc, &absent], "", "");
    let agent = s.start(&config);
    // Decisions, so that the counter families have samples: one approved
    // destination and one that enforce mode would refuse.
    let runner = Runner::new(&s.sb).in_cgroup(Some(&svc));
    for ip in [APPROVED_V4, DENIED_V4] {
        let _ = runner.connect(Proto::Tcp, SocketAddr::new(IpAddr::V4(ip), PORT), 2);
    }
    let base = format!("http://{}", agent.metrics);
    // The coverage loop has looked at both entries.
    let _ = agent.wait_for_metrics(
        "both scope entries",
        std::time::Duration::from_secs(10),
        |m| m.series("enforcer_scope_waiting").len() == 2,
    );

    // The 0.0.4 text format: for text/plain, */* and no Accept header.
    for accept in [Some("text/plain"), Some("*/*"), None] {
        let (head, body) = curl(&format!("{base}/metrics"), accept);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
            "Accept {accept:?}: {head}"
        );
        assert!(!body.contains("# EOF"), "{body}");
        for family in [
            "# TYPE enforcer_policy_loads_total counter",
            "# TYPE enforcer_connections_total counter",
            "# TYPE process_cpu_seconds_total counter",
        ] {
            assert!(body.contains(family), "{family} in {body}");
        }
        assert!(body.contains("enforcer_connections_total{"), "{body}");
        assert_promtool_clean(&format!("0.0.4 (Accept {accept:?})"), &body);
        eprintln!(
            "0.0.4 scrape (Accept {accept:?}): {} lines, {} families, promtool clean",
            body.lines().count(),
            body.lines().filter(|l| l.starts_with("# TYPE ")).count()
        );
    }

    // OpenMetrics, for the header Prometheus sends.
    let (head, body) = curl(&format!("{base}/metrics"), Some(OPENMETRICS_ACCEPT));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    // promtool (2.42, and later ones too) parses `check metrics` input as
    // the 0.0.4 text format only: there an OpenMetrics counter family
    // `foo` with its sample `foo_total` reads as a second family without
    // help. Those findings, and only those, are expected.
    let out = check_metrics(&body);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.trim().is_empty(), "lint findings:\n{stdout}");
    let counters: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let findings: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    for f in &findings {
        let family = f
            .strip_suffix("_total no help text")
            .unwrap_or_else(|| panic!("promtool on OpenMetrics: unexpected {f:?}\n{stderr}"));
        assert!(counters.contains(&family), "{f}: not a counter family");
    }
    eprintln!(
        "OpenMetrics scrape: {} lines; promtool reads it as 0.0.4 and finds only the {} counter families' `_total` names without help ({} counters)",
        body.lines().count(),
        findings.len(),
        counters.len()
    );
    // ... and parses as the other tests read it.
    let m = Metrics::parse(&body);
    assert_eq!(m.sum("enforcer_mode", &[("mode", "observe")]), 1.0);
    assert_eq!(
        m.sum("enforcer_connections_total", &[("verdict", "would_deny")]),
        2.0,
        "{body}"
    );
    assert_eq!(
        m.sum("enforcer_connections_total", &[("verdict", "allowed")]),
        2.0,
        "{body}"
    );
    assert_eq!(
        m.sum(
            "enforcer_scope_waiting",
            &[("scope", &absent.display().to_string())]
        ),
        1.0
    );

    // The process metrics.
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "process_threads",
    ] {
        assert!(m.sum(name, &[]) > 0.0, "{name} in\n{body}");
    }
    let started = m.sum("process_start_time_seconds", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    assert!(
        (now - 600.0..=now + 5.0).contains(&started),
        "process_start_time_seconds {started}, now {now}"
    );

    // The load gauges: the start's apply, no failure yet.
    assert_eq!(
        m.series("enforcer_last_reload_duration_seconds").len(),
        1,
        "{body}"
    );
    assert!(
        m.sum(
            "enforcer_last_reload_duration_seconds",
            &[("result", "success")]
        ) > 0.0
    );
    assert_eq!(
        m.sum("enforcer_last_reload_failure_timestamp_seconds", &[]),
        0.0
    );

    // A failed reload: a config that does not parse.
    let config_path = s.dir.path().join("enforcer.toml");
    std::fs::write(&config_path, "mode = ").expect("break the config");
    let out = enforcer_at(&s.control_socket(), &["reload"]);
    assert!(!out.status.success(), "a broken config reloaded");
    let m = agent.scrape();
    assert!(
        m.sum(
            "enforcer_last_reload_duration_seconds",
            &[("result", "failure")]
        ) > 0.0
    );
    assert_eq!(
        m.sum(
            "enforcer_last_reload_duration_seconds",
            &[("result", "success")]
        ),
        0.0
    );
    let failed_at = m.sum("enforcer_last_reload_failure_timestamp_seconds", &[]);
    assert!(
        (now - 5.0..=now + 600.0).contains(&failed_at),
        "{failed_at}"
    );
    // A failed reload keeps the policy in force: still ready.
    std::fs::write(&config_path, &config).expect("restore the config");
    let out = enforcer_at(&s.control_socket(), &["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = agent.scrape();
    assert!(
        m.sum(
            "enforcer_last_reload_duration_seconds",
            &[("result", "success")]
        ) > 0.0
    );
    assert_eq!(
        m.sum("enforcer_last_reload_failure_timestamp_seconds", &[]),
        failed_at
    );

    // Health, readiness, index; anything else is still 404.
    let (head, body) = get(agent.metrics, "/healthz", None);
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert_eq!(body, "ok\n");
    let (head, body) = get(agent.metrics, "/readyz", None);
    assert!(head.starts_with("HTTP/1.0 200"), "{head}\n{body}");
    assert_eq!(body, "ready\n");
    let (head, body) = get(agent.metrics, "/", None);
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert!(body.contains(path), "{body}");
    }
    let (head, _) = get(agent.metrics, "/nothing-here", None);
    assert!(head.starts_with("HTTP/1.0 404"), "{head}");
    drop(agent);
}

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/prometheus")
}

fn promtool(args: &[&str], dir: &Path) -> Output {
    Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool")
}

#[test]
fn shipped_rules_pass_promtool_check_and_unit_tests() {
    skip_unless!(
        have_promtool(),
        "needs promtool (Debian package prometheus)"
    );
    let dir = rules_dir();
    let out = promtool(&["check", "rules", "egress-enforcer-rules.yml"], &dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "promtool check rules: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{stdout}");
    let mut tests: Vec<String> = std::fs::read_dir(dir.join("tests"))
        .expect("packaging/prometheus/tests")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.ends_with(".yml").then(|| format!("tests/{name}"))
        })
        .collect();
    tests.sort();
    assert!(!tests.is_empty(), "no rule tests");
    let mut args = vec!["test", "rules"];
    args.extend(tests.iter().map(String::as_str));
    let out = promtool(&args, &dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "promtool test rules: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{stdout}");
}
