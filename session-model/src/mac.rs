//! MAC addresses of client devices: the one type of `session_common`
//! ([`MacAddr`]), parsed here with the model's error.

pub use session_common::MacAddr;

use crate::ModelError;

/// Parses `aa:bb:cc:dd:ee:ff` (or `AA-BB-CC-DD-EE-FF`), refusing anything else
/// with [`ModelError::MalformedMac`].
pub fn parse_mac(s: &str) -> Result<MacAddr, ModelError> {
    MacAddr::parse(s).map_err(|_| ModelError::MalformedMac(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_as_string() {
        let m = MacAddr::new([1, 2, 3, 4, 5, 6]);
        let j = serde_json::to_string(&m).unwrap();
        assert_eq!(j, "\"01:02:03:04:05:06\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&j).unwrap(), m);
        assert!(serde_json::from_str::<MacAddr>("\"zz\"").is_err());
        assert!(matches!(parse_mac("zz"), Err(ModelError::MalformedMac(s)) if s == "zz"));
    }
}
