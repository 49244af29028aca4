//! Reading a packet's destination (and protocol and port, for events) from
//! its IP header, for the packet hooks: at offset 0 for cgroup skb (the
//! packet starts at the IP header), after the Ethernet header for tcx.

use aya_ebpf::programs::sk_buff::SkBuff;

use crate::decide::Dest;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;

/// Reads fixed-size pieces of a packet. A constant size matters: the
/// verifier rejects `bpf_skb_load_bytes` with a length that may be zero,
/// which aya's slice-based `load_bytes` computes.
pub trait Load {
    fn read<T>(&self, offset: usize) -> Option<T>;
}

/// Both packet hooks' context (`SkBuffContext::skb`, `TcContext::skb`).
impl Load for SkBuff {
    /// Straight from the packet when the bytes are in its linear part (the
    /// headers of a locally sent packet are, and a forwarded one's after
    /// the Ethernet header almost always), else through
    /// `bpf_skb_load_bytes`: a helper call per read, measurable per packet.
    #[inline(always)]
    fn read<T>(&self, offset: usize) -> Option<T> {
        // SAFETY: data and data_end are context fields the verifier turns
        // into packet pointers; the read below is within them (checked).
        let (data, end) = unsafe { ((*self.skb).data as usize, (*self.skb).data_end as usize) };
        let at = data + offset;
        if at + core::mem::size_of::<T>() <= end {
            // SAFETY: `at..at + size_of::<T>()` lies inside the packet's
            // linear data (checked above); T is plain bytes here.
            return Some(unsafe { core::ptr::read_unaligned(at as *const T) });
        }
        self.load::<T>(offset).ok()
    }
}

/// What the packet hooks need from a packet.
#[derive(Clone, Copy)]
pub struct Packet {
    pub dest: Dest,
    /// IP protocol (IPv4) or first next-header (IPv6).
    pub protocol: u8,
    /// Destination port for TCP, UDP and SCTP; 0 otherwise.
    pub dport: u16,
    /// Source (local) port for TCP, UDP and SCTP; 0 otherwise.
    pub sport: u16,
    /// A TCP SYN-ACK: the answer of a socket that accepted a connection.
    pub synack: bool,
}

/// Parses the IP header at `base`. `ethertype` is `skb->protocol` (network
/// byte order in the low 16 bits). Not IP, or too short: `None`, and the
/// hook lets the packet be; `truncated` is called first when the header
/// that `ethertype` announces cannot be read (for the hook to say whether
/// that is a failure or the traffic's doing).
#[inline(always)]
pub fn parse(
    ethertype: u32,
    base: usize,
    load: &impl Load,
    truncated: impl FnOnce(),
) -> Option<Packet> {
    match u16::from_be(ethertype as u16) {
        ETH_P_IP => {
            let Some(h) = load.read::<[u8; 20]>(base) else {
                truncated();
                return None;
            };
            if h[0] >> 4 != 4 {
                return None;
            }
            let ihl = ((h[0] & 0x0f) as usize) * 4;
            let protocol = h[9];
            // Only the first fragment carries the transport header.
            let first_fragment = (((h[6] & 0x1f) as u16) << 8 | h[7] as u16) == 0;
            let (sport, dport, synack) = if first_fragment {
                ports(protocol, base + ihl, load)
            } else {
                (0, 0, false)
            };
            Some(Packet {
                dest: Dest::V4([h[16], h[17], h[18], h[19]]),
                protocol,
                dport,
                sport,
                synack,
            })
        }
        ETH_P_IPV6 => {
            let Some(h) = load.read::<[u8; 40]>(base) else {
                truncated();
                return None;
            };
            if h[0] >> 4 != 6 {
                return None;
            }
            let mut d = [0u8; 16];
            d.copy_from_slice(&h[24..40]);
            let protocol = h[6];
            // Extension headers are not walked: the ports are for events only.
            let (sport, dport, synack) = ports(protocol, base + 40, load);
            Some(Packet {
                dest: Dest::from_v6(d),
                protocol,
                dport,
                sport,
                synack,
            })
        }
        _ => None,
    }
}

/// Source and destination port (TCP, UDP, SCTP) and whether a TCP
/// segment is a SYN-ACK (flags at offset 13: SYN 0x02, ACK 0x10).
#[inline(always)]
fn ports(protocol: u8, l4: usize, load: &impl Load) -> (u16, u16, bool) {
    if !matches!(protocol, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP) {
        return (0, 0, false);
    }
    // A TCP header has at least 20 bytes: its flags are read with its
    // ports, in one read (a separate one-byte read through
    // bpf_skb_load_bytes left the verifier an unread register).
    if protocol == IPPROTO_TCP {
        return match load.read::<[u8; 14]>(l4) {
            Some(h) => (
                u16::from_be_bytes([h[0], h[1]]),
                u16::from_be_bytes([h[2], h[3]]),
                h[13] & 0x12 == 0x12,
            ),
            None => (0, 0, false),
        };
    }
    let Some(p) = load.read::<[u8; 4]>(l4) else {
        return (0, 0, false);
    };
    let synack = false;
    (
        u16::from_be_bytes([p[0], p[1]]),
        u16::from_be_bytes([p[2], p[3]]),
        synack,
    )
}
