//! The walled garden by domain name.
//!
//! The operator names hosts (`pay.example.com`, `*.cdn.example.com`, each
//! optionally on one port); their addresses change by the hour, so they are
//! learnt from the DNS answers clients get. The egress program holds every
//! answer from a garden DNS server to a client that has not paid (see the
//! datapath's `dns` module); [`NameGarden::answer`] parses it, follows its
//! CNAME chain from the question, puts each A and AAAA of a garden name into
//! the LAN's `GARDEN_HOSTS` for the answer's TTL (clamped to
//! [`NameGardenOptions::ttl_min`]..[`NameGardenOptions::ttl_max`]), and only
//! then sends the answer on: the client's first connection finds its address
//! in the garden. [`NameGarden::sweep`] removes addresses whose TTL has passed
//! and that no client used for `ttl_min` (the datapath stamps each use), so an
//! open download is never cut.

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::OwnedFd,
    str::FromStr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use serde::{Deserialize, Serialize};
use session_common::{GardenHostKey, GardenHostValue, HeldFrame, DNS_HELD_MAX};
use simple_dns::{rdata::RData, Name, PacketFlag, CLASS, OPCODE, QCLASS, RCODE};
use tracing::{debug, warn};

use crate::{datapath::Lan, error::AgentError};

/// Longest CNAME chain followed.
const MAX_CHAIN: usize = 16;
/// A held answer older than this is dropped instead of sent on (the client
/// has given up on it): answers held while the agent was not running.
pub const STALE_AFTER: Duration = Duration::from_secs(2);

/// A garden name: exact (`pay.example.com`) or every name under a suffix
/// (`*.example.com`, not `example.com` itself), on one port or on all.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainRule {
    /// Lower case, without the trailing dot (the suffix, for a wildcard).
    pub name: String,
    pub wildcard: bool,
    /// 0: every port and protocol; otherwise TCP and UDP on this port.
    pub port: u16,
}

impl DomainRule {
    /// Whether `name` (lower case, no trailing dot) is one of this rule's.
    pub fn matches(&self, name: &str) -> bool {
        if self.wildcard {
            name.len() > self.name.len() + 1
                && name.ends_with(self.name.as_str())
                && name.as_bytes()[name.len() - self.name.len() - 1] == b'.'
        } else {
            name == self.name
        }
    }
}

impl fmt::Display for DomainRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(&self.name)?;
        if self.port != 0 {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

impl FromStr for DomainRule {
    type Err = AgentError;

    fn from_str(s: &str) -> Result<Self, AgentError> {
        let bad = |reason: &str| AgentError::BadGardenDomain {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let t = s.trim();
        let (host, port) = match t.rsplit_once(':') {
            Some((h, p)) => {
                let port: u16 = p
                    .parse()
                    .map_err(|_| bad("the port must be a number from 1 to 65535"))?;
                if port == 0 {
                    return Err(bad("the port must be a number from 1 to 65535"));
                }
                (h, port)
            }
            None => (t, 0),
        };
        let (host, wildcard) = match host.strip_prefix("*.") {
            Some(h) => (h, true),
            None => (host, false),
        };
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        if host.is_empty() {
            return Err(bad("no name"));
        }
        if host.len() > 253 {
            return Err(bad("longer than 253 characters"));
        }
        for label in host.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(bad(
                    "each label (between dots) must have 1 to 63 characters",
                ));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(bad(
                    "a name has letters, digits, '-' and '_' (an internationalised name in its xn-- form); '*' only as a whole first label",
                ));
            }
        }
        Ok(Self {
            name: host,
            wildcard,
            port,
        })
    }
}

impl Serialize for DomainRule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DomainRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Why a held frame taught nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("not an Ethernet frame with an IP packet from port 53")]
    Frame,
    #[error("a DNS message over TCP that does not end in this segment")]
    Partial,
    #[error("not a DNS message")]
    Malformed,
    #[error("not a successful answer to one standard query")]
    NotAnswer,
}

fn be16(b: &[u8], at: usize) -> Option<usize> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]) as usize)
}

/// Where an IP packet's parts are in a frame.
struct Layout {
    /// Offset of the IP header.
    l3: usize,
    v6: bool,
    proto: u8,
    /// Offset of the transport header, and the end of the IP packet.
    l4: usize,
    end: usize,
}

/// The IP packet in a frame, through up to two VLAN tags; IPv4 fragments and
/// IPv6 extension headers are not followed.
fn layout(frame: &[u8]) -> Result<Layout, AnswerError> {
    let e = AnswerError::Frame;
    let mut off = 12;
    let mut proto = be16(frame, off).ok_or(e)?;
    for _ in 0..2 {
        if matches!(proto, 0x8100 | 0x88a8 | 0x9100) {
            off += 4;
            proto = be16(frame, off).ok_or(e)?;
        }
    }
    off += 2;
    let l = match proto {
        0x0800 => {
            let ihl = ((*frame.get(off).ok_or(e)? & 0x0f) as usize) * 4;
            let total = be16(frame, off + 2).ok_or(e)?;
            // A fragment (offset or more-fragments set) is not a whole message.
            if be16(frame, off + 6).ok_or(e)? & 0x3fff != 0 || ihl < 20 {
                return Err(e);
            }
            Layout {
                l3: off,
                v6: false,
                proto: *frame.get(off + 9).ok_or(e)?,
                l4: off + ihl,
                end: off + total,
            }
        }
        0x86dd => {
            let payload = be16(frame, off + 4).ok_or(e)?;
            Layout {
                l3: off,
                v6: true,
                proto: *frame.get(off + 6).ok_or(e)?,
                l4: off + 40,
                end: off + 40 + payload,
            }
        }
        _ => return Err(e),
    };
    if l.end > frame.len() || l.l4 > l.end || !matches!(l.proto, 6 | 17) {
        return Err(e);
    }
    Ok(l)
}

/// The DNS message in a frame from port 53 (UDP, or TCP with the message
/// whole in the segment).
pub fn dns_message(frame: &[u8]) -> Result<&[u8], AnswerError> {
    let e = AnswerError::Frame;
    let l = layout(frame)?;
    let seg = &frame[l.l4..l.end];
    if be16(seg, 0).ok_or(e)? != 53 {
        return Err(e);
    }
    if l.proto == 17 {
        return seg.get(8..).ok_or(e);
    }
    let doff = ((*seg.get(12).ok_or(e)? >> 4) as usize) * 4;
    let data = seg.get(doff..).ok_or(e)?;
    let len = be16(data, 0).ok_or(AnswerError::Partial)?;
    data.get(2..2 + len).ok_or(AnswerError::Partial)
}

/// Ones' complement sum of big-endian 16-bit words.
fn sum16(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|w| (u32::from(w[0]) << 8) | u32::from(*w.get(1).unwrap_or(&0)))
        .sum()
}

/// Writes the whole UDP or TCP checksum of the frame's packet. A held frame
/// of the gateway's own may carry only the pseudo-header's part (the rest
/// left to the device), which a frame sent again through a packet socket
/// does not get. `false`: not a UDP or TCP packet it can fill in.
pub fn fill_l4_checksum(frame: &mut [u8]) -> bool {
    let Ok(l) = layout(frame) else {
        return false;
    };
    let at = l.l4 + if l.proto == 17 { 6 } else { 16 };
    if at + 2 > l.end {
        return false;
    }
    frame[at..at + 2].fill(0);
    let len = (l.end - l.l4) as u32;
    let addrs = if l.v6 {
        &frame[l.l3 + 8..l.l3 + 40]
    } else {
        &frame[l.l3 + 12..l.l3 + 20]
    };
    let mut s = sum16(addrs) + len + u32::from(l.proto) + sum16(&frame[l.l4..l.end]);
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    let mut c = !(s as u16);
    if c == 0 && l.proto == 17 {
        // 0 is "no checksum" in UDP.
        c = 0xffff;
    }
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    true
}

/// A name as compared with the rules: lower case, labels joined by dots;
/// `None` for a label no host name has (a dot or a non-printing byte in it).
fn name_key(n: &Name) -> Option<String> {
    let mut out = String::new();
    for (i, label) in n.as_bytes().enumerate() {
        if label.is_empty() || !label.iter().all(|b| b.is_ascii_graphic() && *b != b'.') {
            return None;
        }
        if i > 0 {
            out.push('.');
        }
        out.push_str(&String::from_utf8_lossy(label).to_ascii_lowercase());
    }
    Some(out)
}

/// An address a DNS answer puts in the garden, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Learnt {
    pub addr: IpAddr,
    pub port: u16,
    /// Seconds: the least TTL along the chain from the question to the address.
    pub ttl: u32,
    /// The rule it is learnt for.
    pub rule: DomainRule,
}

/// The garden addresses in a DNS message: each A and AAAA reached from the
/// question through CNAMEs, for every rule that matches a name on the way.
pub fn garden_addresses(msg: &[u8], rules: &[DomainRule]) -> Result<Vec<Learnt>, AnswerError> {
    let p = simple_dns::Packet::parse(msg).map_err(|_| AnswerError::Malformed)?;
    if !p.has_flags(PacketFlag::RESPONSE)
        || p.opcode() != OPCODE::StandardQuery
        || p.rcode() != RCODE::NoError
        || p.questions.len() != 1
    {
        return Err(AnswerError::NotAnswer);
    }
    let q = &p.questions[0];
    if q.qclass != QCLASS::CLASS(CLASS::IN) {
        return Err(AnswerError::NotAnswer);
    }
    let Some(qname) = name_key(&q.qname) else {
        return Ok(Vec::new());
    };
    let matching = |name: &str| -> BTreeSet<&DomainRule> {
        rules.iter().filter(|r| r.matches(name)).collect()
    };
    // Names reached from the question: the rules met on the way, the least TTL.
    let mut reached: HashMap<String, (BTreeSet<&DomainRule>, u32)> = HashMap::new();
    reached.insert(qname.clone(), (matching(&qname), u32::MAX));
    let mut frontier = vec![qname];
    for _ in 0..MAX_CHAIN {
        let mut next = Vec::new();
        for from in &frontier {
            let (rules_so_far, ttl_so_far) = reached[from].clone();
            for rr in &p.answers {
                let RData::CNAME(target) = &rr.rdata else {
                    continue;
                };
                if rr.class != CLASS::IN || name_key(&rr.name).as_deref() != Some(from.as_str()) {
                    continue;
                }
                let Some(to) = name_key(&target.0) else {
                    continue;
                };
                if reached.contains_key(&to) {
                    continue;
                }
                let mut r = rules_so_far.clone();
                r.extend(matching(&to));
                reached.insert(to.clone(), (r, ttl_so_far.min(rr.ttl)));
                next.push(to);
            }
        }
        if next.is_empty() {
            break;
        }
        frontier = next;
    }
    let mut out = Vec::new();
    for rr in &p.answers {
        let addr: IpAddr = match &rr.rdata {
            RData::A(a) => Ipv4Addr::from(a.address).into(),
            RData::AAAA(a) => Ipv6Addr::from(a.address).into(),
            _ => continue,
        };
        if rr.class != CLASS::IN
            || addr.is_unspecified()
            || addr.is_multicast()
            || addr == IpAddr::V4(Ipv4Addr::BROADCAST)
        {
            continue;
        }
        let Some(owner) = name_key(&rr.name) else {
            continue;
        };
        let Some((rs, ttl)) = reached.get(&owner) else {
            continue;
        };
        for r in rs {
            out.push(Learnt {
                addr,
                port: r.port,
                ttl: rr.ttl.min(*ttl),
                rule: (*r).clone(),
            });
        }
    }
    Ok(out)
}

/// The names an earlier run changed through the API (none if never).
fn load_changes(path: &std::path::Path) -> crate::error::Result<ApiChanges> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| AgentError::GardenNamesFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ApiChanges::default()),
        Err(e) => Err(AgentError::file(format!("reading {}", path.display()), e)),
    }
}

/// The datapath's key of a learnt address.
pub fn host_key(addr: IpAddr, port: u16) -> GardenHostKey {
    let (family, a) = match addr {
        IpAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v4.octets());
            (4, b)
        }
        IpAddr::V6(v6) => (6, v6.octets()),
    };
    GardenHostKey {
        family,
        _pad: 0,
        port: port.to_be_bytes(),
        addr: a,
    }
}

fn key_addr(k: &GardenHostKey) -> IpAddr {
    if k.family == 4 {
        Ipv4Addr::new(k.addr[0], k.addr[1], k.addr[2], k.addr[3]).into()
    } else {
        Ipv6Addr::from(k.addr).into()
    }
}

/// How the garden by name behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameGardenOptions {
    pub domains: Vec<DomainRule>,
    /// Least time an answer's address stays, and how long an address whose
    /// TTL has passed stays after a client last used it.
    pub ttl_min: Duration,
    /// Most time an address stays without being used.
    pub ttl_max: Duration,
    /// Most learnt addresses per LAN.
    pub limit: usize,
    /// The mark of the answers sent on (`LanConfig::dns_mark`).
    pub mark: u32,
    /// Where the names added and removed through the API are kept, so that a
    /// restart keeps them (`None`: not kept, as with the memory store).
    pub state: Option<std::path::PathBuf>,
}

/// The defaults of `session-agent run` (its options take theirs from here).
impl Default for NameGardenOptions {
    fn default() -> Self {
        Self {
            domains: Vec::new(),
            ttl_min: Duration::from_secs(30),
            ttl_max: Duration::from_secs(3600),
            limit: 4096,
            mark: 0x5e56,
            state: None,
        }
    }
}

/// The names added and removed through the API, against the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiChanges {
    /// Names the configuration does not have.
    added: BTreeSet<DomainRule>,
    /// Names of the configuration taken out.
    removed: BTreeSet<DomainRule>,
}

/// One learnt address.
#[derive(Debug, Clone)]
struct Entry {
    expires: Instant,
    /// The rules it was learnt for (empty: found in the datapath at start).
    rules: BTreeSet<DomainRule>,
}

/// One LAN's learnt addresses, as the datapath has them.
struct LanNames {
    name: String,
    map: Mutex<BpfHashMap<MapData, GardenHostKey, GardenHostValue>>,
    learnt: Mutex<HashMap<GardenHostKey, Entry>>,
}

/// What the garden by name has done, for `/metrics`.
#[derive(Debug, Default)]
pub struct NameStats {
    /// Held answers by outcome.
    pub learnt: AtomicU64,
    pub no_garden_name: AtomicU64,
    pub malformed: AtomicU64,
    pub stale: AtomicU64,
    pub send_failed: AtomicU64,
    /// Addresses not learnt because the limit was reached.
    pub refused_full: AtomicU64,
    /// Addresses removed after their TTL (unused).
    pub expired: AtomicU64,
}

/// A learnt address as the API lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LearntView {
    pub lan: String,
    pub address: IpAddr,
    /// 0: every port.
    pub port: u16,
    /// Seconds until its TTL passes (0: passed; it stays while in use).
    pub expires_in_secs: u64,
    pub domains: Vec<String>,
}

/// The garden by name of every LAN.
pub struct NameGarden {
    rules: RwLock<Vec<DomainRule>>,
    opts: NameGardenOptions,
    /// The configuration's names now (a reload changes them) and what the API
    /// changed against them; one lock, so that each change is saved whole.
    changes: Mutex<(Vec<DomainRule>, ApiChanges)>,
    lans: Vec<LanNames>,
    /// Opened with the first garden name (it needs CAP_NET_RAW, which an agent
    /// without names does without).
    sender: std::sync::OnceLock<OwnedFd>,
    pub stats: NameStats,
    /// A warning about the limit is logged once until it is below it again.
    full_logged: AtomicBool,
}

impl NameGarden {
    /// The mark the datapath's held DNS answers are sent on with, when it
    /// should hold them: there are garden names.
    pub fn dns_snoop_mark(&self) -> Option<u32> {
        (!self.rules().is_empty()).then_some(self.options().mark)
    }

    /// Tells the datapath of every LAN whether to hold DNS answers (see
    /// [`NameGarden::dns_snoop_mark`]).
    pub fn update_dns_snoop(&self, lans: &[Lan]) {
        self.set_dns_snoop(lans, self.dns_snoop_mark().is_some());
    }

    /// Holding of DNS answers on or off in the datapath of every LAN.
    pub fn set_dns_snoop(&self, lans: &[Lan], on: bool) {
        let mark = self.options().mark;
        for lan in lans {
            let Ok(m) = lan.maps.lock() else {
                continue;
            };
            let mut cfg = m.lan();
            if on {
                cfg.flags |= session_common::LAN_DNS_SNOOP;
                cfg.dns_mark = mark;
            } else {
                cfg.flags &= !session_common::LAN_DNS_SNOOP;
            }
            if cfg != m.lan() {
                m.set_lan(&cfg);
            }
        }
    }

    /// Over each LAN's `GARDEN_HOSTS` (adopting what an earlier run learnt,
    /// for `ttl_min`); with garden names, opens the packet socket that sends
    /// answers on.
    pub fn new(
        opts: NameGardenOptions,
        lans: Vec<(String, BpfHashMap<MapData, GardenHostKey, GardenHostValue>)>,
    ) -> crate::error::Result<Self> {
        let now = Instant::now();
        let lans = lans
            .into_iter()
            .map(|(name, map)| {
                let learnt = map
                    .keys()
                    .filter_map(|k| k.ok())
                    .map(|k| {
                        (
                            k,
                            Entry {
                                expires: now + opts.ttl_min,
                                rules: BTreeSet::new(),
                            },
                        )
                    })
                    .collect();
                LanNames {
                    name,
                    map: Mutex::new(map),
                    learnt: Mutex::new(learnt),
                }
            })
            .collect();
        let changes = match &opts.state {
            Some(path) => load_changes(path)?,
            None => ApiChanges::default(),
        };
        let mut rules: Vec<DomainRule> = opts
            .domains
            .iter()
            .chain(&changes.added)
            .filter(|r| !changes.removed.contains(r))
            .cloned()
            .collect();
        rules.sort();
        rules.dedup();
        let g = Self {
            rules: RwLock::new(rules),
            changes: Mutex::new((opts.domains.clone(), changes)),
            opts,
            lans,
            sender: std::sync::OnceLock::new(),
            stats: NameStats::default(),
            full_logged: AtomicBool::new(false),
        };
        if !g.rules().is_empty() {
            g.sender()?;
        }
        Ok(g)
    }

    /// Adds a garden name through the API and keeps that (see
    /// [`NameGardenOptions::state`]); `false` if it was one already.
    pub fn add_kept(&self, rule: DomainRule) -> crate::error::Result<bool> {
        self.sender()?;
        let mut c = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = c.1.clone();
        next.removed.remove(&rule);
        if !c.0.contains(&rule) {
            next.added.insert(rule.clone());
        }
        self.save(&next)?;
        c.1 = next;
        self.add(rule)
    }

    /// Removes a garden name through the API and keeps that; `false` if it was
    /// none.
    pub fn remove_kept(&self, rule: &DomainRule) -> crate::error::Result<bool> {
        let mut c = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        if !self.rules().contains(rule) {
            return Ok(false);
        }
        let mut next = c.1.clone();
        next.added.remove(rule);
        if c.0.contains(rule) {
            next.removed.insert(rule.clone());
        }
        self.save(&next)?;
        c.1 = next;
        Ok(self.remove(rule))
    }

    /// The configuration's names after a reload: those it drops go, those it
    /// adds come (also if the API had taken them out); the API's others stay.
    pub fn set_configured(&self, domains: &[DomainRule]) -> crate::error::Result<()> {
        let mut c = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = c.1.clone();
        for r in domains {
            next.removed.remove(r);
            next.added.remove(r);
        }
        self.save(&next)?;
        let old = std::mem::replace(&mut c.0, domains.to_vec());
        c.1 = next;
        for r in old.iter().filter(|r| !domains.contains(r)) {
            self.remove(r);
        }
        for r in domains.iter().filter(|r| !old.contains(r)) {
            self.add(r.clone())?;
        }
        Ok(())
    }

    /// Writes the API's changes whole (a new file renamed over the old).
    fn save(&self, changes: &ApiChanges) -> crate::error::Result<()> {
        let Some(path) = &self.opts.state else {
            return Ok(());
        };
        let what = || {
            format!(
                "keeping the garden names changed through the API in {}",
                path.display()
            )
        };
        let text = serde_json::to_string_pretty(changes).expect("names serialize");
        let tmp = path.with_extension("json.new");
        std::fs::write(&tmp, text + "\n")
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| AgentError::file(what(), e))
    }

    fn sender(&self) -> crate::error::Result<&OwnedFd> {
        if let Some(s) = self.sender.get() {
            return Ok(s);
        }
        let fd = crate::sys::packet_sender(self.opts.mark)
            .map_err(|source| AgentError::PacketSocket { source })?;
        Ok(self.sender.get_or_init(|| fd))
    }

    pub fn options(&self) -> &NameGardenOptions {
        &self.opts
    }

    /// The garden names now.
    pub fn rules(&self) -> Vec<DomainRule> {
        self.rules.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Adds a garden name for this run; `false` if it was there already.
    /// Answers from now on teach its addresses (a client that looked it up
    /// before asks again when its cache expires).
    fn add(&self, rule: DomainRule) -> crate::error::Result<bool> {
        self.sender()?;
        let mut r = self.rules.write().unwrap_or_else(|e| e.into_inner());
        if r.contains(&rule) {
            return Ok(false);
        }
        r.push(rule);
        r.sort();
        Ok(true)
    }

    /// Removes a garden name for this run, and the addresses learnt only for
    /// it; `false` if it was not there.
    fn remove(&self, rule: &DomainRule) -> bool {
        {
            let mut r = self.rules.write().unwrap_or_else(|e| e.into_inner());
            let before = r.len();
            r.retain(|x| x != rule);
            if r.len() == before {
                return false;
            }
        }
        for lan in &self.lans {
            let mut learnt = lan.learnt.lock().unwrap_or_else(|e| e.into_inner());
            let mut gone = Vec::new();
            for (k, e) in learnt.iter_mut() {
                if e.rules.remove(rule) && e.rules.is_empty() {
                    gone.push(*k);
                }
            }
            let mut map = lan.map.lock().unwrap_or_else(|e| e.into_inner());
            for k in gone {
                learnt.remove(&k);
                if let Err(e) = map.remove(&k) {
                    warn!(lan = %lan.name, address = %key_addr(&k), "removing a learnt garden address: {e}");
                }
            }
        }
        true
    }

    /// Learnt addresses, every LAN's.
    pub fn learnt(&self) -> Vec<LearntView> {
        let now = Instant::now();
        let mut out = Vec::new();
        for lan in &self.lans {
            let learnt = lan.learnt.lock().unwrap_or_else(|e| e.into_inner());
            for (k, e) in learnt.iter() {
                out.push(LearntView {
                    lan: lan.name.clone(),
                    address: key_addr(k),
                    port: u16::from_be_bytes(k.port),
                    expires_in_secs: e.expires.saturating_duration_since(now).as_secs(),
                    domains: e.rules.iter().map(|r| r.to_string()).collect(),
                });
            }
        }
        out.sort_by(|a, b| (&a.lan, a.address, a.port).cmp(&(&b.lan, b.address, b.port)));
        out
    }

    /// Learnt addresses, every LAN's.
    pub fn learnt_count(&self) -> usize {
        self.lans
            .iter()
            .map(|l| l.learnt.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// A held frame of LAN `lan` (an item of `DNS_HELD`): learns its garden
    /// addresses, then sends it on (unless it is stale). Never fails: a frame
    /// that teaches nothing is still sent on untouched.
    pub fn answer(&self, lan: usize, item: &[u8], now_ns: u64) {
        let Some(lan) = self.lans.get(lan) else {
            return;
        };
        let (Some(len), Some(ifindex), Some(held_ns)) = (
            item.get(0..4)
                .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes"))),
            item.get(4..8)
                .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes"))),
            item.get(8..16)
                .map(|b| u64::from_ne_bytes(b.try_into().expect("8 bytes"))),
        ) else {
            return;
        };
        let header = std::mem::offset_of!(HeldFrame, frame);
        let Some(held) = (len <= DNS_HELD_MAX)
            .then(|| item.get(header..header + len as usize))
            .flatten()
        else {
            return;
        };
        let mut frame = held.to_vec();
        if now_ns.saturating_sub(held_ns) > STALE_AFTER.as_nanos() as u64 {
            self.stats.stale.fetch_add(1, Relaxed);
            return;
        }
        let rules = self.rules();
        match dns_message(&frame).and_then(|m| garden_addresses(m, &rules)) {
            Ok(found) if found.is_empty() => {
                self.stats.no_garden_name.fetch_add(1, Relaxed);
            }
            Ok(found) => {
                self.stats.learnt.fetch_add(1, Relaxed);
                self.learn(lan, found);
            }
            Err(e) => {
                debug!(lan = %lan.name, "held DNS answer: {e}");
                self.stats.malformed.fetch_add(1, Relaxed);
            }
        }
        fill_l4_checksum(&mut frame);
        let sent = self
            .sender
            .get()
            .ok_or_else(|| std::io::Error::other("no packet socket"))
            .and_then(|s| crate::sys::send_frame(s, ifindex, &frame));
        if let Err(e) = sent {
            self.stats.send_failed.fetch_add(1, Relaxed);
            debug!(lan = %lan.name, "sending a held DNS answer on: {e}");
        }
    }

    fn learn(&self, lan: &LanNames, found: Vec<Learnt>) {
        let now = Instant::now();
        let mut learnt = lan.learnt.lock().unwrap_or_else(|e| e.into_inner());
        let mut map = lan.map.lock().unwrap_or_else(|e| e.into_inner());
        for l in found {
            let k = host_key(l.addr, l.port);
            let ttl = Duration::from_secs(l.ttl as u64).clamp(self.opts.ttl_min, self.opts.ttl_max);
            if let Some(e) = learnt.get_mut(&k) {
                e.expires = e.expires.max(now + ttl);
                e.rules.insert(l.rule);
                continue;
            }
            if learnt.len() >= self.opts.limit {
                self.stats.refused_full.fetch_add(1, Relaxed);
                if !self.full_logged.swap(true, Relaxed) {
                    warn!(lan = %lan.name, limit = self.opts.limit, address = %l.addr, domain = %l.rule, "the garden by name is full: addresses of garden names are not learnt until others expire (raise --garden-domain-limit)");
                }
                continue;
            }
            if let Err(e) = map.insert(k, GardenHostValue::default(), 0) {
                warn!(lan = %lan.name, address = %l.addr, "learning a garden address: {e}");
                continue;
            }
            debug!(lan = %lan.name, address = %l.addr, port = l.port, ttl = l.ttl, domain = %l.rule, "garden address learnt");
            learnt.insert(
                k,
                Entry {
                    expires: now + ttl,
                    rules: BTreeSet::from([l.rule]),
                },
            );
        }
    }

    /// Removes addresses whose TTL has passed and that no client used for
    /// `ttl_min` (`now_coarse_ns`: the datapath's clock of use stamps).
    pub fn sweep(&self, now_coarse_ns: u64) {
        let now = Instant::now();
        let idle = self.opts.ttl_min.as_nanos() as u64;
        for lan in &self.lans {
            let mut learnt = lan.learnt.lock().unwrap_or_else(|e| e.into_inner());
            let mut map = lan.map.lock().unwrap_or_else(|e| e.into_inner());
            let due: Vec<GardenHostKey> = learnt
                .iter()
                .filter(|(_, e)| e.expires <= now)
                .map(|(k, _)| *k)
                .collect();
            for k in due {
                let used = map.get(&k, 0).map(|v| v.last_used_ns).unwrap_or(0);
                if used != 0 && now_coarse_ns.saturating_sub(used) < idle {
                    continue;
                }
                learnt.remove(&k);
                self.stats.expired.fetch_add(1, Relaxed);
                match map.remove(&k) {
                    Ok(()) => {
                        debug!(lan = %lan.name, address = %key_addr(&k), "garden address expired")
                    }
                    Err(e) => {
                        warn!(lan = %lan.name, address = %key_addr(&k), "removing an expired garden address: {e}")
                    }
                }
            }
            if learnt.len() < self.opts.limit {
                self.full_logged.store(false, Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use simple_dns::{rdata, Packet, Question, ResourceRecord, QTYPE, TYPE};

    fn rule(s: &str) -> DomainRule {
        s.parse().unwrap()
    }

    fn answer(q: &str, records: &[(&str, RData<'static>, u32)]) -> Vec<u8> {
        let mut p = Packet::new_reply(7);
        p.questions.push(Question::new(
            Name::new_unchecked(q),
            QTYPE::TYPE(TYPE::A),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        for (name, data, ttl) in records {
            p.answers.push(ResourceRecord::new(
                Name::new_unchecked(name),
                CLASS::IN,
                *ttl,
                data.clone(),
            ));
        }
        p.build_bytes_vec().unwrap()
    }

    fn a(ip: [u8; 4]) -> RData<'static> {
        RData::A(rdata::A {
            address: u32::from_be_bytes(ip),
        })
    }

    fn cname(to: &str) -> RData<'static> {
        RData::CNAME(rdata::CNAME(Name::new_unchecked(to).into_owned()))
    }

    #[test]
    fn rules_parse_exact_names_wildcards_and_ports_and_refuse_nonsense() {
        assert_eq!(
            rule("Pay.Example.COM."),
            DomainRule {
                name: "pay.example.com".into(),
                wildcard: false,
                port: 0
            }
        );
        assert_eq!(rule("*.cdn.example:443").to_string(), "*.cdn.example:443");
        for bad in [
            "",
            "*.",
            "a..b",
            "exa mple.com",
            "x.*.com",
            "a.com:0",
            "a.com:99999",
            "a.com:x",
            "é.com",
        ] {
            assert!(bad.parse::<DomainRule>().is_err(), "{bad:?} was accepted");
        }
        let w = rule("*.example.com");
        assert!(w.matches("a.example.com") && w.matches("a.b.example.com"));
        assert!(!w.matches("example.com") && !w.matches("badexample.com"));
        assert!(
            rule("example.com").matches("example.com")
                && !rule("example.com").matches("a.example.com")
        );
    }

    #[test]
    fn a_cname_chain_from_a_garden_name_puts_its_addresses_in_with_the_least_ttl() {
        let msg = answer(
            "pay.example",
            &[
                ("pay.example", cname("edge.cdn.test"), 300),
                ("edge.cdn.test", cname("e1.cdn.test"), 60),
                ("e1.cdn.test", a([198, 51, 100, 7]), 600),
                // Not on the chain: an extra record an attacker's server adds.
                ("other.test", a([203, 0, 113, 66]), 600),
            ],
        );
        let got = garden_addresses(&msg, &[rule("pay.example:443")]).unwrap();
        assert_eq!(
            got,
            vec![Learnt {
                addr: "198.51.100.7".parse().unwrap(),
                port: 443,
                ttl: 60,
                rule: rule("pay.example:443"),
            }]
        );
        // The same answer teaches nothing for a name it does not reach.
        assert!(garden_addresses(&msg, &[rule("other.example")])
            .unwrap()
            .is_empty());
        // A garden name met along the chain counts from there on.
        let got = garden_addresses(&msg, &[rule("*.cdn.test")]).unwrap();
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn error_answers_queries_and_garbage_teach_nothing() {
        let mut q = Packet::new_query(1);
        q.questions.push(Question::new(
            Name::new_unchecked("pay.example"),
            QTYPE::TYPE(TYPE::A),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        let query = q.build_bytes_vec().unwrap();
        let rules = [rule("pay.example")];
        assert_eq!(
            garden_addresses(&query, &rules),
            Err(AnswerError::NotAnswer)
        );
        assert_eq!(
            garden_addresses(b"\x00\x01", &rules),
            Err(AnswerError::Malformed)
        );
        assert_eq!(dns_message(&[0u8; 10]), Err(AnswerError::Frame));
    }

    /// An Ethernet + IPv4 + UDP frame from port 53 around `msg`.
    fn udp_frame(msg: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + 8 + msg.len()) as u16;
        f.extend_from_slice(&[
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0x40,
            0,
            64,
            17,
            0,
            0,
        ]);
        f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        let ulen = (8 + msg.len()) as u16;
        f.extend_from_slice(&[0, 53, 0x30, 0x39, (ulen >> 8) as u8, ulen as u8, 0, 0]);
        f.extend_from_slice(msg);
        f
    }

    #[test]
    fn the_message_is_found_in_a_udp_frame() {
        let msg = answer("pay.example", &[("pay.example", a([192, 0, 2, 1]), 30)]);
        assert_eq!(dns_message(&udp_frame(&msg)).unwrap(), &msg[..]);
        let mut truncated = udp_frame(&msg);
        truncated.truncate(40);
        assert_eq!(dns_message(&truncated), Err(AnswerError::Frame));
    }

    #[test]
    fn the_transport_checksum_is_filled_in_whole() {
        let msg = answer("pay.example", &[("pay.example", a([192, 0, 2, 1]), 30)]);
        let mut f = udp_frame(&msg);
        assert!(fill_l4_checksum(&mut f));
        // Verified independently: the sum over pseudo-header and datagram is all ones.
        let udp = &f[34..];
        let mut s = sum16(&f[26..34]) + udp.len() as u32 + 17 + sum16(udp);
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        assert_eq!(s, 0xffff);
        assert_ne!(&f[40..42], &[0, 0]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any bytes in a frame: no panic, and nothing is learnt unless the
        /// bytes are an answer that names a garden name.
        #[test]
        fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
            let rules = [rule("*.example"), rule("pay.test")];
            let _ = dns_message(&bytes).and_then(|m| garden_addresses(m, &rules));
            let _ = garden_addresses(&bytes, &rules);
        }

        /// A real answer with bytes flipped: no panic; whatever is learnt is an
        /// address of a garden name that the message still carries.
        #[test]
        fn mutated_answers_never_panic_or_learn_foreign_names(
            flips in proptest::collection::vec((0usize..200, any::<u8>()), 1..8)
        ) {
            let mut msg = answer(
                "www.pay.test",
                &[("www.pay.test", cname("e.cdn.test"), 60), ("e.cdn.test", a([198, 51, 100, 9]), 60)],
            );
            for (at, v) in flips {
                let n = msg.len();
                msg[at % n] = v;
            }
            let rules = [rule("*.pay.test")];
            if let Ok(found) = dns_message(&udp_frame(&msg)).and_then(|m| garden_addresses(m, &rules)) {
                for l in found {
                    prop_assert_eq!(l.rule, rule("*.pay.test"));
                }
            }
        }
    }
}
