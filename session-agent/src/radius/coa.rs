//! Change of authorization (RFC 5176): Disconnect-Request and CoA-Request
//! from the configured clients only, checked with the shared secret and a
//! Message-Authenticator, for the open RADIUS sessions named by
//! Acct-Session-Id, Calling-Station-Id or User-Name (all that are given must
//! match). A request whose attributes do not check out (an attribute the
//! agent reads of the wrong length, given twice, or with a value it cannot
//! take) is answered with a NAK, Invalid-Request or Invalid-Attribute-Value,
//! and changes nothing. Anything else is dropped unanswered and logged.

use std::net::SocketAddr;
use std::sync::Arc;

use radius::core::{avp::AVP, code::Code, packet::Packet, rfc3576, rfc5176};
use tokio::net::UdpSocket;
use tracing::{info, warn};

use session_model::SessionType;

use super::{Authorization, Radius};
use crate::gateway::Gateway;
use session_radius::acct::{Cause, OpenSession};
use session_radius::codec::{self, attr, Fault, InvalidAttribute};

/// Error-Cause values (RFC 5176 3.6).
const MISSING_ATTRIBUTE: u32 = rfc3576::ERROR_CAUSE_MISSING_ATTRIBUTE;
const NAS_MISMATCH: u32 = rfc3576::ERROR_CAUSE_NAS_IDENTIFICATION_MISMATCH;
const INVALID_REQUEST: u32 = rfc3576::ERROR_CAUSE_INVALID_REQUEST;
const INVALID_ATTRIBUTE_VALUE: u32 = rfc5176::ERROR_CAUSE_INVALID_ATTRIBUTE_VALUE;
const NO_SESSION: u32 = rfc3576::ERROR_CAUSE_SESSION_CONTEXT_NOT_FOUND;
const RESOURCES_UNAVAILABLE: u32 = rfc3576::ERROR_CAUSE_RESOURCES_UNAVAILABLE;

/// What a request names its sessions and this NAS by (RFC 5176 3: each at
/// most once, text).
struct Names {
    nas: Option<String>,
    acct_session_id: Option<String>,
    calling: Option<String>,
    user: Option<String>,
}

impl Names {
    fn read(p: &Packet) -> Result<Self, InvalidAttribute> {
        let one = |typ| codec::at_most_one(codec::texts(p, typ)?, codec::name(typ));
        Ok(Names {
            nas: one(attr::NAS_IDENTIFIER)?,
            acct_session_id: one(attr::ACCT_SESSION_ID)?,
            calling: one(attr::CALLING_STATION_ID)?,
            user: one(attr::USER_NAME)?,
        })
    }
}

/// `aa-bb-..`, `AA:BB:..` and `aabb..` name the same station.
fn station(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_hexdigit())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

impl Radius {
    /// Answers Disconnect and CoA requests on `sock` for as long as the agent runs.
    pub async fn serve_coa(self: Arc<Self>, gw: Arc<Gateway>, sock: UdpSocket) {
        let mut buf = vec![0u8; 4096];
        loop {
            let (len, from) = match sock.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    warn!("RADIUS CoA listener: {e}");
                    continue;
                }
            };
            if let Some(answer) = self.coa_answer(&gw, &buf[..len], from).await {
                if let Err(e) = sock.send_to(&answer, from).await {
                    warn!(%from, "RADIUS CoA answer not sent: {e}");
                }
            }
        }
    }

    /// The answer to one request, or `None` for one that is dropped.
    pub async fn coa_answer(
        &self,
        gw: &Gateway,
        bytes: &[u8],
        from: SocketAddr,
    ) -> Option<Vec<u8>> {
        if !self.opts.coa_clients.contains(&from.ip()) {
            warn!(%from, "RADIUS CoA request from an address that is not a configured client: dropped");
            self.stats
                .coa_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return None;
        }
        let request = match codec::open_request(bytes, &self.opts.secret.0) {
            Ok(p) => p,
            Err(e) => {
                warn!(%from, "RADIUS CoA request dropped: {e}");
                self.stats
                    .coa_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return None;
            }
        };
        let (ack, nak) = match request.get_code() {
            Code::DisconnectRequest => (Code::DisconnectACK, Code::DisconnectNAK),
            Code::CoARequest => (Code::CoAACK, Code::CoANAK),
            other => {
                warn!(%from, "RADIUS {} on the CoA port: dropped", other.string());
                return None;
            }
        };
        let answer = |code: Code, cause: Option<u32>| {
            let mut p = request.make_response_packet(code);
            if let Some(c) = cause {
                p.add(AVP::from_u32(attr::ERROR_CAUSE as _, c));
            }
            codec::encode_signed(p).ok()
        };
        // Every attribute the agent reads is checked before anything is
        // done: a malformed one refuses the whole request.
        let checked = Names::read(&request)
            .and_then(|names| Ok((names, Authorization::read(&request)?)))
            .map_err(|bad| {
                warn!(
                    %from,
                    attribute = bad.name,
                    "RADIUS {} refused: its {bad}",
                    request.get_code().string()
                );
                match bad.fault {
                    Fault::Length => INVALID_REQUEST,
                    Fault::Value => INVALID_ATTRIBUTE_VALUE,
                }
            });
        let outcome = match checked.and_then(|(names, a)| Ok((self.coa_sessions(&names)?, a))) {
            Err(cause) => Err(cause),
            Ok((sessions, _)) if ack == Code::DisconnectACK => self.disconnect(gw, &sessions).await,
            Ok((sessions, a)) => self.change(gw, a, &sessions).await,
        };
        match outcome {
            Ok(n) => {
                self.stats
                    .coa_acks
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                info!(%from, sessions = n, "RADIUS {} done", request.get_code().string());
                answer(ack, None)
            }
            Err(cause) => {
                self.stats
                    .coa_naks
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                info!(%from, error_cause = cause, "RADIUS {} refused", request.get_code().string());
                answer(nak, Some(cause))
            }
        }
    }

    /// The open sessions a request names, or its Error-Cause.
    fn coa_sessions(&self, names: &Names) -> Result<Vec<OpenSession>, u32> {
        if let Some(nas) = &names.nas {
            if *nas != self.opts.nas_identifier {
                return Err(NAS_MISMATCH);
            }
        }
        let acct_id = names.acct_session_id.as_ref();
        let calling = names.calling.as_deref().map(station);
        let user = names.user.as_ref();
        if acct_id.is_none() && calling.is_none() && user.is_none() {
            return Err(MISSING_ATTRIBUTE);
        }
        let open = self
            .book
            .open_sessions()
            .map_err(|_| RESOURCES_UNAVAILABLE)?;
        let found: Vec<OpenSession> = open
            .into_iter()
            .filter(|s| {
                acct_id.is_none_or(|a| *a == s.acct_session_id)
                    && calling.as_ref().is_none_or(|c| *c == station(&s.calling))
                    && user.is_none_or(|u| *u == s.user_name)
            })
            .collect();
        if found.is_empty() {
            return Err(NO_SESSION);
        }
        Ok(found)
    }

    async fn disconnect(&self, gw: &Gateway, sessions: &[OpenSession]) -> Result<usize, u32> {
        for s in sessions {
            self.causes
                .lock()
                .unwrap()
                .insert(s.session_id, Cause::AdminReset);
            if let Err(e) = gw
                .disconnect(s.device_id, "disconnected by the RADIUS server")
                .await
            {
                warn!(device_id = s.device_id, "RADIUS Disconnect-Request: {e}");
                return Err(RESOURCES_UNAVAILABLE);
            }
        }
        self.wake.notify_one();
        Ok(sessions.len())
    }

    /// A CoA-Request: the attributes of an Accept change the running sessions.
    async fn change(
        &self,
        gw: &Gateway,
        a: Authorization,
        sessions: &[OpenSession],
    ) -> Result<usize, u32> {
        for n in &a.notes {
            warn!("RADIUS CoA-Request: {n}");
        }
        if a.session_timeout.is_none()
            && a.total_octets.is_none()
            && a.down_bps.is_none()
            && a.up_bps.is_none()
            && a.idle_timeout.is_none()
            && a.interim.is_none()
        {
            return Err(INVALID_REQUEST);
        }
        let mbits = |bps: u64| bps.div_ceil(1_000_000).min(100_000) as i32;
        for s in sessions {
            let a = a.clone();
            let changed = gw
                .update_session(s.session_id, move |cs| {
                    let time = cs.session_type().uses_time() || a.session_timeout.is_some();
                    let data = cs.session_type().uses_data() || a.total_octets.is_some();
                    if let Some(t) = a.session_timeout {
                        cs.set_time_secs(t);
                    }
                    if let Some(d) = a.total_octets {
                        cs.set_data_bytes(d);
                    }
                    cs.set_session_type(match (time, data) {
                        (true, true) => SessionType::TimeOrData,
                        (false, true) => SessionType::Data,
                        _ => SessionType::Time,
                    });
                    if a.down_bps.is_some() || a.up_bps.is_some() {
                        let global = cs.use_global_speed();
                        let keep = |v: i32| if global { 0 } else { v };
                        let down = a.down_bps.map(mbits).unwrap_or(keep(cs.down_mbits()));
                        let up = a.up_bps.map(mbits).unwrap_or(keep(cs.up_mbits()));
                        cs.set_down_mbits(down)?;
                        cs.set_up_mbits(up)?;
                        cs.set_use_global_speed(false);
                    }
                    Ok(())
                })
                .await;
            if let Err(e) = changed {
                warn!(session = s.session_id, "RADIUS CoA-Request: {e}");
                return Err(RESOURCES_UNAVAILABLE);
            }
            if let Some(idle) = a.idle_timeout {
                let mut map = self.idle.lock().unwrap();
                if idle == 0 {
                    map.remove(&s.session_id);
                } else {
                    map.insert(s.session_id, idle);
                }
            }
            if let Some(interim) = a.interim {
                if let Ok(Some(mut open)) = self.book.open_session(s.session_id) {
                    open.interim_secs = interim.max(10);
                    open.next_interim = super::now_secs(gw) + open.interim_secs as i64;
                    let _ = self.book.record(Some(&open), None, None);
                }
            }
        }
        self.wake.notify_one();
        Ok(sessions.len())
    }
}

#[cfg(test)]
mod tests {
    use super::station;

    #[test]
    fn stations_match_whatever_the_separators_and_case() {
        assert_eq!(station("AA-BB-CC-00-11-22"), station("aa:bb:cc:00:11:22"));
        assert_eq!(station("aabbcc001122"), "aabbcc001122");
    }
}
