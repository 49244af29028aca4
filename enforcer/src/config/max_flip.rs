//! `[geoip.max_flip]`: how much address space, per family, a reload may
//! move between allowed and refused before it is held (the reload guard,
//! see `crate::flip` and docs/geoip-data.md).
//!
//! A bound is written as text, the same grammar for both families:
//! - `"1%"`, `"0.25%"`: a share of the address space the data in force
//!   locates in that family (at most six decimals, 0 to 100). Relative to
//!   the located space, not the whole family, so that it means the same for
//!   IPv6 (whose space is almost all unallocated) as for IPv4;
//! - `"65536"`: a number of addresses; `"2^24"`: a power of two;
//! - `"/16"`: as many addresses as one prefix of that length holds;
//!   `"100 x /48"`: as many as that many such prefixes;
//! - `"off"`: no bound for that family.
//!
//! Unset, IPv4 defaults to [`DEFAULT_IPV4`] (a /8: 16.7 million
//! addresses, about 0.5% of what a world database locates) and IPv6 to
//! [`DEFAULT_IPV6`] (a /20, about 1.4%): generous enough that a routine
//! database update is not held, present so that a broken, truncated or
//! wrong-provider database (which moves tens of millions of addresses) is.
//! Absolute, not shares, so that a small source (a site list, a geofeed)
//! whose data in force locates few addresses can still be edited freely.

use std::fmt;

/// The bounds when `[geoip.max_flip]` does not set them.
pub const DEFAULT_IPV4: &str = "/8";
pub const DEFAULT_IPV6: &str = "/20";

/// Percentages are kept in parts of `PERCENT_SCALE` per percent (six
/// decimals), so that comparisons are exact integer arithmetic.
const PERCENT_SCALE: u128 = 1_000_000;

/// One family's bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlipBound {
    /// No bound: the guard never holds for this family.
    Off,
    /// At most this many addresses.
    Addresses(u128),
    /// At most this share of the located space, in millionths of a percent.
    Percent(u128),
}

impl FlipBound {
    /// Parses `text` for a family of `bits` (32 or 128); `key` names the
    /// setting in the error, which says what was expected.
    pub fn parse(key: &str, text: &str, bits: u32) -> Result<FlipBound, String> {
        let t = text.trim();
        let bad = |why: &str| {
            format!(
                "{key} {text:?}: {why} (expected a share like \"1%\", an address count like \"65536\" or \"2^24\", a prefix size like \"/16\" or \"100 x /48\", or \"off\")"
            )
        };
        if t.eq_ignore_ascii_case("off") {
            return Ok(FlipBound::Off);
        }
        if let Some(p) = t.strip_suffix('%') {
            let scaled = parse_percent(p.trim()).ok_or_else(|| bad("not a percentage"))?;
            if scaled > 100 * PERCENT_SCALE {
                return Err(bad("more than 100%"));
            }
            return Ok(FlipBound::Percent(scaled));
        }
        if let Some(rest) = t.strip_prefix("2^") {
            let k: u32 = rest.trim().parse().map_err(|_| bad("not a power of two"))?;
            if k > bits {
                return Err(bad(&format!("more than the {bits}-bit address space")));
            }
            return Ok(FlipBound::Addresses(pow2(k)));
        }
        if let Some((count, len)) = split_prefix(t) {
            let count: u128 = match count {
                None => 1,
                Some(c) => c.parse().map_err(|_| bad("not a prefix count"))?,
            };
            let len: u32 = len.parse().map_err(|_| bad("not a prefix length"))?;
            if len > bits {
                return Err(bad(&format!("prefix length above {bits}")));
            }
            let n = count
                .checked_mul(pow2(bits - len))
                .ok_or_else(|| bad("more than the address space"))?;
            return Ok(FlipBound::Addresses(n));
        }
        let n: u128 = t.parse().map_err(|_| bad("not understood"))?;
        if bits < 128 && n > 1u128 << bits {
            return Err(bad(&format!("more than the {bits}-bit address space")));
        }
        Ok(FlipBound::Addresses(n))
    }

    /// The bound in addresses, given how many the data in force locates in
    /// the family; `None` when off.
    pub fn addresses(self, located: u128) -> Option<u128> {
        match self {
            FlipBound::Off => None,
            FlipBound::Addresses(n) => Some(n),
            FlipBound::Percent(p) => Some(mul_div(located, p, 100 * PERCENT_SCALE)),
        }
    }
}

impl fmt::Display for FlipBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlipBound::Off => f.write_str("off"),
            // A power of two is easier read as one (the /N forms are).
            FlipBound::Addresses(n) if n.is_power_of_two() && *n >= 1024 => {
                write!(f, "2^{} addresses", n.trailing_zeros())
            }
            FlipBound::Addresses(n) => write!(f, "{n} addresses"),
            FlipBound::Percent(p) => {
                let whole = p / PERCENT_SCALE;
                let frac = p % PERCENT_SCALE;
                if frac == 0 {
                    write!(f, "{whole}%")
                } else {
                    let digits = format!("{frac:06}");
                    write!(f, "{whole}.{}%", digits.trim_end_matches('0'))
                }
            }
        }
    }
}

/// Both families' bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxFlip {
    pub ipv4: FlipBound,
    pub ipv6: FlipBound,
}

impl Default for MaxFlip {
    fn default() -> Self {
        // The defaults parse: the unit tests say so.
        MaxFlip {
            ipv4: FlipBound::parse("default", DEFAULT_IPV4, 32).unwrap_or(FlipBound::Off),
            ipv6: FlipBound::parse("default", DEFAULT_IPV6, 128).unwrap_or(FlipBound::Off),
        }
    }
}

/// `"[N x ]/L"` split into its count (if any) and length.
fn split_prefix(t: &str) -> Option<(Option<&str>, &str)> {
    let (head, len) = t.rsplit_once('/')?;
    let head = head.trim();
    if head.is_empty() {
        return Some((None, len.trim()));
    }
    let count = head
        .strip_suffix('x')
        .or_else(|| head.strip_suffix('×'))
        .or_else(|| head.strip_suffix('*'))?;
    Some((Some(count.trim()), len.trim()))
}

/// 2^k, saturating at u128::MAX for k = 128 (2^128 does not fit a u128;
/// as a bound it is the same, since no flip exceeds u128::MAX).
fn pow2(k: u32) -> u128 {
    1u128.checked_shl(k).unwrap_or(u128::MAX)
}

/// A decimal number with at most six decimals, times [`PERCENT_SCALE`].
fn parse_percent(p: &str) -> Option<u128> {
    let (int, frac) = p.split_once('.').unwrap_or((p, ""));
    if (int.is_empty() && frac.is_empty())
        || frac.len() > 6
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac: u128 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").parse().ok()?
    };
    int.checked_mul(PERCENT_SCALE)?.checked_add(frac)
}

/// `a * b / d` rounded down, without overflow for `b <= d` (the share of a
/// located count).
fn mul_div(a: u128, b: u128, d: u128) -> u128 {
    let (q, r) = (a / d, a % d);
    q.saturating_mul(b).saturating_add(r * b / d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(t: &str) -> Result<FlipBound, String> {
        FlipBound::parse("geoip.max_flip.ipv4", t, 32)
    }
    fn v6(t: &str) -> Result<FlipBound, String> {
        FlipBound::parse("geoip.max_flip.ipv6", t, 128)
    }

    #[test]
    fn every_form_parses_to_its_address_count() {
        assert_eq!(v4("off"), Ok(FlipBound::Off));
        assert_eq!(v4("65536"), Ok(FlipBound::Addresses(65_536)));
        assert_eq!(v4(" 2^24 "), Ok(FlipBound::Addresses(1 << 24)));
        assert_eq!(v4("/16"), Ok(FlipBound::Addresses(65_536)));
        assert_eq!(v4("4 x /24"), Ok(FlipBound::Addresses(1024)));
        assert_eq!(v4("0"), Ok(FlipBound::Addresses(0)));
        assert_eq!(v4("/0"), Ok(FlipBound::Addresses(1 << 32)));
        assert_eq!(v6("100 x /48"), Ok(FlipBound::Addresses(100u128 << 80)));
        assert_eq!(v6("/0"), Ok(FlipBound::Addresses(u128::MAX)));
        assert_eq!(v6("2^128"), Ok(FlipBound::Addresses(u128::MAX)));
        assert_eq!(v4("1%"), Ok(FlipBound::Percent(1_000_000)));
        assert_eq!(v4("0.25%"), Ok(FlipBound::Percent(250_000)));
        assert_eq!(v4(".5%"), Ok(FlipBound::Percent(500_000)));
        assert_eq!(v4("100%"), Ok(FlipBound::Percent(100_000_000)));
        assert_eq!(v4("0.000001%"), Ok(FlipBound::Percent(1)));
    }

    #[test]
    fn bad_values_are_refused_naming_the_key() {
        for (bad, why) in [
            ("12 parsecs", "not understood"),
            ("101%", "more than 100%"),
            ("-1%", "not a percentage"),
            ("1.0000001%", "not a percentage"),
            ("%", "not a percentage"),
            ("2^33", "more than the 32-bit address space"),
            ("/33", "prefix length above 32"),
            ("4294967297", "more than the 32-bit address space"),
            ("x /24", "not a prefix count"),
            ("-5", "not understood"),
            ("", "not understood"),
        ] {
            let e = v4(bad).expect_err(bad);
            assert!(e.starts_with("geoip.max_flip.ipv4 "), "{e}");
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.contains("expected a share like"), "{e}");
        }
        let e = v6("2^129").expect_err("too big");
        assert!(e.starts_with("geoip.max_flip.ipv6 "), "{e}");
        assert!(v6("400000000000000000000000000000000000000").is_err());
    }

    #[test]
    fn a_share_is_of_the_located_space_rounded_down() {
        let located = 3_700_000_000u128;
        assert_eq!(v4("1%").unwrap().addresses(located), Some(37_000_000));
        assert_eq!(v4("0.5%").unwrap().addresses(1000), Some(5));
        assert_eq!(v4("0.05%").unwrap().addresses(1000), Some(0));
        assert_eq!(v4("100%").unwrap().addresses(located), Some(located));
        assert_eq!(v4("off").unwrap().addresses(located), None);
        assert_eq!(v4("/16").unwrap().addresses(0), Some(65_536));
        // The whole IPv6 space located: no overflow.
        assert_eq!(v6("100%").unwrap().addresses(u128::MAX), Some(u128::MAX));
        assert_eq!(v6("50%").unwrap().addresses(u128::MAX), Some(u128::MAX / 2));
        assert_eq!(v6("1%").unwrap().addresses(0), Some(0));
    }

    #[test]
    fn the_default_is_present_and_shown_as_written() {
        let d = MaxFlip::default();
        assert_eq!(d.ipv4, FlipBound::Addresses(1 << 24));
        assert_eq!(d.ipv6, FlipBound::Addresses(1 << 108));
        assert_eq!(d.ipv4.to_string(), "2^24 addresses");
        assert_eq!(d.ipv6.to_string(), "2^108 addresses");
        assert_eq!(v4("1%").unwrap().to_string(), "1%");
        assert_eq!(v4("0.250%").unwrap().to_string(), "0.25%");
        assert_eq!(v4("/22").unwrap().to_string(), "2^10 addresses");
        assert_eq!(v4("1000").unwrap().to_string(), "1000 addresses");
        assert_eq!(v4("512").unwrap().to_string(), "512 addresses");
        assert_eq!(v4("off").unwrap().to_string(), "off");
    }
}
