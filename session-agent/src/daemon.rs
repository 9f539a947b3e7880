//! `session-agent run`: attach to the LAN interfaces, set up the walled garden,
//! open the session store, reconcile it with the datapath, then poll, follow
//! datapath events and serve the control API until asked to stop.

use std::{io::Write, net::IpAddr, path::PathBuf, sync::Arc};

use aya::maps::RingBuf;
use session_common::*;
use session_model::{open_store, SessionsMgr, StoreConfig, SystemClock};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};
use tracing::{info, warn};

use crate::{
    api::ApiOptions,
    dataplane::{
        self,
        attach::{self, IngressHook, TcAttach},
        shape::{self, Shaper},
        Maps,
    },
    error::{AgentError, Result},
    garden::GardenEntry,
    gateway::{Gateway, GatewayConfig, Lan},
    iface,
    portal::{PortalOptions, RedirectOptions},
    services::Services,
};

/// Who gets through before paying, and with which addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateOptions {
    /// Bind client addresses to MACs and drop spoofed ones.
    pub anti_spoof: bool,
    /// A paying client sends from one IPv4 address at a time (with `anti_spoof`).
    pub one_address: bool,
    /// Walled-garden limit per client and direction before payment (0 = none).
    pub garden_rate_kbits: u64,
    pub garden_pps: u64,
    /// The garden limit of all unpaid clients together (0 = none).
    pub garden_total_kbits: u64,
    /// Frames per second all MACs without a slot share (0 = unlimited).
    pub slotless_pps: u64,
    /// New clients per second that take a slot (0 = unlimited).
    pub new_clients_per_sec: u64,
}

/// The session stores the agent can run on.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In memory only: nothing survives a restart.
    Memory,
    /// One redb database file, every write committed.
    Redb,
    /// redb with a write-ahead log beside it: usage is logged, folded in at checkpoints.
    #[default]
    Hybrid,
}

impl StoreKind {
    /// The name `session_model::open_store` knows it by.
    pub fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redb => "redb",
            Self::Hybrid => "hybrid",
        }
    }
}

/// The defaults of `session-agent run` (its options take theirs from here).
impl Default for GateOptions {
    fn default() -> Self {
        Self {
            anti_spoof: true,
            one_address: true,
            garden_rate_kbits: 256,
            garden_pps: 50,
            garden_total_kbits: 4096,
            slotless_pps: 100,
            new_clients_per_sec: 500,
        }
    }
}

/// The session store's file unless configured.
pub const DEFAULT_DB: &str = "/var/lib/session-agent/sessions.redb";

/// What the daemon runs with (the options resolve to it).
pub struct RunOptions {
    pub lans: Vec<String>,
    pub garden: Vec<GardenEntry>,
    pub gate: GateOptions,
    pub portal_ports: Vec<u16>,
    pub pin_root: PathBuf,
    pub ingress: IngressHook,
    /// How speed limits are enforced.
    pub shaper: Shaper,
    pub tc_attach: TcAttach,
    /// The session store.
    pub store: StoreKind,
    /// The store's database file (redb, hybrid).
    pub db: PathBuf,
    pub gateway: GatewayConfig,
    pub api: ApiOptions,
    /// The captive listener: the RFC 8908 API and the portal page.
    pub portal: PortalOptions,
    /// The operator's page.
    pub admin: crate::admin::AdminOptions,
    /// The configuration file read at start and at each reload, if any.
    pub config: Option<PathBuf>,
    /// What is logged (a `tracing` filter; `RUST_LOG` wins).
    pub log_level: String,
    /// Clients that have not paid are sent to the portal.
    pub redirect: Option<RedirectOptions>,
    /// The walled garden by domain name.
    pub names: crate::names::NameGardenOptions,
    /// DNS servers clients may use before paying, besides the gateway.
    pub garden_dns: Vec<IpAddr>,
    /// RADIUS logins and accounting.
    pub radius: Option<crate::radius::RadiusOptions>,
}

/// Reads the configuration again, as `run` read it at start (SIGHUP).
pub type Reloader = Box<dyn Fn() -> anyhow::Result<RunOptions> + Send + Sync>;

/// The file the operator page's settings are written into (the
/// configuration file `reload` reads).
pub type Settings = Option<Arc<dyn crate::admin::settings::SettingsFile>>;

pub async fn run(
    opts: RunOptions,
    reload: Option<Reloader>,
    settings: Settings,
) -> anyhow::Result<()> {
    if opts.shaper == Shaper::Htb && opts.ingress == IngressHook::Xdp {
        return Err(AgentError::ShaperNeedsTc.into());
    }
    // Validate every interface before touching any, so a typo changes nothing.
    for lan in &opts.lans {
        iface::index(lan)?;
    }
    let store = open_session_store(opts.store.name(), &opts.db)?;
    // The operator page asks for reloads here, as SIGHUP does.
    let (page_reload, mut page_reloads) = tokio::sync::mpsc::channel::<()>(1);
    // Every listener is bound before anything is attached (the store, opened
    // first, keeps a second agent from taking the first one's socket).
    let api_listeners = crate::api::bind(&opts.api).await?;
    let portal_listener = crate::portal::bind(&opts.portal).await?;
    let admin_listener = crate::admin::bind(&opts.admin).await?;
    let mgr = Arc::new(SessionsMgr::new(store, Arc::new(SystemClock)));
    // Always known, so sessions a RADIUS login made stay readable without RADIUS.
    mgr.register_session_provider(
        crate::radius::PROVIDER,
        Arc::new(crate::radius::RadiusProvider),
    )?;
    let mut lans = Vec::new();
    let mut rings = Vec::new();
    let mut held_rings = Vec::new();
    let mut garden_hosts = Vec::new();
    // The programs and their maps, kept for as long as the agent runs (a reload
    // writes the walled garden through them).
    let mut attached = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    // What serves clients and operators: one that stops ends the agent with an error.
    let mut servers: tokio::task::JoinSet<Result<()>> = tokio::task::JoinSet::new();
    // The responder listens and the routing rule is in place before any LAN
    // steers a packet to them.
    let redirect_listeners = match &opts.redirect {
        Some(r) => {
            crate::netlink::route_marked_locally(r.mark, r.table, &opts.lans)?;
            let l = crate::portal::redirect::listen(r)?;
            info!(port = r.port, mark = r.mark, table = r.table, portal = %r.portal_url, "portal redirect on: clients that have not paid are sent to the portal");
            l
        }
        None => Vec::new(),
    };
    for lan in &opts.lans {
        // One mapping of the client table for every LAN.
        let first = lans
            .first()
            .map(|l: &Lan| l.maps.lock().unwrap_or_else(|e| e.into_inner()));
        let (mut a, maps) = attach::attach(
            &opts.pin_root,
            lan,
            opts.ingress,
            opts.tc_attach,
            first.as_deref(),
        )?;
        drop(first);
        let entries = garden_for(lan, &iface::addresses(lan)?, &opts);
        dataplane::write_garden(&mut a.ebpf, &entries)?;
        let local = iface::gateway_addresses(lan)?;
        maps.set_lan(&lan_config(
            iface::index(lan)?,
            iface::mac(lan)?,
            &local,
            &opts.portal_ports,
            &opts.gate,
            opts.redirect.as_ref(),
            None,
        ));
        maps.set_gate(&gate_limits(&opts.gate));
        maps.set_bind_ttl(opts.gateway.bind_ttl);
        set_up_shaper(&maps, lan, opts.shaper)?;
        info!(lan = %lan, dir = %a.dir.display(), ingress = ?opts.ingress, tc = ?a.tc, shaper = ?opts.shaper, garden = entries.len(), "datapath attached");
        match aya_log::EbpfLogger::init(&mut a.ebpf) {
            Ok(logger) => {
                let mut fd = watch(logger, "watching the datapath log")?;
                tasks.spawn(async move {
                    loop {
                        let Ok(mut guard) = fd.readable_mut().await else {
                            break;
                        };
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                });
            }
            Err(e) => warn!("datapath log unavailable: {e}"),
        }
        let events = a.ebpf.take_map(MAP_EVENTS).ok_or_else(|| AgentError::Bpf {
            what: MAP_EVENTS.into(),
            message: "map missing from the object".into(),
        })?;
        let ring =
            RingBuf::try_from(events).map_err(|e| AgentError::bpf("opening the event ring", e))?;
        rings.push((lan.clone(), watch(ring, "watching the event ring")?));
        let take = |a: &mut attach::Attached, name: &str| {
            a.ebpf.take_map(name).ok_or_else(|| AgentError::Bpf {
                what: name.into(),
                message: "map missing from the object".into(),
            })
        };
        let held = RingBuf::try_from(take(&mut a, MAP_DNS_HELD)?)
            .map_err(|e| AgentError::bpf("opening the ring of held DNS answers", e))?;
        held_rings.push(watch(held, "watching the ring of held DNS answers")?);
        let hosts = aya::maps::HashMap::try_from(take(&mut a, MAP_GARDEN_HOSTS)?)
            .map_err(|e| AgentError::bpf("opening the learnt garden addresses", e))?;
        garden_hosts.push((lan.clone(), hosts));
        attached.push(a);
        lans.push(Lan {
            name: lan.clone(),
            maps: std::sync::Mutex::new(maps),
        });
    }
    // A LAN left out of --lan keeps its programs, which serve its clients
    // from the shared client table, until it is detached.
    if let Ok(attached) = Maps::attached_interfaces(&opts.pin_root) {
        for other in attached.iter().filter(|a| !opts.lans.contains(a)) {
            warn!(lan = %other, "still attached from an earlier run: its clients are served and counted as before; `session-agent detach --lan {other}` removes it");
        }
    }
    // Every LAN is gated by the datapath now: what kept them closed since boot goes.
    if crate::nftables::open_lans()? {
        info!(
            table = crate::nftables::CLOSED_LANS_TABLE,
            "the LANs forward again through the datapath (they were closed since boot)"
        );
    }
    let gateway = Gateway::new(mgr.clone(), lans, opts.gateway.clone());
    let names = Arc::new(crate::names::NameGarden::new(
        opts.names.clone(),
        garden_hosts,
    )?);
    names.update_dns_snoop(gateway.lans());
    if !opts.names.domains.is_empty() {
        info!(domains = opts.names.domains.len(), "walled garden by name on: DNS answers to clients that have not paid are held until their garden addresses are learnt");
    }
    for (i, fd) in held_rings.into_iter().enumerate() {
        let names = names.clone();
        // A map update and a send per answer: short, but syscalls.
        tasks.spawn(drain(fd, move |item| {
            names.answer(i, item, dataplane::ktime_ns())
        }));
    }
    {
        let names = names.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                let names = names.clone();
                if tokio::task::spawn_blocking(move || names.sweep(dataplane::coarse_ns()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
    }
    gateway.set_metrics_top_clients(opts.api.metrics_top_clients);
    gateway.reconcile().await?;
    let radius = match &opts.radius {
        Some(r) => {
            let lan_mac = iface::mac(&opts.lans[0])?;
            let radius = crate::radius::Radius::open(r.clone(), lan_mac)?;
            radius.start(&gateway).await?;
            // Each writes the accounting book (a redb commit): threads of their own.
            for job in [0, 1] {
                let (radius, gw) = (radius.clone(), gateway.clone());
                let rt = tokio::runtime::Handle::current();
                tasks.spawn_blocking(move || match job {
                    0 => rt.block_on(radius.keep_books(gw)),
                    _ => rt.block_on(radius.send_accounting(gw)),
                });
            }
            tasks.spawn(radius.clone().follow_events(gateway.clone()));
            if r.mac_auth {
                tasks.spawn(radius.clone().follow_new_clients(gateway.clone()));
            }
            if let Some(addr) = r.coa_listen {
                let sock = tokio::net::UdpSocket::bind(addr).await.map_err(|e| {
                    AgentError::listen(
                        "RADIUS Disconnect and CoA requests",
                        addr,
                        Some(addr.port()),
                        "--radius-coa-listen (radius.coa_listen)",
                        &[],
                        e,
                    )
                })?;
                info!(%addr, clients = ?r.coa_clients, "RADIUS Disconnect and CoA requests taken");
                tasks.spawn(radius.clone().serve_coa(gateway.clone(), sock));
            }
            info!(auth = ?r.auth_servers, acct = ?r.acct_servers, nas = %r.nas_identifier, "RADIUS on: portal logins and accounting");
            Some(radius)
        }
        None => None,
    };
    let services = Services {
        names: Some(names.clone()),
        radius: radius.clone(),
        ..Services::new(gateway.clone())
    };
    if let Some(r) = &opts.redirect {
        let (gw, r) = (gateway.clone(), r.clone());
        servers.spawn(async move {
            crate::portal::redirect::serve(gw, r, redirect_listeners).await?;
            Err(stopped("the portal redirect"))
        });
    }
    for (lan_name, fd) in rings {
        let gw = gateway.clone();
        // A new client is a store write: off the worker's async duty.
        tasks.spawn(drain(fd, move |item| handle_event(&gw, &lan_name, item)));
    }
    // The poll has a thread of its own: its store writes never hold up the
    // API, and the API's never delay a poll.
    let rt = tokio::runtime::Handle::current();
    let poller = gateway.clone();
    tasks.spawn_blocking(move || rt.block_on(poller.run_loop()));
    let mut session_events = gateway.session_events();
    tasks.spawn(async move {
        loop {
            match session_events.recv().await {
                Ok(e) => info!(event = ?e, "session"),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    warn!("{n} session events not logged")
                }
                Err(_) => break,
            }
        }
    });
    // The API's listeners were bound above: a caller may use them once READY is said.
    {
        let api = services.api(opts.api.clone());
        servers.spawn(async move {
            crate::api::serve(api, api_listeners).await?;
            Err(stopped("the control API"))
        });
        let ((desk, radius), portal) = (services.portal(), opts.portal.clone());
        servers.spawn(async move {
            crate::portal::serve(desk, radius, portal, portal_listener).await?;
            Err(stopped("the captive-portal API and portal page"))
        });
        // The charts' history, kept while the page is on.
        let history = match opts.admin.listen {
            Some(_) => {
                let h =
                    crate::history::History::open(gateway.clone(), chrono::Utc::now().timestamp())?;
                tasks.spawn(h.clone().run());
                Some(h)
            }
            None => None,
        };
        let admin = opts.admin.state(
            gateway.clone(),
            history,
            settings.filter(|_| reload.is_some()),
            Some(page_reload.clone()),
        );
        servers.spawn(async move {
            crate::admin::serve(admin, admin_listener).await?;
            Err(stopped("the operator page"))
        });
    }
    // Handlers first: a supervisor may stop the agent the moment it is ready,
    // and a stop must still charge the last usage and checkpoint.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    println!("READY");
    std::io::stdout().flush().ok();
    crate::systemd::ready(&format!(
        "serving {} LAN(s): {}",
        opts.lans.len(),
        opts.lans.join(", ")
    ));

    let mut current = opts;
    // Why the agent stops on its own: it then exits with this error.
    let mut failure: Option<anyhow::Error> = None;
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: stopping; the datapath stays attached and keeps enforcing"); break }
            _ = int.recv() => { info!("SIGINT: stopping; the datapath stays attached and keeps enforcing"); break }
            _ = hup.recv() => {
                current = reload_now(&reload, &services, &mut attached, current, "SIGHUP");
            }
            Some(()) = page_reloads.recv() => {
                current = reload_now(&reload, &services, &mut attached, current, "the operator page");
            }
            Some(r) = tasks.join_next() => {
                failure = Some(match r {
                    Err(e) => anyhow::anyhow!("a task of the agent ended ({e}): the agent stops, for its service manager to start it again"),
                    Ok(()) => anyhow::anyhow!("a task of the agent ended: the agent stops, for its service manager to start it again"),
                });
                break
            }
            Some(r) = servers.join_next() => {
                failure = Some(match r {
                    Ok(Err(e)) => e.into(),
                    Ok(Ok(())) => stopped("a listener").into(),
                    Err(e) => anyhow::anyhow!("a listener's task ended ({e})"),
                });
                break
            }
        }
    }
    crate::systemd::stopping();
    servers.shutdown().await;
    if let Some(r) = &radius {
        r.stop(&gateway).await;
    }
    gateway.stop();
    // Nobody sends held answers on from now: let them pass unheld.
    names.set_dns_snoop(gateway.lans(), false);
    tasks.shutdown().await;
    // Charge what was counted since the last poll and make it durable.
    gateway.poll().await?;
    mgr.checkpoint()?;
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Reads the configuration again and applies it (SIGHUP, or the operator
/// page's settings); returns the options now in force.
fn reload_now(
    reload: &Option<Reloader>,
    services: &Services,
    attached: &mut [attach::Attached],
    current: RunOptions,
    why: &str,
) -> RunOptions {
    crate::systemd::reloading();
    let out = match reload {
        Some(read) => match read() {
            Ok(new) => {
                tokio::task::block_in_place(|| apply_reload(services, attached, current, new))
            }
            Err(e) => {
                warn!("{why}: the configuration was not reloaded, nothing changed: {e:#}");
                current
            }
        },
        None => {
            warn!("{why}: this agent was started without a configuration to read again");
            current
        }
    };
    crate::systemd::ready("reloaded");
    out
}

/// A server that returned although it serves until it is dropped.
fn stopped(what: &str) -> AgentError {
    AgentError::Io {
        what: what.into(),
        source: std::io::Error::other("stopped serving"),
    }
}

/// Applies what a reload may change and names what it may not; returns the
/// options now in force.
fn apply_reload(
    services: &Services,
    attached: &mut [attach::Attached],
    mut cur: RunOptions,
    new: RunOptions,
) -> RunOptions {
    let gw = &services.gateway;
    let mut restart: Vec<&str> = Vec::new();
    let mut changed: Vec<&str> = Vec::new();
    macro_rules! needs_restart {
        ($($field:ident $(.$sub:ident)* => $name:literal),* $(,)?) => {$(
            if new.$field$(.$sub)* != cur.$field$(.$sub)* {
                restart.push($name);
            }
        )*};
    }
    needs_restart! {
        lans => "lans",
        pin_root => "pin_root",
        ingress => "ingress",
        shaper => "shaper",
        tc_attach => "tc_attach",
        store => "store.provider",
        db => "store.path",
        api.socket => "api.socket",
        api.tcp => "api.tcp",
        api.token => "api.token",
        api.tls => "api.api_tls",
        admin => "admin.*",
        portal.listen => "captive.listen",
        portal.portal_url => "captive.portal_url",
        redirect => "captive.redirect*",
        radius => "radius.*",
    }
    if new.portal.texts.name != cur.portal.texts.name
        || new.portal.texts.lang != cur.portal.texts.lang
    {
        restart.push("captive.portal_texts");
    }
    let garden_changed = new.garden != cur.garden
        || new.portal_ports != cur.portal_ports
        || new.garden_dns != cur.garden_dns;
    if garden_changed {
        let mut ok = true;
        for a in attached.iter_mut() {
            let addrs = iface::addresses(&a.iface).unwrap_or_default();
            let entries = garden_for(&a.iface, &addrs, &new);
            if let Err(e) = dataplane::write_garden(&mut a.ebpf, &entries) {
                warn!(lan = %a.iface, "reload: writing the walled garden failed: {e}");
                ok = false;
            }
        }
        for lan in gw.lans() {
            if let Ok(m) = lan.maps.lock() {
                m.set_portal_ports(&new.portal_ports);
            }
        }
        if ok {
            cur.garden = new.garden.clone();
            cur.portal_ports = new.portal_ports.clone();
            cur.garden_dns = new.garden_dns.clone();
            changed.push("walled_garden");
        }
    }
    if new.gate != cur.gate {
        for lan in gw.lans() {
            let (Ok(local), Ok(mac), Ok(m)) = (
                iface::gateway_addresses(&lan.name),
                iface::mac(&lan.name),
                lan.maps.lock(),
            ) else {
                continue;
            };
            let was = m.lan();
            let mut cfg = lan_config(
                was.lan_id,
                mac,
                &local,
                &cur.portal_ports,
                &new.gate,
                cur.redirect.as_ref(),
                services.names.as_ref().and_then(|n| n.dns_snoop_mark()),
            );
            // The gateway's, which it keeps telling the datapath.
            cfg.bind_ttl_ms = was.bind_ttl_ms;
            m.set_lan(&cfg);
            m.set_gate(&gate_limits(&new.gate));
        }
        cur.gate = new.gate;
        changed.push("gate");
    }
    if new.names.domains != cur.names.domains {
        // Names added through the API stay unless the file drops them.
        if let Some(names) = &services.names {
            if let Err(e) = names.set_configured(&new.names.domains) {
                warn!("reload: the garden names were not all applied: {e}");
            }
            names.update_dns_snoop(gw.lans());
        }
        cur.names.domains = new.names.domains.clone();
        changed.push("walled_garden_domains");
    }
    let mut other_names = new.names.clone();
    other_names.domains = cur.names.domains.clone();
    if other_names != cur.names {
        restart.push("garden_ttl_*_secs, garden_domain_limit, garden_dns_mark");
    }
    // Applied last, so that this reload's own lines are still written.
    let log_changed = new.log_level != cur.log_level;
    if log_changed {
        changed.push("log_level");
    }
    if new.api.metrics_top_clients != cur.api.metrics_top_clients {
        gw.set_metrics_top_clients(new.api.metrics_top_clients);
        cur.api.metrics_top_clients = new.api.metrics_top_clients;
        changed.push("api.metrics_top_clients");
    }
    if new.gateway != cur.gateway {
        restart.extend(gw.reconfigure(&new.gateway));
        let poll = cur.gateway.poll_interval;
        cur.gateway = new.gateway.clone();
        cur.gateway.poll_interval = poll;
        changed.push("gateway");
    }
    if !restart.is_empty() {
        warn!(settings = %restart.join(", "), "reload: these settings changed but only a restart applies them; they stay as they were");
    }
    info!(changed = %changed.join(", "), "configuration reloaded");
    if log_changed {
        crate::logging::set_filter(&new.log_level);
        cur.log_level = new.log_level;
    }
    cur
}

/// Puts the LAN's speed limits in `mode`: HTB qdiscs and the IFB device made
/// before the datapath uses them, or removed after it stopped.
fn set_up_shaper(maps: &Maps, lan: &str, mode: Shaper) -> Result<()> {
    match mode {
        Shaper::Htb => {
            let ifb = shape::setup(lan)?;
            maps.set_shaper(Shaper::Htb, ifb)
        }
        Shaper::Police => {
            let was = maps.shaper()?;
            maps.set_shaper(Shaper::Police, 0)?;
            if was == Shaper::Htb || shape::ifb_exists(lan) {
                shape::teardown(lan)?;
            }
            Ok(())
        }
    }
}

/// Opens the session store, creating the database's directory if needed.
fn open_session_store(
    name: &str,
    db: &std::path::Path,
) -> Result<Arc<dyn session_model::SessionStore>> {
    if name != "memory" {
        if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| AgentError::file(format!("creating {}", dir.display()), e))?;
        }
    }
    open_store(name, &StoreConfig::at(db)).map_err(|e| AgentError::Store {
        what: format!("opening the {name} store at {}", db.display()),
        source: e.into(),
    })
}

/// Registers a map-backed ring (which owns its fd for its whole life) with tokio.
/// Hands each item of a ring to `each` as it comes, on a blocking section of
/// the worker (its work may be syscalls or store writes).
async fn drain(mut fd: AsyncFd<RingBuf<aya::maps::MapData>>, mut each: impl FnMut(&[u8])) {
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            break;
        };
        tokio::task::block_in_place(|| {
            while let Some(item) = guard.get_inner_mut().next() {
                each(&item);
            }
        });
        guard.clear_ready();
    }
}

fn watch<T: std::os::fd::AsRawFd>(inner: T, what: &str) -> Result<AsyncFd<T>> {
    // SAFETY: `inner` owns the fd and keeps it open, unchanged, until it is dropped with the AsyncFd.
    unsafe { AsyncFd::register(inner) }.map_err(|e| AgentError::from_io(what, e.into()))
}

fn handle_event(gw: &Gateway, lan: &str, bytes: &[u8]) {
    if bytes.len() < size_of::<ClientEvent>() {
        warn!(lan, len = bytes.len(), "short datapath event");
        return;
    }
    // SAFETY: `bytes` holds at least a ClientEvent (checked above), a repr(C)
    // type of plain integers for which every bit pattern is valid.
    let ev: ClientEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    match ev.kind() {
        Ok(EventKind::NewClient) => {
            // Debug: a flood of MACs brings up to --new-clients-per-sec of
            // these a second (the table's pressure is an info event).
            tracing::debug!(lan, mac = %ev.mac, slot = ev.slot, "new client");
            gw.client_seen(lan, ev.mac);
        }
        Ok(EventKind::QuotaExhausted) => {
            info!(lan, mac = %ev.mac, slot = ev.slot, "data budget used up");
            gw.quota_exhausted(lan, ev.mac);
        }
        Ok(EventKind::AddrBound) => gw.addr_bound(lan, ev.mac, dataplane::addr_of(&ev.addr)),
        Ok(EventKind::MacConflict) => gw.mac_conflict(lan, ev.mac, dataplane::addr_of(&ev.addr)),
        Ok(EventKind::TableFull) => {
            warn!(lan, mac = %ev.mac, "client table full ({MAX_CLIENTS}); new clients stay blocked")
        }
        Err(k) => warn!(
            lan,
            kind = k,
            "unknown datapath event: the programs attached are of another version"
        ),
    }
}

/// The walled garden of one LAN: the gateway's own services on its
/// addresses (DHCP, DNS, the portal), then the operator's entries.
pub fn garden_for(lan: &str, addrs: &[IpAddr], opts: &RunOptions) -> Vec<GardenEntry> {
    let mut out = gateway_services(addrs, &opts.portal_ports);
    if addrs.is_empty() {
        warn!(lan, "the interface has no IP address: DNS and the portal on the gateway are not reachable for blocked clients");
    }
    out.extend(opts.garden.iter().copied());
    out.extend(
        opts.garden_dns
            .iter()
            .map(|a| GardenEntry::dns_server(*a, false)),
    );
    out
}

/// The gateway's services that clients reach before paying: DHCPv4 to its
/// addresses or the limited broadcast, DHCPv6 to All_DHCP_Relay_Agents_and_Servers
/// or its link-local addresses, DNS (TCP and UDP) and the portal ports (TCP)
/// on its addresses.
pub fn gateway_services(addrs: &[IpAddr], portal_ports: &[u16]) -> Vec<GardenEntry> {
    use crate::garden::GardenProto::{Tcp, Udp};
    let mut out = vec![
        GardenEntry::service(std::net::Ipv4Addr::BROADCAST.into(), 67, Udp),
        GardenEntry::service(
            std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2).into(),
            547,
            Udp,
        ),
    ];
    for &addr in addrs {
        if matches!(addr, IpAddr::V6(a) if a.is_multicast()) {
            continue;
        }
        match addr {
            IpAddr::V4(_) => out.push(GardenEntry::service(addr, 67, Udp)),
            IpAddr::V6(a) if a.is_unicast_link_local() => {
                out.push(GardenEntry::service(addr, 547, Udp))
            }
            IpAddr::V6(_) => {}
        }
        out.push(GardenEntry::dns_server(addr, true));
        for &p in portal_ports {
            out.push(GardenEntry::service(addr, p, Tcp));
        }
    }
    out
}

/// What the datapath must know of its LAN: the gateway's MAC and addresses
/// ([`iface::gateway_addresses`]), anti-spoofing, the garden rate limit
/// (the binding TTL is the gateway's: [`Maps::set_bind_ttl`]).
pub fn lan_config(
    lan_id: u32,
    mac: Option<[u8; 6]>,
    addrs: &[IpAddr],
    portal_ports: &[u16],
    gate: &GateOptions,
    redirect: Option<&RedirectOptions>,
    dns_mark: Option<u32>,
) -> LanConfig {
    let mut cfg = LanConfig {
        lan_id,
        mac: mac.unwrap_or_default(),
        flags: LAN_CONFIGURED
            | match (gate.anti_spoof, gate.one_address) {
                (true, true) => LAN_ANTI_SPOOF | LAN_ONE_ADDRESS,
                (true, false) => LAN_ANTI_SPOOF,
                (false, _) => 0,
            },
        ..Default::default()
    };
    if let Some(r) = redirect {
        cfg.flags |= LAN_PORTAL_REDIRECT;
        cfg.redirect_mark = r.mark;
        cfg.redirect_port = r.port;
    }
    if let Some(mark) = dns_mark {
        cfg.flags |= LAN_DNS_SNOOP;
        cfg.dns_mark = mark;
    }
    dataplane::set_gateway_addrs(&mut cfg, addrs);
    for (slot, port) in cfg.portal_ports.iter_mut().zip(portal_ports) {
        *slot = *port;
    }
    if portal_ports.len() > LAN_PORTAL_PORTS {
        warn!(
            ports = ?&portal_ports[LAN_PORTAL_PORTS..],
            "more portal ports than the datapath knows ({LAN_PORTAL_PORTS}): a paying client's traffic with these counts as usage"
        );
    }
    if gate.garden_rate_kbits > 0 {
        let rate = gate.garden_rate_kbits * 1000 / 8;
        cfg.garden_rate_bytes = rate;
        // A second's worth: a portal page and its DNS lookups load at once.
        cfg.garden_burst_bytes = rate.max(1500);
        cfg.garden_min_cost = rate.checked_div(gate.garden_pps).unwrap_or(0);
    }
    cfg
}

/// The LAN's shared limits ([`GateBucket`]): rate and depth (a second's
/// worth, as for one client's garden) of each; 0 = unlimited.
pub fn gate_limits(gate: &GateOptions) -> [(GateBucket, u64, u64); GATE_BUCKETS as usize] {
    let total = gate.garden_total_kbits * 1000 / 8;
    let second = |rate: u64, least: u64| (rate, rate.max(least));
    let (garden, garden_burst) = second(total, 1500);
    let (slotless, slotless_burst) = second(gate.slotless_pps, 1);
    let (new, new_burst) = second(gate.new_clients_per_sec, 1);
    [
        (GateBucket::Slotless, slotless, slotless_burst),
        (GateBucket::GardenUp, garden, garden_burst),
        (GateBucket::GardenDown, garden, garden_burst),
        (GateBucket::NewClients, new, new_burst),
    ]
}
