//! Meter readings: the kernel's counters of every connected device, charged
//! to their sessions, and the datapath programmed after what that changed.

use std::sync::{atomic::Ordering::Relaxed, Arc};

use session_model::{DeviceId, MacAddr, MeterMark, TickReport};
use tracing::info;

use super::{Gateway, MeterTable, Scratch, SlotOwners, NO_DEVICE};
use crate::error::AgentError;

/// Devices whose counters each reading of moved meters also compares with
/// the last reading, in turn (see [`Gateway::moved_readings`]), among at most
/// [`CHECK_WALK`] slots of the client table: a move the datapath did not tell
/// is charged within devices / 256 or slots / 4,096 readings, whichever is
/// longer (4 at 1,000 devices in the first 1,000 slots, 16 at 1,000 spread
/// over 65,536, 256 at 65,536), at a cost that does not grow with the devices.
const CHECK_ROWS: usize = 256;

/// Slots of the client table a reading's turn of checks walks at most.
const CHECK_WALK: u32 = 4_096;

/// Changes of the connected devices the meter table takes one by one; past
/// this many (a tick that ends many sessions at once), it is made again
/// from every connected device, which costs less than as many moves.
const ONE_BY_ONE: usize = 64;

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
    /// slots to read follows the devices that connect and go (see
    /// [`Gateway::sync_meter_table`]).
    pub fn readings(&self) -> Result<Vec<(DeviceId, MeterMark)>, AgentError> {
        self.read_meters(false)
    }

    /// The readings of the connected devices whose counters moved since the
    /// last call, and of those new to the table since: every device when the
    /// table has no reading yet (at first, after a rekey, after a change of
    /// the idle timeout, after a charge failed) and after the counters were
    /// made anew. The datapath names
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
        let mut table = self.meter_table.lock().unwrap();
        if !self.sync_meter_table(&mut table)? {
            // Some device has no slot yet: read every device the slow way.
            return self.slow_readings();
        }
        let Some(t) = table.as_mut() else {
            return Ok(Vec::new());
        };
        let Some(epoch) = self.dp.epoch() else {
            return Ok(Vec::new());
        };
        // Which slots moved, taken before their counters are read (into
        // buffers kept between polls).
        let mut s = std::mem::take(&mut t.scratch);
        s.clear();
        let known = match moved_only {
            true => self.dp.take_moved(&mut s.slots),
            false => Ok(false),
        };
        // Every device's reading is charged after the counters changed.
        let full = t.prev_epoch != Some(epoch);
        if let (Ok(true), false) = (&known, full) {
            let out = self.read_moved(t, &mut s, epoch);
            t.scratch = s.kept();
            if out.is_err() {
                *table = None;
            }
            return out;
        }
        // Every device's counters.
        s.slots.clear();
        s.slots.extend(t.owners.held_from(0));
        s.bytes.resize(s.slots.len(), 0);
        if let Err(e) = known.and_then(|_| self.dp.usage_into(&s.slots, &mut s.bytes)) {
            // A connected device's entry is never forgotten; if it
            // went all the same, the next poll looks the slots up again.
            *table = None;
            return Err(e);
        }
        let owners = &*t.owners;
        let mark =
            |slot: u32, bytes: u64| (owners.by_slot[slot as usize], MeterMark { epoch, bytes });
        let mut out = Vec::with_capacity(match moved_only && !full {
            true => 0,
            false => s.slots.len(),
        });
        if moved_only {
            t.unread.sort_unstable();
            for (&slot, &bytes) in s.slots.iter().zip(&s.bytes) {
                let prev = &mut t.prev[slot as usize];
                if full || bytes as u32 != *prev || t.unread.binary_search(&slot).is_ok() {
                    out.push(mark(slot, bytes));
                }
                *prev = bytes as u32;
            }
            t.prev_epoch = Some(epoch);
            t.unread = match t.unread.capacity() > Scratch::KEEP {
                true => Vec::new(),
                false => std::mem::take(&mut t.unread),
            };
            t.unread.clear();
        } else {
            out.extend(
                s.slots
                    .iter()
                    .zip(&s.bytes)
                    .map(|(&slot, &b)| mark(slot, b)),
            );
        }
        // A datapath that cannot tell has every counter read at every poll:
        // its buffers are kept.
        t.scratch = match moved_only && !full {
            true => s,
            false => s.kept(),
        };
        Ok(out)
    }

    /// The readings of the devices whose slots moved (in `s.slots`, as the
    /// datapath told them), of those new to the table, and of those among the
    /// next [`CHECK_ROWS`] in turn whose counters differ from their last
    /// reading (a move the datapath did not tell).
    fn read_moved(
        &self,
        t: &mut MeterTable,
        s: &mut Scratch,
        epoch: u64,
    ) -> Result<Vec<(DeviceId, MeterMark)>, AgentError> {
        let owners = &*t.owners;
        let Scratch { slots, bytes } = s;
        // Devices new to the table, as if they had moved.
        slots.append(&mut t.unread);
        if t.unread.capacity() > Scratch::KEEP {
            t.unread = Vec::new();
        }
        slots.retain(|&slot| owners.get(slot).is_some());
        // In slot order, the counter arrays are walked forwards.
        slots.sort_unstable();
        slots.dedup();
        let told = slots.len();
        // The next devices in turn, over at most CHECK_WALK slots (a sparse
        // table is checked over more readings).
        let end = owners.by_slot.len() as u32;
        let mut at = if t.check_at < end { t.check_at } else { 0 };
        let (mut checked, walk_to) = (0, at.saturating_add(CHECK_WALK).min(end));
        while checked < CHECK_ROWS && at < walk_to {
            if owners.by_slot[at as usize] != NO_DEVICE {
                checked += 1;
                if slots[..told].binary_search(&at).is_err() {
                    slots.push(at);
                }
            }
            at += 1;
        }
        t.check_at = at;
        bytes.resize(slots.len(), 0);
        self.dp.usage_into(slots, bytes)?;
        let mut out = Vec::with_capacity(told);
        for (j, (&slot, &b)) in slots.iter().zip(bytes.iter()).enumerate() {
            let prev = &mut t.prev[slot as usize];
            if j < told || b as u32 != *prev {
                *prev = b as u32;
                out.push((owners.by_slot[slot as usize], MeterMark { epoch, bytes: b }));
            }
        }
        Ok(out)
    }

    /// Brings the meter table up to the connected devices: from the devices
    /// whose running session changed since it was last brought up (a few a
    /// second, at any number of devices), else (at first, after a rekey,
    /// when more than [`ONE_BY_ONE`] changed, or more than the manager keeps)
    /// from every connected device,
    /// each slot looked up again. A device the table had in the same slot
    /// keeps its last reading. False when a connected device has no slot yet
    /// (the table is left as it was, to be brought up again).
    pub(super) fn sync_meter_table(
        &self,
        table: &mut Option<MeterTable>,
    ) -> Result<bool, AgentError> {
        let rekeys = self.rekeys.load(Relaxed);
        let generation = self.mgr.connected_generation();
        if let Some(t) = table.as_mut().filter(|t| t.built_at.1 == rekeys) {
            if t.built_at.0 == generation {
                return Ok(true);
            }
            let changes = self.mgr.connected_changes_since(t.built_at.0);
            if let Some((now, mut changed)) = changes {
                changed.sort_unstable();
                changed.dedup();
                if changed.len() <= ONE_BY_ONE {
                    for device in changed {
                        let connected = self.mgr.running_session_id(device)?.is_some();
                        if !self.place(t, device, connected)? {
                            // Looked at again next time: placing is idempotent.
                            return Ok(false);
                        }
                    }
                    t.built_at.0 = now;
                    return Ok(true);
                }
            }
        }
        // Read after the generation: a change in between is looked at again.
        let connected = self.mgr.connected()?;
        let old = table.take().filter(|t| t.built_at.1 == rekeys);
        let mut rows = Vec::with_capacity(connected.len());
        let mut new = Vec::new();
        for &(device, _) in &connected {
            // Every slot looked up again: a device that went and came back
            // may hold another.
            let Some(slot) = self.dp.slot_of(&self.mgr.device(device)?.mac) else {
                *table = old;
                return Ok(false);
            };
            if old.as_ref().and_then(|t| t.owners.slot(device)) != Some(slot) {
                new.push(slot);
            }
            rows.push((device, slot));
        }
        let mut t = old.unwrap_or_else(|| MeterTable {
            built_at: (generation, rekeys),
            owners: Arc::default(),
            prev: Vec::new(),
            prev_epoch: None,
            unread: Vec::new(),
            check_at: 0,
            scratch: Scratch::default(),
        });
        t.built_at = (generation, rekeys);
        t.owners = Arc::new(SlotOwners::of(&rows));
        t.prev.resize(t.owners.by_slot.len(), 0);
        for slot in new {
            // Read at the next reading whatever its counters.
            t.prev[slot as usize] = 0;
            if t.prev_epoch.is_some() {
                t.unread.push(slot);
            }
        }
        *table = Some(t);
        Ok(true)
    }

    /// Puts a connected device in the meter table at the slot the datapath
    /// holds it in, or (`connected` false) takes it out. False when the
    /// datapath holds no slot of the connected device yet.
    fn place(
        &self,
        t: &mut MeterTable,
        device: DeviceId,
        connected: bool,
    ) -> Result<bool, AgentError> {
        let slot = match connected {
            true => match self.dp.slot_of(&self.mgr.device(device)?.mac) {
                Some(slot) => Some(slot),
                None => return Ok(false),
            },
            false => None,
        };
        if t.owners.slot(device) == slot {
            // Back in the same slot, or on to its next session: read at the
            // next reading all the same (its quiet time starts there).
            if let (Some(slot), Some(_)) = (slot, t.prev_epoch) {
                t.unread.push(slot);
            }
            return Ok(true);
        }
        let owners = Arc::make_mut(&mut t.owners);
        match slot {
            Some(slot) => {
                owners.insert(device, slot);
                if t.prev.len() < owners.by_slot.len() {
                    t.prev.resize(owners.by_slot.len(), 0);
                }
                // Read at the next reading whatever its counters (a table
                // with no reading yet reads every device).
                t.prev[slot as usize] = 0;
                if t.prev_epoch.is_some() {
                    t.unread.push(slot);
                }
            }
            None => {
                owners.remove(device);
            }
        }
        Ok(true)
    }

    /// Every connected device's reading, each looked up by its MAC.
    fn slow_readings(&self) -> Result<Vec<(DeviceId, MeterMark)>, AgentError> {
        let connected = self.mgr.connected()?;
        let mut out = Vec::with_capacity(connected.len());
        for (device_id, _) in &connected {
            out.push((*device_id, self.reading(self.mgr.device(*device_id)?.mac)));
        }
        Ok(out)
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
    use crate::{
        datapath::{Datapath, MemDatapath},
        gateway::{GatewayConfig, SlotOwners},
    };

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

    #[tokio::test]
    async fn the_meter_table_follows_devices_that_connect_go_and_are_removed_as_one_built_afresh() {
        let dp = Arc::new(MemDatapath::new(7));
        let (gw, mgr) = gateway(&dp);
        let mac = |i: usize| MacAddr::new([0x02, 0xcf, 0, 0, (i >> 8) as u8, i as u8]);
        let mut made = 0;
        let mut devices = Vec::new();
        for _ in 0..30 {
            devices.push(connect_new(&gw, &mgr, mac(made)).await);
            made += 1;
        }
        let _ = gw.moved_readings().unwrap();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut pick = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for step in 0..400 {
            if step == 200 {
                // More than the table takes one by one.
                for _ in 0..=ONE_BY_ONE {
                    devices.push(connect_new(&gw, &mgr, mac(made)).await);
                    made += 1;
                }
                let _ = gw.moved_readings().unwrap();
            }
            let d = devices[pick(devices.len())];
            match pick(4) {
                0 => {
                    devices.push(connect_new(&gw, &mgr, mac(made)).await);
                    made += 1;
                }
                1 => gw.disconnect(d, "").await.unwrap(),
                // A paused session resumes.
                2 => drop(gw.connect(d, "").await),
                _ if devices.len() > 5 => {
                    gw.remove_device(d, true).await.unwrap();
                    devices.retain(|&x| x != d);
                }
                _ => {}
            }
            if pick(3) > 0 {
                continue;
            }
            let _ = gw.moved_readings().unwrap();
            let afresh: Vec<(DeviceId, u32)> = mgr
                .connected()
                .unwrap()
                .iter()
                .map(|&(d, _)| (d, dp.slot_of(&mgr.device(d).unwrap().mac).unwrap()))
                .collect();
            let afresh = SlotOwners::of(&afresh);
            let table = gw.meter_table.lock().unwrap();
            let owners = &table.as_ref().unwrap().owners;
            assert_eq!(
                (&owners.devices, &owners.slots),
                (&afresh.devices, &afresh.slots),
                "step {step}"
            );
            assert!(
                owners.held_from(0).eq(afresh.held_from(0)),
                "step {step}: {:?}",
                owners.by_slot
            );
        }
    }

    #[test]
    fn a_device_put_in_a_slot_another_held_takes_it_over() {
        let mut owners = SlotOwners::of(&[(3, 5), (1, 2), (2, 9)]);
        assert_eq!(owners.held_from(0).collect::<Vec<_>>(), vec![2, 5, 9]);
        assert_eq!(owners.held_from(3).collect::<Vec<_>>(), vec![5, 9]);
        // Device 4 takes slot 5 from device 3; device 1 moves to slot 0.
        owners.insert(4, 5);
        owners.insert(1, 0);
        assert_eq!((owners.get(5), owners.slot(3)), (Some(4), None));
        assert_eq!((owners.get(2), owners.slot(1)), (None, Some(0)));
        assert_eq!(owners.devices, vec![1, 2, 4]);
        assert_eq!(owners.slots, vec![0, 9, 5]);
        assert_eq!(owners.remove(2), Some(9));
        assert_eq!(owners.remove(2), None);
        assert_eq!(owners.held_from(0).collect::<Vec<_>>(), vec![0, 5]);
    }
}
