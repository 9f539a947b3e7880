//! Devices the operator blocked: no session of theirs connects and no code is
//! redeemed for them until they are unblocked. Kept in the store
//! ([`Shelf::Blocked`]), so a block outlives restarts.

use crate::store::Shelf;
use crate::{DeviceId, ModelError, SessionsMgr};

fn key(id: DeviceId) -> String {
    format!("{id:020}")
}

impl SessionsMgr {
    /// Blocks (`true`) or unblocks a device. Blocking does not disconnect it:
    /// the caller does, so that the datapath hears of it.
    pub fn set_blocked(&self, device_id: DeviceId, blocked: bool) -> Result<(), ModelError> {
        self.device(device_id)?;
        let value = blocked.then_some(&b"1"[..]);
        self.store()
            .put_on_shelf(Shelf::Blocked, &key(device_id), value)?;
        tracing::info!(device_id, blocked, "device block changed");
        Ok(())
    }

    /// Whether the operator blocked the device.
    pub fn is_blocked(&self, device_id: DeviceId) -> Result<bool, ModelError> {
        let k = key(device_id);
        Ok(self
            .store()
            .shelf_from(Shelf::Blocked, &k)?
            .first()
            .is_some_and(|(found, _)| *found == k))
    }

    /// Every blocked device.
    pub fn blocked_devices(&self) -> Result<Vec<DeviceId>, ModelError> {
        Ok(self
            .store()
            .shelf(Shelf::Blocked)?
            .into_iter()
            .filter_map(|(k, _)| k.parse().ok())
            .collect())
    }
}
