//! Scenario 3: rate-limit quality. One and ten TCP flows (iperf3) through a
//! per-client speed limit of 5, 20 and 100 Mbit/s, each direction, under:
//!
//! - `session_agent`: `session-agent limit --down-mbits L --up-mbits L` on an
//!   allowed client (the datapath's shared token bucket, default depth 250 ms);
//! - `session_agent_htb`: the same with the agent run as `--shaper htb` (the
//!   client's HTB class on lan0 for download and on the LAN's IFB device for
//!   upload, tc's usual burst of 1 ms at the rate, HTB's default pfifo leaf queue);
//! - `htb`: tc HTB with one class at the limit (rate = ceil = L) on the
//!   gateway's LAN interface (download) and WAN interface (upload), tc's default
//!   burst and HTB's default pfifo leaf queue;
//! - `nft_policer`: `limit rate over L bytes/second burst (250 ms) drop` per
//!   client in the forward hook (by `ether saddr` upload, `ip daddr` download).
//!
//! Goodput is iperf3's receiver rate after 1 s omitted, as a ratio to the limit;
//! retransmits are the sender's; RTT is the sender's mean smoothed RTT (the
//! server's for downloads, from `--get-server-output`), averaged over flows.

use std::{net::SocketAddr, process::Stdio, time::Duration};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use session_tests::{agent::cli, Agent, AgentBuilder, Hotspot};

use super::{
    forwarding::{nft_load, tc_batch},
    progress, Measurement, Opts,
};

const SCENARIO: &str = "rate_limit";
const IPERF_PORT: u16 = 5201;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    SessionAgent,
    SessionAgentHtb,
    Htb,
    NftPolicer,
}

impl Kind {
    const ALL: [Kind; 4] = [
        Kind::SessionAgent,
        Kind::SessionAgentHtb,
        Kind::Htb,
        Kind::NftPolicer,
    ];
    fn name(self) -> &'static str {
        match self {
            Kind::SessionAgent => "session_agent",
            Kind::SessionAgentHtb => "session_agent_htb",
            Kind::Htb => "htb",
            Kind::NftPolicer => "nft_policer",
        }
    }
}

/// `iperf3 -s -J` (JSON, so that `--get-server-output` brings the server's
/// RTT of downloads), killed on drop.
struct JsonIperfServer {
    child: std::process::Child,
    addr: SocketAddr,
}

impl JsonIperfServer {
    fn start(ns: &str, addr: SocketAddr) -> Result<JsonIperfServer> {
        let child = session_tests::ns_command(ns, "iperf3")
            .args([
                "-s",
                "-J",
                "-B",
                &addr.ip().to_string(),
                "-p",
                &addr.port().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn iperf3 -s")?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(JsonIperfServer { child, addr })
    }
}

impl Drop for JsonIperfServer {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

struct Setup {
    kind: Kind,
    _agent: Option<Agent>,
    iperf: JsonIperfServer,
    hs: Hotspot,
}

impl Setup {
    fn new(kind: Kind) -> Result<Setup> {
        let hs = Hotspot::builder().clients(1).build();
        let iperf = JsonIperfServer::start(&hs.server_ns, hs.server_sock(false, IPERF_PORT))?;
        let agent = match kind {
            Kind::SessionAgent | Kind::SessionAgentHtb => {
                let mut b = AgentBuilder::new(&hs);
                if kind == Kind::SessionAgentHtb {
                    b = b.arg("--shaper").arg("htb");
                }
                let a = b.start();
                a.allow(&hs.clients[0].mac);
                Some(a)
            }
            Kind::Htb | Kind::NftPolicer => None,
        };
        Ok(Setup {
            kind,
            _agent: agent,
            iperf,
            hs,
        })
    }

    fn set_limit(&self, mbits: u32) -> Result<()> {
        let hs = &self.hs;
        let c = &hs.clients[0];
        match self.kind {
            Kind::SessionAgent | Kind::SessionAgentHtb => {
                let pin = hs.pin_root.display().to_string();
                let l = mbits.to_string();
                let out = cli(
                    &hs.gw_ns,
                    &[
                        "limit",
                        "--mac",
                        &c.mac,
                        "--down-mbits",
                        &l,
                        "--up-mbits",
                        &l,
                        "--lan",
                        &hs.lan_if,
                        "--pin-root",
                        &pin,
                    ],
                );
                if !out.status.success() {
                    bail!(
                        "session-agent limit: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
            Kind::Htb => {
                let mut b = String::new();
                for dev in [&hs.lan_if, &hs.wan_if] {
                    // Start from no qdisc (veth's default) for each limit.
                    let _ = session_tests::ns_command(&hs.gw_ns, "tc")
                        .args(["qdisc", "del", "dev", dev, "root"])
                        .output();
                    b += &format!("qdisc add dev {dev} root handle 1: htb default 1\n");
                    b += &format!(
                        "class add dev {dev} parent 1: classid 1:1 htb rate {mbits}mbit ceil {mbits}mbit\n"
                    );
                }
                tc_batch(&hs.gw_ns, &b)?;
            }
            Kind::NftPolicer => {
                let rate = mbits as u64 * 1_000_000 / 8;
                let burst = rate / 4;
                let rules = format!(
                    "table inet bench {{ }}\ndelete table inet bench\ntable inet bench {{\n  chain police {{\n    type filter hook forward priority 0; policy accept;\n    iifname \"{lan}\" ether saddr {mac} limit rate over {rate} bytes/second burst {burst} bytes drop\n    oifname \"{lan}\" ip daddr {ip} limit rate over {rate} bytes/second burst {burst} bytes drop\n  }}\n}}\n",
                    lan = hs.lan_if,
                    mac = c.mac,
                    ip = c.ipv4
                );
                nft_load(&hs.gw_ns, &rules)?;
            }
        }
        Ok(())
    }
}

/// One iperf3 run.
#[derive(Debug, Clone, Copy)]
pub struct Flows {
    pub goodput_mbits: f64,
    pub retransmits: f64,
    pub rtt_ms: f64,
}

/// Mean of `streams[*].sender.mean_rtt` (µs) in an iperf3 `end` object, in ms.
fn mean_rtt_ms(end: &Value) -> f64 {
    let v: Vec<f64> = end["streams"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["sender"]["mean_rtt"].as_f64())
        .collect();
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64 / 1000.0
    }
}

/// `iperf3 -c` from `ns` with `flows` parallel streams; `reverse` = download.
pub fn iperf_flows(
    ns: &str,
    server: SocketAddr,
    secs: u32,
    omit: u32,
    reverse: bool,
    flows: u32,
) -> Result<Flows> {
    let mut args = vec![
        "-c".to_string(),
        server.ip().to_string(),
        "-p".into(),
        server.port().to_string(),
        "-t".into(),
        secs.to_string(),
        "-O".into(),
        omit.to_string(),
        "-P".into(),
        flows.to_string(),
        "-J".into(),
        "--get-server-output".into(),
    ];
    if reverse {
        args.push("-R".into());
    }
    let mut last = String::new();
    for _ in 0..3 {
        let out = session_tests::ns_command(ns, "iperf3")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .context("spawn iperf3")?;
        let v: Value = match serde_json::from_slice(&out.stdout) {
            Ok(v) => v,
            Err(e) => {
                last = format!("{e}: {}", String::from_utf8_lossy(&out.stdout));
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        if let Some(err) = v.get("error") {
            last = err.to_string();
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        let end = &v["end"];
        let rtt = if reverse {
            mean_rtt_ms(&v["server_output_json"]["end"])
        } else {
            mean_rtt_ms(end)
        };
        return Ok(Flows {
            goodput_mbits: end["sum_received"]["bits_per_second"]
                .as_f64()
                .unwrap_or(0.0)
                / 1e6,
            retransmits: end["sum_sent"]["retransmits"].as_f64().unwrap_or(0.0),
            rtt_ms: rtt,
        });
    }
    bail!("iperf3 {} in {ns} failed: {last}", args.join(" "))
}

pub fn run(opts: &Opts) -> Result<(Vec<Measurement>, Vec<String>)> {
    let limits: &[u32] = if opts.quick { &[20] } else { &[5, 20, 100] };
    let (secs, omit) = if opts.quick { (2, 1) } else { (5, 2) };
    let mut setups = Vec::new();
    for k in Kind::ALL {
        progress(SCENARIO, format!("setting up {}", k.name()));
        setups.push(Setup::new(k)?);
    }
    let mut out = Vec::new();
    for &limit in limits {
        for s in &setups {
            s.set_limit(limit)?;
        }
        for (dir, reverse) in [("down", true), ("up", false)] {
            for flows in [1u32, 10] {
                let mut samples: Vec<Vec<Flows>> = vec![Vec::new(); setups.len()];
                for r in 0..opts.runs {
                    for (i, s) in setups.iter().enumerate() {
                        let f = iperf_flows(
                            &s.hs.clients[0].ns,
                            s.iperf.addr,
                            secs,
                            omit,
                            reverse,
                            flows,
                        )
                        .with_context(|| format!("{} {limit} Mbit/s {dir}", s.kind.name()))?;
                        samples[i].push(f);
                    }
                    let line: Vec<String> = setups
                        .iter()
                        .enumerate()
                        .map(|(i, s)| {
                            let f = samples[i][r as usize];
                            format!(
                                "{} {:.2} Mbit/s retr {} rtt {:.1} ms",
                                s.kind.name(),
                                f.goodput_mbits,
                                f.retransmits,
                                f.rtt_ms
                            )
                        })
                        .collect();
                    progress(
                        SCENARIO,
                        format!(
                            "{limit} Mbit/s {dir} {flows} flow(s), run {}/{}: {}",
                            r + 1,
                            opts.runs,
                            line.join(" | ")
                        ),
                    );
                }
                let htb = Kind::ALL.iter().position(|k| *k == Kind::Htb).unwrap();
                let htb_retr = super::median(
                    &samples[htb]
                        .iter()
                        .map(|f| f.retransmits)
                        .collect::<Vec<_>>(),
                );
                let htb_rtt =
                    super::median(&samples[htb].iter().map(|f| f.rtt_ms).collect::<Vec<_>>());
                for (i, s) in setups.iter().enumerate() {
                    for (metric, unit, vals, base) in [
                        (
                            "goodput_mbits",
                            "Mbit/s",
                            samples[i]
                                .iter()
                                .map(|f| f.goodput_mbits)
                                .collect::<Vec<_>>(),
                            limit as f64,
                        ),
                        (
                            "retransmits",
                            "segments",
                            samples[i].iter().map(|f| f.retransmits).collect(),
                            htb_retr,
                        ),
                        (
                            "rtt_ms",
                            "ms",
                            samples[i].iter().map(|f| f.rtt_ms).collect(),
                            htb_rtt,
                        ),
                    ] {
                        let mut m =
                            Measurement::new(SCENARIO, s.kind.name(), 1, metric, unit, vals);
                        m.baseline = Some(base);
                        m.limit_mbits = Some(limit);
                        m.direction = Some(dir.into());
                        m.flows = Some(flows);
                        out.push(m);
                    }
                }
            }
        }
    }
    drop(setups);
    let notes = vec![
        format!("iperf3 over the hotspot's client (one client), {secs} s measured after {omit} s omitted (`-O`), `-P 1` and `-P 10`; `down` = `-R` (server to client). Goodput is the receiver's payload rate, so TCP/IP headers (about 3.5% of a 1,500-byte packet) are not in it while every limiter counts them."),
        "session_agent: `session-agent limit --mac M --down-mbits L --up-mbits L` (token bucket of 250 ms at the limit, the default), the client allowed. session_agent_htb: the same with the agent run as `--shaper htb` (the client's HTB class `rate = ceil = L` plus the headers of a full-size TCP segment, 1,514 frame bytes per 1,448 of payload, burst 1 ms at the rate plus one frame, pfifo leaf of 1,000 packets, on lan0 for download and on the LAN's IFB device for upload). htb: `htb default 1` with one class `rate L ceil L` (tc's default burst, pfifo leaf of txqueuelen 1000) on lan0 (download) and wan0 (upload). nft_policer: per client `limit rate over L bytes/second burst (L/4) bytes drop`, the same 250 ms of burst as the agent.".into(),
        "Retransmits are the sender's (`sum_sent.retransmits`), RTT the sender's mean smoothed RTT over the flows (the server's for downloads, via `--get-server-output`); their baselines in the JSON are HTB's medians of the same run.".into(),
    ];
    Ok((out, notes))
}
