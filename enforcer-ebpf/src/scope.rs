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

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::generated::{bpf_get_current_ancestor_cgroup_id, bpf_skb_ancestor_cgroup_id},
};
use enforcer_common::{CFG_SCOPE_LEVELS, MAX_CGROUP_DEPTH, NO_SCOPE};

use crate::maps::{SCOPE_BY_CG, SCOPE_BY_IF, config};

/// The slot of the scope cgroup among the ancestors `ancestor(level)`
/// returns, asked at the levels `CONFIG[CFG_SCOPE_LEVELS]` lists only.
///
/// No early return: every exit of the loop leaves the same registers live
/// (the slot, 0 or found), so the verifier merges them instead of going on
/// with one state per level, which with the override walk before it made
/// `skb_egress` exceed the verifier's million instructions.
#[inline(always)]
fn find(ancestor: impl Fn(i32) -> u64) -> u32 {
    let mut bits = config(CFG_SCOPE_LEVELS);
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

/// The scope of the current task (connect/sendmsg run in its context).
#[inline(always)]
pub fn for_current_task() -> u32 {
    // SAFETY: the helper only reads the current task's cgroup.
    find(|level| unsafe { bpf_get_current_ancestor_cgroup_id(level) })
}

/// The scope of a packet: the cgroup of the socket that sent it.
#[inline(always)]
pub fn for_skb(skb: *mut __sk_buff) -> u32 {
    // SAFETY: `skb` is the program's context pointer.
    find(|level| unsafe { bpf_skb_ancestor_cgroup_id(skb.cast(), level) })
}

/// The scope of a forwarded packet: its egress interface.
#[inline(always)]
pub fn for_ifindex(ifindex: u32) -> u32 {
    // SAFETY: a plain hash-map lookup; the value is copied at once.
    unsafe { SCOPE_BY_IF.get(ifindex) }
        .copied()
        .unwrap_or(NO_SCOPE)
}
