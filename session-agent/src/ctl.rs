//! CLI subcommands that talk to the running agent over its API socket. They
//! never open the session database: the daemon owns it.

use std::{path::PathBuf, time::Duration};

use anyhow::{anyhow, bail, Result};
use clap::Subcommand;
use comfy_table::{CellAlignment, Table};
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};
use session_api::{
    ApiClient, ConnectedView, DeviceView, LoginView, RedeemView, SessionView, StatusView,
    VoucherView,
};

#[derive(clap::Args, Clone)]
pub struct ApiArgs {
    /// The agent's control API socket.
    #[arg(long, default_value = "/run/session-agent/api.sock", global = true)]
    api_socket: PathBuf,
    /// Print JSON (the API's answer) instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

impl ApiArgs {
    fn client(&self) -> ApiClient {
        ApiClient::new(&self.api_socket)
    }
}

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
        ip: Option<String>,
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

/// What a session is (the seed's `CreateSession` arguments), for a session
/// or for the vouchers that buy one.
#[derive(clap::Args)]
pub struct SessionSpec {
    /// time (0), data (1) or time_or_data (2).
    #[arg(long = "type", value_parser = parse_type)]
    session_type: u8,
    #[arg(long, default_value_t = 0)]
    time_secs: u64,
    #[arg(long, default_value_t = 0.0)]
    data_mb: f64,
    /// Days the session stays valid after its first use.
    #[arg(long)]
    exp_days: Option<u32>,
    #[arg(long, default_value_t = 0)]
    down_mbits: i32,
    #[arg(long, default_value_t = 0)]
    up_mbits: i32,
    #[arg(long)]
    use_global_speed: bool,
}

impl SessionSpec {
    /// The API's JSON object of these fields.
    fn json(&self) -> Map<String, Value> {
        let v = json!({
            "type": self.session_type, "time_secs": self.time_secs, "data_mb": self.data_mb,
            "exp_days": self.exp_days, "down_mbits": self.down_mbits, "up_mbits": self.up_mbits,
            "use_global_speed": self.use_global_speed,
        });
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }
}

#[derive(Subcommand)]
pub enum SessionsCmd {
    /// Sessions of a device.
    List { device: String },
    /// One session.
    Show { id: String },
    /// Create a session (seed CreateSession).
    Create {
        device: String,
        #[command(flatten)]
        spec: SessionSpec,
    },
    /// Set fields of a session and save it (seed Set* + Save).
    Set {
        id: String,
        #[arg(long)]
        time_secs: Option<u64>,
        #[arg(long)]
        data_mb: Option<f64>,
        #[arg(long)]
        time_cons: Option<u64>,
        #[arg(long)]
        data_cons: Option<f64>,
        /// Unix seconds, or "none".
        #[arg(long)]
        started_at: Option<String>,
        /// Days, or "none".
        #[arg(long)]
        exp_days: Option<String>,
        #[arg(long)]
        down_mbits: Option<i32>,
        #[arg(long)]
        up_mbits: Option<i32>,
        #[arg(long)]
        use_global_speed: Option<bool>,
    },
    /// Add consumption and save (seed IncTimeCons / IncDataCons + Save).
    Inc {
        id: String,
        /// Seconds to add to the consumed time.
        #[arg(long, default_value_t = 0)]
        time_cons: u64,
        /// Megabytes to add to the consumed data.
        #[arg(long, default_value_t = 0.0)]
        data_cons: f64,
    },
    /// Save a session (charges pending usage, programs the datapath again).
    Save { id: String },
    /// The session as stored.
    Reload { id: String },
    /// The running session of a device (seed CurrSession).
    Current { device: String },
    /// The running session, else the oldest available one (seed GetSession).
    Get { device: String },
    /// Remove a session (refused while it runs unless --force, which disconnects
    /// its device first).
    Remove {
        id: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub enum GardenCmd {
    /// Garden names, and the addresses learnt for them.
    List,
    /// Add a garden name: NAME[:PORT] or *.SUFFIX[:PORT].
    Add { domain: String },
    /// Remove a garden name and the addresses learnt only for it.
    Remove { domain: String },
}

#[derive(Subcommand)]
pub enum VouchersCmd {
    /// Make a batch of codes, each buying the session described.
    Create {
        /// How many codes.
        #[arg(long)]
        count: u32,
        /// The batch (roll) they belong to.
        #[arg(long)]
        batch: String,
        /// The price printed on each slip, as written ("20 PHP").
        #[arg(long)]
        price: Option<String>,
        #[command(flatten)]
        spec: SessionSpec,
        /// The codes cannot be redeemed after this many days from now.
        #[arg(long, conflicts_with = "valid_until")]
        valid_days: Option<u32>,
        /// The codes cannot be redeemed after this moment (Unix seconds).
        #[arg(long)]
        valid_until: Option<i64>,
        /// Devices that may redeem each code.
        #[arg(long, default_value_t = 1)]
        max_devices: u32,
        /// Characters per code (10: about 50 bits).
        #[arg(long, default_value_t = 10)]
        code_length: usize,
        /// Characters per printed group (0: one group).
        #[arg(long, default_value_t = 5)]
        group: usize,
    },
    /// Codes, by code; only one batch or one state with the options.
    List {
        #[arg(long)]
        batch: Option<String>,
        /// unused, active, used_up, expired or revoked.
        #[arg(long)]
        state: Option<String>,
    },
    /// One code.
    Show { code: String },
    /// Withdraw an unused code.
    Revoke { code: String },
    /// Codes as CSV, or as a printable HTML sheet of slips.
    Export {
        #[arg(long)]
        batch: Option<String>,
        #[arg(long)]
        state: Option<String>,
        /// csv or html.
        #[arg(long, default_value = "csv")]
        format: String,
        /// Write here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Redeem a code for a device: its session is created and the device connected.
    Redeem { device: String, code: String },
}

fn parse_type(s: &str) -> Result<u8, String> {
    match s {
        "0" | "time" => Ok(0),
        "1" | "data" => Ok(1),
        "2" | "time_or_data" | "time-or-data" => Ok(2),
        _ => Err(format!(
            "'{s}' is not a session type: time (0), data (1) or time_or_data (2)"
        )),
    }
}

/// Keeps a path segment from changing the path.
/// The path of `DELETE /v1/{what}/{id}`, with `?force=true` when asked.
fn remove_path(what: &str, id: &str, force: bool) -> String {
    let q = if force { "?force=true" } else { "" };
    format!("/v1/{what}/{}{q}", seg(id))
}

fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn print_json(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A table with this header, its columns apart by spaces; columns in
/// `right` are aligned right (numbers).
pub fn table(header: &[&str], right: &[usize]) -> Table {
    let mut t = Table::new();
    t.load_style(comfy_table::presets::NOTHING);
    t.set_content_arrangement(comfy_table::ContentArrangement::Disabled);
    if !header.is_empty() {
        t.set_header(header);
    }
    for &i in right {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

/// `-` for nothing.
fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or("-".into(), T::to_string)
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

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn type_name(v: &SessionView) -> &'static str {
    match v.session_type {
        0 => "time",
        1 => "data",
        2 => "time_or_data",
        _ => "?",
    }
}

fn print_sessions(list: &[SessionView]) {
    let mut t = table(
        &[
            "ID",
            "DEVICE",
            "TYPE",
            "STATUS",
            "TIME USED/ALLOC",
            "DATA MB USED/ALLOC",
            "EXPIRES AT",
        ],
        &[0, 1, 4, 5, 6],
    );
    for v in list {
        t.add_row([
            v.id.to_string(),
            v.device_id.to_string(),
            type_name(v).into(),
            v.status.clone(),
            format!("{}/{}", v.time_cons, v.time_secs),
            format!("{:.3}/{:.3}", v.data_cons, v.data_mb),
            opt(&v.expires_at),
        ]);
    }
    println!("{t}");
}

/// Each field of a view on a line of its own.
fn print_kv<T: serde::Serialize>(view: &T) {
    match serde_json::to_value(view) {
        Ok(Value::Object(m)) => {
            let mut t = table(&[], &[]);
            for (k, val) in m {
                let shown = match val {
                    Value::String(s) => s,
                    Value::Null => "-".into(),
                    x => x.to_string(),
                };
                t.add_row([k, shown]);
            }
            println!("{t}");
        }
        Ok(v) => println!("{v}"),
        Err(e) => println!("{e}"),
    }
}

/// Prints the API's answer: as it came with `--json`, else read as the
/// server's own view type `T` and shown by `human`.
fn show<T: DeserializeOwned>(api: &ApiArgs, v: Value, human: impl FnOnce(T)) -> Result<()> {
    if api.json {
        return print_json(&v);
    }
    let view = serde_json::from_value(v).map_err(|e| {
        anyhow!(
            "the agent's answer is not a {} ({e}): are this session-agent and the running one the same version?",
            std::any::type_name::<T>().rsplit("::").next().unwrap_or("view")
        )
    })?;
    human(view);
    Ok(())
}

pub fn devices(api: &ApiArgs, cmd: DevicesCmd) -> Result<()> {
    let c = api.client();
    let (v, list) = match cmd {
        DevicesCmd::List => (c.call("GET", "/v1/devices", None)?, true),
        DevicesCmd::Show { id } => (
            c.call("GET", &format!("/v1/devices/{}", seg(&id)), None)?,
            false,
        ),
        DevicesCmd::Create { mac, ip, hostname } => {
            let mut b = Map::new();
            b.insert("mac".into(), json!(mac));
            if let Some(ip) = ip {
                b.insert("ip".into(), json!(ip));
            }
            if let Some(h) = hostname {
                b.insert("hostname".into(), json!(h));
            }
            (
                c.call("POST", "/v1/devices", Some(&Value::Object(b)))?,
                false,
            )
        }
        DevicesCmd::ByMac { mac } => (
            c.call("GET", &format!("/v1/devices/by-mac/{}", seg(&mac)), None)?,
            false,
        ),
        DevicesCmd::ByIp { ip } => (
            c.call("GET", &format!("/v1/devices/by-ip/{}", seg(&ip)), None)?,
            false,
        ),
        DevicesCmd::Rekey { id, mac } => (
            c.call(
                "POST",
                &format!("/v1/devices/{}/rekey", seg(&id)),
                Some(&json!({ "mac": mac })),
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

fn opt_or_none<T>(field: &str, v: &str) -> Result<Value>
where
    T: std::str::FromStr + serde::Serialize,
{
    if v == "none" || v == "null" {
        return Ok(Value::Null);
    }
    match v.parse::<T>() {
        Ok(x) => Ok(json!(x)),
        Err(_) => bail!("--{field}: '{v}' is not a number or \"none\""),
    }
}

pub fn sessions(api: &ApiArgs, cmd: SessionsCmd) -> Result<()> {
    let c = api.client();
    let one = |v: Value| show(api, v, |v: SessionView| print_kv(&v));
    match cmd {
        SessionsCmd::List { device } => {
            let v = c.call(
                "GET",
                &format!("/v1/devices/{}/sessions", seg(&device)),
                None,
            )?;
            show(api, v, |v: Vec<SessionView>| print_sessions(&v))
        }
        SessionsCmd::Show { id } => {
            one(c.call("GET", &format!("/v1/sessions/{}", seg(&id)), None)?)
        }
        SessionsCmd::Create { device, spec } => one(c.call(
            "POST",
            &format!("/v1/devices/{}/sessions", seg(&device)),
            Some(&Value::Object(spec.json())),
        )?),
        SessionsCmd::Set {
            id,
            time_secs,
            data_mb,
            time_cons,
            data_cons,
            started_at,
            exp_days,
            down_mbits,
            up_mbits,
            use_global_speed,
        } => {
            let mut b = Map::new();
            let mut put = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    b.insert(k.into(), v);
                }
            };
            put("time_secs", time_secs.map(|v| json!(v)));
            put("data_mb", data_mb.map(|v| json!(v)));
            put("time_cons", time_cons.map(|v| json!(v)));
            put("data_cons", data_cons.map(|v| json!(v)));
            put(
                "started_at",
                started_at
                    .map(|v| opt_or_none::<i64>("started-at", &v))
                    .transpose()?,
            );
            put(
                "exp_days",
                exp_days
                    .map(|v| opt_or_none::<u32>("exp-days", &v))
                    .transpose()?,
            );
            put("down_mbits", down_mbits.map(|v| json!(v)));
            put("up_mbits", up_mbits.map(|v| json!(v)));
            put("use_global_speed", use_global_speed.map(|v| json!(v)));
            if b.is_empty() {
                bail!("nothing to set: give at least one of --time-secs, --data-mb, --time-cons, --data-cons, --started-at, --exp-days, --down-mbits, --up-mbits, --use-global-speed");
            }
            one(c.call(
                "PATCH",
                &format!("/v1/sessions/{}", seg(&id)),
                Some(&Value::Object(b)),
            )?)
        }
        SessionsCmd::Inc {
            id,
            time_cons,
            data_cons,
        } => one(c.call(
            "POST",
            &format!("/v1/sessions/{}/inc", seg(&id)),
            Some(&json!({ "time_cons": time_cons, "data_cons": data_cons })),
        )?),
        SessionsCmd::Save { id } => {
            one(c.call("POST", &format!("/v1/sessions/{}/save", seg(&id)), None)?)
        }
        SessionsCmd::Reload { id } => {
            one(c.call("POST", &format!("/v1/sessions/{}/reload", seg(&id)), None)?)
        }
        SessionsCmd::Remove { id, force } => {
            c.call("DELETE", &remove_path("sessions", &id, force), None)?;
            eprintln!("session {id} removed");
            Ok(())
        }
        SessionsCmd::Current { device } => {
            let v = c.call(
                "GET",
                &format!("/v1/devices/{}/current-session", seg(&device)),
                None,
            )?;
            if v.is_null() && !api.json {
                println!("device {device} is not connected");
                return Ok(());
            }
            one(v)
        }
        SessionsCmd::Get { device } => one(c.call(
            "GET",
            &format!("/v1/devices/{}/session", seg(&device)),
            None,
        )?),
    }
}

pub fn connect(api: &ApiArgs, device: &str, notification: &str) -> Result<()> {
    let v = api.client().call(
        "POST",
        &format!("/v1/devices/{}/connect", seg(device)),
        Some(&json!({ "notification": notification })),
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
    let v = api.client().call(
        "POST",
        &format!("/v1/devices/{}/login", seg(device)),
        Some(&json!({ "username": username, "password": password })),
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
    let v = api.client().call(
        "POST",
        &format!("/v1/devices/{}/disconnect", seg(device)),
        Some(&json!({ "notification": notification })),
    )?;
    show(api, v, |_: Value| println!("device {device} disconnected"))
}

pub fn status(api: &ApiArgs) -> Result<()> {
    let v = api.client().call("GET", "/v1/status", None)?;
    show(api, v, |v: StatusView| {
        println!("session-agent {} up {} s", v.version, v.uptime_secs);
        for l in &v.lans {
            println!("  lan {:<12} {} clients", l.name, l.clients);
        }
        println!(
            "  devices {}, connected {}, sessions {}",
            v.devices, v.connected, v.sessions
        );
        println!(
            "  poll every {} ms (last {} us), auto-advance {}",
            v.poll_interval_ms, v.last_poll_us, v.auto_advance
        );
    })
}

pub fn providers(api: &ApiArgs) -> Result<()> {
    let v = api.client().call("GET", "/v1/providers", None)?;
    show(api, v, |v: Vec<String>| {
        for p in v {
            println!("{p}");
        }
    })
}

pub fn events(
    api: &ApiArgs,
    device: Option<i64>,
    count: Option<u64>,
    idle_timeout_secs: Option<u64>,
) -> Result<()> {
    use std::io::Write;
    let path = match device {
        Some(d) => format!("/v1/events?device={d}"),
        None => "/v1/events".to_string(),
    };
    let mut n = 0u64;
    let r = api.client().follow(
        &path,
        idle_timeout_secs.map(Duration::from_secs),
        |name, data| {
            if name == "ready" {
                return true;
            }
            if api.json {
                println!("{data}");
            } else {
                let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                let mut rest = String::new();
                if let Value::Object(m) = &v {
                    for (k, val) in m {
                        if k != "event" {
                            rest.push_str(&format!(" {k}={val}"));
                        }
                    }
                }
                println!("{name}{rest}");
            }
            let _ = std::io::stdout().flush();
            n += 1;
            count.is_none_or(|c| n < c)
        },
    );
    match r {
        Err(session_api::ClientError::Io { err, .. })
            if matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(())
        }
        r => Ok(r?),
    }
}

fn print_vouchers(list: &[VoucherView]) {
    let mut t = table(
        &[
            "CODE",
            "BATCH",
            "STATE",
            "BUYS",
            "PRICE",
            "DEVICES",
            "VALID UNTIL",
        ],
        &[5, 6],
    );
    for v in list {
        let buys = match v.session_type {
            0 => format!("{} s", v.time_secs),
            1 => format!("{} MB", v.data_mb),
            _ => format!("{} s or {} MB", v.time_secs, v.data_mb),
        };
        t.add_row([
            v.display_code.clone(),
            v.batch.clone(),
            v.state.clone(),
            buys,
            opt(&v.price),
            format!("{}/{}", v.redemptions.len(), v.max_devices),
            opt(&v.valid_until),
        ]);
    }
    println!("{t}");
}

/// `?k=v&...` of the options given.
fn query(pairs: &[(&str, &Option<String>)]) -> String {
    let q: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", seg(v))))
        .collect();
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

#[derive(serde::Deserialize)]
struct GardenView {
    domains: Vec<String>,
    learnt: Vec<LearntRow>,
}

#[derive(serde::Deserialize)]
struct LearntRow {
    lan: String,
    address: String,
    port: u16,
    expires_in_secs: u64,
    domains: Vec<String>,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct GardenChange {
    domain: String,
    changed: bool,
}

pub fn garden(api: &ApiArgs, cmd: GardenCmd) -> Result<()> {
    let c = api.client();
    match cmd {
        GardenCmd::List => {
            let v = c.call("GET", "/v1/garden/domains", None)?;
            show(api, v, |g: GardenView| {
                if g.domains.is_empty() {
                    println!("no garden names");
                } else {
                    println!("garden names: {}", g.domains.join(", "));
                }
                let mut t = table(&["LAN", "ADDRESS", "PORT", "TTL LEFT", "FOR"], &[]);
                for l in &g.learnt {
                    t.add_row([
                        l.lan.clone(),
                        l.address.clone(),
                        if l.port == 0 {
                            "any".into()
                        } else {
                            l.port.to_string()
                        },
                        format!("{}s", l.expires_in_secs),
                        l.domains.join(", "),
                    ]);
                }
                if !g.learnt.is_empty() {
                    println!("{t}");
                }
            })
        }
        GardenCmd::Add { domain } => {
            let v = c.call(
                "POST",
                "/v1/garden/domains",
                Some(&json!({ "domain": domain })),
            )?;
            show(api, v, |g: GardenChange| {
                if g.changed {
                    println!("{} added", g.domain)
                } else {
                    println!("{} was a garden name already", g.domain)
                }
            })
        }
        GardenCmd::Remove { domain } => {
            let v = c.call(
                "DELETE",
                &format!("/v1/garden/domains/{}", seg(&domain)),
                None,
            )?;
            show(api, v, |g: GardenChange| println!("{} removed", g.domain))
        }
    }
}

pub fn vouchers(api: &ApiArgs, cmd: VouchersCmd) -> Result<()> {
    let c = api.client();
    match cmd {
        VouchersCmd::Create {
            count,
            batch,
            price,
            spec,
            valid_days,
            valid_until,
            max_devices,
            code_length,
            group,
        } => {
            let valid_until = match (valid_days, valid_until) {
                (Some(d), _) => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)?
                        .as_secs() as i64;
                    Some(now + i64::from(d) * 86_400)
                }
                (None, t) => t,
            };
            let mut body = spec.json();
            for (k, v) in [
                ("count", json!(count)),
                ("batch", json!(batch)),
                ("price", json!(price)),
                ("valid_until", json!(valid_until)),
                ("max_devices", json!(max_devices)),
                ("code_length", json!(code_length)),
                ("group", json!(group)),
            ] {
                body.insert(k.into(), v);
            }
            let v = c.call("POST", "/v1/vouchers", Some(&Value::Object(body)))?;
            show(api, v, |v: Vec<VoucherView>| print_vouchers(&v))
        }
        VouchersCmd::List { batch, state } => {
            let v = c.call(
                "GET",
                &format!(
                    "/v1/vouchers{}",
                    query(&[("batch", &batch), ("state", &state)])
                ),
                None,
            )?;
            show(api, v, |v: Vec<VoucherView>| print_vouchers(&v))
        }
        VouchersCmd::Show { code } => {
            let v = c.call("GET", &format!("/v1/vouchers/{}", seg(&code)), None)?;
            show(api, v, |v: VoucherView| print_kv(&v))
        }
        VouchersCmd::Revoke { code } => {
            let v = c.call("DELETE", &format!("/v1/vouchers/{}", seg(&code)), None)?;
            show(api, v, |v: VoucherView| print_kv(&v))
        }
        VouchersCmd::Export {
            batch,
            state,
            format,
            output,
        } => {
            let path = format!(
                "/v1/vouchers/export{}",
                query(&[
                    ("batch", &batch),
                    ("state", &state),
                    ("format", &Some(format))
                ])
            );
            let text = match c.call("GET", &path, None)? {
                Value::String(s) => s,
                other => other.to_string(),
            };
            match output {
                Some(p) => std::fs::write(&p, text)
                    .map_err(|e| anyhow!("cannot write {}: {e}", p.display()))?,
                None => print!("{text}"),
            }
            Ok(())
        }
        VouchersCmd::Redeem { device, code } => {
            let v = c.call(
                "POST",
                &format!("/v1/devices/{}/redeem", seg(&device)),
                Some(&json!({ "code": code })),
            )?;
            show(api, v, |v: RedeemView| {
                println!(
                    "redeemed {} for device {}: session {}{}",
                    v.voucher.display_code,
                    v.session.device_id,
                    v.session.id,
                    if v.queued {
                        " (waits behind the running one)"
                    } else {
                        ", connected"
                    }
                )
            })
        }
    }
}
