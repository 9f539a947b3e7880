//! The kernel datapath: attaching it, and reading and steering its pinned maps.

pub mod attach;
pub mod bpffs;
pub mod mmap;
pub mod shape;
pub mod testrun;

use std::{
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering},
};

use aya::{
    maps::{lpm_trie::Key, HashMap, LpmTrie, Map, MapData},
    Ebpf,
};
use serde::Serialize;
use session_common::*;

use crate::{
    error::{AgentError, Result},
    garden::GardenEntry,
};
use mmap::MmapArray;
use shape::Shaper;

/// Insert only if the key is absent (BPF_NOEXIST).
const BPF_NOEXIST: u64 = 1;

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

/// CLOCK_MONOTONIC in nanoseconds, the clock of bpf_ktime_get_ns().
pub fn ktime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
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
    pub quota_packets: u64,
}

/// The pinned maps of one interface, opened from bpffs (works from any process).
pub struct Maps {
    pub iface: String,
    pub dir: PathBuf,
    counters: MmapArray<ClientCounters>,
    policy: MmapArray<ClientPolicy>,
    alloc: MmapArray<SlotAllocator>,
    /// Absent in pins made before shaping existed (then: policing).
    shaper: Option<MmapArray<ShaperConfig>>,
    clients: HashMap<MapData, MacKey, u32>,
}

impl Maps {
    pub fn open(pin_root: &Path, iface: &str) -> Result<Self> {
        let dir = attach::pin_dir(pin_root, iface);
        if !dir.join(MAP_CLIENTS).exists() {
            return Err(AgentError::NotAttached {
                iface: iface.into(),
                dir,
            });
        }
        let open = |name: &str| {
            MapData::from_pin(dir.join(name)).map_err(|e| {
                AgentError::bpf(
                    format!("opening pinned map {}", dir.join(name).display()),
                    e,
                )
            })
        };
        let counters_map = open(MAP_COUNTERS)?;
        let policy_map = open(MAP_POLICY)?;
        let alloc_map = open(MAP_SLOT_ALLOC)?;
        let counters = MmapArray::map(counters_map.fd().as_fd(), MAX_CLIENTS, MAP_COUNTERS)?;
        let policy = MmapArray::map(policy_map.fd().as_fd(), MAX_CLIENTS, MAP_POLICY)?;
        let alloc = MmapArray::map(alloc_map.fd().as_fd(), 1, MAP_SLOT_ALLOC)?;
        let clients = HashMap::try_from(Map::HashMap(open(MAP_CLIENTS)?))
            .map_err(|e| AgentError::bpf("opening the client map", e))?;
        let shaper = if dir.join(MAP_SHAPER).exists() {
            let m = open(MAP_SHAPER)?;
            Some(MmapArray::map(m.fd().as_fd(), 1, MAP_SHAPER)?)
        } else {
            None
        };
        Ok(Self {
            iface: iface.into(),
            dir,
            counters,
            policy,
            alloc,
            shaper,
            clients,
        })
    }

    /// How this LAN's speed limits are enforced, as the agent last set it up.
    pub fn shaper(&self) -> Shaper {
        match &self.shaper {
            Some(s) => Shaper::from_mode(
                unsafe { AtomicU32::from_ptr(&raw mut (*s.entry(0)).mode) }.load(Ordering::SeqCst),
            ),
            None => Shaper::Police,
        }
    }

    /// Switches the LAN to `mode` (called by the agent once the devices are
    /// ready for it: for `Htb`, after [`shape::setup`], with the IFB's index).
    /// Speed limits already set move to the new mode: HTB classes are made
    /// (again) from the rates kept in the policy, or the token buckets take
    /// over from the classes.
    pub fn set_shaper(&self, mode: Shaper, ifb_ifindex: u32) -> Result<()> {
        let Some(s) = &self.shaper else {
            return match mode {
                Shaper::Police => Ok(()),
                Shaper::Htb => Err(AgentError::IncompatiblePins {
                    iface: self.iface.clone(),
                    dir: self.dir.clone(),
                    reason: format!("no {MAP_SHAPER} map"),
                }),
            };
        };
        let cfg = s.entry(0);
        unsafe { AtomicU32::from_ptr(&raw mut (*cfg).ifb_ifindex) }
            .store(ifb_ifindex, Ordering::SeqCst);
        unsafe { AtomicU32::from_ptr(&raw mut (*cfg).mode) }.store(mode.mode(), Ordering::SeqCst);
        let mut classes = Vec::new();
        let mut to_flag = Vec::new();
        for slot in 0..self.slots_used() {
            let p = self.policy.get(slot);
            match mode {
                Shaper::Htb => {
                    for (flag, b, dev) in self.directions(slot) {
                        let rate = unsafe { std::ptr::read_volatile(&raw const (*b).rate_bytes) };
                        if let Some(classid) = shape_classid(slot).filter(|_| rate > 0) {
                            classes.push(shape::Class {
                                dev,
                                classid,
                                rate_bytes: rate,
                            });
                            to_flag.push((slot, flag));
                        }
                    }
                }
                Shaper::Police => {
                    if p.flags & (POLICY_SHAPE_UP | POLICY_SHAPE_DOWN) != 0 {
                        let pp = self.policy.entry(slot);
                        unsafe {
                            set_bucket(&raw mut (*pp).up, limit_of(&p.up));
                            set_bucket(&raw mut (*pp).down, limit_of(&p.down));
                        }
                        self.flags(slot)
                            .fetch_and(!(POLICY_SHAPE_UP | POLICY_SHAPE_DOWN), Ordering::SeqCst);
                    }
                }
            }
        }
        // Classes first: a flag sends packets to its class at once.
        shape::set_classes(&classes)?;
        for (slot, flag) in to_flag {
            self.flags(slot).fetch_or(flag, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Per direction of `slot`: its shaping flag, its bucket and the device its class is on.
    fn directions(&self, slot: u32) -> [(u32, *mut TokenBucket, String); 2] {
        let p = self.policy.entry(slot);
        unsafe {
            [
                (
                    POLICY_SHAPE_UP,
                    &raw mut (*p).up,
                    shape::ifb_name(&self.iface),
                ),
                (POLICY_SHAPE_DOWN, &raw mut (*p).down, self.iface.clone()),
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
            .filter(|e| e.path().join(MAP_CLIENTS).exists())
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
        unsafe { AtomicU64::from_ptr(&raw mut (*self.alloc.entry(0)).epoch) }.load(Ordering::SeqCst)
    }

    /// Gives freshly created maps a random identity; keeps an existing one.
    pub fn ensure_epoch(&self) -> u64 {
        let mut r = [0u8; 8];
        loop {
            let n = unsafe { libc::getrandom(r.as_mut_ptr().cast(), r.len(), 0) };
            let candidate = u64::from_ne_bytes(r);
            if n == 8 && candidate != 0 {
                let cell = unsafe { AtomicU64::from_ptr(&raw mut (*self.alloc.entry(0)).epoch) };
                return match cell.compare_exchange(0, candidate, Ordering::SeqCst, Ordering::SeqCst)
                {
                    Ok(_) => candidate,
                    Err(existing) => existing,
                };
            }
        }
    }

    /// Slots handed out so far.
    pub fn slots_used(&self) -> u32 {
        self.alloc.get(0).next.min(MAX_CLIENTS)
    }

    /// The counters and policy of every client, read from shared memory (no syscalls).
    pub fn snapshot(&self) -> Vec<ClientRow> {
        (0..self.slots_used())
            .filter_map(|slot| {
                let c = self.counters.get(slot);
                (!c.mac.is_zero()).then(|| self.row(slot, &c))
            })
            .collect()
    }

    fn row(&self, slot: u32, c: &ClientCounters) -> ClientRow {
        let p = self.policy.get(slot);
        ClientRow {
            lan: self.iface.clone(),
            mac: c.mac.to_string(),
            slot,
            allowed: p.flags & POLICY_ALLOWED != 0,
            up_bytes: c.up_bytes,
            up_packets: c.up_packets,
            down_bytes: c.down_bytes,
            down_packets: c.down_packets,
            garden_bytes: c.garden_bytes,
            garden_packets: c.garden_packets,
            blocked_bytes: c.blocked_bytes,
            blocked_packets: c.blocked_packets,
            malformed_packets: c.malformed_packets,
            ratelimit_packets: c.ratelimit_packets,
            quota_packets: c.quota_packets,
        }
    }

    pub fn slot_of(&self, mac: &MacKey) -> Option<u32> {
        self.clients.get(mac, 0).ok()
    }

    /// The client's slot, taking a new one (as the datapath would) if it has none yet.
    pub fn ensure_slot(&mut self, mac: &MacKey) -> Result<u32> {
        if let Some(slot) = self.slot_of(mac) {
            return Ok(slot);
        }
        let next = unsafe { AtomicU32::from_ptr(&raw mut (*self.alloc.entry(0)).next) };
        if next.load(Ordering::Relaxed) >= MAX_CLIENTS {
            return Err(AgentError::TableFull {
                iface: self.iface.clone(),
                max: MAX_CLIENTS,
            });
        }
        let slot = next.fetch_add(1, Ordering::SeqCst);
        if slot >= MAX_CLIENTS {
            return Err(AgentError::TableFull {
                iface: self.iface.clone(),
                max: MAX_CLIENTS,
            });
        }
        unsafe { (*self.counters.entry(slot)).mac = *mac };
        match self.clients.insert(mac, slot, BPF_NOEXIST) {
            Ok(()) => Ok(slot),
            Err(e) => {
                // Lost a race with the datapath: use its slot, release the name of ours.
                unsafe { (*self.counters.entry(slot)).mac = MacKey::default() };
                self.slot_of(mac)
                    .ok_or_else(|| AgentError::bpf(format!("adding client {mac}"), e))
            }
        }
    }

    /// Direct access to the counter array, for pollers that read every slot.
    pub fn counters_array(&self) -> &MmapArray<ClientCounters> {
        &self.counters
    }

    fn flags(&self, slot: u32) -> &AtomicU32 {
        unsafe { AtomicU32::from_ptr(&raw mut (*self.policy.entry(slot)).flags) }
    }

    /// A copy of the slot's counters.
    pub fn counters(&self, slot: u32) -> ClientCounters {
        self.counters.get(slot)
    }

    /// Up plus down bytes of the slot: the client's usage meter.
    pub fn usage_bytes(&self, slot: u32) -> u64 {
        let c = self.counters.entry(slot);
        unsafe {
            std::ptr::read_volatile(&raw const (*c).up_bytes)
                + std::ptr::read_volatile(&raw const (*c).down_bytes)
        }
    }

    /// A copy of the slot's policy.
    pub fn policy(&self, slot: u32) -> ClientPolicy {
        self.policy.get(slot)
    }

    /// Sets both speed limits: token buckets (which start full), or in HTB
    /// mode the slot's classes (the rates are kept in the buckets too, unused).
    pub fn set_rates(&self, slot: u32, up: RateLimit, down: RateLimit) -> Result<()> {
        let htb = self.shaper() == Shaper::Htb;
        for ((flag, b, dev), limit) in self.directions(slot).into_iter().zip([up, down]) {
            let shaped = self.flags(slot).load(Ordering::SeqCst) & flag != 0;
            match shape_classid(slot).filter(|_| htb && limit.rate_bytes > 0) {
                Some(id) => {
                    let same = unsafe {
                        std::ptr::read_volatile(&raw const (*b).rate_bytes) == limit.rate_bytes
                            && std::ptr::read_volatile(&raw const (*b).burst_bytes)
                                == limit.burst_bytes
                    };
                    if shaped && same {
                        continue;
                    }
                    shape::set_class(&shape::Class {
                        dev,
                        classid: id,
                        rate_bytes: limit.rate_bytes,
                    })?;
                    unsafe { set_bucket(b, limit) };
                    self.flags(slot).fetch_or(flag, Ordering::SeqCst);
                }
                None => {
                    unsafe { set_bucket(b, limit) };
                    self.flags(slot).fetch_and(!flag, Ordering::SeqCst);
                    if shaped {
                        if let Some(id) = shape_classid(slot) {
                            shape::del_class(&dev, id)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts enforcing a data budget of `bytes` (the datapath drops once it is
    /// used up), or stops enforcing any with `None`.
    pub fn set_budget(&self, slot: u32, bytes: Option<i64>) {
        let p = self.policy.entry(slot);
        match bytes {
            Some(b) => {
                unsafe { AtomicI64::from_ptr(&raw mut (*p).budget_bytes) }
                    .store(b, Ordering::SeqCst);
                self.flags(slot).fetch_or(POLICY_QUOTA, Ordering::SeqCst);
            }
            None => {
                self.flags(slot).fetch_and(!POLICY_QUOTA, Ordering::SeqCst);
            }
        }
    }

    /// Adds `delta` bytes to the budget the datapath is spending (negative takes
    /// away); exact even while packets are being counted.
    pub fn add_budget(&self, slot: u32, delta: i64) -> i64 {
        let p = self.policy.entry(slot);
        unsafe { AtomicI64::from_ptr(&raw mut (*p).budget_bytes) }
            .fetch_add(delta, Ordering::SeqCst)
            + delta
    }

    /// Lets the client through (or stops it), effective with the next packet.
    pub fn set_allowed(&mut self, mac: &MacKey, allowed: bool) -> Result<u32> {
        let slot = self.ensure_slot(mac)?;
        if allowed {
            self.flags(slot).fetch_or(POLICY_ALLOWED, Ordering::SeqCst);
        } else {
            self.flags(slot)
                .fetch_and(!POLICY_ALLOWED, Ordering::SeqCst);
        }
        Ok(slot)
    }
}

/// Publishes a bucket: depth and tokens first, the rate last, because the
/// datapath reads the rate to decide whether the bucket applies at all.
///
/// # Safety
/// `b` points into the mmap-ed policy array.
unsafe fn set_bucket(b: *mut TokenBucket, limit: RateLimit) {
    let rate = unsafe { AtomicU64::from_ptr(&raw mut (*b).rate_bytes) };
    if limit.rate_bytes == 0 {
        rate.store(0, Ordering::SeqCst);
        return;
    }
    unsafe {
        AtomicU64::from_ptr(&raw mut (*b).burst_bytes).store(limit.burst_bytes, Ordering::SeqCst);
        AtomicI64::from_ptr(&raw mut (*b).tokens).store(limit.burst_bytes as i64, Ordering::SeqCst);
        AtomicU64::from_ptr(&raw mut (*b).last_ns).store(ktime_ns(), Ordering::SeqCst);
    }
    rate.store(limit.rate_bytes, Ordering::SeqCst);
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
    let map = ebpf.map_mut(MAP_GARDEN).expect("GARDEN map in object");
    let mut trie: LpmTrie<&mut MapData, GardenKey, GardenValue> =
        LpmTrie::try_from(map).map_err(|e| AgentError::bpf("opening the walled garden", e))?;
    let wanted: Vec<(u32, GardenKey)> = entries.iter().map(|e| e.key()).collect();
    for (len, key) in &wanted {
        trie.insert(&Key::new(*len, *key), GardenValue { flags: 0 }, 0)
            .map_err(|e| AgentError::bpf("writing the walled garden", e))?;
    }
    let stale: Vec<Key<GardenKey>> = trie
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| {
            !wanted
                .iter()
                .any(|(l, w)| *l == k.prefix_len() && *w == k.data())
        })
        .collect();
    for k in stale {
        trie.remove(&k)
            .map_err(|e| AgentError::bpf("pruning the walled garden", e))?;
    }
    Ok(())
}
