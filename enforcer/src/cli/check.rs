//! `enforcer check IP...`: the verdict the kernel gives each address, and
//! why (matched prefix, source, country, policy, mode), read from the live
//! pinned maps by [`crate::datapath::explain`]. Needs root (the maps are
//! root's); needs no running agent.

use std::{
    io::{self, Write as _},
    net::IpAddr,
    path::PathBuf,
};

use anyhow::Context as _;
use clap::ValueEnum;
use enforcer_common::RuleKind;

use super::PinDirArg;
use crate::datapath::explain::{CgroupAncestry, Explainer, Explanation, ModeFrom};

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
    /// Output format: text blocks, or one JSON object per line.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let pin_dir = args.pins.resolve()?;
    let explainer = Explainer::open(&pin_dir)?;
    let cgroup = args
        .cgroup
        .as_deref()
        .map(CgroupAncestry::of_path)
        .transpose()?;
    let mut out = io::stdout().lock();
    for (i, ip) in args.addresses.iter().enumerate() {
        let e = explainer
            .explain_in(*ip, cgroup.as_ref())
            .with_context(|| format!("explaining {ip}"))?;
        match args.output {
            Output::Json => writeln!(out, "{}", serde_json::to_string(&e)?)?,
            Output::Text => {
                if i > 0 {
                    writeln!(out)?;
                }
                write!(out, "{}", text(&e))?;
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
        (Some(c), _) => c.to_string(),
        (None, _) if e.approved.is_none() => "none (not geolocated)".to_owned(),
        (None, _) => "unknown".to_owned(),
    };
    line("country", country);
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
