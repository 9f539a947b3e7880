//! Stores of devices and sessions, registered by name.
//!
//! * `memory`: volatile, for tests and diskless setups.
//! * `redb`: one durable redb file; every write is its own ACID transaction
//!   (`Durability::Immediate`, fsync'd before the call returns).
//! * `hybrid`: the RAM working set plus an append-only modification log, checkpointed
//!   lazily into redb. The hot path for frequent consumption updates; see [`hybrid`].
//!
//! All three pass the same conformance suite (`tests/conformance.rs`).

mod codec;
pub mod hybrid;
mod mem_state;
pub mod memory;
pub mod redb_store;
pub mod reopen;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use hybrid::{HybridOptions, HybridStore, SyncMode};
pub use memory::MemoryStore;
pub use redb_store::{RedbStore, SCHEMA_VERSION};

use crate::{
    Device, DeviceId, MacAddr, RunState, SessionData, SessionId, SessionRecord, StoreError, Voucher,
};

/// The fields of a session that change while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageUpdate {
    pub id: SessionId,
    pub time_cons: u64,
    pub data_cons_bytes: u64,
    pub run: Option<RunState>,
}

impl UsageUpdate {
    pub fn apply(&self, r: &mut SessionRecord) {
        r.data.time_cons = self.time_cons;
        r.data.data_cons_bytes = self.data_cons_bytes;
        r.run = self.run;
    }
}

/// Small keyed records kept beside the sessions, each a JSON value under a
/// name: few, rarely written, and durable when the write returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shelf {
    /// The operator's price plans, by name.
    Plans,
    /// Traffic through the gateway per minute (history), by minute.
    MinuteTotals,
    /// Each busy client's traffic per minute (history), by minute.
    MinuteClients,
    /// Each client's traffic per hour (history), by hour.
    HourClients,
    /// Traffic through the gateway per day (history), by day.
    DayTotals,
    /// Devices the operator blocked, by id.
    Blocked,
    /// Sessions sold through the API with a price, by time and session.
    Sales,
}

impl Shelf {
    pub fn name(self) -> &'static str {
        match self {
            Shelf::Plans => "plans",
            Shelf::MinuteTotals => "minute_totals",
            Shelf::MinuteClients => "minute_clients",
            Shelf::HourClients => "hour_clients",
            Shelf::DayTotals => "day_totals",
            Shelf::Blocked => "blocked",
            Shelf::Sales => "sales",
        }
    }
}

/// One write of [`SessionStore::write_shelves`]: a record put (`Some`) or removed (`None`).
#[derive(Debug, Clone, Copy)]
pub struct ShelfWrite<'a> {
    pub shelf: Shelf,
    pub key: &'a str,
    pub value: Option<&'a [u8]>,
}

/// Persistence of devices and sessions. Implementations are internally synchronised.
///
/// Ids are allocated by the store, increase monotonically and are never reused, even
/// after a device or session is removed.
pub trait SessionStore: std::fmt::Debug + Send + Sync + 'static {
    /// The registry name of the provider (`memory`, `redb`, `hybrid`).
    fn kind(&self) -> &'static str;

    /// Creates a device. Fails with [`StoreError::DuplicateMac`] if the MAC is taken.
    fn create_device(
        &self,
        mac: MacAddr,
        ip: Option<IpAddr>,
        hostname: Option<String>,
        created_at: i64,
    ) -> Result<Device, StoreError>;

    /// Replaces a stored device (same id). A changed MAC re-keys the device: its sessions
    /// follow it, the old MAC is freed, and a MAC owned by another device is refused.
    fn update_device(&self, device: &Device) -> Result<(), StoreError>;

    /// Removes a device and all its sessions.
    fn remove_device(&self, id: DeviceId) -> Result<(), StoreError>;

    fn device(&self, id: DeviceId) -> Result<Option<Device>, StoreError>;
    fn device_by_mac(&self, mac: MacAddr) -> Result<Option<Device>, StoreError>;
    /// All devices, by ascending id.
    fn devices(&self) -> Result<Vec<Device>, StoreError>;

    /// How many devices there are, without copying them.
    fn device_count(&self) -> Result<u64, StoreError> {
        Ok(self.devices()?.len() as u64)
    }

    /// Creates a session for an existing device.
    fn create_session(
        &self,
        device_id: DeviceId,
        data: SessionData,
    ) -> Result<SessionRecord, StoreError>;

    /// Saves one existing session.
    fn save_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        self.save_sessions(std::slice::from_ref(record))
    }

    /// Saves existing sessions atomically: all or none.
    fn save_sessions(&self, records: &[SessionRecord]) -> Result<(), StoreError>;

    fn session(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError>;
    /// The sessions of a device, by ascending id (creation order).
    fn device_sessions(&self, device_id: DeviceId) -> Result<Vec<SessionRecord>, StoreError>;
    /// All sessions, by ascending id.
    fn sessions(&self) -> Result<Vec<SessionRecord>, StoreError>;

    /// Removes sessions atomically; unknown ids are skipped. Returns how many existed.
    fn remove_sessions(&self, ids: &[SessionId]) -> Result<usize, StoreError>;

    /// Calls `f` with every session, in no particular order, without collecting them.
    /// The store may hold a lock meanwhile: `f` must not call the store.
    fn for_each_session(&self, f: &mut dyn FnMut(&SessionRecord)) -> Result<(), StoreError> {
        for r in self.sessions()? {
            f(&r);
        }
        Ok(())
    }

    /// Sets the usage of existing sessions (time and data consumed, run state), as
    /// [`UsageUpdate`]s, all or none. Readers see the change at once, but a store may
    /// keep it in memory only until the next [`SessionStore::flush`] (or any other
    /// write, sync or checkpoint), so a crash can lose it. Meant for updates that are
    /// safe to lose: consumption saved with the meter mark and clock reading it was
    /// charged up to is charged again after a restart, from the older mark.
    ///
    /// The default writes through with [`SessionStore::save_sessions`].
    fn record_usage_deferred(&self, updates: &[UsageUpdate]) -> Result<(), StoreError> {
        let mut recs = Vec::with_capacity(updates.len());
        for u in updates {
            let mut r = self
                .session(u.id)?
                .ok_or(StoreError::UnknownSession(u.id))?;
            u.apply(&mut r);
            recs.push(r);
        }
        self.save_sessions(&recs)
    }

    /// Writes deferred usage updates like any other write (the store's durability
    /// applies from then on).
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Makes every acknowledged write durable. No-op where writes are already durable.
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Folds buffered state into the main database (hybrid); no-op elsewhere.
    fn checkpoint(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Adds vouchers, all or none. A code that exists (or comes twice) is refused with
    /// [`StoreError::DuplicateVoucher`].
    fn create_vouchers(&self, vouchers: &[Voucher]) -> Result<(), StoreError>;

    /// A voucher by its canonical code.
    fn voucher(&self, code: &str) -> Result<Option<Voucher>, StoreError>;

    /// All vouchers, by code.
    fn vouchers(&self) -> Result<Vec<Voucher>, StoreError>;

    /// Replaces a stored voucher (same code); an unknown code is refused.
    fn save_voucher(&self, voucher: &Voucher) -> Result<(), StoreError>;

    /// Creates a session of `device_id` from `data` and adds its redemption (by
    /// `mac`, at `at`) to voucher `code`, in one atomic write: after a crash either
    /// both are there or neither. Returns the session and the updated voucher. The
    /// caller has checked that the code may be redeemed.
    fn redeem_voucher(
        &self,
        code: &str,
        device_id: DeviceId,
        mac: MacAddr,
        at: i64,
        data: SessionData,
    ) -> Result<(SessionRecord, Voucher), StoreError>;

    /// The records on `shelf` from key `from` on (`""`: all), by key.
    fn shelf_from(&self, shelf: Shelf, from: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Every record on `shelf`, by key.
    fn shelf(&self, shelf: Shelf) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.shelf_from(shelf, "")
    }

    /// Writes records of shelves, all or none; they are on disk (for the
    /// durable stores) when the call returns. Removing what is not there is
    /// no error.
    fn write_shelves(&self, writes: &[ShelfWrite<'_>]) -> Result<(), StoreError>;

    /// Writes (`Some`) or removes (`None`) one record of `shelf`.
    fn put_on_shelf(
        &self,
        shelf: Shelf,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        self.write_shelves(&[ShelfWrite { shelf, key, value }])
    }

    /// Moves a device to another MAC, keeping its id and sessions.
    fn rekey_device(&self, id: DeviceId, new_mac: MacAddr) -> Result<Device, StoreError> {
        let mut dev = self.device(id)?.ok_or(StoreError::UnknownDevice(id))?;
        dev.mac = new_mac;
        self.update_device(&dev)?;
        Ok(dev)
    }

    /// Removes sessions that ended (consumed or expired) at least `retention_secs` before
    /// `now_secs`. Returns the removed ids.
    fn gc(&self, now_secs: i64, retention_secs: i64) -> Result<Vec<SessionId>, StoreError> {
        let doomed: Vec<SessionId> = self
            .sessions()?
            .into_iter()
            .filter(|r| {
                r.end_time(now_secs)
                    .is_some_and(|end| end.saturating_add(retention_secs) <= now_secs)
            })
            .map(|r| r.id)
            .collect();
        if !doomed.is_empty() {
            self.remove_sessions(&doomed)?;
        }
        Ok(doomed)
    }
}

/// Settings handed to a provider factory.
#[derive(Debug, Clone, Default)]
pub struct StoreConfig {
    /// The redb file (`redb`, `hybrid`); the hybrid log is this path with `.log` appended.
    pub path: Option<PathBuf>,
    pub hybrid: HybridOptions,
}

impl StoreConfig {
    pub fn at(path: impl Into<PathBuf>) -> Self {
        StoreConfig {
            path: Some(path.into()),
            hybrid: HybridOptions::default(),
        }
    }
}

/// Opens a store from a configuration.
pub type StoreFactory = fn(&StoreConfig) -> Result<Arc<dyn SessionStore>, StoreError>;

/// The stores by name.
#[derive(Clone)]
pub struct StoreRegistry {
    factories: BTreeMap<String, StoreFactory>,
}

impl Default for StoreRegistry {
    /// A registry with the built-in `memory`, `redb` and `hybrid` providers.
    fn default() -> Self {
        let mut r = StoreRegistry {
            factories: BTreeMap::new(),
        };
        r.register("memory", |_| Ok(Arc::new(MemoryStore::new())));
        r.register("redb", |cfg| {
            let path = cfg.path.as_ref().ok_or_else(|| StoreError::MissingPath {
                provider: "redb".into(),
            })?;
            Ok(Arc::new(RedbStore::open(path)?))
        });
        r.register("hybrid", |cfg| {
            let path = cfg.path.as_ref().ok_or_else(|| StoreError::MissingPath {
                provider: "hybrid".into(),
            })?;
            Ok(Arc::new(HybridStore::open(path, cfg.hybrid.clone())?))
        });
        r
    }
}

impl StoreRegistry {
    /// Adds or replaces a provider.
    pub fn register(&mut self, name: &str, factory: StoreFactory) {
        self.factories.insert(name.to_string(), factory);
    }

    /// Registered provider names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.factories.keys().cloned().collect()
    }

    pub fn open(&self, name: &str, cfg: &StoreConfig) -> Result<Arc<dyn SessionStore>, StoreError> {
        let f = self
            .factories
            .get(name)
            .ok_or_else(|| StoreError::UnknownProvider(name.to_string()))?;
        f(cfg)
    }
}

/// Opens one of the built-in providers by name.
pub fn open_store(name: &str, cfg: &StoreConfig) -> Result<Arc<dyn SessionStore>, StoreError> {
    StoreRegistry::default().open(name, cfg)
}

/// Names of the built-in providers.
pub fn store_names() -> Vec<String> {
    StoreRegistry::default().names()
}
