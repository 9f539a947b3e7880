//! What the API shows of devices and sessions.

use serde::{Deserialize, Serialize};
use session_model::{ClientSession, Device, DeviceId, SessionId};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceView {
    pub id: DeviceId,
    pub mac: String,
    pub ip: Option<String>,
    pub hostname: Option<String>,
    pub created_at: i64,
    pub connected: bool,
}

impl DeviceView {
    pub fn new(d: &Device, connected: bool) -> Self {
        Self {
            id: d.id,
            mac: d.mac.to_string(),
            ip: d.ip.map(|i| i.to_string()),
            hostname: d.hostname.clone(),
            created_at: d.created_at,
            connected,
        }
    }
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

impl SessionView {
    pub fn new(s: &ClientSession, running: bool) -> Self {
        Self::at(s, running, now_secs())
    }

    /// The view at `now` (unix seconds), which decides `expired`.
    pub fn at(s: &ClientSession, running: bool, now: i64) -> Self {
        let status = if s.is_consumed() {
            "consumed"
        } else if s.data().is_expired(now) {
            "expired"
        } else if running {
            "running"
        } else if s.started_at().is_some() {
            "paused"
        } else {
            "unstarted"
        };
        Self {
            id: s.id(),
            device_id: s.device_id(),
            provider: s.provider().to_string(),
            session_type: s.type_u8(),
            time_secs: s.time_secs(),
            data_mb: s.data_mb(),
            data_bytes: s.data_bytes(),
            time_cons: s.time_consumption(),
            data_cons: s.data_consumption(),
            data_cons_bytes: s.data_consumption_bytes(),
            remaining_time: s.remaining_time(),
            remaining_data: s.remaining_data(),
            remaining_data_bytes: s.remaining_data_bytes(),
            started_at: s.started_at(),
            exp_days: s.exp_days(),
            expires_at: s.expires_at(),
            down_mbits: s.down_mbits(),
            up_mbits: s.up_mbits(),
            use_global_speed: s.use_global_speed(),
            created_at: s.created_at(),
            running,
            status: status.to_string(),
        }
    }
}

/// Seed `IsConnected`.
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

pub(crate) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
