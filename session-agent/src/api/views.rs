//! What the API shows of devices and sessions.

use serde::Serialize;
use session_model::{ClientSession, Device, DeviceId, SessionId};

#[derive(Debug, Serialize)]
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
#[derive(Debug, Serialize)]
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
}

impl SessionView {
    pub fn new(s: &ClientSession, running: bool) -> Self {
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
        }
    }
}
