//! Header parsing shared by the TC and XDP programs.

use aya_ebpf::programs::{TcContext, XdpContext};
use session_common::MacKey;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

const ETH_HLEN: u32 = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// From the client: LAN ingress, keyed by source MAC.
    Up,
    /// To the client: LAN egress, keyed by destination MAC.
    Down,
}

/// Read access to a packet, by TC (skb) or XDP (linear buffer).
pub trait Packet {
    /// Bytes from the start of the Ethernet header to the end of the packet.
    fn len(&self) -> u32;
    fn load<T: Copy>(&self, offset: u32) -> Option<T>;
    /// Wire segments in the packet: above 1 for a GSO aggregate.
    fn segs(&self) -> u32;
}

impl Packet for TcContext {
    #[inline(always)]
    fn len(&self) -> u32 {
        TcContext::len(self)
    }

    #[inline(always)]
    fn load<T: Copy>(&self, offset: u32) -> Option<T> {
        // Headers are almost always in the linear part: read them directly, and
        // only fall back to bpf_skb_load_bytes (which also reads paged data).
        let start = self.data() + offset as usize;
        if start + core::mem::size_of::<T>() <= self.data_end() {
            return Some(unsafe { core::ptr::read_unaligned(start as *const T) });
        }
        TcContext::load(self, offset as usize).ok()
    }

    #[inline(always)]
    fn segs(&self) -> u32 {
        unsafe { (*self.skb.skb).gso_segs }
    }
}

impl Packet for XdpContext {
    #[inline(always)]
    fn len(&self) -> u32 {
        (self.data_end() - self.data()) as u32
    }

    #[inline(always)]
    fn load<T: Copy>(&self, offset: u32) -> Option<T> {
        let start = self.data() + offset as usize;
        if start + core::mem::size_of::<T>() > self.data_end() {
            return None;
        }
        Some(unsafe { core::ptr::read_unaligned(start as *const T) })
    }

    #[inline(always)]
    fn segs(&self) -> u32 {
        1
    }
}

/// What the datapath needs to know about a client's IP packet.
pub struct IpInfo {
    /// IP-layer length: IPv4 total length, IPv6 payload length + 40 (the skb's
    /// length for GSO aggregates that leave the length field zero).
    pub len: u32,
    /// The destination is a unicast address.
    pub unicast: bool,
    pub proto: u8,
    /// The far end's port (destination going up, source coming down), 0 if none.
    pub port: u16,
    pub icmp6_type: u8,
    /// The far end's address (destination going up, source coming down), IPv4 mapped into IPv6.
    pub peer: [u8; 16],
}

pub enum Parsed {
    /// Not a client's IP packet (non-IP ethertype, group MAC, runt frame): pass uncounted.
    NotForUs,
    /// Claims to be IP but its header is inconsistent: drop.
    Malformed(MacKey),
    Ip(MacKey, IpInfo),
}

#[inline(always)]
pub fn parse<P: Packet>(p: &P, dir: Dir) -> Parsed {
    let Some(eth) = p.load::<[u8; 14]>(0) else {
        return Parsed::NotForUs;
    };
    let mac = match dir {
        Dir::Up => MacKey::new([eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]]),
        Dir::Down => MacKey::new([eth[0], eth[1], eth[2], eth[3], eth[4], eth[5]]),
    };
    if mac.is_group() {
        return Parsed::NotForUs;
    }
    let avail = p.len().saturating_sub(ETH_HLEN);
    let ip = match u16::from_be_bytes([eth[12], eth[13]]) {
        ETH_P_IP => parse_v4(p, dir, avail),
        ETH_P_IPV6 => parse_v6(p, dir, avail),
        _ => return Parsed::NotForUs,
    };
    match ip {
        Some(ip) => Parsed::Ip(mac, ip),
        None => Parsed::Malformed(mac),
    }
}

#[inline(always)]
fn parse_v4<P: Packet>(p: &P, dir: Dir, avail: u32) -> Option<IpInfo> {
    let h = p.load::<[u8; 20]>(ETH_HLEN)?;
    if h[0] >> 4 != 4 {
        return None;
    }
    let ihl = ((h[0] & 0x0f) as u32) * 4;
    if ihl < 20 {
        return None;
    }
    let tot = u16::from_be_bytes([h[2], h[3]]) as u32;
    let len = if tot == 0 && avail >= ihl {
        avail // GSO aggregate larger than 64 KiB (BIG TCP)
    } else if tot < ihl || tot > avail {
        return None;
    } else {
        tot
    };
    if !ipv4_csum_ok(p, &h, ihl) {
        return None;
    }
    let frag_off = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
    let proto = h[9];
    let (src, dst) = ([h[12], h[13], h[14], h[15]], [h[16], h[17], h[18], h[19]]);
    let unicast = dst[0] < 224 && dst != [255, 255, 255, 255];
    let peer4 = match dir {
        Dir::Up => dst,
        Dir::Down => src,
    };
    let mut port = 0;
    if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) && frag_off == 0 && ihl + 4 <= len {
        let ports = p.load::<[u8; 4]>(ETH_HLEN + ihl)?;
        port = match dir {
            Dir::Up => u16::from_be_bytes([ports[2], ports[3]]),
            Dir::Down => u16::from_be_bytes([ports[0], ports[1]]),
        };
    }
    let mut peer = [0u8; 16];
    peer[10] = 0xff;
    peer[11] = 0xff;
    peer[12] = peer4[0];
    peer[13] = peer4[1];
    peer[14] = peer4[2];
    peer[15] = peer4[3];
    Some(IpInfo {
        len,
        unicast,
        proto,
        port,
        icmp6_type: 0,
        peer,
    })
}

/// The IPv4 header checksum (options included) is valid: the kernel drops
/// packets whose checksum is wrong, so they must not count as usage either.
#[inline(always)]
fn ipv4_csum_ok<P: Packet>(p: &P, h: &[u8; 20], ihl: u32) -> bool {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < 20 {
        sum += ((h[i] as u32) << 8) | h[i + 1] as u32;
        i += 2;
    }
    // Options, one word at a constant offset each: XDP's verifier needs
    // bounds it can see (a loop over a variable offset is rejected).
    let ok = option_word::<0, P>(p, ihl, &mut sum)
        && option_word::<1, P>(p, ihl, &mut sum)
        && option_word::<2, P>(p, ihl, &mut sum)
        && option_word::<3, P>(p, ihl, &mut sum)
        && option_word::<4, P>(p, ihl, &mut sum)
        && option_word::<5, P>(p, ihl, &mut sum)
        && option_word::<6, P>(p, ihl, &mut sum)
        && option_word::<7, P>(p, ihl, &mut sum)
        && option_word::<8, P>(p, ihl, &mut sum)
        && option_word::<9, P>(p, ihl, &mut sum);
    if !ok {
        return false;
    }
    // At most 30 words: two folds bring the sum into 16 bits.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum == 0xffff
}

/// Adds option word `K` (header bytes 20 + 4K..) to `sum` if the header has it;
/// false if the header claims it but the packet ends first.
#[inline(always)]
fn option_word<const K: u32, P: Packet>(p: &P, ihl: u32, sum: &mut u32) -> bool {
    if ihl <= 20 + 4 * K {
        return true;
    }
    let Some(w) = p.load::<[u8; 4]>(ETH_HLEN + 20 + 4 * K) else {
        return false;
    };
    *sum += ((w[0] as u32) << 8) | w[1] as u32;
    *sum += ((w[2] as u32) << 8) | w[3] as u32;
    true
}

#[inline(always)]
fn parse_v6<P: Packet>(p: &P, dir: Dir, avail: u32) -> Option<IpInfo> {
    let h = p.load::<[u8; 40]>(ETH_HLEN)?;
    if h[0] >> 4 != 6 {
        return None;
    }
    let payload = u16::from_be_bytes([h[4], h[5]]) as u32;
    let len = if payload == 0 && avail >= 40 {
        avail // jumbogram or GSO aggregate larger than 64 KiB
    } else if payload + 40 > avail {
        return None;
    } else {
        payload + 40
    };
    let proto = h[6];
    let mut peer = [0u8; 16];
    let base = match dir {
        Dir::Up => 24,
        Dir::Down => 8,
    };
    let mut i = 0;
    while i < 16 {
        peer[i] = h[base + i];
        i += 1;
    }
    let unicast = h[24] != 0xff;
    let mut port = 0;
    let mut icmp6_type = 0;
    if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) && len >= 44 {
        let ports = p.load::<[u8; 4]>(ETH_HLEN + 40)?;
        port = match dir {
            Dir::Up => u16::from_be_bytes([ports[2], ports[3]]),
            Dir::Down => u16::from_be_bytes([ports[0], ports[1]]),
        };
    } else if proto == IPPROTO_ICMPV6 && len >= 41 {
        icmp6_type = p.load::<u8>(ETH_HLEN + 40)?;
    }
    Some(IpInfo {
        len,
        unicast,
        proto,
        port,
        icmp6_type,
        peer,
    })
}
