//! Test harness for session-agent: a hotspot built from network namespaces,
//! traffic generators and sinks, raw frame injection, an nftables reference
//! meter and a handle on the agent process.
//!
//! Everything here needs root. Each [`Hotspot`] uses its own uniquely named
//! namespaces and removes them on drop (also while unwinding from a panic),
//! so tests can run in parallel.
//!
//! Byte definition shared by the agent and the reference: the IP-layer length
//! of each packet as the kernel forwards it (IPv4 total length, IPv6 payload
//! length + 40; a GRO/GSO aggregate is one packet of its total IP length).

pub mod agent;
pub mod api;
pub mod browser;
pub mod check;
pub mod dns;
pub mod https;
pub mod load;
pub mod netns;
pub mod nft;
pub mod plot;
pub mod postgres;
pub mod radius;
pub mod raw;
pub mod sessions;
pub mod topo;
pub mod traffic;

pub use agent::{agent_bin, Agent, AgentBuilder, ClientStats};
pub use browser::{Browser, BrowserOptions, Element};
pub use netns::{in_netns, ns_command, require_root, unique_id, Netns};
pub use nft::{NftRef, RefCounts};
pub use topo::{Client, Hotspot, HotspotBuilder};
pub use traffic::{mixed_traffic, Mix, ServerSet, TcpServer, TcpTransfer, UdpServer, UdpTransfer};
