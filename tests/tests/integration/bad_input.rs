//! Bad input makes `enforcer run` fail with an error that names the file,
//! and leaves nothing attached or pinned.

use std::{fs, net::IpAddr, path::Path};

use enforcer_tests::{
    agent::Agent,
    kernel::agent_programs,
    privileged,
    probe::{Proto, attempt},
    scenario::*,
    skip_unless,
};

/// Runs the agent with `config`, expects it to fail naming `needle`, and
/// checks that nothing was left behind.
fn assert_fails_cleanly(s: &Scenario, config_path: &Path, needle: &str) {
    let failure = match Agent::start_with(config_path, &s.pin_dir) {
        Ok(mut agent) => {
            agent.uninstall();
            panic!("the agent started with bad input ({needle})");
        }
        Err(f) => f,
    };
    assert!(!failure.status.success());
    assert!(
        failure.stderr.contains(needle),
        "the error must name {needle:?}:\n{}",
        failure.stderr
    );
    assert!(
        !s.pin_dir.exists(),
        "nothing may be pinned, found {}",
        s.pin_dir.display()
    );
    assert_eq!(
        agent_programs(&s.sb.cgroup),
        0,
        "nothing may be attached to the scope cgroup"
    );
    // And, functionally, nothing refuses: the config asked for enforce mode.
    let a = attempt(&s.sb, Proto::Tcp, IpAddr::V4(DENIED_V4));
    assert!(a.ok, "nothing may enforce after a failed start: {a:?}");
}

#[test]
fn malformed_config_is_refused_with_its_file_name() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let good = s.config("enforce", "deny", &[]);
    let cases = [
        (
            "syntax.toml",
            good.replace("mode = \"enforce\"", "mode = \"enforce"),
            "line",
        ),
        (
            "bad-mode.toml",
            good.replace("\"enforce\"", "\"enforcing\""),
            "enforcing",
        ),
        (
            "bad-country.toml",
            good.replace("[\"EEA\"]", "[\"EEA\", \"XQZ\"]"),
            "XQZ",
        ),
        (
            "typo.toml",
            good.replace("unknown =", "unknwon ="),
            "unknwon",
        ),
    ];
    for (name, text, needle) in cases {
        let path = s.dir.path().join(name);
        fs::write(&path, text).expect("write config");
        assert_fails_cleanly(&s, &path, name);
        assert_fails_cleanly(&s, &path, needle);
    }
}

#[test]
fn a_scope_cgroup_that_is_not_a_directory_is_refused_before_anything_is_attached() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    // (A scope cgroup that does not exist is not an error: it waits, see
    // scope.rs. One that exists and is wrong is.)
    let s = Scenario::new();
    let missing = s.sb.cgroup.join("cgroup.procs");
    let text = s.config("enforce", "deny", &[]).replace(
        &format!("cgroups = [{:?}]", s.sb.cgroup.display().to_string()),
        &format!(
            "cgroups = [{:?}, {:?}]",
            s.sb.cgroup.display().to_string(),
            missing.display().to_string()
        ),
    );
    let path = s.dir.path().join("not-a-cgroup.toml");
    fs::write(&path, text).expect("write config");
    assert_fails_cleanly(&s, &path, &missing.display().to_string());
    assert_fails_cleanly(&s, &path, "not a directory");
}

#[test]
fn truncated_mmdb_is_refused_with_its_file_name() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let real = real_geoip("GeoLite2-Country.mmdb");
    skip_unless!(
        real.is_some(),
        "EE_GEOIP_DIR has no GeoLite2-Country.mmdb (run `cargo xtask geoip fetch`)"
    );
    let real = real.expect("checked");
    let s = Scenario::new();
    let bytes = fs::read(&real).expect("read real database");
    for (name, len) in [
        ("half.mmdb", bytes.len() / 2),
        ("head.mmdb", 4096),
        ("empty.mmdb", 0),
    ] {
        let cut = s.dir.path().join(name);
        fs::write(&cut, &bytes[..len]).expect("write truncated database");
        let path = s.dir.path().join(format!("{name}.toml"));
        fs::write(
            &path,
            s.config("enforce", "deny", std::slice::from_ref(&cut)),
        )
        .expect("write config");
        assert_fails_cleanly(&s, &path, &cut.display().to_string());
    }
}

#[test]
fn an_events_file_that_is_a_symlink_is_refused() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    // Root would append events to whatever the link names.
    let target = s.dir.path().join("not-the-events-file");
    fs::write(&target, "keep me\n").expect("write target");
    std::os::unix::fs::symlink(&target, s.events_file()).expect("plant symlink");
    let path = s.dir.path().join("symlinked-events.toml");
    fs::write(
        &path,
        s.config_with("enforce", "deny", &[], "", &s.events_table(10, 10)),
    )
    .expect("write config");
    assert_fails_cleanly(&s, &path, "events.file");
    assert_eq!(
        fs::read_to_string(&target).expect("target"),
        "keep me\n",
        "nothing written through the link"
    );
}

#[test]
fn missing_database_is_refused_with_its_file_name() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let missing = s.dir.path().join("no-such.mmdb");
    let path = s.dir.path().join("missing-db.toml");
    fs::write(
        &path,
        s.config("enforce", "deny", std::slice::from_ref(&missing)),
    )
    .expect("write config");
    assert_fails_cleanly(&s, &path, &missing.display().to_string());
}

#[test]
fn nested_or_repeated_scope_cgroups_are_refused() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let inner = s.sb.cgroup.join("inner");
    fs::create_dir(&inner).expect("create a child cgroup");
    let outer = s.sb.cgroup.display().to_string();
    let scope_line = format!("cgroups = [{outer:?}]");
    for (name, list, needle) in [
        (
            "nested.toml",
            format!("cgroups = [{outer:?}, {:?}]", inner.display().to_string()),
            "is inside scope cgroup",
        ),
        (
            "repeated.toml",
            format!("cgroups = [{outer:?}, {:?}]", format!("{outer}/")),
            "listed twice",
        ),
    ] {
        let path = s.dir.path().join(name);
        fs::write(
            &path,
            s.config("enforce", "deny", &[]).replace(&scope_line, &list),
        )
        .expect("write config");
        assert_fails_cleanly(&s, &path, needle);
    }
}
