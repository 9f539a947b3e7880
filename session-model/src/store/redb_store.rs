//! The durable `redb` provider.
//!
//! Layout (schema version [`SCHEMA_VERSION`]):
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `&str` | `u64`: `schema_version`, `next_device_id`, `next_session_id`, `checkpoint_lsn` |
//! | `devices` | device id `i64` | JSON [`Device`] |
//! | `macs` | MAC as `u64` | device id |
//! | `sessions` | session id `u64` | binary [`SessionRecord`] (see `codec.rs`) |
//! | `device_sessions` | `(device id, session id)` | `()` |
//! | `vouchers` | canonical code `&str` | JSON [`Voucher`] |
//!
//! Every trait write is one redb write transaction committed with
//! `Durability::Immediate`: when the call returns the change is on disk.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::RwLockReadGuard;

use redb::{Database, ReadableTable, Table, TableDefinition, WriteTransaction};

use super::codec::{decode_session, encode_session};
use super::mem_state::Mutation;
use super::reopen::Reopening;
use super::SessionStore;
use crate::voucher::{mask_code, Redemption};
use crate::{
    Device, DeviceId, MacAddr, SessionData, SessionId, SessionRecord, StoreError, Voucher,
};

/// Schema version written to (and required from) the `meta` table.
pub const SCHEMA_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const DEVICES: TableDefinition<i64, &[u8]> = TableDefinition::new("devices");
const MACS: TableDefinition<u64, i64> = TableDefinition::new("macs");
const SESSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("sessions");
const DEVICE_SESSIONS: TableDefinition<(i64, u64), ()> = TableDefinition::new("device_sessions");
/// Added without a schema change: a file without it is opened (and the table created)
/// by this release, and earlier releases ignore it.
const VOUCHERS: TableDefinition<&str, &[u8]> = TableDefinition::new("vouchers");
/// `(shelf, key)` to JSON: the small records of [`super::Shelf`].
const SHELVES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("shelves");

const K_SCHEMA: &str = "schema_version";
const K_NEXT_DEVICE: &str = "next_device_id";
const K_NEXT_SESSION: &str = "next_session_id";
const K_CHECKPOINT_LSN: &str = "checkpoint_lsn";

fn rerr<E: Into<redb::Error>>(context: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Redb {
        context,
        source: Box::new(e.into()),
    }
}

fn enc<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|source| StoreError::Codec {
        context: "encode record",
        source,
    })
}

fn dec<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(b).map_err(|source| StoreError::Codec {
        context: "decode stored record",
        source,
    })
}

/// Everything a redb file holds, loaded at once (used by the hybrid provider).
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub next_device_id: DeviceId,
    pub next_session_id: SessionId,
    pub checkpoint_lsn: u64,
}

/// A session store in one redb file.
pub struct RedbStore {
    /// Opened again at its next use after a write failed (a full disk).
    db: Reopening,
    path: PathBuf,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish()
    }
}

struct WTables<'t> {
    meta: Table<'t, &'static str, u64>,
    devices: Table<'t, i64, &'static [u8]>,
    macs: Table<'t, u64, i64>,
    sessions: Table<'t, u64, &'static [u8]>,
    dev_sess: Table<'t, (i64, u64), ()>,
    vouchers: Table<'t, &'static str, &'static [u8]>,
}

impl<'t> WTables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(WTables {
            meta: txn.open_table(META).map_err(rerr("open meta table"))?,
            devices: txn
                .open_table(DEVICES)
                .map_err(rerr("open devices table"))?,
            macs: txn.open_table(MACS).map_err(rerr("open macs table"))?,
            sessions: txn
                .open_table(SESSIONS)
                .map_err(rerr("open sessions table"))?,
            dev_sess: txn
                .open_table(DEVICE_SESSIONS)
                .map_err(rerr("open device_sessions table"))?,
            vouchers: txn
                .open_table(VOUCHERS)
                .map_err(rerr("open vouchers table"))?,
        })
    }

    fn meta(&self, key: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .meta
            .get(key)
            .map_err(rerr("read meta"))?
            .map(|g| g.value()))
    }

    fn set_meta(&mut self, key: &str, v: u64) -> Result<(), StoreError> {
        self.meta.insert(key, v).map_err(rerr("write meta"))?;
        Ok(())
    }

    fn bump_meta(&mut self, key: &str, at_least: u64) -> Result<(), StoreError> {
        if self.meta(key)?.unwrap_or(1) < at_least {
            self.set_meta(key, at_least)?;
        }
        Ok(())
    }

    fn device(&self, id: DeviceId) -> Result<Option<Device>, StoreError> {
        match self.devices.get(id).map_err(rerr("read device"))? {
            Some(g) => Ok(Some(dec(g.value())?)),
            None => Ok(None),
        }
    }

    fn mac_owner(&self, mac: MacAddr) -> Result<Option<DeviceId>, StoreError> {
        Ok(self
            .macs
            .get(mac.to_u64())
            .map_err(rerr("read mac index"))?
            .map(|g| g.value()))
    }

    fn session(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError> {
        match self.sessions.get(id).map_err(rerr("read session"))? {
            Some(g) => Ok(Some(decode_session(g.value())?)),
            None => Ok(None),
        }
    }

    fn put_device(&mut self, d: &Device) -> Result<(), StoreError> {
        if let Some(old) = self.device(d.id)? {
            if old.mac != d.mac && self.mac_owner(old.mac)? == Some(d.id) {
                self.macs
                    .remove(old.mac.to_u64())
                    .map_err(rerr("remove old mac"))?;
            }
        }
        self.macs
            .insert(d.mac.to_u64(), d.id)
            .map_err(rerr("write mac index"))?;
        let bytes = enc(d)?;
        self.devices
            .insert(d.id, bytes.as_slice())
            .map_err(rerr("write device"))?;
        Ok(())
    }

    fn remove_device(&mut self, id: DeviceId) -> Result<(), StoreError> {
        if let Some(old) = self.device(id)? {
            if self.mac_owner(old.mac)? == Some(id) {
                self.macs
                    .remove(old.mac.to_u64())
                    .map_err(rerr("remove mac"))?;
            }
            self.devices.remove(id).map_err(rerr("remove device"))?;
        }
        for sid in self.session_ids_of(id)? {
            self.remove_session(sid)?;
        }
        Ok(())
    }

    fn session_ids_of(&self, device_id: DeviceId) -> Result<Vec<SessionId>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .dev_sess
            .range((device_id, 0u64)..=(device_id, u64::MAX))
            .map_err(rerr("scan device sessions"))?
        {
            let (k, _) = item.map_err(rerr("scan device sessions"))?;
            out.push(k.value().1);
        }
        Ok(out)
    }

    /// Writes a session row. A session never changes device (callers refuse
    /// [`StoreError::DeviceMismatch`]), so the index entry is only added for new rows.
    fn put_session(&mut self, r: &SessionRecord) -> Result<(), StoreError> {
        let bytes = encode_session(r)?;
        let existed = self
            .sessions
            .insert(r.id, bytes.as_slice())
            .map_err(rerr("write session"))?
            .is_some();
        if !existed {
            self.dev_sess
                .insert((r.device_id, r.id), ())
                .map_err(rerr("write session index"))?;
        }
        Ok(())
    }

    fn voucher(&self, code: &str) -> Result<Option<Voucher>, StoreError> {
        match self.vouchers.get(code).map_err(rerr("read voucher"))? {
            Some(g) => Ok(Some(dec(g.value())?)),
            None => Ok(None),
        }
    }

    fn put_voucher(&mut self, v: &Voucher) -> Result<(), StoreError> {
        let bytes = enc(v)?;
        self.vouchers
            .insert(v.code.as_str(), bytes.as_slice())
            .map_err(rerr("write voucher"))?;
        Ok(())
    }

    /// Writes a new session of an existing device with the next id.
    fn new_session(
        &mut self,
        device_id: DeviceId,
        data: SessionData,
    ) -> Result<SessionRecord, StoreError> {
        if self.device(device_id)?.is_none() {
            return Err(StoreError::UnknownDevice(device_id));
        }
        let id = self.meta(K_NEXT_SESSION)?.unwrap_or(1).max(1);
        let r = SessionRecord {
            id,
            device_id,
            data,
            ended_at: None,
            run: None,
        };
        self.put_session(&r)?;
        self.set_meta(K_NEXT_SESSION, id.saturating_add(1))?;
        Ok(r)
    }

    fn remove_session(&mut self, id: SessionId) -> Result<bool, StoreError> {
        let Some(old) = self.session(id)? else {
            return Ok(false);
        };
        self.sessions.remove(id).map_err(rerr("remove session"))?;
        self.dev_sess
            .remove((old.device_id, id))
            .map_err(rerr("remove session index"))?;
        Ok(true)
    }
}

/// redb's page cache.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

impl RedbStore {
    /// Opens or creates the database at `path`, checking its schema version.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with_cache(path, CACHE_BYTES)
    }

    /// [`RedbStore::open`] with a page cache of `cache_bytes`.
    pub(crate) fn open_with_cache(
        path: impl AsRef<Path>,
        cache_bytes: usize,
    ) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        // redb caches up to 1 GiB by default; a gateway's working set is far smaller
        // (the hybrid store keeps its own copy in RAM), and the OS caches the file too.
        let db = Reopening::open(Some(&path), cache_bytes, "session store")
            .map_err(rerr("open database"))?;
        let store = RedbStore { db, path };
        store.init_schema()?;
        Ok(store)
    }

    /// The database, opened again first if a write failed since it was
    /// opened ([`Reopening`]).
    fn db(&self) -> Result<RwLockReadGuard<'_, Database>, StoreError> {
        self.db.get().map_err(rerr("open database again"))
    }

    /// `out` of a write; a failure of the database itself (not a refusal
    /// such as a MAC already taken) has it opened again at the next use.
    fn written<T>(&self, out: Result<T, StoreError>) -> Result<T, StoreError> {
        if matches!(out, Err(StoreError::Redb { .. })) {
            self.db.failed();
        }
        out
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn init_schema(&self) -> Result<(), StoreError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(rerr("begin schema check"))?;
        {
            let mut t = WTables::open(&txn)?;
            match t.meta(K_SCHEMA)? {
                None => {
                    t.set_meta(K_SCHEMA, SCHEMA_VERSION)?;
                    t.set_meta(K_NEXT_DEVICE, 1)?;
                    t.set_meta(K_NEXT_SESSION, 1)?;
                    t.set_meta(K_CHECKPOINT_LSN, 0)?;
                }
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(StoreError::UnsupportedSchema {
                        path: self.path.clone(),
                        found: v,
                        supported: SCHEMA_VERSION,
                    });
                }
                // Versions <= SCHEMA_VERSION: version 1 is the first, nothing to migrate yet.
                Some(_) => {}
            }
        }
        txn.commit().map_err(rerr("commit schema check"))
    }

    /// The schema version stored in the file.
    pub fn schema_version(&self) -> Result<u64, StoreError> {
        self.read_meta(K_SCHEMA).map(|v| v.unwrap_or(0))
    }

    /// Overwrites the stored schema version (for migration tests and tools).
    pub fn set_schema_version(&self, v: u64) -> Result<(), StoreError> {
        self.write(|t| t.set_meta(K_SCHEMA, v))
    }

    fn read_meta(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(rerr("begin read"))?;
        let t = txn.open_table(META).map_err(rerr("open meta table"))?;
        Ok(t.get(key).map_err(rerr("read meta"))?.map(|g| g.value()))
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&mut WTables<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let db = self.db()?;
        let out = (|| {
            let txn = db.begin_write().map_err(rerr("begin write"))?;
            let out = {
                let mut t = WTables::open(&txn)?;
                f(&mut t)?
            };
            txn.commit().map_err(rerr("commit"))?;
            Ok(out)
        })();
        self.written(out)
    }

    /// Applies final-state mutations in one transaction and records the checkpoint LSN
    /// and id counters (the hybrid checkpoint).
    pub(crate) fn apply_checkpoint(
        &self,
        mutations: &[Mutation],
        next_device_id: DeviceId,
        next_session_id: SessionId,
        lsn: u64,
    ) -> Result<(), StoreError> {
        self.write(|t| {
            for m in mutations {
                match m {
                    Mutation::PutDevice { device } => t.put_device(device)?,
                    Mutation::RemoveDevice { id } => t.remove_device(*id)?,
                    Mutation::PutSession { session } => t.put_session(session)?,
                    Mutation::RemoveSession { id } => {
                        t.remove_session(*id)?;
                    }
                    Mutation::PutVoucher { voucher } => t.put_voucher(voucher)?,
                }
            }
            t.bump_meta(K_NEXT_DEVICE, next_device_id.max(1) as u64)?;
            t.bump_meta(K_NEXT_SESSION, next_session_id)?;
            t.set_meta(K_CHECKPOINT_LSN, lsn)
        })
    }

    /// Loads the whole database, handing each device and session over as it is read.
    pub(crate) fn snapshot(
        &self,
        mut on_device: impl FnMut(Device),
        mut on_session: impl FnMut(SessionRecord),
        mut on_voucher: impl FnMut(Voucher),
    ) -> Result<Snapshot, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(rerr("begin read"))?;
        let meta = txn.open_table(META).map_err(rerr("open meta table"))?;
        let get = |k: &str| -> Result<u64, StoreError> {
            Ok(meta
                .get(k)
                .map_err(rerr("read meta"))?
                .map(|g| g.value())
                .unwrap_or(0))
        };
        let snap = Snapshot {
            next_device_id: get(K_NEXT_DEVICE)?.max(1) as i64,
            next_session_id: get(K_NEXT_SESSION)?.max(1),
            checkpoint_lsn: get(K_CHECKPOINT_LSN)?,
        };
        let devices = txn
            .open_table(DEVICES)
            .map_err(rerr("open devices table"))?;
        for item in devices.iter().map_err(rerr("scan devices"))? {
            let (_, v) = item.map_err(rerr("scan devices"))?;
            on_device(dec(v.value())?);
        }
        let sessions = txn
            .open_table(SESSIONS)
            .map_err(rerr("open sessions table"))?;
        for item in sessions.iter().map_err(rerr("scan sessions"))? {
            let (_, v) = item.map_err(rerr("scan sessions"))?;
            on_session(decode_session(v.value())?);
        }
        let vouchers = txn
            .open_table(VOUCHERS)
            .map_err(rerr("open vouchers table"))?;
        for item in vouchers.iter().map_err(rerr("scan vouchers"))? {
            let (_, v) = item.map_err(rerr("scan vouchers"))?;
            on_voucher(dec(v.value())?);
        }
        Ok(snap)
    }

    /// Verifies that the indexes agree with the rows. Returns the first problem found.
    pub fn check_consistency(&self) -> Result<(), StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(rerr("begin read"))?;
        let devices = txn
            .open_table(DEVICES)
            .map_err(rerr("open devices table"))?;
        let macs = txn.open_table(MACS).map_err(rerr("open macs table"))?;
        let sessions = txn
            .open_table(SESSIONS)
            .map_err(rerr("open sessions table"))?;
        let dev_sess = txn
            .open_table(DEVICE_SESSIONS)
            .map_err(rerr("open device_sessions table"))?;
        let corrupt = |m: String| Err(StoreError::Corrupt(m));
        let mut n_devices = 0u64;
        for item in devices.iter().map_err(rerr("scan devices"))? {
            let (k, v) = item.map_err(rerr("scan devices"))?;
            let d: Device = dec(v.value())?;
            n_devices += 1;
            if d.id != k.value() {
                return corrupt(format!("device row {} holds id {}", k.value(), d.id));
            }
            let owner = macs.get(d.mac.to_u64()).map_err(rerr("read mac index"))?;
            if owner.map(|g| g.value()) != Some(d.id) {
                return corrupt(format!("mac {} of device {} not indexed", d.mac, d.id));
            }
        }
        if macs.len().map_err(rerr("count macs"))? != n_devices {
            return corrupt("mac index and devices differ in size".into());
        }
        let mut n_sessions = 0u64;
        for item in sessions.iter().map_err(rerr("scan sessions"))? {
            let (k, v) = item.map_err(rerr("scan sessions"))?;
            let r: SessionRecord = decode_session(v.value())?;
            n_sessions += 1;
            if r.id != k.value() {
                return corrupt(format!("session row {} holds id {}", k.value(), r.id));
            }
            if devices
                .get(r.device_id)
                .map_err(rerr("read device"))?
                .is_none()
            {
                return corrupt(format!(
                    "session {} of missing device {}",
                    r.id, r.device_id
                ));
            }
            if dev_sess
                .get((r.device_id, r.id))
                .map_err(rerr("read session index"))?
                .is_none()
            {
                return corrupt(format!("session {} not indexed", r.id));
            }
        }
        if dev_sess.len().map_err(rerr("count session index"))? != n_sessions {
            return corrupt("session index and sessions differ in size".into());
        }
        Ok(())
    }
}

use redb::ReadableTableMetadata as _;

impl SessionStore for RedbStore {
    fn shelf_from(
        &self,
        shelf: super::Shelf,
        from: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(rerr("begin read"))?;
        let t = match txn.open_table(SHELVES) {
            Ok(t) => t,
            // A file made before shelves: nothing on any.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(rerr("open shelves table")(e)),
        };
        let mut out = Vec::new();
        for item in t
            .range((shelf.name(), from)..)
            .map_err(rerr("scan shelves"))?
        {
            let (k, v) = item.map_err(rerr("scan shelves"))?;
            let (s, key) = k.value();
            if s != shelf.name() {
                break;
            }
            out.push((key.to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn write_shelves(&self, writes: &[super::ShelfWrite<'_>]) -> Result<(), StoreError> {
        let db = self.db()?;
        let out = (|| {
            let txn = db.begin_write().map_err(rerr("begin write"))?;
            {
                let mut t = txn
                    .open_table(SHELVES)
                    .map_err(rerr("open shelves table"))?;
                for w in writes {
                    match w.value {
                        Some(v) => {
                            t.insert((w.shelf.name(), w.key), v)
                                .map_err(rerr("write shelf"))?;
                        }
                        None => {
                            t.remove((w.shelf.name(), w.key))
                                .map_err(rerr("write shelf"))?;
                        }
                    }
                }
            }
            txn.commit().map_err(rerr("commit"))?;
            Ok(())
        })();
        self.written(out)
    }

    fn kind(&self) -> &'static str {
        "redb"
    }

    fn create_device(
        &self,
        mac: MacAddr,
        ip: Option<IpAddr>,
        hostname: Option<String>,
        created_at: i64,
    ) -> Result<Device, StoreError> {
        self.write(|t| {
            if let Some(owner) = t.mac_owner(mac)? {
                return Err(StoreError::DuplicateMac {
                    mac,
                    device_id: owner,
                });
            }
            let id = t.meta(K_NEXT_DEVICE)?.unwrap_or(1).max(1) as i64;
            let d = Device {
                id,
                mac,
                ip,
                hostname,
                created_at,
            };
            t.put_device(&d)?;
            t.set_meta(K_NEXT_DEVICE, id.saturating_add(1) as u64)?;
            Ok(d)
        })
    }

    fn update_device(&self, device: &Device) -> Result<(), StoreError> {
        self.write(|t| {
            if t.device(device.id)?.is_none() {
                return Err(StoreError::UnknownDevice(device.id));
            }
            match t.mac_owner(device.mac)? {
                Some(owner) if owner != device.id => Err(StoreError::DuplicateMac {
                    mac: device.mac,
                    device_id: owner,
                }),
                _ => t.put_device(device),
            }
        })
    }

    fn remove_device(&self, id: DeviceId) -> Result<(), StoreError> {
        self.write(|t| {
            if t.device(id)?.is_none() {
                return Err(StoreError::UnknownDevice(id));
            }
            t.remove_device(id)
        })
    }

    fn device(&self, id: DeviceId) -> Result<Option<Device>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(rerr("begin read"))?;
        let t = txn
            .open_table(DEVICES)
            .map_err(rerr("open devices table"))?;
        match t.get(id).map_err(rerr("read device"))? {
            Some(g) => Ok(Some(dec(g.value())?)),
            None => Ok(None),
        }
    }

    fn device_by_mac(&self, mac: MacAddr) -> Result<Option<Device>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(rerr("begin read"))?;
        let macs = txn.open_table(MACS).map_err(rerr("open macs table"))?;
        let Some(id) = macs
            .get(mac.to_u64())
            .map_err(rerr("read mac index"))?
            .map(|g| g.value())
        else {
            return Ok(None);
        };
        let t = txn
            .open_table(DEVICES)
            .map_err(rerr("open devices table"))?;
        match t.get(id).map_err(rerr("read device"))? {
            Some(g) => Ok(Some(dec(g.value())?)),
            None => Err(StoreError::Corrupt(format!(
                "mac {mac} points at missing device {id}"
            ))),
        }
    }

    fn devices(&self) -> Result<Vec<Device>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(rerr("begin read"))?;
        let t = txn
            .open_table(DEVICES)
            .map_err(rerr("open devices table"))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(rerr("scan devices"))? {
            let (_, v) = item.map_err(rerr("scan devices"))?;
            out.push(dec(v.value())?);
        }
        Ok(out)
    }

    fn create_session(
        &self,
        device_id: DeviceId,
        data: SessionData,
    ) -> Result<SessionRecord, StoreError> {
        self.write(|t| t.new_session(device_id, data))
    }

    fn create_vouchers(&self, vouchers: &[Voucher]) -> Result<(), StoreError> {
        self.write(|t| {
            for v in vouchers {
                if t.voucher(&v.code)?.is_some() {
                    return Err(StoreError::DuplicateVoucher(mask_code(&v.code)));
                }
                t.put_voucher(v)?;
            }
            Ok(())
        })
    }

    fn voucher(&self, code: &str) -> Result<Option<Voucher>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(rerr("begin read"))?;
        let t = txn
            .open_table(VOUCHERS)
            .map_err(rerr("open vouchers table"))?;
        match t.get(code).map_err(rerr("read voucher"))? {
            Some(g) => Ok(Some(dec(g.value())?)),
            None => Ok(None),
        }
    }

    fn vouchers(&self) -> Result<Vec<Voucher>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(rerr("begin read"))?;
        let t = txn
            .open_table(VOUCHERS)
            .map_err(rerr("open vouchers table"))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(rerr("scan vouchers"))? {
            let (_, v) = item.map_err(rerr("scan vouchers"))?;
            out.push(dec(v.value())?);
        }
        Ok(out)
    }

    fn save_voucher(&self, voucher: &Voucher) -> Result<(), StoreError> {
        self.write(|t| {
            if t.voucher(&voucher.code)?.is_none() {
                return Err(StoreError::UnknownVoucher(mask_code(&voucher.code)));
            }
            t.put_voucher(voucher)
        })
    }

    fn redeem_voucher(
        &self,
        code: &str,
        device_id: DeviceId,
        mac: MacAddr,
        at: i64,
        data: SessionData,
    ) -> Result<(SessionRecord, Voucher), StoreError> {
        self.write(|t| {
            let mut voucher = t
                .voucher(code)?
                .ok_or_else(|| StoreError::UnknownVoucher(mask_code(code)))?;
            let session = t.new_session(device_id, data)?;
            voucher.redemptions.push(Redemption {
                device_id,
                mac,
                session_id: session.id,
                at,
                moves: Vec::new(),
            });
            t.put_voucher(&voucher)?;
            Ok((session, voucher))
        })
    }

    fn save_sessions(&self, records: &[SessionRecord]) -> Result<(), StoreError> {
        self.write(|t| {
            for r in records {
                let stored = t.session(r.id)?.ok_or(StoreError::UnknownSession(r.id))?;
                if stored.device_id != r.device_id {
                    return Err(StoreError::DeviceMismatch {
                        session_id: r.id,
                        stored: stored.device_id,
                        given: r.device_id,
                    });
                }
                t.put_session(r)?;
            }
            Ok(())
        })
    }

    fn session(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(rerr("begin read"))?;
        let t = txn
            .open_table(SESSIONS)
            .map_err(rerr("open sessions table"))?;
        match t.get(id).map_err(rerr("read session"))? {
            Some(g) => Ok(Some(decode_session(g.value())?)),
            None => Ok(None),
        }
    }

    fn device_sessions(&self, device_id: DeviceId) -> Result<Vec<SessionRecord>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(rerr("begin read"))?;
        let idx = txn
            .open_table(DEVICE_SESSIONS)
            .map_err(rerr("open device_sessions table"))?;
        let t = txn
            .open_table(SESSIONS)
            .map_err(rerr("open sessions table"))?;
        let mut out = Vec::new();
        for item in idx
            .range((device_id, 0u64)..=(device_id, u64::MAX))
            .map_err(rerr("scan device sessions"))?
        {
            let (k, _) = item.map_err(rerr("scan device sessions"))?;
            let sid = k.value().1;
            match t.get(sid).map_err(rerr("read session"))? {
                Some(g) => out.push(decode_session(g.value())?),
                None => {
                    return Err(StoreError::Corrupt(format!(
                        "index lists missing session {sid}"
                    )))
                }
            }
        }
        Ok(out)
    }

    fn sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let mut out = Vec::new();
        self.for_each_session(&mut |r| out.push(r.clone()))?;
        Ok(out)
    }

    fn for_each_session(&self, f: &mut dyn FnMut(&SessionRecord)) -> Result<(), StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(rerr("begin read"))?;
        let t = txn
            .open_table(SESSIONS)
            .map_err(rerr("open sessions table"))?;
        for item in t.iter().map_err(rerr("scan sessions"))? {
            let (_, v) = item.map_err(rerr("scan sessions"))?;
            f(&decode_session(v.value())?);
        }
        Ok(())
    }

    fn device_count(&self) -> Result<u64, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(rerr("begin read"))?;
        let t = txn
            .open_table(DEVICES)
            .map_err(rerr("open devices table"))?;
        t.len().map_err(rerr("count devices"))
    }

    fn remove_sessions(&self, ids: &[SessionId]) -> Result<usize, StoreError> {
        self.write(|t| {
            let mut n = 0;
            for id in ids {
                if t.remove_session(*id)? {
                    n += 1;
                }
            }
            Ok(n)
        })
    }
}
