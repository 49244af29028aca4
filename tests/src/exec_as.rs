//! Running a built binary as another user. The binaries under test live in
//! the clone's `target/`, and a clone may sit where other users cannot
//! enter (root's home, a `mktemp -d` directory: both 0700); a process that
//! has dropped to another uid then cannot exec them (EACCES on the path).
//! [`ReachableCopy`] copies a binary into a fresh directory under `/tmp`
//! that every uid can traverse, for as long as a test needs it;
//! [`as_user`] makes a command drop to that uid, and [`limit_open_files`]
//! sets its descriptor limit, both between fork and exec.

use std::{
    fs,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::sandbox::PREFIX;

/// Where the copies go: world-traversable on every Linux (1777). Not
/// `std::env::temp_dir()`: `TMPDIR` may name a private directory.
const BASE: &str = "/tmp";

/// A copy of a binary, with its file name, in a 0755 directory any uid can
/// reach; the directory is removed on drop (also when the test panics),
/// and by [`crate::sandbox::sweep_stale`] when the test process was killed.
#[derive(Debug)]
pub struct ReachableCopy {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl ReachableCopy {
    /// Copies `binary`. Panics, saying what failed, when it cannot.
    pub fn of(binary: &Path) -> ReachableCopy {
        let name = binary
            .file_name()
            .unwrap_or_else(|| panic!("{} names no file", binary.display()));
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-exec-", std::process::id()))
            .tempdir_in(BASE)
            .unwrap_or_else(|e| panic!("scratch directory in {BASE}: {e}"));
        set_mode(dir.path(), 0o755);
        let path = dir.path().join(name);
        // Copied by a child process, not with fs::copy: a file this
        // (multi-threaded) process held open for writing could be inherited
        // by a child another test thread forks at that moment, and exec of
        // the copy would fail with ETXTBSY until that child execs.
        let out = Command::new("cp")
            .arg("--")
            .arg(binary)
            .arg(&path)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run cp: {e}"));
        assert!(
            out.status.success(),
            "cp {} {} failed ({}): {}",
            binary.display(),
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        set_mode(&path, 0o755);
        ReachableCopy { dir, path }
    }

    /// The copy.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory holding the copy.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// Makes `cmd` run as `uid` (gid = uid) with exactly the supplementary
/// `groups`. Not `Command::uid`: std drops privileges before it runs
/// `pre_exec` closures, and closures added earlier (joining a cgroup or
/// a namespace, [`limit_open_files`]) need root; closures run in the
/// order they were added, so add this one last.
pub fn as_user(cmd: &mut Command, uid: u32, groups: &[u32]) {
    let groups: Vec<libc::gid_t> = groups.to_vec();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sets `cmd`'s open-files limit, soft and hard, to `n` (root may raise
/// it; add it before [`as_user`]).
pub fn limit_open_files(cmd: &mut Command, n: u64) {
    // SAFETY: only an async-signal-safe call between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Removes capability number `cap` from `cmd`'s bounding set, as a
/// service manager's `CapabilityBoundingSet=` would (root then execs
/// without it).
pub fn drop_bounding(cmd: &mut Command, cap: u32) {
    // SAFETY: only an async-signal-safe call between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    #[test]
    fn the_copy_is_reachable_by_any_uid_and_removed_on_drop() {
        // Any file will do: the copy's content and mode are what matter.
        let src = tempfile::NamedTempFile::new().expect("source file");
        fs::write(src.path(), b"#!/bin/sh\n").expect("write source");
        set_mode(src.path(), 0o700);
        let copy = ReachableCopy::of(src.path());
        assert_eq!(copy.path().file_name(), src.path().file_name());
        assert_eq!(fs::read(copy.path()).expect("read copy"), b"#!/bin/sh\n");
        let mut dir = Some(copy.path());
        while let Some(d) = dir {
            let mode = fs::metadata(d).expect("stat").mode();
            assert_eq!(mode & 0o005, 0o005, "{} is {mode:o}", d.display());
            dir = d.parent().filter(|p| !p.as_os_str().is_empty());
        }
        let held = copy.dir().to_owned();
        drop(copy);
        assert!(!held.exists(), "{} survived the drop", held.display());
    }
}
