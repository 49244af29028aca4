//! `enforcer guard`, the `ExecStartPre=+` check that a service in scope
//! never starts where the agent's programs do not decide: it passes in a
//! cgroup created under a scope cgroup (the programs are inherited at
//! mkdir), also one created after the agent stopped (the pinned links
//! stay), and from inside the cgroup without `--cgroup` (as systemd runs
//! it); it fails, naming the hooks, outside the scope and after
//! `enforcer uninstall`.

use std::{
    fs,
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use enforcer_tests::{
    agent::enforcer_binary, privileged, sandbox::enter, scenario::Scenario, skip_unless,
};

const HOOKS: [&str; 5] = ["connect4", "connect6", "sendmsg4", "sendmsg6", "skb_egress"];

/// `enforcer guard --pin-dir PIN --cgroup CGROUP --wait WAIT [extra]`.
fn guard(pin_dir: &Path, cgroup: &Path, wait: &str, extra: &[&str]) -> Output {
    Command::new(enforcer_binary())
        .arg("guard")
        .arg("--pin-dir")
        .arg(pin_dir)
        .arg("--cgroup")
        .arg(cgroup)
        .args(["--wait", wait])
        .args(extra)
        .output()
        .expect("run enforcer guard")
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_covered(out: &Output, cgroup: &Path) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout.starts_with("covered: connect4 connect6 sendmsg4 sendmsg6 skb_egress")
            && stdout.contains(&cgroup.display().to_string()),
        "guard passes on {}: {}",
        cgroup.display(),
        text(out)
    );
}

/// Exit 1 with an error that names the cgroup, every hook, and what to do.
fn assert_not_covered(out: &Output, cgroup: &Path) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1)
            && stderr.contains(&format!("cgroup {} (id", cgroup.display()))
            && stderr.contains("is not covered")
            && HOOKS.iter().all(|h| stderr.contains(h))
            && stderr.contains("start egress-enforcer.service")
            && stderr.contains("scope.cgroups"),
        "guard fails on {}, naming it and all five hooks: {}",
        cgroup.display(),
        text(out)
    );
}

/// Inside the scope, outside it, after the agent stopped and after
/// uninstall, on cgroups the test creates under the sandbox's.
#[test]
fn guard_follows_what_the_kernel_has_in_force() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let scope = s.sb.cgroup.join("slice");
    let outside = s.sb.cgroup.join("outside");
    fs::create_dir(&scope).expect("create the scope cgroup");
    fs::create_dir(&outside).expect("create a cgroup outside the scope");
    let config = s.config_scoped("enforce", "allow", &[], &[&scope], "", "");
    let mut agent = s.start(&config);

    // A service cgroup created under the scope after the agent attached.
    let svc = scope.join("svc.service");
    fs::create_dir(&svc).expect("create a service cgroup");
    assert_covered(&guard(&s.pin_dir, &svc, "5s", &[]), &svc);
    let out = guard(&s.pin_dir, &svc, "5s", &["-o", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("guard -o json prints JSON ({e}): {}", text(&out)));
    assert!(
        out.status.success()
            && json["covered"] == true
            && json["hooks"]
                .as_array()
                .is_some_and(|h| h.len() == 5 && h.iter().all(|h| h["covered"] == true)),
        "{json:#}"
    );

    // Outside the scope nothing of the agent is in force: refused once
    // the short wait is over (bounded generously: the machine may be busy).
    let started = Instant::now();
    let out = guard(&s.pin_dir, &outside, "200ms", &[]);
    assert_not_covered(&out, &outside);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "guard returned after {:?}",
        started.elapsed()
    );

    // The agent stops; its pinned links keep deciding, and a cgroup
    // created now inherits them.
    agent.stop();
    let restarted = scope.join("restarted.service");
    fs::create_dir(&restarted).expect("create a service cgroup after the stop");
    assert_covered(&guard(&s.pin_dir, &restarted, "5s", &[]), &restarted);

    // Uninstalled: nothing decides, and the error says nothing is pinned.
    agent.uninstall();
    let out = guard(&s.pin_dir, &restarted, "200ms", &[]);
    assert_not_covered(&out, &restarted);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no link is pinned"),
        "{}",
        text(&out)
    );
}

/// Without `--cgroup`, guard checks the cgroup it runs in, found through
/// /proc/self/cgroup: as a unit's `ExecStartPre=+`, which systemd runs in
/// the service's cgroup.
#[test]
fn guard_checks_its_own_cgroup_by_default() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let scope = s.sb.cgroup.join("slice");
    let outside = s.sb.cgroup.join("outside");
    fs::create_dir(&scope).expect("create the scope cgroup");
    fs::create_dir(&outside).expect("create a cgroup outside the scope");
    let config = s.config_scoped("enforce", "allow", &[], &[&scope], "", "");
    let mut agent = s.start(&config);
    let svc = scope.join("svc.service");
    fs::create_dir(&svc).expect("create a service cgroup");

    let own = |cgroup: &Path, wait: &str| {
        let mut cmd = Command::new(enforcer_binary());
        cmd.arg("guard")
            .arg("--pin-dir")
            .arg(&s.pin_dir)
            .args(["--wait", wait]);
        enter(&mut cmd, &s.sb.client_ns, Some(cgroup));
        cmd.output().expect("run enforcer guard")
    };
    assert_covered(&own(&svc, "5s"), &svc);
    assert_not_covered(&own(&outside, "200ms"), &outside);
    agent.stop();
}

/// During a package upgrade the new binary is on disk while the previous
/// release's agent still enforces with its own layout's links: guard (the
/// new binary) counts them, so a service (re)started in that moment is not
/// refused while it is in fact covered.
#[test]
fn guard_counts_the_previous_layouts_links() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let previous = enforcer_tests::agent::previous_agent_binary();
    skip_unless!(
        previous.is_some(),
        "{}",
        enforcer_tests::agent::PREVIOUS_MISSING
    );
    let previous = previous.unwrap_or_default();
    let s = Scenario::new();
    let scope = s.sb.cgroup.join("slice");
    fs::create_dir(&scope).expect("create the scope cgroup");
    let config = s.dir.path().join("enforcer.toml");
    fs::write(
        &config,
        s.config_scoped("enforce", "allow", &[], &[&scope], "", ""),
    )
    .expect("write config");
    let mut old = enforcer_tests::agent::Agent::start_binary(&previous, &config, &s.pin_dir, None)
        .unwrap_or_else(|f| {
            panic!(
                "the previous agent failed to start ({}):\n{}",
                f.status, f.stderr
            )
        });
    let ours = s
        .pin_dir
        .join(format!("v{}", enforcer_common::LAYOUT_VERSION));
    assert!(
        !ours.exists(),
        "the previous release pins another layout than this binary's ({})",
        ours.display()
    );
    let svc = scope.join("svc.service");
    fs::create_dir(&svc).expect("create a service cgroup");
    assert_covered(&guard(&s.pin_dir, &svc, "5s", &[]), &svc);
    old.stop();
    old.uninstall();
}
