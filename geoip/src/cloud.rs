//! Cloud provider range files as sources: AWS `ip-ranges.json`, Google
//! Cloud `cloud.json` and Azure Service Tags, each prefix located by the
//! region the provider names for it.
//!
//! A provider's addresses are usually registered in its home country
//! whatever region serves them, so a GeoIP database alone places an EU
//! region's storage endpoint in the US. The provider's own file says which
//! region serves each prefix; the reviewed table in
//! `geoip/data/cloud-regions.txt` says which country each region is in.
//!
//! - AWS: by `network_border_group`, which names Local Zones (a Local Zone
//!   may be in another country than its parent region: `us-east-1-bue-1`
//!   is Buenos Aires). `GLOBAL` (CloudFront, Route 53 edges) is the anycast
//!   class.
//! - Google Cloud: by `scope`; `global` (any case) is the anycast class.
//! - Azure: by `properties.region`. A tag with an empty region (AzureCloud,
//!   AzureFrontDoor.Frontend, management endpoints) is global; such tags
//!   aggregate regional ones, so a global prefix that a regional prefix
//!   covers (equal or wider) is left to the regional one, and only the rest
//!   of a global prefix is the anycast class.
//!
//! A region not in the table is never given its parent region's country (a
//! Local Zone of `us-east-1` may be in Chile): its prefixes are left
//! unlocated, for the next source, with a warning naming the region. The
//! same prefix placed in two countries by one file is the anycast class.
//! Nested prefixes: the most specific wins. A malformed file or entry is an
//! error naming the file and the entry, never skipped.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    path::Path,
    sync::LazyLock,
};

use ipnetwork::IpNetwork;
use serde_json::Value;

use crate::{
    Aliases, CountryCode, GeoTable, GeoipError, Stats,
    table::{Table, WideRun, paint},
};

/// First and last address of `::ffff:0:0/96`.
const MAPPED: (u128, u128) = (0xffff_0000_0000, 0xffff_ffff_ffff);

/// Where the region table lives, for messages.
const REGIONS_FILE: &str = "geoip/data/cloud-regions.txt";

/// The reviewed region -> country table.
const REGIONS_DATA: &str = include_str!("../data/cloud-regions.txt");

/// A cloud provider whose range file format is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Provider {
    /// Amazon Web Services, `ip-ranges.json`.
    Aws,
    /// Google Cloud, `cloud.json`.
    Gcp,
    /// Microsoft Azure, Service Tags (`ServiceTags_Public_*.json`).
    Azure,
}

impl Provider {
    /// The provider's short name, as in the region table: `aws`, `gcp`,
    /// `azure`.
    pub fn label(self) -> &'static str {
        match self {
            Provider::Aws => "aws",
            Provider::Gcp => "gcp",
            Provider::Azure => "azure",
        }
    }

    /// The field of an entry that names its region.
    fn region_field(self) -> &'static str {
        match self {
            Provider::Aws => "network_border_group",
            Provider::Gcp => "scope",
            Provider::Azure => "region",
        }
    }

    fn from_label(label: &str) -> Option<Provider> {
        match label {
            "aws" => Some(Provider::Aws),
            "gcp" => Some(Provider::Gcp),
            "azure" => Some(Provider::Azure),
            _ => None,
        }
    }
}

/// What parsing a cloud range file or a geofeed yields.
#[derive(Clone, Debug)]
pub(crate) struct Parsed {
    /// The aggregated tables.
    pub(crate) table: GeoTable,
    /// Counts before and after aggregation.
    pub(crate) stats: Stats,
    /// What an operator should know but that does not stop the load
    /// (regions not in the reviewed table, conflicting prefixes).
    pub(crate) warnings: Vec<String>,
}

/// Which provider's format `text` is, by its JSON shape; `None` when it is
/// not JSON or none of them. Cheap on non-JSON text (a CSV is not parsed).
pub fn detect(text: &str) -> Option<Provider> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let root: Value = serde_json::from_str(text).ok()?;
    let obj = root.as_object()?;
    if obj.get("values").is_some_and(Value::is_array)
        && (obj.contains_key("changeNumber") || obj.contains_key("cloud"))
    {
        return Some(Provider::Azure);
    }
    let prefixes = obj.get("prefixes")?.as_array()?;
    let first_has = |keys: &[&str]| {
        prefixes
            .first()
            .and_then(Value::as_object)
            .is_some_and(|e| keys.iter().any(|k| e.contains_key(*k)))
    };
    if obj.contains_key("ipv6_prefixes")
        || obj.contains_key("createDate")
        || first_has(&["ip_prefix"])
    {
        return Some(Provider::Aws);
    }
    if obj.contains_key("creationTime") || first_has(&["ipv4Prefix", "ipv6Prefix"]) {
        return Some(Provider::Gcp);
    }
    None
}

/// One table line: provider, region, country (or `anycast`).
type RegionLine<'a> = (Provider, &'a str, CountryCode);

/// Parses the region table strictly: every significant line must be
/// `provider region country`, with an assigned country or `anycast`.
/// Errors are `(line, message)`.
fn parse_regions(text: &str) -> Result<Vec<RegionLine<'_>>, (usize, String)> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let fields: Vec<&str> = content.split_whitespace().collect();
        let &[provider, region, country] = fields.as_slice() else {
            return Err((
                i + 1,
                format!("expected `provider region country`, found {content:?}"),
            ));
        };
        let provider = Provider::from_label(provider)
            .ok_or_else(|| (i + 1, format!("unknown provider {provider:?}")))?;
        let country = if country == "anycast" {
            CountryCode::ANYCAST
        } else {
            match CountryCode::from_text(country) {
                Some(c) if c.is_assigned() && country.bytes().all(|b| b.is_ascii_uppercase()) => c,
                _ => {
                    return Err((
                        i + 1,
                        format!("{country:?} is neither an assigned ISO 3166-1 code nor `anycast`"),
                    ));
                }
            }
        };
        out.push((provider, region, country));
    }
    Ok(out)
}

/// The region table, keyed by provider and lowercased region name. The
/// embedded file is checked by a unit test; a line that does not parse is
/// left out here rather than panicking (its regions stay unlocated, which
/// the warnings show).
static REGIONS: LazyLock<HashMap<(Provider, String), CountryCode>> = LazyLock::new(|| {
    REGIONS_DATA
        .lines()
        .filter_map(|line| parse_regions(line).ok())
        .flatten()
        .map(|(p, r, c)| ((p, r.to_ascii_lowercase()), c))
        .collect()
});

/// The country of a provider's region, case-insensitively.
fn region_country(provider: Provider, region: &str) -> Option<CountryCode> {
    REGIONS
        .get(&(provider, region.to_ascii_lowercase()))
        .copied()
}

/// A prefix, family and first address: `(is_v6, start, length)`.
type Key = (bool, u128, u8);

/// What one file says about one prefix.
#[derive(Default)]
struct Claims {
    /// Countries of the (known) regions listing it, distinct.
    countries: BTreeSet<CountryCode>,
    /// Listed by an Azure tag without a region.
    global: bool,
    /// Listed under a region the table does not have.
    unknown: bool,
}

/// The claims of a whole file.
#[derive(Default)]
struct Collector {
    claims: BTreeMap<Key, Claims>,
    /// Unknown region name -> the prefixes listed under it.
    unknown: BTreeMap<String, BTreeSet<Key>>,
}

impl Collector {
    /// `key` is listed under `region` (`None`: an Azure global tag).
    fn claim(&mut self, provider: Provider, key: Key, region: Option<&str>) {
        let claims = self.claims.entry(key).or_default();
        match region {
            None => claims.global = true,
            Some(r) => match region_country(provider, r) {
                Some(c) => {
                    claims.countries.insert(c);
                }
                None => {
                    claims.unknown = true;
                    self.unknown.entry(r.to_owned()).or_default().insert(key);
                }
            },
        }
    }

    fn finish(self, provider: Provider) -> Parsed {
        let mut stats = Stats::default();
        let mut warnings = Vec::new();
        // Prefixes listed under a region, known or not.
        let regional: HashSet<Key> = self
            .claims
            .iter()
            .filter(|(_, c)| !c.countries.is_empty() || c.unknown)
            .map(|(k, _)| *k)
            .collect();
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        let mut conflicts = 0usize;
        for (key, claims) in &self.claims {
            let country = match claims.countries.len() {
                0 if claims.global && !claims.unknown => {
                    // A global tag aggregates regional ones: where a
                    // regional prefix covers this one, that decides (also
                    // a region not in the table: then the next source).
                    if covered(&regional, *key) {
                        continue;
                    }
                    CountryCode::ANYCAST
                }
                0 => {
                    // Unlocated, also inside a wider located prefix: the
                    // next source decides (a new Local Zone of us-east-1
                    // inside a us-east-1 aggregate may be in Chile).
                    stats.unlocated += 1;
                    let (is_v6, start, len) = *key;
                    if is_v6 { &mut v6 } else { &mut v4 }.push((start, len, None));
                    continue;
                }
                1 => match claims.countries.first() {
                    Some(c) => *c,
                    None => continue,
                },
                _ => {
                    conflicts += 1;
                    CountryCode::ANYCAST
                }
            };
            if country.is_anycast() {
                stats.anycast += 1;
            }
            let (is_v6, start, len) = *key;
            if is_v6 {
                stats.raw_v6 += 1;
                v6.push((start, len, Some(country)));
            } else {
                stats.raw_v4 += 1;
                v4.push((start, len, Some(country)));
            }
        }
        for (region, keys) in &self.unknown {
            let n = keys.len();
            warnings.push(format!(
                "{n} {} of {} {} '{region}' {} not in the reviewed region table \
                 ({REGIONS_FILE}): left to the next source",
                if n == 1 { "prefix" } else { "prefixes" },
                provider.label(),
                provider.region_field(),
                if n == 1 { "is" } else { "are" },
            ));
        }
        if conflicts > 0 {
            warnings.push(format!(
                "{conflicts} {} listed in more than one country: anycast class",
                if conflicts == 1 {
                    "prefix is"
                } else {
                    "prefixes are"
                }
            ));
        }
        Parsed::from_located(v4, v6, stats, warnings)
    }
}

/// The located prefixes of one family: (start, prefix length, country;
/// None leaves a hole for the next source).
pub(crate) type LocatedPrefixes = Vec<(u128, u8, Option<CountryCode>)>;

impl Parsed {
    /// The tables of what a range file or a geofeed located, with the
    /// aggregated counts filled in. Such a file says what it lists: nothing
    /// is looked up through IPv4 (no aliases).
    pub(crate) fn from_located(
        v4: LocatedPrefixes,
        v6: LocatedPrefixes,
        mut stats: Stats,
        warnings: Vec<String>,
    ) -> Parsed {
        let table = GeoTable {
            v4: Table::from_wide_runs(paint_located(v4, 32)),
            v6: Table::from_wide_runs(paint_located(v6, 128)),
            aliases: Aliases::NONE,
        };
        stats.aggregated_v4 = table.v4.len();
        stats.aggregated_v6 = table.v6.len();
        Parsed {
            table,
            stats,
            warnings,
        }
    }
}

/// Like [`paint`] (the most specific prefix decides an address), where a
/// prefix without a country leaves its addresses out of the table, also
/// inside a wider located prefix: the next source decides them.
pub(crate) fn paint_located(items: LocatedPrefixes, bits: u32) -> Vec<WideRun> {
    // A code no input can carry: inputs are assigned ISO codes or XA.
    // Two ASCII letters, so `new` never fails; the fallback is unreachable.
    let hole = CountryCode::new(*b"ZZ").unwrap_or(CountryCode::ANYCAST);
    let items = items
        .into_iter()
        .map(|(s, p, c)| (s, p, c.unwrap_or(hole)))
        .collect();
    let mut runs = paint(items, bits);
    runs.retain(|r| r.country != hole);
    runs
}

/// Whether a prefix in `set` contains `key` (or is `key`).
fn covered(set: &HashSet<Key>, (is_v6, start, len): Key) -> bool {
    let bits: u8 = if is_v6 { 128 } else { 32 };
    (0..=len).rev().any(|p| {
        let host = u32::from(bits - p);
        let s = if host >= 128 {
            0
        } else {
            start & !((1u128 << host) - 1)
        };
        set.contains(&(is_v6, s, p))
    })
}

/// A prefix as listed: CIDR with no host bits set. IPv4-mapped IPv6
/// prefixes are stored as IPv4, where the datapath looks them up.
pub(crate) fn parse_prefix(text: &str) -> Result<Key, String> {
    let net: IpNetwork = text
        .trim()
        .parse()
        .map_err(|e| format!("invalid prefix {text:?}: {e}"))?;
    if net.ip() != net.network() {
        return Err(format!(
            "prefix {net} has host bits set (the network is {}/{})",
            net.network(),
            net.prefix()
        ));
    }
    Ok(match net {
        IpNetwork::V4(n) => (false, u32::from(n.network()).into(), n.prefix()),
        IpNetwork::V6(n) => {
            let s = u128::from(n.network());
            if n.prefix() >= 96 && (MAPPED.0..=MAPPED.1).contains(&s) {
                (false, s - MAPPED.0, n.prefix() - 96)
            } else {
                (true, s, n.prefix())
            }
        }
    })
}

/// Parses a whole range file of `provider`'s format.
pub(crate) fn parse(text: &str, provider: Provider, path: &Path) -> Result<Parsed, GeoipError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let err = |at: String, message: String| GeoipError::Json {
        path: path.to_owned(),
        at,
        message,
    };
    let root: Value = serde_json::from_str(text).map_err(|e| {
        let full = e.to_string();
        // serde_json appends " at line L column C"; `at` says it instead.
        let what = full.split(" at line ").next().unwrap_or(&full).to_owned();
        err(
            format!("line {} column {}", e.line(), e.column()),
            format!("invalid JSON: {what}"),
        )
    })?;
    let mut collector = Collector::default();
    match provider {
        Provider::Aws => {
            for (name, field) in [("prefixes", "ip_prefix"), ("ipv6_prefixes", "ipv6_prefix")] {
                // `ipv6_prefixes` came later than `prefixes`; a file
                // without it lists no IPv6.
                for (i, entry) in list(&root, name, name == "prefixes", provider, path)?
                    .iter()
                    .enumerate()
                {
                    let at = || format!("{name}[{i}]");
                    let fail = |m: String| err(at(), format!("{m} (entry: {})", excerpt(entry)));
                    let prefix = string_field(entry, field).map_err(fail)?;
                    let key = parse_prefix(prefix).map_err(fail)?;
                    let group = string_field(entry, "network_border_group").map_err(fail)?;
                    collector.claim(provider, key, Some(group));
                }
            }
        }
        Provider::Gcp => {
            for (i, entry) in list(&root, "prefixes", true, provider, path)?
                .iter()
                .enumerate()
            {
                let fail = |m: String| {
                    err(
                        format!("prefixes[{i}]"),
                        format!("{m} (entry: {})", excerpt(entry)),
                    )
                };
                let prefix = match (
                    entry.get("ipv4Prefix").and_then(Value::as_str),
                    entry.get("ipv6Prefix").and_then(Value::as_str),
                ) {
                    (Some(p), None) | (None, Some(p)) => p,
                    (Some(_), Some(_)) => {
                        return Err(fail("both `ipv4Prefix` and `ipv6Prefix`".into()));
                    }
                    (None, None) => {
                        return Err(fail(
                            "missing string field `ipv4Prefix` or `ipv6Prefix`".into(),
                        ));
                    }
                };
                let key = parse_prefix(prefix).map_err(fail)?;
                let scope = string_field(entry, "scope").map_err(|m| {
                    // goog.json (all of Google's addresses) has no scopes.
                    fail(format!("{m}; cloud.json names a scope for every prefix"))
                })?;
                collector.claim(provider, key, Some(scope));
            }
        }
        Provider::Azure => {
            for (i, entry) in list(&root, "values", true, provider, path)?
                .iter()
                .enumerate()
            {
                let name = entry.get("name").and_then(Value::as_str).unwrap_or("?");
                let at = || format!("values[{i}] ({name})");
                let fail = |m: String| err(at(), m);
                let props = entry
                    .get("properties")
                    .filter(|p| p.is_object())
                    .ok_or_else(|| fail("missing object `properties`".into()))?;
                let region =
                    string_field(props, "region").map_err(|m| fail(format!("properties: {m}")))?;
                let prefixes = props
                    .get("addressPrefixes")
                    .and_then(Value::as_array)
                    .ok_or_else(|| fail("properties: missing array `addressPrefixes`".into()))?;
                for (j, p) in prefixes.iter().enumerate() {
                    let fail = |m: String| {
                        err(
                            format!("values[{i}] ({name}) addressPrefixes[{j}]"),
                            format!("{m} (entry: {})", excerpt(p)),
                        )
                    };
                    let text = p.as_str().ok_or_else(|| fail("expected a string".into()))?;
                    let key = parse_prefix(text).map_err(fail)?;
                    let region = Some(region.trim()).filter(|r| !r.is_empty());
                    collector.claim(provider, key, region);
                }
            }
        }
    }
    Ok(collector.finish(provider))
}

/// The array `root[name]`; empty when absent and not `required`.
fn list<'a>(
    root: &'a Value,
    name: &str,
    required: bool,
    provider: Provider,
    path: &Path,
) -> Result<&'a [Value], GeoipError> {
    let err = |message: String| GeoipError::Json {
        path: path.to_owned(),
        at: name.to_owned(),
        message,
    };
    match root.get(name) {
        Some(Value::Array(items)) => Ok(items),
        None if !required => Ok(&[]),
        Some(other) => Err(err(format!("expected an array, found {}", excerpt(other)))),
        None => Err(err(format!(
            "missing array `{name}`: not {} range file",
            match provider {
                Provider::Aws => "an AWS",
                Provider::Gcp => "a Google Cloud",
                Provider::Azure => "an Azure Service Tags",
            }
        ))),
    }
}

/// The string value of `entry[name]`, or why not.
fn string_field<'a>(entry: &'a Value, name: &str) -> Result<&'a str, String> {
    match entry.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!(
            "field `{name}` is not a string: {}",
            excerpt(other)
        )),
        None => Err(format!("missing string field `{name}`")),
    }
}

/// A JSON value as compact text, cut to a length fit for one message.
fn excerpt(v: &Value) -> String {
    const MAX: usize = 200;
    let text = v.to_string();
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn cc(s: &str) -> CountryCode {
        s.parse().unwrap()
    }
    fn load(text: &str, provider: Provider) -> Parsed {
        parse(text, provider, Path::new("/data/ranges.json")).expect("parses")
    }
    fn err(text: &str, provider: Provider) -> String {
        parse(text, provider, Path::new("/data/ranges.json"))
            .expect_err("an error")
            .to_string()
    }
    fn v4(p: &Parsed, a: &str) -> Option<CountryCode> {
        p.table.v4.country(a.parse::<Ipv4Addr>().unwrap())
    }
    fn v6(p: &Parsed, a: &str) -> Option<CountryCode> {
        p.table.v6.country(a.parse::<Ipv6Addr>().unwrap())
    }
    fn aws(v4: &[(&str, &str)], v6: &[(&str, &str)]) -> String {
        let entry = |(p, g): &(&str, &str), field: &str| {
            format!(
                r#"{{"{field}": "{p}", "region": "x", "service": "AMAZON", "network_border_group": "{g}"}}"#
            )
        };
        format!(
            r#"{{"syncToken": "1", "createDate": "2026-12-07-00-00-00",
                "prefixes": [{}], "ipv6_prefixes": [{}]}}"#,
            v4.iter()
                .map(|e| entry(e, "ip_prefix"))
                .collect::<Vec<_>>()
                .join(","),
            v6.iter()
                .map(|e| entry(e, "ipv6_prefix"))
                .collect::<Vec<_>>()
                .join(","),
        )
    }

    #[test]
    fn region_table_is_well_formed() {
        let lines = parse_regions(REGIONS_DATA)
            .unwrap_or_else(|(line, m)| panic!("{REGIONS_FILE}:{line}: {m}"));
        let mut seen = HashSet::new();
        for (p, region, country) in &lines {
            assert!(
                seen.insert((*p, region.to_ascii_lowercase())),
                "duplicate {} {region}",
                p.label()
            );
            assert!(country.is_assigned() || country.is_anycast(), "{region}");
        }
        assert_eq!(REGIONS.len(), lines.len(), "the lazy table lost lines");
        // The ones the brief and the tests rely on.
        for (p, r, c) in [
            (Provider::Aws, "eu-central-1", "DE"),
            (Provider::Aws, "us-east-1-bue-1", "AR"),
            (Provider::Aws, "GLOBAL", "XA"),
            (Provider::Aws, "eusc-de-east-1", "DE"),
            (Provider::Gcp, "europe-west4", "NL"),
            (Provider::Gcp, "global", "XA"),
            (Provider::Azure, "westeurope", "NL"),
            (Provider::Azure, "germanywc", "DE"),
            (Provider::Azure, "qatarcentral", "QA"),
        ] {
            assert_eq!(region_country(p, r), Some(cc(c)), "{r}");
        }
        assert!(parse_regions("aws x-1 UK\n").is_err(), "UK is not assigned");
        assert!(
            parse_regions("aws x-1 de\n").is_err(),
            "codes are upper case"
        );
        assert!(parse_regions("oci x-1 DE\n").is_err());
        assert!(parse_regions("aws x-1\n").is_err());
        assert_eq!(
            parse_regions("# c\n\naws x-1 DE # here\n").unwrap().len(),
            1
        );
    }

    #[test]
    fn detects_each_format_by_shape() {
        assert_eq!(detect(&aws(&[], &[])), Some(Provider::Aws));
        assert_eq!(
            detect(r#"{"prefixes": [{"ip_prefix": "192.0.2.0/24"}]}"#),
            Some(Provider::Aws)
        );
        assert_eq!(
            detect(r#"{"syncToken": "1", "creationTime": "2026-12-07T00:00:00", "prefixes": []}"#),
            Some(Provider::Gcp)
        );
        assert_eq!(
            detect(r#"{"prefixes": [{"ipv6Prefix": "2001:db8::/32", "scope": "global"}]}"#),
            Some(Provider::Gcp)
        );
        assert_eq!(
            detect("\u{feff}{\"changeNumber\": 1, \"cloud\": \"Public\", \"values\": []}"),
            Some(Provider::Azure)
        );
        assert_eq!(detect("192.0.2.0/24,DE\n"), None);
        assert_eq!(detect(r#"{"prefixes": []}"#), None);
        assert_eq!(detect(r#"{"values": []}"#), None);
        assert_eq!(detect("{not json"), None);
        assert_eq!(detect("[1, 2]"), None);
        assert_eq!(Provider::Azure.label(), "azure");
        assert_eq!(Provider::Gcp.label(), "gcp");
        assert_eq!(Provider::Aws.label(), "aws");
    }

    #[test]
    fn aws_locates_by_network_border_group() {
        let p = load(
            &aws(
                &[
                    ("198.51.100.0/24", "eu-central-1"),
                    // Listed twice (AMAZON and EC2): one prefix.
                    ("198.51.100.0/24", "eu-central-1"),
                    ("203.0.113.0/24", "GLOBAL"),
                    // A Local Zone of us-east-1 in Argentina.
                    ("192.0.2.0/25", "us-east-1-bue-1"),
                    ("192.0.2.128/25", "us-east-1"),
                ],
                &[
                    ("2001:db8::/32", "eu-west-3"),
                    ("2001:db8:1::/48", "GLOBAL"),
                ],
            ),
            Provider::Aws,
        );
        assert_eq!(v4(&p, "198.51.100.7"), Some(cc("DE")));
        assert_eq!(v4(&p, "203.0.113.7"), Some(CountryCode::ANYCAST));
        assert_eq!(v4(&p, "192.0.2.1"), Some(cc("AR")));
        assert_eq!(v4(&p, "192.0.2.200"), Some(cc("US")));
        assert_eq!(v6(&p, "2001:db8::1"), Some(cc("FR")));
        assert_eq!(v6(&p, "2001:db8:1::1"), Some(CountryCode::ANYCAST));
        assert_eq!(p.stats.raw_v4, 4);
        assert_eq!(p.stats.raw_v6, 2);
        assert_eq!(p.stats.anycast, 2);
        assert_eq!(p.stats.unlocated, 0);
        assert_eq!(p.stats.aggregated_v4, p.table.v4.len());
        // The /32 around the /48 is the 16 prefixes that cover the rest.
        assert_eq!(p.stats.aggregated_v6, 17);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    }

    #[test]
    fn unknown_regions_are_left_unlocated_with_one_warning_each() {
        let p = load(
            &aws(
                &[
                    ("198.51.100.0/24", "xx-new-1"),
                    ("198.51.100.0/24", "xx-new-1"),
                    ("203.0.113.0/24", "xx-new-1"),
                    // A Local Zone not in the table is not given its parent
                    // region's country.
                    ("192.0.2.0/24", "us-east-1-zzz-9"),
                    ("10.0.0.0/8", "eu-west-1"),
                    // Inside a located prefix, still left to the next source.
                    ("10.5.0.0/16", "xx-new-1"),
                ],
                &[("2001:db8::/32", "xx-new-1")],
            ),
            Provider::Aws,
        );
        assert_eq!(v4(&p, "198.51.100.1"), None);
        assert_eq!(v4(&p, "192.0.2.1"), None);
        assert_eq!(v6(&p, "2001:db8::1"), None);
        assert_eq!(v4(&p, "10.1.2.3"), Some(cc("IE")));
        assert_eq!(v4(&p, "10.5.2.3"), None);
        assert_eq!(v4(&p, "10.6.0.0"), Some(cc("IE")));
        assert_eq!(p.stats.unlocated, 5);
        assert_eq!((p.stats.raw_v4, p.stats.raw_v6), (1, 0));
        assert_eq!(
            p.warnings,
            [
                "1 prefix of aws network_border_group 'us-east-1-zzz-9' is not in the reviewed \
                 region table (geoip/data/cloud-regions.txt): left to the next source",
                "4 prefixes of aws network_border_group 'xx-new-1' are not in the reviewed \
                 region table (geoip/data/cloud-regions.txt): left to the next source",
            ]
        );
    }

    #[test]
    fn a_prefix_in_two_countries_is_anycast_and_the_most_specific_wins() {
        let p = load(
            &aws(
                &[
                    ("198.51.100.0/24", "eu-central-1"),
                    ("198.51.100.0/24", "eu-west-3"),
                    ("10.0.0.0/8", "us-east-1"),
                    ("10.1.0.0/16", "eu-north-1"),
                    // Known region and unknown one: the known one decides.
                    ("192.0.2.0/24", "eu-south-1"),
                    ("192.0.2.0/24", "xx-new-1"),
                ],
                &[],
            ),
            Provider::Aws,
        );
        assert_eq!(v4(&p, "198.51.100.1"), Some(CountryCode::ANYCAST));
        assert_eq!(v4(&p, "10.1.2.3"), Some(cc("SE")));
        assert_eq!(v4(&p, "10.2.0.0"), Some(cc("US")));
        assert_eq!(v4(&p, "192.0.2.9"), Some(cc("IT")));
        assert_eq!(p.stats.anycast, 1);
        assert_eq!(p.stats.unlocated, 0);
        assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
        assert_eq!(
            p.warnings[1],
            "1 prefix is listed in more than one country: anycast class"
        );
    }

    #[test]
    fn mapped_prefixes_are_stored_as_ipv4() {
        let p = load(
            &aws(&[], &[("::ffff:198.51.100.0/120", "eu-central-1")]),
            Provider::Aws,
        );
        assert!(p.table.v6.is_empty());
        assert_eq!(v4(&p, "198.51.100.9"), Some(cc("DE")));
        assert_eq!((p.stats.raw_v4, p.stats.raw_v6), (1, 0));
    }

    #[test]
    fn gcp_locates_by_scope() {
        let p = load(
            r#"{"syncToken": "1", "creationTime": "2026-12-07T00:00:00",
                "prefixes": [
                  {"ipv4Prefix": "198.51.100.0/24", "service": "Google Cloud", "scope": "europe-west3"},
                  {"ipv4Prefix": "192.0.2.0/24", "service": "Google Cloud", "scope": "europe-west4"},
                  {"ipv4Prefix": "203.0.113.0/24", "service": "Google Cloud", "scope": "Global"},
                  {"ipv6Prefix": "2001:db8::/32", "service": "Google Cloud", "scope": "europe-central2"},
                  {"ipv6Prefix": "2001:db9::/32", "service": "Google Cloud", "scope": "mars-north1"}
                ]}"#,
            Provider::Gcp,
        );
        assert_eq!(v4(&p, "198.51.100.1"), Some(cc("DE")));
        assert_eq!(v4(&p, "192.0.2.1"), Some(cc("NL")));
        assert_eq!(v4(&p, "203.0.113.1"), Some(CountryCode::ANYCAST));
        assert_eq!(v6(&p, "2001:db8::1"), Some(cc("PL")));
        assert_eq!(v6(&p, "2001:db9::1"), None);
        assert_eq!(p.stats.unlocated, 1);
        assert_eq!(p.stats.anycast, 1);
        assert_eq!(p.warnings.len(), 1);
        assert!(
            p.warnings[0].starts_with("1 prefix of gcp scope 'mars-north1' is not in"),
            "{:?}",
            p.warnings
        );
    }

    fn azure(values: &[(&str, &str, &[&str])]) -> String {
        let values: Vec<String> = values
            .iter()
            .map(|(name, region, prefixes)| {
                format!(
                    r#"{{"name": "{name}", "id": "{name}", "properties": {{"changeNumber": 1,
                        "region": "{region}", "regionId": 0, "platform": "Azure",
                        "systemService": "", "addressPrefixes": [{}]}}}}"#,
                    prefixes
                        .iter()
                        .map(|p| format!("\"{p}\""))
                        .collect::<Vec<_>>()
                        .join(",")
                )
            })
            .collect();
        format!(
            r#"{{"changeNumber": 1, "cloud": "Public", "values": [{}]}}"#,
            values.join(",")
        )
    }

    #[test]
    fn azure_regional_tags_win_over_global_ones() {
        let p = load(
            &azure(&[
                // The global tag lists the regional prefixes again, a
                // wider range, a narrower one inside a regional prefix,
                // and one of its own.
                (
                    "AzureCloud",
                    "",
                    &[
                        "198.51.100.0/24",
                        "10.0.0.0/8",
                        "192.0.2.64/26",
                        "203.0.113.0/24",
                        "2001:db8::/32",
                        // Listed under a region not in the table too, and
                        // inside it: neither is anycast.
                        "100.64.0.0/10",
                        "100.64.1.0/30",
                    ],
                ),
                ("AzureCloud.westeurope", "westeurope", &["198.51.100.0/24"]),
                ("AzureCloud.germanywc", "germanywc", &["10.1.0.0/16"]),
                ("Storage.northeurope", "northeurope", &["192.0.2.0/24"]),
                (
                    "AzureFrontDoor.Frontend",
                    "",
                    &["2001:db9::/48", "2001:db8:1::/48"],
                ),
                (
                    "AzureCloud.swedencentral",
                    "swedencentral",
                    &["2001:db8::/32"],
                ),
                ("AzureCloud.newplace", "newplace", &["100.64.0.0/10"]),
            ]),
            Provider::Azure,
        );
        assert_eq!(
            v4(&p, "198.51.100.1"),
            Some(cc("NL")),
            "equal: regional wins"
        );
        assert_eq!(
            v4(&p, "10.1.0.1"),
            Some(cc("DE")),
            "more specific regional wins"
        );
        assert_eq!(v4(&p, "10.2.0.1"), Some(CountryCode::ANYCAST));
        assert_eq!(
            v4(&p, "192.0.2.65"),
            Some(cc("IE")),
            "covered global is left"
        );
        assert_eq!(v4(&p, "203.0.113.1"), Some(CountryCode::ANYCAST));
        assert_eq!(v6(&p, "2001:db8::1"), Some(cc("SE")));
        assert_eq!(
            v6(&p, "2001:db8:1::1"),
            Some(cc("SE")),
            "covered global is left"
        );
        assert_eq!(v6(&p, "2001:db9::1"), Some(CountryCode::ANYCAST));
        assert_eq!(v4(&p, "100.64.0.1"), None);
        assert_eq!(v4(&p, "100.64.1.1"), None);
        assert_eq!(p.stats.anycast, 3, "10/8, 203.0.113/24, 2001:db9::/48");
        assert_eq!(p.stats.unlocated, 1);
        assert_eq!((p.stats.raw_v4, p.stats.raw_v6), (5, 2));
        assert_eq!(p.warnings.len(), 1);
        assert!(
            p.warnings[0].contains("azure region 'newplace'"),
            "{:?}",
            p.warnings
        );
    }

    #[test]
    fn empty_lists_are_empty_tables() {
        for (text, provider) in [
            (aws(&[], &[]), Provider::Aws),
            (r#"{"prefixes": []}"#.to_owned(), Provider::Aws),
            (
                r#"{"creationTime": "x", "prefixes": []}"#.to_owned(),
                Provider::Gcp,
            ),
            (azure(&[]), Provider::Azure),
            (azure(&[("Empty", "", &[])]), Provider::Azure),
        ] {
            let p = load(&text, provider);
            assert!(p.table.v4.is_empty() && p.table.v6.is_empty());
            assert_eq!(p.stats, Stats::default());
            assert!(p.warnings.is_empty());
        }
    }

    #[test]
    fn bad_input_names_file_and_entry() {
        let e = err("{\"prefixes\": [\n1,", Provider::Aws);
        assert!(
            e.starts_with("/data/ranges.json: line 2 column 2: invalid JSON: "),
            "{e}"
        );
        let e = err(r#"{"syncToken": "1"}"#, Provider::Aws);
        assert_eq!(
            e,
            "/data/ranges.json: prefixes: missing array `prefixes`: not an AWS range file"
        );
        let e = err(r#"{"prefixes": {}}"#, Provider::Gcp);
        assert_eq!(
            e,
            "/data/ranges.json: prefixes: expected an array, found {}"
        );
        let e = err(
            &aws(
                &[("10.0.0.0/8", "us-east-1"), ("10.0.0.0/33", "us-east-1")],
                &[],
            ),
            Provider::Aws,
        );
        assert!(
            e.starts_with("/data/ranges.json: prefixes[1]: invalid prefix \"10.0.0.0/33\""),
            "{e}"
        );
        assert!(e.contains("(entry: {\"ip_prefix\":\"10.0.0.0/33\""), "{e}");
        let e = err(&aws(&[], &[("2001:db8::1/32", "us-east-1")]), Provider::Aws);
        assert!(
            e.starts_with(
                "/data/ranges.json: ipv6_prefixes[0]: prefix 2001:db8::1/32 has host bits set"
            ),
            "{e}"
        );
        let e = err(
            r#"{"prefixes": [{"ip_prefix": "10.0.0.0/8", "region": "us-east-1"}]}"#,
            Provider::Aws,
        );
        assert!(
            e.starts_with(
                "/data/ranges.json: prefixes[0]: missing string field `network_border_group`"
            ),
            "{e}"
        );
        let e = err(
            r#"{"prefixes": [{"ip_prefix": 10, "network_border_group": "us-east-1"}]}"#,
            Provider::Aws,
        );
        assert!(
            e.contains("prefixes[0]: field `ip_prefix` is not a string: 10"),
            "{e}"
        );
        let e = err(
            r#"{"prefixes": [{"ipv4Prefix": "10.0.0.0/8", "service": "Google"}]}"#,
            Provider::Gcp,
        );
        assert!(
            e.contains("prefixes[0]: missing string field `scope`"),
            "{e}"
        );
        let e = err(r#"{"prefixes": [{"scope": "global"}]}"#, Provider::Gcp);
        assert!(
            e.contains("prefixes[0]: missing string field `ipv4Prefix` or `ipv6Prefix`"),
            "{e}"
        );
        let e = err(
            &azure(&[
                ("Ok", "westeurope", &["10.0.0.0/8"]),
                ("Bad", "westeurope", &["10.0.0.0/8", "nonsense"]),
            ]),
            Provider::Azure,
        );
        assert!(
            e.starts_with(
                "/data/ranges.json: values[1] (Bad) addressPrefixes[1]: invalid prefix \"nonsense\""
            ),
            "{e}"
        );
        let e = err(
            r#"{"values": [{"name": "X", "properties": {"addressPrefixes": []}}]}"#,
            Provider::Azure,
        );
        assert_eq!(
            e,
            "/data/ranges.json: values[0] (X): properties: missing string field `region`"
        );
        let e = err(r#"{"values": [{"name": "X"}]}"#, Provider::Azure);
        assert_eq!(
            e,
            "/data/ranges.json: values[0] (X): missing object `properties`"
        );
    }
}
