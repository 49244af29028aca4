//! `enforcer geoip diff` against figures recomputed here (issue 19).
//!
//! No root needed. Two diffs over the real databases (`EE_GEOIP_DIR`):
//! GeoLite2-Country against geo-whois-asn-country, and GeoLite2-Country
//! against a CSV copy of its own table with every 100th prefix moved to
//! another country. Each time the binary's JSON is compared with a
//! recomputation written separately from the library's sweep: every range
//! boundary of both tables is collected, and each elementary interval
//! between two consecutive boundaries is looked up in both tables by
//! binary search. Prefix counts are recomputed by binary search of each
//! prefix in the changed intervals; verdicts from the config's approved
//! list written out here.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    path::Path,
    time::Instant,
};

use enforcer_tests::{agent::enforcer, scenario::real_geoip, skip_unless};
use geoip::{Family, GeoTable, Table};
use ipnetwork::IpNetwork;
use serde_json::Value;

/// The approved countries of the test config (and `unknown = "deny"`).
const APPROVED: &[&str] = &["DE", "FR", "NL", "IE", "SE", "GB", "CH"];

type Pair = (Option<String>, Option<String>);

/// What the test expects for one family.
#[derive(Debug, Default, PartialEq, Eq)]
struct Expected {
    changed: u128,
    between: u128,
    located_to_unlocated: u128,
    unlocated_to_located: u128,
    moves: BTreeMap<Pair, u128>,
    allowed_to_refused: BTreeMap<Pair, u128>,
    refused_to_allowed: BTreeMap<Pair, u128>,
    old_prefixes: usize,
    new_prefixes: usize,
    old_involved: usize,
    new_involved: usize,
}

/// `(first, last, country)` of a table's runs, as integers.
fn runs<A: Family>(t: &Table<A>) -> Vec<(u128, u128, String)> {
    let int = |a: A| A::int_to_u128(a.to_int());
    t.ranges()
        .map(|(s, e, c)| (int(s), int(e), c.to_string()))
        .collect()
}

/// The country of `a` in sorted disjoint runs, by binary search.
fn at(runs: &[(u128, u128, String)], a: u128) -> Option<&str> {
    let i = runs.partition_point(|r| r.0 <= a);
    let r = runs.get(i.checked_sub(1)?)?;
    (a <= r.1).then_some(r.2.as_str())
}

/// `(first, last)` of every prefix of a table.
fn prefix_bounds<A: Family>(t: &Table<A>) -> Vec<(u128, u128)> {
    t.prefixes()
        .map(|(n, _)| match A::to_ip_network(n) {
            IpNetwork::V4(n) => (
                u128::from(u32::from(n.network())),
                u128::from(u32::from(n.broadcast())),
            ),
            IpNetwork::V6(n) => {
                let s = u128::from(n.network());
                let host = 128 - u32::from(n.prefix());
                let e = if host == 128 {
                    u128::MAX
                } else {
                    s | ((1u128 << host) - 1)
                };
                (s, e)
            }
        })
        .collect()
}

fn approved(c: Option<&str>) -> bool {
    c.is_some_and(|c| APPROVED.contains(&c))
}

fn expect<A: Family>(old: &Table<A>, new: &Table<A>, max: u128) -> Expected {
    let (ro, rn) = (runs(old), runs(new));
    let mut points: BTreeSet<u128> = BTreeSet::new();
    for r in ro.iter().chain(&rn) {
        points.insert(r.0);
        if r.1 < max {
            points.insert(r.1 + 1);
        }
    }
    points.insert(0);
    let points: Vec<u128> = points.into_iter().collect();
    let mut x = Expected {
        old_prefixes: old.len(),
        new_prefixes: new.len(),
        ..Expected::default()
    };
    // Changed elementary intervals, for the prefix counts.
    let mut changed: Vec<(u128, u128)> = Vec::new();
    for (k, &s) in points.iter().enumerate() {
        let e = points.get(k + 1).map_or(max, |n| n - 1);
        let (f, t) = (at(&ro, s), at(&rn, s));
        if f == t {
            continue;
        }
        let n = (e - s).saturating_add(1);
        x.changed = x.changed.saturating_add(n);
        match (f, t) {
            (Some(_), Some(_)) => x.between += n,
            (Some(_), None) => x.located_to_unlocated = x.located_to_unlocated.saturating_add(n),
            (None, Some(_)) => x.unlocated_to_located = x.unlocated_to_located.saturating_add(n),
            (None, None) => unreachable!(),
        }
        let pair = (f.map(str::to_owned), t.map(str::to_owned));
        *x.moves.entry(pair.clone()).or_default() += n;
        match (approved(f), approved(t)) {
            (true, false) => *x.allowed_to_refused.entry(pair).or_default() += n,
            (false, true) => *x.refused_to_allowed.entry(pair).or_default() += n,
            _ => {}
        }
        changed.push((s, e));
    }
    let involved = |prefixes: Vec<(u128, u128)>| {
        prefixes
            .iter()
            .filter(|&&(s, e)| {
                let i = changed.partition_point(|c| c.1 < s);
                changed.get(i).is_some_and(|c| c.0 <= e)
            })
            .count()
    };
    x.old_involved = involved(prefix_bounds(old));
    x.new_involved = involved(prefix_bounds(new));
    x
}

/// A JSON count: a number (IPv4) or a decimal string (IPv6).
fn count(v: &Value) -> u128 {
    match v {
        Value::String(s) => s.parse().expect("a decimal count"),
        v => u128::from(v.as_u64().expect("a count")),
    }
}

fn code(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

fn move_map(v: &Value) -> BTreeMap<Pair, u128> {
    let list = v.as_array().expect("a list of moves");
    let map: BTreeMap<Pair, u128> = list
        .iter()
        .map(|m| ((code(&m["from"]), code(&m["to"])), count(&m["addresses"])))
        .collect();
    assert_eq!(map.len(), list.len(), "one entry per pair");
    let sizes: Vec<u128> = list.iter().map(|m| count(&m["addresses"])).collect();
    assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "largest first");
    map
}

fn reported(f: &Value) -> Expected {
    let p = &f["policy"];
    Expected {
        changed: count(&f["changed"]),
        between: count(&f["between_countries"]),
        located_to_unlocated: count(&f["located_to_unlocated"]),
        unlocated_to_located: count(&f["unlocated_to_located"]),
        moves: move_map(&f["moves"]),
        allowed_to_refused: move_map(&p["allowed_to_refused_moves"]),
        refused_to_allowed: move_map(&p["refused_to_allowed_moves"]),
        old_prefixes: f["prefixes"]["old"].as_u64().expect("count") as usize,
        new_prefixes: f["prefixes"]["new"].as_u64().expect("count") as usize,
        old_involved: f["prefixes"]["old_involved"].as_u64().expect("count") as usize,
        new_involved: f["prefixes"]["new_involved"].as_u64().expect("count") as usize,
    }
}

fn write_config(dir: &Path, source: &Path) -> std::path::PathBuf {
    let path = dir.join("policy.toml");
    let approved: Vec<String> = APPROVED.iter().map(|c| format!("{c:?}")).collect();
    fs::write(
        &path,
        format!(
            "mode = \"enforce\"\napproved = [{}]\nunknown = \"deny\"\n\n[geoip]\nsources = [{:?}]\n\n[scope]\nhost_wide = true\n",
            approved.join(", "),
            source.display().to_string()
        ),
    )
    .expect("write config");
    path
}

/// Runs the diff with the config and checks every figure of both families.
fn check(old_path: &Path, new_path: &Path, config: &Path, old: &GeoTable, new: &GeoTable) {
    let started = Instant::now();
    let out = enforcer(&[
        "geoip",
        "diff",
        &old_path.display().to_string(),
        &new_path.display().to_string(),
        "--config",
        &config.display().to_string(),
        "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "geoip diff failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("geoip diff ran in {:.2?}", started.elapsed());
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(v["policy"]["refused_label"], "denied");
    assert_eq!(v["policy"]["allowed_label"], "allowed");
    let started = Instant::now();
    let want4 = expect(&old.v4, &new.v4, u128::from(u32::MAX));
    let want6 = expect(&old.v6, &new.v6, u128::MAX);
    println!("recomputed in {:.2?}", started.elapsed());
    let (got4, got6) = (reported(&v["ipv4"]), reported(&v["ipv6"]));
    assert_eq!(got4, want4, "IPv4 figures");
    assert_eq!(got6, want6, "IPv6 figures");
    let total = |m: &BTreeMap<Pair, u128>| m.values().sum::<u128>();
    assert_eq!(
        count(&v["ipv4"]["policy"]["allowed_to_refused"]),
        total(&want4.allowed_to_refused)
    );
    assert_eq!(
        count(&v["ipv6"]["policy"]["refused_to_allowed"]),
        total(&want6.refused_to_allowed)
    );
    // The reload guard's figures (the agent's own streaming sweep) against
    // the same recomputation, and its verdict against the default bounds
    // (geoip.max_flip unset: a /8 of IPv4, a /20 of IPv6).
    let g = &v["reload_guard"]["flip"];
    let flipped4 = total(&want4.allowed_to_refused) + total(&want4.refused_to_allowed);
    let flipped6 = total(&want6.allowed_to_refused) + total(&want6.refused_to_allowed);
    assert_eq!(
        count(&g["ipv4"]["allowed_to_refused"]),
        total(&want4.allowed_to_refused)
    );
    assert_eq!(
        count(&g["ipv4"]["refused_to_allowed"]),
        total(&want4.refused_to_allowed)
    );
    assert_eq!(count(&g["ipv4"]["flipped"]), flipped4);
    assert_eq!(count(&g["ipv6"]["flipped"]), flipped6);
    assert_eq!(count(&g["ipv4"]["bound"]), 1 << 24);
    assert_eq!(count(&g["ipv6"]["bound"]), 1 << 108);
    assert_eq!(
        v["reload_guard"]["would_hold"],
        flipped4 > 1 << 24 || flipped6 > 1 << 108,
        "{g:#}"
    );
    println!(
        "reload guard: IPv4 {flipped4} flipped, IPv6 {flipped6} flipped, would hold: {}",
        v["reload_guard"]["would_hold"]
    );
    println!(
        "IPv4: {} addresses changed ({} pairs), {} allowed -> denied, {} denied -> allowed, {} of {} new prefixes involved",
        want4.changed,
        want4.moves.len(),
        total(&want4.allowed_to_refused),
        total(&want4.refused_to_allowed),
        want4.new_involved,
        want4.new_prefixes
    );
    println!(
        "IPv6: {} addresses changed ({} pairs), {} of {} new prefixes involved",
        want6.changed,
        want6.moves.len(),
        want6.new_involved,
        want6.new_prefixes
    );
}

fn load(path: &Path) -> GeoTable {
    geoip::Source::open(path)
        .and_then(|s| s.load())
        .expect("load database")
        .table
}

#[test]
fn the_two_real_databases() {
    let geolite = real_geoip("GeoLite2-Country.mmdb");
    let whois = real_geoip("geo-whois-asn-country.mmdb");
    skip_unless!(
        geolite.is_some() && whois.is_some(),
        "EE_GEOIP_DIR lacks GeoLite2-Country.mmdb or geo-whois-asn-country.mmdb (run `cargo xtask geoip fetch`)"
    );
    let (geolite, whois) = (geolite.expect("checked"), whois.expect("checked"));
    let dir = tempfile::tempdir().expect("scratch directory");
    let config = write_config(dir.path(), &geolite);
    let (old, new) = (load(&geolite), load(&whois));
    check(&geolite, &whois, &config, &old, &new);
}

#[test]
fn one_percent_of_prefixes_moved() {
    let geolite = real_geoip("GeoLite2-Country.mmdb");
    skip_unless!(
        geolite.is_some(),
        "EE_GEOIP_DIR lacks GeoLite2-Country.mmdb (run `cargo xtask geoip fetch`)"
    );
    let geolite = geolite.expect("checked");
    let dir = tempfile::tempdir().expect("scratch directory");
    let config = write_config(dir.path(), &geolite);
    let old = load(&geolite);
    // Every 100th prefix of each family goes to another country: DE, or
    // US for prefixes already in DE (so the move crosses the policy both
    // ways). The moved prefixes are disjoint, so the changed address space
    // is exactly their size.
    let mut csv = String::from("network,country\n");
    let mut moved = [0u128; 2];
    let mut write = |k: usize, fam: usize, net: String, size: u128, c: &str| {
        let c = if k.is_multiple_of(100) {
            moved[fam] += size;
            if c == "DE" { "US" } else { "DE" }
        } else {
            c
        };
        writeln!(csv, "{net},{c}").expect("write to a String");
    };
    for (k, (n, c)) in old.v4.prefixes().enumerate() {
        write(k, 0, n.to_string(), 1u128 << (32 - n.prefix()), c.as_str());
    }
    for (k, (n, c)) in old.v6.prefixes().enumerate() {
        let size = 1u128
            .checked_shl(128 - u32::from(n.prefix()))
            .unwrap_or(u128::MAX);
        write(k, 1, n.to_string(), size, c.as_str());
    }
    let copy = dir.path().join("moved.csv");
    fs::write(&copy, csv).expect("write the moved copy");
    let new = load(&copy);
    check(&geolite, &copy, &config, &old, &new);
    let change4 = expect(&old.v4, &new.v4, u128::from(u32::MAX));
    let change6 = expect(&old.v6, &new.v6, u128::MAX);
    assert_eq!(
        change4.changed, moved[0],
        "IPv4: exactly the moved prefixes"
    );
    assert_eq!(
        change6.changed, moved[1],
        "IPv6: exactly the moved prefixes"
    );
    assert_eq!(
        change4.located_to_unlocated + change4.unlocated_to_located,
        0
    );
}

/// AWS's published `ip-ranges.json` against a copy in which eu-central-1
/// (Frankfurt) moved to us-east-1: a cloud range file diffs like any
/// source (detected by its shape), every figure recomputed, and the move
/// is Frankfurt's own address space, DE -> US, allowed -> denied.
#[test]
fn a_cloud_range_file_whose_region_moves() {
    let aws = real_geoip("aws-ip-ranges.json");
    skip_unless!(
        aws.is_some(),
        "EE_GEOIP_DIR lacks aws-ip-ranges.json (run `cargo xtask geoip fetch`)"
    );
    let aws = aws.expect("checked");
    let dir = tempfile::tempdir().expect("scratch directory");
    let mut json: Value =
        serde_json::from_slice(&fs::read(&aws).expect("read the AWS file")).expect("JSON");
    let mut frankfurt = 0usize;
    for list in ["prefixes", "ipv6_prefixes"] {
        for e in json[list].as_array_mut().expect("a prefix list") {
            if e["network_border_group"] == "eu-central-1" {
                e["network_border_group"] = Value::from("us-east-1");
                e["region"] = Value::from("us-east-1");
                frankfurt += 1;
            }
        }
    }
    assert!(frankfurt > 100, "{frankfurt} eu-central-1 entries");
    let moved = dir.path().join("ip-ranges-moved.json");
    fs::write(&moved, serde_json::to_vec(&json).expect("encode")).expect("write");
    let config = write_config(dir.path(), &aws);
    let (old, new) = (load(&aws), load(&moved));
    check(&aws, &moved, &config, &old, &new);
    let want = expect(&old.v4, &new.v4, u128::from(u32::MAX));
    let de_us = (Some("DE".to_owned()), Some("US".to_owned()));
    assert!(
        want.moves.get(&de_us).copied().unwrap_or(0) > 0,
        "{:?}",
        want.moves
    );
    assert_eq!(
        want.moves.keys().collect::<Vec<_>>(),
        [&de_us],
        "only Frankfurt moved"
    );
}
