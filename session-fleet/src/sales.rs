//! What was sold, at which gateway: a code's sale is its first login, read
//! from the accounting every gateway writes (`radacct`), with the price its
//! batch was made with (`session_agent_codes`, written by `vouchers create
//! --sql --price`).

use crate::vouchers::{Database, FleetError};

/// The codes' own table, beside FreeRADIUS's: created when missing.
pub const CODES_TABLE: &str = "CREATE TABLE IF NOT EXISTS session_agent_codes (\
     code text PRIMARY KEY, \
     batch text NOT NULL, \
     price numeric(14,2), \
     currency text NOT NULL DEFAULT '', \
     created timestamptz NOT NULL DEFAULT now())";

/// A price as written on a slip: an amount with at most two decimals, and a
/// currency (`20 PHP`, `1.50 EUR`, `20`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    /// Hundredths of the currency.
    pub cents: i64,
    pub currency: String,
}

impl Price {
    pub fn parse(text: &str) -> Result<Price, FleetError> {
        let bad = || FleetError::Price(text.to_string());
        let mut words = text.split_whitespace();
        let amount = words.next().ok_or_else(bad)?;
        let currency = words.next().unwrap_or("").to_string();
        if words.next().is_some()
            || currency.len() > 8
            || !currency.chars().all(|c| c.is_ascii_alphabetic())
        {
            return Err(bad());
        }
        let (whole, frac) = amount.split_once('.').unwrap_or((amount, ""));
        if whole.is_empty()
            || whole.len() > 12
            || frac.len() > 2
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let frac_cents = match frac.len() {
            0 => 0,
            1 => frac.parse::<i64>().map_err(|_| bad())? * 10,
            _ => frac.parse::<i64>().map_err(|_| bad())?,
        };
        Ok(Price {
            cents: whole.parse::<i64>().map_err(|_| bad())? * 100 + frac_cents,
            currency: currency.to_ascii_uppercase(),
        })
    }

    /// The amount as the database takes it (`20.00`).
    pub fn amount(&self) -> String {
        cents_text(self.cents)
    }
}

/// Hundredths as a decimal (`2050` -> `20.50`).
pub fn cents_text(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// One sale: a code's first login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sale {
    /// When, UTC, `2026-12-04T10:22:42Z`.
    pub at: String,
    pub code: String,
    pub batch: String,
    /// None: the batch was made without a price.
    pub cents: Option<i64>,
    pub currency: String,
    /// The gateway: its short name in FreeRADIUS's `nas` table, or its NAS-IP-Address.
    pub gateway: String,
    /// The device (Calling-Station-Id).
    pub device: String,
}

impl Database {
    /// The sales whose first login falls in `[from, to)` (Unix seconds), by time.
    pub fn sales(&self, from: i64, to: i64) -> Result<Vec<Sale>, FleetError> {
        let mut client = self.connect()?;
        let read = |source| FleetError::Read { source };
        client.batch_execute(CODES_TABLE).map_err(read)?;
        let rows = client
            .query(
                "SELECT to_char(f.acctstarttime AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                        c.code, c.batch, (c.price * 100)::bigint, c.currency, \
                        COALESCE(n.shortname, host(f.nasipaddress)), COALESCE(f.callingstationid, '') \
                 FROM session_agent_codes c \
                 JOIN LATERAL (SELECT acctstarttime, nasipaddress, callingstationid FROM radacct r \
                               WHERE r.username = c.code AND r.acctstarttime IS NOT NULL \
                               ORDER BY r.acctstarttime, r.radacctid LIMIT 1) f ON true \
                 LEFT JOIN nas n ON n.nasname = host(f.nasipaddress) \
                 WHERE f.acctstarttime >= to_timestamp($1::bigint) AND f.acctstarttime < to_timestamp($2::bigint) \
                 ORDER BY f.acctstarttime, c.code",
                &[&from, &to],
            )
            .map_err(read)?;
        Ok(rows
            .iter()
            .map(|r| Sale {
                at: r.get(0),
                code: r.get(1),
                batch: r.get(2),
                cents: r.get(3),
                currency: r.get(4),
                gateway: r.get(5),
                device: r.get(6),
            })
            .collect())
    }
}

impl Database {
    /// Sessions open now, per gateway: not stopped, and updated in the last
    /// `fresh_secs` (a gateway lost for good no longer counts).
    pub fn online(&self, fresh_secs: i64) -> Result<Vec<(String, i64)>, FleetError> {
        let mut client = self.connect()?;
        let rows = client
            .query(
                "SELECT COALESCE(n.shortname, host(r.nasipaddress)), count(*) \
                 FROM radacct r LEFT JOIN nas n ON n.nasname = host(r.nasipaddress) \
                 WHERE r.acctstoptime IS NULL \
                 AND r.acctupdatetime > now() - make_interval(secs => $1::bigint) \
                 GROUP BY 1 ORDER BY 1",
                &[&fresh_secs],
            )
            .map_err(|source| FleetError::Read { source })?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_are_read_to_the_hundredth_and_anything_else_is_refused() {
        let p = |t: &str| Price::parse(t).map(|p| (p.cents, p.currency));
        assert_eq!(p("20 PHP").unwrap(), (2000, "PHP".into()));
        assert_eq!(p("1.5 eur").unwrap(), (150, "EUR".into()));
        assert_eq!(p("0.05").unwrap(), (5, String::new()));
        for bad in [
            "",
            "PHP 20",
            "20.505 PHP",
            "-1 PHP",
            "20 P-P",
            "2e3",
            "20 PHP extra",
            ".5",
        ] {
            assert!(p(bad).is_err(), "{bad:?} was taken");
        }
        assert_eq!(cents_text(2050), "20.50");
        assert_eq!(Price::parse("7 USD").unwrap().amount(), "7.00");
    }
}
