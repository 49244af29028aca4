//! `enforcer top` in a real terminal: tmux runs it against a real agent
//! in observe mode while a probe connects to approved and non-approved
//! peers; the screen's figures are those of the agent's `/metrics` at the
//! same moment, the would-deny destination names the probe, and `q`
//! leaves the terminal as it found it. Also its errors without an agent or
//! without permission, and what `enforcer run` says when the built-in
//! default config's database is missing.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant, UNIX_EPOCH},
};

use enforcer_tests::{
    agent::enforcer_binary,
    exec_as::{ReachableCopy, as_user},
    metrics::Metrics,
    privileged,
    probe::{ECHO_PORT, Proto, Runner},
    sandbox::PORT,
    scenario::*,
    skip_unless,
};

const NOBODY: u32 = 65534;
/// How long a screen may take to show what the test waits for: many
/// refreshes (one a second).
const SCREEN_WAIT: Duration = Duration::from_secs(30);

/// A tmux server of this test's own (`-L`), killed on drop, also on panic:
/// no pane process outlives the test.
struct Tmux {
    name: String,
    server_pid: Option<i32>,
}

impl Tmux {
    /// A detached 160x50 session running `command` (a shell command line).
    fn start(command: &str) -> Tmux {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "ee-top-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut t = Tmux {
            name,
            server_pid: None,
        };
        let out = t.tmux(&[
            "new-session",
            "-d",
            "-x",
            "160",
            "-y",
            "50",
            "-s",
            "top",
            command,
        ]);
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t.server_pid = t.display("#{pid}").trim().parse().ok();
        assert!(t.server_pid.is_some(), "the tmux server's pid");
        t
    }

    fn tmux(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.name)
            .args(args)
            // The server starts with this environment: a plain terminal
            // type, whatever the test runner had.
            .env("TERM", "xterm-256color")
            .stdin(Stdio::null())
            .output()
            .expect("run tmux")
    }

    /// What the pane shows, as text.
    fn capture(&self) -> String {
        let out = self.tmux(&["capture-pane", "-p", "-t", "top"]);
        assert!(
            out.status.success(),
            "capture-pane: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A tmux format expanded for the pane (`#{alternate_on}`, ...).
    fn display(&self, format: &str) -> String {
        let out = self.tmux(&["display-message", "-p", "-t", "top", format]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn send_keys(&self, keys: &str) {
        let out = self.tmux(&["send-keys", "-t", "top", keys]);
        assert!(out.status.success(), "send-keys {keys}");
    }

    /// Captures until `done` holds for the screen; panics with the last
    /// screen when it never does.
    fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + SCREEN_WAIT;
        loop {
            let screen = trimmed(&self.capture());
            if done(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the screen never showed {what}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
        // The server is gone with its panes; should it not be, it goes now.
        if let Some(pid) = self.server_pid {
            let pid = nix::unistd::Pid::from_raw(pid);
            if nix::sys::signal::kill(pid, None).is_ok() {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// A capture without the blank lines below its last line of text.
fn trimmed(screen: &str) -> String {
    let lines: Vec<&str> = screen.lines().map(str::trim_end).collect();
    let end = lines
        .iter()
        .rposition(|l| !l.is_empty())
        .map_or(0, |i| i + 1);
    lines[..end].join("\n")
}

/// The refresh number in `top`'s title line.
fn refresh_number(screen: &str) -> Option<u64> {
    screen
        .lines()
        .find_map(|l| l.strip_prefix("enforcer top  refresh #"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The whitespace-separated fields of the first line starting with
/// `prefix` followed by a space.
fn row<'a>(screen: &'a str, prefix: &str) -> Vec<&'a str> {
    screen
        .lines()
        .find(|l| l.starts_with(&format!("{prefix} ")))
        .unwrap_or_else(|| panic!("no {prefix} row on the screen:\n{screen}"))
        .split_whitespace()
        .collect()
}

/// A decisions row: the total and rate of each verdict, in the counters'
/// order (allowed, denied, would_deny, exempt), after the country and
/// scope columns (the TOTAL row has no scope).
fn decision_figures(fields: &[&str]) -> Vec<(u64, String)> {
    let skip = if fields[0] == "TOTAL" { 1 } else { 2 };
    fields[skip..]
        .chunks(2)
        .map(|c| {
            (
                c[0].parse()
                    .unwrap_or_else(|_| panic!("a total in {fields:?}")),
                c[1].to_owned(),
            )
        })
        .collect()
}

const VERDICTS: [&str; 4] = ["allowed", "denied", "would_deny", "exempt"];

/// Reads `label N` from the screen (`rate_limit 12 (0.0/s)`).
fn figure_after(screen: &str, label: &str) -> u64 {
    let at = screen
        .find(&format!("{label} "))
        .unwrap_or_else(|| panic!("no {label} on the screen:\n{screen}"));
    screen[at + label.len() + 1..]
        .split_whitespace()
        .next()
        .and_then(|n| n.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("no number after {label}:\n{screen}"))
}

#[test]
fn the_screen_shows_what_the_metrics_say_and_q_restores_the_terminal() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    skip_unless!(
        Command::new("tmux").arg("-V").output().is_ok(),
        "tmux is not installed (cargo xtask setup installs it)"
    );
    let real = real_geoip("GeoLite2-Country.mmdb");
    skip_unless!(
        real.is_some(),
        "the real GeoLite2 database is missing (cargo xtask geoip fetch)"
    );
    let real = real.unwrap_or_default();
    let s = Scenario::new();
    // A low event rate, so the stream below also shows suppression; the
    // real database (built in 2019) under a 30-day max_age, so the screen
    // has an age and a TOO OLD to show.
    let config = s
        .config_with("observe", "allow", &[real], "", &s.events_table(20, 20))
        .replace("[geoip]\n", "[geoip]\nmax_age = \"30d\"\n");
    let mut agent = s.start(&config);

    // Before top starts: three would-deny connections from one process
    // and five allowed ones; top must show them from the replay.
    let runner = Runner::new(&s.sb);
    let denied = SocketAddr::new(IpAddr::V4(DENIED_V4), PORT);
    let approved = SocketAddr::new(IpAddr::V4(APPROVED_V4), PORT);
    let probe = runner.connect(Proto::Tcp, denied, 3);
    assert!(
        probe.iter().all(|a| a.ok),
        "observe lets them through: {probe:?}"
    );
    let probe_pid = probe[0].pid.expect("ee-probe reports its pid");
    let ok = runner.connect(Proto::Tcp, approved, 5);
    assert!(ok.iter().all(|a| a.ok), "{ok:?}");

    // The shell reports top's exit and the terminal modes after it.
    // Run twice: the first is left with q, the second (after Enter) with
    // Ctrl-C.
    let report =
        "stty -a | tr ' ;' '\\n\\n' | grep -E -x -- '-?(icanon|echo)' | tr '\\n' ' '; echo";
    let top = format!(
        "{} top --socket {}",
        enforcer_binary().display(),
        s.control_socket().display()
    );
    let command = format!(
        "{top}; echo \"top exited $?\"; {report}; read _; {top}; echo \"top again exited $?\"; {report}; exec sleep 600"
    );
    let tmux = Tmux::start(&command);
    let first = tmux.wait_for("a first frame with the decisions", |screen| {
        screen.contains("DECISIONS") && screen.contains("ee-probe")
    });
    assert_eq!(
        tmux.display("#{alternate_on}"),
        "1",
        "top draws on the alternate screen"
    );
    println!("--- enforcer top, first frame ---\n{first}");

    // Traffic while it runs: a stream to both peers (the echo port), then
    // stopped; the screen during it shows non-zero rates.
    let stream = runner.stream(
        &[
            SocketAddr::new(IpAddr::V4(DENIED_V4), ECHO_PORT),
            SocketAddr::new(IpAddr::V4(APPROVED_V4), ECHO_PORT),
        ],
        Duration::from_secs(60),
        u64::MAX,
    );
    let before = refresh_number(&tmux.capture()).expect("a refresh number");
    let during = tmux.wait_for("two refreshes during the stream", |screen| {
        refresh_number(screen).is_some_and(|n| n >= before + 2)
    });
    println!("--- during traffic ---\n{during}");
    let attempts = stream.stop();
    assert!(
        attempts.iter().all(|a| a.ok),
        "observe lets every attempt through: {:?}",
        attempts.iter().find(|a| !a.ok)
    );
    let to = |dst: Ipv4Addr| {
        attempts
            .iter()
            .filter(|a| a.dst.ip() == IpAddr::V4(dst))
            .count() as u64
    };

    // Paused: wait until a frame made entirely after the pause (two
    // refreshes: its status answer and the one before it came after) in
    // which every would-deny decision is accounted for: an event on the
    // destinations table, or one the kernel suppressed.
    let paused = refresh_number(&tmux.capture()).expect("a refresh number");
    let screen = tmux.wait_for(
        "two refreshes after the pause, every decision accounted for",
        |screen| {
            refresh_number(screen).is_some_and(|n| n >= paused + 2)
                && event_counts(screen)
                    + figure_after(screen, "rate_limit")
                    + figure_after(screen, "ring_full")
                    == decision_figures(&row(screen, DENIED_COUNTRY))[2].0
        },
    );
    let m: Metrics = agent.scrape();
    let again = trimmed(&tmux.capture());
    println!("--- paused, compared with /metrics ---\n{screen}");

    // Each row is one (country, scope entry): the sandbox's cgroup, as
    // configured, is the metrics' `scope` label and the screen's column.
    let scope = s.sb.cgroup.display().to_string();
    for country in [DENIED_COUNTRY, APPROVED_COUNTRY] {
        assert_eq!(
            row(&screen, country)[1],
            scope,
            "{country}'s scope:\n{screen}"
        );
    }
    let us = decision_figures(&row(&screen, DENIED_COUNTRY));
    let de = decision_figures(&row(&screen, APPROVED_COUNTRY));
    let total = decision_figures(&row(&screen, "TOTAL"));
    let mut shown = Vec::new();
    for (i, verdict) in VERDICTS.iter().enumerate() {
        let metric = |country: Option<&str>| {
            let mut labels = vec![("verdict", *verdict)];
            if let Some(c) = country {
                labels.push(("country", c));
                labels.push(("scope", scope.as_str()));
            }
            m.sum("enforcer_connections_total", &labels) as u64
        };
        assert_eq!(
            us[i].0,
            metric(Some(DENIED_COUNTRY)),
            "US {verdict}:\n{screen}"
        );
        assert_eq!(
            de[i].0,
            metric(Some(APPROVED_COUNTRY)),
            "DE {verdict}:\n{screen}"
        );
        assert_eq!(total[i].0, metric(None), "total {verdict}:\n{screen}");
        // Nothing was sent for two refreshes: every rate is zero.
        assert_eq!(
            us[i].1, "0.0",
            "US {verdict} rate after the pause:\n{screen}"
        );
        assert_eq!(
            total[i].1, "0.0",
            "total {verdict} rate after the pause:\n{screen}"
        );
        shown.push(format!(
            "enforcer_connections_total{{verdict=\"{verdict}\"}}: country=US,scope=<sandbox> {} country=DE,scope=<sandbox> {} all {}",
            metric(Some(DENIED_COUNTRY)),
            metric(Some(APPROVED_COUNTRY)),
            metric(None)
        ));
    }
    // And they are what was sent: one decision per connect.
    assert_eq!(us[2].0, 3 + to(DENIED_V4), "US would_deny:\n{screen}");
    assert_eq!(de[0].0, 5 + to(APPROVED_V4), "DE allowed:\n{screen}");
    assert_eq!(us[1].0, 0, "observe mode refuses nothing");

    for reason in ["rate_limit", "ring_full"] {
        assert_eq!(
            figure_after(&screen, reason),
            m.sum("enforcer_events_suppressed_total", &[("reason", reason)]) as u64,
            "suppressed {reason}:\n{screen}"
        );
    }
    let generation = m.sum("enforcer_policy_generation", &[]) as u64;
    assert_eq!(
        figure_after(&screen, "policy generation"),
        generation,
        "{screen}"
    );
    assert_eq!(m.sum("enforcer_mode", &[("mode", "observe")]), 1.0);
    assert!(
        screen.contains("mode       observe (from the config)"),
        "{screen}"
    );
    assert!(
        screen.contains("coverage   1 scope entry attached, 0 waiting"),
        "{screen}"
    );
    // The database line: its build date and age, too old, as the metrics.
    let db = "GeoLite2-Country.mmdb";
    let built = m.sum(
        "enforcer_geoip_database_build_timestamp_seconds",
        &[("database", db)],
    ) as u64;
    let age_seconds = m.sum("enforcer_geoip_database_age_seconds", &[("database", db)]);
    let age_days = age_seconds as u64 / 86_400;
    assert_eq!(
        m.sum("enforcer_geoip_database_too_old", &[("database", db)]),
        1.0
    );
    let date =
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(built)).to_string();
    let shown_age = screen
        .split(&format!("{db} built {} (", &date[..10]))
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no {db} built {} on the screen:\n{screen}", &date[..10]));
    // The screen's answer came just before the scrape: a day may have
    // turned in between.
    assert!(
        shown_age == age_days || shown_age + 1 == age_days,
        "{shown_age} days on the screen, {age_days} in the metrics:\n{screen}"
    );
    assert!(
        screen.contains("days old, TOO OLD: geoip.max_age is 30 days)")
            && screen.contains("a database is TOO OLD"),
        "{screen}"
    );
    println!(
        "--- /metrics at the same moment ---\n{}\nenforcer_events_suppressed_total: rate_limit {} ring_full {}\nenforcer_policy_generation {generation}\nenforcer_mode{{mode=\"observe\"}} 1",
        shown.join("\n"),
        m.sum(
            "enforcer_events_suppressed_total",
            &[("reason", "rate_limit")]
        ),
        m.sum(
            "enforcer_events_suppressed_total",
            &[("reason", "ring_full")]
        ),
    );
    println!(
        "enforcer_geoip_database_age_seconds{{database=\"{db}\"}} {age_seconds} ({age_days} days), enforcer_geoip_database_too_old 1"
    );
    // The frame did not change while the metrics were read.
    assert_eq!(
        decision_figures(&row(&again, "TOTAL"))
            .iter()
            .map(|f| f.0)
            .collect::<Vec<_>>(),
        total.iter().map(|f| f.0).collect::<Vec<_>>(),
        "{again}"
    );

    // The would-deny destination, with the probe that tried it.
    let dest = screen
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() >= 8 && f[0] == "would_deny" && f[2] == probe_pid.to_string())
        .unwrap_or_else(|| panic!("no would_deny row for pid {probe_pid}:\n{screen}"));
    assert_eq!(dest[1], "ee-probe", "{screen}");
    assert_eq!(dest[3], "0", "uid: {screen}");
    assert_eq!(dest[4], scope, "the event's scope entry: {screen}");
    assert_eq!(dest[5], denied.to_string(), "{screen}");
    assert_eq!(dest[6], DENIED_COUNTRY, "{screen}");
    assert_eq!(dest[7], "3", "one event per connect: {screen}");

    // q: top exits 0, the shell's stty shows canonical mode and echo
    // again, and the pane is back on the normal screen. The second run,
    // ended with Ctrl-C (SIGINT from the terminal), the same way.
    tmux.send_keys("q");
    let after = exited(&tmux, "top exited");
    println!("--- after q ---\n{after}");
    tmux.send_keys("Enter");
    tmux.wait_for("the second run's frame", |screen| {
        screen.contains("DECISIONS")
    });
    assert_eq!(tmux.display("#{alternate_on}"), "1");
    // The agent goes away: the screen says so and keeps its last figures.
    agent.stop();
    let gone = tmux.wait_for("that the agent stopped answering", |screen| {
        screen.contains("AGENT NOT ANSWERING") && screen.contains("event stream down")
    });
    println!("--- the agent stopped ---\n{gone}");
    assert!(
        gone.contains("AGENT NOT ANSWERING (the figures below are its last answer): cannot connect to the control socket"),
        "{gone}"
    );
    assert!(gone.contains("TOTAL"), "{gone}");
    tmux.send_keys("C-c");
    let after = exited(&tmux, "top again exited");
    println!("--- after Ctrl-C ---\n{after}");
}

/// Waits for the shell's `<what> N` line and the terminal modes it printed
/// next, and checks them: exit status 0, canonical mode and echo on, the
/// normal screen, no frame left on it.
fn exited(tmux: &Tmux, what: &str) -> String {
    let modes_line = |screen: &str| {
        screen
            .lines()
            .skip_while(|l| !l.starts_with(what))
            .nth(1)
            .map(str::to_owned)
            .filter(|l| !l.trim().is_empty())
    };
    let after = tmux.wait_for(&format!("{what} and the modes after it"), |screen| {
        modes_line(screen).is_some()
    });
    assert!(after.contains(&format!("{what} 0")), "{after}");
    let modes = modes_line(&after).unwrap_or_default();
    assert_eq!(
        modes.split_whitespace().collect::<Vec<_>>(),
        ["icanon", "echo"],
        "{after}"
    );
    assert_eq!(
        tmux.display("#{alternate_on}"),
        "0",
        "the normal screen again"
    );
    assert!(
        !after.contains("DECISIONS"),
        "the frame is gone with the alternate screen:\n{after}"
    );
    after
}

/// The sum of the COUNT column of the destinations table.
fn event_counts(screen: &str) -> u64 {
    screen
        .lines()
        .skip_while(|l| !l.starts_with("VERDICT "))
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 9).then(|| f[7].parse::<u64>().ok()).flatten()
        })
        .sum()
}

/// Runs `enforcer top --once` with `socket`, optionally as another user.
fn top_once(socket: &Path, uid: Option<u32>) -> Output {
    let copy = uid.map(|_| ReachableCopy::of(&enforcer_binary()));
    let mut cmd = match &copy {
        Some(c) => Command::new(c.path()),
        None => Command::new(enforcer_binary()),
    };
    cmd.args(["top", "--once", "--socket"]).arg(socket);
    if let Some(uid) = uid {
        as_user(&mut cmd, uid, &[]);
    }
    cmd.output().expect("run enforcer top")
}

#[test]
fn without_an_agent_or_permission_top_says_why() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let out = top_once(&s.control_socket(), None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&s.control_socket().display().to_string())
            && err.contains("is the agent running?"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "no frame without an agent");

    let _agent = s.start(&s.config("observe", "allow", &[]));
    let out = top_once(&s.control_socket(), Some(NOBODY));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("permission denied") && err.contains("control.admin_group"),
        "{err}"
    );

    // As root, one frame of plain text: no escape sequences.
    let out = top_once(&s.control_socket(), None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("(one frame)") && text.contains("DECISIONS"),
        "{text}"
    );
    assert!(
        !text.contains('\x1b'),
        "no escape sequences in --once: {text:?}"
    );
}

#[test]
fn the_built_in_default_without_its_database_says_how_to_get_it() {
    skip_unless!(privileged(), "needs root for a private mount namespace");
    // `enforcer run` without --config in a private mount and network
    // namespace where /usr/share is empty (so the database is missing
    // whatever this host has) and bpffs is a fresh instance: nothing the
    // agent could do there reaches the host's paths.
    let out = Command::new("unshare")
        .args(["--mount", "--net", "--propagation", "private", "sh", "-c"])
        .arg(
            "mount -t tmpfs ee-top /usr/share && mount -t tmpfs ee-top /sys/fs/bpf \
             && mount -t tmpfs ee-top /run && exec \"$0\" run",
        )
        .arg(enforcer_binary())
        .env_remove("ENFORCER_CONFIG")
        .output()
        .expect("run unshare");
    let err = String::from_utf8_lossy(&out.stderr);
    println!("--- enforcer run (built-in default, no database) ---\n{err}");
    assert!(
        !out.status.success(),
        "it cannot run without a database:\n{err}"
    );
    for needle in [
        "/usr/share/GeoIP/GeoLite2-Country.mmdb",
        "geoipupdate",
        "cargo xtask geoip fetch",
        "--config",
    ] {
        assert!(
            err.contains(needle),
            "the error must say {needle:?}:\n{err}"
        );
    }
}
