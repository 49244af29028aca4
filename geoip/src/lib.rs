//! GeoIP databases to prefix tables, for data-residency enforcement.
//!
//! The agent turns one or more GeoIP sources into one aggregated, sorted,
//! non-overlapping prefix table per address family, writes it into the
//! kernel, diffs it against what the kernel holds on a refresh, answers
//! lookups, and resolves named jurisdiction sets. This crate does all of
//! that except the kernel part: it knows nothing about eBPF.
//!
//! - [`Source`]: one database file. MaxMind DB (`.mmdb`, detected by its
//!   metadata marker) in the MaxMind schema (`country.iso_code`, falling
//!   back to `registered_country.iso_code`) or the flat one (`country_code`,
//!   as DB-IP lite, ip-location-db and IPinfo write), or CSV rows.
//! - [`Table`]: the aggregated table of one family; [`GeoTable`]: both.
//!   Adjacent and nested prefixes with the same country merge, so the kernel
//!   holds as few prefixes as express the same mapping.
//! - [`Diff`]: what changed between two tables, by exact prefix (for the
//!   kernel); [`CountryChange`]: how much address space moved between
//!   countries (for people, `enforcer geoip diff`).
//! - [`sets`]: jurisdiction sets (EU, EEA, adequacy decisions) as data.
//! - [`GeoTable::to_snapshot`] / [`GeoTable::from_snapshot`]: an exact
//!   binary form of a table (the agent's baseline of the data in force).
//! - `writer` (feature `writer`): writes small `.mmdb` files for tests and
//!   demos.
//!
//! Bad input never panics: a truncated, corrupt or unexpected database, or a
//! malformed CSV row, is a [`GeoipError`] that names the file (and line).
//!
//! ```
//! use std::net::IpAddr;
//! use geoip::{GeoTable, Source};
//!
//! # let dir = std::env::temp_dir().join(format!("geoip-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("overlay.csv");
//! std::fs::write(&path, "198.51.100.0/25,DE\n198.51.100.128/25,DE\n2001:db8::/32,FR\n").unwrap();
//! let loaded = Source::open(&path).unwrap().load().unwrap();
//! assert_eq!(loaded.stats.aggregated_v4, 1); // the two /25s merged
//! let table = GeoTable::layered(&[loaded.table]);
//! let (net, country) = table.lookup("198.51.100.7".parse::<IpAddr>().unwrap()).unwrap();
//! assert_eq!((net.to_string(), country.as_str()), ("198.51.100.0/24".into(), "DE"));
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

mod aliases;
// Until geoip/src/source.rs wires them in (issue 19): not yet called.
mod cloud;
mod country;
mod csv;
mod diff;
mod error;
mod geofeed;
mod mmdb;
mod provenance;
pub mod sets;
mod snapshot;
mod source;
mod table;
#[cfg(any(test, feature = "writer"))]
pub mod writer;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

pub use aliases::{Alias, Aliases};
pub use cloud::{Provider, detect as detect_cloud};
pub use country::{CountryCode, ParseCountryError};
pub use diff::{
    ChangedRange, CountryChange, FamilyChange, Move, changed_ranges, family_change, family_moves,
};
pub use error::GeoipError;
pub use provenance::Provenance;
pub use sets::SetError;
pub use source::{
    CountryField, Format, Kind, Loaded, Options, Schema, Source, SourceInfo, SourceSpec, Stats, hex,
};
pub use table::{Diff, Family, Table};

/// The tables of both families.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GeoTable {
    /// IPv4 prefixes.
    pub v4: Table<Ipv4Addr>,
    /// IPv6 prefixes. Never holds `::/96` (IPv4 space in IPv6 databases),
    /// `::ffff:0:0/96` (IPv4-mapped) or the IPv4 alias subtrees of MaxMind
    /// databases (`2001::/32`, `2002::/16`).
    pub v6: Table<Ipv6Addr>,
    /// The IPv6 ranges looked up in [`Self::v4`] by the IPv4 address they
    /// carry, as the database answers them (see [`Aliases`]).
    pub aliases: Aliases,
}

impl GeoTable {
    /// The table that, for every address, says what the first layer that
    /// locates the address says (per family). A range any layer answers
    /// through IPv4 is answered through the layered IPv4 table: one rule
    /// per range, as the datapath has one flag per range and slot (layers
    /// with genuine IPv6 data there lose it; no known database has both).
    pub fn layered(layers: &[GeoTable]) -> GeoTable {
        let v4: Vec<&Table<Ipv4Addr>> = layers.iter().map(|l| &l.v4).collect();
        let v6: Vec<&Table<Ipv6Addr>> = layers.iter().map(|l| &l.v6).collect();
        GeoTable {
            v4: Table::layered(&v4),
            v6: Table::layered(&v6),
            aliases: layers.iter().fold(Aliases::NONE, |a, l| a.union(l.aliases)),
        }
    }

    /// The prefix containing `ip` and its country. An IPv4-mapped IPv6
    /// address (`::ffff:a.b.c.d`) is looked up as IPv4, as the datapath does,
    /// and the answer is the IPv4 prefix. An address in one of
    /// [`Self::aliases`] is looked up by the IPv4 address it carries, as the
    /// database does, and the answer is the IPv6 network that the IPv4
    /// prefix stands for there (`2002:808::/30` for `8.8.0.0/14`).
    pub fn lookup(&self, ip: IpAddr) -> Option<(IpNetwork, CountryCode)> {
        match ip {
            IpAddr::V4(a) => self.v4.lookup(a).map(|(n, c)| (IpNetwork::V4(n), c)),
            IpAddr::V6(a) => match (a.to_ipv4_mapped(), self.aliases.resolve(a)) {
                (Some(a4), _) => self.v4.lookup(a4).map(|(n, c)| (IpNetwork::V4(n), c)),
                (None, Some((alias, a4))) => self
                    .v4
                    .lookup(a4)
                    .map(|(n, c)| (IpNetwork::V6(alias.widen(n)), c)),
                (None, None) => self.v6.lookup(a).map(|(n, c)| (IpNetwork::V6(n), c)),
            },
        }
    }

    /// Total number of prefixes of both families.
    pub fn total_len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// What changed from `self` to `new`, per family.
    pub fn diff(
        &self,
        new: &GeoTable,
    ) -> (Diff<ipnetwork::Ipv4Network>, Diff<ipnetwork::Ipv6Network>) {
        (self.v4.diff(&new.v4), self.v6.diff(&new.v6))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(s: &str) -> CountryCode {
        s.parse().unwrap()
    }
    fn table(v4: &[(&str, &str)], v6: &[(&str, &str)]) -> GeoTable {
        GeoTable {
            v4: Table::from_entries(v4.iter().map(|(n, c)| (n.parse().unwrap(), cc(c)))),
            v6: Table::from_entries(v6.iter().map(|(n, c)| (n.parse().unwrap(), cc(c)))),
            aliases: Aliases::NONE,
        }
    }

    #[test]
    fn layered_examples_from_the_design() {
        let l0 = table(
            &[("10.0.0.0/8", "FR"), ("198.51.100.10/32", "DE")],
            &[("2001:db8::/48", "DE")],
        );
        let l1 = table(
            &[("10.1.0.0/16", "US"), ("198.51.100.0/24", "US")],
            &[("2001:db8::/32", "US")],
        );
        let t = GeoTable::layered(&[l0, l1]);
        let at = |s: &str| {
            t.lookup(s.parse().unwrap())
                .map(|(n, c)| (n.to_string(), c.to_string()))
        };
        assert_eq!(at("10.1.2.3"), Some(("10.0.0.0/8".into(), "FR".into())));
        assert_eq!(
            at("198.51.100.10"),
            Some(("198.51.100.10/32".into(), "DE".into()))
        );
        assert_eq!(
            at("198.51.100.11"),
            Some(("198.51.100.11/32".into(), "US".into()))
        );
        assert_eq!(
            at("2001:db8::1"),
            Some(("2001:db8::/48".into(), "DE".into()))
        );
        assert_eq!(
            at("2001:db8:1::1"),
            Some(("2001:db8:1::/48".into(), "US".into()))
        );
        assert_eq!(
            at("::ffff:10.1.2.3"),
            Some(("10.0.0.0/8".into(), "FR".into()))
        );
        assert_eq!(at("2001:db9::1"), None);
        assert_eq!(t.total_len(), t.v4.len() + t.v6.len());
        assert_eq!(GeoTable::layered(&[]), GeoTable::default());
    }

    #[test]
    fn aliased_ranges_are_looked_up_through_ipv4() {
        let mut t = table(&[("198.18.0.0/15", "DE")], &[("2002::/16", "US")]);
        let at = |t: &GeoTable, s: &str| {
            t.lookup(s.parse().unwrap())
                .map(|(n, c)| (n.to_string(), c.to_string()))
        };
        // A CSV-like table: what the IPv6 rows say.
        assert_eq!(
            at(&t, "2002:c612::1"),
            Some(("2002::/16".into(), "US".into()))
        );
        assert_eq!(at(&t, "::198.18.0.1"), None);
        t.aliases = Aliases::NONE
            .with(Alias::SixToFour)
            .with(Alias::V4Compatible);
        assert_eq!(
            at(&t, "2002:c612::1"),
            Some(("2002:c612::/31".into(), "DE".into()))
        );
        assert_eq!(
            at(&t, "::198.18.0.1"),
            Some(("::c612:0/111".into(), "DE".into()))
        );
        assert_eq!(at(&t, "2002:808:808::"), None);
        assert_eq!(at(&t, "2001:0:c612::1"), None, "Teredo is not aliased");
        let layered = GeoTable::layered(&[table(&[], &[]), t.clone()]);
        assert_eq!(layered.aliases, t.aliases);
    }
}
