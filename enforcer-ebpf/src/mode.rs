//! The mode that applies to a decision: a per-cgroup override from
//! `MODE_OVERRIDES` for the deepest ancestor cgroup that has one, else the
//! global mode. The walk is skipped when no override exists.

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::generated::{bpf_get_current_ancestor_cgroup_id, bpf_skb_ancestor_cgroup_id},
};
use enforcer_common::{CFG_OVERRIDES, Fault, MAX_CGROUP_DEPTH, Mode, cfg_mode};

use crate::{
    diagnostics::report,
    maps::{MODE_OVERRIDES, config},
};

/// The global mode of a policy slot. An unreadable mode word fails open to
/// observe: refusing on a corrupt map would cut the host off with no way to
/// explain why; it is reported instead.
#[inline(always)]
pub fn global(slot: u32) -> Mode {
    let index = cfg_mode(slot);
    let raw = config(index);
    match Mode::from_raw(raw) {
        Some(mode) => mode,
        None => {
            report(Fault::ModeWord, u64::from(index), u64::from(raw));
            Mode::Observe
        }
    }
}

/// Walks cgroup levels 0 (the root) to [`MAX_CGROUP_DEPTH`], asking
/// `ancestor(level)` for the id at each (0 past the leaf), and returns the
/// override of the deepest one that has an entry.
#[inline(always)]
fn walk(slot: u32, ancestor: impl Fn(i32) -> u64) -> Mode {
    if config(CFG_OVERRIDES) == 0 {
        return global(slot);
    }
    let mut found = None;
    for level in 0..MAX_CGROUP_DEPTH as i32 {
        let id = ancestor(level);
        if id == 0 {
            break;
        }
        // SAFETY: a plain hash-map lookup; the value is copied at once.
        if let Some(m) = unsafe { MODE_OVERRIDES.get(id) }.copied() {
            found = Mode::from_raw(m).or(found);
        }
    }
    found.unwrap_or_else(|| global(slot))
}

/// The mode for the current task (connect/sendmsg hooks run in the caller's
/// context, so its cgroup is the process's).
#[inline(always)]
pub fn for_current_task(slot: u32) -> Mode {
    // SAFETY: the helper only reads the current task's cgroup.
    walk(slot, |level| unsafe {
        bpf_get_current_ancestor_cgroup_id(level)
    })
}

/// The mode for a packet: the cgroup of the socket that sent it.
#[inline(always)]
pub fn for_skb(skb: *mut __sk_buff, slot: u32) -> Mode {
    // SAFETY: `skb` is the program's context pointer.
    walk(slot, |level| unsafe {
        bpf_skb_ancestor_cgroup_id(skb.cast(), level)
    })
}
