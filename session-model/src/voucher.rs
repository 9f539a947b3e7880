//! Vouchers: codes sold over the counter, each buying a session.
//!
//! A [`Voucher`] is a code plus a [`VoucherTemplate`] (what the session it buys looks
//! like), an optional last day it can be redeemed, how many devices may redeem it and
//! the batch (roll) it was printed in. Redeeming creates the device's session from the
//! template; the store writes the session and the voucher's [`Redemption`] in one
//! atomic write, so a crash never leaves a code used without its session or a session
//! without its code marked.
//!
//! Codes are drawn from the OS's CSPRNG over [`CODE_ALPHABET`], which leaves out the
//! characters people confuse on a printed slip (0/O, 1/I/L). What a customer types is
//! read with [`normalize_code`]: case, spaces and dashes do not matter.

use serde::{Deserialize, Serialize};

use session_api::requests::NewVouchers;

use crate::limits::{check_exp_days, check_mb, check_mbits, check_secs, check_timestamp, MAX_MB};
use crate::manager::SessionEvent;
use crate::{
    bytes_to_mb, mb_to_bytes, ClientSession, DeviceId, MacAddr, ModelError, SessionData, SessionId,
    SessionRecord, SessionType, SessionsMgr, StoreError, BYTES_PER_MB, LOCAL_PROVIDER,
};

/// The characters of a code: digits 2–9 and the capital letters without I, L and O
/// (31 symbols, 4.95 bits each).
pub const CODE_ALPHABET: &[u8] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";
/// Shortest code length accepted when creating a batch (about 30 bits).
pub const MIN_CODE_LEN: usize = 6;
/// Longest code length accepted when creating a batch.
pub const MAX_CODE_LEN: usize = 32;

/// What a voucher's session looks like (the seed's `CreateSession` arguments).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoucherTemplate {
    pub session_type: SessionType,
    pub time_secs: u64,
    pub data_bytes: u64,
    pub exp_days: Option<u32>,
    pub down_mbits: i32,
    pub up_mbits: i32,
    pub use_global_speed: bool,
}

impl VoucherTemplate {
    /// The session a redemption at `now` creates, owned by `provider`.
    pub fn session(&self, provider: &str, now: i64) -> SessionData {
        SessionData {
            provider: provider.into(),
            session_type: self.session_type,
            time_secs: self.time_secs,
            data_bytes: self.data_bytes,
            time_cons: 0,
            data_cons_bytes: 0,
            started_at: None,
            exp_days: self.exp_days,
            down_mbits: self.down_mbits,
            up_mbits: self.up_mbits,
            use_global_speed: self.use_global_speed,
            created_at: now,
        }
    }
}

/// One device's use of a code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redemption {
    pub device_id: DeviceId,
    pub mac: MacAddr,
    pub session_id: SessionId,
    /// Unix seconds.
    pub at: i64,
    /// The MACs the device moved to with the code's session (a phone that
    /// changed its Wi-Fi address typed the code again), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moves: Vec<VoucherMove>,
}

/// A redemption's session following its device to another MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoucherMove {
    pub from: MacAddr,
    pub to: MacAddr,
    /// Unix seconds.
    pub at: i64,
}

/// A code and what it buys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Voucher {
    /// The code in canonical form ([`normalize_code`]).
    pub code: String,
    /// The batch (roll) the code was made in.
    pub batch: String,
    /// The price printed on the slip, as the operator wrote it (`"20 PHP"`).
    pub price: Option<String>,
    pub template: VoucherTemplate,
    /// Unix seconds of creation.
    pub created_at: i64,
    /// The code cannot be redeemed after this (Unix seconds); `None`: no limit.
    pub valid_until: Option<i64>,
    /// How many devices may redeem the code (each once).
    pub max_devices: u32,
    /// Redemptions, oldest first.
    pub redemptions: Vec<Redemption>,
    /// Unix seconds of revocation.
    pub revoked_at: Option<i64>,
    /// Characters per printed group (`ABCDE-FGHJK`); 0: one group.
    #[serde(default = "default_group")]
    pub group: usize,
    /// The plan and price it was made from, when it was (a sale at its first redemption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sale: Option<crate::SaleTerms>,
}

/// Characters per printed group of a code, unless a batch says otherwise.
pub const DEFAULT_GROUP: usize = 5;
/// Characters of a code, unless a batch says otherwise (about 50 bits).
pub const DEFAULT_CODE_LEN: usize = 10;

fn default_group() -> usize {
    DEFAULT_GROUP
}

/// Where a voucher is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VoucherState {
    /// Not redeemed yet.
    Unused,
    /// Redeemed, and a session it bought is still usable (or devices may still redeem it).
    Active,
    /// Every device it allows has redeemed it and every session it bought has ended.
    UsedUp,
    /// Its last day passed before it was used up.
    Expired,
    /// Withdrawn by the operator before it was redeemed.
    Revoked,
}

impl VoucherState {
    pub fn name(self) -> &'static str {
        match self {
            VoucherState::Unused => "unused",
            VoucherState::Active => "active",
            VoucherState::UsedUp => "used_up",
            VoucherState::Expired => "expired",
            VoucherState::Revoked => "revoked",
        }
    }

    pub const ALL: [VoucherState; 5] = [
        VoucherState::Unused,
        VoucherState::Active,
        VoucherState::UsedUp,
        VoucherState::Expired,
        VoucherState::Revoked,
    ];
}

impl std::str::FromStr for VoucherState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VoucherState::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| {
                format!("unknown voucher state {s:?}: expected unused, active, used_up, expired or revoked")
            })
    }
}

/// Why a code was not redeemed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedeemRefusal {
    #[error("unknown voucher code")]
    Unknown,
    #[error("this code was withdrawn by the operator")]
    Revoked,
    #[error("this code expired and can no longer be redeemed")]
    Expired,
    #[error("this code is used up")]
    UsedUp,
    #[error("this code is in use on another device")]
    LockedToOtherDevice,
    #[error("this device already redeemed this code (session {session_id})")]
    AlreadyRedeemed { session_id: SessionId },
}

impl RedeemRefusal {
    /// The API's error code for the refusal.
    pub fn code(&self) -> &'static str {
        match self {
            RedeemRefusal::Unknown => "unknown_voucher",
            RedeemRefusal::Revoked => "voucher_revoked",
            RedeemRefusal::Expired => "voucher_expired",
            RedeemRefusal::UsedUp => "voucher_used_up",
            RedeemRefusal::LockedToOtherDevice => "voucher_locked",
            RedeemRefusal::AlreadyRedeemed { .. } => "voucher_already_redeemed",
        }
    }
}

impl Voucher {
    /// Whether a session this voucher bought is still usable at `now`: it exists
    /// (`session` finds it) and has not ended.
    pub fn any_live(&self, now: i64, session: impl Fn(SessionId) -> Option<SessionRecord>) -> bool {
        self.redemptions
            .iter()
            .any(|r| session(r.session_id).is_some_and(|s| s.data.is_available(now)))
    }

    /// The voucher's state at `now`; `live` from [`Voucher::any_live`].
    pub fn state(&self, now: i64, live: bool) -> VoucherState {
        if self.revoked_at.is_some() {
            return VoucherState::Revoked;
        }
        if live {
            return VoucherState::Active;
        }
        if self.redemptions.len() >= self.max_devices as usize {
            return VoucherState::UsedUp;
        }
        if self.valid_until.is_some_and(|t| now > t) {
            return VoucherState::Expired;
        }
        if self.redemptions.is_empty() {
            VoucherState::Unused
        } else {
            VoucherState::Active
        }
    }

    /// Whether `device` may redeem the code at `now`; `live` tells whether a
    /// session the code bought is still usable (as for [`Voucher::any_live`]).
    /// A device that redeemed the code before is told it is used up once its
    /// own session ended, whatever other devices still have.
    pub fn check_redeem(
        &self,
        device: DeviceId,
        now: i64,
        live: impl Fn(SessionId) -> bool,
    ) -> Result<(), RedeemRefusal> {
        if self.revoked_at.is_some() {
            return Err(RedeemRefusal::Revoked);
        }
        if let Some(r) = self.redemptions.iter().find(|r| r.device_id == device) {
            return Err(if live(r.session_id) {
                RedeemRefusal::AlreadyRedeemed {
                    session_id: r.session_id,
                }
            } else {
                RedeemRefusal::UsedUp
            });
        }
        if self.redemptions.len() >= self.max_devices as usize {
            return Err(if self.redemptions.iter().any(|r| live(r.session_id)) {
                RedeemRefusal::LockedToOtherDevice
            } else {
                RedeemRefusal::UsedUp
            });
        }
        if self.valid_until.is_some_and(|t| now > t) {
            return Err(RedeemRefusal::Expired);
        }
        Ok(())
    }

    /// The code as printed: groups of [`Voucher::group`] characters joined by `-`.
    pub fn display_code(&self) -> String {
        group_code(&self.code, self.group)
    }

    /// The code with all but its last four characters hidden, for logs.
    pub fn masked(&self) -> String {
        mask_code(&self.code)
    }
}

/// `code` in groups of `group` characters joined by `-` (0: unchanged).
pub fn group_code(code: &str, group: usize) -> String {
    if group == 0 {
        return code.to_string();
    }
    let chars: Vec<char> = code.chars().collect();
    chars
        .chunks(group)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// A code for a log line: all but its last four characters hidden (`******XK4P`).
pub fn mask_code(code: &str) -> String {
    let n = code.chars().count();
    code.chars()
        .enumerate()
        .map(|(i, c)| if i + 4 < n { '*' } else { c })
        .collect()
}

/// What a customer typed, in canonical form: capitals, without spaces and dashes.
/// `None` when nothing is left or a character is outside [`CODE_ALPHABET`] after
/// folding the look-alikes a customer may type (`O` → `0` is not folded: neither is in
/// the alphabet, so the code is simply unknown).
pub fn normalize_code(typed: &str) -> Option<String> {
    let mut out = String::with_capacity(typed.len());
    for c in typed.chars() {
        if c == '-' || c.is_whitespace() {
            continue;
        }
        let up = c.to_ascii_uppercase();
        if !up.is_ascii() || !CODE_ALPHABET.contains(&(up as u8)) {
            return None;
        }
        out.push(up);
    }
    (!out.is_empty() && out.len() <= MAX_CODE_LEN).then_some(out)
}

/// A fresh code of `len` characters from the OS's CSPRNG, uniform over
/// [`CODE_ALPHABET`] (rejection sampling: no modulo bias).
pub fn generate_code(len: usize) -> Result<String, getrandom::Error> {
    let n = CODE_ALPHABET.len() as u8;
    // The largest multiple of n below 256: bytes at or above it are drawn again.
    let limit = 256 - (256 % n as u16) as u8 as u16;
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buf)?;
        for &b in &buf {
            if (b as u16) < limit && out.len() < len {
                out.push(CODE_ALPHABET[(b % n) as usize] as char);
            }
        }
    }
    Ok(out)
}

/// Most codes one batch may hold.
pub const MAX_BATCH: u32 = 1_000;
/// Most devices one code may admit.
pub const MAX_DEVICES_PER_CODE: u32 = 1_000;
/// Longest batch name and price, in characters.
pub const MAX_LABEL: usize = 64;

/// A batch (roll) of codes to make.
#[derive(Debug, Clone)]
pub struct NewBatch {
    /// The batch's name; codes of one name may be made in several calls.
    pub batch: String,
    pub price: Option<String>,
    pub count: u32,
    pub template: VoucherTemplate,
    pub valid_until: Option<i64>,
    pub max_devices: u32,
    pub code_len: usize,
    /// Characters per printed group (0: one group).
    pub group: usize,
    /// The plan the codes are made from (a sale at each code's first redemption).
    pub sale: Option<crate::SaleTerms>,
}

impl TryFrom<NewVouchers> for NewBatch {
    type Error = ModelError;

    /// The batch a request asks for, its defaults filled in (the operator
    /// API's and the CLI's one reading); [`NewBatch::check`] holds it to the
    /// ranges.
    fn try_from(v: NewVouchers) -> Result<Self, ModelError> {
        Ok(NewBatch {
            batch: v.batch,
            price: v.price,
            count: v.count,
            template: VoucherTemplate {
                session_type: SessionType::try_from(v.session_type)?,
                time_secs: v.time_secs,
                data_bytes: mb_to_bytes("data_mb", check_mb("data_mb", v.data_mb)?)?,
                exp_days: v.exp_days,
                down_mbits: v.down_mbits,
                up_mbits: v.up_mbits,
                use_global_speed: v.use_global_speed,
            },
            valid_until: v.valid_until,
            max_devices: v.max_devices.unwrap_or(1),
            code_len: v.code_length.unwrap_or(DEFAULT_CODE_LEN),
            group: v.group.unwrap_or(DEFAULT_GROUP),
            sale: None,
        })
    }
}

impl NewBatch {
    /// Whether the batch can be made at `now`: its labels, count, code
    /// length and grouping, devices per code, last moment, and the session a
    /// code buys. Codes made elsewhere (a RADIUS database) are held to it too.
    pub fn check(&self, now: i64) -> Result<(), ModelError> {
        check_label("batch", &self.batch, false)?;
        if let Some(p) = &self.price {
            check_label("price", p, true)?;
        }
        if !(1..=MAX_BATCH).contains(&self.count) {
            return Err(ModelError::InvalidBatch(format!(
                "count must be 1 to {MAX_BATCH}, not {}",
                self.count
            )));
        }
        if !(MIN_CODE_LEN..=MAX_CODE_LEN).contains(&self.code_len) {
            return Err(ModelError::InvalidBatch(format!(
                "code_length must be {MIN_CODE_LEN} to {MAX_CODE_LEN}, not {}",
                self.code_len
            )));
        }
        if self.group > self.code_len {
            return Err(ModelError::InvalidBatch(format!(
                "group must be 0 (none) to code_length ({}), not {}",
                self.code_len, self.group
            )));
        }
        if !(1..=MAX_DEVICES_PER_CODE).contains(&self.max_devices) {
            return Err(ModelError::InvalidBatch(format!(
                "max_devices must be 1 to {MAX_DEVICES_PER_CODE}, not {}",
                self.max_devices
            )));
        }
        let t = &self.template;
        check_secs("time_secs", t.time_secs)?;
        if t.data_bytes as f64 > MAX_MB * BYTES_PER_MB as f64 {
            check_mb("data_mb", bytes_to_mb(t.data_bytes))?;
        }
        check_exp_days(t.exp_days)?;
        check_mbits("down_mbits", t.down_mbits)?;
        check_mbits("up_mbits", t.up_mbits)?;
        check_timestamp("valid_until", self.valid_until)?;
        if self.valid_until.is_some_and(|t| t <= now) {
            return Err(ModelError::InvalidBatch(
                "valid_until is in the past: the codes could never be redeemed".into(),
            ));
        }
        // The session a code buys must be one the manager accepts.
        self.template.session(LOCAL_PROVIDER, now).validate()?;
        Ok(())
    }
}

fn check_label(field: &str, v: &str, empty_ok: bool) -> Result<(), ModelError> {
    let n = v.chars().count();
    if (!empty_ok && n == 0) || n > MAX_LABEL {
        return Err(ModelError::InvalidBatch(format!(
            "{field} must have 1 to {MAX_LABEL} characters, not {n}"
        )));
    }
    if v.chars().any(char::is_control) {
        return Err(ModelError::InvalidBatch(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(())
}

impl SessionsMgr {
    /// Makes `b.count` fresh codes, stored together (all or none).
    pub fn create_vouchers(&self, b: &NewBatch) -> Result<Vec<Voucher>, ModelError> {
        let now = self.clock().now_secs();
        b.check(now)?;

        let _guard = self.voucher_lock.lock().map_err(|_| ModelError::Poisoned)?;
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::with_capacity(b.count as usize);
        while out.len() < b.count as usize {
            let code = generate_code(b.code_len).map_err(|e| ModelError::Random(e.to_string()))?;
            // A repeat is as likely as guessing a code; draw again rather than fail.
            if !seen.insert(code.clone()) || self.store().voucher(&code)?.is_some() {
                continue;
            }
            out.push(Voucher {
                code,
                batch: b.batch.clone(),
                price: b.price.clone(),
                template: b.template.clone(),
                created_at: now,
                valid_until: b.valid_until,
                max_devices: b.max_devices,
                redemptions: Vec::new(),
                revoked_at: None,
                group: b.group,
                sale: b.sale.clone(),
            });
        }
        self.store().create_vouchers(&out)?;
        tracing::info!(batch = %b.batch, count = out.len(), "voucher batch created");
        Ok(out)
    }

    /// A voucher by what a customer typed (case, spaces and dashes do not matter).
    pub fn voucher(&self, typed: &str) -> Result<Voucher, ModelError> {
        let code = normalize_code(typed).ok_or(RedeemRefusal::Unknown)?;
        Ok(self.store().voucher(&code)?.ok_or(RedeemRefusal::Unknown)?)
    }

    /// Where `v` is in its life now.
    pub fn voucher_state(&self, v: &Voucher) -> VoucherState {
        let now = self.clock().now_secs();
        v.state(now, self.voucher_live(v, now))
    }

    fn voucher_live(&self, v: &Voucher, now: i64) -> bool {
        v.any_live(now, |id| self.store().session(id).ok().flatten())
    }

    /// Whether the session `id` exists and can still be used at `now`.
    fn session_live(&self, id: SessionId, now: i64) -> bool {
        self.store()
            .session(id)
            .ok()
            .flatten()
            .is_some_and(|s| s.data.is_available(now))
    }

    /// All vouchers with their states, by code.
    pub fn vouchers(&self) -> Result<Vec<(Voucher, VoucherState)>, ModelError> {
        Ok(self
            .store()
            .vouchers()?
            .into_iter()
            .map(|v| {
                let st = self.voucher_state(&v);
                (v, st)
            })
            .collect())
    }

    /// Withdraws an unused code.
    pub fn revoke_voucher(&self, typed: &str) -> Result<Voucher, ModelError> {
        let _guard = self.voucher_lock.lock().map_err(|_| ModelError::Poisoned)?;
        let mut v = self.voucher(typed)?;
        let state = self.voucher_state(&v);
        if state != VoucherState::Unused {
            return Err(ModelError::VoucherNotRevocable {
                code: v.masked(),
                state: state.name(),
            });
        }
        v.revoked_at = Some(self.clock().now_secs());
        self.store().save_voucher(&v)?;
        tracing::info!(code = %v.masked(), "voucher revoked");
        Ok(v)
    }

    /// Redeems a code for a device: creates the session the code buys (queued after
    /// the device's other sessions) and records the redemption, atomically. The caller
    /// connects the device. Of concurrent redemptions of one code only as many succeed
    /// as the code admits devices.
    pub fn redeem_voucher(
        &self,
        device_id: DeviceId,
        typed: &str,
    ) -> Result<(ClientSession, Voucher), ModelError> {
        let _guard = self.voucher_lock.lock().map_err(|_| ModelError::Poisoned)?;
        let v = self.voucher(typed)?;
        let device = self.device(device_id)?;
        if self.is_blocked(device_id)? {
            return Err(ModelError::Blocked(device_id));
        }
        let now = self.clock().now_secs();
        v.check_redeem(device_id, now, |id| self.session_live(id, now))?;
        let data = v.template.session(LOCAL_PROVIDER, now);
        data.validate()?;
        let (rec, v) = self
            .store()
            .redeem_voucher(&v.code, device_id, device.mac, now, data)
            .map_err(|e| match e {
                StoreError::UnknownDevice(id) => ModelError::UnknownDevice(id),
                other => other.into(),
            })?;
        tracing::info!(device_id, session = rec.id, code = %v.masked(), "voucher redeemed");
        self.emit(SessionEvent::SessionCreated {
            device_id,
            session_id: rec.id,
        });
        let session = self.session(rec.id)?;
        Ok((session, v))
    }

    /// Records in the code's history that the session `device_id` bought with
    /// it moved from MAC `from` to `to` with its device (see the gateway's
    /// rekey), and announces it ([`SessionEvent::VoucherMoved`]).
    pub fn record_voucher_move(
        &self,
        typed: &str,
        device_id: DeviceId,
        from: MacAddr,
        to: MacAddr,
    ) -> Result<Voucher, ModelError> {
        let _guard = self.voucher_lock.lock().map_err(|_| ModelError::Poisoned)?;
        let mut v = self.voucher(typed)?;
        let now = self.clock().now_secs();
        let r = v
            .redemptions
            .iter_mut()
            .rev()
            .find(|r| r.device_id == device_id)
            .ok_or(ModelError::UnknownDevice(device_id))?;
        r.moves.push(VoucherMove { from, to, at: now });
        let session_id = r.session_id;
        self.store().save_voucher(&v)?;
        tracing::info!(device_id, session = session_id, code = %v.masked(), %from, %to, "voucher session moved to a new MAC");
        self.emit(SessionEvent::VoucherMoved {
            device_id,
            session_id,
            code: v.masked(),
            old_mac: from,
            new_mac: to,
        });
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voucher(max_devices: u32) -> Voucher {
        Voucher {
            code: "ABCDEFGHJK".into(),
            batch: "b".into(),
            price: None,
            template: VoucherTemplate {
                session_type: SessionType::Time,
                time_secs: 60,
                data_bytes: 0,
                exp_days: None,
                down_mbits: 0,
                up_mbits: 0,
                use_global_speed: true,
            },
            created_at: 0,
            valid_until: Some(100),
            max_devices,
            redemptions: vec![],
            revoked_at: None,
            group: 5,
            sale: None,
        }
    }

    fn request() -> NewVouchers {
        NewVouchers {
            count: 2,
            batch: "b".into(),
            session_type: 0,
            time_secs: 3600,
            ..NewVouchers::default()
        }
    }

    #[test]
    fn a_batch_request_gets_the_defaults_and_is_held_to_the_api_ranges() {
        let b = NewBatch::try_from(request()).unwrap();
        assert_eq!(
            (b.max_devices, b.code_len, b.group),
            (1, DEFAULT_CODE_LEN, DEFAULT_GROUP)
        );
        b.check(0).unwrap();
        let out_of_range: [fn(&mut NewVouchers); 6] = [
            |v| v.time_secs = crate::limits::MAX_SECS + 1,
            |v| v.up_mbits = crate::limits::MAX_MBITS + 1,
            |v| v.down_mbits = -1,
            |v| v.exp_days = Some(crate::limits::MAX_EXP_DAYS + 1),
            |v| v.valid_until = Some(crate::limits::MAX_TIMESTAMP + 1),
            |v| v.data_mb = -1.0,
        ];
        for (i, spoil) in out_of_range.iter().enumerate() {
            let mut v = request();
            spoil(&mut v);
            let e = NewBatch::try_from(v).and_then(|b| b.check(0)).unwrap_err();
            assert!(
                matches!(e, ModelError::OutOfRange { .. }),
                "case {i}: {e:?}"
            );
        }
        let mut v = request();
        v.session_type = 1;
        v.data_mb = crate::limits::MAX_MB;
        NewBatch::try_from(v).unwrap().check(0).unwrap();
    }

    fn redeemed(v: &mut Voucher, device_id: DeviceId) {
        v.redemptions.push(Redemption {
            device_id,
            mac: MacAddr::new([2, 0, 0, 0, 0, device_id as u8]),
            session_id: device_id as u64,
            at: 1,
            moves: Vec::new(),
        });
    }

    #[test]
    fn codes_use_only_the_unambiguous_alphabet_and_the_asked_length() {
        for len in [MIN_CODE_LEN, 10, MAX_CODE_LEN] {
            let c = generate_code(len).unwrap();
            assert_eq!(c.len(), len);
            assert!(c.bytes().all(|b| CODE_ALPHABET.contains(&b)), "{c}");
        }
        for bad in b"01OIL" {
            assert!(!CODE_ALPHABET.contains(bad));
        }
    }

    #[test]
    fn every_symbol_is_drawn_about_equally_often() {
        let mut counts = [0u32; 31];
        let code = generate_code(31 * 2000).unwrap();
        for b in code.bytes() {
            counts[CODE_ALPHABET.iter().position(|&a| a == b).unwrap()] += 1;
        }
        // 2,000 expected each; 5 standard deviations is about ±220.
        for (i, c) in counts.iter().enumerate() {
            assert!((1750..2250).contains(c), "symbol {i} drawn {c} times");
        }
    }

    #[test]
    fn typed_codes_fold_case_spaces_and_dashes_and_refuse_strangers() {
        assert_eq!(
            normalize_code(" abcde-fghjk ").as_deref(),
            Some("ABCDEFGHJK")
        );
        assert_eq!(normalize_code("ABC0"), None);
        assert_eq!(normalize_code("ABCÉ"), None);
        assert_eq!(normalize_code(" - "), None);
        assert_eq!(normalize_code(&"A".repeat(MAX_CODE_LEN + 1)), None);
    }

    #[test]
    fn codes_are_grouped_for_print_and_masked_for_logs() {
        assert_eq!(group_code("ABCDEFGHJK", 5), "ABCDE-FGHJK");
        assert_eq!(group_code("ABCDEFGHJK", 4), "ABCD-EFGH-JK");
        assert_eq!(mask_code("ABCDEFGHJK"), "******GHJK");
        assert_eq!(mask_code("ABC"), "ABC");
    }

    #[test]
    fn a_single_device_code_is_locked_to_its_device_while_its_session_lasts() {
        let mut v = voucher(1);
        assert_eq!(v.state(0, false), VoucherState::Unused);
        assert_eq!(v.check_redeem(1, 0, |_| false), Ok(()));
        redeemed(&mut v, 1);
        assert_eq!(v.state(0, true), VoucherState::Active);
        assert_eq!(
            v.check_redeem(2, 0, |_| true),
            Err(RedeemRefusal::LockedToOtherDevice)
        );
        assert_eq!(
            v.check_redeem(1, 0, |_| true),
            Err(RedeemRefusal::AlreadyRedeemed { session_id: 1 })
        );
        assert_eq!(v.state(0, false), VoucherState::UsedUp);
        assert_eq!(v.check_redeem(2, 0, |_| false), Err(RedeemRefusal::UsedUp));
        // A used-up code stays used up after its last day.
        assert_eq!(v.state(1000, false), VoucherState::UsedUp);
    }

    #[test]
    fn a_used_up_code_typed_again_on_its_own_device_is_used_up() {
        let mut v = voucher(1);
        redeemed(&mut v, 1);
        assert_eq!(v.check_redeem(1, 0, |_| false), Err(RedeemRefusal::UsedUp));
        // Of a shared code, the device's own session counts: another's
        // running session does not make this one active.
        let mut w = voucher(2);
        redeemed(&mut w, 1);
        redeemed(&mut w, 2);
        assert_eq!(w.check_redeem(1, 0, |s| s == 2), Err(RedeemRefusal::UsedUp));
        assert_eq!(
            w.check_redeem(2, 0, |s| s == 2),
            Err(RedeemRefusal::AlreadyRedeemed { session_id: 2 })
        );
    }

    #[test]
    fn a_shared_code_admits_each_of_its_devices_once() {
        let mut v = voucher(2);
        redeemed(&mut v, 1);
        assert_eq!(v.check_redeem(2, 0, |_| true), Ok(()));
        redeemed(&mut v, 2);
        assert_eq!(
            v.check_redeem(3, 0, |_| true),
            Err(RedeemRefusal::LockedToOtherDevice)
        );
        // Partly used, then its last day passed: expired.
        let mut w = voucher(2);
        redeemed(&mut w, 1);
        assert_eq!(w.state(1000, false), VoucherState::Expired);
        assert_eq!(
            w.check_redeem(2, 1000, |_| false),
            Err(RedeemRefusal::Expired)
        );
    }

    #[test]
    fn revoked_and_expired_codes_are_refused() {
        let mut v = voucher(1);
        assert_eq!(v.state(101, false), VoucherState::Expired);
        assert_eq!(
            v.check_redeem(1, 101, |_| false),
            Err(RedeemRefusal::Expired)
        );
        v.revoked_at = Some(5);
        assert_eq!(v.state(0, false), VoucherState::Revoked);
        assert_eq!(v.check_redeem(1, 0, |_| false), Err(RedeemRefusal::Revoked));
    }
}
