//! A monitoring stack for the fleet test: a real Prometheus (Debian's
//! `prometheus`) scraping agents and evaluating the shipped rules, a real
//! Alertmanager (Debian's `prometheus-alertmanager`) it sends alerts to,
//! and a webhook receiver in the test process that collects what the
//! Alertmanager delivers.
//!
//! Everything listens on 127.0.0.1 of the test's network namespace and
//! nothing else is added there: each server has its own data directory in
//! a scratch directory, the Alertmanager runs without gossip
//! (`--cluster.listen-address=`). Dropping a server kills (SIGKILL) and
//! reaps it, also when the test panics; the servers also get SIGKILL from
//! the kernel if the thread that started them dies (`PR_SET_PDEATHSIG`), so
//! none outlives a killed test run.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::agent::free_port;

/// Debian's Prometheus server.
pub const PROMETHEUS_BIN: &str = "/usr/bin/prometheus";
/// Debian's Alertmanager.
pub const ALERTMANAGER_BIN: &str = "/usr/bin/prometheus-alertmanager";

/// How long a server may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether both servers are installed (`cargo xtask setup` installs them).
pub fn installed() -> bool {
    Path::new(PROMETHEUS_BIN).exists() && Path::new(ALERTMANAGER_BIN).exists()
}

/// The shipped rules file (packaging/prometheus/egress-enforcer-rules.yml).
pub fn shipped_rules_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/prometheus/egress-enforcer-rules.yml")
}

/// The shipped dashboard (packaging/grafana/egress-enforcer.json).
pub fn shipped_dashboard_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/grafana/egress-enforcer.json")
}

/// One server process, killed and reaped on drop.
struct Server {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Server {
    fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> Server {
        let file = std::fs::File::create(&log).expect("server log");
        let err = file.try_clone().expect("server log");
        cmd.stdin(Stdio::null()).stdout(file).stderr(err);
        // SAFETY: prctl is async-signal-safe; nothing else runs between
        // fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Server {
            name,
            child: Some(child),
            log,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `GET /-/ready` at `addr` until it answers 200.
    fn wait_ready(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("{} exited ({status}):\n{}", self.name, self.log_text());
            }
            if let Ok((code, _)) = http(addr, "GET", "/-/ready", None)
                && code == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready after {READY_TIMEOUT:?}:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A scrape target: the agent's metrics address and its `host` label.
pub struct Target {
    pub host: String,
    pub addr: SocketAddr,
}

/// A running Prometheus.
pub struct Prometheus {
    server: Server,
    pub addr: SocketAddr,
}

impl Prometheus {
    /// Starts Prometheus in `dir` with `rules` (the text of a rules file),
    /// scraping `targets` under job `egress-enforcer` every second and
    /// evaluating every second, sending alerts to `alertmanager`.
    pub fn start(
        dir: &Path,
        rules: &str,
        targets: &[Target],
        alertmanager: SocketAddr,
    ) -> Prometheus {
        let rules_path = dir.join("rules.yml");
        std::fs::write(&rules_path, rules).expect("write rules");
        let mut static_configs = String::new();
        for t in targets {
            static_configs.push_str(&format!(
                "      - targets: ['{}']\n        labels: {{host: '{}'}}\n",
                t.addr, t.host
            ));
        }
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules:?}\n\
             alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{alertmanager}']\n\
             scrape_configs:\n  - job_name: egress-enforcer\n    static_configs:\n{static_configs}",
            rules = rules_path.display().to_string(),
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, &config).expect("write prometheus.yml");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let data = dir.join("prometheus-data");
        let mut cmd = Command::new(PROMETHEUS_BIN);
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address={addr}"))
            // Resend firing alerts every second, not every minute.
            .arg("--rules.alert.resend-delay=1s")
            .arg("--log.level=warn");
        let mut server = Server::spawn("prometheus", &mut cmd, dir.join("prometheus.log"));
        server.wait_ready(addr);
        Prometheus { server, addr }
    }

    /// What Prometheus logged.
    pub fn log(&self) -> String {
        self.server.log_text()
    }

    /// `GET /api/v1/query?query=EXPR`: the `data.result` array; panics on
    /// an error answer (a bad expression), with Prometheus's error.
    pub fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let (code, body) =
            http(self.addr, "GET", &path, None).unwrap_or_else(|e| panic!("query {expr:?}: {e}"));
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("query {expr:?}: {e} in {body}"));
        assert!(
            code == 200 && v["status"] == "success",
            "query {expr:?}: {code} {body}"
        );
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The health of every scrape target (`/api/v1/targets`), by `host`.
    pub fn target_health(&self) -> Vec<(String, String)> {
        let (_, body) = http(self.addr, "GET", "/api/v1/targets", None).expect("targets");
        let v: serde_json::Value = serde_json::from_str(&body).expect("targets JSON");
        v["data"]["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                (
                    t["labels"]["host"].as_str().unwrap_or_default().to_owned(),
                    t["health"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }
}

/// A running Alertmanager delivering every alert to one webhook.
pub struct Alertmanager {
    server: Server,
    pub addr: SocketAddr,
}

impl Alertmanager {
    /// Starts an Alertmanager in `dir` that groups nothing (each alert its
    /// own notification, `group_by: ['...']`), waits a second before the
    /// first notification of a group and a second between updates, and
    /// sends firing and resolved notifications to `webhook`.
    pub fn start(dir: &Path, webhook: SocketAddr) -> Alertmanager {
        let config = format!(
            "route:\n  receiver: test\n  group_by: ['...']\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
             receivers:\n  - name: test\n    webhook_configs:\n      - url: 'http://{webhook}/alerts'\n        send_resolved: true\n"
        );
        let config_path = dir.join("alertmanager.yml");
        std::fs::write(&config_path, config).expect("write alertmanager.yml");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let data = dir.join("alertmanager-data");
        let mut cmd = Command::new(ALERTMANAGER_BIN);
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.path={}", data.display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--cluster.listen-address=")
            .arg("--log.level=warn");
        let mut server = Server::spawn("alertmanager", &mut cmd, dir.join("alertmanager.log"));
        server.wait_ready(addr);
        Alertmanager { server, addr }
    }

    /// What the Alertmanager logged.
    pub fn log(&self) -> String {
        self.server.log_text()
    }
}

/// One alert of a webhook notification.
#[derive(Clone, Debug)]
pub struct ReceivedAlert {
    /// `firing` or `resolved`.
    pub status: String,
    pub labels: std::collections::BTreeMap<String, String>,
}

impl ReceivedAlert {
    pub fn name(&self) -> &str {
        self.labels.get("alertname").map_or("", String::as_str)
    }

    pub fn label(&self, key: &str) -> &str {
        self.labels.get(key).map_or("", String::as_str)
    }
}

impl std::fmt::Display for ReceivedAlert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let labels: Vec<String> = self
            .labels
            .iter()
            .filter(|(k, _)| *k != "alertname")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        write!(
            f,
            "{} {} {{{}}}",
            self.status,
            self.name(),
            labels.join(", ")
        )
    }
}

/// The webhook receiver: an HTTP server on 127.0.0.1 in the test process
/// that answers every POST with 200 and keeps the alerts of each
/// notification (Alertmanager's webhook JSON), in arrival order.
pub struct Webhook {
    pub addr: SocketAddr,
    alerts: Arc<Mutex<Vec<ReceivedAlert>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Webhook {
    pub fn start() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the webhook");
        let addr = listener.local_addr().expect("webhook address");
        let alerts = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let alerts = Arc::clone(&alerts);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    if let Some(body) = read_post(conn) {
                        let received = parse_notification(&body);
                        alerts
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .extend(received);
                    }
                }
            })
        };
        Webhook {
            addr,
            alerts,
            stop,
            thread: Some(thread),
        }
    }

    /// Every alert received so far, in arrival order.
    pub fn received(&self) -> Vec<ReceivedAlert> {
        self.alerts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until an alert matching `pred` has been received, calling
    /// `meanwhile` between polls (e.g. to keep traffic going); panics with
    /// `context()` after `timeout`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&ReceivedAlert) -> bool,
        mut meanwhile: impl FnMut(),
        context: impl Fn() -> String,
    ) -> ReceivedAlert {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(a) = self.received().into_iter().find(|a| pred(a)) {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "the webhook did not receive {what} within {timeout:?}; it received:\n{}\n{}",
                self.received()
                    .iter()
                    .map(|a| format!("  {a}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                context()
            );
            meanwhile();
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop up so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one HTTP request from `conn`, answers 200 and returns the body
/// of a POST.
fn read_post(conn: TcpStream) -> Option<String> {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(conn);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    let mut conn = reader.into_inner();
    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    request_line
        .starts_with("POST ")
        .then(|| String::from_utf8_lossy(&body).into_owned())
}

/// The alerts of one Alertmanager webhook notification.
fn parse_notification(body: &str) -> Vec<ReceivedAlert> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        eprintln!("webhook: not JSON: {body}");
        return Vec::new();
    };
    v["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| ReceivedAlert {
            status: a["status"].as_str().unwrap_or_default().to_owned(),
            labels: a["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect(),
        })
        .collect()
}

/// One HTTP/1.0 request to `addr`: the status code and body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    Ok((code, body.to_owned()))
}

/// Percent-encodes a query parameter (everything but unreserved bytes).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_promql_for_a_query_string() {
        assert_eq!(
            percent_encode("sum by (host) (up{job=\"x\"})"),
            "sum%20by%20%28host%29%20%28up%7Bjob%3D%22x%22%7D%29"
        );
    }

    #[test]
    fn reads_an_alertmanager_notification() {
        let a = parse_notification(
            r#"{"version":"4","status":"firing","alerts":[{"status":"resolved","labels":{"alertname":"X","host":"b"}}]}"#,
        );
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].name(), "X");
        assert_eq!(a[0].label("host"), "b");
        assert_eq!(a[0].status, "resolved");
        assert_eq!(a[0].to_string(), "resolved X {host=b}");
    }
}
