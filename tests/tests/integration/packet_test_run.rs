//! Kernel unit tests of the packet program (`skb_egress`, cgroup_skb) with
//! `BPF_PROG_TEST_RUN`: the real datapath object is loaded through the
//! agent library under a private pin directory, a policy compiled from a
//! TOML config is installed, and hand-built TCP/UDP packets are run through
//! the program. Nothing is attached to any cgroup or interface.
//!
//! What it proves, for IPv4 and IPv6 destinations in enforce and observe
//! mode: the program's return value (1 pass, 0 drop: drop only for a refused
//! destination in enforce mode) and that exactly one packet and exactly the
//! IP packet's length in bytes are counted under `skb_egress`, the family,
//! the country and the outcome the decision order gives. Every adjacent pair
//! of that order (deny > allow > site > built-in > GeoIP > unknown) has a
//! row where the two rules disagree, so reordering them in `decide.rs` (or in
//! the agent's rule folding, whose precedence `decide.rs` relies on) fails a
//! row. An IPv4-mapped IPv6 destination is decided and counted as IPv4.
//!
//! It also shows that the per-socket verdict cache works under test_run:
//! with `repeat` > 1 the kernel reuses one skb and one socket, and the
//! repeats take the cached verdict (they emit no event); and that the tcx
//! program (forwarded traffic) leaves a packet that carries a local socket
//! alone, the one branch of it test_run can reach (see
//! `tcx_skips_local_sockets`).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use aya::programs::{CgroupSkb, SchedClassifier, TestRun, TestRunOptions};
use enforcer::{
    config::Config,
    datapath::{
        Datapath,
        counters::{CounterKind, CounterReader},
    },
    policy::{CompiledPolicy, country_index},
};
use enforcer_common::{Family, Hook, Mode, Outcome};
use enforcer_tests::{
    privileged,
    sandbox::{PREFIX, addr, sweep_stale},
    scenario::TEST_DB_CSV,
    skip_unless,
    testrun::{self, PinDir},
};

/// `BPF_PROG_TEST_RUN` for skb programs (net/bpf/test_run.c,
/// `bpf_prog_test_run_skb`, as of the 6.x kernels this runs on):
/// <https://github.com/torvalds/linux/blob/bd6c11bc43c496cddfc6cf603b5d45365606dbd5/net/bpf/test_run.c>
///
/// - `data_in` must start with an Ethernet header (`size < ETH_HLEN` is
///   EINVAL). `eth_type_trans()` sets `skb->protocol` from its EtherType and
///   pulls it, and for a non-L2 type such as cgroup_skb it is not pushed back
///   before the run: the program sees the packet from the IP header on, and
///   `skb->len` is `data_in.len() - ETH_HLEN`, the IP packet's length, which
///   is what the program counts as bytes. The assertions use that exactly.
/// - `skb->sk` is a fresh dummy full socket (`sk_alloc(AF_UNSPEC,
///   bpf_dummy_proto)` + `sock_init_data`), one per syscall, freed after it:
///   socket storage can be created on it but never outlives one
///   `BPF_PROG_TEST_RUN`, so no row sees a verdict cached by another row
///   (whatever the generation). Within one call, `repeat` reuses the same
///   skb and socket: the repeats after the first take the cached path.
/// - `sk_alloc` associates that socket with the calling task's cgroup
///   (`cgroup_sk_alloc`), so the per-cgroup mode walk would see this
///   process's cgroup, not a scope cgroup. This test sets no override
///   (`CFG_OVERRIDES` stays 0): the walk is skipped and the global mode
///   applies, which is what the rows assert.
/// - The device is the calling network namespace's loopback; nothing is
///   sent: the skb is freed after the run.
const ETH_HLEN: usize = 14;

const PROGRAM: &str = "skb_egress";
/// cgroup_skb return values.
const PASS: u32 = 1;
const DROP: u32 = 0;

/// The database: the sandbox's test entries (198.51.100.10 and
/// 2001:db8:1::10 in Germany, .20 / ::20 in the United States), plus the
/// GeoIP answers each precedence row needs its exception to disagree with.
fn database() -> String {
    format!(
        "{TEST_DB_CSV}\
         198.51.100.40/32,US\n\
         198.51.100.50/32,DE\n\
         198.51.100.60/32,DE\n\
         2001:db8:1::40/128,US\n\
         2001:db8:1::50/128,DE\n\
         2001:db8:1::60/128,DE\n\
         10.66.0.0/16,US\n\
         fd66::/16,US\n\
         198.18.0.0/24,US\n\
         2001:db8:2::/48,DE\n"
    )
}

/// The config, read through the agent's own parser and compiler. Only the
/// EEA is approved and unknown destinations are denied, so "approved",
/// "unknown" and "exempt" give three different outcomes. The scope names a
/// cgroup that does not exist: this test never resolves nor attaches it.
fn config_text(pin_dir: &Path, id: &str) -> String {
    format!(
        r#"mode = "enforce"
approved = ["EEA"]
unknown = "deny"
deny = ["198.51.100.50/32", "198.51.100.60/32", "10.99.7.0/24",
        "2001:db8:1::50/128", "2001:db8:1::60/128", "fd99:0:7::/48"]
allow = ["198.51.100.40/32", "198.51.100.60/32", "10.88.1.0/24",
         "2001:db8:1::40/128", "2001:db8:1::60/128", "fd88:0:1::/48"]

[geoip]
sources = ["test-geo.csv"]

[scope]
cgroups = ["{id}-never-attached"]

[agent]
pin_dir = {pin:?}

[[site]]
cidr = "10.88.0.0/16"
country = "US"

[[site]]
cidr = "10.99.0.0/16"
country = "FR"

[[site]]
cidr = "198.18.0.0/24"
country = "DE"

[[site]]
cidr = "198.18.9.0/24"
country = "FR"

[[site]]
cidr = "fd88::/32"
country = "US"

[[site]]
cidr = "fd99::/32"
country = "FR"

[[site]]
cidr = "2001:db8:2::/48"
country = "US"
"#,
        pin = pin_dir.display().to_string(),
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    fn header_len(self) -> usize {
        match self {
            Proto::Tcp => 20,
            Proto::Udp => 8,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// What the policy makes of a destination, before the mode applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Approved,
    Refused,
    Exempt,
}

struct Row {
    what: &'static str,
    /// The precedence pair this row orders (the two rules disagree here).
    proves: &'static str,
    dest: &'static str,
    proto: Proto,
    family: Family,
    /// ISO code the counters must carry; `None`: unknown (index 0).
    country: Option<&'static str>,
    class: Class,
}

const fn row(
    what: &'static str,
    proves: &'static str,
    dest: &'static str,
    proto: Proto,
    family: Family,
    country: Option<&'static str>,
    class: Class,
) -> Row {
    Row {
        what,
        proves,
        dest,
        proto,
        family,
        country,
        class,
    }
}

use Class::*;
use Family::{Ipv4, Ipv6};
use Proto::{Tcp, Udp};

#[rustfmt::skip]
const ROWS: &[Row] = &[
    // IPv4
    row("GeoIP DE, approved", "", "198.51.100.10", Tcp, Ipv4, Some("DE"), Approved),
    row("GeoIP US, not approved", "", "198.51.100.20", Udp, Ipv4, Some("US"), Refused),
    row("in no database", "", "198.51.100.30", Tcp, Ipv4, None, Refused),
    row("built-in private", "", "10.0.0.1", Udp, Ipv4, None, Exempt),
    row("built-in loopback", "", "127.0.0.1", Tcp, Ipv4, None, Exempt),
    row("allow, GeoIP US", "allow > GeoIP", "198.51.100.40", Udp, Ipv4, None, Exempt),
    row("deny, GeoIP DE", "deny > GeoIP", "198.51.100.50", Tcp, Ipv4, Some("DE"), Refused),
    row("deny and allow, GeoIP DE", "deny > allow", "198.51.100.60", Udp, Ipv4, Some("DE"), Refused),
    row("site US on 10/8", "site > built-in", "10.88.0.1", Tcp, Ipv4, Some("US"), Refused),
    row("site FR on 10/8", "site > built-in", "10.99.0.1", Udp, Ipv4, Some("FR"), Approved),
    row("allow inside site US", "allow > site", "10.88.1.1", Tcp, Ipv4, None, Exempt),
    row("deny inside site FR", "deny > site", "10.99.7.7", Udp, Ipv4, None, Refused),
    row("built-in, GeoIP US", "built-in > GeoIP", "10.66.0.1", Tcp, Ipv4, None, Exempt),
    row("site DE, GeoIP US", "site > GeoIP", "198.18.0.1", Udp, Ipv4, Some("DE"), Approved),
    row("site FR, no database", "site > unknown", "198.18.9.1", Tcp, Ipv4, Some("FR"), Approved),
    // IPv6
    row("GeoIP DE, approved", "", "2001:db8:1::10", Udp, Ipv6, Some("DE"), Approved),
    row("GeoIP US, not approved", "", "2001:db8:1::20", Tcp, Ipv6, Some("US"), Refused),
    row("in no database", "", "2001:db8:1::30", Udp, Ipv6, None, Refused),
    row("built-in private", "", "fd00::1", Tcp, Ipv6, None, Exempt),
    row("built-in loopback", "", "::1", Udp, Ipv6, None, Exempt),
    row("allow, GeoIP US", "allow > GeoIP", "2001:db8:1::40", Tcp, Ipv6, None, Exempt),
    row("deny, GeoIP DE", "deny > GeoIP", "2001:db8:1::50", Udp, Ipv6, Some("DE"), Refused),
    row("deny and allow, GeoIP DE", "deny > allow", "2001:db8:1::60", Tcp, Ipv6, Some("DE"), Refused),
    row("site US on fc00::/7", "site > built-in", "fd88::1", Udp, Ipv6, Some("US"), Refused),
    row("site FR on fc00::/7", "site > built-in", "fd99::1", Tcp, Ipv6, Some("FR"), Approved),
    row("allow inside site US", "allow > site", "fd88:0:1::1", Udp, Ipv6, None, Exempt),
    row("deny inside site FR", "deny > site", "fd99:0:7::7", Tcp, Ipv6, None, Refused),
    row("built-in, GeoIP US", "built-in > GeoIP", "fd66::1", Udp, Ipv6, None, Exempt),
    row("site US, GeoIP DE", "site > GeoIP", "2001:db8:2::1", Tcp, Ipv6, Some("US"), Refused),
    // IPv6 packets to IPv4-mapped addresses: decided and counted as IPv4.
    row("v4-mapped, GeoIP US", "mapped = IPv4", "::ffff:198.51.100.20", Udp, Ipv4, Some("US"), Refused),
    row("v4-mapped, built-in", "mapped = IPv4", "::ffff:10.0.0.1", Tcp, Ipv4, None, Exempt),
];

impl Row {
    fn outcome(&self, mode: Mode) -> Outcome {
        match (self.class, mode) {
            (Approved, _) => Outcome::Allowed,
            (Exempt, _) => Outcome::Exempt,
            (Refused, Mode::Enforce) => Outcome::Denied,
            (Refused, Mode::Observe) => Outcome::WouldDeny,
        }
    }

    fn country_index(&self) -> u16 {
        self.country.map_or(0, |c| {
            country_index(c.parse().expect("a valid country code in the table"))
        })
    }
}

/// Builds an Ethernet frame holding one IPv4 or IPv6 packet with a TCP (SYN)
/// or UDP header and `payload` bytes. Lengths are valid (IPv4 total length,
/// IPv6 payload length, UDP length); only the IPv4 header checksum is
/// computed: the program reads addresses and ports, never checksums.
/// Returns the frame and the IP packet's length.
fn frame(dest: IpAddr, proto: Proto, payload: usize) -> (Vec<u8>, usize) {
    let l4_len = proto.header_len() + payload;
    let mut f = Vec::with_capacity(ETH_HLEN + 40 + l4_len);
    // Locally administered MAC addresses; eth_type_trans only compares them
    // with the loopback device's to set pkt_type.
    f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]);
    let ip_len = match dest {
        IpAddr::V4(d) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let total = 20 + l4_len;
            let mut h = [0u8; 20];
            h[0] = 0x45; // version 4, 5 words
            h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
            h[6] = 0x40; // don't fragment, offset 0: the first fragment
            h[8] = 64;
            h[9] = proto.number();
            h[12..16].copy_from_slice(&addr::CLIENT_V4.octets());
            h[16..20].copy_from_slice(&d.octets());
            let sum = ipv4_checksum(&h);
            h[10..12].copy_from_slice(&sum.to_be_bytes());
            f.extend_from_slice(&h);
            total
        }
        IpAddr::V6(d) => {
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            let mut h = [0u8; 40];
            h[0] = 0x60;
            h[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            h[6] = proto.number();
            h[7] = 64;
            // A dual-stack socket sending to a mapped address has a mapped
            // source too.
            let src: Ipv6Addr = if d.to_ipv4_mapped().is_some() {
                addr::CLIENT_V4.to_ipv6_mapped()
            } else {
                addr::CLIENT_V6
            };
            h[8..24].copy_from_slice(&src.octets());
            h[24..40].copy_from_slice(&d.octets());
            f.extend_from_slice(&h);
            40 + l4_len
        }
    };
    match proto {
        Proto::Tcp => {
            let mut t = [0u8; 20];
            t[0..2].copy_from_slice(&40000u16.to_be_bytes());
            t[2..4].copy_from_slice(&443u16.to_be_bytes());
            t[4..8].copy_from_slice(&1u32.to_be_bytes());
            t[12] = 5 << 4; // data offset: 5 words
            t[13] = 0x02; // SYN
            t[14..16].copy_from_slice(&64240u16.to_be_bytes());
            f.extend_from_slice(&t);
        }
        Proto::Udp => {
            let mut u = [0u8; 8];
            u[0..2].copy_from_slice(&40000u16.to_be_bytes());
            u[2..4].copy_from_slice(&53u16.to_be_bytes());
            u[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            f.extend_from_slice(&u);
        }
    }
    f.resize(f.len() + payload, 0xab);
    assert_eq!(f.len(), ETH_HLEN + ip_len, "frame builder length");
    (f, ip_len)
}

fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The ISO code of a country index (0: "unknown").
fn country_code(index: u16) -> String {
    enforcer_common::country::code(index).map_or("unknown".into(), |c| {
        String::from_utf8_lossy(&c).into_owned()
    })
}

type Key = (Hook, Family, u16, Outcome);

/// Every non-zero counter of one kind.
fn snapshot(reader: &CounterReader, kind: CounterKind) -> BTreeMap<Key, u64> {
    reader
        .read(kind)
        .unwrap_or_else(|e| panic!("reading {kind:?} counters: {e}"))
        .into_iter()
        .map(|c| ((c.hook, c.family, c.country, c.outcome), c.value))
        .collect()
}

/// What changed between two snapshots (counters only ever grow).
fn delta(before: &BTreeMap<Key, u64>, after: &BTreeMap<Key, u64>) -> BTreeMap<Key, u64> {
    after
        .iter()
        .filter_map(|(k, &v)| {
            let was = before.get(k).copied().unwrap_or(0);
            assert!(v >= was, "counter {k:?} went down: {was} -> {v}");
            (v > was).then_some((*k, v - was))
        })
        .collect()
}

/// All three counter kinds.
struct Counters<'a>(&'a CounterReader);

impl Counters<'_> {
    fn take(&self) -> [BTreeMap<Key, u64>; 3] {
        [
            snapshot(self.0, CounterKind::Packets),
            snapshot(self.0, CounterKind::Bytes),
            snapshot(self.0, CounterKind::Connections),
        ]
    }
}

/// Runs the program once (or `repeat` times on the same skb and socket) and
/// returns its (last) return value.
fn run(prog: &CgroupSkb, data: &[u8], repeat: u32) -> Result<u32, aya::programs::ProgramError> {
    let opts = TestRunOptions {
        data_in: Some(data),
        repeat,
        ..TestRunOptions::default()
    };
    prog.test_run(opts).map(|r| r.return_value)
}

/// The loaded packet program.
fn skb_egress(dp: &Datapath) -> &CgroupSkb {
    dp.program(PROGRAM)
        .unwrap_or_else(|| panic!("{PROGRAM} is not in the datapath"))
        .try_into()
        .unwrap_or_else(|e| panic!("{PROGRAM} is not cgroup_skb: {e}"))
}

#[test]
fn skb_egress_decisions_under_test_run() {
    skip_unless!(privileged(), "needs root to load BPF programs");
    // A test killed earlier cannot run its destructors: remove what it left.
    sweep_stale();
    let id = format!("{PREFIX}{}x0-testrun", std::process::id());
    // Declared first so it is dropped last, after the datapath's fds.
    let pins = PinDir(PathBuf::from(enforcer::paths::BPFFS).join(&id));

    let dir = tempfile::Builder::new()
        .prefix(&format!("{id}-"))
        .tempdir()
        .expect("scratch directory");
    fs::write(dir.path().join("test-geo.csv"), database()).expect("write the test database");
    let config_path = dir.path().join("enforcer.toml");
    fs::write(&config_path, config_text(&pins.0, &id)).expect("write the config");

    // What `enforcer run` does before the kernel (cli/run.rs `prepare`),
    // minus the scope: parse and validate, load the sources, compile.
    let config = Config::load(&config_path).unwrap_or_else(|e| panic!("config: {e}"));
    let policy = CompiledPolicy::compile(&config).unwrap_or_else(|e| panic!("policy: {e}"));

    let mut dp = Datapath::load(&config.pin_dir).unwrap_or_else(|e| panic!("load: {e}"));
    assert!(!dp.adopted(), "a fresh pin directory has nothing to adopt");
    let installed = dp
        .install(&policy, config.mode)
        .unwrap_or_else(|e| panic!("install: {e}"));
    assert_eq!(config.mode, Mode::Enforce);
    let reader = CounterReader::open(&config.pin_dir).unwrap_or_else(|e| panic!("counters: {e}"));
    let counters = Counters(&reader);

    // First run: a frame that is not IP. It shows whether the kernel runs
    // cgroup_skb programs at all (else skip), and that the program lets
    // what it cannot parse through without counting it.
    let mut not_ip = vec![0u8; ETH_HLEN + 46];
    not_ip[..12].copy_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]);
    not_ip[12..14].copy_from_slice(&0x88b5u16.to_be_bytes()); // local experimental
    let before = counters.take();
    let ret = run(skb_egress(&dp), &not_ip, 1);
    skip_unless!(
        ret.is_ok(),
        "BPF_PROG_TEST_RUN of the cgroup_skb program failed: {:?}",
        ret
    );
    assert_eq!(ret.ok(), Some(PASS), "a non-IP frame passes");
    assert_eq!(counters.take(), before, "a non-IP frame is not counted");

    tcx_skips_local_sockets(&dp, &counters);

    let mut table = String::new();
    let mut failures = Vec::new();
    // ret and the counted columns are what the kernel did; `result` says
    // whether that is what the row expects.
    let _ = writeln!(
        table,
        "{:<8} {:<3} {:<22} {:<26} {:<16} | {:>3} {:<10} {:<4} {:<7} {:>5} | result",
        "mode", "l4", "destination", "case", "proves", "ret", "counted", "fam", "country", "bytes"
    );
    let mut generation = installed.generation;
    for mode in [Mode::Enforce, Mode::Observe] {
        if dp.mode().unwrap_or_else(|e| panic!("mode: {e}")) != Some(mode) {
            // Like `enforcer mode`: both slots' mode words, and a new
            // generation, so no cached verdict of the old mode is used.
            let g = dp
                .set_mode(mode)
                .unwrap_or_else(|e| panic!("set_mode: {e}"));
            assert_ne!(g, generation, "a mode change bumps the generation");
            generation = g;
        }
        for (i, r) in ROWS.iter().enumerate() {
            let dest: IpAddr = r.dest.parse().expect("table address");
            // A different length per row, so bytes cannot match by chance.
            let (data, ip_len) = frame(dest, r.proto, 3 + 7 * i);
            let outcome = r.outcome(mode);
            let want_ret = if outcome == Outcome::Denied {
                DROP
            } else {
                PASS
            };
            let key = (Hook::SkbEgress, r.family, r.country_index(), outcome);

            let before = counters.take();
            let ret = run(skb_egress(&dp), &data, 1)
                .unwrap_or_else(|e| panic!("test_run {} ({:?}): {e}", r.dest, mode));
            let after = counters.take();
            let packets = delta(&before[0], &after[0]);
            let bytes = delta(&before[1], &after[1]);
            let connections = delta(&before[2], &after[2]);

            let mut problems = Vec::new();
            if ret != want_ret {
                problems.push(format!("returned {ret}, expected {want_ret}"));
            }
            if packets != BTreeMap::from([(key, 1)]) {
                problems.push(format!("packets {packets:?}, expected {{{key:?}: 1}}"));
            }
            // skb->len: the frame minus the Ethernet header test_run pulled.
            if bytes != BTreeMap::from([(key, ip_len as u64)]) {
                problems.push(format!("bytes {bytes:?}, expected {{{key:?}: {ip_len}}}"));
            }
            if !connections.is_empty() {
                problems.push(format!("connection counters moved: {connections:?}"));
            }
            let result = if problems.is_empty() {
                "ok".to_owned()
            } else {
                let p = problems.join("; ");
                failures.push(format!("{} {} ({}): {p}", mode.label(), r.dest, r.what));
                format!("FAIL: {p}")
            };
            // What the kernel counted (the expectation is in `result`).
            let (verdict, fam, country, counted) =
                match (packets.iter().next(), bytes.values().next(), packets.len()) {
                    (Some(((_, f, c, o), _)), Some(b), 1) => (
                        o.label(),
                        if *f == Family::Ipv4 { "v4" } else { "v6" },
                        country_code(*c),
                        b.to_string(),
                    ),
                    _ => ("-", "-", format!("{} keys", packets.len()), "-".into()),
                };
            let _ = writeln!(
                table,
                "{:<8} {:<3} {:<22} {:<26} {:<16} | {:>3} {:<10} {:<4} {:<7} {:>5} | {result}",
                mode.label(),
                r.proto.label(),
                r.dest,
                r.what,
                r.proves,
                ret,
                verdict,
                fam,
                country,
                counted,
            );
        }
    }
    println!("skb_egress under BPF_PROG_TEST_RUN (generation {generation}):\n{table}");
    assert!(
        failures.is_empty(),
        "{} of {} runs wrong:\n{}",
        failures.len(),
        2 * ROWS.len(),
        failures.join("\n")
    );

    cache_probe(&mut dp, &counters);
}

/// The tcx program under test_run. The kernel gives every test_run skb the
/// dummy socket described at [`ETH_HLEN`], and tcx_egress leaves packets
/// that carry a socket to the cgroup hooks (they were sent by this host,
/// not forwarded; `ip_forward()` drops any skb that still has one). So
/// test_run can exercise exactly that branch: a refused destination in
/// enforce mode gets `TCX_NEXT` and nothing is counted. The decision itself
/// is the shared `decide` the rows above check, and forwarded.rs proves the
/// tcx path end to end with real forwarded packets.
fn tcx_skips_local_sockets(dp: &Datapath, counters: &Counters<'_>) {
    /// `TCX_NEXT` (-1) as the u32 test_run reports.
    const TCX_NEXT: u32 = u32::MAX;
    let prog: &SchedClassifier = dp
        .program("tcx_egress")
        .expect("tcx_egress is in the datapath")
        .try_into()
        .unwrap_or_else(|e| panic!("tcx_egress is not sched_cls: {e}"));
    for dest in ["198.51.100.20", "2001:db8:1::20"] {
        let dest: IpAddr = dest.parse().expect("address");
        let (data, _) = frame(dest, Proto::Udp, 5);
        let before = counters.take();
        let ret = prog
            .test_run(TestRunOptions {
                data_in: Some(&data),
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("test_run tcx_egress {dest}: {e}"))
            .return_value;
        assert_eq!(
            ret, TCX_NEXT,
            "tcx_egress must pass a packet with a local socket (to {dest}) on to the next program"
        );
        assert_eq!(
            counters.take(),
            before,
            "tcx_egress must not count a packet with a local socket (to {dest})"
        );
    }
}

/// The cached path, seen through events: only a fresh decision emits an
/// event, and the token bucket (rate 1/s, burst 1) lets exactly one through
/// per second on this CPU, counting the rest as suppressed. `repeat = 3`
/// runs one skb and one socket three times: if the repeats re-decided they
/// would be suppressed twice; cached, they emit nothing. Then a second call
/// (a new socket) decides afresh and finds the bucket empty: one suppressed,
/// which shows the probe can tell the two apart.
fn cache_probe(dp: &mut Datapath, counters: &Counters<'_>) {
    // Per-CPU state (rate limits, caches) must be the same between runs.
    testrun::pin_to_one_cpu();
    dp.set_mode(Mode::Enforce)
        .unwrap_or_else(|e| panic!("set_mode: {e}"));
    dp.set_event_limits(1, 1)
        .unwrap_or_else(|e| panic!("set_event_limits: {e}"));
    let prog = skb_egress(dp);
    let us = country_index("US".parse().expect("US"));
    let key = (Hook::SkbEgress, Family::Ipv4, us, Outcome::Denied);
    let (data, ip_len) = frame(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 20)), Proto::Tcp, 5);
    let suppressed = || counters.0.suppressed().expect("event stats");

    let s0 = suppressed();
    let before = counters.take();
    let ret = run(prog, &data, 3).expect("test_run repeat 3");
    let after = counters.take();
    let s1 = suppressed();
    println!(
        "cache probe, repeat 3: ret {ret}, packets {:?}, suppressed {:?} -> {:?}",
        delta(&before[0], &after[0]),
        s0,
        s1
    );
    assert_eq!(
        ret, DROP,
        "a refused destination is dropped in enforce mode"
    );
    assert_eq!(delta(&before[0], &after[0]), BTreeMap::from([(key, 3)]));
    assert_eq!(
        delta(&before[1], &after[1]),
        BTreeMap::from([(key, 3 * ip_len as u64)])
    );
    assert_eq!(
        s1, s0,
        "the repeats on one socket must use the cached verdict (no second decision, no event)"
    );

    let ret = run(prog, &data, 1).expect("test_run");
    let s2 = suppressed();
    println!("cache probe, new socket: ret {ret}, suppressed {s2:?}");
    assert_eq!(ret, DROP);
    assert_eq!(
        s2.rate_limit,
        s1.rate_limit + 1,
        "a new socket decides afresh, and its event finds the bucket empty"
    );
}
