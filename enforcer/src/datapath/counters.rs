//! Reading the per-CPU counters from the pinned maps: connection decisions
//! (`CONN_COUNTS`), packets and bytes seen by the packet hooks
//! (`PKT_COUNTS`, `BYTE_COUNTS`), events not emitted (`EVENT_STATS`) and
//! the datapath's internal failures (`DP_ERRORS`, see [`super::diagnostics`]);
//! each summed with the same map carried from earlier layouts, so they
//! continue across a layout upgrade (see [`super::carry`]). And the same
//! decisions by scope entry ([`CounterReader::read_scoped`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::Mutex,
};

use aya::maps::{HashMap, Map, MapData, PerCpuArray, PerCpuHashMap};
use enforcer_common::{
    BYTE_COUNTS, CONN_COUNTS, CounterBlock, EVENT_STATS, EVENT_SUPPRESSED_FULL,
    EVENT_SUPPRESSED_RATE, Family, Hook, Outcome, PKT_COUNTS, SCOPE_COUNTS, SCOPE_KIND_CONNECTIONS,
    SCOPE_KIND_PACKETS, SCOPE_MISS_FULL, SCOPE_MISS_NONE, SCOPE_MISSES, SCOPE_NAMES, ScopeCount,
    ScopeKey, ScopeName, counter_index,
};

use super::{
    DatapathError, carry, diagnostics::FaultCounts, map_err, open_pinned, scopes::read_names,
};

/// The `scope` of decisions not counted under a configured entry: the
/// scope table was full, no entry was found (a cgroup between its links
/// and the coverage loop writing its id), or the slot lost its name.
pub const SCOPE_OVERFLOW: &str = "overflow";
/// The `scope` of counts carried from a layout that had no scope counts
/// (9 and older).
pub const SCOPE_CARRIED: &str = "carried";

/// One non-zero counter of one scope entry (or [`SCOPE_OVERFLOW`],
/// [`SCOPE_CARRIED`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopedCount {
    pub scope: String,
    pub count: Count,
}

/// Decisions the kernel could not count by scope (summed over CPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScopeMisses {
    /// The scope table had no room for a new key.
    pub table_full: u64,
    /// No scope entry was found for the cgroup or interface.
    pub no_scope: u64,
}

/// (kind, hook, family, country, outcome), raw.
type RawKey = (u8, u8, u8, u16, u8);

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
    scope_counts: PerCpuHashMap<MapData, ScopeKey, ScopeCount>,
    scope_names: HashMap<MapData, u32, ScopeName>,
    scope_misses: PerCpuArray<MapData, u64>,
    /// The `overflow` value last reported per key: see [`Self::read_scoped`].
    overflow_seen: Mutex<BTreeMap<RawKey, u64>>,
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
            scope_counts: PerCpuHashMap::try_from(open_pinned(pin_dir, SCOPE_COUNTS)?)
                .map_err(map_err(SCOPE_COUNTS))?,
            scope_names: HashMap::try_from(open_pinned(pin_dir, SCOPE_NAMES)?)
                .map_err(map_err(SCOPE_NAMES))?,
            scope_misses: PerCpuArray::try_from(open_pinned(pin_dir, SCOPE_MISSES)?)
                .map_err(map_err(SCOPE_MISSES))?,
            overflow_seen: Mutex::new(BTreeMap::new()),
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
        read_blocks(kind, &self.blocks[kind as usize])
    }

    /// Every non-zero counter of one kind by scope entry, in (scope, hook,
    /// family, country, outcome) order; per (hook, family, country,
    /// outcome) they add up to [`Self::read`]'s count.
    ///
    /// The kernel counts a decision in `SCOPE_COUNTS` and then in the
    /// totals, and this reads the totals first: so no total read is ever
    /// smaller than what its scope entries hold, and the difference, the
    /// decisions counted under no entry, is reported as [`SCOPE_OVERFLOW`].
    /// That difference reads low while decisions are being counted between
    /// the two reads (never high), so each key's value is the largest seen
    /// yet, and a counter never goes backwards; it is exact when quiet.
    /// The totals carried from older layouts are [`SCOPE_CARRIED`].
    pub fn read_scoped(&self, kind: CounterKind) -> Result<Vec<ScopedCount>, DatapathError> {
        let maps = &self.blocks[kind as usize];
        let current = read_blocks(kind, &maps[..1])?;
        let carried = read_blocks(kind, &maps[1..])?;
        let want = match kind {
            CounterKind::Connections => SCOPE_KIND_CONNECTIONS,
            CounterKind::Packets | CounterKind::Bytes => SCOPE_KIND_PACKETS,
        };
        let names = read_names(&self.scope_names);
        let mut out: BTreeMap<(String, RawKey), u64> = BTreeMap::new();
        let mut scoped: BTreeMap<RawKey, u64> = BTreeMap::new();
        for item in self.scope_counts.iter() {
            let (k, values) = item.map_err(map_err(SCOPE_COUNTS))?;
            if k.kind != want {
                continue;
            }
            let v = values.iter().fold(0u64, |a, c| {
                a.wrapping_add(match kind {
                    CounterKind::Bytes => c.bytes,
                    _ => c.count,
                })
            });
            if v == 0 {
                continue;
            }
            let key = (0, k.hook, k.family, k.country, k.outcome);
            let label = names
                .get(&k.scope)
                .cloned()
                .unwrap_or_else(|| SCOPE_OVERFLOW.to_owned());
            *out.entry((label, key)).or_default() += v;
            *scoped.entry(key).or_default() += v;
        }
        {
            let mut seen = self.overflow_seen.lock().unwrap_or_else(|e| e.into_inner());
            for c in &current {
                let key = raw_key(c);
                let rest = c
                    .value
                    .saturating_sub(scoped.get(&key).copied().unwrap_or(0));
                let last = seen
                    .entry((kind as u8, key.1, key.2, key.3, key.4))
                    .or_default();
                *last = (*last).max(rest);
                if *last > 0 {
                    *out.entry((SCOPE_OVERFLOW.to_owned(), key)).or_default() += *last;
                }
            }
        }
        for c in &carried {
            *out.entry((SCOPE_CARRIED.to_owned(), raw_key(c)))
                .or_default() += c.value;
        }
        Ok(out
            .into_iter()
            .filter_map(|((scope, (_, hook, family, country, outcome)), value)| {
                Some(ScopedCount {
                    scope,
                    count: Count {
                        hook: Hook::from_raw(hook.into())?,
                        family: Family::from_raw(family.into())?,
                        country,
                        outcome: Outcome::from_raw(outcome.into())?,
                        value,
                    },
                })
            })
            .collect())
    }

    /// Decisions the kernel could not count by scope, by reason.
    pub fn scope_misses(&self) -> Result<ScopeMisses, DatapathError> {
        let total = |index: u32| -> Result<u64, DatapathError> {
            let per_cpu = self
                .scope_misses
                .get(&index, 0)
                .map_err(map_err(SCOPE_MISSES))?;
            Ok(per_cpu.iter().fold(0u64, |a, b| a.wrapping_add(*b)))
        };
        Ok(ScopeMisses {
            table_full: total(SCOPE_MISS_FULL)?,
            no_scope: total(SCOPE_MISS_NONE)?,
        })
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

/// The non-zero counters of one kind summed over `maps`.
fn read_blocks(
    kind: CounterKind,
    maps: &[PerCpuArray<MapData, CounterBlock>],
) -> Result<Vec<Count>, DatapathError> {
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

fn raw_key(c: &Count) -> RawKey {
    (0, c.hook as u8, c.family as u8, c.country, c.outcome as u8)
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
