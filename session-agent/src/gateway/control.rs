//! What operators, portals and features do to a device: connect, disconnect,
//! change a session, move a device to a new MAC; each programs the datapath
//! to the session manager's decision.

use std::sync::atomic::Ordering::Relaxed;

use session_model::{ClientSession, Desired, DeviceId, Grant, MacAddr, MeterMark, ModelError};
use tracing::info;

use super::Gateway;
use crate::{
    dataplane::{RateLimit, MIN_BURST_BYTES},
    error::AgentError,
};

impl Gateway {
    /// A grant's speeds as token buckets (up, down) at the configured depth.
    pub(super) fn limits(&self, grant: &Grant) -> (RateLimit, RateLimit) {
        let l = |m| RateLimit::mbits(m, self.config().burst_ms, MIN_BURST_BYTES);
        (l(grant.up_mbits), l(grant.down_mbits))
    }

    /// Applies the manager's decision for a device: a grant is programmed
    /// into the client table (speed, and in HTB mode every LAN's classes,
    /// budget, then allow); no grant blocks it.
    ///
    /// With `fresh_budget` the kernel budget becomes the granted budget less
    /// the bytes counted since `charged` (the reading last charged, if any):
    /// those will be charged to this session by the next poll. Without it, a
    /// budget the kernel is already enforcing is left to run down.
    pub(super) fn program(
        &self,
        state: &Desired,
        fresh_budget: bool,
        charged: Option<MeterMark>,
    ) -> Result<(), AgentError> {
        let Some(grant) = &state.grant else {
            return self.revoke(state.mac);
        };
        let mac = state.mac;
        let (up, down) = self.limits(grant);
        let pending = match charged {
            Some(last) if fresh_budget => {
                let now = self.reading(mac);
                if now.epoch == last.epoch {
                    now.bytes.saturating_sub(last.bytes)
                } else {
                    0
                }
            }
            _ => 0,
        };
        let budget = grant
            .budget_bytes
            .map(|b| b.saturating_sub(pending).min(i64::MAX as u64) as i64);
        self.dp.allow(&mac, up, down, budget, fresh_budget)
    }

    pub(super) fn revoke(&self, mac: MacAddr) -> Result<(), AgentError> {
        self.dp.block(&mac)
    }

    /// Connects a device: starts or resumes its session, then lets it through at
    /// its speed with its remaining data as the kernel budget.
    pub async fn connect(
        &self,
        device_id: DeviceId,
        notification: &str,
    ) -> Result<ClientSession, AgentError> {
        let _g = self.ops.lock().await;
        let device = self.mgr.device(device_id)?;
        let now = self.mgr.clock().now_secs();
        if self
            .mgr
            .curr_session(device_id)?
            .is_some_and(|s| !s.data().is_available(now))
        {
            // Its session ran out since the last poll: settle it as the poll
            // would (the manager's connect would too, but drop what ends).
            self.poll_locked(true).await?;
        }
        match self.mgr.connect(device_id, notification).await {
            Ok(_) => {}
            Err(e) => {
                // Never leave a device let through without a running session.
                if self.mgr.curr_session(device_id)?.is_none() {
                    self.revoke(device.mac)?;
                }
                return Err(e.into());
            }
        }
        // For a device that was blocked this reading is where its charging
        // starts; one already connected is charged its bytes so far, which
        // may end its last session.
        self.charge(&[(device_id, self.reading(device.mac))])
            .await?;
        let state = self.mgr.desired(device_id)?;
        let Some(grant) = state.grant else {
            return Err(ModelError::NoAvailableSession(device_id).into());
        };
        self.program(&state, true, None)?;
        let session = self.mgr.session(grant.session_id)?;
        // Its quiet time starts at its next reading.
        self.idle_watch.lock().unwrap().forget(device_id);
        info!(device_id, mac = %device.mac, session = session.id(), "connected");
        Ok(session)
    }

    /// Removes a device and all its sessions; a connected one only with
    /// `force`, which disconnects it first (blocked, its last bytes charged).
    pub async fn remove_device(&self, device_id: DeviceId, force: bool) -> Result<(), AgentError> {
        let _g = self.ops.lock().await;
        if force && self.mgr.running_session_id(device_id)?.is_some() {
            self.disconnect_locked(device_id, "removed").await?;
        }
        Ok(self.mgr.remove_device(device_id)?)
    }

    /// Removes a session; a running one only with `force`, which disconnects
    /// its device first.
    pub async fn remove_session(&self, session_id: u64, force: bool) -> Result<(), AgentError> {
        let _g = self.ops.lock().await;
        let device_id = self.mgr.session(session_id)?.device_id();
        if force && self.mgr.running_session_id(device_id)? == Some(session_id) {
            self.disconnect_locked(device_id, "removed").await?;
        }
        Ok(self.mgr.remove_session(session_id)?)
    }

    /// Disconnects a device: blocks it at once, charges its last bytes, pauses its session.
    pub async fn disconnect(
        &self,
        device_id: DeviceId,
        notification: &str,
    ) -> Result<(), AgentError> {
        let _g = self.ops.lock().await;
        self.disconnect_locked(device_id, notification).await
    }

    pub(super) async fn disconnect_locked(
        &self,
        device_id: DeviceId,
        notification: &str,
    ) -> Result<(), AgentError> {
        let device = self.mgr.device(device_id)?;
        self.revoke(device.mac)?;
        if self.mgr.is_connected(device_id)? {
            // Its last bytes, with the blocked device's final reading. A
            // session this ends is followed in the store (and then paused
            // below), but the device stays blocked: it is leaving.
            self.mgr
                .record_meter(&[(device_id, self.reading(device.mac))])?;
        }
        self.mgr.disconnect(device_id, notification).await?;
        self.idle_watch.lock().unwrap().forget(device_id);
        info!(device_id, mac = %device.mac, "disconnected");
        Ok(())
    }

    /// Re-programs a connected device after its running session changed
    /// (allocation, speed): the kernel budget follows the session's remaining data.
    pub async fn refresh(&self, device_id: DeviceId) -> Result<(), AgentError> {
        let _g = self.ops.lock().await;
        let device = self.mgr.device(device_id)?;
        if self.mgr.is_connected(device_id)? {
            let charged = self.reading(device.mac);
            self.charge(&[(device_id, charged)]).await?;
            self.program(&self.mgr.desired(device_id)?, true, Some(charged))?;
        }
        Ok(())
    }

    /// Changes a session the way a portal does (see [`SessionsMgr::change_session`]),
    /// without losing usage: the device's new bytes are charged first, the
    /// manager changes the session while the poll waits, and the device is
    /// programmed to the manager's decision (budget, speed, or blocked).
    pub async fn update_session<F>(
        &self,
        session_id: session_model::SessionId,
        change: F,
    ) -> Result<ClientSession, AgentError>
    where
        F: FnOnce(&mut ClientSession) -> Result<(), ModelError>,
    {
        let _g = self.ops.lock().await;
        let device_id = self.mgr.session(session_id)?.device_id();
        let running = self.mgr.running_session_id(device_id)? == Some(session_id);
        // Settling a running session ticks every connected device, which may
        // end others' sessions too: charge every device's bytes first, as a
        // poll does, so that none passed uncharged before a block.
        let charged = if running {
            self.moved_readings()?
        } else {
            Vec::new()
        };
        if running {
            self.charge(&charged).await?;
        }
        let (session, report) = self.mgr.change_session(session_id, change).await?;
        if running {
            // The change may have ended the session (or revived it).
            self.apply(&report)?;
            let state = self.mgr.desired(device_id)?;
            if state.grant.is_some() {
                // Charged up to its counters just now, moved or not.
                let mark = self.mgr.meter_mark(device_id)?;
                self.program(&state, true, mark)?;
            }
        }
        Ok(session)
    }

    /// Moves a device (and its sessions) to a new MAC, following it in the
    /// kernel: a running session goes on at once on the new MAC (allowed, its
    /// speed and remaining data as budget) and the old one is blocked, with
    /// nothing charged twice. The device the gateway made for the new MAC when
    /// it first saw it (a phone that randomised its MAC) is absorbed if it has
    /// no sessions; one with sessions is refused ([`AgentError::MacHasSessions`]).
    /// Returns the absorbed device.
    pub async fn rekey(
        &self,
        device_id: DeviceId,
        new_mac: MacAddr,
    ) -> Result<Option<DeviceId>, AgentError> {
        let _g = self.ops.lock().await;
        let old = self.mgr.device(device_id)?;
        let absorbed = match self.mgr.device_by_mac(new_mac) {
            Ok(other) if other.id != device_id => {
                let sessions = self.mgr.store().device_sessions(other.id);
                if !sessions.map_err(ModelError::from)?.is_empty() {
                    return Err(AgentError::MacHasSessions {
                        mac: new_mac,
                        device_id: other.id,
                    });
                }
                self.mgr.remove_device(other.id)?;
                info!(device_id, absorbed = other.id, mac = %new_mac, "device without sessions absorbed by a rekey");
                Some(other.id)
            }
            _ => None,
        };
        if self.mgr.is_connected(device_id)? {
            // Block the old MAC and charge its last bytes; a session this
            // ends is followed in the store only: the old MAC stays blocked,
            // the new one is programmed below.
            self.revoke(old.mac)?;
            self.mgr
                .record_meter(&[(device_id, self.reading(old.mac))])?;
        }
        // The device's addresses go with it: the new MAC claims them afresh.
        self.dp.release_bindings(&old.mac)?;
        self.mgr.rekey_device(device_id, new_mac)?;
        // The device's slots changed with its MAC: build the meter table afresh.
        *self.meter_table.lock().unwrap() = None;
        self.rekeys.fetch_add(1, Relaxed);
        // Still connected unless that charge ended its last session.
        if self.mgr.is_connected(device_id)? {
            let mark = self.reading(new_mac);
            self.mgr.reset_meter_mark(device_id, mark)?;
            self.program(&self.mgr.desired(device_id)?, true, Some(mark))?;
        }
        Ok(absorbed)
    }
}
