//! A busy hotspot compressed: paying clients move traffic while a schedule
//! buys (through the API and with voucher codes typed on the portal page),
//! pauses, resumes and tops up their sessions, another logs in and out through
//! RADIUS while its server comes and goes, an unpaid client keeps
//! trying while 5,000 further devices behind its port speak ARP, ND, DHCP and
//! DNS with the gateway and send through it (from their own addresses and
//! from a paying client's), and the agent is killed (-9) and restarted,
//! reloaded (SIGHUP, with a changed setting) and restarted with a LAN added
//! along the way. Checked from references the agent does not keep: every byte
//! a paying client moved through the gateway is charged once to its sessions
//! (nftables on the forward path and in the client's namespace), no byte of
//! the unpaid devices is forwarded or reaches the server, the gateway's DHCP
//! and DNS answer them, a device with a session and data left is never blocked
//! for more than a second, a paused session is charged no time, the time
//! charged across a kill -9 is the time that passed, and the agent's memory
//! and CPU stay flat.
//!
//! The short run is part of the test suite; `cargo xtask soak` runs the long
//! one (`SESSION_SOAK_SECS`, default 1,800) and writes its report and a plot
//! of memory, CPU and poll time to `target/soak/`.

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc,
};

use session_tests::{
    api::ApiClient,
    dns::Dnsmasq,
    nft::{nft_apply, nft_counters, ServerWatch},
    plot,
    radius::{attr, octets, FreeRadius, RadiusConfig},
    raw::{CrowdFrame, MacCrowd, RawSender, CROWD_PORT},
    require_root,
    sessions::*,
    topo::parse_mac,
    traffic::portal_redeem,
    AgentBuilder, Client, Hotspot, NftRef, ServerSet,
};

/// Clients that buy through the control API; one more never pays, and the
/// one after it logs in through RADIUS ([`RADIUS_USER`]).
const PAYING: usize = 3;
const RADIUS_CLIENT: usize = PAYING + 1;
const RADIUS_SECRET: &str = "soak-s3cret";
/// The RADIUS client's account: 12 MB a login at 8 Mbit/s, an interim
/// update every 10 s.
const RADIUS_USER: (&str, &str) = ("soak", "s0ak");
const RADIUS_USERS: &str = r#"soak	Cleartext-Password := "s0ak"
	Session-Timeout = 3600,
	ChilliSpot-Max-Total-Octets = 12000000,
	WISPr-Bandwidth-Max-Down = 8000000,
	WISPr-Bandwidth-Max-Up = 8000000,
	Acct-Interim-Interval = 10
"#;
/// Further devices behind the unpaid client's port, each with its own MAC
/// and addresses: a round of one frame each every [`HOSTILE_EVERY`].
const HOSTILE_MACS: u32 = 5_000;
const HOSTILE_EVERY: Duration = Duration::from_secs(2);
/// Every paying session's speed: its data lasts tens of seconds.
const MBITS: i32 = 8;
/// Longest a device with a running session and data left may go without a
/// probe answered (the probes' own 200 ms wait included).
const MAX_BLOCKED: Duration = Duration::from_millis(1_000);
/// The portal's port on the gateway's LAN address.
const CAPTIVE_PORT: u16 = 8908;
/// The station on the LAN added mid-run.
const STATION_MAC: &str = "02:5a:77:00:00:01";

/// A seeded, reproducible schedule (splitmix64): the seed is printed, so a
/// failing run can be played again with `SESSION_SOAK_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One paying client and what the schedule did to it.
struct Paying {
    client: Client,
    device: i64,
    rx: RxRef,
    probe: Probe,
    traffic: Background,
    /// The running session's time consumed when it was paused.
    paused: Option<(i64, u64)>,
    /// Logs in through RADIUS rather than buying through the API.
    radius: bool,
}

/// What a run found, for the report.
#[derive(Default)]
struct Report {
    seed: u64,
    secs: u64,
    events: Vec<(f64, String)>,
    /// Seconds from a kill -9 until the restarted agent said READY.
    restarts: Vec<f64>,
    reloads: u32,
    /// Frames the crowd of unpaid devices sent, by kind ([`CrowdFrame::ALL`]).
    crowd: [u64; 6],
    /// DHCP offers and DNS answers the gateway's dnsmasq gave the crowd, and
    /// the crowd's devices in the gateway's neighbour table at the end.
    dhcp_offers: usize,
    dns_answers: usize,
    neighbours: usize,
    /// Per running session across a kill -9: seconds from the last reading
    /// before the kill to the first after READY, and the time charged in them.
    downtime: Vec<(f64, f64)>,
    /// When the LAN was added (the agent restarted with it).
    lan_added: Option<f64>,
    /// Voucher codes typed on the portal page.
    codes: u32,
    /// RADIUS: outages of the server (seconds each), logins refused during
    /// them, and per session (Acct-Session-Id) the octets of its Stop.
    radius_outages: Vec<f64>,
    radius_refused: u32,
    radius_sessions: Vec<(String, u64)>,
    /// Per paying client: (charged, delivered, forwarded) bytes.
    usage: Vec<(String, u64, u64, u64)>,
    /// Longest time a device with data left went without an answered probe.
    worst_blocked: Duration,
    /// Resident memory of the agent, KiB, with the time it was read and the process.
    rss: Vec<(f64, u64, u32)>,
    /// Agent CPU ms per second between samples (NaN for a process's first).
    cpu: Vec<(f64, f64)>,
    /// Mean poll time (ms) between samples, from the agent's metrics.
    poll: Vec<(f64, f64)>,
    /// CPU per second after warm-up: the mean of the run's middle and last thirds.
    cpu_thirds: Option<(f64, f64)>,
}

impl Report {
    fn markdown(&self) -> String {
        let worst_down = self
            .downtime
            .iter()
            .map(|(secs, charged)| charged - secs)
            .fold(0.0, |a: f64, d| if d.abs() > a.abs() { d } else { a });
        let mut s = format!(
            "# Soak: {} s, seed {}\n\n{} events ({} codes redeemed on the portal), {} kill -9 and restart (READY after {:.2} s at worst), {} reloads{}.\n\n\
             Time charged across a kill -9, against the time that passed: {} running sessions, the largest difference {worst_down:+.2} s (bound: exact, within the whole seconds charged).\n\n\
             Longest a device with data left went without an answered probe: {} ms (limit {} ms).\n\n\
             | client | charged bytes | delivered (reference) | forwarded (gateway) |\n|---|---:|---:|---:|\n",
            self.secs,
            self.seed,
            self.events.len(),
            self.codes,
            self.restarts.len(),
            self.restarts.iter().copied().fold(0.0, f64::max),
            self.reloads,
            match self.lan_added {
                Some(t) => format!(", a LAN added at {t:.1} s"),
                None => String::new(),
            },
            self.downtime.len(),
            self.worst_blocked.as_millis(),
            MAX_BLOCKED.as_millis(),
        );
        for (mac, charged, delivered, forwarded) in &self.usage {
            let _ = writeln!(s, "| {mac} | {charged} | {delivered} | {forwarded} |");
        }
        let _ = writeln!(
            s,
            "\n## RADIUS\n\n{} outages of the server ({:.1} s in all), {} logins refused during them. The server's Stops (in the usage table as the RADIUS client's charges):\n\n| Acct-Session-Id | Stop octets (in + out) |\n|---|---:|",
            self.radius_outages.len(),
            self.radius_outages.iter().fold(0.0, |a, b| a + b),
            self.radius_refused,
        );
        for (id, stop) in &self.radius_sessions {
            let _ = writeln!(s, "| {id} | {stop} |");
        }
        let _ = writeln!(
            s,
            "\n## The unpaid crowd ({HOSTILE_MACS} devices)\n\n| frames | sent |\n|---|---:|"
        );
        for (kind, n) in CrowdFrame::ALL.iter().zip(self.crowd) {
            let _ = writeln!(s, "| {kind:?} | {n} |");
        }
        let _ = writeln!(
            s,
            "\nForwarded or at the server: none. The gateway's dnsmasq made {} DHCP offers and answered {} lookups; {} of the devices were in the gateway's neighbour table at the end.",
            self.dhcp_offers, self.dns_answers, self.neighbours
        );
        if let Some((mid, last)) = self.cpu_thirds {
            let _ = writeln!(
                s,
                "\nCPU after warm-up: {mid:.1} ms per second in the run's middle third, {last:.1} in its last."
            );
        }
        let _ = writeln!(s, "\n## Resident memory, CPU and poll time over the run (`soak.png`)\n\n| s | RSS KiB | CPU ms/s | poll ms |\n|---:|---:|---:|---:|");
        for (((t, rss, _), (_, cpu)), (_, poll)) in self.rss.iter().zip(&self.cpu).zip(&self.poll) {
            // No CPU or poll figure for the first sample of a process.
            let f = |v: &f64| {
                if v.is_nan() {
                    "-".to_string()
                } else {
                    format!("{v:.2}")
                }
            };
            let _ = writeln!(s, "| {t:.1} | {rss} | {} | {} |", f(cpu), f(poll));
        }
        let _ = writeln!(s, "\n## Events\n");
        for (t, e) in &self.events {
            let _ = writeln!(s, "- {t:.1} s: {e}");
        }
        s
    }

    /// Memory (MiB), CPU (ms per second) and poll time (ms) over the run.
    fn plot(&self, path: &std::path::Path) -> std::io::Result<()> {
        let rss: Vec<(f64, f64)> = self
            .rss
            .iter()
            .map(|(t, kib, _)| (*t, *kib as f64 / 1024.0))
            .collect();
        plot::line_charts(
            path,
            self.secs as f64,
            &[
                plot::Series {
                    title: "agent resident memory (MiB)",
                    points: &rss,
                },
                plot::Series {
                    title: "agent CPU (ms per second)",
                    points: &self.cpu,
                },
                plot::Series {
                    title: "mean poll (ms)",
                    points: &self.poll,
                },
            ],
        )
    }
}

/// Logs the device in as [`RADIUS_USER`].
fn radius_login(api: &ApiClient, device: i64) -> session_tests::api::Response {
    api.post(
        &format!("/v1/devices/{device}/login"),
        &serde_json::json!({ "username": RADIUS_USER.0, "password": RADIUS_USER.1 }),
    )
}

/// The data charged to all of a device's sessions.
fn charged(api: &ApiClient, device: i64) -> u64 {
    api.sessions(device)
        .iter()
        .map(|s| field(s, "data_cons_bytes"))
        .sum()
}

/// The device's running session: its id, data left and time consumed.
fn running(api: &ApiClient, device: i64) -> Option<(i64, u64, u64)> {
    api.sessions(device)
        .iter()
        .find(|s| s["running"] == true)
        .map(|s| {
            (
                sid(s),
                field(s, "remaining_data_bytes"),
                field(s, "time_cons"),
            )
        })
}

/// The longest stretch of failed probes that began while the device was
/// let through with data left, up to `until`.
fn longest_failure(probe: &Probe, from: Instant, until: Instant) -> Duration {
    let mut worst = Duration::ZERO;
    let mut since: Option<Instant> = None;
    for r in probe.results() {
        if r.at < from || r.at > until {
            continue;
        }
        match (r.ok, since) {
            (false, None) => since = Some(r.at),
            (true, Some(s)) => {
                worst = worst.max(r.at - s);
                since = None;
            }
            _ => {}
        }
    }
    if let Some(s) = since {
        worst = worst.max(until - s);
    }
    worst
}

fn soak(secs: u64) -> Report {
    require_root();
    let seed = std::env::var("SESSION_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("soak: {secs} s, seed {seed} (SESSION_SOAK_SEED={seed} plays it again)");
    let mut rng = Rng(seed);
    let mut report = Report {
        seed,
        secs,
        ..Report::default()
    };
    let mut hs = Hotspot::builder().clients(RADIUS_CLIENT + 1).build();
    std::fs::create_dir_all(&hs.state_dir).unwrap();
    let cfg = hs.state_dir.join("config.toml");
    std::fs::write(&cfg, "idle_timeout_secs = 0\n").unwrap();
    let mut nft = NftRef::install(&hs);
    let servers = ServerSet::start(&hs.server_ns, hs.server_v4, hs.server_v6, 5001, 5002);
    // The gateway's resolver and DHCP server, as on a real gateway.
    let dnsmasq = Dnsmasq::start(
        &hs.gw_ns,
        &[IpAddr::V4(hs.gw_lan_v4)],
        &[
            format!("--address=/soak.test/{}", hs.server_v4),
            "--dhcp-range=10.201.0.100,10.201.0.249,255.255.255.0,2m".into(),
            format!(
                "--dhcp-leasefile={}",
                hs.state_dir.join("dnsmasq.leases").display()
            ),
            "--log-queries".into(),
        ],
    );
    let mut radius = FreeRadius::start(
        &hs.server_ns,
        hs.server_v4.into(),
        &RadiusConfig::new(RADIUS_SECRET, RADIUS_USERS),
    );
    let secret = hs.state_dir.join("radius.secret");
    std::fs::write(&secret, format!("{RADIUS_SECRET}\n")).unwrap();
    // The portal on every address of the gateway: a client types its code at
    // the gateway's address on its own LAN (the LAN added too), whose answers
    // its download reference leaves out as it leaves out all of its LAN's.
    let captive = |c: &Client| {
        let o = c.ipv4.octets();
        std::net::SocketAddr::from(([o[0], o[1], o[2], 1], CAPTIVE_PORT))
    };
    let mut agent = AgentBuilder::new(&hs)
        .arg("--config")
        .arg(cfg.display().to_string())
        .arg("--captive-listen")
        .arg(format!("0.0.0.0:{CAPTIVE_PORT}"))
        .arg("--radius-server")
        .arg(radius.auth_addr().to_string())
        .arg("--radius-acct-server")
        .arg(radius.acct_addr().to_string())
        .arg("--radius-secret-file")
        .arg(secret.display().to_string())
        .arg("--radius-nas-id")
        .arg("soak")
        .arg("--radius-timeout-ms")
        .arg("300")
        .arg("--radius-retries")
        .arg("1")
        .start();
    let mut api = agent.api();
    let watch = ServerWatch::install(&hs);
    // The crowd's UDP (port 9): never forwarded, never at the server.
    let crowd_rules = |hook: &str| {
        format!(
            "table inet sa_crowd {{\n  counter seen {{ }}\n  chain c {{\n    type filter hook {hook} priority -450; policy accept;\n    udp dport {CROWD_PORT} counter name \"seen\"\n  }}\n}}\n"
        )
    };
    nft_apply(&hs.gw_ns, &crowd_rules("forward"));
    nft_apply(&hs.server_ns, &crowd_rules("prerouting"));
    let crowd_seen = |ns: &str| nft_counters(ns, "sa_crowd").get("seen").copied();
    let unpaid = hs.client(PAYING).clone();
    let mut unpaid_traffic = Background::start(&unpaid.ns, &servers);
    let crowd_sent: Arc<[AtomicU64; 6]> = Arc::new(Default::default());
    let hostile_stop = Arc::new(AtomicBool::new(false));
    let hostile = {
        let (c, sent, stop) = (unpaid.clone(), crowd_sent.clone(), hostile_stop.clone());
        let crowd = MacCrowd {
            macs: HOSTILE_MACS,
            gw_mac: parse_mac(&hs.gw_lan_mac),
            gw_v4: hs.gw_lan_v4,
            gw_v6: hs.gw_lan_v6,
            server: hs.server_v4,
            spoofed: hs.client(0).ipv4,
        };
        let end = Instant::now() + Duration::from_secs(secs + 60);
        std::thread::spawn(move || {
            let tx = RawSender::open(&c.ns, &c.ifname).expect("a raw socket for the crowd");
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                crowd.round(&tx, round, &sent, &stop);
                round += 1;
                std::thread::sleep(HOSTILE_EVERY);
            }
        })
    };
    let join = |api: &ApiClient, client: Client, radius: bool| Paying {
        device: api.device_id(&client.mac),
        rx: RxRef::install(&client),
        probe: Probe::start(&client.ns, servers.udp4.addr, Duration::from_millis(100)),
        traffic: Background::start(&client.ns, &servers),
        paused: None,
        radius,
        client,
    };
    let mut paying: Vec<Paying> = (0..PAYING)
        .map(|i| join(&api, hs.client(i).clone(), false))
        .chain([join(&api, hs.client(RADIUS_CLIENT).clone(), true)])
        .collect();
    // The server's outage under way: when it began and when it ends.
    let mut outage: Option<(Instant, Instant)> = None;
    let t0 = Instant::now();
    let at = |t: Instant| t.duration_since(t0).as_secs_f64();
    // Every paying client buys once before the schedule plays: a short run's
    // random draws might otherwise leave one without a purchase, proving nothing.
    for p in &paying {
        let event = if p.radius {
            let r = radius_login(&api, p.device);
            assert_eq!(r.status, 201, "the first RADIUS login: {}", r.body);
            format!("{} logs in through RADIUS", p.client.mac)
        } else {
            let mb = 4 + rng.below(21);
            let id = new_session(&api, p.device, TIME_OR_DATA, 3_600, mb as f64, MBITS, MBITS);
            let _ = api.connect(p.device, "soak");
            format!("{} buys {mb} MB (session {id})", p.client.mac)
        };
        report.events.push((at(Instant::now()), event));
    }
    let mut last_cpu: Option<(u32, Instant, f64, f64, f64)> = None;
    // Reloads of the agent process running now (its log is its own).
    let mut reloads_here = 0;
    let mut step = 0u64;
    while t0.elapsed() < Duration::from_secs(secs) {
        step += 1;
        // Halfway: a LAN is added (a restart applies it) with a new customer on it.
        if report.lan_added.is_none() && t0.elapsed() >= Duration::from_secs(secs / 2) {
            agent.stop();
            let station = hs.add_lan(STATION_MAC);
            let lan = hs.extra_lans[0].clone();
            nft.add_client(&lan, &station);
            watch.add_client(&station);
            let mut b = agent.builder().clone();
            b.lans.push(lan.clone());
            let t = Instant::now();
            agent = b.start();
            api = agent.api();
            let ready = t.elapsed().as_secs_f64();
            last_cpu = None;
            reloads_here = 0;
            let p = join(&api, station, false);
            let mb = 4 + rng.below(21);
            let id = new_session(&api, p.device, TIME_OR_DATA, 3_600, mb as f64, MBITS, MBITS);
            let _ = api.connect(p.device, "soak");
            report.lan_added = Some(at(Instant::now()));
            report.events.push((
                at(Instant::now()),
                format!(
                    "{lan} added, the agent restarted with it (READY after {ready:.2} s); {} on it buys {mb} MB (session {id})",
                    p.client.mac
                ),
            ));
            paying.push(p);
            continue;
        }
        if let Some((began, ends)) = outage {
            if Instant::now() >= ends {
                radius.resume();
                outage = None;
                let secs = began.elapsed().as_secs_f64();
                report.radius_outages.push(secs);
                report.events.push((
                    at(Instant::now()),
                    format!("the RADIUS server is back after {secs:.1} s"),
                ));
            }
        }
        // A quarter in, unless the draws made one already: the RADIUS server
        // goes away while its client is logged in. Its logout then waits for
        // the server, and a login meanwhile is refused and lets nothing through.
        if report.radius_outages.is_empty()
            && outage.is_none()
            && t0.elapsed() >= Duration::from_secs(secs / 4)
        {
            let p = paying.iter().find(|p| p.radius).unwrap();
            radius.stop();
            let secs = 3 + rng.below(4);
            outage = Some((Instant::now(), Instant::now() + Duration::from_secs(secs)));
            let out = api.disconnect(p.device, "soak logout");
            let r = radius_login(&api, p.device);
            assert!(
                r.status >= 500 && running(&api, p.device).is_none(),
                "a RADIUS login during the outage answered {}: {}\n{}",
                r.status,
                r.body,
                device_report(&api, p.device)
            );
            report.radius_refused += 1;
            report.events.push((
                at(Instant::now()),
                format!(
                    "the RADIUS server goes away for {secs} s; {} logs out ({}) and its login is refused ({})",
                    p.client.mac, out.status, r.status
                ),
            ));
            continue;
        }
        let who = rng.below(paying.len() as u64) as usize;
        let p = &mut paying[who];
        let now_running = running(&api, p.device);
        let draw = rng.below(20);
        let event = match draw {
            // The RADIUS client logs in when out, and out when in; during an
            // outage the login is refused and it stays out.
            0..=13 if p.radius => match now_running {
                None => {
                    let r = radius_login(&api, p.device);
                    if outage.is_some() {
                        assert!(
                            r.status >= 500,
                            "a RADIUS login during the outage answered {}: {}",
                            r.status,
                            r.body
                        );
                        report.radius_refused += 1;
                    } else {
                        assert_eq!(r.status, 201, "a RADIUS login: {}", r.body);
                    }
                    format!(
                        "{} logs in through RADIUS ({}{})",
                        p.client.mac,
                        r.status,
                        if outage.is_some() {
                            ", the server is down"
                        } else {
                            ""
                        }
                    )
                }
                Some((id, _, _)) => {
                    let r = api.disconnect(p.device, "soak logout");
                    format!("{} logs out of session {id} ({})", p.client.mac, r.status)
                }
            },
            // The RADIUS server goes away for 2 to 8 s.
            17 if outage.is_none() => {
                radius.stop();
                let secs = 2 + rng.below(7);
                outage = Some((Instant::now(), Instant::now() + Duration::from_secs(secs)));
                format!("the RADIUS server goes away for {secs} s")
            }
            // Buy: a session of 4 to 24 MB at 8 Mbit/s, connected at once.
            // One purchase in three is a voucher code typed on the portal page.
            0..=4 => {
                let mb = 4 + rng.below(21);
                if now_running.is_none() {
                    p.paused = None;
                }
                if rng.below(3) == 0 {
                    let code = api
                        .post(
                            "/v1/vouchers",
                            &serde_json::json!({
                                "count": 1, "batch": "soak", "type": TIME_OR_DATA,
                                "time_secs": 3_600, "data_mb": mb as f64,
                                "down_mbits": MBITS, "up_mbits": MBITS,
                            }),
                        )
                        .ok("a voucher")[0]["display_code"]
                        .as_str()
                        .unwrap()
                        .to_string();
                    let (status, head, page) =
                        portal_redeem(&p.client.ns, captive(&p.client), &code);
                    assert!(
                        status == 303 && head.contains("location: /portal?done="),
                        "{} typing code {code} on the portal: {status}\n{head}\n{page}",
                        p.client.mac
                    );
                    let done = head
                        .lines()
                        .find_map(|l| l.strip_prefix("location: /portal?done="))
                        .unwrap_or_default()
                        .trim()
                        .to_string();
                    report.codes += 1;
                    format!(
                        "{} redeems a code of {mb} MB on the portal ({done})",
                        p.client.mac
                    )
                } else {
                    let id =
                        new_session(&api, p.device, TIME_OR_DATA, 3_600, mb as f64, MBITS, MBITS);
                    if now_running.is_none() {
                        let _ = api.connect(p.device, "soak");
                    }
                    format!("{} buys {mb} MB (session {id})", p.client.mac)
                }
            }
            // Pause.
            5..=7 => match now_running {
                Some((id, _, _)) => {
                    let r = api.disconnect(p.device, "soak pause");
                    p.paused = Some((id, field(&api.session(id), "time_cons")));
                    format!("{} pauses ({})", p.client.mac, r.status)
                }
                None => continue,
            },
            // Resume: a paused session is charged no time while paused.
            8..=10 => match (now_running, p.paused.take()) {
                (None, Some((id, time_cons))) => {
                    let before = field(&api.session(id), "time_cons");
                    assert_eq!(
                        before, time_cons,
                        "session {id} of {} was charged time while paused",
                        p.client.mac
                    );
                    let r = api.connect(p.device, "soak resume");
                    format!("{} resumes session {id} ({})", p.client.mac, r.status)
                }
                (None, None) => {
                    let r = api.connect(p.device, "soak resume");
                    format!("{} connects ({})", p.client.mac, r.status)
                }
                _ => continue,
            },
            // Top up a running session: no break.
            11..=13 => match now_running {
                Some(_) => {
                    let id = new_session(&api, p.device, TIME_OR_DATA, 3_600, 8.0, MBITS, MBITS);
                    format!("{} tops up (session {id})", p.client.mac)
                }
                None => continue,
            },
            // kill -9, down for up to 1.5 s, restart.
            // The time charged across it is the time that passed.
            14..=15 => {
                let down = Duration::from_millis(rng.below(1_500));
                let before: Vec<(i64, u64, Instant)> = paying
                    .iter()
                    .filter_map(|p| running(&api, p.device))
                    .map(|(id, _, time_cons)| (id, time_cons, Instant::now()))
                    .collect();
                agent.kill9();
                std::thread::sleep(down);
                let t = Instant::now();
                agent = agent.restart();
                api = agent.api();
                let ready = t.elapsed().as_secs_f64();
                report.restarts.push(ready);
                last_cpu = None;
                reloads_here = 0;
                for (id, time_cons, read) in before {
                    let s = api.session(id);
                    if s["running"] != true {
                        continue;
                    }
                    let passed = read.elapsed().as_secs_f64();
                    let charged = field(&s, "time_cons") as f64 - time_cons as f64;
                    report.downtime.push((passed, charged));
                    // Whole seconds, each reading up to a poll behind.
                    assert!(
                        (passed - 2.0..=passed + 1.5).contains(&charged),
                        "session {id} was charged {charged} s across a kill -9 while {passed:.2} s passed (down {} ms, READY after {ready:.2} s)\n{s}\n{}",
                        down.as_millis(),
                        report.markdown()
                    );
                }
                format!(
                    "kill -9, down {} ms, READY after {ready:.2} s",
                    down.as_millis()
                )
            }
            // SIGHUP with a changed setting.
            16 => {
                let idle = if report.reloads.is_multiple_of(2) {
                    3_600
                } else {
                    0
                };
                std::fs::write(&cfg, format!("idle_timeout_secs = {idle}\n")).unwrap();
                // SAFETY: kill has no memory effects; the pid is the agent's.
                unsafe { libc::kill(agent.pid().unwrap() as i32, libc::SIGHUP) };
                report.reloads += 1;
                reloads_here += 1;
                let n = reloads_here;
                let ok = wait_for(Duration::from_secs(10), Duration::from_millis(50), || {
                    (agent.log().matches("configuration reloaded").count() >= n).then_some(())
                });
                assert!(
                    ok.is_some(),
                    "reload {n} not applied:\n{}",
                    agent.log_tail()
                );
                format!("SIGHUP, idle_timeout_secs = {idle}")
            }
            _ => "quiet".to_string(),
        };
        report.events.push((at(Instant::now()), event));
        let window_start = Instant::now();
        std::thread::sleep(Duration::from_millis(400 + rng.below(1_200)));
        // No byte of the unpaid client (or the crowd behind its port) passes, ever.
        let u = nft.get(&unpaid.mac);
        assert_eq!(
            (u.up_bytes, u.down_bytes),
            (0, 0),
            "the unpaid client's traffic was forwarded at step {step}\n{}",
            report.markdown()
        );
        assert_eq!(
            (crowd_seen(&hs.gw_ns), crowd_seen(&hs.server_ns)),
            (Some((0, 0)), Some((0, 0))),
            "the crowd's UDP (forwarded, at the server) at step {step}\n{}",
            report.markdown()
        );
        assert_eq!(
            (watch.from_client(PAYING), watch.other()),
            ((0, 0), (0, 0)),
            "unpaid frames reached the server at step {step}: {:?}\n{}",
            watch.all(),
            report.markdown()
        );
        // A device let through with plenty of data left answers its probes.
        for p in &paying {
            let Some((_, left, _)) = running(&api, p.device) else {
                continue;
            };
            if left < 4 * MB {
                continue;
            }
            let from = window_start + Duration::from_millis(200);
            let worst =
                longest_failure(&p.probe, from, Instant::now() - Duration::from_millis(250));
            report.worst_blocked = report.worst_blocked.max(worst);
            assert!(
                worst <= MAX_BLOCKED,
                "{} had {left} bytes left and went {} ms without an answered probe at step {step}\n{}\n{}",
                p.client.mac,
                worst.as_millis(),
                device_report(&api, p.device),
                report.markdown()
            );
        }
        if let (Some(pid), Some(rss), Some(cpu_ms)) = (agent.pid(), agent.rss_kib(), agent.cpu_ms())
        {
            let now = Instant::now();
            let (poll_s, polls) = poll_totals(&agent.metrics());
            report.rss.push((at(now), rss, pid));
            let (cpu, poll) = match last_cpu {
                Some((p, t, ms, s0, n0)) if p == pid => (
                    (cpu_ms - ms) / now.duration_since(t).as_secs_f64(),
                    if polls > n0 {
                        (poll_s - s0) * 1000.0 / (polls - n0)
                    } else {
                        f64::NAN
                    },
                ),
                _ => (f64::NAN, f64::NAN),
            };
            report.cpu.push((at(now), cpu));
            report.poll.push((at(now), poll));
            last_cpu = Some((pid, now, cpu_ms, poll_s, polls));
        }
    }
    // The end: traffic stops, the agent charges the last bytes.
    hostile_stop.store(true, Ordering::Relaxed);
    hostile.join().expect("the crowd's sender");
    for (n, sent) in report.crowd.iter_mut().zip(crowd_sent.iter()) {
        *n = sent.load(Ordering::Relaxed);
    }
    // ARP, ND, DHCP and DNS with the gateway pass for devices that never paid.
    let log = dnsmasq.log_text();
    report.dhcp_offers = log.matches("DHCPOFFER").count();
    report.dns_answers = log.matches(".soak.test is ").count();
    report.neighbours = {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", hs.gw_ns))
            .args(["ip", "neigh", "show", "dev", &hs.lan_if])
            .output()
            .expect("ip neigh");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("02:c0:0d:"))
            .count()
    };
    assert!(
        report
            .crowd
            .iter()
            .all(|&n| n >= u64::from(HOSTILE_MACS) / 6)
            && report.dhcp_offers > 0
            && report.dns_answers > 0
            && report.neighbours > 0,
        "the crowd's ARP, ND, DHCP or DNS with the gateway did not pass\n{}\ndnsmasq:\n{}",
        report.markdown(),
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    let _ = unpaid_traffic.finish();
    for p in &mut paying {
        let _ = p.traffic.finish();
        p.probe.stop();
    }
    // The RADIUS server is back and its client logs out.
    if outage.take().is_some() {
        radius.resume();
    }
    let radius_device = paying.iter().find(|p| p.radius).unwrap().device;
    let _ = api.disconnect(radius_device, "soak end");
    std::thread::sleep(Duration::from_millis(1_500));
    // Every RADIUS session started has its Stop: the server's records are
    // the RADIUS client's charges (a session it stopped with allowance left
    // is removed from the agent's store, so the agent keeps no total).
    let stops = wait_for(Duration::from_secs(30), Duration::from_millis(200), || {
        let records = radius.accounting();
        let ids = |status: &str| {
            records
                .iter()
                .filter(|r| attr(r, "Acct-Status-Type") == Some(status))
                .filter_map(|r| attr(r, "Acct-Session-Id").map(str::to_string))
                .collect::<std::collections::BTreeSet<_>>()
        };
        let (started, stopped) = (ids("Start"), ids("Stop"));
        (!started.is_empty() && started.is_subset(&stopped)).then(|| {
            // One Stop per session (a repeat carries the same counts).
            let mut by_id = std::collections::BTreeMap::new();
            for r in &records {
                if attr(r, "Acct-Status-Type") == Some("Stop") {
                    let id = attr(r, "Acct-Session-Id").unwrap_or_default().to_string();
                    by_id.insert(id, octets(r, "Input") + octets(r, "Output"));
                }
            }
            by_id
        })
    });
    report.radius_sessions = stops
        .unwrap_or_else(|| {
            panic!(
                "a RADIUS session without its Stop 30 s after the end: {:#?}\n{}",
                radius.accounting(),
                report.markdown()
            )
        })
        .into_iter()
        .collect();
    let in_stops: u64 = report.radius_sessions.iter().map(|s| s.1).sum();
    let mut failures = Vec::new();
    for p in &paying {
        let read = || {
            let r = Refs::read(&nft, &p.rx, &p.client.mac);
            let c = if p.radius {
                in_stops
            } else {
                charged(&api, p.device)
            };
            (c, r.delivered(), r.forwarded())
        };
        // Settled: two reads a charge apart agree.
        let mut last = read();
        for _ in 0..20 {
            std::thread::sleep(CHARGE_SETTLE);
            let next = read();
            if next == last {
                break;
            }
            last = next;
        }
        let (c, delivered, forwarded) = last;
        let who = if p.radius {
            format!("{} (RADIUS: the server's Stops)", p.client.mac)
        } else {
            p.client.mac.clone()
        };
        report.usage.push((who, c, delivered, forwarded));
        if c != delivered {
            failures.push(format!(
                "{}: charged {c}, delivered {delivered} (forwarded {forwarded})\n{}",
                p.client.mac,
                device_report(&api, p.device)
            ));
        }
        assert!(
            delivered > 0,
            "{} moved nothing: the run proves nothing",
            p.client.mac
        );
    }
    assert!(
        failures.is_empty(),
        "charged usage differs from the reference:\n{}\n{}\n{}",
        failures.join("\n"),
        report.markdown(),
        agent.log_tail()
    );
    // Memory stays flat: the last process's resident memory after its first
    // third of samples grows by no more than 4 MiB.
    let pid = agent.pid();
    let last: Vec<u64> = report
        .rss
        .iter()
        .filter(|(_, _, p)| Some(*p) == pid)
        .map(|(_, r, _)| *r)
        .collect();
    if last.len() >= 6 {
        let (warm, end) = (last[last.len() / 3], *last.last().unwrap());
        assert!(
            end <= warm + 4 * 1024,
            "resident memory grew from {warm} to {end} KiB\n{}",
            report.markdown()
        );
    }
    // CPU stays flat: each process's first two samples are its start; the
    // rest, in the run's last third, average at most twice the middle
    // third's (plus 5 ms per second, the noise of a short run).
    report.cpu_thirds = cpu_thirds(&report.rss, &report.cpu, secs as f64);
    if let Some((mid, last)) = report.cpu_thirds {
        assert!(
            last <= 2.0 * mid + 5.0,
            "CPU per second grew from {mid:.1} to {last:.1} ms\n{}",
            report.markdown()
        );
    }
    report
}

/// The mean CPU per second of the run's middle and last thirds, leaving out
/// each process's first two samples; None when a third has no sample.
fn cpu_thirds(rss: &[(f64, u64, u32)], cpu: &[(f64, f64)], secs: f64) -> Option<(f64, f64)> {
    let mut seen = std::collections::HashMap::new();
    let mut thirds = [(0.0, 0u32); 3];
    for ((_, _, pid), (t, v)) in rss.iter().zip(cpu) {
        let n = seen.entry(*pid).or_insert(0u32);
        *n += 1;
        if *n <= 2 || !v.is_finite() {
            continue;
        }
        let k = ((t / secs * 3.0) as usize).min(2);
        thirds[k].0 += v;
        thirds[k].1 += 1;
    }
    let mean = |(sum, n): (f64, u32)| (n > 0).then(|| sum / f64::from(n));
    Some((mean(thirds[1])?, mean(thirds[2])?))
}

/// The agent's total poll time (seconds) and poll count, from its metrics.
fn poll_totals(metrics: &str) -> (f64, f64) {
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (
        value("session_agent_poll_duration_seconds_sum "),
        value("session_agent_poll_duration_seconds_count "),
    )
}

fn report_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/soak")
}

#[test]
fn a_busy_minute_with_kills_and_reloads_charges_every_byte_once_and_lets_nothing_unpaid_through() {
    let secs = std::env::var("SESSION_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let report = soak(secs);
    let dir = report_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("report.md");
    std::fs::write(&path, report.markdown()).unwrap();
    let plot = dir.join("soak.png");
    report.plot(&plot).unwrap();
    eprintln!("soak report: {} and {}", path.display(), plot.display());
}
