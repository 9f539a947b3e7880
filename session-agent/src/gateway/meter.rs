//! Meter readings: the kernel's counters of every connected device, charged
//! to their sessions, and the datapath programmed after what that changed.

use std::sync::atomic::Ordering::Relaxed;

use session_model::{idmap::IdMap, DeviceId, MacAddr, MeterMark, TickReport};
use tracing::info;

use super::{Gateway, MeterTable};
use crate::error::AgentError;

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
        t.bytes.resize(t.slots.len(), 0);
        match self.dp.usage_into(&t.slots, &mut t.bytes) {
            Ok(()) => Ok(t
                .devices
                .iter()
                .zip(&t.bytes)
                .map(|(&device_id, &bytes)| (device_id, MeterMark { epoch, bytes }))
                .collect()),
            Err(e) => {
                // A connected device's entry is never forgotten; if it
                // went all the same, the next poll looks the slots up again.
                *table = None;
                Err(e)
            }
        }
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
                t.devices
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
            bytes: Vec::with_capacity(rows.len()),
            built_at,
            devices: rows.iter().map(|(d, _)| *d).collect(),
            slots: rows.iter().map(|(_, s)| *s).collect(),
        }))
    }

    /// Charges readings and applies every session transition to the kernel.
    pub(super) async fn charge(
        &self,
        readings: &[(DeviceId, MeterMark)],
    ) -> Result<TickReport, AgentError> {
        let report = self.mgr.record_meter(readings)?;
        self.apply(&report, readings)?;
        Ok(report)
    }

    /// Programs the kernel after session transitions. `charged` are the readings
    /// last charged (the devices' meter marks).
    pub(super) fn apply(
        &self,
        report: &TickReport,
        charged: &[(DeviceId, MeterMark)],
    ) -> Result<(), AgentError> {
        for t in &report.transitions {
            let last = charged
                .iter()
                .rev()
                .find(|(d, _)| *d == t.device_id)
                .map(|(_, m)| *m);
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
