//! GeoIP sources layered over the real database (issue 19): an overlay
//! moves part of the real database's address space to another country or
//! to the anycast class, the kernel's verdicts follow, the `anycast` policy
//! decides the class, and `enforcer check` and the events name the source
//! (file and kind) that located each address.
//!
//! The addresses are real ones the real database locates in a
//! non-approved country (the United States), chosen from the database
//! itself. The sandbox's client namespace has no route to them, so
//! connect() answers EPERM when the datapath refuses and ENETUNREACH when
//! it lets through: the kernel's verdict, without a packet sent.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use enforcer_tests::{
    agent::{Agent, enforcer_at},
    events, privileged,
    probe::{Attempt, Proto, attempt},
    scenario::*,
    skip_unless,
};
use geoip::{CountryField, GeoTable, Kind, Options, SourceSpec};
use serde_json::Value;

/// The file `name` from `cargo xtask geoip fetch`, or skip (fail in CI).
macro_rules! real_or_skip {
    ($name:expr) => {{
        let f = real_geoip($name);
        skip_unless!(
            f.is_some(),
            "EE_GEOIP_DIR has no {} (run `cargo xtask geoip fetch`)",
            $name
        );
        f.expect("checked")
    }};
}

/// The real database, loaded as the agent will (with `field`).
fn real_table(real: &Path, field: CountryField) -> GeoTable {
    SourceSpec {
        path: real.to_owned(),
        options: Options {
            kind: Kind::Auto,
            country_field: field,
        },
    }
    .load()
    .expect("load the real database")
    .table
}

/// `n` addresses, each the second address of a different IPv4 network
/// the real database locates in `country` (networks of at least 256
/// addresses, outside the ranges the agent never geolocates).
fn addresses_in(table: &GeoTable, country: &str, n: usize) -> Vec<Ipv4Addr> {
    let found: Vec<Ipv4Addr> = table
        .v4
        .prefixes()
        .filter(|(net, c)| c.as_str() == country && net.prefix() <= 24)
        .map(|(net, _)| Ipv4Addr::from(u32::from(net.network()) + 1))
        .filter(|a| !(a.is_private() || a.is_loopback() || a.is_link_local() || a.is_multicast()))
        .take(n)
        .collect();
    assert_eq!(
        found.len(),
        n,
        "the real database has {n} {country} networks"
    );
    found
}

fn let_through(a: &Attempt) -> bool {
    !a.ok && a.errno == Some(libc::ENETUNREACH)
}

/// The kernel's verdict on `ip`: "allowed" (routing answered) or
/// "refused" (EPERM); panics on anything else.
fn verdict(s: &Scenario, ip: Ipv4Addr) -> &'static str {
    let a = attempt(&s.sb, Proto::Tcp, IpAddr::V4(ip));
    if a.refused() {
        "refused"
    } else if let_through(&a) {
        "allowed"
    } else {
        panic!("{ip}: neither EPERM nor ENETUNREACH: {a:?}")
    }
}

/// `enforcer check --json` through the agent: one object per address.
fn check(s: &Scenario, ips: &[Ipv4Addr]) -> Vec<Value> {
    let mut args = vec!["check".to_owned(), "--json".to_owned()];
    args.extend(ips.iter().map(ToString::to_string));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = enforcer_at(&s.control_socket(), &args);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("check JSON line"))
        .collect()
}

/// `enforcer check` as text, for the note and for people.
fn check_text(s: &Scenario, ip: Ipv4Addr) -> String {
    let out = enforcer_at(&s.control_socket(), &["check", &ip.to_string()]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The config of the scenario with `sources` (TOML array items; none: only
/// the database) before the scenario's own test database and `real` last,
/// plus `top` keys.
fn config(s: &Scenario, mode: &str, top: &str, sources: &[String], real: &Path) -> String {
    let base = s.config_with(
        mode,
        "allow",
        &[real.to_owned()],
        top,
        &s.events_table(1000, 1000),
    );
    if sources.is_empty() {
        return base;
    }
    let mut first = sources.join(", ");
    first.push_str(", ");
    base.replacen("sources = [", &format!("sources = [{first}"), 1)
}

fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// The `located_by` of `check`'s answer.
fn located_by(answer: &Value) -> (String, String) {
    (
        answer["located_by"]["path"]
            .as_str()
            .unwrap_or("-")
            .to_owned(),
        answer["located_by"]["kind"]
            .as_str()
            .unwrap_or("-")
            .to_owned(),
    )
}

/// The events for `dst`, waiting for at least one.
fn events_for(s: &Scenario, dst: Ipv4Addr) -> Vec<Value> {
    let dst = dst.to_string();
    let all = events::wait_for(&s.events_file(), &format!("an event for {dst}"), |e| {
        e.iter().any(|v| v["dst"].as_str() == Some(&dst))
    });
    all.into_iter()
        .filter(|v| v["dst"].as_str() == Some(&dst))
        .collect()
}

fn reload(s: &Scenario, agent: &Agent, config: &str) {
    fs::write(&agent.config, config).expect("rewrite config");
    let out = enforcer_at(&s.control_socket(), &["reload"]);
    assert!(out.status.success(), "reload: {out:?}");
}

/// A CSV overlay over the real database: one US network moved to DE,
/// another marked anycast (`XA`). The kernel follows, `anycast` decides
/// the class (deny, allow, unknown under each `unknown`), and check and
/// the events name the overlay or the real database as what located each.
#[test]
fn an_overlay_moves_real_space_and_the_anycast_policy_decides_its_class() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let real = real_or_skip!("GeoLite2-Country.mmdb");
    let table = real_table(&real, CountryField::Country);
    let us = addresses_in(&table, "US", 3);
    let (moved, anycast, untouched) = (us[0], us[1], us[2]);
    let s = Scenario::new();
    let overlay = s.dir.path().join("overlay.csv");
    fs::write(
        &overlay,
        format!("# operator overlay\n{moved}/32,de\n{anycast}/32,XA\n"),
    )
    .expect("write overlay");
    let sources = [format!(
        "{{ path = {}, kind = \"csv\" }}",
        toml_path(&overlay)
    )];

    // Without the overlay all three are US: refused.
    let without = config(&s, "enforce", "", &[], &real);
    let agent = s.start(&without);
    for ip in &us {
        assert_eq!(
            verdict(&s, *ip),
            "refused",
            "{ip} is US in the real database"
        );
    }

    // With it (anycast = deny, the default).
    reload(&s, &agent, &config(&s, "enforce", "", &sources, &real));
    assert_eq!(verdict(&s, moved), "allowed", "{moved} moved to DE");
    assert_eq!(verdict(&s, anycast), "refused", "{anycast}: anycast = deny");
    assert_eq!(verdict(&s, untouched), "refused", "{untouched} still US");

    let answers = check(&s, &[moved, anycast, untouched]);
    let overlay_by = (overlay.display().to_string(), "csv".to_owned());
    let real_by = (real.display().to_string(), "mmdb-maxmind".to_owned());
    assert_eq!(answers[0]["country"], "DE", "{:#}", answers[0]);
    assert_eq!(located_by(&answers[0]), overlay_by);
    assert_eq!(answers[1]["country"], "XA", "{:#}", answers[1]);
    assert_eq!(answers[1]["outcome"], "denied");
    assert_eq!(located_by(&answers[1]), overlay_by);
    assert_eq!(answers[2]["country"], "US");
    assert_eq!(located_by(&answers[2]), real_by);
    let text = check_text(&s, anycast);
    eprintln!("{text}");
    assert!(text.contains("XA (anycast class"), "{text}");
    assert!(
        text.contains(&format!("located  by {} (csv)", overlay.display())),
        "{text}"
    );

    // The events of the refusals name their source too (the anycast
    // address was also refused as US before the overlay: those events name
    // the real database).
    for (ip, country, by) in [
        (anycast, "XA", &overlay_by),
        (anycast, "US", &real_by),
        (untouched, "US", &real_by),
    ] {
        let evs: Vec<Value> = events_for(&s, ip)
            .into_iter()
            .filter(|e| e["country"] == country)
            .collect();
        assert!(!evs.is_empty(), "an event for {ip} as {country}");
        for e in &evs {
            assert_eq!(e["verdict"], "denied", "{e}");
            assert_eq!(e["located_by"]["path"].as_str(), Some(by.0.as_str()), "{e}");
            assert_eq!(e["located_by"]["kind"].as_str(), Some(by.1.as_str()), "{e}");
        }
    }

    // anycast = allow lets the class through; unknown follows `unknown`.
    reload(
        &s,
        &agent,
        &config(&s, "enforce", "anycast = \"allow\"", &sources, &real),
    );
    assert_eq!(verdict(&s, anycast), "allowed", "anycast = allow");
    assert_eq!(verdict(&s, untouched), "refused");
    reload(
        &s,
        &agent,
        &config(&s, "enforce", "anycast = \"unknown\"", &sources, &real),
    );
    assert_eq!(
        verdict(&s, anycast),
        "allowed",
        "anycast = unknown, unknown = allow"
    );
    let deny_unknown = config(&s, "enforce", "anycast = \"unknown\"", &sources, &real)
        .replace("unknown = \"allow\"", "unknown = \"deny\"");
    reload(&s, &agent, &deny_unknown);
    assert_eq!(
        verdict(&s, anycast),
        "refused",
        "anycast = unknown, unknown = deny"
    );
    assert_eq!(verdict(&s, moved), "allowed");

    let m = agent.scrape();
    assert!(
        m.sum(
            "enforcer_connections_total",
            &[("country", "XA"), ("verdict", "denied")]
        ) >= 2.0,
        "{}",
        m.text
    );
    drop(agent);
}

/// AWS's published `ip-ranges.json` layered over GeoLite2: an
/// eu-central-1 address GeoLite2 locates in the US is in Germany (allowed),
/// a CloudFront `GLOBAL` one is the anycast class (refused under the
/// default `anycast = "deny"`, allowed with `allow`); check and events
/// name the AWS file.
#[test]
fn a_cloud_range_file_moves_an_eu_region_and_a_global_range() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let real = real_or_skip!("GeoLite2-Country.mmdb");
    let aws = real_or_skip!("aws-ip-ranges.json");
    let table = real_table(&real, CountryField::Country);
    let frankfurt: Ipv4Addr = "3.5.136.1".parse().expect("ip");
    let cloudfront: Ipv4Addr = "54.192.0.1".parse().expect("ip");
    let at = |ip: Ipv4Addr| table.lookup(IpAddr::V4(ip)).map(|(_, c)| c.to_string());
    assert_eq!(
        at(frankfurt).as_deref(),
        Some("US"),
        "GeoLite2 (2019) says US"
    );
    assert_eq!(
        at(cloudfront).as_deref(),
        Some("US"),
        "GeoLite2 (2019) says US"
    );

    let s = Scenario::new();
    let agent = s.start(&config(&s, "enforce", "", &[], &real));
    assert_eq!(verdict(&s, frankfurt), "refused");
    assert_eq!(verdict(&s, cloudfront), "refused");

    let sources = [format!("{{ path = {}, kind = \"aws\" }}", toml_path(&aws))];
    reload(&s, &agent, &config(&s, "enforce", "", &sources, &real));
    assert_eq!(verdict(&s, frankfurt), "allowed", "eu-central-1 is DE");
    assert_eq!(verdict(&s, cloudfront), "refused", "GLOBAL: anycast = deny");
    let answers = check(&s, &[frankfurt, cloudfront]);
    let aws_by = (aws.display().to_string(), "aws".to_owned());
    assert_eq!(answers[0]["country"], "DE", "{:#}", answers[0]);
    assert_eq!(located_by(&answers[0]), aws_by);
    assert_eq!(answers[1]["country"], "XA", "{:#}", answers[1]);
    assert_eq!(located_by(&answers[1]), aws_by);
    eprintln!("{}", check_text(&s, frankfurt));
    let evs: Vec<Value> = events_for(&s, cloudfront)
        .into_iter()
        .filter(|e| e["country"] == "XA")
        .collect();
    assert!(!evs.is_empty());
    for e in &evs {
        assert_eq!(e["located_by"]["kind"], "aws", "{e}");
        assert_eq!(
            e["located_by"]["path"].as_str(),
            Some(aws_by.0.as_str()),
            "{e}"
        );
    }
    reload(
        &s,
        &agent,
        &config(&s, "enforce", "anycast = \"allow\"", &sources, &real),
    );
    assert_eq!(
        verdict(&s, cloudfront),
        "allowed",
        "GLOBAL: anycast = allow"
    );
    drop(agent);
}

/// Cloudflare's published geofeed layered over GeoLite2: a network the
/// feed puts in Germany and GeoLite2 in the US is allowed, one the feed
/// puts in the US and GeoLite2 in Germany is refused; check and events
/// name the feed.
#[test]
fn a_geofeed_moves_what_it_lists() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let real = real_or_skip!("GeoLite2-Country.mmdb");
    let feed = real_or_skip!("geofeed-cloudflare.csv");
    let table = real_table(&real, CountryField::Country);
    let feed_table = SourceSpec {
        path: feed.clone(),
        options: Options {
            kind: Kind::Geofeed,
            country_field: CountryField::Country,
        },
    }
    .load()
    .expect("load the geofeed")
    .table;
    // The first IPv4 network of each kind, from the data itself.
    let pick = |feed_says: &str, db_says: &str| -> Ipv4Addr {
        feed_table
            .v4
            .prefixes()
            .filter(|(_, c)| c.as_str() == feed_says)
            .map(|(net, _)| Ipv4Addr::from(u32::from(net.network()) + 1))
            .find(|a| {
                table
                    .lookup(IpAddr::V4(*a))
                    .map(|(_, c)| c.to_string())
                    .as_deref()
                    == Some(db_says)
            })
            .unwrap_or_else(|| {
                panic!("no network the feed says {feed_says} and GeoLite2 {db_says}")
            })
    };
    let to_de = pick("DE", "US");
    let to_us = pick("US", "DE");
    eprintln!("{to_de}: US in GeoLite2, DE in the feed; {to_us}: DE in GeoLite2, US in the feed");
    let s = Scenario::new();
    let agent = s.start(&config(&s, "enforce", "", &[], &real));
    assert_eq!(verdict(&s, to_de), "refused", "{to_de}: US in GeoLite2");
    assert_eq!(verdict(&s, to_us), "allowed", "{to_us}: DE in GeoLite2");
    let sources = [format!(
        "{{ path = {}, kind = \"geofeed\" }}",
        toml_path(&feed)
    )];
    reload(&s, &agent, &config(&s, "enforce", "", &sources, &real));
    assert_eq!(verdict(&s, to_de), "allowed", "{to_de}: DE in the feed");
    assert_eq!(verdict(&s, to_us), "refused", "{to_us}: US in the feed");
    let answers = check(&s, &[to_de, to_us]);
    let feed_by = (feed.display().to_string(), "geofeed".to_owned());
    assert_eq!(answers[0]["country"], "DE");
    assert_eq!(answers[1]["country"], "US");
    assert_eq!(located_by(&answers[0]), feed_by);
    assert_eq!(located_by(&answers[1]), feed_by);
    let evs: Vec<Value> = events_for(&s, to_us)
        .into_iter()
        .filter(|e| e["verdict"] == "denied")
        .collect();
    assert!(!evs.is_empty());
    for e in &evs {
        assert_eq!(e["located_by"]["kind"], "geofeed", "{e}");
    }
    eprintln!("{}", check_text(&s, to_us));
    drop(agent);
}
