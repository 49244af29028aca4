//! Reading the per-CPU counters from the pinned maps: connection decisions
//! (`CONN_COUNTS`), packets and bytes seen by the packet hooks
//! (`PKT_COUNTS`, `BYTE_COUNTS`), events not emitted (`EVENT_STATS`) and
//! the datapath's internal failures (`DP_ERRORS`, see [`super::diagnostics`]);
//! each summed with the same map carried from earlier layouts, so they
//! continue across a layout upgrade (see [`super::carry`]).

use std::{collections::BTreeSet, path::Path};

use aya::maps::{Map, MapData, PerCpuArray};
use enforcer_common::{
    BYTE_COUNTS, CONN_COUNTS, CounterBlock, EVENT_STATS, EVENT_SUPPRESSED_FULL,
    EVENT_SUPPRESSED_RATE, Family, Hook, Outcome, PKT_COUNTS, counter_index,
};

use super::{DatapathError, carry, diagnostics::FaultCounts, map_err, open_pinned};

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

/// A handle on the pinned counters, independent of the loaded programs:
/// this layout's maps and those carried from earlier layouts (see
/// [`super::carry`]), read as their sums.
pub struct CounterReader {
    /// Per kind: this layout's map first, then the carried ones.
    blocks: [Vec<PerCpuArray<MapData, CounterBlock>>; 3],
    event_stats: Vec<PerCpuArray<MapData, u64>>,
    faults: FaultCounts,
    /// The layouts counters were carried from, ascending.
    carried_from: Vec<u32>,
}

impl CounterReader {
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        let mut carried_from = BTreeSet::new();
        let mut open_all = |name: &'static str| -> Result<Vec<Map>, DatapathError> {
            let mut maps = vec![open_pinned(pin_dir, name)?];
            for (layout, map) in carry::open_carried(pin_dir, name)? {
                carried_from.insert(layout);
                maps.push(map);
            }
            Ok(maps)
        };
        let mut blocks = |kind: CounterKind| {
            let name = kind.map_name();
            open_all(name)?
                .into_iter()
                .map(|m| PerCpuArray::try_from(m).map_err(map_err(name)))
                .collect::<Result<Vec<_>, _>>()
        };
        let blocks = [
            blocks(CounterKind::Connections)?,
            blocks(CounterKind::Packets)?,
            blocks(CounterKind::Bytes)?,
        ];
        let event_stats = open_all(EVENT_STATS)?
            .into_iter()
            .map(|m| PerCpuArray::try_from(m).map_err(map_err(EVENT_STATS)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            blocks,
            event_stats,
            faults: FaultCounts::open(pin_dir)?,
            carried_from: carried_from.into_iter().collect(),
        })
    }

    /// The layouts whose counters are included (carried at an upgrade),
    /// ascending; empty when there were none.
    pub fn carried_from(&self) -> &[u32] {
        &self.carried_from
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
        let maps = &self.blocks[kind as usize];
        let mut out = Vec::new();
        for &hook in Hook::ALL {
            for &family in Family::ALL {
                let mut total = zero();
                for map in maps {
                    let per_cpu = map
                        .get(&counter_index(hook, family), 0)
                        .map_err(map_err(kind.map_name()))?;
                    add(&mut total, &per_cpu);
                }
                for (country, row) in total.counts.iter().enumerate() {
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
            let mut total = 0u64;
            for map in &self.event_stats {
                let per_cpu = map.get(&index, 0).map_err(map_err(EVENT_STATS))?;
                total = per_cpu.iter().fold(total, |a, b| a.wrapping_add(*b));
            }
            Ok(total)
        };
        Ok(Suppressed {
            rate_limit: total(EVENT_SUPPRESSED_RATE)?,
            ring_full: total(EVENT_SUPPRESSED_FULL)?,
        })
    }
}

fn zero() -> Box<CounterBlock> {
    Box::new(CounterBlock {
        counts: [[0; Outcome::COUNT]; enforcer_common::COUNTRY_SLOTS],
    })
}

/// Adds every CPU's block of one map to `total`.
fn add(total: &mut CounterBlock, per_cpu: &[CounterBlock]) {
    for block in per_cpu {
        for (t, row) in total.counts.iter_mut().zip(block.counts.iter()) {
            for (a, b) in t.iter_mut().zip(row) {
                *a = a.wrapping_add(*b);
            }
        }
    }
}
