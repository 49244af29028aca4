//! Per-decision cost with `BPF_PROG_TEST_RUN`: the empty program, the
//! agent's `skb_egress` and a plain LPM trie of the same prefixes, on random
//! destinations drawn from the database.
//!
//! `repeat` = 1 on many distinct packets, not `repeat` >= 1e6 on one: the
//! kernel runs every repeat on the same skb and the same dummy socket
//! (net/bpf/test_run.c, `bpf_prog_test_run_skb`), and `skb_egress` caches
//! its verdict in socket storage, so repeats 2..n would measure the cache,
//! not the decision. Each call makes a fresh dummy socket: every run below
//! decides from scratch. The kernel times the run itself (`duration`, ns,
//! `bpf_test_timer_enter`..`leave` around `bpf_prog_run`), so the syscall
//! does not count; the empty program's time (timer and run overhead) is
//! subtracted. The three programs are run on each packet in turn, so cache
//! and frequency effects fall on all three alike.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, OwnedFd, RawFd},
};

use anyhow::{Context as _, Result};
use enforcer::policy::{CompiledPolicy, country_index};

use crate::{Rng, bpf, report::Row};

/// The bench-only programs and the LPM trie maps they read.
pub struct Programs {
    pub empty: OwnedFd,
    pub lpm: OwnedFd,
    /// Kept open: the LPM program holds them too, but the memory table
    /// reads them from this process's fds.
    _maps: [OwnedFd; 2],
}

/// Creates both LPM tries with every GeoIP prefix of `policy` (value: the
/// country index, as the agent stores it) and loads both programs.
pub fn prepare(policy: &CompiledPolicy) -> Result<Programs> {
    let (n4, n6) = policy.geo_len();
    let v4 =
        bpf::create_lpm("bench_lpm4", 4, n4.max(1) as u32).context("creating the IPv4 LPM trie")?;
    let v6 = bpf::create_lpm("bench_lpm6", 16, n6.max(1) as u32)
        .context("creating the IPv6 LPM trie")?;
    for (net, cc) in policy.geo.v4.prefixes() {
        bpf::lpm_insert(
            &v4,
            net.prefix().into(),
            &net.network().octets(),
            country_index(cc).into(),
        )
        .with_context(|| format!("inserting {net}"))?;
    }
    for (net, cc) in policy.geo.v6.prefixes() {
        bpf::lpm_insert(
            &v6,
            net.prefix().into(),
            &net.network().octets(),
            country_index(cc).into(),
        )
        .with_context(|| format!("inserting {net}"))?;
    }
    let empty = bpf::load_program(
        bpf::BPF_PROG_TYPE_CGROUP_SKB,
        bpf::BPF_CGROUP_INET_EGRESS,
        "bench_empty",
        &bpf::empty_program(),
    )
    .context("loading the empty program")?;
    let lpm = bpf::load_program(
        bpf::BPF_PROG_TYPE_CGROUP_SKB,
        bpf::BPF_CGROUP_INET_EGRESS,
        "bench_lpm",
        &bpf::lpm_program(&v4, &v6),
    )
    .context("loading the LPM trie program")?;
    Ok(Programs {
        empty,
        lpm,
        _maps: [v4, v6],
    })
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

/// Mean kernel-measured ns per run of each program over `dests`, and how
/// many of them `skb_egress` dropped.
fn one_pass(progs: [RawFd; 3], dests: &[IpAddr]) -> Result<([f64; 3], usize)> {
    let mut sum = [0u64; 3];
    let mut dropped = 0;
    for (i, d) in dests.iter().enumerate() {
        let data = frame(*d);
        for k in 0..3 {
            // Rotate which program goes first.
            let p = (i + k) % 3;
            let (ret, ns) = bpf::test_run(progs[p], &data)
                .with_context(|| format!("BPF_PROG_TEST_RUN on {d}"))?;
            sum[p] += u64::from(ns);
            if p == 1 && ret == 0 {
                dropped += 1;
            }
        }
    }
    let n = dests.len().max(1) as f64;
    Ok((sum.map(|s| s as f64 / n), dropped))
}

/// The decision rows: `runs` passes of `n` fresh destinations per family.
pub fn measure(
    skb_egress: RawFd,
    progs: &Programs,
    policy: &CompiledPolicy,
    runs: usize,
    n: usize,
    notes: &mut Vec<String>,
) -> Result<Vec<Row>> {
    const S: &str = "decision (BPF_PROG_TEST_RUN)";
    let mut rows = Vec::new();
    for fam in ["IPv4", "IPv6"] {
        rows.push(Row::new(
            S,
            format!("empty program, {fam} (baseline)"),
            "ns/run",
        ));
        rows.push(
            Row::new(S, format!("enforcer skb_egress, {fam}, minus empty"), "ns")
                .vs("LPM trie", format!("LPM trie, {fam}, minus empty")),
        );
        rows.push(Row::new(S, format!("LPM trie, {fam}, minus empty"), "ns"));
    }
    let mut rng = Rng::new(0x5eed_0001);
    let fds = [progs.empty.as_raw_fd(), skb_egress, progs.lpm.as_raw_fd()];
    for run in 0..runs {
        let (d4, d6) = destinations(policy, &mut rng, n);
        for (f, dests) in [d4, d6].iter().enumerate() {
            let ([empty, enf, lpm], dropped) = one_pass(fds, dests)?;
            rows[3 * f].samples.push(empty);
            rows[3 * f + 1].samples.push(enf - empty);
            rows[3 * f + 2].samples.push(lpm - empty);
            if run == 0 {
                notes.push(format!(
                    "decision, {}: {n} random destinations per run, {dropped} of them refused by skb_egress (enforce mode, EEA approved)",
                    if f == 0 { "IPv4" } else { "IPv6" }
                ));
            }
        }
        println!("  decision: run {}/{runs} done", run + 1);
    }
    Ok(rows)
}
