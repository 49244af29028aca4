//! CSV sources: `network,country` rows (`198.51.100.0/24,DE`) or
//! `first,last,country` ranges (`1.0.0.0,1.0.0.255,AU`, the ip-location-db
//! layout), one per line.
//!
//! `#` starts a comment (whole line or trailing), blank lines are skipped,
//! fields are trimmed and may be double-quoted, and the first significant
//! line may be a header (`network,country`). Country codes are
//! case-insensitive. Rows may overlap: ranges are split into their CIDR
//! cover, and the most specific prefix wins (for the same prefix, the later
//! row). A bad row is an error naming the file and line, never skipped:
//! a policy must not silently lose part of its input.
//!
//! Rows inside `::ffff:0:0/96` (IPv4-mapped, as some IPv6 CSVs write IPv4)
//! are stored as IPv4, where the datapath looks such addresses up.

use std::{net::IpAddr, path::Path, str::FromStr};

use ipnetwork::IpNetwork;

use crate::{
    CountryCode, GeoTable, GeoipError, Stats,
    table::{Cover, Table, paint},
};

/// First and last address of `::ffff:0:0/96`.
const MAPPED: (u128, u128) = (0xffff_0000_0000, 0xffff_ffff_ffff);

/// One row, resolved to a family and an inclusive range or prefix.
enum Row {
    V4(Vec<(u128, u8)>),
    V6(Vec<(u128, u8)>),
}

/// Parses a whole CSV file.
pub(crate) fn parse(text: &str, path: &Path) -> Result<(GeoTable, Stats), GeoipError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut v4: Vec<(u128, u8, CountryCode)> = Vec::new();
    let mut v6: Vec<(u128, u8, CountryCode)> = Vec::new();
    let mut stats = Stats::default();
    let mut seen_significant = false;

    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let fields: Vec<&str> = content.split(',').map(unquote).collect();
        let first_significant = !seen_significant;
        seen_significant = true;
        if first_significant && is_header(&fields) {
            continue;
        }
        let err = |message: String| GeoipError::Csv {
            path: path.to_owned(),
            line,
            message,
        };
        let (row, country) =
            parse_row(&fields).map_err(|m| err(format!("{m} (line: {content:?})")))?;
        if country.is_anycast() {
            stats.anycast += 1;
        }
        match row {
            Row::V4(prefixes) => {
                stats.raw_v4 += 1;
                v4.extend(prefixes.into_iter().map(|(s, p)| (s, p, country)));
            }
            Row::V6(prefixes) => {
                stats.raw_v6 += 1;
                v6.extend(prefixes.into_iter().map(|(s, p)| (s, p, country)));
            }
        }
    }

    let table = GeoTable {
        v4: Table::from_wide_runs(paint(v4, 32)),
        v6: Table::from_wide_runs(paint(v6, 128)),
        // A CSV row is what it says: no range is looked up through IPv4.
        aliases: crate::Aliases::NONE,
    };
    stats.aggregated_v4 = table.v4.len();
    stats.aggregated_v6 = table.v6.len();
    Ok((table, stats))
}

fn unquote(field: &str) -> &str {
    let f = field.trim();
    f.strip_prefix('"')
        .and_then(|f| f.strip_suffix('"'))
        .unwrap_or(f)
        .trim()
}

/// A header has only word-like fields (`network`, `start_ip`, `country code`)
/// and a first field that is not an address.
fn is_header(fields: &[&str]) -> bool {
    let wordy = |f: &&str| {
        f.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ' ' | '-'))
    };
    fields.iter().all(wordy)
        && fields
            .first()
            .is_some_and(|f| f.parse::<IpAddr>().is_err() && f.parse::<IpNetwork>().is_err())
        // A lone "DE" style token is more likely a broken row than a header.
        && fields.first().is_some_and(|f| f.len() > 2)
}

/// A row's country: an assigned ISO 3166-1 alpha-2 code, as a policy must
/// name it. A CSV is written by hand or by a script, so `UK` (the United
/// Kingdom is `GB`) or `EU` is a mistake: located under a code no policy
/// can approve, its addresses would be refused with nothing said. `XA`
/// (the anycast class) is accepted: an operator marks anycast ranges so.
fn parse_country(text: &str) -> Result<CountryCode, String> {
    let code = CountryCode::from_str(text).map_err(|e| e.to_string())?;
    // XA marks the anycast class: decided by the `anycast` policy.
    if !code.is_assigned() && !code.is_anycast() {
        return Err(format!(
            "{:?} is not an assigned ISO 3166-1 alpha-2 country code \
             (nor XA, the anycast class)",
            text.trim()
        ));
    }
    Ok(code)
}

fn parse_row(fields: &[&str]) -> Result<(Row, CountryCode), String> {
    match *fields {
        [net, country] => {
            let net: IpNetwork = net
                .parse()
                .map_err(|e| format!("invalid network {net:?}: {e}"))?;
            if net.ip() != net.network() {
                return Err(format!(
                    "network {net} has host bits set (the network is {}/{})",
                    net.network(),
                    net.prefix()
                ));
            }
            let country = parse_country(country)?;
            let row = match net {
                IpNetwork::V4(n) => Row::V4(vec![(u32::from(n.network()).into(), n.prefix())]),
                IpNetwork::V6(n) => {
                    let s = u128::from(n.network());
                    if n.prefix() >= 96 && s >= MAPPED.0 && s <= MAPPED.1 {
                        Row::V4(vec![(s - MAPPED.0, n.prefix() - 96)])
                    } else {
                        Row::V6(vec![(s, n.prefix())])
                    }
                }
            };
            Ok((row, country))
        }
        [first, last, country] => {
            let a: IpAddr = first
                .parse()
                .map_err(|e| format!("invalid address {first:?}: {e}"))?;
            let b: IpAddr = last
                .parse()
                .map_err(|e| format!("invalid address {last:?}: {e}"))?;
            let country = parse_country(country)?;
            let row = match (a, b) {
                (IpAddr::V4(a), IpAddr::V4(b)) => {
                    let (a, b) = ordered(u32::from(a).into(), u32::from(b).into(), first, last)?;
                    Row::V4(Cover::new(a, b, 32).collect())
                }
                (IpAddr::V6(a6), IpAddr::V6(b6)) => {
                    let (a, b) = ordered(a6.into(), b6.into(), first, last)?;
                    if a >= MAPPED.0 && b <= MAPPED.1 {
                        Row::V4(Cover::new(a - MAPPED.0, b - MAPPED.0, 32).collect())
                    } else {
                        Row::V6(Cover::new(a, b, 128).collect())
                    }
                }
                _ => {
                    return Err(format!(
                        "range {first} - {last} mixes IPv4 and IPv6 addresses"
                    ));
                }
            };
            Ok((row, country))
        }
        _ => Err(format!(
            "expected `network,country` or `first,last,country`, found {} fields",
            fields.len()
        )),
    }
}

fn ordered(a: u128, b: u128, first: &str, last: &str) -> Result<(u128, u128), String> {
    if a > b {
        Err(format!("range start {first} is after its end {last}"))
    } else {
        Ok((a, b))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn load(text: &str) -> Result<(GeoTable, Stats), GeoipError> {
        parse(text, Path::new("/data/test.csv"))
    }
    fn cc(s: &str) -> CountryCode {
        s.parse().unwrap()
    }
    fn err(text: &str) -> String {
        load(text).expect_err("an error").to_string()
    }

    #[test]
    fn both_row_kinds_comments_header_and_case() {
        let (t, stats) = load(
            "\u{feff}network,country\n\
             # a comment\n\
             \n\
             198.51.100.0/24, de \n\
             2001:db8::/48,us   # trailing comment\n\
             \"1.0.0.0\",\"1.0.0.255\",\"AU\"\n\
             2001:db8:1::,2001:db8:1::ff,NL\n",
        )
        .unwrap();
        assert_eq!(stats.raw_v4, 2);
        assert_eq!(stats.raw_v6, 2);
        assert_eq!(stats.unlocated, 0);
        assert_eq!(t.v4.country(Ipv4Addr::new(198, 51, 100, 7)), Some(cc("DE")));
        assert_eq!(t.v4.country(Ipv4Addr::new(1, 0, 0, 255)), Some(cc("AU")));
        assert_eq!(t.v6.country("2001:db8::1".parse().unwrap()), Some(cc("US")));
        assert_eq!(
            t.v6.country("2001:db8:1::80".parse().unwrap()),
            Some(cc("NL"))
        );
        assert_eq!(t.v6.country("2001:db8:1::100".parse().unwrap()), None);
        assert_eq!(stats.aggregated_v4, 2);
        assert_eq!(stats.aggregated_v6, 2);
    }

    #[test]
    fn more_specific_row_overrides_in_any_order() {
        let (t, _) = load("10.1.0.0/16,US\n10.0.0.0/8,FR\n10.1.2.0,10.1.2.9,DE\n").unwrap();
        assert_eq!(t.v4.country(Ipv4Addr::new(10, 1, 2, 3)), Some(cc("DE")));
        assert_eq!(t.v4.country(Ipv4Addr::new(10, 1, 2, 10)), Some(cc("US")));
        assert_eq!(t.v4.country(Ipv4Addr::new(10, 2, 0, 0)), Some(cc("FR")));
    }

    #[test]
    fn single_addresses_and_mapped_rows() {
        let (t, stats) =
            load("192.0.2.1,DE\n::ffff:198.51.100.0/120,FR\n::ffff:1.2.3.4,::ffff:1.2.3.5,NL\n")
                .unwrap();
        assert_eq!(stats.raw_v4, 3);
        assert!(t.v6.is_empty());
        assert_eq!(t.v4.country(Ipv4Addr::new(192, 0, 2, 1)), Some(cc("DE")));
        assert_eq!(t.v4.country(Ipv4Addr::new(192, 0, 2, 2)), None);
        assert_eq!(
            t.v4.country(Ipv4Addr::new(198, 51, 100, 99)),
            Some(cc("FR"))
        );
        assert_eq!(t.v4.country(Ipv4Addr::new(1, 2, 3, 5)), Some(cc("NL")));
        let (t, _) = load("::/0,DE\n").unwrap();
        assert_eq!(t.v6.country(Ipv6Addr::UNSPECIFIED), Some(cc("DE")));
    }

    #[test]
    fn empty_and_comment_only_files_are_empty_tables() {
        let (t, s) = load("# nothing yet\n\n").unwrap();
        assert!(t.v4.is_empty() && t.v6.is_empty());
        assert_eq!(s, Stats::default());
    }

    #[test]
    fn errors_name_file_line_and_text() {
        let e = err("10.0.0.0/8,DE\n10.0.0.0/33,DE\n");
        assert!(
            e.starts_with("/data/test.csv:2: invalid network \"10.0.0.0/33\""),
            "{e}"
        );
        let e = err("10.0.0.0/8,DEU\n");
        assert!(
            e.starts_with("/data/test.csv:1: invalid country code \"DEU\""),
            "{e}"
        );
        let e = err("10.0.0.0/8,DE\n10.1.0.0/16,UK\n");
        assert!(
            e.contains(":2: \"UK\" is not an assigned ISO 3166-1 alpha-2 country code"),
            "{e}"
        );
        let e = err("10.0.0.0/8,\n");
        assert!(e.contains(":1: invalid country code \"\""), "{e}");
        let e = err("# c\n1.0.0.9,1.0.0.1,AU\n");
        assert!(
            e.contains(":2: range start 1.0.0.9 is after its end 1.0.0.1"),
            "{e}"
        );
        let e = err("1.0.0.0,::1,AU\n");
        assert!(
            e.contains(":1: range 1.0.0.0 - ::1 mixes IPv4 and IPv6"),
            "{e}"
        );
        let e = err("10.0.0.1/24,DE\n");
        assert!(
            e.contains(":1: network 10.0.0.1/24 has host bits set (the network is 10.0.0.0/24)"),
            "{e}"
        );
        let e = err("10.0.0.0/8\n");
        assert!(
            e.contains(":1: expected `network,country` or `first,last,country`, found 1 fields"),
            "{e}"
        );
        let e = err("1.0.0.0,1.0.0.300,AU\n");
        assert!(e.contains(":1: invalid address \"1.0.0.300\""), "{e}");
        assert!(e.contains("(line: \"1.0.0.0,1.0.0.300,AU\")"), "{e}");
        // A header is only accepted first.
        let e = err("10.0.0.0/8,DE\nnetwork,country\n");
        assert!(e.contains(":2: invalid network \"network\""), "{e}");
        // A swapped row is not mistaken for a header.
        let e = err("DE,10.0.0.0/8\n");
        assert!(e.contains(":1: invalid network \"DE\""), "{e}");
    }
}
