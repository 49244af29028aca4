//! `enforcer config check`: validate a config and load its GeoIP sources,
//! without touching the kernel.

use anyhow::Context as _;

use super::ConfigArg;
use crate::{config::Scope, policy::CompiledPolicy, scope};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArg,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let config = args.config.load()?;
    config.check_default_database()?;
    // As `run` checks them: the admin group must exist.
    crate::control::peer::Access::resolve(config.control.admin_group.as_deref())
        .map_err(|e| anyhow::anyhow!("{}: {e}", config.origin))?;
    config
        .audit
        .signer()
        .with_context(|| format!("{}: audit.signing_key", config.origin))?;
    let policy = CompiledPolicy::compile(&config)?;
    let targets = scope::resolve(&config.scope)?;
    let interfaces = scope::resolve_interfaces(&config.interfaces)
        .with_context(|| format!("{}: scope.interfaces", config.origin))?;

    println!("config:   {}", config.origin);
    println!("mode:     {}", config.mode.label());
    println!(
        "approved: {} ({} countries: {})",
        config.approved_items.join(", "),
        config.approved.len(),
        config
            .approved
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("unknown:  {}", config.unknown.label());
    println!("anycast:  {}", config.anycast.label());
    for (i, s) in policy.sources.iter().enumerate() {
        println!(
            "geoip[{i}]: {} ({}; {} + {} networks with a country, {} without; {} + {} prefixes after aggregation; {:.2}s)",
            s.info.path.display(),
            match &s.info.database_type {
                Some(t) => format!("{}, {t}", s.info.format.label()),
                None => s.info.format.label().to_owned(),
            },
            s.stats.raw_v4,
            s.stats.raw_v6,
            s.stats.unlocated,
            s.stats.aggregated_v4,
            s.stats.aggregated_v6,
            s.load_seconds
        );
        if s.stats.anycast > 0 {
            println!(
                "          {} prefixes in the anycast class (XA, decided by anycast = {:?})",
                s.stats.anycast,
                config.anycast.label()
            );
        }
        for w in &s.warnings {
            println!("          warning: {w}");
        }
    }
    let (v4, v6) = policy.geo_len();
    println!("layered:  {v4} IPv4 + {v6} IPv6 prefixes");
    println!(
        "guard:    geoip.max_flip ipv4 {}, ipv6 {} (a reload flipping more is held)",
        config.max_flip.ipv4, config.max_flip.ipv6
    );
    match &config.scope {
        Scope::HostWide => {
            if let Some(root) = targets.present.first() {
                println!("scope:    host-wide ({})", root.path.display());
            }
        }
        Scope::Cgroups(_) => {
            for t in &targets.present {
                println!("scope:    {} (cgroup id {})", t.path.display(), t.id);
            }
        }
    }
    for path in &targets.absent {
        println!(
            "scope:    {} (does not exist yet: waiting; covered when it is created)",
            path.display()
        );
        eprintln!(
            "warning: scope cgroup {} does not exist; the agent covers it the moment it is created",
            path.display()
        );
    }
    let (present, absent) = interfaces;
    if present.is_empty() && absent.is_empty() {
        println!("forward:  no interfaces (forwarded traffic is not decided)");
    }
    for i in &present {
        println!(
            "forward:  {} (ifindex {}, tcx egress, global mode)",
            i.name, i.ifindex
        );
    }
    for name in &absent {
        println!("forward:  {name} (does not exist yet: waiting; covered when it is created)");
        eprintln!(
            "warning: scope interface {name:?} does not exist; the agent covers it the moment it is created"
        );
    }
    println!("metrics:  http://{}/metrics", config.metrics_listen);
    println!("pin dir:  {}", config.pin_dir.display());
    println!("run dir:  {}", config.run_dir.display());
    println!("control:  {}", config.control.socket.display());
    match &config.audit.file {
        Some(f) => println!("audit:    {}", f.display()),
        None => println!("audit:    off"),
    }
    println!(
        "policy:   sha256 {}",
        crate::policy::policy_sha256(&config, &policy)
    );
    println!("ok");
    Ok(())
}
