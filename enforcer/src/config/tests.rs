//! The config's parsing and validation.

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Origin::File(PathBuf::from("/etc/ee/test.toml")))
}

const MINIMAL: &str = r#"
approved = ["DE"]
[geoip]
sources = ["geo.mmdb"]
[scope]
cgroups = ["system.slice/storage.service"]
"#;

#[test]
fn embedded_default_is_valid_and_safe() {
    let c = Config::embedded_default().expect("the embedded default parses");
    assert_eq!(c.mode, Mode::Observe);
    assert_eq!(c.unknown, Unknown::Allow);
    assert_eq!(c.scope, Scope::HostWide);
    assert!(c.approved.contains(&"DE".parse().expect("code")));
    assert!(
        c.approved.contains(&"NO".parse().expect("code")),
        "EEA includes Norway"
    );
    assert!(!c.approved.contains(&"US".parse().expect("code")));
}

#[test]
fn minimal_file_gets_defaults_and_relative_sources() {
    let c = parse(MINIMAL).expect("valid");
    assert_eq!(c.mode, Mode::Observe);
    assert_eq!(c.sources, vec![geoip::SourceSpec::path("/etc/ee/geo.mmdb")]);
    assert_eq!(
        c.anycast,
        Anycast::Deny,
        "anycast ranges are refused unless chosen"
    );
    assert_eq!(c.metrics_listen, "127.0.0.1:9477".parse().expect("addr"));
    assert_eq!(c.pin_dir, PathBuf::from(paths::DEFAULT_PIN_DIR));
}

#[test]
fn sources_as_tables_name_their_kind_and_field() {
    let c = parse(
        "approved = [\"DE\"]\nanycast = \"unknown\"\n[geoip]\nsources = [\n\
         { path = \"feed.csv\", kind = \"csv\" },\n\
         { path = \"/x/GeoLite2-Country.mmdb\", country_field = \"registered_country\" },\n\
         \"plain.mmdb\",\n]\n[scope]\ncgroups = [\"a\"]\n",
    )
    .expect("valid");
    assert_eq!(c.anycast, Anycast::Unknown);
    let kinds: Vec<(String, &str, &str)> = c
        .sources
        .iter()
        .map(|s| {
            (
                s.path.display().to_string(),
                s.options.kind.label(),
                s.options.country_field.label(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("/etc/ee/feed.csv".to_owned(), "csv", "country"),
            (
                "/x/GeoLite2-Country.mmdb".to_owned(),
                "auto",
                "registered_country"
            ),
            ("/etc/ee/plain.mmdb".to_owned(), "auto", "country"),
        ]
    );
    let bad = |sources: &str, expected: &str| {
        let e = parse(&format!(
            "approved = [\"DE\"]\n[geoip]\nsources = {sources}\n[scope]\ncgroups = [\"a\"]\n"
        ))
        .expect_err(sources)
        .to_string();
        assert!(e.contains(expected), "{sources}: {e}");
        assert!(e.starts_with("/etc/ee/test.toml"), "{e}");
    };
    bad(
        r#"[{ path = "a", kind = "geojson" }]"#,
        "geoip.sources[0].kind \"geojson\": unknown kind (expected one of auto, mmdb, csv",
    );
    bad(
        r#"["x", { path = "a", country_field = "where" }]"#,
        "geoip.sources[1].country_field \"where\"",
    );
    bad(
        r#"[{ path = "a", kind = "csv", country_field = "country" }]"#,
        "geoip.sources[0].country_field: only MaxMind-schema",
    );
    bad(
        r#"["a.mmdb", "/etc/ee/a.mmdb"]"#,
        "geoip.sources[1]: /etc/ee/a.mmdb is already geoip.sources[0]",
    );
    bad(
        r#"[{ path = "a", colour = "red" }]"#,
        "unknown field `colour`, expected one of `path`, `kind`, `country_field`",
    );
    bad(r#"[42]"#, "a path, or a table");
    let e = parse(&format!("anycast = \"maybe\"\n{MINIMAL}"))
        .expect_err("anycast")
        .to_string();
    assert!(e.contains("anycast"), "{e}");
}

#[test]
fn exceptions_and_sites_parse() {
    let c = parse(&format!(
        "allow = [\"198.51.100.0/28\", \"2001:db8::1\"]\ndeny = [\"198.18.0.0/15\"]\n{MINIMAL}\
         [[site]]\ncidr = \"10.20.0.0/16\"\ncountry = \"fr\"\nname = \"paris-dc\"\n\
         [[site]]\ncidr = \"fd00:1::/32\"\ncountry = \"DE\"\n"
    ))
    .expect("valid");
    assert_eq!(c.allow.len(), 2);
    assert_eq!(c.allow[1].prefix(), 128, "a single address is a /128");
    assert_eq!(
        c.deny,
        vec!["198.18.0.0/15".parse::<IpNetwork>().expect("cidr")]
    );
    assert_eq!(c.sites[0].name, "paris-dc");
    assert_eq!(c.sites[0].country.as_str(), "FR");
    assert_eq!(
        c.sites[1].name, "fd00:1::/32",
        "the CIDR names an unnamed site"
    );
}

#[test]
fn events_and_overrides() {
    let c = parse(MINIMAL).expect("valid");
    assert_eq!(
        c.events,
        Events {
            rate_per_cpu: 100,
            burst: 200,
            file: None,
            stdout: true
        },
        "without a file, events go to stdout"
    );
    let c = parse(&format!(
        "{MINIMAL}[[scope.override]]\ncgroup = \"system.slice/storage.service/worker\"\nmode = \"enforce\"\n\
         [events]\nrate_per_cpu = 5\nfile = \"events.jsonl\"\n"
    ))
    .expect("valid");
    assert_eq!(
        c.overrides,
        vec![ModeOverride {
            cgroup: "system.slice/storage.service/worker".into(),
            mode: Mode::Enforce
        }]
    );
    assert_eq!(c.events.burst, 10);
    assert_eq!(c.events.file, Some(PathBuf::from("/etc/ee/events.jsonl")));
    assert!(!c.events.stdout, "with a file, stdout only when asked");
}

#[test]
fn interfaces_parse_in_scope() {
    let c = parse(MINIMAL).expect("valid");
    assert!(c.interfaces.is_empty(), "no forwarded traffic by default");
    let c = parse(&MINIMAL.replace(
        "[scope]\n",
        "[scope]\ninterfaces = [\"eth1\", \"br0.100\", \"veth-a_b@x\", \"abcdefghijklmno\"]\n",
    ))
    .expect("valid");
    assert_eq!(
        c.interfaces,
        ["eth1", "br0.100", "veth-a_b@x", "abcdefghijklmno"],
        "dots, dashes and 15-byte names are valid, order is kept"
    );
}

#[test]
fn bad_interface_names_are_refused_with_the_key() {
    let with =
        |list: &str| MINIMAL.replace("[scope]\n", &format!("[scope]\ninterfaces = {list}\n"));
    let cases: &[(&str, &str)] = &[
        ("[\"\"]", "scope.interfaces[0] \"\": empty name"),
        (
            "[\"eth0\", \"abcdefghijklmnop\"]",
            "scope.interfaces[1] \"abcdefghijklmnop\": 16 bytes long",
        ),
        ("[\"a/b\"]", "scope.interfaces[0] \"a/b\": contains '/'"),
        ("[\"eth 0\"]", "scope.interfaces[0] \"eth 0\": contains ' '"),
        ("[\"eth0\\t\"]", "contains '\\t'"),
        ("[\"eth0:1\"]", "contains ':'"),
        ("[\"..\"]", "not an interface name"),
        (
            "[\"overflow\"]",
            "scope.interfaces[0] \"overflow\": reserved",
        ),
        ("[\"carried\"]", "reserved"),
        (
            "[\"eth0\", \"eth0\"]",
            "scope.interfaces[1] \"eth0\": given twice",
        ),
        ("\"eth0\"", "interfaces"),
    ];
    for (list, needle) in cases {
        let e = parse(&with(list)).expect_err(list).to_string();
        assert!(e.starts_with("/etc/ee/test.toml: "), "{e}");
        assert!(e.contains(needle), "error {e:?} should mention {needle:?}");
    }
}

#[test]
fn locations_are_read_from_a_config_with_an_error_elsewhere() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("broken.toml");
    let text = format!(
        "{MINIMAL}[agent]\npin_dir = \"/sys/fs/bpf/x\"\nrun_dir = \"/run/x\"\n[audit]\ncheckpoint_interval = \"never\"\n"
    );
    fs::write(&path, text).expect("write");
    let (at, error) = Locations::of(Some(&path));
    assert_eq!(at.pin_dir, PathBuf::from("/sys/fs/bpf/x"));
    assert_eq!(
        at.socket,
        PathBuf::from("/run/x").join(paths::CONTROL_SOCKET_NAME)
    );
    assert!(error.is_some_and(|e| e.message.contains("checkpoint_interval")));
    // Not TOML at all: the defaults, and the error.
    fs::write(&path, "approved = [\n").expect("write");
    let (at, error) = Locations::of(Some(&path));
    assert_eq!(at.pin_dir, PathBuf::from(paths::DEFAULT_PIN_DIR));
    assert!(error.is_some());
    // A valid config: its own values and no error.
    let (at, error) = Locations::of(None);
    assert!(error.is_none());
    assert_eq!(at.pin_dir, PathBuf::from(paths::DEFAULT_PIN_DIR));
}

#[test]
fn errors_name_the_file_and_the_problem() {
    let cases: &[(&str, &str)] = &[
        ("mode = \"enforc\"\n", "enforc"),
        (&MINIMAL.replace("[\"DE\"]", "[\"XX1\"]"), "XX1"),
        (
            &MINIMAL.replace("[\"DE\"]", "[\"DE\", \"UK\"]"),
            "\"UK\" is not an assigned ISO 3166-1",
        ),
        (
            &format!("{MINIMAL}[[site]]\ncidr = \"10.1.0.0/16\"\ncountry = \"QQ\"\n"),
            "site[0].country \"QQ\": not an assigned",
        ),
        (
            &MINIMAL.replace("[\"DE\"]", "[\"DE\", \"!DE\"]"),
            "resolves to no country",
        ),
        (
            &format!("{MINIMAL}\n[metrics]\nlisten = \"nonsense\"\n"),
            "metrics.listen",
        ),
        (&MINIMAL.replace("approved", "aproved"), "aproved"),
        (
            &MINIMAL.replace("system.slice/storage.service", "../escape"),
            "..",
        ),
        (
            &MINIMAL.replace("cgroups = [\"system.slice/storage.service\"]", ""),
            "no cgroups",
        ),
        ("approved = [\n", "line"),
        (
            &format!("{MINIMAL}[audit]\ncheckpoint_interval = \"300000000000y\"\n"),
            "audit.checkpoint_interval \"300000000000y\"",
        ),
        (
            &format!("{MINIMAL}[events]\nrate_per_cpu = 4000000000\n"),
            "events.rate_per_cpu 4000000000: at most 1000000 per CPU per second",
        ),
        (
            &format!("{MINIMAL}[events]\nrate_per_cpu = 10\nburst = 2000001\n"),
            "events.burst 2000001: at most 2000000",
        ),
        (
            &format!("{MINIMAL}[audit]\ncheckpoint_interval = \"25h\"\n"),
            "audit.checkpoint_interval \"25h\": at most 1 day",
        ),
        (
            &format!("{MINIMAL}[agent]\npin_dir = \"pins\"\n"),
            "agent.pin_dir \"pins\": must be an absolute path on bpffs",
        ),
        (
            &format!("{MINIMAL}[[scope.override]]\ncgroup = \"x\"\nmode = \"audit\"\n"),
            "audit",
        ),
        (
            &format!(
                "{MINIMAL}[[scope.override]]\ncgroup = \"x\"\nmode = \"enforce\"\n[[scope.override]]\ncgroup = \"x\"\nmode = \"observe\"\n"
            ),
            "scope.override[1].cgroup \"x\": given twice",
        ),
        (
            &format!("allow = [\"10.0.0.1/8\"]\n{MINIMAL}"),
            "allow[0] \"10.0.0.1/8\": host bits are set; the network is 10.0.0.0/8",
        ),
        (
            &format!("deny = [\"198.51.100.0/24\", \"nope\"]\n{MINIMAL}"),
            "deny[1] \"nope\"",
        ),
        (
            &format!("{MINIMAL}[[site]]\ncidr = \"10.1.0.0/16\"\ncountry = \"FRA\"\n"),
            "site[0].country",
        ),
        (
            &format!(
                "{MINIMAL}[[site]]\ncidr = \"10.1.0.0/16\"\ncountry = \"FR\"\n[[site]]\ncidr = \"10.1.0.0/16\"\ncountry = \"DE\"\n"
            ),
            "site[1] 10.1.0.0/16 is DE",
        ),
    ];
    for (text, needle) in cases {
        let e = parse(text).expect_err(text).to_string();
        assert!(e.starts_with("/etc/ee/test.toml: "), "{e}");
        assert!(e.contains(needle), "error {e:?} should mention {needle:?}");
    }
}

#[test]
fn audit_signing_key_and_origin() {
    let c = parse(MINIMAL).expect("valid");
    assert_eq!(c.audit.signing_key, None);
    assert!(
        c.audit.origin.ends_with("/egress-enforcer") && c.audit.origin.len() > 16,
        "the host name by default: {}",
        c.audit.origin
    );
    assert!(c.audit.signer().expect("no key").is_none());
    let c = parse(&format!(
        "{MINIMAL}[audit]\nsigning_key = \"audit.key\"\norigin = \"db1.example.org/ee\"\n"
    ))
    .expect("valid");
    assert_eq!(
        c.audit.signing_key,
        Some(PathBuf::from("/etc/ee/audit.key"))
    );
    assert_eq!(c.audit.origin, "db1.example.org/ee");
    for bad in ["", "a b", "a+b"] {
        let e = parse(&format!("{MINIMAL}[audit]\norigin = {bad:?}\n"))
            .expect_err(bad)
            .to_string();
        assert!(e.contains("audit.origin"), "{e}");
    }
}

#[test]
fn an_unusable_signing_key_is_an_error_naming_the_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("audit.key");
    let config = |key: &Path| {
        parse(&format!(
            "{MINIMAL}[audit]\nsigning_key = {:?}\n",
            key.display().to_string()
        ))
        .expect("valid")
    };
    let missing = config(&key)
        .audit
        .signer()
        .expect_err("missing")
        .to_string();
    assert!(missing.contains("audit.key"), "{missing}");
    fs::write(&key, "not a key\n").expect("write");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod");
    let form = config(&key).audit.signer().expect_err("form").to_string();
    assert!(
        form.contains("audit.key") && form.contains("PRIVATE+KEY"),
        "{form}"
    );
    crate::audit::SignerKey::generate("h")
        .expect("key")
        .write_new(&dir.path().join("good.key"))
        .expect("write");
    let good = dir.path().join("good.key");
    assert!(config(&good).audit.signer().expect("usable").is_some());
    fs::set_permissions(&good, fs::Permissions::from_mode(0o644)).expect("chmod");
    let open = config(&good)
        .audit
        .signer()
        .expect_err("world readable")
        .to_string();
    assert!(open.contains("good.key") && open.contains("0644"), "{open}");
}

#[test]
fn a_missing_default_database_says_how_to_get_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("GeoLite2-Country.mmdb");
    let mut c = Config::embedded_default().expect("the embedded default parses");
    c.sources = vec![geoip::SourceSpec::path(missing.clone())];
    let e = c.check_default_database().expect_err("missing").to_string();
    for needle in [
        "<embedded default config>",
        missing.to_str().expect("utf-8"),
        "geoipupdate",
        "cargo xtask geoip fetch",
        "--config",
    ] {
        assert!(e.contains(needle), "{needle:?} in {e}");
    }
    fs::write(&missing, b"").expect("write");
    c.check_default_database()
        .expect("present: the load says the rest");
    // A config file's sources are the load's business (its error names
    // the file).
    let mut f = parse(MINIMAL).expect("parses");
    f.sources = vec![geoip::SourceSpec::path(dir.path().join("nope.mmdb"))];
    f.check_default_database()
        .expect("not the embedded default");
}
