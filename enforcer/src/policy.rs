//! Compiles a validated config and its GeoIP sources into what one policy
//! slot of the datapath holds: the folded exception rules per family, the
//! GeoIP prefix tables per family, and the per-country approval table.
//!
//! Nothing here touches the kernel: a policy that fails to compile leaves
//! the one in force untouched.

use std::{net::IpAddr, path::PathBuf, time::Instant};

use enforcer_common::{APPROVED, COUNTRY_SLOTS, NOT_APPROVED, Rule, RuleKind, UNKNOWN_COUNTRY};
use geoip::{CountryCode, GeoTable, Loaded};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::config::{Anycast, Config, Unknown};

/// The built-in never-geolocated ranges: traffic to them stays on the host,
/// the link or the private network, so GeoIP has nothing to say about it.
/// Private ranges lose to a configured site network that claims them (rule
/// precedence, see [`RuleKind`]).
pub const BUILTIN_RANGES: &[(&str, &str)] = &[
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.168.0.0/16", "private"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("fc00::/7", "private"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

/// An error compiling a policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Geoip(#[from] geoip::GeoipError),
    #[error("built-in range {0:?} does not parse (a bug)")]
    Builtin(&'static str),
}

/// One input rule before folding.
#[derive(Clone, Copy, Debug)]
struct RuleEntry {
    net: IpNetwork,
    kind: RuleKind,
    country: u16,
    id: u16,
}

/// What a loaded GeoIP source contributed.
#[derive(Clone, Debug)]
pub struct SourceReport {
    pub info: geoip::SourceInfo,
    pub stats: geoip::Stats,
    /// What the load said that did not stop it (see `geoip::Loaded`).
    pub warnings: Vec<String>,
    pub load_seconds: f64,
}

/// Everything one policy slot holds.
#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    pub rules_v4: Vec<(Ipv4Network, Rule)>,
    pub rules_v6: Vec<(Ipv6Network, Rule)>,
    pub geo: GeoTable,
    /// Indexed by country index; entry 0 is the `unknown` policy.
    pub approval: Vec<u32>,
    pub sources: Vec<SourceReport>,
    /// Which source located an address (`check`, events).
    pub provenance: std::sync::Arc<geoip::Provenance>,
}

/// The SHA-256 (hex) of the policy in force, for the audit log: a
/// canonical JSON of what decides verdicts (approved countries, unknown
/// policy, exceptions, site networks, the databases by content hash in
/// their order, scope, interfaces, config overrides), so that comments,
/// key order or a database's path do not change it and any change to what
/// is enforced does. The mode is not part of it: mode changes are audited
/// on their own.
pub fn policy_sha256(config: &Config, policy: &CompiledPolicy) -> String {
    use sha2::{Digest as _, Sha256};
    let mut allow: Vec<String> = config.allow.iter().map(ToString::to_string).collect();
    let mut deny: Vec<String> = config.deny.iter().map(ToString::to_string).collect();
    allow.sort();
    deny.sort();
    let canonical = serde_json::json!({
        "v": 1,
        "approved": config.approved.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "unknown": config.unknown.label(),
        "allow": allow,
        "deny": deny,
        "sites": config.sites.iter().map(|s| (s.net.to_string(), s.country.to_string())).collect::<Vec<_>>(),
        "databases": policy.sources.iter().map(|s| s.info.sha256.clone()).collect::<Vec<_>>(),
        "scope": match &config.scope {
            crate::config::Scope::HostWide => vec!["host-wide".to_owned()],
            crate::config::Scope::Cgroups(list) => list.iter().map(|p| p.display().to_string()).collect(),
        },
        "interfaces": config.interfaces,
        "overrides": config.overrides.iter().map(|o| (o.cgroup.display().to_string(), o.mode.label())).collect::<Vec<_>>(),
    });
    // Added only when they differ from what earlier versions always did,
    // so that a config using neither keeps the hash it had: an upgrade
    // alone does not look like a policy change in the audit trail.
    let mut canonical = canonical;
    if config.anycast != Anycast::default() {
        canonical["anycast"] = config.anycast.label().into();
    }
    let formats: Vec<&str> = policy
        .sources
        .iter()
        .map(|s| s.info.format.label())
        .collect();
    if formats
        .iter()
        .any(|f| !matches!(*f, "csv" | "mmdb-maxmind" | "mmdb-flat"))
    {
        canonical["database_formats"] = formats.into();
    }
    let bytes = serde_json::to_vec(&canonical).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    geoip::hex(&digest)
}

impl CompiledPolicy {
    /// Loads every GeoIP source of the config and compiles the policy.
    pub fn compile(config: &Config) -> Result<CompiledPolicy, PolicyError> {
        let mut layers = Vec::with_capacity(config.sources.len());
        let mut sources = Vec::with_capacity(config.sources.len());
        for spec in &config.sources {
            let started = Instant::now();
            let Loaded {
                table,
                stats,
                info,
                warnings,
            } = spec.load()?;
            for w in &warnings {
                tracing::warn!(source = %info.path.display(), kind = info.format.label(), "{w}");
            }
            sources.push(SourceReport {
                info,
                stats,
                warnings,
                load_seconds: started.elapsed().as_secs_f64(),
            });
            layers.push(table);
        }
        // One source is its own layering: moved, not rebuilt (a rebuild
        // holds two more copies of the table at once).
        let geo = if layers.len() == 1 {
            layers.pop().unwrap_or_default()
        } else {
            GeoTable::layered(&layers)
        };
        // Every layer but the last is kept to tell which source located an
        // address (see geoip::Provenance); the last, usually the large
        // database, is not needed for that.
        layers.pop();
        Self::from_layers(config, geo, sources, layers)
    }

    /// Compiles a policy from an already layered GeoIP table. Without the
    /// layers' own tables only a single source can be named by `check`
    /// and the events.
    pub fn from_parts(
        config: &Config,
        geo: GeoTable,
        sources: Vec<SourceReport>,
    ) -> Result<CompiledPolicy, PolicyError> {
        Self::from_layers(config, geo, sources, Vec::new())
    }

    /// [`from_parts`](Self::from_parts) with the tables of every layer but
    /// the last (`upper`), for [`geoip::Provenance`].
    fn from_layers(
        config: &Config,
        geo: GeoTable,
        sources: Vec<SourceReport>,
        upper: Vec<GeoTable>,
    ) -> Result<CompiledPolicy, PolicyError> {
        let mut entries = Vec::new();
        let ids = |i: usize| i.min(u16::MAX as usize) as u16;
        for (i, net) in config.deny.iter().enumerate() {
            entries.push(RuleEntry {
                net: *net,
                kind: RuleKind::Deny,
                country: UNKNOWN_COUNTRY,
                id: ids(i),
            });
        }
        for (i, net) in config.allow.iter().enumerate() {
            entries.push(RuleEntry {
                net: *net,
                kind: RuleKind::Allow,
                country: UNKNOWN_COUNTRY,
                id: ids(i),
            });
        }
        for (i, site) in config.sites.iter().enumerate() {
            entries.push(RuleEntry {
                net: site.net,
                kind: RuleKind::Site,
                country: country_index(site.country),
                id: ids(i),
            });
        }
        for (id, (cidr, _label)) in BUILTIN_RANGES.iter().enumerate() {
            let net: IpNetwork = cidr.parse().map_err(|_| PolicyError::Builtin(cidr))?;
            entries.push(RuleEntry {
                net,
                kind: RuleKind::Builtin,
                country: UNKNOWN_COUNTRY,
                id: id as u16,
            });
        }
        let folded = fold_rules(&entries);
        let mut rules_v4 = Vec::new();
        let mut rules_v6 = Vec::new();
        for (net, rule) in folded {
            match net {
                IpNetwork::V4(n) => rules_v4.push((n, rule)),
                IpNetwork::V6(n) => rules_v6.push((n, rule)),
            }
        }

        let approval = approval_table(config);
        let provenance = std::sync::Arc::new(geoip::Provenance::new(
            sources.iter().map(|s| s.info.clone()).collect(),
            upper,
        ));

        Ok(CompiledPolicy {
            rules_v4,
            rules_v6,
            geo,
            approval,
            sources,
            provenance,
        })
    }

    /// The built-in range label of a rule id, for explanations.
    pub fn builtin_label(id: u16) -> Option<(&'static str, &'static str)> {
        BUILTIN_RANGES.get(id as usize).copied()
    }

    /// Number of GeoIP prefixes per family.
    pub fn geo_len(&self) -> (usize, usize) {
        (self.geo.v4.len(), self.geo.v6.len())
    }

    /// Paths of the sources, in priority order.
    pub fn source_paths(&self) -> Vec<PathBuf> {
        self.sources.iter().map(|s| s.info.path.clone()).collect()
    }

    /// The policy's own answer for an address, computed in userspace from
    /// the same tables the kernel holds (used to verify a written slot).
    pub fn expected_country(&self, ip: IpAddr) -> Option<CountryCode> {
        self.geo.lookup(ip).map(|(_, c)| c)
    }
}

/// The per-country approval table the datapath holds, indexed by
/// [`country_index`]; entry [`UNKNOWN_COUNTRY`] is the `unknown` policy.
pub fn approval_table(config: &Config) -> Vec<u32> {
    let mut approval = vec![NOT_APPROVED; COUNTRY_SLOTS];
    for code in &config.approved {
        approval[country_index(*code) as usize] = APPROVED;
    }
    approval[UNKNOWN_COUNTRY as usize] = match config.unknown {
        Unknown::Allow => APPROVED,
        Unknown::Deny => NOT_APPROVED,
    };
    // The anycast class is a code of its own in the tables, so the kernel
    // decides it with one more entry of this table: no datapath change.
    approval[country_index(CountryCode::ANYCAST) as usize] = match config.anycast {
        Anycast::Allow => APPROVED,
        Anycast::Deny => NOT_APPROVED,
        Anycast::Unknown => approval[UNKNOWN_COUNTRY as usize],
    };
    approval
}

/// Whether GeoIP's answer (`None`: unlocated) is approved under an
/// [`approval_table`], as the datapath decides it: a code without a country
/// slot is looked up as unknown, like the kernel does.
pub fn approves(approval: &[u32], country: Option<CountryCode>) -> bool {
    let index = country.map_or(UNKNOWN_COUNTRY, country_index);
    approval.get(index as usize).copied() == Some(APPROVED)
}

/// The datapath's country index of a code.
pub fn country_index(code: CountryCode) -> u16 {
    // A CountryCode is two ASCII letters by construction, so this is Some.
    enforcer_common::country::index(code.as_bytes()).unwrap_or(UNKNOWN_COUNTRY)
}

/// Folds rules of every class into one set of prefixes whose longest-prefix
/// match gives the first class in precedence order (lowest [`RuleKind`]
/// number; within a class the most specific rule).
///
/// For any address `a`, the prefixes containing `a` form a chain; the
/// longest-prefix match returns the longest one, `P`, and every prefix
/// containing `a` contains `P`. So storing at each `P` the best rule among
/// those containing `P` makes one LPM lookup equal to "the best rule among
/// those containing `a`". Config lists are small: the quadratic scan is fine.
fn fold_rules(entries: &[RuleEntry]) -> Vec<(IpNetwork, Rule)> {
    let mut nets: Vec<IpNetwork> = entries.iter().map(|e| e.net).collect();
    nets.sort_by_key(|n| (n.is_ipv6(), n.network(), n.prefix()));
    nets.dedup_by_key(|n| (n.network(), n.prefix()));
    nets.into_iter()
        .filter_map(|p| {
            let best = entries
                .iter()
                .filter(|e| contains(e.net, p))
                .min_by_key(|e| (e.kind as u32, std::cmp::Reverse(e.net.prefix())))?;
            Some((
                p,
                Rule {
                    kind: best.kind as u16,
                    country: best.country,
                    prefix_len: best.net.prefix() as u16,
                    id: best.id,
                },
            ))
        })
        .collect()
}

/// Whether `outer` contains all of `inner` (same family).
fn contains(outer: IpNetwork, inner: IpNetwork) -> bool {
    outer.is_ipv4() == inner.is_ipv4()
        && outer.prefix() <= inner.prefix()
        && outer.contains(inner.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(net: &str, kind: RuleKind, country: u16, id: u16) -> RuleEntry {
        RuleEntry {
            net: net.parse().expect("test cidr"),
            kind,
            country,
            id,
        }
    }

    /// Longest-prefix match over a folded table, as the kernel does it.
    fn lpm(folded: &[(IpNetwork, Rule)], ip: IpAddr) -> Option<Rule> {
        folded
            .iter()
            .filter(|(n, _)| n.contains(ip))
            .max_by_key(|(n, _)| n.prefix())
            .map(|(_, r)| *r)
    }

    #[test]
    fn precedence_beats_specificity_across_classes() {
        let rules = [
            entry("10.0.0.0/8", RuleKind::Builtin, 0, 1),
            entry("10.1.0.0/16", RuleKind::Site, 7, 0),
            entry("10.1.32.0/24", RuleKind::Builtin, 0, 2),
            entry("10.1.0.0/20", RuleKind::Deny, 0, 3),
            entry("10.1.0.128/25", RuleKind::Allow, 0, 4),
        ];
        let folded = fold_rules(&rules);
        let at =
            |s: &str| lpm(&folded, s.parse().expect("ip")).map(|r| (r.kind, r.id, r.prefix_len));
        let k = |k: RuleKind| k as u16;
        // Deny /20 beats the more specific allow /25 inside it.
        assert_eq!(at("10.1.0.200"), Some((k(RuleKind::Deny), 3, 20)));
        // Deny /20 also beats the builtin /8 and site /16 around it.
        assert_eq!(at("10.1.2.3"), Some((k(RuleKind::Deny), 3, 20)));
        // Site /16 beats the more specific builtin /24 inside it.
        assert_eq!(at("10.1.32.3"), Some((k(RuleKind::Site), 0, 16)));
        // Outside the site: builtin private.
        assert_eq!(at("10.2.0.1"), Some((k(RuleKind::Builtin), 1, 8)));
        assert_eq!(at("11.0.0.1"), None);
    }

    #[test]
    fn the_anycast_class_follows_its_own_policy() {
        let config = |anycast: &str, unknown: &str| {
            Config::parse(
                &format!(
                    "approved = [\"DE\"]\nanycast = \"{anycast}\"\nunknown = \"{unknown}\"\n\
                     [geoip]\nsources = [\"x.csv\"]\n[scope]\ncgroups = [\"x\"]\n"
                ),
                crate::config::Origin::File("/t.toml".into()),
            )
            .expect("config")
        };
        let xa = Some(CountryCode::ANYCAST);
        let de = Some("DE".parse().expect("code"));
        for (anycast, unknown, approved) in [
            ("allow", "deny", true),
            ("deny", "allow", false),
            ("unknown", "allow", true),
            ("unknown", "deny", false),
        ] {
            let table = approval_table(&config(anycast, unknown));
            assert_eq!(
                approves(&table, xa),
                approved,
                "anycast {anycast}, unknown {unknown}"
            );
            assert!(approves(&table, de));
            assert_eq!(approves(&table, None), unknown == "allow");
        }
    }

    #[test]
    fn most_specific_rule_wins_within_a_class() {
        let rules = [
            entry("198.18.0.0/15", RuleKind::Site, 1, 0),
            entry("198.18.1.0/24", RuleKind::Site, 2, 1),
        ];
        let folded = fold_rules(&rules);
        let at = |s: &str| lpm(&folded, s.parse().expect("ip")).map(|r| r.country);
        assert_eq!(at("198.18.1.9"), Some(2));
        assert_eq!(at("198.18.2.9"), Some(1));
    }

    #[test]
    fn builtin_ranges_parse_and_cover_what_they_say() {
        let entries: Vec<_> = BUILTIN_RANGES
            .iter()
            .enumerate()
            .map(|(i, (c, _))| entry(c, RuleKind::Builtin, 0, i as u16))
            .collect();
        let folded = fold_rules(&entries);
        for ip in [
            "127.0.0.1",
            "10.9.8.7",
            "172.31.255.1",
            "192.168.1.1",
            "169.254.1.1",
            "224.0.0.251",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::2",
            "ff02::1",
        ] {
            assert!(
                lpm(&folded, ip.parse().expect("ip")).is_some(),
                "{ip} is built-in"
            );
        }
        for ip in [
            "8.8.8.8",
            "172.32.0.1",
            "198.51.100.1",
            "2001:db8::1",
            "100.64.0.1",
        ] {
            assert!(
                lpm(&folded, ip.parse().expect("ip")).is_none(),
                "{ip} is not built-in"
            );
        }
    }
}
