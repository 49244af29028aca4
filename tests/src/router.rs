//! Forwarded traffic: a "container" network namespace routed through a
//! "router" namespace to a "server" namespace, with the agent running in
//! the router's namespace and deciding, on egress of the router's
//! server-side interface, what the container sends.
//!
//! ```text
//!  container (C)              router (R), forwarding on          server (S)
//!  eesb-c 198.18.0.2/24  ---  eesb-ri 198.18.0.1/24
//!         2001:db8:100::2/64          2001:db8:100::1/64
//!                             eesb.ro 198.51.100.1/24      ---  eesb-s  198.51.100.{10,20,30}/24
//!                                     2001:db8:1::1/64                   2001:db8:1::{10,20,30}/64
//! ```
//!
//! Only documentation and benchmarking ranges (198.18.0.0/15,
//! 198.51.100.0/24, 2001:db8::/32), and nothing in the root namespace:
//! every veth pair is created inside the namespaces (`ip -n`), routes and
//! forwarding exist only in them. Namespaces, the scope cgroup, the pin
//! directory and the scratch directory are named `eesb<pid>xf<n>...`, so
//! [`sweep_stale`] finds what a killed test left; the interfaces live only
//! inside those namespaces and go with them, so their names are short and
//! fixed (and the router's server side has a '.', which pin names cannot).
//!
//! The agent runs in R (setns in pre_exec: it keeps the test's mounts, so
//! bpffs and cgroupfs stay visible). Its metrics listener is on R's
//! loopback, so [`crate::agent::Agent::scrape`] scrapes from a short-lived
//! thread that first joins R with setns ([`in_netns`]): the test process
//! itself never changes namespace, and no helper binary is needed.

use std::{
    fs::{self, File},
    io::{BufRead as _, BufReader},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use nix::sched::{CloneFlags, setns};

use crate::{
    agent::{Agent, StartFailure, cleanup_uninstall},
    probe::Attempt,
    sandbox::{PORT, PREFIX, addr, enter, probe_binary, remove_cgroup, sh, sweep_stale},
    scenario::TEST_DB_CSV,
};

/// The container's interface, in C.
pub const CONTAINER_IF: &str = "eesb-c";
/// The router's container-side interface, in R.
pub const ROUTER_IN: &str = "eesb-ri";
/// The router's server-side interface, in R: the one the agent decides
/// egress on. Its '.' must be encoded in the link's pin name.
pub const ROUTER_OUT: &str = "eesb.ro";
/// The server's interface, in S.
pub const SERVER_IF: &str = "eesb-s";

pub const CONTAINER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const ROUTER_IN_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const CONTAINER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 2);
pub const ROUTER_IN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 1);
/// The container's networks, routed by the server through the router.
pub const CONTAINER_NET_V4: &str = "198.18.0.0/24";
pub const CONTAINER_NET_V6: &str = "2001:db8:100::/64";
/// The router's address on the server side (the sandbox's server address).
pub const ROUTER_OUT_V4: Ipv4Addr = addr::SERVER_V4;
pub const ROUTER_OUT_V6: Ipv6Addr = addr::SERVER_V6;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs `f` on a new thread that has joined network namespace `ns` (a
/// name under /run/netns). A network namespace belongs to a thread, so
/// the rest of the test process stays where it is; the thread ends with
/// `f`. A panic in `f` is the caller's panic.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    std::thread::scope(|scope| {
        let thread = scope.spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns into {path}: {e}"));
            f()
        });
        thread
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Three namespaces, two veth pairs, forwarding in the router, a server,
/// a child cgroup for the agent's scope (nothing runs in it: the traffic
/// under test comes from another namespace), and the agent's files.
pub struct Router {
    /// `eesb<pid>xf<n>`: the prefix of every name below.
    pub id: String,
    pub container_ns: String,
    pub router_ns: String,
    pub server_ns: String,
    /// The agent's scope cgroup (the config needs one; never the root).
    pub cgroup: PathBuf,
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    pub pin_dir: PathBuf,
    /// The agent's events file (JSON lines).
    pub events: PathBuf,
    server: Option<Child>,
}

impl Router {
    /// Builds everything and starts the server. Panics (after cleaning up,
    /// through Drop) when something cannot be created.
    pub fn new() -> Router {
        sweep_stale();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{PREFIX}{}xf{n}", std::process::id());
        let mount = enforcer::paths::cgroup2_mount().expect("cgroup2 mount");
        let dir = tempfile::Builder::new()
            .prefix(&format!("{id}-"))
            .tempdir()
            .expect("scratch directory");
        let db = dir.path().join("test-geo.csv");
        let events = dir.path().join("events.jsonl");
        let mut r = Router {
            container_ns: format!("{id}c"),
            router_ns: format!("{id}r"),
            server_ns: format!("{id}s"),
            cgroup: mount.join(&id),
            pin_dir: PathBuf::from(enforcer::paths::BPFFS).join(&id),
            id,
            dir,
            db,
            events,
            server: None,
        };
        // From here on, Drop cleans up whatever exists.
        fs::write(&r.db, TEST_DB_CSV).expect("write test database");
        r.build();
        r.start_server();
        r
    }

    fn build(&mut self) {
        let (c, r, s) = (
            self.container_ns.as_str(),
            self.router_ns.as_str(),
            self.server_ns.as_str(),
        );
        for ns in [c, r, s] {
            sh("ip", &["netns", "add", ns]);
            sh("ip", &["-n", ns, "link", "set", "lo", "up"]);
            // No duplicate address detection on the interfaces created
            // below (the global addresses are added `nodad` too): their
            // link-local addresses are usable at once.
            sh(
                "ip",
                &[
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.default.accept_dad=0",
                ],
            );
        }
        // Each pair is created inside one namespace with its peer moved
        // straight into the other: the root namespace never holds an end.
        sh(
            "ip",
            &[
                "-n",
                c,
                "link",
                "add",
                CONTAINER_IF,
                "type",
                "veth",
                "peer",
                "name",
                ROUTER_IN,
                "netns",
                r,
            ],
        );
        sh(
            "ip",
            &[
                "-n", r, "link", "add", ROUTER_OUT, "type", "veth", "peer", "name", SERVER_IF,
                "netns", s,
            ],
        );
        let v4 = |ns: &str, a: Ipv4Addr, dev: &str| {
            sh(
                "ip",
                &["-n", ns, "addr", "add", &format!("{a}/24"), "dev", dev],
            );
        };
        let v6 = |ns: &str, a: Ipv6Addr, dev: &str| {
            sh(
                "ip",
                &[
                    "-n",
                    ns,
                    "-6",
                    "addr",
                    "add",
                    &format!("{a}/64"),
                    "dev",
                    dev,
                    "nodad",
                ],
            );
        };
        v4(c, CONTAINER_V4, CONTAINER_IF);
        v6(c, CONTAINER_V6, CONTAINER_IF);
        v4(r, ROUTER_IN_V4, ROUTER_IN);
        v6(r, ROUTER_IN_V6, ROUTER_IN);
        v4(r, ROUTER_OUT_V4, ROUTER_OUT);
        v6(r, ROUTER_OUT_V6, ROUTER_OUT);
        for a in [addr::APPROVED_V4, addr::DENIED_V4, addr::UNKNOWN_V4] {
            v4(s, a, SERVER_IF);
        }
        for a in [addr::APPROVED_V6, addr::DENIED_V6, addr::UNKNOWN_V6] {
            v6(s, a, SERVER_IF);
        }
        for (ns, dev) in [
            (c, CONTAINER_IF),
            (r, ROUTER_IN),
            (r, ROUTER_OUT),
            (s, SERVER_IF),
        ] {
            sh("ip", &["-n", ns, "link", "set", dev, "up"]);
        }
        // Routes only inside the namespaces: the container's default route
        // is the router, the server reaches the container through it.
        sh(
            "ip",
            &[
                "-n",
                c,
                "route",
                "add",
                "default",
                "via",
                &ROUTER_IN_V4.to_string(),
            ],
        );
        sh(
            "ip",
            &[
                "-n",
                c,
                "-6",
                "route",
                "add",
                "default",
                "via",
                &ROUTER_IN_V6.to_string(),
            ],
        );
        sh(
            "ip",
            &[
                "-n",
                s,
                "route",
                "add",
                CONTAINER_NET_V4,
                "via",
                &ROUTER_OUT_V4.to_string(),
            ],
        );
        sh(
            "ip",
            &[
                "-n",
                s,
                "-6",
                "route",
                "add",
                CONTAINER_NET_V6,
                "via",
                &ROUTER_OUT_V6.to_string(),
            ],
        );
        // Forwarding in the router's namespace only (these sysctls are per
        // namespace; `ip netns exec` is fine for a command that needs no
        // bpffs).
        for key in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            sh("ip", &["netns", "exec", r, "sysctl", "-qw", key]);
        }
        fs::create_dir(&self.cgroup)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", self.cgroup.display()));
        // The first IPv6 exchange through a fresh router takes about a
        // second (neighbour discovery on new links), longer than the
        // tests' timeouts; one ping each way to the addresses no test uses
        // settles it, before any agent runs, and checks the routing.
        for ip in [IpAddr::V4(addr::UNKNOWN_V4), IpAddr::V6(addr::UNKNOWN_V6)] {
            let family = if ip.is_ipv4() { "-4" } else { "-6" };
            let ok = self
                .command_in(&self.container_ns, "ping")
                .args([family, "-n", "-c1", "-W5", &ip.to_string()])
                .stdout(Stdio::null())
                .status()
                .expect("run ping")
                .success();
            assert!(ok, "the container cannot reach {ip} through the router");
        }
    }

    fn start_server(&mut self) {
        let mut cmd = Command::new(probe_binary());
        cmd.args(["serve", &PORT.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        enter(&mut cmd, &self.server_ns, None);
        let mut child = cmd.spawn().expect("spawn ee-probe serve");
        let stdout = child.stdout.take().expect("server stdout");
        self.server = Some(child);
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read server readiness");
        assert_eq!(line.trim(), "ready", "ee-probe serve did not start");
    }

    /// A config: `mode`, the EEA approved, unknown destinations allowed, the
    /// test database, scoped to the (empty) test cgroup, deciding forwarded
    /// traffic on `interfaces`, events into [`Router::events`].
    pub fn config(&self, mode: &str, interfaces: &[&str]) -> String {
        let interfaces: Vec<String> = interfaces.iter().map(|i| format!("{i:?}")).collect();
        format!(
            "mode = \"{mode}\"\n\
             approved = [\"EEA\"]\n\
             unknown = \"allow\"\n\
             [geoip]\n\
             sources = [{:?}]\n\
             [scope]\n\
             cgroups = [{:?}]\n\
             interfaces = [{}]\n\
             [metrics]\n\
             listen = \"127.0.0.1:0\"\n\
             [agent]\n\
             pin_dir = {:?}\n\
             run_dir = {:?}\n\
             [audit]\n\
             file = {:?}\n\
             [events]\n\
             file = {:?}\n",
            self.db.display().to_string(),
            self.cgroup.display().to_string(),
            interfaces.join(", "),
            self.pin_dir.display().to_string(),
            self.dir.path().join("run").display().to_string(),
            self.dir.path().join("audit.jsonl").display().to_string(),
            self.events.display().to_string(),
        )
    }

    /// Writes `config` to `<dir>/<name>` and returns the path.
    pub fn write_config(&self, name: &str, config: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, config).expect("write config");
        path
    }

    /// Starts the agent in the router's namespace with the config file at
    /// `path`; a start that fails returns the failure and cleans up nothing.
    pub fn try_start(&self, path: &Path) -> Result<Agent, StartFailure> {
        Agent::start_with_in(path, &self.pin_dir, Some(&self.router_ns))
    }

    /// Starts the agent in the router's namespace with `config` (written
    /// to `enforcer.toml`); panics with its log if it fails.
    pub fn start(&self, config: &str) -> Agent {
        let path = self.write_config("enforcer.toml", config);
        self.try_start(&path)
            .unwrap_or_else(|f| panic!("agent failed to start ({}):\n{}", f.status, f.stderr))
    }

    /// A command that runs in namespace `ns` (no cgroup change).
    pub fn command_in(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        enter(&mut cmd, ns, None);
        cmd
    }

    /// `count` attempts of `ee-probe connect <proto>` from the container
    /// to `ip`:[`PORT`] (proto: tcp, udp-echo, ...).
    pub fn probe(&self, proto: &str, ip: IpAddr, count: u32) -> Vec<Attempt> {
        let out = self
            .command_in(&self.container_ns, probe_binary())
            .args([
                "connect",
                proto,
                &ip.to_string(),
                &PORT.to_string(),
                &count.to_string(),
            ])
            .output()
            .expect("run ee-probe connect");
        assert!(
            out.status.success(),
            "ee-probe failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let attempts: Vec<Attempt> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad ee-probe line {l:?}: {e}"))
            })
            .collect();
        assert_eq!(attempts.len(), count as usize, "one line per attempt");
        attempts
    }

    /// One `ping -c1 -W1` from namespace `ns`; whether the reply came.
    pub fn ping_from(&self, ns: &str, ip: IpAddr) -> bool {
        let family = if ip.is_ipv4() { "-4" } else { "-6" };
        let out: Output = self
            .command_in(ns, "ping")
            .args([family, "-n", "-c1", "-W1", &ip.to_string()])
            .output()
            .expect("run ping");
        out.status.success()
    }

    /// One ping from the container.
    pub fn ping(&self, ip: IpAddr) -> bool {
        self.ping_from(&self.container_ns, ip)
    }

    /// How many tcx egress programs the kernel has on `iface` in the
    /// router's namespace (asked directly, not through the agent).
    pub fn tcx_programs(&self, iface: &str) -> usize {
        use aya::programs::{SchedClassifier, TcAttachType};
        in_netns(&self.router_ns, || {
            SchedClassifier::query_tcx(iface, TcAttachType::Egress)
                .unwrap_or_else(|e| panic!("query tcx egress on {iface}: {e}"))
                .1
                .len()
        })
    }

    /// The agent's link pins (file names).
    pub fn link_pins(&self) -> Vec<String> {
        let dir = enforcer::paths::PinLayout::new(&self.pin_dir).links;
        let mut names: Vec<String> = fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Every event line written so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event {l:?}: {e}")))
            .collect()
    }
}

impl Default for Router {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        // The last resort: an agent dropped earlier uninstalls its own pins;
        // this catches a test that failed before it could.
        if self.pin_dir.exists() {
            eprintln!(
                "router {}: removing the pin directory left behind: {}",
                self.id,
                self.pin_dir.display()
            );
            cleanup_uninstall(&self.pin_dir);
            let _ = fs::remove_dir_all(&self.pin_dir);
        }
        for ns in [&self.container_ns, &self.router_ns, &self.server_ns] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        remove_cgroup(&self.cgroup);
    }
}
