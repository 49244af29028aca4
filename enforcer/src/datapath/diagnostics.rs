//! The datapath's internal failures, from the agent's side (the kernel's
//! side, and which failures count, is `enforcer-ebpf/src/diagnostics.rs`).
//!
//! - The log: the programs log through aya-log into `AYA_LOGS`, a ring
//!   buffer the agent pins beside the other maps (see
//!   `enforcer_common::AYA_LOGS`). [`DatapathLog`] reads it with aya-log's
//!   `EbpfLogger` and forwards every record to `tracing`, under the target
//!   [`LOG_TARGET`], so they appear in the agent's log, text or JSON, with
//!   its other lines. Because the ring is pinned, the programs of an
//!   earlier agent (still attached while this one starts, or alone while
//!   no agent runs) log into the ring this agent reads: nothing they
//!   logged is lost across a restart, up to the ring's size.
//! - The counter: [`FaultCounts`] sums `DP_ERRORS` over CPUs, exported as
//!   `enforcer_datapath_errors_total{kind}` (see `crate::metrics`).
//!
//! Neither is needed to enforce: a log that cannot be read is a warning,
//! and the agent runs on.

use std::{
    os::fd::{AsRawFd, RawFd},
    panic::{AssertUnwindSafe, catch_unwind},
    path::Path,
    sync::{Arc, Mutex, PoisonError},
};

use aya::maps::{MapData, PerCpuArray};
use aya_log::EbpfLogger;
use enforcer_common::{AYA_LOGS, DP_ERRORS, Fault, FaultState};
use tokio::io::{Interest, unix::AsyncFd};

use super::{Datapath, DatapathError, map_err, open_pinned};

/// The `tracing` target of the datapath's records (so
/// `ENFORCER_LOG=info,enforcer::datapath=off` would silence them).
pub const LOG_TARGET: &str = "enforcer::datapath";

/// Why the datapath's log cannot be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum DiagnosticsError {
    #[error("the datapath's log ring {AYA_LOGS}: {0}")]
    Log(#[source] aya_log::Error),
    #[error("waiting on the datapath's log ring {AYA_LOGS}: {0}")]
    Poll(#[source] std::io::Error),
}

/// One record of the datapath's log, as forwarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    pub level: log::Level,
    /// The eBPF module that logged it (`enforcer_ebpf::diagnostics`).
    pub module: String,
    pub message: String,
}

/// The `log::Log` that aya-log writes each record to: forwards it to
/// `tracing` and keeps it until [`DatapathLog::drain`] takes it.
struct Forward {
    read: Arc<Mutex<Vec<LogRecord>>>,
}

impl log::Log for Forward {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        // tracing's filter decides, as for the agent's own lines.
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args().to_string();
        let module = record.target();
        // tracing's level must be known where the event is declared.
        match record.level() {
            log::Level::Error => tracing::error!(target: LOG_TARGET, module, "{message}"),
            log::Level::Warn => tracing::warn!(target: LOG_TARGET, module, "{message}"),
            log::Level::Info => tracing::info!(target: LOG_TARGET, module, "{message}"),
            log::Level::Debug => tracing::debug!(target: LOG_TARGET, module, "{message}"),
            log::Level::Trace => tracing::trace!(target: LOG_TARGET, module, "{message}"),
        }
        self.read
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(LogRecord {
                level: record.level(),
                module: module.to_owned(),
                message,
            });
    }

    fn flush(&self) {}
}

/// aya-log's reader of the datapath's log ring.
pub struct DatapathLog {
    logger: EbpfLogger<Forward>,
    read: Arc<Mutex<Vec<LogRecord>>>,
}

impl AsRawFd for DatapathLog {
    fn as_raw_fd(&self) -> RawFd {
        self.logger.as_raw_fd()
    }
}

impl DatapathLog {
    /// Forwards every record waiting in the ring to `tracing`, and returns
    /// them.
    pub fn drain(&mut self) -> Vec<LogRecord> {
        let logger = &mut self.logger;
        // aya-log 0.3 panics on a record it cannot decode; the record is
        // consumed by then, so the next ones are still read. Only a
        // datapath built with another aya-log could write one.
        if catch_unwind(AssertUnwindSafe(|| logger.flush())).is_err() {
            tracing::warn!(
                target: LOG_TARGET,
                "a record of the datapath's log could not be decoded; skipped"
            );
        }
        std::mem::take(&mut *self.read.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Forwards records as the datapath writes them (the ring wakes its
    /// reader), on the current tokio runtime, until the returned handle is
    /// dropped. What is left in the ring then is read by the next agent.
    pub fn spawn(self) -> Result<LogForwarder, DiagnosticsError> {
        // SAFETY: the logger owns its ring's fd for as long as it lives and
        // always reports that same fd (`as_raw_fd` above).
        let mut ring = unsafe { AsyncFd::register_with_interest(self, Interest::READABLE) }
            .map_err(|e| DiagnosticsError::Poll(e.into_parts().1))?;
        let task = tokio::spawn(async move {
            loop {
                let mut ready = match ring.readable_mut().await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "stopped reading the datapath's log");
                        return;
                    }
                };
                // Forwarded as they are read; the copies are not needed.
                drop(ready.get_inner_mut().drain());
                ready.clear_ready();
            }
        });
        Ok(LogForwarder { task })
    }
}

/// The task forwarding the datapath's log; dropping it stops it.
pub struct LogForwarder {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LogForwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Datapath {
    /// The reader of the datapath's log ring. aya-log takes the map out of
    /// the loaded object, so there is one reader per load; a second call
    /// fails.
    pub fn take_log(&mut self) -> Result<DatapathLog, DiagnosticsError> {
        let read = Arc::default();
        let logger = EbpfLogger::init_with_logger(
            &mut self.ebpf,
            Forward {
                read: Arc::clone(&read),
            },
        )
        .map_err(DiagnosticsError::Log)?;
        Ok(DatapathLog { logger, read })
    }
}

/// Starts forwarding the datapath's log to the agent's (the agent's one
/// call): `None`, with a warning, when it cannot, since enforcement does
/// not depend on it. Call it on the tokio runtime; keep the handle.
pub fn forward_log(dp: &mut Datapath) -> Option<LogForwarder> {
    match dp.take_log().and_then(DatapathLog::spawn) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(error = %e, "the datapath's internal failures will be counted but not logged");
            None
        }
    }
}

/// A handle on the pinned `DP_ERRORS`, independent of the loaded programs,
/// and on those carried from earlier layouts (see [`super::carry`]).
pub struct FaultCounts {
    /// This layout's map first, then the carried ones.
    maps: Vec<PerCpuArray<MapData, FaultState>>,
}

impl FaultCounts {
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        let mut maps = vec![
            PerCpuArray::try_from(open_pinned(pin_dir, DP_ERRORS)?).map_err(map_err(DP_ERRORS))?,
        ];
        for (_, map) in super::carry::open_carried(pin_dir, DP_ERRORS)? {
            maps.push(PerCpuArray::try_from(map).map_err(map_err(DP_ERRORS))?);
        }
        Ok(Self { maps })
    }

    /// Every kind's failures since the maps were created (carried ones
    /// included), summed over CPUs, zeros included (a counter that exists
    /// from the start is one an alert can watch).
    pub fn read(&self) -> Result<Vec<(Fault, u64)>, DatapathError> {
        Fault::ALL
            .iter()
            .map(|&fault| {
                let mut total = 0u64;
                for map in &self.maps {
                    let per_cpu = map.get(&(fault as u32), 0).map_err(map_err(DP_ERRORS))?;
                    total = per_cpu.iter().fold(total, |a, s| a.wrapping_add(s.count));
                }
                Ok((fault, total))
            })
            .collect()
    }
}
