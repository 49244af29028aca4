//! `cargo xtask setup`: check, and install when missing, everything the
//! build, the privileged tests, the demo and the benchmarks need.
//!
//! Written for a fresh machine: only rustup with a `stable` default and a
//! `nightly` (LLVM 22) toolchain, cargo, apt-get, and maybe npm/node are
//! assumed. Everything else is installed here, one line per item
//! (`ok: …` / `installing: …`). When everything is present this is fast and
//! touches no network. Every failure names what is missing and how to get it.

use std::{
    env,
    ffi::OsString,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};

/// What the caller needs from the machine.
#[derive(Clone, Debug, Default)]
pub struct Opts {
    /// Fail (instead of warning and continuing) when not running as root.
    /// `test`, `demo` and `bench` set this; `setup` itself does not.
    pub require_root: bool,
}

/// The nightly toolchain that builds `enforcer-ebpf`, and the LLVM major it
/// must ship (bpf-linker loads that libLLVM at run time).
pub const NIGHTLY: &str = "nightly";
const NIGHTLY_LLVM_MAJOR: u32 = 22;

/// bpf-linker pinned to a release whose default features (`llvm-22`,
/// `rust-llvm-22`) load the running rustc's libLLVM 22 through
/// aya-rustc-llvm-proxy. Debian's LLVM (14) is too old and is never used.
const BPF_LINKER_VERSION: &str = "0.10.4";

/// cargo-fuzz, which builds and runs the fuzz targets of `fuzz/`
/// (`cargo xtask fuzz`, and the smoke in `cargo xtask test`) with the
/// nightly toolchain. Pinned: its build flags (sanitizer, coverage passes)
/// change between releases.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// A command the tests, demo, benchmarks or xtask itself run, and the Debian
/// package that provides it. Adding a tool is one line in [`SYSTEM_TOOLS`].
struct Tool {
    command: &'static str,
    package: &'static str,
    used_by: &'static str,
}

#[rustfmt::skip] // one line per tool
const SYSTEM_TOOLS: &[Tool] = &[
    Tool { command: "ip",   package: "iproute2",     used_by: "network namespaces and veth pairs" },
    Tool { command: "nft",  package: "nftables",     used_by: "the nftables baseline" },
    Tool { command: "curl", package: "curl",         used_by: "real HTTP clients" },
    Tool { command: "ping", package: "iputils-ping", used_by: "ICMP clients" },
    Tool { command: "tmux", package: "tmux",         used_by: "running `enforcer top` in a real terminal (top tests)" },
    Tool { command: "logrotate", package: "logrotate", used_by: "rotating the audit log with the shipped snippet (sinks tests)" },
    Tool { command: "tar",  package: "tar",          used_by: "unpacking npm tarballs (geoip fetch)" },
    Tool { command: "npm",  package: "npm",          used_by: "downloading GeoIP databases (geoip fetch)" },
    Tool { command: "mmdebstrap", package: "mmdebstrap", used_by: "building the storage-host container's Debian 12 root fs" },
    Tool { command: "systemd-nspawn", package: "systemd-container", used_by: "booting the storage-host container (a real systemd 252)" },
    Tool { command: "shellcheck", package: "shellcheck", used_by: "linting the package's maintainer scripts (deb)" },
    Tool { command: "python3:cryptography", package: "python3-cryptography", used_by: "checking signed audit checkpoints with an independent Ed25519" },
    Tool { command: "chromium", package: "chromium", used_by: "looking at the audit report page headless (a screenshot)" },
    Tool { command: "pg_ctlcluster", package: "postgresql-15", used_by: "the PostgreSQL peers of the storage-host test" },
    Tool { command: "rsyslogd", package: "rsyslog", used_by: "shipping the audit log and events to a collector (shipping tests)" },
    Tool { command: "file:/usr/lib/{multiarch}/rsyslog/omrelp.so", package: "rsyslog-relp", used_by: "RELP between the host and collector rsyslog (shipping tests)" },
    // The package's maintainer script does not start the daemon where
    // systemd is not running (invoke-rc.d declines): checked on Debian 12.
    Tool { command: "promtool", package: "prometheus", used_by: "checking live scrapes and the shipped alert rules (promtool tests)" },
    Tool { command: "prometheus", package: "prometheus", used_by: "scraping three agents and evaluating the shipped rules (fleet test)" },
    // Installed without starting its daemon where systemd is not running
    // (invoke-rc.d declines): checked on Debian 12.
    Tool { command: "prometheus-alertmanager", package: "prometheus-alertmanager", used_by: "delivering the fleet test's alerts to its webhook (fleet test)" },
    Tool { command: "python3:ensurepip", package: "python3-venv", used_by: "the venv kubernetes-validate is installed in (kubernetes tests)" },
    Tool { command: "kubectl", package: "kubernetes-client", used_by: "rendering packaging/kubernetes with kustomize (kubernetes tests)" },
];

/// What only `cargo xtask bench` needs on top of [`SYSTEM_TOOLS`]: the
/// firewalls it compares against and the traffic generator. Kept apart so
/// that `test` and `demo` do not install them.
#[rustfmt::skip] // one line per tool
const BENCH_TOOLS: &[Tool] = &[
    Tool { command: "ipset",    package: "ipset",    used_by: "the ipset hash:net baseline (bench)" },
    Tool { command: "iptables", package: "iptables", used_by: "the iptables + ipset baseline (bench)" },
    Tool { command: "iperf3",   package: "iperf3",   used_by: "TCP bulk and UDP packet rate (bench)" },
];

/// What only `cargo xtask image` needs: a daemonless image builder, an OCI
/// runtime to run the image with (runc: crun refuses hosts with a hybrid
/// cgroup hierarchy, like this project's test machine), and mmdebstrap for
/// a Debian 12 base when no registry serves one.
#[rustfmt::skip] // one line per tool
const IMAGE_TOOLS: &[Tool] = &[
    Tool { command: "buildah",    package: "buildah",    used_by: "building the container image (image)" },
    Tool { command: "runc",       package: "runc",       used_by: "running the built image (image)" },
    Tool { command: "mmdebstrap", package: "mmdebstrap", used_by: "a Debian 12 base image when none can be pulled (image)" },
];

/// Directories searched for system commands in addition to `$PATH`: a
/// non-login root shell (or `sudo` with a reset PATH) may lack the sbin dirs
/// where `ip` and `nft` live.
const SBIN_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// Checks the machine and installs what is missing, in order: Linux and root,
/// the nightly toolchain, rust-src, bpf-linker, cargo-fuzz, Debian packages.
///
/// May add directories (cargo's bin dir in front, sbin dirs at the back) to
/// this process's `PATH` so child processes find what was found or installed
/// there; call it before spawning threads.
pub fn ensure(opts: &Opts) -> Result<()> {
    let root = check_linux_and_root(opts)?;
    let rustup = find_rustup()?;
    check_nightly(&rustup)?;
    ensure_rust_src(&rustup)?;
    ensure_bpf_linker()?;
    ensure_cargo_fuzz()?;
    ensure_system_tools(root, SYSTEM_TOOLS)?;
    ensure_kubernetes_validate()?;
    Ok(())
}

/// What `cargo xtask fuzz` needs: the nightly toolchain with rust-src and
/// cargo-fuzz (no root, no system tools).
pub fn ensure_fuzz() -> Result<()> {
    let rustup = find_rustup()?;
    check_nightly(&rustup)?;
    ensure_rust_src(&rustup)?;
    ensure_cargo_fuzz()
}

/// What building the release agent needs (`cargo xtask deb`): the nightly
/// toolchain with rust-src and bpf-linker, for the datapath that
/// enforcer/build.rs builds. No root, no test tools.
pub fn ensure_build() -> Result<()> {
    let rustup = find_rustup()?;
    check_nightly(&rustup)?;
    ensure_rust_src(&rustup)?;
    ensure_bpf_linker()
}

/// What `cargo xtask image` needs: the build toolchain (for the package)
/// and [`IMAGE_TOOLS`]. Needs root (buildah's storage, runc).
pub fn ensure_image() -> Result<()> {
    let root = check_linux_and_root(&Opts { require_root: true })?;
    ensure_build()?;
    ensure_system_tools(root, IMAGE_TOOLS)
}

/// [`ensure`], then the tools only the benchmark needs ([`BENCH_TOOLS`]).
pub fn ensure_bench(opts: &Opts) -> Result<()> {
    ensure(opts)?;
    ensure_system_tools(opts.require_root, BENCH_TOOLS)
}

// ---------------------------------------------------------------------------
// Linux and root

fn check_linux_and_root(opts: &Opts) -> Result<bool> {
    if env::consts::OS != "linux" {
        bail!(
            "egress-enforcer needs Linux (eBPF, cgroup v2, network namespaces); this is {}",
            env::consts::OS
        );
    }
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown kernel".to_owned());
    let euid = effective_uid()?;
    if euid == 0 {
        println!("ok: Linux {kernel}, running as root");
        return Ok(true);
    }
    let msg = format!(
        "not running as root (effective uid {euid}). `cargo xtask test`, `cargo xtask demo` \
         and `cargo xtask bench` need root (they create network namespaces, veth pairs and \
         cgroups and load eBPF programs), and so does `cargo xtask setup` when it has apt \
         packages to install. Run them as root, e.g. `sudo -E env PATH=\"$PATH\" cargo xtask …`"
    );
    if opts.require_root {
        bail!("{msg}");
    }
    println!("warning: {msg}; continuing with the checks that do not need root");
    Ok(false)
}

/// Effective uid from `/proc/self/status` (`Uid: real effective saved fs`).
fn effective_uid() -> Result<u32> {
    let status = fs::read_to_string("/proc/self/status")
        .context("reading /proc/self/status (is /proc mounted?)")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .context("no effective uid in /proc/self/status")
}

// ---------------------------------------------------------------------------
// Rust toolchains

fn find_rustup() -> Result<PathBuf> {
    locate_tool("rustup", &cargo_bin_dirs(), Place::Front).context(
        "`rustup` not found on PATH or in ~/.cargo/bin / $CARGO_HOME/bin: install rustup \
         (https://rustup.rs) with a stable default toolchain and a nightly with LLVM 22",
    )
}

/// A `rustup` invocation that never installs a toolchain behind our back.
fn rustup_cmd(rustup: &Path) -> Command {
    let mut cmd = Command::new(rustup);
    cmd.env("RUSTUP_AUTO_INSTALL", "0")
        // Keep rustup's error messages short (no backtraces).
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    cmd
}

fn check_nightly(rustup: &Path) -> Result<()> {
    let how = format!(
        "xtask cannot install it on this machine; with network access, \
         `rustup toolchain install {NIGHTLY} --profile minimal --component rust-src` would add it \
         (it must ship LLVM {NIGHTLY_LLVM_MAJOR})"
    );
    let out = output(rustup_cmd(rustup).args(["run", NIGHTLY, "rustc", "-vV"]))?;
    if !out.status.success() {
        bail!(
            "the `{NIGHTLY}` toolchain is missing or broken: `rustup run {NIGHTLY} rustc -vV` failed:\n{}\n{how}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
    };
    let release = field("release:").unwrap_or_else(|| "unknown".to_owned());
    let Some(llvm) = field("LLVM version:") else {
        bail!("`rustup run {NIGHTLY} rustc -vV` printed no `LLVM version:` line:\n{text}\n{how}");
    };
    let major: Option<u32> = llvm.split('.').next().and_then(|m| m.parse().ok());
    if major != Some(NIGHTLY_LLVM_MAJOR) {
        bail!(
            "the `{NIGHTLY}` toolchain (rustc {release}) ships LLVM {llvm}, but bpf-linker \
             {BPF_LINKER_VERSION} and this project need LLVM {NIGHTLY_LLVM_MAJOR}.\n{how}"
        );
    }
    println!("ok: {NIGHTLY} toolchain (rustc {release}, LLVM {llvm})");
    Ok(())
}

fn rust_src_installed(rustup: &Path) -> Result<bool> {
    let out = output(rustup_cmd(rustup).args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY,
        "--installed",
    ]))?;
    if !out.status.success() {
        bail!(
            "`rustup component list --toolchain {NIGHTLY} --installed` failed:\n{}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().any(|l| {
        let name = l.split_whitespace().next().unwrap_or("");
        name == "rust-src" || name.starts_with("rust-src-")
    }))
}

/// rust-src for nightly (`-Z build-std=core` for the bpfel target). The
/// download has been seen to fail once with a transient 404 and succeed on
/// the next try, so retry, and trust the installed-component list rather than
/// rustup's exit code.
fn ensure_rust_src(rustup: &Path) -> Result<()> {
    if rust_src_installed(rustup)? {
        println!("ok: rust-src for {NIGHTLY}");
        return Ok(());
    }
    const ATTEMPTS: u32 = 3;
    let by_hand = format!("rustup component add rust-src --toolchain {NIGHTLY}");
    for attempt in 1..=ATTEMPTS {
        println!("installing: rust-src for {NIGHTLY} (attempt {attempt}/{ATTEMPTS}): {by_hand}");
        let status = rustup_cmd(rustup)
            .args(["component", "add", "rust-src", "--toolchain", NIGHTLY])
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("running `{by_hand}`"))?;
        if rust_src_installed(rustup)? {
            println!("ok: rust-src for {NIGHTLY} (installed)");
            return Ok(());
        }
        if attempt < ATTEMPTS {
            println!(
                "  rustup exited with {status} and rust-src is not installed; retrying in 5 s"
            );
            thread::sleep(Duration::from_secs(5));
        }
    }
    bail!(
        "rust-src for {NIGHTLY} is still not installed after {ATTEMPTS} attempts \
         (see rustup's output above); run `{by_hand}` by hand and retry"
    )
}

// ---------------------------------------------------------------------------
// bpf-linker

/// Where `cargo install` puts binaries, then the other places cargo-installed
/// tools usually live: `$CARGO_INSTALL_ROOT/bin`, `$CARGO_HOME/bin`,
/// `~/.cargo/bin`.
fn cargo_bin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for var in ["CARGO_INSTALL_ROOT", "CARGO_HOME"] {
        if let Some(v) = env::var_os(var).filter(|v| !v.is_empty()) {
            dirs.push(PathBuf::from(v).join("bin"));
        }
    }
    if let Some(home) = env::home_dir() {
        dirs.push(home.join(".cargo").join("bin"));
    }
    dirs.dedup();
    dirs
}

/// A cargo-installed tool's version from `<tool> --version` (its second
/// word: `bpf-linker 0.10.4`, `cargo-fuzz 0.13.2`); `None` when it does not
/// run.
fn tool_version(path: &Path) -> Option<String> {
    let out = Command::new(path).arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .map(str::to_owned)
}

/// What `cargo install` recorded about the features bpf-linker was built
/// with (`<root>/.crates2.json`, next to `<root>/bin`). `Some(false)` when it
/// was built without the default `llvm-22` feature; `None` when unknown.
fn bpf_linker_has_llvm22(bin: &Path) -> Option<bool> {
    let root = bin.parent()?.parent()?;
    let text = fs::read_to_string(root.join(".crates2.json")).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let (_, entry) = json
        .get("installs")?
        .as_object()?
        .iter()
        .find(|(key, _)| key.starts_with("bpf-linker "))?;
    let no_default = entry.get("no_default_features")?.as_bool()?;
    let all = entry
        .get("all_features")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let explicit = entry
        .get("features")
        .and_then(|f| f.as_array())
        .is_some_and(|f| f.iter().any(|x| x.as_str() == Some("llvm-22")));
    Some(!no_default || all || explicit)
}

fn ensure_bpf_linker() -> Result<()> {
    let dirs = cargo_bin_dirs();
    let found = locate_tool("bpf-linker", &dirs, Place::Front);
    let reason = match &found {
        None => "not found on PATH or in cargo's bin dirs".to_owned(),
        Some(path) => match tool_version(path) {
            Some(v) if v == BPF_LINKER_VERSION => match bpf_linker_has_llvm22(path) {
                Some(false) => format!(
                    "{} was installed without its default `llvm-22` feature",
                    path.display()
                ),
                known => {
                    let note = if known.is_none() {
                        " (not from `cargo install`: its LLVM features are not checked)"
                    } else {
                        ", default features (llvm-22)"
                    };
                    println!("ok: bpf-linker {v} at {}{note}", path.display());
                    return Ok(());
                }
            },
            Some(v) => format!(
                "{} is version {v}, need {BPF_LINKER_VERSION}",
                path.display()
            ),
            None => format!("{} does not run (`--version` failed)", path.display()),
        },
    };
    cargo_install(
        "bpf-linker",
        BPF_LINKER_VERSION,
        &reason,
        found.is_some(),
        "about 2 minutes",
        " and a C toolchain (`cc`)",
    )?;
    // Verify what was installed, and make sure it is the one children find.
    let (install_dir, installed) = installed_tool(&dirs, "bpf-linker", BPF_LINKER_VERSION)?;
    match find_in_path("bpf-linker") {
        Some(first) if first == installed => {}
        Some(other) => {
            println!(
                "  note: {} comes first on PATH; putting {} in front of it for child processes \
                 (remove the other one or reorder your shell's PATH)",
                other.display(),
                install_dir.display()
            );
            add_to_path(&install_dir, Place::Front);
        }
        None => {
            println!(
                "  note: {} is not on PATH; added for child processes (add it to your shell's PATH)",
                install_dir.display()
            );
            add_to_path(&install_dir, Place::Front);
        }
    }
    println!(
        "ok: bpf-linker {BPF_LINKER_VERSION} at {} (installed)",
        installed.display()
    );
    Ok(())
}

/// `cargo install TOOL@VERSION --locked [--force]`, outside the workspace so
/// its .cargo/config.toml does not apply. `--force` replaces whatever cargo
/// installed before (another version, other features); `takes` and `needs`
/// go into the messages.
fn cargo_install(
    tool: &str,
    version: &str,
    reason: &str,
    force: bool,
    takes: &str,
    needs: &str,
) -> Result<()> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let spec = format!("{tool}@{version}");
    let mut args = vec!["install", spec.as_str(), "--locked"];
    if force {
        args.push("--force");
    }
    let shown = format!("cargo {}", args.join(" "));
    println!(
        "installing: {tool} {version} ({reason}): `{shown}` \
         (builds with the stable toolchain, {takes})"
    );
    let status = Command::new(&cargo)
        .args(&args)
        .current_dir(env::temp_dir())
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running `{shown}` (is cargo installed?)"))?;
    if !status.success() {
        bail!(
            "`{shown}` failed ({status}); see cargo's output above. It needs network access to \
             crates.io{needs}; run it by hand to retry"
        );
    }
    Ok(())
}

/// After [`cargo_install`]: the tool in cargo's first bin dir, checked to
/// report `version`; returns that dir and the tool's path.
fn installed_tool(dirs: &[PathBuf], tool: &str, version: &str) -> Result<(PathBuf, PathBuf)> {
    let install_dir = dirs
        .first()
        .cloned()
        .context("no cargo bin dir (HOME and CARGO_HOME are unset)")?;
    let installed = install_dir.join(tool);
    match tool_version(&installed) {
        Some(v) if v == version => Ok((install_dir, installed)),
        other => bail!(
            "after `cargo install`, {} reports version {:?}, expected {version}; \
             install it by hand with `cargo install {tool}@{version} --locked --force`",
            installed.display(),
            other.unwrap_or_else(|| "none (does not run)".to_owned())
        ),
    }
}

// ---------------------------------------------------------------------------
// cargo-fuzz

fn ensure_cargo_fuzz() -> Result<()> {
    let dirs = cargo_bin_dirs();
    let found = locate_tool("cargo-fuzz", &dirs, Place::Front);
    let reason = match &found {
        None => "not found on PATH or in cargo's bin dirs".to_owned(),
        Some(path) => match tool_version(path) {
            Some(v) if v == CARGO_FUZZ_VERSION => {
                println!("ok: cargo-fuzz {v} at {}", path.display());
                return Ok(());
            }
            Some(v) => format!(
                "{} is version {v}, need {CARGO_FUZZ_VERSION}",
                path.display()
            ),
            None => format!("{} does not run (`--version` failed)", path.display()),
        },
    };
    cargo_install(
        "cargo-fuzz",
        CARGO_FUZZ_VERSION,
        &reason,
        found.is_some(),
        "about a minute",
        "",
    )?;
    let (install_dir, installed) = installed_tool(&dirs, "cargo-fuzz", CARGO_FUZZ_VERSION)?;
    // `cargo fuzz` finds `cargo-fuzz` on PATH: the pinned one must come first.
    if find_in_path("cargo-fuzz").as_deref() != Some(installed.as_path()) {
        add_to_path(&install_dir, Place::Front);
    }
    println!(
        "ok: cargo-fuzz {CARGO_FUZZ_VERSION} at {} (installed)",
        installed.display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Debian packages

/// Where a tool's command is, or None when it is missing. A `command` of
/// the form `python3:MODULE` is a Python module instead (for tests that
/// check our output with an independent implementation): present when
/// `python3 -c "import MODULE"` works. One of the form `file:PATH` is a
/// file the package installs (for packages without a command, such as
/// rsyslog-relp's module), `{multiarch}` standing for Debian's triplet
/// directory (`x86_64-linux-gnu`).
fn probe(command: &str) -> Option<String> {
    if let Some(module) = command.strip_prefix("python3:") {
        let ok = Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        return ok.then(|| "python3".to_owned());
    }
    // A package without a command (a library, an rsyslog module): the
    // file it installs, `{multiarch}` being Debian's triplet directory.
    if let Some(path) = command.strip_prefix("file:") {
        let path = path.replace("{multiarch}", &format!("{}-linux-gnu", env::consts::ARCH));
        return Path::new(&path).exists().then_some(path);
    }
    locate_system_command(command).map(|p| p.display().to_string())
}

fn ensure_system_tools(root: bool, tools: &[Tool]) -> Result<()> {
    let mut missing = Vec::new();
    for tool in tools {
        match probe(tool.command) {
            Some(found) => println!("ok: {} at {found}", tool.command),
            None => {
                let verb = if root { "installing" } else { "missing" };
                println!(
                    "{verb}: {} (Debian package {}, for {})",
                    tool.command, tool.package, tool.used_by
                );
                missing.push(tool);
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }

    let mut packages: Vec<&str> = Vec::new();
    for tool in &missing {
        if !packages.contains(&tool.package) {
            packages.push(tool.package);
        }
    }
    let by_hand = format!(
        "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {}",
        packages.join(" ")
    );
    let list = missing
        .iter()
        .map(|t| format!("`{}` (package {}, for {})", t.command, t.package, t.used_by))
        .collect::<Vec<_>>()
        .join(", ");
    if !root {
        bail!("missing commands: {list}; installing them needs root: run `{by_hand}` as root");
    }
    let Some(apt_get) = locate_system_command("apt-get") else {
        bail!(
            "missing commands: {list}, and `apt-get` is not available: install these packages \
             with your distribution's package manager"
        );
    };
    let apt = |args: &[&str]| -> Result<()> {
        let shown = format!("apt-get {}", args.join(" "));
        println!("  running: {shown}");
        let status = Command::new(&apt_get)
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("running `{shown}`"))?;
        if !status.success() {
            bail!(
                "`{shown}` failed ({status}); see its output above. To retry by hand: `{by_hand}`"
            );
        }
        Ok(())
    };
    apt(&["update"])?;
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend(&packages);
    apt(&install)?;

    for tool in &missing {
        // probe, not locate_system_command: `python3:` and `file:` entries
        // are no command on PATH.
        match probe(tool.command) {
            Some(path) => println!("ok: {} at {path} (installed)", tool.command),
            None => bail!(
                "`{}` is still missing after installing package {}; run `{by_hand}` by hand",
                tool.command,
                tool.package
            ),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Python tools from PyPI

/// PyPI's kubernetes-validate, which checks packaging/kubernetes against the
/// Kubernetes API schemas (the `kubernetes::` tests). Debian has no package
/// of it. Pinned: it bundles the schemas, so its version decides which
/// Kubernetes versions can be named.
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

/// The venv PyPI tools are installed in, `<cache>/venv`: pip never touches
/// the system's Python (Debian's is externally managed), and the tests
/// find the tools there by the same rule (tests/tests/integration/kubernetes.rs).
pub fn python_venv() -> PathBuf {
    crate::cache_root().join("venv")
}

/// Installs kubernetes-validate into [`python_venv`] (made with `python3 -m
/// venv`, which on Debian needs python3-venv from [`SYSTEM_TOOLS`]) unless
/// the pinned version is there. Needs PyPI only when installing.
fn ensure_kubernetes_validate() -> Result<()> {
    let venv = python_venv();
    let bin = venv.join("bin").join("kubernetes-validate");
    let installed = Command::new(&bin)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if installed.as_deref() == Some(KUBERNETES_VALIDATE_VERSION) {
        println!(
            "ok: kubernetes-validate {KUBERNETES_VALIDATE_VERSION} at {}",
            bin.display()
        );
        return Ok(());
    }
    println!(
        "installing: kubernetes-validate {KUBERNETES_VALIDATE_VERSION} (PyPI, for the \
         kubernetes tests) into {}",
        venv.display()
    );
    let python = venv.join("bin").join("python3");
    if !python.exists() {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .stdin(Stdio::null())
            .status()
            .context("running `python3 -m venv` (Debian packages python3, python3-venv)")?;
        if !status.success() {
            bail!(
                "`python3 -m venv {}` failed ({status}); on Debian it needs python3-venv",
                venv.display()
            );
        }
    }
    let spec = format!("kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}");
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg(&spec)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running pip in {}", venv.display()))?;
    if !status.success() {
        bail!(
            "`{} -m pip install {spec}` failed ({status}); it needs PyPI; run it by hand to retry",
            python.display()
        );
    }
    println!(
        "ok: kubernetes-validate {KUBERNETES_VALIDATE_VERSION} at {} (installed)",
        bin.display()
    );
    Ok(())
}

/// A system command on `PATH`, else in an sbin dir (which is then appended to
/// `PATH` for child processes).
fn locate_system_command(name: &str) -> Option<PathBuf> {
    let extra: Vec<PathBuf> = SBIN_DIRS.iter().map(PathBuf::from).collect();
    locate_tool(name, &extra, Place::Back)
}

// ---------------------------------------------------------------------------
// PATH helpers

/// Where a directory found outside `PATH` goes when it is added to `PATH`.
#[derive(Clone, Copy)]
enum Place {
    /// Before everything else (cargo's bin dir: our pinned tools win).
    Front,
    /// After everything else (sbin dirs: only fill gaps).
    Back,
}

/// `name` on `PATH`, else in one of `extra_dirs`; in the latter case that dir
/// is added to `PATH` so child processes find the same binary.
fn locate_tool(name: &str, extra_dirs: &[PathBuf], place: Place) -> Option<PathBuf> {
    if let Some(p) = find_in_path(name) {
        return Some(p);
    }
    let (dir, path) = extra_dirs
        .iter()
        .map(|d| (d, d.join(name)))
        .find(|(_, p)| is_executable(p))?;
    println!(
        "  note: {} is not on PATH; added for child processes (add it to your shell's PATH)",
        dir.display()
    );
    add_to_path(dir, place);
    Some(path)
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Puts `dir` at the front or back of this process's `PATH` (moving it if it
/// is already there), so child processes see it.
fn add_to_path(dir: &Path, place: Place) {
    let old = env::var_os("PATH").unwrap_or_default();
    let rest = env::split_paths(&old).filter(|d| d != dir);
    let dirs: Vec<PathBuf> = match place {
        Place::Front => std::iter::once(dir.to_path_buf()).chain(rest).collect(),
        Place::Back => rest.chain(std::iter::once(dir.to_path_buf())).collect(),
    };
    if let Ok(new) = env::join_paths(dirs) {
        if new == old {
            return;
        }
        // SAFETY: xtask is single-threaded while `setup::ensure` runs (every
        // subcommand calls it first, before spawning any thread), so nothing
        // reads or writes the environment concurrently.
        unsafe { env::set_var("PATH", new) };
    }
}

/// Runs `cmd` with captured output; the error names the program.
fn output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `{}`", cmd.get_program().to_string_lossy()))
}
