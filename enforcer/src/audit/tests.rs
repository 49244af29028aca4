//! Writer and verifier together: every detection on a small log.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use super::*;

fn stop(reason: &str) -> Kind {
    Kind::AgentStop(AgentStop {
        reason: reason.into(),
    })
}

fn mode(from: &str, to: &str, uid: u32) -> Kind {
    Kind::ModeChange(ModeChange {
        from: from.into(),
        to: to.into(),
        cgroup: None,
        uid,
        gid: Some(uid),
        reason: format!("{from} to {to}"),
    })
}

fn event(verdict: &str, country: &str) -> Kind {
    Kind::Event(AuditEvent {
        event_time: "2026-01-01T00:00:00.000001Z".into(),
        hook: "connect4".into(),
        family: "ipv4".into(),
        protocol: "tcp".into(),
        dst: "198.51.100.20".into(),
        dport: Some(443),
        country: country.into(),
        verdict: verdict.into(),
        mode: "enforce".into(),
        reason: "geoip".into(),
        pid: Some(7),
        tgid: Some(7),
        uid: Some(1000),
        gid: Some(1000),
        comm: "curl".into(),
        cgroup_id: 42,
        cgroup: Some("/sys/fs/cgroup/x".into()),
        bytes: None,
        located_by: Some("/var/lib/GeoIP/GeoLite2-Country.mmdb (mmdb-maxmind)".into()),
    })
}

struct Fixture {
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("audit.log");
        Fixture { _dir: dir, log }
    }

    /// A log of `n` records (mode changes alternating), flushed.
    fn with_records(n: usize) -> Self {
        let f = Fixture::new();
        let mut log = AuditLog::open(&f.log).expect("open");
        for i in 0..n {
            let k = if i % 2 == 0 {
                mode("observe", "enforce", i as u32)
            } else {
                mode("enforce", "observe", i as u32)
            };
            log.append(k).expect("append");
        }
        log.flush().expect("flush");
        f
    }

    fn lines(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .expect("read log")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn write_lines(&self, lines: &[String]) {
        let mut text = lines.join("\n");
        if !lines.is_empty() {
            text.push('\n');
        }
        fs::write(&self.log, text).expect("write log");
    }

    fn head(&self) -> PathBuf {
        head_path(&self.log)
    }

    fn verify(&self) -> Result<Summary, VerifyError> {
        verify(&self.log, HeadCheck::Auto)
    }

    /// The verify error's line and message.
    fn broken(&self, check: HeadCheck) -> (u64, Problem, String) {
        match verify(&self.log, check) {
            Ok(s) => panic!("the log verified: {s:?}"),
            Err(e @ VerifyError::Broken { .. }) => {
                let msg = e.to_string();
                let VerifyError::Broken { line, problem, .. } = e else {
                    unreachable!()
                };
                (line, problem, msg)
            }
            Err(e) => panic!("not a broken-line error: {e}"),
        }
    }
}

/// A line sealed by hand (for records the writer would never produce).
fn sealed(seq: u64, prev: &str, kind_json: &str) -> (String, String) {
    seal(seq, "2026-01-01T00:00:00.000000Z", prev, kind_json)
}

#[test]
fn an_untouched_log_verifies_and_is_anchored_by_its_head() {
    let f = Fixture::with_records(5);
    let s = f.verify().expect("intact");
    assert_eq!(s.records, 5);
    assert_eq!(s.mode_changes, 5);
    assert_eq!(s.mode_timeline[1].from, "enforce");
    assert_eq!(s.mode_timeline[1].uid, 1);
    assert_eq!(s.mode_timeline[1].line, 2);
    assert_eq!(
        s.tail,
        Tail::Anchored {
            source: f.head().display().to_string(),
            seq: 5
        }
    );
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    let head: Head = serde_json::from_str(&fs::read_to_string(f.head()).unwrap()).unwrap();
    assert_eq!(head.seq, 5);
    assert_eq!(head.hash, s.last_hash);
}

#[test]
fn records_are_json_lines_with_the_envelope_in_order() {
    let f = Fixture::with_records(2);
    let lines = f.lines();
    assert!(lines[0].starts_with(r#"{"seq":1,"time":""#));
    assert!(lines[0].contains(&format!(
        r#""prev":"{ZERO_HASH}","kind":"mode_change","from""#
    )));
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    let second: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(second["prev"], first["hash"]);
    assert_eq!(second["seq"], 2);
    let time = first["time"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
    assert_eq!(time.len(), "2026-01-01T00:00:00.000000Z".len(), "{time}");
}

#[test]
fn reopening_continues_the_chain() {
    let f = Fixture::with_records(3);
    {
        let mut log = AuditLog::open(&f.log).expect("reopen");
        assert_eq!(log.last().seq, 3);
        let a = log.append(stop("sigterm")).expect("append");
        assert_eq!(a.seq, 4);
        // Dropped without flush: Drop writes it.
    }
    let s = f.verify().expect("intact");
    assert_eq!(s.records, 4);
    assert_eq!(s.agent.stops, 1);
    assert!(matches!(s.tail, Tail::Anchored { seq: 4, .. }));
}

#[test]
fn a_new_log_is_created_0640() {
    let f = Fixture::with_records(1);
    let mode = fs::metadata(&f.log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    let mode = fs::metadata(f.head()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
}

#[test]
fn appends_are_buffered_until_flush() {
    let f = Fixture::new();
    let mut log = AuditLog::open(&f.log).unwrap();
    log.append(stop("a")).unwrap();
    log.append(stop("b")).unwrap();
    assert_eq!(fs::metadata(&f.log).unwrap().len(), 0);
    assert!(!f.head().exists());
    assert!(log.buffered() > 0);
    log.flush().unwrap();
    assert_eq!(log.buffered(), 0);
    assert_eq!(f.lines().len(), 2);
    assert_eq!(log.head().map(|h| h.seq), Some(2));
}

#[test]
fn a_second_writer_is_refused() {
    let f = Fixture::new();
    let _first = AuditLog::open(&f.log).unwrap();
    let e = AuditLog::open(&f.log).unwrap_err();
    assert!(matches!(e, AuditError::Busy { .. }), "{e}");
    assert!(e.to_string().contains("audit.log"), "{e}");
}

#[test]
fn an_edited_line_is_a_hash_mismatch_on_that_line() {
    let f = Fixture::with_records(5);
    let mut lines = f.lines();
    lines[2] = lines[2].replace("\"uid\":2", "\"uid\":3");
    f.write_lines(&lines);
    let (line, problem, msg) = f.broken(HeadCheck::Auto);
    assert_eq!(line, 3);
    assert!(matches!(problem, Problem::HashMismatch { .. }), "{msg}");
    assert!(msg.contains("audit.log:3: hash mismatch"), "{msg}");
}

#[test]
fn an_edited_prev_or_seq_is_caught_by_the_hash_first() {
    let f = Fixture::with_records(3);
    let mut lines = f.lines();
    lines[1] = lines[1].replace("\"seq\":2", "\"seq\":9");
    f.write_lines(&lines);
    let (line, problem, _) = f.broken(HeadCheck::Auto);
    assert_eq!(
        (line, matches!(problem, Problem::HashMismatch { .. })),
        (2, true)
    );
}

#[test]
fn a_deleted_line_breaks_the_next_ones_link() {
    let f = Fixture::with_records(5);
    let mut lines = f.lines();
    lines.remove(2);
    f.write_lines(&lines);
    let (line, problem, msg) = f.broken(HeadCheck::Auto);
    assert_eq!(line, 3);
    assert!(
        matches!(problem, Problem::PrevMismatch { before: 2, .. }),
        "{msg}"
    );
    assert!(msg.contains("does not follow line 2"), "{msg}");
}

#[test]
fn a_deleted_first_line_leaves_a_log_that_does_not_start() {
    let f = Fixture::with_records(3);
    let mut lines = f.lines();
    lines.remove(0);
    f.write_lines(&lines);
    let (line, problem, msg) = f.broken(HeadCheck::Auto);
    assert_eq!(line, 1);
    assert!(matches!(problem, Problem::NotFirst { .. }), "{msg}");
}

#[test]
fn swapped_lines_are_reported_at_the_first_one_out_of_place() {
    let f = Fixture::with_records(5);
    let mut lines = f.lines();
    lines.swap(1, 2);
    f.write_lines(&lines);
    let (line, problem, _) = f.broken(HeadCheck::Auto);
    assert_eq!(line, 2);
    assert!(matches!(problem, Problem::PrevMismatch { before: 1, .. }));
}

#[test]
fn a_seq_gap_in_an_otherwise_sealed_chain_is_reported() {
    let f = Fixture::new();
    let (l1, h1) = sealed(1, ZERO_HASH, r#"{"kind":"agent_stop","reason":"a"}"#);
    let (l2, _) = sealed(3, &h1, r#"{"kind":"agent_stop","reason":"b"}"#);
    f.write_lines(&[l1, l2]);
    let (line, problem, msg) = f.broken(HeadCheck::None);
    assert_eq!(line, 2);
    assert_eq!(
        problem,
        Problem::Seq {
            expected: 2,
            found: 3
        }
    );
    assert!(msg.contains("seq 3 where 2 was expected"), "{msg}");
}

#[test]
fn a_first_seq_other_than_1_is_reported() {
    let f = Fixture::new();
    let (l1, _) = sealed(0, ZERO_HASH, r#"{"kind":"agent_stop","reason":"a"}"#);
    f.write_lines(&[l1]);
    let (line, problem, _) = f.broken(HeadCheck::None);
    assert_eq!(
        (line, problem),
        (
            1,
            Problem::Seq {
                expected: 1,
                found: 0
            }
        )
    );
}

#[test]
fn time_going_backwards_is_a_warning_not_a_failure() {
    let f = Fixture::new();
    let mut log = AuditLog::open(&f.log).unwrap();
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    log.append_at(t, stop("a")).unwrap();
    log.append_at(t - Duration::from_secs(90), stop("b"))
        .unwrap();
    log.append_at(t + Duration::from_secs(10), stop("c"))
        .unwrap();
    log.flush().unwrap();
    let s = f.verify().expect("a clock step does not break the chain");
    assert_eq!(s.time_backwards, 1);
    assert!(
        s.warnings.iter().any(|w| w.starts_with("line 2: time")),
        "{:?}",
        s.warnings
    );
    assert_eq!(s.span_seconds, Some(10.0));
}

#[test]
fn an_invalid_time_is_reported() {
    let f = Fixture::new();
    let (l1, _) = seal(
        1,
        "yesterday",
        ZERO_HASH,
        r#"{"kind":"agent_stop","reason":"a"}"#,
    );
    f.write_lines(&[l1]);
    let (line, problem, _) = f.broken(HeadCheck::None);
    assert_eq!((line, problem), (1, Problem::Time("yesterday".into())));
}

#[test]
fn a_trailing_partial_line_is_reported() {
    let f = Fixture::with_records(3);
    let mut text = fs::read_to_string(&f.log).unwrap();
    text.push_str(r#"{"seq":4,"time":"2026"#);
    fs::write(&f.log, text).unwrap();
    let (line, problem, msg) = f.broken(HeadCheck::Auto);
    assert_eq!(line, 4);
    assert_eq!(problem, Problem::Partial { bytes: 21 });
    assert!(msg.contains("incomplete last line"), "{msg}");
}

#[test]
fn a_last_line_cut_in_half_is_a_partial_line() {
    let f = Fixture::with_records(3);
    let text = fs::read_to_string(&f.log).unwrap();
    fs::write(&f.log, &text[..text.len() - 30]).unwrap();
    let (line, problem, _) = f.broken(HeadCheck::Auto);
    assert_eq!(line, 3);
    assert!(matches!(problem, Problem::Partial { .. }));
}

#[test]
fn invalid_json_and_missing_fields_are_reported_on_their_line() {
    let f = Fixture::with_records(3);
    let mut lines = f.lines();
    lines[1] = "{not json".into();
    f.write_lines(&lines);
    let (line, problem, msg) = f.broken(HeadCheck::Auto);
    assert_eq!(line, 2);
    assert!(matches!(problem, Problem::Invalid(_)), "{msg}");
    assert!(msg.contains("not valid JSON"), "{msg}");
    assert!(!msg.contains("at line 1"), "{msg}");

    let mut lines = f.lines();
    lines[1] = r#"{"time":"x","prev":"p","kind":"k","hash":"h"}"#.into();
    f.write_lines(&lines);
    let (line, _, msg) = f.broken(HeadCheck::Auto);
    assert_eq!(line, 2);
    assert!(msg.contains("missing field `seq`"), "{msg}");

    let mut lines = f.lines();
    lines[1] = String::new();
    f.write_lines(&lines);
    assert_eq!(f.broken(HeadCheck::Auto).0, 2);
}

#[test]
fn a_hash_that_is_not_the_last_field_is_refused() {
    let f = Fixture::new();
    let (l1, h1) = sealed(1, ZERO_HASH, r#"{"kind":"agent_stop","reason":"a"}"#);
    // Same fields, hash moved to the front: the seal rule cannot apply.
    let v: serde_json::Value = serde_json::from_str(&l1).unwrap();
    let moved = format!(
        r#"{{"hash":"{h1}","seq":1,"time":{},"prev":"{ZERO_HASH}","kind":"agent_stop","reason":"a"}}"#,
        v["time"]
    );
    f.write_lines(&[moved]);
    let (line, problem, _) = f.broken(HeadCheck::None);
    assert_eq!((line, problem), (1, Problem::Unsealed));
}

#[test]
fn a_hash_that_is_not_hex_is_refused() {
    let f = Fixture::with_records(2);
    let mut lines = f.lines();
    let n = lines[0].len();
    lines[0].replace_range(n - 3..n - 2, "g");
    f.write_lines(&lines);
    let (line, _, msg) = f.broken(HeadCheck::Auto);
    assert_eq!(line, 1);
    assert!(msg.contains("not 64 lowercase hex"), "{msg}");
}

#[test]
fn a_known_kind_with_missing_fields_is_reported() {
    let f = Fixture::new();
    let (l1, _) = sealed(1, ZERO_HASH, r#"{"kind":"mode_change","from":"observe"}"#);
    f.write_lines(&[l1]);
    let (line, problem, msg) = f.broken(HeadCheck::None);
    assert_eq!(line, 1);
    assert!(matches!(problem, Problem::Fields { .. }), "{msg}");
    assert!(
        msg.contains("mode_change record: missing field `to`"),
        "{msg}"
    );
}

#[test]
fn unknown_kinds_and_unknown_fields_verify_for_extensibility() {
    let f = Fixture::new();
    let (l1, h1) = sealed(1, ZERO_HASH, r#"{"kind":"future_thing","x":[1,2]}"#);
    let (l2, _) = sealed(
        2,
        &h1,
        r#"{"kind":"agent_stop","reason":"a","new_field":{"y":1}}"#,
    );
    f.write_lines(&[l1, l2]);
    let s = verify(&f.log, HeadCheck::None).expect("intact");
    assert_eq!(s.kinds.get("future_thing"), Some(&1));
    assert_eq!(s.agent.stops, 1);
    assert!(s.warnings[0].contains("unknown kind \"future_thing\""));
}

#[test]
fn a_line_longer_than_the_limit_is_refused() {
    let f = Fixture::with_records(1);
    let mut text = fs::read_to_string(&f.log).unwrap();
    text.push_str(&"x".repeat(MAX_LINE + 10));
    text.push('\n');
    fs::write(&f.log, text).unwrap();
    let (line, problem, _) = f.broken(HeadCheck::None);
    assert_eq!((line, problem), (2, Problem::TooLong));
}

#[test]
fn a_deleted_last_line_is_caught_by_the_head_only() {
    let f = Fixture::with_records(4);
    let mut lines = f.lines();
    lines.pop();
    f.write_lines(&lines);
    let (line, problem, msg) = f.broken(HeadCheck::Auto);
    assert_eq!(line, 4);
    assert!(matches!(
        problem,
        Problem::Missing {
            first: 4,
            last: 4,
            ..
        }
    ));
    assert!(
        msg.contains("audit.log:4: line 4 missing: the head"),
        "{msg}"
    );
    lines.pop();
    f.write_lines(&lines);
    let (line, _, msg) = f.broken(HeadCheck::Auto);
    assert_eq!(line, 3);
    assert!(msg.contains("lines 3-4 missing"), "{msg}");

    // Without the head the log verifies, and says it cannot know.
    let s = verify(&f.log, HeadCheck::None).expect("no anchor");
    assert_eq!(s.records, 2);
    assert!(matches!(s.tail, Tail::Unanchored { .. }));
    assert!(s.tail.to_string().contains("cannot be detected"));
    fs::remove_file(f.head()).unwrap();
    let s = f.verify().expect("no head file");
    let Tail::Unanchored { reason } = &s.tail else {
        panic!("{:?}", s.tail)
    };
    assert!(reason.contains("no head file"), "{reason}");
}

#[test]
fn a_rewritten_tail_is_caught_by_the_heads_hash() {
    let f = Fixture::with_records(3);
    let mut lines = f.lines();
    // Rewrite line 3 with a valid seal: the chain alone cannot tell.
    let v: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
    let (forged, _) = seal(
        3,
        v["time"].as_str().unwrap(),
        v["prev"].as_str().unwrap(),
        r#"{"kind":"agent_stop","reason":"nothing happened"}"#,
    );
    lines[2] = forged;
    f.write_lines(&lines);
    verify(&f.log, HeadCheck::None).expect("the chain alone is intact");
    let (line, problem, msg) = f.broken(HeadCheck::Auto);
    assert_eq!(line, 3);
    assert!(matches!(problem, Problem::HeadHash { .. }), "{msg}");
}

#[test]
fn an_expected_seq_and_hash_anchor_the_log() {
    let f = Fixture::with_records(3);
    let s = f.verify().unwrap();
    let anchor = HeadCheck::Expect {
        seq: 2,
        hash: serde_json::from_str::<serde_json::Value>(&f.lines()[1]).unwrap()["hash"]
            .as_str()
            .unwrap()
            .to_uppercase(),
    };
    let s2 = verify(&f.log, anchor).expect("anchored at 2");
    assert!(matches!(
        s2.tail,
        Tail::PartlyAnchored {
            seq: 2,
            unanchored_records: 1,
            ..
        }
    ));
    let wrong = HeadCheck::Expect {
        seq: 3,
        hash: "ab".repeat(32),
    };
    let (line, _, _) = f.broken(wrong);
    assert_eq!(line, 3);
    let ahead = HeadCheck::Expect {
        seq: 5,
        hash: s.last_hash,
    };
    assert_eq!(f.broken(ahead).0, 4);
}

#[test]
fn an_older_head_leaves_the_records_after_it_unanchored() {
    let f = Fixture::with_records(2);
    let old_head = fs::read(f.head()).unwrap();
    {
        let mut log = AuditLog::open(&f.log).unwrap();
        log.append(stop("x")).unwrap();
        log.flush().unwrap();
    }
    fs::write(f.head(), old_head).unwrap();
    let s = f.verify().expect("intact up to the head");
    assert!(
        matches!(
            s.tail,
            Tail::PartlyAnchored {
                seq: 2,
                unanchored_records: 1,
                ..
            }
        ),
        "{:?}",
        s.tail
    );
    assert!(s.warnings.iter().any(|w| w.contains("not anchored")));
    // The writer accepts it too (a crash between write and head update).
    let mut log = AuditLog::open(&f.log).unwrap();
    log.append_flush(stop("y")).unwrap();
    drop(log);
    assert!(matches!(
        f.verify().unwrap().tail,
        Tail::Anchored { seq: 4, .. }
    ));
}

#[test]
fn a_bad_head_file_is_an_error_naming_it() {
    let f = Fixture::with_records(1);
    fs::write(f.head(), "garbage").unwrap();
    let e = f.verify().unwrap_err();
    assert!(matches!(e, VerifyError::Head { .. }));
    assert!(e.to_string().contains("audit.log.head"), "{e}");
    let e = AuditLog::open(&f.log).unwrap_err();
    assert!(e.to_string().contains("audit.log.head"), "{e}");
    let e = verify(&f.log, HeadCheck::File(f.log.with_extension("nope"))).unwrap_err();
    assert!(e.to_string().contains("no such file"), "{e}");
}

#[test]
fn an_empty_log_verifies_with_nothing_anchored() {
    let f = Fixture::new();
    drop(AuditLog::open(&f.log).unwrap());
    assert!(f.log.exists());
    assert!(!f.head().exists(), "no head before the first record");
    let s = f.verify().unwrap();
    assert_eq!(s.records, 0);
    assert_eq!(s.last_hash, ZERO_HASH);
    assert!(matches!(s.tail, Tail::Unanchored { .. }));
}

#[test]
fn opening_after_a_cut_off_write_records_what_was_discarded() {
    let f = Fixture::with_records(2);
    let partial = r#"{"seq":3,"time":"2026-01-01T00:00:00.0"#;
    let mut text = fs::read_to_string(&f.log).unwrap();
    text.push_str(partial);
    fs::write(&f.log, text).unwrap();
    let log = AuditLog::open(&f.log).expect("recovers");
    assert_eq!(log.last().seq, 3);
    drop(log);
    let lines = f.lines();
    assert_eq!(lines.len(), 3);
    let rec: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
    assert_eq!(rec["kind"], "recovered");
    assert_eq!(rec["discarded_bytes"], partial.len());
    assert_eq!(rec["discarded_sha256"], sha256_hex(partial.as_bytes()));
    assert_eq!(rec["discarded_start"], partial);
    let s = f.verify().expect("intact after recovery");
    assert_eq!(s.recovered.len(), 1);
    assert_eq!(s.recovered[0].line, 3);
    assert!(matches!(s.tail, Tail::Anchored { seq: 3, .. }));
    assert!(s.warnings.iter().any(|w| w.contains("incomplete line")));
}

#[test]
fn opening_a_log_whose_only_content_is_partial_starts_the_chain() {
    let f = Fixture::new();
    fs::write(&f.log, "{\"seq\":1,").unwrap();
    drop(AuditLog::open(&f.log).expect("recovers"));
    let s = f.verify().unwrap();
    assert_eq!(s.records, 1);
    assert_eq!(s.kinds.get("recovered"), Some(&1));
}

#[test]
fn opening_refuses_a_log_shorter_than_its_head() {
    let f = Fixture::with_records(3);
    let mut lines = f.lines();
    lines.pop();
    f.write_lines(&lines);
    let before = fs::read(&f.log).unwrap();
    let e = AuditLog::open(&f.log).unwrap_err();
    assert!(
        matches!(
            e,
            AuditError::HeadAhead {
                head_seq: 3,
                log_seq: 2,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("audit.log.head records 3 records"),
        "{e}"
    );
    assert_eq!(fs::read(&f.log).unwrap(), before, "nothing written");

    // Cutting the last record's newline and a few bytes looks like a crash,
    // but the head knows the record was complete.
    let f = Fixture::with_records(3);
    let text = fs::read_to_string(&f.log).unwrap();
    fs::write(&f.log, &text[..text.len() - 5]).unwrap();
    let e = AuditLog::open(&f.log).unwrap_err();
    assert!(matches!(e, AuditError::HeadAhead { .. }), "{e}");
}

#[test]
fn opening_refuses_a_rewritten_last_record() {
    let f = Fixture::with_records(2);
    let mut lines = f.lines();
    let v: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    let (forged, _) = seal(
        2,
        v["time"].as_str().unwrap(),
        v["prev"].as_str().unwrap(),
        r#"{"kind":"agent_stop","reason":"forged"}"#,
    );
    lines[1] = forged;
    f.write_lines(&lines);
    let e = AuditLog::open(&f.log).unwrap_err();
    assert!(matches!(e, AuditError::HeadMismatch { seq: 2, .. }), "{e}");
}

#[test]
fn opening_refuses_an_invalid_last_record_naming_its_line() {
    let f = Fixture::with_records(3);
    let mut lines = f.lines();
    lines[2] = lines[2].replace("\"uid\":2", "\"uid\":7");
    f.write_lines(&lines);
    let e = AuditLog::open(&f.log).unwrap_err();
    assert!(matches!(e, AuditError::Tail { line: 3, .. }), "{e}");
    assert!(
        e.to_string()
            .contains("audit.log:3: the last record is not valid (hash mismatch"),
        "{e}"
    );
}

#[test]
fn opening_refuses_a_file_without_newlines_longer_than_a_line() {
    let f = Fixture::new();
    fs::write(&f.log, "x".repeat(MAX_LINE + 1)).unwrap();
    let e = AuditLog::open(&f.log).unwrap_err();
    assert!(matches!(e, AuditError::TooLong { line: 1, .. }), "{e}");
}

#[test]
fn the_tail_is_found_across_read_windows() {
    // Long lines, so the backwards reader needs more than one window.
    let f = Fixture::new();
    let mut log = AuditLog::open(&f.log).unwrap();
    for i in 0..40 {
        log.append(Kind::PolicyLoad(PolicyLoad {
            result: LoadResult::Failure,
            error: Some(format!("{i}: {}", "e".repeat(5000))),
            trigger: LoadTrigger::Sighup,
            generation: None,
            policy_sha256: None,
            databases: vec![],
            prefixes_v4: None,
            prefixes_v6: None,
        }))
        .unwrap();
    }
    log.flush().unwrap();
    drop(log);
    let mut text = fs::read_to_string(&f.log).unwrap();
    text.push_str(&"p".repeat(70_000));
    fs::write(&f.log, text).unwrap();
    let log = AuditLog::open(&f.log).expect("reopen");
    assert_eq!(log.last().seq, 41);
    drop(log);
    let s = f.verify().unwrap();
    assert_eq!(s.policy_loads.failed, 40);
    assert_eq!(s.recovered[0].discarded_bytes, 70_000);
}

#[test]
fn checkpoints_count_the_records_since_the_previous_one() {
    let f = Fixture::new();
    let mut log = AuditLog::open(&f.log).unwrap();
    let cp = || {
        Kind::Checkpoint(Checkpoint {
            mode: "enforce".into(),
            policy_sha256: Some("ab".repeat(32)),
            databases: vec![DatabaseRecord {
                path: "/db.mmdb".into(),
                sha256: "cd".repeat(32),
                build_epoch: Some(1),
                database_type: None,
                kind: None,
            }],
            generation: 4,
            records_since_last: 999,
            note: None,
        })
    };
    log.append(stop("a")).unwrap();
    log.append(stop("b")).unwrap();
    log.append(cp()).unwrap();
    log.append(stop("c")).unwrap();
    log.append(cp()).unwrap();
    log.flush().unwrap();
    let counts: Vec<u64> = f
        .lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "checkpoint")
        .map(|v| v["records_since_last"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [2, 1]);
    let s = f.verify().unwrap();
    let c = s.last_checkpoint.unwrap();
    assert_eq!((c.line, c.generation), (5, 4));
    assert_eq!(c.databases, ["cd".repeat(32)]);
}

#[test]
fn the_summary_counts_every_kind() {
    let f = Fixture::new();
    let mut log = AuditLog::open(&f.log).unwrap();
    log.append(Kind::AgentStart(AgentStart {
        version: "0.1.0".into(),
        pid: 1,
        pin_dir: "/sys/fs/bpf/enforcer".into(),
        adopted: true,
        layout_version: 2,
    }))
    .unwrap();
    log.append(event("denied", "US")).unwrap();
    log.append(event("would_deny", "US")).unwrap();
    log.append(event("denied", "CN")).unwrap();
    log.append(Kind::EventsSuppressed(EventsSuppressed {
        rate_limit: 5,
        ring_full: 1,
    }))
    .unwrap();
    log.append(Kind::EventsSuppressed(EventsSuppressed {
        rate_limit: 2,
        ring_full: 0,
    }))
    .unwrap();
    log.append(Kind::PolicyLoad(PolicyLoad {
        result: LoadResult::Failure,
        error: Some("bad db".into()),
        trigger: LoadTrigger::Control,
        generation: None,
        policy_sha256: None,
        databases: vec![],
        prefixes_v4: None,
        prefixes_v6: None,
    }))
    .unwrap();
    log.append(stop("sigterm")).unwrap();
    log.flush().unwrap();
    let s = f.verify().unwrap();
    assert_eq!(
        s.agent,
        AgentSummary {
            starts: 1,
            adopted: 1,
            stops: 1
        }
    );
    assert_eq!(s.events.total, 3);
    assert_eq!(s.events.by_verdict["denied"], 2);
    assert_eq!(s.events.by_verdict["would_deny"], 1);
    assert_eq!(s.events.by_country["US"], 2);
    assert_eq!(
        s.suppressed,
        SuppressedSummary {
            rate_limit: 7,
            ring_full: 1
        }
    );
    assert_eq!(s.policy_loads.failed, 1);
    assert_eq!(s.policy_loads.failures[0].trigger, "control");
    assert_eq!(s.policy_loads.failures[0].line, 7);
    assert_eq!(s.kinds["event"], 3);
    assert_eq!(s.kinds.values().sum::<u64>(), 8);
}

#[test]
fn errors_name_the_file() {
    let e = verify(Path::new("/nonexistent/audit.log"), HeadCheck::None).unwrap_err();
    assert!(e.to_string().starts_with("/nonexistent/audit.log: "), "{e}");
}

#[test]
fn a_record_too_long_is_refused_and_the_chain_is_unchanged() {
    let f = Fixture::new();
    let mut log = AuditLog::open(&f.log).unwrap();
    let e = log.append(stop(&"r".repeat(MAX_LINE))).unwrap_err();
    assert!(
        matches!(
            e,
            AuditError::RecordTooLong {
                kind: "agent_stop",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(log.last().seq, 0);
    log.append_flush(stop("ok")).unwrap();
    drop(log);
    assert_eq!(f.verify().unwrap().records, 1);
}

/// Every line of the file ends with `\n` and is a sealed record.
fn whole_records_only(path: &Path) {
    let text = fs::read(path).expect("read log");
    assert!(
        text.is_empty() || text.ends_with(b"\n"),
        "the file ends inside a line"
    );
    for (n, line) in text.split(|&b| b == b'\n').enumerate() {
        if !line.is_empty() {
            verify::check_record(line).unwrap_or_else(|p| panic!("line {}: {p}", n + 1));
        }
    }
}

#[test]
fn a_failing_disk_leaves_whole_lines_and_a_later_flush_writes_the_rest() {
    let f = Fixture::with_records(2);
    let mut log = AuditLog::open(&f.log).unwrap();
    for i in 0..5 {
        log.append(event("denied", if i % 2 == 0 { "US" } else { "CN" }))
            .unwrap();
    }
    // 150 bytes: the first event line is cut short, then ENOSPC.
    log.fail_after = Some(150);
    assert!(log.flush().is_err());
    whole_records_only(&f.log);
    assert_eq!(f.lines().len(), 2, "the torn line was cut back");
    assert_eq!(
        log.last_error(),
        Some("No space left on device (os error 28)")
    );
    log.fail_after = None;
    log.flush().unwrap();
    whole_records_only(&f.log);
    let s = f.verify().expect("intact");
    assert_eq!(s.records, 7);
    assert_eq!(s.events.total, 5);
    assert_eq!(s.gaps.records, 0);
}

#[test]
fn beyond_the_memory_bound_records_are_dropped_and_a_gap_record_follows() {
    let f = Fixture::with_records(1);
    let mut log = AuditLog::open(&f.log).unwrap();
    log.fail_after = Some(0);
    let mut dropped = 0u64;
    let mut kept = 0u64;
    for _ in 0..20_000 {
        let a = log.append(event("denied", "US")).unwrap();
        if a.dropped {
            dropped += 1;
        } else {
            kept += 1;
        }
        assert!(
            log.buffered() <= MAX_PENDING,
            "the buffer stays under the bound: {}",
            log.buffered()
        );
    }
    assert!(dropped > 0 && kept > 0, "kept {kept}, dropped {dropped}");
    assert_eq!(log.dropped(), dropped);
    assert!(log.flush().is_err(), "still failing");
    // A checkpoint while dropping is dropped too (and stated).
    assert!(log.append(stop("x")).unwrap().dropped);
    log.fail_after = None;
    log.flush().unwrap();
    whole_records_only(&f.log);
    let s = f.verify().expect("intact, the gap chained in");
    assert_eq!(s.gaps.records, 1);
    assert_eq!(s.gaps.dropped, dropped + 1);
    assert_eq!(s.records, 1 + kept + 1, "first record, kept, the gap");
    let g = &s.gaps.entries[0];
    assert_eq!(g.after_seq, 1 + kept);
    assert!(g.error.contains("No space left"), "{g:?}");
    assert!(matches!(s.tail, Tail::Anchored { .. }), "{:?}", s.tail);
    // Appends go on normally after the gap.
    let a = log.append_flush(stop("y")).unwrap();
    assert!(!a.dropped);
    assert_eq!(a.seq, 1 + kept + 2);
}

#[test]
fn a_large_burst_without_faults_is_written_not_dropped() {
    let f = Fixture::new();
    let mut log = AuditLog::open(&f.log).unwrap();
    for _ in 0..20_000 {
        assert!(!log.append(event("denied", "US")).unwrap().dropped);
    }
    log.flush().unwrap();
    assert_eq!(f.verify().expect("intact").records, 20_000);
}

#[test]
fn a_renamed_log_is_continued_in_a_new_file_and_verifies_across_both() {
    let f = Fixture::with_records(3);
    let old = f.log.with_extension("log.1");
    let mut log = AuditLog::open(&f.log).unwrap();
    log.append(stop("a")).unwrap();
    log.flush().unwrap();
    fs::rename(&f.log, &old).unwrap();
    log.append(stop("b")).unwrap();
    // The buffered record goes to the old file, then the path is opened again.
    log.flush().unwrap();
    assert_eq!(log.reopens(), 1);
    log.append_flush(stop("c")).unwrap();
    whole_records_only(&old);
    whole_records_only(&f.log);
    let new_lines = f.lines();
    assert_eq!(new_lines.len(), 2, "{new_lines:?}");
    assert!(new_lines[0].contains(r#""kind":"continued""#));
    assert!(
        new_lines[0].contains(&format!(r#""previous_file":"{}""#, old.display())),
        "{}",
        new_lines[0]
    );
    let s = verify_files(&[old.clone(), f.log.clone()], HeadCheck::Auto).expect("across both");
    assert_eq!(s.records, 7);
    assert_eq!(s.files.len(), 2);
    assert_eq!(s.files[1].first_seq, 6);
    assert!(s.continued[0].checked);
    assert_eq!(s.continued[0].cause, "renamed");
    assert!(
        matches!(s.tail, Tail::Anchored { seq: 7, .. }),
        "{:?}",
        s.tail
    );
    // Alone, the new file verifies but says its link is not checked.
    let alone = f.verify().expect("alone");
    assert!(!alone.continued[0].checked);
    assert!(alone.warnings.iter().any(|w| w.contains("not checked")));
    // Out of order, or with a file that does not continue, it fails.
    assert!(verify_files(&[f.log.clone(), old.clone()], HeadCheck::None).is_err());
    let other = Fixture::with_records(2);
    let e = verify_files(&[other.log.clone(), f.log.clone()], HeadCheck::Auto).unwrap_err();
    assert!(e.to_string().contains("does not follow"), "{e}");
}

#[test]
fn a_deleted_log_is_noticed_by_reopen() {
    let f = Fixture::with_records(2);
    let mut log = AuditLog::open(&f.log).unwrap();
    fs::remove_file(&f.log).unwrap();
    assert!(log.reopen_if_moved().unwrap());
    assert!(!log.reopen_if_moved().unwrap(), "once");
    let lines = f.lines();
    assert!(lines[0].contains(r#""cause":"deleted""#), "{lines:?}");
    assert!(lines[0].contains("(deleted)"), "{lines:?}");
    let s = f.verify().expect("the new file verifies");
    assert!(matches!(s.tail, Tail::Anchored { seq: 3, .. }));
}

#[test]
fn a_log_missing_at_start_continues_from_its_head_instead_of_refusing() {
    let f = Fixture::with_records(4);
    let old = f.log.with_extension("log.1");
    fs::rename(&f.log, &old).unwrap();
    let mut log = AuditLog::open(&f.log).expect("starts on the head");
    assert_eq!(log.last().seq, 5);
    log.append_flush(stop("a")).unwrap();
    let s = verify_files(&[old, f.log.clone()], HeadCheck::Auto).expect("across both");
    assert_eq!(s.records, 6);
    assert_eq!(s.continued[0].cause, "missing_at_start");
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains("missing when the agent started")),
        "{:?}",
        s.warnings
    );
}

#[test]
fn a_log_shorter_than_its_head_but_not_empty_is_still_refused() {
    let f = Fixture::with_records(4);
    let lines = f.lines();
    f.write_lines(&lines[..2]);
    let e = AuditLog::open(&f.log).unwrap_err();
    assert!(matches!(e, AuditError::HeadAhead { .. }), "{e}");
}

/// Signed checkpoints: the writer signs, the verifier checks against a key
/// and against a checkpoint saved earlier.
mod signed {
    use super::*;

    fn signer() -> NoteSigner {
        NoteSigner {
            key: SignerKey::generate("test.example/egress-enforcer").expect("key"),
            origin: "test.example/egress-enforcer".into(),
        }
    }

    fn checkpoint() -> Kind {
        Kind::Checkpoint(Checkpoint {
            mode: "enforce".into(),
            policy_sha256: Some("ab".repeat(32)),
            databases: vec![DatabaseRecord {
                path: "/g.mmdb".into(),
                sha256: "cd".repeat(32),
                build_epoch: None,
                database_type: None,
                kind: None,
            }],
            generation: 1,
            records_since_last: 0,
            note: None,
        })
    }

    /// A log at `path` of `n` records with a checkpoint after every third,
    /// record `changed` (1-based) saying something else; fixed times, so
    /// two logs differ exactly where their records do.
    fn write(path: &Path, signer: &NoteSigner, n: u64, changed: Option<u64>) {
        let mut log = AuditLog::open(path).expect("open");
        log.set_signer(Some(signer.clone()));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for i in 1..=n {
            let t = t0 + Duration::from_secs(i);
            let kind = if i % 3 == 0 {
                checkpoint()
            } else if Some(i) == changed {
                event("would_deny", "US")
            } else {
                event("denied", "RU")
            };
            log.append_at(t, kind).expect("append");
        }
        log.flush().expect("flush");
    }

    fn check(
        key: &VerifierKey,
        cp: Option<(&Path, &str)>,
        reference: &[PathBuf],
    ) -> SignatureCheck {
        SignatureCheck {
            key: key.clone(),
            checkpoint: cp.map(|(p, note)| {
                (
                    SignedCheckpoint::open(note, key).expect("checkpoint verifies"),
                    p.display().to_string(),
                )
            }),
            reference: reference.to_vec(),
        }
    }

    #[test]
    fn checkpoints_carry_notes_over_the_records_before_them() {
        let f = Fixture::new();
        let s = signer();
        write(&f.log, &s, 9, None);
        let key = s.key.verifier();
        let summary = verify_signed(
            std::slice::from_ref(&f.log),
            HeadCheck::Auto,
            Some(&check(&key, None, &[])),
        )
        .expect("verifies");
        assert_eq!(summary.signatures.signed, 3);
        assert_eq!(summary.signatures.verified, 3);
        assert_eq!(summary.signatures.last_signed_seq, Some(9));
        // The file beside the log is the last checkpoint's note: 8 records
        // before it, their head the record's prev.
        let note = fs::read_to_string(checkpoint_path(&f.log)).expect("checkpoint file");
        let cp = SignedCheckpoint::open(&note, &key).expect("signed");
        assert_eq!(cp.body.origin, "test.example/egress-enforcer");
        assert_eq!(cp.body.size, 8);
        let lines = f.lines();
        let eighth: serde_json::Value = serde_json::from_str(&lines[7]).expect("json");
        assert_eq!(cp.body.hash, eighth["hash"].as_str().expect("hash"));
        let ninth: serde_json::Value = serde_json::from_str(&lines[8]).expect("json");
        assert_eq!(ninth["note"].as_str(), Some(note.as_str()));
        assert_eq!(cp.body.extension("mode"), Some("enforce"));
        assert_eq!(cp.body.extension("policy"), Some("ab".repeat(32).as_str()));
        assert_eq!(cp.body.extension("db"), Some("cd".repeat(32).as_str()));
        assert!(cp.body.extension("time").is_some());
        // Without a key the count is still shown, nothing verified.
        let plain = verify(&f.log, HeadCheck::Auto).expect("chain");
        assert_eq!((plain.signatures.signed, plain.signatures.verified), (3, 0));
    }

    #[test]
    fn another_key_fails_naming_the_first_signed_checkpoint() {
        let f = Fixture::new();
        write(&f.log, &signer(), 6, None);
        let other = signer().key.verifier();
        let e = verify_signed(
            std::slice::from_ref(&f.log),
            HeadCheck::Auto,
            Some(&check(&other, None, &[])),
        )
        .expect_err("wrong key");
        assert_eq!(e.seq(), Some(3), "{e}");
        assert!(e.to_string().contains("checkpoint record seq 3"), "{e}");
    }

    #[test]
    fn a_note_moved_to_another_place_in_the_chain_fails() {
        let f = Fixture::new();
        let s = signer();
        write(&f.log, &s, 6, None);
        // Record 3's note, well signed, presented as record 6's: its
        // commitment (2 records, record 2's hash) is not record 6's.
        let lines = f.lines();
        let third: serde_json::Value = serde_json::from_str(&lines[2]).expect("json");
        let note = third["note"].as_str().expect("note").to_owned();
        let sixth: verify::Envelope = serde_json::from_str(&lines[5]).expect("json");
        let mut sigs = SignatureSummary::default();
        let key = s.key.verifier();
        let e = verify::check_note(Some(&note), &sixth, Some(&key), &mut sigs)
            .expect_err("another place");
        assert_eq!(sigs.verified, 0);
        assert!(e.to_string().contains("made for another chain"), "{e}");
    }

    #[test]
    fn a_truncated_log_fails_against_a_saved_checkpoint() {
        let f = Fixture::new();
        let s = signer();
        write(&f.log, &s, 9, None);
        let note = fs::read_to_string(checkpoint_path(&f.log)).expect("saved");
        // Cut the log (and its head, as an attacker would) after record 5.
        let lines = f.lines();
        fs::write(
            &f.log,
            lines[..5]
                .iter()
                .map(|l| format!("{l}\n"))
                .collect::<String>(),
        )
        .expect("cut");
        let key = s.key.verifier();
        let e = verify_signed(
            std::slice::from_ref(&f.log),
            HeadCheck::None,
            Some(&check(
                &key,
                Some((Path::new("saved.checkpoint"), &note)),
                &[],
            )),
        )
        .expect_err("truncated");
        assert_eq!(
            e.to_string(),
            "truncated: the checkpoint saved.checkpoint covers 8 records, the log has 5"
        );
    }

    #[test]
    fn a_consistently_rewritten_and_resigned_log_fails_naming_the_first_change() {
        let dir = tempfile::tempdir().expect("dir");
        let (real, forged) = (dir.path().join("real.log"), dir.path().join("forged.log"));
        let s = signer();
        write(&real, &s, 9, None);
        let saved = fs::read_to_string(checkpoint_path(&real)).expect("saved");
        // Root with the key writes the same history with record 4 changed:
        // every hash and every note is consistent and signed.
        write(&forged, &s, 9, Some(4));
        let key = s.key.verifier();
        verify_signed(
            std::slice::from_ref(&forged),
            HeadCheck::Auto,
            Some(&check(&key, None, &[])),
        )
        .expect("the forgery is internally consistent");
        let cp = Some((Path::new("saved.checkpoint"), saved.as_str()));
        let e = verify_signed(
            std::slice::from_ref(&forged),
            HeadCheck::Auto,
            Some(&check(&key, cp, &[])),
        )
        .expect_err("rewritten");
        assert_eq!(e.kind(), "rewritten");
        assert_eq!(
            e.seq(),
            Some(8),
            "without a reference: the checkpoint's last record"
        );
        let e = verify_signed(
            std::slice::from_ref(&forged),
            HeadCheck::Auto,
            Some(&check(&key, cp, std::slice::from_ref(&real))),
        )
        .expect_err("rewritten");
        assert_eq!(e.seq(), Some(4), "{e}");
        assert!(
            e.to_string()
                .starts_with("rewritten: record seq 4 differs from what the checkpoint saved.checkpoint committed to"),
            "{e}"
        );
        // The real log holds the checkpoint's prefix.
        let ok = verify_signed(
            std::slice::from_ref(&real),
            HeadCheck::Auto,
            Some(&check(&key, cp, &[])),
        )
        .expect("real");
        assert!(ok.signatures.checkpoint.expect("matched").contained);
    }

    #[test]
    fn a_key_on_a_log_without_signed_checkpoints_fails() {
        let f = Fixture::with_records(3);
        let key = signer().key.verifier();
        let e = verify_signed(
            std::slice::from_ref(&f.log),
            HeadCheck::Auto,
            Some(&check(&key, None, &[])),
        )
        .expect_err("unsigned");
        assert_eq!(e.kind(), "unsigned");
    }
}
