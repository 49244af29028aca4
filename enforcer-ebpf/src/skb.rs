//! cgroup `skb/egress`: the packet-level backstop.
//!
//! It sees every packet the sockets of the scope cgroups send, so it catches
//! what the socket hooks cannot: sockets connected before the agent
//! attached, raw sockets (ICMP), anything that bypasses connect/sendmsg.
//! A refused or would-refuse verdict is cached in the socket's storage with
//! the policy generation it was made under (the connect/sendmsg hooks fill
//! it first when they see it), so such a socket is decided and reported
//! once per generation; a mode or policy change bumps the generation, so
//! the next packet decides again. Allowed sockets have no storage (creating
//! it costs several decisions): each of their packets is decided, in the
//! common case by a hit in the per-CPU verdict cache, tried before the
//! storage. Packets and bytes are counted per country and outcome; in
//! enforce mode a refused packet is dropped (the sender gets EPERM where
//! the stack reports it).

use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE,
    helpers::generated::{bpf_sk_storage_get, bpf_skb_cgroup_id},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use enforcer_common::{
    CFG_GENERATION, DIRECTION_INBOUND, DIRECTION_OUTBOUND, Family, Fault, Hook, Mode, Outcome,
    SockVerdict, Source,
};

use crate::{
    counters::count_packet,
    decide::{CacheProbe, Decision},
    diagnostics::report,
    events::{self, Target},
    maps::{SOCK_VERDICT, config},
    mode, packet, sample, scope,
};

/// cgroup_skb return values (`__cgroup_bpf_run_filter_skb`).
const DROP: i32 = 0;
const PASS: i32 = 1;

#[cgroup_skb(egress)]
pub fn skb_egress(ctx: SkBuffContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: the context pointer is valid; protocol and len are plain
    // 4-byte context loads.
    let (protocol, len) = unsafe { ((*skb).protocol, (*skb).len) };
    // The stack built this packet's IP header (cgroup skb egress runs in
    // ip_finish_output and ip6_finish_output), so one that cannot be read
    // is a failure: reported, and the packet passes undecided.
    let Some(p) = packet::parse(protocol, 0, &ctx.skb, || {
        report(
            Fault::PacketHeader,
            u64::from(u16::from_be(protocol as u16)),
            u64::from(len),
        )
    }) else {
        return PASS;
    };
    let generation = config(CFG_GENERATION);
    // Every path below counts the packet under its scope entry: found once.
    let scope = scope::for_skb(skb);
    // An allowed or exempt destination in the per-CPU cache first: most
    // packets are an allowed flow's, and this spares them the storage
    // lookup below (a helper call). The storage only ever holds reportable
    // verdicts, and a destination's verdict under one generation is either
    // allowed/exempt (for every caller: the cache holds no other) or not,
    // so a hit here is what the storage would not contradict.
    let probe = CacheProbe::new(p.dest, generation);
    if let Some(d) = probe.hit() {
        count_packet(Hook::SkbEgress, &d, len, scope);
        return PASS;
    }
    let daddr = p.dest.bytes();

    // The socket's storage, if a hook stored a verdict on it (only
    // reportable verdicts are stored: creating storage costs far more than
    // deciding, so allowed sockets have none and are decided per packet).
    // SAFETY: `sk` is a plain context field, possibly null.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    let sv = storage(sk, 0);
    // Fields are read and written through the pointer, never copied whole:
    // the program's stack (512 bytes) has no room for two more verdicts.
    // SAFETY: a non-null storage pointer points at the value.
    if let Some(c) = unsafe { sv.as_ref() }
        && c.generation == generation
        && c.daddr == daddr
    {
        match from_cache(c) {
            Some(d) => {
                count_packet(Hook::SkbEgress, &d, len, scope);
                return if d.refuses() { DROP } else { PASS };
            }
            // Only the hooks write the storage, with decoded values: a
            // corrupt verdict is decided again (and overwritten below).
            None => report(
                Fault::CachedVerdict,
                u64::from(u32::from_be_bytes([c.outcome, c.family, c.source, c.mode])),
                0,
            ),
        }
    }

    let d = probe.decide(|slot| mode::for_skb(skb, slot));
    count_packet(Hook::SkbEgress, &d, len, scope);
    sample::record(Hook::SkbEgress, &d, daddr, scope);
    // A reportable verdict is stored (its storage created now if need be),
    // so the socket's later packets neither decide nor report again.
    let sv = if sv.is_null() && d.reportable() {
        storage(sk, BPF_SK_STORAGE_GET_F_CREATE as u64)
    } else {
        sv
    };
    if d.reportable() {
        // The process a socket hook recorded, else the socket's owner.
        // SAFETY: as above.
        let (pid_tgid, uid_gid, comm) = match unsafe { sv.as_ref() } {
            Some(c) if c.pid_tgid != 0 => (c.pid_tgid, c.uid_gid, c.comm),
            _ => (0, ctx.get_socket_uid() as u64, [0; 16]),
        };
        events::emit(|e| {
            let to = Target {
                daddr,
                dport: p.dport,
                protocol: p.protocol,
                bytes: len,
                sport: p.sport,
                direction: if p.synack {
                    DIRECTION_INBOUND
                } else {
                    DIRECTION_OUTBOUND
                },
            };
            events::describe(e, Hook::SkbEgress, &d, to);
            // SAFETY: the helper reads the socket's cgroup from the context.
            e.cgroup_id = unsafe { bpf_skb_cgroup_id(skb.cast()) };
            e.pid_tgid = pid_tgid;
            e.uid_gid = uid_gid;
            e.comm = comm;
        });
    }
    // The process fields belong to the socket: keep what connect wrote.
    // SAFETY: as above.
    if let Some(c) = unsafe { sv.as_mut() } {
        c.generation = generation;
        c.outcome = d.outcome as u8;
        c.family = d.family as u8;
        c.country = d.country;
        c.daddr = daddr;
        c.source = d.source as u8;
        c.mode = d.mode as u8;
    }
    if d.refuses() { DROP } else { PASS }
}

/// The socket's verdict storage (`flags` 0: only if it exists), or null.
#[inline(always)]
fn storage(sk: *mut aya_ebpf::bindings::bpf_sock, flags: u64) -> *mut SockVerdict {
    if sk.is_null() {
        return core::ptr::null_mut();
    }
    // SAFETY: `sk` is the context's socket field, non-null; bpf_sk_storage_get
    // accepts it and returns null for a socket that is not full. The map
    // pointer is the BTF map definition's address, which the loader
    // relocates (what aya's SkStorage passes for sock_addr).
    unsafe {
        bpf_sk_storage_get(
            core::ptr::from_ref(&SOCK_VERDICT).cast_mut().cast(),
            sk.cast(),
            core::ptr::null_mut(),
            flags,
        )
        .cast::<SockVerdict>()
    }
}

/// A cached verdict, when every field of it decodes.
#[inline(always)]
fn from_cache(c: &SockVerdict) -> Option<Decision> {
    Some(Decision {
        outcome: Outcome::from_raw(c.outcome as u32)?,
        country: c.country,
        family: Family::from_raw(c.family as u32)?,
        source: Source::from_raw(c.source as u32)?,
        mode: Mode::from_raw(c.mode as u32)?,
    })
}
