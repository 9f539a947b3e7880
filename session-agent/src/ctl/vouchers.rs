//! `vouchers`: batches of codes, their states, export for print, redemption.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use clap::Subcommand;
use serde_json::Value;
use session_api::requests::{NewVouchers, Redeem};
use session_api::{RedeemView, VoucherView};

use super::{
    args::ApiArgs,
    fleet::{self, FleetArgs},
    out::*,
    sessions::SessionSpec,
};

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
        /// Devices that may redeem each code [default: 1].
        #[arg(long)]
        max_devices: Option<u32>,
        /// Characters per code [default: the agent's, about 50 bits].
        #[arg(long)]
        code_length: Option<usize>,
        /// Characters per printed group, 0 for one group [default: the agent's].
        #[arg(long)]
        group: Option<usize>,
        #[command(flatten)]
        fleet: FleetArgs,
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
    /// What codes written with --sql sold, at which gateway: each code's first
    /// login there, with its batch's price (from the RADIUS database).
    Sales {
        #[command(flatten)]
        args: fleet::SalesArgs,
    },
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
            fleet,
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
            let s = spec.request();
            let body = NewVouchers {
                count,
                batch,
                price,
                session_type: s.session_type,
                time_secs: s.time_secs,
                data_mb: s.data_mb,
                exp_days: s.exp_days,
                down_mbits: s.down_mbits,
                up_mbits: s.up_mbits,
                use_global_speed: s.use_global_speed,
                valid_until,
                max_devices,
                code_length,
                group,
            };
            if fleet.given() {
                return fleet::create(api, &fleet, body);
            }
            let v = api.send("POST", "/v1/vouchers", &body)?;
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
        VouchersCmd::Sales { args } => fleet::sales(api, args),
        VouchersCmd::Redeem { device, code } => {
            let v = api.send(
                "POST",
                &format!("/v1/devices/{}/redeem", seg(&device)),
                &Redeem { code },
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
