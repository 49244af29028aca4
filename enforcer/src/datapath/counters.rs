//! Reading the per-CPU counters from the pinned maps: connection decisions
//! (`CONN_COUNTS`), packets and bytes seen by the packet hooks
//! (`PKT_COUNTS`, `BYTE_COUNTS`), events not emitted (`EVENT_STATS`) and
//! the datapath's internal failures (`DP_ERRORS`, see [`super::diagnostics`]).

use std::path::Path;

use aya::maps::{MapData, PerCpuArray};
use enforcer_common::{
    BYTE_COUNTS, CONN_COUNTS, CounterBlock, EVENT_STATS, EVENT_SUPPRESSED_FULL,
    EVENT_SUPPRESSED_RATE, Family, Hook, Outcome, PKT_COUNTS, counter_index,
};

use super::{DatapathError, diagnostics::FaultCounts, map_err, open_pinned};

/// One non-zero counter, summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Count {
    pub hook: Hook,
    pub family: Family,
    /// Country index, 0 = unknown.
    pub country: u16,
    pub outcome: Outcome,
    pub value: u64,
}

/// Which of the three counter maps to read; they share one layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterKind {
    Connections,
    Packets,
    Bytes,
}

impl CounterKind {
    pub const ALL: &'static [CounterKind] = &[Self::Connections, Self::Packets, Self::Bytes];

    fn map_name(self) -> &'static str {
        match self {
            Self::Connections => CONN_COUNTS,
            Self::Packets => PKT_COUNTS,
            Self::Bytes => BYTE_COUNTS,
        }
    }
}

/// Events the kernel did not emit, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Suppressed {
    /// Over the per-CPU rate limit.
    pub rate_limit: u64,
    /// The ring buffer was full.
    pub ring_full: u64,
}

/// A handle on the pinned counters, independent of the loaded programs.
pub struct CounterReader {
    blocks: [PerCpuArray<MapData, CounterBlock>; 3],
    event_stats: PerCpuArray<MapData, u64>,
    faults: FaultCounts,
}

impl CounterReader {
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        let open = |kind: CounterKind| {
            let name = kind.map_name();
            PerCpuArray::try_from(open_pinned(pin_dir, name)?).map_err(map_err(name))
        };
        Ok(Self {
            blocks: [
                open(CounterKind::Connections)?,
                open(CounterKind::Packets)?,
                open(CounterKind::Bytes)?,
            ],
            event_stats: PerCpuArray::try_from(open_pinned(pin_dir, EVENT_STATS)?)
                .map_err(map_err(EVENT_STATS))?,
            faults: FaultCounts::open(pin_dir)?,
        })
    }

    /// The datapath's internal failures by kind, zeros included.
    pub fn faults(&self) -> Result<Vec<(enforcer_common::Fault, u64)>, DatapathError> {
        self.faults.read()
    }

    /// Every non-zero connection counter, in (hook, family, country,
    /// outcome) order.
    pub fn connections(&self) -> Result<Vec<Count>, DatapathError> {
        self.read(CounterKind::Connections)
    }

    /// Every non-zero counter of one kind, in (hook, family, country,
    /// outcome) order.
    pub fn read(&self, kind: CounterKind) -> Result<Vec<Count>, DatapathError> {
        let map = &self.blocks[kind as usize];
        let mut out = Vec::new();
        for &hook in Hook::ALL {
            for &family in Family::ALL {
                let per_cpu = map
                    .get(&counter_index(hook, family), 0)
                    .map_err(map_err(kind.map_name()))?;
                for (country, row) in sum(&per_cpu).counts.iter().enumerate() {
                    for (&outcome, &value) in Outcome::ALL.iter().zip(row) {
                        if value != 0 {
                            out.push(Count {
                                hook,
                                family,
                                country: country as u16,
                                outcome,
                                value,
                            });
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Events not emitted since the maps were created.
    pub fn suppressed(&self) -> Result<Suppressed, DatapathError> {
        let total = |index: u32| -> Result<u64, DatapathError> {
            let per_cpu = self
                .event_stats
                .get(&index, 0)
                .map_err(map_err(EVENT_STATS))?;
            Ok(per_cpu.iter().fold(0u64, |a, b| a.wrapping_add(*b)))
        };
        Ok(Suppressed {
            rate_limit: total(EVENT_SUPPRESSED_RATE)?,
            ring_full: total(EVENT_SUPPRESSED_FULL)?,
        })
    }
}

fn sum(per_cpu: &[CounterBlock]) -> Box<CounterBlock> {
    let mut total = Box::new(CounterBlock {
        counts: [[0; Outcome::COUNT]; enforcer_common::COUNTRY_SLOTS],
    });
    for block in per_cpu {
        for (t, row) in total.counts.iter_mut().zip(block.counts.iter()) {
            for (a, b) in t.iter_mut().zip(row) {
                *a = a.wrapping_add(*b);
            }
        }
    }
    total
}
