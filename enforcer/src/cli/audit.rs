//! `enforcer audit verify`: check an audit log's chain offline and print
//! what it states. Needs no privileges and touches no kernel.

use std::{fmt::Write as _, path::PathBuf};

use clap::{Subcommand, ValueEnum};

use crate::audit::{self, HeadCheck, Summary};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify a log's hash chain and print a summary; fails naming the first
    /// broken line (FILE:LINE: what is wrong).
    Verify(VerifyArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The audit log (JSON lines); several files of a rotated log are
    /// verified as one chain, in the order given (oldest first, the file
    /// the agent writes last).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Head file to check the log's end against (default: the last FILE's
    /// FILE.head when it exists).
    #[arg(long, conflicts_with_all = ["no_head", "expect_seq"])]
    pub head: Option<PathBuf>,
    /// Check the end against this seq (recorded elsewhere) instead of a
    /// head file; needs --expect-hash.
    #[arg(long, requires = "expect_hash", conflicts_with = "no_head")]
    pub expect_seq: Option<u64>,
    /// The hash of the record at --expect-seq.
    #[arg(long, requires = "expect_seq")]
    pub expect_hash: Option<String>,
    /// Ignore FILE.head: the tail is then reported as unanchored.
    #[arg(long)]
    pub no_head: bool,
    /// Summary format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

pub fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify(args) => verify(args),
    }
}

fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let check = match (args.head, args.expect_seq, args.expect_hash) {
        (Some(h), _, _) => HeadCheck::File(h),
        (None, Some(seq), Some(hash)) => HeadCheck::Expect { seq, hash },
        _ if args.no_head => HeadCheck::None,
        _ => HeadCheck::Auto,
    };
    // The error names FILE:LINE; nothing to add.
    let summary = audit::verify_files(&args.files, check)?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&summary)?),
        Output::Text => print!("{}", text(&summary)),
    }
    Ok(())
}

fn counts<'a>(m: impl IntoIterator<Item = (&'a String, &'a u64)>) -> String {
    let parts: Vec<String> = m.into_iter().map(|(k, v)| format!("{k} {v}")).collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

/// The summary for people.
pub fn text(s: &Summary) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{}: intact, {} records", s.file, s.records);
    match (&s.first_time, &s.last_time, s.span_seconds) {
        (Some(a), Some(b), Some(span)) => {
            let d = std::time::Duration::try_from_secs_f64(span.abs().round()).unwrap_or_default();
            let sign = if span < 0.0 { "-" } else { "" };
            let _ = writeln!(
                o,
                "span:        {a} .. {b} ({sign}{})",
                humantime::format_duration(d)
            );
        }
        _ => {
            let _ = writeln!(o, "span:        - (empty log)");
        }
    }
    if s.files.len() > 1 {
        for f in &s.files {
            let _ = writeln!(
                o,
                "  {}: {} records (seq {}..{})",
                f.file, f.records, f.first_seq, f.last_seq
            );
        }
    }
    let _ = writeln!(o, "tail:        {}", s.tail);
    let last_seq = s
        .files
        .iter()
        .rev()
        .find(|f| f.records > 0)
        .map_or(0, |f| f.last_seq);
    let _ = writeln!(o, "last hash:   {} (seq {last_seq})", s.last_hash);
    let _ = writeln!(o, "kinds:       {}", counts(&s.kinds));
    let _ = writeln!(
        o,
        "agent:       {} starts ({} adopted a pinned datapath), {} stops",
        s.agent.starts, s.agent.adopted, s.agent.stops
    );
    let _ = writeln!(
        o,
        "policy:      {} loads ok, {} failed",
        s.policy_loads.ok, s.policy_loads.failed
    );
    for f in &s.policy_loads.failures {
        let _ = writeln!(
            o,
            "  line {} {} ({}): {}",
            f.line,
            f.time,
            f.trigger,
            f.error.as_deref().unwrap_or("-")
        );
    }
    let _ = writeln!(
        o,
        "events:      {} ({}); by country: {}",
        s.events.total,
        counts(&s.events.by_verdict),
        counts(&s.events.by_country)
    );
    let _ = writeln!(
        o,
        "suppressed:  rate_limit {}, ring_full {}",
        s.suppressed.rate_limit, s.suppressed.ring_full
    );
    let _ = writeln!(o, "mode timeline ({} changes):", s.mode_changes);
    for m in &s.mode_timeline {
        let _ = writeln!(
            o,
            "  line {} {}  {} -> {}  {}  uid {}{}  reason {:?}",
            m.line,
            m.time,
            m.from,
            m.to,
            m.cgroup.as_deref().unwrap_or("(global)"),
            m.uid,
            m.gid.map(|g| format!(" gid {g}")).unwrap_or_default(),
            m.reason
        );
    }
    if s.mode_changes > s.mode_timeline.len() as u64 {
        let _ = writeln!(
            o,
            "  ... {} more",
            s.mode_changes - s.mode_timeline.len() as u64
        );
    }
    match &s.last_checkpoint {
        Some(c) => {
            let _ = writeln!(
                o,
                "checkpoint:  line {} {}: mode {}, generation {}, policy {}, databases {}",
                c.line,
                c.time,
                c.mode,
                c.generation,
                c.policy_sha256.as_deref().unwrap_or("-"),
                if c.databases.is_empty() {
                    "-".to_owned()
                } else {
                    c.databases.join(" ")
                }
            );
        }
        None => {
            let _ = writeln!(o, "checkpoint:  none");
        }
    }
    let _ = writeln!(
        o,
        "gaps:        {} ({} records dropped while the log could not be written)",
        s.gaps.records, s.gaps.dropped
    );
    for c in &s.continued {
        let _ = writeln!(
            o,
            "continued:   {}:{} from {} (seq {}, {}{})",
            c.file,
            c.line,
            c.previous_file.as_deref().unwrap_or("an earlier file"),
            c.previous_seq,
            c.cause,
            if c.checked {
                ", link checked"
            } else {
                ", link NOT checked"
            }
        );
    }
    if !s.warnings.is_empty() {
        let _ = writeln!(o, "warnings:");
        for w in &s.warnings {
            let _ = writeln!(o, "  {w}");
        }
        if s.warnings_omitted > 0 {
            let _ = writeln!(o, "  ... {} more", s.warnings_omitted);
        }
    }
    o
}
