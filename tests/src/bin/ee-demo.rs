//! `ee-demo`: the main job, shown to a person, in a sandbox. Run by
//! `cargo xtask demo`, which installs what is needed, fetches the real
//! GeoLite2 database and passes its path.
//!
//! Two network namespaces joined by a veth pair and a child cgroup for the
//! client (nothing in the host's own namespace or cgroups is touched). A
//! small database written here maps one sandbox address to Germany (in the
//! EEA, approved) and another to the United States (not approved), layered
//! over the real GeoLite2 database. The real agent runs in observe mode,
//! then is switched to enforce mode with SIGHUP; curl shows what happens,
//! the agent's own metrics prove it, and every step is checked: the demo
//! fails if what it shows is not what happened. Everything is removed at
//! the end, on failure, and on Ctrl-C.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use enforcer_tests::{
    agent::{Agent, enforcer_binary, free_port},
    metrics::Metrics,
    probe::{Proto, attempt},
    sandbox::{PORT, Sandbox, addr},
};

/// What must be torn down, reachable from the Ctrl-C handler.
struct Live {
    pin_dir: PathBuf,
    scratch: PathBuf,
    config: PathBuf,
    agent: Option<Agent>,
    sandbox: Option<Sandbox>,
}

static LIVE: Mutex<Option<Live>> = Mutex::new(None);

fn teardown() {
    let live = LIVE.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(mut live) = live {
        // An agent still starting is not in `live.agent` yet: find it by
        // its config path.
        kill_agents_using(&live.config);
        // Agent first (its drop runs `enforcer uninstall`), then the sandbox.
        drop(live.agent.take());
        let _ = Command::new(enforcer_binary())
            .args(["uninstall", "--reason", "demo cleanup", "--config"])
            .arg(&live.config)
            .arg("--pin-dir")
            .arg(&live.pin_dir)
            .output();
        drop(live.sandbox.take());
        let _ = fs::remove_dir_all(&live.scratch);
        println!(
            "\nsandbox removed: namespaces, veth pair, cgroup, pinned programs and scratch files are gone"
        );
    }
}

/// SIGKILLs every `enforcer run` whose command line names `config`.
fn kill_agents_using(config: &Path) {
    let needle = config.as_os_str().as_encoded_bytes();
    let Ok(procs) = fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(p.path().join("cmdline")) else {
            continue;
        };
        if cmdline.split(|&b| b == 0).any(|arg| arg == needle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn with_live<T>(f: impl FnOnce(&mut Live) -> T) -> T {
    let mut guard = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.as_mut().expect("demo state"))
}

const DEMO_DB: &str = "# egress-enforcer demo: two sandbox addresses with a known country\n\
198.51.100.10/32,DE\n\
198.51.100.20/32,US\n\
2001:db8:1::10/128,DE\n\
2001:db8:1::20/128,US\n";

fn config(
    mode: &str,
    db: &Path,
    real: &Path,
    cgroup: &Path,
    metrics: SocketAddr,
    pin_dir: &Path,
    run_dir: &Path,
) -> String {
    format!(
        "# written by `cargo xtask demo`\n\
         mode = \"{mode}\"\n\
         approved = [\"EEA\"]\n\
         unknown = \"allow\"\n\
         [geoip]\n\
         sources = [{:?}, {:?}]\n\
         [scope]\n\
         cgroups = [{:?}]\n\
         [metrics]\n\
         listen = \"{metrics}\"\n\
         [agent]\n\
         pin_dir = {:?}\n\
         run_dir = {:?}\n\
         [audit]\n\
         file = {:?}\n",
        db.display().to_string(),
        real.display().to_string(),
        cgroup.display().to_string(),
        pin_dir.display().to_string(),
        run_dir.display().to_string(),
        run_dir.join("audit.jsonl").display().to_string(),
    )
}

fn main() -> ExitCode {
    let Some(real_db) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: ee-demo <GeoLite2-Country.mmdb>   (cargo xtask demo passes it)");
        return ExitCode::from(2);
    };
    if let Err(e) = ctrlc::set_handler(|| {
        eprintln!("\ninterrupted: cleaning up");
        teardown();
        std::process::exit(130);
    }) {
        eprintln!("error: installing the Ctrl-C handler: {e}");
        return ExitCode::FAILURE;
    }
    let result = demo(&real_db);
    teardown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn demo(real_db: &Path) -> Result<()> {
    banner("1. A sandbox: two network namespaces, a veth pair, a client cgroup");
    let sandbox = Sandbox::new();
    let scratch = std::env::temp_dir().join(format!("{}-demo", sandbox.id));
    let pin_dir = PathBuf::from(enforcer::paths::BPFFS).join(&sandbox.id);
    let config_path = scratch.join("enforcer.toml");
    println!(
        "client: netns {} in cgroup {}, address {} / {}",
        sandbox.client_ns,
        sandbox.cgroup.display(),
        addr::CLIENT_V4,
        addr::CLIENT_V6
    );
    println!(
        "server: netns {}, a web server on port {PORT}",
        sandbox.server_ns
    );
    println!("  {}  is in Germany (EEA: approved)", addr::APPROVED_V4);
    println!(
        "  {}  is in the United States (not approved)",
        addr::DENIED_V4
    );
    let cgroup = sandbox.cgroup.clone();
    *LIVE.lock().unwrap_or_else(|e| e.into_inner()) = Some(Live {
        pin_dir: pin_dir.clone(),
        scratch: scratch.clone(),
        config: config_path.clone(),
        agent: None,
        sandbox: Some(sandbox),
    });
    fs::create_dir_all(&scratch)?;

    let db = scratch.join("demo-sites.csv");
    fs::write(&db, DEMO_DB)?;
    let metrics = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port());
    fs::write(
        &config_path,
        config(
            "observe",
            &db,
            real_db,
            &cgroup,
            metrics,
            &pin_dir,
            &scratch.join("run"),
        ),
    )?;
    println!(
        "\nconfig {}:\n{}",
        config_path.display(),
        fs::read_to_string(&config_path)?
    );
    println!(
        "databases, first that locates an address wins: {} over {}",
        db.display(),
        real_db.display()
    );

    banner("2. The agent in observe mode");
    let started = Instant::now();
    let agent = match Agent::start_with(&config_path, &pin_dir) {
        Ok(a) => a,
        Err(f) => bail!("the agent did not start ({}):\n{}", f.status, f.stderr),
    };
    println!(
        "agent ready in {:.1}s (real database loaded, policy in the kernel, attached to the client cgroup)",
        started.elapsed().as_secs_f64()
    );
    with_live(|l| l.agent = Some(agent));
    println!("observe: the US connection is let through, and recorded as would-deny");
    ensure!(
        curl(addr::APPROVED_V4, "Germany")?,
        "observe: the connection to Germany failed"
    );
    ensure!(
        curl(addr::DENIED_V4, "United States")?,
        "observe: the connection to the US failed"
    );
    let m = show_metrics(metrics)?;
    ensure!(
        connections(&m, "DE", "allowed") == 1.0,
        "observe: DE allowed should be 1\n{}",
        m.text
    );
    ensure!(
        connections(&m, "US", "would_deny") == 1.0,
        "observe: US would_deny should be 1\n{}",
        m.text
    );

    banner("3. Switch to enforce mode through the control socket");
    let out = run_enforcer(&[
        "mode",
        "enforce",
        "--reason",
        "demo: the observe run showed only the expected would-deny",
        "--config",
        &config_path.display().to_string(),
    ])?;
    ensure!(out.0, "enforcer mode failed:\n{}", out.1);
    wait_for_mode(metrics, "enforce")?;
    println!("enforce mode is in force from the next connection on");
    println!("enforce: the US connection is refused in the kernel (EPERM)");
    ensure!(
        curl(addr::APPROVED_V4, "Germany")?,
        "enforce: the connection to Germany failed"
    );
    ensure!(
        !curl(addr::DENIED_V4, "United States")?,
        "enforce: the connection to the US went through"
    );
    let probe = with_live(|l| {
        attempt(
            l.sandbox.as_ref().expect("sandbox"),
            Proto::Tcp,
            IpAddr::V4(addr::DENIED_V4),
        )
    });
    println!(
        "  $ ee-probe connect tcp {} {PORT}   (what connect() returned)\n    {}",
        addr::DENIED_V4,
        probe.error.clone().unwrap_or_else(|| "connected".into())
    );
    ensure!(
        probe.refused(),
        "enforce: connect() to the US should fail with EPERM: {probe:?}"
    );
    let m = show_metrics(metrics)?;
    ensure!(
        connections(&m, "DE", "allowed") == 2.0,
        "enforce: DE allowed should be 2\n{}",
        m.text
    );
    ensure!(
        connections(&m, "US", "denied") == 2.0,
        "enforce: US denied should be 2 (curl and ee-probe)\n{}",
        m.text
    );

    banner("4. What runs and what the kernel holds (`enforcer status`)");
    let config_arg = config_path.display().to_string();
    let out = run_enforcer(&["status", "--config", &config_arg])?;
    ensure!(out.0, "enforcer status failed:\n{}", out.1);

    banner("5. The refusals as events (`enforcer events`)");
    let out = run_enforcer(&["events", "--config", &config_arg])?;
    ensure!(out.0, "enforcer events failed:\n{}", out.1);

    banner("6. Clean up: `enforcer uninstall`, remove the sandbox");
    Ok(())
}

/// Runs `enforcer args`, shows the command and its output; returns whether
/// it succeeded and what it printed.
fn run_enforcer(args: &[&str]) -> Result<(bool, String)> {
    println!("  $ enforcer {}", args.join(" "));
    let out = Command::new(enforcer_binary())
        .args(args)
        .output()
        .context("running enforcer")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for line in text.lines() {
        println!("    {line}");
    }
    Ok((out.status.success(), text))
}

fn banner(title: &str) {
    println!("\n=== {title}\n");
}

/// curl from the client cgroup; prints what curl said, returns whether it
/// got the page.
fn curl(ip: Ipv4Addr, place: &str) -> Result<bool> {
    let url = format!("http://{ip}:{PORT}/");
    let out = with_live(|l| {
        let sb = l.sandbox.as_ref().expect("sandbox");
        sb.client_command("curl")
            .args(["-sS", "--max-time", "5", &url])
            .output()
    })
    .context("running curl in the sandbox")?;
    let stream = if out.status.success() {
        &out.stdout
    } else {
        &out.stderr
    };
    println!(
        "  $ curl {url}   ({place})\n    {}",
        String::from_utf8_lossy(stream).trim()
    );
    Ok(out.status.success())
}

fn connections(m: &Metrics, country: &str, verdict: &str) -> f64 {
    m.sum(
        "enforcer_connections_total",
        &[("country", country), ("verdict", verdict)],
    )
}

fn show_metrics(addr: SocketAddr) -> Result<Metrics> {
    let m = Metrics::scrape(addr);
    println!("\nthe agent's metrics (curl http://{addr}/metrics):");
    for s in m.series("enforcer_connections_total") {
        let l = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
        println!(
            "  enforcer_connections_total{{hook=\"{}\",family=\"{}\",country=\"{}\",verdict=\"{}\"}} {}",
            l("hook"),
            l("family"),
            l("country"),
            l("verdict"),
            s.value
        );
    }
    for s in m
        .series("enforcer_mode")
        .into_iter()
        .filter(|s| s.value == 1.0)
    {
        println!(
            "  enforcer_mode{{mode=\"{}\"}} 1",
            s.labels.get("mode").cloned().unwrap_or_default()
        );
    }
    for s in m.series("enforcer_geoip_prefixes") {
        println!(
            "  enforcer_geoip_prefixes{{family=\"{}\"}} {}",
            s.labels.get("family").cloned().unwrap_or_default(),
            s.value
        );
    }
    Ok(m)
}

fn wait_for_mode(addr: SocketAddr, mode: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if Metrics::scrape(addr).sum("enforcer_mode", &[("mode", mode)]) == 1.0 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("the agent did not switch to {mode} mode within 120s")
}
