//! Reading a MaxMind DB into per-family runs.
//!
//! The search tree is walked once with `maxminddb`'s network iterator. What
//! that iterator does about IPv4 in IPv6 databases decides what lands in
//! which table, so here is what it does (maxminddb 0.32, `within.rs`):
//!
//! - An IPv6 database keeps IPv4 at `::/96`. Networks found below that node
//!   are reported as IPv4 networks (prefix minus 96): they make the v4 table.
//! - MaxMind's writers (and `mmdb-writer`) make `::ffff:0:0/96`,
//!   `2001::/32` (Teredo) and `2002::/16` (6to4) point at that same node.
//!   By default the iterator skips any record that points at the IPv4 start
//!   node from outside `::/96`, so those aliases are not walked at all; the
//!   IPv4 space is enumerated exactly once.
//! - That skip compares node numbers. When a database has no IPv4 subtree
//!   (the walk towards `::/96` ends in a leaf), the "IPv4 start node" is that
//!   leaf's data pointer, and the skip would drop every unrelated network
//!   sharing its record. For such databases the walk includes aliases and
//!   this module drops the alias ranges itself.
//!
//! Independently of the iterator, an IPv6 network is split: the part inside
//! `::/96` belongs to IPv4 (that is how the database answers IPv4 lookups),
//! the part inside `::ffff:0:0/96` is dropped (IPv4-mapped addresses are
//! looked up as IPv4 by [`GeoTable::lookup`](crate::GeoTable::lookup) and by
//! the datapath), and the rest is IPv6. Genuine (non-alias) data in
//! `2001::/32` or `2002::/16` stays in the v6 table.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, Ipv6Addr},
    path::Path,
};

use ipnetwork::IpNetwork;
use maxminddb::{Reader, WithinOptions};
use serde::{
    Deserialize, Deserializer,
    de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor},
};

use crate::{
    CountryCode, CountryField, GeoTable, GeoipError, Schema, Stats,
    table::{Run, Table, WideRun},
};

/// First and last address of `::ffff:0:0/96` (IPv4-mapped).
const MAPPED: (u128, u128) = (0xffff_0000_0000, 0xffff_ffff_ffff);
/// Last address of `::/96` (where an IPv6 database keeps IPv4).
const V4_IN_V6_END: u128 = 0xffff_ffff;
/// The alias subtrees MaxMind writers point at the IPv4 node, dropped from
/// the v6 table when the iterator cannot skip them (see the module docs).
const ALIASES: [(u128, u8); 3] = [
    (0xffff_0000_0000, 96),                          // ::ffff:0:0/96
    (0x2001_0000_0000_0000_0000_0000_0000_0000, 32), // 2001::/32
    (0x2002_0000_0000_0000_0000_0000_0000_0000, 16), // 2002::/16
];

/// A record's country fields as found, before the schema picks one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Code {
    #[default]
    Absent,
    Valid(CountryCode),
    /// Present but not two ASCII letters (or not a string at all).
    Invalid,
}

impl Code {
    fn of_text(text: &str) -> Code {
        CountryCode::from_text(text).map_or(Code::Invalid, Code::Valid)
    }
    fn present(self) -> bool {
        self != Code::Absent
    }
}

/// The fields of a record this crate reads. Decoding is lenient about
/// types: a field of an unexpected type counts as an invalid code, a record
/// that is not a map has no fields, and nothing else is decoded.
#[derive(Clone, Copy, Debug, Default)]
struct RawRecord {
    /// `country.iso_code`.
    country: Code,
    /// `registered_country.iso_code`.
    registered: Code,
    /// Top-level `country_code`.
    flat: Code,
    /// `country` or `registered_country` is a map.
    maxmind_keys: bool,
    /// `traits.is_anycast` is true (GeoIP2 and GeoLite2 databases since
    /// 2023 mark anycast networks so).
    anycast: bool,
}

/// What a record says under the database's schema.
#[derive(Clone, Copy, Debug)]
enum Outcome {
    Located(CountryCode),
    Missing,
    Invalid,
}

impl RawRecord {
    fn schema_hint(&self) -> Option<Schema> {
        if self.maxmind_keys {
            Some(Schema::MaxMind)
        } else if self.flat.present() {
            Some(Schema::Flat)
        } else {
            None
        }
    }

    fn outcome(&self, schema: Option<Schema>, field: CountryField) -> Outcome {
        let pick = |codes: &[Code]| {
            if let Some(c) = codes.iter().find_map(|c| match c {
                Code::Valid(c) => Some(*c),
                _ => None,
            }) {
                Outcome::Located(c)
            } else if codes.contains(&Code::Invalid) {
                Outcome::Invalid
            } else {
                Outcome::Missing
            }
        };
        match schema {
            // An anycast network is served from many countries: the
            // class, never the one country the record also names.
            Some(Schema::MaxMind) if self.anycast => Outcome::Located(CountryCode::ANYCAST),
            Some(Schema::MaxMind) => match field {
                CountryField::Country => pick(&[self.country, self.registered]),
                CountryField::RegisteredCountry => pick(&[self.registered, self.country]),
            },
            Some(Schema::Flat) => pick(&[self.flat]),
            None => Outcome::Missing,
        }
    }
}

/// Implements every `visit_*` a MaxMind DB decoder can call, returning
/// `$fallback` for the types the visitor does not care about. Containers are
/// drained so the decoder stays in step.
macro_rules! lenient_visits {
    ($value:ty, $fallback:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<$value, E> {
            Ok($fallback)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<$value, E> {
            Ok($fallback)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<$value, E> {
            Ok($fallback)
        }
        fn visit_i128<E: de::Error>(self, _: i128) -> Result<$value, E> {
            Ok($fallback)
        }
        fn visit_u128<E: de::Error>(self, _: u128) -> Result<$value, E> {
            Ok($fallback)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<$value, E> {
            Ok($fallback)
        }
        fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<$value, E> {
            Ok($fallback)
        }
        fn visit_unit<E: de::Error>(self) -> Result<$value, E> {
            Ok($fallback)
        }
        fn visit_none<E: de::Error>(self) -> Result<$value, E> {
            Ok($fallback)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<$value, D::Error> {
            IgnoredAny::deserialize(d).map(|_| $fallback)
        }
        fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<$value, D::Error> {
            IgnoredAny::deserialize(d).map(|_| $fallback)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<$value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok($fallback)
        }
    };
}

/// A string field read as a country code.
struct LooseCode(Code);

impl<'de> Deserialize<'de> for LooseCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LooseCode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a country code string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LooseCode, E> {
                Ok(LooseCode(Code::of_text(v)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LooseCode, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(LooseCode(Code::Invalid))
            }
            lenient_visits!(LooseCode, LooseCode(Code::Invalid));
        }
        d.deserialize_any(V)
    }
}

/// A map key, recognising the few this crate reads.
enum Key {
    Country,
    RegisteredCountry,
    IsoCode,
    CountryCode,
    Traits,
    IsAnycast,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                self.visit_bytes(v.as_bytes())
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Key, E> {
                Ok(match v {
                    b"country" => Key::Country,
                    b"registered_country" => Key::RegisteredCountry,
                    b"iso_code" => Key::IsoCode,
                    b"country_code" => Key::CountryCode,
                    b"traits" => Key::Traits,
                    b"is_anycast" => Key::IsAnycast,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

/// `country` / `registered_country`: `(is a map, its iso_code)`.
struct CountryMap(bool, Code);

impl<'de> Deserialize<'de> for CountryMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CountryMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map with iso_code")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CountryMap, A::Error> {
                let mut code = Code::Absent;
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::IsoCode => code = map.next_value::<LooseCode>()?.0,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(CountryMap(true, code))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<CountryMap, E> {
                Ok(CountryMap(false, Code::Invalid))
            }
            lenient_visits!(CountryMap, CountryMap(false, Code::Invalid));
        }
        d.deserialize_any(V)
    }
}

/// `traits`: whether `is_anycast` is `true` (anything else is false).
struct Traits(bool);

impl<'de> Deserialize<'de> for Traits {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// A value that is true only as the boolean `true`.
        struct Flag(bool);
        impl<'de> Deserialize<'de> for Flag {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = Flag;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a boolean")
                    }
                    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Flag, E> {
                        Ok(Flag(v))
                    }
                    fn visit_str<E: de::Error>(self, _: &str) -> Result<Flag, E> {
                        Ok(Flag(false))
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Flag, A::Error> {
                        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                        Ok(Flag(false))
                    }
                    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Flag, E> {
                        Ok(Flag(false))
                    }
                    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Flag, E> {
                        Ok(Flag(false))
                    }
                    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Flag, E> {
                        Ok(Flag(false))
                    }
                    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Flag, E> {
                        Ok(Flag(false))
                    }
                    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Flag, E> {
                        Ok(Flag(false))
                    }
                    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Flag, E> {
                        Ok(Flag(false))
                    }
                    fn visit_unit<E: de::Error>(self) -> Result<Flag, E> {
                        Ok(Flag(false))
                    }
                    fn visit_none<E: de::Error>(self) -> Result<Flag, E> {
                        Ok(Flag(false))
                    }
                    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Flag, D::Error> {
                        IgnoredAny::deserialize(d).map(|_| Flag(false))
                    }
                    fn visit_newtype_struct<D: Deserializer<'de>>(
                        self,
                        d: D,
                    ) -> Result<Flag, D::Error> {
                        IgnoredAny::deserialize(d).map(|_| Flag(false))
                    }
                    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Flag, A::Error> {
                        while seq.next_element::<IgnoredAny>()?.is_some() {}
                        Ok(Flag(false))
                    }
                }
                d.deserialize_any(V)
            }
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Traits;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a traits map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Traits, A::Error> {
                let mut anycast = false;
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::IsAnycast => anycast = map.next_value::<Flag>()?.0,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Traits(anycast))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Traits, E> {
                Ok(Traits(false))
            }
            lenient_visits!(Traits, Traits(false));
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawRecord {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawRecord;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a record map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawRecord, A::Error> {
                let mut r = RawRecord::default();
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Country => {
                            let CountryMap(is_map, code) = map.next_value()?;
                            r.maxmind_keys |= is_map;
                            r.country = code;
                        }
                        Key::RegisteredCountry => {
                            let CountryMap(is_map, code) = map.next_value()?;
                            r.maxmind_keys |= is_map;
                            r.registered = code;
                        }
                        Key::CountryCode => r.flat = map.next_value::<LooseCode>()?.0,
                        Key::Traits => r.anycast = map.next_value::<Traits>()?.0,
                        Key::IsoCode | Key::IsAnycast | Key::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(r)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<RawRecord, E> {
                Ok(RawRecord::default())
            }
            lenient_visits!(RawRecord, RawRecord::default());
        }
        d.deserialize_any(V)
    }
}

/// The schema `database_type` names, if it names one: MaxMind's own
/// databases are GeoIP2-* / GeoLite2-* (and GeoIP-* for older ones).
fn schema_of_type(database_type: &str) -> Option<Schema> {
    let t = database_type.to_ascii_lowercase();
    (t.starts_with("geoip") || t.starts_with("geolite")).then_some(Schema::MaxMind)
}

/// What loading one database produced.
pub(crate) struct MmdbTables {
    pub(crate) table: GeoTable,
    pub(crate) stats: Stats,
    pub(crate) schema: Schema,
}

/// Walks the whole tree of `reader` and builds the tables.
pub(crate) fn load(
    reader: &Reader<Vec<u8>>,
    aliases: crate::Aliases,
    field: CountryField,
    path: &Path,
) -> Result<MmdbTables, GeoipError> {
    let mmdb_err = |source| GeoipError::Mmdb {
        path: path.to_owned(),
        source,
    };
    let db_err = |message: String| GeoipError::Database {
        path: path.to_owned(),
        message,
    };
    let md = reader.metadata();
    let ip_version = md.ip_version;
    if ip_version != 4 && ip_version != 6 {
        return Err(db_err(format!(
            "unsupported ip_version {ip_version} (expected 4 or 6)"
        )));
    }

    // Whether the walk towards ::/96 reaches an internal node (then the
    // iterator's alias skip is sound; see the module docs). A lookup of ::
    // that ends deeper than /96 went through that node.
    let skip_aliases = ip_version == 6 && {
        let hit = reader
            .lookup(IpAddr::V6(Ipv6Addr::UNSPECIFIED))
            .map_err(mmdb_err)?;
        hit.network().map_err(mmdb_err)?.prefix() > 96
    };
    // Empty leaves are yielded too, so that the count of yielded networks
    // bounds the walk (see below); they are skipped here.
    let mut options = WithinOptions::default().include_networks_without_data();
    if ip_version == 6 && !skip_aliases {
        options = options.include_aliased_networks();
    }
    // A tree of N internal nodes has N + 1 leaves. A corrupt file whose
    // nodes are shared (a DAG rather than a cycle, which the iterator does
    // not detect) could make the walk exponential: stop it instead.
    let max_leaves = (md.node_count as u64 + 1) * 2 + 16;

    let mut schema = schema_of_type(&md.database_type);
    let mut cache: HashMap<usize, Outcome> = HashMap::new();
    let mut v4: Vec<WideRun> = Vec::new();
    let mut v6: Vec<WideRun> = Vec::new();
    let mut stats = Stats::default();
    let mut leaves = 0u64;

    for item in reader.networks(options).map_err(mmdb_err)? {
        let item = item.map_err(mmdb_err)?;
        leaves += 1;
        if leaves > max_leaves {
            return Err(db_err(format!(
                "search tree is corrupt: more than {max_leaves} networks for {} nodes",
                md.node_count
            )));
        }
        let Some(offset) = item.offset() else {
            continue;
        };
        let net = item.network().map_err(mmdb_err)?;
        let outcome = match cache.get(&offset) {
            Some(o) => *o,
            None => {
                let rec: RawRecord = item
                    .decode()
                    .map_err(|e| db_err(format!("record of {net} (data offset {offset}): {e}")))?
                    .unwrap_or_default();
                // The first record that has location fields decides the
                // schema, unless database_type already did. Records seen
                // before it have none, so they are unlocated either way.
                if schema.is_none() {
                    schema = rec.schema_hint();
                }
                let o = rec.outcome(schema, field);
                cache.insert(offset, o);
                o
            }
        };
        let country = match outcome {
            Outcome::Located(c) => {
                if c.is_anycast() {
                    stats.anycast += 1;
                }
                c
            }
            Outcome::Missing => {
                stats.unlocated += 1;
                continue;
            }
            Outcome::Invalid => {
                stats.unlocated += 1;
                stats.invalid_codes += 1;
                continue;
            }
        };
        match net {
            IpNetwork::V4(n) => {
                let start = u128::from(u32::from(n.network()));
                let end = u128::from(u32::from(n.broadcast()));
                push_run(
                    &mut v4,
                    Run {
                        start,
                        end,
                        country,
                    },
                );
                stats.raw_v4 += 1;
            }
            IpNetwork::V6(n) => {
                let start = u128::from(n.network());
                let end = u128::from(n.broadcast());
                let (has_v4, has_v6) =
                    split_v6(start, end, country, !skip_aliases, &mut v4, &mut v6);
                stats.raw_v4 += usize::from(has_v4);
                stats.raw_v6 += usize::from(has_v6);
            }
        }
    }

    let Some(schema) = schema else {
        return Err(db_err(if leaves == 0 || stats.unlocated == 0 {
            "the database has no networks".to_owned()
        } else {
            format!(
                "no record has a country: {} networks, none with country.iso_code, \
                 registered_country.iso_code (MaxMind schema) or country_code (flat schema)",
                stats.unlocated
            )
        }));
    };
    if stats.raw_v4 + stats.raw_v6 == 0 {
        return Err(db_err(format!(
            "no network has a valid country code ({} networks without one, {} of them with a code \
             that is not two ASCII letters)",
            stats.unlocated, stats.invalid_codes
        )));
    }

    let overlap = |(a, b): (WideRun, WideRun)| {
        db_err(format!(
            "search tree is corrupt: overlapping networks at {:#x}-{:#x} and {:#x}-{:#x}",
            a.start, a.end, b.start, b.end
        ))
    };
    let table = GeoTable {
        v4: Table::from_disjoint(v4).map_err(overlap)?,
        v6: Table::from_disjoint(v6).map_err(overlap)?,
        aliases,
    };
    stats.aggregated_v4 = table.v4.len();
    stats.aggregated_v6 = table.v6.len();
    Ok(MmdbTables {
        table,
        stats,
        schema,
    })
}

/// Appends `r`, merged into the last run when it continues it with the
/// same country. The tree walk yields networks in address order, so this
/// keeps only the aggregated runs (a few hundred thousand for a world
/// database) instead of every network (about a million, 48 bytes each),
/// which was most of the agent's peak memory while loading. An overlap is
/// never merged: `Table::from_disjoint` still sees and reports it.
fn push_run(runs: &mut Vec<WideRun>, r: WideRun) {
    if let Some(last) = runs.last_mut()
        && last.country == r.country
        && last.end.checked_add(1) == Some(r.start)
    {
        last.end = r.end;
        return;
    }
    runs.push(r);
}

/// Splits an IPv6 network of an IPv6 database between the families (see
/// the module docs). Returns whether it contributed to v4 and to v6.
fn split_v6(
    start: u128,
    end: u128,
    country: CountryCode,
    drop_aliases: bool,
    v4: &mut Vec<WideRun>,
    v6: &mut Vec<WideRun>,
) -> (bool, bool) {
    let mut has_v4 = false;
    if start <= V4_IN_V6_END {
        push_run(
            v4,
            Run {
                start,
                end: end.min(V4_IN_V6_END),
                country,
            },
        );
        has_v4 = true;
    }
    let mut pieces = vec![(start.max(V4_IN_V6_END + 1), end)];
    let holes: &[(u128, u8)] = if drop_aliases {
        &ALIASES
    } else {
        &ALIASES[..1]
    };
    for &(hs, hp) in holes {
        let he = crate::table::prefix_end(hs, hp, 128);
        pieces = pieces
            .into_iter()
            .flat_map(|(s, e)| {
                let mut out = Vec::with_capacity(2);
                if s > e {
                    return out;
                }
                if e < hs || s > he {
                    out.push((s, e));
                } else {
                    if s < hs {
                        out.push((s, hs - 1));
                    }
                    if e > he {
                        out.push((he + 1, e));
                    }
                }
                out
            })
            .collect();
    }
    debug_assert!(
        pieces
            .iter()
            .all(|&(s, e)| s > e || e < MAPPED.0 || s > MAPPED.1)
    );
    let mut has_v6 = false;
    for (s, e) in pieces {
        if s <= e {
            push_run(
                v6,
                Run {
                    start: s,
                    end: e,
                    country,
                },
            );
            has_v6 = true;
        }
    }
    (has_v4, has_v6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(s: &str) -> CountryCode {
        s.parse().unwrap()
    }

    #[test]
    fn split_keeps_ipv4_part_and_drops_mapped() {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        // ::/0 covers everything: all of IPv4, and IPv6 minus the holes.
        let r = split_v6(0, u128::MAX, cc("DE"), true, &mut v4, &mut v6);
        assert_eq!(r, (true, true));
        assert_eq!(
            v4,
            vec![Run {
                start: 0,
                end: 0xffff_ffff,
                country: cc("DE")
            }]
        );
        let spans: Vec<_> = v6.iter().map(|r| (r.start, r.end)).collect();
        assert_eq!(spans.len(), 4);
        assert_eq!(spans[0], (0x1_0000_0000, MAPPED.0 - 1));
        assert_eq!(spans[1].0, MAPPED.1 + 1);
        for (hs, hp) in ALIASES {
            let he = crate::table::prefix_end(hs, hp, 128);
            assert!(spans.iter().all(|&(s, e)| e < hs || s > he), "{hs:#x}/{hp}");
        }
        let covered: u128 = spans.iter().map(|&(s, e)| e - s + 1).sum();
        assert_eq!(
            covered,
            u128::MAX - 0xffff_ffff - (1 << 32) - (1 << 96) - (1 << 112)
        );

        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        let r = split_v6(
            0x2002 << 112,
            (0x2002 << 112) + 5,
            cc("DE"),
            false,
            &mut v4,
            &mut v6,
        );
        assert_eq!(
            r,
            (false, true),
            "kept when aliases are skipped by the iterator"
        );
        let r = split_v6(MAPPED.0, MAPPED.1, cc("DE"), false, &mut v4, &mut v6);
        assert_eq!(r, (false, false), "IPv4-mapped never in v6");
    }

    #[test]
    fn schema_from_type() {
        assert_eq!(schema_of_type("GeoLite2-Country"), Some(Schema::MaxMind));
        assert_eq!(schema_of_type("GeoIP2-City"), Some(Schema::MaxMind));
        assert_eq!(schema_of_type("geo-whois-asn-country"), None);
        assert_eq!(schema_of_type("DBIP-Country-Lite"), None);
    }

    #[test]
    fn outcome_rules() {
        let mut r = RawRecord {
            country: Code::Invalid,
            registered: Code::Valid(cc("DE")),
            flat: Code::Valid(cc("FR")),
            maxmind_keys: true,
            anycast: false,
        };
        assert!(
            matches!(r.outcome(Some(Schema::MaxMind), CountryField::Country), Outcome::Located(c) if c == cc("DE"))
        );
        assert!(
            matches!(r.outcome(Some(Schema::Flat), CountryField::Country), Outcome::Located(c) if c == cc("FR"))
        );
        r.registered = Code::Absent;
        assert!(matches!(
            r.outcome(Some(Schema::MaxMind), CountryField::Country),
            Outcome::Invalid
        ));
        r.country = Code::Absent;
        assert!(matches!(
            r.outcome(Some(Schema::MaxMind), CountryField::Country),
            Outcome::Missing
        ));
        assert!(matches!(
            r.outcome(None, CountryField::Country),
            Outcome::Missing
        ));
    }

    #[test]
    fn registered_country_is_preferred_when_chosen_and_falls_back() {
        let mut r = RawRecord {
            country: Code::Valid(cc("DE")),
            registered: Code::Valid(cc("US")),
            flat: Code::Absent,
            maxmind_keys: true,
            anycast: false,
        };
        let mm = Some(Schema::MaxMind);
        assert!(
            matches!(r.outcome(mm, CountryField::Country), Outcome::Located(c) if c == cc("DE"))
        );
        assert!(
            matches!(r.outcome(mm, CountryField::RegisteredCountry), Outcome::Located(c) if c == cc("US"))
        );
        r.registered = Code::Absent;
        assert!(
            matches!(r.outcome(mm, CountryField::RegisteredCountry), Outcome::Located(c) if c == cc("DE"))
        );
        // The flat schema has one field: the choice does not apply.
        r.flat = Code::Valid(cc("FR"));
        assert!(
            matches!(r.outcome(Some(Schema::Flat), CountryField::RegisteredCountry), Outcome::Located(c) if c == cc("FR"))
        );
    }
}

#[cfg(test)]
#[path = "mmdb_tests.rs"]
mod db_tests;
