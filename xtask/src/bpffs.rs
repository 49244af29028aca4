//! Leaving bpffs as we found it.
//!
//! The agent mounts bpffs at /sys/fs/bpf when nothing is mounted there (a
//! production host keeps it). When `test` or `demo` made that mount happen
//! on a machine that had none, they unmount it again at the end, provided
//! nothing but the kernel's own preload entries (`maps.debug`,
//! `progs.debug`, created on every bpffs mount by CONFIG_BPF_PRELOAD) is in
//! it: a leftover pin is a bug to see, not to hide.

use std::{fs, path::Path};

use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

const BPFFS: &str = "/sys/fs/bpf";
const PRELOAD: &[&str] = &["maps.debug", "progs.debug"];

fn mounted() -> bool {
    statfs(Path::new(BPFFS)).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

/// Remembers whether bpffs was mounted; on drop, unmounts it when this run
/// mounted it and left nothing in it.
pub struct Restore {
    was_mounted: bool,
}

impl Restore {
    pub fn new() -> Self {
        Self {
            was_mounted: mounted(),
        }
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        if self.was_mounted || !mounted() {
            return;
        }
        let left: Vec<String> = fs::read_dir(BPFFS)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !PRELOAD.contains(&n.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        if !left.is_empty() {
            eprintln!(
                "warning: pins left under {BPFFS}: {}; not unmounting it",
                left.join(" ")
            );
            return;
        }
        if let Err(e) = nix::mount::umount(BPFFS) {
            eprintln!("warning: cannot unmount {BPFFS}: {e}");
        }
    }
}
