//! The connection decision counters per destination country and scope
//! entry, summed over hooks and address families: the `decisions` field of
//! the `status` answer, which `enforcer top` shows.
//!
//! The sums are over exactly the counters behind
//! `enforcer_connections_total`, read at the same time as the rest of the
//! kernel view, so `top` shows the figures a scrape would.

use std::collections::BTreeMap;

use enforcer_common::Outcome;

use super::country_label;
use crate::datapath::counters::Count;

/// One row per (country, scope) that has a non-zero counter, with a count
/// for every verdict (zeros included, so a client need not know which
/// verdicts exist). Each count comes with its scope entry, or None when
/// the counters carry none (the figures are then those of every scope
/// entry together, and `scope` is null).
pub fn by_country_and_scope<'a>(
    counts: impl IntoIterator<Item = (Option<&'a str>, &'a Count)>,
) -> serde_json::Value {
    let mut rows: BTreeMap<(String, Option<String>), [u64; Outcome::COUNT]> = BTreeMap::new();
    for (scope, c) in counts {
        let row = rows
            .entry((country_label(c.country), scope.map(str::to_owned)))
            .or_default();
        if let Some(slot) = row.get_mut(c.outcome as usize) {
            *slot = slot.wrapping_add(c.value);
        }
    }
    rows.into_iter()
        .map(|((country, scope), values)| {
            let mut row = serde_json::Map::new();
            row.insert("country".into(), country.into());
            row.insert("scope".into(), scope.into());
            for (outcome, value) in Outcome::ALL.iter().zip(values) {
                row.insert(outcome.label().into(), value.into());
            }
            serde_json::Value::Object(row)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use enforcer_common::{Family, Hook, Outcome, country};

    use super::*;

    fn count(hook: Hook, family: Family, code: &str, outcome: Outcome, value: u64) -> Count {
        let b = code.as_bytes();
        Count {
            hook,
            family,
            country: country::index([b[0], b[1]]).expect("a country code"),
            outcome,
            value,
        }
    }

    #[test]
    fn sums_hooks_and_families_per_country() {
        let counts = [
            count(Hook::Connect4, Family::Ipv4, "US", Outcome::WouldDeny, 3),
            count(Hook::Connect6, Family::Ipv6, "US", Outcome::WouldDeny, 2),
            count(Hook::Sendmsg4, Family::Ipv4, "US", Outcome::Allowed, 1),
            count(Hook::Connect4, Family::Ipv4, "DE", Outcome::Allowed, 7),
        ];
        let rows = by_country_and_scope(counts.iter().map(|c| (None, c)));
        assert_eq!(
            rows,
            serde_json::json!([
                {"country": "DE", "scope": null, "allowed": 7, "denied": 0, "would_deny": 0, "exempt": 0},
                {"country": "US", "scope": null, "allowed": 1, "denied": 0, "would_deny": 5, "exempt": 0},
            ])
        );
        let scoped = [
            (Some("a"), &counts[0]),
            (Some("b"), &counts[1]),
            (Some("a"), &counts[1]),
        ];
        assert_eq!(
            by_country_and_scope(scoped),
            serde_json::json!([
                {"country": "US", "scope": "a", "allowed": 0, "denied": 0, "would_deny": 5, "exempt": 0},
                {"country": "US", "scope": "b", "allowed": 0, "denied": 0, "would_deny": 2, "exempt": 0},
            ])
        );
    }
}
