//! The common set-up of an integration test: a sandbox, a scratch
//! directory, a small GeoIP database written by the test, a private pin
//! directory and metrics port, and a config that scopes the agent to the
//! sandbox's cgroup only.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use crate::{
    agent::{Agent, cleanup_uninstall},
    sandbox::{Sandbox, addr},
};

/// The tests' database: the sandbox's "approved" addresses are in Germany
/// (in the EEA), the "denied" ones in the United States, the "unknown"
/// ones in no database.
pub const TEST_DB_CSV: &str = "# egress-enforcer integration tests\n\
cidr,country\n\
198.51.100.10/32,DE\n\
198.51.100.20/32,US\n\
2001:db8:1::10/128,DE\n\
2001:db8:1::20/128,US\n";

pub const APPROVED_COUNTRY: &str = "DE";
pub const DENIED_COUNTRY: &str = "US";

pub struct Scenario {
    pub sb: Sandbox,
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    pub pin_dir: PathBuf,
}

impl Scenario {
    pub fn new() -> Scenario {
        let sb = Sandbox::new();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-", sb.id))
            .tempdir()
            .expect("scratch directory");
        let db = dir.path().join("test-geo.csv");
        fs::write(&db, TEST_DB_CSV).expect("write test database");
        let pin_dir = PathBuf::from(enforcer::paths::BPFFS).join(&sb.id);
        Scenario {
            sb,
            dir,
            db,
            pin_dir,
        }
    }

    /// A config for this scenario: `mode`, `unknown`, the EEA approved, the
    /// test database (then `extra_sources`), scoped to the sandbox cgroup.
    pub fn config(&self, mode: &str, unknown: &str, extra_sources: &[PathBuf]) -> String {
        self.config_with(mode, unknown, extra_sources, "", "")
    }

    /// [`Scenario::config`] with extra top-level keys (`top`, e.g. `allow =
    /// [...]`) and extra tables at the end (`tail`, e.g. `[[site]]` blocks).
    pub fn config_with(
        &self,
        mode: &str,
        unknown: &str,
        extra_sources: &[PathBuf],
        top: &str,
        tail: &str,
    ) -> String {
        self.config_scoped(
            mode,
            unknown,
            extra_sources,
            &[self.sb.cgroup.as_path()],
            top,
            tail,
        )
    }

    /// [`Scenario::config_with`] scoped to `cgroups` (e.g. child cgroups
    /// of the sandbox's) instead of the sandbox's cgroup.
    pub fn config_scoped(
        &self,
        mode: &str,
        unknown: &str,
        extra_sources: &[PathBuf],
        cgroups: &[&std::path::Path],
        top: &str,
        tail: &str,
    ) -> String {
        let mut sources = vec![format!("{:?}", self.db.display().to_string())];
        sources.extend(
            extra_sources
                .iter()
                .map(|p| format!("{:?}", p.display().to_string())),
        );
        format!(
            "mode = \"{mode}\"\n\
             approved = [\"EEA\"]\n\
             unknown = \"{unknown}\"\n\
             {top}\n\
             [geoip]\n\
             sources = [{}]\n\
             [scope]\n\
             cgroups = [{}]\n\
             [metrics]\n\
             listen = \"127.0.0.1:0\"\n\
             [agent]\n\
             pin_dir = {:?}\n\
             run_dir = {:?}\n\
             [audit]\n\
             file = {:?}\n\
             {tail}\n",
            sources.join(", "),
            cgroups
                .iter()
                .map(|c| format!("{:?}", c.display().to_string()))
                .collect::<Vec<_>>()
                .join(", "),
            self.pin_dir.display().to_string(),
            self.run_dir().display().to_string(),
            self.audit_log().display().to_string(),
        )
    }

    /// The running agent's `enforcer status --json`, through its control
    /// socket; panics with the error when it does not answer.
    pub fn status(&self) -> serde_json::Value {
        let out = crate::agent::enforcer_at(&self.control_socket(), &["status", "--json"]);
        assert!(
            out.status.success(),
            "status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status is JSON")
    }

    /// The agent's runtime directory (control socket, runtime modes), in
    /// the scenario's scratch directory.
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// The agent's audit log.
    pub fn audit_log(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    /// The agent's control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.run_dir().join(enforcer::paths::CONTROL_SOCKET_NAME)
    }

    /// Where [`Scenario::events_table`] sends events.
    pub fn events_file(&self) -> PathBuf {
        self.dir.path().join("events.jsonl")
    }

    /// An `[events]` table writing to [`Scenario::events_file`], for
    /// `config_with`'s `tail`.
    pub fn events_table(&self, rate_per_cpu: u32, burst: u32) -> String {
        format!(
            "[events]\nfile = {:?}\nrate_per_cpu = {rate_per_cpu}\nburst = {burst}\n",
            self.events_file().display().to_string()
        )
    }

    /// Starts an agent with `config`; panics with its log if it fails.
    pub fn start(&self, config: &str) -> Agent {
        Agent::start(self.dir.path(), config, &self.pin_dir)
            .unwrap_or_else(|f| panic!("agent failed to start ({}):\n{}", f.status, f.stderr))
    }
}

/// The last resort: a test that failed half-way may leave its pin
/// directory (an agent that should have failed cleanly but did not). It is
/// removed here, after the test's own assertions have run, and said.
impl Drop for Scenario {
    fn drop(&mut self) {
        if self.pin_dir.exists() {
            eprintln!(
                "scenario {}: removing the pin directory left behind: {}",
                self.sb.id,
                self.pin_dir.display()
            );
            cleanup_uninstall(&self.pin_dir);
            let _ = fs::remove_dir_all(&self.pin_dir);
        }
    }
}

impl Default for Scenario {
    fn default() -> Self {
        Self::new()
    }
}

/// `::ffff:a.b.c.d`.
pub fn mapped(v4: Ipv4Addr) -> IpAddr {
    IpAddr::V6(v4.to_ipv6_mapped())
}

/// The sandbox addresses, for convenience in tests.
pub use addr::*;

/// Where `cargo xtask geoip fetch` put the real databases, if anywhere.
pub fn real_geoip(file: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("EE_GEOIP_DIR")?;
    let path = PathBuf::from(dir).join(file);
    path.exists().then_some(path)
}
