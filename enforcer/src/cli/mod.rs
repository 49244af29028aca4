//! The command line: one module per verb.

mod audit;
mod config_check;
mod geoip_cmd;
mod run;
mod status;
mod uninstall;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};

/// egress-enforcer: refuse or record outbound connections to destinations in
/// jurisdictions that are not approved.
#[derive(Debug, Parser)]
#[command(name = "enforcer", version, propagate_version = true)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "ENFORCER_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax, e.g. `info` or `enforcer=debug`).
    #[arg(long, global = true, default_value = "info", env = "ENFORCER_LOG")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: load the policy into the kernel, attach, serve metrics.
    /// SIGHUP reloads; SIGTERM/SIGINT stop the agent and leave enforcement in place.
    Run(run::Args),
    /// Show what is installed: mode, active slot, links, counters.
    Status(status::Args),
    /// Detach every program and remove every pinned map: the only way
    /// enforcement stops.
    Uninstall(uninstall::Args),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// GeoIP database tools.
    #[command(subcommand)]
    Geoip(geoip_cmd::GeoipCommand),
    /// Audit log tools.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a config and its GeoIP sources without touching the kernel.
    Check(config_check::Args),
}

/// The `--config` argument shared by the verbs.
#[derive(Clone, Debug, clap::Args)]
pub struct ConfigArg {
    /// Config file (TOML). Without it, the embedded default is used.
    #[arg(long, short = 'c', env = "ENFORCER_CONFIG")]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    pub fn load(&self) -> anyhow::Result<enforcer_config::Config> {
        Ok(enforcer_config::Config::load_or_default(
            self.config.as_deref(),
        )?)
    }
}

use crate::config as enforcer_config;

/// Where an installed datapath is pinned: `--pin-dir`, else the config's
/// `agent.pin_dir` (shared by the verbs that read or remove pins).
#[derive(Clone, Debug, clap::Args)]
pub struct PinDirArg {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Pin directory (default: the config's agent.pin_dir).
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
}

impl PinDirArg {
    pub fn resolve(&self) -> anyhow::Result<PathBuf> {
        match &self.pin_dir {
            Some(p) => Ok(p.clone()),
            None => Ok(self.config.load()?.pin_dir),
        }
    }
}

fn init_logging(format: LogFormat, filter: &str) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("warning: bad log filter {filter:?} ({e}); using \"info\"");
        EnvFilter::new("info")
    });
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Parses the command line, runs the verb, and turns an error into a
/// message on stderr and exit code 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format;
    init_logging(format, &cli.log_level);
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Status(args) => status::run(args),
        Command::Uninstall(args) => uninstall::run(args),
        Command::Config(ConfigCommand::Check(args)) => config_check::run(args),
        Command::Geoip(cmd) => geoip_cmd::run(cmd),
        Command::Audit(cmd) => audit::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line either way: JSON for log pipelines, plain for people.
            match format {
                LogFormat::Json => tracing::error!(error = format!("{e:#}"), "failed"),
                LogFormat::Text => eprintln!("error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}
