//! Prometheus metrics, read at scrape time.
//!
//! Decision counters live in the kernel (per-CPU maps); the collector sums
//! them on every scrape, so the agent holds no copy that could drift, and a
//! restarted agent that adopted the pinned maps continues the counts.
//!
//! Every name is prefixed `enforcer_`, counters end in `_total`, and labels
//! have bounded cardinality: hook (6), family (2), country (<= 677),
//! verdict (4). Only non-zero series are exposed.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, RwLock},
};

use enforcer_common::{Family, Mode, country};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::datapath::counters::CounterReader;

/// Agent-side state that metrics and `status` report.
#[derive(Clone, Debug, Default)]
pub struct AgentStatus {
    pub mode: Option<Mode>,
    pub generation: u32,
    pub prefixes_v4: usize,
    pub prefixes_v6: usize,
    pub approved_countries: usize,
    pub policy_loads_ok: u64,
    pub policy_loads_failed: u64,
    /// Unix time of the last successful policy load.
    pub last_load_unix: f64,
}

pub type SharedStatus = Arc<RwLock<AgentStatus>>;

/// The label of a country index: its code, or `unknown` for 0.
pub fn country_label(index: u16) -> String {
    match country::code(index) {
        Some([a, b]) => format!("{}{}", a as char, b as char),
        None => "unknown".to_owned(),
    }
}

/// Reads kernel counters and agent status on each scrape.
pub struct EnforcerCollector {
    counters: CounterReader,
    status: SharedStatus,
    pin_dir: PathBuf,
}

impl std::fmt::Debug for EnforcerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnforcerCollector")
            .field("pin_dir", &self.pin_dir)
            .finish_non_exhaustive()
    }
}

impl EnforcerCollector {
    pub fn new(counters: CounterReader, status: SharedStatus, pin_dir: PathBuf) -> Self {
        Self {
            counters,
            status,
            pin_dir,
        }
    }
}

impl Collector for EnforcerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = self.status.read().map(|s| s.clone()).unwrap_or_default();

        // Counters from the kernel. A read failure (the maps were removed by
        // `enforcer uninstall` under a running agent) is exposed as a gauge
        // rather than failing the whole scrape.
        let counts = self.counters.connections();
        let read_ok = counts.is_ok();
        if let Err(e) = &counts {
            tracing::warn!(error = %e, pin_dir = %self.pin_dir.display(), "cannot read kernel counters");
        }
        {
            let mut family = encoder.encode_descriptor(
                "enforcer_connections",
                "Connection-level decisions (connect/sendmsg), by hook, address family, destination country and verdict.",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for c in counts.unwrap_or_default() {
                let labels = [
                    ("hook", c.hook.label().to_owned()),
                    ("family", c.family.label().to_owned()),
                    ("country", country_label(c.country)),
                    ("verdict", c.outcome.label().to_owned()),
                ];
                ConstCounter::new(c.value).encode(family.encode_family(&labels)?)?;
            }
        }

        gauge(
            &mut encoder,
            "enforcer_datapath_readable",
            "1 when the kernel counters could be read at this scrape.",
            read_ok as i64,
        )?;

        {
            let mut family = encoder.encode_descriptor(
                "enforcer_mode",
                "The global mode in force: 1 for the current mode, 0 for the other.",
                None,
                prometheus_client::metrics::MetricType::Gauge,
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
                prometheus_client::metrics::MetricType::Gauge,
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
            &mut encoder,
            "enforcer_approved_countries",
            "Countries approved by the policy in force.",
            status.approved_countries as i64,
        )?;
        gauge(
            &mut encoder,
            "enforcer_policy_generation",
            "Generation of the policy in force (bumped on every slot flip and mode change).",
            status.generation as i64,
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "enforcer_policy_loads",
                "Policy loads (start and reloads), by result. A failed load leaves the previous policy in force.",
                None,
                prometheus_client::metrics::MetricType::Counter,
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
                "enforcer_build_info",
                "Build information; always 1.",
                None,
                prometheus_client::metrics::MetricType::Gauge,
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

/// Serves `GET /metrics` (and nothing that changes state) until `shutdown`
/// resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::{Router, http::header, response::IntoResponse, routing::get};

    let app = Router::new().route(
        "/metrics",
        get(move || {
            let registry = Arc::clone(&registry);
            async move {
                // Encoding reads the kernel maps (a few syscalls): keep it
                // off the async workers.
                let body = tokio::task::spawn_blocking(move || {
                    let mut body = String::new();
                    prometheus_client::encoding::text::encode(&mut body, &registry).map(|()| body)
                })
                .await;
                match body {
                    Ok(Ok(body)) => (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    )
                        .into_response(),
                    _ => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        "cannot encode metrics\n",
                    )
                        .into_response(),
                }
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds the metrics listener (done before anything touches the kernel, so
/// a busy port fails the start cleanly).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
