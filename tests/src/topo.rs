//! The hotspot topology:
//!
//! ```text
//!  client ns c0 (eth0) ─┐
//!  client ns c1 (eth0) ─┼─ ap ns: bridge br0 ── up0 ═══ lan0 ─ gateway ns ─ wan0 ═══ eth0 ─ server ns
//!  client ns cN (eth0) ─┘                                  (forwarding v4+v6)
//! ```
//!
//! All clients appear behind the single gateway LAN interface `lan0`, as behind
//! a real access point. Addresses are made up and exist only inside these
//! namespaces: LAN 10.201.0.0/24 + fd00:201::/64, WAN 10.202.0.0/24 +
//! fd00:202::/64. Neighbours are static (no ARP/ND on the wire), IPv6
//! addresses skip DAD, and clients have no link-local addresses and send no
//! router solicitations, so the only traffic is what a test sends.

use crate::netns::{ensure_bpffs, ip_n, remove_stale, sysctl, unique_id, Netns};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};

/// Name of the gateway's client-facing interface.
pub const LAN_IF: &str = "lan0";
/// Name of the gateway's upstream interface.
pub const WAN_IF: &str = "wan0";
/// Name of the single interface in a client or server namespace.
pub const HOST_IF: &str = "eth0";

/// One client station.
#[derive(Debug, Clone)]
pub struct Client {
    pub index: usize,
    /// Network namespace name.
    pub ns: String,
    /// Interface name inside `ns`.
    pub ifname: String,
    /// Lowercase `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

impl Client {
    pub fn mac_bytes(&self) -> [u8; 6] {
        parse_mac(&self.mac)
    }

    /// The client's address of the same family as `v6`.
    pub fn addr(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.ipv6)
        } else {
            IpAddr::V4(self.ipv4)
        }
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).unwrap_or_else(|e| panic!("bad mac {s}: {e}")))
        .collect();
    v.try_into().unwrap_or_else(|_| panic!("bad mac {s}"))
}

fn fmt_mac(b: [u8; 6]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Builder for [`Hotspot`].
#[derive(Debug, Clone)]
pub struct HotspotBuilder {
    clients: usize,
    dynamic_neighbours: bool,
}

impl Default for HotspotBuilder {
    fn default() -> Self {
        HotspotBuilder {
            clients: 1,
            dynamic_neighbours: false,
        }
    }
}

impl HotspotBuilder {
    /// Number of client namespaces (1..=200).
    pub fn clients(mut self, n: usize) -> Self {
        assert!((1..=200).contains(&n), "clients must be 1..=200");
        self.clients = n;
        self
    }

    /// Clients and the gateway find each other with real ARP and ND on the
    /// LAN instead of static neighbour entries.
    pub fn dynamic_neighbours(mut self) -> Self {
        self.dynamic_neighbours = true;
        self
    }

    pub fn build(self) -> Hotspot {
        crate::netns::require_root();
        ensure_bpffs();
        remove_stale();
        let id = unique_id();
        static SEQ: AtomicU16 = AtomicU16::new(0);
        let tag = (std::process::id() as u16)
            .wrapping_mul(31)
            .wrapping_add(SEQ.fetch_add(1, Ordering::Relaxed));
        let (th, tl) = ((tag >> 8) as u8, tag as u8);
        let mac = |a: u8, b: u8| fmt_mac([0x02, 0x5a, th, tl, a, b]);

        let mut namespaces = Vec::new();
        let gw = Netns::new(&format!("{id}-gw"));
        let ap = Netns::new(&format!("{id}-ap"));
        let srv = Netns::new(&format!("{id}-srv"));
        let gw_ns = gw.name().to_string();
        let ap_ns = ap.name().to_string();
        let srv_ns = srv.name().to_string();
        namespaces.push(gw);
        namespaces.push(ap);
        namespaces.push(srv);

        let mut hs = Hotspot {
            id: id.clone(),
            gw_ns: gw_ns.clone(),
            ap_ns: ap_ns.clone(),
            server_ns: srv_ns.clone(),
            lan_if: LAN_IF.to_string(),
            wan_if: WAN_IF.to_string(),
            gw_lan_mac: mac(0xfe, 0x01),
            gw_wan_mac: mac(0xfe, 0x02),
            server_mac: mac(0xfe, 0x03),
            gw_lan_v4: Ipv4Addr::new(10, 201, 0, 1),
            gw_lan_v6: "fd00:201::1".parse().unwrap(),
            gw_wan_v4: Ipv4Addr::new(10, 202, 0, 1),
            gw_wan_v6: "fd00:202::1".parse().unwrap(),
            server_v4: Ipv4Addr::new(10, 202, 0, 2),
            server_v6: "fd00:202::2".parse().unwrap(),
            clients: Vec::new(),
            pin_root: PathBuf::from(format!("/sys/fs/bpf/sa-test-{id}")),
            state_dir: std::env::temp_dir().join(format!("sa-test-{id}")),
            namespaces,
            dynamic_neighbours: self.dynamic_neighbours,
            extra_lans: Vec::new(),
        };

        for i in 0..self.clients {
            let ns = Netns::new(&format!("{id}-c{i}"));
            let c = Client {
                index: i,
                ns: ns.name().to_string(),
                ifname: HOST_IF.to_string(),
                mac: mac(0x00, i as u8 + 1),
                ipv4: Ipv4Addr::new(10, 201, 0, 10 + i as u8),
                ipv6: Ipv6Addr::new(0xfd00, 0x201, 0, 0, 0, 0, 0, 0x10 + i as u16),
            };
            hs.namespaces.push(ns);
            hs.clients.push(c);
        }

        hs.configure();
        hs
    }
}

/// A running hotspot topology. Dropping it deletes every namespace it made
/// (and with them all veths) and removes [`Hotspot::pin_root`].
#[derive(Debug)]
pub struct Hotspot {
    pub id: String,
    pub gw_ns: String,
    pub ap_ns: String,
    pub server_ns: String,
    /// Gateway client-facing interface (in `gw_ns`).
    pub lan_if: String,
    /// Gateway upstream interface (in `gw_ns`).
    pub wan_if: String,
    pub gw_lan_mac: String,
    pub gw_wan_mac: String,
    pub server_mac: String,
    pub gw_lan_v4: Ipv4Addr,
    pub gw_lan_v6: Ipv6Addr,
    pub gw_wan_v4: Ipv4Addr,
    pub gw_wan_v6: Ipv6Addr,
    pub server_v4: Ipv4Addr,
    pub server_v6: Ipv6Addr,
    pub clients: Vec<Client>,
    /// A bpffs directory unique to this hotspot, for the agent's `--pin-root`.
    pub pin_root: PathBuf,
    /// A directory unique to this hotspot for the agent's session database and API socket.
    pub state_dir: PathBuf,
    /// ARP and ND on the LAN instead of static neighbours.
    pub dynamic_neighbours: bool,
    /// LANs added by [`Hotspot::add_lan`].
    pub extra_lans: Vec<String>,
    namespaces: Vec<Netns>,
}

impl Hotspot {
    pub fn builder() -> HotspotBuilder {
        HotspotBuilder::default()
    }

    /// The server's address of the given family.
    pub fn server_addr(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.server_v6)
        } else {
            IpAddr::V4(self.server_v4)
        }
    }

    /// The gateway's LAN address of the given family.
    pub fn gw_lan_addr(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.gw_lan_v6)
        } else {
            IpAddr::V4(self.gw_lan_v4)
        }
    }

    /// `SocketAddr` on the server.
    pub fn server_sock(&self, v6: bool, port: u16) -> SocketAddr {
        SocketAddr::new(self.server_addr(v6), port)
    }

    /// `SocketAddr` on the gateway's LAN side.
    pub fn gw_lan_sock(&self, v6: bool, port: u16) -> SocketAddr {
        SocketAddr::new(self.gw_lan_addr(v6), port)
    }

    pub fn client(&self, i: usize) -> &Client {
        &self.clients[i]
    }

    /// Interface counters `(rx_bytes, rx_packets, tx_bytes, tx_packets)` of
    /// `ifname` in namespace `ns` (link layer, including Ethernet headers).
    pub fn link_stats(ns: &str, ifname: &str) -> (u64, u64, u64, u64) {
        let out = ip_n(ns, &["-s", "-j", "link", "show", "dev", ifname]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
        let s = &v[0]["stats64"];
        let g = |dir: &str, k: &str| s[dir][k].as_u64().unwrap_or(0);
        (
            g("rx", "bytes"),
            g("rx", "packets"),
            g("tx", "bytes"),
            g("tx", "packets"),
        )
    }

    /// Adds a second LAN port to the gateway (`lan1`, 10.203.0.1/24 and
    /// fd00:203::1/64) with one station on it that has `mac`: give it a
    /// client's MAC and that device uses both LANs. Static neighbours.
    pub fn add_lan(&mut self, mac: &str) -> Client {
        let n = self.extra_lans.len() as u8 + 1;
        assert!(n < 10, "at most 9 extra LANs");
        let lan = format!("lan{n}");
        let ns = Netns::new(&format!("{}-l{n}", self.id));
        let c = Client {
            index: 1000 + n as usize,
            ns: ns.name().to_string(),
            ifname: HOST_IF.to_string(),
            mac: mac.to_string(),
            ipv4: Ipv4Addr::new(10, 202 + n, 0, 10),
            ipv6: Ipv6Addr::new(0xfd00, 0x202 + n as u16, 0, 0, 0, 0, 0, 0x10),
        };
        self.namespaces.push(ns);
        let gw = &self.gw_ns;
        let gw_mac = {
            let mut m = parse_mac(&self.gw_lan_mac);
            m[4] = 0xf0 + n;
            fmt_mac(m)
        };
        ip_n(
            gw,
            &[
                "link", "add", &lan, "address", &gw_mac, "type", "veth", "peer", "name", HOST_IF,
                "address", mac, "netns", &c.ns,
            ],
        );
        let (gw4, gw6) = (
            format!("10.{}.0.1", 202 + n),
            format!("fd00:{}::1", 202 + n),
        );
        ip_n(gw, &["addr", "add", &format!("{gw4}/24"), "dev", &lan]);
        ip_n(
            gw,
            &["addr", "add", &format!("{gw6}/64"), "dev", &lan, "nodad"],
        );
        ip_n(gw, &["link", "set", &lan, "up"]);
        quiet_v6(&c.ns);
        ip_n(
            &c.ns,
            &["addr", "add", &format!("{}/24", c.ipv4), "dev", HOST_IF],
        );
        ip_n(
            &c.ns,
            &[
                "addr",
                "add",
                &format!("{}/64", c.ipv6),
                "dev",
                HOST_IF,
                "nodad",
            ],
        );
        ip_n(&c.ns, &["link", "set", HOST_IF, "up"]);
        ip_n(&c.ns, &["route", "add", "default", "via", &gw4]);
        ip_n(&c.ns, &["-6", "route", "add", "default", "via", &gw6]);
        neigh_on(&c.ns, &gw4, &gw_mac, HOST_IF);
        neigh_on(&c.ns, &gw6, &gw_mac, HOST_IF);
        neigh_on(gw, &c.ipv4.to_string(), mac, &lan);
        neigh_on(gw, &c.ipv6.to_string(), mac, &lan);
        self.extra_lans.push(lan);
        std::thread::sleep(std::time::Duration::from_millis(500));
        c
    }

    fn configure(&self) {
        // Access point: a pure L2 bridge, no IPv6 on it at all.
        for scope in ["all", "default"] {
            sysctl(
                &self.ap_ns,
                &format!("net.ipv6.conf.{scope}.disable_ipv6"),
                "1",
            );
        }
        ip_n(
            &self.ap_ns,
            &[
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "stp_state",
                "0",
                "mcast_snooping",
                "0",
            ],
        );
        ip_n(&self.ap_ns, &["link", "set", "br0", "up"]);

        quiet_v6(&self.gw_ns);
        quiet_v6(&self.server_ns);
        sysctl(&self.gw_ns, "net.ipv4.ip_forward", "1");
        sysctl(&self.gw_ns, "net.ipv6.conf.all.forwarding", "1");

        // Gateway LAN <-> access point uplink.
        ip_n(
            &self.gw_ns,
            &[
                "link",
                "add",
                &self.lan_if,
                "address",
                &self.gw_lan_mac,
                "type",
                "veth",
                "peer",
                "name",
                "up0",
                "netns",
                &self.ap_ns,
            ],
        );
        ip_n(&self.ap_ns, &["link", "set", "up0", "master", "br0", "up"]);
        // Gateway WAN <-> server.
        ip_n(
            &self.gw_ns,
            &[
                "link",
                "add",
                &self.wan_if,
                "address",
                &self.gw_wan_mac,
                "type",
                "veth",
                "peer",
                "name",
                HOST_IF,
                "address",
                &self.server_mac,
                "netns",
                &self.server_ns,
            ],
        );
        let gw = &self.gw_ns;
        ip_n(gw, &["addr", "add", "10.201.0.1/24", "dev", &self.lan_if]);
        ip_n(
            gw,
            &[
                "addr",
                "add",
                "fd00:201::1/64",
                "dev",
                &self.lan_if,
                "nodad",
            ],
        );
        ip_n(gw, &["addr", "add", "10.202.0.1/24", "dev", &self.wan_if]);
        ip_n(
            gw,
            &[
                "addr",
                "add",
                "fd00:202::1/64",
                "dev",
                &self.wan_if,
                "nodad",
            ],
        );
        ip_n(gw, &["link", "set", &self.lan_if, "up"]);
        ip_n(gw, &["link", "set", &self.wan_if, "up"]);

        let srv = &self.server_ns;
        ip_n(srv, &["addr", "add", "10.202.0.2/24", "dev", HOST_IF]);
        ip_n(
            srv,
            &["addr", "add", "fd00:202::2/64", "dev", HOST_IF, "nodad"],
        );
        ip_n(srv, &["link", "set", HOST_IF, "up"]);
        ip_n(srv, &["route", "add", "default", "via", "10.202.0.1"]);
        ip_n(
            srv,
            &["-6", "route", "add", "default", "via", "fd00:202::1"],
        );
        neigh(srv, "10.202.0.1", &self.gw_wan_mac);
        neigh(srv, "fd00:202::1", &self.gw_wan_mac);
        neigh(gw, "10.202.0.2", &self.server_mac);
        neigh(gw, "fd00:202::2", &self.server_mac);

        for c in &self.clients {
            quiet_v6(&c.ns);
            let port = format!("c{}", c.index);
            ip_n(
                &c.ns,
                &[
                    "link",
                    "add",
                    HOST_IF,
                    "address",
                    &c.mac,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &port,
                    "netns",
                    &self.ap_ns,
                ],
            );
            ip_n(&self.ap_ns, &["link", "set", &port, "master", "br0", "up"]);
            let v4 = format!("{}/24", c.ipv4);
            let v6 = format!("{}/64", c.ipv6);
            ip_n(&c.ns, &["addr", "add", &v4, "dev", HOST_IF]);
            ip_n(&c.ns, &["addr", "add", &v6, "dev", HOST_IF, "nodad"]);
            ip_n(&c.ns, &["link", "set", HOST_IF, "up"]);
            ip_n(&c.ns, &["route", "add", "default", "via", "10.201.0.1"]);
            ip_n(
                &c.ns,
                &["-6", "route", "add", "default", "via", "fd00:201::1"],
            );
            if !self.dynamic_neighbours {
                neigh(&c.ns, "10.201.0.1", &self.gw_lan_mac);
                neigh(&c.ns, "fd00:201::1", &self.gw_lan_mac);
                neigh(gw, &c.ipv4.to_string(), &c.mac);
                neigh(gw, &c.ipv6.to_string(), &c.mac);
            }
        }
        // Let the one-off link-up chatter (MLD reports for the new addresses)
        // pass before anything is measured.
        std::thread::sleep(std::time::Duration::from_millis(1200));
    }
}

fn neigh(ns: &str, addr: &str, mac: &str) {
    let dev = if ns.ends_with("-gw") {
        if addr.starts_with("10.201.") || addr.starts_with("fd00:201:") {
            LAN_IF
        } else {
            WAN_IF
        }
    } else {
        HOST_IF
    };
    neigh_on(ns, addr, mac, dev);
}

/// IPv6 in `ns` without DAD, router advertisements or solicitations, and
/// without addresses the kernel makes itself: only what a test sends.
fn quiet_v6(ns: &str) {
    for scope in ["all", "default"] {
        sysctl(ns, &format!("net.ipv6.conf.{scope}.accept_dad"), "0");
        sysctl(ns, &format!("net.ipv6.conf.{scope}.accept_ra"), "0");
        sysctl(
            ns,
            &format!("net.ipv6.conf.{scope}.router_solicitations"),
            "0",
        );
        sysctl(ns, &format!("net.ipv6.conf.{scope}.addr_gen_mode"), "1");
    }
}

/// A permanent neighbour entry: `addr` is at `mac` on `dev` in `ns`.
fn neigh_on(ns: &str, addr: &str, mac: &str, dev: &str) {
    ip_n(
        ns,
        &[
            "neigh",
            "replace",
            addr,
            "lladdr",
            mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ],
    );
}

impl Drop for Hotspot {
    fn drop(&mut self) {
        // Detach the agent's programs while the gateway namespace still
        // exists, then delete the namespaces, then remove leftover pins.
        if self.pin_root.exists() {
            if let Some(bin) = crate::agent::agent_bin_opt() {
                for lan in std::iter::once(&self.lan_if).chain(&self.extra_lans) {
                    let _ = crate::netns::ns_command(&self.gw_ns, bin.to_str().unwrap_or_default())
                        .args(["detach", "--lan", lan, "--pin-root"])
                        .arg(&self.pin_root)
                        .stdin(std::process::Stdio::null())
                        .output();
                }
            }
        }
        self.namespaces.clear();
        if self.pin_root.exists() {
            let _ = std::fs::remove_dir_all(&self.pin_root);
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}
