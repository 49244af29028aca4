//! A booted Debian 12 machine with a real systemd 252: the storage host of
//! the package tests.
//!
//! `systemd-nspawn --boot` on an overlay of the cached root file system
//! (`cargo xtask rootfs`, passed as `EE_ROOTFS`), so the cache is never
//! written and a reboot keeps the machine's disk (the overlay's upper
//! directory) like a real one. What it must never do to this host:
//!
//! - it runs in the network namespace of the test's [`Sandbox`] (its
//!   client side, `--network-namespace-path`), never with `--network-veth`,
//!   which would add an interface to the root namespace;
//! - with no systemd on the host, nspawn makes `payload/` and
//!   `supervisor/` cgroups inside the cgroup it is started from, in the
//!   cgroup2 hierarchy and in the v1 `name=systemd` one: it is started
//!   from a child of the sandbox's cgroup and a child made in the v1
//!   hierarchy, and [`Machine`]'s drop removes both trees;
//! - `--capability=all --system-call-filter=bpf`: without the second,
//!   nspawn's seccomp filter refuses `bpf()` and neither the agent nor
//!   systemd's own BPF features work inside.
//!
//! Commands run inside with `nsenter --all` into the machine's init, so
//! `systemctl`, `dpkg` and `psql` see the machine's mounts, pid and
//! network namespaces.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::sandbox::{Sandbox, join_cgroups, remove_cgroup, sh};

/// The cached root file system, if `cargo xtask rootfs` built one.
pub fn rootfs() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("EE_ROOTFS")?);
    dir.join("usr/lib/systemd/systemd").exists().then_some(dir)
}

/// Where the v1 `name=systemd` hierarchy is mounted, if it is (hybrid
/// hosts): nspawn makes cgroups there too.
fn systemd_v1_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut r = right.split_whitespace();
        let (fstype, _src, opts) = (r.next()?, r.next()?, r.next()?);
        let is_systemd = fstype == "cgroup" && opts.split(',').any(|o| o == "name=systemd");
        let mount = left.split_whitespace().nth(4)?;
        is_systemd.then(|| PathBuf::from(mount))
    })
}

/// A booted machine; powered off and removed on drop.
pub struct Machine {
    /// The machine name (also the overlay's directory name).
    pub name: String,
    /// The machine's root directory as this host sees it (the overlay).
    pub root: PathBuf,
    netns: String,
    lower: PathBuf,
    dir: tempfile::TempDir,
    /// The cgroup2 cgroup nspawn is started from (inside the sandbox's).
    cg2: PathBuf,
    /// Its v1 `name=systemd` counterpart, on hybrid hosts.
    cg1: Option<PathBuf>,
    nspawn: Option<Child>,
    boots: u32,
}

impl Machine {
    /// Boots a machine from the cached root file system in the sandbox's
    /// client network namespace and waits until systemd reports the boot
    /// finished. `prepare` writes files into the machine's disk before the
    /// first boot.
    pub fn boot(sb: &Sandbox, rootfs: &Path, prepare: impl FnOnce(&Path)) -> Machine {
        let name = format!("{}m", sb.id);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in("/var/tmp")
            .expect("machine scratch directory");
        let root = dir.path().join("root");
        for d in ["upper", "work", "root"] {
            fs::create_dir(dir.path().join(d)).expect("overlay directories");
        }
        let cg2 = sb.cgroup.join("machine");
        let cg1 = systemd_v1_mount().map(|m| m.join(&sb.id));
        let mut m = Machine {
            name,
            root,
            netns: sb.client_ns.clone(),
            lower: rootfs.to_owned(),
            dir,
            cg2,
            cg1,
            nspawn: None,
            boots: 0,
        };
        // From here on, Drop removes what exists.
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            m.lower.display(),
            m.dir.path().join("upper").display(),
            m.dir.path().join("work").display()
        );
        sh(
            "mount",
            &[
                "-t",
                "overlay",
                "overlay",
                "-o",
                &opts,
                &m.root.display().to_string(),
            ],
        );
        prepare(&m.root);
        m.start();
        m
    }

    /// Starts nspawn (again) and waits for the boot to finish.
    fn start(&mut self) {
        fs::create_dir_all(&self.cg2).expect("machine cgroup (cgroup2)");
        if let Some(cg1) = &self.cg1 {
            fs::create_dir_all(cg1).expect("machine cgroup (name=systemd)");
        }
        self.boots += 1;
        let log = fs::File::create(self.dir.path().join(format!("console-{}.log", self.boots)))
            .expect("console log");
        let mut cmd = Command::new("systemd-nspawn");
        cmd.arg("--directory")
            .arg(&self.root)
            .args([
                "--boot",
                "--register=no",
                "--keep-unit",
                "--console=passive",
                "--capability=all",
                "--system-call-filter=bpf",
                "--link-journal=no",
            ])
            .arg(format!("--machine={}", self.name))
            .arg(format!(
                "--network-namespace-path=/run/netns/{}",
                self.netns
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("console log"))
            .stderr(log);
        let cgroups: Vec<&Path> = std::iter::once(self.cg2.as_path())
            .chain(self.cg1.as_deref())
            .collect();
        join_cgroups(&mut cmd, &cgroups);
        self.nspawn = Some(cmd.spawn().expect("start systemd-nspawn"));
        let started = Instant::now();
        // `is-system-running --wait` needs the machine's init to be up
        // and its bus to answer; retry until it does.
        loop {
            let out = self.try_exec(&["systemctl", "is-system-running", "--wait"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if state == "running" || state == "degraded" {
                if state == "degraded" {
                    let failed = self.exec(&["systemctl", "--failed", "--no-legend"]);
                    eprintln!("machine {} booted degraded: {failed}", self.name);
                }
                break;
            }
            if let Some(child) = self.nspawn.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "systemd-nspawn exited during boot ({status}): {}",
                    self.console()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "machine {} did not finish booting in 90 s (state {state:?}): {}",
                self.name,
                self.console()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!(
            "machine {} booted (boot {}) in {:.1} s",
            self.name,
            self.boots,
            started.elapsed().as_secs_f64()
        );
    }

    /// The console output of the current boot.
    pub fn console(&self) -> String {
        fs::read_to_string(self.dir.path().join(format!("console-{}.log", self.boots)))
            .unwrap_or_default()
    }

    /// The pid (in this host's namespace) of the machine's init.
    fn leader(&self) -> Option<u32> {
        let nspawn = self.nspawn.as_ref()?.id();
        // nspawn's child (through an intermediate process that exits) is
        // the machine's pid 1; it is the process whose parent is nspawn.
        let entries = fs::read_dir("/proc").ok()?;
        for e in entries.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // Fields after the `(comm)`: state, ppid, ...
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let ppid = rest
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(nspawn) {
                return Some(pid);
            }
        }
        None
    }

    /// Runs a command inside the machine; returns its output whatever the
    /// exit status.
    pub fn try_exec(&self, args: &[&str]) -> Output {
        let Some(leader) = self.leader() else {
            return Output {
                status: std::os::unix::process::ExitStatusExt::from_raw(1 << 8),
                stdout: Vec::new(),
                stderr: b"machine has no init yet".to_vec(),
            };
        };
        Command::new("nsenter")
            .arg(format!("--target={leader}"))
            .arg("--all")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
    }

    /// Runs a command inside the machine; panics unless it succeeds.
    pub fn exec(&self, args: &[&str]) -> String {
        let out = self.try_exec(args);
        if !out.status.success() {
            panic!(
                "in machine {}: `{}` failed ({}): {}{}",
                self.name,
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `sh -c script` inside the machine; panics unless it succeeds.
    pub fn sh(&self, script: &str) -> String {
        self.exec(&["sh", "-c", script])
    }

    /// A file of the machine's disk, as this host sees it.
    pub fn path(&self, inside: &str) -> PathBuf {
        self.root.join(inside.trim_start_matches('/'))
    }

    /// `systemctl reboot` inside, then boots the same disk again: what is
    /// in memory (bpffs pins, /run) is gone, the disk is kept.
    pub fn reboot(&mut self) {
        let _ = self.try_exec(&["systemctl", "reboot"]);
        self.wait_exit(Duration::from_secs(60));
        self.remove_cgroups();
        self.start();
    }

    /// Waits for nspawn to exit (the machine powered off or rebooted);
    /// kills it after `timeout`.
    fn wait_exit(&mut self, timeout: Duration) {
        let Some(mut child) = self.nspawn.take() else {
            return;
        };
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                _ => {
                    eprintln!("machine {} did not stop in time: killing it", self.name);
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
    }

    /// Kills whatever is left in the machine's cgroups and removes them, in
    /// both hierarchies, and nspawn's propagation directory on this host.
    fn remove_cgroups(&self) {
        // cgroup.kill (Linux 5.14) kills the whole subtree at once.
        let _ = fs::write(self.cg2.join("cgroup.kill"), "1");
        remove_cgroup(&self.cg2);
        if let Some(cg1) = &self.cg1 {
            remove_cgroup(cg1);
        }
        let _ = fs::remove_dir(Path::new("/run/systemd/nspawn/propagate").join(&self.name));
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if self.nspawn.is_some() {
            let _ = self.try_exec(&["systemctl", "poweroff"]);
            self.wait_exit(Duration::from_secs(30));
        }
        self.remove_cgroups();
        let _ = Command::new("umount")
            .arg(&self.root)
            .stderr(Stdio::null())
            .status();
    }
}

/// Removes what machines and peers of test processes that no longer exist
/// left (called by [`crate::sandbox::sweep_stale`] first, so the machine's
/// processes are gone before its cgroups are removed) (a killed test runs no destructor): the machine's processes and
/// cgroups in both hierarchies, the overlay mount and its directory, and
/// PostgreSQL peers still running from a scratch directory.
pub fn sweep_stale() {
    let dead = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix(crate::sandbox::PREFIX) else {
            return false;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        !pid.is_empty() && !Path::new("/proc").join(&pid).exists()
    };
    if let Ok(mount) = enforcer::paths::cgroup2_mount()
        && let Ok(entries) = fs::read_dir(&mount)
    {
        for e in entries.flatten() {
            if dead(&e.file_name().to_string_lossy()) {
                let _ = fs::write(e.path().join("machine/cgroup.kill"), "1");
            }
        }
    }
    if let Some(v1) = systemd_v1_mount()
        && let Ok(entries) = fs::read_dir(&v1)
    {
        for e in entries.flatten() {
            if dead(&e.file_name().to_string_lossy()) {
                remove_cgroup(&e.path());
            }
        }
    }
    // nspawn's propagation directory of a machine it did not stop itself.
    if let Ok(entries) = fs::read_dir("/run/systemd/nspawn/propagate") {
        for e in entries.flatten() {
            if dead(&e.file_name().to_string_lossy()) {
                let _ = fs::remove_dir(e.path());
            }
        }
    }
    if let Ok(entries) = fs::read_dir("/var/tmp") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !dead(&name) {
                continue;
            }
            // A peer's postmaster.pid names its server process.
            if let Ok(pidfile) = fs::read_to_string(e.path().join("data/postmaster.pid"))
                && let Some(pid) = pidfile
                    .lines()
                    .next()
                    .and_then(|l| l.trim().parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGQUIT,
                );
            }
            let _ = Command::new("umount")
                .arg(e.path().join("root"))
                .stderr(Stdio::null())
                .status();
            let _ = fs::remove_dir_all(e.path());
        }
    }
}
