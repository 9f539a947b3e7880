//! The session-agent control API as its clients see it, shared by the agent
//! (which sends these types), its CLI and the tests (which read them):
//!
//! - [`views`]: what the API shows of devices, sessions and the agent, and
//!   its error body.
//! - [`requests`]: what clients send, the bodies of its requests.
//! - [`client`]: a blocking HTTP/1.1 client for the API's unix socket.

pub mod client;
pub mod requests;
pub mod views;

pub use client::{ApiClient, ClientError, Reply};
pub use requests::{
    Credentials, NewDevice, NewDomain, NewSession, NewVouchers, Notification, Redeem, Rekey,
    SessionInc, SessionPatch,
};
pub use views::{
    csv_field, ApiErrorBody, ConnectedView, DeviceView, LanView, LoginView, RedeemView,
    RedemptionView, SessionView, StatusView, VoucherMoveView, VoucherView,
};
