//! Putting a prepared policy into force: the modes resolved (config plus
//! the runtime changes made with `enforcer mode`), the inactive slot
//! written, verified and flipped, the programs attached. The one path by
//! which start-up, reloads and file-watch refreshes change the kernel.

use std::path::PathBuf;

use anyhow::Context as _;
use enforcer_common::Mode;

use super::prepare::{Prepared, release_free_memory};
use crate::{
    config::Config,
    datapath::{Datapath, SlotReport},
    paths,
    runtime_mode::RuntimeModes,
    scope,
    status::{AgentStatus, SharedStatus, unix_now},
};

/// The modes to write: see [`effective_modes`].
pub(super) struct Modes {
    pub mode: Mode,
    /// Override cgroup ids and modes, for the kernel.
    pub ids: Vec<(u64, Mode)>,
    /// The same for people: path, mode, `config` or `runtime`.
    pub shown: Vec<(String, Mode, &'static str)>,
    /// The runtime changes that still apply.
    pub runtime: RuntimeModes,
    /// Overrides whose cgroup does not exist now: they apply once it is
    /// created (the coverage loop resolves them again).
    pub waiting: Vec<PathBuf>,
    /// Runtime changes dropped, and why (for the log).
    pub dropped: Vec<String>,
}

/// The config's mode and overrides with the runtime changes layered over
/// them, resolved to cgroup ids. Works on a copy of `runtime`, which the
/// caller keeps only if the policy is applied. An override whose cgroup
/// does not exist is waiting (a stopped service keeps its override for
/// when it starts again); a runtime override that no longer fits the
/// scope is dropped; a config override that does not fit fails (bad
/// input). Logs nothing: the coverage loop calls it every second.
pub(super) fn effective_modes(config: &Config, runtime: &RuntimeModes) -> anyhow::Result<Modes> {
    let mut runtime = runtime.clone();
    let mount = if runtime == RuntimeModes::default() {
        PathBuf::from("/")
    } else {
        paths::cgroup2_mount().context("finding the cgroup2 mount")?
    };
    let eff = runtime.apply(config, &mount);
    let mut dropped: Vec<String> = eff.dropped.iter().map(ToString::to_string).collect();
    let mut ids = Vec::new();
    let mut shown = Vec::new();
    let mut waiting = Vec::new();
    for o in &eff.overrides {
        let from_runtime = runtime.cgroups.contains_key(&o.cgroup);
        match scope::resolve_present_overrides(&config.scope, std::slice::from_ref(o)) {
            Ok((present, absent)) => {
                waiting.extend(absent);
                for r in present {
                    ids.push((r.target.id, r.mode));
                    shown.push((
                        r.target.path.display().to_string(),
                        r.mode,
                        if from_runtime { "runtime" } else { "config" },
                    ));
                }
            }
            Err(e) if from_runtime => {
                dropped.push(format!("{e}"));
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
        waiting,
        dropped,
    })
}

/// The agent's runtime mode state and the file it is kept in.
pub(super) struct RuntimeState {
    pub modes: RuntimeModes,
    pub path: PathBuf,
}

impl RuntimeState {
    /// Keeps `modes`, saving them when they changed. A save that fails is
    /// logged: the changes hold in the kernel until the agent stops.
    fn replace(&mut self, modes: RuntimeModes) {
        if modes != self.modes {
            if let Err(e) = modes.save(&self.path) {
                tracing::error!(error = %e, "cannot save the runtime mode changes; they hold until the agent stops");
            }
            self.modes = modes;
        }
    }
}

/// Writes, flips and attaches a prepared policy, all or nothing. Returns
/// the per-cgroup mode overrides written (cgroup id, mode).
///
/// On a fresh install the slot is written before any program is attached,
/// so no program ever decides with an empty slot. On an adopted datapath or
/// a reload the new links are staged first (attached next to the running
/// ones), then the slot is written and flipped (policy and mode together),
/// then the staged links replace the old ones; a failure before the flip
/// detaches the staged links and leaves the running policy and scope as
/// they were.
pub(super) fn apply(
    dp: &mut Datapath,
    p: &Prepared,
    status: &SharedStatus,
    fresh: bool,
    runtime: &mut RuntimeState,
) -> anyhow::Result<Vec<(u64, Mode)>> {
    let Modes {
        mode,
        ids: overrides,
        shown: shown_overrides,
        runtime: new_runtime,
        waiting,
        dropped,
    } = effective_modes(&p.config, &runtime.modes)?;
    for d in &dropped {
        tracing::warn!("runtime mode change no longer applies: {d}");
    }
    for w in &waiting {
        tracing::warn!(cgroup = %w.display(), "mode override's cgroup does not exist yet; it applies when the cgroup is created");
    }
    let staged = if fresh {
        None
    } else {
        Some(
            dp.stage(&p.targets, &p.interfaces)
                .context("attaching to the scope cgroups and interfaces")?,
        )
    };
    // The overrides, the event rate and the sample switch live outside the
    // slots: a load that fails before its flip puts them back, so nothing
    // of it stays.
    let before = dp
        .unslotted()
        .context("reading the per-cgroup mode overrides and event rate")?;
    let installed = dp
        .set_overrides(&overrides)
        .context("writing the per-cgroup mode overrides")
        .and_then(|()| {
            dp.set_event_limits(p.config.events.rate_per_cpu, p.config.events.burst)
                .context("setting the event rate")
        })
        .and_then(|()| {
            dp.set_allowed_sample(p.config.events.allowed_file.is_some())
                .context("turning the allowed sample on or off")
        })
        .and_then(|()| {
            dp.install(&p.policy, mode)
                .context("writing the policy into the kernel")
        });
    let report = match installed {
        Ok(report) => report,
        Err(e) => {
            match dp.restore(&before) {
                Ok(_) => {}
                Err(r) => tracing::error!(
                    error = %r,
                    "cannot restore the per-cgroup mode overrides and event rate after a failed load"
                ),
            }
            return Err(e);
        }
    };
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
    if !retired.versions.is_empty() {
        tracing::info!(versions = ?retired.versions, "detached and removed the pins of another layout version");
    }
    for (layout, maps) in &retired.carried {
        tracing::info!(
            from_layout = layout,
            maps,
            "counters carried from layout {layout}: they continue"
        );
    }
    let mode_from_runtime = new_runtime.global.is_some();
    runtime.replace(new_runtime);
    let mut s = status.write().unwrap_or_else(|e| e.into_inner());
    s.mode = Some(mode);
    s.mode_from_runtime = mode_from_runtime;
    s.overrides = shown_overrides;
    record_in_force(&mut s, p, &report);
    Ok(overrides)
}

/// What the status says about the policy now in force.
fn record_in_force(s: &mut AgentStatus, p: &Prepared, report: &SlotReport) {
    s.sources = p.policy.sources.iter().map(|r| r.info.clone()).collect();
    s.provenance = std::sync::Arc::clone(&p.policy.provenance);
    // What was just read is, as of that read, what is on disk. Said here,
    // under the same lock as the new sources, so that `status` never shows
    // the data in force next to the previous comparison ("differs") while
    // the rest of the reload (baseline, audit) finishes; the next check of
    // the files corrects it if a file changed since.
    s.sources_on_disk = s
        .sources
        .iter()
        .map(|info| crate::status::SourceOnDisk {
            path: info.path.clone(),
            state: crate::status::OnDisk::InForce,
        })
        .collect();
    s.geoip_max_age = p.config.geoip_max_age;
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
}
