//! Per-decision cost with `BPF_PROG_TEST_RUN`, on random destinations drawn
//! from the database, for the empty program, the enforcer's decision and a
//! plain LPM trie of the same prefixes, and what `skb_egress` costs a packet
//! around the decision.
//!
//! The decision rows run the bench object (`enforcer-ebpf/src/bench.rs`):
//! its programs call the datapath's own `decide()` on the maps the agent
//! filled (loaded with the live datapath's pin directory), or look the
//! address up in an LPM trie, or do nothing, each taking the next of 1 Mi
//! random destinations per run, so `repeat` = 1e6 decides 1e6 different
//! addresses and the empty program's time is exactly the walk they share.
//! The kernel times the runs itself (`duration`: ns per run,
//! `bpf_test_timer_leave` in net/bpf/test_run.c), so the syscall does not
//! count. The three programs run in turn, order rotated per run, so cache
//! and frequency effects fall on all three alike.
//!
//! The `skb_egress` rows are the whole packet hook: on the first packet of
//! a socket (`repeat` = 1 on many packets: each call makes a fresh dummy
//! socket, so the hook decides and counts, and for a refused destination
//! creates the socket's verdict storage and emits an event) and on a
//! flow's next packet (`repeat` = 1e6 on one packet: the kernel reuses the
//! skb and its socket, so every run after the first is answered by the
//! per-CPU verdict cache for an allowed destination, by the socket's
//! storage for a refused one), each minus an empty program run the same
//! way.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd, RawFd},
    path::Path,
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, MapData, lpm_trie::Key},
    programs::CgroupSkb,
};
use enforcer::{
    datapath::BENCH_OBJECT,
    paths::PinLayout,
    policy::{CompiledPolicy, country_index},
};
use enforcer_common::bench::{
    BENCH_DESTS, BENCH_DST4, BENCH_DST6, BENCH_LPM4, BENCH_LPM6, BENCH_PROGRAMS,
};

use crate::{Rng, bpf, report::Row};

/// Repeats per `BPF_PROG_TEST_RUN` call of the decision programs.
pub const REPEAT: u32 = 1_000_000;

/// The bench object (its programs loaded, its LPM tries and destinations
/// filled) and an empty program for the `skb_egress` rows.
pub struct Programs {
    ebpf: Ebpf,
    empty_skb: OwnedFd,
}

/// Loads the bench object against the live datapath's maps (`pin_dir`, the
/// agent's configured pin directory), fills both LPM tries with every GeoIP
/// prefix of `policy` (value: the country index, as the agent stores it)
/// and the destination arrays with random addresses.
pub fn prepare(pin_dir: &Path, policy: &CompiledPolicy) -> Result<Programs> {
    let pins = PinLayout::new(pin_dir);
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&pins.maps)
        .load(BENCH_OBJECT)
        .context("loading the bench object")?;
    for name in BENCH_PROGRAMS.as_flattened() {
        let p: &mut CgroupSkb = ebpf
            .program_mut(name)
            .with_context(|| format!("{name} is not in the bench object"))?
            .try_into()
            .with_context(|| name.to_owned())?;
        p.load().with_context(|| format!("loading {name}"))?;
    }
    {
        let mut v4: LpmTrie<&mut MapData, [u8; 4], u32> = lpm(&mut ebpf, BENCH_LPM4)?;
        for (net, cc) in policy.geo.v4.prefixes() {
            v4.insert(
                &Key::new(net.prefix().into(), net.network().octets()),
                u32::from(country_index(cc)),
                0,
            )
            .with_context(|| format!("inserting {net}"))?;
        }
    }
    {
        let mut v6: LpmTrie<&mut MapData, [u8; 16], u32> = lpm(&mut ebpf, BENCH_LPM6)?;
        for (net, cc) in policy.geo.v6.prefixes() {
            v6.insert(
                &Key::new(net.prefix().into(), net.network().octets()),
                u32::from(country_index(cc)),
                0,
            )
            .with_context(|| format!("inserting {net}"))?;
        }
    }
    let (d4, d6) = destinations(policy, &mut Rng::new(0x5eed_0001), BENCH_DESTS as usize);
    {
        let mut a: Array<&mut MapData, [u8; 4]> = array(&mut ebpf, BENCH_DST4)?;
        for (i, d) in d4.iter().enumerate() {
            if let IpAddr::V4(d) = d {
                a.set(i as u32, d.octets(), 0).context(BENCH_DST4)?;
            }
        }
    }
    {
        let mut a: Array<&mut MapData, [u8; 16]> = array(&mut ebpf, BENCH_DST6)?;
        for (i, d) in d6.iter().enumerate() {
            if let IpAddr::V6(d) = d {
                a.set(i as u32, d.octets(), 0).context(BENCH_DST6)?;
            }
        }
    }
    let empty_skb = bpf::load_program(
        bpf::BPF_PROG_TYPE_CGROUP_SKB,
        bpf::BPF_CGROUP_INET_EGRESS,
        "bench_empty",
        &bpf::empty_program(),
    )
    .context("loading the empty program")?;
    Ok(Programs { ebpf, empty_skb })
}

fn lpm<'a, K: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> Result<LpmTrie<&'a mut MapData, K, u32>> {
    let map = ebpf
        .map_mut(name)
        .with_context(|| format!("{name} is not in the bench object"))?;
    LpmTrie::try_from(map).with_context(|| name.to_owned())
}

fn array<'a, V: aya::Pod>(ebpf: &'a mut Ebpf, name: &str) -> Result<Array<&'a mut MapData, V>> {
    let map = ebpf
        .map_mut(name)
        .with_context(|| format!("{name} is not in the bench object"))?;
    Array::try_from(map).with_context(|| name.to_owned())
}

impl Programs {
    fn fd(&self, name: &str) -> Result<RawFd> {
        let p: &CgroupSkb = self
            .ebpf
            .program(name)
            .with_context(|| format!("{name} is not in the bench object"))?
            .try_into()
            .with_context(|| name.to_owned())?;
        Ok(p.fd()
            .map_err(|e| anyhow!("{name}: {e}"))?
            .as_fd()
            .as_raw_fd())
    }
}

/// Random destinations: a prefix drawn uniformly from the table, then a
/// uniform address inside it.
pub fn destinations(
    policy: &CompiledPolicy,
    rng: &mut Rng,
    n: usize,
) -> (Vec<IpAddr>, Vec<IpAddr>) {
    let p4: Vec<_> = policy.geo.v4.prefixes().map(|(n, _)| n).collect();
    let p6: Vec<_> = policy.geo.v6.prefixes().map(|(n, _)| n).collect();
    let v4 = (0..n)
        .map(|_| {
            let net = p4[rng.below(p4.len())];
            let host = if net.prefix() == 32 {
                0
            } else {
                (rng.next_u64() as u32) >> net.prefix()
            };
            IpAddr::V4(Ipv4Addr::from(u32::from(net.network()) | host))
        })
        .collect();
    let v6 = (0..n)
        .map(|_| {
            let net = p6[rng.below(p6.len())];
            let r = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
            let host = if net.prefix() == 128 {
                0
            } else {
                r >> net.prefix()
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(net.network()) | host))
        })
        .collect();
    (v4, v6)
}

/// An Ethernet frame carrying a TCP SYN from a documentation address to
/// `dest` port 443 (the packet `skb_egress` sees first on a connection).
pub fn frame(dest: IpAddr) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&443u16.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02;
    match dest {
        IpAddr::V4(d) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let mut h = [0u8; 20];
            h[0] = 0x45;
            h[2..4].copy_from_slice(&40u16.to_be_bytes());
            h[6] = 0x40;
            h[8] = 64;
            h[9] = 6;
            h[12..16].copy_from_slice(&[198, 51, 100, 2]);
            h[16..20].copy_from_slice(&d.octets());
            let mut sum: u32 = h
                .chunks(2)
                .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
                .sum();
            while sum >> 16 != 0 {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            h[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
            f.extend_from_slice(&h);
        }
        IpAddr::V6(d) => {
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            let mut h = [0u8; 40];
            h[0] = 0x60;
            h[4..6].copy_from_slice(&20u16.to_be_bytes());
            h[6] = 6;
            h[7] = 64;
            h[8..24].copy_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2).octets());
            h[24..40].copy_from_slice(&d.octets());
            f.extend_from_slice(&h);
        }
    }
    f.extend_from_slice(&tcp);
    f
}

/// Mean kernel-measured ns per run of `prog` over `repeat` runs on `data`,
/// and its return value.
fn timed(prog: RawFd, data: &[u8], repeat: u32) -> Result<(u32, f64)> {
    let (ret, ns) = bpf::test_run(prog, data, repeat).context("BPF_PROG_TEST_RUN")?;
    Ok((ret, f64::from(ns)))
}

/// What [`first_packets`] found.
struct First {
    /// Mean ns of `skb_egress` and of the empty program.
    enforcer: f64,
    empty: f64,
    dropped: usize,
    /// A destination `skb_egress` let through, and one it dropped.
    allowed: Option<IpAddr>,
    refused: Option<IpAddr>,
}

/// `skb_egress` and the empty program on the first packet of a fresh
/// socket for each of `dests`.
fn first_packets(skb_egress: RawFd, empty: RawFd, dests: &[IpAddr]) -> Result<First> {
    let (mut enf, mut base, mut dropped) = (0.0, 0.0, 0);
    let (mut allowed, mut refused) = (None, None);
    for (i, d) in dests.iter().enumerate() {
        let data = frame(*d);
        let order = if i % 2 == 0 {
            [skb_egress, empty]
        } else {
            [empty, skb_egress]
        };
        for p in order {
            let (ret, ns) = timed(p, &data, 1).with_context(|| format!("on {d}"))?;
            if p == skb_egress {
                enf += ns;
                dropped += usize::from(ret == 0);
                let seen = if ret == 0 { &mut refused } else { &mut allowed };
                seen.get_or_insert(*d);
            } else {
                base += ns;
            }
        }
    }
    let n = dests.len().max(1) as f64;
    Ok(First {
        enforcer: enf / n,
        empty: base / n,
        dropped,
        allowed,
        refused,
    })
}

/// The decision rows: `runs` rounds; each runs every decision program with
/// `REPEAT` repeats and `skb_egress` on `packets` fresh destinations per
/// family.
pub fn measure(
    skb_egress: RawFd,
    progs: &Programs,
    policy: &CompiledPolicy,
    runs: usize,
    packets: usize,
    notes: &mut Vec<String>,
) -> Result<Vec<Row>> {
    const S: &str = "decision (BPF_PROG_TEST_RUN)";
    const FAMILIES: [&str; 2] = ["IPv4", "IPv6"];
    let mut rows = Vec::new();
    for fam in FAMILIES {
        rows.push(Row::new(
            S,
            format!("empty program walking the destinations, {fam} (baseline)"),
            "ns/run",
        ));
        rows.push(
            Row::new(S, format!("enforcer decision, {fam}, minus empty"), "ns")
                .vs("LPM trie", format!("LPM trie, {fam}, minus empty"))
                .target("<=", if fam == "IPv4" { 100.0 } else { 350.0 }),
        );
        rows.push(Row::new(S, format!("LPM trie, {fam}, minus empty"), "ns"));
        rows.push(Row::new(
            S,
            format!("of the decision: exception rules lookup alone, {fam}, minus empty"),
            "ns",
        ));
        rows.push(Row::new(
            S,
            format!("of the decision: GeoIP flat table lookup alone, {fam}, minus empty"),
            "ns",
        ));
        rows.push(Row::new(
            S,
            format!(
                "enforcer decision, one destination repeated (caches warm), {fam}, minus empty"
            ),
            "ns",
        ));
        rows.push(
            Row::new(
                S,
                format!(
                    "enforcer decision + allowed sample update (a new entry each run, LRU evicting), {fam}, minus empty"
                ),
                "ns",
            )
            .vs(
                "decision alone",
                format!("enforcer decision, {fam}, minus empty"),
            ),
        );
        rows.push(
            Row::new(
                S,
                format!(
                    "enforcer decision + allowed sample update, one destination repeated (its entry exists), {fam}, minus empty"
                ),
                "ns",
            )
            .vs(
                "decision alone",
                format!(
                    "enforcer decision, one destination repeated (caches warm), {fam}, minus empty"
                ),
            ),
        );
        rows.push(Row::new(
            S,
            format!("skb_egress, first packet of a socket, {fam}, minus empty"),
            "ns",
        ));
        rows.push(Row::new(
            S,
            format!(
                "skb_egress, a flow's next packet, allowed destination (per-CPU verdict cache), {fam}, minus empty"
            ),
            "ns",
        ));
        rows.push(Row::new(
            S,
            format!(
                "skb_egress, a flow's next packet, refused destination (socket's verdict), {fam}, minus empty"
            ),
            "ns",
        ));
    }
    let fds = BENCH_PROGRAMS
        .iter()
        .map(|names| -> Result<Vec<RawFd>> { names.iter().map(|n| progs.fd(n)).collect() })
        .collect::<Result<Vec<_>>>()?;
    let empty_skb = progs.empty_skb.as_raw_fd();
    let mut rng = Rng::new(0x5eed_0002);
    for run in 0..runs {
        let (d4, d6) = destinations(policy, &mut rng, packets);
        for (f, dests) in [d4, d6].iter().enumerate() {
            const N: usize = BENCH_PROGRAMS[0].len();
            let r = (N + 3) * f;
            // The bench programs read their destination from the map; the
            // packet only has to be one the kernel accepts.
            let data = frame(dests[0]);
            let mut ns = [0.0; N];
            for k in 0..N {
                let p = (run + k) % N;
                ns[p] = timed(fds[f][p], &data, REPEAT)
                    .with_context(|| BENCH_PROGRAMS[f][p])?
                    .1;
            }
            rows[r].samples.push(ns[0]);
            for p in 1..N {
                rows[r + p].samples.push(ns[p] - ns[0]);
            }
            let skb = r + N;

            let first = first_packets(skb_egress, empty_skb, dests)?;
            let dropped = first.dropped;
            rows[skb].samples.push(first.enforcer - first.empty);
            // The kernel reuses the skb and its socket for every repeat:
            // after the first, each run is a flow's next packet.
            for (k, dest) in [first.allowed, first.refused].into_iter().enumerate() {
                let Some(dest) = dest else { continue };
                let data = frame(dest);
                let (_, next) = timed(skb_egress, &data, REPEAT).context("skb_egress")?;
                let (_, base) = timed(empty_skb, &data, REPEAT).context("empty program")?;
                rows[skb + 1 + k].samples.push(next - base);
            }
            if run == 0 {
                notes.push(format!(
                    "decision, {}: {} random destinations walked by the bench programs ({REPEAT} runs per measurement); skb_egress first packets: {packets} random destinations per run, {dropped} of them refused (enforce mode, EEA approved)",
                    FAMILIES[f], BENCH_DESTS
                ));
            }
        }
        println!("  decision: run {}/{runs} done", run + 1);
    }
    Ok(rows)
}
