//! `ee-probe`: the real clients and server of the integration tests and the
//! demo, run inside the sandbox's namespaces and cgroup.
//!
//! - `ee-probe connect tcp|udp <ip> <port> [count]`: `count` attempts, one
//!   JSON line each: `{"ok":true}` or `{"ok":false,"errno":1,"error":"..."}`.
//!   TCP: connect() then read the greeting; UDP: connect() then send();
//!   udp-sendto: sendto() on an unconnected socket; udp-echo: sendto() and
//!   wait up to 2 s for the echo (a datagram dropped on the way, beyond
//!   this host, gives no error otherwise).
//! - `ee-probe hold <ip> <port>`: one TCP connection, kept open; prints the
//!   connect result, then for each stdin line `send <n>` writes n bytes and
//!   waits (2 s) for their echo, printing `{"ok":true,"echoed":n}` or the
//!   error; ends on `quit` or end of input.
//! - `ee-probe transfer <ip> <port> <n>`: connect, send n bytes, half-close,
//!   read the echo to the end: `{"ok":true,"echoed":n}`.
//! - `ee-probe tfo <ip> <port> <n>`: TCP Fast Open: n bytes in the SYN
//!   (`sendto(MSG_FASTOPEN)`, needs net.ipv4.tcp_fastopen set for it), then
//!   the echo as for `hold`.
//! - `ee-probe ping <ip> [count]`: ICMP/ICMPv6 echo over a raw socket, one
//!   line per request: ok when the reply came within 1 s.
//! - `ee-probe stream <max_ms> <max_count> <ip:port>...`: a client that
//!   never pauses: TCP connect(), send a nonce and read it back (point it
//!   at the echo port), round-robin over the destinations, until `max_ms`
//!   have passed, `max_count` attempts were made, or a line (or end of
//!   input) arrives on stdin. One JSON line per attempt:
//!   `{"seq":0,"dst":"ip:port","ok":true,"start_ns":..,"end_ns":..}`
//!   (CLOCK_MONOTONIC, shared with the test process), on failure with
//!   `errno`, `error`, `stage` (`connect` or `exchange`) and `timeout`.
//! - `ee-probe halfopen <ip> <port> <count> <max_ms>`: `count` TCP
//!   connections, each sent the first line of an HTTP request and never
//!   the rest (a slow or hostile client), held until `max_ms` have passed
//!   or a line (or end of input) arrives on stdin. Prints
//!   `{"opened":n,"failed":m}` once all were tried.
//! - `ee-probe serve <port>`: a dual-stack TCP greeter (a minimal HTTP
//!   response, so `curl` works against it) and a UDP echo on `[::]:<port>`,
//!   and a TCP echo (Fast Open enabled) on `<port>+1`; prints `ready` once
//!   bound, runs until killed.
//!
//! Every result line carries the probe's pid, so tests can match events to
//! the process that caused them.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::ExitCode,
    time::Duration,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["connect", proto, ip, port, rest @ ..] => {
            let (Ok(ip), Ok(port)) = (ip.parse::<IpAddr>(), port.parse::<u16>()) else {
                eprintln!("ee-probe: bad address or port");
                return ExitCode::from(2);
            };
            let count: u32 = rest.first().and_then(|c| c.parse().ok()).unwrap_or(1);
            let dst = SocketAddr::new(ip, port);
            for _ in 0..count {
                let result = match *proto {
                    "tcp" => tcp(dst),
                    "udp" => udp(dst),
                    "udp-sendto" => udp_sendto(dst),
                    "udp-echo" => udp_echo(dst),
                    other => {
                        eprintln!("ee-probe: unknown protocol {other}");
                        return ExitCode::from(2);
                    }
                };
                println!("{}", report(result.map(|()| None)));
            }
            ExitCode::SUCCESS
        }
        ["halfopen", ip, port, count, max_ms] => {
            match (
                parse_dst(ip, port),
                count.parse::<usize>(),
                max_ms.parse::<u64>(),
            ) {
                (Some(dst), Ok(count), Ok(max_ms)) => halfopen(dst, count, max_ms),
                _ => usage(),
            }
        }
        ["hold", ip, port] => match parse_dst(ip, port) {
            Some(dst) => hold(dst),
            None => usage(),
        },
        ["transfer", ip, port, n] => match (parse_dst(ip, port), n.parse::<usize>()) {
            (Some(dst), Ok(n)) => {
                println!("{}", report(transfer(dst, n)));
                ExitCode::SUCCESS
            }
            _ => usage(),
        },
        ["tfo", ip, port, n] => match (parse_dst(ip, port), n.parse::<usize>()) {
            (Some(dst), Ok(n)) => {
                println!("{}", report(tfo(dst, n)));
                ExitCode::SUCCESS
            }
            _ => usage(),
        },
        ["ping", ip, rest @ ..] => {
            let Ok(ip) = ip.parse::<IpAddr>() else {
                return usage();
            };
            let count: u16 = rest.first().and_then(|c| c.parse().ok()).unwrap_or(1);
            for seq in 0..count {
                println!("{}", report(ping(ip, seq).map(|()| None)));
            }
            ExitCode::SUCCESS
        }
        ["stream", max_ms, max_count, dsts @ ..] => {
            let (Ok(max_ms), Ok(max_count)) = (max_ms.parse::<u64>(), max_count.parse::<u64>())
            else {
                return usage();
            };
            let Ok(dsts) = dsts
                .iter()
                .map(|d| d.parse::<SocketAddr>())
                .collect::<Result<Vec<_>, _>>()
            else {
                eprintln!("ee-probe: bad destination (ip:port, [v6]:port)");
                return ExitCode::from(2);
            };
            if dsts.is_empty() {
                return usage();
            }
            stream(Duration::from_millis(max_ms), max_count, &dsts)
        }
        ["serve", port] => match port.parse::<u16>() {
            Ok(port) => serve(port),
            Err(_) => {
                eprintln!("ee-probe: bad port");
                ExitCode::from(2)
            }
        },
        _ => usage(),
    }
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: ee-probe connect tcp|udp|udp-sendto|udp-echo <ip> <port> [count] | hold <ip> <port> | \
         transfer <ip> <port> <n> | tfo <ip> <port> <n> | ping <ip> [count] | \
         stream <max_ms> <max_count> <ip:port>... | serve <port>"
    );
    ExitCode::from(2)
}

fn parse_dst(ip: &str, port: &str) -> Option<SocketAddr> {
    Some(SocketAddr::new(ip.parse().ok()?, port.parse().ok()?))
}

/// One JSON result line; `echoed` is how many bytes came back, where the
/// command waits for an echo.
fn report<T: Into<Option<usize>>>(result: std::io::Result<T>) -> String {
    let pid = std::process::id();
    match result {
        Ok(echoed) => match echoed.into() {
            Some(n) => serde_json::json!({ "ok": true, "pid": pid, "echoed": n }),
            None => serde_json::json!({ "ok": true, "pid": pid }),
        }
        .to_string(),
        Err(e) => serde_json::json!({
            "ok": false,
            "pid": pid,
            "errno": e.raw_os_error(),
            "error": e.to_string(),
        })
        .to_string(),
    }
}

/// Writes `n` bytes and reads `n` back within 2 s.
fn echo(s: &mut TcpStream, n: usize) -> std::io::Result<usize> {
    s.write_all(&vec![b'x'; n])?;
    read_echo(s, n)
}

fn read_echo(s: &mut TcpStream, n: usize) -> std::io::Result<usize> {
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut back = vec![0u8; n];
    s.read_exact(&mut back)?;
    Ok(n)
}

fn hold(dst: SocketAddr) -> ExitCode {
    let mut stream = match TcpStream::connect_timeout(&dst, Duration::from_secs(3)) {
        Ok(s) => {
            println!("{}", report(Ok::<_, std::io::Error>(None)));
            s
        }
        Err(e) => {
            println!("{}", report::<Option<usize>>(Err(e)));
            return ExitCode::SUCCESS;
        }
    };
    let _ = std::io::stdout().flush();
    for line in std::io::stdin().lines() {
        let Ok(line) = line else { break };
        match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["send", n] => match n.parse::<usize>() {
                Ok(n) => println!("{}", report(echo(&mut stream, n))),
                Err(_) => return usage(),
            },
            ["quit"] => break,
            _ => return usage(),
        }
        let _ = std::io::stdout().flush();
    }
    ExitCode::SUCCESS
}

fn transfer(dst: SocketAddr, n: usize) -> std::io::Result<usize> {
    let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(3))?;
    s.write_all(&vec![b'x'; n])?;
    s.shutdown(std::net::Shutdown::Write)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut back = Vec::with_capacity(n);
    s.read_to_end(&mut back)?;
    Ok(back.len())
}

/// Data in the SYN: `sendto(MSG_FASTOPEN)` on an unconnected TCP socket
/// connects and sends in one call (Documentation/networking/ip-sysctl.rst,
/// tcp_fastopen).
fn tfo(dst: SocketAddr, n: usize) -> std::io::Result<usize> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let domain = if dst.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let (storage, len) = sockaddr(dst);
    let data = vec![b'x'; n];
    // SAFETY: data and storage outlive the call; len is storage's size.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_FASTOPEN,
            std::ptr::from_ref(&storage).cast(),
            len,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut stream = TcpStream::from(fd);
    read_echo(&mut stream, n)
}

fn sockaddr(dst: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match dst {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_in.
            unsafe { std::ptr::write(std::ptr::from_mut(&mut storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write(std::ptr::from_mut(&mut storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// One ICMP echo request over a raw socket; `Ok` when the matching reply
/// arrives within 1 s. Raw sockets bypass connect/sendmsg: only the packet
/// hook sees them.
fn ping(ip: IpAddr, seq: u16) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let (domain, proto, request, reply) = match ip {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, 8u8, 0u8),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, 128u8, 129u8),
    };
    let sock = Socket::new(domain, Type::RAW, Some(proto))?;
    let id = (std::process::id() & 0xffff) as u16;
    let mut msg = [0u8; 16];
    msg[0] = request;
    msg[4..6].copy_from_slice(&id.to_be_bytes());
    msg[6..8].copy_from_slice(&seq.to_be_bytes());
    msg[8..].copy_from_slice(b"eeprobe!");
    if ip.is_ipv4() {
        // ICMPv6 checksums are filled in by the kernel for raw sockets
        // (RFC 3542 section 3.1); ICMPv4 ones are ours to compute.
        let sum = checksum(&msg);
        msg[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    sock.send_to(&msg, &SockAddr::from(SocketAddr::new(ip, 0)))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1500];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no echo reply within 1 s",
            ));
        }
        sock.set_read_timeout(Some(left))?;
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        // SAFETY: recv initialised the first n bytes.
        let got: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        // An IPv4 raw socket hands over the IP header too.
        let icmp = if ip.is_ipv4() {
            let ihl = usize::from(got.first().copied().unwrap_or(0) & 0x0f) * 4;
            got.get(ihl..).unwrap_or(&[])
        } else {
            &got[..]
        };
        if icmp.len() >= 8
            && icmp[0] == reply
            && icmp[4..6] == id.to_be_bytes()
            && icmp[6..8] == seq.to_be_bytes()
        {
            return Ok(());
        }
    }
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn tcp(dst: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut greeting = Vec::new();
    s.read_to_end(&mut greeting)?;
    Ok(())
}

/// How long one `stream` attempt may wait for the handshake, then for the
/// echo: long enough that a loaded machine does not time out, short enough
/// that a connection cut half-way costs little.
const STREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// CLOCK_MONOTONIC in nanoseconds: the clock the test reads too (both
/// processes share the host's time namespace), so attempts can be ordered
/// against what the test did.
fn monotonic_ns() -> u64 {
    // SAFETY: all-zero is a valid timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a pointer to a timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// connect(), then a nonce to the echo server and back: data went both
/// ways. (The greeter answers even when the request never arrived, after
/// its read timeout, so a greeting would not prove that the client's data
/// left.) The error says which step failed.
fn tcp_exchange(dst: SocketAddr) -> Result<(), (&'static str, std::io::Error)> {
    let mut s = TcpStream::connect_timeout(&dst, STREAM_TIMEOUT).map_err(|e| ("connect", e))?;
    let exchange = |s: &mut TcpStream| -> std::io::Result<()> {
        s.set_read_timeout(Some(STREAM_TIMEOUT))?;
        let nonce = monotonic_ns().to_be_bytes();
        s.write_all(&nonce)?;
        let mut back = [0u8; 8];
        s.read_exact(&mut back)?;
        if back != nonce {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the echo is not what was sent",
            ));
        }
        Ok(())
    };
    let result = exchange(&mut s).map_err(|e| ("exchange", e));
    // Reset instead of closing: a close would leave a TIME_WAIT socket per
    // attempt on this side for a minute, and a stream makes tens of
    // thousands of attempts to a few addresses: the ephemeral ports would
    // run out.
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    result
}

/// The continuous client: attempts back to back, round-robin over `dsts`,
/// bounded by time, count and stdin.
fn stream(max: Duration, max_count: u64, dsts: &[SocketAddr]) -> ExitCode {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        // Any line, or the end of input (the test went away), stops it.
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            stop.store(true, Ordering::Relaxed);
        });
    }
    let started = std::time::Instant::now();
    let pid = std::process::id();
    let mut out = std::io::stdout().lock();
    for seq in 0..max_count {
        if stop.load(Ordering::Relaxed) || started.elapsed() >= max {
            break;
        }
        let dst = dsts[(seq % dsts.len() as u64) as usize];
        let start_ns = monotonic_ns();
        let result = tcp_exchange(dst);
        let end_ns = monotonic_ns();
        let line = match result {
            Ok(()) => serde_json::json!({
                "seq": seq, "dst": dst.to_string(), "ok": true, "pid": pid,
                "start_ns": start_ns, "end_ns": end_ns,
            }),
            Err((stage, e)) => serde_json::json!({
                "seq": seq, "dst": dst.to_string(), "ok": false, "pid": pid,
                "errno": e.raw_os_error(), "error": e.to_string(), "stage": stage,
                // connect_timeout reports TimedOut without an errno; a read
                // timeout is EAGAIN (WouldBlock).
                "timeout": matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ),
                "start_ns": start_ns, "end_ns": end_ns,
            }),
        };
        // Flushed per line: the test follows the attempts as they happen.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    ExitCode::SUCCESS
}

fn udp(dst: SocketAddr) -> std::io::Result<()> {
    let local: SocketAddr = if dst.is_ipv4() {
        "0.0.0.0:0".parse().map_err(std::io::Error::other)?
    } else {
        "[::]:0".parse().map_err(std::io::Error::other)?
    };
    let s = UdpSocket::bind(local)?;
    s.connect(dst)?;
    s.send(b"ping")?;
    Ok(())
}

/// An unconnected socket: the destination goes with each datagram.
fn udp_sendto(dst: SocketAddr) -> std::io::Result<()> {
    let local: SocketAddr = if dst.is_ipv4() {
        "0.0.0.0:0".parse().map_err(std::io::Error::other)?
    } else {
        "[::]:0".parse().map_err(std::io::Error::other)?
    };
    let s = UdpSocket::bind(local)?;
    s.send_to(b"ping", dst)?;
    Ok(())
}

/// A TCP listener that accepts Fast Open (data in the SYN).
fn echo_listener(at: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV6, Type::STREAM, None)?;
    sock.set_only_v6(false)?;
    sock.set_reuse_address(true)?;
    sock.bind(&at.into())?;
    // TCP_FASTOPEN takes the queue length of pending Fast Open requests
    // (socket2 has no setter for it).
    let qlen: libc::c_int = 16;
    // SAFETY: a valid socket and an int option of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::IPPROTO_TCP,
            libc::TCP_FASTOPEN,
            std::ptr::from_ref(&qlen).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    sock.listen(64)?;
    Ok(sock.into())
}

/// A datagram and its echo: proves the datagram reached the server and
/// came back (a timeout reports EAGAIN). Unconnected, because the server
/// holds several addresses on one subnet and answers from the one its
/// routing picks, not necessarily the one asked; the 4-byte payload is a
/// nonce, so only this datagram's echo counts.
fn udp_echo(dst: SocketAddr) -> std::io::Result<()> {
    let local: SocketAddr = if dst.is_ipv4() {
        "0.0.0.0:0".parse().map_err(std::io::Error::other)?
    } else {
        "[::]:0".parse().map_err(std::io::Error::other)?
    };
    let s = UdpSocket::bind(local)?;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(std::io::Error::other)?
        .subsec_nanos()
        ^ std::process::id();
    let payload = nonce.to_be_bytes();
    s.send_to(&payload, dst)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 64];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::from_raw_os_error(libc::EAGAIN));
        }
        s.set_read_timeout(Some(left))?;
        let (n, _) = s.recv_from(&mut buf)?;
        if buf[..n] == payload {
            return Ok(());
        }
    }
}

fn serve(port: u16) -> ExitCode {
    let any = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
    // Linux binds [::] dual-stack by default (net.ipv6.bindv6only = 0), so
    // one socket answers IPv4 too.
    let tcp = match TcpListener::bind(any) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ee-probe: bind tcp {any}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let udp = match UdpSocket::bind(any) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ee-probe: bind udp {any}: {e}");
            return ExitCode::FAILURE;
        }
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
    });
    let echo_at = SocketAddr::new(any.ip(), port.wrapping_add(1));
    let echo = match echo_listener(echo_at) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ee-probe: bind tcp echo {echo_at}: {e}");
            return ExitCode::FAILURE;
        }
    };
    std::thread::spawn(move || {
        for stream in echo.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    println!("ready");
    let _ = std::io::stdout().flush();
    for stream in tcp.incoming() {
        let Ok(mut stream) = stream else { continue };
        // Read the request first: closing a socket with unread data resets
        // the connection, and curl would report an error.
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request);
        // A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d.
        let local = stream
            .local_addr()
            .map(|a| a.ip().to_canonical().to_string())
            .unwrap_or_default();
        let body = format!("hello from {local}\n");
        let _ = write!(
            stream,
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    ExitCode::SUCCESS
}

/// `halfopen`: see the module doc.
fn halfopen(dst: SocketAddr, count: usize, max_ms: u64) -> ExitCode {
    let deadline = std::time::Instant::now() + Duration::from_millis(max_ms);
    let mut held = Vec::with_capacity(count);
    let mut failed = 0usize;
    for _ in 0..count {
        if std::time::Instant::now() >= deadline {
            break;
        }
        match TcpStream::connect_timeout(&dst, Duration::from_secs(1)) {
            Ok(mut s) => {
                let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n");
                held.push(s);
            }
            Err(_) => failed += 1,
        }
    }
    println!("{{\"opened\":{},\"failed\":{failed}}}", held.len());
    let _ = std::io::stdout().flush();
    // Until told to stop (a line or end of input) or the time is up.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
    drop(held);
    ExitCode::SUCCESS
}
