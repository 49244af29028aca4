//! `enforcer whatif`: replays the destinations an agent recorded (events
//! files, audit logs) against a candidate config and its GeoIP sources, and
//! says which would change between approved (allowed, exempt) and refused
//! (denied, would_deny), offline: no kernel, no agent.
//!
//! The candidate side is decided by [`decide`], the datapath's decision
//! (`enforcer-ebpf/src/decide.rs`) taken in userspace over the
//! [`CompiledPolicy`] the agent would write into the kernel for that config
//! ([`CompiledPolicy::compile`]): the folded exception, site and built-in
//! rules by longest-prefix match, then the GeoIP table, then the approval
//! table ([`crate::policy::approves`]), then the mode (global, or the
//! deepest per-cgroup override of the config that contains the event's
//! cgroup). Mode changes made at run time with `enforcer mode` are not
//! part of a config file and are not replayed.
//!
//! The "before" side is the verdict recorded with each event, or, with
//! `--current CONFIG`, that config's decision (for recordings made under an
//! older policy).
//!
//! Allowed traffic: the agent writes events for refused and would-refuse
//! decisions only. The approved side comes from the agent's sample of
//! allowed destinations (`--sample`, the `[events] allowed_file` that
//! `crate::allowed_sample` writes): bounded (the kernel keeps at most
//! [`enforcer_common::ALLOWED_SAMPLE_CAPACITY`] destinations at a time,
//! least recently decided evicted first; the agent appends every 10 s), so
//! a destination used rarely between two passes can be missing, and the
//! report says the approved side is sampled. Without a sample, destinations
//! allowed today that a candidate would refuse are visible only when
//! `--current` approves something the recording refused, and the report
//! says the approved side is not covered.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    io::{BufRead as _, BufReader},
    net::IpAddr,
    path::{Path, PathBuf},
};

use enforcer_common::{Mode, Outcome, RuleKind, Source, UNKNOWN_COUNTRY};
use geoip::CountryCode;
use serde::Serialize;
use serde_json::Value;

use crate::{
    config::Config,
    policy::{CompiledPolicy, approves},
};

/// An input whose lines could not be read at all (missing, unreadable).
#[derive(Debug, thiserror::Error)]
#[error("{kind} {path}: {source}")]
pub struct InputError {
    pub kind: InputKind,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Which kind of recording a file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    /// The agent's events file (`[events] file`).
    Events,
    /// The agent's audit log: its `event` records.
    Audit,
    /// The agent's sample of allowed destinations (`[events] allowed_file`).
    Sample,
}

impl fmt::Display for InputKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InputKind::Events => "events file",
            InputKind::Audit => "audit log",
            InputKind::Sample => "allowed sample",
        })
    }
}

/// Approved or not: what a whatif compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// `allowed` or `exempt`.
    Approved,
    /// `denied` or `would_deny`.
    Refused,
}

impl Class {
    pub fn of(outcome: Outcome) -> Class {
        match outcome {
            Outcome::Allowed | Outcome::Exempt => Class::Approved,
            Outcome::Denied | Outcome::WouldDeny => Class::Refused,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Class::Approved => "approved",
            Class::Refused => "refused",
        }
    }
}

/// The userspace decision for one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    pub country: Option<CountryCode>,
    pub source: Source,
    pub mode: Mode,
}

/// A compiled config, ready to decide addresses.
pub struct Decider {
    pub config: Config,
    pub policy: CompiledPolicy,
    /// The config's overrides as absolute cgroup paths, deepest last.
    overrides: Vec<(PathBuf, Mode)>,
}

/// Where relative cgroup paths of a config are anchored (the agent asks
/// the mount table; events name absolute paths under it).
const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

impl Decider {
    /// Compiles `config` as the agent would.
    pub fn new(config: Config) -> Result<Decider, crate::policy::PolicyError> {
        let policy = CompiledPolicy::compile(&config)?;
        Ok(Self::from_parts(config, policy))
    }

    pub fn from_parts(config: Config, policy: CompiledPolicy) -> Decider {
        let mount = crate::paths::cgroup2_mount().unwrap_or_else(|_| PathBuf::from(CGROUP_MOUNT));
        let overrides = config
            .overrides
            .iter()
            .map(|o| {
                let p = if o.cgroup.is_absolute() {
                    o.cgroup.clone()
                } else {
                    mount.join(&o.cgroup)
                };
                (p, o.mode)
            })
            .collect();
        Decider {
            config,
            policy,
            overrides,
        }
    }

    /// The mode for a process in `cgroup` (absolute path, when recorded):
    /// the deepest override containing it, else the global mode.
    pub fn mode_for(&self, cgroup: Option<&Path>) -> Mode {
        cgroup
            .and_then(|cg| {
                self.overrides
                    .iter()
                    .filter(|(p, _)| cg.starts_with(p))
                    .max_by_key(|(p, _)| p.components().count())
                    .map(|(_, m)| *m)
            })
            .unwrap_or(self.config.mode)
    }

    /// decide.rs in userspace: see the module documentation.
    pub fn decide(&self, ip: IpAddr, cgroup: Option<&Path>) -> Decision {
        // `Dest::from_v6`: an IPv4-mapped address is decided as IPv4.
        let ip = match ip {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let rule = match ip {
            IpAddr::V4(a) => self
                .policy
                .rules_v4
                .iter()
                .filter(|(n, _)| n.contains(a))
                .max_by_key(|(n, _)| n.prefix())
                .map(|(_, r)| *r),
            IpAddr::V6(a) => self
                .policy
                .rules_v6
                .iter()
                .filter(|(n, _)| n.contains(a))
                .max_by_key(|(n, _)| n.prefix())
                .map(|(_, r)| *r),
        };
        let geo = || self.policy.geo.lookup(ip).map(|(_, c)| c);
        let approval = &self.policy.approval;
        let (approved, country, source) =
            match rule.and_then(|r| RuleKind::from_raw(r.kind as u32).map(|k| (k, r))) {
                Some((RuleKind::Deny, _)) => (Some(false), geo(), Source::DenyException),
                Some((RuleKind::Allow, _)) => (None, None, Source::AllowException),
                Some((RuleKind::Builtin, _)) => (None, None, Source::Builtin),
                Some((RuleKind::Site, r)) => {
                    let country = (r.country != UNKNOWN_COUNTRY)
                        .then(|| enforcer_common::country::code(r.country))
                        .flatten()
                        .and_then(CountryCode::new);
                    (Some(approves(approval, country)), country, Source::Site)
                }
                None => {
                    let country = geo();
                    let source = if country.is_some() {
                        Source::Geoip
                    } else {
                        Source::Unknown
                    };
                    (Some(approves(approval, country)), country, source)
                }
            };
        let mode = self.mode_for(cgroup);
        let outcome = match approved {
            None => Outcome::Exempt,
            Some(true) => Outcome::Allowed,
            Some(false) => match mode {
                Mode::Enforce => Outcome::Denied,
                Mode::Observe => Outcome::WouldDeny,
            },
        };
        Decision {
            outcome,
            country,
            source,
            mode,
        }
    }
}

/// One distinct destination seen, per scope entry.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub events: u64,
    pub hooks: BTreeSet<String>,
    pub ports: BTreeSet<u16>,
    pub first: Option<String>,
    pub last: Option<String>,
    /// Recorded verdicts and how many events had each.
    pub verdicts: BTreeMap<String, u64>,
    pub modes: BTreeSet<String>,
    pub countries: BTreeSet<String>,
    /// The last cgroup recorded (for the candidate's per-cgroup modes).
    pub cgroup: Option<String>,
    /// Sample lines: `(first_seen, verdict)` of a kernel sample entry ->
    /// its largest count (a later line of the same entry supersedes an
    /// earlier one: counts are totals since `first_seen`).
    pub sampled: BTreeMap<(String, String), u64>,
}

impl Seen {
    /// Approved decisions in the sample (uncached ones: a lower bound).
    pub fn sampled_decisions(&self) -> u64 {
        self.sampled.values().sum()
    }

    /// Events and sampled decisions by verdict.
    pub fn verdict_counts(&self) -> BTreeMap<String, u64> {
        let mut out = self.verdicts.clone();
        for ((_, verdict), n) in &self.sampled {
            *out.entry(verdict.clone()).or_default() += n;
        }
        out
    }
}

/// A line that was skipped.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Unreadable {
    pub file: PathBuf,
    pub line: u64,
    pub error: String,
}

/// Everything the inputs recorded.
#[derive(Debug, Default)]
pub struct Recording {
    /// `(destination, scope)`; scope `None` when not recorded (audit logs,
    /// or a cgroup gone before the event was read).
    pub seen: BTreeMap<(IpAddr, Option<String>), Seen>,
    pub unreadable: Vec<Unreadable>,
    pub events: u64,
    /// Lines read from allowed samples.
    pub sample_lines: u64,
    /// Whether any allowed sample was read (even an empty one).
    pub sampled: bool,
    /// Audit records of other kinds, passed over.
    pub other_records: u64,
}

/// The fields of one event line that whatif uses.
struct Line {
    dst: IpAddr,
    verdict: Outcome,
    time: Option<String>,
    hook: Option<String>,
    dport: Option<u16>,
    mode: Option<String>,
    country: Option<String>,
    scope: Option<String>,
    cgroup: Option<String>,
    /// Sample lines only: the entry's `first_seen`, `last_seen` and count.
    sample: Option<(String, Option<String>, u64)>,
}

fn parse_line(v: &Value, kind: InputKind) -> Result<Option<Line>, String> {
    let obj = v.as_object().ok_or("not a JSON object")?;
    if kind == InputKind::Audit {
        match obj.get("kind").and_then(Value::as_str) {
            Some("event") => {}
            Some(_) => return Ok(None),
            None => return Err("no \"kind\" (not an audit record)".into()),
        }
    }
    let s = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
    let dst = s("dst").ok_or("no \"dst\"")?;
    let dst: IpAddr = dst
        .parse()
        .map_err(|_| format!("\"dst\" {dst:?} is not an IP address"))?;
    let verdict = s("verdict").ok_or("no \"verdict\"")?;
    let verdict = Outcome::ALL
        .iter()
        .copied()
        .find(|o| o.label() == verdict)
        .ok_or_else(|| format!("\"verdict\" {verdict:?} is not a verdict"))?;
    let sample = if kind == InputKind::Sample {
        if Class::of(verdict) != Class::Approved {
            return Err(format!(
                "\"verdict\" {:?}: a sample holds allowed and exempt decisions only",
                verdict.label()
            ));
        }
        let count = obj
            .get("count")
            .ok_or("no \"count\"")?
            .as_u64()
            .ok_or("\"count\" is not a whole number")?;
        let first = s("first_seen").ok_or("no \"first_seen\"")?;
        Some((first, s("last_seen"), count))
    } else {
        None
    };
    let dport = match obj.get("dport") {
        None | Some(Value::Null) => None,
        Some(p) => Some(
            p.as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| format!("\"dport\" {p} is not a port"))?,
        ),
    };
    Ok(Some(Line {
        dst,
        verdict,
        time: match kind {
            InputKind::Events => s("time"),
            InputKind::Audit => s("event_time").or_else(|| s("time")),
            // When the line was written; the entry's own times are in
            // `sample`.
            InputKind::Sample => None,
        },
        hook: s("hook"),
        dport,
        mode: s("mode"),
        country: s("country"),
        scope: s("scope"),
        cgroup: s("cgroup"),
        sample,
    }))
}

impl Recording {
    /// Reads one input file; a line that does not parse is counted in
    /// [`Recording::unreadable`] and skipped. Errors only when the file
    /// cannot be read.
    pub fn read(&mut self, path: &Path, kind: InputKind) -> Result<(), InputError> {
        let err = |source| InputError {
            kind,
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(err)?;
        if kind == InputKind::Sample {
            self.sampled = true;
        }
        // Lines are read as bytes: one line that is not UTF-8 is a
        // malformed line, not the end of the file.
        let mut reader = BufReader::new(file);
        let mut buf = Vec::new();
        let mut number = 0u64;
        loop {
            buf.clear();
            let n = reader.read_until(b'\n', &mut buf).map_err(err)?;
            if n == 0 {
                break;
            }
            number += 1;
            let text = String::from_utf8_lossy(&buf);
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            let parsed = serde_json::from_str::<Value>(text)
                .map_err(|e| format!("not JSON ({e})"))
                .and_then(|v| parse_line(&v, kind));
            match parsed {
                Ok(Some(line)) => self.add(line),
                Ok(None) => self.other_records += 1,
                Err(error) => self.unreadable.push(Unreadable {
                    file: path.to_owned(),
                    line: number,
                    error,
                }),
            }
        }
        Ok(())
    }

    fn add(&mut self, l: Line) {
        let e = self.seen.entry((l.dst, l.scope)).or_default();
        let times = match l.sample {
            Some((first, last, count)) => {
                self.sample_lines += 1;
                let n = e
                    .sampled
                    .entry((first.clone(), l.verdict.label().to_owned()))
                    .or_default();
                *n = (*n).max(count);
                [Some(first), last]
            }
            None => {
                self.events += 1;
                e.events += 1;
                *e.verdicts.entry(l.verdict.label().to_owned()).or_default() += 1;
                [l.time.clone(), l.time]
            }
        };
        e.hooks.extend(l.hook);
        e.ports.extend(l.dport);
        for t in times.into_iter().flatten() {
            // The agent writes RFC 3339 UTC with a fixed number of digits:
            // the text order is the time order.
            if e.first.as_ref().is_none_or(|f| &t < f) {
                e.first = Some(t.clone());
            }
            if e.last.as_ref().is_none_or(|f| &t > f) {
                e.last = Some(t);
            }
        }
        e.modes.extend(l.mode);
        e.countries.extend(l.country);
        if l.cgroup.is_some() {
            e.cgroup = l.cgroup;
        }
    }
}

/// One destination's before and after.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub dst: IpAddr,
    pub scope: Option<String>,
    pub events: u64,
    /// Approved decisions of this destination in the allowed sample.
    pub sampled: u64,
    pub hooks: Vec<String>,
    pub ports: Vec<u16>,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    /// The recorded verdicts (`verdict -> events`, plus sampled
    /// decisions for `allowed` and `exempt`).
    pub recorded: BTreeMap<String, u64>,
    pub recorded_country: Vec<String>,
    pub before: Class,
    /// With `--current`: that config's verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_verdict: Option<&'static str>,
    pub after: Class,
    pub candidate_verdict: &'static str,
    pub candidate_country: String,
    pub candidate_source: &'static str,
}

impl Row {
    pub fn changed(&self) -> bool {
        self.before != self.after
    }
}

/// A group of changed destinations: one direction, one country (the
/// candidate's), one scope entry.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Group {
    pub from: Class,
    pub to: Class,
    pub country: String,
    pub scope: Option<String>,
    pub destinations: u64,
    pub events: u64,
    /// Their approved decisions in the allowed sample.
    pub sampled: u64,
}

/// `(from, to, country, scope)`.
type GroupKey = (Class, Class, String, Option<String>);

/// The whole answer.
#[derive(Debug, Serialize)]
pub struct Report {
    pub rows: Vec<Row>,
    pub groups: Vec<Group>,
    pub destinations_seen: u64,
    pub changed: u64,
    pub approved_to_refused: u64,
    pub refused_to_approved: u64,
    pub unchanged: u64,
    /// Destinations refused before and after whose refusal changes between
    /// would_deny and denied (the candidate's mode).
    pub mode_changes: u64,
    pub recorded_modes: Vec<String>,
    pub candidate_mode: &'static str,
}

/// The label of a country (or `unknown`).
pub fn country_label(c: Option<CountryCode>) -> String {
    c.map_or_else(|| "unknown".to_owned(), |c| c.to_string())
}

/// The before side of a destination: the recorded verdict (the one most
/// of its events had; `refused` wins a tie: whatif errs towards showing a
/// change), or `current`'s decision.
fn before(seen: &Seen, ip: IpAddr, current: Option<&Decider>) -> (Class, Option<Outcome>) {
    if let Some(d) = current {
        let o = d.decide(ip, seen.cgroup.as_deref().map(Path::new)).outcome;
        return (Class::of(o), Some(o));
    }
    let mut by_class: BTreeMap<Class, u64> = BTreeMap::new();
    for (v, n) in &seen.verdict_counts() {
        if let Some(o) = Outcome::ALL.iter().find(|o| o.label() == v) {
            *by_class.entry(Class::of(*o)).or_default() += n;
        }
    }
    let approved = by_class.get(&Class::Approved).copied().unwrap_or(0);
    let refused = by_class.get(&Class::Refused).copied().unwrap_or(0);
    let class = if approved > refused {
        Class::Approved
    } else {
        Class::Refused
    };
    (class, None)
}

impl Report {
    /// Decides every destination of `rec` under `candidate` (and
    /// `current`, when given) and groups the changes.
    pub fn build(rec: &Recording, candidate: &Decider, current: Option<&Decider>) -> Report {
        let mut rows = Vec::with_capacity(rec.seen.len());
        let mut mode_changes = 0;
        let mut recorded_modes = BTreeSet::new();
        for ((ip, scope), seen) in &rec.seen {
            recorded_modes.extend(seen.modes.iter().cloned());
            let (before, current_outcome) = before(seen, *ip, current);
            let d = candidate.decide(*ip, seen.cgroup.as_deref().map(Path::new));
            let after = Class::of(d.outcome);
            if before == Class::Refused && after == Class::Refused {
                // Was it refused under the other mode?
                let was = match current_outcome {
                    Some(o) => BTreeSet::from([o.label().to_owned()]),
                    None => seen.verdicts.keys().cloned().collect(),
                };
                if !was.contains(d.outcome.label()) {
                    mode_changes += 1;
                }
            }
            rows.push(Row {
                dst: *ip,
                scope: scope.clone(),
                events: seen.events,
                sampled: seen.sampled_decisions(),
                hooks: seen.hooks.iter().cloned().collect(),
                ports: seen.ports.iter().copied().collect(),
                first_seen: seen.first.clone(),
                last_seen: seen.last.clone(),
                recorded: seen.verdict_counts(),
                recorded_country: seen.countries.iter().cloned().collect(),
                before,
                current_verdict: current_outcome.map(Outcome::label),
                after,
                candidate_verdict: d.outcome.label(),
                candidate_country: country_label(d.country),
                candidate_source: d.source.label(),
            });
        }
        let mut groups: BTreeMap<GroupKey, (u64, u64, u64)> = BTreeMap::new();
        for r in rows.iter().filter(|r| r.changed()) {
            let g = groups
                .entry((
                    r.before,
                    r.after,
                    r.candidate_country.clone(),
                    r.scope.clone(),
                ))
                .or_default();
            g.0 += 1;
            g.1 += r.events;
            g.2 += r.sampled;
        }
        let mut groups: Vec<Group> = groups
            .into_iter()
            .map(
                |((from, to, country, scope), (destinations, events, sampled))| Group {
                    from,
                    to,
                    country,
                    scope,
                    destinations,
                    events,
                    sampled,
                },
            )
            .collect();
        // Largest first: destinations, then events and sampled decisions;
        // ties in key order.
        groups.sort_by(|a, b| {
            (b.destinations, b.events + b.sampled)
                .cmp(&(a.destinations, a.events + a.sampled))
                .then_with(|| (a.from, &a.country, &a.scope).cmp(&(b.from, &b.country, &b.scope)))
        });
        rows.sort_by(|a, b| {
            b.changed()
                .cmp(&a.changed())
                .then((b.events + b.sampled).cmp(&(a.events + a.sampled)))
                .then_with(|| (a.dst, &a.scope).cmp(&(b.dst, &b.scope)))
        });
        let count = |f: &dyn Fn(&Row) -> bool| rows.iter().filter(|r| f(r)).count() as u64;
        let approved_to_refused =
            count(&|r| r.before == Class::Approved && r.after == Class::Refused);
        let refused_to_approved =
            count(&|r| r.before == Class::Refused && r.after == Class::Approved);
        Report {
            destinations_seen: rows.len() as u64,
            changed: approved_to_refused + refused_to_approved,
            unchanged: count(&|r| !r.changed()),
            approved_to_refused,
            refused_to_approved,
            mode_changes,
            recorded_modes: recorded_modes.into_iter().collect(),
            candidate_mode: candidate.config.mode.label(),
            rows,
            groups,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Origin;

    fn decider(toml: &str, db: &Path) -> Decider {
        // Top-level keys first, then the tables, overrides (if any) last.
        let (top, tail) = toml
            .split_once("[[")
            .map_or((toml, String::new()), |(t, r)| (t, format!("[[{r}")));
        let text = format!(
            "{top}\n[geoip]\nsources = [{:?}]\n[scope]\ncgroups = [\"x\"]\n{tail}",
            db.display().to_string()
        );
        let config = Config::parse(&text, Origin::Embedded).expect("test config");
        Decider::new(config).expect("compile")
    }

    fn db(dir: &Path) -> PathBuf {
        let p = dir.join("db.csv");
        std::fs::write(
            &p,
            "cidr,country\n198.51.100.0/25,DE\n198.51.100.128/25,US\n2001:db8::/48,FR\n",
        )
        .expect("write db");
        p
    }

    #[test]
    fn the_decision_follows_rules_geoip_approval_and_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = db(dir.path());
        let d = decider(
            "mode = \"observe\"\napproved = [\"DE\"]\nunknown = \"deny\"\n\
             allow = [\"198.51.100.200/32\"]\ndeny = [\"198.51.100.5/32\"]\n\
             [[scope.override]]\ncgroup = \"/sys/fs/cgroup/x\"\nmode = \"enforce\"\n",
            &db,
        );
        let at = |ip: &str, cg: Option<&str>| {
            let d = d.decide(ip.parse().expect("ip"), cg.map(Path::new));
            (d.outcome, country_label(d.country), d.source)
        };
        assert_eq!(
            at("198.51.100.1", None),
            (Outcome::Allowed, "DE".into(), Source::Geoip)
        );
        assert_eq!(
            at("198.51.100.130", None),
            (Outcome::WouldDeny, "US".into(), Source::Geoip)
        );
        assert_eq!(
            at("198.51.100.130", Some("/sys/fs/cgroup/x/y")).0,
            Outcome::Denied
        );
        assert_eq!(
            at("198.51.100.5", None),
            (Outcome::WouldDeny, "DE".into(), Source::DenyException)
        );
        assert_eq!(at("198.51.100.200", None).0, Outcome::Exempt);
        assert_eq!(at("10.1.2.3", None).0, Outcome::Exempt);
        assert_eq!(
            at("::ffff:198.51.100.1", None),
            (Outcome::Allowed, "DE".into(), Source::Geoip)
        );
        assert_eq!(
            at("2001:db8::1", None),
            (Outcome::WouldDeny, "FR".into(), Source::Geoip)
        );
        assert_eq!(
            at("198.18.0.1", None),
            (Outcome::WouldDeny, "unknown".into(), Source::Unknown)
        );
    }

    #[test]
    fn malformed_lines_are_counted_with_their_line_and_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("events.jsonl");
        std::fs::write(
            &f,
            "{\"dst\":\"198.51.100.130\",\"verdict\":\"would_deny\",\"scope\":\"a\",\"time\":\"2026-01-01T00:00:02Z\"}\n\
             not json\n\
             \n\
             {\"dst\":\"nope\",\"verdict\":\"denied\"}\n\
             {\"dst\":\"198.51.100.130\",\"verdict\":\"would_deny\",\"scope\":\"a\",\"time\":\"2026-01-01T00:00:01Z\"}\n\
             {\"dst\":\"198.51.100.130\",\"verdict\":\"maybe\"}\n\
             \u{ff}\u{fe}\n",
        )
        .expect("write");
        // One invalid UTF-8 line too.
        let mut bytes = std::fs::read(&f).expect("read");
        bytes.extend_from_slice(b"\xff\xfe{\n");
        std::fs::write(&f, bytes).expect("write");
        let mut rec = Recording::default();
        rec.read(&f, InputKind::Events).expect("read");
        let lines: Vec<u64> = rec.unreadable.iter().map(|u| u.line).collect();
        assert_eq!(lines, vec![2, 4, 6, 7, 8], "{:?}", rec.unreadable);
        assert_eq!(rec.events, 2);
        let seen = &rec.seen[&("198.51.100.130".parse().expect("ip"), Some("a".into()))];
        assert_eq!(seen.first.as_deref(), Some("2026-01-01T00:00:01Z"));
        assert_eq!(seen.last.as_deref(), Some("2026-01-01T00:00:02Z"));
        let missing = rec.read(&dir.path().join("absent"), InputKind::Audit);
        let e = missing.expect_err("a missing file is an error");
        assert!(e.to_string().contains("audit log") && e.to_string().contains("absent"));
    }

    #[test]
    fn only_changes_of_class_are_reported_and_grouped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = db(dir.path());
        let f = dir.path().join("events.jsonl");
        let line = |dst: &str, scope: &str| {
            format!(
                "{{\"dst\":\"{dst}\",\"verdict\":\"would_deny\",\"mode\":\"observe\",\"scope\":\"{scope}\"}}\n"
            )
        };
        let text = [
            line("198.51.100.130", "a"),
            line("198.51.100.131", "a"),
            line("198.51.100.131", "a"),
            line("198.51.100.131", "b"),
            line("2001:db8::1", "a"),
            line("198.18.0.1", "b"),
        ]
        .concat();
        std::fs::write(&f, text).expect("write");
        let mut rec = Recording::default();
        rec.read(&f, InputKind::Events).expect("read");
        let cand = decider(
            "mode = \"enforce\"\napproved = [\"DE\", \"US\"]\nunknown = \"deny\"\n",
            &db,
        );
        let r = Report::build(&rec, &cand, None);
        assert_eq!(r.destinations_seen, 5);
        assert_eq!(r.refused_to_approved, 3);
        assert_eq!(r.approved_to_refused, 0);
        assert_eq!(r.unchanged, 2);
        // FR and unknown stay refused, now denied instead of would_deny.
        assert_eq!(r.mode_changes, 2);
        let g: Vec<_> = r
            .groups
            .iter()
            .map(|g| {
                (
                    g.country.as_str(),
                    g.scope.as_deref(),
                    g.destinations,
                    g.events,
                )
            })
            .collect();
        assert_eq!(g, vec![("US", Some("a"), 2, 3), ("US", Some("b"), 1, 1)]);

        // --current approving FR: 2001:db8::1 goes approved -> refused.
        let current = decider(
            "mode = \"observe\"\napproved = [\"DE\", \"FR\"]\nunknown = \"deny\"\n",
            &db,
        );
        let r = Report::build(&rec, &cand, Some(&current));
        assert_eq!(r.approved_to_refused, 1);
        assert_eq!(r.refused_to_approved, 3);
        assert!(
            r.rows
                .iter()
                .any(|x| x.dst.to_string() == "2001:db8::1" && x.changed())
        );
    }

    #[test]
    fn a_sample_is_the_approved_side_and_its_entries_count_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = db(dir.path());
        let f = dir.path().join("events.jsonl.allowed.jsonl");
        let line = |dst: &str, verdict: &str, first: &str, count: u64| {
            format!(
                "{{\"time\":\"2026-01-01T00:01:00.000000Z\",\"hook\":\"connect4\",\"family\":\"ipv4\",\
                 \"dst\":\"{dst}\",\"country\":\"DE\",\"verdict\":\"{verdict}\",\"reason\":\"geoip\",\
                 \"scope\":\"a\",\"count\":{count},\"first_seen\":\"{first}\",\
                 \"last_seen\":\"2026-01-01T00:00:59.000000Z\"}}\n"
            )
        };
        let text = [
            // One entry written twice as it grew: 5 decisions, not 7.
            line("198.51.100.1", "allowed", "2026-01-01T00:00:01.000000Z", 2),
            line("198.51.100.1", "allowed", "2026-01-01T00:00:01.000000Z", 5),
            // Evicted and back: a new entry, counted on top.
            line("198.51.100.1", "allowed", "2026-01-01T00:00:30.000000Z", 1),
            line("198.51.100.2", "allowed", "2026-01-01T00:00:02.000000Z", 1),
            line("10.1.2.3", "exempt", "2026-01-01T00:00:03.000000Z", 4),
            // Refused decisions are never in a sample; no count.
            line(
                "198.51.100.130",
                "would_deny",
                "2026-01-01T00:00:04.000000Z",
                1,
            ),
            "{\"dst\":\"198.51.100.3\",\"verdict\":\"allowed\",\"first_seen\":\"x\"}\n".to_owned(),
        ]
        .concat();
        std::fs::write(&f, text).expect("write");
        let mut rec = Recording::default();
        rec.read(&f, InputKind::Sample).expect("read");
        assert!(rec.sampled);
        assert_eq!(rec.sample_lines, 5);
        assert_eq!(rec.events, 0, "sample lines are not events");
        let errors: Vec<_> = rec
            .unreadable
            .iter()
            .map(|u| (u.line, u.error.as_str()))
            .collect();
        assert_eq!(
            errors,
            vec![
                (
                    6,
                    "\"verdict\" \"would_deny\": a sample holds allowed and exempt decisions only"
                ),
                (7, "no \"count\""),
            ]
        );
        let de = &rec.seen[&("198.51.100.1".parse().expect("ip"), Some("a".into()))];
        assert_eq!(de.sampled_decisions(), 6);
        assert_eq!(de.first.as_deref(), Some("2026-01-01T00:00:01.000000Z"));

        // The candidate approves nothing of DE any more: both DE
        // destinations go approved -> refused; the exempt one stays.
        let cand = decider(
            "mode = \"enforce\"\napproved = [\"US\"]\nunknown = \"deny\"\n",
            &db,
        );
        let r = Report::build(&rec, &cand, None);
        assert_eq!(r.destinations_seen, 3);
        assert_eq!(r.approved_to_refused, 2);
        assert_eq!(r.refused_to_approved, 0);
        assert_eq!(r.unchanged, 1);
        let g: Vec<_> = r
            .groups
            .iter()
            .map(|g| {
                (
                    g.from,
                    g.to,
                    g.country.as_str(),
                    g.scope.as_deref(),
                    g.destinations,
                    g.sampled,
                )
            })
            .collect();
        assert_eq!(
            g,
            vec![(Class::Approved, Class::Refused, "DE", Some("a"), 2, 7)]
        );
        // A candidate that still approves DE changes nothing.
        let same = decider(
            "mode = \"enforce\"\napproved = [\"DE\"]\nunknown = \"deny\"\n",
            &db,
        );
        assert_eq!(Report::build(&rec, &same, None).changed, 0);
    }
}
