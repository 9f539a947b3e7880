//! Meter readings: the kernel's counters of every connected device, charged
//! to their sessions, and the datapath programmed after what that changed.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

use session_model::{idmap::IdMap, DeviceId, MacAddr, MeterMark, TickReport};
use tracing::info;

use super::{Gateway, MeterTable, SlotOwners};
use crate::error::AgentError;

/// How often a reading of moved meters takes every connected device all the
/// same (see [`Gateway::moved_readings`]).
const FULL_READING_EVERY: Duration = Duration::from_secs(30);

impl Gateway {
    /// A device's counters in each direction and the epoch they count in, read
    /// with the operations lock held: after a poll that blocked it, so a
    /// session that just ended has its last bytes in them. The counters are
    /// `None` when the datapath holds none of the device.
    pub async fn usage_split(&self, mac: MacAddr) -> (Option<u64>, Option<(u64, u64)>) {
        let _g = self.ops.lock().await;
        (
            self.dp.epoch(),
            self.dp
                .slot_of(&mac)
                .and_then(|s| self.dp.usage_split(s).ok()),
        )
    }

    /// The device's current meter reading: its up+down bytes over every LAN.
    pub(super) fn reading(&self, mac: MacAddr) -> MeterMark {
        match self.dp.epoch() {
            Some(epoch) => MeterMark {
                epoch,
                bytes: self
                    .dp
                    .slot_of(&mac)
                    .and_then(|s| self.dp.usage_bytes(s).ok())
                    .unwrap_or(0),
            },
            None => MeterMark { epoch: 0, bytes: 0 },
        }
    }

    /// Meter readings of every connected device, from shared memory. The table of
    /// slots to read is rebuilt only when the connected devices changed.
    pub fn readings(&self) -> Result<Vec<(DeviceId, MeterMark)>, AgentError> {
        self.read_meters(false)
    }

    /// The readings of the connected devices whose counters moved since the
    /// last call: every device after the connected devices changed, after the
    /// counters were made anew, after a charge failed, and every
    /// [`FULL_READING_EVERY`]. The datapath names the slots that moved (see
    /// [`crate::datapath::Datapath::take_moved`]), so only their counters are read; one that
    /// cannot tell has every counter read and compared with the last call's.
    /// The caller charges what it gets: a device left out was charged up to
    /// its counters, and its reading would charge nothing.
    pub(super) fn moved_readings(&self) -> Result<Vec<(DeviceId, MeterMark)>, AgentError> {
        self.read_meters(true)
    }

    fn read_meters(&self, moved_only: bool) -> Result<Vec<(DeviceId, MeterMark)>, AgentError> {
        let built_at = (self.mgr.connected_generation(), self.rekeys.load(Relaxed));
        let mut table = self.meter_table.lock().unwrap();
        if table.as_ref().is_none_or(|t| t.built_at != built_at) {
            match self.build_meter_table(built_at, table.take())? {
                Ok(t) => *table = Some(t),
                // Some device has no slot yet: read it the slow way.
                Err(readings) => return Ok(readings),
            }
        }
        let Some(t) = table.as_mut() else {
            return Ok(Vec::new());
        };
        let Some(epoch) = self.dp.epoch() else {
            return Ok(Vec::new());
        };
        let mark =
            |(&device_id, &bytes): (&DeviceId, &u64)| (device_id, MeterMark { epoch, bytes });
        // Which slots moved, taken before their counters are read.
        let mut moved = Vec::new();
        let known = match moved_only {
            true => self.dp.take_moved(&mut moved),
            false => Ok(false),
        };
        let now = Instant::now();
        let full = t.prev_epoch != Some(epoch)
            || t.prev.len() != t.slots.len()
            || t.full_at
                .is_none_or(|at| now.duration_since(at) >= FULL_READING_EVERY);
        if let (Ok(true), false) = (&known, full) {
            // Only the counters of the slots that moved.
            let rows: Vec<usize> = moved.iter().filter_map(|&s| t.owners.row(s)).collect();
            let slots: Vec<u32> = rows.iter().map(|&i| t.slots[i]).collect();
            let mut bytes = vec![0; slots.len()];
            if let Err(e) = self.dp.usage_into(&slots, &mut bytes) {
                *table = None;
                return Err(e);
            }
            let mut out = Vec::with_capacity(rows.len());
            for (&i, &b) in rows.iter().zip(&bytes) {
                t.prev[i] = b as u32;
                out.push(mark((&t.owners.devices[i], &b)));
            }
            return Ok(out);
        }
        t.bytes.resize(t.slots.len(), 0);
        if let Err(e) = known.and_then(|_| self.dp.usage_into(&t.slots, &mut t.bytes)) {
            // A connected device's entry is never forgotten; if it
            // went all the same, the next poll looks the slots up again.
            *table = None;
            return Err(e);
        }
        if !moved_only {
            return Ok(t.owners.devices.iter().zip(&t.bytes).map(mark).collect());
        }
        let out = if full {
            t.full_at = Some(now);
            t.owners.devices.iter().zip(&t.bytes).map(mark).collect()
        } else {
            t.owners
                .devices
                .iter()
                .zip(&t.bytes)
                .zip(&t.prev)
                .filter(|((_, &bytes), &prev)| bytes as u32 != prev)
                .map(|(d, _)| mark(d))
                .collect()
        };
        t.prev.clear();
        t.prev.extend(t.bytes.iter().map(|&b| b as u32));
        t.prev_epoch = Some(epoch);
        Ok(out)
    }

    /// The meter table of the connected devices, or (when a device has no
    /// slot yet) their readings. Slots never move while the pins live, so
    /// devices already in `old` keep theirs; only new devices are looked up.
    #[allow(clippy::type_complexity)]
    pub(super) fn build_meter_table(
        &self,
        built_at: (u64, u64),
        old: Option<MeterTable>,
    ) -> Result<Result<MeterTable, Vec<(DeviceId, MeterMark)>>, AgentError> {
        let connected = self.mgr.connected()?;
        let known: IdMap<DeviceId, u32> = old
            .as_ref()
            .map(|t| {
                t.owners
                    .devices
                    .iter()
                    .copied()
                    .zip(t.slots.iter().copied())
                    .collect()
            })
            .unwrap_or_default();
        let mut rows: Vec<(DeviceId, u32)> = Vec::with_capacity(connected.len());
        for (device_id, _) in &connected {
            let slot = match known.get(device_id) {
                Some(&slot) => Some(slot),
                None => self.dp.slot_of(&self.mgr.device(*device_id)?.mac),
            };
            match slot {
                Some(slot) => rows.push((*device_id, slot)),
                None => {
                    let mut out = Vec::with_capacity(connected.len());
                    for (device_id, _) in &connected {
                        let mac = self.mgr.device(*device_id)?.mac;
                        out.push((*device_id, self.reading(mac)));
                    }
                    return Ok(Err(out));
                }
            }
        }
        // Slot order: the poll then walks the counter arrays forwards.
        rows.sort_unstable_by_key(|(_, slot)| *slot);
        Ok(Ok(MeterTable {
            owners: Arc::new(SlotOwners::of(&rows)),
            bytes: Vec::with_capacity(rows.len()),
            prev: Vec::new(),
            prev_epoch: None,
            full_at: None,
            built_at,
            slots: rows.iter().map(|(_, s)| *s).collect(),
        }))
    }

    /// Charges readings and applies every session transition to the kernel.
    pub(super) async fn charge(
        &self,
        readings: &[(DeviceId, MeterMark)],
    ) -> Result<TickReport, AgentError> {
        let report = match self.mgr.record_meter(readings) {
            Ok(report) => report,
            Err(e) => {
                // What was read is not charged: the next reading takes every device.
                *self.meter_table.lock().unwrap() = None;
                return Err(e.into());
            }
        };
        self.apply(&report)?;
        Ok(report)
    }

    /// Programs the kernel after session transitions.
    pub(super) fn apply(&self, report: &TickReport) -> Result<(), AgentError> {
        for t in &report.transitions {
            // The reading the ended session was last charged to.
            let last = t.mark;
            let state = self.mgr.desired(t.device_id)?;
            match (t.next, state.grant) {
                (Some(_), Some(g)) => {
                    info!(device_id = t.device_id, from = t.session_id, to = g.session_id, reason = ?t.reason, "session advanced");
                    // Bytes counted since the reading go to the new session.
                    self.program(&state, true, last)?;
                }
                // The next session ended too: a later transition of the report says so.
                (Some(_), None) => {}
                (None, _) => {
                    info!(device_id = t.device_id, session = t.session_id, reason = ?t.reason, "no session left: blocked");
                    self.revoke(state.mac)?;
                    // Bytes that passed between the last reading and the block
                    // belong to the session that just ended.
                    if let Some(last) = last {
                        self.mgr
                            .charge_tail(t.session_id, last, self.reading(state.mac))?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use session_model::{MemoryStore, SessionsMgr, SystemClock};

    use super::*;
    use crate::{datapath::MemDatapath, gateway::GatewayConfig};

    fn mac(i: u8) -> MacAddr {
        MacAddr::new([0x02, 0xcc, 0, 0, 0, i])
    }

    #[tokio::test]
    async fn a_reading_of_moved_meters_takes_the_devices_that_moved_and_every_device_after_a_change(
    ) {
        // A datapath that names the slots that moved, and one that cannot.
        for dp in [MemDatapath::new(7), MemDatapath::without_moved(7)] {
            let dp = Arc::new(dp);
            let mgr = Arc::new(SessionsMgr::new(
                Arc::new(MemoryStore::new()),
                Arc::new(SystemClock),
            ));
            let gw = Gateway::with_datapath(mgr.clone(), dp.clone(), GatewayConfig::default());
            let connect = |i: u8| {
                let (gw, mgr) = (gw.clone(), mgr.clone());
                async move {
                    let d = mgr.create_device(mac(i), None, None).unwrap();
                    mgr.create_session(d.id, 2, 3_600, 100.0, None, 0, 0, false)
                        .await
                        .unwrap();
                    gw.connect(d.id, "").await.unwrap();
                    d.id
                }
            };
            let mut ids = Vec::new();
            for i in 0..3 {
                ids.push(connect(i).await);
            }
            assert_eq!(gw.moved_readings().unwrap().len(), 3, "a new table: all");
            assert!(gw.moved_readings().unwrap().is_empty(), "nothing moved");
            assert!(dp.send(&mac(1), 1_000));
            assert!(dp.send(&mac(1), 500));
            let moved = gw.moved_readings().unwrap();
            assert_eq!(moved.len(), 1, "{moved:?}");
            assert_eq!((moved[0].0, moved[0].1.bytes), (ids[1], 1_500));
            gw.charge(&moved).await.unwrap();
            let running = mgr.running_session_id(ids[1]).unwrap().unwrap();
            assert_eq!(mgr.session(running).unwrap().data().data_cons_bytes, 1_500);
            assert!(gw.moved_readings().unwrap().is_empty(), "charged");
            assert_eq!(gw.readings().unwrap().len(), 3, "all readings stay whole");
            // Another device connects: the next reading takes every device once.
            connect(3).await;
            assert!(dp.send(&mac(3), 10));
            let all = gw.moved_readings().unwrap();
            assert_eq!(all.len(), 4);
            assert!(all.contains(&(
                ids[1],
                MeterMark {
                    epoch: 7,
                    bytes: 1_500
                }
            )));
            assert!(gw.moved_readings().unwrap().is_empty());
        }
    }
}
