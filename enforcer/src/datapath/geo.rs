//! The GeoIP flat tables from the agent's side: built in memory from the
//! aggregated [`GeoTable`], written into a slot's maps, read back to verify.
//! The lookup is `enforcer-ebpf/src/geo.rs` (and `explain.rs` mirrors it);
//! the layout is documented in `enforcer_common::layout`.
//!
//! - IPv4 (DIR-24-8): `GEO4_<slot>` holds one palette code per /24;
//!   `GEO4L_<slot>` holds the 256 codes of each /24 that longer prefixes
//!   split (marked [`GEO4_LONG`]); `GEOPAL` turns codes into country
//!   indices. Codes are kept stable across reloads (a country keeps the code
//!   the slot already gave it), so a database refresh rewrites only the
//!   blocks whose countries changed.
//! - IPv6: the sorted starts of the maximal same-country ranges and the
//!   gaps between them, as a search tree over /64s (`GEO6I_<slot>`,
//!   `GEO6_<slot>`) and a fine table for split /64s (`GEO6F_<slot>`,
//!   `CONFIG[CFG_GEO6F_LEN[slot]]` entries in use): `geo6.rs`.
//!
//! The big arrays are `BPF_F_MMAPABLE`: the agent maps them and copies only
//! the blocks that differ, so writing costs a compare of about 21 MiB plus
//! what changed, with no syscall per entry.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    ptr::NonNull,
    time::Instant,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, MapError},
};
use enforcer_common::{
    CFG_GEO6F_LEN, GEO_PALETTE_CODES, GEO4, GEO4_BLOCK, GEO4_BLOCKS, GEO4_LONG, GEO4_LONG_CAPACITY,
    GEO4L, GEO6, GEO6F, GEO6I, GEOPAL,
};
use geoip::GeoTable;

use super::{
    DatapathError,
    geo6::{self, FINE_BLOCK_BYTES, LEAF_BYTES, NODE_BYTES, V6},
    map_err,
};
use crate::policy::country_index;

/// Bytes of the whole IPv4 first level.
const TBL24_BYTES: usize = GEO4_BLOCK * GEO4_BLOCKS as usize;

/// The tables one slot must hold.
pub struct Flat {
    /// One code per /24, [`TBL24_BYTES`] long.
    tbl24: Vec<u8>,
    /// The /24s split by longer prefixes: /24 index -> codes.
    long: BTreeMap<u32, [u8; 256]>,
    /// Code -> country index (0 for unused codes).
    palette: [u16; 256],
    /// The IPv6 tables as the kernel holds them.
    v6: V6,
    /// Time spent building.
    pub build_seconds: f64,
}

/// What writing the flat tables changed, in blocks (4 KiB of IPv4 first
/// level, 256 IPv6 entries) and second-level chunks.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FlatDelta {
    pub v4_blocks: usize,
    pub v4_long_written: usize,
    pub v4_long_removed: usize,
    /// /24s split by longer prefixes, after the write.
    pub v4_long: usize,
    pub v6_blocks: usize,
    /// IPv6 coarse entries (by /64) in use after the write.
    pub v6_entries: usize,
    /// IPv6 fine entries (inside split /64s) in use after the write.
    pub v6_fine_entries: usize,
    pub write_seconds: f64,
}

/// Reads the palette `slot` holds (a fresh map reads as zeros).
fn read_palette(ebpf: &Ebpf, slot: u32) -> Result<[u16; 256], DatapathError> {
    let map = ebpf.map(GEOPAL).ok_or(DatapathError::MissingMap(GEOPAL))?;
    let pal: Array<&MapData, u16> = Array::try_from(map).map_err(map_err(GEOPAL))?;
    let mut out = [0u16; 256];
    for (code, v) in out.iter_mut().enumerate() {
        *v = pal
            .get(&(slot * 256 + code as u32), 0)
            .map_err(map_err(GEOPAL))?;
    }
    Ok(out)
}

/// Gives every country of `countries` a code 1..=254, keeping the code
/// `held` gives it when there is one, so unchanged /24s keep their bytes.
fn palette(countries: &BTreeSet<u16>, held: &[u16; 256]) -> Result<[u16; 256], DatapathError> {
    if countries.len() > GEO_PALETTE_CODES {
        return Err(DatapathError::Capacity {
            what: "GeoIP countries (IPv4 palette)".to_owned(),
            need: countries.len(),
            capacity: GEO_PALETTE_CODES as u32,
        });
    }
    let codes = 1..=GEO_PALETTE_CODES;
    let mut out = [0u16; 256];
    let mut placed = BTreeSet::new();
    for code in codes.clone() {
        let c = held[code];
        if c != 0 && countries.contains(&c) && placed.insert(c) {
            out[code] = c;
        }
    }
    let free: Vec<usize> = codes.filter(|&code| out[code] == 0).collect();
    let unplaced = countries.iter().filter(|c| !placed.contains(*c));
    // Enough codes: the count was checked above.
    for (code, &c) in free.into_iter().zip(unplaced) {
        out[code] = c;
    }
    Ok(out)
}

/// Builds the tables for `geo`, reusing the palette codes of `held`.
pub fn build(geo: &GeoTable, held: &[u16; 256]) -> Result<Flat, DatapathError> {
    let started = Instant::now();
    let countries: BTreeSet<u16> = geo.v4.ranges().map(|(_, _, c)| country_index(c)).collect();
    let palette = palette(&countries, held)?;
    let mut code_of = [0u8; enforcer_common::COUNTRY_SLOTS];
    for (code, &c) in palette.iter().enumerate() {
        if c != 0 {
            code_of[c as usize] = code as u8;
        }
    }

    let mut tbl24 = vec![0u8; TBL24_BYTES];
    let mut partial: BTreeMap<u32, [u8; 256]> = BTreeMap::new();
    for (start, end, country) in geo.v4.ranges() {
        let code = code_of[country_index(country) as usize];
        let (mut a, e) = (u64::from(u32::from(start)), u64::from(u32::from(end)));
        while a <= e {
            let index = (a >> 8) as usize;
            if a & 0xff == 0 && a | 0xff <= e {
                // Whole /24s up to the last one the range covers entirely.
                let last = ((e + 1) >> 8) as usize;
                tbl24[index..last].fill(code);
                a = (last as u64) << 8;
            } else {
                let stop = (a | 0xff).min(e);
                let chunk = partial.entry(index as u32).or_insert([0; 256]);
                chunk[(a & 0xff) as usize..=(stop & 0xff) as usize].fill(code);
                a = stop + 1;
            }
        }
    }
    let mut long = BTreeMap::new();
    for (index, chunk) in partial {
        if chunk.iter().all(|&c| c == chunk[0]) {
            tbl24[index as usize] = chunk[0];
        } else {
            tbl24[index as usize] = GEO4_LONG;
            long.insert(index, chunk);
        }
    }
    if long.len() > GEO4_LONG_CAPACITY as usize {
        return Err(DatapathError::Capacity {
            what: "GeoIP IPv4 /24s split by longer prefixes".to_owned(),
            need: long.len(),
            capacity: GEO4_LONG_CAPACITY,
        });
    }

    // IPv6: a start for every range and every gap; entry 0 starts at `::`.
    let mut entries: Vec<(u128, u16)> = Vec::with_capacity(2 * geo.v6.range_count() + 1);
    let mut next: Option<u128> = Some(0);
    for (start, end, country) in geo.v6.ranges() {
        let (s, e) = (u128::from(start), u128::from(end));
        match next {
            Some(n) if n < s => entries.push((n, 0)),
            _ => {}
        }
        entries.push((s, country_index(country)));
        next = e.checked_add(1);
    }
    if let Some(n) = next {
        entries.push((n, 0));
    }
    let v6 = geo6::build(&entries)?;
    Ok(Flat {
        tbl24,
        long,
        palette,
        v6,
        build_seconds: started.elapsed().as_secs_f64(),
    })
}

/// A shared, writable mapping of a `BPF_F_MMAPABLE` array map.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(fd: BorrowedFd<'_>, len: usize, name: &'static str) -> Result<Mapping, DatapathError> {
        // SAFETY: a fresh shared mapping of `len` bytes of the map's fd at
        // offset 0; the kernel refuses (EINVAL) a length beyond the array's
        // data (array_map_mmap,
        // https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/arraymap.c#L574),
        // and `len` is value_size * max_entries, which the layout check
        // (compat.rs) confirmed. Nothing else in this process maps it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
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

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live mapping of `len` readable and writable
        // bytes (see `new`), borrowed mutably through `self`. eBPF programs
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

/// Copies the blocks of `want` that differ from the map's, returns how many.
fn sync_blocks(
    ebpf: &Ebpf,
    name: &'static str,
    want: &[u8],
    block: usize,
) -> Result<usize, DatapathError> {
    let data = map_data(ebpf, name)?;
    let mut mapping = Mapping::new(data.fd().as_fd(), want.len(), name)?;
    let have = mapping.bytes();
    let mut changed = 0;
    for (dst, src) in have.chunks_mut(block).zip(want.chunks(block)) {
        if dst != src {
            dst.copy_from_slice(src);
            changed += 1;
        }
    }
    Ok(changed)
}

fn long_map<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<HashMap<&'a mut MapData, u32, [u8; 256]>, DatapathError> {
    let map = ebpf.map_mut(name).ok_or(DatapathError::MissingMap(name))?;
    HashMap::try_from(map).map_err(map_err(name))
}

/// Reads a whole second-level map.
fn read_long(
    map: &HashMap<&mut MapData, u32, [u8; 256]>,
    name: &'static str,
) -> Result<BTreeMap<u32, [u8; 256]>, DatapathError> {
    map.iter().map(|item| item.map_err(map_err(name))).collect()
}

/// Writes `flat` into `slot`: the big arrays block by block where they
/// differ, the second level as a diff, the palette and the IPv6 length.
pub fn write(ebpf: &mut Ebpf, slot: u32, flat: &Flat) -> Result<FlatDelta, DatapathError> {
    let started = Instant::now();
    let s = slot as usize;
    let mut delta = FlatDelta {
        v4_long: flat.long.len(),
        v6_entries: flat.v6.coarse_len,
        v6_fine_entries: flat.v6.fine_len as usize,
        ..FlatDelta::default()
    };
    // The IPv6 length last but one and the palette last: until then a
    // reader of this (inactive) slot sees an older, consistent table or a
    // shorter search, never a code without its country.
    delta.v6_blocks = sync_blocks(ebpf, GEO6F[s], &flat.v6.fine, FINE_BLOCK_BYTES)?
        + sync_blocks(ebpf, GEO6[s], &flat.v6.leaves, 64 * LEAF_BYTES)?
        + sync_blocks(ebpf, GEO6I[s], &flat.v6.index, 64 * NODE_BYTES)?;
    {
        let name = GEO4L[s];
        let mut map = long_map(ebpf, name)?;
        let existing = read_long(&map, name)?;
        for index in existing.keys().filter(|k| !flat.long.contains_key(k)) {
            map.remove(index).map_err(map_err(name))?;
            delta.v4_long_removed += 1;
        }
        for (index, chunk) in &flat.long {
            if existing.get(index) != Some(chunk) {
                map.insert(index, chunk, 0).map_err(map_err(name))?;
                delta.v4_long_written += 1;
            }
        }
    }
    delta.v4_blocks = sync_blocks(ebpf, GEO4[s], &flat.tbl24, GEO4_BLOCK)?;
    super::set_config_word(ebpf, CFG_GEO6F_LEN[s], flat.v6.fine_len)?;
    {
        let map = ebpf
            .map_mut(GEOPAL)
            .ok_or(DatapathError::MissingMap(GEOPAL))?;
        let mut pal: Array<&mut MapData, u16> = Array::try_from(map).map_err(map_err(GEOPAL))?;
        for (code, country) in flat.palette.iter().enumerate() {
            pal.set(slot * 256 + code as u32, country, 0)
                .map_err(map_err(GEOPAL))?;
        }
    }
    delta.write_seconds = started.elapsed().as_secs_f64();
    Ok(delta)
}

/// FNV-1a, to name a table in a verification error.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Reads everything back: both big arrays in full, every second-level
/// chunk, the palette and the IPv6 length.
pub fn verify(ebpf: &mut Ebpf, slot: u32, flat: &Flat) -> Result<(), String> {
    let s = slot as usize;
    for (name, want) in [
        (GEO4[s], &flat.tbl24),
        (GEO6I[s], &flat.v6.index),
        (GEO6[s], &flat.v6.leaves),
        (GEO6F[s], &flat.v6.fine),
    ] {
        let data = map_data(ebpf, name).map_err(|e| e.to_string())?;
        let mut mapping =
            Mapping::new(data.fd().as_fd(), want.len(), name).map_err(|e| e.to_string())?;
        let have = mapping.bytes();
        if have != want.as_slice() {
            return Err(format!(
                "{name} has checksum {:016x}, expected {:016x}",
                checksum(have),
                checksum(want)
            ));
        }
    }
    let name = GEO4L[s];
    let map = long_map(ebpf, name).map_err(|e| e.to_string())?;
    let have = read_long(&map, name).map_err(|e| e.to_string())?;
    if have != flat.long {
        return Err(format!(
            "{name} holds {} chunks, expected {} (or their contents differ)",
            have.len(),
            flat.long.len()
        ));
    }
    let pal = read_palette(ebpf, slot).map_err(|e| e.to_string())?;
    if pal != flat.palette {
        return Err(format!(
            "{GEOPAL} of slot {slot} differs from what was written"
        ));
    }
    let len = super::config_word(ebpf, CFG_GEO6F_LEN[s]).map_err(|e| e.to_string())?;
    if len != flat.v6.fine_len {
        return Err(format!(
            "the IPv6 fine table length is {len}, expected {}",
            flat.v6.fine_len
        ));
    }
    Ok(())
}

/// Builds the tables for `slot`, reusing its palette codes.
pub fn build_for(ebpf: &Ebpf, slot: u32, geo: &GeoTable) -> Result<Flat, DatapathError> {
    let held = read_palette(ebpf, slot)?;
    build(geo, &held)
}

#[cfg(test)]
mod tests {
    use super::*;
    use geoip::CountryCode;
    use std::net::Ipv4Addr;

    fn cc(s: &str) -> CountryCode {
        CountryCode::new([s.as_bytes()[0], s.as_bytes()[1]]).expect("code")
    }

    /// The code of an IPv4 address, as the kernel reads it.
    fn code4(f: &Flat, a: Ipv4Addr) -> u16 {
        let ip = u32::from(a);
        let mut code = f.tbl24[(ip >> 8) as usize];
        if code == GEO4_LONG {
            code = f.long[&(ip >> 8)][(ip & 0xff) as usize];
        }
        f.palette[code as usize]
    }

    #[test]
    fn builds_both_levels_and_ranges() {
        let v4 = geoip::Table::from_entries([
            ("10.0.0.0/8".parse().expect("net"), cc("FR")),
            ("10.1.2.128/25".parse().expect("net"), cc("DE")),
            ("11.0.0.0/25".parse().expect("net"), cc("IT")),
        ]);
        let v6 = geoip::Table::from_entries([
            ("2a00::/16".parse().expect("net"), cc("FR")),
            ("2a01::1/128".parse().expect("net"), cc("DE")),
        ]);
        let geo = GeoTable { v4, v6 };
        let f = build(&geo, &[0; 256]).expect("build");
        let fr = country_index(cc("FR"));
        let de = country_index(cc("DE"));
        assert_eq!(code4(&f, "10.200.0.1".parse().expect("ip")), fr);
        assert_eq!(code4(&f, "10.1.2.127".parse().expect("ip")), fr);
        assert_eq!(code4(&f, "10.1.2.128".parse().expect("ip")), de);
        assert_eq!(code4(&f, "11.0.0.128".parse().expect("ip")), 0);
        assert_eq!(code4(&f, "9.255.255.255".parse().expect("ip")), 0);
        assert_eq!(f.long.len(), 2);
        // Coarse: ::, 2a00::, 2a01:: (split), 2a01:0:0:1::; fine: 2a01::,
        // 2a01::1, 2a01::2.
        assert_eq!(f.v6.coarse_len, 4);
        assert_eq!(f.v6.fine_len, 3);

        // A country keeps its code when the palette is reused.
        let again = build(&geo, &f.palette).expect("build");
        assert_eq!(again.palette, f.palette);
        let mut shifted = [0u16; 256];
        shifted[7] = de;
        let g = build(&geo, &shifted).expect("build");
        assert_eq!(g.palette[7], de);
    }
}
