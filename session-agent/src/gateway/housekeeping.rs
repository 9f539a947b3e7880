//! The gateway's upkeep between polls: paused sessions that expire, ended
//! sessions past retention, idle clients forgotten, address bindings swept,
//! the store committed and checkpointed, and how long a MAC was silent.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

use session_common::MAX_CLIENTS;
use session_model::{DeviceId, MacAddr, ModelError};
use tracing::{debug, info, warn};

use super::{Gateway, GatewayEvent, GatewayStats, Heard, HEARD_FOR, MAX_HEARD};
use crate::{dataplane::Pressure, error::AgentError};

/// Longest interval between two runs of forgetting idle clients.
pub(super) const FORGET_EVERY: Duration = Duration::from_secs(60);
/// Longest interval between two sweeps of the address bindings.
pub(super) const BINDING_SWEEP_MAX: Duration = Duration::from_secs(3600);
/// How often the gateway's own addresses are read again from the kernel.
pub(super) const GATEWAY_ADDRS_EVERY: Duration = Duration::from_secs(2);
/// How often paused sessions are checked for expiry (a scan of every session).
pub(super) const EXPIRE_PAUSED_EVERY: Duration = Duration::from_secs(5);
/// How often sessions and devices past retention are removed.
pub(super) const GC_EVERY: Duration = Duration::from_secs(60);

/// Bulk store work of the run loop.
#[derive(Debug, Clone, Copy)]
pub(super) enum StoreWork {
    /// Usage charged by polls written like any other store write.
    Commit,
    /// The store's checkpoint (hybrid: the log folded into redb).
    Checkpoint,
}

impl Gateway {
    /// Ends paused sessions that expired (see [`SessionsMgr::expire_paused`]).
    pub async fn expire_paused(&self) -> Result<Vec<u64>, AgentError> {
        let _g = self.ops.lock().await;
        Ok(self.mgr.expire_paused()?)
    }

    /// Removes sessions that ended `retention_secs` ago, then devices left
    /// with no session that no LAN's client table holds any more (forgotten
    /// idle clients: phones with random MACs would otherwise grow the store
    /// forever) and that are older than that. Runs under the lock that
    /// connects, polls and changes sessions take, so nothing is revived
    /// meanwhile. Returns the sessions and the devices removed.
    pub async fn gc(&self, retention_secs: i64) -> Result<(Vec<u64>, Vec<DeviceId>), AgentError> {
        let _g = self.ops.lock().await;
        let sessions = self.mgr.gc(retention_secs)?;
        let now = self.mgr.clock().now_secs();
        let mut devices = Vec::new();
        for d in self.mgr.store().devices().map_err(ModelError::from)? {
            if d.created_at.saturating_add(retention_secs) > now {
                continue;
            }
            if self.dp.slot_of(&d.mac).is_some()
                || !self
                    .mgr
                    .store()
                    .device_sessions(d.id)
                    .map_err(ModelError::from)?
                    .is_empty()
            {
                continue;
            }
            match self.mgr.remove_device(d.id) {
                Ok(()) => devices.push(d.id),
                Err(ModelError::DeviceConnected(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok((sessions, devices))
    }

    /// [`Gateway::gc`] with `retention`, logged.
    pub(super) async fn remove_past_retention(&self, retention: Duration) {
        let secs = retention.as_secs().min(i64::MAX as u64) as i64;
        match self.gc(secs).await {
            Ok((sessions, devices)) if !sessions.is_empty() || !devices.is_empty() => {
                info!(
                    sessions = sessions.len(),
                    devices = devices.len(),
                    "removed ended sessions, and forgotten devices without sessions, past retention"
                )
            }
            Ok(_) => {}
            Err(e) => warn!("session garbage collection failed: {e}"),
        }
    }

    /// Removes address bindings unused for the TTL (free in the datapath
    /// already), and counts each client's addresses again.
    pub(super) fn sweep_bindings(&self) -> Result<(), AgentError> {
        let done = self.dp.sweep_bindings(self.config().bind_ttl)?;
        self.stats.bindings_expired.fetch_add(done.expired, Relaxed);
        if done.expired > 0 {
            debug!(
                expired = done.expired,
                live = done.live,
                "address bindings expired"
            );
        }
        self.stats.bindings_live.store(done.live, Relaxed);
        Ok(())
    }

    /// Forgets clients that are not allowed and have been idle
    /// for `idle`, except connected devices' (see [`Maps::forget_idle`]).
    pub(super) async fn forget_idle_clients(&self, idle: Duration) -> Result<(), AgentError> {
        let _g = self.ops.lock().await;
        let mut keep = std::collections::HashSet::new();
        for (device_id, _) in self.mgr.connected()? {
            keep.insert(self.mgr.device(device_id)?.mac);
        }
        let now = Instant::now();
        let mut tracker = self.idle_clients.lock().unwrap();
        let done = self
            .dp
            .forget_idle(&mut tracker, now, idle, Pressure::DEFAULT, &|mac| {
                keep.contains(mac)
            })?;
        self.stats
            .clients_forgotten
            .fetch_add(done.retired as u64, Relaxed);
        if done.pressed > 0 {
            self.stats
                .clients_pressed
                .fetch_add(done.pressed as u64, Relaxed);
            self.stats.pressure_runs.fetch_add(1, Relaxed);
            let clients = (self.dp.clients_live() as u32).saturating_sub(done.retired);
            warn!(
                clients,
                capacity = MAX_CLIENTS,
                reclaimed = done.pressed,
                "client table under pressure (a flood of MACs?): forgot the least recently active clients that had not paid"
            );
            let _ = self.events.send(GatewayEvent::TablePressure {
                clients,
                capacity: MAX_CLIENTS,
                reclaimed: done.pressed,
            });
        }
        self.stats
            .slots_reclaimed
            .fetch_add(done.reclaimed as u64, Relaxed);
        if done.retired > 0 || done.freed > 0 || done.reclaimed > 0 {
            info!(
                forgotten = done.retired,
                slots_freed = done.freed,
                slots_reclaimed = done.reclaimed,
                free_slots = self.dp.free_slots(),
                "forgot idle clients"
            );
        }
        Ok(())
    }

    /// Runs a bulk store operation (writes and fsyncs) on a blocking thread,
    /// off the async runtime, and returns freed memory to the system after it;
    /// records its duration when it succeeded, or counts it and logs why not.
    pub(super) async fn store_work(self: &Arc<Self>, work: StoreWork) {
        let gw = self.clone();
        let done = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let done = match work {
                StoreWork::Commit => gw.mgr.flush(),
                StoreWork::Checkpoint => gw.mgr.checkpoint(),
            };
            crate::memory::trim();
            done.map(|()| started.elapsed()).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let s = &self.stats;
        let (what, count, sum, last, errors) = match work {
            StoreWork::Commit => (
                "committing usage to the store",
                &s.commits,
                &s.commit_us_sum,
                &s.commit_us_last,
                &s.commit_errors,
            ),
            StoreWork::Checkpoint => (
                "store checkpoint",
                &s.checkpoints,
                &s.checkpoint_us_sum,
                &s.checkpoint_us_last,
                &s.checkpoint_errors,
            ),
        };
        match done {
            Ok(took) => GatewayStats::record(count, sum, last, took),
            Err(e) => {
                errors.fetch_add(1, Relaxed);
                warn!("{what} failed: {e}");
            }
        }
    }

    /// How long nothing was heard from `mac` (no packet sent, received or
    /// dropped), as far as the gateway knows: the poll's watch of it, or the
    /// runs that forget idle clients, tell since when its count stands still
    /// (neither knows: zero). The MAC is watched from now on, so a later
    /// question is answered within a poll interval. `None` for a MAC the
    /// client table does not hold and that was not watched when it left:
    /// nothing is known of it (a client forgotten as idle, or one never seen
    /// nor let through).
    pub fn silent_for(&self, mac: MacAddr) -> Result<Option<Duration>, AgentError> {
        let now = Instant::now();
        let packets = match self.dp.slot_of(&mac) {
            Some(slot) => self.dp.packets(slot)?.map(|p| (slot, p)),
            None => None,
        };
        let Some((slot, packets)) = packets else {
            let mut heard = self.heard.lock().unwrap();
            return Ok(heard.get_mut(&mac).map(|h| {
                h.asked = now;
                now.saturating_duration_since(h.since)
            }));
        };
        let forgetting = self.idle_clients.lock().unwrap().quiet_since(slot, packets);
        let mut heard = self.heard.lock().unwrap();
        let since = match heard.get(&mac) {
            Some(h) if h.packets == packets => h.since,
            _ => forgetting.unwrap_or(now),
        };
        if heard.len() >= MAX_HEARD && !heard.contains_key(&mac) {
            if let Some(oldest) = heard.iter().min_by_key(|(_, h)| h.asked).map(|(m, _)| *m) {
                heard.remove(&oldest);
            }
        }
        heard.insert(
            mac,
            Heard {
                packets,
                since,
                asked: now,
            },
        );
        Ok(Some(now.saturating_duration_since(since)))
    }

    /// Follows the activity of the MACs [`Gateway::silent_for`] was asked
    /// about; one nobody asked about for [`HEARD_FOR`] is no longer watched.
    /// A count that cannot be read is taken as activity: the MAC is not
    /// thought silent for what the gateway could not see.
    pub(super) fn refresh_heard(&self) {
        let mut heard = self.heard.lock().unwrap();
        if heard.is_empty() {
            return;
        }
        let now = Instant::now();
        heard.retain(|_, h| now.duration_since(h.asked) < HEARD_FOR);
        for (mac, h) in heard.iter_mut() {
            // A MAC that left the table stays as it was: silent.
            let Some(slot) = self.dp.slot_of(mac) else {
                continue;
            };
            match self.dp.packets(slot) {
                Ok(Some(p)) if p == h.packets => {}
                Ok(Some(p)) => (h.packets, h.since) = (p, now),
                Ok(None) => {}
                Err(e) => {
                    debug!(%mac, "reading a watched client's packet count failed: {e}");
                    h.since = now;
                }
            }
        }
    }
}
