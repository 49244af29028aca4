//! The one decision every hook makes.
//!
//! Order (see DESIGN.md, "The decision, in kernel"):
//! 1. the destination address; an IPv4-mapped IPv6 address is decided as IPv4;
//! 2. the exception rules of the active slot: configured deny and allow CIDRs,
//!    site networks and the built-in never-geolocated ranges, folded by the
//!    agent into one LPM trie per family so one lookup yields the first class
//!    in precedence order;
//! 3. the GeoIP prefix table of the active slot -> country index (0 unknown);
//! 4. the policy table of the active slot [country] -> approved or not (entry
//!    0 holds the configured `unknown` policy);
//! 5. the mode: enforce refuses, observe lets through as "would deny".

use aya_ebpf::maps::lpm_trie::Key;
use enforcer_common::{
    APPROVED, CFG_MODE, CFG_SLOT, COUNTRY_SLOTS, Family, GeoEntry, Mode, Outcome, Rule, RuleKind,
    UNKNOWN_COUNTRY,
};

use crate::maps::{
    GEO4_0, GEO4_1, GEO6_0, GEO6_1, POLICY, RULES4_0, RULES4_1, RULES6_0, RULES6_1, config,
};

/// What the datapath concluded about one destination.
#[derive(Clone, Copy)]
pub struct Decision {
    pub outcome: Outcome,
    /// Country index (0 when unknown or not geolocated).
    pub country: u16,
    /// The family the destination was decided as.
    pub family: Family,
}

impl Decision {
    /// Whether the hook must refuse the operation.
    #[inline(always)]
    pub fn refuses(&self) -> bool {
        self.outcome == Outcome::Denied
    }
}

/// A destination as the hooks see it, bytes in network order.
#[derive(Clone, Copy)]
pub enum Dest {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl Dest {
    /// An IPv6 destination, or the IPv4 address it maps when it is
    /// `::ffff:a.b.c.d`: a dual-stack socket connects to those over IPv4,
    /// and only the connect6/sendmsg6 hooks see them.
    #[inline(always)]
    pub fn from_v6(b: [u8; 16]) -> Dest {
        let mapped = b[0] | b[1] | b[2] | b[3] | b[4] | b[5] | b[6] | b[7] | b[8] | b[9] == 0
            && b[10] == 0xff
            && b[11] == 0xff;
        if mapped {
            Dest::V4([b[12], b[13], b[14], b[15]])
        } else {
            Dest::V6(b)
        }
    }
}

/// Decides a destination against the active slot and the global mode.
#[inline(always)]
pub fn decide(dest: Dest) -> Decision {
    let slot = config(CFG_SLOT) & 1;
    let (family, rule, geo) = match dest {
        Dest::V4(a) => {
            let key = Key::new(32, a);
            let (rules, geo) = if slot == 0 {
                (&RULES4_0, &GEO4_0)
            } else {
                (&RULES4_1, &GEO4_1)
            };
            (Family::Ipv4, rules.get(&key).copied(), Lookup::V4(geo, key))
        }
        Dest::V6(a) => {
            let key = Key::new(128, a);
            let (rules, geo) = if slot == 0 {
                (&RULES6_0, &GEO6_0)
            } else {
                (&RULES6_1, &GEO6_1)
            };
            (Family::Ipv6, rules.get(&key).copied(), Lookup::V6(geo, key))
        }
    };
    let (country, approved) =
        match rule.and_then(|r| RuleKind::from_raw(r.kind as u32).map(|k| (k, r))) {
            // A deny exception is never approved; its country is still looked up
            // so counters and events say where the destination is.
            Some((RuleKind::Deny, _)) => (geo.country(), false),
            Some((RuleKind::Allow | RuleKind::Builtin, _)) => {
                return Decision {
                    outcome: Outcome::Exempt,
                    country: UNKNOWN_COUNTRY,
                    family,
                };
            }
            Some((RuleKind::Site, Rule { country, .. })) => (country, approved(slot, country)),
            None => {
                let country = geo.country();
                (country, approved(slot, country))
            }
        };
    let outcome = if approved {
        Outcome::Allowed
    } else {
        match Mode::from_raw(config(CFG_MODE)) {
            Some(Mode::Enforce) => Outcome::Denied,
            // An unreadable mode word fails open to observe: refusing on a
            // corrupt map would cut the host off with no way to explain why.
            Some(Mode::Observe) | None => Outcome::WouldDeny,
        }
    };
    Decision {
        outcome,
        country,
        family,
    }
}

/// A pending GeoIP lookup in the slot's table for the destination's family.
enum Lookup {
    V4(
        &'static aya_ebpf::maps::LpmTrie<[u8; 4], GeoEntry>,
        Key<[u8; 4]>,
    ),
    V6(
        &'static aya_ebpf::maps::LpmTrie<[u8; 16], GeoEntry>,
        Key<[u8; 16]>,
    ),
}

impl Lookup {
    /// The country of the destination, 0 when the table does not locate it.
    #[inline(always)]
    fn country(&self) -> u16 {
        let entry = match self {
            Lookup::V4(map, key) => map.get(key),
            Lookup::V6(map, key) => map.get(key),
        };
        match entry {
            Some(e) if (e.country as usize) < COUNTRY_SLOTS => e.country,
            _ => UNKNOWN_COUNTRY,
        }
    }
}

/// Whether a country (0 = unknown) is approved in a slot's policy table.
#[inline(always)]
fn approved(slot: u32, country: u16) -> bool {
    let index = slot * COUNTRY_SLOTS as u32 + country as u32;
    POLICY.get(index).copied() == Some(APPROVED)
}
