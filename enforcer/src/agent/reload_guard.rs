//! The reload guard: new GeoIP data that would move more address space
//! between allowed and refused than `geoip.max_flip` allows is held, not
//! applied (see [`crate::flip`] for the figures, docs/geoip-data.md for the
//! workflow).
//!
//! Every reload after the start is gated, whatever asked for it: the file
//! watch, SIGHUP (which is also what `systemctl reload` and an updater's
//! post-hook send) and `enforcer reload`. An operator who sends SIGHUP for a
//! config edit may not know that a new database arrived in the meantime;
//! only `enforcer reload --accept-change` passes the guard, and says who
//! did.
//!
//! A start that adopts a datapath is gated too ([`guard_start`]): something
//! is in force, and a restart (`systemctl restart`, a crash and `Restart=`,
//! a package upgrade) must not put held data live unreviewed. An adopted
//! datapath's tables are not read back; the data in force is the
//! [baseline](crate::baseline) every successful apply writes into the
//! runtime directory, which lives as long as the pins (both are cleared at
//! reboot). Beyond the bound, the start applies the baseline's data under
//! the current config and reports the hold as a reload hold does (trigger
//! `start`). Adopted pins without a usable baseline (the first start of
//! this version, a removed or damaged file) cannot be compared: the start
//! goes on with the data on disk and says so loudly (warn log, `status`,
//! `enforcer_reload_guard_baseline_missing`). A fresh start (no pins) has
//! nothing in force and is not gated.
//!
//! A hold applies nothing: the policy in force stays, and so do the file
//! watch and the audit key. It is shown in `status` and the metrics until a
//! reload applies a policy (an accept, new data within the bound, or the
//! old data back on disk). The same data arriving again (the same path and
//! SHA-256 for every source) is not held and recorded again: it is still
//! refused, with the same message.
//!
//! The data in force is kept in memory for the comparison (the
//! [`GeoTable`] the last applied policy was compiled from, about 5 MiB for
//! GeoLite2 Country): the files it came from may have been replaced. Before
//! the guard the agent held the start's table for its whole life anyway
//! (the start's `Prepared` lived as long as `serve`); now it holds the one
//! in force instead. The sweep streams over both tables
//! ([`geoip::family_moves`]): it adds no copy of either.

use geoip::{GeoTable, SourceInfo};

use super::{Running, prepare::Prepared};
use crate::{
    audit::{self, DatabaseRecord, Kind, LoadTrigger, SharedAudit},
    baseline,
    control::peer::PeerCreds,
    datapath,
    flip::{Flip, HeldReload},
    policy::{CompiledPolicy, SourceReport},
    status::{SharedStatus, unix_now},
};

/// What the guard says about a prepared reload.
pub(super) enum Check {
    /// Apply it; with the flip when it exceeds the bound and was accepted.
    Pass(Option<Flip>),
    /// Hold it: the flip exceeds the bound.
    Hold(Flip),
}

impl Running {
    /// Compares the data `p` would put in force with the data in force,
    /// under `p`'s policy and bound.
    pub(super) fn check_flip(&self, p: &Prepared, accept_change: bool) -> Check {
        let Some(in_force) = &self.geo_in_force else {
            return Check::Pass(None);
        };
        // The same files (by content) locate every address alike: nothing
        // flips, whatever the policy; skip the sweep.
        let same = {
            let s = self.read_status();
            s.sources.len() == p.policy.sources.len()
                && s.sources
                    .iter()
                    .zip(&p.policy.sources)
                    .all(|(a, b)| a.sha256 == b.info.sha256)
        };
        if same {
            return Check::Pass(None);
        }
        let flip = tokio::task::block_in_place(|| {
            Flip::compute(
                in_force,
                &p.policy.geo,
                &p.policy.approval,
                &p.config.max_flip,
            )
        });
        match (flip.exceeds(), accept_change) {
            (false, _) => Check::Pass(None),
            (true, true) => Check::Pass(Some(flip)),
            (true, false) => Check::Hold(flip),
        }
    }

    /// Holds the reload of `p`: shown in `status` and the metrics, logged
    /// and audited once per new data. Returns the reload's error message.
    pub(super) fn hold(
        &mut self,
        trigger: LoadTrigger,
        caller: Option<&PeerCreds>,
        flip: Flip,
        p: &Prepared,
    ) -> String {
        let databases: Vec<SourceInfo> = p.policy.sources.iter().map(|s| s.info.clone()).collect();
        record_hold(&self.status, &self.audit, trigger, caller, flip, databases)
    }

    /// After a policy was applied: the data it was compiled from is in
    /// force, and no reload is held any more. `accepted` (with who and the
    /// data before) writes the accept record.
    pub(super) fn applied(
        &mut self,
        geo: GeoTable,
        accepted: Option<(Flip, &PeerCreds, Vec<DatabaseRecord>)>,
    ) {
        self.geo_in_force = Some(geo);
        self.write_baseline();
        let (held, applied, generation) = {
            let mut s = self.status.write().unwrap_or_else(|e| e.into_inner());
            let applied: Vec<DatabaseRecord> = s.sources.iter().map(Into::into).collect();
            (s.reload_held.take(), applied, s.generation)
        };
        let Some((flip, peer, before)) = accepted else {
            if held.is_some() {
                tracing::info!("the held GeoIP data is no longer held: a reload applied a policy");
            }
            return;
        };
        let held: Vec<DatabaseRecord> = held
            .map(|h| h.databases.iter().map(Into::into).collect())
            .unwrap_or_default();
        let same_as_held = held.len() == applied.len()
            && held.iter().zip(&applied).all(|(a, b)| a.sha256 == b.sha256);
        tracing::warn!(
            uid = peer.uid,
            pid = ?peer.pid,
            flip = %flip.summary(),
            "GeoIP data beyond geoip.max_flip accepted and applied"
        );
        self.audit
            .record(Kind::ReloadAccepted(audit::ReloadAccepted {
                uid: peer.uid,
                gid: Some(peer.gid),
                pid: peer.pid,
                flip: flip.figures(),
                databases_before: before,
                databases_applied: applied,
                databases_held: if same_as_held { Vec::new() } else { held },
                generation: u64::from(generation),
            }));
    }
}

impl Running {
    /// Writes the [baseline](crate::baseline) of the data in force into the
    /// runtime directory. A failure is logged, counted and shown in
    /// `status`; it never fails the apply that preceded it.
    pub(super) fn write_baseline(&self) {
        let Some(geo) = &self.geo_in_force else {
            return;
        };
        let run_dir = &self.config.run_dir;
        let (sources, policy_sha256) = {
            let s = self.read_status();
            (s.sources.clone(), s.policy_sha256.clone())
        };
        let result = tokio::task::block_in_place(|| {
            baseline::write(run_dir, geo, &sources, policy_sha256.as_deref())
        });
        let mut s = self.status.write().unwrap_or_else(|e| e.into_inner());
        s.baseline.path = Some(baseline::manifest_path(run_dir));
        match result {
            Ok(()) => {
                s.baseline.written_unix = Some(unix_now());
                s.baseline.last_write_error = None;
            }
            Err(e) => {
                s.baseline.write_failures += 1;
                s.baseline.last_write_error = Some(e.to_string());
                drop(s);
                tracing::warn!(
                    error = %e,
                    "cannot write the reload guard's baseline of the GeoIP data in force; the policy is applied, but a restart before the next good write cannot compare the data on disk with it"
                );
            }
        }
    }
}

/// Records a hold: `status` (and so the metrics), a warning, and one
/// `reload_held` audit record per new data. Returns the error message a
/// reload gives.
pub(super) fn record_hold(
    status: &SharedStatus,
    audit: &SharedAudit,
    trigger: LoadTrigger,
    caller: Option<&PeerCreds>,
    flip: Flip,
    databases: Vec<SourceInfo>,
) -> String {
    let message = format!(
        "reload held: the new GeoIP data would flip more address space between allowed and refused than geoip.max_flip allows ({}); the policy in force stays. Review it with `enforcer status` and `enforcer geoip diff OLD NEW --config CONFIG`, then apply it with `enforcer reload --accept-change`",
        flip.summary()
    );
    let mut s = status.write().unwrap_or_else(|e| e.into_inner());
    if s.reload_held
        .as_ref()
        .is_some_and(|h| h.same_data(&databases))
    {
        // Held once per content: the figures may differ under an edited
        // policy, and status shows the latest.
        if let Some(h) = s.reload_held.as_mut() {
            h.flip = flip;
        }
        drop(s);
        tracing::info!(
            trigger = trigger.label(),
            "the held GeoIP data is still held"
        );
        return message;
    }
    let in_force: Vec<DatabaseRecord> = s.sources.iter().map(Into::into).collect();
    s.reload_held = Some(HeldReload {
        since_unix: unix_now(),
        trigger: trigger.label(),
        flip: flip.clone(),
        databases: databases.clone(),
    });
    drop(s);
    tracing::warn!(
        trigger = trigger.label(),
        flip = %flip.summary(),
        held = ?databases.iter().map(|d| (d.path.display().to_string(), d.sha256.clone())).collect::<Vec<_>>(),
        "reload held: the new GeoIP data flips more than geoip.max_flip allows; the policy in force stays until `enforcer reload --accept-change`"
    );
    audit.record(Kind::ReloadHeld(audit::ReloadHeld {
        trigger,
        uid: caller.map(|c| c.uid),
        pid: caller.and_then(|c| c.pid),
        flip: flip.figures(),
        databases_in_force: in_force,
        databases_held: databases.iter().map(Into::into).collect(),
    }));
    message
}

/// A start that holds the data on disk: the flip, and the data held.
pub(super) struct StartHold {
    pub flip: Flip,
    pub held: Vec<SourceInfo>,
}

/// The guard at a start that adopted a datapath: compares the data
/// `prepared` read from disk with the baseline of the data in force.
/// Beyond the bound, `prepared`'s policy is replaced by the one compiled
/// from its config and the baseline's table, and the hold is returned for
/// [`record_hold`] (once the start's own records are written). Without a
/// usable baseline it says so and leaves `prepared` as it is.
pub(super) fn guard_start(prepared: &mut Prepared, status: &SharedStatus) -> Option<StartHold> {
    let run_dir = prepared.config.run_dir.clone();
    let missing = |why: String| {
        tracing::warn!(
            reason = %why,
            "the datapath was adopted with GeoIP data in force, but there is no usable baseline of that data: the reload guard cannot compare, and the data on disk goes live unchecked (`enforcer geoip diff` and `enforcer status` help review it)"
        );
        let mut s = status.write().unwrap_or_else(|e| e.into_inner());
        s.baseline.path = Some(baseline::manifest_path(&run_dir));
        s.baseline.missing_at_start = Some(why);
        None
    };
    let manifest = match baseline::read_manifest(&run_dir) {
        Ok(Some(m)) => m,
        Ok(None) => {
            return missing(format!(
                "{}: no baseline (the first start of a version that keeps one, or it was removed)",
                baseline::manifest_path(&run_dir).display()
            ));
        }
        Err(e) => return missing(e.to_string()),
    };
    let disk: Vec<SourceInfo> = prepared
        .policy
        .sources
        .iter()
        .map(|s| s.info.clone())
        .collect();
    // The same files by content: nothing can flip; the table is not read.
    if manifest.same_data(&disk) {
        tracing::info!("the GeoIP data on disk is the data in force (by the baseline)");
        return None;
    }
    let b = match baseline::read_table(&run_dir, manifest) {
        Ok(b) => b,
        Err(e) => return missing(e.to_string()),
    };
    let flip = Flip::compute(
        &b.geo,
        &prepared.policy.geo,
        &prepared.policy.approval,
        &prepared.config.max_flip,
    );
    if !flip.exceeds() {
        tracing::info!(
            flip = %flip.summary(),
            "the GeoIP data on disk differs from the data in force within geoip.max_flip: applied"
        );
        return None;
    }
    let sources = b
        .sources
        .iter()
        .map(|info| SourceReport {
            info: info.clone(),
            stats: geoip::Stats::default(),
            warnings: Vec::new(),
            load_seconds: 0.0,
        })
        .collect();
    let policy = match CompiledPolicy::from_parts(&prepared.config, b.geo, sources) {
        Ok(p) => p,
        Err(e) => return missing(format!("the baseline's data does not compile: {e}")),
    };
    if let Err(e) = datapath::check_capacity(&policy) {
        return missing(format!("the baseline's data does not fit: {e}"));
    }
    let from_disk = std::mem::replace(&mut prepared.policy, policy);
    Some(StartHold {
        flip,
        held: from_disk.sources.into_iter().map(|s| s.info).collect(),
    })
}
