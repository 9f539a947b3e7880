//! session-agent datapath: per-client metering, walled garden and data budgets
//! on a hotspot's client-facing (LAN) interface.
//!
//! Upload is seen on LAN ingress (TC or XDP) and keyed by the source MAC;
//! download is seen on LAN egress (TC) and keyed by the destination MAC.
#![no_std]
#![no_main]
// The BPF target has atomic read-modify-write instructions but core does not
// expose them (no compare-and-swap in the target spec): use the intrinsics.
// Where the old value is used, the ordering must be SeqCst: LLVM's BPF backend
// lowers a relaxed fetch-add to the non-fetching `lock add` and returns garbage.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod packet;
mod shape;

use core::intrinsics::{
    atomic_cxchg, atomic_xadd,
    AtomicOrdering::{Relaxed, SeqCst},
};

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::{classifier, map, xdp},
    maps::{lpm_trie::Key, Array, LpmTrie, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::{info, warn};
use packet::{parse, Dir, FarEnd, Packet, Parsed};
use session_common::*;

/// BPF_F_MMAPABLE: lets userspace mmap the array and read or write it without syscalls.
pub(crate) const BPF_F_MMAPABLE: u32 = 1 << 10;

#[map(name = "CLIENTS")]
static CLIENTS: Array<ClientEntry> = Array::pinned(INDEX_ENTRIES, BPF_F_MMAPABLE);

#[map(name = "SLOTS")]
static SLOTS: Array<u64> = Array::pinned(MAX_CLIENTS, BPF_F_MMAPABLE);

#[map(name = "COUNTERS")]
static COUNTERS: Array<ClientCounters> = Array::pinned(MAX_CLIENTS, BPF_F_MMAPABLE);

#[map(name = "POLICY")]
static POLICY: Array<ClientPolicy> = Array::pinned(MAX_CLIENTS, BPF_F_MMAPABLE);

#[map(name = "SLOT_ALLOC")]
static SLOT_ALLOC: Array<SlotAllocator> = Array::pinned(1, BPF_F_MMAPABLE);

#[map(name = "FREE_SLOTS")]
static FREE_SLOTS: Array<u64> = Array::pinned(MAX_CLIENTS, BPF_F_MMAPABLE);

#[map(name = "GARDEN")]
static GARDEN: LpmTrie<GardenKey, GardenValue> = LpmTrie::pinned(MAX_GARDEN, 0);

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::pinned(STAT_COUNT, 0);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Drop,
    /// Counted; the slot's HTB class enforces its speed (see `shape`).
    Shape(u32),
}

#[classifier]
pub fn lan_tc_ingress(ctx: TcContext) -> i32 {
    if shape::reinjected(&ctx) {
        return TC_ACT_UNSPEC;
    }
    match handle(&ctx, Dir::Up) {
        Verdict::Shape(slot) => shape::upload(&ctx, slot),
        v => tc_verdict(v),
    }
}

#[classifier]
pub fn lan_tc_egress(ctx: TcContext) -> i32 {
    match handle(&ctx, Dir::Down) {
        Verdict::Shape(slot) => shape::download(&ctx, slot),
        v => tc_verdict(v),
    }
}

#[xdp]
pub fn lan_xdp_ingress(ctx: XdpContext) -> u32 {
    // Shaping needs TC (the agent refuses it with XDP): a shaped client passes.
    match handle(&ctx, Dir::Up) {
        Verdict::Pass | Verdict::Shape(_) => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
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
        Verdict::Pass | Verdict::Shape(_) => TC_ACT_UNSPEC,
        Verdict::Drop => TC_ACT_SHOT,
    }
}

#[inline(always)]
fn handle<P: Packet>(p: &P, dir: Dir) -> Verdict {
    let (mac, ip) = match parse(p, dir) {
        Parsed::NotForUs => return Verdict::Pass,
        Parsed::Malformed(mac) => {
            stat_add(STAT_MALFORMED);
            // Only known clients get the drop attributed: garbage must not take slots.
            if let Some(seed) = index_seed() {
                if let Probe::Found { slot, .. } = find(mac_word(&mac), seed) {
                    if let Some(c) = COUNTERS.get_ptr_mut(slot) {
                        add(unsafe { &raw mut (*c).malformed_packets }, 1);
                    }
                }
            }
            return Verdict::Drop;
        }
        Parsed::Ip(mac, ip) => (mac, ip),
    };
    let Some((pos, slot)) = client_slot(p, &mac) else {
        // Table full: such a client is never allowed, but keeps the walled garden.
        return if ip.unicast && !garden_passes(&ip.far_end(p, dir)) {
            Verdict::Drop
        } else {
            Verdict::Pass
        };
    };
    let Some(st) = CLIENTS.get_ptr_mut(pos) else {
        return Verdict::Pass;
    };
    if !ip.unicast {
        // Broadcast/multicast (DHCP discovery, ND, mDNS) is neither usage nor routed.
        return Verdict::Pass;
    }
    let len = ip.len as u64;
    let flags = unsafe { core::ptr::read_volatile(&raw const (*st).flags) };
    if flags & POLICY_ALLOWED == 0 {
        let Some(c) = COUNTERS.get_ptr_mut(slot) else {
            return Verdict::Drop;
        };
        return if garden_passes(&ip.far_end(p, dir)) {
            add(unsafe { &raw mut (*c).garden_packets }, 1);
            add(unsafe { &raw mut (*c).garden_bytes }, len);
            Verdict::Pass
        } else {
            add(unsafe { &raw mut (*c).blocked_packets }, 1);
            add(unsafe { &raw mut (*c).blocked_bytes }, len);
            Verdict::Drop
        };
    }
    let (shape, limit) = match dir {
        Dir::Up => (POLICY_SHAPE_UP, POLICY_LIMIT_UP),
        Dir::Down => (POLICY_SHAPE_DOWN, POLICY_LIMIT_DOWN),
    };
    let shaped = flags & shape != 0;
    if !shaped && flags & limit != 0 {
        if let Some(pol) = POLICY.get_ptr_mut(slot) {
            let bucket = match dir {
                Dir::Up => unsafe { &raw mut (*pol).up },
                Dir::Down => unsafe { &raw mut (*pol).down },
            };
            if !bucket_admits(bucket, len) {
                if let Some(c) = COUNTERS.get_ptr_mut(slot) {
                    add(unsafe { &raw mut (*c).ratelimit_packets }, 1);
                    add(unsafe { &raw mut (*c).ratelimit_bytes }, len);
                }
                return Verdict::Drop;
            }
        }
    }
    if flags & POLICY_QUOTA != 0 {
        match budget_take(p, unsafe { &raw mut (*st).budget_bytes }, len) {
            Budget::Refused => {
                if let Some(c) = COUNTERS.get_ptr_mut(slot) {
                    add(unsafe { &raw mut (*c).quota_packets }, 1);
                    add(unsafe { &raw mut (*c).quota_bytes }, len);
                }
                return Verdict::Drop;
            }
            // This packet spent the last of the budget: tell userspace at once.
            Budget::Exhausted => emit(EVENT_QUOTA_EXHAUSTED, slot, &mac),
            Budget::Taken => {}
        }
    }
    match dir {
        Dir::Up => {
            add(unsafe { &raw mut (*st).up_packets }, 1);
            add(unsafe { &raw mut (*st).up_bytes }, len);
        }
        Dir::Down => {
            add(unsafe { &raw mut (*st).down_packets }, 1);
            add(unsafe { &raw mut (*st).down_bytes }, len);
        }
    }
    if shaped {
        return Verdict::Shape(slot);
    }
    Verdict::Pass
}

/// The hash seed of the index, or `None` before the agent has set it (then no
/// client is indexed yet).
#[inline(always)]
fn index_seed() -> Option<u64> {
    let alloc = SLOT_ALLOC.get_ptr(0)?;
    match unsafe { core::ptr::read_volatile(&raw const (*alloc).epoch) } {
        0 => None,
        seed => Some(seed),
    }
}

/// Looks `m` up in the client table.
#[inline(always)]
fn find(m: u64, seed: u64) -> Probe {
    index_find(m, seed, |pos| {
        CLIENTS
            .get_ptr(pos)
            .map(|e| unsafe { core::ptr::read_volatile(&raw const (*e).key) })
    })
}

/// The position and slot of `mac`, taking a new slot the first time the MAC is seen.
#[inline(always)]
fn client_slot<P: Packet>(p: &P, mac: &MacKey) -> Option<(u32, u32)> {
    let seed = index_seed()?;
    let m = mac_word(mac);
    let (pos, was) = match find(m, seed) {
        Probe::Found { pos, slot } => return Some((pos, slot)),
        Probe::Free { pos, key } if m != 0 => (pos, key),
        _ => {
            stat_add(STAT_TABLE_FULL);
            return None;
        }
    };
    let slot = take_slot(p, mac)?;
    let back = SLOTS.get_ptr_mut(slot)?;
    let entry = CLIENTS.get_ptr_mut(pos)?;
    // Lead the slot to its entry before publishing the entry.
    unsafe { core::ptr::write_volatile(back, pos as u64) };
    let (old, won) = unsafe {
        atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(&raw mut (*entry).key, was, index_key(m, slot))
    };
    if won {
        info!(p, "new client {:mac} in slot {}", mac.addr, slot);
        emit(EVENT_NEW_CLIENT, slot, mac);
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
/// all are taken.
#[inline(always)]
fn take_slot<P: Packet>(p: &P, mac: &MacKey) -> Option<u32> {
    let alloc = SLOT_ALLOC.get_ptr_mut(0)?;
    let head = unsafe { &raw mut (*alloc).free_head };
    let tail = unsafe { &raw const (*alloc).free_tail };
    // A few tries: CPUs racing for the last freed slots fall back to new ones.
    for _ in 0..4 {
        let h = unsafe { core::ptr::read_volatile(head) };
        if h >= unsafe { core::ptr::read_volatile(tail) } {
            break;
        }
        let Some(cell) = FREE_SLOTS.get_ptr((h % MAX_CLIENTS as u64) as u32) else {
            break;
        };
        let slot = unsafe { core::ptr::read_volatile(cell) };
        let (_, won) = unsafe { atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(head, h, h + 1) };
        if won && slot < MAX_CLIENTS as u64 {
            return Some(slot as u32);
        }
    }
    let next = unsafe { &raw mut (*alloc).next };
    // Check before adding so a full table does not keep counting up (and wrap).
    if unsafe { core::ptr::read_volatile(next) } >= MAX_CLIENTS {
        stat_add(STAT_TABLE_FULL);
        return None;
    }
    let slot = unsafe { atomic_xadd::<u32, u32, { SeqCst }>(next, 1) };
    if slot >= MAX_CLIENTS {
        stat_add(STAT_TABLE_FULL);
        if slot == MAX_CLIENTS {
            warn!(p, "client table full ({} slots)", MAX_CLIENTS);
            emit(EVENT_TABLE_FULL, slot, mac);
        }
        return None;
    }
    Some(slot)
}

/// Takes a packet from the data budget, which both directions share.
///
/// A packet passes when it fits the budget. When it does not, a single-segment
/// packet still passes while any budget is left (so the overshoot is less
/// than one packet of at most one MTU), but a GSO aggregate is refused and its
/// bytes given back: TCP resends them in smaller pieces, the last of which is
/// one segment. Concurrent CPUs cannot both spend the same bytes.
#[inline(always)]
fn budget_take<P: Packet>(p: &P, budget: *mut i64, len: u64) -> Budget {
    let len = len as i64;
    // Used up: refused without the two atomics of taking and giving back.
    if unsafe { core::ptr::read_volatile(budget) } <= 0 {
        return Budget::Refused;
    }
    let before = unsafe { atomic_xadd::<i64, i64, { SeqCst }>(budget, -len) };
    if before > len {
        return Budget::Taken;
    }
    if before == len || (before > 0 && p.segs() <= 1) {
        return Budget::Exhausted;
    }
    unsafe { atomic_xadd::<i64, i64, { SeqCst }>(budget, len) };
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
fn bucket_admits(b: *mut TokenBucket, len: u64) -> bool {
    let rate = unsafe { core::ptr::read_volatile(&raw const (*b).rate_bytes) };
    if rate == 0 {
        return true;
    }
    let tokens_ptr = unsafe { &raw mut (*b).tokens };
    let last = unsafe { core::ptr::read_volatile(&raw const (*b).last_ns) };
    let burst = unsafe { core::ptr::read_volatile(&raw const (*b).burst_bytes) } as i64;
    let mut tokens = unsafe { core::ptr::read_volatile(tokens_ptr) };
    if tokens <= 0 || tokens >= burst || unsafe { bpf_ktime_get_coarse_ns() } > last + MIN_REFILL_NS
    {
        let now = unsafe { bpf_ktime_get_ns() };
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
                let (_, won) = unsafe {
                    atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(
                        &raw mut (*b).last_ns,
                        last,
                        new_last,
                    )
                };
                if won {
                    let earned = earned as i64;
                    let tokens =
                        unsafe { atomic_xadd::<i64, i64, { SeqCst }>(tokens_ptr, earned) } + earned;
                    if tokens > burst {
                        unsafe { atomic_xadd::<i64, i64, { SeqCst }>(tokens_ptr, burst - tokens) };
                    }
                }
            }
        }
        // Also sees a refill another CPU just made.
        tokens = unsafe { core::ptr::read_volatile(tokens_ptr) };
    }
    // Refused without writing: taking and giving back would dip the bucket
    // for other CPUs, and costs two atomics.
    if tokens <= 0 {
        return false;
    }
    let before = unsafe { atomic_xadd::<i64, i64, { SeqCst }>(tokens_ptr, -(len as i64)) };
    if before > 0 {
        return true;
    }
    // Another CPU emptied it meanwhile: give the tokens back so drops do not dig the bucket deeper.
    unsafe { atomic_xadd::<i64, i64, { SeqCst }>(tokens_ptr, len as i64) };
    false
}

/// Traffic a client that is not allowed may still exchange: DHCP, ND and the
/// walled garden (DNS and the portal on the gateway, configured CIDRs).
#[inline(always)]
fn garden_passes(ip: &FarEnd) -> bool {
    let always = match ip.proto {
        // DHCP and DHCPv6 servers: the port is the destination going up, the source coming down.
        packet::IPPROTO_UDP => ip.port == 67 || ip.port == 547,
        packet::IPPROTO_ICMPV6 => (133..=137).contains(&ip.icmp6_type),
        _ => false,
    };
    if always {
        return true;
    }
    let mut key = Key::new(
        GardenKey::FULL_PREFIX,
        GardenKey {
            port: ip.port.to_be_bytes(),
            addr: ip.addr,
            _pad: [0; 2],
        },
    );
    if ip.port != 0 && GARDEN.get(&key).is_some() {
        return true;
    }
    key.data.port = [0; 2];
    GARDEN.get(&key).is_some()
}

#[inline(always)]
fn add(ptr: *mut u64, v: u64) {
    unsafe { atomic_xadd::<u64, u64, { Relaxed }>(ptr, v) };
}

#[inline(always)]
fn stat_add(idx: u32) {
    if let Some(v) = STATS.get_ptr_mut(idx) {
        unsafe { *v += 1 };
    }
}

#[inline(always)]
fn emit(kind: u32, slot: u32, mac: &MacKey) {
    let ev = ClientEvent {
        kind,
        slot,
        mac: *mac,
        _pad: [0; 2],
        ktime_ns: unsafe { bpf_ktime_get_ns() },
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
