//! The IPv6 GeoIP table from the agent's side: the sorted range starts
//! (ranges and the gaps between them) turned into the kernel's layout, a
//! static search tree over /64s plus a fine table for the /64s that longer
//! prefixes split (layout and the reason for it: `enforcer_common::layout`,
//! [`enforcer_common::GEO6_LEAVES`]). The lookup is `enforcer_common::lookup`,
//! which the kernel runs too (`enforcer-ebpf/src/geo.rs`); [`lookup`] here
//! (used by `explain.rs`) adds the range around the address from its parts.
//!
//! Why a tree and not the plain sorted array searched by bisection: at
//! 275k entries a bisection takes 19 steps, and the last ten or so each
//! touch a cache line no other lookup shares, about a memory latency
//! apiece (862 ns per lookup measured by `cargo xtask bench`); with eight
//! keys per cache line the descent touches one line per level, and the
//! upper levels are small enough to stay cached.

use std::borrow::Borrow as _;

use enforcer_common::{
    GEO6_BLOCK, GEO6_CAPACITY, GEO6_FINE_BLOCKS, GEO6_FINE_CAPACITY, GEO6_INDEX_LEN,
    GEO6_INDEX_LEVELS, GEO6_INDEX_NODES, GEO6_INDEX_OFFSET, GEO6_LEAF_COUNT, GEO6_LEAF_KEYS,
    GEO6_SPLIT, Geo6Block, Geo6Leaf, UNKNOWN_COUNTRY,
    lookup::{self as shared, Tables6},
};

use super::{DatapathError, buffer::Buffer};

/// Bytes of one index node, one leaf and one fine block.
pub const NODE_BYTES: usize = 64;
pub const LEAF_BYTES: usize = size_of::<Geo6Leaf>();
pub const FINE_BLOCK_BYTES: usize = size_of::<Geo6Block>();
/// Bytes of the index and of the leaves: each is one map value.
pub const INDEX_BYTES: usize = GEO6_INDEX_LEN as usize * NODE_BYTES;
pub const LEAVES_BYTES: usize = GEO6_LEAF_COUNT as usize * LEAF_BYTES;

/// The three tables of one slot, as the kernel holds them (native byte
/// order: the kernel reads them as u64 and u16).
pub struct V6 {
    /// `GEO6_INDEX_<slot>`: [`GEO6_INDEX_LEN`] nodes of eight keys.
    pub index: Buffer,
    /// `GEO6_LEAVES_<slot>`: [`GEO6_LEAF_COUNT`] leaves.
    pub leaves: Buffer,
    /// `GEO6_FINE_<slot>`: [`GEO6_FINE_BLOCKS`] blocks.
    pub fine: Buffer,
    /// Coarse entries in use (the rest of the leaves is padding).
    pub coarse_len: usize,
    /// Fine entries in use (`CONFIG[CFG_GEO6_FINE_LEN[slot]]`).
    pub fine_len: u32,
}

fn hi(a: u128) -> u64 {
    (a >> 64) as u64
}

fn lo(a: u128) -> u64 {
    a as u64
}

/// A coarse entry: the first 64 bits of a start and its country (or
/// [`GEO6_SPLIT`]).
type Coarse = (u64, u16);
/// A full start and its country.
type Start = (u128, u16);

/// Splits the sorted starts into coarse entries and the fine entries of
/// the split /64s.
fn split(entries: &[Start]) -> (Vec<Coarse>, Vec<Start>) {
    let mut coarse = Vec::with_capacity(entries.len());
    let mut fine = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        let h = hi(entries[i].0);
        // A linear scan: groups are short (one entry but for split /64s),
        // and a binary search over the rest of the table per group made
        // this the slowest part of a reload.
        let mut j = i + 1;
        while j < entries.len() && hi(entries[j].0) == h {
            j += 1;
        }
        let group = &entries[i..j];
        if group.len() == 1 && lo(group[0].0) == 0 {
            coarse.push((h, group[0].1));
        } else {
            coarse.push((h, GEO6_SPLIT));
            // The fine table holds the /64's own start, so its search
            // never has to look before it.
            if lo(group[0].0) != 0 {
                let before = if i > 0 { entries[i - 1].1 } else { 0 };
                fine.push((u128::from(h) << 64, before));
            }
            fine.extend_from_slice(group);
            // The last range of the /64 goes on into the next /64s until
            // the next start: a coarse entry for that, unless the next
            // group begins right there.
            if let Some(next) = h.checked_add(1)
                && entries.get(j).is_none_or(|e| hi(e.0) != next)
                && let Some(&(_, last)) = group.last()
            {
                coarse.push((next, last));
            }
        }
        i = j;
    }
    (coarse, fine)
}

/// Builds the tables from `entries`: sorted, strictly increasing starts,
/// the first at `::`, each with its country index (0 for a gap).
pub fn build(entries: &[(u128, u16)]) -> Result<V6, DatapathError> {
    let (coarse, fine) = split(entries);
    if coarse.len() > GEO6_CAPACITY as usize {
        return Err(DatapathError::Capacity {
            what: "GeoIP IPv6 ranges and gaps (by /64)".to_owned(),
            need: coarse.len(),
            capacity: GEO6_CAPACITY,
        });
    }
    if fine.len() > GEO6_FINE_CAPACITY as usize {
        return Err(DatapathError::Capacity {
            what: "GeoIP IPv6 starts inside /64s split by longer prefixes".to_owned(),
            need: fine.len(),
            capacity: GEO6_FINE_CAPACITY,
        });
    }

    // Leaves: six starts each; padding keys are u64::MAX and repeat the last
    // country (see the layout).
    let pad_country = coarse.last().map_or(0, |&(_, c)| c);
    // Huge-page buffers, as for the IPv4 table (buffer.rs): faulting in
    // 5 MiB of small pages is a good part of a reload's time.
    let mut leaves = zeroed(LEAVES_BYTES)?;
    // First key of every leaf, for the index.
    let mut firsts = vec![u64::MAX; GEO6_LEAF_COUNT as usize];
    for (l, leaf) in leaves.chunks_mut(LEAF_BYTES).enumerate() {
        for k in 0..GEO6_LEAF_KEYS {
            let (key, country) = coarse
                .get(l * GEO6_LEAF_KEYS + k)
                .copied()
                .unwrap_or((u64::MAX, pad_country));
            leaf[8 * k..8 * k + 8].copy_from_slice(&key.to_ne_bytes());
            let c = 8 * GEO6_LEAF_KEYS + 2 * k;
            leaf[c..c + 2].copy_from_slice(&country.to_ne_bytes());
            if k == 0 {
                firsts[l] = key;
            }
        }
    }

    // The index, bottom level first: a node's key k is the first key of its
    // child 8 * i + k.
    let mut index = zeroed(INDEX_BYTES)?;
    let mut below = firsts;
    for level in (0..GEO6_INDEX_LEVELS).rev() {
        let nodes = GEO6_INDEX_NODES[level] as usize;
        let mut own = Vec::with_capacity(nodes);
        for i in 0..nodes {
            let at = (GEO6_INDEX_OFFSET[level] as usize + i) * NODE_BYTES;
            for k in 0..8 {
                let key = below.get(8 * i + k).copied().unwrap_or(u64::MAX);
                index[at + 8 * k..at + 8 * k + 8].copy_from_slice(&key.to_ne_bytes());
            }
            own.push(below.get(8 * i).copied().unwrap_or(u64::MAX));
        }
        below = own;
    }

    let mut fine_bytes = zeroed(GEO6_FINE_BLOCKS as usize * FINE_BLOCK_BYTES)?;
    for (i, &(start, country)) in fine.iter().enumerate() {
        let (block, j) = (i / GEO6_BLOCK, i % GEO6_BLOCK);
        let b = &mut fine_bytes[block * FINE_BLOCK_BYTES..(block + 1) * FINE_BLOCK_BYTES];
        b[8 * j..8 * j + 8].copy_from_slice(&hi(start).to_ne_bytes());
        let l = 8 * GEO6_BLOCK + 8 * j;
        b[l..l + 8].copy_from_slice(&lo(start).to_ne_bytes());
        let c = 16 * GEO6_BLOCK + 2 * j;
        b[c..c + 2].copy_from_slice(&country.to_ne_bytes());
    }
    Ok(V6 {
        index,
        leaves,
        fine: fine_bytes,
        coarse_len: coarse.len(),
        fine_len: fine.len() as u32,
    })
}

fn zeroed(len: usize) -> Result<Buffer, DatapathError> {
    Buffer::for_table(len, "IPv6 table")
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_ne_bytes(b)
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([bytes[at], bytes[at + 1]])
}

/// Where a lookup ended: the range of starts around the address (for
/// `explain`, which names the covering prefix) and its country.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    /// The country index, or [`enforcer_common::UNKNOWN_COUNTRY`].
    pub country: u16,
    /// First and last address of the uniform range the address is in, as
    /// far as the tables tell.
    pub start: u128,
    pub end: u128,
}

/// The kernel's lookup of `addr` (`enforcer_common::lookup::country6`,
/// from the same parts), and the range around it.
pub fn lookup<T: Tables6>(t: &T, addr: u128) -> Result<Found, T::Error> {
    let h = hi(addr);
    let i = shared::leaf6(t, h)?;
    let leaf = t.leaf(i)?;
    let leaf: &Geo6Leaf = leaf.borrow();
    let k = shared::leaf_slot(leaf, h);
    let Some(&country) = leaf.country.get(k) else {
        return Ok(Found {
            country: UNKNOWN_COUNTRY,
            start: addr,
            end: addr,
        });
    };
    if country != GEO6_SPLIT {
        // The next start ends the range: the next key of this leaf or the
        // first of the next one. A u64::MAX key repeating this country is
        // padding (ranges are maximal, so a real next start has another
        // country): no next start.
        let next = if k + 1 < GEO6_LEAF_KEYS {
            Some((leaf.hi[k + 1], leaf.country[k + 1]))
        } else if i + 1 < GEO6_LEAF_COUNT {
            let l = t.leaf(i + 1)?;
            let l: &Geo6Leaf = l.borrow();
            Some((l.hi[0], l.country[0]))
        } else {
            None
        };
        let end = match next {
            Some((key, c)) if key > leaf.hi[k] && !(key == u64::MAX && c == country) => {
                (u128::from(key) << 64) - 1
            }
            _ => u128::MAX,
        };
        return Ok(Found {
            country: shared::known(country.into()),
            start: u128::from(leaf.hi[k]) << 64,
            end,
        });
    }
    // A split /64: the fine table's last start <= addr.
    let len = t.fine_len()?;
    let Some(base) = shared::fine6(t, len, h, lo(addr))? else {
        return Ok(Found {
            country: UNKNOWN_COUNTRY,
            start: addr,
            end: addr,
        });
    };
    let start_of = |i: u32| -> Result<u128, T::Error> {
        let (b, j) = shared::fine_at(i);
        let (h, l) = t.fine_start(b, j)?;
        Ok((u128::from(h) << 64) | u128::from(l))
    };
    let start = start_of(base)?;
    let (b, j) = shared::fine_at(base);
    let country = t.fine_country(b, j)?;
    let last_of_64 = (u128::from(h) << 64) | u128::from(u64::MAX);
    let end = if base + 1 < len {
        start_of(base + 1)?.saturating_sub(1).min(last_of_64)
    } else {
        last_of_64
    };
    Ok(Found {
        country: shared::known(country.into()),
        start,
        end,
    })
}

/// The tables as built, for the tests here and in `geo.rs`.
impl Tables6 for V6 {
    type Error = std::convert::Infallible;
    type Node = [u64; 8];
    type Leaf = Geo6Leaf;

    fn node(&self, i: u32) -> Result<[u64; 8], Self::Error> {
        let at = i as usize * NODE_BYTES;
        Ok(std::array::from_fn(|k| u64_at(&self.index, at + 8 * k)))
    }

    fn leaf(&self, i: u32) -> Result<Geo6Leaf, Self::Error> {
        let at = i as usize * LEAF_BYTES;
        Ok(Geo6Leaf {
            hi: std::array::from_fn(|k| u64_at(&self.leaves, at + 8 * k)),
            country: std::array::from_fn(|k| u16_at(&self.leaves, at + 8 * GEO6_LEAF_KEYS + 2 * k)),
            _pad: [0; 4],
        })
    }

    fn fine_len(&self) -> Result<u32, Self::Error> {
        Ok(self.fine_len)
    }

    fn fine_start(&self, b: u32, j: usize) -> Result<(u64, u64), Self::Error> {
        let block = &self.fine[b as usize * FINE_BLOCK_BYTES..];
        Ok((u64_at(block, 8 * j), u64_at(block, 8 * GEO6_BLOCK + 8 * j)))
    }

    fn fine_country(&self, b: u32, j: usize) -> Result<u16, Self::Error> {
        let block = &self.fine[b as usize * FINE_BLOCK_BYTES..];
        Ok(u16_at(block, 16 * GEO6_BLOCK + 2 * j))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The reference: the last entry whose start is <= addr.
    fn reference(entries: &[(u128, u16)], addr: u128) -> u16 {
        let i = entries.partition_point(|e| e.0 <= addr);
        entries[i - 1].1
    }

    /// splitmix64, for the table tests here and in `geo4.rs`.
    pub(crate) struct Rng(pub u64);
    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
    }

    /// Random starts: mostly /32../64 boundaries, some inside /64s (split),
    /// clusters of many in one /64, and starts at the very top.
    fn entries(rng: &mut Rng, n: usize) -> Vec<(u128, u16)> {
        let mut starts = std::collections::BTreeSet::new();
        starts.insert(0u128);
        while starts.len() < n {
            let r = rng.next();
            // Random first 64 bits with the low r % 32 bits clear.
            let h = rng.next() & !((1u64 << (r % 32)) - 1);
            let s = match r % 1000 {
                0..=949 => u128::from(h) << 64,
                950..=979 => (u128::from(h) << 64) | u128::from(rng.next()),
                980 => {
                    // A cluster in one /64.
                    for _ in 0..(r % 100) {
                        starts.insert((u128::from(h) << 64) | u128::from(rng.next() >> 8));
                    }
                    u128::from(h) << 64 | 1
                }
                _ => u128::MAX - u128::from(rng.next() % 4) * (1u128 << 64) - u128::from(r % 3),
            };
            starts.insert(s);
        }
        let mut prev = u16::MAX;
        starts
            .into_iter()
            .map(|s| {
                let mut c = (rng.next() % 40) as u16;
                if c == prev {
                    c = (c + 1) % 40;
                }
                prev = c;
                (s, c)
            })
            .collect()
    }

    #[test]
    fn tree_lookup_matches_the_sorted_starts() {
        let mut rng = Rng(7);
        for round in 0..6 {
            let entries = entries(&mut rng, [1, 2, 7, 100, 5_000, 60_000][round]);
            let v6 = build(&entries).expect("build");
            let mut probes: Vec<u128> = Vec::new();
            for &(s, _) in &entries {
                probes.extend([s, s.wrapping_sub(1), s.saturating_add(1)]);
                probes.push(s | u128::from(u64::MAX));
            }
            for _ in 0..20_000 {
                probes.push((u128::from(rng.next()) << 64) | u128::from(rng.next()));
            }
            probes.extend([0, u128::MAX, u128::MAX - 1, 1u128 << 127]);
            for addr in probes {
                let Ok(found) = lookup(&v6, addr);
                assert_eq!(
                    found.country,
                    reference(&entries, addr),
                    "round {round}: {addr:#034x}"
                );
                assert!(
                    found.start <= addr && addr <= found.end,
                    "{addr:#x} {found:?}"
                );
                // The range is uniform: both ends have the same country.
                assert_eq!(reference(&entries, found.start), found.country);
                assert_eq!(reference(&entries, found.end), found.country);
            }
        }
    }

    #[test]
    fn capacity_errors_name_the_table() {
        let entries: Vec<(u128, u16)> = (0..=u128::from(GEO6_FINE_CAPACITY))
            .map(|i| ((1u128 << 64) | i, (i % 2) as u16))
            .chain([(0, 0)])
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_iter()
            .collect();
        let Err(e) = build(&entries) else {
            panic!("a /64 split beyond the fine table's capacity was accepted")
        };
        assert!(e.to_string().contains("split"), "{e}");
    }
}
