//! The voucher desk: redeeming a code for a client, with failed tries limited per
//! client and counted for `/metrics`.
//!
//! The manager decides whether a code may be redeemed and writes the session with
//! the redemption ([`SessionsMgr::redeem_voucher`]); the gateway then connects the
//! device. Both the control API and the portal page redeem through
//! [`Gateway::redeem`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use session_model::{ClientSession, DeviceId, ModelError, RedeemRefusal, Voucher};

use crate::error::AgentError;
use crate::gateway::Gateway;

/// Failed redemptions a client may make per [`RETRY_WINDOW`].
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

/// Failed tries per client, and what redemptions came to.
#[derive(Debug, Default)]
pub struct VoucherDesk {
    failures: Mutex<HashMap<DeviceId, VecDeque<Instant>>>,
    redeemed: AtomicU64,
    refused: [AtomicU64; REFUSALS.len()],
    limited: AtomicU64,
}

/// What the desk counted, for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeskCounts {
    pub redeemed: u64,
    /// By [`REFUSALS`].
    pub refused: Vec<(&'static str, u64)>,
    /// Tries answered "too many" without being looked at.
    pub limited: u64,
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
}

impl VoucherDesk {
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

    fn failed(&self, device: DeviceId, refusal: &RedeemRefusal, now: Instant) {
        if let Some(i) = REFUSALS.iter().position(|c| *c == refusal.code()) {
            self.refused[i].fetch_add(1, Ordering::Relaxed);
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
        }
    }
}

impl Gateway {
    /// Redeems `code` for `device_id` and connects the device if it is not
    /// connected (a connected device's new session waits behind its running one).
    /// A device with [`MAX_FAILED_TRIES`] refused codes in the last
    /// [`RETRY_WINDOW`] is answered [`RedeemError::TooManyTries`] without a look
    /// at the code.
    pub async fn redeem(&self, device_id: DeviceId, code: &str) -> Result<Redeemed, RedeemError> {
        let desk = self.vouchers();
        let now = Instant::now();
        if let Err(retry_after) = desk.admit(device_id, now) {
            desk.limited.fetch_add(1, Ordering::Relaxed);
            return Err(RedeemError::TooManyTries { retry_after });
        }
        let (session, voucher) = match self.sessions().redeem_voucher(device_id, code) {
            Ok(r) => r,
            Err(ModelError::Redeem(RedeemRefusal::AlreadyRedeemed { session_id }))
                if self.may_resume_redeemed(device_id, session_id)? =>
            {
                // The same device with the same code again while offline with
                // that session still to use: a retry after the device could not
                // be put online, or a page sent twice. Nothing is bought twice:
                // the session it bought is connected.
                let voucher = self.sessions().voucher(code).map_err(AgentError::from)?;
                let session = self.connect(device_id, "voucher redeemed").await?;
                tracing::info!(device_id, session = session_id, code = %voucher.masked(), "voucher redeemed again by its device: its session connected");
                return Ok(Redeemed {
                    session,
                    voucher,
                    queued: false,
                });
            }
            Err(ModelError::Redeem(refusal)) => {
                desk.failed(device_id, &refusal, now);
                return Err(RedeemError::Refused(refusal));
            }
            Err(e) => return Err(AgentError::from(e).into()),
        };
        desk.redeemed.fetch_add(1, Ordering::Relaxed);
        let queued = self
            .sessions()
            .is_connected(device_id)
            .map_err(AgentError::from)?;
        if !queued {
            self.connect(device_id, "voucher redeemed").await?;
        }
        Ok(Redeemed {
            session,
            voucher,
            queued,
        })
    }

    /// Whether `device_id`, which redeemed the code of `session_id` before, is
    /// offline while that session can still run.
    fn may_resume_redeemed(
        &self,
        device_id: DeviceId,
        session_id: session_model::SessionId,
    ) -> Result<bool, AgentError> {
        let mgr = self.sessions();
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

    #[test]
    fn a_client_gets_five_wrong_tries_a_minute_and_others_are_not_held_back() {
        let desk = VoucherDesk::default();
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
}
