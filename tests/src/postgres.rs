//! PostgreSQL servers as the storage host's peers: real `postgres`
//! processes (this host's PostgreSQL 15, Debian's `postgresql-15`) in the
//! sandbox's server namespace, each listening on one sandbox address, with
//! a `user_rows` table the storage host writes into. What a peer holds is
//! the oracle of "did user data leave": a row is there or it is not.

use std::{
    fs,
    net::Ipv4Addr,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::sandbox::{Sandbox, enter, sh};

/// The port every peer listens on (each on its own address).
pub const PORT: u16 = 5432;

/// The newest PostgreSQL server binaries installed on this host.
pub fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

/// One PostgreSQL server in the sandbox's server namespace.
pub struct Peer {
    pub addr: Ipv4Addr,
    ns: String,
    bin: PathBuf,
    dir: tempfile::TempDir,
    server: Option<Child>,
}

impl Peer {
    /// Initialises a cluster, starts it on `addr`, creates `user_rows`.
    pub fn start(sb: &Sandbox, addr: Ipv4Addr) -> Peer {
        let bin = bin_dir().expect("PostgreSQL server binaries (Debian's postgresql-15)");
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-pg-", sb.id))
            .tempdir_in("/var/tmp")
            .expect("peer directory");
        // initdb refuses to run as root; the cluster belongs to postgres.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        sh(
            "chown",
            &["postgres:postgres", &dir.path().display().to_string()],
        );
        let data = dir.path().join("data");
        let data_s = data.display().to_string();
        sh(
            "runuser",
            &[
                "-u",
                "postgres",
                "--",
                &bin.join("initdb").display().to_string(),
                "--no-sync",
                "--auth=trust",
                "--username=postgres",
                "-D",
                &data_s,
            ],
        );
        // Trust the sandbox's network: the storage host connects from it.
        let hba = data.join("pg_hba.conf");
        let mut text = fs::read_to_string(&hba).expect("pg_hba.conf");
        text.push_str("host all all 198.51.100.0/24 trust\n");
        fs::write(&hba, text).expect("pg_hba.conf");
        let mut peer = Peer {
            addr,
            ns: sb.server_ns.clone(),
            bin,
            dir,
            server: None,
        };
        let mut cmd = Command::new(peer.bin.join("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .arg("-c")
            .arg(format!("listen_addresses={addr}"))
            .arg("-c")
            .arg(format!("port={PORT}"))
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                peer.dir.path().display()
            ))
            .args(["-c", "fsync=off", "-c", "log_min_messages=warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(peer.dir.path().join("server.log")).expect("peer server log"));
        enter(&mut cmd, &peer.ns, None);
        as_postgres(&mut cmd);
        peer.server = Some(cmd.spawn().expect("start postgres"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while peer
            .psql("CREATE TABLE IF NOT EXISTS user_rows (id int, payload text)")
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "peer {addr} did not start: {}",
                fs::read_to_string(peer.dir.path().join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        peer
    }

    /// Runs SQL on the peer (over TCP from inside the server namespace).
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.args(["-qAtX", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-p"])
            .arg(PORT.to_string())
            .arg("-h")
            .arg(self.addr.to_string())
            .args(["-d", "postgres", "-c", sql]);
        enter(&mut cmd, &self.ns, None);
        let out = cmd.output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The ids of the rows that reached this peer.
    pub fn row_ids(&self) -> Vec<i64> {
        let out = self
            .psql("SELECT id FROM user_rows ORDER BY id")
            .unwrap_or_else(|e| panic!("reading rows on peer {}: {e}", self.addr));
        out.lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            // SIGINT: PostgreSQL's fast shutdown.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(server.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = server.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

/// Makes `cmd` run as the `postgres` user. Not `Command::uid`: std changes
/// the uid before the `pre_exec` closures run, and joining the namespace
/// (an earlier closure, [`enter`]) needs root.
fn as_postgres(cmd: &mut Command) {
    let user = nix::unistd::User::from_name("postgres")
        .expect("look up the postgres user")
        .expect("a postgres user (Debian's postgresql-common makes it)");
    let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
    // SAFETY: setgroups/setgid/setuid are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
