//! MaxMind DB loading against databases the tests write themselves, checked
//! against the `maxminddb` crate's own lookups.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use maxminddb::{Reader, WithinOptions, geoip2, path};

use crate::{
    CountryCode, Format, GeoipError, Loaded, Schema, Source,
    writer::{MmdbWriter, Value},
};

const PATH: &str = "/t/test.mmdb";

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}
fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
fn cc(s: &str) -> CountryCode {
    s.parse().unwrap()
}
fn load(bytes: Vec<u8>) -> Result<Loaded, GeoipError> {
    Source::from_bytes(PATH, bytes)?.load()
}
fn build(ip_version: u16, schema: Schema, entries: &[(&str, &str)]) -> MmdbWriter {
    let mut w = MmdbWriter::new(ip_version, schema)
        .unwrap()
        .build_epoch(1_700_000_000);
    for (n, c) in entries {
        w.insert(net(n), c);
    }
    w
}

/// What `maxminddb` itself says, read the way each schema defines.
fn reference(reader: &Reader<Vec<u8>>, schema: Schema, addr: IpAddr) -> Option<CountryCode> {
    let hit = reader.lookup(addr).unwrap();
    let code = match schema {
        Schema::MaxMind => hit.decode::<geoip2::Country>().unwrap().and_then(|c| {
            c.country
                .iso_code
                .or(c.registered_country.iso_code)
                .map(str::to_owned)
        }),
        Schema::Flat => hit.decode_path::<String>(&path!["country_code"]).unwrap(),
    };
    code.and_then(|c| c.parse().ok())
}

/// Every first/last address ±1 of `entries`, plus their IPv4-mapped forms.
fn probes(entries: &[(&str, &str)]) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for (n, _) in entries {
        match net(n) {
            IpNetwork::V4(n) => {
                let (s, e) = (u32::from(n.network()), u32::from(n.broadcast()));
                for a in [s.wrapping_sub(1), s, e, e.wrapping_add(1)] {
                    out.push(IpAddr::V4(a.into()));
                    out.push(IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped()));
                }
            }
            IpNetwork::V6(n) => {
                let (s, e) = (u128::from(n.network()), u128::from(n.broadcast()));
                for a in [s.wrapping_sub(1), s, e, e.wrapping_add(1)] {
                    out.push(IpAddr::V6(a.into()));
                }
            }
        }
    }
    out
}

fn in_net(n: &str, a: Ipv6Addr) -> bool {
    match net(n) {
        IpNetwork::V6(n) => n.contains(a),
        IpNetwork::V4(_) => false,
    }
}

/// Checks the loaded table against `maxminddb` at every probe. The alias
/// ranges answer with IPv4 data in `maxminddb`, and nothing in the v6 table.
fn assert_matches_reference(bytes: &[u8], loaded: &Loaded, schema: Schema, probes: &[IpAddr]) {
    let reader = Reader::from_source(bytes.to_vec()).unwrap();
    for &a in probes {
        if reader.metadata().ip_version == 4 && a.is_ipv6() {
            assert_eq!(
                loaded
                    .table
                    .lookup(a)
                    .filter(|_| a.to_canonical().is_ipv6()),
                None
            );
            continue;
        }
        let ours = loaded.table.lookup(a).map(|(_, c)| c);
        let theirs = reference(&reader, schema, a);
        if let IpAddr::V6(a6) = a
            && (in_net("2001::/32", a6) || in_net("2002::/16", a6) || in_net("::/96", a6))
            && a6.to_ipv4_mapped().is_none()
        {
            assert_eq!(
                loaded.table.v6.lookup(a6),
                None,
                "{a} is IPv4 space, not in the v6 table"
            );
            continue;
        }
        assert_eq!(ours, theirs, "{a}");
    }
}

const V4: &[(&str, &str)] = &[
    ("198.51.100.0/25", "DE"),
    ("198.51.100.128/26", "FR"),
    ("198.18.0.0/15", "NL"),
    ("0.0.0.0/8", "US"),
    ("255.255.255.0/24", "CA"),
];
const V6: &[(&str, &str)] = &[
    ("2001:db8::/32", "US"),
    ("2001:db8:1::/48", "DE"),
    ("2a00::/12", "SE"),
    ("ffff::/16", "JP"),
];

#[test]
fn writer_output_is_read_back_by_maxminddb() {
    for schema in [Schema::MaxMind, Schema::Flat] {
        let all: Vec<_> = V4.iter().chain(V6).copied().collect();
        let bytes = build(6, schema, &all).to_bytes().unwrap();
        let reader = Reader::from_source(bytes.clone()).unwrap();
        assert_eq!(reader.metadata().ip_version, 6);
        assert_eq!(reader.metadata().build_epoch, 1_700_000_000);
        let want = |a: &str| reference(&reader, schema, ip(a)).map(|c| c.to_string());
        assert_eq!(want("198.51.100.7").as_deref(), Some("DE"));
        assert_eq!(want("198.51.100.130").as_deref(), Some("FR"));
        assert_eq!(want("198.51.100.200"), None);
        assert_eq!(want("2001:db8::1").as_deref(), Some("US"));
        assert_eq!(want("2001:db8:1::1").as_deref(), Some("DE"));
        // The IPv4 aliases resolve to IPv4 data, as in MaxMind's databases.
        assert_eq!(want("::ffff:198.51.100.7").as_deref(), Some("DE"));
        assert_eq!(want("2002:c633:6407::1").as_deref(), Some("DE"));
        // The raw record has the schema's layout.
        let hit = reader.lookup(ip("198.18.1.1")).unwrap();
        match schema {
            Schema::MaxMind => {
                let code: Option<String> = hit.decode_path(&path!["country", "iso_code"]).unwrap();
                assert_eq!(code.as_deref(), Some("NL"));
                assert_eq!(reader.metadata().database_type, "GeoLite2-Country");
            }
            Schema::Flat => {
                let code: Option<String> = hit.decode_path(&path!["country_code"]).unwrap();
                assert_eq!(code.as_deref(), Some("NL"));
            }
        }

        let v4only = build(4, schema, V4).to_bytes().unwrap();
        let reader = Reader::from_source(v4only).unwrap();
        assert_eq!(reader.metadata().ip_version, 4);
        assert_eq!(reference(&reader, schema, ip("198.18.1.1")), Some(cc("NL")));
    }
}

#[test]
fn ipv6_database_walks_ipv4_once_and_skips_aliases() {
    for schema in [Schema::MaxMind, Schema::Flat] {
        let all: Vec<_> = V4.iter().chain(V6).copied().collect();
        let bytes = build(6, schema, &all).to_bytes().unwrap();
        let loaded = load(bytes.clone()).unwrap();
        assert_eq!(
            loaded.info.format,
            Format::Mmdb {
                schema,
                ip_version: 6,
                field: crate::CountryField::Country,
            }
        );
        assert_eq!(loaded.stats.raw_v4, V4.len(), "{:?}", loaded.stats);
        // 2001:db8::/32 minus the /48 is 16 networks in the tree.
        assert_eq!(loaded.stats.raw_v6, 16 + 1 + 2, "{:?}", loaded.stats);
        assert_eq!(loaded.stats.unlocated, 0);
        assert_eq!(loaded.stats.aggregated_v4, loaded.table.v4.len());
        assert_eq!(loaded.table.v4.len(), V4.len());
        // The v6 table holds the IPv6 entries and nothing from IPv4 space.
        let v6: Vec<String> = loaded
            .table
            .v6
            .prefixes()
            .map(|(n, c)| format!("{n} {c}"))
            .collect();
        assert_eq!(v6.len(), 16 + 1 + 2);
        for (n, _) in loaded.table.v6.prefixes() {
            for hole in ["::/96", "::ffff:0:0/96", "2001::/32", "2002::/16"] {
                let IpNetwork::V6(h) = net(hole) else {
                    unreachable!()
                };
                assert!(!h.overlaps(n), "{n} overlaps {hole}");
            }
        }
        let mut p = probes(&all);
        p.extend(
            [
                "2002:c633:6407::1",
                "2001:0:c633:6407::1",
                "::198.51.100.7",
                "::ffff:0:0",
            ]
            .map(ip),
        );
        assert_matches_reference(&bytes, &loaded, schema, &p);
        assert_eq!(
            loaded
                .table
                .lookup(ip("::ffff:198.51.100.7"))
                .map(|(n, c)| (n.to_string(), c)),
            Some(("198.51.100.0/25".into(), cc("DE")))
        );
    }
}

#[test]
fn ipv4_only_database_has_no_v6_table_and_aggregates() {
    let entries = [
        ("10.0.0.0/25", "DE"),
        ("10.0.0.128/25", "DE"),
        ("10.0.1.0/24", "FR"),
        ("10.0.2.0/24", "DE"),
    ];
    let bytes = build(4, Schema::Flat, &entries).to_bytes().unwrap();
    let loaded = load(bytes.clone()).unwrap();
    assert_eq!(
        loaded.info.format,
        Format::Mmdb {
            schema: Schema::Flat,
            ip_version: 4,
            field: crate::CountryField::Country,
        }
    );
    assert_eq!(
        loaded.info.database_type.as_deref(),
        Some("ee-test-country")
    );
    assert_eq!(loaded.info.build_epoch, Some(1_700_000_000));
    assert!(loaded.table.v6.is_empty());
    assert_eq!(loaded.stats.raw_v6, 0);
    let prefixes: Vec<String> = loaded
        .table
        .v4
        .prefixes()
        .map(|(n, c)| format!("{n} {c}"))
        .collect();
    assert_eq!(
        prefixes,
        ["10.0.0.0/24 DE", "10.0.1.0/24 FR", "10.0.2.0/24 DE"]
    );
    assert_matches_reference(&bytes, &loaded, Schema::Flat, &probes(&entries));
}

#[test]
fn genuine_data_in_6to4_space_is_kept_when_not_aliased() {
    let entries = [
        ("198.51.100.0/24", "DE"),
        ("2002:c633:6400::/40", "FR"),
        ("2001::/32", "NL"),
    ];
    let mut w = build(6, Schema::Flat, &entries).ipv4_aliases(false);
    w.insert(net("2a00::/16"), "SE");
    let bytes = w.to_bytes().unwrap();
    let loaded = load(bytes).unwrap();
    let at = |a: &str| loaded.table.lookup(ip(a)).map(|(_, c)| c.to_string());
    assert_eq!(at("2002:c633:6401::1").as_deref(), Some("FR"));
    assert_eq!(at("2001::1").as_deref(), Some("NL"));
    assert_eq!(at("198.51.100.1").as_deref(), Some("DE"));
    // Without aliases, ::ffff:0:0/96 has no data; the table still maps it as IPv4.
    assert_eq!(at("::ffff:198.51.100.1").as_deref(), Some("DE"));
}

/// An IPv6 database whose walk towards ::/96 ends in a leaf has no IPv4
/// subtree. `maxminddb`'s alias skip then compares against that leaf's data
/// pointer and drops unrelated networks sharing the record; the loader
/// must not.
#[test]
fn database_without_ipv4_subtree_keeps_networks_sharing_the_low_record() {
    let entries = [
        ("::/64", "FR"),
        ("2a00::/16", "FR"),
        ("2001:db8::/32", "DE"),
    ];
    let bytes = build(6, Schema::Flat, &entries)
        .ipv4_aliases(false)
        .to_bytes()
        .unwrap();

    // The hazard is real in the crate version in use (if this starts
    // failing, maxminddb fixed it and the workaround in load() can go).
    let reader = Reader::from_source(bytes.clone()).unwrap();
    let seen: Vec<String> = reader
        .networks(WithinOptions::default())
        .unwrap()
        .map(|r| r.unwrap().network().unwrap().to_string())
        .collect();
    assert!(!seen.contains(&"2a00::/16".to_string()), "{seen:?}");

    let loaded = load(bytes.clone()).unwrap();
    let at = |a: &str| {
        loaded
            .table
            .lookup(ip(a))
            .map(|(n, c)| (n.to_string(), c.to_string()))
    };
    assert_eq!(at("2a00::1"), Some(("2a00::/16".into(), "FR".into())));
    assert_eq!(
        at("2001:db8::1"),
        Some(("2001:db8::/32".into(), "DE".into()))
    );
    // IPv4 lookups in such a database land in the ::/64 record.
    assert_eq!(at("1.2.3.4"), Some(("0.0.0.0/0".into(), "FR".into())));
    assert_eq!(at("::1:0:0:1"), Some(("::1:0:0:0/80".into(), "FR".into())));
    assert_eq!(
        loaded.table.v6.lookup("::ffff:1.2.3.4".parse().unwrap()),
        None
    );
    let mut p = probes(&entries);
    p.extend(["1.2.3.4", "::1.2.3.4"].map(ip));
    assert_matches_reference(&bytes, &loaded, Schema::Flat, &p);
}

#[test]
fn schema_is_detected_from_type_or_first_record() {
    // A MaxMind-layout database under another vendor's type (DB-IP lite).
    let bytes = build(6, Schema::MaxMind, &[("198.51.100.0/24", "DE")])
        .database_type("DBIP-Country-Lite")
        .to_bytes()
        .unwrap();
    let l = load(bytes).unwrap();
    assert_eq!(
        l.info.format,
        Format::Mmdb {
            schema: Schema::MaxMind,
            ip_version: 6,
            field: crate::CountryField::Country,
        }
    );

    // registered_country is the fallback; a first record without location
    // fields does not decide the schema.
    let mut w = MmdbWriter::new(6, Schema::MaxMind)
        .unwrap()
        .database_type("Vendor-X");
    w.insert_record(
        net("10.0.0.0/8"),
        Value::map([("note", Value::from("anycast"))]),
    );
    w.insert_record(
        net("198.51.100.0/24"),
        Value::map([(
            "registered_country",
            Value::map([("iso_code", Value::from("CH"))]),
        )]),
    );
    w.insert(net("198.18.0.0/15"), "AT");
    let l = load(w.to_bytes().unwrap()).unwrap();
    assert_eq!(
        l.info.format,
        Format::Mmdb {
            schema: Schema::MaxMind,
            ip_version: 6,
            field: crate::CountryField::Country,
        }
    );
    assert_eq!(
        l.table.lookup(ip("198.51.100.1")).map(|(_, c)| c),
        Some(cc("CH"))
    );
    assert_eq!(
        l.table.lookup(ip("198.18.0.1")).map(|(_, c)| c),
        Some(cc("AT"))
    );
    assert_eq!(l.table.lookup(ip("10.0.0.1")), None);
    assert_eq!(
        (l.stats.raw_v4, l.stats.unlocated, l.stats.invalid_codes),
        (2, 1, 0)
    );

    // A flat database: type says nothing, records have country_code.
    let bytes = build(6, Schema::Flat, &[("198.51.100.0/24", "DE")])
        .to_bytes()
        .unwrap();
    let l = load(bytes).unwrap();
    assert_eq!(
        l.info.format,
        Format::Mmdb {
            schema: Schema::Flat,
            ip_version: 6,
            field: crate::CountryField::Country,
        }
    );
}

#[test]
fn unlocated_records_and_bad_codes_are_counted_not_loaded() {
    let mut w = MmdbWriter::new(6, Schema::Flat).unwrap();
    let flat = |v: Value| Value::map([("country_code", v)]);
    let rows: Vec<(&str, Value)> = vec![
        ("10.1.0.0/16", flat(Value::from("de"))), // lowercase: valid
        ("10.2.0.0/16", flat(Value::from("D1"))), // invalid
        ("10.3.0.0/16", flat(Value::from("DEU"))), // invalid
        ("10.4.0.0/16", flat(Value::from(42u32))), // wrong type
        ("10.5.0.0/16", flat(Value::map([("x", Value::from(1u32))]))), // wrong type
        ("10.6.0.0/16", flat(Value::array([Value::from("DE")]))), // wrong type
        ("10.7.0.0/16", Value::map([("asn", Value::from(64512u32))])), // no field
        ("10.8.0.0/16", Value::from("DE")),       // not a map
        ("10.9.0.0/16", Value::array([Value::from(1u32)])), // not a map
        ("10.10.0.0/16", Value::map(Vec::<(String, Value)>::new())), // empty map
        ("2001:db8::/32", flat(Value::from("Fr"))), // valid
    ];
    for (n, v) in rows {
        w.insert_record(net(n), v);
    }
    let l = load(w.to_bytes().unwrap()).unwrap();
    assert_eq!(l.stats.raw_v4, 1);
    assert_eq!(l.stats.raw_v6, 1);
    assert_eq!(l.stats.unlocated, 9);
    assert_eq!(l.stats.invalid_codes, 5);
    assert_eq!(
        l.table.lookup(ip("10.1.0.1")).map(|(_, c)| c),
        Some(cc("DE"))
    );
    assert_eq!(
        l.table.lookup(ip("2001:db8::1")).map(|(_, c)| c),
        Some(cc("FR"))
    );
    assert_eq!(l.table.lookup(ip("10.2.0.1")), None);

    // The MaxMind schema: a country that is not a map, an iso_code that is
    // not a string, and the registered_country fallback past a bad country.
    let mut w = MmdbWriter::new(6, Schema::MaxMind).unwrap();
    let iso = |v: Value| Value::map([("iso_code", v)]);
    w.insert_record(
        net("10.1.0.0/16"),
        Value::map([("country", iso(Value::from("SE")))]),
    );
    w.insert_record(
        net("10.2.0.0/16"),
        Value::map([("country", Value::from("DE"))]),
    );
    w.insert_record(
        net("10.3.0.0/16"),
        Value::map([("country", iso(Value::from(5u32)))]),
    );
    w.insert_record(
        net("10.4.0.0/16"),
        Value::map([
            ("country", iso(Value::from("X"))),
            ("registered_country", iso(Value::from("NO"))),
        ]),
    );
    let l = load(w.to_bytes().unwrap()).unwrap();
    assert_eq!(
        (l.stats.raw_v4, l.stats.unlocated, l.stats.invalid_codes),
        (2, 2, 2)
    );
    assert_eq!(
        l.table.lookup(ip("10.4.0.1")).map(|(_, c)| c),
        Some(cc("NO"))
    );
}

#[test]
fn databases_without_countries_are_errors() {
    let mut w = MmdbWriter::new(6, Schema::Flat)
        .unwrap()
        .database_type("GeoLite2-ASN");
    w.insert_record(
        net("198.51.100.0/24"),
        Value::map([("autonomous_system_number", Value::from(64512u32))]),
    );
    let e = load(w.to_bytes().unwrap()).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{PATH}: no network has a valid country code")),
        "{e}"
    );

    let mut w = MmdbWriter::new(6, Schema::Flat).unwrap();
    w.insert_record(
        net("198.51.100.0/24"),
        Value::map([("autonomous_system_number", Value::from(64512u32))]),
    );
    let e = load(w.to_bytes().unwrap()).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{PATH}: no record has a country: 1 networks")),
        "{e}"
    );

    let w = MmdbWriter::new(4, Schema::Flat).unwrap();
    let e = load(w.to_bytes().unwrap()).unwrap_err().to_string();
    assert_eq!(e, format!("{PATH}: the database has no networks"));

    let w = build(6, Schema::Flat, &[("198.51.100.0/24", "1X")]);
    let e = load(w.to_bytes().unwrap()).unwrap_err().to_string();
    assert!(
        e.contains("no network has a valid country code (1 networks without one, 1 of them"),
        "{e}"
    );
}

fn sample() -> Vec<u8> {
    let all: Vec<_> = V4.iter().chain(V6).copied().collect();
    build(6, Schema::MaxMind, &all).to_bytes().unwrap()
}

#[test]
fn every_truncation_is_an_error_naming_the_file() {
    let bytes = sample();
    assert!(load(bytes.clone()).is_ok());
    for cut in 0..bytes.len() {
        match load(bytes[..cut].to_vec()) {
            Ok(l) => panic!("cut at {cut} of {} loaded: {:?}", bytes.len(), l.stats),
            Err(e) => assert!(e.to_string().starts_with(PATH), "{e}"),
        }
    }
}

/// The tail of a database (its start lost): the metadata is intact but the
/// tree is not. maxminddb 0.26 panicked on this ("attempt to subtract with
/// overflow" while walking); it must be an error.
#[test]
fn every_head_cut_is_an_error_naming_the_file() {
    let bytes = sample();
    for cut in 1..bytes.len() {
        if let Err(e) = load(bytes[cut..].to_vec()) {
            assert!(e.to_string().starts_with(PATH), "{e}");
        }
    }
}

#[test]
fn corrupted_bytes_never_panic() {
    let bytes = sample();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut ok, mut err) = (0, 0);
    for _ in 0..3000 {
        let mut b = bytes.clone();
        for _ in 0..1 + next() % 8 {
            let i = (next() % b.len() as u64) as usize;
            b[i] = next() as u8;
        }
        match load(b) {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(e.to_string().starts_with(PATH), "{e}");
                err += 1;
            }
        }
    }
    assert!(ok > 0 && err > 0, "ok {ok}, err {err}");
}

/// A tree whose nodes all point at the next one (a DAG, not a cycle): a
/// naive walk visits 2^depth leaves. The loader stops with an error.
#[test]
fn shared_subtrees_are_an_error_not_a_hang() {
    let mut bytes = sample();
    let reader = Reader::from_source(bytes.clone()).unwrap();
    let (nodes, record) = (
        reader.metadata().node_count as usize,
        reader.metadata().record_size,
    );
    assert_eq!(record, 24, "the test writes 24-bit records");
    let depth = nodes.min(120);
    for i in 0..depth {
        let target = if i + 1 < depth { i + 1 } else { nodes } as u32;
        let t = target.to_be_bytes();
        bytes[i * 6..i * 6 + 3].copy_from_slice(&t[1..]);
        bytes[i * 6 + 3..i * 6 + 6].copy_from_slice(&t[1..]);
    }
    let started = std::time::Instant::now();
    let e = load(bytes).unwrap_err().to_string();
    assert!(e.contains("search tree is corrupt"), "{e}");
    assert!(started.elapsed().as_secs() < 10);
}

/// GeoIP2/GeoLite2 mark anycast networks with `traits.is_anycast`: such a
/// network is the anycast class whatever country the record also names
/// (and whichever field is chosen); `is_anycast: false` or a non-boolean
/// changes nothing; the flat schema has no traits.
#[test]
fn traits_is_anycast_marks_the_anycast_class() {
    let country = |code: &str| Value::map([("iso_code", Value::from(code))]);
    let record = |anycast: Value| {
        Value::map([
            ("country", country("US")),
            ("registered_country", country("US")),
            ("traits", Value::map([("is_anycast", anycast)])),
        ])
    };
    let mut w = MmdbWriter::new(6, Schema::MaxMind)
        .unwrap()
        .database_type("GeoIP2-Country");
    w.insert_record(net("198.51.100.0/24"), record(Value::Bool(true)));
    w.insert_record(net("198.18.0.0/16"), record(Value::Bool(false)));
    w.insert_record(net("198.19.0.0/16"), record(Value::from("true")));
    w.insert_record(net("2001:db8::/32"), record(Value::Bool(true)));
    let bytes = w.to_bytes().unwrap();
    for field in [
        crate::CountryField::Country,
        crate::CountryField::RegisteredCountry,
    ] {
        let options = crate::Options {
            kind: crate::Kind::Auto,
            country_field: field,
        };
        let l = Source::from_bytes_with(PATH, bytes.clone(), options)
            .unwrap()
            .load()
            .unwrap();
        let at = |a: &str| l.table.lookup(ip(a)).map(|(_, c)| c);
        assert_eq!(at("198.51.100.7"), Some(CountryCode::ANYCAST), "{field:?}");
        assert_eq!(at("2001:db8::1"), Some(CountryCode::ANYCAST), "{field:?}");
        assert_eq!(at("198.18.0.1"), Some(cc("US")), "is_anycast false");
        assert_eq!(at("198.19.0.1"), Some(cc("US")), "a string is not the flag");
    }
}
