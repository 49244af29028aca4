//! Is a cgroup decided by the agent's programs? Asked of the kernel, for
//! `enforcer guard` (run as a service's `ExecStartPre=+`, so a service in
//! scope never starts where nothing decides).
//!
//! The answer never comes from the agent (which may be down) nor from pin
//! names (which say what was meant): for each of the five cgroup hooks, the
//! cgroup's *effective* program list (`BPF_PROG_QUERY` with
//! `BPF_F_QUERY_EFFECTIVE`: programs attached to it and inherited from its
//! ancestors) must hold the program of one of the links pinned under
//! `<pin_dir>/v<layout>/links/`, for that hook. Each link's program and
//! hook are read from the kernel's `bpf_link_info` of the pinned link.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, File},
    io,
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{PROGRAMS, pinned, query, query_attach_type};
use crate::paths::{Cgroup2Mount, PinLayout};

/// How often the kernel is asked again while waiting.
pub const POLL: Duration = Duration::from_millis(50);

/// Why the question could not be answered (not: "not covered", which is
/// an answer, [`Coverage`]).
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("finding the cgroup2 mount: {0}")]
    Mount(#[source] io::Error),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "/proc/self/cgroup has no cgroup2 line (`0::/path`): this process is in no cgroup2 \
         cgroup; pass --cgroup"
    )]
    NoCgroup2Line,
    #[error(
        "cgroup {cgroup} is outside the cgroup2 mount at {mount_point} (whose root is \
         {root}); pass --cgroup"
    )]
    OutsideMount {
        cgroup: PathBuf,
        mount_point: PathBuf,
        root: PathBuf,
    },
    #[error("cgroup {path}: {source} (is it a cgroup2 directory?)")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("BPF_PROG_QUERY on cgroup {path} for {hook}: {source}")]
    Query {
        path: PathBuf,
        hook: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path}: permission denied; reading the agent's pinned links and querying a cgroup \
         need root (CAP_BPF, CAP_NET_ADMIN): in a unit, run it as `ExecStartPre=+...`"
    )]
    Permission { path: PathBuf },
    #[error("pinned link {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The cgroup2 path in `/proc/<pid>/cgroup` text: the `0::/path` line
/// (the others, on hybrid hosts, are cgroup v1 hierarchies). The path is
/// relative to the reader's cgroup namespace root.
pub fn parse_proc_cgroup(text: &str) -> Result<PathBuf, GuardError> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        // A cgroup removed while a process is still in it (a zombie
        // reaper's view) is shown with this suffix.
        .map(|path| PathBuf::from(path.strip_suffix(" (deleted)").unwrap_or(path)))
        .filter(|path| path.is_absolute())
        .ok_or(GuardError::NoCgroup2Line)
}

/// The directory of cgroup `path` (as `/proc/<pid>/cgroup` shows it) under
/// `mount`: the mount shows the cgroup `mount.root` at its mount point, so
/// the path is taken relative to that root. On a host and in a container
/// with its own cgroup namespace and mount the root is `/`; a container
/// given a bind mount of its own subtree without a namespace has its
/// subtree as root and sees its full path in `/proc/self/cgroup`.
pub fn cgroup_dir(mount: &Cgroup2Mount, path: &Path) -> Result<PathBuf, GuardError> {
    let rel = path
        .strip_prefix(&mount.root)
        .map_err(|_| GuardError::OutsideMount {
            cgroup: path.to_owned(),
            mount_point: mount.mount_point.clone(),
            root: mount.root.clone(),
        })?;
    Ok(under(&mount.mount_point, rel))
}

/// `base/rel`, and `base` itself (no trailing '/') when `rel` is empty:
/// the path is shown in messages and compared by tests.
fn under(base: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        base.to_owned()
    } else {
        base.join(rel)
    }
}

/// The cgroup2 directory this process runs in (`enforcer guard` run as a
/// unit's `ExecStartPre` runs in the service's own cgroup).
pub fn own_cgroup() -> Result<PathBuf, GuardError> {
    let mount = crate::paths::cgroup2_mount_info().map_err(GuardError::Mount)?;
    let proc = Path::new("/proc/self/cgroup");
    let text = fs::read_to_string(proc).map_err(|source| GuardError::Read {
        path: proc.to_owned(),
        source,
    })?;
    cgroup_dir(&mount, &parse_proc_cgroup(&text)?)
}

/// A `--cgroup` argument as a directory: a path under the cgroup2 mount
/// point as it is, any other path as a cgroup path (as systemd and
/// `/proc/<pid>/cgroup` show them) relative to the mount point.
pub fn resolve_cgroup(arg: &Path, mount_point: &Path) -> PathBuf {
    if arg.starts_with(mount_point) {
        return arg.to_owned();
    }
    under(mount_point, arg.strip_prefix("/").unwrap_or(arg))
}

/// The programs of the agent's pinned links, by hook.
#[derive(Clone, Debug, Default)]
pub struct AgentPrograms {
    /// Hook (program name) -> ids of the programs the agent's links attach
    /// there.
    by_hook: BTreeMap<&'static str, BTreeSet<u32>>,
    /// Whether the links directory exists at all (an agent ever started
    /// on this pin directory since boot, and it was not uninstalled).
    pub installed: bool,
}

impl AgentPrograms {
    /// Reads every link pinned under `pin_dir`, in the links directory of
    /// every layout version (`v<N>/links`), not only this binary's: during
    /// a package upgrade the new binary is on disk while the old agent
    /// still enforces with its own layout's links until it is restarted,
    /// and a service started in that moment is covered by them. A link's
    /// hook comes from the kernel (its attach type), not from its pin's
    /// name, so any layout's links count. A pin removed while being read
    /// (an agent replacing its links) is skipped: the next poll sees its
    /// successor.
    pub fn read(pin_dir: &Path) -> Result<AgentPrograms, GuardError> {
        let mut out = AgentPrograms::default();
        let current = PinLayout::new(pin_dir).links;
        let mut dirs = vec![current.clone()];
        match fs::read_dir(pin_dir) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    let versioned = name
                        .strip_prefix('v')
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
                    let links = entry.path().join("links");
                    if versioned && links != current {
                        dirs.push(links);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(GuardError::Permission {
                    path: pin_dir.to_owned(),
                });
            }
            Err(source) => {
                return Err(GuardError::Read {
                    path: pin_dir.to_owned(),
                    source,
                });
            }
        }
        for links in dirs {
            out.read_links(&links)?;
        }
        Ok(out)
    }

    /// Adds the links pinned in one links directory.
    fn read_links(&mut self, links: &Path) -> Result<(), GuardError> {
        let entries = match fs::read_dir(links) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(GuardError::Permission {
                    path: links.to_owned(),
                });
            }
            Err(source) => {
                return Err(GuardError::Read {
                    path: links.to_owned(),
                    source,
                });
            }
        };
        self.installed = true;
        for entry in entries {
            let path = entry
                .map_err(|source| GuardError::Read {
                    path: links.to_owned(),
                    source,
                })?
                .path();
            let link_err = |source: io::Error| match source.raw_os_error() {
                Some(libc::EACCES | libc::EPERM) => GuardError::Permission { path: path.clone() },
                _ => GuardError::Link {
                    path: path.clone(),
                    source,
                },
            };
            let fd = match pinned::obj_get(&path, 0) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(link_err(e)),
            };
            let Some(info) = query::cgroup_link_info(fd.as_fd()).map_err(link_err)? else {
                continue;
            };
            if let Some(&(hook, _)) = PROGRAMS
                .iter()
                .find(|(name, _)| query_attach_type(name) == info.attach_type)
            {
                self.by_hook.entry(hook).or_default().insert(info.prog_id);
            }
        }
        Ok(())
    }
}

/// Whether one hook of a cgroup is decided by the agent.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HookCoverage {
    pub hook: &'static str,
    pub covered: bool,
}

/// The kernel's answer for one cgroup.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Coverage {
    pub cgroup: PathBuf,
    /// The cgroup id (its directory's inode number), as `enforcer status`
    /// and the link pin names show it.
    pub cgroup_id: u64,
    /// Whether any link is pinned under the pin directory.
    pub installed: bool,
    pub hooks: Vec<HookCoverage>,
}

impl Coverage {
    /// Every hook is decided by one of the agent's programs.
    pub fn covered(&self) -> bool {
        self.hooks.iter().all(|h| h.covered)
    }

    /// The hooks that are not.
    pub fn missing(&self) -> Vec<&'static str> {
        self.hooks
            .iter()
            .filter(|h| !h.covered)
            .map(|h| h.hook)
            .collect()
    }
}

/// An open cgroup directory, kept open while waiting: the question is
/// about this cgroup, not whatever is at its path later.
pub struct Cgroup {
    path: PathBuf,
    id: u64,
    dir: File,
}

impl Cgroup {
    pub fn open(path: &Path) -> Result<Cgroup, GuardError> {
        let err = |source| GuardError::Cgroup {
            path: path.to_owned(),
            source,
        };
        let dir = File::open(path).map_err(err)?;
        let meta = dir.metadata().map_err(err)?;
        if !meta.is_dir() {
            return Err(err(io::Error::from(io::ErrorKind::NotADirectory)));
        }
        Ok(Cgroup {
            path: path.to_owned(),
            id: meta.ino(),
            dir,
        })
    }

    /// Which hooks of this cgroup the agent's programs decide.
    pub fn coverage(&self, agent: &AgentPrograms) -> Result<Coverage, GuardError> {
        let mut hooks = Vec::with_capacity(PROGRAMS.len());
        for &(hook, _) in PROGRAMS {
            let effective = query::effective_programs(self.dir.as_fd(), query_attach_type(hook))
                .map_err(|source| match source.raw_os_error() {
                    Some(libc::EPERM | libc::EACCES) => GuardError::Permission {
                        path: self.path.clone(),
                    },
                    _ => GuardError::Query {
                        path: self.path.clone(),
                        hook,
                        source,
                    },
                })?;
            let ours = agent.by_hook.get(hook);
            let covered = effective
                .iter()
                .any(|id| ours.is_some_and(|o| o.contains(id)));
            hooks.push(HookCoverage { hook, covered });
        }
        Ok(Coverage {
            cgroup: self.path.clone(),
            cgroup_id: self.id,
            installed: agent.installed,
            hooks,
        })
    }

    /// Asks every [`POLL`] until every hook is covered or `wait` has
    /// passed; returns the last answer. The pins are read again each time:
    /// an agent starting meanwhile pins new links, one replacing its links
    /// renames new pins over the old ones.
    pub fn wait_covered(&self, pin_dir: &Path, wait: Duration) -> Result<Coverage, GuardError> {
        let start = Instant::now();
        loop {
            let coverage = self.coverage(&AgentPrograms::read(pin_dir)?)?;
            let elapsed = start.elapsed();
            if coverage.covered() || elapsed >= wait {
                return Ok(coverage);
            }
            std::thread::sleep(POLL.min(wait - elapsed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_line_among_v1_lines() {
        let hybrid = "12:pids:/system.slice/db.service\n\
                      11:memory:/system.slice/db.service\n\
                      1:name=systemd:/system.slice/db.service\n\
                      0::/residency.slice/db.service\n";
        assert_eq!(
            parse_proc_cgroup(hybrid).ok(),
            Some(PathBuf::from("/residency.slice/db.service"))
        );
    }

    #[test]
    fn the_namespace_root_is_a_cgroup_too() {
        // In a container with its own cgroup namespace, the process's
        // cgroup is the namespace root.
        assert_eq!(parse_proc_cgroup("0::/\n").ok(), Some(PathBuf::from("/")));
        let mount = Cgroup2Mount {
            root: PathBuf::from("/"),
            mount_point: PathBuf::from("/sys/fs/cgroup"),
        };
        assert_eq!(
            cgroup_dir(&mount, Path::new("/")).ok(),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn a_missing_cgroup2_line_is_an_error() {
        let v1_only = "12:pids:/user.slice\n1:name=systemd:/user.slice/session-1.scope\n";
        assert!(matches!(
            parse_proc_cgroup(v1_only),
            Err(GuardError::NoCgroup2Line)
        ));
        assert!(matches!(
            parse_proc_cgroup(""),
            Err(GuardError::NoCgroup2Line)
        ));
        assert!(matches!(
            parse_proc_cgroup("0::\n"),
            Err(GuardError::NoCgroup2Line)
        ));
    }

    #[test]
    fn a_deleted_cgroup_keeps_its_path() {
        assert_eq!(
            parse_proc_cgroup("0::/residency.slice/x.service (deleted)\n").ok(),
            Some(PathBuf::from("/residency.slice/x.service"))
        );
    }

    #[test]
    fn cgroup_paths_map_under_the_mount() {
        let hybrid = Cgroup2Mount {
            root: PathBuf::from("/"),
            mount_point: PathBuf::from("/sys/fs/cgroup/unified"),
        };
        assert_eq!(
            cgroup_dir(&hybrid, Path::new("/residency.slice/db.service")).ok(),
            Some(PathBuf::from(
                "/sys/fs/cgroup/unified/residency.slice/db.service"
            ))
        );
        // A container's own subtree bind-mounted, no cgroup namespace.
        let subtree = Cgroup2Mount {
            root: PathBuf::from("/docker/abc"),
            mount_point: PathBuf::from("/sys/fs/cgroup"),
        };
        assert_eq!(
            cgroup_dir(&subtree, Path::new("/docker/abc/app")).ok(),
            Some(PathBuf::from("/sys/fs/cgroup/app"))
        );
        assert!(matches!(
            cgroup_dir(&subtree, Path::new("/docker/other")),
            Err(GuardError::OutsideMount { .. })
        ));
    }

    #[test]
    fn cgroup_arguments_resolve_under_the_mount() {
        let m = Path::new("/sys/fs/cgroup");
        assert_eq!(
            resolve_cgroup(Path::new("/sys/fs/cgroup/residency.slice"), m),
            PathBuf::from("/sys/fs/cgroup/residency.slice")
        );
        assert_eq!(
            resolve_cgroup(Path::new("/residency.slice/db.service"), m),
            PathBuf::from("/sys/fs/cgroup/residency.slice/db.service")
        );
        assert_eq!(
            resolve_cgroup(Path::new("residency.slice"), m),
            PathBuf::from("/sys/fs/cgroup/residency.slice")
        );
        assert_eq!(resolve_cgroup(Path::new("/"), m), PathBuf::from(m));
    }
}
