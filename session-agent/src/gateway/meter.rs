//! Meter readings: the kernel's counters of every connected device, charged
//! to their sessions, and the datapath programmed after what that changed.

use std::sync::{atomic::Ordering::Relaxed, Arc};

use session_model::{idmap::IdMap, DeviceId, MacAddr, MeterMark, TickReport};
use tracing::info;

use super::{Gateway, MeterTable, Scratch, SlotOwners};
use crate::error::AgentError;

/// Rows of the meter table whose counters each reading of moved meters also
/// compares with the last reading, in turn (see [`Gateway::moved_readings`]):
/// a move the datapath did not tell is charged within devices / this many
/// readings (4 s at 1,000 devices, 256 s at 65,536), at a cost that does not
/// grow with the devices.
const CHECK_ROWS: usize = 256;

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
    /// counters were made anew and after a charge failed. The datapath names
    /// the slots that moved (see [`crate::datapath::Datapath::take_moved`]),
    /// so only their counters are read, and [`CHECK_ROWS`] others in turn,
    /// whose counters are compared with the last reading; one that cannot
    /// tell has every counter read and compared with the last call's.
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
        // Which slots moved, taken before their counters are read (into
        // buffers kept between polls: a poll allocates only what it returns).
        let mut moved = std::mem::take(&mut t.scratch);
        moved.clear();
        let known = match moved_only {
            true => self.dp.take_moved(&mut moved.slots),
            false => Ok(false),
        };
        // Every device's reading is charged after the counters or the
        // devices changed.
        let full = t.prev_epoch != Some(epoch) || t.prev.len() != t.slots.len();
        if let (Ok(true), false) = (&known, full) {
            // The counters of the slots that moved, and of the next rows in
            // turn: one whose move went untold differs from its last reading.
            let Scratch { slots, rows, bytes } = &mut moved;
            rows.extend(slots.iter().filter_map(|&s| t.owners.row(s)));
            // Devices new to the table, as if they had moved.
            if !t.unread.is_empty() {
                rows.append(&mut t.unread);
                rows.sort_unstable();
                rows.dedup();
            }
            let told = rows.len();
            let from = if t.check_at < t.slots.len() {
                t.check_at
            } else {
                0
            };
            let to = (from + CHECK_ROWS).min(t.slots.len());
            for i in from..to {
                // Rows are in slot order, as the moved slots come.
                if rows[..told].binary_search(&i).is_err() {
                    rows.push(i);
                }
            }
            t.check_at = to;
            slots.clear();
            slots.extend(rows.iter().map(|&i| t.slots[i]));
            bytes.resize(slots.len(), 0);
            let read = self.dp.usage_into(slots, bytes);
            let out = read.map(|()| {
                let mut out = Vec::with_capacity(told);
                for (j, (&i, &b)) in rows.iter().zip(bytes.iter()).enumerate() {
                    if j < told || b as u32 != t.prev[i] {
                        t.prev[i] = b as u32;
                        out.push(mark((&t.owners.devices[i], &b)));
                    }
                }
                out
            });
            t.scratch = moved.kept();
            if out.is_err() {
                *table = None;
            }
            return out;
        }
        t.scratch = moved.kept();
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
            t.owners.devices.iter().zip(&t.bytes).map(mark).collect()
        } else {
            let unread = std::mem::take(&mut t.unread);
            t.owners
                .devices
                .iter()
                .zip(&t.bytes)
                .zip(&t.prev)
                .enumerate()
                .filter(|&(i, ((_, &bytes), &prev))| {
                    bytes as u32 != prev || unread.binary_search(&i).is_ok()
                })
                .map(|(_, (d, _))| mark(d))
                .collect()
        };
        t.unread.clear();
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
        // What the old table last read of each device it read, when that
        // is whole: kept, so a device that connects or goes does not make
        // the next reading take every other device again.
        let carried = old
            .as_ref()
            .filter(|t| t.prev_epoch.is_some() && t.prev.len() == t.slots.len());
        let known: IdMap<DeviceId, (u32, Option<u32>)> = old
            .as_ref()
            .map(|t| {
                // One the old table had yet to read is still to be read.
                let prev = |i: usize| {
                    carried
                        .filter(|t| t.unread.binary_search(&i).is_err())
                        .map(|t| t.prev[i])
                };
                t.owners
                    .devices
                    .iter()
                    .copied()
                    .zip(t.slots.iter().copied())
                    .enumerate()
                    .map(|(i, (d, s))| (d, (s, prev(i))))
                    .collect()
            })
            .unwrap_or_default();
        let mut rows: Vec<(DeviceId, u32, Option<u32>)> = Vec::with_capacity(connected.len());
        for (device_id, _) in &connected {
            let slot = match known.get(device_id) {
                Some(&(slot, prev)) => Some((slot, prev)),
                None => self
                    .dp
                    .slot_of(&self.mgr.device(*device_id)?.mac)
                    .map(|s| (s, None)),
            };
            match slot {
                Some((slot, prev)) => rows.push((*device_id, slot, prev)),
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
        rows.sort_unstable_by_key(|&(_, slot, _)| slot);
        let owners: Vec<(DeviceId, u32)> = rows.iter().map(|&(d, s, _)| (d, s)).collect();
        // Devices new to the table are read at the next reading, whatever
        // their counters; without a whole old reading, every device is.
        let (prev, unread, prev_epoch) = match carried {
            Some(t) => (
                rows.iter().map(|r| r.2.unwrap_or(0)).collect(),
                (0..rows.len()).filter(|&i| rows[i].2.is_none()).collect(),
                t.prev_epoch,
            ),
            None => (Vec::new(), Vec::new(), None),
        };
        Ok(Ok(MeterTable {
            owners: Arc::new(SlotOwners::of(&owners)),
            bytes: Vec::with_capacity(rows.len()),
            prev,
            unread,
            prev_epoch,
            // The turn of checks goes on where it was: a table rebuilt more
            // often than a turn takes still has every row checked.
            check_at: old.as_ref().map_or(0, |t| t.check_at),
            scratch: Scratch::default(),
            built_at,
            slots: owners.iter().map(|&(_, s)| s).collect(),
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

    /// A gateway over `dp`, with its sessions in memory.
    fn gateway(dp: &Arc<MemDatapath>) -> (Arc<Gateway>, Arc<SessionsMgr>) {
        let mgr = Arc::new(SessionsMgr::new(
            Arc::new(MemoryStore::new()),
            Arc::new(SystemClock),
        ));
        let gw = Gateway::with_datapath(mgr.clone(), dp.clone(), GatewayConfig::default());
        (gw, mgr)
    }

    /// A new device of `mac`, connected with a data session: its id.
    async fn connect_new(gw: &Gateway, mgr: &SessionsMgr, mac: MacAddr) -> DeviceId {
        let d = mgr.create_device(mac, None, None).unwrap();
        mgr.create_session(d.id, 2, 3_600, 100.0, None, 0, 0, false)
            .await
            .unwrap();
        gw.connect(d.id, "").await.unwrap();
        d.id
    }

    #[tokio::test]
    async fn a_reading_of_moved_meters_takes_the_devices_that_moved_and_those_new_to_the_table() {
        // A datapath that names the slots that moved, and one that cannot.
        for dp in [MemDatapath::new(7), MemDatapath::without_moved(7)] {
            let dp = Arc::new(dp);
            let (gw, mgr) = gateway(&dp);
            let connect = |i: u8| connect_new(&gw, &mgr, mac(i));
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
            // Another device connects: the next reading takes it, and not
            // every other device again.
            let third = connect(3).await;
            assert!(dp.send(&mac(3), 10));
            let next = gw.moved_readings().unwrap();
            assert_eq!(
                next,
                vec![(
                    third,
                    MeterMark {
                        epoch: 7,
                        bytes: 10
                    }
                )]
            );
            assert!(gw.moved_readings().unwrap().is_empty());
            // One new to the table is taken even when its counters stood
            // still, also when another connects before the next reading.
            let fourth = connect(4).await;
            let _ = gw.readings().unwrap();
            let fifth = connect(5).await;
            let next = gw.moved_readings().unwrap();
            assert_eq!(
                next,
                vec![
                    (fourth, MeterMark { epoch: 7, bytes: 0 }),
                    (fifth, MeterMark { epoch: 7, bytes: 0 })
                ]
            );
            assert!(gw.moved_readings().unwrap().is_empty());
            // A device goes, and one that moved meanwhile is still taken.
            gw.disconnect(third, "test").await.unwrap();
            assert!(dp.send(&mac(1), 500));
            let next = gw.moved_readings().unwrap();
            assert_eq!(
                next,
                vec![(
                    ids[1],
                    MeterMark {
                        epoch: 7,
                        bytes: 2_000
                    }
                )]
            );
            assert_eq!(gw.readings().unwrap().len(), 5, "all readings stay whole");
        }
    }

    #[tokio::test]
    async fn a_move_the_datapath_did_not_tell_is_charged_when_the_turn_of_checks_reaches_its_device(
    ) {
        let dp = Arc::new(MemDatapath::new(7));
        let (gw, mgr) = gateway(&dp);
        // One more turn than a reading checks: the last device is checked by the second.
        let n = CHECK_ROWS + 10;
        let mac = |i: usize| MacAddr::new([0x02, 0xcd, 0, 0, (i >> 8) as u8, i as u8]);
        let mut ids = Vec::new();
        for i in 0..n {
            ids.push(connect_new(&gw, &mgr, mac(i)).await);
        }
        assert_eq!(gw.moved_readings().unwrap().len(), n, "a new table: all");
        // The first and the last device move; only the first one's move is told.
        assert!(dp.send(&mac(0), 100));
        assert!(dp.send_untold(&mac(n - 1), 700));
        let first = gw.moved_readings().unwrap();
        assert_eq!(first.len(), 1, "the told move, and no other: {first:?}");
        assert_eq!((first[0].0, first[0].1.bytes), (ids[0], 100));
        let second = gw.moved_readings().unwrap();
        assert_eq!(second.len(), 1, "the untold move, in its turn: {second:?}");
        assert_eq!((second[0].0, second[0].1.bytes), (ids[n - 1], 700));
        gw.charge(&second).await.unwrap();
        let running = mgr.running_session_id(ids[n - 1]).unwrap().unwrap();
        assert_eq!(mgr.session(running).unwrap().data().data_cons_bytes, 700);
        // Charged: the turns that come round again find nothing.
        for _ in 0..3 {
            assert!(gw.moved_readings().unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn the_turn_of_checks_goes_on_where_it_was_when_a_device_connects() {
        let dp = Arc::new(MemDatapath::new(7));
        let (gw, mgr) = gateway(&dp);
        let mac = |i: usize| MacAddr::new([0x02, 0xce, 0, 0, (i >> 8) as u8, i as u8]);
        let connect = |i: usize| connect_new(&gw, &mgr, mac(i));
        let n = CHECK_ROWS + 10;
        let mut ids = Vec::new();
        for i in 0..n {
            ids.push(connect(i).await);
        }
        assert_eq!(gw.moved_readings().unwrap().len(), n, "a new table: all");
        assert!(dp.send_untold(&mac(n - 1), 300));
        assert!(gw.moved_readings().unwrap().is_empty(), "the first turn");
        // A device connects before each reading: the turn still reaches the last row.
        let new = connect(n).await;
        let next = gw.moved_readings().unwrap();
        let mut devices: Vec<DeviceId> = next.iter().map(|r| r.0).collect();
        devices.sort_unstable();
        let mut want = vec![ids[n - 1], new];
        want.sort_unstable();
        assert_eq!(devices, want, "{next:?}");
    }
}
