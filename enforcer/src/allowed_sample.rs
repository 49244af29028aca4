//! The sample of allowed destinations, from the kernel's `ALLOWED_SAMPLE`
//! map (layout in `enforcer_common::layout`) to a JSON-lines file
//! (`[events] allowed_file`), for `enforcer whatif --sample`:
//!
//! ```json
//! {"time":"2026-12-07T03:40:10.000000Z","hook":"connect4","family":"ipv4",
//!  "dst":"198.51.100.20","country":"DE","verdict":"allowed","reason":"geoip",
//!  "scope":"/sys/fs/cgroup/system.slice/minio.service","count":12,
//!  "first_seen":"2026-12-07T03:39:58.120000Z","last_seen":"2026-12-07T03:40:07.940000Z"}
//! ```
//!
//! Events cover refused and would-refuse decisions only; this covers the
//! approved side, bounded: the kernel keeps at most
//! [`ALLOWED_SAMPLE_CAPACITY`] destinations (an LRU: the least recently
//! decided go first), and the agent appends, every [`INTERVAL`] and at a
//! clean stop, the entries that are new or whose count grew since its last
//! pass, so the file keeps what the map evicts and what a restart forgets.
//!
//! A line's `count` is the entry's total since `first_seen` (uncached
//! decisions: a cached verdict is not decided again, so it is a lower bound
//! of the connections and packets), so a later line for the same `dst`,
//! `scope` and `first_seen` supersedes an earlier one; after an eviction or
//! an agent restart the same destination can come back with a new
//! `first_seen`. `hook`, `country` and `reason` are those of the entry's
//! first decision. There is no `mode`: an approved decision does not
//! consult it. The file is written as the events file is: whole lines only,
//! mode 0640, opened again when moved (rotation) or at a reload.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    time::{Duration, SystemTime},
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use enforcer_common::{
    ALLOWED_SAMPLE, ALLOWED_SAMPLE_CAPACITY, Family, Hook, NO_SCOPE, Outcome, SCOPE_NAMES,
    SampleEntry, SampleKey, ScopeName, Source,
};
use serde::Serialize;

use crate::{
    config::Events as EventsConfig,
    datapath::{DatapathError, map_err, open_pinned, scopes::read_names},
    events::{EventCounts, EventsFile, boot_to_wall},
    status::country_label,
};

/// How often the agent reads the kernel's sample.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// One line of the sample file.
#[derive(Debug, Serialize, PartialEq)]
pub struct SampleRecord {
    /// When the line was written.
    pub time: String,
    pub hook: &'static str,
    pub family: &'static str,
    pub dst: IpAddr,
    pub country: String,
    /// `allowed` or `exempt`.
    pub verdict: &'static str,
    pub reason: &'static str,
    /// The scope entry's label (as in events and the metrics' `scope`);
    /// absent when the decision had no scope entry or its name is gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub count: u64,
    pub first_seen: String,
    pub last_seen: String,
}

impl SampleRecord {
    /// Decodes one map entry; `None` for one with a field no enum has
    /// (a corrupt or foreign writer), which the caller skips.
    pub fn decode(
        key: &SampleKey,
        value: &SampleEntry,
        now: SystemTime,
        boot_to_wall: impl Fn(u64) -> SystemTime,
        scope: Option<String>,
    ) -> Option<Self> {
        let family = Family::from_raw(u32::from(key.family))?;
        let dst = match family {
            Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(
                key.daddr[0],
                key.daddr[1],
                key.daddr[2],
                key.daddr[3],
            )),
            Family::Ipv6 => IpAddr::V6(Ipv6Addr::from(key.daddr)),
        };
        let outcome = Outcome::from_raw(u32::from(value.outcome))?;
        if !matches!(outcome, Outcome::Allowed | Outcome::Exempt) {
            return None;
        }
        let time = |t: SystemTime| humantime::format_rfc3339_micros(t).to_string();
        Some(SampleRecord {
            time: time(now),
            hook: Hook::from_raw(u32::from(value.hook))?.label(),
            family: family.label(),
            dst,
            country: country_label(value.country),
            verdict: outcome.label(),
            reason: Source::from_raw(u32::from(value.source))?.label(),
            scope,
            count: value.count,
            first_seen: time(boot_to_wall(value.first_ns)),
            last_seen: time(boot_to_wall(value.last_ns)),
        })
    }
}

/// What the agent last wrote for each entry: its `first_ns` (a new entry
/// for the same key after an eviction has another) and count.
#[derive(Debug, Default)]
pub struct Written {
    last: HashMap<SampleKey, (u64, u64)>,
}

impl Written {
    /// The entries of `read` that are new or grew since the last pass,
    /// and forgets the keys no longer in the map (so this stays as small
    /// as the map). Call [`Written::mark`] with those that were written.
    pub fn fresh(&mut self, read: &[(SampleKey, SampleEntry)]) -> Vec<(SampleKey, SampleEntry)> {
        let present: std::collections::HashSet<&SampleKey> = read.iter().map(|(k, _)| k).collect();
        self.last.retain(|k, _| present.contains(k));
        read.iter()
            .filter(|(k, v)| match self.last.get(k) {
                None => true,
                Some(&(first, count)) => first != v.first_ns || v.count > count,
            })
            .copied()
            .collect()
    }

    pub fn mark(&mut self, key: SampleKey, value: &SampleEntry) {
        self.last.insert(key, (value.first_ns, value.count));
    }
}

/// The kernel's sample and the scope names, opened once.
struct Maps {
    sample: BpfHashMap<MapData, SampleKey, SampleEntry>,
    names: BpfHashMap<MapData, u32, ScopeName>,
}

impl Maps {
    fn open(pin_dir: &Path) -> Result<Maps, DatapathError> {
        Ok(Maps {
            sample: BpfHashMap::try_from(open_pinned(pin_dir, ALLOWED_SAMPLE)?)
                .map_err(map_err(ALLOWED_SAMPLE))?,
            names: BpfHashMap::try_from(open_pinned(pin_dir, SCOPE_NAMES)?)
                .map_err(map_err(SCOPE_NAMES))?,
        })
    }

    /// Every entry, as the iteration finds it. An LRU map changes under
    /// the walk (inserts, evictions): a key gone between its `next_key`
    /// and its lookup is skipped, and one evicted during the walk may be
    /// missed this pass and found at the next, if it is back.
    fn read(&self) -> Vec<(SampleKey, SampleEntry)> {
        let mut out = Vec::with_capacity(ALLOWED_SAMPLE_CAPACITY as usize);
        for item in self.sample.iter() {
            if let Ok(kv) = item {
                out.push(kv);
            }
            if out.len() > 2 * ALLOWED_SAMPLE_CAPACITY as usize {
                // A walk restarted by concurrent deletions can revisit
                // keys; never loop for ever.
                break;
            }
        }
        out
    }
}

/// One pass: reads the map, appends what is new or grew. Returns the
/// lines written and lost.
fn pass(maps: &Maps, written: &mut Written, file: &mut Option<EventsFile>) -> (u64, u64) {
    let read = maps.read();
    let fresh = written.fresh(&read);
    if fresh.is_empty() {
        return (0, 0);
    }
    let names = read_names(&maps.names);
    let to_wall = boot_to_wall();
    let now = SystemTime::now();
    let mut lines = String::new();
    let mut keys = Vec::new();
    for (k, v) in &fresh {
        let scope = (k.scope != NO_SCOPE)
            .then(|| names.get(&k.scope).cloned())
            .flatten();
        let Some(record) = SampleRecord::decode(k, v, now, &to_wall, scope) else {
            continue;
        };
        match serde_json::to_string(&record) {
            Ok(line) => {
                lines.push_str(&line);
                lines.push('\n');
                keys.push((*k, *v));
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode an allowed-sample line"),
        }
    }
    let Some(f) = file else {
        return (0, keys.len() as u64);
    };
    let (n, error) = f.write(&lines);
    if let Some(e) = error {
        tracing::warn!(file = %f.path.display(), error = %e, lost = keys.len() - n, "cannot write the allowed sample");
    }
    // The lines are in order: the first `n` are in the file.
    for (k, v) in keys.iter().take(n) {
        written.mark(*k, v);
    }
    (n as u64, (keys.len() - n) as u64)
}

/// Opens the sample file of `config`, if any; a failure is logged and
/// retried at the next pass.
fn open(path: Option<&PathBuf>) -> Option<EventsFile> {
    let path = path?;
    match EventsFile::open(path) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "cannot open the allowed-sample file; the sample stays in the kernel until it can be written");
            None
        }
    }
}

/// Reads the kernel's sample every [`INTERVAL`] and once more when `stop`
/// resolves. Config changes (a reload) arrive on `config`; with no
/// `allowed_file` nothing is read.
pub async fn run(
    pin_dir: PathBuf,
    mut config: tokio::sync::watch::Receiver<EventsConfig>,
    counts: Arc<EventCounts>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<(), DatapathError> {
    let maps = Maps::open(&pin_dir)?;
    let mut path = config.borrow_and_update().allowed_file.clone();
    let mut file = open(path.as_ref());
    let mut written = Written::default();
    let mut ticks = tokio::time::interval(INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once: nothing to write yet.
    ticks.tick().await;
    let mut once = |file: &mut Option<EventsFile>, path: &Option<PathBuf>| {
        if path.is_none() {
            return;
        }
        if file.as_ref().is_none_or(EventsFile::moved) {
            // Rotated away, deleted, or never opened: its path again.
            if let Some(new) = open(path.as_ref()) {
                if file.is_some() {
                    tracing::info!(file = ?path, "the allowed-sample file was moved; writing to a new file at its path");
                }
                *file = Some(new);
            }
        }
        let (n, lost) = pass(&maps, &mut written, file);
        counts.sample_lines.fetch_add(n, Ordering::Relaxed);
        counts.sample_errors.fetch_add(lost, Ordering::Relaxed);
    };
    loop {
        tokio::select! {
            _ = &mut stop => {
                once(&mut file, &path);
                break;
            }
            changed = config.changed() => {
                if changed.is_err() {
                    break;
                }
                // A reload: the file's path again (it may have changed).
                path = config.borrow_and_update().allowed_file.clone();
                file = open(path.as_ref());
            }
            _ = ticks.tick() => once(&mut file, &path),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(last: u8) -> SampleKey {
        let mut daddr = [0; 16];
        daddr[..4].copy_from_slice(&[198, 51, 100, last]);
        SampleKey {
            daddr,
            scope: 3,
            family: Family::Ipv4 as u8,
            _pad: [0; 3],
        }
    }

    fn entry(first_ns: u64, count: u64) -> SampleEntry {
        SampleEntry {
            first_ns,
            last_ns: first_ns + 5_000_000_000,
            count,
            country: enforcer_common::country::index(*b"DE").expect("DE has an index"),
            hook: Hook::Connect4 as u8,
            outcome: Outcome::Allowed as u8,
            source: Source::Geoip as u8,
            _pad: [0; 3],
        }
    }

    #[test]
    fn only_new_or_grown_entries_are_written_again() {
        let mut w = Written::default();
        let a = (key(1), entry(10, 1));
        let b = (key(2), entry(20, 4));
        let fresh = w.fresh(&[a, b]);
        assert_eq!(fresh.len(), 2, "everything is new at first");
        // Only `a` made it into the file.
        w.mark(a.0, &a.1);
        let fresh = w.fresh(&[a, b]);
        assert_eq!(fresh, vec![b], "b was not written: still fresh");
        w.mark(b.0, &b.1);
        assert!(w.fresh(&[a, b]).is_empty(), "nothing changed");
        let grown = (key(1), entry(10, 2));
        assert_eq!(w.fresh(&[grown, b]), vec![grown], "a's count grew");
        w.mark(grown.0, &grown.1);
        // b evicted, then back as a new entry with a smaller count.
        assert!(w.fresh(&[grown]).is_empty());
        let back = (key(2), entry(99, 1));
        assert_eq!(w.fresh(&[grown, back]), vec![back], "a new entry for b");
    }

    #[test]
    fn an_entry_decodes_to_event_field_names() {
        let boot = |ns: u64| SystemTime::UNIX_EPOCH + Duration::from_nanos(ns);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let (k, v) = (key(7), entry(1_000_000_000, 12));
        let r = SampleRecord::decode(&k, &v, now, boot, Some("/sys/fs/cgroup/a".into()))
            .expect("decodes");
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&r).expect("encodes")).expect("JSON");
        assert_eq!(
            json,
            serde_json::json!({
                "time": "1970-01-01T00:01:40.000000Z",
                "hook": "connect4",
                "family": "ipv4",
                "dst": "198.51.100.7",
                "country": "DE",
                "verdict": "allowed",
                "reason": "geoip",
                "scope": "/sys/fs/cgroup/a",
                "count": 12,
                "first_seen": "1970-01-01T00:00:01.000000Z",
                "last_seen": "1970-01-01T00:00:06.000000Z",
            })
        );
        // A refused outcome is never a sample entry: not decoded.
        let mut refused = v;
        refused.outcome = Outcome::WouldDeny as u8;
        assert!(SampleRecord::decode(&k, &refused, now, boot, None).is_none());
        let mut bad = v;
        bad.hook = 200;
        assert!(SampleRecord::decode(&k, &bad, now, boot, None).is_none());
    }
}
