//! Jurisdiction sets (EU, EEA, adequacy decisions, …) and the resolution of
//! policy lists such as `["EEA", "!HU", "CH"]`.
//!
//! The sets are data, not code: `geoip/data/jurisdictions.toml`, embedded at
//! build time, with each set's official source and the date it was checked.
//! A unit test parses it, so a broken file fails the build's tests rather
//! than an agent at startup.

use std::{collections::BTreeSet, sync::LazyLock};

use serde::Deserialize;

use crate::CountryCode;

const DATA: &str = include_str!("../data/jurisdictions.toml");

/// One named set.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Set {
    /// Its name as written in the data file (matched case-insensitively).
    pub name: String,
    /// What it is, including scope limits.
    pub description: String,
    /// URL of the official list it follows.
    pub source: String,
    /// The date the list was checked (YYYY-MM-DD).
    pub as_of: String,
    /// Member codes, sorted and deduplicated.
    pub members: Vec<CountryCode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    set: Vec<Set>,
}

fn parse(text: &str) -> Result<Vec<Set>, String> {
    let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut names = BTreeSet::new();
    let mut sets = file.set;
    for s in &mut sets {
        if !names.insert(s.name.to_ascii_uppercase()) {
            return Err(format!("set {:?} is defined twice", s.name));
        }
        s.members.sort();
        s.members.dedup();
    }
    Ok(sets)
}

static SETS: LazyLock<Result<Vec<Set>, String>> = LazyLock::new(|| parse(DATA));

/// Every set, in file order. Empty if the embedded data were invalid (a
/// unit test guarantees they are not; [`resolve`] reports it).
pub fn all() -> &'static [Set] {
    SETS.as_deref().unwrap_or(&[])
}

/// The set called `name` (case-insensitive).
pub fn get(name: &str) -> Option<&'static Set> {
    all().iter().find(|s| s.name.eq_ignore_ascii_case(name))
}

/// The set names, e.g. `["EU", "EEA", "EU_TERRITORIES", "ADEQUACY"]`.
pub fn names() -> Vec<&'static str> {
    all().iter().map(|s| s.name.as_str()).collect()
}

/// The members of the set called `name` (case-insensitive).
pub fn members(name: &str) -> Option<Vec<CountryCode>> {
    get(name).map(|s| s.members.clone())
}

/// Why a policy list does not resolve.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    /// An item that is neither a country code nor a set name.
    #[error(
        "{item:?} is neither a country code (two letters, e.g. DE) nor a set name \
         (sets: {valid}; prefix ! to remove, e.g. !HU)"
    )]
    Unknown {
        /// The item as written.
        item: String,
        /// The valid set names, comma-separated.
        valid: String,
    },
    /// Two letters that are not an assigned ISO 3166-1 code: a typo
    /// (`UK` for GB, `EL` for GR) must not silently approve nothing.
    #[error(
        "{item:?} is not an assigned ISO 3166-1 alpha-2 country code (the United Kingdom is GB, \
         Greece GR; sets: {valid})"
    )]
    Unassigned {
        /// The item as written.
        item: String,
        /// The valid set names, comma-separated.
        valid: String,
    },
    /// An empty item (or a lone `!`).
    #[error(
        "empty item {item:?}: expected a country code (e.g. DE), a set name ({valid}), or !CODE / !SET"
    )]
    Empty {
        /// The item as written.
        item: String,
        /// The valid set names, comma-separated.
        valid: String,
    },
    /// The embedded data file does not parse (a build defect).
    #[error("the embedded jurisdiction data (geoip/data/jurisdictions.toml) is invalid: {0}")]
    Data(String),
}

/// Resolves a policy list. Each item is a country code (`"CH"`), a set name
/// (`"EEA"`, case-insensitive) or a removal of either (`"!HU"`, `"!EU"`).
/// The result is the union of the positive items minus every removed code,
/// whatever the order.
///
/// Set names take precedence over codes: `EU` means the 27 member states,
/// not the pseudo-code `EU` ("Europe, not more specific") that some
/// databases have used; such addresses cannot be approved by code.
pub fn resolve<S: AsRef<str>>(items: &[S]) -> Result<BTreeSet<CountryCode>, SetError> {
    if let Err(e) = &*SETS {
        return Err(SetError::Data(e.clone()));
    }
    let valid = || names().join(", ");
    let mut add = BTreeSet::new();
    let mut remove = BTreeSet::new();
    for item in items {
        let raw = item.as_ref();
        let text = raw.trim();
        let (negated, body) = match text.strip_prefix('!') {
            Some(rest) => (true, rest.trim()),
            None => (false, text),
        };
        if body.is_empty() {
            return Err(SetError::Empty {
                item: raw.to_owned(),
                valid: valid(),
            });
        }
        let codes: Vec<CountryCode> = if let Some(set) = get(body) {
            set.members.clone()
        } else if let Some(code) = CountryCode::from_text(body) {
            if !code.is_assigned() {
                return Err(SetError::Unassigned {
                    item: raw.to_owned(),
                    valid: valid(),
                });
            }
            vec![code]
        } else {
            return Err(SetError::Unknown {
                item: raw.to_owned(),
                valid: valid(),
            });
        };
        if negated {
            remove.extend(codes);
        } else {
            add.extend(codes);
        }
    }
    Ok(add.difference(&remove).copied().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_set_member_is_an_assigned_code() {
        for set in all() {
            for m in &set.members {
                assert!(m.is_assigned(), "set {}: {m} is not assigned", set.name);
            }
        }
        assert!(!all().is_empty());
    }

    fn cc(s: &str) -> CountryCode {
        s.parse().unwrap()
    }

    #[test]
    fn embedded_data_parses_with_sources_and_dates() {
        let sets = SETS.as_ref().expect("jurisdictions.toml parses");
        assert!(sets.len() >= 3);
        for s in sets {
            assert!(s.source.starts_with("https://"), "{}: source", s.name);
            let d = s.as_of.as_bytes();
            assert!(
                d.len() == 10
                    && d[4] == b'-'
                    && d[7] == b'-'
                    && s.as_of.replace('-', "").bytes().all(|b| b.is_ascii_digit()),
                "{}: as_of {:?} is YYYY-MM-DD",
                s.name,
                s.as_of
            );
            assert!(
                !s.description.is_empty() && !s.members.is_empty(),
                "{}",
                s.name
            );
        }
        // Duplicates in the file would be silently merged by dedup: refuse.
        let raw: toml::Value = toml::from_str(DATA).unwrap();
        for s in raw["set"].as_array().unwrap() {
            let m = s["members"].as_array().unwrap();
            let uniq: BTreeSet<_> = m.iter().map(|v| v.as_str().unwrap()).collect();
            assert_eq!(uniq.len(), m.len(), "{} lists a code twice", s["name"]);
            for v in m {
                // Every code is two uppercase ASCII letters as written.
                let t = v.as_str().unwrap();
                assert!(
                    t.len() == 2 && t.bytes().all(|b| b.is_ascii_uppercase()),
                    "{t:?}"
                );
            }
        }
    }

    #[test]
    fn names_include_the_required_sets() {
        let n = names();
        for want in ["EU", "EEA", "ADEQUACY"] {
            assert!(n.contains(&want), "{n:?}");
        }
    }

    #[test]
    fn eu_has_27_and_eea_is_eu_plus_three() {
        let eu: BTreeSet<_> = members("EU").unwrap().into_iter().collect();
        assert_eq!(eu.len(), 27);
        assert!(eu.contains(&cc("GR")) && !eu.contains(&cc("GB")));
        let eea: BTreeSet<_> = members("eea").unwrap().into_iter().collect();
        assert_eq!(eea.len(), 30);
        assert!(eu.is_subset(&eea));
        let extra: Vec<_> = eea.difference(&eu).map(|c| c.to_string()).collect();
        assert_eq!(extra, ["IS", "LI", "NO"]);
    }

    #[test]
    fn adequacy_is_disjoint_from_eea_and_has_the_known_decisions() {
        let eea: BTreeSet<_> = members("EEA").unwrap().into_iter().collect();
        let adequacy: BTreeSet<_> = members("Adequacy").unwrap().into_iter().collect();
        assert!(adequacy.is_disjoint(&eea));
        for c in [
            "AD", "AR", "CA", "CH", "FO", "GB", "GG", "IL", "IM", "JE", "JP", "KR", "NZ", "US",
            "UY", "BR",
        ] {
            assert!(adequacy.contains(&cc(c)), "{c}");
        }
        let territories: BTreeSet<_> = members("EU_TERRITORIES").unwrap().into_iter().collect();
        assert!(territories.is_disjoint(&eea));
    }

    #[test]
    fn resolve_union_minus_removals_in_any_order() {
        let r = resolve(&["EEA", "!HU", "CH"]).unwrap();
        assert_eq!(r.len(), 30);
        assert!(r.contains(&cc("CH")) && r.contains(&cc("NO")) && !r.contains(&cc("HU")));
        assert_eq!(resolve(&["!HU", "ch", "eea"]).unwrap(), r);
        assert_eq!(resolve(&[" EEA ", "! HU", "CH"]).unwrap(), r);
        assert_eq!(resolve(&["EEA", "!EU"]).unwrap().len(), 3);
        // A removal wins over an explicit addition too.
        assert!(resolve(&["DE", "!DE"]).unwrap().is_empty());
        assert!(resolve::<&str>(&[]).unwrap().is_empty());
        let owned = vec!["EU".to_string()];
        assert_eq!(resolve(&owned).unwrap().len(), 27);
    }

    #[test]
    fn resolve_errors_name_the_item_and_list_the_sets() {
        let e = resolve(&["EEA", "EUROPE"]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("\"EUROPE\" is neither a country code"),
            "{msg}"
        );
        assert!(msg.contains("EU, EEA"), "{msg}");
        assert!(msg.contains("ADEQUACY"), "{msg}");
        let e = resolve(&["D3"]).unwrap_err();
        assert!(
            matches!(&e, SetError::Unknown { item, .. } if item == "D3"),
            "{e}"
        );
        for typo in ["UK", "XX", "!EL"] {
            let e = resolve(&[typo]).unwrap_err();
            assert!(
                matches!(&e, SetError::Unassigned { item, .. } if item == typo),
                "{e}"
            );
            assert!(e.to_string().contains("not an assigned"), "{e}");
        }
        let e = resolve(&["!"]).unwrap_err();
        assert!(
            matches!(&e, SetError::Empty { item, .. } if item == "!"),
            "{e}"
        );
        assert!(e.to_string().contains("EEA"), "{e}");
        let e = resolve(&[""]).unwrap_err();
        assert!(matches!(e, SetError::Empty { .. }));
        let e = resolve(&["!XYZ"]).unwrap_err();
        assert!(e.to_string().starts_with("\"!XYZ\" is neither"), "{e}");
    }

    #[test]
    fn bad_data_files_are_reported() {
        let dup = "[[set]]\nname='A1'\ndescription='d'\nsource='s'\nas_of='x'\nmembers=['DE']\n";
        assert!(
            parse(&format!("{dup}{dup}"))
                .unwrap_err()
                .contains("defined twice")
        );
        let bad = "[[set]]\nname='ABC'\ndescription='d'\nsource='s'\nas_of='x'\nmembers=['DEU']\n";
        assert!(parse(bad).unwrap_err().contains("DEU"));
    }
}
