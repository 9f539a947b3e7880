//! `devices`, and `connect`, `disconnect` and `login` of one device.

use anyhow::{anyhow, Result};
use clap::Subcommand;
use serde_json::Value;
use session_api::requests::{Credentials, NewDevice, Notification, Rekey};
use session_api::{ConnectedView, DeviceView, LoginView, SessionView};

use super::{args::ApiArgs, out::*};

#[derive(Subcommand)]
pub enum DevicesCmd {
    /// Every device.
    List,
    /// One device.
    Show { id: String },
    /// Record a device.
    Create {
        #[arg(long)]
        mac: String,
        #[arg(long)]
        ip: Option<std::net::IpAddr>,
        #[arg(long)]
        hostname: Option<String>,
    },
    /// The device with this MAC address.
    ByMac { mac: String },
    /// The device behind a client IP address (the gateway's neighbour table).
    ByIp { ip: String },
    /// Move a device and its sessions to a new MAC address.
    Rekey {
        id: String,
        #[arg(long)]
        mac: String,
    },
    /// Whether the device is connected (seed IsConnected).
    Connected { id: String },
    /// Remove a device and all its sessions (refused while connected unless --force,
    /// which disconnects it first).
    Remove {
        id: String,
        #[arg(long)]
        force: bool,
    },
}

fn print_devices(list: &[DeviceView]) {
    let mut t = table(&["ID", "MAC", "IP", "HOSTNAME", "CONNECTED"], &[0]);
    for d in list {
        t.add_row([
            d.id.to_string(),
            d.mac.clone(),
            opt(&d.ip),
            opt(&d.hostname),
            yes_no(d.connected).into(),
        ]);
    }
    println!("{t}");
}

pub fn devices(api: &ApiArgs, cmd: DevicesCmd) -> Result<()> {
    let c = api.client();
    let (v, list) = match cmd {
        DevicesCmd::List => (c.call("GET", "/v1/devices", None)?, true),
        DevicesCmd::Show { id } => (
            c.call("GET", &format!("/v1/devices/{}", seg(&id)), None)?,
            false,
        ),
        DevicesCmd::Create { mac, ip, hostname } => (
            api.send("POST", "/v1/devices", &NewDevice { mac, ip, hostname })?,
            false,
        ),
        DevicesCmd::ByMac { mac } => (
            c.call("GET", &format!("/v1/devices/by-mac/{}", seg(&mac)), None)?,
            false,
        ),
        DevicesCmd::ByIp { ip } => (
            c.call("GET", &format!("/v1/devices/by-ip/{}", seg(&ip)), None)?,
            false,
        ),
        DevicesCmd::Rekey { id, mac } => (
            api.send(
                "POST",
                &format!("/v1/devices/{}/rekey", seg(&id)),
                &Rekey { mac },
            )?,
            false,
        ),
        DevicesCmd::Connected { id } => {
            let v = c.call("GET", &format!("/v1/devices/{}/connected", seg(&id)), None)?;
            return show(api, v, |v: ConnectedView| print_kv(&v));
        }
        DevicesCmd::Remove { id, force } => {
            c.call("DELETE", &remove_path("devices", &id, force), None)?;
            eprintln!("device {id} removed");
            return Ok(());
        }
    };
    if list {
        show(api, v, |v: Vec<DeviceView>| print_devices(&v))
    } else {
        show(api, v, |v: DeviceView| print_devices(&[v]))
    }
}

pub fn connect(api: &ApiArgs, device: &str, notification: &str) -> Result<()> {
    let v = api.send(
        "POST",
        &format!("/v1/devices/{}/connect", seg(device)),
        &Notification {
            notification: notification.into(),
        },
    )?;
    show(api, v, |v: SessionView| {
        println!(
            "device {device} connected: session {} ({}, {} s and {:.3} MB left)",
            v.id,
            type_name(&v),
            v.remaining_time,
            v.remaining_data
        )
    })
}

pub fn login(api: &ApiArgs, device: &str, username: &str) -> Result<()> {
    let mut password = String::new();
    std::io::stdin()
        .read_line(&mut password)
        .map_err(|e| anyhow!("cannot read the password from standard input: {e}"))?;
    let password = password.trim_end_matches(['\r', '\n']);
    let v = api.send(
        "POST",
        &format!("/v1/devices/{}/login", seg(device)),
        &Credentials {
            username: username.into(),
            password: password.into(),
        },
    )?;
    show(api, v, |v: LoginView| {
        println!(
            "device {device} logged in as {username}: session {} ({}, {} s and {:.3} MB left){}",
            v.session.id,
            type_name(&v.session),
            v.session.remaining_time,
            v.session.remaining_data,
            v.reply_message
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        )
    })
}

pub fn disconnect(api: &ApiArgs, device: &str, notification: &str) -> Result<()> {
    let v = api.send(
        "POST",
        &format!("/v1/devices/{}/disconnect", seg(device)),
        &Notification {
            notification: notification.into(),
        },
    )?;
    show(api, v, |_: Value| println!("device {device} disconnected"))
}
