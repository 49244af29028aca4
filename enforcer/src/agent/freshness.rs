//! Whether each GeoIP database on disk is the one in force.
//!
//! The file watch ([`crate::watch`]) reloads when a source is replaced, but
//! a watch can miss a change: one made between the load at start and the
//! watch's set-up, one made while `geoip.watch` is off, or an inotify queue
//! overflow. So the agent also compares, about once a second, each
//! source's file with the one in force, and says so per source in `status`
//! and in `enforcer_geoip_database_stale`. The comparison is by SHA-256,
//! the same digest the policy in force records; a file is hashed again only
//! when its identity (device, inode, size, modification time) changes, so
//! the steady cost is one `stat` per source.
//!
//! With the watch on, a difference that outlives the watch's debounce is
//! reloaded once per new file content (a broken file is tried once, not
//! every second).

use std::{
    collections::BTreeMap,
    io::Read as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use sha2::{Digest as _, Sha256};

use crate::status::{OnDisk, SourceOnDisk};

/// How long a difference must last before the agent reloads on its own:
/// longer than the watch's debounce, so that the watch (which waits for a
/// multi-file update to finish) reloads first when it saw the change.
pub const GRACE: Duration = crate::watch::DEBOUNCE.saturating_mul(3);

/// What identifies a file's content without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileId {
    fn of(m: &std::fs::Metadata) -> FileId {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        }
    }
}

/// The last look at one source's file.
#[derive(Debug)]
struct Seen {
    id: FileId,
    sha256: String,
}

/// The comparison's memory, kept across checks and reloads.
#[derive(Debug, Default)]
pub struct Freshness {
    seen: BTreeMap<PathBuf, Seen>,
    /// Since when each source has differed (cleared when it matches).
    differs_since: BTreeMap<PathBuf, (String, Instant)>,
    /// The disk content a reload last tried, per source: never tried twice.
    tried: BTreeMap<PathBuf, String>,
}

impl Freshness {
    /// Compares each source in force with its file on disk.
    pub fn check(&mut self, in_force: &[geoip::SourceInfo]) -> Vec<SourceOnDisk> {
        let now = Instant::now();
        self.seen
            .retain(|p, _| in_force.iter().any(|s| &s.path == p));
        self.differs_since
            .retain(|p, _| in_force.iter().any(|s| &s.path == p));
        in_force
            .iter()
            .map(|source| {
                let state = match self.disk_sha256(&source.path) {
                    Ok(sha) if sha == source.sha256 => {
                        self.differs_since.remove(&source.path);
                        OnDisk::InForce
                    }
                    Ok(sha) => {
                        let since = self
                            .differs_since
                            .entry(source.path.clone())
                            .or_insert_with(|| (sha.clone(), now));
                        if since.0 != sha {
                            *since = (sha.clone(), now);
                        }
                        OnDisk::Differs { sha256: sha }
                    }
                    Err(e) => {
                        self.differs_since.remove(&source.path);
                        OnDisk::Unreadable {
                            error: e.to_string(),
                        }
                    }
                };
                SourceOnDisk {
                    path: source.path.clone(),
                    state,
                }
            })
            .collect()
    }

    /// The sources whose file has differed from the one in force for at
    /// least [`GRACE`] with a content no reload has tried yet.
    pub fn overdue(&self) -> Vec<PathBuf> {
        self.differs_since
            .iter()
            .filter(|(path, (sha, since))| {
                since.elapsed() >= GRACE && self.tried.get(*path) != Some(sha)
            })
            .map(|(path, _)| path.clone())
            .collect()
    }

    /// A reload (whatever its trigger) read the sources as they were last
    /// seen: none of those contents is worth another try on its own.
    pub fn reloaded(&mut self) {
        for (path, seen) in &self.seen {
            self.tried.insert(path.clone(), seen.sha256.clone());
        }
    }

    /// The SHA-256 of the file at `path`, hashed again only when its
    /// identity changed since the last look.
    fn disk_sha256(&mut self, path: &Path) -> std::io::Result<String> {
        let id = FileId::of(&std::fs::metadata(path)?);
        if let Some(seen) = self.seen.get(path)
            && seen.id == id
        {
            return Ok(seen.sha256.clone());
        }
        let sha256 = hash_file(path)?;
        self.seen.insert(
            path.to_owned(),
            Seen {
                id,
                sha256: sha256.clone(),
            },
        );
        Ok(sha256)
    }
}

/// SHA-256 of a file's bytes, lowercase hex, read in blocks (a database can
/// be large; it is not kept).
fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut block)?;
        if n == 0 {
            break;
        }
        hasher.update(&block[..n]);
    }
    Ok(geoip::hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(path: &Path, bytes: &[u8]) -> geoip::SourceInfo {
        geoip::SourceInfo {
            path: path.to_owned(),
            format: geoip::Format::Csv,
            database_type: None,
            build_epoch: None,
            sha256: geoip::hex(&Sha256::digest(bytes)),
        }
    }

    #[test]
    fn same_replaced_and_missing_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("db.csv");
        std::fs::write(&db, b"10.0.0.0/8,DE\n").expect("write");
        let in_force = [info(&db, b"10.0.0.0/8,DE\n")];
        let mut f = Freshness::default();
        assert_eq!(f.check(&in_force)[0].state, OnDisk::InForce);

        let tmp = dir.path().join("db.csv.new");
        std::fs::write(&tmp, b"10.0.0.0/8,US\n").expect("write");
        std::fs::rename(&tmp, &db).expect("rename");
        let OnDisk::Differs { sha256 } = &f.check(&in_force)[0].state else {
            panic!("a replaced file differs");
        };
        assert_eq!(sha256, &info(&db, b"10.0.0.0/8,US\n").sha256);
        // Not overdue before the grace period.
        assert!(f.overdue().is_empty());

        std::fs::remove_file(&db).expect("remove");
        assert!(matches!(
            f.check(&in_force)[0].state,
            OnDisk::Unreadable { .. }
        ));
    }

    #[test]
    fn an_overdue_content_is_tried_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("db.csv");
        std::fs::write(&db, b"new").expect("write");
        let in_force = [info(&db, b"old")];
        let mut f = Freshness::default();
        f.check(&in_force);
        // As if the difference had lasted the grace period.
        for (_, since) in f.differs_since.values_mut() {
            *since -= GRACE;
        }
        assert_eq!(f.overdue(), vec![db.clone()]);
        f.reloaded();
        assert!(
            f.overdue().is_empty(),
            "the same content is not tried again"
        );

        // A newer content is.
        std::fs::write(&db, b"newer, and longer").expect("rewrite");
        f.check(&in_force);
        for (_, since) in f.differs_since.values_mut() {
            *since -= GRACE;
        }
        assert_eq!(f.overdue(), vec![db]);
    }
}
