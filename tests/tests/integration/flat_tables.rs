//! The GeoIP flat tables in the kernel against the `geoip` crate's lookup
//! (issue 5: the fast decision keeps the exact same verdicts).
//!
//! The datapath is loaded through the agent library into a private pin
//! directory, and each real database (GeoLite2-Country, then
//! geo-whois-asn-country into the other slot, then GeoLite2 again) is
//! installed with every country not approved, `unknown = deny` and events
//! unlimited, so the kernel emits one event per packet carrying the country
//! index it found. For each family, 50k addresses drawn uniformly, 50k from
//! inside random prefixes and both ends ±1 of 2000 random prefixes go
//! through `skb_egress` under BPF_PROG_TEST_RUN; the event's country is
//! compared with `GeoTable::lookup` of the same address. Addresses in the
//! built-in never-geolocated ranges are skipped (the exception trie decides
//! them before any GeoIP lookup).
//!
//! The third install writes into a slot that already holds GeoLite2: it
//! must change no block of the flat tables (a refresh costs what changed).
//! The fourth writes GeoLite2 over geo-whois: the second level is diffed
//! against what the agent kept from its own write of that slot, not read
//! from the map, and the kernel must then answer as for a fresh slot. The
//! fifth changes the country of every 100th GeoLite2 prefix, into the slot
//! holding GeoLite2: a small diff, read back key by key.
//! Finally the kernel's memory accounting of every map (both slots full)
//! is printed.

use std::{
    fs,
    mem::offset_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::Instant,
};

use aya::{
    maps::{MapData, RingBuf},
    programs::{CgroupSkb, TestRun, TestRunOptions},
};
use enforcer::{
    config::Config,
    datapath::{Datapath, map_memory, open_pinned},
    policy::{BUILTIN_RANGES, CompiledPolicy, country_index},
};
use enforcer_common::{EVENTS, Event, Mode, NOT_APPROVED, UNKNOWN_COUNTRY};
use enforcer_tests::{
    privileged,
    sandbox::{PREFIX, sweep_stale},
    scenario::real_geoip,
    skip_unless,
    testrun::{PinDir, Rng, perturbed, test_run_config, udp_frame as frame},
};
use geoip::GeoTable;
use ipnetwork::IpNetwork;

const UNIFORM: usize = 50_000;
const INSIDE: usize = 50_000;
/// Prefixes whose first and last address, and the ones just outside, are
/// tested.
const BOUNDARY_PREFIXES: usize = 2_000;
/// test_runs between two reads of the ring buffer: fewer than the 1 MiB
/// ring holds (88 bytes per record).
const BATCH: usize = 8_000;

fn builtin() -> Vec<IpNetwork> {
    BUILTIN_RANGES
        .iter()
        .map(|(net, _)| net.parse().expect("built-in range"))
        .collect()
}

/// The test addresses of one family.
fn addresses(rng: &mut Rng, geo: &GeoTable, v6: bool) -> Vec<IpAddr> {
    let bits: u32 = if v6 { 128 } else { 32 };
    let make = |v: u128| -> IpAddr {
        if v6 {
            IpAddr::V6(Ipv6Addr::from(v))
        } else {
            IpAddr::V4(Ipv4Addr::from(v as u32))
        }
    };
    let max = if v6 { u128::MAX } else { u128::from(u32::MAX) };
    let prefixes: Vec<(u128, u32)> = if v6 {
        geo.v6
            .prefixes()
            .map(|(n, _)| (u128::from(n.network()), u32::from(n.prefix())))
            .collect()
    } else {
        geo.v4
            .prefixes()
            .map(|(n, _)| (u128::from(u32::from(n.network())), u32::from(n.prefix())))
            .collect()
    };
    let end = |(s, p): (u128, u32)| s | (u128::MAX.checked_shr(128 - (bits - p)).unwrap_or(0));
    let mut out = Vec::with_capacity(UNIFORM + INSIDE + 4 * BOUNDARY_PREFIXES);
    for _ in 0..UNIFORM {
        out.push(make(rng.u128() & max));
    }
    for _ in 0..INSIDE {
        let (s, p) = prefixes[(rng.next_u64() % prefixes.len() as u64) as usize];
        let host = (rng.u128() & max).checked_shr(p + 128 - bits).unwrap_or(0);
        out.push(make(s | host));
    }
    for _ in 0..BOUNDARY_PREFIXES {
        let (s, p) = prefixes[(rng.next_u64() % prefixes.len() as u64) as usize];
        let e = end((s, p));
        out.push(make(s));
        out.push(make(e));
        if let Some(before) = s.checked_sub(1) {
            out.push(make(before));
        }
        if e < max {
            out.push(make(e + 1));
        }
    }
    // IPv4-mapped addresses are decided as IPv4 (check.rs covers them); the
    // built-in ranges are decided by the exception trie.
    let builtin = builtin();
    out.retain(|ip| {
        let mapped = matches!(ip, IpAddr::V6(a) if a.to_ipv4_mapped().is_some());
        !mapped && !builtin.iter().any(|n| n.contains(*ip))
    });
    out
}

fn skb_egress(dp: &Datapath) -> &CgroupSkb {
    dp.program("skb_egress")
        .expect("skb_egress is in the datapath")
        .try_into()
        .unwrap_or_else(|e| panic!("skb_egress is not cgroup_skb: {e}"))
}

/// The country index the kernel found for each address, from the events.
fn kernel_countries(prog: &CgroupSkb, ring: &mut RingBuf<MapData>, addrs: &[IpAddr]) -> Vec<u16> {
    let mut out = Vec::with_capacity(addrs.len());
    for batch in addrs.chunks(BATCH) {
        for ip in batch {
            prog.test_run(TestRunOptions {
                data_in: Some(&frame(*ip)),
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("test_run to {ip}: {e}"));
        }
        let mut got = 0;
        while let Some(item) = ring.next() {
            let bytes: &[u8] = &item;
            assert!(bytes.len() >= size_of::<Event>(), "short event record");
            let daddr = &bytes[offset_of!(Event, daddr)..offset_of!(Event, daddr) + 16];
            let c = offset_of!(Event, country);
            let country = u16::from_ne_bytes([bytes[c], bytes[c + 1]]);
            let ip = batch
                .get(got)
                .unwrap_or_else(|| panic!("more events than packets"));
            let want: [u8; 16] = match ip {
                IpAddr::V4(a) => {
                    let mut b = [0u8; 16];
                    b[..4].copy_from_slice(&a.octets());
                    b
                }
                IpAddr::V6(a) => a.octets(),
            };
            assert_eq!(daddr, want, "event {got} of the batch is not for {ip}");
            out.push(country);
            got += 1;
        }
        assert_eq!(
            got,
            batch.len(),
            "every packet is refused and must be reported (rate limit or ring full?)"
        );
    }
    out
}

#[test]
fn flat_tables_agree_with_the_geoip_crate_on_real_databases() {
    skip_unless!(privileged(), "needs root to load BPF programs");
    let geolite = real_geoip("GeoLite2-Country.mmdb");
    let whois = real_geoip("geo-whois-asn-country.mmdb");
    skip_unless!(
        geolite.is_some() && whois.is_some(),
        "EE_GEOIP_DIR lacks GeoLite2-Country.mmdb or geo-whois-asn-country.mmdb (run `cargo xtask geoip fetch`)"
    );
    let (geolite, whois) = (geolite.expect("checked"), whois.expect("checked"));
    sweep_stale();
    let id = format!("{PREFIX}{}x0-flat", std::process::id());
    let pins = PinDir(PathBuf::from(enforcer::paths::BPFFS).join(&id));
    let dir = tempfile::Builder::new()
        .prefix(&format!("{id}-"))
        .tempdir()
        .expect("scratch directory");
    let seed = std::env::var("EE_FLAT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("seed {seed} (EE_FLAT_SEED={seed} repeats this run)");
    let mut rng = Rng(seed);

    let mut dp: Option<Datapath> = None;
    let mut mismatches: Vec<String> = Vec::new();
    let mut compared = 0usize;
    let phases = [
        ("GeoLite2", &geolite),
        ("geo-whois", &whois),
        ("GeoLite2 again", &geolite),
        ("GeoLite2 over geo-whois", &geolite),
        ("GeoLite2, 1% changed", &geolite),
    ];
    for (phase, (name, source)) in phases.into_iter().enumerate() {
        let path = dir.path().join(format!("{phase}.toml"));
        fs::write(&path, test_run_config(&pins.0, &id, source)).expect("write config");
        let config = Config::load(&path).unwrap_or_else(|e| panic!("config: {e}"));
        let dp = dp.get_or_insert_with(|| {
            let mut dp = Datapath::load(&config.pin_dir).unwrap_or_else(|e| panic!("load: {e}"));
            dp.set_event_limits(1_000_000, 1_000_000)
                .expect("event limits");
            dp
        });
        let mut policy =
            CompiledPolicy::compile(&config).unwrap_or_else(|e| panic!("{name}: policy: {e}"));
        // Nothing approved: every packet is refused and reported, with the
        // country the kernel found.
        policy.approval.iter_mut().for_each(|v| *v = NOT_APPROVED);
        if phase == 4 {
            policy.geo = perturbed(&policy.geo);
        }
        let report = dp
            .install(&policy, Mode::Enforce)
            .unwrap_or_else(|e| panic!("{name}: install: {e}"));
        println!(
            "{name}: slot {} {} IPv4 + {} IPv6 prefixes; {} /16s split ({} IPv4 entries), \
             {} IPv6 entries; build {:.3}s write {:.3}s verify {:.3}s; written: {} IPv4 blocks, \
             {} IPv6 blocks",
            report.slot,
            report.geo_v4,
            report.geo_v6,
            report.geo.v4_split16,
            report.geo.v4_entries,
            report.geo.v6_entries,
            report.geo_build_seconds,
            report.geo.write_seconds,
            report.geo_verify_seconds,
            report.geo.v4_blocks,
            report.geo.v6_blocks,
        );
        if phase == 2 {
            assert_eq!(
                (report.geo.v4_blocks, report.geo.v6_blocks),
                (0, 0),
                "rewriting the table a slot already holds must change nothing"
            );
            continue;
        }
        let mut ring: RingBuf<MapData> = RingBuf::try_from(
            open_pinned(&config.pin_dir, EVENTS).unwrap_or_else(|e| panic!("events: {e}")),
        )
        .unwrap_or_else(|e| panic!("events: {e}"));
        while ring.next().is_some() {}
        let prog = skb_egress(dp);
        for v6 in [false, true] {
            let addrs = addresses(&mut rng, &policy.geo, v6);
            let started = Instant::now();
            let got = kernel_countries(prog, &mut ring, &addrs);
            let seconds = started.elapsed().as_secs_f64();
            let mut located = 0;
            for (ip, kernel) in addrs.iter().zip(&got) {
                let want = policy
                    .geo
                    .lookup(*ip)
                    .map_or(UNKNOWN_COUNTRY, |(_, c)| country_index(c));
                located += usize::from(want != UNKNOWN_COUNTRY);
                if *kernel != want {
                    mismatches.push(format!(
                        "{name} {ip}: kernel {kernel}, geoip {want} ({:?})",
                        policy.geo.lookup(*ip)
                    ));
                }
            }
            compared += addrs.len();
            println!(
                "{name} {}: {} addresses ({located} located) compared in {seconds:.1}s",
                if v6 { "IPv6" } else { "IPv4" },
                addrs.len()
            );
        }
    }

    let memory = map_memory(&pins.0).unwrap_or_else(|e| panic!("map memory: {e}"));
    let total: u64 = memory.values().sum();
    for (map, bytes) in &memory {
        println!("memory {map:<12} {:>10.2} MiB", *bytes as f64 / 1048576.0);
    }
    println!(
        "memory of all maps (both slots): {:.2} MiB",
        total as f64 / 1048576.0
    );
    assert!(
        mismatches.is_empty(),
        "{} of {compared} addresses disagree (seed {seed}); first ones:\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(20)].join("\n")
    );
    println!("{compared} addresses, no disagreement");
}
