//! Refreshes that cannot be missed: a GeoIP source renamed over while
//! another file in its directory changes several times a second, and again
//! just before a SIGHUP, is in force within seconds both times; with the
//! file watch off, `status` and `enforcer_geoip_database_stale` say that
//! the file on disk is not the one in force until a reload.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use enforcer_tests::{
    agent::{Agent, enforcer_at},
    privileged,
    probe::{Proto, attempt},
    scenario::*,
    skip_unless,
};

/// "Within a few seconds": the watch's debounce is one second; this is
/// generous for a loaded machine.
const IN_FORCE: Duration = Duration::from_secs(10);

/// The test database's `on_disk` state in `status`.
fn on_disk(s: &Scenario) -> String {
    let st = s.status();
    st["agent"]["databases"]
        .as_array()
        .or_else(|| st["databases"].as_array())
        .into_iter()
        .flatten()
        .find(|d| d["path"].as_str() == Some(&s.db.display().to_string()))
        .map(|d| d["on_disk"].as_str().unwrap_or("none").to_owned())
        .unwrap_or_else(|| panic!("no database entry for {} in {st:#}", s.db.display()))
}

fn stale(agent: &Agent) -> f64 {
    agent.scrape().sum(
        "enforcer_geoip_database_stale",
        &[("database", "test-geo.csv")],
    )
}

/// Renames a new content over the test database, as geoipupdate does.
fn replace(s: &Scenario, text: &str) {
    let tmp = s.dir.path().join(".test-geo.csv.new");
    std::fs::write(&tmp, text).expect("write the new database");
    std::fs::rename(&tmp, &s.db).expect("rename it over the old one");
}

/// Polls `what` until it holds or `IN_FORCE` has passed; how long it took.
fn within(what: &str, mut ok: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !ok() {
        assert!(
            started.elapsed() < IN_FORCE,
            "not within {IN_FORCE:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

/// Another file in the database's directory renamed over every 100 ms (as
/// an audit head or an updater's other files), for at most a minute.
struct Churn {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u32>>,
}

impl Churn {
    fn start(dir: &std::path::Path) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let dir = dir.to_owned();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut n = 0;
            while !flag.load(Ordering::Relaxed) && n < 600 {
                let tmp = dir.join("other.csv.tmp");
                std::fs::write(&tmp, n.to_string()).expect("write the other file");
                std::fs::rename(&tmp, dir.join("other.csv")).expect("rename the other file");
                n += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            n
        });
        Churn {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_source_replaced_under_churn_and_before_a_sighup_is_in_force() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let denied = IpAddr::V4(DENIED_V4);
    let agent = s.start(&s.config("enforce", "allow", &[]));
    assert!(attempt(&s.sb, Proto::Tcp, denied).refused());
    assert_eq!(on_disk(&s), "in_force");
    assert_eq!(stale(&agent), 0.0);
    let churn = Churn::start(s.dir.path());

    // Renamed over while the other file changes ten times a second.
    replace(
        &s,
        &TEST_DB_CSV.replace("198.51.100.20/32,US", "198.51.100.20/32,DE"),
    );
    let took = within("the DE database is in force", || {
        attempt(&s.sb, Proto::Tcp, denied).ok
    });
    eprintln!("in force {took:?} after the rename, under churn");
    assert!(agent.log().contains("replaced on disk"), "{}", agent.log());
    // The kernel's maps change a few milliseconds before the reload
    // publishes its status: the verdict may be seen first.
    within("status says the new file is in force", || {
        on_disk(&s) == "in_force"
    });

    // Renamed over just before a SIGHUP: whichever reads it, the new
    // content ends up in force (the SIGHUP's reload may read the old one;
    // the watch's pending change must survive it).
    replace(&s, TEST_DB_CSV);
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    let took = within("the US database is in force again", || {
        attempt(&s.sb, Proto::Tcp, denied).refused()
    });
    eprintln!("in force {took:?} after the rename and SIGHUP");
    within("status says the file on disk is in force", || {
        on_disk(&s) == "in_force" && stale(&agent) == 0.0
    });
    drop(churn);
    let failed = agent
        .scrape()
        .sum("enforcer_policy_loads_total", &[("result", "failure")]);
    assert_eq!(failed, 0.0, "{}", agent.log());
}

#[test]
fn with_the_watch_off_a_replaced_source_is_shown_stale_until_a_reload() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let denied = IpAddr::V4(DENIED_V4);
    let config = s
        .config("enforce", "allow", &[])
        .replace("[geoip]\n", "[geoip]\nwatch = false\n");
    assert!(config.contains("watch = false"));
    let agent = s.start(&config);
    assert!(attempt(&s.sb, Proto::Tcp, denied).refused());
    assert_eq!(on_disk(&s), "in_force");

    replace(
        &s,
        &TEST_DB_CSV.replace("198.51.100.20/32,US", "198.51.100.20/32,DE"),
    );
    within("status and the metric say the file differs", || {
        on_disk(&s) == "differs" && stale(&agent) == 1.0
    });
    // Nothing reloads on its own with the watch off: the old one serves.
    std::thread::sleep(Duration::from_secs(4));
    assert!(attempt(&s.sb, Proto::Tcp, denied).refused());
    assert_eq!(
        agent
            .scrape()
            .sum("enforcer_policy_loads_total", &[("result", "success")]),
        1.0
    );
    let human = enforcer_at(&s.control_socket(), &["status"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("the file on disk differs"), "{text}");

    // Moved away: unreadable, and still stale.
    let aside = s.dir.path().join("aside.csv");
    std::fs::rename(&s.db, &aside).expect("move the database away");
    within("status says it cannot be read", || {
        on_disk(&s) == "unreadable" && stale(&agent) == 1.0
    });
    std::fs::rename(&aside, &s.db).expect("move it back");

    let out = enforcer_at(&s.control_socket(), &["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        attempt(&s.sb, Proto::Tcp, denied).ok,
        "the DE database is in force"
    );
    assert_eq!(on_disk(&s), "in_force");
    assert_eq!(stale(&agent), 0.0);
}

/// The real GeoLite2 test database was built in 2019: with `geoip.max_age`
/// above its age it is fine, with 35 days it is too old, and `status`
/// (JSON and text), `check` and the metrics all say so after the reload
/// that lowers the limit. A limit that cannot be right is refused with the
/// key named, and the one in force stays.
#[test]
fn a_database_older_than_geoip_max_age_is_reported_too_old() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let real = real_geoip("GeoLite2-Country.mmdb");
    skip_unless!(
        real.is_some(),
        "no real GeoLite2 database: run `cargo xtask geoip fetch`"
    );
    let real = real.unwrap_or_default();
    let s = Scenario::new();
    let base = s.config("enforce", "allow", std::slice::from_ref(&real));
    let with_max_age =
        |age: &str| base.replace("[geoip]\n", &format!("[geoip]\nmax_age = \"{age}\"\n"));
    let agent = s.start(&with_max_age("3650d"));
    let config_path = s.dir.path().join("enforcer.toml");
    let mmdb = |st: &serde_json::Value| -> serde_json::Value {
        st["agent"]["databases"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["path"].as_str() == Some(&real.display().to_string()))
            .cloned()
            .unwrap_or_else(|| panic!("no entry for the GeoLite2 database in {st:#}"))
    };
    let too_old = |agent: &Agent| {
        agent.scrape().sum(
            "enforcer_geoip_database_too_old",
            &[("database", "GeoLite2-Country.mmdb")],
        )
    };
    let d = mmdb(&s.status());
    assert_eq!(d["too_old"], false, "{d:#}");
    assert_eq!(d["max_age_seconds"], 3650 * 86_400, "{d:#}");
    assert_eq!(too_old(&agent), 0.0);
    assert_eq!(
        agent.scrape().sum("enforcer_geoip_max_age_seconds", &[]),
        (3650 * 86_400) as f64
    );
    // The CSV source has no build time: never judged.
    let csv = s.status()["agent"]["databases"][0].clone();
    assert!(csv["too_old"].is_null(), "{csv:#}");

    std::fs::write(&config_path, with_max_age("35d")).expect("rewrite the config");
    let out = enforcer_at(&s.control_socket(), &["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = mmdb(&s.status());
    assert_eq!(d["too_old"], true, "{d:#}");
    assert!(
        d["age_seconds"].as_u64().unwrap_or(0) > 35 * 86_400,
        "{d:#}"
    );
    assert_eq!(too_old(&agent), 1.0);
    let text =
        String::from_utf8_lossy(&enforcer_at(&s.control_socket(), &["status"]).stdout).into_owned();
    assert!(
        text.contains("TOO OLD: built") && text.contains("geoip.max_age is 35 days"),
        "{text}"
    );
    let check = enforcer_at(&s.control_socket(), &["check", "8.8.8.8"]);
    let check = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(check.contains("TOO OLD"), "{check}");

    // Five minutes cannot be a database's lifetime: refused, 35d stays.
    std::fs::write(&config_path, with_max_age("5m")).expect("rewrite the config");
    let out = enforcer_at(&s.control_socket(), &["reload"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && err.contains("geoip.max_age \"5m\""),
        "{err}"
    );
    assert_eq!(mmdb(&s.status())["max_age_seconds"], 35 * 86_400);
}
