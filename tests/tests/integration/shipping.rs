//! Shipping the evidence off the host with the project's rsyslog
//! configurations (packaging/rsyslog/): a "host" rsyslog in the sandbox's
//! client namespace follows the real agent's audit log and events file
//! with imfile and sends every line over RELP to a "collector" rsyslog in
//! the server namespace (198.51.100.1, over the veth). The collector's
//! copies must equal the host's files line for line (every record once,
//! in order), verify with the public key, and, as the off-host copy,
//! catch a truncated, rewritten or rewritten-and-re-hashed log on the
//! host; a collector killed for a few seconds, while the host's files are
//! also rotated, must still receive everything written meanwhile.

use std::{
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use enforcer::audit::SignerKey;
use enforcer_tests::{
    agent::{Agent, enforcer_at},
    privileged,
    probe::{Proto, attempt},
    rsyslog::{RELP_PORT, Rsyslog, relp_installed, rsyslogd, shipped, substitute},
    scenario::*,
    skip_unless,
    tamper::{assert_truncation_caught, keygen, rewrite_and_rehash, text, verify},
};

/// The host name both rsyslog instances give the host (the collector
/// files its copies under it).
const HOST: &str = "host1.test";

struct Shipping {
    // Dropped first: the rsyslog instances, then the scenario.
    host: Rsyslog,
    collector: Rsyslog,
    public: PathBuf,
    private: PathBuf,
    /// The collector's output directory.
    out: PathBuf,
    s: Scenario,
}

impl Shipping {
    /// A scenario, a key pair, both rsyslog instances running (the
    /// collector listening), nothing started yet on the agent's side.
    fn new() -> Shipping {
        let s = Scenario::new();
        let keys = s.dir.path().join("keys");
        fs::create_dir(&keys).expect("keys dir");
        let (private, public) = keygen(&keys, &format!("{HOST}/egress-enforcer"));
        let out = s.dir.path().join("collector");
        let collector_conf = substitute(
            shipped("egress-enforcer-collector.conf"),
            "collector",
            &[
                (
                    "port=\"2514\"",
                    &format!("port=\"{RELP_PORT}\" address=\"{SERVER_V4}\""),
                ),
                (
                    "/var/log/egress-enforcer-collector",
                    &out.display().to_string(),
                ),
            ],
        );
        let host_conf = substitute(
            shipped("egress-enforcer-host.conf"),
            "host",
            &[
                (
                    "/var/log/egress-enforcer/audit.jsonl",
                    &s.audit_log().display().to_string(),
                ),
                (
                    "/var/log/egress-enforcer/events.jsonl",
                    &s.events_file().display().to_string(),
                ),
                (
                    "target=\"collector.example.org\"",
                    &format!("target=\"{SERVER_V4}\""),
                ),
                // Retry every second instead of every 10 s: a short test.
                (
                    "action.resumeInterval=\"10\"",
                    "action.resumeInterval=\"1\"",
                ),
            ],
        );
        let mut collector = Rsyslog::start(
            "collector",
            s.dir.path(),
            &s.sb.server_ns,
            "collector.test",
            &collector_conf,
        );
        collector.wait_listening(RELP_PORT);
        let host = Rsyslog::start("host", s.dir.path(), &s.sb.client_ns, HOST, &host_conf);
        Shipping {
            host,
            collector,
            public,
            private,
            out,
            s,
        }
    }

    /// The agent in enforce with an events file, signing checkpoints every
    /// `interval`.
    fn start_agent(&self, interval: &str) -> Agent {
        let config = self
            .s
            .config_with("enforce", "allow", &[], "", &self.s.events_table(1000, 1000))
            .replace(
                "[audit]\n",
                &format!(
                    "[audit]\ncheckpoint_interval = {interval:?}\nsigning_key = {:?}\norigin = \"{HOST}/egress-enforcer\"\n",
                    self.private.display().to_string()
                ),
            );
        self.s.start(&config)
    }

    fn copy_of(&self, file: &str) -> PathBuf {
        self.out.join(HOST).join(file)
    }

    /// Refusals, a switch to observe (a would-deny), and back to enforce:
    /// `n` rounds, each adding events and audit records.
    fn drive(&self, agent: &Agent, n: usize) {
        let denied = IpAddr::V4(DENIED_V4);
        let socket = self.s.control_socket();
        let before = agent.scrape().sum("enforcer_events_total", &[]);
        for round in 0..n {
            assert!(attempt(&self.s.sb, Proto::Tcp, denied).refused(), "enforce");
            let reason = format!("shipping test round {round}");
            let out = enforcer_at(&socket, &["mode", "observe", "--reason", &reason]);
            assert!(out.status.success(), "{out:?}");
            assert!(attempt(&self.s.sb, Proto::Tcp, denied).ok, "observe");
            let out = enforcer_at(&socket, &["mode", "enforce", "--reason", &reason]);
            assert!(out.status.success(), "{out:?}");
            assert!(attempt(&self.s.sb, Proto::Udp, denied).refused(), "enforce");
        }
        let want = before + 3.0 * n as f64;
        agent.wait_for_metrics("the events", Duration::from_secs(30), |m| {
            m.sum("enforcer_events_total", &[]) == want
        });
    }

    /// Waits until the collector's copy of `file` has as many lines as
    /// the host's `host_files` (a rotated file first) together (the queue
    /// drained), then asserts that they are the same lines, in the same
    /// order.
    fn assert_arrived(&mut self, host_files: &[&Path], file: &str) -> usize {
        let copy = self.copy_of(file);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let want: Vec<String> = host_files.iter().flat_map(|f| lines(f)).collect();
            let got = lines(&copy);
            if got.len() >= want.len() && !want.is_empty() {
                for (i, (w, g)) in want.iter().zip(&got).enumerate() {
                    assert_eq!(
                        w,
                        g,
                        "{file}: line {} of the collector's copy differs from the host's",
                        i + 1
                    );
                }
                assert_eq!(
                    got.len(),
                    want.len(),
                    "{file}: the collector has more lines than the host (a record twice?)"
                );
                // Byte for byte, with the final newline.
                let host: Vec<u8> = host_files
                    .iter()
                    .flat_map(|f| fs::read(f).expect("host file"))
                    .collect();
                assert!(
                    host == fs::read(&copy).expect("copy"),
                    "{file}: not byte for byte"
                );
                return want.len();
            }
            assert!(
                Instant::now() < deadline,
                "{file}: the collector has {} of the host's {} lines after 60 s\nhost rsyslog: {}\ncollector rsyslog: {}",
                got.len(),
                want.len(),
                self.host.output(),
                self.collector.output()
            );
            assert!(
                self.host.running(),
                "host rsyslog exited: {}",
                self.host.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The collector's latest signed checkpoint: the note of the last
    /// `checkpoint` record in its copy, written to a file.
    fn latest_note(&self) -> (PathBuf, u64) {
        let note = lines(&self.copy_of("audit.jsonl"))
            .iter()
            .map(|l| json(l))
            .filter(|r| r["kind"] == "checkpoint")
            .filter_map(|r| r["note"].as_str().map(str::to_owned))
            .next_back()
            .expect("a signed checkpoint at the collector");
        let covers = note
            .lines()
            .nth(1)
            .and_then(|l| l.parse().ok())
            .expect("the note's record count");
        let path = self.out.join("latest.checkpoint");
        fs::write(&path, &note).expect("write note");
        (path, covers)
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).expect("a JSON record")
}

fn can_run() -> Result<(), String> {
    if !privileged() {
        return Err("needs root for namespaces, cgroups and BPF".into());
    }
    if rsyslogd().is_none() || !relp_installed() {
        return Err("needs Debian's rsyslog and rsyslog-relp (cargo xtask setup)".into());
    }
    Ok(())
}

#[test]
fn every_record_reaches_the_collector_once_in_order_and_catches_tampering() {
    let ready = can_run();
    skip_unless!(ready.is_ok(), "{}", ready.err().unwrap_or_default());
    let mut t = Shipping::new();
    let mut agent = t.start_agent("1s");
    t.drive(&agent, 3);
    // A periodic checkpoint or two after the events.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(agent.stop().success(), "{}", agent.log());

    let log = t.s.audit_log();
    let records = t.assert_arrived(&[&log], "audit.jsonl");
    let events = t.assert_arrived(&[&t.s.events_file()], "events.jsonl");
    assert_eq!(events, 9, "three rounds of three events");
    let copy = t.copy_of("audit.jsonl");
    let pubkey = t.public.display().to_string();
    let copy_arg = copy.display().to_string();
    let log_arg = log.display().to_string();

    // The collector's copy verifies with the key: chain and every note.
    let out = verify(&["--key", &pubkey, "-o", "json", &copy_arg]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let signed = v["signatures"]["signed"].as_u64().expect("signed");
    assert!(signed >= 3, "start, periodic, stop: {v:#}");
    assert_eq!(v["signatures"]["verified"], signed, "{v:#}");
    assert_eq!(v["kinds"]["event"], 9, "{v:#}");
    assert_eq!(v["kinds"]["mode_change"], 6, "{v:#}");
    eprintln!(
        "collector: {records} audit records and {events} events, identical to the host's; checkpoints signed {signed}, verified {}",
        v["signatures"]["verified"]
    );

    // The collector's latest note, against the host's log as it is.
    let (note, covers) = t.latest_note();
    let note_arg = note.display().to_string();
    let out = verify(&["--key", &pubkey, "--checkpoint", &note_arg, &log_arg]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("the log holds it unchanged"),
        "{}",
        text(&out)
    );

    let first_event = lines(&log)
        .iter()
        .map(|l| json(l))
        .find(|r| r["kind"] == "event")
        .and_then(|r| r["seq"].as_u64())
        .expect("an event record");
    let country = format!("\"country\":\"{DENIED_COUNTRY}\"");

    // 1. Truncated on the host (log and head cut back together).
    let out = assert_truncation_caught(
        &log,
        &t.s.dir.path().join("cut.jsonl"),
        covers - 3,
        covers,
        &pubkey,
        &note_arg,
    );
    eprintln!("truncated: {}", out.trim());

    // 2. A record rewritten on the host, nothing re-hashed.
    let edited = t.s.dir.path().join("edited.jsonl");
    let mut host_lines = lines(&log);
    let i = first_event as usize - 1;
    assert!(host_lines[i].contains(&country), "{}", host_lines[i]);
    host_lines[i] = host_lines[i].replacen(&country, "\"country\":\"DE\"", 1);
    fs::write(
        &edited,
        host_lines
            .iter()
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
    )
    .expect("edit");
    let edited_arg = edited.display().to_string();
    let out = verify(&[
        "--key",
        &pubkey,
        "--checkpoint",
        &note_arg,
        "--reference",
        &copy_arg,
        "-o",
        "json",
        &edited_arg,
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    eprintln!("rewritten: {}", text(&out).trim());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json error");
    // The chain breaks at the edited line (line N holds seq N).
    assert_eq!(v["problem"], "broken", "{v:#}");
    assert_eq!(v["line"], first_event, "names the rewritten record: {v:#}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("edited.jsonl:{first_event}: hash mismatch")),
        "{v:#}"
    );

    // 3. Rewritten and re-hashed, every note re-signed, the head rewritten:
    // the host's log verifies on its own, not against the collector.
    let key = SignerKey::load(&t.private).expect("root reads the key");
    rewrite_and_rehash(
        &log,
        first_event as usize,
        &country,
        "\"country\":\"DE\"",
        &key,
    );
    let out = verify(&["--key", &pubkey, &log_arg]);
    assert!(
        out.status.success(),
        "the forgery is consistent: {}",
        text(&out)
    );
    let out = verify(&[
        "--key",
        &pubkey,
        "--checkpoint",
        &note_arg,
        "--reference",
        &copy_arg,
        "-o",
        "json",
        &log_arg,
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    eprintln!("rewritten and re-hashed: {}", text(&out).trim());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json error");
    assert_eq!(v["problem"], "rewritten", "{v:#}");
    assert_eq!(v["seq"], first_event, "the first differing record: {v:#}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with(&format!("rewritten: record seq {first_event} differs")),
        "{v:#}"
    );
    // Without the collector's copy: where the mismatch shows.
    let out = verify(&["--key", &pubkey, "--checkpoint", &note_arg, &log_arg]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!("rewritten: record seq {covers} differs")),
        "{}",
        text(&out)
    );
}

#[test]
fn a_collector_that_goes_away_receives_everything_when_it_returns() {
    let ready = can_run();
    skip_unless!(ready.is_ok(), "{}", ready.err().unwrap_or_default());
    let mut t = Shipping::new();
    // No periodic checkpoint during the test (only at the start and the
    // stop): the collector is killed while nothing is in flight, so no
    // record is written at the collector but unacknowledged (RELP would
    // send it again: at least once, not exactly once).
    let mut agent = t.start_agent("1h");
    t.drive(&agent, 1);
    let log = t.s.audit_log();
    let events_file = t.s.events_file();
    let before = t.assert_arrived(&[&log], "audit.jsonl");
    t.assert_arrived(&[&events_file], "events.jsonl");

    t.collector.kill();
    let down = Instant::now();
    t.drive(&agent, 1);
    // Rotated while the collector is away, as the shipped logrotate
    // snippet does: rename, then SIGHUP (the agent finishes the renamed
    // files and starts new ones, the audit log with a `continued` record).
    let (old_log, old_events) = (with_suffix(&log, ".1"), with_suffix(&events_file, ".1"));
    fs::rename(&log, &old_log).expect("rotate the audit log");
    fs::rename(&events_file, &old_events).expect("rotate the events file");
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    t.drive(&agent, 2);
    let reload = enforcer_at(&t.s.control_socket(), &["reload"]);
    assert!(reload.status.success(), "{reload:?}");
    std::thread::sleep(Duration::from_secs(3).saturating_sub(down.elapsed()));
    let written = lines(&old_log).len() + lines(&log).len();
    assert!(
        lines(&log)
            .first()
            .is_some_and(|l| json(l)["kind"] == "continued"),
        "the new audit file starts with a `continued` record"
    );
    assert!(written > before, "records were written while it was away");
    assert_eq!(
        lines(&t.copy_of("audit.jsonl")).len(),
        before,
        "nothing arrives while the collector is away"
    );
    assert!(t.host.running(), "host rsyslog: {}", t.host.output());
    eprintln!(
        "collector away {:.1} s; {} audit records written meanwhile",
        down.elapsed().as_secs_f64(),
        written - before
    );

    t.collector.restart();
    t.collector.wait_listening(RELP_PORT);
    assert!(agent.stop().success(), "{}", agent.log());
    let records = t.assert_arrived(&[&old_log, &log], "audit.jsonl");
    let events = t.assert_arrived(&[&old_events, &events_file], "events.jsonl");
    assert_eq!(events, 12, "four rounds of three events");
    // One copy, one chain across the rotation.
    let out = verify(&[
        "--key",
        &t.public.display().to_string(),
        "-o",
        "json",
        &t.copy_of("audit.jsonl").display().to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["kinds"]["continued"], 1, "{v:#}");
    eprintln!(
        "after the outage and a rotation: {records} audit records and {events} events, identical; the copy verifies (checkpoints verified {})",
        v["signatures"]["verified"]
    );
}
