//! Asking the kernel directly what is attached to a cgroup
//! (BPF_PROG_QUERY), independent of the agent's own bookkeeping.

use std::{fs::File, os::fd::AsRawFd as _, path::Path};

/// `enum bpf_attach_type` values (include/uapi/linux/bpf.h).
pub const BPF_CGROUP_INET_EGRESS: u32 = 1;
pub const BPF_CGROUP_INET4_CONNECT: u32 = 10;
pub const BPF_CGROUP_INET6_CONNECT: u32 = 11;
pub const BPF_CGROUP_UDP4_SENDMSG: u32 = 14;
pub const BPF_CGROUP_UDP6_SENDMSG: u32 = 15;

const BPF_PROG_QUERY: libc::c_long = 16;

/// The `query` member of `union bpf_attr`, padded to the union's size.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: [u32; 25],
}

/// How many programs are attached directly to `cgroup` for `attach_type`.
pub fn attached_programs(cgroup: &Path, attach_type: u32) -> u32 {
    let dir = File::open(cgroup).unwrap_or_else(|e| panic!("open {}: {e}", cgroup.display()));
    let mut ids = [0u32; 64];
    let mut attr = QueryAttr {
        target_fd: dir.as_raw_fd() as u32,
        attach_type,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..QueryAttr::default()
    };
    // SAFETY: attr is a valid, fully initialised bpf_attr prefix of the
    // size passed; prog_ids points at `ids`, which outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &mut attr as *mut QueryAttr,
            std::mem::size_of::<QueryAttr>() as u32,
        )
    };
    assert_eq!(
        rc,
        0,
        "BPF_PROG_QUERY on {}: {}",
        cgroup.display(),
        std::io::Error::last_os_error()
    );
    attr.prog_cnt
}

/// Programs attached to the hooks of `cgroup` the agent uses (connect and
/// sendmsg, both families, and skb egress): 5 when one agent is attached.
pub fn agent_programs(cgroup: &Path) -> u32 {
    [
        BPF_CGROUP_INET_EGRESS,
        BPF_CGROUP_INET4_CONNECT,
        BPF_CGROUP_INET6_CONNECT,
        BPF_CGROUP_UDP4_SENDMSG,
        BPF_CGROUP_UDP6_SENDMSG,
    ]
    .into_iter()
    .map(|t| attached_programs(cgroup, t))
    .sum()
}

/// Detaches the bpf_link pinned at `path` the way any other process with
/// an fd of it can (`BPF_OBJ_GET`, then `BPF_LINK_DETACH`), leaving the
/// pin in place: the link then exists but decides nothing.
pub fn detach_pinned_link(path: &Path) {
    use std::{ffi::CString, os::unix::ffi::OsStrExt as _};
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let c_path = CString::new(path.as_os_str().as_bytes()).expect("a path without NUL");
    let mut attr = [0u64; 16];
    attr[0] = c_path.as_ptr() as u64;
    // SAFETY: attr is a zeroed bpf_attr prefix of the size passed whose
    // pathname points at c_path, which outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr) as u32,
        )
    };
    assert!(
        fd >= 0,
        "BPF_OBJ_GET {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    let mut attr = [0u64; 16];
    attr[0] = fd as u64;
    // SAFETY: as above; link_fd is the fd just opened.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr) as u32,
        )
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd is ours and closed once.
    unsafe { libc::close(fd as i32) };
    assert_eq!(rc, 0, "BPF_LINK_DETACH {}: {err}", path.display());
}
