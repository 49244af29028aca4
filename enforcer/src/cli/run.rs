//! `enforcer run`: the agent.
//!
//! Order matters for "bad input never changes what is in force": the config
//! is validated, every GeoIP source loaded and compiled, every scope cgroup
//! opened and the metrics port bound before the kernel is touched. Only
//! then is the datapath loaded (or adopted), the inactive slot written,
//! verified and flipped, and the programs attached.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal};

use super::ConfigArg;
use crate::{
    config::Config,
    datapath::{Datapath, counters::CounterReader},
    metrics::{self, AgentStatus, EnforcerCollector, SharedStatus},
    policy::CompiledPolicy,
    scope,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArg,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(agent(args.config))
}

/// Everything a policy load needs, prepared without touching the kernel.
struct Prepared {
    config: Config,
    policy: CompiledPolicy,
    targets: Vec<scope::CgroupTarget>,
}

fn prepare(config_arg: &ConfigArg) -> anyhow::Result<Prepared> {
    let config = config_arg.load()?;
    let policy = CompiledPolicy::compile(&config)?;
    for s in &policy.sources {
        tracing::info!(
            source = %s.info.path.display(),
            sha256 = %s.info.sha256,
            database_type = s.info.database_type.as_deref().unwrap_or("-"),
            raw_v4 = s.stats.raw_v4,
            raw_v6 = s.stats.raw_v6,
            aggregated_v4 = s.stats.aggregated_v4,
            aggregated_v6 = s.stats.aggregated_v6,
            unlocated = s.stats.unlocated,
            seconds = format!("{:.2}", s.load_seconds),
            "GeoIP source loaded"
        );
    }
    let targets = scope::resolve(&config.scope)?;
    Ok(Prepared {
        config,
        policy,
        targets,
    })
}

/// Writes, flips and attaches a prepared policy, all or nothing.
///
/// On a fresh install the slot is written before any program is attached,
/// so no program ever decides with an empty slot. On an adopted datapath or
/// a reload the new links are staged first (attached next to the running
/// ones), then the slot is written and flipped, then the staged links
/// replace the old ones; a failure before the flip detaches the staged
/// links and leaves the running policy and scope as they were.
fn apply(
    dp: &mut Datapath,
    p: &Prepared,
    status: &SharedStatus,
    fresh: bool,
) -> anyhow::Result<()> {
    let staged = if fresh {
        None
    } else {
        Some(
            dp.stage(&p.targets)
                .context("attaching to the scope cgroups")?,
        )
    };
    let report = dp
        .install(&p.policy)
        .context("writing the policy into the kernel")?;
    tracing::info!(
        slot = report.slot,
        geo_v4 = report.geo_v4.total,
        geo_v6 = report.geo_v6.total,
        geo_written = report.geo_v4.upserted + report.geo_v6.upserted,
        geo_removed = report.geo_v4.removed + report.geo_v6.removed,
        rules = report.rules_v4.total + report.rules_v6.total,
        seconds = format!("{:.2}", report.seconds),
        "policy slot written, verified and made active"
    );
    let generation = dp.set_mode(p.config.mode).context("setting the mode")?;
    let staged = match staged {
        Some(s) => s,
        None => dp
            .stage(&p.targets)
            .context("attaching to the scope cgroups")?,
    };
    let attached = dp.commit(staged).context("pinning the links")?;
    tracing::info!(
        links = attached.attached.len(),
        kept = attached.kept.len(),
        replaced = attached.replaced,
        detached = attached.detached.len(),
        cgroups = ?p.targets.iter().map(|t| t.path.display().to_string()).collect::<Vec<_>>(),
        "attached"
    );
    let mut s = status.write().unwrap_or_else(|e| e.into_inner());
    s.mode = Some(p.config.mode);
    s.generation = generation;
    s.prefixes_v4 = p.policy.geo.v4.len();
    s.prefixes_v6 = p.policy.geo.v6.len();
    s.approved_countries = p.config.approved.len();
    s.policy_loads_ok += 1;
    s.last_load_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    Ok(())
}

async fn agent(config_arg: ConfigArg) -> anyhow::Result<()> {
    let prepared = {
        let arg = config_arg.clone();
        tokio::task::spawn_blocking(move || prepare(&arg))
            .await
            .context("preparing the policy")??
    };
    let listener = metrics::bind(prepared.config.metrics_listen)
        .await
        .with_context(|| {
            format!(
                "binding the metrics listener on {}",
                prepared.config.metrics_listen
            )
        })?;
    let pin_dir: PathBuf = prepared.config.pin_dir.clone();

    let status: SharedStatus = Arc::new(RwLock::new(AgentStatus::default()));
    let mut dp = tokio::task::block_in_place(|| -> anyhow::Result<Datapath> {
        let mut dp = Datapath::load(&pin_dir).context("loading the datapath")?;
        if dp.adopted() {
            tracing::info!(pin_dir = %pin_dir.display(), "adopting the pinned datapath of an earlier agent");
        }
        let fresh = !dp.adopted();
        if let Err(e) = apply(&mut dp, &prepared, &status, fresh) {
            dp.discard_if_new();
            return Err(e);
        }
        Ok(dp)
    })?;
    tracing::info!(
        mode = prepared.config.mode.label(),
        approved = ?prepared.config.approved_items,
        unknown = prepared.config.unknown.label(),
        metrics = %prepared.config.metrics_listen,
        pin_dir = %pin_dir.display(),
        "enforcer running"
    );

    let counters = CounterReader::open(&pin_dir).context("opening the pinned counters")?;
    let registry = Arc::new(metrics::registry(EnforcerCollector::new(
        counters,
        Arc::clone(&status),
        pin_dir.clone(),
    )));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(metrics::serve(listener, registry, async {
        let _ = stop_rx.await;
    }));

    let _ = sd_notify::notify(&[NotifyState::Ready]);

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(&config_arg, &prepared.config, &mut dp, &status).await,
        }
    }

    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    let _ = stop_tx.send(());
    let _ = server.await;
    tracing::info!(pin_dir = %pin_dir.display(), "agent stopped; enforcement stays in place (`enforcer uninstall` removes it)");
    Ok(())
}

/// SIGHUP: prepare and apply the config again; on any error the policy in
/// force stays.
async fn reload(
    config_arg: &ConfigArg,
    running: &Config,
    dp: &mut Datapath,
    status: &SharedStatus,
) {
    let _ = sd_notify::notify(&[NotifyState::Reloading]);
    tracing::info!("reloading");
    let arg = config_arg.clone();
    let prepared = match tokio::task::spawn_blocking(move || prepare(&arg)).await {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(anyhow::anyhow!("reload task failed: {e}")),
    };
    let result = prepared.and_then(|p| {
        if p.config.pin_dir != running.pin_dir || p.config.metrics_listen != running.metrics_listen
        {
            tracing::warn!(
                "agent.pin_dir and metrics.listen changes take effect at the next start"
            );
        }
        tokio::task::block_in_place(|| apply(dp, &p, status, false))
    });
    match result {
        Ok(()) => tracing::info!("reloaded"),
        Err(e) => {
            status
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .policy_loads_failed += 1;
            tracing::error!(
                error = format!("{e:#}"),
                "reload failed; the previous policy stays in force"
            );
        }
    }
    let _ = sd_notify::notify(&[NotifyState::Ready]);
}
