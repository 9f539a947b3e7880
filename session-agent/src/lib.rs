//! session-agent: eBPF traffic metering and session service for Wi-Fi hotspot gateways.
//!
//! The library holds the daemon's parts so that tests and tools can use them;
//! the `session-agent` binary is the CLI over it. Its modules are layered, top
//! to bottom; each imports only from the layers below it (`cargo xtask layers`
//! checks that, and that no files import each other in a circle).

// Wiring: build everything and hand it out.
pub mod config_file;
pub mod daemon;
pub mod options;
pub mod services;

// Front ends, which never import each other, and the ground they share.
pub mod admin;
pub mod api;
pub mod portal;
pub mod web;

// Features: they use the gateway and learn of changes from its events.
pub mod history;
pub mod names;
pub mod radius;
pub mod vouchers;

// The core.
pub mod gateway;
pub mod neigh;

// The kernel side.
pub mod datapath;
pub mod dataplane;
pub mod garden;

// The operating system.
pub mod error;
pub mod iface;
pub mod logging;
pub mod memory;
pub mod netlink;
pub mod nftables;
pub mod runtime;
pub mod sys;
pub mod systemd;
