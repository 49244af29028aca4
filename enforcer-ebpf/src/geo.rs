//! The GeoIP lookup: address -> country index (0 when not located), in the
//! flat tables of one slot (layout in `enforcer_common::layout`; the agent
//! writes them in `enforcer/src/datapath/geo.rs`).
//!
//! The lookup itself is `enforcer_common::lookup`, the one the agent and
//! `enforcer check` run too; this module only gives it the slot's maps:
//!
//! - IPv4: one word per /16 (its country, or where its segment's search
//!   tree is), and a descent of that tree, one cache line per level.
//! - IPv6: a static search tree over the range starts' first 64 bits (one
//!   cache line per level), and for the few /64s that longer prefixes split
//!   a sorted array of full starts, searched with a fixed number of binary
//!   search steps (a bounded loop the verifier accepts).
//!
//! Each table that is one map value is looked up once per lookup, so every
//! read is an offset from one pointer, with no array lookup (key on the
//! stack, bounds check) per read.

use aya_ebpf::maps::Array;
use enforcer_common::{
    CFG_GEO6_FINE_LEN, COUNTRY_SLOTS, Fault, GEO4_LEN, GEO4_TREE_CAPACITY, GEO6_BLOCK,
    GEO6_INDEX_LEN, GEO6_LEAF_COUNT, Geo6Block, Geo6Leaf, UNKNOWN_COUNTRY,
    lookup::{self, Entries4, Tables4, Tables6},
};

use crate::{
    diagnostics::report,
    maps::{
        GEO4_TREE_0, GEO4_TREE_1, GEO4_WORDS_0, GEO4_WORDS_1, GEO6_FINE_0, GEO6_FINE_1,
        GEO6_INDEX_0, GEO6_INDEX_1, GEO6_LEAVES_0, GEO6_LEAVES_1, config,
    },
};

/// A map value that is not there: the lookup answers unknown.
struct Missing;

/// The country of an IPv4 address (bytes in network order) in `slot`.
///
/// One copy of the lookup per slot, each naming its own maps: a lookup
/// call site that may see either of two maps gets a "poisoned" map pointer
/// in the verifier, which then neither inlines an array lookup nor calls
/// the map's own lookup directly, and every step of the search paid an
/// indirect call (a retpoline here) through `bpf_map_lookup_elem`
/// (<https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/verifier.c>,
/// `do_misc_fixups`, `BPF_MAP_PTR_POISON`).
#[inline(always)]
pub fn country4(slot: u32, a: [u8; 4]) -> u16 {
    let ip = u32::from_be_bytes(a);
    let found = if slot == 0 {
        lookup::country4_raw(
            &Slot4 {
                words: &GEO4_WORDS_0,
                lines: &GEO4_TREE_0,
            },
            ip,
        )
    } else {
        lookup::country4_raw(
            &Slot4 {
                words: &GEO4_WORDS_1,
                lines: &GEO4_TREE_1,
            },
            ip,
        )
    };
    checked(found.unwrap_or(UNKNOWN_COUNTRY.into()), 4)
}

/// A country index as a table holds it: out of range only in a corrupt
/// table (the agent verifies what it writes), which is decided as unknown
/// and reported.
#[inline(always)]
fn checked(country: u32, family: u64) -> u16 {
    if (country as usize) < COUNTRY_SLOTS {
        country as u16
    } else {
        report(Fault::GeoValue, family, u64::from(country));
        UNKNOWN_COUNTRY
    }
}

/// One slot's IPv4 maps.
struct Slot4<'a> {
    words: &'a Array<[u32; GEO4_LEN]>,
    lines: &'a Array<[u32; GEO4_TREE_CAPACITY]>,
}

impl<'a> Tables4 for Slot4<'a> {
    type Error = Missing;
    type Entries<'s>
        = Lines<'a>
    where
        Self: 's;

    #[inline(always)]
    fn word(&self, i: u32) -> Result<u32, Missing> {
        let words = self.words.get(0).ok_or(Missing)?;
        Ok(words[i as usize % GEO4_LEN])
    }

    /// Looked up only for a split /16, as the shared lookup asks.
    #[inline(always)]
    fn entries(&self) -> Result<Lines<'a>, Missing> {
        self.lines.get(0).map(Lines).ok_or(Missing)
    }
}

/// `GEO4_TREE`'s one value.
struct Lines<'a>(&'a [u32; GEO4_TREE_CAPACITY]);

impl Entries4 for Lines<'_> {
    type Error = Missing;

    /// The `%` costs nothing (the lookup's index is already reduced) and
    /// spares a bounds check.
    #[inline(always)]
    fn entry(&self, i: usize) -> Result<u32, Missing> {
        Ok(self.0[i % GEO4_TREE_CAPACITY])
    }
}

/// The country of an IPv6 address (bytes in network order) in `slot`; one
/// copy per slot, as for IPv4.
#[inline(always)]
pub fn country6(slot: u32, a: &[u8; 16]) -> u16 {
    if slot == 0 {
        lookup6(
            &GEO6_INDEX_0,
            &GEO6_LEAVES_0,
            &GEO6_FINE_0,
            CFG_GEO6_FINE_LEN[0],
            a,
        )
    } else {
        lookup6(
            &GEO6_INDEX_1,
            &GEO6_LEAVES_1,
            &GEO6_FINE_1,
            CFG_GEO6_FINE_LEN[1],
            a,
        )
    }
}

#[inline(always)]
fn lookup6(
    index: &Array<[[u64; 8]; GEO6_INDEX_LEN as usize]>,
    leaves: &Array<[Geo6Leaf; GEO6_LEAF_COUNT as usize]>,
    fine: &Array<Geo6Block>,
    fine_len: u32,
    a: &[u8; 16],
) -> u16 {
    // The index and the leaves up front: every level reads one of them.
    let (Some(index), Some(leaves)) = (index.get(0), leaves.get(0)) else {
        return UNKNOWN_COUNTRY;
    };
    let found = lookup::country6_raw(
        &Slot6 {
            index,
            leaves,
            fine,
            fine_len,
        },
        a,
    );
    checked(found.unwrap_or(UNKNOWN_COUNTRY.into()), 6)
}

/// One slot's IPv6 tables: the index and the leaves as their one value,
/// the fine table as its map (one block per step), and the `CONFIG` word
/// of its length.
struct Slot6<'a> {
    index: &'a [[u64; 8]; GEO6_INDEX_LEN as usize],
    leaves: &'a [Geo6Leaf; GEO6_LEAF_COUNT as usize],
    fine: &'a Array<Geo6Block>,
    fine_len: u32,
}

impl<'a> Tables6 for Slot6<'a> {
    type Error = Missing;
    type Node = &'a [u64; 8];
    type Leaf = &'a Geo6Leaf;

    #[inline(always)]
    fn node(&self, i: u32) -> Result<&'a [u64; 8], Missing> {
        self.index.get(i as usize).ok_or(Missing)
    }

    #[inline(always)]
    fn leaf(&self, i: u32) -> Result<&'a Geo6Leaf, Missing> {
        Ok(&self.leaves[i as usize % GEO6_LEAF_COUNT as usize])
    }

    #[inline(always)]
    fn fine_len(&self) -> Result<u32, Missing> {
        Ok(config(self.fine_len))
    }

    #[inline(always)]
    fn fine_start(&self, b: u32, j: usize) -> Result<(u64, u64), Missing> {
        let block = self.fine.get(b).ok_or(Missing)?;
        Ok((block.hi[j % GEO6_BLOCK], block.lo[j % GEO6_BLOCK]))
    }

    #[inline(always)]
    fn fine_country(&self, b: u32, j: usize) -> Result<u16, Missing> {
        let block = self.fine.get(b).ok_or(Missing)?;
        Ok(block.country[j % GEO6_BLOCK])
    }
}
