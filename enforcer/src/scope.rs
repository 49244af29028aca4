//! Resolving the configured scope to cgroup2 directories to attach to.
//!
//! Every target is opened (and checked to be a cgroup2 directory) before
//! anything is attached, so a missing cgroup fails the whole attach instead
//! of leaving half the scope enforced.

use std::{
    fs::File,
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};

use enforcer_common::Mode;

use crate::{
    config::{ModeOverride, Scope},
    paths,
};

/// An attach target.
#[derive(Debug)]
pub struct CgroupTarget {
    /// Absolute path of the cgroup directory.
    pub path: PathBuf,
    /// The open directory (what the kernel attaches to).
    pub dir: File,
    /// The cgroup id (its cgroup2 inode number), as `bpf_get_current_cgroup_id()` and
    /// bpf_link_info report it.
    pub id: u64,
}

/// An error resolving the scope.
#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    #[error("cannot find the cgroup2 mount: {0}")]
    Mount(io::Error),
    #[error("scope cgroup {path}: {message}")]
    Cgroup { path: PathBuf, message: String },
}

/// Opens every cgroup of the scope.
pub fn resolve(scope: &Scope) -> Result<Vec<CgroupTarget>, ScopeError> {
    let mount = paths::cgroup2_mount().map_err(ScopeError::Mount)?;
    resolve_under(&mount, scope)
}

/// A resolved per-cgroup mode override.
#[derive(Debug)]
pub struct ResolvedOverride {
    pub target: CgroupTarget,
    pub mode: Mode,
}

/// Opens the cgroup of every override and checks that it is inside the
/// scope: the datapath never runs outside it, so an override there would
/// silently do nothing.
pub fn resolve_overrides(
    scope: &Scope,
    overrides: &[ModeOverride],
) -> Result<Vec<ResolvedOverride>, ScopeError> {
    if overrides.is_empty() {
        return Ok(Vec::new());
    }
    let mount = paths::cgroup2_mount().map_err(ScopeError::Mount)?;
    let roots: Vec<PathBuf> = match scope {
        Scope::HostWide => vec![mount.clone()],
        Scope::Cgroups(list) => list
            .iter()
            .map(|p| {
                let p = absolute(&mount, p);
                std::fs::canonicalize(&p).unwrap_or(p)
            })
            .collect(),
    };
    overrides
        .iter()
        .map(|o| {
            let target = open(&mount, absolute(&mount, &o.cgroup))?;
            if !roots.iter().any(|r| target.path.starts_with(r)) {
                return Err(ScopeError::Cgroup {
                    path: target.path,
                    message: "has a mode override but is not inside the scope (scope.cgroups)"
                        .into(),
                });
            }
            Ok(ResolvedOverride {
                target,
                mode: o.mode,
            })
        })
        .collect()
}

fn absolute(mount: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        mount.join(p)
    }
}

/// Like [`resolve`] with a known cgroup2 mount point.
pub fn resolve_under(mount: &Path, scope: &Scope) -> Result<Vec<CgroupTarget>, ScopeError> {
    let paths: Vec<PathBuf> = match scope {
        Scope::HostWide => vec![mount.to_owned()],
        Scope::Cgroups(list) => list.iter().map(|p| absolute(mount, p)).collect(),
    };
    let targets = paths
        .into_iter()
        .map(|p| open(mount, p))
        .collect::<Result<Vec<_>, _>>()?;
    check_disjoint(&targets)?;
    Ok(targets)
}

/// Refuses a scope that lists one cgroup twice or one inside another: the
/// programs of both would run for the inner cgroup's sockets (cgroup
/// programs of ancestors run too), so every connection there would be
/// decided, counted and reported twice.
fn check_disjoint(targets: &[CgroupTarget]) -> Result<(), ScopeError> {
    for (i, a) in targets.iter().enumerate() {
        for b in &targets[..i] {
            let message = if a.id == b.id {
                format!(
                    "is listed twice in scope.cgroups (same cgroup as {})",
                    b.path.display()
                )
            } else if a.path.starts_with(&b.path) {
                format!(
                    "is inside scope cgroup {}, which already covers it; list only the outer one",
                    b.path.display()
                )
            } else if b.path.starts_with(&a.path) {
                format!(
                    "contains scope cgroup {}, which it already covers; list only the outer one",
                    b.path.display()
                )
            } else {
                continue;
            };
            return Err(ScopeError::Cgroup {
                path: a.path.clone(),
                message,
            });
        }
    }
    Ok(())
}

fn open(mount: &Path, path: PathBuf) -> Result<CgroupTarget, ScopeError> {
    let err = |message: String| ScopeError::Cgroup {
        path: path.clone(),
        message,
    };
    // Resolve `..` and symbolic links first, so that the checks below (and
    // the nesting check) see the cgroup's real place in the hierarchy.
    let path = std::fs::canonicalize(&path).map_err(|e| err(format!("cannot open: {e}")))?;
    let err = |message: String| ScopeError::Cgroup {
        path: path.clone(),
        message,
    };
    if !path.starts_with(mount) {
        return Err(err(format!(
            "not under the cgroup2 mount {}",
            mount.display()
        )));
    }
    let dir = File::open(&path).map_err(|e| err(format!("cannot open: {e}")))?;
    let meta = dir.metadata().map_err(|e| err(e.to_string()))?;
    if !meta.is_dir() {
        return Err(err("not a directory".into()));
    }
    match statfs(&path) {
        Ok(s) if s.filesystem_type() == CGROUP2_SUPER_MAGIC => {}
        Ok(_) => return Err(err("not on a cgroup2 file system".into())),
        Err(e) => return Err(err(format!("statfs: {e}"))),
    }
    Ok(CgroupTarget {
        id: meta.ino(),
        path,
        dir,
    })
}
