//! The offline verifier: streams through a log (memory independent of its
//! size), checks every record's seal and its link to the record before,
//! checks the end against a head, and summarises what the log states.
//!
//! Checks per line, in this order (the first failure is reported with its
//! 1-based line number): the line is complete (`\n`-terminated) and at most
//! [`MAX_LINE`] bytes; it is a JSON object with `seq` (integer), `time`,
//! `prev` and `hash` (64 lowercase hex) and `kind` (strings); it ends with
//! its hash; the hash matches the content (else: the line was edited);
//! `prev` is the previous line's hash, or 64 zeros on line 1 (else: a line
//! was deleted or lines reordered here, or the line before was rewritten);
//! `seq` is the previous seq + 1, starting at 1; `time` is RFC 3339 UTC;
//! the fields of a known kind parse. After the last line, with a head: the
//! log reaches the head's seq (else: lines missing at the end), and the
//! record at that seq has the head's hash.
//!
//! Time going backwards is a warning, not a failure: wall clocks step
//! (NTP, a wrong RTC at boot), and `seq`/`prev` already fix the order.

use std::{
    collections::BTreeMap,
    fmt,
    fs::File,
    io::{self, BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::{Deserialize, Serialize};

use super::{
    Head, Kind, LoadResult, MAX_LINE, ZERO_HASH, head_path, is_hash,
    note::{SignedCheckpoint, VerifierKey},
    record::KNOWN_KINDS,
    sha256_hex, unseal,
};

/// What to check the end of the log against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeadCheck {
    /// `<log>.head` when it exists; without it the tail is reported as
    /// unanchored.
    Auto,
    /// This head file, which must exist.
    File(PathBuf),
    /// A seq and hash recorded elsewhere (e.g. copied off the host).
    Expect { seq: u64, hash: String },
    /// No head: the tail is reported as unanchored.
    None,
}

/// The head a log was checked against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Anchor {
    /// The head file, or `--expect-seq/--expect-hash`.
    pub source: String,
    pub seq: u64,
    pub hash: String,
}

/// What is wrong with a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Not JSON, or not an object with the envelope's fields.
    Invalid(String),
    /// The line does not end with `,"hash":"<64 hex>"}`.
    Unsealed,
    /// The content does not hash to the stored hash: the line was edited.
    HashMismatch { stored: String, computed: String },
    /// Line 1's prev is not 64 zeros: what came before was removed.
    NotFirst { prev: String },
    /// The prev is not the hash of the line before (`before`).
    PrevMismatch {
        before: u64,
        expected: String,
        found: String,
    },
    /// seq is not the previous seq + 1.
    Seq { expected: u64, found: u64 },
    /// `time` is not RFC 3339 UTC.
    Time(String),
    /// A known kind whose fields do not parse.
    Fields { kind: String, error: String },
    /// The last line has no newline: a write was cut off.
    Partial { bytes: u64 },
    /// A line longer than [`MAX_LINE`].
    TooLong,
    /// The log ends before the head's seq: lines `first..=last` missing.
    Missing {
        first: u64,
        last: u64,
        source: String,
    },
    /// The record at the head's seq has another hash.
    HeadHash {
        hash: String,
        head_hash: String,
        source: String,
    },
    /// A checkpoint record's signed note does not verify against the key,
    /// or does not commit to the records before it.
    Signature { seq: u64, error: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Invalid(m) => write!(f, "{m}"),
            Problem::Unsealed => write!(
                f,
                "the line does not end with its hash (`,\"hash\":\"<64 hex>\"}}`): not a sealed record"
            ),
            Problem::HashMismatch { stored, computed } => write!(
                f,
                "hash mismatch: the record hashes to {computed} but says {stored}: the line was edited"
            ),
            Problem::NotFirst { prev } => write!(
                f,
                "the first line's prev is {prev}, not 64 zeros: the records before it are missing"
            ),
            Problem::PrevMismatch {
                before,
                expected,
                found,
            } => write!(
                f,
                "the record does not follow line {before}: its prev is {found}, line {before}'s hash is {expected} \
                 (a line was deleted here, lines were reordered, or line {before} was rewritten)"
            ),
            Problem::Seq { expected, found } => {
                write!(f, "seq {found} where {expected} was expected")
            }
            Problem::Time(t) => write!(f, "time {t:?} is not RFC 3339 UTC"),
            Problem::Fields { kind, error } => write!(f, "{kind} record: {error}"),
            Problem::Partial { bytes } => write!(
                f,
                "incomplete last line ({bytes} bytes without a newline): a write was cut off"
            ),
            Problem::TooLong => {
                write!(f, "line longer than {MAX_LINE} bytes: not an audit record")
            }
            Problem::Missing {
                first,
                last,
                source,
            } => {
                let what = if first == last {
                    format!("line {first} missing")
                } else {
                    format!("lines {first}-{last} missing")
                };
                write!(
                    f,
                    "{what}: the head ({source}) records {last} records, the log ends after line {}",
                    first - 1
                )
            }
            Problem::HeadHash {
                hash,
                head_hash,
                source,
            } => write!(
                f,
                "hash {hash} differs from the head's {head_hash} ({source}): the log was rewritten up to here"
            ),
            Problem::Signature { seq, error } => {
                write!(f, "checkpoint record seq {seq}: {error}")
            }
        }
    }
}

/// Why a log does not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    // `error`, not `source`: the message already carries it, and a source
    // would print it twice in an anyhow chain.
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    /// A head file (or an expected seq/hash) that cannot be used.
    #[error("{source_name}: {problem}")]
    Head {
        source_name: String,
        problem: String,
    },
    /// The first broken line.
    #[error("{}:{line}: {problem}", path.display())]
    Broken {
        path: PathBuf,
        line: u64,
        problem: Problem,
    },
    /// The log has fewer records than a signed checkpoint obtained earlier
    /// covers.
    #[error("truncated: the checkpoint {source_name} covers {covers} records, the log has {has}")]
    Truncated {
        source_name: String,
        covers: u64,
        has: u64,
    },
    /// The log differs from what a signed checkpoint obtained earlier
    /// committed to. `seq` is the first differing record when a reference
    /// copy told it, else the checkpoint's last record (where the mismatch
    /// is detected).
    #[error(
        "rewritten: record seq {seq} differs from what the checkpoint {source_name} committed to{}",
        match (by_reference, covers) {
            (true, _) => " (the first record that differs from the reference copy)".to_owned(),
            (false, c) => format!(
                " (its last record, seq {c}, has hash {log_hash}, the checkpoint says {checkpoint_hash}; \
                 the first differing record is at or before it: --reference with the collector's copy names it)"
            ),
        }
    )]
    Rewritten {
        source_name: String,
        seq: u64,
        by_reference: bool,
        covers: u64,
        log_hash: String,
        checkpoint_hash: String,
    },
    /// No checkpoint in the log is signed, though a key was given.
    #[error("{file}: no checkpoint record is signed: nothing in the log is signed by key {key}")]
    Unsigned { file: String, key: String },
}

impl VerifyError {
    /// The line a `Broken` error names.
    pub fn line(&self) -> Option<u64> {
        match self {
            VerifyError::Broken { line, .. } => Some(*line),
            _ => None,
        }
    }

    /// The record the error names, when it names one.
    pub fn seq(&self) -> Option<u64> {
        match self {
            VerifyError::Broken {
                problem: Problem::Signature { seq, .. },
                ..
            } => Some(*seq),
            VerifyError::Rewritten { seq, .. } => Some(*seq),
            VerifyError::Truncated { has, .. } => Some(has + 1),
            _ => None,
        }
    }

    /// A short name of what failed, for `-o json`.
    pub fn kind(&self) -> &'static str {
        match self {
            VerifyError::Io { .. } => "io",
            VerifyError::Head { .. } => "head",
            VerifyError::Broken {
                problem: Problem::Signature { .. },
                ..
            } => "signature",
            VerifyError::Broken { .. } => "broken",
            VerifyError::Truncated { .. } => "truncated",
            VerifyError::Rewritten { .. } => "rewritten",
            VerifyError::Unsigned { .. } => "unsigned",
        }
    }
}

/// What to check signatures against: the auditor's copy of the public key,
/// and optionally a signed checkpoint obtained earlier (from the
/// collector) with, to name the first differing record, the collector's
/// copy of the log.
#[derive(Clone, Debug)]
pub struct SignatureCheck {
    pub key: VerifierKey,
    /// The checkpoint (already verified against `key`) and where it came
    /// from.
    pub checkpoint: Option<(SignedCheckpoint, String)>,
    /// The reference copy's files, in order.
    pub reference: Vec<PathBuf>,
}

/// How the log stands against a signed checkpoint obtained earlier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckpointMatch {
    pub source: String,
    pub origin: String,
    /// Records the checkpoint covers.
    pub covers: u64,
    pub hash: String,
    /// Its `time` extension line, when it has one.
    pub time: Option<String>,
    /// The log holds that prefix unchanged.
    pub contained: bool,
}

/// The checkpoints' signatures.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SignatureSummary {
    /// The verifier key (`name+hash`), when one was given.
    pub key: Option<String>,
    /// Checkpoint records carrying a signed note.
    pub signed: u64,
    /// Of those, verified against the key (all, when the log verifies).
    pub verified: u64,
    /// Checkpoint records without a note.
    pub unsigned: u64,
    /// The origins the notes name (the first few).
    pub origins: Vec<String>,
    /// The last signed checkpoint record's seq.
    pub last_signed_seq: Option<u64>,
    pub checkpoint: Option<CheckpointMatch>,
}

/// Whether the end of the log is anchored.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Tail {
    /// The log ends exactly at the head.
    Anchored { source: String, seq: u64 },
    /// The head matches an earlier record; the records after it were
    /// chained but the head was not updated after them (a crash between
    /// writing and updating the head, or an older copy of the head).
    PartlyAnchored {
        source: String,
        seq: u64,
        unanchored_records: u64,
    },
    /// No head: deleting the last lines could not be detected.
    Unanchored { reason: String },
}

impl fmt::Display for Tail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tail::Anchored { source, seq } => write!(f, "anchored by {source} (seq {seq})"),
            Tail::PartlyAnchored {
                source,
                seq,
                unanchored_records,
            } => write!(
                f,
                "anchored by {source} up to seq {seq}; the {unanchored_records} records after it are not anchored"
            ),
            Tail::Unanchored { reason } => write!(
                f,
                "NOT anchored ({reason}): deleting the last lines of the log cannot be detected"
            ),
        }
    }
}

/// One mode change, as the timeline shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModeChangeEntry {
    pub line: u64,
    pub time: String,
    pub from: String,
    pub to: String,
    pub cgroup: Option<String>,
    pub uid: u32,
    pub gid: Option<u32>,
    pub reason: String,
}

/// An `enforcer uninstall`: enforcement turned off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UninstallEntry {
    pub line: u64,
    pub time: String,
    pub uid: u32,
    pub gid: u32,
    pub pin_dir: String,
    pub reason: String,
}

/// A failed policy load.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LoadFailure {
    pub line: u64,
    pub time: String,
    pub trigger: String,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PolicyLoadSummary {
    pub ok: u64,
    pub failed: u64,
    /// The first [`LIST_CAP`] failures.
    pub failures: Vec<LoadFailure>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AgentSummary {
    pub starts: u64,
    /// Starts that adopted a pinned datapath.
    pub adopted: u64,
    pub stops: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EventSummary {
    pub total: u64,
    pub by_verdict: BTreeMap<String, u64>,
    pub by_country: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SuppressedSummary {
    pub rate_limit: u64,
    pub ring_full: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckpointSummary {
    pub line: u64,
    pub time: String,
    pub mode: String,
    pub generation: u64,
    pub policy_sha256: Option<String>,
    /// The databases' SHA-256.
    pub databases: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecoveredEntry {
    pub line: u64,
    pub time: String,
    pub discarded_bytes: u64,
    pub discarded_sha256: String,
}

/// A `reload_held` or `reload_accepted` record: the reload guard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReloadGuardEntry {
    pub line: u64,
    pub time: String,
    /// `held` or `accepted`.
    pub event: String,
    /// Who accepted (absent for a hold of an automatic reload).
    pub uid: Option<u32>,
    /// Addresses flipped (IPv4 as a number, IPv6 as a decimal string).
    pub ipv4_flipped: u64,
    pub ipv6_flipped: String,
    /// The SHA-256 of the data held or applied.
    pub databases: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReloadGuardSummary {
    pub held: u64,
    pub accepted: u64,
    /// The first [`LIST_CAP`].
    pub entries: Vec<ReloadGuardEntry>,
}

/// One file of a chain verified across several files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileSummary {
    pub file: String,
    pub records: u64,
    /// Its first and last record's seq (0 for an empty file).
    pub first_seq: u64,
    pub last_seq: u64,
}

/// A `gap` record: records the writer dropped (the disk was full beyond
/// its memory bound).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GapEntry {
    pub file: String,
    pub line: u64,
    pub time: String,
    pub dropped: u64,
    pub after_seq: u64,
    pub error: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GapSummary {
    /// `gap` records.
    pub records: u64,
    /// Records they say were dropped, in all.
    pub dropped: u64,
    /// The first [`LIST_CAP`].
    pub entries: Vec<GapEntry>,
}

/// A `continued` record: a file that continues the chain of another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContinuedEntry {
    pub file: String,
    pub line: u64,
    pub time: String,
    pub previous_file: Option<String>,
    pub previous_seq: u64,
    pub cause: String,
    /// The link was checked against the previous file's last record (it
    /// was verified before this one); false for the first file verified.
    pub checked: bool,
}

/// What an intact log states.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// The file, or the files in order joined by ` + `.
    pub file: String,
    /// Each file verified, in order.
    pub files: Vec<FileSummary>,
    pub records: u64,
    pub first_time: Option<String>,
    pub last_time: Option<String>,
    /// last_time - first_time (negative if the clock stepped back).
    pub span_seconds: Option<f64>,
    /// The last record's hash (64 zeros for an empty log): what to record
    /// elsewhere to anchor this log later (`--expect-seq/--expect-hash`).
    pub last_hash: String,
    pub tail: Tail,
    /// Records per kind, unknown kinds included.
    pub kinds: BTreeMap<String, u64>,
    pub agent: AgentSummary,
    /// The first [`LIST_CAP`] mode changes.
    pub mode_timeline: Vec<ModeChangeEntry>,
    pub mode_changes: u64,
    pub policy_loads: PolicyLoadSummary,
    pub events: EventSummary,
    pub suppressed: SuppressedSummary,
    pub last_checkpoint: Option<CheckpointSummary>,
    pub recovered: Vec<RecoveredEntry>,
    /// Every `enforcer uninstall` (up to [`LIST_CAP`]).
    pub uninstalls: Vec<UninstallEntry>,
    /// Coverage records by event (`repaired`, `waiting`, `failed`).
    pub coverage: BTreeMap<String, u64>,
    /// `gap` records: records dropped while the log could not be written.
    pub gaps: GapSummary,
    /// `continued` records: where the chain goes from one file to the next.
    pub continued: Vec<ContinuedEntry>,
    /// `reload_held` and `reload_accepted` records.
    pub reload_guard: ReloadGuardSummary,
    /// Records whose time is earlier than the record before.
    pub time_backwards: u64,
    /// Signed checkpoints: how many, and what was checked.
    pub signatures: SignatureSummary,
    /// Things an auditor should know that do not break the chain (the first
    /// [`LIST_CAP`]).
    pub warnings: Vec<String>,
    pub warnings_omitted: u64,
}

/// Lists in the summary stop growing here, so memory stays bounded.
pub const LIST_CAP: usize = 10_000;

impl Summary {
    fn new(file: &Path) -> Self {
        Summary {
            file: file.display().to_string(),
            files: Vec::new(),
            records: 0,
            first_time: None,
            last_time: None,
            span_seconds: None,
            last_hash: ZERO_HASH.to_owned(),
            tail: Tail::Unanchored {
                reason: String::new(),
            },
            kinds: BTreeMap::new(),
            agent: AgentSummary::default(),
            mode_timeline: Vec::new(),
            mode_changes: 0,
            policy_loads: PolicyLoadSummary::default(),
            events: EventSummary::default(),
            suppressed: SuppressedSummary::default(),
            last_checkpoint: None,
            recovered: Vec::new(),
            uninstalls: Vec::new(),
            coverage: BTreeMap::new(),
            gaps: GapSummary::default(),
            continued: Vec::new(),
            reload_guard: ReloadGuardSummary::default(),
            time_backwards: 0,
            signatures: SignatureSummary::default(),
            warnings: Vec::new(),
            warnings_omitted: 0,
        }
    }

    fn reload_guard_entry(&mut self, e: ReloadGuardEntry) {
        if self.reload_guard.entries.len() < LIST_CAP {
            self.reload_guard.entries.push(e);
        }
    }

    fn warn(&mut self, w: String) {
        if self.warnings.len() < LIST_CAP {
            self.warnings.push(w);
        } else {
            self.warnings_omitted += 1;
        }
    }

    fn add(&mut self, file: &Path, line: u64, env: &Envelope, kind: Option<Kind>) {
        self.records += 1;
        *self.kinds.entry(env.kind.clone()).or_default() += 1;
        let time = &env.time;
        match kind {
            None => {
                if self.kinds[&env.kind] == 1 {
                    self.warn(format!(
                        "line {line}: unknown kind {:?} (a newer agent?): chained and sealed, its fields not read",
                        env.kind
                    ));
                }
            }
            Some(Kind::AgentStart(s)) => {
                self.agent.starts += 1;
                self.agent.adopted += u64::from(s.adopted);
            }
            Some(Kind::AgentStop(_)) => self.agent.stops += 1,
            Some(Kind::ModeChange(m)) => {
                self.mode_changes += 1;
                if self.mode_timeline.len() < LIST_CAP {
                    self.mode_timeline.push(ModeChangeEntry {
                        line,
                        time: time.clone(),
                        from: m.from,
                        to: m.to,
                        cgroup: m.cgroup,
                        uid: m.uid,
                        gid: m.gid,
                        reason: m.reason,
                    });
                }
            }
            Some(Kind::PolicyLoad(p)) => match p.result {
                LoadResult::Ok => self.policy_loads.ok += 1,
                LoadResult::Failure => {
                    self.policy_loads.failed += 1;
                    if self.policy_loads.failures.len() < LIST_CAP {
                        self.policy_loads.failures.push(LoadFailure {
                            line,
                            time: time.clone(),
                            trigger: p.trigger.label().to_owned(),
                            error: p.error,
                        });
                    }
                }
            },
            Some(Kind::Event(e)) => {
                self.events.total += 1;
                *self.events.by_verdict.entry(e.verdict).or_default() += 1;
                // Countries are ISO codes (at most 26*26 + unknown): bounded.
                if self.events.by_country.len() < 1024
                    || self.events.by_country.contains_key(&e.country)
                {
                    *self.events.by_country.entry(e.country).or_default() += 1;
                }
            }
            Some(Kind::EventsSuppressed(s)) => {
                self.suppressed.rate_limit =
                    self.suppressed.rate_limit.saturating_add(s.rate_limit);
                self.suppressed.ring_full = self.suppressed.ring_full.saturating_add(s.ring_full);
            }
            Some(Kind::Checkpoint(c)) => {
                self.last_checkpoint = Some(CheckpointSummary {
                    line,
                    time: time.clone(),
                    mode: c.mode,
                    generation: c.generation,
                    policy_sha256: c.policy_sha256,
                    databases: c.databases.into_iter().map(|d| d.sha256).collect(),
                })
            }
            Some(Kind::Coverage(c)) => {
                if c.event != "repaired" {
                    self.warn(format!(
                        "line {line}: scope {:?} was not covered ({}: {}){}",
                        c.scope,
                        c.event,
                        c.cause,
                        c.error.map(|e| format!(": {e}")).unwrap_or_default()
                    ));
                }
                if self.coverage.len() < LIST_CAP || self.coverage.contains_key(&c.event) {
                    *self.coverage.entry(c.event).or_default() += 1;
                }
            }
            Some(Kind::Uninstall(u)) => {
                self.warn(format!(
                    "line {line}: enforcement was uninstalled (uid {}, pin dir {}): {:?}",
                    u.uid, u.pin_dir, u.reason
                ));
                if self.uninstalls.len() < LIST_CAP {
                    self.uninstalls.push(UninstallEntry {
                        line,
                        time: time.clone(),
                        uid: u.uid,
                        gid: u.gid,
                        pin_dir: u.pin_dir,
                        reason: u.reason,
                    });
                }
            }
            Some(Kind::Gap(g)) => {
                self.warn(format!(
                    "{}: {} records after seq {} were dropped ({}): they could not be written and the writer's memory bound was reached",
                    if self.files.is_empty() && !self.file.contains(" + ") {
                        format!("line {line}")
                    } else {
                        format!("{}:{line}", file.display())
                    },
                    g.dropped,
                    g.after_seq,
                    g.error
                ));
                self.gaps.records += 1;
                self.gaps.dropped = self.gaps.dropped.saturating_add(g.dropped);
                if self.gaps.entries.len() < LIST_CAP {
                    self.gaps.entries.push(GapEntry {
                        file: file.display().to_string(),
                        line,
                        time: time.clone(),
                        dropped: g.dropped,
                        after_seq: g.after_seq,
                        error: g.error,
                    });
                }
            }
            // Listed by `verify`, which knows whether the link was checked.
            Some(Kind::Continued(_)) => {}
            Some(Kind::ReloadHeld(h)) => {
                self.reload_guard.held += 1;
                self.reload_guard_entry(ReloadGuardEntry {
                    line,
                    time: time.clone(),
                    event: "held".into(),
                    uid: h.uid,
                    ipv4_flipped: h.flip.ipv4.flipped,
                    ipv6_flipped: h.flip.ipv6.flipped,
                    databases: h.databases_held.into_iter().map(|d| d.sha256).collect(),
                });
            }
            Some(Kind::ReloadAccepted(a)) => {
                self.reload_guard.accepted += 1;
                self.reload_guard_entry(ReloadGuardEntry {
                    line,
                    time: time.clone(),
                    event: "accepted".into(),
                    uid: Some(a.uid),
                    ipv4_flipped: a.flip.ipv4.flipped,
                    ipv6_flipped: a.flip.ipv6.flipped,
                    databases: a.databases_applied.into_iter().map(|d| d.sha256).collect(),
                });
            }
            Some(Kind::Recovered(r)) => {
                self.warn(format!(
                    "line {line}: the writer cut off an incomplete line of {} bytes (sha256 {}) before this record",
                    r.discarded_bytes, r.discarded_sha256
                ));
                if self.recovered.len() < LIST_CAP {
                    self.recovered.push(RecoveredEntry {
                        line,
                        time: time.clone(),
                        discarded_bytes: r.discarded_bytes,
                        discarded_sha256: r.discarded_sha256,
                    });
                }
            }
        }
    }
}

/// The fields every record has.
#[derive(Debug, Deserialize)]
pub(super) struct Envelope {
    pub seq: u64,
    pub time: String,
    pub prev: String,
    pub kind: String,
    pub hash: String,
}

/// A serde_json error's message without its "at line 1 column N" (the
/// line is ours to name).
fn json_message(e: &serde_json::Error) -> String {
    let mut msg = e.to_string();
    if let Some(i) = msg.rfind(" at line ") {
        msg.truncate(i);
    }
    msg
}

fn json_problem(e: &serde_json::Error) -> Problem {
    let msg = json_message(e);
    match e.classify() {
        serde_json::error::Category::Data => {
            Problem::Invalid(format!("not an audit record: {msg}"))
        }
        _ => Problem::Invalid(format!("not valid JSON (column {}): {msg}", e.column())),
    }
}

/// Checks one line (without its `\n`) on its own: the envelope parses, the
/// line ends with its hash and the hash matches the content.
pub(super) fn check_record(line: &[u8]) -> Result<Envelope, Problem> {
    let env: Envelope = serde_json::from_slice(line).map_err(|e| json_problem(&e))?;
    if !is_hash(&env.hash) {
        return Err(Problem::Invalid(format!(
            "hash {:?} is not 64 lowercase hex digits",
            env.hash
        )));
    }
    if !is_hash(&env.prev) {
        return Err(Problem::Invalid(format!(
            "prev {:?} is not 64 lowercase hex digits",
            env.prev
        )));
    }
    let (canonical, sealed) = unseal(line).ok_or(Problem::Unsealed)?;
    if sealed != env.hash {
        return Err(Problem::Unsealed);
    }
    let computed = sha256_hex(&canonical);
    if computed != env.hash {
        return Err(Problem::HashMismatch {
            stored: env.hash,
            computed,
        });
    }
    Ok(env)
}

/// Reads and checks a head file; `None` when it does not exist.
pub(super) fn read_head(path: &Path) -> Result<Option<Head>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let head: Head = serde_json::from_str(&text).map_err(|e| format!("not a head file: {e}"))?;
    if !is_hash(&head.hash) {
        return Err(format!(
            "hash {:?} is not 64 lowercase hex digits",
            head.hash
        ));
    }
    Ok(Some(head))
}

fn resolve_anchor(log: &Path, check: HeadCheck) -> Result<Result<Anchor, String>, VerifyError> {
    let from_file = |path: &Path, must_exist: bool| {
        let source_name = path.display().to_string();
        match read_head(path) {
            Ok(Some(h)) => Ok(Ok(Anchor {
                source: source_name,
                seq: h.seq,
                hash: h.hash,
            })),
            Ok(None) if !must_exist => Ok(Err(format!("no head file {source_name}"))),
            Ok(None) => Err(VerifyError::Head {
                source_name,
                problem: "no such file".into(),
            }),
            Err(problem) => Err(VerifyError::Head {
                source_name,
                problem,
            }),
        }
    };
    match check {
        HeadCheck::Auto => from_file(&head_path(log), false),
        HeadCheck::File(p) => from_file(&p, true),
        HeadCheck::Expect { seq, hash } => {
            let hash = hash.to_ascii_lowercase();
            if !is_hash(&hash) {
                return Err(VerifyError::Head {
                    source_name: "--expect-hash".into(),
                    problem: format!("{hash:?} is not 64 hex digits"),
                });
            }
            Ok(Ok(Anchor {
                source: "--expect-seq/--expect-hash".into(),
                seq,
                hash,
            }))
        }
        HeadCheck::None => Ok(Err("head check disabled".into())),
    }
}

/// Verifies the log at `path`; the summary when it is intact, else the
/// first broken line.
pub fn verify(path: &Path, head: HeadCheck) -> Result<Summary, VerifyError> {
    verify_files(&[path.to_owned()], head)
}

/// Verifies several files as one chain, in order (a rotated log: the
/// oldest first, the file the agent writes last): each file after the
/// first must start with a `continued` record that follows the previous
/// file's last record. The head is the last file's. A first file that
/// starts with a `continued` record is accepted, its link reported as not
/// checked.
pub fn verify_files(paths: &[PathBuf], head: HeadCheck) -> Result<Summary, VerifyError> {
    verify_signed(paths, head, None)
}

/// [`verify_files`], and with `signatures`: every checkpoint's signed note
/// must verify against the key and commit to the records before it (its
/// count is the record's seq - 1, its hash the record's prev), at least one
/// checkpoint must be signed, and the log must contain the prefix a
/// checkpoint obtained earlier covers, unchanged.
pub fn verify_signed(
    paths: &[PathBuf],
    head: HeadCheck,
    signatures: Option<&SignatureCheck>,
) -> Result<Summary, VerifyError> {
    let Some(last_path) = paths.last() else {
        return Err(VerifyError::Head {
            source_name: "audit verify".into(),
            problem: "no file to verify".into(),
        });
    };
    let anchor = resolve_anchor(last_path, head)?;
    let mut summary = Summary::new(last_path);
    summary.signatures.key = signatures.map(|s| format!("{}+{}", s.key.name(), s.key.key_hash()));
    let saved = signatures.and_then(|s| s.checkpoint.as_ref());
    summary.file = paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" + ");
    let mut chain = Chain::default();
    let mut first_time: Option<SystemTime> = None;
    let mut last_time: Option<SystemTime> = None;
    let mut buf = Vec::with_capacity(1024);
    // Warnings name the line, and the file too when there are several.
    let several = paths.len() > 1;
    let at = |path: &Path, line: u64| {
        if several {
            format!("{}:{line}", path.display())
        } else {
            format!("line {line}")
        }
    };
    for (index, path) in paths.iter().enumerate() {
        let path = path.as_path();
        let io_err = |error| VerifyError::Io {
            path: path.to_owned(),
            error,
        };
        let broken = |line, problem| VerifyError::Broken {
            path: path.to_owned(),
            line,
            problem,
        };
        let mut reader = BufReader::with_capacity(1 << 16, File::open(path).map_err(io_err)?);
        let mut file = FileSummary {
            file: path.display().to_string(),
            records: 0,
            first_seq: 0,
            last_seq: 0,
        };
        chain.line = 0;
        while let Some(line) =
            read_record(&mut reader, &mut buf, chain.line).map_err(|e| match e {
                ReadError::Io(e) => io_err(e),
                ReadError::Broken(line, p) => broken(line, p),
            })?
        {
            let env = check_record(&buf).map_err(|p| broken(line, p))?;
            let continued = env.kind == "continued";
            if line == 1 && index == 0 && continued && env.seq > 0 {
                // The first file continues an earlier one, not given:
                // start the chain where the record says it continues.
                chain.seq = env.seq - 1;
                chain.hash.clone_from(&env.prev);
            }
            if line == 1 && index > 0 && !continued {
                return Err(broken(
                    line,
                    Problem::Invalid(format!(
                        "the file does not start with a `continued` record, so it does not continue {}",
                        paths[index - 1].display()
                    )),
                ));
            }
            if line == 1 && index > 0 && (env.prev != chain.hash || env.seq != chain.seq + 1) {
                return Err(broken(
                    line,
                    Problem::Invalid(format!(
                        "the file does not follow the last record of {} (seq {}, hash {}): its first record has seq {} and prev {}",
                        paths[index - 1].display(),
                        chain.seq,
                        chain.hash,
                        env.seq,
                        env.prev
                    )),
                ));
            }
            chain.follow(line, &env).map_err(|p| broken(line, p))?;
            let time = humantime::parse_rfc3339(&env.time)
                .map_err(|_| broken(line, Problem::Time(env.time.clone())))?;
            if let Some(before) = last_time.filter(|&t| time < t) {
                summary.time_backwards += 1;
                let back = before.duration_since(time).unwrap_or_default();
                summary.warn(format!(
                    "{}: time {} is {} earlier than the line before (the clock stepped back)",
                    at(path, line),
                    env.time,
                    humantime::format_duration(back)
                ));
            }
            if index + 1 == paths.len()
                && let Ok(a) = &anchor
                && a.seq == env.seq
                && a.hash != env.hash
            {
                return Err(broken(
                    line,
                    Problem::HeadHash {
                        hash: env.hash,
                        head_hash: a.hash.clone(),
                        source: a.source.clone(),
                    },
                ));
            }
            let kind = if KNOWN_KINDS.contains(&env.kind.as_str()) {
                let k: Kind = serde_json::from_slice(&buf).map_err(|e| {
                    broken(
                        line,
                        Problem::Fields {
                            kind: env.kind.clone(),
                            error: json_message(&e),
                        },
                    )
                })?;
                Some(k)
            } else {
                None
            };
            if let Some(Kind::Checkpoint(c)) = &kind {
                check_note(
                    c.note.as_deref(),
                    &env,
                    signatures.map(|s| &s.key),
                    &mut summary.signatures,
                )
                .map_err(|p| broken(line, p))?;
            }
            if let Some((cp, source)) = saved {
                if line == 1 && index == 0 && env.seq > cp.body.size + 1 {
                    return Err(broken(
                        line,
                        Problem::Invalid(format!(
                            "the log starts at seq {}, after the last record the checkpoint {source} covers ({}): verify the earlier files too",
                            env.seq, cp.body.size
                        )),
                    ));
                }
                if env.seq == cp.body.size && env.hash != cp.body.hash {
                    return Err(rewritten(
                        paths,
                        signatures.map_or(&[][..], |s| &s.reference[..]),
                        cp,
                        source,
                        &env.hash,
                    ));
                }
            }
            if let Some(Kind::Continued(c)) = &kind {
                if c.previous_seq + 1 != env.seq || c.previous_hash != env.prev {
                    return Err(broken(
                        line,
                        Problem::Fields {
                            kind: env.kind.clone(),
                            error: format!(
                                "previous_seq {} and previous_hash {} are not the record's own seq - 1 and prev",
                                c.previous_seq, c.previous_hash
                            ),
                        },
                    ));
                }
                let checked = !(index == 0 && line == 1);
                if !checked || c.cause == "missing_at_start" {
                    summary.warn(format!(
                        "{}: the log continues {} (seq {}, hash {}){}",
                        at(path, line),
                        c.previous_file.as_deref().unwrap_or("an earlier file"),
                        c.previous_seq,
                        c.previous_hash,
                        match (checked, c.cause.as_str()) {
                            (false, _) => ": not checked; verify the earlier file(s) first: `enforcer audit verify OLD... NEW`".to_owned(),
                            (true, cause) => format!(" ({cause}: the log was missing when the agent started)"),
                        }
                    ));
                }
                if summary.continued.len() < LIST_CAP {
                    summary.continued.push(ContinuedEntry {
                        file: path.display().to_string(),
                        line,
                        time: env.time.clone(),
                        previous_file: c.previous_file.clone(),
                        previous_seq: c.previous_seq,
                        cause: c.cause.clone(),
                        checked,
                    });
                }
            }
            summary.add(path, line, &env, kind);
            first_time.get_or_insert(time);
            last_time = Some(time);
            if summary.first_time.is_none() {
                summary.first_time = Some(env.time.clone());
            }
            if file.records == 0 {
                file.first_seq = env.seq;
            }
            file.records += 1;
            file.last_seq = env.seq;
            summary.last_time = Some(env.time);
            chain.seq = env.seq;
            chain.hash = env.hash;
        }
        summary.files.push(file);
    }
    // The line after the last file's last one (its seqs need not start
    // at 1 when it continues another file).
    let next_line = summary.files.last().map_or(0, |f| f.records) + 1;
    summary.tail = tail(anchor, chain.seq, &mut summary).map_err(|e| match e {
        TailError::Missing(p) => VerifyError::Broken {
            path: last_path.clone(),
            line: next_line,
            problem: p,
        },
        TailError::Head(e) => e,
    })?;
    if let (Some(a), Some(b)) = (first_time, last_time) {
        summary.span_seconds = Some(match b.duration_since(a) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        });
    }
    if let Some((cp, source)) = saved {
        if chain.seq < cp.body.size {
            return Err(VerifyError::Truncated {
                source_name: source.clone(),
                covers: cp.body.size,
                has: chain.seq,
            });
        }
        summary.signatures.checkpoint = Some(CheckpointMatch {
            source: source.clone(),
            origin: cp.body.origin.clone(),
            covers: cp.body.size,
            hash: cp.body.hash.clone(),
            time: cp.body.extension("time").map(str::to_owned),
            contained: true,
        });
    }
    if let Some(s) = signatures
        && summary.signatures.signed == 0
    {
        return Err(VerifyError::Unsigned {
            file: summary.file.clone(),
            key: format!("{}+{}", s.key.name(), s.key.key_hash()),
        });
    }
    summary.last_hash = chain.hash;
    Ok(summary)
}

/// Checks a checkpoint record's note (when it has one; with a key) and
/// counts it.
pub(super) fn check_note(
    note: Option<&str>,
    env: &Envelope,
    key: Option<&VerifierKey>,
    sigs: &mut SignatureSummary,
) -> Result<(), Problem> {
    let Some(note) = note else {
        sigs.unsigned += 1;
        return Ok(());
    };
    sigs.signed += 1;
    sigs.last_signed_seq = Some(env.seq);
    let Some(key) = key else {
        return Ok(());
    };
    let problem = |error: String| Problem::Signature {
        seq: env.seq,
        error,
    };
    let cp = SignedCheckpoint::open(note, key).map_err(|e| problem(e.to_string()))?;
    let covers = env.seq - 1;
    if cp.body.size != covers || cp.body.hash != env.prev {
        return Err(problem(format!(
            "its note covers {} records with head {}, but the record follows {covers} records with head {}: \
             the note was made for another chain",
            cp.body.size, cp.body.hash, env.prev
        )));
    }
    if sigs.origins.len() < 16 && !sigs.origins.contains(&cp.body.origin) {
        sigs.origins.push(cp.body.origin);
    }
    sigs.verified += 1;
    Ok(())
}

/// The error for a log whose record at the checkpoint's size has another
/// hash: naming the first record that differs from the reference copy when
/// there is one, else the checkpoint's last record.
fn rewritten(
    paths: &[PathBuf],
    reference: &[PathBuf],
    cp: &SignedCheckpoint,
    source: &str,
    log_hash: &str,
) -> VerifyError {
    let first = if reference.is_empty() {
        None
    } else {
        first_difference(paths, reference, cp.body.size)
            .ok()
            .flatten()
    };
    VerifyError::Rewritten {
        source_name: source.to_owned(),
        seq: first.unwrap_or(cp.body.size),
        by_reference: first.is_some(),
        covers: cp.body.size,
        log_hash: log_hash.to_owned(),
        checkpoint_hash: cp.body.hash.clone(),
    }
}

/// Reads the records of a chain of files, in order, as (seq, line bytes).
struct Records {
    files: Vec<PathBuf>,
    next: usize,
    reader: Option<BufReader<File>>,
}

impl Records {
    fn new(paths: &[PathBuf]) -> Records {
        Records {
            files: paths.to_vec(),
            next: 0,
            reader: None,
        }
    }

    /// The next line (without `\n`) and its seq (None when the line is
    /// not a record).
    fn next_line(&mut self) -> io::Result<Option<(Option<u64>, Vec<u8>)>> {
        loop {
            if self.reader.is_none() {
                let Some(p) = self.files.get(self.next) else {
                    return Ok(None);
                };
                self.next += 1;
                self.reader = Some(BufReader::new(File::open(p)?));
            }
            let Some(reader) = self.reader.as_mut() else {
                continue;
            };
            let mut buf = Vec::new();
            let n = reader
                .by_ref()
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut buf)?;
            if n == 0 {
                self.reader = None;
                continue;
            }
            if buf.last() == Some(&b'\n') {
                buf.pop();
            }
            #[derive(Deserialize)]
            struct Seq {
                seq: u64,
            }
            let seq = serde_json::from_slice::<Seq>(&buf).ok().map(|s| s.seq);
            return Ok(Some((seq, buf)));
        }
    }
}

/// The first record, up to seq `upto`, where the log (`paths`) and a
/// reference copy of it differ (a record changed, or missing from one of
/// them), compared byte for byte in order; None when they agree up to
/// there. Lines of the reference before its first record of the log's
/// first seq are skipped (a collector's copy may start earlier).
pub fn first_difference(
    paths: &[PathBuf],
    reference: &[PathBuf],
    upto: u64,
) -> io::Result<Option<u64>> {
    let mut log = Records::new(paths);
    let mut refr = Records::new(reference);
    let mut expected_seq = None::<u64>;
    let mut pending_ref = None;
    loop {
        let ours = log.next_line()?;
        let seq_here = match &ours {
            Some((Some(s), _)) => *s,
            // Not a record, or the log ended: where the next one belongs.
            _ => expected_seq.map_or(1, |s| s + 1),
        };
        if seq_here > upto {
            return Ok(None);
        }
        // The reference's line for the same seq.
        let theirs = loop {
            let next = match pending_ref.take() {
                Some(l) => Some(l),
                None => refr.next_line()?,
            };
            match next {
                Some((Some(s), _)) if s < seq_here => continue,
                Some((Some(s), l)) if s > seq_here => {
                    pending_ref = Some((Some(s), l));
                    break None;
                }
                other => break other,
            }
        };
        match (ours, theirs) {
            (Some((_, a)), Some((_, b))) if a == b => expected_seq = Some(seq_here),
            (None, None) => return Ok(None),
            _ => return Ok(Some(seq_here)),
        }
    }
}

/// Where the chain stands after the records read so far.
struct Chain {
    /// Lines read.
    line: u64,
    /// The last record's sequence number and hash (0 and 64 zeros before
    /// the first).
    seq: u64,
    hash: String,
}

impl Default for Chain {
    fn default() -> Self {
        Chain {
            line: 0,
            seq: 0,
            hash: ZERO_HASH.to_owned(),
        }
    }
}

impl Chain {
    /// Checks that `env`, read at `line`, follows the last record: it
    /// names that record's hash and has the next sequence number.
    fn follow(&mut self, line: u64, env: &Envelope) -> Result<(), Problem> {
        self.line = line;
        if env.prev != self.hash {
            return Err(if line == 1 {
                Problem::NotFirst {
                    prev: env.prev.clone(),
                }
            } else {
                Problem::PrevMismatch {
                    before: line - 1,
                    expected: self.hash.clone(),
                    found: env.prev.clone(),
                }
            });
        }
        if env.seq != self.seq + 1 {
            return Err(Problem::Seq {
                expected: self.seq + 1,
                found: env.seq,
            });
        }
        Ok(())
    }
}

/// Why a line could not be read as a record.
enum ReadError {
    Io(std::io::Error),
    Broken(u64, Problem),
}

/// Reads the line after line `read` into `buf`, without its newline, and
/// returns its number; `None` at the end of the file. A line cut short (no
/// newline: a torn write) or longer than any record is broken.
fn read_record(
    reader: &mut impl std::io::BufRead,
    buf: &mut Vec<u8>,
    read: u64,
) -> Result<Option<u64>, ReadError> {
    buf.clear();
    let n = reader
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', buf)
        .map_err(ReadError::Io)?;
    if n == 0 {
        return Ok(None);
    }
    let line = read + 1;
    if buf.last() != Some(&b'\n') {
        let problem = if buf.len() > MAX_LINE {
            Problem::TooLong
        } else {
            Problem::Partial {
                bytes: buf.len() as u64,
            }
        };
        return Err(ReadError::Broken(line, problem));
    }
    buf.pop();
    Ok(Some(line))
}

/// Why the end of the log does not match its anchor.
enum TailError {
    Missing(Problem),
    Head(VerifyError),
}

/// How the log's end (`last_seq`) stands against the anchor: records the
/// head says were written but are gone are an error; records after the
/// head's are warned about.
fn tail(
    anchor: Result<Anchor, String>,
    last_seq: u64,
    summary: &mut Summary,
) -> Result<Tail, TailError> {
    Ok(match anchor {
        Err(reason) => Tail::Unanchored { reason },
        Ok(a) if last_seq < a.seq => {
            return Err(TailError::Missing(Problem::Missing {
                first: last_seq + 1,
                last: a.seq,
                source: a.source,
            }));
        }
        Ok(a) if a.seq == 0 && a.hash != ZERO_HASH => {
            return Err(TailError::Head(VerifyError::Head {
                source_name: a.source,
                problem: "seq 0 with a hash other than 64 zeros".into(),
            }));
        }
        Ok(a) if last_seq == a.seq => Tail::Anchored {
            source: a.source,
            seq: a.seq,
        },
        Ok(a) => {
            let after = last_seq.saturating_sub(a.seq);
            summary.warn(format!(
                "the {after} records after seq {} are not anchored by {} (written after its last update)",
                a.seq, a.source
            ));
            Tail::PartlyAnchored {
                source: a.source,
                seq: a.seq,
                unanchored_records: after,
            }
        }
    })
}
