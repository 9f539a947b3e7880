//! MAC address key used in the client map.

use core::fmt;

/// A client's Ethernet address, the key of the client index ([`crate::index`]).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacKey {
    pub addr: [u8; 6],
}

impl MacKey {
    pub const fn new(addr: [u8; 6]) -> Self {
        Self { addr }
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
}

/// Why a string is not a MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseMacError;

impl fmt::Display for ParseMacError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected six hex octets separated by ':' or '-', like aa:bb:cc:dd:ee:ff")
    }
}

impl core::str::FromStr for MacKey {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut addr = [0u8; 6];
        let mut n = 0;
        for part in s.split(sep) {
            if n == 6 || part.len() != 2 {
                return Err(ParseMacError);
            }
            addr[n] = u8::from_str_radix(part, 16).map_err(|_| ParseMacError)?;
            n += 1;
        }
        if n != 6 {
            return Err(ParseMacError);
        }
        Ok(Self { addr })
    }
}

impl fmt::Display for MacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = self.addr;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            a[0], a[1], a[2], a[3], a[4], a[5]
        )
    }
}

impl fmt::Debug for MacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
