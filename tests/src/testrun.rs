//! For the tests that load the datapath through the library into a private
//! pin directory and run its programs with `BPF_PROG_TEST_RUN`
//! (packet_test_run.rs, check.rs, flat_tables.rs): the pin directory's
//! guard, and a reproducible random stream for drawing addresses.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use ipnetwork::IpNetwork;

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
