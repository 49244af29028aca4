//! `enforcer run`: the agent (see [`crate::agent`]).

use super::ConfigArg;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArg,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::agent::run(args.config.config)
}
