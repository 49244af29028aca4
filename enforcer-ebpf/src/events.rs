//! Events for refused and would-refuse decisions, through the `EVENTS` ring
//! buffer, rate limited per CPU by a token bucket (`CFG_EVENT_RATE` per
//! second, `CFG_EVENT_BURST` at most). What is not emitted is counted in
//! `EVENT_STATS`, so nothing is lost silently.

use core::{
    hint::black_box,
    intrinsics::{AtomicOrdering, atomic_xadd},
};

use aya_ebpf::helpers::generated::bpf_ktime_get_boot_ns;
use enforcer_common::{
    CFG_EVENT_BURST, CFG_EVENT_RATE, EVENT_SUPPRESSED_FULL, EVENT_SUPPRESSED_RATE, Event, Hook,
};

use crate::{
    decide::Decision,
    maps::{EVENT_STATE, EVENT_STATS, EVENTS, config},
};

const TOKEN: u64 = 1_000_000_000;
/// Refill is computed over at most this long, so the product with the rate
/// cannot overflow after a long idle time.
const MAX_IDLE_NS: u64 = 10_000_000_000;

fn suppressed(index: u32) {
    if let Some(cell) = EVENT_STATS.get_ptr_mut(black_box(index)) {
        // SAFETY: a valid per-CPU u64 from a successful lookup.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(cell, 1) };
    }
}

/// Takes a token from this CPU's bucket; false when it is empty.
#[inline(always)]
fn take_token(now: u64) -> bool {
    let rate = config(CFG_EVENT_RATE) as u64;
    if rate == 0 {
        return false;
    }
    let burst = (config(CFG_EVENT_BURST) as u64).max(1);
    let Some(state) = EVENT_STATE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a valid per-CPU entry from a successful lookup.
    let state = unsafe { &mut *state };
    let idle = now.saturating_sub(state.last_ns).min(MAX_IDLE_NS);
    let tokens = state
        .nano_tokens
        .saturating_add(idle * rate)
        .min(burst * TOKEN);
    state.last_ns = now;
    if tokens < TOKEN {
        state.nano_tokens = tokens;
        return false;
    }
    state.nano_tokens = tokens - TOKEN;
    true
}

/// Where the traffic of an event went: the same fields in every hook.
pub struct Target {
    /// The destination as decided (IPv4 in the first four bytes).
    pub daddr: [u8; 16],
    /// Host order; 0 when the protocol has none.
    pub dport: u16,
    pub protocol: u8,
    /// The packet's size from the IP header on; 0 for a connection.
    pub bytes: u32,
    /// The local port, host order; 0 when there is none (yet).
    pub sport: u16,
    /// `DIRECTION_OUTBOUND` or `DIRECTION_INBOUND`.
    pub direction: u8,
}

/// Fills the fields every hook's event has: the decision `d` in `hook`
/// for traffic to `to`. Called inside [`emit`]'s `fill`, so nothing is
/// computed for an event that is not emitted, and the programs keep the
/// shape the verifier walks within its limit (building the fields before
/// `emit`'s early returns cost `skb_egress` its last headroom).
#[inline(always)]
pub fn describe(e: &mut Event, hook: Hook, d: &Decision, to: Target) {
    e.daddr = to.daddr;
    e.bytes = to.bytes;
    e.dport = to.dport;
    e.country = d.country;
    e.hook = hook as u8;
    e.family = d.family as u8;
    e.protocol = to.protocol;
    e.outcome = d.outcome as u8;
    e.mode = d.mode as u8;
    e.source = d.source as u8;
    e.sport = to.sport;
    e.direction = to.direction;
}

/// Emits the event `fill` describes (its time is set here; the hooks fill
/// the rest with [`describe`] and what only they know about the sender),
/// or counts why not. Does nothing when events are off
/// (`CFG_EVENT_RATE` = 0).
#[inline(always)]
pub fn emit(fill: impl FnOnce(&mut Event)) {
    if config(CFG_EVENT_RATE) == 0 {
        return;
    }
    // SAFETY: reads the clock.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if !take_token(now) {
        suppressed(EVENT_SUPPRESSED_RATE);
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        suppressed(EVENT_SUPPRESSED_FULL);
        return;
    };
    // Built in the reserved record itself, not on the stack: the 88-byte
    // record on top of a hook's frame passed the verifier's 512-byte
    // limit (connect6: 528).
    let event = entry.as_mut_ptr();
    // SAFETY: the reservation is `size_of::<Event>()` writable bytes;
    // zeroed first, so every field (padding included) is initialised
    // before `fill` sees a reference to it.
    unsafe {
        core::ptr::write_bytes(event, 0, 1);
        (*event).time_ns = now;
        fill(&mut *event);
    }
    entry.submit(0);
}
