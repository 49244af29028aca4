//! The IPv4 GeoIP table from the agent's side: the sorted range starts
//! (ranges and the gaps between them) turned into the kernel's layout, one
//! word per /16 and a segment of starts for each /16 that holds more than
//! one country (layout and the reason for it: `enforcer_common::layout`,
//! [`enforcer_common::GEO4`]). The kernel's lookup is
//! `enforcer-ebpf/src/geo.rs`; [`lookup`] here (used by `explain.rs`)
//! follows it step for step.
//!
//! Why not DIR-24-8: its 16 MiB first level made every lookup on a random
//! destination a cache and TLB miss (141 ns for the lookup alone in `cargo
//! xtask bench`, against 38 ns for the whole decision when warm); a
//! random read costs about 24 ns within 1 MiB on the benchmark machine
//! and 190 ns within 16 MiB. The segments hold geo-whois-asn-country in
//! 1.3 MiB and the words in 512 KiB, and a segment's binary search stays in
//! one or two cache lines for most /16s (median 13 entries).

use enforcer_common::{
    COUNTRY_SLOTS, GEO4_LEN, GEO4E_BLOCK, GEO4E_CAPACITY, GEO4E_STEPS, UNKNOWN_COUNTRY,
};

use super::{DatapathError, buffer::Buffer};

/// Bytes of one `GEO4E` block, and of the whole of each table.
pub const ENTRY_BLOCK_BYTES: usize = GEO4E_BLOCK * 4;
pub const WORDS_BYTES: usize = GEO4_LEN as usize * 8;
pub const ENTRIES_BYTES: usize = GEO4E_CAPACITY as usize * 4;

/// The two tables of one slot, as the kernel holds them (native byte
/// order: the kernel reads u64 words and u32 entries).
pub struct V4 {
    /// `GEO4_<slot>`: one word per /16.
    pub words: Buffer,
    /// `GEO4E_<slot>`: the segments, [`GEO4E_CAPACITY`] entries.
    pub entries: Buffer,
    /// Entries in use.
    pub entries_len: usize,
    /// /16s with a segment (more than one country).
    pub split16: usize,
}

/// A /16 of one country throughout.
fn uniform(country: u16) -> u64 {
    u64::from(country)
}

fn segment(offset: u32, count: u32) -> u64 {
    u64::from(count) << 32 | u64::from(offset)
}

fn entry(start: u32, country: u16) -> u32 {
    (start & 0xffff) << 16 | u32::from(country)
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
    let mut len = 0usize;
    let mut split16 = 0;
    // `at`: the start that covers the /16's first address (merged[0] is
    // at 0.0.0.0).
    let mut at = 0usize;
    for block in 0..GEO4_LEN {
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
            // Past the capacity, only counted, for the error below.
            if len + count <= GEO4E_CAPACITY as usize {
                let segment_entries = std::iter::once(entry(0, merged[at].1)).chain(
                    merged[at + 1..at + count]
                        .iter()
                        .map(|&(start, country)| entry(start, country)),
                );
                for (i, e) in segment_entries.enumerate() {
                    let at_byte = (len + i) * 4;
                    entries[at_byte..at_byte + 4].copy_from_slice(&e.to_ne_bytes());
                }
            }
            let word = segment(len as u32, count as u32);
            len += count;
            at += inside;
            split16 += 1;
            word
        };
        let at_byte = block as usize * 8;
        words[at_byte..at_byte + 8].copy_from_slice(&word.to_ne_bytes());
    }
    if len > GEO4E_CAPACITY as usize {
        return Err(DatapathError::Capacity {
            what: "GeoIP IPv4 range starts inside split /16s".to_owned(),
            need: len,
            capacity: GEO4E_CAPACITY,
        });
    }
    Ok(V4 {
        words,
        entries,
        entries_len: len,
        split16,
    })
}

/// Read access to one slot's tables, for [`lookup`].
pub trait Tables {
    type Error;
    /// The word of /16 `i`.
    fn word(&self, i: u32) -> Result<u64, Self::Error>;
    /// Entry `i` of the segments.
    fn entry(&self, i: u32) -> Result<u32, Self::Error>;
}

/// The tables as built, for the tests here and in `geo.rs`.
#[cfg(test)]
impl Tables for V4 {
    type Error = std::convert::Infallible;

    fn word(&self, i: u32) -> Result<u64, Self::Error> {
        let at = i as usize * 8;
        let mut b = [0; 8];
        b.copy_from_slice(&self.words[at..at + 8]);
        Ok(u64::from_ne_bytes(b))
    }

    fn entry(&self, i: u32) -> Result<u32, Self::Error> {
        let at = i as usize * 4;
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

/// What one /16 says: its country throughout, or its segment.
enum Block {
    Uniform(u16),
    Segment { offset: u32, count: u32 },
}

fn block<T: Tables>(t: &T, i: u32) -> Result<Block, T::Error> {
    let word = t.word(i)?;
    let (low, count) = (word as u32, (word >> 32) as u32);
    Ok(if count == 0 {
        Block::Uniform(clamp(low))
    } else {
        Block::Segment { offset: low, count }
    })
}

/// An out-of-range country (a corrupt value) is unknown, as in the kernel.
fn clamp(country: u32) -> u16 {
    if (country as usize) < COUNTRY_SLOTS {
        country as u16
    } else {
        UNKNOWN_COUNTRY
    }
}

/// The kernel's lookup of `ip`, step for step, and the range around it.
pub fn lookup<T: Tables>(t: &T, ip: u32) -> Result<Found, T::Error> {
    let b = ip >> 16;
    let (country, mut start, mut end) = match block(t, b)? {
        Block::Uniform(c) => (c, b << 16, b << 16 | 0xffff),
        Block::Segment { offset, count } => {
            let probe = u64::from((ip & 0xffff) << 16 | 0xffff) + 1;
            let (mut base, mut n) = (offset, count);
            for _ in 0..GEO4E_STEPS {
                if n <= 1 {
                    break;
                }
                let half = n / 2;
                if u64::from(t.entry(base + half)?) < probe {
                    base += half;
                }
                n -= half;
            }
            let e = t.entry(base)?;
            let start = b << 16 | e >> 16;
            let end = if base + 1 < offset + count {
                (b << 16 | t.entry(base + 1)? >> 16) - 1
            } else {
                b << 16 | 0xffff
            };
            (clamp(e & 0xffff), start, end)
        }
    };
    // Across /16 boundaries: the range goes on while the neighbour's edge
    // has the same country (neighbours inside a segment always differ).
    while start & 0xffff == 0 && start > 0 {
        match block(t, (start >> 16) - 1)? {
            Block::Uniform(c) if c == country => start -= 1 << 16,
            Block::Segment { offset, count } => {
                let last = t.entry(offset + count - 1)?;
                if clamp(last & 0xffff) == country {
                    start = (start - (1 << 16)) | last >> 16;
                }
                break;
            }
            Block::Uniform(_) => break,
        }
    }
    while end & 0xffff == 0xffff && end < u32::MAX {
        match block(t, (end >> 16) + 1)? {
            Block::Uniform(c) if c == country => end += 1 << 16,
            Block::Segment { offset, .. } => {
                if clamp(t.entry(offset)? & 0xffff) == country {
                    end = (end + 1) | ((t.entry(offset + 1)? >> 16) - 1);
                }
                break;
            }
            Block::Uniform(_) => break,
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
    use super::*;
    use crate::datapath::geo6::tests::Rng;

    /// Random starts: whole /16s and /24s, clusters of small ranges in a
    /// few /16s (one with thousands), starts at the very top, and repeated
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
                    for _ in 0..3000 {
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
        assert_eq!(v4.entries_len, 3);
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
        let s: Vec<(u32, u16)> = (0..GEO4E_CAPACITY + 2)
            .map(|i| (i * 4, (i % 2 + 1) as u16))
            .collect();
        let Err(e) = build(&s) else {
            panic!("a table beyond the capacity was built");
        };
        assert!(e.to_string().contains("IPv4 range starts"), "{e}");
    }
}
