//! What the agent reports about itself and what the kernel holds: the
//! state behind `enforcer status`, the metrics and the control socket's
//! `status` answer.
//!
//! A leaf of the agent's module graph: [`metrics`](crate::metrics),
//! [`events`](crate::events), the control handler and the CLI read it; it
//! reads the pinned maps through [`datapath`](crate::datapath) but nothing
//! there depends on it.

mod decisions;
mod view;

use std::sync::{Arc, RwLock};

use enforcer_common::{Mode, country};

pub use view::{agent_view, databases, kernel_view, too_old};

/// Agent-side state that metrics and `status` report.
#[derive(Clone, Debug, Default)]
pub struct AgentStatus {
    /// Which GeoIP source of the policy in force located an address.
    pub provenance: std::sync::Arc<geoip::Provenance>,
    pub mode: Option<Mode>,
    pub generation: u32,
    pub prefixes_v4: usize,
    pub prefixes_v6: usize,
    pub approved_countries: usize,
    pub policy_loads_ok: u64,
    pub policy_loads_failed: u64,
    /// Unix time of the last successful policy load.
    pub last_load_unix: f64,
    /// The last load attempt (start or reload): how long it took,
    /// seconds, and its result (`success` or `failure`).
    pub last_load_attempt: Option<(f64, &'static str)>,
    /// Unix time of the last failed reload (0 when none failed).
    pub last_load_failure_unix: f64,
    /// Unix time the agent started.
    pub started_unix: f64,
    /// Whether it adopted an earlier agent's pinned datapath.
    pub adopted: bool,
    /// The GeoIP sources of the policy in force.
    pub sources: Vec<geoip::SourceInfo>,
    /// `geoip.max_age` of the config in force.
    pub geoip_max_age: Option<std::time::Duration>,
    /// The flat GeoIP tables' fill: IPv4 entries of the split /16s' search
    /// trees (range starts, padding and index lines), and IPv6 ranges (by
    /// /64).
    pub geo_v4_entries: usize,
    pub geo_v6_ranges: usize,
    /// Full starts inside /64s that longer prefixes split (IPv6 fine table).
    pub geo_v6_split64: usize,
    /// Exception and site rules in force, per family.
    pub rules_v4: usize,
    pub rules_v6: usize,
    /// The scope (cgroup paths, or host-wide) and interfaces attached.
    pub scope: Vec<String>,
    pub interfaces: Vec<String>,
    /// Per-cgroup modes in force: path, mode, and where it comes from
    /// (`config` or `runtime`).
    pub overrides: Vec<(String, Mode, &'static str)>,
    /// Whether the global mode comes from `enforcer mode` (else the config).
    pub mode_from_runtime: bool,
    /// The last failed policy load's error, until a load succeeds.
    pub last_error: Option<String>,
    /// Control requests by (verb, result).
    pub control_requests: std::collections::BTreeMap<(&'static str, &'static str), u64>,
    /// The audit log, when it is on.
    pub audit_file: Option<std::path::PathBuf>,
    /// SHA-256 of the policy in force (see [`crate::policy::policy_sha256`]).
    pub policy_sha256: Option<String>,
    /// Where the links are pinned, to count the programs attached.
    pub links_dir: Option<std::path::PathBuf>,
    /// Each configured scope entry as the coverage loop last found it.
    pub coverage: Vec<ScopeEntry>,
    /// Coverage repairs by cause (see `audit::Coverage::cause`).
    pub coverage_repairs: std::collections::BTreeMap<&'static str, u64>,
    /// When the coverage loop last compared the scope with the kernel.
    pub coverage_checked_unix: f64,
    /// Each source in force against its file on disk (see
    /// `agent::freshness`); empty until the first comparison.
    pub sources_on_disk: Vec<SourceOnDisk>,
    /// The audit log's and the events sinks' health.
    pub sinks: Vec<Arc<SinkHealth>>,
    /// What the agent runs with after start (`None` before the drop).
    pub privileges: Option<Privileges>,
    /// New GeoIP data the reload guard holds (`geoip.max_flip`), until a
    /// reload applies a policy.
    pub reload_held: Option<crate::flip::HeldReload>,
    /// The reload guard's baseline of the data in force (see
    /// [`crate::baseline`]).
    pub baseline: crate::baseline::BaselineStatus,
}

/// One GeoIP source in force and the file at its path now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceOnDisk {
    pub path: std::path::PathBuf,
    pub state: OnDisk,
}

/// Whether the file on disk is the one in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OnDisk {
    /// The same content (SHA-256) as the one in force.
    InForce,
    /// Another content: a reload would read something else.
    Differs { sha256: String },
    /// The file cannot be read (moved away, deleted, no permission): a
    /// reload would fail.
    Unreadable { error: String },
}

impl OnDisk {
    /// As `status` shows it.
    pub fn label(&self) -> &'static str {
        match self {
            OnDisk::InForce => "in_force",
            OnDisk::Differs { .. } => "differs",
            OnDisk::Unreadable { .. } => "unreadable",
        }
    }
}

/// One sink's health (the audit log, the events file, stdout): written by
/// the sink's writer after each write, read by `status` and the metrics.
#[derive(Debug, Default)]
pub struct SinkHealth {
    /// `audit`, `events_file` or `events_stdout`: the metrics' `sink` label.
    pub name: &'static str,
    state: std::sync::Mutex<SinkState>,
}

/// What [`SinkHealth`] holds.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SinkState {
    pub path: Option<std::path::PathBuf>,
    /// The last write (or open) succeeded.
    pub healthy: bool,
    /// The last error, kept after the sink recovers (with its time).
    pub last_error: Option<String>,
    pub last_error_unix: Option<f64>,
    /// Writes that failed.
    pub write_errors: u64,
    /// Records (audit) or events (events sinks) lost for good.
    pub dropped: u64,
    /// Times the file was opened again at its path (it was moved, deleted
    /// or rotated).
    pub reopens: u64,
    /// Bytes waiting to be written (the audit log's bounded buffer).
    pub pending_bytes: u64,
}

impl SinkHealth {
    pub fn new(name: &'static str, path: Option<std::path::PathBuf>) -> Self {
        SinkHealth {
            name,
            state: std::sync::Mutex::new(SinkState {
                path,
                healthy: true,
                ..SinkState::default()
            }),
        }
    }

    /// Changes the state under the lock.
    pub fn update(&self, f: impl FnOnce(&mut SinkState)) {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Records a failed write: unhealthy, the error and its time.
    pub fn failed(&self, error: String) {
        self.update(|s| {
            s.healthy = false;
            s.write_errors += 1;
            s.last_error = Some(error);
            s.last_error_unix = Some(unix_now());
        });
    }

    pub fn snapshot(&self) -> SinkState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The capabilities the running agent kept after start
/// (`agent::privileges`), as `status` and the start log line report them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Privileges {
    /// Effective (= permitted = bounding) capabilities, by name.
    pub effective: Vec<String>,
    /// Ambient and inheritable sets are empty.
    pub ambient_cleared: bool,
    pub no_new_privs: bool,
    /// Threads checked when the set was read back.
    pub threads_checked: usize,
}

impl std::fmt::Display for Privileges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.effective.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&self.effective.join(","))
        }
    }
}

/// One configured scope entry (a cgroup or an interface) and whether the
/// kernel has this agent's programs on it, by the kernel's own answer.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ScopeEntry {
    /// As configured: a cgroup path (absolute) or an interface name.
    pub scope: String,
    /// `cgroup` or `interface`.
    pub kind: &'static str,
    /// `covered` (every hook attached), `waiting` (it does not exist; it
    /// is covered when it is created), `partial` (a repair failed for
    /// some hook) or `error` (it cannot be looked at).
    pub state: &'static str,
    /// The cgroup id or interface index covered.
    pub id: Option<u64>,
    /// Per hook (program): attached or not.
    pub hooks: std::collections::BTreeMap<&'static str, bool>,
    /// When it was last seen covered (Unix time).
    pub last_covered_unix: Option<f64>,
    /// Since when it has been in this state.
    pub since_unix: f64,
    pub error: Option<String>,
}

/// Programs attached, by program (hook): the pinned links, named
/// `<program>-cg<id>` or `<program>-if<index>-<name>`; staged links
/// ([`crate::datapath::STAGED_LINK_PREFIX`]) are not counted.
pub fn programs_attached(links_dir: &std::path::Path) -> std::collections::BTreeMap<String, u64> {
    let mut by_program = std::collections::BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir(links_dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(crate::datapath::STAGED_LINK_PREFIX) {
                continue;
            }
            if let Some((program, _)) = name.split_once('-') {
                *by_program.entry(program.to_owned()).or_default() += 1;
            }
        }
    }
    by_program
}

pub type SharedStatus = Arc<RwLock<AgentStatus>>;

/// The label of a country index: its code, or `unknown` for 0.
pub fn country_label(index: u16) -> String {
    match country::code(index) {
        Some([a, b]) => format!("{}{}", a as char, b as char),
        None => "unknown".to_owned(),
    }
}

/// How full the per-slot maps are: (map, entries, capacity). Each of the
/// two slots has its own maps of this capacity. For GeoIP the limits are
/// the flat tables' own: the entries of the split /16s' search trees
/// (range starts, padding and index lines), IPv6
/// ranges by /64 and starts inside split /64s; the IPv4 words always cover
/// every /16.
pub fn map_fill_table(s: &AgentStatus) -> [(&'static str, usize, u32); 6] {
    [
        (
            "geo_ipv4_entries",
            s.geo_v4_entries,
            enforcer_common::GEO4_TREE_CAPACITY as u32,
        ),
        (
            "geo_ipv6_ranges",
            s.geo_v6_ranges,
            enforcer_common::GEO6_CAPACITY,
        ),
        (
            "geo_ipv6_split64",
            s.geo_v6_split64,
            enforcer_common::GEO6_FINE_CAPACITY,
        ),
        ("rules_ipv4", s.rules_v4, enforcer_common::RULES_CAPACITY),
        ("rules_ipv6", s.rules_v6, enforcer_common::RULES_CAPACITY),
        (
            "mode_overrides",
            s.overrides.len(),
            enforcer_common::MODE_OVERRIDES_CAPACITY,
        ),
    ]
}

/// [`map_fill_table`] as JSON, with the fraction.
pub fn map_fill(s: &AgentStatus) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (map, entries, capacity) in map_fill_table(s) {
        out.insert(
            map.to_owned(),
            serde_json::json!({
                "entries": entries,
                "capacity": capacity,
                "fill": entries as f64 / f64::from(capacity),
            }),
        );
    }
    serde_json::Value::Object(out)
}

/// Seconds since the Unix epoch, as the status and the metrics show times.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
