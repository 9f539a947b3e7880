//! A batch of voucher codes in FreeRADIUS's SQL schema.
//!
//! Each code is a RADIUS user whose name and password are the code (what the
//! portal page sends with `[vouchers] backend = "radius"`). What it buys is
//! written as check items that FreeRADIUS's `sqlcounter` and `expiration`
//! modules turn into what is left at each login, summed over every gateway's
//! accounting (the README's "Many gateways" section has the server's
//! configuration):
//!
//! | the code buys | row |
//! | --- | --- |
//! | the code itself | `radcheck` Cleartext-Password := CODE |
//! | devices at once | `radcheck` Simultaneous-Use := N |
//! | time (seconds online, at every gateway together) | `radcheck` Max-All-Session := S |
//! | data (bytes, both directions, at every gateway together) | `radcheck` Max-Total-Octets := B |
//! | days after its first login | `radcheck` Expire-After := S |
//! | a last moment | `radcheck` Expiration := Unix seconds |
//! | speeds | `radreply` WISPr-Bandwidth-Max-Down/Up = bit/s |
//! | its batch | `radusergroup` (CODE, batch) |
//! | its batch and price, for the sales report | `session_agent_codes` (created when missing) |

use std::io::Write;

use session_model::voucher::NewBatch;

use crate::sales::{Price, CODES_TABLE};

/// What every code of a batch buys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Seconds online, counted at every gateway together.
    pub time_secs: Option<u64>,
    /// Bytes (upload and download), counted at every gateway together.
    pub data_bytes: Option<u64>,
    /// Download and upload speed, bit/s (none: the gateway's global speed).
    pub down_bps: Option<u64>,
    pub up_bps: Option<u64>,
    /// Devices that may be online on the code at once.
    pub devices: u32,
    /// The code ends this many seconds after its first login.
    pub secs_after_first_login: Option<u64>,
    /// The code ends at this moment (Unix seconds).
    pub valid_until: Option<i64>,
}

/// Where a row goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `radcheck (username, attribute, op, value)`.
    Check,
    /// `radreply (username, attribute, op, value)`.
    Reply,
    /// `radusergroup (username, groupname, priority)`: the attribute is the group.
    Group,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Check => "radcheck",
            Table::Reply => "radreply",
            Table::Group => "radusergroup",
        }
    }
}

/// One row of FreeRADIUS's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub table: Table,
    pub username: String,
    /// The attribute (the group name for [`Table::Group`]).
    pub attribute: String,
    /// The operator (unused for [`Table::Group`]).
    pub op: &'static str,
    pub value: String,
}

/// Why a batch was not written.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("a code buys nothing: give a time, a data limit or both")]
    NothingBought,
    #[error("a code is for at least one device at once")]
    NoDevices,
    #[error("the batch name is empty: name it (it becomes the codes' group in radusergroup)")]
    NoBatch,
    #[error("cannot connect to PostgreSQL at {target}: {source} (check the URL, that the server takes connections from here, and the password file)")]
    Connect {
        target: String,
        #[source]
        source: postgres::Error,
    },
    #[error("the database URL cannot be read: {0} (write it as postgres://USER@HOST/DB or host=/run/postgresql user=USER dbname=DB)")]
    Url(#[source] postgres::Error),
    #[error("writing the codes into {table}: {source} (is FreeRADIUS's PostgreSQL schema loaded? schema.sql of freeradius-postgresql)")]
    Write {
        table: &'static str,
        #[source]
        source: postgres::Error,
    },
    #[error("code {0} is a RADIUS user already: nothing was written; create the batch again")]
    Taken(String),
    #[error("cannot write the SQL file: {0}")]
    File(#[source] std::io::Error),
    #[error("price {0:?}: write an amount with at most two decimals and a currency, like \"20 PHP\" or \"1.50 EUR\"")]
    Price(String),
    #[error("reading the sales: {source} (is FreeRADIUS's PostgreSQL schema loaded?)")]
    Read {
        #[source]
        source: postgres::Error,
    },
}

impl Plan {
    /// What each code of `b` buys (a batch that passed [`NewBatch::check`]).
    pub fn of(b: &NewBatch) -> Plan {
        let t = &b.template;
        let speed =
            |mbits: i32| (!t.use_global_speed && mbits > 0).then(|| mbits as u64 * 1_000_000);
        Plan {
            time_secs: t.session_type.uses_time().then_some(t.time_secs),
            data_bytes: t.session_type.uses_data().then_some(t.data_bytes),
            down_bps: speed(t.down_mbits),
            up_bps: speed(t.up_mbits),
            devices: b.max_devices,
            secs_after_first_login: t.exp_days.map(|d| u64::from(d) * 86_400),
            valid_until: b.valid_until,
        }
    }

    /// Checks that the plan buys something, for someone.
    pub fn check(&self) -> Result<(), FleetError> {
        if self.time_secs.is_none() && self.data_bytes.is_none() {
            return Err(FleetError::NothingBought);
        }
        if self.devices == 0 {
            return Err(FleetError::NoDevices);
        }
        Ok(())
    }

    /// The rows of one code.
    pub fn rows(&self, code: &str, batch: &str) -> Vec<Row> {
        let row = |table, attribute: &str, op, value: String| Row {
            table,
            username: code.to_string(),
            attribute: attribute.to_string(),
            op,
            value,
        };
        let mut out = vec![
            row(Table::Check, "Cleartext-Password", ":=", code.to_string()),
            row(
                Table::Check,
                "Simultaneous-Use",
                ":=",
                self.devices.to_string(),
            ),
        ];
        if let Some(s) = self.time_secs {
            out.push(row(Table::Check, "Max-All-Session", ":=", s.to_string()));
        }
        if let Some(b) = self.data_bytes {
            out.push(row(Table::Check, "Max-Total-Octets", ":=", b.to_string()));
        }
        if let Some(s) = self.secs_after_first_login {
            out.push(row(Table::Check, "Expire-After", ":=", s.to_string()));
        }
        if let Some(t) = self.valid_until {
            out.push(row(Table::Check, "Expiration", ":=", t.to_string()));
        }
        if let Some(b) = self.down_bps {
            out.push(row(
                Table::Reply,
                "WISPr-Bandwidth-Max-Down",
                "=",
                b.to_string(),
            ));
        }
        if let Some(b) = self.up_bps {
            out.push(row(
                Table::Reply,
                "WISPr-Bandwidth-Max-Up",
                "=",
                b.to_string(),
            ));
        }
        out.push(row(Table::Group, batch, "", "1".into()));
        out
    }
}

/// A batch as written: FreeRADIUS's rows, and each code's batch and price.
#[derive(Debug, Clone)]
pub struct Batch {
    pub rows: Vec<Row>,
    pub codes: Vec<String>,
    pub batch: String,
    pub price: Option<Price>,
}

/// The rows of a batch: every code with `plan`, sold at `price`.
pub fn batch_rows(
    codes: &[String],
    batch: &str,
    plan: &Plan,
    price: Option<Price>,
) -> Result<Batch, FleetError> {
    plan.check()?;
    if batch.trim().is_empty() {
        return Err(FleetError::NoBatch);
    }
    Ok(Batch {
        rows: codes.iter().flat_map(|c| plan.rows(c, batch)).collect(),
        codes: codes.to_vec(),
        batch: batch.to_string(),
        price,
    })
}

/// A value in PostgreSQL's COPY text format: backslash, tab, newline and
/// carriage return escaped, so no value can end its field or row.
fn copy_field(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// Writes a batch as a file for `psql -f FILE` (or `\i`): one `COPY ... FROM
/// stdin` per table in a transaction, the values as data, never as SQL text.
pub fn write_copy(b: &Batch, out: &mut impl Write) -> Result<(), FleetError> {
    let rows = &b.rows;
    let mut w = || -> std::io::Result<()> {
        writeln!(out, "-- session-agent voucher batch: load with psql -f")?;
        writeln!(out, "BEGIN;")?;
        writeln!(out, "{CODES_TABLE};")?;
        writeln!(
            out,
            "COPY session_agent_codes (code, batch, price, currency) FROM stdin;"
        )?;
        for c in &b.codes {
            let (amount, currency) = match &b.price {
                Some(p) => (p.amount(), p.currency.clone()),
                None => ("\\N".to_string(), String::new()),
            };
            writeln!(
                out,
                "{}\t{}\t{amount}\t{}",
                copy_field(c),
                copy_field(&b.batch),
                copy_field(&currency)
            )?;
        }
        writeln!(out, "\\.")?;
        for table in [Table::Check, Table::Reply, Table::Group] {
            let of: Vec<&Row> = rows.iter().filter(|r| r.table == table).collect();
            if of.is_empty() {
                continue;
            }
            match table {
                Table::Group => writeln!(
                    out,
                    "COPY radusergroup (username, groupname, priority) FROM stdin;"
                )?,
                t => writeln!(
                    out,
                    "COPY {} (username, attribute, op, value) FROM stdin;",
                    t.name()
                )?,
            }
            for r in of {
                match table {
                    Table::Group => writeln!(
                        out,
                        "{}\t{}\t{}",
                        copy_field(&r.username),
                        copy_field(&r.attribute),
                        copy_field(&r.value)
                    )?,
                    _ => writeln!(
                        out,
                        "{}\t{}\t{}\t{}",
                        copy_field(&r.username),
                        copy_field(&r.attribute),
                        r.op,
                        copy_field(&r.value)
                    )?,
                }
            }
            writeln!(out, "\\.")?;
        }
        writeln!(out, "COMMIT;")
    };
    w().map_err(FleetError::File)
}

/// Where the database is: a `postgres://` URL or `key=value` words, and
/// the password (from a file: never on a command line).
#[derive(Debug, Clone)]
pub struct Database {
    pub url: String,
    pub password: Option<String>,
}

impl Database {
    pub(crate) fn connect(&self) -> Result<postgres::Client, FleetError> {
        let mut cfg: postgres::Config = self.url.parse().map_err(FleetError::Url)?;
        if let Some(p) = &self.password {
            cfg.password(p);
        }
        // The URL without a password it may hold.
        let target = format!(
            "{}/{}",
            cfg.get_hosts()
                .iter()
                .map(|h| match h {
                    postgres::config::Host::Tcp(t) => t.clone(),
                    postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
            cfg.get_dbname().unwrap_or("")
        );
        cfg.connect(postgres::NoTls)
            .map_err(|source| FleetError::Connect { target, source })
    }

    /// Inserts a batch in one transaction with bound parameters: all of it,
    /// or (on any error, or a code that is a user already) nothing.
    pub fn insert(&self, b: &Batch) -> Result<usize, FleetError> {
        let rows = &b.rows;
        let mut client = self.connect()?;
        let write = |table: Table| {
            move |source| FleetError::Write {
                table: table.name(),
                source,
            }
        };
        let mut tx = client.transaction().map_err(write(Table::Check))?;
        let mut codes: Vec<&str> = rows.iter().map(|r| r.username.as_str()).collect();
        codes.sort_unstable();
        codes.dedup();
        let taken = tx
            .query(
                "SELECT username FROM radcheck WHERE username = ANY($1) LIMIT 1",
                &[&codes],
            )
            .map_err(write(Table::Check))?;
        if let Some(r) = taken.first() {
            return Err(FleetError::Taken(r.get(0)));
        }
        let check = tx
            .prepare(
                "INSERT INTO radcheck (username, attribute, op, value) VALUES ($1, $2, $3, $4)",
            )
            .map_err(write(Table::Check))?;
        let reply = tx
            .prepare(
                "INSERT INTO radreply (username, attribute, op, value) VALUES ($1, $2, $3, $4)",
            )
            .map_err(write(Table::Reply))?;
        let group = tx
            .prepare("INSERT INTO radusergroup (username, groupname, priority) VALUES ($1, $2, $3)")
            .map_err(write(Table::Group))?;
        for r in rows {
            let op: &str = r.op;
            match r.table {
                Table::Check => tx.execute(&check, &[&r.username, &r.attribute, &op, &r.value]),
                Table::Reply => tx.execute(&reply, &[&r.username, &r.attribute, &op, &r.value]),
                Table::Group => {
                    let priority: i32 = r.value.parse().unwrap_or(1);
                    tx.execute(&group, &[&r.username, &r.attribute, &priority])
                }
            }
            .map_err(write(r.table))?;
        }
        tx.batch_execute(CODES_TABLE)
            .map_err(|source| FleetError::Write {
                table: "session_agent_codes",
                source,
            })?;
        let code = tx
            .prepare("INSERT INTO session_agent_codes (code, batch, price, currency) VALUES ($1, $2, $3::text::numeric, $4)")
            .map_err(|source| FleetError::Write {
                table: "session_agent_codes",
                source,
            })?;
        let (amount, currency) = match &b.price {
            Some(p) => (Some(p.amount()), p.currency.clone()),
            None => (None, String::new()),
        };
        for c in &b.codes {
            tx.execute(&code, &[c, &b.batch, &amount, &currency])
                .map_err(|source| FleetError::Write {
                    table: "session_agent_codes",
                    source,
                })?;
        }
        tx.commit().map_err(write(Table::Check))?;
        Ok(rows.len() + b.codes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hour_and_500mb() -> Plan {
        Plan {
            time_secs: Some(3600),
            data_bytes: Some(500_000_000),
            down_bps: Some(10_000_000),
            up_bps: None,
            devices: 1,
            secs_after_first_login: None,
            valid_until: Some(1_800_000_000),
        }
    }

    #[test]
    fn a_code_is_its_own_password_and_its_limits_are_check_items_for_the_counters() {
        let rows = hour_and_500mb().rows("ABCDE23456", "roll-1");
        let find = |t: Table, a: &str| {
            rows.iter()
                .find(|r| r.table == t && r.attribute == a)
                .map(|r| (r.op, r.value.as_str()))
        };
        assert_eq!(
            find(Table::Check, "Cleartext-Password"),
            Some((":=", "ABCDE23456"))
        );
        assert_eq!(find(Table::Check, "Simultaneous-Use"), Some((":=", "1")));
        assert_eq!(find(Table::Check, "Max-All-Session"), Some((":=", "3600")));
        assert_eq!(
            find(Table::Check, "Max-Total-Octets"),
            Some((":=", "500000000"))
        );
        assert_eq!(find(Table::Check, "Expiration"), Some((":=", "1800000000")));
        assert_eq!(
            find(Table::Reply, "WISPr-Bandwidth-Max-Down"),
            Some(("=", "10000000"))
        );
        assert_eq!(find(Table::Reply, "WISPr-Bandwidth-Max-Up"), None);
        assert_eq!(find(Table::Group, "roll-1"), Some(("", "1")));
        assert!(rows.iter().all(|r| r.username == "ABCDE23456"));
    }

    #[test]
    fn a_plan_that_buys_nothing_or_a_batch_without_a_name_is_refused() {
        let none = Plan {
            devices: 1,
            ..Plan::default()
        };
        assert!(matches!(
            batch_rows(&["A".into()], "b", &none, None),
            Err(FleetError::NothingBought)
        ));
        assert!(matches!(
            batch_rows(&["A".into()], " ", &hour_and_500mb(), None),
            Err(FleetError::NoBatch)
        ));
        let nobody = Plan {
            devices: 0,
            ..hour_and_500mb()
        };
        assert!(matches!(
            batch_rows(&["A".into()], "b", &nobody, None),
            Err(FleetError::NoDevices)
        ));
    }

    #[test]
    fn the_copy_file_escapes_what_could_end_a_field_or_a_row() {
        let b = batch_rows(
            &["ABCDE23456".into()],
            "roll\t1\\\nDROP TABLE radcheck;",
            &hour_and_500mb(),
            Some(Price::parse("20 PHP").unwrap()),
        )
        .unwrap();
        let mut out = Vec::new();
        write_copy(&b, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("-- session-agent"));
        assert!(text.contains("COPY radcheck (username, attribute, op, value) FROM stdin;\nABCDE23456\tCleartext-Password\t:=\tABCDE23456\n"));
        assert!(text.contains("ABCDE23456\troll\\t1\\\\\\nDROP TABLE radcheck;\t1\n"));
        // Every data line of the group table has exactly its three fields.
        let group: Vec<&str> = text
            .split("COPY radusergroup (username, groupname, priority) FROM stdin;\n")
            .nth(1)
            .unwrap()
            .lines()
            .take_while(|l| *l != "\\.")
            .collect();
        assert_eq!(group.len(), 1);
        assert_eq!(group[0].split('\t').count(), 3);
        assert!(text.contains("ABCDE23456\troll\\t1\\\\\\nDROP TABLE radcheck;\t20.00\tPHP\n"));
        assert!(text.trim_end().ends_with("COMMIT;"));
    }
}
