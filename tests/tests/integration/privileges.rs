//! Least privilege (docs/capabilities.md): the running agent's threads all
//! hold exactly the documented capabilities, with no_new_privs, and with
//! them a reload (SIGHUP and `enforcer reload`), a mode change and a
//! coverage repair still work. An agent that could not drop refuses to
//! start, before it touches the kernel.
//!
//! The agent is started under the bounding set the documented systemd unit
//! sets, so the unit is tested too.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use enforcer_tests::{
    agent::{Agent, enforcer_at},
    exec_as::drop_bounding,
    privileged,
    probe::{Proto, Runner},
    sandbox::{PORT, remove_cgroup},
    scenario::*,
    skip_unless,
};

const WAIT: Duration = Duration::from_secs(15);

fn doc() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/capabilities.md");
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The capability numbers of the names the document uses.
fn number(name: &str) -> u32 {
    match name {
        "CAP_CHOWN" => 0,
        "CAP_DAC_OVERRIDE" => 1,
        "CAP_SETPCAP" => 8,
        "CAP_NET_BIND_SERVICE" => 10,
        "CAP_NET_ADMIN" => 12,
        "CAP_SYS_ADMIN" => 21,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("docs/capabilities.md names {other}: add its number here"),
    }
}

/// The kept set: the rows of the table under "## What the agent keeps"
/// (`| \`CAP_X\` | number | why |`), checked against the number column.
fn documented_kept() -> Vec<String> {
    let text = doc();
    let section = text
        .split("## What the agent keeps")
        .nth(1)
        .expect("a \"What the agent keeps\" section")
        .split("\n#")
        .next()
        .unwrap_or_default();
    let mut names = Vec::new();
    for line in section.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() > 3 && cells[1].starts_with("`CAP_") {
            let name = cells[1].trim_matches('`').to_owned();
            assert_eq!(cells[2], number(&name).to_string(), "{line}");
            names.push(name);
        }
    }
    assert!(!names.is_empty(), "no kept capability in the table");
    names
}

/// The documented unit's `CapabilityBoundingSet=`.
fn documented_unit_bounding() -> Vec<u32> {
    doc()
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("a CapabilityBoundingSet= line")
        .split_whitespace()
        .map(number)
        .collect()
}

fn mask(names: &[String]) -> u64 {
    names.iter().fold(0, |m, n| m | 1 << number(n))
}

/// Every thread of `pid`: its capability sets equal `kept`, inheritable
/// and ambient are empty, no_new_privs is 1. Returns the thread count.
fn assert_threads(pid: u32, kept: u64) -> usize {
    let dir = format!("/proc/{pid}/task");
    let mut n = 0;
    for entry in fs::read_dir(&dir).expect("list the agent's threads") {
        let path = entry.expect("task entry").path().join("status");
        let Ok(text) = fs::read_to_string(&path) else {
            continue; // a thread that just exited
        };
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
                .unwrap_or_else(|| panic!("{}: no {key}", path.display()))
                .to_owned()
        };
        let hex = |key: &str| u64::from_str_radix(&field(key), 16).expect("hex capability mask");
        let name = field("Name:");
        for key in ["CapEff:", "CapPrm:", "CapBnd:"] {
            assert_eq!(
                hex(key),
                kept,
                "thread {name} ({}) {key} {:x}, documented {kept:x}",
                path.display(),
                hex(key)
            );
        }
        assert_eq!(hex("CapInh:"), 0, "thread {name} CapInh");
        assert_eq!(hex("CapAmb:"), 0, "thread {name} CapAmb");
        assert_eq!(field("NoNewPrivs:"), "1", "thread {name} NoNewPrivs");
        n += 1;
    }
    n
}

fn denied_v4() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(DENIED_V4), PORT)
}

/// Polls until a connection from `runner` to the non-approved peer is
/// refused (`refused`) or gets through.
fn wait_verdict(runner: &Runner<'_>, agent: &Agent, refused: bool, what: &str) {
    let start = Instant::now();
    loop {
        let a = runner.connect(Proto::Tcp, denied_v4(), 1);
        if a[0].refused() == refused && (refused || a[0].ok) {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "{what}: expected refused={refused}, got {a:?}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn control(s: &Scenario, args: &[&str]) {
    let out = enforcer_at(&s.control_socket(), args);
    assert!(
        out.status.success(),
        "enforcer {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the agent under the documented unit's bounding set.
fn start_as_unit(s: &Scenario, config: &str) -> Agent {
    let path = s.dir.path().join("enforcer.toml");
    fs::write(&path, config).expect("write config");
    let keep = documented_unit_bounding();
    let last: u32 = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .expect("cap_last_cap")
        .trim()
        .parse()
        .expect("cap_last_cap is a number");
    Agent::start_customised(&path, &s.pin_dir, &|cmd| {
        for cap in (0..=last).filter(|c| !keep.contains(c)) {
            drop_bounding(cmd, cap);
        }
    })
    .unwrap_or_else(|f| panic!("agent failed to start ({}):\n{}", f.status, f.stderr))
}

fn wait_covered(s: &Scenario, agent: &Agent, cgroup: &Path) {
    let id = fs::metadata(cgroup).expect("stat the cgroup").ino();
    let start = Instant::now();
    loop {
        let st = s.status();
        let covered = st["agent"]["coverage"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| {
                e["scope"] == cgroup.display().to_string()
                    && e["state"] == "covered"
                    && e["id"] == id
            });
        if covered {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "{} not covered again: {st:#}\n{}",
            cgroup.display(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The running agent holds the documented set in every thread, and
/// reloads (SIGHUP, `enforcer reload`), mode changes and a coverage repair
/// work with it.
#[test]
fn the_running_agent_keeps_the_documented_set_and_still_works() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let kept = documented_kept();
    let kept_mask = mask(&kept);
    let s = Scenario::new();
    let svc = s.sb.cgroup.join("svc");
    fs::create_dir(&svc).expect("create the service cgroup");
    let config = |mode: &str, top: &str| s.config_scoped(mode, "allow", &[], &[&svc], top, "");
    let mut agent = start_as_unit(&s, &config("observe", ""));
    let pid = agent.pid().expect("the agent runs");

    let threads = assert_threads(pid, kept_mask);
    assert!(
        threads >= 3,
        "the serving runtime's workers are checked too ({threads} threads)"
    );
    let st = s.status();
    let p = &st["agent"]["privileges"];
    assert_eq!(p["effective"], serde_json::json!(kept), "{st:#}");
    assert_eq!(p["no_new_privs"], true, "{st:#}");
    assert!(
        agent
            .log()
            .contains(&format!("capabilities={}", kept.join(","))),
        "the start log line names the set:\n{}",
        agent.log()
    );

    let runner = Runner::new(&s.sb).in_cgroup(Some(&svc));
    wait_verdict(&runner, &agent, false, "observe at start");

    // A reload by SIGHUP: observe -> enforce.
    fs::write(&agent.config, config("enforce", "")).expect("rewrite config");
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    wait_verdict(&runner, &agent, true, "enforce after SIGHUP");

    // Mode changes over the control socket.
    control(&s, &["mode", "observe", "--reason", "privileges test"]);
    wait_verdict(&runner, &agent, false, "`enforcer mode observe`");
    control(&s, &["mode", "enforce", "--reason", "privileges test"]);
    wait_verdict(&runner, &agent, true, "`enforcer mode enforce`");

    // A reload over the control socket: an allow exception for the peer.
    fs::write(
        &agent.config,
        config("enforce", &format!("allow = [\"{DENIED_V4}/32\"]")),
    )
    .expect("rewrite config");
    control(&s, &["reload"]);
    wait_verdict(
        &runner,
        &agent,
        false,
        "the allow exception after `enforcer reload`",
    );
    fs::write(&agent.config, config("enforce", "")).expect("rewrite config");
    control(&s, &["reload"]);
    wait_verdict(&runner, &agent, true, "enforce after `enforcer reload`");

    // A coverage repair: the service restarted (its cgroup re-created).
    remove_cgroup(&svc);
    fs::create_dir(&svc).expect("create the service cgroup again");
    wait_covered(&s, &agent, &svc);
    wait_verdict(&runner, &agent, true, "the re-created cgroup");

    // Threads created since (blocking threads of reloads) hold the set too.
    assert_threads(pid, kept_mask);
    assert!(
        !agent.log().contains("Operation not permitted"),
        "{}",
        agent.log()
    );
    assert!(agent.stop().success(), "{}", agent.log());
}

/// An agent whose bounding set it cannot reduce (no `CAP_SETPCAP`) refuses
/// to start, says why, and attaches nothing.
#[test]
fn an_agent_that_cannot_drop_refuses_to_start() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let path = s.dir.path().join("enforcer.toml");
    fs::write(&path, s.config("enforce", "allow", &[])).expect("write config");
    let failure = match Agent::start_customised(&path, &s.pin_dir, &|cmd| {
        drop_bounding(cmd, number("CAP_SETPCAP"));
    }) {
        Ok(agent) => panic!("started without being able to drop:\n{}", agent.log()),
        Err(f) => f,
    };
    assert!(!failure.status.success());
    assert!(
        failure.stderr.contains("CAP_SETPCAP") && failure.stderr.contains("least privilege"),
        "the error says why:\n{}",
        failure.stderr
    );
    assert!(
        !s.pin_dir.exists(),
        "nothing pinned: {}",
        s.pin_dir.display()
    );
    let a = Runner::new(&s.sb).connect(Proto::Tcp, denied_v4(), 1);
    assert!(a[0].ok, "nothing attached, nothing refused: {a:?}");
}
