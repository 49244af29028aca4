//! `enforcer uninstall`: detach every program and remove every pinned map.
//! The only thing that stops enforcement (DESIGN.md, "Enforcement outlives
//! the agent").

use std::path::PathBuf;

use super::ConfigArg;
use crate::datapath;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Pin directory to clean (default: the config's agent.pin_dir).
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let pin_dir = match args.pin_dir {
        Some(p) => p,
        None => args.config.load()?.pin_dir,
    };
    let report = datapath::uninstall(&pin_dir)?;
    if report.found {
        println!(
            "removed {} links and {} maps under {}; enforcement is off",
            report.links,
            report.maps,
            pin_dir.display()
        );
    } else {
        println!("nothing installed under {}", pin_dir.display());
    }
    Ok(())
}
