//! Per-CPU counters by hook, family, country and outcome: connections
//! (`CONN_COUNTS`), and packets and bytes (`PKT_COUNTS`, `BYTE_COUNTS`).

use core::{
    hint::black_box,
    intrinsics::{AtomicOrdering, atomic_xadd},
};

use aya_ebpf::maps::PerCpuArray;
use enforcer_common::{COUNTRY_SLOTS, CounterBlock, Fault, Hook, Outcome, counter_index};

use crate::{
    decide::Decision,
    diagnostics::report,
    maps::{BYTE_COUNTS, CONN_COUNTS, PKT_COUNTS},
};

#[inline(always)]
fn add(map: &PerCpuArray<CounterBlock>, hook: Hook, d: &Decision, n: u64) {
    let Some(block) = map.get_ptr_mut(counter_index(hook, d.family)) else {
        return;
    };
    // One flat index, made opaque before it is bounds-checked: otherwise
    // LLVM checks a zero-extended copy of the country index and adds the
    // original register, whose upper bits the verifier cannot bound, and
    // the program is (rightly) rejected as accessing outside the value.
    let index = black_box(d.country as usize * Outcome::COUNT + d.outcome as usize);
    if index >= COUNTRY_SLOTS * Outcome::COUNT {
        // Only a corrupt cached verdict carries such a country.
        report(Fault::CounterIndex, u64::from(d.country), d.outcome as u64);
        return;
    }
    // Per-CPU, but a preemptible kernel can interleave two programs on one
    // CPU: an atomic add (BPF_ATOMIC) keeps the count exact. The bpf target
    // has no AtomicU64::fetch_add, hence the intrinsic.
    // SAFETY: the pointer comes from a successful map lookup and stays valid
    // for the program's run; `index` is within the block (checked above), so
    // the cell is a valid, aligned u64 in map memory.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(block.cast::<u64>().add(index), n)
    };
}

/// Counts one connection-level decision.
#[inline(always)]
pub fn count_connection(hook: Hook, d: &Decision) {
    add(&CONN_COUNTS, hook, d, 1);
}

/// Counts one packet of `bytes` bytes.
#[inline(always)]
pub fn count_packet(hook: Hook, d: &Decision, bytes: u32) {
    add(&PKT_COUNTS, hook, d, 1);
    add(&BYTE_COUNTS, hook, d, bytes as u64);
}
