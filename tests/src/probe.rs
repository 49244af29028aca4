//! Running real clients (`ee-probe`) inside a sandbox: connects, held
//! connections, transfers, TCP Fast Open, raw ICMP echo, and a client that
//! connects continuously ([`Stream`]).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::Deserialize;

use crate::{
    exec_as::ReachableCopy,
    sandbox::{PORT, Sandbox, enter, probe_binary},
};

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
    /// For another uid: the probe copied where that uid can exec it.
    copy: Option<Arc<ReachableCopy>>,
}

impl<'a> Runner<'a> {
    /// In the client cgroup, as root.
    pub fn new(sb: &'a Sandbox) -> Self {
        Runner {
            sb,
            cgroup: Some(&sb.cgroup),
            uid: None,
            copy: None,
        }
    }

    /// In another cgroup (`None`: stay in the test's own, outside the scope).
    pub fn in_cgroup(mut self, cgroup: Option<&'a Path>) -> Self {
        self.cgroup = cgroup;
        self
    }

    /// As this uid and gid (set after joining the cgroup and namespace),
    /// running a copy of the probe that uid can reach (see
    /// [`ReachableCopy`]), removed when the last clone of this runner is.
    pub fn as_user(mut self, uid: u32) -> Self {
        self.uid = Some(uid);
        if self.copy.is_none() {
            self.copy = Some(Arc::new(ReachableCopy::of(&probe_binary())));
        }
        self
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = match &self.copy {
            Some(copy) => Command::new(copy.path()),
            None => Command::new(probe_binary()),
        };
        enter(&mut cmd, &self.sb.client_ns, self.cgroup);
        if let Some(uid) = self.uid {
            // After `enter`'s closure: joining the cgroup and namespace
            // needs root.
            crate::exec_as::as_user(&mut cmd, uid, &[]);
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

impl Runner<'_> {
    /// Starts `ee-probe stream`: TCP attempts (connect, then a nonce sent to
    /// the echo port and read back) back to back, round-robin over `dsts`
    /// (use [`ECHO_PORT`]), until [`Stream::stop`], `max` time or
    /// `max_count` attempts.
    pub fn stream(&self, dsts: &[SocketAddr], max: Duration, max_count: u64) -> Stream {
        let mut args = vec![max.as_millis().to_string(), max_count.to_string()];
        args.extend(dsts.iter().map(SocketAddr::to_string));
        let mut all = vec!["stream"];
        all.extend(args.iter().map(String::as_str));
        let mut child = self
            .command(&all)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn ee-probe stream");
        let stdin = child.stdin.take().expect("stream stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stream stdout"));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let attempts = Arc::clone(&attempts);
            std::thread::spawn(move || {
                for line in stdout.lines() {
                    let Ok(line) = line else { break };
                    let a: StreamAttempt = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("bad ee-probe stream line {line:?}: {e}"));
                    attempts.lock().unwrap_or_else(|e| e.into_inner()).push(a);
                }
            })
        };
        Stream {
            child,
            stdin: Some(stdin),
            attempts,
            reader: Some(reader),
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the clock `ee-probe stream` stamps its
/// attempts with: a test records its own instants (a kill, a reload) with
/// it to order them against the attempts.
pub fn monotonic_ns() -> u64 {
    let ts =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// One attempt of `ee-probe stream`: TCP connect(), a nonce sent and
/// echoed back.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct StreamAttempt {
    /// Position in the stream, from 0.
    pub seq: u64,
    pub dst: SocketAddr,
    pub ok: bool,
    #[serde(default)]
    pub errno: Option<i32>,
    #[serde(default)]
    pub error: Option<String>,
    /// What failed: `connect` or `exchange`.
    #[serde(default)]
    pub stage: Option<String>,
    /// It failed by timing out: the handshake or the echo never came.
    #[serde(default)]
    pub timeout: bool,
    /// CLOCK_MONOTONIC (see [`monotonic_ns`]) before connect() and after
    /// the last read.
    pub start_ns: u64,
    pub end_ns: u64,
}

impl StreamAttempt {
    /// connect() refused by the datapath (EPERM).
    pub fn refused(&self) -> bool {
        !self.ok && self.errno == Some(libc::EPERM) && self.stage.as_deref() == Some("connect")
    }
}

/// A running `ee-probe stream` and the attempts it reported so far.
/// Dropping it kills the probe.
pub struct Stream {
    child: Child,
    stdin: Option<ChildStdin>,
    attempts: Arc<Mutex<Vec<StreamAttempt>>>,
    reader: Option<JoinHandle<()>>,
}

/// How long [`Stream::wait_for`] waits for the attempts it asks for: far
/// more than the stream needs (hundreds of attempts a second); a stream
/// that stalls this long is broken.
const STREAM_STALL: Duration = Duration::from_secs(30);

impl Stream {
    /// A copy of the attempts reported so far.
    pub fn attempts(&self) -> Vec<StreamAttempt> {
        self.attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until `n` attempts that started at or after `since_ns` (see
    /// [`monotonic_ns`]) have been reported; panics if the stream ends or
    /// stalls first.
    pub fn wait_for(&mut self, n: usize, since_ns: u64) {
        let deadline = Instant::now() + STREAM_STALL;
        loop {
            let got = self
                .attempts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|a| a.start_ns >= since_ns)
                .count();
            if got >= n {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("ee-probe stream exited ({status}) after {got} of {n} attempts");
            }
            assert!(
                Instant::now() < deadline,
                "ee-probe stream made {got} of {n} attempts in {STREAM_STALL:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Tells the probe to stop, waits for it and returns every attempt.
    pub fn stop(mut self) -> Vec<StreamAttempt> {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "stop");
        }
        let status = self.child.wait().expect("wait for ee-probe stream");
        assert!(status.success(), "ee-probe stream failed: {status}");
        if let Some(reader) = self.reader.take() {
            reader.join().expect("ee-probe stream reader");
        }
        self.attempts()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
