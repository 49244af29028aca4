//! Map names and layouts.
//!
//! The agent pins every map under `<bpffs>/<pin dir>/v<LAYOUT_VERSION>/`, and
//! writes [`LAYOUT_VERSION`] into `CONFIG[CFG_LAYOUT]`, so an agent never
//! misreads maps that an older or newer agent created: any change to a name,
//! key, value or size below must bump [`LAYOUT_VERSION`].
//!
//! # Slots
//!
//! Everything that makes up "the policy" (exception rules, GeoIP tables and
//! the per-country approval table) exists twice, slot 0 and slot 1. The agent
//! writes and verifies the inactive slot, then flips `CONFIG[CFG_SLOT]`: one
//! aligned 32-bit store, so no decision ever sees half a policy.
//!
//! Map names are UPPER_SNAKE and at most 15 bytes: the kernel keeps only the
//! first 15 (`BPF_OBJ_NAME_LEN` is 16 with the NUL).

use crate::{COUNTRY_SLOTS, Family, Hook, Outcome};

/// Version of every layout in this module; part of the pin path. Bump it
/// whenever a map's type, size or the meaning of its contents changes.
///
/// - 1: first release;
/// - 2: the mode word moved beside each policy slot ([`CFG_MODE`]), so a v1
///   `CONFIG` map would be misread;
/// - 3: the GeoIP LPM tries became flat tables (DIR-24-8 for IPv4, with a
///   palette; a sorted range array for IPv6);
/// - 4: the IPv6 table became a static search tree ([`GEO6_INDEX`], [`GEO6_LEAVES`]
///   leaves) over /64s plus a fine table for split /64s ([`GEO6_FINE`],
///   [`CFG_GEO6_FINE_LEN`]);
/// - 5: the IPv4 table became one word per /16 over sorted segments
///   ([`GEO4_WORDS`], [`GEO4_TREE`]; the DIR-24-8 hash and the palette are gone), and
///   each slot got a summary of where its exception rules are
///   ([`RULE_BITMAP`]);
/// - 6: each IPv4 segment became a search tree of cache lines, and `GEO4_TREE`
///   one value ([`GEO4_TREE_LINE`], [`GEO4_DEPTH_SHIFT`]);
/// - 7: the IPv6 index and leaves ([`GEO6_INDEX`], [`GEO6_LEAVES`]) became one value
///   each, as the IPv4 tables;
/// - 8: the datapath reports its internal failures: a counter per kind
///   ([`DP_ERRORS`]) and aya-log's ring buffer, now pinned ([`AYA_LOGS`]);
///   and the maps got names that say what they hold: `GEO4_WORDS` and
///   `GEO4_TREE` (were `GEO4`, `GEO4E`), `GEO6_INDEX`, `GEO6_LEAVES` and
///   `GEO6_FINE` (were `GEO6I`, `GEO6`, `GEO6F`), `RULE_BITMAP` (was
///   `RULES16`), `MODE_OVERRIDES` (was `MODE_BY_CG`), `SOCK_VERDICT` (was
///   `SK_VERDICT`). Earlier entries use today's names;
/// - 9: events say their direction and local port ([`Event::direction`],
///   [`Event::sport`]; 88 bytes, were 80), so a v8 `EVENTS` ring would be
///   misread;
/// - 10: decisions are also counted by scope entry ([`SCOPE_COUNTS`], found
///   through [`SCOPE_BY_CG`], [`SCOPE_BY_IF`] and [`CFG_SCOPE_LEVELS`], named
///   in [`SCOPE_NAMES`]); the totals ([`CONN_COUNTS`], [`PKT_COUNTS`],
///   [`BYTE_COUNTS`]) are unchanged, so layout 9's are carried. The
///   lookup is cached per CPU ([`SCOPE_CACHE`], [`CFG_SCOPE_VERSION`]).
/// - 11: a bounded sample of allowed and exempt destinations for
///   `enforcer whatif` ([`ALLOWED_SAMPLE`], switched by
///   [`CFG_ALLOWED_SAMPLE`]); nothing else changed, so layout 10's
///   counters are carried as 8's and 9's are.
pub const LAYOUT_VERSION: u32 = 11;

/// Number of policy slots (active + the one being prepared).
pub const SLOTS: u32 = 2;

/// `CONFIG`: `Array<u32>` of single words, each written on its own.
pub const CONFIG: &str = "CONFIG";
/// `CONFIG[CFG_LAYOUT]`: the [`LAYOUT_VERSION`] the maps were created for.
pub const CFG_LAYOUT: u32 = 0;
/// `CONFIG[CFG_SLOT]`: the active policy slot, 0 or 1.
pub const CFG_SLOT: u32 = 1;
/// `CONFIG[CFG_MODE[slot]]`: the global [`crate::Mode`] of each slot. The
/// mode belongs to the slot, so a reload that changes both the policy and
/// the mode flips them together; a mode-only change writes both words.
pub const CFG_MODE: [u32; 2] = [2, 7];
/// `CONFIG[CFG_GENERATION]`: bumped on every slot flip and mode change, so
/// cached per-socket verdicts made under an older policy are re-decided.
pub const CFG_GENERATION: u32 = 3;
/// Index of the word holding the mode of `slot` (0 or 1).
#[inline(always)]
pub const fn cfg_mode(slot: u32) -> u32 {
    if slot == 0 { CFG_MODE[0] } else { CFG_MODE[1] }
}

/// `CONFIG[CFG_EVENT_RATE]`: events each CPU may emit per second (token
/// bucket refill rate); 0 turns events off.
pub const CFG_EVENT_RATE: u32 = 4;
/// `CONFIG[CFG_EVENT_BURST]`: the bucket's size, in events.
pub const CFG_EVENT_BURST: u32 = 5;
/// `CONFIG[CFG_OVERRIDES]`: number of entries in `MODE_OVERRIDES`; 0 spares the
/// datapath the walk up the cgroup tree.
pub const CFG_OVERRIDES: u32 = 6;
/// `CONFIG[CFG_GEO6_FINE_LEN[slot]]`: how many entries of `GEO6_FINE_<slot>` are
/// in use (the binary search's upper bound).
pub const CFG_GEO6_FINE_LEN: [u32; 2] = [8, 9];
/// `CONFIG[CFG_GEO_ALIASES[slot]]`: the IPv6 ranges the GeoIP data of
/// `slot` locates through its IPv4 table, by the IPv4 address they carry
/// (bits [`ALIAS_V4_COMPATIBLE`], [`ALIAS_TEREDO`], [`ALIAS_6TO4`]), as
/// the database does (`geoip::Aliases`). Written with the slot's tables,
/// before the flip. Added without a layout bump: a word an older agent
/// never wrote is 0, no alias, which is what its programs did.
pub const CFG_GEO_ALIASES: [u32; 2] = [10, 11];
/// `::/96` (IPv4-compatible): the last 32 bits.
pub const ALIAS_V4_COMPATIBLE: u32 = 1;
/// `2001::/32` (Teredo): bits 32..64, the Teredo server.
pub const ALIAS_TEREDO: u32 = 2;
/// `2002::/16` (6to4): bits 16..48.
pub const ALIAS_6TO4: u32 = 4;
/// `CONFIG[CFG_SCOPE_LEVELS]`: bit `l` set when a scope cgroup (an entry of
/// [`SCOPE_BY_CG`]) is at cgroup level `l` (0: the root), so finding a
/// decision's scope entry costs one ancestor lookup per set bit, usually
/// one. 0: no scope cgroup is known, the lookup is skipped.
pub const CFG_SCOPE_LEVELS: u32 = 12;
/// `CONFIG[CFG_SCOPE_NEXT]`: the next scope slot number the agent hands
/// out. Slot numbers are never reused while the maps live, so counts made
/// for a removed entry can never be read under another entry's name.
pub const CFG_SCOPE_NEXT: u32 = 13;
/// `CONFIG[CFG_SCOPE_VERSION]`: bumped by the agent after every change to
/// [`SCOPE_BY_CG`] or [`CFG_SCOPE_LEVELS`], so a [`SCOPE_CACHE`] entry
/// found under an older version is looked up again.
pub const CFG_SCOPE_VERSION: u32 = 14;
/// `CONFIG[CFG_ALLOWED_SAMPLE]`: 1 when the datapath keeps the sample of
/// allowed destinations ([`ALLOWED_SAMPLE`]), 0 (off) otherwise. Outside
/// the slots, like the event rate: the agent writes it with every load.
pub const CFG_ALLOWED_SAMPLE: u32 = 15;
/// Number of `CONFIG` words (every one is in use: the next setting needs a
/// layout with more).
pub const CONFIG_LEN: u32 = 16;

/// `POLICY`: `Array<u32>`, `SLOTS * COUNTRY_SLOTS` entries, index
/// `slot * COUNTRY_SLOTS + country`, value [`crate::APPROVED`] or
/// [`crate::NOT_APPROVED`]. Entry 0 of a slot (the unknown country) holds the
/// configured `unknown` policy.
pub const POLICY: &str = "POLICY";
pub const POLICY_LEN: u32 = SLOTS * COUNTRY_SLOTS as u32;

/// Exception rules, `LpmTrie<[u8; 4] | [u8; 16], Rule>`, one per family and
/// slot: configured deny/allow CIDRs, site networks and built-in ranges,
/// folded into one trie by the agent (see [`crate::RuleKind`]).
pub const RULES4: [&str; 2] = ["RULES4_0", "RULES4_1"];
pub const RULES6: [&str; 2] = ["RULES6_0", "RULES6_1"];
/// Where the exception rules are, coarsely: `Array<[u64; 1024]>`,
/// `SLOTS * 2` entries, index `slot * 2 + family` (0 IPv4, 1 IPv6), each a
/// bitmap of 65,536 bits, bit `n` set when a rule of that family and slot
/// overlaps the addresses whose first 16 bits are `n`. A clear bit means
/// no rule can match, so the datapath skips the trie lookup (about 50 ns on
/// random destinations, most of the decision when the GeoIP tables are
/// in cache). Written with the rules, before the slot flips.
pub const RULE_BITMAP: &str = "RULE_BITMAP";
pub const RULE_BITMAP_LEN: u32 = SLOTS * 2;
/// Bits per [`RULE_BITMAP`] bitmap, as u64 words.
pub const RULE_BITMAP_WORDS: usize = 1024;
/// Capacity of each rules trie.
pub const RULES_CAPACITY: u32 = 16 * 1024;

/// Most prefixes per family the agent accepts from its databases (a sanity
/// limit: the flat tables below are sized by what they hold, not by
/// prefixes; see [`GEO4_TREE_CAPACITY`] and [`GEO6_CAPACITY`]).
pub const GEO_CAPACITY: u32 = 1 << 20;

/// IPv4 GeoIP table, one per slot, in two parts.
///
/// `GEO4_WORDS_<slot>`: `Array<[u32; GEO4_LEN]>` of one value (256 KiB),
/// `BPF_F_MMAPABLE`, one word per /16 (index: the address's first 16
/// bits). A /16 with one country throughout has its country index there
/// ([`GEO4_SPLIT`] clear). A /16 with more ([`GEO4_SPLIT`] set) has the line
/// of its search tree's root in `GEO4_TREE` in bits 0..[`GEO4_DEPTH_SHIFT`] and
/// the tree's depth (internal levels, at most [`GEO4_TREE_DEPTH`]) above them.
///
/// `GEO4_TREE_<slot>`: `Array<[u32; GEO4_TREE_CAPACITY]>` of one value,
/// `BPF_F_MMAPABLE`: lines of [`GEO4_TREE_LINE`] entries (64 bytes, one cache
/// line), each a node of a segment's static search tree (a B+ tree of
/// fan-out 16). An entry is `key << 16 | value`, `key` a start inside the
/// /16. In a leaf, the entries are the segment's same-country ranges in
/// order, `value` their country; every segment begins with the range at
/// its /16's first address (key 0) and neighbours differ in country. In an
/// internal node, `key` is the first key under a child and `value` that
/// child's line. Each segment's lines are contiguous: the root, the levels
/// below it in order, then the leaves in order. A node's unused entries
/// repeat its last entry, so the lookup is the same for every node: with
/// `probe = (a & 0xffff) << 16 | 0xffff`, take the node's last entry
/// `<= probe` (the count of entries `<= probe`, minus one), descend to the
/// line it names, and at the leaf read the country.
///
/// Why a tree of cache lines rather than a binary search over the segment
/// (v5): the binary search made up to 16 dependent reads, each a cache
/// miss in large segments; a level here reads one line and compares its
/// 16 entries independently, so a lookup is 1 to 4 dependent reads. Why one
/// value of 4 MiB rather than blocks: a block's array lookup costs a key
/// on the stack and a bounds check on every step, and all steps then come
/// from one pointer (the same for `GEO4_WORDS`; `KMALLOC_MAX_SIZE`, 4 MiB on x86-64, is the largest
/// array value: kernel/bpf/arraymap.c, `array_map_alloc_check`).
///
/// Why not DIR-24-8 (one byte per /24, 16 MiB per slot): on random
/// destinations every lookup missed the CPU caches and the TLB (141 ns for
/// the lookup alone); the trees hold geo-whois-asn-country in 1.9 MiB
/// (9,062 split /16s, 488,416 entries with padding and index lines) and
/// the words, read by every lookup, fit in 256 KiB.
pub const GEO4_WORDS: [&str; 2] = ["GEO4_WORDS_0", "GEO4_WORDS_1"];
pub const GEO4_TREE: [&str; 2] = ["GEO4_TREE_0", "GEO4_TREE_1"];
/// Words of `GEO4_WORDS_<slot>`: one per /16.
pub const GEO4_LEN: usize = 1 << 16;
/// The bit of a `GEO4_WORDS` word that marks a split /16.
pub const GEO4_SPLIT: u32 = 1 << 31;
/// Where a split /16's word keeps its tree's depth (below: the root line).
pub const GEO4_DEPTH_SHIFT: u32 = 16;
/// Entries of a `GEO4_TREE` line (one tree node, 64 bytes).
pub const GEO4_TREE_LINE: usize = 16;
/// Entries of `GEO4_TREE_<slot>`'s one value: 65,536 lines, so a line number
/// fits an entry's 16-bit value; about twice what geo-whois-asn-country
/// needs.
pub const GEO4_TREE_CAPACITY: usize = 1 << 20;
/// Most internal levels of a segment's tree: 16^4 leaf entries hold the
/// longest possible segment (a /16 split into 65,536 single addresses).
pub const GEO4_TREE_DEPTH: u32 = 3;
const _: () = assert!(GEO4_TREE_CAPACITY / GEO4_TREE_LINE <= 1 << 16);
const _: () = assert!(GEO4_TREE_LINE.pow(GEO4_TREE_DEPTH + 1) >= 1 << 16);

/// IPv6 GeoIP table, one per slot, in two parts.
///
/// The coarse part answers for whole /64s: the sorted starts of the
/// maximal same-country ranges and the gaps between them, compared on their
/// first 64 bits (`hi`), as a static search tree with one cache line per
/// node, so a lookup costs about one memory access per level instead of one
/// per binary search step. `GEO6_LEAVES_<slot>`: `Array<[Geo6Leaf;
/// GEO6_LEAF_COUNT]>` of one value (4 MiB), `BPF_F_MMAPABLE`, the leaves:
/// [`GEO6_LEAF_KEYS`] starts each, in order, with their countries; leaf 0
/// starts at `::`. `GEO6_INDEX_<slot>`: `Array<[[u64; 8]; GEO6_INDEX_LEN]>` of one
/// value, `BPF_F_MMAPABLE`, the index: [`GEO6_INDEX_LEVELS`] levels,
/// top first, level `l` at node [`GEO6_INDEX_OFFSET`]`[l]`; key `k` of node `i`
/// is the first start under its child `8 * i + k` (a node of the level
/// below, or a leaf under the last level). A lookup takes, at each level,
/// the last key `<= hi`; unused keys and leaves hold `u64::MAX` (a padding
/// leaf repeats the last country, so `hi == u64::MAX` still finds it).
///
/// A /64 that holds a range boundary other than at its start (a prefix
/// longer than /64) has the coarse country [`GEO6_SPLIT`]: its starts, full
/// 128 bits, are in `GEO6_FINE_<slot>` (`Array<Geo6Block>`, the first
/// `CONFIG[CFG_GEO6_FINE_LEN[slot]]` entries in use, sorted), beginning with one
/// at the /64's start, searched by a bounded binary search.
pub const GEO6_LEAVES: [&str; 2] = ["GEO6_LEAVES_0", "GEO6_LEAVES_1"];
pub const GEO6_INDEX: [&str; 2] = ["GEO6_INDEX_0", "GEO6_INDEX_1"];
pub const GEO6_FINE: [&str; 2] = ["GEO6_FINE_0", "GEO6_FINE_1"];
/// Starts per leaf: six keys and six countries fill a 64-byte line.
pub const GEO6_LEAF_KEYS: usize = 6;
/// Leaves per slot; the index above them has [`GEO6_INDEX_LEVELS`] levels of
/// fan-out 8 (8^6 = 262,144 >= 65,536).
pub const GEO6_LEAF_COUNT: u32 = 65_536;
/// Coarse entries per slot (393,216): the geo-whois-asn-country database
/// needs about 268k (ranges, gaps and split /64s), GeoLite2 about 103k.
pub const GEO6_CAPACITY: u32 = GEO6_LEAF_COUNT * GEO6_LEAF_KEYS as u32;
pub const GEO6_INDEX_LEVELS: usize = 6;
/// Nodes per index level, top first: each level indexes the one below
/// (the last level indexes the leaves), eight children per node.
pub const GEO6_INDEX_NODES: [u32; GEO6_INDEX_LEVELS] = index_nodes();
/// First node of each index level in `GEO6_INDEX_<slot>`.
pub const GEO6_INDEX_OFFSET: [u32; GEO6_INDEX_LEVELS] = index_offsets();
/// Nodes in `GEO6_INDEX_<slot>`.
pub const GEO6_INDEX_LEN: u32 =
    GEO6_INDEX_OFFSET[GEO6_INDEX_LEVELS - 1] + GEO6_INDEX_NODES[GEO6_INDEX_LEVELS - 1];
/// How many children the nodes of each level have in all (the next level's
/// nodes, or the leaves under the last): a descent is clamped to these.
pub const GEO6_INDEX_CHILDREN: [u32; GEO6_INDEX_LEVELS] = index_children();
/// The coarse country of a split /64: see [`GEO6_FINE`].
pub const GEO6_SPLIT: u16 = 0xFFFF;
/// Blocks of the fine table, and its entries (16,384): the
/// geo-whois-asn-country database needs about 8.9k, GeoLite2 about 700.
pub const GEO6_FINE_BLOCKS: u32 = 64;
pub const GEO6_FINE_CAPACITY: u32 = GEO6_FINE_BLOCKS * GEO6_BLOCK as u32;
/// Binary search steps: enough for [`GEO6_FINE_CAPACITY`] entries.
pub const GEO6_FINE_STEPS: u32 = 14;
const _: () = assert!(1u64 << GEO6_FINE_STEPS >= GEO6_FINE_CAPACITY as u64);
pub const GEO6_BLOCK: usize = 256;

const fn index_nodes() -> [u32; GEO6_INDEX_LEVELS] {
    let mut out = [0; GEO6_INDEX_LEVELS];
    let mut below = GEO6_LEAF_COUNT;
    let mut l = GEO6_INDEX_LEVELS;
    while l > 0 {
        l -= 1;
        below = below.div_ceil(8);
        out[l] = below;
    }
    out
}

const fn index_offsets() -> [u32; GEO6_INDEX_LEVELS] {
    let nodes = index_nodes();
    let mut out = [0; GEO6_INDEX_LEVELS];
    let mut l = 1;
    while l < GEO6_INDEX_LEVELS {
        out[l] = out[l - 1] + nodes[l - 1];
        l += 1;
    }
    out
}

const fn index_children() -> [u32; GEO6_INDEX_LEVELS] {
    let nodes = index_nodes();
    let mut out = [GEO6_LEAF_COUNT; GEO6_INDEX_LEVELS];
    let mut l = 0;
    while l + 1 < GEO6_INDEX_LEVELS {
        out[l] = nodes[l + 1];
        l += 1;
    }
    out
}

// One root: the descent starts at node 0 of level 0.
const _: () = assert!(GEO6_INDEX_NODES[0] == 1);

/// `BPF_F_MMAPABLE`: the agent maps the flat tables and writes them with
/// plain stores
/// (<https://github.com/torvalds/linux/blob/v6.18/include/uapi/linux/bpf.h#L1384>).
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// `CONN_COUNTS`: `PerCpuArray<CounterBlock>`, one block per hook and family,
/// index [`counter_index`]. Counts connection-level decisions.
pub const CONN_COUNTS: &str = "CONN_COUNTS";
/// `PKT_COUNTS`, `BYTE_COUNTS`: the same layout, for the packet hooks
/// (packets, and bytes from the IP header on).
pub const PKT_COUNTS: &str = "PKT_COUNTS";
pub const BYTE_COUNTS: &str = "BYTE_COUNTS";

/// `MODE_OVERRIDES`: `HashMap<u64, u32>`, cgroup id -> [`crate::Mode`]: a
/// per-cgroup mode override. The deepest ancestor of a process's (or a
/// socket's) cgroup that has an entry wins; none -> the global mode.
pub const MODE_OVERRIDES: &str = "MODE_OVERRIDES";
pub const MODE_OVERRIDES_CAPACITY: u32 = 1024;
/// How many cgroup levels the override walk looks at (level 0 is the root).
pub const MAX_CGROUP_DEPTH: u32 = 32;

/// `SCOPE_BY_CG`: `HashMap<u64, u32>`, cgroup id -> scope slot: the present
/// scope cgroups (`scope.cgroups`, or the root for `host_wide`). Scope
/// cgroups never nest (the config refuses it), so a process has at most
/// one ancestor here. Written by the agent's coverage loop, which follows
/// re-created cgroups (new ids).
pub const SCOPE_BY_CG: &str = "SCOPE_BY_CG";
/// `SCOPE_BY_IF`: `HashMap<u32, u32>`, ifindex -> scope slot: the present
/// `scope.interfaces` (the tcx hook's egress device).
pub const SCOPE_BY_IF: &str = "SCOPE_BY_IF";
/// Capacity of [`SCOPE_BY_CG`] and [`SCOPE_BY_IF`] each: scope entries
/// present at once.
pub const SCOPE_TARGETS_CAPACITY: u32 = 1024;
/// Slot 0 is no scope: the lookup found none.
pub const NO_SCOPE: u32 = 0;

/// `SCOPE_COUNTS`: `PerCpuHashMap<ScopeKey, ScopeCount>`, preallocated,
/// [`SCOPE_COUNTS_CAPACITY`] keys: the decisions of [`CONN_COUNTS`] (kind
/// [`SCOPE_KIND_CONNECTIONS`]) and [`PKT_COUNTS`]/[`BYTE_COUNTS`]
/// ([`SCOPE_KIND_PACKETS`]) once more, by scope slot. The arrays stay the
/// exact totals; what is not here (the table was full, no scope was found)
/// is their difference, and [`SCOPE_MISSES`] says why. Memory: 16 bytes per
/// key per CPU (128 KiB per CPU) plus about 88 bytes per key shared
/// (docs/architecture.md has the figures at 64 and 256 CPUs).
pub const SCOPE_COUNTS: &str = "SCOPE_COUNTS";
pub const SCOPE_COUNTS_CAPACITY: u32 = 8192;
/// [`ScopeKey::kind`]: a connection-level decision (`count` only).
pub const SCOPE_KIND_CONNECTIONS: u8 = 0;
/// [`ScopeKey::kind`]: a packet (`count` packets, `bytes` bytes).
pub const SCOPE_KIND_PACKETS: u8 = 1;

/// `SCOPE_CACHE`: `PerCpuArray<ScopeCacheEntry>`, [`SCOPE_CACHE_SLOTS`]
/// entries per CPU, direct-mapped by a hash of a cgroup id: the scope slot
/// the cgroup's ancestors gave under `CONFIG[CFG_SCOPE_VERSION]`. A host's
/// decisions come from few cgroups, and a hit costs one cache line instead
/// of the ancestor walk and a [`SCOPE_BY_CG`] lookup. A cgroup's ancestors
/// never change and its id is never reused, so an entry stays right until
/// the agent changes the map and bumps the version.
pub const SCOPE_CACHE: &str = "SCOPE_CACHE";
pub const SCOPE_CACHE_SLOTS: u32 = 64;

/// `SCOPE_MISSES`: `PerCpuArray<u64>`, decisions not in [`SCOPE_COUNTS`],
/// by reason: [`SCOPE_MISS_FULL`], [`SCOPE_MISS_NONE`].
pub const SCOPE_MISSES: &str = "SCOPE_MISSES";
/// The key was new and [`SCOPE_COUNTS`] was full.
pub const SCOPE_MISS_FULL: u32 = 0;
/// No scope entry was found for the decision's cgroup or interface (the
/// moment between a link attached and the coverage loop writing its id).
pub const SCOPE_MISS_NONE: u32 = 1;
pub const SCOPE_MISSES_LEN: u32 = 2;

/// `SCOPE_NAMES`: `HashMap<u32, ScopeName>`, not preallocated, slot -> the
/// entry's label: read by the agent only, beside the counts so that they
/// live and die together (an agent that adopts the maps names the slots an
/// earlier one gave out). A removed entry's name is kept while it has
/// counts.
pub const SCOPE_NAMES: &str = "SCOPE_NAMES";
pub const SCOPE_NAMES_CAPACITY: u32 = 1024;
/// Bytes of a [`ScopeName`]'s label.
pub const SCOPE_NAME_BYTES: usize = 4088;
/// [`ScopeName::kind`] of a cgroup entry and of an interface.
pub const SCOPE_NAME_CGROUP: u32 = 1;
pub const SCOPE_NAME_INTERFACE: u32 = 2;
/// `BPF_F_NO_PREALLOC`: allocate hash elements on insert.
pub const BPF_F_NO_PREALLOC: u32 = 1;

/// `SOCK_VERDICT`: socket storage holding the last decision made for the
/// socket ([`SockVerdict`]), so the packet hook costs a lookup. A BTF map:
/// the kernel needs BTF type ids for socket storage.
pub const SOCK_VERDICT: &str = "SOCK_VERDICT";

/// `EVENTS`: the ring buffer of [`Event`] records, pinned so events written
/// while no agent runs are read by the next one.
pub const EVENTS: &str = "EVENTS";
pub const EVENTS_BYTES: u32 = 1 << 20;
/// `DEST_CACHE`: `PerCpuArray<DestCacheEntry>`, [`DEST_CACHE_SLOTS`] entries
/// per CPU, direct-mapped by a hash of the destination: the last allowed
/// or exempt verdicts (they do not depend on the mode or the caller), each
/// with the generation it was made under. A flow's packets and repeated
/// connects to the same peers find their verdict in one cache line instead
/// of deciding again; refused verdicts are never here.
pub const DEST_CACHE: &str = "DEST_CACHE";
pub const DEST_CACHE_SLOTS: u32 = 256;

/// `ALLOWED_SAMPLE`: `LruHashMap<SampleKey, SampleEntry>`, a bounded sample
/// of the destinations decided `allowed` or `exempt`, by family, address
/// and scope slot, for `enforcer whatif` (events cover only refused
/// decisions). Updated on a verdict-cache miss only (a `DEST_CACHE` hit is
/// not decided again, and not sampled), and only while
/// `CONFIG[CFG_ALLOWED_SAMPLE]` is 1. The kernel's LRU evicts the least
/// recently used destinations when it is full, so memory stays bounded
/// with no agent action; the agent appends what it reads to a file, which
/// the eviction does not touch. One common LRU (not per CPU): a
/// destination is one entry however many CPUs decide it.
pub const ALLOWED_SAMPLE: &str = "ALLOWED_SAMPLE";
/// Entries of [`ALLOWED_SAMPLE`]: 4,096 destinations of 56 bytes (key and
/// value) plus the kernel's per-element overhead: 492,416 bytes (481 KiB)
/// in the kernel's accounting on a 2-CPU VM (`allowed_sample.rs` checks
/// it stays under 1 MiB).
pub const ALLOWED_SAMPLE_CAPACITY: u32 = 4096;

/// `EVENT_STATE`: `PerCpuArray<RateState>`, one entry: the token bucket.
pub const EVENT_STATE: &str = "EVENT_STATE";
/// `EVENT_STATS`: `PerCpuArray<u64>`, indices [`EVENT_SUPPRESSED_RATE`] and
/// [`EVENT_SUPPRESSED_FULL`]: events not emitted, never silently lost.
pub const EVENT_STATS: &str = "EVENT_STATS";
/// Suppressed by the per-CPU rate limit.
pub const EVENT_SUPPRESSED_RATE: u32 = 0;
/// Dropped because the ring buffer was full (the agent is not reading).
pub const EVENT_SUPPRESSED_FULL: u32 = 1;
pub const EVENT_STATS_LEN: u32 = 2;
/// `DP_ERRORS`: `PerCpuArray<FaultState>`, one entry per [`crate::Fault`]
/// (index: its value): how often the datapath met each kind of internal
/// failure, and when it last logged one. See `enforcer-ebpf/src/diagnostics.rs`.
pub const DP_ERRORS: &str = "DP_ERRORS";
pub const DP_ERRORS_LEN: u32 = crate::Fault::COUNT as u32;
/// The datapath logs a kind of failure at most once per this interval on
/// each CPU (the counter counts every one): a failure on every packet must
/// not flood the agent's log.
pub const FAULT_LOG_INTERVAL_NS: u64 = 1_000_000_000;

/// `AYA_LOGS`: aya-log's ring buffer (declared by `aya-log-ebpf`, which
/// also fixes its size), pinned by the agent beside the other maps so
/// that a restarted agent reads what the programs logged while none ran,
/// and the programs of an earlier agent log into the ring it reads.
pub const AYA_LOGS: &str = "AYA_LOGS";
/// Its size in `aya-log-ebpf` 0.2: a newer aya-log-ebpf with another
/// size fails the agent's start (compat.rs) instead of logging nowhere.
pub const AYA_LOGS_BYTES: u32 = 1 << 17;

pub const COUNTER_BLOCKS: u32 = (Hook::COUNT * Family::COUNT) as u32;

/// Index of the counter block of a hook and family.
#[inline(always)]
pub const fn counter_index(hook: Hook, family: Family) -> u32 {
    hook as u32 * Family::COUNT as u32 + family as u32
}

/// An exception-table value: the class of the matched prefix, the country
/// for a site network (0 otherwise), the matched prefix's length (so the
/// agent can name the prefix a live lookup hit) and the config entry it
/// came from.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// A [`crate::RuleKind`] as `u32`-compatible `u16`.
    pub kind: u16,
    /// Country index for [`crate::RuleKind::Site`], else 0.
    pub country: u16,
    /// Length of the prefix this value was stored under.
    pub prefix_len: u16,
    /// Position of the rule in its config list (or built-in table).
    pub id: u16,
}

/// A leaf of the IPv6 coarse table ([`GEO6_LEAVES`]): the first 64 bits of
/// [`GEO6_LEAF_KEYS`] range starts, in order, and the country index of
/// each ([`GEO6_SPLIT`] for a split /64).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geo6Leaf {
    pub hi: [u64; GEO6_LEAF_KEYS],
    pub country: [u16; GEO6_LEAF_KEYS],
    pub _pad: [u8; 4],
}

/// A block of the IPv6 fine table ([`GEO6_FINE`]): range starts as big-endian
/// halves (`hi` the first 8 bytes of the address) and the country of each.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geo6Block {
    pub hi: [u64; GEO6_BLOCK],
    pub lo: [u64; GEO6_BLOCK],
    pub country: [u16; GEO6_BLOCK],
}

/// The decision cached in a socket's storage.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockVerdict {
    /// `CONFIG[CFG_GENERATION]` when it was made: a stale one is re-decided.
    pub generation: u32,
    /// [`crate::Outcome`] as `u8`.
    pub outcome: u8,
    /// [`crate::Family`] as `u8`.
    pub family: u8,
    pub country: u16,
    /// The destination it was made for (IPv4 in the first four bytes): an
    /// unconnected UDP socket changes destination from datagram to datagram.
    pub daddr: [u8; 16],
    /// The process that connected or sent (0 when decided from a packet).
    pub pid_tgid: u64,
    pub uid_gid: u64,
    pub comm: [u8; 16],
    /// [`crate::Source`] as `u8`, then the mode it was decided under.
    pub source: u8,
    pub mode: u8,
    pub _pad: [u8; 6],
}

/// A [`DEST_CACHE`] entry. `seq` is odd while the entry is being written
/// (two programs can interleave on one CPU when the kernel preempts one):
/// a reader accepts it only if `seq` is even and the same before and after.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DestCacheEntry {
    pub seq: u32,
    /// `CONFIG[CFG_GENERATION]` when it was decided; 0 never matches (the
    /// agent's first generation is 1).
    pub generation: u32,
    /// The destination's 16 bytes (IPv4 in the first four) as two
    /// native-endian words.
    pub daddr: [u64; 2],
    pub country: u16,
    /// [`crate::Outcome`], [`crate::Family`], [`crate::Source`] as `u8`.
    pub outcome: u8,
    pub family: u8,
    pub source: u8,
    pub _pad: [u8; 3],
}

/// A [`SCOPE_CACHE`] entry; `seq` as in [`DestCacheEntry`] (0: never
/// written).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScopeCacheEntry {
    pub seq: u32,
    /// `CONFIG[CFG_SCOPE_VERSION]` when the slot was looked up.
    pub version: u32,
    /// The cgroup id (the task's, or the socket's for a packet).
    pub cgroup: u64,
    /// Its scope slot, or [`NO_SCOPE`].
    pub slot: u32,
    pub _pad: u32,
}

/// One refused or would-refuse decision, as the ring buffer carries it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_boot_ns()`: CLOCK_BOOTTIME, which keeps counting in
    /// suspend; the agent converts it to wall-clock time.
    pub time_ns: u64,
    pub cgroup_id: u64,
    /// `tgid << 32 | pid`; 0 when not known (a packet of a socket that no
    /// hook saw connect).
    pub pid_tgid: u64,
    /// `gid << 32 | uid`; for packets, the socket owner's uid.
    pub uid_gid: u64,
    /// Destination address, IPv4 in the first four bytes.
    pub daddr: [u8; 16],
    /// The task's comm, NUL-padded (empty when not known).
    pub comm: [u8; 16],
    /// Packet length for packet hooks; 0 for connection hooks.
    pub bytes: u32,
    /// Destination port, host byte order (0 when there is none).
    pub dport: u16,
    pub country: u16,
    /// [`crate::Hook`], [`crate::Family`], IP protocol number,
    /// [`crate::Outcome`], [`crate::Mode`], [`crate::Source`], each as `u8`.
    pub hook: u8,
    pub family: u8,
    pub protocol: u8,
    pub outcome: u8,
    pub mode: u8,
    pub source: u8,
    /// [`DIRECTION_OUTBOUND`] or [`DIRECTION_INBOUND`] (an answer from a
    /// socket that accepted the connection).
    pub direction: u8,
    pub _pad0: u8,
    /// The local port, host byte order; 0 when there is none yet (a
    /// `connect()` before the kernel picked the ephemeral port) or at all.
    pub sport: u16,
    pub _pad: [u8; 2],
    /// The egress interface of a forwarded packet (tcx: its scope entry);
    /// 0 for the cgroup hooks.
    pub ifindex: u32,
}

/// [`Event::direction`]: traffic the scope started.
pub const DIRECTION_OUTBOUND: u8 = 0;
/// [`Event::direction`]: an answer to a connection the scope accepted (a
/// TCP SYN-ACK, which only the accepting side sends).
pub const DIRECTION_INBOUND: u8 = 1;

/// The per-CPU token bucket limiting events.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateState {
    /// Tokens times 1e9 (one event costs 1e9): integer refill arithmetic.
    pub nano_tokens: u64,
    /// Time of the last refill (`bpf_ktime_get_boot_ns`).
    pub last_ns: u64,
}

/// A [`DP_ERRORS`] entry: one kind of failure on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultState {
    /// Failures of this kind on this CPU since the maps were created.
    pub count: u64,
    /// `bpf_ktime_get_boot_ns()` when one was last logged (0: never).
    pub logged_ns: u64,
}

/// Per-country, per-outcome counters for one hook and family.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CounterBlock {
    pub counts: [[u64; Outcome::COUNT]; COUNTRY_SLOTS],
}

/// A [`SCOPE_COUNTS`] key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ScopeKey {
    /// The scope slot ([`SCOPE_NAMES`]).
    pub scope: u32,
    pub country: u16,
    /// [`crate::Hook`], [`crate::Family`], [`crate::Outcome`] as `u8`.
    pub hook: u8,
    pub family: u8,
    pub outcome: u8,
    /// [`SCOPE_KIND_CONNECTIONS`] or [`SCOPE_KIND_PACKETS`].
    pub kind: u8,
    pub _pad: [u8; 2],
}

/// A [`SCOPE_COUNTS`] value (one CPU's).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScopeCount {
    /// Connections or packets.
    pub count: u64,
    /// Bytes (packets only).
    pub bytes: u64,
}

/// An [`ALLOWED_SAMPLE`] key: one destination decided for one scope entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SampleKey {
    /// The destination, IPv4 in the first four bytes (as in [`Event`]).
    pub daddr: [u8; 16],
    /// The scope slot ([`SCOPE_NAMES`]), [`NO_SCOPE`] when none was found.
    pub scope: u32,
    /// [`crate::Family`] as `u8`.
    pub family: u8,
    pub _pad: [u8; 3],
}

/// An [`ALLOWED_SAMPLE`] value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleEntry {
    /// `bpf_ktime_get_boot_ns()` when the entry was created and when it
    /// was last updated (CLOCK_BOOTTIME, as [`Event::time_ns`]).
    pub first_ns: u64,
    pub last_ns: u64,
    /// Uncached decisions of this destination since `first_ns` (a lower
    /// bound of its connections and packets: cache hits are not counted).
    pub count: u64,
    pub country: u16,
    /// [`crate::Hook`], [`crate::Outcome`] and [`crate::Source`] of the
    /// first decision, as `u8`.
    pub hook: u8,
    pub outcome: u8,
    pub source: u8,
    pub _pad: [u8; 3],
}

/// A [`SCOPE_NAMES`] value: the label of a scope entry, UTF-8.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScopeName {
    /// [`SCOPE_NAME_CGROUP`] or [`SCOPE_NAME_INTERFACE`].
    pub kind: u32,
    /// Bytes of `label` in use.
    pub len: u32,
    pub label: [u8; SCOPE_NAME_BYTES],
}

// No implicit padding anywhere: the verifier rejects reads of uninitialised
// stack bytes, and both sides must agree on every byte.
const _: () = assert!(core::mem::size_of::<Rule>() == 8);
const _: () = assert!(core::mem::size_of::<Geo6Block>() == 18 * GEO6_BLOCK);
const _: () = assert!(core::mem::size_of::<Geo6Leaf>() == 64);
const _: () = assert!(core::mem::size_of::<SockVerdict>() == 64);
const _: () = assert!(core::mem::size_of::<Event>() == 88);
const _: () = assert!(core::mem::size_of::<RateState>() == 16);
const _: () = assert!(core::mem::size_of::<FaultState>() == 16);
const _: () = assert!(core::mem::size_of::<DestCacheEntry>() == 32);
const _: () = assert!(core::mem::size_of::<ScopeKey>() == 12);
const _: () = assert!(core::mem::size_of::<ScopeCacheEntry>() == 24);
const _: () = assert!(core::mem::size_of::<ScopeCount>() == 16);
const _: () = assert!(core::mem::size_of::<ScopeName>() == 4096);
const _: () = assert!(core::mem::size_of::<SampleKey>() == 24);
const _: () = assert!(core::mem::size_of::<SampleEntry>() == 32);
const _: () = assert!(core::mem::size_of::<CounterBlock>() == 8 * Outcome::COUNT * COUNTRY_SLOTS);
// A per-CPU value may not exceed PCPU_MIN_UNIT_SIZE (32 KiB):
// https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/arraymap.c#L68
const _: () = assert!(core::mem::size_of::<CounterBlock>() <= 32 * 1024);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are #[repr(C)], made only of integers and integer arrays,
    // with no implicit padding (sizes asserted above), so every bit pattern
    // is a valid value.
    unsafe impl aya::Pod for super::Rule {}
    unsafe impl aya::Pod for super::Geo6Block {}
    unsafe impl aya::Pod for super::Geo6Leaf {}
    unsafe impl aya::Pod for super::CounterBlock {}
    unsafe impl aya::Pod for super::SockVerdict {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::RateState {}
    unsafe impl aya::Pod for super::DestCacheEntry {}
    unsafe impl aya::Pod for super::FaultState {}
    unsafe impl aya::Pod for super::ScopeKey {}
    unsafe impl aya::Pod for super::ScopeCacheEntry {}
    unsafe impl aya::Pod for super::ScopeCount {}
    unsafe impl aya::Pod for super::ScopeName {}
    unsafe impl aya::Pod for super::SampleKey {}
    unsafe impl aya::Pod for super::SampleEntry {}
}
