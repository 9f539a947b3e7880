//! `session-agent run`: attach to the LAN interfaces, set up the walled garden,
//! follow datapath events until asked to stop.

use std::{io::Write, net::IpAddr, path::PathBuf};

use aya::maps::RingBuf;
use session_common::*;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};
use tracing::{info, warn};

use crate::{
    dataplane::{
        self,
        attach::{self, IngressHook},
    },
    error::{AgentError, Result},
    garden::GardenEntry,
    iface,
};

pub struct RunOptions {
    pub lans: Vec<String>,
    pub garden: Vec<GardenEntry>,
    pub portal_ports: Vec<u16>,
    pub pin_root: PathBuf,
    pub ingress: IngressHook,
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    // Validate every interface before touching any, so a typo changes nothing.
    for lan in &opts.lans {
        iface::index(lan)?;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for lan in &opts.lans {
        let mut a = attach::attach(&opts.pin_root, lan, opts.ingress)?;
        let entries = garden_for(lan, &opts)?;
        dataplane::write_garden(&mut a.ebpf, &entries)?;
        info!(lan = %lan, dir = %a.dir.display(), ingress = ?opts.ingress, garden = entries.len(), "datapath attached");
        match aya_log::EbpfLogger::init(&mut a.ebpf) {
            Ok(logger) => {
                let mut fd = watch(logger, "watching the datapath log")?;
                tasks.spawn(async move {
                    loop {
                        let Ok(mut guard) = fd.readable_mut().await else {
                            break;
                        };
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                });
            }
            Err(e) => warn!("datapath log unavailable: {e}"),
        }
        let events = a.ebpf.take_map(MAP_EVENTS).expect("EVENTS map in object");
        let ring =
            RingBuf::try_from(events).map_err(|e| AgentError::bpf("opening the event ring", e))?;
        let mut fd = watch(ring, "watching the event ring")?;
        let lan_name = lan.clone();
        tasks.spawn(async move {
            // Keep the programs and their log map alive for as long as the agent runs.
            let _attached = a;
            loop {
                let Ok(mut guard) = fd.readable_mut().await else {
                    break;
                };
                while let Some(item) = guard.get_inner_mut().next() {
                    handle_event(&lan_name, &item);
                }
                guard.clear_ready();
            }
        });
    }
    println!("READY");
    std::io::stdout().flush().ok();

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: stopping; the datapath stays attached and keeps enforcing"),
        _ = int.recv() => info!("SIGINT: stopping; the datapath stays attached and keeps enforcing"),
        Some(r) = tasks.join_next() => warn!("event task ended: {r:?}"),
    }
    tasks.shutdown().await;
    Ok(())
}

/// Registers a map-backed ring (which owns its fd for its whole life) with tokio.
fn watch<T: std::os::fd::AsRawFd>(inner: T, what: &str) -> Result<AsyncFd<T>> {
    // SAFETY: `inner` owns the fd and keeps it open, unchanged, until it is dropped with the AsyncFd.
    unsafe { AsyncFd::register(inner) }.map_err(|e| AgentError::from_io(what, e.into()))
}

fn handle_event(lan: &str, bytes: &[u8]) {
    if bytes.len() < size_of::<ClientEvent>() {
        warn!(lan, len = bytes.len(), "short datapath event");
        return;
    }
    let ev: ClientEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    match ev.kind {
        EVENT_NEW_CLIENT => info!(lan, mac = %ev.mac, slot = ev.slot, "new client"),
        EVENT_QUOTA_EXHAUSTED => info!(lan, mac = %ev.mac, slot = ev.slot, "data budget used up"),
        EVENT_TABLE_FULL => {
            warn!(lan, mac = %ev.mac, "client table full ({MAX_CLIENTS}); new clients stay blocked")
        }
        k => warn!(lan, kind = k, "unknown datapath event"),
    }
}

/// The walled garden of one LAN: DNS and the portal on the gateway's own
/// addresses, then the operator's entries.
fn garden_for(lan: &str, opts: &RunOptions) -> Result<Vec<GardenEntry>> {
    let mut out = Vec::new();
    for addr in iface::addresses(lan)? {
        if matches!(addr, IpAddr::V6(a) if a.is_multicast()) {
            continue;
        }
        out.push(GardenEntry::host(addr, 53));
        for &p in &opts.portal_ports {
            out.push(GardenEntry::host(addr, p));
        }
    }
    if out.is_empty() {
        warn!(lan, "the interface has no IP address: DNS and the portal on the gateway are not reachable for blocked clients");
    }
    out.extend(opts.garden.iter().copied());
    Ok(out)
}
