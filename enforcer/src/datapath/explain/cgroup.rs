//! Which cgroup a verdict is explained for: a cgroup and the ids of its
//! ancestors, found by path or by id in the cgroup2 file system, so the
//! per-cgroup mode overrides are looked up at the same levels the kernel
//! walks.

use std::{
    fs,
    os::unix::fs::{DirEntryExt as _, MetadataExt as _},
    path::{Path, PathBuf},
};

use super::ExplainError;
use crate::paths;

/// The id of the root cgroup of the cgroup2 hierarchy (its kernfs inode).
pub(super) const ROOT_CGROUP_ID: u64 = 1;

/// A cgroup and the ids of its ancestors, root first: what the kernel's
/// `bpf_get_current_ancestor_cgroup_id(level)` and
/// `bpf_skb_ancestor_cgroup_id(level)` give for level 0, 1, ... (a cgroup's
/// id is its inode number in the cgroup2 file system).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupAncestry {
    /// The cgroup's directory.
    pub path: PathBuf,
    /// The root's id (1) first, the cgroup's own last.
    pub ids: Vec<u64>,
    /// The cgroup2 mount `path` is under.
    mount: PathBuf,
}

impl CgroupAncestry {
    /// The cgroup at `path`: absolute (under the cgroup2 mount) or relative
    /// to the mount, as in the config's `scope.cgroups`.
    pub fn of_path(path: &Path) -> Result<CgroupAncestry, ExplainError> {
        let mount = cgroup_mount(path)?;
        Self::of_path_under(&mount, path)
    }

    /// The cgroup whose id is `id`, found by walking the cgroup2 tree.
    pub fn of_id(id: u64) -> Result<CgroupAncestry, ExplainError> {
        let what = format!("id {id}");
        let mount = cgroup_mount(Path::new(&what))?;
        let err = |detail: String| ExplainError::Cgroup {
            cgroup: what.clone(),
            detail,
        };
        check_root(&mount, &what)?;
        if id == ROOT_CGROUP_ID {
            return Self::of_path_under(&mount, &mount);
        }
        // Breadth first; cgroupfs has no links, so this ends. readdir's
        // d_ino is the kernfs inode, the cgroup id, without a stat.
        let mut queue = std::collections::VecDeque::from([mount.clone()]);
        while let Some(dir) = queue.pop_front() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue; // removed meanwhile
            };
            for e in entries.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                if e.ino() == id {
                    return Self::of_path_under(&mount, &e.path());
                }
                queue.push_back(e.path());
            }
        }
        Err(err(format!("no such cgroup under {}", mount.display())))
    }

    fn of_path_under(mount: &Path, path: &Path) -> Result<CgroupAncestry, ExplainError> {
        let shown = path.display().to_string();
        let err = |detail: String| ExplainError::Cgroup {
            cgroup: shown.clone(),
            detail,
        };
        let absolute = if path.is_absolute() {
            path.to_owned()
        } else {
            mount.join(path)
        };
        let path = fs::canonicalize(&absolute)
            .map_err(|e| err(format!("cannot open {}: {e}", absolute.display())))?;
        let rel = path.strip_prefix(mount).map_err(|_| {
            err(format!(
                "is not under the cgroup2 mount {}",
                mount.display()
            ))
        })?;
        check_root(mount, &shown)?;
        let mut ids = Vec::new();
        let mut dir = mount.to_owned();
        for part in std::iter::once(None).chain(rel.components().map(Some)) {
            if let Some(p) = part {
                dir.push(p);
            }
            let meta = fs::metadata(&dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
            if !meta.is_dir() {
                return Err(err("is not a cgroup directory".into()));
            }
            ids.push(meta.ino());
        }
        Ok(CgroupAncestry {
            path,
            ids,
            mount: mount.to_owned(),
        })
    }

    /// The cgroup's own id.
    pub fn id(&self) -> u64 {
        self.ids.last().copied().unwrap_or(ROOT_CGROUP_ID)
    }

    /// The directory of the ancestor at `level`.
    pub(super) fn path_at(&self, level: usize) -> Option<PathBuf> {
        let rel = self.path.strip_prefix(&self.mount).ok()?;
        let mut p = self.mount.clone();
        for c in rel.components().take(level) {
            p.push(c);
        }
        (level <= rel.components().count()).then_some(p)
    }
}

fn cgroup_mount(what: &Path) -> Result<PathBuf, ExplainError> {
    paths::cgroup2_mount().map_err(|e| ExplainError::Cgroup {
        cgroup: what.display().to_string(),
        detail: format!("cannot find the cgroup2 mount: {e}"),
    })
}

/// The levels the kernel walks count from the hierarchy's root; a mount
/// that shows a sub-tree (a cgroup namespace, a bind mount) would shift
/// them, so it is refused instead of explained wrongly.
fn check_root(mount: &Path, what: &str) -> Result<(), ExplainError> {
    match fs::metadata(mount) {
        Ok(m) if m.ino() == ROOT_CGROUP_ID => Ok(()),
        Ok(_) => Err(ExplainError::Cgroup {
            cgroup: what.to_owned(),
            detail: format!(
                "the cgroup2 mount {} shows only part of the hierarchy (a cgroup namespace?), \
                 so its levels are not the kernel's; run this in the host's cgroup namespace",
                mount.display()
            ),
        }),
        Err(e) => Err(ExplainError::Cgroup {
            cgroup: what.to_owned(),
            detail: format!("{}: {e}", mount.display()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cgroup_is_found_by_path_and_by_id() {
        // This process's cgroup ("0::/path" in /proc/self/cgroup); hosts
        // without a cgroup2 hierarchy have nothing to test.
        let Ok(mount) = paths::cgroup2_mount() else {
            return;
        };
        let own = fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    l.strip_prefix("0::")
                        .map(|p| p.trim_start_matches('/').to_owned())
                })
            })
            .expect("a cgroup2 line in /proc/self/cgroup");
        let by_path = CgroupAncestry::of_path(Path::new(&own)).expect("by path");
        assert_eq!(by_path.path, mount.join(&own));
        assert_eq!(by_path.ids.first(), Some(&ROOT_CGROUP_ID));
        assert_eq!(by_path.ids.len(), Path::new(&own).components().count() + 1);
        let by_id = CgroupAncestry::of_id(by_path.id()).expect("by id");
        assert_eq!(by_id, by_path);
        assert_eq!(by_path.path_at(0), Some(mount.clone()));
        let root = CgroupAncestry::of_id(ROOT_CGROUP_ID).expect("the root");
        assert_eq!(root.ids, vec![ROOT_CGROUP_ID]);
        let e = CgroupAncestry::of_path(Path::new("no-such-cgroup-ee"))
            .expect_err("missing")
            .to_string();
        assert!(
            e.contains("no-such-cgroup-ee") && e.contains("cannot open"),
            "{e}"
        );
        let e = CgroupAncestry::of_id(u64::MAX)
            .expect_err("missing")
            .to_string();
        assert!(e.contains("no such cgroup"), "{e}");
    }
}
