//! The tamper-evident audit log: JSON lines, each record chained to the one
//! before it by SHA-256, and its offline verifier.
//!
//! # Format
//!
//! One record per line (`\n`-terminated, UTF-8, no other whitespace
//! between tokens). Every record is a JSON object whose first four fields
//! and last field are the envelope, always in this order:
//!
//! ```text
//! {"seq":3,"time":"2026-11-23T09:40:00.123456Z","prev":"<64 hex>","kind":"mode_change", ...kind's fields... ,"hash":"<64 hex>"}
//! ```
//!
//! - `seq`: 1 for the first record of a log, then +1 per record (line N of
//!   an intact log holds seq N);
//! - `time`: when the record was appended, RFC 3339 UTC with microseconds;
//! - `prev`: the previous record's `hash` (the SHA-256 of that record's
//!   canonical content, so it commits to the whole previous line); 64
//!   zeros for the first record of a log;
//! - `kind`: what the record states (see [`Kind`]); the kind's own fields
//!   follow it, then
//! - `hash`: the record's seal, always the last field.
//!
//! Field names `seq`, `time`, `prev`, `kind` and `hash` are reserved: no
//! kind uses them for its own fields.
//!
//! # The hash rule
//!
//! A line always ends with `,"hash":"` + 64 lowercase hex digits + `"}`
//! (75 bytes). The record's *canonical content* is the line with those 75
//! bytes replaced by the single byte `}`, i.e. exactly the bytes of the
//! record as serialised without its `hash` field (so it covers `seq`,
//! `time`, `prev`, `kind` and every kind field, byte for byte). `hash` is
//! the lowercase hex SHA-256 of the canonical content. Because the rule is
//! on bytes, an auditor needs no JSON canonicalisation; in Python:
//!
//! ```python
//! import hashlib, json
//! prev = "0" * 64
//! for n, line in enumerate(open("audit.log", "rb"), 1):
//!     assert line.endswith(b"\n"), f"line {n}: incomplete"
//!     rec = json.loads(line)
//!     body, suffix = line[:-76], line[-76:-1]
//!     assert suffix == b',"hash":"' + rec["hash"].encode() + b'"}', f"line {n}: hash not last"
//!     assert hashlib.sha256(body + b"}").hexdigest() == rec["hash"], f"line {n}: edited"
//!     assert rec["prev"] == prev, f"line {n}: does not follow line {n - 1}"
//!     assert rec["seq"] == n, f"line {n}: seq {rec['seq']}"
//!     prev = rec["hash"]
//! ```
//!
//! # The head file
//!
//! A chain shows edits, deletions and reorderings inside the log, but not
//! the deletion of its last lines. So after every [`AuditLog::flush`] the
//! writer replaces `<log>.head` (write a temporary file, fsync, rename)
//! with `{"seq":N,"hash":"…","time":"…"}`: the last record made durable.
//! [`verify`] checks the log against it (or against a seq and hash the
//! auditor recorded elsewhere, which also defeats someone who rewrites both
//! the log and its head).
//!
//! # What it proves, and what not
//!
//! An intact chain anchored by a head proves that no record up to the head
//! was edited, deleted, inserted or reordered since it was written, unless
//! the whole chain from that record on and the head were recomputed by
//! someone with write access (the hashes are not keyed): copying the head
//! (or a `checkpoint` record's hash) off the host, e.g. into the central
//! log pipeline, is what turns that case into a detectable one too.
//! With a signing key, checkpoint records carry a signed note over the
//! chain ([`note`]): a note that left the host is checkable with the
//! public key alone ([`verify_signed`]).

pub mod note;
mod record;
pub mod report;
pub mod report_html;
mod shared;
mod verify;
mod writer;

pub use note::{
    CheckpointBody, KeyFileError, NoteError, NoteSigner, SignedCheckpoint, SignerKey, VerifierKey,
    checkpoint_path,
};
pub use record::{
    AgentStart, AgentStop, AuditEvent, Checkpoint, Continued, Coverage, DatabaseRecord,
    EventsSuppressed, Gap, Kind, LoadResult, LoadTrigger, ModeChange, PolicyLoad, Recovered,
    ReloadAccepted, ReloadHeld, Uninstall,
};
pub use shared::SharedAudit;
pub use verify::{
    AgentSummary, Anchor, CheckpointMatch, CheckpointSummary, ContinuedEntry, EventSummary,
    FileSummary, GapEntry, GapSummary, HeadCheck, LIST_CAP, LoadFailure, ModeChangeEntry,
    PolicyLoadSummary, Problem, RecoveredEntry, ReloadGuardEntry, ReloadGuardSummary,
    SignatureCheck, SignatureSummary, Summary, SuppressedSummary, Tail, UninstallEntry,
    VerifyError, first_difference, verify, verify_files, verify_signed,
};
pub use writer::{Appended, AuditError, AuditLog};

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// `prev` of the first record of a log.
pub const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `,"hash":"` + 64 hex + `"}`: the fixed-size end of every line.
const SEAL_LEN: usize = HASH_PREFIX.len() + 64 + 2;
const HASH_PREFIX: &str = ",\"hash\":\"";

/// The longest line the writer produces or the verifier reads: a record is
/// a few hundred bytes; anything near this is not a record, and the bound
/// keeps the verifier's memory independent of its input.
pub const MAX_LINE: usize = 1 << 20;

/// The most bytes of sealed records the writer keeps waiting for a write
/// that fails (a full disk): beyond it, records are dropped (never
/// numbered) and a [`Gap`] record says how many and which kinds, once
/// writing works again. 4 MiB is about 8,000 event records: several
/// seconds of the kernel's default event rate, while bounding what a full
/// disk can cost the agent's memory.
pub const MAX_PENDING: usize = 4 << 20;

/// The head file: the last record made durable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
    pub time: String,
}

/// `<log>.head`.
pub fn head_path(log: &Path) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(".head");
    PathBuf::from(s)
}

/// Lowercase hex SHA-256.
fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The envelope plus a kind, as one line (without `\n`): the canonical
/// content is built first, hashed, then sealed.
fn seal(seq: u64, time: &str, prev: &str, kind_json: &str) -> (String, String) {
    // kind_json is `{"kind":"…",…}`: splice it after the envelope's first
    // fields. time (RFC 3339) and prev (hex) never need JSON escaping.
    let body = kind_json.strip_prefix('{').unwrap_or(kind_json);
    let mut line = format!("{{\"seq\":{seq},\"time\":\"{time}\",\"prev\":\"{prev}\",{body}");
    let hash = sha256_hex(line.as_bytes());
    line.pop(); // the closing brace
    line.push_str(HASH_PREFIX);
    line.push_str(&hash);
    line.push_str("\"}");
    (line, hash)
}

/// The canonical content of a line (without `\n`) and the hash it claims,
/// when the line ends the way every sealed line does.
fn unseal(line: &[u8]) -> Option<(Vec<u8>, &str)> {
    let split = line.len().checked_sub(SEAL_LEN)?;
    let (body, suffix) = line.split_at(split);
    let rest = suffix.strip_prefix(HASH_PREFIX.as_bytes())?;
    let hash = std::str::from_utf8(rest.strip_suffix(b"\"}")?).ok()?;
    if !is_hash(hash) {
        return None;
    }
    let mut canonical = Vec::with_capacity(body.len() + 1);
    canonical.extend_from_slice(body);
    canonical.push(b'}');
    Some((canonical, hash))
}

#[cfg(test)]
mod hash_rule_tests {
    use super::*;

    #[test]
    fn seal_then_unseal_round_trips_and_hashes_the_line_without_its_hash() {
        let (line, hash) = seal(
            1,
            "2026-01-01T00:00:00.000000Z",
            ZERO_HASH,
            r#"{"kind":"agent_stop","reason":"sigterm"}"#,
        );
        let canonical = format!(
            r#"{{"seq":1,"time":"2026-01-01T00:00:00.000000Z","prev":"{ZERO_HASH}","kind":"agent_stop","reason":"sigterm"}}"#
        );
        let open = canonical.strip_suffix('}').expect("an object");
        assert_eq!(line, format!(r#"{open},"hash":"{hash}"}}"#));
        assert_eq!(hash, sha256_hex(canonical.as_bytes()));
        let (c, h) = unseal(line.as_bytes()).expect("sealed");
        assert_eq!(c, canonical.as_bytes());
        assert_eq!(h, hash);
    }

    #[test]
    fn sha256_hex_is_the_standard_digest() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn unseal_refuses_lines_not_ending_in_a_hash() {
        assert!(unseal(b"{}").is_none());
        let (line, _) = seal(1, "t", ZERO_HASH, r#"{"kind":"x"}"#);
        let mut upper = line.clone().into_bytes();
        let n = upper.len();
        upper[n - 3] = b'A'; // not lowercase hex
        assert!(unseal(&upper).is_none());
        assert!(unseal(format!("{line} ").as_bytes()).is_none());
    }

    #[test]
    fn head_path_appends_to_the_file_name() {
        assert_eq!(
            head_path(Path::new("/var/log/enforcer/audit.log")),
            PathBuf::from("/var/log/enforcer/audit.log.head")
        );
    }
}

#[cfg(test)]
mod tests;
