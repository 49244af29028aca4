//! Explaining a verdict: what the datapath decides for an address, and
//! why, read from the live kernel maps (`enforcer check`).
//!
//! [`Explainer`] opens the pinned maps read-only (`BPF_F_RDONLY`), without
//! loading any program, so it works with no agent running and from inside
//! the running one. [`Explainer::explain`] then takes the steps of
//! `enforcer-ebpf/src/decide.rs` (and `mode.rs`) one by one, against the
//! same maps, in the same order, with the same treatment of odd values;
//! each step below names the line of the kernel code it mirrors. It is a
//! mirror, not a model: it must change whenever `decide.rs` changes, and
//! `tests/tests/integration/check.rs` compares it with the kernel's own verdict (under
//! `BPF_PROG_TEST_RUN`) for thousands of addresses of a real database, so
//! drift fails a test instead of misleading an operator. The GeoIP table
//! lookup is the exception: not mirrored but shared, the kernel's own code
//! (`enforcer_common::lookup`) run on readers of the pinned maps.
//!
//! Here: the mirror of `decide()`. Beside it: `maps.rs` (opening the maps,
//! the table readers), `cgroup.rs` (a cgroup's ancestry, for the mode
//! overrides), `report.rs` (the answer, as JSON).
//!
//! # The matched prefix
//!
//! A userspace lookup in an LPM trie returns the value of the longest
//! matching key, not the key. An exception rule carries the length of the
//! configured CIDR that won there (`Rule::prefix_len`; the agent stores the
//! winning rule at more specific keys too, see `policy::fold_rules`), so the
//! prefix reported is that configured CIDR, the one an operator finds in
//! the config. The GeoIP flat tables store no prefixes, only a country per
//! address: the prefix reported is the one of the minimal CIDR cover of the
//! same-country range around the address, read from the same tables, which
//! is what the `geoip` crate's lookup answers for the aggregated table.
//!
//! # Consistency
//!
//! The agent writes only the inactive slot and then flips the slot word and
//! bumps the generation; an explanation reads the generation before and
//! after its lookups and starts again when it moved, so it never mixes two
//! policies. Per-cgroup overrides are read as they are at that moment.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use aya::maps::{Array, HashMap, MapData, MapError, lpm_trie::LpmTrie};
use enforcer_common::{
    APPROVED, CFG_GENERATION, CFG_LAYOUT, CFG_OVERRIDES, CFG_SLOT, CONFIG, COUNTRY_SLOTS, Family,
    GEO4_TREE, GEO4_WORDS, GEO6_FINE, GEO6_INDEX, GEO6_LEAVES, Geo6Block, LAYOUT_VERSION,
    MAX_CGROUP_DEPTH, MODE_OVERRIDES, Mode, Outcome, POLICY, RULES4, RULES6, Rule, RuleKind,
    Source, UNKNOWN_COUNTRY, cfg_mode, country,
};
use geoip::CountryCode;
use ipnetwork::IpNetwork;

use self::maps::{Paged, SlotV4, SlotV6, array, lpm, map_data, open_read_only, trie};
use super::{DatapathError, geo4, geo6, map_err};
use crate::{paths, policy::CompiledPolicy};

mod cgroup;
mod maps;
mod report;

pub use cgroup::CgroupAncestry;
pub use report::{CgroupRef, Explanation, LocatedBy, ModeFrom, RuleRef};

/// How often an explanation starts again because the policy flipped while
/// it read; a flip takes one config word, so a second miss means a reload
/// loop, and that is reported.
const ATTEMPTS: usize = 3;

/// An error explaining a verdict.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("cgroup {cgroup}: {detail}")]
    Cgroup { cgroup: String, detail: String },
    #[error("the policy under {0} kept changing while it was being read; try again")]
    Unstable(PathBuf),
}

/// The pinned maps of an installed datapath, opened read-only.
pub struct Explainer {
    pin_dir: PathBuf,
    config: Array<MapData, u32>,
    policy: Array<MapData, u32>,
    rules4: [LpmTrie<MapData, [u8; 4], Rule>; 2],
    rules6: [LpmTrie<MapData, [u8; 16], Rule>; 2],
    /// `GEO4_WORDS` and `GEO4_TREE`, each one large value, read a page at a time
    /// (see [`Paged`]).
    geo4: [MapData; 2],
    geo4_tree: [MapData; 2],
    /// `GEO6_INDEX` and `GEO6_LEAVES`, one value each too.
    geo6_index: [MapData; 2],
    geo6: [MapData; 2],
    geo6_fine: [Array<MapData, Geo6Block>; 2],
    overrides: HashMap<MapData, u64, u32>,
}

/// A destination as the kernel decides it (decide.rs `Dest`).
#[derive(Clone, Copy, Debug)]
enum Dest {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl Dest {
    /// decide.rs `Dest::from_v6` (and the hooks, which give IPv4 as is): an
    /// IPv6 address whose first ten bytes are zero and next two 0xff is
    /// decided as the IPv4 address in its last four.
    fn of(ip: IpAddr) -> Dest {
        match ip {
            IpAddr::V4(a) => Dest::V4(a.octets()),
            IpAddr::V6(a) => {
                let b = a.octets();
                let mapped = b[..10].iter().all(|&x| x == 0) && b[10] == 0xff && b[11] == 0xff;
                if mapped {
                    Dest::V4([b[12], b[13], b[14], b[15]])
                } else {
                    Dest::V6(b)
                }
            }
        }
    }

    fn family(self) -> Family {
        match self {
            Dest::V4(_) => Family::Ipv4,
            Dest::V6(_) => Family::Ipv6,
        }
    }

    fn ip(self) -> IpAddr {
        match self {
            Dest::V4(a) => IpAddr::V4(Ipv4Addr::from(a)),
            Dest::V6(a) => IpAddr::V6(Ipv6Addr::from(a)),
        }
    }

    /// The prefix of `len` bits containing the address; `None` for a length
    /// the family cannot have (a corrupt value).
    fn prefix(self, len: u16) -> Option<IpNetwork> {
        let len = u8::try_from(len).ok()?;
        match self {
            Dest::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32u32.checked_sub(len.into())?)
                    .unwrap_or(0);
                let net = Ipv4Addr::from(u32::from_be_bytes(a) & mask);
                ipnetwork::Ipv4Network::new(net, len)
                    .ok()
                    .map(IpNetwork::V4)
            }
            Dest::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128u32.checked_sub(len.into())?)
                    .unwrap_or(0);
                let net = Ipv6Addr::from(u128::from_be_bytes(a) & mask);
                ipnetwork::Ipv6Network::new(net, len)
                    .ok()
                    .map(IpNetwork::V6)
            }
        }
    }
}

/// What a GeoIP table lookup gave.
#[derive(Clone, Copy, Debug)]
struct GeoHit {
    /// Country index, [`UNKNOWN_COUNTRY`] when not located.
    country: u16,
    prefix: Option<IpNetwork>,
}

/// Where the mode comes from, before it is written out.
struct AppliedMode {
    mode: Mode,
    from: ModeFrom,
}

/// The largest aligned block of a `bits`-wide family that contains `a` and
/// lies inside `start..=end`: the prefix of the minimal CIDR cover of that
/// range which holds `a` (what the geoip crate's lookup answers).
fn cover_prefix(a: u128, start: u128, end: u128, bits: u32) -> u8 {
    (0..=bits)
        .find(|&len| {
            let host = bits - len;
            let size_mask = if host >= 128 {
                u128::MAX
            } else {
                (1u128 << host) - 1
            };
            let net = a & !size_mask;
            net >= start && (net | size_mask) <= end
        })
        .unwrap_or(bits as u8 as u32) as u8
}

impl Explainer {
    /// Opens the maps of the datapath pinned under `pin_dir` (the agent's
    /// `agent.pin_dir`). Nothing pinned there: [`DatapathError::NotInstalled`].
    pub fn open(pin_dir: &Path) -> Result<Explainer, DatapathError> {
        let config: Array<MapData, u32> =
            Array::try_from(open_read_only(pin_dir, CONFIG)?).map_err(map_err(CONFIG))?;
        let layout = config.get(&CFG_LAYOUT, 0).map_err(map_err(CONFIG))?;
        if layout == 0 {
            // Created by an agent that stopped before it wrote anything.
            return Err(DatapathError::NotInstalled(pin_dir.to_owned()));
        }
        if layout != LAYOUT_VERSION {
            return Err(DatapathError::Layout {
                path: paths::PinLayout::new(pin_dir).maps,
                found: layout,
            });
        }
        Ok(Explainer {
            pin_dir: pin_dir.to_owned(),
            config,
            policy: Array::try_from(open_read_only(pin_dir, POLICY)?).map_err(map_err(POLICY))?,
            rules4: [trie(pin_dir, RULES4[0])?, trie(pin_dir, RULES4[1])?],
            rules6: [trie(pin_dir, RULES6[0])?, trie(pin_dir, RULES6[1])?],
            geo4: [
                map_data(pin_dir, GEO4_WORDS[0])?,
                map_data(pin_dir, GEO4_WORDS[1])?,
            ],
            geo4_tree: [
                map_data(pin_dir, GEO4_TREE[0])?,
                map_data(pin_dir, GEO4_TREE[1])?,
            ],
            geo6_index: [
                map_data(pin_dir, GEO6_INDEX[0])?,
                map_data(pin_dir, GEO6_INDEX[1])?,
            ],
            geo6: [
                map_data(pin_dir, GEO6_LEAVES[0])?,
                map_data(pin_dir, GEO6_LEAVES[1])?,
            ],
            geo6_fine: [array(pin_dir, GEO6_FINE[0])?, array(pin_dir, GEO6_FINE[1])?],
            overrides: HashMap::try_from(open_read_only(pin_dir, MODE_OVERRIDES)?)
                .map_err(map_err(MODE_OVERRIDES))?,
        })
    }

    /// The pin directory this reads.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Explains the verdict for `ip`, for a process (or socket) in the
    /// cgroup with id `cgroup_id` when given (its ancestry is found in the
    /// cgroup2 file system), else under the global mode.
    pub fn explain(&self, ip: IpAddr, cgroup_id: Option<u64>) -> Result<Explanation, ExplainError> {
        let cgroup = cgroup_id.map(CgroupAncestry::of_id).transpose()?;
        self.explain_in(ip, cgroup.as_ref())
    }

    /// [`Explainer::explain`] for a cgroup whose ancestry is known.
    pub fn explain_in(
        &self,
        ip: IpAddr,
        cgroup: Option<&CgroupAncestry>,
    ) -> Result<Explanation, ExplainError> {
        for _ in 0..ATTEMPTS {
            let before = self.word(CFG_GENERATION)?;
            let e = self.explain_once(ip, cgroup)?;
            if e.generation == before && self.word(CFG_GENERATION)? == before {
                return Ok(e);
            }
        }
        Err(ExplainError::Unstable(self.pin_dir.clone()))
    }

    fn word(&self, index: u32) -> Result<u32, DatapathError> {
        self.config.get(&index, 0).map_err(map_err(CONFIG))
    }

    /// decide.rs `decide` and `decide_in`, step by step.
    fn explain_once(
        &self,
        ip: IpAddr,
        cgroup: Option<&CgroupAncestry>,
    ) -> Result<Explanation, ExplainError> {
        // decide: `let slot = config(CFG_SLOT) & 1;`
        let slot = self.word(CFG_SLOT)? & 1;
        let generation = self.word(CFG_GENERATION)?;
        // The hooks: `Dest::from_v6` for IPv6 destinations.
        let dest = Dest::of(ip);
        let s = slot as usize;
        // decide_in: `let rule = rules.get(&key).copied();`
        let rule = match dest {
            Dest::V4(a) => lpm(&self.rules4[s], RULES4[s], a)?,
            Dest::V6(a) => lpm(&self.rules6[s], RULES6[s], a)?,
        };
        // decide_in: `let kind = rule.and_then(|r| RuleKind::from_raw(..))`:
        // a value with an unknown kind counts as no rule.
        let kind = rule.and_then(|r| RuleKind::from_raw(r.kind as u32).map(|k| (k, r)));
        let rule_ref = kind.map(|(k, r)| RuleRef {
            kind: k,
            index: r.id,
            builtin: (k == RuleKind::Builtin)
                .then(|| CompiledPolicy::builtin_label(r.id).map(|(_, label)| label.to_owned()))
                .flatten(),
        });
        let rule_prefix = kind.and_then(|(_, r)| dest.prefix(r.prefix_len));

        struct Step {
            country: u16,
            approved: Option<bool>,
            source: Source,
            prefix: Option<IpNetwork>,
            geo: Option<GeoHit>,
        }
        let step = match kind {
            // `Some((RuleKind::Deny, _)) => (geo_country(&key), false,
            // Source::DenyException)`: never approved, country from GeoIP.
            Some((RuleKind::Deny, _)) => {
                let geo = self.geoip(slot, dest)?;
                Step {
                    country: geo.country,
                    approved: Some(false),
                    source: Source::DenyException,
                    prefix: rule_prefix,
                    geo: Some(geo),
                }
            }
            // `Some((RuleKind::Allow, _)) => return exempt(..)`, and the same
            // for built-in ranges: country unknown, policy not consulted.
            Some((RuleKind::Allow, _)) | Some((RuleKind::Builtin, _)) => Step {
                country: UNKNOWN_COUNTRY,
                approved: None,
                source: if matches!(kind, Some((RuleKind::Allow, _))) {
                    Source::AllowException
                } else {
                    Source::Builtin
                },
                prefix: rule_prefix,
                geo: None,
            },
            // `Some((RuleKind::Site, Rule { country, .. }))`: an out-of-range
            // country is unknown; then the policy table.
            Some((RuleKind::Site, r)) => {
                let country = if (r.country as usize) < COUNTRY_SLOTS {
                    r.country
                } else {
                    UNKNOWN_COUNTRY
                };
                Step {
                    country,
                    approved: Some(self.approved(slot, country)?),
                    source: Source::Site,
                    prefix: rule_prefix,
                    geo: None,
                }
            }
            // `None => { let country = geo_country(&key); .. }`: GeoIP, or
            // unknown when it does not locate the address.
            None => {
                let geo = self.geoip(slot, dest)?;
                Step {
                    country: geo.country,
                    approved: Some(self.approved(slot, geo.country)?),
                    source: if geo.country == UNKNOWN_COUNTRY {
                        Source::Unknown
                    } else {
                        Source::Geoip
                    },
                    prefix: geo.prefix,
                    geo: Some(geo),
                }
            }
        };
        // `let mode = mode(slot);`, asked only when not approved; here always,
        // since an operator wants to know it either way.
        let applied = self.mode(slot, cgroup)?;
        // decide_in's tail: approved -> Allowed; exempt -> Exempt; else the
        // mode: enforce -> Denied, observe -> WouldDeny.
        let outcome = match step.approved {
            None => Outcome::Exempt,
            Some(true) => Outcome::Allowed,
            Some(false) => match applied.mode {
                Mode::Enforce => Outcome::Denied,
                Mode::Observe => Outcome::WouldDeny,
            },
        };
        Ok(Explanation {
            address: ip,
            decided_as: dest.ip(),
            family: dest.family(),
            prefix: step.prefix,
            source: step.source,
            rule: rule_ref,
            country: country_code(step.country),
            geoip_prefix: step
                .geo
                .filter(|g| g.country != UNKNOWN_COUNTRY)
                .and_then(|g| g.prefix),
            approved: step.approved,
            mode: applied.mode,
            mode_from: applied.from,
            outcome,
            cgroup: cgroup.map(|c| CgroupRef {
                id: c.id(),
                path: c.path.clone(),
            }),
            overrides: self.word(CFG_OVERRIDES)?,
            slot,
            generation,
            located_by: None,
        })
    }

    /// decide_in's `geo_country` (enforcer-ebpf geo.rs): the GeoIP flat
    /// tables of `slot`; an out-of-range country is unknown. Not a mirror:
    /// the descent is the kernel's own (`enforcer_common::lookup`), given
    /// readers of the pinned maps. The kernel stores no prefixes: the
    /// prefix reported is the one of the minimal CIDR cover of the
    /// same-country range around the address, read from the same tables.
    fn geoip(&self, slot: u32, dest: Dest) -> Result<GeoHit, DatapathError> {
        let unknown = GeoHit {
            country: UNKNOWN_COUNTRY,
            prefix: None,
        };
        let s = slot as usize;
        match dest {
            Dest::V4(a) => {
                let ip = u32::from_be_bytes(a);
                // The kernel's lookup, through geo4.rs.
                let found = geo4::lookup(
                    &SlotV4 {
                        words: Paged::new(GEO4_WORDS[s], &self.geo4[s], geo4::WORDS_BYTES),
                        entries: Paged::new(GEO4_TREE[s], &self.geo4_tree[s], geo4::ENTRIES_BYTES),
                    },
                    ip,
                )?;
                if found.country == UNKNOWN_COUNTRY {
                    return Ok(unknown);
                }
                let len = cover_prefix(ip.into(), found.start.into(), found.end.into(), 32);
                Ok(GeoHit {
                    country: found.country,
                    prefix: dest.prefix(len.into()),
                })
            }
            Dest::V6(a) => {
                // decide.rs `Geo for [u8; 16]`: a range the slot's database
                // locates through IPv4 is looked up by the address it
                // carries; the prefix is the IPv6 one that stands for it.
                if enforcer_common::lookup::may_alias(&a)
                    && let Some((bit, v4)) = enforcer_common::lookup::aliased_v4(
                        self.word(enforcer_common::CFG_GEO_ALIASES[s])?,
                        &a,
                    )
                {
                    let hit = self.geoip(slot, Dest::V4(v4))?;
                    let alias = geoip::Alias::ALL
                        .into_iter()
                        .find(|al| u32::from(al.bit()) == bit);
                    let prefix = match (hit.prefix, alias) {
                        (Some(IpNetwork::V4(n)), Some(al)) => Some(IpNetwork::V6(al.widen(n))),
                        _ => None,
                    };
                    return Ok(GeoHit { prefix, ..hit });
                }
                let addr = u128::from_be_bytes(a);
                // The kernel's lookup, through geo6.rs.
                let found = geo6::lookup(
                    &SlotV6 {
                        explainer: self,
                        slot: s,
                        index: Paged::new(GEO6_INDEX[s], &self.geo6_index[s], geo6::INDEX_BYTES),
                        leaves: Paged::new(GEO6_LEAVES[s], &self.geo6[s], geo6::LEAVES_BYTES),
                    },
                    addr,
                )?;
                let (country, start, end) = (found.country, found.start, found.end);
                if country == UNKNOWN_COUNTRY || country as usize >= COUNTRY_SLOTS {
                    return Ok(unknown);
                }
                let plen = cover_prefix(addr, start, end, 128);
                Ok(GeoHit {
                    country,
                    prefix: dest.prefix(plen.into()),
                })
            }
        }
    }

    /// decide.rs `approved`: `POLICY[slot * COUNTRY_SLOTS + country] ==
    /// APPROVED`; a missing entry is not approved.
    fn approved(&self, slot: u32, country: u16) -> Result<bool, DatapathError> {
        let index = slot * COUNTRY_SLOTS as u32 + country as u32;
        match self.policy.get(&index, 0) {
            Ok(v) => Ok(v == APPROVED),
            Err(MapError::OutOfBounds { .. }) => Ok(false),
            Err(e) => Err(map_err(POLICY)(e)),
        }
    }

    /// mode.rs `walk` and `global`.
    fn mode(
        &self,
        slot: u32,
        cgroup: Option<&CgroupAncestry>,
    ) -> Result<AppliedMode, DatapathError> {
        // `global`: an unreadable mode word fails open to observe.
        let global = AppliedMode {
            mode: Mode::from_raw(self.word(cfg_mode(slot))?).unwrap_or(Mode::Observe),
            from: ModeFrom::Global,
        };
        // `if config(CFG_OVERRIDES) == 0 { return global(slot); }`
        if self.word(CFG_OVERRIDES)? == 0 {
            return Ok(global);
        }
        let Some(cgroup) = cgroup else {
            return Ok(global);
        };
        // `for level in 0..MAX_CGROUP_DEPTH`: the ancestor's id (0 past the
        // leaf ends the walk); the deepest valid override wins.
        let mut found = None;
        for level in 0..MAX_CGROUP_DEPTH {
            let id = cgroup.ids.get(level as usize).copied().unwrap_or(0);
            if id == 0 {
                break;
            }
            let m = match self.overrides.get(&id, 0) {
                Ok(m) => Mode::from_raw(m),
                Err(MapError::KeyNotFound) => None,
                Err(e) => return Err(map_err(MODE_OVERRIDES)(e)),
            };
            if let Some(m) = m {
                found = Some(AppliedMode {
                    mode: m,
                    from: ModeFrom::Override {
                        cgroup_id: id,
                        level,
                        path: cgroup.path_at(level as usize),
                    },
                });
            }
        }
        Ok(found.unwrap_or(global))
    }
}

/// The ISO code of a country index; `None` for unknown.
fn country_code(index: u16) -> Option<CountryCode> {
    country::code(index).and_then(CountryCode::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_are_decided_as_ipv4() {
        let d = Dest::of("::ffff:198.51.100.7".parse().expect("ip"));
        assert_eq!(d.ip(), "198.51.100.7".parse::<IpAddr>().expect("ip"));
        assert_eq!(d.family(), Family::Ipv4);
        // Not mapped: IPv4-compatible (deprecated) and NAT64 addresses.
        for s in [
            "::198.51.100.7",
            "64:ff9b::198.51.100.7",
            "::fffe:198.51.100.7",
        ] {
            assert_eq!(
                Dest::of(s.parse().expect("ip")).family(),
                Family::Ipv6,
                "{s}"
            );
        }
    }

    #[test]
    fn prefixes_mask_the_address() {
        let d = Dest::of("198.51.100.77".parse().expect("ip"));
        assert_eq!(d.prefix(24), Some("198.51.100.0/24".parse().expect("net")));
        assert_eq!(d.prefix(0), Some("0.0.0.0/0".parse().expect("net")));
        assert_eq!(d.prefix(32), Some("198.51.100.77/32".parse().expect("net")));
        assert_eq!(d.prefix(33), None, "a corrupt length is no prefix");
        let d = Dest::of("2001:db8:1:2::9".parse().expect("ip"));
        assert_eq!(d.prefix(48), Some("2001:db8:1::/48".parse().expect("net")));
        assert_eq!(d.prefix(0), Some("::/0".parse().expect("net")));
        assert_eq!(d.prefix(129), None);
    }
}
