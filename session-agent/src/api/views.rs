//! The API's view types (from `session_api`) made from the model.

use session_model::{bytes_to_mb, ClientSession, Device, Voucher, VoucherState};

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

/// A voucher as the API shows it, in `state`.
pub fn voucher_view(v: &Voucher, state: VoucherState) -> VoucherView {
    let t = &v.template;
    VoucherView {
        code: v.code.clone(),
        display_code: v.display_code(),
        batch: v.batch.clone(),
        price: v.price.clone(),
        state: state.name().to_string(),
        session_type: t.session_type as u8,
        time_secs: t.time_secs,
        data_mb: bytes_to_mb(t.data_bytes),
        exp_days: t.exp_days,
        down_mbits: t.down_mbits,
        up_mbits: t.up_mbits,
        use_global_speed: t.use_global_speed,
        created_at: v.created_at,
        valid_until: v.valid_until,
        max_devices: v.max_devices,
        redemptions: v
            .redemptions
            .iter()
            .map(|r| RedemptionView {
                device_id: r.device_id,
                mac: r.mac.to_string(),
                session_id: r.session_id,
                at: r.at,
                moves: r
                    .moves
                    .iter()
                    .map(|m| VoucherMoveView {
                        from: m.from.to_string(),
                        to: m.to.to_string(),
                        at: m.at,
                    })
                    .collect(),
            })
            .collect(),
        revoked_at: v.revoked_at,
    }
}
