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

/// The config of the scenario with `sources` (TOML array items) before the
/// scenario's own test database and `real` last, plus `top` keys.
fn config(s: &Scenario, mode: &str, top: &str, sources: &[String], real: &Path) -> String {
    let base = s.config_with(
        mode,
        "allow",
        &[real.to_owned()],
        top,
        &s.events_table(1000, 1000),
    );
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
    let real = real_geoip("GeoLite2-Country.mmdb");
    skip_unless!(
        real.is_some(),
        "EE_GEOIP_DIR has no GeoLite2-Country.mmdb (run `cargo xtask geoip fetch`)"
    );
    let real = real.expect("checked");
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
    let without = s.config_with(
        "enforce",
        "allow",
        std::slice::from_ref(&real),
        "",
        &s.events_table(1000, 1000),
    );
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
