//! Per-CPU counters by hook, family, country and outcome.

use core::{
    hint::black_box,
    intrinsics::{AtomicOrdering, atomic_xadd},
};

use enforcer_common::{COUNTRY_SLOTS, Hook, Outcome, counter_index};

use crate::{decide::Decision, maps::CONN_COUNTS};

/// Counts one connection-level decision.
#[inline(always)]
pub fn count_connection(hook: Hook, d: &Decision) {
    let Some(block) = CONN_COUNTS.get_ptr_mut(counter_index(hook, d.family)) else {
        return;
    };
    // One flat index, made opaque before it is bounds-checked: otherwise
    // LLVM checks a zero-extended copy of the country index and adds the
    // original register, whose upper bits the verifier cannot bound, and
    // the program is (rightly) rejected as accessing outside the value.
    let index = black_box(d.country as usize * Outcome::COUNT + d.outcome as usize);
    if index >= COUNTRY_SLOTS * Outcome::COUNT {
        return;
    }
    // Per-CPU, but a preemptible kernel can interleave two programs on one
    // CPU: an atomic add (BPF_ATOMIC) keeps the count exact. The bpf target
    // has no AtomicU64::fetch_add, hence the intrinsic.
    // SAFETY: the pointer comes from a successful map lookup and stays valid
    // for the program's run; `index` is within the block (checked above), so
    // the cell is a valid, aligned u64 in map memory.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(block.cast::<u64>().add(index), 1)
    };
}
