//! `ee-probe`: the real clients and server of the integration tests and the
//! demo, run inside the sandbox's namespaces and cgroup.
//!
//! - `ee-probe connect tcp|udp <ip> <port> [count]`: `count` attempts, one
//!   JSON line each: `{"ok":true}` or `{"ok":false,"errno":1,"error":"..."}`.
//!   TCP: connect() then read the greeting; UDP: connect() then send();
//!   udp-sendto: sendto() on an unconnected socket; udp-echo: sendto() and
//!   wait up to 2 s for the echo (a datagram dropped on the way, beyond
//!   this host, gives no error otherwise).
//! - `ee-probe serve <port>`: a dual-stack TCP greeter (a minimal HTTP
//!   response, so `curl` works against it) and a UDP echo on `[::]:<port>`;
//!   prints `ready` once bound, runs until killed.

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
                println!("{}", report(result));
            }
            ExitCode::SUCCESS
        }
        ["serve", port] => match port.parse::<u16>() {
            Ok(port) => serve(port),
            Err(_) => {
                eprintln!("ee-probe: bad port");
                ExitCode::from(2)
            }
        },
        _ => {
            eprintln!(
                "usage: ee-probe connect tcp|udp|udp-sendto|udp-echo <ip> <port> [count] | ee-probe serve <port>"
            );
            ExitCode::from(2)
        }
    }
}

fn report(result: std::io::Result<()>) -> String {
    match result {
        Ok(()) => serde_json::json!({ "ok": true }).to_string(),
        Err(e) => serde_json::json!({
            "ok": false,
            "errno": e.raw_os_error(),
            "error": e.to_string(),
        })
        .to_string(),
    }
}

fn tcp(dst: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut greeting = Vec::new();
    s.read_to_end(&mut greeting)?;
    Ok(())
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
