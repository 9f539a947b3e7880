//! Real DNS for the tests: dnsmasq from Debian in a namespace (an
//! authoritative upstream for test zones, or the gateway's forwarder), and a
//! stub resolver that asks over UDP or TCP from a client's namespace.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use simple_dns::{rdata::RData, Name, Packet, Question, CLASS, QCLASS, QTYPE, TYPE};

/// The record type asked for (A, AAAA, ...).
pub use simple_dns::TYPE as QueryType;

use crate::netns::{in_netns, ns_command};

/// A dnsmasq process in a namespace, killed on drop.
pub struct Dnsmasq {
    child: Child,
    log: PathBuf,
}

impl Dnsmasq {
    /// dnsmasq in `ns`, listening on `listen` (port 53), with `args` (records,
    /// `--server=`...), no other configuration, hosts or resolv.conf.
    pub fn start(ns: &str, listen: &[IpAddr], args: &[String]) -> Dnsmasq {
        let bin = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or_else(|| {
                panic!("dnsmasq is missing: `cargo xtask test` installs it (apt-get install dnsmasq-base)")
            });
        let log = std::env::temp_dir().join(format!("sa-dnsmasq-{ns}-{}.log", std::process::id()));
        let mut cmd = ns_command(ns, bin);
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--pid-file=",
            "--user=root",
            "--port=53",
        ]);
        cmd.arg(format!("--log-facility={}", log.display()));
        for a in listen {
            cmd.arg(format!("--listen-address={a}"));
        }
        cmd.args(args);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting dnsmasq in {ns}: {e}"));
        let mut d = Dnsmasq { child, log };
        // Up when it answers on its first address.
        let first = SocketAddr::new(listen[0], 53);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("dnsmasq in {ns} exited ({status}): {}", d.log_text());
            }
            if in_netns(ns, || {
                query_udp(first, "up.invalid", TYPE::A, Duration::from_millis(200))
            })
            .is_ok()
            {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq in {ns} does not answer: {}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// An answer: its response code and the addresses in it (after any CNAMEs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub rcode: simple_dns::RCODE,
    pub addrs: Vec<IpAddr>,
}

/// A recursive query for `name` of `qtype` with id `id`, as a stub sends it.
pub fn query_message(name: &str, qtype: TYPE, id: u16) -> Vec<u8> {
    let mut p = Packet::new_query(id);
    p.set_flags(simple_dns::PacketFlag::RECURSION_DESIRED);
    p.questions.push(Question::new(
        Name::new_unchecked(name),
        QTYPE::TYPE(qtype),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    p.build_bytes_vec().expect("a query builds")
}

fn parse(msg: &[u8], id: u16) -> std::io::Result<Answer> {
    let bad = |w: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, w.to_string());
    let p = Packet::parse(msg).map_err(|e| bad(&format!("not DNS: {e}")))?;
    if p.id() != id {
        return Err(bad("another query's answer"));
    }
    let addrs = p
        .answers
        .iter()
        .filter_map(|rr| match &rr.rdata {
            RData::A(a) => Some(IpAddr::from(std::net::Ipv4Addr::from(a.address))),
            RData::AAAA(a) => Some(IpAddr::from(std::net::Ipv6Addr::from(a.address))),
            _ => None,
        })
        .collect();
    Ok(Answer {
        rcode: p.rcode(),
        addrs,
    })
}

fn next_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static ID: AtomicU16 = AtomicU16::new(0x1000);
    ID.fetch_add(1, Ordering::Relaxed)
}

/// Asks `server` for `name` over UDP (call inside the client's namespace).
pub fn query_udp(
    server: SocketAddr,
    name: &str,
    qtype: TYPE,
    timeout: Duration,
) -> std::io::Result<Answer> {
    let bind: SocketAddr = if server.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .unwrap();
    let s = UdpSocket::bind(bind)?;
    s.set_read_timeout(Some(timeout))?;
    let id = next_id();
    s.send_to(&query_message(name, qtype, id), server)?;
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + timeout;
    loop {
        let (n, from) = s.recv_from(&mut buf)?;
        if from == server {
            if let Ok(a) = parse(&buf[..n], id) {
                return Ok(a);
            }
        }
        if Instant::now() >= deadline {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
    }
}

/// Asks `server` for `name` over TCP (call inside the client's namespace).
pub fn query_tcp(
    server: SocketAddr,
    name: &str,
    qtype: TYPE,
    timeout: Duration,
) -> std::io::Result<Answer> {
    let mut s = TcpStream::connect_timeout(&server, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    let id = next_id();
    let q = query_message(name, qtype, id);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    s.write_all(&framed)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut msg)?;
    parse(&msg, id)
}

/// [`query_udp`] from namespace `ns`.
pub fn resolve(ns: &str, server: SocketAddr, name: &str, qtype: TYPE) -> std::io::Result<Answer> {
    in_netns(ns, || {
        query_udp(server, name, qtype, Duration::from_secs(2))
    })
}
