//! The loop: a poll charges usage and ends sessions, a check corrects the
//! datapath where it differs from the sessions, and what the datapath reports
//! (new clients, cut-offs, address bindings) reaches the gateway here.

use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::{Duration, Instant},
};

use session_common::{POLICY_ALLOWED, POLICY_MANUAL, POLICY_QUOTA};
use session_model::{DeviceId, MacAddr, ModelError};
use tracing::{debug, info, warn};

use super::{
    housekeeping::{
        StoreWork, BINDING_SWEEP_MAX, EXPIRE_PAUSED_EVERY, FORGET_EVERY, GATEWAY_ADDRS_EVERY,
        GC_EVERY,
    },
    Gateway, GatewayEvent, GatewayStats, Mismatch, SlotOwners,
};
use crate::{dataplane::Pressure, error::AgentError};

/// How often the poll checks the datapath against the sessions.
const ENFORCE_EVERY: Duration = Duration::from_secs(1);
/// How often the run loop's poll charges usage (see [`Gateway::poll_round`]).
const CHARGE_EVERY: Duration = Duration::from_secs(1);
/// Slots of the client table one check of the datapath compares with the
/// sessions (see [`Gateway::enforce_sessions`]): a second's check costs
/// about what it costs with 1,000 clients, at any table size, and a full
/// table of 65,536 is checked within 64 s.
const CHECK_SLOTS_PER_RUN: u32 = 1024;

impl Gateway {
    /// One poll: charge every connected device's new bytes, advance time, end and
    /// advance sessions, pause idle devices.
    pub async fn poll(&self) -> Result<(), AgentError> {
        let _g = self.ops.lock().await;
        self.poll_locked(true).await
    }

    /// One round of the run loop's poll (every `--poll-ms`): sessions whose
    /// time runs out or that expire are ended as [`Gateway::poll`] ends them,
    /// but usage is charged once a [`CHARGE_EVERY`], and at once after the
    /// kernel cut a device off (its next session starts then). The kernel
    /// enforces data budgets itself, so charging more often would only
    /// repeat the work for every active device. With an idle timeout every
    /// round charges: the idle watch hears a device through its readings.
    pub async fn poll_round(&self) -> Result<(), AgentError> {
        let _g = self.ops.lock().await;
        let charge = {
            let mut last = self.last_charged.lock().unwrap();
            let due = self.charge_soon.swap(false, Relaxed)
                || self.config().idle_timeout.is_some()
                || last.is_none_or(|t| t.elapsed() >= CHARGE_EVERY);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        self.poll_locked(charge).await
    }

    /// [`Gateway::poll`] with the operations lock held; without `charge`,
    /// no usage is read or charged.
    pub(super) async fn poll_locked(&self, charge: bool) -> Result<(), AgentError> {
        let started = Instant::now();
        let readings = match charge {
            true => self.moved_readings()?,
            false => Vec::new(),
        };
        self.charge(&readings).await?;
        let report = self.mgr.tick()?;
        self.apply(&report)?;
        self.refresh_heard();
        if let Some(idle) = self.config().idle_timeout {
            let now = Instant::now();
            let idle_devices = {
                let mut watch = self.idle_watch.lock().unwrap();
                for (device_id, r) in &readings {
                    watch.heard(*device_id, r.bytes, now);
                }
                watch.idle(now, idle)
            };
            for device_id in idle_devices {
                if !self.mgr.is_connected(device_id)? {
                    // Its session ended meanwhile.
                    self.idle_watch.lock().unwrap().forget(device_id);
                    continue;
                }
                self.disconnect_locked(device_id, "idle timeout").await?;
                let _ = self.events.send(GatewayEvent::IdleTimeout { device_id });
            }
        }
        let due = {
            let mut last = self.last_enforced.lock().unwrap();
            let due = last.is_none_or(|t| t.elapsed() >= ENFORCE_EVERY);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            self.enforce_sessions()?;
        }
        let took = started.elapsed();
        GatewayStats::record(
            &self.stats.polls,
            &self.stats.poll_us_sum,
            &self.stats.poll_us_last,
            took,
        );
        debug!(
            devices = readings.len(),
            took_us = took.as_micros() as u64,
            "poll"
        );
        Ok(())
    }

    /// Checks that the datapath lets through exactly the devices whose session
    /// runs, at their session's speed and with a budget where it has one, and
    /// corrects (and counts, see [`GatewayStats::reconciled`]) any client that
    /// differs. A healthy gateway finds nothing. Each call checks the next
    /// [`CHECK_SLOTS_PER_RUN`] slots of the client table, in turn, so its cost
    /// does not grow with the table: up to that many clients every slot is
    /// checked every second, beyond it every slot within table / window
    /// seconds. Called with the operations lock held.
    pub fn enforce_sessions(&self) -> Result<Vec<(Mismatch, MacAddr)>, AgentError> {
        let first = self.check_cursor.load(Relaxed) as u32;
        let (found, next) = self.enforce_window(first)?;
        self.check_cursor.store(next as usize, Relaxed);
        Ok(found)
    }

    /// [`Gateway::enforce_sessions`] over the whole client table at once (after
    /// a reload changed speeds).
    pub(super) fn enforce_everything(&self) -> Result<Vec<(Mismatch, MacAddr)>, AgentError> {
        let mut found = Vec::new();
        let mut first = 0;
        loop {
            let (f, next) = self.enforce_window(first)?;
            found.extend(f);
            if next == 0 {
                return Ok(found);
            }
            first = next;
        }
    }

    /// The check of the slots from `first` on: what it corrected, and where
    /// the next window starts.
    fn enforce_window(&self, first: u32) -> Result<(Vec<(Mismatch, MacAddr)>, u32), AgentError> {
        let owners = self.slot_owners()?;
        let (clients, next) = self.dp.enforced(first, CHECK_SLOTS_PER_RUN)?;
        // The grants of the connected devices the datapath lets through, in
        // one look (`SessionsMgr::granted_many`), in the order the loop below
        // takes them.
        let let_through: Vec<DeviceId> = clients
            .iter()
            .filter(|c| c.flags & POLICY_ALLOWED != 0)
            .filter_map(|c| owners.get(c.slot))
            .collect();
        let mut grants = self.mgr.granted_many(&let_through)?.into_iter();
        let mut found: Vec<(Mismatch, MacAddr, Option<DeviceId>)> = Vec::new();
        for c in clients {
            let allowed = c.flags & POLICY_ALLOWED != 0;
            let m = match owners.get(c.slot) {
                None if allowed && c.flags & POLICY_MANUAL == 0 => {
                    (Mismatch::AllowedWithoutSession, None)
                }
                None => continue,
                Some(d) if !allowed => (Mismatch::BlockedWhileConnected, Some(d)),
                Some(d) => {
                    let Some(grant) = grants.next().flatten() else {
                        continue;
                    };
                    let (up, down) = self.limits(&grant);
                    let budget = grant.budget_bytes.is_some();
                    if (c.up, c.down) != (up, down) {
                        (Mismatch::Speed, Some(d))
                    } else if budget != (c.flags & POLICY_QUOTA != 0) {
                        (Mismatch::Budget, Some(d))
                    } else {
                        continue;
                    }
                }
            };
            if !found.iter().any(|(_, mac, _)| *mac == c.mac) {
                found.push((m.0, c.mac, m.1));
            }
        }
        for (m, mac, device) in &found {
            warn!(%mac, what = m.name(), "the datapath differed from the sessions: corrected");
            self.stats.reconciled[*m as usize].fetch_add(1, Relaxed);
            match device {
                Some(d) => self.program(&self.mgr.desired(*d)?, false, None)?,
                None => self.revoke(*mac)?,
            }
        }
        Ok((
            found.into_iter().map(|(m, mac, _)| (m, mac)).collect(),
            next,
        ))
    }

    /// Which connected device holds each slot of the client table: the poll's
    /// meter table's, brought up to date, else (a connected device has no slot
    /// yet) looked up, devices without a slot left out: the datapath holds
    /// nothing of them to correct.
    fn slot_owners(&self) -> Result<Arc<SlotOwners>, AgentError> {
        {
            let mut table = self.meter_table.lock().unwrap();
            if self.sync_meter_table(&mut table)? {
                if let Some(t) = table.as_ref() {
                    return Ok(t.owners.clone());
                }
            }
        }
        let mut rows = Vec::new();
        for (device_id, _) in self.mgr.connected()? {
            if let Some(slot) = self.dp.slot_of(&self.mgr.device(device_id)?.mac) {
                rows.push((device_id, slot));
            }
        }
        Ok(Arc::new(SlotOwners::of(&rows)))
    }

    /// After a restart: charge what the kernel counted while the agent was away and
    /// re-program every connected device, keeping live kernel budgets.
    pub async fn reconcile(&self) -> Result<(), AgentError> {
        let _g = self.ops.lock().await;
        let connected = self.mgr.connected()?;
        let mut readings = Vec::new();
        for (device_id, _) in &connected {
            let device = self.mgr.device(*device_id)?;
            readings.push((*device_id, self.reading(device.mac)));
        }
        self.charge(&readings).await?;
        let report = self.mgr.tick()?;
        self.apply(&report)?;
        for (device_id, _) in self.mgr.connected()? {
            self.program(&self.mgr.desired(device_id)?, false, None)?;
        }
        crate::memory::trim();
        info!(
            devices = connected.len(),
            "reconciled sessions with the datapath"
        );
        Ok(())
    }

    /// Polls until [`Gateway::stop`] (or until the task is dropped); a quota
    /// event wakes it early.
    pub async fn run_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config().poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_checkpoint = Instant::now();
        let mut last_commit = Instant::now();
        let mut last_forget = Instant::now();
        let mut last_sweep = Instant::now();
        let mut last_refused_check = Instant::now();
        let mut refused_seen = self.dp.binding_claims_refused().unwrap_or(0);
        let mut last_addrs = Instant::now();
        let mut last_expiry = Instant::now();
        let mut last_gc = Instant::now();
        // systemd's watchdog (WatchdogSec=), pinged once per loop: a loop that
        // stops coming round is restarted.
        let watchdog = crate::systemd::Watchdog::from_env();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.wake.notified() => {}
            }
            if self.stopped.load(Relaxed) {
                return;
            }
            watchdog.ping();
            if let Err(e) = self.poll_round().await {
                self.stats.poll_errors.fetch_add(1, Relaxed);
                warn!("poll failed: {e}");
            }
            // Read each round: a reload may have changed it.
            let cfg = self.config();
            if last_commit.elapsed() >= cfg.commit_interval {
                last_commit = Instant::now();
                self.store_work(StoreWork::Commit).await;
            }
            // Often enough to notice idleness within a quarter of the time,
            // and every second while the table is under pressure; the interval
            // is also the grace before a forgotten slot is reused.
            let every = match cfg.forget_idle {
                _ if self.dp.clients_live() > Pressure::DEFAULT.high as u64 => {
                    Some(Duration::from_secs(1))
                }
                Some(idle) => Some((idle / 4).clamp(Duration::from_secs(1), FORGET_EVERY)),
                None => None,
            };
            if every.is_some_and(|every| last_forget.elapsed() >= every) {
                last_forget = Instant::now();
                // Without forgetting, only the pressure forgets.
                let idle = cfg.forget_idle.unwrap_or(Duration::MAX);
                if let Err(e) = self.forget_idle_clients(idle).await {
                    self.stats.forget_errors.fetch_add(1, Relaxed);
                    warn!("forgetting idle clients failed: {e}");
                }
            }
            // The datapath treats a binding unused for the TTL as free itself
            // (told each round: a reload may change the TTL). The sweep only
            // makes room in the tables and counts each client's addresses
            // again: every four TTLs (at least hourly), and within a quarter
            // TTL of a claim the datapath refused for lack of room.
            self.dp.set_bind_ttl(cfg.bind_ttl);
            let since = last_sweep.elapsed();
            let mut due = since >= (cfg.bind_ttl * 4).min(BINDING_SWEEP_MAX);
            if since >= (cfg.bind_ttl / 4).clamp(Duration::from_secs(1), FORGET_EVERY)
                && last_refused_check.elapsed() >= Duration::from_secs(1)
            {
                last_refused_check = Instant::now();
                let refused = self.dp.binding_claims_refused().unwrap_or(refused_seen);
                due |= refused != refused_seen;
                refused_seen = refused;
            }
            if due {
                last_sweep = Instant::now();
                let gw = self.clone();
                match tokio::task::spawn_blocking(move || gw.sweep_bindings()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        self.stats.binding_sweep_errors.fetch_add(1, Relaxed);
                        warn!("sweeping address bindings failed: {e}");
                    }
                    Err(e) => warn!("sweeping address bindings failed: {e}"),
                }
            }
            // The gateway's addresses change (a WAN address from DHCP, an
            // operator's `ip addr`): what is usage follows within seconds.
            if last_addrs.elapsed() >= GATEWAY_ADDRS_EVERY {
                last_addrs = Instant::now();
                let gw = self.clone();
                match tokio::task::spawn_blocking(move || gw.dp.refresh_gateway_addrs()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!("reading the gateway's addresses failed: {e}"),
                    Err(e) => warn!("reading the gateway's addresses failed: {e}"),
                }
            }
            if last_expiry.elapsed() >= EXPIRE_PAUSED_EVERY {
                last_expiry = Instant::now();
                match self.expire_paused().await {
                    Ok(ended) if !ended.is_empty() => {
                        info!(sessions = ?ended, "paused sessions expired")
                    }
                    Ok(_) => {}
                    Err(e) => warn!("ending expired paused sessions failed: {e}"),
                }
            }
            if let Some(retention) = cfg.retention.filter(|_| last_gc.elapsed() >= GC_EVERY) {
                last_gc = Instant::now();
                self.remove_past_retention(retention).await;
            }
            if last_checkpoint.elapsed() >= cfg.checkpoint_interval {
                last_checkpoint = Instant::now();
                self.store_work(StoreWork::Checkpoint).await;
            }
        }
    }

    /// A MAC seen for the first time: make sure there is a device for it.
    pub fn client_seen(&self, lan: &str, mac: MacAddr) {
        self.stats.ring_new_client.fetch_add(1, Relaxed);
        let m = mac;
        let device_id = match self.mgr.device_by_mac(m) {
            Ok(d) => Some(d.id),
            Err(ModelError::UnknownMac(_)) => match self.mgr.create_device(m, None, None) {
                Ok(d) => Some(d.id),
                Err(e) => {
                    warn!(%mac, "cannot record new client: {e}");
                    None
                }
            },
            Err(e) => {
                warn!(%mac, "cannot look up client: {e}");
                None
            }
        };
        let _ = self.events.send(GatewayEvent::ClientSeen {
            lan: lan.into(),
            mac: mac.to_string(),
            device_id,
        });
    }

    /// The kernel cut a device off: poll now so its next session starts at once.
    pub fn quota_exhausted(&self, lan: &str, mac: MacAddr) {
        self.stats.ring_quota_exhausted.fetch_add(1, Relaxed);
        self.charge_soon.store(true, Relaxed);
        let device_id = self.mgr.device_by_mac(mac).ok().map(|d| d.id);
        let _ = self.events.send(GatewayEvent::QuotaCutoff {
            lan: lan.into(),
            mac: mac.to_string(),
            device_id,
        });
        self.wake.notify_one();
    }

    /// The datapath bound an address to a client.
    pub fn addr_bound(&self, lan: &str, mac: MacAddr, addr: Option<std::net::IpAddr>) {
        self.stats.addrs_bound.fetch_add(1, Relaxed);
        if let Some(a) = addr {
            debug!(lan, %mac, address = %a, "address bound");
        }
    }

    /// A MAC claimed a second IPv4 address while it still used another.
    pub fn mac_conflict(&self, lan: &str, mac: MacAddr, addr: Option<std::net::IpAddr>) {
        self.stats.mac_conflicts.fetch_add(1, Relaxed);
        let address = addr.map(|a| a.to_string()).unwrap_or_default();
        warn!(lan, %mac, %address, "a second IPv4 address from one MAC while it uses another: two devices may share it");
        let device_id = self.mgr.device_by_mac(mac).ok().map(|d| d.id);
        let _ = self.events.send(GatewayEvent::MacConflict {
            lan: lan.into(),
            mac: mac.to_string(),
            address,
            device_id,
        });
    }
}
