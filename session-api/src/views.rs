//! What the API shows of devices, sessions and the agent: the server
//! serialises these, the CLI and the tests deserialise them.

use serde::{Deserialize, Serialize};

/// A device's id.
pub type DeviceId = i64;
/// A session's id.
pub type SessionId = u64;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceView {
    pub id: DeviceId,
    pub mac: String,
    pub ip: Option<String>,
    pub hostname: Option<String>,
    pub created_at: i64,
    pub connected: bool,
}

/// A session with everything a portal shows: allocation, consumption, what remains, expiry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionView {
    pub id: SessionId,
    pub device_id: DeviceId,
    pub provider: String,
    /// 0 = time, 1 = data, 2 = time_or_data.
    #[serde(rename = "type")]
    pub session_type: u8,
    pub time_secs: u64,
    /// Megabytes (1 MB = 1,000,000 bytes).
    pub data_mb: f64,
    pub data_bytes: u64,
    pub time_cons: u64,
    pub data_cons: f64,
    pub data_cons_bytes: u64,
    pub remaining_time: u64,
    pub remaining_data: f64,
    pub remaining_data_bytes: u64,
    pub started_at: Option<i64>,
    pub exp_days: Option<u32>,
    pub expires_at: Option<i64>,
    pub down_mbits: i32,
    pub up_mbits: i32,
    pub use_global_speed: bool,
    pub created_at: i64,
    /// This session is the device's running one.
    pub running: bool,
    /// `running`, `paused` (started, not running), `unstarted`, `consumed` or `expired`.
    pub status: String,
}

/// The Flarehotspot SDK's `IsConnected`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectedView {
    pub device_id: DeviceId,
    pub connected: bool,
    /// The running session, when connected.
    pub session_id: Option<SessionId>,
}

/// One attached LAN in `/v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LanView {
    pub name: String,
    /// Client MACs in the datapath's client table, which every LAN shares
    /// (the same number for each LAN).
    pub clients: u32,
}

/// `/v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    pub version: String,
    pub uptime_secs: u64,
    pub lans: Vec<LanView>,
    pub devices: u64,
    pub connected: u64,
    pub sessions: u64,
    pub providers: Vec<String>,
    pub poll_interval_ms: u64,
    pub auto_advance: bool,
    pub polls: u64,
    pub last_poll_us: u64,
}

/// Every error the API answers: a stable code to branch on and a message
/// that names the fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    pub code: String,
    pub message: String,
}

/// One device's use of a voucher code.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedemptionView {
    pub device_id: DeviceId,
    pub mac: String,
    pub session_id: SessionId,
    pub at: i64,
    /// The MACs the device moved to with the code's session (a phone that
    /// changed its Wi-Fi address typed the code again), oldest first.
    #[serde(default)]
    pub moves: Vec<VoucherMoveView>,
}

/// A redemption's session following its device to another MAC.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VoucherMoveView {
    pub from: String,
    pub to: String,
    pub at: i64,
}

/// A voucher: its code, what it buys and where it is in its life.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VoucherView {
    /// The code in canonical form (capitals, no dashes).
    pub code: String,
    /// The code as printed, in groups joined by `-`.
    pub display_code: String,
    pub batch: String,
    pub price: Option<String>,
    /// `unused`, `active`, `used_up`, `expired` or `revoked`.
    pub state: String,
    /// 0 = time, 1 = data, 2 = time_or_data.
    #[serde(rename = "type")]
    pub session_type: u8,
    pub time_secs: u64,
    /// Megabytes (1 MB = 1,000,000 bytes).
    pub data_mb: f64,
    pub exp_days: Option<u32>,
    pub down_mbits: i32,
    pub up_mbits: i32,
    pub use_global_speed: bool,
    pub created_at: i64,
    /// The code cannot be redeemed after this (Unix seconds).
    pub valid_until: Option<i64>,
    pub max_devices: u32,
    pub redemptions: Vec<RedemptionView>,
    pub revoked_at: Option<i64>,
}

/// A RADIUS login the server accepted: the session it gave (the device is connected).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginView {
    pub session: SessionView,
    /// The server's Reply-Message, for the portal to show.
    pub reply_message: Option<String>,
}

/// A redeemed code: the session it bought (the device is connected).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedeemView {
    pub session: SessionView,
    pub voucher: VoucherView,
    /// The device was connected already: the new session waits behind its running one.
    pub queued: bool,
    /// The code's session was not bought now but moved here, with the device
    /// that redeemed it, from this MAC (a phone that changed its Wi-Fi address).
    #[serde(default)]
    pub moved_from: Option<String>,
}

/// One CSV field (RFC 4180), with a leading `'` on text a spreadsheet would run
/// as a formula.
pub fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}
