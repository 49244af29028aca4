//! Scope that follows the services: every configured cgroup and interface
//! stays covered through service restarts, late starts and interference.
//!
//! A bpf_link attaches a program to one cgroup or one interface *object*,
//! not to its path or name. When systemd restarts a unit it removes the
//! unit's cgroup and creates a new one under the same path: the links of
//! the old cgroup go with it (`cgroup_bpf_release` in
//! <https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/cgroup.c>), and
//! the new cgroup has nothing attached. The same holds for an interface
//! deleted and created again. Other losses: a link pin deleted (the agent
//! holds an fd of every link, so that no longer detaches anything, but the
//! pin is what survives the agent), a link detached by another process
//! (`BPF_LINK_DETACH` needs only an fd of it).
//!
//! So the agent does not trust its memory: the main loop compares, for
//! every configured entry, what exists now with what the kernel lists as
//! attached (`BPF_PROG_QUERY`), and attaches again what is missing. It does
//! so when inotify reports a directory created or removed next to a scope
//! cgroup, when rtnetlink reports a link change, and every
//! [`RECONCILE_INTERVAL`] in any case (whatever the cause, a loss lasts at
//! most that long). Every repair is logged, audited (`coverage` records)
//! and counted (`enforcer_coverage_repairs_total{cause}`); `status` and
//! `enforcer_scope_attached{scope,hook}` show each entry's state.
//!
//! What this cannot close: the moment between a cgroup's creation and the
//! first look at it. A process that starts in a new cgroup and connects
//! within that moment is not decided. The benchmark measures the window
//! (`cargo xtask bench`, "coverage"); on systemd hosts issue 16's
//! `BPFProgram=` drop-ins close it.

use std::{
    collections::BTreeMap,
    os::fd::{AsRawFd, OwnedFd, RawFd},
    path::{Path, PathBuf},
    time::Duration,
};

use enforcer_common::Mode;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;

use crate::{
    audit::{self, Kind, SharedAudit},
    config::Config,
    datapath::{
        Datapath, LinkTarget, PROGRAMS, TCX_PROGRAM,
        scopes::{ScopePlace, ScopeTarget},
    },
    paths,
    runtime_mode::RuntimeModes,
    scope,
    status::{ScopeEntry, SharedStatus, unix_now},
};

/// How often every entry is compared with the kernel, events or not.
pub(super) const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// A cgroup, by its configured absolute path.
    Cgroup(PathBuf),
    /// An interface, by name.
    Interface(String),
}

impl Target {
    fn label(&self) -> String {
        match self {
            Target::Cgroup(p) => p.display().to_string(),
            Target::Interface(n) => n.clone(),
        }
    }
}

/// One configured entry and what the loop last found.
#[derive(Debug)]
struct Entry {
    target: Target,
    /// The cgroup id or interface index covered now; `None` while absent.
    current: Option<u64>,
    /// Whether it has existed since the agent began watching it: its next
    /// appearance is then a re-creation.
    existed: bool,
    hooks: BTreeMap<&'static str, bool>,
    state: &'static str,
    since: f64,
    last_covered: Option<f64>,
    error: Option<String>,
}

impl Entry {
    fn new(target: Target) -> Entry {
        Entry {
            target,
            current: None,
            existed: false,
            hooks: BTreeMap::new(),
            state: "waiting",
            since: unix_now(),
            last_covered: None,
            error: None,
        }
    }

    fn set_state(&mut self, state: &'static str) {
        if self.state != state {
            self.state = state;
            self.since = unix_now();
        }
    }

    fn view(&self) -> ScopeEntry {
        ScopeEntry {
            scope: self.target.label(),
            kind: match self.target {
                Target::Cgroup(_) => "cgroup",
                Target::Interface(_) => "interface",
            },
            state: self.state,
            id: self.current,
            hooks: self.hooks.clone(),
            last_covered_unix: self.last_covered,
            since_unix: self.since,
            error: self.error.clone(),
        }
    }
}

/// A repair or loss to log, audit and count.
struct Change {
    scope: String,
    event: &'static str,
    cause: &'static str,
    links: Vec<String>,
    error: Option<String>,
}

/// The configured scope entries, their state, and what wakes the loop.
pub(super) struct Coverage {
    entries: Vec<Entry>,
    /// The per-cgroup mode overrides last written (cgroup id, mode): a
    /// re-created override cgroup has a new id.
    overrides: Vec<(u64, Mode)>,
    watch: ScopeWatch,
    /// The cgroup2 mount the entries' paths are under (scope levels count
    /// from it).
    mount: PathBuf,
    /// What `SCOPE_BY_CG`/`SCOPE_BY_IF` were last made to say; `None`
    /// until the first write, so every start writes them.
    scopes: Option<Vec<ScopeTarget>>,
}

impl Coverage {
    /// The entries of `config`, none looked at yet.
    pub(super) fn new(config: &Config, overrides: &[(u64, Mode)]) -> Self {
        let mut coverage = Coverage {
            entries: Vec::new(),
            overrides: Vec::new(),
            watch: ScopeWatch::new(),
            mount: PathBuf::from("/sys/fs/cgroup"),
            scopes: None,
        };
        coverage.reconfigure(config, overrides);
        coverage
    }

    /// The entries of a new config (after a reload), keeping what was
    /// known about the same ones (whether they existed, when they were
    /// last covered), and the overrides the load wrote.
    pub(super) fn reconfigure(&mut self, config: &Config, overrides: &[(u64, Mode)]) {
        let mount = paths::cgroup2_mount().unwrap_or_else(|_| PathBuf::from("/sys/fs/cgroup"));
        self.mount = mount.clone();
        let targets = scope::configured_paths(&mount, &config.scope)
            .into_iter()
            .map(Target::Cgroup)
            .chain(config.interfaces.iter().cloned().map(Target::Interface));
        let mut old = std::mem::take(&mut self.entries);
        self.entries = targets
            .map(|t| match old.iter().position(|e| e.target == t) {
                Some(i) => old.swap_remove(i),
                None => Entry::new(t),
            })
            .collect();
        self.overrides = overrides.to_vec();
        let mut dirs: Vec<PathBuf> = self
            .entries
            .iter()
            .filter_map(|e| match &e.target {
                Target::Cgroup(p) => Some(p.clone()),
                Target::Interface(_) => None,
            })
            .collect();
        // Runtime overrides' cgroups are not watched: the periodic look
        // finds them within a second.
        dirs.extend(
            config
                .overrides
                .iter()
                .map(|o| scope::absolute(&mount, &o.cgroup)),
        );
        self.watch.set_paths(dirs);
        self.watch.want_links(
            self.entries
                .iter()
                .any(|e| matches!(e.target, Target::Interface(_))),
        );
    }

    /// Waits until something may have changed the scope (a directory next
    /// to a scope cgroup created or removed, a network link changed).
    pub(super) async fn changed(&mut self) {
        self.watch.changed().await;
    }

    /// Compares every entry with the kernel and repairs what is missing;
    /// re-resolves the per-cgroup mode overrides. Publishes the result in
    /// `status`, and logs, audits and counts every change.
    pub(super) fn reconcile(
        &mut self,
        dp: &mut Datapath,
        config: &Config,
        runtime: &RuntimeModes,
        status: &SharedStatus,
        audit: &SharedAudit,
    ) {
        let mut changes = Vec::new();
        for entry in &mut self.entries {
            match entry.target.clone() {
                Target::Cgroup(path) => reconcile_cgroup(dp, entry, &path, &mut changes),
                Target::Interface(name) => reconcile_interface(dp, entry, &name, &mut changes),
            }
        }
        self.repin(dp, &mut changes);
        self.write_scopes(dp);
        let shown = self.reconcile_overrides(dp, config, runtime, &mut changes);
        self.watch.refresh();

        let now = unix_now();
        let mut s = status.write().unwrap_or_else(|e| e.into_inner());
        s.coverage = self.entries.iter().map(Entry::view).collect();
        s.coverage_checked_unix = now;
        if let Some(shown) = shown {
            s.overrides = shown;
        }
        for c in &changes {
            if c.event == "repaired" {
                *s.coverage_repairs.entry(c.cause).or_default() += 1;
            }
        }
        drop(s);
        for c in changes {
            match c.event {
                "repaired" => tracing::warn!(
                    scope = %c.scope,
                    cause = c.cause,
                    links = ?c.links,
                    "scope entry covered again"
                ),
                "waiting" => tracing::warn!(
                    scope = %c.scope,
                    cause = c.cause,
                    "scope entry is gone; it is covered again when it is created"
                ),
                _ => tracing::error!(
                    scope = %c.scope,
                    cause = c.cause,
                    error = c.error.as_deref().unwrap_or("-"),
                    "cannot cover a scope entry; retrying"
                ),
            }
            audit.record(Kind::Coverage(audit::Coverage {
                scope: c.scope,
                event: c.event.to_owned(),
                cause: c.cause.to_owned(),
                links: c.links,
                error: c.error,
            }));
            audit.flush();
        }
    }

    /// Pins again the held links whose pin someone deleted (the held fd
    /// kept them attached).
    fn repin(&mut self, dp: &mut Datapath, changes: &mut Vec<Change>) {
        match dp.repin_missing() {
            Ok(names) => {
                for name in names {
                    let scope = self.scope_of(dp, &name);
                    changes.push(Change {
                        scope,
                        event: "repaired",
                        cause: "pin_deleted",
                        links: vec![name],
                        error: None,
                    });
                }
            }
            Err(e) => changes.push(Change {
                scope: "-".into(),
                event: "failed",
                cause: "pin_deleted",
                links: Vec::new(),
                error: Some(e.to_string()),
            }),
        }
    }

    /// Tells the kernel which scope entry each present cgroup id and
    /// interface index is (`SCOPE_BY_CG`, `SCOPE_BY_IF`), when that changed:
    /// the decision counters' `scope` label. A failure is logged and tried
    /// again on the next pass; meanwhile decisions count as `overflow`.
    fn write_scopes(&mut self, dp: &mut Datapath) {
        let targets: Vec<ScopeTarget> = self
            .entries
            .iter()
            .map(|e| ScopeTarget {
                label: e.target.label(),
                place: match (&e.target, e.current) {
                    (Target::Cgroup(p), Some(id)) => ScopePlace::Cgroup {
                        id,
                        level: p
                            .strip_prefix(&self.mount)
                            .map_or(0, |r| r.components().count() as u32),
                    },
                    (Target::Cgroup(_), None) => ScopePlace::AbsentCgroup,
                    (Target::Interface(_), Some(i)) => ScopePlace::Interface { ifindex: i as u32 },
                    (Target::Interface(_), None) => ScopePlace::AbsentInterface,
                },
            })
            .collect();
        if self.scopes.as_ref() == Some(&targets) {
            return;
        }
        match dp.set_scopes(&targets) {
            Ok(unassigned) => {
                for label in unassigned {
                    tracing::warn!(scope = %label, "no scope slot left for this entry: its decisions are counted with scope=\"overflow\"");
                }
                self.scopes = Some(targets);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot write the scope entries' ids; decisions count as scope=\"overflow\" until it works");
            }
        }
    }

    /// The configured entry a held link belongs to.
    fn scope_of(&self, dp: &Datapath, link: &str) -> String {
        let target = dp.held_links().get(link).map(|l| l.target);
        self.entries
            .iter()
            .find(|e| match (target, &e.target) {
                (Some(LinkTarget::Cgroup(id)), Target::Cgroup(_)) => e.current == Some(id),
                (Some(LinkTarget::Interface(i)), Target::Interface(_)) => {
                    e.current == Some(u64::from(i))
                }
                _ => false,
            })
            .map_or_else(|| link.to_owned(), |e| e.target.label())
    }

    /// Resolves the per-cgroup mode overrides again: an override cgroup
    /// re-created has a new id, and the kernel's override map, keyed by
    /// id, would no longer apply to it. Returns the overrides as `status`
    /// shows them when they changed.
    fn reconcile_overrides(
        &mut self,
        dp: &mut Datapath,
        config: &Config,
        runtime: &RuntimeModes,
        changes: &mut Vec<Change>,
    ) -> Option<Vec<(String, Mode, &'static str)>> {
        if config.overrides.is_empty() && runtime.cgroups.is_empty() {
            return None;
        }
        let modes = match super::apply::effective_modes(config, runtime) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "cannot resolve the mode overrides now");
                return None;
            }
        };
        if modes.ids == self.overrides {
            return None;
        }
        // Only new ids are a repair (a cgroup with an override created or
        // re-created); an override cgroup that went away is just removed
        // from the map.
        let appeared = modes.ids.iter().any(|o| !self.overrides.contains(o));
        let result = dp
            .set_overrides(&modes.ids)
            .and_then(|()| dp.bump_generation().map(drop));
        match result {
            Ok(()) => {
                self.overrides = modes.ids;
                if appeared {
                    changes.push(Change {
                        scope: modes
                            .shown
                            .iter()
                            .map(|(p, _, _)| p.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                        event: "repaired",
                        cause: "override_cgroup_changed",
                        links: Vec::new(),
                        error: None,
                    });
                }
                Some(modes.shown)
            }
            Err(e) => {
                changes.push(Change {
                    scope: "mode overrides".into(),
                    event: "failed",
                    cause: "override_cgroup_changed",
                    links: Vec::new(),
                    error: Some(e.to_string()),
                });
                None
            }
        }
    }
}

fn reconcile_cgroup(dp: &mut Datapath, entry: &mut Entry, path: &Path, changes: &mut Vec<Change>) {
    let label = entry.target.label();
    let target = match scope::open_cgroup(path) {
        Ok(t) => t,
        Err(e) => {
            let message = e.to_string();
            if entry.error.as_deref() != Some(message.as_str()) {
                changes.push(Change {
                    scope: label,
                    event: "failed",
                    cause: "cgroup_unusable",
                    links: Vec::new(),
                    error: Some(message.clone()),
                });
            }
            entry.error = Some(message);
            entry.hooks = PROGRAMS.iter().map(|&(p, _)| (p, false)).collect();
            entry.set_state("error");
            return;
        }
    };
    entry.error = None;
    let Some(target) = target else {
        if let Some(old) = entry.current.take() {
            let links = dp.release(LinkTarget::Cgroup(old));
            changes.push(Change {
                scope: label,
                event: "waiting",
                cause: "cgroup_removed",
                links,
                error: None,
            });
        }
        entry.hooks = PROGRAMS.iter().map(|&(p, _)| (p, false)).collect();
        entry.set_state("waiting");
        return;
    };
    let recreated = entry.current.is_some_and(|c| c != target.id);
    if recreated && let Some(old) = entry.current {
        dp.release(LinkTarget::Cgroup(old));
    }
    let missing = match dp.missing_on_cgroup(&target) {
        Ok(m) => m,
        Err(e) => {
            // Not known to be attached: shown as not attached.
            entry.hooks = PROGRAMS.iter().map(|&(p, _)| (p, false)).collect();
            fail(entry, label, "query_failed", e.to_string(), changes);
            return;
        }
    };
    entry.hooks = PROGRAMS
        .iter()
        .map(|&(p, _)| (p, !missing.iter().any(|&(m, _)| m == p)))
        .collect();
    if !missing.is_empty() {
        let cause = if recreated || (entry.current.is_none() && entry.existed) {
            "cgroup_recreated"
        } else if entry.current.is_none() {
            "cgroup_created"
        } else {
            "link_detached"
        };
        match dp.repair_cgroup(&target, &missing) {
            Ok(links) => {
                for &(p, _) in &missing {
                    entry.hooks.insert(p, true);
                }
                changes.push(Change {
                    scope: label,
                    event: "repaired",
                    cause,
                    links,
                    error: None,
                });
            }
            Err(e) => {
                entry.current = Some(target.id);
                entry.existed = true;
                fail(entry, label, cause, e.to_string(), changes);
                return;
            }
        }
    }
    entry.current = Some(target.id);
    entry.existed = true;
    entry.last_covered = Some(unix_now());
    entry.set_state("covered");
}

fn reconcile_interface(
    dp: &mut Datapath,
    entry: &mut Entry,
    name: &str,
    changes: &mut Vec<Change>,
) {
    let label = entry.target.label();
    let iface = match scope::resolve_interface_if_present(name) {
        Ok(i) => i,
        Err(e) => {
            let message = e.to_string();
            if entry.error.as_deref() != Some(message.as_str()) {
                changes.push(Change {
                    scope: label,
                    event: "failed",
                    cause: "interface_unusable",
                    links: Vec::new(),
                    error: Some(message.clone()),
                });
            }
            entry.error = Some(message);
            entry.hooks = [(TCX_PROGRAM, false)].into();
            entry.set_state("error");
            return;
        }
    };
    entry.error = None;
    let Some(iface) = iface else {
        if let Some(old) = entry.current.take() {
            let links = dp.release(LinkTarget::Interface(old as u32));
            changes.push(Change {
                scope: label,
                event: "waiting",
                cause: "interface_removed",
                links,
                error: None,
            });
        }
        entry.hooks = [(TCX_PROGRAM, false)].into();
        entry.set_state("waiting");
        return;
    };
    let index = u64::from(iface.ifindex);
    let recreated = entry.current.is_some_and(|c| c != index);
    if recreated && let Some(old) = entry.current {
        dp.release(LinkTarget::Interface(old as u32));
    }
    let attached = match dp.tcx_attached(&iface) {
        Ok(a) => a,
        Err(e) => {
            entry.hooks = [(TCX_PROGRAM, false)].into();
            fail(entry, label, "query_failed", e.to_string(), changes);
            return;
        }
    };
    if !attached {
        let cause = if recreated || (entry.current.is_none() && entry.existed) {
            "interface_recreated"
        } else if entry.current.is_none() {
            "interface_created"
        } else {
            "link_detached"
        };
        match dp.repair_interface(&iface) {
            Ok(link) => changes.push(Change {
                scope: label,
                event: "repaired",
                cause,
                links: vec![link],
                error: None,
            }),
            Err(e) => {
                entry.current = Some(index);
                entry.existed = true;
                entry.hooks = [(TCX_PROGRAM, false)].into();
                fail(entry, label, cause, e.to_string(), changes);
                return;
            }
        }
    }
    entry.hooks = [(TCX_PROGRAM, true)].into();
    entry.current = Some(index);
    entry.existed = true;
    entry.last_covered = Some(unix_now());
    entry.set_state("covered");
}

/// A repair that failed: logged and audited when the error is new (the
/// loop retries every interval), the entry shown as partial.
fn fail(
    entry: &mut Entry,
    label: String,
    cause: &'static str,
    message: String,
    changes: &mut Vec<Change>,
) {
    if entry.error.as_deref() != Some(message.as_str()) {
        changes.push(Change {
            scope: label,
            event: "failed",
            cause,
            links: Vec::new(),
            error: Some(message.clone()),
        });
    }
    entry.error = Some(message);
    entry.set_state("partial");
}

/// An fd tokio can poll (nix's types have `AsFd` only).
struct Pollable<T>(T);

impl<T: std::os::fd::AsFd> AsRawFd for Pollable<T> {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// What wakes the loop early: inotify on the directories where scope
/// cgroups come and go, rtnetlink link notifications. Either may be
/// missing (logged); the periodic look still covers everything.
struct ScopeWatch {
    inotify: Option<AsyncFd<Pollable<Inotify>>>,
    /// The paths whose appearance matters, and the directory watched for
    /// each (the nearest one that exists).
    paths: Vec<PathBuf>,
    watched: BTreeMap<PathBuf, WatchDescriptor>,
    netlink: Option<AsyncFd<Pollable<OwnedFd>>>,
}

impl ScopeWatch {
    fn new() -> ScopeWatch {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(std::io::Error::from)
            // SAFETY: Pollable owns the fd for as long as it lives and
            // always reports that same fd.
            .and_then(|i| unsafe { AsyncFd::register(Pollable(i)) }.map_err(|e| e.into_parts().1));
        let inotify = match inotify {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the cgroup tree; scope cgroups are checked every second instead");
                None
            }
        };
        ScopeWatch {
            inotify,
            paths: Vec::new(),
            watched: BTreeMap::new(),
            netlink: None,
        }
    }

    fn set_paths(&mut self, paths: Vec<PathBuf>) {
        self.paths = paths;
        self.refresh();
    }

    /// Watches, for every path, the nearest existing ancestor directory
    /// (the parent once it exists): a cgroup created or removed there is
    /// an `IN_CREATE`/`IN_DELETE` on it (kernfs directories report them
    /// like any other, through the VFS). Directories no longer needed are
    /// unwatched.
    fn refresh(&mut self) {
        let Some(inotify) = &self.inotify else {
            return;
        };
        let wanted: std::collections::BTreeSet<PathBuf> = self
            .paths
            .iter()
            .filter_map(|p| p.ancestors().skip(1).find(|a| a.is_dir()))
            .map(Path::to_owned)
            .collect();
        self.watched.retain(|dir, wd| {
            let keep = wanted.contains(dir) && dir.is_dir();
            if !keep {
                let _ = inotify.get_ref().0.rm_watch(*wd);
            }
            keep
        });
        for dir in wanted {
            if self.watched.contains_key(&dir) {
                continue;
            }
            let flags = AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_DELETE
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_ONLYDIR;
            match inotify.get_ref().0.add_watch(&dir, flags) {
                Ok(wd) => {
                    self.watched.insert(dir, wd);
                }
                Err(e) => {
                    tracing::debug!(dir = %dir.display(), error = %e, "cannot watch a cgroup directory")
                }
            }
        }
    }

    /// Opens the rtnetlink socket (link notifications) when interfaces are
    /// in the scope, closes it otherwise.
    fn want_links(&mut self, want: bool) {
        if !want {
            self.netlink = None;
            return;
        }
        if self.netlink.is_some() {
            return;
        }
        match link_notifications() {
            Ok(fd) => self.netlink = Some(fd),
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to network link changes; scope interfaces are checked every second instead")
            }
        }
    }

    /// Waits for the next notification of either kind and drains it.
    async fn changed(&mut self) {
        let inotify = async {
            match &self.inotify {
                Some(fd) => match fd.readable().await {
                    Ok(mut guard) => {
                        // Drain; which directory changed does not matter.
                        while guard.get_inner().0.read_events().is_ok() {}
                        guard.clear_ready();
                    }
                    Err(_) => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        };
        let netlink = async {
            match &self.netlink {
                Some(fd) => match fd.readable().await {
                    Ok(mut guard) => {
                        let mut buf = [0u8; 8192];
                        // Drain; the contents do not matter (any link change
                        // means "look again"), and an overrun (ENOBUFS)
                        // means the same.
                        while nix::sys::socket::recv(
                            guard.get_inner().0.as_raw_fd(),
                            &mut buf,
                            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
                        )
                        .is_ok_and(|n| n > 0)
                        {}
                        guard.clear_ready();
                    }
                    Err(_) => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = inotify => {}
            () = netlink => {}
        }
    }
}

/// A NETLINK_ROUTE socket subscribed to link notifications (`RTMGRP_LINK`:
/// RTM_NEWLINK/RTM_DELLINK), non-blocking.
fn link_notifications() -> std::io::Result<AsyncFd<Pollable<OwnedFd>>> {
    use nix::sys::socket::{
        AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, socket,
    };
    /// `RTMGRP_LINK` (include/uapi/linux/rtnetlink.h).
    const RTMGRP_LINK: u32 = 1;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, RTMGRP_LINK))?;
    // SAFETY: as in `ScopeWatch::new`.
    unsafe { AsyncFd::register(Pollable(fd)) }.map_err(|e| e.into_parts().1)
}
