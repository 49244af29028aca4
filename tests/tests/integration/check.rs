//! `enforcer check` (the `datapath::explain` library) against the kernel.
//!
//! The datapath is loaded through the agent library into a private pin
//! directory, a policy compiled from a config over a real GeoIP database is
//! installed (approved = EEA, unknown = deny, deny and allow exceptions and
//! site networks placed over real GeoIP space, nested so every adjacent
//! pair of the decision order disagrees somewhere), and for thousands of
//! random addresses per family `Explainer::explain` is compared with what
//! the kernel does with a packet to that address under
//! `BPF_PROG_TEST_RUN` of `skb_egress`: its return value (drop only when
//! refused in enforce mode) and the one packet counter
//! (family, country, outcome) that moved by exactly one. Three passes: the
//! global mode enforce, observe, and observe with an enforce override on
//! this process's own cgroup (the one the kernel gives test_run's socket).
//! (When this process is in the root cgroup, as on this project's test
//! machine, that walk has one level; deeper walks are compared with the
//! kernel's by overrides.rs, and with explain's below.)
//! Explain's country and GeoIP prefix are also compared with the `geoip`
//! crate's lookup in the same table, and its source and prefix with a
//! plain model of the config's order written here.
//!
//! A two-line overlay database layered over the real one puts GeoIP entries in
//! private space, so built-in > GeoIP disagrees somewhere too. Phase 1
//! uses GeoLite2-Country; phase 2 installs the flat-schema
//! geo-whois-asn-country database (about a million prefixes, which fits the
//! maps) into the other slot, so explain must follow the slot flip.
//!
//! The second test runs the `enforcer check` binary on a pinned datapath
//! with a small database: text and JSON output, `--cgroup` with nested
//! overrides, a bad address, nothing installed.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    maps::{MapData, PerCpuArray},
    programs::{CgroupSkb, TestRun, TestRunOptions},
};
use enforcer::{
    config::Config,
    datapath::{
        Datapath, config_words,
        explain::{CgroupAncestry, Explainer, Explanation, ModeFrom},
        open_pinned,
    },
    policy::{BUILTIN_RANGES, CompiledPolicy, country_index},
};
use enforcer_common::{
    COUNTRY_SLOTS, CounterBlock, Family, Hook, Mode, Outcome, PKT_COUNTS, RuleKind, Source,
    counter_index,
};
use enforcer_tests::{
    agent::enforcer,
    in_ci, privileged,
    sandbox::{PREFIX, addr, remove_cgroup, sweep_stale},
    scenario::{TEST_DB_CSV, real_geoip},
    skip_unless,
    testrun::{PinDir, Rng, udp_frame as frame},
};
use geoip::{CountryCode, GeoTable};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

/// Addresses per family: this many drawn from the database's prefixes,
/// and as many uniformly at random; plus [`MAPPED`] IPv4-mapped IPv6 ones
/// and a few in every configured rule.
const PER_SOURCE: usize = 1000;
const MAPPED: usize = 500;
const PER_RULE: usize = 8;

/// Mismatches printed in the table.
const SHOWN: usize = 20;

const PASS: u32 = 1;
const DROP: u32 = 0;

/// A cgroup made by the test (no process in it, nothing attached), removed
/// on drop.
struct TestCgroup(PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        remove_cgroup(&self.0);
    }
}

fn cc(s: &str) -> CountryCode {
    s.parse().expect("a valid country code")
}

/// The `k`-th sub-prefix of length `len` inside `net` (`k` wraps).
fn sub(net: IpNetwork, len: u8, k: u128) -> IpNetwork {
    match net {
        IpNetwork::V4(n) => {
            let count = 1u128 << (len - n.prefix());
            let step = 1u128 << (32 - len);
            let start = u128::from(u32::from(n.network())) + (k % count) * step;
            IpNetwork::V4(Ipv4Network::new(Ipv4Addr::from(start as u32), len).expect("sub v4"))
        }
        IpNetwork::V6(n) => {
            let count = 1u128
                .checked_shl(u32::from(len - n.prefix()))
                .unwrap_or(u128::MAX);
            let step = 1u128.checked_shl(128 - u32::from(len)).unwrap_or(0);
            let start = u128::from(n.network()) + (k % count) * step;
            IpNetwork::V6(Ipv6Network::new(Ipv6Addr::from(start), len).expect("sub v6"))
        }
    }
}

/// The first prefix of `country` in the table at most `max_len` long.
fn find(table: &GeoTable, v6: bool, country: &str, max_len: u8) -> IpNetwork {
    let c = cc(country);
    let hit = if v6 {
        table
            .v6
            .prefixes()
            .find(|(n, k)| *k == c && n.prefix() <= max_len)
            .map(|(n, _)| IpNetwork::V6(n))
    } else {
        table
            .v4
            .prefixes()
            .find(|(n, k)| *k == c && n.prefix() <= max_len)
            .map(|(n, _)| IpNetwork::V4(n))
    };
    hit.unwrap_or_else(|| panic!("the database has no {country} prefix of /{max_len} or wider"))
}

/// A small database layered over the real one (the first source that
/// locates an address wins): GeoIP entries inside built-in private ranges,
/// where the built-in range must win.
const OVERLAY: &[&str] = &["10.66.0.0/16", "fd66::/16"];

fn overlay_csv() -> String {
    OVERLAY.iter().map(|n| format!("{n},US\n")).collect()
}

/// The exceptions and site networks, placed over real GeoIP space.
struct Rules {
    deny: Vec<IpNetwork>,
    allow: Vec<IpNetwork>,
    sites: Vec<(IpNetwork, &'static str)>,
}

impl Rules {
    fn over(table: &GeoTable) -> Rules {
        let mut r = Rules {
            deny: Vec::new(),
            allow: Vec::new(),
            sites: Vec::new(),
        };
        for v6 in [false, true] {
            // Lengths per family: a "large" block and nested smaller ones.
            let (big, l1, l2, l3) = if v6 {
                (32, 40, 44, 48)
            } else {
                (16, 20, 22, 24)
            };
            let de = find(table, v6, "DE", big);
            let cn = find(table, v6, "CN", big);
            let us = find(table, v6, "US", big);
            // deny > GeoIP (approved country): refused, counted as DE.
            let deny_de = sub(de, l1, 1);
            // allow > GeoIP (not approved), and deny > allow inside it.
            let allow_cn = sub(cn, l1, 1);
            let deny_in_allow = sub(allow_cn, l3, 3);
            // site > GeoIP: US space claimed as FR (approved), with an
            // allow, a deny and a more specific US site inside.
            let site_fr = sub(us, l1, 1);
            let allow_in_site = sub(site_fr, l3, 5);
            let deny_in_site = sub(site_fr, l3, 9);
            let site_us_in_fr = sub(site_fr, l2, 2);
            // site over approved GeoIP space, not approved.
            let site_us_over_de = sub(de, l1, 2);
            // site > built-in: private space claimed by a site.
            let private: IpNetwork = if v6 { "fd77::/32" } else { "10.77.0.0/16" }
                .parse()
                .expect("private net");
            let allow_in_private_site = sub(private, l3, 7);
            r.deny.extend([deny_de, deny_in_allow, deny_in_site]);
            r.allow
                .extend([allow_cn, allow_in_site, allow_in_private_site]);
            r.sites.extend([
                (site_fr, "FR"),
                (site_us_in_fr, "US"),
                (site_us_over_de, "US"),
                (private, "CN"),
            ]);
        }
        r
    }

    fn all(&self) -> impl Iterator<Item = IpNetwork> + '_ {
        self.deny
            .iter()
            .chain(&self.allow)
            .copied()
            .chain(self.sites.iter().map(|(n, _)| *n))
    }
}

/// The config, read through the agent's own parser. The scope names a
/// cgroup that does not exist: nothing is resolved nor attached.
fn config_text(pin_dir: &Path, id: &str, sources: &[&Path], rules: &Rules) -> String {
    let list = |v: &[IpNetwork]| {
        v.iter()
            .map(|n| format!("{:?}", n.to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut sites = String::new();
    for (net, country) in &rules.sites {
        let _ = write!(
            sites,
            "\n[[site]]\ncidr = \"{net}\"\ncountry = \"{country}\"\n"
        );
    }
    format!(
        "mode = \"enforce\"\n\
         approved = [\"EEA\"]\n\
         unknown = \"deny\"\n\
         deny = [{}]\n\
         allow = [{}]\n\
         [geoip]\n\
         sources = [{}]\n\
         [scope]\n\
         cgroups = [\"{id}-never-attached\"]\n\
         [agent]\n\
         pin_dir = {:?}\n\
         {sites}",
        list(&rules.deny),
        list(&rules.allow),
        sources
            .iter()
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect::<Vec<_>>()
            .join(", "),
        pin_dir.display().to_string(),
    )
}

/// The `skb_egress` packet counters of both families, summed over CPUs.
struct Packets {
    map: PerCpuArray<MapData, CounterBlock>,
    last: [Vec<u64>; 2],
}

/// One counter cell: family, country index, outcome.
type Cell = (Family, u16, Outcome);

impl Packets {
    fn open(pin_dir: &Path) -> Packets {
        let map = open_pinned(pin_dir, PKT_COUNTS)
            .and_then(|m| {
                PerCpuArray::try_from(m).map_err(|source| enforcer::datapath::DatapathError::Map {
                    name: PKT_COUNTS,
                    source,
                })
            })
            .unwrap_or_else(|e| panic!("open {PKT_COUNTS}: {e}"));
        let mut p = Packets {
            map,
            last: [Vec::new(), Vec::new()],
        };
        p.last = p.read();
        p
    }

    fn read(&self) -> [Vec<u64>; 2] {
        [Family::Ipv4, Family::Ipv6].map(|family| {
            let per_cpu = self
                .map
                .get(&counter_index(Hook::SkbEgress, family), 0)
                .unwrap_or_else(|e| panic!("read {PKT_COUNTS}: {e}"));
            let mut sum = vec![0u64; COUNTRY_SLOTS * Outcome::COUNT];
            for block in per_cpu.iter() {
                for (s, v) in sum.iter_mut().zip(block.counts.as_flattened()) {
                    *s = s.wrapping_add(*v);
                }
            }
            sum
        })
    }

    /// Every cell that moved since the last call, and by how much.
    fn moved(&mut self) -> Vec<(Cell, u64)> {
        let now = self.read();
        let mut out = Vec::new();
        for (f, family) in Family::ALL.iter().enumerate() {
            for (i, (a, b)) in self.last[f].iter().zip(&now[f]).enumerate() {
                if a != b {
                    let cell = (
                        *family,
                        (i / Outcome::COUNT) as u16,
                        Outcome::ALL[i % Outcome::COUNT],
                    );
                    out.push((cell, b.wrapping_sub(*a)));
                }
            }
        }
        self.last = now;
        out
    }
}

fn skb_egress(dp: &Datapath) -> &CgroupSkb {
    dp.program("skb_egress")
        .expect("skb_egress is in the datapath")
        .try_into()
        .unwrap_or_else(|e| panic!("skb_egress is not cgroup_skb: {e}"))
}

/// What the kernel did with one packet.
struct KernelRun {
    ret: u32,
    moved: Vec<(Cell, u64)>,
}

fn kernel(prog: &CgroupSkb, packets: &mut Packets, dest: IpAddr) -> KernelRun {
    let data = frame(dest);
    let ret = prog
        .test_run(TestRunOptions {
            data_in: Some(&data),
            ..TestRunOptions::default()
        })
        .unwrap_or_else(|e| panic!("test_run to {dest}: {e}"))
        .return_value;
    KernelRun {
        ret,
        moved: packets.moved(),
    }
}

/// The most specific of `nets` containing `ip`.
fn most_specific(nets: &[IpNetwork], ip: IpAddr) -> Option<IpNetwork> {
    nets.iter()
        .filter(|n| n.contains(ip))
        .max_by_key(|n| n.prefix())
        .copied()
}

/// The decision order as README states it, modelled on the config:
/// deny, allow, site, built-in, GeoIP, unknown; the most specific prefix
/// within a class. Returns the source and the prefix that decided.
fn model(config: &Config, geo: &GeoTable, ip: IpAddr) -> (Source, Option<IpNetwork>) {
    let builtin: Vec<IpNetwork> = BUILTIN_RANGES
        .iter()
        .map(|(c, _)| c.parse().expect("built-in range"))
        .collect();
    let sites: Vec<IpNetwork> = config.sites.iter().map(|s| s.net).collect();
    for (source, nets) in [
        (Source::DenyException, &config.deny),
        (Source::AllowException, &config.allow),
        (Source::Site, &sites),
        (Source::Builtin, &builtin),
    ] {
        if let Some(n) = most_specific(nets, ip) {
            return (source, Some(n));
        }
    }
    match geo.lookup(ip) {
        Some((n, _)) => (Source::Geoip, Some(n)),
        None => (Source::Unknown, None),
    }
}

/// The configured CIDR a rule reference names.
fn rule_net(config: &Config, kind: RuleKind, index: u16) -> Option<IpNetwork> {
    let i = index as usize;
    match kind {
        RuleKind::Deny => config.deny.get(i).copied(),
        RuleKind::Allow => config.allow.get(i).copied(),
        RuleKind::Site => config.sites.get(i).map(|s| s.net),
        RuleKind::Builtin => BUILTIN_RANGES.get(i).and_then(|(c, _)| c.parse().ok()),
    }
}

fn code(index: u16) -> String {
    enforcer_common::country::code(index)
        .map_or("-".into(), |c| String::from_utf8_lossy(&c).into_owned())
}

fn fam(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "v4",
        Family::Ipv6 => "v6",
    }
}

/// What explain and the kernel disagree on for one address in one pass
/// (empty: nothing).
fn compare(
    config: &Config,
    geo: &GeoTable,
    e: &Explanation,
    k: &KernelRun,
    ip: IpAddr,
) -> Vec<String> {
    let mut problems = Vec::new();
    let want_family = if ip.is_ipv4() || matches!(ip, IpAddr::V6(a) if a.to_ipv4_mapped().is_some())
    {
        Family::Ipv4
    } else {
        Family::Ipv6
    };
    if e.family != want_family {
        problems.push(format!("explain family {:?}", e.family));
    }
    let country = e.country.map_or(0, country_index);
    let cell = (e.family, country, e.outcome);
    if k.moved != [(cell, 1)] {
        problems.push("counter".into());
    }
    let want_ret = if e.outcome == Outcome::Denied {
        DROP
    } else {
        PASS
    };
    if k.ret != want_ret {
        problems.push(format!(
            "ret {} (explain says {})",
            k.ret,
            e.outcome.label()
        ));
    }
    // The country and GeoIP prefix against the geoip crate's lookup, where
    // the kernel consults GeoIP.
    let geo_hit = geo.lookup(e.decided_as);
    if matches!(
        e.source,
        Source::Geoip | Source::Unknown | Source::DenyException
    ) {
        let want_country = geo_hit.map(|(_, c)| c);
        if e.country != want_country {
            problems.push(format!("country vs geoip crate {want_country:?}"));
        }
        if e.geoip_prefix != geo_hit.map(|(n, _)| n) {
            problems.push(format!(
                "geoip prefix vs geoip crate {:?}",
                geo_hit.map(|(n, _)| n)
            ));
        }
    }
    // Source and prefix against the model of the config's order.
    let (source, prefix) = model(config, geo, e.decided_as);
    if e.source != source || e.prefix != prefix {
        problems.push(format!(
            "model says {} {}",
            source.label(),
            prefix.map_or("-".into(), |p| p.to_string())
        ));
    }
    if let Some(r) = &e.rule
        && rule_net(config, r.kind, r.index) != e.prefix
    {
        problems.push(format!("rule {:?}[{}] is not the prefix", r.kind, r.index));
    }
    problems
}

struct Mismatch {
    pass: String,
    ip: IpAddr,
    problems: String,
    kernel: String,
    explain: String,
}

/// Random addresses: from random prefixes of `geo`, uniformly random,
/// IPv4-mapped, and inside every rule.
fn addresses(rng: &mut Rng, geo: &GeoTable, rules: &Rules) -> Vec<IpAddr> {
    let v4: Vec<IpNetwork> = geo.v4.prefixes().map(|(n, _)| IpNetwork::V4(n)).collect();
    let v6: Vec<IpNetwork> = geo.v6.prefixes().map(|(n, _)| IpNetwork::V6(n)).collect();
    let mut out = Vec::new();
    for pool in [&v4, &v6] {
        for _ in 0..PER_SOURCE {
            let net = pool[rng.below(pool.len())];
            out.push(rng.inside(net));
        }
    }
    for _ in 0..PER_SOURCE {
        out.push(IpAddr::V4(Ipv4Addr::from(rng.next_u64() as u32)));
    }
    // Half over all of IPv6 (nearly all unknown or built-in), half over the
    // global unicast 2000::/3 where databases have entries.
    for i in 0..PER_SOURCE {
        let a = rng.u128();
        let a = if i % 2 == 0 {
            a
        } else {
            (a >> 3) | (1u128 << 125)
        };
        out.push(IpAddr::V6(Ipv6Addr::from(a)));
    }
    let v4_sample: Vec<Ipv4Addr> = out
        .iter()
        .filter_map(|a| match a {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        })
        .collect();
    for _ in 0..MAPPED {
        let a = v4_sample[rng.below(v4_sample.len())];
        out.push(IpAddr::V6(a.to_ipv6_mapped()));
    }
    let overlay = OVERLAY.iter().map(|n| n.parse().expect("overlay net"));
    for net in rules.all().chain(overlay) {
        out.push(net.network());
        out.push(net.broadcast());
        for _ in 0..PER_RULE {
            out.push(rng.inside(net));
        }
    }
    // And the built-in ranges, mapped ones included.
    for (cidr, _) in BUILTIN_RANGES {
        let net: IpNetwork = cidr.parse().expect("built-in range");
        let a = rng.inside(net);
        out.push(a);
        if let IpAddr::V4(a) = a {
            out.push(IpAddr::V6(a.to_ipv6_mapped()));
        }
    }
    out
}

/// The cgroup2 path of this process, relative to the mount.
fn own_cgroup() -> PathBuf {
    let text = fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup2 line in /proc/self/cgroup");
    PathBuf::from(rel.trim_start_matches('/'))
}

struct PhaseReport {
    name: String,
    addresses: usize,
    runs: usize,
    install: Duration,
    explain: Duration,
    kernel: Duration,
    by_outcome: BTreeMap<(&'static str, &'static str), usize>,
}

/// Installs `config`'s policy and compares explain with the kernel in the
/// three passes. Returns the mismatches and what it did.
fn phase(
    name: &str,
    dp: &mut Datapath,
    config: &Config,
    rng: &mut Rng,
    rules: &Rules,
    mismatches: &mut Vec<Mismatch>,
) -> PhaseReport {
    let started = Instant::now();
    let policy = CompiledPolicy::compile(config).unwrap_or_else(|e| panic!("{name}: policy: {e}"));
    let (v4, v6) = policy.geo_len();
    println!("{name}: {v4} IPv4 + {v6} IPv6 GeoIP prefixes");
    let installed = dp
        .install(&policy, Mode::Enforce)
        .unwrap_or_else(|e| panic!("{name}: install: {e}"));
    let install = started.elapsed();
    let explainer =
        Explainer::open(&config.pin_dir).unwrap_or_else(|e| panic!("{name}: explainer: {e}"));
    let mut packets = Packets::open(&config.pin_dir);
    let addrs = addresses(rng, &policy.geo, rules);
    let own = CgroupAncestry::of_path(&own_cgroup()).unwrap_or_else(|e| panic!("own cgroup: {e}"));

    let mut report = PhaseReport {
        name: name.to_owned(),
        addresses: addrs.len(),
        runs: 0,
        install,
        explain: Duration::ZERO,
        kernel: Duration::ZERO,
        by_outcome: BTreeMap::new(),
    };
    // (pass, global mode, overrides: deepest = enforce, root = observe)
    let passes = [
        ("enforce", Mode::Enforce, false),
        ("observe", Mode::Observe, false),
        ("observe+override", Mode::Observe, true),
    ];
    for (pass, mode, overrides) in passes {
        dp.set_mode(mode)
            .unwrap_or_else(|e| panic!("{name}: set_mode: {e}"));
        let list: Vec<(u64, Mode)> = if overrides {
            let mut l = vec![(own.id(), Mode::Enforce)];
            if own.ids.len() > 1 {
                l.push((own.ids[0], Mode::Observe));
            }
            l
        } else {
            Vec::new()
        };
        dp.set_overrides(&list)
            .unwrap_or_else(|e| panic!("{name}: set_overrides: {e}"));
        let words = config_words(&config.pin_dir).expect("config words");
        assert_eq!(words.slot, installed.slot, "the installed slot is active");
        for &ip in &addrs {
            let t = Instant::now();
            let e = explainer
                .explain_in(ip, overrides.then_some(&own))
                .unwrap_or_else(|err| panic!("{name} {pass}: explain {ip}: {err}"));
            report.explain += t.elapsed();
            let t = Instant::now();
            let k = kernel(skb_egress(dp), &mut packets, ip);
            report.kernel += t.elapsed();
            report.runs += 1;
            *report
                .by_outcome
                .entry((e.source.label(), e.outcome.label()))
                .or_default() += 1;
            let mut problems = compare(config, &policy.geo, &e, &k, ip);
            if e.slot != installed.slot || e.generation != words.generation {
                problems.push(format!("slot {} generation {}", e.slot, e.generation));
            }
            if overrides
                && !matches!(e.mode_from, ModeFrom::Override { cgroup_id, .. } if cgroup_id == own.id())
            {
                problems.push(format!("mode from {:?}", e.mode_from));
            }
            if !problems.is_empty() {
                let kernel = match k.moved.as_slice() {
                    [((f, c, o), n)] => {
                        format!("ret {} {} {} {} x{n}", k.ret, fam(*f), code(*c), o.label())
                    }
                    m => format!("ret {} {} cells moved", k.ret, m.len()),
                };
                mismatches.push(Mismatch {
                    pass: format!("{name} {pass}"),
                    ip,
                    problems: problems.join("; "),
                    kernel,
                    explain: format!(
                        "{} {} {} {} {}",
                        fam(e.family),
                        e.source.label(),
                        e.prefix.map_or("-".into(), |p| p.to_string()),
                        e.country.map_or("-".into(), |c| c.to_string()),
                        e.outcome.label()
                    ),
                });
            }
        }
    }
    dp.set_overrides(&[])
        .unwrap_or_else(|e| panic!("{name}: clear overrides: {e}"));
    report
}

#[test]
fn explain_agrees_with_the_kernel_on_real_databases() {
    skip_unless!(privileged(), "needs root to load BPF programs");
    let geolite = real_geoip("GeoLite2-Country.mmdb");
    skip_unless!(
        geolite.is_some(),
        "EE_GEOIP_DIR has no GeoLite2-Country.mmdb (run `cargo xtask geoip fetch`)"
    );
    let geolite = geolite.expect("checked");
    let whois = real_geoip("geo-whois-asn-country.mmdb");
    if whois.is_none() {
        let why = "EE_GEOIP_DIR has no geo-whois-asn-country.mmdb: phase 2 is skipped";
        assert!(!in_ci(), "cannot run in CI: {why}");
        eprintln!("skipping: {why}");
    }
    sweep_stale();
    let id = format!("{PREFIX}{}x0-check", std::process::id());
    let pins = PinDir(PathBuf::from(enforcer::paths::BPFFS).join(&id));
    let dir = tempfile::Builder::new()
        .prefix(&format!("{id}-"))
        .tempdir()
        .expect("scratch directory");

    let seed = std::env::var("EE_CHECK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("seed {seed} (EE_CHECK_SEED={seed} repeats this run)");
    let mut rng = Rng(seed);

    // The rules are placed over GeoLite2's space; phase 2 keeps them.
    let geolite_table = geoip::Source::open(&geolite)
        .and_then(|s| s.load())
        .expect("load GeoLite2")
        .table;
    let rules = Rules::over(&GeoTable::layered(&[geolite_table]));
    let overlay = dir.path().join("overlay.csv");
    fs::write(&overlay, overlay_csv()).expect("write the overlay database");
    let load = |source: &Path, file: &str| {
        let path = dir.path().join(file);
        let text = config_text(&pins.0, &id, &[&overlay, source], &rules);
        fs::write(&path, text).expect("write config");
        Config::load(&path).unwrap_or_else(|e| panic!("config: {e}"))
    };
    let config1 = load(&geolite, "geolite.toml");
    println!(
        "rules: deny {:?}\n       allow {:?}\n       sites {:?}",
        config1
            .deny
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        config1
            .allow
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        config1
            .sites
            .iter()
            .map(|s| format!("{} {}", s.net, s.country))
            .collect::<Vec<_>>(),
    );

    let mut dp = Datapath::load(&config1.pin_dir).unwrap_or_else(|e| panic!("load: {e}"));
    // No events: nobody reads the ring buffer here.
    dp.set_event_limits(0, 0).expect("event limits");
    // Whether this kernel runs cgroup_skb programs under test_run at all.
    let probe = skb_egress(&dp).test_run(TestRunOptions {
        data_in: Some(&frame(IpAddr::V4(addr::APPROVED_V4))),
        ..TestRunOptions::default()
    });
    skip_unless!(
        probe.is_ok(),
        "BPF_PROG_TEST_RUN of the cgroup_skb program failed: {:?}",
        probe.err()
    );

    let mut mismatches = Vec::new();
    let mut reports = vec![phase(
        "GeoLite2",
        &mut dp,
        &config1,
        &mut rng,
        &rules,
        &mut mismatches,
    )];
    if let Some(whois) = &whois {
        let config2 = load(whois, "whois.toml");
        reports.push(phase(
            "geo-whois",
            &mut dp,
            &config2,
            &mut rng,
            &rules,
            &mut mismatches,
        ));
    }

    let mut total = 0;
    for r in &reports {
        total += r.runs;
        println!(
            "{}: {} addresses, {} runs; install {:.2}s; explain {:.1} us/address, test_run + counters {:.1} us/run",
            r.name,
            r.addresses,
            r.runs,
            r.install.as_secs_f64(),
            r.explain.as_secs_f64() * 1e6 / r.runs.max(1) as f64,
            r.kernel.as_secs_f64() * 1e6 / r.runs.max(1) as f64,
        );
        let line: Vec<String> = r
            .by_outcome
            .iter()
            .map(|((s, o), n)| format!("{s}/{o}={n}"))
            .collect();
        println!("  source/outcome: {}", line.join(" "));
    }
    let mut table = format!(
        "{:<26} {:<40} | {:<28} | {:<60} | problems\n",
        "pass", "address", "kernel", "explain"
    );
    for m in mismatches.iter().take(SHOWN) {
        let _ = writeln!(
            table,
            "{:<26} {:<40} | {:<28} | {:<60} | {}",
            m.pass, m.ip, m.kernel, m.explain, m.problems
        );
    }
    assert!(
        mismatches.is_empty(),
        "{} of {total} comparisons disagree (first {SHOWN}; seed {seed}):\n{table}",
        mismatches.len(),
    );
    println!("{total} comparisons, no disagreement");
}

/// The small database of the CLI test: the sandbox's test entries plus a
/// German address under a deny exception and a US one under an allow.
fn cli_database() -> String {
    format!("{TEST_DB_CSV}198.51.100.40/32,US\n198.51.100.50/32,DE\n")
}

fn cli_config(pin_dir: &Path, id: &str) -> String {
    format!(
        r#"mode = "enforce"
approved = ["EEA"]
unknown = "deny"
deny = ["198.51.100.50/32"]
allow = ["198.51.100.40/32"]

[geoip]
sources = ["test-geo.csv"]

[scope]
cgroups = ["{id}-never-attached"]

[agent]
pin_dir = {pin:?}

[[site]]
cidr = "10.88.0.0/16"
country = "US"
"#,
        pin = pin_dir.display().to_string(),
    )
}

/// `enforcer check ARGS...`: stdout, panicking with stderr on failure.
fn check_ok(args: &[&str]) -> String {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    let out = enforcer(&all);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "enforcer {} failed ({}):\n{stdout}{}",
        all.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The text blocks, by address: each line's key and value.
fn text_blocks(out: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    out.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let mut lines = block.lines();
            let address = lines.next().expect("an address line").trim().to_owned();
            let fields = lines
                .filter_map(|l| {
                    let (k, v) = l.trim().split_once(' ')?;
                    Some((k.to_owned(), v.trim().to_owned()))
                })
                .collect();
            (address, fields)
        })
        .collect()
}

#[test]
fn enforcer_check_prints_the_kernels_verdicts() {
    skip_unless!(privileged(), "needs root to load BPF programs");
    sweep_stale();
    let id = format!("{PREFIX}{}x1-checkcli", std::process::id());
    let pins = PinDir(PathBuf::from(enforcer::paths::BPFFS).join(&id));
    let dir = tempfile::Builder::new()
        .prefix(&format!("{id}-"))
        .tempdir()
        .expect("scratch directory");
    fs::write(dir.path().join("test-geo.csv"), cli_database()).expect("write the database");
    let config_path = dir.path().join("enforcer.toml");
    fs::write(&config_path, cli_config(&pins.0, &id)).expect("write the config");
    let config = Config::load(&config_path).unwrap_or_else(|e| panic!("config: {e}"));
    let policy = CompiledPolicy::compile(&config).unwrap_or_else(|e| panic!("policy: {e}"));
    let pin_arg = pins.0.display().to_string();

    // Nothing installed yet: a clear error, and nothing created.
    let out = enforcer(&["check", "--pin-dir", &pin_arg, "198.51.100.10"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check without a datapath fails");
    assert!(
        stderr.contains("no datapath is pinned under") && stderr.contains(&pin_arg),
        "{stderr}"
    );
    assert!(!pins.0.exists(), "check creates nothing");

    let mut dp = Datapath::load(&config.pin_dir).unwrap_or_else(|e| panic!("load: {e}"));
    let installed = dp
        .install(&policy, Mode::Enforce)
        .unwrap_or_else(|e| panic!("install: {e}"));

    // A bad address is named by the argument parser.
    let out = enforcer(&["check", "--pin-dir", &pin_arg, "198.51.100.10", "not-an-ip"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("'not-an-ip'"), "{stderr}");

    // (address, verdict, source, prefix, country as printed)
    #[rustfmt::skip]
    let rows: &[(&str, &str, &str, &str, &str)] = &[
        ("198.51.100.10", "allowed", "geoip", "198.51.100.10/32", "DE"),
        ("198.51.100.20", "denied", "geoip", "198.51.100.20/32", "US"),
        ("198.51.100.30", "denied", "unknown", "none", "unknown"),
        ("198.51.100.40", "exempt", "allow_exception (allow[0])", "198.51.100.40/32", "none (not geolocated)"),
        ("198.51.100.50", "denied", "deny_exception (deny[0])", "198.51.100.50/32", "DE"),
        ("10.0.0.1", "exempt", "builtin (private)", "10.0.0.0/8", "none (not geolocated)"),
        ("10.88.1.1", "denied", "site (site[0])", "10.88.0.0/16", "US"),
        ("::ffff:198.51.100.20", "denied", "geoip", "198.51.100.20/32", "US"),
        ("2001:db8:1::10", "allowed", "geoip", "2001:db8:1::10/128", "DE"),
        ("2001:db8:1::20", "denied", "geoip", "2001:db8:1::20/128", "US"),
        ("2001:db8:1::30", "denied", "unknown", "none", "unknown"),
    ];
    let addrs: Vec<&str> = rows.iter().map(|r| r.0).collect();
    let mut args = vec!["--pin-dir", &pin_arg];
    args.extend(&addrs);
    let text = check_ok(&args);
    println!("{text}");
    let blocks = text_blocks(&text);
    assert_eq!(blocks.len(), rows.len(), "one block per address:\n{text}");
    for (ip, verdict, source, prefix, country) in rows {
        let b = blocks
            .get(*ip)
            .unwrap_or_else(|| panic!("no block for {ip}:\n{text}"));
        let field = |k: &str| b.get(k).map(String::as_str).unwrap_or("");
        assert_eq!(field("verdict"), *verdict, "{ip}:\n{text}");
        assert!(field("source").starts_with(source), "{ip} source:\n{text}");
        assert_eq!(field("prefix"), *prefix, "{ip}:\n{text}");
        assert_eq!(field("country"), *country, "{ip}:\n{text}");
        assert_eq!(field("mode"), "enforce (global)", "{ip}:\n{text}");
        assert_eq!(
            field("slot"),
            format!("{}, generation {}", installed.slot, installed.generation),
            "{ip}:\n{text}"
        );
    }
    assert_eq!(
        blocks["::ffff:198.51.100.20"]
            .get("decided")
            .map(String::as_str),
        Some("as 198.51.100.20 (IPv4-mapped)")
    );

    // JSON, through --config this time: one object per line, and each
    // one reads back as an Explanation.
    let config_arg = config_path.display().to_string();
    let mut args = vec!["--config", &config_arg, "-o", "json"];
    args.extend(&addrs);
    let json = check_ok(&args);
    let lines: Vec<&str> = json.lines().collect();
    assert_eq!(lines.len(), rows.len(), "{json}");
    for ((ip, verdict, source, prefix, country), line) in rows.iter().zip(&lines) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(v["address"], *ip, "{line}");
        assert_eq!(v["outcome"], *verdict, "{line}");
        let label = source.split(' ').next().unwrap_or(source);
        assert_eq!(v["source"], label, "{line}");
        let want_prefix = (*prefix != "none").then_some(*prefix);
        assert_eq!(v["prefix"].as_str(), want_prefix, "{line}");
        let want_country = (country.len() == 2).then_some(*country);
        assert_eq!(v["country"].as_str(), want_country, "{line}");
        let e: Explanation = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(e.outcome.label(), *verdict);
    }
    let mapped: serde_json::Value = serde_json::from_str(lines[7]).expect("json");
    assert_eq!(mapped["decided_as"], "198.51.100.20");
    assert_eq!(mapped["family"], "ipv4");

    // Per-cgroup overrides: a (observe) / a/b (enforce) / a/b/c and a/x
    // (none: the deepest ancestor with one decides). Nothing runs in these
    // cgroups and nothing is attached to them.
    let mount = enforcer::paths::cgroup2_mount().expect("cgroup2 mount");
    let top = TestCgroup(mount.join(&id));
    let (a, b, c, x) = (
        top.0.join("a"),
        top.0.join("a/b"),
        top.0.join("a/b/c"),
        top.0.join("a/x"),
    );
    for d in [&c, &x] {
        fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
    }
    let cg_id = |p: &Path| CgroupAncestry::of_path(p).expect("cgroup").id();
    dp.set_overrides(&[(cg_id(&a), Mode::Observe), (cg_id(&b), Mode::Enforce)])
        .expect("set overrides");
    // (cgroup, expected mode, verdict for the US address, override source)
    let cases = [
        (&top.0, "enforce", "denied", None),
        (&a, "observe", "would_deny", Some(&a)),
        (&b, "enforce", "denied", Some(&b)),
        (&c, "enforce", "denied", Some(&b)),
        (&x, "observe", "would_deny", Some(&a)),
    ];
    for (cgroup, mode, verdict, from) in cases {
        let cg = cgroup.display().to_string();
        let out = check_ok(&[
            "--pin-dir",
            &pin_arg,
            "--cgroup",
            &cg,
            "-o",
            "json",
            "198.51.100.20",
            "198.51.100.10",
        ]);
        let v: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(v[0]["mode"], mode, "{cg}: {out}");
        assert_eq!(v[0]["outcome"], verdict, "{cg}: {out}");
        assert_eq!(
            v[1]["outcome"], "allowed",
            "approved whatever the mode: {out}"
        );
        assert_eq!(v[0]["cgroup"]["path"], cg.as_str(), "{out}");
        match from {
            None => assert_eq!(v[0]["mode_from"]["from"], "global", "{cg}: {out}"),
            Some(p) => {
                assert_eq!(v[0]["mode_from"]["from"], "override", "{cg}: {out}");
                assert_eq!(v[0]["mode_from"]["cgroup_id"], cg_id(p), "{cg}: {out}");
                assert_eq!(
                    v[0]["mode_from"]["path"],
                    p.display().to_string(),
                    "{cg}: {out}"
                );
            }
        }
    }
    // Without --cgroup: the global mode, and a pointer to the overrides.
    let out = check_ok(&["--pin-dir", &pin_arg, "198.51.100.20"]);
    assert!(
        out.contains("mode     enforce (global; 2 per-cgroup override(s) exist, see --cgroup)"),
        "{out}"
    );
    // A relative path (to the cgroup2 mount) names the same cgroup.
    let rel = format!("{id}/a");
    let out = check_ok(&["--pin-dir", &pin_arg, "--cgroup", &rel, "198.51.100.20"]);
    assert!(out.contains("verdict  would_deny"), "{out}");
    let out = enforcer(&[
        "check",
        "--pin-dir",
        &pin_arg,
        "--cgroup",
        "eesb-no-such-cgroup",
        "198.51.100.20",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("eesb-no-such-cgroup"),
        "{stderr}"
    );
    drop(dp);
}
