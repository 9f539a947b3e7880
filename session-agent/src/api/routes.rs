//! The `/v1` routes, declared once and checked against `openapi.json`.
//!
//! Request bodies are JSON objects with unknown keys rejected; numbers are range
//! checked before anything is changed, so a rejected request changes nothing.

use std::sync::Arc;

use axum::Router;

use super::{
    devices::*, events, garden, metrics, radius, sessions::*, state::ApiState, status::*, vouchers,
};

/// Declares the routes once: [`v1`] serves them and [`ROUTES`] lists them
/// (method, path) for the check against `openapi.json`.
macro_rules! routes {
    ($($path:literal => $m0:ident($h0:expr) $(.$m:ident($h:expr))* ;)*) => {
        /// Every route as (method, path), as [`v1`] serves it.
        pub const ROUTES: &[(&str, &str)] = &[
            $( (stringify!($m0), $path), $( (stringify!($m), $path), )* )*
        ];

        pub fn v1() -> Router<Arc<ApiState>> {
            Router::new() $( .route($path, axum::routing::$m0($h0) $(.$m($h))*) )*
        }
    };
}

routes! {
    "/v1/status" => get(status);
    "/v1/providers" => get(providers);
    "/v1/devices" => get(list_devices).post(create_device);
    "/v1/devices/{id}" => get(show_device).delete(delete_device);
    "/v1/devices/by-mac/{mac}" => get(device_by_mac);
    "/v1/devices/by-ip/{ip}" => get(device_by_ip);
    "/v1/devices/{id}/rekey" => post(rekey);
    "/v1/devices/{id}/sessions" => get(device_sessions).post(create_session);
    "/v1/devices/{id}/current-session" => get(current_session);
    "/v1/devices/{id}/session" => get(get_session);
    "/v1/devices/{id}/connected" => get(is_connected);
    "/v1/devices/{id}/connect" => post(connect);
    "/v1/devices/{id}/disconnect" => post(disconnect);
    "/v1/sessions/{id}" => get(show_session).patch(patch_session).delete(delete_session);
    "/v1/sessions/{id}/inc" => post(inc_session);
    "/v1/sessions/{id}/save" => post(save_session);
    "/v1/sessions/{id}/reload" => post(reload_session);
    "/v1/devices/{id}/redeem" => post(vouchers::redeem);
    "/v1/devices/by-ip/{ip}/redeem" => post(vouchers::redeem_by_ip);
    "/v1/devices/{id}/login" => post(radius::login);
    "/v1/devices/by-ip/{ip}/login" => post(radius::login_by_ip);
    "/v1/vouchers" => get(vouchers::list).post(vouchers::create);
    "/v1/vouchers/export" => get(vouchers::export);
    "/v1/vouchers/{code}" => get(vouchers::show).delete(vouchers::revoke);
    "/v1/garden/domains" => get(garden::list).post(garden::add);
    "/v1/garden/domains/{domain}" => delete(garden::remove);
    "/v1/events" => get(events::stream);
    "/v1/metrics" => get(metrics::handler);
    "/metrics" => get(metrics::handler);
    "/v1/openapi.json" => get(openapi);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::ROUTES;

    fn documented() -> BTreeSet<(String, String)> {
        let doc: serde_json::Value = serde_json::from_str(super::super::status::OPENAPI).unwrap();
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().unwrap().keys() {
                if ["get", "post", "put", "patch", "delete", "head", "options"]
                    .contains(&method.as_str())
                {
                    out.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn routes_and_openapi_agree() {
        let served: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_uppercase(), p.to_string()))
            .collect();
        assert_eq!(served.len(), ROUTES.len(), "duplicate entries in ROUTES");
        let doc = documented();
        let undocumented: Vec<_> = served.difference(&doc).collect();
        let unserved: Vec<_> = doc.difference(&served).collect();
        assert!(
            undocumented.is_empty() && unserved.is_empty(),
            "served but not in openapi.json: {undocumented:?}; documented but not served: {unserved:?}"
        );
    }

    /// The document's schemas of what the API answers have exactly the
    /// fields the server's view types serialise.
    #[test]
    fn the_documented_answers_are_the_view_types() {
        use session_api::views::*;
        let doc: serde_json::Value = serde_json::from_str(super::super::status::OPENAPI).unwrap();
        let fields = |v: serde_json::Value| -> BTreeSet<String> {
            v.as_object().unwrap().keys().cloned().collect()
        };
        let session = SessionView {
            id: 1,
            device_id: 1,
            provider: "local".into(),
            session_type: 0,
            time_secs: 0,
            data_mb: 0.0,
            data_bytes: 0,
            time_cons: 0,
            data_cons: 0.0,
            data_cons_bytes: 0,
            remaining_time: 0,
            remaining_data: 0.0,
            remaining_data_bytes: 0,
            started_at: None,
            exp_days: None,
            expires_at: None,
            down_mbits: 0,
            up_mbits: 0,
            use_global_speed: false,
            created_at: 0,
            running: false,
            status: "unstarted".into(),
        };
        let device = DeviceView {
            id: 1,
            mac: "02:00:00:00:00:01".into(),
            ip: None,
            hostname: None,
            created_at: 0,
            connected: false,
        };
        let status = StatusView {
            version: "0".into(),
            uptime_secs: 0,
            lans: vec![],
            devices: 0,
            connected: 0,
            sessions: 0,
            providers: vec![],
            poll_interval_ms: 0,
            auto_advance: true,
            polls: 0,
            last_poll_us: 0,
        };
        let connected = ConnectedView {
            device_id: 1,
            connected: false,
            session_id: None,
        };
        let error = ApiErrorBody {
            code: "x".into(),
            message: "y".into(),
        };
        let redemption = RedemptionView {
            device_id: 1,
            mac: "02:00:00:00:00:01".into(),
            session_id: 1,
            at: 0,
            moves: vec![],
        };
        let voucher = VoucherView {
            code: "ABCDEFGHJK".into(),
            display_code: "ABCDE-FGHJK".into(),
            batch: "b".into(),
            price: None,
            state: "unused".into(),
            session_type: 0,
            time_secs: 60,
            data_mb: 0.0,
            exp_days: None,
            down_mbits: 0,
            up_mbits: 0,
            use_global_speed: true,
            created_at: 0,
            valid_until: None,
            max_devices: 1,
            redemptions: vec![redemption.clone()],
            revoked_at: None,
        };
        let redeem = RedeemView {
            session: session.clone(),
            voucher: voucher.clone(),
            queued: false,
            moved_from: None,
        };
        for (name, v) in [
            ("Redemption", serde_json::to_value(redemption).unwrap()),
            ("Voucher", serde_json::to_value(voucher).unwrap()),
            ("Redeem", serde_json::to_value(redeem).unwrap()),
            ("Session", serde_json::to_value(session).unwrap()),
            ("Device", serde_json::to_value(device).unwrap()),
            ("Status", serde_json::to_value(status).unwrap()),
            ("Connected", serde_json::to_value(connected).unwrap()),
            ("Error", serde_json::to_value(error).unwrap()),
        ] {
            let schema = &doc["components"]["schemas"][name]["properties"];
            assert_eq!(fields(schema.clone()), fields(v), "schema {name}");
        }
    }

    /// The document's schemas of what clients send have exactly the fields of
    /// session-api's request types, which the CLI writes and the server reads.
    #[test]
    fn the_documented_requests_are_session_apis_request_types() {
        use session_api::requests::*;
        let doc: serde_json::Value = serde_json::from_str(super::super::status::OPENAPI).unwrap();
        let fields = |v: &serde_json::Value| -> BTreeSet<String> {
            v.as_object().unwrap().keys().cloned().collect()
        };
        // Every optional field given, so that each is written.
        let v = |x: serde_json::Result<serde_json::Value>| x.unwrap();
        for (name, sent) in [
            (
                "NewDevice",
                v(serde_json::to_value(NewDevice {
                    mac: "02:00:00:00:00:01".into(),
                    ip: Some("10.0.0.2".parse().unwrap()),
                    hostname: Some("h".into()),
                })),
            ),
            ("Rekey", v(serde_json::to_value(Rekey::default()))),
            (
                "NewSession",
                v(serde_json::to_value(NewSession {
                    sale: Some(session_api::requests::SaleRequest::default()),
                    ..NewSession::default()
                })),
            ),
            (
                "Notification",
                v(serde_json::to_value(Notification::default())),
            ),
            (
                "SessionPatch",
                v(serde_json::to_value(SessionPatch {
                    time_secs: Some(1),
                    time_cons: Some(1),
                    data_mb: Some(1.0),
                    data_cons: Some(1.0),
                    started_at: Some(None),
                    exp_days: Some(None),
                    down_mbits: Some(1),
                    up_mbits: Some(1),
                    use_global_speed: Some(true),
                })),
            ),
            ("SessionInc", v(serde_json::to_value(SessionInc::default()))),
            ("RedeemRequest", v(serde_json::to_value(Redeem::default()))),
            (
                "LoginRequest",
                v(serde_json::to_value(Credentials::default())),
            ),
            (
                "NewVouchers",
                v(serde_json::to_value(NewVouchers {
                    price: Some("1".into()),
                    valid_until: Some(1),
                    max_devices: Some(1),
                    code_length: Some(10),
                    group: Some(5),
                    ..NewVouchers::default()
                })),
            ),
            (
                "NewGardenDomain",
                v(serde_json::to_value(NewDomain::default())),
            ),
        ] {
            let schema = &doc["components"]["schemas"][name]["properties"];
            assert_eq!(fields(schema), fields(&sent), "schema {name}");
        }
    }

    #[test]
    fn every_error_response_is_json() {
        let doc: serde_json::Value = serde_json::from_str(super::super::status::OPENAPI).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let r = op["responses"].as_object().unwrap();
                assert!(
                    r.keys().any(|k| k.starts_with('2')),
                    "{method} {path}: no success response"
                );
                for (code, v) in r {
                    if code.starts_with('4') || code.starts_with('5') {
                        assert_eq!(
                            v["$ref"], "#/components/responses/Error",
                            "{method} {path} {code}"
                        );
                    }
                }
            }
        }
    }
}
