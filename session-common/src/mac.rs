//! The one MAC address type: the client index's key in the kernel, a device's
//! address in the sessions, and what the API and the CLI read and print.
//!
//! Written and parsed as `aa:bb:cc:dd:ee:ff` (or with `-`, either case). Two
//! packings into a `u64` exist, each for its reader: [`crate::mac_word`]
//! (little-endian, the index's hash input, read by the datapath) and
//! [`MacAddr::to_u64`] (big-endian, the stores' key, which sorts like the text).

use core::fmt;

/// A 48-bit Ethernet MAC address.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr {
    pub addr: [u8; 6],
}

impl MacAddr {
    pub const fn new(addr: [u8; 6]) -> Self {
        Self { addr }
    }

    pub const fn octets(&self) -> [u8; 6] {
        self.addr
    }

    /// Group (multicast/broadcast) addresses have the least significant bit of the first octet set.
    #[inline(always)]
    pub const fn is_group(&self) -> bool {
        self.addr[0] & 1 == 1
    }

    pub const fn is_zero(&self) -> bool {
        let a = self.addr;
        a[0] | a[1] | a[2] | a[3] | a[4] | a[5] == 0
    }

    /// The address in the low 48 bits of a `u64`, first octet highest (the
    /// stores' key: it sorts like the written form).
    pub const fn to_u64(&self) -> u64 {
        let a = self.addr;
        u64::from_be_bytes([0, 0, a[0], a[1], a[2], a[3], a[4], a[5]])
    }

    /// Inverse of [`MacAddr::to_u64`]; the high 16 bits are ignored.
    pub const fn from_u64(v: u64) -> Self {
        let b = v.to_be_bytes();
        Self::new([b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    /// Parses `aa:bb:cc:dd:ee:ff` or `AA-BB-CC-DD-EE-FF`: exactly six
    /// two-digit hex groups and one kind of separator.
    pub fn parse(s: &str) -> Result<Self, ParseMacError> {
        let b = s.as_bytes();
        if b.len() != 17 || !(b[2] == b':' || b[2] == b'-') {
            return Err(ParseMacError);
        }
        let sep = b[2];
        let mut addr = [0u8; 6];
        for (i, octet) in addr.iter_mut().enumerate() {
            let at = i * 3;
            if i > 0 && b[at - 1] != sep {
                return Err(ParseMacError);
            }
            *octet = (hex(b[at])? << 4) | hex(b[at + 1])?;
        }
        Ok(Self { addr })
    }

    /// The written form, without allocating.
    fn text(&self) -> [u8; 17] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b':'; 17];
        for (i, o) in self.addr.iter().enumerate() {
            out[i * 3] = HEX[(o >> 4) as usize];
            out[i * 3 + 1] = HEX[(o & 15) as usize];
        }
        out
    }
}

fn hex(c: u8) -> Result<u8, ParseMacError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(ParseMacError),
    }
}

/// Why a string is not a MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseMacError;

impl fmt::Display for ParseMacError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected six hex octets separated by ':' or '-', like aa:bb:cc:dd:ee:ff")
    }
}

impl core::str::FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.text();
        // The text is ASCII hex digits and colons.
        f.write_str(core::str::from_utf8(&t).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// As its written form.
#[cfg(feature = "serde")]
impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = self.text();
        s.serialize_str(core::str::from_utf8(&t).map_err(serde::ser::Error::custom)?)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = MacAddr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a MAC address like aa:bb:cc:dd:ee:ff")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MacAddr, E> {
                MacAddr::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(Text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        let m = MacAddr::parse("AA:bb:0C:dd:ee:0f").unwrap();
        assert_eq!(m.addr, [0xaa, 0xbb, 0x0c, 0xdd, 0xee, 0x0f]);
        let mut buf = [0u8; 17];
        buf.copy_from_slice(&m.text());
        assert_eq!(&buf, b"aa:bb:0c:dd:ee:0f");
        assert_eq!(MacAddr::parse("aa-bb-0c-dd-ee-0f").unwrap(), m);
        assert_eq!(MacAddr::from_u64(m.to_u64()), m);
        assert_eq!(m.to_u64(), 0xaabb_0cdd_ee0f);
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
            " aa:bb:cc:dd:ee:f",
        ] {
            assert_eq!(MacAddr::parse(s), Err(ParseMacError), "{s:?}");
        }
    }
}
