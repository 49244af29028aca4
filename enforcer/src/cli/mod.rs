//! The command line: one module per verb.

mod audit;
mod check;
mod config_check;
mod control_verbs;
mod generate;
mod geoip_cmd;
mod geoip_diff;
mod guard;
mod logging;
mod run;
pub(crate) mod status;
mod top;
mod uninstall;
mod whatif;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};

/// egress-enforcer: refuse or record outbound connections to destinations in
/// jurisdictions that are not approved.
#[derive(Debug, Parser)]
#[command(name = "enforcer", version = version(), propagate_version = true)]
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

/// How offline verbs read GeoIP files: the `kind` and `country_field` of
/// a `geoip.sources` table.
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct ReadAsArg {
    /// What the files are: auto (detect a MaxMind DB, a cloud range file
    /// or else CSV), mmdb, csv, geofeed, aws, gcp, azure.
    #[arg(long, default_value = "auto", value_parser = parse_kind)]
    pub kind: geoip::Kind,
    /// For MaxMind-schema databases: which field locates a network,
    /// country or registered_country.
    #[arg(long, default_value = "country", value_parser = parse_country_field)]
    pub country_field: geoip::CountryField,
}

impl ReadAsArg {
    pub fn options(&self) -> geoip::Options {
        geoip::Options {
            kind: self.kind,
            country_field: self.country_field,
        }
    }
}

fn parse_kind(text: &str) -> Result<geoip::Kind, String> {
    geoip::Kind::from_label(text).ok_or_else(|| {
        let known: Vec<&str> = geoip::Kind::ALL.iter().map(|(_, l)| *l).collect();
        format!("unknown kind (expected one of {})", known.join(", "))
    })
}

fn parse_country_field(text: &str) -> Result<geoip::CountryField, String> {
    geoip::CountryField::from_label(text)
        .ok_or_else(|| "expected country or registered_country".to_owned())
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
    /// result (like SIGHUP, but it says whether it worked); --accept-change
    /// applies GeoIP data the reload guard holds.
    Reload(control_verbs::ReloadArgs),
    /// Print the running agent's recent refused/would-refuse events; with
    /// --follow, then each new one.
    Events(control_verbs::EventsArgs),
    /// A live view of the running agent, refreshed every second: decisions
    /// per country and scope, the would-deny and denied destinations with
    /// the process behind them, events, mode, coverage, database age.
    Top(top::Args),
    /// Explain the verdict the kernel gives addresses: matched prefix,
    /// source, country, policy, mode, read from the live maps.
    Check(check::Args),
    /// Replay the destinations recorded in events files or audit logs
    /// against a candidate config and its databases: which would move
    /// between approved and refused, by country and scope (offline).
    Whatif(whatif::Args),
    /// Detach every program and remove every pinned map: the only way
    /// enforcement stops.
    Uninstall(uninstall::Args),
    /// Succeed once a cgroup (default: this process's own) is decided by the
    /// agent's programs on every hook, as the kernel says; for a service's
    /// `ExecStartPre=+`.
    Guard(guard::Args),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// GeoIP database tools.
    #[command(subcommand)]
    Geoip(geoip_cmd::GeoipCommand),
    /// Audit log tools.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Man pages and shell completions from this command line's own
    /// definition (for packaging; hidden from --help).
    #[command(subcommand, hide = true)]
    Generate(generate::GenerateCommand),
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

use crate::config::{self as enforcer_config, Locations};

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
    /// `--pin-dir`, else the config's, read even from a config with an
    /// error elsewhere (see [`Locations`]).
    pub fn resolve(&self) -> PathBuf {
        match &self.pin_dir {
            Some(p) => p.clone(),
            None => self.config.locations().pin_dir,
        }
    }
}

impl ConfigArg {
    /// Where the pins and the control socket are, from the config even
    /// when it has an error elsewhere; that error is logged as a warning.
    pub fn locations(&self) -> Locations {
        let (locations, error) = Locations::of(self.config.as_deref());
        if let Some(e) = error {
            tracing::warn!(
                pin_dir = %locations.pin_dir.display(),
                socket = %locations.socket.display(),
                "the config is not valid ({e}); using the paths it names, or the defaults"
            );
        }
        locations
    }
}

/// `--version`: the package version, the commit it was built from and the
/// datapath layout it loads and adopts (pins of another layout are
/// replaced at start, see `datapath::compat`).
fn version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        format!(
            "{} (commit {}, datapath layout v{})",
            env!("CARGO_PKG_VERSION"),
            env!("ENFORCER_COMMIT"),
            enforcer_common::LAYOUT_VERSION
        )
    })
}

/// An error and its causes on one line, each said once. Many errors (the
/// kernel's through aya, io errors wrapped with a path) repeat their
/// source's text in their own message, and printing the whole chain
/// would say it twice.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
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
    logging::init(format, &cli.log_level);
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Status(args) => status::run(args),
        Command::Mode(args) => control_verbs::mode(args),
        Command::Reload(args) => control_verbs::reload(args),
        Command::Events(args) => control_verbs::events(args),
        Command::Top(args) => top::run(args),
        Command::Check(args) => check::run(args),
        Command::Whatif(args) => whatif::run(args),
        Command::Uninstall(args) => uninstall::run(args),
        Command::Guard(args) => guard::run(args),
        Command::Config(ConfigCommand::Check(args)) => config_check::run(args),
        Command::Geoip(cmd) => geoip_cmd::run(cmd),
        Command::Audit(cmd) => audit::run(cmd),
        Command::Generate(cmd) => generate::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line either way: JSON for log pipelines, plain for people.
            let message = error_chain(e.as_ref());
            match format {
                LogFormat::Json => tracing::error!(error = message, "failed"),
                LogFormat::Text => eprintln!("error: {message}"),
            }
            ExitCode::FAILURE
        }
    }
}
