//! Client IP → MAC through the gateway's neighbour table (the daemon runs in the
//! gateway's network namespace), read over routing netlink. Only resolved
//! entries on the agent's LAN interfaces with a link-layer address count.

use std::net::IpAddr;

use axum::http::StatusCode;
use session_model::{Device, MacAddr, ModelError};

use super::ApiError;
use crate::gateway::Gateway;

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

/// The resolved neighbour entry for `ip` on one of the interfaces `lans`.
fn lookup(ip: IpAddr, lans: &[u32]) -> Result<Option<MacAddr>, ApiError> {
    let entries = crate::netlink::neighbours(ip).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "neighbour_table_error",
            e.to_string(),
        )
    })?;
    Ok(entries
        .into_iter()
        .filter(|e| lans.contains(&e.ifindex) && !e.unresolved)
        .filter_map(|e| e.mac.map(MacAddr::new))
        .find(|m| !m.is_zero()))
}

/// The MAC behind `ip` on one of the gateway's LANs.
pub async fn mac_for_ip(gw: &Gateway, ip: IpAddr) -> Result<MacAddr, ApiError> {
    let ip = canonical(ip);
    let lans = gw.lan_indexes();
    let found = tokio::task::spawn_blocking(move || lookup(ip, &lans))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                e.to_string(),
            )
        })??;
    found.ok_or_else(|| {
        ApiError::not_found(
            "unknown_ip",
            format!("no client with address {ip} in the neighbour table of the LAN interfaces"),
        )
    })
}

/// The device behind `ip`.
pub async fn device_for_ip(gw: &Gateway, ip: IpAddr) -> Result<Device, ApiError> {
    let mac = mac_for_ip(gw, ip).await?;
    match gw.sessions().device_by_mac(mac) {
        Ok(d) => Ok(d),
        Err(e @ ModelError::UnknownMac(_)) => Err(ApiError::not_found(
            "unknown_mac",
            format!("{ip} is {mac}, but {e}"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// The device behind `ip`, made for its MAC when there is none yet (a client the
/// portal meets before the gateway recorded it).
pub async fn device_or_new_for_ip(gw: &Gateway, ip: IpAddr) -> Result<Device, ApiError> {
    let mac = mac_for_ip(gw, ip).await?;
    match gw.sessions().device_by_mac(mac) {
        Ok(d) => Ok(d),
        Err(ModelError::UnknownMac(_)) => {
            match gw.sessions().create_device(mac, Some(canonical(ip)), None) {
                Ok(d) => Ok(d),
                // Made meanwhile by the gateway or another request.
                Err(ModelError::Store(session_model::StoreError::DuplicateMac { .. })) => {
                    Ok(gw.sessions().device_by_mac(mac)?)
                }
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}
