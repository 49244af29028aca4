//! An explanation as it is shown and sent: what the datapath decides for
//! one address and why, serialisable so the agent can answer `check` over
//! its control socket and the CLI can print it or pass it on as JSON.

use std::{net::IpAddr, path::PathBuf};

use enforcer_common::{Family, Mode, Outcome, RuleKind, Source};
use geoip::CountryCode;
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// Which configured rule decided (exceptions, site networks, built-in
/// ranges).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRef {
    /// `deny`, `allow`, `site` or `builtin`.
    #[serde(with = "label::rule_kind")]
    pub kind: RuleKind,
    /// Position in its config list (`deny[i]`, `allow[i]`, the i-th
    /// `[[site]]`), or in the built-in table.
    pub index: u16,
    /// What a built-in range is ("loopback", "private", ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<String>,
}

/// Where the mode that applies comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum ModeFrom {
    /// The global mode of the active slot.
    Global,
    /// A per-cgroup override: the deepest ancestor of the cgroup asked
    /// about (or the cgroup itself) that has one.
    Override {
        cgroup_id: u64,
        /// Its level in the hierarchy (0 is the root).
        level: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<PathBuf>,
    },
}

/// The cgroup an explanation was asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupRef {
    pub id: u64,
    pub path: PathBuf,
}

/// What the datapath decides for one address, and why. Serialisable, so
/// the agent can send it over its control socket as is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// The address asked about.
    pub address: IpAddr,
    /// The address decided: an IPv4-mapped IPv6 address as its IPv4
    /// address, like the kernel.
    pub decided_as: IpAddr,
    #[serde(with = "label::family")]
    pub family: Family,
    /// The prefix of the entry that decided: the configured CIDR of an
    /// exception, site network or built-in range, or the GeoIP prefix.
    /// `None` when nothing matched (source `unknown`).
    #[serde(with = "opt_net")]
    pub prefix: Option<IpNetwork>,
    #[serde(with = "label::source")]
    pub source: Source,
    /// The rule that decided, for every source but GeoIP and unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleRef>,
    /// The destination's country (ISO code), as counted: from the site
    /// network, or from GeoIP (also under a deny exception). `None` when
    /// unknown or not geolocated (exempt).
    pub country: Option<CountryCode>,
    /// The GeoIP prefix the country came from, when GeoIP was consulted
    /// and located the address.
    #[serde(with = "opt_net")]
    pub geoip_prefix: Option<IpNetwork>,
    /// Whether the policy approves the destination; `None` when it is not
    /// consulted (exempt). A deny exception is never approved.
    pub approved: Option<bool>,
    /// The mode that applies to the caller (it only matters when the
    /// destination is not approved).
    #[serde(with = "label::mode")]
    pub mode: Mode,
    pub mode_from: ModeFrom,
    /// The verdict the kernel gives: allowed, denied, would_deny, exempt
    /// (the outcome the counters use).
    #[serde(with = "label::outcome")]
    pub outcome: Outcome,
    /// The cgroup asked about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<CgroupRef>,
    /// Per-cgroup mode overrides in force (`CONFIG[CFG_OVERRIDES]`): when
    /// not 0 and no cgroup was given, a process's mode may differ from
    /// `mode`.
    pub overrides: u32,
    /// The policy slot the answer was read from, and its generation.
    pub slot: u32,
    pub generation: u32,
    /// The GeoIP source that located the address (the running agent
    /// answers it; the pins alone cannot tell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub located_by: Option<LocatedBy>,
}

/// A GeoIP source as named in answers and events: its file and kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocatedBy {
    pub path: std::path::PathBuf,
    /// [`geoip::Format::label`]: `mmdb-maxmind`, `csv`, `aws`, ...
    pub kind: String,
}

impl LocatedBy {
    /// The source of the policy in force that located `ip` as `country`.
    pub fn find(
        provenance: &geoip::Provenance,
        ip: std::net::IpAddr,
        country: CountryCode,
    ) -> Option<LocatedBy> {
        provenance.located_by(ip, country).map(|s| LocatedBy {
            path: s.path.clone(),
            kind: s.format.label().to_owned(),
        })
    }
}

/// `Option<IpNetwork>` as a CIDR string or null (ipnetwork's serde support
/// is an off-by-default feature).
mod opt_net {
    use ipnetwork::IpNetwork;
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(v: &Option<IpNetwork>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(n) => s.collect_str(n),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpNetwork>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| s.parse().map_err(D::Error::custom))
            .transpose()
    }
}

/// The datapath's enums as their labels (the same words as metrics and
/// events), both ways.
mod label {
    macro_rules! label_serde {
        ($module:ident, $ty:ident) => {
            pub mod $module {
                use enforcer_common::$ty;
                use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

                pub fn serialize<S: Serializer>(v: &$ty, s: S) -> Result<S::Ok, S::Error> {
                    s.serialize_str(v.label())
                }

                pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                    let s = String::deserialize(d)?;
                    $ty::ALL
                        .iter()
                        .copied()
                        .find(|v| v.label() == s)
                        .ok_or_else(|| {
                            D::Error::custom(format!("unknown {} {s:?}", stringify!($module)))
                        })
                }
            }
        };
    }
    label_serde!(family, Family);
    label_serde!(source, Source);
    label_serde!(mode, Mode);
    label_serde!(outcome, Outcome);
    label_serde!(rule_kind, RuleKind);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explanations_round_trip_through_json() {
        let e = Explanation {
            address: "::ffff:198.51.100.20".parse().expect("ip"),
            decided_as: "198.51.100.20".parse().expect("ip"),
            family: Family::Ipv4,
            prefix: Some("198.51.100.0/24".parse().expect("net")),
            source: Source::DenyException,
            rule: Some(RuleRef {
                kind: RuleKind::Deny,
                index: 2,
                builtin: None,
            }),
            country: "US".parse().ok(),
            geoip_prefix: Some("198.51.100.20/32".parse().expect("net")),
            approved: Some(false),
            mode: Mode::Enforce,
            mode_from: ModeFrom::Override {
                cgroup_id: 42,
                level: 1,
                path: Some("/sys/fs/cgroup/x".into()),
            },
            outcome: Outcome::Denied,
            cgroup: Some(CgroupRef {
                id: 42,
                path: "/sys/fs/cgroup/x".into(),
            }),
            overrides: 1,
            slot: 1,
            generation: 7,
            located_by: None,
        };
        let text = serde_json::to_string(&e).expect("serialise");
        for needle in [
            r#""source":"deny_exception""#,
            r#""outcome":"denied""#,
            r#""family":"ipv4""#,
            r#""prefix":"198.51.100.0/24""#,
            r#""country":"US""#,
            r#""from":"override""#,
        ] {
            assert!(text.contains(needle), "{needle} in {text}");
        }
        let back: Explanation = serde_json::from_str(&text).expect("deserialise");
        assert_eq!(back, e);
        let bad = text.replace("deny_exception", "nonsense");
        assert!(serde_json::from_str::<Explanation>(&bad).is_err());
    }
}
