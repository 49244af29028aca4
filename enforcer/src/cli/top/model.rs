//! What `enforcer top` shows, built from two sources: the agent's `status`
//! answer, polled every interval (the kernel counters, read by the agent
//! exactly as for `/metrics`, and the agent's own state), and its event
//! stream (`events --follow`), which names the processes behind the
//! refused and would-refuse decisions.
//!
//! Rates are the difference between two consecutive status answers over
//! the time between them, so they are the rates of the counters a scrape
//! would read.

use std::{
    collections::{BTreeMap, HashMap},
    time::Instant,
};

use enforcer_common::Outcome;
use serde_json::Value;

/// The verdict labels, in the counters' order.
pub fn verdicts() -> impl Iterator<Item = &'static str> {
    Outcome::ALL.iter().map(|o| o.label())
}

/// One status answer, as `top` needs it.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// When the request was sent (the rates' clock).
    pub at: Option<Instant>,
    pub agent_pid: Option<u64>,
    pub version: String,
    pub uptime_seconds: u64,
    pub mode: String,
    pub mode_source: String,
    pub overrides: usize,
    pub generation: u64,
    /// The configured scope entries, for naming an event's scope.
    pub scope: Vec<String>,
    /// Scope entries by coverage state (`covered`, `waiting`, ...).
    pub coverage: BTreeMap<String, usize>,
    pub databases: Vec<Database>,
    pub last_error: Option<String>,
    /// Connection decisions by (country, scope): one count per verdict,
    /// in [`verdicts`] order.
    pub decisions: BTreeMap<(String, String), Vec<u64>>,
    pub suppressed_rate_limit: u64,
    pub suppressed_ring_full: u64,
}

/// One GeoIP database in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Database {
    pub name: String,
    pub build_epoch: Option<u64>,
    pub age_days: Option<u64>,
    pub too_old: bool,
    pub max_age_days: Option<u64>,
}

/// The scope column when the counters carry no scope entry.
pub const ALL_SCOPES: &str = "(all)";

impl Snapshot {
    /// From a `status` answer (`{"agent": ..., "kernel": ...}`); missing
    /// fields read as empty, so an older agent still shows what it has.
    pub fn from_status(v: &Value, at: Instant) -> Snapshot {
        let a = &v["agent"];
        let k = &v["kernel"];
        let str_of = |v: &Value| v.as_str().unwrap_or("-").to_owned();
        let mut coverage = BTreeMap::new();
        for e in a["coverage"].as_array().into_iter().flatten() {
            *coverage.entry(str_of(&e["state"])).or_insert(0) += 1;
        }
        let databases = a["databases"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| Database {
                name: d["path"]
                    .as_str()
                    .map(|p| {
                        std::path::Path::new(p)
                            .file_name()
                            .map_or_else(|| p.to_owned(), |n| n.to_string_lossy().into_owned())
                    })
                    .unwrap_or_else(|| "-".into()),
                build_epoch: d["build_epoch"].as_u64(),
                age_days: d["age_seconds"].as_u64().map(|s| s / 86_400).or_else(|| {
                    let built = d["build_epoch"].as_u64()?;
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .ok()?
                        .as_secs();
                    Some(now.saturating_sub(built) / 86_400)
                }),
                too_old: d["too_old"].as_bool() == Some(true),
                max_age_days: d["max_age_seconds"].as_u64().map(|s| s / 86_400),
            })
            .collect();
        let mut decisions = BTreeMap::new();
        for row in k["decisions"].as_array().into_iter().flatten() {
            let country = str_of(&row["country"]);
            let scope = row["scope"]
                .as_str()
                .map_or_else(|| ALL_SCOPES.to_owned(), str::to_owned);
            let values: Vec<u64> = verdicts().map(|l| row[l].as_u64().unwrap_or(0)).collect();
            decisions.insert((country, scope), values);
        }
        Snapshot {
            at: Some(at),
            agent_pid: a["pid"].as_u64(),
            version: str_of(&a["version"]),
            uptime_seconds: a["uptime_seconds"].as_f64().unwrap_or(0.0).max(0.0) as u64,
            mode: a["mode"]
                .as_str()
                .or_else(|| k["mode"].as_str())
                .unwrap_or("-")
                .to_owned(),
            mode_source: str_of(&a["mode_source"]),
            overrides: a["overrides"].as_array().map_or(0, Vec::len),
            generation: a["generation"]
                .as_u64()
                .or_else(|| k["generation"].as_u64())
                .unwrap_or(0),
            scope: a["scope"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect(),
            coverage,
            databases,
            last_error: a["last_error"].as_str().map(str::to_owned),
            decisions,
            suppressed_rate_limit: k["events_suppressed"]["rate_limit"].as_u64().unwrap_or(0),
            suppressed_ring_full: k["events_suppressed"]["ring_full"].as_u64().unwrap_or(0),
        }
    }

    /// Every verdict's count summed over countries and scopes.
    pub fn totals(&self) -> Vec<u64> {
        let mut t = vec![0u64; Outcome::COUNT];
        for row in self.decisions.values() {
            for (a, b) in t.iter_mut().zip(row) {
                *a = a.wrapping_add(*b);
            }
        }
        t
    }
}

/// Per-second rate of a counter between two snapshots; None without an
/// earlier one (or with a counter that went backwards: an agent restart).
pub fn rate(now: u64, before: Option<u64>, seconds: f64) -> Option<f64> {
    let before = before?;
    if seconds <= 0.0 || now < before {
        return None;
    }
    Some((now - before) as f64 / seconds)
}

/// A destination a process was refused (or would have been), from the
/// events, with how often and when last.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DestinationKey {
    pub verdict: String,
    pub comm: String,
    pub pid: Option<u64>,
    pub uid: Option<u64>,
    pub scope: String,
    /// `address:port` (`[v6]:port`), or the address alone.
    pub destination: String,
    pub country: String,
}

#[derive(Clone, Debug, Default)]
pub struct DestinationStats {
    pub count: u64,
    /// The last event's time as the agent wrote it (RFC 3339, UTC).
    pub last_seen: String,
    /// Arrival order of the last event, to sort by recency.
    pub last_seq: u64,
}

/// The event stream, folded.
#[derive(Debug, Default)]
pub struct Events {
    pub destinations: HashMap<DestinationKey, DestinationStats>,
    /// Events received live (not the replay of recent ones at connect).
    pub live: u64,
    /// Events the agent could not send this client in time.
    pub lagged: u64,
    seq: u64,
    /// Whether the stream is up, and why not.
    pub down: Option<String>,
}

impl Events {
    /// The stream was (re)connected: the agent replays its recent events,
    /// which rebuild the table.
    pub fn connected(&mut self) {
        self.destinations.clear();
        self.down = None;
    }

    /// One line of the stream; `replay` for the recent events sent first.
    pub fn line(&mut self, line: &str, replay: bool, scope: &[String]) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return;
        };
        if let Some(n) = v["lagged"].as_u64() {
            self.lagged += n;
            return;
        }
        if !replay {
            self.live += 1;
        }
        let verdict = v["verdict"].as_str().unwrap_or("-");
        if verdict != Outcome::Denied.label() && verdict != Outcome::WouldDeny.label() {
            return;
        }
        let dst = v["dst"].as_str().unwrap_or("-");
        let destination = match (v["dport"].as_u64(), dst.contains(':')) {
            (Some(p), true) => format!("[{dst}]:{p}"),
            (Some(p), false) => format!("{dst}:{p}"),
            (None, _) => dst.to_owned(),
        };
        let key = DestinationKey {
            verdict: verdict.to_owned(),
            comm: v["comm"].as_str().unwrap_or("-").to_owned(),
            pid: v["tgid"].as_u64().or_else(|| v["pid"].as_u64()),
            uid: v["uid"].as_u64(),
            scope: event_scope(&v, scope),
            destination,
            country: v["country"].as_str().unwrap_or("-").to_owned(),
        };
        self.seq += 1;
        let e = self.destinations.entry(key).or_default();
        e.count += 1;
        e.last_seen = v["time"].as_str().unwrap_or("-").to_owned();
        e.last_seq = self.seq;
    }

    /// The destinations, most recent first.
    pub fn by_recency(&self) -> Vec<(&DestinationKey, &DestinationStats)> {
        let mut rows: Vec<_> = self.destinations.iter().collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1.last_seq));
        rows
    }
}

/// The scope entry of an event: its own `scope` field when the agent
/// writes one, else the configured cgroup entry its cgroup is in (entries
/// are never nested, so at most one matches), else `-`.
fn event_scope(v: &Value, scope: &[String]) -> String {
    if let Some(s) = v["scope"].as_str() {
        return s.to_owned();
    }
    let Some(cgroup) = v["cgroup"].as_str() else {
        return "-".into();
    };
    scope
        .iter()
        .filter(|s| {
            let s = s.trim_end_matches('/');
            cgroup == s || cgroup.strip_prefix(s).is_some_and(|r| r.starts_with('/'))
        })
        .max_by_key(|s| s.len())
        .cloned()
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_folded_by_process_and_destination() {
        let scope = vec!["/sys/fs/cgroup/app.slice".to_owned()];
        let mut e = Events::default();
        let line = |dst: &str, pid: u32, verdict: &str| {
            format!(
                r#"{{"time":"2026-12-06T23:59:0{pid}.000001Z","verdict":"{verdict}","dst":"{dst}","dport":7000,"comm":"curl","pid":{pid},"tgid":{pid},"uid":0,"country":"US","cgroup":"/sys/fs/cgroup/app.slice/x.service"}}"#
            )
        };
        e.line(&line("198.51.100.20", 1, "would_deny"), true, &scope);
        e.line(&line("198.51.100.20", 1, "would_deny"), false, &scope);
        e.line(&line("2001:db8:1::20", 2, "denied"), false, &scope);
        e.line(&line("198.51.100.10", 3, "allowed"), false, &scope);
        e.line(r#"{"lagged":4}"#, false, &scope);
        e.line("not json", false, &scope);
        assert_eq!(e.live, 3, "the replay is not counted as live");
        assert_eq!(e.lagged, 4);
        let rows = e.by_recency();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0].0.destination, "[2001:db8:1::20]:7000");
        assert_eq!(rows[1].0.destination, "198.51.100.20:7000");
        assert_eq!(rows[1].1.count, 2);
        assert_eq!(rows[1].0.scope, "/sys/fs/cgroup/app.slice");
        assert_eq!(rows[1].0.pid, Some(1));
        e.connected();
        assert!(e.destinations.is_empty());
    }

    #[test]
    fn an_event_scope_is_its_own_field_else_the_entry_its_cgroup_is_in() {
        let scope = vec![
            "/sys/fs/cgroup/a".to_owned(),
            "/sys/fs/cgroup/ab".to_owned(),
        ];
        let ev = |c: &str| serde_json::json!({ "cgroup": c });
        assert_eq!(
            event_scope(&ev("/sys/fs/cgroup/ab/x"), &scope),
            "/sys/fs/cgroup/ab"
        );
        assert_eq!(
            event_scope(&ev("/sys/fs/cgroup/a"), &scope),
            "/sys/fs/cgroup/a"
        );
        assert_eq!(event_scope(&ev("/sys/fs/cgroup/abc"), &scope), "-");
        let own = serde_json::json!({ "cgroup": "/x", "scope": "eth0" });
        assert_eq!(event_scope(&own, &scope), "eth0");
    }

    #[test]
    fn snapshot_reads_a_status_answer() {
        let v = serde_json::json!({
            "agent": {
                "pid": 42, "version": "0.1.0", "uptime_seconds": 61.0, "mode": "observe",
                "mode_source": "config", "overrides": [], "generation": 3,
                "scope": ["/sys/fs/cgroup/a"],
                "coverage": [{"state": "covered"}, {"state": "waiting"}, {"state": "covered"}],
                "databases": [{"path": "/x/geo.mmdb", "build_epoch": 0, "age_seconds": 864000,
                               "max_age_seconds": 86400, "too_old": true}],
            },
            "kernel": {
                "decisions": [
                    {"country": "US", "scope": null, "allowed": 1, "denied": 0, "would_deny": 5, "exempt": 0},
                    {"country": "DE", "scope": "/sys/fs/cgroup/a", "allowed": 7, "denied": 0, "would_deny": 0, "exempt": 2},
                ],
                "events_suppressed": {"rate_limit": 9, "ring_full": 1},
            },
        });
        let s = Snapshot::from_status(&v, Instant::now());
        assert_eq!(s.generation, 3);
        assert_eq!(s.coverage.get("covered"), Some(&2));
        assert_eq!(s.databases[0].age_days, Some(10));
        assert!(s.databases[0].too_old);
        assert_eq!(
            s.decisions.get(&("US".into(), ALL_SCOPES.into())),
            Some(&vec![1, 0, 5, 0])
        );
        assert_eq!(s.totals(), vec![8, 0, 5, 2]);
        assert_eq!(s.suppressed_rate_limit, 9);
        assert_eq!(rate(10, Some(4), 2.0), Some(3.0));
        assert_eq!(rate(10, None, 2.0), None);
        assert_eq!(
            rate(3, Some(4), 2.0),
            None,
            "a restart is not a negative rate"
        );
    }
}
