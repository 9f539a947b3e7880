//! Sending a client that has not paid to the portal (`LAN_PORTAL_REDIRECT`,
//! TC ingress only). Its TCP to port 80 outside the walled garden goes to the
//! agent's redirect responder, which answers with a 302 to the portal; its
//! other TCP outside the garden is answered here with a reset, so that it
//! fails at once instead of after a timeout. UDP stays dropped.
//!
//! Steering: `bpf_sk_assign` hands the packet to the responder (the
//! connection's own socket once there is one, otherwise the listener on the
//! loopback address and `redirect_port`); the packet keeps its addresses and is
//! marked with `redirect_mark`, which the agent's policy routing rule sends to
//! a table whose default route is local, so the kernel delivers it instead of
//! forwarding it (the responder's sockets are transparent: they may answer
//! from the address the client asked for). Without the responder's socket the
//! packet is dropped, never forwarded; without the routing rule the kernel
//! drops it too (it does not forward a packet that carries a socket).
//!
//! Reset: the packet itself becomes the answer (MACs, addresses and ports
//! swapped, which leaves both checksums as they are; RST with the sequence
//! numbers of RFC 9293 3.10.7.1) and goes back out of the LAN interface,
//! marked so that the egress program passes it to the client.

use aya_ebpf::{
    bindings::{BPF_TCP_LISTEN, TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use session_common::LanConfig;

use crate::mem::{at, lookup_tcp, redirect, skb_field, Cells, Shared, Sock};
use crate::packet::{parse_eth, ETH_P_IP, ETH_P_IPV6};
use crate::LAN;

/// Where a TCP segment's headers are.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Flow {
    v6: bool,
    l3: u32,
    l4: u32,
    /// The end of the IP packet (not known for a GSO aggregate that leaves
    /// the length field zero: then at most `l4`).
    end: u32,
}

/// The headers of the segment `handle` judged, read again (it checked them:
/// IPv4 or IPv6 with TCP right after the IP header).
#[inline(always)]
fn flow(ctx: &TcContext) -> Option<Flow> {
    let eth = parse_eth(ctx)?;
    let l3 = eth.l3;
    match eth.proto {
        ETH_P_IP => {
            let b = ctx.load::<[u8; 4]>(l3 as usize).ok()?;
            let ihl = ((b[0] & 0x0f) as u32) * 4;
            let tot = u16::from_be_bytes([b[2], b[3]]) as u32;
            if ihl < 20 {
                return None;
            }
            Some(Flow {
                v6: false,
                l3,
                l4: l3 + ihl,
                end: l3 + tot,
            })
        }
        ETH_P_IPV6 => {
            let b = ctx.load::<[u8; 6]>(l3 as usize).ok()?;
            let plen = u16::from_be_bytes([b[4], b[5]]) as u32;
            Some(Flow {
                v6: true,
                l3,
                l4: l3 + 40,
                end: l3 + 40 + plen,
            })
        }
        _ => None,
    }
}

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// `struct bpf_sock_tuple`'s IPv4 and IPv6 halves, fields in network order.
#[repr(C)]
struct Tuple4 {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
}

#[repr(C)]
struct Tuple6 {
    saddr: [u32; 4],
    daddr: [u32; 4],
    sport: u16,
    dport: u16,
}

#[inline(always)]
fn redirect_cfg(cfg: Shared<'_, LanConfig>) -> Option<(u32, u16)> {
    let mark = at!(cfg, redirect_mark).get();
    let port = at!(cfg, redirect_port).get();
    (mark != 0 && port != 0).then_some((mark, port))
}

/// A `bpf_sock_tuple` half that can be turned into the responder's listener.
trait SockTuple {
    /// The responder's listener: the loopback address and `port` (network order).
    fn to_listener(&mut self, port: u16);
}

impl SockTuple for Tuple4 {
    fn to_listener(&mut self, port: u16) {
        self.daddr = u32::from_ne_bytes([127, 0, 0, 1]);
        self.dport = port;
    }
}

impl SockTuple for Tuple6 {
    fn to_listener(&mut self, port: u16) {
        self.daddr = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];
        self.dport = port;
    }
}

/// Looks `t` up: the connection's own socket, or else the responder's
/// listener (on the loopback address and the responder's port, so that it is
/// not reachable from elsewhere by itself). A reference the caller releases.
#[inline(always)]
fn lookup<T: SockTuple>(ctx: &TcContext, t: &mut T, port: u16) -> Option<Sock> {
    if let Some(sk) = lookup_tcp(ctx, t) {
        if sk.state() != BPF_TCP_LISTEN {
            return Some(sk);
        }
        // Somebody's listener on the address the client asked for: not ours.
        sk.release();
    }
    t.to_listener(port.to_be());
    let ln = lookup_tcp(ctx, t)?;
    if ln.state() != BPF_TCP_LISTEN {
        ln.release();
        return None;
    }
    Some(ln)
}

/// A client's TCP to port 80 outside the garden: to the redirect responder.
#[inline(always)]
pub fn steer(ctx: &TcContext) -> i32 {
    let (Some(cfg), Some(f)) = (LAN.cell(0), flow(ctx)) else {
        return TC_ACT_SHOT as i32;
    };
    let Some((mark, port)) = redirect_cfg(cfg) else {
        return TC_ACT_SHOT as i32;
    };
    let Ok(ports) = ctx.load::<[u16; 2]>(f.l4 as usize) else {
        return TC_ACT_SHOT as i32;
    };
    let sk = if f.v6 {
        let (Ok(src), Ok(dst)) = (
            ctx.load::<[u32; 4]>(f.l3 as usize + 8),
            ctx.load::<[u32; 4]>(f.l3 as usize + 24),
        ) else {
            return TC_ACT_SHOT as i32;
        };
        let mut t = Tuple6 {
            saddr: src,
            daddr: dst,
            sport: ports[0],
            dport: ports[1],
        };
        lookup(ctx, &mut t, port)
    } else {
        let Ok(a) = ctx.load::<[u32; 2]>(f.l3 as usize + 12) else {
            return TC_ACT_SHOT as i32;
        };
        let mut t = Tuple4 {
            saddr: a[0],
            daddr: a[1],
            sport: ports[0],
            dport: ports[1],
        };
        lookup(ctx, &mut t, port)
    };
    let Some(sk) = sk else {
        // The responder is not listening: dropped, never forwarded.
        return TC_ACT_SHOT as i32;
    };
    let ret = sk.assign(ctx);
    sk.release();
    if ret != 0 {
        return TC_ACT_SHOT as i32;
    }
    ctx.set_mark(mark);
    TC_ACT_OK as i32
}

/// A client's other TCP outside the garden: answered with a reset. A
/// segment that carries data (not a SYN's) or a reset is only dropped.
#[inline(always)]
pub fn reset(ctx: &TcContext) -> i32 {
    let (Some(cfg), Some(f)) = (LAN.cell(0), flow(ctx)) else {
        return TC_ACT_SHOT as i32;
    };
    match make_reset(ctx, f) {
        Some(()) => {}
        None => return TC_ACT_SHOT as i32,
    }
    let Some((mark, _)) = redirect_cfg(cfg) else {
        return TC_ACT_SHOT as i32;
    };
    ctx.set_mark(mark);
    // The skb goes back out of the LAN interface.
    redirect(skb_field!(ctx, ifindex))
}

#[inline(always)]
fn make_reset(ctx: &TcContext, f: Flow) -> Option<()> {
    let th = ctx.load::<[u32; 4]>(f.l4 as usize).ok()?;
    let b = th[3].to_ne_bytes();
    let doff = ((b[0] >> 4) as u32) * 4;
    let flags = b[1];
    if doff < 20 || flags & TCP_RST != 0 {
        return None;
    }
    let payload = f.end.checked_sub(f.l4 + doff)?;
    if payload != 0 && flags & TCP_SYN == 0 {
        return None;
    }
    let (seq, ack, out) = if flags & TCP_ACK != 0 {
        (th[2], 0u32, TCP_RST)
    } else {
        let mut n = u32::from_be(th[1]).wrapping_add(payload);
        if flags & TCP_SYN != 0 {
            n = n.wrapping_add(1);
        }
        if flags & TCP_FIN != 0 {
            n = n.wrapping_add(1);
        }
        (0u32, n.to_be(), TCP_RST | TCP_ACK)
    };
    // Ethernet: back to the client, from the gateway.
    let eth = ctx.load::<[u16; 6]>(0).ok()?;
    ctx.store(0, &[eth[3], eth[4], eth[5], eth[0], eth[1], eth[2]], 0)
        .ok()?;
    // Addresses and ports swapped: the same words in the sums, no checksum changes.
    if f.v6 {
        let src = ctx.load::<[u32; 4]>(f.l3 as usize + 8).ok()?;
        let dst = ctx.load::<[u32; 4]>(f.l3 as usize + 24).ok()?;
        ctx.store(f.l3 as usize + 8, &dst, 0).ok()?;
        ctx.store(f.l3 as usize + 24, &src, 0).ok()?;
    } else {
        let a = ctx.load::<[u32; 2]>(f.l3 as usize + 12).ok()?;
        ctx.store(f.l3 as usize + 12, &[a[1], a[0]], 0).ok()?;
    }
    let ports = th[0].to_ne_bytes();
    ctx.store(f.l4 as usize, &[ports[2], ports[3], ports[0], ports[1]], 0)
        .ok()?;
    let csum = f.l4 as usize + 16;
    ctx.l4_csum_replace(csum, th[1] as u64, seq as u64, 4)
        .ok()?;
    ctx.store(f.l4 as usize + 4, &seq, 0).ok()?;
    ctx.l4_csum_replace(csum, th[2] as u64, ack as u64, 4)
        .ok()?;
    ctx.store(f.l4 as usize + 8, &ack, 0).ok()?;
    let old = u16::from_ne_bytes([b[0], b[1]]);
    let new = u16::from_ne_bytes([b[0], out]);
    ctx.l4_csum_replace(csum, old as u64, new as u64, 2).ok()?;
    ctx.store(f.l4 as usize + 12, &new, 0).ok()?;
    Some(())
}
