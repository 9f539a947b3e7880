//! The one path to the kernel's routing netlink (NETLINK_ROUTE) for what the
//! agent asks besides BPF: addresses, links (the IFB devices), neighbours, and
//! the HTB qdiscs and classes that shape clients.
//!
//! And the policy routing of the portal redirect: a rule that sends marked
//! packets to a table whose default route is local ([`route_marked_locally`]).
//!
//! Messages are built and parsed with `netlink-packet-route`; HTB's own
//! options, which that crate does not model, are encoded here
//! ([`htb_class_options`]) as the kernel's `include/uapi/linux/pkt_sched.h`
//! lays them out. (The TC programs' legacy netlink filters are attached by aya,
//! which owns the program.) Each call opens its own socket (a few
//! microseconds, no state shared between threads); a batch of classes goes
//! over one.

use std::net::IpAddr;

use netlink_packet_core::{
    DefaultNla, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType},
    rule::{RuleAction, RuleAttribute, RuleMessage},
    tc::{TcAttribute, TcHandle, TcMessage, TcOption},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::error::{AgentError, Result};

/// A netlink request that failed, with the kernel's (or the socket's) error;
/// a refusal names CAP_NET_ADMIN when the process lacks it.
pub(crate) fn failed(what: &str, source: std::io::Error) -> AgentError {
    if source.raw_os_error() == Some(libc::EPERM)
        && !crate::error::lacking(&[crate::error::CAP_NET_ADMIN]).is_empty()
    {
        return AgentError::NotPermitted {
            what: format!("{what} (netlink)"),
            needs: &[crate::error::CAP_NET_ADMIN],
        };
    }
    AgentError::Netlink {
        what: what.to_string(),
        source,
    }
}

/// A routing-netlink socket: requests go out one at a time, each with its
/// own sequence number, and their answers are read before the next.
struct Rtnl {
    socket: Socket,
    seq: u32,
    rx: Vec<u8>,
}

/// A netlink socket of `protocol` (NETLINK_ROUTE, NETLINK_NETFILTER, ...),
/// bound and connected to the kernel.
pub(crate) fn kernel_socket(protocol: isize, what: &str) -> Result<Socket> {
    let mut socket = Socket::new(protocol).map_err(|e| failed(what, e))?;
    socket.bind_auto().map_err(|e| failed(what, e))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|e| failed(what, e))?;
    Ok(socket)
}

impl Rtnl {
    fn open(what: &str) -> Result<Self> {
        let socket = kernel_socket(NETLINK_ROUTE, what)?;
        Ok(Self {
            socket,
            seq: 0,
            rx: vec![0u8; 64 * 1024],
        })
    }

    /// Sends `msg` and collects the answers: every message of a dump, or
    /// none for a request acknowledged without error.
    fn exchange(
        &mut self,
        what: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        req.finalize();
        let mut buf = vec![0; req.header.length as usize];
        req.serialize(&mut buf[..]);
        self.socket.send(&buf, 0).map_err(|e| failed(what, e))?;
        let mut out = Vec::new();
        loop {
            let size = self
                .socket
                .recv(&mut &mut self.rx[..], 0)
                .map_err(|e| failed(what, e))?;
            let mut offset = 0;
            while offset < size {
                let msg: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(&self.rx[offset..size]).map_err(|e| {
                        failed(
                            what,
                            std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
                        )
                    })?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == self.seq {
                    match msg.payload {
                        NetlinkPayload::Done(_) => return Ok(out),
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(out),
                                Some(code) => Err(failed(
                                    what,
                                    std::io::Error::from_raw_os_error(-code.get()),
                                )),
                            }
                        }
                        NetlinkPayload::InnerMessage(m) => out.push(m),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }
}

/// One request on a socket of its own.
fn exchange(what: &str, msg: RouteNetlinkMessage, flags: u16) -> Result<Vec<RouteNetlinkMessage>> {
    Rtnl::open(what)?.exchange(what, msg, flags)
}

/// A dump request.
fn dump(what: &str, msg: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>> {
    exchange(what, msg, NLM_F_DUMP)
}

/// A change, acknowledged by the kernel.
fn change(what: &str, msg: RouteNetlinkMessage, flags: u16) -> Result<()> {
    exchange(what, msg, NLM_F_ACK | flags).map(|_| ())
}

/// An address configured on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr {
    pub ifindex: u32,
    pub ip: IpAddr,
    pub prefix_len: u8,
}

/// Every IPv4 and IPv6 address of the namespace.
pub fn addresses() -> Result<Vec<Addr>> {
    let msgs = dump(
        "listing interface addresses",
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
    )?;
    let mut out = Vec::new();
    for m in msgs {
        let RouteNetlinkMessage::NewAddress(a) = m else {
            continue;
        };
        // IPv4 point-to-point links give the local address as Local; it is
        // the interface's own address either way.
        let local = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        });
        let addr = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        if let Some(ip) = local.or(addr) {
            out.push(Addr {
                ifindex: a.header.index,
                ip,
                prefix_len: a.header.prefix_len,
            });
        }
    }
    Ok(out)
}

/// The kernel's `local` routing table (RT_TABLE_LOCAL).
const TABLE_LOCAL: u32 = 255;

/// Every address the namespace takes packets to as its own, from its `local`
/// routing table: its addresses (`local`), the IPv4 broadcast addresses it
/// keeps routes for (`broadcast`) and the IPv6 anycast ones (`anycast`), one
/// host each. Packets to any other address are routed on.
pub fn local_addresses() -> Result<Vec<IpAddr>> {
    let msgs = dump(
        "listing the local routing table",
        RouteNetlinkMessage::GetRoute(RouteMessage::default()),
    )?;
    let mut out = Vec::new();
    for m in msgs {
        let RouteNetlinkMessage::NewRoute(r) = m else {
            continue;
        };
        let table = r
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(r.header.table as u32);
        if table != TABLE_LOCAL
            || !matches!(
                r.header.kind,
                RouteType::Local | RouteType::Broadcast | RouteType::Anycast
            )
        {
            continue;
        }
        let dst = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
            _ => None,
        });
        let host = if dst.is_some_and(|d| d.is_ipv4()) {
            32
        } else {
            128
        };
        match dst {
            Some(ip) if r.header.destination_prefix_length == host => out.push(ip),
            // A local prefix (AnyIP) is more than the datapath's address list holds.
            Some(ip) if !ip.is_loopback() => tracing::warn!(
                prefix = %format!("{ip}/{}", r.header.destination_prefix_length),
                "a local route for a whole prefix: traffic from clients to it counts as usage"
            ),
            _ => {}
        }
    }
    Ok(out)
}

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `ifb`, `veth`, ... (`None` for a device without one, such as a NIC).
    pub kind: Option<String>,
    /// Its Ethernet address, if it has one.
    pub mac: Option<[u8; 6]>,
}

/// The interface `name`, if there is one.
pub fn link(name: &str) -> Result<Option<Link>> {
    let msgs = dump(
        "listing interfaces",
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
    )?;
    for m in msgs {
        let RouteNetlinkMessage::NewLink(l) = m else {
            continue;
        };
        let mut link = Link {
            index: l.header.index,
            name: String::new(),
            kind: None,
            mac: None,
        };
        for a in &l.attributes {
            match a {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(b) if b.len() == 6 => {
                    let mut m = [0u8; 6];
                    m.copy_from_slice(b);
                    link.mac = Some(m);
                }
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            link.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        if link.name == name {
            return Ok(Some(link));
        }
    }
    Ok(None)
}

/// Makes an IFB device named `name`.
pub fn add_ifb(name: &str) -> Result<()> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    msg.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Ifb)]));
    change(
        &format!("creating the IFB device {name}"),
        RouteNetlinkMessage::NewLink(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

/// Sets the device's transmit queue length and brings it up.
pub fn set_up(index: u32, txqueuelen: u32) -> Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    msg.attributes.push(LinkAttribute::TxQueueLen(txqueuelen));
    change(
        &format!("bringing up interface {index}"),
        RouteNetlinkMessage::SetLink(msg),
        0,
    )
}

/// Removes the device.
pub fn del_link(index: u32) -> Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    change(
        &format!("removing interface {index}"),
        RouteNetlinkMessage::DelLink(msg),
        0,
    )
}

/// A neighbour (ARP or ND) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub ifindex: u32,
    pub ip: IpAddr,
    pub mac: Option<[u8; 6]>,
    /// Neither resolved nor being resolved (`FAILED`, `INCOMPLETE`).
    pub unresolved: bool,
}

/// The neighbour entry for `ip` on interface `ifindex`, asked for alone (no
/// walk of the table); `None` when there is none.
pub fn neighbour(ip: IpAddr, ifindex: u32) -> Result<Option<Neighbour>> {
    let mut req = NeighbourMessage::default();
    req.header.ifindex = ifindex;
    req.header.family = match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    req.attributes
        .push(NeighbourAttribute::Destination(match ip {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
    let what = format!("looking up the neighbour {ip}");
    match exchange(&what, RouteNetlinkMessage::GetNeighbour(req), NLM_F_ACK) {
        Ok(msgs) => Ok(msgs.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewNeighbour(n) => parse_neighbour(&n),
            _ => None,
        })),
        Err(AgentError::Netlink { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Every IPv4 (`v4`) or IPv6 neighbour entry, on any interface.
pub fn neighbour_table(v4: bool) -> Result<Vec<Neighbour>> {
    let mut req = NeighbourMessage::default();
    req.header.family = if v4 {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let msgs = dump(
        "reading the neighbour table",
        RouteNetlinkMessage::GetNeighbour(req),
    )?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewNeighbour(n) => parse_neighbour(&n),
            _ => None,
        })
        .collect())
}

/// A neighbour entry as the kernel sent it, if it names an address.
fn parse_neighbour(n: &NeighbourMessage) -> Option<Neighbour> {
    let ip = n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    })?;
    let mac = n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
            let mut m = [0u8; 6];
            m.copy_from_slice(b);
            Some(m)
        }
        _ => None,
    });
    Some(Neighbour {
        ifindex: n.header.ifindex,
        ip,
        mac,
        unresolved: matches!(
            n.header.state,
            NeighbourState::Failed | NeighbourState::Incomplete
        ),
    })
}

/// A qdisc: its kind and handle (major), and whether it is the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qdisc {
    pub kind: String,
    pub major: u16,
    pub root: bool,
}

/// The qdiscs of interface `index`.
pub fn qdiscs(index: u32) -> Result<Vec<Qdisc>> {
    let mut req = TcMessage::default();
    req.header.index = index as i32;
    let msgs = dump(
        "listing qdiscs",
        RouteNetlinkMessage::GetQueueDiscipline(req),
    )?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewQueueDiscipline(q) if q.header.index == index as i32 => {
                let kind = q.attributes.iter().find_map(|a| match a {
                    TcAttribute::Kind(k) => Some(k.clone()),
                    _ => None,
                })?;
                Some(Qdisc {
                    kind,
                    major: q.header.handle.major,
                    root: q.header.parent == TcHandle::ROOT,
                })
            }
            _ => None,
        })
        .collect())
}

/// `TCA_HTB_PARMS`, `TCA_HTB_INIT`, `TCA_HTB_RATE64`, `TCA_HTB_CEIL64`.
const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;
/// `TC_HTB_PROTOVER`.
const HTB_PROTOVER: u32 = 3;
/// `TC_LINKLAYER_ETHERNET`: the rate is the kernel's to apply (no rate table).
const LINKLAYER_ETHERNET: u8 = 1;
/// Nanoseconds of one packet-scheduler tick (`PSCHED_SHIFT` = 6).
const PSCHED_TICK_NS: u128 = 64;

/// Makes (or replaces) an HTB root qdisc `major:` on `index` whose
/// unclassified traffic goes out directly (`default 0`).
pub fn replace_htb_root(index: u32, major: u16) -> Result<()> {
    // struct tc_htb_glob: version, rate2quantum, defcls, debug, direct_pkts.
    let mut glob = Vec::with_capacity(20);
    for v in [HTB_PROTOVER, 10, 0, 0, 0] {
        glob.extend_from_slice(&v.to_ne_bytes());
    }
    let mut msg = TcMessage::default();
    msg.header.index = index as i32;
    msg.header.parent = TcHandle::ROOT;
    msg.header.handle = TcHandle { major, minor: 0 };
    msg.attributes.push(TcAttribute::Kind("htb".into()));
    msg.attributes
        .push(TcAttribute::Options(vec![TcOption::Other(
            DefaultNla::new(TCA_HTB_INIT, glob),
        )]));
    change(
        &format!("adding the HTB root qdisc on interface {index}"),
        RouteNetlinkMessage::NewQueueDiscipline(msg),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
}

/// Removes the root qdisc of `index`.
pub fn del_root_qdisc(index: u32) -> Result<()> {
    let mut msg = TcMessage::default();
    msg.header.index = index as i32;
    msg.header.parent = TcHandle::ROOT;
    change(
        &format!("removing the root qdisc of interface {index}"),
        RouteNetlinkMessage::DelQueueDiscipline(msg),
        0,
    )
}

/// An HTB class with `rate = ceil = rate_bytes` (bytes per second of frames)
/// and `burst = cburst = burst_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HtbClass {
    pub index: u32,
    /// `major:minor`, as a u32 (`major << 16 | minor`).
    pub classid: u32,
    pub rate_bytes: u64,
    pub burst_bytes: u64,
    pub quantum: u32,
}

/// The class's `TCA_OPTIONS`: `struct tc_htb_opt` (rate and ceil as
/// `tc_ratespec`, buffer and cbuffer in scheduler ticks, quantum, level,
/// prio), and the 64-bit rates when they do not fit 32 bits.
pub fn htb_class_options(c: &HtbClass) -> Vec<TcOption> {
    let rate32 = u32::try_from(c.rate_bytes).unwrap_or(u32::MAX);
    // Time to send a burst at the rate, in ticks.
    let buffer = if c.rate_bytes == 0 {
        0
    } else {
        (c.burst_bytes as u128 * 1_000_000_000 / c.rate_bytes as u128 / PSCHED_TICK_NS)
            .min(u32::MAX as u128) as u32
    };
    let ratespec = |out: &mut Vec<u8>| {
        // cell_log, linklayer, overhead, cell_align, mpu, rate
        out.push(0);
        out.push(LINKLAYER_ETHERNET);
        out.extend_from_slice(&0u16.to_ne_bytes());
        out.extend_from_slice(&0i16.to_ne_bytes());
        out.extend_from_slice(&0u16.to_ne_bytes());
        out.extend_from_slice(&rate32.to_ne_bytes());
    };
    let mut opt = Vec::with_capacity(44);
    ratespec(&mut opt);
    ratespec(&mut opt);
    for v in [buffer, buffer, c.quantum, 0, 0] {
        opt.extend_from_slice(&v.to_ne_bytes());
    }
    let mut out = vec![TcOption::Other(DefaultNla::new(TCA_HTB_PARMS, opt))];
    if c.rate_bytes > u32::MAX as u64 {
        for kind in [TCA_HTB_RATE64, TCA_HTB_CEIL64] {
            out.push(TcOption::Other(DefaultNla::new(
                kind,
                c.rate_bytes.to_ne_bytes().to_vec(),
            )));
        }
    }
    out
}

/// Creates or changes HTB classes, each under the root `classid >> 16`,
/// over one socket.
pub fn replace_htb_classes(classes: &[HtbClass]) -> Result<()> {
    if classes.is_empty() {
        return Ok(());
    }
    let mut rtnl = Rtnl::open("setting HTB classes")?;
    for c in classes {
        let mut msg = TcMessage::default();
        msg.header.index = c.index as i32;
        msg.header.parent = TcHandle {
            major: (c.classid >> 16) as u16,
            minor: 0,
        };
        msg.header.handle = TcHandle::from(c.classid);
        msg.attributes.push(TcAttribute::Kind("htb".into()));
        msg.attributes
            .push(TcAttribute::Options(htb_class_options(c)));
        rtnl.exchange(
            &format!(
                "setting HTB class {:x}:{:x} on interface {}",
                c.classid >> 16,
                c.classid & 0xffff,
                c.index
            ),
            RouteNetlinkMessage::NewTrafficClass(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )?;
    }
    Ok(())
}

/// The class ids of interface `index`'s classes.
pub fn classes(index: u32) -> Result<Vec<u32>> {
    let mut req = TcMessage::default();
    req.header.index = index as i32;
    let msgs = dump(
        "listing traffic classes",
        RouteNetlinkMessage::GetTrafficClass(req),
    )?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewTrafficClass(c) if c.header.index == index as i32 => {
                Some(u32::from(c.header.handle))
            }
            _ => None,
        })
        .collect())
}

/// Removes the class `classid` of interface `index`.
pub fn del_class(index: u32, classid: u32) -> Result<()> {
    let mut msg = TcMessage::default();
    msg.header.index = index as i32;
    msg.header.handle = TcHandle::from(classid);
    change(
        &format!(
            "removing HTB class {:x}:{:x} of interface {index}",
            classid >> 16,
            classid & 0xffff
        ),
        RouteNetlinkMessage::DelTrafficClass(msg),
        0,
    )
}

/// The priority of the portal redirect's routing rule: before the main table's
/// (32766), after the local table's (0).
pub const REDIRECT_RULE_PRIORITY: u32 = 100;

/// Packets marked `mark` that arrive on one of `lans` are delivered locally,
/// whatever their destination: a rule per LAN (IPv4 and IPv6, priority
/// [`REDIRECT_RULE_PRIORITY`]) sends them to `table`, whose default routes are
/// local. (Only arriving packets: the responder's answers carry the mark too,
/// and must leave.) The same rule or route already there is kept; they stay
/// when the agent stops, as the datapath does.
pub fn route_marked_locally(mark: u32, table: u32, lans: &[String]) -> Result<()> {
    let lo = link("lo")?
        .ok_or_else(|| AgentError::UnknownInterface("lo".into()))?
        .index;
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let what = format!("adding the {family:?} route table {table} for the portal redirect");
        change(
            &what,
            RouteNetlinkMessage::NewRoute(local_default(family, table, lo)),
            NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        for lan in lans {
            let what = format!(
                "adding the {family:?} routing rule iif {lan} fwmark {mark:#x} lookup {table}"
            );
            match change(
                &what,
                RouteNetlinkMessage::NewRule(mark_rule(family, mark, table, lan)),
                NLM_F_CREATE | NLM_F_EXCL,
            ) {
                Err(AgentError::Netlink { source, .. })
                    if source.raw_os_error() == Some(libc::EEXIST) => {}
                r => r?,
            }
        }
    }
    Ok(())
}

fn mark_rule(family: AddressFamily, mark: u32, table: u32, lan: &str) -> RuleMessage {
    let mut msg = RuleMessage::default();
    msg.header.family = family;
    msg.header.action = RuleAction::ToTable;
    msg.header.table = if table < 256 { table as u8 } else { 0 };
    msg.attributes = vec![
        RuleAttribute::Priority(REDIRECT_RULE_PRIORITY),
        RuleAttribute::Iifname(lan.to_string()),
        RuleAttribute::FwMark(mark),
        RuleAttribute::FwMask(u32::MAX),
        RuleAttribute::Table(table),
    ];
    msg
}

/// `local default dev lo table TABLE` (`local ::/0` for IPv6).
fn local_default(family: AddressFamily, table: u32, lo: u32) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family;
    msg.header.destination_prefix_length = 0;
    msg.header.table = if table < 256 { table as u8 } else { 0 };
    msg.header.protocol = RouteProtocol::Static;
    msg.header.scope = RouteScope::Host;
    msg.header.kind = RouteType::Local;
    msg.attributes = vec![RouteAttribute::Table(table), RouteAttribute::Oif(lo)];
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Nla;

    fn bytes(o: &TcOption) -> (u16, Vec<u8>) {
        let mut v = vec![0; o.value_len()];
        o.emit_value(&mut v);
        (o.kind(), v)
    }

    #[test]
    fn htb_class_options_are_the_kernels_layout() {
        let c = HtbClass {
            index: 7,
            classid: 0x5a_0003,
            rate_bytes: 1_250_000, // 10 Mbit/s
            burst_bytes: 2_764,
            quantum: 65_536,
        };
        let opts = htb_class_options(&c);
        assert_eq!(opts.len(), 1, "no 64-bit rates below 4 GB/s");
        let (kind, v) = bytes(&opts[0]);
        assert_eq!(kind, TCA_HTB_PARMS);
        assert_eq!(v.len(), 44, "sizeof(struct tc_htb_opt)");
        let u32_at = |i: usize| u32::from_ne_bytes(v[i..i + 4].try_into().unwrap());
        assert_eq!((v[1], u32_at(8)), (LINKLAYER_ETHERNET, 1_250_000), "rate");
        assert_eq!(u32_at(20), 1_250_000, "ceil");
        // 2,764 B at 1.25 MB/s: 2.2112 ms = 34,550 ticks of 64 ns.
        assert_eq!(
            (u32_at(24), u32_at(28)),
            (34_550, 34_550),
            "buffer, cbuffer"
        );
        assert_eq!(u32_at(32), 65_536, "quantum");

        let fast = HtbClass {
            rate_bytes: 12_500_000_000, // 100 Gbit/s
            ..c
        };
        let opts = htb_class_options(&fast);
        assert_eq!(opts.len(), 3);
        let (_, v) = bytes(&opts[0]);
        assert_eq!(u32::from_ne_bytes(v[8..12].try_into().unwrap()), u32::MAX);
        assert_eq!(
            bytes(&opts[1]),
            (TCA_HTB_RATE64, 12_500_000_000u64.to_ne_bytes().to_vec())
        );
        assert_eq!(bytes(&opts[2]).0, TCA_HTB_CEIL64);
    }

    #[test]
    fn the_loopback_interface_is_found_with_its_address() {
        // Every network namespace has lo, with 127.0.0.1 once it is up.
        let lo = link("lo").unwrap().expect("lo");
        let index = std::fs::read_to_string("/sys/class/net/lo/ifindex").unwrap();
        assert_eq!(lo.index, index.trim().parse::<u32>().unwrap());
        assert_eq!(link("no-such-if0").unwrap(), None);
        // Asked alone, an entry that is not there is none (not an error, nor a wait).
        let nobody: IpAddr = "192.0.2.77".parse().unwrap();
        assert_eq!(neighbour(nobody, lo.index).unwrap(), None);
        let addrs = addresses().unwrap();
        if let Some(a) = addrs
            .iter()
            .find(|a| a.ifindex == lo.index && a.ip.is_ipv4())
        {
            assert_eq!((a.ip, a.prefix_len), ("127.0.0.1".parse().unwrap(), 8));
        }
    }
}
