//! Bench-only programs, built beside the datapath into their own object
//! (`enforcer-bench`) and loaded only by `ee-bench` (`cargo xtask bench`),
//! never by the agent.
//!
//! They measure the decision itself: [`decide`] on the agent's own maps (the
//! object declares them from the same `maps.rs` and the bench loads it with
//! the live datapath's pin directory, so the kernel hands it the maps the
//! agent filled), on random destinations, against an empty program and a
//! plain LPM trie that walk the same destinations the same way.
//!
//! Why not `skb_egress` with `BPF_PROG_TEST_RUN`'s `repeat`: the kernel runs
//! every repeat on the same packet and the same dummy socket
//! (net/bpf/test_run.c, `bpf_prog_test_run_skb`), so repeats would measure
//! one destination and the socket's cached verdict. Here every run takes the
//! next destination from `BENCH_DST4`/`BENCH_DST6` (a per-CPU cursor), so a
//! run of 1e6 repeats decides 1e6 different addresses.
#![no_std]
#![no_main]
// The datapath modules are compiled again here; the bench uses only the
// decision and what it reads, so the hooks' helpers are unused.
#![allow(dead_code)]
// diagnostics.rs counts with an atomic add, as main.rs explains.
#![feature(core_intrinsics)]
#![allow(internal_features)]

#[path = "decide.rs"]
mod decide;
#[path = "diagnostics.rs"]
mod diagnostics;
#[path = "geo.rs"]
mod geo;
#[path = "maps.rs"]
mod maps;
#[path = "mode.rs"]
mod mode;
#[path = "runtime.rs"]
mod runtime;
#[path = "sample.rs"]
mod sample;

use aya_ebpf::{
    macros::{cgroup_skb, map},
    maps::{Array, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::SkBuffContext,
};
use enforcer_common::{
    BPF_F_MMAPABLE, CFG_SLOT, Hook,
    bench::{BENCH_DESTS, BENCH_LPM_CAPACITY},
};

use crate::{
    decide::{Dest, decide},
    maps::{RULES4_0, RULES4_1, RULES6_0, RULES6_1},
};

/// `BPF_F_NO_PREALLOC`: LPM tries must not be preallocated
/// (kernel/bpf/lpm_trie.c, `trie_alloc`).
const BPF_F_NO_PREALLOC: u32 = 1;

#[map]
static BENCH_DST4: Array<[u8; 4]> = Array::with_max_entries(BENCH_DESTS, BPF_F_MMAPABLE);
#[map]
static BENCH_DST6: Array<[u8; 16]> = Array::with_max_entries(BENCH_DESTS, BPF_F_MMAPABLE);
#[map]
static BENCH_CUR: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);
#[map]
static BENCH_LPM4: LpmTrie<[u8; 4], u32> =
    LpmTrie::with_max_entries(BENCH_LPM_CAPACITY, BPF_F_NO_PREALLOC);
#[map]
static BENCH_LPM6: LpmTrie<[u8; 16], u32> =
    LpmTrie::with_max_entries(BENCH_LPM_CAPACITY, BPF_F_NO_PREALLOC);

/// The next cursor position on this CPU (then advanced).
#[inline(always)]
fn next() -> u32 {
    match BENCH_CUR.get_ptr_mut(0) {
        Some(cur) => {
            // SAFETY: a valid per-CPU entry from a successful lookup; a
            // test run does not migrate.
            unsafe {
                let i = *cur;
                *cur = i.wrapping_add(1);
                i & (BENCH_DESTS - 1)
            }
        }
        None => 0,
    }
}

#[inline(always)]
fn dest4() -> [u8; 4] {
    BENCH_DST4.get(next()).copied().unwrap_or([0; 4])
}

#[inline(always)]
fn dest6() -> [u8; 16] {
    BENCH_DST6.get(next()).copied().unwrap_or([0; 16])
}

/// cgroup_skb may return 0 or 1: one bit of the answer, so nothing of the
/// work is optimised away.
#[inline(always)]
fn bit(x: u32) -> i32 {
    (x & 1) as i32
}

#[cgroup_skb]
pub fn bench_empty4(_ctx: SkBuffContext) -> i32 {
    let a = dest4();
    bit(a[0] as u32 ^ a[3] as u32)
}

#[cgroup_skb]
pub fn bench_empty6(_ctx: SkBuffContext) -> i32 {
    let a = dest6();
    bit(a[0] as u32 ^ a[15] as u32)
}

#[cgroup_skb]
pub fn bench_decide4(_ctx: SkBuffContext) -> i32 {
    let d = decide(Dest::V4(dest4()), mode::global);
    bit(d.outcome as u32)
}

#[cgroup_skb]
pub fn bench_decide6(_ctx: SkBuffContext) -> i32 {
    // As the hooks do: a mapped address would be decided as IPv4.
    let d = decide(Dest::from_v6(dest6()), mode::global);
    bit(d.outcome as u32)
}

/// The decision on one destination over and over (the first of the
/// array, the cursor still advanced): caches and TLB warm, so what is left
/// is the instructions; against the random walk it shows what memory
/// latency costs.
#[cgroup_skb]
pub fn bench_hot4(_ctx: SkBuffContext) -> i32 {
    let _ = next();
    let a = BENCH_DST4.get(0).copied().unwrap_or([0; 4]);
    bit(decide(Dest::V4(a), mode::global).outcome as u32)
}

#[cgroup_skb]
pub fn bench_hot6(_ctx: SkBuffContext) -> i32 {
    let _ = next();
    let a = BENCH_DST6.get(0).copied().unwrap_or([0; 16]);
    bit(decide(Dest::from_v6(a), mode::global).outcome as u32)
}

/// The decision and the allowed sample's update (`sample::update`), for
/// every destination whatever its verdict, so against `bench_decide4` it
/// is the update's cost per sampled decision: on random destinations each
/// one is a new entry, and once the map is full each insert evicts, the
/// dearest case (a destination already sampled is one lookup and an add).
#[cgroup_skb]
pub fn bench_sample4(_ctx: SkBuffContext) -> i32 {
    let a = dest4();
    let d = decide(Dest::V4(a), mode::global);
    sample::update(Hook::SkbEgress, &d, Dest::V4(a).bytes(), 0);
    bit(d.outcome as u32)
}

#[cgroup_skb]
pub fn bench_sample6(_ctx: SkBuffContext) -> i32 {
    let dest = Dest::from_v6(dest6());
    let d = decide(dest, mode::global);
    sample::update(Hook::SkbEgress, &d, dest.bytes(), 0);
    bit(d.outcome as u32)
}

/// The same on one destination over and over (as `bench_hot4`): after
/// the first run its entry exists, so the update is a lookup and an add,
/// what a destination already in the sample costs.
#[cgroup_skb]
pub fn bench_sample_hot4(_ctx: SkBuffContext) -> i32 {
    let _ = next();
    let a = BENCH_DST4.get(0).copied().unwrap_or([0; 4]);
    let d = decide(Dest::V4(a), mode::global);
    sample::update(Hook::SkbEgress, &d, Dest::V4(a).bytes(), 0);
    bit(d.outcome as u32)
}

#[cgroup_skb]
pub fn bench_sample_hot6(_ctx: SkBuffContext) -> i32 {
    let _ = next();
    let dest = Dest::from_v6(BENCH_DST6.get(0).copied().unwrap_or([0; 16]));
    let d = decide(dest, mode::global);
    sample::update(Hook::SkbEgress, &d, dest.bytes(), 0);
    bit(d.outcome as u32)
}

/// The two lookups `decide` makes, alone: the exception rules of the active
/// slot (an LPM trie) and the GeoIP flat table.
#[cgroup_skb]
pub fn bench_rules4(_ctx: SkBuffContext) -> i32 {
    let slot = maps::config(CFG_SLOT) & 1;
    let key = Key::new(32, dest4());
    // One call site per trie, as decide.rs does.
    let rule = if slot == 0 {
        RULES4_0.get(&key)
    } else {
        RULES4_1.get(&key)
    };
    bit(rule.map(|r| r.kind as u32).unwrap_or(0))
}

#[cgroup_skb]
pub fn bench_rules6(_ctx: SkBuffContext) -> i32 {
    let slot = maps::config(CFG_SLOT) & 1;
    let key = Key::new(128, dest6());
    let rule = if slot == 0 {
        RULES6_0.get(&key)
    } else {
        RULES6_1.get(&key)
    };
    bit(rule.map(|r| r.kind as u32).unwrap_or(0))
}

#[cgroup_skb]
pub fn bench_geo4(_ctx: SkBuffContext) -> i32 {
    let slot = maps::config(CFG_SLOT) & 1;
    bit(geo::country4(slot, dest4()) as u32)
}

#[cgroup_skb]
pub fn bench_geo6(_ctx: SkBuffContext) -> i32 {
    let slot = maps::config(CFG_SLOT) & 1;
    bit(geo::country6(slot, &dest6()) as u32)
}

#[cgroup_skb]
pub fn bench_lpm4(_ctx: SkBuffContext) -> i32 {
    let key = Key::new(32, dest4());
    bit(BENCH_LPM4.get(&key).copied().unwrap_or(0))
}

#[cgroup_skb]
pub fn bench_lpm6(_ctx: SkBuffContext) -> i32 {
    let key = Key::new(128, dest6());
    bit(BENCH_LPM6.get(&key).copied().unwrap_or(0))
}
