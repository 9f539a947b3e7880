//! Raw Ethernet frames: an AF_PACKET sender and builders for valid and
//! malformed frames.

use crate::netns::in_netns;
use crate::topo::Client;
use std::ffi::CString;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_VLAN: u16 = 0x8100;
pub const ETH_P_QINQ: u16 = 0x88a8;

/// An AF_PACKET socket bound to an interface inside a namespace.
pub struct RawSender {
    fd: OwnedFd,
    ifindex: i32,
}

impl RawSender {
    /// Opens a raw socket on `ifname` in namespace `ns`.
    pub fn open(ns: &str, ifname: &str) -> io::Result<RawSender> {
        let ifname = ifname.to_string();
        in_netns(ns, move || {
            let cname = CString::new(ifname.clone()).unwrap();
            // SAFETY: FFI calls with valid arguments; the fd is owned below.
            unsafe {
                let ifindex = libc::if_nametoindex(cname.as_ptr()) as i32;
                if ifindex == 0 {
                    return Err(io::Error::last_os_error());
                }
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(RawSender {
                    fd: OwnedFd::from_raw_fd(fd),
                    ifindex,
                })
            }
        })
    }

    /// Sends one complete Ethernet frame (as given, no padding added).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid start.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        if frame.len() >= 6 {
            sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        }
        // SAFETY: buffer and address are valid for the given lengths.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Ethernet header.
pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(1514);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// RFC 1071 checksum.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for ch in data.chunks(2) {
        let w = if ch.len() == 2 {
            u16::from_be_bytes([ch[0], ch[1]])
        } else {
            u16::from_be_bytes([ch[0], 0])
        };
        sum += w as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 header (20 bytes, correct checksum) for the given fields.
pub fn ipv4_header(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    total_len: u16,
    ihl_words: u8,
) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0] = 0x40 | (ihl_words & 0x0f);
    h[2..4].copy_from_slice(&total_len.to_be_bytes());
    h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    h[6] = 0x40; // DF
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// A complete, valid IPv4/UDP packet (IP header onwards) with correct
/// checksums.
pub fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut p = ipv4_header(src, dst, 17, (20 + udp_len) as u16, 5);
    let mut u = Vec::with_capacity(udp_len);
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&(udp_len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    pseudo.extend_from_slice(&u);
    let mut c = checksum(&pseudo);
    if c == 0 {
        c = 0xffff;
    }
    u[6..8].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&u);
    p
}

/// A complete, valid IPv6/UDP packet (IP header onwards).
pub fn ipv6_udp(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut p = ipv6_header(src, dst, 17, udp_len as u16);
    let mut u = Vec::with_capacity(udp_len);
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&(udp_len as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(udp_len as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 17]);
    pseudo.extend_from_slice(&u);
    let mut c = checksum(&pseudo);
    if c == 0 {
        c = 0xffff;
    }
    u[6..8].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&u);
    p
}

/// An IPv6 header (40 bytes).
pub fn ipv6_header(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload_len: u16) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&payload_len.to_be_bytes());
    h[6] = next;
    h[7] = 64;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
    h
}

/// Malformed frames from client `c` towards the gateway MAC (and a few to
/// broadcast and multicast), each with a description. The kernel drops every
/// one of them before forwarding; the UDP fragments inside are addressed to
/// the server's port 5002.
pub fn malformed_frames(
    c: &Client,
    gw_mac: [u8; 6],
    srv4: Ipv4Addr,
    srv6: Ipv6Addr,
) -> Vec<(String, Vec<u8>)> {
    let src = c.mac_bytes();
    let bcast = [0xff; 6];
    let mcast6 = [0x33, 0x33, 0, 0, 0, 1];
    let mut v: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |what: &str, f: Vec<u8>| v.push((what.to_string(), f));
    let udp4 = ipv4_udp(c.ipv4, srv4, 40000, 5002, &[0x11; 64]);
    let udp6 = ipv6_udp(c.ipv6, srv6, 40000, 5002, &[0x22; 64]);

    // Tiny frames: an Ethernet header and nothing (or almost nothing) else.
    for et in [
        ETH_P_IPV4, ETH_P_IPV6, ETH_P_VLAN, ETH_P_ARP, 0x0000, 0xffff,
    ] {
        add(&format!("bare header 0x{et:04x}"), eth(gw_mac, src, et));
        let mut f = eth(gw_mac, src, et);
        f.push(0x45);
        add(&format!("header+1 0x{et:04x}"), f);
    }
    // Truncated IPv4 headers.
    for n in [1usize, 4, 10, 19] {
        let mut f = eth(gw_mac, src, ETH_P_IPV4);
        f.extend_from_slice(&udp4[..n]);
        add(&format!("IPv4 header cut to {n} bytes"), f);
    }
    // Bogus IHL.
    for ihl in [0u8, 2, 4, 15] {
        let mut ip = udp4.clone();
        let h = ipv4_header(c.ipv4, srv4, 17, ip.len() as u16, ihl);
        ip[..20].copy_from_slice(&h);
        let mut f = eth(gw_mac, src, ETH_P_IPV4);
        f.extend_from_slice(&ip);
        add(&format!("IPv4 IHL {ihl}"), f);
    }
    // Total length larger than the frame, and smaller than the header.
    for tl in [udp4.len() as u16 + 1, 1400, 65535, 10, 0] {
        let mut ip = udp4.clone();
        ip[..20].copy_from_slice(&ipv4_header(c.ipv4, srv4, 17, tl, 5));
        let mut f = eth(gw_mac, src, ETH_P_IPV4);
        f.extend_from_slice(&ip);
        add(
            &format!("IPv4 total length {tl} in a {}-byte packet", udp4.len()),
            f,
        );
    }
    // Wrong version nibble for the ethertype.
    {
        let mut ip = udp4.clone();
        ip[0] = 0x65;
        let mut f = eth(gw_mac, src, ETH_P_IPV4);
        f.extend_from_slice(&ip);
        add("IPv4 ethertype, version 6", f);
        let mut ip6 = udp6.clone();
        ip6[0] = 0x40;
        let mut f = eth(gw_mac, src, ETH_P_IPV6);
        f.extend_from_slice(&ip6);
        add("IPv6 ethertype, version 4", f);
    }
    // Truncated IPv6 headers and payload lengths beyond the frame.
    for n in [1usize, 8, 20, 39] {
        let mut f = eth(gw_mac, src, ETH_P_IPV6);
        f.extend_from_slice(&udp6[..n]);
        add(&format!("IPv6 header cut to {n} bytes"), f);
    }
    for pl in [udp6.len() as u16 - 40 + 1, 1000, 65535] {
        let mut ip = udp6.clone();
        ip[4..6].copy_from_slice(&pl.to_be_bytes());
        let mut f = eth(gw_mac, src, ETH_P_IPV6);
        f.extend_from_slice(&ip);
        add(
            &format!("IPv6 payload length {pl} with {} bytes", udp6.len() - 40),
            f,
        );
    }
    {
        let mut f = eth(gw_mac, src, ETH_P_IPV6);
        f.extend_from_slice(&ipv6_header(c.ipv6, srv6, 17, 500));
        add("IPv6 header only, payload length 500", f);
    }
    // Non-IP ethertypes with junk.
    for et in [0x88b5u16, 0x88cc, 0x9000, 0x0801, 0x86de, ETH_P_ARP, 0x8864] {
        let mut f = eth(gw_mac, src, et);
        f.extend_from_slice(&[0xa5; 46]);
        add(&format!("non-IP ethertype 0x{et:04x}"), f);
    }
    // VLAN-tagged junk (802.1Q, priority tag, QinQ).
    for (tpid, vid, inner, body, what) in [
        (
            ETH_P_VLAN,
            5u16,
            ETH_P_IPV4,
            udp4[..12].to_vec(),
            "802.1Q VID 5 + cut IPv4",
        ),
        (
            ETH_P_VLAN,
            0,
            ETH_P_IPV4,
            udp4[..12].to_vec(),
            "priority tag + cut IPv4",
        ),
        (
            ETH_P_VLAN,
            0,
            ETH_P_IPV6,
            udp6[..30].to_vec(),
            "priority tag + cut IPv6",
        ),
        (ETH_P_VLAN, 7, 0x88b5, vec![0x5a; 40], "802.1Q + non-IP"),
        (
            ETH_P_VLAN,
            9,
            ETH_P_VLAN,
            vec![],
            "802.1Q with nothing inside",
        ),
        (
            ETH_P_QINQ,
            10,
            ETH_P_VLAN,
            vec![0, 20, 0x86, 0xdd, 0x60],
            "QinQ + cut IPv6",
        ),
    ] {
        let mut f = eth(gw_mac, src, tpid);
        f.extend_from_slice(&vid.to_be_bytes());
        f.extend_from_slice(&inner.to_be_bytes());
        f.extend_from_slice(&body);
        add(&format!("VLAN junk: {what}"), f);
    }
    // Junk to broadcast and multicast.
    let mut f = eth(bcast, src, ETH_P_IPV4);
    f.extend_from_slice(&udp4[..15]);
    add("broadcast cut IPv4", f);
    let mut f = eth(mcast6, src, ETH_P_IPV6);
    f.extend_from_slice(&udp6[..30]);
    add("multicast cut IPv6", f);
    v
}

/// A frame with `tags` (TPID, TCI) inserted after the MAC addresses, outermost first.
pub fn tagged(frame: &[u8], tags: &[(u16, u16)]) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    for (tpid, tci) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&frame[12..]);
    f
}

/// An Ethernet/IPv4 ARP message (`op` 1 request, 2 reply), ARP header onwards.
pub fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 0x08, 0x00, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&tha);
    a.extend_from_slice(&tpa.octets());
    a
}

/// A complete IPv6/ICMPv6 packet (IP header onwards) with its checksum:
/// `icmp` is the message from its type on (the checksum field is filled in).
pub fn ipv6_icmp(src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8, icmp: &[u8]) -> Vec<u8> {
    let mut p = ipv6_header(src, dst, 58, icmp.len() as u16);
    p[7] = hop_limit;
    let mut m = icmp.to_vec();
    m[2..4].fill(0);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(m.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(&m);
    let c = checksum(&pseudo);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&m);
    p
}

/// A neighbour solicitation (135) or advertisement (136) for `target`, with a
/// source (NS) or target (NA, solicited and override) link-layer address
/// option when `lla` is given.
pub fn nd_message(kind: u8, target: Ipv6Addr, lla: Option<[u8; 6]>) -> Vec<u8> {
    let mut m = vec![kind, 0, 0, 0];
    m.extend_from_slice(&[if kind == 136 { 0x60 } else { 0 }, 0, 0, 0]);
    m.extend_from_slice(&target.octets());
    if let Some(mac) = lla {
        m.extend_from_slice(&[if kind == 136 { 2 } else { 1 }, 1]);
        m.extend_from_slice(&mac);
    }
    m
}

/// The solicited-node multicast address of `a` and its Ethernet group address.
pub fn solicited_node(a: Ipv6Addr) -> (Ipv6Addr, [u8; 6]) {
    let o = a.octets();
    let ip = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    );
    (ip, [0x33, 0x33, 0xff, o[13], o[14], o[15]])
}

/// A flood of frames from random source MACs: UDP from a client's address
/// through the gateway, one MAC per frame drawn from a pool of `pool` (the
/// sequence starts again after `pool` frames, so no more than `pool` distinct
/// MACs), until `frames` are sent or `until` passes. Bounded in count and time.
pub struct MacFlood {
    pub pool: u32,
    pub frames: u64,
    pub until: std::time::Instant,
}

impl MacFlood {
    /// Sends from `c` to `dst` through the gateway (`gw_mac`) until done or
    /// `stop` is set; `sent` counts the frames the socket took.
    pub fn send(
        &self,
        c: &Client,
        gw_mac: [u8; 6],
        dst: Ipv4Addr,
        sent: &std::sync::atomic::AtomicU64,
        stop: &std::sync::atomic::AtomicBool,
    ) {
        use std::sync::atomic::Ordering;
        let tx = RawSender::open(&c.ns, &c.ifname).expect("raw socket");
        let seed = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
        let mut state = seed;
        for i in 0..self.frames {
            if i % u64::from(self.pool.max(1)) == 0 {
                state = seed;
            }
            if i % 4096 == 4095 {
                if stop.load(Ordering::Relaxed) || std::time::Instant::now() >= self.until {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let b = state.to_be_bytes();
            // Locally administered, unicast, never zero.
            let mac = [0x02 | (b[0] & 0xfc), b[1], b[2], b[3], b[4], b[5] | 1];
            let mut f = eth(gw_mac, mac, 0x0800);
            f.extend_from_slice(&ipv4_udp(c.ipv4, dst, 40000, 9, &[0u8; 18]));
            if tx.send(&f).is_ok() {
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A DHCP DISCOVER from `mac` (broadcast reply asked for), UDP payload onwards.
pub fn dhcp_discover(mac: [u8; 6], xid: u32) -> Vec<u8> {
    let mut m = vec![0u8; 236];
    // BOOTREQUEST, Ethernet, 6-byte addresses.
    m[..3].copy_from_slice(&[1, 1, 6]);
    m[4..8].copy_from_slice(&xid.to_be_bytes());
    m[10] = 0x80;
    m[28..34].copy_from_slice(&mac);
    m.extend_from_slice(&[99, 130, 83, 99, 53, 1, 1, 61, 7, 1]);
    m.extend_from_slice(&mac);
    m.extend_from_slice(&[55, 3, 1, 3, 6, 255]);
    m.resize(300, 0);
    m
}

/// Where a [`MacCrowd`]'s UDP is sent on the server.
pub const CROWD_PORT: u16 = 9;

/// What one MAC of a [`MacCrowd`] sends in a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrowdFrame {
    /// An ARP request for the gateway's address, from the MAC's own.
    Arp,
    /// A neighbour solicitation for the gateway's IPv6 address.
    Neighbour,
    /// A DHCP DISCOVER (the gateway's DHCP server answers).
    Dhcp,
    /// A lookup at the gateway's resolver, from the MAC's own address.
    Dns,
    /// UDP through the gateway to the server, from the MAC's own address.
    Udp,
    /// UDP through the gateway from a paying client's address.
    Spoofed,
}

impl CrowdFrame {
    pub const ALL: [CrowdFrame; 6] = [
        CrowdFrame::Arp,
        CrowdFrame::Neighbour,
        CrowdFrame::Dhcp,
        CrowdFrame::Dns,
        CrowdFrame::Udp,
        CrowdFrame::Spoofed,
    ];
}

/// A crowd of devices that never pay, each with its own MAC and addresses on
/// the LAN, speaking to the gateway as a device does before paying (ARP, ND,
/// DHCP, DNS) or trying to go through it (UDP to the server from its own
/// address, or from a paying client's). Sent from one client's port, as
/// devices behind one access point would. A round sends one frame per MAC,
/// each MAC a different kind from round to round.
pub struct MacCrowd {
    pub macs: u32,
    pub gw_mac: [u8; 6],
    pub gw_v4: Ipv4Addr,
    pub gw_v6: Ipv6Addr,
    /// The server the crowd's UDP goes to (port [`CROWD_PORT`]).
    pub server: Ipv4Addr,
    /// A paying client's address, which the spoofed frames carry.
    pub spoofed: Ipv4Addr,
}

impl MacCrowd {
    /// The `i`th device's MAC: locally administered, unicast.
    pub fn mac(i: u32) -> [u8; 6] {
        [0x02, 0xc0, 0x0d, (i >> 16) as u8, (i >> 8) as u8, i as u8]
    }

    /// The `i`th device's IPv4 address, in the LAN's /24 (.100 to .249:
    /// devices share them as a busy LAN's leases do).
    pub fn v4(&self, i: u32) -> Ipv4Addr {
        let o = self.gw_v4.octets();
        Ipv4Addr::new(o[0], o[1], o[2], 100 + (i % 150) as u8)
    }

    /// The `i`th device's IPv6 address in the LAN's /64, its own.
    pub fn v6(&self, i: u32) -> Ipv6Addr {
        let s = self.gw_v6.segments();
        Ipv6Addr::new(s[0], s[1], s[2], s[3], 0xc0d, 0, (i >> 16) as u16, i as u16)
    }

    /// The kind the `i`th device sends in `round`.
    pub fn kind(i: u32, round: u32) -> CrowdFrame {
        CrowdFrame::ALL[(i.wrapping_add(round) % CrowdFrame::ALL.len() as u32) as usize]
    }

    /// The `i`th device's frame of `kind`.
    pub fn frame(&self, i: u32, kind: CrowdFrame) -> Vec<u8> {
        let mac = Self::mac(i);
        match kind {
            CrowdFrame::Arp => {
                let mut f = eth([0xff; 6], mac, ETH_P_ARP);
                f.extend_from_slice(&arp(1, mac, self.v4(i), [0; 6], self.gw_v4));
                f
            }
            CrowdFrame::Neighbour => {
                let (group, group_mac) = solicited_node(self.gw_v6);
                let mut f = eth(group_mac, mac, ETH_P_IPV6);
                let ns = nd_message(135, self.gw_v6, Some(mac));
                f.extend_from_slice(&ipv6_icmp(self.v6(i), group, 255, &ns));
                f
            }
            CrowdFrame::Dhcp => {
                let mut f = eth([0xff; 6], mac, ETH_P_IPV4);
                f.extend_from_slice(&ipv4_udp(
                    Ipv4Addr::UNSPECIFIED,
                    Ipv4Addr::BROADCAST,
                    68,
                    67,
                    &dhcp_discover(mac, i),
                ));
                f
            }
            CrowdFrame::Dns => {
                let q = crate::dns::query_message(
                    &format!("c{i}.soak.test"),
                    crate::dns::QueryType::A,
                    i as u16,
                );
                let mut f = eth(self.gw_mac, mac, ETH_P_IPV4);
                f.extend_from_slice(&ipv4_udp(
                    self.v4(i),
                    self.gw_v4,
                    30_000 + (i % 1_000) as u16,
                    53,
                    &q,
                ));
                f
            }
            CrowdFrame::Udp | CrowdFrame::Spoofed => {
                let src = if kind == CrowdFrame::Udp {
                    self.v4(i)
                } else {
                    self.spoofed
                };
                let mut f = eth(self.gw_mac, mac, ETH_P_IPV4);
                f.extend_from_slice(&ipv4_udp(src, self.server, 40_000, CROWD_PORT, &[0; 18]));
                f
            }
        }
    }

    /// Sends round `round` from `tx` (a pause of a millisecond every 1,024
    /// frames), until done or `stop` is set; `sent[k]` counts the frames of
    /// kind `CrowdFrame::ALL[k]` the socket took.
    pub fn round(
        &self,
        tx: &RawSender,
        round: u32,
        sent: &[std::sync::atomic::AtomicU64; 6],
        stop: &std::sync::atomic::AtomicBool,
    ) {
        use std::sync::atomic::Ordering;
        for i in 0..self.macs {
            if i % 1024 == 1023 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let kind = Self::kind(i, round);
            if tx.send(&self.frame(i, kind)).is_ok() {
                let k = CrowdFrame::ALL.iter().position(|&x| x == kind).unwrap();
                sent[k].fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
