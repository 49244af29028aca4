//! Reporting the datapath's internal failures ([`Fault`]): things a correct
//! agent and kernel never produce, such as a map value that does not
//! decode or a helper failing where it cannot. The hooks go on deciding
//! (each call site says how), and [`report`] tells the operator:
//!
//! - every failure is counted per CPU and kind in `DP_ERRORS`, which the
//!   agent exports as `enforcer_datapath_errors_total{kind}`;
//! - one is logged through aya-log (`AYA_LOGS`, which the agent forwards
//!   to its own log) at most once per [`FAULT_LOG_INTERVAL_NS`] per CPU and
//!   kind, with the count so far: a failure on every packet must neither
//!   flood the agent's log nor cost a log record per packet.
//!
//! Only the failure branches call [`report`], so the hooks' common paths
//! are unchanged. Its body is a global function
//! ([`enforcer_report_fault`]): the verifier checks a global function once
//! per program, on its own, where it walks a static one again at every call
//! site with the caller's state. Writing a log record copies its text byte
//! by byte, and walked at every call site that exceeded the verifier's
//! million instructions; as a global function it costs each program about
//! 37,000 of them (skb_egress, the largest, went from about 721,000 to
//! 775,000).
//!
//! What is not reported, and why: array lookups with a constant in-range
//! index (`CONFIG`, the tables' single values, the per-CPU states) cannot
//! fail (compat.rs checks every pinned map's size before a program is
//! loaded); a full `EVENTS` ring is back-pressure, already counted as
//! suppressed events; a packet too short for its headers in the tcx hook,
//! or for its transport port anywhere, is the traffic's doing, not a
//! failure. A `MODE_OVERRIDES` value that is not a mode is ignored unreported:
//! any report from the cgroup walk's loop, even a flag tested after it,
//! multiplied the states the verifier explores there past its limit.

use core::{
    hint::black_box,
    intrinsics::{AtomicOrdering, atomic_xadd},
};

use aya_ebpf::helpers::generated::bpf_ktime_get_boot_ns;
use aya_log_ebpf::{error, warn};
use enforcer_common::{FAULT_LOG_INTERVAL_NS, Fault};

use crate::maps::DP_ERRORS;

/// Counts one failure of kind `fault` and logs it unless this CPU logged
/// one of the kind less than [`FAULT_LOG_INTERVAL_NS`] ago. `a` and `b`
/// are the values the kind's message names (see each arm of
/// [`enforcer_report_fault`]).
#[inline(always)]
pub fn report(fault: Fault, a: u64, b: u64) {
    // Opaque arguments: LLVM could otherwise clone the function for a
    // constant kind (function specialisation), and a clone is static.
    enforcer_report_fault(black_box(fault as u32), black_box(a), black_box(b));
}

/// [`report`]'s body, a global function (see the module docs): exported
/// under its own name so that its BTF linkage is global, with scalar
/// arguments and result, as the verifier requires of one. Returns 0.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn enforcer_report_fault(fault: u32, a: u64, b: u64) -> i32 {
    let Some(fault) = Fault::from_raw(fault) else {
        return 0;
    };
    let Some(state) = DP_ERRORS.get_ptr_mut(fault as u32) else {
        return 0;
    };
    // SAFETY: a valid per-CPU entry from a successful lookup. The count is
    // added atomically (another program may preempt this one on this CPU,
    // as in counters.rs); the log time is a plain store: a race there
    // costs at most one extra log line. The add's result is not used: the
    // datapath is built for the generic BPF CPU, which has no fetching
    // atomics, so the message reads the count again.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*state).count, 1) };
    // SAFETY: reads the clock.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: as above.
    let last = unsafe { (*state).logged_ns };
    if last != 0 && now.wrapping_sub(last) < FAULT_LOG_INTERVAL_NS {
        return 0;
    }
    // SAFETY: as above.
    let n = unsafe {
        (*state).logged_ns = now;
        (*state).count
    };
    // aya-log-ebpf 0.2 only evaluates its context argument ("we may need
    // ctx in the future"): a unit lets code that has no program context
    // (the decision, deep inside every hook) report too.
    let ctx = &();
    match fault {
        Fault::ModeWord => error!(
            ctx,
            "internal failure mode_word: CONFIG[{}] holds {}, which is not a mode; deciding as observe ({} on this CPU)",
            a,
            b,
            n
        ),
        Fault::RuleValue => error!(
            ctx,
            "internal failure rule_value: an exception rule holds kind {}, country {}; ignored, or decided as unknown ({} on this CPU)",
            a,
            b,
            n
        ),
        Fault::GeoValue => error!(
            ctx,
            "internal failure geo_value: the IPv{} GeoIP table gives country index {}, out of range; decided as unknown ({} on this CPU)",
            a,
            b,
            n
        ),
        Fault::SockStorage => warn!(
            ctx,
            "internal failure sock_storage: bpf_sk_storage_get cannot create a socket's verdict storage (hook {}: 0 connect4, 1 connect6, 2 sendmsg4, 3 sendmsg6); its packets are decided and reported again ({} on this CPU)",
            a,
            n
        ),
        Fault::PacketHeader => warn!(
            ctx,
            "internal failure packet_header: bpf_skb_load_bytes cannot read the IP header of a packet of protocol {:x}, length {}; not decided ({} on this CPU)",
            a,
            b,
            n
        ),
        Fault::CachedVerdict => error!(
            ctx,
            "internal failure cached_verdict: a socket's cached verdict does not decode (outcome, family, source, mode: {:x}); decided again ({} on this CPU)",
            a,
            n
        ),
        Fault::CounterIndex => error!(
            ctx,
            "internal failure counter_index: a decision with country {}, outcome {} is outside the counters; not counted ({} on this CPU)",
            a,
            b,
            n
        ),
    }
    0
}
