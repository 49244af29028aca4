//! [`Provenance`]: which source located an address, for `enforcer check`
//! and the events ("why was this refused?" names the file that said so).
//!
//! The kernel holds only the layered table, so the agent keeps the tables
//! of every layer but the last: the first of them that locates an address
//! is the one the layered table took it from; when none does, the answer
//! came from the last layer (the usual configuration puts the small
//! overlays first and the large database last, so what is kept is small).

use std::net::IpAddr;

use crate::{CountryCode, GeoTable, SourceInfo};

/// The sources of a layered table with the tables needed to tell which
/// one located an address.
#[derive(Clone, Debug, Default)]
pub struct Provenance {
    sources: Vec<SourceInfo>,
    /// The tables of every source but the last, in order; empty when not
    /// kept (then only a single source can be named).
    upper: Vec<GeoTable>,
}

impl Provenance {
    /// `upper` holds the tables of every source but the last, in order.
    /// With any other count no answer is given for several sources rather
    /// than a wrong one.
    pub fn new(sources: Vec<SourceInfo>, upper: Vec<GeoTable>) -> Provenance {
        let upper = if upper.len() + 1 == sources.len() {
            upper
        } else {
            Vec::new()
        };
        Provenance { sources, upper }
    }

    /// The source that located `ip` as `country` in the layered table, or
    /// None when it cannot be told: the layers kept disagree with
    /// `country` (an answer from another generation of the data, read
    /// while a reload replaced it), or the tables were not kept.
    pub fn located_by(&self, ip: IpAddr, country: CountryCode) -> Option<&SourceInfo> {
        let (last, upper_sources) = self.sources.split_last()?;
        if upper_sources.len() != self.upper.len() {
            return None;
        }
        for (table, source) in self.upper.iter().zip(upper_sources) {
            if let Some((_, c)) = table.lookup(ip) {
                return (c == country).then_some(source);
            }
        }
        Some(last)
    }

    /// The sources, in priority order.
    pub fn sources(&self) -> &[SourceInfo] {
        &self.sources
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Aliases, Format, Table};

    fn info(name: &str) -> SourceInfo {
        SourceInfo {
            path: name.into(),
            format: Format::Csv,
            database_type: None,
            build_epoch: None,
            sha256: String::new(),
        }
    }

    fn table(v4: &[(&str, &str)]) -> GeoTable {
        GeoTable {
            v4: Table::from_entries(
                v4.iter()
                    .map(|(n, c)| (n.parse().expect("net"), c.parse().expect("code"))),
            ),
            v6: Table::default(),
            aliases: Aliases::NONE,
        }
    }

    #[test]
    fn the_first_layer_that_locates_is_named() {
        let cc = |s: &str| s.parse::<CountryCode>().expect("code");
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let feed = table(&[("198.51.100.0/28", "DE")]);
        let cloud = table(&[("198.51.100.0/24", "XA"), ("198.18.0.0/16", "IE")]);
        let p = Provenance::new(
            vec![info("feed.csv"), info("aws.json"), info("base.mmdb")],
            vec![feed, cloud],
        );
        let by = |a: &str, c: &str| {
            p.located_by(ip(a), cc(c))
                .map(|s| s.path.display().to_string())
        };
        assert_eq!(by("198.51.100.1", "DE").as_deref(), Some("feed.csv"));
        assert_eq!(by("198.51.100.20", "XA").as_deref(), Some("aws.json"));
        assert_eq!(by("198.18.1.1", "IE").as_deref(), Some("aws.json"));
        assert_eq!(by("8.8.8.8", "US").as_deref(), Some("base.mmdb"));
        // Another generation's answer: not attributed.
        assert_eq!(by("198.51.100.1", "FR"), None);
        // Tables not kept for several sources: no answer rather than a guess.
        let unkept = Provenance::new(vec![info("a"), info("b")], Vec::new());
        assert!(unkept.located_by(ip("8.8.8.8"), cc("US")).is_none());
        let single = Provenance::new(vec![info("only.mmdb")], Vec::new());
        assert_eq!(
            single
                .located_by(ip("8.8.8.8"), cc("US"))
                .map(|s| s.path.clone()),
            Some("only.mmdb".into())
        );
        assert!(
            Provenance::default()
                .located_by(ip("8.8.8.8"), cc("US"))
                .is_none()
        );
    }
}
