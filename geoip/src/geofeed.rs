//! RFC 8805 geofeeds as sources: `prefix,alpha2code,region,city,postal`
//! lines that a network publishes for its own addresses.
//!
//! Only the prefix and the country are used; the region (ISO 3166-2, e.g.
//! `DE-BY`) is checked against the country, city and postal code are
//! ignored, as are fields after them. Trailing fields may be left out. `#`
//! starts a comment, blank lines are skipped, a UTF-8 byte order mark is
//! tolerated.
//!
//! - The prefix must be a network (no host bits set): RFC 8805 lists
//!   prefixes, and `192.0.2.1/24` is a typo whose meaning is unknown.
//! - An empty country is the network saying the prefix has no location:
//!   it is left unlocated (counted), also inside a wider located prefix,
//!   so the next source decides it. It is not an error.
//! - `XA` is the anycast class; other codes must be assigned ISO 3166-1
//!   codes (`UK` or `EU` is a mistake, as in CSV sources).
//! - A geofeed is authoritative per prefix: the same prefix twice with
//!   different countries is an error naming both lines. Nested prefixes:
//!   the most specific wins.
//!
//! A bad line is an error naming the file and the line, never skipped.

use std::{
    collections::{BTreeMap, btree_map::Entry},
    path::Path,
};

use crate::{
    CountryCode, GeoipError, Stats,
    cloud::{Parsed, parse_prefix},
};

/// Parses a whole geofeed.
pub(crate) fn parse(text: &str, path: &Path) -> Result<Parsed, GeoipError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // Prefix -> (country, first line that gave it).
    let mut seen: BTreeMap<(bool, u128, u8), (Option<CountryCode>, usize)> = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let err = |message: String| GeoipError::Csv {
            path: path.to_owned(),
            line,
            message: format!("{message} (line: {content:?})"),
        };
        let mut fields = content.split(',').map(str::trim);
        let prefix = fields.next().unwrap_or("");
        let country = fields.next().unwrap_or("");
        let region = fields.next().unwrap_or("");
        let key = parse_prefix(prefix).map_err(err)?;
        let country = parse_country(country, region).map_err(err)?;
        match seen.entry(key) {
            Entry::Vacant(v) => {
                v.insert((country, line));
            }
            Entry::Occupied(o) => {
                let (earlier, at) = *o.get();
                if earlier != country {
                    let show = |c: Option<CountryCode>| {
                        c.map_or_else(|| "no location".to_owned(), |c| c.to_string())
                    };
                    return Err(err(format!(
                        "prefix {prefix} is {} here but {} on line {at}: a geofeed gives one \
                         location per prefix",
                        show(country),
                        show(earlier)
                    )));
                }
            }
        }
    }

    let mut stats = Stats::default();
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for ((is_v6, start, len), (country, _)) in seen {
        match country {
            None => stats.unlocated += 1,
            Some(c) => {
                if c.is_anycast() {
                    stats.anycast += 1;
                }
                if is_v6 {
                    stats.raw_v6 += 1;
                } else {
                    stats.raw_v4 += 1;
                }
            }
        }
        if is_v6 { &mut v6 } else { &mut v4 }.push((start, len, country));
    }
    Ok(Parsed::from_located(v4, v6, stats, Vec::new()))
}

/// The country of a line: `None` when the field is empty (no location).
/// The region, when it is an ISO 3166-2 code (`DE-BY`), must be in that
/// country; other region text is not checked (only the country is used).
fn parse_country(country: &str, region: &str) -> Result<Option<CountryCode>, String> {
    let region_country = region
        .split_once('-')
        .map(|(cc, _)| cc)
        .filter(|cc| cc.len() == 2 && cc.bytes().all(|b| b.is_ascii_alphabetic()));
    if country.is_empty() {
        return match region_country {
            Some(_) => Err(format!(
                "region {region:?} is given without a country (alpha2code is empty)"
            )),
            None => Ok(None),
        };
    }
    let code = CountryCode::from_text(country).ok_or_else(|| {
        format!("invalid country code {country:?}: expected two ASCII letters (ISO 3166-1 alpha-2)")
    })?;
    if !code.is_assigned() && !code.is_anycast() {
        return Err(format!(
            "{country:?} is not an assigned ISO 3166-1 alpha-2 country code (nor XA, anycast)"
        ));
    }
    if let Some(rc) = region_country
        && !rc.eq_ignore_ascii_case(code.as_str())
    {
        return Err(format!(
            "region {region:?} is not in country {code} (ISO 3166-2 codes start with the \
             country's code)"
        ));
    }
    Ok(Some(code))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn cc(s: &str) -> CountryCode {
        s.parse().unwrap()
    }
    fn load(text: &str) -> Parsed {
        parse(text, Path::new("/data/geofeed.csv")).expect("parses")
    }
    fn err(text: &str) -> String {
        parse(text, Path::new("/data/geofeed.csv"))
            .expect_err("an error")
            .to_string()
    }
    fn v4(p: &Parsed, a: &str) -> Option<CountryCode> {
        p.table.v4.country(a.parse::<Ipv4Addr>().unwrap())
    }
    fn v6(p: &Parsed, a: &str) -> Option<CountryCode> {
        p.table.v6.country(a.parse::<Ipv6Addr>().unwrap())
    }

    #[test]
    fn the_rfc_layout_with_optional_fields_comments_and_bom() {
        let p = load(
            "\u{feff}# geofeed of example.net\n\
             \n\
             198.51.100.0/24,DE,DE-BY,München,\n\
             192.0.2.0/25,fr\n\
             192.0.2.128/25,NL,,Amsterdam,1011 # trailing comment\n\
             2001:db8::/32,SE,SE-AB,Stockholm,,reserved,fields\n\
             203.0.113.0/24,XA,,,\n\
             ::ffff:100.64.0.0/112,PL,Mazowieckie\n",
        );
        assert_eq!(v4(&p, "198.51.100.1"), Some(cc("DE")));
        assert_eq!(v4(&p, "192.0.2.1"), Some(cc("FR")));
        assert_eq!(v4(&p, "192.0.2.200"), Some(cc("NL")));
        assert_eq!(v6(&p, "2001:db8::1"), Some(cc("SE")));
        assert_eq!(v4(&p, "203.0.113.1"), Some(CountryCode::ANYCAST));
        assert_eq!(
            v4(&p, "100.64.0.1"),
            Some(cc("PL")),
            "mapped: stored as IPv4"
        );
        assert_eq!(v4(&p, "100.65.0.0"), None);
        assert_eq!((p.stats.raw_v4, p.stats.raw_v6), (5, 1));
        assert_eq!(p.stats.anycast, 1);
        assert_eq!(p.stats.unlocated, 0);
        assert_eq!(p.stats.aggregated_v4, p.table.v4.len());
        assert_eq!(p.stats.aggregated_v6, 1);
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn empty_country_is_unlocated_and_most_specific_wins() {
        let p = load(
            "10.0.0.0/8,DE\n\
             10.1.0.0/16,\n\
             10.1.2.0/24,AT\n\
             10.2.0.0/16,AT,AT-9\n\
             # the same prefix again with the same country is no conflict\n\
             10.2.0.0/16,at\n\
             2001:db8::/48\n",
        );
        assert_eq!(v4(&p, "10.0.0.1"), Some(cc("DE")));
        assert_eq!(
            v4(&p, "10.1.0.1"),
            None,
            "no location: left to the next source"
        );
        assert_eq!(v4(&p, "10.1.2.1"), Some(cc("AT")));
        assert_eq!(v4(&p, "10.2.0.1"), Some(cc("AT")));
        assert_eq!(v6(&p, "2001:db8::1"), None);
        assert_eq!(p.stats.unlocated, 2);
        assert_eq!(p.stats.raw_v4, 3);
        assert_eq!(p.stats.raw_v6, 0);
    }

    #[test]
    fn empty_and_comment_only_feeds_are_empty_tables() {
        let p = load("# nothing yet\n\n");
        assert!(p.table.v4.is_empty() && p.table.v6.is_empty());
        assert_eq!(p.stats, Stats::default());
    }

    #[test]
    fn bad_lines_are_errors_naming_file_and_line() {
        let e = err("10.0.0.0/8,DE\n10.0.0.1/24,DE\n");
        assert_eq!(
            e,
            "/data/geofeed.csv:2: prefix 10.0.0.1/24 has host bits set (the network is \
             10.0.0.0/24) (line: \"10.0.0.1/24,DE\")"
        );
        let e = err("# c\n10.0.0.0/33,DE\n");
        assert!(
            e.starts_with("/data/geofeed.csv:2: invalid prefix \"10.0.0.0/33\""),
            "{e}"
        );
        let e = err("example.net,DE\n");
        assert!(
            e.starts_with("/data/geofeed.csv:1: invalid prefix \"example.net\""),
            "{e}"
        );
        let e = err("10.0.0.0/8,DE,FR-75,Paris\n");
        assert!(
            e.starts_with("/data/geofeed.csv:1: region \"FR-75\" is not in country DE"),
            "{e}"
        );
        let e = err("10.0.0.0/8,,DE-BY\n");
        assert!(
            e.starts_with("/data/geofeed.csv:1: region \"DE-BY\" is given without a country"),
            "{e}"
        );
        let e = err("10.0.0.0/8,UK\n");
        assert!(
            e.starts_with("/data/geofeed.csv:1: \"UK\" is not an assigned ISO 3166-1"),
            "{e}"
        );
        let e = err("10.0.0.0/8,DEU\n");
        assert!(
            e.starts_with("/data/geofeed.csv:1: invalid country code \"DEU\""),
            "{e}"
        );
        let e = err("10.0.0.0/8,DE\n\n10.0.0.0/8,FR\n");
        assert!(
            e.starts_with(
                "/data/geofeed.csv:3: prefix 10.0.0.0/8 is FR here but DE on line 1: a geofeed \
                 gives one location per prefix"
            ),
            "{e}"
        );
        let e = err("2001:db8::/32,\n2001:db8::/32,SE\n");
        assert!(
            e.starts_with(
                "/data/geofeed.csv:2: prefix 2001:db8::/32 is SE here but no location on line 1"
            ),
            "{e}"
        );
    }
}
