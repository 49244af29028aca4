//! The pin directory: on a mounted bpffs, inside it (never its root), and
//! held by one agent at a time.
//!
//! Pins only survive the agent on bpffs. Hosts without systemd (or
//! containers) often have nothing mounted at /sys/fs/bpf, so the agent
//! mounts it there itself when it is missing.

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
};

use nix::{
    fcntl::{Flock, FlockArg},
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

use crate::paths::BPFFS;

/// An error preparing the pin directory.
#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error("cannot mount bpffs at {path}: {source} (the agent needs root, or CAP_SYS_ADMIN)")]
    Mount { path: PathBuf, source: nix::Error },
    #[error("pin directory {path}: {detail}")]
    NotBpffs { path: PathBuf, detail: String },
    #[error("cannot create pin directory {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error(
        "pin directory {path} is in use by another agent (or `enforcer uninstall`); \
         one agent per pin directory"
    )]
    Busy { path: PathBuf },
    #[error("cannot lock pin directory {path}: {source}")]
    Lock { path: PathBuf, source: nix::Error },
}

fn is_bpffs(path: &Path) -> nix::Result<bool> {
    Ok(statfs(path)?.filesystem_type() == BPF_FS_MAGIC)
}

/// Mounts bpffs at [`BPFFS`] when nothing is mounted there, then checks that
/// `pin_dir` is strictly inside a bpffs: its parent (or nearest existing
/// ancestor) is on bpffs. The bpffs root itself is refused, because
/// `uninstall` removes what is in the pin directory and other tools keep
/// their pins next to ours.
pub fn ensure(pin_dir: &Path) -> Result<(), BpffsError> {
    let root = Path::new(BPFFS);
    if pin_dir.starts_with(root) && !is_bpffs(root).unwrap_or(false) {
        tracing::info!(path = BPFFS, "bpffs is not mounted; mounting it");
        mount(
            Some("bpf"),
            root,
            Some("bpf"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0700"),
        )
        .map_err(|source| BpffsError::Mount {
            path: root.to_owned(),
            source,
        })?;
    }
    check_inside(pin_dir)
}

/// `pin_dir` must have a parent on bpffs.
pub fn check_inside(pin_dir: &Path) -> Result<(), BpffsError> {
    let not = |detail: String| BpffsError::NotBpffs {
        path: pin_dir.to_owned(),
        detail,
    };
    let parent = pin_dir
        .parent()
        .ok_or_else(|| not("has no parent directory".into()))?;
    let existing = parent
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    match is_bpffs(existing) {
        Ok(true) => Ok(()),
        Ok(false) if is_bpffs(pin_dir).unwrap_or(false) => Err(not(format!(
            "is the root of a bpffs mount; use a directory inside it, e.g. {}",
            pin_dir.join("egress-enforcer").display()
        ))),
        Ok(false) => Err(not(format!(
            "is not inside bpffs ({} is on another file system); choose a directory under {BPFFS}",
            existing.display()
        ))),
        Err(e) => Err(not(format!("statfs {}: {e}", existing.display()))),
    }
}

/// Creates `dir` and its parents; returns whether `dir` had to be created
/// (so a failed first install removes what it made, and only that).
pub fn create_dirs(dir: &Path) -> Result<bool, BpffsError> {
    let created = !dir.exists();
    std::fs::create_dir_all(dir).map_err(|source| BpffsError::Create {
        path: dir.to_owned(),
        source,
    })?;
    Ok(created)
}

/// An exclusive lock on the pin directory, held for as long as it lives.
/// flock works on any inode, bpffs directories included.
pub struct PinLock {
    _lock: Flock<File>,
}

impl PinLock {
    /// Takes the lock without waiting; `Busy` when another process has it.
    pub fn take(root: &Path) -> Result<PinLock, BpffsError> {
        let dir = File::open(root).map_err(|source| BpffsError::Create {
            path: root.to_owned(),
            source,
        })?;
        match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(PinLock { _lock: lock }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(BpffsError::Busy {
                path: root.to_owned(),
            }),
            Err((_, source)) => Err(BpffsError::Lock {
                path: root.to_owned(),
                source,
            }),
        }
    }
}
