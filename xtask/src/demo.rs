//! `cargo xtask demo`: installs what is needed, fetches the real GeoLite2
//! database, builds everything, then runs `ee-demo` (tests/src/bin), which
//! shows the main job in a sandbox and checks every step.
//!
//! The demo itself lives in the tests crate, next to the sandbox it uses:
//! that crate depends on the agent, whose build needs bpf-linker and the
//! nightly's rust-src, which xtask must be able to install before anything
//! needs them. xtask itself depends on nothing that does.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{geoip, setup, test::cargo, workspace};

pub fn run() -> Result<()> {
    setup::ensure(&setup::Opts { require_root: true })?;
    let files = geoip::ensure()?;
    cargo(&["build", "--bins"], &[])?;
    let bin = workspace()?.target_dir.join("debug");
    let _bpffs = crate::bpffs::Restore::new();
    let status = Command::new(bin.join("ee-demo"))
        .arg(&files.maxmind_country)
        .env("ENFORCER_BIN", bin.join("enforcer"))
        .env("EE_PROBE_BIN", bin.join("ee-probe"))
        .status()
        .context("running ee-demo")?;
    if !status.success() {
        bail!("the demo failed ({status})");
    }
    Ok(())
}
