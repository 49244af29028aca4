//! Reading the per-CPU decision counters from the pinned `CONN_COUNTS` map.

use std::path::Path;

use aya::maps::{MapData, PerCpuArray};
use enforcer_common::{CONN_COUNTS, CounterBlock, Family, Hook, Outcome, counter_index};

use super::{DatapathError, map_err, open_pinned};

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

/// A handle on the pinned counters, independent of the loaded programs.
pub struct CounterReader {
    map: PerCpuArray<MapData, CounterBlock>,
}

impl CounterReader {
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        let map = open_pinned(pin_dir, CONN_COUNTS)?;
        Ok(Self {
            map: PerCpuArray::try_from(map).map_err(map_err(CONN_COUNTS))?,
        })
    }

    /// Every non-zero connection counter, in (hook, family, country,
    /// outcome) order.
    pub fn connections(&self) -> Result<Vec<Count>, DatapathError> {
        let mut out = Vec::new();
        for &hook in Hook::ALL {
            for &family in Family::ALL {
                let per_cpu = self
                    .map
                    .get(&counter_index(hook, family), 0)
                    .map_err(map_err(CONN_COUNTS))?;
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
