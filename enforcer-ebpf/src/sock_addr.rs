//! What the cgroup sock_addr hooks (connect, sendmsg) share: reading the
//! destination from `struct bpf_sock_addr` and turning a decision into the
//! hook's return value.
//!
//! Returning 0 makes the syscall fail with EPERM; 1 lets it proceed
//! (`__cgroup_bpf_run_filter_sock_addr` in
//! https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/cgroup.c).

use aya_ebpf::programs::SockAddrContext;
use enforcer_common::Hook;

use crate::{
    counters::count_connection,
    decide::{Dest, decide},
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

/// Decides, counts, and returns the hook's verdict.
#[inline(always)]
pub fn apply(hook: Hook, dest: Dest) -> i32 {
    let d = decide(dest);
    count_connection(hook, &d);
    if d.refuses() { REFUSE } else { PROCEED }
}
