//! The audit records the agent writes about itself: policy loads (what is
//! in force after a success, the error after a failure) and the periodic
//! checkpoint (what is in force now, and the events the kernel did not
//! emit since the last one).

use enforcer_common::Mode;

use crate::{
    audit::{self, Kind, LoadResult, LoadTrigger, SharedAudit},
    datapath::counters::{CounterReader, Suppressed},
    status::SharedStatus,
};

/// The audit record of a policy load.
pub(super) fn load_record(
    status: &SharedStatus,
    trigger: LoadTrigger,
    error: Option<String>,
) -> Kind {
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

/// Writes the checkpoint record, preceded by an `events_suppressed` record
/// when the kernel dropped events since the last checkpoint.
pub(super) fn checkpoint(
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
    checkpoint_record(status, audit);
}

/// The checkpoint record alone (what is in force now), flushed.
pub(super) fn checkpoint_record(status: &SharedStatus, audit: &SharedAudit) {
    let s = status.read().unwrap_or_else(|e| e.into_inner());
    audit.record(Kind::Checkpoint(audit::Checkpoint {
        mode: s.mode.map_or("none", Mode::label).to_owned(),
        policy_sha256: s.policy_sha256.clone(),
        databases: s.sources.iter().map(Into::into).collect(),
        generation: u64::from(s.generation),
        records_since_last: audit.take_since_checkpoint(),
        note: None,
    }));
    drop(s);
    audit.flush();
}
