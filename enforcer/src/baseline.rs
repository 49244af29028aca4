//! The reload guard's baseline: the GeoIP data in force, kept beside the
//! kernel's pins so that a restarted agent can compare the data on disk
//! with it (docs/geoip-data.md, "Restarts").
//!
//! The guard compares new data with the data in force. The agent keeps that
//! in memory, but an agent that restarts (`systemctl restart`, a crash and
//! `Restart=`, a package upgrade) adopts a datapath whose tables it does not
//! read back; without this file, the data on disk would go live unchecked.
//! So after every successful apply the agent writes, into its runtime
//! directory, the table the applied policy was compiled from
//! ([`paths::BASELINE_TABLE_NAME`], the exact snapshot form of
//! [`geoip::GeoTable::to_snapshot`]) and a small JSON manifest
//! ([`paths::BASELINE_MANIFEST_NAME`]: the sources' paths and SHA-256s, the
//! policy's SHA-256, the time, the table's SHA-256). The runtime directory
//! is tmpfs (`/run`), cleared at reboot like the bpffs pins: the baseline
//! lives exactly as long as the kernel state it describes.
//!
//! Each file is written to a temporary file, synced and renamed into place;
//! the table first, then the manifest that names the table's SHA-256, so a
//! pair from two different writes is detected when read. A write that
//! fails removes the manifest: a stale baseline would make the next start
//! compare with data that is no longer in force (and put it back), while a
//! missing one is reported as such.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use geoip::{Format, GeoTable, SourceInfo};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::paths;

/// The manifest's format version.
pub const MANIFEST_VERSION: u32 = 1;

/// What the manifest says about the baseline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u32,
    /// Unix time of the write.
    pub written_unix: f64,
    /// SHA-256 of the policy in force when written (see
    /// [`crate::policy::policy_sha256`]).
    pub policy_sha256: Option<String>,
    /// SHA-256 of the table file: binds the two files together.
    pub table_sha256: String,
    /// The sources the table was compiled from, in priority order.
    pub sources: Vec<ManifestSource>,
}

/// One source in the manifest: what [`SourceInfo`] says about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestSource {
    pub path: PathBuf,
    pub sha256: String,
    /// [`Format::label`]: `csv`, `mmdb-maxmind`, `mmdb-flat`, ...
    pub format: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_epoch: Option<u64>,
}

impl ManifestSource {
    fn of(info: &SourceInfo) -> ManifestSource {
        let ip_version = match info.format {
            Format::Mmdb { ip_version, .. } => Some(ip_version),
            _ => None,
        };
        let format = info.format.label();
        ManifestSource {
            path: info.path.clone(),
            sha256: info.sha256.clone(),
            format: format.to_owned(),
            ip_version,
            database_type: info.database_type.clone(),
            build_epoch: info.build_epoch,
        }
    }

    /// Back to a [`SourceInfo`], as `status` and the audit log show it.
    fn info(&self) -> Result<SourceInfo, String> {
        let format = Format::from_label(&self.format, self.ip_version).ok_or_else(|| {
            format!(
                "{}: format {:?} (ip_version {:?}) is not one this agent writes",
                self.path.display(),
                self.format,
                self.ip_version
            )
        })?;
        Ok(SourceInfo {
            path: self.path.clone(),
            format,
            database_type: self.database_type.clone(),
            build_epoch: self.build_epoch,
            sha256: self.sha256.clone(),
        })
    }
}

impl Manifest {
    /// Whether `sources` are the baseline's sources by content, in order:
    /// then they locate every address alike, and there is nothing to
    /// compare.
    pub fn same_data(&self, sources: &[SourceInfo]) -> bool {
        self.sources.len() == sources.len()
            && self
                .sources
                .iter()
                .zip(sources)
                .all(|(a, b)| a.sha256 == b.sha256)
    }
}

/// A baseline read back.
#[derive(Clone, Debug)]
pub struct Baseline {
    pub manifest: Manifest,
    pub geo: GeoTable,
    /// The manifest's sources as [`SourceInfo`].
    pub sources: Vec<SourceInfo>,
}

/// A baseline that cannot be written, read or removed; names the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {detail}", path.display())]
pub struct BaselineError {
    pub path: PathBuf,
    pub detail: String,
}

fn error(path: &Path, detail: impl Into<String>) -> BaselineError {
    BaselineError {
        path: path.to_owned(),
        detail: detail.into(),
    }
}

/// The table file in `run_dir`.
pub fn table_path(run_dir: &Path) -> PathBuf {
    run_dir.join(paths::BASELINE_TABLE_NAME)
}

/// The manifest in `run_dir`.
pub fn manifest_path(run_dir: &Path) -> PathBuf {
    run_dir.join(paths::BASELINE_MANIFEST_NAME)
}

/// The baseline's state, as `status` and the metrics show it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BaselineStatus {
    /// The manifest's path (set at start).
    pub path: Option<PathBuf>,
    /// Unix time of the last successful write.
    pub written_unix: Option<f64>,
    /// Writes that failed since the start.
    pub write_failures: u64,
    /// The last write's error, until a write succeeds.
    pub last_write_error: Option<String>,
    /// This start adopted a datapath (something was in force) but had no
    /// usable baseline, so it could not compare: why. For the agent's
    /// life: the data in force was not checked by this start.
    pub missing_at_start: Option<String>,
}

impl BaselineStatus {
    /// As `status --json` shows it.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "path": self.path,
            "written_unix": self.written_unix,
            "write_failures": self.write_failures,
            "last_write_error": self.last_write_error,
            "missing_at_start": self.missing_at_start,
        })
    }
}

/// Writes the baseline of `geo` (compiled from `sources`, under the policy
/// `policy_sha256`) into `run_dir`. On failure the manifest is removed
/// (best effort; see the module docs).
pub fn write(
    run_dir: &Path,
    geo: &GeoTable,
    sources: &[SourceInfo],
    policy_sha256: Option<&str>,
) -> Result<(), BaselineError> {
    let result = write_both(run_dir, geo, sources, policy_sha256);
    if result.is_err() {
        let _ = std::fs::remove_file(manifest_path(run_dir));
    }
    result
}

fn write_both(
    run_dir: &Path,
    geo: &GeoTable,
    sources: &[SourceInfo],
    policy_sha256: Option<&str>,
) -> Result<(), BaselineError> {
    let table = geo.to_snapshot();
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        written_unix: crate::status::unix_now(),
        policy_sha256: policy_sha256.map(ToOwned::to_owned),
        table_sha256: geoip::hex(&Sha256::digest(&table)),
        sources: sources.iter().map(ManifestSource::of).collect(),
    };
    atomic_write(&table_path(run_dir), &table)?;
    let path = manifest_path(run_dir);
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| error(&path, e.to_string()))?;
    atomic_write(&path, &text)
}

/// Temporary file in the same directory, synced, renamed over `path`.
fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), BaselineError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)
        .map_err(|e| error(path, format!("creating its directory: {e}")))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| error(path, format!("temporary file: {e}")))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| error(path, format!("writing: {e}")))?;
    tmp.persist(path)
        .map_err(|e| error(path, format!("renaming into place: {}", e.error)))?;
    Ok(())
}

/// Reads the manifest in `run_dir`; `None` when there is none.
pub fn read_manifest(run_dir: &Path) -> Result<Option<Manifest>, BaselineError> {
    let path = manifest_path(run_dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(error(&path, format!("cannot read: {e}"))),
    };
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| error(&path, format!("not a baseline manifest: {e}")))?;
    if manifest.version != MANIFEST_VERSION {
        return Err(error(
            &path,
            format!(
                "manifest version {} (this agent reads {MANIFEST_VERSION})",
                manifest.version
            ),
        ));
    }
    Ok(Some(manifest))
}

/// Reads the whole baseline in `run_dir`: `None` when there is no manifest;
/// an error when either file is unreadable, damaged, or not the other's.
pub fn read(run_dir: &Path) -> Result<Option<Baseline>, BaselineError> {
    let Some(manifest) = read_manifest(run_dir)? else {
        return Ok(None);
    };
    read_table(run_dir, manifest).map(Some)
}

/// Reads the table that `manifest` names.
pub fn read_table(run_dir: &Path, manifest: Manifest) -> Result<Baseline, BaselineError> {
    let path = table_path(run_dir);
    let bytes = std::fs::read(&path).map_err(|e| error(&path, format!("cannot read: {e}")))?;
    let sha = geoip::hex(&Sha256::digest(&bytes));
    if sha != manifest.table_sha256 {
        return Err(error(
            &path,
            format!(
                "SHA-256 {sha}, but the manifest names {} (written by another write, or damaged)",
                manifest.table_sha256
            ),
        ));
    }
    let geo = GeoTable::from_snapshot(&bytes, &path).map_err(|e| {
        error(&path, {
            // The geoip error names the path too: keep only what is wrong.
            let text = e.to_string();
            let prefix = format!("{}: ", path.display());
            text.strip_prefix(&prefix)
                .map(ToOwned::to_owned)
                .unwrap_or(text)
        })
    })?;
    let sources = manifest
        .sources
        .iter()
        .map(ManifestSource::info)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(&manifest_path(run_dir), e))?;
    Ok(Baseline {
        manifest,
        geo,
        sources,
    })
}

/// Removes both files from `run_dir`; true when there was one to remove.
pub fn remove(run_dir: &Path) -> Result<bool, BaselineError> {
    let mut found = false;
    // The manifest first: without it the table is never read.
    for path in [manifest_path(run_dir), table_path(run_dir)] {
        match std::fs::remove_file(&path) {
            Ok(()) => found = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(error(&path, format!("cannot remove: {e}"))),
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use geoip::{Aliases, CountryCode, Table};

    use super::*;

    fn geo() -> GeoTable {
        let cc = |s: &str| s.parse::<CountryCode>().expect("test code");
        GeoTable {
            v4: Table::<Ipv4Addr>::from_entries([
                ("198.18.0.0/15".parse().expect("net"), cc("US")),
                ("198.51.100.0/24".parse().expect("net"), cc("DE")),
                ("198.51.100.20/32".parse().expect("net"), cc("US")),
            ]),
            v6: Table::<Ipv6Addr>::from_entries([
                ("2001:db8::/32".parse().expect("net"), cc("DE")),
                ("2001:db8:1::20/128".parse().expect("net"), cc("US")),
            ]),
            aliases: Aliases::from_bits(5),
        }
    }

    fn sources() -> Vec<SourceInfo> {
        vec![
            SourceInfo {
                path: "/var/lib/GeoIP/GeoLite2-Country.mmdb".into(),
                format: Format::Mmdb {
                    schema: geoip::Schema::MaxMind,
                    ip_version: 6,
                    field: geoip::CountryField::RegisteredCountry,
                },
                database_type: Some("GeoLite2-Country".into()),
                build_epoch: Some(1_700_000_000),
                sha256: "ab".repeat(32),
            },
            SourceInfo {
                path: "/etc/egress-enforcer/overlay.csv".into(),
                format: Format::Csv,
                database_type: None,
                build_epoch: None,
                sha256: "cd".repeat(32),
            },
        ]
    }

    #[test]
    fn a_baseline_reads_back_identical() {
        let dir = tempfile::tempdir().expect("scratch");
        let run = dir.path().join("run");
        assert!(read(&run).expect("nothing yet").is_none());
        write(&run, &geo(), &sources(), Some("policy")).expect("written");
        let b = read(&run).expect("readable").expect("present");
        assert_eq!(b.geo, geo());
        assert_eq!(b.geo.aliases, geo().aliases);
        assert_eq!(b.sources, sources());
        assert_eq!(b.manifest.policy_sha256.as_deref(), Some("policy"));
        assert!(b.manifest.same_data(&sources()));
        assert!(!b.manifest.same_data(&sources()[..1]));
        // Only the two files, no temporary left behind.
        let mut names: Vec<String> = std::fs::read_dir(&run)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut want = vec![paths::BASELINE_MANIFEST_NAME, paths::BASELINE_TABLE_NAME];
        want.sort();
        assert_eq!(names, want);
        assert!(remove(&run).expect("removed"));
        assert!(!remove(&run).expect("nothing left"));
        assert!(read(&run).expect("gone").is_none());
    }

    #[test]
    fn a_corrupt_baseline_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("scratch");
        let run = dir.path();
        write(run, &geo(), &sources(), None).expect("written");

        // The table replaced by another write's: the manifest does not name it.
        let other = GeoTable::default().to_snapshot();
        std::fs::write(table_path(run), &other).expect("replace the table");
        let e = read(run).expect_err("mismatch").to_string();
        assert!(
            e.starts_with(&table_path(run).display().to_string()) && e.contains("manifest names"),
            "{e}"
        );

        // A damaged table whose manifest agrees with it: the snapshot's own
        // checks refuse it.
        write(run, &geo(), &sources(), None).expect("written");
        let mut bytes = std::fs::read(table_path(run)).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(table_path(run), &bytes).expect("damage");
        let mut m = read_manifest(run).expect("manifest").expect("present");
        m.table_sha256 = geoip::hex(&Sha256::digest(&bytes));
        std::fs::write(manifest_path(run), serde_json::to_vec(&m).expect("json")).expect("write");
        let e = read(run).expect_err("damaged").to_string();
        assert!(e.contains("checksum"), "{e}");

        // The table missing.
        std::fs::remove_file(table_path(run)).expect("remove");
        let e = read(run).expect_err("missing table").to_string();
        assert!(e.contains("cannot read"), "{e}");

        // A manifest that is not one.
        std::fs::write(manifest_path(run), "{\"version\": 1").expect("write");
        let e = read(run).expect_err("not JSON").to_string();
        assert!(
            e.starts_with(&manifest_path(run).display().to_string())
                && e.contains("not a baseline manifest"),
            "{e}"
        );
    }

    #[test]
    fn a_failed_write_leaves_no_stale_manifest() {
        let dir = tempfile::tempdir().expect("scratch");
        let run = dir.path().join("run");
        write(&run, &geo(), &sources(), None).expect("written");
        // The table's name taken by a directory: the next write fails.
        std::fs::remove_file(table_path(&run)).expect("remove");
        std::fs::create_dir(table_path(&run)).expect("block the name");
        write(&run, &GeoTable::default(), &[], None).expect_err("cannot write");
        assert!(!manifest_path(&run).exists(), "the old manifest is gone");
        assert!(read(&run).expect("no manifest").is_none());
    }
}
