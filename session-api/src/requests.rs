//! What clients send: the JSON bodies of the control API's requests. The
//! agent reads them with unknown keys refused and checks their ranges; the
//! CLI and the tests write them.

use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize};

/// `POST /v1/devices`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// `POST /v1/devices/{id}/rekey`: the device's new MAC.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rekey {
    pub mac: String,
}

/// `POST /v1/devices/{id}/sessions`: the Flarehotspot SDK's `CreateSession` arguments.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSession {
    /// time (0), data (1) or time_or_data (2).
    #[serde(rename = "type")]
    pub session_type: u8,
    #[serde(default)]
    pub time_secs: u64,
    #[serde(default)]
    pub data_mb: f64,
    /// Days the session stays valid after its first use.
    #[serde(default)]
    pub exp_days: Option<u32>,
    #[serde(default)]
    pub down_mbits: i32,
    #[serde(default)]
    pub up_mbits: i32,
    #[serde(default)]
    pub use_global_speed: bool,
    /// What the session was sold for, when it was: a sale in the operator
    /// page's report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sale: Option<SaleRequest>,
}

/// A session sold through the API: its price and what it is called.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaleRequest {
    /// The price as printed, at most two decimals (`"20"`, `"20.50"`).
    pub price: String,
    /// Three capital letters (`PHP`).
    pub currency: String,
    /// What was sold, as the sales report names it (default `API`).
    #[serde(default)]
    pub plan: Option<String>,
}

/// `POST /v1/devices/{id}/connect` and `.../disconnect`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notification {
    #[serde(default)]
    pub notification: String,
}

/// `PATCH /v1/sessions/{id}`: what changes; a key left out stays as it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionPatch {
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub time_secs: Option<u64>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub time_cons: Option<u64>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub data_mb: Option<f64>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub data_cons: Option<f64>,
    /// `Some(None)` (`null`) clears it.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub started_at: Option<Option<i64>>,
    /// `Some(None)` (`null`) clears it.
    #[serde(
        default,
        deserialize_with = "double_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub exp_days: Option<Option<u32>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub down_mbits: Option<i32>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub up_mbits: Option<i32>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub use_global_speed: Option<bool>,
}

/// `POST /v1/sessions/{id}/inc`: consumption to add.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionInc {
    #[serde(default)]
    pub time_cons: u64,
    #[serde(default)]
    pub data_cons: f64,
}

/// `POST /v1/vouchers`: a batch of codes, each buying the session described.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewVouchers {
    pub count: u32,
    pub batch: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<String>,
    /// time (0), data (1) or time_or_data (2).
    #[serde(rename = "type")]
    pub session_type: u8,
    #[serde(default)]
    pub time_secs: u64,
    #[serde(default)]
    pub data_mb: f64,
    #[serde(default)]
    pub exp_days: Option<u32>,
    #[serde(default)]
    pub down_mbits: i32,
    #[serde(default)]
    pub up_mbits: i32,
    #[serde(default)]
    pub use_global_speed: bool,
    /// Unix seconds after which the codes are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<i64>,
    /// Devices one code may be redeemed on (left out: 1).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_devices: Option<u32>,
    /// Characters of each code (left out: the agent's default).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub code_length: Option<usize>,
    /// Characters between dashes when a code is printed (left out: the agent's default).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub group: Option<usize>,
}

/// `POST /v1/devices/{id}/redeem` (and by IP).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redeem {
    pub code: String,
}

/// `POST /v1/devices/{id}/login` (and by IP): a portal login against RADIUS.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// `POST /v1/garden/domains`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDomain {
    pub domain: String,
}

/// A key that is there: `null` is refused (as for a key without `Option`).
fn present<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    T::deserialize(d).map(Some)
}

/// `Some(None)` for an explicit `null`, `None` when the key is absent.
fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_tells_a_key_left_out_from_a_null_and_writes_them_back_alike() {
        let p: SessionPatch =
            serde_json::from_str(r#"{"time_secs": 60, "started_at": null}"#).unwrap();
        assert_eq!(p.time_secs, Some(60));
        assert_eq!(p.started_at, Some(None));
        assert_eq!(p.exp_days, None);
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({"time_secs": 60, "started_at": null})
        );
        assert!(serde_json::from_str::<SessionPatch>(r#"{"time_secs": null}"#).is_err());
        assert!(serde_json::from_str::<SessionPatch>(r#"{"time_secz": 1}"#).is_err());
    }

    #[test]
    fn a_batch_left_without_its_optional_keys_leaves_them_to_the_agent() {
        let v = NewVouchers {
            count: 3,
            batch: "b".into(),
            ..NewVouchers::default()
        };
        let j = serde_json::to_value(&v).unwrap();
        assert!(j.get("code_length").is_none() && j.get("max_devices").is_none());
        assert_eq!(serde_json::from_value::<NewVouchers>(j).unwrap(), v);
        assert!(serde_json::from_str::<NewVouchers>(
            r#"{"count": 1, "batch": "b", "type": 0, "code_length": null}"#
        )
        .is_err());
    }

    #[test]
    fn credentials_never_print_the_password() {
        let c = Credentials {
            username: "ann".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
