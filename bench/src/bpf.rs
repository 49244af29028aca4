//! The benchmark's raw `bpf(2)` calls: an empty program (assembled here),
//! loading and attaching it, and `BPF_PROG_TEST_RUN` for any program fd.
//!
//! Why the empty program is assembled and not in the bench object
//! (`enforcer-ebpf/src/bench.rs`): it is two instructions, `return 1`, the
//! baseline of the hook rows (sock_addr and cgroup_skb alike) with nothing
//! a compiler could add. Encoding: include/uapi/linux/bpf.h and
//! Documentation/bpf/standardization/instruction-set.rst.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_ATTACH: libc::c_long = 8;

pub const BPF_PROG_TYPE_CGROUP_SKB: u32 = 8;
pub const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
pub const BPF_CGROUP_INET_EGRESS: u32 = 1;
pub const BPF_CGROUP_INET4_CONNECT: u32 = 10;
pub const BPF_CGROUP_INET6_CONNECT: u32 = 11;
/// `BPF_F_ALLOW_MULTI`: coexist with whatever else is attached.
const BPF_F_ALLOW_MULTI: u32 = 2;

/// A `union bpf_attr`, zeroed, large enough for every command used here.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Attr {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Attr {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn get_u32(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.0[off..off + 4]);
        u32::from_ne_bytes(b)
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<i64> {
    // SAFETY: attr is a valid bpf_attr of the size passed; every pointer in
    // it points at memory the caller keeps alive for the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), attr.0.len() as u32) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `return 1`: the empty program (cgroup_skb: pass; sock_addr: allow).
/// `r0 = 1` (BPF_ALU64 | BPF_MOV | BPF_K) and `exit` (BPF_JMP | BPF_EXIT),
/// 8 bytes each: code, registers, offset, immediate (little endian).
pub fn empty_program() -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&[0xb7, 0, 0, 0]);
    out.extend_from_slice(&1i32.to_le_bytes());
    out.extend_from_slice(&[0x95, 0, 0, 0]);
    out.extend_from_slice(&0i32.to_le_bytes());
    out
}

/// Loads a program; on a verifier rejection the error carries its log.
pub fn load_program(
    prog_type: u32,
    attach_type: u32,
    name: &str,
    code: &[u8],
) -> io::Result<OwnedFd> {
    let license = b"GPL\0";
    let mut log = vec![0u8; 1 << 16];
    let mut a = Attr::new();
    a.u32(0, prog_type)
        .u32(4, (code.len() / 8) as u32)
        .u64(8, code.as_ptr() as u64)
        .u64(16, license.as_ptr() as u64)
        .u32(24, 1)
        .u32(28, log.len() as u32)
        .u64(32, log.as_mut_ptr() as u64)
        .u32(68, attach_type);
    let n = name.as_bytes();
    let len = n.len().min(15);
    a.0[48..48 + len].copy_from_slice(&n[..len]);
    match bpf(BPF_PROG_LOAD, &mut a) {
        // SAFETY: the kernel returned a new file descriptor we now own.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            Err(io::Error::new(
                e.kind(),
                format!("{e}: {}", String::from_utf8_lossy(&log[..end])),
            ))
        }
    }
}

/// Attaches `prog` to the cgroup directory `cgroup` (BPF_F_ALLOW_MULTI).
/// A BPF_PROG_ATTACH attachment outlives the fds: it goes away with the
/// cgroup, which the sandbox removes (only sandbox cgroups are passed here).
pub fn attach_cgroup(prog: &OwnedFd, cgroup: &std::fs::File, attach_type: u32) -> io::Result<()> {
    let mut a = Attr::new();
    a.u32(0, cgroup.as_raw_fd() as u32)
        .u32(4, prog.as_raw_fd() as u32)
        .u32(8, attach_type)
        .u32(12, BPF_F_ALLOW_MULTI);
    bpf(BPF_PROG_ATTACH, &mut a).map(|_| ())
}

/// One `BPF_PROG_TEST_RUN` of `repeat` runs on `data` (an Ethernet
/// frame): (last return value, mean duration per run in ns as the kernel
/// measured it).
pub fn test_run(prog: RawFd, data: &[u8], repeat: u32) -> io::Result<(u32, u32)> {
    let mut a = Attr::new();
    a.u32(0, prog as u32)
        .u32(8, data.len() as u32)
        .u64(16, data.as_ptr() as u64)
        .u32(32, repeat);
    bpf(BPF_PROG_TEST_RUN, &mut a)?;
    Ok((a.get_u32(4), a.get_u32(36)))
}

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_ENABLE_STATS: libc::c_long = 32;
/// `enum bpf_stats_type`: run time and run count per program.
const BPF_STATS_RUN_TIME: u32 = 0;

/// Turns on the kernel's per-program run time and run count
/// (`run_time_ns`, `run_cnt`) for as long as the returned fd is open.
///
/// The fd form of `kernel.bpf_stats_enabled` (kernel/bpf/syscall.c,
/// `bpf_enable_runtime_stats`): it takes a reference on the same static
/// key the sysctl sets, so it never overwrites what an administrator (or a
/// concurrent run) set, and the kernel drops the reference when the fd
/// closes, also when this process is killed.
pub fn enable_stats() -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.u32(0, BPF_STATS_RUN_TIME);
    let fd = bpf(BPF_ENABLE_STATS, &mut a)?;
    // SAFETY: the kernel returned a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The ids of the programs attached directly to `cgroup` for
/// `attach_type` (BPF_PROG_QUERY; links included).
pub fn cgroup_prog_ids(cgroup: &std::fs::File, attach_type: u32) -> io::Result<Vec<u32>> {
    let mut ids = [0u32; 64];
    let mut a = Attr::new();
    // `query`: target_fd, attach_type, query_flags, attach_flags,
    // prog_ids (u64 at 16), prog_cnt (u32 at 24).
    a.u32(0, cgroup.as_raw_fd() as u32)
        .u32(4, attach_type)
        .u64(16, ids.as_mut_ptr() as u64)
        .u32(24, ids.len() as u32);
    bpf(BPF_PROG_QUERY, &mut a)?;
    let n = (a.get_u32(24) as usize).min(ids.len());
    Ok(ids[..n].to_vec())
}

/// A new fd for the program with id `id`.
pub fn prog_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.u32(0, id);
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut a)?;
    // SAFETY: the kernel returned a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A program's cumulative (`run_time_ns`, `run_cnt`) from its fdinfo
/// (kernel/bpf/syscall.c, `bpf_prog_show_fdinfo`); both only advance
/// while stats are enabled (see [`enable_stats`]).
pub fn prog_run_stats(prog: &OwnedFd) -> io::Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", prog.as_raw_fd()))?;
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("no {key} in the program's fdinfo"),
                )
            })
    };
    Ok((field("run_time_ns:")?, field("run_cnt:")?))
}
