//! The command line: one module per verb.

mod audit;
mod check;
mod config_check;
mod control_verbs;
mod geoip_cmd;
mod run;
pub(crate) mod status;
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

/// How a verb prints its answer: `-o text|json` (`--json` is kept as a
/// short form for `-o json`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// The shared output flags.
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct OutputArg {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Same as `-o json`.
    #[arg(long, conflicts_with = "output")]
    pub json: bool,
}

impl OutputArg {
    pub fn json(&self) -> bool {
        self.json || self.output == Output::Json
    }
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
    /// Show what runs and what is installed: mode, scope, databases, slot,
    /// links, counters (from the agent, else from the pins).
    Status(status::Args),
    /// Switch the mode now, globally or for one cgroup, through the running
    /// agent; kept across reloads and restarts until changed again or until
    /// the config value it overrode is edited.
    Mode(control_verbs::ModeArgs),
    /// Reload the config and databases in the running agent and report the
    /// result (like SIGHUP, but it says whether it worked).
    Reload(control_verbs::SocketArg),
    /// Print the running agent's recent refused/would-refuse events; with
    /// --follow, then each new one.
    Events(control_verbs::EventsArgs),
    /// Explain the verdict the kernel gives addresses: matched prefix,
    /// source, country, policy, mode, read from the live maps.
    Check(check::Args),
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
    if !matches!(cli.command, Command::Run(_)) {
        // The one-shot verbs behave like other Unix tools when their output
        // is cut short (`enforcer geoip inspect ... | head`): end quietly
        // on SIGPIPE instead of panicking in println! on EPIPE. Not for the
        // agent, which must outlive a closed stdout.
        // SAFETY: setting a signal's disposition to its default, before
        // any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let format = cli.log_format;
    init_logging(format, &cli.log_level);
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Status(args) => status::run(args),
        Command::Mode(args) => control_verbs::mode(args),
        Command::Reload(args) => control_verbs::reload(args),
        Command::Events(args) => control_verbs::events(args),
        Command::Check(args) => check::run(args),
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
