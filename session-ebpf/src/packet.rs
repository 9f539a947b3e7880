//! Header parsing shared by the TC and XDP programs.

use aya_ebpf::programs::{TcContext, XdpContext};
use session_common::MacKey;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

const ETH_HLEN: u32 = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// IPv6 hop-by-hop options header.
const NEXTHDR_HOP: u8 = 0;

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
    /// Reads a `T` at `offset`. Packet memory is read in `T`'s words (u16/u32,
    /// so the IP header costs a few loads, not one per byte) whatever the
    /// address: the verifier allows unaligned packet access where loads are
    /// cheap, and with NET_IP_ALIGN elsewhere the IP header is word aligned.
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
            return Some(unsafe { core::ptr::read(start as *const T) });
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
        Some(unsafe { core::ptr::read(start as *const T) })
    }

    #[inline(always)]
    fn segs(&self) -> u32 {
        1
    }
}

/// What the datapath needs to know about a client's IP packet. What only the
/// walled garden needs is read again from the packet when it is consulted
/// ([`IpInfo::far_end`]): kept out of the common path, it costs nothing there.
pub struct IpInfo {
    /// IP-layer length: IPv4 total length, IPv6 payload length + 40 (the skb's
    /// length for GSO aggregates that leave the length field zero).
    pub len: u32,
    /// The destination is a unicast address.
    pub unicast: bool,
    v6: bool,
}

/// The far end of a packet, for the walled garden.
pub struct FarEnd {
    pub proto: u8,
    /// The far end's port (destination going up, source coming down), 0 if none.
    pub port: u16,
    pub icmp6_type: u8,
    /// The far end's address (destination going up, source coming down), IPv4 mapped into IPv6.
    pub addr: [u8; 16],
}

impl IpInfo {
    /// The header was read whole by [`parse`] and the transport header, when
    /// read, lies within `len`, which the packet holds: these loads do not fail.
    #[inline(always)]
    pub fn far_end<P: Packet>(&self, p: &P, dir: Dir) -> FarEnd {
        let mut port = 0;
        let mut icmp6_type = 0;
        let proto;
        let mut addr = [0u8; 16];
        if self.v6 {
            let w1 = p.load::<u32>(ETH_HLEN + 4).unwrap_or(0).to_ne_bytes();
            proto = w1[2];
            let l4 = ETH_HLEN + 40;
            if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) && self.len >= 44 {
                port = far_port(p, l4, dir);
            } else if proto == IPPROTO_ICMPV6 && self.len >= 41 {
                icmp6_type = p.load::<u8>(l4).unwrap_or(0);
            }
            let off = match dir {
                Dir::Up => ETH_HLEN + 24,
                Dir::Down => ETH_HLEN + 8,
            };
            let a = p.load::<[u32; 4]>(off).unwrap_or([0; 4]);
            addr = unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(a) };
        } else {
            let h = p.load::<[u32; 5]>(ETH_HLEN).unwrap_or([0; 5]);
            let ihl = ((h[0].to_ne_bytes()[0] & 0x0f) as u32) * 4;
            let w1 = h[1].to_ne_bytes();
            let frag_off = u16::from_be_bytes([w1[2], w1[3]]) & 0x1fff;
            proto = h[2].to_ne_bytes()[1];
            if (proto == IPPROTO_TCP || proto == IPPROTO_UDP)
                && frag_off == 0
                && ihl + 4 <= self.len
            {
                port = far_port(p, ETH_HLEN + ihl, dir);
            }
            let a = match dir {
                Dir::Up => h[4],
                Dir::Down => h[3],
            }
            .to_ne_bytes();
            addr[10] = 0xff;
            addr[11] = 0xff;
            addr[12] = a[0];
            addr[13] = a[1];
            addr[14] = a[2];
            addr[15] = a[3];
        }
        FarEnd {
            proto,
            port,
            icmp6_type,
            addr,
        }
    }
}

/// The far end's port of the TCP or UDP header at `l4`.
#[inline(always)]
fn far_port<P: Packet>(p: &P, l4: u32, dir: Dir) -> u16 {
    let ports = p.load::<[u16; 2]>(l4).unwrap_or([0; 2]);
    u16::from_be(match dir {
        Dir::Up => ports[1],
        Dir::Down => ports[0],
    })
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
    let Some(eth) = p.load::<[u16; 7]>(0) else {
        return Parsed::NotForUs;
    };
    let words = match dir {
        Dir::Up => [eth[3], eth[4], eth[5]],
        Dir::Down => [eth[0], eth[1], eth[2]],
    };
    // Same bytes, as they are in memory.
    let mac = MacKey::new(unsafe { core::mem::transmute::<[u16; 3], [u8; 6]>(words) });
    if mac.is_group() {
        return Parsed::NotForUs;
    }
    let avail = p.len().saturating_sub(ETH_HLEN);
    let ip = match u16::from_be(eth[6]) {
        ETH_P_IP => parse_v4(p, avail),
        ETH_P_IPV6 => parse_v6(p, avail),
        _ => return Parsed::NotForUs,
    };
    match ip {
        Some(ip) => Parsed::Ip(mac, ip),
        None => Parsed::Malformed(mac),
    }
}

#[inline(always)]
fn parse_v4<P: Packet>(p: &P, avail: u32) -> Option<IpInfo> {
    let h = p.load::<[u32; 5]>(ETH_HLEN)?;
    let w0 = h[0].to_ne_bytes();
    if w0[0] >> 4 != 4 {
        return None;
    }
    let ihl = ((w0[0] & 0x0f) as u32) * 4;
    if ihl < 20 {
        return None;
    }
    let tot = u16::from_be_bytes([w0[2], w0[3]]) as u32;
    // Length 0 stands for the packet's own length only in a GSO aggregate larger
    // than 64 KiB (BIG TCP); any other packet with it is dropped by the kernel.
    let len = if tot == 0 && avail >= ihl && p.segs() > 1 {
        avail
    } else if tot < ihl || tot > avail {
        return None;
    } else {
        tot
    };
    if !ipv4_csum_ok(p, &h, ihl) {
        return None;
    }
    let dst = h[4].to_ne_bytes();
    let unicast = dst[0] < 224 && h[4] != u32::MAX;
    Some(IpInfo {
        len,
        unicast,
        v6: false,
    })
}

/// The IPv4 header checksum (options included) is valid: the kernel drops
/// packets whose checksum is wrong, so they must not count as usage either.
///
/// The ones' complement sum is taken over 32-bit words in memory order and
/// folded: the same check as over big-endian 16-bit words (RFC 1071).
#[inline(always)]
fn ipv4_csum_ok<P: Packet>(p: &P, h: &[u32; 5], ihl: u32) -> bool {
    let mut sum = h[0] as u64 + h[1] as u64 + h[2] as u64 + h[3] as u64 + h[4] as u64;
    // Options, one word at a constant offset each: XDP's verifier needs
    // bounds it can see (a loop over a variable offset is rejected).
    if ihl > 20 {
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
    }
    // At most 15 words: below 2^36, so 36 -> 32 -> 17 -> 16 bits.
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum == 0xffff
}

/// Adds option word `K` (header bytes 20 + 4K..) to `sum` if the header has it;
/// false if the header claims it but the packet ends first.
#[inline(always)]
fn option_word<const K: u32, P: Packet>(p: &P, ihl: u32, sum: &mut u64) -> bool {
    if ihl <= 20 + 4 * K {
        return true;
    }
    let Some(w) = p.load::<u32>(ETH_HLEN + 20 + 4 * K) else {
        return false;
    };
    *sum += w as u64;
    true
}

#[inline(always)]
fn parse_v6<P: Packet>(p: &P, avail: u32) -> Option<IpInfo> {
    let h = p.load::<[u32; 10]>(ETH_HLEN)?;
    let w0 = h[0].to_ne_bytes();
    if w0[0] >> 4 != 6 {
        return None;
    }
    let w1 = h[1].to_ne_bytes();
    let payload = u16::from_be_bytes([w1[0], w1[1]]) as u32;
    let len = if payload == 0 && avail >= 40 && (p.segs() > 1 || w1[2] == NEXTHDR_HOP) {
        // A GSO aggregate larger than 64 KiB, or a jumbogram (hop-by-hop
        // options carry its length): the packet's own length.
        avail
    } else if payload + 40 > avail {
        return None;
    } else {
        payload + 40
    };
    let unicast = h[6].to_ne_bytes()[0] != 0xff;
    Some(IpInfo {
        len,
        unicast,
        v6: true,
    })
}
