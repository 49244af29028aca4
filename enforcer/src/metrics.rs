//! Prometheus metrics, read at scrape time.
//!
//! Decision counters live in the kernel (per-CPU maps); the collector sums
//! them on every scrape, so the agent holds no copy that could drift, and a
//! restarted agent that adopted the pinned maps continues the counts.
//!
//! Every name is prefixed `enforcer_` (but the standard `process_*` ones,
//! [`process`]), counters end in `_total`, every family has help text, and
//! labels have bounded cardinality: hook (6), family (2), country (<= 677),
//! verdict (4), kind (7), and on the decision counters scope (the
//! configured entries, the removed ones that still have counts, and
//! `overflow`, `carried`; their series bounded by `SCOPE_COUNTS`' 8,192
//! keys: docs/metrics.md). Only non-zero series of the decision counters
//! are exposed.
//!
//! The listener answers OpenMetrics to scrapers that prefer it and the
//! Prometheus text format 0.0.4 to the others ([`text004`]), and serves
//! `/healthz`, `/readyz` ([`readiness`]) and an index at `/`.

pub mod process;
pub mod reload_guard;
pub mod text004;

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use enforcer_common::{Family, Mode};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::{
    datapath::counters::{CounterKind, CounterReader, ScopeMisses, Suppressed},
    events::EventCounts,
    status::AgentStatus,
    status::{SharedStatus, country_label, map_fill_table, programs_attached},
};

/// Every cause of a coverage repair, so each series exists from the
/// start (a counter that appears only on its first increment hides the
/// first repair from `increase()`).
const COVERAGE_CAUSES: &[&str] = &[
    "cgroup_created",
    "cgroup_recreated",
    "interface_created",
    "interface_recreated",
    "link_detached",
    "pin_deleted",
    "override_cgroup_changed",
];

/// Reads kernel counters and agent status on each scrape.
pub struct EnforcerCollector {
    counters: CounterReader,
    status: SharedStatus,
    events: Arc<EventCounts>,
    audit: crate::audit::SharedAudit,
}

impl std::fmt::Debug for EnforcerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnforcerCollector").finish_non_exhaustive()
    }
}

impl EnforcerCollector {
    pub fn new(
        counters: CounterReader,
        status: SharedStatus,
        events: Arc<EventCounts>,
        audit: crate::audit::SharedAudit,
    ) -> Self {
        Self {
            counters,
            status,
            events,
            audit,
        }
    }
}

/// The counter families read from the kernel's per-CPU blocks.
const KERNEL_FAMILIES: [(CounterKind, &str, &str); 3] = [
    (
        CounterKind::Connections,
        "enforcer_connections",
        "Connection-level decisions (connect/sendmsg), by scope entry, hook, address family, destination country and verdict.",
    ),
    (
        CounterKind::Packets,
        "enforcer_packets",
        "Packets decided by the packet hooks (cgroup skb and tcx egress), by scope entry, hook, family, destination country and verdict.",
    ),
    (
        CounterKind::Bytes,
        "enforcer_bytes",
        "Bytes (from the IP header on) of the packets counted in enforcer_packets_total.",
    ),
];

impl Collector for EnforcerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = self.status.read().map(|s| s.clone()).unwrap_or_default();
        self.encode_decisions(&mut encoder)?;
        self.encode_events(&mut encoder)?;
        self.encode_policy(&mut encoder, &status)?;
        self.encode_geoip(&mut encoder, &status)?;
        reload_guard::encode(&mut encoder, &status)?;
        self.encode_agent(&mut encoder, &status)?;
        encode_process(&mut encoder)
    }
}

/// The families of [`EnforcerCollector::encode`], one method per group.
impl EnforcerCollector {
    /// The kernel's decision counters.
    fn encode_decisions(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Counters from the kernel. The maps are held open, so a read fails
        // only on a kernel error; it is logged, and the families stay
        // present (empty) so that the rest of the scrape still works.
        for (kind, name, help) in KERNEL_FAMILIES {
            let counts = self.counters.read_scoped(kind).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read kernel counters");
                Vec::new()
            });
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for s in counts {
                let c = s.count;
                let labels = [
                    ("scope", s.scope),
                    ("hook", c.hook.label().to_owned()),
                    ("family", c.family.label().to_owned()),
                    ("country", country_label(c.country)),
                    ("verdict", c.outcome.label().to_owned()),
                ];
                ConstCounter::new(c.value).encode(family.encode_family(&labels)?)?;
            }
        }
        let misses = self.counters.scope_misses().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the scope misses");
            ScopeMisses::default()
        });
        let mut family = encoder.encode_descriptor(
            "enforcer_scope_overflow",
            "Decisions (connections and packets) the kernel could not count under their scope entry, by reason: table_full (no room for a new key), no_scope (no entry found); they are in the decision counters with scope=\"overflow\".",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in [
            ("table_full", misses.table_full),
            ("no_scope", misses.no_scope),
        ] {
            ConstCounter::new(n).encode(family.encode_family(&[("reason", reason)])?)?;
        }
        Ok(())
    }

    /// Events read, suppressed in the kernel, and lost on the way to a sink.
    fn encode_events(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        {
            let mut family = encoder.encode_descriptor(
                    "enforcer_events",
                    "Decision events read from the kernel ring buffer and written to the event sinks, by hook and verdict.",
                    None,
                    MetricType::Counter,
                )?;
            for (hook, outcome, n) in self.events.read_counts() {
                let labels = [("hook", hook.label()), ("verdict", outcome.label())];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let suppressed = self.counters.suppressed().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read event statistics");
                Suppressed::default()
            });
            let mut family = encoder.encode_descriptor(
                    "enforcer_events_suppressed",
                    "Events the kernel did not emit (the decision itself is still counted): over the rate limit, or the ring buffer was full.",
                    None,
                    MetricType::Counter,
                )?;
            for (reason, n) in [
                ("rate_limit", suppressed.rate_limit),
                ("ring_full", suppressed.ring_full),
            ] {
                let labels = [("reason", reason)];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let faults = self.counters.faults().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read the datapath's internal failures");
                Vec::new()
            });
            let mut family = encoder.encode_descriptor(
                "enforcer_datapath_errors",
                "Internal failures of the datapath (a map value that does not decode, a helper that fails where it cannot), by kind; each kind is also logged, at most once a second per CPU.",
                None,
                MetricType::Counter,
            )?;
            for (fault, n) in faults {
                let labels = [("kind", fault.label())];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let metric = ConstCounter::new(self.events.write_errors.load(Ordering::Relaxed));
            let enc = encoder.encode_descriptor(
                "enforcer_events_write_errors",
                "Events read from the kernel that some sink did not get (counted per event; a failed or short write of a batch counts the events not in the file).",
                None,
                metric.metric_type(),
            )?;
            metric.encode(enc)?;
        }
        for (name, help, n) in [
            (
                "enforcer_allowed_sample_lines",
                "Lines appended to the allowed-destinations sample file (events.allowed_file): entries of the kernel's sample that were new or had grown.",
                &self.events.sample_lines,
            ),
            (
                "enforcer_allowed_sample_errors",
                "Sample lines not written (a failed or short write, or the file could not be opened) and passes over the kernel's sample map that could not read it.",
                &self.events.sample_errors,
            ),
        ] {
            let metric = ConstCounter::new(n.load(Ordering::Relaxed));
            let enc = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
            metric.encode(enc)?;
        }
        Ok(())
    }

    /// The policy in force: mode, prefixes, countries, generation, loads.
    fn encode_policy(
        &self,
        encoder: &mut DescriptorEncoder,
        status: &AgentStatus,
    ) -> Result<(), std::fmt::Error> {
        {
            let mut family = encoder.encode_descriptor(
                "enforcer_mode",
                "The global mode in force: 1 for the current mode, 0 for the other.",
                None,
                MetricType::Gauge,
            )?;
            for &m in Mode::ALL {
                let labels = [("mode", m.label())];
                ConstGauge::new((status.mode == Some(m)) as i64)
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "enforcer_geoip_prefixes",
                "GeoIP prefixes loaded into the active policy slot, after aggregation.",
                None,
                MetricType::Gauge,
            )?;
            for (f, n) in [
                (Family::Ipv4, status.prefixes_v4),
                (Family::Ipv6, status.prefixes_v6),
            ] {
                let labels = [("family", f.label())];
                ConstGauge::new(n as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        gauge(
            encoder,
            "enforcer_approved_countries",
            "Countries approved by the policy in force.",
            status.approved_countries as i64,
        )?;
        gauge(
            encoder,
            "enforcer_policy_generation",
            "Generation of the policy in force (bumped on every slot flip and mode change).",
            status.generation as i64,
        )?;
        {
            let mut family = encoder.encode_descriptor(
                    "enforcer_policy_loads",
                    "Policy loads (start and reloads), by result. A failed load leaves the previous policy in force.",
                    None,
                    MetricType::Counter,
                )?;
            for (result, n) in [
                ("success", status.policy_loads_ok),
                ("failure", status.policy_loads_failed),
            ] {
                let labels = [("result", result)];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let metric = ConstGauge::new(status.last_load_unix);
            let enc = encoder.encode_descriptor(
                "enforcer_policy_last_load_timestamp_seconds",
                "Unix time of the last successful policy load.",
                None,
                metric.metric_type(),
            )?;
            metric.encode(enc)?;
        }
        {
            let mut family = encoder.encode_descriptor(
                "enforcer_last_reload_duration_seconds",
                "How long the last policy load attempt took (at start: applying the config; on reload: reading and applying it), labelled with its result (success or failure). Absent before the first load.",
                None,
                MetricType::Gauge,
            )?;
            if let Some((took, result)) = status.last_load_attempt {
                ConstGauge::new(took).encode(family.encode_family(&[("result", result)])?)?;
            }
        }
        {
            let metric = ConstGauge::new(status.last_load_failure_unix);
            let enc = encoder.encode_descriptor(
                "enforcer_last_reload_failure_timestamp_seconds",
                "Unix time of the last failed policy reload; 0 when none failed since the agent started.",
                None,
                metric.metric_type(),
            )?;
            metric.encode(enc)?;
        }
        Ok(())
    }

    /// The GeoIP databases in force: build time and age.
    fn encode_geoip(
        &self,
        encoder: &mut DescriptorEncoder,
        status: &AgentStatus,
    ) -> Result<(), std::fmt::Error> {
        {
            let mut build = encoder.encode_descriptor(
                    "enforcer_geoip_database_build_timestamp_seconds",
                    "Build time of each GeoIP database in force (MaxMind DB build_epoch; CSV sources have none), by file name.",
                    None,
                    MetricType::Gauge,
                )?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let dated: Vec<(String, u64)> = status
                .sources
                .iter()
                .filter_map(|d| {
                    let name = d.path.file_name()?.to_string_lossy().into_owned();
                    Some((name, d.build_epoch?))
                })
                .collect();
            for (name, epoch) in &dated {
                let labels = [("database", name.as_str())];
                ConstGauge::new(*epoch as i64).encode(build.encode_family(&labels)?)?;
            }
            let mut age = encoder.encode_descriptor(
                "enforcer_geoip_database_age_seconds",
                "How old each GeoIP database in force is (now minus its build time), by file name.",
                None,
                MetricType::Gauge,
            )?;
            for (name, epoch) in &dated {
                let labels = [("database", name.as_str())];
                ConstGauge::new(now.saturating_sub(*epoch) as i64)
                    .encode(age.encode_family(&labels)?)?;
            }
            // Only with `geoip.max_age` set: the limit, and per database
            // whether it is past it (the same rule as status and check).
            if let Some(max) = status.geoip_max_age {
                gauge(
                    encoder,
                    "enforcer_geoip_max_age_seconds",
                    "The config's geoip.max_age: a GeoIP database built longer ago is too old.",
                    max.as_secs() as i64,
                )?;
                let mut old = encoder.encode_descriptor(
                    "enforcer_geoip_database_too_old",
                    "1 when a GeoIP database in force was built longer ago than geoip.max_age, by file name.",
                    None,
                    MetricType::Gauge,
                )?;
                for (name, epoch) in &dated {
                    let labels = [("database", name.as_str())];
                    let too_old = crate::status::too_old(*epoch, max, now).1;
                    ConstGauge::new(i64::from(too_old)).encode(old.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut stale = encoder.encode_descriptor(
                "enforcer_geoip_database_stale",
                "1 when the file at a GeoIP source's path is not the one in force (another content, or unreadable): a reload would read something else. By file name.",
                None,
                MetricType::Gauge,
            )?;
            for disk in &status.sources_on_disk {
                let name = disk
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let labels = [("database", name.as_str())];
                ConstGauge::new(i64::from(disk.state != crate::status::OnDisk::InForce))
                    .encode(stale.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    /// The maps' fill, the programs attached, the audit log, the control socket, the build.
    fn encode_agent(
        &self,
        encoder: &mut DescriptorEncoder,
        status: &AgentStatus,
    ) -> Result<(), std::fmt::Error> {
        {
            let maps = map_fill_table(status);
            let mut entries = encoder.encode_descriptor(
                    "enforcer_map_entries",
                    "Entries in the active policy slot's maps (each of the two slots has its own maps of the same capacity).",
                    None,
                    MetricType::Gauge,
                )?;
            for &(map, n, _) in &maps {
                let labels = [("map", map)];
                ConstGauge::new(n as i64).encode(entries.encode_family(&labels)?)?;
            }
            let mut capacity = encoder.encode_descriptor(
                "enforcer_map_capacity",
                "Capacity of those maps, per slot.",
                None,
                MetricType::Gauge,
            )?;
            for &(map, _, c) in &maps {
                let labels = [("map", map)];
                ConstGauge::new(i64::from(c)).encode(capacity.encode_family(&labels)?)?;
            }
        }
        if let Some(dir) = &status.links_dir {
            let mut family = encoder.encode_descriptor(
                    "enforcer_programs_attached",
                    "Programs attached through pinned links, by hook (one per scope cgroup or interface).",
                    None,
                    MetricType::Gauge,
                )?;
            for (hook, n) in programs_attached(dir) {
                let labels = [("hook", hook.as_str())];
                ConstGauge::new(n as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "enforcer_scope_attached",
                "Whether the kernel lists this agent's program on a configured scope entry (cgroup path or interface name), by hook: 1 covered, 0 not (absent, or a repair failed). Checked every second.",
                None,
                MetricType::Gauge,
            )?;
            for e in &status.coverage {
                for (hook, on) in &e.hooks {
                    let labels = [("scope", e.scope.as_str()), ("hook", hook)];
                    ConstGauge::new(i64::from(*on)).encode(family.encode_family(&labels)?)?;
                }
            }
            let mut family = encoder.encode_descriptor(
                "enforcer_scope_waiting",
                "1 while a configured scope entry does not exist (a stopped service): nothing to cover until it is created.",
                None,
                MetricType::Gauge,
            )?;
            for e in &status.coverage {
                let labels = [("scope", e.scope.as_str())];
                ConstGauge::new(i64::from(e.state == "waiting"))
                    .encode(family.encode_family(&labels)?)?;
            }
            let mut family = encoder.encode_descriptor(
                "enforcer_scope_last_covered_timestamp_seconds",
                "When a configured scope entry was last seen covered (Unix time).",
                None,
                MetricType::Gauge,
            )?;
            for e in &status.coverage {
                if let Some(t) = e.last_covered_unix {
                    let labels = [("scope", e.scope.as_str())];
                    ConstGauge::new(t).encode(family.encode_family(&labels)?)?;
                }
            }
            let mut family = encoder.encode_descriptor(
                "enforcer_coverage_repairs",
                "Scope entries covered again by the agent, by cause (cgroup_created, cgroup_recreated, interface_created, interface_recreated, link_detached, pin_deleted, override_cgroup_changed).",
                None,
                MetricType::Counter,
            )?;
            for cause in COVERAGE_CAUSES {
                let n = status.coverage_repairs.get(cause).copied().unwrap_or(0);
                let labels = [("cause", *cause)];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        for (name, help, value) in [
            (
                "enforcer_audit_records",
                "Audit log records appended by this agent.",
                self.audit.records(),
            ),
            (
                "enforcer_audit_write_errors",
                "Audit log appends or flushes that failed (enforcement is unaffected; the log names the error).",
                self.audit.errors(),
            ),
        ] {
            let metric = ConstCounter::new(value);
            let enc = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
            metric.encode(enc)?;
        }
        {
            let sinks: Vec<_> = status
                .sinks
                .iter()
                .map(|h| (h.name, h.snapshot()))
                .collect();
            let mut family = encoder.encode_descriptor(
                "enforcer_sink_healthy",
                "1 when the sink's last write succeeded, 0 while it fails (sink: audit, events_file, events_stdout).",
                None,
                MetricType::Gauge,
            )?;
            for (name, st) in &sinks {
                ConstGauge::new(i64::from(st.healthy))
                    .encode(family.encode_family(&[("sink", *name)])?)?;
            }
            let mut family = encoder.encode_descriptor(
                "enforcer_sink_pending_bytes",
                "Bytes waiting to be written to the sink (the audit log's buffer, bounded at 4 MiB).",
                None,
                MetricType::Gauge,
            )?;
            for (name, st) in &sinks {
                ConstGauge::new(st.pending_bytes as i64)
                    .encode(family.encode_family(&[("sink", *name)])?)?;
            }
            for (metric, help, get) in [
                (
                    "enforcer_sink_dropped",
                    "Records (audit) or events (events sinks) lost for good because the sink could not be written.",
                    (|st: &crate::status::SinkState| st.dropped)
                        as fn(&crate::status::SinkState) -> u64,
                ),
                (
                    "enforcer_sink_write_errors",
                    "Writes (or opens) of the sink that failed.",
                    |st| st.write_errors,
                ),
                (
                    "enforcer_sink_reopens",
                    "Times the sink's file was opened again at its path after it was moved, deleted or rotated.",
                    |st| st.reopens,
                ),
            ] {
                let mut family =
                    encoder.encode_descriptor(metric, help, None, MetricType::Counter)?;
                for (name, st) in &sinks {
                    ConstCounter::new(get(st)).encode(family.encode_family(&[("sink", *name)])?)?;
                }
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                    "enforcer_control_requests",
                    "Requests on the control socket, by verb and result (ok, error, denied: the peer is not root nor in the admin group).",
                    None,
                    MetricType::Counter,
                )?;
            for ((verb, result), n) in &status.control_requests {
                let labels = [("verb", *verb), ("result", *result)];
                ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "enforcer_build_info",
                "Build information; always 1.",
                None,
                MetricType::Gauge,
            )?;
            let labels = [
                ("version", env!("CARGO_PKG_VERSION").to_owned()),
                ("layout", enforcer_common::LAYOUT_VERSION.to_string()),
            ];
            ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The standard `process_*` families (the names every Prometheus client
/// uses, so dashboards and alerts written for other exporters work). A
/// failed read of `/proc` is logged and leaves them out of this scrape.
fn encode_process(encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let stats = match process::read_self() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read this process's statistics");
            return Ok(());
        }
    };
    {
        let metric = ConstCounter::new(stats.cpu_seconds);
        let enc = encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            metric.metric_type(),
        )?;
        metric.encode(enc)?;
    }
    let mut gauges = vec![
        (
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            stats.resident_memory_bytes as f64,
        ),
        (
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            stats.virtual_memory_bytes as f64,
        ),
        (
            "process_open_fds",
            "Number of open file descriptors.",
            stats.open_fds as f64,
        ),
    ];
    if let Some(max) = stats.max_fds {
        gauges.push((
            "process_max_fds",
            "Maximum number of open file descriptors (the soft limit).",
            max as f64,
        ));
    }
    if let Some(started) = stats.start_time_seconds {
        gauges.push((
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            started,
        ));
    }
    gauges.push((
        "process_threads",
        "Number of OS threads in the process.",
        stats.threads as f64,
    ));
    for (name, help, value) in gauges {
        let metric = ConstGauge::new(value);
        let enc = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
        metric.encode(enc)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    let enc = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(enc)
}

/// The registry the HTTP endpoint encodes.
pub fn registry(collector: EnforcerCollector) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    registry
}

/// Whether the agent is ready to be relied on, and if not, why.
///
/// Ready means a policy is loaded and no configured scope entry is
/// uncovered. An entry that is `waiting` (its cgroup or interface does not
/// exist) does not make the agent unready: an absent service sends nothing,
/// so it is no hole, and it is covered as soon as it is created. A
/// `partial` or `error` entry does.
pub fn readiness(status: &AgentStatus) -> Result<(), String> {
    if status.policy_sha256.is_none() {
        return Err("no policy loaded".to_owned());
    }
    let uncovered: Vec<&str> = status
        .coverage
        .iter()
        .filter(|e| e.state != "covered" && e.state != "waiting")
        .map(|e| e.scope.as_str())
        .collect();
    if uncovered.is_empty() {
        Ok(())
    } else {
        Err(format!("scope not covered: {}", uncovered.join(", ")))
    }
}

/// What `GET /` answers: the paths this listener serves.
const INDEX: &str = "egress-enforcer agent\n\
/metrics  Prometheus metrics (OpenMetrics when the Accept header prefers it, else text format 0.0.4)\n\
/healthz  200 while this listener runs\n\
/readyz   200 when a policy is loaded and every scope entry is covered (waiting entries count as covered), else 503 and why\n";

/// Serves `GET /metrics`, `/healthz`, `/readyz` and `/` (nothing that
/// changes state) until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    status: SharedStatus,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    use axum::{
        Router,
        http::{HeaderMap, StatusCode, header},
        response::IntoResponse,
        routing::get,
    };

    const PLAIN: &str = "text/plain; charset=utf-8";
    let app = Router::new()
        .route(
            "/metrics",
            get(move |headers: HeaderMap| {
                let registry = Arc::clone(&registry);
                let openmetrics = text004::prefers_openmetrics(
                    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()),
                );
                async move {
                    // Encoding reads the kernel maps (a few syscalls): keep it
                    // off the async workers.
                    let body = tokio::task::spawn_blocking(move || {
                        let mut body = String::new();
                        prometheus_client::encoding::text::encode(&mut body, &registry)
                            .map(|()| body)
                    })
                    .await;
                    match body {
                        Ok(Ok(body)) if openmetrics => (
                            [(header::CONTENT_TYPE, text004::OPENMETRICS_CONTENT_TYPE)],
                            body,
                        )
                            .into_response(),
                        Ok(Ok(body)) => (
                            [(header::CONTENT_TYPE, text004::CONTENT_TYPE)],
                            text004::from_openmetrics(&body),
                        )
                            .into_response(),
                        _ => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n")
                            .into_response(),
                    }
                }
            }),
        )
        // Answered by the serving loop itself: if it answers, it runs.
        .route(
            "/healthz",
            get(|| async { ([(header::CONTENT_TYPE, PLAIN)], "ok\n") }),
        )
        .route(
            "/readyz",
            get(move || {
                let status = Arc::clone(&status);
                async move {
                    let ready = match status.read() {
                        Ok(s) => readiness(&s),
                        Err(_) => Err("agent status unavailable".to_owned()),
                    };
                    match ready {
                        Ok(()) => (
                            StatusCode::OK,
                            [(header::CONTENT_TYPE, PLAIN)],
                            "ready\n".to_owned(),
                        ),
                        Err(why) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            [(header::CONTENT_TYPE, PLAIN)],
                            format!("not ready: {why}\n"),
                        ),
                    }
                }
            }),
        )
        .route(
            "/",
            get(|| async { ([(header::CONTENT_TYPE, PLAIN)], INDEX) }),
        );
    serve_bounded(listener, app, shutdown).await;
}

/// Connections served at once. A scrape is one short request; a few
/// Prometheus servers and a person with curl need far fewer.
pub const MAX_CONNECTIONS: usize = 32;
/// How long a client may take to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may last, request and answer.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` until `shutdown`: at most [`MAX_CONNECTIONS`] at once (a
/// connection over the cap is closed at once), each with its headers
/// within [`HEADER_TIMEOUT`] and over within [`CONNECTION_TIMEOUT`], one
/// request per connection. Any local user can connect: without these
/// bounds, a thousand half-sent requests held every file descriptor the
/// agent had, and the control socket, the audit log and reloads failed.
async fn serve_bounded(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};

    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and the like: wait instead of spinning on them.
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!("metrics listener: connection cap reached; closing a new connection");
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
        });
    }
}

/// Binds the metrics listener (done before anything touches the kernel, so
/// a busy port fails the start cleanly).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::ScopeEntry;

    fn entry(scope: &str, state: &'static str) -> ScopeEntry {
        ScopeEntry {
            scope: scope.to_owned(),
            kind: "cgroup",
            state,
            id: None,
            hooks: Default::default(),
            last_covered_unix: None,
            since_unix: 0.0,
            error: None,
        }
    }

    #[test]
    fn ready_when_loaded_and_nothing_uncovered() {
        let mut s = AgentStatus::default();
        assert_eq!(readiness(&s), Err("no policy loaded".to_owned()));
        s.policy_sha256 = Some("00".into());
        assert_eq!(readiness(&s), Ok(()));
        s.coverage = vec![entry("/a", "covered"), entry("/b", "waiting")];
        // A waiting entry (absent service) is no hole.
        assert_eq!(readiness(&s), Ok(()));
        s.coverage.push(entry("/c", "partial"));
        s.coverage.push(entry("/d", "error"));
        assert_eq!(readiness(&s), Err("scope not covered: /c, /d".to_owned()));
    }

    /// Every family the agent exposes has help text, in both formats (a
    /// family without it fails promtool's lint).
    #[test]
    fn every_family_has_help() {
        let mut registry = Registry::default();
        let mut encoder_out = String::new();
        registry.register_collector(Box::new(ProcessOnly));
        prometheus_client::encoding::text::encode(&mut encoder_out, &registry).expect("encode");
        assert!(text004::families_without_help(&encoder_out).is_empty());
        let text = text004::from_openmetrics(&encoder_out);
        assert!(text004::families_without_help(&text).is_empty(), "{text}");
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE process_threads gauge\n"), "{text}");
    }

    #[derive(Debug)]
    struct ProcessOnly;
    impl Collector for ProcessOnly {
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            encode_process(&mut encoder)
        }
    }
}
