//! The benchmark's own eBPF programs, assembled here and loaded with the raw
//! `bpf(2)` system call, and `BPF_PROG_TEST_RUN` for any program fd.
//!
//! Why hand-assembled and not a second eBPF object: the two bench-only
//! programs (an empty cgroup_skb program, the baseline every cost is measured
//! against, and a plain LPM trie lookup of the destination) are a dozen
//! instructions each. Writing them out keeps them out of the production
//! object (the agent can never attach them), needs no second aya-build
//! pipeline, and leaves no compiler between what is measured and what is
//! written here. Encoding: include/uapi/linux/bpf.h and
//! Documentation/bpf/standardization/instruction-set.rst.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_ATTACH: libc::c_long = 8;

const BPF_MAP_TYPE_LPM_TRIE: u32 = 11;
/// LPM tries must be created without preallocation (kernel/bpf/lpm_trie.c,
/// `trie_alloc`).
const BPF_F_NO_PREALLOC: u32 = 1;

pub const BPF_PROG_TYPE_CGROUP_SKB: u32 = 8;
pub const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
pub const BPF_CGROUP_INET_EGRESS: u32 = 1;
pub const BPF_CGROUP_INET4_CONNECT: u32 = 10;
pub const BPF_CGROUP_INET6_CONNECT: u32 = 11;
/// `BPF_F_ALLOW_MULTI`: coexist with whatever else is attached.
const BPF_F_ALLOW_MULTI: u32 = 2;

/// Helper ids (`enum bpf_func_id`).
const FN_MAP_LOOKUP_ELEM: i32 = 1;
const FN_SKB_LOAD_BYTES: i32 = 26;

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

/// Creates an LPM trie with `data_len` address bytes and a u32 value.
pub fn create_lpm(name: &str, data_len: u32, max_entries: u32) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.u32(0, BPF_MAP_TYPE_LPM_TRIE)
        .u32(4, 4 + data_len)
        .u32(8, 4)
        .u32(12, max_entries)
        .u32(16, BPF_F_NO_PREALLOC);
    // map_name at offset 28 (after inner_map_fd 20, numa_node 24).
    let n = name.as_bytes();
    let len = n.len().min(15);
    a.0[28..28 + len].copy_from_slice(&n[..len]);
    let fd = bpf(BPF_MAP_CREATE, &mut a)?;
    // SAFETY: the kernel returned a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Inserts `prefix_len`/`data` -> `value` into an LPM trie.
pub fn lpm_insert(map: &OwnedFd, prefix_len: u32, data: &[u8], value: u32) -> io::Result<()> {
    let mut key = Vec::with_capacity(4 + data.len());
    key.extend_from_slice(&prefix_len.to_ne_bytes());
    key.extend_from_slice(data);
    let value = value.to_ne_bytes();
    let mut a = Attr::new();
    a.u32(0, map.as_raw_fd() as u32)
        .u64(8, key.as_ptr() as u64)
        .u64(16, value.as_ptr() as u64);
    bpf(BPF_MAP_UPDATE_ELEM, &mut a).map(|_| ())
}

/// One eBPF instruction.
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R6: u8 = 6;
const R10: u8 = 10;

fn mov_imm(dst: u8, imm: i32) -> Insn {
    insn(0xb7, dst, 0, 0, imm) // BPF_ALU64 | BPF_MOV | BPF_K
}
fn mov_reg(dst: u8, src: u8) -> Insn {
    insn(0xbf, dst, src, 0, 0) // BPF_ALU64 | BPF_MOV | BPF_X
}
fn add_imm(dst: u8, imm: i32) -> Insn {
    insn(0x07, dst, 0, 0, imm) // BPF_ALU64 | BPF_ADD | BPF_K
}
fn ldx_w(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x61, dst, src, off, 0) // BPF_LDX | BPF_MEM | BPF_W
}
fn ldx_b(dst: u8, src: u8, off: i16) -> Insn {
    insn(0x71, dst, src, off, 0) // BPF_LDX | BPF_MEM | BPF_B
}
fn st_w(dst: u8, off: i16, imm: i32) -> Insn {
    insn(0x62, dst, 0, off, imm) // BPF_ST | BPF_MEM | BPF_W
}
fn call(helper: i32) -> Insn {
    insn(0x85, 0, 0, 0, helper)
}
fn exit() -> Insn {
    insn(0x95, 0, 0, 0, 0)
}
/// `dst = map` (BPF_LD | BPF_IMM | BPF_DW with BPF_PSEUDO_MAP_FD): two slots.
fn ld_map(dst: u8, map: &OwnedFd) -> [Insn; 2] {
    [insn(0x18, dst, 1, 0, map.as_raw_fd()), insn(0, 0, 0, 0, 0)]
}

/// A program with forward jumps to labels, resolved at the end.
#[derive(Default)]
struct Asm {
    insns: Vec<Insn>,
    /// (instruction index, label) of each jump to patch.
    jumps: Vec<(usize, &'static str)>,
    labels: Vec<(&'static str, usize)>,
}

impl Asm {
    fn push(&mut self, i: Insn) {
        self.insns.push(i);
    }
    fn extend(&mut self, i: impl IntoIterator<Item = Insn>) {
        self.insns.extend(i);
    }
    fn label(&mut self, name: &'static str) {
        self.labels.push((name, self.insns.len()));
    }
    /// `if dst == imm goto label` (code 0x15) or `!=` (0x55).
    fn jump(&mut self, code: u8, dst: u8, imm: i32, label: &'static str) {
        self.jumps.push((self.insns.len(), label));
        self.insns.push(insn(code, dst, 0, 0, imm));
    }
    fn finish(mut self) -> Vec<u8> {
        for &(at, label) in &self.jumps {
            let target = self
                .labels
                .iter()
                .find(|(l, _)| *l == label)
                .map(|&(_, i)| i)
                .unwrap_or_else(|| panic!("undefined label {label}"));
            self.insns[at].off = (target as i64 - at as i64 - 1) as i16;
        }
        let mut out = Vec::with_capacity(self.insns.len() * 8);
        for i in &self.insns {
            out.push(i.code);
            out.push(i.regs);
            out.extend_from_slice(&i.off.to_le_bytes());
            out.extend_from_slice(&i.imm.to_le_bytes());
        }
        out
    }
}

/// `return 1`: the empty program (cgroup_skb: pass; sock_addr: allow).
pub fn empty_program() -> Vec<u8> {
    let mut a = Asm::default();
    a.push(mov_imm(R0, 1));
    a.push(exit());
    a.finish()
}

/// A cgroup_skb program that looks the destination up in `v4` (key: u32
/// prefix length + 4 bytes) or `v6` (+ 16 bytes), reads the value, and
/// passes: the plain LPM trie decision, nothing else.
pub fn lpm_program(v4: &OwnedFd, v6: &OwnedFd) -> Vec<u8> {
    let mut a = Asm::default();
    a.push(mov_reg(R6, R1));
    // __sk_buff.protocol (offset 16) holds the EtherType in network order.
    a.push(ldx_w(R2, R6, 16));
    a.jump(0x15, R2, 0x0008, "v4"); // htons(ETH_P_IP)
    a.jump(0x15, R2, 0xdd86, "v6"); // htons(ETH_P_IPV6)
    a.jump(0x05, 0, 0, "out"); // BPF_JA
    a.label("v4");
    a.push(st_w(R10, -8, 32));
    // The cgroup_skb packet starts at the IP header: daddr is at 16.
    a.extend([mov_reg(R1, R6), mov_imm(R2, 16), mov_reg(R3, R10)]);
    a.extend([add_imm(R3, -4), mov_imm(R4, 4), call(FN_SKB_LOAD_BYTES)]);
    a.jump(0x55, R0, 0, "out");
    a.extend(ld_map(R1, v4));
    a.extend([mov_reg(R2, R10), add_imm(R2, -8), call(FN_MAP_LOOKUP_ELEM)]);
    a.jump(0x05, 0, 0, "found");
    a.label("v6");
    a.push(st_w(R10, -24, 128));
    a.extend([mov_reg(R1, R6), mov_imm(R2, 24), mov_reg(R3, R10)]);
    a.extend([add_imm(R3, -20), mov_imm(R4, 16), call(FN_SKB_LOAD_BYTES)]);
    a.jump(0x55, R0, 0, "out");
    a.extend(ld_map(R1, v6));
    a.extend([mov_reg(R2, R10), add_imm(R2, -24), call(FN_MAP_LOOKUP_ELEM)]);
    a.label("found");
    a.jump(0x15, R0, 0, "out");
    a.push(ldx_b(R1, R0, 0));
    a.label("out");
    a.push(mov_imm(R0, 1));
    a.push(exit());
    a.finish()
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

/// One `BPF_PROG_TEST_RUN` with `repeat` = 1 on `data` (an Ethernet
/// frame): (return value, duration in ns as the kernel measured it).
pub fn test_run(prog: RawFd, data: &[u8]) -> io::Result<(u32, u32)> {
    let mut a = Attr::new();
    a.u32(0, prog as u32)
        .u32(8, data.len() as u32)
        .u64(16, data.as_ptr() as u64)
        .u32(32, 1);
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
