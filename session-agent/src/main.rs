//! session-agent: eBPF traffic metering and session service for Wi-Fi hotspot gateways.

mod config;
mod ctl;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use clap::{Parser, Subcommand};
use session_common::MacKey;

use session_agent::{
    api::{ApiOptions, DEFAULT_METRICS_TOP_CLIENTS},
    daemon,
    dataplane::{
        self,
        attach::{IngressHook, TcAttach},
        shape::Shaper,
        ClientRow, Maps, RateLimit, DEFAULT_PIN_ROOT,
    },
    error::AgentError,
    garden::GardenEntry,
    gateway::GatewayConfig,
};

#[derive(Parser)]
#[command(
    name = "session-agent",
    version,
    about = "eBPF traffic metering and session service for Wi-Fi hotspot gateways"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct PinArgs {
    /// bpffs directory holding one directory of pinned maps and links per interface.
    #[arg(long, default_value = DEFAULT_PIN_ROOT, global = true)]
    pin_root: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Attach to the client-facing interfaces and run in the foreground.
    Run(Box<RunArgs>),
    /// List known clients and their counters (reads the pinned maps; one
    /// client table serves every LAN).
    Clients {
        /// Read it through this interface's pins (default: every attached one).
        #[arg(long = "lan", value_name = "IFACE")]
        lan: Option<String>,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Let a client through the datapath, beside the sessions: a running agent
    /// leaves it so until `block`.
    Allow {
        #[arg(long, value_parser = parse_mac)]
        mac: MacKey,
        #[arg(long = "lan", value_name = "IFACE")]
        lan: Option<String>,
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Stop a client at the datapath (walled garden only). A running agent lets
    /// a device whose session runs through again at its next check: disconnect
    /// it through the API instead.
    Block {
        #[arg(long, value_parser = parse_mac)]
        mac: MacKey,
        #[arg(long = "lan", value_name = "IFACE")]
        lan: Option<String>,
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Set a client's speed limits at the datapath (0 = unlimited); with an agent
    /// running `--shaper htb`, as the client's HTB classes.
    Limit {
        #[arg(long, value_parser = parse_mac)]
        mac: MacKey,
        /// Download limit in Mbit/s.
        #[arg(long, default_value_t = 0)]
        down_mbits: u64,
        /// Upload limit in Mbit/s.
        #[arg(long, default_value_t = 0)]
        up_mbits: u64,
        /// Bucket depth in milliseconds at the limit (at least 64 KiB).
        #[arg(long, default_value_t = dataplane::DEFAULT_BURST_MS)]
        burst_ms: u64,
        #[arg(long = "lan", value_name = "IFACE")]
        lan: Option<String>,
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Remove the programs and pins from an interface.
    Detach {
        #[arg(long = "lan", required = true, value_name = "IFACE")]
        lans: Vec<String>,
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Devices known to the running agent (over its API socket).
    Devices {
        #[command(subcommand)]
        cmd: ctl::DevicesCmd,
        #[command(flatten)]
        api: ctl::ApiArgs,
    },
    /// Sessions of the running agent (over its API socket).
    Sessions {
        #[command(subcommand)]
        cmd: ctl::SessionsCmd,
        #[command(flatten)]
        api: ctl::ApiArgs,
    },
    /// Connect a device: start or resume its session (over the API socket).
    Connect {
        /// Device id.
        device: String,
        /// Notification text for the portal and the event stream.
        #[arg(long, default_value = "")]
        notification: String,
        #[command(flatten)]
        api: ctl::ApiArgs,
    },
    /// Disconnect a device and pause its session (over the API socket).
    Disconnect {
        /// Device id.
        device: String,
        #[arg(long, default_value = "")]
        notification: String,
        #[command(flatten)]
        api: ctl::ApiArgs,
    },
    /// The running agent's status (over the API socket).
    Status {
        #[command(flatten)]
        api: ctl::ApiArgs,
    },
    /// Registered session providers (over the API socket).
    Providers {
        #[command(flatten)]
        api: ctl::ApiArgs,
    },
    /// Follow the agent's events (server-sent events over the API socket).
    Events {
        /// Only events of this device.
        #[arg(long)]
        device: Option<i64>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Stop when no event arrives for this many seconds.
        #[arg(long)]
        idle_timeout_secs: Option<u64>,
        #[command(flatten)]
        api: ctl::ApiArgs,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// TOML file with any of these options (see README "Configuration"); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Client-facing interface (repeatable; required here or in the config file).
    #[arg(long = "lan", value_name = "IFACE")]
    lans: Vec<String>,
    /// Extra destination reachable before login: CIDR[:PORT] (repeatable).
    #[arg(long = "walled-garden", value_name = "CIDR[:PORT]", value_parser = parse_garden)]
    garden: Vec<GardenEntry>,
    /// Port of the captive portal on the gateway's LAN addresses (repeatable) [default: 80].
    #[arg(long = "portal-port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    portal_ports: Vec<u16>,
    /// Where upload traffic is metered [default: tc].
    #[arg(long, value_enum)]
    ingress: Option<IngressHook>,
    /// How speed limits are enforced [default: police]. `police`: token buckets in
    /// the datapath drop what exceeds the limit (no added latency, TCP retransmits).
    /// `htb`: per-client HTB classes queue it (no retransmits, queueing delay); needs
    /// --ingress tc and a kernel with IFB and HTB, and iproute2's tc and ip.
    #[arg(long, value_enum)]
    shaper: Option<Shaper>,
    /// How TC programs are attached: TCX links (Linux >= 6.6) or netlink filters on a
    /// clsact qdisc (older kernels); `auto` picks TCX where the kernel has it [default: auto].
    #[arg(long, value_enum)]
    tc_attach: Option<TcAttach>,
    /// bpffs directory holding one directory of pinned maps and links per interface
    /// [default: /sys/fs/bpf/session-agent].
    #[arg(long)]
    pin_root: Option<PathBuf>,
    /// Session store [default: hybrid].
    #[arg(long, value_parser = ["memory", "redb", "hybrid"])]
    store: Option<String>,
    /// Session database file (redb and hybrid; hybrid keeps its log beside it)
    /// [default: /var/lib/session-agent/sessions.redb].
    #[arg(long)]
    db: Option<PathBuf>,
    /// Remove sessions that ended this many seconds ago, and devices with no session
    /// that the datapath forgot (see --forget-idle-secs) and are older than that
    /// (0 = keep them) [default: 0].
    #[arg(long)]
    retention_secs: Option<u64>,
    /// Counter poll interval in milliseconds: time is enforced and consumption charged this
    /// often [default: 250].
    #[arg(long, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    poll_ms: Option<u64>,
    /// How often charged consumption is written to the store's log, in milliseconds. A crash
    /// loses none of it (it is charged again from the kernel counters); a reboot, which
    /// clears those counters, loses up to this much usage [default: 1000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    commit_ms: Option<u64>,
    /// Store checkpoint interval in seconds [default: 60].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_secs: Option<u64>,
    /// Pause a connected session after this many seconds without traffic (0 = never) [default: 0].
    #[arg(long)]
    idle_timeout_secs: Option<u64>,
    /// Forget a client that is not allowed after this many seconds without
    /// traffic, so its slot serves new clients (0 = never) [default: 86400].
    #[arg(long)]
    forget_idle_secs: Option<u64>,
    /// Per-client download speed for sessions that use the global speed, Mbit/s (0 = unlimited).
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=GLOBAL_MBITS_MAX))]
    global_down_mbits: Option<u64>,
    /// Per-client upload speed for sessions that use the global speed, Mbit/s (0 = unlimited).
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=GLOBAL_MBITS_MAX))]
    global_up_mbits: Option<u64>,
    /// Token-bucket depth in milliseconds at the limit (at least 64 KiB).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    burst_ms: Option<u64>,
    /// When a session ends, disconnect the device instead of starting its next session.
    #[arg(long, conflicts_with = "auto_advance")]
    no_auto_advance: bool,
    /// When a session ends, start the device's next session (the default; overrides
    /// auto_advance = false in the config file).
    #[arg(long)]
    auto_advance: bool,
    /// Control API unix socket [default: /run/session-agent/api.sock].
    #[arg(long)]
    api_socket: Option<PathBuf>,
    /// Also serve the control API on TCP at ADDR:PORT (needs --api-token or --api-token-file).
    #[arg(long, value_name = "ADDR:PORT")]
    api_tcp: Option<std::net::SocketAddr>,
    /// Bearer token of the TCP listener.
    #[arg(long, value_name = "TOKEN", conflicts_with = "api_token_file")]
    api_token: Option<String>,
    /// File holding the bearer token of the TCP listener (first line).
    #[arg(long, value_name = "FILE")]
    api_token_file: Option<PathBuf>,
    /// Serve the RFC 8908 captive-portal API for clients at ADDR:PORT (a LAN address;
    /// the port joins the walled garden).
    #[arg(long, value_name = "ADDR:PORT")]
    captive_listen: Option<std::net::SocketAddr>,
    /// The portal's URL, announced as user-portal-url by the captive-portal API.
    #[arg(long, value_name = "URL")]
    portal_url: Option<String>,
    /// Clients with their own series in /metrics, the busiest first
    /// [default: 100].
    #[arg(long, value_name = "N")]
    metrics_top_clients: Option<usize>,
    /// Bind each client's IPv4 and IPv6 addresses to its MAC (first claim wins)
    /// and drop frames, ARP and ND that use an address bound to another MAC
    /// [default: true].
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    anti_spoof: Option<bool>,
    /// Remove an address binding after this many seconds unused, so the address
    /// is free for another device [default: 300].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(BIND_TTL_RANGE))]
    bind_ttl_secs: Option<u64>,
    /// Walled-garden speed per client and direction before payment, kbit/s
    /// (0 = unlimited) [default: 256].
    #[arg(long, value_name = "KBITS", value_parser = clap::value_parser!(u64).range(0..=GARDEN_KBITS_MAX))]
    garden_rate_kbits: Option<u64>,
    /// Walled-garden packets per second per client and direction before payment
    /// (0 = limited by bytes only) [default: 50].
    #[arg(long, value_name = "PPS", value_parser = clap::value_parser!(u64).range(0..=GARDEN_PPS_MAX))]
    garden_pps: Option<u64>,
}

/// Most `--global-down-mbits` and `--global-up-mbits`: 100 Gbit/s.
pub const GLOBAL_MBITS_MAX: u64 = 100_000;
/// Range of `--bind-ttl-secs`.
pub const BIND_TTL_RANGE: std::ops::RangeInclusive<u64> = 10..=86_400;
pub const DEFAULT_BIND_TTL_SECS: u64 = 300;
/// Most `--garden-rate-kbits`: 10 Gbit/s.
pub const GARDEN_KBITS_MAX: u64 = 10_000_000;
pub const GARDEN_PPS_MAX: u64 = 1_000_000;
pub const DEFAULT_GARDEN_KBITS: u64 = 256;
pub const DEFAULT_GARDEN_PPS: u64 = 50;

fn parse_mac(s: &str) -> Result<MacKey, String> {
    s.parse()
        .map_err(|e| format!("'{s}' is not a MAC address: {e}"))
}

fn parse_garden(s: &str) -> Result<GardenEntry, String> {
    s.parse().map_err(|e: AgentError| e.to_string())
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    if let Err(e) = dispatch(cli.cmd) {
        // One line: what went wrong and how to fix it.
        let mut msg = e.to_string();
        for cause in e.chain().skip(1) {
            msg.push_str(": ");
            msg.push_str(&cause.to_string());
        }
        eprintln!("session-agent: {msg}");
        std::process::exit(1);
    }
}

fn dispatch(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Run(a) => {
            let opts = run_options(*a)?;
            session_agent::memory::tune_allocator();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(daemon::run(opts))
        }
        Cmd::Devices { cmd, api } => ctl::devices(&api, cmd),
        Cmd::Sessions { cmd, api } => ctl::sessions(&api, cmd),
        Cmd::Connect {
            device,
            notification,
            api,
        } => ctl::connect(&api, &device, &notification),
        Cmd::Disconnect {
            device,
            notification,
            api,
        } => ctl::disconnect(&api, &device, &notification),
        Cmd::Status { api } => ctl::status(&api),
        Cmd::Providers { api } => ctl::providers(&api),
        Cmd::Events {
            device,
            count,
            idle_timeout_secs,
            api,
        } => ctl::events(&api, device, count, idle_timeout_secs),
        Cmd::Clients { lan, json, pins } => {
            // One client table serves every LAN: read it once.
            let ifaces = interfaces(&pins.pin_root, lan)?;
            let mut rows = Maps::open(&pins.pin_root, &ifaces[0])?.snapshot()?;
            for r in &mut rows {
                r.lan = ifaces.join(",");
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print_table(&rows);
            }
            Ok(())
        }
        Cmd::Allow { mac, lan, pins } => set_allowed(&pins.pin_root, lan, &mac, true),
        Cmd::Block { mac, lan, pins } => set_allowed(&pins.pin_root, lan, &mac, false),
        Cmd::Limit {
            mac,
            down_mbits,
            up_mbits,
            burst_ms,
            lan,
            pins,
        } => {
            let limit = |m| RateLimit::mbits(m, burst_ms, dataplane::MIN_BURST_BYTES);
            // One client table serves every LAN; in HTB mode each LAN has its classes.
            let ifaces = interfaces(&pins.pin_root, lan.clone())?;
            let slot = Maps::open(&pins.pin_root, &ifaces[0])?.limit(
                &mac,
                limit(up_mbits),
                limit(down_mbits),
            )?;
            for iface in &ifaces[1..] {
                Maps::open(&pins.pin_root, iface)?.mirror_classes(slot)?;
            }
            eprintln!(
                "{mac} on {}: down {down_mbits} Mbit/s, up {up_mbits} Mbit/s (0 = unlimited)",
                ifaces.join(", ")
            );
            Ok(())
        }
        Cmd::Detach { lans, pins } => {
            for lan in lans {
                dataplane::attach::detach(&pins.pin_root, &lan)?;
                eprintln!("detached from {lan}");
            }
            Ok(())
        }
    }
}

/// Merges the config file (if any) and the flags (which win) into the daemon's options.
// `..defaults` keeps working when the gateway gains options.
#[allow(clippy::needless_update)]
fn run_options(a: RunArgs) -> anyhow::Result<daemon::RunOptions> {
    let cfg = match &a.config {
        Some(p) => config::Config::load(p)?,
        None => config::Config::default(),
    };
    let lans = if a.lans.is_empty() {
        cfg.lans.clone().unwrap_or_default()
    } else {
        a.lans
    };
    if lans.is_empty() {
        anyhow::bail!(
            "no client-facing interface: give --lan IFACE (or lans = [...] in the config file)"
        );
    }
    let garden = if a.garden.is_empty() {
        cfg.walled_garden
            .unwrap_or_default()
            .iter()
            .map(|g| g.parse::<GardenEntry>())
            .collect::<Result<Vec<_>, _>>()?
    } else {
        a.garden
    };
    let mut portal_ports = if a.portal_ports.is_empty() {
        cfg.portal_ports.unwrap_or_else(|| vec![80])
    } else {
        a.portal_ports
    };
    let ingress = a.ingress.or(cfg.ingress).unwrap_or_default();
    let shaper = a.shaper.or(cfg.shaper).unwrap_or_default();
    let tc_attach = a.tc_attach.or(cfg.tc_attach).unwrap_or_default();
    let token = match (a.api_token, a.api_token_file.or(cfg.api.token_file)) {
        (Some(t), _) => Some(t),
        (None, Some(f)) => {
            let t = std::fs::read_to_string(&f)
                .with_context(|| format!("reading the API token file {}", f.display()))?;
            let t = t.lines().next().unwrap_or("").trim().to_string();
            if t.is_empty() {
                anyhow::bail!("the API token file {} is empty", f.display());
            }
            Some(t)
        }
        (None, None) => cfg.api.token,
    };
    let captive = a.captive_listen.or(cfg.captive.listen);
    if let Some(c) = captive {
        // Clients that have not paid must reach it.
        if !portal_ports.contains(&c.port()) {
            portal_ports.push(c.port());
        }
    }
    let retention = a.retention_secs.or(cfg.store.retention_secs).unwrap_or(0);
    let api = ApiOptions {
        socket: Some(
            a.api_socket
                .or(cfg.api.socket)
                .unwrap_or_else(|| "/run/session-agent/api.sock".into()),
        ),
        tcp: a.api_tcp.or(cfg.api.tcp),
        token,
        captive,
        portal_url: a.portal_url.or(cfg.captive.portal_url),
        metrics_top_clients: a
            .metrics_top_clients
            .or(cfg.api.metrics_top_clients)
            .unwrap_or(DEFAULT_METRICS_TOP_CLIENTS),
        retention: (retention > 0).then(|| Duration::from_secs(retention)),
    };
    api.validate()?;
    let idle = a.idle_timeout_secs.or(cfg.idle_timeout_secs).unwrap_or(0);
    let forget = a
        .forget_idle_secs
        .or(cfg.forget_idle_secs)
        .unwrap_or(session_agent::gateway::DEFAULT_FORGET_IDLE_SECS);
    let defaults = GatewayConfig::default();
    let gateway = GatewayConfig {
        poll_interval: Duration::from_millis(a.poll_ms.or(cfg.poll_ms).unwrap_or(250)),
        idle_timeout: (idle > 0).then(|| Duration::from_secs(idle)),
        forget_idle: (forget > 0).then(|| Duration::from_secs(forget)),
        global_down_mbits: a.global_down_mbits.or(cfg.global_down_mbits).unwrap_or(0),
        global_up_mbits: a.global_up_mbits.or(cfg.global_up_mbits).unwrap_or(0),
        burst_ms: a
            .burst_ms
            .or(cfg.burst_ms)
            .unwrap_or(dataplane::DEFAULT_BURST_MS),
        auto_advance: if a.no_auto_advance {
            false
        } else {
            a.auto_advance || cfg.auto_advance.unwrap_or(true)
        },
        checkpoint_interval: a
            .checkpoint_secs
            .or(cfg.checkpoint_secs)
            .map(Duration::from_secs)
            .unwrap_or(defaults.checkpoint_interval),
        commit_interval: a
            .commit_ms
            .or(cfg.commit_ms)
            .map(Duration::from_millis)
            .unwrap_or(defaults.commit_interval),
        bind_ttl: Duration::from_secs(
            a.bind_ttl_secs
                .or(cfg.bind_ttl_secs)
                .unwrap_or(DEFAULT_BIND_TTL_SECS),
        ),
        ..defaults
    };
    let gate = daemon::GateOptions {
        anti_spoof: a.anti_spoof.or(cfg.anti_spoof).unwrap_or(true),
        garden_rate_kbits: a
            .garden_rate_kbits
            .or(cfg.garden_rate_kbits)
            .unwrap_or(DEFAULT_GARDEN_KBITS),
        garden_pps: a
            .garden_pps
            .or(cfg.garden_pps)
            .unwrap_or(DEFAULT_GARDEN_PPS),
    };
    Ok(daemon::RunOptions {
        lans,
        garden,
        gate,
        portal_ports,
        pin_root: a
            .pin_root
            .or(cfg.pin_root)
            .unwrap_or_else(|| DEFAULT_PIN_ROOT.into()),
        ingress,
        shaper,
        tc_attach,
        store: a
            .store
            .or(cfg.store.provider)
            .unwrap_or_else(|| "hybrid".into()),
        db: a
            .db
            .or(cfg.store.path)
            .unwrap_or_else(|| "/var/lib/session-agent/sessions.redb".into()),
        gateway,
        api,
    })
}

fn interfaces(pin_root: &Path, lan: Option<String>) -> Result<Vec<String>, AgentError> {
    match lan {
        Some(l) => Ok(vec![l]),
        None => Maps::attached_interfaces(pin_root),
    }
}

fn set_allowed(
    pin_root: &Path,
    lan: Option<String>,
    mac: &MacKey,
    allowed: bool,
) -> anyhow::Result<()> {
    // One client table serves every LAN.
    let ifaces = interfaces(pin_root, lan)?;
    Maps::open(pin_root, &ifaces[0])?.set_allowed_by(mac, allowed, true)?;
    eprintln!(
        "{mac} {} on {}",
        if allowed { "allowed" } else { "blocked" },
        ifaces.join(", ")
    );
    Ok(())
}

fn print_table(rows: &[ClientRow]) {
    println!(
        "{:<8} {:<17} {:<7} {:>14} {:>10} {:>14} {:>10} {:>10} {:>10}",
        "LAN",
        "MAC",
        "ALLOWED",
        "UP BYTES",
        "UP PKTS",
        "DOWN BYTES",
        "DOWN PKTS",
        "GARDEN",
        "BLOCKED"
    );
    for r in rows {
        println!(
            "{:<8} {:<17} {:<7} {:>14} {:>10} {:>14} {:>10} {:>10} {:>10}",
            r.lan,
            r.mac,
            if r.allowed { "yes" } else { "no" },
            r.up_bytes,
            r.up_packets,
            r.down_bytes,
            r.down_packets,
            r.garden_packets,
            r.blocked_packets
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon's options from a command line and a config file's text.
    fn options(args: &[&str], file: &str) -> daemon::RunOptions {
        let path = std::env::temp_dir().join(format!("sa-opts-{}.toml", std::process::id()));
        std::fs::write(&path, file).unwrap();
        let mut argv = vec!["session-agent", "run", "--config", path.to_str().unwrap()];
        argv.extend_from_slice(args);
        let Cmd::Run(a) = Cli::try_parse_from(argv).unwrap().cmd else {
            panic!("not run");
        };
        let o = run_options(*a);
        let _ = std::fs::remove_file(&path);
        o.unwrap()
    }

    #[test]
    fn flags_override_the_config_file_both_ways() {
        let file = "lans = [\"lan0\"]\nauto_advance = false\nanti_spoof = false\n";
        assert!(!options(&[], file).gateway.auto_advance);
        assert!(options(&["--auto-advance"], file).gateway.auto_advance);
        assert!(
            !options(&["--no-auto-advance"], "lans = [\"lan0\"]\n")
                .gateway
                .auto_advance
        );
        assert!(!options(&[], file).gate.anti_spoof);
        assert!(options(&["--anti-spoof", "true"], file).gate.anti_spoof);
        let o = options(&["--garden-rate-kbits", "0"], "lans = [\"lan0\"]\n");
        assert_eq!((o.gate.garden_rate_kbits, o.gate.garden_pps), (0, 50));
        assert!(o.gate.anti_spoof, "on by default");
    }
}
