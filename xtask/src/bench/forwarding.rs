//! Scenario 2: forwarding through the gateway namespace with N configured
//! clients, for each dataplane an operator might run:
//!
//! - `no_program`: plain forwarding, the baseline;
//! - `session_agent`: the agent running, every configured client allowed and counted;
//! - `nft_chain`: per-MAC counters as a linear chain (openNDS style): every upload
//!   packet walks one `ether saddr M counter` rule per client, download stops at
//!   its `ip daddr A counter accept` rule;
//! - `nft_set`: per-element counters in named sets (Flarehotspot style):
//!   `ether saddr @up` / `ip daddr @down` with the `counter` flag on the sets;
//! - `htb`: tc HTB with one class per client on both gateway interfaces (rates
//!   of 100 Gbit/s, which never limit), classified by one nftables map lookup per
//!   packet (`meta priority set ether saddr map {...}` upload, `ip daddr map`
//!   download), which HTB takes as the class id directly.
//!
//! Every setup has its own hotspot (identical topology), so runs interleave
//! without reconfiguration. 64-byte UDP: a generator in the access point's
//! namespace sends prebuilt frames straight onto the uplink (`up0`) with
//! source MACs rotating over the configured clients (each from its own
//! address), to the gateway's LAN
//! MAC and an address routed to the server; the rate is what arrives on the
//! server's interface. Bulk TCP: one iperf3 download flow to the real client.
//! Before the setups, a probe of the machine's memory (see [`super::memory`])
//! gives the cost of one read of state that has left the caches, the floor
//! under any per-client lookup at 10,000 clients.

use std::{
    io::Write,
    net::Ipv4Addr,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use session_tests::{
    agent::cli,
    netns::{ip_n, ns_command},
    raw::{eth, ipv4_udp, ETH_P_IPV4},
    sessions::{iperf, IperfServer},
    topo::parse_mac,
    Agent, AgentBuilder, Hotspot,
};

use super::{gen, progress, Measurement, Opts};

const SCENARIO: &str = "forwarding";
/// The case of measurements of the machine itself rather than of a dataplane.
pub const MACHINE: &str = "machine";
/// An address behind the server's interface that the server does not own: it
/// drops the packets silently (no forwarding, so no ICMP).
const SINK: Ipv4Addr = Ipv4Addr::new(10, 202, 0, 200);
const IPERF_PORT: u16 = 5201;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    NoProgram,
    SessionAgent,
    NftChain,
    NftSet,
    Htb,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::NoProgram,
        Kind::SessionAgent,
        Kind::NftChain,
        Kind::NftSet,
        Kind::Htb,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::NoProgram => "no_program",
            Kind::SessionAgent => "session_agent",
            Kind::NftChain => "nft_chain",
            Kind::NftSet => "nft_set",
            Kind::Htb => "htb",
        }
    }
}

/// The configured clients: the hotspot's real client sits in the middle of
/// the list (the average position in a linear chain), the others are made up.
pub struct Clients {
    pub macs: Vec<String>,
    pub ips: Vec<Ipv4Addr>,
}

impl Clients {
    pub fn new(hs: &Hotspot, n: usize) -> Clients {
        let real = n / 2;
        let mut macs = Vec::with_capacity(n);
        let mut ips = Vec::with_capacity(n);
        for i in 0..n {
            if i == real {
                macs.push(hs.clients[0].mac.clone());
                ips.push(hs.clients[0].ipv4);
            } else {
                macs.push(format!(
                    "02:5b:00:{:02x}:{:02x}:{:02x}",
                    (i >> 16) & 0xff,
                    (i >> 8) & 0xff,
                    i & 0xff
                ));
                ips.push(Ipv4Addr::new(10, 200, (i >> 8) as u8, i as u8));
            }
        }
        Clients { macs, ips }
    }
}

/// Loads an nftables ruleset in a namespace.
pub fn nft_load(ns: &str, rules: &str) -> Result<()> {
    let mut child = ns_command(ns, "nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn nft")?;
    child.stdin.take().unwrap().write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let head: String = rules.chars().take(2000).collect();
        bail!(
            "nft -f in {ns} failed: {}\nruleset (start):\n{head}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Runs `tc -batch -` in a namespace.
pub fn tc_batch(ns: &str, lines: &str) -> Result<()> {
    let mut child = ns_command(ns, "tc")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn tc")?;
    child.stdin.take().unwrap().write_all(lines.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let head: String = lines.chars().take(2000).collect();
        bail!(
            "tc -batch in {ns} failed: {}\nbatch (start):\n{head}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Allows every MAC through the agent's CLI (a few processes at a time).
pub fn allow_all(hs: &Hotspot, macs: &[String]) -> Result<()> {
    let pin = hs.pin_root.display().to_string();
    let workers = 6;
    let chunks: Vec<Vec<String>> = (0..workers)
        .map(|w| macs.iter().skip(w).step_by(workers).cloned().collect())
        .collect();
    let errors: Vec<String> = std::thread::scope(|s| {
        let hs_ns = &hs.gw_ns;
        let lan = &hs.lan_if;
        let pin = &pin;
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || {
                    for mac in chunk {
                        let out = cli(
                            hs_ns,
                            &["allow", "--mac", &mac, "--lan", lan, "--pin-root", pin],
                        );
                        if !out.status.success() {
                            return Some(format!(
                                "allow {mac}: {}",
                                String::from_utf8_lossy(&out.stderr)
                            ));
                        }
                    }
                    None
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect()
    });
    if let Some(e) = errors.first() {
        bail!("{e}");
    }
    Ok(())
}

/// One hotspot configured with one dataplane.
pub struct Setup {
    pub kind: Kind,
    pub agent: Option<Agent>,
    pub iperf: IperfServer,
    pub frames: Arc<Vec<Vec<u8>>>,
    // Dropped last: the namespaces.
    pub hs: Hotspot,
}

impl Setup {
    pub fn new(kind: Kind, n: usize) -> Result<Setup> {
        let hs = Hotspot::builder().clients(1).build();
        let gw = hs.gw_ns.clone();
        ip_n(
            &gw,
            &[
                "neigh",
                "replace",
                &SINK.to_string(),
                "lladdr",
                &hs.server_mac,
                "dev",
                &hs.wan_if,
                "nud",
                "permanent",
            ],
        );
        let clients = Clients::new(&hs, n);
        let gw_mac = parse_mac(&hs.gw_lan_mac);
        // Each client sends from its own address, as real ones do: with
        // anti-spoofing, an address is bound to the first MAC that uses it.
        let frames: Vec<Vec<u8>> = clients
            .macs
            .iter()
            .zip(&clients.ips)
            .enumerate()
            .map(|(i, (m, ip))| {
                let mut f = eth(gw_mac, parse_mac(m), ETH_P_IPV4);
                f.extend_from_slice(&ipv4_udp(
                    *ip,
                    SINK,
                    10_000 + (i % 50_000) as u16,
                    9,
                    &[0x5a; 18],
                ));
                f
            })
            .collect();
        let iperf = IperfServer::start(&hs.server_ns, hs.server_sock(false, IPERF_PORT));
        let mut agent = None;
        match kind {
            Kind::NoProgram => {}
            Kind::SessionAgent => {
                agent = Some(AgentBuilder::new(&hs).start());
                allow_all(&hs, &clients.macs)?;
            }
            Kind::NftChain => {
                let mut s = String::with_capacity(n * 120);
                s += "table inet bench {\n";
                s += "  chain up {\n";
                for m in &clients.macs {
                    s += &format!("    ether saddr {m} counter\n");
                }
                s += "  }\n  chain down {\n";
                for a in &clients.ips {
                    s += &format!("    ip daddr {a} counter accept\n");
                }
                s += &format!(
                    "  }}\n  chain acct {{\n    type filter hook forward priority 0; policy accept;\n    iifname \"{lan}\" jump up\n    oifname \"{lan}\" jump down\n  }}\n}}\n",
                    lan = hs.lan_if
                );
                nft_load(&gw, &s)?;
            }
            Kind::NftSet => {
                let s = format!(
                    "table inet bench {{\n  set up {{ type ether_addr; counter; elements = {{ {} }} }}\n  set down {{ type ipv4_addr; counter; elements = {{ {} }} }}\n  chain acct {{\n    type filter hook forward priority 0; policy accept;\n    iifname \"{lan}\" ether saddr @up\n    oifname \"{lan}\" ip daddr @down\n  }}\n}}\n",
                    clients.macs.join(", "),
                    clients.ips.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "),
                    lan = hs.lan_if
                );
                nft_load(&gw, &s)?;
            }
            Kind::Htb => {
                let mut batch = String::with_capacity(n * 200);
                for dev in [&hs.wan_if, &hs.lan_if] {
                    batch += &format!("qdisc add dev {dev} root handle 1: htb default 0\n");
                    for i in 0..n {
                        batch += &format!(
                            "class add dev {dev} parent 1: classid 1:{:x} htb rate 100gbit ceil 100gbit burst 4mb cburst 4mb quantum 60000\n",
                            i + 1
                        );
                    }
                }
                tc_batch(&gw, &batch)?;
                let up: Vec<String> = clients
                    .macs
                    .iter()
                    .enumerate()
                    .map(|(i, m)| format!("{m} : 1:{:x}", i + 1))
                    .collect();
                let down: Vec<String> = clients
                    .ips
                    .iter()
                    .enumerate()
                    .map(|(i, a)| format!("{a} : 1:{:x}", i + 1))
                    .collect();
                let s = format!(
                    "table inet bench {{\n  map up {{ type ether_addr : classid; elements = {{ {} }} }}\n  map down {{ type ipv4_addr : classid; elements = {{ {} }} }}\n  chain classify {{\n    type filter hook forward priority 0; policy accept;\n    iifname \"{lan}\" meta priority set ether saddr map @up\n    oifname \"{lan}\" meta priority set ip daddr map @down\n  }}\n}}\n",
                    up.join(", "),
                    down.join(", "),
                    lan = hs.lan_if
                );
                nft_load(&gw, &s)?;
            }
        }
        Ok(Setup {
            kind,
            agent,
            iperf,
            frames: Arc::new(frames),
            hs,
        })
    }

    /// 64-byte UDP: packets/s that reached the server, packets/s offered, and
    /// packets that reached the server per CPU-second of the generator thread
    /// (which also runs the forwarding: veth delivers in the sender's context),
    /// a figure that does not depend on how much of a shared CPU the run got.
    pub fn udp_pps(&self, warm: Duration, window: Duration) -> Result<(f64, f64, f64)> {
        let g = gen::Generator::start(&self.hs.ap_ns, "up0", self.frames.clone())
            .context("starting the generator")?;
        std::thread::sleep(warm);
        let (rx0, _) = gen::if_packets(&self.hs.server_ns, "eth0");
        let t0 = Instant::now();
        std::thread::sleep(window);
        let (rx1, _) = gen::if_packets(&self.hs.server_ns, "eth0");
        let dt = t0.elapsed().as_secs_f64();
        let sent = g.stop().context("generator")?;
        let rx = (rx1 - rx0) as f64 / dt;
        let offered = sent.frames as f64 / sent.wall.as_secs_f64();
        let share = sent.cpu.as_secs_f64() / sent.wall.as_secs_f64();
        Ok((rx, offered, rx / share.max(1e-6)))
    }

    /// The session-agent TC ingress program's own time per packet (ns) in a
    /// 64-byte UDP window, and its share of the path's CPU time per packet,
    /// from the kernel's BPF run-time statistics. They are on only for this
    /// window (they add two clock reads to every run, which the figure
    /// includes), so the ratio windows run without them.
    pub fn program_in_situ(&self, warm: Duration, window: Duration) -> Result<(f64, f64)> {
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("enabling BPF run-time statistics")?;
        let (t0, n0) = ingress_runs()?;
        let (_, _, per_cpu_s) = self.udp_pps(warm, window)?;
        let (t1, n1) = ingress_runs()?;
        if n1 <= n0 {
            bail!("the session-agent ingress program did not run");
        }
        let ns = (t1 - t0) as f64 / (n1 - n0) as f64;
        Ok((ns, ns * per_cpu_s / 1e9))
    }

    /// Bulk TCP download (server to the real client), Gbit/s.
    pub fn tcp_gbits(&self, secs: u32) -> f64 {
        let r = iperf(&self.hs.clients[0].ns, self.iperf.addr, secs, 1, true);
        r.recv_mbits / 1000.0
    }

    /// Whether the configured dataplane really saw the traffic (a sanity check
    /// that the measurement went through it).
    pub fn check(&self) -> Result<()> {
        if let Some(a) = &self.agent {
            let mac = &self.hs.clients[0].mac;
            let c = a.client_or_zero(mac);
            if !c.allowed || c.down_bytes == 0 {
                bail!(
                    "session-agent did not count the real client: {c:?}\n{}",
                    a.log_tail()
                );
            }
        }
        Ok(())
    }
}

/// Total run time (ns) and runs of every loaded session-agent TC ingress program.
fn ingress_runs() -> Result<(u128, u64)> {
    let mut total = (0u128, 0u64);
    for p in aya::programs::loaded_programs() {
        let p = p.context("listing loaded BPF programs")?;
        if p.name_as_str() == Some("lan_tc_ingress") {
            total.0 += p.run_time().as_nanos();
            total.1 += p.run_count();
        }
    }
    Ok(total)
}

/// The cost of one load that misses the core's caches, through small and
/// huge pages (see [`super::memory`]), before the setups load the machine.
fn memory_floor(opts: &Opts) -> Result<Vec<Measurement>> {
    let (mut small, mut huge, mut share) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..opts.runs {
        small.push(super::memory::chase(false)?.ns_per_load);
        let h = super::memory::chase(true)?;
        huge.push(h.ns_per_load);
        share.push(h.huge_share);
    }
    progress(
        SCENARIO,
        format!(
            "a load that misses the caches: {:.0} ns through 4 KiB pages, {:.0} ns through 2 MiB pages ({:.0}% of the probe in huge pages)",
            super::median(&small),
            super::median(&huge),
            100.0 * super::median(&share)
        ),
    );
    Ok([
        ("load_miss_ns_4k", "ns/load", small),
        ("load_miss_ns_2m", "ns/load", huge),
        ("load_miss_huge_share", "fraction in huge pages", share),
    ]
    .into_iter()
    .map(|(metric, unit, runs)| Measurement::new(SCENARIO, MACHINE, 0, metric, unit, runs))
    .collect())
}

pub fn run(opts: &Opts) -> Result<(Vec<Measurement>, Vec<String>)> {
    let sizes: &[usize] = if opts.quick {
        &[1, 10_000]
    } else {
        &[1, 100, 1_000, 10_000]
    };
    // A run interleaves short UDP windows (A B C D E, three times), so each
    // dataplane sees the same share of a busy machine; the run's figure is the
    // mean over its windows.
    let (window, rounds, tcp_secs) = (Duration::from_millis(400), 3, 1);
    let warm = Duration::from_millis(100);
    let mut out = memory_floor(opts)?;
    for &n in sizes {
        let t = Instant::now();
        let mut setups = Vec::new();
        for k in Kind::ALL {
            progress(SCENARIO, format!("{n} clients: setting up {}", k.name()));
            setups
                .push(Setup::new(k, n).with_context(|| format!("{} with {n} clients", k.name()))?);
        }
        progress(
            SCENARIO,
            format!("{n} clients: set up in {:.1} s", t.elapsed().as_secs_f64()),
        );
        let mut pps: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
        let mut offered: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
        let mut gbits: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
        let mut per_cpu: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
        // Warm-up: one short pass of each (bridge/neighbour/agent state), not kept.
        for s in &setups {
            s.udp_pps(Duration::from_millis(100), Duration::from_millis(200))?;
        }
        for r in 0..opts.runs {
            let mut acc = vec![(0.0, 0.0, 0.0); setups.len()];
            for _ in 0..rounds {
                for (i, s) in setups.iter().enumerate() {
                    let (p, o, c) = s.udp_pps(warm, window)?;
                    acc[i].0 += p / rounds as f64;
                    acc[i].1 += o / rounds as f64;
                    acc[i].2 += c / rounds as f64;
                }
            }
            for (i, (p, o, c)) in acc.into_iter().enumerate() {
                pps[i].push(p);
                offered[i].push(o);
                per_cpu[i].push(c);
            }
            for (i, s) in setups.iter().enumerate() {
                gbits[i].push(s.tcp_gbits(tcp_secs));
            }
            let line: Vec<String> = setups
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    format!(
                        "{} {:.0} kpps ({:.0} k/CPU-s) {:.2} Gbit/s",
                        s.kind.name(),
                        pps[i][r as usize] / 1e3,
                        per_cpu[i][r as usize] / 1e3,
                        gbits[i][r as usize]
                    )
                })
                .collect();
            progress(
                SCENARIO,
                format!(
                    "{n} clients, run {}/{}: {}",
                    r + 1,
                    opts.runs,
                    line.join(" | ")
                ),
            );
        }
        for s in &setups {
            s.check()?;
        }
        // The program's own cost in the same traffic, in windows of their own.
        let agent = setups
            .iter()
            .find(|s| s.kind == Kind::SessionAgent)
            .context("no session_agent setup")?;
        let (mut prog_ns, mut prog_share) = (Vec::new(), Vec::new());
        for _ in 0..opts.runs {
            let (ns, share) = agent.program_in_situ(warm, window)?;
            prog_ns.push(ns);
            prog_share.push(share);
        }
        progress(
            SCENARIO,
            format!(
                "{n} clients: the ingress program takes {:.0} ns per packet, {:.1}% of the path",
                super::median(&prog_ns),
                100.0 * super::median(&prog_share)
            ),
        );
        for (metric, unit, runs) in [
            ("program_ns_in_situ", "ns/packet", prog_ns),
            (
                "program_share",
                "fraction of the path's CPU time",
                prog_share,
            ),
        ] {
            out.push(Measurement::new(
                SCENARIO,
                Kind::SessionAgent.name(),
                n as u32,
                metric,
                unit,
                runs,
            ));
        }
        let base_pps = super::median(&pps[0]);
        let base_gbits = super::median(&gbits[0]);
        let base_cpu = super::median(&per_cpu[0]);
        for (i, s) in setups.iter().enumerate() {
            let mut m = Measurement::new(
                SCENARIO,
                s.kind.name(),
                n as u32,
                "udp64_pps",
                "packets/s",
                pps[i].clone(),
            );
            m.baseline = Some(base_pps);
            m.ratio_median = Some(super::run_ratio(&pps[i], &pps[0]));
            out.push(m);
            out.push(Measurement::new(
                SCENARIO,
                s.kind.name(),
                n as u32,
                "udp64_offered_pps",
                "packets/s",
                offered[i].clone(),
            ));
            let mut m = Measurement::new(
                SCENARIO,
                s.kind.name(),
                n as u32,
                "udp64_per_cpu_s",
                "packets/CPU-s",
                per_cpu[i].clone(),
            );
            m.baseline = Some(base_cpu);
            m.ratio_median = Some(super::run_ratio(&per_cpu[i], &per_cpu[0]));
            out.push(m);
            let mut m = Measurement::new(
                SCENARIO,
                s.kind.name(),
                n as u32,
                "tcp_gbits",
                "Gbit/s",
                gbits[i].clone(),
            );
            m.baseline = Some(base_gbits);
            m.ratio_median = Some(super::run_ratio(&gbits[i], &gbits[0]));
            out.push(m);
        }
        drop(setups);
        progress(
            SCENARIO,
            format!("{n} clients done in {:.0} s", t.elapsed().as_secs_f64()),
        );
    }
    let notes = vec![
        "Each dataplane runs on its own copy of the hotspot (client, access point bridge, gateway, server namespaces), so runs interleave without reconfiguring; each ratio is the median over runs of (figure / `no_program` figure of the same run).".into(),
        "64-byte UDP (60-byte frames, IP length 46), each run three rounds of 0.4 s windows over all dataplanes in turn: an AF_PACKET generator (sendmmsg, qdisc bypass, one thread) in the access point namespace sends prebuilt frames onto the gateway uplink with source MACs rotating over all configured clients, each client from its own IPv4 address (with anti-spoofing an address belongs to the first MAC that uses it); packets/s is what arrives on the server's interface. The generator and the forwarding share one CPU (veth delivers in the sender's context), so packets/s is the rate of the whole path on one core, as much of it as the shared machine gave; packets per CPU-second divides by the generator thread's CPU time (system time included, which is where the forwarding runs), so it does not depend on that share.".into(),
        "The ingress program's own time per packet is the kernel's BPF run-time statistics (`run_time_ns / run_cnt`, BPF_ENABLE_STATS) over separate 0.4 s windows of the same 64-byte traffic after the ratio runs; the statistics add two clock reads to each run, which the figure includes. Its share of the path is that time over the path's CPU time per packet in the same window (the inverse of packets per CPU-second).".into(),
        "Bulk TCP: one iperf3 flow from the server down to the real client (`-R`, 1 s measured after 1 s omitted), which is one of the configured clients, in the middle of the list.".into(),
        "session_agent: the daemon running with its default poll (250 ms), every configured MAC allowed with `session-agent allow`. nft_chain: `iifname lan0 jump up` / `oifname lan0 jump down`; `up` holds one `ether saddr M counter` rule per client (walked completely, like openNDS's per-client MARK rules), `down` one `ip daddr A counter accept` per client. nft_set: sets of type ether_addr / ipv4_addr with the `counter` flag. htb: HTB on wan0 and lan0 with one class per client (rate = ceil = 100 Gbit/s, burst 4 MB: tc's computed default burst is 0 at such rates, which throttles), the class chosen by `meta priority set ether saddr map @up` / `ip daddr map @down` in the forward hook.".into(),
    ];
    Ok((out, notes))
}
