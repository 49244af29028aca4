//! The scope entry a decision is made for: the slot the agent gave the
//! configured cgroup or interface (`SCOPE_BY_CG`, `SCOPE_BY_IF`), so the
//! counters can say which service or interface it was.
//!
//! Scope cgroups never nest, so a process's scope entry is the one ancestor
//! of its cgroup that is in `SCOPE_BY_CG`. `CONFIG[CFG_SCOPE_LEVELS]` says at
//! which levels the agent's scope cgroups are, so the lookup asks for the
//! ancestor at those levels only: one helper call and one hash lookup on a
//! host whose services sit at one depth. Those levels are counted from the
//! agent's cgroup2 mount, which is the kernel's root cgroup unless the
//! agent mounted cgroup2 itself inside a cgroup namespace; there the levels
//! would not match and its decisions would count as `overflow`
//! (`no_scope`), never under a wrong entry. [`NO_SCOPE`] when nothing
//! matches.
//!
//! The answer is cached per CPU by the cgroup's own id (`SCOPE_CACHE`,
//! layout in `enforcer_common::layout`): that id is one cheap helper call,
//! a host's decisions come from few cgroups, and the walk plus the hash
//! lookup cost about 10 ns a program run in `cargo xtask bench`.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::generated::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_skb_ancestor_cgroup_id,
        bpf_skb_cgroup_id,
    },
};
use enforcer_common::{
    CFG_SCOPE_LEVELS, CFG_SCOPE_VERSION, MAX_CGROUP_DEPTH, NO_SCOPE, SCOPE_CACHE_SLOTS,
};

use crate::maps::{CONFIG, SCOPE_BY_CG, SCOPE_BY_IF, SCOPE_CACHE};

/// The slot of the scope cgroup among the ancestors `ancestor(level)`
/// returns, asked at the levels `CONFIG[CFG_SCOPE_LEVELS]` lists only.
///
/// No early return: every exit of the loop leaves the same registers live
/// (the slot, 0 or found), so the verifier merges them instead of going on
/// with one state per level, which with the override walk before it made
/// `skb_egress` exceed the verifier's million instructions.
#[inline(always)]
fn find(mut bits: u32, ancestor: impl Fn(i32) -> u64) -> u32 {
    let mut slot = NO_SCOPE;
    for level in 0..MAX_CGROUP_DEPTH as i32 {
        if bits == 0 {
            break;
        }
        if bits & 1 != 0 && slot == NO_SCOPE {
            let id = ancestor(level);
            // SAFETY: a plain hash-map lookup; the value is copied at once.
            if let Some(s) = unsafe { SCOPE_BY_CG.get(id) }.copied() {
                slot = s;
            }
        }
        bits >>= 1;
    }
    slot
}

/// [`find`] for the cgroup `cgroup`, through its `SCOPE_CACHE` entry.
///
/// `CONFIG[CFG_SCOPE_VERSION]` is read before the levels and the map: the
/// agent changes those first and bumps the version after, so a slot found
/// with the old map can only be stored under the old version, which the
/// bump then invalidates (as `CFG_GENERATION` does for verdicts).
#[inline(always)]
fn cached(cgroup: u64, ancestor: impl Fn(i32) -> u64) -> u32 {
    // Both volatile, so the version is read first (the bpf target has no
    // compiler fence: LLVM cannot select one).
    let word = |index| {
        CONFIG.get_ptr(index).map_or(0, |p| {
            // SAFETY: a CONFIG word from a successful lookup, map memory.
            unsafe { read_volatile(p) }
        })
    };
    let version = word(CFG_SCOPE_VERSION);
    let bits = word(CFG_SCOPE_LEVELS);
    if bits == 0 {
        // No scope cgroup: nothing to cache.
        return NO_SCOPE;
    }
    let Some(e) = SCOPE_CACHE.get_ptr_mut(cache_slot(cgroup)) else {
        return find(bits, ancestor);
    };
    // SAFETY: this CPU's entry from a successful lookup, valid for the
    // program's run. A program that preempts this one on this CPU may write
    // it meanwhile: the sequence (odd while written, checked before and
    // after the fields) makes a reader ignore a torn entry.
    unsafe {
        let seq = read_volatile(&(*e).seq);
        let slot = read_volatile(&(*e).slot);
        let hit = seq != 0
            && seq & 1 == 0
            && read_volatile(&(*e).version) == version
            && read_volatile(&(*e).cgroup) == cgroup
            && read_volatile(&(*e).seq) == seq;
        if hit {
            return slot;
        }
        let slot = find(bits, ancestor);
        let seq = read_volatile(&(*e).seq) | 1;
        write_volatile(&mut (*e).seq, seq);
        write_volatile(&mut (*e).version, version);
        write_volatile(&mut (*e).cgroup, cgroup);
        write_volatile(&mut (*e).slot, slot);
        write_volatile(&mut (*e).seq, seq.wrapping_add(1));
        slot
    }
}

/// A cgroup's `SCOPE_CACHE` entry: a multiplicative hash of its id.
#[inline(always)]
fn cache_slot(cgroup: u64) -> u32 {
    let x = (cgroup ^ (cgroup >> 32)) as u32;
    (x.wrapping_mul(0x9e37_79b1) >> 26) & (SCOPE_CACHE_SLOTS - 1)
}

/// The scope of the current task (connect/sendmsg run in its context).
#[inline(always)]
pub fn for_current_task() -> u32 {
    // SAFETY: the helper only reads the current task's cgroup.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: as above, its ancestors'.
    cached(cgroup, |level| unsafe {
        bpf_get_current_ancestor_cgroup_id(level)
    })
}

/// The scope of a packet: the cgroup of the socket that sent it.
#[inline(always)]
pub fn for_skb(skb: *mut __sk_buff) -> u32 {
    // SAFETY: `skb` is the program's context pointer.
    let cgroup = unsafe { bpf_skb_cgroup_id(skb.cast()) };
    // SAFETY: as above.
    cached(cgroup, |level| unsafe {
        bpf_skb_ancestor_cgroup_id(skb.cast(), level)
    })
}

/// The scope of a forwarded packet: its egress interface.
#[inline(always)]
pub fn for_ifindex(ifindex: u32) -> u32 {
    // SAFETY: a plain hash-map lookup; the value is copied at once.
    unsafe { SCOPE_BY_IF.get(ifindex) }
        .copied()
        .unwrap_or(NO_SCOPE)
}
