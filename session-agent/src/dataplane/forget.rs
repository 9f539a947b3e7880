//! The forgetting protocol: idle clients that are not allowed leave the table,
//! their slots go through the free-slot ring to new clients (see
//! `session_common::slots` for the half the datapath shares).

use std::{
    collections::HashMap,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use session_common::*;

use super::{
    maps::*,
    mmap::cell,
    rates::RateLimit,
    shape::{self},
};
use crate::error::Result;

/// Slots whose counters [`Maps::forget_idle`] maps at once (320 KiB).
pub(super) const SCAN_CHUNK: u32 = 4096;

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

/// Reclaiming under pressure: while more clients than `high` hold slots,
/// [`Maps::forget_idle`] also forgets those that are not allowed and not
/// kept, however briefly idle, least recently active first, down to `low`.
/// So a flood of MACs cannot lock new customers out for the idle time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pressure {
    pub high: u32,
    pub low: u32,
}

impl Pressure {
    /// Above three quarters of the table, down to five eighths.
    pub const DEFAULT: Self = Self {
        high: MAX_CLIENTS / 4 * 3,
        low: MAX_CLIENTS / 8 * 5,
    };
    /// Never under pressure: only idleness forgets.
    pub const NONE: Self = Self {
        high: MAX_CLIENTS,
        low: MAX_CLIENTS,
    };
}

/// What one run of [`Maps::forget_idle`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Forgotten {
    /// Clients forgotten now (those under pressure included).
    pub retired: u32,
    /// Of those, clients forgotten because the table was under [`Pressure`].
    pub pressed: u32,
    /// Slots (of clients forgotten by the run before) ready for new clients.
    pub freed: u32,
    /// Slots that a lost race for an entry had left unused, ready for new clients.
    pub reclaimed: u32,
}

impl IdleTracker {
    /// Since when the client in `slot` has been seen with `packets` (see
    /// [`Maps::packets`]) by the runs of [`Maps::forget_idle`]: it has been
    /// silent at least since then. `None` when the runs saw another count, or
    /// none.
    pub fn quiet_since(&self, slot: u32, packets: u64) -> Option<Instant> {
        self.seen
            .get(&slot)
            .filter(|(p, _)| *p == packets)
            .map(|(_, since)| *since)
    }
}

/// Packets a client sent, received or had dropped: it was active when this changed.
fn activity(e: &ClientEntry, c: &ClientCounters) -> u64 {
    [
        e.up_packets,
        e.down_packets,
        c.garden_packets,
        c.blocked_packets,
        c.malformed_packets,
        c.ratelimit_packets,
        c.quota_packets,
    ]
    .iter()
    .fold(0u64, |a, p| a.wrapping_add(*p))
}

impl Maps {
    /// Packets the client in `slot` sent, received or had dropped (wrapping):
    /// it was active when this changed. `None` when the slot holds no client.
    pub fn packets(&self, slot: u32) -> Result<Option<u64>> {
        let Some(pos) = self.position(slot) else {
            return Ok(None);
        };
        let c = self.all_counters(slot, 1)?.get(slot);
        Ok(Some(activity(&self.clients.get(pos), &c)))
    }

    /// Hands a slot to the next new client. Only the agent calls this (one
    /// writer of the tail); the ring holds every slot, so it never overruns.
    pub(super) fn free_slot(&self, slot: u32) {
        let tail = cell!(self.alloc, 0, free_tail: AtomicU64);
        let t = tail.load(Ordering::Acquire);
        cell!(self.free, free_ring_position(t) => AtomicU64).store(slot as u64, Ordering::Release);
        tail.store(t + 1, Ordering::Release);
    }

    /// Clients holding a slot now (forgotten ones until their slot is freed).
    pub fn clients_live(&self) -> u64 {
        (self.slots_used() as u64).saturating_sub(self.free_slots())
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
    /// restart knows no client's history, so it forgets nobody; nor is a
    /// client forgotten under `pressure` in the run that first sees it.
    pub fn forget_idle(
        &self,
        t: &mut IdleTracker,
        now: Instant,
        idle: Duration,
        pressure: Pressure,
        keep: impl Fn(&MacAddr) -> bool,
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
        // Clients in the table, and those that may be forgotten under
        // pressure: (last active, slot, position, key).
        let mut live = 0u32;
        let mut spare: Vec<(Instant, u32, u32, u64)> = Vec::new();
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
            let packets = activity(&e, &counters.get(slot));
            live += 1;
            let since = match seen.get(&slot) {
                Some(&(p, since)) if p == packets => since,
                // New, or active since the last run.
                _ => {
                    t.seen.insert(slot, (packets, now));
                    continue;
                }
            };
            let idle_long = now.duration_since(since) >= idle;
            let forgettable = e.flags & POLICY_ALLOWED == 0 && !keep(&index_mac(key));
            if idle_long && forgettable && self.retire(slot, pos, key)? {
                t.retired.push((slot, pos));
                done.retired += 1;
                live -= 1;
            } else {
                t.seen.insert(slot, (packets, since));
                if forgettable {
                    spare.push((since, slot, pos, key));
                }
            }
        }
        if live > pressure.high {
            spare.sort_unstable_by_key(|&(since, slot, ..)| (since, slot));
            for (_, slot, pos, key) in spare {
                if live <= pressure.low {
                    break;
                }
                if self.retire(slot, pos, key)? {
                    t.seen.remove(&slot);
                    t.retired.push((slot, pos));
                    done.retired += 1;
                    done.pressed += 1;
                    live -= 1;
                }
            }
        }
        Ok(done)
    }

    /// Frees the entry at `pos` that [`Maps::retire`] made a tombstone for
    /// `slot` a run ago: clears it, offers it to new MACs and the slot to new
    /// clients. False if it is no longer that tombstone.
    pub(super) fn free_retired(&self, slot: u32, pos: u32) -> Result<bool> {
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
    pub(super) fn clear_slot(&self, slot: u32) -> Result<()> {
        self.all_counters(slot, 1)?
            .set(slot, ClientCounters::default());
        self.policies(slot, 1)?.set(slot, ClientPolicy::default());
        Ok(())
    }

    /// The slots in the free ring (a taker may be moving its head meanwhile:
    /// slots it just took may be among them).
    pub(super) fn free_ring(&self) -> std::collections::HashSet<u32> {
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
    pub(super) fn retire(&self, slot: u32, pos: u32, key: u64) -> Result<bool> {
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
}
