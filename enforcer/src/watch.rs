//! Reload when a GeoIP database (or the config) is replaced on disk.
//!
//! geoipupdate, like most updaters, writes a temporary file in the same
//! directory and renames it over the old one, so the directory is watched,
//! not the file: a watch on the file itself follows the old inode away
//! after the rename. A file counts as replaced when a name the agent reads
//! is the target of a rename (`IN_MOVED_TO`) or closed after writing
//! (`IN_CLOSE_WRITE`, an in-place writer that has finished); never on
//! `IN_MODIFY`, which fires while the writer is half-way. Events are
//! debounced so that one update of several files is one reload. The loader
//! reads each file into memory once (no mmap), so a later change cannot
//! alter what was loaded.
//! (inotify(7): https://man7.org/linux/man-pages/man7/inotify.7.html)

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    path::{Path, PathBuf},
    time::Duration,
};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;

/// How long to wait after the last event before reloading.
pub const DEBOUNCE: Duration = Duration::from_secs(1);

/// The inotify fd, as tokio wants it (nix's type has `AsFd` only).
struct InotifyFd(Inotify);

impl std::os::fd::AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd as _;
        self.0.as_fd().as_raw_fd()
    }
}

/// An inotify fd, before and after its registration with tokio.
enum Registration {
    Pending(Option<Inotify>),
    Registered(AsyncFd<InotifyFd>),
    /// Registration failed (logged once); the watch never fires.
    Failed,
}

/// Watches the directories of a set of files.
pub struct Watcher {
    /// The inotify instance: registered with the tokio runtime at the
    /// first wait, not at creation, so that a watch set up before the
    /// runtime that serves it (or on another one) loses no event: the
    /// kernel queues them from `inotify_add_watch` on.
    fd: Registration,
    /// Per watched directory: the file names in it that matter.
    dirs: BTreeMap<WatchDescriptor, (PathBuf, BTreeSet<OsString>)>,
    /// Files seen replaced and not yet returned by [`Watcher::replaced`]:
    /// kept here, not in its future, so a reload for another reason (a
    /// SIGHUP during the debounce drops that future) loses none of them.
    pending: BTreeSet<PathBuf>,
    /// When the debounce of the pending files ends. Kept here too: the
    /// agent's loop drops the wait whenever another branch wins (the
    /// coverage tick does every second), and a deadline restarted by each
    /// new wait would never be reached.
    deadline: Option<tokio::time::Instant>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field(
                "dirs",
                &self.dirs.values().map(|(d, _)| d).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Watcher {
    /// Watches `files` (their directories must exist). Needs no runtime;
    /// waiting ([`Watcher::replaced`]) does.
    pub fn new(files: &[PathBuf]) -> std::io::Result<Watcher> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let mut by_dir: BTreeMap<PathBuf, BTreeSet<OsString>> = BTreeMap::new();
        for f in files {
            let (Some(dir), Some(name)) = (f.parent(), f.file_name()) else {
                continue;
            };
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            by_dir
                .entry(dir.to_owned())
                .or_default()
                .insert(name.to_owned());
        }
        let mut dirs = BTreeMap::new();
        for (dir, names) in by_dir {
            let wd = inotify
                .add_watch(
                    &dir,
                    AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE,
                )
                .map_err(|e| {
                    std::io::Error::new(
                        std::io::Error::from(e).kind(),
                        format!("watching {}: {e}", dir.display()),
                    )
                })?;
            dirs.insert(wd, (dir, names));
        }
        Ok(Watcher {
            fd: Registration::Pending(Some(inotify)),
            dirs,
            pending: BTreeSet::new(),
            deadline: None,
        })
    }

    /// Waits until a watched file was replaced, then until no watched
    /// file was replaced for [`DEBOUNCE`]; returns the files replaced.
    ///
    /// Only events for the watched names move the deadline: other files in
    /// the same directory (the audit log's head is rewritten there several
    /// times a second when they share one) must not put the reload off for
    /// ever.
    ///
    /// Cancel-safe: a dropped wait loses neither the pending files nor the
    /// debounce deadline, so a caller that drops it more often than
    /// [`DEBOUNCE`] still gets its answer when the deadline passes.
    pub async fn replaced(&mut self) -> BTreeSet<PathBuf> {
        loop {
            match self.deadline {
                None => {
                    self.read_events().await;
                }
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, self.read_events())
                        .await
                        .is_err()
                    {
                        self.deadline = None;
                        return std::mem::take(&mut self.pending);
                    }
                }
            }
        }
    }

    /// Reads one batch of events, adding the watched files they name to
    /// the pending ones and moving the debounce deadline for each.
    async fn read_events(&mut self) {
        if let Registration::Pending(inotify) = &mut self.fd
            && let Some(inotify) = inotify.take()
        {
            // SAFETY: InotifyFd owns the inotify fd for as long as it lives
            // and always reports that same fd.
            self.fd = match unsafe { AsyncFd::register(InotifyFd(inotify)) } {
                Ok(fd) => Registration::Registered(fd),
                Err(e) => {
                    tracing::warn!(error = %e.into_parts().1, "cannot wait on the file watch; reload with SIGHUP or `enforcer reload`");
                    Registration::Failed
                }
            };
        }
        let Registration::Registered(fd) = &self.fd else {
            return std::future::pending::<()>().await;
        };
        let mut guard = match fd.readable().await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(error = %e, "file watch failed; reload with SIGHUP or `enforcer reload`");
                return std::future::pending::<()>().await;
            }
        };
        match guard.get_inner().0.read_events() {
            Ok(events) => {
                for e in events {
                    let (Some((dir, names)), Some(name)) = (self.dirs.get(&e.wd), e.name) else {
                        continue;
                    };
                    if names.contains(&name) {
                        self.pending.insert(dir.join(name));
                        self.deadline = Some(tokio::time::Instant::now() + DEBOUNCE);
                    }
                }
            }
            Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
            Err(e) => tracing::warn!(error = %e, "reading file watch events"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory with `db.mmdb` in it, watched.
    fn watched_db() -> (tempfile::TempDir, PathBuf, Watcher) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("db.mmdb");
        std::fs::write(&db, b"old").expect("write");
        let w = Watcher::new(std::slice::from_ref(&db)).expect("watch");
        (dir, db, w)
    }

    /// Replaces `db` as updaters do: a new file renamed over it.
    fn rename_over(db: &Path) {
        let tmp = db.with_extension("mmdb.tmp");
        std::fs::write(&tmp, b"new").expect("write tmp");
        std::fs::rename(&tmp, db).expect("rename");
    }

    #[tokio::test]
    async fn a_rename_over_a_watched_file_is_seen_and_others_are_not() {
        let (dir, db, mut w) = watched_db();
        // Unrelated files in the same directory do not count.
        std::fs::write(dir.path().join("other"), b"x").expect("write other");
        rename_over(&db);
        let got = tokio::time::timeout(Duration::from_secs(10), w.replaced())
            .await
            .expect("an event within 10 s");
        assert_eq!(got, BTreeSet::from([db.clone()]));
        // An in-place rewrite counts once it is closed.
        std::fs::write(&db, b"newer").expect("rewrite");
        let got = tokio::time::timeout(Duration::from_secs(10), w.replaced())
            .await
            .expect("an event within 10 s");
        assert_eq!(got, BTreeSet::from([db]));
    }

    #[tokio::test]
    async fn other_files_replaced_without_pause_do_not_put_a_reload_off() {
        let (dir, db, mut w) = watched_db();
        // Another file in the same directory renamed over every 100 ms (as
        // an audit head beside the database), for far longer than the
        // debounce.
        let busy = dir.path().to_owned();
        let churn = tokio::spawn(async move {
            for i in 0..100u32 {
                let tmp = busy.join("head.tmp");
                let _ = std::fs::write(&tmp, i.to_string());
                let _ = std::fs::rename(&tmp, busy.join("head"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        rename_over(&db);
        let got = tokio::time::timeout(DEBOUNCE * 4, w.replaced())
            .await
            .expect("the replaced database is reported while the other file churns");
        assert_eq!(got, BTreeSet::from([db]));
        churn.abort();
    }

    #[tokio::test]
    async fn a_change_seen_before_the_wait_is_dropped_is_kept() {
        let (_dir, db, mut w) = watched_db();
        rename_over(&db);
        // The agent's loop drops the wait when something else comes first
        // (a SIGHUP), here half-way through the debounce.
        let cut = tokio::time::timeout(DEBOUNCE / 2, w.replaced()).await;
        assert!(cut.is_err(), "still debouncing");
        let got = tokio::time::timeout(DEBOUNCE * 4, w.replaced())
            .await
            .expect("the change seen before is reported");
        assert_eq!(got, BTreeSet::from([db]));
    }

    #[tokio::test]
    async fn waits_dropped_more_often_than_the_debounce_still_end() {
        let (_dir, db, mut w) = watched_db();
        rename_over(&db);
        // As the agent's loop does when its one-second coverage tick wins:
        // every wait is dropped before a whole debounce has passed.
        let mut waits = 0;
        let got = loop {
            waits += 1;
            assert!(waits <= 8, "the debounce never ended");
            if let Ok(got) = tokio::time::timeout(DEBOUNCE * 3 / 4, w.replaced()).await {
                break got;
            }
        };
        assert_eq!(got, BTreeSet::from([db]));
        assert!(waits <= 3, "took {waits} waits of 3/4 of the debounce");
    }
}
