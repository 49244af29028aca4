//! Running real clients (`ee-probe`) inside a sandbox: connects, held
//! connections, transfers, TCP Fast Open and raw ICMP echo.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use serde::Deserialize;

use crate::sandbox::{PORT, Sandbox, enter, probe_binary};

/// The sandbox server's TCP echo port (Fast Open enabled).
pub const ECHO_PORT: u16 = PORT + 1;

/// The result of one attempt.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Attempt {
    pub ok: bool,
    #[serde(default)]
    pub errno: Option<i32>,
    #[serde(default)]
    pub error: Option<String>,
    /// The probe process's pid.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Bytes echoed back, for the commands that wait for an echo.
    #[serde(default)]
    pub echoed: Option<u64>,
}

impl Attempt {
    /// Refused by the datapath: connect()/send() failed with EPERM.
    pub fn refused(&self) -> bool {
        self.errno == Some(libc::EPERM)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    /// connect() then send().
    Udp,
    /// sendto() on an unconnected socket.
    UdpSendto,
}

impl Proto {
    fn arg(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::UdpSendto => "udp-sendto",
        }
    }
}

/// Where and as whom a probe runs: the sandbox's client namespace, in a
/// cgroup (the client cgroup by default), as root or another user.
#[derive(Clone)]
pub struct Runner<'a> {
    sb: &'a Sandbox,
    cgroup: Option<&'a Path>,
    uid: Option<u32>,
}

impl<'a> Runner<'a> {
    /// In the client cgroup, as root.
    pub fn new(sb: &'a Sandbox) -> Self {
        Runner {
            sb,
            cgroup: Some(&sb.cgroup),
            uid: None,
        }
    }

    /// In another cgroup (`None`: stay in the test's own, outside the scope).
    pub fn in_cgroup(mut self, cgroup: Option<&'a Path>) -> Self {
        self.cgroup = cgroup;
        self
    }

    /// As this uid and gid (set after joining the cgroup and namespace).
    pub fn as_user(mut self, uid: u32) -> Self {
        self.uid = Some(uid);
        self
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(probe_binary());
        enter(&mut cmd, &self.sb.client_ns, self.cgroup);
        if let Some(uid) = self.uid {
            // Not Command::uid: std drops privileges before running pre_exec
            // closures, and joining the cgroup and namespace needs root. The
            // closures run in order, so this one runs after `enter`'s.
            // SAFETY: only async-signal-safe calls (setgroups, setgid, setuid).
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(uid) != 0
                        || libc::setuid(uid) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.args(args);
        cmd
    }

    /// Runs `ee-probe args` to completion; one [`Attempt`] per output line.
    pub fn run(&self, args: &[&str]) -> Vec<Attempt> {
        let out = self.command(args).output().expect("run ee-probe");
        assert!(
            out.status.success(),
            "ee-probe {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(parse_line)
            .collect()
    }

    /// `count` attempts of `proto` to `dst`.
    pub fn connect(&self, proto: Proto, dst: SocketAddr, count: u32) -> Vec<Attempt> {
        let got = self.run(&[
            "connect",
            proto.arg(),
            &dst.ip().to_string(),
            &dst.port().to_string(),
            &count.to_string(),
        ]);
        assert_eq!(got.len(), count as usize, "one line per attempt");
        got
    }

    /// `count` ICMP echo requests over a raw socket.
    pub fn ping(&self, ip: IpAddr, count: u16) -> Vec<Attempt> {
        let got = self.run(&["ping", &ip.to_string(), &count.to_string()]);
        assert_eq!(got.len(), usize::from(count), "one line per request");
        got
    }

    /// Sends `n` bytes to the echo port and reads them back.
    pub fn transfer(&self, ip: IpAddr, n: usize) -> Attempt {
        self.single(&[
            "transfer",
            &ip.to_string(),
            &ECHO_PORT.to_string(),
            &n.to_string(),
        ])
    }

    /// `n` bytes in a Fast Open SYN to the echo port, then waits for the echo.
    pub fn tfo(&self, ip: IpAddr, n: usize) -> Attempt {
        self.single(&[
            "tfo",
            &ip.to_string(),
            &ECHO_PORT.to_string(),
            &n.to_string(),
        ])
    }

    fn single(&self, args: &[&str]) -> Attempt {
        let mut got = self.run(args);
        assert_eq!(got.len(), 1, "one result line from ee-probe {args:?}");
        got.remove(0)
    }

    /// Opens a TCP connection to the echo port and keeps it open.
    pub fn hold(&self, ip: IpAddr) -> Held {
        let mut child = self
            .command(&["hold", &ip.to_string(), &ECHO_PORT.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn ee-probe hold");
        let stdin = child.stdin.take().expect("hold stdin");
        let stdout = BufReader::new(child.stdout.take().expect("hold stdout"));
        let mut held = Held {
            child,
            stdin,
            stdout,
            connected: None,
        };
        held.connected = Some(held.next_line());
        held
    }
}

fn parse_line(l: &str) -> Attempt {
    serde_json::from_str(l).unwrap_or_else(|e| panic!("bad ee-probe line {l:?}: {e}"))
}

/// A TCP connection held open by an `ee-probe hold` process.
pub struct Held {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    connected: Option<Attempt>,
}

impl Held {
    /// The connect result.
    pub fn connected(&self) -> &Attempt {
        self.connected.as_ref().expect("read at spawn")
    }

    /// The probe's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `n` bytes on the held connection and waits (2 s) for the echo.
    pub fn send(&mut self, n: usize) -> Attempt {
        writeln!(self.stdin, "send {n}").expect("write to ee-probe hold");
        self.stdin.flush().expect("flush ee-probe hold");
        self.next_line()
    }

    fn next_line(&mut self) -> Attempt {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .expect("read ee-probe hold");
        assert!(n > 0, "ee-probe hold exited early");
        parse_line(line.trim())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes `count` attempts from the sandbox's client cgroup to `ip`:[`PORT`].
pub fn attempts(sb: &Sandbox, proto: Proto, ip: IpAddr, count: u32) -> Vec<Attempt> {
    attempts_to(sb, proto, SocketAddr::new(ip, PORT), count, true)
}

/// Like [`attempts`], with any port, inside or outside the client cgroup.
pub fn attempts_to(
    sb: &Sandbox,
    proto: Proto,
    dst: SocketAddr,
    count: u32,
    in_cgroup: bool,
) -> Vec<Attempt> {
    let cgroup = in_cgroup.then_some(sb.cgroup.as_path());
    Runner::new(sb).in_cgroup(cgroup).connect(proto, dst, count)
}

/// One attempt.
pub fn attempt(sb: &Sandbox, proto: Proto, ip: IpAddr) -> Attempt {
    attempts(sb, proto, ip, 1).remove(0)
}
