//! `enforcer whatif`: a real agent records an observe run from two scope
//! entries to peers of four countries (and one no database locates); a
//! candidate config that approves one refused country, with a candidate
//! database that moves one peer's prefix and locates another, is replayed
//! over the events file and the audit log. whatif must report exactly the
//! destinations whose approved/refused class changes, which this test
//! computes on its own from the peers' addresses, the databases it wrote
//! and the approved lists (a model, not the agent's code). `--current`
//! (the before side from a config) shows the other direction. Bad input:
//! a missing file, a malformed line (counted with file:line, skipped), a
//! bad candidate config (named).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::{IpAddr, SocketAddr},
    os::unix::fs::MetadataExt as _,
    path::Path,
    time::{Duration, Instant},
};

use enforcer_tests::{
    agent::enforcer,
    events, privileged,
    probe::{Proto, Runner},
    sandbox::PORT,
    scenario::*,
    skip_unless,
};
use serde_json::Value;

/// The recording's database: the sandbox peers in four places, one
/// (UNKNOWN_V6) in none.
fn recorded_db() -> Vec<(IpAddr, &'static str)> {
    vec![
        (IpAddr::V4(APPROVED_V4), "DE"),
        (IpAddr::V4(DENIED_V4), "US"),
        (IpAddr::V4(UNKNOWN_V4), "CN"),
        (IpAddr::V6(APPROVED_V6), "DE"),
        (IpAddr::V6(DENIED_V6), "US"),
    ]
}

/// The candidate database: DENIED_V4's prefix moves to CN, UNKNOWN_V6 is
/// now located in FR.
fn candidate_db() -> Vec<(IpAddr, &'static str)> {
    vec![
        (IpAddr::V4(APPROVED_V4), "DE"),
        (IpAddr::V4(DENIED_V4), "CN"),
        (IpAddr::V4(UNKNOWN_V4), "CN"),
        (IpAddr::V6(APPROVED_V6), "DE"),
        (IpAddr::V6(DENIED_V6), "US"),
        (IpAddr::V6(UNKNOWN_V6), "FR"),
    ]
}

fn csv(db: &[(IpAddr, &str)]) -> String {
    let mut s = String::from("cidr,country\n");
    for (ip, c) in db {
        let len = if ip.is_ipv4() { 32 } else { 128 };
        s.push_str(&format!("{ip}/{len},{c}\n"));
    }
    s
}

/// The model: approved or not, from a database and an approved list
/// (`None` in the list stands for `unknown = "allow"`).
fn approved(db: &[(IpAddr, &str)], list: &[Option<&str>], ip: IpAddr) -> bool {
    let country = db.iter().find(|(a, _)| *a == ip).map(|(_, c)| *c);
    list.contains(&country)
}

/// The recording's policy: EEA approved (of the countries here: DE, FR),
/// unknown denied.
const RECORDED: &[Option<&str>] = &[Some("DE"), Some("FR")];
/// The candidate: DE, FR and US approved, unknown denied.
const CANDIDATE: &[Option<&str>] = &[Some("DE"), Some("FR"), Some("US")];
/// A "current" policy that approves CN too (the recording is older).
const CURRENT: &[Option<&str>] = &[Some("DE"), Some("FR"), Some("CN")];

/// A standalone config (for whatif only: nothing is loaded).
fn config(mode: &str, approved: &[&str], db: &Path) -> String {
    format!(
        "mode = \"{mode}\"\napproved = [{}]\nunknown = \"deny\"\n\
         [geoip]\nsources = [{:?}]\n[scope]\nhost_wide = true\n",
        approved
            .iter()
            .map(|c| format!("{c:?}"))
            .collect::<Vec<_>>()
            .join(", "),
        db.display().to_string()
    )
}

fn whatif(args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["whatif"];
    all.extend_from_slice(args);
    let out = enforcer(&all);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn whatif_json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend_from_slice(&["-o", "json"]);
    let (ok, out, err) = whatif(&all);
    assert!(ok, "whatif {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("whatif JSON: {e}: {out}"))
}

/// A destination and its scope entry (None: not recorded).
type Key = (String, Option<String>);

fn scope(row: &Value) -> Option<String> {
    row["scope"].as_str().map(str::to_owned)
}

/// `(dst, scope)` of the listed rows.
fn keys(rows: &Value) -> BTreeSet<Key> {
    rows.as_array()
        .expect("rows")
        .iter()
        .map(|r| (r["dst"].as_str().expect("dst").to_owned(), scope(r)))
        .collect()
}

fn wait_covered(s: &Scenario, cgroups: &[&Path]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = s.status();
        let covered = cgroups.iter().all(|cg| {
            let id = fs::metadata(cg).expect("stat the cgroup").ino();
            st["agent"]["coverage"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| {
                    e["scope"] == cg.display().to_string()
                        && e["state"] == "covered"
                        && e["id"] == id
                })
        });
        if covered {
            return;
        }
        assert!(Instant::now() < deadline, "not covered: {st:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn reports_exactly_the_destinations_whose_verdict_changes() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    fs::write(&s.db, csv(&recorded_db())).expect("write the recording's database");
    let [a, b] = ["svc-a", "svc-b"].map(|n| s.sb.cgroup.join(n));
    for cg in [&a, &b] {
        fs::create_dir(cg).expect("create a service cgroup");
    }
    let (la, lb) = (a.display().to_string(), b.display().to_string());
    let mut agent = s.start(&s.config_scoped(
        "observe",
        "deny",
        &[],
        &[&a, &b],
        "",
        &s.events_table(1000, 1000),
    ));
    wait_covered(&s, &[&a, &b]);

    // The traffic: (scope cgroup, peer, connections).
    let traffic: Vec<(&Path, &str, IpAddr, u32)> = vec![
        (&a, &la, IpAddr::V4(DENIED_V4), 2),
        (&a, &la, IpAddr::V4(UNKNOWN_V4), 1),
        (&a, &la, IpAddr::V6(DENIED_V6), 1),
        (&a, &la, IpAddr::V4(APPROVED_V4), 1),
        (&b, &lb, IpAddr::V4(DENIED_V4), 1),
        (&b, &lb, IpAddr::V6(UNKNOWN_V6), 2),
        (&b, &lb, IpAddr::V6(APPROVED_V6), 1),
    ];
    for (cg, _, ip, n) in &traffic {
        let got = Runner::new(&s.sb).in_cgroup(Some(cg)).connect(
            Proto::Tcp,
            SocketAddr::new(*ip, PORT),
            *n,
        );
        // Observe: every connection goes through.
        assert!(
            got.len() == *n as usize && got.iter().all(|x| !x.refused()),
            "{ip}: {got:?}"
        );
    }
    // The model of the recording: events for what the policy refuses.
    let rdb = recorded_db();
    let mut recorded: BTreeMap<Key, u64> = BTreeMap::new();
    for (_, label, ip, n) in &traffic {
        if !approved(&rdb, RECORDED, *ip) {
            *recorded
                .entry((ip.to_string(), Some(label.to_string())))
                .or_default() += u64::from(*n);
        }
    }
    let total: u64 = recorded.values().sum();
    let file = s.events_file();
    let seen = events::wait_for(&file, "the refused connections' events", |e| {
        e.len() as u64 >= total
    });
    assert_eq!(seen.len() as u64, total, "{seen:#?}");
    // whatif's userspace decision agrees with the kernel's tables (read
    // back by `check`'s explainer) for the recorded config, on every peer,
    // an IPv4-mapped one, an unlocated one and a built-in range.
    let decider = enforcer::whatif::Decider::new(
        enforcer::config::Config::load(&agent.config).expect("the recording's config"),
    )
    .expect("compile the recording's config");
    let explainer =
        enforcer::datapath::explain::Explainer::open(&s.pin_dir).expect("open the pins");
    let mut probes: Vec<IpAddr> = SERVER_V4_ALL.iter().map(|a| IpAddr::V4(*a)).collect();
    probes.extend(SERVER_V6_ALL.iter().map(|a| IpAddr::V6(*a)));
    probes.extend([mapped(DENIED_V4), "198.18.0.1".parse().expect("ip")]);
    probes.push("10.0.0.1".parse().expect("ip"));
    for ip in probes {
        let k = explainer.explain(ip, None).expect("explain");
        let u = decider.decide(ip, None);
        assert_eq!(
            (u.outcome, u.country.map(|c| c.to_string()), u.source),
            (k.outcome, k.country.map(|c| c.to_string()), k.source),
            "{ip}: whatif's decision against the kernel's"
        );
    }
    drop(explainer);
    agent.stop();

    // The candidate: US approved, enforce, and the candidate database.
    let cand_db = s.dir.path().join("candidate-geo.csv");
    let cdb = candidate_db();
    fs::write(&cand_db, csv(&cdb)).expect("write the candidate database");
    let cand = s.dir.path().join("candidate.toml");
    fs::write(&cand, config("enforce", &["DE", "FR", "US"], &cand_db)).expect("write");
    let cand_s = cand.to_str().expect("utf-8 path");
    let file_s = file.to_str().expect("utf-8 path");

    // Expected, from the model: before = recorded (refused), after = the
    // candidate's policy over the candidate database.
    let expect_changed: BTreeSet<Key> = recorded
        .keys()
        .filter(|(ip, _)| {
            let ip: IpAddr = ip.parse().expect("ip");
            approved(&rdb, RECORDED, ip) != approved(&cdb, CANDIDATE, ip)
        })
        .cloned()
        .collect();
    // The scenario is worth something only if it has both kinds.
    assert!(!expect_changed.is_empty() && expect_changed.len() < recorded.len());

    let v = whatif_json(&["--config", cand_s, "--events", file_s]);
    assert_eq!(keys(&v["changed"]), expect_changed, "{v:#}");
    let unchanged: BTreeSet<_> = recorded
        .keys()
        .filter(|k| !expect_changed.contains(*k))
        .cloned()
        .collect();
    assert_eq!(keys(&v["unchanged"]), unchanged, "{v:#}");
    let t = &v["totals"];
    assert_eq!(t["destinations_seen"], recorded.len() as u64, "{v:#}");
    assert_eq!(t["changed"], expect_changed.len() as u64, "{v:#}");
    assert_eq!(t["refused_to_approved"], expect_changed.len() as u64);
    assert_eq!(t["approved_to_refused"], 0);
    assert_eq!(t["unchanged"], unchanged.len() as u64);
    assert_eq!(t["events"], total);
    assert_eq!(t["unreadable_lines"], 0);
    // Those staying refused go from would_deny to denied (enforce).
    assert_eq!(v["mode"]["candidate"], "enforce");
    assert_eq!(v["mode"]["recorded"], serde_json::json!(["observe"]));
    assert_eq!(
        v["mode"]["refused_destinations_changing_mode"],
        unchanged.len() as u64
    );
    assert_eq!(v["allowed_traffic_covered"], false);
    // Groups: by the candidate's country and the scope, with counts.
    let mut expect_groups: BTreeMap<Key, (u64, u64)> = BTreeMap::new();
    for k in &expect_changed {
        let ip: IpAddr = k.0.parse().expect("ip");
        let country = cdb
            .iter()
            .find(|(a, _)| *a == ip)
            .map_or("unknown", |(_, c)| *c);
        let g = expect_groups
            .entry((country.to_owned(), k.1.clone()))
            .or_default();
        g.0 += 1;
        g.1 += recorded[k];
    }
    let got_groups: BTreeMap<Key, (u64, u64)> = v["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| {
            assert_eq!(g["from"], "refused");
            assert_eq!(g["to"], "approved");
            (
                (g["country"].as_str().expect("country").to_owned(), scope(g)),
                (
                    g["destinations"].as_u64().expect("n"),
                    g["events"].as_u64().expect("n"),
                ),
            )
        })
        .collect();
    assert_eq!(got_groups, expect_groups, "{v:#}");
    // Every changed row says its events and the recorded verdict.
    for r in v["changed"].as_array().expect("rows") {
        let k = (r["dst"].as_str().expect("dst").to_owned(), scope(r));
        assert_eq!(r["events"], recorded[&k], "{r:#}");
        assert_eq!(r["recorded"]["would_deny"], recorded[&k], "{r:#}");
        assert_eq!(r["candidate_verdict"], "allowed", "{r:#}");
    }

    // Text: the changed destinations are listed, the others are not.
    let (ok, text, err) = whatif(&["--config", cand_s, "--events", file_s]);
    assert!(ok, "{err}");
    let listed = text
        .split_once("changed destinations")
        .map(|(_, l)| l)
        .unwrap_or_else(|| panic!("no list in:\n{text}"));
    for (ip, _) in &expect_changed {
        assert!(
            listed.contains(&format!("  {ip}  refused -> approved")),
            "{ip}:\n{text}"
        );
    }
    for (ip, _) in &unchanged {
        assert!(
            !listed.contains(&format!("  {ip}  ")),
            "{ip} listed:\n{text}"
        );
    }
    assert!(text.contains("allowed traffic is not covered"), "{text}");

    // --source: the candidate policy over the recording's database, with
    // the candidate database given on the command line in its place,
    // answers the same; without --source it answers for the recording's
    // database (DENIED_V4 is still US there, and US is now approved).
    let policy_only = s.dir.path().join("policy-only.toml");
    fs::write(&policy_only, config("enforce", &["DE", "FR", "US"], &s.db)).expect("write");
    let po = policy_only.to_str().expect("utf-8");
    let cand_db_s = cand_db.to_str().expect("utf-8");
    let v = whatif_json(&["--config", po, "--source", cand_db_s, "--events", file_s]);
    assert_eq!(keys(&v["changed"]), expect_changed, "{v:#}");
    let v = whatif_json(&["--config", po, "--events", file_s]);
    let expect_old_db: BTreeSet<Key> = recorded
        .keys()
        .filter(|(ip, _)| {
            let ip: IpAddr = ip.parse().expect("ip");
            approved(&rdb, RECORDED, ip) != approved(&rdb, CANDIDATE, ip)
        })
        .cloned()
        .collect();
    assert_ne!(expect_old_db, expect_changed, "the database move matters");
    assert_eq!(keys(&v["changed"]), expect_old_db, "{v:#}");

    // The audit log carries the same events (without their scope entry).
    let audit = s.audit_log();
    let v = whatif_json(&[
        "--config",
        cand_s,
        "--audit",
        audit.to_str().expect("utf-8"),
    ]);
    let by_dst = |set: &BTreeSet<Key>| -> BTreeSet<String> {
        set.iter().map(|(ip, _)| ip.clone()).collect()
    };
    let got: BTreeSet<String> = by_dst(&keys(&v["changed"]));
    assert_eq!(got, by_dst(&expect_changed), "{v:#}");
    assert!(
        v["changed"]
            .as_array()
            .expect("rows")
            .iter()
            .all(|r| r["scope"].is_null()),
        "{v:#}"
    );
    assert_eq!(v["totals"]["events"], total, "{v:#}");

    // --current: the before side from a config that approves CN; the
    // candidate refuses CN, so CN peers go approved -> refused.
    let current = s.dir.path().join("current.toml");
    fs::write(&current, config("observe", &["DE", "FR", "CN"], &s.db)).expect("write");
    let v = whatif_json(&[
        "--config",
        cand_s,
        "--events",
        file_s,
        "--current",
        current.to_str().expect("utf-8"),
    ]);
    let expect: BTreeSet<Key> = recorded
        .keys()
        .filter(|(ip, _)| {
            let ip: IpAddr = ip.parse().expect("ip");
            approved(&rdb, CURRENT, ip) != approved(&cdb, CANDIDATE, ip)
        })
        .cloned()
        .collect();
    assert_eq!(keys(&v["changed"]), expect, "{v:#}");
    let a2r = expect
        .iter()
        .filter(|(ip, _)| approved(&rdb, CURRENT, ip.parse().expect("ip")))
        .count();
    assert!(a2r > 0, "the scenario moves something approved -> refused");
    assert_eq!(v["totals"]["approved_to_refused"], a2r as u64, "{v:#}");

    // Bad input. A malformed line is counted with its file and line, and
    // skipped; the answer is otherwise the same.
    let broken = s.dir.path().join("broken.jsonl");
    let mut text = fs::read_to_string(&file).expect("read events");
    text.push_str("{\"dst\": \"not an address\", \"verdict\": \"denied\"}\n{truncated\n");
    fs::write(&broken, &text).expect("write");
    let v = whatif_json(&[
        "--config",
        cand_s,
        "--events",
        broken.to_str().expect("utf-8"),
    ]);
    assert_eq!(v["totals"]["unreadable_lines"], 2, "{v:#}");
    let lines: Vec<(String, u64)> = v["unreadable"]
        .as_array()
        .expect("unreadable")
        .iter()
        .map(|u| {
            (
                u["file"].as_str().expect("file").to_owned(),
                u["line"].as_u64().expect("line"),
            )
        })
        .collect();
    let b = broken.display().to_string();
    assert_eq!(lines, vec![(b.clone(), total + 1), (b, total + 2)], "{v:#}");
    assert_eq!(keys(&v["changed"]), expect_changed, "{v:#}");

    // A missing file: an error naming it.
    let missing = s.dir.path().join("no-such-events.jsonl");
    let (ok, _, err) = whatif(&[
        "--config",
        cand_s,
        "--events",
        missing.to_str().expect("utf-8"),
    ]);
    assert!(!ok && err.contains("no-such-events.jsonl"), "{err}");
    // A bad candidate config: an error naming it and what is wrong.
    let bad = s.dir.path().join("bad-candidate.toml");
    fs::write(&bad, "mode = \"sideways\"\n").expect("write");
    let (ok, _, err) = whatif(&["--config", bad.to_str().expect("utf-8"), "--events", file_s]);
    assert!(
        !ok && err.contains("bad-candidate.toml") && err.contains("mode"),
        "{err}"
    );
    // Nothing to replay.
    let (ok, _, err) = whatif(&["--config", cand_s]);
    assert!(!ok && err.contains("--events"), "{err}");
}
