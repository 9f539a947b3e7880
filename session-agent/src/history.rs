//! The gateway's traffic history, for the operator page's charts: what
//! crossed the gateway per minute (the last 24 hours) and per day (the last
//! 400 days, the gateway's local days), each busy client's traffic per minute (the last hour) and per
//! hour (the last 24 hours).
//!
//! Once a minute the connected clients' up and down counters are read from
//! the datapath and compared with the last minute's; what moved is written
//! to the store's shelves in one durable write, and the records that fell
//! out of their window are removed in the same write. The history is thus
//! bounded on disk: at 1,000 clients active every minute, about 1.4 MB for
//! the last hour per client, 0.6 MB for the hours, 23 kB of minutes and 6 kB
//! of days ([`bound_bytes`]).
//!
//! A client counts from when the history first sees it connected: newly
//! connected clients are looked for every [`NEW_CLIENTS_EVERY`] (when the
//! connected devices changed), so a minute misses at most those first
//! seconds of theirs. After a restart, clients count from the first look:
//! their earlier counters are not this minute's traffic. A minute the agent
//! was down has no record.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use session_model::{DeviceId, MacAddr, Shelf, ShelfWrite};

use crate::{error::AgentError, gateway::Gateway};

/// Minutes of totals kept (24 h).
pub const MINUTES_KEPT: u64 = 1_440;
/// Minutes of per-client traffic kept (1 h).
pub const CLIENT_MINUTES_KEPT: u64 = 60;
/// Hours of per-client traffic kept.
pub const CLIENT_HOURS_KEPT: u64 = 24;
/// Days of totals kept.
pub const DAYS_KEPT: u64 = 400;
/// Clients a minute's or an hour's record holds at most (the busiest).
pub const MAX_CLIENTS: usize = 4_096;
/// How often newly connected clients are looked for.
pub const NEW_CLIENTS_EVERY: Duration = Duration::from_secs(5);
/// Bytes of one client in a record: device id, up, down.
const CLIENT_BYTES: usize = 24;

/// Up and down bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    pub up: u64,
    pub down: u64,
}

impl Moved {
    fn add(&mut self, o: Moved) {
        self.up = self.up.saturating_add(o.up);
        self.down = self.down.saturating_add(o.down);
    }

    fn total(self) -> u64 {
        self.up.saturating_add(self.down)
    }
}

/// The history on disk at `clients` clients active every minute, in bytes
/// (records' values; the store adds its own pages).
pub fn bound_bytes(clients: usize) -> u64 {
    let per_record = (clients.min(MAX_CLIENTS) * CLIENT_BYTES) as u64;
    CLIENT_MINUTES_KEPT * per_record
        + CLIENT_HOURS_KEPT * per_record
        + MINUTES_KEPT * 16
        + DAYS_KEPT * 16
}

/// The gateway's local day of Unix second `secs`, as days since 1970-01-01.
pub fn local_day(secs: i64) -> u64 {
    use chrono::TimeZone;
    let date = chrono::Local
        .timestamp_opt(secs, 0)
        .earliest()
        .map_or_else(chrono::NaiveDate::default, |t| t.date_naive());
    (date - chrono::NaiveDate::default()).num_days().max(0) as u64
}

fn key(n: u64) -> String {
    format!("{n:012}")
}

fn enc_moved(m: Moved) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&m.up.to_le_bytes());
    v.extend_from_slice(&m.down.to_le_bytes());
    v
}

fn dec_moved(b: &[u8]) -> Option<Moved> {
    Some(Moved {
        up: u64::from_le_bytes(b.get(0..8)?.try_into().ok()?),
        down: u64::from_le_bytes(b.get(8..16)?.try_into().ok()?),
    })
}

fn enc_clients(c: &[(DeviceId, Moved)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(c.len() * CLIENT_BYTES);
    for (d, m) in c {
        v.extend_from_slice(&d.to_le_bytes());
        v.extend_from_slice(&enc_moved(*m));
    }
    v
}

fn dec_clients(b: &[u8]) -> impl Iterator<Item = (DeviceId, Moved)> + '_ {
    b.chunks_exact(CLIENT_BYTES).filter_map(|c| {
        let d = DeviceId::from_le_bytes(c[0..8].try_into().ok()?);
        Some((d, dec_moved(&c[8..])?))
    })
}

/// The busiest `MAX_CLIENTS` of `m`, by device id.
fn busiest(m: &HashMap<DeviceId, Moved>) -> Vec<(DeviceId, Moved)> {
    let mut v: Vec<(DeviceId, Moved)> = m
        .iter()
        .filter(|(_, x)| x.total() > 0)
        .map(|(d, x)| (*d, *x))
        .collect();
    if v.len() > MAX_CLIENTS {
        v.sort_unstable_by_key(|(_, x)| std::cmp::Reverse(x.total()));
        v.truncate(MAX_CLIENTS);
    }
    v.sort_unstable_by_key(|(d, _)| *d);
    v
}

/// The history and the counters it compares with.
pub struct History {
    gw: Arc<Gateway>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Each client's counters at the last sample, and the datapath's epoch then.
    last: HashMap<DeviceId, Moved>,
    epoch: Option<u64>,
    macs: HashMap<DeviceId, MacAddr>,
    /// Totals per minute, oldest first.
    minutes: VecDeque<(u64, Moved)>,
    /// Totals per day.
    days: BTreeMap<u64, Moved>,
    /// The connected devices' generation at the last look for new ones.
    generation: Option<u64>,
    /// Connected devices the last look found without counters (the datapath
    /// had no slot of them yet): looked at again at the next.
    pending: Vec<DeviceId>,
    /// The running hour and its clients' sums.
    hour: u64,
    hour_clients: HashMap<DeviceId, Moved>,
}

impl Inner {
    /// `device`'s counters now; none when the client has no slot.
    fn counters(
        &mut self,
        mgr: &session_model::SessionsMgr,
        dp: &dyn crate::datapath::Datapath,
        device: DeviceId,
    ) -> Result<Option<Moved>, AgentError> {
        let mac = match self.macs.get(&device) {
            Some(m) => *m,
            None => {
                let m = mgr.device(device)?.mac;
                self.macs.insert(device, m);
                m
            }
        };
        let Some(slot) = dp.slot_of(&mac) else {
            return Ok(None);
        };
        let (up, down) = dp.usage_split(slot)?;
        Ok(Some(Moved { up, down }))
    }
}

impl History {
    /// The history kept in `gw`'s store, read back at `now` (Unix seconds).
    pub fn open(gw: Arc<Gateway>, now: i64) -> Result<Arc<Self>, AgentError> {
        let store = gw.sessions().store().clone();
        let minute = (now.max(0) as u64) / 60;
        let mut inner = Inner::default();
        for (k, v) in store
            .shelf_from(
                Shelf::MinuteTotals,
                &key(minute.saturating_sub(MINUTES_KEPT)),
            )
            .map_err(session_model::ModelError::from)?
        {
            if let (Ok(m), Some(x)) = (k.parse::<u64>(), dec_moved(&v)) {
                inner.minutes.push_back((m, x));
            }
        }
        for (k, v) in store
            .shelf(Shelf::DayTotals)
            .map_err(session_model::ModelError::from)?
        {
            if let (Ok(d), Some(x)) = (k.parse::<u64>(), dec_moved(&v)) {
                inner.days.insert(d, x);
            }
        }
        inner.hour = minute / 60;
        if let Some((_, v)) = store
            .shelf_from(Shelf::HourClients, &key(inner.hour))
            .map_err(session_model::ModelError::from)?
            .into_iter()
            .find(|(k, _)| *k == key(inner.hour))
        {
            inner.hour_clients = dec_clients(&v).collect();
        }
        Ok(Arc::new(Self {
            gw,
            inner: Mutex::new(inner),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Samples at every minute's end until the task is dropped, and looks
    /// for newly connected clients in between.
    pub async fn run(self: Arc<Self>) {
        loop {
            let now = chrono::Utc::now();
            let into = now.timestamp().rem_euclid(60) as u64 * 1000
                + u64::from(now.timestamp_subsec_millis());
            let to_minute = Duration::from_millis(60_000 - into.min(59_999));
            if to_minute > NEW_CLIENTS_EVERY {
                tokio::time::sleep(NEW_CLIENTS_EVERY).await;
                let me = self.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || me.look_for_new()).await {
                    tracing::debug!("history: new clients not looked for: {e}");
                }
                continue;
            }
            tokio::time::sleep(to_minute).await;
            let me = self.clone();
            let at = chrono::Utc::now().timestamp();
            let done = tokio::task::spawn_blocking(move || me.sample(at)).await;
            match done {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!("history: a minute not recorded: {e}"),
                Err(e) => tracing::warn!("history: a minute not recorded: {e}"),
            }
        }
    }

    /// Takes the counters of clients connected since the last look as where
    /// they start; nothing is read while the connected devices stay the same,
    /// and only the devices whose running session changed are looked at (every
    /// connected device at the first look, after the counters were made anew,
    /// or when more changed than the session manager keeps).
    pub fn look_for_new(&self) -> Result<usize, AgentError> {
        let mgr = self.gw.sessions();
        let dp = self.gw.datapath();
        let generation = mgr.connected_generation();
        let epoch = dp.epoch();
        let (since, same_epoch, pending) = {
            let g = self.lock();
            (g.generation, g.epoch == epoch, !g.pending.is_empty())
        };
        if since == Some(generation) && same_epoch && !pending {
            return Ok(0);
        }
        let changes = since
            .filter(|_| same_epoch)
            .and_then(|g| mgr.connected_changes_since(g));
        let (generation, devices) = match changes {
            Some((now, mut changed)) => {
                changed.sort_unstable();
                changed.dedup();
                let mut connected = Vec::with_capacity(changed.len());
                for device in changed {
                    if mgr.running_session_id(device)?.is_some() {
                        connected.push(device);
                    }
                }
                (now, connected)
            }
            None => (
                generation,
                mgr.connected()?.into_iter().map(|(d, _)| d).collect(),
            ),
        };
        let mut g = self.lock();
        let mut devices = devices;
        if !g.pending.is_empty() {
            devices.append(&mut g.pending);
            devices.sort_unstable();
            devices.dedup();
        }
        g.generation = Some(generation);
        if epoch != g.epoch {
            // New counters (or the first look): nothing to compare with.
            g.last.clear();
            g.epoch = epoch;
        }
        let mut found = 0;
        for device in &devices {
            // One found before may have gone since (and been removed).
            if g.last.contains_key(device) || mgr.running_session_id(*device)?.is_none() {
                continue;
            }
            let Some(cur) = g.counters(mgr, dp, *device)? else {
                // Without a client table there is nothing to look at again.
                if epoch.is_some() {
                    g.pending.push(*device);
                }
                continue;
            };
            g.last.insert(*device, cur);
            found += 1;
        }
        Ok(found)
    }

    /// Records the minute that ended at `now` (Unix seconds): what each
    /// connected client moved since the last sample. Returns the minute's totals.
    pub fn sample(&self, now: i64) -> Result<Moved, AgentError> {
        let minute = (now.max(60) as u64) / 60 - 1;
        let mgr = self.gw.sessions();
        let dp = self.gw.datapath();
        let connected = mgr.connected()?;
        let mut g = self.lock();
        let epoch = dp.epoch();
        if epoch != g.epoch {
            // New counters: nothing to compare with.
            g.last.clear();
            g.epoch = epoch;
        }
        let mut now_counters = HashMap::with_capacity(connected.len());
        let mut this = HashMap::new();
        let mut total = Moved::default();
        for (device, _) in &connected {
            let Some(cur) = g.counters(mgr, dp, *device)? else {
                continue;
            };
            if let Some(prev) = g.last.get(device) {
                let d = Moved {
                    up: cur.up.saturating_sub(prev.up),
                    down: cur.down.saturating_sub(prev.down),
                };
                if d.total() > 0 {
                    total.add(d);
                    this.insert(*device, d);
                }
            }
            now_counters.insert(*device, cur);
        }
        g.macs.retain(|d, _| now_counters.contains_key(d));
        g.last = now_counters;

        // The running hour: a new one writes the last one whole.
        let hour = minute / 60;
        let mut writes_owned: Vec<(Shelf, String, Option<Vec<u8>>)> = Vec::new();
        if hour != g.hour {
            let old = std::mem::take(&mut g.hour_clients);
            writes_owned.push((
                Shelf::HourClients,
                key(g.hour),
                Some(enc_clients(&busiest(&old))),
            ));
            g.hour = hour;
        }
        for (d, m) in &this {
            g.hour_clients.entry(*d).or_default().add(*m);
        }
        let day = local_day((minute * 60) as i64);
        g.days.entry(day).or_default().add(total);
        while g.days.len() as u64 > DAYS_KEPT {
            let first = *g.days.keys().next().expect("not empty");
            g.days.remove(&first);
            writes_owned.push((Shelf::DayTotals, key(first), None));
        }
        g.minutes.push_back((minute, total));
        while g
            .minutes
            .front()
            .is_some_and(|(m, _)| *m + MINUTES_KEPT <= minute)
        {
            g.minutes.pop_front();
        }
        writes_owned.push((Shelf::MinuteTotals, key(minute), Some(enc_moved(total))));
        writes_owned.push((
            Shelf::MinuteTotals,
            key(minute.saturating_sub(MINUTES_KEPT)),
            None,
        ));
        writes_owned.push((
            Shelf::MinuteClients,
            key(minute),
            Some(enc_clients(&busiest(&this))),
        ));
        writes_owned.push((
            Shelf::MinuteClients,
            key(minute.saturating_sub(CLIENT_MINUTES_KEPT)),
            None,
        ));
        writes_owned.push((
            Shelf::HourClients,
            key(hour),
            Some(enc_clients(&busiest(&g.hour_clients))),
        ));
        writes_owned.push((
            Shelf::HourClients,
            key(hour.saturating_sub(CLIENT_HOURS_KEPT)),
            None,
        ));
        writes_owned.push((Shelf::DayTotals, key(day), Some(enc_moved(g.days[&day]))));
        drop(g);
        let writes: Vec<ShelfWrite<'_>> = writes_owned
            .iter()
            .map(|(shelf, key, value)| ShelfWrite {
                shelf: *shelf,
                key,
                value: value.as_deref(),
            })
            .collect();
        mgr.store()
            .write_shelves(&writes)
            .map_err(session_model::ModelError::from)?;
        Ok(total)
    }

    /// Totals per minute from minute `from` (Unix minutes) on, oldest first.
    pub fn minutes(&self, from: u64) -> Vec<(u64, Moved)> {
        self.lock()
            .minutes
            .iter()
            .filter(|(m, _)| *m >= from)
            .copied()
            .collect()
    }

    /// Totals per local day ([`local_day`]) from day `from` on.
    pub fn days(&self, from: u64) -> Vec<(u64, Moved)> {
        self.lock()
            .days
            .range(from..)
            .map(|(d, m)| (*d, *m))
            .collect()
    }

    /// What each busy client moved in the last recorded minute, and that minute.
    pub fn last_minute(&self) -> Result<(u64, HashMap<DeviceId, Moved>), AgentError> {
        let Some(minute) = self.lock().minutes.back().map(|(m, _)| *m) else {
            return Ok((0, HashMap::new()));
        };
        let records = self
            .gw
            .sessions()
            .store()
            .shelf_from(Shelf::MinuteClients, &key(minute))
            .map_err(session_model::ModelError::from)?;
        let clients = records
            .into_iter()
            .find(|(k, _)| *k == key(minute))
            .map(|(_, v)| dec_clients(&v).collect())
            .unwrap_or_default();
        Ok((minute, clients))
    }

    /// What `device` moved per minute from minute `from` on (the last hour at most).
    pub fn client_minutes(
        &self,
        device: DeviceId,
        from: u64,
    ) -> Result<Vec<(u64, Moved)>, AgentError> {
        let records = self
            .gw
            .sessions()
            .store()
            .shelf_from(Shelf::MinuteClients, &key(from))
            .map_err(session_model::ModelError::from)?;
        Ok(records
            .into_iter()
            .filter_map(|(k, v)| {
                let m = k.parse::<u64>().ok()?;
                let x = dec_clients(&v).find(|(d, _)| *d == device)?.1;
                Some((m, x))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::MemDatapath;
    use crate::gateway::GatewayConfig;
    use session_model::{ManualClock, MemoryStore, SessionsMgr};

    const T0: i64 = 1_800_000_000;

    type Setup = (
        Arc<Gateway>,
        Arc<MemDatapath>,
        tokio::runtime::Runtime,
        Vec<(DeviceId, MacAddr)>,
    );

    fn setup() -> Setup {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mgr = Arc::new(SessionsMgr::new(
            Arc::new(MemoryStore::new()),
            Arc::new(ManualClock::new(T0)),
        ));
        let dp = Arc::new(MemDatapath::new(1));
        let gw = rt.block_on(async {
            Gateway::with_datapath(mgr.clone(), dp.clone(), GatewayConfig::default())
        });
        let mut devices = Vec::new();
        for i in 1..=2u8 {
            let mac = MacAddr::new([2, 0, 0, 0, 0, i]);
            let d = mgr.create_device(mac, None, None).unwrap().id;
            rt.block_on(async {
                mgr.create_session(d, 0, 3600, 0.0, None, 0, 0, true)
                    .await
                    .unwrap();
                gw.connect(d, "test").await.unwrap();
            });
            devices.push((d, mac));
        }
        (gw, dp, rt, devices)
    }

    #[test]
    fn each_minute_records_what_moved_since_the_last_and_survives_a_reopen() {
        let (gw, dp, _rt, devs) = setup();
        let h = History::open(gw.clone(), T0).unwrap();
        dp.send(&devs[0].1, 1_000);
        // First sight: earlier counters are not this minute's.
        assert_eq!(h.sample(T0 + 60).unwrap().total(), 0);
        dp.send(&devs[0].1, 300);
        dp.send(&devs[1].1, 50);
        let m = h.sample(T0 + 120).unwrap();
        assert_eq!(m.total(), 350);
        let minute = (T0 as u64 + 120) / 60 - 1;
        assert_eq!(h.minutes(minute), vec![(minute, m)]);
        assert_eq!(
            h.client_minutes(devs[0].0, minute).unwrap(),
            vec![(minute, Moved { up: 0, down: 300 })]
        );
        let (last, clients) = h.last_minute().unwrap();
        assert_eq!(last, minute);
        assert_eq!(clients[&devs[1].0].total(), 50);
        // Nothing moved: a minute of nothing.
        assert_eq!(h.sample(T0 + 180).unwrap().total(), 0);
        let day = local_day((minute * 60) as i64);
        assert_eq!(h.days(day)[0].1.total(), 350);

        let again = History::open(gw, T0 + 200).unwrap();
        assert_eq!(again.minutes(0).len(), 3, "the minutes are read back");
        assert_eq!(again.days(0)[0].1.total(), 350, "and the days");
    }

    #[test]
    fn a_client_seen_connected_before_the_datapath_held_it_is_looked_at_again() {
        let (gw, dp, rt, _devs) = setup();
        let h = History::open(gw.clone(), T0).unwrap();
        h.sample(T0).unwrap();
        assert_eq!(h.look_for_new().unwrap(), 0);
        // Connected in the sessions, not yet given a slot by the datapath
        // (the gateway programs it just after).
        let mac = MacAddr::new([2, 0, 0, 0, 0, 8]);
        let d = gw.sessions().create_device(mac, None, None).unwrap().id;
        rt.block_on(async {
            gw.sessions()
                .create_session(d, 0, 3600, 0.0, None, 0, 0, true)
                .await
                .unwrap();
            gw.sessions().connect(d, "test").await.unwrap();
        });
        assert_eq!(h.look_for_new().unwrap(), 0, "no counters yet");
        dp.send(&mac, 1);
        assert_eq!(h.look_for_new().unwrap(), 1, "with no other change since");
        assert_eq!(h.look_for_new().unwrap(), 0);
    }

    #[test]
    fn a_client_connected_within_a_minute_counts_from_when_it_was_first_seen() {
        let (gw, dp, rt, devs) = setup();
        let h = History::open(gw.clone(), T0).unwrap();
        h.sample(T0).unwrap();
        let mac = MacAddr::new([2, 0, 0, 0, 0, 9]);
        let d = gw.sessions().create_device(mac, None, None).unwrap().id;
        dp.send(&mac, 5_000); // before it paid: not this minute's
        rt.block_on(async {
            gw.sessions()
                .create_session(d, 0, 3600, 0.0, None, 0, 0, true)
                .await
                .unwrap();
            gw.connect(d, "test").await.unwrap();
        });
        assert_eq!(h.look_for_new().unwrap(), 1);
        assert_eq!(h.look_for_new().unwrap(), 0, "nothing changed since");
        // A history that has not sampled yet (the agent just started) takes
        // every connected client at its first look.
        let fresh = History::open(gw.clone(), T0).unwrap();
        assert_eq!(fresh.look_for_new().unwrap(), 3);
        dp.send(&mac, 700);
        dp.send(&devs[0].1, 1);
        let m = h.sample(T0 + 60).unwrap();
        assert_eq!(
            m.total(),
            701,
            "the new client's bytes since it was seen, and the others'"
        );
    }

    #[test]
    fn old_records_leave_their_window_in_the_same_write() {
        let (gw, dp, _rt, devs) = setup();
        let h = History::open(gw.clone(), T0).unwrap();
        h.sample(T0).unwrap();
        for i in 1..=(CLIENT_MINUTES_KEPT as i64 + 5) {
            dp.send(&devs[1].1, 10);
            h.sample(T0 + i * 60).unwrap();
        }
        let store = gw.sessions().store();
        assert_eq!(
            store.shelf(Shelf::MinuteClients).unwrap().len() as u64,
            CLIENT_MINUTES_KEPT,
            "an hour of per-client minutes is kept"
        );
        // Minutes 29,999,999 to 30,000,064: hours 499,999 to 500,001.
        assert_eq!(store.shelf(Shelf::HourClients).unwrap().len(), 3);
        let hours: u64 = store
            .shelf(Shelf::HourClients)
            .unwrap()
            .iter()
            .flat_map(|(_, v)| dec_clients(v).map(|(_, m)| m.total()).collect::<Vec<_>>())
            .sum();
        assert_eq!(
            hours,
            10 * (CLIENT_MINUTES_KEPT + 5),
            "the hours hold every minute's bytes"
        );
        assert!(bound_bytes(1_000) < 3_000_000, "{}", bound_bytes(1_000));
    }
}
