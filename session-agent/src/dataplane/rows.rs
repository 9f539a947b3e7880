//! What operators and the poll read of the table: rows, the enforced state,
//! the LAN's drop counters.

use super::forget::SCAN_CHUNK;
use std::os::fd::AsFd;

use aya::maps::MapData;
use serde::Serialize;
use session_common::*;

use super::{
    maps::*,
    mmap::{self, MmapArray},
    rates::RateLimit,
};
use crate::error::{AgentError, Result};

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
    pub mac: MacAddr,
    /// `POLICY_*` bits.
    pub flags: u32,
    /// The speed limits in force: rate and bucket depth (unlimited: 0, 0).
    pub up: RateLimit,
    pub down: RateLimit,
}

impl Maps {
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
    pub(super) fn all_counters(&self, first: u32, len: u32) -> Result<MmapArray<ClientCounters>> {
        MmapArray::map_range(self.counters.fd().as_fd(), first, len, MAP_COUNTERS)
    }

    pub(super) fn row(&self, slot: u32, counters: &MmapArray<ClientCounters>) -> Option<ClientRow> {
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

    /// The clients in slots `first..first + len` (of the slots in use) as
    /// the datapath enforces them: their `POLICY_*` flags and speed limits
    /// (read a chunk at a time); and the slot the next window starts at, 0
    /// after the last slot in use. A `first` beyond them starts at 0.
    pub fn enforced(&self, first: u32, len: u32) -> Result<(Vec<Enforced>, u32)> {
        let used = self.slots_used();
        let first = if first >= used { 0 } else { first };
        let end = first.saturating_add(len).min(used);
        let mut out = Vec::with_capacity((end - first) as usize);
        let mut pol = None;
        for slot in first..end {
            if slot == first || slot % SCAN_CHUNK == 0 {
                pol = Some(self.policies(slot, (SCAN_CHUNK - slot % SCAN_CHUNK).min(end - slot))?);
            }
            let Some(pos) = self.position(slot) else {
                continue;
            };
            let e = self.clients.get(pos);
            let p = pol.as_ref().expect("mapped at the chunk's start").get(slot);
            let limit = |b: &TokenBucket, on: u32| {
                if e.flags & on != 0 {
                    RateLimit {
                        rate_bytes: b.rate_bytes,
                        burst_bytes: b.burst_bytes,
                    }
                } else {
                    RateLimit::UNLIMITED
                }
            };
            out.push(Enforced {
                slot,
                mac: index_mac(e.key),
                flags: e.flags,
                up: limit(&p.up, POLICY_LIMIT_UP | POLICY_SHAPE_UP),
                down: limit(&p.down, POLICY_LIMIT_DOWN | POLICY_SHAPE_DOWN),
            });
        }
        Ok((out, if end >= used { 0 } else { end }))
    }

    /// The datapath's global counters (`STAT_*`), summed over the CPUs.
    pub fn stats(&self) -> Result<[u64; STAT_COUNT as usize]> {
        let arr = self.stats_map()?;
        let mut out = [0u64; STAT_COUNT as usize];
        for (i, v) in out.iter_mut().enumerate() {
            *v = stat_of(&arr, i as u32)?;
        }
        Ok(out)
    }

    /// One of the datapath's global counters (`STAT_*`), summed over the CPUs.
    pub fn stat(&self, i: u32) -> Result<u64> {
        stat_of(&self.stats_map()?, i)
    }

    fn stats_map(&self) -> Result<aya::maps::PerCpuArray<MapData, u64>> {
        let data = mmap::open_pinned(&self.dir, MAP_STATS)?;
        aya::maps::PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))
            .map_err(|e| AgentError::bpf("opening the datapath statistics", e))
    }
}

fn stat_of(arr: &aya::maps::PerCpuArray<MapData, u64>, i: u32) -> Result<u64> {
    let per_cpu = arr
        .get(&i, 0)
        .map_err(|e| AgentError::bpf("reading the datapath statistics", e))?;
    Ok(per_cpu.iter().fold(0u64, |a, x| a.wrapping_add(*x)))
}
