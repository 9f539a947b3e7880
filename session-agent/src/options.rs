//! Every option of `session-agent run`, in one struct read both from the
//! command line (clap) and from the config file (serde, TOML).
//!
//! - **Defaults** are written once, beside what they configure
//!   ([`GatewayConfig::default`], [`GateOptions::default`],
//!   [`ApiOptions::default`], [`NameGardenOptions::default`],
//!   [`RedirectOptions::new`], [`RadiusOptions::default`], ...);
//!   [`Options::default`] reads them, and the help text shows them from there
//!   ([`with_defaults`]).
//! - **Ranges** live in the types ([`Ranged`]): the same check and the same
//!   message for a flag and for a key.
//! - **Precedence**: the file, then the flags given on the command line (a list
//!   flag such as `--lan` replaces the file's list). [`Options::load`] does that.
//! - [`Options::resolve`] turns them into what the daemon runs with.

use std::sync::Arc;
use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    num::NonZeroU16,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use clap::{ArgMatches, FromArgMatches};
use serde::{Deserialize, Serialize};

use crate::{
    api::ApiOptions,
    daemon::{GateOptions, RunOptions, StoreKind, DEFAULT_DB},
    dataplane::{
        attach::{IngressHook, TcAttach},
        shape::Shaper,
    },
    garden::GardenEntry,
    gateway::GatewayConfig,
    names::NameGardenOptions,
    portal::{PortalOptions, RedirectOptions, RedirectParams},
    radius::RadiusOptions,
};

/// An unsigned number within `LO..=HI`, for flags and keys alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ranged<const LO: u64, const HI: u64>(u64);

impl<const LO: u64, const HI: u64> Ranged<LO, HI> {
    /// `v` if it is in range; else the message both the flag and the key give.
    pub fn new(v: u64) -> Result<Self, String> {
        if (LO..=HI).contains(&v) {
            Ok(Self(v))
        } else {
            Err(Self::out_of_range(v))
        }
    }

    fn out_of_range(v: impl fmt::Display) -> String {
        format!("{v} is out of range, allowed {}", Self::range())
    }

    /// `LO..=HI`, or `LO..` without a ceiling.
    fn range() -> String {
        if HI == u64::MAX {
            format!("{LO}..")
        } else {
            format!("{LO}..={HI}")
        }
    }

    /// A value known to be in range, such as a default (panics otherwise;
    /// in a `const` it is checked at compile time).
    pub const fn of(v: u64) -> Self {
        assert!(LO <= v && v <= HI, "default out of its range");
        Self(v)
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl<const LO: u64, const HI: u64> fmt::Display for Ranged<LO, HI> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<const LO: u64, const HI: u64> FromStr for Ranged<LO, HI> {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let v: u64 = s
            .parse()
            .map_err(|e| format!("{s:?} is not a whole number: {e}"))?;
        Self::new(v)
    }
}

impl<const LO: u64, const HI: u64> Serialize for Ranged<LO, HI> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de, const LO: u64, const HI: u64> Deserialize<'de> for Ranged<LO, HI> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<const LO: u64, const HI: u64>;
        impl<const LO: u64, const HI: u64> serde::de::Visitor<'_> for Visitor<LO, HI> {
            type Value = Ranged<LO, HI>;
            // What a wrong type is told it should be.
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a whole number in {}", Ranged::<LO, HI>::range())
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ranged::new(v).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(Ranged::<LO, HI>::out_of_range(v))),
                }
            }
        }
        d.deserialize_u64(Visitor::<LO, HI>)
    }
}

/// An `http://` or `https://` URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct HttpUrl(String);

impl FromStr for HttpUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with("https://") || s.starts_with("http://") {
            Ok(Self(s.to_string()))
        } else {
            Err(format!("{s:?} is not an http(s) URL"))
        }
    }
}

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What is logged, as a `tracing` filter: a level (`error`, `warn`, `info`,
/// `debug`, `trace`) or directives per module (`info,session_agent::portal=debug`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct LogFilter(String);

impl LogFilter {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for LogFilter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        tracing_subscriber::EnvFilter::try_new(s)
            .map(|_| Self(s.to_string()))
            .map_err(|e| format!("{s:?} is not a log filter ({e}): use error, warn, info, debug or trace, or module=level directives"))
    }
}

impl<'de> Deserialize<'de> for LogFilter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A non-empty text (an interface name, a token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct NonEmpty(String);

impl NonEmpty {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NonEmpty {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            Err("must not be empty".into())
        } else {
            Ok(Self(s.to_string()))
        }
    }
}

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Every option of `session-agent run`. Flags and config-file keys are the
/// same fields: a key `poll_ms` is the flag `--poll-ms`, a key in a section
/// (`[store] path`) has its own flag name (`--db`), given on each field.
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// TOML file with any of these options (see README "Configuration"); flags override it.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Client-facing interface (repeatable; required here or in the config file).
    #[arg(long = "lan", value_name = "IFACE")]
    pub lans: Vec<NonEmpty>,
    /// Extra destination reachable before login: CIDR[:PORT] (repeatable).
    #[arg(long = "walled-garden", value_name = "CIDR[:PORT]")]
    pub walled_garden: Vec<GardenEntry>,
    /// Host reachable before login by name: NAME[:PORT] or *.SUFFIX[:PORT] (repeatable);
    /// its addresses are learnt from the DNS answers clients get.
    #[arg(long = "walled-garden-domain", value_name = "NAME[:PORT]")]
    pub walled_garden_domains: Vec<crate::names::DomainRule>,
    /// DNS server clients may use before login besides the gateway itself (repeatable);
    /// DNS to any other address, and DNS over TLS, is refused them.
    #[arg(long = "garden-dns", value_name = "ADDR")]
    pub garden_dns: Vec<IpAddr>,
    /// Least time, in seconds, an address learnt for a garden name stays (answers with
    /// a shorter TTL get this); after its TTL, an address stays while clients used it
    /// within this time.
    #[arg(long, value_name = "SECS", required = false)]
    pub garden_ttl_min_secs: Ranged<1, 86_400>,
    /// Most time, in seconds, an unused address learnt for a garden name stays.
    #[arg(long, value_name = "SECS", required = false)]
    pub garden_ttl_max_secs: Ranged<1, 604_800>,
    /// Most addresses learnt for garden names per LAN; more are not learnt (logged, and
    /// counted in /metrics) until others expire.
    #[arg(long, value_name = "N", required = false)]
    pub garden_domain_limit: Ranged<1, { session_common::MAX_GARDEN_HOSTS as u64 }>,
    /// Packet mark of the DNS answers the agent sends on to clients that have not paid
    /// once it has learnt their garden addresses (pick one no other rule uses).
    #[arg(long, value_name = "MARK", required = false)]
    pub garden_dns_mark: Ranged<1, { u32::MAX as u64 }>,
    /// Port of the captive portal on the gateway's LAN addresses (repeatable).
    #[arg(long = "portal-port", value_name = "PORT")]
    pub portal_ports: Vec<NonZeroU16>,
    /// Where upload traffic is metered.
    #[arg(long, value_enum, required = false)]
    pub ingress: IngressHook,
    /// How speed limits are enforced. `police`: token buckets in the datapath drop
    /// what exceeds the limit (no added latency, TCP retransmits). `htb`: per-client
    /// HTB classes queue it (no retransmits, queueing delay); needs --ingress tc and
    /// a kernel with IFB and HTB.
    #[arg(long, value_enum, required = false)]
    pub shaper: Shaper,
    /// How TC programs are attached: TCX links (Linux >= 6.6) or netlink filters on a
    /// clsact qdisc (older kernels); `auto` picks TCX where the kernel has it.
    #[arg(long, value_enum, required = false)]
    pub tc_attach: TcAttach,
    /// bpffs directory holding the pinned client table and one directory of pinned
    /// maps and links per interface.
    #[arg(long, value_name = "DIR", required = false)]
    pub pin_root: PathBuf,
    /// Counter poll interval in milliseconds: time is enforced and consumption
    /// charged this often.
    #[arg(long, value_name = "MS", required = false)]
    pub poll_ms: Ranged<10, 10_000>,
    /// How often charged consumption is written to the store's log, in milliseconds. A
    /// crash loses none of it (it is charged again from the kernel counters); a
    /// reboot, which clears those counters, loses up to this much usage.
    #[arg(long, value_name = "MS", required = false)]
    pub commit_ms: Ranged<10, 60_000>,
    /// Store checkpoint interval in seconds.
    #[arg(long, value_name = "SECS", required = false)]
    pub checkpoint_secs: Ranged<1, { u64::MAX }>,
    /// Pause a connected session after this many seconds without traffic (0 = never).
    #[arg(long, value_name = "SECS", required = false)]
    pub idle_timeout_secs: u64,
    /// Forget a client that is not allowed after this many seconds without
    /// traffic, so its slot serves new clients (0 = never).
    #[arg(long, value_name = "SECS", required = false)]
    pub forget_idle_secs: u64,
    /// Per-client download speed for sessions that use the global speed, Mbit/s (0 = unlimited).
    #[arg(long, value_name = "MBITS", required = false)]
    pub global_down_mbits: Ranged<0, 100_000>,
    /// Per-client upload speed for sessions that use the global speed, Mbit/s (0 = unlimited).
    #[arg(long, value_name = "MBITS", required = false)]
    pub global_up_mbits: Ranged<0, 100_000>,
    /// Token-bucket depth in milliseconds at the limit (at least 64 KiB).
    #[arg(long, value_name = "MS", required = false)]
    pub burst_ms: Ranged<1, 10_000>,
    /// When a session ends, start the device's next session (`--auto-advance false`,
    /// or --no-auto-advance, disconnects the device instead).
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", required = false)]
    pub auto_advance: bool,
    /// Same as `--auto-advance false`.
    #[arg(long, conflicts_with = "auto_advance")]
    #[serde(skip)]
    pub no_auto_advance: bool,
    /// Bind each client's IPv4 and IPv6 addresses to its MAC (first claim wins)
    /// and drop frames, ARP and ND that use an address bound to another MAC.
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set, required = false)]
    pub anti_spoof: bool,
    /// With anti-spoofing, a paying client sends from one IPv4 address at a
    /// time on a LAN: another source from its MAC (a second device with a cloned MAC)
    /// is dropped and reported as a MAC conflict, unless the gateway's DHCP
    /// server gave it the address (IPv6 keeps several).
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set, required = false)]
    pub one_address_per_client: bool,
    /// An address binding unused for this many seconds is free: another
    /// device's claim takes the address.
    #[arg(long, value_name = "SECS", required = false)]
    pub bind_ttl_secs: Ranged<10, 86_400>,
    /// A voucher's session follows its customer to a new MAC (a phone that
    /// changed its Wi-Fi address types the code again) once the MAC it is on
    /// has been silent this many seconds; while that MAC is heard from, the
    /// code stays refused on the new one.
    #[arg(long, value_name = "SECS", required = false)]
    pub voucher_move_after_secs: Ranged<1, 86_400>,
    /// Walled-garden speed per client and direction before payment, kbit/s
    /// (0 = unlimited).
    #[arg(long, value_name = "KBITS", required = false)]
    pub garden_rate_kbits: Ranged<0, 10_000_000>,
    /// Walled-garden packets per second per client and direction before payment
    /// (0 = limited by bytes only).
    #[arg(long, value_name = "PPS", required = false)]
    pub garden_pps: Ranged<0, 1_000_000>,
    /// Walled-garden speed of all unpaid clients together per direction, kbit/s,
    /// for what leaves the gateway or its DNS relays (not DHCP or the portal);
    /// each packet costs at least what it costs one client (0 = no total).
    #[arg(long, value_name = "KBITS", required = false)]
    pub garden_total_kbits: Ranged<0, 100_000_000>,
    /// Frames per second that all MACs without a slot in the client table (a
    /// full table, new clients over the admission rate) share for ARP, ND and
    /// DHCP with the gateway (0 = unlimited).
    #[arg(long, value_name = "PPS", required = false)]
    pub slotless_pps: Ranged<0, 1_000_000>,
    /// New clients (MACs) that may take a slot in the client table per second
    /// and LAN, so that a flood of MACs cannot churn it (0 = unlimited).
    #[arg(long, value_name = "N", required = false)]
    pub new_clients_per_sec: Ranged<0, 1_000_000>,
    /// What is logged: error, warn, info, debug or trace, or directives per module
    /// (info,session_agent::portal=debug); RUST_LOG, when set, wins.
    #[arg(long, value_name = "FILTER", required = false)]
    pub log_level: LogFilter,
    #[command(flatten)]
    pub store: StoreOptions,
    #[command(flatten)]
    pub api: ApiSection,
    #[command(flatten)]
    pub captive: CaptiveSection,
    #[command(flatten)]
    pub radius: RadiusSection,
    #[command(flatten)]
    pub vouchers: VouchersSection,
    #[command(flatten)]
    pub admin: AdminSection,
}

/// Where the operator page's accounts are unless `admin.accounts` says otherwise.
pub const DEFAULT_ADMIN_ACCOUNTS: &str = "/var/lib/session-agent/admin-accounts";
/// The operator page's certificate and key, made at first start if missing.
pub const DEFAULT_ADMIN_CERT: &str = "/var/lib/session-agent/admin-cert.pem";
pub const DEFAULT_ADMIN_KEY: &str = "/var/lib/session-agent/admin-key.pem";

/// `[admin]`: the operator's page.
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSection {
    /// Serve the operator's page (/admin) at ADDR:PORT over HTTPS; off unless set.
    /// Clients that have not paid cannot reach it (keep its port out of --portal-ports).
    #[arg(long = "admin-listen", value_name = "ADDR:PORT")]
    pub admin_listen: Option<SocketAddr>,
    /// The page's certificate (PEM); made, self-signed, at first start when it and
    /// the key are missing.
    #[arg(long = "admin-cert", value_name = "FILE", required = false)]
    pub admin_cert: PathBuf,
    /// The certificate's private key (PEM).
    #[arg(long = "admin-key", value_name = "FILE", required = false)]
    pub admin_key: PathBuf,
    /// Serve the page over plain HTTP instead: only on a loopback address.
    #[arg(long = "admin-plain-http")]
    pub admin_plain_http: bool,
    /// The page's accounts, written by `session-agent admin passwd`.
    #[arg(long = "admin-accounts", value_name = "FILE", required = false)]
    pub admin_accounts: PathBuf,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            admin_listen: None,
            admin_cert: DEFAULT_ADMIN_CERT.into(),
            admin_key: DEFAULT_ADMIN_KEY.into(),
            admin_plain_http: false,
            admin_accounts: DEFAULT_ADMIN_ACCOUNTS.into(),
        }
    }
}

/// `[vouchers]`: where codes typed on the portal page are checked.
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VouchersSection {
    /// `local`: the agent's own codes (`vouchers create`); `radius`: a code is
    /// an Access-Request (User-Name and password the code) to the RADIUS
    /// servers, so that codes of one database work at every gateway.
    #[arg(long = "vouchers-backend", value_enum, required = false)]
    pub backend: crate::portal::VoucherBackend,
}

/// `[radius]`: logins and accounting against RADIUS servers (off without a server).
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RadiusSection {
    /// RADIUS authentication server ADDR:PORT (repeatable, tried in turn; the first
    /// turns RADIUS logins on).
    #[arg(long = "radius-server", value_name = "ADDR:PORT")]
    pub auth_servers: Vec<SocketAddr>,
    /// RADIUS accounting server ADDR:PORT (repeatable, tried in turn; none: no accounting).
    #[arg(long = "radius-acct-server", value_name = "ADDR:PORT")]
    pub acct_servers: Vec<SocketAddr>,
    /// File holding the shared secret (first line; never give it on the command line).
    #[arg(long = "radius-secret-file", value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// NAS-Identifier of this gateway.
    #[arg(long = "radius-nas-id", value_name = "NAME", required = false)]
    pub nas_identifier: String,
    /// NAS-IP-Address of this gateway (left out when not given).
    #[arg(long = "radius-nas-ip", value_name = "ADDR")]
    pub nas_ip: Option<std::net::Ipv4Addr>,
    /// SSID, sent after the LAN's MAC in Called-Station-Id (GW-MAC:SSID).
    #[arg(long = "radius-ssid", value_name = "SSID", required = false)]
    pub ssid: String,
    /// How client MACs are written in User-Name and Calling-Station-Id.
    #[arg(long = "radius-mac-format", value_enum, required = false)]
    pub mac_format: crate::radius::MacFormat,
    /// Milliseconds to wait for an answer before the first retransmission (doubling after).
    #[arg(long = "radius-timeout-ms", value_name = "MS", required = false)]
    pub timeout_ms: Ranged<100, 60_000>,
    /// Retransmissions to one server before the next is tried.
    #[arg(long = "radius-retries", value_name = "N", required = false)]
    pub retries: Ranged<0, 10>,
    /// Seconds between interim updates when the Access-Accept gives no
    /// Acct-Interim-Interval (0 = none).
    #[arg(long = "radius-interim-secs", value_name = "SECS", required = false)]
    pub interim_secs: Ranged<0, 86_400>,
    /// Seconds of a session whose Access-Accept gives neither a Session-Timeout nor a
    /// data limit.
    #[arg(
        long = "radius-default-session-secs",
        value_name = "SECS",
        required = false
    )]
    pub default_session_secs: Ranged<1, 31_536_000>,
    /// Accounting requests kept while no server answers; past it, interim updates are
    /// dropped (logged, counted), Start and Stop never.
    #[arg(long = "radius-queue-limit", value_name = "N", required = false)]
    pub queue_limit: Ranged<16, 10_000_000>,
    /// Log every new client in by its MAC (User-Name is the MAC, Service-Type
    /// Call-Check); a refused one stays in the walled garden.
    #[arg(long = "radius-mac-auth")]
    pub mac_auth: bool,
    /// Password of MAC logins (empty: the MAC itself, as written in User-Name).
    #[arg(long = "radius-mac-password", value_name = "TEXT", required = false)]
    pub mac_password: String,
    /// Take Disconnect and CoA requests (RFC 5176) at ADDR:PORT (usually port 3799).
    #[arg(long = "radius-coa-listen", value_name = "ADDR:PORT")]
    pub coa_listen: Option<SocketAddr>,
    /// Address allowed to send Disconnect and CoA requests (repeatable; default: the
    /// RADIUS servers' addresses).
    #[arg(long = "radius-coa-client", value_name = "ADDR")]
    pub coa_clients: Vec<IpAddr>,
}

impl Default for RadiusSection {
    fn default() -> Self {
        let r = RadiusOptions::default();
        Self {
            auth_servers: r.auth_servers,
            acct_servers: r.acct_servers,
            secret_file: None,
            nas_identifier: r.nas_identifier,
            nas_ip: r.nas_ip,
            ssid: r.ssid,
            mac_format: r.mac_format,
            timeout_ms: Ranged::of(r.timeout.as_millis() as u64),
            retries: Ranged::of(r.retries.into()),
            interim_secs: Ranged::of(r.interim.as_secs()),
            default_session_secs: Ranged::of(r.default_session_secs),
            queue_limit: Ranged::of(r.queue_limit),
            mac_auth: r.mac_auth,
            mac_password: r.mac_password,
            coa_listen: r.coa_listen,
            coa_clients: r.coa_clients,
        }
    }
}

impl RadiusSection {
    /// The RADIUS options, when a server is given; reads the secret file.
    fn resolve(
        &self,
        book: Option<PathBuf>,
    ) -> Result<Option<crate::radius::RadiusOptions>, OptionsError> {
        if self.auth_servers.is_empty() && self.acct_servers.is_empty() {
            return Ok(None);
        }
        let Some(path) = &self.secret_file else {
            return Err(OptionsError::RadiusSecret);
        };
        let text = std::fs::read(path).map_err(|source| OptionsError::RadiusSecretFile {
            path: path.clone(),
            source,
        })?;
        let first = text.split(|&b| b == b'\n').next().unwrap_or_default();
        let secret = first.strip_suffix(b"\r").unwrap_or(first).to_vec();
        if secret.is_empty() {
            return Err(OptionsError::EmptyRadiusSecret(path.clone()));
        }
        Ok(Some(crate::radius::RadiusOptions {
            auth_servers: self.auth_servers.clone(),
            acct_servers: self.acct_servers.clone(),
            secret: crate::radius::Secret(secret),
            nas_identifier: self.nas_identifier.clone(),
            nas_ip: self.nas_ip,
            ssid: self.ssid.clone(),
            mac_format: self.mac_format,
            timeout: Duration::from_millis(self.timeout_ms.get()),
            retries: self.retries.get() as u32,
            interim: Duration::from_secs(self.interim_secs.get()),
            default_session_secs: self.default_session_secs.get(),
            queue_limit: self.queue_limit.get(),
            book,
            mac_auth: self.mac_auth,
            mac_password: self.mac_password.clone(),
            coa_listen: self.coa_listen,
            coa_clients: if self.coa_clients.is_empty() {
                let mut v: Vec<IpAddr> = self
                    .auth_servers
                    .iter()
                    .chain(&self.acct_servers)
                    .map(|s| s.ip())
                    .collect();
                v.sort();
                v.dedup();
                v
            } else {
                self.coa_clients.clone()
            },
        }))
    }
}

/// `[store]`
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreOptions {
    /// Session store.
    #[arg(long = "store", value_enum, required = false)]
    pub provider: StoreKind,
    /// Session database file (redb and hybrid; hybrid keeps its log beside it).
    #[arg(long = "db", value_name = "FILE", required = false)]
    pub path: PathBuf,
    /// Remove sessions that ended this many seconds ago, and devices with no session
    /// that the datapath forgot (see --forget-idle-secs) and are older than that
    /// (0 = keep them).
    #[arg(long, value_name = "SECS", required = false)]
    pub retention_secs: u64,
}

/// `[api]`
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSection {
    /// Control API unix socket.
    #[arg(long = "api-socket", value_name = "PATH", required = false)]
    pub socket: PathBuf,
    /// Also serve the control API on TCP at ADDR:PORT (needs --api-token or --api-token-file).
    #[arg(long = "api-tcp", value_name = "ADDR:PORT")]
    pub tcp: Option<SocketAddr>,
    /// Bearer token of the TCP listener.
    #[arg(
        long = "api-token",
        value_name = "TOKEN",
        conflicts_with = "token_file"
    )]
    pub token: Option<NonEmpty>,
    /// File holding the bearer token of the TCP listener (first line).
    #[arg(long = "api-token-file", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Serve the TCP listener over HTTPS, with the operator page's certificate and
    /// key (admin.admin_cert, admin.admin_key; made at first start if missing), so
    /// the token never crosses a network in clear.
    #[arg(long = "api-tls")]
    pub api_tls: bool,
    /// Clients with their own series in /metrics, the busiest first.
    #[arg(long, value_name = "N", required = false)]
    pub metrics_top_clients: usize,
}

/// `[captive]`
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptiveSection {
    /// Serve the RFC 8908 captive-portal API for clients at ADDR:PORT (a LAN address;
    /// the port joins the walled garden).
    #[arg(long = "captive-listen", value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// The portal's URL, announced as user-portal-url by the captive-portal API
    /// [default: the built-in portal page, http://ADDR:PORT/portal of --captive-listen].
    #[arg(long, value_name = "URL")]
    pub portal_url: Option<HttpUrl>,
    /// Texts, name and colours of the built-in portal page (TOML; keys left out keep
    /// their defaults).
    #[arg(long, value_name = "FILE")]
    pub portal_texts: Option<PathBuf>,
    /// Send clients that have not paid to the portal: their http:// requests outside the
    /// walled garden get a 302 to the portal URL, their other TCP outside it a reset (a
    /// fast failure); needs --ingress tc.
    #[arg(long = "portal-redirect")]
    pub redirect: bool,
    /// TCP port of the portal redirect's responder on the gateway (clients never
    /// address it: the datapath hands their port-80 connections to it).
    #[arg(long, value_name = "PORT", required = false)]
    pub redirect_port: NonZeroU16,
    /// Packet mark of the portal redirect: the packets handed to the responder and the
    /// answers to clients that have not paid (pick one no other rule uses).
    #[arg(long, value_name = "MARK", required = false)]
    pub redirect_mark: Ranged<1, { u32::MAX as u64 }>,
    /// Routing table whose default route is local, for the marked packets.
    #[arg(long, value_name = "TABLE", required = false)]
    pub redirect_table: Ranged<1, { u32::MAX as u64 }>,
    /// Query parameter of the client's MAC (AA-BB-CC-DD-EE-FF) in the redirect (empty:
    /// left out).
    #[arg(long, value_name = "NAME", required = false)]
    pub redirect_param_mac: String,
    /// Query parameter of the client's IP address in the redirect (empty: left out).
    #[arg(long, value_name = "NAME", required = false)]
    pub redirect_param_ip: String,
    /// Query parameter of the URL the client asked for in the redirect (empty: left out).
    #[arg(long, value_name = "NAME", required = false)]
    pub redirect_param_url: String,
}

impl Default for CaptiveSection {
    fn default() -> Self {
        let p = PortalOptions::default();
        let r = RedirectOptions::new(String::new());
        Self {
            listen: p.listen,
            portal_url: None,
            portal_texts: None,
            redirect: false,
            redirect_port: NonZeroU16::new(r.port).expect("the default port is not 0"),
            redirect_mark: Ranged::of(r.mark.into()),
            redirect_table: Ranged::of(r.table.into()),
            redirect_param_mac: r.params.mac,
            redirect_param_ip: r.params.ip,
            redirect_param_url: r.params.url,
        }
    }
}

/// The defaults, from what each configures: [`GatewayConfig::default`],
/// [`GateOptions::default`], [`NameGardenOptions::default`] and the rest.
impl Default for Options {
    fn default() -> Self {
        let g = GatewayConfig::default();
        let gate = GateOptions::default();
        let n = NameGardenOptions::default();
        let secs = |d: Option<std::time::Duration>| d.map_or(0, |d| d.as_secs());
        Self {
            config: None,
            lans: Vec::new(),
            walled_garden: Vec::new(),
            walled_garden_domains: Vec::new(),
            garden_dns: Vec::new(),
            garden_ttl_min_secs: Ranged::of(n.ttl_min.as_secs()),
            garden_ttl_max_secs: Ranged::of(n.ttl_max.as_secs()),
            garden_domain_limit: Ranged::of(n.limit as u64),
            garden_dns_mark: Ranged::of(n.mark.into()),
            portal_ports: vec![NonZeroU16::new(80).expect("80 is not 0")],
            ingress: IngressHook::Tc,
            shaper: Shaper::Police,
            tc_attach: TcAttach::Auto,
            pin_root: crate::dataplane::DEFAULT_PIN_ROOT.into(),
            poll_ms: Ranged::of(g.poll_interval.as_millis() as u64),
            commit_ms: Ranged::of(g.commit_interval.as_millis() as u64),
            checkpoint_secs: Ranged::of(g.checkpoint_interval.as_secs()),
            idle_timeout_secs: secs(g.idle_timeout),
            forget_idle_secs: secs(g.forget_idle),
            global_down_mbits: Ranged::of(g.global_down_mbits),
            global_up_mbits: Ranged::of(g.global_up_mbits),
            burst_ms: Ranged::of(g.burst_ms),
            auto_advance: g.auto_advance,
            no_auto_advance: false,
            anti_spoof: gate.anti_spoof,
            one_address_per_client: gate.one_address,
            bind_ttl_secs: Ranged::of(g.bind_ttl.as_secs()),
            voucher_move_after_secs: Ranged::of(g.voucher_move_after.as_secs()),
            garden_rate_kbits: Ranged::of(gate.garden_rate_kbits),
            garden_pps: Ranged::of(gate.garden_pps),
            garden_total_kbits: Ranged::of(gate.garden_total_kbits),
            slotless_pps: Ranged::of(gate.slotless_pps),
            new_clients_per_sec: Ranged::of(gate.new_clients_per_sec),
            log_level: LogFilter("info".into()),
            store: StoreOptions::default(),
            api: ApiSection::default(),
            captive: CaptiveSection::default(),
            radius: RadiusSection::default(),
            vouchers: VouchersSection::default(),
            admin: AdminSection::default(),
        }
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            provider: StoreKind::default(),
            path: DEFAULT_DB.into(),
            retention_secs: GatewayConfig::default()
                .retention
                .map_or(0, |d| d.as_secs()),
        }
    }
}

impl Default for ApiSection {
    fn default() -> Self {
        let a = ApiOptions::default();
        Self {
            socket: a.socket.unwrap_or_default(),
            tcp: a.tcp,
            token: None,
            token_file: None,
            api_tls: false,
            metrics_top_clients: a.metrics_top_clients,
        }
    }
}

/// A config file that cannot be used, or options that cannot work together.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A key of the file, where it is (line and column, from 1) and what is wrong
    /// with it, with what it allows.
    #[error("{}: {key}: {reason}", place(.path, *.at))]
    Invalid {
        path: PathBuf,
        at: Option<(usize, usize)>,
        key: String,
        reason: String,
    },
    #[error(transparent)]
    Flags(#[from] clap::Error),
    #[error("no client-facing interface: give --lan IFACE (or lans = [...] in the config file)")]
    NoLan,
    #[error("give api.token or api.token_file, not both (or --api-token or --api-token-file)")]
    TwoTokens,
    #[error("cannot read the API token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the API token file {0} is empty")]
    EmptyTokenFile(PathBuf),
    #[error(transparent)]
    Api(#[from] crate::api::ApiOptionsError),
    #[error(transparent)]
    PortalTexts(#[from] crate::portal::PortalTextsError),
    #[error("--portal-redirect needs a portal to send clients to: give --portal-url URL, or --captive-listen ADDR:PORT on a LAN address for the built-in page")]
    RedirectWithoutPortal,
    #[error("--portal-redirect needs --ingress tc (XDP cannot hand a packet to a socket)")]
    RedirectNeedsTc,
    #[error("{0}")]
    RedirectParams(String),
    #[error("RADIUS needs a shared secret: give --radius-secret-file FILE (or radius.secret_file in the config file)")]
    RadiusSecret,
    #[error("cannot read the RADIUS secret file {path}: {source}")]
    RadiusSecretFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the RADIUS secret file {0} is empty")]
    EmptyRadiusSecret(PathBuf),
    #[error("vouchers.backend = \"radius\" checks codes at the RADIUS servers: give --radius-server ADDR:PORT (radius.auth_servers), or set the backend to local")]
    VouchersWithoutRadius,
    #[error("the operator page's port {0} is a portal port, which clients that have not paid reach: give --admin-listen another port")]
    AdminOnPortalPort(u16),
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminOptionsError),
    #[error("garden_ttl_min_secs ({min}) is above garden_ttl_max_secs ({max}): give a floor at most the ceiling")]
    GardenTtl { min: u64, max: u64 },
}

/// `FILE:LINE:COLUMN`, or `FILE` when toml gave no place.
fn place(path: &Path, at: Option<(usize, usize)>) -> String {
    match at {
        Some((line, column)) => format!("{}:{line}:{column}", path.display()),
        None => path.display().to_string(),
    }
}

/// The line and column (from 1, in characters) of a byte offset into `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// Whether a message from serde or a value's own check already says what is
/// allowed (serde's "expected ...", [`Ranged`]'s "allowed ...").
fn states_what_is_allowed(message: &str) -> bool {
    message.contains("expected") || message.contains("allowed")
}

/// The key and the reason of text toml could not read, which stopped at
/// `offset`: the key is that of the line (or of the array it is in), in its
/// `[table]`; the reason quotes the value and says what the key allows.
fn read_error(text: &str, offset: usize, message: String) -> (String, String) {
    let end = text
        .get(offset..)
        .and_then(|rest| rest.find('\n'))
        .map_or(text.len(), |i| offset + i);
    let mut key: Option<(String, &str)> = None;
    let mut table = None;
    for (n, line) in text[..end].lines().rev().enumerate() {
        let line = line.trim();
        if line.starts_with('[') {
            if n == 0 {
                // The header itself is what cannot be read.
                return (line.to_string(), message);
            }
            table = line
                .trim_start_matches('[')
                .split(']')
                .next()
                .map(|t| t.trim().to_string());
            break;
        }
        if key.is_none() {
            if let Some((k, v)) = line.split_once('=') {
                let k = k.trim();
                let bare = !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
                let quoted = k.len() >= 2 && k.starts_with('"') && k.ends_with('"');
                if bare || quoted {
                    // The value, when the key is on the line toml stopped at.
                    let v = match v.trim() {
                        _ if n > 0 => "",
                        v if v.starts_with(['"', '\'']) => v,
                        v => v.split('#').next().unwrap_or(v).trim_end(),
                    };
                    key = Some((k.trim_matches('"').to_string(), v));
                }
            }
        }
    }
    let Some((key, value)) = key else {
        return ("(top level)".into(), message);
    };
    let key = match table {
        Some(t) => format!("{t}.{key}"),
        None => key,
    };
    let mut reason = if value.is_empty() || message.starts_with("duplicate key") {
        message.clone()
    } else {
        format!("cannot read `{value}` ({message})")
    };
    if !message.starts_with("duplicate key") {
        if let Some(takes) = what_key_takes(&key) {
            reason.push_str("; allowed: ");
            reason.push_str(&takes);
        }
    }
    (key, reason)
}

/// Where `api.token_file` is in a file that reads.
fn token_file_place(text: &str) -> Option<(usize, usize)> {
    #[derive(Deserialize)]
    struct Doc {
        #[serde(default)]
        api: std::collections::BTreeMap<String, toml::Spanned<serde::de::IgnoredAny>>,
    }
    let doc: Doc = toml::from_str(text).ok()?;
    let key = doc.api.get("token_file")?;
    let at = line_column(text, key.span().start);
    Some(at)
}

/// What a key (`poll_ms`, `api.socket`) allows, in serde's words: the
/// "expected ..." of the error the key gets for a value of a type no key takes
/// (a date-time, then a control character no name has). None for keys that
/// take any text (their own checks say what they need) and for unknown keys.
fn what_key_takes(key: &str) -> Option<String> {
    if key.contains('[') {
        return None;
    }
    let (table, name) = match key.rsplit_once('.') {
        Some((t, n)) => (format!("[{t}]\n"), n),
        None => (String::new(), key),
    };
    for probe in ["1979-05-27T07:32:00Z", "\"\\u0001\""] {
        let doc = format!("{table}{name} = {probe}\n");
        let Err(e) = serde_path_to_error::deserialize::<_, Options>(toml::Deserializer::new(&doc))
        else {
            return None;
        };
        if e.path().to_string() != key {
            return None;
        }
        let message = e.into_inner().message().to_string();
        if message.starts_with("unknown field") {
            return None;
        }
        match message.split_once(", expected ") {
            Some((_, "a string" | "path string")) => return None,
            Some((_, takes)) => return Some(takes.to_string()),
            None => continue,
        }
    }
    None
}

/// The built-in portal page's URL on the captive listener, when its address is one
/// a client can be sent to.
fn builtin_portal_url(listen: Option<SocketAddr>) -> Option<String> {
    let addr = listen.filter(|a| !a.ip().is_unspecified())?;
    Some(format!("http://{addr}/portal"))
}

impl Options {
    /// The options of a command line: its config file (if `--config` names one),
    /// then the flags given on the command line over it.
    /// The LAN interfaces given, as names.
    pub fn lan_names(&self) -> Vec<String> {
        self.lans.iter().map(|l| l.0.clone()).collect()
    }

    pub fn load(matches: &ArgMatches) -> Result<Self, OptionsError> {
        let mut opts = match matches.get_one::<PathBuf>("config") {
            Some(path) => Self::read(path)?,
            None => Self::default(),
        };
        // Only flags given on the command line are in the matches: none of
        // the arguments has a clap default, but clap fills a switch that was
        // not given (`--portal-redirect`) with false: the file's value stays.
        let file = opts.clone();
        opts.update_from_arg_matches(matches)?;
        let given =
            |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
        if !given("redirect") {
            opts.captive.redirect = file.captive.redirect;
        }
        if !given("mac_auth") {
            opts.radius.mac_auth = file.radius.mac_auth;
        }
        if !given("api_tls") {
            opts.api.api_tls = file.api.api_tls;
        }
        if !given("admin_plain_http") {
            opts.admin.admin_plain_http = file.admin.admin_plain_http;
        }
        if opts.no_auto_advance {
            opts.auto_advance = false;
        }
        Ok(opts)
    }

    /// Reads and checks a config file.
    pub fn read(path: &Path) -> Result<Self, OptionsError> {
        let text = std::fs::read_to_string(path).map_err(|source| OptionsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut opts = Self::parse(path, &text)?;
        opts.config = Some(path.to_path_buf());
        Ok(opts)
    }

    /// A config file's text; an error says where (`FILE:LINE:COLUMN`, as
    /// compilers do), the key, what is wrong and what the key allows.
    pub fn parse(path: &Path, text: &str) -> Result<Self, OptionsError> {
        let de = toml::Deserializer::new(text);
        let opts: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let e = e.into_inner();
            let at = e.span().map(|s| line_column(text, s.start));
            // toml's message carries the line and a caret; keep its first line.
            let message = e.message().lines().next().unwrap_or("").to_string();
            let (key, reason) = if key == "." {
                // toml could not read the text: no key was reached.
                read_error(text, e.span().map_or(0, |s| s.start), message)
            } else {
                let reason = match what_key_takes(&key) {
                    Some(takes) if !states_what_is_allowed(&message) => {
                        format!("{message}; allowed: {takes}")
                    }
                    _ => message,
                };
                (key, reason)
            };
            OptionsError::Invalid {
                path: path.to_path_buf(),
                at,
                key,
                reason,
            }
        })?;
        if opts.api.token.is_some() && opts.api.token_file.is_some() {
            return Err(OptionsError::Invalid {
                path: path.to_path_buf(),
                at: token_file_place(text),
                key: "api.token_file".into(),
                reason: "give api.token or api.token_file, not both".into(),
            });
        }
        Ok(opts)
    }

    /// The gateway's part.
    pub fn gateway(&self) -> GatewayConfig {
        let secs = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        GatewayConfig {
            poll_interval: Duration::from_millis(self.poll_ms.get()),
            idle_timeout: secs(self.idle_timeout_secs),
            forget_idle: secs(self.forget_idle_secs),
            global_down_mbits: self.global_down_mbits.get(),
            global_up_mbits: self.global_up_mbits.get(),
            burst_ms: self.burst_ms.get(),
            auto_advance: self.auto_advance,
            checkpoint_interval: Duration::from_secs(self.checkpoint_secs.get()),
            commit_interval: Duration::from_millis(self.commit_ms.get()),
            bind_ttl: Duration::from_secs(self.bind_ttl_secs.get()),
            voucher_move_after: Duration::from_secs(self.voucher_move_after_secs.get()),
            retention: secs(self.store.retention_secs),
        }
    }

    /// What the daemon runs with; reads the token file.
    pub fn resolve(self) -> Result<RunOptions, OptionsError> {
        if self.lans.is_empty() {
            return Err(OptionsError::NoLan);
        }
        if self.api.token.is_some() && self.api.token_file.is_some() {
            return Err(OptionsError::TwoTokens);
        }
        let token = match (&self.api.token, &self.api.token_file) {
            (Some(t), _) => Some(t.as_str().to_string()),
            (None, Some(f)) => {
                let t = std::fs::read_to_string(f).map_err(|source| OptionsError::TokenFile {
                    path: f.clone(),
                    source,
                })?;
                let t = t.lines().next().unwrap_or("").trim().to_string();
                if t.is_empty() {
                    return Err(OptionsError::EmptyTokenFile(f.clone()));
                }
                Some(t)
            }
            (None, None) => None,
        };
        let mut portal_ports: Vec<u16> = self.portal_ports.iter().map(|p| p.get()).collect();
        if let Some(c) = self.captive.listen {
            // Clients that have not paid must reach it.
            if !portal_ports.contains(&c.port()) {
                portal_ports.push(c.port());
            }
        }
        let api = ApiOptions {
            socket: Some(self.api.socket.clone()),
            tcp: self.api.tcp,
            token,
            tls: self.api.api_tls.then(|| crate::web::tls::TlsFiles {
                cert: self.admin.admin_cert.clone(),
                key: self.admin.admin_key.clone(),
            }),
            metrics_top_clients: self.api.metrics_top_clients,
        };
        api.validate()?;
        let portal = PortalOptions {
            listen: self.captive.listen,
            portal_url: self
                .captive
                .portal_url
                .clone()
                .map(|u| u.0)
                .or_else(|| builtin_portal_url(self.captive.listen)),
            texts: match &self.captive.portal_texts {
                Some(path) => Arc::new(crate::portal::PortalTexts::load(path)?),
                None => Arc::default(),
            },
            vouchers: self.vouchers.backend,
        };
        if self.vouchers.backend == crate::portal::VoucherBackend::Radius
            && self.radius.auth_servers.is_empty()
        {
            return Err(OptionsError::VouchersWithoutRadius);
        }
        let admin = crate::admin::AdminOptions {
            listen: self.admin.admin_listen,
            tls: (!self.admin.admin_plain_http).then(|| crate::web::tls::TlsFiles {
                cert: self.admin.admin_cert.clone(),
                key: self.admin.admin_key.clone(),
            }),
            accounts: self.admin.admin_accounts.clone(),
            portal_url: portal.portal_url.clone(),
        };
        admin.validate()?;
        if let Some(a) = admin.listen {
            if portal_ports.contains(&a.port()) && !a.ip().is_loopback() {
                return Err(OptionsError::AdminOnPortalPort(a.port()));
            }
        }
        let redirect = if self.captive.redirect {
            let portal_url = portal
                .portal_url
                .clone()
                .ok_or(OptionsError::RedirectWithoutPortal)?;
            if self.ingress == IngressHook::Xdp {
                return Err(OptionsError::RedirectNeedsTc);
            }
            let c = &self.captive;
            let params = RedirectParams {
                mac: c.redirect_param_mac.clone(),
                ip: c.redirect_param_ip.clone(),
                url: c.redirect_param_url.clone(),
            };
            params.check().map_err(OptionsError::RedirectParams)?;
            Some(RedirectOptions {
                port: c.redirect_port.get(),
                mark: c.redirect_mark.get() as u32,
                table: c.redirect_table.get() as u32,
                portal_url,
                params,
            })
        } else {
            None
        };
        let (min, max) = (
            self.garden_ttl_min_secs.get(),
            self.garden_ttl_max_secs.get(),
        );
        if min > max {
            return Err(OptionsError::GardenTtl { min, max });
        }
        let names = crate::names::NameGardenOptions {
            domains: self.walled_garden_domains.clone(),
            ttl_min: Duration::from_secs(min),
            ttl_max: Duration::from_secs(max),
            limit: self.garden_domain_limit.get() as usize,
            mark: self.garden_dns_mark.get() as u32,
            // Beside the store, which keeps it as long (not with the memory store).
            state: (self.store.provider != StoreKind::Memory).then(|| {
                let mut p = self.store.path.clone().into_os_string();
                p.push(".garden-names.json");
                p.into()
            }),
        };
        // Beside the store, which keeps it as long (in memory with the memory store).
        let beside = |suffix: &str| {
            (self.store.provider != StoreKind::Memory).then(|| {
                let mut p = self.store.path.clone().into_os_string();
                p.push(suffix);
                PathBuf::from(p)
            })
        };
        let radius = self.radius.resolve(beside(".radius.redb"))?;
        Ok(RunOptions {
            radius,
            redirect,
            names,
            garden_dns: self.garden_dns.clone(),
            gateway: self.gateway(),
            lans: self.lans.into_iter().map(|l| l.0).collect(),
            garden: self.walled_garden,
            gate: GateOptions {
                anti_spoof: self.anti_spoof,
                one_address: self.one_address_per_client,
                garden_rate_kbits: self.garden_rate_kbits.get(),
                garden_pps: self.garden_pps.get(),
                garden_total_kbits: self.garden_total_kbits.get(),
                slotless_pps: self.slotless_pps.get(),
                new_clients_per_sec: self.new_clients_per_sec.get(),
            },
            portal_ports,
            pin_root: self.pin_root,
            ingress: self.ingress,
            shaper: self.shaper,
            tc_attach: self.tc_attach,
            store: self.store.provider,
            db: self.store.path,
            api,
            portal,
            admin,
            config: self.config.clone(),
            log_level: self.log_level.0,
        })
    }
}

/// `args` (from [`Options`]' `augment_args`) with each option's default, as
/// [`Options::default`] has it, at the end of its help.
pub fn with_defaults(cmd: clap::Command) -> clap::Command {
    let defaults = default_values();
    let ids: Vec<String> = cmd
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect();
    ids.into_iter()
        .fold(cmd, |cmd, id| match defaults.get(&id) {
            Some(shown) => cmd.mut_arg(&id, |a| {
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                a.help(format!("{help} [default: {shown}]"))
            }),
            None => cmd,
        })
}

/// Each option's default as the help and the README show it, by the name of
/// its field (the flag's id); options without one (none, or empty) are left out.
pub fn default_values() -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(serde_json::Value::Object(top)) = serde_json::to_value(Options::default()) else {
        return out;
    };
    let mut put = |k: &str, v: &serde_json::Value| {
        let shown = match v {
            serde_json::Value::Null => return,
            serde_json::Value::Array(a) if a.is_empty() => return,
            serde_json::Value::Array(a) => a.iter().map(show).collect::<Vec<_>>().join(","),
            v => show(v),
        };
        out.insert(k.to_string(), shown);
    };
    for (k, v) in &top {
        match v {
            serde_json::Value::Object(section) => {
                for (k, v) in section {
                    put(k, v)
                }
            }
            v => put(k, v),
        }
    }
    out
}

fn show(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Options, OptionsError> {
        Options::parse(Path::new("t.toml"), s)
    }

    #[test]
    fn full_file_parses() {
        let c = parse(
            r#"
lans = ["wlan0", "eth1"]
walled_garden = ["203.0.113.0/24:443"]
portal_ports = [80, 443]
ingress = "xdp"
shaper = "htb"
tc_attach = "netlink"
poll_ms = 200
auto_advance = false
anti_spoof = false
bind_ttl_secs = 600
voucher_move_after_secs = 30
garden_rate_kbits = 512
garden_pps = 100
[store]
provider = "redb"
path = "/tmp/x.redb"
retention_secs = 86400
[api]
socket = "/run/x.sock"
tcp = "127.0.0.1:8080"
token = "s3cret"
metrics_top_clients = 20
[captive]
listen = "10.0.0.1:8908"
portal_url = "https://portal.example/"
"#,
        )
        .unwrap();
        assert_eq!(c.lans.len(), 2);
        assert_eq!(c.api.tcp.unwrap().port(), 8080);
        assert_eq!(c.store.retention_secs, 86400);
        assert_eq!(c.store.provider, StoreKind::Redb);
        assert_eq!(c.poll_ms.get(), 200);
        assert_eq!(c.commit_ms.get(), 1000, "a missing key keeps its default");
        assert_eq!(
            c.gateway().voucher_move_after,
            Duration::from_secs(30),
            "voucher_move_after_secs"
        );
        assert_eq!(
            parse("").unwrap().gateway().voucher_move_after,
            Duration::from_secs(120)
        );
    }

    /// The error as `session-agent` prints it.
    fn error(text: &str) -> String {
        parse(text).expect_err("refused").to_string()
    }

    #[test]
    fn a_value_out_of_range_is_refused_at_its_line_and_column_with_the_range() {
        assert_eq!(
            error("lans = [\"lan0\"]\n\npoll_ms = 5\n"),
            "t.toml:3:11: poll_ms: 5 is out of range, allowed 10..=10000"
        );
        assert_eq!(
            error("[radius]\n  retries = -1\n"),
            "t.toml:2:13: radius.retries: -1 is out of range, allowed 0..=10"
        );
    }

    #[test]
    fn an_unknown_key_in_a_table_is_refused_at_its_line_with_the_known_keys() {
        assert_eq!(
            error("poll_ms = 100\n[api]\nsokcet = \"/run/x.sock\"\n"),
            "t.toml:3:1: api.sokcet: unknown field `sokcet`, expected one of `socket`, `tcp`, `token`, `token_file`, `api_tls`, `metrics_top_clients`"
        );
    }

    #[test]
    fn a_value_toml_cannot_read_is_refused_at_its_line_with_the_key_and_what_it_allows() {
        assert_eq!(
            error("# speeds\nburst_ms = 25O\n"),
            "t.toml:2:14: burst_ms: cannot read `25O` (expected newline, `#`); allowed: a whole number in 1..=10000"
        );
        // Behind it, a comment.
        assert_eq!(
            error("poll_ms = 25O # ms\n"),
            "t.toml:1:13: poll_ms: cannot read `25O` (expected newline, `#`); allowed: a whole number in 10..=10000"
        );
        // In a table, and in an array that spans lines.
        assert_eq!(
            error("[captive]\nredirect_mark = 0x5e55g\n"),
            "t.toml:2:23: captive.redirect_mark: cannot read `0x5e55g` (expected newline, `#`); allowed: a whole number in 1..=4294967295"
        );
        assert_eq!(
            error("lans = [\n  \"lan0\",\n  lan1,\n]\n"),
            "t.toml:3:3: lans: invalid array; allowed: a sequence"
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_is_refused_at_its_line_with_what_the_key_allows() {
        assert_eq!(
            error("poll_ms = \"fast\"\n"),
            "t.toml:1:11: poll_ms: invalid type: string \"fast\", expected a whole number in 10..=10000"
        );
        assert_eq!(
            error("lans = [\"lan0\"]\ningress = 1\n"),
            "t.toml:2:11: ingress: wanted string or table; allowed: `tc` or `xdp`"
        );
        assert_eq!(
            error("[api]\ntcp = 8080\n"),
            "t.toml:2:7: api.tcp: invalid type: integer `8080`, expected socket address"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("poll_ms = 100\n[api]\nsockets = \"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("api") && e.contains("sockets"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = parse("poll_ms = \"fast\"\n").unwrap_err().to_string();
        assert!(e.contains("poll_ms"), "{e}");
        let e = parse("[api]\ntcp = \"nope\"\n").unwrap_err().to_string();
        assert!(e.contains("api.tcp"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = parse("shaper = \"tbf\"\n").unwrap_err().to_string();
        assert!(e.contains("shaper") && e.contains("htb"), "{e}");
        let e = parse("poll_ms = 5\n").unwrap_err().to_string();
        assert!(e.contains("poll_ms") && e.contains("10..=10000"), "{e}");
        let e = parse("[store]\nprovider = \"sqlite\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("store.provider"), "{e}");
        let e = parse("walled_garden = [\"nonsense\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("walled_garden"), "{e}");
        let e = parse("checkpoint_secs = 0\n").unwrap_err().to_string();
        assert!(e.contains("checkpoint_secs") && e.contains("1.."), "{e}");
        let e = parse("global_down_mbits = 1000000\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("global_down_mbits"), "{e}");
        let e = parse("bind_ttl_secs = 1\n").unwrap_err().to_string();
        assert!(e.contains("bind_ttl_secs"), "{e}");
        let e = parse("garden_pps = 100000000\n").unwrap_err().to_string();
        assert!(e.contains("garden_pps"), "{e}");
        let e = parse("tc_attach = \"tc\"\n").unwrap_err().to_string();
        assert!(e.contains("tc_attach") && e.contains("netlink"), "{e}");
        let e = parse("portal_ports = [0]\n").unwrap_err().to_string();
        assert!(e.contains("portal_ports"), "{e}");
        let e = parse("lans = [\"\"]\n").unwrap_err().to_string();
        assert!(e.contains("lans"), "{e}");
        let e = parse("[captive]\nportal_url = \"portal\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("captive.portal_url") && e.contains("http"),
            "{e}"
        );
        let e = parse("[api]\ntoken = \"\"\n").unwrap_err().to_string();
        assert!(e.contains("api.token"), "{e}");
        let e = parse("[api]\ntoken = \"a\"\ntoken_file = \"/f\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "t.toml:3:14: api.token_file: give api.token or api.token_file, not both"
        );
    }

    #[test]
    fn a_radius_section_is_read_with_its_secret_from_the_file() {
        let dir = std::env::temp_dir().join(format!("radius-opts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, "s3cret\r\nignored\n").unwrap();
        let text = format!(
            "lans = [\"lan0\"]\n[store]\npath = \"/var/lib/x/s.redb\"\n[radius]\nauth_servers = [\"192.0.2.1:1812\"]\nacct_servers = [\"192.0.2.1:1813\"]\nsecret_file = \"{}\"\nmac_format = \"colon-lower\"\ninterim_secs = 120\n",
            secret.display()
        );
        let r = parse(&text).unwrap().resolve().unwrap();
        let radius = r.radius.expect("radius on");
        assert_eq!(radius.secret.0, b"s3cret");
        assert!(
            !format!("{radius:?}").contains("s3cret"),
            "the secret is never printed"
        );
        assert_eq!(radius.mac_format, crate::radius::MacFormat::ColonLower);
        assert_eq!(radius.interim, Duration::from_secs(120));
        assert_eq!(
            radius.book.as_deref(),
            Some(Path::new("/var/lib/x/s.redb.radius.redb"))
        );
        // A server without a secret, or with an empty one, is refused.
        let no_secret = "lans = [\"lan0\"]\n[radius]\nauth_servers = [\"192.0.2.1:1812\"]\n";
        assert!(matches!(
            parse(no_secret).unwrap().resolve(),
            Err(OptionsError::RadiusSecret)
        ));
        std::fs::write(&secret, "\n").unwrap();
        assert!(matches!(
            parse(&text).unwrap().resolve(),
            Err(OptionsError::EmptyRadiusSecret(_))
        ));
        // Without a server, RADIUS is off.
        assert!(parse("lans = [\"lan0\"]\n")
            .unwrap()
            .resolve()
            .unwrap()
            .radius
            .is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garden_names_are_read_checked_and_their_ttls_must_make_sense() {
        let r = parse("lans = [\"lan0\"]\nwalled_garden_domains = [\"Pay.Example\", \"*.cdn.example:443\"]\ngarden_dns = [\"192.0.2.53\"]\n")
            .unwrap()
            .resolve()
            .unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<String> = r.names.domains.iter().map(|d| d.to_string()).collect();
        assert_eq!(names, ["pay.example", "*.cdn.example:443"]);
        assert_eq!(r.garden_dns, vec!["192.0.2.53".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            (
                r.names.ttl_min.as_secs(),
                r.names.ttl_max.as_secs(),
                r.names.limit
            ),
            (30, 3600, 4096)
        );
        let e = parse("walled_garden_domains = [\"a b\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("walled_garden_domains") && e.contains("garden name"),
            "{e}"
        );
        let e = parse("lans = [\"lan0\"]\ngarden_ttl_min_secs = 100\ngarden_ttl_max_secs = 10\n")
            .unwrap()
            .resolve()
            .err()
            .expect("a floor above the ceiling")
            .to_string();
        assert!(e.contains("garden_ttl_min_secs"), "{e}");
        let e = parse("garden_domain_limit = 70000\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("garden_domain_limit"), "{e}");
    }

    #[test]
    fn the_portal_redirect_is_refused_without_a_portal_with_xdp_or_with_odd_names() {
        let resolve = |text: &str| {
            parse(&format!("lans = [\"lan0\"]\n{text}"))
                .unwrap()
                .resolve()
        };
        let refused = |text: &str| match resolve(text) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{text} was taken"),
        };
        let e = refused("[captive]\nredirect = true\n");
        assert!(
            e.contains("--portal-url") && e.contains("--captive-listen"),
            "{e}"
        );
        let e = refused(
            "ingress = \"xdp\"\n[captive]\nredirect = true\nportal_url = \"http://p.test/\"\n",
        );
        assert!(e.contains("--ingress tc"), "{e}");
        let e = refused("[captive]\nredirect = true\nlisten = \"10.0.0.1:8908\"\nredirect_param_url = \"a&b\"\n");
        assert!(e.contains("captive.redirect_param_url"), "{e}");
        let e = parse("[captive]\nredirect_mark = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("captive.redirect_mark"), "{e}");
        // With the built-in page, the redirect goes there; off, there is none.
        let Ok(r) = resolve(
            "[captive]\nredirect = true\nlisten = \"10.0.0.1:8908\"\nredirect_port = 4000\n",
        ) else {
            panic!("refused");
        };
        let r = r.redirect.expect("redirect on");
        assert_eq!(r.portal_url, "http://10.0.0.1:8908/portal");
        assert_eq!((r.port, r.mark, r.table), (4000, 0x5e55, 0x5e55));
        assert_eq!(r.params, RedirectParams::default());
        assert!(resolve("").is_ok_and(|r| r.redirect.is_none()));
    }

    /// Each part's defaults live beside it; the options read them, so that
    /// `run` with nothing set runs every part on its own defaults.
    #[test]
    fn the_library_defaults_are_the_options_defaults() {
        let o = Options {
            lans: vec!["lan0".parse().unwrap()],
            ..Options::default()
        };
        assert_eq!(o.gateway(), GatewayConfig::default());
        let r = o.resolve().unwrap();
        assert_eq!(r.gateway, GatewayConfig::default());
        assert_eq!(r.gate, GateOptions::default());
        let api = ApiOptions::default();
        assert_eq!(
            (
                &r.api.socket,
                r.api.tcp,
                &r.api.token,
                r.api.metrics_top_clients
            ),
            (&api.socket, api.tcp, &api.token, api.metrics_top_clients)
        );
        let portal = PortalOptions::default();
        assert_eq!(
            (r.portal.listen, &r.portal.portal_url),
            (portal.listen, &portal.portal_url)
        );
        assert_eq!(r.portal.texts.name, portal.texts.name);
        let names = NameGardenOptions {
            state: r.names.state.clone(),
            ..NameGardenOptions::default()
        };
        assert_eq!(r.names, names);
        assert_eq!(
            (r.store, r.db.to_str()),
            (StoreKind::default(), Some(DEFAULT_DB))
        );
        assert!(r.radius.is_none() && r.redirect.is_none());
        // With a server and a secret, RADIUS runs on its own defaults.
        let secret = std::env::temp_dir().join(format!("radius-defaults-{}", std::process::id()));
        std::fs::write(&secret, "s\n").unwrap();
        let with = RadiusSection {
            auth_servers: vec!["127.0.0.1:1812".parse().unwrap()],
            secret_file: Some(secret),
            ..RadiusSection::default()
        };
        let got = with.resolve(None).unwrap().unwrap();
        std::fs::remove_file(with.secret_file.unwrap()).unwrap();
        let want = RadiusOptions {
            auth_servers: got.auth_servers.clone(),
            secret: got.secret.clone(),
            coa_clients: got.coa_clients.clone(),
            ..RadiusOptions::default()
        };
        assert_eq!(format!("{got:?}"), format!("{want:?}"));
        // And the redirect on the responder's.
        let r = Options {
            lans: vec!["lan0".parse().unwrap()],
            captive: CaptiveSection {
                redirect: true,
                portal_url: Some(HttpUrl("http://portal.example/".into())),
                ..CaptiveSection::default()
            },
            ..Options::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            r.redirect,
            Some(RedirectOptions::new("http://portal.example/".into()))
        );
    }
}
