//! [`Maps`]: one LAN's pinned maps and the client table every LAN shares,
//! opened, read and configured; the rest of its methods live by concept in
//! the sibling files.

use std::{
    path::{Path, PathBuf},
    sync::{atomic::Ordering, Arc},
};

use aya::{
    maps::{lpm_trie::Key, LpmTrie, MapData},
    Ebpf,
};
use session_common::*;

use super::{
    mmap::{self, cell, MmapArray},
    pins,
};
use crate::{
    error::{AgentError, Result},
    garden::GardenEntry,
};

pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/session-agent";

/// Default bucket depth, in milliseconds of traffic at the limit.
pub const DEFAULT_BURST_MS: u64 = 250;
/// Smallest bucket: one GSO aggregate must fit so that TCP is not starved.
pub const MIN_BURST_BYTES: u64 = 64 * 1024;

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

/// CLOCK_MONOTONIC_COARSE in nanoseconds, the clock of bpf_ktime_get_coarse_ns().
pub fn coarse_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of bpf_ktime_get_ns().
pub fn ktime_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

pub(super) fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The pinned maps of one interface and the client table every LAN shares,
/// opened from bpffs (works from any process).
pub struct Maps {
    pub iface: String,
    pub dir: PathBuf,
    /// Where the client table every LAN shares is pinned.
    pub shared: PathBuf,
    /// The client table (by MAC, see `session_common::index`). This and the
    /// other maps every LAN shares are mapped once for all LANs
    /// ([`Maps::open_beside`]): a mapping counts fully towards the process's
    /// resident memory, each time it is made.
    pub(super) clients: Arc<MmapArray<ClientEntry>>,
    /// Slot -> position in `clients`.
    pub(super) slots: Arc<MmapArray<u64>>,
    /// Slot -> garden and drop counters; mapped only while read (see [`MmapArray`]).
    pub(super) counters: Arc<MapData>,
    /// Slot -> token buckets; mapped only while read or written.
    pub(super) policy: Arc<MapData>,
    pub(super) alloc: Arc<MmapArray<SlotAllocator>>,
    /// Ring of freed slots (see [`SlotAllocator`]).
    pub(super) free: Arc<MmapArray<u64>>,
    /// A bit per slot the datapath sets when it counts usage (`None` in pins
    /// of a version before it, until the agent loads its own programs).
    pub(super) moved: Option<Arc<MmapArray<u64>>>,
    pub(super) shaper: MmapArray<ShaperConfig>,
    pub(super) lan: MmapArray<LanConfig>,
    /// The LAN's shared limits ([`GateBucket`]).
    pub(super) gate: MmapArray<TokenBucket>,
}

impl Maps {
    pub fn open(pin_root: &Path, iface: &str) -> Result<Self> {
        Self::open_beside(pin_root, iface, None)
    }

    /// `iface`'s maps; the maps every LAN shares are those of `beside` (another
    /// LAN's, under the same pin root) rather than mapped again.
    pub fn open_beside(pin_root: &Path, iface: &str, beside: Option<&Maps>) -> Result<Self> {
        let dir = pins::pin_dir(pin_root, iface);
        pins::check_pins(pin_root, iface)?;
        let shared = pins::clients_dir(pin_root);
        if !dir.join(MAP_LAN).exists() || !shared.join(MAP_CLIENTS).exists() {
            return Err(AgentError::NotAttached {
                iface: iface.into(),
                dir,
            });
        }
        let (clients, slots, counters, policy, alloc, free, moved) =
            match beside.filter(|m| m.shared == shared) {
                Some(m) => (
                    m.clients.clone(),
                    m.slots.clone(),
                    m.counters.clone(),
                    m.policy.clone(),
                    m.alloc.clone(),
                    m.free.clone(),
                    m.moved.clone(),
                ),
                None => (
                    Arc::new(MmapArray::open_pin(&shared, MAP_CLIENTS, INDEX_ENTRIES)?),
                    Arc::new(MmapArray::open_pin(&shared, MAP_SLOTS, MAX_CLIENTS)?),
                    Arc::new(mmap::open_pinned(&shared, MAP_COUNTERS)?),
                    Arc::new(mmap::open_pinned(&shared, MAP_POLICY)?),
                    Arc::new(MmapArray::open_pin(&shared, MAP_SLOT_ALLOC, 1)?),
                    Arc::new(MmapArray::open_pin(&shared, MAP_FREE_SLOTS, MAX_CLIENTS)?),
                    match shared.join(MAP_MOVED).exists() {
                        true => Some(Arc::new(MmapArray::open_pin(
                            &shared,
                            MAP_MOVED,
                            MOVED_WORDS,
                        )?)),
                        false => None,
                    },
                ),
            };
        Ok(Self {
            iface: iface.into(),
            clients,
            slots,
            counters,
            policy,
            alloc,
            free,
            moved,
            shaper: MmapArray::open_pin(&dir, MAP_SHAPER, 1)?,
            lan: MmapArray::open_pin(&dir, MAP_LAN, 1)?,
            gate: MmapArray::open_pin(&dir, MAP_GATE, GATE_BUCKETS)?,
            dir,
            shared,
        })
    }

    /// Interfaces that have pins under `pin_root`.
    pub fn attached_interfaces(pin_root: &Path) -> Result<Vec<String>> {
        let rd = match std::fs::read_dir(pin_root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(AgentError::NothingAttached(pin_root.into()))
            }
            Err(e) => {
                return Err(AgentError::file(
                    format!("reading {}", pin_root.display()),
                    e,
                ))
            }
        };
        let mut out: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name() != pins::CLIENTS_DIR && e.path().join(MAP_LAN).exists())
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
    /// version ([`TABLE_LAYOUT`]); keeps an existing one. Fails only when the
    /// system has no randomness to give.
    pub fn ensure_epoch(&self) -> Result<u64> {
        loop {
            let candidate = getrandom::u64().map_err(|e| AgentError::Io {
                what: "drawing the client table's identity".into(),
                source: std::io::Error::other(e.to_string()),
            })?;
            // Zero means "fresh" to every other reader: draw again.
            if candidate != 0 {
                let cell = cell!(self.alloc, 0, epoch: AtomicU64);
                return match cell.compare_exchange(0, candidate, Ordering::SeqCst, Ordering::SeqCst)
                {
                    Ok(_) => {
                        cell!(self.alloc, 0, layout: AtomicU32)
                            .store(TABLE_LAYOUT, Ordering::SeqCst);
                        Ok(candidate)
                    }
                    Err(existing) => Ok(existing),
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

    /// The agent attached the LAN and configured it ([`LAN_CONFIGURED`]).
    pub fn configured(&self) -> bool {
        self.lan().flags & LAN_CONFIGURED != 0
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

    /// Tells the datapath the portal's ports (those it has room for).
    pub fn set_portal_ports(&self, ports: &[u16]) {
        let mut cfg = self.lan();
        cfg.portal_ports = [0; LAN_PORTAL_PORTS];
        for (slot, port) in cfg.portal_ports.iter_mut().zip(ports) {
            *slot = *port;
        }
        self.set_lan(&cfg);
    }

    /// Sets the rate and depth of the LAN's shared limits (0 = unlimited); the
    /// tokens the datapath holds stay.
    pub fn set_gate(&self, limits: &[(GateBucket, u64, u64)]) {
        for &(b, rate, burst) in limits {
            cell!(self.gate, b as u32, burst_bytes: AtomicU64).store(burst, Ordering::Relaxed);
            cell!(self.gate, b as u32, rate_bytes: AtomicU64).store(rate, Ordering::Relaxed);
        }
    }

    /// The LAN's shared limits as the datapath holds them.
    pub fn gate(&self) -> [TokenBucket; GATE_BUCKETS as usize] {
        std::array::from_fn(|i| self.gate.get(i as u32))
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
                *f = proto | ((*f | flags) & (GARDEN_GATEWAY | GARDEN_DNS));
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
