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

use std::{
    fs, io,
    os::fd::{AsRawFd as _, OwnedFd},
    path::Path,
};

use super::pinned::{Attr, bpf, obj_get};

/// `enum bpf_cmd` value (include/uapi/linux/bpf.h).
const BPF_LINK_DETACH: libc::c_long = 34;

/// Detaches the program of an open link now.
pub fn detach(link: &OwnedFd) -> io::Result<()> {
    let mut attr = Attr::zeroed();
    // struct { __u32 link_fd; } link_detach
    attr.0[..4].copy_from_slice(&(link.as_raw_fd() as u32).to_ne_bytes());
    bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}

/// Removes a link's pin and detaches the link before returning. A link
/// type that cannot be detached explicitly is left to the kernel's
/// deferred release (logged).
pub fn unpin_and_detach(path: &Path) -> io::Result<()> {
    let link = obj_get(path, 0);
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
