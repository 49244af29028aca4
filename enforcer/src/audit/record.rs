//! What an audit record states: one [`Kind`] per record, its fields
//! written after the envelope (`seq`, `time`, `prev`, `kind`).
//!
//! Extending: a new kind, or a new optional field of a kind, never breaks
//! an older verifier: it checks the envelope of every record and reads
//! the fields of the kinds it knows (ignoring fields it does not know).
//! Removing or renaming a field of a known kind would: don't.

use serde::{Deserialize, Serialize};

use crate::events::EventRecord;

/// A record's kind and its fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kind {
    AgentStart(AgentStart),
    AgentStop(AgentStop),
    ModeChange(ModeChange),
    PolicyLoad(PolicyLoad),
    Event(AuditEvent),
    EventsSuppressed(EventsSuppressed),
    Checkpoint(Checkpoint),
    /// Written by [`super::AuditLog::open`] after it cut off an incomplete
    /// last line.
    Recovered(Recovered),
    /// `enforcer uninstall`: enforcement is about to be removed.
    Uninstall(Uninstall),
    /// A scope entry's coverage changed (see `agent::coverage`).
    Coverage(Coverage),
    /// Records that could not be written (the disk was full beyond the
    /// writer's memory bound) and were dropped: chained in where they
    /// would have been, once writing works again.
    Gap(Gap),
    /// The first record of a log file that continues the chain of an
    /// earlier one (the log was rotated, moved or deleted).
    Continued(Continued),
    /// The reload guard held new GeoIP data: it would flip more address
    /// space than `geoip.max_flip` allows; nothing was applied.
    ReloadHeld(ReloadHeld),
    /// `enforcer reload --accept-change` applied data beyond the bound.
    ReloadAccepted(ReloadAccepted),
}

/// Every kind name [`Kind`] knows, as written in `kind`.
pub(super) const KNOWN_KINDS: &[&str] = &[
    "agent_start",
    "agent_stop",
    "mode_change",
    "policy_load",
    "event",
    "events_suppressed",
    "checkpoint",
    "recovered",
    "uninstall",
    "coverage",
    "gap",
    "continued",
    "reload_held",
    "reload_accepted",
];

impl Kind {
    /// The `kind` value.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::AgentStart(_) => "agent_start",
            Kind::AgentStop(_) => "agent_stop",
            Kind::ModeChange(_) => "mode_change",
            Kind::PolicyLoad(_) => "policy_load",
            Kind::Event(_) => "event",
            Kind::EventsSuppressed(_) => "events_suppressed",
            Kind::Checkpoint(_) => "checkpoint",
            Kind::Recovered(_) => "recovered",
            Kind::Uninstall(_) => "uninstall",
            Kind::Coverage(_) => "coverage",
            Kind::Gap(_) => "gap",
            Kind::Continued(_) => "continued",
            Kind::ReloadHeld(_) => "reload_held",
            Kind::ReloadAccepted(_) => "reload_accepted",
        }
    }
}

/// `enforcer uninstall` is about to detach every program and remove every
/// pinned map: written before anything is removed, so the log says who
/// turned enforcement off and why even when the removal then fails half
/// way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uninstall {
    /// The caller's real uid and gid (under sudo: root's; the reason should
    /// name the person).
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    pub pin_dir: String,
    /// `--reason`, required.
    pub reason: String,
}

/// Records the writer dropped because they could not be written and its
/// memory bound ([`super::MAX_PENDING`]) was reached. Dropped records were
/// never numbered: the gap record takes the next sequence number after
/// `after_seq`, so the chain itself has no hole (an older verifier still
/// checks it) and this record states what is missing there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// How many records were dropped.
    pub dropped: u64,
    /// They would have followed the record with this sequence number.
    pub after_seq: u64,
    /// The dropped records by kind.
    pub kinds: std::collections::BTreeMap<String, u64>,
    /// When the first and the last of them were made (RFC 3339 UTC).
    pub first_time: String,
    pub last_time: String,
    /// The write error that made them pile up (e.g. "No space left on
    /// device").
    pub error: String,
    /// The bound on the bytes of records waiting to be written.
    pub bound_bytes: u64,
}

/// The first record of a log file that continues the chain of another one:
/// its `seq` and `prev` follow that file's last record, so `enforcer audit
/// verify OLD NEW` checks the two as one chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Continued {
    /// The previous file as the agent last knew it (where a rename took it,
    /// ending in ` (deleted)` when it was deleted); absent when the agent
    /// found only a head file at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_file: Option<String>,
    /// The previous file's last record: always this record's `seq - 1` and
    /// `prev` (the verifier checks that).
    pub previous_seq: u64,
    pub previous_hash: String,
    /// Why a new file: `renamed`, `deleted` (the path had another file or
    /// none), or `missing_at_start` (the head file records records the
    /// path no longer holds).
    pub cause: String,
}

/// A scope entry (a configured cgroup or interface) was covered again, is
/// waiting to exist, or could not be covered: what an auditor needs to
/// tell "enforced all along" from "enforced except between these records".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    /// The configured entry: a cgroup path or an interface name.
    pub scope: String,
    /// `repaired` (programs attached again), `waiting` (the entry does not
    /// exist: nothing to cover until it is created), or `failed`.
    pub event: String,
    /// Why: `cgroup_created`, `cgroup_recreated`, `cgroup_removed`,
    /// `interface_created`, `interface_recreated`, `interface_removed`,
    /// `link_detached`, `pin_deleted`, `override_cgroup_changed`.
    pub cause: String,
    /// The links attached or pinned again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A reload the guard held (see `crate::flip`): what the new data would
/// flip, the bound, and both data versions by hash. Written once per new
/// content: the same data arriving again is not recorded again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadHeld {
    pub trigger: LoadTrigger,
    /// The caller of an explicit `enforcer reload` (peer credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub flip: crate::flip::FlipFigures,
    /// The data in force (it stays) and the data held.
    pub databases_in_force: Vec<DatabaseRecord>,
    pub databases_held: Vec<DatabaseRecord>,
}

/// `enforcer reload --accept-change` applied data whose flip exceeds the
/// bound. The data applied is what was on disk at the accept (it is read
/// and evaluated again); when that is not the data last held, both are
/// named.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadAccepted {
    /// Who accepted (peer credentials of the control request).
    pub uid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub flip: crate::flip::FlipFigures,
    /// The data replaced and the data applied.
    pub databases_before: Vec<DatabaseRecord>,
    pub databases_applied: Vec<DatabaseRecord>,
    /// The data of the hold this accept ends, when it differs from the
    /// data applied (the files changed again after the hold).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases_held: Vec<DatabaseRecord>,
    /// The policy generation after the flip.
    pub generation: u64,
}

/// The agent started (or adopted a pinned datapath).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStart {
    /// The agent's version (`CARGO_PKG_VERSION`).
    pub version: String,
    pub pid: u32,
    pub pin_dir: String,
    /// True when it adopted the pinned datapath of an earlier agent
    /// (enforcement never stopped), false when it loaded a fresh one.
    pub adopted: bool,
    pub layout_version: u32,
}

/// The agent stopped; enforcement stays in place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStop {
    /// e.g. `sigterm`, `sigint`, `error: …`.
    pub reason: String,
}

/// The mode in force changed, globally or for one cgroup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeChange {
    /// `enforce`, `observe`, or `none` (no mode: a cgroup without an
    /// override, or no policy loaded yet).
    pub from: String,
    pub to: String,
    /// The cgroup whose override changed; absent for the global mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The caller's uid (peer credentials), 0 for a config reload by root.
    pub uid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    pub reason: String,
}

/// Outcome of a policy load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadResult {
    Ok,
    Failure,
}

/// What asked for a policy load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadTrigger {
    Start,
    Sighup,
    Control,
    FileWatch,
}

impl LoadTrigger {
    pub fn label(self) -> &'static str {
        match self {
            LoadTrigger::Start => "start",
            LoadTrigger::Sighup => "sighup",
            LoadTrigger::Control => "control",
            LoadTrigger::FileWatch => "file_watch",
        }
    }
}

/// One GeoIP database as loaded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseRecord {
    pub path: String,
    /// SHA-256 of the file's bytes.
    pub sha256: String,
    /// MaxMind DB `build_epoch` (Unix seconds); absent for CSV.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_epoch: Option<u64>,
    /// MaxMind DB `database_type`; absent for CSV.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub database_type: Option<String>,
    /// How it was read (`geoip::Format::label`: `mmdb-maxmind`, `csv`,
    /// `geofeed`, `aws`, ...); absent in records of older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

impl From<&geoip::SourceInfo> for DatabaseRecord {
    fn from(info: &geoip::SourceInfo) -> Self {
        DatabaseRecord {
            path: info.path.display().to_string(),
            sha256: info.sha256.clone(),
            build_epoch: info.build_epoch,
            database_type: info.database_type.clone(),
            kind: Some(info.format.label().to_owned()),
        }
    }
}

/// A policy / GeoIP load, successful or not (a failed one leaves the
/// previous policy in force).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyLoad {
    pub result: LoadResult,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub trigger: LoadTrigger,
    /// The policy generation after the flip (absent when it failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// SHA-256 of the policy as loaded (the caller defines over what; the
    /// agent's choice is documented where it computes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_sha256: Option<String>,
    /// The databases read (those that could be read, for a failure).
    #[serde(default)]
    pub databases: Vec<DatabaseRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefixes_v4: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefixes_v6: Option<u64>,
}

/// A refused or would-refuse decision: the kernel event as written to the
/// events sinks (see [`crate::events`]), with its own time as `event_time`
/// (`time` is the record's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub event_time: String,
    pub hook: String,
    pub family: String,
    pub protocol: String,
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    pub country: String,
    /// `denied` or `would_deny`.
    pub verdict: String,
    pub mode: String,
    /// Which rule decided: `geoip`, `unknown`, `deny_exception`, …
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tgid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comm: String,
    pub cgroup_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u32>,
    /// The GeoIP source that located `dst`: its file and kind, e.g.
    /// `/var/lib/egress-enforcer/aws-ip-ranges.json (aws)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub located_by: Option<String>,
}

impl From<&EventRecord> for AuditEvent {
    fn from(e: &EventRecord) -> Self {
        AuditEvent {
            event_time: e.time.clone(),
            hook: e.hook.to_owned(),
            family: e.family.to_owned(),
            protocol: e.protocol.clone(),
            dst: e.dst.to_string(),
            dport: e.dport,
            country: e.country.clone(),
            verdict: e.verdict.to_owned(),
            mode: e.mode.to_owned(),
            reason: e.reason.to_owned(),
            pid: e.pid,
            tgid: e.tgid,
            uid: e.uid,
            gid: e.gid,
            comm: e.comm.clone(),
            cgroup_id: e.cgroup_id,
            cgroup: e.cgroup.clone(),
            bytes: e.bytes,
            located_by: e
                .located_by
                .as_ref()
                .map(|l| format!("{} ({})", l.path.display(), l.kind)),
        }
    }
}

/// Events the kernel did not emit since the previous such record (deltas
/// of `enforcer_events_suppressed_total`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsSuppressed {
    pub rate_limit: u64,
    pub ring_full: u64,
}

/// A periodic statement of what is in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The global mode.
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_sha256: Option<String>,
    pub databases: Vec<DatabaseRecord>,
    pub generation: u64,
    /// Records this writer appended since its previous checkpoint (or
    /// since it opened the log); filled in by [`super::AuditLog::append`].
    #[serde(default)]
    pub records_since_last: u64,
    /// The signed checkpoint note (C2SP tlog-checkpoint over the records
    /// before this one), when the agent has a signing key; filled in by
    /// [`super::AuditLog::append`] (see [`super::note`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// An incomplete last line (a write cut off by a crash) that
/// [`super::AuditLog::open`] removed before appending.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovered {
    /// How many bytes were cut off.
    pub discarded_bytes: u64,
    /// Their SHA-256.
    pub discarded_sha256: String,
    /// Their first bytes (lossy UTF-8, at most 200 characters), which
    /// usually name the record that was being written.
    pub discarded_start: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures() -> crate::flip::FlipFigures {
        use crate::flip::FamilyFigures;
        crate::flip::FlipFigures {
            ipv4: FamilyFigures {
                allowed_to_refused: 1,
                refused_to_allowed: 2,
                flipped: 3,
                bound: Some(2),
                max_flip: "2 addresses".into(),
            },
            ipv6: FamilyFigures {
                allowed_to_refused: "0".into(),
                refused_to_allowed: "0".into(),
                flipped: "0".into(),
                bound: None,
                max_flip: "off".into(),
            },
        }
    }

    #[test]
    fn kinds_serialise_with_their_tag_first_and_names_match_the_list() {
        let k = Kind::AgentStop(AgentStop {
            reason: "sigterm".into(),
        });
        assert_eq!(
            serde_json::to_string(&k).unwrap(),
            r#"{"kind":"agent_stop","reason":"sigterm"}"#
        );
        let all = [
            Kind::AgentStart(AgentStart {
                version: "0".into(),
                pid: 1,
                pin_dir: "/p".into(),
                adopted: false,
                layout_version: 2,
            }),
            k,
            Kind::ModeChange(ModeChange {
                from: "observe".into(),
                to: "enforce".into(),
                cgroup: None,
                uid: 0,
                gid: None,
                reason: "r".into(),
            }),
            Kind::PolicyLoad(PolicyLoad {
                result: LoadResult::Ok,
                error: None,
                trigger: LoadTrigger::FileWatch,
                generation: Some(1),
                policy_sha256: None,
                databases: vec![],
                prefixes_v4: None,
                prefixes_v6: None,
            }),
            Kind::EventsSuppressed(EventsSuppressed {
                rate_limit: 1,
                ring_full: 2,
            }),
            Kind::Checkpoint(Checkpoint {
                mode: "enforce".into(),
                policy_sha256: None,
                databases: vec![],
                generation: 1,
                records_since_last: 0,
                note: None,
            }),
            Kind::Recovered(Recovered {
                discarded_bytes: 1,
                discarded_sha256: String::new(),
                discarded_start: String::new(),
            }),
            Kind::Uninstall(Uninstall {
                uid: 0,
                gid: 0,
                pid: 1,
                pin_dir: "/p".into(),
                reason: "decommissioned".into(),
            }),
            Kind::Coverage(Coverage {
                scope: "system.slice/minio.service".into(),
                event: "repaired".into(),
                cause: "cgroup_recreated".into(),
                links: vec!["connect4-cg7".into()],
                error: None,
            }),
            Kind::Gap(Gap {
                dropped: 3,
                after_seq: 9,
                kinds: [("event".to_owned(), 3)].into(),
                first_time: "t0".into(),
                last_time: "t1".into(),
                error: "No space left on device".into(),
                bound_bytes: 1,
            }),
            Kind::Continued(Continued {
                previous_file: Some("/var/log/a.jsonl.1".into()),
                previous_seq: 9,
                previous_hash: "ab".into(),
                cause: "renamed".into(),
            }),
            Kind::ReloadHeld(ReloadHeld {
                trigger: LoadTrigger::FileWatch,
                uid: None,
                pid: None,
                flip: figures(),
                databases_in_force: vec![],
                databases_held: vec![],
            }),
            Kind::ReloadAccepted(ReloadAccepted {
                uid: 0,
                gid: Some(0),
                pid: Some(7),
                flip: figures(),
                databases_before: vec![],
                databases_applied: vec![],
                databases_held: vec![],
                generation: 3,
            }),
        ];
        for k in all {
            let json = serde_json::to_string(&k).unwrap();
            assert!(
                json.starts_with(&format!(r#"{{"kind":"{}""#, k.name())),
                "{json}"
            );
            assert!(KNOWN_KINDS.contains(&k.name()));
            let back: Kind = serde_json::from_str(&json).unwrap();
            assert_eq!(back, k);
        }
    }

    #[test]
    fn database_type_is_written_as_type() {
        let d = DatabaseRecord {
            path: "/x.mmdb".into(),
            sha256: "ab".into(),
            build_epoch: Some(7),
            database_type: Some("GeoLite2-Country".into()),
            kind: Some("mmdb-maxmind".into()),
        };
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"path":"/x.mmdb","sha256":"ab","build_epoch":7,"type":"GeoLite2-Country","kind":"mmdb-maxmind"}"#
        );
        // Records of older agents have no kind.
        let old: DatabaseRecord =
            serde_json::from_str(r#"{"path":"/x.mmdb","sha256":"ab"}"#).unwrap();
        assert_eq!(old.kind, None);
    }
}
