//! Client IP → MAC through the gateway's neighbour table (the daemon runs in the
//! gateway's network namespace): `/proc/net/arp` for IPv4, `ip -j neigh` for IPv6
//! (and IPv4 entries the ARP file does not show). Only entries on the agent's LAN
//! interfaces with a link-layer address count.

use std::net::IpAddr;

use axum::http::StatusCode;
use serde::Deserialize;
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

fn from_arp(ip: IpAddr, lans: &[String]) -> Option<MacAddr> {
    let text = std::fs::read_to_string("/proc/net/arp").ok()?;
    let want = ip.to_string();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // IP address, HW type, Flags, HW address, Mask, Device
        if f.len() < 6 || f[0] != want || !lans.iter().any(|l| l == f[5]) {
            continue;
        }
        let flags = u32::from_str_radix(f[2].trim_start_matches("0x"), 16).unwrap_or(0);
        if flags & 0x2 == 0 {
            // Not ATF_COM: incomplete.
            continue;
        }
        if let Ok(mac) = MacAddr::parse(f[3]) {
            if !mac.is_zero() {
                return Some(mac);
            }
        }
    }
    None
}

#[derive(Deserialize)]
struct IpNeigh {
    #[serde(default)]
    dev: String,
    #[serde(default)]
    lladdr: Option<String>,
    #[serde(default)]
    state: Vec<String>,
}

fn from_ip_command(ip: IpAddr, lans: &[String]) -> Result<Option<MacAddr>, ApiError> {
    let out = std::process::Command::new("ip")
        .args(["-j", "neigh", "show", "to", &ip.to_string()])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "neighbour_table_error",
                format!("running `ip neigh` (iproute2): {e}"),
            )
        })?;
    if !out.status.success() {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "neighbour_table_error",
            format!(
                "`ip neigh` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    let entries: Vec<IpNeigh> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    Ok(entries
        .into_iter()
        .filter(|e| lans.contains(&e.dev))
        .filter(|e| !e.state.iter().any(|s| s == "FAILED" || s == "INCOMPLETE"))
        .find_map(|e| e.lladdr.and_then(|m| MacAddr::parse(&m).ok())))
}

/// The MAC behind `ip` on one of the gateway's LANs.
pub async fn mac_for_ip(gw: &Gateway, ip: IpAddr) -> Result<MacAddr, ApiError> {
    let ip = canonical(ip);
    let lans: Vec<String> = gw.lans().iter().map(|l| l.name.clone()).collect();
    let found = tokio::task::spawn_blocking(move || {
        if ip.is_ipv4() {
            if let Some(m) = from_arp(ip, &lans) {
                return Ok(Some(m));
            }
        }
        from_ip_command(ip, &lans)
    })
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
