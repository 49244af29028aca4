//! For the tests that load the datapath through the library into a private
//! pin directory and run its programs with `BPF_PROG_TEST_RUN`
//! (packet_test_run.rs, check.rs, flat_tables.rs) and for ee-bench: the pin
//! directory's guard, a reproducible random stream for drawing addresses,
//! the UDP frame they hand the packet program, the 1% change of a GeoIP
//! table the reload tests and the benchmark apply, and pinning the test's
//! thread to one CPU.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use geoip::{CountryCode, GeoTable, Table};
use ipnetwork::IpNetwork;

use crate::sandbox::addr;

/// Length of the Ethernet header test_run expects before the IP header.
pub const ETH_HLEN: usize = 14;

/// A pin directory, removed on drop, also when the test panics. bpffs
/// itself is left mounted.
pub struct PinDir(pub PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        if self.0.exists()
            && let Err(e) = fs::remove_dir_all(&self.0)
        {
            eprintln!("warning: cannot remove {}: {e}", self.0.display());
        }
    }
}

/// The config of a datapath driven by test_run only: enforce, the EEA
/// approved, unknown denied, `source` the one GeoIP source, pins under
/// `pin_dir`, and a scope cgroup that is never created (named after `id`),
/// so nothing is ever attached.
pub fn test_run_config(pin_dir: &Path, id: &str, source: &Path) -> String {
    format!(
        "mode = \"enforce\"\n\
         approved = [\"EEA\"]\n\
         unknown = \"deny\"\n\
         [geoip]\n\
         sources = [{:?}]\n\
         [scope]\n\
         cgroups = [\"{id}-never-attached\"]\n\
         [agent]\n\
         pin_dir = {:?}\n",
        source.display().to_string(),
        pin_dir.display().to_string(),
    )
}

/// splitmix64: a reproducible stream from a printed seed, without a
/// dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (up to modulo bias, irrelevant here).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn u128(&mut self) -> u128 {
        (u128::from(self.next_u64()) << 64) | u128::from(self.next_u64())
    }

    /// A random address inside `net`.
    pub fn inside(&mut self, net: IpNetwork) -> IpAddr {
        match net {
            IpNetwork::V4(n) => {
                let host = (self.next_u64() as u32)
                    .checked_shr(u32::from(n.prefix()))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) | host))
            }
            IpNetwork::V6(n) => {
                let host = self.u128().checked_shr(u32::from(n.prefix())).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | host))
            }
        }
    }
}

/// A UDP packet from the sandbox client to `dest` port 53 in an Ethernet
/// frame (test_run hands the program the packet from the IP header on; see
/// packet_test_run.rs). An IPv4-mapped destination gets the mapped client
/// address as its source, as a dual-stack socket would send it.
pub fn udp_frame(dest: IpAddr) -> Vec<u8> {
    let udp_len: u16 = 8 + 4;
    let mut f = Vec::with_capacity(ETH_HLEN + 40 + udp_len as usize);
    f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]);
    match dest {
        IpAddr::V4(d) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let mut h = [0u8; 20];
            h[0] = 0x45;
            h[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
            h[6] = 0x40;
            h[8] = 64;
            h[9] = 17;
            h[12..16].copy_from_slice(&addr::CLIENT_V4.octets());
            h[16..20].copy_from_slice(&d.octets());
            f.extend_from_slice(&h);
        }
        IpAddr::V6(d) => {
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            let mut h = [0u8; 40];
            h[0] = 0x60;
            h[4..6].copy_from_slice(&udp_len.to_be_bytes());
            h[6] = 17;
            h[7] = 64;
            let src = if d.to_ipv4_mapped().is_some() {
                addr::CLIENT_V4.to_ipv6_mapped()
            } else {
                addr::CLIENT_V6
            };
            h[8..24].copy_from_slice(&src.octets());
            h[24..40].copy_from_slice(&d.octets());
            f.extend_from_slice(&h);
        }
    }
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&53u16.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0, 1, 2, 3, 4]);
    f
}

/// `geo` with the country of every 100th prefix (per family) changed: the
/// "1% reload" of flat_tables.rs and ee-bench.
pub fn perturbed(geo: &GeoTable) -> GeoTable {
    let de: CountryCode = "DE".parse().expect("a literal country code");
    let us: CountryCode = "US".parse().expect("a literal country code");
    let flip = |i: usize, c: CountryCode| match (i % 100 == 7, c == us) {
        (false, _) => c,
        (true, true) => de,
        (true, false) => us,
    };
    GeoTable {
        v4: Table::from_entries(
            geo.v4
                .prefixes()
                .enumerate()
                .map(|(i, (n, c))| (n, flip(i, c))),
        ),
        v6: Table::from_entries(
            geo.v6
                .prefixes()
                .enumerate()
                .map(|(i, (n, c))| (n, flip(i, c))),
        ),
        aliases: geo.aliases,
    }
}

/// Pins the calling thread to one CPU: the datapath's per-CPU state (the
/// event token bucket, the verdict cache, the log's rate limit) is then
/// the same from one `BPF_PROG_TEST_RUN` to the next.
pub fn pin_to_one_cpu() {
    use nix::{sched, unistd::Pid};
    let allowed = sched::sched_getaffinity(Pid::from_raw(0)).expect("sched_getaffinity");
    let cpu = (0..sched::CpuSet::count())
        .find(|&c| allowed.is_set(c).unwrap_or(false))
        .expect("some CPU is allowed");
    let mut one = sched::CpuSet::new();
    one.set(cpu).expect("CPU index in range");
    sched::sched_setaffinity(Pid::from_raw(0), &one).expect("sched_setaffinity");
}
