//! session-agent: eBPF traffic metering and session service for Wi-Fi hotspot gateways.
//!
//! The library holds the daemon's parts so that tests and tools can use them;
//! the `session-agent` binary is the CLI over it.

pub mod api;
pub mod daemon;
pub mod datapath;
pub mod dataplane;
pub mod error;
pub mod garden;
pub mod gateway;
pub mod html;
pub mod iface;
pub mod logging;
pub mod memory;
pub mod names;
pub mod netlink;
pub mod nftables;
pub mod options;
pub mod portal;
pub mod radius;
pub mod redirect;
pub mod sys;
pub mod systemd;
pub mod vouchers;
