//! The reload guard (`geoip.max_flip`): a database replaced on disk that
//! moves more address space between allowed and refused than the bound
//! allows is held by the file watch (the kernel's verdicts stay as they
//! were; status, the metrics and the audit log say so with figures this
//! test computes on its own), an explicit `enforcer reload` is refused
//! with the way out, and `enforcer reload --accept-change` applies it,
//! audited; a change within the bound is applied on its own; a bound that
//! cannot be right is refused naming its key.
//!
//! A hold survives an agent restart: the restarted agent adopts the pins,
//! compares the data on disk with the baseline of the data in force that
//! the first one wrote into the runtime directory, and holds it again
//! (trigger `start`) with the old verdicts in the kernel; without a
//! baseline (removed, or damaged) it starts with the data on disk and says
//! so in its log, `status` and the metrics; a baseline that cannot be
//! written fails no reload, and is counted and shown.

use std::{
    net::IpAddr,
    path::Path,
    time::{Duration, Instant},
};

use enforcer_tests::{
    agent::{Agent, enforcer, enforcer_at, verified_audit_summary},
    privileged,
    probe::{Proto, attempt},
    scenario::*,
    skip_unless,
};
use sha2::{Digest as _, Sha256};

/// The old data: the test database plus a /15 in the refused country.
const BLOCK: &str = "198.18.0.0/15";
/// Addresses of [`BLOCK`], counted from its prefix length, not by the
/// agent's sweep.
const BLOCK_ADDRESSES: u64 = 1 << (32 - 15);

/// The bound the tests set for IPv4: well above one address, well below
/// the block. IPv6's is 0: any IPv6 flip is held.
const BOUND: u64 = 1000;

fn old_data() -> String {
    format!("{TEST_DB_CSV}{BLOCK},{DENIED_COUNTRY}\n")
}

/// The new data: the denied test addresses (IPv4 and IPv6) and the block
/// move to the approved country.
fn new_data() -> String {
    TEST_DB_CSV
        .replace(
            &format!("198.51.100.20/32,{DENIED_COUNTRY}"),
            &format!("198.51.100.20/32,{APPROVED_COUNTRY}"),
        )
        .replace(
            &format!("2001:db8:1::20/128,{DENIED_COUNTRY}"),
            &format!("2001:db8:1::20/128,{APPROVED_COUNTRY}"),
        )
        + &format!("{BLOCK},{APPROVED_COUNTRY}\n")
}

/// The moves of `new_data` over `old_data`, all refused -> allowed under
/// the test config (EEA approved): the /32 and the /15.
const FLIPPED: u64 = 1 + BLOCK_ADDRESSES;

fn sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Renames `text` over the scenario's database, as geoipupdate does.
fn replace(s: &Scenario, text: &str) {
    let tmp = s.dir.path().join(".test-geo.csv.new");
    std::fs::write(&tmp, text).expect("write the new database");
    std::fs::rename(&tmp, &s.db).expect("rename it over the old one");
}

/// Polls `what` for at most 20 s (the watch's debounce is one second).
fn within(what: &str, mut ok: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ok() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not within 20s: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The audit records of `kind`, in order.
fn records(log: &Path, kind: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .expect("read the audit log")
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("audit line is JSON"))
        .filter(|r| r["kind"] == kind)
        .collect()
}

fn config(s: &Scenario, ipv4: &str) -> String {
    s.config_with(
        "enforce",
        "allow",
        &[],
        "",
        &format!("[geoip.max_flip]\nipv4 = {ipv4:?}\nipv6 = \"0\"\n"),
    )
}

/// Asserts that the new data is held (the old in force) the same way in
/// status, the metrics, the log and the audit log's `nth` `reload_held`
/// record, with the figures of [`FLIPPED`]; returns that record.
fn assert_held_everywhere(
    s: &Scenario,
    agent: &Agent,
    trigger: &str,
    nth: usize,
) -> serde_json::Value {
    let st = s.status();
    let held = &st["agent"]["reload_held"];
    assert_eq!(held["trigger"], trigger, "{st:#}");
    assert_eq!(held["flip"]["ipv4"]["flipped"], FLIPPED, "{held:#}");
    assert_eq!(held["flip"]["ipv6"]["flipped"], "1", "{held:#}");
    assert_eq!(held["databases"][0]["sha256"], sha256(&new_data()));
    assert_eq!(
        st["agent"]["databases"][0]["sha256"],
        sha256(&old_data()),
        "the old data stays in force: {st:#}"
    );

    let m = agent.scrape();
    assert_eq!(m.sum("enforcer_reload_held", &[]), 1.0);
    assert_eq!(
        m.sum(
            "enforcer_reload_held_flipped_addresses",
            &[("family", "ipv4"), ("direction", "refused_to_allowed")]
        ),
        FLIPPED as f64
    );
    assert!(
        agent.log().contains("reload held"),
        "a warning is logged: {}",
        agent.log()
    );

    let records = records(&s.audit_log(), "reload_held");
    let h = records
        .get(nth)
        .unwrap_or_else(|| panic!("record {nth}: {records:#?}"));
    assert_eq!(h["trigger"], trigger, "{h:#}");
    assert_eq!(h["flip"]["ipv4"]["flipped"], FLIPPED, "{h:#}");
    assert_eq!(h["flip"]["ipv6"]["flipped"], "1", "{h:#}");
    assert_eq!(h["databases_in_force"][0]["sha256"], sha256(&old_data()));
    assert_eq!(h["databases_held"][0]["sha256"], sha256(&new_data()));
    h.clone()
}

fn held_gauge(agent: &Agent) -> f64 {
    agent.scrape().sum("enforcer_reload_held", &[])
}

#[test]
fn a_change_beyond_the_bound_is_held_until_accepted() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let denied = IpAddr::V4(DENIED_V4);
    let denied6 = IpAddr::V6(DENIED_V6);
    std::fs::write(&s.db, old_data()).expect("write the old data");
    let agent = s.start(&config(&s, &BOUND.to_string()));
    let log = s.audit_log();
    assert!(attempt(&s.sb, Proto::Tcp, denied).refused());
    assert!(attempt(&s.sb, Proto::Tcp, denied6).refused());
    assert!(s.status()["agent"]["reload_held"].is_null());
    assert_eq!(held_gauge(&agent), 0.0);

    // Beyond the bound: the watch holds it.
    replace(&s, &new_data());
    within("status shows the reload held", || {
        !s.status()["agent"]["reload_held"].is_null()
    });
    assert!(
        attempt(&s.sb, Proto::Tcp, denied).refused()
            && attempt(&s.sb, Proto::Tcp, denied6).refused(),
        "a held change changes no verdict"
    );
    let h = assert_held_everywhere(&s, &agent, "file_watch", 0);
    assert_eq!(h["flip"]["ipv4"]["bound"], BOUND, "{h:#}");
    assert_eq!(h["flip"]["ipv6"]["max_flip"], "0 addresses", "{h:#}");
    let st = s.status();
    let held = &st["agent"]["reload_held"];
    let v4 = &held["flip"]["ipv4"];
    assert_eq!(v4["refused_to_allowed"], FLIPPED, "{held:#}");
    assert_eq!(v4["allowed_to_refused"], 0, "{held:#}");
    assert_eq!(v4["bound"], BOUND, "{held:#}");
    assert_eq!(v4["exceeds"], true, "{held:#}");
    let v6 = &held["flip"]["ipv6"];
    assert_eq!(v6["refused_to_allowed"], "1", "{held:#}");
    assert_eq!(v6["bound"], "0", "{held:#}");
    assert_eq!(v6["exceeds"], true, "{held:#}");
    let text = enforcer_at(&s.control_socket(), &["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("RELOAD HELD") && text.contains(&format!("IPv4: {FLIPPED} addresses")),
        "{text}"
    );

    assert_eq!(
        agent.scrape().sum(
            "enforcer_reload_held_bound_addresses",
            &[("family", "ipv4")]
        ),
        BOUND as f64
    );
    assert_eq!(records(&log, "reload_held").len(), 1);

    // An explicit reload is refused too, with the way out; the same data
    // is not recorded again.
    let out = enforcer_at(&s.control_socket(), &["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--accept-change"),
        "{err}"
    );
    assert!(attempt(&s.sb, Proto::Tcp, denied).refused());
    assert_eq!(records(&log, "reload_held").len(), 1);

    // Accepted: applied, audited, no longer held.
    let out = enforcer_at(&s.control_socket(), &["reload", "--accept-change"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("accepted"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        attempt(&s.sb, Proto::Tcp, denied).ok && attempt(&s.sb, Proto::Tcp, denied6).ok,
        "the accepted data is in force"
    );
    assert!(s.status()["agent"]["reload_held"].is_null());
    assert_eq!(held_gauge(&agent), 0.0);
    let accepted = records(&log, "reload_accepted");
    assert_eq!(accepted.len(), 1, "{accepted:#?}");
    let a = &accepted[0];
    assert_eq!(a["uid"], nix::unistd::getuid().as_raw(), "{a:#}");
    assert!(a["pid"].as_u64().is_some_and(|p| p > 0), "{a:#}");
    assert_eq!(a["flip"]["ipv4"]["flipped"], FLIPPED, "{a:#}");
    assert_eq!(a["databases_before"][0]["sha256"], sha256(&old_data()));
    assert_eq!(a["databases_applied"][0]["sha256"], sha256(&new_data()));
    assert!(
        a.get("databases_held").is_none(),
        "the held data was applied: {a:#}"
    );

    // Within the bound (one IPv4 address back to refused, IPv6 as it is):
    // applied on its own.
    let back = new_data().replace(
        &format!("198.51.100.20/32,{APPROVED_COUNTRY}"),
        &format!("198.51.100.20/32,{DENIED_COUNTRY}"),
    );
    replace(&s, &back);
    within("the change within the bound is in force", || {
        attempt(&s.sb, Proto::Tcp, denied).refused()
    });
    assert!(s.status()["agent"]["reload_held"].is_null());
    assert_eq!(records(&log, "reload_held").len(), 1);

    let summary = verified_audit_summary(&log);
    assert_eq!(summary["reload_guard"]["held"], 1, "{summary:#}");
    assert_eq!(summary["reload_guard"]["accepted"], 1, "{summary:#}");
    assert_eq!(summary["kinds"]["reload_accepted"], 1, "{summary:#}");
    let report = enforcer(&[
        "audit",
        "report",
        "--format",
        "json",
        log.to_str().expect("utf-8 path"),
    ]);
    let report = String::from_utf8_lossy(&report.stdout);
    assert!(
        report.contains("reload HELD") && report.contains("held change ACCEPTED"),
        "{report}"
    );
}

#[test]
fn a_bound_that_cannot_be_right_is_refused_naming_its_key() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let bad = s.dir.path().join("bad.toml");
    std::fs::write(&bad, config(&s, "12 parsecs")).expect("write the bad config");
    let out = enforcer(&[
        "config",
        "check",
        "--config",
        bad.to_str().expect("utf-8 path"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("geoip.max_flip.ipv4 \"12 parsecs\""),
        "{err}"
    );

    let agent = s.start(&config(&s, "1%"));
    let generation = s.status()["agent"]["generation"].clone();
    std::fs::write(&agent.config, config(&s, "101%")).expect("write the bad config");
    let out = enforcer_at(&s.control_socket(), &["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("geoip.max_flip.ipv4 \"101%\": more than 100%"),
        "{err}"
    );
    assert_eq!(s.status()["agent"]["generation"], generation);
    assert!(attempt(&s.sb, Proto::Tcp, IpAddr::V4(DENIED_V4)).refused());
}

/// The baseline's manifest in the scenario's runtime directory.
fn baseline_manifest(s: &Scenario) -> std::path::PathBuf {
    s.run_dir().join(enforcer::paths::BASELINE_MANIFEST_NAME)
}

/// The value of a metric that must have exactly one sample (a zero must
/// not pass for a metric that is not there).
fn only_sample(agent: &Agent, name: &str) -> f64 {
    let m = agent.scrape();
    let series = m.series(name);
    assert_eq!(series.len(), 1, "{name}: {series:?}");
    series[0].value
}

fn baseline_missing_gauge(agent: &Agent) -> f64 {
    only_sample(agent, "enforcer_reload_guard_baseline_missing")
}

/// SIGTERM, pins left for the next agent (as `systemctl restart` does).
/// Asserts that a start went on without a usable baseline (nothing held,
/// the gauge at 1) and returns the reason `status` gives.
fn missing_at_start(s: &Scenario, agent: &Agent) -> String {
    let st = s.status();
    assert!(st["agent"]["reload_held"].is_null(), "{st:#}");
    assert_eq!(baseline_missing_gauge(agent), 1.0);
    st["agent"]["reload_guard_baseline"]["missing_at_start"]
        .as_str()
        .unwrap_or_else(|| panic!("status says the baseline is unusable: {st:#}"))
        .to_owned()
}

fn stop_for_restart(mut agent: Agent) {
    assert!(agent.stop().success(), "{}", agent.log());
    agent.leave_pins();
}

#[test]
fn a_hold_survives_a_restart_until_accepted() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let denied = IpAddr::V4(DENIED_V4);
    let denied6 = IpAddr::V6(DENIED_V6);
    std::fs::write(&s.db, old_data()).expect("write the old data");
    let config = config(&s, &BOUND.to_string());
    let first = s.start(&config);
    let log = s.audit_log();
    assert!(
        baseline_manifest(&s).is_file(),
        "the start writes the baseline"
    );
    assert_eq!(
        baseline_missing_gauge(&first),
        0.0,
        "a fresh start is not gated"
    );

    replace(&s, &new_data());
    within("status shows the reload held", || {
        !s.status()["agent"]["reload_held"].is_null()
    });
    assert!(attempt(&s.sb, Proto::Tcp, denied).refused());
    stop_for_restart(first);

    // The restart reads the new data from disk and holds it again.
    let agent = s.start(&config);
    assert!(
        attempt(&s.sb, Proto::Tcp, denied).refused()
            && attempt(&s.sb, Proto::Tcp, denied6).refused(),
        "the restart keeps the data in force: {}",
        agent.log()
    );
    // The baseline's data is in force, the disk's held: one record per agent.
    assert_held_everywhere(&s, &agent, "start", 1);
    let st = s.status();
    assert_eq!(
        st["agent"]["reload_held"]["flip"]["ipv4"]["bound"], BOUND,
        "{st:#}"
    );
    assert!(st["agent"]["adopted"].as_bool().unwrap_or(false), "{st:#}");
    assert!(
        st["agent"]["reload_guard_baseline"]["missing_at_start"].is_null(),
        "{st:#}"
    );
    assert_eq!(baseline_missing_gauge(&agent), 0.0);
    assert!(agent.log().contains("trigger=\"start\""), "{}", agent.log());
    let text = enforcer_at(&s.control_socket(), &["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("RELOAD HELD") && text.contains("(start)"),
        "{text}"
    );
    assert_eq!(records(&log, "reload_held").len(), 2, "one per agent");

    // The review: the previous file is gone, the baseline stands for it.
    let out = enforcer(&[
        "geoip",
        "diff",
        baseline_manifest(&s).to_str().expect("utf-8 path"),
        s.db.to_str().expect("utf-8 path"),
        "--config",
        agent.config.to_str().expect("utf-8 path"),
        "-o",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let diff: serde_json::Value = serde_json::from_slice(&out.stdout).expect("diff is JSON");
    assert_eq!(diff["reload_guard"]["would_hold"], true, "{diff:#}");
    assert_eq!(
        diff["reload_guard"]["flip"]["ipv4"]["flipped"], FLIPPED,
        "{diff:#}"
    );
    assert_eq!(diff["new"]["sha256"], sha256(&new_data()), "{diff:#}");

    // Accepted after the restart: applied as after a reload hold.
    let out = enforcer_at(&s.control_socket(), &["reload", "--accept-change"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        attempt(&s.sb, Proto::Tcp, denied).ok && attempt(&s.sb, Proto::Tcp, denied6).ok,
        "the accepted data is in force"
    );
    assert!(s.status()["agent"]["reload_held"].is_null());
    let accepted = records(&log, "reload_accepted");
    assert_eq!(accepted.len(), 1, "{accepted:#?}");
    assert_eq!(
        accepted[0]["databases_applied"][0]["sha256"],
        sha256(&new_data())
    );
    stop_for_restart(agent);

    // The accept moved the baseline (written after the capabilities were
    // dropped): the next restart compares, and holds nothing.
    let mut agent = s.start(&config);
    assert!(attempt(&s.sb, Proto::Tcp, denied).ok);
    let st = s.status();
    assert!(st["agent"]["reload_held"].is_null(), "{st:#}");
    let b = &st["agent"]["reload_guard_baseline"];
    assert!(
        b["missing_at_start"].is_null() && b["last_write_error"].is_null(),
        "{st:#}"
    );
    assert!(
        b["written_unix"].as_f64().is_some_and(|t| t > 0.0),
        "{st:#}"
    );
    assert_eq!(held_gauge(&agent), 0.0);
    assert_eq!(baseline_missing_gauge(&agent), 0.0);
    assert_eq!(
        only_sample(
            &agent,
            "enforcer_reload_guard_baseline_write_failures_total"
        ),
        0.0
    );
    assert!(
        agent
            .log()
            .contains("the GeoIP data on disk is the data in force"),
        "{}",
        agent.log()
    );
    assert_eq!(records(&log, "reload_held").len(), 2);
    verified_audit_summary(&log);

    // Uninstalling removes the baseline with the pins.
    agent.uninstall();
    assert!(!baseline_manifest(&s).exists());
    assert!(
        !s.run_dir()
            .join(enforcer::paths::BASELINE_TABLE_NAME)
            .exists()
    );
}

#[test]
fn a_restart_without_a_baseline_says_it_cannot_compare() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let denied = IpAddr::V4(DENIED_V4);
    std::fs::write(&s.db, old_data()).expect("write the old data");
    let config = config(&s, &BOUND.to_string());
    let first = s.start(&config);
    assert!(attempt(&s.sb, Proto::Tcp, denied).refused());
    stop_for_restart(first);

    // Removed: the restart goes on with the data on disk, loudly.
    std::fs::remove_file(baseline_manifest(&s)).expect("remove the baseline");
    replace(&s, &new_data());
    let agent = s.start(&config);
    assert!(
        attempt(&s.sb, Proto::Tcp, denied).ok,
        "the data on disk is in force: {}",
        agent.log()
    );
    let why = missing_at_start(&s, &agent);
    assert!(
        why.contains(&baseline_manifest(&s).display().to_string()) && why.contains("no baseline"),
        "{why}"
    );
    assert!(
        agent.log().contains("no usable baseline"),
        "{}",
        agent.log()
    );
    let text = enforcer_at(&s.control_socket(), &["status"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("BASELINE MISSING"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
    assert!(baseline_manifest(&s).is_file(), "the start wrote a new one");
    stop_for_restart(agent);

    // Damaged: the same, naming the file and what is wrong.
    let table = s.run_dir().join(enforcer::paths::BASELINE_TABLE_NAME);
    std::fs::write(&table, b"not a table").expect("damage the baseline");
    replace(&s, &old_data());
    let agent = s.start(&config);
    assert!(
        attempt(&s.sb, Proto::Tcp, denied).refused(),
        "the data on disk is in force: {}",
        agent.log()
    );
    let why = missing_at_start(&s, &agent);
    assert!(
        why.contains(&table.display().to_string()) && why.contains("manifest names"),
        "{why}"
    );

    // A baseline that cannot be written fails no apply: counted, shown,
    // and the old manifest goes (a restart must not compare with it).
    std::fs::remove_file(&table).expect("remove the table");
    std::fs::create_dir(&table).expect("take its name");
    let generation = s.status()["agent"]["generation"].as_u64();
    let out = enforcer_at(&s.control_socket(), &["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = s.status();
    assert_ne!(st["agent"]["generation"].as_u64(), generation, "{st:#}");
    let b = &st["agent"]["reload_guard_baseline"];
    assert_eq!(b["write_failures"], 1, "{st:#}");
    assert!(
        b["last_write_error"]
            .as_str()
            .is_some_and(|e| e.contains(&table.display().to_string())),
        "{st:#}"
    );
    assert_eq!(
        only_sample(
            &agent,
            "enforcer_reload_guard_baseline_write_failures_total"
        ),
        1.0
    );
    assert!(!baseline_manifest(&s).exists());
    let text = enforcer_at(&s.control_socket(), &["status"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("baseline:   cannot be written"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
    assert!(
        agent
            .log()
            .contains("cannot write the reload guard's baseline"),
        "{}",
        agent.log()
    );
    std::fs::remove_dir(&table).expect("give the name back");
}
