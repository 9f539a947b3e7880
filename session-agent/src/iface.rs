//! Network interfaces of the current namespace.

use std::{ffi::CString, net::IpAddr};

use crate::{
    error::{AgentError, Result},
    netlink,
};

/// The interface's index, or a clear error if there is none by that name.
pub fn index(name: &str) -> Result<u32> {
    let c = CString::new(name).map_err(|_| AgentError::UnknownInterface(name.to_string()))?;
    // SAFETY: `c` is a NUL-terminated name that outlives the call.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(AgentError::UnknownInterface(name.to_string())),
        i => Ok(i),
    }
}

/// The interface's Ethernet address, or `None` for one without (a tunnel).
pub fn mac(name: &str) -> Result<Option<[u8; 6]>> {
    match netlink::link(name)? {
        Some(l) => Ok(l.mac),
        None => Err(AgentError::UnknownInterface(name.to_string())),
    }
}

/// The IPv4 and IPv6 addresses configured on the interface.
pub fn addresses(name: &str) -> Result<Vec<IpAddr>> {
    let index = index(name)?;
    Ok(netlink::addresses()?
        .into_iter()
        .filter(|a| a.ifindex == index)
        .map(|a| a.ip)
        .collect())
}

/// Every address traffic from `lan` to which stays on the gateway, as the
/// kernel's local routing table has them (its own addresses, the broadcast
/// and anycast addresses it takes): the LAN's own addresses first, then the
/// rest (loopback and multicast left out: never routed from a LAN). An
/// address it has no local route for, such as a subnet's network address,
/// is routed on, and so is usage.
pub fn gateway_addresses(lan: &str) -> Result<Vec<IpAddr>> {
    let lan_index = index(lan)?;
    let mut out: Vec<IpAddr> = netlink::addresses()?
        .iter()
        .filter(|a| a.ifindex == lan_index)
        .map(|a| a.ip)
        .collect();
    for a in netlink::local_addresses()? {
        if !a.is_loopback() && !a.is_multicast() && !out.contains(&a) {
            out.push(a);
        }
    }
    Ok(out)
}
