//! The offline commands, which touch no kernel: `enforcer geoip inspect`,
//! `enforcer geoip lookup`, `enforcer config check`. No root needed.

use std::fs;

use enforcer_tests::{agent::enforcer, scenario::TEST_DB_CSV};

#[test]
fn geoip_inspect_counts_prefixes_per_family_and_country() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("db.csv");
    // Two adjacent /25s in one country aggregate into one /24.
    fs::write(
        &db,
        format!("{TEST_DB_CSV}198.18.0.0/25,FR\n198.18.0.128/25,FR\n"),
    )
    .expect("write db");
    let out = enforcer(&["geoip", "inspect", "--json", &db.display().to_string()]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["networks"]["ipv4"], 4, "{v:#}");
    assert_eq!(v["prefixes"]["ipv4"], 3, "{v:#}");
    assert_eq!(v["prefixes"]["ipv6"], 2, "{v:#}");
    assert_eq!(v["countries"]["FR"]["ipv4"], 1, "{v:#}");
    assert_eq!(v["countries"]["DE"]["ipv6"], 1, "{v:#}");
    assert!(
        (v["aggregation_ratio"]["ipv4"].as_f64().expect("ratio") - 4.0 / 3.0).abs() < 1e-9,
        "{v:#}"
    );
    let text = enforcer(&["geoip", "inspect", &db.display().to_string()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("countries: 3"), "{text}");

    let out = enforcer(&[
        "geoip",
        "lookup",
        "--source",
        &db.display().to_string(),
        "198.18.0.200",
        "2001:db8:1::20",
        "192.0.2.1",
    ]);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        lines[0].starts_with("198.18.0.200\tFR\t198.18.0.0/24"),
        "{lines:?}"
    );
    assert!(lines[1].starts_with("2001:db8:1::20\tUS"), "{lines:?}");
    assert!(lines[2].starts_with("192.0.2.1\tunknown"), "{lines:?}");

    let bad = enforcer(&["geoip", "inspect", "/nonexistent/x.mmdb"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("/nonexistent/x.mmdb"),
        "{bad:?}"
    );
}
