//! `garden`: the walled garden by name, changed at run time.

use anyhow::Result;
use clap::Subcommand;
use session_api::requests::NewDomain;

use super::{args::ApiArgs, out::*};

#[derive(Subcommand)]
pub enum GardenCmd {
    /// Garden names, and the addresses learnt for them.
    List,
    /// Add a garden name: NAME[:PORT] or *.SUFFIX[:PORT].
    Add { domain: String },
    /// Remove a garden name and the addresses learnt only for it.
    Remove { domain: String },
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
            let v = api.send("POST", "/v1/garden/domains", &NewDomain { domain })?;
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
