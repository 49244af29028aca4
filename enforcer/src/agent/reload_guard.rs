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
//! did. The start is not gated: there is no data in force to compare with
//! (an adopted datapath's tables are not read back).
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

use geoip::GeoTable;

use super::{Running, prepare::Prepared};
use crate::{
    audit::{self, DatabaseRecord, Kind, LoadTrigger},
    control::peer::PeerCreds,
    flip::{Flip, HeldReload},
    status::unix_now,
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
        let databases: Vec<geoip::SourceInfo> =
            p.policy.sources.iter().map(|s| s.info.clone()).collect();
        let message = format!(
            "reload held: the new GeoIP data would flip more address space between allowed and refused than geoip.max_flip allows ({}); the policy in force stays. Review it with `enforcer status` and `enforcer geoip diff OLD NEW --config CONFIG`, then apply it with `enforcer reload --accept-change`",
            flip.summary()
        );
        let mut s = self.status.write().unwrap_or_else(|e| e.into_inner());
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
        self.audit.record(Kind::ReloadHeld(audit::ReloadHeld {
            trigger,
            uid: caller.map(|c| c.uid),
            pid: caller.and_then(|c| c.pid),
            flip: flip.figures(),
            databases_in_force: in_force,
            databases_held: databases.iter().map(Into::into).collect(),
        }));
        message
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
