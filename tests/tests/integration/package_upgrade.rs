//! Upgrading the package on a storage host that enforces, under a client
//! that never stops: the previous release's package (its real agent, which
//! made real pins of the previous datapath layout) is installed and
//! enforcing, then `dpkg -i` of this tree's package replaces it. At no
//! moment may an approved connection fail or a refused one pass; the
//! counters continue; the audit log verifies across both agents. Then a
//! downgrade is refused with a message, and the current version keeps
//! running.

use std::{
    fs,
    time::{Duration, Instant},
};

use enforcer_tests::{sandbox::PORT, skip_unless};

use crate::storage_host::{StorageHost, prerequisites};

/// The client: a transient service in the package's slice (so in scope)
/// that connects to the approved and the refused peer in turn until told
/// to stop, one line per attempt: `<peer> ok|refused|error <message>`.
/// bash's /dev/tcp makes the connect() in the shell itself.
const CLIENT: &str = r#"
n=0
while [ ! -e /run/ee-client.stop ] && [ $n -lt 200000 ]; do
  n=$((n+1))
  for peer in DE:198.51.100.10 US:198.51.100.20; do
    name=${peer%%:*}; addr=${peer#*:}
    if out=$( { exec 3<>/dev/tcp/$addr/__PORT__; } 2>&1 ); then
      echo "$name ok"
    else
      case "$out" in
        *"Operation not permitted"*) echo "$name refused" ;;
        *) echo "$name error $out" | tr '\n' ' '; echo ;;
      esac
    fi
  done
  sleep 0.005
done
"#;

/// The outcome of every attempt the client made.
#[derive(Debug, Default)]
struct Tally {
    de_ok: u64,
    de_failed: Vec<String>,
    us_refused: u64,
    us_passed: u64,
    us_other: Vec<String>,
}

fn tally(log: &str) -> Tally {
    let mut t = Tally::default();
    for line in log.lines() {
        match line.split_once(' ') {
            Some(("DE", "ok")) => t.de_ok += 1,
            Some(("DE", other)) => t.de_failed.push(other.to_owned()),
            Some(("US", "refused")) => t.us_refused += 1,
            Some(("US", "ok")) => t.us_passed += 1,
            Some(("US", other)) => t.us_other.push(other.to_owned()),
            _ => {}
        }
    }
    t
}

#[test]
fn upgrading_the_package_never_lets_a_refused_connection_through() {
    let pre = prerequisites("EE_DEB").and_then(|p| {
        let prev = crate::storage_host::package("EE_DEB_PREVIOUS").ok_or(
            "no previous release's package (EE_DEB_PREVIOUS): `cargo xtask test` builds it",
        )?;
        Ok((p, prev))
    });
    skip_unless!(
        pre.is_ok(),
        "{}",
        pre.as_ref().err().cloned().unwrap_or_default()
    );
    let ((rootfs, deb, db), previous) = pre.expect("checked");
    let host = StorageHost::boot(&rootfs, &db, &[&previous, &deb], "enforce");

    eprintln!(
        "installing the previous release:\n{}",
        host.install(&previous)
    );
    let old_version = installed_version(&host);
    let old_status = host.status();
    let old_layout = old_status["kernel"]["layout"].as_i64().unwrap_or(0);

    // The client starts under the previous agent.
    let script = CLIENT.replace("__PORT__", &PORT.to_string());
    fs::write(host.m.path("/root/client.sh"), script).expect("client script");
    host.m.exec(&[
        "systemd-run",
        "--unit=ee-client",
        "--slice=residency.slice",
        "--property=StandardOutput=file:/root/client.log",
        "bash",
        "/root/client.sh",
    ]);
    let log = host.m.path("/root/client.log");
    wait_for_lines(&log, 200);

    let denied_before = host.status()["kernel"]["connections"]["denied"]
        .as_i64()
        .unwrap_or(0);
    let upgrade_started = Instant::now();
    eprintln!("upgrading:\n{}", host.install(&deb));
    let upgrade_took = upgrade_started.elapsed();
    let during = fs::read_to_string(&log).unwrap_or_default().lines().count();
    // Keep the client running on the new agent for a while.
    wait_for_lines(&log, during + 400);
    // /run is the machine's tmpfs, not its disk: made from inside.
    host.m.exec(&["touch", "/run/ee-client.stop"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while host
        .m
        .try_exec(&["systemctl", "is-active", "ee-client"])
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "the client did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }

    let new_version = installed_version(&host);
    let status = host.status();
    let new_layout = status["kernel"]["layout"].as_i64().unwrap_or(0);
    let t = tally(&fs::read_to_string(&log).expect("client log"));
    eprintln!(
        "upgrade {old_version} (layout {old_layout}) -> {new_version} (layout {new_layout}) \
         took {:.1} s; client: DE ok {}, DE failed {}, US refused {}, US passed {}, US other {}",
        upgrade_took.as_secs_f64(),
        t.de_ok,
        t.de_failed.len(),
        t.us_refused,
        t.us_passed,
        t.us_other.len()
    );
    assert_ne!(old_version, new_version, "the package was upgraded");
    assert_eq!(
        t.us_passed, 0,
        "a refused connection passed during the upgrade: {t:?}"
    );
    assert!(
        t.de_failed.is_empty(),
        "approved connections failed: {:?}",
        t.de_failed
    );
    assert!(
        t.us_other.is_empty(),
        "US attempts failed otherwise than refused: {:?}",
        t.us_other
    );
    assert!(
        t.de_ok >= 300 && t.us_refused >= 300,
        "the client ran throughout: {t:?}"
    );
    assert_eq!(
        status["agent"]["version"],
        env!("CARGO_PKG_VERSION"),
        "{status:#}"
    );
    // Counters continue: the new agent's count includes the old one's.
    let denied_after = status["kernel"]["connections"]["denied"]
        .as_i64()
        .unwrap_or(0);
    assert!(
        denied_after >= denied_before + 200,
        "the refusal counter continued across the upgrade ({denied_before} -> {denied_after})"
    );
    // The audit log, written by both agents, verifies with the new one.
    let audit = host.audit();
    eprintln!("audit across the upgrade: {audit}");

    // A downgrade is refused, and the current version keeps enforcing.
    let out = host.m.try_exec(&[
        "dpkg",
        "-i",
        &format!(
            "/root/{}",
            previous.file_name().expect("name").to_string_lossy()
        ),
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("downgrade attempt: {text}");
    assert!(!out.status.success(), "a downgrade must be refused: {text}");
    assert!(text.contains("downgrade"), "the refusal says why: {text}");
    assert_eq!(installed_version(&host), new_version);
    assert_eq!(
        host.m
            .exec(&["systemctl", "is-active", "egress-enforcer"])
            .trim(),
        "active"
    );
    assert!(
        crate::storage_host::first_instruction_refused(&host.m),
        "US still refused after the refused downgrade"
    );
}

fn installed_version(host: &StorageHost) -> String {
    host.m
        .exec(&["dpkg-query", "-W", "-f=${Version}", "egress-enforcer"])
        .trim()
        .to_owned()
}

/// Waits until the client's log has `n` lines.
fn wait_for_lines(log: &std::path::Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let have = fs::read_to_string(log).unwrap_or_default().lines().count();
        if have >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the client wrote {have} of {n} lines"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
