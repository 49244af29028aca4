//! rsyslog instances for the shipping tests: the project's shipped
//! configurations (packaging/rsyslog/) with the paths and addresses of a
//! test substituted, each instance with its own config, pid file and work
//! directory in the test's scratch directory, in the foreground (`-n`),
//! inside a sandbox namespace. Dropping an instance kills it (SIGKILL) and
//! reaps it, also when the test panics.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::sandbox::enter;

/// The RELP port of the shipped configurations.
pub const RELP_PORT: u16 = 2514;

/// A shipped configuration file (`packaging/rsyslog/NAME`), as text.
pub fn shipped(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/rsyslog")
        .join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `text` with every `(from, to)` replaced; panics when `from` is not in
/// it, so a changed shipped file fails the test instead of testing less.
pub fn substitute(mut text: String, what: &str, pairs: &[(&str, &str)]) -> String {
    for (from, to) in pairs {
        assert!(
            text.contains(from),
            "{what}: {from:?} is no longer in the shipped file"
        );
        text = text.replace(from, to);
    }
    text
}

/// Where `rsyslogd` is (Debian's `rsyslog`, installed by `cargo xtask
/// setup`), if anywhere.
pub fn rsyslogd() -> Option<PathBuf> {
    ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Whether rsyslog-relp's modules are installed.
pub fn relp_installed() -> bool {
    let arch = std::env::consts::ARCH;
    Path::new(&format!("/usr/lib/{arch}-linux-gnu/rsyslog/omrelp.so")).exists()
}

/// One running `rsyslogd -n`.
pub struct Rsyslog {
    pub name: String,
    pub dir: PathBuf,
    config: PathBuf,
    netns: String,
    child: Option<Child>,
}

impl Rsyslog {
    /// Writes `dir/NAME.conf` (a `global()` with this instance's work
    /// directory and `hostname` as the local host name, then `body`) and
    /// starts rsyslogd with it in network namespace `netns`, after a
    /// config check (`-N1`) that must pass.
    pub fn start(name: &str, dir: &Path, netns: &str, hostname: &str, body: &str) -> Rsyslog {
        let work = dir.join(format!("{name}-work"));
        fs::create_dir_all(&work).expect("rsyslog work directory");
        let config = dir.join(format!("{name}.conf"));
        fs::write(
            &config,
            format!(
                "global(workDirectory={:?} localHostname={hostname:?})\n{body}",
                work.display().to_string()
            ),
        )
        .expect("write rsyslog config");
        let check = Command::new(rsyslogd().expect("rsyslogd"))
            .args(["-N1", "-f"])
            .arg(&config)
            .output()
            .expect("run rsyslogd -N1");
        assert!(
            check.status.success(),
            "rsyslogd -N1 -f {}: {}{}",
            config.display(),
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let mut r = Rsyslog {
            name: name.to_owned(),
            dir: dir.to_owned(),
            config,
            netns: netns.to_owned(),
            child: None,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.output_path())
            .expect("rsyslog output file");
        let mut cmd = Command::new(rsyslogd().expect("rsyslogd"));
        cmd.arg("-n")
            .arg("-f")
            .arg(&self.config)
            .arg("-i")
            .arg(self.dir.join(format!("{}.pid", self.name)))
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out);
        enter(&mut cmd, &self.netns, None);
        self.child = Some(cmd.spawn().expect("spawn rsyslogd"));
    }

    fn output_path(&self) -> PathBuf {
        self.dir.join(format!("{}.out", self.name))
    }

    /// What rsyslogd printed (its own errors and warnings).
    pub fn output(&self) -> String {
        fs::read_to_string(self.output_path()).unwrap_or_default()
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits (up to 10 s) until something listens on TCP `port` in the
    /// instance's namespace.
    pub fn wait_listening(&mut self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.netns, "ss", "-Hltn"])
                .arg(format!("sport = :{port}"))
                .output()
                .expect("ss");
            if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                return;
            }
            assert!(
                self.running(),
                "rsyslog {} exited: {}",
                self.name,
                self.output()
            );
            assert!(
                Instant::now() < deadline,
                "rsyslog {} does not listen on {port}: {}",
                self.name,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL and reap: gone without a word, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the same instance again (after [`Rsyslog::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.kill();
    }
}
