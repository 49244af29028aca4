//! The real `enforcer` binary, run the way systemd runs it: with a config
//! file and a NOTIFY_SOCKET, ready when it says READY=1.

use std::{
    fs,
    net::{SocketAddr, TcpListener},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use crate::{metrics::Metrics, sandbox::sibling_binary};

/// How long an agent may take to load its databases and attach.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The `enforcer` binary under test.
pub fn enforcer_binary() -> PathBuf {
    sibling_binary("enforcer", "ENFORCER_BIN")
}

/// A free TCP port on loopback for a metrics listener.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Runs `enforcer <args>` to completion.
pub fn enforcer(args: &[&str]) -> Output {
    Command::new(enforcer_binary())
        .args(args)
        .output()
        .expect("run enforcer")
}

/// Runs `enforcer <args> --socket <socket>` to completion: a verb that
/// talks to the agent over its control socket.
pub fn enforcer_at(socket: &Path, args: &[&str]) -> Output {
    Command::new(enforcer_binary())
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .expect("run enforcer")
}

/// Runs `enforcer audit verify -o json <log>`, asserts the log is intact
/// and returns the summary.
pub fn verified_audit_summary(log: &Path) -> serde_json::Value {
    let out = Command::new(enforcer_binary())
        .args(["audit", "verify", "-o", "json"])
        .arg(log)
        .output()
        .expect("run enforcer audit verify");
    assert!(
        out.status.success(),
        "the agent's audit log must verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("audit summary JSON")
}

/// A running agent. Dropping it stops it and uninstalls its pin directory,
/// so no test leaves anything attached.
pub struct Agent {
    child: Option<Child>,
    pub config: PathBuf,
    pub pin_dir: PathBuf,
    /// Where it serves `/metrics`, as it announced in its READY status (so
    /// configs can listen on port 0).
    pub metrics: SocketAddr,
    /// The network namespace it runs in (`None`: the test's own), where
    /// its metrics address is reachable.
    pub netns: Option<String>,
    stderr_path: PathBuf,
    /// Set by [`Agent::kill`]: the pins now belong to whatever runs next
    /// (a restarted agent adopts them), so dropping this handle must not
    /// remove them.
    leave_pins: bool,
}

/// `enforcer uninstall --config CONFIG --pin-dir DIR --reason ...`: the
/// test's own config, so the audit record goes into the test's audit log
/// and the runtime mode file removed is the test's.
pub fn uninstall_command(config: &Path, pin_dir: &Path) -> Command {
    let mut cmd = Command::new(enforcer_binary());
    cmd.args([
        "uninstall",
        "--reason",
        "integration test cleanup",
        "--config",
    ])
    .arg(config)
    .arg("--pin-dir")
    .arg(pin_dir);
    cmd
}

/// The last resort of a cleanup that has no config of its own (a scenario
/// or router dropped after a failure): uninstalls `pin_dir` with a scratch
/// config that turns the audit log off and keeps runtime state in a
/// scratch directory, so a cleanup never writes the host's /var/log or
/// /run.
pub fn cleanup_uninstall(pin_dir: &Path) {
    let Ok(scratch) = tempfile::tempdir() else {
        return;
    };
    let config = scratch.path().join("cleanup.toml");
    let text = format!(
        "approved = [\"EEA\"]\n[geoip]\nsources = [\"unused.csv\"]\n[scope]\nhost_wide = true\n\
         [agent]\nrun_dir = \"{}\"\n[audit]\nenabled = false\n",
        scratch.path().display()
    );
    if fs::write(&config, text).is_ok() {
        let _ = uninstall_command(&config, pin_dir)
            .stdout(Stdio::null())
            .status();
    }
}

/// The metrics address in a READY notification's
/// `STATUS=running; metrics http://ADDR/metrics` line.
fn announced_metrics(notification: &str) -> Option<SocketAddr> {
    notification
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .and_then(|s| s.split("http://").nth(1))
        .and_then(|s| s.split("/metrics").next())
        .and_then(|s| s.parse().ok())
}

/// An agent that exited instead of becoming ready.
#[derive(Debug)]
pub struct StartFailure {
    pub status: ExitStatus,
    pub stderr: String,
}

impl Agent {
    /// Writes `config` to `dir/enforcer.toml` and starts the agent with it.
    /// `pin_dir` must be the one the config names.
    pub fn start(dir: &Path, config: &str, pin_dir: &Path) -> Result<Agent, StartFailure> {
        let path = dir.join("enforcer.toml");
        fs::write(&path, config).expect("write config");
        Self::start_with(&path, pin_dir)
    }

    /// Starts the agent with an existing config file. A start that fails
    /// returns the agent's exit status and log and cleans up nothing: the
    /// caller checks what the agent left behind.
    pub fn start_with(config: &Path, pin_dir: &Path) -> Result<Agent, StartFailure> {
        Self::start_with_in(config, pin_dir, None)
    }

    /// [`Agent::start_with`], with the agent in network namespace `netns`
    /// (entered with setns between fork and exec, so it keeps the test's
    /// mounts: bpffs and cgroupfs stay visible, unlike `ip netns exec`).
    pub fn start_with_in(
        config: &Path,
        pin_dir: &Path,
        netns: Option<&str>,
    ) -> Result<Agent, StartFailure> {
        Self::start_binary(&enforcer_binary(), config, pin_dir, netns)
    }

    /// [`Agent::start_with_in`] with another build of the agent: the
    /// previous release, in the upgrade test.
    pub fn start_binary(
        binary: &Path,
        config: &Path,
        pin_dir: &Path,
        netns: Option<&str>,
    ) -> Result<Agent, StartFailure> {
        Self::spawn(binary, config, pin_dir, netns, &|_| {})
    }

    /// [`Agent::start_with`] with the open-files limit (soft and hard) set
    /// to `nofile`, as a host's service manager may start it.
    pub fn start_with_nofile(
        config: &Path,
        pin_dir: &Path,
        nofile: u64,
    ) -> Result<Agent, StartFailure> {
        Self::spawn(&enforcer_binary(), config, pin_dir, None, &|cmd| {
            crate::exec_as::limit_open_files(cmd, nofile)
        })
    }

    /// [`Agent::start_with`] with `customise` applied to the command
    /// before it is spawned (e.g. [`crate::exec_as::drop_bounding`]).
    pub fn start_customised(
        config: &Path,
        pin_dir: &Path,
        customise: &dyn Fn(&mut Command),
    ) -> Result<Agent, StartFailure> {
        Self::spawn(&enforcer_binary(), config, pin_dir, None, customise)
    }

    fn spawn(
        binary: &Path,
        config: &Path,
        pin_dir: &Path,
        netns: Option<&str>,
        customise: &dyn Fn(&mut Command),
    ) -> Result<Agent, StartFailure> {
        let dir = config.parent().expect("config dir");
        let notify_path = dir.join(format!("notify-{}.sock", std::process::id()));
        let _ = fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("notify timeout");
        let stderr_path = dir.join("agent.log");
        let stderr = fs::File::create(&stderr_path).expect("agent log");
        let mut cmd = Command::new(binary);
        cmd.args(["run", "--config"])
            .arg(config)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("ENFORCER_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr);
        if let Some(ns) = netns {
            crate::sandbox::enter(&mut cmd, ns, None);
        }
        customise(&mut cmd);
        let child = cmd.spawn().expect("spawn enforcer run");
        let mut child = Some(child);
        let log = || fs::read_to_string(&stderr_path).unwrap_or_default();
        let deadline = Instant::now() + START_TIMEOUT;
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = notify.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]);
                if text.lines().any(|l| l == "READY=1") {
                    let _ = fs::remove_file(&notify_path);
                    let agent = Agent {
                        child: child.take(),
                        config: config.to_owned(),
                        pin_dir: pin_dir.to_owned(),
                        metrics: announced_metrics(&text).unwrap_or(SocketAddr::from(([0; 4], 0))),
                        netns: netns.map(str::to_owned),
                        stderr_path: stderr_path.clone(),
                        leave_pins: false,
                    };
                    assert!(
                        agent.metrics.port() != 0,
                        "READY without a metrics address in its STATUS: {text:?}"
                    );
                    return Ok(agent);
                }
            }
            if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let _ = fs::remove_file(&notify_path);
                return Err(StartFailure {
                    status,
                    stderr: log(),
                });
            }
            if Instant::now() >= deadline {
                if let Some(mut c) = child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                let _ = uninstall_command(config, pin_dir)
                    .stdout(Stdio::null())
                    .status();
                panic!("agent not ready after {START_TIMEOUT:?}:\n{}", log());
            }
        }
    }

    /// The agent's process id, while it runs (the benchmark reads its
    /// peak RSS from /proc).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What the agent wrote to stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Scrapes `GET /metrics`, from inside the agent's network namespace
    /// when it has its own (its loopback listener is only there).
    pub fn scrape(&self) -> Metrics {
        let addr = self.metrics;
        match &self.netns {
            None => Metrics::scrape(addr),
            Some(ns) => crate::router::in_netns(ns, move || Metrics::scrape(addr)),
        }
    }

    /// Scrapes until `done` holds for the metrics (polling every 100 ms, at
    /// most `timeout`) and returns them; panics with the agent's log when
    /// they never do.
    pub fn wait_for_metrics(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Metrics) -> bool,
    ) -> Metrics {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.scrape();
            if done(&m) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{}\nagent log:\n{}",
                m.text,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends a signal to the agent.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let child = self.child.as_ref().expect("agent is running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig)
            .expect("signal agent");
    }

    /// SIGTERM and wait: the agent exits, enforcement stays pinned.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("agent is running");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("agent did not stop on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`: the agent dies without running any of its own code, as
    /// in a crash or an OOM kill; reaped before this returns. Its pins stay
    /// (enforcement outlives the agent), and dropping the returned handle
    /// leaves them too, so a restarted agent can adopt them; the scenario
    /// or the next agent's handle removes them.
    pub fn kill(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("agent is running");
        let _ = child.kill();
        let status = child.wait().expect("reap the killed agent");
        self.leave_pins = true;
        status
    }

    /// Dropping this handle leaves the pins in place (another agent takes
    /// them over).
    pub fn leave_pins(&mut self) {
        self.leave_pins = true;
    }

    /// Stops the agent (if running) and removes its pins.
    pub fn uninstall(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        let out = uninstall_command(&self.config, &self.pin_dir)
            .output()
            .expect("run enforcer uninstall");
        assert!(
            out.status.success(),
            "enforcer uninstall failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.leave_pins {
            return;
        }
        let _ = uninstall_command(&self.config, &self.pin_dir)
            .stdout(Stdio::null())
            .status();
        // Belt and braces: the pin directory must not survive a test.
        let _ = fs::remove_dir_all(&self.pin_dir);
    }
}

/// Why a test of the previous release cannot run: [`previous_agent_binary`]
/// found nothing.
pub const PREVIOUS_MISSING: &str =
    "EE_PREVIOUS_ENFORCER_BIN names no binary (`cargo xtask test` builds the previous release)";

/// The previous release's agent (`EE_PREVIOUS_ENFORCER_BIN`, built by
/// `cargo xtask test` from the last commit of the previous datapath
/// layout), for the upgrade tests.
pub fn previous_agent_binary() -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os("EE_PREVIOUS_ENFORCER_BIN")?);
    path.is_file().then_some(path)
}
