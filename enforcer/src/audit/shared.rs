//! The running agent's audit log, shared by the main loop (starts, stops,
//! loads, mode changes, checkpoints) and the events task (events).
//!
//! Writing evidence must never weaken enforcement: a record that cannot be
//! written is logged and counted (`enforcer_audit_write_errors_total`), and
//! the agent goes on. Records are buffered and flushed (written, fsynced,
//! head updated) at the end of each action and of each batch of events.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use super::{AuditError, AuditLog, Kind};
use crate::status::SinkHealth;

#[derive(Debug, Default)]
struct Inner {
    log: Mutex<Option<AuditLog>>,
    records: AtomicU64,
    errors: AtomicU64,
    since_checkpoint: AtomicU64,
    health: Arc<SinkHealth>,
}

/// A cheap handle; clones share the log.
#[derive(Clone, Debug, Default)]
pub struct SharedAudit(Arc<Inner>);

impl SharedAudit {
    /// Opens (creating it and its directory, mode 0750) the log at `file`,
    /// or none when the audit log is off. Errors name the file: a log that
    /// is held by another agent or whose tail does not verify stops the
    /// start, before the kernel is touched.
    pub fn open(file: Option<&Path>) -> Result<SharedAudit, AuditError> {
        let Some(file) = file else {
            return Ok(SharedAudit::default());
        };
        if let Some(dir) = file.parent()
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .map_err(|e| AuditError::Io {
                    path: dir.to_owned(),
                    what: "creating the audit log's directory",
                    error: e,
                })?;
        }
        let log = AuditLog::open(file)?;
        Ok(SharedAudit(Arc::new(Inner {
            log: Mutex::new(Some(log)),
            health: Arc::new(SinkHealth::new("audit", Some(file.to_owned()))),
            ..Inner::default()
        })))
    }

    fn with<T>(&self, f: impl FnOnce(&mut AuditLog) -> Result<T, AuditError>) -> Option<T> {
        let mut guard = self.0.log.lock().unwrap_or_else(|e| e.into_inner());
        let log = guard.as_mut()?;
        let result = f(log);
        let (dropped, reopens, pending) = (log.dropped(), log.reopens(), log.buffered() as u64);
        drop(guard);
        self.0.health.update(|s| {
            s.dropped = dropped;
            s.reopens = reopens;
            s.pending_bytes = pending;
        });
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.errors.fetch_add(1, Ordering::Relaxed);
                // Once per failing flush, not per record: appends fail
                // only on encoding.
                tracing::error!(error = %e, "cannot write the audit log; enforcement is unaffected");
                self.0.health.failed(e.to_string());
                None
            }
        }
    }

    /// Appends a record (buffered; dropped beyond the memory bound while
    /// writes fail, see [`crate::audit::MAX_PENDING`]).
    pub fn record(&self, kind: Kind) {
        if self
            .with(|log| log.append(kind))
            .is_some_and(|a| !a.dropped)
        {
            self.0.records.fetch_add(1, Ordering::Relaxed);
            self.0.since_checkpoint.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Opens the log's path again when the file there is no longer the
    /// one open (rotated, moved, deleted): SIGHUP and `enforcer reload`.
    /// Every flush checks the same.
    pub fn reopen(&self) {
        self.with(|log| log.reopen_if_moved().map(drop));
    }

    /// Signs every checkpoint from now on with `signer` (none: unsigned);
    /// the start and every successful reload set it from the config.
    pub fn set_signer(&self, signer: Option<super::NoteSigner>) {
        self.with(|log| {
            log.set_signer(signer);
            Ok(())
        });
    }

    /// The log's health for `status` and the metrics.
    pub fn health(&self) -> Arc<SinkHealth> {
        Arc::clone(&self.0.health)
    }

    /// Writes what is buffered to disk and updates the head.
    pub fn flush(&self) {
        if self.with(AuditLog::flush).is_some() {
            self.0.health.update(|s| s.healthy = true);
        }
    }

    /// [`record`](Self::record) then [`flush`](Self::flush).
    pub fn record_flush(&self, kind: Kind) {
        self.record(kind);
        self.flush();
    }

    /// Records appended so far by this agent.
    pub fn records(&self) -> u64 {
        self.0.records.load(Ordering::Relaxed)
    }

    /// Appends or flushes that failed.
    pub fn errors(&self) -> u64 {
        self.0.errors.load(Ordering::Relaxed)
    }

    /// Records since the last call (for a checkpoint).
    pub fn take_since_checkpoint(&self) -> u64 {
        self.0.since_checkpoint.swap(0, Ordering::Relaxed)
    }

    /// The log's file and its last record's seq, when it is on.
    pub fn where_(&self) -> Option<(PathBuf, u64)> {
        let guard = self.0.log.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .as_ref()
            .map(|log| (log.path().to_owned(), log.last().seq))
    }
}
