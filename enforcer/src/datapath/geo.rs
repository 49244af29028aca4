//! The GeoIP flat tables from the agent's side: built in memory from the
//! aggregated [`GeoTable`], written into a slot's maps, read back to verify.
//! The lookup is `enforcer_common::lookup`, which the kernel
//! (`enforcer-ebpf/src/geo.rs`) and `explain.rs` both run; the layout is
//! documented in `enforcer_common::layout`.
//!
//! Both families start from the same thing: the sorted starts of the
//! maximal same-country ranges and of the gaps between them.
//! - IPv4: one word per /16 (`GEO4_WORDS_<slot>`) and a search tree of cache
//!   lines over the starts of each /16 that holds more than one country
//!   (`GEO4_TREE_<slot>`): `geo4.rs`.
//! - IPv6: a search tree over /64s (`GEO6_INDEX_<slot>`, `GEO6_LEAVES_<slot>`) and a
//!   fine table for split /64s (`GEO6_FINE_<slot>`,
//!   `CONFIG[CFG_GEO6_FINE_LEN[slot]]` entries in use): `geo6.rs`.
//!
//! Every table is a `BPF_F_MMAPABLE` array: the agent maps it (a window at
//! a time) and copies only the 4 KiB blocks that differ, so writing costs
//! a compare of about 10 MiB plus what changed, with no syscall per entry.

use std::{
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    ptr::NonNull,
    time::Instant,
};

use aya::{
    Ebpf,
    maps::{Map, MapData, MapError},
};
use enforcer_common::{
    CFG_GEO_ALIASES, CFG_GEO6_FINE_LEN, GEO4_TREE, GEO4_WORDS, GEO6_FINE, GEO6_INDEX, GEO6_LEAVES,
};
use geoip::GeoTable;

use super::{
    DatapathError,
    geo4::{self, V4},
    geo6::{self, FINE_BLOCK_BYTES, LEAF_BYTES, NODE_BYTES, V6},
    map_err,
};
use crate::policy::country_index;

/// The tables one slot must hold.
pub struct Flat {
    /// The IPv4 tables as the kernel holds them.
    v4: V4,
    /// The IPv6 tables as the kernel holds them.
    v6: V6,
    /// `CONFIG[CFG_GEO_ALIASES[slot]]`: the IPv6 ranges located through
    /// the IPv4 table (`geoip::Aliases` bits, the same values).
    aliases: u32,
    /// Time spent building.
    pub build_seconds: f64,
}

/// What writing the flat tables changed, in 4 KiB blocks, and what they
/// hold afterwards.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FlatDelta {
    pub v4_blocks: usize,
    /// IPv4 segment entries in use, and /16s with a segment.
    pub v4_entries: usize,
    pub v4_split16: usize,
    pub v6_blocks: usize,
    /// IPv6 coarse entries (by /64) in use after the write.
    pub v6_entries: usize,
    /// IPv6 fine entries (inside split /64s) in use after the write.
    pub v6_fine_entries: usize,
    pub write_seconds: f64,
}

/// The sorted starts of `ranges` and of the gaps between them (country
/// index 0), the first at the family's first address.
fn starts<A: Copy + Into<u128>>(
    ranges: impl Iterator<Item = (A, A, geoip::CountryCode)>,
    capacity: usize,
) -> Vec<(u128, u16)> {
    let mut out: Vec<(u128, u16)> = Vec::with_capacity(capacity);
    let mut next: Option<u128> = Some(0);
    for (start, end, country) in ranges {
        let (s, e) = (start.into(), end.into());
        match next {
            Some(n) if n < s => out.push((n, 0)),
            _ => {}
        }
        out.push((s, country_index(country)));
        next = e.checked_add(1);
    }
    // After the last range, a gap up to the family's end (for IPv4 the
    // caller drops it when the last range ends at 255.255.255.255).
    if let Some(n) = next {
        out.push((n, 0));
    }
    out
}

/// Builds the tables for `geo`.
pub fn build(geo: &GeoTable) -> Result<Flat, DatapathError> {
    let started = Instant::now();
    let v4_starts: Vec<(u32, u16)> = starts(
        geo.v4
            .ranges()
            .map(|(s, e, c)| (u32::from(s), u32::from(e), c)),
        2 * geo.v4.range_count() + 1,
    )
    .into_iter()
    // A range ending at 255.255.255.255 leaves a gap start of 2^32: none.
    .filter_map(|(s, c)| u32::try_from(s).ok().map(|s| (s, c)))
    .collect();
    let v4 = geo4::build(&v4_starts)?;
    let v6_starts = starts(
        geo.v6
            .ranges()
            .map(|(s, e, c)| (u128::from(s), u128::from(e), c)),
        2 * geo.v6.range_count() + 1,
    );
    let v6 = geo6::build(&v6_starts)?;
    Ok(Flat {
        v4,
        v6,
        aliases: u32::from(geo.aliases.bits()),
        build_seconds: started.elapsed().as_secs_f64(),
    })
}

// The datapath's alias bits are the geoip crate's.
const _: () = assert!(
    geoip::Alias::V4Compatible.bit() as u32 == enforcer_common::ALIAS_V4_COMPATIBLE
        && geoip::Alias::Teredo.bit() as u32 == enforcer_common::ALIAS_TEREDO
        && geoip::Alias::SixToFour.bit() as u32 == enforcer_common::ALIAS_6TO4
);

/// A shared mapping of a `BPF_F_MMAPABLE` array map, writable unless made
/// by [`read_window`].
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(
        fd: BorrowedFd<'_>,
        offset: usize,
        len: usize,
        name: &'static str,
        prot: libc::c_int,
    ) -> Result<Mapping, DatapathError> {
        // SAFETY: a fresh shared mapping of `len` bytes of the map's fd at
        // `offset` (page-aligned: see `windows`); the kernel refuses
        // (EINVAL) a range beyond the array's data (array_map_mmap,
        // https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/arraymap.c#L574),
        // and the whole table is value_size * max_entries, which the layout
        // check (compat.rs) confirmed. Nothing else in this process maps it
        // writable.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DatapathError::Pin {
                path: name.into(),
                detail: format!(
                    "cannot map the table into memory: {}",
                    std::io::Error::last_os_error()
                ),
            });
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(DatapathError::MissingMap(name))?;
        Ok(Mapping { ptr, len })
    }

    /// The bytes, only for a mapping made writable.
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live mapping of `len` readable and writable
        // bytes (see `new`: [`windows`] asks for PROT_WRITE), borrowed
        // mutably through `self`. eBPF programs
        // may read it concurrently, but only of the active slot, and this
        // agent writes the inactive one; plain bytes have no invalid values.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped; no borrow outlives self.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

fn map_data<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a MapData, DatapathError> {
    match ebpf.map(name) {
        Some(Map::Array(data)) => Ok(data),
        Some(_) => Err(map_err(name)(MapError::InvalidName {
            name: name.to_owned(),
        })),
        None => Err(DatapathError::MissingMap(name)),
    }
}

/// Runs `f` over the map's table and `want` one window at a time: each
/// window is mapped, handed to `f` with the same range of `want`, and
/// unmapped before the next, so at most one window of the table (about
/// 1 MiB, not 16 MiB) is mapped into this process at once. The kernel maps
/// every page of a window when it is mapped (remap_vmalloc_range), and
/// mapped pages count in the agent's RSS. Windows are whole pages and whole
/// blocks.
fn windows<T>(
    ebpf: &Ebpf,
    name: &'static str,
    want: &[u8],
    block: usize,
    mut f: impl FnMut(&mut [u8], &[u8]) -> Result<T, DatapathError>,
) -> Result<Vec<T>, DatapathError> {
    let data = map_data(ebpf, name)?;
    let unit = lcm(page_bytes(), block);
    let window = unit * (WINDOW_BYTES / unit).max(1);
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < want.len() {
        let len = window.min(want.len() - offset);
        let mut mapping = Mapping::new(
            data.fd().as_fd(),
            offset,
            len,
            name,
            libc::PROT_READ | libc::PROT_WRITE,
        )?;
        out.push(f(mapping.bytes(), &want[offset..offset + len])?);
        offset += len;
    }
    Ok(out)
}

/// The system's page size: a mapping's offset is a multiple of it.
pub(super) fn page_bytes() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// The size [`windows`] aims at.
const WINDOW_BYTES: usize = 1 << 20;

fn lcm(a: usize, b: usize) -> usize {
    let gcd = |mut x: usize, mut y: usize| {
        while y != 0 {
            (x, y) = (y, x % y);
        }
        x
    };
    a / gcd(a, b) * b
}

/// A copy of `len` bytes of a table at `offset` (both whole pages), through
/// a read-only mapping: `fd` may be opened read-only (`explain.rs`), and a
/// table value too large to copy through a map lookup (`GEO4_TREE`, 4 MiB) is
/// read a page at a time.
pub(super) fn read_window(
    fd: BorrowedFd<'_>,
    offset: usize,
    len: usize,
    name: &'static str,
) -> Result<Vec<u8>, DatapathError> {
    let mapping = Mapping::new(fd, offset, len, name, libc::PROT_READ)?;
    // SAFETY: `ptr` is a live mapping of `len` readable bytes, dropped
    // after the copy; plain bytes have no invalid values.
    Ok(unsafe { std::slice::from_raw_parts(mapping.ptr.as_ptr(), mapping.len) }.to_vec())
}

/// Copies the blocks of `want` that differ from the map's, returns how many.
fn sync_blocks(
    ebpf: &Ebpf,
    name: &'static str,
    want: &[u8],
    block: usize,
) -> Result<usize, DatapathError> {
    let counts = windows(ebpf, name, want, block, |have, want| {
        let mut changed = 0;
        for (dst, src) in have.chunks_mut(block).zip(want.chunks(block)) {
            if dst != src {
                dst.copy_from_slice(src);
                changed += 1;
            }
        }
        Ok(changed)
    })?;
    Ok(counts.into_iter().sum())
}

/// Writes `flat` into `slot`, each table block by block where it differs.
/// The IPv4 words after the segments and the IPv6 length last: until then
/// a reader of this (inactive) slot sees an older, consistent table or a
/// shorter search.
pub fn write(ebpf: &mut Ebpf, slot: u32, flat: &Flat) -> Result<FlatDelta, DatapathError> {
    let started = Instant::now();
    let s = slot as usize;
    let mut delta = FlatDelta {
        v4_entries: flat.v4.entries_len,
        v4_split16: flat.v4.split16,
        v6_entries: flat.v6.coarse_len,
        v6_fine_entries: flat.v6.fine_len as usize,
        ..FlatDelta::default()
    };
    delta.v6_blocks = sync_blocks(ebpf, GEO6_FINE[s], &flat.v6.fine, FINE_BLOCK_BYTES)?
        + sync_blocks(ebpf, GEO6_LEAVES[s], &flat.v6.leaves, 64 * LEAF_BYTES)?
        + sync_blocks(ebpf, GEO6_INDEX[s], &flat.v6.index, 64 * NODE_BYTES)?;
    delta.v4_blocks = sync_blocks(ebpf, GEO4_TREE[s], &flat.v4.entries, BLOCK_BYTES)?
        + sync_blocks(ebpf, GEO4_WORDS[s], &flat.v4.words, BLOCK_BYTES)?;
    super::set_config_word(ebpf, CFG_GEO_ALIASES[s], flat.aliases)?;
    super::set_config_word(ebpf, CFG_GEO6_FINE_LEN[s], flat.v6.fine_len)?;
    delta.write_seconds = started.elapsed().as_secs_f64();
    Ok(delta)
}

/// The unit [`write`] compares and copies the IPv4 tables in.
const BLOCK_BYTES: usize = 4096;

/// FNV-1a, to name a table in a verification error.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Reads back what was written: every table in full and the IPv6 length.
pub fn verify(ebpf: &mut Ebpf, slot: u32, flat: &Flat) -> Result<(), String> {
    let s = slot as usize;
    for (name, want, block) in [
        (GEO4_WORDS[s], flat.v4.words.as_ref(), BLOCK_BYTES),
        (GEO4_TREE[s], flat.v4.entries.as_ref(), BLOCK_BYTES),
        (GEO6_INDEX[s], flat.v6.index.as_ref(), 64 * NODE_BYTES),
        (GEO6_LEAVES[s], flat.v6.leaves.as_ref(), 64 * LEAF_BYTES),
        (GEO6_FINE[s], flat.v6.fine.as_ref(), FINE_BLOCK_BYTES),
    ] {
        // Window by window, with the checksums of the whole table only
        // when something differs.
        let equal = windows(ebpf, name, want, block, |have, want| Ok(have == want))
            .map_err(|e| e.to_string())?;
        if equal.contains(&false) {
            let mut have = Vec::with_capacity(want.len());
            windows(ebpf, name, want, block, |h, _| {
                have.extend_from_slice(h);
                Ok(())
            })
            .map_err(|e| e.to_string())?;
            return Err(format!(
                "{name} has checksum {:016x}, expected {:016x}",
                checksum(&have),
                checksum(want)
            ));
        }
    }
    let aliases = super::config_word(ebpf, CFG_GEO_ALIASES[s]).map_err(|e| e.to_string())?;
    if aliases != flat.aliases {
        return Err(format!(
            "the IPv4 alias word is {aliases:#x}, expected {:#x}",
            flat.aliases
        ));
    }
    let len = super::config_word(ebpf, CFG_GEO6_FINE_LEN[s]).map_err(|e| e.to_string())?;
    if len != flat.v6.fine_len {
        return Err(format!(
            "the IPv6 fine table length is {len}, expected {}",
            flat.v6.fine_len
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use enforcer_common::lookup;
    use geoip::CountryCode;

    use super::*;
    use crate::datapath::geo6::tests::Rng;

    fn cc(s: &str) -> CountryCode {
        CountryCode::new([s.as_bytes()[0], s.as_bytes()[1]]).expect("code")
    }

    fn country4(f: &Flat, a: &str) -> u16 {
        let ip: std::net::Ipv4Addr = a.parse().expect("ip");
        let Ok(found) = geo4::lookup(&f.v4, u32::from(ip));
        found.country
    }

    #[test]
    fn builds_both_families_with_gaps() {
        let v4 = geoip::Table::from_entries([
            ("10.0.0.0/8".parse().expect("net"), cc("FR")),
            ("10.1.2.128/25".parse().expect("net"), cc("DE")),
            ("11.0.0.0/25".parse().expect("net"), cc("IT")),
            ("255.255.255.0/24".parse().expect("net"), cc("IT")),
        ]);
        let v6 = geoip::Table::from_entries([
            ("2a00::/16".parse().expect("net"), cc("FR")),
            ("2a01::1/128".parse().expect("net"), cc("DE")),
        ]);
        let geo = GeoTable {
            v4,
            v6,
            aliases: geoip::Aliases::NONE,
        };
        let f = build(&geo).expect("build");
        let (fr, de, it) = (
            country_index(cc("FR")),
            country_index(cc("DE")),
            country_index(cc("IT")),
        );
        assert_eq!(country4(&f, "10.200.0.1"), fr);
        assert_eq!(country4(&f, "10.1.2.127"), fr);
        assert_eq!(country4(&f, "10.1.2.128"), de);
        assert_eq!(country4(&f, "11.0.0.127"), it);
        assert_eq!(country4(&f, "11.0.0.128"), 0);
        assert_eq!(country4(&f, "9.255.255.255"), 0);
        assert_eq!(country4(&f, "255.255.255.255"), it);
        // 10.1/16 (FR, DE, FR), 11.0/16 (IT, gap), 255.255/16 (gap, IT):
        // one line (a leaf) each.
        assert_eq!(f.v4.split16, 3);
        assert_eq!(f.v4.entries_len, 3 * enforcer_common::GEO4_TREE_LINE);
        // Coarse: ::, 2a00::, 2a01:: (split), 2a01:0:0:1::; fine: 2a01::,
        // 2a01::1, 2a01::2.
        assert_eq!(f.v6.coarse_len, 4);
        assert_eq!(f.v6.fine_len, 3);
    }

    const CODES: [&str; 5] = ["FR", "DE", "IT", "US", "CN"];

    fn any_code(rng: &mut Rng) -> CountryCode {
        cc(CODES[(rng.next() % CODES.len() as u64) as usize])
    }

    /// Random IPv4 prefixes, nested and overlapping: short and long ones
    /// anywhere, thousands of single addresses in one /16 (a tree of the
    /// greatest depth), a cluster in 10.20/16, and the very top.
    fn random_v4(rng: &mut Rng, n: usize) -> geoip::Table<Ipv4Addr> {
        let mut nets = Vec::with_capacity(n + 7000);
        for _ in 0..n {
            let len = 8 + (rng.next() % 25) as u8;
            nets.push((rng.next() as u32, len));
        }
        for _ in 0..6000 {
            nets.push((0x0a0b_0000 | (rng.next() as u32 & 0xffff), 32));
        }
        for _ in 0..300 {
            nets.push((
                0x0a14_0000 | (rng.next() as u32 & 0xffff),
                24 + (rng.next() % 9) as u8,
            ));
        }
        nets.extend([(u32::MAX, 32), (u32::MAX - 1, 32), (0, 16)]);
        geoip::Table::from_entries(nets.into_iter().map(|(a, len)| {
            let net = ipnetwork::Ipv4Network::new(Ipv4Addr::from(a), len).expect("prefix");
            (net, any_code(rng))
        }))
    }

    /// Random IPv6 prefixes: mostly /16../64, some longer (split /64s), a
    /// cluster in one /64, and the very top.
    fn random_v6(rng: &mut Rng, n: usize) -> geoip::Table<Ipv6Addr> {
        let mut nets = Vec::with_capacity(n + 300);
        for _ in 0..n {
            let r = rng.next();
            let len = if r.is_multiple_of(10) {
                65 + (r >> 8) % 64
            } else {
                16 + (r >> 8) % 49
            } as u8;
            let a = (u128::from(rng.next()) << 64) | u128::from(rng.next());
            nets.push((a, len));
        }
        let cluster = u128::from(rng.next()) << 64;
        for _ in 0..300 {
            nets.push((
                cluster | u128::from(rng.next()),
                96 + (rng.next() % 33) as u8,
            ));
        }
        nets.extend([(u128::MAX, 128), (u128::MAX << 64, 64), (0, 32)]);
        geoip::Table::from_entries(nets.into_iter().map(|(a, len)| {
            let net = ipnetwork::Ipv6Network::new(Ipv6Addr::from(a), len).expect("prefix");
            (net, any_code(rng))
        }))
    }

    /// Addresses to ask about: every range's first and last address and
    /// their neighbours, the family's ends, and `random` random ones.
    fn probes(ranges: &[(u128, u128)], max: u128, random: usize, rng: &mut Rng) -> Vec<u128> {
        let mut out = vec![0, 1, max - 1, max];
        for &(s, e) in ranges {
            out.extend([s, e, s.wrapping_sub(1) & max, e.wrapping_add(1) & max]);
        }
        for _ in 0..random {
            out.push(((u128::from(rng.next()) << 64) | u128::from(rng.next())) & max);
        }
        out
    }

    /// The kernel's lookup, the very functions the datapath runs
    /// (`enforcer_common::lookup`), on tables this builder made from a
    /// random table, against the geoip crate's own lookup of that table;
    /// and the ranges `explain` names, against its runs. The IPv4 range is
    /// the run itself; an IPv6 range lies inside it (a run that begins
    /// inside a split /64 is told from the next /64 on).
    #[test]
    fn shared_lookup_matches_the_geoip_table() {
        let mut rng = Rng(14);
        for round in 0..3 {
            let geo = GeoTable {
                v4: random_v4(&mut rng, 500 + round * 20_000),
                v6: random_v6(&mut rng, 500 + round * 10_000),
                aliases: geoip::Aliases::NONE,
            };
            let f = build(&geo).expect("build");

            let runs4: Vec<(u128, u128, u16)> = geo
                .v4
                .ranges()
                .map(|(s, e, c)| (u32::from(s).into(), u32::from(e).into(), country_index(c)))
                .collect();
            let spans: Vec<(u128, u128)> = runs4.iter().map(|&(s, e, _)| (s, e)).collect();
            for a in probes(&spans, u32::MAX.into(), 100_000, &mut rng) {
                let ip = a as u32;
                let want = geo.v4.country(Ipv4Addr::from(ip)).map_or(0, country_index);
                assert_eq!(
                    lookup::country4(&f.v4, ip),
                    Ok(want),
                    "{} in round {round}",
                    Ipv4Addr::from(ip)
                );
                let Ok(found) = geo4::lookup(&f.v4, ip);
                assert_eq!(found.country, want, "{}", Ipv4Addr::from(ip));
                if want != 0 {
                    let i = runs4.partition_point(|r| r.0 <= a) - 1;
                    assert_eq!(
                        (u128::from(found.start), u128::from(found.end)),
                        (runs4[i].0, runs4[i].1),
                        "{}",
                        Ipv4Addr::from(ip)
                    );
                }
            }

            let runs6: Vec<(u128, u128, u16)> = geo
                .v6
                .ranges()
                .map(|(s, e, c)| (u128::from(s), u128::from(e), country_index(c)))
                .collect();
            let spans: Vec<(u128, u128)> = runs6.iter().map(|&(s, e, _)| (s, e)).collect();
            for a in probes(&spans, u128::MAX, 100_000, &mut rng) {
                let ip = Ipv6Addr::from(a);
                let want = geo.v6.country(ip).map_or(0, country_index);
                assert_eq!(
                    lookup::country6(&f.v6, &ip.octets()),
                    Ok(want),
                    "{ip} in round {round}"
                );
                let Ok(found) = geo6::lookup(&f.v6, a);
                assert_eq!(found.country, want, "{ip}");
                if want != 0 {
                    let i = runs6.partition_point(|r| r.0 <= a) - 1;
                    let (s, e, _) = runs6[i];
                    assert!(
                        s <= found.start && found.start <= a && a <= found.end && found.end <= e,
                        "{ip}: {found:?} outside the run {}..{}",
                        Ipv6Addr::from(s),
                        Ipv6Addr::from(e)
                    );
                }
            }
        }
    }
}
