//! The country index: a stable number for every ISO 3166-1 alpha-2 code.
//!
//! `index("ab") = 26*(a-'A') + (b-'A') + 1`, and 0 means "unknown". It needs
//! no lookup table, never changes when ISO adds a country, and sizes every
//! per-country array in the datapath ([`COUNTRY_SLOTS`] entries).

/// Index 0: the destination's country is not known.
pub const UNKNOWN_COUNTRY: u16 = 0;

/// Number of slots in a per-country array: 26*26 codes plus "unknown".
pub const COUNTRY_SLOTS: usize = 26 * 26 + 1;

/// The index of a two-letter code, or `None` when it is not two ASCII letters.
/// Lower case is accepted and folded to upper case.
pub const fn index(code: [u8; 2]) -> Option<u16> {
    let a = code[0].to_ascii_uppercase();
    let b = code[1].to_ascii_uppercase();
    if !a.is_ascii_uppercase() || !b.is_ascii_uppercase() {
        return None;
    }
    Some(26 * (a - b'A') as u16 + (b - b'A') as u16 + 1)
}

/// The two-letter code of an index, or `None` for 0 and out-of-range values.
pub const fn code(index: u16) -> Option<[u8; 2]> {
    if index == UNKNOWN_COUNTRY || index as usize >= COUNTRY_SLOTS {
        return None;
    }
    let i = index - 1;
    Some([b'A' + (i / 26) as u8, b'A' + (i % 26) as u8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_code() {
        let mut seen = 0;
        for a in b'A'..=b'Z' {
            for b in b'A'..=b'Z' {
                let i = index([a, b]).expect("letters are valid");
                assert!(i >= 1 && (i as usize) < COUNTRY_SLOTS);
                assert_eq!(code(i), Some([a, b]));
                seen += 1;
            }
        }
        assert_eq!(seen + 1, COUNTRY_SLOTS);
    }

    #[test]
    fn known_values_and_rejects() {
        assert_eq!(index(*b"AA"), Some(1));
        assert_eq!(index(*b"ZZ"), Some(676));
        assert_eq!(index(*b"de"), index(*b"DE"));
        assert_eq!(index(*b"D1"), None);
        assert_eq!(index(*b"--"), None);
        assert_eq!(code(0), None);
        assert_eq!(code(677), None);
    }
}
