//! The API's view types (from `session_api`) made from the model.

use session_model::{ClientSession, Device};

pub use session_api::views::*;

/// A device as the API shows it.
pub fn device_view(d: &Device, connected: bool) -> DeviceView {
    DeviceView {
        id: d.id,
        mac: d.mac.to_string(),
        ip: d.ip.map(|i| i.to_string()),
        hostname: d.hostname.clone(),
        created_at: d.created_at,
        connected,
    }
}

/// A session as the API shows it at `now` (unix seconds), which decides `expired`.
pub fn session_view(s: &ClientSession, running: bool, now: i64) -> SessionView {
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
    SessionView {
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
