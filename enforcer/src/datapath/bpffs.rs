//! Making sure the pin directory is on a mounted bpffs.
//!
//! Pins only survive the agent on bpffs. Hosts without systemd (or
//! containers) often have nothing mounted at /sys/fs/bpf, so the agent
//! mounts it there itself when it is missing.

use std::{
    io,
    path::{Path, PathBuf},
};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

use crate::paths::BPFFS;

/// An error preparing bpffs.
#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error("cannot mount bpffs at {path}: {source} (the agent needs root, or CAP_SYS_ADMIN)")]
    Mount { path: PathBuf, source: nix::Error },
    #[error("pin directory {path} is not on bpffs ({detail}); choose a directory under {BPFFS}")]
    NotBpffs { path: PathBuf, detail: String },
    #[error("cannot create pin directory {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
}

fn is_bpffs(path: &Path) -> nix::Result<bool> {
    Ok(statfs(path)?.filesystem_type() == BPF_FS_MAGIC)
}

/// Mounts bpffs at [`BPFFS`] when nothing is mounted there, then checks that
/// `pin_dir` (or its nearest existing ancestor) is on bpffs.
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
    let existing = pin_dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    match is_bpffs(existing) {
        Ok(true) => Ok(()),
        Ok(false) => Err(BpffsError::NotBpffs {
            path: pin_dir.to_owned(),
            detail: format!("{} is on another file system", existing.display()),
        }),
        Err(e) => Err(BpffsError::NotBpffs {
            path: pin_dir.to_owned(),
            detail: format!("statfs {}: {e}", existing.display()),
        }),
    }
}

/// Creates `dir` and its parents; returns whether `root` had to be created
/// (so a failed first install can remove everything it made).
pub fn create_dirs(root: &Path, dir: &Path) -> Result<bool, BpffsError> {
    let created_root = !root.exists();
    std::fs::create_dir_all(dir).map_err(|source| BpffsError::Create {
        path: dir.to_owned(),
        source,
    })?;
    Ok(created_root)
}
