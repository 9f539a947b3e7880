//! RADIUS as a session source (provider `radius`): a login is an
//! Access-Request, an Access-Accept becomes a session, and the session's
//! exact bytes go to the accounting servers (Start, Interim-Update, Stop),
//! durably.
//!
//! - [`codec`]: messages, Message-Authenticator, vendor attributes.
//! - [`client`]: retransmission and failover.
//! - [`acct`]: the accounting book (open sessions, unanswered requests).
//!
//! The rules, once: a RADIUS session is one NAS session. It starts when the
//! Accept is connected and ends, with a Stop, when it stops running for any
//! reason (used up, expired, disconnected, idle, removed); a session that
//! ends paused is removed, so only a new login (and the server's say) lets
//! the device back. Octets are the datapath's per-device counters in each
//! direction from the reading taken before the device was let through to
//! the reading after it was blocked.

pub mod coa;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use radius::core::{avp::AVP, code::Code, packet::Packet, rfc2865, rfc2866};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use session_model::{
    ClientSession, DeviceId, LocalSource, ModelError, SessionData, SessionEvent, SessionId,
    SessionProvider, SessionRecord, SessionSource, SessionType,
};

use crate::error::AgentError;
use crate::gateway::Gateway;
use session_radius::acct::{
    Book, BookError, Cause, OpenSession, Reading, Request, SessionPart, Status,
};
use session_radius::client::{ClientError, Servers};
use session_radius::codec::{
    self, attr, chilli, wispr, InvalidAttribute, VENDOR_CHILLISPOT, VENDOR_WISPR,
};

/// The provider name of RADIUS sessions.
pub const PROVIDER: &str = "radius";

/// Service-Type of portal logins (Login) and MAC logins (Call-Check).
const SERVICE_LOGIN: u32 = rfc2865::SERVICE_TYPE_LOGIN_USER;
const SERVICE_CALL_CHECK: u32 = rfc2865::SERVICE_TYPE_CALL_CHECK;

/// MAC logins waiting for an answer at once.
const MAC_LOGINS_AT_ONCE: usize = 16;

/// How MAC addresses are written in User-Name and Calling-Station-Id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum MacFormat {
    /// AA-BB-CC-DD-EE-FF (CoovaChilli's, RFC 3580's).
    #[default]
    DashUpper,
    /// aa-bb-cc-dd-ee-ff
    DashLower,
    /// AA:BB:CC:DD:EE:FF
    ColonUpper,
    /// aa:bb:cc:dd:ee:ff
    ColonLower,
    /// AABBCCDDEEFF
    BareUpper,
    /// aabbccddeeff
    BareLower,
}

impl MacFormat {
    pub fn write(self, mac: [u8; 6]) -> String {
        let (sep, upper) = match self {
            MacFormat::DashUpper => ("-", true),
            MacFormat::DashLower => ("-", false),
            MacFormat::ColonUpper => (":", true),
            MacFormat::ColonLower => (":", false),
            MacFormat::BareUpper => ("", true),
            MacFormat::BareLower => ("", false),
        };
        mac.iter()
            .map(|b| {
                if upper {
                    format!("{b:02X}")
                } else {
                    format!("{b:02x}")
                }
            })
            .collect::<Vec<_>>()
            .join(sep)
    }
}

/// A shared secret: compared and used, never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// What the agent runs RADIUS with (from the `[radius]` section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RadiusOptions {
    pub auth_servers: Vec<SocketAddr>,
    pub acct_servers: Vec<SocketAddr>,
    pub secret: Secret,
    pub nas_identifier: String,
    pub nas_ip: Option<Ipv4Addr>,
    /// Called-Station-Id: the LAN's MAC, then `:SSID` when one is given.
    pub ssid: String,
    pub mac_format: MacFormat,
    pub timeout: Duration,
    pub retries: u32,
    /// Interim updates when the Accept names no interval (zero: none).
    pub interim: Duration,
    /// Time of a session whose Accept gives neither time nor data.
    pub default_session_secs: u64,
    pub queue_limit: u64,
    /// The accounting book's file (none: in memory).
    pub book: Option<PathBuf>,
    /// Log new clients in by their MAC.
    pub mac_auth: bool,
    /// The password of MAC logins (empty: the MAC as written in User-Name).
    pub mac_password: String,
    /// Where Disconnect and CoA requests are taken (none: not at all).
    pub coa_listen: Option<SocketAddr>,
    /// Who may send them.
    pub coa_clients: Vec<IpAddr>,
}

/// The defaults of `session-agent run`'s RADIUS options (no server: RADIUS off).
impl Default for RadiusOptions {
    fn default() -> Self {
        Self {
            auth_servers: Vec::new(),
            acct_servers: Vec::new(),
            secret: Secret::default(),
            nas_identifier: "session-agent".into(),
            nas_ip: None,
            ssid: String::new(),
            mac_format: MacFormat::default(),
            timeout: Duration::from_millis(3000),
            retries: 2,
            interim: Duration::from_secs(300),
            default_session_secs: 86_400,
            queue_limit: 100_000,
            book: None,
            mac_auth: false,
            mac_password: String::new(),
            coa_listen: None,
            coa_clients: Vec::new(),
        }
    }
}

/// Why a login or the service failed.
#[derive(Debug, thiserror::Error)]
pub enum RadiusError {
    #[error("the RADIUS server refused the login{}", .0.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Rejected(Option<String>),
    #[error("the RADIUS server asked for a challenge, which this agent does not answer (use PAP for portal logins)")]
    Challenge,
    #[error("device {0} already has a session: disconnect or remove it before a RADIUS login")]
    HasSession(DeviceId),
    #[error("the RADIUS server's WISPr-Session-Terminate-Time has passed: nothing to give")]
    TerminatePassed,
    #[error("the RADIUS server's Access-Accept was refused because its {0}; a malformed Accept counts as a reject (RFC 2865): correct the attribute in the server's reply for this user")]
    InvalidAccept(InvalidAttribute),
    #[error(transparent)]
    Unavailable(#[from] ClientError),
    #[error(transparent)]
    Book(#[from] BookError),
    #[error(transparent)]
    Agent(#[from] AgentError),
}

impl From<ModelError> for RadiusError {
    fn from(e: ModelError) -> Self {
        RadiusError::Agent(e.into())
    }
}

/// What an Access-Accept gives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authorization {
    pub session_timeout: Option<u64>,
    /// ChilliSpot-Max-Total-Octets plus ChilliSpot-Max-Total-Gigawords x 2^32.
    pub total_octets: Option<u64>,
    pub down_bps: Option<u64>,
    pub up_bps: Option<u64>,
    pub idle_timeout: Option<u64>,
    /// WISPr-Session-Terminate-Time, unix seconds.
    pub terminate_at: Option<i64>,
    pub interim: Option<u64>,
    pub class: Vec<Vec<u8>>,
    /// State of the Accept, echoed in accounting as Class is.
    pub state: Option<Vec<u8>>,
    pub reply_message: Option<String>,
    /// User-Name of an Accept: the name the session's accounting carries
    /// (RFC 2865 5.1), e.g. the code a MAC login was found to belong to.
    pub user_name: Option<String>,
    /// Attributes ignored or in conflict, for the log.
    pub notes: Vec<String>,
}

impl Authorization {
    /// Reads an Accept (or a CoA-Request: the same attributes). An attribute
    /// the agent reads that is not as its RFC or vendor says (an integer of
    /// other than 4 bytes, one given twice, an empty Class, a terminate time
    /// that is no time, ...) is an error: a limit must never be dropped
    /// silently.
    pub fn read(p: &Packet) -> Result<Self, InvalidAttribute> {
        let int = |typ| codec::int(p, typ).map(|v| v.map(u64::from));
        let mut a = Authorization {
            session_timeout: int(attr::SESSION_TIMEOUT)?,
            idle_timeout: int(attr::IDLE_TIMEOUT)?,
            interim: int(attr::ACCT_INTERIM_INTERVAL)?,
            class: codec::octets(p, attr::CLASS)?,
            state: codec::at_most_one(codec::octets(p, attr::STATE)?, codec::name(attr::STATE))?,
            user_name: codec::at_most_one(
                codec::texts(p, attr::USER_NAME)?,
                codec::name(attr::USER_NAME),
            )?,
            ..Default::default()
        };
        let replies = codec::texts(p, attr::REPLY_MESSAGE)?;
        if !replies.is_empty() {
            a.reply_message = Some(replies.concat());
        }
        let (mut octets, mut giga) = (None, None);
        let (mut wispr_down, mut wispr_up, mut chilli_down, mut chilli_up) =
            (None, None, None, None);
        let mut seen = std::collections::HashSet::new();
        for (vendor, typ, value) in codec::vendor_attrs(p)? {
            let Some(name) = codec::vendor_name(vendor, typ) else {
                a.notes
                    .push(format!("vendor {vendor} attribute {typ} ignored"));
                continue;
            };
            if !seen.insert(name) {
                return Err(InvalidAttribute::length(
                    name,
                    "appears more than once: at most once is allowed",
                ));
            }
            if (vendor, typ) == (VENDOR_WISPR, wispr::SESSION_TERMINATE_TIME) {
                let s = String::from_utf8(value)
                    .map_err(|_| InvalidAttribute::value(name, "is not UTF-8 text"))?;
                let t = chrono::DateTime::parse_from_rfc3339(s.trim()).map_err(|e| {
                    InvalidAttribute::value(
                        name,
                        format!("{s:?} is not an ISO 8601 time such as 2026-01-01T00:00:00Z: {e}"),
                    )
                })?;
                a.terminate_at = Some(t.timestamp());
                continue;
            }
            let n = Some(u64::from(codec::be_u32(name, &value)?));
            match (vendor, typ) {
                (VENDOR_CHILLISPOT, chilli::MAX_TOTAL_OCTETS) => octets = n,
                (VENDOR_CHILLISPOT, chilli::MAX_TOTAL_GIGAWORDS) => giga = n,
                (VENDOR_CHILLISPOT, chilli::BANDWIDTH_MAX_DOWN) => chilli_down = n.map(|k| k * 1000),
                (VENDOR_CHILLISPOT, chilli::BANDWIDTH_MAX_UP) => chilli_up = n.map(|k| k * 1000),
                (VENDOR_WISPR, wispr::BANDWIDTH_MAX_DOWN) => wispr_down = n,
                (VENDOR_WISPR, wispr::BANDWIDTH_MAX_UP) => wispr_up = n,
                _ => a.notes.push(format!(
                    "{name} ignored: only a total data limit (ChilliSpot-Max-Total-Octets/Gigawords) is applied"
                )),
            }
        }
        if octets.is_some() || giga.is_some() {
            a.total_octets = Some(octets.unwrap_or(0) + (giga.unwrap_or(0) << 32));
        }
        let pick = |notes: &mut Vec<String>, what: &str, w: Option<u64>, c: Option<u64>| match (
            w, c,
        ) {
            (Some(w), Some(c)) if w != c => {
                notes.push(format!("WISPr and ChilliSpot give different {what} speeds ({w} and {c} bit/s): the lower applies"));
                Some(w.min(c))
            }
            (w, c) => w.or(c),
        };
        a.down_bps = pick(&mut a.notes, "download", wispr_down, chilli_down);
        a.up_bps = pick(&mut a.notes, "upload", wispr_up, chilli_up);
        Ok(a)
    }

    /// The session this gives, at `now` (unix seconds).
    pub fn session(&self, now: i64, default_secs: u64) -> Result<SessionData, RadiusError> {
        let mut time = self.session_timeout.filter(|&t| t > 0);
        if let Some(end) = self.terminate_at {
            let left = end - now;
            if left <= 0 {
                return Err(RadiusError::TerminatePassed);
            }
            time = Some(time.map_or(left as u64, |t| t.min(left as u64)));
        }
        let data = self.total_octets;
        let (session_type, time_secs, data_bytes) = match (time, data) {
            (Some(t), Some(d)) => (SessionType::TimeOrData, t, d),
            (Some(t), None) => (SessionType::Time, t, 0),
            (None, Some(d)) => (SessionType::Data, 0, d),
            (None, None) => (SessionType::Time, default_secs, 0),
        };
        // The model keeps whole Mbit/s: a limit below one is one.
        let mbits = |bps: Option<u64>| bps.map_or(0, |b| b.div_ceil(1_000_000).min(100_000) as i32);
        Ok(SessionData {
            provider: PROVIDER.into(),
            session_type,
            time_secs,
            data_bytes,
            time_cons: 0,
            data_cons_bytes: 0,
            started_at: None,
            exp_days: None,
            down_mbits: mbits(self.down_bps),
            up_mbits: mbits(self.up_bps),
            use_global_speed: self.down_bps.is_none() && self.up_bps.is_none(),
            created_at: now,
        })
    }
}

/// The `radius` provider: its sessions live in the store like `local` ones;
/// what makes them RADIUS sessions is the accounting book.
#[derive(Debug, Default)]
pub struct RadiusProvider;

impl SessionProvider for RadiusProvider {
    fn source(&self, _record: &SessionRecord, local: Arc<LocalSource>) -> Arc<dyn SessionSource> {
        local
    }
}

/// Counters for /metrics.
#[derive(Debug, Default)]
pub struct RadiusStats {
    pub accepts: AtomicU64,
    pub rejects: AtomicU64,
    pub auth_unavailable: AtomicU64,
    pub acct_answered: AtomicU64,
    pub acct_retries: AtomicU64,
    pub acct_dropped_full: AtomicU64,
    pub coa_acks: AtomicU64,
    pub coa_naks: AtomicU64,
    /// Requests dropped: from an unknown address, or not checking out.
    pub coa_refused: AtomicU64,
}

/// A login's outcome.
pub struct Login {
    pub session: ClientSession,
    pub reply_message: Option<String>,
}

/// The RADIUS service of one agent.
pub struct Radius {
    opts: RadiusOptions,
    auth: Servers,
    acct: Servers,
    book: Book,
    /// Called-Station-Id.
    called: String,
    wake: tokio::sync::Notify,
    /// Why sessions stopped, as events told it, until their Stop is written.
    causes: Mutex<HashMap<SessionId, Cause>>,
    /// Idle tracking: session -> (bytes, since).
    activity: Mutex<HashMap<SessionId, (u64, Instant)>>,
    /// Idle-Timeout of sessions, from their Accept.
    idle: Mutex<HashMap<SessionId, u64>>,
    pub stats: RadiusStats,
    seq: AtomicU64,
    /// Random per start, in every Acct-Session-Id: ids stay unique across
    /// reboots of a board without a real-time clock, whose clock starts over.
    boot: u32,
    /// Set when the agent stops: the loops end.
    stopping: tokio::sync::watch::Sender<bool>,
    /// When the bookkeeping last looked at every open session.
    last_sweep: Mutex<Option<Instant>>,
    /// Set when events were missed: the next round looks at every session.
    sweep_now: AtomicBool,
    /// Held while a Stop is written ([`Radius::write_stop`]).
    stops: tokio::sync::Mutex<()>,
}

/// How often the bookkeeping looks at every open session, not only at those
/// due or told of by events (see [`Radius::books_work`]).
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Open sessions read from the book at a time.
const BOOKS_CHUNK: usize = 1024;

fn now_secs(gw: &Gateway) -> i64 {
    gw.sessions().clock().now_secs()
}

impl Radius {
    /// Opens the accounting book; `lan_mac` makes the Called-Station-Id.
    pub fn open(opts: RadiusOptions, lan_mac: Option<[u8; 6]>) -> Result<Arc<Self>, RadiusError> {
        let book = Book::open(opts.book.as_deref(), opts.queue_limit)?;
        let mut called = lan_mac
            .map(|m| opts.mac_format.write(m))
            .unwrap_or_default();
        if !opts.ssid.is_empty() {
            called = if called.is_empty() {
                opts.ssid.clone()
            } else {
                format!("{called}:{}", opts.ssid)
            };
        }
        let servers = |list: &[SocketAddr]| {
            Servers::new(
                list.to_vec(),
                opts.secret.0.clone(),
                opts.timeout,
                opts.retries,
                true,
            )
        };
        Ok(Arc::new(Self {
            auth: servers(&opts.auth_servers),
            acct: servers(&opts.acct_servers),
            book,
            called,
            wake: tokio::sync::Notify::new(),
            causes: Mutex::default(),
            activity: Mutex::default(),
            idle: Mutex::default(),
            stats: RadiusStats::default(),
            seq: AtomicU64::new(0),
            boot: getrandom::u32().map_err(|e| AgentError::Io {
                what: "drawing the Acct-Session-Id prefix".into(),
                source: std::io::Error::other(e.to_string()),
            })?,
            stopping: tokio::sync::watch::channel(false).0,
            last_sweep: Mutex::default(),
            sweep_now: AtomicBool::new(false),
            stops: tokio::sync::Mutex::new(()),
            opts,
        }))
    }

    pub fn options(&self) -> &RadiusOptions {
        &self.opts
    }

    /// Accounting requests waiting for an answer.
    pub fn queued(&self) -> u64 {
        self.book.queued().unwrap_or(0)
    }

    /// Sessions open at the accounting server.
    pub fn open_count(&self) -> usize {
        self.book.open_count()
    }

    /// The attributes naming this NAS in every request: NAS-Identifier, and
    /// NAS-IP-Address (configured, or the address the request leaves from),
    /// which servers key Accounting-On/Off by: without it one gateway's
    /// Accounting-On would close every other's sessions.
    fn nas_attrs(&self, p: &mut Packet, local: IpAddr) {
        p.add(AVP::from_string(
            attr::NAS_IDENTIFIER as _,
            &self.opts.nas_identifier,
        ));
        let ip = self.opts.nas_ip.or(match local {
            IpAddr::V4(v4) if !v4.is_unspecified() => Some(v4),
            _ => None,
        });
        if let Some(ip) = ip {
            p.add(AVP::from_ipv4(attr::NAS_IP_ADDRESS as _, &ip));
        }
    }

    fn new_acct_session_id(&self, now: i64, device_id: DeviceId) -> String {
        let n = self.seq.fetch_add(1, Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        format!("{:08X}{now:08X}{nanos:08X}-{device_id:X}-{n:X}", self.boot)
    }

    /// A portal login (PAP): Access-Request, then on Accept a session of
    /// provider `radius`, connected, and its Start queued.
    pub async fn login(
        &self,
        gw: &Gateway,
        device_id: DeviceId,
        user: &str,
        password: &str,
    ) -> Result<Login, RadiusError> {
        self.login_as(gw, device_id, user, password, SERVICE_LOGIN)
            .await
    }

    /// MAC authentication of a client just seen: User-Name is its MAC,
    /// Service-Type Call-Check; a refusal leaves it in the walled garden.
    pub async fn mac_login(&self, gw: &Gateway, device_id: DeviceId) -> Result<Login, RadiusError> {
        let mac = gw.sessions().device(device_id)?.mac;
        let user = self.opts.mac_format.write(mac.octets());
        let password = if self.opts.mac_password.is_empty() {
            user.clone()
        } else {
            self.opts.mac_password.clone()
        };
        self.login_as(gw, device_id, &user, &password, SERVICE_CALL_CHECK)
            .await
    }

    /// Logs in every client the datapath sees for the first time by its MAC
    /// (`--radius-mac-auth`).
    pub async fn follow_new_clients(self: Arc<Self>, gw: Arc<Gateway>) {
        let mut rx = gw.subscribe();
        // A burst of new MACs (or a client making them up) must not flood the
        // servers: a bounded number of MAC logins at a time, the rest wait.
        let in_flight = Arc::new(tokio::sync::Semaphore::new(MAC_LOGINS_AT_ONCE));
        loop {
            let device_id = match rx.recv().await {
                Ok(crate::gateway::GatewayEvent::ClientSeen {
                    device_id: Some(d), ..
                }) => d,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            };
            let (me, gw, in_flight) = (self.clone(), gw.clone(), in_flight.clone());
            tokio::spawn(async move {
                let Ok(_permit) = in_flight.acquire().await else {
                    return;
                };
                match me.mac_login(&gw, device_id).await {
                    Ok(_) => {}
                    Err(RadiusError::HasSession(_)) => {}
                    Err(e) => info!(device_id, "MAC authentication: {e}"),
                }
            });
        }
    }

    async fn login_as(
        &self,
        gw: &Gateway,
        device_id: DeviceId,
        user: &str,
        password: &str,
        service: u32,
    ) -> Result<Login, RadiusError> {
        let mgr = gw.sessions();
        let device = mgr.device(device_id)?;
        let now = now_secs(gw);
        // A RADIUS session logged out of is ended, though it waits in the
        // store for the accounting round that sends its Stop and removes it:
        // it does not stand in the way of the next login, which removes it.
        let running = mgr.running_session_id(device_id)?;
        let mut stopped = Vec::new();
        for s in mgr.device_sessions(device_id)? {
            if !s.data().is_available(now) {
                continue;
            }
            if s.data().provider == PROVIDER && Some(s.id()) != running {
                stopped.push(s.id());
                continue;
            }
            return Err(RadiusError::HasSession(device_id));
        }
        let calling = self.opts.mac_format.write(device.mac.octets());
        let framed_ip = match device.ip {
            Some(IpAddr::V4(ip)) => Some(ip),
            _ => crate::neigh::ipv4_of(gw, device.mac).await,
        };
        let acct_session_id = self.new_acct_session_id(now, device_id);
        let answer = self
            .auth
            .exchange(|secret, local| {
                let mut p = Packet::new(Code::AccessRequest, secret);
                p.add(AVP::from_string(attr::USER_NAME as _, user));
                if let Ok(pw) = AVP::from_user_password(
                    attr::USER_PASSWORD as _,
                    password.as_bytes(),
                    secret,
                    p.get_authenticator(),
                ) {
                    p.add(pw);
                }
                self.client_attrs(
                    &mut p,
                    local,
                    service,
                    &calling,
                    framed_ip,
                    &acct_session_id,
                );
                p
            })
            .await;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                self.stats.auth_unavailable.fetch_add(1, Relaxed);
                return Err(e.into());
            }
        };
        match answer.get_code() {
            Code::AccessAccept => {}
            Code::AccessChallenge => return Err(RadiusError::Challenge),
            _ => {
                self.stats.rejects.fetch_add(1, Relaxed);
                let msg = codec::text(&answer, attr::REPLY_MESSAGE);
                info!(device_id, user, "RADIUS login refused");
                return Err(RadiusError::Rejected(msg));
            }
        }
        let auth = match Authorization::read(&answer) {
            Ok(a) => a,
            Err(bad) => {
                self.stats.rejects.fetch_add(1, Relaxed);
                warn!(
                    device_id,
                    user,
                    attribute = bad.name,
                    "RADIUS Access-Accept refused: its {bad}"
                );
                return Err(RadiusError::InvalidAccept(bad));
            }
        };
        self.stats.accepts.fetch_add(1, Relaxed);
        for n in &auth.notes {
            warn!(device_id, user, "RADIUS Accept: {n}");
        }
        let data = auth.session(now, self.opts.default_session_secs)?;
        // Stopped first, or the connect below would resume the stopped session
        // (the oldest available) under the new login's accounting. Its Stop is
        // written now, from the counters as they stand (the device is not let
        // through): the accounting round would read them after the new
        // session's first bytes and count those twice.
        for sid in stopped {
            if let Some(s) = self.book.open_session(sid)? {
                // The device logged in again: it was logged out, whether or
                // not the event that says so was heard yet.
                self.causes
                    .lock()
                    .unwrap()
                    .entry(sid)
                    .or_insert(Cause::UserRequest);
                self.write_stop(gw, s, Some(device.mac), now).await?;
            }
            match mgr.remove_session(sid) {
                Ok(_) | Err(ModelError::UnknownSession(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let session = mgr.create_session_with(device_id, data).await?;
        let sid = session.id();
        // The device is not let through yet: its counters stand still.
        let start = meter(gw, device.mac).await;
        if let Err(e) = gw
            .connect(
                device_id,
                auth.reply_message.as_deref().unwrap_or("RADIUS login"),
            )
            .await
        {
            let _ = mgr.remove_session(sid);
            return Err(e.into());
        }
        let interim = auth
            .interim
            .map(|s| s.max(10))
            .unwrap_or(self.opts.interim.as_secs());
        let open = OpenSession {
            session_id: sid,
            device_id,
            acct_session_id,
            // The server's name for the session, when its Accept gives one.
            user_name: auth.user_name.clone().unwrap_or_else(|| user.to_string()),
            calling,
            framed_ip,
            class: auth.class.clone(),
            state: auth.state.clone(),
            started_at: now,
            interim_secs: interim,
            next_interim: now + interim as i64,
            base_up: 0,
            base_down: 0,
            mark: start,
            last: start,
        };
        if let Some(idle) = auth.idle_timeout.filter(|&i| i > 0) {
            self.idle.lock().unwrap().insert(sid, idle);
        }
        let req = Request {
            status: Status::Start,
            at: now,
            session: Some(SessionPart::of(&open, now, None)),
        };
        if let Err(e) = self.book.record(Some(&open), None, Some(&req)) {
            // Not in the book, the session would run with no accounting at
            // all (no Start, no Stop ever sent): it is undone, the device
            // blocked again, and the login refused.
            self.idle.lock().unwrap().remove(&sid);
            if let Err(undo) = gw.remove_session(sid, true).await {
                warn!(
                    device_id,
                    session = sid,
                    "a login whose Start was not written could not be undone: {undo}"
                );
            }
            return Err(e.into());
        }
        self.wake.notify_one();
        info!(device_id, user, session = sid, acct_session_id = %open.acct_session_id, "RADIUS login accepted");
        Ok(Login {
            session: mgr.session(sid)?,
            reply_message: auth.reply_message,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn client_attrs(
        &self,
        p: &mut Packet,
        local: IpAddr,
        service: u32,
        calling: &str,
        ip: Option<Ipv4Addr>,
        acct_id: &str,
    ) {
        p.add(AVP::from_u32(attr::SERVICE_TYPE as _, service));
        p.add(AVP::from_u32(
            attr::NAS_PORT_TYPE as _,
            rfc2865::NAS_PORT_TYPE_WIRELESS_802_11,
        ));
        p.add(AVP::from_string(attr::CALLING_STATION_ID as _, calling));
        if !self.called.is_empty() {
            p.add(AVP::from_string(attr::CALLED_STATION_ID as _, &self.called));
        }
        if let Some(ip) = ip {
            p.add(AVP::from_ipv4(attr::FRAMED_IP_ADDRESS as _, &ip));
        }
        p.add(AVP::from_string(attr::ACCT_SESSION_ID as _, acct_id));
        self.nas_attrs(p, local);
    }

    /// The Accounting-Request for a queued request, as sent `now`.
    fn accounting_packet(&self, secret: &[u8], local: IpAddr, req: &Request, now: i64) -> Packet {
        let mut p = Packet::new(Code::AccountingRequest, secret);
        p.add(AVP::from_u32(
            attr::ACCT_STATUS_TYPE as _,
            req.status.code(),
        ));
        p.add(AVP::from_u32(
            attr::ACCT_DELAY_TIME as _,
            (now - req.at).clamp(0, u32::MAX as i64) as u32,
        ));
        p.add(AVP::from_u32(
            attr::EVENT_TIMESTAMP as _,
            req.at.clamp(0, u32::MAX as i64) as u32,
        ));
        match &req.session {
            Some(s) => {
                p.add(AVP::from_string(attr::USER_NAME as _, &s.user_name));
                self.client_attrs(
                    &mut p,
                    local,
                    SERVICE_LOGIN,
                    &s.calling,
                    s.framed_ip,
                    &s.acct_session_id,
                );
                p.add(AVP::from_u32(
                    attr::ACCT_AUTHENTIC as _,
                    rfc2866::ACCT_AUTHENTIC_RADIUS,
                ));
                for c in &s.class {
                    p.add(AVP::from_bytes(attr::CLASS as _, c));
                }
                if let Some(st) = &s.state {
                    p.add(AVP::from_bytes(attr::STATE as _, st));
                }
                if req.status != Status::Start {
                    p.add(AVP::from_u32(
                        attr::ACCT_SESSION_TIME as _,
                        s.session_time.min(u32::MAX as u64) as u32,
                    ));
                    // Octets below 2^32, and how many times 2^32 above (RFC 2869).
                    for (octets, low, giga) in [
                        (
                            s.input_octets,
                            attr::ACCT_INPUT_OCTETS,
                            attr::ACCT_INPUT_GIGAWORDS,
                        ),
                        (
                            s.output_octets,
                            attr::ACCT_OUTPUT_OCTETS,
                            attr::ACCT_OUTPUT_GIGAWORDS,
                        ),
                    ] {
                        p.add(AVP::from_u32(low as _, octets as u32));
                        p.add(AVP::from_u32(giga as _, (octets >> 32) as u32));
                    }
                }
                if let Some(c) = s.cause {
                    p.add(AVP::from_u32(attr::ACCT_TERMINATE_CAUSE as _, c.code()));
                }
            }
            None => self.nas_attrs(&mut p, local),
        }
        p
    }

    /// Sends the queued accounting requests in order, for as long as the agent runs.
    pub async fn send_accounting(self: Arc<Self>, gw: Arc<Gateway>) {
        let mut stopping = self.stopping.subscribe();
        tokio::select! {
            _ = stopping.wait_for(|s| *s) => {}
            _ = self.clone().send_loop(gw) => {}
        }
    }

    async fn send_loop(self: Arc<Self>, gw: Arc<Gateway>) {
        let mut backoff = Duration::from_secs(1);
        let mut down_since: Option<Instant> = None;
        loop {
            let next = match self.book.oldest() {
                Ok(n) => n,
                Err(e) => {
                    warn!("{e}");
                    None
                }
            };
            let Some((seq, req)) = next else {
                let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
                continue;
            };
            if self.acct.is_empty() {
                // No accounting server: nothing is kept waiting.
                let _ = self.book.answered(seq);
                continue;
            }
            let sent = self
                .acct
                .exchange(|secret, local| {
                    self.accounting_packet(secret, local, &req, now_secs(&gw))
                })
                .await;
            match sent {
                Ok(p) if p.get_code() == Code::AccountingResponse => {
                    if let Err(e) = self.book.answered(seq) {
                        warn!("{e}");
                    }
                    self.stats.acct_answered.fetch_add(1, Relaxed);
                    if let Some(t) = down_since.take() {
                        info!(
                            after_secs = t.elapsed().as_secs(),
                            "RADIUS accounting answers again"
                        );
                    }
                    backoff = Duration::from_secs(1);
                }
                other => {
                    self.stats.acct_retries.fetch_add(1, Relaxed);
                    if down_since.is_none() {
                        down_since = Some(Instant::now());
                        match other {
                            Err(e) => warn!(queued = self.queued(), "RADIUS accounting waits: {e}"),
                            Ok(p) => warn!(
                                "RADIUS accounting answered {}: retried",
                                p.get_code().string()
                            ),
                        }
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Notes why sessions stop, from the manager's events, and wakes the
    /// bookkeeping at once.
    pub async fn follow_events(self: Arc<Self>, gw: Arc<Gateway>) {
        let mut rx = gw.sessions().subscribe();
        loop {
            let e = match rx.recv().await {
                Ok(e) => e,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    self.sweep_now.store(true, Relaxed);
                    self.wake.notify_one();
                    continue;
                }
                Err(_) => return,
            };
            let (sid, cause) = match e {
                SessionEvent::Disconnected {
                    session_id: Some(s),
                    notification,
                    ..
                } => (
                    s,
                    match notification.as_str() {
                        "idle timeout" => Cause::IdleTimeout,
                        "removed" => Cause::AdminReset,
                        _ => Cause::UserRequest,
                    },
                ),
                SessionEvent::SessionConsumed { session_id, .. }
                | SessionEvent::SessionExpired { session_id, .. } => {
                    (session_id, Cause::SessionTimeout)
                }
                // Its sessions went with it.
                SessionEvent::DeviceRemoved { .. } => {
                    self.sweep_now.store(true, Relaxed);
                    self.wake.notify_one();
                    continue;
                }
                _ => continue,
            };
            // Only RADIUS sessions: the map must not grow with every local one.
            if self.book.is_open(sid) {
                self.causes.lock().unwrap().entry(sid).or_insert(cause);
                self.wake.notify_one();
            }
        }
    }

    /// At start: sessions whose counters did not survive (a reboot) are
    /// stopped (NAS-Reboot); with none left open, Accounting-On.
    pub async fn start(&self, gw: &Gateway) -> Result<(), RadiusError> {
        let now = now_secs(gw);
        self.book.catch_up(now)?;
        let epoch = gw.datapath().epoch();
        for mut s in self.book.open_sessions()? {
            if epoch.is_some_and(|e| e != s.last.epoch && e != s.mark.epoch) {
                let req = Request {
                    status: Status::Stop,
                    at: now,
                    session: Some(SessionPart::of(&s, now, Some(Cause::NasReboot))),
                };
                s.read(s.last);
                self.book.record(None, Some(s.session_id), Some(&req))?;
                let _ = gw.disconnect(s.device_id, "gateway restarted").await;
                let _ = gw.remove_session(s.session_id, true).await;
            }
        }
        if self.book.open_sessions()?.is_empty() {
            let req = Request {
                status: Status::AccountingOn,
                at: now,
                session: None,
            };
            self.book.record(None, None, Some(&req))?;
        }
        self.wake.notify_one();
        Ok(())
    }

    /// At a clean stop: Accounting-Off when no session is open (sessions go on
    /// in the datapath across a restart, and their accounting with them),
    /// and a few seconds to send what is queued.
    pub async fn stop(&self, gw: &Gateway) {
        if self.book.open_sessions().is_ok_and(|s| s.is_empty()) {
            let req = Request {
                status: Status::AccountingOff,
                at: now_secs(gw),
                session: None,
            };
            let _ = self.book.record(None, None, Some(&req));
            self.wake.notify_one();
        }
        let until = Instant::now() + Duration::from_secs(3);
        while self.queued() > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stopping.send_replace(true);
        self.wake.notify_waiters();
    }

    /// Every second (and when woken): Stop for sessions that stopped running,
    /// interim updates that are due, and idle timeouts ([`Radius::books_work`]
    /// picks the sessions).
    pub async fn keep_books(self: Arc<Self>, gw: Arc<Gateway>) {
        let mut stopping = self.stopping.subscribe();
        loop {
            if *stopping.borrow_and_update() {
                return;
            }
            if let Err(e) = self.books_once(&gw).await {
                warn!("RADIUS accounting: {e}");
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
        }
    }

    /// The sessions one round of [`Radius::keep_books`] looks at: those whose
    /// interim update is due, those with an idle timeout, and those the
    /// manager's events said stopped; every [`SWEEP_EVERY`] (and after events
    /// were missed) also every open session that no longer runs, so a stop no
    /// event told of is still written. The sweep compares the book's index
    /// with the manager's running sessions in memory: it reads from the book
    /// only the sessions it acts on.
    fn books_work(&self, gw: &Gateway, now: i64) -> Vec<SessionId> {
        let sweep = {
            let mut last = self.last_sweep.lock().unwrap();
            let due = self.sweep_now.swap(false, Relaxed)
                || last.is_none_or(|t| t.elapsed() >= SWEEP_EVERY);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        let mut ids = Vec::new();
        if sweep {
            match gw.sessions().not_running(&self.book.open_devices()) {
                Ok(stopped) => ids = stopped,
                // Without the running sessions, every open one is looked at.
                Err(e) => {
                    warn!("RADIUS accounting: the running sessions cannot be read ({e}); looking at every open session");
                    ids = self.book.open_ids();
                }
            }
        }
        ids.extend(self.book.due(now));
        ids.extend(self.idle.lock().unwrap().keys());
        ids.extend(self.causes.lock().unwrap().keys());
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// One round of [`Radius::keep_books`].
    pub async fn books_once(&self, gw: &Gateway) -> Result<(), RadiusError> {
        let now = now_secs(gw);
        for chunk in self.books_work(gw, now).chunks(BOOKS_CHUNK) {
            self.books_of(gw, now, chunk).await?;
        }
        Ok(())
    }

    /// [`Radius::books_once`] for the open sessions among `ids`.
    async fn books_of(&self, gw: &Gateway, now: i64, ids: &[SessionId]) -> Result<(), RadiusError> {
        let mgr = gw.sessions();
        // Written together at the end: one transaction for the chunk's updates.
        let open = self.book.open_sessions_of(ids)?;
        let (mut interims, mut unmoved) = (
            Vec::with_capacity(open.len()),
            Vec::with_capacity(open.len()),
        );
        for mut s in open {
            let running = mgr.running_session_id(s.device_id).ok().flatten() == Some(s.session_id);
            let mac = mgr.device(s.device_id).map(|d| d.mac).ok();
            if running {
                let idle = self.idle.lock().unwrap().get(&s.session_id).copied();
                if (now < s.next_interim || s.interim_secs == 0) && idle.is_none() {
                    continue;
                }
                let Some(mac) = mac else { continue };
                let reading = meter(gw, mac).await;
                // The row changes only with a reading other than its last.
                let moved = reading != s.last;
                let (up, down) = s.read(reading);
                if let Some(idle) = idle {
                    let total = up + down;
                    let idled = {
                        let mut act = self.activity.lock().unwrap();
                        let a = act.entry(s.session_id).or_insert((total, Instant::now()));
                        if a.0 != total {
                            *a = (total, Instant::now());
                        }
                        a.1.elapsed() >= Duration::from_secs(idle)
                    };
                    if idled {
                        self.causes
                            .lock()
                            .unwrap()
                            .insert(s.session_id, Cause::IdleTimeout);
                        gw.disconnect(s.device_id, "idle timeout").await?;
                        continue;
                    }
                }
                if s.interim_secs > 0 && now >= s.next_interim {
                    while s.next_interim <= now {
                        s.next_interim += s.interim_secs as i64;
                    }
                    let req = Request {
                        status: Status::InterimUpdate,
                        at: now,
                        session: Some(SessionPart::of(&s, now, None)),
                    };
                    // A row whose counters stand still is not written again.
                    if moved {
                        interims.push((s, Some(req)));
                    } else {
                        unmoved.push((s, req));
                    }
                }
                continue;
            }
            // It stopped running: its last bytes, then Stop.
            self.write_stop(gw, s, mac, now).await?;
        }
        // A round that failed before here writes none: they are still due.
        let wake = !interims.is_empty() || !unmoved.is_empty();
        let dropped = self.book.record_many(&interims)? + self.book.queue_interims(unmoved)?;
        if dropped > 0 {
            self.stats.acct_dropped_full.fetch_add(dropped, Relaxed);
            warn!(
                dropped,
                queued = self.queued(),
                "RADIUS accounting queue full: interim updates were not kept"
            );
        }
        if wake {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Writes the Stop of `s`, which no longer runs, with its last bytes: the
    /// device's (`mac`) counters now, which stand still while no session of
    /// it runs. One at a time and only while `s` is open, so the round and a
    /// login that ends it at once ([`Radius::login_as`]) do not both write it.
    async fn write_stop(
        &self,
        gw: &Gateway,
        mut s: OpenSession,
        mac: Option<session_model::MacAddr>,
        now: i64,
    ) -> Result<(), RadiusError> {
        let _one = self.stops.lock().await;
        if !self.book.is_open(s.session_id) {
            return Ok(());
        }
        if let Some(mac) = mac {
            s.read(meter(gw, mac).await);
        }
        let mgr = gw.sessions();
        let record = mgr.store().session(s.session_id).ok().flatten();
        let cause = self
            .causes
            .lock()
            .unwrap()
            .remove(&s.session_id)
            .unwrap_or_else(|| match &record {
                None => Cause::AdminReset,
                Some(r) if !r.data.is_available(now) => Cause::SessionTimeout,
                Some(_) => Cause::LostCarrier,
            });
        let req = Request {
            status: Status::Stop,
            at: now,
            session: Some(SessionPart::of(&s, now, Some(cause))),
        };
        self.book.record(None, Some(s.session_id), Some(&req))?;
        self.idle.lock().unwrap().remove(&s.session_id);
        self.activity.lock().unwrap().remove(&s.session_id);
        let (up, down) = s.totals();
        info!(
            device_id = s.device_id,
            session = s.session_id,
            ?cause,
            input_octets = up,
            output_octets = down,
            "RADIUS session stopped"
        );
        // Stopped is ended: a paused RADIUS session does not come back.
        if record.is_some_and(|r| r.data.is_available(now)) {
            let _ = gw.remove_session(s.session_id, false).await;
        }
        self.wake.notify_one();
        Ok(())
    }
}

/// A device's counters now, as the accounting book records them (see
/// [`Gateway::usage_split`]).
async fn meter(gw: &Gateway, mac: session_model::MacAddr) -> Reading {
    let (epoch, split) = gw.usage_split(mac).await;
    Reading::of(epoch, split)
}

#[cfg(test)]
mod tests {
    use super::*;
    use codec::vendor_avp;

    fn accept() -> Packet {
        Packet::new(Code::AccessAccept, b"s")
    }

    #[test]
    fn an_accept_with_time_and_data_gives_time_or_data_with_exact_64_bit_octets() {
        let mut p = accept();
        p.add(AVP::from_u32(attr::SESSION_TIMEOUT as _, 3600));
        p.add(vendor_avp(
            VENDOR_CHILLISPOT,
            chilli::MAX_TOTAL_OCTETS,
            &5u32.to_be_bytes(),
        ));
        p.add(vendor_avp(
            VENDOR_CHILLISPOT,
            chilli::MAX_TOTAL_GIGAWORDS,
            &2u32.to_be_bytes(),
        ));
        p.add(vendor_avp(
            VENDOR_WISPR,
            wispr::BANDWIDTH_MAX_DOWN,
            &2_500_000u32.to_be_bytes(),
        ));
        p.add(vendor_avp(
            VENDOR_CHILLISPOT,
            chilli::BANDWIDTH_MAX_UP,
            &1000u32.to_be_bytes(),
        ));
        p.add(AVP::from_string(attr::REPLY_MESSAGE as _, "Welcome"));
        p.add(AVP::from_bytes(attr::CLASS as _, b"plan-a"));
        let a = Authorization::read(&p).unwrap();
        assert_eq!(a.total_octets, Some((2u64 << 32) + 5));
        assert_eq!((a.down_bps, a.up_bps), (Some(2_500_000), Some(1_000_000)));
        assert_eq!(a.reply_message.as_deref(), Some("Welcome"));
        assert_eq!(a.class, vec![b"plan-a".to_vec()]);
        let s = a.session(1000, 86400).unwrap();
        assert_eq!(s.session_type, SessionType::TimeOrData);
        assert_eq!((s.time_secs, s.data_bytes), (3600, (2u64 << 32) + 5));
        assert_eq!(
            (s.down_mbits, s.up_mbits, s.use_global_speed),
            (3, 1, false)
        );
        assert_eq!(s.provider, PROVIDER);
    }

    #[test]
    fn a_terminate_time_caps_the_session_time_and_one_in_the_past_refuses() {
        let mut p = accept();
        p.add(AVP::from_u32(attr::SESSION_TIMEOUT as _, 3600));
        p.add(vendor_avp(
            VENDOR_WISPR,
            wispr::SESSION_TERMINATE_TIME,
            b"1970-01-01T00:10:00Z",
        ));
        let a = Authorization::read(&p).unwrap();
        assert_eq!(a.terminate_at, Some(600));
        assert_eq!(a.session(500, 86400).unwrap().time_secs, 100);
        assert!(matches!(
            a.session(600, 86400),
            Err(RadiusError::TerminatePassed)
        ));
    }

    #[test]
    fn an_accept_without_limits_gets_the_default_time_and_ignored_attributes_are_noted() {
        let mut p = accept();
        p.add(vendor_avp(
            VENDOR_CHILLISPOT,
            chilli::MAX_INPUT_OCTETS,
            &5u32.to_be_bytes(),
        ));
        p.add(vendor_avp(9, 1, b"cisco-avpair"));
        let a = Authorization::read(&p).unwrap();
        assert_eq!(a.notes.len(), 2, "{:?}", a.notes);
        assert!(
            a.notes[0].contains("ChilliSpot-Max-Input-Octets"),
            "{:?}",
            a.notes
        );
        let s = a.session(0, 7200).unwrap();
        assert_eq!(
            (s.session_type, s.time_secs, s.use_global_speed),
            (SessionType::Time, 7200, true)
        );
    }

    /// The Accept's attribute that `add` puts in, as read.
    fn read_with(add: impl Fn(&mut Packet)) -> Result<Authorization, InvalidAttribute> {
        let mut p = accept();
        add(&mut p);
        Authorization::read(&p)
    }

    #[test]
    fn a_malformed_limit_refuses_the_accept_instead_of_giving_the_default_time() {
        let cases = [
            (
                "Session-Timeout",
                AVP::from_bytes(attr::SESSION_TIMEOUT, &[14, 16]),
            ),
            (
                "Idle-Timeout",
                AVP::from_bytes(attr::IDLE_TIMEOUT, &[0, 0, 0, 0, 60]),
            ),
            (
                "Acct-Interim-Interval",
                AVP::from_bytes(attr::ACCT_INTERIM_INTERVAL, &[60]),
            ),
            (
                "ChilliSpot-Max-Total-Octets",
                vendor_avp(
                    VENDOR_CHILLISPOT,
                    chilli::MAX_TOTAL_OCTETS,
                    &[0x0f, 0x42, 0x40],
                ),
            ),
            (
                "ChilliSpot-Max-Total-Gigawords",
                vendor_avp(VENDOR_CHILLISPOT, chilli::MAX_TOTAL_GIGAWORDS, &[1, 0]),
            ),
            (
                "WISPr-Bandwidth-Max-Down",
                vendor_avp(VENDOR_WISPR, wispr::BANDWIDTH_MAX_DOWN, &[0, 0, 0, 0, 1]),
            ),
            (
                "ChilliSpot-Bandwidth-Max-Up",
                vendor_avp(VENDOR_CHILLISPOT, chilli::BANDWIDTH_MAX_UP, &[8]),
            ),
        ];
        for (name, avp) in cases {
            let err = read_with(|p| p.add(avp.clone())).expect_err(name);
            assert_eq!((err.name, err.fault), (name, codec::Fault::Length));
            let msg = RadiusError::InvalidAccept(err).to_string();
            assert!(msg.contains(name) && msg.contains("bytes"), "{msg}");
        }
    }

    #[test]
    fn a_limit_given_twice_refuses_the_accept() {
        let err = read_with(|p| {
            for n in [1_000_000u32, 2_000_000] {
                p.add(vendor_avp(
                    VENDOR_CHILLISPOT,
                    chilli::MAX_TOTAL_OCTETS,
                    &n.to_be_bytes(),
                ));
            }
        })
        .unwrap_err();
        assert_eq!(err.name, "ChilliSpot-Max-Total-Octets");
        let err = read_with(|p| {
            p.add(AVP::from_u32(attr::IDLE_TIMEOUT, 60));
            p.add(AVP::from_u32(attr::IDLE_TIMEOUT, 600));
        })
        .unwrap_err();
        assert_eq!(err.name, "Idle-Timeout");
    }

    #[test]
    fn a_terminate_time_that_is_no_time_or_an_empty_class_refuses_the_accept() {
        let err = read_with(|p| {
            p.add(vendor_avp(
                VENDOR_WISPR,
                wispr::SESSION_TERMINATE_TIME,
                b"tomorrow",
            ))
        })
        .unwrap_err();
        assert_eq!(
            (err.name, err.fault),
            ("WISPr-Session-Terminate-Time", codec::Fault::Value)
        );
        let err = read_with(|p| p.add(AVP::from_bytes(attr::CLASS, b""))).unwrap_err();
        assert_eq!((err.name, err.fault), ("Class", codec::Fault::Length));
    }

    #[test]
    fn octets_past_four_gibibytes_go_out_as_octets_and_gigawords() {
        let opts = RadiusOptions {
            auth_servers: vec![],
            acct_servers: vec![],
            secret: Secret(b"s".to_vec()),
            nas_identifier: "gw".into(),
            nas_ip: None,
            ssid: "Cafe".into(),
            mac_format: MacFormat::DashUpper,
            timeout: Duration::from_secs(1),
            retries: 0,
            interim: Duration::ZERO,
            default_session_secs: 60,
            queue_limit: 16,
            book: None,
            mac_auth: false,
            mac_password: String::new(),
            coa_listen: None,
            coa_clients: vec![],
        };
        let r = Radius::open(opts, Some([2, 0, 0, 0, 0, 1])).unwrap();
        assert_eq!(r.called, "02-00-00-00-00-01:Cafe");
        let big = (5u64 << 32) + 7;
        let req = Request {
            status: Status::Stop,
            at: 100,
            session: Some(SessionPart {
                acct_session_id: "x".into(),
                user_name: "u".into(),
                calling: "c".into(),
                framed_ip: None,
                class: vec![b"c".to_vec()],
                state: Some(b"st".to_vec()),
                input_octets: big,
                output_octets: 3,
                session_time: 9,
                cause: Some(Cause::AdminReset),
            }),
        };
        let p = r.accounting_packet(b"s", [192, 0, 2, 1].into(), &req, 130);
        let nas_ip = p
            .lookup(attr::NAS_IP_ADDRESS as _)
            .map(|a| a.encode_ipv4().unwrap());
        assert_eq!(nas_ip, Some(std::net::Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(codec::int(&p, attr::ACCT_INPUT_OCTETS), Ok(Some(7)));
        assert_eq!(codec::int(&p, attr::ACCT_INPUT_GIGAWORDS), Ok(Some(5)));
        assert_eq!(codec::int(&p, attr::ACCT_OUTPUT_OCTETS), Ok(Some(3)));
        assert_eq!(codec::int(&p, attr::ACCT_OUTPUT_GIGAWORDS), Ok(Some(0)));
        assert_eq!(codec::int(&p, attr::ACCT_DELAY_TIME), Ok(Some(30)));
        assert_eq!(codec::text(&p, attr::CLASS).as_deref(), Some("c"));
        assert_eq!(codec::text(&p, attr::STATE).as_deref(), Some("st"));
        assert_eq!(codec::int(&p, attr::ACCT_TERMINATE_CAUSE), Ok(Some(6)));
        assert_eq!(codec::int(&p, attr::ACCT_STATUS_TYPE), Ok(Some(2)));
    }

    #[test]
    fn mac_formats_are_written_as_named() {
        let m = [0xaa, 0xbb, 0x0c, 1, 2, 0xff];
        assert_eq!(MacFormat::DashUpper.write(m), "AA-BB-0C-01-02-FF");
        assert_eq!(MacFormat::ColonLower.write(m), "aa:bb:0c:01:02:ff");
        assert_eq!(MacFormat::BareLower.write(m), "aabb0c0102ff");
    }
}
