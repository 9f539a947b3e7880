//! Session sources and [`ClientSession`], after the Flarehotspot SDK's `SessionSource` and `ClientSession`.
//!
//! Each session records the name of its provider. A [`SessionProvider`] turns a stored
//! session into a [`SessionSource`]; [`ClientSession::save`] and
//! [`ClientSession::reload`] go through that source. The built-in provider
//! [`LOCAL_PROVIDER`] (`"local"`) is backed by the [`SessionStore`]. Other providers get
//! the local source handed in and should delegate to it so the gateway's own accounting
//! (which reads the store) sees their changes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::model::{check_speed, mb_to_bytes};
use crate::{
    Clock, DeviceId, ModelError, SessionData, SessionId, SessionRecord, SessionStore, SessionType,
};

/// Name of the built-in provider backed by the session store.
pub const LOCAL_PROVIDER: &str = "local";

/// A boxed `Send` future, so the traits below stay object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a session's data lives (the Flarehotspot SDK's `SessionSource`).
pub trait SessionSource: Send + Sync {
    /// The last data loaded from or saved to the source.
    fn data(&self) -> SessionData;
    /// Persists `data`.
    fn save(&self, data: SessionData) -> BoxFuture<'_, Result<(), ModelError>>;
    /// Loads the data afresh.
    fn reload(&self) -> BoxFuture<'_, Result<SessionData, ModelError>>;
}

/// Creates the sources of the sessions whose `provider` names it.
pub trait SessionProvider: Send + Sync + 'static {
    /// The source for `record`. `local` is the store-backed source of the same session.
    fn source(&self, record: &SessionRecord, local: Arc<LocalSource>) -> Arc<dyn SessionSource>;
}

/// The `local` provider: sessions live in the [`SessionStore`].
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalProvider;

impl SessionProvider for LocalProvider {
    fn source(&self, _record: &SessionRecord, local: Arc<LocalSource>) -> Arc<dyn SessionSource> {
        local
    }
}

/// Store-backed source of one session.
pub struct LocalSource {
    store: Arc<dyn SessionStore>,
    clock: Arc<dyn Clock>,
    session_id: SessionId,
    device_id: DeviceId,
    cached: Mutex<SessionData>,
    /// Bumped on every save, so the manager knows its copies of stored
    /// sessions may be out of date.
    saves: Arc<AtomicU64>,
    /// See [`crate::manager::charge_to_now`].
    since_ms: i64,
}

impl LocalSource {
    pub(crate) fn new(
        store: Arc<dyn SessionStore>,
        clock: Arc<dyn Clock>,
        record: &SessionRecord,
        saves: Arc<AtomicU64>,
        since_ms: i64,
    ) -> Self {
        LocalSource {
            store,
            clock,
            session_id: record.id,
            device_id: record.device_id,
            cached: Mutex::new(record.data.clone()),
            saves,
            since_ms,
        }
    }

    /// Saves synchronously: validates, keeps `ended_at` (setting it when the new data is
    /// consumed or expired), and writes the record.
    pub fn save_now(&self, data: SessionData) -> Result<(), ModelError> {
        data.validate()?;
        let mut rec = self
            .store
            .session(self.session_id)?
            .ok_or(ModelError::UnknownSession(self.session_id))?;
        // The stored clock reading moves to now; the saved time is the
        // snapshot's, charged up to when it was taken.
        crate::manager::charge_to_now(&mut rec, &*self.clock, self.since_ms);
        let now = self.clock.now_secs();
        rec.data = data.clone();
        rec.device_id = self.device_id;
        rec.settle_end(now);
        self.store.save_session(&rec)?;
        self.saves.fetch_add(1, Ordering::SeqCst);
        *self.cached.lock().map_err(|_| ModelError::Poisoned)? = data;
        Ok(())
    }

    /// Loads synchronously.
    pub fn reload_now(&self) -> Result<SessionData, ModelError> {
        let mut rec = self
            .store
            .session(self.session_id)?
            .ok_or(ModelError::UnknownSession(self.session_id))?;
        crate::manager::charge_to_now(&mut rec, &*self.clock, self.since_ms);
        *self.cached.lock().map_err(|_| ModelError::Poisoned)? = rec.data.clone();
        Ok(rec.data)
    }
}

impl SessionSource for LocalSource {
    fn data(&self) -> SessionData {
        match self.cached.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
    fn save(&self, data: SessionData) -> BoxFuture<'_, Result<(), ModelError>> {
        Box::pin(async move { self.save_now(data) })
    }
    fn reload(&self) -> BoxFuture<'_, Result<SessionData, ModelError>> {
        Box::pin(async move { self.reload_now() })
    }
}

/// A session of a client device (the Flarehotspot SDK's `ClientSession`). Getters read the local copy; mutators change
/// only the local copy until [`ClientSession::save`]; [`ClientSession::reload`] discards
/// unsaved changes.
///
/// A `ClientSession` is a snapshot: saving it overwrites consumption that the manager
/// recorded (via ticks or traffic) after the snapshot was taken. Reload right before
/// changing a running session.
#[derive(Clone)]
pub struct ClientSession {
    id: SessionId,
    device_id: DeviceId,
    data: SessionData,
    source: Arc<dyn SessionSource>,
}

impl std::fmt::Debug for ClientSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSession")
            .field("id", &self.id)
            .field("device_id", &self.device_id)
            .field("data", &self.data)
            .finish()
    }
}

impl ClientSession {
    pub(crate) fn new(record: SessionRecord, source: Arc<dyn SessionSource>) -> Self {
        ClientSession {
            id: record.id,
            device_id: record.device_id,
            data: record.data,
            source,
        }
    }

    pub fn id(&self) -> SessionId {
        self.id
    }
    pub fn device_id(&self) -> DeviceId {
        self.device_id
    }
    /// The local (possibly unsaved) data.
    pub fn data(&self) -> &SessionData {
        &self.data
    }

    pub fn provider(&self) -> &str {
        &self.data.provider
    }
    pub fn session_type(&self) -> SessionType {
        self.data.session_type
    }
    /// The type as its wire value (0, 1, 2).
    pub fn type_u8(&self) -> u8 {
        self.data.session_type.into()
    }
    pub fn time_secs(&self) -> u64 {
        self.data.time_secs
    }
    pub fn data_mb(&self) -> f64 {
        self.data.data_mb()
    }
    pub fn data_bytes(&self) -> u64 {
        self.data.data_bytes
    }
    pub fn time_consumption(&self) -> u64 {
        self.data.time_cons
    }
    pub fn data_consumption(&self) -> f64 {
        self.data.data_cons()
    }
    pub fn data_consumption_bytes(&self) -> u64 {
        self.data.data_cons_bytes
    }
    pub fn remaining_time(&self) -> u64 {
        self.data.remaining_time()
    }
    pub fn remaining_data(&self) -> f64 {
        self.data.remaining_data()
    }
    pub fn remaining_data_bytes(&self) -> u64 {
        self.data.remaining_data_bytes()
    }
    /// Unix seconds of the first start.
    pub fn started_at(&self) -> Option<i64> {
        self.data.started_at
    }
    /// Unix seconds of creation.
    pub fn created_at(&self) -> i64 {
        self.data.created_at
    }
    pub fn exp_days(&self) -> Option<u32> {
        self.data.exp_days
    }
    /// `started_at + time_secs + exp_days` days, in unix seconds.
    pub fn expires_at(&self) -> Option<i64> {
        self.data.expires_at()
    }
    pub fn down_mbits(&self) -> i32 {
        self.data.down_mbits
    }
    pub fn up_mbits(&self) -> i32 {
        self.data.up_mbits
    }
    pub fn use_global_speed(&self) -> bool {
        self.data.use_global_speed
    }
    pub fn is_consumed(&self) -> bool {
        self.data.is_consumed()
    }

    pub fn inc_time_cons(&mut self, secs: u64) {
        self.data.time_cons = self.data.time_cons.saturating_add(secs);
    }
    /// Adds `mb` megabytes of consumption (rejects NaN, infinite, negative).
    pub fn inc_data_cons(&mut self, mb: f64) -> Result<(), ModelError> {
        let b = mb_to_bytes("data_cons increment", mb)?;
        self.inc_data_cons_bytes(b);
        Ok(())
    }
    pub fn inc_data_cons_bytes(&mut self, bytes: u64) {
        self.data.data_cons_bytes = self.data.data_cons_bytes.saturating_add(bytes);
    }
    pub fn set_time_secs(&mut self, secs: u64) {
        self.data.time_secs = secs;
    }
    /// What the session is limited by (a change of authorization may add a
    /// data limit to a time session).
    pub fn set_session_type(&mut self, t: SessionType) {
        self.data.session_type = t;
    }
    pub fn set_data_mb(&mut self, mb: f64) -> Result<(), ModelError> {
        self.data.data_bytes = mb_to_bytes("data_mb", mb)?;
        Ok(())
    }
    pub fn set_data_bytes(&mut self, bytes: u64) {
        self.data.data_bytes = bytes;
    }
    pub fn set_time_cons(&mut self, secs: u64) {
        self.data.time_cons = secs;
    }
    pub fn set_data_cons(&mut self, mb: f64) -> Result<(), ModelError> {
        self.data.data_cons_bytes = mb_to_bytes("data_cons", mb)?;
        Ok(())
    }
    pub fn set_data_cons_bytes(&mut self, bytes: u64) {
        self.data.data_cons_bytes = bytes;
    }
    /// Sets the start time (unix seconds); `None` marks the session as not started.
    pub fn set_started_at(&mut self, at: Option<i64>) {
        self.data.started_at = at;
    }
    pub fn set_exp_days(&mut self, days: Option<u32>) {
        self.data.exp_days = days;
    }
    pub fn set_down_mbits(&mut self, mbits: i32) -> Result<(), ModelError> {
        check_speed("down_mbits", mbits)?;
        self.data.down_mbits = mbits;
        Ok(())
    }
    pub fn set_up_mbits(&mut self, mbits: i32) -> Result<(), ModelError> {
        check_speed("up_mbits", mbits)?;
        self.data.up_mbits = mbits;
        Ok(())
    }
    pub fn set_use_global_speed(&mut self, v: bool) {
        self.data.use_global_speed = v;
    }

    /// Persists the local data through the session's provider. Rejects data that fails
    /// [`SessionData::validate`] (e.g. a zero allocation for the type).
    pub async fn save(&self) -> Result<(), ModelError> {
        self.data.validate()?;
        self.source.save(self.data.clone()).await
    }

    /// Replaces the local data with the provider's, discarding unsaved changes.
    pub async fn reload(&mut self) -> Result<(), ModelError> {
        self.data = self.source.reload().await?;
        Ok(())
    }
}
