//! Per-CPU counters by hook, family, country and outcome: connections
//! (`CONN_COUNTS`), and packets and bytes (`PKT_COUNTS`, `BYTE_COUNTS`),
//! the exact totals; and the same by scope entry (`SCOPE_COUNTS`, a
//! bounded hash: a decision it has no room for is in the totals only, and
//! counted in `SCOPE_MISSES`).

use core::{
    hint::black_box,
    intrinsics::{AtomicOrdering, atomic_xadd},
};

use aya_ebpf::{bindings::BPF_NOEXIST, maps::PerCpuArray};
use enforcer_common::{
    COUNTRY_SLOTS, CounterBlock, Fault, Hook, NO_SCOPE, Outcome, SCOPE_KIND_CONNECTIONS,
    SCOPE_KIND_PACKETS, SCOPE_MISS_FULL, SCOPE_MISS_NONE, ScopeCount, ScopeKey, counter_index,
};

use crate::{
    decide::Decision,
    diagnostics::report,
    maps::{BYTE_COUNTS, CONN_COUNTS, PKT_COUNTS, SCOPE_COUNTS, SCOPE_MISSES},
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

/// Adds a decision to its scope's entry of `SCOPE_COUNTS`, creating the
/// entry on its first decision; one that cannot be counted there (no
/// scope, the table full) is counted in `SCOPE_MISSES`: the totals have it.
#[inline(always)]
fn add_scoped(scope: u32, kind: u8, hook: Hook, d: &Decision, bytes: u64) {
    if scope == NO_SCOPE {
        miss(SCOPE_MISS_NONE);
        return;
    }
    let key = ScopeKey {
        scope,
        country: d.country,
        hook: hook as u8,
        family: d.family as u8,
        outcome: d.outcome as u8,
        kind,
        _pad: [0; 2],
    };
    // Twice: a program on another CPU (or preempting this one) may create
    // the entry between the lookup and the insert, which then fails with
    // EEXIST and the second lookup finds it.
    for _ in 0..2 {
        if let Some(v) = SCOPE_COUNTS.get_ptr_mut(key) {
            // SAFETY: this CPU's value of an entry from a successful lookup,
            // valid for the program's run; atomic for the reason `add` is.
            unsafe {
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*v).count, 1);
                atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*v).bytes, bytes);
            }
            return;
        }
        // A new per-CPU entry from a program holds this value on this CPU
        // and zeroes on the others (`pcpu_init_value`, kernel/bpf/hashtab.c).
        let value = ScopeCount { count: 1, bytes };
        match SCOPE_COUNTS.insert(key, value, BPF_NOEXIST as u64) {
            Ok(()) => return,
            // -EEXIST: created meanwhile; look it up again.
            Err(-17) => continue,
            // -E2BIG (full) or -ENOMEM.
            Err(_) => break,
        }
    }
    miss(SCOPE_MISS_FULL);
}

#[inline(always)]
fn miss(reason: u32) {
    if let Some(n) = SCOPE_MISSES.get_ptr_mut(reason) {
        // SAFETY: a per-CPU cell from a successful lookup, atomic as above.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(n, 1) };
    }
}

/// Counts one connection-level decision, made for scope slot `scope`.
#[inline(always)]
pub fn count_connection(hook: Hook, d: &Decision, scope: u32) {
    // By scope first, then the total: a reader that reads the totals
    // first then never finds more by scope than in the total (see
    // `datapath::counters` in the agent, which reports the difference).
    add_scoped(scope, SCOPE_KIND_CONNECTIONS, hook, d, 0);
    add(&CONN_COUNTS, hook, d, 1);
}

/// Counts one packet of `bytes` bytes, sent for scope slot `scope`.
#[inline(always)]
pub fn count_packet(hook: Hook, d: &Decision, bytes: u32, scope: u32) {
    // Scope first, as in `count_connection`.
    add_scoped(scope, SCOPE_KIND_PACKETS, hook, d, bytes as u64);
    add(&PKT_COUNTS, hook, d, 1);
    add(&BYTE_COUNTS, hook, d, bytes as u64);
}
