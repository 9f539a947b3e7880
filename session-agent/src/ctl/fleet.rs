//! `vouchers create --sql URL | --sql-file FILE`: a batch of codes written
//! into the AAA server's PostgreSQL (FreeRADIUS's schema), valid at every
//! gateway whose portal checks codes there (`[vouchers] backend = "radius"`).
//! This talks to the database, not to an agent.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use session_api::requests::NewSession;
use session_fleet::{batch_rows, write_copy, Database, Plan};
use session_model::voucher::{
    generate_code, group_code, DEFAULT_CODE_LEN, DEFAULT_GROUP, MAX_BATCH, MAX_CODE_LEN,
    MIN_CODE_LEN,
};

use super::{args::ApiArgs, out::table};

#[derive(clap::Args, Clone, Default)]
pub struct FleetArgs {
    /// Write the codes into this PostgreSQL database of FreeRADIUS
    /// (postgres://USER@HOST/DB, or host=/run/postgresql user=USER dbname=DB)
    /// instead of the agent's store.
    #[arg(long, value_name = "URL", conflicts_with = "sql_file")]
    sql: Option<String>,
    /// The database password, from the first line of this file.
    #[arg(long, value_name = "FILE", requires = "sql")]
    sql_password_file: Option<PathBuf>,
    /// Write the codes as a file to load with `psql -f FILE` instead.
    #[arg(long, value_name = "FILE")]
    sql_file: Option<PathBuf>,
}

impl FleetArgs {
    /// The codes go to the AAA database, not to the agent.
    pub(super) fn given(&self) -> bool {
        self.sql.is_some() || self.sql_file.is_some()
    }
}

/// What `vouchers create` asked for.
pub(super) struct Batch {
    pub count: u32,
    pub batch: String,
    pub spec: NewSession,
    pub valid_until: Option<i64>,
    pub max_devices: Option<u32>,
    pub code_length: Option<usize>,
    pub group: Option<usize>,
}

/// One code as printed.
#[derive(Serialize)]
struct Made {
    code: String,
    display_code: String,
    batch: String,
}

/// What the code buys, as the server's check items say it.
fn plan_of(b: &Batch) -> Result<Plan> {
    let s = &b.spec;
    let time = || {
        if s.time_secs == 0 {
            bail!("a time code needs --time-secs above 0")
        }
        Ok(Some(s.time_secs))
    };
    let data = || -> Result<Option<u64>> {
        let bytes = session_model::mb_to_bytes("data_mb", s.data_mb)?;
        if bytes == 0 {
            bail!("a data code needs --data-mb above 0")
        }
        Ok(Some(bytes))
    };
    let (time_secs, data_bytes) = match s.session_type {
        0 => (time()?, None),
        1 => (None, data()?),
        _ => (time()?, data()?),
    };
    let speed = |mbits: i32| (!s.use_global_speed && mbits > 0).then(|| mbits as u64 * 1_000_000);
    Ok(Plan {
        time_secs,
        data_bytes,
        down_bps: speed(s.down_mbits),
        up_bps: speed(s.up_mbits),
        devices: b.max_devices.unwrap_or(1),
        secs_after_first_login: s.exp_days.map(|d| u64::from(d) * 86_400),
        valid_until: b.valid_until,
    })
}

/// Makes the batch's codes and writes them to the database or the file.
pub(super) fn create(
    api: &ApiArgs,
    args: &FleetArgs,
    b: Batch,
    price: Option<String>,
) -> Result<()> {
    if price.is_some() {
        bail!("--price is not kept in the RADIUS database: leave it out with --sql or --sql-file (print it on the slips yourself)");
    }
    if b.count == 0 || b.count > MAX_BATCH {
        bail!("--count must be 1 to {MAX_BATCH}: make larger batches in several runs");
    }
    let len = b.code_length.unwrap_or(DEFAULT_CODE_LEN);
    if !(MIN_CODE_LEN..=MAX_CODE_LEN).contains(&len) {
        bail!("--code-length must be {MIN_CODE_LEN} to {MAX_CODE_LEN}");
    }
    let plan = plan_of(&b)?;
    let codes = (0..b.count)
        .map(|_| generate_code(len))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("cannot draw random codes: {e}"))?;
    let rows = batch_rows(&codes, &b.batch, &plan)?;
    let written = if let Some(path) = &args.sql_file {
        let mut f = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        write_copy(&rows, &mut f)?;
        format!(
            "written to {}: load it with psql -f {}",
            path.display(),
            path.display()
        )
    } else {
        let url = args.sql.clone().unwrap_or_default();
        let password = match &args.sql_password_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read the password file {}", p.display()))?
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string(),
            ),
            None => None,
        };
        let n = Database { url, password }.insert(&rows)?;
        format!("written into the RADIUS database ({n} rows)")
    };
    let group = b.group.unwrap_or(DEFAULT_GROUP);
    let made: Vec<Made> = codes
        .iter()
        .map(|c| Made {
            code: c.clone(),
            display_code: group_code(c, group),
            batch: b.batch.clone(),
        })
        .collect();
    if api.json {
        println!("{}", serde_json::to_string_pretty(&made)?);
        return Ok(());
    }
    let mut t = table(&["CODE", "BATCH"], &[]);
    for m in &made {
        t.add_row([m.display_code.clone(), m.batch.clone()]);
    }
    println!("{t}");
    eprintln!("{} codes {written}", made.len());
    Ok(())
}
