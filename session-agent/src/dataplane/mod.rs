//! The kernel datapath: attaching it, and reading and steering its pinned maps.

pub mod attach;
pub mod bpffs;
pub mod mmap;
pub mod shape;
pub mod testrun;

use std::{
    collections::HashMap,
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use aya::{
    maps::{lpm_trie::Key, LpmTrie, MapData},
    Ebpf,
};
use serde::Serialize;
use session_common::*;

use crate::{
    error::{AgentError, Result},
    garden::GardenEntry,
};
use mmap::{cell, MmapArray};
use shape::Shaper;

pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/session-agent";

/// Default bucket depth, in milliseconds of traffic at the limit.
pub const DEFAULT_BURST_MS: u64 = 250;
/// Smallest bucket: one GSO aggregate must fit so that TCP is not starved.
pub const MIN_BURST_BYTES: u64 = 64 * 1024;

/// A speed limit for one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimit {
    /// Bytes per second; 0 = unlimited.
    pub rate_bytes: u64,
    /// Bucket depth in bytes.
    pub burst_bytes: u64,
}

impl RateLimit {
    pub const UNLIMITED: Self = Self {
        rate_bytes: 0,
        burst_bytes: 0,
    };

    /// `mbits` Mbit/s (1 Mbit = 1,000,000 bits; 0 = unlimited) with a bucket of
    /// `burst_ms` milliseconds at that rate, but never less than `min_burst` bytes.
    pub fn mbits(mbits: u64, burst_ms: u64, min_burst: u64) -> Self {
        if mbits == 0 {
            return Self::UNLIMITED;
        }
        let rate_bytes = mbits * 1_000_000 / 8;
        Self {
            rate_bytes,
            burst_bytes: (rate_bytes * burst_ms / 1000).max(min_burst),
        }
    }
}

/// Puts the gateway's addresses into `cfg` (as many as it holds; the rest
/// are logged: traffic to them would count as usage).
pub fn set_gateway_addrs(cfg: &mut LanConfig, addrs: &[std::net::IpAddr]) {
    (cfg.n_v4, cfg.n_v6, cfg.addr_filter) = (0, 0, 0);
    for addr in addrs {
        let k = addr_key(*addr);
        cfg.addr_filter |= addr_filter_bit(addr.is_ipv6(), &k.addr);
        match addr {
            std::net::IpAddr::V4(_) if (cfg.n_v4 as usize) < LAN_MAX_ADDRS => {
                cfg.v4[cfg.n_v4 as usize] = k.addr[0];
                cfg.n_v4 += 1;
            }
            std::net::IpAddr::V6(_) if (cfg.n_v6 as usize) < LAN_MAX_ADDRS => {
                cfg.v6[cfg.n_v6 as usize] = k.addr;
                cfg.n_v6 += 1;
            }
            _ => {
                tracing::warn!(%addr, "more gateway addresses than the datapath keeps ({LAN_MAX_ADDRS} per family): traffic to this one counts as usage")
            }
        }
    }
}

/// An address of the binding table as an IP address.
pub fn addr_of(k: &AddrKey) -> Option<std::net::IpAddr> {
    let mut b = [0u8; 16];
    for (bytes, word) in b.chunks_exact_mut(4).zip(k.addr) {
        bytes.copy_from_slice(&word.to_ne_bytes());
    }
    match k.family {
        4 => Some(std::net::IpAddr::from([b[0], b[1], b[2], b[3]])),
        6 => Some(std::net::IpAddr::from(b)),
        _ => None,
    }
}

/// The binding table's key of an IP address.
pub fn addr_key(ip: std::net::IpAddr) -> AddrKey {
    let mut b = [0u8; 16];
    let family = match ip {
        std::net::IpAddr::V4(a) => {
            b[..4].copy_from_slice(&a.octets());
            4
        }
        std::net::IpAddr::V6(a) => {
            b = a.octets();
            6
        }
    };
    AddrKey {
        family,
        addr: std::array::from_fn(|i| {
            u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
        }),
    }
}

/// CLOCK_MONOTONIC_COARSE in nanoseconds, the clock of bpf_ktime_get_coarse_ns().
pub fn coarse_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of bpf_ktime_get_ns().
pub fn ktime_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One client's row as operators and scripts see it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClientRow {
    pub lan: String,
    pub mac: String,
    pub slot: u32,
    pub allowed: bool,
    pub up_bytes: u64,
    pub up_packets: u64,
    pub down_bytes: u64,
    pub down_packets: u64,
    pub garden_bytes: u64,
    pub garden_packets: u64,
    pub blocked_bytes: u64,
    pub blocked_packets: u64,
    pub malformed_packets: u64,
    pub ratelimit_packets: u64,
    pub ratelimit_bytes: u64,
    pub quota_packets: u64,
    pub quota_bytes: u64,
    pub spoof_packets: u64,
    pub unknown_packets: u64,
    pub garden_ratelimit_packets: u64,
    pub garden_ratelimit_bytes: u64,
    /// Addresses bound to the client now (anti-spoofing).
    pub bound_addrs: u64,
}

/// A client as the datapath enforces it ([`Maps::enforced`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enforced {
    pub slot: u32,
    pub mac: MacKey,
    /// `POLICY_*` bits.
    pub flags: u32,
    /// Bytes per second of the speed limits in force (0: unlimited).
    pub up_rate: u64,
    pub down_rate: u64,
}

/// What one run of [`Maps::sweep_bindings`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BindingSweep {
    /// Bindings in the table after the run.
    pub live: u64,
    /// Bindings removed because they went unused for the TTL.
    pub expired: u64,
}

/// The pinned maps of one interface and the client table every LAN shares,
/// opened from bpffs (works from any process).
pub struct Maps {
    pub iface: String,
    pub dir: PathBuf,
    /// Where the client table every LAN shares is pinned.
    pub shared: PathBuf,
    /// The client table (by MAC, see `session_common::index`).
    clients: MmapArray<ClientEntry>,
    /// Slot -> position in `clients`.
    slots: MmapArray<u64>,
    /// Slot -> garden and drop counters; mapped only while read (see [`MmapArray`]).
    counters: MapData,
    /// Slot -> token buckets; mapped only while read or written.
    policy: MapData,
    alloc: MmapArray<SlotAllocator>,
    /// Ring of freed slots (see [`SlotAllocator`]).
    free: MmapArray<u64>,
    shaper: MmapArray<ShaperConfig>,
    lan: MmapArray<LanConfig>,
}

/// Slots whose counters [`Maps::forget_idle`] maps at once (320 KiB).
const SCAN_CHUNK: u32 = 4096;

/// What [`Maps::forget_idle`] remembers between runs.
#[derive(Debug, Default)]
pub struct IdleTracker {
    /// Slot -> (packets it has sent, received or had dropped; when that last changed).
    seen: HashMap<u32, (u64, Instant)>,
    /// Entries forgotten by the last run, `(slot, position)`: freed by the next
    /// one, when no packet can still be using them.
    retired: Vec<(u32, u32)>,
    /// Slots that neither an entry nor the free ring holds -> since when (see
    /// [`LOST_SLOT_GRACE`]).
    unowned: HashMap<u32, Instant>,
}

/// How long a slot must have been held by neither an entry nor the free ring
/// before [`Maps::forget_idle`] takes it back. A packet (or `ensure_slot`)
/// that takes a slot and then loses the race for the MAC's entry leaves it so
/// for good; one that is still inserting holds it for microseconds.
pub const LOST_SLOT_GRACE: Duration = Duration::from_secs(60);

/// What one run of [`Maps::forget_idle`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Forgotten {
    /// Clients forgotten now.
    pub retired: u32,
    /// Slots (of clients forgotten by the run before) ready for new clients.
    pub freed: u32,
    /// Slots that a lost race for an entry had left unused, ready for new clients.
    pub reclaimed: u32,
}

impl Maps {
    pub fn open(pin_root: &Path, iface: &str) -> Result<Self> {
        let dir = attach::pin_dir(pin_root, iface);
        attach::check_pins(pin_root, iface)?;
        let shared = attach::clients_dir(pin_root);
        if !dir.join(MAP_LAN).exists() || !shared.join(MAP_CLIENTS).exists() {
            return Err(AgentError::NotAttached {
                iface: iface.into(),
                dir,
            });
        }
        Ok(Self {
            iface: iface.into(),
            clients: MmapArray::open_pin(&shared, MAP_CLIENTS, INDEX_ENTRIES)?,
            slots: MmapArray::open_pin(&shared, MAP_SLOTS, MAX_CLIENTS)?,
            counters: mmap::open_pinned(&shared, MAP_COUNTERS)?,
            policy: mmap::open_pinned(&shared, MAP_POLICY)?,
            alloc: MmapArray::open_pin(&shared, MAP_SLOT_ALLOC, 1)?,
            free: MmapArray::open_pin(&shared, MAP_FREE_SLOTS, MAX_CLIENTS)?,
            shaper: MmapArray::open_pin(&dir, MAP_SHAPER, 1)?,
            lan: MmapArray::open_pin(&dir, MAP_LAN, 1)?,
            dir,
            shared,
        })
    }

    /// How this LAN's speed limits are enforced, as the agent last set it up.
    pub fn shaper(&self) -> Result<Shaper> {
        let mode = cell!(self.shaper, 0, mode: AtomicU32).load(Ordering::SeqCst);
        Shaper::from_mode(mode).ok_or_else(|| AgentError::IncompatiblePins {
            iface: self.iface.clone(),
            dir: self.dir.clone(),
            reason: format!("{MAP_SHAPER} holds the unknown shaping mode {mode}"),
        })
    }

    /// Switches the LAN to `mode` (called by the agent once the devices are
    /// ready for it: for `Htb`, after [`shape::setup`], with the IFB's index).
    /// Speed limits already set move to the new mode: HTB classes are made
    /// (again) from the rates kept in the policy, or the token buckets take
    /// over from the classes.
    pub fn set_shaper(&self, mode: Shaper, ifb_ifindex: u32) -> Result<()> {
        cell!(self.shaper, 0, ifb_ifindex: AtomicU32).store(ifb_ifindex, Ordering::SeqCst);
        cell!(self.shaper, 0, mode: AtomicU32).store(mode.mode(), Ordering::SeqCst);
        let mut classes = Vec::new();
        let mut to_flag = Vec::new();
        let used = self.slots_used();
        let pol = self.policies(0, used)?;
        // Slots of forgotten clients (and any a lost race left unused) have no entry.
        for slot in (0..used).filter(|s| self.position(*s).is_some()) {
            match mode {
                Shaper::Htb => {
                    for d in self.directions(&pol, slot) {
                        let rate = d.read().rate_bytes;
                        if let Some(classid) = shape_classid(slot).filter(|_| rate > 0) {
                            classes.push(shape::Class {
                                dev: d.dev,
                                classid,
                                rate_bytes: rate,
                            });
                            to_flag.push((slot, d.shape));
                        }
                    }
                }
                Shaper::Police => {
                    let flags = self.flags(slot)?;
                    if flags.load(Ordering::SeqCst) & (POLICY_SHAPE_UP | POLICY_SHAPE_DOWN) != 0 {
                        for d in self.directions(&pol, slot) {
                            let limit = limit_of(&d.read());
                            set_bucket(flags, &d, limit);
                            flags.fetch_and(!d.shape, Ordering::SeqCst);
                        }
                    }
                }
            }
        }
        // Classes first: a flag sends packets to its class at once.
        shape::set_classes(&classes)?;
        for (slot, flag) in to_flag {
            // A client forgotten meanwhile has no flags to set.
            if let Ok(flags) = self.flags(slot) {
                flags.fetch_or(flag, Ordering::SeqCst);
            }
        }
        Ok(())
    }

    /// Maps the token buckets of slots `first..first + len`.
    fn policies(&self, first: u32, len: u32) -> Result<MmapArray<ClientPolicy>> {
        MmapArray::map_range(self.policy.fd().as_fd(), first, len, MAP_POLICY)
    }

    /// Both directions of `slot` (whose buckets `pol` maps): upload, then download.
    fn directions(&self, pol: &MmapArray<ClientPolicy>, slot: u32) -> [Direction; 2] {
        let p = pol.entry(slot);
        // SAFETY: only computes the addresses of the two buckets inside the
        // mapped entry `p` (nothing is read or written here).
        unsafe {
            [
                Direction {
                    shape: POLICY_SHAPE_UP,
                    limit: POLICY_LIMIT_UP,
                    bucket: &raw mut (*p).up,
                    dev: shape::ifb_name(&self.iface),
                },
                Direction {
                    shape: POLICY_SHAPE_DOWN,
                    limit: POLICY_LIMIT_DOWN,
                    bucket: &raw mut (*p).down,
                    dev: self.iface.clone(),
                },
            ]
        }
    }

    /// Interfaces that have pins under `pin_root`.
    pub fn attached_interfaces(pin_root: &Path) -> Result<Vec<String>> {
        let rd = match std::fs::read_dir(pin_root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(AgentError::NothingAttached(pin_root.into()))
            }
            Err(e) => {
                return Err(AgentError::from_io(
                    format!("reading {}", pin_root.display()),
                    e,
                ))
            }
        };
        let mut out: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name() != attach::CLIENTS_DIR && e.path().join(MAP_LAN).exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        if out.is_empty() {
            return Err(AgentError::NothingAttached(pin_root.into()));
        }
        Ok(out)
    }

    /// The identity of this set of pinned maps (0 until [`Maps::ensure_epoch`]).
    pub fn epoch(&self) -> u64 {
        cell!(self.alloc, 0, epoch: AtomicU64).load(Ordering::SeqCst)
    }

    /// Gives freshly created maps a random identity, and their layout
    /// version ([`TABLE_LAYOUT`]); keeps an existing one.
    pub fn ensure_epoch(&self) -> u64 {
        let mut r = [0u8; 8];
        loop {
            // SAFETY: getrandom writes at most `r.len()` bytes into `r`.
            let n = unsafe { libc::getrandom(r.as_mut_ptr().cast(), r.len(), 0) };
            let candidate = u64::from_ne_bytes(r);
            if n == 8 && candidate != 0 {
                let cell = cell!(self.alloc, 0, epoch: AtomicU64);
                return match cell.compare_exchange(0, candidate, Ordering::SeqCst, Ordering::SeqCst)
                {
                    Ok(_) => {
                        cell!(self.alloc, 0, layout: AtomicU32)
                            .store(TABLE_LAYOUT, Ordering::SeqCst);
                        candidate
                    }
                    Err(existing) => existing,
                };
            }
        }
    }

    /// The layout version the table was created with (see [`TABLE_LAYOUT`];
    /// 0 counts as 1).
    pub fn layout(&self) -> u32 {
        cell!(self.alloc, 0, layout: AtomicU32)
            .load(Ordering::SeqCst)
            .max(1)
    }

    /// Slots handed out so far (including those of forgotten clients).
    pub fn slots_used(&self) -> u32 {
        self.alloc.get(0).next.min(MAX_CLIENTS)
    }

    /// Clients in the table now.
    pub fn live_clients(&self) -> u32 {
        (0..self.slots_used())
            .filter(|s| self.position(*s).is_some())
            .count() as u32
    }

    /// The counters and policy of every client, read from shared memory.
    pub fn snapshot(&self) -> Result<Vec<ClientRow>> {
        let used = self.slots_used();
        let counters = self.all_counters(0, used)?;
        Ok((0..used)
            .filter_map(|slot| self.row(slot, &counters))
            .collect())
    }

    /// The slot's client as operators see it, or `None` while the slot is unused.
    pub fn client(&self, slot: u32) -> Result<Option<ClientRow>> {
        Ok(self.row(slot, &self.all_counters(slot, 1)?))
    }

    /// Maps the garden and drop counters of slots `first..first + len`.
    fn all_counters(&self, first: u32, len: u32) -> Result<MmapArray<ClientCounters>> {
        MmapArray::map_range(self.counters.fd().as_fd(), first, len, MAP_COUNTERS)
    }

    fn row(&self, slot: u32, counters: &MmapArray<ClientCounters>) -> Option<ClientRow> {
        let e = self.clients.get(self.position(slot)?);
        let c = counters.get(slot);
        Some(ClientRow {
            lan: self.iface.clone(),
            mac: index_mac(e.key).to_string(),
            slot,
            allowed: e.flags & POLICY_ALLOWED != 0,
            up_bytes: e.up_bytes,
            up_packets: e.up_packets,
            down_bytes: e.down_bytes,
            down_packets: e.down_packets,
            garden_bytes: c.garden_bytes,
            garden_packets: c.garden_packets,
            blocked_bytes: c.blocked_bytes,
            blocked_packets: c.blocked_packets,
            malformed_packets: c.malformed_packets,
            ratelimit_packets: c.ratelimit_packets,
            ratelimit_bytes: c.ratelimit_bytes,
            quota_packets: c.quota_packets,
            quota_bytes: c.quota_bytes,
            spoof_packets: c.spoof_packets,
            unknown_packets: c.unknown_packets,
            garden_ratelimit_packets: c.garden_ratelimit_packets,
            garden_ratelimit_bytes: c.garden_ratelimit_bytes,
            bound_addrs: c.bound_addrs,
        })
    }

    /// Every client in the table as the datapath enforces it: its `POLICY_*`
    /// flags and the rates of its speed limits (read a chunk at a time).
    pub fn enforced(&self) -> Result<Vec<Enforced>> {
        let used = self.slots_used();
        let mut out = Vec::new();
        let mut pol = None;
        for slot in 0..used {
            if slot % SCAN_CHUNK == 0 {
                pol = Some(self.policies(slot, SCAN_CHUNK.min(used - slot))?);
            }
            let Some(pos) = self.position(slot) else {
                continue;
            };
            let e = self.clients.get(pos);
            let p = pol.as_ref().expect("mapped at the chunk's start").get(slot);
            let rate = |b: &TokenBucket, on: u32| if e.flags & on != 0 { b.rate_bytes } else { 0 };
            out.push(Enforced {
                slot,
                mac: index_mac(e.key),
                flags: e.flags,
                up_rate: rate(&p.up, POLICY_LIMIT_UP | POLICY_SHAPE_UP),
                down_rate: rate(&p.down, POLICY_LIMIT_DOWN | POLICY_SHAPE_DOWN),
            });
        }
        Ok(out)
    }

    /// What the datapath knows of the LAN (written by [`Maps::set_lan`]).
    pub fn lan(&self) -> LanConfig {
        self.lan.get(0)
    }

    /// Tells the datapath its LAN: the gateway's MAC and addresses,
    /// anti-spoofing, the garden rate limit.
    pub fn set_lan(&self, cfg: &LanConfig) {
        // The datapath reads fields one by one; each is consistent on its own.
        self.lan.set(0, *cfg);
    }

    /// The datapath's global counters (`STAT_*`), summed over the CPUs.
    pub fn stats(&self) -> Result<[u64; STAT_COUNT as usize]> {
        let data = mmap::open_pinned(&self.dir, MAP_STATS)?;
        let arr: aya::maps::PerCpuArray<MapData, u64> =
            aya::maps::PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
                .map_err(|e| AgentError::bpf("opening the datapath statistics", e))?;
        let mut out = [0u64; STAT_COUNT as usize];
        for (i, v) in out.iter_mut().enumerate() {
            let per_cpu = arr
                .get(&(i as u32), 0)
                .map_err(|e| AgentError::bpf("reading the datapath statistics", e))?;
            *v = per_cpu.iter().fold(0u64, |a, x| a.wrapping_add(*x));
        }
        Ok(out)
    }

    /// The pinned binding table (address -> the MAC it is bound to).
    fn binding_map(&self) -> Result<aya::maps::HashMap<MapData, AddrKey, Binding>> {
        let data = mmap::open_pinned(&self.shared, MAP_BINDINGS)?;
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data))
            .map_err(|e| AgentError::bpf("opening the address bindings", e))
    }

    /// Tells the datapath the gateway's addresses now (they change: a WAN
    /// address from DHCP), keeping the rest of the LAN's configuration.
    pub fn set_gateway_addrs(&self, addrs: &[std::net::IpAddr]) {
        let mut cfg = self.lan();
        set_gateway_addrs(&mut cfg, addrs);
        if cfg != self.lan() {
            self.set_lan(&cfg);
        }
    }

    /// The address bindings: address -> (MAC, when the datapath last found it in use).
    pub fn bindings(&self) -> Result<Vec<(std::net::IpAddr, MacKey, u64)>> {
        let map = self.binding_map()?;
        let mut out = Vec::new();
        for item in map.iter() {
            let (k, b) = item.map_err(|e| AgentError::bpf("reading the address bindings", e))?;
            if let Some(ip) = addr_of(&k) {
                out.push((ip, b.mac, b.last_ns));
            }
        }
        Ok(out)
    }

    /// Removes the bindings unused for `ttl`, and takes each client's
    /// remembered addresses back (see `ClientEntry::ip4`), so that the next
    /// packet from an address looks its binding up, and finds it in use, again.
    pub fn sweep_bindings(&self, ttl: Duration) -> Result<BindingSweep> {
        // Forget the remembered addresses first: a binding in use is then
        // stamped again before the next sweep.
        let used = self.slots_used();
        for slot in 0..used {
            if let Some(pos) = self.position(slot) {
                cell!(self.clients, pos, ip4: AtomicU32).store(0, Ordering::Relaxed);
                cell!(self.clients, pos, ip6_tag: AtomicU64).store(0, Ordering::Relaxed);
            }
        }
        let now = coarse_ns();
        let ttl_ns = ttl.as_nanos().min(u64::MAX as u128) as u64;
        let mut map = self.binding_map()?;
        let all: Vec<(AddrKey, Binding)> = map.iter().filter_map(|i| i.ok()).collect();
        let mut done = BindingSweep {
            live: all.len() as u64,
            expired: 0,
        };
        // Addresses each MAC holds after the sweep.
        let mut held: HashMap<MacKey, u64> = HashMap::new();
        for (k, b) in all {
            let fresh = now.saturating_sub(b.last_ns) < ttl_ns;
            // Stamped again since it was read: still in use.
            let stamped = !fresh
                && !matches!(map.get(&k, 0), Ok(f) if f.last_ns == b.last_ns && f.mac == b.mac);
            if fresh || stamped || map.remove(&k).is_err() {
                *held.entry(b.mac).or_default() += 1;
                continue;
            }
            done.expired += 1;
            done.live -= 1;
        }
        // Each client's count, from the table itself (a DHCP answer moves an
        // address to another MAC without telling the one that had it).
        let counters = self.all_counters(0, used)?;
        for slot in 0..used {
            if let Some(pos) = self.position(slot) {
                let mac = index_mac(self.key(pos).load(Ordering::Acquire));
                let n = held.get(&mac).copied().unwrap_or(0);
                cell!(counters, slot, bound_addrs: AtomicU64).store(n, Ordering::Relaxed);
            }
        }
        Ok(done)
    }

    /// Removes every address binding of `mac` (its device moved to another
    /// MAC: the addresses are free for the new one's first claim). Returns how
    /// many were removed.
    pub fn release_bindings(&self, mac: &MacKey) -> Result<u64> {
        let mut map = self.binding_map()?;
        let mine: Vec<AddrKey> = map
            .iter()
            .filter_map(|i| i.ok())
            .filter(|(_, b)| b.mac == *mac)
            .map(|(k, _)| k)
            .collect();
        let mut n = 0;
        for k in mine {
            // Gone meanwhile (expired, or moved by a DHCP answer) is fine.
            if map.remove(&k).is_ok() {
                n += 1;
            }
        }
        if let Some(slot) = self.slot_of(mac) {
            let counters = self.all_counters(slot, 1)?;
            cell!(counters, slot, bound_addrs: AtomicU64).store(0, Ordering::Relaxed);
        }
        Ok(n)
    }

    /// The key of the table entry at `pos`.
    fn key(&self, pos: u32) -> &AtomicU64 {
        cell!(self.clients, pos, key: AtomicU64)
    }

    /// Where the slot's entry is, or `None` while the slot is unused (never
    /// taken, or given up after losing a race for its entry).
    fn position(&self, slot: u32) -> Option<u32> {
        if slot >= self.slots_used() {
            return None;
        }
        let pos = cell!(self.slots, slot => AtomicU64).load(Ordering::Acquire);
        let pos = u32::try_from(pos).ok().filter(|p| *p < INDEX_ENTRIES)?;
        let key = self.key(pos).load(Ordering::Acquire);
        (index_live(key) && index_slot(key) == slot).then_some(pos)
    }

    /// Where the slot's entry is; `slot` comes from [`Maps::slot_of`] or
    /// [`Maps::ensure_slot`]. An error when the slot has none (its client was
    /// forgotten since, or the slot never held one).
    fn entry_of(&self, slot: u32) -> Result<u32> {
        self.position(slot).ok_or_else(|| AgentError::NoEntry {
            iface: self.iface.clone(),
            slot,
        })
    }

    /// Looks `m` up in the table, as the datapath does.
    fn probe(&self, m: u64, seed: u64) -> Probe {
        index_find(m, seed, |pos| Some(self.key(pos).load(Ordering::Acquire)))
    }

    pub fn slot_of(&self, mac: &MacKey) -> Option<u32> {
        match self.epoch() {
            0 => None,
            seed => match self.probe(mac_word(mac), seed) {
                Probe::Found { slot, .. } => Some(slot),
                _ => None,
            },
        }
    }

    /// The client's slot, taking a new one (as the datapath would) if it has none yet.
    pub fn ensure_slot(&mut self, mac: &MacKey) -> Result<u32> {
        if mac.is_zero() {
            return Err(AgentError::NotAClientMac(*mac));
        }
        let seed = self.ensure_epoch();
        let m = mac_word(mac);
        let full = || AgentError::TableFull {
            iface: self.iface.clone(),
            max: MAX_CLIENTS,
        };
        let mut taken = None;
        loop {
            // A slot taken and then not needed (the datapath indexed the MAC
            // meanwhile) stays unused, as the datapath leaves its own.
            let (pos, was) = match self.probe(m, seed) {
                Probe::Found { slot, .. } => return Ok(slot),
                Probe::Free { pos, key } => (pos, key),
                Probe::Full => return Err(full()),
            };
            let slot = match taken.or_else(|| self.take_freed_slot()) {
                Some(s) => s,
                None => {
                    let next = cell!(self.alloc, 0, next: AtomicU32);
                    match bump_take(
                        || next.load(Ordering::Relaxed),
                        || next.fetch_add(1, Ordering::SeqCst),
                        |old, new| {
                            next.compare_exchange(old, new, Ordering::SeqCst, Ordering::SeqCst)
                                .is_ok()
                        },
                    ) {
                        Bump::Taken(slot) => slot,
                        Bump::FullNow | Bump::Full => return Err(full()),
                    }
                }
            };
            taken = Some(slot);
            // Lead the slot to its entry before publishing the entry, as the datapath does.
            cell!(self.slots, slot => AtomicU64).store(pos as u64, Ordering::Release);
            if self
                .key(pos)
                .compare_exchange(was, index_key(m, slot), Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return Ok(slot);
            }
            // Someone took that position: walk again.
        }
    }

    /// A forgotten client's slot, as the datapath takes one.
    fn take_freed_slot(&self) -> Option<u32> {
        let head = cell!(self.alloc, 0, free_head: AtomicU64);
        let tail = cell!(self.alloc, 0, free_tail: AtomicU64);
        // Lost swaps try again: the ring holds at most every slot.
        free_ring_take(
            MAX_CLIENTS,
            || head.load(Ordering::Acquire),
            || tail.load(Ordering::Acquire),
            |i| Some(cell!(self.free, i => AtomicU64).load(Ordering::Acquire)),
            |h| {
                head.compare_exchange(h, h + 1, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            },
        )
    }

    /// Hands a slot to the next new client. Only the agent calls this (one
    /// writer of the tail); the ring holds every slot, so it never overruns.
    fn free_slot(&self, slot: u32) {
        let tail = cell!(self.alloc, 0, free_tail: AtomicU64);
        let t = tail.load(Ordering::Acquire);
        cell!(self.free, free_ring_position(t) => AtomicU64).store(slot as u64, Ordering::Release);
        tail.store(t + 1, Ordering::Release);
    }

    /// Slots freed and not yet taken again.
    pub fn free_slots(&self) -> u64 {
        let a = self.alloc.get(0);
        a.free_tail.saturating_sub(a.free_head)
    }

    /// Forgets clients that are not allowed, not kept by `keep`, and have sent,
    /// received and had dropped nothing for `idle`, so that their slots serve
    /// new clients (phones that randomise their MAC would otherwise fill the
    /// table over time). A forgotten client that comes back is a new client.
    ///
    /// Call it periodically from one process (the agent): an entry is made a
    /// tombstone in one run and freed in the next, so the interval between
    /// runs is the grace for packets still using it. The first run after a
    /// restart knows no client's history, so it forgets nobody.
    pub fn forget_idle(
        &self,
        t: &mut IdleTracker,
        now: Instant,
        idle: Duration,
        keep: impl Fn(&MacKey) -> bool,
    ) -> Result<Forgotten> {
        let mut done = Forgotten::default();
        for (slot, pos) in std::mem::take(&mut t.retired) {
            if self.free_retired(slot, pos)? {
                done.freed += 1;
            }
        }
        let used = self.slots_used();
        // Rebuilt from the live clients, so forgotten and vanished slots drop out.
        let seen = std::mem::take(&mut t.seen);
        let unowned = std::mem::take(&mut t.unowned);
        let ring = self.free_ring();
        // Counters mapped a chunk at a time: a mapping counts fully in RSS.
        let mut counters = None;
        for slot in 0..used {
            if slot % SCAN_CHUNK == 0 {
                counters = Some(self.all_counters(slot, SCAN_CHUNK.min(used - slot))?);
            }
            let counters = counters.as_ref().expect("mapped at the chunk's start");
            let pos = cell!(self.slots, slot => AtomicU64).load(Ordering::Acquire);
            let pos = u32::try_from(pos).ok().filter(|p| *p < INDEX_ENTRIES);
            let key = pos.map_or(0, |p| self.key(p).load(Ordering::Acquire));
            let owned = key == index_retired(slot) || (index_live(key) && index_slot(key) == slot);
            let Some(pos) = pos.filter(|_| owned) else {
                if !ring.contains(&slot) {
                    let since = unowned.get(&slot).copied().unwrap_or(now);
                    if now.duration_since(since) >= LOST_SLOT_GRACE {
                        self.clear_slot(slot)?;
                        self.free_slot(slot);
                        done.reclaimed += 1;
                    } else {
                        t.unowned.insert(slot, since);
                    }
                }
                continue;
            };
            if key == index_retired(slot) {
                // Left by an earlier run (or process) that did not free it.
                t.retired.push((slot, pos));
                continue;
            }
            let e = self.clients.get(pos);
            let c = counters.get(slot);
            let packets = [
                e.up_packets,
                e.down_packets,
                c.garden_packets,
                c.blocked_packets,
                c.malformed_packets,
                c.ratelimit_packets,
                c.quota_packets,
            ]
            .iter()
            .fold(0u64, |a, p| a.wrapping_add(*p));
            let since = match seen.get(&slot) {
                Some(&(p, since)) if p == packets => since,
                // New, or active since the last run.
                _ => {
                    t.seen.insert(slot, (packets, now));
                    continue;
                }
            };
            let idle_long = now.duration_since(since) >= idle;
            if idle_long
                && e.flags & POLICY_ALLOWED == 0
                && !keep(&index_mac(key))
                && self.retire(slot, pos, key)?
            {
                t.retired.push((slot, pos));
                done.retired += 1;
            } else {
                t.seen.insert(slot, (packets, since));
            }
        }
        Ok(done)
    }

    /// Frees the entry at `pos` that [`Maps::retire`] made a tombstone for
    /// `slot` a run ago: clears it, offers it to new MACs and the slot to new
    /// clients. False if it is no longer that tombstone.
    fn free_retired(&self, slot: u32, pos: u32) -> Result<bool> {
        if self.key(pos).load(Ordering::Acquire) != index_retired(slot) {
            return Ok(false);
        }
        // Classes that a limit set while the client was being forgotten made.
        let flags = self.clients.get(pos).flags;
        if let Some(id) = shape_classid(slot) {
            let pol = self.policies(slot, 1)?;
            for d in self.directions(&pol, slot) {
                if flags & d.shape != 0 {
                    shape::del_class(&d.dev, id)?;
                }
            }
        }
        self.clients.set(
            pos,
            ClientEntry {
                key: index_retired(slot),
                ..Default::default()
            },
        );
        self.clear_slot(slot)?;
        self.key(pos).store(INDEX_REUSABLE, Ordering::Release);
        self.free_slot(slot);
        Ok(true)
    }

    /// Zeroes the slot's garden and drop counters and its token buckets, for
    /// the next client.
    fn clear_slot(&self, slot: u32) -> Result<()> {
        self.all_counters(slot, 1)?
            .set(slot, ClientCounters::default());
        self.policies(slot, 1)?.set(slot, ClientPolicy::default());
        Ok(())
    }

    /// The slots in the free ring (a taker may be moving its head meanwhile:
    /// slots it just took may be among them).
    fn free_ring(&self) -> std::collections::HashSet<u32> {
        let a = self.alloc.get(0);
        (a.free_head..a.free_tail)
            .take(MAX_CLIENTS as usize)
            .map(|i| {
                cell!(self.free, free_ring_position(i) => AtomicU64).load(Ordering::Acquire) as u32
            })
            .collect()
    }

    /// Makes the live entry `key` at `pos` a tombstone unless the client was
    /// allowed meanwhile; its speed limits (and HTB classes) are removed first.
    fn retire(&self, slot: u32, pos: u32, key: u64) -> Result<bool> {
        let flags = self.flags(slot)?;
        let mut f = flags.load(Ordering::SeqCst);
        loop {
            if f & (POLICY_ALLOWED | POLICY_RETIRING) != 0 {
                return Ok(false);
            }
            match flags.compare_exchange(f, f | POLICY_RETIRING, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break,
                Err(now) => f = now,
            }
        }
        if f & (POLICY_LIMIT_UP | POLICY_LIMIT_DOWN | POLICY_SHAPE_UP | POLICY_SHAPE_DOWN) != 0 {
            if let Err(e) = self.set_rates(slot, RateLimit::default(), RateLimit::default()) {
                // Not forgotten after all: a later run tries again.
                flags.fetch_and(!POLICY_RETIRING, Ordering::SeqCst);
                return Err(e);
            }
        }
        // Whoever allowed it meanwhile may have made it a tombstone already.
        match self.key(pos).compare_exchange(
            key,
            index_retired(slot),
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(_) => Ok(true),
            Err(k) => Ok(k == index_retired(slot)),
        }
    }

    fn flags(&self, slot: u32) -> Result<&AtomicU32> {
        Ok(cell!(self.clients, self.entry_of(slot)?, flags: AtomicU32))
    }

    /// The slot's `POLICY_*` flags (none while it has no entry).
    pub fn flags_of(&self, slot: u32) -> u32 {
        self.flags(slot).map_or(0, |f| f.load(Ordering::SeqCst))
    }

    /// Adds to the slot's upload counters as a packet would (for load generators).
    pub fn add_up_bytes(&self, slot: u32, bytes: u64) -> Result<()> {
        cell!(self.clients, self.entry_of(slot)?, up_bytes: AtomicU64)
            .fetch_add(bytes, Ordering::SeqCst);
        Ok(())
    }

    /// Up plus down bytes of the slot: the client's usage meter.
    pub fn usage_bytes(&self, slot: u32) -> Result<u64> {
        let pos = self.entry_of(slot)?;
        Ok(
            cell!(self.clients, pos, up_bytes: AtomicU64).load(Ordering::Relaxed)
                + cell!(self.clients, pos, down_bytes: AtomicU64).load(Ordering::Relaxed),
        )
    }

    /// A copy of the slot's token buckets.
    pub fn policy(&self, slot: u32) -> Result<ClientPolicy> {
        Ok(self.policies(slot, 1)?.get(slot))
    }

    /// The data budget the datapath is spending (meaningful under `POLICY_QUOTA`).
    pub fn budget(&self, slot: u32) -> Result<i64> {
        Ok(self.budget_cell(slot)?.load(Ordering::SeqCst))
    }

    fn budget_cell(&self, slot: u32) -> Result<&AtomicI64> {
        Ok(cell!(self.clients, self.entry_of(slot)?, budget_bytes: AtomicI64))
    }

    /// Sets both speed limits: token buckets (which start full), or in HTB
    /// mode the slot's classes (the rates are kept in the buckets too, unused).
    pub fn set_rates(&self, slot: u32, up: RateLimit, down: RateLimit) -> Result<()> {
        // Found once: the entry stays where it is while this runs, even if the
        // agent forgets the client meanwhile (see [`Maps::limit`]).
        let flags = self.flags(slot)?;
        let limited = POLICY_LIMIT_UP | POLICY_LIMIT_DOWN | POLICY_SHAPE_UP | POLICY_SHAPE_DOWN;
        if up.rate_bytes == 0 && down.rate_bytes == 0 && flags.load(Ordering::SeqCst) & limited == 0
        {
            return Ok(()); // unlimited already
        }
        let htb = self.shaper()? == Shaper::Htb;
        let pol = self.policies(slot, 1)?;
        for (d, limit) in self.directions(&pol, slot).into_iter().zip([up, down]) {
            let shaped = flags.load(Ordering::SeqCst) & d.shape != 0;
            match shape_classid(slot).filter(|_| htb && limit.rate_bytes > 0) {
                Some(id) => {
                    let same = limit_of(&d.read()) == limit;
                    if shaped && same {
                        continue;
                    }
                    shape::set_class(&shape::Class {
                        dev: d.dev.clone(),
                        classid: id,
                        rate_bytes: limit.rate_bytes,
                    })?;
                    flags.fetch_or(d.shape, Ordering::SeqCst);
                    // Kept for a switch back to policing; unused while shaped.
                    set_bucket(flags, &d, limit);
                }
                None => {
                    set_bucket(flags, &d, limit);
                    flags.fetch_and(!d.shape, Ordering::SeqCst);
                    if shaped {
                        if let Some(id) = shape_classid(slot) {
                            shape::del_class(&d.dev, id)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// In HTB mode, makes this LAN's classes of `slot` from the rates of the
    /// shared client table, for a client whose limits [`Maps::set_rates`] set
    /// through another LAN's maps (which made that LAN's classes only).
    pub fn mirror_classes(&self, slot: u32) -> Result<()> {
        if self.shaper()? != Shaper::Htb {
            return Ok(());
        }
        let Some(classid) = shape_classid(slot) else {
            return Ok(());
        };
        let flags = self.flags(slot)?.load(Ordering::SeqCst);
        let pol = self.policies(slot, 1)?;
        let classes: Vec<shape::Class> = self
            .directions(&pol, slot)
            .into_iter()
            .filter(|d| flags & d.shape != 0)
            .map(|d| shape::Class {
                rate_bytes: d.read().rate_bytes,
                dev: d.dev,
                classid,
            })
            .collect();
        shape::set_classes(&classes)
    }

    /// Starts enforcing a data budget of `bytes` (the datapath drops once it is
    /// used up), or stops enforcing any with `None`.
    pub fn set_budget(&self, slot: u32, bytes: Option<i64>) -> Result<()> {
        let flags = self.flags(slot)?;
        match bytes {
            Some(b) => {
                self.budget_cell(slot)?.store(b, Ordering::SeqCst);
                flags.fetch_or(POLICY_QUOTA, Ordering::SeqCst);
            }
            None => {
                flags.fetch_and(!POLICY_QUOTA, Ordering::SeqCst);
            }
        }
        Ok(())
    }

    /// Adds `delta` bytes to the budget the datapath is spending (negative takes
    /// away); exact even while packets are being counted.
    pub fn add_budget(&self, slot: u32, delta: i64) -> Result<i64> {
        Ok(self.budget_cell(slot)?.fetch_add(delta, Ordering::SeqCst) + delta)
    }

    /// Lets the client through (or stops it), effective with the next packet.
    pub fn set_allowed(&mut self, mac: &MacKey, allowed: bool) -> Result<u32> {
        self.set_allowed_by(mac, allowed, false)
    }

    /// [`Maps::set_allowed`] for the operator (`session-agent allow`): the
    /// agent keeps a client it did not let through itself (`POLICY_MANUAL`)
    /// until it is blocked. Blocking clears it either way.
    pub fn set_allowed_by(&mut self, mac: &MacKey, allowed: bool, manual: bool) -> Result<u32> {
        let set = POLICY_ALLOWED | if manual { POLICY_MANUAL } else { 0 };
        loop {
            let slot = self.ensure_slot(mac)?;
            // The agent may be forgetting the client right now (only when not allowed).
            let Some(pos) = self.position(slot) else {
                continue;
            };
            let flags = cell!(self.clients, pos, flags: AtomicU32);
            if !allowed {
                flags.fetch_and(!(POLICY_ALLOWED | POLICY_MANUAL), Ordering::SeqCst);
                return Ok(slot);
            }
            if flags.fetch_or(set, Ordering::SeqCst) & POLICY_RETIRING == 0 {
                return Ok(slot);
            }
            // Allowed in a new entry instead.
            self.finish_forgetting(mac, slot, pos);
        }
    }

    /// Sets the client's speed limits (see [`Maps::set_rates`]), taking a slot
    /// for it if it has none. If the agent is forgetting the client meanwhile,
    /// that is finished and the limits go to a new entry, so they are not lost.
    pub fn limit(&mut self, mac: &MacKey, up: RateLimit, down: RateLimit) -> Result<u32> {
        loop {
            let slot = self.ensure_slot(mac)?;
            let Some(pos) = self.position(slot) else {
                continue;
            };
            let flags = cell!(self.clients, pos, flags: AtomicU32);
            if flags.load(Ordering::SeqCst) & POLICY_RETIRING == 0 {
                self.set_rates(slot, up, down)?;
                let still = self.key(pos).load(Ordering::SeqCst) == index_key(mac_word(mac), slot);
                if still && flags.load(Ordering::SeqCst) & POLICY_RETIRING == 0 {
                    return Ok(slot);
                }
            }
            self.finish_forgetting(mac, slot, pos);
        }
    }

    /// Makes the entry of `mac` at `pos`, which the agent is forgetting, a
    /// tombstone now (the agent frees it), so that the MAC can take a new one.
    fn finish_forgetting(&self, mac: &MacKey, slot: u32, pos: u32) {
        let _ = self.key(pos).compare_exchange(
            index_key(mac_word(mac), slot),
            index_retired(slot),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }
}

impl Direction {
    /// A copy of its token bucket.
    fn read(&self) -> TokenBucket {
        // SAFETY: `bucket` points into the policy mapping that `directions`
        // was given and its caller keeps alive while it uses the direction;
        // the copy is volatile as the datapath updates the bucket concurrently.
        unsafe { std::ptr::read_volatile(self.bucket) }
    }
}

/// One direction of a slot's speed limit.
struct Direction {
    /// `POLICY_SHAPE_*`: the HTB class enforces it.
    shape: u32,
    /// `POLICY_LIMIT_*`: the token bucket enforces it.
    limit: u32,
    bucket: *mut TokenBucket,
    /// The device the direction's HTB class is on.
    dev: String,
}

/// Publishes a token bucket of the client whose `POLICY_*` flags are
/// `flags`: its flag goes off before the bucket changes and on (for a limit)
/// once it is complete, so the datapath never uses a half-written bucket.
fn set_bucket(flags: &AtomicU32, d: &Direction, limit: RateLimit) {
    if limit.rate_bytes == 0 && flags.load(Ordering::SeqCst) & d.limit == 0 {
        // Unlimited already: the bucket is not read, so it is not written
        // either (nor its page brought into this process).
        return;
    }
    flags.fetch_and(!d.limit, Ordering::SeqCst);
    let b = d.bucket;
    // SAFETY: `bucket` points into the policy mapping that `directions` was
    // given and its caller keeps alive; the fields are aligned u64/i64 that
    // the datapath also only touches atomically.
    unsafe {
        AtomicU64::from_ptr(&raw mut (*b).rate_bytes).store(limit.rate_bytes, Ordering::SeqCst);
        AtomicU64::from_ptr(&raw mut (*b).burst_bytes).store(limit.burst_bytes, Ordering::SeqCst);
        AtomicI64::from_ptr(&raw mut (*b).tokens).store(limit.burst_bytes as i64, Ordering::SeqCst);
        AtomicU64::from_ptr(&raw mut (*b).last_ns).store(ktime_ns(), Ordering::SeqCst);
    }
    if limit.rate_bytes > 0 {
        flags.fetch_or(d.limit, Ordering::SeqCst);
    }
}

/// The limit a bucket holds.
fn limit_of(b: &TokenBucket) -> RateLimit {
    RateLimit {
        rate_bytes: b.rate_bytes,
        burst_bytes: b.burst_bytes,
    }
}

/// Writes the garden: new entries first, then stale ones are removed, so no
/// entry that stays is ever missing.
pub fn write_garden(ebpf: &mut Ebpf, entries: &[GardenEntry]) -> Result<()> {
    let map = ebpf.map_mut(MAP_GARDEN).ok_or_else(|| AgentError::Bpf {
        what: MAP_GARDEN.into(),
        message: "map missing from the object".into(),
    })?;
    let mut trie: LpmTrie<&mut MapData, GardenKey, GardenValue> =
        LpmTrie::try_from(map).map_err(|e| AgentError::bpf("opening the walled garden", e))?;
    // Entries with one key pass what either passes.
    let mut wanted: Vec<(u32, GardenKey, u32)> = Vec::new();
    for e in entries {
        let (len, key) = e.key();
        let flags = e.flags();
        match wanted.iter_mut().find(|(l, k, _)| *l == len && *k == key) {
            Some((_, _, f)) => {
                let protos = GARDEN_TCP | GARDEN_UDP;
                let proto = if *f & protos == 0 || flags & protos == 0 {
                    0
                } else {
                    (*f | flags) & protos
                };
                *f = proto | ((*f | flags) & GARDEN_GATEWAY);
            }
            None => wanted.push((len, key, flags)),
        }
    }
    for (len, key, flags) in &wanted {
        trie.insert(&Key::new(*len, *key), GardenValue { flags: *flags }, 0)
            .map_err(|e| AgentError::bpf("writing the walled garden", e))?;
    }
    let stale: Vec<Key<GardenKey>> = trie
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| {
            !wanted
                .iter()
                .any(|(l, w, _)| *l == k.prefix_len() && *w == k.data())
        })
        .collect();
    for k in stale {
        trie.remove(&k)
            .map_err(|e| AgentError::bpf("pruning the walled garden", e))?;
    }
    Ok(())
}
