//! Aggregated prefix tables: [`Table`] per address family, [`Diff`] between
//! two of them, and the [`Family`] trait that makes one implementation serve
//! IPv4 and IPv6.
//!
//! A table is stored as a sorted vector of disjoint, maximal runs
//! `(start, end, country)`: adjacent runs never share a country, so the runs
//! are the canonical form of "which address maps to which country". Prefixes
//! are derived from the runs on demand (the minimal CIDR cover of each run),
//! which is what the kernel's LPM tries take; the runs themselves suit flat
//! kernel layouts (sorted range starts per /16 and search trees over /64s),
//! so both are exposed.

use std::{
    fmt,
    hash::Hash,
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::CountryCode;

mod sealed {
    pub trait Sealed {}
    impl Sealed for std::net::Ipv4Addr {}
    impl Sealed for std::net::Ipv6Addr {}
}

/// An address family: [`Ipv4Addr`] or [`Ipv6Addr`]. Sealed.
///
/// The arithmetic is done in `u128` for both families (an IPv4 address fits,
/// and no IPv4 computation can overflow it), so the trait only converts.
pub trait Family:
    sealed::Sealed + Copy + Ord + Hash + fmt::Debug + fmt::Display + Send + Sync + 'static
{
    /// The family's network type: [`Ipv4Network`] or [`Ipv6Network`].
    type Net: Copy + Ord + Hash + fmt::Debug + fmt::Display + Send + Sync + 'static;
    /// The address as an integer: `u32` or `u128` (keeps IPv4 tables small).
    type Int: Copy + Ord + Hash + fmt::Debug + Send + Sync + 'static;
    /// Address width in bits: 32 or 128.
    const BITS: u32;

    /// The address as an integer.
    fn to_int(self) -> Self::Int;
    /// The address of an integer.
    fn from_int(i: Self::Int) -> Self;
    /// Widens the integer.
    fn int_to_u128(i: Self::Int) -> u128;
    /// Narrows; callers only pass values below `2^BITS`.
    fn int_from_u128(v: u128) -> Self::Int;
    /// The network `start/prefix` (`prefix` is clamped to `BITS`; host bits
    /// in `start` are kept, as [`Ipv4Network::new`] does).
    fn make_net(start: u128, prefix: u8) -> Self::Net;
    /// The first address (host bits cleared) and the prefix length of `net`.
    fn net_parts(net: Self::Net) -> (u128, u8);
    /// The network as an [`IpNetwork`].
    fn to_ip_network(net: Self::Net) -> IpNetwork;
}

impl Family for Ipv4Addr {
    type Net = Ipv4Network;
    type Int = u32;
    const BITS: u32 = 32;

    fn to_int(self) -> u32 {
        self.into()
    }
    fn from_int(i: u32) -> Self {
        i.into()
    }
    fn int_to_u128(i: u32) -> u128 {
        i.into()
    }
    fn int_from_u128(v: u128) -> u32 {
        v as u32
    }
    fn make_net(start: u128, prefix: u8) -> Ipv4Network {
        // Callers pass prefix <= 32; clamping keeps this total anyway.
        let addr = Ipv4Addr::from(start as u32);
        Ipv4Network::new(addr, prefix.min(32)).unwrap_or_else(|_| Ipv4Network::from(addr))
    }
    fn net_parts(net: Ipv4Network) -> (u128, u8) {
        (u32::from(net.network()).into(), net.prefix())
    }
    fn to_ip_network(net: Ipv4Network) -> IpNetwork {
        IpNetwork::V4(net)
    }
}

impl Family for Ipv6Addr {
    type Net = Ipv6Network;
    type Int = u128;
    const BITS: u32 = 128;

    fn to_int(self) -> u128 {
        self.into()
    }
    fn from_int(i: u128) -> Self {
        i.into()
    }
    fn int_to_u128(i: u128) -> u128 {
        i
    }
    fn int_from_u128(v: u128) -> u128 {
        v
    }
    fn make_net(start: u128, prefix: u8) -> Ipv6Network {
        // Callers pass prefix <= 128; clamping keeps this total anyway.
        let addr = Ipv6Addr::from(start);
        Ipv6Network::new(addr, prefix.min(128)).unwrap_or_else(|_| Ipv6Network::from(addr))
    }
    fn net_parts(net: Ipv6Network) -> (u128, u8) {
        (net.network().into(), net.prefix())
    }
    fn to_ip_network(net: Ipv6Network) -> IpNetwork {
        IpNetwork::V6(net)
    }
}

/// The last address of the prefix `start/prefix` in a `bits`-wide family.
pub(crate) fn prefix_end(start: u128, prefix: u8, bits: u32) -> u128 {
    let host_bits = bits - u32::from(prefix);
    if host_bits >= 128 {
        u128::MAX
    } else {
        start | ((1u128 << host_bits) - 1)
    }
}

/// The largest address of a `bits`-wide family.
pub(crate) fn family_max(bits: u32) -> u128 {
    if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

/// The minimal CIDR cover of the inclusive range `[start, end]`, in address
/// order: `(first address, prefix length)` pairs.
///
/// At each step the next block is the largest one that starts at the cursor
/// (alignment: trailing zeros of the cursor) and does not pass `end`.
#[derive(Clone, Debug)]
pub(crate) struct Cover {
    next: Option<u128>,
    end: u128,
    bits: u32,
}

impl Cover {
    pub(crate) fn new(start: u128, end: u128, bits: u32) -> Cover {
        Cover {
            next: (start <= end).then_some(start),
            end,
            bits,
        }
    }
}

impl Iterator for Cover {
    type Item = (u128, u8);

    fn next(&mut self) -> Option<(u128, u8)> {
        let s = self.next?;
        let align = if s == 0 {
            self.bits
        } else {
            s.trailing_zeros().min(self.bits)
        };
        let span = self.end - s; // number of addresses minus one
        // floor(log2(span + 1)), the largest block that fits in what is left.
        let fit = if span == u128::MAX {
            128
        } else {
            127 - (span + 1).leading_zeros()
        };
        let k = align.min(fit);
        let block_end = if k >= 128 {
            u128::MAX
        } else {
            s + ((1u128 << k) - 1)
        };
        self.next = if block_end >= self.end {
            None
        } else {
            Some(block_end + 1)
        };
        Some((s, (self.bits - k) as u8))
    }
}

/// One maximal run of addresses that map to the same country.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Run<I> {
    pub(crate) start: I,
    pub(crate) end: I,
    pub(crate) country: CountryCode,
}

/// A run in `u128` arithmetic, the form every construction works in.
pub(crate) type WideRun = Run<u128>;

/// The changes that turn one table's prefix set into another's.
///
/// Applying `removed` (delete these exact prefixes) and `upserted` (insert or
/// overwrite these) to the old table's prefixes yields exactly the new
/// table's prefixes, so an LPM trie holding the old table can be brought to
/// the new one in place, in either order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diff<N> {
    /// Prefixes in the old table and not in the new one.
    pub removed: Vec<N>,
    /// Prefixes of the new table that are absent from the old one or map to a
    /// different country there.
    pub upserted: Vec<(N, CountryCode)>,
}

impl<N> Default for Diff<N> {
    fn default() -> Self {
        Diff {
            removed: Vec::new(),
            upserted: Vec::new(),
        }
    }
}

impl<N> Diff<N> {
    /// True when the tables hold the same prefixes with the same countries.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.upserted.is_empty()
    }

    /// Number of map operations the diff costs.
    pub fn len(&self) -> usize {
        self.removed.len() + self.upserted.len()
    }
}

/// A sorted, non-overlapping, aggregated prefix table of one family.
///
/// Equality compares what the tables say about every address.
#[derive(Clone, PartialEq, Eq)]
pub struct Table<A: Family> {
    runs: Vec<Run<A::Int>>,
    prefixes: usize,
}

impl<A: Family> Default for Table<A> {
    fn default() -> Self {
        Table {
            runs: Vec::new(),
            prefixes: 0,
        }
    }
}

impl<A: Family> fmt::Debug for Table<A> {
    // A world table has a million entries: print its size, not its contents.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("family_bits", &A::BITS)
            .field("ranges", &self.runs.len())
            .field("prefixes", &self.prefixes)
            .finish()
    }
}

impl<A: Family> Table<A> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of prefixes ([`prefixes`](Self::prefixes) yields this many).
    pub fn len(&self) -> usize {
        self.prefixes
    }

    /// True when no address is located.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Number of maximal same-country ranges ([`ranges`](Self::ranges)).
    pub fn range_count(&self) -> usize {
        self.runs.len()
    }

    /// Number of addresses located, as `u128` (saturates at `2^128 - 1`).
    pub fn address_count(&self) -> u128 {
        self.wide_runs().fold(0u128, |acc, r| {
            acc.saturating_add(r.end - r.start).saturating_add(1)
        })
    }

    /// The prefixes, sorted by address: the minimal CIDR cover of each
    /// maximal same-country range.
    pub fn prefixes(&self) -> impl Iterator<Item = (A::Net, CountryCode)> + '_ {
        self.wide_runs().flat_map(|r| {
            Cover::new(r.start, r.end, A::BITS).map(move |(s, p)| (A::make_net(s, p), r.country))
        })
    }

    /// The maximal same-country ranges `(first, last, country)`, inclusive,
    /// sorted; adjacent ranges have different countries (or a gap between).
    pub fn ranges(&self) -> impl Iterator<Item = (A, A, CountryCode)> + '_ {
        self.runs
            .iter()
            .map(|r| (A::from_int(r.start), A::from_int(r.end), r.country))
    }

    /// The country of `addr`, if located. Binary search over the ranges.
    pub fn country(&self, addr: A) -> Option<CountryCode> {
        self.find(addr.to_int()).map(|r| r.country)
    }

    /// The table prefix containing `addr` and its country.
    pub fn lookup(&self, addr: A) -> Option<(A::Net, CountryCode)> {
        let run = self.find(addr.to_int())?;
        let a = A::int_to_u128(addr.to_int());
        // A range's cover has at most 2 * BITS prefixes: walking it is cheap.
        Cover::new(A::int_to_u128(run.start), A::int_to_u128(run.end), A::BITS)
            .find(|&(s, p)| a >= s && a <= prefix_end(s, p, A::BITS))
            .map(|(s, p)| (A::make_net(s, p), run.country))
    }

    fn find(&self, a: A::Int) -> Option<&Run<A::Int>> {
        let i = self.runs.partition_point(|r| r.start <= a);
        let run = self.runs.get(i.checked_sub(1)?)?;
        (a <= run.end).then_some(run)
    }

    /// What changed from `self` to `new`, by exact prefix.
    pub fn diff(&self, new: &Table<A>) -> Diff<A::Net> {
        let mut diff = Diff::default();
        let key = |(n, _): &(A::Net, CountryCode)| A::net_parts(*n);
        let mut old_it = self.prefixes().peekable();
        let mut new_it = new.prefixes().peekable();
        // Both sides are sorted by first address, strictly increasing, so
        // they are sorted by (first address, prefix length) too: a merge join.
        loop {
            match (old_it.peek(), new_it.peek()) {
                (None, None) => break,
                (Some(_), None) => diff.removed.extend(old_it.by_ref().map(|(n, _)| n)),
                (None, Some(_)) => diff.upserted.extend(new_it.by_ref()),
                (Some(o), Some(n)) => match key(o).cmp(&key(n)) {
                    std::cmp::Ordering::Less => {
                        diff.removed.push(o.0);
                        old_it.next();
                    }
                    std::cmp::Ordering::Greater => {
                        diff.upserted.push(*n);
                        new_it.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if o.1 != n.1 {
                            diff.upserted.push(*n);
                        }
                        old_it.next();
                        new_it.next();
                    }
                },
            }
        }
        diff
    }

    /// Builds a table from prefixes in any order. Prefixes may nest: a more
    /// specific prefix overrides the one containing it; for the same prefix
    /// given twice the later entry wins. Host bits are ignored.
    pub fn from_entries(entries: impl IntoIterator<Item = (A::Net, CountryCode)>) -> Self {
        let items = entries
            .into_iter()
            .map(|(net, c)| {
                let (start, prefix) = A::net_parts(net);
                (start, prefix, c)
            })
            .collect();
        Self::from_wide_runs(paint(items, A::BITS))
    }

    /// The table that, for every address, says what the first of `tables`
    /// that locates the address says.
    pub fn layered(tables: &[&Table<A>]) -> Self {
        let mut acc: Vec<WideRun> = Vec::new();
        for t in tables {
            let lower: Vec<WideRun> = t.wide_runs().collect();
            acc = overlay(&acc, &lower);
        }
        Self::from_wide_runs(acc)
    }

    pub(crate) fn wide_runs(&self) -> impl Iterator<Item = WideRun> + '_ {
        self.runs.iter().map(|r| Run {
            start: A::int_to_u128(r.start),
            end: A::int_to_u128(r.end),
            country: r.country,
        })
    }

    /// Builds from sorted, disjoint runs (adjacent equal countries allowed):
    /// merges them into maximal runs and counts the prefixes.
    pub(crate) fn from_wide_runs(runs: Vec<WideRun>) -> Self {
        let mut out: Vec<Run<A::Int>> = Vec::with_capacity(runs.len());
        let mut prefixes = 0usize;
        let mut pending: Option<WideRun> = None;
        let mut flush = |r: WideRun, out: &mut Vec<Run<A::Int>>| {
            prefixes += Cover::new(r.start, r.end, A::BITS).count();
            out.push(Run {
                start: A::int_from_u128(r.start),
                end: A::int_from_u128(r.end),
                country: r.country,
            });
        };
        for r in runs {
            debug_assert!(r.start <= r.end && r.end <= family_max(A::BITS));
            pending = match pending {
                Some(p) if p.country == r.country && p.end.checked_add(1) == Some(r.start) => {
                    Some(Run { end: r.end, ..p })
                }
                Some(p) => {
                    debug_assert!(p.end < r.start, "runs must be sorted and disjoint");
                    flush(p, &mut out);
                    Some(r)
                }
                None => Some(r),
            };
        }
        if let Some(p) = pending {
            flush(p, &mut out);
        }
        // Sized for the input, which can be several times the merged runs;
        // the table lives as long as the agent.
        out.shrink_to_fit();
        Table {
            runs: out,
            prefixes,
        }
    }

    /// Builds from runs in any order that must not overlap; on overlap
    /// returns the two offending runs (used for database trees, where an
    /// overlap means corruption, not a priority rule).
    pub(crate) fn from_disjoint(mut runs: Vec<WideRun>) -> Result<Self, (WideRun, WideRun)> {
        // Tree walks produce sorted runs already; sorting is then linear.
        runs.sort_by_key(|r| r.start);
        if let Some(w) = runs.windows(2).find(|w| w[0].end >= w[1].start) {
            return Err((w[0], w[1]));
        }
        Ok(Self::from_wide_runs(runs))
    }
}

/// Resolves nested prefixes `(first address, prefix length, country)` into
/// sorted, disjoint runs: the most specific prefix containing an address
/// decides it; among identical prefixes the later one in `items`.
///
/// Prefixes are either nested or disjoint, so after sorting by (start,
/// length) a stack of open containers describes the nesting at the cursor.
pub(crate) fn paint(items: Vec<(u128, u8, CountryCode)>, bits: u32) -> Vec<WideRun> {
    let mut items: Vec<(u128, u8, usize, CountryCode)> = items
        .into_iter()
        .enumerate()
        .map(|(seq, (s, p, c))| {
            let p = p.min(bits as u8);
            let host = bits - u32::from(p);
            // Clear host bits so that nesting holds.
            let s = if host >= 128 {
                0
            } else {
                s & !((1u128 << host) - 1)
            };
            (s, p, seq, c)
        })
        .collect();
    items.sort_unstable_by_key(|&(s, p, seq, _)| (s, p, seq));

    let mut out: Vec<WideRun> = Vec::with_capacity(items.len());
    let mut emit = |start: u128, end: u128, country: CountryCode| {
        out.push(Run {
            start,
            end,
            country,
        });
    };
    // Open containers, innermost last: (last address, country).
    let mut stack: Vec<(u128, CountryCode)> = Vec::new();
    // The first address not yet emitted; None once past the family's end.
    let mut cursor: Option<u128> = Some(0);
    for (s, p, _, c) in items {
        let e = prefix_end(s, p, bits);
        while let Some(&(te, tc)) = stack.last() {
            if te >= s {
                break;
            }
            if let Some(cur) = cursor.filter(|&cur| cur <= te) {
                emit(cur, te, tc);
            }
            cursor = Some(te + 1); // te < s, so no overflow
            stack.pop();
        }
        if let Some(&(_, tc)) = stack.last()
            && let Some(cur) = cursor.filter(|&cur| cur < s)
        {
            // The container's part before the nested prefix.
            emit(cur, s - 1, tc);
        }
        cursor = Some(s);
        stack.push((e, c));
    }
    while let Some((te, tc)) = stack.pop() {
        if let Some(cur) = cursor.filter(|&cur| cur <= te) {
            emit(cur, te, tc);
        }
        cursor = te.checked_add(1);
    }
    out
}

/// Puts `lower` under `upper`: the result has every run of `upper` and the
/// parts of `lower`'s runs that `upper` does not cover. Both inputs sorted
/// and disjoint; so is the output.
pub(crate) fn overlay(upper: &[WideRun], lower: &[WideRun]) -> Vec<WideRun> {
    let mut gaps: Vec<WideRun> = Vec::new();
    let mut j = 0;
    for b in lower {
        while j < upper.len() && upper[j].end < b.start {
            j += 1;
        }
        let mut cur = b.start;
        let mut k = j;
        loop {
            match upper.get(k) {
                Some(u) if u.start <= b.end => {
                    if u.start > cur {
                        gaps.push(Run {
                            start: cur,
                            end: u.start - 1,
                            country: b.country,
                        });
                    }
                    if u.end >= b.end {
                        break;
                    }
                    cur = cur.max(u.end + 1);
                    k += 1;
                }
                _ => {
                    gaps.push(Run { start: cur, ..*b });
                    break;
                }
            }
        }
    }
    // Merge two sorted, mutually disjoint lists.
    let mut out = Vec::with_capacity(upper.len() + gaps.len());
    let (mut a, mut b) = (upper.iter().peekable(), gaps.into_iter().peekable());
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => x.start < y.start,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        if take_a {
            out.extend(a.next().copied());
        } else {
            out.extend(b.next());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn cc(s: &str) -> CountryCode {
        s.parse().unwrap()
    }
    fn v4(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }
    fn v6(s: &str) -> Ipv6Network {
        s.parse().unwrap()
    }
    fn t4(entries: &[(&str, &str)]) -> Table<Ipv4Addr> {
        Table::from_entries(entries.iter().map(|(n, c)| (v4(n), cc(c))))
    }
    fn list4(t: &Table<Ipv4Addr>) -> Vec<String> {
        t.prefixes().map(|(n, c)| format!("{n} {c}")).collect()
    }

    /// Deterministic pseudo-random numbers (splitmix64): no dependency, and
    /// a failing case can be replayed from its seed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn wide(&mut self) -> u128 {
            (u128::from(self.next()) << 64) | u128::from(self.next())
        }
    }

    #[test]
    fn cover_is_minimal_and_exact() {
        let c: Vec<_> = Cover::new(0, u128::MAX, 128).collect();
        assert_eq!(c, vec![(0, 0)]);
        let c: Vec<_> = Cover::new(0, u32::MAX.into(), 32).collect();
        assert_eq!(c, vec![(0, 0)]);
        // 10.0.0.1 - 10.0.0.6: /32 /31 /31 /32
        let c: Vec<_> = Cover::new(0x0a00_0001, 0x0a00_0006, 32)
            .map(|(_, p)| p)
            .collect();
        assert_eq!(c, vec![32, 31, 31, 32]);
        let c: Vec<_> = Cover::new(u128::MAX, u128::MAX, 128).collect();
        assert_eq!(c, vec![(u128::MAX, 128)]);
        let c: Vec<_> = Cover::new(1, u128::MAX, 128).collect();
        assert_eq!(c.len(), 128);
        assert_eq!(c[0], (1, 128));
        assert_eq!(c[127], (1u128 << 127, 1));
        assert_eq!(Cover::new(5, 4, 32).count(), 0);
    }

    #[test]
    fn cover_random_ranges_are_exact_and_aligned() {
        let mut rng = Rng(7);
        for i in 0..2000 {
            let bits = if i % 2 == 0 { 32 } else { 128 };
            let max = family_max(bits);
            let (mut a, mut b) = (rng.wide() & max, rng.wide() & max);
            if i % 3 == 0 {
                b = a.saturating_add(rng.wide() % 1000).min(max);
            }
            if a > b {
                std::mem::swap(&mut a, &mut b);
            }
            let cover: Vec<_> = Cover::new(a, b, bits).collect();
            let mut next = a;
            for (k, &(s, p)) in cover.iter().enumerate() {
                assert_eq!(s, next);
                let e = prefix_end(s, p, bits);
                assert_eq!(s & (e - s), 0, "aligned");
                // Minimal: no two equal neighbours form one aligned block.
                if let Some(&(_, p2)) = cover.get(k + 1) {
                    assert!(
                        !(p == p2 && p > 0 && masked(s, p - 1, bits) == s),
                        "{a}-{b}"
                    );
                }
                next = e.wrapping_add(1);
            }
            assert_eq!(next.wrapping_sub(1), b);
            assert!(cover.len() <= 2 * bits as usize);
        }
    }

    #[test]
    fn adjacent_and_nested_same_country_merge() {
        let t = t4(&[("10.0.0.0/25", "DE"), ("10.0.0.128/25", "DE")]);
        assert_eq!(list4(&t), ["10.0.0.0/24 DE"]);
        let t = t4(&[("10.0.5.0/24", "DE"), ("10.0.0.0/16", "DE")]);
        assert_eq!(list4(&t), ["10.0.0.0/16 DE"]);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn more_specific_overrides_and_later_duplicate_wins() {
        let t = t4(&[
            ("10.0.0.0/8", "FR"),
            ("10.1.0.0/16", "US"),
            ("10.1.0.0/16", "CA"),
        ]);
        assert_eq!(list4(&t).len(), 9);
        assert_eq!(t.country("10.1.2.3".parse().unwrap()), Some(cc("CA")));
        assert_eq!(t.country("10.2.0.0".parse().unwrap()), Some(cc("FR")));
        assert_eq!(t.country("11.0.0.0".parse().unwrap()), None);
        let (net, c) = t.lookup("10.200.0.1".parse().unwrap()).unwrap();
        assert_eq!((net, c), (v4("10.128.0.0/9"), cc("FR")));
        let (net, _) = t.lookup("10.1.255.255".parse().unwrap()).unwrap();
        assert_eq!(net, v4("10.1.0.0/16"));
    }

    #[test]
    fn whole_space_and_edges() {
        let t = t4(&[
            ("0.0.0.0/0", "DE"),
            ("255.255.255.255/32", "FR"),
            ("0.0.0.0/32", "US"),
        ]);
        assert_eq!(t.country("0.0.0.0".parse().unwrap()), Some(cc("US")));
        assert_eq!(
            t.country("255.255.255.255".parse().unwrap()),
            Some(cc("FR"))
        );
        assert_eq!(t.country("128.0.0.0".parse().unwrap()), Some(cc("DE")));
        assert_eq!(t.range_count(), 3);
        assert_eq!(t.len(), 64);
        let t6 = Table::<Ipv6Addr>::from_entries([(v6("::/0"), cc("DE"))]);
        assert_eq!(t6.len(), 1);
        assert_eq!(t6.lookup(Ipv6Addr::LOCALHOST), Some((v6("::/0"), cc("DE"))));
        assert_eq!(t6.address_count(), u128::MAX);
        let t6 = Table::<Ipv6Addr>::from_entries([(
            v6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"),
            cc("DE"),
        )]);
        assert_eq!(t6.country(Ipv6Addr::from(u128::MAX)), Some(cc("DE")));
        assert!(Table::<Ipv4Addr>::new().is_empty());
        assert_eq!(Table::<Ipv4Addr>::new().lookup(Ipv4Addr::LOCALHOST), None);
    }

    #[test]
    fn host_bits_are_ignored() {
        let t = Table::<Ipv4Addr>::from_entries([(
            Ipv4Network::new("10.0.0.7".parse().unwrap(), 24).unwrap(),
            cc("DE"),
        )]);
        assert_eq!(list4(&t), ["10.0.0.0/24 DE"]);
    }

    #[test]
    fn diff_examples() {
        let old = t4(&[
            ("10.0.0.0/24", "DE"),
            ("10.0.1.0/24", "FR"),
            ("10.0.2.0/24", "US"),
        ]);
        let new = t4(&[
            ("10.0.0.0/24", "DE"),
            ("10.0.1.0/24", "NL"),
            ("10.0.3.0/24", "US"),
        ]);
        let d = old.diff(&new);
        assert_eq!(d.removed, vec![v4("10.0.2.0/24")]);
        assert_eq!(
            d.upserted,
            vec![(v4("10.0.1.0/24"), cc("NL")), (v4("10.0.3.0/24"), cc("US"))]
        );
        assert!(old.diff(&old).is_empty());
        assert_eq!(Table::new().diff(&old).upserted.len(), 3);
        assert_eq!(old.diff(&Table::new()).removed.len(), 3);
    }

    #[test]
    fn layered_first_wins() {
        let a = t4(&[("10.0.0.0/8", "FR")]);
        let b = t4(&[
            ("10.1.0.0/16", "US"),
            ("11.0.0.0/8", "US"),
            ("9.255.255.0/24", "CA"),
        ]);
        let t = Table::layered(&[&a, &b]);
        assert_eq!(t.country("10.1.2.3".parse().unwrap()), Some(cc("FR")));
        assert_eq!(t.country("11.1.2.3".parse().unwrap()), Some(cc("US")));
        assert_eq!(t.country("9.255.255.1".parse().unwrap()), Some(cc("CA")));
        let c = t4(&[("198.51.100.10/32", "DE")]);
        let d = t4(&[("198.51.100.0/24", "US")]);
        let t = Table::layered(&[&c, &d]);
        assert_eq!(t.country("198.51.100.10".parse().unwrap()), Some(cc("DE")));
        assert_eq!(t.country("198.51.100.11".parse().unwrap()), Some(cc("US")));
        assert_eq!(Table::layered(&[&d, &c]), d);
        assert_eq!(Table::<Ipv4Addr>::layered(&[]), Table::new());
    }

    /// A random prefix set with nesting, duplicates, adjacency and edge
    /// addresses, in a family of `bits` bits (prefix lengths from `lens`).
    fn random_entries(rng: &mut Rng, bits: u32, n: usize) -> Vec<(u128, u8, CountryCode)> {
        const CODES: [&str; 4] = ["DE", "FR", "US", "NL"];
        let max = family_max(bits);
        let mut out: Vec<(u128, u8, CountryCode)> = Vec::new();
        // Cluster addresses in a few regions so that prefixes nest and touch.
        let bases: Vec<u128> = (0..4)
            .map(|i| match i {
                0 => 0,
                1 => max & !0xffff,
                _ => rng.wide() & max,
            })
            .collect();
        for _ in 0..n {
            let base = bases[rng.below(bases.len() as u64) as usize];
            let p = match rng.below(10) {
                0 => rng.below(u64::from(bits) + 1) as u8,
                _ => (bits - rng.below(17) as u32) as u8,
            };
            let s = (base ^ (rng.wide() & 0x3ffff)) & max;
            let c = cc(CODES[rng.below(CODES.len() as u64) as usize]);
            if rng.below(8) == 0
                && let Some(&(ps, pp, _)) = out.last()
            {
                out.push((ps, pp, c)); // the same prefix again
            } else {
                out.push((s, p, c));
            }
        }
        out
    }

    fn masked(s: u128, p: u8, bits: u32) -> u128 {
        let host = bits - u32::from(p);
        if host >= 128 {
            0
        } else {
            s & !((1u128 << host) - 1)
        }
    }

    /// The naive answer: the most specific containing entry, latest on ties.
    fn naive(entries: &[(u128, u8, CountryCode)], bits: u32, a: u128) -> Option<CountryCode> {
        let mut best: Option<(u8, CountryCode)> = None;
        for &(s, p, c) in entries {
            let s = masked(s, p, bits);
            if a >= s && a <= prefix_end(s, p, bits) && best.is_none_or(|(bp, _)| p >= bp) {
                best = Some((p, c));
            }
        }
        best.map(|(_, c)| c)
    }

    /// Addresses worth probing: every entry's first and last address ±1, and
    /// random ones near the clusters.
    fn probes(rng: &mut Rng, entries: &[(u128, u8, CountryCode)], bits: u32) -> BTreeSet<u128> {
        let max = family_max(bits);
        let mut set = BTreeSet::new();
        for &(s, p, _) in entries {
            let s = masked(s, p, bits);
            let e = prefix_end(s, p, bits);
            for a in [s.wrapping_sub(1), s, s + (e - s) / 2, e, e.wrapping_add(1)] {
                set.insert(a & max);
            }
            set.insert((s ^ (rng.wide() & 0xfffff)) & max);
        }
        set.insert(0);
        set.insert(max);
        set
    }

    fn check_family<A: Family>(seed: u64) {
        let bits = A::BITS;
        let mut rng = Rng(seed);
        let n = 1 + rng.below(60) as usize;
        let entries = random_entries(&mut rng, bits, n);
        let nets: Vec<(A::Net, CountryCode)> = entries
            .iter()
            .map(|&(s, p, c)| (A::make_net(masked(s, p, bits), p), c))
            .collect();
        let t = Table::<A>::from_entries(nets.clone());

        // Structural invariants: sorted, disjoint, maximal; prefix count.
        let prefixes: Vec<_> = t.prefixes().collect();
        assert_eq!(prefixes.len(), t.len(), "seed {seed}");
        for w in prefixes.windows(2) {
            let (s0, p0) = A::net_parts(w[0].0);
            let (s1, _) = A::net_parts(w[1].0);
            assert!(
                prefix_end(s0, p0, bits) < s1,
                "seed {seed}: sorted, disjoint"
            );
        }
        let ranges: Vec<_> = t.ranges().collect();
        for w in ranges.windows(2) {
            let e0 = A::int_to_u128(w[0].1.to_int());
            let s1 = A::int_to_u128(w[1].0.to_int());
            assert!(
                e0 < s1 && (e0 + 1 < s1 || w[0].2 != w[1].2),
                "seed {seed}: maximal runs"
            );
        }
        // The prefix list rebuilt is the same table (aggregation is stable).
        assert_eq!(
            Table::<A>::from_entries(prefixes.iter().copied()),
            t,
            "seed {seed}"
        );

        // Every probe: same country as the naive reference, and lookup
        // returns a prefix of the table containing the address.
        let probe_set = probes(&mut rng, &entries, bits);
        for &a in &probe_set {
            let addr = A::from_int(A::int_from_u128(a));
            let want = naive(&entries, bits, a);
            assert_eq!(t.country(addr), want, "seed {seed} addr {addr}");
            match t.lookup(addr) {
                Some((net, c)) => {
                    assert_eq!(Some(c), want);
                    let (s, p) = A::net_parts(net);
                    assert!(a >= s && a <= prefix_end(s, p, bits));
                    assert!(
                        prefixes.contains(&(net, c)),
                        "seed {seed}: {net} not a table prefix"
                    );
                }
                None => assert_eq!(want, None),
            }
        }

        // Layering and diff against a second random table.
        let n2 = 1 + rng.below(60) as usize;
        let entries2 = random_entries(&mut rng, bits, n2);
        let nets2: Vec<(A::Net, CountryCode)> = entries2
            .iter()
            .map(|&(s, p, c)| (A::make_net(masked(s, p, bits), p), c))
            .collect();
        let t2 = Table::<A>::from_entries(nets2);
        let layered = Table::layered(&[&t, &t2]);
        let mut all_probes = probe_set;
        all_probes.extend(probes(&mut rng, &entries2, bits));
        for &a in &all_probes {
            let addr = A::from_int(A::int_from_u128(a));
            let want = t.country(addr).or_else(|| t2.country(addr));
            assert_eq!(layered.country(addr), want, "seed {seed} layered {addr}");
        }

        let diff = t.diff(&t2);
        let mut applied: std::collections::BTreeMap<A::Net, CountryCode> = t.prefixes().collect();
        for n in &diff.removed {
            assert!(
                applied.remove(n).is_some(),
                "seed {seed}: removed prefix was not there"
            );
        }
        for (n, c) in &diff.upserted {
            assert_ne!(
                applied.get(n),
                Some(c),
                "seed {seed}: upsert of an unchanged prefix"
            );
            applied.insert(*n, *c);
        }
        let want: std::collections::BTreeMap<A::Net, CountryCode> = t2.prefixes().collect();
        assert_eq!(
            applied, want,
            "seed {seed}: diff applied gives the new table"
        );
    }

    #[test]
    fn property_random_ipv4_tables() {
        for seed in 0..400 {
            check_family::<Ipv4Addr>(seed);
        }
    }

    #[test]
    fn property_random_ipv6_tables() {
        for seed in 1000..1400 {
            check_family::<Ipv6Addr>(seed);
        }
    }

    #[test]
    fn from_disjoint_rejects_overlap() {
        let r = |s, e| Run {
            start: s,
            end: e,
            country: cc("DE"),
        };
        assert!(Table::<Ipv4Addr>::from_disjoint(vec![r(5, 9), r(0, 4)]).is_ok());
        let (a, b) = Table::<Ipv4Addr>::from_disjoint(vec![r(5, 9), r(0, 5)]).unwrap_err();
        assert_eq!((a.start, b.start), (0, 5));
    }

    #[test]
    fn debug_is_short() {
        let t = t4(&[("10.0.0.0/8", "FR")]);
        assert_eq!(
            format!("{t:?}"),
            "Table { family_bits: 32, ranges: 1, prefixes: 1 }"
        );
    }
}
