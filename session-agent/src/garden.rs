//! Walled-garden entries: `CIDR[:PORT]` given by the operator, and the
//! gateway's own DNS and portal.

use std::{net::IpAddr, str::FromStr};

use session_common::{GardenKey, GARDEN_DNS, GARDEN_GATEWAY, GARDEN_TCP, GARDEN_UDP};

use crate::error::AgentError;

/// Which transport protocols a garden entry passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GardenProto {
    /// TCP and UDP on a port; every protocol without one.
    #[default]
    Any,
    Tcp,
    Udp,
}

/// An address prefix, optionally restricted to one port (TCP or UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GardenEntry {
    pub addr: IpAddr,
    pub prefix: u8,
    /// 0 = every port and protocol.
    pub port: u16,
    pub proto: GardenProto,
    /// One of the gateway's own services (DHCP, DNS, the portal): the only
    /// garden broadcast and multicast of clients that have not paid may reach.
    pub gateway: bool,
    /// A DNS server clients that have not paid may use (`GARDEN_DNS`): their
    /// DNS reaches only such entries.
    pub dns: bool,
}

impl GardenEntry {
    pub fn host(addr: IpAddr, port: u16) -> Self {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        Self {
            addr,
            prefix,
            port,
            proto: GardenProto::Any,
            gateway: false,
            dns: false,
        }
    }

    /// A DNS server (TCP and UDP port 53) clients that have not paid may use.
    pub fn dns_server(addr: IpAddr, gateway: bool) -> Self {
        Self {
            gateway,
            dns: true,
            ..Self::host(addr, 53)
        }
    }

    /// A service of the gateway itself on `addr`.
    pub fn service(addr: IpAddr, port: u16, proto: GardenProto) -> Self {
        Self {
            proto,
            gateway: true,
            ..Self::host(addr, port)
        }
    }

    /// The trie value's `GARDEN_*` flags.
    pub fn flags(&self) -> u32 {
        let proto = match self.proto {
            GardenProto::Any => 0,
            GardenProto::Tcp => GARDEN_TCP,
            GardenProto::Udp => GARDEN_UDP,
        };
        proto
            | if self.gateway { GARDEN_GATEWAY } else { 0 }
            | if self.dns { GARDEN_DNS } else { 0 }
    }

    /// The trie key: family, port, then the address (IPv4 in its first 4
    /// bytes), and its prefix length.
    pub fn key(&self) -> (u32, GardenKey) {
        let (family, addr, prefix_len) = match self.addr {
            IpAddr::V4(a) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&a.octets());
                (4, b, GardenKey::prefix_v4(self.prefix))
            }
            IpAddr::V6(a) => (6, a.octets(), GardenKey::prefix_v6(self.prefix)),
        };
        // Zero the host bits so equal prefixes give equal keys.
        let mut masked = addr;
        let addr_bits = prefix_len - 24;
        for (i, b) in masked.iter_mut().enumerate() {
            let start = (i as u32) * 8;
            if start >= addr_bits {
                *b = 0;
            } else if start + 8 > addr_bits {
                *b &= 0xffu8 << (8 - (addr_bits - start));
            }
        }
        (
            prefix_len,
            GardenKey {
                family,
                port: self.port.to_be_bytes(),
                addr: masked,
                _pad: 0,
            },
        )
    }
}

impl FromStr for GardenEntry {
    type Err = AgentError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| AgentError::BadGarden {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let s = s.trim();
        // "[v6/len]:port", "v6/len", "v4/len:port", "v4/len", "v4:port", "v4"
        let (net, port) = if let Some(rest) = s.strip_prefix('[') {
            let (net, after) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
            match after {
                "" => (net, None),
                p => (
                    net,
                    Some(
                        p.strip_prefix(':')
                            .ok_or_else(|| bad("expected ':PORT' after ']'"))?,
                    ),
                ),
            }
        } else {
            match s.split_once(':') {
                Some((n, p)) if !p.contains(':') => (n, Some(p)),
                _ => (s, None),
            }
        };
        let port = match port {
            None => 0,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(bad("the port must be 1-65535")),
                Ok(p) => p,
            },
        };
        let (addr, prefix) = match net.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (net, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| bad("not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(l) if l <= max => l,
                _ => return Err(bad(&format!("the prefix length must be 0-{max}"))),
            },
        };
        Ok(Self {
            prefix,
            port,
            ..Self::host(addr, 0)
        })
    }
}

/// The form [`GardenEntry::from_str`] reads: `CIDR[:PORT]`, `[V6/LEN]:PORT`.
impl std::fmt::Display for GardenEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.addr, self.port) {
            (IpAddr::V6(a), p) if p != 0 => write!(f, "[{a}/{}]:{p}", self.prefix),
            (a, 0) => write!(f, "{a}/{}", self.prefix),
            (a, p) => write!(f, "{a}/{}:{p}", self.prefix),
        }
    }
}

impl serde::Serialize for GardenEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for GardenEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_form_reads_back() {
        for s in [
            "203.0.113.0/24:443",
            "[2001:db8::/32]:80",
            "2001:db8::1/128",
            "10.0.0.1/32",
        ] {
            let e: GardenEntry = s.parse().unwrap();
            assert_eq!(e.to_string(), s);
            assert_eq!(e.to_string().parse::<GardenEntry>().unwrap(), e);
        }
    }

    #[test]
    fn parses_forms() {
        let e: GardenEntry = "203.0.113.7/24:443".parse().unwrap();
        assert_eq!(
            (e.addr.to_string().as_str(), e.prefix, e.port),
            ("203.0.113.7", 24, 443)
        );
        let e: GardenEntry = "[2001:db8::/32]:80".parse().unwrap();
        assert_eq!((e.prefix, e.port), (32, 80));
        let e: GardenEntry = "2001:db8::1".parse().unwrap();
        assert_eq!((e.prefix, e.port), (128, 0));
        let e: GardenEntry = "198.51.100.1:53".parse().unwrap();
        assert_eq!((e.prefix, e.port), (32, 53));
        for bad in [
            "",
            "1.2.3.4/33",
            "1.2.3.4:0",
            "1.2.3.4:70000",
            "[::1",
            "[::1]x",
            "host:80",
            "::1/129",
        ] {
            assert!(bad.parse::<GardenEntry>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn keys_mask_host_bits() {
        let a: GardenEntry = "203.0.113.7/24:443".parse().unwrap();
        let b: GardenEntry = "203.0.113.200/24:443".parse().unwrap();
        assert_eq!(a.key(), b.key());
        let (len, key) = a.key();
        assert_eq!(len, 24 + 24);
        assert_eq!(key.family, 4);
        assert_eq!(&key.addr[..4], &[203, 0, 113, 0]);
        assert_eq!(key.port, 443u16.to_be_bytes());
        // An IPv4-mapped IPv6 entry is an IPv6 entry: it never stands for IPv4.
        let m: GardenEntry = "[::ffff:203.0.113.0/120]:443".parse().unwrap();
        assert_eq!(m.key().1.family, 6);
        assert_ne!(m.key().1.addr, key.addr);
    }
}
