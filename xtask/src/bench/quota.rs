//! Scenario 4: quota overshoot. A client with a 10 MB data allowance downloads
//! in bulk over TCP at a fixed offered rate (iperf3 `-R -b 100M`); what it
//! moved through the gateway beyond 10 MB is the overshoot.
//!
//! - `session_agent`: a data session of 10 MB via the control API, connected;
//!   the datapath enforces the budget in the kernel;
//! - `nft_poll_5s` / `nft_poll_15s`: how Flarehotspot and openNDS enforce: per
//!   client nftables counters in the forward hook (upload by source MAC,
//!   download by address), read by a userspace loop every 5 s / 15 s, which
//!   adds drop rules for the client once its counters pass 10 MB. The loop's
//!   phase against the start of the download is random in each run, as it is
//!   in the field.
//!
//! Delivered bytes are counted where the traffic ends: IP bytes the client
//! received from beyond its LAN (nftables in the client's namespace) plus IP
//! bytes the server received from the client (nftables in the server's).

use std::{
    process::{Child, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use session_tests::{
    netns::{ns_command, run_ok},
    sessions::{connect, new_session, IperfServer, DATA},
    Agent, AgentBuilder, Hotspot, NftRef,
};

use super::{forwarding::nft_load, progress, Measurement, Opts};

const SCENARIO: &str = "quota";
const QUOTA: u64 = 10_000_000;
const MTU: f64 = 1500.0;
const RATE: &str = "100M";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    SessionAgent,
    NftPoll(u64),
}

impl Kind {
    fn name(self) -> String {
        match self {
            Kind::SessionAgent => "session_agent".into(),
            Kind::NftPoll(s) => format!("nft_poll_{s}s"),
        }
    }
}

/// A named nftables counter in a table `inet <table>` of a namespace.
fn counter_bytes(ns: &str, table: &str, name: &str) -> u64 {
    let out = run_ok(ns_command(ns, "nft").args(["-j", "list", "counter", "inet", table, name]));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|i| i.get("counter").and_then(|c| c["bytes"].as_u64()))
        .unwrap_or(0)
}

struct Setup {
    kind: Kind,
    agent: Option<Agent>,
    device: i64,
    nft: Option<NftRef>,
    hs: Hotspot,
}

impl Setup {
    fn new(kind: Kind) -> Result<Setup> {
        let hs = Hotspot::builder().clients(1).build();
        let c = &hs.clients[0];
        // Endpoint counters: what really arrived.
        nft_load(
            &c.ns,
            &format!(
                "table inet sa_end {{\n  counter rx {{ }}\n  chain pre {{\n    type filter hook prerouting priority -400; policy accept;\n    iifname \"{}\" ip saddr != 10.201.0.0/24 counter name \"rx\"\n  }}\n}}\n",
                c.ifname
            ),
        )?;
        nft_load(
            &hs.server_ns,
            &format!(
                "table inet sa_end {{\n  counter rx {{ }}\n  chain pre {{\n    type filter hook prerouting priority -400; policy accept;\n    ip saddr {} counter name \"rx\"\n  }}\n}}\n",
                c.ipv4
            ),
        )?;
        let (mut agent, mut device, mut nft) = (None, 0, None);
        match kind {
            Kind::SessionAgent => {
                let a = AgentBuilder::new(&hs).start();
                device = a.api().device_id(&c.mac);
                agent = Some(a);
            }
            Kind::NftPoll(_) => {
                nft = Some(NftRef::install(&hs));
                nft_load(
                    &hs.gw_ns,
                    "table inet sa_quota {\n  chain block {\n    type filter hook forward priority -100; policy accept;\n  }\n}\n",
                )?;
            }
        }
        Ok(Setup {
            kind,
            agent,
            device,
            nft,
            hs,
        })
    }

    /// Delivered IP bytes so far (client received + server received).
    fn delivered(&self) -> u64 {
        counter_bytes(&self.hs.clients[0].ns, "sa_end", "rx")
            + counter_bytes(&self.hs.server_ns, "sa_end", "rx")
    }

    fn rx_link_bytes(&self) -> u64 {
        let (rx, _, _, _) = Hotspot::link_stats(&self.hs.clients[0].ns, "eth0");
        rx
    }

    /// One run: (delivered bytes, seconds until the download stopped).
    fn run_once(&self, port: u16, seed: u64) -> Result<(u64, f64)> {
        let hs = &self.hs;
        let c = &hs.clients[0];
        let iperf = IperfServer::start(&hs.server_ns, hs.server_sock(false, port));
        let before = self.delivered();
        let stop = Arc::new(AtomicBool::new(false));
        let mut poller = None;
        match self.kind {
            Kind::SessionAgent => {
                let api = self.agent.as_ref().unwrap().api();
                new_session(&api, self.device, DATA, 0, (QUOTA / 1_000_000) as f64, 0, 0);
                connect(&api, self.device);
            }
            Kind::NftPoll(period) => {
                run_ok(
                    ns_command(&hs.gw_ns, "nft")
                        .args(["flush", "chain", "inet", "sa_quota", "block"]),
                );
                let nft = self.nft.clone().unwrap();
                let base = nft.get(&c.mac);
                let base = base.up_bytes + base.down_bytes;
                let (gw, mac, ip, st) = (hs.gw_ns.clone(), c.mac.clone(), c.ipv4, stop.clone());
                // Random phase of the loop against the start of the download.
                let phase = Duration::from_millis(seed % (period * 1000));
                poller = Some(std::thread::spawn(move || {
                    let mut next = Instant::now() + phase;
                    while !st.load(Ordering::Relaxed) {
                        if Instant::now() < next {
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                        next += Duration::from_secs(period);
                        let r = nft.get(&mac);
                        if r.up_bytes + r.down_bytes - base >= QUOTA {
                            let rules = format!(
                                "add rule inet sa_quota block ether saddr {mac} drop\nadd rule inet sa_quota block ip daddr {ip} drop\n"
                            );
                            let _ = nft_load(&gw, &rules);
                            return;
                        }
                    }
                }));
            }
        }
        let t0 = Instant::now();
        let max = match self.kind {
            Kind::SessionAgent => 10,
            Kind::NftPoll(p) => p + 10,
        };
        let mut client: Child = ns_command(&c.ns, "iperf3")
            .args([
                "-c",
                &hs.server_v4.to_string(),
                "-p",
                &port.to_string(),
                "-R",
                "-b",
                RATE,
                "-t",
                &max.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn iperf3 -c")?;
        // The download is over when nothing has arrived for 1.5 s.
        let mut last = self.rx_link_bytes();
        let mut last_change = Instant::now();
        let mut started = false;
        while t0.elapsed() < Duration::from_secs(max + 2) {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.rx_link_bytes();
            if now != last {
                started |= now > last + 1_000_000;
                last = now;
                last_change = Instant::now();
            } else if started && last_change.elapsed() > Duration::from_millis(1500) {
                break;
            }
            if matches!(client.try_wait(), Ok(Some(_)))
                && last_change.elapsed() > Duration::from_millis(500)
            {
                break;
            }
        }
        let secs = last_change.duration_since(t0).as_secs_f64();
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(client.id() as i32, libc::SIGKILL) };
        let _ = client.wait();
        drop(iperf);
        stop.store(true, Ordering::Relaxed);
        if let Some(p) = poller {
            let _ = p.join();
        }
        std::thread::sleep(Duration::from_millis(300));
        let delivered = self.delivered() - before;
        if let Kind::NftPoll(_) = self.kind {
            run_ok(
                ns_command(&hs.gw_ns, "nft").args(["flush", "chain", "inet", "sa_quota", "block"]),
            );
        }
        if delivered < QUOTA {
            bail!(
                "{}: only {delivered} bytes delivered, the quota was never reached (download ran {secs:.1} s)",
                self.kind.name()
            );
        }
        Ok((delivered, secs))
    }
}

pub fn run(opts: &Opts) -> Result<(Vec<Measurement>, Vec<String>)> {
    let kinds = [Kind::SessionAgent, Kind::NftPoll(5), Kind::NftPoll(15)];
    let mut setups = Vec::new();
    for k in kinds {
        progress(SCENARIO, format!("setting up {}", k.name()));
        setups.push(Setup::new(k)?);
    }
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    let mut delivered: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    let mut secs: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    let mut port = 5300u16;
    for r in 0..opts.runs {
        let mut line = Vec::new();
        for (i, s) in setups.iter().enumerate() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            port += 1;
            let (d, t) = s.run_once(port, seed).with_context(|| s.kind.name())?;
            delivered[i].push(d as f64);
            secs[i].push(t);
            line.push(format!(
                "{} overshoot {} bytes after {:.1} s",
                s.kind.name(),
                d as i64 - QUOTA as i64,
                t
            ));
        }
        progress(
            SCENARIO,
            format!("run {}/{}: {}", r + 1, opts.runs, line.join(" | ")),
        );
    }
    let mut out = Vec::new();
    for (i, s) in setups.iter().enumerate() {
        let name = s.kind.name();
        let over: Vec<f64> = delivered[i].iter().map(|d| d - QUOTA as f64).collect();
        let mut m = Measurement::new(
            SCENARIO,
            &name,
            1,
            "delivered_bytes",
            "bytes",
            delivered[i].clone(),
        );
        m.baseline = Some(QUOTA as f64);
        out.push(m);
        out.push(Measurement::new(
            SCENARIO,
            &name,
            1,
            "overshoot_bytes",
            "bytes",
            over.clone(),
        ));
        out.push(Measurement::new(
            SCENARIO,
            &name,
            1,
            "overshoot_packets",
            "1500-byte packets",
            over.iter().map(|o| o / MTU).collect(),
        ));
        out.push(Measurement::new(
            SCENARIO,
            &name,
            1,
            "download_seconds",
            "s",
            secs[i].clone(),
        ));
    }
    drop(setups);
    let notes = vec![
        format!("Quota 10 MB = {QUOTA} bytes of IP traffic (both directions, as the agent's data budget and the pollers' counters count). One client downloads with `iperf3 -R -b {RATE}` (TCP, the server paced to 100 Mbit/s) until nothing arrives for 1.5 s."),
        "Delivered = IP bytes the client received from beyond its LAN + IP bytes the server received from the client, counted by nftables in those namespaces; overshoot = delivered - quota, also in 1,500-byte packets (the link MTU).".into(),
        "session_agent: a data session (`type` 1, `data_mb` 10) created and connected through the control API in each run. nft_poll_Ns: the hotspot's per-client forward counters (`ether saddr` up, `ip daddr` down), a loop reading them with `nft -j` every N s, starting at a random phase, that adds `ether saddr M drop` and `ip daddr A drop` rules once the client is past the quota.".into(),
    ];
    Ok((out, notes))
}
