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
    let pin_dir = args.pins.resolve()?;
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
