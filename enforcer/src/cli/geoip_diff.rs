//! `enforcer geoip diff OLD NEW [--config FILE]`: what a new version of the
//! GeoIP data changes, before it goes live (offline: no kernel, no agent).
//!
//! The figures come from [`geoip::GeoTable::country_change`] (an exact sweep
//! over both tables). With `--config`, every `(from, to)` country pair is
//! put through the same approval table the agent writes into the kernel
//! ([`crate::policy::approval_table`], [`crate::policy::approves`]), so a
//! pair whose verdict differs moves its whole address space between
//! allowed and refused. Exceptions (`allow`/`deny`), site networks and the
//! built-in ranges are not applied: they decide before GeoIP and do not
//! change between OLD and NEW, so the figures include address space they
//! would decide anyway (an upper bound for those ranges).
//!
//! With `--config`, it also says whether the agent's reload guard
//! (`geoip.max_flip`, [`crate::flip`]) would hold NEW arriving while OLD is
//! in force.
//!
//! OLD may be the agent's baseline of the data in force
//! (`<run_dir>/geoip-baseline.json`, [`crate::baseline`]): after a restart
//! held new data, the file that was in force may be gone, and the baseline
//! is what the agent compared with.
//!
//! IPv4 is counted in addresses (JSON numbers); IPv6 in 128-bit addresses,
//! as decimal strings in JSON (they do not fit a JSON number exactly), with
//! the /64 equivalent beside them for reading; the text output shows IPv6
//! in /64s.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use enforcer_common::{Mode, Outcome};
use geoip::{CountryCode, FamilyChange, Move};
use serde_json::{Value, json};

use crate::{
    baseline,
    config::Config,
    flip::{Flip, PolicyMoves, count_json, total},
    paths,
    policy::approval_table,
};

/// The arguments of `enforcer geoip diff`.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The database in force (or the older one): .mmdb or CSV, or the
    /// agent's baseline of the data in force (`<run_dir>/geoip-baseline.json`).
    pub old: PathBuf,
    /// The candidate database: .mmdb or CSV.
    pub new: PathBuf,
    /// Also report the moves between allowed and refused under this
    /// config's approved countries and unknown policy.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// How many of the largest moves the text output lists (JSON lists all).
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// How both files are read (a geofeed must be named).
    #[command(flatten)]
    pub read_as: super::ReadAsArg,
    #[command(flatten)]
    pub output: super::OutputArg,
}

/// A count for people: IPv4 addresses, IPv6 /64s.
fn count_text(v6: bool, n: u128) -> String {
    if v6 {
        let slash64 = n as f64 / (1u128 << 64) as f64;
        if n == 0 {
            "0 /64s".to_owned()
        } else if slash64 < 0.01 {
            format!("{n} addresses (<0.01 /64)")
        } else if slash64 >= 100.0 {
            format!("{slash64:.0} /64s")
        } else {
            format!("{slash64:.2} /64s")
        }
    } else {
        format!("{n} addresses")
    }
}

fn name(c: Option<CountryCode>) -> String {
    c.map_or_else(|| "unlocated".to_owned(), |c| c.to_string())
}

fn code_json(c: Option<CountryCode>) -> Value {
    c.map_or(Value::Null, |c| Value::String(c.to_string()))
}

fn moves_json(v6: bool, moves: &[Move]) -> Value {
    Value::Array(
        moves
            .iter()
            .map(|m| {
                json!({
                    "from": code_json(m.from),
                    "to": code_json(m.to),
                    "addresses": count_json(v6, m.addresses),
                })
            })
            .collect(),
    )
}

fn family_json(v6: bool, c: &FamilyChange, policy: Option<&PolicyMoves>) -> Value {
    let mut v = json!({
        "changed": count_json(v6, c.changed),
        "between_countries": count_json(v6, c.between_countries()),
        "located_to_unlocated": count_json(v6, c.located_to_unlocated()),
        "unlocated_to_located": count_json(v6, c.unlocated_to_located()),
        "prefixes": {
            "old": c.old_prefixes,
            "new": c.new_prefixes,
            "old_involved": c.old_prefixes_involved,
            "new_involved": c.new_prefixes_involved,
        },
        "moves": moves_json(v6, &c.moves),
    });
    if v6 {
        v["changed_slash64"] = json!(c.changed as f64 / (1u128 << 64) as f64);
    }
    if let Some(p) = policy {
        v["policy"] = json!({
            "allowed_to_refused": count_json(v6, total(&p.allowed_to_refused)),
            "refused_to_allowed": count_json(v6, total(&p.refused_to_allowed)),
            "allowed_to_refused_moves": moves_json(v6, &p.allowed_to_refused),
            "refused_to_allowed_moves": moves_json(v6, &p.refused_to_allowed),
        });
    }
    v
}

fn print_moves(v6: bool, moves: &[Move], top: usize) {
    for m in moves.iter().take(top) {
        println!(
            "      {:>9} -> {:<9} {}",
            name(m.from),
            name(m.to),
            count_text(v6, m.addresses)
        );
    }
    if moves.len() > top {
        println!("      ... and {} smaller moves", moves.len() - top);
    }
}

fn print_family(
    label: &str,
    v6: bool,
    c: &FamilyChange,
    policy: Option<(&PolicyMoves, &str)>,
    top: usize,
) {
    println!("{label}:");
    println!(
        "  changed country:       {} ({} between countries, {} located -> unlocated, {} unlocated -> located)",
        count_text(v6, c.changed),
        count_text(v6, c.between_countries()),
        count_text(v6, c.located_to_unlocated()),
        count_text(v6, c.unlocated_to_located()),
    );
    println!(
        "  prefixes involved:     {} of {} in NEW ({} of {} in OLD)",
        c.new_prefixes_involved, c.new_prefixes, c.old_prefixes_involved, c.old_prefixes
    );
    if !c.moves.is_empty() {
        println!("  largest moves:");
        print_moves(v6, &c.moves, top);
    }
    if let Some((p, refused)) = policy {
        println!(
            "  allowed -> {refused}:  {}",
            count_text(v6, total(&p.allowed_to_refused))
        );
        print_moves(v6, &p.allowed_to_refused, top);
        println!(
            "  {refused} -> allowed:  {}",
            count_text(v6, total(&p.refused_to_allowed))
        );
        print_moves(v6, &p.refused_to_allowed, top);
    }
}

fn load(path: &Path, options: geoip::Options) -> anyhow::Result<geoip::Loaded> {
    let name = path.file_name().and_then(|n| n.to_str());
    if name == Some(paths::BASELINE_MANIFEST_NAME) || name == Some(paths::BASELINE_TABLE_NAME) {
        return load_baseline(path);
    }
    // GeoipError names the file; the caller's context says which side.
    Ok(geoip::Source::open_with(path, options)?.load()?)
}

/// The agent's baseline (by its manifest or table), as one source: the
/// layered table of every source that was in force, identified by the
/// table's SHA-256.
fn load_baseline(path: &Path) -> anyhow::Result<geoip::Loaded> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let b = baseline::read(dir)?.ok_or_else(|| {
        anyhow::anyhow!(
            "{}: no baseline manifest (the agent writes it after each apply)",
            baseline::manifest_path(dir).display()
        )
    })?;
    Ok(geoip::Loaded {
        warnings: Vec::new(),
        stats: geoip::Stats::default(),
        info: geoip::SourceInfo {
            path: baseline::table_path(dir),
            // Not read from a source file: the snapshot is exact, like a
            // CSV's rows (no tree, no aliases detected).
            format: geoip::Format::Csv,
            database_type: Some("egress-enforcer baseline".to_owned()),
            build_epoch: None,
            sha256: b.manifest.table_sha256,
        },
        table: b.geo,
    })
}

pub fn run(args: DiffArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(p) => Some(Config::load(p)?),
        None => None,
    };
    let old = load(&args.old, args.read_as.options()).context("reading OLD")?;
    let new = load(&args.new, args.read_as.options()).context("reading NEW")?;
    let change = old.table.country_change(&new.table);
    let approval = config.as_ref().map(approval_table);
    let policy = approval.as_deref().map(|a| {
        (
            PolicyMoves::of(&change.v4, a),
            PolicyMoves::of(&change.v6, a),
        )
    });
    // What the agent's reload guard (geoip.max_flip) would do with NEW
    // arriving while OLD is in force: the agent's own computation (its
    // streaming sweep), not the figures above, so that a test of this
    // output checks the agent's code.
    let guard = config
        .as_ref()
        .zip(approval.as_deref())
        .map(|(c, a)| Flip::compute(&old.table, &new.table, a, &c.max_flip));
    // What the agent calls a refused destination depends on its mode.
    let refused = match config.as_ref().map(|c| c.mode) {
        Some(Mode::Observe) => Outcome::WouldDeny.label(),
        _ => Outcome::Denied.label(),
    };
    let source = |path: &Path, l: &geoip::Loaded| json!({"path": path, "sha256": l.info.sha256, "build_epoch": l.info.build_epoch});
    if args.output.json() {
        let mut v = json!({
            "old": source(&args.old, &old),
            "new": source(&args.new, &new),
            "units": {"ipv4": "addresses", "ipv6": "addresses (128-bit, decimal strings)"},
            "ipv4": family_json(false, &change.v4, policy.as_ref().map(|p| &p.0)),
            "ipv6": family_json(true, &change.v6, policy.as_ref().map(|p| &p.1)),
        });
        if let (Some(c), Some(path)) = (&config, &args.config) {
            v["policy"] = json!({
                "config": path,
                "approved": c.approved.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "unknown": c.unknown.label(),
                "allowed_label": Outcome::Allowed.label(),
                "refused_label": refused,
                "exceptions_applied": false,
            });
        }
        if let Some(g) = &guard {
            v["reload_guard"] = json!({ "would_hold": g.exceeds(), "flip": g.json() });
        }
        println!("{v}");
        return Ok(());
    }
    println!("OLD {} ({})", args.old.display(), old.info.sha256);
    println!("NEW {} ({})", args.new.display(), new.info.sha256);
    if let Some(path) = &args.config {
        println!(
            "policy of {} (approved countries and unknown policy; exceptions and sites not applied)",
            path.display()
        );
    }
    print_family(
        "IPv4",
        false,
        &change.v4,
        policy.as_ref().map(|p| (&p.0, refused)),
        args.top,
    );
    print_family(
        "IPv6",
        true,
        &change.v6,
        policy.as_ref().map(|p| (&p.1, refused)),
        args.top,
    );
    if let Some(g) = &guard {
        println!(
            "reload guard (geoip.max_flip): {}: {}",
            if g.exceeds() {
                "an automatic reload would be HELD (apply with `enforcer reload --accept-change`)"
            } else {
                "within the bound, a reload applies it"
            },
            g.summary()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_exact_in_json_and_readable_in_text() {
        assert_eq!(count_json(false, 1 << 32), json!(4294967296u64));
        assert_eq!(
            count_json(true, u128::MAX),
            json!("340282366920938463463374607431768211455")
        );
        assert_eq!(count_text(true, 0), "0 /64s");
        assert_eq!(
            count_text(true, 1 << 32),
            "4294967296 addresses (<0.01 /64)"
        );
        assert_eq!(count_text(true, 3 << 63), "1.50 /64s");
        assert_eq!(count_text(true, 1000 << 64), "1000 /64s");
        assert_eq!(count_text(false, 256), "256 addresses");
    }
}
