//! `enforcer run`: the agent.
//!
//! Order matters for "bad input never changes what is in force": signal
//! handlers are installed first (a SIGHUP during start-up must not kill the
//! agent); then the config is validated, every GeoIP source loaded and
//! compiled and checked against the maps' capacity, every scope and
//! override cgroup opened, every interface looked up, the events file
//! opened and the metrics port bound, all before the kernel is touched. Only then is the datapath
//! loaded (or adopted), the inactive slot written, verified and flipped,
//! and the programs attached.
//!
//! Once running, the agent takes its orders from signals (SIGHUP reloads,
//! SIGTERM/SIGINT stop) and from the control socket ([`control`]): mode
//! changes and reloads are carried out one at a time by the main loop,
//! which alone holds the datapath.

mod control;

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use enforcer_common::Mode;
use sd_notify::NotifyState;
use tokio::signal::unix::{Signal, SignalKind, signal};

use super::ConfigArg;
use crate::{
    audit::{self, Kind, LoadResult, LoadTrigger, SharedAudit},
    config::{Config, Scope},
    control::peer::PeerCreds,
    control::{peer::Access, server as control_server},
    datapath::{
        self, Datapath,
        counters::{CounterReader, Suppressed},
    },
    events::{self, CgroupNames, EventCounts, EventsHub},
    metrics::{self, AgentStatus, EnforcerCollector, SharedStatus},
    paths,
    policy::CompiledPolicy,
    runtime_mode::RuntimeModes,
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
    interfaces: Vec<scope::InterfaceTarget>,
    access: Access,
}

fn prepare(config_arg: &ConfigArg) -> anyhow::Result<Prepared> {
    let config = config_arg.load()?;
    let policy = CompiledPolicy::compile(&config)?;
    release_free_memory("policy compiled");
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
    datapath::check_capacity(&policy)?;
    let targets = scope::resolve(&config.scope)?;
    // Interface names mean something only in a network namespace: the
    // agent's own, which is the one it attaches in.
    let interfaces = scope::resolve_interfaces(&config.interfaces)
        .with_context(|| format!("{}: scope.interfaces", config.origin))?;
    // Opened now so a missing override cgroup fails here, before the
    // kernel; resolved again with the runtime changes when applied.
    scope::resolve_overrides(&config.scope, &config.overrides)?;
    let access = Access::resolve(config.control.admin_group.as_deref())
        .map_err(|e| anyhow::anyhow!("{}: {e}", config.origin))?;
    events::check_sinks(&config.events).with_context(|| {
        format!(
            "{}: events.file {:?}: cannot open for appending",
            config.origin,
            config
                .events
                .file
                .as_deref()
                .unwrap_or(std::path::Path::new("-"))
        )
    })?;
    Ok(Prepared {
        config,
        policy,
        targets,
        interfaces,
        access,
    })
}

/// The modes to write: see [`effective_modes`].
struct Modes {
    mode: Mode,
    /// Override cgroup ids and modes, for the kernel.
    ids: Vec<(u64, Mode)>,
    /// The same for people: path, mode, `config` or `runtime`.
    shown: Vec<(String, Mode, &'static str)>,
    /// The runtime changes that still apply.
    runtime: RuntimeModes,
}

/// The config's mode and overrides with the runtime changes layered over
/// them, resolved to cgroup ids. Works on a copy of `runtime`, which the
/// caller keeps only if the policy is applied. A runtime override whose
/// cgroup is gone is dropped with a warning (the service was removed); a
/// config override that cannot be resolved fails (bad input).
/// Gives the memory the allocator holds free back to the system, and logs
/// the resident set (debug). Loading a database and building the flat
/// tables free tens of MiB that glibc would otherwise keep resident (freed
/// heap memory below the top is not returned on its own), and the next
/// stage would add its own on top of it: the agent's peak RSS is what
/// matters on a storage host.
fn release_free_memory(stage: &str) {
    // SAFETY: malloc_trim only releases memory the allocator holds free.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
    if tracing::enabled!(tracing::Level::DEBUG) {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        tracing::debug!(
            stage,
            rss = field("VmRSS:"),
            peak_rss = field("VmHWM:"),
            "memory"
        );
    }
}

fn effective_modes(config: &Config, runtime: &RuntimeModes) -> anyhow::Result<Modes> {
    let mut runtime = runtime.clone();
    let mount = if runtime == RuntimeModes::default() {
        PathBuf::from("/")
    } else {
        paths::cgroup2_mount().context("finding the cgroup2 mount")?
    };
    let eff = runtime.apply(config, &mount);
    for d in &eff.dropped {
        tracing::warn!("runtime mode change no longer applies: {d}");
    }
    let mut ids = Vec::new();
    let mut shown = Vec::new();
    for o in &eff.overrides {
        let from_runtime = runtime.cgroups.contains_key(&o.cgroup);
        match scope::resolve_overrides(&config.scope, std::slice::from_ref(o)) {
            Ok(r) => {
                for r in r {
                    ids.push((r.target.id, r.mode));
                    shown.push((
                        r.target.path.display().to_string(),
                        r.mode,
                        if from_runtime { "runtime" } else { "config" },
                    ));
                }
            }
            Err(e) if from_runtime => {
                tracing::warn!(error = %e, "dropping a runtime mode change whose cgroup is gone");
                runtime.cgroups.remove(&o.cgroup);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Modes {
        mode: eff.mode,
        ids,
        shown,
        runtime,
    })
}

/// The agent's runtime mode state and where it is kept.
struct RuntimeState {
    modes: RuntimeModes,
    path: PathBuf,
}

impl RuntimeState {
    fn replace(&mut self, modes: RuntimeModes) {
        if modes != self.modes {
            if let Err(e) = modes.save(&self.path) {
                tracing::error!(error = %e, "cannot save the runtime mode changes; they hold until the agent stops");
            }
            self.modes = modes;
        }
    }
}

/// Writes, flips and attaches a prepared policy, all or nothing.
///
/// On a fresh install the slot is written before any program is attached,
/// so no program ever decides with an empty slot. On an adopted datapath or
/// a reload the new links are staged first (attached next to the running
/// ones), then the slot is written and flipped (policy and mode together),
/// then the staged links replace the old ones; a failure before the flip
/// detaches the staged links and leaves the running policy and scope as
/// they were.
fn apply(
    dp: &mut Datapath,
    p: &Prepared,
    status: &SharedStatus,
    fresh: bool,
    runtime: &mut RuntimeState,
) -> anyhow::Result<()> {
    let Modes {
        mode,
        ids: overrides,
        shown: shown_overrides,
        runtime: new_runtime,
    } = effective_modes(&p.config, &runtime.modes)?;
    let staged = if fresh {
        None
    } else {
        Some(
            dp.stage(&p.targets, &p.interfaces)
                .context("attaching to the scope cgroups and interfaces")?,
        )
    };
    dp.set_overrides(&overrides)
        .context("writing the per-cgroup mode overrides")?;
    dp.set_event_limits(p.config.events.rate_per_cpu, p.config.events.burst)
        .context("setting the event rate")?;
    let report = dp
        .install(&p.policy, mode)
        .context("writing the policy into the kernel")?;
    release_free_memory("policy installed");
    tracing::info!(
        slot = report.slot,
        mode = mode.label(),
        geo_v4 = report.geo_v4,
        geo_v6 = report.geo_v6,
        geo_v4_blocks_written = report.geo.v4_blocks,
        geo_v4_entries = report.geo.v4_entries,
        geo_v4_split16 = report.geo.v4_split16,
        geo_v6_entries = report.geo.v6_entries,
        geo_v6_blocks_written = report.geo.v6_blocks,
        geo_build_seconds = format!("{:.3}", report.geo_build_seconds),
        geo_write_seconds = format!("{:.3}", report.geo.write_seconds),
        geo_verify_seconds = format!("{:.3}", report.geo_verify_seconds),
        rules = report.rules_v4.total + report.rules_v6.total,
        seconds = format!("{:.2}", report.seconds),
        "policy slot written, verified and made active"
    );
    let staged = match staged {
        Some(s) => s,
        None => dp
            .stage(&p.targets, &p.interfaces)
            .context("attaching to the scope cgroups and interfaces")?,
    };
    let attached = dp.commit(staged).context("pinning the links")?;
    tracing::info!(
        links = attached.attached.len(),
        kept = attached.kept.len(),
        replaced = attached.replaced,
        detached = attached.detached.len(),
        cgroups = ?p.targets.iter().map(|t| t.path.display().to_string()).collect::<Vec<_>>(),
        interfaces = ?p.interfaces.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        "attached"
    );
    let retired = dp
        .retire_other_versions()
        .context("detaching the programs of another layout version")?;
    if !retired.is_empty() {
        tracing::info!(versions = ?retired, "detached and removed the pins of another layout version");
    }
    let mode_from_runtime = new_runtime.global.is_some();
    runtime.replace(new_runtime);
    let mut s = status.write().unwrap_or_else(|e| e.into_inner());
    s.mode = Some(mode);
    s.mode_from_runtime = mode_from_runtime;
    s.overrides = shown_overrides;
    s.sources = p.policy.sources.iter().map(|r| r.info.clone()).collect();
    s.geo_v4_entries = report.geo.v4_entries;
    s.geo_v6_ranges = report.geo.v6_entries;
    s.geo_v6_split64 = report.geo.v6_fine_entries;
    s.rules_v4 = p.policy.rules_v4.len();
    s.rules_v6 = p.policy.rules_v6.len();
    s.scope = p
        .targets
        .iter()
        .map(|t| t.path.display().to_string())
        .collect();
    s.interfaces = p.interfaces.iter().map(|i| i.name.clone()).collect();
    s.last_error = None;
    s.generation = report.generation;
    s.policy_sha256 = Some(crate::policy::policy_sha256(&p.config, &p.policy));
    s.prefixes_v4 = p.policy.geo.v4.len();
    s.prefixes_v6 = p.policy.geo.v6.len();
    s.approved_countries = p.config.approved.len();
    s.policy_loads_ok += 1;
    s.last_load_unix = unix_now();
    Ok(())
}

/// The signals the agent handles, installed before anything else.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }
}

/// The cgroup directories event cgroup ids are looked up under.
fn cgroup_roots(config: &Config) -> Vec<PathBuf> {
    let Ok(mount) = paths::cgroup2_mount() else {
        return Vec::new();
    };
    match &config.scope {
        Scope::HostWide => vec![mount],
        Scope::Cgroups(list) => list
            .iter()
            .map(|p| {
                if p.is_absolute() {
                    p.clone()
                } else {
                    mount.join(p)
                }
            })
            .collect(),
    }
}

async fn agent(config_arg: ConfigArg) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
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
    let metrics_addr = listener
        .local_addr()
        .context("reading the metrics listener's address")?;
    let pin_dir: PathBuf = prepared.config.pin_dir.clone();
    let runtime_path = prepared.config.run_dir.join(paths::RUNTIME_MODE_NAME);
    let mut runtime = RuntimeState {
        modes: RuntimeModes::load(&runtime_path)?,
        path: runtime_path,
    };
    let control_socket =
        control_server::bind(&prepared.config.control.socket, prepared.access.clone())
            .with_context(|| format!("{}: control", prepared.config.origin))?;
    let audit = SharedAudit::open(prepared.config.audit.file.as_deref())
        .with_context(|| format!("{}: audit", prepared.config.origin))?;

    let status: SharedStatus = Arc::new(RwLock::new(AgentStatus {
        started_unix: unix_now(),
        links_dir: Some(paths::PinLayout::new(&pin_dir).links),
        audit_file: prepared.config.audit.file.clone(),
        ..AgentStatus::default()
    }));
    let mut dp = tokio::task::block_in_place(|| -> anyhow::Result<Datapath> {
        let mut dp = Datapath::load(&pin_dir).context("loading the datapath")?;
        release_free_memory("datapath loaded");
        if dp.adopted() {
            tracing::info!(pin_dir = %pin_dir.display(), "adopting the pinned datapath of an earlier agent");
        }
        let fresh = !dp.adopted();
        if let Err(e) = apply(&mut dp, &prepared, &status, fresh, &mut runtime) {
            dp.discard_if_new();
            audit.record(load_record(
                &status,
                LoadTrigger::Start,
                Some(format!("{e:#}")),
            ));
            audit.record_flush(Kind::AgentStop(audit::AgentStop {
                reason: "start failed; nothing changed".into(),
            }));
            return Err(e);
        }
        Ok(dp)
    })?;
    audit.record(Kind::AgentStart(audit::AgentStart {
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        pin_dir: pin_dir.display().to_string(),
        adopted: dp.adopted(),
        layout_version: enforcer_common::LAYOUT_VERSION,
    }));
    audit.record_flush(load_record(&status, LoadTrigger::Start, None));
    status.write().unwrap_or_else(|e| e.into_inner()).adopted = dp.adopted();
    let _datapath_log = datapath::diagnostics::forward_log(&mut dp);

    let event_counts = Arc::new(EventCounts::default());
    let hub = Arc::new(EventsHub::new(RECENT_EVENTS));
    let (events_config_tx, events_config_rx) =
        tokio::sync::watch::channel(prepared.config.events.clone());
    let (events_stop_tx, events_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let events_task = tokio::spawn(events::run(
        pin_dir.clone(),
        events_config_rx,
        Arc::clone(&event_counts),
        CgroupNames::new(cgroup_roots(&prepared.config)),
        Arc::clone(&hub),
        audit.clone(),
        events_stop_rx,
    ));

    let counters = CounterReader::open(&pin_dir).context("opening the pinned counters")?;
    let registry = Arc::new(metrics::registry(EnforcerCollector::new(
        counters,
        Arc::clone(&status),
        Arc::clone(&event_counts),
        audit.clone(),
    )));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(metrics::serve(listener, registry, async {
        let _ = stop_rx.await;
    }));

    let (commands_tx, mut commands) = tokio::sync::mpsc::channel::<control::Command>(16);
    let control_path = control_socket.path().to_owned();
    let handler = Arc::new(control::AgentHandler::new(
        commands_tx,
        Arc::clone(&status),
        hub,
        pin_dir.clone(),
    ));
    let (control_stop_tx, control_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let control_task = tokio::spawn(control_server::serve(control_socket, handler, async {
        let _ = control_stop_rx.await;
    }));

    tracing::info!(
        mode = prepared.config.mode.label(),
        approved = ?prepared.config.approved_items,
        unknown = prepared.config.unknown.label(),
        metrics = %format!("http://{metrics_addr}/metrics"),
        control = %control_path.display(),
        pin_dir = %pin_dir.display(),
        "enforcer running"
    );
    let _ = sd_notify::notify(&[
        NotifyState::Ready,
        NotifyState::Status(&format!(
            "running; metrics http://{metrics_addr}/metrics; control {}",
            control_path.display()
        )),
    ]);

    let mut running = prepared.config;
    let mut watcher = watch_sources(&running);
    let suppressed_reader = CounterReader::open(&pin_dir).context("opening the pinned counters")?;
    let mut suppressed = suppressed_reader.suppressed().unwrap_or_default();
    let period = running.audit.checkpoint_interval;
    let mut checkpoints = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let stop_reason;
    loop {
        let replaced = async {
            match &mut watcher {
                Some(w) => w.replaced().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = signals.term.recv() => {
                stop_reason = "SIGTERM";
                break;
            }
            _ = signals.int.recv() => {
                stop_reason = "SIGINT";
                break;
            }
            _ = checkpoints.tick() => checkpoint(&status, &audit, &mut suppressed, &suppressed_reader),
            files = replaced => {
                tracing::info!(files = ?files, "a GeoIP database was replaced on disk");
                if let Ok(config) = reload(&config_arg, &running, &mut Ctx { dp: &mut dp, status: &status, runtime: &mut runtime, audit: &audit }, LoadTrigger::FileWatch, None).await {
                    let _ = events_config_tx.send(config.events.clone());
                    running = config;
                    watcher = watch_sources(&running);
                }
            }
            _ = signals.hup.recv() => {
                if let Ok(config) = reload(&config_arg, &running, &mut Ctx { dp: &mut dp, status: &status, runtime: &mut runtime, audit: &audit }, LoadTrigger::Sighup, None).await {
                    let _ = events_config_tx.send(config.events.clone());
                    running = config;
                    watcher = watch_sources(&running);
                }
            }
            Some(command) = commands.recv() => match command {
                control::Command::Reload { peer, reply } => {
                    let mut ctx = Ctx { dp: &mut dp, status: &status, runtime: &mut runtime, audit: &audit };
                    let result = reload(&config_arg, &running, &mut ctx, LoadTrigger::Control, Some(&peer)).await;
                    let answer = match result {
                        Ok(config) => {
                            let _ = events_config_tx.send(config.events.clone());
                            running = config;
                            watcher = watch_sources(&running);
                            let s = status.read().unwrap_or_else(|e| e.into_inner());
                            Ok(serde_json::json!({ "generation": s.generation }))
                        }
                        Err(e) => Err(e),
                    };
                    let _ = reply.send(answer);
                }
                control::Command::Mode { change, reply } => {
                    let result = tokio::task::block_in_place(|| {
                        control::change_mode(&mut Ctx { dp: &mut dp, status: &status, runtime: &mut runtime, audit: &audit }, &running, change)
                    });
                    let _ = reply.send(result);
                }
            },
        }
    }

    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    checkpoint(&status, &audit, &mut suppressed, &suppressed_reader);
    let _ = control_stop_tx.send(());
    let _ = stop_tx.send(());
    let _ = events_stop_tx.send(());
    let _ = server.await;
    let _ = control_task.await;
    match events_task.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "the events reader stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "the events reader panicked"),
        Ok(Ok(())) => {}
    }
    audit.record_flush(Kind::AgentStop(audit::AgentStop {
        reason: format!("{stop_reason}; enforcement stays in place"),
    }));
    tracing::info!(pin_dir = %pin_dir.display(), "agent stopped; enforcement stays in place (`enforcer uninstall` removes it)");
    Ok(())
}

/// A watcher of the config's GeoIP sources, when `geoip.watch` is on. A
/// watch that cannot be set up is logged; reloads still work by signal and
/// control socket.
fn watch_sources(config: &Config) -> Option<crate::watch::Watcher> {
    if !config.watch_sources {
        return None;
    }
    match crate::watch::Watcher::new(&config.sources) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the GeoIP sources; reload with SIGHUP or `enforcer reload`");
            None
        }
    }
}

/// Events kept for `enforcer events` (the events file is the record).
const RECENT_EVENTS: usize = 1000;

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A reload (SIGHUP, `enforcer reload`): prepare and apply the config
/// again; on any error the policy in force stays. Returns the new config
/// when it took effect, else the error as one line.
async fn reload(
    config_arg: &ConfigArg,
    running: &Config,
    ctx: &mut Ctx<'_>,
    trigger: LoadTrigger,
    caller: Option<&PeerCreds>,
) -> Result<Config, String> {
    let (dp, status, runtime) = (&mut *ctx.dp, ctx.status, &mut *ctx.runtime);
    let mode_before = status.read().unwrap_or_else(|e| e.into_inner()).mode;
    let trigger_label = trigger.label();
    // systemd Type=notify-reload wants RELOADING=1 with the time it began.
    let mut reloading = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        reloading.push(now);
    }
    let _ = sd_notify::notify(&reloading);
    tracing::info!(trigger = trigger_label, "reloading");
    let arg = config_arg.clone();
    let prepared = match tokio::task::spawn_blocking(move || prepare(&arg)).await {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(anyhow::anyhow!("reload task failed: {e}")),
    };
    let result = prepared.and_then(|p| {
        if p.config.pin_dir != running.pin_dir
            || p.config.metrics_listen != running.metrics_listen
            || p.config.run_dir != running.run_dir
            || p.config.control != running.control
        {
            tracing::warn!(
                "agent.pin_dir, agent.run_dir, metrics.listen and control changes take effect at the next start"
            );
        }
        tokio::task::block_in_place(|| apply(dp, &p, status, false, runtime)).map(|()| p.config)
    });
    let _ = sd_notify::notify(&[NotifyState::Ready]);
    let outcome = match result {
        Ok(config) => {
            tracing::info!(trigger = trigger_label, "reloaded");
            ctx.audit.record(load_record(status, trigger, None));
            let mode_after = status.read().unwrap_or_else(|e| e.into_inner()).mode;
            if mode_after != mode_before {
                ctx.audit.record(Kind::ModeChange(audit::ModeChange {
                    from: mode_before.map_or("none", Mode::label).to_owned(),
                    to: mode_after.map_or("none", Mode::label).to_owned(),
                    cgroup: None,
                    uid: caller.map_or(0, |c| c.uid),
                    gid: caller.map(|c| c.gid),
                    reason: format!("config reload ({trigger_label})"),
                }));
            }
            Ok(config)
        }
        Err(e) => {
            let message = format!("{e:#}");
            {
                let mut s = status.write().unwrap_or_else(|e| e.into_inner());
                s.policy_loads_failed += 1;
                s.last_error = Some(message.clone());
            }
            tracing::error!(
                trigger = trigger_label,
                error = message,
                "reload failed; the previous policy stays in force"
            );
            ctx.audit
                .record(load_record(status, trigger, Some(message.clone())));
            Err(message)
        }
    };
    ctx.audit.flush();
    outcome
}

/// What reloads and mode changes act on, lent by the main loop.
struct Ctx<'a> {
    dp: &'a mut Datapath,
    status: &'a SharedStatus,
    runtime: &'a mut RuntimeState,
    audit: &'a SharedAudit,
}

/// The audit record of a policy load: what is in force after a success,
/// the error after a failure.
fn load_record(status: &SharedStatus, trigger: LoadTrigger, error: Option<String>) -> Kind {
    let s = status.read().unwrap_or_else(|e| e.into_inner());
    Kind::PolicyLoad(match error {
        None => audit::PolicyLoad {
            result: LoadResult::Ok,
            error: None,
            trigger,
            generation: Some(u64::from(s.generation)),
            policy_sha256: s.policy_sha256.clone(),
            databases: s.sources.iter().map(Into::into).collect(),
            prefixes_v4: Some(s.prefixes_v4 as u64),
            prefixes_v6: Some(s.prefixes_v6 as u64),
        },
        Some(e) => audit::PolicyLoad {
            result: LoadResult::Failure,
            error: Some(e),
            trigger,
            generation: None,
            policy_sha256: None,
            databases: Vec::new(),
            prefixes_v4: None,
            prefixes_v6: None,
        },
    })
}

/// The checkpoint record: what is in force now, and the events the kernel
/// did not emit since the last checkpoint (when any).
fn checkpoint(
    status: &SharedStatus,
    audit: &SharedAudit,
    suppressed: &mut Suppressed,
    reader: &CounterReader,
) {
    match reader.suppressed() {
        Ok(now) => {
            let rate_limit = now.rate_limit.saturating_sub(suppressed.rate_limit);
            let ring_full = now.ring_full.saturating_sub(suppressed.ring_full);
            if rate_limit + ring_full > 0 {
                audit.record(Kind::EventsSuppressed(audit::EventsSuppressed {
                    rate_limit,
                    ring_full,
                }));
            }
            *suppressed = now;
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the suppressed-event counters"),
    }
    let s = status.read().unwrap_or_else(|e| e.into_inner());
    audit.record(Kind::Checkpoint(audit::Checkpoint {
        mode: s.mode.map_or("none", Mode::label).to_owned(),
        policy_sha256: s.policy_sha256.clone(),
        databases: s.sources.iter().map(Into::into).collect(),
        generation: u64::from(s.generation),
        records_since_last: audit.take_since_checkpoint(),
    }));
    audit.flush();
}
