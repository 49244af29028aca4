//! The running agent (`enforcer run`): start-up, the main loop, reloads and
//! control requests.
//!
//! Order matters for "bad input never changes what is in force": signal
//! handlers are installed first (a SIGHUP during start-up must not kill the
//! agent); then the policy is [prepared](prepare) (config validated, every
//! GeoIP source loaded and compiled and checked against the maps' capacity,
//! every scope and override cgroup opened, every interface looked up, the
//! events file checked), the metrics port bound, the control socket and the
//! audit log opened, all before the kernel is touched. Only then is the
//! datapath loaded (or adopted) and the policy [applied](apply): the
//! inactive slot written, verified and flipped, the programs attached.
//! That start runs on a start-up runtime, which is shut down before the
//! agent drops every capability it no longer needs ([`privileges`]); the
//! serving runtime is built after the drop, so every thread that serves
//! holds the reduced set.
//!
//! Once running, the agent takes its orders from signals (SIGHUP reloads,
//! SIGTERM/SIGINT stop), from the file watch on the GeoIP sources, and from
//! the control socket ([`control`]). Reloads and mode changes are carried
//! out one at a time by the main loop, which alone holds the datapath
//! ([`Running`]); metrics, events and control requests are served by
//! their own tasks.
//!
//! Like the CLI verbs, this is the application layer and reports errors
//! with `anyhow`; the modules it drives return typed errors.

mod apply;
mod control;
mod coverage;
mod freshness;
mod prepare;
mod privileges;
mod records;
mod reload_guard;

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
};

use anyhow::Context as _;
use enforcer_common::Mode;
use sd_notify::NotifyState;
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

use self::{
    apply::{RuntimeState, apply},
    coverage::{Coverage, RECONCILE_INTERVAL},
    freshness::Freshness,
    prepare::{Prepared, prepare_blocking, release_free_memory},
    records::{checkpoint, load_record},
};
use crate::{
    audit::{self, Kind, LoadTrigger, SharedAudit},
    config::{Config, Events as EventsConfig, Scope},
    control::{peer::PeerCreds, server as control_server},
    datapath::{self, Datapath, counters::CounterReader},
    events::{self, CgroupNames, EventCounts, EventsHub},
    metrics::{self, EnforcerCollector},
    paths,
    runtime_mode::RuntimeModes,
    scope,
    status::{AgentStatus, OnDisk, SharedStatus, unix_now},
    watch::Watcher,
};

/// Events kept for `enforcer events` (the events file is the record).
const RECENT_EVENTS: usize = 1000;

/// Runs the agent with the config at `config` (the embedded default
/// without one) until SIGTERM or SIGINT. Enforcement stays in place when
/// it returns.
///
/// Two runtimes, one after the other: the privileged start (load, attach,
/// pin, bind) runs on a start-up runtime, which is then shut down so that
/// one thread is left; that thread drops every capability the agent no
/// longer needs ([`privileges`]), and only then is the serving runtime
/// built, whose threads all inherit the reduced sets.
pub fn run(config: Option<PathBuf>) -> anyhow::Result<()> {
    raise_fd_limit();
    // Before the kernel is touched: a start that could not drop its
    // capabilities afterwards changes nothing.
    privileges::preflight().context("least privilege")?;
    let started = {
        let runtime = async_runtime("start-up")?;
        let started = runtime.block_on(start(config));
        // Joins the start-up runtime's workers and blocking threads.
        drop(runtime);
        started?
    };
    let privileges =
        match privileges::drop_after_start(&started.prepared.config.pin_dir) {
            Ok(p) => p,
            Err(e) => {
                let e = e.context("dropping capabilities after start");
                tracing::error!(
                    error = %format!("{e:#}"),
                    "refusing to run with capabilities it does not need; enforcement stays in place"
                );
                started.audit.record_flush(Kind::AgentStop(audit::AgentStop {
                reason: format!(
                    "cannot drop capabilities after start ({e:#}); enforcement stays in place"
                ),
            }));
                return Err(e);
            }
        };
    let runtime = async_runtime("serving")?;
    runtime.block_on(serve(started, privileges))
}

/// The agent's tokio runtime: two workers, I/O, time and signals.
fn async_runtime(what: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .with_context(|| format!("starting the {what} runtime"))
}

/// Raises the soft limit of open files to the hard one (1,024 is the usual
/// soft default): the agent holds maps, links, the control socket, the
/// audit log and the events file, and serves scrapes. The metrics listener
/// caps its own connections (`metrics::MAX_CONNECTIONS`), so this is room,
/// not a bound anyone can fill. Logged, never fatal.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    // Enough for any host; an "unlimited" hard limit is not a value the
    // kernel accepts for open files (fs.nr_open caps it).
    const WANTED: u64 = 65_536;
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard.min(WANTED) => {
            let target = hard.min(WANTED);
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
                tracing::warn!(soft, target, error = %e, "cannot raise the open-files limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-files limit"),
    }
}

/// What the privileged start hands to the serving runtime: nothing in it
/// is tied to the start-up runtime (the listeners are std sockets, the
/// signal streams are the process-wide registry's).
struct Started {
    config_path: Option<PathBuf>,
    prepared: Prepared,
    signals: Signals,
    listener: std::net::TcpListener,
    metrics_addr: std::net::SocketAddr,
    control_socket: control_server::ControlSocket,
    runtime: RuntimeState,
    audit: SharedAudit,
    status: SharedStatus,
    dp: Datapath,
    overrides: Vec<(u64, Mode)>,
    /// Not yet registered with any runtime (see [`Watcher`]): it is
    /// waited on by the serving one.
    watcher: Option<Watcher>,
}

/// The privileged start: prepare, bind, open, load or adopt, apply.
async fn start(config_path: Option<PathBuf>) -> anyhow::Result<Started> {
    // Installed first, and kept across the runtimes: a SIGHUP during
    // start-up must not kill the agent, and is served once it runs.
    let signals = Signals::install()?;
    let mut prepared = prepare_blocking(config_path.clone()).await?;
    let config = &prepared.config;
    // The file watch from the moment the sources are known, long before
    // READY: a database replaced during the start is a pending change, not
    // a lost one (the freshness check catches one replaced before this).
    let watcher = watch_sources(config);
    let listener = metrics::bind(config.metrics_listen)
        .await
        .with_context(|| format!("binding the metrics listener on {}", config.metrics_listen))?;
    let metrics_addr = listener
        .local_addr()
        .context("reading the metrics listener's address")?;
    let listener = listener
        .into_std()
        .context("handing the metrics listener over")?;
    let pin_dir = config.pin_dir.clone();
    let runtime_path = config.run_dir.join(paths::RUNTIME_MODE_NAME);
    let mut runtime = RuntimeState {
        modes: RuntimeModes::load(&runtime_path)?,
        path: runtime_path,
    };
    let control_socket = control_server::bind(&config.control.socket, prepared.access.clone())
        .with_context(|| format!("{}: control", config.origin))?;
    let audit = SharedAudit::open(config.audit.file.as_deref())
        .with_context(|| format!("{}: audit", config.origin))?;
    audit.set_signer(prepared.signer.clone());
    let status: SharedStatus = Arc::new(RwLock::new(AgentStatus {
        started_unix: unix_now(),
        links_dir: Some(paths::PinLayout::new(&pin_dir).links),
        audit_file: config.audit.file.clone(),
        ..AgentStatus::default()
    }));

    let (dp, overrides) = tokio::task::block_in_place(|| {
        start_datapath(&pin_dir, &mut prepared, &status, &mut runtime, &audit)
    })?;
    Ok(Started {
        config_path,
        prepared,
        signals,
        listener,
        metrics_addr,
        control_socket,
        runtime,
        audit,
        status,
        dp,
        overrides,
        watcher,
    })
}

/// Serves, with the reduced capabilities, until SIGTERM or SIGINT.
async fn serve(started: Started, privileges: privileges::Privileges) -> anyhow::Result<()> {
    let Started {
        config_path,
        prepared,
        signals,
        listener,
        metrics_addr,
        control_socket,
        runtime,
        audit,
        status,
        mut dp,
        overrides,
        watcher,
    } = started;
    let pin_dir = prepared.config.pin_dir.clone();
    let listener =
        tokio::net::TcpListener::from_std(listener).context("serving the metrics listener")?;
    status.write().unwrap_or_else(|e| e.into_inner()).privileges = Some(privileges.clone());
    // The first look at the scope before READY: `status` shows every
    // entry (covered or waiting) from the start.
    let mut coverage = Coverage::new(&prepared.config, &overrides);
    tokio::task::block_in_place(|| {
        coverage.reconcile(&mut dp, &prepared.config, &runtime.modes, &status, &audit)
    });
    // The datapath's own log (aya-log: its rare internal failures) into
    // ours, for as long as the agent runs.
    let _datapath_log = datapath::diagnostics::forward_log(&mut dp);

    let (services, events_config, commands, control_path) =
        Services::spawn(listener, control_socket, &prepared.config, &status, &audit)?;

    tracing::info!(
        mode = prepared.config.mode.label(),
        approved = ?prepared.config.approved_items,
        unknown = prepared.config.unknown.label(),
        metrics = %format!("http://{metrics_addr}/metrics"),
        control = %control_path.display(),
        pin_dir = %pin_dir.display(),
        capabilities = %privileges,
        no_new_privs = privileges.no_new_privs,
        "enforcer running"
    );
    let mut agent = Running {
        coverage,
        config_path,
        watcher,
        config: prepared.config,
        dp,
        status,
        runtime,
        audit,
        events_config,
        freshness: Freshness::default(),
        geo_in_force: Some(prepared.policy.geo),
    };
    // `status` shows each database against its file on disk from the start.
    agent.check_sources();
    agent.write_baseline();
    let _ = sd_notify::notify(&[
        NotifyState::Ready,
        NotifyState::Status(&format!(
            "running; metrics http://{metrics_addr}/metrics; control {}",
            control_path.display()
        )),
    ]);

    let stop_reason = agent.serve(signals, commands).await?;

    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    services.stop().await;
    agent.audit.record_flush(Kind::AgentStop(audit::AgentStop {
        reason: format!("{stop_reason}; enforcement stays in place"),
    }));
    tracing::info!(pin_dir = %pin_dir.display(), "agent stopped; enforcement stays in place (`enforcer uninstall` removes it)");
    Ok(())
}

/// Loads or adopts the datapath and applies the first policy (an adopted
/// one's is first put through the reload guard, which may replace it with
/// the data in force: [`reload_guard::guard_start`]). A failure is
/// audited, and a datapath this start loaded is discarded again, so a
/// failed start changes nothing.
fn start_datapath(
    pin_dir: &std::path::Path,
    prepared: &mut Prepared,
    status: &SharedStatus,
    runtime: &mut RuntimeState,
    audit: &SharedAudit,
) -> anyhow::Result<(Datapath, Vec<(u64, Mode)>)> {
    let mut dp = Datapath::load(pin_dir).context("loading the datapath")?;
    release_free_memory("datapath loaded");
    if dp.adopted() {
        tracing::info!(pin_dir = %pin_dir.display(), "adopting the pinned datapath of an earlier agent");
    }
    let fresh = !dp.adopted();
    let start_hold = if fresh {
        None
    } else {
        reload_guard::guard_start(prepared, status)
    };
    let began = std::time::Instant::now();
    let overrides = match apply(&mut dp, prepared, status, fresh, runtime) {
        Ok(o) => {
            // At start the config was read before the datapath was
            // loaded: this times applying it. A failed start exits.
            let mut s = status.write().unwrap_or_else(|e| e.into_inner());
            s.last_load_attempt = Some((began.elapsed().as_secs_f64(), "success"));
            o
        }
        Err(e) => {
            dp.discard_if_new();
            audit.record(load_record(
                status,
                LoadTrigger::Start,
                Some(format!("{e:#}")),
            ));
            audit.record_flush(Kind::AgentStop(audit::AgentStop {
                reason: "start failed; nothing changed".into(),
            }));
            return Err(e);
        }
    };
    audit.record(Kind::AgentStart(audit::AgentStart {
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        pin_dir: pin_dir.display().to_string(),
        adopted: dp.adopted(),
        layout_version: enforcer_common::LAYOUT_VERSION,
    }));
    audit.record(load_record(status, LoadTrigger::Start, None));
    if let Some(h) = start_hold {
        reload_guard::record_hold(status, audit, LoadTrigger::Start, None, h.flip, h.held);
    }
    // A checkpoint right away: a fresh log has a signed one (when a key is
    // set) before the first interval ends.
    records::checkpoint_record(status, audit);
    status.write().unwrap_or_else(|e| e.into_inner()).adopted = dp.adopted();
    Ok((dp, overrides))
}

/// What the main loop holds: the datapath and the state that changes with
/// it. Reloads and mode changes borrow it one at a time.
struct Running {
    /// Where the config is read from at each reload.
    config_path: Option<PathBuf>,
    /// The config in force.
    config: Config,
    dp: Datapath,
    status: SharedStatus,
    runtime: RuntimeState,
    audit: SharedAudit,
    /// The events task's settings, replaced at each reload.
    events_config: watch::Sender<EventsConfig>,
    /// The GeoIP sources' file watch, rebuilt at each reload.
    watcher: Option<Watcher>,
    /// The scope entries and their coverage (see [`coverage`]).
    coverage: Coverage,
    /// Each source in force against its file on disk (see [`freshness`]).
    freshness: Freshness,
    /// The GeoIP data in force, for the reload guard ([`reload_guard`]).
    geo_in_force: Option<geoip::GeoTable>,
}

/// A reload that applied a policy: its generation, and the flip it
/// applied beyond the bound when `--accept-change` let it through.
pub(crate) struct Reloaded {
    generation: u32,
    accepted: Option<crate::flip::Flip>,
}

impl Running {
    /// A reload (SIGHUP, file watch, `enforcer reload`): prepare and apply
    /// the config again. On any error the policy in force stays; the error
    /// is logged, counted, audited and returned as one line. On success the
    /// new config is in force (events settings and file watch included)
    /// and its generation is returned. New GeoIP data beyond
    /// `geoip.max_flip` is held instead, unless `accept_change`
    /// ([`reload_guard`]).
    async fn reload(
        &mut self,
        trigger: LoadTrigger,
        caller: Option<&PeerCreds>,
        accept_change: bool,
    ) -> Result<Reloaded, String> {
        let mode_before = self.read_status().mode;
        let trigger_label = trigger.label();
        // systemd's Type=notify-reload wants RELOADING=1 with the time it
        // began; under Type=notify it is harmless.
        let mut reloading = vec![NotifyState::Reloading];
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            reloading.push(now);
        }
        let _ = sd_notify::notify(&reloading);
        tracing::info!(trigger = trigger_label, "reloading");
        // Timed from here: reading the config and databases is most of a
        // reload, and what an operator waits for.
        let began = std::time::Instant::now();
        // Log rotation: open the audit log and the events file again at
        // their paths, whether or not the reload succeeds.
        self.audit.reopen();
        self.events_config.send_modify(|_| ());
        let prepared = match prepare_blocking(self.config_path.clone()).await {
            Ok(p) => match self.check_flip(&p, accept_change) {
                reload_guard::Check::Pass(accepted) => Ok((p, accepted)),
                reload_guard::Check::Hold(flip) => {
                    // Nothing applied: the agent serves on as it was.
                    let _ = sd_notify::notify(&[NotifyState::Ready]);
                    self.freshness.reloaded();
                    let message = self.hold(trigger, caller, flip, &p);
                    self.audit.flush();
                    self.check_sources();
                    return Err(message);
                }
            },
            Err(e) => Err(e),
        };
        // The data in force before, for an accept record.
        let before: Vec<audit::DatabaseRecord> =
            self.read_status().sources.iter().map(Into::into).collect();
        let result = match prepared {
            Ok((p, accepted)) => {
                self.warn_start_only_changes(&p.config);
                // The key as read by this load (replaced or removed):
                // only a load that succeeds changes it.
                self.audit.set_signer(p.signer.clone());
                tokio::task::block_in_place(|| {
                    apply(&mut self.dp, &p, &self.status, false, &mut self.runtime)
                })
                .map(|overrides| (p.config, overrides, p.policy.geo, accepted))
            }
            Err(e) => Err(e),
        };
        let _ = sd_notify::notify(&[NotifyState::Ready]);
        self.freshness.reloaded();
        {
            let took = began.elapsed().as_secs_f64();
            let mut s = self.status.write().unwrap_or_else(|e| e.into_inner());
            if result.is_ok() {
                s.last_load_attempt = Some((took, "success"));
            } else {
                s.last_load_attempt = Some((took, "failure"));
                s.last_load_failure_unix = crate::status::unix_now();
            }
        }
        let outcome = match result {
            Ok((config, overrides, geo, accepted)) => {
                tracing::info!(trigger = trigger_label, "reloaded");
                // The accept is recorded before the load it let through.
                let accepted_by = match (&accepted, caller) {
                    (Some(flip), Some(peer)) => Some((flip.clone(), peer, before)),
                    _ => None,
                };
                self.applied(geo, accepted_by);
                self.audit.record(load_record(&self.status, trigger, None));
                let mode_after = self.read_status().mode;
                if mode_after != mode_before {
                    self.audit.record(Kind::ModeChange(audit::ModeChange {
                        from: mode_before.map_or("none", Mode::label).to_owned(),
                        to: mode_after.map_or("none", Mode::label).to_owned(),
                        cgroup: None,
                        uid: caller.map_or(0, |c| c.uid),
                        gid: caller.map(|c| c.gid),
                        reason: format!("config reload ({trigger_label})"),
                    }));
                }
                let _ = self.events_config.send(config.events.clone());
                // The same files: keep the watcher, and with it a change
                // it saw that this reload may have read too early.
                if self.watcher.is_none()
                    || config.sources != self.config.sources
                    || config.watch_sources != self.config.watch_sources
                {
                    self.watcher = watch_sources(&config);
                }
                self.config = config;
                self.replace_coverage(&overrides);
                Ok(Reloaded {
                    generation: self.read_status().generation,
                    accepted,
                })
            }
            Err(e) => {
                let message = format!("{e:#}");
                {
                    let mut s = self.status.write().unwrap_or_else(|e| e.into_inner());
                    s.policy_loads_failed += 1;
                    s.last_error = Some(message.clone());
                }
                tracing::error!(
                    trigger = trigger_label,
                    error = message,
                    "reload failed; the previous policy stays in force"
                );
                self.audit
                    .record(load_record(&self.status, trigger, Some(message.clone())));
                Err(message)
            }
        };
        self.audit.flush();
        self.check_sources();
        outcome
    }

    /// Compares each database in force with its file on disk and shows the
    /// result in `status` and the metrics; returns the sources whose new
    /// content has waited longer than the file watch would have.
    fn check_sources(&mut self) -> Vec<PathBuf> {
        let in_force = self.read_status().sources.clone();
        let on_disk = tokio::task::block_in_place(|| self.freshness.check(&in_force));
        for disk in &on_disk {
            let before = self
                .read_status()
                .sources_on_disk
                .iter()
                .find(|o| o.path == disk.path)
                .map(|o| o.state.label());
            if before != Some(disk.state.label()) && disk.state != OnDisk::InForce {
                tracing::warn!(
                    path = %disk.path.display(),
                    on_disk = disk.state.label(),
                    detail = ?disk.state,
                    "a GeoIP database on disk is not the one in force",
                );
            }
        }
        self.status
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .sources_on_disk = on_disk;
        if self.watcher.is_some() {
            self.freshness.overdue()
        } else {
            Vec::new()
        }
    }

    /// Serves until SIGTERM or SIGINT, whose name it returns: signals,
    /// the file watch, the checkpoint timer and control commands, one at a
    /// time. Writes the last checkpoint before it returns.
    async fn serve(
        &mut self,
        mut signals: Signals,
        mut commands: mpsc::Receiver<control::Command>,
    ) -> anyhow::Result<&'static str> {
        let suppressed_reader =
            CounterReader::open(&self.config.pin_dir).context("opening the pinned counters")?;
        let mut suppressed = suppressed_reader.suppressed().unwrap_or_default();
        let period = self.config.audit.checkpoint_interval;
        let mut checkpoints =
            tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut coverage_ticks = tokio::time::interval_at(
            tokio::time::Instant::now() + RECONCILE_INTERVAL,
            RECONCILE_INTERVAL,
        );
        coverage_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop_reason = loop {
            let replaced = async {
                match &mut self.watcher {
                    Some(w) => w.replaced().await,
                    None => std::future::pending().await,
                }
            };
            let scope_changed = self.coverage.changed();
            tokio::select! {
                _ = signals.term.recv() => break "SIGTERM",
                _ = signals.int.recv() => break "SIGINT",
                () = scope_changed => self.reconcile(),
                _ = coverage_ticks.tick() => {
                    self.reconcile();
                    let overdue = self.check_sources();
                    if !overdue.is_empty() {
                        // The watch missed it (replaced before the watch
                        // was set up, or an inotify overflow): reload
                        // anyway, once per new content.
                        tracing::warn!(files = ?overdue, "a GeoIP database on disk differs from the one in force and the file watch did not report it");
                        let _ = self.reload(LoadTrigger::FileWatch, None, false).await;
                    }
                }
                _ = checkpoints.tick() => {
                    checkpoint(&self.status, &self.audit, &mut suppressed, &suppressed_reader);
                }
                files = replaced => {
                    tracing::info!(files = ?files, "a GeoIP database was replaced on disk");
                    let _ = self.reload(LoadTrigger::FileWatch, None, false).await;
                }
                _ = signals.hup.recv() => {
                    let _ = self.reload(LoadTrigger::Sighup, None, false).await;
                }
                Some(command) = commands.recv() => match command {
                    control::Command::Reload { peer, accept_change, reply } => {
                        let answer = self
                            .reload(LoadTrigger::Control, Some(&peer), accept_change)
                            .await
                            .map(|r| {
                                let mut v = serde_json::json!({ "generation": r.generation });
                                if let Some(flip) = &r.accepted {
                                    v["accepted"] = flip.json();
                                }
                                v
                            });
                        let _ = reply.send(answer);
                    }
                    control::Command::Mode { change, reply } => {
                        let result = tokio::task::block_in_place(|| self.change_mode(change));
                        let _ = reply.send(result);
                    }
                },
            }
        };
        checkpoint(
            &self.status,
            &self.audit,
            &mut suppressed,
            &suppressed_reader,
        );
        Ok(stop_reason)
    }

    /// The coverage of the config now in force, keeping what the old one
    /// knew about the same entries, compared with the kernel at once.
    fn replace_coverage(&mut self, overrides: &[(u64, Mode)]) {
        self.coverage.reconfigure(&self.config, overrides);
        self.reconcile();
    }

    /// One pass of the coverage loop.
    fn reconcile(&mut self) {
        tokio::task::block_in_place(|| {
            self.coverage.reconcile(
                &mut self.dp,
                &self.config,
                &self.runtime.modes,
                &self.status,
                &self.audit,
            )
        });
    }

    /// Settings bound at start-up are not changed by a reload: say so.
    fn warn_start_only_changes(&self, new: &Config) {
        let old = &self.config;
        if new.pin_dir != old.pin_dir
            || new.metrics_listen != old.metrics_listen
            || new.run_dir != old.run_dir
            || new.control != old.control
        {
            tracing::warn!(
                "agent.pin_dir, agent.run_dir, metrics.listen and control changes take effect at the next start"
            );
        }
    }

    fn read_status(&self) -> std::sync::RwLockReadGuard<'_, AgentStatus> {
        self.status.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// The tasks beside the main loop and how to stop them.
struct Services {
    metrics_stop: oneshot::Sender<()>,
    metrics_task: JoinHandle<()>,
    control_stop: oneshot::Sender<()>,
    control_task: JoinHandle<()>,
    events_stop: oneshot::Sender<()>,
    events_task: JoinHandle<Result<(), crate::datapath::DatapathError>>,
}

impl Services {
    /// Starts the tasks beside the main loop: the events reader, the
    /// metrics server, the control socket server. Returns them with the
    /// events task's settings, the control commands for the main loop and
    /// the socket's path.
    fn spawn(
        listener: tokio::net::TcpListener,
        control_socket: control_server::ControlSocket,
        config: &Config,
        status: &SharedStatus,
        audit: &SharedAudit,
    ) -> anyhow::Result<(
        Services,
        watch::Sender<EventsConfig>,
        mpsc::Receiver<control::Command>,
        PathBuf,
    )> {
        let event_counts = Arc::new(EventCounts::default());
        let sinks_health = Arc::new(events::SinksHealth::new(&config.events));
        {
            let mut s = status.write().unwrap_or_else(|e| e.into_inner());
            if config.audit.file.is_some() {
                s.sinks.push(audit.health());
            }
            if config.events.file.is_some() {
                s.sinks.push(Arc::clone(&sinks_health.file));
            }
            if config.events.stdout {
                s.sinks.push(Arc::clone(&sinks_health.stdout));
            }
        }
        let hub = Arc::new(EventsHub::new(RECENT_EVENTS));
        let (events_config, events_config_rx) = watch::channel(config.events.clone());
        let (events_stop, events_stop_rx) = oneshot::channel::<()>();
        let events_task = tokio::spawn(events::run(
            config.pin_dir.clone(),
            events_config_rx,
            Arc::clone(&event_counts),
            CgroupNames::new(cgroup_roots(config)),
            Arc::clone(&hub),
            audit.clone(),
            sinks_health,
            Arc::clone(status),
            events_stop_rx,
        ));

        let counters =
            CounterReader::open(&config.pin_dir).context("opening the pinned counters")?;
        let registry = Arc::new(metrics::registry(EnforcerCollector::new(
            counters,
            Arc::clone(status),
            Arc::clone(&event_counts),
            audit.clone(),
        )));
        let (metrics_stop, metrics_stop_rx) = oneshot::channel::<()>();
        let metrics_task = tokio::spawn(metrics::serve(
            listener,
            registry,
            Arc::clone(status),
            async {
                let _ = metrics_stop_rx.await;
            },
        ));

        let (commands_tx, commands) = tokio::sync::mpsc::channel::<control::Command>(16);
        let control_path = control_socket.path().to_owned();
        let handler = Arc::new(control::AgentHandler::new(
            commands_tx,
            Arc::clone(status),
            hub,
            config.pin_dir.clone(),
        ));
        let (control_stop, control_stop_rx) = oneshot::channel::<()>();
        let control_task = tokio::spawn(control_server::serve(control_socket, handler, async {
            let _ = control_stop_rx.await;
        }));
        let services = Services {
            metrics_stop,
            metrics_task,
            control_stop,
            control_task,
            events_stop,
            events_task,
        };
        Ok((services, events_config, commands, control_path))
    }

    async fn stop(self) {
        let _ = self.control_stop.send(());
        let _ = self.metrics_stop.send(());
        let _ = self.events_stop.send(());
        let _ = self.metrics_task.await;
        let _ = self.control_task.await;
        match self.events_task.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "the events reader stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "the events reader panicked"),
            Ok(Ok(())) => {}
        }
    }
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
        Scope::Cgroups(list) => list.iter().map(|p| scope::absolute(&mount, p)).collect(),
    }
}

/// A watcher of the config's GeoIP sources, when `geoip.watch` is on. A
/// watch that cannot be set up is logged; reloads still work by signal and
/// control socket.
fn watch_sources(config: &Config) -> Option<Watcher> {
    if !config.watch_sources {
        return None;
    }
    let paths: Vec<PathBuf> = config.sources.iter().map(|s| s.path.clone()).collect();
    match Watcher::new(&paths) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the GeoIP sources; reload with SIGHUP or `enforcer reload`");
            None
        }
    }
}
