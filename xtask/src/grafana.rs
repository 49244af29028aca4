//! Grafana's dashboard schema types (`@grafana/schema`) and the TypeScript
//! compiler, for the fleet test's type check of the shipped dashboard
//! (packaging/grafana/egress-enforcer.json).
//!
//! `npm ci` of packaging/grafana/schema-check/ (versions and sha512
//! integrity pinned by its lock file) into a cache directory outside git
//! ([`dir`]); a later run whose cached lock file is the same does nothing,
//! so the check runs offline once installed.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

use crate::{cache_root, workspace_root};

/// Where the packages are installed: `<cache>/grafana-schema`.
pub fn dir() -> PathBuf {
    cache_root().join("grafana-schema")
}

/// Installs the pinned packages unless the cache already holds them;
/// returns the directory (its `node_modules/.bin/tsc` is the compiler).
pub fn ensure() -> Result<PathBuf> {
    let src = workspace_root().join("packaging/grafana/schema-check");
    let dir = dir();
    let lock = fs::read(src.join("package-lock.json"))
        .with_context(|| format!("reading {}/package-lock.json", src.display()))?;
    let tsc = dir.join("node_modules/.bin/tsc");
    if tsc.exists() && fs::read(dir.join("package-lock.json")).ok().as_ref() == Some(&lock) {
        return Ok(dir);
    }
    println!("==> Grafana schema types into {}", dir.display());
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for file in ["package.json", "package-lock.json"] {
        fs::copy(src.join(file), dir.join(file))
            .with_context(|| format!("copying {file} into {}", dir.display()))?;
    }
    let npm = crate::geoip::which("npm").context(
        "`npm` not found on PATH; it installs Grafana's schema types from the npm registry. \
         Run `cargo xtask setup` (installs Debian's npm package) and retry",
    )?;
    let status = Command::new(npm)
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .env("npm_config_update_notifier", "false")
        .status()
        .context("running `npm ci` for the Grafana schema types")?;
    if !status.success() || !tsc.exists() {
        bail!(
            "`npm ci` in {} failed ({status}); is the npm registry reachable (`npm config get registry`)?",
            dir.display()
        );
    }
    Ok(dir)
}
