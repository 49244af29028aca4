//! Refused and would-refuse decisions, from the kernel's `EVENTS` ring
//! buffer to JSON lines (a file and/or stdout), one object per line:
//!
//! ```json
//! {"time":"2026-11-23T09:40:00.123456Z","hook":"connect4","family":"ipv4",
//!  "protocol":"tcp","dst":"198.51.100.20","dport":7000,"direction":"outbound","country":"US",
//!  "verdict":"denied","mode":"enforce","reason":"geoip","pid":1234,
//!  "tgid":1234,"uid":0,"gid":0,"comm":"curl","cgroup_id":1032,
//!  "cgroup":"/sys/fs/cgroup/system.slice/minio.service/sub",
//!  "scope":"/sys/fs/cgroup/system.slice/minio.service"}
//! ```
//!
//! The kernel rate-limits events per CPU and counts what it suppressed
//! (`enforcer_events_suppressed_total`); the agent counts what it read
//! (`enforcer_events_total`) and the events it could not write
//! (`enforcer_events_write_errors_total`).
//!
//! The events file only ever holds whole lines: a failed or short write is
//! cut back to its last complete line (`ftruncate`) and the events not in
//! the file are counted. A moved, deleted or rotated file is noticed (its
//! device and inode against the path's, at each batch and every second)
//! and the path opened again; a reload (SIGHUP, `enforcer reload`, also
//! one that fails) opens it again too.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{self, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{MapData, RingBuf};
use enforcer_common::{DIRECTION_INBOUND, EVENTS, Event, Family, Hook, Mode, Outcome, Source};
use serde::Serialize;
use tokio::io::{Interest, unix::AsyncFd};

use crate::{
    config::Events as EventsConfig,
    datapath::{DatapathError, map_err, open_pinned},
    status::country_label,
};

/// Events read, by hook and verdict, and lines that could not be written.
#[derive(Debug, Default)]
pub struct EventCounts {
    read: [[AtomicU64; Outcome::COUNT]; Hook::COUNT],
    pub write_errors: AtomicU64,
}

impl EventCounts {
    /// `(hook, outcome, count)` for every non-zero count.
    pub fn read_counts(&self) -> Vec<(Hook, Outcome, u64)> {
        let mut out = Vec::new();
        for (h, row) in Hook::ALL.iter().zip(&self.read) {
            for (o, n) in Outcome::ALL.iter().zip(row) {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    out.push((*h, *o, n));
                }
            }
        }
        out
    }
}

/// One event as written.
#[derive(Debug, Serialize, PartialEq)]
pub struct EventRecord {
    pub time: String,
    pub hook: &'static str,
    pub family: &'static str,
    pub protocol: String,
    pub dst: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    /// `outbound`, or `inbound`: an answer from a socket that accepted the
    /// connection (a TCP SYN-ACK).
    pub direction: &'static str,
    /// The local port, when there is one (a connect() is decided before
    /// the kernel picks its ephemeral port).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    pub country: String,
    pub verdict: &'static str,
    pub mode: &'static str,
    pub reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tgid: Option<u32>,
    /// None for forwarded traffic (tcx): no local user sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub comm: String,
    pub cgroup_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The configured scope entry the decision was made for: the scope
    /// cgroup `cgroup` is under (labelled as in `status` and the metrics'
    /// `scope`), or the interface of a forwarded packet. None when it
    /// cannot be told (a cgroup gone before the event was read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The GeoIP source (file and kind) that located `dst`, when GeoIP
    /// gave `country` and the agent can tell which source of the policy
    /// in force said so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub located_by: Option<crate::datapath::explain::LocatedBy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u32>,
}

fn protocol_name(p: u8, family: Family) -> String {
    match (p, family) {
        (6, _) => "tcp".into(),
        (17, _) => "udp".into(),
        (132, _) => "sctp".into(),
        (1, Family::Ipv4) => "icmp".into(),
        (58, Family::Ipv6) => "icmpv6".into(),
        (other, _) => other.to_string(),
    }
}

impl EventRecord {
    /// Decodes a kernel event; `boot_to_wall` converts CLOCK_BOOTTIME to
    /// wall-clock time. `None` for a record with an invalid enum (a stale or
    /// corrupt writer), which the caller counts and skips.
    pub fn decode(
        e: &Event,
        boot_to_wall: impl Fn(u64) -> SystemTime,
        cgroup: Option<String>,
    ) -> Option<Self> {
        let family = Family::from_raw(e.family as u32)?;
        let hook = Hook::from_raw(e.hook as u32)?;
        let packet = matches!(hook, Hook::SkbEgress | Hook::TcxEgress);
        let dst = match family {
            Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(
                e.daddr[0], e.daddr[1], e.daddr[2], e.daddr[3],
            )),
            Family::Ipv6 => IpAddr::V6(Ipv6Addr::from(e.daddr)),
        };
        let comm_len = e.comm.iter().position(|&b| b == 0).unwrap_or(e.comm.len());
        // A socket uid from a packet comes without a gid.
        let known_task = e.pid_tgid != 0;
        Some(EventRecord {
            time: humantime::format_rfc3339_micros(boot_to_wall(e.time_ns)).to_string(),
            hook: hook.label(),
            family: family.label(),
            protocol: protocol_name(e.protocol, family),
            dst,
            dport: (e.dport != 0).then_some(e.dport),
            direction: match e.direction {
                DIRECTION_INBOUND => "inbound",
                _ => "outbound",
            },
            sport: (e.sport != 0).then_some(e.sport),
            country: country_label(e.country),
            verdict: Outcome::from_raw(e.outcome as u32)?.label(),
            mode: Mode::from_raw(e.mode as u32)?.label(),
            reason: Source::from_raw(e.source as u32)?.label(),
            pid: known_task.then_some(e.pid_tgid as u32),
            tgid: known_task.then_some((e.pid_tgid >> 32) as u32),
            // Forwarded packets have no sender on this host; a 0 there
            // would read as root.
            uid: (hook != Hook::TcxEgress).then_some(e.uid_gid as u32),
            gid: known_task.then_some((e.uid_gid >> 32) as u32),
            comm: String::from_utf8_lossy(&e.comm[..comm_len]).into_owned(),
            cgroup_id: e.cgroup_id,
            cgroup,
            scope: None,
            located_by: None,
            bytes: packet.then_some(e.bytes),
        })
    }
}

/// The events file: appended, whole lines only, opened again when it is
/// moved, deleted or rotated.
struct EventsFile {
    path: PathBuf,
    file: File,
}

impl EventsFile {
    fn open(path: &Path) -> io::Result<EventsFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // 0640: events name processes, users and destinations.
        // O_NOFOLLOW: a symlink planted at the path would have root
        // append to whatever it names.
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        Ok(EventsFile {
            path: path.to_owned(),
            file,
        })
    }

    /// Whether the path no longer names the open file (renamed away,
    /// deleted, or another file put there).
    fn moved(&self) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        let Ok(open) = self.file.metadata() else {
            return false;
        };
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) => m.dev() != open.dev() || m.ino() != open.ino(),
            Err(e) => e.kind() == io::ErrorKind::NotFound,
        }
    }

    /// Writes `lines` (each `\n`-terminated); returns how many of them are
    /// in the file. After a failed or short write the file is cut back to
    /// its last complete line, so it only ever holds whole lines.
    fn write(&mut self, lines: &str) -> (usize, Option<io::Error>) {
        let start = self.file.metadata().map(|m| m.len());
        let bytes = lines.as_bytes();
        let mut written = 0;
        let error = loop {
            if written == bytes.len() {
                break None;
            }
            match (&self.file).write(&bytes[written..]) {
                Ok(0) => break Some(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Some(e),
            }
        };
        let whole = bytes[..written]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1);
        if whole < written {
            match start {
                Ok(start) => {
                    if let Err(e) = self.file.set_len(start + whole as u64) {
                        tracing::warn!(file = %self.path.display(), error = %e, "cannot cut a torn event line back");
                    }
                }
                Err(e) => {
                    tracing::warn!(file = %self.path.display(), error = %e, "cannot cut a torn event line back")
                }
            }
        }
        let complete = bytes[..whole].iter().filter(|&&b| b == b'\n').count();
        (complete, error)
    }
}

/// Where lines go.
struct Sinks {
    file: Option<EventsFile>,
    stdout: bool,
}

impl Sinks {
    fn open(config: &EventsConfig) -> io::Result<Sinks> {
        let file = match &config.file {
            Some(path) => Some(EventsFile::open(path)?),
            None => None,
        };
        Ok(Sinks {
            file,
            stdout: config.stdout,
        })
    }
}

/// The events sinks' health and how events reach them.
#[derive(Debug)]
pub struct SinksHealth {
    pub file: std::sync::Arc<crate::status::SinkHealth>,
    pub stdout: std::sync::Arc<crate::status::SinkHealth>,
}

impl SinksHealth {
    pub fn new(config: &EventsConfig) -> Self {
        use crate::status::SinkHealth;
        SinksHealth {
            file: std::sync::Arc::new(SinkHealth::new("events_file", config.file.clone())),
            stdout: std::sync::Arc::new(SinkHealth::new("events_stdout", None)),
        }
    }
}

/// Writes a batch of `n` event lines to the sinks; returns how many events
/// some sink did not get (`enforcer_events_write_errors_total` counts
/// events, not batches).
fn write_batch(
    sinks: &mut Option<Sinks>,
    config: &EventsConfig,
    lines: &str,
    n: usize,
    health: &SinksHealth,
) -> usize {
    let Some(s) = sinks else {
        // The file could not be opened: try again at each batch.
        if config.file.is_some() {
            health.file.update(|st| st.dropped += n as u64);
            *sinks = open_sinks(config, health);
            if sinks.is_none() {
                return n;
            }
            return write_batch(sinks, config, lines, n, health);
        }
        return n;
    };
    let mut lost = 0;
    if let Some(f) = &mut s.file {
        if f.moved() {
            match EventsFile::open(&f.path) {
                Ok(new) => {
                    tracing::info!(file = %f.path.display(), "the events file was moved; writing to a new file at its path");
                    *f = new;
                    health.file.update(|st| st.reopens += 1);
                }
                Err(e) => {
                    tracing::warn!(file = %f.path.display(), error = %e, "the events file was moved and cannot be opened again; still writing to the moved file")
                }
            }
        }
        let (written, error) = f.write(lines);
        let file_lost = n.saturating_sub(written);
        match error {
            None => health.file.update(|st| st.healthy = true),
            Some(e) => {
                tracing::warn!(file = %f.path.display(), error = %e, lost = file_lost, "cannot write events");
                health.file.failed(e.to_string());
            }
        }
        if file_lost > 0 {
            health.file.update(|st| st.dropped += file_lost as u64);
        }
        lost = lost.max(file_lost);
    }
    if s.stdout {
        let mut out = io::stdout().lock();
        match out.write_all(lines.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => health.stdout.update(|st| st.healthy = true),
            Err(e) => {
                // A pipe does not take a line back: the batch counts as lost.
                health.stdout.failed(e.to_string());
                health.stdout.update(|st| st.dropped += n as u64);
                lost = n;
            }
        }
    }
    lost
}

/// Opens the event sinks a config asks for (done before anything is
/// attached, so an unwritable events file fails the start cleanly).
pub fn check_sinks(config: &EventsConfig) -> io::Result<()> {
    Sinks::open(config).map(drop)
}

/// CLOCK_BOOTTIME nanoseconds to wall-clock time, by the current offset
/// between the two clocks.
fn boot_to_wall() -> impl Fn(u64) -> SystemTime {
    use nix::time::{ClockId, clock_gettime};
    let now_wall = SystemTime::now();
    let now_boot = clock_gettime(ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0);
    move |ns| {
        if ns <= now_boot {
            now_wall - Duration::from_nanos(now_boot - ns)
        } else {
            now_wall + Duration::from_nanos(ns - now_boot)
        }
    }
}

/// Cgroup ids to paths, found by walking the scope's cgroup directories
/// (a cgroup's id is its inode number on cgroup2).
pub struct CgroupNames {
    roots: Vec<PathBuf>,
    known: HashMap<u64, String>,
    last_walk: Option<Instant>,
}

impl CgroupNames {
    pub fn new(roots: Vec<PathBuf>) -> Self {
        Self {
            roots,
            known: HashMap::new(),
            last_walk: None,
        }
    }

    /// The scope entry (one of the roots, as labelled in `status`) a
    /// cgroup path from [`Self::lookup`] is under.
    pub fn scope_of(&self, path: &str) -> Option<String> {
        self.roots
            .iter()
            .find(|r| Path::new(path).starts_with(r))
            .map(|r| r.display().to_string())
    }

    /// The path of a cgroup id; walks the tree again at most once a second.
    pub fn lookup(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.known.get(&id) {
            return Some(p.clone());
        }
        if self
            .last_walk
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return None;
        }
        self.last_walk = Some(Instant::now());
        let mut budget = 100_000usize;
        for root in self.roots.clone() {
            walk(&root, 0, &mut budget, &mut self.known);
        }
        self.known.get(&id).cloned()
    }
}

/// The name of an interface of the agent's network namespace, by index
/// (a forwarded packet's event names its interface, the scope entry).
fn interface_name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname may write; the
    // result is checked for null before the buffer is read as a C string.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

fn walk(dir: &Path, depth: u32, budget: &mut usize, known: &mut HashMap<u64, String>) {
    use std::os::unix::fs::MetadataExt as _;
    if depth > 32 || *budget == 0 {
        return;
    }
    *budget -= 1;
    if let Ok(meta) = std::fs::metadata(dir) {
        known.insert(meta.ino(), dir.display().to_string());
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), depth + 1, budget, known);
            }
        }
    }
}

/// Events for the control socket's `events` verb: the most recent ones,
/// and a broadcast of each new one to the clients following.
#[derive(Debug)]
pub struct EventsHub {
    tx: tokio::sync::broadcast::Sender<std::sync::Arc<str>>,
    recent: std::sync::Mutex<std::collections::VecDeque<std::sync::Arc<str>>>,
    keep: usize,
}

impl EventsHub {
    /// Keeps the last `keep` events; a follower may fall `keep` behind
    /// before it is told it lagged.
    pub fn new(keep: usize) -> Self {
        let keep = keep.max(1);
        Self {
            tx: tokio::sync::broadcast::channel(keep).0,
            recent: std::sync::Mutex::new(std::collections::VecDeque::with_capacity(keep)),
            keep,
        }
    }

    /// One event line (JSON, no newline).
    pub fn publish(&self, line: &str) {
        let line: std::sync::Arc<str> = line.into();
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == self.keep {
            recent.pop_front();
        }
        recent.push_back(std::sync::Arc::clone(&line));
        // No receivers is fine: nobody follows.
        let _ = self.tx.send(line);
    }

    /// The recent events and a receiver for the next ones, taken under one
    /// lock so that no event is in both or in neither.
    pub fn subscribe(
        &self,
    ) -> (
        Vec<std::sync::Arc<str>>,
        tokio::sync::broadcast::Receiver<std::sync::Arc<str>>,
    ) {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        (recent.iter().cloned().collect(), self.tx.subscribe())
    }
}

/// Reads events until `stop` resolves: decodes, counts, writes. Config
/// changes (a reload) arrive on `config`.
// Each argument is a distinct handle the agent shares with this task; a
// struct bundling them would only move the list.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    pin_dir: PathBuf,
    mut config: tokio::sync::watch::Receiver<EventsConfig>,
    counts: std::sync::Arc<EventCounts>,
    mut names: CgroupNames,
    hub: std::sync::Arc<EventsHub>,
    audit: crate::audit::SharedAudit,
    health: std::sync::Arc<SinksHealth>,
    status: crate::status::SharedStatus,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<(), DatapathError> {
    let ring: RingBuf<MapData> =
        RingBuf::try_from(open_pinned(&pin_dir, EVENTS)?).map_err(map_err(EVENTS))?;
    // SAFETY: the RingBuf owns its map fd for as long as it lives and
    // always reports that same fd.
    let mut ring =
        unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(|e| {
            DatapathError::Pin {
                path: pin_dir.clone(),
                detail: format!("polling the EVENTS ring buffer: {}", e.into_parts().1),
            }
        })?;
    let mut current = config.borrow_and_update().clone();
    let mut sinks = open_sinks(&current, &health);
    // Between batches, a moved events file or audit log is noticed within
    // this period (a batch checks at once).
    let mut sink_checks = tokio::time::interval(SINK_CHECK_INTERVAL);
    sink_checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            changed = config.changed() => {
                if changed.is_err() {
                    break;
                }
                // A reload (or SIGHUP, or `enforcer reload`, even a failed
                // one): open the sinks again at their paths.
                current = config.borrow_and_update().clone();
                let moved = matches!(&sinks, Some(Sinks { file: Some(f), .. }) if f.moved());
                health.file.update(|st| st.path.clone_from(&current.file));
                sinks = open_sinks(&current, &health);
                if moved && sinks.as_ref().is_some_and(|s| s.file.is_some()) {
                    tracing::info!(file = ?current.file, "the events file was moved; writing to a new file at its path");
                    health.file.update(|st| st.reopens += 1);
                }
            }
            _ = sink_checks.tick() => {
                if let Some(Sinks { file: Some(f), .. }) = &mut sinks
                    && f.moved()
                {
                    match EventsFile::open(&f.path) {
                        Ok(new) => {
                            tracing::info!(file = %f.path.display(), "the events file was moved; writing to a new file at its path");
                            *f = new;
                            health.file.update(|st| st.reopens += 1);
                        }
                        Err(e) => tracing::warn!(file = %f.path.display(), error = %e, "the events file was moved and cannot be opened again"),
                    }
                }
                // Writes anything waiting (a full disk that has space
                // again), chains in a gap record, follows a moved log.
                audit.flush();
            }
            guard = ring.readable_mut() => {
                let mut guard = match guard {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot poll the EVENTS ring buffer; events stop");
                        break;
                    }
                };
                let to_wall = boot_to_wall();
                // The sources of the policy in force, once per batch.
                let provenance = std::sync::Arc::clone(
                    &status.read().unwrap_or_else(|e| e.into_inner()).provenance,
                );
                let mut lines = String::new();
                let mut n_lines = 0usize;
                // (hook, outcome) of each event of the batch: counted once
                // the batch is written, so enforcer_events_total never runs
                // ahead of the file.
                let mut read = Vec::new();
                let rb = guard.get_inner_mut();
                let mut drained = true;
                while n_lines < MAX_BATCH {
                    let Some(item) = rb.next() else {
                        break;
                    };
                    if item.len() < size_of::<Event>() {
                        continue;
                    }
                    // SAFETY: the record is at least an Event long, and Event
                    // is plain integers (any bit pattern is valid); unaligned
                    // read because the item is a byte slice.
                    let e: Event = unsafe { item.as_ptr().cast::<Event>().read_unaligned() };
                    // 0: no cgroup (forwarded traffic); no walk of the tree
                    // for an id that cannot be found.
                    let cgroup = (e.cgroup_id != 0)
                        .then(|| names.lookup(e.cgroup_id))
                        .flatten();
                    let Some(mut record) = EventRecord::decode(&e, &to_wall, cgroup) else {
                        tracing::warn!("skipping an event record that does not decode");
                        continue;
                    };
                    record.scope = if e.ifindex != 0 {
                        interface_name(e.ifindex)
                    } else {
                        record.cgroup.as_deref().and_then(|p| names.scope_of(p))
                    };
                    record.located_by = located_by(&provenance, &e, record.dst);
                    if let (Some(h), Some(o)) = (Hook::from_raw(e.hook as u32), Outcome::from_raw(e.outcome as u32)) {
                        read.push((h as usize, o as usize));
                    }
                    audit.record(crate::audit::Kind::Event((&record).into()));
                    match serde_json::to_string(&record) {
                        Ok(line) => {
                            hub.publish(&line);
                            lines.push_str(&line);
                            lines.push('\n');
                            n_lines += 1;
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot encode an event"),
                    }
                }
                if n_lines >= MAX_BATCH {
                    // More may wait: stay ready, and come back after this
                    // batch is written.
                    drained = false;
                }
                if drained {
                    guard.clear_ready();
                }
                if !lines.is_empty() {
                    // One fsync per batch of events, not per event.
                    audit.flush();
                    let lost = write_batch(&mut sinks, &current, &lines, n_lines, &health);
                    counts.write_errors.fetch_add(lost as u64, Ordering::Relaxed);
                }
                for (h, o) in read {
                    counts.read[h][o].fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    Ok(())
}

/// The source that located an event's destination: only when GeoIP gave
/// its country (a site network's country is the config's).
fn located_by(
    provenance: &geoip::Provenance,
    e: &Event,
    dst: IpAddr,
) -> Option<crate::datapath::explain::LocatedBy> {
    let by_geoip = matches!(
        Source::from_raw(e.source as u32),
        Some(Source::Geoip | Source::DenyException)
    );
    let code = enforcer_common::country::code(e.country)?;
    let country = geoip::CountryCode::new(code)?;
    by_geoip
        .then(|| crate::datapath::explain::LocatedBy::find(provenance, dst, country))
        .flatten()
}

/// Events per batch at most: a full ring buffer (1 MiB, about 8,000
/// events) is written in several batches, so the lines of one batch stay
/// small in memory.
const MAX_BATCH: usize = 1024;

/// How often the events task checks, between batches, whether the events
/// file or the audit log was moved, and retries waiting audit records.
const SINK_CHECK_INTERVAL: Duration = Duration::from_secs(1);

fn open_sinks(config: &EventsConfig, health: &SinksHealth) -> Option<Sinks> {
    match Sinks::open(config) {
        Ok(s) => {
            if s.file.is_some() {
                health.file.update(|st| st.healthy = true);
            }
            Some(s)
        }
        Err(e) => {
            tracing::error!(error = %e, file = ?config.file, "cannot open the events file; events are counted, not written");
            health.file.failed(format!("opening: {e}"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moved_events_file_is_noticed_and_batches_count_events() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("events.jsonl");
        let config = EventsConfig {
            rate_per_cpu: 1,
            burst: 1,
            file: Some(path.clone()),
            stdout: false,
        };
        let health = SinksHealth::new(&config);
        let mut sinks = open_sinks(&config, &health);
        assert_eq!(write_batch(&mut sinks, &config, "{}\n{}\n", 2, &health), 0);
        let old = dir.path().join("events.jsonl.1");
        std::fs::rename(&path, &old).expect("rename");
        assert!(
            sinks
                .as_ref()
                .and_then(|s| s.file.as_ref())
                .is_some_and(EventsFile::moved)
        );
        assert_eq!(write_batch(&mut sinks, &config, "{}\n", 1, &health), 0);
        assert_eq!(std::fs::read_to_string(&old).unwrap(), "{}\n{}\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}\n");
        let st = health.file.snapshot();
        assert_eq!((st.reopens, st.dropped, st.healthy), (1, 0, true));
    }

    #[test]
    fn a_failed_write_leaves_whole_lines_and_counts_the_events_not_written() {
        // /dev/full: every write fails with ENOSPC.
        let mut f = EventsFile {
            path: PathBuf::from("/dev/full"),
            file: OpenOptions::new()
                .append(true)
                .open("/dev/full")
                .expect("/dev/full"),
        };
        let (written, error) = f.write("{}\n{}\n{}\n");
        assert_eq!(written, 0);
        assert_eq!(error.and_then(|e| e.raw_os_error()), Some(libc::ENOSPC));
    }

    #[test]
    fn decodes_a_connect_event() {
        let mut daddr = [0u8; 16];
        daddr[..4].copy_from_slice(&[198, 51, 100, 20]);
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        let e = Event {
            time_ns: 5_000_000_000,
            cgroup_id: 42,
            pid_tgid: (7u64 << 32) | 8,
            uid_gid: (1000u64 << 32) | 1001,
            daddr,
            comm,
            bytes: 0,
            dport: 443,
            country: enforcer_common::country::index(*b"US").expect("code"),
            hook: Hook::Connect4 as u8,
            family: Family::Ipv4 as u8,
            protocol: 6,
            outcome: Outcome::Denied as u8,
            mode: Mode::Enforce as u8,
            source: Source::Geoip as u8,
            direction: 0,
            _pad0: 0,
            sport: 0,
            _pad: [0; 2],
            ifindex: 0,
        };
        let r = EventRecord::decode(&e, |_| SystemTime::UNIX_EPOCH, Some("/cg/x".into()))
            .expect("decodes");
        let json = serde_json::to_string(&r).expect("json");
        assert_eq!(
            json,
            r#"{"time":"1970-01-01T00:00:00.000000Z","hook":"connect4","family":"ipv4","protocol":"tcp","dst":"198.51.100.20","dport":443,"direction":"outbound","country":"US","verdict":"denied","mode":"enforce","reason":"geoip","pid":8,"tgid":7,"uid":1001,"gid":1000,"comm":"curl","cgroup_id":42,"cgroup":"/cg/x"}"#
        );
        let bad = Event { outcome: 9, ..e };
        assert!(EventRecord::decode(&bad, |_| SystemTime::UNIX_EPOCH, None).is_none());
    }

    #[test]
    fn decodes_a_forwarded_packet_event_without_a_sender() {
        let mut daddr = [0u8; 16];
        daddr[..4].copy_from_slice(&[198, 51, 100, 20]);
        let e = Event {
            time_ns: 5_000_000_000,
            cgroup_id: 0,
            pid_tgid: 0,
            uid_gid: 0,
            daddr,
            comm: [0; 16],
            bytes: 84,
            dport: 0,
            country: enforcer_common::country::index(*b"US").expect("code"),
            hook: Hook::TcxEgress as u8,
            family: Family::Ipv4 as u8,
            protocol: 1,
            outcome: Outcome::WouldDeny as u8,
            mode: Mode::Observe as u8,
            source: Source::Geoip as u8,
            direction: 0,
            _pad0: 0,
            sport: 0,
            _pad: [0; 2],
            ifindex: 0,
        };
        let r = EventRecord::decode(&e, |_| SystemTime::UNIX_EPOCH, None).expect("decodes");
        assert_eq!(
            serde_json::to_string(&r).expect("json"),
            r#"{"time":"1970-01-01T00:00:00.000000Z","hook":"tcx_egress","family":"ipv4","protocol":"icmp","dst":"198.51.100.20","direction":"outbound","country":"US","verdict":"would_deny","mode":"observe","reason":"geoip","cgroup_id":0,"bytes":84}"#,
            "no pid, uid or comm: the sender is not on this host"
        );
    }
}
