//! Network interfaces of the current namespace.

use std::{ffi::CString, net::IpAddr};

use crate::error::{AgentError, Result};

/// The interface's index, or a clear error if there is none by that name.
pub fn index(name: &str) -> Result<u32> {
    let c = CString::new(name).map_err(|_| AgentError::UnknownInterface(name.to_string()))?;
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(AgentError::UnknownInterface(name.to_string())),
        i => Ok(i),
    }
}

/// The interface's Ethernet address, or `None` for one without (a tunnel).
pub fn mac(name: &str) -> Result<Option<[u8; 6]>> {
    let mut out = None;
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
        // SAFETY: a non-null entry of the list.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null()
            || unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_bytes() != name.as_bytes()
        {
            continue;
        }
        // SAFETY: AF_PACKET entries hold a sockaddr_ll.
        if unsafe { (*ifa.ifa_addr).sa_family } as i32 == libc::AF_PACKET {
            let ll = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_ll) };
            if ll.sll_halen == 6 {
                let mut m = [0u8; 6];
                m.copy_from_slice(&ll.sll_addr[..6]);
                out = Some(m);
            }
        }
    }
    // SAFETY: the list from getifaddrs above, freed once.
    unsafe { libc::freeifaddrs(ifap) };
    Ok(out)
}

/// The IPv4 and IPv6 addresses configured on the interface.
pub fn addresses(name: &str) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return Err(AgentError::from_io(
            "listing interface addresses",
            std::io::Error::last_os_error(),
        ));
    }
    let mut cur = ifap;
    while !cur.is_null() {
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null()
            || unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_bytes() != name.as_bytes()
        {
            continue;
        }
        match unsafe { (*ifa.ifa_addr).sa_family } as i32 {
            libc::AF_INET => {
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::from(
                    u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                ));
            }
            libc::AF_INET6 => {
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
            }
            _ => {}
        }
    }
    unsafe { libc::freeifaddrs(ifap) };
    Ok(out)
}
