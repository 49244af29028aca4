//! The bounded sample of allowed and exempt destinations
//! (`ALLOWED_SAMPLE`, layout in `enforcer_common::layout`), which
//! `enforcer whatif` replays beside the events: events exist only for
//! refused decisions, so without it a candidate that refuses more would
//! be invisible.
//!
//! Called by the hooks only when they decided (a verdict-cache miss): a
//! cached verdict is the same destination decided before, so the cost
//! stays off the common path, and the count is a lower bound. The map is
//! an LRU hash, so the kernel evicts the least recently used destinations
//! when it is full and the agent never has to.

use core::{
    intrinsics::{AtomicOrdering, atomic_xadd},
    ptr::write_volatile,
};

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::generated::bpf_ktime_get_boot_ns};
use enforcer_common::{CFG_ALLOWED_SAMPLE, Hook, SampleEntry, SampleKey};

use crate::{
    decide::Decision,
    maps::{ALLOWED_SAMPLE, config},
};

/// Adds one decision to the sample when it approved the destination and
/// the agent turned the sample on; `daddr` as `Dest::bytes`.
#[inline(always)]
pub fn record(hook: Hook, d: &Decision, daddr: [u8; 16], scope: u32) {
    if d.reportable() || config(CFG_ALLOWED_SAMPLE) == 0 {
        return;
    }
    update(hook, d, daddr, scope);
}

/// Counts the decision in its destination's entry, creating the entry
/// when there is none (evicting the least recently used one when the map
/// is full). Unconditional: [`record`] decides whether; the bench calls
/// this directly to measure the update.
#[inline(always)]
pub fn update(hook: Hook, d: &Decision, daddr: [u8; 16], scope: u32) {
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let key = SampleKey {
        daddr,
        scope,
        family: d.family as u8,
        _pad: [0; 3],
    };
    // Twice, as counters.rs `add_scoped`: another CPU may create the entry
    // between the lookup and the insert, which then fails with EEXIST.
    for _ in 0..2 {
        if let Some(v) = ALLOWED_SAMPLE.get_ptr_mut(key) {
            // SAFETY: an element from a successful lookup, valid for the
            // program's run (the LRU frees evicted elements after an RCU
            // grace period). The count is shared by every CPU: an atomic
            // add. `last_ns` may be written by two CPUs at once; either
            // time is right.
            unsafe {
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*v).count, 1);
                write_volatile(&raw mut (*v).last_ns, now);
            }
            return;
        }
        let value = SampleEntry {
            first_ns: now,
            last_ns: now,
            count: 1,
            country: d.country,
            hook: hook as u8,
            outcome: d.outcome as u8,
            source: d.source as u8,
            _pad: [0; 3],
        };
        match ALLOWED_SAMPLE.insert(key, value, BPF_NOEXIST as u64) {
            // -EEXIST: created meanwhile; look it up again.
            Err(-17) => continue,
            // Inserted; or -ENOMEM, which an LRU map returns only when it
            // cannot evict either: a sample may miss a decision.
            _ => return,
        }
    }
}
