//! The GeoIP lookup: address -> country index (0 when not located), in the
//! flat tables of one slot (layout in `enforcer_common::layout`; the agent
//! writes them in `enforcer/src/datapath/geo.rs`, and `explain.rs` mirrors
//! this lookup).
//!
//! - IPv4: one word per /16 (its country, or where its segment's search
//!   tree is), and a descent of that tree, one cache line per level.
//! - IPv6: a static search tree over the range starts' first 64 bits (one
//!   cache line per level), and for the few /64s that longer prefixes split
//!   a sorted array of full starts, searched with a fixed number of binary
//!   search steps (a bounded loop the verifier accepts).

use core::hint::black_box;

use aya_ebpf::maps::Array;
use enforcer_common::{
    CFG_GEO6F_LEN, COUNTRY_SLOTS, Fault, GEO4_DEPTH_SHIFT, GEO4_LEN, GEO4_SPLIT, GEO4E_CAPACITY,
    GEO4E_DEPTH, GEO4E_LINE, GEO6_BLOCK, GEO6_LEAF_KEYS, GEO6_LEAVES, GEO6_SPLIT, GEO6F_STEPS,
    GEO6I_CHILDREN, GEO6I_LEN, GEO6I_OFFSET, Geo6Block, Geo6Leaf, UNKNOWN_COUNTRY,
};

use crate::{
    diagnostics::report,
    maps::{
        GEO4_0, GEO4_1, GEO4E_0, GEO4E_1, GEO6_0, GEO6_1, GEO6F_0, GEO6F_1, GEO6I_0, GEO6I_1,
        config,
    },
};

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
    if slot == 0 {
        lookup4(&GEO4_0, &GEO4E_0, ip)
    } else {
        lookup4(&GEO4_1, &GEO4E_1, ip)
    }
}

#[inline(always)]
fn lookup4(words: &Array<[u32; GEO4_LEN]>, lines: &Array<[u32; GEO4E_CAPACITY]>, ip: u32) -> u16 {
    // One pointer for each table: every read below is an offset from it,
    // with no array lookup (key on the stack, bounds check) per read.
    let Some(words) = words.get(0) else {
        return UNKNOWN_COUNTRY;
    };
    let word = words[(ip >> 16) as usize % GEO4_LEN];
    let country = if word & GEO4_SPLIT == 0 {
        word
    } else {
        let Some(table) = lines.get(0) else {
            return UNKNOWN_COUNTRY;
        };
        // Opaque, so LLVM cannot tell it is below 2^33: knowing that, it
        // turns the borrow in `last_below` back into a compare, which BPF
        // (no set-on-condition instruction) can only make with a jump, one
        // that mispredicts on half the entries.
        let probe = black_box(u64::from(((ip & 0xffff) << 16) | 0xffff) + 1);
        let depth = (word & !GEO4_SPLIT) >> GEO4_DEPTH_SHIFT;
        let mut line = word & ((1 << GEO4_DEPTH_SHIFT) - 1);
        for level in 0..GEO4E_DEPTH {
            if level >= depth {
                break;
            }
            line = last_below(table, line, probe) & 0xffff;
        }
        last_below(table, line, probe) & 0xffff
    };
    // Out of range only in a corrupt table (the agent verifies what it
    // writes): decided as unknown, and reported.
    if (country as usize) < COUNTRY_SLOTS {
        country as u16
    } else {
        report(Fault::GeoValue, 4, u64::from(country));
        UNKNOWN_COUNTRY
    }
}

/// The last entry of node `line` below `probe`: the count of its entries
/// below it, minus one (entry 0 always is; unused entries repeat the last).
/// The 16 reads are of one cache line and independent of each other.
#[inline(always)]
fn last_below(table: &[u32; GEO4E_CAPACITY], line: u32, probe: u64) -> u32 {
    let first = (line as usize * GEO4E_LINE) % GEO4E_CAPACITY;
    let mut below = 0u64;
    for j in 0..GEO4E_LINE {
        let entry = u64::from(table[(first + j) % GEO4E_CAPACITY]);
        // 1 when entry < probe (both below 2^63): the borrow.
        below += entry.wrapping_sub(probe) >> 63;
    }
    let k = (below as usize).wrapping_sub(1) % GEO4E_LINE;
    table[(first + k) % GEO4E_CAPACITY]
}

/// The country of an IPv6 address (bytes in network order) in `slot`; one
/// copy per slot, as for IPv4.
#[inline(always)]
pub fn country6(slot: u32, a: &[u8; 16]) -> u16 {
    if slot == 0 {
        lookup6(&GEO6I_0, &GEO6_0, &GEO6F_0, CFG_GEO6F_LEN[0], a)
    } else {
        lookup6(&GEO6I_1, &GEO6_1, &GEO6F_1, CFG_GEO6F_LEN[1], a)
    }
}

#[inline(always)]
fn lookup6(
    index: &Array<[[u64; 8]; GEO6I_LEN as usize]>,
    leaves: &Array<[Geo6Leaf; GEO6_LEAVES as usize]>,
    fine: &Array<Geo6Block>,
    fine_len: u32,
    a: &[u8; 16],
) -> u16 {
    // One pointer for each table, as for IPv4: every node and leaf below is
    // an offset from it, with no array lookup (key on the stack, bounds
    // check) on the descent's critical path.
    let (Some(index), Some(leaves)) = (index.get(0), leaves.get(0)) else {
        return UNKNOWN_COUNTRY;
    };
    let hi = u64::from_be_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]);
    // The descent, one level at a time (written out: each level's offset
    // and size are constants, so nothing is read from .rodata). Invariant:
    // the first key of node `i` is <= `hi` (entry 0 starts at `::`).
    let mut i = 0;
    i = descend(index, 0, i, hi);
    i = descend(index, 1, i, hi);
    i = descend(index, 2, i, hi);
    i = descend(index, 3, i, hi);
    i = descend(index, 4, i, hi);
    i = descend(index, 5, i, hi);
    let leaf = &leaves[i as usize % GEO6_LEAVES as usize];
    // Opaque, then checked: LLVM would otherwise fold the subtraction into
    // forms whose bounds the verifier cannot follow into the array index.
    let k = black_box(
        GEO6_LEAF_KEYS - 1 - leaf.hi[1..].iter().map(|&key| lt(hi, key)).sum::<u64>() as usize,
    );
    let Some(&country) = leaf.country.get(k) else {
        return UNKNOWN_COUNTRY;
    };
    let country = if country == GEO6_SPLIT {
        fine6(fine, config(fine_len), hi, a)
    } else {
        country
    };
    // As for IPv4.
    if (country as usize) < COUNTRY_SLOTS {
        country
    } else {
        report(Fault::GeoValue, 6, u64::from(country));
        UNKNOWN_COUNTRY
    }
}

/// One level of the index: the child of node `i` of `level` under which
/// `hi` falls (the last key `<= hi`), clamped to the level's children so a
/// padded node never leads outside the next level.
#[inline(always)]
fn descend(index: &[[u64; 8]; GEO6I_LEN as usize], level: usize, i: u32, hi: u64) -> u32 {
    let Some(node) = index.get((GEO6I_OFFSET[level] + i) as usize) else {
        return 0;
    };
    let k = 7 - node[1..].iter().map(|&key| lt(hi, key)).sum::<u64>() as u32;
    (i * 8 + k).min(GEO6I_CHILDREN[level] - 1)
}

/// 1 when `x < key`, else 0, computed without a branch: the borrow out of
/// `x - key` (Hacker's Delight, 2-13). A compare would make the verifier
/// walk both outcomes of every key of every level, each with a different
/// known child index, past its 1M-instruction limit; arithmetic gives it
/// one path with the count bounded by its range. (Inverting the bit here,
/// `^ 1`, lets LLVM turn it back into a compare and a jump.)
#[inline(always)]
fn lt(x: u64, key: u64) -> u64 {
    ((!x & key) | (!(x ^ key) & x.wrapping_sub(key))) >> 63
}

/// The country of an address in a split /64: the fine table's last start
/// `<=` the address, by a bounded binary search.
#[inline(always)]
fn fine6(table: &Array<Geo6Block>, len: u32, hi: u64, a: &[u8; 16]) -> u16 {
    let lo = u64::from_be_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]);
    if len == 0 {
        return UNKNOWN_COUNTRY;
    }
    // Invariant: entry `base` starts at or below the address (the /64's own
    // start is an entry), and the answer is in base..base + n.
    let mut base: u32 = 0;
    let mut n: u32 = len;
    for _ in 0..GEO6F_STEPS {
        if n <= 1 {
            break;
        }
        let half = n / 2;
        let mid = base + half;
        let Some(block) = table.get(mid / GEO6_BLOCK as u32) else {
            return UNKNOWN_COUNTRY;
        };
        let i = (mid as usize) % GEO6_BLOCK;
        let (shi, slo) = (block.hi[i], block.lo[i]);
        if shi < hi || (shi == hi && slo <= lo) {
            base = mid;
        }
        n -= half;
    }
    let Some(block) = table.get(base / GEO6_BLOCK as u32) else {
        return UNKNOWN_COUNTRY;
    };
    block.country[(base as usize) % GEO6_BLOCK]
}
