//! What one load costs on this machine when its line is in none of the core's
//! caches: the floor under any per-client state that a packet must read when
//! traffic rotates over more clients than the caches hold (scenario 2 at
//! 10,000 clients). Measured through 4 KiB pages, as BPF array maps are
//! mapped, and through 2 MiB pages, whose address translations stay cached.
//!
//! A chain of dependent loads visits distinct 64-byte lines of a large
//! mapping in random order, so each load waits for the one before and no
//! prefetcher can guess the next line.

use std::{hint::black_box, time::Instant};

use anyhow::{bail, Result};

/// The mapping the chain runs through: far beyond the caches and the TLB.
const REGION: usize = 512 << 20;
/// Lines the chain visits (16 MiB of lines, 8 times the core's L2).
const LINES: usize = 1 << 18;
const LOADS: usize = 2_000_000;
const LINE: usize = 64;

/// One measurement: ns per load, and the share of the mapping the kernel
/// backed with huge pages.
pub struct Chase {
    pub ns_per_load: f64,
    pub huge_share: f64,
}

/// Runs the chain through 2 MiB pages (`huge`, if the kernel gives them) or
/// through 4 KiB pages.
pub fn chase(huge: bool) -> Result<Chase> {
    let (_map, base) = Mapping::filled(REGION, huge)?;
    // Distinct random lines (a partial Fisher-Yates shuffle), linked in a cycle.
    let slots = REGION / LINE;
    let mut order: Vec<u32> = (0..slots as u32).collect();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..LINES {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let j = i + (rng % (slots - i) as u64) as usize;
        order.swap(i, j);
    }
    // SAFETY: `order[i] < slots`, so the line lies inside the region.
    let line = |i: usize| unsafe { base.add(order[i] as usize * LINE).cast::<usize>() };
    for i in 0..LINES {
        // SAFETY: every line is inside the region and 8-byte aligned.
        unsafe { line(i).write(line((i + 1) % LINES) as usize) };
    }
    let huge_share = anon_huge_bytes()? as f64 / REGION as f64;
    let mut p = line(0);
    // One lap to fault in the page tables, then the timed loads.
    for _ in 0..LINES {
        // SAFETY: `p` is always one of the region's lines, each holding the next.
        p = unsafe { std::ptr::read_volatile(p) } as *mut usize;
    }
    let t = Instant::now();
    for _ in 0..LOADS {
        // SAFETY: `p` is always one of the region's lines, each holding the next.
        p = unsafe { std::ptr::read_volatile(p) } as *mut usize;
    }
    let ns = t.elapsed().as_nanos() as f64 / LOADS as f64;
    black_box(p);
    Ok(Chase {
        ns_per_load: ns,
        huge_share: huge_share.min(1.0),
    })
}

/// The mapping [`woken`] touches, and the distinct pages it touches after
/// each sleep (one in 16, spread over the whole mapping).
const WOKEN_REGION: usize = 64 << 20;
const WOKEN_PAGES: usize = 1_000;
/// How long the probe sleeps before each touch: the daemon's poll interval.
const WOKEN_SLEEP: std::time::Duration = std::time::Duration::from_millis(250);

/// What touching a page of memory costs a process that wakes from a sleep, as
/// the daemon wakes for each poll: microseconds per page for 1,000 distinct
/// pages of a 64 MiB mapping, through 2 MiB pages (`huge`) or 4 KiB pages;
/// the median of `rounds`, each after a 250 ms sleep. Where address
/// translations do not survive the sleep (a virtual machine whose host drops
/// them), every page costs a walk or an exit; the agent's work after a sleep
/// then costs by the pages it touches.
pub fn woken(huge: bool, rounds: u32) -> Result<f64> {
    let (_map, base) = Mapping::filled(WOKEN_REGION, huge)?;
    let pages = WOKEN_REGION / 4096;
    // An odd stride visits distinct pages in an order no prefetcher follows.
    let page = |i: usize| (i * 7_919) % pages;
    let mut per_page = Vec::new();
    for _ in 0..rounds.max(1) {
        std::thread::sleep(WOKEN_SLEEP);
        let t = Instant::now();
        let mut sum = 0usize;
        for i in 0..WOKEN_PAGES {
            // SAFETY: the offset is inside the region.
            sum += unsafe { std::ptr::read_volatile(base.add(page(i) * 4096 + (i % 64) * 64)) }
                as usize;
        }
        per_page.push(t.elapsed().as_secs_f64() * 1e6 / WOKEN_PAGES as f64);
        black_box(sum);
    }
    Ok(super::median(&per_page))
}

/// Anonymous memory of this process backed by huge pages (`/proc/self/smaps_rollup`).
fn anon_huge_bytes() -> Result<u64> {
    let s = std::fs::read_to_string("/proc/self/smaps_rollup")?;
    let kb = s
        .lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    Ok(kb * 1024)
}

/// An anonymous private mapping, unmapped on drop.
struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    /// A mapping with `len` bytes written from a 2 MiB boundary (so that huge
    /// pages can back all of them), advised to take huge pages or not.
    fn filled(len: usize, huge: bool) -> Result<(Self, *mut u8)> {
        let map = Self::new(len + (2 << 20))?;
        let base = (map.addr as usize).next_multiple_of(2 << 20) as *mut u8;
        let advice = if huge {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        };
        // SAFETY: `base..base + len` lies inside the mapping.
        unsafe {
            libc::madvise(base.cast(), len, advice);
            std::ptr::write_bytes(base, 1, len);
        }
        Ok((map, base))
    }

    fn new(len: usize) -> Result<Self> {
        // SAFETY: a fresh anonymous mapping; checked below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            bail!(
                "mapping {} MiB for the memory probe: {}",
                len >> 20,
                std::io::Error::last_os_error()
            );
        }
        Ok(Self { addr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}
