//! The session data model: session types, [`SessionData`], devices and stored records.
//!
//! Data volumes are tracked as exact integer bytes. **1 MB = 1,000,000 bytes** (decimal
//! megabytes, as sold on hotspot vouchers). The megabyte views of the seed API
//! (`data_mb`, `data_cons`, remaining data) are derived from the byte counters, and
//! megabyte inputs are converted to bytes by rounding to the nearest byte.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{MacAddr, ModelError, Provider};

/// Bytes in one megabyte (decimal).
pub const BYTES_PER_MB: u64 = 1_000_000;
/// Seconds in one day, for `exp_days`.
pub const SECS_PER_DAY: u64 = 86_400;

/// Session identifier, allocated by the store, increasing in creation order.
pub type SessionId = u64;
/// Client device identifier, allocated by the store.
pub type DeviceId = i64;

/// Kind of allocation of a session. Encoded as `u8` on the wire: 0, 1 or 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum SessionType {
    /// Limited by `time_secs` of connected time.
    Time = 0,
    /// Limited by `data_mb` of traffic.
    Data = 1,
    /// Limited by time and data, whichever runs out first.
    TimeOrData = 2,
}

impl SessionType {
    pub fn uses_time(self) -> bool {
        matches!(self, SessionType::Time | SessionType::TimeOrData)
    }
    pub fn uses_data(self) -> bool {
        matches!(self, SessionType::Data | SessionType::TimeOrData)
    }

    /// True when consumption has used up the allocation this type counts
    /// (time_or_data: whichever runs out first).
    pub fn is_consumed(
        self,
        time_cons: u64,
        time_secs: u64,
        data_cons: u64,
        data_bytes: u64,
    ) -> bool {
        let time_out = time_cons >= time_secs;
        let data_out = data_cons >= data_bytes;
        match self {
            SessionType::Time => time_out,
            SessionType::Data => data_out,
            SessionType::TimeOrData => time_out || data_out,
        }
    }
}

impl TryFrom<u8> for SessionType {
    type Error = ModelError;
    fn try_from(v: u8) -> Result<Self, Self::Error> {
        match v {
            0 => Ok(SessionType::Time),
            1 => Ok(SessionType::Data),
            2 => Ok(SessionType::TimeOrData),
            other => Err(ModelError::InvalidSessionType(other)),
        }
    }
}

impl From<SessionType> for u8 {
    fn from(t: SessionType) -> u8 {
        t as u8
    }
}

impl fmt::Display for SessionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SessionType::Time => "time",
            SessionType::Data => "data",
            SessionType::TimeOrData => "time_or_data",
        })
    }
}

/// Converts megabytes to bytes (1 MB = 1,000,000 bytes), rejecting NaN, infinities,
/// negative values and values beyond `u64` bytes.
pub fn mb_to_bytes(field: &'static str, mb: f64) -> Result<u64, ModelError> {
    if !mb.is_finite() || mb < 0.0 {
        return Err(ModelError::InvalidMegabytes { field, value: mb });
    }
    let bytes = (mb * BYTES_PER_MB as f64).round();
    // 2^64 is exactly representable; anything at or above it does not fit.
    if bytes >= 18_446_744_073_709_551_616.0 {
        return Err(ModelError::MegabytesOverflow { field, value: mb });
    }
    Ok(bytes as u64)
}

/// Converts bytes to megabytes (1 MB = 1,000,000 bytes).
pub fn bytes_to_mb(bytes: u64) -> f64 {
    bytes as f64 / BYTES_PER_MB as f64
}

/// Checks a speed argument (mbit/s, must be >= 0).
pub fn check_speed(field: &'static str, value: i32) -> Result<(), ModelError> {
    if value < 0 {
        Err(ModelError::NegativeSpeed { field, value })
    } else {
        Ok(())
    }
}

/// The data of one session (seed `SessionData`).
///
/// In Rust the data allocation and consumption are exact byte counters
/// (`data_bytes`, `data_cons_bytes`); [`SessionData::data_mb`] and
/// [`SessionData::data_cons`] are the megabyte views. The serde form carries all twelve
/// seed fields (`provider`, `type` as u8, `time_secs`, `data_mb`, `time_cons`,
/// `data_cons`, `started_at`, `exp_days`, `down_mbits`, `up_mbits`, `use_global_speed`,
/// `created_at`) plus the exact `data_bytes` and `data_cons_bytes`, which win over the
/// megabyte fields when both are present. Timestamps are unix seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "SessionDataWire", into = "SessionDataWire")]
pub struct SessionData {
    /// Name of the session provider that owns the session (e.g. `local`).
    pub provider: Provider,
    pub session_type: SessionType,
    /// Allocated time in seconds (time and time_or_data sessions).
    pub time_secs: u64,
    /// Allocated data in bytes (data and time_or_data sessions).
    pub data_bytes: u64,
    /// Consumed time in seconds.
    pub time_cons: u64,
    /// Consumed data in bytes.
    pub data_cons_bytes: u64,
    /// Unix seconds of the first start; `None` until the session is first started.
    pub started_at: Option<i64>,
    /// Validity in days after `started_at + time_secs`; `None` never expires.
    pub exp_days: Option<u32>,
    pub down_mbits: i32,
    pub up_mbits: i32,
    /// When true the global speed limits apply and `down_mbits`/`up_mbits` are ignored.
    pub use_global_speed: bool,
    /// Unix seconds of creation.
    pub created_at: i64,
}

#[derive(Serialize, Deserialize)]
struct SessionDataWire {
    provider: Provider,
    #[serde(rename = "type")]
    session_type: u8,
    time_secs: u64,
    data_mb: f64,
    time_cons: u64,
    data_cons: f64,
    started_at: Option<i64>,
    exp_days: Option<u32>,
    down_mbits: i32,
    up_mbits: i32,
    use_global_speed: bool,
    created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data_cons_bytes: Option<u64>,
}

impl TryFrom<SessionDataWire> for SessionData {
    type Error = ModelError;
    fn try_from(w: SessionDataWire) -> Result<Self, Self::Error> {
        let session_type = SessionType::try_from(w.session_type)?;
        let data_bytes = match w.data_bytes {
            Some(b) => b,
            None => mb_to_bytes("data_mb", w.data_mb)?,
        };
        let data_cons_bytes = match w.data_cons_bytes {
            Some(b) => b,
            None => mb_to_bytes("data_cons", w.data_cons)?,
        };
        check_speed("down_mbits", w.down_mbits)?;
        check_speed("up_mbits", w.up_mbits)?;
        Ok(SessionData {
            provider: w.provider,
            session_type,
            time_secs: w.time_secs,
            data_bytes,
            time_cons: w.time_cons,
            data_cons_bytes,
            started_at: w.started_at,
            exp_days: w.exp_days,
            down_mbits: w.down_mbits,
            up_mbits: w.up_mbits,
            use_global_speed: w.use_global_speed,
            created_at: w.created_at,
        })
    }
}

impl From<SessionData> for SessionDataWire {
    fn from(d: SessionData) -> Self {
        SessionDataWire {
            data_mb: bytes_to_mb(d.data_bytes),
            data_cons: bytes_to_mb(d.data_cons_bytes),
            data_bytes: Some(d.data_bytes),
            data_cons_bytes: Some(d.data_cons_bytes),
            provider: d.provider,
            session_type: d.session_type.into(),
            time_secs: d.time_secs,
            time_cons: d.time_cons,
            started_at: d.started_at,
            exp_days: d.exp_days,
            down_mbits: d.down_mbits,
            up_mbits: d.up_mbits,
            use_global_speed: d.use_global_speed,
            created_at: d.created_at,
        }
    }
}

/// Why a session stopped being available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The allocation of its type is used up.
    Consumed,
    /// `expires_at` has passed.
    Expired,
}

impl SessionData {
    /// Allocated data in megabytes.
    pub fn data_mb(&self) -> f64 {
        bytes_to_mb(self.data_bytes)
    }
    /// Consumed data in megabytes.
    pub fn data_cons(&self) -> f64 {
        bytes_to_mb(self.data_cons_bytes)
    }
    /// Remaining time in seconds, saturating at zero.
    pub fn remaining_time(&self) -> u64 {
        self.time_secs.saturating_sub(self.time_cons)
    }
    /// Remaining data in bytes, saturating at zero.
    pub fn remaining_data_bytes(&self) -> u64 {
        self.data_bytes.saturating_sub(self.data_cons_bytes)
    }
    /// Remaining data in megabytes, saturating at zero.
    pub fn remaining_data(&self) -> f64 {
        bytes_to_mb(self.remaining_data_bytes())
    }

    /// The data budget to enforce in bytes: `Some(remaining)` for data and time_or_data
    /// sessions, `None` (unlimited) for time sessions.
    pub fn data_budget_bytes(&self) -> Option<u64> {
        self.session_type
            .uses_data()
            .then(|| self.remaining_data_bytes())
    }

    /// `started_at + time_secs + exp_days days` in unix seconds; `None` when the session
    /// has no expiry or has not started.
    pub fn expires_at(&self) -> Option<i64> {
        let started = self.started_at?;
        let days = u64::from(self.exp_days?);
        let extra = self
            .time_secs
            .saturating_add(days.saturating_mul(SECS_PER_DAY));
        Some(started.saturating_add(i64::try_from(extra).unwrap_or(i64::MAX)))
    }

    /// True when the allocation of the session's type is used up (time_or_data: whichever
    /// runs out first).
    pub fn is_consumed(&self) -> bool {
        self.session_type.is_consumed(
            self.time_cons,
            self.time_secs,
            self.data_cons_bytes,
            self.data_bytes,
        )
    }

    /// True at or past `expires_at`.
    pub fn is_expired(&self, now_secs: i64) -> bool {
        self.expires_at().is_some_and(|at| now_secs >= at)
    }

    /// Why the session is no longer available at `now_secs`, if it is not.
    pub fn end_reason(&self, now_secs: i64) -> Option<EndReason> {
        if self.is_consumed() {
            Some(EndReason::Consumed)
        } else if self.is_expired(now_secs) {
            Some(EndReason::Expired)
        } else {
            None
        }
    }

    /// Neither consumed nor expired.
    pub fn is_available(&self, now_secs: i64) -> bool {
        self.end_reason(now_secs).is_none()
    }

    /// Checks the invariants a stored session must hold: non-zero allocation for its
    /// type and non-negative speeds.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.session_type.uses_time() && self.time_secs == 0 {
            return Err(ModelError::ZeroAllocation {
                session_type: self.session_type,
                field: "time_secs",
            });
        }
        if self.session_type.uses_data() && self.data_bytes == 0 {
            return Err(ModelError::ZeroAllocation {
                session_type: self.session_type,
                field: "data_mb",
            });
        }
        check_speed("down_mbits", self.down_mbits)?;
        check_speed("up_mbits", self.up_mbits)?;
        Ok(())
    }
}

/// A client device (phone, laptop) known to the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub id: DeviceId,
    pub mac: MacAddr,
    pub ip: Option<IpAddr>,
    pub hostname: Option<String>,
    /// Unix seconds of creation.
    pub created_at: i64,
}

/// A reading of an external byte meter (the kernel's per-device counters).
///
/// `epoch` identifies one life of the counters: when they are recreated (reboot, program
/// reload) the epoch changes and `bytes` starts again from zero. `bytes` is the counter
/// value, which only grows within an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterMark {
    pub epoch: u64,
    pub bytes: u64,
}

/// Connection state of a running session, stored in the session's own record so it is
/// written in the same store write as the consumption it relates to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    /// Monotonic clock reading ([`crate::Clock::mono_ms`]) up to which connected
    /// time has been charged to the session.
    pub charged_to_ms: i64,
    /// The boot `charged_to_ms` was read in ([`crate::Clock::boot_id`]; 0:
    /// unknown). In another boot the session resumes without charging the gap.
    #[serde(default)]
    pub boot: u64,
    /// Meter reading up to which data usage has been charged to the device; `None` until
    /// the first reading after connect.
    pub meter: Option<MeterMark>,
}

/// A session as kept by a [`crate::store::SessionStore`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: SessionId,
    pub device_id: DeviceId,
    pub data: SessionData,
    /// Unix seconds when the manager saw the session end (consumed or expired); used by GC.
    #[serde(default)]
    pub ended_at: Option<i64>,
    /// `Some` while the session is the running session of its connected device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunState>,
}

impl SessionRecord {
    /// The one rule for `ended_at`, applied wherever a session is written: the
    /// moment the session ran out, set the first time it is found spent (an
    /// expired one: its expiry; a consumed one: now), kept while it stays
    /// spent, cleared when a change (an allocation, a later expiry) makes it
    /// available again.
    pub fn settle_end(&mut self, now_secs: i64) {
        self.ended_at = match (self.ended_at, self.data.end_reason(now_secs)) {
            (_, None) => None,
            (Some(at), Some(_)) => Some(at),
            (None, Some(EndReason::Expired)) => {
                Some(self.data.expires_at().unwrap_or(now_secs).min(now_secs))
            }
            (None, Some(EndReason::Consumed)) => Some(now_secs),
        };
    }

    /// The moment the session ended for GC purposes: `ended_at`, else `expires_at` when
    /// that has passed, else `None` (still alive or never observed ending).
    pub fn end_time(&self, now_secs: i64) -> Option<i64> {
        if let Some(at) = self.ended_at {
            return Some(at);
        }
        match self.data.expires_at() {
            Some(at) if at <= now_secs => Some(at),
            _ => None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn data(t: SessionType, secs: u64, bytes: u64) -> SessionData {
        SessionData {
            provider: "local".into(),
            session_type: t,
            time_secs: secs,
            data_bytes: bytes,
            time_cons: 0,
            data_cons_bytes: 0,
            started_at: None,
            exp_days: None,
            down_mbits: 5,
            up_mbits: 3,
            use_global_speed: false,
            created_at: 100,
        }
    }

    #[test]
    fn session_type_wire() {
        assert_eq!(
            serde_json::to_string(&SessionType::TimeOrData).unwrap(),
            "2"
        );
        assert_eq!(
            serde_json::from_str::<SessionType>("1").unwrap(),
            SessionType::Data
        );
        assert!(serde_json::from_str::<SessionType>("3").is_err());
        assert!(matches!(
            SessionType::try_from(7),
            Err(ModelError::InvalidSessionType(7))
        ));
    }

    #[test]
    fn mb_conversion_is_decimal_and_checked() {
        assert_eq!(mb_to_bytes("x", 1.0).unwrap(), 1_000_000);
        assert_eq!(mb_to_bytes("x", 0.5).unwrap(), 500_000);
        assert_eq!(mb_to_bytes("x", 1e-6).unwrap(), 1);
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0] {
            assert!(matches!(
                mb_to_bytes("x", bad),
                Err(ModelError::InvalidMegabytes { .. })
            ));
        }
        assert!(matches!(
            mb_to_bytes("x", 1e300),
            Err(ModelError::MegabytesOverflow { .. })
        ));
        assert_eq!(bytes_to_mb(2_500_000), 2.5);
    }

    #[test]
    fn wire_has_all_twelve_seed_fields() {
        let mut d = data(SessionType::TimeOrData, 60, 2_500_000);
        d.data_cons_bytes = 1_000_000;
        d.started_at = Some(1_000);
        d.exp_days = Some(2);
        let v = serde_json::to_value(&d).unwrap();
        for f in [
            "provider",
            "type",
            "time_secs",
            "data_mb",
            "time_cons",
            "data_cons",
            "started_at",
            "exp_days",
            "down_mbits",
            "up_mbits",
            "use_global_speed",
            "created_at",
        ] {
            assert!(v.get(f).is_some(), "missing {f}");
        }
        assert_eq!(v["type"], 2);
        assert_eq!(v["data_mb"], 2.5);
        assert_eq!(v["data_cons"], 1.0);
        let back: SessionData = serde_json::from_value(v).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn wire_without_byte_fields_uses_megabytes_and_rejects_bad_input() {
        let j = r#"{"provider":"local","type":1,"time_secs":0,"data_mb":1.5,"time_cons":0,
            "data_cons":0.25,"started_at":null,"exp_days":null,"down_mbits":1,"up_mbits":1,
            "use_global_speed":true,"created_at":5}"#;
        let d: SessionData = serde_json::from_str(j).unwrap();
        assert_eq!(d.data_bytes, 1_500_000);
        assert_eq!(d.data_cons_bytes, 250_000);
        assert!(
            serde_json::from_str::<SessionData>(&j.replace("\"type\":1", "\"type\":3")).is_err()
        );
        assert!(serde_json::from_str::<SessionData>(&j.replace("1.5", "-1.5")).is_err());
        assert!(serde_json::from_str::<SessionData>(
            &j.replace("\"down_mbits\":1", "\"down_mbits\":-1")
        )
        .is_err());
    }

    #[test]
    fn consumption_and_expiry() {
        let mut d = data(SessionType::TimeOrData, 60, 1_000);
        assert!(!d.is_consumed());
        assert_eq!(d.expires_at(), None);
        d.exp_days = Some(1);
        assert_eq!(d.expires_at(), None, "not started: no expiry");
        d.started_at = Some(1_000);
        assert_eq!(d.expires_at(), Some(1_000 + 60 + 86_400));
        assert!(!d.is_expired(1_000 + 60 + 86_399));
        assert!(d.is_expired(1_000 + 60 + 86_400));
        d.data_cons_bytes = 1_500;
        assert!(d.is_consumed(), "data runs out first");
        assert_eq!(d.remaining_data_bytes(), 0);
        assert_eq!(d.end_reason(0), Some(EndReason::Consumed));
        d.data_cons_bytes = 0;
        d.time_cons = 61;
        assert!(d.is_consumed(), "time runs out first");
        assert_eq!(d.remaining_time(), 0);

        let mut t = data(SessionType::Time, 60, 0);
        t.data_cons_bytes = 10_000;
        assert!(!t.is_consumed(), "data does not limit a time session");
        assert_eq!(t.data_budget_bytes(), None);
        let dd = data(SessionType::Data, 0, 10);
        assert_eq!(dd.data_budget_bytes(), Some(10));
    }

    #[test]
    fn validate_rejects_zero_allocation_and_negative_speed() {
        assert!(data(SessionType::Time, 0, 5).validate().is_err());
        assert!(data(SessionType::Data, 5, 0).validate().is_err());
        assert!(data(SessionType::TimeOrData, 5, 0).validate().is_err());
        assert!(data(SessionType::TimeOrData, 0, 5).validate().is_err());
        assert!(data(SessionType::Time, 5, 0).validate().is_ok());
        let mut d = data(SessionType::Time, 5, 0);
        d.up_mbits = -1;
        assert!(matches!(
            d.validate(),
            Err(ModelError::NegativeSpeed { .. })
        ));
    }
}
