//! What the running agent does with control requests.
//!
//! Queries (`status`, `check`) are answered on the connection's task from
//! the shared status and the pinned maps. Changes (`mode`, `reload`) are
//! sent to the main loop as [`Command`]s and carried out there one at a
//! time, since the main loop alone holds the datapath: two operators
//! switching modes at once are serialised, never interleaved.

use std::{path::PathBuf, sync::Arc, time::SystemTime};

use enforcer_common::Mode;
use tokio::sync::{mpsc, oneshot};

use super::{
    Running,
    apply::{Modes, effective_modes},
};
use crate::{
    audit::{self, Kind},
    config::ModeOverride,
    control::{ModeName, Reply, Request, peer::PeerCreds, server::Handler},
    datapath::explain::{CgroupAncestry, Explainer, Explanation, LocatedBy},
    events::EventsHub,
    paths,
    runtime_mode::{Change, RuntimeModes},
    scope,
    status::{self, SharedStatus},
};

/// A mode change as asked.
#[derive(Debug)]
pub struct ModeChange {
    pub mode: Mode,
    pub cgroup: Option<PathBuf>,
    pub reason: String,
    pub peer: PeerCreds,
}

/// What the main loop is asked to do.
#[derive(Debug)]
pub enum Command {
    Reload {
        peer: PeerCreds,
        /// `enforcer reload --accept-change`: past the reload guard.
        accept_change: bool,
        reply: oneshot::Sender<Result<serde_json::Value, String>>,
    },
    Mode {
        change: ModeChange,
        reply: oneshot::Sender<Result<serde_json::Value, String>>,
    },
}

/// The agent's [`Handler`].
pub struct AgentHandler {
    commands: mpsc::Sender<Command>,
    status: SharedStatus,
    hub: Arc<EventsHub>,
    pin_dir: PathBuf,
}

impl AgentHandler {
    pub fn new(
        commands: mpsc::Sender<Command>,
        status: SharedStatus,
        hub: Arc<EventsHub>,
        pin_dir: PathBuf,
    ) -> Self {
        Self {
            commands,
            status,
            hub,
            pin_dir,
        }
    }

    async fn ask(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<serde_json::Value, String>>) -> Command,
    ) -> Reply {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(make(tx)).await.is_err() {
            return Reply::error("the agent is stopping");
        }
        match rx.await {
            Ok(Ok(v)) => Reply::ok(v),
            Ok(Err(e)) => Reply::error(e),
            Err(_) => Reply::error("the agent is stopping"),
        }
    }

    /// The agent's own view and the kernel's, read from the pins now.
    fn status(&self) -> Reply {
        let kernel = match status::kernel_view(&self.pin_dir) {
            Ok(v) => v,
            Err(e) => return Reply::error(format!("reading the pinned maps: {e}")),
        };
        let agent = status::agent_view(&self.status.read().unwrap_or_else(|e| e.into_inner()));
        Reply::ok(serde_json::json!({ "agent": agent, "kernel": kernel }))
    }
}

impl AgentHandler {
    /// Explains each address from the live maps (the same reads as the
    /// offline `enforcer check`), with the GeoIP databases in force: the
    /// kernel's tables hold the layered result, so the answer names the
    /// sources in their order (the first that locates an address wins).
    async fn check(&self, addresses: Vec<std::net::IpAddr>, cgroup: Option<PathBuf>) -> Reply {
        const MAX: usize = 10_000;
        if addresses.len() > MAX {
            return Reply::error(format!("at most {MAX} addresses per request"));
        }
        let pin_dir = self.pin_dir.clone();
        let work = move || -> Result<Vec<Explanation>, String> {
            let explainer = Explainer::open(&pin_dir).map_err(|e| e.to_string())?;
            let ancestry = cgroup
                .as_deref()
                .map(CgroupAncestry::of_path)
                .transpose()
                .map_err(|e| e.to_string())?;
            addresses
                .iter()
                .map(|ip| {
                    explainer
                        .explain_in(*ip, ancestry.as_ref())
                        .map_err(|e| format!("{ip}: {e}"))
                })
                .collect()
        };
        let mut answers = match tokio::task::spawn_blocking(work).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => return Reply::error(e),
            Err(e) => return Reply::error(format!("check failed: {e}")),
        };
        let databases = {
            let s = self.status.read().unwrap_or_else(|e| e.into_inner());
            for a in &mut answers {
                // A site network's country is the config's, not GeoIP's.
                if let (Some(country), Some(_)) = (a.country, a.geoip_prefix) {
                    a.located_by = LocatedBy::find(&s.provenance, a.decided_as, country);
                }
            }
            status::databases(&s)
        };
        Reply::ok(serde_json::json!({ "explanations": answers, "geoip_databases": databases }))
    }
}

impl Handler for AgentHandler {
    async fn handle(&self, peer: &PeerCreds, request: Request) -> Reply {
        match request {
            Request::Status {} => self.status(),
            Request::Reload { accept_change } => {
                let peer = peer.clone();
                self.ask(|reply| Command::Reload {
                    peer,
                    accept_change,
                    reply,
                })
                .await
            }
            Request::Mode {
                mode,
                cgroup,
                reason,
            } => {
                let change = ModeChange {
                    mode: mode.into(),
                    cgroup,
                    reason,
                    peer: peer.clone(),
                };
                self.ask(|reply| Command::Mode { change, reply }).await
            }
            Request::Check { addresses, cgroup } => self.check(addresses, cgroup).await,
            // The server streams events itself.
            Request::Events { .. } => Reply::error("events are streamed by the server"),
        }
    }

    fn events(&self) -> &EventsHub {
        &self.hub
    }

    fn count(&self, verb: &'static str, result: &'static str) {
        *self
            .status
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .control_requests
            .entry((verb, result))
            .or_default() += 1;
    }
}

/// What a mode change will do, worked out before anything is written.
struct Planned {
    /// The runtime mode changes with this one in them.
    modes: RuntimeModes,
    /// The mode it replaces (for the audit record).
    from: Option<Mode>,
    /// The cgroup it is for; `None` for the global mode.
    target: Option<PathBuf>,
}

impl Running {
    /// Carries out a mode change: kept in the runtime state file first (a
    /// change that could not be kept would silently vanish at the next
    /// restart, so it is refused instead), then written to the kernel with
    /// a new generation, so cached verdicts are decided again; audited and
    /// logged with the caller and the reason.
    pub(super) fn change_mode(&mut self, change: ModeChange) -> Result<serde_json::Value, String> {
        let reason = change.reason.trim();
        if reason.is_empty() {
            return Err("a reason is required (--reason): it goes into the audit log".into());
        }
        let Planned {
            modes,
            from,
            target,
        } = self.plan_mode_change(&change, reason)?;
        let generation = self.write_modes(modes, target.is_some())?;
        let to = change.mode.label();
        self.audit.record_flush(Kind::ModeChange(audit::ModeChange {
            from: from.map_or("none", Mode::label).to_owned(),
            to: to.to_owned(),
            cgroup: target.as_ref().map(|p| p.display().to_string()),
            uid: change.peer.uid,
            gid: Some(change.peer.gid),
            reason: reason.to_owned(),
        }));
        tracing::info!(
            uid = change.peer.uid,
            pid = ?change.peer.pid,
            cgroup = ?target,
            from = from.map(Mode::label),
            to,
            reason,
            generation,
            "mode changed through the control socket"
        );
        Ok(serde_json::json!({
            "cgroup": target,
            "from": from.map(Mode::label),
            "to": to,
            "generation": generation,
        }))
    }

    /// The runtime modes with `change` in them, and what it replaces. A
    /// per-cgroup change must name a cgroup inside the scope.
    fn plan_mode_change(&mut self, change: &ModeChange, reason: &str) -> Result<Planned, String> {
        let running = &self.config;
        let record = |config_said: Option<ModeName>| Change {
            mode: change.mode.into(),
            config_said,
            uid: change.peer.uid,
            reason: reason.to_owned(),
            time: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        };
        let mut modes = self.runtime.modes.clone();
        let Some(cgroup) = &change.cgroup else {
            modes.global = Some(record(Some(running.mode.into())));
            return Ok(Planned {
                modes,
                from: self.dp.mode().ok().flatten(),
                target: None,
            });
        };
        let wanted = ModeOverride {
            cgroup: cgroup.clone(),
            mode: change.mode,
        };
        let path = scope::resolve_overrides(&running.scope, &[wanted])
            .map_err(|e| e.to_string())?
            .into_iter()
            .next()
            .map(|r| r.target.path)
            .ok_or("the cgroup did not resolve")?;
        let mount = paths::cgroup2_mount().map_err(|e| format!("cgroup2 mount: {e}"))?;
        let config_said = running
            .overrides
            .iter()
            .find(|o| scope::absolute(&mount, &o.cgroup) == path)
            .map(|o| ModeName::from(o.mode));
        let from = self
            .read_status()
            .overrides
            .iter()
            .find(|(p, _, _)| p == &path.display().to_string())
            .map(|(_, m, _)| *m);
        modes.cgroups.insert(path.clone(), record(config_said));
        Ok(Planned {
            modes,
            from,
            target: Some(path),
        })
    }

    /// Keeps `modes` in the runtime state file, then writes the global mode
    /// (or, for a per-cgroup change, the overrides) into the kernel with a
    /// new generation, which it returns. When the kernel write fails the
    /// file is put back to what the kernel holds.
    fn write_modes(&mut self, modes: RuntimeModes, per_cgroup: bool) -> Result<u32, String> {
        let Modes {
            mode,
            ids,
            shown,
            runtime: modes,
            ..
        } = effective_modes(&self.config, &modes).map_err(|e| format!("{e:#}"))?;
        modes
            .save(&self.runtime.path)
            .map_err(|e| format!("cannot keep the change: {e}"))?;
        let written = if per_cgroup {
            self.dp
                .set_overrides(&ids)
                .and_then(|()| self.dp.bump_generation())
        } else {
            self.dp.set_mode(mode)
        };
        let generation = match written {
            Ok(g) => g,
            Err(e) => {
                if let Err(e) = self.runtime.modes.save(&self.runtime.path) {
                    tracing::error!(error = %e, "cannot restore the runtime mode file");
                }
                return Err(format!("writing the mode into the kernel: {e}"));
            }
        };
        let mode_from_runtime = modes.global.is_some();
        self.runtime.modes = modes;
        let mut s = self.status.write().unwrap_or_else(|e| e.into_inner());
        s.mode = Some(mode);
        s.mode_from_runtime = mode_from_runtime;
        s.overrides = shown;
        s.generation = generation;
        Ok(generation)
    }
}
