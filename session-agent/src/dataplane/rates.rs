//! Speed limits: token buckets in the client table, or per-client HTB classes
//! ([`shape`]) where the LAN shapes; switching between the two.

use std::{
    os::fd::AsFd,
    sync::atomic::{AtomicU32, Ordering},
};

use session_common::*;

use super::{
    maps::*,
    mmap::{cell, MmapArray},
    shape::{self, Shaper},
};
use crate::error::{AgentError, Result};

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

/// One direction of a slot's speed limit, in the policy mapping it borrows.
pub(super) struct Direction<'a> {
    /// `POLICY_SHAPE_*`: the HTB class enforces it.
    pub(super) shape: u32,
    /// `POLICY_LIMIT_*`: the token bucket enforces it.
    pub(super) limit: u32,
    /// The slot's policy, and whether this is its upload bucket (else download).
    pol: &'a MmapArray<ClientPolicy>,
    slot: u32,
    up: bool,
    /// The device the direction's HTB class is on.
    pub(super) dev: String,
}

/// A field of a direction's token bucket, as an atomic in the shared mapping.
macro_rules! bucket {
    ($d:expr, $field:ident : $atomic:ident) => {
        if $d.up {
            cell!($d.pol, $d.slot, up.$field: $atomic)
        } else {
            cell!($d.pol, $d.slot, down.$field: $atomic)
        }
    };
}

impl Direction<'_> {
    /// A copy of its token bucket (the datapath updates it meanwhile).
    fn read(&self) -> TokenBucket {
        TokenBucket {
            rate_bytes: bucket!(self, rate_bytes: AtomicU64).load(Ordering::SeqCst),
            burst_bytes: bucket!(self, burst_bytes: AtomicU64).load(Ordering::SeqCst),
            tokens: bucket!(self, tokens: AtomicI64).load(Ordering::SeqCst),
            last_ns: bucket!(self, last_ns: AtomicU64).load(Ordering::SeqCst),
        }
    }
}

/// Publishes a token bucket of the client whose `POLICY_*` flags are
/// `flags`: its flag goes off before the bucket changes and on (for a limit)
/// once it is complete, so the datapath never uses a half-written bucket.
pub(super) fn set_bucket(flags: &AtomicU32, d: &Direction, limit: RateLimit) {
    if limit.rate_bytes == 0 && flags.load(Ordering::SeqCst) & d.limit == 0 {
        // Unlimited already: the bucket is not read, so it is not written
        // either (nor its page brought into this process).
        return;
    }
    flags.fetch_and(!d.limit, Ordering::SeqCst);
    bucket!(d, rate_bytes: AtomicU64).store(limit.rate_bytes, Ordering::SeqCst);
    bucket!(d, burst_bytes: AtomicU64).store(limit.burst_bytes, Ordering::SeqCst);
    bucket!(d, tokens: AtomicI64).store(limit.burst_bytes as i64, Ordering::SeqCst);
    bucket!(d, last_ns: AtomicU64).store(ktime_ns(), Ordering::SeqCst);
    if limit.rate_bytes > 0 {
        flags.fetch_or(d.limit, Ordering::SeqCst);
    }
}

/// The limit a bucket holds.
pub(super) fn limit_of(b: &TokenBucket) -> RateLimit {
    RateLimit {
        rate_bytes: b.rate_bytes,
        burst_bytes: b.burst_bytes,
    }
}

impl Maps {
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
    pub(super) fn policies(&self, first: u32, len: u32) -> Result<MmapArray<ClientPolicy>> {
        MmapArray::map_range(self.policy.fd().as_fd(), first, len, MAP_POLICY)
    }

    /// Both directions of `slot` (whose buckets `pol` maps): upload, then download.
    pub(super) fn directions<'a>(
        &self,
        pol: &'a MmapArray<ClientPolicy>,
        slot: u32,
    ) -> [Direction<'a>; 2] {
        [
            Direction {
                shape: POLICY_SHAPE_UP,
                limit: POLICY_LIMIT_UP,
                pol,
                slot,
                up: true,
                dev: shape::ifb_name(&self.iface),
            },
            Direction {
                shape: POLICY_SHAPE_DOWN,
                limit: POLICY_LIMIT_DOWN,
                pol,
                slot,
                up: false,
                dev: self.iface.clone(),
            },
        ]
    }

    /// A copy of the slot's token buckets.
    pub fn policy(&self, slot: u32) -> Result<ClientPolicy> {
        Ok(self.policies(slot, 1)?.get(slot))
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
}
