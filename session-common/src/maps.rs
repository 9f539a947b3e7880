//! Map names, sizes and value layouts.
//!
//! Layout of the per-client state: `CLIENTS` is a hash table of one cache line
//! per client ([`ClientEntry`], see [`crate::index`]) holding its MAC and slot
//! and everything a forwarded packet of an allowed client touches. `COUNTERS`
//! (garden and drops) and `POLICY` (token buckets) are indexed by slot and read
//! only off that path; `SLOTS` gives a slot's position in `CLIENTS`. All are
//! mmap-able arrays, so userspace reads every client's counters and writes
//! policies without one syscall per entry.

use crate::MacKey;

/// Most clients one interface tracks (slots are never reused while pinned).
pub const MAX_CLIENTS: u32 = 65_536;

/// Hash table of [`ClientEntry`] by MAC ([`crate::index`]); mmap-able.
pub const MAP_CLIENTS: &str = "CLIENTS";
/// Slot -> its position in `CLIENTS` (`u64`); mmap-able.
pub const MAP_SLOTS: &str = "SLOTS";
/// Slot -> [`ClientCounters`]; mmap-able; the kernel adds atomically.
pub const MAP_COUNTERS: &str = "COUNTERS";
/// Slot -> [`ClientPolicy`]; mmap-able; written by userspace.
pub const MAP_POLICY: &str = "POLICY";
/// One [`SlotAllocator`]; mmap-able; both sides take slots with an atomic add.
pub const MAP_SLOT_ALLOC: &str = "SLOT_ALLOC";
/// Ring of slots freed by forgetting idle clients (u64 each, see [`SlotAllocator`]); mmap-able.
pub const MAP_FREE_SLOTS: &str = "FREE_SLOTS";
/// Walled garden: LPM trie of [`GardenKey`] -> [`GardenValue`].
pub const MAP_GARDEN: &str = "GARDEN";
/// Ring buffer of [`ClientEvent`].
pub const MAP_EVENTS: &str = "EVENTS";
/// Per-CPU array of global counters, indexed by `STAT_*`.
pub const MAP_STATS: &str = "STATS";
/// One [`ShaperConfig`]; mmap-able; written by the agent when it attaches.
pub const MAP_SHAPER: &str = "SHAPER";

/// Names of the programs in the object.
pub const PROG_TC_INGRESS: &str = "lan_tc_ingress";
pub const PROG_TC_EGRESS: &str = "lan_tc_egress";
pub const PROG_XDP_INGRESS: &str = "lan_xdp_ingress";

/// Maximum entries of the walled-garden trie.
pub const MAX_GARDEN: u32 = 1024;
/// Size of the event ring buffer in bytes.
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// Global statistics (index into [`MAP_STATS`]).
pub const STAT_TABLE_FULL: u32 = 0;
pub const STAT_MALFORMED: u32 = 1;
pub const STAT_EVENTS_LOST: u32 = 2;
pub const STAT_COUNT: u32 = 4;

/// What the datapath keeps of one client on its fast path, in one cache line:
/// who it is, what userspace allows it, and its usage.
///
/// Bytes are IP-layer bytes: the IPv4 total length, or the IPv6 payload length
/// plus 40, of each packet as the kernel handles it (a GRO/GSO aggregate counts
/// as one packet of its whole length). Counters are only ever added to, with
/// atomic adds.
#[repr(C, align(64))]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct ClientEntry {
    /// MAC and slot ([`crate::index_key`]); zero while the entry is free.
    pub key: u64,
    /// `POLICY_*` bits, written by userspace.
    pub flags: u32,
    pub _pad: u32,
    /// Remaining data budget in bytes when `POLICY_QUOTA` is set; the datapath
    /// subtracts every packet atomically and drops once it reaches zero.
    pub budget_bytes: i64,
    pub up_packets: u64,
    pub up_bytes: u64,
    pub down_packets: u64,
    pub down_bytes: u64,
    pub _reserved: u64,
}

/// Per-client counters off the fast path, added to atomically (bytes as in
/// [`ClientEntry`]).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct ClientCounters {
    /// Walled-garden traffic of a client that is not allowed (both directions).
    pub garden_packets: u64,
    pub garden_bytes: u64,
    /// Dropped because the client is not allowed (both directions).
    pub blocked_packets: u64,
    pub blocked_bytes: u64,
    /// Dropped because the frame was not a valid IP packet.
    pub malformed_packets: u64,
    /// Dropped by the speed limit (both directions).
    pub ratelimit_packets: u64,
    pub ratelimit_bytes: u64,
    /// Dropped because the data budget was used up (both directions).
    pub quota_packets: u64,
    pub quota_bytes: u64,
    pub _reserved: u64,
}

/// `ClientEntry::flags`: the client may use the network.
pub const POLICY_ALLOWED: u32 = 1;
/// `ClientEntry::flags`: `budget_bytes` is enforced.
pub const POLICY_QUOTA: u32 = 2;
/// `ClientEntry::flags`: upload is shaped by the client's HTB class on the
/// LAN's IFB device instead of the `up` bucket.
pub const POLICY_SHAPE_UP: u32 = 4;
/// `ClientEntry::flags`: download is shaped by the client's HTB class on the
/// LAN instead of the `down` bucket.
pub const POLICY_SHAPE_DOWN: u32 = 8;
/// `ClientEntry::flags`: the `up` token bucket in `POLICY` applies.
pub const POLICY_LIMIT_UP: u32 = 16;
/// `ClientEntry::flags`: the `down` token bucket in `POLICY` applies.
pub const POLICY_LIMIT_DOWN: u32 = 32;
/// `ClientEntry::flags`: the agent is forgetting this idle client (set only
/// while it is not allowed); whoever allows it meanwhile finishes the
/// forgetting and allows the MAC in a new entry instead.
pub const POLICY_RETIRING: u32 = 64;

/// `ShaperConfig::mode`: speed limits are token-bucket policers in the datapath.
pub const SHAPER_POLICE: u32 = 0;
/// `ShaperConfig::mode`: speed limits are HTB classes the datapath picks.
pub const SHAPER_HTB: u32 = 1;

/// Major number (handle) of the HTB qdiscs that shape clients.
pub const SHAPE_HTB_MAJOR: u32 = 0x5a;

/// The HTB class of a slot: `5a:<slot + 1>`, as `skb->priority` selects it.
/// The last slot has no class (minor numbers are 16 bits and 0 is the qdisc).
pub const fn shape_classid(slot: u32) -> Option<u32> {
    if slot >= 0xffff {
        return None;
    }
    Some((SHAPE_HTB_MAJOR << 16) | (slot + 1))
}

/// How speed limits are enforced on one LAN; the agent writes it on attach so
/// every process (and the datapath) finds the mode in the pins.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct ShaperConfig {
    /// `SHAPER_*`.
    pub mode: u32,
    /// Index of the IFB device whose HTB shapes upload; 0 = none.
    pub ifb_ifindex: u32,
    pub _reserved: [u64; 2],
}

/// A token bucket for one direction. `rate_bytes` of zero means unlimited.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    /// Refill rate in bytes per second; 0 = unlimited.
    pub rate_bytes: u64,
    /// Bucket depth in bytes.
    pub burst_bytes: u64,
    /// Tokens (bytes) in the bucket at `last_ns`; shared by all CPUs.
    pub tokens: i64,
    /// bpf_ktime_get_ns() of the last refill.
    pub last_ns: u64,
}

/// A client's speed limits, written by userspace; a bucket is consulted only
/// while its `POLICY_LIMIT_*` flag is set in the client's [`ClientEntry`].
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct ClientPolicy {
    pub up: TokenBucket,
    pub down: TokenBucket,
}

/// Shared slot allocator.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct SlotAllocator {
    /// Next never-used slot; may run past `MAX_CLIENTS` (then the table is full).
    pub next: u32,
    pub _pad: u32,
    /// Random, non-zero identity of this set of maps, set by the agent when it
    /// creates them: counters of a different epoch started again from zero.
    /// It also seeds the index's hash, so no client is indexed while it is 0.
    pub epoch: u64,
    /// Slots of forgotten clients, ready for new ones, are in `FREE_SLOTS` at
    /// positions `free_head..free_tail` (modulo `MAX_CLIENTS`). Only the agent
    /// adds (writes the slot, then moves the tail); takers move the head with a
    /// compare-and-swap. Both only grow, so a stale head never wins.
    pub free_head: u64,
    pub free_tail: u64,
}

/// Walled-garden trie data: `port` (network order, 0 = any port) then the
/// address (IPv4 as ::ffff:a.b.c.d). The trie prefix length counts the 16 port
/// bits plus the address prefix, so each entry is a CIDR for one port or for
/// every port; the datapath looks up the exact port, then port 0.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct GardenKey {
    pub port: [u8; 2],
    pub addr: [u8; 16],
    pub _pad: [u8; 2],
}

impl GardenKey {
    /// Prefix length of a full key (port and whole address).
    pub const FULL_PREFIX: u32 = 16 + 128;
    /// Prefix length of an entry for an IPv6 CIDR of `bits` bits.
    pub const fn prefix_v6(bits: u8) -> u32 {
        16 + bits as u32
    }
    /// Prefix length of an entry for an IPv4 CIDR of `bits` bits (mapped into ::ffff:0:0/96).
    pub const fn prefix_v4(bits: u8) -> u32 {
        16 + 96 + bits as u32
    }
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct GardenValue {
    /// Reserved for protocol selection; 0 = TCP, UDP and (for any-port entries) everything.
    pub flags: u32,
}

/// `ClientEvent::kind`: a MAC was seen for the first time and given a slot.
pub const EVENT_NEW_CLIENT: u32 = 1;
/// `ClientEvent::kind`: the client's data budget reached zero.
pub const EVENT_QUOTA_EXHAUSTED: u32 = 2;
/// `ClientEvent::kind`: a new MAC could not get a slot.
pub const EVENT_TABLE_FULL: u32 = 3;

/// A record in the [`MAP_EVENTS`] ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct ClientEvent {
    pub kind: u32,
    pub slot: u32,
    pub mac: MacKey,
    pub _pad: [u8; 2],
    /// bpf_ktime_get_ns() when it happened.
    pub ktime_ns: u64,
}
