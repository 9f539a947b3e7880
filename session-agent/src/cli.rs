//! The command line: every subcommand, its arguments and their help (the
//! manual pages and completions are made from it).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use session_common::MacAddr;

use session_agent::{
    dataplane::{self, DEFAULT_PIN_ROOT},
    options::{self, Options},
};

use crate::ctl;

#[derive(Parser)]
#[command(
    name = "session-agent",
    version,
    about = "eBPF traffic metering and session service for Wi-Fi hotspot gateways"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(clap::Args, Clone)]
pub(crate) struct PinArgs {
    /// bpffs directory holding one directory of pinned maps and links per interface.
    #[arg(long, default_value = DEFAULT_PIN_ROOT, global = true)]
    pub(crate) pin_root: PathBuf,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// The operator page's accounts (`--admin-listen`): the owner, who may do
    /// everything, and staff, who may only sell.
    Admin {
        #[command(subcommand)]
        cmd: AdminCmd,
    },
    /// Attach to the client-facing interfaces and run in the foreground.
    Run(RunArgs),
    /// Check `run`'s configuration file and flags, as `run` would read them,
    /// without starting anything.
    CheckConfig(RunArgs),
    /// Keep the configuration's LANs from forwarding until `run` has attached
    /// to them: an nftables table that `run` removes once the datapath gates
    /// every LAN (the package's boot unit runs this before the network is up).
    CloseLans(RunArgs),
    /// Let the LANs forward again without waiting for `run` (undoes
    /// `close-lans`; `run` does this itself once attached).
    OpenLans,
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
        mac: MacAddr,
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
        mac: MacAddr,
        #[arg(long = "lan", value_name = "IFACE")]
        lan: Option<String>,
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Set a client's speed limits at the datapath (0 = unlimited); with an agent
    /// running `--shaper htb`, as the client's HTB classes.
    Limit {
        #[arg(long, value_parser = parse_mac)]
        mac: MacAddr,
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
    /// Voucher codes: make batches, list, revoke, export for print, redeem
    /// (over the API socket).
    Vouchers {
        #[command(subcommand)]
        cmd: ctl::VouchersCmd,
        #[command(flatten)]
        api: ctl::ApiArgs,
    },
    /// The walled garden by domain name: list, add, remove names at run time
    /// (over the API socket).
    Garden {
        #[command(subcommand)]
        cmd: ctl::GardenCmd,
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
    /// Log a device in against the RADIUS servers (over the API socket); the password
    /// is read from the first line of standard input.
    Login {
        /// Device id.
        device: String,
        /// User-Name.
        username: String,
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

#[derive(Subcommand)]
pub(crate) enum AdminCmd {
    /// Set the owner's password, or a staff account's (made if new). The
    /// password is read from standard input, asked twice on a terminal; the
    /// running agent uses it from the next login, and ends the account's
    /// logins made with the old one.
    Passwd {
        /// A staff account: it may see who is online and make and print
        /// vouchers from the plans, nothing else.
        #[arg(long, value_name = "NAME")]
        staff: Option<String>,
        /// Remove the staff account instead.
        #[arg(long, requires = "staff")]
        remove: bool,
        /// The accounts file [default: admin.accounts of --config, else
        /// /var/lib/session-agent/admin-accounts].
        #[arg(long, value_name = "FILE")]
        accounts: Option<PathBuf>,
        /// The agent's configuration file, whose admin.accounts names the file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// `run`'s command line, as given: [`Options::load`] lays it over the config file.
pub(crate) struct RunArgs(pub(crate) clap::ArgMatches);

impl clap::FromArgMatches for RunArgs {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self(m.clone()))
    }
    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        self.0 = m.clone();
        Ok(())
    }
}

impl clap::Args for RunArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        options::with_defaults(Options::augment_args(cmd))
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

pub(crate) fn parse_mac(s: &str) -> Result<MacAddr, String> {
    s.parse()
        .map_err(|e| format!("'{s}' is not a MAC address: {e}"))
}
