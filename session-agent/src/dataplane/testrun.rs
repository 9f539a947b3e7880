//! Running the datapath programs on crafted frames (BPF_PROG_TEST_RUN), for
//! tests and benchmarks: no interface, real kernel, real maps.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use aya::{
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use session_common::{LanConfig, PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_XDP_INGRESS};

use crate::{
    dataplane::{attach, bpffs, write_garden, Maps},
    error::{AgentError, Result},
    garden::GardenEntry,
};

/// TC verdicts as BPF_PROG_TEST_RUN reports them.
pub const TC_PASS: u32 = -1i32 as u32; // TC_ACT_UNSPEC: next program, then pass
pub const TC_DROP: u32 = 2; // TC_ACT_SHOT
pub const TC_REDIRECT: u32 = 7; // TC_ACT_REDIRECT
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
/// A program that returns at once, for the cost of the test-run machinery itself.
pub const PROG_NOOP: &str = "bench_noop";

/// The programs loaded against maps pinned in a private bpffs directory
/// (removed on drop).
pub struct ProgramHarness {
    root: PathBuf,
    pub ebpf: Ebpf,
    pub maps: Maps,
}

impl ProgramHarness {
    /// Loads every program under `/sys/fs/bpf/<prefix>-<pid>-<n>` and writes
    /// the walled garden; the LAN is unknown to the datapath (no gateway MAC
    /// or addresses, no anti-spoofing, no garden rate limit).
    pub fn new(prefix: &str, garden: &[GardenEntry]) -> Result<Self> {
        Self::with_lan(prefix, garden, &LanConfig::default())
    }

    /// As [`ProgramHarness::new`], with what the datapath knows of its LAN.
    pub fn with_lan(prefix: &str, garden: &[GardenEntry], lan: &LanConfig) -> Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let root = PathBuf::from(format!(
            "/sys/fs/bpf/{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        bpffs::prepare(&root)?;
        // Whatever fails below, no pins are left behind.
        Self::load(&root, garden)
            .inspect(|(_, maps)| maps.set_lan(lan))
            .map(|(ebpf, maps)| Self {
                root: root.clone(),
                ebpf,
                maps,
            })
            .inspect_err(|_| {
                let _ = std::fs::remove_dir_all(&root);
            })
    }

    fn load(root: &Path, garden: &[GardenEntry]) -> Result<(Ebpf, Maps)> {
        let mut ebpf = attach::load(root, "t")?;
        for name in [PROG_TC_INGRESS, PROG_TC_EGRESS, PROG_NOOP] {
            let p: &mut SchedClassifier = program(&mut ebpf, name)?
                .try_into()
                .map_err(|e| AgentError::bpf(name, e))?;
            p.load()
                .map_err(|e| AgentError::bpf(format!("loading {name}"), e))?;
        }
        let p: &mut Xdp = program(&mut ebpf, PROG_XDP_INGRESS)?
            .try_into()
            .map_err(|e| AgentError::bpf(PROG_XDP_INGRESS, e))?;
        p.load()
            .map_err(|e| AgentError::bpf(format!("loading {PROG_XDP_INGRESS}"), e))?;
        write_garden(&mut ebpf, garden)?;
        let maps = Maps::open(root, "t")?;
        // As `attach` does: the datapath indexes clients once the epoch seeds its hash.
        maps.ensure_epoch()?;
        Ok((ebpf, maps))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Runs `prog` once on `frame` (with an optional `__sk_buff` context);
    /// returns the verdict and the frame as the program left it.
    pub fn run_out(&self, prog: &str, frame: &[u8], ctx: Option<&[u8]>) -> Result<(u32, Vec<u8>)> {
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: ctx,
            repeat: 1,
            ..TestRunOptions::new()
        };
        let p = self.ebpf.program(prog).ok_or_else(|| AgentError::Bpf {
            what: prog.into(),
            message: "no such program".into(),
        })?;
        let c: &SchedClassifier = p.try_into().map_err(|e| AgentError::bpf(prog, e))?;
        let r = c.test_run(opts).map_err(|e| {
            AgentError::bpf(format!("test run of {prog} on {} bytes", frame.len()), e)
        })?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }

    /// Runs `prog` on `frame` `repeat` times (with an optional `__sk_buff`
    /// context); returns the verdict and the kernel's mean time per run.
    pub fn run(
        &self,
        prog: &str,
        frame: &[u8],
        ctx: Option<&[u8]>,
        repeat: u32,
    ) -> Result<(u32, Duration)> {
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: ctx,
            repeat,
            ..TestRunOptions::new()
        };
        let p = self.ebpf.program(prog).ok_or_else(|| AgentError::Bpf {
            what: prog.into(),
            message: "no such program".into(),
        })?;
        let r = if prog == PROG_XDP_INGRESS {
            let x: &Xdp = p.try_into().map_err(|e| AgentError::bpf(prog, e))?;
            x.test_run(opts)
        } else {
            let c: &SchedClassifier = p.try_into().map_err(|e| AgentError::bpf(prog, e))?;
            c.test_run(opts)
        }
        .map_err(|e| AgentError::bpf(format!("test run of {prog} on {} bytes", frame.len()), e))?;
        Ok((r.return_value, r.duration))
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name).ok_or_else(|| AgentError::Bpf {
        what: name.into(),
        message: "program missing from the object".into(),
    })
}

impl Drop for ProgramHarness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Frame builders with valid headers.
pub mod frames {
    use std::net::{Ipv4Addr, Ipv6Addr};

    pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
        let mut f = Vec::with_capacity(1514);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    /// Ethernet + IPv4 (20-byte header, DF, TTL 64) + `l4` (the transport
    /// header) + `payload` bytes.
    fn ipv4(
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        (src, dst): (Ipv4Addr, Ipv4Addr),
        proto: u8,
        l4: &[u8],
        payload: usize,
    ) -> Vec<u8> {
        let mut f = eth(dst_mac, src_mac, 0x0800);
        let tot = (20 + l4.len() + payload) as u16;
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&tot.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        set_ipv4_csum(&mut f);
        f.extend_from_slice(l4);
        f.resize(f.len() + payload, 0x5a);
        f
    }

    /// Ethernet + IPv4 + UDP with `payload` bytes; IP length = 28 + payload.
    pub fn udp4(
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sport: u16,
        dport: u16,
        payload: usize,
    ) -> Vec<u8> {
        let mut u = Vec::with_capacity(8);
        u.extend_from_slice(&sport.to_be_bytes());
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        ipv4(dst_mac, src_mac, (src, dst), 17, &u, payload)
    }

    /// Ethernet + IPv4 + TCP (20-byte header, ACK) with `payload` bytes; IP length = 40 + payload.
    pub fn tcp4(
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sport: u16,
        dport: u16,
        payload: usize,
    ) -> Vec<u8> {
        let mut t = Vec::with_capacity(20);
        t.extend_from_slice(&sport.to_be_bytes());
        t.extend_from_slice(&dport.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
        ipv4(dst_mac, src_mac, (src, dst), 6, &t, payload)
    }

    /// Writes the IPv4 header checksum of the frame (header at byte 14, options included).
    pub fn set_ipv4_csum(f: &mut [u8]) {
        let ihl = ((f[14] & 0x0f) as usize * 4).max(20);
        f[24..26].fill(0);
        let mut sum: u32 = f[14..14 + ihl]
            .chunks(2)
            .map(|w| (u32::from(w[0]) << 8) | u32::from(w[1]))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        f[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    }

    /// Ethernet + IPv6 + UDP with `payload` bytes; IP length = 48 + payload.
    pub fn udp6(
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        src: Ipv6Addr,
        dst: Ipv6Addr,
        sport: u16,
        dport: u16,
        payload: usize,
    ) -> Vec<u8> {
        let mut f = eth(dst_mac, src_mac, 0x86dd);
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
        f.extend_from_slice(&[17, 64]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.resize(f.len() + payload, 0x5a);
        f
    }
}
