//! A zeroed, page-backed byte buffer for the flat tables built in memory
//! (16 MiB of IPv4 first level, 7 MiB of IPv6 ranges) before they are
//! copied into the maps.
//!
//! Why not a `Vec`: faulting in 16 MiB of fresh 4 KiB pages cost 15-25 ms
//! on the benchmark machine, most of a reload, where 2 MiB transparent huge
//! pages (`MADV_HUGEPAGE`; honoured when THP is `always` or `madvise`)
//! take 3 ms. And freeing a buffer this size into the allocator raised
//! glibc's mmap threshold, so the next one came from the heap and stayed
//! in the agent's RSS after the install; this one is unmapped on drop.

use std::{
    io,
    ops::{Deref, DerefMut},
    ptr::NonNull,
};

/// Alignment of the region handed out: a transparent huge page.
const HUGE: usize = 2 << 20;

pub struct Buffer {
    /// The whole mapping (`map_len` bytes).
    map: NonNull<u8>,
    map_len: usize,
    /// Where the buffer starts inside it (`HUGE`-aligned) and its length.
    start: usize,
    len: usize,
}

impl Buffer {
    /// `len` zero bytes for the table named `what`, or the error that says
    /// it could not be built.
    pub fn for_table(len: usize, what: &str) -> Result<Buffer, super::DatapathError> {
        Buffer::zeroed(len).map_err(|e| super::DatapathError::Pin {
            path: what.into(),
            detail: format!("cannot allocate memory to build it: {e}"),
        })
    }

    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> io::Result<Buffer> {
        let map_len = len + HUGE;
        // SAFETY: a fresh private anonymous mapping; no address is imposed.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let map = NonNull::new(p.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        let start = (map.as_ptr() as usize).next_multiple_of(HUGE) - map.as_ptr() as usize;
        // Advice only: without THP the buffer works on 4 KiB pages.
        // SAFETY: the range lies inside the mapping made above.
        unsafe {
            libc::madvise(map.as_ptr().add(start).cast(), len, libc::MADV_HUGEPAGE);
        }
        Ok(Buffer {
            map,
            map_len,
            start,
            len,
        })
    }
}

impl Deref for Buffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `start + len <= map_len` bytes of a live, readable and
        // writable private mapping owned by `self`; anonymous pages read as
        // zero until written.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(self.start), self.len) }
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_ptr().add(self.start), self.len) }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `zeroed` mapped; no borrow outlives
        // self.
        unsafe {
            libc::munmap(self.map.as_ptr().cast(), self.map_len);
        }
    }
}

// SAFETY: the buffer owns its mapping exclusively, like a Vec<u8>.
unsafe impl Send for Buffer {}
// SAFETY: shared access is read-only through `Deref`.
unsafe impl Sync for Buffer {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_writable_and_aligned() {
        let mut b = Buffer::zeroed(3 << 20).expect("buffer");
        assert_eq!(b.len(), 3 << 20);
        assert!(b.iter().all(|&x| x == 0));
        assert_eq!(b.as_ptr() as usize % HUGE, 0);
        b[(3 << 20) - 1] = 7;
        assert_eq!(b[(3 << 20) - 1], 7);
    }
}
