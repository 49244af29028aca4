//! `cargo xtask`: developer automation for egress-enforcer.
//!
//! Run from anywhere in the workspace (the alias lives in `.cargo/config.toml`):
//!
//! ```text
//! cargo xtask setup          # check/install toolchains, bpf-linker, system tools
//! cargo xtask geoip fetch    # download the real GeoIP databases into a cache dir
//! cargo xtask test           # everything CI runs (fmt, clippy, unit + kernel tests)
//! cargo xtask demo           # the main job, shown in a sandbox
//! cargo xtask bench          # performance, side by side (bench/results/)
//! cargo xtask fuzz           # the parsers' fuzz targets (nightly, cargo-fuzz)
//! cargo xtask deb            # the Debian package (target/debian/*.deb)
//! cargo xtask image          # the container image (buildah), run and archived
//! ```
//!
//! Every subcommand that needs the toolchain or system tools calls
//! [`setup::ensure`] first, so a fresh machine needs no manual steps beyond
//! the ones that command prints. Adding a subcommand: one variant in
//! [`Command`] (its doc comment is the help text) and one arm in [`run`].

mod bench;
mod bpffs;
mod deb;
mod demo;
mod fuzz;
mod geoip;
mod grafana;
mod image;
mod previous;
mod rootfs;
mod setup;
mod test;

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

/// Developer automation for egress-enforcer.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check, and install when missing, what builds, tests, demo and bench need.
    ///
    /// In order: Linux and root; the `nightly` toolchain with LLVM 22 (cannot
    /// be installed here); rust-src for nightly; bpf-linker 0.10.4 (built
    /// against the nightly's LLVM 22); cargo-fuzz 0.13.2; the system tools ip, nft, curl, ping,
    /// tar and npm (Debian packages). Idempotent, and offline when everything
    /// is present. `test`, `demo` and `bench` run the same checks first.
    Setup,

    /// Real GeoIP databases for tests, benchmarks and the demo.
    #[command(subcommand)]
    Geoip(geoip::GeoipCommand),

    /// Run every check CI runs: formatting, clippy (workspace and datapath),
    /// unit tests and the privileged integration tests in a real kernel.
    /// Installs what it needs first (see `setup`). Needs root.
    Test(test::Args),

    /// Show the main job in a sandbox: a real agent, observe then enforce,
    /// curl from a client cgroup, and the metrics that prove it. Removes
    /// everything it made, also on failure and Ctrl-C. Needs root.
    Demo,

    /// Measure the datapath side by side with an empty program, a plain LPM
    /// trie, nftables and ipset on the full geo-whois-asn-country database
    /// (EEA approved): decision cost, load time, kernel memory, agent RSS,
    /// connect() rate. Prints one table of medians, writes the results into
    /// docs/benchmarks.md and the chart to bench/results/latest.png. Takes
    /// minutes. Needs root.
    Bench(bench::Args),

    /// Fuzz the parsers of untrusted or hand-written input with cargo-fuzz
    /// on the nightly toolchain: the .mmdb reader, the CSV reader, the
    /// config parser and control requests (fuzz/, docs/fuzzing.md). Runs
    /// each target for --minutes (default 10), prints executions, exec/s
    /// and corpus size per target, and fails if any input crashed one (the
    /// input is kept under target/fuzz/artifacts/). Does not need root.
    Fuzz(fuzz::Args),

    /// Build, when not cached, the Debian 12 root file system the
    /// storage-host container tests boot (systemd 252, PostgreSQL 15) and
    /// print its path. `test` does this by itself. Needs root.
    Rootfs,

    /// Build, when not cached, the previous release's agent (the last
    /// commit of the previous datapath layout, `previous::COMMIT`) that
    /// the upgrade test starts from, and print its path. `test` does this
    /// by itself; this is for running the upgrade test alone.
    Previous,

    /// Build the Debian package: the release agent, its man pages and
    /// completions, the hardened systemd unit, residency.slice, the config
    /// (observe mode), tmpfiles, logrotate and maintainer scripts from
    /// packaging/debian/, assembled with dpkg-deb (no cargo-deb needed)
    /// into target/debian/egress-enforcer_<version>_<arch>.deb, whose path
    /// is the last line printed. Checks the result with dpkg-deb --info and
    /// --contents, shellcheck and systemd-analyze verify, and prints
    /// lintian's findings when lintian is installed. Does not need root.
    Deb(deb::Args),

    /// Build the agent's container image from packaging/container/Containerfile
    /// with buildah: the package (`deb`, or --deb) installed into Debian 12
    /// (--base, or a minimal Debian 12 made with mmdebstrap when no registry
    /// serves one). Then runs it with runc (`enforcer --version`, and
    /// `enforcer config check` on the Kubernetes ConfigMap's config) and
    /// writes an OCI archive under target/container/, whose path is the
    /// last line printed. Needs root.
    Image(image::Args),
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}/egress-enforcer`: what is slow to get
/// and never committed (GeoIP databases, the previous release's agent).
pub fn cache_root() -> PathBuf {
    let non_empty = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    non_empty("XDG_CACHE_HOME")
        .or_else(|| std::env::home_dir().map(|h| h.join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("egress-enforcer")
}

/// Where cargo puts the workspace's build output.
pub struct Workspace {
    pub target_dir: PathBuf,
    /// The workspace version (`[workspace.package] version`), read from
    /// the agent's package, which inherits it.
    pub version: String,
}

/// Asks `cargo metadata` (so `CARGO_TARGET_DIR` and config are honoured).
pub fn workspace() -> Result<Workspace> {
    let out =
        std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["metadata", "--no-deps", "--format-version", "1"])
            .current_dir(workspace_root())
            .output()
            .context("running cargo metadata")?;
    if !out.status.success() {
        anyhow::bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    let target_dir = meta
        .get("target_directory")
        .and_then(|v| v.as_str())
        .context("cargo metadata has no target_directory")?;
    let version = meta
        .get("packages")
        .and_then(|p| p.as_array())
        .and_then(|packages| {
            packages
                .iter()
                .find(|p| p.get("name").and_then(|n| n.as_str()) == Some("enforcer"))
        })
        .and_then(|p| p.get("version"))
        .and_then(|v| v.as_str())
        .context("cargo metadata has no version for the enforcer package")?;
    Ok(Workspace {
        target_dir: PathBuf::from(target_dir),
        version: version.to_owned(),
    })
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Messages are written for people; a backtrace would bury them.
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Setup => setup::ensure(&setup::Opts {
            require_root: false,
        }),
        Command::Geoip(cmd) => geoip::run(cmd),
        Command::Test(args) => test::run(args),
        Command::Demo => demo::run(),
        Command::Bench(args) => bench::run(args),
        Command::Fuzz(args) => fuzz::run(args),
        Command::Rootfs => {
            setup::ensure(&setup::Opts { require_root: true })?;
            println!("{}", rootfs::ensure()?.display());
            Ok(())
        }
        Command::Previous => {
            println!("{}", previous::ensure()?.display());
            Ok(())
        }
        Command::Deb(args) => deb::run(args),
        Command::Image(args) => image::run(args),
    }
}
