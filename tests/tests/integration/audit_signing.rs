//! Signed audit checkpoints: `enforcer audit keygen`, an agent signing its
//! checkpoints, an independent Python check of the signature bytes, and
//! `audit verify --key --checkpoint` catching a truncated log and a log
//! rewritten and re-hashed (and re-signed) as a root attacker on the host
//! would.

use std::{
    fs,
    net::IpAddr,
    path::Path,
    process::Command,
    time::{Duration, SystemTime},
};

use enforcer::audit::{self, AuditLog, Kind, NoteSigner, SignerKey, VerifierKey};
use enforcer_tests::{
    agent::{enforcer, enforcer_at},
    privileged,
    probe::{Proto, attempt},
    scenario::*,
    skip_unless,
    tamper::{assert_truncation_caught, keygen, rewrite_and_rehash, text, verify},
};

/// The independent check: Python's `cryptography` (OpenSSL's Ed25519)
/// verifies the note's signature bytes, parsing the key and the note
/// itself, and the note's count and hash against the log's records.
const PYTHON_CHECK: &str = r#"
import base64, hashlib, json, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
pub_text, note, log = open(sys.argv[1]).read().strip(), open(sys.argv[2], encoding="utf-8").read(), sys.argv[3]
name, keyhash, key = pub_text.split("+", 2)
key = base64.b64decode(key)
assert key[0] == 1 and len(key) == 33, "not an Ed25519 verifier key"
assert hashlib.sha256(name.encode() + b"\n" + key).digest()[:4].hex() == keyhash, "key hash"
text, sigs = note[: note.rindex("\n\n") + 1], note[note.rindex("\n\n") + 2 :]
line = sigs.splitlines()[0]
assert line.startswith("\u2014 "), "em dash"
sig_name, blob = line[2:].split(" ")
assert sig_name == name, "signer name"
blob = base64.b64decode(blob)
assert blob[:4].hex() == keyhash, "signature key hash"
Ed25519PublicKey.from_public_bytes(key[1:]).verify(blob[4:], text.encode("utf-8"))
origin, count, root = text.splitlines()[:3]
count = int(count)
records = [json.loads(l) for l in open(log, encoding="utf-8")]
covered = [r for r in records if r["seq"] == count]
assert covered, f"no record {count}"
assert base64.b64decode(root).hex() == covered[0]["hash"], "chain head"
print(f"python: {origin} {count} records, head {covered[0]['hash'][:12]}: signature OK")
"#;

fn python_check(public: &Path, note: &Path, log: &Path) {
    let out = Command::new("python3")
        .args(["-c", PYTHON_CHECK])
        .args([public, note, log])
        .output()
        .expect("python3 (Debian: python3 and python3-cryptography)");
    assert!(
        out.status.success(),
        "the independent Python Ed25519 check (needs python3-cryptography) failed: {}",
        text(&out)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
}

#[test]
fn python_verifies_the_signature_bytes_of_a_checkpoint_note() {
    let dir = tempfile::tempdir().expect("dir");
    let (private, public) = keygen(dir.path(), "python.example/egress-enforcer");
    // The key files as keygen leaves them.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = fs::metadata(&private).expect("key").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let again = enforcer(&[
        "audit",
        "keygen",
        "--name",
        "x",
        "--out",
        &dir.path().display().to_string(),
    ]);
    assert!(!again.status.success(), "keygen never overwrites a key");
    assert!(text(&again).contains("audit.pub"), "{}", text(&again));

    // A log written through the library with that key.
    let log_path = dir.path().join("audit.jsonl");
    let mut log = AuditLog::open(&log_path).expect("open");
    log.set_signer(Some(NoteSigner {
        key: SignerKey::load(&private).expect("load key"),
        origin: "python.example/egress-enforcer".into(),
    }));
    for i in 0..5 {
        log.append(Kind::AgentStop(audit::AgentStop {
            reason: format!("record {i}"),
        }))
        .expect("append");
    }
    log.append(Kind::Checkpoint(audit::Checkpoint {
        mode: "enforce".into(),
        policy_sha256: None,
        databases: vec![],
        generation: 1,
        records_since_last: 0,
        note: None,
    }))
    .expect("checkpoint");
    log.flush().expect("flush");
    drop(log);
    let note = audit::checkpoint_path(&log_path);
    python_check(&public, &note, &log_path);
    let out = verify(&[
        "--key",
        &public.display().to_string(),
        &log_path.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("checkpoints signed 1, verified 1"),
        "{}",
        text(&out)
    );
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).expect("a JSON record")
}

#[test]
fn the_agent_signs_checkpoints_and_an_earlier_one_catches_truncation_and_rewrites() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let keys = s.dir.path().join("keys");
    fs::create_dir(&keys).expect("keys dir");
    let origin = format!("{}.test/egress-enforcer", s.sb.id);
    let (private, public) = keygen(&keys, &origin);
    let config = s.config_with("enforce", "allow", &[], "", "").replace(
        "[audit]\n",
        &format!(
            "[audit]\ncheckpoint_interval = \"1s\"\nsigning_key = {:?}\norigin = {origin:?}\n",
            private.display().to_string()
        ),
    );
    let mut agent = s.start(&config);
    let log = s.audit_log();
    let note_file = audit::checkpoint_path(&log);
    assert!(note_file.exists(), "a checkpoint right after the start");
    let denied = IpAddr::V4(DENIED_V4);
    assert!(attempt(&s.sb, Proto::Tcp, denied).refused());
    assert!(attempt(&s.sb, Proto::Tcp, denied).refused());
    agent.wait_for_metrics("two events", Duration::from_secs(30), |m| {
        m.sum("enforcer_events_total", &[]) == 2.0
    });
    // A periodic checkpoint after the events; then the collector's copies:
    // the latest signed checkpoint, and the log.
    let shipped = s.dir.path().join("collector.checkpoint");
    let reference = s.dir.path().join("collector.jsonl");
    let deadline = SystemTime::now() + Duration::from_secs(20);
    let covers = loop {
        let note = fs::read_to_string(&note_file).expect("checkpoint file");
        let covers: u64 = note
            .lines()
            .nth(1)
            .and_then(|l| l.parse().ok())
            .expect("count");
        let events_before = fs::read_to_string(&log)
            .expect("log")
            .lines()
            .filter(|l| json(l)["kind"] == "event" && json(l)["seq"].as_u64() < Some(covers))
            .count();
        if events_before == 2 {
            fs::write(&shipped, &note).expect("ship the checkpoint");
            break covers;
        }
        assert!(
            SystemTime::now() < deadline,
            "no checkpoint after the events"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    fs::copy(&log, &reference).expect("ship the log");
    // A key group members could read fails the reload, naming the file;
    // the policy and the key in force stay.
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(&private, fs::Permissions::from_mode(0o640)).expect("chmod");
    let out = enforcer_at(&s.control_socket(), &["reload"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&private.display().to_string()) && text(&out).contains("0640"),
        "{}",
        text(&out)
    );
    fs::set_permissions(&private, fs::Permissions::from_mode(0o600)).expect("chmod");
    assert!(
        enforcer_at(&s.control_socket(), &["reload"])
            .status
            .success()
    );
    assert!(agent.stop().success(), "{}", agent.log());

    let pubkey = public.display().to_string();
    let log_arg = log.display().to_string();
    let shipped_arg = shipped.display().to_string();
    // The agent's own notes: Python checks the final one's bytes.
    python_check(&public, &note_file, &log);
    let out = verify(&["--key", &pubkey, "-o", "json", &log_arg]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let signed = v["signatures"]["signed"].as_u64().expect("signed");
    assert!(signed >= 3, "after the start, periodic, at the stop: {v:#}");
    assert_eq!(v["signatures"]["verified"], signed, "{v:#}");
    assert_eq!(v["signatures"]["unsigned"], 0, "{v:#}");
    assert_eq!(v["signatures"]["origins"][0], origin.as_str(), "{v:#}");
    eprintln!(
        "agent log: {} records, checkpoints signed {signed}, verified {}; shipped checkpoint covers {covers}",
        v["records"], v["signatures"]["verified"]
    );
    let out = verify(&["--key", &pubkey, "--checkpoint", &shipped_arg, &log_arg]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("verified {signed}")),
        "{}",
        text(&out)
    );
    // The public key given as text works the same.
    let pub_text = fs::read_to_string(&public).expect("pub");
    let out = verify(&["--key", pub_text.trim(), &log_arg]);
    assert!(out.status.success(), "{}", text(&out));
    // Another key: fails naming the first signed checkpoint.
    let other = s.dir.path().join("other");
    fs::create_dir(&other).expect("dir");
    let (_, other_pub) = keygen(&other, &origin);
    let out = verify(&["--key", &other_pub.display().to_string(), &log_arg]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("checkpoint record seq 3"),
        "{}",
        text(&out)
    );

    // Truncated (log and head cut back consistently): fails against the
    // shipped checkpoint.
    let out = assert_truncation_caught(
        &log,
        &s.dir.path().join("cut.jsonl"),
        covers - 2,
        covers,
        &pubkey,
        &shipped_arg,
    );
    eprintln!("cut log: {}", out.trim());

    // Rewritten: the first event's country changed, the chain re-hashed
    // and every note re-signed. Consistent on its own; not against the
    // shipped checkpoint.
    let first_event = fs::read_to_string(&log)
        .expect("log")
        .lines()
        .map(json)
        .find(|r| r["kind"] == "event")
        .and_then(|r| r["seq"].as_u64())
        .expect("an event record");
    let key = SignerKey::load(&private).expect("root reads the key");
    rewrite_and_rehash(
        &log,
        first_event as usize,
        &format!("\"country\":\"{DENIED_COUNTRY}\""),
        "\"country\":\"DE\"",
        &key,
    );
    let out = verify(&["--key", &pubkey, &log_arg]);
    assert!(
        out.status.success(),
        "the forgery is consistent: {}",
        text(&out)
    );
    let out = verify(&["--key", &pubkey, "--checkpoint", &shipped_arg, &log_arg]);
    assert!(!out.status.success());
    eprintln!("rewritten, no reference: {}", text(&out).trim());
    assert!(
        text(&out).contains(&format!("rewritten: record seq {covers} differs")),
        "without the collector's copy: where it shows: {}",
        text(&out)
    );
    let out = verify(&[
        "--key",
        &pubkey,
        "--checkpoint",
        &shipped_arg,
        "--reference",
        &reference.display().to_string(),
        "-o",
        "json",
        &log_arg,
    ]);
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json error");
    assert_eq!(v["problem"], "rewritten", "{v:#}");
    eprintln!("rewritten, with --reference: {v}");
    assert_eq!(v["seq"], first_event, "the first differing record: {v:#}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with(&format!("rewritten: record seq {first_event} differs")),
        "{v:#}"
    );
    let _ = VerifierKey::parse(pub_text.trim()).expect("the public key parses");
}
