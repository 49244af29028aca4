//! An exact, compact binary form of a [`GeoTable`]: the maximal runs of
//! both families and the alias set, as they are in memory. The agent keeps
//! the data in force in this form (its reload guard's baseline, see the
//! enforcer's `baseline` module), so that a restart can compare the data on
//! disk with what the kernel holds.
//!
//! Not a MaxMind DB: a `.mmdb` round trip goes through a search tree and
//! the alias detection, and need not give back the same table; this form
//! does, by construction. Layout (integers little-endian):
//!
//! ```text
//! "EEGEOTB1"                      magic and version (8 bytes)
//! aliases: u8                     [`Aliases::bits`]
//! v4 runs: u64, v6 runs: u64      counts
//! v4 runs: (start u32, end u32, country [u8; 2]) each
//! v6 runs: (start u128, end u128, country [u8; 2]) each
//! SHA-256 of every byte before it (32 bytes)
//! ```
//!
//! Reading checks everything (the checksum, the length, the codes, the
//! order): a damaged file is an error naming it, never a different table.

use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::{
    Aliases, CountryCode, GeoTable, GeoipError,
    table::{Family, Run, Table, WideRun},
};

const MAGIC: &[u8; 8] = b"EEGEOTB1";
const HEADER: usize = 8 + 1 + 8 + 8;
const V4_RUN: usize = 4 + 4 + 2;
const V6_RUN: usize = 16 + 16 + 2;
const DIGEST: usize = 32;

impl GeoTable {
    /// The table in the snapshot form (see the module docs).
    pub fn to_snapshot(&self) -> Vec<u8> {
        let (n4, n6) = (self.v4.range_count(), self.v6.range_count());
        let mut out = Vec::with_capacity(HEADER + n4 * V4_RUN + n6 * V6_RUN + DIGEST);
        out.extend_from_slice(MAGIC);
        out.push(self.aliases.bits());
        out.extend_from_slice(&(n4 as u64).to_le_bytes());
        out.extend_from_slice(&(n6 as u64).to_le_bytes());
        for (s, e, c) in self.v4.ranges() {
            out.extend_from_slice(&u32::from(s).to_le_bytes());
            out.extend_from_slice(&u32::from(e).to_le_bytes());
            out.extend_from_slice(&c.as_bytes());
        }
        for (s, e, c) in self.v6.ranges() {
            out.extend_from_slice(&u128::from(s).to_le_bytes());
            out.extend_from_slice(&u128::from(e).to_le_bytes());
            out.extend_from_slice(&c.as_bytes());
        }
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        out
    }

    /// Reads a table written by [`GeoTable::to_snapshot`]; `path` names
    /// the file in errors. Gives back exactly the table written.
    pub fn from_snapshot(bytes: &[u8], path: &Path) -> Result<GeoTable, GeoipError> {
        let bad = |reason: String| GeoipError::Format {
            path: path.to_owned(),
            reason: format!("not a valid table snapshot: {reason}"),
        };
        if bytes.len() < HEADER + DIGEST || &bytes[..8] != MAGIC {
            return Err(bad(format!(
                "no {:?} header ({} bytes)",
                String::from_utf8_lossy(MAGIC),
                bytes.len()
            )));
        }
        let (body, digest) = bytes.split_at(bytes.len() - DIGEST);
        if Sha256::digest(body).as_slice() != digest {
            return Err(bad(
                "the checksum does not match (truncated or damaged)".into()
            ));
        }
        let aliases = body[8];
        if aliases & !7 != 0 {
            return Err(bad(format!("unknown alias bits {aliases:#04x}")));
        }
        let count = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&body[at..at + 8]);
            usize::try_from(u64::from_le_bytes(b)).ok()
        };
        let (Some(n4), Some(n6)) = (count(9), count(17)) else {
            return Err(bad("run counts out of range".into()));
        };
        let expected = n4
            .checked_mul(V4_RUN)
            .zip(n6.checked_mul(V6_RUN))
            .and_then(|(a, b)| a.checked_add(b))
            .and_then(|r| r.checked_add(HEADER));
        if expected != Some(body.len()) {
            return Err(bad(format!(
                "{} bytes for {n4} IPv4 and {n6} IPv6 ranges",
                body.len()
            )));
        }
        let (v4_bytes, v6_bytes) = body[HEADER..].split_at(n4 * V4_RUN);
        let v4 = runs(v4_bytes, V4_RUN, 4, |b| {
            let mut x = [0u8; 4];
            x.copy_from_slice(b);
            u128::from(u32::from_le_bytes(x))
        })
        .map_err(|m| bad(format!("IPv4 {m}")))?;
        let v6 = runs(v6_bytes, V6_RUN, 16, |b| {
            let mut x = [0u8; 16];
            x.copy_from_slice(b);
            u128::from_le_bytes(x)
        })
        .map_err(|m| bad(format!("IPv6 {m}")))?;
        Ok(GeoTable {
            v4: exact::<std::net::Ipv4Addr>(v4).map_err(|m| bad(format!("IPv4 {m}")))?,
            v6: exact::<std::net::Ipv6Addr>(v6).map_err(|m| bad(format!("IPv6 {m}")))?,
            aliases: Aliases::from_bits(aliases),
        })
    }
}

/// Decodes fixed-size runs of `width`-byte addresses; checks the codes and
/// that the runs are sorted, disjoint and not empty.
fn runs(
    bytes: &[u8],
    size: usize,
    width: usize,
    addr: impl Fn(&[u8]) -> u128,
) -> Result<Vec<WideRun>, String> {
    let mut out: Vec<WideRun> = Vec::with_capacity(bytes.len() / size);
    for (i, chunk) in bytes.chunks_exact(size).enumerate() {
        let start = addr(&chunk[..width]);
        let end = addr(&chunk[width..2 * width]);
        let code = [chunk[2 * width], chunk[2 * width + 1]];
        let country = CountryCode::new(code)
            .filter(|c| c.as_bytes() == code)
            .ok_or_else(|| format!("range {i}: country {code:?} is not two uppercase letters"))?;
        if start > end {
            return Err(format!("range {i}: starts after it ends"));
        }
        if out.last().is_some_and(|p| p.end >= start) {
            return Err(format!("range {i}: overlaps or precedes the one before"));
        }
        out.push(Run {
            start,
            end,
            country,
        });
    }
    Ok(out)
}

/// The table of `runs`, which must be maximal already: merging any would
/// mean the file is not what [`GeoTable::to_snapshot`] wrote.
fn exact<A: Family>(runs: Vec<WideRun>) -> Result<Table<A>, String> {
    if let Some(i) = runs
        .windows(2)
        .position(|w| w[0].country == w[1].country && w[0].end.checked_add(1) == Some(w[1].start))
    {
        return Err(format!("ranges {i} and {} should be one", i + 1));
    }
    Ok(Table::<A>::from_wide_runs(runs))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::Alias;

    fn sample() -> GeoTable {
        let cc = |s: &str| s.parse::<CountryCode>().expect("test code");
        GeoTable {
            v4: Table::<Ipv4Addr>::from_entries([
                ("0.0.0.0/8".parse().expect("net"), cc("AU")),
                ("198.18.0.0/15".parse().expect("net"), cc("US")),
                ("198.51.100.0/24".parse().expect("net"), cc("DE")),
                ("198.51.100.20/32".parse().expect("net"), cc("US")),
                ("255.255.255.255/32".parse().expect("net"), cc("ZZ")),
            ]),
            v6: Table::<Ipv6Addr>::from_entries([
                ("2001:db8::/32".parse().expect("net"), cc("FR")),
                ("2001:db8:1::20/128".parse().expect("net"), cc("US")),
                ("ffff::/16".parse().expect("net"), cc("XK")),
            ]),
            aliases: Aliases::NONE.with(Alias::SixToFour),
        }
    }

    #[test]
    fn a_table_reads_back_identical() {
        let t = sample();
        let bytes = t.to_snapshot();
        let back = GeoTable::from_snapshot(&bytes, Path::new("t.bin")).expect("reads back");
        assert_eq!(back, t);
        assert_eq!(back.aliases, t.aliases);
        assert_eq!(back.v4.len(), t.v4.len());
        assert_eq!(back.v6.range_count(), t.v6.range_count());
        let empty = GeoTable::default();
        assert_eq!(
            GeoTable::from_snapshot(&empty.to_snapshot(), Path::new("e.bin")).expect("empty"),
            empty
        );
    }

    #[test]
    fn damage_is_an_error_naming_the_file() {
        let bytes = sample().to_snapshot();
        let err = |b: &[u8]| {
            GeoTable::from_snapshot(b, Path::new("/run/x/base.bin"))
                .expect_err("damaged")
                .to_string()
        };
        let e = err(&bytes[..bytes.len() - 1]);
        assert!(
            e.starts_with("/run/x/base.bin: ") && e.contains("checksum"),
            "{e}"
        );
        let mut flipped = bytes.clone();
        flipped[HEADER + 3] ^= 1;
        assert!(err(&flipped).contains("checksum"));
        assert!(err(b"").contains("header"));
        assert!(err(b"EEGEOTB2 and some more bytes to be long enough").contains("header"));

        // A well-formed checksum over a body that lies: still refused.
        let reseal = |mut body: Vec<u8>| {
            let d = Sha256::digest(&body);
            body.extend_from_slice(&d);
            body
        };
        let body = bytes[..bytes.len() - DIGEST].to_vec();
        let mut lower = body.clone();
        lower[HEADER + 8] = b'd'; // the first IPv4 country, lower case
        assert!(err(&reseal(lower)).contains("not two uppercase letters"));
        let mut count = body.clone();
        count[9] += 1; // one IPv4 range more than there is
        assert!(err(&reseal(count)).contains("bytes for"));
        let mut order = body.clone();
        // The second IPv4 range starts at 0: before the first one ends.
        order[HEADER + V4_RUN..HEADER + V4_RUN + 4].copy_from_slice(&0u32.to_le_bytes());
        assert!(err(&reseal(order)).contains("overlaps"));
    }
}
