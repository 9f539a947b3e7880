//! session-agent: eBPF traffic metering and session service for Wi-Fi hotspot gateways.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Parser, Subcommand};
use session_common::MacKey;

use session_agent::{
    api::ApiOptions,
    daemon,
    dataplane::{self, attach::IngressHook, ClientRow, Maps, RateLimit, DEFAULT_PIN_ROOT},
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
    Run(RunArgs),
    /// List known clients and their counters (reads the pinned maps).
    Clients {
        /// Only this interface (default: every attached one).
        #[arg(long = "lan", value_name = "IFACE")]
        lan: Option<String>,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Let a client through the datapath.
    Allow {
        #[arg(long, value_parser = parse_mac)]
        mac: MacKey,
        #[arg(long = "lan", value_name = "IFACE")]
        lan: Option<String>,
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Stop a client at the datapath (walled garden only).
    Block {
        #[arg(long, value_parser = parse_mac)]
        mac: MacKey,
        #[arg(long = "lan", value_name = "IFACE")]
        lan: Option<String>,
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Set a client's speed limits at the datapath (0 = unlimited).
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
}

#[derive(clap::Args)]
struct RunArgs {
    /// Client-facing interface (repeatable).
    #[arg(long = "lan", required = true, value_name = "IFACE")]
    lans: Vec<String>,
    /// Extra destination reachable before login: CIDR[:PORT] (repeatable).
    #[arg(long = "walled-garden", value_name = "CIDR[:PORT]", value_parser = parse_garden)]
    garden: Vec<GardenEntry>,
    /// Port of the captive portal on the gateway's LAN addresses (repeatable).
    #[arg(long = "portal-port", value_name = "PORT", default_values_t = [80u16], value_parser = clap::value_parser!(u16).range(1..))]
    portal_ports: Vec<u16>,
    /// Where upload traffic is metered.
    #[arg(long, value_enum, default_value_t = IngressHook::Tc)]
    ingress: IngressHook,
    #[command(flatten)]
    pins: PinArgs,
    /// Session storage provider.
    #[arg(long, default_value = "hybrid", value_parser = ["memory", "redb", "hybrid"])]
    store: String,
    /// Session database file (redb and hybrid; hybrid keeps its log beside it).
    #[arg(long, default_value = "/var/lib/session-agent/sessions.redb")]
    db: PathBuf,
    /// Counter poll interval in milliseconds: time is enforced and consumption committed this often.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    poll_ms: u64,
    /// Pause a connected session after this many seconds without traffic (0 = never).
    #[arg(long, default_value_t = 0)]
    idle_timeout_secs: u64,
    /// Per-client download speed for sessions that use the global speed, Mbit/s (0 = unlimited).
    #[arg(long, default_value_t = 0)]
    global_down_mbits: u64,
    /// Per-client upload speed for sessions that use the global speed, Mbit/s (0 = unlimited).
    #[arg(long, default_value_t = 0)]
    global_up_mbits: u64,
    /// Token-bucket depth in milliseconds at the limit (at least 64 KiB).
    #[arg(long, default_value_t = dataplane::DEFAULT_BURST_MS, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    burst_ms: u64,
    /// When a session ends, disconnect the device instead of starting its next session.
    #[arg(long)]
    no_auto_advance: bool,
    /// Control API unix socket.
    #[arg(long, default_value = "/run/session-agent/api.sock")]
    api_socket: PathBuf,
}

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
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let gateway = GatewayConfig {
                poll_interval: Duration::from_millis(a.poll_ms),
                idle_timeout: (a.idle_timeout_secs > 0)
                    .then(|| Duration::from_secs(a.idle_timeout_secs)),
                global_down_mbits: a.global_down_mbits,
                global_up_mbits: a.global_up_mbits,
                burst_ms: a.burst_ms,
                auto_advance: !a.no_auto_advance,
                ..GatewayConfig::default()
            };
            rt.block_on(daemon::run(daemon::RunOptions {
                lans: a.lans,
                garden: a.garden,
                portal_ports: a.portal_ports,
                pin_root: a.pins.pin_root,
                ingress: a.ingress,
                store: a.store,
                db: a.db,
                gateway,
                api: ApiOptions {
                    socket: Some(a.api_socket),
                    ..ApiOptions::default()
                },
            }))
        }
        Cmd::Clients { lan, json, pins } => {
            let mut rows = Vec::new();
            for iface in interfaces(&pins.pin_root, lan)? {
                rows.extend(Maps::open(&pins.pin_root, &iface)?.snapshot());
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
            for iface in interfaces(&pins.pin_root, lan.clone())? {
                let mut maps = Maps::open(&pins.pin_root, &iface)?;
                let slot = maps.ensure_slot(&mac)?;
                maps.set_rates(slot, limit(up_mbits), limit(down_mbits));
                eprintln!("{mac} on {iface}: down {down_mbits} Mbit/s, up {up_mbits} Mbit/s (0 = unlimited)");
            }
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
    for iface in interfaces(pin_root, lan)? {
        Maps::open(pin_root, &iface)?.set_allowed(mac, allowed)?;
        eprintln!(
            "{mac} {} on {iface}",
            if allowed { "allowed" } else { "blocked" }
        );
    }
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
