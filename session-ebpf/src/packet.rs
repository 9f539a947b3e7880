//! Header parsing shared by the TC and XDP programs: what a frame carries,
//! through up to two VLAN tags.

use aya_ebpf::programs::{TcContext, XdpContext};
use session_common::{AddrKey, MacAddr};

use crate::mem;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

const ETH_HLEN: u32 = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
/// 802.1X (EAPOL): a Wi-Fi access point on the gateway itself needs it.
pub const ETH_P_PAE: u16 = 0x888e;
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
    /// The VLAN ID of a tag the kernel took off into the packet's metadata
    /// before the program (0: none, or a priority tag).
    fn meta_vid(&self) -> u16;
    /// The packet's mark (`skb->mark`; 0 in XDP).
    fn mark(&self) -> u32;
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
        mem::load!(T, self.data(), self.data_end(), offset, else {
            TcContext::load(self, offset as usize).ok()
        })
    }

    #[inline(always)]
    fn segs(&self) -> u32 {
        mem::skb_field!(self, gso_segs)
    }

    #[inline(always)]
    fn meta_vid(&self) -> u16 {
        (mem::skb_field!(self, vlan_tci) & 0x0fff) as u16
    }

    #[inline(always)]
    fn mark(&self) -> u32 {
        mem::skb_field!(self, mark)
    }
}

impl Packet for XdpContext {
    #[inline(always)]
    fn len(&self) -> u32 {
        (self.data_end() - self.data()) as u32
    }

    #[inline(always)]
    fn load<T: Copy>(&self, offset: u32) -> Option<T> {
        mem::load!(T, self.data(), self.data_end(), offset)
    }

    #[inline(always)]
    fn segs(&self) -> u32 {
        1
    }

    #[inline(always)]
    fn meta_vid(&self) -> u16 {
        0
    }

    #[inline(always)]
    fn mark(&self) -> u32 {
        0
    }
}

/// The Ethernet header, and where the payload starts after the VLAN tags.
pub struct Eth {
    pub dst: MacAddr,
    pub src: MacAddr,
    /// The ethertype after the tags.
    pub proto: u16,
    /// Offset of the payload: 14, 18 or 22.
    pub l3: u32,
}

/// A VLAN tag's protocol identifier: 802.1Q, 802.1ad, and the older 0x9100.
#[inline(always)]
fn is_tag(proto: u16) -> bool {
    proto == 0x8100 || proto == 0x88a8 || proto == 0x9100
}

/// The Ethernet header through up to two VLAN tags (the kernel may have taken
/// one more into the skb's metadata before TC sees the frame). `None` for a
/// runt frame, a deeper tag stack, or a tag with a VLAN ID: only untagged
/// frames and priority tags (VLAN 0) belong to the LAN; a VLAN of its own is
/// an interface of its own, which the agent attaches to.
#[inline(always)]
pub fn parse_eth<P: Packet>(p: &P) -> Option<Eth> {
    let eth = p.load::<[u16; 7]>(0)?;
    // Same bytes, as they are in memory.
    let dst = MacAddr::new(mem::mac_bytes([eth[0], eth[1], eth[2]]));
    let src = MacAddr::new(mem::mac_bytes([eth[3], eth[4], eth[5]]));
    let mut proto = u16::from_be(eth[6]);
    let mut l3 = ETH_HLEN;
    if is_tag(proto) {
        // TCI, then the inner ethertype.
        let t = p.load::<[u16; 2]>(ETH_HLEN)?;
        if u16::from_be(t[0]) & 0x0fff != 0 {
            return None;
        }
        proto = u16::from_be(t[1]);
        l3 = ETH_HLEN + 4;
        if is_tag(proto) {
            let t = p.load::<[u16; 2]>(ETH_HLEN + 4)?;
            if u16::from_be(t[0]) & 0x0fff != 0 {
                return None;
            }
            proto = u16::from_be(t[1]);
            l3 = ETH_HLEN + 8;
            if is_tag(proto) {
                return None;
            }
        }
    }
    Some(Eth {
        dst,
        src,
        proto,
        l3,
    })
}

/// What the datapath judges an IP packet by, read once.
pub struct IpInfo {
    /// IP-layer length: IPv4 total length, IPv6 payload length + 40 (the skb's
    /// length for GSO aggregates that leave the length field zero).
    pub len: u32,
    pub v6: bool,
    /// The transport protocol (IPv6: the first next header).
    pub proto: u8,
    /// TTL or hop limit.
    pub hop: u8,
    /// Addresses as in the packet (IPv4 in the first word).
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// TCP/UDP ports (0 without a transport header: other protocols, fragments).
    pub sport: u16,
    pub dport: u16,
    /// ICMPv6 type (0 for other protocols).
    pub icmp6_type: u8,
    /// IPv4: the datagram's identification, and whether this is its first
    /// fragment of several (`frag_first`) or a later one (`frag_later`).
    pub id: u16,
    pub frag_first: bool,
    pub frag_later: bool,
    /// IPv4: the options carry a source route's type byte (LSRR or SSRR).
    pub source_route: bool,
    /// Offset of the transport header and the end of the IP packet.
    pub l4: u32,
    pub end: u32,
}

impl IpInfo {
    #[inline(always)]
    pub fn family(&self) -> u32 {
        if self.v6 {
            6
        } else {
            4
        }
    }

    #[inline(always)]
    pub fn key(&self, a: [u32; 4]) -> AddrKey {
        AddrKey {
            family: self.family(),
            addr: a,
        }
    }

    /// The destination is multicast or (IPv4) the limited broadcast.
    #[inline(always)]
    pub fn dst_group(&self) -> bool {
        if self.v6 {
            self.dst[0].to_ne_bytes()[0] == 0xff
        } else {
            self.dst[0].to_ne_bytes()[0] >= 224 && self.dst[0].to_ne_bytes()[0] < 240
                || self.dst[0] == u32::MAX
        }
    }

    /// The source cannot be a host's own: multicast or broadcast.
    #[inline(always)]
    pub fn src_group(&self) -> bool {
        let b = self.src[0].to_ne_bytes()[0];
        if self.v6 {
            b == 0xff
        } else {
            (224..240).contains(&b) || self.src[0] == u32::MAX
        }
    }

    /// A source no host sends from to a unicast destination: 0.0.0.0/8 (the
    /// unspecified address goes to broadcast and multicast only: DHCP
    /// discovery, DAD), 127.0.0.0/8, 240.0.0.0/4, ::, ::1, IPv4-mapped.
    #[inline(always)]
    pub fn src_odd(&self) -> bool {
        if self.v6 {
            let a = self.src;
            a[0] == 0
                && a[1] == 0
                && (a[2] == u32::from_be(0xffff)
                    || (a[2] == 0 && (a[3] == 0 || a[3] == u32::from_be(1))))
        } else {
            let b = self.src[0].to_ne_bytes()[0];
            b == 0 || b == 127 || b >= 240
        }
    }

    /// The source is the unspecified address (DHCP discovery, DAD).
    #[inline(always)]
    pub fn src_unspecified(&self) -> bool {
        if self.v6 {
            self.src == [0; 4]
        } else {
            self.src[0] == 0
        }
    }

    /// A destination that is never routed: 0.0.0.0/8, 127.0.0.0/8,
    /// 240.0.0.0/4 but the broadcast; ::/96 (unspecified, loopback,
    /// IPv4-compatible), ::ffff:0:0/96 (IPv4-mapped).
    #[inline(always)]
    pub fn dst_odd(&self) -> bool {
        if self.v6 {
            let d = self.dst;
            d[0] == 0 && d[1] == 0 && (d[2] == 0 || d[2] == u32::from_be(0xffff))
        } else {
            let b = self.dst[0].to_ne_bytes()[0];
            b == 0 || b == 127 || (b >= 240 && self.dst[0] != u32::MAX)
        }
    }
}

/// An IPv6 address in fe80::/10.
#[inline(always)]
pub fn link_local(a: &[u32; 4]) -> bool {
    let b = a[0].to_ne_bytes();
    b[0] == 0xfe && b[1] & 0xc0 == 0x80
}

/// An IPv6 link-scope multicast address (ff02::/16).
#[inline(always)]
pub fn link_multicast(a: &[u32; 4]) -> bool {
    let b = a[0].to_ne_bytes();
    b[0] == 0xff && b[1] == 0x02
}

/// The IP packet at `l3` (`proto` is its ethertype), or `None` when its
/// header is inconsistent (the kernel would drop it).
#[inline(always)]
pub fn parse_ip<P: Packet>(p: &P, proto: u16, l3: u32) -> Option<IpInfo> {
    let avail = p.len().checked_sub(l3)?;
    if proto == ETH_P_IPV6 {
        parse_v6(p, l3, avail)
    } else {
        parse_v4(p, l3, avail)
    }
}

#[inline(always)]
fn parse_v4<P: Packet>(p: &P, l3: u32, avail: u32) -> Option<IpInfo> {
    let h = p.load::<[u32; 5]>(l3)?;
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
    let mut source_route = false;
    if !ipv4_csum_ok(p, l3, &h, ihl, &mut source_route) {
        return None;
    }
    let w1 = h[1].to_ne_bytes();
    let frag_word = u16::from_be_bytes([w1[2], w1[3]]);
    let frag_off = frag_word & 0x1fff;
    let w2 = h[2].to_ne_bytes();
    let proto = w2[1];
    let l4 = l3 + ihl;
    let (sport, dport) =
        if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) && frag_off == 0 && ihl + 4 <= len {
            ports(p, l4)
        } else {
            (0, 0)
        };
    Some(IpInfo {
        len,
        v6: false,
        proto,
        hop: w2[0],
        src: [h[3], 0, 0, 0],
        dst: [h[4], 0, 0, 0],
        sport,
        dport,
        icmp6_type: 0,
        id: u16::from_be_bytes([w1[0], w1[1]]),
        frag_first: frag_off == 0 && frag_word & 0x2000 != 0,
        frag_later: frag_off != 0,
        source_route,
        l4,
        end: l3 + len,
    })
}

/// Whether the 32-bit word `w` holds the byte `b` (no branches: the
/// verifier walks it once).
#[inline(always)]
fn has_byte(w: u32, b: u8) -> bool {
    let x = w ^ u32::from_ne_bytes([b; 4]);
    x.wrapping_sub(0x0101_0101) & !x & 0x8080_8080 != 0
}

/// The IPv4 header checksum (options included) is valid: the kernel drops
/// packets whose checksum is wrong, so they must not count as usage either.
///
/// The ones' complement sum is taken over 32-bit words in memory order and
/// folded: the same check as over big-endian 16-bit words (RFC 1071).
#[inline(always)]
fn ipv4_csum_ok<P: Packet>(
    p: &P,
    l3: u32,
    h: &[u32; 5],
    ihl: u32,
    source_route: &mut bool,
) -> bool {
    let mut sum = h[0] as u64 + h[1] as u64 + h[2] as u64 + h[3] as u64 + h[4] as u64;
    // Options, one word at a constant offset each: XDP's verifier needs
    // bounds it can see (a loop over a variable offset is rejected).
    if ihl > 20 {
        let ok = option_word::<0, P>(p, l3, ihl, &mut sum, source_route)
            && option_word::<1, P>(p, l3, ihl, &mut sum, source_route)
            && option_word::<2, P>(p, l3, ihl, &mut sum, source_route)
            && option_word::<3, P>(p, l3, ihl, &mut sum, source_route)
            && option_word::<4, P>(p, l3, ihl, &mut sum, source_route)
            && option_word::<5, P>(p, l3, ihl, &mut sum, source_route)
            && option_word::<6, P>(p, l3, ihl, &mut sum, source_route)
            && option_word::<7, P>(p, l3, ihl, &mut sum, source_route)
            && option_word::<8, P>(p, l3, ihl, &mut sum, source_route)
            && option_word::<9, P>(p, l3, ihl, &mut sum, source_route);
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

/// Adds option word `K` (header bytes 20 + 4K..) to `sum` if the header has it, and notes a source route byte in it;
/// false if the header claims it but the packet ends first.
#[inline(always)]
fn option_word<const K: u32, P: Packet>(
    p: &P,
    l3: u32,
    ihl: u32,
    sum: &mut u64,
    source_route: &mut bool,
) -> bool {
    if ihl <= 20 + 4 * K {
        return true;
    }
    let Some(w) = p.load::<u32>(l3 + 20 + 4 * K) else {
        return false;
    };
    *sum += w as u64;
    // LSRR (0x83) or SSRR (0x89): the type byte anywhere in the options. A
    // client's own options start zeroed (routers fill in record route and
    // timestamps), so only a crafted or exotic option carries it elsewhere.
    *source_route |= has_byte(w, 0x83) || has_byte(w, 0x89);
    true
}

#[inline(always)]
fn parse_v6<P: Packet>(p: &P, l3: u32, avail: u32) -> Option<IpInfo> {
    let h = p.load::<[u32; 10]>(l3)?;
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
    let proto = w1[2];
    let l4 = l3 + 40;
    let (mut sport, mut dport, mut icmp6_type) = (0, 0, 0);
    if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) && len >= 44 {
        (sport, dport) = ports(p, l4);
    } else if proto == IPPROTO_ICMPV6 && len >= 41 {
        icmp6_type = p.load::<u8>(l4).unwrap_or(0);
    }
    Some(IpInfo {
        len,
        v6: true,
        proto,
        hop: w1[3],
        src: [h[2], h[3], h[4], h[5]],
        dst: [h[6], h[7], h[8], h[9]],
        sport,
        dport,
        icmp6_type,
        id: 0,
        frag_first: false,
        frag_later: false,
        source_route: false,
        l4,
        end: l3 + len,
    })
}

/// The source and destination ports of the TCP or UDP header at `l4`.
#[inline(always)]
fn ports<P: Packet>(p: &P, l4: u32) -> (u16, u16) {
    let w = p.load::<[u16; 2]>(l4).unwrap_or([0; 2]);
    (u16::from_be(w[0]), u16::from_be(w[1]))
}

/// An Ethernet/IPv4 ARP message.
pub struct Arp {
    /// Sender hardware and protocol address.
    pub sha: MacAddr,
    pub spa: u32,
}

/// The ARP message at `l3`, or `None` if it is not Ethernet/IPv4 ARP.
#[inline(always)]
pub fn parse_arp<P: Packet>(p: &P, l3: u32) -> Option<Arp> {
    // htype, ptype, hlen|plen, oper, sha (6), spa (4).
    let h = p.load::<[u16; 7]>(l3)?;
    let spa = p.load::<u32>(l3 + 14)?;
    if u16::from_be(h[0]) != 1 || u16::from_be(h[1]) != ETH_P_IP || u16::from_be(h[2]) != 0x0604 {
        return None;
    }
    let sha = MacAddr::new(mem::mac_bytes([h[4], h[5], h[6]]));
    Some(Arp { sha, spa })
}

/// How many ND options [`nd_lla_ok`] reads at the most.
const ND_MAX_OPTIONS: u32 = 4;

/// The link-layer address options of the ND message of `ip` all name `mac`,
/// and the options end where the packet does within [`ND_MAX_OPTIONS`] (so
/// none is hidden from the check). Returns the NA's target address too.
#[inline(always)]
pub fn nd_lla_ok<P: Packet>(p: &P, ip: &IpInfo, mac: &MacAddr) -> bool {
    let first = match ip.icmp6_type {
        133 => 8,
        134 => 16,
        135 | 136 => 24,
        137 => 40,
        _ => return false,
    };
    let mut off = ip.l4 + first;
    for _ in 0..ND_MAX_OPTIONS {
        if off >= ip.end {
            return off == ip.end;
        }
        let Some(h) = p.load::<[u8; 8]>(off) else {
            return false;
        };
        let len = h[1] as u32 * 8;
        if len == 0 {
            return false;
        }
        // Source or target link-layer address.
        if (h[0] == 1 || h[0] == 2)
            && (h[1] != 1 || [h[2], h[3], h[4], h[5], h[6], h[7]] != mac.addr)
        {
            return false;
        }
        off += len;
    }
    off == ip.end
}

/// The target address of a neighbour advertisement.
#[inline(always)]
pub fn nd_target<P: Packet>(p: &P, ip: &IpInfo) -> Option<[u32; 4]> {
    p.load::<[u32; 4]>(ip.l4 + 8)
}
