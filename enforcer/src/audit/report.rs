//! `enforcer audit report`: what one or more audit logs state, per host,
//! as one [`Report`] value that is printed as JSON or rendered as a
//! self-contained HTML page ([`super::report_html`]); both come from the
//! same value, so they cannot disagree.
//!
//! # Hosts
//!
//! A file belongs to the host named by the origin (first line) of its
//! first signed checkpoint note; a file without a signed checkpoint to the
//! host named by its file name without a rotation suffix (`audit.log.1` →
//! `audit.log`). A host's files are ordered by the `seq` of their first
//! record and verified as one chain, as `audit verify OLD NEW` does.
//!
//! # Time accounting
//!
//! The period of a host is from its first record's `time` to the latest
//! `time` of its records (a clock that stepped back is not counted twice:
//! each interval runs from the latest time seen so far). Between two consecutive records the state set by the first
//! one holds, except where a rule below says the interval was not covered.
//! Every interval is, for every scope row, exactly one of *enforced*,
//! *observed* or *not covered*; so the three shares of a row add up to the
//! period. In order of precedence, an interval is not covered when:
//!
//! 1. `chain broken`: it touches a record at or after the first record
//!    that fails verification (or that could not be read): nothing after
//!    that point is evidence;
//! 2. `records dropped`: it ends at a `gap` record (the records written
//!    between the previous record and the gap record were lost, so what
//!    happened then is unknown);
//! 3. `agent crashed`: it ends at an `agent_start` while the agent was
//!    running (a start without a prior stop): the agent died somewhere in
//!    that interval and the report cannot tell where, so all of it counts;
//! 4. `agent down`: it starts after an `agent_stop` (until the next
//!    `agent_start`), or before the first `agent_start`/`checkpoint` of the
//!    log (nothing yet states that an agent ran). The pinned datapath may
//!    well keep enforcing while no agent runs, but nothing records it then;
//! 5. `mode unknown`: the agent runs but no record has stated the mode
//!    since it started (`agent_start` forgets the global mode; the
//!    `checkpoint` the agent writes right after its start states it), or
//!    the mode in force is `none` (no policy);
//! 6. for a named scope row only, `coverage <event>`: the last `coverage`
//!    record of that scope said `waiting` or `failed` (until `repaired` or
//!    the next `agent_start`, which attaches every entry again).
//!
//! Otherwise the interval is enforced or observed by the mode in force:
//! for a named scope with a per-cgroup override (`mode_change` with a
//! `cgroup`; `to: none` removes it; overrides survive restarts, as the
//! agent restores them from its runtime state file) the override, else the
//! global mode (`checkpoint.mode`, `mode_change` without `cgroup`).
//!
//! The rows are `(global)`, which stands for every scope entry without an
//! override and without a coverage record, and one row per scope named by a
//! `coverage` record or a per-cgroup `mode_change`.
//!
//! # Events
//!
//! `event` records count per country, per scope (`cgroup` of the record,
//! else `cgroup id N`) and per UTC day of `event_time`, each split into
//! `denied` (refusals) and `would_deny` (would-refusals, in observe mode).
//! `events_suppressed` records count per UTC day of the record: the kernel
//! did not emit those events, so they cannot be attributed to a country or
//! scope.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde::Serialize;

use super::{
    HeadCheck, Kind, LoadResult, MAX_LINE,
    note::{CheckpointBody, SignedCheckpoint, VerifierKey},
    verify::{Envelope, VerifyError, verify_files},
};

/// Lists in the report stop growing here, so memory stays bounded.
const CAP: usize = 10_000;

/// The name of the row that stands for every scope entry without an
/// override or a coverage record of its own.
pub const GLOBAL_SCOPE: &str = "(global)";

/// The whole report: one entry per host.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `<name>+<hash>` of `--key`, or absent (signatures not checked).
    pub key: Option<String>,
    /// False when any input was bad: a file unreadable, a chain broken, a
    /// signature bad.
    pub ok: bool,
    pub hosts: Vec<HostReport>,
}

/// What one host's logs state.
#[derive(Clone, Debug, Serialize)]
pub struct HostReport {
    pub host: String,
    /// `checkpoint origin` or `file name`.
    pub host_from: String,
    /// The files, in chain order.
    pub files: Vec<String>,
    /// Records read (that parse as records).
    pub records: u64,
    pub period: Period,
    pub chain: ChainResult,
    /// Every way the input is bad, for the top of the report.
    pub problems: Vec<String>,
    /// One row per scope: `(global)` first.
    pub scopes: Vec<ScopeShare>,
    /// Every interval that was not covered, for `(global)`.
    pub not_covered: Vec<Segment>,
    pub timeline: Vec<TimelineEntry>,
    pub events: EventCounts,
    pub checkpoints: Vec<CheckpointStatus>,
    pub signatures: SignatureCounts,
    /// One line: the enforced share, refusals, the chain, the signatures.
    pub conclusion: String,
    /// False when this host's input was bad (see [`Report::ok`]).
    pub ok: bool,
}

/// From the first record to the last.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Period {
    pub start: Option<String>,
    pub end: Option<String>,
    /// Microseconds.
    pub duration_us: u64,
}

/// `audit verify` over the host's files.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChainResult {
    pub intact: bool,
    /// `anchored by …` / `unanchored: …` when intact.
    pub tail: Option<String>,
    /// The verifier's error when not intact.
    pub error: Option<String>,
    /// The file and line of the first broken record, when one is named.
    pub file: Option<String>,
    pub line: Option<u64>,
}

/// How a scope row's time divides.
#[derive(Clone, Debug, Serialize)]
pub struct ScopeShare {
    pub scope: String,
    pub enforced_us: u64,
    pub observed_us: u64,
    pub not_covered_us: u64,
    /// Shares of the period, in percent (0 when the period is empty).
    pub enforced_pct: f64,
    pub observed_pct: f64,
    pub not_covered_pct: f64,
    /// The row's state over time, adjacent equal intervals merged.
    pub segments: Vec<Segment>,
}

/// An interval in one state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Segment {
    pub start: String,
    pub end: String,
    /// Microseconds from the period's start.
    pub from_us: u64,
    pub to_us: u64,
    /// `enforced`, `observed` or `not_covered`.
    pub state: String,
    /// Why not covered (a rule of the module docs); empty otherwise.
    pub why: String,
}

/// A change: who changed what and why.
#[derive(Clone, Debug, Serialize)]
pub struct TimelineEntry {
    pub time: String,
    pub seq: u64,
    pub kind: String,
    /// What changed, for people.
    pub what: String,
    /// `uid N gid M`, when the record names a caller.
    pub who: Option<String>,
    /// The reason, trigger or cause.
    pub why: Option<String>,
    pub policy_sha256: Option<String>,
    pub database_sha256: Vec<String>,
}

/// Refusals and would-refusals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Verdicts {
    pub denied: u64,
    pub would_deny: u64,
}

/// Events from `event` and `events_suppressed` records.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EventCounts {
    pub total: Verdicts,
    pub by_country: BTreeMap<String, Verdicts>,
    pub by_scope: BTreeMap<String, Verdicts>,
    pub by_day: BTreeMap<String, Verdicts>,
    /// Events the kernel did not emit (rate limit + full ring): not
    /// attributed to a country, scope or verdict.
    pub suppressed_total: u64,
    pub suppressed_by_day: BTreeMap<String, u64>,
}

/// One checkpoint record's signature.
#[derive(Clone, Debug, Serialize)]
pub struct CheckpointStatus {
    pub seq: u64,
    pub time: String,
    pub mode: String,
    pub policy_sha256: Option<String>,
    /// `verified`, `bad`, `unsigned` or `not checked` (no `--key`).
    pub status: String,
    /// Why `bad`.
    pub detail: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SignatureCounts {
    pub checkpoints: u64,
    pub verified: u64,
    pub bad: u64,
    pub unsigned: u64,
    pub not_checked: u64,
}

/// One record as the report reads it.
#[derive(Clone, Debug)]
pub struct Rec {
    pub seq: u64,
    /// The line in its file (1-based).
    pub line: u64,
    /// Microseconds since the Unix epoch.
    pub time_us: i64,
    pub prev: String,
    /// `None` for a kind this version does not know.
    pub kind: Option<Kind>,
    /// False from the first record that fails verification on.
    pub trusted: bool,
}

/// What holds between two records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Enforced,
    Observed,
    NotCovered(&'static str),
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Enforced => "enforced",
            State::Observed => "observed",
            State::NotCovered(_) => "not_covered",
        }
    }
    fn why(self) -> &'static str {
        match self {
            State::NotCovered(w) => w,
            _ => "",
        }
    }
}

/// An interval (microseconds since the epoch) and its state.
type Span = (i64, i64, State);

fn by_mode(mode: &str, why: &'static str) -> State {
    match mode {
        "enforce" => State::Enforced,
        "observe" => State::Observed,
        _ => State::NotCovered(why),
    }
}

/// Microseconds since the epoch of an RFC 3339 time.
pub fn parse_time(t: &str) -> Option<i64> {
    let st = humantime::parse_rfc3339(t).ok()?;
    match st.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).ok(),
        Err(e) => i64::try_from(e.duration().as_micros()).ok().map(|v| -v),
    }
}

/// RFC 3339 UTC with microseconds.
pub fn format_time(us: i64) -> String {
    let d = Duration::from_micros(us.unsigned_abs());
    let t = if us >= 0 {
        SystemTime::UNIX_EPOCH + d
    } else {
        SystemTime::UNIX_EPOCH - d
    };
    humantime::format_rfc3339_micros(t).to_string()
}

/// A duration for people: `3 d 4 h`, `12 min 5 s`, `1.250 s`.
pub fn human(us: u64) -> String {
    let s = us / 1_000_000;
    let (d, h, m) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    if d > 0 {
        format!("{d} d {h} h")
    } else if h > 0 {
        format!("{h} h {m} min")
    } else if m > 0 {
        format!("{m} min {} s", s % 60)
    } else if us >= 1000 {
        format!("{}.{:03} s", s, us / 1000 % 1000)
    } else {
        format!("{us} µs")
    }
}

/// The time accounting of the module docs over one host's records (in
/// chain order): one row per scope.
pub fn account(recs: &[Rec]) -> Vec<ScopeShare> {
    let mut names: BTreeSet<String> = BTreeSet::new();
    for r in recs {
        match &r.kind {
            Some(Kind::Coverage(c)) => {
                names.insert(c.scope.clone());
            }
            Some(Kind::ModeChange(m)) => {
                if let Some(c) = &m.cgroup {
                    names.insert(c.clone());
                }
            }
            _ => {}
        }
    }
    let mut rows: Vec<(String, Vec<Span>)> = std::iter::once(GLOBAL_SCOPE.to_owned())
        .chain(names.into_iter().take(CAP))
        .map(|n| (n, Vec::new()))
        .collect();
    let mut up = false;
    let mut clock = recs.first().map_or(0, |r| r.time_us);
    let mut global: Option<String> = None;
    let mut overrides: BTreeMap<String, String> = BTreeMap::new();
    let mut uncovered: BTreeMap<String, &'static str> = BTreeMap::new();
    for (i, r) in recs.iter().enumerate() {
        if i > 0 {
            let before = &recs[i - 1];
            // A clock that stepped back is not counted twice: each
            // interval runs from the latest time seen so far.
            let a = clock;
            let b = r.time_us.max(a);
            clock = b;
            let whole = if !before.trusted || !r.trusted {
                Some("chain broken")
            } else if matches!(r.kind, Some(Kind::Gap(_))) {
                Some("records dropped")
            } else if matches!(r.kind, Some(Kind::AgentStart(_))) && up {
                Some("agent crashed")
            } else if !up {
                Some("agent down")
            } else {
                None
            };
            for (name, segs) in &mut rows {
                let st = match whole {
                    Some(w) => State::NotCovered(w),
                    None if name == GLOBAL_SCOPE => {
                        by_mode(global.as_deref().unwrap_or("none"), "mode unknown")
                    }
                    None => match uncovered.get(name.as_str()) {
                        Some(w) => State::NotCovered(w),
                        None => match overrides.get(name.as_str()) {
                            Some(m) => by_mode(m, "mode unknown"),
                            None => by_mode(global.as_deref().unwrap_or("none"), "mode unknown"),
                        },
                    },
                };
                push(segs, a, b, st);
            }
        }
        match &r.kind {
            Some(Kind::AgentStart(_)) => {
                up = true;
                global = None;
                uncovered.clear();
            }
            Some(Kind::AgentStop(_)) => up = false,
            Some(Kind::Checkpoint(c)) => {
                up = true;
                global = Some(c.mode.clone());
            }
            Some(Kind::ModeChange(m)) => match &m.cgroup {
                None => global = Some(m.to.clone()),
                Some(cg) if m.to == "none" => {
                    overrides.remove(cg);
                }
                Some(cg) => {
                    overrides.insert(cg.clone(), m.to.clone());
                }
            },
            Some(Kind::Coverage(c)) => match c.event.as_str() {
                "waiting" => {
                    uncovered.insert(c.scope.clone(), "coverage waiting");
                }
                "repaired" => {
                    uncovered.remove(&c.scope);
                }
                _ => {
                    uncovered.insert(c.scope.clone(), "coverage failed");
                }
            },
            _ => {}
        }
    }
    let origin = recs.first().map_or(0, |r| r.time_us);
    let total = (clock - origin).max(0) as u64;
    rows.into_iter()
        .map(|(scope, segs)| {
            let mut sums = [0u64; 3];
            for &(a, b, st) in &segs {
                let i = match st {
                    State::Enforced => 0,
                    State::Observed => 1,
                    State::NotCovered(_) => 2,
                };
                sums[i] += (b - a) as u64;
            }
            let pct = |v: u64| {
                if total == 0 {
                    0.0
                } else {
                    // Rounded to 0.001 % so that JSON and HTML show one figure.
                    (v as f64 * 100_000.0 / total as f64).round() / 1000.0
                }
            };
            ScopeShare {
                scope,
                enforced_us: sums[0],
                observed_us: sums[1],
                not_covered_us: sums[2],
                enforced_pct: pct(sums[0]),
                observed_pct: pct(sums[1]),
                not_covered_pct: pct(sums[2]),
                segments: segs
                    .iter()
                    .take(CAP)
                    .map(|&(a, b, st)| Segment {
                        start: format_time(a),
                        end: format_time(b),
                        from_us: (a - origin) as u64,
                        to_us: (b - origin) as u64,
                        state: st.name().to_owned(),
                        why: st.why().to_owned(),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Appends an interval, merging it into the last one when the state is
/// the same. Empty intervals are kept out.
fn push(segs: &mut Vec<Span>, a: i64, b: i64, st: State) {
    if b <= a {
        return;
    }
    match segs.last_mut() {
        Some(last) if last.2 == st && last.1 == a => last.1 = b,
        _ => segs.push((a, b, st)),
    }
}

/// Counts of refusals and would-refusals (module docs, "Events").
pub fn count_events(recs: &[Rec]) -> EventCounts {
    let mut c = EventCounts::default();
    for r in recs.iter().filter(|r| r.trusted) {
        match &r.kind {
            Some(Kind::Event(e)) => {
                let day = e
                    .event_time
                    .get(..10)
                    .filter(|_| parse_time(&e.event_time).is_some())
                    .map_or_else(|| day_of(r.time_us), str::to_owned);
                let scope = e
                    .cgroup
                    .clone()
                    .unwrap_or_else(|| format!("cgroup id {}", e.cgroup_id));
                let denied = e.verdict == "denied";
                let bump = |v: &mut Verdicts| {
                    if denied {
                        v.denied += 1
                    } else {
                        v.would_deny += 1
                    }
                };
                bump(&mut c.total);
                // Countries and days are few; scopes are bounded by CAP.
                bump(c.by_country.entry(e.country.clone()).or_default());
                bump(c.by_day.entry(day).or_default());
                if c.by_scope.len() < CAP || c.by_scope.contains_key(&scope) {
                    bump(c.by_scope.entry(scope).or_default());
                }
            }
            Some(Kind::EventsSuppressed(s)) => {
                let n = s.rate_limit.saturating_add(s.ring_full);
                c.suppressed_total = c.suppressed_total.saturating_add(n);
                let d = c.suppressed_by_day.entry(day_of(r.time_us)).or_default();
                *d = d.saturating_add(n);
            }
            _ => {}
        }
    }
    c
}

fn day_of(us: i64) -> String {
    format_time(us).get(..10).unwrap_or_default().to_owned()
}

/// The text of a note before its signatures, unverified: only to read the
/// origin a file claims (the signature is checked separately).
fn note_text(note: &str) -> Option<&str> {
    note.split_once("\n\n").map(|(t, _)| t)
}

/// The signature status of every checkpoint record.
pub fn check_signatures(
    recs: &[Rec],
    key: Option<&VerifierKey>,
) -> (Vec<CheckpointStatus>, SignatureCounts) {
    let mut list = Vec::new();
    let mut n = SignatureCounts::default();
    for r in recs {
        let Some(Kind::Checkpoint(c)) = &r.kind else {
            continue;
        };
        n.checkpoints += 1;
        let (status, detail) = match (&c.note, key) {
            (None, _) => ("unsigned", None),
            (Some(_), None) => ("not checked", None),
            (Some(note), Some(key)) => match SignedCheckpoint::open(note, key) {
                Ok(cp) if cp.body.size + 1 == r.seq && cp.body.hash == r.prev => ("verified", None),
                Ok(cp) => (
                    "bad",
                    Some(format!(
                        "the note covers {} records ending in {}, not the {} records before it",
                        cp.body.size,
                        cp.body.hash,
                        r.seq.saturating_sub(1)
                    )),
                ),
                Err(e) => ("bad", Some(e.to_string())),
            },
        };
        match status {
            "verified" => n.verified += 1,
            "bad" => n.bad += 1,
            "unsigned" => n.unsigned += 1,
            _ => n.not_checked += 1,
        }
        if list.len() < CAP {
            list.push(CheckpointStatus {
                seq: r.seq,
                time: format_time(r.time_us),
                mode: c.mode.clone(),
                policy_sha256: c.policy_sha256.clone(),
                status: status.to_owned(),
                detail,
            });
        }
    }
    (list, n)
}

/// Who changed what and why, in log order.
pub fn timeline(recs: &[Rec]) -> Vec<TimelineEntry> {
    let mut out = Vec::new();
    for r in recs {
        let Some(k) = &r.kind else { continue };
        let mut e = TimelineEntry {
            time: format_time(r.time_us),
            seq: r.seq,
            kind: k.name().to_owned(),
            what: String::new(),
            who: None,
            why: None,
            policy_sha256: None,
            database_sha256: Vec::new(),
        };
        match k {
            Kind::AgentStart(s) => {
                e.what = format!(
                    "agent {} started (pid {}, {})",
                    s.version,
                    s.pid,
                    if s.adopted {
                        "adopted the pinned datapath"
                    } else {
                        "loaded a fresh datapath"
                    }
                );
            }
            Kind::AgentStop(s) => {
                e.what = "agent stopped".into();
                e.why = Some(s.reason.clone());
            }
            Kind::ModeChange(m) => {
                e.what = format!(
                    "mode {} -> {}{}",
                    m.from,
                    m.to,
                    m.cgroup
                        .as_deref()
                        .map(|c| format!(" for {c}"))
                        .unwrap_or_default()
                );
                e.who = Some(match m.gid {
                    Some(g) => format!("uid {} gid {g}", m.uid),
                    None => format!("uid {}", m.uid),
                });
                e.why = Some(m.reason.clone());
            }
            Kind::PolicyLoad(p) => {
                e.what = match p.result {
                    LoadResult::Ok => format!(
                        "policy loaded (generation {})",
                        p.generation.unwrap_or_default()
                    ),
                    LoadResult::Failure => {
                        format!("policy load FAILED: {}", p.error.as_deref().unwrap_or("-"))
                    }
                };
                e.why = Some(format!("trigger {}", p.trigger.label()));
                e.policy_sha256.clone_from(&p.policy_sha256);
                e.database_sha256 = p.databases.iter().map(|d| d.sha256.clone()).collect();
            }
            Kind::Coverage(c) => {
                e.what = format!("scope {} {}", c.scope, c.event);
                e.why = Some(match &c.error {
                    Some(err) => format!("{}: {err}", c.cause),
                    None => c.cause.clone(),
                });
            }
            Kind::Gap(g) => {
                e.what = format!("{} records dropped after seq {}", g.dropped, g.after_seq);
                e.why = Some(g.error.clone());
            }
            Kind::ReloadHeld(h) => {
                e.what = format!(
                    "reload HELD: new GeoIP data would flip {} IPv4 and {} IPv6 addresses between allowed and refused",
                    h.flip.ipv4.flipped, h.flip.ipv6.flipped
                );
                e.who = h.uid.map(|u| format!("uid {u}"));
                e.why = Some(format!(
                    "trigger {}; geoip.max_flip ipv4 {}, ipv6 {}",
                    h.trigger.label(),
                    h.flip.ipv4.max_flip,
                    h.flip.ipv6.max_flip
                ));
                e.database_sha256 = h.databases_held.iter().map(|d| d.sha256.clone()).collect();
            }
            Kind::ReloadAccepted(a) => {
                e.what = format!(
                    "held change ACCEPTED (generation {}): {} IPv4 and {} IPv6 addresses flipped",
                    a.generation, a.flip.ipv4.flipped, a.flip.ipv6.flipped
                );
                e.who = Some(match a.gid {
                    Some(g) => format!("uid {} gid {g}", a.uid),
                    None => format!("uid {}", a.uid),
                });
                e.why = Some("enforcer reload --accept-change".into());
                e.database_sha256 = a
                    .databases_applied
                    .iter()
                    .map(|d| d.sha256.clone())
                    .collect();
            }
            Kind::Uninstall(u) => {
                e.what = format!("enforcement uninstalled ({})", u.pin_dir);
                e.who = Some(format!("uid {} gid {}", u.uid, u.gid));
                e.why = Some(u.reason.clone());
            }
            _ => continue,
        }
        if !r.trusted {
            e.what = format!("UNVERIFIED (after the chain break): {}", e.what);
        }
        if out.len() < CAP {
            out.push(e);
        }
    }
    out
}

/// One file as read: its records (those that parse), the origin it
/// claims, and why it could not be read (entirely or from some line on).
struct FileRead {
    path: PathBuf,
    recs: Vec<Rec>,
    origin: Option<String>,
    error: Option<String>,
}

fn read_file(path: &Path) -> FileRead {
    let mut fr = FileRead {
        path: path.to_owned(),
        recs: Vec::new(),
        origin: None,
        error: None,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => {
            fr.error = Some(format!("{}: {e}", path.display()));
            return fr;
        }
    };
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut buf = Vec::new();
    let mut line = 0u64;
    loop {
        buf.clear();
        let n = match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
        {
            Ok(n) => n,
            Err(e) => {
                fr.error = Some(format!("{}: line {}: {e}", path.display(), line + 1));
                break;
            }
        };
        if n == 0 {
            break;
        }
        line += 1;
        if buf.last() != Some(&b'\n') {
            // Too long or cut off: not a record; what follows is not read.
            fr.error = Some(format!(
                "{}: line {line}: not a complete record",
                path.display()
            ));
            break;
        }
        let Ok(env) = serde_json::from_slice::<Envelope>(&buf) else {
            continue;
        };
        let Some(time_us) = parse_time(&env.time) else {
            continue;
        };
        let kind = serde_json::from_slice::<Kind>(&buf).ok();
        if fr.origin.is_none()
            && let Some(Kind::Checkpoint(c)) = &kind
            && let Some(body) = c
                .note
                .as_deref()
                .and_then(note_text)
                .and_then(|t| CheckpointBody::parse(&format!("{t}\n")).ok())
        {
            fr.origin = Some(body.origin);
        }
        fr.recs.push(Rec {
            seq: env.seq,
            line,
            time_us,
            prev: env.prev,
            kind,
            trusted: true,
        });
    }
    fr
}

/// `audit.log.1` → `audit.log`: the name of a log without its rotation
/// suffix.
fn base_name(path: &Path) -> String {
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    match name.rsplit_once('.') {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            base.to_owned()
        }
        _ => name,
    }
}

/// Reads and verifies `paths` and builds the report; never fails: bad
/// input is reported in it (and makes [`Report::ok`] false).
pub fn build(paths: &[PathBuf], key: Option<&VerifierKey>) -> Report {
    let mut groups: BTreeMap<(String, String), Vec<FileRead>> = BTreeMap::new();
    for p in paths {
        let fr = read_file(p);
        let id = match &fr.origin {
            Some(o) => (o.clone(), "checkpoint origin".to_owned()),
            None => (base_name(p), "file name".to_owned()),
        };
        groups.entry(id).or_default().push(fr);
    }
    let hosts: Vec<HostReport> = groups
        .into_iter()
        .map(|((host, from), mut files)| {
            // Chain order: by the first record's seq; unreadable files last.
            files.sort_by_key(|f| f.recs.first().map_or(u64::MAX, |r| r.seq));
            host_report(host, from, files, key)
        })
        .collect();
    Report {
        key: key.map(|k| format!("{}+{}", k.name(), k.key_hash())),
        ok: hosts.iter().all(|h| h.ok),
        hosts,
    }
}

fn host_report(
    host: String,
    host_from: String,
    files: Vec<FileRead>,
    key: Option<&VerifierKey>,
) -> HostReport {
    let mut problems: Vec<String> = files.iter().filter_map(|f| f.error.clone()).collect();
    let paths: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
    let mut chain = ChainResult::default();
    // The first untrusted record: (file index, line) from the verifier.
    let mut broken_at: Option<(usize, u64)> = None;
    match verify_files(&paths, HeadCheck::Auto) {
        Ok(s) => {
            chain.intact = true;
            chain.tail = Some(s.tail.to_string());
        }
        Err(e) => {
            chain.error = Some(e.to_string());
            problems.push(format!("chain broken: {e}"));
            match &e {
                VerifyError::Broken { path, line, .. } => {
                    chain.file = Some(path.display().to_string());
                    chain.line = Some(*line);
                    if let Some(i) = paths.iter().position(|p| p == path) {
                        broken_at = Some((i, *line));
                    }
                }
                VerifyError::Io { path, .. } => {
                    chain.file = Some(path.display().to_string());
                    if let Some(i) = paths.iter().position(|p| p == path) {
                        broken_at = Some((i, 1));
                    }
                }
                // The end does not match the head: every record may be
                // genuine, but the log's end is not; trust stops at the
                // last record (nothing after it is known).
                _ => {}
            }
        }
    }
    let mut recs = Vec::new();
    for (i, f) in files.into_iter().enumerate() {
        for mut r in f.recs {
            if let Some((bi, bl)) = broken_at
                && (i > bi || (i == bi && r.line >= bl))
            {
                r.trusted = false;
            }
            recs.push(r);
        }
    }
    let scopes = account(&recs);
    let events = count_events(&recs);
    let (checkpoints, signatures) = check_signatures(&recs, key);
    for c in checkpoints.iter().filter(|c| c.status == "bad") {
        problems.push(format!(
            "checkpoint seq {}: bad signature: {}",
            c.seq,
            c.detail.as_deref().unwrap_or("-")
        ));
    }
    let origin = recs.first().map(|r| r.time_us);
    // The latest time, not the last record's: a clock may step back.
    let end = recs.iter().map(|r| r.time_us).max();
    let period = Period {
        start: origin.map(format_time),
        end: end.map(format_time),
        duration_us: match (origin, end) {
            (Some(a), Some(b)) => (b - a).max(0) as u64,
            _ => 0,
        },
    };
    let not_covered = scopes
        .first()
        .map(|s| {
            s.segments
                .iter()
                .filter(|g| g.state == "not_covered")
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let ok = problems.is_empty();
    let mut h = HostReport {
        host,
        host_from,
        files: paths.iter().map(|p| p.display().to_string()).collect(),
        records: recs.len() as u64,
        period,
        chain,
        problems,
        scopes,
        not_covered,
        timeline: timeline(&recs),
        events,
        checkpoints,
        signatures,
        conclusion: String::new(),
        ok,
    };
    h.conclusion = conclusion(&h, key.is_some());
    h
}

fn per_country(h: &HostReport, denied: bool) -> String {
    let parts: Vec<String> = h
        .events
        .by_country
        .iter()
        .map(|(c, v)| (c, if denied { v.denied } else { v.would_deny }))
        .filter(|(_, n)| *n > 0)
        .map(|(c, n)| format!("{c} {n}"))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// The one-line conclusion (see the docs' "The audit report").
fn conclusion(h: &HostReport, keyed: bool) -> String {
    let g = h.scopes.first();
    let mut parts = vec![format!(
        "Enforced {:.1}%, observed {:.1}%, not covered {:.1}% of {}",
        g.map_or(0.0, |g| g.enforced_pct),
        g.map_or(0.0, |g| g.observed_pct),
        g.map_or(0.0, |g| g.not_covered_pct),
        human(h.period.duration_us)
    )];
    parts.push(format!(
        "{} refusals{}, {} would-refusals{}",
        h.events.total.denied,
        per_country(h, true),
        h.events.total.would_deny,
        per_country(h, false)
    ));
    parts.push(if h.chain.intact {
        "chain intact".to_owned()
    } else {
        format!(
            "CHAIN BROKEN{}",
            match (&h.chain.file, h.chain.line) {
                (Some(f), Some(l)) => format!(" at {f}:{l}"),
                (Some(f), None) => format!(" at {f}"),
                _ => String::new(),
            }
        )
    });
    let s = &h.signatures;
    parts.push(if !keyed {
        format!("{} checkpoints, signatures not checked", s.checkpoints)
    } else if s.bad > 0 {
        format!(
            "{}/{} checkpoints verified, {} BAD",
            s.verified, s.checkpoints, s.bad
        )
    } else {
        format!("{}/{} checkpoints verified", s.verified, s.checkpoints)
    });
    let unreadable = h
        .problems
        .iter()
        .filter(|p| !p.starts_with("chain broken") && !p.starts_with("checkpoint seq"))
        .count();
    if unreadable > 0 {
        parts.push(format!("{unreadable} file(s) UNREADABLE"));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AgentStart, AgentStop, Checkpoint, Coverage, Gap, ModeChange};

    const T0: i64 = 1_800_000_000_000_000;

    fn rec(seq: u64, dt_ms: i64, kind: Kind) -> Rec {
        Rec {
            seq,
            line: seq,
            time_us: T0 + dt_ms * 1000,
            prev: String::new(),
            kind: Some(kind),
            trusted: true,
        }
    }
    fn start() -> Kind {
        Kind::AgentStart(AgentStart {
            version: "0".into(),
            pid: 1,
            pin_dir: "/p".into(),
            adopted: false,
            layout_version: 1,
        })
    }
    fn stop() -> Kind {
        Kind::AgentStop(AgentStop {
            reason: "sigterm".into(),
        })
    }
    fn cp(mode: &str) -> Kind {
        Kind::Checkpoint(Checkpoint {
            mode: mode.into(),
            policy_sha256: None,
            databases: Vec::new(),
            generation: 1,
            records_since_last: 0,
            note: None,
        })
    }
    fn mode(to: &str, cgroup: Option<&str>) -> Kind {
        Kind::ModeChange(ModeChange {
            from: "x".into(),
            to: to.into(),
            cgroup: cgroup.map(Into::into),
            uid: 0,
            gid: None,
            reason: "r".into(),
        })
    }
    fn coverage(scope: &str, event: &str) -> Kind {
        Kind::Coverage(Coverage {
            scope: scope.into(),
            event: event.into(),
            cause: "cgroup_removed".into(),
            links: Vec::new(),
            error: None,
        })
    }
    fn ms(us: u64) -> u64 {
        us / 1000
    }
    fn row<'a>(rows: &'a [ScopeShare], name: &str) -> &'a ScopeShare {
        rows.iter().find(|r| r.scope == name).expect("row")
    }

    #[test]
    fn mode_switches_at_exact_boundaries_split_the_time() {
        // start at 0, mode stated at 0 (same instant), enforce at 400.
        let recs = [
            rec(1, 0, start()),
            rec(2, 0, cp("observe")),
            rec(3, 400, mode("enforce", None)),
            rec(4, 1000, cp("enforce")),
        ];
        let rows = account(&recs);
        let g = row(&rows, GLOBAL_SCOPE);
        assert_eq!(
            (ms(g.enforced_us), ms(g.observed_us), ms(g.not_covered_us)),
            (600, 400, 0)
        );
        assert_eq!(g.enforced_pct, 60.0);
        assert_eq!(g.segments.len(), 2);
        assert_eq!(g.segments[0].to_us, 400_000);
        assert_eq!(g.segments[1].from_us, 400_000);
    }

    #[test]
    fn a_start_without_a_stop_is_a_crash_and_the_interval_before_it_is_not_covered() {
        let recs = [
            rec(1, 0, start()),
            rec(2, 0, cp("enforce")),
            rec(3, 100, cp("enforce")),
            // the agent died somewhere in 100..300
            rec(4, 300, start()),
            rec(5, 350, cp("enforce")),
            rec(6, 1000, stop()),
            rec(7, 1500, start()),
            rec(8, 1500, cp("enforce")),
            rec(9, 2000, cp("enforce")),
        ];
        let rows = account(&recs);
        let g = row(&rows, GLOBAL_SCOPE);
        // not covered: 100..300 crash, 300..350 mode unknown, 1000..1500 down.
        assert_eq!(ms(g.not_covered_us), 200 + 50 + 500);
        assert_eq!(ms(g.enforced_us), 100 + 650 + 500);
        let why: Vec<&str> = g
            .segments
            .iter()
            .filter(|s| s.state == "not_covered")
            .map(|s| s.why.as_str())
            .collect();
        assert_eq!(why, ["agent crashed", "mode unknown", "agent down"]);
    }

    #[test]
    fn a_gap_makes_the_interval_before_it_not_covered() {
        let gap = Kind::Gap(Gap {
            dropped: 5,
            after_seq: 2,
            kinds: BTreeMap::new(),
            first_time: "t".into(),
            last_time: "t".into(),
            error: "No space left on device".into(),
            bound_bytes: 1,
        });
        let recs = [
            rec(1, 0, start()),
            rec(2, 0, cp("enforce")),
            rec(3, 700, gap),
            rec(4, 1000, cp("enforce")),
        ];
        let g = row(&account(&recs), GLOBAL_SCOPE).clone();
        assert_eq!((ms(g.enforced_us), ms(g.not_covered_us)), (300, 700));
        assert_eq!(g.segments[0].why, "records dropped");
    }

    #[test]
    fn a_coverage_failure_uncovers_only_its_scope_until_repaired() {
        let recs = [
            rec(1, 0, start()),
            rec(2, 0, cp("enforce")),
            rec(3, 200, coverage("a.service", "failed")),
            rec(4, 500, coverage("a.service", "repaired")),
            rec(5, 600, mode("observe", Some("b.service"))),
            rec(6, 800, mode("none", Some("b.service"))),
            rec(7, 1000, cp("enforce")),
        ];
        let rows = account(&recs);
        let g = row(&rows, GLOBAL_SCOPE);
        assert_eq!(ms(g.enforced_us), 1000);
        let a = row(&rows, "a.service");
        assert_eq!((ms(a.enforced_us), ms(a.not_covered_us)), (700, 300));
        let b = row(&rows, "b.service");
        assert_eq!((ms(b.enforced_us), ms(b.observed_us)), (800, 200));
        // Every row adds up to the period.
        for r in &rows {
            assert_eq!(r.enforced_us + r.observed_us + r.not_covered_us, 1_000_000);
        }
    }

    #[test]
    fn records_after_a_broken_one_are_not_covered_and_not_counted() {
        let mut recs = vec![
            rec(1, 0, start()),
            rec(2, 0, cp("enforce")),
            rec(3, 400, cp("enforce")),
            rec(4, 1000, cp("enforce")),
        ];
        recs[3].trusted = false;
        let g = row(&account(&recs), GLOBAL_SCOPE).clone();
        assert_eq!((ms(g.enforced_us), ms(g.not_covered_us)), (400, 600));
        assert_eq!(g.segments[1].why, "chain broken");
    }

    #[test]
    fn time_before_the_first_start_is_agent_down_and_empty_logs_are_zero() {
        let recs = [
            rec(1, 0, stop()),
            rec(2, 100, start()),
            rec(3, 100, cp("observe")),
            rec(4, 200, stop()),
        ];
        let g = row(&account(&recs), GLOBAL_SCOPE).clone();
        assert_eq!((ms(g.observed_us), ms(g.not_covered_us)), (100, 100));
        let empty = account(&[]);
        assert_eq!(empty[0].enforced_pct, 0.0);
        assert!(empty[0].segments.is_empty());
    }

    #[test]
    fn a_clock_stepping_back_is_not_counted_twice() {
        let recs = [
            rec(1, 0, start()),
            rec(2, 0, cp("enforce")),
            rec(3, 1000, cp("enforce")),
            rec(4, 400, cp("enforce")),
            rec(5, 1500, cp("enforce")),
        ];
        let g = row(&account(&recs), GLOBAL_SCOPE).clone();
        assert_eq!(ms(g.enforced_us), 1500);
        assert_eq!(g.enforced_pct, 100.0);
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(1_250_000), "1.250 s");
        assert_eq!(human(71), "71 µs");
        assert_eq!(human(65_000_000), "1 min 5 s");
        assert_eq!(human((3 * 86_400 + 4 * 3600) * 1_000_000), "3 d 4 h");
        assert_eq!(format_time(T0), "2027-01-15T08:00:00.000000Z");
        assert_eq!(parse_time("2027-01-15T08:00:00.000000Z"), Some(T0));
    }

    #[test]
    fn base_names_drop_rotation_suffixes() {
        assert_eq!(base_name(Path::new("/x/audit.log.1")), "audit.log");
        assert_eq!(base_name(Path::new("/x/audit.log")), "audit.log");
        assert_eq!(base_name(Path::new("db1.jsonl")), "db1.jsonl");
    }
}
