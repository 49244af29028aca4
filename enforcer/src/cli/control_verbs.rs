//! `enforcer mode`, `enforcer reload`, `enforcer events`: requests to the
//! running agent over its control socket.

use std::path::PathBuf;

use anyhow::Context as _;

use super::ConfigArg;
use crate::control::{self, ModeName, Request, client};

/// Where the control socket is: `--socket`, else the config's
/// `control.socket`.
#[derive(Clone, Debug, clap::Args)]
pub struct SocketArg {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Control socket (default: the config's control.socket).
    #[arg(long)]
    pub socket: Option<PathBuf>,
}

impl SocketArg {
    /// `--socket`, else the config's, read even from a config with an
    /// error elsewhere: `reload` is how a fixed config is loaded.
    pub fn resolve(&self) -> PathBuf {
        match &self.socket {
            Some(s) => s.clone(),
            None => self.config.locations().socket,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ModeArgs {
    /// The mode to switch to.
    #[arg(value_enum)]
    pub mode: ModeName,
    /// Only this cgroup (and its children): a per-cgroup override, inside
    /// the scope; path relative to the cgroup2 mount or absolute.
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// Why: recorded with your uid in the audit log and the agent's log.
    #[arg(long, required = true)]
    pub reason: String,
    #[command(flatten)]
    pub socket: SocketArg,
}

pub fn mode(args: ModeArgs) -> anyhow::Result<()> {
    let socket = args.socket.resolve();
    let result = client::call(
        &socket,
        &Request::Mode {
            mode: args.mode,
            cgroup: args.cgroup.clone(),
            reason: args.reason,
        },
    )
    .context("changing the mode")?;
    let from = result["from"].as_str().unwrap_or("-");
    let to = result["to"].as_str().unwrap_or("-");
    let generation = &result["generation"];
    match &args.cgroup {
        Some(c) => println!(
            "cgroup {}: {from} -> {to} (policy generation {generation})",
            c.display()
        ),
        None => println!("mode: {from} -> {to} (policy generation {generation})"),
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct ReloadArgs {
    /// Apply new GeoIP data even when it flips more address space between
    /// allowed and refused than geoip.max_flip allows (a held reload).
    /// Review it first with `enforcer status` and `enforcer geoip diff`;
    /// the data applied is what is on disk now, and the accept is audited.
    #[arg(long)]
    pub accept_change: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

pub fn reload(args: ReloadArgs) -> anyhow::Result<()> {
    let socket = args.socket.resolve();
    let result = client::call(
        &socket,
        &Request::Reload {
            accept_change: args.accept_change,
        },
    )
    .context("reloading")?;
    println!(
        "reloaded: policy generation {}",
        result["generation"].as_u64().unwrap_or(0)
    );
    if let Some(flip) = result.get("accepted") {
        println!(
            "accepted: IPv4 {} addresses flipped, IPv6 {} addresses flipped (audited)",
            flip["ipv4"]["flipped"], flip["ipv6"]["flipped"]
        );
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Keep printing new events until interrupted.
    #[arg(long, short = 'f')]
    pub follow: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

pub fn events(args: EventsArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    let socket = args.socket.resolve();
    let (reply, mut conn) = client::send(
        &socket,
        &Request::Events {
            follow: args.follow,
        },
    )?;
    if !reply.ok {
        return Err(control::ControlError::Refused(
            reply.error.unwrap_or_else(|| "no reason given".into()),
        )
        .into());
    }
    if args.follow {
        conn.no_timeout()?;
    }
    let mut out = std::io::stdout().lock();
    while let Some(line) = conn.next_line()? {
        // A closed stdout (`| head`) ends the command quietly.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    Ok(())
}
