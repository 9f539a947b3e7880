//! `session-agent run --shaper htb`: speed limits enforced by HTB classes
//! instead of the datapath's token buckets.
//!
//! Policing drops what exceeds the limit, so TCP loses packets and retransmits;
//! shaping queues it, so TCP slows down without losses (at the cost of
//! queueing delay). The LAN gets an HTB root qdisc `5a:` (download); upload
//! goes through an IFB device with its own HTB `5a:`, to which the datapath
//! redirects a shaped client's packets. Each limited client has a class
//! `5a:<slot + 1>` with `rate = ceil = limit` on each device, chosen by the
//! datapath through `skb->priority`; everyone else is not classified and goes
//! out directly. Devices, qdiscs and classes are made over routing netlink
//! ([`crate::netlink`]).

use session_common::{ShaperMode, SHAPE_HTB_MAJOR};

use crate::{
    error::{AgentError, Result},
    iface, netlink,
};

/// How speed limits are enforced.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Shaper {
    /// Token buckets in the datapath drop what exceeds the limit: no queueing
    /// delay, but TCP retransmits.
    #[default]
    Police,
    /// HTB classes queue what exceeds the limit: no retransmits, but queueing
    /// delay. Needs TC ingress and the kernel's IFB and HTB.
    Htb,
}

impl Shaper {
    /// The mode as the pinned `ShaperConfig` stores it.
    pub fn mode(self) -> u32 {
        match self {
            Shaper::Police => ShaperMode::Police as u32,
            Shaper::Htb => ShaperMode::Htb as u32,
        }
    }

    /// The mode a pinned `ShaperConfig` holds; `None` for a code this
    /// version does not know (pins of another version).
    pub fn from_mode(mode: u32) -> Option<Self> {
        match ShaperMode::try_from(mode).ok()? {
            ShaperMode::Police => Some(Shaper::Police),
            ShaperMode::Htb => Some(Shaper::Htb),
        }
    }
}

/// Frame bytes HTB charges per full-size packet beyond the IP bytes the agent
/// counts (the Ethernet header).
const L2_OVERHEAD: u64 = 14;
const FULL_PACKET: u64 = 1500;
/// TCP payload of a full-size IPv4 segment with timestamps. A limit is the
/// goodput a client's speed test shows: the class carries the headers on top.
/// (The policer's bucket counts IP bytes; its burst gives a short test about
/// the same allowance.)
const TCP_PAYLOAD: u64 = 1448;

/// The txqueuelen of the IFB device: as much queue for upload as a veth or
/// Ethernet device has for download (HTB's leaves are pfifo of that length).
const IFB_TXQUEUELEN: u32 = 1000;
/// Bytes a class sends per round when several are backlogged.
const QUANTUM: u32 = 65_536;

/// Name of the IFB device that shapes `lan`'s upload (at most 15 characters,
/// one per LAN name).
pub fn ifb_name(lan: &str) -> String {
    if lan.len() <= 11 {
        format!("ifb-{lan}")
    } else {
        // FNV-1a: stable across versions and processes.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in lan.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("ifb_{:011x}", h >> 20)
    }
}

/// The device's root qdisc is the agent's HTB.
fn has_our_root(index: u32) -> Result<bool> {
    Ok(netlink::qdiscs(index)?
        .iter()
        .any(|q| q.root && q.kind == "htb" && u32::from(q.major) == SHAPE_HTB_MAJOR))
}

/// The kind of link `name` is (`ifb`, `veth`, ...; empty for none) and its
/// index, `None` if there is no such link.
fn link_kind(name: &str) -> Result<Option<(String, u32)>> {
    Ok(netlink::link(name)?.map(|l| (l.kind.unwrap_or_default(), l.index)))
}

/// Makes an HTB root on `dev` unless there is one of the agent's already
/// (which keeps its classes, e.g. across a restart).
fn ensure_root(index: u32) -> Result<()> {
    if has_our_root(index)? {
        return Ok(());
    }
    netlink::replace_htb_root(index, SHAPE_HTB_MAJOR as u16)
}

/// Sets up shaping for `lan`: the HTB root on the LAN and the IFB device with
/// its HTB root. Returns the IFB's interface index, for the datapath.
pub fn setup(lan: &str) -> Result<u32> {
    let lan_index = iface::index(lan)?;
    let ifb = ifb_name(lan);
    match link_kind(&ifb)? {
        None => netlink::add_ifb(&ifb)?,
        Some((k, _)) if k == "ifb" => {}
        Some((k, _)) => {
            return Err(AgentError::ShapeDevice {
                name: ifb,
                lan: lan.into(),
                reason: format!("a {k} device has that name"),
            })
        }
    }
    let ifb_index = iface::index(&ifb)?;
    netlink::set_up(ifb_index, IFB_TXQUEUELEN)?;
    ensure_root(lan_index)?;
    ensure_root(ifb_index)?;
    Ok(ifb_index)
}

/// Removes what [`setup`] made for `lan` (what is already gone is skipped).
pub fn teardown(lan: &str) -> Result<()> {
    if let Ok(index) = iface::index(lan) {
        if has_our_root(index)? {
            netlink::del_root_qdisc(index)?;
        }
    }
    if let Some((kind, index)) = link_kind(&ifb_name(lan))? {
        if kind == "ifb" {
            netlink::del_link(index)?;
        }
    }
    Ok(())
}

/// Whether `lan` has an IFB device of the agent's (so there may be something to tear down).
pub fn ifb_exists(lan: &str) -> bool {
    iface::index(&ifb_name(lan)).is_ok()
}

/// One HTB class of a shaped client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    pub dev: String,
    pub classid: u32,
    /// IP bytes per second.
    pub rate_bytes: u64,
}

impl Class {
    /// The class as the kernel takes it, on the device with index `index`.
    ///
    /// The burst is tc's usual one, 1 ms at the rate plus a full-size frame,
    /// not `--burst-ms`: a deep bucket lets HTB send in bursts that fill the
    /// queue further (measured: 70 ms instead of 22 ms of RTT for one TCP
    /// flow at 20 Mbit/s, same goodput).
    fn htb(&self, index: u32) -> netlink::HtbClass {
        let frame_bytes = self.rate_bytes.saturating_mul(FULL_PACKET + L2_OVERHEAD) / TCP_PAYLOAD;
        netlink::HtbClass {
            index,
            classid: self.classid,
            rate_bytes: frame_bytes,
            burst_bytes: frame_bytes / 1000 + FULL_PACKET + L2_OVERHEAD,
            quantum: QUANTUM,
        }
    }
}

/// Creates or changes a class.
pub fn set_class(class: &Class) -> Result<()> {
    set_classes(std::slice::from_ref(class))
}

/// Creates or changes classes, over one netlink socket.
pub fn set_classes(classes: &[Class]) -> Result<()> {
    let mut index: Option<(&str, u32)> = None;
    let mut htb = Vec::with_capacity(classes.len());
    for c in classes {
        let i = match index {
            Some((dev, i)) if dev == c.dev => i,
            _ => {
                let i = iface::index(&c.dev)?;
                index = Some((&c.dev, i));
                i
            }
        };
        htb.push(c.htb(i));
    }
    netlink::replace_htb_classes(&htb)
}

/// Deletes the class `classid` on `dev` if it exists.
pub fn del_class(dev: &str, classid: u32) -> Result<()> {
    let Ok(index) = iface::index(dev) else {
        return Ok(());
    };
    if netlink::classes(index)?.contains(&classid) {
        netlink::del_class(index, classid)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifb_names_fit_and_differ() {
        assert_eq!(ifb_name("lan0"), "ifb-lan0");
        assert_eq!(ifb_name("wlan0-hotsp"), "ifb-wlan0-hotsp");
        let a = ifb_name("wlan0-hotspot1");
        let b = ifb_name("wlan0-hotspot2");
        assert!(a.len() <= 15 && b.len() <= 15, "{a} {b}");
        assert_ne!(a, b);
        assert!(a.starts_with("ifb_"));
    }

    #[test]
    fn a_class_carries_the_frames_of_its_goodput_with_tcs_burst() {
        let c = Class {
            dev: "lan0".into(),
            classid: 0x5a_0003,
            rate_bytes: 2_500_000,
        };
        // 20 Mbit/s of TCP payload is 20.91 Mbit/s of frames.
        assert_eq!(
            c.htb(4),
            netlink::HtbClass {
                index: 4,
                classid: 0x5a_0003,
                rate_bytes: 2_613_950,
                burst_bytes: 4127,
                quantum: 65_536,
            }
        );
    }

    #[test]
    fn modes_round_trip() {
        for s in [Shaper::Police, Shaper::Htb] {
            assert_eq!(Shaper::from_mode(s.mode()), Some(s));
        }
        assert_eq!(Shaper::from_mode(7), None);
    }
}
