//! Traffic generators and sinks (std sockets created inside namespaces).
//!
//! TCP protocol of [`TcpServer`]: the client sends a 16-byte header
//! (`up: u64 BE`, `down: u64 BE`), then `up` bytes; the server reads them,
//! answers with `down` bytes and closes.
//!
//! UDP protocol of [`UdpServer`]: a datagram starting with `SAREQ` followed by
//! `count: u32 BE, size: u32 BE` makes the server send `count` datagrams of
//! `size` bytes back to the sender; one starting with `SAECHO` is echoed back;
//! anything else is just counted.

use crate::netns::in_netns;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const CHUNK: usize = 64 * 1024;
const UDP_REQ: &[u8] = b"SAREQ";
const UDP_ECHO: &[u8] = b"SAECHO";

fn set_int_opt(fd: i32, level: i32, name: i32, val: i32) {
    // SAFETY: plain setsockopt with an int value on an owned fd.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &val as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        );
    }
}

fn big_buffers(fd: i32) {
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20);
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 8 << 20);
}

/// Counters shared between a server and its handle.
#[derive(Debug, Default)]
pub struct ServerCounters {
    /// Payload bytes received.
    pub rx_bytes: AtomicU64,
    /// Payload bytes sent.
    pub tx_bytes: AtomicU64,
    /// TCP connections accepted / UDP datagrams received.
    pub rx_units: AtomicU64,
}

/// A TCP server in a namespace, stopped on drop.
pub struct TcpServer {
    pub addr: SocketAddr,
    pub counters: Arc<ServerCounters>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpServer {
    /// Listens on `addr` inside namespace `ns`.
    pub fn start(ns: &str, addr: SocketAddr) -> TcpServer {
        let listener = in_netns(ns, || TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("tcp listen {addr} in {ns}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(ServerCounters::default());
        let (st, ct) = (stop.clone(), counters.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        ct.rx_units.fetch_add(1, Ordering::Relaxed);
                        let c = ct.clone();
                        std::thread::spawn(move || {
                            let _ = serve_tcp(s, &c);
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TcpServer {
            addr,
            counters,
            stop,
            thread: Some(thread),
        }
    }

    pub fn received(&self) -> u64 {
        self.counters.rx_bytes.load(Ordering::Relaxed)
    }
    pub fn sent(&self) -> u64 {
        self.counters.tx_bytes.load(Ordering::Relaxed)
    }
    pub fn connections(&self) -> u64 {
        self.counters.rx_units.load(Ordering::Relaxed)
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_tcp(mut s: TcpStream, c: &ServerCounters) -> io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.set_write_timeout(Some(Duration::from_secs(20)))?;
    let mut hdr = [0u8; 16];
    s.read_exact(&mut hdr)?;
    c.rx_bytes.fetch_add(16, Ordering::Relaxed);
    let up = u64::from_be_bytes(hdr[..8].try_into().unwrap());
    let down = u64::from_be_bytes(hdr[8..].try_into().unwrap());
    let mut buf = vec![0u8; CHUNK];
    let mut left = up;
    while left > 0 {
        let n = s.read(&mut buf[..CHUNK.min(left as usize)])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        c.rx_bytes.fetch_add(n as u64, Ordering::Relaxed);
        left -= n as u64;
    }
    let data = vec![0x5au8; CHUNK];
    let mut left = down;
    while left > 0 {
        let n = CHUNK.min(left as usize);
        s.write_all(&data[..n])?;
        c.tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
        left -= n as u64;
    }
    s.shutdown(Shutdown::Write)?;
    // Wait for the peer's FIN so the server never closes with unread data.
    let _ = s.read(&mut buf);
    Ok(())
}

/// Result of one client-side TCP exchange with a [`TcpServer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpTransfer {
    /// Payload bytes the client sent (header included).
    pub sent: u64,
    /// Payload bytes the client received.
    pub received: u64,
}

/// Opens a TCP connection from namespace `ns`.
pub fn tcp_connect(ns: &str, dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    in_netns(ns, || TcpStream::connect_timeout(&dst, timeout))
}

impl TcpTransfer {
    /// From namespace `ns`, connects to a [`TcpServer`] at `dst`, uploads
    /// `up` bytes and downloads `down` bytes.
    pub fn run(ns: &str, dst: SocketAddr, up: u64, down: u64) -> io::Result<TcpTransfer> {
        Self::run_timeout(ns, dst, up, down, Duration::from_secs(3))
    }

    pub fn run_timeout(
        ns: &str,
        dst: SocketAddr,
        up: u64,
        down: u64,
        connect_timeout: Duration,
    ) -> io::Result<TcpTransfer> {
        let mut s = tcp_connect(ns, dst, connect_timeout)?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.set_write_timeout(Some(Duration::from_secs(20)))?;
        let mut hdr = [0u8; 16];
        hdr[..8].copy_from_slice(&up.to_be_bytes());
        hdr[8..].copy_from_slice(&down.to_be_bytes());
        s.write_all(&hdr)?;
        let data = vec![0xa5u8; CHUNK];
        let mut left = up;
        while left > 0 {
            let n = CHUNK.min(left as usize);
            s.write_all(&data[..n])?;
            left -= n as u64;
        }
        let mut buf = vec![0u8; CHUNK];
        let mut received = 0u64;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            received += n as u64;
        }
        s.shutdown(Shutdown::Both).ok();
        Ok(TcpTransfer {
            sent: up + 16,
            received,
        })
    }
}

/// A UDP server in a namespace (sink, echo, and sender on request), stopped
/// on drop.
pub struct UdpServer {
    pub addr: SocketAddr,
    pub counters: Arc<ServerCounters>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpServer {
    pub fn start(ns: &str, addr: SocketAddr) -> UdpServer {
        let sock = in_netns(ns, || UdpSocket::bind(addr))
            .unwrap_or_else(|e| panic!("udp bind {addr} in {ns}: {e}"));
        big_buffers(sock.as_raw_fd());
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(ServerCounters::default());
        let (st, ct) = (stop.clone(), counters.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                let (n, from) = match sock.recv_from(&mut buf) {
                    Ok(x) => x,
                    Err(_) => continue,
                };
                let d = &buf[..n];
                if d.starts_with(UDP_REQ) && n >= UDP_REQ.len() + 8 {
                    let o = UDP_REQ.len();
                    let count = u32::from_be_bytes(d[o..o + 4].try_into().unwrap());
                    let size = u32::from_be_bytes(d[o + 4..o + 8].try_into().unwrap()) as usize;
                    let payload = vec![0x3cu8; size];
                    for i in 0..count {
                        if sock.send_to(&payload, from).is_ok() {
                            ct.tx_bytes.fetch_add(size as u64, Ordering::Relaxed);
                        }
                        pace(i);
                    }
                } else {
                    ct.rx_units.fetch_add(1, Ordering::Relaxed);
                    ct.rx_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    if d.starts_with(UDP_ECHO) && sock.send_to(d, from).is_ok() {
                        ct.tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
        });
        UdpServer {
            addr,
            counters,
            stop,
            thread: Some(thread),
        }
    }

    /// Datagrams received (requests for download excluded).
    pub fn datagrams(&self) -> u64 {
        self.counters.rx_units.load(Ordering::Relaxed)
    }
    pub fn received(&self) -> u64 {
        self.counters.rx_bytes.load(Ordering::Relaxed)
    }
    pub fn sent(&self) -> u64 {
        self.counters.tx_bytes.load(Ordering::Relaxed)
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn pace(i: u32) {
    if i % 16 == 15 {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Result of a client-side UDP exchange with a [`UdpServer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpTransfer {
    pub sent_datagrams: u64,
    pub sent_bytes: u64,
    pub received_datagrams: u64,
    pub received_bytes: u64,
}

/// Binds a UDP socket inside `ns`.
pub fn udp_socket(ns: &str, bind: SocketAddr) -> io::Result<UdpSocket> {
    let s = in_netns(ns, || UdpSocket::bind(bind))?;
    big_buffers(s.as_raw_fd());
    Ok(s)
}

impl UdpTransfer {
    /// From namespace `ns`, sends `up_count` datagrams of `up_size` bytes to
    /// the [`UdpServer`] at `dst`, then (if `down_count > 0`) asks it for
    /// `down_count` datagrams of `down_size` bytes and receives them.
    pub fn run(
        ns: &str,
        dst: SocketAddr,
        up_count: u32,
        up_size: usize,
        down_count: u32,
        down_size: usize,
    ) -> io::Result<UdpTransfer> {
        let any: SocketAddr = if dst.is_ipv6() {
            "[::]:0".parse().unwrap()
        } else {
            "0.0.0.0:0".parse().unwrap()
        };
        let s = udp_socket(ns, any)?;
        s.connect(dst)?;
        let payload = vec![0xabu8; up_size];
        let mut t = UdpTransfer {
            sent_datagrams: 0,
            sent_bytes: 0,
            received_datagrams: 0,
            received_bytes: 0,
        };
        for i in 0..up_count {
            match s.send(&payload) {
                Ok(n) => {
                    t.sent_datagrams += 1;
                    t.sent_bytes += n as u64;
                }
                // A blocked path may surface as an ICMP error on a later send.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(e) => return Err(e),
            }
            pace(i);
        }
        if down_count > 0 {
            let mut req = UDP_REQ.to_vec();
            req.extend_from_slice(&down_count.to_be_bytes());
            req.extend_from_slice(&(down_size as u32).to_be_bytes());
            s.send(&req)?;
            t.sent_datagrams += 1;
            t.sent_bytes += req.len() as u64;
            s.set_read_timeout(Some(Duration::from_millis(500)))?;
            let mut buf = vec![0u8; 65536];
            while t.received_datagrams < down_count as u64 {
                match s.recv(&mut buf) {
                    Ok(n) => {
                        t.received_datagrams += 1;
                        t.received_bytes += n as u64;
                    }
                    Err(_) => break,
                }
            }
        }
        Ok(t)
    }
}

/// One UDP round trip from `ns` (socket bound to `bind`) to a [`UdpServer`]
/// at `dst`: sends `SAECHO` + `tag` and returns the echoed payload, or an
/// error on timeout. `device`, if given, binds the socket to that interface
/// and enables broadcast (for a DHCP-style limited broadcast).
pub fn udp_echo(
    ns: &str,
    bind: SocketAddr,
    dst: SocketAddr,
    tag: &[u8],
    device: Option<&str>,
    timeout: Duration,
) -> io::Result<Vec<u8>> {
    let s = udp_socket(ns, bind)?;
    if let Some(dev) = device {
        s.set_broadcast(true)?;
        // SAFETY: setsockopt with a byte string naming the interface.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                dev.as_ptr() as *const libc::c_void,
                dev.len() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let mut msg = UDP_ECHO.to_vec();
    msg.extend_from_slice(tag);
    s.send_to(&msg, dst)?;
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 2048];
    while Instant::now() < deadline {
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            if buf[..n] == msg[..] {
                return Ok(msg);
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no echo from {dst} within {timeout:?}"),
    ))
}

/// TCP and UDP servers on both address families of one host.
pub struct ServerSet {
    pub tcp4: TcpServer,
    pub tcp6: TcpServer,
    pub udp4: UdpServer,
    pub udp6: UdpServer,
}

impl ServerSet {
    /// TCP servers on `v4:tcp_port` and `[v6]:tcp_port`, UDP servers on
    /// `udp_port`, all inside namespace `ns`.
    pub fn start(
        ns: &str,
        v4: std::net::Ipv4Addr,
        v6: std::net::Ipv6Addr,
        tcp_port: u16,
        udp_port: u16,
    ) -> ServerSet {
        ServerSet {
            tcp4: TcpServer::start(ns, SocketAddr::new(v4.into(), tcp_port)),
            tcp6: TcpServer::start(ns, SocketAddr::new(v6.into(), tcp_port)),
            udp4: UdpServer::start(ns, SocketAddr::new(v4.into(), udp_port)),
            udp6: UdpServer::start(ns, SocketAddr::new(v6.into(), udp_port)),
        }
    }

    pub fn tcp(&self, v6: bool) -> &TcpServer {
        if v6 {
            &self.tcp6
        } else {
            &self.tcp4
        }
    }

    pub fn udp(&self, v6: bool) -> &UdpServer {
        if v6 {
            &self.udp6
        } else {
            &self.udp4
        }
    }
}

/// Volumes for [`mixed_traffic`].
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    pub tcp_up: u64,
    pub tcp_down: u64,
    pub udp_up: u32,
    pub udp_up_size: usize,
    pub udp_down: u32,
    pub udp_down_size: usize,
}

/// What one client did in [`mixed_traffic`]: per family, the TCP and UDP
/// results.
#[derive(Debug, Clone)]
pub struct MixResult {
    pub tcp: Vec<TcpTransfer>,
    pub udp: Vec<UdpTransfer>,
}

/// From namespace `ns`: TCP and UDP, IPv4 and IPv6, both directions, against
/// `servers`. Panics (with `label`) on any transport error or short TCP
/// transfer; returns what was sent and received.
pub fn mixed_traffic(ns: &str, servers: &ServerSet, mix: Mix, label: &str) -> MixResult {
    let mut r = MixResult {
        tcp: Vec::new(),
        udp: Vec::new(),
    };
    for v6 in [false, true] {
        let fam = if v6 { "IPv6" } else { "IPv4" };
        let t = TcpTransfer::run(ns, servers.tcp(v6).addr, mix.tcp_up, mix.tcp_down)
            .unwrap_or_else(|e| panic!("{label}: TCP {fam} to {}: {e}", servers.tcp(v6).addr));
        assert_eq!(
            t.received, mix.tcp_down,
            "{label}: TCP {fam} download short"
        );
        r.tcp.push(t);
        let u = UdpTransfer::run(
            ns,
            servers.udp(v6).addr,
            mix.udp_up,
            mix.udp_up_size,
            mix.udp_down,
            mix.udp_down_size,
        )
        .unwrap_or_else(|e| panic!("{label}: UDP {fam} to {}: {e}", servers.udp(v6).addr));
        r.udp.push(u);
    }
    r
}

/// One raw HTTP/1.1 request (`req`, with its `Connection: close`) from
/// namespace `ns` to `addr`; returns the status, the lower-cased head and the body.
pub fn http_raw(ns: &str, addr: SocketAddr, req: &str) -> (u16, String, String) {
    let mut s = in_netns(ns, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(3))
    })
    .unwrap_or_else(|e| panic!("connect {addr} from {ns}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// `METHOD path` with `headers` and `body` from namespace `ns` (see [`http_raw`]).
pub fn http(
    ns: &str,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> (u16, String, String) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    http_raw(ns, addr, &req)
}

/// A voucher code typed on the portal page (`/portal/redeem` of the portal at
/// `captive`) from namespace `ns`: (status, head, page).
pub fn portal_redeem(ns: &str, captive: SocketAddr, code: &str) -> (u16, String, String) {
    http(
        ns,
        captive,
        "POST",
        "/portal/redeem",
        &["Content-Type: application/x-www-form-urlencoded"],
        &format!("code={code}"),
    )
}
