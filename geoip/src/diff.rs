//! What a new version of the data changes: the address space whose country
//! differs between two tables, aggregated by `(from, to)` pair, and how many
//! prefixes that touches. This is the data side of `enforcer geoip diff`;
//! the policy side (allowed/refused) lives in the agent, which owns the
//! verdict.
//!
//! The computation is exact interval arithmetic over the whole address
//! space of each family: one linear sweep over both tables' sorted,
//! disjoint runs, no sampling. IPv6 is counted in addresses (`u128`), not
//! in /64s, so that a move of a /96 is not rounded away; callers convert for
//! display. `None` as a country means "unlocated" (no row of the table
//! covers the address). The aliased IPv6 ranges of MaxMind databases
//! (6to4, IPv4-compatible) are answered through IPv4 and are therefore
//! counted once, in the IPv4 figures.

use std::collections::BTreeMap;

use crate::{
    CountryCode, GeoTable,
    table::{Family, Table, WideRun, prefix_end},
};

/// Address space that moved from one country (or unlocated) to another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Move {
    /// The country in the old table; `None`: unlocated.
    pub from: Option<CountryCode>,
    /// The country in the new table; `None`: unlocated.
    pub to: Option<CountryCode>,
    /// Number of addresses (IPv6: of 128-bit addresses).
    pub addresses: u128,
}

/// One maximal stretch of addresses whose country differs, with both sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangedRange {
    /// First address, as an integer of the family.
    pub start: u128,
    /// Last address (inclusive).
    pub end: u128,
    pub from: Option<CountryCode>,
    pub to: Option<CountryCode>,
}

impl ChangedRange {
    /// Number of addresses; cannot overflow except for the whole IPv6
    /// space changing at once, which saturates.
    pub fn addresses(&self) -> u128 {
        (self.end - self.start).saturating_add(1)
    }
}

/// The country changes of one family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FamilyChange {
    /// Addresses whose country differs (any pair, including to and from
    /// unlocated).
    pub changed: u128,
    /// Per `(from, to)` pair, largest first (ties by pair, unlocated first),
    /// every pair that moved at least one address.
    pub moves: Vec<Move>,
    /// Prefixes of the new table (its aggregated CIDR list, as the kernel
    /// holds it) that contain at least one changed address.
    pub new_prefixes_involved: usize,
    /// The same for the old table (a change to unlocated has no new prefix).
    pub old_prefixes_involved: usize,
    /// Prefixes of the old and the new table in all.
    pub old_prefixes: usize,
    pub new_prefixes: usize,
}

impl FamilyChange {
    /// Addresses located in the old table and not in the new one.
    pub fn located_to_unlocated(&self) -> u128 {
        self.sum(|m| m.from.is_some() && m.to.is_none())
    }

    /// Addresses not located in the old table and located in the new one.
    pub fn unlocated_to_located(&self) -> u128 {
        self.sum(|m| m.from.is_none() && m.to.is_some())
    }

    /// Addresses that moved from one country to another.
    pub fn between_countries(&self) -> u128 {
        self.sum(|m| m.from.is_some() && m.to.is_some())
    }

    fn sum(&self, pick: impl Fn(&Move) -> bool) -> u128 {
        self.moves
            .iter()
            .filter(|m| pick(m))
            .fold(0u128, |acc, m| acc.saturating_add(m.addresses))
    }
}

/// The country changes of both families.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CountryChange {
    pub v4: FamilyChange,
    pub v6: FamilyChange,
}

impl GeoTable {
    /// What changes, address by address, from `self` to `new`: see the
    /// module documentation.
    pub fn country_change(&self, new: &GeoTable) -> CountryChange {
        CountryChange {
            v4: family_change(&self.v4, &new.v4),
            v6: family_change(&self.v6, &new.v6),
        }
    }
}

/// The stretches of addresses whose country differs between `old` and
/// `new`, sorted and disjoint; they end where a run of either table ends.
pub fn changed_ranges<A: Family>(old: &Table<A>, new: &Table<A>) -> Vec<ChangedRange> {
    Sweep::new(old.wide_runs(), new.wide_runs()).collect()
}

/// The `(from, to)` moves of [`family_change`] alone, largest first, from
/// one pass that holds neither table's runs nor the changed stretches in
/// memory: what the agent's reload guard needs, at a cost of a few bytes
/// per country pair.
pub fn family_moves<A: Family>(old: &Table<A>, new: &Table<A>) -> Vec<Move> {
    moves_of(Sweep::new(old.wide_runs(), new.wide_runs())).1
}

/// The total and the per-pair moves of `changed`, largest first (ties by
/// pair, unlocated first).
fn moves_of(changed: impl Iterator<Item = ChangedRange>) -> (u128, Vec<Move>) {
    let mut pairs: BTreeMap<(Option<CountryCode>, Option<CountryCode>), u128> = BTreeMap::new();
    let mut total = 0u128;
    for c in changed {
        let n = c.addresses();
        total = total.saturating_add(n);
        let slot = pairs.entry((c.from, c.to)).or_default();
        *slot = slot.saturating_add(n);
    }
    let mut moves: Vec<Move> = pairs
        .into_iter()
        .map(|((from, to), addresses)| Move {
            from,
            to,
            addresses,
        })
        .collect();
    // Stable sort: equal sizes stay in pair order, so output is deterministic.
    moves.sort_by_key(|m| std::cmp::Reverse(m.addresses));
    (total, moves)
}

/// The sweep over both tables' sorted, disjoint runs, yielding each
/// maximal stretch whose country differs.
struct Sweep<I: Iterator<Item = WideRun>, J: Iterator<Item = WideRun>> {
    old: std::iter::Peekable<I>,
    new: std::iter::Peekable<J>,
    /// The first address not yet swept; None once past the family's end.
    pos: Option<u128>,
}

impl<I: Iterator<Item = WideRun>, J: Iterator<Item = WideRun>> Sweep<I, J> {
    fn new(old: I, new: J) -> Self {
        Sweep {
            old: old.peekable(),
            new: new.peekable(),
            pos: Some(0),
        }
    }
}

impl<I: Iterator<Item = WideRun>, J: Iterator<Item = WideRun>> Iterator for Sweep<I, J> {
    type Item = ChangedRange;

    fn next(&mut self) -> Option<ChangedRange> {
        while let Some(p) = self.pos {
            let (a, b) = (self.old.peek().copied(), self.new.peek().copied());
            if a.is_none() && b.is_none() {
                // Both unlocated from here on: nothing changes.
                self.pos = None;
                break;
            }
            // What each side says at `p`, and up to where it keeps saying
            // it. A run that ends before `p` has been passed: a side only
            // advances when the sweep reaches its run's end.
            let side = |r: Option<WideRun>| match r {
                Some(r) if r.start <= p => (Some(r.country), r.end),
                Some(r) => (None, r.start - 1), // r.start > p >= 0
                None => (None, u128::MAX),
            };
            let (from, old_end) = side(a);
            let (to, new_end) = side(b);
            let end = old_end.min(new_end);
            if from.is_some() && end == old_end {
                self.old.next();
            }
            if to.is_some() && end == new_end {
                self.new.next();
            }
            self.pos = end.checked_add(1);
            if from != to {
                // No merging needed: runs are maximal, so two adjacent
                // stretches always differ in `from` or `to`.
                return Some(ChangedRange {
                    start: p,
                    end,
                    from,
                    to,
                });
            }
        }
        None
    }
}

/// How many of `prefixes` (sorted, disjoint `(first, last)` pairs) contain
/// at least one address of `changed`.
fn involved(prefixes: impl Iterator<Item = (u128, u128)>, changed: &[ChangedRange]) -> usize {
    let mut k = 0;
    let mut n = 0;
    for (s, e) in prefixes {
        while k < changed.len() && changed[k].end < s {
            k += 1;
        }
        if changed.get(k).is_some_and(|c| c.start <= e) {
            n += 1;
        }
    }
    n
}

fn prefix_bounds<A: Family>(t: &Table<A>) -> impl Iterator<Item = (u128, u128)> + '_ {
    t.prefixes().map(|(net, _)| {
        let (s, p) = A::net_parts(net);
        (s, prefix_end(s, p, A::BITS))
    })
}

/// The country changes from `old` to `new` of one family.
pub fn family_change<A: Family>(old: &Table<A>, new: &Table<A>) -> FamilyChange {
    let changed = changed_ranges(old, new);
    let (total, moves) = moves_of(changed.iter().copied());
    FamilyChange {
        changed: total,
        moves,
        new_prefixes_involved: involved(prefix_bounds(new), &changed),
        old_prefixes_involved: involved(prefix_bounds(old), &changed),
        old_prefixes: old.len(),
        new_prefixes: new.len(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn cc(s: &str) -> Option<CountryCode> {
        Some(s.parse().unwrap())
    }
    fn t4(entries: &[(&str, &str)]) -> Table<Ipv4Addr> {
        Table::from_entries(
            entries
                .iter()
                .map(|(n, c)| (n.parse().unwrap(), c.parse().unwrap())),
        )
    }
    fn t6(entries: &[(&str, &str)]) -> Table<Ipv6Addr> {
        Table::from_entries(
            entries
                .iter()
                .map(|(n, c)| (n.parse().unwrap(), c.parse().unwrap())),
        )
    }
    fn mv(from: Option<CountryCode>, to: Option<CountryCode>, addresses: u128) -> Move {
        Move {
            from,
            to,
            addresses,
        }
    }

    #[test]
    fn identical_tables_change_nothing() {
        let t = t4(&[("10.0.0.0/8", "FR"), ("11.0.0.0/24", "DE")]);
        let c = family_change(&t, &t);
        assert_eq!(c.changed, 0);
        assert!(c.moves.is_empty());
        assert_eq!((c.new_prefixes_involved, c.old_prefixes_involved), (0, 0));
        assert_eq!(family_change(&Table::<Ipv4Addr>::new(), &Table::new()), {
            FamilyChange::default()
        });
    }

    #[test]
    fn adjacent_ranges_split_and_merge() {
        // Old: two adjacent /25s of different countries; new: one /24 DE.
        let old = t4(&[("10.0.0.0/25", "DE"), ("10.0.0.128/25", "FR")]);
        let new = t4(&[("10.0.0.0/24", "DE")]);
        let c = family_change(&old, &new);
        assert_eq!(c.changed, 128);
        assert_eq!(c.moves, vec![mv(cc("FR"), cc("DE"), 128)]);
        assert_eq!((c.old_prefixes_involved, c.new_prefixes_involved), (1, 1));
        assert_eq!((c.old_prefixes, c.new_prefixes), (2, 1));
        // And back.
        let c = family_change(&new, &old);
        assert_eq!(c.moves, vec![mv(cc("DE"), cc("FR"), 128)]);
        assert_eq!((c.old_prefixes_involved, c.new_prefixes_involved), (1, 1));
    }

    #[test]
    fn overlaps_and_unlocated() {
        let old = t4(&[("10.0.0.0/16", "FR"), ("10.1.0.0/24", "US")]);
        let new = t4(&[
            ("10.0.0.0/17", "FR"),  // 10.0.128.0/17 becomes unlocated
            ("10.0.64.0/24", "DE"), // FR -> DE inside what stays FR
            ("10.1.0.0/23", "US"),  // 10.1.1.0/24 newly located
            ("192.0.2.0/24", "NL"), // newly located, far away
        ]);
        let c = family_change(&old, &new);
        assert_eq!(c.changed, 32768 + 256 + 256 + 256);
        assert_eq!(c.located_to_unlocated(), 32768);
        assert_eq!(c.unlocated_to_located(), 512);
        assert_eq!(c.between_countries(), 256);
        assert_eq!(
            c.moves,
            vec![
                mv(cc("FR"), None, 32768),
                mv(None, cc("NL"), 256),
                mv(None, cc("US"), 256),
                mv(cc("FR"), cc("DE"), 256),
            ]
        );
        // New prefixes touched: 10.0.64.0/24 DE, 10.1.0.0/23 US,
        // 192.0.2.0/24 NL. Old: 10.0.0.0/16 FR.
        assert_eq!(c.new_prefixes_involved, 3);
        assert_eq!(c.old_prefixes_involved, 1);
        let ranges = changed_ranges(&old, &new);
        assert_eq!(ranges.len(), 4);
        assert!(ranges.windows(2).all(|w| w[0].end < w[1].start));
    }

    #[test]
    fn whole_space_edges() {
        let old = t4(&[("0.0.0.0/0", "DE")]);
        let new = t4(&[("0.0.0.0/32", "FR"), ("255.255.255.255/32", "FR")]);
        let c = family_change(&old, &new);
        assert_eq!(c.changed, 1 << 32);
        assert_eq!(c.between_countries(), 2);
        assert_eq!(c.located_to_unlocated(), (1 << 32) - 2);
        assert_eq!(c.new_prefixes_involved, 2);
        assert_eq!(c.old_prefixes_involved, 1);
    }

    #[test]
    fn ipv6_is_counted_in_addresses() {
        let old = t6(&[("2001:db8::/32", "DE"), ("2001:db9::/48", "FR")]);
        let new = t6(&[
            ("2001:db8::/32", "DE"),
            ("2001:db8:1::/64", "US"),
            ("2001:db8:2::/96", "NL"),
            ("2001:db9::/48", "FR"),
        ]);
        let c = family_change(&old, &new);
        assert_eq!(c.changed, (1u128 << 64) + (1u128 << 32));
        assert_eq!(
            c.moves,
            vec![
                mv(cc("DE"), cc("US"), 1u128 << 64),
                mv(cc("DE"), cc("NL"), 1u128 << 32),
            ]
        );
        assert_eq!(c.new_prefixes_involved, 2);
        assert_eq!(c.old_prefixes_involved, 1);
        // The whole IPv6 space from located to unlocated saturates rather
        // than overflowing.
        let all = t6(&[("::/0", "DE")]);
        let c = family_change(&all, &Table::new());
        assert_eq!(c.changed, u128::MAX);
        assert_eq!(c.located_to_unlocated(), u128::MAX);
    }

    #[test]
    fn geo_tables_diff_per_family() {
        let old = GeoTable {
            v4: t4(&[("198.51.100.0/24", "DE")]),
            v6: t6(&[("2001:db8::/32", "DE")]),
            ..GeoTable::default()
        };
        let new = GeoTable {
            v4: t4(&[("198.51.100.0/24", "US")]),
            v6: Table::new(),
            ..GeoTable::default()
        };
        let c = old.country_change(&new);
        assert_eq!(c.v4.moves, vec![mv(cc("DE"), cc("US"), 256)]);
        assert_eq!(c.v6.moves, vec![mv(cc("DE"), None, 1u128 << 96)]);
        assert_eq!(c.v6.new_prefixes_involved, 0);
    }

    /// Against a brute-force count over a small address space: every
    /// address of 10.0.0.0/20 looked up in both tables.
    #[test]
    fn matches_brute_force_on_random_small_tables() {
        let mut seed = 12345u64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let codes = ["DE", "FR", "US"];
        for _ in 0..50 {
            let mut make = || {
                let n = rnd(12) as usize;
                let entries: Vec<(String, &str)> = (0..n)
                    .map(|_| {
                        let p = 20 + rnd(9) as u8;
                        let off = rnd(1 << 12) as u32;
                        let a = Ipv4Addr::from(0x0a00_0000u32 | off);
                        let net = ipnetwork::Ipv4Network::new(a, p).unwrap();
                        (format!("{}/{}", net.network(), p), codes[rnd(3) as usize])
                    })
                    .collect();
                let refs: Vec<(&str, &str)> =
                    entries.iter().map(|(n, c)| (n.as_str(), *c)).collect();
                t4(&refs)
            };
            let (old, new) = (make(), make());
            let c = family_change(&old, &new);
            let mut want: BTreeMap<(Option<CountryCode>, Option<CountryCode>), u128> =
                BTreeMap::new();
            for a in 0x0a00_0000u32..0x0a00_1000 {
                let (f, t) = (old.country(a.into()), new.country(a.into()));
                if f != t {
                    *want.entry((f, t)).or_default() += 1;
                }
            }
            let got: BTreeMap<_, _> = c
                .moves
                .iter()
                .map(|m| ((m.from, m.to), m.addresses))
                .collect();
            assert_eq!(got, want);
            assert_eq!(family_moves(&old, &new), c.moves);
            let involved_new = new
                .prefixes()
                .filter(|(n, _)| n.iter().any(|a| old.country(a) != new.country(a)))
                .count();
            assert_eq!(c.new_prefixes_involved, involved_new);
        }
    }
}
