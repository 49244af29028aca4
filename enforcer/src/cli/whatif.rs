//! `enforcer whatif --config CANDIDATE [--events FILE]... [--audit FILE]...
//! [--sample FILE]... [--current CONFIG]`: which recorded destinations a candidate config (or
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

/// Said in an answer without `--sample`: events exist only for refused
/// decisions.
const NOT_COVERED: &str = "allowed traffic is not covered: the agent records events only for \
refused and would-refuse decisions, so destinations allowed today that the candidate would \
refuse are not in the input (only those --current approves among the recorded ones are); \
give the agent's allowed sample (--sample, events.allowed_file) to cover them";

/// Said in an answer with `--sample`: the approved side is a bounded
/// sample.
fn sampled_note() -> String {
    format!(
        "allowed traffic is sampled, not complete: the kernel keeps at most {} allowed or exempt \
destinations at a time (least recently decided evicted first), updated only when a destination \
is decided rather than answered from the per-CPU verdict cache, and the agent appends them to the \
sample file every {} s, so a destination used rarely can be missing",
        enforcer_common::ALLOWED_SAMPLE_CAPACITY,
        crate::allowed_sample::INTERVAL.as_secs()
    )
}

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
    /// The agent's sample of allowed destinations (`events.allowed_file`,
    /// JSON lines): destinations approved before; may be repeated.
    #[arg(long, value_name = "FILE")]
    pub sample: Vec<PathBuf>,
    /// Candidate GeoIP data: decide with these sources (in priority
    /// order) instead of the candidate config's `geoip.sources`; may be
    /// repeated. `--config` may then be the config in force.
    #[arg(long, value_name = "FILE")]
    pub source: Vec<PathBuf>,
    /// How the `--source` files are read (a geofeed must be named).
    #[command(flatten)]
    pub read_as: super::ReadAsArg,
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

fn decider(
    path: &Path,
    what: &str,
    sources: &[PathBuf],
    options: geoip::Options,
) -> anyhow::Result<Decider> {
    let mut config = Config::load(path).with_context(|| format!("{what} config"))?;
    if !sources.is_empty() {
        config.sources = sources
            .iter()
            .map(|p| geoip::SourceSpec {
                path: p.clone(),
                options,
            })
            .collect();
    }
    Decider::new(config).with_context(|| format!("{what} config {}: GeoIP sources", path.display()))
}

fn scope_label(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("(not recorded)")
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.events.is_empty() && args.audit.is_empty() && args.sample.is_empty() {
        anyhow::bail!("nothing to replay: give --events FILE, --audit FILE and/or --sample FILE");
    }
    // The configs first: a bad one fails before any input is read.
    let candidate = decider(
        &args.config,
        "candidate",
        &args.source,
        args.read_as.options(),
    )?;
    let current = args
        .current
        .as_deref()
        .map(|p| decider(p, "current", &[], geoip::Options::default()))
        .transpose()?;
    let mut rec = Recording::default();
    for p in &args.events {
        rec.read(p, InputKind::Events)?;
    }
    for p in &args.audit {
        rec.read(p, InputKind::Audit)?;
    }
    for p in &args.sample {
        rec.read(p, InputKind::Sample)?;
    }
    let note = if rec.sampled {
        sampled_note()
    } else {
        NOT_COVERED.to_owned()
    };
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
                "sample": args.sample.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            },
            "totals": {
                "events": rec.events,
                "sample_lines": rec.sample_lines,
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
            // false, or "sampled" (then `sample_bound` names the bound).
            "allowed_traffic_covered": if rec.sampled { json!("sampled") } else { json!(false) },
            "sample_bound": rec.sampled.then_some(enforcer_common::ALLOWED_SAMPLE_CAPACITY),
            "note": note,
        });
        writeln!(out, "{v}")?;
        return Ok(());
    }
    text(&mut out, &args, &rec, &report, &before, &note)?;
    Ok(())
}

fn text(
    out: &mut impl io::Write,
    args: &Args,
    rec: &Recording,
    r: &Report,
    before: &str,
    note: &str,
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
        "seen        {} destinations ({} events{})",
        r.destinations_seen,
        rec.events,
        if rec.sampled {
            format!(", {} allowed-sample lines", rec.sample_lines)
        } else {
            String::new()
        }
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
    writeln!(out, "note        {note}")?;
    if r.groups.is_empty() {
        writeln!(out, "\nno recorded destination changes verdict")?;
        return Ok(());
    }
    writeln!(out, "\nchanges by country and scope (largest first)")?;
    writeln!(
        out,
        "  {:<22} {:<8} {:>12} {:>8} {:>8}  scope",
        "change", "country", "destinations", "events", "sampled"
    )?;
    for g in &r.groups {
        writeln!(
            out,
            "  {:<22} {:<8} {:>12} {:>8} {:>8}  {}",
            format!("{} -> {}", g.from.label(), g.to.label()),
            g.country,
            g.destinations,
            g.events,
            g.sampled,
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
            "      scope {}; {} event(s), {} sampled decision(s) via {}; recorded {} ({}){}; seen {} .. {}",
            scope_label(&row.scope),
            row.events,
            row.sampled,
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
