//! Comparing the agent's counters with the reference.

use crate::agent::{Agent, ClientStats};
use crate::nft::{NftRef, RefCounts};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{Duration, Instant};

/// Calls `f` every `interval` until two consecutive results are equal (or
/// `max` has passed) and returns the last result.
pub fn wait_stable<T: PartialEq, F: FnMut() -> T>(
    mut f: F,
    interval: Duration,
    max: Duration,
) -> T {
    let deadline = Instant::now() + max;
    let mut last = f();
    loop {
        std::thread::sleep(interval);
        let next = f();
        if next == last || Instant::now() > deadline {
            return next;
        }
        last = next;
    }
}

/// Waits until neither the agent's counters nor the reference change any
/// more, then returns both (agent entries keyed by MAC).
pub fn settle(
    agent: &Agent,
    nft: &NftRef,
) -> (BTreeMap<String, ClientStats>, BTreeMap<String, RefCounts>) {
    std::thread::sleep(Duration::from_millis(200));
    wait_stable(
        || {
            let a: BTreeMap<String, ClientStats> = agent
                .clients()
                .into_iter()
                .map(|c| (c.mac.clone(), c))
                .collect();
            (a, nft.read())
        },
        Duration::from_millis(300),
        Duration::from_secs(5),
    )
}

/// The four usage counters of an agent entry as [`RefCounts`].
pub fn usage(c: &ClientStats) -> RefCounts {
    RefCounts {
        up_bytes: c.up_bytes,
        up_packets: c.up_packets,
        down_bytes: c.down_bytes,
        down_packets: c.down_packets,
    }
}

/// Panics unless, for every MAC in `macs`, the agent's usage counters equal
/// the reference exactly. `what` describes the traffic sent.
pub fn assert_usage_matches(agent: &Agent, nft: &NftRef, macs: &[String], what: &str) {
    let (a, r) = settle(agent, nft);
    let mut bad = false;
    let mut table = String::new();
    writeln!(
        table,
        "{:<18} {:>30} {:>30}",
        "mac", "agent up B/p  down B/p", "nft up B/p  down B/p"
    )
    .unwrap();
    for mac in macs {
        let want = r.get(mac).copied().unwrap_or_default();
        // A client that never sent or received usage may be unknown.
        let got = match a.get(mac) {
            Some(c) => Some(usage(c)),
            None if want == RefCounts::default() => Some(want),
            None => None,
        };
        let ok = got == Some(want);
        bad |= !ok;
        let g = match got {
            Some(g) => format!(
                "{}/{} {}/{}",
                g.up_bytes, g.up_packets, g.down_bytes, g.down_packets
            ),
            None => "<missing>".to_string(),
        };
        writeln!(
            table,
            "{mac:<18} {g:>30} {:>30} {}",
            format!(
                "{}/{} {}/{}",
                want.up_bytes, want.up_packets, want.down_bytes, want.down_packets
            ),
            if ok { "ok" } else { "MISMATCH" }
        )
        .unwrap();
    }
    if bad {
        panic!(
            "per-MAC counters differ from the nftables reference\ntraffic: {what}\n{table}\n\
             all agent entries: {a:#?}\nreference ruleset:\n{}\nagent log:\n{}",
            nft.dump(),
            agent.log_tail()
        );
    }
    eprintln!("counters match the reference ({what}):\n{table}");
}
