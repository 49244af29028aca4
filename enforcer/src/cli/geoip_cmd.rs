//! `enforcer geoip inspect|lookup`: look at databases the way the agent
//! reads them.

use std::{net::IpAddr, path::PathBuf};

use clap::Subcommand;

use super::ConfigArg;

#[derive(Debug, Subcommand)]
pub enum GeoipCommand {
    /// Load databases and print their type, schema, hash and prefix counts.
    Inspect {
        /// .mmdb or CSV files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
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
}

pub fn run(cmd: GeoipCommand) -> anyhow::Result<()> {
    match cmd {
        GeoipCommand::Inspect { files } => {
            for path in files {
                let started = std::time::Instant::now();
                let loaded = geoip::Source::open(&path)?.load()?;
                let (info, stats) = (&loaded.info, &loaded.stats);
                println!("{}", path.display());
                println!("  format:    {:?}", info.format);
                println!(
                    "  type:      {}",
                    info.database_type.as_deref().unwrap_or("-")
                );
                if let Some(epoch) = info.build_epoch {
                    println!("  built:     {epoch} (unix time)");
                }
                println!("  sha256:    {}", info.sha256);
                println!(
                    "  networks:  {} IPv4 + {} IPv6 with a country, {} without",
                    stats.raw_v4, stats.raw_v6, stats.unlocated
                );
                println!(
                    "  prefixes:  {} IPv4 + {} IPv6 after aggregation",
                    stats.aggregated_v4, stats.aggregated_v6
                );
                println!("  load time: {:.2}s", started.elapsed().as_secs_f64());
            }
            Ok(())
        }
        GeoipCommand::Lookup {
            addresses,
            sources,
            config,
        } => {
            let sources = if sources.is_empty() {
                config.load()?.sources
            } else {
                sources
            };
            let mut layers = Vec::new();
            for path in &sources {
                layers.push((path.clone(), geoip::Source::open(path)?.load()?.table));
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
