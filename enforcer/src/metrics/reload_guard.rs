//! The reload guard's metrics (`geoip.max_flip`, see [`crate::flip`]):
//! whether new GeoIP data is held, since when, and its figures; and the
//! baseline a restart compares with (see [`crate::baseline`]).

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use crate::status::AgentStatus;

/// `enforcer_reload_held` (always), and while a reload is held its time
/// and, per family, the addresses it would flip and the bound.
pub fn encode(
    encoder: &mut DescriptorEncoder,
    status: &AgentStatus,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(i64::from(status.baseline.missing_at_start.is_some()));
    metric.encode(encoder.encode_descriptor(
        "enforcer_reload_guard_baseline_missing",
        "1 when this start adopted a datapath with GeoIP data in force but found no usable baseline of it (missing or unreadable, see `enforcer status`): the data on disk went live without the reload guard's check. Stays 1 until the next start.",
        None,
        metric.metric_type(),
    )?)?;
    let metric = ConstCounter::new(status.baseline.write_failures);
    metric.encode(encoder.encode_descriptor(
        "enforcer_reload_guard_baseline_write_failures",
        "Writes of the reload guard's baseline (the GeoIP data in force, in the runtime directory) that failed; the policy was applied regardless, and a restart before the next good write cannot compare.",
        None,
        metric.metric_type(),
    )?)?;
    let held = status.reload_held.as_ref();
    let metric = ConstGauge::new(i64::from(held.is_some()));
    metric.encode(encoder.encode_descriptor(
        "enforcer_reload_held",
        "1 while the reload guard holds new GeoIP data: it would flip more address space between allowed and refused than geoip.max_flip allows; the policy in force stays until `enforcer reload --accept-change`.",
        None,
        metric.metric_type(),
    )?)?;
    let Some(h) = held else {
        return Ok(());
    };
    let metric = ConstGauge::new(h.since_unix);
    metric.encode(encoder.encode_descriptor(
        "enforcer_reload_held_since_timestamp_seconds",
        "Unix time the held GeoIP data was first held.",
        None,
        metric.metric_type(),
    )?)?;
    // Addresses as floats: an IPv6 count does not fit an integer gauge;
    // a float's 53 bits are plenty for alerting and graphs.
    let families = [("ipv4", &h.flip.v4), ("ipv6", &h.flip.v6)];
    let mut flipped = encoder.encode_descriptor(
        "enforcer_reload_held_flipped_addresses",
        "Addresses the held GeoIP data would move between allowed and refused, by family and direction (exact figures in `enforcer status`).",
        None,
        MetricType::Gauge,
    )?;
    for (family, f) in families {
        for (direction, n) in [
            ("allowed_to_refused", f.allowed_to_refused),
            ("refused_to_allowed", f.refused_to_allowed),
        ] {
            ConstGauge::new(n as f64)
                .encode(flipped.encode_family(&[("family", family), ("direction", direction)])?)?;
        }
    }
    let mut bound = encoder.encode_descriptor(
        "enforcer_reload_held_bound_addresses",
        "The bound geoip.max_flip set, in addresses, for the held GeoIP data, by family (absent for a family whose bound is off).",
        None,
        MetricType::Gauge,
    )?;
    for (family, f) in families {
        if let Some(b) = f.bound {
            ConstGauge::new(b as f64).encode(bound.encode_family(&[("family", family)])?)?;
        }
    }
    Ok(())
}
