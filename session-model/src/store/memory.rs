//! The volatile `memory` provider: everything is lost when the process exits.

use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};

use super::mem_state::MemState;
use super::{SessionStore, Shelf, ShelfWrite, UsageUpdate};
use crate::{
    Device, DeviceId, MacAddr, SessionData, SessionId, SessionRecord, StoreError, Voucher,
};

/// Devices and sessions in RAM only.
#[derive(Debug)]
pub struct MemoryStore {
    state: Mutex<MemState>,
    shelves: Mutex<std::collections::BTreeMap<(Shelf, String), Vec<u8>>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        MemoryStore {
            state: Mutex::new(MemState::new()),
            shelves: Mutex::default(),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, MemState>, StoreError> {
        self.state.lock().map_err(|_| StoreError::Poisoned)
    }
}

impl SessionStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn shelf_from(&self, shelf: Shelf, from: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let g = self.shelves.lock().map_err(|_| StoreError::Poisoned)?;
        Ok(g.range((shelf, from.to_string())..)
            .take_while(|((s, _), _)| *s == shelf)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn write_shelves(&self, writes: &[ShelfWrite<'_>]) -> Result<(), StoreError> {
        let mut g = self.shelves.lock().map_err(|_| StoreError::Poisoned)?;
        for w in writes {
            match w.value {
                Some(v) => g.insert((w.shelf, w.key.to_string()), v.to_vec()),
                None => g.remove(&(w.shelf, w.key.to_string())),
            };
        }
        Ok(())
    }

    fn create_device(
        &self,
        mac: MacAddr,
        ip: Option<IpAddr>,
        hostname: Option<String>,
        created_at: i64,
    ) -> Result<Device, StoreError> {
        let mut st = self.lock()?;
        let m = st.plan_create_device(mac, ip, hostname, created_at)?;
        st.apply(&m);
        match m {
            super::mem_state::Mutation::PutDevice { device } => Ok(device),
            _ => Err(StoreError::Corrupt(
                "create_device planned a non-device write".into(),
            )),
        }
    }

    fn update_device(&self, device: &Device) -> Result<(), StoreError> {
        let mut st = self.lock()?;
        let m = st.plan_update_device(device)?;
        st.apply(&m);
        Ok(())
    }

    fn remove_device(&self, id: DeviceId) -> Result<(), StoreError> {
        let mut st = self.lock()?;
        let m = st.plan_remove_device(id)?;
        st.apply(&m);
        Ok(())
    }

    fn device(&self, id: DeviceId) -> Result<Option<Device>, StoreError> {
        Ok(self.lock()?.devices.get(&id).cloned())
    }

    fn device_by_mac(&self, mac: MacAddr) -> Result<Option<Device>, StoreError> {
        let st = self.lock()?;
        Ok(st.macs.get(&mac).and_then(|id| st.devices.get(id)).cloned())
    }

    fn device_count(&self) -> Result<u64, StoreError> {
        Ok(self.lock()?.devices.len() as u64)
    }

    fn devices(&self) -> Result<Vec<Device>, StoreError> {
        let mut v: Vec<Device> = self.lock()?.devices.values().cloned().collect();
        v.sort_unstable_by_key(|d| d.id);
        Ok(v)
    }

    fn create_session(
        &self,
        device_id: DeviceId,
        data: SessionData,
    ) -> Result<SessionRecord, StoreError> {
        let mut st = self.lock()?;
        let m = st.plan_create_session(device_id, data)?;
        st.apply(&m);
        match m {
            super::mem_state::Mutation::PutSession { session } => Ok(session),
            _ => Err(StoreError::Corrupt(
                "create_session planned a non-session write".into(),
            )),
        }
    }

    fn save_sessions(&self, records: &[SessionRecord]) -> Result<(), StoreError> {
        let mut st = self.lock()?;
        let ms = st.plan_save_sessions(records)?;
        for m in &ms {
            st.apply(m);
        }
        Ok(())
    }

    fn session(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self.lock()?.sessions.get(&id).cloned())
    }

    fn device_sessions(&self, device_id: DeviceId) -> Result<Vec<SessionRecord>, StoreError> {
        Ok(self.lock()?.device_sessions(device_id))
    }

    fn sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        Ok(self.lock()?.all_sessions())
    }

    fn for_each_session(&self, f: &mut dyn FnMut(&SessionRecord)) -> Result<(), StoreError> {
        self.lock()?.sessions.values().for_each(f);
        Ok(())
    }

    fn record_usage_deferred(&self, updates: &[UsageUpdate]) -> Result<(), StoreError> {
        let mut st = self.lock()?;
        if let Some(u) = updates.iter().find(|u| !st.sessions.contains_key(&u.id)) {
            return Err(StoreError::UnknownSession(u.id));
        }
        for u in updates {
            if let Some(r) = st.sessions.get_mut(&u.id) {
                u.apply(r);
            }
        }
        Ok(())
    }

    fn remove_sessions(&self, ids: &[SessionId]) -> Result<usize, StoreError> {
        let mut st = self.lock()?;
        let ms = st.plan_remove_sessions(ids);
        for m in &ms {
            st.apply(m);
        }
        Ok(ms.len())
    }

    fn create_vouchers(&self, vouchers: &[Voucher]) -> Result<(), StoreError> {
        let mut st = self.lock()?;
        for m in st.plan_create_vouchers(vouchers)? {
            st.apply_owned(m);
        }
        Ok(())
    }

    fn voucher(&self, code: &str) -> Result<Option<Voucher>, StoreError> {
        Ok(self.lock()?.vouchers.get(code).cloned())
    }

    fn vouchers(&self) -> Result<Vec<Voucher>, StoreError> {
        Ok(self.lock()?.vouchers.values().cloned().collect())
    }

    fn save_voucher(&self, voucher: &Voucher) -> Result<(), StoreError> {
        let mut st = self.lock()?;
        let m = st.plan_save_voucher(voucher)?;
        st.apply_owned(m);
        Ok(())
    }

    fn redeem_voucher(
        &self,
        code: &str,
        device_id: DeviceId,
        mac: MacAddr,
        at: i64,
        data: SessionData,
    ) -> Result<(SessionRecord, Voucher), StoreError> {
        let mut st = self.lock()?;
        let [session, voucher] = st.plan_redeem_voucher(code, device_id, mac, at, data)?;
        st.apply(&session);
        st.apply(&voucher);
        super::mem_state::redeemed(session, voucher)
    }
}
