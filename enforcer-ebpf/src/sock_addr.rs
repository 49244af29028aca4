//! What the cgroup sock_addr hooks (connect, sendmsg) share: reading the
//! destination from `struct bpf_sock_addr`, deciding, counting, reporting,
//! caching a would-deny verdict on the socket for the packet hook, and
//! turning the decision into the hook's return value.
//!
//! Returning 0 makes the syscall fail with EPERM; 1 lets it proceed
//! (`__cgroup_bpf_run_filter_sock_addr` in
//! https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/cgroup.c).

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::bpf_get_current_cgroup_id,
    },
    programs::SockAddrContext,
};
use enforcer_common::{CFG_GENERATION, DIRECTION_OUTBOUND, Fault, Hook, SockVerdict};

use crate::{
    counters::count_connection,
    decide::{Decision, Dest, decide_cached},
    diagnostics::report,
    events::{self, Target},
    maps::{SOCK_VERDICT, config},
    mode, sample, scope,
};

const REFUSE: i32 = 0;
const PROCEED: i32 = 1;

/// The IPv4 destination of a connect4/sendmsg4 call.
#[inline(always)]
pub fn dest4(ctx: &SockAddrContext) -> Dest {
    // SAFETY: the kernel passes a valid bpf_sock_addr; user_ip4 is readable
    // in the *4 hooks (a 4-byte context load), in network byte order.
    let ip = unsafe { (*ctx.sock_addr).user_ip4 };
    Dest::V4(ip.to_ne_bytes())
}

/// The IPv6 destination of a connect6/sendmsg6 call; `::ffff:a.b.c.d`
/// becomes IPv4.
#[inline(always)]
pub fn dest6(ctx: &SockAddrContext) -> Dest {
    let mut b = [0u8; 16];
    for i in 0..4 {
        // SAFETY: as above for user_ip6; volatile keeps LLVM from merging two
        // words into one 8-byte load, which the verifier would reject.
        let word = unsafe { core::ptr::read_volatile(&(*ctx.sock_addr).user_ip6[i]) };
        b[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    Dest::from_v6(b)
}

/// Decides, counts, reports, caches, and returns the hook's verdict.
#[inline(always)]
pub fn apply(ctx: &SockAddrContext, hook: Hook, dest: Dest) -> i32 {
    // Read before deciding: the agent writes a slot (or a mode word, or an
    // override) first and bumps the generation after. Read in this order,
    // a decision made with the old policy can only be stored under the old
    // generation, which the bump then invalidates; read after, a flip
    // between the two reads would store the old slot's verdict under the
    // new generation and the packet hook would trust it until the next
    // flip. (The packet hook reads it first too: skb.rs.)
    let generation = config(CFG_GENERATION);
    let (d, decided) = decide_cached(dest, generation, mode::for_current_task);
    let scope = scope::for_current_task();
    count_connection(hook, &d, scope);
    if decided {
        sample::record(hook, &d, dest.bytes(), scope);
    }
    if !d.reportable() {
        // Allowed or exempt: nothing is stored on the socket. Creating its
        // storage (bpf_sk_storage_get with F_CREATE: allocations, memcg
        // charge, locks) cost about 1.9 us per connect in cargo xtask
        // bench, ten times the decision; the packet hook decides such a
        // socket's packets itself, against the policy in force.
        return PROCEED;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    // SAFETY: a valid context; user_port and protocol are 4-byte loads.
    let (port, protocol) = unsafe { ((*ctx.sock_addr).user_port, (*ctx.sock_addr).protocol) };
    // The socket's local port (0 until bound: connect() binds after this
    // hook). SAFETY: `sk` is a full socket in sock_addr programs; src_port
    // is a 4-byte context load, host byte order.
    let sport = unsafe { (*(*ctx.sock_addr).__bindgen_anon_1.sk).src_port } as u16;
    events::emit(|e| {
        let to = Target {
            daddr: dest.bytes(),
            dport: u16::from_be(port as u16),
            protocol: protocol as u8,
            bytes: 0,
            sport,
            direction: DIRECTION_OUTBOUND,
        };
        events::describe(e, hook, &d, to);
        // SAFETY: reads the current task's cgroup id.
        e.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        e.pid_tgid = pid_tgid;
        e.uid_gid = uid_gid;
        e.comm = comm;
    });
    if d.refuses() {
        return REFUSE;
    }
    if !cache(ctx, &d, generation, dest, pid_tgid, uid_gid, comm) {
        // The socket is a full one, connecting: only an allocation that
        // failed (memory, memcg limit) leaves it without storage.
        report(Fault::SockStorage, hook as u64, 0);
    }
    PROCEED
}

/// Stores a would-deny decision (observe mode) on the socket, so the packet
/// hook does not decide and report its packets again, and names the
/// process if it reports the socket later. False when the socket has no
/// storage and none could be created.
#[inline(always)]
fn cache(
    ctx: &SockAddrContext,
    d: &Decision,
    generation: u32,
    dest: Dest,
    pid_tgid: u64,
    uid_gid: u64,
    comm: [u8; 16],
) -> bool {
    // SAFETY: the helper reads the context's socket pointer, valid for a
    // sock_addr program; the result is checked for null.
    let sv = unsafe { SOCK_VERDICT.get_or_insert_ptr_mut(ctx, None) };
    if sv.is_null() {
        return false;
    }
    // SAFETY: non-null pointers from bpf_sk_storage_get point at the value.
    unsafe {
        *sv = SockVerdict {
            generation,
            outcome: d.outcome as u8,
            family: d.family as u8,
            country: d.country,
            daddr: dest.bytes(),
            pid_tgid,
            uid_gid,
            comm,
            source: d.source as u8,
            mode: d.mode as u8,
            _pad: [0; 6],
        };
    }
    true
}
