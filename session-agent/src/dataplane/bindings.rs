//! Address bindings (anti-spoofing): which MAC an address belongs to, their
//! expiry and release.

use std::{
    collections::{HashMap, HashSet},
    os::fd::AsFd,
    sync::atomic::Ordering,
    time::Duration,
};

use aya::maps::MapData;
use session_common::*;

use super::{
    maps::*,
    mmap::{self, cell},
};
use crate::error::{AgentError, Result};

/// What one run of [`Maps::sweep_bindings`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BindingSweep {
    /// Bindings in the table after the run.
    pub live: u64,
    /// Bindings removed because they went unused for the TTL.
    pub expired: u64,
}

type BindingMap = aya::maps::HashMap<MapData, AddrKey, Binding>;

const PAID: &str = "the address bindings";
const UNPAID: &str = "the unpaid clients' address bindings";
/// Bindings read per `bpf` call.
const BATCH: usize = 4096;

/// A binding table, with a descriptor of its own for batch reads (aya's
/// map keeps its own private).
pub(super) struct BindingTable {
    fd: std::os::fd::OwnedFd,
    map: BindingMap,
}

fn io_error(what: String, source: std::io::Error) -> AgentError {
    AgentError::Io { what, source }
}

impl BindingTable {
    /// Every binding, read in batches; by walking the keys on kernels
    /// without batch reads (before 5.6).
    fn entries(&self) -> Result<Vec<(AddrKey, Binding)>> {
        match crate::sys::bpf_map_entries(self.fd.as_fd(), BATCH) {
            Ok(all) => Ok(all),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self
                .map
                .iter()
                .map(|i| i.map_err(|e| AgentError::bpf("reading the address bindings", e)))
                .collect(),
            Err(e) => Err(io_error("reading the address bindings".into(), e)),
        }
    }
}

/// A binding TTL in the datapath's milliseconds (at least one: 0 means none).
fn ttl_ms(ttl: Duration) -> u32 {
    ttl.as_millis().clamp(1, u32::MAX as u128) as u32
}

/// What a MAC holds after a sweep: how many addresses, and (when last used,
/// which) the IPv4 address it used last.
type Held = (u64, Option<(u64, u32)>);

impl Maps {
    /// The pinned binding tables (address -> the MAC it is bound to): paying
    /// clients' and the gateway's DHCP answers' (`BINDINGS`), then those of
    /// clients that have not paid (`UNPAID_BINDINGS`, an LRU; absent in pins
    /// of older versions until the datapath is attached again).
    pub(super) fn binding_maps(&self) -> Result<Vec<BindingTable>> {
        let table = |data: MapData, lru: bool| -> Result<BindingTable> {
            let what = if lru { UNPAID } else { PAID };
            let fd = data
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| io_error(format!("opening {what}"), e))?;
            let map = if lru {
                aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data))
            } else {
                aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data))
            }
            .map_err(|e| AgentError::bpf(format!("opening {what}"), e))?;
            Ok(BindingTable { fd, map })
        };
        let mut out = vec![table(
            mmap::open_pinned(&self.shared, MAP_BINDINGS)?,
            false,
        )?];
        if self.shared.join(MAP_UNPAID_BINDINGS).exists() {
            out.push(table(
                mmap::open_pinned(&self.shared, MAP_UNPAID_BINDINGS)?,
                true,
            )?);
        }
        Ok(out)
    }

    /// The address bindings: address -> (MAC, when the datapath last found it
    /// in use). Those unused for the TTL are free, and left out.
    pub fn bindings(&self) -> Result<Vec<(std::net::IpAddr, MacAddr, u64)>> {
        let (now, ttl_ms) = (coarse_ns(), self.lan().bind_ttl_ms);
        let mut out = Vec::new();
        for t in self.binding_maps()? {
            for (k, b) in t.entries()? {
                if let Some(ip) = addr_of(&k).filter(|_| !binding_stale(b.last_ns, now, ttl_ms)) {
                    out.push((ip, b.mac, b.last_ns));
                }
            }
        }
        Ok(out)
    }

    /// The MAC `ip` is bound to, looked up in each binding table (no walk of
    /// them); none when its binding went unused for the TTL.
    pub fn binding_of(&self, ip: std::net::IpAddr) -> Result<Option<MacAddr>> {
        let key = addr_key(ip);
        let (now, ttl_ms) = (coarse_ns(), self.lan().bind_ttl_ms);
        for t in self.binding_maps()? {
            match t.map.get(&key, 0) {
                Ok(b) if binding_stale(b.last_ns, now, ttl_ms) => {}
                Ok(b) => return Ok(Some(b.mac)),
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(AgentError::bpf("reading the address bindings", e)),
            }
        }
        Ok(None)
    }

    /// Tells the datapath the binding TTL: a binding unused for it is free
    /// ([`LanConfig::bind_ttl_ms`]), and each client's remembered addresses
    /// are looked up again every quarter of it.
    pub fn set_bind_ttl(&self, ttl: Duration) {
        let ms = ttl_ms(ttl);
        let mut cfg = self.lan();
        if cfg.bind_ttl_ms != ms {
            cfg.bind_ttl_ms = ms;
            self.set_lan(&cfg);
        }
    }

    /// Removes the bindings unused for `ttl` (the datapath already treats
    /// them as free: this makes room in the tables), and counts each client's
    /// addresses again.
    pub fn sweep_bindings(&self, ttl: Duration) -> Result<BindingSweep> {
        let used = self.slots_used();
        let now = coarse_ns();
        let ttl_ms = ttl_ms(ttl);
        let mut done = BindingSweep::default();
        // Sized for every client at once (a client holds one or two addresses
        // as a rule): growing the tables of MACs, and a list of addresses
        // for each, took over a quarter of the sweep at 65,536 clients.
        let mut held: HashMap<MacAddr, Held> = HashMap::with_capacity(used as usize);
        let mut bound4: HashSet<(MacAddr, u32)> = HashSet::with_capacity(used as usize);
        for mut t in self.binding_maps()? {
            let all = t.entries()?;
            let map = &mut t.map;
            done.live += all.len() as u64;
            for (k, b) in all {
                let fresh = !binding_stale(b.last_ns, now, ttl_ms);
                // Stamped again since it was read: still in use.
                let stamped = !fresh
                    && !matches!(map.get(&k, 0), Ok(f) if f.last_ns == b.last_ns && f.mac == b.mac);
                if fresh || stamped || map.remove(&k).is_err() {
                    let (n, v4) = held.entry(b.mac).or_default();
                    *n += 1;
                    if k.family == 4 {
                        bound4.insert((b.mac, k.addr[0]));
                        if v4.is_none_or(|(last, _)| b.last_ns > last) {
                            *v4 = Some((b.last_ns, k.addr[0]));
                        }
                    }
                    continue;
                }
                done.expired += 1;
                done.live -= 1;
            }
        }
        // Each client's count and IPv4 address, from the tables themselves (a
        // DHCP answer moves an address to another MAC without telling the one
        // that had it; the LRU drops unpaid clients' bindings unannounced).
        let counters = self.all_counters(0, used)?;
        for slot in 0..used {
            if let Some(pos) = self.position(slot) {
                let mac = index_mac(self.key(pos).load(Ordering::Acquire));
                let (n, last4) = held.get(&mac).copied().unwrap_or_default();
                cell!(counters, slot, bound_addrs: AtomicU64).store(n, Ordering::Relaxed);
                // The address the client holds stays while bound (the report
                // is due again); else the one it used last, on the same LAN.
                let cell = cell!(counters, slot, bound_v4: AtomicU64);
                let cur = cell.load(Ordering::Relaxed);
                let lan = cur & !((1u64 << BOUND_V4_LAN_SHIFT) - 1);
                let v4 = if cur as u32 != 0 && bound4.contains(&(mac, cur as u32)) {
                    cur & !BOUND_V4_REPORTED
                } else {
                    last4.map_or(0, |(_, a)| a as u64 | lan)
                };
                cell.store(v4, Ordering::Relaxed);
            }
        }
        Ok(done)
    }

    /// Removes every address binding of `mac` (its device moved to another
    /// MAC: the addresses are free for the new one's first claim). Returns how
    /// many were removed.
    pub fn release_bindings(&self, mac: &MacAddr) -> Result<u64> {
        let mut n = 0;
        for mut t in self.binding_maps()? {
            let mine: Vec<AddrKey> = t
                .entries()?
                .into_iter()
                .filter(|(_, b)| b.mac == *mac)
                .map(|(k, _)| k)
                .collect();
            for k in mine {
                // Gone meanwhile (expired, or moved by a DHCP answer) is fine.
                if t.map.remove(&k).is_ok() {
                    n += 1;
                }
            }
        }
        if let Some(slot) = self.slot_of(mac) {
            let counters = self.all_counters(slot, 1)?;
            cell!(counters, slot, bound_addrs: AtomicU64).store(0, Ordering::Relaxed);
            cell!(counters, slot, bound_v4: AtomicU64).store(0, Ordering::Relaxed);
        }
        Ok(n)
    }
}
