//! The control socket, with the real agent and the real CLI: a mode switch
//! takes effect for the next connection and lasts across reloads and
//! restarts until the config value it overrode is edited; per-cgroup
//! switches; `enforcer reload` reports success and failure (and a failure
//! leaves the policy serving); `enforcer events` lists and follows; only
//! root and the admin group get in, checked with a real second uid, both
//! by the socket file's mode and, when that is loosened, by the agent's
//! peer-credential check.

use std::{
    io::{BufRead as _, BufReader},
    net::IpAddr,
    os::unix::{fs::MetadataExt as _, fs::PermissionsExt as _},
    path::Path,
    process::{Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use enforcer_tests::{
    agent::{Agent, enforcer_at, enforcer_binary},
    exec_as::{self, ReachableCopy},
    privileged,
    probe::{Proto, attempt},
    scenario::*,
    skip_unless,
};

/// A gid for the admin group. Numeric, so the test needs no entry in
/// /etc/group (the agent accepts a gid that has no name).
const ADMIN_GID: u32 = 64_123;
/// The other user: nobody.
const OTHER_UID: u32 = 65_534;

/// `enforcer <args> --socket <socket>` as root.
fn ctl(socket: &Path, args: &[&str]) -> Output {
    enforcer_at(socket, args)
}

/// The same as `uid` with exactly `groups` (and gid = uid), running `cli`:
/// a copy of the CLI that uid can exec wherever the clone is.
fn ctl_as(cli: &ReachableCopy, socket: &Path, user: (u32, &[u32]), args: &[&str]) -> Output {
    let mut cmd = Command::new(cli.path());
    cmd.args(args).arg("--socket").arg(socket);
    let (uid, groups) = user;
    exec_as::as_user(&mut cmd, uid, groups);
    cmd.output().expect("run enforcer")
}

fn text(out: &Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn status(socket: &Path) -> serde_json::Value {
    let out = ctl(socket, &["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status is JSON");
    assert!(v["agent"].is_object(), "the agent answered: {v:#}");
    v
}

fn config_with_admin(s: &Scenario, mode: &str) -> String {
    s.config_with(
        mode,
        "allow",
        &[],
        "",
        &format!(
            "[control]\nadmin_group = \"{ADMIN_GID}\"\n{}",
            s.events_table(1000, 1000)
        ),
    )
}

fn denied() -> IpAddr {
    IpAddr::V4(DENIED_V4)
}

fn approved() -> IpAddr {
    IpAddr::V4(APPROVED_V4)
}

#[test]
fn a_mode_switch_applies_to_the_next_connection_and_lasts_until_the_config_changes() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let socket = s.control_socket();
    let mut agent = s.start(&config_with_admin(&s, "observe"));
    assert!(
        attempt(&s.sb, Proto::Tcp, denied()).ok,
        "observe lets it through"
    );

    // No reason: refused by the CLI before anything is sent.
    let out = ctl(&socket, &["mode", "enforce"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("--reason"), "{}", text(&out));

    let out = ctl(&socket, &["mode", "enforce", "--reason", "change 4711"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("observe -> enforce"),
        "{}",
        text(&out)
    );
    // The very next connection is decided in enforce mode.
    assert!(attempt(&s.sb, Proto::Tcp, denied()).refused());
    assert!(attempt(&s.sb, Proto::Tcp, approved()).ok);
    let st = status(&socket);
    assert_eq!(st["agent"]["mode"], "enforce", "{st:#}");
    assert_eq!(st["agent"]["mode_source"], "runtime", "{st:#}");
    assert_eq!(st["kernel"]["mode"], "enforce", "{st:#}");

    // A reload with the config unchanged keeps the operator's switch.
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    agent.wait_for_metrics("the reload", Duration::from_secs(30), |m| {
        m.sum("enforcer_policy_loads_total", &[("result", "success")]) == 2.0
    });
    assert!(
        attempt(&s.sb, Proto::Tcp, denied()).refused(),
        "a reload does not undo the switch"
    );

    // So does a restart: the new agent reads the runtime state. (The
    // pins stay, as in a real restart: an uninstall would remove the
    // runtime state with them.)
    assert!(agent.stop().success(), "{}", agent.log());
    agent.leave_pins();
    drop(agent);
    let agent = Agent::start_with(&s.dir.path().join("enforcer.toml"), &s.pin_dir)
        .unwrap_or_else(|f| panic!("restart failed: {}", f.stderr));
    assert!(
        attempt(&s.sb, Proto::Tcp, denied()).refused(),
        "a restart does not undo the switch:\n{}",
        agent.log()
    );
    assert_eq!(status(&socket)["agent"]["mode_source"], "runtime");

    // One cgroup back to observe while the host enforces.
    let cgroup = s.sb.cgroup.display().to_string();
    let out = ctl(
        &socket,
        &["mode", "observe", "--cgroup", &cgroup, "--reason", "canary"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        attempt(&s.sb, Proto::Tcp, denied()).ok,
        "the cgroup's override applies to the next connection"
    );
    let st = status(&socket);
    let overrides = st["agent"]["overrides"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(overrides.len(), 1, "{st:#}");
    assert_eq!(overrides[0]["mode"], "observe", "{st:#}");
    assert_eq!(overrides[0]["source"], "runtime", "{st:#}");

    // A cgroup outside the scope (the root) is refused, and nothing changes.
    let root = enforcer::paths::cgroup2_mount().expect("cgroup2 mount");
    let out = ctl(
        &socket,
        &[
            "mode",
            "enforce",
            "--cgroup",
            &root.display().to_string(),
            "--reason",
            "oops",
        ],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("not inside the scope"),
        "{}",
        text(&out)
    );
    assert!(attempt(&s.sb, Proto::Tcp, denied()).ok);

    // Editing the config's mode is the newer decision: the global switch
    // is dropped (the cgroup one too, since the config's value for it, no
    // override, is unchanged it stays).
    let edited = config_with_admin(&s, "enforce");
    std::fs::write(&agent.config, edited).expect("edit config");
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    agent.wait_for_metrics("the reload", Duration::from_secs(30), |m| {
        m.sum("enforcer_policy_loads_total", &[("result", "success")]) == 2.0
    });
    let st = status(&socket);
    assert_eq!(st["agent"]["mode_source"], "config", "{st:#}");
    assert_eq!(st["agent"]["mode"], "enforce", "{st:#}");
    assert!(agent.log().contains("no longer applies"), "{}", agent.log());
    assert!(
        attempt(&s.sb, Proto::Tcp, denied()).ok,
        "the cgroup's runtime override still holds"
    );
    let m = agent.scrape();
    assert_eq!(
        m.sum(
            "enforcer_control_requests_total",
            &[("verb", "mode"), ("result", "ok")]
        ),
        1.0,
        "this agent served one successful mode change:\n{}",
        m.text
    );
    assert_eq!(
        m.sum(
            "enforcer_control_requests_total",
            &[("verb", "mode"), ("result", "error")]
        ),
        1.0,
        "and refused one:\n{}",
        m.text
    );
}

#[test]
fn reload_reports_success_and_a_failed_reload_leaves_the_policy_serving() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let socket = s.control_socket();
    let agent = s.start(&config_with_admin(&s, "enforce"));
    let before = status(&socket)["agent"]["generation"]
        .as_u64()
        .expect("generation");

    let out = ctl(&socket, &["reload"]);
    assert!(out.status.success(), "{}", text(&out));
    let after = status(&socket)["agent"]["generation"]
        .as_u64()
        .expect("generation");
    assert!(
        after > before,
        "a reload flips the slot: {before} -> {after}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("generation {after}")),
        "{}",
        text(&out)
    );

    // A country code that does not exist.
    let broken = config_with_admin(&s, "enforce")
        .replace("approved = [\"EEA\"]", "approved = [\"EEA\", \"XX\"]");
    assert!(broken.contains("\"XX\""), "{broken}");
    std::fs::write(&agent.config, broken).expect("break");
    let out = ctl(&socket, &["reload"]);
    assert!(
        !out.status.success(),
        "a failed reload fails: {}",
        text(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&agent.config.display().to_string()) && err.contains("XX"),
        "the error names the file and the problem: {}",
        text(&out)
    );
    assert!(
        attempt(&s.sb, Proto::Tcp, denied()).refused(),
        "still enforcing"
    );
    let st = status(&socket);
    assert_eq!(st["agent"]["generation"].as_u64(), Some(after), "{st:#}");
    assert!(
        st["agent"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("XX")),
        "{st:#}"
    );
    let m = agent.scrape();
    assert_eq!(
        m.sum("enforcer_policy_loads_total", &[("result", "failure")]),
        1.0
    );
    assert_eq!(
        m.sum(
            "enforcer_control_requests_total",
            &[("verb", "reload"), ("result", "error")]
        ),
        1.0
    );
}

#[test]
fn events_are_listed_and_followed() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let socket = s.control_socket();
    let agent = s.start(&config_with_admin(&s, "enforce"));
    assert!(attempt(&s.sb, Proto::Tcp, denied()).refused());
    agent.wait_for_metrics("the event", Duration::from_secs(30), |m| {
        m.sum("enforcer_events_total", &[]) == 1.0
    });
    let out = ctl(&socket, &["events"]);
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("an event is JSON"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", text(&out));
    assert_eq!(lines[0]["dst"], DENIED_V4.to_string());
    assert_eq!(lines[0]["verdict"], "denied");

    // Follow: the recent one first, then a new one as it happens.
    let mut child = Command::new(enforcer_binary())
        .args(["events", "--follow", "--socket"])
        .arg(&socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn events --follow");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = || rx.recv_timeout(Duration::from_secs(20));
    let first = next().expect("the recent event");
    assert!(first.contains(&DENIED_V4.to_string()), "{first}");
    assert!(attempt(&s.sb, Proto::Udp, denied()).refused());
    let second = next().expect("the new event, followed");
    let v: serde_json::Value = serde_json::from_str(&second).expect("JSON");
    assert_eq!(v["protocol"], "udp", "{second}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn only_root_and_the_admin_group_may_use_the_socket() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let socket = s.control_socket();
    // Let the other user reach the socket's directory: only the socket's
    // own mode and the agent stand in its way.
    std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod scratch dir");
    let agent = s.start(&config_with_admin(&s, "observe"));

    let meta = std::fs::metadata(&socket).expect("socket exists");
    assert_eq!(meta.mode() & 0o777, 0o660, "socket mode");
    assert_eq!(meta.uid(), 0, "socket owner");
    assert_eq!(meta.gid(), ADMIN_GID, "socket group");

    let outsider: (u32, &[u32]) = (OTHER_UID, &[]);
    let member: (u32, &[u32]) = (OTHER_UID, &[ADMIN_GID]);
    let cli = ReachableCopy::of(&enforcer_binary());

    // Not in the group: the socket's mode keeps it out.
    let out = ctl_as(
        &cli,
        &socket,
        outsider,
        &["mode", "enforce", "--reason", "x"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("permission denied"), "{}", text(&out));

    // `status` from an outsider: neither the socket nor the pins, and it
    // says why in words (the admin group, root), not the system call's
    // name.
    let pin_dir = s.pin_dir.display().to_string();
    let out = ctl_as(&cli, &socket, outsider, &["status", "--pin-dir", &pin_dir]);
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("admin_group")
            && said.contains("needs root")
            && !said.contains("BPF_OBJ_GET"),
        "{said}"
    );

    // In the group (supplementary): served.
    let out = ctl_as(&cli, &socket, member, &["reload"]);
    assert!(out.status.success(), "{}", text(&out));
    // `check` through the agent: no root needed, and the answer names the
    // database in force.
    let out = ctl_as(
        &cli,
        &socket,
        member,
        &["check", &DENIED_V4.to_string(), "-o", "json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check JSON");
    assert_eq!(v["outcome"], "would_deny", "{v:#}");
    assert_eq!(v["country"], DENIED_COUNTRY, "{v:#}");
    assert_eq!(v["source"], "geoip", "{v:#}");
    assert_eq!(
        v["geoip_databases"][0]["path"],
        s.db.display().to_string(),
        "{v:#}"
    );

    // The socket's mode loosened by hand: the agent's own check refuses.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let out = ctl_as(
        &cli,
        &socket,
        outsider,
        &["mode", "enforce", "--reason", "x"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "uid {OTHER_UID} is not root and not in the admin group {ADMIN_GID}"
        )),
        "{}",
        text(&out)
    );
    assert!(
        attempt(&s.sb, Proto::Tcp, denied()).ok,
        "the refused request changed nothing"
    );
    let m = agent.scrape();
    assert_eq!(
        m.sum(
            "enforcer_control_requests_total",
            &[("verb", "mode"), ("result", "denied")]
        ),
        1.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.sum(
            "enforcer_control_requests_total",
            &[("verb", "reload"), ("result", "ok")]
        ),
        1.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.sum(
            "enforcer_control_requests_total",
            &[("verb", "check"), ("result", "ok")]
        ),
        1.0,
        "{}",
        m.text
    );
}
