//! IPv6 ranges a database answers through its IPv4 tree.
//!
//! An IPv6 MaxMind DB keeps IPv4 at `::/96`, so it locates an
//! IPv4-compatible address `::a.b.c.d` as `a.b.c.d`. MaxMind's writers also
//! point `2002::/16` (6to4) and `2001::/32` (Teredo) at that same node:
//! `2002:AABB:CCDD::/48` is then located as `A.B.C.D` (the 32 bits after
//! the prefix), and `2001:0:AABB:CCDD::/64` as `A.B.C.D` too (for Teredo
//! that is the server's address, not the client's: the database says so,
//! not this crate). Whether a database does is measured from its search
//! tree ([`detect`]), never assumed: the flat ip-location-db databases keep
//! IPv4 at `::/96` but alias neither prefix. CSV sources have no aliases.
//!
//! `::ffff:0:0/96` (IPv4-mapped) is not one of these: it is always looked up
//! as IPv4, whatever the database does, because a dual-stack socket sends
//! to those addresses over IPv4.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};

/// One range an IPv6 database may answer through its IPv4 tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alias {
    /// `::/96`, IPv4-compatible: the IPv4 address is the last 32 bits.
    V4Compatible,
    /// `2001::/32`, Teredo: bits 32..64 (the Teredo server).
    Teredo,
    /// `2002::/16`, 6to4: bits 16..48.
    SixToFour,
}

impl Alias {
    /// Every alias, in the order of their bits.
    pub const ALL: [Alias; 3] = [Alias::V4Compatible, Alias::Teredo, Alias::SixToFour];

    /// The alias's bit in [`Aliases::bits`] (and in the datapath's word).
    pub const fn bit(self) -> u8 {
        match self {
            Alias::V4Compatible => 1,
            Alias::Teredo => 2,
            Alias::SixToFour => 4,
        }
    }

    /// The prefix's first address and length.
    pub const fn prefix(self) -> (u128, u8) {
        match self {
            Alias::V4Compatible => (0, 96),
            Alias::Teredo => (0x2001_0000 << 96, 32),
            Alias::SixToFour => (0x2002 << 112, 16),
        }
    }

    /// The prefix as text, for logs and docs.
    pub const fn name(self) -> &'static str {
        match self {
            Alias::V4Compatible => "::/96",
            Alias::Teredo => "2001::/32",
            Alias::SixToFour => "2002::/16",
        }
    }

    /// How far left of the last bit the IPv4 address sits.
    const fn shift(self) -> u32 {
        match self {
            Alias::V4Compatible => 0,
            Alias::Teredo => 64,
            Alias::SixToFour => 80,
        }
    }

    /// The IPv4 address `a` carries, when `a` is inside this prefix.
    pub fn embedded(self, a: Ipv6Addr) -> Option<Ipv4Addr> {
        let (start, len) = self.prefix();
        let x = u128::from(a);
        (x >> (128 - u32::from(len)) == start >> (128 - u32::from(len)))
            .then(|| Ipv4Addr::from((x >> self.shift()) as u32))
    }

    /// The IPv6 network of this prefix that `net` (IPv4) stands for, as the
    /// database reports it for a lookup through the alias.
    pub fn widen(self, net: Ipv4Network) -> Ipv6Network {
        let (start, len) = self.prefix();
        let addr = start | u128::from(u32::from(net.network())) << self.shift();
        Ipv6Network::new(Ipv6Addr::from(addr), len + net.prefix())
            .expect("a prefix of at most 32 bits after one of at most 96 fits in 128")
    }
}

/// The set of ranges a table answers through its IPv4 table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Aliases(u8);

impl Aliases {
    /// No alias (CSV sources, IPv4-only databases).
    pub const NONE: Aliases = Aliases(0);

    /// The set of `bits` (unknown bits ignored).
    pub const fn from_bits(bits: u8) -> Aliases {
        Aliases(bits & 7)
    }

    /// One bit per [`Alias`] in the set.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether `alias` is in the set.
    pub const fn contains(self, alias: Alias) -> bool {
        self.0 & alias.bit() != 0
    }

    /// The set with `alias` added.
    pub const fn with(self, alias: Alias) -> Aliases {
        Aliases(self.0 | alias.bit())
    }

    /// Both sets.
    pub const fn union(self, other: Aliases) -> Aliases {
        Aliases(self.0 | other.0)
    }

    /// The alias of this set that `a` is in and the IPv4 address it
    /// carries.
    pub fn resolve(self, a: Ipv6Addr) -> Option<(Alias, Ipv4Addr)> {
        Alias::ALL
            .into_iter()
            .filter(|al| self.contains(*al))
            .find_map(|al| al.embedded(a).map(|v4| (al, v4)))
    }

    /// The prefixes in the set, for logs.
    pub fn names(self) -> Vec<&'static str> {
        Alias::ALL
            .into_iter()
            .filter(|al| self.contains(*al))
            .map(Alias::name)
            .collect()
    }
}

/// Which prefixes an IPv6 database's search tree answers through its IPv4
/// tree: `::/96` always (that is where the IPv4 tree is), `2001::/32` and
/// `2002::/16` when the walk along the prefix reaches the same record as
/// the walk along 96 zero bits (the same node, or the same leaf when the
/// database has no IPv4 subtree). `tree` is the file's bytes (the tree is
/// at its start); a walk that leaves them (a corrupt file) finds no alias.
pub fn detect(tree: &[u8], node_count: u32, record_size: u16) -> Aliases {
    let v4_start = walk(tree, node_count, record_size, 0, 96);
    let mut found = Aliases::NONE.with(Alias::V4Compatible);
    for alias in [Alias::Teredo, Alias::SixToFour] {
        let (start, len) = alias.prefix();
        let reached = walk(tree, node_count, record_size, start, len);
        if reached.is_some() && reached == v4_start {
            found = found.with(alias);
        }
    }
    found
}

/// The record reached from the root after the first `bits` bits of `addr`
/// (or the leaf the walk ends in before). None when a node lies outside
/// `tree` or the record size is not one the format defines.
fn walk(tree: &[u8], node_count: u32, record_size: u16, addr: u128, bits: u8) -> Option<u64> {
    let node_bytes = usize::from(record_size) / 4;
    let mut record = 0u64;
    for i in 0..u32::from(bits) {
        if record >= u64::from(node_count) {
            break;
        }
        let at = usize::try_from(record).ok()?.checked_mul(node_bytes)?;
        let n = tree.get(at..at.checked_add(node_bytes)?)?;
        let right = (addr >> (127 - i)) & 1 == 1;
        let be = |b: &[u8]| b.iter().fold(0u64, |acc, &x| acc << 8 | u64::from(x));
        record = match (record_size, right) {
            (24, false) => be(&n[0..3]),
            (24, true) => be(&n[3..6]),
            (28, false) => u64::from(n[3] >> 4) << 24 | be(&n[0..3]),
            (28, true) => u64::from(n[3] & 0x0f) << 24 | be(&n[4..7]),
            (32, false) => be(&n[0..4]),
            (32, true) => be(&n[4..8]),
            _ => return None,
        };
    }
    Some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_addresses() {
        let a = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        let v4 = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            Alias::SixToFour.embedded(a("2002:808:404::1")),
            Some(v4("8.8.4.4"))
        );
        assert_eq!(
            Alias::Teredo.embedded(a("2001:0:5ef5:79fb:0:59d:a0e5:ba1")),
            Some(v4("94.245.121.251"))
        );
        assert_eq!(Alias::Teredo.embedded(a("2001:1::1")), None);
        assert_eq!(Alias::Teredo.embedded(a("2001:db8::1")), None);
        assert_eq!(
            Alias::V4Compatible.embedded(a("::198.51.100.7")),
            Some(v4("198.51.100.7"))
        );
        assert_eq!(Alias::V4Compatible.embedded(a("::ffff:1.2.3.4")), None);
        assert_eq!(Alias::SixToFour.embedded(a("2003::1")), None);
        let all = Aliases::from_bits(0xff);
        assert_eq!(all.bits(), 7);
        assert_eq!(
            all.resolve(a("2002:c612:1::")),
            Some((Alias::SixToFour, v4("198.18.0.1")))
        );
        assert_eq!(Aliases::NONE.resolve(a("2002:c612:1::")), None);
        assert_eq!(Aliases::NONE.with(Alias::Teredo).names(), vec!["2001::/32"]);
    }

    #[test]
    fn widened_networks() {
        let n: Ipv4Network = "8.8.0.0/14".parse().unwrap();
        assert_eq!(Alias::SixToFour.widen(n).to_string(), "2002:808::/30");
        assert_eq!(Alias::Teredo.widen(n).to_string(), "2001:0:808::/46");
        assert_eq!(Alias::V4Compatible.widen(n).to_string(), "::808:0/110");
    }

    #[test]
    fn walks_never_leave_the_tree() {
        // A tree of one node whose records point far outside the buffer.
        let tree = [0x00, 0x00, 0x05, 0x00, 0x00, 0x07];
        assert_eq!(
            detect(&tree, 100, 24),
            Aliases::NONE.with(Alias::V4Compatible)
        );
        assert_eq!(walk(&tree, 100, 24, 0, 96), None);
        assert_eq!(walk(&tree, 1, 24, 0, 96), Some(5));
        assert_eq!(walk(&tree, 1, 23, 0, 96), None);
        assert_eq!(walk(&[], 1, 24, 0, 96), None);
    }
}
