//! `vouchers create --sql URL | --sql-file FILE`: a batch of codes written
//! into the AAA server's PostgreSQL (FreeRADIUS's schema), valid at every
//! gateway whose portal checks codes there (`[vouchers] backend = "radius"`);
//! `vouchers sales --sql URL`: what they sold, where. These talk to the
//! database, not to an agent.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use session_api::{csv_field, requests::NewVouchers};
use session_fleet::{batch_rows, cents_text, write_copy, Database, Plan, Price, Sale};
use session_model::voucher::{generate_code, group_code, NewBatch};

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

/// One code as printed.
#[derive(Serialize)]
struct Made {
    code: String,
    display_code: String,
    batch: String,
}

/// The batch `v` asks for, with the agent's defaults and checks: the codes
/// are held to what the agent's own would be.
fn new_batch(v: NewVouchers) -> Result<NewBatch> {
    let b = NewBatch::try_from(v)?;
    b.check(chrono::Utc::now().timestamp())?;
    Ok(b)
}

/// Makes the batch's codes and writes them to the database or the file.
pub(super) fn create(api: &ApiArgs, args: &FleetArgs, v: NewVouchers) -> Result<()> {
    let b = new_batch(v)?;
    let price = b.price.as_deref().map(Price::parse).transpose()?;
    let plan = Plan::of(&b);
    let codes = (0..b.count)
        .map(|_| generate_code(b.code_len))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("cannot draw random codes: {e}"))?;
    let rows = batch_rows(&codes, &b.batch, &plan, price)?;
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
        let db = database(
            args.sql.clone().unwrap_or_default(),
            &args.sql_password_file,
        )?;
        let n = db.insert(&rows)?;
        format!("written into the RADIUS database ({n} rows)")
    };
    let made: Vec<Made> = codes
        .iter()
        .map(|c| Made {
            code: c.clone(),
            display_code: group_code(c, b.group),
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

/// The database at `url`, with the password of `password_file`.
fn database(url: String, password_file: &Option<PathBuf>) -> Result<Database> {
    let password = match password_file {
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
    Ok(Database { url, password })
}

/// An open session counts as online while its gateway updated it this
/// recently: the fleet configuration's Simultaneous-Use count (two default
/// interim intervals and a minute).
const FRESH_SECS: i64 = 660;

/// `vouchers sales`: where and when.
#[derive(clap::Args, Clone)]
pub struct SalesArgs {
    /// The PostgreSQL database of FreeRADIUS the codes were written into.
    #[arg(long, value_name = "URL")]
    sql: String,
    /// The database password, from the first line of this file.
    #[arg(long, value_name = "FILE")]
    sql_password_file: Option<PathBuf>,
    /// First day (UTC), YYYY-MM-DD [default: 30 days ago].
    #[arg(long, value_name = "DAY")]
    since: Option<String>,
    /// Last day (UTC), YYYY-MM-DD, included [default: today].
    #[arg(long, value_name = "DAY")]
    until: Option<String>,
    /// csv: every sale; table: sales and revenue per day and gateway, the
    /// totals, and the sessions online now per gateway.
    #[arg(long, default_value = "table", value_parser = ["csv", "table"])]
    format: String,
    /// Write here instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

/// The start of UTC day `text` (YYYY-MM-DD), Unix seconds.
fn day_start(text: &str, flag: &str) -> Result<i64> {
    let d = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|e| anyhow!("--{flag} {text:?}: {e} (write the day as YYYY-MM-DD)"))?;
    Ok(d.and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
        .timestamp())
}

/// A sale's price, or nothing for a batch made without one.
fn price_text(s: &Sale) -> String {
    s.cents.map(cents_text).unwrap_or_default()
}

/// Prints (or writes) the sales of the days asked for.
pub(super) fn sales(api: &ApiArgs, a: SalesArgs) -> Result<()> {
    let today = chrono::Utc::now().date_naive();
    let until = match &a.until {
        Some(t) => day_start(t, "until")? + 86_400,
        None => day_start(&today.to_string(), "until")? + 86_400,
    };
    let since = match &a.since {
        Some(t) => day_start(t, "since")?,
        None => until - 31 * 86_400,
    };
    if since >= until {
        bail!("--since is after --until: nothing to report");
    }
    let db = database(a.sql.clone(), &a.sql_password_file)?;
    let list = db.sales(since, until)?;
    let text = if api.json {
        let rows: Vec<serde_json::Value> = list
            .iter()
            .map(|s| {
                serde_json::json!({
                    "at": s.at, "code": s.code, "batch": s.batch, "price": price_text(s),
                    "currency": s.currency, "gateway": s.gateway, "device": s.device,
                })
            })
            .collect();
        format!("{}\n", serde_json::to_string_pretty(&rows)?)
    } else if a.format == "csv" {
        let mut out = String::from("time,code,batch,price,currency,gateway,device\n");
        for s in &list {
            let cells = [
                &s.at,
                &s.code,
                &s.batch,
                &price_text(s),
                &s.currency,
                &s.gateway,
                &s.device,
            ];
            let line: Vec<String> = cells.iter().map(|c| csv_field(c)).collect();
            out.push_str(&line.join(","));
            out.push('\n');
        }
        out
    } else {
        let mut text = report(&list);
        let online = db.online(FRESH_SECS)?;
        let mut t = table(&["GATEWAY", "ONLINE NOW"], &[1]);
        for (gw, n) in &online {
            t.add_row([gw.clone(), n.to_string()]);
        }
        let total: i64 = online.iter().map(|(_, n)| n).sum();
        t.add_row(["total".to_string(), total.to_string()]);
        text.push_str(&format!("\n{t}\n"));
        text
    };
    match &a.output {
        Some(p) => std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display())),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

/// Sales and revenue per day, gateway and currency, then the totals.
fn report(list: &[Sale]) -> String {
    use std::collections::BTreeMap;
    let mut per: BTreeMap<(String, String, String), (u64, i64)> = BTreeMap::new();
    let mut total: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    for s in list {
        let day = s.at.get(..10).unwrap_or(&s.at).to_string();
        for e in [
            per.entry((day, s.gateway.clone(), s.currency.clone()))
                .or_default(),
            total.entry(s.currency.clone()).or_default(),
        ] {
            e.0 += 1;
            e.1 += s.cents.unwrap_or(0);
        }
    }
    let mut t = table(&["DAY", "GATEWAY", "SALES", "REVENUE", "CURRENCY"], &[2, 3]);
    for ((day, gw, cur), (n, cents)) in &per {
        t.add_row([
            day.clone(),
            gw.clone(),
            n.to_string(),
            cents_text(*cents),
            cur.clone(),
        ]);
    }
    for (cur, (n, cents)) in &total {
        t.add_row([
            "total".to_string(),
            String::new(),
            n.to_string(),
            cents_text(*cents),
            cur.clone(),
        ]);
    }
    format!("{t}\n")
}
