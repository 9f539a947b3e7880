//! session-agent datapath: per-client metering, walled garden and data budgets
//! on a hotspot's client-facing (LAN) interface.
//!
//! Upload is seen on LAN ingress (TC or XDP) and keyed by the source MAC;
//! download is seen on LAN egress (TC) and keyed by the destination MAC.
#![no_std]
#![no_main]
// The BPF target has atomic read-modify-write instructions but core does not
// expose them (no compare-and-swap in the target spec): `mem` uses the
// intrinsics. Where the old value is used, the ordering must be SeqCst: LLVM's
// BPF backend lowers a relaxed fetch-add to the non-fetching `lock add` and
// returns garbage.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod dns;
mod mem;
mod packet;
mod portal;
mod shape;

use aya_ebpf::{
    bindings::{xdp_action, BPF_ANY, BPF_NOEXIST, TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::{classifier, map, xdp},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::{info, warn};
use mem::{addr_bytes, at, coarse_ns, now_ns, Cells, LocalCells, Shared};
use packet::{
    link_local, link_multicast, nd_lla_ok, nd_target, parse_arp, parse_eth, parse_ip, Dir, Eth,
    IpInfo, Packet, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, ETH_P_PAE,
};
use session_common::*;

/// BPF_F_MMAPABLE: lets userspace mmap the array and read or write it without syscalls.
pub(crate) const BPF_F_MMAPABLE: u32 = 1 << 10;
/// BPF_F_NO_PREALLOC: a hash map's entries take memory only once added.
const BPF_F_NO_PREALLOC: u32 = 1;

#[map(name = "CLIENTS")]
static CLIENTS: Array<ClientEntry> = Array::pinned(INDEX_ENTRIES, BPF_F_MMAPABLE);

#[map(name = "SLOTS")]
static SLOTS: Array<u64> = Array::pinned(MAX_CLIENTS, BPF_F_MMAPABLE);

#[map(name = "COUNTERS")]
static COUNTERS: Array<ClientCounters> = Array::pinned(MAX_CLIENTS, BPF_F_MMAPABLE);

#[map(name = "MOVED")]
static MOVED: Array<u64> = Array::pinned(MOVED_WORDS, BPF_F_MMAPABLE);

#[map(name = "POLICY")]
static POLICY: Array<ClientPolicy> = Array::pinned(MAX_CLIENTS, BPF_F_MMAPABLE);

#[map(name = "SLOT_ALLOC")]
static SLOT_ALLOC: Array<SlotAllocator> = Array::pinned(1, BPF_F_MMAPABLE);

#[map(name = "FREE_SLOTS")]
static FREE_SLOTS: Array<u64> = Array::pinned(MAX_CLIENTS, BPF_F_MMAPABLE);

#[map(name = "GARDEN")]
static GARDEN: LpmTrie<GardenKey, GardenValue> = LpmTrie::pinned(MAX_GARDEN, 0);

#[map(name = "GARDEN_HOSTS")]
static GARDEN_HOSTS: HashMap<GardenHostKey, GardenHostValue> =
    HashMap::pinned(MAX_GARDEN_HOSTS, BPF_F_NO_PREALLOC);

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

#[map(name = "LAN")]
pub(crate) static LAN: Array<LanConfig> = Array::pinned(1, BPF_F_MMAPABLE);

#[map(name = "BINDINGS")]
static BINDINGS: HashMap<AddrKey, Binding> = HashMap::pinned(MAX_BINDINGS, 0);

#[map(name = "UNPAID_BINDINGS")]
static UNPAID_BINDINGS: LruHashMap<AddrKey, Binding> = LruHashMap::pinned(MAX_BINDINGS / 2, 0);

#[map(name = "GARDEN_FRAGS")]
static GARDEN_FRAGS: LruHashMap<FragKey, u64> = LruHashMap::pinned(MAX_GARDEN_FRAGS, 0);

#[map(name = "GATE")]
static GATE: Array<TokenBucket> = Array::pinned(GATE_BUCKETS, BPF_F_MMAPABLE);

#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::pinned(STAT_COUNT, 0);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Drop,
    /// Counted; the slot's HTB class enforces its speed (see `shape`).
    Shape(u32),
    /// A client that has not paid, to port 80 outside the garden: to the
    /// redirect responder (see `portal`).
    Portal,
    /// A client that has not paid, other TCP outside the garden: reset.
    Reset,
    /// A client that has not paid, within the garden, counted: on egress a
    /// DNS answer is held for the agent (see `dns`), anything else passes.
    Garden,
}

#[classifier]
pub fn lan_tc_ingress(ctx: TcContext) -> i32 {
    if shape::reinjected(&ctx) {
        return TC_ACT_UNSPEC;
    }
    match handle(&ctx, Dir::Up) {
        Verdict::Shape(slot) => shape::upload(&ctx, slot),
        // Only the verdict crosses over: the portal's code reads the
        // headers again, so that the verifier walks it once per verdict, not
        // once per way through `handle` (Linux 6.1's limit is near).
        Verdict::Portal => portal::steer(&ctx),
        Verdict::Reset => portal::reset(&ctx),
        v => tc_verdict(v),
    }
}

#[classifier]
pub fn lan_tc_egress(ctx: TcContext) -> i32 {
    match handle(&ctx, Dir::Down) {
        Verdict::Shape(slot) => shape::download(&ctx, slot),
        Verdict::Garden => dns::hold_answer(&ctx),
        v => tc_verdict(v),
    }
}

#[xdp]
pub fn lan_xdp_ingress(ctx: XdpContext) -> u32 {
    // Shaping needs TC (the agent refuses it with XDP): a shaped client passes.
    match handle(&ctx, Dir::Up) {
        Verdict::Pass | Verdict::Shape(_) | Verdict::Garden => xdp_action::XDP_PASS,
        // The agent refuses the portal redirect with XDP.
        Verdict::Drop | Verdict::Portal | Verdict::Reset => xdp_action::XDP_DROP,
    }
}

/// Returns at once: the baseline of program-cost measurements.
#[classifier]
pub fn bench_noop(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[inline(always)]
fn tc_verdict(v: Verdict) -> i32 {
    match v {
        // UNSPEC lets any later program on the hook decide; at the end it passes.
        Verdict::Pass | Verdict::Shape(_) | Verdict::Garden => TC_ACT_UNSPEC,
        Verdict::Drop | Verdict::Portal | Verdict::Reset => TC_ACT_SHOT,
    }
}

/// Why a frame is dropped, for the client's and the global counters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Drop {
    /// Not in the walled garden of a client that has not paid.
    Blocked,
    /// Inconsistent IP header, group MAC around IP unicast, group source address.
    Malformed,
    /// An ethertype, tag stack or destination the datapath does not pass.
    Unknown(u32),
    /// A source address or ARP/ND claim bound to another MAC, a foreign
    /// link-layer address, or more addresses than a client may hold.
    Spoof(u32),
}

#[inline(always)]
fn handle<P: Packet>(p: &P, dir: Dir) -> Verdict {
    let Some(cfg) = LAN.cell(0) else {
        return Verdict::Drop;
    };
    if dir == Dir::Down {
        // A DNS answer held and counted before, sent on by the agent (see `dns`).
        let mark = at!(cfg, dns_mark).get();
        if mark != 0 && p.mark() == mark {
            return Verdict::Pass;
        }
    }
    if dir == Dir::Up && p.meta_vid() != 0 {
        // Tagged for a VLAN: not this LAN's (the kernel drops it too, or hands
        // it to the VLAN's own interface).
        stat_add(STAT_UNKNOWN);
        return Verdict::Drop;
    }
    let Some(eth) = parse_eth(p) else {
        // A runt frame or more VLAN tags than the kernel and we take off.
        stat_add(STAT_UNKNOWN);
        return Verdict::Drop;
    };
    let mac = match dir {
        Dir::Up => {
            if eth.src.is_group() || eth.src.addr == [0; 6] {
                // No station sends from a group MAC or the all-zero one.
                stat_add(STAT_GROUP_SRC);
                return Verdict::Drop;
            }
            let gw = at!(cfg, mac).get();
            if !eth.dst.is_group() && gw != [0; 6] && eth.dst.addr != gw {
                // For another station: the kernel drops it too; not the client's usage.
                stat_add(STAT_OTHER_HOST);
                return Verdict::Drop;
            }
            eth.src
        }
        Dir::Down => eth.dst,
    };
    // The client's entry, looked up once: one walk of the table per packet
    // (older verifiers run out of room for more).
    let seed = index_seed();
    let probe = match seed {
        seed if seed != 0 && !mac.is_group() => find(mac_word(&mac), seed),
        _ => Walk::FULL,
    };
    match eth.proto {
        ETH_P_IP | ETH_P_IPV6 => {}
        ETH_P_ARP => {
            return match dir {
                Dir::Up => arp_up(p, cfg, &eth, &mac, probe, seed),
                // The gateway's own ARP.
                Dir::Down => Verdict::Pass,
            };
        }
        ETH_P_PAE => return Verdict::Pass,
        // The gateway's own LLDP and the like.
        _ if dir == Dir::Down => return Verdict::Pass,
        _ => {
            attribute(&probe, Drop::Unknown(STAT_UNKNOWN));
            return Verdict::Drop;
        }
    }
    let Some(ip) = parse_ip(p, eth.proto, eth.l3) else {
        attribute(&probe, Drop::Malformed);
        return Verdict::Drop;
    };
    if dir == Dir::Up && ip.source_route {
        // The gateway would forward it on to the route's next hop, past any
        // judgement of its first destination, if its sysctl allows.
        attribute(&probe, Drop::Unknown(STAT_SOURCE_ROUTE));
        return Verdict::Drop;
    }
    let to_group = ip.dst_group();
    if eth.dst.is_group() {
        if !to_group {
            // IP unicast in a group frame: a neighbour entry pointing at a group
            // MAC (downloads) or a frame for every station (uploads).
            attribute(&probe, Drop::Malformed);
            return Verdict::Drop;
        }
        if dir == Dir::Down {
            // The gateway's own broadcast and multicast (DHCP, RA).
            return Verdict::Pass;
        }
    }
    if ip.src_group() {
        // No host sends from a group address (the kernel drops such packets).
        attribute(&probe, Drop::Malformed);
        return Verdict::Drop;
    }
    // The gateway's own frames to a MAC bring it in at once (it sends only
    // to neighbours whose ARP, ND or DHCP came in, and answers DHCP).
    let Some((pos, slot)) = client_slot(p, &mac, probe, seed, dir == Dir::Down, false) else {
        return slotless(cfg, &ip, dir);
    };
    let Some(st) = CLIENTS.cell(pos) else {
        return Verdict::Drop;
    };
    let len = ip.len as u64;
    let flags = at!(st, flags).get();
    if let Err(d) = judge_addresses(cfg, st, slot, flags, &mac, &ip, dir) {
        count_drop(slot, d, len);
        return Verdict::Drop;
    }
    let far = match dir {
        Dir::Up => &ip.dst,
        Dir::Down => &ip.src,
    };
    let mut paying = flags & POLICY_ALLOWED != 0;
    if paying && !to_group {
        // Across the gateway, or with the gateway's relaying services (its
        // DNS resolver, anything but ND, DHCP and the portal): usage. Once
        // the data budget is spent those are the garden's, as before payment.
        let with_gateway = gateway_addr(cfg, ip.v6, far);
        let usage = !with_gateway || !bootstrap(cfg, &ip, dir);
        if usage && with_gateway && cut_off(st, flags) {
            paying = false;
        } else if usage {
            return metered(p, st, slot, flags, &mac, len, dir);
        }
    }
    // Traffic that does not cross the gateway (a paying client's ND, DHCP and
    // portal, broadcast and multicast), or of a client that has not paid.
    let Some(c) = COUNTERS.cell(slot) else {
        return Verdict::Drop;
    };
    let mut verdict = Verdict::Pass;
    if !paying {
        verdict = Verdict::Garden;
        // Whether the flow leaves the gateway or is relayed by it (the limit
        // all unpaid clients share holds it), or is the gateway's own portal.
        let shared = match garden(p, cfg, &ip, dir, &mac, to_group, Some((st, slot))) {
            Ok(f) => {
                // Datagrams to the client only: its own are small (queries)
                // and the gateway's ingress program stays within older
                // verifiers' limits.
                if dir == Dir::Down && ip.frag_first {
                    let _ = GARDEN_FRAGS.insert(&frag_key(&ip), &coarse_ns(), 0);
                }
                f & GARDEN_GATEWAY == 0 || f & GARDEN_DNS != 0
            }
            // A later fragment of a datagram whose first the garden passed.
            Err(_) if dir == Dir::Down && ip.frag_later && frag_known(&ip) => true,
            Err(d) => match to_portal(p, cfg, &ip, dir, to_group) {
                Some(v) => {
                    verdict = v;
                    false
                }
                None => {
                    count_drop(slot, d, len);
                    return Verdict::Drop;
                }
            },
        };
        if !garden_admits(cfg, slot, dir, len, shared) {
            at!(c, garden_ratelimit_packets).add(1);
            at!(c, garden_ratelimit_bytes).add(len);
            return Verdict::Drop;
        }
    } else if is_nd(&ip) {
        // A paying client's ND obeys the same rules.
        if let Err(d) = nd(p, cfg, &ip, dir, &mac, Some((st, slot))) {
            count_drop(slot, d, len);
            return Verdict::Drop;
        }
    }
    at!(c, garden_packets).add(1);
    at!(c, garden_bytes).add(len);
    verdict
}

/// A client that has not paid, outside the garden, with the portal redirect
/// on (`LAN_PORTAL_REDIRECT`): its TCP to port 80 goes to the responder and its
/// other TCP is reset; the replies of both (marked) pass to it. `None`: dropped.
#[inline(always)]
fn to_portal<P: Packet>(
    p: &P,
    cfg: Shared<'_, LanConfig>,
    ip: &IpInfo,
    dir: Dir,
    to_group: bool,
) -> Option<Verdict> {
    let flags = at!(cfg, flags).get();
    if flags & LAN_PORTAL_REDIRECT == 0 || to_group || ip.proto != packet::IPPROTO_TCP {
        return None;
    }
    match dir {
        Dir::Down => {
            let mark = at!(cfg, redirect_mark).get();
            (mark != 0 && p.mark() == mark).then_some(Verdict::Pass)
        }
        Dir::Up => {
            // Fragments are not answered; a GSO aggregate (a long request
            // coalesced) goes to the responder, but is never reset.
            if ip.sport == 0 || ip.dport == 0 {
                return None;
            }
            if ip.dport == 80 {
                Some(Verdict::Portal)
            } else if p.segs() > 1 {
                None
            } else {
                Some(Verdict::Reset)
            }
        }
    }
}

/// A paying client's traffic across the gateway: speed limit, data budget, usage.
#[inline(always)]
fn metered<P: Packet>(
    p: &P,
    st: Shared<'_, ClientEntry>,
    slot: u32,
    flags: u32,
    mac: &MacAddr,
    len: u64,
    dir: Dir,
) -> Verdict {
    let (shape, limit) = match dir {
        Dir::Up => (POLICY_SHAPE_UP, POLICY_LIMIT_UP),
        Dir::Down => (POLICY_SHAPE_DOWN, POLICY_LIMIT_DOWN),
    };
    let shaped = flags & shape != 0;
    if !shaped && flags & limit != 0 {
        if let Some(pol) = POLICY.cell(slot) {
            let bucket = match dir {
                Dir::Up => at!(pol, up),
                Dir::Down => at!(pol, down),
            };
            let rate = at!(bucket, rate_bytes).get();
            let burst = at!(bucket, burst_bytes).get();
            if !bucket_admits(bucket, rate, burst, len) {
                if let Some(c) = COUNTERS.cell(slot) {
                    at!(c, ratelimit_packets).add(1);
                    at!(c, ratelimit_bytes).add(len);
                }
                return Verdict::Drop;
            }
        }
    }
    if flags & POLICY_QUOTA != 0 {
        match budget_take(p, at!(st, budget_bytes), len) {
            Budget::Refused => {
                if let Some(c) = COUNTERS.cell(slot) {
                    at!(c, quota_packets).add(1);
                    at!(c, quota_bytes).add(len);
                }
                return Verdict::Drop;
            }
            // This packet spent the last of the budget: tell userspace at once.
            Budget::Exhausted => emit(EventKind::QuotaExhausted, slot, mac, None),
            Budget::Taken => {}
        }
    }
    match dir {
        Dir::Up => {
            at!(st, up_packets).add(1);
            at!(st, up_bytes).add(len);
        }
        Dir::Down => {
            at!(st, down_packets).add(1);
            at!(st, down_bytes).add(len);
        }
    }
    mark_moved(slot);
    if shaped {
        return Verdict::Shape(slot);
    }
    Verdict::Pass
}

/// Tells the agent that the client in `slot` moved traffic since it last
/// looked: its bit in `MOVED`, set after the counters (the agent clears the
/// bit before it reads them), and only when clear, so that the word's line
/// stays shared between the CPUs until the agent takes it.
#[inline(always)]
fn mark_moved(slot: u32) {
    if let Some(word) = MOVED.cell(slot / 64) {
        let bit = 1u64 << (slot % 64);
        if word.get() & bit == 0 {
            word.or(bit);
        }
    }
}

/// Counts a drop of a packet of `len` bytes to the client in `slot`, and
/// globally by reason.
#[inline(always)]
fn count_drop(slot: u32, d: Drop, len: u64) {
    let stat = match d {
        Drop::Blocked => None,
        Drop::Malformed => Some(STAT_MALFORMED),
        Drop::Unknown(s) | Drop::Spoof(s) => Some(s),
    };
    if let Some(s) = stat {
        stat_add(s);
    }
    let Some(c) = COUNTERS.cell(slot) else {
        return;
    };
    match d {
        Drop::Blocked => {
            at!(c, blocked_packets).add(1);
            at!(c, blocked_bytes).add(len);
        }
        Drop::Malformed => at!(c, malformed_packets).add(1),
        Drop::Unknown(_) => at!(c, unknown_packets).add(1),
        Drop::Spoof(_) => at!(c, spoof_packets).add(1),
    }
}

/// Counts a drop globally, and to the client if it is known (`probe`):
/// garbage must not take slots (a group MAC is never known).
#[inline(always)]
fn attribute(probe: &Walk, d: Drop) {
    count_drop(probe.slot, d, 0);
}

/// One of the gateway's own addresses on this LAN.
///
/// Every slot is compared and the count consulted only on a match: a loop
/// that stops at the count is one whose bound older verifiers (Linux 6.1)
/// cannot see.
#[inline(always)]
fn gateway_addr(cfg: Shared<'_, LanConfig>, v6: bool, a: &[u32; 4]) -> bool {
    // Most packets' far end is not the gateway: one bit says so.
    let filter = at!(cfg, addr_filter).get();
    if filter & addr_filter_bit(v6, a) == 0 {
        return false;
    }
    if v6 {
        for i in 0..LAN_MAX_ADDRS {
            if at!(cfg, v6[i]).get() == *a {
                return (i as u32) < at!(cfg, n_v6).get();
            }
        }
    } else {
        for i in 0..LAN_MAX_ADDRS {
            if at!(cfg, v4[i]).get() == a[0] {
                return (i as u32) < at!(cfg, n_v4).get();
            }
        }
    }
    false
}

/// Addresses a client may not use: odd destinations, and (with anti-spoofing)
/// sources bound to another MAC. A download to an address bound to another
/// MAC is refused too, so a stale or forged neighbour entry charges nobody.
#[inline(always)]
fn judge_addresses(
    cfg: Shared<'_, LanConfig>,
    st: Shared<'_, ClientEntry>,
    slot: u32,
    flags: u32,
    mac: &MacAddr,
    ip: &IpInfo,
    dir: Dir,
) -> Result<(), Drop> {
    if dir == Dir::Up
        && (ip.dst_odd()
            || (ip.src_odd() && !ip.dst_group())
            || (ip.v6 && link_local(&ip.dst) && !gateway_addr(cfg, true, &ip.dst)))
    {
        return Err(Drop::Unknown(STAT_ODD_DST));
    }
    if at!(cfg, flags).get() & LAN_ANTI_SPOOF == 0 {
        return Ok(());
    }
    match dir {
        Dir::Up if !ip.src_unspecified() => {
            if gateway_addr(cfg, ip.v6, &ip.src) {
                return Err(Drop::Spoof(STAT_SPOOF));
            }
            bind(cfg, st, slot, flags, mac, ip.key(ip.src), true)
        }
        Dir::Up => Ok(()),
        Dir::Down if dhcp_answer(cfg, ip) => {
            // The gateway's DHCP server gives the address to this MAC: it is
            // its now, whoever used it before.
            let key = ip.key(ip.dst);
            let b = Binding {
                mac: *mac,
                _pad: [0; 2],
                last_ns: coarse_ns(),
            };
            if BINDINGS.insert(&key, &b, BPF_ANY as u64).is_err() {
                return Err(Drop::Spoof(STAT_BINDINGS_FULL));
            }
            // A claim of the address by a MAC that has not paid is void now.
            let _ = UNPAID_BINDINGS.remove(&key);
            remember(st, &key, 0);
            if let Some(c) = COUNTERS.cell(slot) {
                // The address this client holds now on this LAN (one at a time, in `bind`).
                let lan = at!(cfg, lan_id).get() as u64 & 0xff_ffff;
                at!(c, bound_v4).set(key.addr[0] as u64 | lan << BOUND_V4_LAN_SHIFT);
            }
            Ok(())
        }
        Dir::Down => bind(cfg, st, slot, flags, mac, ip.key(ip.dst), false),
    }
}

/// A unicast answer of the gateway's own DHCP server (from one of its
/// addresses, UDP 67 to 68) to the address it offers or acknowledges.
#[inline(always)]
fn dhcp_answer(cfg: Shared<'_, LanConfig>, ip: &IpInfo) -> bool {
    !ip.v6
        && ip.proto == packet::IPPROTO_UDP
        && ip.sport == 67
        && ip.dport == 68
        && ip.dst[0] != 0
        && !ip.dst_group()
        && gateway_addr(cfg, false, &ip.src)
}

/// Checks that `key` is bound to `mac`; with `claim`, binds it if no MAC has
/// it yet (first claim wins). Addresses found bound to the client are kept
/// in its entry, so its next packets skip the lookup; every quarter of the
/// binding TTL (a minute at most) they are taken back
/// (`ClientCounters::remembered_ns`), so a binding in use is stamped again
/// within that time.
///
/// Clients that have not paid (`flags`) claim into `UNPAID_BINDINGS`, an LRU
/// half the size of `BINDINGS`, at most `MAX_ADDRS_UNPAID` each; paying
/// clients into `BINDINGS`, where their claim also takes an address from a
/// client that has not paid. A binding unused for the TTL is free
/// ([`stale`]): the next claim takes it, whoever it was bound to. With
/// `LAN_ONE_ADDRESS`, a paying client sends from one IPv4 address only
/// (`ClientCounters::bound_v4`) while it holds it.
#[inline(always)]
fn bind(
    cfg: Shared<'_, LanConfig>,
    st: Shared<'_, ClientEntry>,
    slot: u32,
    flags: u32,
    mac: &MacAddr,
    key: AddrKey,
    claim: bool,
) -> Result<(), Drop> {
    let v6 = key.family == 6;
    let tag = if v6 {
        addr_tag(&key.addr, index_seed())
    } else {
        0
    };
    let Some(c) = COUNTERS.cell(slot) else {
        return Err(Drop::Spoof(STAT_BINDINGS_FULL));
    };
    let now = coarse_ns();
    let bound_v4 = at!(c, bound_v4);
    let ttl_ms = at!(cfg, bind_ttl_ms).get();
    let remembered = at!(c, remembered_ns);
    if ttl_ms != 0 && now.saturating_sub(remembered.get()) >= remember_ns(ttl_ms) {
        // A quarter TTL on (a minute at most): look each address up (and
        // stamp it) again, and report a second IPv4 address again.
        remembered.set(now);
        at!(st, ip4).set(0);
        at!(st, ip6_tag).set(0);
        let held = bound_v4.get();
        if held & BOUND_V4_REPORTED != 0 {
            bound_v4.set(held & !BOUND_V4_REPORTED);
        }
    } else if if v6 {
        at!(st, ip6_tag).get() == tag
    } else {
        at!(st, ip4).get() == key.addr[0]
    } {
        return Ok(());
    }
    let paying = flags & POLICY_ALLOWED != 0;
    let lan = (at!(cfg, lan_id).get() as u64 & 0xff_ffff) << BOUND_V4_LAN_SHIFT;
    // The IPv4 address it held on this LAN is no longer its own: this one is.
    let mut take_v4 = false;
    if !v6 && claim {
        let held = bound_v4.get();
        let one = at!(cfg, flags).get() & LAN_ONE_ADDRESS != 0;
        // (On another LAN the device moved: its address there is its own.)
        if paying
            && one
            && held as u32 != 0
            && held as u32 != key.addr[0]
            && held >> BOUND_V4_LAN_SHIFT == lan >> BOUND_V4_LAN_SHIFT
        {
            if !holds(cfg, mac, held as u32, now) {
                take_v4 = true;
            } else {
                // A second IPv4 address while the first is bound: another
                // device on this MAC. Reported once a quarter TTL (a minute at most).
                if held & BOUND_V4_REPORTED == 0 {
                    bound_v4.set(held | BOUND_V4_REPORTED);
                    emit(EventKind::MacConflict, slot, mac, Some(&key));
                }
                return Err(Drop::Spoof(STAT_SPOOF));
            }
        }
    }
    if let Some(b) = BINDINGS.cell(&key) {
        if at!(b, mac).get() == *mac {
            at!(b, last_ns).set(now);
            if take_v4 {
                bound_v4.set(key.addr[0] as u64 | lan);
            }
            remember(st, &key, tag);
            return Ok(());
        }
        if !stale(cfg, b, now) {
            return Err(Drop::Spoof(STAT_SPOOF));
        }
        if !claim {
            return Ok(());
        }
        // Unused for the TTL: free, and this claim takes it.
        let _ = BINDINGS.remove(&key);
    }
    if let Some(b) = UNPAID_BINDINGS.cell(&key) {
        let own = at!(b, mac).get() == *mac;
        if own && !paying {
            at!(b, last_ns).set(now);
            if take_v4 {
                bound_v4.set(key.addr[0] as u64 | lan);
            }
            remember(st, &key, tag);
            return Ok(());
        }
        // Its own, a paying client's claim, or unused for the TTL: the
        // address may move (to `BINDINGS` for a paying client).
        if !(own || (paying && claim) || stale(cfg, b, now)) {
            return Err(Drop::Spoof(STAT_SPOOF));
        }
        let _ = UNPAID_BINDINGS.remove(&key);
    }
    if !claim {
        return Ok(());
    }
    let held = at!(c, bound_addrs);
    let cap = if paying {
        MAX_ADDRS_PER_CLIENT
    } else {
        MAX_ADDRS_UNPAID
    };
    if held.get() >= cap {
        return Err(Drop::Spoof(STAT_BINDINGS_FULL));
    }
    let b = Binding {
        mac: *mac,
        _pad: [0; 2],
        last_ns: now,
    };
    let inserted = if paying {
        BINDINGS.insert(&key, &b, BPF_NOEXIST as u64)
    } else {
        UNPAID_BINDINGS.insert(&key, &b, BPF_NOEXIST as u64)
    };
    if inserted.is_err() {
        // Another CPU bound it first, or the table is full.
        let owner = if paying {
            BINDINGS.cell(&key)
        } else {
            UNPAID_BINDINGS.cell(&key)
        };
        return match owner {
            Some(b) if at!(b, mac).get() == *mac => Ok(()),
            Some(_) => Err(Drop::Spoof(STAT_SPOOF)),
            None => Err(Drop::Spoof(STAT_BINDINGS_FULL)),
        };
    }
    held.add(1);
    if !v6 {
        let held = bound_v4.get();
        if held as u32 == 0 || held >> BOUND_V4_LAN_SHIFT != lan >> BOUND_V4_LAN_SHIFT || take_v4 {
            bound_v4.set(key.addr[0] as u64 | lan);
        }
        // A second IPv4 address while the first is in use: two devices on one MAC?
        let prev = at!(st, ip4).get();
        if prev != 0 {
            emit(EventKind::MacConflict, slot, mac, Some(&key));
        }
    }
    emit(EventKind::AddrBound, slot, mac, Some(&key));
    remember(st, &key, tag);
    Ok(())
}

/// Whether binding `b` went unused for the LAN's TTL ([`binding_stale`]):
/// the address is free then.
#[inline(always)]
fn stale(cfg: Shared<'_, LanConfig>, b: Shared<'_, Binding>, now: u64) -> bool {
    binding_stale(at!(b, last_ns).get(), now, at!(cfg, bind_ttl_ms).get())
}

/// Whether IPv4 `addr` is still bound to `mac` and in use within the TTL.
#[inline(always)]
fn holds(cfg: Shared<'_, LanConfig>, mac: &MacAddr, addr: u32, now: u64) -> bool {
    let key = AddrKey {
        family: 4,
        addr: [addr, 0, 0, 0],
    };
    let mine = |b: Shared<'_, Binding>| at!(b, mac).get() == *mac && !stale(cfg, b, now);
    BINDINGS.cell(&key).is_some_and(mine) || UNPAID_BINDINGS.cell(&key).is_some_and(mine)
}

#[inline(always)]
fn remember(st: Shared<'_, ClientEntry>, key: &AddrKey, tag: u64) {
    if key.family == 6 {
        at!(st, ip6_tag).set(tag);
    } else {
        at!(st, ip4).set(key.addr[0]);
    }
}

/// An ARP message from a client: its sender must be the frame's own MAC, and
/// (with anti-spoofing) the address it claims bound to it or free.
#[inline(always)]
fn arp_up<P: Packet>(
    p: &P,
    cfg: Shared<'_, LanConfig>,
    eth: &Eth,
    mac: &MacAddr,
    probe: Walk,
    seed: u64,
) -> Verdict {
    let Some(arp) = parse_arp(p, eth.l3) else {
        attribute(&probe, Drop::Unknown(STAT_UNKNOWN));
        return Verdict::Drop;
    };
    if arp.sha != *mac {
        attribute(&probe, Drop::Spoof(STAT_SPOOF));
        return Verdict::Drop;
    }
    if arp.spa == 0 || at!(cfg, flags).get() & LAN_ANTI_SPOOF == 0 {
        return Verdict::Pass;
    }
    let key = AddrKey {
        family: 4,
        addr: [arp.spa, 0, 0, 0],
    };
    let Some((pos, slot)) = client_slot(p, mac, probe, seed, false, true) else {
        // No slot: an address nobody else holds, under the limit all frames
        // of MACs without a slot share; nothing is bound.
        let now = coarse_ns();
        let mine = |b: Shared<'_, Binding>| at!(b, mac).get() == *mac || stale(cfg, b, now);
        let free = !gateway_addr(cfg, false, &key.addr)
            && BINDINGS.cell(&key).is_none_or(mine)
            && UNPAID_BINDINGS.cell(&key).is_none_or(mine);
        if free && gate_admits(GateBucket::Slotless, 1) {
            return Verdict::Pass;
        }
        stat_add(STAT_SLOTLESS);
        return Verdict::Drop;
    };
    let Some(st) = CLIENTS.cell(pos) else {
        return Verdict::Drop;
    };
    if gateway_addr(cfg, false, &key.addr) {
        count_drop(slot, Drop::Spoof(STAT_SPOOF), 0);
        return Verdict::Drop;
    }
    let flags = at!(st, flags).get();
    match bind(cfg, st, slot, flags, mac, key, true) {
        Ok(()) => Verdict::Pass,
        Err(d) => {
            count_drop(slot, d, 0);
            Verdict::Drop
        }
    }
}

/// Neighbour discovery with the gateway: hop limit 255 (so never forwarded),
/// from a client to link-local, link-scope multicast or the gateway's
/// addresses, or from the gateway's link-local or own addresses; a client's
/// link-layer address options name its own MAC, and the address an
/// advertisement claims is bound to it or free.
#[inline(always)]
fn nd<P: Packet>(
    p: &P,
    cfg: Shared<'_, LanConfig>,
    ip: &IpInfo,
    dir: Dir,
    mac: &MacAddr,
    client: Option<(Shared<'_, ClientEntry>, u32)>,
) -> Result<(), Drop> {
    if ip.hop != 255 {
        return Err(Drop::Blocked);
    }
    match dir {
        Dir::Up => {
            if !(link_local(&ip.dst) || link_multicast(&ip.dst) || gateway_addr(cfg, true, &ip.dst))
            {
                return Err(Drop::Blocked);
            }
            if !nd_lla_ok(p, ip, mac) {
                return Err(Drop::Spoof(STAT_SPOOF));
            }
            if ip.icmp6_type == 136 && at!(cfg, flags).get() & LAN_ANTI_SPOOF != 0 {
                let target = nd_target(p, ip).ok_or(Drop::Spoof(STAT_SPOOF))?;
                if gateway_addr(cfg, true, &target) {
                    return Err(Drop::Spoof(STAT_SPOOF));
                }
                // A client beyond a full table claims nothing.
                let (st, slot) = client.ok_or(Drop::Blocked)?;
                let flags = at!(st, flags).get();
                bind(cfg, st, slot, flags, mac, ip.key(target), true)?;
            }
            Ok(())
        }
        Dir::Down => {
            if link_local(&ip.src) || gateway_addr(cfg, true, &ip.src) {
                Ok(())
            } else {
                Err(Drop::Blocked)
            }
        }
    }
}

/// The walled garden of a client that has not paid: ND with the gateway, and
/// the garden entries for the far end (broadcast and multicast only the
/// gateway's own services).
#[inline(always)]
fn garden<P: Packet>(
    p: &P,
    cfg: Shared<'_, LanConfig>,
    ip: &IpInfo,
    dir: Dir,
    mac: &MacAddr,
    to_group: bool,
    client: Option<(Shared<'_, ClientEntry>, u32)>,
) -> Result<u32, Drop> {
    if is_nd(ip) {
        return nd(p, cfg, ip, dir, mac, client).map(|_| GARDEN_GATEWAY);
    }
    let (addr, port) = match dir {
        Dir::Up => (ip.dst, ip.dport),
        Dir::Down => (ip.src, ip.sport),
    };
    let Some(f) = garden_flags(ip, addr, port) else {
        return Err(Drop::Blocked);
    };
    if to_group && f & GARDEN_GATEWAY == 0 {
        return Err(Drop::Blocked);
    }
    // DNS only with the garden's DNS servers, and no DNS over TLS: names are
    // resolved where the garden by name sees the answers.
    if (ip.proto == packet::IPPROTO_TCP || ip.proto == packet::IPPROTO_UDP)
        && (port == 853 || (port == 53 && f & GARDEN_DNS == 0))
    {
        return Err(Drop::Blocked);
    }
    Ok(f)
}

/// The datagram of an IPv4 fragment.
#[inline(always)]
fn frag_key(ip: &IpInfo) -> FragKey {
    FragKey {
        src: ip.src[0],
        dst: ip.dst[0],
        id: ip.id,
        proto: ip.proto,
        _pad: 0,
    }
}

/// The first fragment of this one's datagram passed the garden a moment ago.
#[inline(always)]
fn frag_known(ip: &IpInfo) -> bool {
    match GARDEN_FRAGS.cell(&frag_key(ip)) {
        Some(at) => coarse_ns() < at.get() + GARDEN_FRAG_NS,
        None => false,
    }
}

/// Neighbour discovery (ICMPv6 133-137).
#[inline(always)]
fn is_nd(ip: &IpInfo) -> bool {
    ip.v6 && ip.proto == packet::IPPROTO_ICMPV6 && (133..=137).contains(&ip.icmp6_type)
}

/// A flow with the gateway that is never usage: ND, DHCP (its far end on
/// port 67 or 547) and the portal ports (TCP). Anything else with the gateway
/// (its DNS resolver, ...) is relayed or served by it: usage for a paying client.
#[inline(always)]
fn bootstrap(cfg: Shared<'_, LanConfig>, ip: &IpInfo, dir: Dir) -> bool {
    let port = match dir {
        Dir::Up => ip.dport,
        Dir::Down => ip.sport,
    };
    match ip.proto {
        packet::IPPROTO_UDP => port == 67 || port == 547,
        packet::IPPROTO_TCP => portal_port(cfg, port),
        _ => is_nd(ip),
    }
}

/// ff02::1:2, All_DHCP_Relay_Agents_and_Servers, as in packets.
const ALL_DHCP_SERVERS: [u32; 4] = [
    u32::from_ne_bytes([0xff, 0x02, 0, 0]),
    0,
    0,
    u32::from_ne_bytes([0, 1, 0, 2]),
];

/// One of the LAN's portal ports (`LanConfig::portal_ports`).
#[inline(always)]
fn portal_port(cfg: Shared<'_, LanConfig>, port: u16) -> bool {
    let ports = at!(cfg, portal_ports).get();
    port != 0 && (ports[0] == port || ports[1] == port || ports[2] == port || ports[3] == port)
}

/// The client's data budget is spent: the kernel cut it off.
#[inline(always)]
fn cut_off(st: Shared<'_, ClientEntry>, flags: u32) -> bool {
    flags & POLICY_QUOTA != 0 && at!(st, budget_bytes).get() <= 0
}

/// A frame of a MAC that has no slot (the table is full, or new clients come
/// faster than they are admitted): only DHCP and ND with the gateway (ND from
/// the unspecified address only: it claims nothing), under
/// one limit all such frames share; never counted to anyone. (ARP: `arp_up`.)
#[inline(always)]
fn slotless(cfg: Shared<'_, LanConfig>, ip: &IpInfo, dir: Dir) -> Verdict {
    let bootstrap = if is_nd(ip) {
        // Up: only from the unspecified address (duplicate address
        // detection, router solicitation), which claims no address and
        // names no link-layer address; down: the gateway's.
        ip.hop == 255
            && match dir {
                Dir::Up => ip.src_unspecified() && link_multicast(&ip.dst),
                Dir::Down => link_local(&ip.src) || gateway_addr(cfg, true, &ip.src),
            }
    } else {
        // DHCP with the gateway: to one of its addresses, the limited
        // broadcast or All_DHCP_Relay_Agents_and_Servers; from its addresses.
        let (far, port) = match dir {
            Dir::Up => (&ip.dst, ip.dport),
            Dir::Down => (&ip.src, ip.sport),
        };
        let group = dir == Dir::Up
            && if ip.v6 {
                *far == ALL_DHCP_SERVERS
            } else {
                far[0] == u32::MAX
            };
        ip.proto == packet::IPPROTO_UDP
            && ((!ip.v6 && port == 67) || (ip.v6 && port == 547))
            && (group || gateway_addr(cfg, ip.v6, far))
    };
    // The gateway's answers pass: the requests were limited.
    if bootstrap && (dir == Dir::Down || gate_admits(GateBucket::Slotless, 1)) {
        return Verdict::Pass;
    }
    stat_add(STAT_SLOTLESS);
    Verdict::Drop
}

/// One of the LAN's shared limits ([`GateBucket`]) admits `cost`.
#[inline(always)]
fn gate_admits(which: GateBucket, cost: u64) -> bool {
    let Some(b) = GATE.cell(which as u32) else {
        return true;
    };
    let rate = at!(b, rate_bytes).get();
    let burst = at!(b, burst_bytes).get();
    bucket_admits(b, rate, burst, cost)
}

/// The flags of the garden entry that passes this protocol to `addr` and `port`.
#[inline(always)]
fn garden_flags(ip: &IpInfo, addr: [u32; 4], port: u16) -> Option<u32> {
    let a: [u8; 16] = addr_bytes(addr);
    let mut key = Key::new(
        GardenKey::FULL_PREFIX,
        GardenKey {
            family: ip.family() as u8,
            port: port.to_be_bytes(),
            addr: a,
            _pad: 0,
        },
    );
    let proto = match ip.proto {
        packet::IPPROTO_TCP => GARDEN_TCP,
        packet::IPPROTO_UDP => GARDEN_UDP,
        _ => 0,
    };
    if port != 0 {
        if let Some(v) = GARDEN.get(&key) {
            let f = v.flags;
            if f & (GARDEN_TCP | GARDEN_UDP) == 0 || f & proto != 0 {
                return Some(f);
            }
        }
    }
    key.data.port = [0; 2];
    if let Some(v) = GARDEN.get(&key) {
        let f = v.flags;
        if f & (GARDEN_TCP | GARDEN_UDP) == 0 || f & proto != 0 {
            return Some(f);
        }
    }
    learnt(ip, a, port)
}

/// An address learnt from a DNS answer for a garden name (TCP and UDP on its
/// port, or everything): stamped as used, so that it stays while in use.
#[inline(always)]
fn learnt(ip: &IpInfo, addr: [u8; 16], port: u16) -> Option<u32> {
    let mut key = GardenHostKey {
        family: ip.family() as u8,
        _pad: 0,
        port: port.to_be_bytes(),
        addr,
    };
    // (Ports are 0 but for TCP and UDP.)
    let v = match GARDEN_HOSTS.cell(&key) {
        Some(v) => v,
        None => {
            key.port = [0; 2];
            GARDEN_HOSTS.cell(&key)?
        }
    };
    // Clients that have not paid, within the garden rate limit: a store per
    // packet costs less than a branch costs the verifier.
    at!(v, last_used_ns).set(coarse_ns());
    Some(0)
}

/// The garden rate limit of a client that has not paid, per direction, and
/// (for `shared` flows: those that leave the gateway or that it relays) the
/// limit of all unpaid clients together. Refusals are counted in the stats.
#[inline(always)]
fn garden_admits(cfg: Shared<'_, LanConfig>, slot: u32, dir: Dir, len: u64, shared: bool) -> bool {
    let rate = at!(cfg, garden_rate_bytes).get();
    let min = at!(cfg, garden_min_cost).get();
    let cost = if len < min { min } else { len };
    if rate != 0 {
        let burst = at!(cfg, garden_burst_bytes).get();
        let Some(pol) = POLICY.cell(slot) else {
            return false;
        };
        let bucket = match dir {
            Dir::Up => at!(pol, garden_up),
            Dir::Down => at!(pol, garden_down),
        };
        if !bucket_admits(bucket, rate, burst, cost) {
            stat_add(STAT_GARDEN_RATELIMIT);
            return false;
        }
    }
    let total = match dir {
        Dir::Up => GateBucket::GardenUp,
        Dir::Down => GateBucket::GardenDown,
    };
    if shared && !gate_admits(total, cost) {
        stat_add(STAT_GARDEN_TOTAL);
        return false;
    }
    true
}

/// The hash seed of the index, or 0 before the agent has set it (then no
/// client is indexed yet). A plain word: an `Option` would carry an undefined
/// payload that the verifier refuses to see copied.
#[inline(always)]
fn index_seed() -> u64 {
    match SLOT_ALLOC.cell(0) {
        Some(alloc) => at!(alloc, epoch).get(),
        None => 0,
    }
}

/// Looks `m` up in the client table.
#[inline(always)]
fn find(m: u64, seed: u64) -> Walk {
    Walk::of(index_find(m, seed, |pos| {
        CLIENTS.cell(pos).map(|e| at!(e, key).get())
    }))
}

/// What a walk of the client table found ([`Probe`]), with every field
/// defined whatever it found: an enum leaves the fields of its other
/// variants undefined, and the verifier refuses a program that keeps such a
/// register on its stack.
#[derive(Clone, Copy)]
struct Walk {
    /// The client's slot if found, else `u32::MAX`.
    slot: u32,
    /// Its entry's position if found, else the first one free for it, else
    /// `u32::MAX` (the walk found neither).
    pos: u32,
    /// The key of that free position (0 or `INDEX_REUSABLE`).
    key: u64,
}

impl Walk {
    const FULL: Walk = Walk {
        slot: u32::MAX,
        pos: u32::MAX,
        key: 0,
    };

    #[inline(always)]
    fn of(p: Probe) -> Walk {
        match p {
            Probe::Found { pos, slot } => Walk { slot, pos, key: 0 },
            Probe::Free { pos, key } => Walk {
                slot: u32::MAX,
                pos,
                key,
            },
            Probe::Full => Walk::FULL,
        }
    }
}

/// The position and slot of `mac`, which `probe` found or did not find in
/// the table, taking a new slot the first time the MAC is seen. `None`
/// before the agent seeded the table (`seed`), or when it is full.
#[inline(always)]
fn client_slot<P: Packet>(
    p: &P,
    mac: &MacAddr,
    probe: Walk,
    seed: u64,
    always: bool,
    bootstrap: bool,
) -> Option<(u32, u32)> {
    if seed == 0 {
        return None;
    }
    let m = mac_word(mac);
    if probe.slot != u32::MAX {
        return Some((probe.pos, probe.slot));
    }
    if probe.pos == u32::MAX || m == 0 {
        stat_add(STAT_TABLE_FULL);
        return None;
    }
    let (pos, was) = (probe.pos, probe.key);
    let slot = take_slot(p, mac, always, bootstrap)?;
    let back = SLOTS.cell(slot)?;
    let entry = CLIENTS.cell(pos)?;
    // Lead the slot to its entry before publishing the entry.
    back.set(pos as u64);
    let (old, won) = at!(entry, key).compare_exchange(was, index_key(m, slot));
    if won {
        // (The agent logs the MAC from the event: formatting it here costs
        // older verifiers more than the rest of the program.)
        info!(p, "new client in slot {}", slot);
        emit(EventKind::NewClient, slot, mac, None);
        return Some((pos, slot));
    }
    // Another CPU (or userspace) took the position first; this slot stays
    // unused (its entry's key names another slot).
    if index_live(old) && old & INDEX_MAC_MASK == m {
        return Some((pos, index_slot(old)));
    }
    // It was another MAC: this packet goes as if the table were full; the next
    // one walks on past it.
    None
}

/// A forgotten client's slot, else a never-used one, or `None` (counted) when
/// all are taken (the protocol: `session_common::slots`).
#[inline(always)]
fn take_slot<P: Packet>(p: &P, mac: &MacAddr, always: bool, bootstrap: bool) -> Option<u32> {
    // New clients at a bounded rate: a flood of MACs cannot churn the table
    // faster than the agent hands forgotten slots on. A frame with the
    // gateway's bootstrap services (ARP, ND, DHCP; the gateway's own frames
    // to the MAC) may come in under the limit of frames without a slot
    // instead, so that a customer joins while a flood of other frames takes
    // the admissions.
    if !always
        && !gate_admits(GateBucket::NewClients, 1)
        && !(bootstrap && gate_admits(GateBucket::Slotless, 1))
    {
        stat_add(STAT_ADMISSION_LIMITED);
        return None;
    }
    let alloc = SLOT_ALLOC.cell(0)?;
    let head = at!(alloc, free_head);
    let tail = at!(alloc, free_tail);
    // A few tries: CPUs racing for the last freed slots fall back to new ones.
    let freed = free_ring_take(
        4,
        || head.get(),
        || tail.get(),
        |i| FREE_SLOTS.cell(i).map(|cell| cell.get()),
        |h| head.compare_exchange(h, h + 1).1,
    );
    if freed.is_some() {
        return freed;
    }
    let next = at!(alloc, next);
    match bump_take(
        || next.get(),
        || next.fetch_add(1),
        |old, new| next.compare_exchange(old, new).1,
    ) {
        Bump::Taken(slot) => Some(slot),
        Bump::FullNow => {
            stat_add(STAT_TABLE_FULL);
            warn!(p, "client table full ({} slots)", MAX_CLIENTS);
            emit(EventKind::TableFull, MAX_CLIENTS, mac, None);
            None
        }
        Bump::Full => {
            stat_add(STAT_TABLE_FULL);
            None
        }
    }
}

/// Takes a packet from the data budget, which both directions share.
///
/// A packet passes when it fits the budget. When it does not, a single-segment
/// packet still passes while any budget is left (so the overshoot is less
/// than one packet of at most one MTU), but a GSO aggregate is refused and its
/// bytes given back: TCP resends them in smaller pieces, the last of which is
/// one segment. Concurrent CPUs cannot both spend the same bytes.
#[inline(always)]
fn budget_take<P: Packet>(p: &P, budget: Shared<'_, i64>, len: u64) -> Budget {
    let len = len as i64;
    // Used up: refused without the two atomics of taking and giving back.
    if budget.get() <= 0 {
        return Budget::Refused;
    }
    let before = budget.fetch_add(-len);
    if before > len {
        return Budget::Taken;
    }
    if before == len || (before > 0 && p.segs() <= 1) {
        return Budget::Exhausted;
    }
    budget.fetch_add(len);
    Budget::Refused
}

enum Budget {
    Taken,
    /// Taken, and nothing is left.
    Exhausted,
    Refused,
}

/// Shortest interval between two refills of a bucket.
const MIN_REFILL_NS: u64 = 50_000;

/// Longest idle time a refill credits: more could not fit the bucket anyway,
/// and it keeps `elapsed * rate` far from overflowing.
const MAX_REFILL_NS: u64 = 1_000_000_000;

/// Token-bucket policer shared by all CPUs (per-CPU buckets would let a client
/// exceed its rate by the number of CPUs).
///
/// One CPU at a time wins the refill (compare-and-swap of `last_ns`) and adds
/// the tokens earned since. A packet passes while the bucket is positive and
/// may take it below zero: a GSO aggregate larger than the bucket still passes,
/// and the debt is repaid before the next one, so the long-run rate is exact.
///
/// The precise clock costs more than the rest of the policer, so a packet
/// that finds the bucket neither empty nor full reads only the coarse clock
/// (CLOCK_MONOTONIC_COARSE, behind by up to a tick) and refills, by the
/// precise clock, once that shows MIN_REFILL_NS passed. An empty bucket is
/// refilled at once, so no packet is refused for want of a refill; so is a
/// full one, so that idle time at a full bucket is never credited later. After
/// an idle longer than a tick the first packet refills, capped at the burst,
/// as before; credit deferred within a tick lets at most that tick's worth of
/// the rate through beyond the burst.
#[inline(always)]
fn bucket_admits(b: Shared<'_, TokenBucket>, rate: u64, burst: u64, len: u64) -> bool {
    if rate == 0 {
        return true;
    }
    let tokens_at = at!(b, tokens);
    let last = at!(b, last_ns).get();
    let burst = burst as i64;
    let mut tokens = tokens_at.get();
    if tokens <= 0 || tokens >= burst || coarse_ns() > last + MIN_REFILL_NS {
        let now = now_ns();
        // Refill at most every MIN_REFILL_NS: between refills a packet costs one
        // atomic add, and the time not yet credited is carried to the next refill.
        if now > last + MIN_REFILL_NS {
            // Credit whole tokens only and move the clock by exactly the time they
            // took: the remainder is carried, not lost, however often packets come.
            let (earned, new_last) = if now - last > MAX_REFILL_NS {
                (MAX_REFILL_NS * rate / 1_000_000_000, now)
            } else {
                let earned = (now - last) * rate / 1_000_000_000;
                (earned, last + earned * 1_000_000_000 / rate)
            };
            if earned > 0 {
                let (_, won) = at!(b, last_ns).compare_exchange(last, new_last);
                if won {
                    let earned = earned as i64;
                    let tokens = tokens_at.fetch_add(earned) + earned;
                    if tokens > burst {
                        tokens_at.fetch_add(burst - tokens);
                    }
                }
            }
        }
        // Also sees a refill another CPU just made.
        tokens = tokens_at.get();
    }
    // Refused without writing: taking and giving back would dip the bucket
    // for other CPUs, and costs two atomics.
    if tokens <= 0 {
        return false;
    }
    let before = tokens_at.fetch_add(-(len as i64));
    if before > 0 {
        return true;
    }
    // Another CPU emptied it meanwhile: give the tokens back so drops do not dig the bucket deeper.
    tokens_at.fetch_add(len as i64);
    false
}

#[inline(always)]
fn stat_add(idx: u32) {
    if let Some(v) = STATS.cell(idx) {
        v.add(1);
    }
}

#[inline(always)]
fn emit(kind: EventKind, slot: u32, mac: &MacAddr, addr: Option<&AddrKey>) {
    let ev = ClientEvent {
        kind: kind as u32,
        slot,
        mac: *mac,
        _pad: [0; 2],
        ktime_ns: now_ns(),
        addr: match addr {
            Some(a) => *a,
            None => AddrKey::default(),
        },
        _pad2: 0,
    };
    if EVENTS.output::<ClientEvent>(&ev, 0).is_err() {
        stat_add(STAT_EVENTS_LOST);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
