//! `cargo xtask deb`: the Debian package, `egress-enforcer_<ver>_<arch>.deb`.
//!
//! The static files (units, config, tmpfiles, maintainer scripts,
//! copyright) live in `packaging/debian/` so they are reviewed like code;
//! this module only assembles them with the release binary, the man pages
//! and completions the binary writes (`enforcer generate`), and the
//! generated control files, into `<target>/debian/stage`, then runs
//! `dpkg-deb --root-owner-group --build`. dpkg-deb is part of every Debian
//! system, so nothing (cargo-deb, debhelper) has to be installed.
//!
//! After the build the package is checked with `dpkg-deb --info` and
//! `--contents` (a required file missing or with the wrong mode fails the
//! run), the maintainer scripts with shellcheck and the units with
//! `systemd-analyze verify` when those are installed, and lintian's
//! findings are printed when it is. The `.deb`'s path is the last line on
//! stdout, for scripts.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{setup, workspace, workspace_root};

const PACKAGE: &str = "egress-enforcer";

/// The Maintainer field: the project's authors (the address is the
/// project's placeholder domain until it has a real one).
const MAINTAINER: &str = "The egress-enforcer authors <maintainers@example.invalid>";

/// The control file's Description: a synopsis line, then the long text
/// (each line indented by one space, as deb-control(5) requires).
const DESCRIPTION: &str = "\
refuse or record outbound connections by destination jurisdiction
 egress-enforcer keeps the outbound connections of chosen services inside
 approved jurisdictions (the EEA, named countries, ...). An eBPF datapath
 attached to the services' cgroups decides each connect() and sendmsg()
 from GeoIP data and a policy, in observe mode (record what would be
 refused) or enforce mode (refuse it), and keeps enforcing while the agent
 restarts or is upgraded.
 .
 The package installs the agent as egress-enforcer.service, hardened, in
 observe mode, and residency.slice: services put in that slice are
 decided. It needs a GeoIP database, e.g. from geoipupdate.";

/// The packaging files copied as they are: (file in packaging/, path in
/// the package, mode).
#[rustfmt::skip] // one line per file
const STATIC_FILES: &[(&str, &str, u32)] = &[
    ("debian/egress-enforcer.service", "lib/systemd/system/egress-enforcer.service", 0o644),
    ("debian/residency.slice",         "lib/systemd/system/residency.slice",         0o644),
    ("debian/egress-enforcer-bpffs.service", "lib/systemd/system/egress-enforcer-bpffs.service", 0o644),
    ("debian/residency.conf",          "usr/share/egress-enforcer/residency.conf",   0o644),
    ("debian/enforcer.toml",           "etc/egress-enforcer/enforcer.toml",          0o644),
    ("debian/tmpfiles.conf",           "usr/lib/tmpfiles.d/egress-enforcer.conf",    0o644),
    ("logrotate/egress-enforcer",      "etc/logrotate.d/egress-enforcer",            0o644),
    ("debian/copyright",               "usr/share/doc/egress-enforcer/copyright",    0o644),
    // Examples, not active: the operator copies them to /etc/rsyslog.d/.
    ("rsyslog/egress-enforcer-host.conf", "usr/share/egress-enforcer/rsyslog/egress-enforcer-host.conf", 0o644),
    ("rsyslog/egress-enforcer-collector.conf", "usr/share/egress-enforcer/rsyslog/egress-enforcer-collector.conf", 0o644),
    // An example for the operator's Prometheus, not loaded by anything here.
    ("prometheus/egress-enforcer-rules.yml", "usr/share/egress-enforcer/prometheus/egress-enforcer-rules.yml", 0o644),
    ("grafana/egress-enforcer.json", "usr/share/egress-enforcer/grafana/egress-enforcer.json", 0o644),
];

/// Files under /etc that the administrator may edit: dpkg keeps their
/// edits on upgrade (DEBIAN/conffiles).
const CONFFILES: &[&str] = &[
    "/etc/egress-enforcer/enforcer.toml",
    "/etc/logrotate.d/egress-enforcer",
];

/// The maintainer scripts in packaging/debian/; `@VERSION@` in them is
/// replaced by the package version.
const SCRIPTS: &[&str] = &["preinst", "postinst", "prerm", "postrm"];

/// Where each shell's completion goes: (shell as `enforcer generate
/// completions` names it, path in the package). The directories are the
/// ones bash-completion, zsh and fish search for vendor completions on
/// Debian.
#[rustfmt::skip] // one line per shell
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "usr/share/bash-completion/completions/enforcer"),
    ("zsh",  "usr/share/zsh/vendor-completions/_enforcer"),
    ("fish", "usr/share/fish/vendor_completions.d/enforcer.fish"),
];

/// What the built package must contain, with its `ls -l` mode: checked in
/// `dpkg-deb --contents` after the build.
#[rustfmt::skip] // one line per file
const REQUIRED: &[(&str, &str)] = &[
    ("./usr/sbin/enforcer",                                "-rwxr-xr-x"),
    ("./lib/systemd/system/egress-enforcer.service",       "-rw-r--r--"),
    ("./lib/systemd/system/residency.slice",               "-rw-r--r--"),
    ("./lib/systemd/system/egress-enforcer-bpffs.service", "-rw-r--r--"),
    ("./usr/share/egress-enforcer/residency.conf",         "-rw-r--r--"),
    ("./etc/egress-enforcer/enforcer.toml",                "-rw-r--r--"),
    ("./etc/logrotate.d/egress-enforcer",                  "-rw-r--r--"),
    ("./usr/lib/tmpfiles.d/egress-enforcer.conf",          "-rw-r--r--"),
    ("./usr/share/man/man8/enforcer.8.gz",                 "-rw-r--r--"),
    ("./usr/share/man/man8/enforcer-run.8.gz",             "-rw-r--r--"),
    ("./usr/share/bash-completion/completions/enforcer",   "-rw-r--r--"),
    ("./usr/share/zsh/vendor-completions/_enforcer",       "-rw-r--r--"),
    ("./usr/share/fish/vendor_completions.d/enforcer.fish", "-rw-r--r--"),
    ("./usr/share/doc/egress-enforcer/copyright",          "-rw-r--r--"),
    ("./usr/share/egress-enforcer/rsyslog/egress-enforcer-host.conf", "-rw-r--r--"),
    ("./usr/share/egress-enforcer/rsyslog/egress-enforcer-collector.conf", "-rw-r--r--"),
    ("./usr/share/egress-enforcer/prometheus/egress-enforcer-rules.yml", "-rw-r--r--"),
    ("./usr/share/egress-enforcer/grafana/egress-enforcer.json", "-rw-r--r--"),
    ("./usr/share/doc/egress-enforcer/changelog.Debian.gz", "-rw-r--r--"),
];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Package this `enforcer` binary instead of a fresh release build
    /// (the upgrade test packages the previous release's binary with
    /// today's packaging). Its man pages and completions come from it
    /// when it has `enforcer generate`, else from the current build.
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// The Debian version (default: the workspace version). Without a
    /// Debian revision, `-1` is added.
    #[arg(long, value_name = "V")]
    pub version: Option<String>,
    /// Where the .deb is written (default: <target-dir>/debian).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let deb = build(&args)?;
    println!("{}", deb.display());
    Ok(())
}

/// Builds the package `args` describe; returns its path.
pub fn build(args: &Args) -> Result<PathBuf> {
    for tool in ["dpkg", "dpkg-deb", "gzip", "md5sum"] {
        if which(tool).is_none() {
            bail!(
                "`{tool}` is not installed; `cargo xtask deb` runs on Debian (package dpkg / coreutils / gzip)"
            );
        }
    }
    let ws = workspace()?;
    let root = workspace_root();
    let debian_dir = ws.target_dir.join("debian");
    let out_dir = args.out.clone().unwrap_or_else(|| debian_dir.clone());
    let version = match &args.version {
        Some(v) => with_revision(v)?,
        None => with_revision(&upstream_version(&ws.version))?,
    };
    let arch = capture(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_owned();
    let epoch = capture(
        Command::new("git")
            .args(["log", "-1", "--format=%ct"])
            .current_dir(&root),
    )?
    .trim()
    .parse::<u64>()
    .context("`git log -1 --format=%ct` did not print a time")?;
    let commit = capture(
        Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(&root),
    )?
    .trim()
    .to_owned();

    let (binary, generator) = binaries(args, &ws.target_dir)?;
    println!(
        "\n==> staging {PACKAGE} {version} ({arch}) from {}",
        binary.display()
    );
    let stage = debian_dir.join("stage");
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    let packaging = root.join("packaging");
    for (from, to, mode) in STATIC_FILES {
        let bytes =
            fs::read(packaging.join(from)).with_context(|| format!("reading packaging/{from}"))?;
        put(&stage, to, &bytes, *mode)?;
    }
    stage_binary(&stage, &binary)?;
    stage_generated(&stage, &generator, &debian_dir, epoch)?;
    let changelog = changelog(&version, &commit, epoch);
    put(
        &stage,
        "usr/share/doc/egress-enforcer/changelog.Debian.gz",
        &gzip(changelog.as_bytes())?,
        0o644,
    )?;

    // DEBIAN/: scripts, conffiles, md5sums, then control (which needs the
    // size of everything else).
    for script in SCRIPTS {
        let text = fs::read_to_string(packaging.join("debian").join(script))
            .with_context(|| format!("reading packaging/debian/{script}"))?;
        put(
            &stage,
            &format!("DEBIAN/{script}"),
            text.replace("@VERSION@", &version).as_bytes(),
            0o755,
        )?;
    }
    shellcheck(&stage)?;
    put(
        &stage,
        "DEBIAN/conffiles",
        (CONFFILES.join("\n") + "\n").as_bytes(),
        0o644,
    )?;
    let md5sums = md5sums(&stage)?;
    put(&stage, "DEBIAN/md5sums", md5sums.as_bytes(), 0o644)?;
    let depends = depends(&stage.join("usr/sbin/enforcer"), &debian_dir)?;
    let control = format!(
        "Package: {PACKAGE}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: {MAINTAINER}\n\
         Installed-Size: {size}\n\
         Depends: {depends}, adduser\n\
         Recommends: geoipupdate\n\
         Suggests: rsyslog, rsyslog-relp\n\
         Section: admin\n\
         Priority: optional\n\
         Description: {DESCRIPTION}\n",
        size = installed_size(&stage)?,
    );
    put(&stage, "DEBIAN/control", control.as_bytes(), 0o644)?;
    directory_modes(&stage)?;
    verify_units(&stage);

    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    // The file name leaves out an epoch (`1:`), as dpkg's own names do.
    let file_version = version.split_once(':').map_or(version.as_str(), |(_, v)| v);
    let deb = out_dir.join(format!("{PACKAGE}_{file_version}_{arch}.deb"));
    println!("\n==> dpkg-deb --build {}", deb.display());
    let built = capture(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&stage)
            .arg(&deb)
            // dpkg-deb clamps the archive's timestamps to it: packages
            // from one commit are alike.
            .env("SOURCE_DATE_EPOCH", epoch.to_string()),
    )?;
    print!("{built}");
    check_package(&deb, &version)?;
    lintian(&deb);
    Ok(deb)
}

/// The binary to package and the binary that writes the man pages and
/// completions (see [`Args::binary`]).
fn binaries(args: &Args, target_dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let Some(given) = &args.binary else {
        let built = build_release(target_dir)?;
        return Ok((built.clone(), built));
    };
    if !given.is_file() {
        bail!("--binary {}: no such file", given.display());
    }
    let given = given
        .canonicalize()
        .with_context(|| format!("resolving {}", given.display()))?;
    let supports_generate = Command::new(&given)
        .args(["generate", "completions", "bash"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if supports_generate {
        return Ok((given.clone(), given));
    }
    println!(
        "note: {} has no `enforcer generate`; its man pages and completions come from the current build",
        given.display()
    );
    Ok((given, build_release(target_dir)?))
}

/// `cargo build --release -p enforcer` (enforcer/build.rs builds the
/// datapath, hence the toolchain check first).
fn build_release(target_dir: &Path) -> Result<PathBuf> {
    setup::ensure_build()?;
    crate::test::cargo(
        &[
            "build",
            "--release",
            "--package",
            "enforcer",
            "--bin",
            "enforcer",
        ],
        &[],
    )?;
    Ok(target_dir.join("release").join("enforcer"))
}

/// /usr/sbin/enforcer, stripped: the symbols and debug info are for
/// developers (and lintian flags an unstripped binary); the datapath's
/// object is data inside the binary and is not touched by strip.
fn stage_binary(stage: &Path, binary: &Path) -> Result<()> {
    let bytes = fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let dest = put(stage, "usr/sbin/enforcer", &bytes, 0o755)?;
    if which("strip").is_some() {
        run_quiet(
            Command::new("strip")
                .args([
                    "--strip-unneeded",
                    "--remove-section=.comment",
                    "--remove-section=.note",
                ])
                .arg(&dest),
        )?;
    } else {
        println!("note: `strip` (binutils) is not installed; the binary is packaged unstripped");
    }
    Ok(())
}

/// Man pages (gzip -9n: no name or time in the header, so the bytes
/// depend only on the text) and completions, written by `generator`.
fn stage_generated(stage: &Path, generator: &Path, debian_dir: &Path, epoch: u64) -> Result<()> {
    let man_dir = debian_dir.join("man");
    if man_dir.exists() {
        fs::remove_dir_all(&man_dir).with_context(|| format!("removing {}", man_dir.display()))?;
    }
    run_quiet(
        Command::new(generator)
            .args(["generate", "man"])
            .arg(&man_dir)
            // The pages' date: the commit's, not today's.
            .env("SOURCE_DATE_EPOCH", epoch.to_string()),
    )?;
    let mut pages: Vec<PathBuf> = fs::read_dir(&man_dir)
        .with_context(|| format!("listing {}", man_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "8"))
        .collect();
    pages.sort();
    if pages.is_empty() {
        bail!("`{} generate man` wrote no page", generator.display());
    }
    for page in &pages {
        let name = page
            .file_name()
            .context("a man page without a file name")?
            .to_string_lossy();
        let text = fs::read(page).with_context(|| format!("reading {}", page.display()))?;
        put(
            stage,
            &format!("usr/share/man/man8/{name}.gz"),
            &gzip(&text)?,
            0o644,
        )?;
    }
    for (shell, path) in COMPLETIONS {
        let script = capture(Command::new(generator).args(["generate", "completions", shell]))?;
        put(stage, path, script.as_bytes(), 0o644)?;
    }
    Ok(())
}

/// Writes `bytes` to `stage/rel` with `mode`, creating the directories.
fn put(stage: &Path, rel: &str, bytes: &[u8], mode: u32) -> Result<PathBuf> {
    let path = stage.join(rel);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))?;
    Ok(path)
}

/// Every directory 0755, whatever the umask made them: dpkg installs
/// them with the modes they have in the archive.
fn directory_modes(dir: &Path) -> Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod 755 {}", dir.display()))?;
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            directory_modes(&path)?;
        }
    }
    Ok(())
}

/// Every regular file under `dir`, relative to `root`, sorted.
fn files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            files(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_owned());
        }
    }
    out.sort();
    Ok(())
}

/// The payload's files (not DEBIAN/), relative to the stage.
fn payload(stage: &Path) -> Result<Vec<PathBuf>> {
    let mut all = Vec::new();
    files(stage, stage, &mut all)?;
    all.retain(|p| !p.starts_with("DEBIAN"));
    Ok(all)
}

/// DEBIAN/md5sums: what `dpkg --verify` and debsums check the installed
/// files against.
fn md5sums(stage: &Path) -> Result<String> {
    capture(
        Command::new("md5sum")
            .args(payload(stage)?)
            .current_dir(stage),
    )
}

/// Installed-Size in KiB, counted as dpkg-gencontrol does: each file
/// rounded up to a KiB, each directory one.
fn installed_size(stage: &Path) -> Result<u64> {
    fn walk(dir: &Path, total: &mut u64) -> Result<()> {
        for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry?;
            if entry.file_name() == "DEBIAN" {
                continue;
            }
            let meta = entry.metadata()?;
            if meta.is_dir() {
                *total += 1;
                walk(&entry.path(), total)?;
            } else {
                *total += meta.len().div_ceil(1024);
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(stage, &mut total)?;
    Ok(total)
}

/// The shared-library dependencies: dpkg-shlibdeps when installed
/// (dpkg-dev), else libc6 at least as new as the newest GLIBC_x.y symbol
/// version the binary imports (`objdump -T`).
fn depends(binary: &Path, debian_dir: &Path) -> Result<String> {
    if which("dpkg-shlibdeps").is_some() {
        // It wants a source package's debian/control to read.
        let work = debian_dir.join("shlibdeps");
        put(
            &work,
            "debian/control",
            format!("Source: {PACKAGE}\n\nPackage: {PACKAGE}\nArchitecture: any\n").as_bytes(),
            0o644,
        )?;
        let out = capture(
            Command::new("dpkg-shlibdeps")
                .arg("-O")
                .arg(format!("-e{}", binary.display()))
                .current_dir(&work),
        )?;
        if let Some(deps) = out
            .lines()
            .find_map(|l| l.strip_prefix("shlibs:Depends="))
            .filter(|d| !d.trim().is_empty())
        {
            return Ok(deps.trim().to_owned());
        }
        println!("note: dpkg-shlibdeps printed no shlibs:Depends; using objdump");
    }
    let dump = capture(Command::new("objdump").arg("-T").arg(binary))
        .context("objdump (binutils) is needed to find the glibc version")?;
    match newest_glibc(&dump) {
        Some((major, minor)) => Ok(format!("libc6 (>= {major}.{minor})")),
        None => Ok("libc6".to_owned()),
    }
}

/// The newest `GLIBC_x.y` in `objdump -T` output.
fn newest_glibc(dump: &str) -> Option<(u32, u32)> {
    dump.split_whitespace()
        .filter_map(|w| {
            w.trim_matches(|c| c == '(' || c == ')')
                .strip_prefix("GLIBC_")
        })
        .filter_map(|v| {
            let mut parts = v.split('.');
            let major = parts.next()?.parse().ok()?;
            let minor = parts.next().map_or(Some(0), |m| m.parse().ok())?;
            Some((major, minor))
        })
        .max()
}

/// The Cargo version as a Debian upstream version: a pre-release
/// (`0.2.0-rc.1`) sorts before its release only as `0.2.0~rc.1`.
fn upstream_version(cargo: &str) -> String {
    let without_build = cargo.split('+').next().unwrap_or(cargo);
    match without_build.split_once('-') {
        Some((release, pre)) => format!("{release}~{pre}"),
        None => without_build.to_owned(),
    }
}

/// A Debian version with a revision: `-1` added when there is none.
fn with_revision(version: &str) -> Result<String> {
    let ok = version.chars().next().is_some_and(|c| c.is_ascii_digit())
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+~-:".contains(c));
    if !ok {
        bail!(
            "version {version:?} is not a Debian version (a digit first, then letters, digits and . + ~ - :)"
        );
    }
    Ok(if version.contains('-') {
        version.to_owned()
    } else {
        format!("{version}-1")
    })
}

/// changelog.Debian: one entry naming the commit the package was built
/// from, dated with the commit's time (RFC 2822, as deb-changelog(5)
/// requires).
fn changelog(version: &str, commit: &str, epoch: u64) -> String {
    format!(
        "{PACKAGE} ({version}) unstable; urgency=medium\n\n  \
         * Built with `cargo xtask deb` from commit {commit}.\n\n \
         -- {MAINTAINER}  {}\n",
        rfc2822(epoch)
    )
}

/// `Sun, 06 Dec 2026 20:54:56 +0000`.
fn rfc2822(epoch: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (days, rem) = (epoch / 86_400, epoch % 86_400);
    let (y, m, d) = crate::geoip::civil_from_days(days as i64);
    format!(
        "{}, {d:02} {} {y} {:02}:{:02}:{:02} +0000",
        // 1970-01-01 was a Thursday.
        DAYS[(days % 7) as usize],
        MONTHS[(m as usize).saturating_sub(1) % 12],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write as _;
    let mut child = Command::new("gzip")
        .args(["-9n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running gzip")?;
    let mut stdin = child.stdin.take().context("gzip's stdin")?;
    stdin.write_all(bytes).context("writing to gzip")?;
    drop(stdin);
    let out = child.wait_with_output().context("waiting for gzip")?;
    if !out.status.success() {
        bail!("gzip failed ({})", out.status);
    }
    Ok(out.stdout)
}

/// The maintainer scripts are POSIX sh run as root by dpkg: a finding of
/// shellcheck fails the build. Skipped (with a note) when it is not
/// installed (`apt-get install shellcheck`).
fn shellcheck(stage: &Path) -> Result<()> {
    if which("shellcheck").is_none() {
        println!("note: shellcheck is not installed; the maintainer scripts are not linted");
        return Ok(());
    }
    let scripts: Vec<PathBuf> = SCRIPTS
        .iter()
        .map(|s| stage.join("DEBIAN").join(s))
        .collect();
    let out = Command::new("shellcheck")
        .args(["--shell=sh", "--severity=style"])
        .args(&scripts)
        .output()
        .context("running shellcheck")?;
    if !out.status.success() {
        bail!(
            "shellcheck found problems in the maintainer scripts:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    println!("ok: shellcheck (preinst, postinst, prerm, postrm)");
    Ok(())
}

/// `systemd-analyze verify` on the staged units, when installed: prints
/// what it says and does not fail (its verdict depends on the host's
/// systemd; the container test runs it on Debian 12's). The units are
/// verified against this host's own units (`--root` would need a whole
/// systemd tree), where /usr/sbin/enforcer is not installed: that one
/// complaint is expected and left out.
fn verify_units(stage: &Path) {
    if which("systemd-analyze").is_none() {
        println!("note: systemd-analyze is not installed; the units are not verified");
        return;
    }
    let units = stage.join("lib/systemd/system");
    let result = Command::new("systemd-analyze")
        .arg("verify")
        // The man pages are checked in the package, not on this host.
        .arg("--man=no")
        .arg(units.join("residency.slice"))
        .arg(units.join("egress-enforcer-bpffs.service"))
        .arg(units.join("egress-enforcer.service"))
        .output();
    match result {
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let findings: Vec<&str> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .filter(|l| !l.contains("/usr/sbin/enforcer is not executable"))
                .collect();
            if findings.is_empty() {
                println!("ok: systemd-analyze verify (egress-enforcer.service, residency.slice)");
            } else {
                println!("systemd-analyze verify:\n{}", findings.join("\n"));
            }
        }
        Err(e) => println!("note: systemd-analyze verify did not run: {e}"),
    }
}

/// `dpkg-deb --info` and `--contents` of the built package: the control
/// fields, every maintainer file and every [`REQUIRED`] file with its mode
/// and root ownership.
fn check_package(deb: &Path, version: &str) -> Result<()> {
    let info = capture(Command::new("dpkg-deb").arg("--info").arg(deb))?;
    for field in [format!("Package: {PACKAGE}"), format!("Version: {version}")] {
        if !info.lines().any(|l| l.trim() == field) {
            bail!("dpkg-deb --info {}: no `{field}`:\n{info}", deb.display());
        }
    }
    for member in ["control", "conffiles", "md5sums"].iter().chain(SCRIPTS) {
        if !info.split_whitespace().any(|w| w == *member) {
            bail!(
                "dpkg-deb --info {}: no {member} in the control archive",
                deb.display()
            );
        }
    }
    let contents = capture(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    let mut missing = Vec::new();
    for (path, mode) in REQUIRED {
        let found = contents.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.first() == Some(mode)
                && fields.get(1) == Some(&"root/root")
                && fields.last() == Some(path)
        });
        if !found {
            missing.push(format!("{path} ({mode} root/root)"));
        }
    }
    if !missing.is_empty() {
        bail!(
            "{} lacks required files:\n  {}\ncontents:\n{contents}",
            deb.display(),
            missing.join("\n  ")
        );
    }
    println!(
        "ok: dpkg-deb --info and --contents ({} required files)",
        REQUIRED.len()
    );
    Ok(())
}

/// lintian's findings, printed; not a failure (its tags include style
/// advice that does not apply to a package built outside a Debian source
/// tree). Skipped when lintian is not installed.
fn lintian(deb: &Path) {
    if which("lintian").is_none() {
        println!("note: lintian is not installed; the package is not linted");
        return;
    }
    match Command::new("lintian").arg(deb).output() {
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if text.trim().is_empty() {
                println!("ok: lintian (no findings)");
            } else {
                println!("lintian:\n{}", text.trim_end());
            }
        }
        Err(e) => println!("note: lintian did not run: {e}"),
    }
}

/// Runs `cmd` and returns its stdout; the error names the command and
/// carries its stderr.
fn capture(cmd: &mut Command) -> Result<String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `{program}`"))?;
    if !out.status.success() {
        bail!(
            "`{program}` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{program}` printed non-UTF-8"))
}

/// Runs `cmd` for its effect; its stdout is dropped (`generate man` lists
/// the files it wrote), its stderr shown on failure.
fn run_quiet(cmd: &mut Command) -> Result<()> {
    capture(cmd).map(drop)
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_versions() {
        assert_eq!(upstream_version("0.1.0"), "0.1.0");
        assert_eq!(upstream_version("0.2.0-rc.1"), "0.2.0~rc.1");
        assert_eq!(upstream_version("1.0.0+build5"), "1.0.0");
        assert_eq!(with_revision("0.1.0").ok().as_deref(), Some("0.1.0-1"));
        assert_eq!(with_revision("0.1.0-3").ok().as_deref(), Some("0.1.0-3"));
        assert!(with_revision("v0.1.0").is_err());
        assert!(with_revision("0.1.0 x").is_err());
    }

    #[test]
    fn glibc_from_objdump() {
        let dump = "0000 DF *UND* 0000 (GLIBC_2.2.5) memcpy\n\
                    0000 DF *UND* 0000 (GLIBC_2.34) __libc_start_main\n\
                    0000 DF *UND* 0000 GLIBC_2.17  clock_gettime\n";
        assert_eq!(newest_glibc(dump), Some((2, 34)));
        assert_eq!(newest_glibc("nothing"), None);
    }

    #[test]
    fn changelog_dates() {
        assert_eq!(rfc2822(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc2822(1_796_590_496), "Sun, 06 Dec 2026 20:54:56 +0000");
    }
}
