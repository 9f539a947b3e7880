//! The voucher desk: redeeming a code for a client, with failed tries limited per
//! client and counted for `/metrics`.
//!
//! The manager decides whether a code may be redeemed and writes the session with
//! the redemption ([`SessionsMgr::redeem_voucher`]); the gateway then connects the
//! device. Both the control API and the portal page redeem through
//! [`VoucherDesk::redeem`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use session_model::{ClientSession, DeviceId, MacAddr, ModelError, RedeemRefusal, Voucher};

use crate::error::AgentError;
use crate::gateway::Gateway;

/// Codes that do not exist a client may try per [`RETRY_WINDOW`] (other
/// refusals, of codes that exist, are not guesses and do not count).
pub const MAX_FAILED_TRIES: usize = 5;
/// The window of [`MAX_FAILED_TRIES`].
pub const RETRY_WINDOW: Duration = Duration::from_secs(60);

/// The refusals in the order of their `/metrics` series.
pub const REFUSALS: [&str; 6] = [
    "unknown_voucher",
    "voucher_revoked",
    "voucher_expired",
    "voucher_used_up",
    "voucher_locked",
    "voucher_already_redeemed",
];

/// Where codes are redeemed for clients, over the gateway that connects them.
pub struct VoucherDesk {
    gw: Arc<Gateway>,
    tally: Tally,
}

/// Failed tries per client, and what redemptions came to.
#[derive(Debug, Default)]
struct Tally {
    failures: Mutex<HashMap<DeviceId, VecDeque<Instant>>>,
    redeemed: AtomicU64,
    refused: [AtomicU64; REFUSALS.len()],
    limited: AtomicU64,
    moved: AtomicU64,
    /// One move of a code's session to a new MAC at a time: each sees where
    /// the one before left the device.
    moving: tokio::sync::Mutex<()>,
}

/// What the desk counted, for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeskCounts {
    pub redeemed: u64,
    /// By [`REFUSALS`].
    pub refused: Vec<(&'static str, u64)>,
    /// Tries answered "too many" without being looked at.
    pub limited: u64,
    /// Codes whose session moved to a new MAC with its device.
    pub moved: u64,
}

/// Why a redemption did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    #[error("too many wrong codes from this device: try again in {} s", retry_after.as_secs().max(1))]
    TooManyTries { retry_after: Duration },
    #[error(transparent)]
    Refused(RedeemRefusal),
    #[error(transparent)]
    Agent(#[from] AgentError),
}

/// A redeemed code: the session it bought and the voucher. The device is connected.
#[derive(Debug)]
pub struct Redeemed {
    pub session: ClientSession,
    pub voucher: Voucher,
    /// The device was connected already: the new session waits behind its running one.
    pub queued: bool,
    /// The code's session was not bought now but moved here from the device
    /// that redeemed it, at this MAC (see [`VoucherDesk::redeem`]).
    pub moved_from: Option<MacAddr>,
}

impl VoucherDesk {
    /// A desk over `gw`, which connects the clients whose codes it redeems.
    pub fn new(gw: Arc<Gateway>) -> Self {
        Self {
            gw,
            tally: Tally::default(),
        }
    }

    /// What the desk counted, for `/metrics`.
    pub fn counts(&self) -> DeskCounts {
        self.tally.counts()
    }

    /// The gateway that connects the desk's customers.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gw
    }

    /// Answered [`RedeemError::TooManyTries`] when `device_id` used up its
    /// wrong tries (counted as held back): before [`VoucherDesk::redeem`]
    /// looks at a code, and before a code checked elsewhere (at the RADIUS
    /// server) is sent.
    pub fn admit(&self, device_id: DeviceId) -> Result<(), RedeemError> {
        self.tally
            .admit(device_id, Instant::now())
            .map_err(|retry_after| {
                self.tally.limited.fetch_add(1, Ordering::Relaxed);
                RedeemError::TooManyTries { retry_after }
            })
    }

    /// A code checked elsewhere was refused: it counts towards the device's
    /// limit as an unknown code does.
    pub fn refused_elsewhere(&self, device_id: DeviceId) {
        self.tally
            .failed(device_id, &RedeemRefusal::Unknown, Instant::now());
    }

    /// A code checked elsewhere was accepted.
    pub fn redeemed_elsewhere(&self) {
        self.tally.redeemed.fetch_add(1, Ordering::Relaxed);
    }
}

impl Tally {
    /// `Err(retry after)` when `device` used up its failed tries.
    fn admit(&self, device: DeviceId, now: Instant) -> Result<(), Duration> {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let Some(q) = f.get_mut(&device) else {
            return Ok(());
        };
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= RETRY_WINDOW)
        {
            q.pop_front();
        }
        if q.is_empty() {
            f.remove(&device);
            return Ok(());
        }
        if q.len() >= MAX_FAILED_TRIES {
            let oldest = q.front().copied().unwrap_or(now);
            return Err(RETRY_WINDOW.saturating_sub(now.duration_since(oldest)));
        }
        Ok(())
    }

    /// Counts a refusal; a code that does not exist also counts towards the
    /// client's limit. A code that exists was not guessed: a customer tapping
    /// Connect again, or typing a code that is spent, is not held back.
    fn failed(&self, device: DeviceId, refusal: &RedeemRefusal, now: Instant) {
        if let Some(i) = REFUSALS.iter().position(|c| *c == refusal.code()) {
            self.refused[i].fetch_add(1, Ordering::Relaxed);
        }
        if *refusal != RedeemRefusal::Unknown {
            return;
        }
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: a client's queue never holds more than the limit, and the map
        // forgets a client once its window passed (at its next try) or on a sweep
        // when it grows large.
        if f.len() > 65_536 {
            f.retain(|_, q| {
                q.back()
                    .is_some_and(|t| now.duration_since(*t) < RETRY_WINDOW)
            });
        }
        let q = f.entry(device).or_default();
        q.push_back(now);
        while q.len() > MAX_FAILED_TRIES {
            q.pop_front();
        }
    }

    pub fn counts(&self) -> DeskCounts {
        DeskCounts {
            redeemed: self.redeemed.load(Ordering::Relaxed),
            refused: REFUSALS
                .iter()
                .zip(&self.refused)
                .map(|(c, n)| (*c, n.load(Ordering::Relaxed)))
                .collect(),
            limited: self.limited.load(Ordering::Relaxed),
            moved: self.moved.load(Ordering::Relaxed),
        }
    }
}

impl VoucherDesk {
    /// Redeems `code` for `device_id` and connects the device if it is not
    /// connected (a connected device's new session waits behind its running one).
    /// A code in use on another device whose MAC has been silent for
    /// [`GatewayConfig::voucher_move_after`](crate::gateway::GatewayConfig)
    /// moves that device, with its sessions, to this device's MAC (a phone
    /// that changed its Wi-Fi address: see [`Gateway::rekey`]) and connects it.
    /// A device that tried [`MAX_FAILED_TRIES`] codes that do not exist in the
    /// last [`RETRY_WINDOW`] is answered [`RedeemError::TooManyTries`] without
    /// a look at the code.
    pub async fn redeem(&self, device_id: DeviceId, code: &str) -> Result<Redeemed, RedeemError> {
        let desk = &self.tally;
        let now = Instant::now();
        self.admit(device_id)?;
        let (session, voucher) = match self.gw.sessions().redeem_voucher(device_id, code) {
            Ok(r) => r,
            Err(ModelError::Redeem(RedeemRefusal::AlreadyRedeemed { session_id }))
                if self.may_resume_redeemed(device_id, session_id)? =>
            {
                // The same device with the same code again while offline with
                // that session still to use: a retry after the device could not
                // be put online, or a page sent twice. Nothing is bought twice:
                // the session it bought is connected.
                let voucher = self.gw.sessions().voucher(code).map_err(AgentError::from)?;
                let session = self.gw.connect(device_id, "voucher redeemed").await?;
                tracing::info!(device_id, session = session_id, code = %voucher.masked(), "voucher redeemed again by its device: its session connected");
                return Ok(Redeemed {
                    session,
                    voucher,
                    queued: false,
                    moved_from: None,
                });
            }
            Err(ModelError::Redeem(RedeemRefusal::LockedToOtherDevice)) => {
                if let Some(moved) = self.move_redeemed(device_id, code).await? {
                    return Ok(moved);
                }
                let refusal = RedeemRefusal::LockedToOtherDevice;
                desk.failed(device_id, &refusal, now);
                return Err(RedeemError::Refused(refusal));
            }
            Err(ModelError::Redeem(refusal)) => {
                desk.failed(device_id, &refusal, now);
                return Err(RedeemError::Refused(refusal));
            }
            Err(e) => return Err(AgentError::from(e).into()),
        };
        desk.redeemed.fetch_add(1, Ordering::Relaxed);
        let queued = self
            .gw
            .sessions()
            .is_connected(device_id)
            .map_err(AgentError::from)?;
        if !queued {
            self.gw.connect(device_id, "voucher redeemed").await?;
        }
        Ok(Redeemed {
            session,
            voucher,
            queued,
            moved_from: None,
        })
    }

    /// Moves the device that redeemed `code`, with its sessions, to the MAC of
    /// `device_id` (absorbing that MAC's device, which must have no sessions)
    /// if the code's session there can still run and its MAC has been silent
    /// for the configured time; records the move in the code's history and
    /// connects the device. `None` when no redemption may move.
    async fn move_redeemed(
        &self,
        device_id: DeviceId,
        code: &str,
    ) -> Result<Option<Redeemed>, AgentError> {
        let _one_at_a_time = self.tally.moving.lock().await;
        let mgr = self.gw.sessions();
        let after = self.gw.config().voucher_move_after;
        let to = mgr.device(device_id)?.mac;
        let voucher = mgr.voucher(code)?;
        let now = mgr.clock().now_secs();
        let mut from = None;
        for r in voucher.redemptions.iter().rev() {
            if r.device_id == device_id {
                continue;
            }
            let live = match mgr.session(r.session_id) {
                Ok(s) => s.device_id() == r.device_id && s.data().is_available(now),
                Err(ModelError::UnknownSession(_)) => false,
                Err(e) => return Err(e.into()),
            };
            let old = match mgr.device(r.device_id) {
                Ok(d) if live => d,
                Ok(_) | Err(ModelError::UnknownDevice(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            match self.gw.silent_for(old.mac)? {
                Some(silent) if silent >= after => {
                    from = Some((old, r.session_id));
                    break;
                }
                Some(silent) => {
                    tracing::info!(device_id, holder = old.id, mac = %old.mac, silent_secs = silent.as_secs(), code = %voucher.masked(), "voucher not moved: the device using it was heard from too recently");
                }
                None => {
                    tracing::info!(device_id, holder = old.id, mac = %old.mac, code = %voucher.masked(), "voucher not moved: the device using it is not in the client table");
                }
            }
        }
        let Some((old, session_id)) = from else {
            return Ok(None);
        };
        match self.gw.rekey(old.id, to).await {
            Ok(_) => {}
            Err(AgentError::MacHasSessions { .. }) => {
                tracing::info!(device_id, holder = old.id, code = %voucher.masked(), "voucher not moved: this MAC's device has sessions of its own");
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        let voucher = match mgr.record_voucher_move(code, old.id, old.mac, to) {
            Ok(v) => v,
            Err(e) => {
                // The session moved; only its note in the code's history is missing.
                tracing::warn!(device_id = old.id, code = %voucher.masked(), "the voucher's move to {to} is not in its history: {e}");
                voucher
            }
        };
        self.tally.moved.fetch_add(1, Ordering::Relaxed);
        if !mgr.is_connected(old.id)? {
            self.gw.connect(old.id, "voucher moved").await?;
        }
        let session = mgr.session(session_id)?;
        Ok(Some(Redeemed {
            session,
            voucher,
            queued: false,
            moved_from: Some(old.mac),
        }))
    }

    /// Whether `device_id`, which redeemed the code of `session_id` before, is
    /// offline while that session can still run.
    fn may_resume_redeemed(
        &self,
        device_id: DeviceId,
        session_id: session_model::SessionId,
    ) -> Result<bool, AgentError> {
        let mgr = self.gw.sessions();
        if mgr.is_connected(device_id)? {
            return Ok(false);
        }
        let session = match mgr.session(session_id) {
            Ok(s) => s,
            Err(ModelError::UnknownSession(_)) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        Ok(session.device_id() == device_id && session.data().is_available(mgr.clock().now_secs()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::MemDatapath;
    use crate::gateway::GatewayConfig;
    use session_model::{
        MemoryStore, NewBatch, SessionType, SessionsMgr, SystemClock, VoucherTemplate,
    };

    #[test]
    fn a_client_gets_five_wrong_tries_a_minute_and_others_are_not_held_back() {
        let desk = Tally::default();
        let t0 = Instant::now();
        for i in 0..MAX_FAILED_TRIES {
            assert_eq!(desk.admit(1, t0), Ok(()), "try {i}");
            desk.failed(1, &RedeemRefusal::Unknown, t0);
        }
        let wait = desk.admit(1, t0 + Duration::from_secs(20)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(40));
        assert_eq!(desk.admit(2, t0), Ok(()));
        assert_eq!(desk.admit(1, t0 + RETRY_WINDOW), Ok(()));
        let c = desk.counts();
        assert_eq!(c.refused[0], ("unknown_voucher", 5));
        assert!(c.refused[1..].iter().all(|(_, n)| *n == 0));
    }

    /// A gateway over the in-memory datapath and store, moving codes after
    /// `after` of silence, with a one-device code for one hour.
    fn desk(after: Duration) -> (VoucherDesk, Arc<MemDatapath>, String) {
        let dp = Arc::new(MemDatapath::new(1));
        let mgr = Arc::new(SessionsMgr::new(
            Arc::new(MemoryStore::new()),
            Arc::new(SystemClock),
        ));
        let cfg = GatewayConfig {
            voucher_move_after: after,
            ..GatewayConfig::default()
        };
        let gw = Gateway::with_datapath(mgr, dp.clone(), cfg);
        let made = gw
            .sessions()
            .create_vouchers(&NewBatch {
                batch: "b".into(),
                price: None,
                count: 1,
                template: VoucherTemplate {
                    session_type: SessionType::Time,
                    time_secs: 3600,
                    data_bytes: 0,
                    exp_days: None,
                    down_mbits: 0,
                    up_mbits: 0,
                    use_global_speed: true,
                },
                valid_until: None,
                max_devices: 1,
                code_len: 10,
                group: 5,
                sale: None,
            })
            .unwrap();
        (VoucherDesk::new(gw), dp, made[0].code.clone())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_code_moves_to_a_new_mac_only_after_the_old_one_fell_silent() {
        let after = Duration::from_millis(600);
        let (desk, dp, code) = desk(after);
        let gw = desk.gw.clone();
        let (old, new) = (
            MacAddr::new([2, 0, 0, 0, 0, 1]),
            MacAddr::new([6, 0, 0, 0, 0, 2]),
        );
        dp.send(&old, 100);
        dp.send(&new, 100);
        let a = gw.sessions().create_device(old, None, None).unwrap().id;
        let b = gw.sessions().create_device(new, None, None).unwrap().id;
        let bought = desk.redeem(a, &code).await.unwrap().session.id();
        // The old MAC is heard from: refused, however long the code waits.
        for _ in 0..4 {
            assert!(matches!(
                desk.redeem(b, &code).await,
                Err(RedeemError::Refused(RedeemRefusal::LockedToOtherDevice))
            ));
            dp.send(&old, 100);
            gw.poll().await.unwrap();
            tokio::time::sleep(after / 2).await;
        }
        // Silent now.
        tokio::time::sleep(after).await;
        gw.poll().await.unwrap();
        let r = desk.redeem(b, &code).await.unwrap();
        assert_eq!((r.session.id(), r.moved_from), (bought, Some(old)));
        let mgr = gw.sessions();
        assert_eq!(mgr.device_by_mac(new).unwrap().id, a);
        assert!(mgr.device_by_mac(old).is_err());
        assert!(mgr.is_connected(a).unwrap());
        assert!(dp.allowed(&new) && !dp.allowed(&old));
        let v = mgr.voucher(&code).unwrap();
        assert_eq!(v.redemptions.len(), 1);
        assert_eq!(
            (v.redemptions[0].moves[0].from, v.redemptions[0].moves[0].to),
            (old, new)
        );
        assert_eq!(desk.counts().moved, 1);
    }

    #[test]
    fn refusals_of_codes_that_exist_are_counted_but_do_not_lock_a_client_out() {
        let desk = Tally::default();
        let t0 = Instant::now();
        for _ in 0..3 * MAX_FAILED_TRIES {
            desk.failed(1, &RedeemRefusal::AlreadyRedeemed { session_id: 7 }, t0);
            desk.failed(1, &RedeemRefusal::LockedToOtherDevice, t0);
            desk.failed(1, &RedeemRefusal::UsedUp, t0);
        }
        assert_eq!(desk.admit(1, t0), Ok(()));
        let c = desk.counts();
        assert_eq!(c.refused[3], ("voucher_used_up", 15));
        assert_eq!(c.refused[4], ("voucher_locked", 15));
        assert_eq!(c.refused[5], ("voucher_already_redeemed", 15));
    }
}
