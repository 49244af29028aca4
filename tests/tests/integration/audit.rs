//! The audit log as an auditor meets it: a realistic log written through the
//! library (every kind, several flushes, a restart), checked by the real
//! `enforcer audit verify`. Editing one character of any line, deleting any
//! line, or swapping any line with the next makes it fail naming exactly
//! that line; the untouched log verifies with a summary that matches what
//! was written; the head catches a deleted last line, and without it the
//! summary says the tail is unanchored. No privileges needed.
//!
//! "Names exactly line i": for an edit, line i (its hash no longer matches);
//! for a deletion, line i (the record now at line i does not follow line
//! i-1; for the last line, the head records a line i the log lacks); for a
//! swap of lines i and i+1, line i (the first line whose record is out of
//! place: it follows line i-1 in the file but was chained to record i).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Output,
};

use enforcer::audit::{
    AgentStart, AgentStop, AuditEvent, AuditLog, Checkpoint, DatabaseRecord, EventsSuppressed,
    Kind, LoadResult, LoadTrigger, ModeChange, PolicyLoad, head_path,
};
use enforcer_tests::agent::enforcer;
use serde_json::Value;

fn databases() -> Vec<DatabaseRecord> {
    vec![
        DatabaseRecord {
            path: "/var/lib/GeoIP/GeoLite2-Country.mmdb".into(),
            sha256: "1f".repeat(32),
            build_epoch: Some(1_763_000_000),
            database_type: Some("GeoLite2-Country".into()),
            kind: Some("mmdb-maxmind".into()),
        },
        DatabaseRecord {
            path: "/etc/enforcer/sites.csv".into(),
            sha256: "2e".repeat(32),
            build_epoch: None,
            database_type: None,
            kind: Some("csv".into()),
        },
    ]
}

fn event(n: u32, verdict: &str, country: &str) -> Kind {
    let v6 = n.is_multiple_of(3);
    Kind::Event(AuditEvent {
        event_time: format!("2026-11-23T09:40:{:02}.123456Z", n % 60),
        hook: if v6 { "sendmsg6" } else { "connect4" }.into(),
        family: if v6 { "ipv6" } else { "ipv4" }.into(),
        protocol: if v6 { "udp" } else { "tcp" }.into(),
        dst: if v6 {
            format!("2001:db8::{n}")
        } else {
            format!("198.51.100.{n}")
        },
        dport: Some(7000 + n as u16),
        country: country.into(),
        verdict: verdict.into(),
        mode: if verdict == "denied" {
            "enforce"
        } else {
            "observe"
        }
        .into(),
        reason: "geoip".into(),
        pid: Some(4000 + n),
        tgid: Some(4000 + n),
        uid: Some(65534),
        gid: Some(65534),
        comm: "minio".into(),
        cgroup_id: 8123,
        cgroup: Some("/sys/fs/cgroup/system.slice/minio.service".into()),
        bytes: None,
        located_by: None,
    })
}

fn start(adopted: bool) -> Kind {
    Kind::AgentStart(AgentStart {
        version: "0.1.0".into(),
        pid: 4242,
        pin_dir: "/sys/fs/bpf/enforcer".into(),
        adopted,
        layout_version: 2,
    })
}

fn load(result: LoadResult, trigger: LoadTrigger, generation: Option<u64>) -> Kind {
    let ok = result == LoadResult::Ok;
    Kind::PolicyLoad(PolicyLoad {
        result,
        error: (!ok)
            .then(|| "/etc/enforcer/enforcer.toml: approved: unknown country code \"XX\"".into()),
        trigger,
        generation,
        policy_sha256: ok.then(|| "3d".repeat(32)),
        databases: databases(),
        prefixes_v4: ok.then_some(301_234),
        prefixes_v6: ok.then_some(256_789),
    })
}

fn mode(from: &str, to: &str, cgroup: Option<&str>, uid: u32, reason: &str) -> Kind {
    Kind::ModeChange(ModeChange {
        from: from.into(),
        to: to.into(),
        cgroup: cgroup.map(str::to_owned),
        uid,
        gid: Some(uid),
        reason: reason.into(),
    })
}

fn checkpoint(mode: &str, generation: u64) -> Kind {
    Kind::Checkpoint(Checkpoint {
        mode: mode.into(),
        policy_sha256: Some("3d".repeat(32)),
        databases: databases(),
        generation,
        records_since_last: 0,
        note: None,
    })
}

fn suppressed(rate_limit: u64, ring_full: u64) -> Kind {
    Kind::EventsSuppressed(EventsSuppressed {
        rate_limit,
        ring_full,
    })
}

fn stop(reason: &str) -> Kind {
    Kind::AgentStop(AgentStop {
        reason: reason.into(),
    })
}

/// Writes two agent lifetimes' worth of records, flushing between bursts
/// the way the agent does; returns how many records it wrote.
fn write_log(path: &Path) -> usize {
    let first = [
        vec![
            start(false),
            load(LoadResult::Ok, LoadTrigger::Start, Some(1)),
            checkpoint("observe", 1),
        ],
        vec![
            event(1, "would_deny", "US"),
            event(2, "would_deny", "CN"),
            event(3, "would_deny", "US"),
            event(4, "would_deny", "RU"),
            suppressed(12, 0),
        ],
        vec![
            mode("observe", "enforce", None, 0, "change CHG-1234 approved"),
            mode(
                "inherit",
                "observe",
                Some("/sys/fs/cgroup/system.slice/backup.service"),
                1001,
                "backup vendor migration",
            ),
            load(LoadResult::Failure, LoadTrigger::Sighup, None),
            load(LoadResult::Ok, LoadTrigger::FileWatch, Some(2)),
        ],
        vec![
            event(5, "denied", "US"),
            event(6, "denied", "CN"),
            event(7, "denied", "US"),
            event(8, "denied", "US"),
            event(9, "denied", "BR"),
            suppressed(3, 1),
            checkpoint("enforce", 2),
            stop("sigterm"),
        ],
    ];
    let second = [
        vec![
            start(true),
            load(LoadResult::Ok, LoadTrigger::Start, Some(3)),
        ],
        vec![
            event(10, "denied", "US"),
            event(11, "denied", "CN"),
            event(12, "denied", "US"),
            suppressed(0, 2),
        ],
        vec![
            mode(
                "enforce",
                "observe",
                None,
                1000,
                "incident INC-77: false positives",
            ),
            event(13, "would_deny", "US"),
            checkpoint("observe", 4),
            stop("sigterm"),
        ],
    ];
    let mut n = 0;
    for lifetime in [&first[..], &second[..]] {
        let mut log = AuditLog::open(path).expect("open the audit log");
        for batch in lifetime {
            for k in batch {
                log.append(k.clone()).expect("append");
                n += 1;
            }
            log.flush().expect("flush");
        }
    }
    n
}

/// Runs `enforcer audit verify` on `log` with `args`.
fn verify(log: &Path, args: &[&str]) -> Output {
    let log = log.to_str().expect("utf-8 path");
    let mut all = vec!["audit", "verify", log];
    all.extend_from_slice(args);
    enforcer(&all)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The line a failed verify names (`FILE:LINE: …` on stderr), checking
/// that it failed and named this file.
fn failed_line(log: &Path, out: &Output) -> (u64, String) {
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "verify passed a tampered log:\n{}",
        text(&out.stdout)
    );
    let prefix = format!("{}:", log.display());
    let at = stderr
        .find(&prefix)
        .unwrap_or_else(|| panic!("the error does not name {prefix}: {stderr}"));
    let rest = &stderr[at + prefix.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    assert!(
        rest[digits.len()..].starts_with(": "),
        "no FILE:LINE: in {stderr}"
    );
    (digits.parse().expect("a line number"), stderr)
}

/// The top-level fields of a JSON line: (key, offset of its value).
fn fields(line: &[u8]) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let (mut depth, mut in_str, mut esc) = (0, false, false);
    let mut key_start = 0;
    let mut last_key = String::new();
    for (i, &b) in line.iter().enumerate() {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => {
                    in_str = false;
                    if depth == 1 {
                        last_key = text(&line[key_start..i]);
                    }
                }
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => {
                in_str = true;
                key_start = i + 1;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth -= 1,
            b':' if depth == 1 => out.push((last_key.clone(), i + 1)),
            _ => {}
        }
    }
    out
}

/// Changes one character of the value at `start`: the first letter or
/// digit in it, to another one that keeps hex hex and numbers numbers.
fn edit_value(line: &mut [u8], start: usize) {
    let in_string = line[start] == b'"';
    let i = (start..line.len())
        .find(|&i| line[i].is_ascii_alphanumeric())
        .expect("a value with a letter or digit");
    line[i] = match (in_string, line[i]) {
        (false, b'9') => b'8',
        (false, d @ b'0'..=b'8') => d + 1,
        (true, b'9') => b'a',
        (true, b'f') => b'0',
        (true, c @ (b'0'..=b'8' | b'a'..=b'e')) => c + 1,
        (_, b'z') => b'y',
        (_, b'Z') => b'Y',
        (_, c) => c + 1,
    };
}

struct Case {
    dir: tempfile::TempDir,
    /// The log as written, line by line (without `\n`).
    lines: Vec<Vec<u8>>,
    head: Vec<u8>,
}

impl Case {
    fn new() -> (Case, PathBuf, usize) {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("audit.log");
        let n = write_log(&log);
        let lines: Vec<Vec<u8>> = fs::read(&log)
            .expect("read the log")
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        assert_eq!(lines.len(), n, "one line per record");
        let head = fs::read(head_path(&log)).expect("the head file");
        (Case { dir, lines, head }, log, n)
    }

    /// Writes `lines` (and the original head) as a log of its own.
    fn tampered(&self, name: &str, lines: &[Vec<u8>]) -> PathBuf {
        let log = self.dir.path().join(name);
        let mut bytes = Vec::new();
        for l in lines {
            bytes.extend_from_slice(l);
            bytes.push(b'\n');
        }
        fs::write(&log, bytes).expect("write the tampered log");
        fs::write(head_path(&log), &self.head).expect("write its head");
        log
    }
}

#[test]
fn the_untouched_log_verifies_and_its_summary_matches_what_was_written() {
    let (_case, log, n) = Case::new();
    assert!(
        (30..=40).contains(&n),
        "a realistic log of about 30 records"
    );

    let out = verify(&log, &["-o", "json"]);
    assert!(
        out.status.success(),
        "the untouched log must verify:\n{}",
        text(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!(s["records"], n);
    assert_eq!(s["tail"]["status"], "anchored");
    assert_eq!(s["tail"]["seq"], n);
    let kinds = &s["kinds"];
    assert_eq!(kinds["agent_start"], 2);
    assert_eq!(kinds["agent_stop"], 2);
    assert_eq!(kinds["policy_load"], 4);
    assert_eq!(kinds["mode_change"], 3);
    assert_eq!(kinds["event"], 13);
    assert_eq!(kinds["events_suppressed"], 3);
    assert_eq!(kinds["checkpoint"], 3);
    assert_eq!(s["agent"]["starts"], 2);
    assert_eq!(s["agent"]["adopted"], 1);
    assert_eq!(s["agent"]["stops"], 2);
    assert_eq!(s["policy_loads"]["ok"], 3);
    assert_eq!(s["policy_loads"]["failed"], 1);
    assert_eq!(s["policy_loads"]["failures"][0]["trigger"], "sighup");
    assert_eq!(s["policy_loads"]["failures"][0]["line"], 11);
    assert_eq!(s["events"]["total"], 13);
    assert_eq!(s["events"]["by_verdict"]["denied"], 8);
    assert_eq!(s["events"]["by_verdict"]["would_deny"], 5);
    assert_eq!(s["events"]["by_country"]["US"], 8);
    assert_eq!(s["suppressed"]["rate_limit"], 15);
    assert_eq!(s["suppressed"]["ring_full"], 3);
    let timeline = s["mode_timeline"].as_array().expect("timeline");
    let seen: Vec<(u64, &str, &str, u64)> = timeline
        .iter()
        .map(|m| {
            (
                m["line"].as_u64().unwrap(),
                m["from"].as_str().unwrap(),
                m["to"].as_str().unwrap(),
                m["uid"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (9, "observe", "enforce", 0),
            (10, "inherit", "observe", 1001),
            (27, "enforce", "observe", 1000)
        ]
    );
    assert_eq!(
        timeline[1]["cgroup"],
        "/sys/fs/cgroup/system.slice/backup.service"
    );
    assert_eq!(s["last_checkpoint"]["line"], n - 1);
    assert_eq!(s["last_checkpoint"]["generation"], 4);
    assert_eq!(s["warnings"].as_array().map(Vec::len), Some(0));

    // The text summary says the same for people.
    let out = verify(&log, &[]);
    assert!(out.status.success());
    let summary = text(&out.stdout);
    assert!(
        summary.contains(&format!("intact, {n} records")),
        "{summary}"
    );
    assert!(summary.contains("anchored by"), "{summary}");
    assert!(
        summary.contains(
            "observe -> enforce  (global)  uid 0 gid 0  reason \"change CHG-1234 approved\""
        ),
        "{summary}"
    );
    assert!(summary.contains("3 loads ok, 1 failed"), "{summary}");
}

#[test]
fn editing_deleting_or_swapping_any_line_fails_naming_that_line() {
    let (case, _, n) = Case::new();
    let mut edited_keys = std::collections::BTreeSet::new();
    for i in 1..=n {
        // (a) one character of a field value: of every top-level field in
        // turn (envelope, kind fields, nested values such as `databases`).
        for (key, start) in fields(&case.lines[i - 1]) {
            let mut lines = case.lines.clone();
            edit_value(&mut lines[i - 1], start);
            assert_ne!(lines[i - 1], case.lines[i - 1]);
            let log = case.tampered("edited.log", &lines);
            let (line, msg) = failed_line(&log, &verify(&log, &[]));
            assert_eq!(line, i as u64, "editing {key:?} of line {i}: {msg}");
            assert!(
                msg.contains("hash mismatch") || msg.contains("not valid JSON"),
                "editing {key:?} of line {i}: {msg}"
            );
            edited_keys.insert(key);
        }

        // (b) the line deleted.
        let mut lines = case.lines.clone();
        lines.remove(i - 1);
        let log = case.tampered("deleted.log", &lines);
        let (line, msg) = failed_line(&log, &verify(&log, &[]));
        assert_eq!(line, i as u64, "deleting line {i}: {msg}");
        let expected = if i == 1 {
            "the first line's prev".to_owned()
        } else if i == n {
            format!("line {n} missing: the head")
        } else {
            format!("does not follow line {}", i - 1)
        };
        assert!(msg.contains(&expected), "deleting line {i}: {msg}");

        // (c) swapped with the next line.
        if i < n {
            let mut lines = case.lines.clone();
            lines.swap(i - 1, i);
            let log = case.tampered("swapped.log", &lines);
            let (line, msg) = failed_line(&log, &verify(&log, &[]));
            assert_eq!(line, i as u64, "swapping lines {i} and {}: {msg}", i + 1);
            let expected = if i == 1 {
                "the first line's prev".to_owned()
            } else {
                format!("does not follow line {}", i - 1)
            };
            assert!(msg.contains(&expected), "swapping line {i}: {msg}");
        }
    }
    for key in ["seq", "time", "prev", "kind", "hash", "reason", "databases"] {
        assert!(
            edited_keys.contains(key),
            "no line had its {key:?} edited: {edited_keys:?}"
        );
    }
}

#[test]
fn the_head_catches_a_deleted_last_line_and_without_it_the_tail_is_unanchored() {
    let (case, _, n) = Case::new();
    let mut lines = case.lines.clone();
    lines.pop();
    let log = case.tampered("cut.log", &lines);
    let (line, msg) = failed_line(&log, &verify(&log, &[]));
    assert_eq!(line, n as u64);
    assert!(msg.contains(&format!("line {n} missing")), "{msg}");
    // The same with the head named explicitly, from elsewhere.
    let elsewhere = case.dir.path().join("copied.head");
    fs::write(&elsewhere, &case.head).unwrap();
    let out = verify(&log, &["--head", elsewhere.to_str().unwrap()]);
    assert_eq!(failed_line(&log, &out).0, n as u64);
    // And with the seq and hash an auditor wrote down.
    let head: Value = serde_json::from_slice(&case.head).unwrap();
    let seq = head["seq"].to_string();
    let hash = head["hash"].as_str().unwrap();
    let out = verify(&log, &["--expect-seq", &seq, "--expect-hash", hash]);
    assert_eq!(failed_line(&log, &out).0, n as u64);

    // Without the head the shortened log verifies, and says what it cannot
    // know.
    fs::remove_file(head_path(&log)).unwrap();
    let out = verify(&log, &["-o", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["records"], n - 1);
    assert_eq!(s["tail"]["status"], "unanchored");
    assert!(
        s["tail"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no head file")),
        "{s}"
    );
    let out = verify(&log, &[]);
    assert!(out.status.success());
    let summary = text(&out.stdout);
    assert!(
        summary.contains("NOT anchored")
            && summary.contains("deleting the last lines of the log cannot be detected"),
        "{summary}"
    );
    // --no-head ignores a head that is there.
    let log = case.tampered("whole.log", &case.lines);
    let out = verify(&log, &["--no-head", "-o", "json"]);
    assert!(out.status.success());
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["tail"]["status"], "unanchored");
}

#[test]
fn a_cut_off_write_is_reported_and_the_next_writer_records_it() {
    let (case, _, n) = Case::new();
    let mut bytes: Vec<u8> = case
        .lines
        .iter()
        .flat_map(|l| [&l[..], b"\n"].concat())
        .collect();
    bytes.extend_from_slice(br#"{"seq":99,"time":"2026-11-23T"#);
    let log = case.dir.path().join("crashed.log");
    fs::write(&log, &bytes).unwrap();
    fs::write(head_path(&log), &case.head).unwrap();
    let (line, msg) = failed_line(&log, &verify(&log, &[]));
    assert_eq!(line, n as u64 + 1);
    assert!(msg.contains("incomplete last line"), "{msg}");

    drop(AuditLog::open(&log).expect("the writer recovers"));
    let out = verify(&log, &["-o", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["records"], n + 1);
    assert_eq!(s["recovered"][0]["line"], n + 1);
    assert_eq!(s["recovered"][0]["discarded_bytes"], 29);
}
