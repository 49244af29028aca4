//! The Debian 12 root file system the container tests boot with
//! systemd-nspawn: a real systemd 252, dbus and PostgreSQL 15 (with
//! `postgres_fdw` and `dblink`), the storage host the package is installed
//! on.
//!
//! Built once per machine with `mmdebstrap` (about 30 s, ~500 MiB) into
//! `${XDG_CACHE_HOME:-~/.cache}/egress-enforcer/rootfs/<suite>-<hash>`,
//! where the hash covers the suite and the package list, so changing either
//! builds a new one. Built into a scratch directory and renamed into place,
//! so an interrupted build is never taken for a finished one. The tests
//! never write to it: each container boots from an overlay of its own.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::cache_root;

/// The Debian release of the storage host (systemd 252, PostgreSQL 15).
const SUITE: &str = "bookworm";

/// What the storage host has besides `--variant=minbase`: systemd as init
/// (`systemd-sysv`), dbus for `systemctl`, `iproute2` to look at its
/// network, PostgreSQL 15 (`postgresql-contrib` is where Debian documents
/// `postgres_fdw` and `dblink`; in 15 they ship in `postgresql-15`), and
/// what the package's maintainer scripts and unit use (`adduser`,
/// `logrotate`).
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "iproute2",
    "postgresql",
    "postgresql-contrib",
    "adduser",
    "logrotate",
];

/// The cached root file system, built when missing.
pub fn ensure() -> Result<PathBuf> {
    let key = {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(SUITE);
        for p in PACKAGES {
            h.update(b"\0");
            h.update(p);
        }
        h.finalize()
    };
    let name = format!("{SUITE}-{}", hex12(&key));
    let parent = cache_root().join("rootfs");
    let dir = parent.join(&name);
    if dir.join("usr/lib/systemd/systemd").exists() {
        return Ok(dir);
    }
    fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let scratch = parent.join(format!("{name}.building-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    println!(
        "\n==> building the container root file system ({SUITE}: {}) with mmdebstrap",
        PACKAGES.join(", ")
    );
    let started = Instant::now();
    let out = Command::new("mmdebstrap")
        .args(["--variant=minbase", "--quiet"])
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(SUITE)
        .arg(&scratch)
        // With a terminal or a pipe on stdin mmdebstrap may read sources
        // from it; nothing here means "the default mirror".
        .stdin(Stdio::null())
        .output()
        .context("running mmdebstrap (Debian package `mmdebstrap`)")?;
    if !out.status.success() {
        let _ = fs::remove_dir_all(&scratch);
        bail!(
            "mmdebstrap {SUITE} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    settle(&scratch)?;
    fs::rename(&scratch, &dir)
        .with_context(|| format!("moving the root fs to {}", dir.display()))?;
    retire_others(&parent, &name);
    println!(
        "==> ok ({:.0}s): {}",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(dir)
}

/// What a booted test container must not do on its own.
fn settle(root: &Path) -> Result<()> {
    // mmdebstrap copies the host's hostname-less state; an empty
    // machine-id makes systemd generate one at every boot, which is what a
    // throwaway container wants (a fixed one would be shared by every
    // container made from the cache).
    let write = |rel: &str, text: &str| -> Result<()> {
        let path = root.join(rel);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    write("etc/machine-id", "")?;
    write("etc/hostname", "storage-host\n")?;
    // The storage host needs no timers waking it (apt, man-db, logrotate
    // run by the tests when they want them).
    for timer in [
        "apt-daily.timer",
        "apt-daily-upgrade.timer",
        "man-db.timer",
        "fstrim.timer",
    ] {
        let link = root
            .join("etc/systemd/system/timers.target.wants")
            .join(timer);
        let _ = fs::remove_file(link);
    }
    Ok(())
}

/// Removes root file systems built from another package list (each is
/// ~500 MiB) and scratch directories of interrupted builds.
fn retire_others(parent: &Path, keep: &str) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy() != keep {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn hex12(bytes: &[u8]) -> String {
    bytes.iter().take(6).map(|b| format!("{b:02x}")).collect()
}
