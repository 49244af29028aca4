//! connect()+close() rate from the sandbox's client (its namespace and
//! cgroup) to the server peer over veth, on the allowed and the refused
//! path, for: no filter, the real agent (observe, enforce), nftables
//! interval sets and iptables + ipset hash:net (both inside the client
//! namespace, holding the same refused prefixes), and an empty hook; and
//! the agent's peak RSS (VmHWM) while it holds the full database.
//!
//! The loop runs in a child (this binary, re-executed with [`LOOP_ARG`]) so
//! it is in the client's namespace and cgroup. Sockets close with
//! SO_LINGER 0 (a RST, no TIME_WAIT), so thousands of connections in a row
//! never run out of ephemeral ports; every connect is bounded by a 1 s
//! timeout.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use enforcer::policy::CompiledPolicy;
use enforcer_tests::{
    sandbox::{PORT, addr},
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
const S: &str = "connect()+close() rate";
/// Connections per sample.
const COUNT: u32 = 2000;

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

/// One sample: connections per second from the client to `ip`.
fn sample(scn: &Scenario, ip: IpAddr) -> Result<(f64, u32, u32)> {
    run_loop(scn, ip, COUNT, None)
}

/// `count` connects to `ip` paced at `rate` per second: (rate reached,
/// connected, failed).
pub fn paced(scn: &Scenario, ip: IpAddr, count: u32, rate: u32) -> Result<(f64, u32, u32)> {
    run_loop(scn, ip, count, Some(rate))
}

fn run_loop(scn: &Scenario, ip: IpAddr, count: u32, rate: Option<u32>) -> Result<(f64, u32, u32)> {
    let exe = std::env::current_exe().context("current_exe")?;
    let mut cmd = scn.sb.client_command(exe);
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

/// Samples both paths `runs` times under the filter called `name`, and
/// checks each path did what the filter should (`refuses`: the refused
/// path fails).
fn both_paths(
    scn: &Scenario,
    name: &str,
    refuses: bool,
    runs: usize,
    rep: &mut Report,
) -> Result<()> {
    for (path, ip, expect_fail) in [
        ("allowed", IpAddr::V4(addr::APPROVED_V4), false),
        ("refused", IpAddr::V4(addr::DENIED_V4), refuses),
    ] {
        let mut row = Row::new(S, format!("{name}, {path} path"), "conn/s");
        if name != "no filter" {
            row = row.vs("no filter", format!("no filter, {path} path"));
        }
        if name.starts_with("enforcer") {
            row = row
                .vs("nftables", format!("nftables interval sets, {path} path"))
                .vs("ipset", format!("iptables + ipset hash:net, {path} path"));
        }
        for _ in 0..runs {
            let (rate, ok, failed) = sample(scn, ip)?;
            let all_failed = failed == COUNT && ok == 0;
            let all_ok = ok == COUNT;
            if (expect_fail && !all_failed) || (!expect_fail && !all_ok) {
                bail!(
                    "{name}, {path} path to {ip}: {ok} connected, {failed} failed, which is not what this filter does"
                );
            }
            row.samples.push(rate);
        }
        println!("  {name}, {path}: median {:.0} conn/s", row.median());
        rep.push(row);
    }
    Ok(())
}

const T: &str = "throughput over veth (iperf3)";
/// iperf3's port in the server namespace.
const IPERF_PORT: u16 = 5211;
/// Seconds per iperf3 sample.
const IPERF_SECS: &str = "2";

/// One iperf3 sample from the client to the approved address: TCP bulk in
/// Gbit/s (received), or 64-byte UDP datagrams received per second, in
/// thousands (`-b 0`: as fast as the sender can).
fn iperf(scn: &Scenario, udp: bool) -> Result<f64> {
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
    enforcer_tests::sandbox::enter(&mut srv, &scn.sb.server_ns, None);
    let mut srv = Server(srv.spawn().context("starting iperf3 -s")?);
    let mut last = String::new();
    // The server needs a moment to listen: retry the client briefly.
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        let mut cmd = scn.sb.client_command("iperf3");
        cmd.args([
            "-c",
            &addr::APPROVED_V4.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
        ])
        .args(["-t", IPERF_SECS, "-J", "--connect-timeout", "2000"]);
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

/// TCP bulk and UDP packet rate under the filter called `name`.
fn throughput(scn: &Scenario, name: &str, runs: usize, rep: &mut Report) -> Result<()> {
    for (udp, what, unit) in [
        (false, "TCP bulk", "Gbit/s"),
        (true, "64-byte UDP received", "kpkt/s"),
    ] {
        let mut row = Row::new(T, format!("{name}, {what}"), unit);
        if name != "no filter" {
            row = row.vs("no filter", format!("no filter, {what}"));
        }
        if name.starts_with("enforcer") {
            row = row.vs("nftables", format!("nftables interval sets, {what}"));
        }
        for _ in 0..runs {
            row.samples.push(iperf(scn, udp)?);
        }
        println!("  {name}, {what}: median {:.2} {unit}", row.median());
        rep.push(row);
    }
    Ok(())
}

pub fn measure(
    db: &std::path::Path,
    policy: &CompiledPolicy,
    runs: usize,
    rep: &mut Report,
) -> Result<()> {
    let scn = Scenario::new();
    let ns = scn.sb.client_ns.clone();
    let _server = Server::start(&scn)?;

    both_paths(&scn, "no filter", false, runs, rep)?;
    throughput(&scn, "no filter", runs, rep)?;

    let mut rss = Row::new(
        "memory",
        "enforcer agent peak RSS (VmHWM), full database",
        "MiB",
    );
    for mode in ["observe", "enforce"] {
        let config = scn.config_with(mode, "deny", &[db.to_owned()], "", "");
        let mut agent = scn.start(&config);
        both_paths(
            &scn,
            &format!("enforcer {mode}"),
            mode == "enforce",
            runs,
            rep,
        )?;
        if mode == "enforce" {
            throughput(&scn, "enforcer enforce", runs, rep)?;
        }
        if let Some(kb) = agent.pid().and_then(memory::peak_rss_kb) {
            rss.samples.push(kb as f64 / 1024.0);
        }
        agent.stop();
        agent.uninstall();
    }
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

    // The same refused prefixes as the agent's, plus the sandbox's refused
    // and unknown test addresses (the agent refuses those through the test
    // database layered first).
    // The database may place the sandbox's documentation ranges somewhere:
    // leave them out, so only the test database decides them, as for the
    // agent.
    let outside = |n: &String| match n.parse::<ipnetwork::IpNetwork>() {
        Ok(net) => {
            let sandbox: [ipnetwork::IpNetwork; 2] = [
                ipnetwork::IpNetwork::V4(
                    ipnetwork::Ipv4Network::new(addr::SERVER_V4, 24).expect("a /24"),
                ),
                ipnetwork::IpNetwork::V6(
                    ipnetwork::Ipv6Network::new(addr::SERVER_V6, 32).expect("a /32"),
                ),
            ];
            !sandbox
                .iter()
                .any(|s| s.contains(net.network()) || net.contains(s.network()))
        }
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
    let nft = scn.dir.path().join("bench.nft");
    fs::write(&nft, load::nft_ruleset(&v4, &v6))?;
    load::in_ns(&ns, "nft", &["-f", &nft.display().to_string()], None)?;
    let r = both_paths(&scn, "nftables interval sets", true, runs, rep)
        .and_then(|()| throughput(&scn, "nftables interval sets", runs, rep));
    load::in_ns(&ns, "nft", &["delete", "table", "inet", "eebench"], None)?;
    r?;

    let ipset = scn.dir.path().join("bench.ipset");
    fs::write(&ipset, load::ipset_restore(&v4, &v6))?;
    load::in_ns(&ns, "ipset", &["restore"], Some(&ipset))?;
    let rule = [
        "-p",
        "tcp",
        "-m",
        "set",
        "--match-set",
        "eeb4",
        "dst",
        "-j",
        "REJECT",
        "--reject-with",
        "tcp-reset",
    ];
    let mut add = vec!["-A", "OUTPUT"];
    add.extend(rule);
    load::in_ns(&ns, "iptables", &add, None)?;
    let r = both_paths(&scn, "iptables + ipset hash:net", true, runs, rep);
    let mut del = vec!["-D", "OUTPUT"];
    del.extend(rule);
    let _ = load::in_ns(&ns, "iptables", &del, None);
    let _ = load::in_ns(&ns, "ipset", &["destroy"], None);
    r?;

    // The empty hook last: a BPF_PROG_ATTACH attachment stays until the
    // sandbox's cgroup is removed (when `scn` drops).
    let cg = fs::File::open(&scn.sb.cgroup).context("open the sandbox cgroup")?;
    let skb = bpf::load_program(
        bpf::BPF_PROG_TYPE_CGROUP_SKB,
        bpf::BPF_CGROUP_INET_EGRESS,
        "bench_empty",
        &bpf::empty_program(),
    )?;
    let c4 = bpf::load_program(
        bpf::BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
        bpf::BPF_CGROUP_INET4_CONNECT,
        "bench_empty4",
        &bpf::empty_program(),
    )?;
    let c6 = bpf::load_program(
        bpf::BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
        bpf::BPF_CGROUP_INET6_CONNECT,
        "bench_empty6",
        &bpf::empty_program(),
    )?;
    bpf::attach_cgroup(&skb, &cg, bpf::BPF_CGROUP_INET_EGRESS)?;
    bpf::attach_cgroup(&c4, &cg, bpf::BPF_CGROUP_INET4_CONNECT)?;
    bpf::attach_cgroup(&c6, &cg, bpf::BPF_CGROUP_INET6_CONNECT)?;
    both_paths(
        &scn,
        "empty hook (connect4/6 + skb egress)",
        false,
        runs,
        rep,
    )?;
    // The enforcer rows compare with the empty hook too.
    for r in rep
        .rows
        .iter_mut()
        .filter(|r| r.section == S && r.name.starts_with("enforcer"))
    {
        let path = if r.name.ends_with("allowed path") {
            "allowed"
        } else {
            "refused"
        };
        r.versus.push((
            "empty hook",
            format!("empty hook (connect4/6 + skb egress), {path} path"),
        ));
    }
    rep.notes.push(format!(
        "connect rate: {COUNT} TCP connect()+close() (SO_LINGER 0) per sample from the sandbox client to its veth peer; allowed path {} (DE in the test database), refused path {} (US; with no filter or an empty hook nothing refuses it, so that row is the same connect to another address); nftables and ipset rules live in the client namespace and reject with a TCP reset",
        addr::APPROVED_V4,
        addr::DENIED_V4
    ));
    Ok(())
}
