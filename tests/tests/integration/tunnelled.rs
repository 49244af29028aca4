//! IPv6 destinations a database locates through its IPv4 tree (issue 15,
//! item 9): 6to4 (`2002::/16`), Teredo (`2001::/32`) and IPv4-compatible
//! (`::/96`) addresses are decided and counted as the database locates
//! them.
//!
//! What each real database does was measured, not assumed: GeoLite2-Country
//! points all three ranges at its IPv4 tree; geo-whois-asn-country answers
//! `::a.b.c.d` through it but has no alias for 2001::/32 or 2002::/16. The
//! `geoip` crate measures this from each file's search tree
//! (`GeoTable::aliases`), and the test first holds the crate to the
//! database itself (maxminddb lookups of the same addresses), then the
//! kernel to the crate: for each database, addresses of the three forms
//! carrying IPv4 addresses located in an approved (EEA) and in a
//! non-approved country, plus random ones, go through `skb_egress` under
//! BPF_PROG_TEST_RUN; the verdict must be what the crate's lookup's country
//! gives under the policy (pass or drop), and exactly one packet counter
//! must move: IPv6, that country, that outcome.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use aya::{
    maps::{MapData, PerCpuArray},
    programs::{CgroupSkb, TestRun, TestRunOptions},
};
use enforcer::{
    config::Config,
    datapath::{Datapath, open_pinned},
    policy::{BUILTIN_RANGES, CompiledPolicy, country_index},
};
use enforcer_common::{
    APPROVED, COUNTRY_SLOTS, CounterBlock, Family, Hook, Mode, Outcome, PKT_COUNTS,
    UNKNOWN_COUNTRY, counter_index,
};
use enforcer_tests::{
    privileged,
    sandbox::{PREFIX, sweep_stale},
    scenario::real_geoip,
    skip_unless,
    testrun::{PinDir, Rng, test_run_config, udp_frame as frame},
};
use geoip::{Alias, GeoTable};
use ipnetwork::IpNetwork;

/// Random IPv4 addresses per form and database, beside the chosen ones.
const RANDOM: usize = 300;

/// An IPv4 address in the form `alias` gives it.
fn wrap(alias: Alias, v4: Ipv4Addr, rng: &mut Rng) -> Ipv6Addr {
    let (start, _) = alias.prefix();
    let v4 = u128::from(u32::from(v4));
    Ipv6Addr::from(match alias {
        Alias::V4Compatible => v4,
        // The rest of a Teredo address (flags, port, client) and of a 6to4
        // one (subnet, interface) is random: the database ignores it.
        Alias::Teredo => start | v4 << 64 | u128::from(rng.next_u64()),
        Alias::SixToFour => start | v4 << 80 | (rng.u128() & ((1 << 80) - 1)),
    })
}

/// Addresses of `geo`'s IPv4 table located in `country`, a few.
fn located_in(geo: &GeoTable, country: &str, n: usize) -> Vec<Ipv4Addr> {
    geo.v4
        .prefixes()
        .filter(|(_, c)| c.as_str() == country)
        .step_by(97)
        .take(n)
        .map(|(net, _)| net.nth(1).unwrap_or(net.network()))
        .collect()
}

/// The `skb_egress` packet counters of IPv6, summed over CPUs.
struct Counters(PerCpuArray<MapData, CounterBlock>, Vec<u64>);

impl Counters {
    fn open(pin_dir: &Path) -> Counters {
        let map = PerCpuArray::try_from(
            open_pinned(pin_dir, PKT_COUNTS).unwrap_or_else(|e| panic!("{PKT_COUNTS}: {e}")),
        )
        .unwrap_or_else(|e| panic!("{PKT_COUNTS}: {e}"));
        let mut c = Counters(map, Vec::new());
        c.1 = c.read();
        c
    }

    fn read(&self) -> Vec<u64> {
        let per_cpu = self
            .0
            .get(&counter_index(Hook::SkbEgress, Family::Ipv6), 0)
            .unwrap_or_else(|e| panic!("read {PKT_COUNTS}: {e}"));
        let mut sum = vec![0u64; COUNTRY_SLOTS * Outcome::COUNT];
        for block in per_cpu.iter() {
            for (s, v) in sum.iter_mut().zip(block.counts.as_flattened()) {
                *s = s.wrapping_add(*v);
            }
        }
        sum
    }

    /// The (country, outcome) cells that moved since the last call.
    fn moved(&mut self) -> Vec<(u16, Outcome, u64)> {
        let now = self.read();
        let moved = self
            .1
            .iter()
            .zip(&now)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| {
                (
                    (i / Outcome::COUNT) as u16,
                    Outcome::ALL[i % Outcome::COUNT],
                    b.wrapping_sub(*a),
                )
            })
            .collect();
        self.1 = now;
        moved
    }
}

/// What the database file itself answers for `ip` (maxminddb's lookup),
/// as a country code, whatever the schema.
fn database_country(reader: &maxminddb::Reader<Vec<u8>>, ip: IpAddr) -> Option<String> {
    let hit = reader.lookup(ip).expect("lookup");
    let maxmind: Option<String> = hit
        .decode_path(&maxminddb::path!["country", "iso_code"])
        .ok()
        .flatten();
    let flat: Option<String> = hit
        .decode_path(&maxminddb::path!["country_code"])
        .ok()
        .flatten();
    maxmind.or(flat)
}

#[test]
fn tunnelled_ipv6_is_decided_as_the_database_locates_it() {
    skip_unless!(privileged(), "needs root to load BPF programs");
    let geolite = real_geoip("GeoLite2-Country.mmdb");
    let whois = real_geoip("geo-whois-asn-country.mmdb");
    skip_unless!(
        geolite.is_some() && whois.is_some(),
        "EE_GEOIP_DIR lacks GeoLite2-Country.mmdb or geo-whois-asn-country.mmdb (run `cargo xtask geoip fetch`)"
    );
    let (geolite, whois) = (geolite.expect("checked"), whois.expect("checked"));
    sweep_stale();
    let id = format!("{PREFIX}{}x0-tun", std::process::id());
    let pins = PinDir(PathBuf::from(enforcer::paths::BPFFS).join(&id));
    let dir = tempfile::Builder::new()
        .prefix(&format!("{id}-"))
        .tempdir()
        .expect("scratch directory");
    let mut rng = Rng(15);
    let builtin: Vec<IpNetwork> = BUILTIN_RANGES
        .iter()
        .map(|(n, _)| n.parse().expect("built-in range"))
        .collect();

    // What the test measured on each database: which forms go through IPv4.
    let expect_aliases = [
        ("GeoLite2", &geolite, [true, true, true]),
        ("geo-whois", &whois, [true, false, false]),
    ];
    let mut dp: Option<Datapath> = None;
    let mut failures: Vec<String> = Vec::new();
    for (name, source, through_v4) in expect_aliases {
        let path = dir.path().join(format!("{name}.toml"));
        fs::write(&path, test_run_config(&pins.0, &id, source)).expect("write config");
        let config = Config::load(&path).unwrap_or_else(|e| panic!("config: {e}"));
        let dp = dp.get_or_insert_with(|| {
            Datapath::load(&config.pin_dir).unwrap_or_else(|e| panic!("load: {e}"))
        });
        let policy =
            CompiledPolicy::compile(&config).unwrap_or_else(|e| panic!("{name}: policy: {e}"));
        for (alias, want) in Alias::ALL.into_iter().zip(through_v4) {
            assert_eq!(
                policy.geo.aliases.contains(alias),
                want,
                "{name}: {} through IPv4",
                alias.name()
            );
        }
        dp.install(&policy, Mode::Enforce)
            .unwrap_or_else(|e| panic!("{name}: install: {e}"));
        let reader = maxminddb::Reader::from_source(fs::read(source).expect("read database"))
            .expect("open database");
        let prog: &CgroupSkb = dp
            .program("skb_egress")
            .expect("skb_egress")
            .try_into()
            .expect("cgroup_skb");
        let mut counters = Counters::open(&config.pin_dir);

        let mut v4s = located_in(&policy.geo, "DE", 20);
        v4s.extend(located_in(&policy.geo, "FR", 10));
        v4s.extend(located_in(&policy.geo, "US", 20));
        v4s.extend(located_in(&policy.geo, "CN", 10));
        v4s.extend((0..RANDOM).map(|_| Ipv4Addr::from(rng.next_u64() as u32)));
        let (mut seen, mut approved, mut refused, mut via_v4) = (0, 0, 0, 0);
        for v4 in v4s {
            for alias in Alias::ALL {
                let ip = IpAddr::V6(wrap(alias, v4, &mut rng));
                if builtin.iter().any(|n| n.contains(ip)) {
                    continue;
                }
                seen += 1;
                // The crate against the database file.
                let crate_says = policy.geo.lookup(ip).map(|(_, c)| c);
                let db_says = database_country(&reader, ip);
                if crate_says.map(|c| c.as_str().to_owned()) != db_says {
                    failures.push(format!(
                        "{name} {ip}: geoip crate {crate_says:?}, the database {db_says:?}"
                    ));
                }
                if policy.geo.aliases.contains(alias) && crate_says.is_some() {
                    via_v4 += 1;
                }
                // The kernel against the crate.
                let want = crate_says.map_or(UNKNOWN_COUNTRY, country_index);
                let ok = policy.approval[usize::from(want)] == APPROVED;
                let outcome = if ok {
                    Outcome::Allowed
                } else {
                    Outcome::Denied
                };
                let ret = prog
                    .test_run(TestRunOptions {
                        data_in: Some(&frame(ip)),
                        ..TestRunOptions::default()
                    })
                    .unwrap_or_else(|e| panic!("test_run to {ip}: {e}"))
                    .return_value;
                let moved = counters.moved();
                if ret != u32::from(ok) || moved != [(want, outcome, 1)] {
                    failures.push(format!(
                        "{name} {ip} ({} of {v4}): geoip {crate_says:?} -> {outcome:?}; \
                         kernel returned {ret}, counters moved {moved:?}",
                        alias.name()
                    ));
                }
                if ok {
                    approved += 1;
                } else {
                    refused += 1;
                }
            }
        }
        println!(
            "{name}: {seen} tunnelled addresses ({via_v4} located through IPv4): \
             {approved} passed, {refused} dropped"
        );
        assert!(
            approved > 20 && refused > 20,
            "{name}: the test needs both verdicts"
        );
        assert!(via_v4 > 50, "{name}: few addresses went through IPv4");
    }
    assert!(
        failures.is_empty(),
        "{} disagreements; first ones:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}
