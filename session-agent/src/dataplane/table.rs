//! The client table: the index by MAC, slot claiming, and each client's flags,
//! meter and data budget as atomics shared with the datapath.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

use session_common::*;

use super::{maps::*, mmap::cell, rates::RateLimit};
use crate::error::{AgentError, Result};

impl Maps {
    /// The key of the table entry at `pos`.
    pub(super) fn key(&self, pos: u32) -> &AtomicU64 {
        cell!(self.clients, pos, key: AtomicU64)
    }

    /// Where the slot's entry is, or `None` while the slot is unused (never
    /// taken, or given up after losing a race for its entry).
    pub(super) fn position(&self, slot: u32) -> Option<u32> {
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
    pub(super) fn entry_of(&self, slot: u32) -> Result<u32> {
        self.position(slot).ok_or_else(|| AgentError::NoEntry {
            iface: self.iface.clone(),
            slot,
        })
    }

    /// Looks `m` up in the table, as the datapath does.
    pub(super) fn probe(&self, m: u64, seed: u64) -> Probe {
        index_find(m, seed, |pos| Some(self.key(pos).load(Ordering::Acquire)))
    }

    pub fn slot_of(&self, mac: &MacAddr) -> Option<u32> {
        match self.epoch() {
            0 => None,
            seed => match self.probe(mac_word(mac), seed) {
                Probe::Found { slot, .. } => Some(slot),
                _ => None,
            },
        }
    }

    /// The client's slot, taking a new one (as the datapath would) if it has none yet.
    pub fn ensure_slot(&mut self, mac: &MacAddr) -> Result<u32> {
        if mac.is_zero() {
            return Err(AgentError::NotAClientMac(*mac));
        }
        let seed = self.ensure_epoch()?;
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
    pub(super) fn take_freed_slot(&self) -> Option<u32> {
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

    pub(super) fn flags(&self, slot: u32) -> Result<&AtomicU32> {
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
        // As the datapath does after counting.
        if let Some(m) = &self.moved {
            cell!(m, slot / 64 => AtomicU64).fetch_or(1 << (slot % 64), Ordering::SeqCst);
        }
        Ok(())
    }

    /// The slots whose clients the datapath counted usage of since the last
    /// call (their `MOVED` bits, taken and cleared), added to `out`; false
    /// when the pins have no such bits (made by a version before them): then
    /// only reading every slot tells.
    pub fn take_moved(&self, out: &mut Vec<u32>) -> bool {
        let Some(m) = &self.moved else {
            return false;
        };
        for w in 0..m.len() {
            let word = cell!(m, w => AtomicU64);
            // Most words are clear: a load keeps their lines shared.
            if word.load(Ordering::Relaxed) == 0 {
                continue;
            }
            // Cleared before the counters are read: a packet counted after
            // this sets its bit again for the next call.
            let mut bits = word.swap(0, Ordering::SeqCst);
            while bits != 0 {
                out.push(w * 64 + bits.trailing_zeros());
                bits &= bits - 1;
            }
        }
        true
    }

    /// Up plus down bytes of the slot: the client's usage meter.
    pub fn usage_bytes(&self, slot: u32) -> Result<u64> {
        let (up, down) = self.usage_split(slot)?;
        Ok(up + down)
    }

    /// Up and down bytes of the client in `slot`, apart.
    pub fn usage_split(&self, slot: u32) -> Result<(u64, u64)> {
        let pos = self.entry_of(slot)?;
        Ok((
            cell!(self.clients, pos, up_bytes: AtomicU64).load(Ordering::Relaxed),
            cell!(self.clients, pos, down_bytes: AtomicU64).load(Ordering::Relaxed),
        ))
    }

    /// The data budget the datapath is spending (meaningful under `POLICY_QUOTA`).
    pub fn budget(&self, slot: u32) -> Result<i64> {
        Ok(self.budget_cell(slot)?.load(Ordering::SeqCst))
    }

    pub(super) fn budget_cell(&self, slot: u32) -> Result<&AtomicI64> {
        Ok(cell!(self.clients, self.entry_of(slot)?, budget_bytes: AtomicI64))
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
    pub fn set_allowed(&mut self, mac: &MacAddr, allowed: bool) -> Result<u32> {
        self.set_allowed_by(mac, allowed, false)
    }

    /// [`Maps::set_allowed`] for the operator (`session-agent allow`): the
    /// agent keeps a client it did not let through itself (`POLICY_MANUAL`)
    /// until it is blocked. Blocking clears it either way.
    pub fn set_allowed_by(&mut self, mac: &MacAddr, allowed: bool, manual: bool) -> Result<u32> {
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
    pub fn limit(&mut self, mac: &MacAddr, up: RateLimit, down: RateLimit) -> Result<u32> {
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
    pub(super) fn finish_forgetting(&self, mac: &MacAddr, slot: u32, pos: u32) {
        let _ = self.key(pos).compare_exchange(
            index_key(mac_word(mac), slot),
            index_retired(slot),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
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
}
