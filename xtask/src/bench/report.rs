//! bench/results.json and the generated section of BENCHMARKS.md.

use std::{collections::BTreeSet, path::Path, process::Command};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{forwarding::MACHINE, Measurement, ScenarioRun};

pub const START: &str = "<!-- xtask-bench:start -->";
pub const END: &str = "<!-- xtask-bench:end -->";

/// The machine the figures were measured on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_mib: u64,
    pub kernel: String,
    pub tools: Vec<String>,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let mem_total_mib = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kib| kib / 1024)
            .unwrap_or(0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        let first_line = |prog: &str, arg: &str| -> Option<String> {
            let o = Command::new(prog).arg(arg).output().ok()?;
            let s = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            s.lines().next().map(|l| l.trim().to_string())
        };
        let tools = [("iperf3", "--version"), ("nft", "--version"), ("tc", "-V")]
            .iter()
            .filter_map(|(p, a)| first_line(p, a))
            .collect();
        Machine {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            cpu_model,
            mem_total_mib,
            kernel,
            tools,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    pub machine: Machine,
    pub scenarios: Vec<ScenarioRun>,
    pub measurements: Vec<Measurement>,
}

impl Results {
    /// The previous results (kept for scenarios not run this time), or empty.
    pub fn load(path: &Path) -> Results {
        let Ok(text) = std::fs::read_to_string(path) else {
            return Results::default();
        };
        serde_json::from_str(&text).unwrap_or_else(|e| {
            println!(
                "==> {} does not parse ({e}); starting afresh",
                path.display()
            );
            Results::default()
        })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    fn find(
        &self,
        scenario: &str,
        case: &str,
        clients: Option<u32>,
        metric: &str,
    ) -> Option<&Measurement> {
        self.measurements.iter().find(|m| {
            m.scenario == scenario
                && m.case == case
                && m.metric == metric
                && clients.is_none_or(|c| m.clients == c)
        })
    }

    fn run_of(&self, name: &str) -> Option<&ScenarioRun> {
        self.scenarios.iter().find(|s| s.name == name)
    }
}

/// The `scenario` field of a scenario's measurements.
pub fn scenario_key(name: &str) -> &'static str {
    match name {
        "program-cost" => "program_cost",
        "forwarding" => "forwarding",
        "rate-limit" => "rate_limit",
        "quota" => "quota",
        "agent-cost" => "agent_cost",
        "flood" => "flood",
        _ => "unknown",
    }
}

pub fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Met,
    NotMet,
    NotMeasured,
}

impl Status {
    fn of(ok: bool) -> Status {
        if ok {
            Status::Met
        } else {
            Status::NotMet
        }
    }
    fn label(self) -> &'static str {
        match self {
            Status::Met => "met",
            Status::NotMet => "NOT MET",
            Status::NotMeasured => "not measured",
        }
    }
}

pub struct Goal {
    pub scenario: &'static str,
    pub goal: &'static str,
    pub measured: String,
    pub status: Status,
}

/// One load that misses the caches (4 KiB pages): its ns, and its share of the
/// no-program path's CPU time per packet at `clients`.
fn miss_floor(r: &Results, clients: u32) -> Option<(f64, f64)> {
    let ns = r
        .find("forwarding", MACHINE, Some(0), "load_miss_ns_4k")?
        .median;
    let per_cpu = r
        .find("forwarding", "no_program", Some(clients), "udp64_per_cpu_s")?
        .median;
    (per_cpu > 0.0).then(|| (ns, ns / (1e9 / per_cpu)))
}

fn clients_set(r: &Results, scenario: &str, case: &str, metric: &str) -> Vec<u32> {
    let s: BTreeSet<u32> = r
        .measurements
        .iter()
        .filter(|m| m.scenario == scenario && m.case == case && m.metric == metric)
        .map(|m| m.clients)
        .collect();
    s.into_iter().collect()
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn signed_thousands(x: f64) -> String {
    if x < 0.0 {
        format!("-{}", thousands((-x).round() as u64))
    } else {
        thousands(x.round() as u64)
    }
}

/// How one of the agent's rate-limit modes did against goal 3.
struct RateLimitMode {
    case: &'static str,
    n: usize,
    good: usize,
    retr_ok: usize,
    bad: Vec<String>,
}

impl RateLimitMode {
    fn met(&self) -> bool {
        self.good == self.n && self.retr_ok == self.n
    }

    fn summary(&self) -> String {
        let mut s = format!(
            "goodput within 3% in {} of {n} cases, retransmits <= HTB's in {} of {n}",
            self.good,
            self.retr_ok,
            n = self.n
        );
        if !self.bad.is_empty() {
            s += &format!(" (outside: {})", self.bad.join("; "));
        }
        s
    }
}

/// Goal 3 for the rate-limit cells of `case`; `None` if it was not measured.
fn rate_limit_mode(r: &Results, case: &'static str) -> Option<RateLimitMode> {
    let cells: Vec<&Measurement> = r
        .measurements
        .iter()
        .filter(|m| m.scenario == "rate_limit" && m.case == case && m.metric == "goodput_mbits")
        .collect();
    if cells.is_empty() {
        return None;
    }
    let mut out = RateLimitMode {
        case,
        n: cells.len(),
        good: 0,
        retr_ok: 0,
        bad: Vec::new(),
    };
    for m in &cells {
        let ratio = m.ratio().unwrap_or(f64::NAN);
        let key = |case: &str, metric: &str| {
            r.measurements.iter().find(|x| {
                x.scenario == "rate_limit"
                    && x.case == case
                    && x.metric == metric
                    && x.limit_mbits == m.limit_mbits
                    && x.direction == m.direction
                    && x.flows == m.flows
            })
        };
        let ar = key(case, "retransmits")
            .map(|x| x.median)
            .unwrap_or(f64::NAN);
        let hr = key("htb", "retransmits")
            .map(|x| x.median)
            .unwrap_or(f64::NAN);
        let g = (0.97..=1.03).contains(&ratio);
        let rt = ar <= hr;
        out.good += g as usize;
        out.retr_ok += rt as usize;
        if !g || !rt {
            out.bad.push(format!(
                "{} Mbit/s {} {} flow{}: {:.3} of the limit, {} vs HTB {} retransmits",
                m.limit_mbits.unwrap_or(0),
                m.direction.as_deref().unwrap_or("?"),
                m.flows.unwrap_or(0),
                if m.flows == Some(1) { "" } else { "s" },
                ratio,
                ar,
                hr
            ));
        }
    }
    Some(out)
}

pub fn goals(r: &Results) -> Vec<Goal> {
    let mut v = Vec::new();
    // 1. Program cost.
    {
        let cl = clients_set(r, "program_cost", "full_path", "ns_per_packet");
        let goal = "full path at most 100 ns per packet (net of the no-op program), flat from 1 to 65,536 clients (ratio <= 1.2)";
        if let (Some(lo), Some(hi)) = (cl.first(), cl.last()) {
            let full = |c: u32| r.find("program_cost", "full_path", Some(c), "ns_per_packet");
            let net_max = cl
                .iter()
                .filter_map(|c| full(*c))
                .map(|m| m.median - m.baseline.unwrap_or(0.0))
                .fold(f64::MIN, f64::max);
            let raw_hi = full(*hi).map(|m| m.median).unwrap_or(f64::NAN);
            let flat = raw_hi / full(*lo).map(|m| m.median).unwrap_or(f64::NAN);
            v.push(Goal {
                scenario: "1 program cost",
                goal,
                measured: format!(
                    "net of the no-op: at most {net_max:.1} ns over {} to {} clients ({raw_hi:.1} ns raw at {}); {} vs {} clients: {flat:.2}",
                    thousands(*lo as u64),
                    thousands(*hi as u64),
                    thousands(*hi as u64),
                    thousands(*hi as u64),
                    lo
                ),
                status: Status::of(net_max <= 100.0 && flat <= 1.2),
            });
        } else {
            v.push(Goal {
                scenario: "1 program cost",
                goal,
                measured: "-".into(),
                status: Status::NotMeasured,
            });
        }
    }
    // 2. Forwarding.
    {
        let goal = "session-agent keeps at least 0.95 of the no-program rate at 10,000 clients";
        let cl = clients_set(r, "forwarding", "session_agent", "udp64_pps");
        if let Some(hi) = cl.last() {
            let pps = r
                .find("forwarding", "session_agent", Some(*hi), "udp64_pps")
                .and_then(|m| m.ratio())
                .unwrap_or(f64::NAN);
            let tcp = r
                .find("forwarding", "session_agent", Some(*hi), "tcp_gbits")
                .and_then(|m| m.ratio())
                .unwrap_or(f64::NAN);
            let cpu = r
                .find("forwarding", "session_agent", Some(*hi), "udp64_per_cpu_s")
                .and_then(|m| m.ratio())
                .unwrap_or(f64::NAN);
            let in_situ = match (
                r.find(
                    "forwarding",
                    "session_agent",
                    Some(*hi),
                    "program_ns_in_situ",
                ),
                r.find("forwarding", "session_agent", Some(*hi), "program_share"),
            ) {
                (Some(ns), Some(share)) => format!(
                    "; the program itself {:.0} ns per packet, {:.1}% of the path's CPU time",
                    ns.median,
                    100.0 * share.median
                ),
                _ => String::new(),
            };
            let floor = miss_floor(r, *hi)
                .map(|(ns, share)| {
                    format!(
                        "; one load that misses the caches costs {ns:.0} ns here, {:.1}% of the path",
                        100.0 * share
                    )
                })
                .unwrap_or_default();
            v.push(Goal {
                scenario: "2 forwarding",
                goal,
                measured: format!(
                    "{} clients, of no program: 64-byte UDP {cpu:.3} per CPU-second ({pps:.3} in packets/s on the shared machine), bulk TCP {tcp:.3}; judged on UDP per CPU-second and TCP{in_situ}{floor}",
                    thousands(*hi as u64)
                ),
                status: if *hi < 10_000 {
                    Status::NotMeasured
                } else {
                    Status::of(cpu >= 0.95 && tcp >= 0.95)
                },
            });
        } else {
            v.push(Goal {
                scenario: "2 forwarding",
                goal,
                measured: "-".into(),
                status: Status::NotMeasured,
            });
        }
    }
    // 3. Rate limit: judged on the best of the agent's modes, each one shown.
    {
        let goal = "goodput within 3% of the limit, retransmits no higher than HTB's";
        let modes: Vec<RateLimitMode> = ["session_agent", "session_agent_htb"]
            .into_iter()
            .filter_map(|case| rate_limit_mode(r, case))
            .collect();
        match modes.iter().max_by_key(|m| (m.met(), m.good + m.retr_ok)) {
            None => v.push(Goal {
                scenario: "3 rate limit",
                goal,
                measured: "-".into(),
                status: Status::NotMeasured,
            }),
            Some(best) => {
                let mut parts = vec![format!("{} (best): {}", best.case, best.summary())];
                for m in modes.iter().filter(|m| m.case != best.case) {
                    parts.push(format!("{}: {}", m.case, m.summary()));
                }
                v.push(Goal {
                    scenario: "3 rate limit",
                    goal,
                    measured: parts.join("; "),
                    status: Status::of(best.met()),
                });
            }
        }
    }
    // 4. Quota.
    {
        let goal = "at most one packet (1,500 bytes) delivered past a 10 MB quota";
        match (
            r.find("quota", "session_agent", None, "overshoot_bytes"),
            r.find("quota", "session_agent", None, "overshoot_packets"),
        ) {
            (Some(b), Some(p)) => {
                let worst = b.runs.iter().copied().fold(f64::MIN, f64::max);
                v.push(Goal {
                    scenario: "4 quota",
                    goal,
                    measured: format!(
                        "median {:.0} bytes ({:.2} packets), worst run {:.0} bytes",
                        b.median, p.median, worst
                    ),
                    status: Status::of(worst <= 1500.0),
                });
            }
            _ => v.push(Goal {
                scenario: "4 quota",
                goal,
                measured: "-".into(),
                status: Status::NotMeasured,
            }),
        }
    }
    // 5. Agent cost.
    {
        let goal = "one poll of 10,000 clients under 3 ms";
        match r.find("agent_cost", "poll_all_charged", Some(10_000), "wall_ms") {
            Some(m) => {
                let of = |case: &str| {
                    r.find("agent_cost", case, Some(10_000), "wall_ms")
                        .map(|m| m.median)
                        .unwrap_or(f64::NAN)
                };
                v.push(Goal {
                    scenario: "5 agent cost",
                    goal,
                    measured: format!(
                        "{:.2} ms with every device charged, {:.2} ms idle (wall); \
                         committing every device's usage to the log {:.1} ms, once a second",
                        m.median,
                        of("poll_idle"),
                        of("commit_all_charged")
                    ),
                    status: Status::of(m.median < 3.0),
                });
            }
            None => v.push(Goal {
                scenario: "5 agent cost",
                goal,
                measured: "-".into(),
                status: Status::NotMeasured,
            }),
        }
        // A second of the agent's work with every device active (see
        // `second_of_work`), each poll charging every device.
        let goal = "all 65,536 devices active, with an open RADIUS session and two address bindings each: poll + books + sweep + commit under 50 ms of CPU per second";
        if let Some((total, [poll, books, books_sweep, sweep, commit])) =
            second_of_work(r, 65_536, "second_of_polls_all", "commit_all_charged")
        {
            v.push(Goal {
                scenario: "5 agent cost",
                goal,
                measured: format!(
                    "{total:.1} ms: a second's 4 polls {poll:.1}, RADIUS round {books:.1} + sweep {books_sweep:.1} / 30, \
                     binding sweep {sweep:.1} (wall) / {BINDING_SWEEP_EVERY_S}, commit {commit:.1}"
                ),
                status: Status::of(total < 50.0),
            });
        }
        // The same second with 1,000 devices active, at 65,536 and at 1,000
        // connected (a real second's polls include the check of the table).
        let goal = "65,536 connected devices of which 1,000 active, with RADIUS sessions and bindings: a second's CPU within 2x of 1,000 connected devices all active";
        let second = |n: u32| {
            second_of_work(r, n, "second_of_polls_1000", "commit_1000_charged").map(|(t, _)| t)
        };
        if let (Some(big), Some(small)) = (second(65_536), second(1_000)) {
            v.push(Goal {
                scenario: "5 agent cost",
                goal,
                measured: format!(
                    "{:.2}x: {big:.2} ms at 65,536 against {small:.2} ms at 1,000 \
                     (a second's 4 polls with the table check, the commit, RADIUS and the binding sweep)",
                    big / small
                ),
                status: Status::of(big <= 2.0 * small),
            });
        }
        let goal = "under 64 MiB resident at 65,536 clients, with an open RADIUS session and two address bindings each";
        if let Some(m) = r.find(
            "agent_cost",
            "resident_memory_radius",
            Some(65_536),
            "rss_mib",
        ) {
            // Judged on the larger of the figures after and before the
            // second's heap trim (older runs measured after it only).
            let untrimmed = r
                .find(
                    "agent_cost",
                    "resident_memory_radius_untrimmed",
                    Some(65_536),
                    "rss_mib",
                )
                .map(|u| u.median);
            let worst = untrimmed.map_or(m.median, |u| u.max(m.median));
            v.push(Goal {
                scenario: "5 agent cost",
                goal,
                measured: match untrimmed {
                    Some(u) => format!(
                        "{:.1} MiB after the second's heap trim, {u:.1} MiB before it",
                        m.median
                    ),
                    None => format!("{:.1} MiB", m.median),
                },
                status: Status::of(worst < 64.0),
            });
        }
        let goal = "under 64 MiB resident at 65,536 clients";
        match r.find("agent_cost", "resident_memory", Some(65_536), "rss_mib") {
            Some(m) => v.push(Goal {
                scenario: "5 agent cost",
                goal,
                measured: format!("{:.1} MiB", m.median),
                status: Status::of(m.median < 64.0),
            }),
            None => v.push(Goal {
                scenario: "5 agent cost",
                goal,
                measured: "-".into(),
                status: Status::NotMeasured,
            }),
        }
    }
    // 6. Flood: judged on both floods.
    {
        let goal = "under 30 s of 200,000 random MACs a new customer reaches the portal, is online within 5 s of paying, a paying client loses nothing, the agent's memory stays bounded";
        let worst = |m: &Measurement| m.runs.iter().copied().fold(f64::MIN, f64::max);
        let quick = r.run_of("flood").is_some_and(|s| s.quick);
        let mut parts = Vec::new();
        let mut met = true;
        for case in ["flood", "flood_unthrottled"] {
            let f = |metric: &str| r.find("flood", case, None, metric);
            if let (Some(portal), Some(online), Some(lost), Some(table), Some(rss)) = (
                f("portal_ms"),
                f("online_ms"),
                f("payer_lost_probes"),
                f("table_clients_max"),
                f("agent_rss_growth_mib"),
            ) {
                parts.push(format!(
                    "{case}: portal after {:.0} ms (worst {:.0}), online {:.0} ms after paying (worst {:.0}); {:.0} probes lost (worst {:.0}); table up to {:.0} clients; RSS {:+.1} MiB",
                    portal.median,
                    worst(portal),
                    online.median,
                    worst(online),
                    lost.median,
                    worst(lost),
                    table.median,
                    rss.median,
                ));
                met &= worst(online) <= 5000.0 && worst(lost) <= 2.0 && worst(rss) < 64.0;
            }
        }
        v.push(Goal {
            scenario: "6 flood",
            goal,
            measured: if parts.is_empty() {
                "-".into()
            } else {
                parts.join("; ")
                    + if quick {
                        "; 10 s floods (`--quick`)"
                    } else {
                        ""
                    }
            },
            status: if parts.len() < 2 || quick {
                Status::NotMeasured
            } else {
                Status::of(met)
            },
        });
    }
    v
}

pub fn goals_text(r: &Results) -> String {
    let mut s = String::from("Goals:\n");
    for g in goals(r) {
        s += &format!(
            "  [{:<12}] {}: {}\n      measured: {}\n",
            g.status.label(),
            g.scenario,
            g.goal,
            g.measured
        );
    }
    s
}

fn run_line(r: &Results, name: &str) -> String {
    match r.run_of(name) {
        Some(s) => {
            let mut l = format!(
                "Measured {}: median of {} run{}{}, {:.0} s, load average {} before, {} after.",
                s.date,
                s.runs,
                if s.runs == 1 { "" } else { "s" },
                if s.quick { " (`--quick`)" } else { "" },
                s.seconds,
                s.load_before,
                s.load_after
            );
            if let Some(e) = &s.error {
                l += &format!("\n\n**Failed:** `{}`", e.lines().next().unwrap_or(""));
            }
            l
        }
        None => "Not measured yet.".into(),
    }
}

/// A column of scenario 5's tables: a figure, wall and CPU time of a case,
/// how many times one case takes another (with its digits), or two cases'
/// same figure.
#[derive(Clone, Copy)]
enum Col {
    One(&'static str, &'static str),
    WallCpu(&'static str),
    Times(&'static str, &'static str, &'static str, usize),
    Pair(&'static str, &'static str, &'static str),
}

/// Seconds between two sweeps of the address bindings at the default
/// bind_ttl (300 s): every four TTLs while the datapath refuses no claim for
/// lack of room (it treats a binding unused for the TTL as free itself).
const BINDING_SWEEP_EVERY_S: f64 = 1200.0;

/// A second of the agent's work at `n` devices, CPU ms, from one run: the
/// four polls (`--poll-ms` 250) of a real second, `poll`, RADIUS's round and a thirtieth of its
/// sweep of every session, the binding sweep's share (wall time, see
/// [`BINDING_SWEEP_EVERY_S`]) and a `commit`; with those five figures.
fn second_of_work(r: &Results, n: u32, poll: &str, commit: &str) -> Option<(f64, [f64; 5])> {
    let m = |case: &str, metric: &str| {
        r.find("agent_cost", case, Some(n), metric)
            .map(|m| m.median)
    };
    let parts = [
        m(poll, "cpu_ms")?,
        m("radius_books_second", "cpu_ms")?,
        m("radius_books_sweep", "cpu_ms")?,
        m("bindings_sweep", "wall_ms")?,
        m(commit, "cpu_ms")?,
    ];
    let [p, b, bs, s, c] = parts;
    Some((p + b + bs / 30.0 + s / BINDING_SWEEP_EVERY_S + c, parts))
}

fn notes(r: &Results, name: &str) -> String {
    r.run_of(name)
        .map(|s| {
            s.notes
                .iter()
                .map(|n| format!("- {n}\n"))
                .collect::<String>()
        })
        .unwrap_or_default()
}

fn fmt_ratio(m: Option<&Measurement>) -> String {
    m.and_then(|m| m.ratio())
        .map(|x| format!("{x:.3}"))
        .unwrap_or_else(|| "-".into())
}

pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    s += START;
    s += "\n## Dataplane comparison (`cargo xtask bench`)\n\n";
    s += "Generated by `cargo xtask bench` (`--quick`, `--only 1,2,3,4,5`, `--runs N`) from `bench/results.json`; \
          edits here are overwritten. Runs of the compared setups are interleaved (A B C A B C ...); each figure \
          is the median of the runs, and each comparison is a ratio to a reference measured in the same run \
          (the no-program figure, the limit, the quota), since absolute figures move from machine to machine.\n\n";
    let m = &r.machine;
    s += &format!(
        "Machine: {} cores ({}), {:.1} GiB memory, kernel {}; {}. The machine is shared with concurrent builds (load \
         averages per scenario below), which moves absolute figures between runs; the same-run ratios are what compare.\n\n",
        m.nproc,
        m.cpu_model,
        m.mem_total_mib as f64 / 1024.0,
        m.kernel,
        m.tools.join(", ")
    );
    s += "### Goals\n\n| scenario | goal | measured | status |\n|---|---|---|---|\n";
    for g in goals(r) {
        s += &format!(
            "| {} | {} | {} | {} |\n",
            g.scenario,
            g.goal,
            g.measured,
            g.status.label()
        );
    }

    // 1. Program cost.
    s += "\n### 1. Program cost (BPF_PROG_TEST_RUN)\n\n";
    s += &run_line(r, "program-cost");
    s += "\n\n";
    s += &notes(r, "program-cost");
    let cl = clients_set(r, "program_cost", "noop_baseline", "ns_per_packet");
    if !cl.is_empty() {
        let cases = [
            "allowed_counted",
            "allowed_counted_no_gate",
            "allowed_counted_redirect_on",
            "full_path",
            "rate_limited",
            "quota_exhausted",
            "blocked",
        ];
        s += "\n| clients | no-op ns |";
        for c in cases {
            s += &format!(" {c} ns (net) |");
        }
        s += "\n|---:|---:|";
        for _ in cases {
            s += "---:|";
        }
        s += "\n";
        for c in &cl {
            let noop = r
                .find("program_cost", "noop_baseline", Some(*c), "ns_per_packet")
                .map(|m| m.median)
                .unwrap_or(f64::NAN);
            s += &format!("| {} | {:.1} |", thousands(*c as u64), noop);
            for case in cases {
                match r.find("program_cost", case, Some(*c), "ns_per_packet") {
                    Some(m) => s += &format!(" {:.1} ({:.1}) |", m.median, m.median - noop),
                    None => s += " - |",
                }
            }
            s += "\n";
        }
    }

    // 2. Forwarding.
    s += "\n### 2. Forwarding through the gateway\n\n";
    s += &run_line(r, "forwarding");
    s += "\n\n";
    s += &notes(r, "forwarding");
    let kinds = ["no_program", "session_agent", "nft_chain", "nft_set", "htb"];
    let cl = clients_set(r, "forwarding", "no_program", "udp64_pps");
    if !cl.is_empty() {
        for (metric, title, scale, unit) in [
            (
                "udp64_pps",
                "64-byte UDP, thousand packets/s at the server (ratio to no program)",
                1e-3,
                "kpps",
            ),
            (
                "udp64_per_cpu_s",
                "64-byte UDP, thousand packets per CPU-second of the sending thread, which runs the forwarding (ratio to no program)",
                1e-3,
                "k",
            ),
            (
                "tcp_gbits",
                "Bulk TCP download, Gbit/s (ratio to no program)",
                1.0,
                "Gbit/s",
            ),
        ] {
            s += &format!("\n{title}:\n\n| clients |");
            for k in kinds {
                s += &format!(" {k} |");
            }
            s += "\n|---:|";
            for _ in kinds {
                s += "---:|";
            }
            s += "\n";
            for c in &cl {
                s += &format!("| {} |", thousands(*c as u64));
                for k in kinds {
                    match r.find("forwarding", k, Some(*c), metric) {
                        Some(m) if k == "no_program" => {
                            s += &format!(
                                " {:.*} {unit} |",
                                if scale < 1.0 { 0 } else { 2 },
                                m.median * scale
                            )
                        }
                        Some(m) => {
                            s += &format!(
                                " {:.*} ({}) |",
                                if scale < 1.0 { 0 } else { 2 },
                                m.median * scale,
                                fmt_ratio(Some(m))
                            )
                        }
                        None => s += " - |",
                    }
                }
                s += "\n";
            }
        }
        let prog: Vec<(u32, &Measurement, &Measurement)> = cl
            .iter()
            .filter_map(|c| {
                Some((
                    *c,
                    r.find(
                        "forwarding",
                        "session_agent",
                        Some(*c),
                        "program_ns_in_situ",
                    )?,
                    r.find("forwarding", "session_agent", Some(*c), "program_share")?,
                ))
            })
            .collect();
        if !prog.is_empty() {
            s += "
session-agent's TC ingress program in the same 64-byte traffic, from the kernel's BPF run-time statistics: its own time per packet, and its share of the CPU time of the whole path per packet:

| clients | program ns per packet | share of the path |
|---:|---:|---:|
";
            for (c, ns, share) in prog {
                s += &format!(
                    "| {} | {:.0} | {:.1}% |
",
                    thousands(c as u64),
                    ns.median,
                    100.0 * share.median
                );
            }
        }
        let small = r.find("forwarding", MACHINE, Some(0), "load_miss_ns_4k");
        let huge = r.find("forwarding", MACHINE, Some(0), "load_miss_ns_2m");
        let huge_share = r.find("forwarding", MACHINE, Some(0), "load_miss_huge_share");
        if let (Some(small), Some(huge), Some(hs)) = (small, huge, huge_share) {
            s += &format!(
                "\nThe machine's own floor: one load that misses the core's caches (a chain of dependent loads over random lines of 512 MiB) takes {:.0} ns through 4 KiB pages, as BPF array maps are mapped, and {:.0} ns through 2 MiB pages ({:.0}% of the probe was in huge pages). ",
                small.median,
                huge.median,
                100.0 * hs.median
            );
            if let Some((c, (_, share))) = cl.last().and_then(|c| Some((c, miss_floor(r, *c)?))) {
                s += &format!(
                    "At {} clients, where every packet comes from another client and the clients' state has left the caches by the time a client's next packet comes, one such load is {:.1}% of the whole path's CPU time per packet without a program: the least that reading any per-client state costs there.\n",
                    thousands(*c as u64),
                    100.0 * share
                );
            }
        }
        // Offered load, for reading the UDP figures.
        s += "\nOffered 64-byte UDP load (generator send rate, thousand packets/s): ";
        let mut parts = Vec::new();
        for c in &cl {
            let o: Vec<String> = kinds
                .iter()
                .filter_map(|k| r.find("forwarding", k, Some(*c), "udp64_offered_pps"))
                .map(|m| format!("{:.0}", m.median / 1e3))
                .collect();
            parts.push(format!(
                "{} clients: {}",
                thousands(*c as u64),
                o.join(" / ")
            ));
        }
        s += &parts.join("; ");
        s += " (in the column order above).\n";
    }

    // 3. Rate limit.
    s += "\n### 3. Rate-limit quality\n\n";
    s += &run_line(r, "rate-limit");
    s += "\n\n";
    s += &notes(r, "rate-limit");
    let cells: Vec<&Measurement> = r
        .measurements
        .iter()
        .filter(|m| m.scenario == "rate_limit" && m.metric == "goodput_mbits")
        .collect();
    if !cells.is_empty() {
        s += "\n| limit | direction | flows | dataplane | goodput Mbit/s | goodput / limit | retransmits | mean RTT ms |\n|---:|---|---:|---|---:|---:|---:|---:|\n";
        for m in cells {
            let other = |metric: &str| {
                r.measurements.iter().find(|x| {
                    x.scenario == "rate_limit"
                        && x.case == m.case
                        && x.metric == metric
                        && x.limit_mbits == m.limit_mbits
                        && x.direction == m.direction
                        && x.flows == m.flows
                })
            };
            s += &format!(
                "| {} | {} | {} | {} | {:.2} | {} | {} | {} |\n",
                m.limit_mbits.unwrap_or(0),
                m.direction.as_deref().unwrap_or("-"),
                m.flows.unwrap_or(0),
                m.case,
                m.median,
                fmt_ratio(Some(m)),
                other("retransmits")
                    .map(|x| format!("{:.0}", x.median))
                    .unwrap_or_else(|| "-".into()),
                other("rtt_ms")
                    .map(|x| format!("{:.1}", x.median))
                    .unwrap_or_else(|| "-".into()),
            );
        }
    }

    // 4. Quota.
    s += "\n### 4. Quota overshoot\n\n";
    s += &run_line(r, "quota");
    s += "\n\n";
    s += &notes(r, "quota");
    let cases: Vec<String> = {
        let mut v: Vec<String> = Vec::new();
        for m in r.measurements.iter().filter(|m| m.scenario == "quota") {
            if !v.contains(&m.case) {
                v.push(m.case.clone());
            }
        }
        v
    };
    if !cases.is_empty() {
        s += "\n| enforcer | delivered bytes | overshoot bytes | overshoot packets (1,500 B) | overshoot, all runs (bytes) |\n|---|---:|---:|---:|---|\n";
        for c in &cases {
            let f = |metric: &str| r.find("quota", c, None, metric);
            s += &format!(
                "| {} | {} | {} | {} | {} |\n",
                c,
                f("delivered_bytes")
                    .map(|m| thousands(m.median.max(0.0) as u64))
                    .unwrap_or_else(|| "-".into()),
                f("overshoot_bytes")
                    .map(|m| signed_thousands(m.median))
                    .unwrap_or_else(|| "-".into()),
                f("overshoot_packets")
                    .map(|m| format!("{:.1}", m.median))
                    .unwrap_or_else(|| "-".into()),
                f("overshoot_bytes")
                    .map(|m| m
                        .runs
                        .iter()
                        .map(|x| signed_thousands(*x))
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_else(|| "-".into()),
            );
        }
    }

    // 5. Agent cost.
    s += "\n### 5. Agent cost\n\n";
    s += &run_line(r, "agent-cost");
    s += "\n\n";
    s += &notes(r, "agent-cost");
    let cl = clients_set(r, "agent_cost", "poll_idle", "wall_ms");
    if !cl.is_empty() {
        let med = |c: u32, case: &str, metric: &str| {
            r.find("agent_cost", case, Some(c), metric)
                .map(|m| m.median)
        };
        let f = |c: u32, case: &str, metric: &str| {
            med(c, case, metric)
                .map(|v| format!("{v:.2}"))
                .unwrap_or_else(|| "-".into())
        };
        // How many times `a` is `b`, as measured in the same run.
        let x = |c: u32, a: &str, b: &str, metric: &str, digits: usize| match (
            med(c, a, metric),
            med(c, b, metric),
        ) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.*}", digits, a / b),
            _ => "-".into(),
        };
        // Each table: its header, then per number of devices, its columns.
        let tables: [(&str, &[Col]); 5] = [
            (
                "| connected devices | read counters ms | idle poll wall / CPU ms | all-charged poll wall / CPU ms | commit of all wall / CPU ms | table check wall / CPU ms | 1,000 charged: poll / commit CPU ms | resident MiB |\n|---:|---:|---:|---:|---:|---:|---:|---:|",
                &[
                    Col::One("read_counters", "wall_ms"),
                    Col::WallCpu("poll_idle"),
                    Col::WallCpu("poll_all_charged"),
                    Col::WallCpu("commit_all_charged"),
                    Col::WallCpu("check_table"),
                    Col::Pair("poll_1000_charged", "commit_1000_charged", "cpu_ms"),
                    Col::One("resident_memory", "rss_mib"),
                ],
            ),
            (
                "| connected devices, an IPv4 and an IPv6 binding each | bindings read by walking the keys ms | read in batches ms | x | sweep of the bindings ms |\n|---:|---:|---:|---:|---:|",
                &[
                    Col::One("bindings_walk", "wall_ms"),
                    Col::One("bindings_batch", "wall_ms"),
                    Col::Times("bindings_walk", "bindings_batch", "wall_ms", 1),
                    Col::One("bindings_sweep", "wall_ms"),
                ],
            ),
            (
                "| connected devices, all with an open RADIUS session | opening the book ms | round over every session wall / CPU ms | ordinary second wall / CPU ms | x | resident MiB with the bindings and the book, after / before the heap trim |\n|---:|---:|---:|---:|---:|---:|",
                &[
                    Col::One("radius_open_book", "wall_ms"),
                    Col::WallCpu("radius_books_sweep"),
                    Col::WallCpu("radius_books_second"),
                    Col::Times("radius_books_sweep", "radius_books_second", "cpu_ms", 0),
                    Col::Pair("resident_memory_radius", "resident_memory_radius_untrimmed", "rss_mib"),
                ],
            ),
            (
                "| connected devices | a real second's 4 polls, CPU ms: no traffic | 1,000 active | every device active | 1,000 active, a device going and one coming back before each poll (their CPU included) |\n|---:|---:|---:|---:|---:|",
                &[
                    Col::One("second_of_polls_idle", "cpu_ms"),
                    Col::One("second_of_polls_1000", "cpu_ms"),
                    Col::One("second_of_polls_all", "cpu_ms"),
                    Col::One("second_of_polls_1000_churn", "cpu_ms"),
                ],
            ),
            (
                "| connected devices | the same second with transparent huge pages off, CPU ms: no traffic | 1,000 active | x | every device active | x | resident MiB | peak resident MiB, huge pages on / off |\n|---:|---:|---:|---:|---:|---:|---:|---:|",
                &[
                    Col::One("second_of_polls_idle_4k", "cpu_ms"),
                    Col::One("second_of_polls_1000_4k", "cpu_ms"),
                    Col::Times("second_of_polls_1000_4k", "second_of_polls_1000", "cpu_ms", 2),
                    Col::One("second_of_polls_all_4k", "cpu_ms"),
                    Col::Times("second_of_polls_all_4k", "second_of_polls_all", "cpu_ms", 2),
                    Col::One("resident_memory_4k", "rss_mib"),
                    Col::Pair("resident_memory_peak", "resident_memory_peak_4k", "rss_mib"),
                ],
            ),
        ];
        for (header, cols) in tables {
            s += &format!("\n{header}\n");
            for &c in &cl {
                let cells: Vec<String> = cols
                    .iter()
                    .map(|col| match *col {
                        Col::One(case, metric) => f(c, case, metric),
                        Col::WallCpu(case) => {
                            format!("{} / {}", f(c, case, "wall_ms"), f(c, case, "cpu_ms"))
                        }
                        Col::Times(a, b, metric, digits) => x(c, a, b, metric, digits),
                        Col::Pair(a, b, metric) => {
                            format!("{} / {}", f(c, a, metric), f(c, b, metric))
                        }
                    })
                    .collect();
                s += &format!("| {} | {} |\n", thousands(c as u64), cells.join(" | "));
            }
        }
        let woken = |metric: &str| r.find("agent_cost", MACHINE, Some(0), metric);
        if let (Some(small), Some(huge)) = (
            woken("page_after_sleep_us_4k"),
            woken("page_after_sleep_us_2m"),
        ) {
            s += &format!(
                "\nThe machine, in the same run: a page of memory touched after 250 ms asleep (1,000 distinct pages of 64 MiB, as a poll wakes) costs {:.2} us through 4 KiB pages and {:.2} us through 2 MiB pages. A real second's polls pay the first for each page of the agent's state they touch, so the fourth table grows with the pages an active device's state is spread over. The fifth table is the same second in a process with transparent huge pages off (`PR_SET_THP_DISABLE`, as on a kernel without them), measured after the fourth's on the same store; `x` is how many times the fourth table's figure it is. The peak is the process's VmHWM over all of its work (the commit of every device holds large buffers for a moment).\n",
                small.median, huge.median
            );
        }
    }
    // 6. Flood.
    s += "\n### 6. A flood of MACs\n\n";
    s += &run_line(r, "flood");
    s += "\n\n";
    s += &notes(r, "flood");
    if r.measurements.iter().any(|m| m.scenario == "flood") {
        s += "\n| case | frames sent | portal ms | online after paying ms | paying client's lost probes | table clients (max) | agent RSS growth MiB |\n|---|---:|---:|---:|---:|---:|---:|\n";
        for c in ["quiet", "flood", "flood_unthrottled"] {
            let f = |metric: &str, digits: usize| {
                r.find("flood", c, None, metric)
                    .map(|m| format!("{:.*}", digits, m.median))
                    .unwrap_or_else(|| "-".into())
            };
            s += &format!(
                "| {c} | {} | {} | {} | {} | {} | {} |\n",
                r.find("flood", c, None, "frames")
                    .map(|m| thousands(m.median.max(0.0) as u64))
                    .unwrap_or_else(|| "-".into()),
                f("portal_ms", 1),
                f("online_ms", 1),
                f("payer_lost_probes", 0),
                f("table_clients_max", 0),
                f("agent_rss_growth_mib", 1),
            );
        }
    }
    s += "\n";
    s += END;
    s
}

/// Replaces the generated section of BENCHMARKS.md (or appends it), keeping
/// everything else.
pub fn write_markdown(path: &Path, r: &Results) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".into());
    let section = markdown(r);
    let new = match (old.find(START), old.find(END)) {
        (Some(a), Some(b)) if b > a => format!("{}{}{}", &old[..a], section, &old[b + END.len()..]),
        _ => {
            let mut s = old.trim_end().to_string();
            s += "\n\n";
            s += &section;
            s += "\n";
            s
        }
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}
