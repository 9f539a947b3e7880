//! Who is behind an address on the LANs, and which address a MAC uses: the
//! datapath's address bindings first (one map lookup), then the kernel's
//! neighbour entry of that address on each LAN (the agent runs in the
//! gateway's network namespace), asked over routing netlink. Only resolved
//! entries with a link-layer address count.

use std::net::{IpAddr, Ipv4Addr};

use session_model::{Device, MacAddr, ModelError, StoreError};

use crate::{error::AgentError, gateway::Gateway, runtime::off_runtime};

/// Why no device was found behind an address.
#[derive(Debug, thiserror::Error)]
pub enum NeighError {
    #[error("no client with address {0} in the neighbour table of the LAN interfaces")]
    UnknownIp(IpAddr),
    #[error("{ip} is {mac}, but {source}")]
    UnknownMac {
        ip: IpAddr,
        mac: MacAddr,
        #[source]
        source: ModelError,
    },
    /// The bindings or the neighbour table could not be read.
    #[error("looking up {ip}: {source}")]
    Lookup {
        ip: IpAddr,
        #[source]
        source: AgentError,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// An IPv4-mapped IPv6 address (from a dual-stack socket) as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The resolved neighbour entry for `ip` on one of the interfaces `lans`,
/// asked of the kernel per LAN (no walk of its table).
fn in_neighbour_table(ip: IpAddr, lans: &[u32]) -> Result<Option<MacAddr>, AgentError> {
    for &lan in lans {
        let found = crate::netlink::neighbour(ip, lan)?
            .filter(|e| !e.unresolved)
            .and_then(|e| e.mac.map(MacAddr::new))
            .filter(|m| !m.is_zero());
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// The MAC behind `ip` on one of the gateway's LANs.
pub async fn mac_for_ip(gw: &Gateway, ip: IpAddr) -> Result<MacAddr, NeighError> {
    let ip = canonical(ip);
    let failed = |source| NeighError::Lookup { ip, source };
    if let Some(mac) = gw.datapath().bound_mac(ip).map_err(failed)? {
        return Ok(mac);
    }
    let lans = gw.lan_indexes();
    off_runtime(move || async move { in_neighbour_table(ip, &lans) })
        .await
        .map_err(|e| failed(AgentError::from_io("looking up a neighbour", e.into())))?
        .map_err(failed)?
        .ok_or(NeighError::UnknownIp(ip))
}

/// The device behind `ip`.
pub async fn device_for_ip(gw: &Gateway, ip: IpAddr) -> Result<Device, NeighError> {
    let mac = mac_for_ip(gw, ip).await?;
    match gw.sessions().device_by_mac(mac) {
        Ok(d) => Ok(d),
        Err(source @ ModelError::UnknownMac(_)) => Err(NeighError::UnknownMac {
            ip: canonical(ip),
            mac,
            source,
        }),
        Err(e) => Err(e.into()),
    }
}

/// The device behind `ip`, made for its MAC when there is none yet (a client the
/// portal meets before the gateway recorded it).
pub async fn device_or_new_for_ip(gw: &Gateway, ip: IpAddr) -> Result<Device, NeighError> {
    let mac = mac_for_ip(gw, ip).await?;
    let mgr = gw.sessions();
    match mgr.device_by_mac(mac) {
        Ok(d) => Ok(d),
        Err(ModelError::UnknownMac(_)) => match mgr.create_device(mac, Some(canonical(ip)), None) {
            Ok(d) => Ok(d),
            // Made meanwhile by the gateway or another request.
            Err(ModelError::Store(StoreError::DuplicateMac { .. })) => Ok(mgr.device_by_mac(mac)?),
            Err(e) => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

/// The IPv4 address `mac` uses on a LAN, from the neighbour table (for
/// RADIUS's Framed-IP-Address), if it has a resolved one.
pub async fn ipv4_of(gw: &Gateway, mac: MacAddr) -> Option<Ipv4Addr> {
    let lans = gw.lan_indexes();
    let table = off_runtime(|| async { crate::netlink::neighbour_table(true) })
        .await
        .ok()?
        .ok()?;
    table.into_iter().find_map(|n| match n.ip {
        IpAddr::V4(ip)
            if n.mac == Some(mac.octets()) && !n.unresolved && lans.contains(&n.ifindex) =>
        {
            Some(ip)
        }
        _ => None,
    })
}
