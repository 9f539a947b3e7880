//! `sessions`: a device's sessions, and one session changed the way a portal does.

use anyhow::{bail, Result};
use clap::Subcommand;
use serde_json::Value;
use session_api::requests::{NewSession, SessionInc, SessionPatch};
use session_api::SessionView;

use super::{args::ApiArgs, out::*};

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
    /// The session these arguments describe, as the API takes it.
    pub(super) fn request(&self) -> NewSession {
        NewSession {
            session_type: self.session_type,
            time_secs: self.time_secs,
            data_mb: self.data_mb,
            exp_days: self.exp_days,
            down_mbits: self.down_mbits,
            up_mbits: self.up_mbits,
            use_global_speed: self.use_global_speed,
            sale: None,
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

/// A number, or `None` for "none" (which clears the field).
fn opt_or_none<T: std::str::FromStr>(field: &str, v: &str) -> Result<Option<T>> {
    if v == "none" || v == "null" {
        return Ok(None);
    }
    match v.parse::<T>() {
        Ok(x) => Ok(Some(x)),
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
        SessionsCmd::Create { device, spec } => one(api.send(
            "POST",
            &format!("/v1/devices/{}/sessions", seg(&device)),
            &spec.request(),
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
            let patch = SessionPatch {
                time_secs,
                data_mb,
                time_cons,
                data_cons,
                started_at: started_at
                    .map(|v| opt_or_none::<i64>("started-at", &v))
                    .transpose()?,
                exp_days: exp_days
                    .map(|v| opt_or_none::<u32>("exp-days", &v))
                    .transpose()?,
                down_mbits,
                up_mbits,
                use_global_speed,
            };
            if patch == SessionPatch::default() {
                bail!("nothing to set: give at least one of --time-secs, --data-mb, --time-cons, --data-cons, --started-at, --exp-days, --down-mbits, --up-mbits, --use-global-speed");
            }
            one(api.send("PATCH", &format!("/v1/sessions/{}", seg(&id)), &patch)?)
        }
        SessionsCmd::Inc {
            id,
            time_cons,
            data_cons,
        } => one(api.send(
            "POST",
            &format!("/v1/sessions/{}/inc", seg(&id)),
            &SessionInc {
                time_cons,
                data_cons,
            },
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
