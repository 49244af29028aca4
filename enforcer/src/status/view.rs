//! The `status` answer as JSON: the running agent's view ([`agent_view`])
//! and the kernel's, read from the pinned maps alone ([`kernel_view`]), so
//! `enforcer status` can say what is enforced when no agent answers.

use std::{collections::BTreeMap, fs, path::Path};

use enforcer_common::{Mode, Outcome};

use super::{AgentStatus, country_label, map_fill, programs_attached, unix_now};
use crate::{
    datapath::{
        self, DatapathError,
        counters::{CounterKind, CounterReader},
    },
    paths::PinLayout,
};

/// What the running agent reports about itself.
pub fn agent_view(s: &AgentStatus) -> serde_json::Value {
    serde_json::json!({
        "pid": std::process::id(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": (unix_now() - s.started_unix).max(0.0).round(),
        "adopted": s.adopted,
        "mode": s.mode.map(Mode::label),
        "mode_source": if s.mode_from_runtime { "runtime" } else { "config" },
        "overrides": s.overrides.iter().map(|(path, mode, source)| serde_json::json!({
            "cgroup": path, "mode": mode.label(), "source": source,
        })).collect::<Vec<_>>(),
        "scope": s.scope,
        "interfaces": s.interfaces,
        "coverage": s.coverage,
        "coverage_repairs": s.coverage_repairs,
        "coverage_checked_unix": s.coverage_checked_unix,
        "generation": s.generation,
        "databases": databases(s),
        "prefixes": { "ipv4": s.prefixes_v4, "ipv6": s.prefixes_v6 },
        "rules": { "ipv4": s.rules_v4, "ipv6": s.rules_v6 },
        "map_fill": map_fill(s),
        "approved_countries": s.approved_countries,
        "policy_loads": { "ok": s.policy_loads_ok, "failed": s.policy_loads_failed },
        "last_error": s.last_error,
        "policy_sha256": s.policy_sha256,
        "audit_log": s.audit_file,
        "sinks": s.sinks.iter().map(|h| {
            let st = h.snapshot();
            serde_json::json!({
                "sink": h.name,
                "path": st.path,
                "state": if st.healthy { "ok" } else { "failing" },
                "last_error": st.last_error,
                "last_error_unix": st.last_error_unix,
                "write_errors": st.write_errors,
                "dropped": st.dropped,
                "reopens": st.reopens,
                "pending_bytes": st.pending_bytes,
            })
        }).collect::<Vec<_>>(),
        "privileges": s.privileges,
        "reload_held": s.reload_held.as_ref().map(crate::flip::HeldReload::json),
        "reload_guard_baseline": s.baseline.json(),
    })
}

/// The GeoIP databases in force, as `status` and `check` show them.
pub fn databases(s: &AgentStatus) -> Vec<serde_json::Value> {
    s.sources
        .iter()
        .map(|d| {
            let mut v = serde_json::json!({
                "path": d.path,
                "kind": d.format.label(),
                "type": d.database_type,
                "build_epoch": d.build_epoch,
                "sha256": d.sha256,
            });
            // Against `geoip.max_age`, when set and the database has a
            // build time (CSV sources have none).
            if let (Some(max), Some(built)) = (s.geoip_max_age, d.build_epoch) {
                let age = too_old(built, max, unix_now_secs());
                v["age_seconds"] = serde_json::json!(age.0);
                v["max_age_seconds"] = serde_json::json!(max.as_secs());
                v["too_old"] = serde_json::json!(age.1);
            }
            // The running agent's last comparison with the file on disk
            // (`check` and an agent that has not compared yet show none).
            if let Some(disk) = s.sources_on_disk.iter().find(|o| o.path == d.path) {
                v["on_disk"] = serde_json::json!(disk.state.label());
                match &disk.state {
                    crate::status::OnDisk::InForce => {}
                    crate::status::OnDisk::Differs { sha256 } => {
                        v["on_disk_sha256"] = serde_json::json!(sha256);
                    }
                    crate::status::OnDisk::Unreadable { error } => {
                        v["on_disk_error"] = serde_json::json!(error);
                    }
                }
            }
            v
        })
        .collect()
}

/// What the kernel holds, from the pinned maps alone (no agent needed).
pub fn kernel_view(pin_dir: &Path) -> Result<serde_json::Value, DatapathError> {
    let words = datapath::config_words(pin_dir)?;
    let links_dir = PinLayout::new(pin_dir).links;
    let mut links: Vec<String> = fs::read_dir(&links_dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    links.sort();
    let programs = programs_attached(&links_dir);

    let reader = CounterReader::open(pin_dir)?;
    let mut packets_by_verdict: BTreeMap<&str, u64> = BTreeMap::new();
    for c in reader.read(CounterKind::Packets)? {
        *packets_by_verdict.entry(c.outcome.label()).or_default() += c.value;
    }
    let suppressed = reader.suppressed()?;
    let mut by_verdict: BTreeMap<&str, u64> = BTreeMap::new();
    let mut refused_by_country: BTreeMap<String, u64> = BTreeMap::new();
    let connections = reader.connections()?;
    // By scope entry, as the metrics' `scope` label (`enforcer top`).
    let scoped = reader.read_scoped(CounterKind::Connections)?;
    for c in &connections {
        *by_verdict.entry(c.outcome.label()).or_default() += c.value;
        if matches!(c.outcome, Outcome::Denied | Outcome::WouldDeny) {
            *refused_by_country
                .entry(country_label(c.country))
                .or_default() += c.value;
        }
    }
    Ok(serde_json::json!({
        "pin_dir": pin_dir,
        "layout": words.layout,
        "mode": words.mode.map(Mode::label).unwrap_or("invalid"),
        "active_slot": words.slot,
        "generation": words.generation,
        "links": links,
        "programs_attached": programs,
        "connections": by_verdict,
        "packets": packets_by_verdict,
        "events_suppressed": {
            "rate_limit": suppressed.rate_limit,
            "ring_full": suppressed.ring_full,
        },
        "denied_or_would_deny_by_country": refused_by_country,
        // Per country and scope, for `enforcer top`.
        "decisions": super::decisions::by_country_and_scope(
            scoped.iter().map(|s| (Some(s.scope.as_str()), &s.count))
        ),
        // The layouts whose counts are included (they continue across a
        // layout upgrade, see datapath::carry).
        "counters_carried_from": reader.carried_from(),
    }))
}

/// A database's age (seconds since its build time, 0 for one built "in
/// the future") and whether it exceeds `max_age`.
pub fn too_old(build_epoch: u64, max_age: std::time::Duration, now: u64) -> (u64, bool) {
    let age = now.saturating_sub(build_epoch);
    (age, age > max_age.as_secs())
}

fn unix_now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod max_age_tests {
    use std::time::Duration;

    #[test]
    fn a_database_older_than_max_age_is_too_old() {
        let day = 86_400;
        let max = Duration::from_secs(35 * day);
        assert_eq!(super::too_old(0, max, 35 * day), (35 * day, false));
        assert_eq!(super::too_old(0, max, 35 * day + 1), (35 * day + 1, true));
        // A clock behind the build time: age 0, not too old.
        assert_eq!(super::too_old(100, max, 50), (0, false));
    }
}
