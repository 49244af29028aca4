//! cgroup `skb/egress`: the packet-level backstop.
//!
//! It sees every packet the sockets of the scope cgroups send, so it catches
//! what the socket hooks cannot: sockets connected before the agent
//! attached, raw sockets (ICMP), anything that bypasses connect/sendmsg.
//! It decides once per socket and destination: the verdict is cached in
//! the socket's storage with the policy generation it was made under (the
//! connect/sendmsg hooks fill it first), and a mode or policy change bumps
//! the generation, so the next packet decides again. Packets and bytes are
//! counted per country and outcome; in enforce mode a refused packet is
//! dropped (the sender gets EPERM where the stack reports it).

use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE,
    helpers::generated::{bpf_sk_storage_get, bpf_skb_cgroup_id},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use enforcer_common::{CFG_GENERATION, Family, Hook, Mode, Outcome, SockVerdict, Source};

use crate::{
    counters::count_packet,
    decide::{Decision, decide},
    events,
    maps::{SK_VERDICT, config},
    mode, packet,
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
    let Some(p) = packet::parse(protocol, 0, &ctx) else {
        return PASS;
    };
    let generation = config(CFG_GENERATION);
    let daddr = p.dest.bytes();

    // SAFETY: `sk` is a context field (possibly null); bpf_sk_storage_get
    // accepts any socket pointer and returns null for a null or non-full
    // socket. The map pointer is the BTF map definition's address, which
    // the loader relocates (what aya's SkStorage passes for sock_addr).
    let sv = unsafe {
        let sk = (*skb).__bindgen_anon_2.sk;
        if sk.is_null() {
            core::ptr::null_mut()
        } else {
            bpf_sk_storage_get(
                core::ptr::from_ref(&SK_VERDICT).cast_mut().cast(),
                sk.cast(),
                core::ptr::null_mut(),
                BPF_SK_STORAGE_GET_F_CREATE as u64,
            )
            .cast::<SockVerdict>()
        }
    };
    // SAFETY: non-null storage pointers point at the value.
    let cached = if sv.is_null() {
        None
    } else {
        Some(unsafe { *sv })
    };

    if let Some(c) = cached
        && c.generation == generation
        && c.daddr == daddr
        && let Some(d) = from_cache(&c)
    {
        count_packet(Hook::SkbEgress, &d, len);
        return if d.refuses() { DROP } else { PASS };
    }

    let d = decide(p.dest, |slot| mode::for_skb(skb, slot));
    count_packet(Hook::SkbEgress, &d, len);
    let c = cached.unwrap_or(SockVerdict {
        generation: 0,
        outcome: 0,
        family: 0,
        country: 0,
        daddr: [0; 16],
        pid_tgid: 0,
        uid_gid: 0,
        comm: [0; 16],
        source: 0,
        mode: 0,
        _pad: [0; 6],
    });
    if d.reportable() {
        let uid_gid = if c.pid_tgid != 0 {
            c.uid_gid
        } else {
            ctx.get_socket_uid() as u64
        };
        events::emit(|e| {
            // SAFETY: the helper reads the socket's cgroup from the context.
            e.cgroup_id = unsafe { bpf_skb_cgroup_id(skb.cast()) };
            e.pid_tgid = c.pid_tgid;
            e.uid_gid = uid_gid;
            e.daddr = daddr;
            e.comm = c.comm;
            e.bytes = len;
            e.dport = p.dport;
            e.country = d.country;
            e.hook = Hook::SkbEgress as u8;
            e.family = d.family as u8;
            e.protocol = p.protocol;
            e.outcome = d.outcome as u8;
            e.mode = d.mode as u8;
            e.source = d.source as u8;
        });
    }
    if !sv.is_null() {
        // The process fields belong to the socket: keep what connect wrote.
        // SAFETY: as above.
        unsafe {
            *sv = SockVerdict {
                generation,
                outcome: d.outcome as u8,
                family: d.family as u8,
                country: d.country,
                daddr,
                source: d.source as u8,
                mode: d.mode as u8,
                ..c
            };
        }
    }
    if d.refuses() { DROP } else { PASS }
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
