//! Network interfaces of the current namespace.

use std::{ffi::CString, net::IpAddr};

use crate::error::{AgentError, Result};

/// The interface's index, or a clear error if there is none by that name.
pub fn index(name: &str) -> Result<u32> {
    let c = CString::new(name).map_err(|_| AgentError::UnknownInterface(name.to_string()))?;
    // SAFETY: `c` is a NUL-terminated name that outlives the call.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(AgentError::UnknownInterface(name.to_string())),
        i => Ok(i),
    }
}

/// Calls `f` with each entry of getifaddrs(3): its interface name and entry.
fn each_ifaddr(mut f: impl FnMut(&[u8], &libc::ifaddrs)) -> Result<()> {
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `ifap` with a list freed below; entries are
    // read only while it lives.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return Err(AgentError::from_io(
            "listing interface addresses",
            std::io::Error::last_os_error(),
        ));
    }
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: a non-null entry of the list, whose name is a C string.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: the entry's name is a C string that lives as long as the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_bytes();
        f(name, ifa);
    }
    // SAFETY: the list from getifaddrs above, freed once.
    unsafe { libc::freeifaddrs(ifap) };
    Ok(())
}

/// The IP address in `sa`, if it is one.
fn ip_of(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: a sockaddr from getifaddrs, whose family says what it holds.
    match unsafe { (*sa).sa_family } as i32 {
        libc::AF_INET => {
            // SAFETY: an AF_INET sockaddr is a sockaddr_in.
            let sin = unsafe { &*(sa as *const libc::sockaddr_in) };
            Some(IpAddr::from(
                u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: an AF_INET6 sockaddr is a sockaddr_in6.
            let sin6 = unsafe { &*(sa as *const libc::sockaddr_in6) };
            Some(IpAddr::from(sin6.sin6_addr.s6_addr))
        }
        _ => None,
    }
}

/// The interface's Ethernet address, or `None` for one without (a tunnel).
pub fn mac(name: &str) -> Result<Option<[u8; 6]>> {
    let mut out = None;
    each_ifaddr(|n, ifa| {
        // SAFETY: AF_PACKET entries hold a sockaddr_ll.
        if n == name.as_bytes() && unsafe { (*ifa.ifa_addr).sa_family } as i32 == libc::AF_PACKET {
            // SAFETY: as above.
            let ll = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_ll) };
            if ll.sll_halen == 6 {
                let mut m = [0u8; 6];
                m.copy_from_slice(&ll.sll_addr[..6]);
                out = Some(m);
            }
        }
    })?;
    Ok(out)
}

/// The IPv4 and IPv6 addresses configured on the interface.
pub fn addresses(name: &str) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    each_ifaddr(|n, ifa| {
        if n == name.as_bytes() {
            out.extend(ip_of(ifa.ifa_addr));
        }
    })?;
    Ok(out)
}

/// Every address traffic from `lan` to which stays on the gateway: the
/// LAN's own addresses first, then those of every other interface, and for
/// each IPv4 subnet its broadcast and network addresses, for which the kernel
/// keeps broadcast routes (loopback left out: never routed from a LAN).
pub fn gateway_addresses(lan: &str) -> Result<Vec<IpAddr>> {
    let mut out = addresses(lan)?;
    each_ifaddr(|_, ifa| {
        let mut found: Vec<IpAddr> = ip_of(ifa.ifa_addr).into_iter().collect();
        if let (Some(IpAddr::V4(a)), Some(IpAddr::V4(m))) =
            (ip_of(ifa.ifa_addr), ip_of(ifa.ifa_netmask))
        {
            let (a, m) = (u32::from(a), u32::from(m));
            if m.count_ones() <= 30 {
                found.push(IpAddr::V4((a | !m).into()));
                found.push(IpAddr::V4((a & m).into()));
            }
        }
        for a in found {
            if !a.is_loopback() && !a.is_multicast() && !out.contains(&a) {
                out.push(a);
            }
        }
    })?;
    Ok(out)
}
