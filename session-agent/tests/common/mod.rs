//! The harness of the datapath tests: the programs loaded against private
//! pins, a test LAN (the gateway's MAC, addresses and services), clients and
//! frames; and a gateway all in memory ([`MemGateway`]) for the tests of the
//! features above it.
#![allow(dead_code, unused_imports)]

pub use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use session_agent::{
    daemon::{gate_limits, gateway_services, lan_config, GateOptions},
    dataplane::{
        testrun::{frames::*, ProgramHarness, TC_DROP, TC_PASS, TC_REDIRECT, XDP_DROP, XDP_PASS},
        ClientRow, Forgotten, IdleTracker, Pressure, RateLimit,
    },
    garden::GardenEntry,
};
pub use session_common::*;

pub const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
pub const GW_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 2);
pub const GW_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1);
pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x98, 0, 0, 0, 0, 0, 2);
pub const GW_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// The gateway's addresses on the test LAN.
pub fn gw_addrs() -> [IpAddr; 3] {
    [GW_V4.into(), GW_V6.into(), GW_LL.into()]
}

/// The test LAN's garden: the gateway's services (portal on port 80) and 10.97.0.0/16.
pub fn test_garden() -> Vec<GardenEntry> {
    let mut entries = gateway_services(&gw_addrs(), &[80]);
    entries.push("10.97.0.0/16".parse().unwrap());
    entries
}

/// Anti-spoofing on; the garden rate limit only where a test sets it.
pub const GATE: GateOptions = GateOptions {
    anti_spoof: true,
    one_address: true,
    garden_rate_kbits: 0,
    garden_pps: 0,
    garden_total_kbits: 0,
    slotless_pps: 0,
    new_clients_per_sec: 0,
};

pub fn client_mac(n: u8) -> MacAddr {
    MacAddr::new([0x02, 0xaa, 0, 0, 0, n])
}

pub fn client_v4(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, 0, 10 + n)
}

/// The programs loaded against maps pinned in a private bpffs directory.
pub struct Datapath {
    pub h: ProgramHarness,
}

impl Datapath {
    pub fn new() -> Self {
        assert!(
            // SAFETY: geteuid has no preconditions.
            unsafe { libc::geteuid() } == 0,
            "datapath tests need root (BPF): run `cargo xtask test`"
        );
        Self::with_gate(GATE)
    }

    pub fn with_gate(gate: GateOptions) -> Self {
        let lan = lan_config(1, Some(GW_MAC), &gw_addrs(), &[80], &gate, None, None);
        let h = ProgramHarness::with_lan("sa-dp", &test_garden(), &lan)
            .unwrap_or_else(|e| panic!("loading the datapath: {e}"));
        h.maps.set_gate(&gate_limits(&gate));
        // The agent's default binding TTL (the gateway tells the datapath).
        h.maps.set_bind_ttl(std::time::Duration::from_secs(300));
        Self { h }
    }

    pub fn run(&self, prog: &str, frame: &[u8]) -> u32 {
        self.h
            .run(prog, frame, None, 1)
            .unwrap_or_else(|e| panic!("{e}"))
            .0
    }

    /// Runs LAN ingress on a frame the kernel takes for a GSO aggregate of `segs` segments.
    pub fn up_gso(&self, frame: &[u8], segs: u32) -> u32 {
        // struct __sk_buff: gso_segs at byte 164, gso_size at 176, 192 bytes in all.
        let mut ctx = [0u8; 192];
        ctx[164..168].copy_from_slice(&segs.to_ne_bytes());
        ctx[176..180].copy_from_slice(&1448u32.to_ne_bytes());
        self.h
            .run(PROG_TC_INGRESS, frame, Some(&ctx), 1)
            .unwrap_or_else(|e| panic!("GSO test run: {e}"))
            .0
    }

    pub fn up(&self, frame: &[u8]) -> u32 {
        self.run(PROG_TC_INGRESS, frame)
    }

    pub fn down(&self, frame: &[u8]) -> u32 {
        self.run(PROG_TC_EGRESS, frame)
    }

    pub fn counters(&self, mac: MacAddr) -> ClientRow {
        let slot = self
            .h
            .maps
            .slot_of(&mac)
            .unwrap_or_else(|| panic!("{mac} has no slot"));
        self.h
            .maps
            .client(slot)
            .unwrap_or_else(|e| panic!("reading {mac}'s counters: {e}"))
            .unwrap_or_else(|| panic!("{mac}'s slot {slot} has no owner"))
    }

    /// The events the datapath sent (once: the ring is taken).
    pub fn events(&mut self) -> Vec<ClientEvent> {
        let events = self.h.ebpf.take_map(MAP_EVENTS).expect("the event ring");
        let mut ring = aya::maps::RingBuf::try_from(events).unwrap();
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            // SAFETY: the ring holds whole ClientEvents, plain integers.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
        }
        out
    }

    pub fn allow(&mut self, mac: MacAddr) -> u32 {
        self.h.maps.set_allowed(&mac, true).unwrap()
    }
}

pub fn up4(n: u8, dport: u16, payload: usize) -> Vec<u8> {
    udp4(
        GW_MAC,
        client_mac(n).addr,
        client_v4(n),
        SERVER_V4,
        40000,
        dport,
        payload,
    )
}

pub fn down4(n: u8, sport: u16, payload: usize) -> Vec<u8> {
    udp4(
        client_mac(n).addr,
        GW_MAC,
        SERVER_V4,
        client_v4(n),
        sport,
        40000,
        payload,
    )
}

/// Runs `f` on a thread with room for proptest's deep strategy types (debug
/// builds), passing its panic on.
pub fn big_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

/// A gateway over a session store and a datapath both in memory, on a
/// current-thread runtime, with RADIUS logins' sessions known to the
/// manager as the daemon makes them known.
pub struct MemGateway {
    pub rt: tokio::runtime::Runtime,
    pub mgr: std::sync::Arc<session_model::SessionsMgr>,
    pub dp: std::sync::Arc<session_agent::datapath::MemDatapath>,
    pub gw: std::sync::Arc<session_agent::gateway::Gateway>,
}

impl MemGateway {
    pub fn new() -> Self {
        use std::sync::Arc;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mgr = Arc::new(session_model::SessionsMgr::new(
            Arc::new(session_model::MemoryStore::new()),
            Arc::new(session_model::SystemClock),
        ));
        mgr.register_session_provider(
            session_agent::radius::PROVIDER,
            Arc::new(session_agent::radius::RadiusProvider),
        )
        .unwrap();
        let dp = Arc::new(session_agent::datapath::MemDatapath::new(1));
        let gw = rt.block_on(async {
            session_agent::gateway::Gateway::with_datapath(
                mgr.clone(),
                dp.clone(),
                session_agent::gateway::GatewayConfig::default(),
            )
        });
        MemGateway { rt, mgr, dp, gw }
    }
}
