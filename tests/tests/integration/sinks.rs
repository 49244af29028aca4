//! The audit log and the events file under faults: a full disk (a tiny
//! tmpfs the test mounts on its own scratch directory) and rotation
//! (rename then SIGHUP, rename then `enforcer reload`, logrotate with the
//! shipped snippet). Enforcement never waits on them, the agent's memory
//! stays bounded, the events file holds whole lines only, what is lost is
//! counted, and the audit chain verifies across everything.

use std::{
    fs,
    io::Write as _,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use enforcer_tests::{
    agent::{Agent, enforcer, enforcer_at},
    privileged,
    probe::{Proto, Runner, attempt},
    sandbox::PORT,
    scenario::*,
    skip_unless,
};

/// A tmpfs mounted on a directory of the test's, unmounted on drop (also
/// when the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(dir).expect("mount point");
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(format!("size={size},mode=0750").as_str()),
        )
        .expect("mount a tmpfs on the test's own directory");
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("cannot unmount {}: {e}", self.0.display());
        }
    }
}

/// Fills the file system holding `path` until a write fails.
fn fill(path: &Path) {
    let mut f = fs::File::create(path).expect("filler");
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    // What a 4 KiB write could not take, byte by byte.
    while f.write_all(&[0]).is_ok() {}
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Every line of an events file parses as an event; returns them.
fn whole_event_lines(path: &Path) -> usize {
    let text = fs::read(path).expect("events file");
    assert!(
        text.is_empty() || text.ends_with(b"\n"),
        "{}: ends inside a line",
        path.display()
    );
    let mut n = 0;
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(line).unwrap_or_else(|e| {
            panic!(
                "{}:{}: not a whole event line ({e}): {}",
                path.display(),
                i + 1,
                String::from_utf8_lossy(line)
            )
        });
        assert_eq!(v["verdict"], "denied", "{v}");
        n += 1;
    }
    n
}

/// `enforcer audit verify -o json FILES...`: asserts it passes.
fn verify(files: &[&Path]) -> serde_json::Value {
    let mut args: Vec<&str> = vec!["audit", "verify", "-o", "json"];
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    let out = enforcer(&args);
    assert!(
        out.status.success(),
        "audit verify {names:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("summary JSON")
}

/// A config for `s` in enforce mode with its audit log and events file in
/// `dir`, events not rate limited.
fn config_in(s: &Scenario, dir: &Path) -> String {
    s.config_with(
        "enforce",
        "allow",
        &[],
        "",
        &s.events_table(1_000_000, 1_000_000),
    )
    .replace(
        &format!("{:?}", s.audit_log().display().to_string()),
        &format!("{:?}", dir.join("audit.jsonl").display().to_string()),
    )
    .replace(
        &format!("{:?}", s.events_file().display().to_string()),
        &format!("{:?}", dir.join("events.jsonl").display().to_string()),
    )
    .replace("[audit]\n", "[audit]\ncheckpoint_interval = \"1s\"\n")
}

/// The header the kernel puts before each ring buffer record
/// (`BPF_RINGBUF_HDR_SZ`,
/// <https://github.com/torvalds/linux/blob/v6.18/include/uapi/linux/bpf.h>).
const RINGBUF_HEADER: u32 = 8;

fn denied() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(DENIED_V4), PORT)
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_full_disk_costs_bounded_memory_whole_lines_and_a_gap_record() {
    skip_unless!(
        privileged(),
        "needs root for namespaces, cgroups, BPF and mount"
    );
    let s = Scenario::new();
    let small = s.dir.path().join("small");
    // Room for the 4 MiB of waiting audit records once space returns.
    let _mount = Tmpfs::mount(&small, "16m");
    let config = config_in(&s, &small);
    assert!(config.contains(&small.display().to_string()), "{config}");
    let audit = small.join("audit.jsonl");
    let events = small.join("events.jsonl");
    let mut agent = s.start(&config);
    let pid = agent.pid().expect("pid");

    // Warm up: the agent's memory settles with events flowing.
    let runner = Runner::new(&s.sb);
    assert!(
        runner
            .connect(Proto::Tcp, denied(), 2000)
            .iter()
            .all(|a| a.refused())
    );
    agent.wait_for_metrics("the warm-up events", Duration::from_secs(30), |m| {
        m.sum("enforcer_events_total", &[]) >= 2000.0
    });
    let rss_before = rss_kib(pid);

    fill(&small.join("filler"));
    // 40,000 refusals: unbounded, their audit records alone would take
    // about 20 MB.
    for _ in 0..4 {
        let got = runner.connect(Proto::Tcp, denied(), 10_000);
        assert!(
            got.iter().all(|a| a.refused()),
            "enforcement continues on a full disk"
        );
    }
    // Until the agent has read everything (the total stops moving).
    let mut last = -1.0;
    let mut m = agent.scrape();
    wait_until("the events to be read", Duration::from_secs(60), || {
        m = agent.scrape();
        let now = m.sum("enforcer_events_total", &[]);
        let settled = now == last;
        last = now;
        std::thread::sleep(Duration::from_millis(900));
        settled
    });
    let rss_full = rss_kib(pid);
    let read = m.sum("enforcer_events_total", &[]);
    let lost = m.sum("enforcer_events_write_errors_total", &[]);
    let audit_dropped = m.sum("enforcer_sink_dropped_total", &[("sink", "audit")]);
    eprintln!(
        "full disk: RSS {rss_before} KiB -> {rss_full} KiB; events read {read}, lost {lost}, \
         audit records dropped {audit_dropped}"
    );
    // The agent kept draining the ring while the disk was full: it read
    // more events than the warm-up plus a full ring could hold. How many
    // more depends on how much CPU it got (on a busy machine about half of
    // the 40,000, on a quiet one three quarters); the rest were dropped by
    // the kernel as ring_full and counted, which the sum below checks.
    let ring_records = f64::from(
        enforcer_common::EVENTS_BYTES
            / (std::mem::size_of::<enforcer_common::Event>() as u32 + RINGBUF_HEADER),
    );
    assert!(
        read > 2000.0 + ring_records,
        "the agent kept reading events on a full disk: {read} read, a ring holds \
         {ring_records}"
    );
    let ring_full = m.sum(
        "enforcer_events_suppressed_total",
        &[("reason", "ring_full")],
    );
    assert_eq!(
        read + ring_full,
        42_000.0,
        "every refusal is an event read or one counted as dropped (ring full)"
    );
    assert_eq!(
        m.sum("enforcer_sink_healthy", &[("sink", "audit")]),
        0.0,
        "status of the audit sink: {}",
        m.text
    );
    assert!(audit_dropped > 0.0, "the bound was reached: {}", m.text);
    let status = enforcer_at(&s.control_socket(), &["status"]);
    let status_text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status_text.contains("failing") && status_text.contains("No space left"),
        "status shows the failing sinks: {status_text}"
    );
    // The documented bound (4 MiB of waiting records) plus room for the
    // allocator, a batch of event lines (at most 1,024) and the 1,000
    // recent events kept for `enforcer events` (measured: about 6 MiB in
    // all). Unbounded, the audit records of 20,000+ events alone take over
    // 10 MB.
    let growth = rss_full.saturating_sub(rss_before);
    assert!(
        growth < 10 * 1024,
        "RSS grew by {growth} KiB on a full disk ({rss_before} -> {rss_full})"
    );

    // The events file: whole lines only, and every event read is either
    // in it or counted as lost.
    let in_file = whole_event_lines(&events);
    assert_eq!(
        in_file as f64 + lost,
        read,
        "lines in the file ({in_file}) + lost ({lost}) = events read ({read})"
    );
    assert!(lost > 0.0);

    // Space returns: the gap record is chained in.
    fs::remove_file(small.join("filler")).expect("free space");
    wait_until("the gap record", Duration::from_secs(30), || {
        fs::read_to_string(&audit).is_ok_and(|t| t.contains(r#""kind":"gap""#))
    });
    agent.wait_for_metrics("a healthy audit sink", Duration::from_secs(10), |m| {
        m.sum("enforcer_sink_healthy", &[("sink", "audit")]) == 1.0
    });
    // New events are written again.
    assert!(attempt(&s.sb, Proto::Tcp, IpAddr::V4(DENIED_V4)).refused());
    assert!(agent.stop().success(), "{}", agent.log());
    let v = verify(&[&audit]);
    assert!(v["gaps"]["records"].as_u64() >= Some(1), "{v:#}");
    // Checkpoints went on being dropped until space returned.
    assert!(
        v["gaps"]["dropped"].as_f64() >= Some(audit_dropped),
        "the gap records state every dropped record ({audit_dropped} when measured): {v:#}"
    );
    assert!(
        v["gaps"]["entries"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("No space left")),
        "{v:#}"
    );
    assert_eq!(v["tail"]["status"], "anchored", "{v:#}");
    whole_event_lines(&events);
}

#[test]
fn rotation_by_rename_sighup_reload_and_logrotate_keeps_the_chain() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let dir = s.dir.path().join("logs");
    let config = config_in(&s, &dir);
    let audit = dir.join("audit.jsonl");
    let events = dir.join("events.jsonl");
    let mut agent = s.start(&config);
    let socket = s.control_socket();
    let runner = Runner::new(&s.sb);
    let mut expected = 0.0;
    let mut refuse = |n: u32| {
        assert!(
            runner
                .connect(Proto::Tcp, denied(), n)
                .iter()
                .all(|a| a.refused())
        );
        expected += f64::from(n);
        expected
    };

    let total = refuse(3);
    agent.wait_for_metrics("3 events", Duration::from_secs(30), |m| {
        m.sum("enforcer_events_total", &[]) == total
    });
    // 1: rename, then SIGHUP.
    let (a1, e1) = (dir.join("audit.jsonl.r1"), dir.join("events.jsonl.r1"));
    fs::rename(&audit, &a1).expect("rename audit");
    fs::rename(&events, &e1).expect("rename events");
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    agent.wait_for_metrics("both files reopened", Duration::from_secs(30), |m| {
        m.sum("enforcer_sink_reopens_total", &[("sink", "audit")]) >= 1.0
            && m.sum("enforcer_sink_reopens_total", &[("sink", "events_file")]) >= 1.0
    });
    let total = refuse(2);
    agent.wait_for_metrics("5 events", Duration::from_secs(30), |m| {
        m.sum("enforcer_events_total", &[]) == total
    });
    assert_eq!(
        whole_event_lines(&e1),
        3,
        "the old events file keeps the old events"
    );
    wait_until("2 events in the new file", Duration::from_secs(10), || {
        whole_event_lines(&events) == 2
    });

    // 2: rename, then `enforcer reload`.
    let (a2, e2) = (dir.join("audit.jsonl.r2"), dir.join("events.jsonl.r2"));
    fs::rename(&audit, &a2).expect("rename audit");
    fs::rename(&events, &e2).expect("rename events");
    let out = enforcer_at(&socket, &["reload"]);
    assert!(out.status.success(), "{out:?}");
    let total = refuse(4);
    agent.wait_for_metrics("9 events", Duration::from_secs(30), |m| {
        m.sum("enforcer_events_total", &[]) == total
    });
    wait_until("4 events in the new file", Duration::from_secs(10), || {
        whole_event_lines(&events) == 4
    });
    assert_eq!(whole_event_lines(&e2), 2);

    // 3: logrotate itself, with the shipped snippet (paths and the signal
    // command substituted for this test's).
    let snippet = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/logrotate/egress-enforcer"),
    )
    .expect("the shipped logrotate snippet");
    let pid = agent.pid().expect("pid");
    let conf = snippet
        // The allowed sample's file first: its default path extends the
        // events file's.
        .replace(
            "/var/log/egress-enforcer/events.jsonl.allowed.jsonl",
            &format!("{}.allowed.jsonl", events.display()),
        )
        .replace(
            "/var/log/egress-enforcer/audit.jsonl /var/log/egress-enforcer/events.jsonl",
            &format!("{} {}", audit.display(), events.display()),
        )
        .replace(
            "systemctl kill --signal=HUP --kill-whom=main egress-enforcer.service",
            &format!("kill -HUP {pid}"),
        );
    assert!(conf.contains(&format!("kill -HUP {pid}")), "{conf}");
    assert!(
        !conf.contains("/var/log/"),
        "every path is the test's: {conf}"
    );
    assert!(
        !snippet.contains("\n    copytruncate"),
        "never copytruncate"
    );
    let conf_path = s.dir.path().join("logrotate.conf");
    fs::write(&conf_path, conf).expect("logrotate conf");
    let out = Command::new("logrotate")
        .arg("-f")
        .arg("-s")
        .arg(s.dir.path().join("logrotate.state"))
        .arg(&conf_path)
        .output()
        .expect("run logrotate (installed by `cargo xtask setup`)");
    assert!(
        out.status.success(),
        "logrotate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (a3, e3) = (dir.join("audit.jsonl.1"), dir.join("events.jsonl.1"));
    assert!(a3.exists() && e3.exists(), "logrotate renamed both files");
    let total = refuse(1);
    agent.wait_for_metrics("10 events", Duration::from_secs(30), |m| {
        m.sum("enforcer_events_total", &[]) == total
    });
    wait_until("1 event in the new file", Duration::from_secs(10), || {
        events.exists() && whole_event_lines(&events) == 1
    });
    assert_eq!(whole_event_lines(&e3), 4);
    assert!(agent.stop().success(), "{}", agent.log());

    let v = verify(&[&a1, &a2, &a3, &audit]);
    assert_eq!(v["events"]["total"], 10, "{v:#}");
    assert_eq!(v["files"].as_array().map(Vec::len), Some(4), "{v:#}");
    let continued = v["continued"].as_array().expect("continued");
    assert_eq!(continued.len(), 3, "{v:#}");
    assert!(continued.iter().all(|c| c["checked"] == true), "{v:#}");
    assert_eq!(continued[0]["previous_file"], a1.display().to_string());
    assert_eq!(v["tail"]["status"], "anchored", "{v:#}");
    // Out of order, the files do not verify.
    let out = enforcer(&[
        "audit",
        "verify",
        &a2.display().to_string(),
        &a1.display().to_string(),
    ]);
    assert!(!out.status.success());

    // The next start takes the rotated log as it is (no refusal).
    fs::rename(&audit, dir.join("audit.jsonl.0")).expect("rotate while stopped");
    let mut again = Agent::start_with(&agent.config, &s.pin_dir)
        .unwrap_or_else(|f| panic!("start after a rotation while stopped: {}", f.stderr));
    assert!(again.stop().success(), "{}", again.log());
    drop(agent);
    let v = verify(&[&a1, &a2, &a3, &dir.join("audit.jsonl.0"), &audit]);
    let continued = v["continued"].as_array().expect("continued");
    assert_eq!(
        continued.last().expect("one")["cause"],
        "missing_at_start",
        "{v:#}"
    );
}
