//! [`CountryCode`]: an ISO 3166-1 alpha-2 code, validated once at the edge so
//! the rest of the agent can index arrays with it without re-checking.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// Two ASCII uppercase letters, e.g. `DE`.
///
/// Any two letters are accepted, not only assigned ISO codes: databases use
/// user-assigned and exceptionally reserved codes (`XK` for Kosovo, `EU`,
/// `AP`, `ZZ`), and the datapath's country index covers all 676 pairs.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    /// The anycast class: ranges served from many countries at once (cloud
    /// providers' `GLOBAL` edge ranges, a global service tag without a
    /// region, or rows an operator marks so). Such a range is never given
    /// one country; the `anycast` policy decides it. `XA` is in ISO 3166-1's
    /// user-assigned space (AA, QM-QZ, XA-XZ, ZZ), which no country will
    /// ever get, and no GeoIP database reports it.
    pub const ANYCAST: CountryCode = CountryCode(*b"XA");

    /// Whether this is the [anycast class](Self::ANYCAST).
    pub fn is_anycast(self) -> bool {
        self == Self::ANYCAST
    }

    /// Accepts two ASCII letters in either case; `None` for anything else.
    pub fn new(b: [u8; 2]) -> Option<Self> {
        if b.iter().all(u8::is_ascii_alphabetic) {
            Some(CountryCode(b.map(|c| c.to_ascii_uppercase())))
        } else {
            None
        }
    }

    /// Parses `text` exactly (no trimming), case-insensitively.
    pub(crate) fn from_text(text: &str) -> Option<Self> {
        match text.as_bytes() {
            &[a, b] => Self::new([a, b]),
            _ => None,
        }
    }

    /// The two uppercase ASCII letters.
    pub fn as_bytes(self) -> [u8; 2] {
        self.0
    }

    /// The code as text, e.g. `"DE"`.
    pub fn as_str(&self) -> &str {
        // Both bytes are ASCII letters by construction, so this never fails;
        // the fallback only keeps the function free of a panic path.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CountryCode({})", self.as_str())
    }
}

/// The assigned ISO 3166-1 alpha-2 codes (and XK, AN), reviewed data.
const ASSIGNED_DATA: &str = include_str!("../data/iso3166-1.txt");

static ASSIGNED: std::sync::LazyLock<std::collections::BTreeSet<[u8; 2]>> =
    std::sync::LazyLock::new(|| {
        ASSIGNED_DATA
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(str::split_whitespace)
            .filter_map(|w| match w.as_bytes() {
                &[a, b] => Some([a, b]),
                _ => None,
            })
            .collect()
    });

impl CountryCode {
    /// Whether the code is an assigned ISO 3166-1 alpha-2 code (or XK,
    /// Kosovo, or AN, which databases still report): what a policy may
    /// name. Databases may report others.
    pub fn is_assigned(self) -> bool {
        ASSIGNED.contains(&self.0)
    }

    /// Every assigned code, sorted.
    pub fn assigned() -> impl Iterator<Item = CountryCode> {
        ASSIGNED.iter().map(|b| CountryCode(*b))
    }
}

/// The text that is not a country code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid country code {text:?}: expected two ASCII letters (ISO 3166-1 alpha-2, e.g. DE)")]
pub struct ParseCountryError {
    /// The text as given.
    pub text: String,
}

impl FromStr for CountryCode {
    type Err = ParseCountryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_text(s).ok_or_else(|| ParseCountryError { text: s.to_owned() })
    }
}

impl Serialize for CountryCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for CountryCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = CountryCode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a two-letter country code such as \"DE\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CountryCode, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_case_insensitively_and_displays_uppercase() {
        let c: CountryCode = "de".parse().unwrap();
        assert_eq!(c.to_string(), "DE");
        assert_eq!(c.as_str(), "DE");
        assert_eq!(c.as_bytes(), *b"DE");
        assert_eq!(format!("{c:?}"), "CountryCode(DE)");
        assert_eq!(CountryCode::new(*b"fr"), Some("FR".parse().unwrap()));
    }

    #[test]
    fn rejects_anything_but_two_letters() {
        for bad in ["", "D", "DEU", "D1", "1D", "Ä", "de ", " de", "--"] {
            let err = bad.parse::<CountryCode>().unwrap_err();
            assert_eq!(err.text, bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        assert_eq!(CountryCode::new([b'D', 0]), None);
    }

    #[test]
    fn the_anycast_class_is_no_country_a_policy_can_name() {
        assert!(CountryCode::ANYCAST.is_anycast());
        assert_eq!(CountryCode::ANYCAST, "xa".parse().unwrap());
        assert!(!CountryCode::ANYCAST.is_assigned());
        assert!(!"DE".parse::<CountryCode>().unwrap().is_anycast());
    }

    #[test]
    fn the_assigned_list_is_iso_3166_1_plus_kosovo() {
        let all: Vec<CountryCode> = CountryCode::assigned().collect();
        assert_eq!(all.len(), 251, "249 assigned codes, XK and AN");
        for c in &all {
            assert!(
                c.as_bytes().iter().all(u8::is_ascii_uppercase),
                "{c} in iso3166-1.txt"
            );
        }
        for ok in ["DE", "GR", "XK", "GB", "SS", "BQ"] {
            assert!(ok.parse::<CountryCode>().unwrap().is_assigned(), "{ok}");
        }
        for typo in ["UK", "EL", "XX", "ZZ", "EU", "AP", "QQ", "XA"] {
            assert!(
                !typo.parse::<CountryCode>().unwrap().is_assigned(),
                "{typo}"
            );
        }
    }

    #[test]
    fn serde_round_trip() {
        #[derive(Deserialize, Serialize)]
        struct T {
            c: CountryCode,
        }
        let t: T = toml::from_str("c = \"ch\"").unwrap();
        assert_eq!(t.c.as_str(), "CH");
        assert_eq!(toml::to_string(&t).unwrap().trim(), "c = \"CH\"");
        let err = toml::from_str::<T>("c = \"CHE\"")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("\"CHE\""), "{err}");
    }
}
