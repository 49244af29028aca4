//! `enforcer audit verify`: check an audit log's chain (and its signed
//! checkpoints) offline and print what it states; `enforcer audit keygen`:
//! make the checkpoint signing key. Need no privileges and touch no kernel.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};

use crate::audit::{self, HeadCheck, SignatureCheck, SignedCheckpoint, Summary, VerifierKey};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify a log's hash chain and print a summary; fails naming the first
    /// broken line (FILE:LINE: what is wrong). With --key, every signed
    /// checkpoint too; with --checkpoint, that the log holds what a signed
    /// checkpoint obtained earlier covers.
    Verify(VerifyArgs),
    /// Make an Ed25519 key pair for signing checkpoints (C2SP signed-note
    /// text forms): the private key (mode 0600, never overwritten) for
    /// `audit.signing_key`, the public key for the auditor.
    Keygen(KeygenArgs),
    /// A report for the auditor over one or more hosts' logs: the share of
    /// time each scope was enforced, observed or not covered, the mode and
    /// policy timeline, refusals by country, scope and day, every
    /// checkpoint's signature, the chain; one self-contained HTML page
    /// (or JSON). Exits 1 when an input is bad (the report says how).
    Report(ReportArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Html,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Audit logs, of one or several hosts, a rotated log as several files
    /// (the host is the origin of the files' signed checkpoints, else the
    /// file name without a rotation suffix).
    #[arg(required = true, value_name = "LOG")]
    pub files: Vec<PathBuf>,
    /// The public key (file or text): every signed checkpoint is checked.
    #[arg(long, value_name = "PUBKEY")]
    pub key: Option<String>,
    /// Write the report here instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = ReportFormat::Html)]
    pub format: ReportFormat,
}

#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// The key's name (shown in every signature line), e.g.
    /// `db1.example.org/egress-enforcer`: no spaces, no '+'.
    #[arg(long)]
    pub name: String,
    /// Write DIR/audit.key (private) and DIR/audit.pub (public).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["private", "public"], required_unless_present = "private")]
    pub out: Option<PathBuf>,
    /// The private key file to create.
    #[arg(long, value_name = "FILE", requires = "public")]
    pub private: Option<PathBuf>,
    /// The public key file to create.
    #[arg(long, value_name = "FILE", requires = "private")]
    pub public: Option<PathBuf>,
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
    /// The public key (a file holding `<name>+<hash>+<key>`, or that text):
    /// every checkpoint's signed note must verify against it and commit to
    /// the records before it.
    #[arg(long, value_name = "PUBKEY")]
    pub key: Option<String>,
    /// A signed checkpoint obtained earlier (from the collector): the log
    /// must hold the records it covers, unchanged.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub checkpoint: Option<PathBuf>,
    /// The collector's copy of the log, to name the first record that
    /// differs when the log does not match --checkpoint (repeat for a
    /// rotated copy, oldest first).
    #[arg(long, value_name = "LOG", requires = "checkpoint")]
    pub reference: Vec<PathBuf>,
    /// Summary format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

pub fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify(args) => verify(args),
        AuditCommand::Keygen(args) => keygen(args),
        AuditCommand::Report(args) => report(args),
    }
}

fn report(args: ReportArgs) -> anyhow::Result<()> {
    let key = args.key.as_deref().map(verifier_key).transpose()?;
    let r = audit::report::build(&args.files, key.as_ref());
    let text = match args.format {
        ReportFormat::Json => format!("{}\n", serde_json::to_string_pretty(&r)?),
        ReportFormat::Html => audit::report_html::render(&r),
    };
    match &args.out {
        Some(p) => std::fs::write(p, &text)
            .with_context(|| format!("{}: writing the report", p.display()))?,
        None => {
            use std::io::Write as _;
            std::io::stdout()
                .write_all(text.as_bytes())
                .context("writing the report")?;
        }
    }
    if !r.ok {
        let bad: Vec<String> = r
            .hosts
            .iter()
            .filter(|h| !h.ok)
            .map(|h| format!("{}: {}", h.host, h.problems.join("; ")))
            .collect();
        anyhow::bail!(
            "the input is not intact (the report says so): {}",
            bad.join(" | ")
        );
    }
    Ok(())
}

fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    let (private, public) = match (args.out, args.private, args.public) {
        (Some(dir), _, _) => (dir.join("audit.key"), dir.join("audit.pub")),
        (None, Some(private), Some(public)) => (private, public),
        _ => anyhow::bail!("give --out DIR, or --private FILE and --public FILE"),
    };
    let key = audit::SignerKey::generate(&args.name).context("--name")?;
    let verifier = key.verifier().to_string();
    // The public file first: when it cannot be created nothing is left
    // behind, and a private key never exists without its public half.
    write_public(&public, &verifier)?;
    if let Err(e) = key.write_new(&private) {
        let _ = std::fs::remove_file(&public);
        return Err(e.into());
    }
    println!(
        "private key: {} (mode 0600; set audit.signing_key to it)",
        private.display()
    );
    println!("public key:  {} (give it to the auditor)", public.display());
    println!("{verifier}");
    Ok(())
}

/// Creates the public key file (0644), never replacing one.
fn write_public(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .with_context(|| {
            format!(
                "{}: creating the public key (it must not exist)",
                path.display()
            )
        })?;
    f.write_all(format!("{text}\n").as_bytes())
        .with_context(|| format!("{}: writing the public key", path.display()))
}

/// The verifier key of `--key`: a file holding it, or the key text.
fn verifier_key(arg: &str) -> anyhow::Result<VerifierKey> {
    let path = Path::new(arg);
    if path.exists() {
        return Ok(VerifierKey::load(path)?);
    }
    VerifierKey::parse(arg)
        .with_context(|| format!("--key {arg:?}: neither a file nor a public key"))
}

fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let check = match (args.head, args.expect_seq, args.expect_hash) {
        (Some(h), _, _) => HeadCheck::File(h),
        (None, Some(seq), Some(hash)) => HeadCheck::Expect { seq, hash },
        _ if args.no_head => HeadCheck::None,
        _ => HeadCheck::Auto,
    };
    let signatures = match &args.key {
        None => None,
        Some(k) => {
            let key = verifier_key(k)?;
            let checkpoint = match &args.checkpoint {
                None => None,
                Some(p) => {
                    let note = std::fs::read_to_string(p)
                        .with_context(|| format!("{}: reading the checkpoint", p.display()))?;
                    let cp = SignedCheckpoint::open(&note, &key)
                        .with_context(|| format!("{}: the checkpoint", p.display()))?;
                    Some((cp, p.display().to_string()))
                }
            };
            Some(SignatureCheck {
                key,
                checkpoint,
                reference: args.reference.clone(),
            })
        }
    };
    // The error names FILE:LINE or the record; nothing to add.
    let summary = match audit::verify_signed(&args.files, check, signatures.as_ref()) {
        Ok(s) => s,
        Err(e) => {
            if args.output == Output::Json {
                let answer = serde_json::json!({
                    "intact": false,
                    "problem": e.kind(),
                    "error": e.to_string(),
                    "line": e.line(),
                    "seq": e.seq(),
                });
                println!("{}", serde_json::to_string_pretty(&answer)?);
            }
            return Err(e.into());
        }
    };
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
    if s.reload_guard.held + s.reload_guard.accepted > 0 {
        let _ = writeln!(
            o,
            "reload guard: {} held, {} accepted",
            s.reload_guard.held, s.reload_guard.accepted
        );
        for r in &s.reload_guard.entries {
            let _ = writeln!(
                o,
                "  line {} {}  {}{}  flipped IPv4 {} IPv6 {}  data {}",
                r.line,
                r.time,
                r.event,
                r.uid.map(|u| format!(" by uid {u}")).unwrap_or_default(),
                r.ipv4_flipped,
                r.ipv6_flipped,
                r.databases.join(" ")
            );
        }
    }
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
    let g = &s.signatures;
    let _ = writeln!(
        o,
        "signatures:  checkpoints signed {}, verified {}{}{}",
        g.signed,
        g.verified,
        match &g.key {
            Some(k) => format!(" (key {k})"),
            None => " (no --key: not checked)".to_owned(),
        },
        if g.unsigned > 0 {
            format!("; {} checkpoints unsigned", g.unsigned)
        } else {
            String::new()
        }
    );
    if let Some(c) = &g.checkpoint {
        let _ = writeln!(
            o,
            "against:     {} ({}, {} records, head {}{}): the log holds it unchanged",
            c.source,
            c.origin,
            c.covers,
            c.hash,
            c.time
                .as_deref()
                .map(|t| format!(", {t}"))
                .unwrap_or_default()
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
