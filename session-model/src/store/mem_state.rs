//! The in-RAM state shared by the `memory` and `hybrid` providers.
//!
//! Writes are split in two: `plan_*` validates and returns the [`Mutation`] without
//! changing anything, `apply` performs it. The hybrid store logs a mutation between the
//! two, so a failed log write leaves RAM untouched.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::idmap::{DenseMap, IdMap};

/// A device's session ids, in order: most devices have one, kept without an
/// allocation of its own (65,536 devices: 2 MiB less).
pub type DeviceSessions = smallvec::SmallVec<[SessionId; 1]>;
use crate::voucher::{mask_code, Redemption, Voucher};
use crate::{Device, DeviceId, MacAddr, SessionData, SessionId, SessionRecord, StoreError};

/// One logged change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Mutation {
    PutDevice { device: Device },
    RemoveDevice { id: DeviceId },
    PutSession { session: SessionRecord },
    RemoveSession { id: SessionId },
    PutVoucher { voucher: Voucher },
}

#[derive(Debug, Default)]
pub(crate) struct MemState {
    pub devices: DenseMap<DeviceId, Device>,
    pub macs: HashMap<MacAddr, DeviceId>,
    pub sessions: DenseMap<SessionId, SessionRecord>,
    /// Each device's session ids, ascending (most devices have one or two).
    pub by_device: IdMap<DeviceId, DeviceSessions>,
    pub next_device_id: DeviceId,
    pub next_session_id: SessionId,
    /// Vouchers by code.
    pub vouchers: BTreeMap<String, Voucher>,
}

impl MemState {
    pub fn new() -> Self {
        MemState {
            next_device_id: 1,
            next_session_id: 1,
            ..Default::default()
        }
    }

    pub fn plan_create_device(
        &self,
        mac: MacAddr,
        ip: Option<IpAddr>,
        hostname: Option<String>,
        created_at: i64,
    ) -> Result<Mutation, StoreError> {
        if let Some(&owner) = self.macs.get(&mac) {
            return Err(StoreError::DuplicateMac {
                mac,
                device_id: owner,
            });
        }
        Ok(Mutation::PutDevice {
            device: Device {
                id: self.next_device_id,
                mac,
                ip,
                hostname,
                created_at,
            },
        })
    }

    pub fn plan_update_device(&self, device: &Device) -> Result<Mutation, StoreError> {
        if !self.devices.contains_key(&device.id) {
            return Err(StoreError::UnknownDevice(device.id));
        }
        match self.macs.get(&device.mac) {
            Some(&owner) if owner != device.id => Err(StoreError::DuplicateMac {
                mac: device.mac,
                device_id: owner,
            }),
            _ => Ok(Mutation::PutDevice {
                device: device.clone(),
            }),
        }
    }

    pub fn plan_remove_device(&self, id: DeviceId) -> Result<Mutation, StoreError> {
        if !self.devices.contains_key(&id) {
            return Err(StoreError::UnknownDevice(id));
        }
        Ok(Mutation::RemoveDevice { id })
    }

    pub fn plan_create_session(
        &self,
        device_id: DeviceId,
        data: SessionData,
    ) -> Result<Mutation, StoreError> {
        Ok(Mutation::PutSession {
            session: self.new_session(device_id, data)?,
        })
    }

    /// The record a new session of `device_id` gets (the next id).
    fn new_session(
        &self,
        device_id: DeviceId,
        data: SessionData,
    ) -> Result<SessionRecord, StoreError> {
        if !self.devices.contains_key(&device_id) {
            return Err(StoreError::UnknownDevice(device_id));
        }
        Ok(SessionRecord {
            id: self.next_session_id,
            device_id,
            data,
            ended_at: None,
            run: None,
        })
    }

    pub fn plan_save_sessions(
        &self,
        records: &[SessionRecord],
    ) -> Result<Vec<Mutation>, StoreError> {
        records
            .iter()
            .map(|r| {
                let stored = self
                    .sessions
                    .get(&r.id)
                    .ok_or(StoreError::UnknownSession(r.id))?;
                if stored.device_id != r.device_id {
                    return Err(StoreError::DeviceMismatch {
                        session_id: r.id,
                        stored: stored.device_id,
                        given: r.device_id,
                    });
                }
                Ok(Mutation::PutSession { session: r.clone() })
            })
            .collect()
    }

    pub fn plan_remove_sessions(&self, ids: &[SessionId]) -> Vec<Mutation> {
        let mut seen = BTreeSet::new();
        ids.iter()
            .filter(|id| self.sessions.contains_key(id) && seen.insert(**id))
            .map(|&id| Mutation::RemoveSession { id })
            .collect()
    }

    pub fn plan_create_vouchers(&self, vouchers: &[Voucher]) -> Result<Vec<Mutation>, StoreError> {
        let mut seen = BTreeSet::new();
        vouchers
            .iter()
            .map(|v| {
                if self.vouchers.contains_key(&v.code) || !seen.insert(v.code.as_str()) {
                    return Err(StoreError::DuplicateVoucher(mask_code(&v.code)));
                }
                Ok(Mutation::PutVoucher { voucher: v.clone() })
            })
            .collect()
    }

    pub fn plan_save_voucher(&self, v: &Voucher) -> Result<Mutation, StoreError> {
        if !self.vouchers.contains_key(&v.code) {
            return Err(StoreError::UnknownVoucher(mask_code(&v.code)));
        }
        Ok(Mutation::PutVoucher { voucher: v.clone() })
    }

    /// The session a redemption creates and the voucher with the redemption added:
    /// two mutations that must be applied together.
    pub fn plan_redeem_voucher(
        &self,
        code: &str,
        device_id: DeviceId,
        mac: MacAddr,
        at: i64,
        data: SessionData,
    ) -> Result<[Mutation; 2], StoreError> {
        let mut voucher = self
            .vouchers
            .get(code)
            .cloned()
            .ok_or_else(|| StoreError::UnknownVoucher(mask_code(code)))?;
        let session = self.new_session(device_id, data)?;
        voucher.redemptions.push(Redemption {
            device_id,
            mac,
            session_id: session.id,
            at,
            moves: Vec::new(),
        });
        Ok([
            Mutation::PutSession { session },
            Mutation::PutVoucher { voucher },
        ])
    }

    /// Applies a mutation. Replaying a logged mutation is idempotent.
    pub fn apply(&mut self, m: &Mutation) {
        self.apply_owned(m.clone())
    }

    /// [`MemState::apply`], moving the row in.
    pub fn apply_owned(&mut self, m: Mutation) {
        match m {
            Mutation::PutDevice { device } => {
                if let Some(old) = self.devices.get(&device.id) {
                    if old.mac != device.mac && self.macs.get(&old.mac) == Some(&device.id) {
                        self.macs.remove(&old.mac);
                    }
                }
                self.macs.insert(device.mac, device.id);
                self.next_device_id = self.next_device_id.max(device.id.saturating_add(1));
                self.devices.insert(device.id, device);
            }
            Mutation::RemoveDevice { id } => {
                if let Some(old) = self.devices.remove(&id) {
                    if self.macs.get(&old.mac) == Some(&id) {
                        self.macs.remove(&old.mac);
                    }
                }
                for sid in self.by_device.remove(&id).unwrap_or_default() {
                    self.sessions.remove(&sid);
                }
            }
            Mutation::PutSession { session } => {
                self.next_session_id = self.next_session_id.max(session.id.saturating_add(1));
                if let Some(old) = self.sessions.get(&session.id) {
                    if old.device_id != session.device_id {
                        if let Some(ids) = self.by_device.get_mut(&old.device_id) {
                            ids.retain(|i| *i != session.id);
                        }
                    }
                }
                let ids = self.by_device.entry(session.device_id).or_default();
                if let Err(at) = ids.binary_search(&session.id) {
                    ids.insert(at, session.id);
                }
                self.sessions.insert(session.id, session);
            }
            Mutation::RemoveSession { id } => {
                if let Some(old) = self.sessions.remove(&id) {
                    if let Some(ids) = self.by_device.get_mut(&old.device_id) {
                        ids.retain(|i| *i != id);
                    }
                }
            }
            Mutation::PutVoucher { voucher } => {
                self.vouchers.insert(voucher.code.clone(), voucher);
            }
        }
    }

    pub fn device_sessions(&self, device_id: DeviceId) -> Vec<SessionRecord> {
        self.by_device
            .get(&device_id)
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| self.sessions.get(id).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn all_sessions(&self) -> Vec<SessionRecord> {
        let mut v: Vec<SessionRecord> = self.sessions.values().cloned().collect();
        v.sort_by_key(|r| r.id);
        v
    }
}

/// The session and voucher of a planned redemption.
pub(crate) fn redeemed(
    session: Mutation,
    voucher: Mutation,
) -> Result<(SessionRecord, Voucher), StoreError> {
    match (session, voucher) {
        (Mutation::PutSession { session }, Mutation::PutVoucher { voucher }) => {
            Ok((session, voucher))
        }
        _ => Err(StoreError::Corrupt(
            "a redemption planned other writes than a session and a voucher".into(),
        )),
    }
}
