//! Every map of the datapath but aya-log's (see [`DP_ERRORS`]). Names,
//! layouts and sizes come from `enforcer_common::layout`; all maps but the
//! socket storage are pinned by name so a restarted agent adopts them (and
//! the counters continue).

use aya_ebpf::{
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use enforcer_common::{
    ALLOWED_SAMPLE_CAPACITY, BPF_F_MMAPABLE, CONFIG_LEN, COUNTER_BLOCKS, CounterBlock,
    DEST_CACHE_SLOTS, DP_ERRORS_LEN, DestCacheEntry, EVENT_STATS_LEN, EVENTS_BYTES, FaultState,
    GEO4_LEN, GEO4_TREE_CAPACITY, GEO6_FINE_BLOCKS, GEO6_INDEX_LEN, GEO6_LEAF_COUNT, Geo6Block,
    Geo6Leaf, MODE_OVERRIDES_CAPACITY, POLICY_LEN, RULE_BITMAP_LEN, RULE_BITMAP_WORDS,
    RULES_CAPACITY, RateState, Rule, SCOPE_CACHE_SLOTS, SCOPE_COUNTS_CAPACITY, SCOPE_MISSES_LEN,
    SCOPE_NAMES_CAPACITY, SCOPE_TARGETS_CAPACITY, SampleEntry, SampleKey, ScopeCacheEntry,
    ScopeCount, ScopeKey, ScopeName, SockVerdict,
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
pub static RULE_BITMAP: Array<[u64; RULE_BITMAP_WORDS]> = Array::pinned(RULE_BITMAP_LEN, 0);

// The GeoIP flat tables (layout in enforcer_common::layout).
#[map]
pub static GEO4_WORDS_0: Array<[u32; GEO4_LEN]> = Array::pinned(1, BPF_F_MMAPABLE);
#[map]
pub static GEO4_WORDS_1: Array<[u32; GEO4_LEN]> = Array::pinned(1, BPF_F_MMAPABLE);
#[map]
pub static GEO4_TREE_0: Array<[u32; GEO4_TREE_CAPACITY]> = Array::pinned(1, BPF_F_MMAPABLE);
#[map]
pub static GEO4_TREE_1: Array<[u32; GEO4_TREE_CAPACITY]> = Array::pinned(1, BPF_F_MMAPABLE);
#[map]
pub static GEO6_LEAVES_0: Array<[Geo6Leaf; GEO6_LEAF_COUNT as usize]> =
    Array::pinned(1, BPF_F_MMAPABLE);
#[map]
pub static GEO6_LEAVES_1: Array<[Geo6Leaf; GEO6_LEAF_COUNT as usize]> =
    Array::pinned(1, BPF_F_MMAPABLE);
#[map]
pub static GEO6_INDEX_0: Array<[[u64; 8]; GEO6_INDEX_LEN as usize]> =
    Array::pinned(1, BPF_F_MMAPABLE);
#[map]
pub static GEO6_INDEX_1: Array<[[u64; 8]; GEO6_INDEX_LEN as usize]> =
    Array::pinned(1, BPF_F_MMAPABLE);
#[map]
pub static GEO6_FINE_0: Array<Geo6Block> = Array::pinned(GEO6_FINE_BLOCKS, BPF_F_MMAPABLE);
#[map]
pub static GEO6_FINE_1: Array<Geo6Block> = Array::pinned(GEO6_FINE_BLOCKS, BPF_F_MMAPABLE);

#[map]
pub static CONN_COUNTS: PerCpuArray<CounterBlock> = PerCpuArray::pinned(COUNTER_BLOCKS, 0);
#[map]
pub static PKT_COUNTS: PerCpuArray<CounterBlock> = PerCpuArray::pinned(COUNTER_BLOCKS, 0);
#[map]
pub static BYTE_COUNTS: PerCpuArray<CounterBlock> = PerCpuArray::pinned(COUNTER_BLOCKS, 0);

// Decisions by scope entry (layout in enforcer_common::layout).
#[map]
pub static SCOPE_COUNTS: PerCpuHashMap<ScopeKey, ScopeCount> =
    PerCpuHashMap::pinned(SCOPE_COUNTS_CAPACITY, 0);
#[map]
pub static SCOPE_MISSES: PerCpuArray<u64> = PerCpuArray::pinned(SCOPE_MISSES_LEN, 0);
#[map]
pub static SCOPE_CACHE: PerCpuArray<ScopeCacheEntry> = PerCpuArray::pinned(SCOPE_CACHE_SLOTS, 0);
#[map]
pub static SCOPE_BY_CG: HashMap<u64, u32> = HashMap::pinned(SCOPE_TARGETS_CAPACITY, 0);
#[map]
pub static SCOPE_BY_IF: HashMap<u32, u32> = HashMap::pinned(SCOPE_TARGETS_CAPACITY, 0);
/// Never read here: the agent names the slots in it, beside the counts.
#[map]
pub static SCOPE_NAMES: HashMap<u32, ScopeName> =
    HashMap::pinned(SCOPE_NAMES_CAPACITY, enforcer_common::BPF_F_NO_PREALLOC);

#[map]
pub static MODE_OVERRIDES: HashMap<u64, u32> = HashMap::pinned(MODE_OVERRIDES_CAPACITY, 0);

/// Not pinned: a new agent's programs start with empty caches, and every
/// socket is simply decided again on its next packet.
#[btf_map]
pub static SOCK_VERDICT: SkStorage<SockVerdict> = SkStorage::new();

#[map]
pub static DEST_CACHE: PerCpuArray<DestCacheEntry> = PerCpuArray::pinned(DEST_CACHE_SLOTS, 0);

/// The sample of allowed destinations for `enforcer whatif` (sample.rs).
#[map]
pub static ALLOWED_SAMPLE: LruHashMap<SampleKey, SampleEntry> =
    LruHashMap::pinned(ALLOWED_SAMPLE_CAPACITY, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);
#[map]
pub static EVENT_STATE: PerCpuArray<RateState> = PerCpuArray::pinned(1, 0);
#[map]
pub static EVENT_STATS: PerCpuArray<u64> = PerCpuArray::pinned(EVENT_STATS_LEN, 0);

/// Internal failures by kind (see diagnostics.rs). aya-log's `AYA_LOGS`
/// is declared by aya-log-ebpf, unpinned; the agent pins it by path.
#[map]
pub static DP_ERRORS: PerCpuArray<FaultState> = PerCpuArray::pinned(DP_ERRORS_LEN, 0);

/// Reads one `CONFIG` word; a missing entry reads as 0 (cannot happen for
/// indices below `CONFIG_LEN`, but the verifier wants the check).
#[inline(always)]
pub fn config(index: u32) -> u32 {
    CONFIG.get(index).copied().unwrap_or(0)
}
