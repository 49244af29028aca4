//! The IPv4 GeoIP table from the agent's side: the sorted range starts
//! (ranges and the gaps between them) turned into the kernel's layout, one
//! word per /16 and, for each /16 that holds more than one country, a
//! static search tree of cache lines over its segment of starts (layout
//! and the reasons for it: `enforcer_common::layout`,
//! [`enforcer_common::GEO4_WORDS`]). The lookup is `enforcer_common::lookup`,
//! which the kernel runs too (`enforcer-ebpf/src/geo.rs`); [`lookup`] here
//! (used by `explain.rs`) adds the range around the address from its parts.
//!
//! Why not DIR-24-8: its 16 MiB first level made every lookup on a random
//! destination a cache and TLB miss (141 ns for the lookup alone in `cargo
//! xtask bench`, against 38 ns for the whole decision when warm); a
//! random read costs about 24 ns within 1 MiB on the benchmark machine
//! and 190 ns within 16 MiB. Why a tree rather than a binary search of the
//! segment (layout v5): the search made up to 16 dependent reads, the tree
//! makes one per level (1 to 4), each of one cache line.

use enforcer_common::{
    GEO4_DEPTH_SHIFT, GEO4_LEN, GEO4_SPLIT, GEO4_TREE_CAPACITY, GEO4_TREE_LINE, UNKNOWN_COUNTRY,
    lookup::{Entries4, Tables4, Word4, known, probe4},
};

use super::{DatapathError, buffer::Buffer};

/// Bytes of the whole of each table.
pub const WORDS_BYTES: usize = GEO4_LEN * 4;
pub const ENTRIES_BYTES: usize = GEO4_TREE_CAPACITY * 4;

/// The two tables of one slot, as the kernel holds them (native byte
/// order: the kernel reads u32 words and entries).
pub struct V4 {
    /// `GEO4_WORDS_<slot>`: one word per /16.
    pub words: Buffer,
    /// `GEO4_TREE_<slot>`: the trees' lines, [`GEO4_TREE_CAPACITY`] entries.
    pub entries: Buffer,
    /// Entries in use (whole lines).
    pub entries_len: usize,
    /// /16s with a segment (more than one country).
    pub split16: usize,
}

/// A /16 of one country throughout.
fn uniform(country: u16) -> u32 {
    u32::from(country)
}

/// A split /16: its tree.
fn segment(root: u32, depth: u32) -> u32 {
    GEO4_SPLIT | depth << GEO4_DEPTH_SHIFT | root
}

fn entry(start: u32, value: u16) -> u32 {
    (start & 0xffff) << 16 | u32::from(value)
}

/// The shape of a segment's tree: its depth (internal levels) and its
/// internal lines, which come before its leaves.
fn shape(count: u32) -> (u32, u32) {
    let line = GEO4_TREE_LINE as u32;
    let (mut nodes, mut depth, mut internal) = (count.div_ceil(line), 0, 0);
    while nodes > 1 {
        nodes = nodes.div_ceil(line);
        depth += 1;
        internal += nodes;
    }
    (depth, internal)
}

/// The lines of one segment's tree, root first, then each level below it,
/// then the leaves; `base` is the line of the root. Every node's unused
/// entries repeat its last one.
fn tree(segment: &[u32], base: u32) -> Vec<[u32; GEO4_TREE_LINE]> {
    let lines = |entries: &[u32]| -> Vec<[u32; GEO4_TREE_LINE]> {
        entries
            .chunks(GEO4_TREE_LINE)
            .map(|chunk| {
                let mut line = [chunk[chunk.len() - 1]; GEO4_TREE_LINE];
                line[..chunk.len()].copy_from_slice(chunk);
                line
            })
            .collect()
    };
    // Levels from the leaves up; each entry above names its child's line,
    // known once the lines of every level above the child are counted.
    let (_, internal) = shape(segment.len() as u32);
    let mut levels = vec![lines(segment)];
    let mut below_first = base + internal;
    while levels[levels.len() - 1].len() > 1 {
        let children = &levels[levels.len() - 1];
        let parents = children.len().div_ceil(GEO4_TREE_LINE) as u32;
        let first = below_first - parents;
        let keys: Vec<u32> = children
            .iter()
            .enumerate()
            .map(|(i, child)| entry(child[0] >> 16, (below_first + i as u32) as u16))
            .collect();
        levels.push(lines(&keys));
        below_first = first;
    }
    debug_assert_eq!(below_first, base);
    levels.into_iter().rev().flatten().collect()
}

/// Builds the tables from `starts`: sorted, without repeats, the first at
/// 0.0.0.0, each with the country index of the addresses from it to the
/// next start (0 for a gap).
pub fn build(starts: &[(u32, u16)]) -> Result<V4, DatapathError> {
    let mut words = Buffer::for_table(WORDS_BYTES, "IPv4 table")?;
    let mut entries = Buffer::for_table(ENTRIES_BYTES, "IPv4 table")?;
    // Neighbours of the same country merged: the datapath would answer the
    // same, and `lookup` relies on them differing to find a range's ends.
    let mut merged: Vec<(u32, u16)> = Vec::with_capacity(starts.len() + 1);
    if starts.first().is_none_or(|&(start, _)| start != 0) {
        merged.push((0, UNKNOWN_COUNTRY));
    }
    for &(start, country) in starts {
        if merged.last().is_none_or(|&(_, c)| c != country) {
            merged.push((start, country));
        }
    }
    let capacity_lines = GEO4_TREE_CAPACITY / GEO4_TREE_LINE;
    // Lines used (counted past the capacity too, for the error below).
    let mut used = 0usize;
    let mut split16 = 0;
    // `at`: the start that covers the /16's first address (merged[0] is
    // at 0.0.0.0).
    let mut at = 0usize;
    for block in 0..GEO4_LEN as u32 {
        let first = block << 16;
        while at + 1 < merged.len() && merged[at + 1].0 <= first {
            at += 1;
        }
        let inside = merged[at + 1..]
            .iter()
            .take_while(|(start, _)| start >> 16 == block)
            .count();
        let word = if inside == 0 {
            uniform(merged[at].1)
        } else {
            let count = inside + 1;
            let (depth, internal) = shape(count as u32);
            let lines = (internal as usize) + count.div_ceil(GEO4_TREE_LINE);
            let root = used as u32;
            if used + lines <= capacity_lines {
                let segment: Vec<u32> = std::iter::once(entry(0, merged[at].1))
                    .chain(
                        merged[at + 1..at + count]
                            .iter()
                            .map(|&(start, country)| entry(start, country)),
                    )
                    .collect();
                for (i, line) in tree(&segment, root).iter().enumerate() {
                    for (j, e) in line.iter().enumerate() {
                        let at_byte = ((used + i) * GEO4_TREE_LINE + j) * 4;
                        entries[at_byte..at_byte + 4].copy_from_slice(&e.to_ne_bytes());
                    }
                }
            }
            used += lines;
            at += inside;
            split16 += 1;
            segment(root, depth)
        };
        let at_byte = block as usize * 4;
        words[at_byte..at_byte + 4].copy_from_slice(&word.to_ne_bytes());
    }
    if used > capacity_lines {
        return Err(DatapathError::Capacity {
            what: "GeoIP IPv4 range starts inside split /16s, in their search trees (entries)"
                .to_owned(),
            need: used * GEO4_TREE_LINE,
            capacity: GEO4_TREE_CAPACITY as u32,
        });
    }
    Ok(V4 {
        words,
        entries,
        entries_len: used * GEO4_TREE_LINE,
        split16,
    })
}

/// The tables as built, for the tests here and in `geo.rs`.
#[cfg(test)]
impl Tables4 for V4 {
    type Error = std::convert::Infallible;
    type Entries<'s> = &'s V4;

    fn word(&self, i: u32) -> Result<u32, Self::Error> {
        let at = i as usize * 4;
        let mut b = [0; 4];
        b.copy_from_slice(&self.words[at..at + 4]);
        Ok(u32::from_ne_bytes(b))
    }

    fn entries(&self) -> Result<&V4, Self::Error> {
        Ok(self)
    }
}

#[cfg(test)]
impl Entries4 for V4 {
    type Error = std::convert::Infallible;

    fn entry(&self, i: usize) -> Result<u32, Self::Error> {
        let at = i * 4;
        let mut b = [0; 4];
        b.copy_from_slice(&self.entries[at..at + 4]);
        Ok(u32::from_ne_bytes(b))
    }
}

/// Where a lookup ended: the country and the maximal range of it around the
/// address (for `explain`, which names the covering prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    /// The country index, or [`UNKNOWN_COUNTRY`].
    pub country: u16,
    pub start: u32,
    pub end: u32,
}

/// The kernel's lookup of `ip` (`enforcer_common::lookup::country4`, from
/// the same parts), and the range around it. A segment's ends are found
/// by the same descent: to its first address (its first entry) and to its
/// last (the last entry, or a repeat of it).
pub fn lookup<T: Tables4>(t: &T, ip: u32) -> Result<Found, T::Error> {
    let b = ip >> 16;
    let (country, mut start, mut end) = match Word4::decode(t.word(b)?) {
        Word4::Uniform(c) => (known(c), b << 16, b << 16 | 0xffff),
        Word4::Tree(tree) => {
            let entries = t.entries()?;
            let (i, e) = tree.descend(&entries, probe4(ip))?;
            let (_, last) = tree.descend(&entries, probe4(0xffff))?;
            let start = b << 16 | e >> 16;
            // Neighbours differ, so only the last range's entry (and its
            // repeats) equals `last`; any other is followed by the next
            // range's, in its leaf or at the start of the next leaf.
            let end = if e == last {
                b << 16 | 0xffff
            } else {
                (b << 16 | entries.entry(i + 1)? >> 16) - 1
            };
            (known(e & 0xffff), start, end)
        }
    };
    // Across /16 boundaries: the range goes on while the neighbour's edge
    // has the same country (neighbours inside a segment always differ).
    while start & 0xffff == 0 && start > 0 {
        match Word4::decode(t.word((start >> 16) - 1)?) {
            Word4::Uniform(c) if known(c) == country => start -= 1 << 16,
            Word4::Tree(tree) => {
                let (_, last) = tree.descend(&t.entries()?, probe4(0xffff))?;
                if known(last & 0xffff) == country {
                    start = (start - (1 << 16)) | last >> 16;
                }
                break;
            }
            Word4::Uniform(_) => break,
        }
    }
    while end & 0xffff == 0xffff && end < u32::MAX {
        match Word4::decode(t.word((end >> 16) + 1)?) {
            Word4::Uniform(c) if known(c) == country => end += 1 << 16,
            Word4::Tree(tree) => {
                // The first leaf holds at least the first two ranges.
                let entries = t.entries()?;
                let (i, first) = tree.descend(&entries, probe4(0))?;
                if known(first & 0xffff) == country {
                    end = (end + 1) | ((entries.entry(i + 1)? >> 16) - 1);
                }
                break;
            }
            Word4::Uniform(_) => break,
        }
    }
    Ok(Found {
        country,
        start,
        end,
    })
}

#[cfg(test)]
mod tests {
    use enforcer_common::GEO4_TREE_DEPTH;

    use super::*;
    use crate::datapath::geo6::tests::Rng;

    /// Random starts: whole /16s and /24s, clusters of small ranges in a
    /// few /16s (one with thousands: a tree of depth 3), starts at the very top, and repeated
    /// countries side by side (which the builder merges).
    fn starts(rng: &mut Rng, n: usize) -> Vec<(u32, u16)> {
        let mut set = std::collections::BTreeSet::new();
        set.insert(0u32);
        while set.len() < n {
            let r = rng.next();
            let s = (rng.next() as u32) & !((1u32 << (r % 25)) - 1);
            match r % 1000 {
                0..=989 => {
                    set.insert(s);
                }
                990..=998 => {
                    for _ in 0..(r % 300) {
                        set.insert(s & 0xffff_0000 | rng.next() as u32 & 0xffff);
                    }
                }
                _ => {
                    set.insert(u32::MAX - (r % 3) as u32);
                    for _ in 0..6000 {
                        set.insert(0x0a0b_0000 | rng.next() as u32 & 0xffff);
                    }
                }
            }
        }
        set.into_iter()
            .map(|s| (s, (rng.next() % 5) as u16))
            .collect()
    }

    /// The reference: the last start <= ip, and the maximal run of its
    /// country around it.
    fn reference(starts: &[(u32, u16)], ip: u32) -> Found {
        let i = starts.partition_point(|s| s.0 <= ip) - 1;
        let country = starts[i].1;
        let mut first = i;
        while first > 0 && starts[first - 1].1 == country {
            first -= 1;
        }
        let mut last = i;
        while last + 1 < starts.len() && starts[last + 1].1 == country {
            last += 1;
        }
        let end = starts.get(last + 1).map_or(u32::MAX, |s| s.0 - 1);
        Found {
            country,
            start: starts[first].0,
            end,
        }
    }

    #[test]
    fn lookup_matches_the_sorted_starts() {
        let mut rng = Rng(7);
        for round in 0..4 {
            let s = starts(&mut rng, 2000 + round * 20_000);
            let v4 = build(&s).expect("build");
            let deepest = (0..GEO4_LEN as u32)
                .filter_map(|i| match v4.word(i).map(Word4::decode) {
                    Ok(Word4::Tree(tree)) => Some(tree.depth),
                    _ => None,
                })
                .max();
            assert_eq!(deepest, Some(GEO4_TREE_DEPTH), "round {round}");
            for _ in 0..200_000 {
                let r = rng.next();
                // Random addresses, and the starts and the addresses just
                // below them (every boundary).
                let ip = match r % 3 {
                    0 => r as u32 ^ (r >> 32) as u32,
                    1 => s[(rng.next() % s.len() as u64) as usize].0,
                    _ => s[(rng.next() % s.len() as u64) as usize].0.wrapping_sub(1),
                };
                let Ok(found) = lookup(&v4, ip);
                assert_eq!(found, reference(&s, ip), "{ip:#x} in round {round}");
            }
        }
    }

    #[test]
    fn uniform_and_split_blocks() {
        let s = [
            (0, 0),
            (0x0a00_0000, 3),
            (0x0a01_0280, 4),
            (0x0a01_0300, 3),
            (0x0b00_0000, 0),
            (0x0b00_0000 + 128, 0),
        ];
        let v4 = build(&s).expect("build");
        assert_eq!(v4.split16, 1);
        assert_eq!(v4.entries_len, GEO4_TREE_LINE);
        let Ok(hit) = lookup(&v4, 0x0a01_0290);
        assert_eq!(
            (hit.country, hit.start, hit.end),
            (4, 0x0a01_0280, 0x0a01_02ff)
        );
        let Ok(hit) = lookup(&v4, 0x0a80_0000);
        assert_eq!(
            (hit.country, hit.start, hit.end),
            (3, 0x0a01_0300, 0x0aff_ffff)
        );
        let Ok(hit) = lookup(&v4, 0x0a00_0001);
        assert_eq!((hit.start, hit.end), (0x0a00_0000, 0x0a01_027f));
        let Ok(hit) = lookup(&v4, u32::MAX);
        assert_eq!((hit.country, hit.start), (0, 0x0b00_0000));
    }

    #[test]
    fn too_many_starts_are_refused() {
        let s: Vec<(u32, u16)> = (0..GEO4_TREE_CAPACITY as u32 + 2)
            .map(|i| (i * 4, (i % 2 + 1) as u16))
            .collect();
        let Err(e) = build(&s) else {
            panic!("a table beyond the capacity was built");
        };
        assert!(e.to_string().contains("IPv4 range starts"), "{e}");
    }
}
