//! `enforcer check IP...`: the verdict the kernel gives each address, and
//! why (matched prefix, source, country, policy, mode), read from the live
//! pinned maps by [`crate::datapath::explain`]. Asks the running agent
//! over its control socket when one answers (then members of the admin
//! group may ask, and the answer names the GeoIP databases in force);
//! otherwise, or with `--pin-dir`, reads the pins itself (root).

use std::{
    io::{self, Write as _},
    net::IpAddr,
    path::PathBuf,
};

use anyhow::Context as _;
use enforcer_common::RuleKind;

use super::{OutputArg, PinDirArg};
use crate::{
    control,
    datapath::explain::{CgroupAncestry, Explainer, Explanation, ModeFrom},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Addresses to explain (IPv4, IPv6; `::ffff:a.b.c.d` is decided as IPv4).
    #[arg(required = true, value_name = "IP")]
    pub addresses: Vec<IpAddr>,
    #[command(flatten)]
    pub pins: PinDirArg,
    /// Explain for a process in this cgroup (relative to the cgroup2 mount,
    /// or absolute), so a per-cgroup mode override applies.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Control socket of the running agent (default: the config's
    /// control.socket).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Text blocks, or one JSON object per line.
    #[command(flatten)]
    pub output: OutputArg,
}

/// Asks the running agent (which adds the GeoIP databases in force, and
/// serves the admin group, not only root). None when no agent answers.
fn through_agent(args: &Args) -> anyhow::Result<Option<(Vec<Explanation>, serde_json::Value)>> {
    let socket = match &args.socket {
        Some(s) => s.clone(),
        None => args.pins.config.locations().socket,
    };
    let request = control::Request::Check {
        addresses: args.addresses.clone(),
        cgroup: args.cgroup.clone(),
    };
    match control::client::call(&socket, &request) {
        Ok(v) => {
            let answers: Vec<Explanation> = serde_json::from_value(v["explanations"].clone())
                .context("the agent's check reply does not parse")?;
            Ok(Some((answers, v["geoip_databases"].clone())))
        }
        Err(control::ControlError::Connect { .. }) if args.socket.is_none() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // With --pin-dir the pins are read directly; otherwise the agent is
    // asked first, and the pins are the fallback when none runs.
    let from_agent = if args.pins.pin_dir.is_some() {
        None
    } else {
        through_agent(&args)?
    };
    let (answers, databases) = match from_agent {
        Some(a) => a,
        None => {
            let pin_dir = args.pins.resolve();
            let explainer = Explainer::open(&pin_dir)?;
            let cgroup = args
                .cgroup
                .as_deref()
                .map(CgroupAncestry::of_path)
                .transpose()?;
            let mut answers = Vec::with_capacity(args.addresses.len());
            for ip in &args.addresses {
                answers.push(
                    explainer
                        .explain_in(*ip, cgroup.as_ref())
                        .with_context(|| format!("explaining {ip}"))?,
                );
            }
            (answers, serde_json::Value::Null)
        }
    };
    let mut out = io::stdout().lock();
    for (i, e) in answers.iter().enumerate() {
        match args.output.json() {
            true => {
                let mut v = serde_json::to_value(e)?;
                if !databases.is_null() {
                    v["geoip_databases"] = databases.clone();
                }
                writeln!(out, "{v}")?
            }
            false => {
                if i > 0 {
                    writeln!(out)?;
                }
                write!(out, "{}", text(e))?;
                if e.source == enforcer_common::Source::Geoip {
                    // The one that located it when the agent said which;
                    // otherwise every database in force.
                    let shown = databases.as_array().into_iter().flatten().filter(|d| {
                        e.located_by.as_ref().is_none_or(|by| {
                            d["path"].as_str() == Some(&by.path.display().to_string())
                        })
                    });
                    for d in shown {
                        writeln!(
                            out,
                            "  {:<8} {} (sha256 {}{})",
                            "database",
                            d["path"].as_str().unwrap_or("-"),
                            d["sha256"].as_str().unwrap_or("-"),
                            d["build_epoch"]
                                .as_u64()
                                .map(|e| format!(
                                    ", built {}",
                                    humantime::format_rfc3339_seconds(
                                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(e)
                                    )
                                ))
                                .unwrap_or_default()
                        )?;
                        if d["too_old"].as_bool() == Some(true) {
                            writeln!(
                                out,
                                "  {:<8} TOO OLD: built {} days ago, geoip.max_age is {} days",
                                "",
                                d["age_seconds"].as_u64().unwrap_or(0) / 86_400,
                                d["max_age_seconds"].as_u64().unwrap_or(0) / 86_400
                            )?;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// One block per address.
fn text(e: &Explanation) -> String {
    let mut lines = vec![e.address.to_string()];
    let mut line = |k: &str, v: String| lines.push(format!("  {k:<8} {v}"));
    if e.decided_as != e.address {
        line("decided", format!("as {} (IPv4-mapped)", e.decided_as));
    }
    let prefix = e
        .prefix
        .map_or_else(|| "none".to_owned(), |p| p.to_string());
    line("prefix", prefix);
    let detail = match &e.rule {
        Some(r) => match r.kind {
            RuleKind::Deny => format!("deny[{}]", r.index),
            RuleKind::Allow => format!("allow[{}]", r.index),
            RuleKind::Site => format!("site[{}]", r.index),
            RuleKind::Builtin => r.builtin.clone().unwrap_or_else(|| "built-in".into()),
        },
        None if e.prefix.is_some() => "GeoIP table of the active slot".to_owned(),
        None => "no exception, site network or GeoIP entry".to_owned(),
    };
    line("source", format!("{} ({detail})", e.source.label()));
    let country = match (e.country, e.geoip_prefix) {
        (Some(c), Some(p)) if Some(p) != e.prefix => format!("{c} (GeoIP {p})"),
        (Some(c), _) if c.is_anycast() => {
            format!("{c} (anycast class: served from many countries)")
        }
        (Some(c), _) => c.to_string(),
        (None, _) if e.approved.is_none() => "none (not geolocated)".to_owned(),
        (None, _) => "unknown".to_owned(),
    };
    line("country", country);
    if let Some(by) = &e.located_by {
        line("located", format!("by {} ({})", by.path.display(), by.kind));
    }
    let policy = match e.approved {
        None => "not consulted (exempt)",
        Some(true) => "approved",
        Some(false) if e.rule.as_ref().is_some_and(|r| r.kind == RuleKind::Deny) => {
            "not approved (deny exception)"
        }
        Some(false) => "not approved",
    };
    line("policy", policy.to_owned());
    let mode_from = match &e.mode_from {
        ModeFrom::Global if e.overrides > 0 && e.cgroup.is_none() => format!(
            "global; {} per-cgroup override(s) exist, see --cgroup",
            e.overrides
        ),
        ModeFrom::Global => "global".to_owned(),
        ModeFrom::Override {
            cgroup_id, path, ..
        } => match path {
            Some(p) => format!("override on {} (id {cgroup_id})", p.display()),
            None => format!("override on cgroup id {cgroup_id}"),
        },
    };
    line("mode", format!("{} ({mode_from})", e.mode.label()));
    line("verdict", e.outcome.label().to_owned());
    line("slot", format!("{}, generation {}", e.slot, e.generation));
    lines.join("\n") + "\n"
}
