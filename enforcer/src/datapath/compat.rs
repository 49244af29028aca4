//! Checking pinned maps against the layout this agent was built for.
//!
//! aya reuses a pinned map of the right name without looking at it
//! (`MapData::create_pinned_by_name`), so a map pinned by an agent with a
//! different layout would be written with the wrong sizes. The pin
//! directory is versioned and `CONFIG` carries the layout version, but a
//! bug or a hand-made pin must not be able to corrupt memory either: every
//! map's kernel description is compared with what the layout says before
//! any program is loaded.

use std::{mem::size_of, path::Path};

use aya::maps::{MapInfo, MapType};
use enforcer_common::{
    ALLOWED_SAMPLE, ALLOWED_SAMPLE_CAPACITY, AYA_LOGS, AYA_LOGS_BYTES, BYTE_COUNTS, CONFIG,
    CONFIG_LEN, CONN_COUNTS, COUNTER_BLOCKS, CounterBlock, DEST_CACHE, DEST_CACHE_SLOTS, DP_ERRORS,
    DP_ERRORS_LEN, DestCacheEntry, EVENT_STATE, EVENT_STATS, EVENT_STATS_LEN, EVENTS, EVENTS_BYTES,
    FaultState, GEO4_LEN, GEO4_TREE, GEO4_TREE_CAPACITY, GEO4_WORDS, GEO6_FINE, GEO6_FINE_BLOCKS,
    GEO6_INDEX, GEO6_INDEX_LEN, GEO6_LEAF_COUNT, GEO6_LEAVES, Geo6Block, Geo6Leaf, MODE_OVERRIDES,
    MODE_OVERRIDES_CAPACITY, PKT_COUNTS, POLICY, POLICY_LEN, RULE_BITMAP, RULE_BITMAP_LEN,
    RULE_BITMAP_WORDS, RULES_CAPACITY, RULES4, RULES6, RateState, Rule, SCOPE_BY_CG, SCOPE_BY_IF,
    SCOPE_CACHE, SCOPE_CACHE_SLOTS, SCOPE_COUNTS, SCOPE_COUNTS_CAPACITY, SCOPE_MISSES,
    SCOPE_MISSES_LEN, SCOPE_NAMES, SCOPE_NAMES_CAPACITY, SCOPE_TARGETS_CAPACITY, SampleEntry,
    SampleKey, ScopeCacheEntry, ScopeCount, ScopeKey, ScopeName,
};

use super::DatapathError;
use crate::paths::PinLayout;

/// What the kernel must report for one pinned map.
struct Expected {
    name: &'static str,
    kind: MapType,
    key: usize,
    value: usize,
    max_entries: u32,
}

fn expected() -> Vec<Expected> {
    let e = |name, kind, key, value, max_entries| Expected {
        name,
        kind,
        key,
        value,
        max_entries,
    };
    // An LPM key is a u32 prefix length and the address bytes.
    let lpm4 = 4 + 4;
    let lpm6 = 4 + 16;
    let mut v = vec![
        e(CONFIG, MapType::Array, 4, 4, CONFIG_LEN),
        e(POLICY, MapType::Array, 4, 4, POLICY_LEN),
        e(
            CONN_COUNTS,
            MapType::PerCpuArray,
            4,
            size_of::<CounterBlock>(),
            COUNTER_BLOCKS,
        ),
        e(
            PKT_COUNTS,
            MapType::PerCpuArray,
            4,
            size_of::<CounterBlock>(),
            COUNTER_BLOCKS,
        ),
        e(
            BYTE_COUNTS,
            MapType::PerCpuArray,
            4,
            size_of::<CounterBlock>(),
            COUNTER_BLOCKS,
        ),
        e(MODE_OVERRIDES, MapType::Hash, 8, 4, MODE_OVERRIDES_CAPACITY),
        e(EVENTS, MapType::RingBuf, 0, 0, EVENTS_BYTES),
        e(
            EVENT_STATE,
            MapType::PerCpuArray,
            4,
            size_of::<RateState>(),
            1,
        ),
        e(EVENT_STATS, MapType::PerCpuArray, 4, 8, EVENT_STATS_LEN),
        e(
            DEST_CACHE,
            MapType::PerCpuArray,
            4,
            size_of::<DestCacheEntry>(),
            DEST_CACHE_SLOTS,
        ),
        e(
            RULE_BITMAP,
            MapType::Array,
            4,
            8 * RULE_BITMAP_WORDS,
            RULE_BITMAP_LEN,
        ),
        e(
            DP_ERRORS,
            MapType::PerCpuArray,
            4,
            size_of::<FaultState>(),
            DP_ERRORS_LEN,
        ),
        e(AYA_LOGS, MapType::RingBuf, 0, 0, AYA_LOGS_BYTES),
        e(
            SCOPE_COUNTS,
            MapType::PerCpuHash,
            size_of::<ScopeKey>(),
            size_of::<ScopeCount>(),
            SCOPE_COUNTS_CAPACITY,
        ),
        e(SCOPE_MISSES, MapType::PerCpuArray, 4, 8, SCOPE_MISSES_LEN),
        e(
            SCOPE_CACHE,
            MapType::PerCpuArray,
            4,
            size_of::<ScopeCacheEntry>(),
            SCOPE_CACHE_SLOTS,
        ),
        e(
            ALLOWED_SAMPLE,
            MapType::LruHash,
            size_of::<SampleKey>(),
            size_of::<SampleEntry>(),
            ALLOWED_SAMPLE_CAPACITY,
        ),
        e(SCOPE_BY_CG, MapType::Hash, 8, 4, SCOPE_TARGETS_CAPACITY),
        e(SCOPE_BY_IF, MapType::Hash, 4, 4, SCOPE_TARGETS_CAPACITY),
        e(
            SCOPE_NAMES,
            MapType::Hash,
            4,
            size_of::<ScopeName>(),
            SCOPE_NAMES_CAPACITY,
        ),
    ];
    for slot in 0..2 {
        v.push(e(
            RULES4[slot],
            MapType::LpmTrie,
            lpm4,
            size_of::<Rule>(),
            RULES_CAPACITY,
        ));
        v.push(e(
            RULES6[slot],
            MapType::LpmTrie,
            lpm6,
            size_of::<Rule>(),
            RULES_CAPACITY,
        ));
        v.push(e(GEO4_WORDS[slot], MapType::Array, 4, 4 * GEO4_LEN, 1));
        v.push(e(
            GEO4_TREE[slot],
            MapType::Array,
            4,
            4 * GEO4_TREE_CAPACITY,
            1,
        ));
        v.push(e(
            GEO6_LEAVES[slot],
            MapType::Array,
            4,
            size_of::<Geo6Leaf>() * GEO6_LEAF_COUNT as usize,
            1,
        ));
        v.push(e(
            GEO6_INDEX[slot],
            MapType::Array,
            4,
            64 * GEO6_INDEX_LEN as usize,
            1,
        ));
        v.push(e(
            GEO6_FINE[slot],
            MapType::Array,
            4,
            size_of::<Geo6Block>(),
            GEO6_FINE_BLOCKS,
        ));
    }
    v
}

/// Compares every pinned map under `pins.maps` with the layout.
pub fn check(pins: &PinLayout) -> Result<(), DatapathError> {
    for e in expected() {
        check_one(&pins.maps.join(e.name), &e)?;
    }
    Ok(())
}

/// Compares the map pinned at `path` with this layout's map `name` (a
/// counter map carried from another layout, see [`super::carry`]).
pub fn check_as(path: &Path, name: &str) -> Result<(), DatapathError> {
    match expected().into_iter().find(|e| e.name == name) {
        Some(e) => check_one(path, &e),
        None => Err(DatapathError::Incompatible {
            path: path.to_owned(),
            detail: format!("this layout has no map {name}"),
        }),
    }
}

fn check_one(path: &Path, e: &Expected) -> Result<(), DatapathError> {
    let path = path.to_owned();
    let info = MapInfo::from_pin(&path).map_err(|source| DatapathError::Map {
        name: e.name,
        source,
    })?;
    let kind = info.map_type().map_err(|source| DatapathError::Map {
        name: e.name,
        source,
    })?;
    let got = (
        kind,
        info.key_size() as usize,
        info.value_size() as usize,
        info.max_entries(),
    );
    let want = (e.kind, e.key, e.value, e.max_entries);
    if got != want {
        return Err(DatapathError::Incompatible {
            path,
            detail: format!(
                "the kernel has {:?} key {} value {} entries {}, this agent's layout v{} needs {:?} key {} value {} entries {}",
                got.0,
                got.1,
                got.2,
                got.3,
                enforcer_common::LAYOUT_VERSION,
                want.0,
                want.1,
                want.2,
                want.3
            ),
        });
    }
    Ok(())
}
