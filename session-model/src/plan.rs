//! Price plans and sales.
//!
//! A [`Plan`] is what the operator sells under a name: a price in a currency
//! and the session it buys. Plans are kept in the store ([`Shelf::Plans`]);
//! vouchers made from a plan carry its terms ([`SaleTerms`]), so a later change
//! of the plan's price never changes what was sold.
//!
//! A [`Sale`] is a priced voucher's first redemption: the voucher and its
//! redemption are written in one atomic write, so the sales book needs no
//! write of its own and can never disagree with the codes.

use serde::{Deserialize, Serialize};

use crate::limits::{check_exp_days, check_mb, check_mbits, check_secs};
use crate::store::Shelf;
use crate::{
    bytes_to_mb, MacAddr, ModelError, SessionId, SessionType, SessionsMgr, Voucher,
    VoucherTemplate, BYTES_PER_MB, LOCAL_PROVIDER,
};

/// Longest plan name, in characters.
pub const MAX_PLAN_NAME: usize = 40;
/// Most plans kept.
pub const MAX_PLANS: usize = 200;
/// Highest price, in minor units (10 million in the major unit).
pub const MAX_PRICE_MINOR: u64 = 1_000_000_000;

/// A named offer: its price and the session it buys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub name: String,
    /// The price in hundredths of the currency's unit (2000 = 20.00).
    pub price_minor: u64,
    /// Three capital letters (ISO 4217: `PHP`, `USD`, `EUR`).
    pub currency: String,
    pub template: VoucherTemplate,
    /// Unix seconds of its first save.
    pub created_at: i64,
}

/// What a voucher made from a plan was sold for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaleTerms {
    pub plan: String,
    pub price_minor: u64,
    pub currency: String,
}

impl SaleTerms {
    /// Terms as a seller gives them: a name (1 to [`MAX_PLAN_NAME`]
    /// characters, no control characters), a price as people type it and a
    /// currency of three capital letters.
    pub fn new(plan: &str, price: &str, currency: &str) -> Result<SaleTerms, ModelError> {
        let n = plan.chars().count();
        if n == 0 || n > MAX_PLAN_NAME || plan.chars().any(char::is_control) {
            return Err(ModelError::InvalidPlan(format!(
                "what was sold must be named in 1 to {MAX_PLAN_NAME} characters without control characters"
            )));
        }
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(ModelError::InvalidPlan(format!(
                "currency {currency:?} must be three capital letters (PHP, USD, EUR)"
            )));
        }
        Ok(SaleTerms {
            plan: plan.to_string(),
            price_minor: parse_price(price)?,
            currency: currency.to_string(),
        })
    }

    /// The price as printed: `20.00 PHP`.
    pub fn price(&self) -> String {
        format_price(self.price_minor, &self.currency)
    }
}

/// One sale: a priced code's first redemption, or a session sold through the
/// API with a price (its `code` empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sale {
    /// Unix seconds.
    pub at: i64,
    pub plan: String,
    pub price_minor: u64,
    pub currency: String,
    pub code: String,
    pub mac: MacAddr,
    pub session_id: SessionId,
}

/// `minor` hundredths as printed: `20.00 PHP`.
pub fn format_price(minor: u64, currency: &str) -> String {
    format!("{}.{:02} {currency}", minor / 100, minor % 100)
}

/// A price as people type it (`20`, `20.5`, `20.50`) in hundredths.
pub fn parse_price(s: &str) -> Result<u64, ModelError> {
    let bad = || {
        ModelError::InvalidPlan(format!(
            "price {s:?} is not an amount: write it as 20 or 20.50 (at most two decimals, at most {})",
            MAX_PRICE_MINOR / 100
        ))
    };
    let s = s.trim();
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty()
        || frac.len() > 2
        || !(whole.bytes().chain(frac.bytes())).all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let whole: u64 = whole.parse().map_err(|_| bad())?;
    let frac: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<2}").parse().map_err(|_| bad())?
    };
    let minor = whole
        .checked_mul(100)
        .and_then(|w| w.checked_add(frac))
        .ok_or_else(bad)?;
    if minor > MAX_PRICE_MINOR {
        return Err(bad());
    }
    Ok(minor)
}

impl Plan {
    /// Whether the plan can be kept: its name, price, currency and the session it buys.
    pub fn check(&self, now: i64) -> Result<(), ModelError> {
        let n = self.name.chars().count();
        if n == 0 || n > MAX_PLAN_NAME || self.name.trim() != self.name {
            return Err(ModelError::InvalidPlan(format!(
                "a plan's name must have 1 to {MAX_PLAN_NAME} characters, without spaces at either end"
            )));
        }
        if self.name.chars().any(char::is_control) {
            return Err(ModelError::InvalidPlan(
                "a plan's name must not contain control characters".into(),
            ));
        }
        if self.price_minor > MAX_PRICE_MINOR {
            return Err(ModelError::InvalidPlan(format!(
                "a price must be at most {}",
                format_price(MAX_PRICE_MINOR, &self.currency)
            )));
        }
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(ModelError::InvalidPlan(format!(
                "currency {:?} must be three capital letters (PHP, USD, EUR)",
                self.currency
            )));
        }
        let t = &self.template;
        check_secs("time_secs", t.time_secs)?;
        if t.data_bytes as f64 > crate::limits::MAX_MB * BYTES_PER_MB as f64 {
            check_mb("data_mb", bytes_to_mb(t.data_bytes))?;
        }
        check_exp_days(t.exp_days)?;
        check_mbits("down_mbits", t.down_mbits)?;
        check_mbits("up_mbits", t.up_mbits)?;
        self.template.session(LOCAL_PROVIDER, now).validate()?;
        Ok(())
    }

    /// The price as printed: `20.00 PHP`.
    pub fn price(&self) -> String {
        format_price(self.price_minor, &self.currency)
    }

    /// The terms a voucher made from the plan now carries.
    pub fn terms(&self) -> SaleTerms {
        SaleTerms {
            plan: self.name.clone(),
            price_minor: self.price_minor,
            currency: self.currency.clone(),
        }
    }

    /// What the plan buys, in words: `1 h`, `500 MB`, `1 h or 500 MB`.
    pub fn buys(&self) -> String {
        let t = &self.template;
        let time = || crate::plan::words_secs(t.time_secs);
        let data = || format!("{} MB", t.data_bytes / BYTES_PER_MB);
        match t.session_type {
            SessionType::Time => time(),
            SessionType::Data => data(),
            SessionType::TimeOrData => format!("{} or {}", time(), data()),
        }
    }
}

fn words_secs(s: u64) -> String {
    let (d, h, m) = (s / 86_400, s / 3_600 % 24, s / 60 % 60);
    let mut parts = Vec::new();
    if d > 0 {
        parts.push(format!("{d} d"));
    }
    if h > 0 {
        parts.push(format!("{h} h"));
    }
    if m > 0 {
        parts.push(format!("{m} min"));
    }
    if parts.is_empty() {
        parts.push(format!("{s} s"));
    }
    parts.join(" ")
}

impl Voucher {
    /// The sale this code made: its first redemption, if it was sold with a price.
    pub fn sale(&self) -> Option<Sale> {
        let terms = self.sale.as_ref()?;
        let first = self.redemptions.first()?;
        Some(Sale {
            at: first.at,
            plan: terms.plan.clone(),
            price_minor: terms.price_minor,
            currency: terms.currency.clone(),
            code: self.code.clone(),
            mac: first.mac,
            session_id: first.session_id,
        })
    }
}

impl SessionsMgr {
    /// Every plan, by name.
    pub fn plans(&self) -> Result<Vec<Plan>, ModelError> {
        let mut out = Vec::new();
        for (key, value) in self.store().shelf(Shelf::Plans)? {
            let plan: Plan = serde_json::from_slice(&value).map_err(|e| {
                ModelError::Store(crate::StoreError::Corrupt(format!("plan {key:?}: {e}")))
            })?;
            out.push(plan);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The plan named `name`.
    pub fn plan(&self, name: &str) -> Result<Plan, ModelError> {
        self.plans()?
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| ModelError::UnknownPlan(name.to_string()))
    }

    /// Keeps `plan`, replacing one of its name (whose first save time it keeps).
    /// Vouchers made before keep the terms they were made with.
    pub fn save_plan(&self, mut plan: Plan) -> Result<Plan, ModelError> {
        let now = self.clock().now_secs();
        plan.check(now)?;
        let plans = self.plans()?;
        match plans.iter().find(|p| p.name == plan.name) {
            Some(old) => plan.created_at = old.created_at,
            None if plans.len() >= MAX_PLANS => {
                return Err(ModelError::InvalidPlan(format!(
                    "at most {MAX_PLANS} plans are kept: remove one first"
                )))
            }
            None => plan.created_at = now,
        }
        let json = serde_json::to_vec(&plan)
            .map_err(|e| ModelError::InvalidPlan(format!("plan not encodable: {e}")))?;
        self.store()
            .put_on_shelf(Shelf::Plans, &plan.name, Some(&json))?;
        tracing::info!(plan = %plan.name, price = %plan.price(), "price plan saved");
        Ok(plan)
    }

    /// Removes the plan named `name`; vouchers made from it keep their terms.
    pub fn remove_plan(&self, name: &str) -> Result<(), ModelError> {
        self.plan(name)?;
        self.store().put_on_shelf(Shelf::Plans, name, None)?;
        tracing::info!(plan = %name, "price plan removed");
        Ok(())
    }

    /// Records that session `session_id` of the device at `mac` was sold on
    /// `terms` now (a session sold through the API with a price).
    pub fn record_sale(
        &self,
        session_id: SessionId,
        mac: MacAddr,
        terms: &SaleTerms,
    ) -> Result<Sale, ModelError> {
        let sale = Sale {
            at: self.clock().now_secs(),
            plan: terms.plan.clone(),
            price_minor: terms.price_minor,
            currency: terms.currency.clone(),
            code: String::new(),
            mac,
            session_id,
        };
        let json = serde_json::to_vec(&sale)
            .map_err(|e| ModelError::InvalidPlan(format!("sale not encodable: {e}")))?;
        let key = format!("{:012}-{:020}", sale.at.max(0), session_id);
        self.store().put_on_shelf(Shelf::Sales, &key, Some(&json))?;
        tracing::info!(session = session_id, price = %terms.price(), plan = %terms.plan, "session sold");
        Ok(sale)
    }

    /// Every sale from `from` (Unix seconds, inclusive), oldest first.
    pub fn sales(&self, from: i64) -> Result<Vec<Sale>, ModelError> {
        let mut out: Vec<Sale> = self
            .store()
            .vouchers()?
            .iter()
            .filter_map(Voucher::sale)
            .filter(|s| s.at >= from)
            .collect();
        for (key, value) in self
            .store()
            .shelf_from(Shelf::Sales, &format!("{:012}", from.max(0)))?
        {
            let sale: Sale = serde_json::from_slice(&value).map_err(|e| {
                ModelError::Store(crate::StoreError::Corrupt(format!("sale {key:?}: {e}")))
            })?;
            out.push(sale);
        }
        out.sort_by(|a, b| (a.at, &a.code).cmp(&(b.at, &b.code)));
        Ok(out)
    }
}
