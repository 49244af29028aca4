//! tcx egress on the configured interfaces: traffic the host forwards
//! (containers and VMs behind a bridge or a routed veth), which no socket of
//! this host sends and so no cgroup hook sees.
//!
//! - Locally generated packets are skipped: they carry their socket in
//!   `skb->sk`, and the cgroup hooks decide them (for the scope's cgroups).
//!   Forwarded packets never do: `ip_forward()` and `ip6_forward()` drop an
//!   skb that still has a socket (`if (unlikely(skb->sk)) goto drop;` in
//!   https://github.com/torvalds/linux/blob/v6.18/net/ipv4/ip_forward.c and
//!   https://github.com/torvalds/linux/blob/v6.18/net/ipv6/ip6_output.c).
//!   `__sk_buff.sk` is readable in tc programs: `tc_cls_act_is_valid_access`
//!   falls back to `bpf_skb_is_valid_access`, which allows the 8-byte read as
//!   PTR_TO_SOCK_COMMON_OR_NULL
//!   (https://github.com/torvalds/linux/blob/v6.18/net/core/filter.c).
//! - The packet starts at the Ethernet header (tc egress runs before the
//!   driver, with `skb->data` at the MAC header), so the IP header is at
//!   [`ETH_HLEN`]; the agent refuses interfaces that are not Ethernet.
//!   `skb->protocol` says what follows. No VLAN parsing: a frame whose
//!   `skb->protocol` is 802.1Q/802.1ad (a tag in the frame, as on a parent
//!   device without tag offload), MPLS, PPPoE or anything but IPv4/IPv6 is
//!   not decided and passes; configure the VLAN device (`eth0.100`) itself,
//!   where the traffic is plain IP. A parent device with tag offload sees
//!   the tag in metadata, `skb->protocol` is IP and the frame is decided.
//! - The mode is the global one of the active slot: forwarded traffic has
//!   no local cgroup, so per-cgroup overrides cannot apply.
//! - Packets and bytes (from the IP header on, like the cgroup skb hook)
//!   are counted per country and outcome, and per interface
//!   (`SCOPE_BY_IF`, by `skb->ifindex`); refused and would-refuse packets
//!   are reported as events with no process, uid or cgroup (there is none).

use aya_ebpf::{macros::classifier, programs::TcContext};
use enforcer_common::{CFG_GENERATION, DIRECTION_INBOUND, DIRECTION_OUTBOUND, Hook};

use crate::{
    counters::count_packet,
    decide::decide_cached,
    events::{self, Target},
    maps::config,
    mode, packet, sample, scope,
};

/// Length of the Ethernet header before the IP header.
const ETH_HLEN: usize = 14;

/// tcx return codes (`enum tcx_action_base`, include/uapi/linux/bpf.h).
/// `tcx_run()` runs the interface's programs in order and stops at the
/// first that returns anything but TCX_NEXT
/// (https://github.com/torvalds/linux/blob/v6.18/net/core/dev.c). So a
/// packet this program does not refuse gets TCX_NEXT, not TCX_PASS: the
/// programs after it (a CNI's, a firewall's) still run, and when none is
/// left the packet goes on as with TC_ACT_UNSPEC.
const TCX_NEXT: i32 = -1;
/// Drop (the value of TC_ACT_SHOT); ends the chain.
const TCX_DROP: i32 = 2;

#[classifier]
pub fn tcx_egress(ctx: TcContext) -> i32 {
    try_tcx_egress(&ctx)
}

#[inline(always)]
fn try_tcx_egress(ctx: &TcContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: the context pointer is valid; protocol and len are plain
    // 4-byte context loads, sk an 8-byte one (see the module docs).
    let (protocol, len, sk, ifindex) = unsafe {
        (
            (*skb).protocol,
            (*skb).len,
            (*skb).__bindgen_anon_2.sk,
            (*skb).ifindex,
        )
    };
    if !sk.is_null() {
        // Sent by a socket of this host: the cgroup hooks' business.
        return TCX_NEXT;
    }
    // A forwarded or bridged frame too short for its IP header is the
    // sender's doing, not a failure: it is not decided, and not reported.
    let Some(p) = packet::parse(protocol, ETH_HLEN, &ctx.skb, || {}) else {
        return TCX_NEXT;
    };
    let (d, decided) = decide_cached(p.dest, config(CFG_GENERATION), mode::global);
    // parse() read a whole IP header after the Ethernet header, so `len`
    // is larger than ETH_HLEN; saturating anyway, for the verifier's sake.
    let bytes = len.saturating_sub(ETH_HLEN as u32);
    // The scope entry is the interface: at tc egress `skb->ifindex` is the
    // device the packet leaves by.
    let scope = scope::for_ifindex(ifindex);
    count_packet(Hook::TcxEgress, &d, bytes, scope);
    if decided {
        sample::record(Hook::TcxEgress, &d, p.dest.bytes(), scope);
    }
    if d.reportable() {
        // No pid, comm, uid or cgroup: the sender is not on this host, and
        // the event's zeroed fields say so; the interface names its scope.
        events::emit(|e| {
            let to = Target {
                daddr: p.dest.bytes(),
                dport: p.dport,
                protocol: p.protocol,
                bytes,
                sport: p.sport,
                direction: if p.synack {
                    DIRECTION_INBOUND
                } else {
                    DIRECTION_OUTBOUND
                },
            };
            events::describe(e, Hook::TcxEgress, &d, to);
            e.ifindex = ifindex;
        });
    }
    if d.refuses() { TCX_DROP } else { TCX_NEXT }
}
