//! Detaching pinned bpf_links before returning.
//!
//! Removing a link's last pin drops the link's last reference, and the
//! kernel then releases it from a workqueue (`bpf_link_put` schedules
//! `bpf_link_put_deferred`, see
//! https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/syscall.c), so
//! the program keeps deciding for a moment after `unlink` returns: an
//! `enforcer uninstall` that said "detached" could be followed by one more
//! refused connection, and a replaced link would briefly count twice with
//! its successor. `BPF_LINK_DETACH` detaches the program synchronously; the
//! link object itself goes away when its last fd closes.
//!
//! It also opens pinned objects by path (`BPF_OBJ_GET`), optionally
//! read-only, for whoever needs an fd and not a loaded object.

use std::{
    ffi::CString,
    fs, io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

/// `enum bpf_cmd` values (include/uapi/linux/bpf.h).
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

/// A zeroed `union bpf_attr` prefix, large enough for both commands.
#[repr(C, align(8))]
struct Attr([u8; 64]);

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised buffer of the size passed; the
    // kernel reads (and for some commands writes) within it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<Attr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `BPF_OBJ_GET` file flag (include/uapi/linux/bpf.h): the fd may only
/// read the map (lookups), never update or delete.
pub const BPF_F_RDONLY: u32 = 1 << 3;

/// Opens the bpf object pinned at `path` (a link, here).
pub fn open_pinned(path: &Path) -> io::Result<OwnedFd> {
    open_pinned_with(path, 0)
}

/// Opens the bpf object pinned at `path` with `BPF_OBJ_GET` file flags
/// (0, or [`BPF_F_RDONLY`] for a map only read from).
pub fn open_pinned_with(path: &Path, file_flags: u32) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut attr = Attr([0; 64]);
    // struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; ... }
    attr.0[..8].copy_from_slice(&(c_path.as_ptr() as u64).to_ne_bytes());
    attr.0[12..16].copy_from_slice(&file_flags.to_ne_bytes());
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Detaches the program of an open link now.
pub fn detach(link: &OwnedFd) -> io::Result<()> {
    let mut attr = Attr([0; 64]);
    // struct { __u32 link_fd; } link_detach
    attr.0[..4].copy_from_slice(&(link.as_raw_fd() as u32).to_ne_bytes());
    bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}

/// Removes a link's pin and detaches the link before returning. A link
/// type that cannot be detached explicitly is left to the kernel's
/// deferred release (logged).
pub fn unpin_and_detach(path: &Path) -> io::Result<()> {
    let link = open_pinned(path);
    fs::remove_file(path)?;
    match link {
        Ok(fd) => detach_logged(&fd, path),
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "cannot open the link to detach it")
        }
    }
    Ok(())
}

/// [`detach`], logging a failure instead of returning it: the pin is gone
/// already, so the kernel releases the link soon in any case.
pub fn detach_logged(link: &OwnedFd, path: &Path) {
    if let Err(e) = detach(link) {
        tracing::warn!(path = %path.display(), error = %e, "BPF_LINK_DETACH failed; the kernel detaches the link shortly");
    }
}
