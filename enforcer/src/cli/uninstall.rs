//! `enforcer uninstall`: detach every program and remove every pinned map.
//! The only thing that stops enforcement (DESIGN.md, "Enforcement outlives
//! the agent").

use super::PinDirArg;
use crate::datapath;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub pins: PinDirArg,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Strict: removing enforcement goes by a config that is valid, never
    // by paths guessed around an error in it.
    let pin_dir = match args.pins.pin_dir.clone() {
        Some(p) => p,
        None => args.pins.config.load()?.pin_dir,
    };
    let report = datapath::uninstall(&pin_dir)?;
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
