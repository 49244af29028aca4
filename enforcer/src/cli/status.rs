//! `enforcer status`: what the kernel holds now, read from the pinned maps.

use std::{collections::BTreeMap, fs};

use enforcer_common::{Mode, Outcome};

use super::PinDirArg;
use crate::{
    datapath::{
        self,
        counters::{CounterKind, CounterReader},
    },
    metrics::country_label,
    paths::PinLayout,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub pins: PinDirArg,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let pin_dir = args.pins.resolve()?;
    let words = datapath::config_words(&pin_dir)?;
    let (layout, slot, generation) = (words.layout, words.slot, words.generation);
    let mode = words.mode.map(Mode::label).unwrap_or("invalid");

    let links_dir = PinLayout::new(&pin_dir).links;
    let mut links: Vec<String> = fs::read_dir(&links_dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    links.sort();

    let reader = CounterReader::open(&pin_dir)?;
    let counts = reader.connections()?;
    let mut packets_by_verdict: BTreeMap<&str, u64> = BTreeMap::new();
    for c in reader.read(CounterKind::Packets)? {
        *packets_by_verdict.entry(c.outcome.label()).or_default() += c.value;
    }
    let suppressed = reader.suppressed()?;
    let mut by_verdict: BTreeMap<&str, u64> = BTreeMap::new();
    let mut refused_by_country: BTreeMap<String, u64> = BTreeMap::new();
    for c in &counts {
        *by_verdict.entry(c.outcome.label()).or_default() += c.value;
        if matches!(c.outcome, Outcome::Denied | Outcome::WouldDeny) {
            *refused_by_country
                .entry(country_label(c.country))
                .or_default() += c.value;
        }
    }

    if args.json {
        let v = serde_json::json!({
            "pin_dir": pin_dir,
            "layout": layout,
            "mode": mode,
            "active_slot": slot,
            "generation": generation,
            "links": links,
            "connections": by_verdict,
            "packets": packets_by_verdict,
            "events_suppressed": {
                "rate_limit": suppressed.rate_limit,
                "ring_full": suppressed.ring_full,
            },
            "denied_or_would_deny_by_country": refused_by_country,
        });
        println!("{v}");
        return Ok(());
    }
    println!("pin dir:    {} (layout v{layout})", pin_dir.display());
    println!("mode:       {mode}");
    println!("slot:       {slot} (generation {generation})");
    println!(
        "links:      {}",
        if links.is_empty() {
            "none: nothing is enforced".to_owned()
        } else {
            links.join(" ")
        }
    );
    let line = |counts: &BTreeMap<&str, u64>| {
        if counts.is_empty() {
            "none".to_owned()
        } else {
            counts
                .iter()
                .map(|(v, n)| format!("{v}={n}"))
                .collect::<Vec<_>>()
                .join(" ")
        }
    };
    println!("connections: {}", line(&by_verdict));
    println!("packets:     {}", line(&packets_by_verdict));
    if suppressed != Default::default() {
        println!(
            "events not emitted: rate_limit={} ring_full={}",
            suppressed.rate_limit, suppressed.ring_full
        );
    }
    if !refused_by_country.is_empty() {
        let list: Vec<String> = refused_by_country
            .iter()
            .map(|(c, n)| format!("{c}={n}"))
            .collect();
        println!(
            "connections refused or would refuse, by country: {}",
            list.join(" ")
        );
    }
    Ok(())
}
