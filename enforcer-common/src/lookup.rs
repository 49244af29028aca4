//! The GeoIP flat-table lookups, written once: the kernel's datapath
//! (`enforcer-ebpf/src/geo.rs`) runs them on its map values, the agent
//! (`enforcer/src/datapath/geo4.rs`, `geo6.rs`) on the tables it built, and
//! `enforcer check` (`explain.rs`) on the live maps read a page at a time.
//! Layouts, and why they are what they are: [`crate::GEO4_WORDS`],
//! [`crate::GEO6_LEAVES`].
//!
//! The code is generic over how a table element is read ([`Tables4`],
//! [`Entries4`], [`Tables6`]) and over the error a read may give, so each
//! caller brings its own reader: the kernel's never fails past the map
//! value lookup and indexes a pointer, the agent's reads bytes or pages.
//!
//! Everything here is `#[inline(always)]` and written for the BPF target
//! first: the kernel inlines it into every hook, where the verifier walks
//! each instruction and a hook pays for every one. So the comparisons are
//! arithmetic rather than branches, loops are bounded by constants, and
//! index arithmetic keeps the bounds (`%` by a power of two) the verifier
//! needs to follow a read; the agent pays nothing for the same forms.

use core::{borrow::Borrow, hint::black_box};

use crate::{
    ALIAS_6TO4, ALIAS_TEREDO, ALIAS_V4_COMPATIBLE, COUNTRY_SLOTS, GEO4_DEPTH_SHIFT, GEO4_SPLIT,
    GEO4_TREE_CAPACITY, GEO4_TREE_DEPTH, GEO4_TREE_LINE, GEO6_BLOCK, GEO6_FINE_STEPS,
    GEO6_INDEX_CHILDREN, GEO6_INDEX_LEVELS, GEO6_INDEX_OFFSET, GEO6_LEAF_KEYS, GEO6_SPLIT,
    Geo6Leaf, UNKNOWN_COUNTRY,
};

/// Whether `a` (network order) is in one of the ranges a database may
/// locate through its IPv4 table (`::/96`, `2001::/32`, `2002::/16`): the
/// cheap test before the `CONFIG` word of the slot's aliases is read.
#[inline(always)]
pub fn may_alias(a: &[u8; 16]) -> bool {
    (a[0] == 0x20 && (a[1] == 2 || (a[1] == 1 && a[2] | a[3] == 0)))
        || a[0] | a[1] | a[2] | a[3] | a[4] | a[5] | a[6] | a[7] | a[8] | a[9] | a[10] | a[11] == 0
}

/// The alias bit (`CFG_GEO_ALIASES`) and the IPv4 address `a` is located
/// by, when `a` is in one of the ranges in `aliases`; None otherwise.
#[inline(always)]
pub fn aliased_v4(aliases: u32, a: &[u8; 16]) -> Option<(u32, [u8; 4])> {
    if aliases & ALIAS_6TO4 != 0 && a[0] == 0x20 && a[1] == 2 {
        return Some((ALIAS_6TO4, [a[2], a[3], a[4], a[5]]));
    }
    if aliases & ALIAS_TEREDO != 0 && a[0] == 0x20 && a[1] == 1 && a[2] | a[3] == 0 {
        return Some((ALIAS_TEREDO, [a[4], a[5], a[6], a[7]]));
    }
    if aliases & ALIAS_V4_COMPATIBLE != 0
        && a[0] | a[1] | a[2] | a[3] | a[4] | a[5] | a[6] | a[7] | a[8] | a[9] | a[10] | a[11] == 0
    {
        return Some((ALIAS_V4_COMPATIBLE, [a[12], a[13], a[14], a[15]]));
    }
    None
}

/// A country index as read from a table, or [`UNKNOWN_COUNTRY`] when out
/// of range (a corrupt value): it would index another slot's policy.
#[inline(always)]
pub fn known(country: u32) -> u16 {
    if (country as usize) < COUNTRY_SLOTS {
        country as u16
    } else {
        UNKNOWN_COUNTRY
    }
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

// ---------------------------------------------------------------- IPv4

/// Read access to one slot's IPv4 tables ([`crate::GEO4_WORDS`], [`crate::GEO4_TREE`]).
pub trait Tables4 {
    type Error;
    /// The reader of the tree lines.
    type Entries<'s>: Entries4<Error = Self::Error>
    where
        Self: 's;
    /// The word of the /16 whose first 16 bits are `i` (`i < 2^16`).
    fn word(&self, i: u32) -> Result<u32, Self::Error>;
    /// The tree lines: asked for only when the /16 is split, as the kernel
    /// then looks up the map value, which a uniform /16 never needs.
    fn entries(&self) -> Result<Self::Entries<'_>, Self::Error>;
}

/// Read access to the IPv4 tree lines ([`crate::GEO4_TREE`]).
pub trait Entries4 {
    type Error;
    /// Entry `i` (`i < GEO4_TREE_CAPACITY`).
    fn entry(&self, i: usize) -> Result<u32, Self::Error>;
}

impl<T: Entries4 + ?Sized> Entries4 for &T {
    type Error = T::Error;

    #[inline(always)]
    fn entry(&self, i: usize) -> Result<u32, Self::Error> {
        (**self).entry(i)
    }
}

/// What the word of a /16 says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Word4 {
    /// One country throughout, as the word holds it ([`known`] checks it).
    Uniform(u32),
    /// Split: the /16's search tree.
    Tree(Tree4),
}

/// A split /16's search tree: its root line and internal levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tree4 {
    pub root: u32,
    pub depth: u32,
}

impl Word4 {
    /// Decodes a [`crate::GEO4_WORDS`] word.
    #[inline(always)]
    pub fn decode(word: u32) -> Word4 {
        if word & GEO4_SPLIT == 0 {
            Word4::Uniform(word)
        } else {
            Word4::Tree(Tree4 {
                root: word & ((1 << GEO4_DEPTH_SHIFT) - 1),
                depth: (word & !GEO4_SPLIT) >> GEO4_DEPTH_SHIFT,
            })
        }
    }
}

/// The probe for an address whose last 16 bits are `low16`: the entries
/// below it are those whose start is at or before the address.
///
/// Opaque, so LLVM cannot tell it is below 2^33: knowing that, it turns
/// the borrow in [`Tree4::descend`] back into a compare, which BPF (no
/// set-on-condition instruction) can only make with a jump, one that
/// mispredicts on half the entries.
#[inline(always)]
pub fn probe4(low16: u32) -> u64 {
    black_box(u64::from(((low16 & 0xffff) << 16) | 0xffff) + 1)
}

impl Tree4 {
    /// The descent from the root to the leaf entry of the last range that
    /// starts at or below `probe`'s address: that entry's index in the
    /// lines and the entry (`start << 16 | country`). One line per level,
    /// at most [`GEO4_TREE_DEPTH`] internal levels whatever the word says.
    #[inline(always)]
    pub fn descend<E: Entries4 + ?Sized>(
        self,
        entries: &E,
        probe: u64,
    ) -> Result<(usize, u32), E::Error> {
        let mut line = self.root;
        // A count, not `for level in 0..GEO4_TREE_DEPTH` with a `break` at the
        // depth: written that way here, LLVM unrolled the loop in full
        // (three copies of a level per slot, a third more instructions in
        // every IPv4 hook); this one stays a loop, and the verifier still
        // sees it end within GEO4_TREE_DEPTH turns.
        for _ in 0..self.depth.min(GEO4_TREE_DEPTH) {
            line = last_below(entries, line, probe)?.1 & 0xffff;
        }
        last_below(entries, line, probe)
    }
}

/// The last entry of node `line` below `probe`: the count of its entries
/// below it, minus one (entry 0 always is; unused entries repeat the last).
/// The 16 reads are of one cache line and independent of each other.
#[inline(always)]
fn last_below<E: Entries4 + ?Sized>(
    entries: &E,
    line: u32,
    probe: u64,
) -> Result<(usize, u32), E::Error> {
    let first = (line as usize * GEO4_TREE_LINE) % GEO4_TREE_CAPACITY;
    let mut below = 0u64;
    for j in 0..GEO4_TREE_LINE {
        let entry = u64::from(entries.entry((first + j) % GEO4_TREE_CAPACITY)?);
        // 1 when entry < probe (both below 2^63): the borrow.
        below += entry.wrapping_sub(probe) >> 63;
    }
    let k = (below as usize).wrapping_sub(1) % GEO4_TREE_LINE;
    let i = (first + k) % GEO4_TREE_CAPACITY;
    Ok((i, entries.entry(i)?))
}

/// The country of the IPv4 address `ip` (host order), or
/// [`UNKNOWN_COUNTRY`] when not located or out of range.
#[inline(always)]
pub fn country4<T: Tables4 + ?Sized>(t: &T, ip: u32) -> Result<u16, T::Error> {
    country4_raw(t, ip).map(known)
}

/// [`country4`] before the range check: the value the table holds, out
/// of range only in a corrupt table, which the datapath reports.
#[inline(always)]
pub fn country4_raw<T: Tables4 + ?Sized>(t: &T, ip: u32) -> Result<u32, T::Error> {
    match Word4::decode(t.word(ip >> 16)?) {
        Word4::Uniform(country) => Ok(country),
        Word4::Tree(tree) => {
            let entries = t.entries()?;
            let (_, entry) = tree.descend(&entries, probe4(ip))?;
            Ok(entry & 0xffff)
        }
    }
}

// ---------------------------------------------------------------- IPv6

/// Read access to one slot's IPv6 tables ([`crate::GEO6_INDEX`],
/// [`crate::GEO6_LEAVES`], [`crate::GEO6_FINE`]). Nodes and leaves come as anything
/// that borrows as one: the kernel lends references into its map values
/// (no copy; a copy of a leaf indexed by a run-time slot would go through
/// the 512-byte stack), the agent returns values it read. The fine table
/// is read an entry at a time, as [`fine_at`] places it, so a reader of
/// the builder's bytes copies an entry per search step, not a 4.5 KiB
/// block.
pub trait Tables6 {
    type Error;
    type Node: Borrow<[u64; 8]>;
    type Leaf: Borrow<Geo6Leaf>;
    /// Index node `i` (`i < GEO6_INDEX_LEN`).
    fn node(&self, i: u32) -> Result<Self::Node, Self::Error>;
    /// Leaf `i` (`i < GEO6_LEAF_COUNT`).
    fn leaf(&self, i: u32) -> Result<Self::Leaf, Self::Error>;
    /// Fine entries in use (`CONFIG[CFG_GEO6_FINE_LEN[slot]]`), asked for only
    /// when the address's /64 is split.
    fn fine_len(&self) -> Result<u32, Self::Error>;
    /// The start of entry `j` (`j < GEO6_BLOCK`) of fine block `b`
    /// (`GEO6_FINE_<slot>[b]`): its `hi` and `lo` halves.
    fn fine_start(&self, b: u32, j: usize) -> Result<(u64, u64), Self::Error>;
    /// The country of entry `j` of fine block `b` (raw: see [`known`]).
    fn fine_country(&self, b: u32, j: usize) -> Result<u16, Self::Error>;
}

/// Where fine entry `i` is: its block and its place in the block.
#[inline(always)]
pub fn fine_at(i: u32) -> (u32, usize) {
    (i / GEO6_BLOCK as u32, (i as usize) % GEO6_BLOCK)
}

/// The first 64 bits of an address (network order bytes), as the coarse
/// table compares them.
#[inline(always)]
pub fn hi6(a: &[u8; 16]) -> u64 {
    u64::from_be_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]])
}

/// The last 64 bits of an address, as the fine table holds them.
#[inline(always)]
pub fn lo6(a: &[u8; 16]) -> u64 {
    u64::from_be_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]])
}

/// The leaf under which `hi` falls: the descent of the index, one level
/// at a time (written out: each level's offset and size are constants, so
/// nothing is read from .rodata). Invariant: the first key of node `i` is
/// `<= hi` (entry 0 starts at `::`).
#[inline(always)]
pub fn leaf6<T: Tables6 + ?Sized>(t: &T, hi: u64) -> Result<u32, T::Error> {
    const _: () = assert!(GEO6_INDEX_LEVELS == 6);
    let mut i = 0;
    i = descend6(t, 0, i, hi)?;
    i = descend6(t, 1, i, hi)?;
    i = descend6(t, 2, i, hi)?;
    i = descend6(t, 3, i, hi)?;
    i = descend6(t, 4, i, hi)?;
    i = descend6(t, 5, i, hi)?;
    Ok(i)
}

/// One level of the index: the child of node `i` of `level` under which
/// `hi` falls (the last key `<= hi`), clamped to the level's children so a
/// padded node never leads outside the next level.
#[inline(always)]
fn descend6<T: Tables6 + ?Sized>(t: &T, level: usize, i: u32, hi: u64) -> Result<u32, T::Error> {
    let node = t.node(GEO6_INDEX_OFFSET[level] + i)?;
    let node: &[u64; 8] = node.borrow();
    let k = 7 - node[1..].iter().map(|&key| lt(hi, key)).sum::<u64>() as u32;
    Ok((i * 8 + k).min(GEO6_INDEX_CHILDREN[level] - 1))
}

/// The position in `leaf` of the last key `<= hi` (key 0 is, under the
/// descent's invariant). Opaque: LLVM would otherwise fold the
/// subtraction into forms whose bounds the verifier cannot follow into an
/// array index, so a caller indexes with `get`.
#[inline(always)]
pub fn leaf_slot(leaf: &Geo6Leaf, hi: u64) -> usize {
    black_box(
        GEO6_LEAF_KEYS - 1 - leaf.hi[1..].iter().map(|&key| lt(hi, key)).sum::<u64>() as usize,
    )
}

/// Where an address falls in the fine table (`len` entries in use): the
/// index of its last start `<=` the address, by a bounded binary search;
/// `None` for an empty table. Invariant: entry `base` starts at or below
/// the address (the /64's own start is an entry), and the answer is in
/// `base..base + n`.
#[inline(always)]
pub fn fine6<T: Tables6 + ?Sized>(
    t: &T,
    len: u32,
    hi: u64,
    lo: u64,
) -> Result<Option<u32>, T::Error> {
    if len == 0 {
        return Ok(None);
    }
    let mut base: u32 = 0;
    let mut n: u32 = len;
    for _ in 0..GEO6_FINE_STEPS {
        if n <= 1 {
            break;
        }
        let half = n / 2;
        let mid = base + half;
        let (b, j) = fine_at(mid);
        let (shi, slo) = t.fine_start(b, j)?;
        if shi < hi || (shi == hi && slo <= lo) {
            base = mid;
        }
        n -= half;
    }
    Ok(Some(base))
}

/// The country of the IPv6 address `a` (network order bytes), or
/// [`UNKNOWN_COUNTRY`] when not located or out of range.
#[inline(always)]
pub fn country6<T: Tables6 + ?Sized>(t: &T, a: &[u8; 16]) -> Result<u16, T::Error> {
    country6_raw(t, a).map(known)
}

/// [`country6`] before the range check (see [`country4_raw`]).
#[inline(always)]
pub fn country6_raw<T: Tables6 + ?Sized>(t: &T, a: &[u8; 16]) -> Result<u32, T::Error> {
    let hi = hi6(a);
    let leaf = t.leaf(leaf6(t, hi)?)?;
    let leaf: &Geo6Leaf = leaf.borrow();
    let Some(&country) = leaf.country.get(leaf_slot(leaf, hi)) else {
        return Ok(UNKNOWN_COUNTRY.into());
    };
    let country = if country == GEO6_SPLIT {
        let len = t.fine_len()?;
        match fine6(t, len, hi, lo6(a))? {
            Some(base) => {
                let (b, j) = fine_at(base);
                t.fine_country(b, j)?
            }
            None => UNKNOWN_COUNTRY,
        }
    } else {
        country
    };
    Ok(country.into())
}

/// Small hand-built tables, each boundary checked by hand. The tables the
/// agent builds from real data are compared with the `geoip` crate's
/// lookup in the agent's own tests (`enforcer/src/datapath/geo.rs`): the
/// builder lives there, above this crate.
#[cfg(test)]
mod tests {
    use std::{cell::Cell, collections::BTreeMap, convert::Infallible, vec, vec::Vec};

    use super::*;
    use crate::{GEO4_LEN, GEO6_INDEX_LEN, GEO6_LEAF_COUNT};

    // ------------------------------------------------------------ IPv4

    struct T4 {
        words: Vec<u32>,
        lines: Lines,
        /// How often the lines were asked for.
        asked: Cell<u32>,
    }

    struct Lines(Vec<u32>);

    impl Tables4 for T4 {
        type Error = Infallible;
        type Entries<'s> = &'s Lines;

        fn word(&self, i: u32) -> Result<u32, Infallible> {
            Ok(self.words[i as usize])
        }

        fn entries(&self) -> Result<&Lines, Infallible> {
            self.asked.set(self.asked.get() + 1);
            Ok(&self.lines)
        }
    }

    impl Entries4 for Lines {
        type Error = Infallible;

        fn entry(&self, i: usize) -> Result<u32, Infallible> {
            Ok(self.0.get(i).copied().unwrap_or(0))
        }
    }

    fn entry(start: u32, value: u32) -> u32 {
        start << 16 | value
    }

    /// A line of `entries`, its unused entries repeating the last.
    fn line(entries: &[u32]) -> [u32; GEO4_TREE_LINE] {
        let mut l = [entries[entries.len() - 1]; GEO4_TREE_LINE];
        l[..entries.len()].copy_from_slice(entries);
        l
    }

    fn split(root: u32, depth: u32) -> u32 {
        GEO4_SPLIT | depth << GEO4_DEPTH_SHIFT | root
    }

    /// 10.0/16 uniform; 10.1/16 one leaf (depth 0); 10.2/16 a root and two
    /// leaves (depth 1); 10.3/16 a corrupt uniform country; 10.4/16 a
    /// corrupt depth; 10.5/16 a leaf with a corrupt country; 10.6/16 a
    /// chain of the greatest depth (each node one child).
    fn tables4() -> T4 {
        let mut words = vec![0u32; GEO4_LEN];
        words[0x0a00] = 5;
        words[0x0a01] = split(0, 0);
        words[0x0a02] = split(1, 1);
        words[0x0a03] = COUNTRY_SLOTS as u32;
        words[0x0a04] = split(0, 0x7fff);
        words[0x0a05] = split(4, 0);
        words[0x0a06] = split(5, GEO4_TREE_DEPTH);
        let leaf2: Vec<u32> = (0..16).map(|i| entry(i * 0x100, 7 + i % 2)).collect();
        let lines = [
            line(&[entry(0, 3), entry(0x0280, 4), entry(0x0300, 3)]),
            line(&[entry(0, 2), entry(0x8000, 3)]),
            line(&leaf2),
            line(&[entry(0x8000, 9), entry(0x9000, 7)]),
            line(&[entry(0, 1), entry(0x10, 0xffff)]),
            line(&[entry(0, 6)]),
            line(&[entry(0, 7)]),
            line(&[entry(0, 8)]),
            line(&[entry(0, 5), entry(0x100, 6)]),
        ];
        T4 {
            words,
            lines: Lines(lines.concat()),
            asked: Cell::new(0),
        }
    }

    fn c4(t: &T4, ip: u32) -> u16 {
        let Ok(c) = country4(t, ip);
        c
    }

    #[test]
    fn aliases_carry_their_ipv4_address() {
        let v6 = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
        let all = ALIAS_6TO4 | ALIAS_TEREDO | ALIAS_V4_COMPATIBLE;
        for (a, want) in [
            ("2002:c612:1::1", Some((ALIAS_6TO4, [198, 18, 0, 1]))),
            ("2001:0:c612:1::1", Some((ALIAS_TEREDO, [198, 18, 0, 1]))),
            ("::198.18.0.1", Some((ALIAS_V4_COMPATIBLE, [198, 18, 0, 1]))),
            ("2001:1::1", None),
            ("2001:db8::1", None),
            ("::ffff:198.18.0.1", None),
            ("2003::1", None),
        ] {
            assert_eq!(aliased_v4(all, &v6(a)), want, "{a}");
            assert_eq!(may_alias(&v6(a)), want.is_some(), "{a}");
            assert_eq!(aliased_v4(0, &v6(a)), None, "{a}");
        }
        assert_eq!(aliased_v4(ALIAS_TEREDO, &v6("2002:c612:1::1")), None);
    }

    #[test]
    fn ipv4_uniform_blocks_never_read_the_lines() {
        let t = tables4();
        for ip in [0, 0x0a00_0000, 0x0a00_ffff, 0x09ff_ffff, u32::MAX] {
            let want = if ip >> 16 == 0x0a00 { 5 } else { 0 };
            assert_eq!(c4(&t, ip), want, "{ip:#x}");
        }
        assert_eq!(t.asked.get(), 0);
        assert_eq!(c4(&t, 0x0a01_0000), 3);
        assert_eq!(t.asked.get(), 1);
    }

    #[test]
    fn ipv4_one_leaf() {
        let t = tables4();
        for (ip, want) in [
            (0x0a01_0000, 3),
            (0x0a01_027f, 3),
            (0x0a01_0280, 4),
            (0x0a01_02ff, 4),
            (0x0a01_0300, 3),
            (0x0a01_ffff, 3),
        ] {
            assert_eq!(c4(&t, ip), want, "{ip:#x}");
        }
    }

    #[test]
    fn ipv4_root_and_leaves() {
        let t = tables4();
        for i in 0..16u32 {
            let start = 0x0a02_0000 | (i * 0x100);
            assert_eq!(c4(&t, start), (7 + i % 2) as u16, "{start:#x}");
            assert_eq!(c4(&t, start | 0xff), (7 + i % 2) as u16, "{start:#x}");
        }
        // The last range of the first leaf runs up to the second leaf.
        assert_eq!(c4(&t, 0x0a02_7fff), 8);
        assert_eq!(c4(&t, 0x0a02_8000), 9);
        assert_eq!(c4(&t, 0x0a02_8fff), 9);
        assert_eq!(c4(&t, 0x0a02_9000), 7);
        assert_eq!(c4(&t, 0x0a02_ffff), 7);
        let Ok(hit) = Tree4 { root: 1, depth: 1 }.descend(&t.lines, probe4(0x8fff));
        assert_eq!(hit, (3 * GEO4_TREE_LINE, entry(0x8000, 9)));
    }

    #[test]
    fn ipv4_deepest_tree() {
        let t = tables4();
        assert_eq!(c4(&t, 0x0a06_0000), 5);
        assert_eq!(c4(&t, 0x0a06_00ff), 5);
        assert_eq!(c4(&t, 0x0a06_0100), 6);
        assert_eq!(c4(&t, 0x0a06_ffff), 6);
    }

    #[test]
    fn ipv4_corrupt_values_stay_in_bounds() {
        let t = tables4();
        assert_eq!(c4(&t, 0x0a03_1234), UNKNOWN_COUNTRY);
        assert_eq!(c4(&t, 0x0a05_0001), 1);
        assert_eq!(c4(&t, 0x0a05_0010), UNKNOWN_COUNTRY);
        // A depth beyond GEO4_TREE_DEPTH: at most that many levels, each
        // reading entries of the table.
        let _ = c4(&t, 0x0a04_0000);
        assert_eq!(
            Word4::decode(split(3, 2)),
            Word4::Tree(Tree4 { root: 3, depth: 2 })
        );
    }

    /// A reader that fails: the error comes back, not a country.
    struct Failing;

    impl Tables4 for Failing {
        type Error = &'static str;
        type Entries<'s> = &'s Failing;

        fn word(&self, _: u32) -> Result<u32, &'static str> {
            Ok(split(0, 0))
        }

        fn entries(&self) -> Result<&Failing, &'static str> {
            Ok(self)
        }
    }

    impl Entries4 for Failing {
        type Error = &'static str;

        fn entry(&self, _: usize) -> Result<u32, &'static str> {
            Err("unreadable")
        }
    }

    #[test]
    fn ipv4_read_errors_are_returned() {
        assert_eq!(country4(&Failing, 0x0a00_0001), Err("unreadable"));
    }

    // ------------------------------------------------------------ IPv6

    /// Sparse tables: nodes and leaves not stored are padding (keys
    /// `u64::MAX`, and for leaves the last country).
    struct T6 {
        nodes: BTreeMap<u32, [u64; 8]>,
        leaves: BTreeMap<u32, Geo6Leaf>,
        pad: Geo6Leaf,
        fine: Vec<(u64, u64, u16)>,
        fine_len: u32,
    }

    impl Tables6 for T6 {
        type Error = Infallible;
        type Node = [u64; 8];
        type Leaf = Geo6Leaf;

        fn node(&self, i: u32) -> Result<[u64; 8], Infallible> {
            assert!(i < GEO6_INDEX_LEN, "node {i}");
            Ok(self.nodes.get(&i).copied().unwrap_or([u64::MAX; 8]))
        }

        fn leaf(&self, i: u32) -> Result<Geo6Leaf, Infallible> {
            assert!(i < GEO6_LEAF_COUNT, "leaf {i}");
            Ok(self.leaves.get(&i).copied().unwrap_or(self.pad))
        }

        fn fine_len(&self) -> Result<u32, Infallible> {
            Ok(self.fine_len)
        }

        fn fine_start(&self, b: u32, j: usize) -> Result<(u64, u64), Infallible> {
            let (hi, lo, _) = self.fine[b as usize * GEO6_BLOCK + j];
            Ok((hi, lo))
        }

        fn fine_country(&self, b: u32, j: usize) -> Result<u16, Infallible> {
            Ok(self.fine[b as usize * GEO6_BLOCK + j].2)
        }
    }

    const P1: u64 = 0x2001_0db8_0000_0000;
    const P2: u64 = 0x2a00_0000_0000_0000;
    const S1: u64 = 0x2a01_0000_0000_0001;
    const S2: u64 = 0x2a01_0000_0000_0005;

    /// Coarse starts over two leaves, two of them split /64s, and the fine
    /// starts inside those.
    fn tables6(fine_len: u32) -> T6 {
        let coarse: [(u64, u16); 9] = [
            (0, 0),
            (P1, 10),
            (P1 + 1, 0),
            (P2, 11),
            (S1, GEO6_SPLIT),
            (S1 + 1, 13),
            // Leaf 1.
            (S2, GEO6_SPLIT),
            (S2 + 1, 0),
            (0xff00_0000_0000_0000, 12),
        ];
        let fine: [(u64, u64, u16); 5] = [
            (S1, 0, 11),
            (S1, 0x1000, 12),
            (S1, 0x2000, 13),
            (S2, 0, 13),
            (S2, 0xffff_0000_0000_0000, 14),
        ];
        let leaf = |keys: &[(u64, u16)]| {
            let mut l = Geo6Leaf {
                hi: [u64::MAX; GEO6_LEAF_KEYS],
                country: [12; GEO6_LEAF_KEYS],
                _pad: [0; 4],
            };
            for (k, &(key, country)) in keys.iter().enumerate() {
                l.hi[k] = key;
                l.country[k] = country;
            }
            l
        };
        let mut nodes = BTreeMap::new();
        // Node 0 of each level leads to the first child; the last level's
        // also to the second leaf.
        for &first in &GEO6_INDEX_OFFSET[..GEO6_INDEX_LEVELS - 1] {
            let mut keys = [u64::MAX; 8];
            keys[0] = 0;
            nodes.insert(first, keys);
        }
        let mut keys = [u64::MAX; 8];
        (keys[0], keys[1]) = (0, S2);
        nodes.insert(GEO6_INDEX_OFFSET[GEO6_INDEX_LEVELS - 1], keys);
        T6 {
            nodes,
            leaves: BTreeMap::from([(0, leaf(&coarse[..6])), (1, leaf(&coarse[6..]))]),
            pad: leaf(&[]),
            fine: fine.to_vec(),
            fine_len,
        }
    }

    fn c6(t: &T6, hi: u64, lo: u64) -> u16 {
        let a = (u128::from(hi) << 64 | u128::from(lo)).to_be_bytes();
        let Ok(c) = country6(t, &a);
        c
    }

    #[test]
    fn ipv6_coarse_ranges() {
        let t = tables6(5);
        for (hi, want) in [
            (0, 0),
            (P1 - 1, 0),
            (P1, 10),
            (P1 + 1, 0),
            (P2 - 1, 0),
            (P2, 11),
            (S1 - 1, 11),
            (S1 + 1, 13),
            (S2 - 1, 13),
            (S2 + 1, 0),
            (0xfeff_ffff_ffff_ffff, 0),
            (0xff00_0000_0000_0000, 12),
            (u64::MAX, 12),
        ] {
            for lo in [0, 1, u64::MAX] {
                assert_eq!(c6(&t, hi, lo), want, "{hi:#x}:{lo:#x}");
            }
        }
        assert_eq!(leaf6(&t, S2 - 1), Ok(0));
        assert_eq!(leaf6(&t, S2), Ok(1));
    }

    #[test]
    fn ipv6_split_blocks() {
        let t = tables6(5);
        for (hi, lo, want) in [
            (S1, 0, 11),
            (S1, 0xfff, 11),
            (S1, 0x1000, 12),
            (S1, 0x1fff, 12),
            (S1, 0x2000, 13),
            (S1, u64::MAX, 13),
            (S2, 0, 13),
            (S2, 0xfffe_ffff_ffff_ffff, 13),
            (S2, 0xffff_0000_0000_0000, 14),
            (S2, u64::MAX, 14),
        ] {
            assert_eq!(c6(&t, hi, lo), want, "{hi:#x}:{lo:#x}");
        }
        assert_eq!(fine6(&t, 5, S1, 0x1800), Ok(Some(1)));
        assert_eq!(fine_at(GEO6_BLOCK as u32 + 3), (1, 3));
    }

    #[test]
    fn ipv6_empty_fine_table_and_corrupt_countries() {
        let t = tables6(0);
        assert_eq!(c6(&t, S1, 0x1000), UNKNOWN_COUNTRY);
        assert_eq!(fine6(&t, 0, S1, 0), Ok(None));
        let mut t = tables6(5);
        t.leaves.entry(0).and_modify(|l| l.country[1] = 0x7000);
        assert_eq!(c6(&t, P1, 0), UNKNOWN_COUNTRY);
        assert_eq!(known(COUNTRY_SLOTS as u32 - 1), COUNTRY_SLOTS as u16 - 1);
    }
}
