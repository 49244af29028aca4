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

/// Version of every layout in this module; part of the pin path.
pub const LAYOUT_VERSION: u32 = 1;

/// Number of policy slots (active + the one being prepared).
pub const SLOTS: u32 = 2;

/// `CONFIG`: `Array<u32>` of single words, each written on its own.
pub const CONFIG: &str = "CONFIG";
/// `CONFIG[CFG_LAYOUT]`: the [`LAYOUT_VERSION`] the maps were created for.
pub const CFG_LAYOUT: u32 = 0;
/// `CONFIG[CFG_SLOT]`: the active policy slot, 0 or 1.
pub const CFG_SLOT: u32 = 1;
/// `CONFIG[CFG_MODE]`: the global [`crate::Mode`].
pub const CFG_MODE: u32 = 2;
/// `CONFIG[CFG_GENERATION]`: bumped on every slot flip and mode change, so
/// cached per-socket verdicts made under an older policy are re-decided.
pub const CFG_GENERATION: u32 = 3;
/// Number of `CONFIG` words (room is left for later settings).
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
/// Capacity of each rules trie.
pub const RULES_CAPACITY: u32 = 16 * 1024;

/// GeoIP prefix tables, `LpmTrie<[u8; 4] | [u8; 16], GeoEntry>`, one per
/// family and slot.
pub const GEO4: [&str; 2] = ["GEO4_0", "GEO4_1"];
pub const GEO6: [&str; 2] = ["GEO6_0", "GEO6_1"];
/// Capacity of each GeoIP trie. A world database aggregates to well under
/// this; a table that does not fit is refused before anything is written.
pub const GEO_CAPACITY: u32 = 1 << 20;

/// `CONN_COUNTS`: `PerCpuArray<CounterBlock>`, one block per hook and family,
/// index [`counter_index`]. Counts connection-level decisions.
pub const CONN_COUNTS: &str = "CONN_COUNTS";
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

/// A GeoIP-table value.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GeoEntry {
    /// Country index (never 0: unknown space is simply absent).
    pub country: u16,
    /// Length of the prefix this value was stored under.
    pub prefix_len: u16,
}

/// Per-country, per-outcome counters for one hook and family.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CounterBlock {
    pub counts: [[u64; Outcome::COUNT]; COUNTRY_SLOTS],
}

// No implicit padding anywhere: the verifier rejects reads of uninitialised
// stack bytes, and both sides must agree on every byte.
const _: () = assert!(core::mem::size_of::<Rule>() == 8);
const _: () = assert!(core::mem::size_of::<GeoEntry>() == 4);
const _: () = assert!(core::mem::size_of::<CounterBlock>() == 8 * Outcome::COUNT * COUNTRY_SLOTS);
// A per-CPU value may not exceed PCPU_MIN_UNIT_SIZE (32 KiB):
// https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/arraymap.c#L68
const _: () = assert!(core::mem::size_of::<CounterBlock>() <= 32 * 1024);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all three are #[repr(C)], made only of integers, with no
    // padding (asserted above), so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::Rule {}
    unsafe impl aya::Pod for super::GeoEntry {}
    unsafe impl aya::Pod for super::CounterBlock {}
}
