//! Session model and stores of the gateway.
//!
//! * [`model`]: [`SessionType`], [`SessionData`] (exact byte counters, 1 MB = 1,000,000
//!   bytes), [`Device`], [`SessionRecord`].
//! * [`store`]: the [`SessionStore`] trait and the `memory`, `redb` and `hybrid` providers.
//! * [`manager`]: [`SessionsMgr`], which connects and disconnects devices, creates
//!   sessions, applies traffic and time consumption in bulk and publishes
//!   [`SessionEvent`]s.
//! * [`source`]: [`SessionSource`] / [`SessionProvider`] and [`ClientSession`].
//! * [`voucher`]: voucher codes, what they buy and their redemption.
//! * [`plan`]: price plans, and the sales their vouchers made.

pub mod block;
pub mod clock;
pub mod error;
pub mod idmap;
pub mod limits;
pub mod mac;
pub mod manager;
pub mod model;
pub mod plan;
pub mod provider;
pub mod source;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod voucher;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{ModelError, StoreError};
pub use mac::{parse_mac, MacAddr};
pub use manager::{Desired, Grant, SessionEvent, SessionsMgr, TickReport, Transition};
pub use model::{
    bytes_to_mb, mb_to_bytes, Device, DeviceId, EndReason, MeterMark, RunState, SessionData,
    SessionId, SessionRecord, SessionType, BYTES_PER_MB, SECS_PER_DAY,
};
pub use plan::{format_price, parse_price, Plan, Sale, SaleTerms};
pub use provider::Provider;
pub use source::{
    ClientSession, LocalProvider, LocalSource, SessionProvider, SessionSource, LOCAL_PROVIDER,
};
pub use store::{
    open_store, store_names, HybridOptions, HybridStore, MemoryStore, RedbStore, SessionStore,
    Shelf, ShelfWrite, StoreConfig, StoreRegistry, SyncMode, UsageUpdate,
};
pub use voucher::{
    generate_code, normalize_code, NewBatch, RedeemRefusal, Redemption, Voucher, VoucherMove,
    VoucherState, VoucherTemplate, DEFAULT_CODE_LEN, DEFAULT_GROUP,
};
