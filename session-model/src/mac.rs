//! MAC addresses of client devices.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ModelError;

/// A 48-bit Ethernet MAC address, displayed and parsed as `aa:bb:cc:dd:ee:ff`.
///
/// Parsing accepts `:` or `-` separators and either case, and rejects anything that
/// is not exactly six two-digit hex groups.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const fn new(bytes: [u8; 6]) -> Self {
        MacAddr(bytes)
    }

    /// Parses `aa:bb:cc:dd:ee:ff` (or `AA-BB-CC-DD-EE-FF`).
    pub fn parse(s: &str) -> Result<Self, ModelError> {
        let bad = || ModelError::MalformedMac(s.to_string());
        if s.len() != 17 {
            return Err(bad());
        }
        let sep = s.as_bytes()[2];
        if sep != b':' && sep != b'-' {
            return Err(bad());
        }
        let mut out = [0u8; 6];
        let mut parts = s.split(sep as char);
        for slot in out.iter_mut() {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }

    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// The address packed into the low 48 bits of a `u64` (used as a storage key).
    pub fn to_u64(&self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    }

    /// Inverse of [`MacAddr::to_u64`]; the high 16 bits are ignored.
    pub fn from_u64(v: u64) -> Self {
        let mut out = [0u8; 6];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = (v >> (8 * (5 - i))) as u8;
        }
        MacAddr(out)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

impl FromStr for MacAddr {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MacAddr::parse(s)
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        MacAddr::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        let m = MacAddr::parse("AA:bb:0C:dd:ee:0f").unwrap();
        assert_eq!(m.0, [0xaa, 0xbb, 0x0c, 0xdd, 0xee, 0x0f]);
        assert_eq!(m.to_string(), "aa:bb:0c:dd:ee:0f");
        assert_eq!(MacAddr::parse("aa-bb-0c-dd-ee-0f").unwrap(), m);
        assert_eq!(MacAddr::from_u64(m.to_u64()), m);
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "aa:bb:cc:dd:ee:fg",
            "aa:bb-cc:dd:ee:ff",
            "aabbccddeeff",
            "a:bb:cc:dd:ee:fff",
            "+a:bb:cc:dd:ee:ff",
            "aa:bb:cc:dd:ee:é",
        ] {
            assert!(
                matches!(MacAddr::parse(s), Err(ModelError::MalformedMac(_))),
                "{s:?} should be rejected"
            );
        }
    }

    #[test]
    fn serde_as_string() {
        let m = MacAddr::new([1, 2, 3, 4, 5, 6]);
        let j = serde_json::to_string(&m).unwrap();
        assert_eq!(j, "\"01:02:03:04:05:06\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&j).unwrap(), m);
        assert!(serde_json::from_str::<MacAddr>("\"zz\"").is_err());
    }
}
