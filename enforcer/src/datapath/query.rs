//! Asking the kernel what is attached where (`BPF_PROG_QUERY`), and pinning
//! a link again from a held fd (`BPF_OBJ_PIN`): the coverage loop's two
//! system calls (see `agent::coverage`). The effective variant of the query
//! (what decides for a cgroup, inherited programs included) is `guard`'s.
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

/// `BPF_PROG_QUERY` flag (include/uapi/linux/bpf.h): list the programs
/// in force on a cgroup, its ancestors' included.
const BPF_F_QUERY_EFFECTIVE: u32 = 1;

/// The ids of the programs attached directly to `target` at `attach_type`
/// (for a cgroup: not the ones inherited from ancestors, since the query
/// is made without `BPF_F_QUERY_EFFECTIVE`).
pub fn attached_programs(target: QueryTarget<'_>, attach_type: u32) -> io::Result<Vec<u32>> {
    query(target, attach_type, false)
}

/// The ids of the programs that decide for `cgroup` at `attach_type`: the
/// kernel's effective array, which holds the programs attached to the
/// cgroup and those it inherits from its ancestors (a cgroup created under
/// a covered one gets them at mkdir). This is what `enforcer guard` asks.
pub fn effective_programs(cgroup: BorrowedFd<'_>, attach_type: u32) -> io::Result<Vec<u32>> {
    query(QueryTarget::Cgroup(cgroup), attach_type, true)
}

fn query(target: QueryTarget<'_>, attach_type: u32, effective: bool) -> io::Result<Vec<u32>> {
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
        if effective {
            // Without per-program flags: the kernel refuses an effective
            // query that asks for them (EINVAL, `__cgroup_bpf_query`).
            attr.0[8..12].copy_from_slice(&BPF_F_QUERY_EFFECTIVE.to_ne_bytes());
        } else {
            // Per-program flags: not needed, but the kernel wants the
            // buffer for some attach types (BPF_LSM_CGROUP) when ids are
            // asked for.
            attr.0[32..40].copy_from_slice(&(flags.as_mut_ptr() as u64).to_ne_bytes());
        }
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

/// `enum bpf_cmd` value (include/uapi/linux/bpf.h).
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// `enum bpf_link_type` value (include/uapi/linux/bpf.h).
const BPF_LINK_TYPE_CGROUP: u32 = 3;

/// What the kernel says about a cgroup link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupLinkInfo {
    /// The program the link attaches.
    pub prog_id: u32,
    /// The cgroup it is attached to, by id (the directory's inode number).
    pub cgroup_id: u64,
    /// The hook, as an `enum bpf_attach_type` value.
    pub attach_type: u32,
}

/// `struct bpf_link_info`, with room to spare: the kernel fills what it
/// knows and requires the rest to be zero.
#[repr(C, align(8))]
struct LinkInfoBuf([u8; 256]);

/// Reads `bpf_link_info` of the link behind `fd` (`BPF_OBJ_GET_INFO_BY_FD`);
/// `None` for a link that is not a cgroup link (the tcx links).
pub fn cgroup_link_info(fd: BorrowedFd<'_>) -> io::Result<Option<CgroupLinkInfo>> {
    let mut info = LinkInfoBuf([0; 256]);
    let mut attr = Attr::zeroed();
    // struct { __u32 bpf_fd; __u32 info_len; __aligned_u64 info; } info
    attr.0[0..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    attr.0[4..8].copy_from_slice(&(info.0.len() as u32).to_ne_bytes());
    attr.0[8..16].copy_from_slice(&(info.0.as_mut_ptr() as u64).to_ne_bytes());
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let u32_at =
        |o: usize| u32::from_ne_bytes([info.0[o], info.0[o + 1], info.0[o + 2], info.0[o + 3]]);
    // struct bpf_link_info { __u32 type; __u32 id; __u32 prog_id;
    //   union { ... struct { __u64 cgroup_id; __u32 attach_type; } cgroup; ... } }
    // The union is 8-byte aligned: it starts at 16.
    if u32_at(0) != BPF_LINK_TYPE_CGROUP {
        return Ok(None);
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&info.0[16..24]);
    Ok(Some(CgroupLinkInfo {
        prog_id: u32_at(8),
        cgroup_id: u64::from_ne_bytes(id),
        attach_type: u32_at(24),
    }))
}
