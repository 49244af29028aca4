//! `cargo xtask test`: everything CI runs, in the order a failure is
//! cheapest to find: formatting, lints (workspace and datapath), build,
//! a short smoke of each fuzz target, unit tests, then the privileged
//! integration tests (real kernel, their own namespaces and cgroups).

use std::{path::Path, process::Command, time::Instant};

use anyhow::{Context as _, Result, bail};

use crate::{deb, fuzz, geoip, grafana, previous, rootfs, setup, workspace, workspace_root};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
    #[arg(last = true)]
    pub cargo_test_args: Vec<String>,
}

/// Runs `cargo <args>` in the workspace root; fails with the command line.
pub fn cargo(args: &[&str], envs: &[(&str, &Path)]) -> Result<()> {
    let started = Instant::now();
    println!("\n==> cargo {}", args.join(" "));
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(args).current_dir(workspace_root());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let status = cmd
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    println!("==> ok ({:.0}s)", started.elapsed().as_secs_f64());
    Ok(())
}

/// Lints the datapath with the nightly toolchain for the BPF target (the
/// workspace clippy run does not build it).
fn clippy_datapath() -> Result<()> {
    let started = Instant::now();
    let args = [
        "run",
        "nightly",
        "cargo",
        "clippy",
        "--package",
        "enforcer-ebpf",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--target-dir",
    ];
    println!("\n==> rustup {} … -- -D warnings", args.join(" "));
    let target_dir = workspace()?.target_dir.join("ebpf-clippy");
    let status = Command::new("rustup")
        .args(args)
        .arg(&target_dir)
        .args(["--", "-D", "warnings"])
        .current_dir(workspace_root())
        // The stable cargo's RUSTC must not leak into the nightly build.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .context("running clippy on enforcer-ebpf")?;
    if !status.success() {
        bail!("clippy on enforcer-ebpf failed ({status})");
    }
    println!("==> ok ({:.0}s)", started.elapsed().as_secs_f64());
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    setup::ensure(&setup::Opts { require_root: true })?;
    let files = geoip::ensure()?;
    let geo_dir = files.dir.as_path();
    let previous = previous::ensure()?;
    let rootfs = rootfs::ensure()?;
    let grafana_schema = grafana::ensure()?;

    // Plain `cargo build/clippy/test` cover the default members: every
    // crate but enforcer-ebpf, which only builds for the BPF target (through
    // enforcer/build.rs, and linted by `clippy_datapath`).
    cargo(&["fmt", "--all", "--", "--check"], &[])?;
    cargo(&["clippy", "--all-targets", "--", "-D", "warnings"], &[])?;
    clippy_datapath()?;
    cargo(&["build", "--bins"], &[])?;
    // Each parser of untrusted input for a few seconds (a crash fails the
    // run); the long runs are `cargo xtask fuzz`.
    fuzz::smoke()?;

    // The package of this tree, and the previous release's agent packaged
    // the same way (no release before had a package): the storage-host
    // container tests install, upgrade and try to downgrade them.
    let ws = workspace()?;
    let deb_current = deb::build(&deb::Args {
        binary: None,
        version: None,
        out: None,
    })?;
    let deb_previous = deb::build(&deb::Args {
        binary: Some(previous.clone()),
        version: Some(format!("{}~prev.{}", ws.version, &previous::COMMIT[..7])),
        out: Some(ws.target_dir.join("debian").join("previous")),
    })?;

    let target = ws.target_dir.join("debug");
    let enforcer = target.join("enforcer");
    let probe = target.join("ee-probe");
    let envs: [(&str, &Path); 8] = [
        ("EE_GEOIP_DIR", geo_dir),
        ("ENFORCER_BIN", &enforcer),
        ("EE_PROBE_BIN", &probe),
        ("EE_PREVIOUS_ENFORCER_BIN", &previous),
        ("EE_ROOTFS", &rootfs),
        ("EE_DEB", &deb_current),
        ("EE_DEB_PREVIOUS", &deb_previous),
        ("EE_GRAFANA_SCHEMA_DIR", &grafana_schema),
    ];
    let _bpffs = crate::bpffs::Restore::new();
    let mut test_args = vec!["test", "--no-fail-fast"];
    test_args.extend(args.cargo_test_args.iter().map(String::as_str));
    cargo(&test_args, &envs)?;
    println!(
        "\nall checks passed in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
