//! A sandbox that never touches the host's own network: two network
//! namespaces (client and server) joined by a veth pair created inside them,
//! and a child cgroup for the client processes. Nothing is added to the root
//! namespace. Dropping the sandbox removes everything, also when a test
//! panics; [`sweep_stale`] removes what a killed test process left.
//!
//! Addresses (RFC 5737 / RFC 3849 documentation ranges, never the host's
//! 192.0.2.0/24 nor 203.0.113.0/24): the client is 198.51.100.2 and
//! 2001:db8:1::2; the server answers on every address of [`addr`].

use std::{
    ffi::CString,
    fs::{self, File},
    io::{BufRead as _, BufReader},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// The sandbox's addresses.
pub mod addr {
    use std::net::{Ipv4Addr, Ipv6Addr};

    pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
    pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    /// Mapped to an approved country by the tests' database.
    pub const APPROVED_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
    /// Mapped to a country that is not approved.
    pub const DENIED_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
    /// In no database.
    pub const UNKNOWN_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 30);

    pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
    pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
    pub const APPROVED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);
    pub const DENIED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x20);
    pub const UNKNOWN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x30);

    /// Every address the server side holds.
    pub const SERVER_V4_ALL: [Ipv4Addr; 4] = [SERVER_V4, APPROVED_V4, DENIED_V4, UNKNOWN_V4];
    pub const SERVER_V6_ALL: [Ipv6Addr; 4] = [SERVER_V6, APPROVED_V6, DENIED_V6, UNKNOWN_V6];
}

/// The port `ee-probe serve` listens on (TCP and UDP) in the server namespace.
pub const PORT: u16 = 7000;

/// Prefix of everything a sandbox creates; followed by the creating pid.
pub const PREFIX: &str = "eesb";

/// The client and server ends of a sandbox's veth. Each end only ever
/// exists inside its own sandbox namespace, so the names need not be
/// unique on the host (an interface name has at most 15 bytes: one made
/// of the sandbox id would not fit once a test process has made more than
/// 99 sandboxes with a 7-digit pid).
pub const CLIENT_IF: &str = "eesb-a";
pub const SERVER_IF: &str = "eesb-b";

/// The MAC addresses of the client and server ends of a sandbox's veth.
const CLIENT_MAC: &str = "02:ee:00:00:00:01";
const SERVER_MAC: &str = "02:ee:00:00:00:02";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a command that must succeed; panics with its output otherwise.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    if !out.status.success() {
        panic!(
            "{program} {} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Path of a binary built next to the running executable (the test binary
/// lives in target/<profile>/deps, the binaries in target/<profile>).
pub fn sibling_binary(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing; build it first (`cargo xtask test` does) or set {env}",
        path.display()
    );
    path
}

/// The `ee-probe` binary.
pub fn probe_binary() -> PathBuf {
    sibling_binary("ee-probe", "EE_PROBE_BIN")
}

/// Two namespaces, a veth pair between them, a client cgroup and a server.
pub struct Sandbox {
    /// `eesb<pid>x<n>`: the prefix of every name below.
    pub id: String,
    pub client_ns: String,
    pub server_ns: String,
    /// Absolute path of the client cgroup.
    pub cgroup: PathBuf,
    server: Option<Child>,
}

impl Sandbox {
    /// Creates a sandbox and starts the server. Panics (after cleaning up)
    /// when something cannot be created.
    pub fn new() -> Sandbox {
        sweep_stale();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{PREFIX}{}x{n}", std::process::id());
        let mount = enforcer::paths::cgroup2_mount().expect("cgroup2 mount");
        let mut sb = Sandbox {
            client_ns: format!("{id}c"),
            server_ns: format!("{id}s"),
            cgroup: mount.join(&id),
            id,
            server: None,
        };
        // From here on, Drop cleans up whatever exists.
        sb.build();
        sb.start_server();
        sb
    }

    fn build(&mut self) {
        let (c, s) = (self.client_ns.as_str(), self.server_ns.as_str());
        let (vc, vs) = (CLIENT_IF, SERVER_IF);
        sh("ip", &["netns", "add", c]);
        sh("ip", &["netns", "add", s]);
        // Created inside the client namespace, peer inside the server one:
        // the root namespace never holds either end.
        // Fixed, locally administered MACs (each sandbox is its own link),
        // so the IPv6 neighbours can be pinned below.
        sh(
            "ip",
            &[
                "-n", c, "link", "add", vc, "address", CLIENT_MAC, "type", "veth", "peer", "name",
                vs, "address", SERVER_MAC, "netns", s,
            ],
        );
        sh("ip", &["-n", c, "link", "set", "lo", "up"]);
        sh("ip", &["-n", s, "link", "set", "lo", "up"]);
        sh(
            "ip",
            &[
                "-n",
                c,
                "addr",
                "add",
                &format!("{}/24", addr::CLIENT_V4),
                "dev",
                vc,
            ],
        );
        sh(
            "ip",
            &[
                "-n",
                c,
                "-6",
                "addr",
                "add",
                &format!("{}/64", addr::CLIENT_V6),
                "dev",
                vc,
                "nodad",
            ],
        );
        for a in addr::SERVER_V4_ALL {
            sh(
                "ip",
                &["-n", s, "addr", "add", &format!("{a}/24"), "dev", vs],
            );
        }
        for a in addr::SERVER_V6_ALL {
            sh(
                "ip",
                &[
                    "-n",
                    s,
                    "-6",
                    "addr",
                    "add",
                    &format!("{a}/64"),
                    "dev",
                    vs,
                    "nodad",
                ],
            );
        }
        sh("ip", &["-n", c, "link", "set", vc, "up"]);
        sh("ip", &["-n", s, "link", "set", vs, "up"]);
        // Permanent IPv6 neighbours: on a fresh veth the first neighbour
        // solicitation goes unanswered and resolution waits for the 1 s
        // retransmit, so a test's first IPv6 datagram or echo (which nothing
        // retransmits) was lost. ARP does not have the problem.
        for a in addr::SERVER_V6_ALL {
            let a = a.to_string();
            sh(
                "ip",
                &[
                    "-n",
                    c,
                    "-6",
                    "neigh",
                    "replace",
                    &a,
                    "lladdr",
                    SERVER_MAC,
                    "dev",
                    vc,
                    "nud",
                    "permanent",
                ],
            );
        }
        let client = addr::CLIENT_V6.to_string();
        sh(
            "ip",
            &[
                "-n",
                s,
                "-6",
                "neigh",
                "replace",
                &client,
                "lladdr",
                CLIENT_MAC,
                "dev",
                vs,
                "nud",
                "permanent",
            ],
        );
        fs::create_dir(&self.cgroup)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", self.cgroup.display()));
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

    /// A command that runs in the client namespace and cgroup.
    pub fn client_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.client_command_in(program, true)
    }

    /// A command that runs in the client namespace, inside the client
    /// cgroup or (to show what is out of scope) outside it.
    pub fn client_command_in(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
        in_cgroup: bool,
    ) -> Command {
        let mut cmd = Command::new(program);
        enter(
            &mut cmd,
            &self.client_ns,
            in_cgroup.then_some(self.cgroup.as_path()),
        );
        cmd
    }

    fn kill_cgroup_processes(&self) {
        let procs = self.cgroup.join("cgroup.procs");
        if let Ok(text) = fs::read_to_string(&procs) {
            for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        self.kill_cgroup_processes();
        remove_cgroup(&self.cgroup);
        for ns in [&self.client_ns, &self.server_ns] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Removes a cgroup and the child cgroups a test made inside it (cgroupfs
/// removes only empty directories: children first).
pub fn remove_cgroup(path: &Path) {
    if !path.exists() {
        return;
    }
    if let Ok(entries) = fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    // A killed process leaves the cgroup asynchronously: retry briefly.
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = fs::remove_dir(path) {
        if Instant::now() > deadline {
            eprintln!("warning: cannot remove cgroup {}: {e}", path.display());
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes `cmd` join network namespace `ns` (and cgroup `cgroup`) between
/// fork and exec.
pub fn enter(cmd: &mut Command, ns: &str, cgroup: Option<&Path>) {
    let netns =
        File::open(format!("/run/netns/{ns}")).unwrap_or_else(|e| panic!("open netns {ns}: {e}"));
    if let Some(cgroup) = cgroup {
        join_cgroups(cmd, &[cgroup]);
    }
    // SAFETY: the closure only calls setns(2), async-signal-safe, on an fd
    // opened before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Makes `cmd` move into each of `cgroups` (cgroup v2 or v1 directories)
/// between fork and exec, so its first instruction already runs there.
pub fn join_cgroups(cmd: &mut Command, cgroups: &[&Path]) {
    let procs: Vec<CString> = cgroups
        .iter()
        .map(|c| {
            CString::new(c.join("cgroup.procs").into_os_string().into_encoded_bytes())
                .expect("cgroup path has no NUL")
        })
        .collect();
    // SAFETY: the closure only makes async-signal-safe system calls (open,
    // write, close) on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for p in &procs {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" moves the writing process (cgroup.procs, v1 and v2).
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(err);
                }
            }
            Ok(())
        });
    }
}

/// Removes namespaces, cgroups and pin directories left by sandboxes of
/// test processes that no longer exist (a test killed by a signal cannot
/// run its destructors).
pub fn sweep_stale() {
    crate::container::sweep_stale();
    let dead = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            return false;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        !pid.is_empty() && !Path::new("/proc").join(&pid).exists()
    };
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if dead(name) {
                // Its servers (ee-probe, PostgreSQL peers) outlive a killed
                // test and would keep the namespace alive after `del`.
                if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
                    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                        if let Ok(pid) = pid.parse::<i32>() {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(pid),
                                nix::sys::signal::Signal::SIGKILL,
                            );
                        }
                    }
                }
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }
    if let Ok(mount) = enforcer::paths::cgroup2_mount()
        && let Ok(entries) = fs::read_dir(&mount)
    {
        for e in entries.flatten() {
            if dead(&e.file_name().to_string_lossy()) {
                remove_cgroup(&e.path());
            }
        }
    }
    // Pin directories (removing a link's pin detaches it) and scratch
    // directories, named after the sandbox (the copies of
    // `crate::exec_as` are always in /tmp).
    let mut dirs = vec![PathBuf::from(enforcer::paths::BPFFS), std::env::temp_dir()];
    if !dirs.iter().any(|d| d == Path::new("/tmp")) {
        dirs.push(PathBuf::from("/tmp"));
    }
    for dir in dirs {
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                if dead(&e.file_name().to_string_lossy()) {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }
}
