//! A small AF_PACKET packet generator: prebuilt frames sent with `sendmmsg`
//! in batches, the qdisc bypassed, rotating over the frames (and so over the
//! source MACs they carry).

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use session_tests::in_netns;

const BATCH: usize = 64;

/// A generator running on its own thread until [`Generator::stop`].
pub struct Generator {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<Sent>>>,
}

/// What a generator did: frames sent, wall time, and the CPU time of its
/// thread (system time includes the forwarding it triggers: veth delivers in
/// the sender's context).
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub frames: u64,
    pub wall: Duration,
    pub cpu: Duration,
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn open(ifname: &str) -> io::Result<OwnedFd> {
    let cname = CString::new(ifname).unwrap();
    // SAFETY: FFI calls with valid arguments; the fd is owned at once.
    unsafe {
        let ifindex = libc::if_nametoindex(cname.as_ptr()) as i32;
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex;
        sll.sll_protocol = 0;
        if libc::bind(
            fd.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        // PACKET_QDISC_BYPASS: straight to the driver, as trafgen does.
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            20,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        Ok(fd)
    }
}

impl Generator {
    /// Starts sending `frames` (complete Ethernet frames) round-robin on
    /// `ifname` in namespace `ns`.
    pub fn start(ns: &str, ifname: &str, frames: Arc<Vec<Vec<u8>>>) -> io::Result<Generator> {
        let ifname = ifname.to_string();
        let fd = in_netns(ns, move || open(&ifname))?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || -> io::Result<Sent> {
            let t0 = Instant::now();
            let c0 = thread_cpu();
            let mut sent = 0u64;
            let mut iov: Vec<libc::iovec> = frames
                .iter()
                .map(|f| libc::iovec {
                    iov_base: f.as_ptr() as *mut libc::c_void,
                    iov_len: f.len(),
                })
                .collect();
            let n = iov.len();
            // SAFETY: mmsghdr is plain data.
            let mut msgs: Vec<libc::mmsghdr> =
                (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
            let mut next = 0usize;
            while !st.load(Ordering::Relaxed) {
                for m in msgs.iter_mut() {
                    m.msg_hdr.msg_iov = &mut iov[next] as *mut libc::iovec;
                    m.msg_hdr.msg_iovlen = 1;
                    m.msg_len = 0;
                    next += 1;
                    if next == n {
                        next = 0;
                    }
                }
                // SAFETY: every header points at a live iovec over a live frame.
                let rc =
                    unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
                if rc < 0 {
                    let e = io::Error::last_os_error();
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOBUFS) | Some(libc::EAGAIN) | Some(libc::EINTR)
                    ) {
                        continue;
                    }
                    return Err(e);
                }
                sent += rc as u64;
            }
            Ok(Sent {
                frames: sent,
                wall: t0.elapsed(),
                cpu: thread_cpu() - c0,
            })
        });
        Ok(Generator {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops and returns what was sent.
    pub fn stop(mut self) -> io::Result<Sent> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .unwrap()
            .join()
            .expect("generator thread")
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Interface counters `(rx_packets, tx_packets)` of `ifname` in `ns`, read from
/// `/proc/thread-self/net/dev` (no process started, so nothing perturbs a
/// measurement window).
pub fn if_packets(ns: &str, ifname: &str) -> (u64, u64) {
    let text =
        in_netns(ns, || std::fs::read_to_string("/proc/thread-self/net/dev")).unwrap_or_default();
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if name.trim() != ifname {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if f.len() >= 10 {
            return (f[1], f[9]);
        }
    }
    panic!("no interface {ifname} in {ns}");
}
