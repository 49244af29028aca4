//! The live maps, read-only: opening them by name under the pin
//! directory, longest-prefix lookups in the rule tries, and the GeoIP
//! tables' readers for the shared lookup (`enforcer_common::lookup`): the
//! single-value tables a page at a time through read-only mappings, the
//! IPv6 fine table an entry at a time.

use std::{os::fd::AsFd as _, path::Path};

use aya::{
    Pod,
    maps::{
        Array, Map, MapData, MapError,
        lpm_trie::{Key, LpmTrie},
    },
};
use enforcer_common::{
    CFG_GEO6_FINE_LEN, GEO6_BLOCK, GEO6_FINE, Geo6Block, Geo6Leaf,
    lookup::{Entries4, Tables4, Tables6},
};

use super::Explainer;
use crate::datapath::{
    DatapathError, geo, map_err,
    pinned::{Access, open_map},
};

/// Opens one pinned map read-only.
pub(super) fn open_read_only(pin_dir: &Path, name: &'static str) -> Result<Map, DatapathError> {
    open_map(pin_dir, name, Access::ReadOnly)
}

/// A pinned array for reading through a read-only mapping
/// ([`geo::read_window`]). Its fd is opened read-write: the kernel maps a
/// BPF map only shared (`bpf_map_mmap` refuses a mapping without
/// VM_SHARED), and mmap drops VM_SHARED for a file not open for writing
/// (mm/mmap.c, `do_mmap`); the mapping itself is PROT_READ, and the kernel
/// then also clears VM_MAYWRITE, so it can never be made writable.
pub(super) fn map_data(pin_dir: &Path, name: &'static str) -> Result<MapData, DatapathError> {
    match open_map(pin_dir, name, Access::ReadWrite)? {
        Map::Array(data) => Ok(data),
        _ => Err(map_err(name)(MapError::InvalidName {
            name: name.to_owned(),
        })),
    }
}

pub(super) fn trie<K: Pod, V: Pod>(
    pin_dir: &Path,
    name: &'static str,
) -> Result<LpmTrie<MapData, K, V>, DatapathError> {
    LpmTrie::try_from(open_read_only(pin_dir, name)?).map_err(map_err(name))
}

pub(super) fn array<V: Pod>(
    pin_dir: &Path,
    name: &'static str,
) -> Result<Array<MapData, V>, DatapathError> {
    Array::try_from(open_read_only(pin_dir, name)?).map_err(map_err(name))
}

/// A longest-prefix-match lookup of a full-length key; `None` when nothing
/// matches (the kernel's `get` returning `None`).
pub(super) fn lpm<const N: usize, V: Pod>(
    trie: &LpmTrie<MapData, [u8; N], V>,
    name: &'static str,
    data: [u8; N],
) -> Result<Option<V>, DatapathError> {
    match trie.get(&Key::new((N * 8) as u32, data), 0) {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(map_err(name)(e)),
    }
}

/// One map of a single large value (the GeoIP tables but `GEO6_FINE`: 256 KiB
/// to 4 MiB), which a map lookup would copy whole (onto the stack, through
/// aya): read through a read-only mapping instead, one page at a time, and
/// the pages read are kept, as a descent reads several elements of one
/// cache line.
pub(super) struct Paged<'a> {
    name: &'static str,
    data: &'a MapData,
    /// The value's size.
    bytes: usize,
    pages: std::cell::RefCell<std::collections::HashMap<usize, Vec<u8>>>,
}

impl<'a> Paged<'a> {
    pub(super) fn new(name: &'static str, data: &'a MapData, bytes: usize) -> Paged<'a> {
        Paged {
            name,
            data,
            bytes,
            pages: Default::default(),
        }
    }

    /// Element `i` of the value seen as an array of `T`.
    fn get<T: Pod>(&self, i: u32) -> Result<T, DatapathError> {
        let size = std::mem::size_of::<T>();
        let first = i as usize * size;
        if first + size > self.bytes {
            return Err(map_err(self.name)(MapError::OutOfBounds {
                index: i,
                max_entries: (self.bytes / size) as u32,
            }));
        }
        // Whole pages: a mapping's offset must be a multiple of one. The
        // tables' elements (4 or 64 bytes) never straddle two, but the copy
        // below does not rely on it.
        let page_bytes = geo::page_bytes();
        let mut out = Vec::with_capacity(size);
        let mut pages = self.pages.borrow_mut();
        while out.len() < size {
            let byte = first + out.len();
            let page = byte / page_bytes;
            let bytes = match pages.entry(page) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(geo::read_window(
                    self.data.fd().as_fd(),
                    page * page_bytes,
                    page_bytes.min(self.bytes - page * page_bytes),
                    self.name,
                )?),
            };
            let at = byte % page_bytes;
            let take = (size - out.len()).min(bytes.len() - at);
            out.extend_from_slice(&bytes[at..at + take]);
        }
        // SAFETY: `out` holds size_of::<T>() bytes, and T is Pod: plain
        // bytes with no invalid values.
        Ok(unsafe { std::ptr::read_unaligned(out.as_ptr().cast::<T>()) })
    }
}

/// One slot's IPv4 tables, read from the pinned maps, for
/// [`geo4::lookup`].
pub(super) struct SlotV4<'a> {
    pub(super) words: Paged<'a>,
    pub(super) entries: Paged<'a>,
}

impl<'a> Tables4 for SlotV4<'a> {
    type Error = DatapathError;
    type Entries<'s>
        = &'s Paged<'a>
    where
        Self: 's;

    fn word(&self, i: u32) -> Result<u32, DatapathError> {
        self.words.get(i)
    }

    fn entries(&self) -> Result<&Paged<'a>, DatapathError> {
        Ok(&self.entries)
    }
}

/// `GEO4_TREE`'s entries, a page at a time.
impl Entries4 for Paged<'_> {
    type Error = DatapathError;

    fn entry(&self, i: usize) -> Result<u32, DatapathError> {
        // The lookup's indices are below GEO4_TREE_CAPACITY (2^20); a larger
        // one is out of bounds all the same.
        self.get(u32::try_from(i).unwrap_or(u32::MAX))
    }
}

/// One slot's IPv6 tables, read from the pinned maps, for
/// [`geo6::lookup`]: the index and the leaves a page at a time (each is one
/// value), the fine table one block at a time.
pub(super) struct SlotV6<'a> {
    pub(super) explainer: &'a Explainer,
    pub(super) slot: usize,
    pub(super) index: Paged<'a>,
    pub(super) leaves: Paged<'a>,
}

impl Tables6 for SlotV6<'_> {
    type Error = DatapathError;
    type Node = [u64; 8];
    type Leaf = Geo6Leaf;

    fn node(&self, i: u32) -> Result<[u64; 8], DatapathError> {
        self.index.get(i)
    }

    fn leaf(&self, i: u32) -> Result<Geo6Leaf, DatapathError> {
        self.leaves.get(i)
    }

    fn fine_len(&self) -> Result<u32, DatapathError> {
        self.explainer.word(CFG_GEO6_FINE_LEN[self.slot])
    }

    fn fine_start(&self, b: u32, j: usize) -> Result<(u64, u64), DatapathError> {
        let block = self.fine_block(b)?;
        let j = j % GEO6_BLOCK;
        Ok((block.hi[j], block.lo[j]))
    }

    fn fine_country(&self, b: u32, j: usize) -> Result<u16, DatapathError> {
        Ok(self.fine_block(b)?.country[j % GEO6_BLOCK])
    }
}

impl SlotV6<'_> {
    /// Fine block `b`, copied out of the map (4.5 KiB: a map lookup).
    fn fine_block(&self, b: u32) -> Result<Geo6Block, DatapathError> {
        self.explainer.geo6_fine[self.slot]
            .get(&b, 0)
            .map_err(map_err(GEO6_FINE[self.slot]))
    }
}
