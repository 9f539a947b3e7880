//! session-agent: eBPF traffic metering and session service for Wi-Fi hotspot gateways.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use session_common::MacKey;

use session_agent::{
    daemon,
    dataplane::{self, attach::IngressHook, ClientRow, Maps, RateLimit, DEFAULT_PIN_ROOT},
    error::AgentError,
    garden::GardenEntry,
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
    Run {
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
    },
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
        Cmd::Run {
            lans,
            garden,
            portal_ports,
            ingress,
            pins,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(daemon::run(daemon::RunOptions {
                lans,
                garden,
                portal_ports,
                pin_root: pins.pin_root,
                ingress,
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
