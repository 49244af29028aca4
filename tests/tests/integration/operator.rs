//! What an operator sees from the CLI around the agent: `--version` names
//! the commit and the datapath layout; an error says each cause once; text
//! logs carry no colour codes when stderr is not a terminal; and the verbs
//! that only talk to the agent (`status`, `reload`, `mode`) reach it while
//! the config file has an error elsewhere, which is exactly when `reload`
//! and `status` are needed.

use std::{fs, path::Path, process::Output};

use enforcer_tests::{
    agent::{enforcer, enforcer_binary},
    privileged,
    scenario::*,
    skip_unless,
};

fn text_of(out: &Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `enforcer <args> --config <config>`.
fn with_config(config: &Path, args: &[&str]) -> Output {
    std::process::Command::new(enforcer_binary())
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run enforcer")
}

#[test]
fn version_names_the_commit_and_the_datapath_layout() {
    let out = enforcer(&["--version"]);
    assert!(out.status.success(), "{}", text_of(&out));
    let line = String::from_utf8_lossy(&out.stdout);
    let layout = format!("datapath layout v{}", enforcer_common::LAYOUT_VERSION);
    assert!(line.contains(&layout), "{line}");
    let commit = line
        .split("commit ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_default();
    // Built from a git checkout (CI clones one): a 12-digit hash.
    assert!(
        commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit()),
        "no commit in {line:?}"
    );
}

#[test]
fn an_error_says_each_cause_once() {
    let out = enforcer(&["geoip", "inspect", "/nonexistent/geo.mmdb"]);
    assert!(!out.status.success(), "{}", text_of(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/geo.mmdb"), "{stderr}");
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "the cause is said once: {stderr}"
    );
}

#[test]
fn text_logs_have_no_colour_codes_off_a_terminal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("broken.toml");
    fs::write(&config, "approved = [\n").expect("write config");
    // The broken config makes `status` warn before it fails.
    let out = std::process::Command::new(enforcer_binary())
        .args([
            "status",
            "--socket",
            "/nonexistent/control.sock",
            "--pin-dir",
        ])
        .arg(dir.path().join("no-pins"))
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run enforcer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("WARN"), "a warning is logged: {stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "no ANSI escape codes: {stderr:?}"
    );
    // And the failure says why both ways to an answer failed.
    assert!(!out.status.success(), "{}", text_of(&out));
    assert!(
        stderr.contains("/nonexistent/control.sock") && stderr.contains("no datapath is pinned"),
        "{stderr}"
    );
}

#[test]
fn status_reload_and_mode_reach_the_agent_while_the_config_is_broken() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let good = s.config("observe", "allow", &[]);
    let mut agent = s.start(&good);
    let config = s.dir.path().join("enforcer.toml");
    assert_eq!(
        fs::read_to_string(&config).expect("the scenario's config"),
        good,
        "the agent runs with {}",
        config.display()
    );

    // An error in a key the socket verbs do not need.
    let broken = good.replace("unknown = \"allow\"", "unknown = \"sometimes\"");
    assert_ne!(broken, good, "the config has the key to break:\n{good}");
    fs::write(&config, &broken).expect("break the config");
    let out = with_config(&config, &["config", "check"]);
    assert!(
        !out.status.success(),
        "config check sees it: {}",
        text_of(&out)
    );

    let out = with_config(&config, &["status", "--json"]);
    assert!(out.status.success(), "{}", text_of(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status is JSON");
    assert_eq!(
        v["agent"]["pid"].as_u64(),
        agent.pid().map(u64::from),
        "the running agent answered: {v:#}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sometimes"),
        "and the config's error is shown as a warning: {}",
        text_of(&out)
    );

    // reload reaches the agent, which refuses the broken file and says why.
    let out = with_config(&config, &["reload"]);
    assert!(!out.status.success(), "{}", text_of(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the agent refused the request") && stderr.contains("sometimes"),
        "the agent's answer, not a local config error: {stderr}"
    );

    let out = with_config(
        &config,
        &["mode", "enforce", "--reason", "broken config test"],
    );
    assert!(out.status.success(), "{}", text_of(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("observe -> enforce"),
        "{}",
        text_of(&out)
    );

    // Fixed: the reload goes through.
    fs::write(&config, &good).expect("fix the config");
    let out = with_config(&config, &["reload"]);
    assert!(out.status.success(), "{}", text_of(&out));
    agent.uninstall();
}

#[test]
fn config_check_refuses_an_admin_group_that_does_not_exist() {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::write(dir.path().join("geo.csv"), TEST_DB_CSV).expect("write database");
    let config = dir.path().join("enforcer.toml");
    let text = |group: &str| {
        format!(
            "approved = [\"EEA\"]\n[geoip]\nsources = [\"geo.csv\"]\n[scope]\nhost_wide = true\n\
             [control]\nadmin_group = \"{group}\"\n"
        )
    };
    fs::write(&config, text("no-such-group-ee")).expect("write config");
    let out = with_config(&config, &["config", "check"]);
    assert!(!out.status.success(), "{}", text_of(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("control.admin_group \"no-such-group-ee\": no such group"),
        "{}",
        text_of(&out)
    );
    // A numeric gid needs no entry in the group database.
    fs::write(&config, text("64123")).expect("write config");
    let out = with_config(&config, &["config", "check"]);
    assert!(out.status.success(), "{}", text_of(&out));
}
