//! The previous release's agent, for the upgrade test: the real binary of
//! the last commit with the previous datapath layout, so the test upgrades
//! pins and links that the older code made, not a simulation of them.
//!
//! Built once per machine from this repository's own history (`git
//! archive` of [`COMMIT`], so no worktree is registered and nothing is
//! fetched) into `${XDG_CACHE_HOME:-~/.cache}/egress-enforcer/previous/`,
//! where only the binary is kept. A few minutes the first time; nothing
//! after.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{cache_root, workspace_root};

/// The last commit of datapath layout v10 (landed on main). Move it when
/// the layout version is bumped again, to the last commit before the bump.
pub const COMMIT: &str = "a4d251deb4a211fc3314668a1dff76ad2d3b7a8a";

/// The previous release's `enforcer`, built when not cached.
pub fn ensure() -> Result<PathBuf> {
    let dir = cache_root().join("previous").join(&COMMIT[..12]);
    let bin = dir.join("enforcer");
    if bin.is_file() {
        return Ok(bin);
    }
    println!("\n==> building the previous release's agent ({COMMIT:.12}) for the upgrade test");
    let root = workspace_root();
    let have = Command::new("git")
        .args(["cat-file", "-e", &format!("{COMMIT}^{{commit}}")])
        .current_dir(&root)
        .status()
        .context("running git")?;
    if !have.success() {
        bail!(
            "commit {COMMIT} is not in this clone's history (a shallow clone?); \
             the upgrade test needs it: `git fetch --unshallow`"
        );
    }
    let scratch = dir.join("src");
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    extract(&root, &scratch)?;
    let target = dir.join("target");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "build",
            "--quiet",
            "--package",
            "enforcer",
            "--bin",
            "enforcer",
        ])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(&scratch)
        .status()
        .context("building the previous release")?;
    if !status.success() {
        bail!("building the previous release ({COMMIT:.12}) failed ({status})");
    }
    fs::copy(target.join("debug").join("enforcer"), &bin)
        .with_context(|| format!("copying the previous agent to {}", bin.display()))?;
    // Only the binary is kept: the sources and a full target dir would
    // hold gigabytes for one file.
    let _ = fs::remove_dir_all(&scratch);
    let _ = fs::remove_dir_all(&target);
    Ok(bin)
}

/// `git archive COMMIT | tar -x -C dir`.
fn extract(root: &Path, dir: &Path) -> Result<()> {
    let mut archive = Command::new("git")
        .args(["archive", "--format=tar", COMMIT])
        .current_dir(root)
        .stdout(Stdio::piped())
        .spawn()
        .context("running git archive")?;
    let stdout = archive.stdout.take().context("git archive's output")?;
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(dir)
        .stdin(stdout)
        .status()
        .context("running tar")?;
    let archived = archive.wait().context("waiting for git archive")?;
    if !archived.success() || !tar.success() {
        bail!("extracting {COMMIT:.12} failed (git archive {archived}, tar {tar})");
    }
    Ok(())
}
