//! Config exceptions and site networks, and the order the datapath applies
//! them in: deny exception, allow exception, site network, built-in ranges,
//! GeoIP, unknown policy. Each assertion names the pair of classes it
//! orders, and fails if those two were swapped.
//!
//! With no route for 10.0.0.0/8 in the client namespace, connect() answers
//! EPERM when the datapath refuses and ENETUNREACH when it lets through: the
//! kernel's verdict on an address, without a packet sent.

use std::net::{IpAddr, SocketAddr};

use enforcer_tests::{
    privileged,
    probe::{Attempt, Proto, attempt, attempts_to},
    scenario::*,
    skip_unless,
};

/// One TCP attempt from the client cgroup to `ip`, port 9.
fn try_tcp(s: &Scenario, ip: &str) -> Attempt {
    let ip: IpAddr = ip.parse().expect("address");
    attempts_to(&s.sb, Proto::Tcp, SocketAddr::new(ip, 9), 1, true).remove(0)
}

fn let_through(a: &Attempt) -> bool {
    a.errno == Some(libc::ENETUNREACH) || a.errno == Some(libc::ECONNREFUSED) || a.ok
}

#[test]
fn exception_and_site_precedence() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let top = r#"
deny = ["198.51.100.10/32", "10.8.0.0/16"]
allow = ["198.51.100.20/32", "10.8.1.0/24", "10.9.0.0/16"]
"#;
    let tail = r#"
[[site]]
cidr = "10.0.0.0/8"
country = "US"
name = "a private range that is really a site in the US"

[[site]]
cidr = "2001:db8:1::20/128"
country = "DE"

[[site]]
cidr = "198.51.100.30/32"
country = "FR"
"#;
    // A second database that (wrongly) locates a private range in the US:
    // built-in ranges are never geolocated, whatever a database says.
    let private_db = s.dir.path().join("private-in-us.csv");
    std::fs::write(
        &private_db,
        "cidr,country\n192.168.0.0/16,US\nfd00::/8,US\n",
    )
    .expect("write database");
    // The strictest base policy: enforce, only the EEA, unknown denied.
    let agent = s.start(&s.config_with("enforce", "deny", &[private_db], top, tail));

    // deny over GeoIP: 198.51.100.10 is in Germany (approved) but denied.
    let a = attempt(&s.sb, Proto::Tcp, IpAddr::V4(APPROVED_V4));
    assert!(
        a.refused(),
        "deny must beat an approved GeoIP country: {a:?}"
    );
    // allow over GeoIP: 198.51.100.20 is in the US but allowed.
    let a = attempt(&s.sb, Proto::Tcp, IpAddr::V4(DENIED_V4));
    assert!(a.ok, "allow must beat a non-approved GeoIP country: {a:?}");
    // deny over allow, even when the allow is more specific.
    let a = try_tcp(&s, "10.8.1.1");
    assert!(
        a.refused(),
        "deny 10.8.0.0/16 must beat allow 10.8.1.0/24: {a:?}"
    );
    // allow over site: 10.9.0.0/16 is inside the US site 10.0.0.0/8.
    let a = try_tcp(&s, "10.9.1.1");
    assert!(let_through(&a), "allow must beat a site network: {a:?}");
    // site over built-in: 10.0.0.0/8 is private, but a site in the US claims it.
    let a = try_tcp(&s, "10.7.1.1");
    assert!(
        a.refused(),
        "a site network must beat the built-in private range: {a:?}"
    );
    // site over GeoIP: 2001:db8:1::20 is in the US by GeoIP, in Germany by site.
    let a = attempt(&s.sb, Proto::Tcp, IpAddr::V6(DENIED_V6));
    assert!(a.ok, "a site network must beat GeoIP: {a:?}");
    // site over unknown: 198.51.100.30 is in no database (unknown = deny).
    let a = attempt(&s.sb, Proto::Tcp, IpAddr::V4(UNKNOWN_V4));
    assert!(a.ok, "a site network must beat the unknown policy: {a:?}");
    // built-in over GeoIP: a database says 192.168/16 and fd00::/8 are in
    // the US; the rest of the private ranges stay exempt.
    for ip in ["192.168.7.7", "fd00::7"] {
        let a = try_tcp(&s, ip);
        assert!(let_through(&a), "built-in ranges beat GeoIP ({ip}): {a:?}");
    }
    // And the base policy still refuses what no exception covers.
    let a = attempt(&s.sb, Proto::Tcp, IpAddr::V6(UNKNOWN_V6));
    assert!(a.refused(), "unknown = deny still applies: {a:?}");

    let m = agent.scrape();
    let q = |country: &str, verdict: &str| {
        m.sum(
            "enforcer_connections_total",
            &[("country", country), ("verdict", verdict)],
        )
    };
    // A deny exception is counted under the country GeoIP gives (DE), a
    // site under its own country; allow and built-in are exempt.
    assert_eq!(q("DE", "denied"), 1.0, "{}", m.text);
    assert_eq!(
        q("US", "denied"),
        1.0,
        "the US site refused 10.7.1.1\n{}",
        m.text
    );
    assert_eq!(
        q("DE", "allowed"),
        1.0,
        "the DE site let 2001:db8:1::20 through\n{}",
        m.text
    );
    assert_eq!(q("FR", "allowed"), 1.0, "{}", m.text);
    assert_eq!(
        q("unknown", "exempt"),
        4.0,
        "two allows and two built-in\n{}",
        m.text
    );
    assert_eq!(
        q("unknown", "denied"),
        2.0,
        "10.8.1.1 (deny, no GeoIP country) and unknown v6\n{}",
        m.text
    );
}
