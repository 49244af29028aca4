//! Asking the kernel what is attached where (`BPF_PROG_QUERY`), and pinning
//! a link again from a held fd (`BPF_OBJ_PIN`): the coverage loop's two
//! system calls (see `agent::coverage`).
//!
//! The query is the kernel's own answer, not the agent's memory: a link
//! detached by another process, a cgroup re-created under the same path or
//! an interface re-created under the same name all show as "our program is
//! not in the list", whatever the pins say.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use super::pinned::{Attr, bpf};

/// `enum bpf_cmd` values (include/uapi/linux/bpf.h).
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_QUERY: libc::c_long = 16;

/// `enum bpf_attach_type` values (include/uapi/linux/bpf.h) of the hooks
/// the datapath attaches to.
pub const BPF_CGROUP_INET_EGRESS: u32 = 1;
pub const BPF_CGROUP_INET4_CONNECT: u32 = 10;
pub const BPF_CGROUP_INET6_CONNECT: u32 = 11;
pub const BPF_CGROUP_UDP4_SENDMSG: u32 = 14;
pub const BPF_CGROUP_UDP6_SENDMSG: u32 = 15;
pub const BPF_TCX_EGRESS: u32 = 47;

/// What to query: a cgroup (its open directory) or a network interface.
#[derive(Clone, Copy, Debug)]
pub enum QueryTarget<'a> {
    Cgroup(BorrowedFd<'a>),
    Interface(u32),
}

/// More programs than any hook of ours ever sees next to our own; a hook
/// with more reports ENOSPC, and we ask again with room for all.
const FIRST_GUESS: usize = 64;

/// The ids of the programs attached directly to `target` at `attach_type`
/// (for a cgroup: not the ones inherited from ancestors, since the query
/// is made without `BPF_F_QUERY_EFFECTIVE`).
pub fn attached_programs(target: QueryTarget<'_>, attach_type: u32) -> io::Result<Vec<u32>> {
    let mut room = FIRST_GUESS;
    loop {
        let mut ids = vec![0u32; room];
        let mut flags = vec![0u32; room];
        let mut attr = Attr::zeroed();
        // struct { union { __u32 target_fd; __u32 target_ifindex; };
        //          __u32 attach_type; __u32 query_flags; __u32 attach_flags;
        //          __aligned_u64 prog_ids; union { __u32 prog_cnt; __u32 count; };
        //          __u32 :32; __aligned_u64 prog_attach_flags; ... } query
        let target = match target {
            QueryTarget::Cgroup(fd) => fd.as_raw_fd() as u32,
            QueryTarget::Interface(ifindex) => ifindex,
        };
        attr.0[0..4].copy_from_slice(&target.to_ne_bytes());
        attr.0[4..8].copy_from_slice(&attach_type.to_ne_bytes());
        attr.0[16..24].copy_from_slice(&(ids.as_mut_ptr() as u64).to_ne_bytes());
        attr.0[24..28].copy_from_slice(&(room as u32).to_ne_bytes());
        // Per-program flags: not needed, but the kernel wants the buffer for
        // some attach types (BPF_LSM_CGROUP) when ids are asked for.
        attr.0[32..40].copy_from_slice(&(flags.as_mut_ptr() as u64).to_ne_bytes());
        match bpf(BPF_PROG_QUERY, &mut attr) {
            Ok(_) => {
                let count = u32::from_ne_bytes([attr.0[24], attr.0[25], attr.0[26], attr.0[27]]);
                ids.truncate((count as usize).min(room));
                return Ok(ids);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && room < 1 << 16 => {
                let count = u32::from_ne_bytes([attr.0[24], attr.0[25], attr.0[26], attr.0[27]]);
                room = (count as usize).max(room * 2);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Pins the bpf object behind `fd` at `path` (which must not exist).
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut attr = Attr::zeroed();
    // struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; ... }
    attr.0[..8].copy_from_slice(&(c_path.as_ptr() as u64).to_ne_bytes());
    attr.0[8..12].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}
