//! Every map of the datapath. Names, layouts and sizes come from
//! `enforcer_common::layout`; all maps are pinned by name so a restarted
//! agent adopts them (and the counters continue).

use aya_ebpf::{
    macros::map,
    maps::{Array, LpmTrie, PerCpuArray},
};
use enforcer_common::{
    CONFIG_LEN, COUNTER_BLOCKS, CounterBlock, GEO_CAPACITY, GeoEntry, POLICY_LEN, RULES_CAPACITY,
    Rule,
};

#[map]
pub static CONFIG: Array<u32> = Array::pinned(CONFIG_LEN, 0);

#[map]
pub static POLICY: Array<u32> = Array::pinned(POLICY_LEN, 0);

#[map]
pub static RULES4_0: LpmTrie<[u8; 4], Rule> = LpmTrie::pinned(RULES_CAPACITY, 0);
#[map]
pub static RULES4_1: LpmTrie<[u8; 4], Rule> = LpmTrie::pinned(RULES_CAPACITY, 0);
#[map]
pub static RULES6_0: LpmTrie<[u8; 16], Rule> = LpmTrie::pinned(RULES_CAPACITY, 0);
#[map]
pub static RULES6_1: LpmTrie<[u8; 16], Rule> = LpmTrie::pinned(RULES_CAPACITY, 0);

#[map]
pub static GEO4_0: LpmTrie<[u8; 4], GeoEntry> = LpmTrie::pinned(GEO_CAPACITY, 0);
#[map]
pub static GEO4_1: LpmTrie<[u8; 4], GeoEntry> = LpmTrie::pinned(GEO_CAPACITY, 0);
#[map]
pub static GEO6_0: LpmTrie<[u8; 16], GeoEntry> = LpmTrie::pinned(GEO_CAPACITY, 0);
#[map]
pub static GEO6_1: LpmTrie<[u8; 16], GeoEntry> = LpmTrie::pinned(GEO_CAPACITY, 0);

#[map]
pub static CONN_COUNTS: PerCpuArray<CounterBlock> = PerCpuArray::pinned(COUNTER_BLOCKS, 0);

/// Reads one `CONFIG` word; a missing entry reads as 0 (cannot happen for
/// indices below `CONFIG_LEN`, but the verifier wants the check).
#[inline(always)]
pub fn config(index: u32) -> u32 {
    CONFIG.get(index).copied().unwrap_or(0)
}
