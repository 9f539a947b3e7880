//! `cargo xtask bench`: session-agent side by side with the dataplanes operators
//! use today (no program, nftables, tc HTB), in network namespaces made for the
//! run and removed afterwards.
//!
//! Scenarios (issue 6):
//! 1. `program-cost`: BPF_PROG_TEST_RUN per path (session-agent/benches/datapath.rs);
//! 2. `forwarding`: 64-byte UDP packets/s and bulk TCP through the gateway ([`forwarding`]);
//! 3. `rate-limit`: TCP goodput, retransmits and RTT under a speed limit ([`ratelimit`]);
//! 4. `quota`: bytes delivered past a 10 MB data budget ([`quota`]);
//! 5. `agent-cost`: counter poll time and resident memory (session-agent/benches/datapath.rs);
//! 6. `flood`: a new customer's way to the portal and online under a flood of MACs ([`flood`]).
//!
//! Runs of the compared setups are interleaved (A B C A B C ...), each figure is
//! the median of the runs, and comparisons are ratios to a reference measured in
//! the same run. Results go to `bench/results.json` and the
//! `<!-- xtask-bench:start -->` section of BENCHMARKS.md.

mod flood;
mod forwarding;
mod gen;
mod memory;
mod quota;
mod ratelimit;
mod report;

use std::{io::Write, panic::AssertUnwindSafe, path::Path, time::Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// One measured figure: the median of `runs`, with the reference of the same
/// run when the figure is compared to one (`baseline`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    pub scenario: String,
    pub case: String,
    pub clients: u32,
    pub metric: String,
    pub unit: String,
    #[serde(deserialize_with = "de_vec_f64")]
    pub runs: Vec<f64>,
    #[serde(deserialize_with = "de_f64")]
    pub median: f64,
    pub baseline: Option<f64>,
    /// Median over runs of (this run's figure / the baseline of the same run),
    /// when the baseline was measured run by run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio_median: Option<f64>,
    /// Speed limit of a rate-limit case, Mbit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_mbits: Option<u32>,
    /// `down` (to the client) or `up` (from the client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// Parallel TCP flows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows: Option<u32>,
}

/// JSON has no NaN (serde_json writes null): read null back as NaN.
fn de_f64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

fn de_vec_f64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    Ok(Vec::<Option<f64>>::deserialize(d)?
        .into_iter()
        .map(|x| x.unwrap_or(f64::NAN))
        .collect())
}

impl Measurement {
    pub fn new(
        scenario: &str,
        case: &str,
        clients: u32,
        metric: &str,
        unit: &str,
        runs: Vec<f64>,
    ) -> Self {
        Measurement {
            scenario: scenario.into(),
            case: case.into(),
            clients,
            metric: metric.into(),
            unit: unit.into(),
            median: median(&runs),
            runs,
            baseline: None,
            ratio_median: None,
            limit_mbits: None,
            direction: None,
            flows: None,
        }
    }

    pub fn ratio(&self) -> Option<f64> {
        if self.ratio_median.is_some() {
            return self.ratio_median;
        }
        self.baseline.filter(|b| *b != 0.0).map(|b| self.median / b)
    }
}

/// Settings of one `cargo xtask bench` invocation.
#[derive(Debug, Clone)]
pub struct Opts {
    pub quick: bool,
    /// Runs per figure.
    pub runs: u32,
}

/// The scenarios, by number and name.
pub const SCENARIOS: [(u8, &str); 6] = [
    (1, "program-cost"),
    (2, "forwarding"),
    (3, "rate-limit"),
    (4, "quota"),
    (5, "agent-cost"),
    (6, "flood"),
];

/// Parses `--only` (numbers or names, comma separated).
fn parse_only(only: &[String]) -> Result<Vec<&'static str>> {
    if only.is_empty() {
        return Ok(SCENARIOS.iter().map(|s| s.1).collect());
    }
    let mut v = Vec::new();
    for item in only.iter().flat_map(|s| s.split(',')) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let Some(&(_, name)) = SCENARIOS.iter().find(|(n, name)| {
            item == n.to_string()
                || item.eq_ignore_ascii_case(name)
                || item.replace('_', "-").eq_ignore_ascii_case(name)
        }) else {
            bail!(
                "unknown scenario {item:?}: use one of {}",
                SCENARIOS
                    .iter()
                    .map(|(n, s)| format!("{n}/{s}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        if !v.contains(&name) {
            v.push(name);
        }
    }
    Ok(v)
}

/// Median of a non-empty slice (NaN when empty).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Median of the per-run ratios `v[i] / base[i]`.
pub fn run_ratio(v: &[f64], base: &[f64]) -> f64 {
    let r: Vec<f64> = v
        .iter()
        .zip(base)
        .filter(|(_, b)| **b != 0.0)
        .map(|(a, b)| a / b)
        .collect();
    median(&r)
}

/// A progress line, flushed at once.
pub fn progress(scenario: &str, msg: impl AsRef<str>) {
    println!("[{scenario}] {}", msg.as_ref());
    std::io::stdout().flush().ok();
}

/// The 1-minute load average.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// What one scenario produced, with the conditions it ran under.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioRun {
    pub name: String,
    pub runs: u32,
    pub quick: bool,
    /// UTC date and time of the run.
    pub date: String,
    pub seconds: f64,
    pub load_before: String,
    pub load_after: String,
    /// Set when the scenario failed; its measurements are then missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Notes on how it was measured (what the variants are).
    #[serde(default)]
    pub notes: Vec<String>,
}

pub fn run(agent_bin: &Path, quick: bool, only: &[String], runs: Option<u32>) -> Result<()> {
    let started = Instant::now();
    let scenarios = parse_only(only)?;
    let runs = runs.unwrap_or(if quick { 2 } else { 5 }).max(1);
    let opts = Opts { quick, runs };
    std::env::set_var("SESSION_AGENT_BIN", agent_bin);
    let root = crate::root_dir();
    let json_path = root.join("bench/results.json");
    let mut results = report::Results::load(&json_path);
    results.machine = report::Machine::probe();
    println!(
        "==> bench: {} ({} runs per figure{}) on {} cores, load {}",
        scenarios.join(", "),
        runs,
        if quick { ", quick" } else { "" },
        results.machine.nproc,
        loadavg()
    );

    let want_bench: Vec<&str> = scenarios
        .iter()
        .copied()
        .filter(|s| *s == "program-cost" || *s == "agent-cost")
        .collect();
    for name in scenarios {
        let t = Instant::now();
        let load_before = loadavg();
        let date = report::utc_now();
        println!("==> scenario {name}");
        let outcome: Result<(Vec<Measurement>, Vec<String>)> = match name {
            "program-cost" | "agent-cost" => std::panic::catch_unwind(AssertUnwindSafe(|| {
                datapath_bench(name, &opts, want_bench.len() == 2)
            }))
            .unwrap_or_else(|p| Err(anyhow::anyhow!("panicked: {}", panic_msg(&p)))),
            "forwarding" => catch(|| forwarding::run(&opts)),
            "rate-limit" => catch(|| ratelimit::run(&opts)),
            "quota" => catch(|| quota::run(&opts)),
            "flood" => catch(|| flood::run(&opts)),
            _ => unreachable!(),
        };
        let seconds = t.elapsed().as_secs_f64();
        let (ms, notes, error) = match outcome {
            Ok((ms, notes)) => (ms, notes, None),
            Err(e) => {
                println!("==> scenario {name} failed: {e:#}");
                (Vec::new(), Vec::new(), Some(format!("{e:#}")))
            }
        };
        let key = report::scenario_key(name);
        results.measurements.retain(|m| m.scenario != key);
        results.measurements.extend(ms);
        results.scenarios.retain(|s| s.name != name);
        results.scenarios.push(ScenarioRun {
            name: name.to_string(),
            runs,
            quick,
            date,
            seconds,
            load_before,
            load_after: loadavg(),
            error,
            notes,
        });
        results
            .scenarios
            .sort_by_key(|s| SCENARIOS.iter().position(|x| x.1 == s.name));
        // Written after every scenario, so a later failure keeps what was measured.
        results.save(&json_path)?;
        report::write_markdown(&root.join("BENCHMARKS.md"), &results)?;
        println!("==> scenario {name} took {seconds:.0} s");
    }
    println!();
    print!("{}", report::goals_text(&results));
    println!(
        "==> wrote {} and BENCHMARKS.md in {:.0} s",
        json_path
            .strip_prefix(&root)
            .unwrap_or(&json_path)
            .display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What a page touched after a 250 ms sleep costs on this machine, through
/// 4 KiB and 2 MiB pages (see [`memory::woken`]): scenario 5's real second
/// pays it for each page of the agent's state it touches.
fn page_after_sleep(key: &str, opts: &Opts) -> Result<Vec<Measurement>> {
    let (mut small, mut huge) = (Vec::new(), Vec::new());
    for _ in 0..opts.runs {
        small.push(memory::woken(false, 5)?);
        huge.push(memory::woken(true, 5)?);
    }
    progress(
        "agent-cost",
        format!(
            "a page touched after 250 ms asleep: {:.2} us through 4 KiB pages, {:.2} us through 2 MiB pages",
            median(&small),
            median(&huge)
        ),
    );
    Ok([
        ("page_after_sleep_us_4k", small),
        ("page_after_sleep_us_2m", huge),
    ]
    .into_iter()
    .map(|(metric, runs)| Measurement::new(key, forwarding::MACHINE, 0, metric, "us/page", runs))
    .collect())
}

/// Rewrites BENCHMARKS.md's section from bench/results.json.
pub fn rewrite_report() -> Result<()> {
    let root = crate::root_dir();
    let results = report::Results::load(&root.join("bench/results.json"));
    report::write_markdown(&root.join("BENCHMARKS.md"), &results)?;
    print!("{}", report::goals_text(&results));
    Ok(())
}

fn panic_msg(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

fn catch(
    f: impl FnOnce() -> Result<(Vec<Measurement>, Vec<String>)>,
) -> Result<(Vec<Measurement>, Vec<String>)> {
    std::panic::catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|p| Err(anyhow::anyhow!("panicked: {}", panic_msg(&p))))
}

/// Scenarios 1 and 5 live in `cargo bench -p session-agent --bench datapath`.
/// When both are wanted the benchmark runs once (for the first) and the second
/// reads the kept output.
fn datapath_bench(name: &str, opts: &Opts, both: bool) -> Result<(Vec<Measurement>, Vec<String>)> {
    use std::sync::Mutex;
    static CACHE: Mutex<Option<Vec<Measurement>>> = Mutex::new(None);
    let key = report::scenario_key(name);
    let mut cache = CACHE.lock().unwrap();
    if cache.is_none() {
        let out = crate::root_dir().join("target/xtask-bench-datapath.json");
        let _ = std::fs::remove_file(&out);
        let mut c = crate::cargo();
        c.args(["bench", "-p", "session-agent", "--bench", "datapath"])
            .env("SESSION_BENCH_OUT", &out)
            .env("SESSION_BENCH_RUNS", opts.runs.to_string());
        if opts.quick {
            c.env("SESSION_BENCH_QUICK", "1");
        }
        if !both {
            c.env("SESSION_BENCH_ONLY", key);
        }
        progress(name, "cargo bench -p session-agent --bench datapath");
        crate::run(&mut c)?;
        let text =
            std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
        let v: Vec<Measurement> =
            serde_json::from_str(&text).context("parsing the datapath benchmark output")?;
        *cache = Some(v);
    }
    let ms: Vec<Measurement> = cache
        .as_ref()
        .unwrap()
        .iter()
        .filter(|m| m.scenario == key)
        .cloned()
        .collect();
    if ms.is_empty() {
        bail!("the datapath benchmark produced no {key} figures");
    }
    let mut ms = ms;
    if name == "agent-cost" {
        // A probe that fails costs its line, not the scenario's figures.
        match page_after_sleep(key, opts) {
            Ok(probe) => ms.extend(probe),
            Err(e) => progress(name, format!("the page-after-sleep probe failed: {e:#}")),
        }
    }
    let notes = match name {
        "program-cost" => vec![
            "BPF_PROG_TEST_RUN of the TC ingress program on a 64-byte UDP frame, ns per packet, against a program that returns at once (noop_baseline) in the same run; `net` = path minus no-op.".into(),
            "Every path runs with the LAN as the agent sets it up by default (the gateway's MAC and addresses, anti-spoofing, the garden rate limit), except allowed_counted_no_gate, the same packet with that configuration cleared: the two side by side are what the gate (address binding, odd destinations, the gateway's own addresses) costs a paying client's packet. allowed_counted_redirect_on is allowed_counted with the portal redirect on (`--portal-redirect`): a paying client's packet does not take its path, so the two are the same within noise.".into(),
        ],
        _ => vec![
            "The agent's gateway loop on a hybrid store with every device connected, in a fresh process that opens the store and the pinned maps as a restarted daemon does: a poll with no new traffic (idle: it looks only at the sessions whose time runs out or that expire by then, and charges connected time to no other), a poll after every device sent 1,500 bytes (all charged), and the commit that writes every device's charged usage to the store's log, which the daemon does once per `--commit-ms` (1 s), not per poll, and the check of the client table against the sessions (`session_agent_reconciled_total`: 1,024 slots in turn, each client's being let through, speed and budget), which the poll does once a second. A poll reads and charges only the devices whose counters moved since the last poll, which the datapath marks with a bit per slot (the benchmark's traffic sets them as the datapath does); every device after the connected devices changed, and every 30 s. `read counters` is a reading of every connected device's counters. Then a poll after 1,000 devices spread over the table moved traffic, and the commit of what that changed (at 1,000 connected devices: every one of them).".into(),
            "A real second (the fourth table): four polls 250 ms apart, as the daemon polls by default (`--poll-ms`), with no traffic, with the 1,000 devices moving traffic before each poll, and with every device moving traffic before each; the CPU of the four polls together. The last column is the second with the 1,000 active and, before each poll, a device going and the one that went before coming back (a busy hotspot's connects), their own CPU included. Polls back to back show nothing of the work that comes due over real time (a second of connected time for every session, when time was charged by the poll); these do, and the goals of this scenario are counted from them.".into(),
            "Resident memory is the process's VmRSS after those polls and commits; it includes the pages of the pinned client table mapped from the kernel that the polls read (8 MiB at either number of clients: one table entry per client, spread over the whole table by the hash) and of the slot array (8 bytes per client). The agent's tables of 2 MiB or more sit in transparent huge pages (`session_agent::memory::Allocator`); the fifth table repeats the gateway loop in a second process with them turned off (`PR_SET_THP_DISABLE`), on the same store right after the first, for the same-run comparison.".into(),
            "Address bindings (the second table): an IPv4 and an IPv6 binding for every device, read as the sweep reads them, in batches of 4,096 (`BPF_MAP_LOOKUP_BATCH`, one `bpf` call each), against walking the keys as aya's iterator does (a `get_next_key` and a lookup per binding) in the same run (`x`: how many times longer the walk takes); and the whole sweep (every binding read, none expired, each client's bound addresses written back). The datapath itself treats a binding unused for `bind_ttl` as free, so the sweep only makes room in the tables and counts each client's addresses again: it runs every four TTLs (20 minutes at the default 300 s; at least hourly), and within a quarter TTL (at most a minute) when the datapath refused a claim for lack of room; the goals count it at the first rate.".into(),
            "RADIUS's bookkeeping (the third table), with every device's session open at the accounting server and interim updates every 10 minutes, so one session in 600 comes due each second: opening the accounting book (it reads which sessions are open and when each is due), the round that looks at every open session (after a start, every 30 s and after missed events: what every second cost when each round read the whole book), and an ordinary second's round in which the 1,000 devices moved traffic (the sessions due in it: their counters read, their interim updates queued; the rows of those whose counters moved written in one transaction, the others' not at all). Each session's row starts with its counters as they stand, as at a Start. `x` is the sweep's cost over an ordinary second's, measured in the same run. Resident memory is measured again with the bindings and the book open, after a second as the daemon runs it (4 polls 250 ms apart with the 1,000 moving traffic, RADIUS's round, the commit), before and after the heap trim the daemon does after every commit; the goal is judged on the larger. Before that second, the traffic the earlier measurements left uncharged (the history's samples move every device) is charged and committed, as the daemon's polls would have long before, and the heap trimmed.".into(),
        ],
    };
    Ok((ms, notes))
}
