//! Running real clients (`ee-probe connect`) inside a sandbox.

use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

use crate::sandbox::{PORT, Sandbox, probe_binary};

/// The result of one attempt.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Attempt {
    pub ok: bool,
    #[serde(default)]
    pub errno: Option<i32>,
    #[serde(default)]
    pub error: Option<String>,
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
    let mut cmd = sb.client_command_in(probe_binary(), in_cgroup);
    let out = cmd
        .args([
            "connect",
            proto.arg(),
            &dst.ip().to_string(),
            &dst.port().to_string(),
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
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad ee-probe line {l:?}: {e}")))
        .collect();
    assert_eq!(attempts.len(), count as usize, "one line per attempt");
    attempts
}

/// One attempt.
pub fn attempt(sb: &Sandbox, proto: Proto, ip: IpAddr) -> Attempt {
    attempts(sb, proto, ip, 1).remove(0)
}
