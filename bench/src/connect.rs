//! The datapath's cost on real traffic from the sandbox's client to its
//! server peer over veth: connect()+close() rate on the allowed and the
//! refused path, TCP bulk and 64-byte UDP throughput (iperf3), for six
//! configurations: no filter, an empty hook (connect4/6 + skb egress), the
//! real agent (observe, enforce), nftables interval sets and iptables +
//! ipset hash:net (both inside the client namespace, holding the same
//! refused prefixes); the kernel's own run time of every BPF program
//! involved; and the agent's peak RSS (VmHWM) with the full database.
//!
//! Interleaved: every run measures every configuration once, in an order
//! rotated per run, so background load on a shared machine falls on all of
//! them alike, and the comparisons are per-run pairs (the median of the
//! per-run ratios), not ratios of medians taken minutes apart. Switching
//! is cheap and leaves nothing of the other configurations in the path:
//! - no filter, empty hook and enforcer are three sibling child cgroups of
//!   the sandbox's (nothing attached; the empty programs; the agent's
//!   scope), and each sample's process is started in the configuration's
//!   cgroup;
//! - one agent runs for the whole section; observe and enforce are its
//!   global mode, switched over the control socket (`enforcer mode`), which
//!   is what an operator does and what the datapath reads per connection;
//! - the nft table (sets only) and the ipsets stay loaded; only the hooked
//!   chain that uses them is added and removed (an nft base chain; the
//!   iptables-nft `filter` table), so with either off the namespace has no
//!   netfilter hook at all.
//!
//! Kernel run time: `BPF_ENABLE_STATS` makes the kernel time every program
//! run (`run_time_ns`, `run_cnt` in its fdinfo). Timing costs two clock
//! reads per run (kernel/bpf/syscall.c, `bpf_prog_run` with
//! `bpf_stats_enabled_key`), which would slow only the BPF configurations'
//! rates, so the counters come from extra samples of their own (stats on
//! only around them) next to the rate samples of the same run.
//!
//! The connect loop runs in a child (this binary, re-executed with
//! [`LOOP_ARG`]) so it is in the client's namespace and cgroup. Sockets
//! close with SO_LINGER 0 (a RST, no TIME_WAIT), so thousands of
//! connections in a row never run out of ephemeral ports; every connect is
//! bounded by a 1 s timeout.

use std::{
    collections::HashMap,
    fs,
    net::{IpAddr, SocketAddr},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use enforcer::policy::CompiledPolicy;
use enforcer_tests::{
    agent::{Agent, enforcer_at},
    sandbox::{PORT, addr, enter},
    scenario::Scenario,
};

use crate::{bpf, load, memory, report::Report, report::Row};

pub const LOOP_ARG: &str = "__connect-loop";
pub const SERVE_ARG: &str = "__accept-loop";
/// The bench's own TCP server in the server namespace (ee-probe's greeter
/// on [`PORT`] answers each connection in turn and its accept backlog
/// overflows under a connect loop: a dropped SYN costs a 1 s retransmit).
/// This one only accepts and closes, with a deep backlog.
const BENCH_PORT: u16 = PORT + 100;
/// Connections per configuration, path and run (and per kernel run-time
/// sample).
const COUNT: u32 = 4000;
/// Rounds per run: every round visits every configuration (order rotated
/// per round) with `COUNT / ROUNDS` connections per path, so one run's
/// samples of all configurations are spread over the same second or two
/// and a burst of background load lands on all of them.
const ROUNDS: u32 = 4;

/// The child: `__connect-loop <ip> <port> <count> [rate]` prints
/// `<ok> <failed> <seconds>`; with a rate, attempt i starts no earlier than
/// i / rate seconds after the first.
pub fn loop_main() -> ExitCode {
    let a: Vec<String> = std::env::args().skip(2).collect();
    let (Some(ip), Some(port), Some(count)) = (
        a.first().and_then(|s| s.parse::<IpAddr>().ok()),
        a.get(1).and_then(|s| s.parse::<u16>().ok()),
        a.get(2).and_then(|s| s.parse::<u32>().ok()),
    ) else {
        eprintln!("usage: {LOOP_ARG} <ip> <port> <count>");
        return ExitCode::from(2);
    };
    let dst = SocketAddr::new(ip, port).into();
    let domain = if ip.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let rate = a.get(3).and_then(|s| s.parse::<f64>().ok());
    let (mut ok, mut failed) = (0u32, 0u32);
    let t = Instant::now();
    for i in 0..count {
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(f64::from(i) / rate);
            if let Some(wait) = due.checked_sub(t.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let Ok(s) = socket2::Socket::new(domain, socket2::Type::STREAM, None) else {
            failed += 1;
            continue;
        };
        let _ = s.set_linger(Some(Duration::ZERO));
        match s.connect_timeout(&dst, Duration::from_secs(1)) {
            Ok(()) => ok += 1,
            Err(_) => failed += 1,
        }
        drop(s);
    }
    println!("{ok} {failed} {}", t.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}

/// The server child: `__accept-loop <port>`: accept and close, forever
/// (killed by the caller); prints `ready` once listening.
pub fn serve_main() -> ExitCode {
    let Some(port) = std::env::args().nth(2).and_then(|p| p.parse::<u16>().ok()) else {
        eprintln!("usage: {SERVE_ARG} <port>");
        return ExitCode::from(2);
    };
    let any: SocketAddr = (std::net::Ipv6Addr::UNSPECIFIED, port).into();
    let listen = || -> std::io::Result<socket2::Socket> {
        let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
        s.set_only_v6(false)?;
        s.set_reuse_address(true)?;
        s.bind(&any.into())?;
        s.listen(4096)?;
        Ok(s)
    };
    let s = match listen() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("listen on {any}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("ready");
    loop {
        if let Ok((c, _)) = s.accept() {
            drop(c);
        }
    }
}

/// The accept loop in the server namespace, killed on drop.
struct Server(std::process::Child);

impl Server {
    fn start(scn: &Scenario) -> Result<Server> {
        use std::io::BufRead as _;
        let exe = std::env::current_exe().context("current_exe")?;
        let mut cmd = std::process::Command::new(exe);
        cmd.args([SERVE_ARG, &BENCH_PORT.to_string()])
            .stdout(std::process::Stdio::piped());
        enforcer_tests::sandbox::enter(&mut cmd, &scn.sb.server_ns, None);
        let mut child = cmd.spawn().context("starting the accept loop")?;
        let out = child.stdout.take().context("accept loop stdout")?;
        let server = Server(child);
        let mut line = String::new();
        std::io::BufReader::new(out).read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("the accept loop did not start: {line:?}");
        }
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The configurations, in the order of the report.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Cfg {
    NoFilter,
    Empty,
    Observe,
    Enforce,
    Nft,
    Ipset,
}

impl Cfg {
    fn name(self) -> &'static str {
        match self {
            Cfg::NoFilter => "no filter",
            Cfg::Empty => "empty hook (connect4/6 + skb egress)",
            Cfg::Observe => "enforcer observe",
            Cfg::Enforce => "enforcer enforce",
            Cfg::Nft => "nftables interval sets",
            Cfg::Ipset => "iptables + ipset hash:net",
        }
    }

    /// Whether the refused path's connects fail under it.
    fn refuses(self) -> bool {
        matches!(self, Cfg::Enforce | Cfg::Nft | Cfg::Ipset)
    }

    /// Whether it runs BPF programs (and so has kernel run-time samples).
    fn bpf(self) -> bool {
        matches!(self, Cfg::Empty | Cfg::Observe | Cfg::Enforce)
    }
}

const CONNECT_CFGS: [Cfg; 6] = [
    Cfg::NoFilter,
    Cfg::Empty,
    Cfg::Observe,
    Cfg::Enforce,
    Cfg::Nft,
    Cfg::Ipset,
];
/// Observe and enforce pass an allowed packet through the same code:
/// throughput measures enforce only.
const THROUGHPUT_CFGS: [Cfg; 5] = [
    Cfg::NoFilter,
    Cfg::Empty,
    Cfg::Enforce,
    Cfg::Nft,
    Cfg::Ipset,
];

/// The two connect paths: name and destination.
const PATHS: [(&str, IpAddr); 2] = [
    ("allowed", IpAddr::V4(addr::APPROVED_V4)),
    ("refused", IpAddr::V4(addr::DENIED_V4)),
];
/// The paths of the kernel run-time samples: [`PATHS`] and IPv6's allowed
/// path, for connect6 (the rates stay IPv4: one family is enough to
/// compare with the firewalls, and the ipset rule is IPv4 only).
const KERNEL_PATHS: [(&str, IpAddr); 3] = [
    PATHS[0],
    PATHS[1],
    ("allowed IPv6", IpAddr::V6(addr::APPROVED_V6)),
];

/// The two throughput tests: (UDP, name, unit, target of issue 5 as x of
/// no filter).
const TESTS: [(bool, &str, &str, f64); 2] = [
    (false, "TCP bulk", "Gbit/s", 0.98),
    (true, "64-byte UDP received", "kpkt/s", 0.90),
];

/// `cfgs` rotated left by `run`: each configuration takes each position
/// in turn.
fn rotated<const N: usize>(cfgs: [Cfg; N], run: usize) -> Vec<Cfg> {
    (0..N).map(|i| cfgs[(i + run) % N]).collect()
}

/// One BPF program whose run time is read: the hook it runs on and an fd.
struct Prog {
    hook: &'static str,
    fd: OwnedFd,
}

/// Run time and run count one program gained during a sample.
#[derive(Clone, Copy)]
struct Delta {
    hook: &'static str,
    ns: u64,
    cnt: u64,
}

fn snapshot(progs: &[Prog]) -> Result<Vec<(u64, u64)>> {
    progs
        .iter()
        .map(|p| bpf::prog_run_stats(&p.fd).with_context(|| format!("run stats of {}", p.hook)))
        .collect()
}

/// The hooks the agent attaches to a scope cgroup and the empty hook's,
/// by attach type.
const HOOKS: [(u32, &str); 5] = [
    (bpf::BPF_CGROUP_INET_EGRESS, "skb_egress"),
    (bpf::BPF_CGROUP_INET4_CONNECT, "connect4"),
    (bpf::BPF_CGROUP_INET6_CONNECT, "connect6"),
    (14, "sendmsg4"), // BPF_CGROUP_UDP4_SENDMSG
    (15, "sendmsg6"), // BPF_CGROUP_UDP6_SENDMSG
];

/// Every program attached directly to `cgroup` on [`HOOKS`], found with
/// BPF_PROG_QUERY (the agent's are attached through its pinned links).
fn attached(cgroup: &Path) -> Result<Vec<Prog>> {
    let dir = fs::File::open(cgroup).with_context(|| format!("open {}", cgroup.display()))?;
    let mut progs = Vec::new();
    for (attach, hook) in HOOKS {
        for id in bpf::cgroup_prog_ids(&dir, attach)
            .with_context(|| format!("BPF_PROG_QUERY {hook} on {}", cgroup.display()))?
        {
            let fd = bpf::prog_fd_by_id(id).with_context(|| format!("program id {id}"))?;
            progs.push(Prog { hook, fd });
        }
    }
    Ok(progs)
}

/// The section's set-up: the three cgroups, the agent, the loaded firewall
/// sets, and which configuration is switched on.
struct Bench<'a> {
    scn: &'a Scenario,
    ns: String,
    none: PathBuf,
    empty: PathBuf,
    scope: PathBuf,
    agent: Agent,
    empty_progs: Vec<Prog>,
    agent_progs: Vec<Prog>,
    /// The agent's global mode now.
    mode: &'static str,
    /// The firewall whose hook is in place, if any.
    firewall: Option<Cfg>,
    nft_on: PathBuf,
    iptables_on: PathBuf,
    /// Whether `iptables` is the nf_tables variant (its table can be
    /// removed whole with `nft delete table ip filter`).
    iptables_nft: bool,
}

/// The hooked chain that turns nftables on: the same rules as the load
/// section's ruleset ([`load::nft_ruleset`]).
const NFT_ON: &str = "add chain inet eebench out { type filter hook output priority 0; policy accept; }\n\
add rule inet eebench out ip daddr @refused4 reject with tcp reset\n\
add rule inet eebench out ip6 daddr @refused6 reject with tcp reset\n";

/// The iptables rules that turn ipset on: one set lookup per packet, and
/// a reject fitting the protocol (a TCP reset for TCP, like nftables';
/// ICMP port unreachable otherwise), so allowed UDP pays the lookup too.
const IPTABLES_ON: &str = "*filter\n\
:OUTPUT ACCEPT [0:0]\n\
:EEREJECT - [0:0]\n\
-A OUTPUT -m set --match-set eeb4 dst -j EEREJECT\n\
-A EEREJECT -p tcp -j REJECT --reject-with tcp-reset\n\
-A EEREJECT -j REJECT\n\
COMMIT\n";

impl Bench<'_> {
    /// Switches to `c` and returns the cgroup its samples run in.
    fn select(&mut self, c: Cfg) -> Result<PathBuf> {
        let fw = matches!(c, Cfg::Nft | Cfg::Ipset).then_some(c);
        if self.firewall != fw {
            self.firewall_off()?;
            match fw {
                Some(Cfg::Nft) => load::in_ns(&self.ns, "nft", &["-f", "-"], Some(&self.nft_on))?,
                Some(_) => load::in_ns(&self.ns, "iptables-restore", &[], Some(&self.iptables_on))?,
                None => {}
            }
            self.firewall = fw;
        }
        let mode = match c {
            Cfg::Observe => Some("observe"),
            Cfg::Enforce => Some("enforce"),
            _ => None,
        };
        if let Some(m) = mode
            && m != self.mode
        {
            let out = enforcer_at(
                &self.scn.control_socket(),
                &[
                    "mode",
                    m,
                    "--reason",
                    "ee-bench: interleaved configurations",
                ],
            );
            if !out.status.success() {
                bail!(
                    "enforcer mode {m} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            self.mode = m;
        }
        Ok(match c {
            Cfg::Empty => self.empty.clone(),
            Cfg::Observe | Cfg::Enforce => self.scope.clone(),
            _ => self.none.clone(),
        })
    }

    /// Removes the firewall hook in place, if any.
    fn firewall_off(&mut self) -> Result<()> {
        match self.firewall.take() {
            Some(Cfg::Nft) => load::in_ns(
                &self.ns,
                "nft",
                &["delete", "chain", "inet", "eebench", "out"],
                None,
            ),
            Some(_) if self.iptables_nft => {
                load::in_ns(&self.ns, "nft", &["delete", "table", "ip", "filter"], None)
            }
            Some(_) => {
                // iptables-legacy: its table stays registered; empty it.
                load::in_ns(&self.ns, "iptables", &["-F", "OUTPUT"], None)?;
                load::in_ns(&self.ns, "iptables", &["-F", "EEREJECT"], None)?;
                load::in_ns(&self.ns, "iptables", &["-X", "EEREJECT"], None)
            }
            None => Ok(()),
        }
    }

    fn progs(&self, c: Cfg) -> &[Prog] {
        match c {
            Cfg::Empty => &self.empty_progs,
            Cfg::Observe | Cfg::Enforce => &self.agent_progs,
            _ => &[],
        }
    }

    /// Runs `f` with the kernel timing every BPF program, and returns what
    /// `c`'s programs gained meanwhile.
    fn timed<T>(&self, c: Cfg, f: impl FnOnce() -> Result<T>) -> Result<(T, Vec<Delta>)> {
        let progs = self.progs(c);
        let stats = bpf::enable_stats().context("BPF_ENABLE_STATS")?;
        let before = snapshot(progs)?;
        let r = f()?;
        let after = snapshot(progs)?;
        drop(stats);
        let deltas = progs
            .iter()
            .zip(before.iter().zip(&after))
            .map(|(p, (b, a))| Delta {
                hook: p.hook,
                ns: a.0.saturating_sub(b.0),
                cnt: a.1.saturating_sub(b.1),
            })
            .collect();
        Ok((r, deltas))
    }

    /// One connect sample of `c` on `path`, checked against what `c` does.
    /// `count` connects under `c` on `path`, checked against what `c`
    /// does: their rate.
    fn connects(&self, c: Cfg, cgroup: &Path, path: &str, ip: IpAddr, count: u32) -> Result<f64> {
        let (rate, ok, failed) = run_loop(self.scn, cgroup, ip, count, None)?;
        let expect_fail = c.refuses() && path == "refused";
        let all_failed = failed == count && ok == 0;
        if (expect_fail && !all_failed) || (!expect_fail && ok != count) {
            bail!(
                "{}, {path} path to {ip}: {ok} connected, {failed} failed, which is not what this configuration does",
                c.name()
            );
        }
        Ok(rate)
    }
}

/// Samples per (configuration, path or test), one per run.
type Samples = HashMap<(Cfg, &'static str), Vec<f64>>;
/// Kernel run-time deltas per (configuration, path or test), one list per
/// run.
type Kernel = HashMap<(Cfg, &'static str), Vec<Vec<Delta>>>;

/// `count` connects to `ip` from `cgroup`: (rate reached, connected,
/// failed).
fn run_loop(
    scn: &Scenario,
    cgroup: &Path,
    ip: IpAddr,
    count: u32,
    rate: Option<u32>,
) -> Result<(f64, u32, u32)> {
    let exe = std::env::current_exe().context("current_exe")?;
    let mut cmd = std::process::Command::new(exe);
    enter(&mut cmd, &scn.sb.client_ns, Some(cgroup));
    cmd.args([
        LOOP_ARG,
        &ip.to_string(),
        &BENCH_PORT.to_string(),
        &count.to_string(),
    ]);
    if let Some(r) = rate {
        cmd.arg(r.to_string());
    }
    let out = cmd.output().context("running the connect loop")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = text.split_whitespace().collect();
    let (Some(ok), Some(failed), Some(secs)) = (
        f.first().and_then(|s| s.parse::<u32>().ok()),
        f.get(1).and_then(|s| s.parse::<u32>().ok()),
        f.get(2).and_then(|s| s.parse::<f64>().ok()),
    ) else {
        bail!(
            "connect loop printed {text:?} ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    Ok((f64::from(count) / secs, ok, failed))
}

/// `count` connects from the sandbox's cgroup to `ip` paced at `rate` per
/// second: (rate reached, connected, failed).
pub fn paced(scn: &Scenario, ip: IpAddr, count: u32, rate: u32) -> Result<(f64, u32, u32)> {
    run_loop(scn, &scn.sb.cgroup, ip, count, Some(rate))
}

/// iperf3's port in the server namespace.
const IPERF_PORT: u16 = 5211;
/// Seconds per iperf3 rate sample.
const IPERF_SECS: u32 = 1;
/// Rounds per run, each visiting every configuration (order rotated per
/// round), for the reason of [`ROUNDS`].
const IPERF_ROUNDS: usize = 2;
/// Seconds per iperf3 sample taken for the kernel's run time only.
const IPERF_STATS_SECS: u32 = 1;

/// One iperf3 sample from `cgroup` to the approved address: TCP bulk in
/// Gbit/s (received), or 64-byte UDP datagrams received per second, in
/// thousands (`-b 0`: as fast as the sender can).
fn iperf(scn: &Scenario, cgroup: &Path, udp: bool, secs: u32) -> Result<f64> {
    let mut srv = std::process::Command::new("iperf3");
    let log = scn.dir.path().join("iperf3-server.log");
    // Bound to the approved address: unbound, the UDP test's server socket
    // answers from the namespace's primary address, which the client's
    // connected socket refuses.
    srv.args([
        "-s",
        "-1",
        "-p",
        &IPERF_PORT.to_string(),
        "-B",
        &addr::APPROVED_V4.to_string(),
    ])
    .stdout(fs::File::create(&log)?)
    .stderr(fs::File::create(scn.dir.path().join("iperf3-server.err"))?);
    enter(&mut srv, &scn.sb.server_ns, None);
    let mut srv = Server(srv.spawn().context("starting iperf3 -s")?);
    let mut last = String::new();
    // The server needs a moment to listen: retry the client briefly.
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        let mut cmd = std::process::Command::new("iperf3");
        enter(&mut cmd, &scn.sb.client_ns, Some(cgroup));
        cmd.args([
            "-c",
            &addr::APPROVED_V4.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
        ])
        .args(["-t", &secs.to_string(), "-J", "--connect-timeout", "2000"]);
        if udp {
            cmd.args(["-u", "-b", "0", "-l", "64"]);
        }
        let out = cmd.output().context("running iperf3 -c")?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if json.get("error").is_some() || !out.status.success() {
            last = json.get("error").map_or_else(
                || String::from_utf8_lossy(&out.stderr).into_owned(),
                |e| e.to_string(),
            );
            continue;
        }
        let end = &json["end"];
        let _ = srv.0.wait();
        return if udp {
            let sum = &end["sum"];
            let (p, lost, secs) = (
                sum["packets"].as_f64(),
                sum["lost_packets"].as_f64(),
                sum["seconds"].as_f64(),
            );
            match (p, lost, secs) {
                (Some(p), Some(l), Some(s)) if s > 0.0 => Ok((p - l) / s / 1000.0),
                _ => bail!("iperf3 UDP result without packets/seconds"),
            }
        } else {
            end["sum_received"]["bits_per_second"]
                .as_f64()
                .map(|b| b / 1e9)
                .context("iperf3 TCP result without sum_received")
        };
    }
    bail!(
        "iperf3 did not run: {last} (server: {})",
        fs::read_to_string(&log).unwrap_or_default()
            + &fs::read_to_string(scn.dir.path().join("iperf3-server.err")).unwrap_or_default()
    )
}

/// The prefixes the firewalls refuse: the agent's refused prefixes, plus
/// the sandbox's refused and unknown test addresses (the agent refuses
/// those through the test database layered first). The database may place
/// the sandbox's documentation ranges somewhere: they are left out, so
/// only the test database decides them, as for the agent.
fn firewall_prefixes(policy: &CompiledPolicy) -> (Vec<String>, Vec<String>) {
    let sandbox: [ipnetwork::IpNetwork; 2] = [
        ipnetwork::IpNetwork::V4(ipnetwork::Ipv4Network::new(addr::SERVER_V4, 24).expect("a /24")),
        ipnetwork::IpNetwork::V6(ipnetwork::Ipv6Network::new(addr::SERVER_V6, 32).expect("a /32")),
    ];
    let outside = |n: &String| match n.parse::<ipnetwork::IpNetwork>() {
        Ok(net) => !sandbox
            .iter()
            .any(|s| s.contains(net.network()) || net.contains(s.network())),
        Err(_) => false,
    };
    let (v4, v6) = load::refused(policy);
    let mut v4: Vec<String> = v4.into_iter().filter(outside).collect();
    let mut v6: Vec<String> = v6.into_iter().filter(outside).collect();
    v4.extend([
        format!("{}/32", addr::DENIED_V4),
        format!("{}/32", addr::UNKNOWN_V4),
    ]);
    v6.extend([
        format!("{}/128", addr::DENIED_V6),
        format!("{}/128", addr::UNKNOWN_V6),
    ]);
    (v4, v6)
}

/// Creates the three child cgroups, attaches the empty hook to its own,
/// loads the firewall sets and starts the agent on its scope cgroup.
fn set_up<'a>(scn: &'a Scenario, db: &Path, policy: &CompiledPolicy) -> Result<Bench<'a>> {
    let ns = scn.sb.client_ns.clone();
    let [none, empty, scope] = ["none", "empty", "enforcer"].map(|n| scn.sb.cgroup.join(n));
    for cg in [&none, &empty, &scope] {
        fs::create_dir(cg).with_context(|| format!("mkdir {}", cg.display()))?;
    }

    // The empty hook: a BPF_PROG_ATTACH attachment stays until its cgroup
    // is removed (the sandbox removes it with its own).
    let dir = fs::File::open(&empty).context("open the empty hook's cgroup")?;
    let mut empty_progs = Vec::new();
    for (prog_type, attach, name, hook) in [
        (
            bpf::BPF_PROG_TYPE_CGROUP_SKB,
            bpf::BPF_CGROUP_INET_EGRESS,
            "bench_empty",
            "skb_egress",
        ),
        (
            bpf::BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            bpf::BPF_CGROUP_INET4_CONNECT,
            "bench_empty4",
            "connect4",
        ),
        (
            bpf::BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            bpf::BPF_CGROUP_INET6_CONNECT,
            "bench_empty6",
            "connect6",
        ),
    ] {
        let fd = bpf::load_program(prog_type, attach, name, &bpf::empty_program())?;
        bpf::attach_cgroup(&fd, &dir, attach)?;
        empty_progs.push(Prog { hook, fd });
    }

    let (v4, v6) = firewall_prefixes(policy);
    let sets = scn.dir.path().join("bench-sets.nft");
    // The sets alone, loaded once; the chain is toggled per configuration.
    fs::write(&sets, load::nft_table(&v4, &v6, ""))?;
    load::in_ns(&ns, "nft", &["-f", &sets.display().to_string()], None)?;
    let ipset = scn.dir.path().join("bench.ipset");
    fs::write(&ipset, load::ipset_restore(&v4, &v6))?;
    load::in_ns(&ns, "ipset", &["restore"], Some(&ipset))?;
    let nft_on = scn.dir.path().join("bench-on.nft");
    fs::write(&nft_on, NFT_ON)?;
    let iptables_on = scn.dir.path().join("bench-on.iptables");
    fs::write(&iptables_on, IPTABLES_ON)?;
    let iptables_nft = std::process::Command::new("iptables")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("nf_tables"));

    // The allowed sample on, as with the shipped config (which has an
    // events file): its cost is in the agent's rows. Connections to one
    // peer are answered from the verdict cache after the first, which
    // the sample does not see; the decision rows measure its update.
    let sample = scn.dir.path().join("bench.allowed.jsonl");
    let tail = format!(
        "[events]\nallowed_file = {:?}\n",
        sample.display().to_string()
    );
    let config = scn.config_scoped("enforce", "deny", &[db.to_owned()], &[&scope], "", &tail);
    let agent = scn.start(&config);
    let agent_progs = attached(&scope)?;
    if agent_progs.is_empty() {
        bail!("the agent attached nothing to {}", scope.display());
    }
    Ok(Bench {
        scn,
        ns,
        none,
        empty,
        scope,
        agent,
        empty_progs,
        agent_progs,
        mode: "enforce",
        firewall: None,
        nft_on,
        iptables_on,
        iptables_nft,
    })
}

/// The interleaved runs: connect samples, then throughput samples.
fn interleaved(b: &mut Bench, runs: usize) -> Result<(Samples, Kernel, Samples, Kernel)> {
    let (mut conn, mut conn_k) = (Samples::new(), Kernel::new());
    for run in 0..runs {
        // Seconds spent per (configuration, path) over the run's rounds.
        let mut secs: HashMap<(Cfg, &'static str), f64> = HashMap::new();
        let per_round = COUNT / ROUNDS;
        for round in 0..ROUNDS {
            for c in rotated(CONNECT_CFGS, run * ROUNDS as usize + round as usize) {
                let cg = b.select(c)?;
                for (path, ip) in PATHS {
                    let rate = b.connects(c, &cg, path, ip, per_round)?;
                    *secs.entry((c, path)).or_default() += f64::from(per_round) / rate;
                }
            }
        }
        for (k, t) in secs {
            conn.entry(k)
                .or_default()
                .push(f64::from(per_round * ROUNDS) / t);
        }
        let bpf_order: Vec<Cfg> = rotated(CONNECT_CFGS, run)
            .into_iter()
            .filter(|c| c.bpf())
            .collect();
        for &c in &bpf_order {
            let cg = b.select(c)?;
            for (path, ip) in KERNEL_PATHS {
                let (_, d) = b.timed(c, || b.connects(c, &cg, path, ip, COUNT))?;
                conn_k.entry((c, path)).or_default().push(d);
            }
        }
        println!(
            "  connect run {}/{runs}: {}",
            run + 1,
            CONNECT_CFGS
                .iter()
                .map(|&c| format!(
                    "{:.0}/{:.0}",
                    last(&conn, c, "allowed"),
                    last(&conn, c, "refused")
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let (mut thr, mut thr_k) = (Samples::new(), Kernel::new());
    for run in 0..runs {
        // Sum of the rounds' results per (configuration, test): equal
        // durations, so their mean is the run's rate.
        let mut sum: HashMap<(Cfg, &'static str), f64> = HashMap::new();
        for round in 0..IPERF_ROUNDS {
            for c in rotated(THROUGHPUT_CFGS, run * IPERF_ROUNDS + round) {
                let cg = b.select(c)?;
                for (udp, test, _, _) in TESTS {
                    *sum.entry((c, test)).or_default() += iperf(b.scn, &cg, udp, IPERF_SECS)?;
                }
            }
        }
        for (k, v) in sum {
            thr.entry(k).or_default().push(v / IPERF_ROUNDS as f64);
        }
        for c in rotated(THROUGHPUT_CFGS, run)
            .into_iter()
            .filter(|c| c.bpf())
        {
            let cg = b.select(c)?;
            for (udp, test, _, _) in TESTS {
                let (_, d) = b.timed(c, || iperf(b.scn, &cg, udp, IPERF_STATS_SECS))?;
                thr_k.entry((c, test)).or_default().push(d);
            }
        }
        println!(
            "  throughput run {}/{runs}: {}",
            run + 1,
            THROUGHPUT_CFGS
                .iter()
                .map(|&c| format!(
                    "{} {:.2} Gbit/s {:.0} kpkt/s",
                    c.name(),
                    last(&thr, c, TESTS[0].1),
                    last(&thr, c, TESTS[1].1)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    b.firewall_off()?;
    Ok((conn, conn_k, thr, thr_k))
}

fn last(s: &Samples, c: Cfg, what: &str) -> f64 {
    s.iter()
        .find(|((k, w), _)| *k == c && *w == what)
        .and_then(|(_, v)| v.last().copied())
        .unwrap_or(f64::NAN)
}

fn samples<'s>(s: &'s Samples, c: Cfg, what: &str) -> &'s [f64] {
    s.iter()
        .find(|((k, w), _)| *k == c && *w == what)
        .map_or(&[], |(_, v)| v.as_slice())
}

/// The time a connection takes under a filter with connect rate `x`,
/// over the time it takes with no filter (rate `none`), in %.
fn added_pct(none: f64, x: f64) -> f64 {
    (none / x - 1.0) * 100.0
}

/// How many times the enforcer's added cost `enf` a firewall's `fw` is;
/// NaN when the enforcer's is not above 0 (lost in the noise: a ratio to
/// it says nothing).
fn cost_ratio(fw: f64, enf: f64) -> f64 {
    if enf > 0.0 { fw / enf } else { f64::NAN }
}

/// Per-run `f(a, b)` of two configurations' samples (paired by run).
fn paired(a: &[f64], b: &[f64], f: impl Fn(f64, f64) -> f64) -> Vec<f64> {
    a.iter().zip(b).map(|(&a, &b)| f(a, b)).collect()
}

const S: &str = "connect()+close() rate";
const SP: &str = "connect(): added time per connection (paired per run)";
const K: &str = "BPF run time (kernel's own, per connection or packet)";
const T: &str = "throughput over veth (iperf3)";
const TP: &str = "throughput: x of no filter (paired per run)";

/// The connect rows: rates, paired costs, kernel run time.
fn connect_rows(conn: &Samples, kern: &Kernel, rep: &mut Report) {
    for c in CONNECT_CFGS {
        for (path, _) in PATHS {
            let mut row = Row::new(S, format!("{}, {path} path", c.name()), "conn/s");
            row.samples = samples(conn, c, path).to_vec();
            rep.push(row);
        }
    }
    // Time per connection is 1 / rate: the added time over no filter, in %
    // of no filter's, is none / c - 1, per run.
    for (path, _) in PATHS {
        let none = samples(conn, Cfg::NoFilter, path);
        let mut added = HashMap::new();
        for c in &CONNECT_CFGS[1..] {
            let mut row = Row::new(
                SP,
                format!("{}, {path} path: over no filter", c.name()),
                "%",
            );
            row.samples = paired(none, samples(conn, *c, path), added_pct);
            if path == "allowed" && matches!(c, Cfg::Observe | Cfg::Enforce) {
                row = row.target("<=", 1.0);
            }
            added.insert(*c, row.median());
            rep.push(row);
        }
        if path == "allowed" {
            let enf = added.get(&Cfg::Enforce).copied().unwrap_or(f64::NAN);
            for fw in [Cfg::Nft, Cfg::Ipset] {
                let mut row = Row::new(
                    SP,
                    format!(
                        "{} / enforcer enforce, allowed path: ratio of the medians above",
                        fw.name()
                    ),
                    "x",
                )
                .target(">=", 3.0);
                let fw = added.get(&fw).copied().unwrap_or(f64::NAN);
                row.samples.push(cost_ratio(fw, enf));
                rep.push(row);
            }
        }
        for c in [Cfg::Observe, Cfg::Enforce] {
            let mut row = Row::new(
                SP,
                format!(
                    "{} over the empty hook, {path} path, from the rates",
                    c.name()
                ),
                "ns",
            );
            row.samples = paired(
                samples(conn, c, path),
                samples(conn, Cfg::Empty, path),
                |x, e| 1e9 / x - 1e9 / e,
            );
            rep.push(row);
        }
    }

    let per_conn = |c: Cfg, path: &str| -> Vec<f64> {
        kern.get(&(c, path)).map_or_else(Vec::new, |runs| {
            runs.iter()
                .map(|d| d.iter().map(|d| d.ns).sum::<u64>() as f64 / f64::from(COUNT))
                .collect()
        })
    };
    for (path, _) in KERNEL_PATHS {
        for c in [Cfg::Empty, Cfg::Observe, Cfg::Enforce] {
            let mut row = Row::new(
                K,
                format!("connect, {}, {path} path: all hooks", c.name()),
                "ns/conn",
            );
            row.samples = per_conn(c, path);
            rep.push(row);
            hook_rows(kern, c, path, "connect", Some(COUNT), None, rep);
        }
        for c in [Cfg::Observe, Cfg::Enforce] {
            let mut row = Row::new(
                K,
                format!("connect, {} minus empty hook, {path} path", c.name()),
                "ns/conn",
            );
            row.samples = paired(&per_conn(c, path), &per_conn(Cfg::Empty, path), |x, e| {
                x - e
            });
            if path.starts_with("allowed") {
                row = row.target("<=", 150.0);
            }
            rep.push(row);
        }
    }
}

/// One row per hook that ran: its mean run time per invocation, per run,
/// and how often it ran per connection (`per`: connections per sample).
fn hook_rows(
    kern: &Kernel,
    c: Cfg,
    what: &str,
    label: &str,
    per: Option<u32>,
    only: Option<&str>,
    rep: &mut Report,
) {
    let Some(runs) = kern.get(&(c, what)) else {
        return;
    };
    for (_, hook) in HOOKS
        .into_iter()
        .filter(|(_, h)| only.is_none_or(|o| o == *h))
    {
        let d: Vec<Delta> = runs
            .iter()
            .flat_map(|r| r.iter().filter(|d| d.hook == hook).copied())
            .collect();
        let cnt: u64 = d.iter().map(|d| d.cnt).sum();
        if cnt == 0 {
            continue;
        }
        let times = per.map_or_else(String::new, |n| {
            format!(
                " ({:.2} runs per connection)",
                cnt as f64 / runs.len() as f64 / f64::from(n)
            )
        });
        let what = if per.is_some() {
            format!("{what} path")
        } else {
            what.to_owned()
        };
        let mut row = Row::new(
            K,
            format!("{label}, {}, {what}: {hook}{times}", c.name()),
            "ns/run",
        );
        row.samples = d
            .iter()
            .filter(|d| d.cnt > 0)
            .map(|d| d.ns as f64 / d.cnt as f64)
            .collect();
        rep.push(row);
    }
}

/// The throughput rows: rates, paired ratios, kernel run time.
fn throughput_rows(thr: &Samples, kern: &Kernel, rep: &mut Report) {
    for c in THROUGHPUT_CFGS {
        for (_, test, unit, _) in TESTS {
            let mut row = Row::new(T, format!("{}, {test}", c.name()), unit);
            row.samples = samples(thr, c, test).to_vec();
            rep.push(row);
        }
    }
    for (_, test, _, target) in TESTS {
        let none = samples(thr, Cfg::NoFilter, test);
        for c in &THROUGHPUT_CFGS[1..] {
            let mut row = Row::new(TP, format!("{}, {test}: x no filter", c.name()), "x");
            row.samples = paired(samples(thr, *c, test), none, |x, n| x / n);
            if *c == Cfg::Enforce {
                row = row.target(">=", target);
            }
            rep.push(row);
        }
        for fw in [Cfg::Nft, Cfg::Ipset] {
            let mut row = Row::new(TP, format!("enforcer enforce / {}, {test}", fw.name()), "x")
                .target(">=", 1.0);
            row.samples = paired(
                samples(thr, Cfg::Enforce, test),
                samples(thr, fw, test),
                |e, f| e / f,
            );
            rep.push(row);
        }
    }
    // skb_egress only: connect4 ran for iperf3's two connections per
    // sample, cold, and says nothing about the packet rate.
    let per_run = |c: Cfg, test: &str| -> Vec<f64> {
        kern.get(&(c, test)).map_or_else(Vec::new, |runs| {
            runs.iter()
                .map(|d| {
                    let (ns, cnt) = d
                        .iter()
                        .filter(|d| d.hook == "skb_egress")
                        .fold((0, 0), |(n, k), d| (n + d.ns, k + d.cnt));
                    if cnt == 0 {
                        f64::NAN
                    } else {
                        ns as f64 / cnt as f64
                    }
                })
                .collect()
        })
    };
    for (_, test, _, _) in TESTS {
        for c in [Cfg::Empty, Cfg::Enforce] {
            hook_rows(kern, c, test, "throughput", None, Some("skb_egress"), rep);
        }
        let mut row = Row::new(
            K,
            format!("throughput, enforcer enforce minus empty hook, {test}: skb_egress"),
            "ns/run",
        );
        row.samples = paired(
            &per_run(Cfg::Enforce, test),
            &per_run(Cfg::Empty, test),
            |x, e| x - e,
        );
        rep.push(row);
    }
}

pub fn measure(
    db: &std::path::Path,
    policy: &CompiledPolicy,
    runs: usize,
    rep: &mut Report,
) -> Result<()> {
    let scn = Scenario::new();
    let _server = Server::start(&scn)?;

    // The agent as a host runs it: the full database as its only source
    // (the runs below layer it under the sandbox's test database, whose
    // addresses they use, which costs the agent a second table).
    let mut only = Row::new(
        "memory",
        "enforcer agent peak RSS (VmHWM), full database as the only source",
        "MiB",
    )
    .target("<=", 64.0);
    {
        let config = scn.config_with("enforce", "deny", &[db.to_owned()], "", "");
        let test_db = format!("{:?}, ", scn.db.display().to_string());
        let config = config.replacen(&test_db, "", 1);
        let mut agent = scn.start(&config);
        if let Some(kb) = agent.pid().and_then(memory::peak_rss_kb) {
            only.samples.push(kb as f64 / 1024.0);
        }
        agent.stop();
        agent.uninstall();
    }
    rep.push(only);

    let mut b = set_up(&scn, db, policy)?;
    println!(
        "  {} runs, each measuring {} connect and {} throughput configurations in a rotated order",
        runs,
        CONNECT_CFGS.len(),
        THROUGHPUT_CFGS.len()
    );
    let t = Instant::now();
    let r = interleaved(&mut b, runs);
    let mut rss = Row::new(
        "memory",
        "enforcer agent peak RSS (VmHWM), full database layered under the test database, after the connect runs",
        "MiB",
    );
    if let Some(kb) = b.agent.pid().and_then(memory::peak_rss_kb) {
        rss.samples.push(kb as f64 / 1024.0);
    }
    b.agent.stop();
    b.agent.uninstall();
    let _ = load::in_ns(&b.ns, "nft", &["delete", "table", "inet", "eebench"], None);
    let _ = load::in_ns(&b.ns, "ipset", &["destroy"], None);
    // The empty hook goes with its cgroup.
    enforcer_tests::sandbox::remove_cgroup(&b.empty);
    let (conn, conn_k, thr, thr_k) = r?;
    println!("  interleaved runs took {:.0} s", t.elapsed().as_secs_f64());
    connect_rows(&conn, &conn_k, rep);
    throughput_rows(&thr, &thr_k, rep);
    rep.push(rss);

    println!("  violation events: bounded search over paced refused connects");
    match crate::events::measure(&scn, db, runs) {
        Ok(rows) => {
            rep.rows.extend(rows);
            rep.notes.push(crate::events::note());
        }
        Err(e) => rep
            .not_measured
            .push(format!("violation-event rate: the run failed: {e:#}")),
    }

    rep.notes.push(format!(
        "connect rate: {COUNT} TCP connect()+close() (SO_LINGER 0) per configuration, path and run from the sandbox client to its veth peer; allowed path {} (DE in the test database), refused path {} (US; with no filter or an empty hook nothing refuses it, so that row is the same connect to another address); nftables and ipset rules live in the client namespace and reject with a TCP reset (ipset: other protocols with ICMP, after the same single set lookup)",
        addr::APPROVED_V4,
        addr::DENIED_V4
    ));
    rep.notes.push(format!(
        "connect and throughput configurations are interleaved, so background load falls on all alike: in each of the {runs} runs, the connect rate of every configuration comes from {ROUNDS} rounds of {} connects per path, every round visiting every configuration in an order rotated per round, and likewise for throughput (see below); the rows in the sections marked \"paired per run\" are, per run, a configuration against no filter (or the enforcer against a firewall) of the same run, and their median is the median of those per-run values, not a ratio of medians; min and max show how far single runs scatter. Switching configurations starts nothing: no filter, the empty hook and the agent are sibling cgroups (each sample's process starts in the configuration's), the one agent's global mode is switched with `enforcer mode` over its control socket, and the firewalls' sets stay loaded while only their hooked chain is added and removed (with either off, the namespace has no netfilter hook)",
        COUNT / ROUNDS
    ));
    rep.notes.push(format!(
        "added time per connection over no filter, in % = (no filter's rate / the configuration's rate - 1) x 100 per run; the nftables (ipset) / enforcer ratio divides the median of those added times (allowed path) and is left out (-) when the enforcer's median is not above 0, i.e. lost in the noise; throughput: per run, {IPERF_ROUNDS} rounds of {IPERF_SECS} s of iperf3 per configuration and test (order rotated per round), averaged"
    ));
    rep.notes.push(format!(
        "BPF run time: the kernel's own per-program run_time_ns and run_cnt (BPF_ENABLE_STATS, held only around extra samples: {COUNT} connects per path, {IPERF_STATS_SECS} s per iperf3 test, taken after the configuration's rate samples in every run; timing adds two clock reads per program run, which the rate samples must not pay); \"all hooks\" sums every attached program's time over the sample per connection (connect4, or connect6 on the kernel-only allowed IPv6 path to {}, once; skb_egress per SYN, ACK and RST), and \"minus empty hook\" subtracts the empty programs' time of the same run: the datapath's own connect() overhead, free of the rate noise; it excludes the hook dispatch both pay alike",
        addr::APPROVED_V6
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_configuration_takes_every_position_once_over_n_runs() {
        let n = CONNECT_CFGS.len();
        for pos in 0..n {
            let mut seen: Vec<Cfg> = (0..n).map(|run| rotated(CONNECT_CFGS, run)[pos]).collect();
            seen.sort_by_key(|c| CONNECT_CFGS.iter().position(|x| x == c));
            assert_eq!(seen, CONNECT_CFGS, "position {pos}");
        }
        for run in 0..2 * n {
            let mut order = rotated(CONNECT_CFGS, run);
            order.sort_by_key(|c| CONNECT_CFGS.iter().position(|x| x == c));
            assert_eq!(order, CONNECT_CFGS, "run {run} measures each once");
        }
    }

    #[test]
    fn pairs_are_taken_within_a_run() {
        // A drift that doubles everything in run 2 leaves the paired
        // ratio alone.
        let none = [100.0, 200.0, 100.0];
        let filt = [90.0, 180.0, 90.0];
        assert_eq!(paired(&filt, &none, |x, n| x / n), vec![0.9, 0.9, 0.9]);
    }

    #[test]
    fn added_time_is_relative_to_no_filter_time_per_connection() {
        // 20,000/s is 50 us per connection; 10,000/s is 100 us: +100 %.
        assert!((added_pct(20_000.0, 10_000.0) - 100.0).abs() < 1e-9);
        assert!((added_pct(20_000.0, 19_800.0) - 1.0101).abs() < 1e-3);
        assert!(added_pct(20_000.0, 40_000.0) < 0.0, "a faster refusal");
    }

    #[test]
    fn a_ratio_to_a_cost_lost_in_the_noise_is_not_given() {
        assert_eq!(cost_ratio(3.0, 1.0), 3.0);
        assert!(cost_ratio(3.0, 0.0).is_nan());
        assert!(cost_ratio(3.0, -0.5).is_nan());
    }
}
