//! A fleet of three agents watched the way an SRE would: a real Prometheus
//! (Debian's `prometheus`) scrapes them every second and evaluates the
//! shipped rules, a real Alertmanager (Debian's
//! `prometheus-alertmanager`) delivers the alerts to a webhook of the test.
//!
//! Each agent is a "host": its own sandbox (namespaces, a scope cgroup
//! `app.service`, peers), its metrics on 127.0.0.1 of the test's namespace
//! where Prometheus reaches it, a `host` target label (a, b, c):
//!
//! - a: observe, a GeoIP database built 40 days ago, `geoip.max_age` 30 days:
//!   too old;
//! - b: enforce, a fresh database, no `max_age`;
//! - c: observe, a 40-day-old database, `max_age` 60 days: not too old,
//!   although the rules' 30-day fallback would say so.
//!
//! The rules are the shipped file with its windows shortened for a test
//! that runs in a minute, not hours ([`test_rules`]; promtool.rs tests the
//! shipped file itself): `[5m]`/`[10m]` become `[10s]`, `[15m]` `[15s]`,
//! `offset 1h` `offset 1m`, and every `for:` 2 s. What is asserted:
//!
//! - refused traffic from b's service fires `EgressEnforcerRefusals` with
//!   host=b, scope=b's scope entry, country=US, and it resolves once the
//!   traffic stops; would-deny traffic on c fires
//!   `EgressEnforcerWouldRefuseAppeared` (host=c) and resolves too;
//! - `EgressEnforcerGeoipDatabaseOld` fires for a only;
//! - a reload of a broken config on c fires `EgressEnforcerReloadFailed`
//!   for c, and b's events, limited to one per second and CPU, fire
//!   `EgressEnforcerEventsSuppressed` (rate_limit) for b;
//! - every PromQL expression of the shipped Grafana dashboard
//!   (packaging/grafana/egress-enforcer.json), with its variables
//!   substituted by values that exist here, returns data from this
//!   Prometheus; the dashboard's structure is checked too;
//! - stopping a's agent fires `EgressEnforcerDown` for host a only.
//!
//! Every alert the webhook received is printed at the end.
//!
//! A second test (no root) type-checks the dashboard with Grafana's own
//! schema types (`@grafana/schema`) and the TypeScript compiler.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use enforcer_tests::{
    agent::Agent,
    privileged,
    probe::{Proto, Runner},
    prometheus::{
        Alertmanager, Prometheus, ReceivedAlert, Target, Webhook, installed,
        shipped_dashboard_path, shipped_rules_path,
    },
    sandbox::PORT,
    scenario::*,
    skip_unless,
};

/// How long an alert may take to reach the webhook once its condition
/// holds (scrape, evaluation, `for`, Alertmanager's group wait): a bound
/// for waiting, not a measurement.
const ALERT_TIMEOUT: Duration = Duration::from_secs(90);

/// The shipped rules with test-sized windows (see the module doc). Panics
/// when a window this test relies on is no longer in the shipped file, so
/// a changed rule fails here instead of being tested less.
fn test_rules(shipped: &str) -> String {
    let mut text = shipped.to_owned();
    for (from, to) in [
        ("[5m]", "[10s]"),
        ("[10m]", "[10s]"),
        ("[15m]", "[15s]"),
        ("offset 1h", "offset 1m"),
    ] {
        assert!(
            text.contains(from),
            "{from} is no longer in the shipped rules"
        );
        text = text.replace(from, to);
    }
    let mut fors = 0;
    let text: Vec<String> = text
        .lines()
        .map(|l| match l.trim_start().strip_prefix("for: ") {
            Some(_) => {
                fors += 1;
                let indent = &l[..l.len() - l.trim_start().len()];
                format!("{indent}for: 2s")
            }
            None => l.to_owned(),
        })
        .collect();
    assert!(fors > 0, "no `for:` in the shipped rules");
    text.join("\n") + "\n"
}

/// One "host": its agent, sandbox and scope entry. The agent is the first
/// field, so it is dropped (killed, uninstalled) before its sandbox.
struct Host {
    agent: Option<Agent>,
    name: &'static str,
    s: Scenario,
    svc: PathBuf,
}

impl Host {
    /// A host in `mode` whose extra GeoIP database was built `db_age_days`
    /// ago, with `geoip.max_age` set to `max_age` if given, and an events
    /// file with the rate limit `events` (per CPU and second, burst) if
    /// given.
    fn start(
        name: &'static str,
        mode: &str,
        db_age_days: u64,
        max_age: Option<&str>,
        events: Option<(u32, u32)>,
    ) -> Host {
        let s = Scenario::new();
        let svc = s.sb.cgroup.join("app.service");
        std::fs::create_dir(&svc).expect("create the service cgroup");
        // A MaxMind database with a build time, so the age metrics exist
        // (a CSV source has none). Its one entry is no sandbox address.
        let mmdb = s.dir.path().join("fleet-country.mmdb");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut w = geoip::writer::MmdbWriter::new(6, geoip::Schema::MaxMind)
            .expect("mmdb writer")
            .build_epoch(now - db_age_days * 86_400);
        w.insert("198.18.0.0/15".parse().expect("network"), "FR");
        w.write(&mmdb).expect("write the database");
        let tail = events.map_or(String::new(), |(rate, burst)| s.events_table(rate, burst));
        let mut config = s.config_scoped(mode, "allow", &[mmdb], &[&svc], "", &tail);
        if let Some(age) = max_age {
            config = config.replace("[geoip]\n", &format!("[geoip]\nmax_age = \"{age}\"\n"));
        }
        let agent = s.start(&config);
        Host {
            name,
            s,
            svc,
            agent: Some(agent),
        }
    }

    fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("agent running")
    }

    /// One connection from the host's service to `ip`.
    fn connect(&self, ip: std::net::Ipv4Addr) {
        let _ = Runner::new(&self.s.sb).in_cgroup(Some(&self.svc)).connect(
            Proto::Tcp,
            SocketAddr::new(IpAddr::V4(ip), PORT),
            1,
        );
    }

    fn scope(&self) -> String {
        self.svc.display().to_string()
    }
}

fn have(alerts: &[ReceivedAlert], name: &str, host: &str, status: &str) -> bool {
    alerts
        .iter()
        .any(|a| a.name() == name && a.label("host") == host && a.status == status)
}

#[test]
fn a_fleet_is_scraped_alerted_on_and_dashboarded() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    skip_unless!(
        installed(),
        "needs Debian's prometheus and prometheus-alertmanager (cargo xtask setup)"
    );
    let shipped = std::fs::read_to_string(shipped_rules_path()).expect("read the shipped rules");
    let rules = test_rules(&shipped);
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(shipped_dashboard_path()).expect("read the dashboard"),
    )
    .expect("the dashboard is JSON");
    let exprs = dashboard_exprs(&dashboard);

    let scratch = tempfile::Builder::new()
        .prefix("ee-fleet-")
        .tempdir()
        .expect("scratch directory");
    let webhook = Webhook::start();
    let am = Alertmanager::start(scratch.path(), webhook.addr);
    let mut hosts = [
        Host::start("a", "observe", 40, Some("30d"), None),
        // One event per second and CPU: b's refusals overrun it.
        Host::start("b", "enforce", 0, None, Some((1, 1))),
        Host::start("c", "observe", 40, Some("60d"), None),
    ];
    let targets: Vec<Target> = hosts
        .iter()
        .map(|h| Target {
            host: h.name.to_owned(),
            addr: h.agent().metrics,
        })
        .collect();
    let prom = Prometheus::start(scratch.path(), &rules, &targets, am.addr);
    let context = || {
        format!(
            "prometheus log:\n{}\nalertmanager log:\n{}",
            prom.log(),
            am.log()
        )
    };

    // Every agent scraped.
    let deadline = std::time::Instant::now() + ALERT_TIMEOUT;
    while prom.query("up{job=\"egress-enforcer\"} == 1").len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "not every agent is scraped: {:?}\n{}",
            prom.target_health(),
            context()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("targets: {:?}", prom.target_health());

    // A reload on a, so the reload panels have a second load to show; a
    // failed one on c (a config that does not parse; the policy in force
    // stays), then c's config back.
    let reload = |h: &Host| enforcer_tests::agent::enforcer_at(&h.s.control_socket(), &["reload"]);
    let out = reload(&hosts[0]);
    assert!(
        out.status.success(),
        "reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c_config = hosts[2].agent().config.clone();
    let good = std::fs::read_to_string(&c_config).expect("read c's config");
    std::fs::write(&c_config, "mode = ").expect("break c's config");
    assert!(
        !reload(&hosts[2]).status.success(),
        "a broken config reloaded"
    );
    std::fs::write(&c_config, good).expect("restore c's config");

    // Traffic: every host to an approved peer; b (enforce) and c (observe)
    // to a non-approved one, until both alerts have reached the webhook.
    let traffic = |hosts: &[Host]| {
        for h in hosts {
            h.connect(APPROVED_V4);
        }
        hosts[1].connect(DENIED_V4);
        hosts[2].connect(DENIED_V4);
    };
    let refused = webhook.wait_for(
        "EgressEnforcerRefusals firing for host b",
        ALERT_TIMEOUT,
        |a| a.name() == "EgressEnforcerRefusals" && a.label("host") == "b" && a.status == "firing",
        || traffic(&hosts),
        context,
    );
    assert_eq!(refused.label("host"), "b", "{refused}");
    assert_eq!(refused.label("scope"), hosts[1].scope(), "{refused}");
    assert_eq!(refused.label("country"), DENIED_COUNTRY, "{refused}");
    assert_eq!(
        refused.label("instance"),
        hosts[1].agent().metrics.to_string(),
        "{refused}"
    );
    let appeared = webhook.wait_for(
        "EgressEnforcerWouldRefuseAppeared firing for host c",
        ALERT_TIMEOUT,
        |a| {
            a.name() == "EgressEnforcerWouldRefuseAppeared"
                && a.label("host") == "c"
                && a.status == "firing"
        },
        || traffic(&hosts),
        context,
    );
    assert_eq!(appeared.label("host"), "c", "{appeared}");
    assert_eq!(appeared.label("scope"), hosts[2].scope(), "{appeared}");
    assert_eq!(appeared.label("country"), DENIED_COUNTRY, "{appeared}");
    // The agents counted what was sent, as Prometheus saw it.
    let b = hosts[1].agent().scrape();
    assert!(
        b.sum(
            "enforcer_connections_total",
            &[("verdict", "denied"), ("country", DENIED_COUNTRY)]
        ) > 0.0
    );

    // The dashboard, while every host is up and has recent traffic.
    check_dashboard_structure(&dashboard);
    let host_values: Vec<&str> = hosts.iter().map(|h| h.name).collect();
    for expr in &exprs {
        let q = substitute_variables(expr, &host_values.join("|"));
        let result = prom.query(&q);
        assert!(
            !result.is_empty(),
            "dashboard expression returned no data:\n  {expr}\n  (as queried: {q})\n{}",
            context()
        );
        eprintln!("dashboard: {} series <- {q}", result.len());
    }
    let variable_queries = dashboard_variable_queries(&dashboard);
    for q in &variable_queries {
        let result = prom.query(q);
        assert!(!result.is_empty(), "dashboard variable query {q}: no data");
        eprintln!("dashboard variable: {} values <- {q}", result.len());
    }
    eprintln!(
        "dashboard: {} expressions and {} variable queries, all with data",
        exprs.len(),
        variable_queries.len()
    );

    // The traffic stops: both alerts resolve.
    for (name, host) in [
        ("EgressEnforcerRefusals", "b"),
        ("EgressEnforcerWouldRefuseAppeared", "c"),
    ] {
        webhook.wait_for(
            &format!("{name} resolved for host {host}"),
            ALERT_TIMEOUT,
            |a| a.name() == name && a.label("host") == host && a.status == "resolved",
            || {},
            context,
        );
    }

    // The failed reload on c, and b's suppressed events.
    let failed = webhook.wait_for(
        "EgressEnforcerReloadFailed firing for host c",
        ALERT_TIMEOUT,
        |a| a.name() == "EgressEnforcerReloadFailed" && a.status == "firing",
        || {},
        context,
    );
    assert_eq!(failed.label("host"), "c", "{failed}");
    let suppressed = webhook.wait_for(
        "EgressEnforcerEventsSuppressed firing for host b",
        ALERT_TIMEOUT,
        |a| a.name() == "EgressEnforcerEventsSuppressed" && a.status == "firing",
        || {},
        context,
    );
    assert_eq!(suppressed.label("host"), "b", "{suppressed}");
    assert_eq!(suppressed.label("reason"), "rate_limit", "{suppressed}");

    // The database-age alert: a's database is older than its max_age; c's
    // is as old but within its own limit; b's is new.
    let old = webhook.wait_for(
        "EgressEnforcerGeoipDatabaseOld firing for host a",
        ALERT_TIMEOUT,
        |a| a.name() == "EgressEnforcerGeoipDatabaseOld" && a.status == "firing",
        || {},
        context,
    );
    assert_eq!(old.label("host"), "a", "{old}");
    assert_eq!(old.label("database"), "fleet-country.mmdb", "{old}");

    // a's agent stops: its target goes down and the agent-down alert fires
    // for a alone.
    let mut a_agent = hosts[0].agent.take().expect("a's agent");
    a_agent.stop();
    let down = webhook.wait_for(
        "EgressEnforcerDown firing for host a",
        ALERT_TIMEOUT,
        |a| a.name() == "EgressEnforcerDown" && a.status == "firing",
        || {},
        context,
    );
    assert_eq!(down.label("host"), "a", "{down}");
    assert_eq!(
        down.label("instance"),
        a_agent.metrics.to_string(),
        "{down}"
    );

    let received = webhook.received();
    eprintln!("the webhook received {} alerts:", received.len());
    for a in &received {
        eprintln!("  {a}");
    }
    // Nothing fired for a host it should not have.
    for (name, host) in [
        ("EgressEnforcerRefusals", "a"),
        ("EgressEnforcerRefusals", "c"),
        ("EgressEnforcerWouldRefuseAppeared", "a"),
        ("EgressEnforcerWouldRefuseAppeared", "b"),
        ("EgressEnforcerGeoipDatabaseOld", "b"),
        ("EgressEnforcerGeoipDatabaseOld", "c"),
        ("EgressEnforcerDown", "b"),
        ("EgressEnforcerDown", "c"),
        ("EgressEnforcerReloadHeld", "a"),
        ("EgressEnforcerReloadHeld", "b"),
        ("EgressEnforcerReloadHeld", "c"),
        ("EgressEnforcerReloadFailed", "a"),
        ("EgressEnforcerReloadFailed", "b"),
        ("EgressEnforcerEventsSuppressed", "a"),
        ("EgressEnforcerEventsSuppressed", "c"),
        ("EgressEnforcerSinkWriteErrors", "a"),
        ("EgressEnforcerSinkWriteErrors", "b"),
        ("EgressEnforcerSinkWriteErrors", "c"),
        ("EgressEnforcerCoverageLost", "a"),
        ("EgressEnforcerCoverageLost", "b"),
        ("EgressEnforcerCoverageLost", "c"),
    ] {
        assert!(
            !have(&received, name, host, "firing"),
            "{name} fired for host {host}"
        );
    }
    drop(prom);
    drop(am);
    drop(a_agent);
    for h in &mut hosts {
        drop(h.agent.take());
    }
}

/// Every `targets[].expr` of every panel, rows' nested panels included.
fn dashboard_exprs(d: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in panels(d) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push(e.to_owned());
            }
        }
    }
    assert!(!out.is_empty(), "no expressions in the dashboard");
    out
}

/// The dashboard's panels, rows' nested panels included.
fn panels(d: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// `expr` with Grafana's variables replaced: `$host` by `hosts` (a regex
/// of every test host, as the variable's "All" would be), the interval
/// variables by fixed windows. Panics on a variable left over.
fn substitute_variables(expr: &str, hosts: &str) -> String {
    let mut q = expr.to_owned();
    for (from, to) in [
        ("${host:regex}", hosts),
        ("${host}", hosts),
        ("$host", hosts),
        ("$__rate_interval", "1m"),
        ("$__interval", "10s"),
        ("$__range", "5m"),
    ] {
        q = q.replace(from, to);
    }
    assert!(!q.contains('$'), "unknown variable in {expr:?}");
    q
}

/// The query variables' `label_values(METRIC, LABEL)` as PromQL that
/// returns one series per value: `count by (LABEL) (METRIC)`.
fn dashboard_variable_queries(d: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] != "query" {
            continue;
        }
        let q = v["query"]["query"]
            .as_str()
            .or_else(|| v["query"].as_str())
            .unwrap_or_else(|| panic!("variable {} has no query", v["name"]));
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|s| s.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {}: not label_values(...): {q}", v["name"]));
        let (metric, label) = inner
            .rsplit_once(',')
            .unwrap_or_else(|| panic!("variable {}: {q}", v["name"]));
        out.push(format!("count by ({}) ({})", label.trim(), metric.trim()));
    }
    out
}

/// What Grafana needs of the dashboard that a JSON parse does not check:
/// the variables the expressions use exist, every panel has a unique id, a
/// type, a position and the datasource variable, every target a refId.
fn check_dashboard_structure(d: &serde_json::Value) {
    assert!(d["title"].is_string(), "no title");
    assert!(d["uid"].is_string(), "no uid");
    assert!(d["schemaVersion"].is_u64(), "no schemaVersion");
    let vars: Vec<&serde_json::Value> = d["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .collect();
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    assert_eq!(var("DS_PROMETHEUS")["type"], "datasource");
    assert_eq!(var("DS_PROMETHEUS")["query"], "prometheus");
    assert_eq!(var("host")["type"], "query");
    assert_eq!(
        var("host")["datasource"]["uid"],
        "${DS_PROMETHEUS}",
        "the host variable's datasource"
    );
    let mut ids = std::collections::BTreeSet::new();
    let mut types = std::collections::BTreeSet::new();
    for p in panels(d) {
        let id = p["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel without id: {p}"));
        assert!(ids.insert(id), "panel id {id} twice");
        let ty = p["type"]
            .as_str()
            .unwrap_or_else(|| panic!("panel {id}: no type"));
        types.insert(ty.to_owned());
        for k in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][k].is_u64(), "panel {id}: gridPos.{k}");
        }
        if ty == "row" {
            continue;
        }
        assert!(p["title"].is_string(), "panel {id}: no title");
        assert_eq!(
            p["datasource"]["uid"], "${DS_PROMETHEUS}",
            "panel {id}: datasource"
        );
        let targets = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel {id}: no targets"));
        assert!(!targets.is_empty(), "panel {id}: no targets");
        for t in targets {
            assert!(t["refId"].is_string(), "panel {id}: a target without refId");
            assert_eq!(
                t["datasource"]["uid"], "${DS_PROMETHEUS}",
                "panel {id}: target datasource"
            );
        }
    }
    assert!(
        types.contains("geomap"),
        "no world map (geomap) panel: {types:?}"
    );
}

/// The panel types the dashboard uses, each with its options and custom
/// field config types in `@grafana/schema`.
const PANEL_KINDS: [&str; 4] = ["geomap", "timeseries", "stat", "table"];

/// TypeScript that types the dashboard with Grafana's own schema types
/// (`@grafana/schema`): the whole dashboard as `Dashboard`, each variable
/// as `VariableModel`, each panel as `Panel` or `RowPanel`, its `options`
/// as its panel type's `Options` and its `fieldConfig.defaults.custom` as
/// its `FieldConfig`. Object literals get TypeScript's excess-property
/// check, so an unknown key fails as well as a wrong type or value.
fn schema_check_ts(d: &serde_json::Value) -> String {
    const S: &str = "@grafana/schema/dist/types/raw";
    let mut out = vec![format!(
        "import {{ Dashboard, Panel, RowPanel, VariableModel }} from '{S}/dashboard/x/types.gen';"
    )];
    for k in PANEL_KINDS {
        out.push(format!(
            "import * as {k} from '{S}/composable/{k}/panelcfg/x/types.gen';"
        ));
    }
    // String enums are nominal in TypeScript while JSON carries their
    // values: every enum is widened to the union of its values, nothing
    // else is loosened.
    out.push(
        "type Loose<T> = T extends string ? `${T}` : T extends Array<infer U> ? Array<Loose<U>> \
         : T extends object ? { [K in keyof T]: Loose<T[K]> } : T;"
            .to_owned(),
    );
    out.push(format!("export const dashboard: Loose<Dashboard> = {d};"));
    for (i, v) in d["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        out.push(format!("export const var_{i}: Loose<VariableModel> = {v};"));
    }
    for (i, p) in panels(d).into_iter().enumerate() {
        let ty = p["type"].as_str().unwrap_or_default();
        if ty == "row" {
            out.push(format!("export const row_{i}: Loose<RowPanel> = {p};"));
            continue;
        }
        assert!(
            PANEL_KINDS.contains(&ty),
            "panel type {ty:?}: add its schema types to the check"
        );
        out.push(format!("export const panel_{i}: Loose<Panel> = {p};"));
        out.push(format!(
            "export const options_{i}: Loose<{ty}.Options> = {};",
            p["options"]
        ));
        let custom = &p["fieldConfig"]["defaults"]["custom"];
        if !custom.is_null() {
            out.push(format!(
                "export const custom_{i}: Loose<Partial<{ty}.FieldConfig>> = {custom};"
            ));
        }
    }
    out.join("\n") + "\n"
}

/// `tsc --strict --noEmit` over [`schema_check_ts`] of `d`, with the
/// packages in `schema_dir`: whether it passed, and what tsc said.
fn tsc(schema_dir: &std::path::Path, d: &serde_json::Value) -> (bool, String) {
    let work = tempfile::Builder::new()
        .prefix("ee-dashboard-schema-")
        .tempdir()
        .expect("scratch directory");
    std::os::unix::fs::symlink(
        schema_dir.join("node_modules"),
        work.path().join("node_modules"),
    )
    .expect("link node_modules");
    std::fs::write(work.path().join("check.ts"), schema_check_ts(d)).expect("write check.ts");
    std::fs::write(
        work.path().join("tsconfig.json"),
        r#"{"compilerOptions":{"strict":true,"noEmit":true,"moduleResolution":"node","module":"commonjs","target":"es2020","skipLibCheck":true,"types":[]},"files":["check.ts"]}"#,
    )
    .expect("write tsconfig.json");
    let out = std::process::Command::new(schema_dir.join("node_modules/.bin/tsc"))
        .arg("-p")
        .arg(work.path())
        .output()
        .expect("run tsc");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The shipped dashboard against Grafana's schema types (see
/// [`schema_check_ts`]; `cargo xtask test` installs `@grafana/schema` and
/// TypeScript, pinned by packaging/grafana/schema-check/, and names the
/// directory in `EE_GRAFANA_SCHEMA_DIR`). No root needed. Two broken
/// copies show the check catches an unknown option and a wrong enum value.
#[test]
fn dashboard_type_checks_with_grafanas_schema_types() {
    let dir = std::env::var_os("EE_GRAFANA_SCHEMA_DIR").map(PathBuf::from);
    skip_unless!(
        dir.as_ref()
            .is_some_and(|d| d.join("node_modules/.bin/tsc").exists()),
        "EE_GRAFANA_SCHEMA_DIR names no directory with node_modules/.bin/tsc (cargo xtask test installs it)"
    );
    let dir = dir.unwrap_or_default();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(shipped_dashboard_path()).expect("read the dashboard"),
    )
    .expect("the dashboard is JSON");
    let (ok, said) = tsc(&dir, &dashboard);
    assert!(ok, "the dashboard does not type-check:\n{said}");
    eprintln!(
        "dashboard: {} panels type-check with @grafana/schema",
        panels(&dashboard).len()
    );

    // The index of the first top-level panel of type `ty`.
    let first = |ty: &str| -> usize {
        dashboard["panels"]
            .as_array()
            .and_then(|ps| ps.iter().position(|p| p["type"] == ty))
            .unwrap_or_else(|| panic!("no {ty} panel"))
    };
    let mut unknown_option = dashboard.clone();
    unknown_option["panels"][first("stat")]["options"]["colourMode"] = "background".into();
    let (ok, said) = tsc(&dir, &unknown_option);
    assert!(
        !ok && said.contains("colourMode"),
        "an unknown stat option passed:\n{said}"
    );
    let mut bad_value = dashboard.clone();
    bad_value["panels"][first("timeseries")]["fieldConfig"]["defaults"]["custom"]["drawStyle"] =
        "zigzag".into();
    let (ok, said) = tsc(&dir, &bad_value);
    assert!(
        !ok && said.contains("zigzag"),
        "a drawStyle the schema does not have passed:\n{said}"
    );
}
