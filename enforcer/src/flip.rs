//! Address space that a new version of the GeoIP data moves between allowed
//! and refused under a policy, and the reload guard's bound on it
//! (`geoip.max_flip`, see [`crate::config::max_flip`]).
//!
//! Both `enforcer geoip diff --config` and the agent's reload guard use
//! this: the country changes come from [`geoip::GeoTable::country_change`]
//! (an exact sweep over both tables); each `(from, to)` pair is put through
//! the approval table the agent writes into the kernel
//! ([`crate::policy::approval_table`], [`crate::policy::approves`]), so a
//! pair whose verdict differs moves its whole address space. Exceptions,
//! site networks and built-in ranges are not applied: they decide before
//! GeoIP and do not change with the data, so the figures are an upper
//! bound for the space they cover. The aliased IPv6 ranges of MaxMind
//! databases are counted once, in IPv4 (as in [`geoip::diff`]).

use geoip::{FamilyChange, GeoTable, Move, SourceInfo};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    config::max_flip::{FlipBound, MaxFlip},
    policy::approves,
};

/// The moves of one family whose verdict differs, split by direction,
/// largest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyMoves {
    pub allowed_to_refused: Vec<Move>,
    pub refused_to_allowed: Vec<Move>,
}

impl PolicyMoves {
    /// The moves of `change` whose verdict differs under `approval`.
    pub fn of(change: &FamilyChange, approval: &[u32]) -> PolicyMoves {
        Self::of_moves(&change.moves, approval)
    }

    /// The same from the moves alone (largest first).
    pub fn of_moves(moves: &[Move], approval: &[u32]) -> PolicyMoves {
        let (mut a2r, mut r2a) = (Vec::new(), Vec::new());
        // `moves` is already largest first; filtering keeps the order.
        for m in moves {
            match (approves(approval, m.from), approves(approval, m.to)) {
                (true, false) => a2r.push(*m),
                (false, true) => r2a.push(*m),
                _ => {}
            }
        }
        PolicyMoves {
            allowed_to_refused: a2r,
            refused_to_allowed: r2a,
        }
    }
}

/// The addresses of `moves`, saturating.
pub fn total(moves: &[Move]) -> u128 {
    moves
        .iter()
        .fold(0u128, |acc, m| acc.saturating_add(m.addresses))
}

/// One family's flip against the guard's bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyFlip {
    pub allowed_to_refused: u128,
    pub refused_to_allowed: u128,
    /// Addresses the data in force locates (the base of a `%` bound).
    pub located_in_force: u128,
    /// The setting as configured.
    pub setting: FlipBound,
    /// The bound in addresses (`None`: off).
    pub bound: Option<u128>,
}

impl FamilyFlip {
    fn new(moves: &PolicyMoves, located_in_force: u128, setting: FlipBound) -> FamilyFlip {
        FamilyFlip {
            allowed_to_refused: total(&moves.allowed_to_refused),
            refused_to_allowed: total(&moves.refused_to_allowed),
            located_in_force,
            setting,
            bound: setting.addresses(located_in_force),
        }
    }

    /// Addresses whose verdict changes, either way.
    pub fn flipped(&self) -> u128 {
        self.allowed_to_refused
            .saturating_add(self.refused_to_allowed)
    }

    /// More than the bound: "at most" is allowed.
    pub fn exceeds(&self) -> bool {
        self.bound.is_some_and(|b| self.flipped() > b)
    }

    /// The figures as JSON: IPv4 counts as numbers, IPv6 counts as decimal
    /// strings (they do not fit a JSON number exactly), as in `geoip diff`.
    fn json(&self, v6: bool) -> Value {
        json!({
            "allowed_to_refused": count_json(v6, self.allowed_to_refused),
            "refused_to_allowed": count_json(v6, self.refused_to_allowed),
            "flipped": count_json(v6, self.flipped()),
            "located_in_force": count_json(v6, self.located_in_force),
            "bound": self.bound.map(|b| count_json(v6, b)),
            "max_flip": self.setting.to_string(),
            "exceeds": self.exceeds(),
        })
    }
}

/// What a reload would flip, per family, against the bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flip {
    pub v4: FamilyFlip,
    pub v6: FamilyFlip,
}

impl Flip {
    /// The flip from the data in force (`in_force`) to `new` under the
    /// `approval` table (the new config's), against `max`. One streaming
    /// sweep per family ([`geoip::family_moves`]): the agent runs this at a
    /// reload, when it already holds two tables.
    pub fn compute(in_force: &GeoTable, new: &GeoTable, approval: &[u32], max: &MaxFlip) -> Flip {
        let v4 = geoip::family_moves(&in_force.v4, &new.v4);
        let v6 = geoip::family_moves(&in_force.v6, &new.v6);
        Self::of_moves(&v4, &v6, in_force, approval, max)
    }

    /// [`Flip::compute`] from a country change already computed.
    pub fn of_change(
        change: &geoip::CountryChange,
        in_force: &GeoTable,
        approval: &[u32],
        max: &MaxFlip,
    ) -> Flip {
        Self::of_moves(&change.v4.moves, &change.v6.moves, in_force, approval, max)
    }

    fn of_moves(
        v4: &[Move],
        v6: &[Move],
        in_force: &GeoTable,
        approval: &[u32],
        max: &MaxFlip,
    ) -> Flip {
        Flip {
            v4: FamilyFlip::new(
                &PolicyMoves::of_moves(v4, approval),
                in_force.v4.address_count(),
                max.ipv4,
            ),
            v6: FamilyFlip::new(
                &PolicyMoves::of_moves(v6, approval),
                in_force.v6.address_count(),
                max.ipv6,
            ),
        }
    }

    /// Either family above its bound.
    pub fn exceeds(&self) -> bool {
        self.v4.exceeds() || self.v6.exceeds()
    }

    /// Both families as JSON (`status`, the control reply).
    pub fn json(&self) -> Value {
        json!({ "ipv4": self.v4.json(false), "ipv6": self.v6.json(true) })
    }

    /// One line for logs and error messages.
    pub fn summary(&self) -> String {
        let one = |name: &str, f: &FamilyFlip, unit: &str| {
            format!(
                "{name} {} {unit} flipped ({} allowed -> refused, {} refused -> allowed), bound {}",
                f.flipped(),
                f.allowed_to_refused,
                f.refused_to_allowed,
                match f.bound {
                    Some(b) => format!("{b} ({})", f.setting),
                    None => "off".to_owned(),
                }
            )
        };
        format!(
            "{}; {}",
            one("IPv4", &self.v4, "addresses"),
            one("IPv6", &self.v6, "addresses")
        )
    }

    /// The figures as the audit records state them.
    pub fn figures(&self) -> FlipFigures {
        FlipFigures {
            ipv4: FamilyFigures::of(&self.v4, |n| u64::try_from(n).unwrap_or(u64::MAX)),
            ipv6: FamilyFigures::of(&self.v6, |n| n.to_string()),
        }
    }
}

/// One family's figures in an audit record: IPv4 as numbers, IPv6 as
/// decimal strings (exact), as `geoip diff -o json` writes them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FamilyFigures<N> {
    pub allowed_to_refused: N,
    pub refused_to_allowed: N,
    pub flipped: N,
    /// The bound in addresses; absent when the family's bound is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound: Option<N>,
    /// `geoip.max_flip.<family>` as configured (e.g. `1%`).
    pub max_flip: String,
}

impl<N> FamilyFigures<N> {
    fn of(f: &FamilyFlip, n: impl Fn(u128) -> N) -> Self {
        FamilyFigures {
            allowed_to_refused: n(f.allowed_to_refused),
            refused_to_allowed: n(f.refused_to_allowed),
            flipped: n(f.flipped()),
            bound: f.bound.map(&n),
            max_flip: f.setting.to_string(),
        }
    }
}

/// Both families' figures in an audit record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlipFigures {
    pub ipv4: FamilyFigures<u64>,
    pub ipv6: FamilyFigures<String>,
}

/// A reload the guard held: shown by `status` and the metrics until a
/// reload applies a policy.
#[derive(Clone, Debug, PartialEq)]
pub struct HeldReload {
    /// Unix time of the first hold of this content.
    pub since_unix: f64,
    /// What asked for the reload that was held first.
    pub trigger: &'static str,
    pub flip: Flip,
    /// The new data (sources as read by the held reload).
    pub databases: Vec<SourceInfo>,
}

impl HeldReload {
    /// The new data's identity: the same content is held once.
    pub fn same_data(&self, databases: &[SourceInfo]) -> bool {
        self.databases.len() == databases.len()
            && self
                .databases
                .iter()
                .zip(databases)
                .all(|(a, b)| a.path == b.path && a.sha256 == b.sha256)
    }

    /// As `status` shows it.
    pub fn json(&self) -> Value {
        json!({
            "since_unix": self.since_unix,
            "trigger": self.trigger,
            "flip": self.flip.json(),
            "databases": self.databases.iter().map(|d| json!({
                "path": d.path,
                "sha256": d.sha256,
                "build_epoch": d.build_epoch,
            })).collect::<Vec<_>>(),
        })
    }
}

/// One family's address count as JSON: exact for both families.
pub fn count_json(v6: bool, n: u128) -> Value {
    if v6 {
        Value::String(n.to_string())
    } else {
        // An IPv4 count is at most 2^32: always a u64.
        json!(u64::try_from(n).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use geoip::{CountryCode, Table};

    use super::*;
    use crate::{
        config::{Config, Origin},
        policy::approval_table,
    };

    fn cc(s: &str) -> Option<CountryCode> {
        Some(s.parse().expect("test code"))
    }
    fn mv(from: Option<CountryCode>, to: Option<CountryCode>, addresses: u128) -> Move {
        Move {
            from,
            to,
            addresses,
        }
    }
    fn config(unknown: &str, max_flip: &str) -> Config {
        let text = format!(
            "mode = \"enforce\"\napproved = [\"DE\", \"FR\"]\nunknown = \"{unknown}\"\n[geoip]\nsources = [\"/nonexistent.mmdb\"]\n{max_flip}\n[scope]\nhost_wide = true\n"
        );
        Config::parse(&text, Origin::Embedded).expect("test config")
    }
    fn geo(v4: &[(&str, &str)], v6: &[(&str, &str)]) -> GeoTable {
        let parse = |s: &str| s.parse::<CountryCode>().expect("test code");
        GeoTable {
            v4: Table::<Ipv4Addr>::from_entries(
                v4.iter()
                    .map(|(n, c)| (n.parse().expect("test net"), parse(c))),
            ),
            v6: Table::<Ipv6Addr>::from_entries(
                v6.iter()
                    .map(|(n, c)| (n.parse().expect("test net"), parse(c))),
            ),
            ..GeoTable::default()
        }
    }

    #[test]
    fn verdict_moves_follow_the_approval_table() {
        let change = FamilyChange {
            moves: vec![
                mv(cc("DE"), cc("US"), 500),
                mv(cc("US"), cc("FR"), 300),
                mv(cc("DE"), cc("FR"), 200), // allowed both sides
                mv(cc("US"), None, 100),     // refused, then unknown
                mv(None, cc("DE"), 50),      // unknown, then allowed
                mv(cc("FR"), None, 10),      // allowed, then unknown
            ],
            ..FamilyChange::default()
        };
        // unknown = deny: unlocated is refused.
        let p = PolicyMoves::of(&change, &approval_table(&config("deny", "")));
        assert_eq!(
            p.allowed_to_refused,
            vec![mv(cc("DE"), cc("US"), 500), mv(cc("FR"), None, 10)]
        );
        assert_eq!(
            p.refused_to_allowed,
            vec![mv(cc("US"), cc("FR"), 300), mv(None, cc("DE"), 50)]
        );
        // unknown = allow: unlocated is allowed.
        let p = PolicyMoves::of(&change, &approval_table(&config("allow", "")));
        assert_eq!(p.allowed_to_refused, vec![mv(cc("DE"), cc("US"), 500)]);
        assert_eq!(
            p.refused_to_allowed,
            vec![mv(cc("US"), cc("FR"), 300), mv(cc("US"), None, 100)]
        );
        assert_eq!(total(&p.refused_to_allowed), 400);
    }

    /// The comparison: "at most" the bound passes, one address more is
    /// held; either family alone holds; `off` never does; a `%` bound is of
    /// the space the data in force locates.
    #[test]
    fn a_flip_above_the_bound_of_either_family_exceeds() {
        let old = geo(
            &[("198.51.100.0/24", "US"), ("198.18.0.0/15", "DE")],
            &[("2001:db8::/32", "DE")],
        );
        // 198.51.100.0/25 US -> DE: 128 refused -> allowed; 198.18.0.0/24
        // DE -> US: 256 allowed -> refused; 198.18.1.0/24 DE -> FR: no flip.
        let new = geo(
            &[
                ("198.51.100.0/25", "DE"),
                ("198.51.100.128/25", "US"),
                ("198.18.0.0/24", "US"),
                ("198.18.1.0/24", "FR"),
                ("198.18.2.0/23", "DE"),
                ("198.18.4.0/22", "DE"),
                ("198.18.8.0/21", "DE"),
                ("198.18.16.0/20", "DE"),
                ("198.18.32.0/19", "DE"),
                ("198.18.64.0/18", "DE"),
                ("198.18.128.0/17", "DE"),
                ("198.19.0.0/16", "DE"),
            ],
            &[("2001:db8::/33", "DE"), ("2001:db8:8000::/33", "US")],
        );
        let c = config("deny", "[geoip.max_flip]\nipv4 = \"384\"\nipv6 = \"off\"");
        let f = Flip::compute(&old, &new, &approval_table(&c), &c.max_flip);
        assert_eq!(
            (f.v4.allowed_to_refused, f.v4.refused_to_allowed),
            (256, 128)
        );
        // The agent's streaming sweep and geoip diff's agree.
        assert_eq!(
            f,
            Flip::of_change(
                &old.country_change(&new),
                &old,
                &approval_table(&c),
                &c.max_flip
            )
        );
        assert_eq!(f.v4.flipped(), 384);
        assert_eq!(f.v4.located_in_force, 256 + (1 << 17));
        assert!(!f.v4.exceeds(), "exactly the bound passes");
        assert_eq!(f.v6.allowed_to_refused, 1u128 << 95);
        assert!(!f.v6.exceeds(), "off never holds");
        assert!(!f.exceeds());

        let c = config("deny", "[geoip.max_flip]\nipv4 = \"383\"\nipv6 = \"off\"");
        let f = Flip::compute(&old, &new, &approval_table(&c), &c.max_flip);
        assert!(f.v4.exceeds() && f.exceeds(), "one above the bound holds");

        // IPv6 alone: half of the located /32 moves; 50% passes, 49.99% not.
        let c = config("deny", "[geoip.max_flip]\nipv4 = \"off\"\nipv6 = \"50%\"");
        let f = Flip::compute(&old, &new, &approval_table(&c), &c.max_flip);
        assert_eq!(f.v6.bound, Some(1u128 << 95));
        assert!(!f.exceeds());
        let c = config(
            "deny",
            "[geoip.max_flip]\nipv4 = \"off\"\nipv6 = \"49.99%\"",
        );
        let f = Flip::compute(&old, &new, &approval_table(&c), &c.max_flip);
        assert!(f.v6.exceeds() && f.exceeds());

        // The defaults (a /8, a /20) hold neither here; 1% of the located
        // space would hold IPv6.
        let c = config("deny", "");
        let f = Flip::compute(&old, &new, &approval_table(&c), &c.max_flip);
        assert_eq!((f.v4.bound, f.v6.bound), (Some(1 << 24), Some(1 << 108)));
        assert!(!f.exceeds());
        let c = config("deny", "[geoip.max_flip]\nipv4 = \"1%\"\nipv6 = \"1%\"");
        let f = Flip::compute(&old, &new, &approval_table(&c), &c.max_flip);
        assert_eq!(f.v4.bound, Some((256 + (1 << 17)) / 100));
        assert!(!f.v4.exceeds() && f.v6.exceeds() && f.exceeds());
        // Identical data flips nothing, whatever the bound.
        let c = config("deny", "[geoip.max_flip]\nipv4 = \"0\"\nipv6 = \"0\"");
        let f = Flip::compute(&old, &old, &approval_table(&c), &c.max_flip);
        assert_eq!((f.v4.flipped(), f.v6.flipped()), (0, 0));
        assert!(!f.exceeds());
    }

    /// Held once per content: the same paths and hashes, in order.
    #[test]
    fn held_data_is_the_same_only_by_path_and_hash() {
        let info = |path: &str, sha: &str| SourceInfo {
            path: path.into(),
            format: geoip::Format::Csv,
            database_type: None,
            build_epoch: None,
            sha256: sha.into(),
        };
        let c = config("deny", "");
        let g = geo(&[], &[]);
        let held = HeldReload {
            since_unix: 1.0,
            trigger: "file_watch",
            flip: Flip::compute(&g, &g, &approval_table(&c), &c.max_flip),
            databases: vec![info("/a", "11"), info("/b", "22")],
        };
        assert!(held.same_data(&[info("/a", "11"), info("/b", "22")]));
        assert!(!held.same_data(&[info("/a", "11"), info("/b", "23")]));
        assert!(!held.same_data(&[info("/b", "22"), info("/a", "11")]));
        assert!(!held.same_data(&[info("/a", "11")]));
        assert_eq!(held.json()["databases"][1]["sha256"], "22");
        assert_eq!(held.json()["flip"]["ipv4"]["bound"], 1 << 24);
    }

    #[test]
    fn figures_are_exact_numbers_for_ipv4_and_strings_for_ipv6() {
        let old = geo(&[("198.51.100.0/24", "US")], &[("2001:db8::/32", "US")]);
        let new = geo(&[("198.51.100.0/24", "DE")], &[("2001:db8::/32", "DE")]);
        let c = config("deny", "[geoip.max_flip]\nipv4 = \"2^7\"\nipv6 = \"/33\"");
        let f = Flip::compute(&old, &new, &approval_table(&c), &c.max_flip);
        let v = serde_json::to_value(f.figures()).expect("serialises");
        assert_eq!(
            v,
            json!({
                "ipv4": {"allowed_to_refused": 0, "refused_to_allowed": 256, "flipped": 256,
                         "bound": 128, "max_flip": "128 addresses"},
                "ipv6": {"allowed_to_refused": "0", "refused_to_allowed": (1u128 << 96).to_string(),
                         "flipped": (1u128 << 96).to_string(), "bound": (1u128 << 95).to_string(),
                         "max_flip": "2^95 addresses"},
            })
        );
        assert_eq!(f.json()["ipv4"]["exceeds"], true);
        assert!(f.summary().starts_with("IPv4 256 addresses flipped (0 allowed -> refused, 256 refused -> allowed), bound 128"), "{}", f.summary());
    }
}
