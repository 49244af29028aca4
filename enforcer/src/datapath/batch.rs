//! Batched operations on the GeoIP second-level hash (`GEO4L_<slot>`):
//! `BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_DELETE_BATCH`
//! (Linux 5.6), which aya 0.14 does not wrap.
//!
//! Why: aya's `HashMap::iter` costs two syscalls per entry (get_next_key,
//! then lookup), so reading the ~16k split /24s of a world database took
//! about 40 ms, once to diff before writing and once more to verify; a
//! 1% reload wrote ~2k chunks with one syscall each. A batch call copies
//! thousands of entries per syscall.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

/// A second-level chunk: the 256 palette codes of one split /24.
pub type Chunk = [u8; 256];

/// The `batch` member of `union bpf_attr`
/// (<https://github.com/torvalds/linux/blob/v6.18/include/uapi/linux/bpf.h>);
/// the kernel zero-fills the rest of the union.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// `enum bpf_cmd` values.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Entries read per lookup call: 1 MiB of chunks. The hash map's batch
/// lookup returns whole buckets, and fails with ENOSPC only when a single
/// bucket holds more than this.
const LOOKUP_WINDOW: usize = 4096;

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid `batch` member of `bpf_attr` and lives for
    // the call; every pointer in it points to buffers the caller keeps
    // alive and sized for `attr.count` keys and values of the map's sizes
    // (u32 keys, 256-byte values: checked by the layout check, compat.rs).
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            size_of::<BatchAttr>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Reads every entry of the hash map `fd` (u32 keys, [`Chunk`] values).
pub fn read_all(fd: BorrowedFd<'_>) -> io::Result<Vec<(u32, Chunk)>> {
    let mut out = Vec::new();
    for_each(fd, |key, value| out.push((key, *value)))?;
    Ok(out)
}

/// Hands every entry of the hash map `fd` to `f`, in hash order, reading
/// [`LOOKUP_WINDOW`] entries per call into one reused buffer.
pub fn for_each(fd: BorrowedFd<'_>, mut f: impl FnMut(u32, &Chunk)) -> io::Result<()> {
    let mut keys = vec![0u32; LOOKUP_WINDOW];
    let mut values = vec![[0u8; 256]; LOOKUP_WINDOW];
    // The hash map's batch cursor is a u32 bucket index
    // (htab_map_lookup_batch, kernel/bpf/hashtab.c); none to start.
    let mut cursor: Option<u32> = None;
    loop {
        let mut next = 0u32;
        let mut attr = BatchAttr {
            in_batch: cursor.as_ref().map_or(0, |c| std::ptr::from_ref(c) as u64),
            out_batch: std::ptr::from_mut(&mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: LOOKUP_WINDOW as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        // On success and on ENOENT (the end) `count` says how many were
        // filled; on any other error nothing is trusted.
        let done = match result {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) => return Err(e),
        };
        let n = (attr.count as usize).min(LOOKUP_WINDOW);
        for (key, value) in keys[..n].iter().zip(&values[..n]) {
            f(*key, value);
        }
        if done {
            return Ok(());
        }
        cursor = Some(next);
    }
}

/// Inserts or replaces `entries`, [`LOOKUP_WINDOW`] per call (the
/// values are copied into one contiguous buffer that size).
pub fn update(fd: BorrowedFd<'_>, entries: &[(u32, &Chunk)]) -> io::Result<()> {
    for window in entries.chunks(LOOKUP_WINDOW) {
        let keys: Vec<u32> = window.iter().map(|(k, _)| *k).collect();
        let values: Vec<Chunk> = window.iter().map(|(_, v)| **v).collect();
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            // elem_flags 0: BPF_ANY.
            ..BatchAttr::default()
        };
        bpf(BPF_MAP_UPDATE_BATCH, &mut attr)?;
    }
    Ok(())
}

/// Deletes `keys` in one call; every key must be present.
pub fn delete(fd: BorrowedFd<'_>, keys: &[u32]) -> io::Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: fd.as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    bpf(BPF_MAP_DELETE_BATCH, &mut attr)
}
