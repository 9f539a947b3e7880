//! Typed errors of the session model, the manager and the stores.

use std::path::PathBuf;

/// Errors raised by a [`crate::store::SessionStore`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The redb database reported an error during `context`.
    #[error("redb error during {context}: {source}")]
    Redb {
        context: &'static str,
        #[source]
        source: Box<redb::Error>,
    },
    /// A checkpoint could not be written into the database file (a full
    /// disk): the writes are all kept in the log beside it.
    #[error(
        "checkpoint into {} failed: {source}; every write is kept in the log beside it: if its \
         disk is full, free space there, and the next checkpoint folds the log in, without a \
         restart",
        path.display()
    )]
    Checkpoint {
        path: PathBuf,
        #[source]
        source: Box<StoreError>,
    },
    /// An I/O error on a file owned by the store.
    #[error("i/o error during {context} on {path}: {source}{}", disk_fix(source))]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A stored record could not be encoded or decoded.
    #[error("cannot {context}: {source}")]
    Codec {
        context: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The database file was written by a newer release with an unknown schema.
    #[error(
        "database {path} has schema version {found}, this release supports up to {supported}; \
         refusing to open it (upgrade the agent or restore a compatible database)"
    )]
    UnsupportedSchema {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    /// The stored data contradicts itself (for example an index entry without its row).
    #[error("store is inconsistent: {0}")]
    Corrupt(String),
    #[error("unknown device id {0}")]
    UnknownDevice(i64),
    #[error("unknown session id {0}")]
    UnknownSession(u64),
    #[error("MAC address {mac} already belongs to device {device_id}")]
    DuplicateMac { mac: crate::MacAddr, device_id: i64 },
    /// A save tried to move a session to another device.
    #[error("session {session_id} belongs to device {stored}, not {given}")]
    DeviceMismatch {
        session_id: u64,
        stored: i64,
        given: i64,
    },
    /// The code (masked: its last four characters) names no voucher.
    #[error("unknown voucher {0}")]
    UnknownVoucher(String),
    /// A new voucher's code is taken (masked).
    #[error("voucher code {0} exists already")]
    DuplicateVoucher(String),
    #[error("unknown session store {0:?}")]
    UnknownProvider(String),
    #[error("session store {provider} needs a path in its configuration")]
    MissingPath { provider: String },
    #[error("store lock poisoned by a panicking thread")]
    Poisoned,
}

/// What an operator can do about an I/O error that says the disk is full or
/// read-only.
fn disk_fix(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind::{FileTooLarge, ReadOnlyFilesystem, StorageFull};
    match e.kind() {
        StorageFull | FileTooLarge | ReadOnlyFilesystem => {
            "; free space on its disk or make it writable"
        }
        _ => "",
    }
}

impl StoreError {
    pub(crate) fn io(
        context: &'static str,
        path: &std::path::Path,
        source: std::io::Error,
    ) -> Self {
        StoreError::Io {
            context,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Errors of the session model and the sessions manager.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid session type {0}: expected 0 (time), 1 (data) or 2 (time_or_data)")]
    InvalidSessionType(u8),
    #[error("invalid {field}: {value} (must be a finite number >= 0)")]
    InvalidMegabytes { field: &'static str, value: f64 },
    #[error("{field} is too large: {value} MB does not fit in 64-bit bytes")]
    MegabytesOverflow { field: &'static str, value: f64 },
    #[error("a {session_type} session needs a non-zero {field}")]
    ZeroAllocation {
        session_type: crate::SessionType,
        field: &'static str,
    },
    /// An amount beyond what [`crate::limits`] accepts.
    #[error("{field} must be {what}")]
    OutOfRange { field: &'static str, what: String },
    #[error("invalid {field}: {value} (speeds must be >= 0 mbit/s)")]
    NegativeSpeed { field: &'static str, value: i32 },
    #[error("malformed MAC address {0:?}: expected six hex pairs like aa:bb:cc:dd:ee:ff")]
    MalformedMac(String),
    #[error("unknown device id {0}")]
    UnknownDevice(i64),
    #[error("unknown device MAC {0}")]
    UnknownMac(crate::MacAddr),
    #[error("unknown session id {0}")]
    UnknownSession(u64),
    #[error("device {0} has no available session (none left, or all consumed or expired)")]
    NoAvailableSession(i64),
    #[error("device {0} is connected: disconnect it first, or remove it with ?force=true")]
    DeviceConnected(i64),
    #[error("session {0} is running: disconnect its device first, or remove it with ?force=true")]
    SessionRunning(u64),
    #[error("unknown session provider {0:?}")]
    UnknownProvider(String),
    #[error("session provider {0:?} is already registered")]
    DuplicateProvider(String),
    #[error("session provider {provider} failed: {message}")]
    Provider { provider: String, message: String },
    /// A code was not redeemed; the refusal says why.
    #[error("{0}")]
    Redeem(#[from] crate::RedeemRefusal),
    /// Only unused codes can be revoked.
    #[error("voucher {code} is {state} and cannot be revoked: only unused codes can")]
    VoucherNotRevocable { code: String, state: &'static str },
    /// A batch of vouchers that cannot be made as asked.
    #[error("invalid voucher batch: {0}")]
    InvalidBatch(String),
    /// The operator blocked the device.
    #[error("device {0} is blocked by the operator: it cannot connect or redeem a code until it is unblocked")]
    Blocked(i64),
    /// A price plan that cannot be kept as given.
    #[error("invalid price plan: {0}")]
    InvalidPlan(String),
    /// No plan of this name.
    #[error("no price plan named {0:?}: see the plans page or create it first")]
    UnknownPlan(String),
    /// The OS's random source failed.
    #[error("cannot draw voucher codes from the OS's random source: {0}")]
    Random(String),
    #[error("manager state lock poisoned by a panicking thread")]
    Poisoned,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ModelError> for StoreError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Store(s) => s,
            other => StoreError::Corrupt(other.to_string()),
        }
    }
}
