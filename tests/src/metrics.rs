//! Scraping and reading the agent's `/metrics` (OpenMetrics text).

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// One scrape: every sample, by metric name then label set.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Metrics {
    /// `GET /metrics` over plain HTTP/1.0, asking for OpenMetrics as
    /// Prometheus does (without an `Accept` header the agent answers in
    /// the 0.0.4 text format).
    pub fn scrape(addr: SocketAddr) -> Metrics {
        let (head, body) = get(addr, "/metrics", Some(OPENMETRICS_ACCEPT));
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        Self::parse(&body)
    }

    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(parse_line)
            .collect();
        Metrics {
            samples,
            text: text.to_owned(),
        }
    }

    /// Sum of the samples of `name` whose labels include every `(k, v)`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// The samples of `name`.
    pub fn series(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

/// The `Accept` header of Prometheus 2.x with OpenMetrics negotiation on.
pub const OPENMETRICS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// `GET path` over plain HTTP/1.0 with an optional `Accept` header: the
/// response's head (status line and headers) and body.
pub fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> (String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to metrics {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n").expect("send request");
    let mut response = String::new();
    s.read_to_string(&mut response).expect("read metrics");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    (head.to_owned(), body.to_owned())
}

fn parse_line(line: &str) -> Sample {
    let (series, value) = line
        .rsplit_once(' ')
        .unwrap_or_else(|| panic!("bad metrics line {line:?}"));
    let value: f64 = value
        .parse()
        .unwrap_or_else(|_| panic!("bad value in {line:?}"));
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.trim_end_matches('}')),
        None => (series, ""),
    };
    let mut map = BTreeMap::new();
    // Label values here never contain commas or quotes (codes, enum labels).
    for pair in labels.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .unwrap_or_else(|| panic!("bad label in {line:?}"));
        map.insert(k.to_owned(), v.trim_matches('"').to_owned());
    }
    Sample {
        name: name.to_owned(),
        labels: map,
        value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openmetrics_text() {
        let m = Metrics::parse(
            "# HELP x y\n# TYPE enforcer_connections counter\n\
             enforcer_connections_total{hook=\"connect4\",family=\"ipv4\",country=\"US\",verdict=\"denied\"} 3\n\
             enforcer_connections_total{hook=\"connect6\",family=\"ipv4\",country=\"US\",verdict=\"denied\"} 2\n\
             enforcer_approved_countries 30\n# EOF\n",
        );
        assert_eq!(
            m.sum(
                "enforcer_connections_total",
                &[("country", "US"), ("verdict", "denied")]
            ),
            5.0
        );
        assert_eq!(
            m.sum("enforcer_connections_total", &[("hook", "connect6")]),
            2.0
        );
        assert_eq!(m.sum("enforcer_approved_countries", &[]), 30.0);
    }
}
