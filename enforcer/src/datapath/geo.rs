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
//! The big arrays are `BPF_F_MMAPABLE`: the agent maps them (a window at a
//! time) and copies only the 4 KiB blocks that differ, so writing costs a
//! compare of about 21 MiB plus what changed, with no syscall per entry.
//! The second level is diffed against what the agent knows the slot holds
//! (`Datapath` keeps it after each verified write) and written, read and
//! removed in batches (`batch.rs`).

use std::{
    collections::BTreeSet,
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
    batch::{self, Chunk},
    buffer::Buffer,
    geo6::{self, FINE_BLOCK_BYTES, LEAF_BYTES, NODE_BYTES, V6},
    map_err,
};
use crate::policy::country_index;

/// Bytes of the whole IPv4 first level.
const TBL24_BYTES: usize = GEO4_BLOCK * GEO4_BLOCKS as usize;

/// The tables one slot must hold.
pub struct Flat {
    /// One code per /24, [`TBL24_BYTES`] long.
    tbl24: Buffer,
    /// The /24s split by longer prefixes: (/24 index, codes).
    long: Long,
    /// Code -> country index (0 for unused codes).
    palette: [u16; 256],
    /// The IPv6 tables as the kernel holds them.
    v6: V6,
    /// Time spent building.
    pub build_seconds: f64,
}

impl Flat {
    /// The second level, kept by the caller after a verified write as what
    /// the slot's `GEO4L` holds.
    pub fn into_long(self) -> Long {
        self.long
    }
}

/// A second level as (/24 index, chunk), sorted by index with no repeats:
/// a sorted vector rather than a map, so it is built and compared without
/// moving 4 MiB of chunks around tree nodes.
pub type Long = Vec<(u32, Chunk)>;

/// The chunk of `index` in `long`.
fn chunk_of(long: &Long, index: u32) -> Option<&Chunk> {
    long.binary_search_by_key(&index, |(i, _)| *i)
        .ok()
        .map(|at| &long[at].1)
}

/// The second-level keys one write touched, for [`verify`] to read back.
#[derive(Debug, Default)]
pub struct Written {
    /// Whether the map was read whole before writing (nothing was held).
    read_whole: bool,
    upserted: Vec<u32>,
    removed: Vec<u32>,
}

/// Above this many written keys [`verify`] reads the map back whole (a few
/// batch calls) rather than one lookup per key.
const VERIFY_BY_KEY_MAX: usize = 4096;

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
    // A flag per country index rather than a set: one pass over ~300k
    // ranges with no allocation.
    let mut seen = [false; enforcer_common::COUNTRY_SLOTS];
    for (_, _, country) in geo.v4.ranges() {
        seen[country_index(country) as usize] = true;
    }
    let countries: BTreeSet<u16> = (0..enforcer_common::COUNTRY_SLOTS as u16)
        .filter(|&c| seen[c as usize])
        .collect();
    let palette = palette(&countries, held)?;
    let mut code_of = [0u8; enforcer_common::COUNTRY_SLOTS];
    for (code, &c) in palette.iter().enumerate() {
        if c != 0 {
            code_of[c as usize] = code as u8;
        }
    }

    let mut tbl24 = Buffer::zeroed(TBL24_BYTES).map_err(|e| no_memory("IPv4 table", e))?;
    // The ranges are sorted and disjoint, so the pieces of a split /24
    // arrive one after the other and the /24s in increasing order: the
    // chunk being filled is always the last one.
    let mut partial: Vec<(u32, Chunk)> = Vec::new();
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
                if partial.last().is_none_or(|(i, _)| *i != index as u32) {
                    partial.push((index as u32, [0; 256]));
                }
                if let Some((_, chunk)) = partial.last_mut() {
                    chunk[(a & 0xff) as usize..=(stop & 0xff) as usize].fill(code);
                }
                a = stop + 1;
            }
        }
    }
    // In place: `partial` becomes the second level.
    let mut long = partial;
    long.retain(|(index, chunk)| {
        let uniform = chunk.iter().all(|&c| c == chunk[0]);
        tbl24[*index as usize] = if uniform { chunk[0] } else { GEO4_LONG };
        !uniform
    });
    // Kept after the install (what the slot holds): no spare capacity.
    long.shrink_to_fit();
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

fn no_memory(what: &str, e: std::io::Error) -> DatapathError {
    DatapathError::Pin {
        path: what.into(),
        detail: format!("cannot allocate memory to build it: {e}"),
    }
}

/// A shared, writable mapping of a `BPF_F_MMAPABLE` array map.
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
    ) -> Result<Mapping, DatapathError> {
        // SAFETY: a fresh shared mapping of `len` bytes of the map's fd at
        // `offset` (page-aligned: see `windows`); the kernel refuses
        // (EINVAL) a range beyond the array's data (array_map_mmap,
        // https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/arraymap.c#L574),
        // and the whole table is value_size * max_entries, which the layout
        // check (compat.rs) confirmed. Nothing else in this process maps it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
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
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let unit = lcm(page, block);
    let window = unit * (WINDOW_BYTES / unit).max(1);
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < want.len() {
        let len = window.min(want.len() - offset);
        let mut mapping = Mapping::new(data.fd().as_fd(), offset, len, name)?;
        out.push(f(mapping.bytes(), &want[offset..offset + len])?);
        offset += len;
    }
    Ok(out)
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

/// The fd of the second-level hash map `name`.
fn long_fd<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<BorrowedFd<'a>, DatapathError> {
    match ebpf.map(name) {
        Some(Map::HashMap(data)) => Ok(data.fd().as_fd()),
        Some(_) => Err(map_err(name)(MapError::InvalidName {
            name: name.to_owned(),
        })),
        None => Err(DatapathError::MissingMap(name)),
    }
}

/// Reads a whole second-level map, in batches.
fn read_long(ebpf: &Ebpf, name: &'static str) -> Result<Long, DatapathError> {
    let fd = long_fd(ebpf, name)?;
    let mut long = batch::read_all(fd).map_err(|e| batch_err(name, "bpf_map_lookup_batch", e))?;
    // Hash order; a hash map holds each key once.
    long.sort_unstable_by_key(|(index, _)| *index);
    Ok(long)
}

/// A failed batch call on map `name`, named like aya names its calls.
fn batch_err(name: &'static str, call: &'static str, io_error: std::io::Error) -> DatapathError {
    map_err(name)(MapError::SyscallError(aya::sys::SyscallError {
        call,
        io_error,
    }))
}

/// Writes `flat` into `slot`: the big arrays block by block where they
/// differ, the second level as a diff against `held` (what an earlier
/// verified write of this process left in the slot's `GEO4L`; read from the
/// map when `None`), the palette and the IPv6 length.
pub fn write(
    ebpf: &mut Ebpf,
    slot: u32,
    flat: &Flat,
    held: Option<&Long>,
) -> Result<(FlatDelta, Written), DatapathError> {
    let started = Instant::now();
    let s = slot as usize;
    let mut written = Written::default();
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
        let read;
        let existing = match held {
            Some(held) => held,
            None => {
                read = read_long(ebpf, name)?;
                &read
            }
        };
        written.read_whole = held.is_none();
        let fd = long_fd(ebpf, name)?;
        let stale: Vec<u32> = existing
            .iter()
            .map(|(index, _)| *index)
            .filter(|index| chunk_of(&flat.long, *index).is_none())
            .collect();
        batch::delete(fd, &stale).map_err(|e| batch_err(name, "bpf_map_delete_batch", e))?;
        delta.v4_long_removed = stale.len();
        written.removed = stale;
        let changed: Vec<(u32, &Chunk)> = flat
            .long
            .iter()
            .filter(|(index, chunk)| chunk_of(existing, *index) != Some(chunk))
            .map(|(index, chunk)| (*index, chunk))
            .collect();
        batch::update(fd, &changed).map_err(|e| batch_err(name, "bpf_map_update_batch", e))?;
        delta.v4_long_written = changed.len();
        written.upserted = changed.iter().map(|(index, _)| *index).collect();
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
    Ok((delta, written))
}

/// FNV-1a, to name a table in a verification error.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Reads back what was written: both big arrays in full, the palette, the
/// IPv6 length and the second level (see [`verify_long`]).
pub fn verify(ebpf: &mut Ebpf, slot: u32, flat: &Flat, written: &Written) -> Result<(), String> {
    let s = slot as usize;
    for (name, want, block) in [
        (GEO4[s], flat.tbl24.as_ref(), GEO4_BLOCK),
        (GEO6I[s], flat.v6.index.as_ref(), 64 * NODE_BYTES),
        (GEO6[s], flat.v6.leaves.as_ref(), 64 * LEAF_BYTES),
        (GEO6F[s], flat.v6.fine.as_ref(), FINE_BLOCK_BYTES),
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
    verify_long(ebpf, GEO4L[s], flat, written)?;
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

/// Reads the second level back. When the map was read whole before the
/// write, or many keys were written, it is read whole again (batched, a few
/// ms) and must equal `flat` exactly. Otherwise every key written is looked
/// up (each through its own syscall, a read path separate from the batch
/// write) and every key removed must be gone; the chunks not written are
/// not re-read: they are what an earlier write of this process verified,
/// and nothing else writes the map (one agent per pin directory, the
/// `PinLock`; `check`/`status` only read). Any failed install drops what
/// the agent holds, so the next one starts from a whole read again.
fn verify_long(
    ebpf: &Ebpf,
    name: &'static str,
    flat: &Flat,
    written: &Written,
) -> Result<(), String> {
    if written.read_whole || written.upserted.len() + written.removed.len() > VERIFY_BY_KEY_MAX {
        // Compared as it is read, a window at a time: the map holds each
        // key once, so every key of `flat` found with its chunk and no
        // other key means the same contents.
        let (mut found, mut differ) = (0usize, 0usize);
        let fd = long_fd(ebpf, name).map_err(|e| e.to_string())?;
        batch::for_each(fd, |index, chunk| {
            if chunk_of(&flat.long, index) == Some(chunk) {
                found += 1;
            } else {
                differ += 1;
            }
        })
        .map_err(|e| batch_err(name, "bpf_map_lookup_batch", e).to_string())?;
        if differ != 0 || found != flat.long.len() {
            return Err(format!(
                "{name} holds {} chunks as written of {} expected, and {differ} others",
                found,
                flat.long.len()
            ));
        }
        return Ok(());
    }
    let map = ebpf
        .map(name)
        .ok_or(DatapathError::MissingMap(name))
        .map_err(|e| e.to_string())?;
    let map: HashMap<&MapData, u32, Chunk> =
        HashMap::try_from(map).map_err(|e| format!("{name}: {e}"))?;
    for index in &written.upserted {
        let want = chunk_of(&flat.long, *index);
        match map.get(index, 0) {
            Ok(got) if Some(&got) == want => {}
            Ok(_) => return Err(format!("{name}[{index}] differs from what was written")),
            Err(e) => return Err(format!("{name}[{index}]: {e}")),
        }
    }
    for index in &written.removed {
        match map.get(index, 0) {
            Err(MapError::KeyNotFound) => {}
            Ok(_) => return Err(format!("{name}[{index}] is still present after removal")),
            Err(e) => return Err(format!("{name}[{index}]: {e}")),
        }
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
            code = chunk_of(&f.long, ip >> 8).expect("a split /24")[(ip & 0xff) as usize];
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
