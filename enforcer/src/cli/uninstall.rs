//! `enforcer uninstall`: detach every program and remove every pinned map.
//! The only thing that stops enforcement (docs/architecture.md,
//! "Enforcement outlives the agent"), so it says why: `--reason` is
//! required, and the audit log gets a record of the caller and the reason
//! before anything is removed (no record, no removal). The runtime mode
//! changes made with `enforcer mode` go too: a later fresh start must come
//! back in the mode its config says. So does the reload guard's baseline
//! of the data in force ([`crate::baseline`]): nothing is in force any more.

use std::path::Path;

use anyhow::Context as _;

use super::PinDirArg;
use crate::{
    audit::{AuditLog, Kind, Uninstall},
    baseline, datapath, paths,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub pins: PinDirArg,
    /// Why enforcement is being removed: recorded with your uid in the
    /// audit log before anything is removed.
    #[arg(long, required = true)]
    pub reason: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let reason = args.reason.trim().to_owned();
    if reason.is_empty() {
        anyhow::bail!("--reason is empty: say why enforcement is being removed");
    }
    // Strict: removing enforcement goes by a config that is valid, never
    // by paths guessed around an error in it.
    let config = args.pins.config.load()?;
    let pin_dir = args.pins.pin_dir.clone().unwrap_or(config.pin_dir.clone());
    let audit_file = config.audit.file.clone();
    let record = || -> Result<(), String> {
        let Some(file) = &audit_file else {
            return Ok(());
        };
        audit_uninstall(file, &pin_dir, &reason)
            .map_err(|e| format!("cannot write the audit record to {}: {e:#}", file.display()))
    };
    let report = datapath::uninstall_after(&pin_dir, record)?;
    // Pins and the runtime modes go together: the modes were made for the
    // datapath that is gone.
    let modes = config.run_dir.join(paths::RUNTIME_MODE_NAME);
    match std::fs::remove_file(&modes) {
        Ok(()) => println!("removed the runtime mode changes ({})", modes.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("removing {}", modes.display()));
        }
    }
    // The baseline describes the data in force: with the pins gone there
    // is none.
    if baseline::remove(&config.run_dir)? {
        println!(
            "removed the reload guard's baseline ({})",
            baseline::manifest_path(&config.run_dir).display()
        );
    }
    if report.found {
        println!(
            "removed {} links and {} maps under {}; enforcement is off",
            report.links,
            report.maps,
            pin_dir.display()
        );
        if !report.foreign.is_empty() {
            println!(
                "left alone, not ours: {} (the directory stays)",
                report.foreign.join(" ")
            );
        }
    } else {
        println!("nothing installed under {}", pin_dir.display());
    }
    Ok(())
}

/// Appends the `uninstall` record (caller, pin directory, reason) to the
/// audit log and flushes it.
fn audit_uninstall(file: &Path, pin_dir: &Path, reason: &str) -> anyhow::Result<()> {
    let mut log = AuditLog::open(file)?;
    log.append_flush(Kind::Uninstall(Uninstall {
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        pid: std::process::id(),
        pin_dir: pin_dir.display().to_string(),
        reason: reason.to_owned(),
    }))?;
    Ok(())
}
