//! `enforcer whatif --config CANDIDATE [--events FILE]... [--audit FILE]...
//! [--current CONFIG]`: which recorded destinations a candidate config (or
//! its databases) would move between approved and refused, offline. The
//! work is in [`crate::whatif`]; this prints it.

use std::{
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use serde_json::json;

use crate::{
    config::Config,
    whatif::{Decider, InputKind, Recording, Report},
};

/// Said in every answer: events exist only for refused decisions.
const NOT_COVERED: &str = "allowed traffic is not covered: the agent records events only for \
refused and would-refuse decisions, so destinations allowed today that the candidate would \
refuse are not in the input (only those --current approves among the recorded ones are)";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The candidate config (its GeoIP sources are the candidate data).
    #[arg(long, short = 'c', value_name = "CANDIDATE")]
    pub config: PathBuf,
    /// An events file of the agent (JSON lines); may be repeated.
    #[arg(long, value_name = "FILE")]
    pub events: Vec<PathBuf>,
    /// An audit log of the agent (its `event` records); may be repeated.
    #[arg(long, value_name = "FILE")]
    pub audit: Vec<PathBuf>,
    /// Candidate GeoIP data: decide with these sources (in priority
    /// order) instead of the candidate config's `geoip.sources`; may be
    /// repeated. `--config` may then be the config in force.
    #[arg(long, value_name = "FILE")]
    pub source: Vec<PathBuf>,
    /// Decide the "before" side under this config instead of taking the
    /// verdict recorded with each event (for a recording made under an
    /// older policy).
    #[arg(long, value_name = "CONFIG")]
    pub current: Option<PathBuf>,
    /// How many changed destinations the text output lists (JSON lists
    /// every destination).
    #[arg(long, default_value_t = 50)]
    pub top: usize,
    #[command(flatten)]
    pub output: super::OutputArg,
}

fn decider(path: &Path, what: &str, sources: &[PathBuf]) -> anyhow::Result<Decider> {
    let mut config = Config::load(path).with_context(|| format!("{what} config"))?;
    if !sources.is_empty() {
        config.sources = sources
            .iter()
            .cloned()
            .map(geoip::SourceSpec::path)
            .collect();
    }
    Decider::new(config).with_context(|| format!("{what} config {}: GeoIP sources", path.display()))
}

fn scope_label(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("(not recorded)")
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.events.is_empty() && args.audit.is_empty() {
        anyhow::bail!("nothing to replay: give --events FILE and/or --audit FILE");
    }
    // The configs first: a bad one fails before any input is read.
    let candidate = decider(&args.config, "candidate", &args.source)?;
    let current = args
        .current
        .as_deref()
        .map(|p| decider(p, "current", &[]))
        .transpose()?;
    let mut rec = Recording::default();
    for p in &args.events {
        rec.read(p, InputKind::Events)?;
    }
    for p in &args.audit {
        rec.read(p, InputKind::Audit)?;
    }
    if args.output.json() {
        // The text lists them itself; JSON on stdout is for a script, so
        // a person watching the terminal hears of them on stderr.
        for u in &rec.unreadable {
            tracing::warn!("{}:{}: skipped: {}", u.file.display(), u.line, u.error);
        }
    }
    let report = Report::build(&rec, &candidate, current.as_ref());
    let candidate_sources: Vec<String> = candidate
        .config
        .sources
        .iter()
        .map(|s| s.path.display().to_string())
        .collect();
    let before = match &args.current {
        Some(p) => format!("config {}", p.display()),
        None => "recorded verdicts".to_owned(),
    };
    let mut out = io::stdout().lock();
    if args.output.json() {
        let v = json!({
            "candidate": args.config.display().to_string(),
            "candidate_sources": candidate_sources,
            "before": before,
            "inputs": {
                "events": args.events.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
                "audit": args.audit.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            },
            "totals": {
                "events": rec.events,
                "destinations_seen": report.destinations_seen,
                "changed": report.changed,
                "approved_to_refused": report.approved_to_refused,
                "refused_to_approved": report.refused_to_approved,
                "unchanged": report.unchanged,
                "unreadable_lines": rec.unreadable.len(),
            },
            "mode": {
                "recorded": report.recorded_modes,
                "candidate": report.candidate_mode,
                "refused_destinations_changing_mode": report.mode_changes,
            },
            "groups": report.groups,
            "changed": report.rows.iter().filter(|r| r.changed()).collect::<Vec<_>>(),
            "unchanged": report.rows.iter().filter(|r| !r.changed()).collect::<Vec<_>>(),
            "unreadable": rec.unreadable,
            "allowed_traffic_covered": false,
            "note": NOT_COVERED,
        });
        writeln!(out, "{v}")?;
        return Ok(());
    }
    text(&mut out, &args, &rec, &report, &before)?;
    Ok(())
}

fn text(
    out: &mut impl io::Write,
    args: &Args,
    rec: &Recording,
    r: &Report,
    before: &str,
) -> io::Result<()> {
    writeln!(out, "candidate   {}", args.config.display())?;
    if !args.source.is_empty() {
        writeln!(
            out,
            "  sources   {}",
            args.source
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )?;
    }
    writeln!(out, "before      {before}")?;
    writeln!(
        out,
        "seen        {} destinations ({} events)",
        r.destinations_seen, rec.events
    )?;
    writeln!(
        out,
        "changed     {} ({} refused -> approved, {} approved -> refused)",
        r.changed, r.refused_to_approved, r.approved_to_refused
    )?;
    writeln!(out, "unchanged   {}", r.unchanged)?;
    writeln!(
        out,
        "mode        recorded {}, candidate {}; {} destination(s) stay refused but as {}",
        if r.recorded_modes.is_empty() {
            "-".to_owned()
        } else {
            r.recorded_modes.join("/")
        },
        r.candidate_mode,
        r.mode_changes,
        if r.candidate_mode == "enforce" {
            "denied instead of would_deny"
        } else {
            "would_deny instead of denied"
        }
    )?;
    writeln!(out, "unreadable  {} line(s)", rec.unreadable.len())?;
    for u in &rec.unreadable {
        writeln!(out, "  {}:{}: {}", u.file.display(), u.line, u.error)?;
    }
    writeln!(out, "note        {NOT_COVERED}")?;
    if r.groups.is_empty() {
        writeln!(out, "\nno recorded destination changes verdict")?;
        return Ok(());
    }
    writeln!(out, "\nchanges by country and scope (largest first)")?;
    writeln!(
        out,
        "  {:<22} {:<8} {:>12} {:>8}  scope",
        "change", "country", "destinations", "events"
    )?;
    for g in &r.groups {
        writeln!(
            out,
            "  {:<22} {:<8} {:>12} {:>8}  {}",
            format!("{} -> {}", g.from.label(), g.to.label()),
            g.country,
            g.destinations,
            g.events,
            scope_label(&g.scope)
        )?;
    }
    let changed: Vec<_> = r.rows.iter().filter(|r| r.changed()).collect();
    writeln!(
        out,
        "\nchanged destinations ({} of {})",
        changed.len().min(args.top),
        changed.len()
    )?;
    for row in changed.iter().take(args.top) {
        let recorded = row
            .recorded
            .iter()
            .map(|(v, n)| format!("{v} x{n}"))
            .collect::<Vec<_>>()
            .join(", ");
        writeln!(
            out,
            "  {}  {} -> {} ({} under the candidate, {} by {})",
            row.dst,
            row.before.label(),
            row.after.label(),
            row.candidate_verdict,
            row.candidate_country,
            row.candidate_source
        )?;
        writeln!(
            out,
            "      scope {}; {} event(s) via {}; recorded {} ({}){}; seen {} .. {}",
            scope_label(&row.scope),
            row.events,
            if row.hooks.is_empty() {
                "-".to_owned()
            } else {
                row.hooks.join(",")
            },
            recorded,
            if row.recorded_country.is_empty() {
                "-".to_owned()
            } else {
                row.recorded_country.join(",")
            },
            row.current_verdict
                .map(|v| format!("; {v} under --current"))
                .unwrap_or_default(),
            row.first_seen.as_deref().unwrap_or("-"),
            row.last_seen.as_deref().unwrap_or("-"),
        )?;
    }
    Ok(())
}
