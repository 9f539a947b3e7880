//! Map names, sizes and value layouts.
//!
//! Layout of the per-client state: `CLIENTS` is a hash table of one cache line
//! per client ([`ClientEntry`], see [`crate::index`]) holding its MAC and slot
//! and everything a forwarded packet of an allowed client touches. `COUNTERS`
//! (garden and drops) and `POLICY` (token buckets) are indexed by slot and read
//! only off that path; `SLOTS` gives a slot's position in `CLIENTS`. All are
//! mmap-able arrays, so userspace reads every client's counters and writes
//! policies without one syscall per entry.

use crate::MacAddr;

/// Most clients one interface tracks.
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
/// One bit per slot (`u64` words, slot `s` is bit `s % 64` of word `s / 64`),
/// set by the datapath when it counts a client's usage; the agent takes and
/// clears the words to read only the clients that moved; mmap-able.
pub const MAP_MOVED: &str = "MOVED";
/// Words of [`MAP_MOVED`].
pub const MOVED_WORDS: u32 = MAX_CLIENTS / 64;
/// Walled garden: LPM trie of [`GardenKey`] -> [`GardenValue`].
pub const MAP_GARDEN: &str = "GARDEN";
/// Ring buffer of [`ClientEvent`].
pub const MAP_EVENTS: &str = "EVENTS";
/// Per-CPU array of global counters, indexed by `STAT_*`.
pub const MAP_STATS: &str = "STATS";
/// One [`ShaperConfig`]; mmap-able; written by the agent when it attaches.
pub const MAP_SHAPER: &str = "SHAPER";
/// Walled-garden addresses learnt from DNS answers for garden names: hash of
/// [`GardenHostKey`] -> [`GardenHostValue`] (per LAN).
pub const MAP_GARDEN_HOSTS: &str = "GARDEN_HOSTS";
/// DNS answers to clients that have not paid, held until the agent has put
/// their garden addresses in place: ring of [`HeldFrame`].
pub const MAP_DNS_HELD: &str = "DNS_HELD";
/// One [`LanConfig`]; mmap-able; written by the agent when it attaches.
pub const MAP_LAN: &str = "LAN";
/// Address bindings: hash of [`AddrKey`] -> [`Binding`] (anti-spoofing).
pub const MAP_BINDINGS: &str = "BINDINGS";
/// The address bindings of clients that have not paid: an LRU hash of half
/// [`MAX_BINDINGS`] entries, so that MACs that have not paid can never take
/// the room of paying clients' bindings (in [`MAP_BINDINGS`]).
pub const MAP_UNPAID_BINDINGS: &str = "UNPAID_BINDINGS";
/// Fragments of IPv4 datagrams whose first fragment the walled garden let
/// through, per LAN ([`FragKey`] -> when).
pub const MAP_GARDEN_FRAGS: &str = "GARDEN_FRAGS";
/// Datagrams [`MAP_GARDEN_FRAGS`] remembers (LRU).
pub const MAX_GARDEN_FRAGS: u32 = 4096;
/// How long the later fragments of a datagram may follow its first.
pub const GARDEN_FRAG_NS: u64 = 5_000_000_000;
/// Per LAN: the limits that hold for many clients together ([`GateBucket`]).
pub const MAP_GATE: &str = "GATE";

/// Names of the programs in the object.
pub const PROG_TC_INGRESS: &str = "lan_tc_ingress";
pub const PROG_TC_EGRESS: &str = "lan_tc_egress";
pub const PROG_XDP_INGRESS: &str = "lan_xdp_ingress";

/// Maximum entries of the walled-garden trie.
pub const MAX_GARDEN: u32 = 1024;
/// Most learnt garden addresses per LAN (the agent's limit is at most this).
pub const MAX_GARDEN_HOSTS: u32 = 65_536;
/// Size of the ring of held DNS answers.
pub const DNS_HELD_BYTES: u32 = 512 * 1024;
/// Largest frame held (a power of two); longer answers pass unheld.
pub const DNS_HELD_MAX: u32 = 2048;
/// Size of the event ring buffer in bytes.
pub const EVENTS_BYTES: u32 = 256 * 1024;

/// Most address bindings of one interface.
pub const MAX_BINDINGS: u32 = 131_072;
/// Most addresses one client may hold at once: a client that claims more is
/// dropped (counted as spoofing), so no client can fill the binding table.
pub const MAX_ADDRS_PER_CLIENT: u64 = 16;
/// Most addresses a client that has not paid may hold.
pub const MAX_ADDRS_UNPAID: u64 = 4;

/// Global statistics (index into [`MAP_STATS`]), per CPU.
pub const STAT_TABLE_FULL: u32 = 0;
/// Dropped: an inconsistent IP header, or an IP unicast packet in a frame to a group MAC.
pub const STAT_MALFORMED: u32 = 1;
pub const STAT_EVENTS_LOST: u32 = 2;
/// Dropped: a frame from a group (multicast or broadcast) source MAC.
pub const STAT_GROUP_SRC: u32 = 3;
/// Dropped: an ethertype the datapath does not pass, or more VLAN tags than it reads.
pub const STAT_UNKNOWN: u32 = 4;
/// Dropped: a source address (or ARP/ND claim) bound to another MAC, or a
/// link-layer address in ARP/ND other than the frame's own.
pub const STAT_SPOOF: u32 = 5;
/// Dropped: a destination that is never routed (0.0.0.0/8, 127.0.0.0/8,
/// 240.0.0.0/4, ::, ::1, IPv4-mapped or -compatible IPv6, another host's
/// link-local), or a source no host sends from to a unicast destination.
pub const STAT_ODD_DST: u32 = 6;
/// Dropped: the binding table (or the client's share of it) is full.
pub const STAT_BINDINGS_FULL: u32 = 7;
/// Dropped uncounted: a client's frame to another station's MAC (the kernel drops it too).
pub const STAT_OTHER_HOST: u32 = 8;
/// Dropped: walled-garden traffic over the garden rate limit.
pub const STAT_GARDEN_RATELIMIT: u32 = 9;
/// Dropped: a frame of a MAC that has no slot (the table full, or new clients
/// over the admission rate) other than ARP, ND and DHCP with the gateway, or
/// over the limit all such frames share.
pub const STAT_SLOTLESS: u32 = 10;
/// Dropped: walled-garden traffic over the limit all unpaid clients share.
pub const STAT_GARDEN_TOTAL: u32 = 11;
/// A new MAC found no slot because new clients came faster than the admission rate.
pub const STAT_ADMISSION_LIMITED: u32 = 12;
/// Dropped: an IPv4 packet from a client with a source route option (LSRR, SSRR).
pub const STAT_SOURCE_ROUTE: u32 = 13;
pub const STAT_COUNT: u32 = 16;

/// Names of the `STAT_*` counters that count dropped frames, for metrics.
pub const STAT_DROP_REASONS: [(u32, &str); 11] = [
    (STAT_MALFORMED, "malformed"),
    (STAT_GROUP_SRC, "group_source"),
    (STAT_UNKNOWN, "unknown_protocol"),
    (STAT_SPOOF, "spoof"),
    (STAT_ODD_DST, "odd_destination"),
    (STAT_BINDINGS_FULL, "bindings_full"),
    (STAT_OTHER_HOST, "other_host"),
    (STAT_GARDEN_RATELIMIT, "garden_ratelimit"),
    (STAT_SLOTLESS, "slotless"),
    (STAT_GARDEN_TOTAL, "garden_total"),
    (STAT_SOURCE_ROUTE, "source_route"),
];

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
    /// The IPv4 source address last found bound to this client (as in the
    /// packet, 0 = none): packets from it skip the binding lookup. The
    /// datapath clears it every quarter of the binding TTL
    /// (`ClientCounters::remembered_ns`), so each is looked up again.
    pub ip4: u32,
    /// Remaining data budget in bytes when `POLICY_QUOTA` is set; the datapath
    /// subtracts every packet atomically and drops once it reaches zero.
    pub budget_bytes: i64,
    pub up_packets: u64,
    pub up_bytes: u64,
    pub down_packets: u64,
    pub down_bytes: u64,
    /// [`addr_tag`] of the IPv6 source address last found bound to this
    /// client (0 = none), as `ip4` is for IPv4.
    pub ip6_tag: u64,
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
    /// Dropped as spoofing: a source address or ARP/ND claim bound to another
    /// MAC, a link-layer address other than the frame's own, or too many addresses.
    pub spoof_packets: u64,
    /// Dropped: an ethertype or tag stack the datapath does not pass, or a
    /// destination that is never routed.
    pub unknown_packets: u64,
    /// Walled-garden traffic dropped by the garden rate limit (both directions).
    pub garden_ratelimit_packets: u64,
    pub garden_ratelimit_bytes: u64,
    /// Addresses bound to this client: added to by the datapath when it
    /// binds one, counted again by the agent's sweep of the bindings (which
    /// leaves out those unused for the TTL).
    pub bound_addrs: u64,
    /// The IPv4 address the client holds (in its first 32 bits, as in
    /// packets; 0 = none) and the LAN it holds it on (`LanConfig::lan_id`
    /// from bit [`BOUND_V4_LAN_SHIFT`]): with `LAN_ONE_ADDRESS` a paying
    /// client sends from no other on that LAN while this one is bound to it
    /// and in use within the TTL. [`BOUND_V4_REPORTED`] is set once a second
    /// one was reported.
    pub bound_v4: u64,
    /// `bpf_ktime_get_coarse_ns()` when the datapath last took back the
    /// client's remembered addresses (`ClientEntry::ip4`, `ip6_tag`): a
    /// quarter of `LanConfig::bind_ttl_ms` later (at most
    /// [`REMEMBER_MAX_NS`]) it takes them back again, so each binding in use
    /// is stamped again within that time (0 = never).
    pub remembered_ns: u64,
}

/// Longest a client's entry remembers its addresses
/// (`ClientCounters::remembered_ns`): a quarter of the binding TTL, and at
/// most this (so that an address the gateway's DHCP server gave another MAC
/// is refused to the one before within it).
pub const REMEMBER_MAX_NS: u64 = 60_000_000_000;

/// `ClientCounters::bound_v4`: a second IPv4 address was reported
/// (`EventKind::MacConflict`) since the client's remembered addresses were
/// last taken back (`ClientCounters::remembered_ns`).
pub const BOUND_V4_REPORTED: u64 = 1 << 32;
/// Where `ClientCounters::bound_v4` keeps the LAN (24 bits of its `lan_id`).
pub const BOUND_V4_LAN_SHIFT: u32 = 40;

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
/// `ClientEntry::flags`: allowed by the operator (`session-agent allow`), not
/// by a session: the agent leaves it so until `block`.
pub const POLICY_MANUAL: u32 = 128;

/// How a LAN enforces speed limits ([`ShaperConfig::mode`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShaperMode {
    /// Token-bucket policers in the datapath.
    Police = 0,
    /// HTB classes the datapath picks.
    Htb = 1,
}

impl TryFrom<u32> for ShaperMode {
    /// The unknown code (pins of another version).
    type Error = u32;

    fn try_from(code: u32) -> Result<Self, u32> {
        match code {
            0 => Ok(Self::Police),
            1 => Ok(Self::Htb),
            other => Err(other),
        }
    }
}

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
    /// A [`ShaperMode`].
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

/// The limits of the [`MAP_GATE`] array, one bucket each, shared by every
/// client of the LAN: userspace writes `rate_bytes` and `burst_bytes` (0 =
/// unlimited), the datapath keeps `tokens` and `last_ns`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateBucket {
    /// Frames of MACs that have no slot (ARP, ND, DHCP with the gateway), in
    /// packets: one token a frame.
    Slotless = 0,
    /// Walled-garden traffic of all unpaid clients together, up and down, in
    /// bytes (each packet at least the LAN's `garden_min_cost`); the
    /// gateway's DHCP and portal are not in it.
    GardenUp = 1,
    GardenDown = 2,
    /// New clients taking a slot, one token each.
    NewClients = 3,
}

/// Entries of [`MAP_GATE`].
pub const GATE_BUCKETS: u32 = 4;

/// A client's speed limits, written by userspace; a bucket is consulted only
/// while its `POLICY_LIMIT_*` flag is set in the client's [`ClientEntry`].
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct ClientPolicy {
    pub up: TokenBucket,
    pub down: TokenBucket,
    /// The walled-garden limit of a client that has not paid, per direction:
    /// `tokens` and `last_ns` only, the rate is the LAN's ([`LanConfig`]).
    pub garden_up: TokenBucket,
    pub garden_down: TokenBucket,
}

/// Version of the client table's layout: the shared maps' types and sizes and
/// the protocols over them (the index, the slot allocator, the free-slot ring,
/// the flags). Stored in [`SlotAllocator::layout`] when the table is created;
/// pins of another version are refused at attach. Bump it with any change to
/// them. Pins that hold 0 were made before the version was stored, with
/// layout 1.
pub const TABLE_LAYOUT: u32 = 1;

/// Shared slot allocator.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct SlotAllocator {
    /// Next never-used slot; may run past `MAX_CLIENTS` (then the table is full).
    pub next: u32,
    /// [`TABLE_LAYOUT`] of the agent that created the table.
    pub layout: u32,
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

/// Walled-garden trie data: the address family (4 or 6), `port` (network
/// order, 0 = any port), then the address (IPv4 in its first 4 bytes). The
/// trie prefix length counts the 8 family and 16 port bits plus the address
/// prefix, so each entry is a CIDR of one family for one port or for every
/// port, and no IPv6 address (IPv4-mapped ones included) matches an IPv4
/// entry. The datapath looks up the exact port, then port 0.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct GardenKey {
    pub family: u8,
    pub port: [u8; 2],
    pub addr: [u8; 16],
    pub _pad: u8,
}

impl GardenKey {
    /// Prefix length of a full key (family, port and whole address).
    pub const FULL_PREFIX: u32 = 24 + 128;
    /// Prefix length of an entry for an IPv6 CIDR of `bits` bits.
    pub const fn prefix_v6(bits: u8) -> u32 {
        24 + bits as u32
    }
    /// Prefix length of an entry for an IPv4 CIDR of `bits` bits.
    pub const fn prefix_v4(bits: u8) -> u32 {
        24 + bits as u32
    }
}

/// `GardenValue::flags`: the entry passes TCP (with neither protocol bit: TCP
/// and UDP for a port entry, every protocol for an any-port one).
pub const GARDEN_TCP: u32 = 1;
/// `GardenValue::flags`: the entry passes UDP.
pub const GARDEN_UDP: u32 = 2;
/// `GardenValue::flags`: one of the gateway's own services (DHCP, DNS, the
/// portal): the only garden that broadcast and multicast may reach.
pub const GARDEN_GATEWAY: u32 = 4;

/// `GardenValue::flags`: a DNS server clients that have not paid may use
/// (their TCP and UDP to port 53 reaches only such entries).
pub const GARDEN_DNS: u32 = 8;

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct GardenValue {
    /// `GARDEN_*` bits.
    pub flags: u32,
}

/// A learnt garden address: the family (4 or 6), the port (network order, 0 =
/// every port) and the address (IPv4 in its first 4 bytes).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq, Hash)]
pub struct GardenHostKey {
    pub family: u8,
    pub _pad: u8,
    pub port: [u8; 2],
    pub addr: [u8; 16],
}

/// A learnt garden address's state.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct GardenHostValue {
    /// bpf_ktime_get_coarse_ns() of the last packet to or from it (refreshed
    /// at most every [`GARDEN_HOST_STAMP_NS`]); 0: not used yet.
    pub last_used_ns: u64,
    pub _reserved: u64,
}

/// How stale a learnt address's `last_used_ns` may be before a packet
/// refreshes it (fewer writes to a shared cache line).
pub const GARDEN_HOST_STAMP_NS: u64 = 1_000_000_000;

/// A DNS answer held by the egress program: the whole frame, from the
/// Ethernet header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HeldFrame {
    /// Bytes of `frame` used.
    pub len: u32,
    /// The interface it was leaving by.
    pub ifindex: u32,
    /// bpf_ktime_get_ns() when it was held.
    pub held_ns: u64,
    pub frame: [u8; DNS_HELD_MAX as usize],
}

/// Most addresses of the gateway per family that [`LanConfig`] holds.
pub const LAN_MAX_ADDRS: usize = 16;

/// `LanConfig::flags`: bind client addresses to MACs and drop spoofed ones.
pub const LAN_ANTI_SPOOF: u32 = 1;
/// `LanConfig::flags`: a client that has not paid is sent to the portal: its
/// TCP to port 80 outside the garden goes to the agent's redirect responder
/// (assigned to the responder's socket, marked with `redirect_mark` so that
/// policy routing delivers it locally), its other TCP outside the garden is
/// answered with a reset. Only on TC ingress (XDP cannot assign sockets).
pub const LAN_PORTAL_REDIRECT: u32 = 2;
/// `LanConfig::flags`: DNS answers from garden DNS servers to a client that has
/// not paid are held ([`MAP_DNS_HELD`]) until the agent has learnt the garden
/// addresses in them and sends them on, marked with `dns_mark`.
pub const LAN_DNS_SNOOP: u32 = 4;
/// `LanConfig::flags`: a paying client has one IPv4 address at a time (see
/// `ClientCounters::bound_v4`); another is dropped as spoofing.
pub const LAN_ONE_ADDRESS: u32 = 8;
/// `LanConfig::flags`: the agent attached the LAN's programs and wrote this
/// configuration (until then the LAN's pins exist but serve nothing).
pub const LAN_CONFIGURED: u32 = 16;

/// What the datapath knows of its LAN, written by the agent on attach.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct LanConfig {
    /// `LAN_*` bits.
    pub flags: u32,
    /// Entries used in `v4` and `v6`.
    pub n_v4: u32,
    pub n_v6: u32,
    pub _pad: u16,
    /// The gateway's MAC on this LAN: a client's frame to another unicast MAC
    /// is not for the gateway (all zero: not checked).
    pub mac: [u8; 6],
    /// The gateway's own addresses (as in packets; this LAN's first, then its
    /// other interfaces' and their IPv4 broadcast addresses): traffic between
    /// a client and them does not cross the gateway, so it is walled-garden
    /// traffic, never usage.
    pub v4: [u32; LAN_MAX_ADDRS],
    pub v6: [[u32; 4]; LAN_MAX_ADDRS],
    /// With [`LAN_ANTI_SPOOF`]: an address binding unused for this many
    /// milliseconds is free (another MAC's claim takes it over); the agent
    /// removes such bindings from the table in its sweeps (0 = never free
    /// until removed).
    pub bind_ttl_ms: u32,
    /// Walled-garden limit per client and direction for clients that have not
    /// paid: bytes per second (0 = unlimited), bucket depth, and the least a
    /// packet costs (so small packets are limited to `rate / min_cost` per second).
    pub garden_rate_bytes: u64,
    pub garden_burst_bytes: u64,
    pub garden_min_cost: u64,
    /// One bit per gateway address ([`addr_filter_bit`]): an address whose
    /// bit is clear is none of the gateway's, without comparing it to each.
    pub addr_filter: u64,
    /// With [`LAN_PORTAL_REDIRECT`]: the mark of packets steered to the
    /// responder (policy routing delivers them locally) and of the replies the
    /// responder and the datapath send (the egress program passes them to a
    /// client that has not paid).
    pub redirect_mark: u32,
    /// The redirect responder's TCP port (host order), on the wildcard address.
    pub redirect_port: u16,
    pub _pad3: u16,
    /// With [`LAN_DNS_SNOOP`]: the mark of the held DNS answers the agent sends
    /// on (the egress program passes them without holding them again).
    pub dns_mark: u32,
    /// A number of this LAN's own (its interface index), written by the agent:
    /// one IPv4 address at a time holds per LAN (a device moves between LANs).
    pub lan_id: u32,
    /// The portal's TCP ports on the gateway (host order; 0 = none): a paying
    /// client's traffic with them is not usage.
    pub portal_ports: [u16; LAN_PORTAL_PORTS],
}

/// Most portal ports the datapath knows ([`LanConfig::portal_ports`]).
pub const LAN_PORTAL_PORTS: usize = 4;

/// The bit of [`LanConfig::addr_filter`] that stands for an address (IPv4 in
/// `a[0]`), as in packets.
#[inline(always)]
pub const fn addr_filter_bit(v6: bool, a: &[u32; 4]) -> u64 {
    let x = if v6 {
        (a[0] ^ a[1] ^ a[2] ^ a[3]) as u64
    } else {
        a[0] as u64
    };
    1 << (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58)
}

/// The key of [`MAP_BINDINGS`]: an address as in packets (IPv4 in `addr[0]`).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq, Hash)]
pub struct AddrKey {
    /// 4 or 6.
    pub family: u32,
    pub addr: [u32; 4],
}

/// An IPv4 datagram, for [`MAP_GARDEN_FRAGS`]: its addresses (as in
/// packets), protocol and identification.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: u32,
    pub dst: u32,
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Who owns an address ([`MAP_BINDINGS`]): the first MAC that claims it,
/// until the agent removes the binding after it went unused (or the gateway's
/// DHCP server hands the address to another MAC).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Binding {
    pub mac: MacAddr,
    pub _pad: [u8; 2],
    /// `bpf_ktime_get_coarse_ns()` when the datapath last looked the binding
    /// up for its owner (unused for `LanConfig::bind_ttl_ms` since: free).
    pub last_ns: u64,
}

/// A binding last stamped at `last_ns` has gone unused for the binding TTL
/// (`ttl_ms`, [`LanConfig::bind_ttl_ms`]; 0 = never) at `now` (both
/// `bpf_ktime_get_coarse_ns()`): its address is free.
#[inline(always)]
pub const fn binding_stale(last_ns: u64, now: u64, ttl_ms: u32) -> bool {
    ttl_ms != 0 && now.saturating_sub(last_ns) >= ttl_ms as u64 * 1_000_000
}

/// How long a client's entry remembers its addresses under the binding TTL
/// `ttl_ms` ([`ClientCounters::remembered_ns`]; 0: no TTL, for ever).
#[inline(always)]
pub const fn remember_ns(ttl_ms: u32) -> u64 {
    let quarter = ttl_ms as u64 * 1_000_000 / 4;
    if quarter < REMEMBER_MAX_NS {
        quarter
    } else {
        REMEMBER_MAX_NS
    }
}

/// A keyed 64-bit tag of an IPv6 address (never 0), for [`ClientEntry::ip6_tag`].
#[inline(always)]
pub const fn addr_tag(a: &[u32; 4], seed: u64) -> u64 {
    let hi = (a[0] as u64) | ((a[1] as u64) << 32);
    let lo = (a[2] as u64) | ((a[3] as u64) << 32);
    let t = mix64(mix64(hi ^ seed) ^ lo);
    if t == 0 {
        1
    } else {
        t
    }
}

/// The splitmix64 finaliser.
#[inline(always)]
pub const fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// What a [`ClientEvent`] reports (its `kind`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A MAC was seen for the first time and given a slot.
    NewClient = 1,
    /// The client's data budget reached zero.
    QuotaExhausted = 2,
    /// A new MAC could not get a slot.
    TableFull = 3,
    /// An address was bound to the client (`addr`).
    AddrBound = 4,
    /// The client claimed a second IPv4 address (`addr`) while it was still
    /// using another: two devices may share its MAC.
    MacConflict = 5,
}

impl EventKind {
    pub const ALL: [EventKind; 5] = [
        EventKind::NewClient,
        EventKind::QuotaExhausted,
        EventKind::TableFull,
        EventKind::AddrBound,
        EventKind::MacConflict,
    ];
}

impl TryFrom<u32> for EventKind {
    /// The unknown code.
    type Error = u32;

    fn try_from(code: u32) -> Result<Self, u32> {
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i] as u32 == code {
                return Ok(Self::ALL[i]);
            }
            i += 1;
        }
        Err(code)
    }
}

/// A record in the [`MAP_EVENTS`] ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct ClientEvent {
    /// An [`EventKind`] code.
    pub kind: u32,
    pub slot: u32,
    pub mac: MacAddr,
    pub _pad: [u8; 2],
    /// bpf_ktime_get_ns() when it happened.
    pub ktime_ns: u64,
    /// The address of address events (family 0 otherwise).
    pub addr: AddrKey,
    pub _pad2: u32,
}

impl ClientEvent {
    /// What it reports; the unknown code of a datapath newer than this reader.
    pub fn kind(&self) -> Result<EventKind, u32> {
        EventKind::try_from(self.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binding_is_free_once_unused_for_the_ttl_and_never_without_one() {
        let s = 1_000_000_000;
        assert!(!binding_stale(10 * s, 10 * s + 299_999_999, 300));
        assert!(binding_stale(10 * s, 10 * s + 300_000_000, 300));
        assert!(!binding_stale(0, u64::MAX, 0), "no TTL: never free");
        assert!(!binding_stale(20 * s, 10 * s, 300), "stamped after now");
    }

    #[test]
    fn remembered_addresses_are_looked_up_again_within_a_quarter_ttl_and_a_minute() {
        assert_eq!(remember_ns(400), 100_000_000);
        assert_eq!(
            remember_ns(300_000),
            REMEMBER_MAX_NS,
            "300 s: a minute, not 75 s"
        );
        assert_eq!(remember_ns(0), 0);
    }
}
