//! `enforcer geoip inspect|lookup|diff`: look at databases the way the
//! agent reads them (offline: no kernel, no agent).

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use clap::Subcommand;

use super::ConfigArg;

#[derive(Debug, Subcommand)]
pub enum GeoipCommand {
    /// Load databases and print their type, schema, hash and prefix counts.
    Inspect {
        /// .mmdb, CSV, geofeed or cloud range files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        read_as: super::ReadAsArg,
        /// One JSON object per file with `-o json`.
        #[command(flatten)]
        output: super::OutputArg,
    },
    /// Locate addresses in layered databases (the first that locates wins).
    Lookup {
        /// Addresses to locate.
        #[arg(required = true)]
        addresses: Vec<IpAddr>,
        /// Databases to layer, in priority order (default: the config's sources).
        #[arg(long = "source", short = 's')]
        sources: Vec<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// What NEW changes against OLD: address space moving between
    /// countries and, with --config, between allowed and refused.
    Diff(super::geoip_diff::DiffArgs),
}

/// Per-country prefix counts of a loaded table, after aggregation.
fn by_country(loaded: &geoip::Loaded) -> BTreeMap<String, (usize, usize)> {
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (_, c) in loaded.table.v4.prefixes() {
        counts.entry(c.to_string()).or_default().0 += 1;
    }
    for (_, c) in loaded.table.v6.prefixes() {
        counts.entry(c.to_string()).or_default().1 += 1;
    }
    counts
}

fn ratio(raw: usize, aggregated: usize) -> f64 {
    if aggregated == 0 {
        0.0
    } else {
        raw as f64 / aggregated as f64
    }
}

fn inspect(path: &std::path::Path, options: geoip::Options, json: bool) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let loaded = geoip::Source::open_with(path, options)?.load()?;
    let seconds = started.elapsed().as_secs_f64();
    let (info, stats) = (&loaded.info, &loaded.stats);
    let countries = by_country(&loaded);
    let built = info.build_epoch.map(|e| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(e))
            .to_string()
    });
    let (schema, ip_version) = match info.format {
        geoip::Format::Mmdb {
            schema, ip_version, ..
        } => (format!("{schema:?}"), Some(ip_version)),
        // Text formats have no record schema.
        _ => ("-".to_owned(), None),
    };
    if json {
        let v = serde_json::json!({
            "path": path,
            "kind": info.format.label(),
            "format": format!("{:?}", info.format),
            "anycast": stats.anycast,
            "warnings": loaded.warnings,
            "schema": schema,
            "ip_version": ip_version,
            "type": info.database_type,
            "build_epoch": info.build_epoch,
            "built": built,
            "sha256": info.sha256,
            "networks": { "ipv4": stats.raw_v4, "ipv6": stats.raw_v6, "unlocated": stats.unlocated },
            "prefixes": { "ipv4": stats.aggregated_v4, "ipv6": stats.aggregated_v6 },
            "aggregation_ratio": {
                "ipv4": ratio(stats.raw_v4, stats.aggregated_v4),
                "ipv6": ratio(stats.raw_v6, stats.aggregated_v6),
            },
            "countries": countries.iter().map(|(c, (v4, v6))| (c.clone(), serde_json::json!({"ipv4": v4, "ipv6": v6}))).collect::<serde_json::Map<_, _>>(),
            "load_seconds": seconds,
        });
        println!("{v}");
        return Ok(());
    }
    println!("{}", path.display());
    println!("  kind:      {}", info.format.label());
    println!(
        "  schema:    {schema}{}",
        ip_version
            .map(|v| format!(" (IPv{v} tree)"))
            .unwrap_or_default()
    );
    println!(
        "  type:      {}",
        info.database_type.as_deref().unwrap_or("-")
    );
    if let (Some(b), Some(e)) = (&built, info.build_epoch) {
        println!("  built:     {b} (epoch {e})");
    }
    if stats.anycast > 0 {
        println!(
            "  anycast:   {} networks in the anycast class (XA)",
            stats.anycast
        );
    }
    for w in &loaded.warnings {
        println!("  warning:   {w}");
    }
    println!("  sha256:    {}", info.sha256);
    println!(
        "  networks:  {} IPv4 + {} IPv6 with a country, {} without",
        stats.raw_v4, stats.raw_v6, stats.unlocated
    );
    println!(
        "  prefixes:  {} IPv4 + {} IPv6 after aggregation (ratio {:.2} and {:.2})",
        stats.aggregated_v4,
        stats.aggregated_v6,
        ratio(stats.raw_v4, stats.aggregated_v4),
        ratio(stats.raw_v6, stats.aggregated_v6)
    );
    println!(
        "  countries: {} (prefixes IPv4/IPv6, most first)",
        countries.len()
    );
    let mut sorted: Vec<_> = countries.iter().collect();
    sorted.sort_by(|a, b| (b.1.0 + b.1.1).cmp(&(a.1.0 + a.1.1)).then(a.0.cmp(b.0)));
    for chunk in sorted.chunks(6) {
        let line: Vec<String> = chunk
            .iter()
            .map(|(c, (v4, v6))| format!("{c} {v4}/{v6}"))
            .collect();
        println!("    {}", line.join("  "));
    }
    println!("  load time: {seconds:.2}s");
    Ok(())
}

pub fn run(cmd: GeoipCommand) -> anyhow::Result<()> {
    match cmd {
        GeoipCommand::Inspect {
            files,
            read_as,
            output,
        } => {
            for path in files {
                inspect(&path, read_as.options(), output.json())?;
            }
            Ok(())
        }
        GeoipCommand::Diff(args) => super::geoip_diff::run(args),
        GeoipCommand::Lookup {
            addresses,
            sources,
            config,
        } => {
            let sources = if sources.is_empty() {
                config.load()?.sources
            } else {
                sources.into_iter().map(geoip::SourceSpec::path).collect()
            };
            let mut layers = Vec::new();
            for spec in &sources {
                layers.push((spec.path.clone(), spec.load()?.table));
            }
            for ip in addresses {
                let hit = layers
                    .iter()
                    .find_map(|(path, table)| table.lookup(ip).map(|(net, c)| (path, net, c)));
                match hit {
                    Some((path, net, c)) => println!("{ip}\t{c}\t{net}\t{}", path.display()),
                    None => println!("{ip}\tunknown\t-\t-"),
                }
            }
            Ok(())
        }
    }
}
