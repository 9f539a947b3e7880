//! Independent reference meter: nftables counters in the gateway's forward
//! chain. Per client: upload = forwarded packets that arrived on the LAN
//! interface with the client's source MAC; download = forwarded packets that
//! leave the LAN interface to the client's IPv4/IPv6 address. nft counts the
//! IP-layer length of each skb as forwarded, which is the agent's byte
//! definition.

use crate::netns::{ns_command, run_ok};
use crate::topo::Hotspot;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};

/// Reference counts for one client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefCounts {
    pub up_bytes: u64,
    pub up_packets: u64,
    pub down_bytes: u64,
    pub down_packets: u64,
}

/// The reference table in a gateway namespace. Lives as long as the
/// namespace (no separate cleanup needed).
#[derive(Debug, Clone)]
pub struct NftRef {
    ns: String,
    table: String,
    /// Client index -> MAC.
    macs: BTreeMap<usize, String>,
}

impl NftRef {
    /// Installs table `inet sa_ref` in the hotspot's gateway namespace.
    pub fn install(hs: &Hotspot) -> NftRef {
        let table = "sa_ref".to_string();
        let mut s = format!("table inet {table} {{\n");
        for c in &hs.clients {
            s += &format!(
                "  counter up_{0} {{ }}\n  counter down_{0} {{ }}\n",
                c.index
            );
        }
        s += "  chain ref_forward {\n    type filter hook forward priority -50; policy accept;\n";
        for c in &hs.clients {
            s += &format!(
                "    iifname \"{lan}\" ether saddr {mac} counter name \"up_{i}\"\n\
                 \x20   oifname \"{lan}\" ip daddr {v4} counter name \"down_{i}\"\n\
                 \x20   oifname \"{lan}\" ip6 daddr {v6} counter name \"down_{i}\"\n",
                lan = hs.lan_if,
                mac = c.mac,
                i = c.index,
                v4 = c.ipv4,
                v6 = c.ipv6,
            );
        }
        s += "  }\n}\n";
        nft_apply(&hs.gw_ns, &s);
        NftRef {
            ns: hs.gw_ns.clone(),
            table,
            macs: hs
                .clients
                .iter()
                .map(|c| (c.index, c.mac.clone()))
                .collect(),
        }
    }

    /// Counts client `c` too, a station on the gateway's LAN `lan` (one
    /// [`Hotspot::add_lan`] made).
    pub fn add_client(&mut self, lan: &str, c: &crate::topo::Client) {
        let rules = format!(
            "add counter inet {t} up_{i}\nadd counter inet {t} down_{i}\n\
             add rule inet {t} ref_forward iifname \"{lan}\" ether saddr {mac} counter name \"up_{i}\"\n\
             add rule inet {t} ref_forward oifname \"{lan}\" ip daddr {v4} counter name \"down_{i}\"\n\
             add rule inet {t} ref_forward oifname \"{lan}\" ip6 daddr {v6} counter name \"down_{i}\"\n",
            t = self.table,
            i = c.index,
            mac = c.mac,
            v4 = c.ipv4,
            v6 = c.ipv6,
        );
        nft_apply(&self.ns, &rules);
        self.macs.insert(c.index, c.mac.clone());
    }

    /// Current reference counts, keyed by client MAC.
    pub fn read(&self) -> BTreeMap<String, RefCounts> {
        let out = run_ok(ns_command(&self.ns, "nft").args([
            "-j",
            "list",
            "counters",
            "table",
            "inet",
            &self.table,
        ]));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("nft json: {e}: {}", String::from_utf8_lossy(&out.stdout)));
        let mut m: BTreeMap<String, RefCounts> = self
            .macs
            .values()
            .map(|mac| (mac.clone(), RefCounts::default()))
            .collect();
        for item in v["nftables"].as_array().expect("nftables array") {
            let Some(c) = item.get("counter") else {
                continue;
            };
            let name = c["name"].as_str().unwrap_or("");
            let (dir, idx) = match name.split_once('_') {
                Some((d, i)) => (d, i.parse::<usize>().expect("counter index")),
                None => continue,
            };
            let p = c["packets"].as_u64().unwrap_or(0);
            let b = c["bytes"].as_u64().unwrap_or(0);
            let Some(e) = self.macs.get(&idx).and_then(|mac| m.get_mut(mac)) else {
                continue;
            };
            match dir {
                "up" => {
                    e.up_packets = p;
                    e.up_bytes = b;
                }
                "down" => {
                    e.down_packets = p;
                    e.down_bytes = b;
                }
                _ => {}
            }
        }
        m
    }

    /// Reference counts of one client.
    pub fn get(&self, mac: &str) -> RefCounts {
        self.read()
            .get(mac)
            .copied()
            .unwrap_or_else(|| panic!("no reference counters for {mac}"))
    }

    /// The full ruleset with counters (for failure messages).
    pub fn dump(&self) -> String {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .args(["nft", "list", "table", "inet", &self.table])
            .output();
        match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
            Err(e) => format!("<nft list failed: {e}>"),
        }
    }
}

/// Applies an nftables ruleset in namespace `ns`, panicking with it on failure.
pub fn nft_apply(ns: &str, rules: &str) {
    let mut child = ns_command(ns, "nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nft");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft -f in {ns} failed: {}\n{rules}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The named counters of `table` (family inet) in `ns`: name -> (packets, bytes).
pub fn nft_counters(ns: &str, table: &str) -> BTreeMap<String, (u64, u64)> {
    let out =
        run_ok(ns_command(ns, "nft").args(["-j", "list", "counters", "table", "inet", table]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("nft json: {e}: {}", String::from_utf8_lossy(&out.stdout)));
    v["nftables"]
        .as_array()
        .expect("nftables array")
        .iter()
        .filter_map(|item| item.get("counter"))
        .map(|c| {
            (
                c["name"].as_str().unwrap_or("").to_string(),
                (
                    c["packets"].as_u64().unwrap_or(0),
                    c["bytes"].as_u64().unwrap_or(0),
                ),
            )
        })
        .collect()
}

/// What reaches the server namespace from beyond the gateway, counted there
/// (prerouting, before anything else): per client by its source addresses
/// (`src_N`), and everything else not sent by the gateway itself (`other`).
/// An unpaid client's frames must leave every counter at zero.
#[derive(Debug, Clone)]
pub struct ServerWatch {
    ns: String,
}

impl ServerWatch {
    pub fn install(hs: &Hotspot) -> ServerWatch {
        let mut s = String::from("table inet sa_srv {\n  counter other { }\n");
        for c in &hs.clients {
            s += &format!("  counter src_{} {{ }}\n", c.index);
        }
        s += "  chain pre {\n    type filter hook prerouting priority -400; policy accept;\n";
        for c in &hs.clients {
            s += &format!(
                "    ip saddr {v4} counter name \"src_{i}\" return\n    ip6 saddr {v6} counter name \"src_{i}\" return\n",
                v4 = c.ipv4,
                v6 = c.ipv6,
                i = c.index
            );
        }
        s += &format!(
            "    ip saddr != {gw4} counter name \"other\"\n    ip6 saddr != {{ {gw6}, fe80::/10 }} counter name \"other\"\n  }}\n}}\n",
            gw4 = hs.gw_wan_v4,
            gw6 = hs.gw_wan_v6
        );
        nft_apply(&hs.server_ns, &s);
        ServerWatch {
            ns: hs.server_ns.clone(),
        }
    }

    /// Counts client `c` (a station on a LAN [`Hotspot::add_lan`] made) as a
    /// client, not as another source.
    pub fn add_client(&self, c: &crate::topo::Client) {
        let rules = format!(
            "add counter inet sa_srv src_{i}\n\
             insert rule inet sa_srv pre ip saddr {v4} counter name \"src_{i}\" return\n\
             insert rule inet sa_srv pre ip6 saddr {v6} counter name \"src_{i}\" return\n",
            i = c.index,
            v4 = c.ipv4,
            v6 = c.ipv6,
        );
        nft_apply(&self.ns, &rules);
    }

    /// (packets, bytes) from client `i`'s addresses.
    pub fn from_client(&self, i: usize) -> (u64, u64) {
        nft_counters(&self.ns, "sa_srv")
            .get(&format!("src_{i}"))
            .copied()
            .unwrap_or_default()
    }

    /// Packets and bytes from any other source.
    pub fn other(&self) -> (u64, u64) {
        nft_counters(&self.ns, "sa_srv")
            .get("other")
            .copied()
            .unwrap_or_default()
    }

    /// Everything counted, for failure messages.
    pub fn all(&self) -> BTreeMap<String, (u64, u64)> {
        nft_counters(&self.ns, "sa_srv")
    }
}
