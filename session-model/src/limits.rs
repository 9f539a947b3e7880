//! The ranges every way in (the operator API, the CLI, a fleet's database)
//! holds a session's and a voucher's amounts to.

use crate::ModelError;

/// Longest accepted allocation or consumption of time: 100 years.
pub const MAX_SECS: u64 = 100 * 366 * 86_400;
/// Longest accepted expiry: 100 years.
pub const MAX_EXP_DAYS: u32 = 36_600;
/// Fastest accepted speed: 1 Tbit/s.
pub const MAX_MBITS: i32 = 1_000_000;
/// Largest accepted data amount: 10^12 MB (one exabyte).
pub const MAX_MB: f64 = 1e12;
/// Latest accepted moment: 9999-12-31T23:59:59Z.
pub const MAX_TIMESTAMP: i64 = 253_402_300_799;

fn out_of_range(field: &'static str, what: String) -> ModelError {
    ModelError::OutOfRange { field, what }
}

/// `v` seconds, at most [`MAX_SECS`].
pub fn check_secs(field: &'static str, v: u64) -> Result<u64, ModelError> {
    if v > MAX_SECS {
        return Err(out_of_range(field, format!("at most {MAX_SECS}")));
    }
    Ok(v)
}

/// `v` megabytes, finite and 0 to [`MAX_MB`].
pub fn check_mb(field: &'static str, v: f64) -> Result<f64, ModelError> {
    if !v.is_finite() || !(0.0..=MAX_MB).contains(&v) {
        return Err(out_of_range(field, format!("between 0 and {MAX_MB}")));
    }
    Ok(v)
}

/// `v` mbit/s, 0 (no limit) to [`MAX_MBITS`].
pub fn check_mbits(field: &'static str, v: i32) -> Result<i32, ModelError> {
    if !(0..=MAX_MBITS).contains(&v) {
        return Err(out_of_range(field, format!("between 0 and {MAX_MBITS}")));
    }
    Ok(v)
}

/// Days until a session expires, at most [`MAX_EXP_DAYS`].
pub fn check_exp_days(v: Option<u32>) -> Result<Option<u32>, ModelError> {
    match v {
        Some(d) if d > MAX_EXP_DAYS => {
            Err(out_of_range("exp_days", format!("at most {MAX_EXP_DAYS}")))
        }
        v => Ok(v),
    }
}

/// Unix seconds, 0 to [`MAX_TIMESTAMP`].
pub fn check_timestamp(field: &'static str, v: Option<i64>) -> Result<Option<i64>, ModelError> {
    match v {
        Some(t) if !(0..=MAX_TIMESTAMP).contains(&t) => Err(out_of_range(
            field,
            format!("unix seconds between 0 and {MAX_TIMESTAMP}"),
        )),
        v => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_range_takes_its_bounds_and_refuses_beyond_them() {
        assert!(check_secs("t", MAX_SECS).is_ok() && check_secs("t", MAX_SECS + 1).is_err());
        assert!(check_mb("d", 0.0).is_ok() && check_mb("d", MAX_MB).is_ok());
        for bad in [-0.1, MAX_MB * 2.0, f64::NAN, f64::INFINITY] {
            assert!(check_mb("d", bad).is_err(), "{bad}");
        }
        assert!(check_mbits("s", MAX_MBITS).is_ok() && check_mbits("s", -1).is_err());
        assert!(check_exp_days(Some(MAX_EXP_DAYS + 1)).is_err() && check_exp_days(None).is_ok());
        assert!(check_timestamp("at", Some(-1)).is_err());
        assert!(check_timestamp("at", Some(MAX_TIMESTAMP)).is_ok());
        let e = check_mbits("up_mbits", MAX_MBITS + 1).unwrap_err();
        assert_eq!(e.to_string(), "up_mbits must be between 0 and 1000000");
    }
}
