//! Sending a request to a list of RADIUS servers: retransmission with
//! backoff to one server, then failover to the next (RFC 5080 2.2.1), and
//! only answers that pass [`crate::codec::open_response`] count.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use radius::core::{code::Code, packet::Packet};
use tokio::net::UdpSocket;
use tracing::{debug, warn};

use crate::codec::{self, CodecError};

/// Why no answer came.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no RADIUS server answered ({servers}; {attempts} attempts): check that they run, are reachable, and list this gateway as a client with the same secret")]
    NoAnswer { servers: String, attempts: u32 },
    #[error("cannot send to the RADIUS server {server}: {source}")]
    Io {
        server: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Servers tried in turn; the one that last answered is tried first.
#[derive(Debug)]
pub struct Servers {
    list: Vec<SocketAddr>,
    preferred: AtomicUsize,
    secret: Vec<u8>,
    timeout: Duration,
    retries: u32,
    /// Whether Access answers need a Message-Authenticator.
    require_ma: bool,
}

impl Servers {
    pub fn new(
        list: Vec<SocketAddr>,
        secret: Vec<u8>,
        timeout: Duration,
        retries: u32,
        require_ma: bool,
    ) -> Self {
        Self {
            list,
            preferred: AtomicUsize::new(0),
            secret,
            timeout,
            retries,
            require_ma,
        }
    }

    pub fn secret(&self) -> &[u8] {
        &self.secret
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Sends the request `build` makes (called once per server: each gets its
    /// own identifier and authenticator) and returns the first answer that
    /// checks out. Retransmissions to one server repeat the same bytes after
    /// a timeout that doubles each time.
    ///
    /// `build` gets the secret and the address the request leaves from (the
    /// NAS-IP-Address when none is configured).
    pub async fn exchange(
        &self,
        build: impl Fn(&[u8], IpAddr) -> Packet,
    ) -> Result<Packet, ClientError> {
        let n = self.list.len();
        let first = self.preferred.load(Ordering::Relaxed) % n.max(1);
        let mut attempts = 0;
        for i in 0..n {
            let idx = (first + i) % n;
            let server = self.list[idx];
            let bind: SocketAddr = match server.ip() {
                IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let io = |source| ClientError::Io { server, source };
            let sock = UdpSocket::bind(bind).await.map_err(io)?;
            sock.connect(server).await.map_err(io)?;
            let local = sock.local_addr().map_err(io)?.ip();
            let request = codec::encode_signed(build(&self.secret, local))?;
            let mut wait = self.timeout;
            for _ in 0..=self.retries {
                attempts += 1;
                if let Err(e) = sock.send(&request).await {
                    // Unreachable now (no route, ICMP): the next server.
                    debug!(%server, "RADIUS send failed: {e}");
                    break;
                }
                if let Some(answer) = self.answer(&sock, &request, wait, server).await {
                    self.preferred.store(idx, Ordering::Relaxed);
                    return Ok(answer);
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            if n > 1 {
                warn!(%server, "RADIUS server did not answer: trying the next one");
            }
        }
        Err(ClientError::NoAnswer {
            servers: self
                .list
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            attempts,
        })
    }

    /// The first valid answer within `wait`; invalid ones are logged and ignored.
    async fn answer(
        &self,
        sock: &UdpSocket,
        request: &[u8],
        wait: Duration,
        server: SocketAddr,
    ) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut buf = vec![0u8; 4096];
        loop {
            let got = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await;
            let len = match got {
                Err(_) => return None,
                // ICMP port unreachable: nobody listens there.
                Ok(Err(e)) => {
                    debug!(%server, "RADIUS receive failed: {e}");
                    tokio::time::sleep_until(deadline).await;
                    return None;
                }
                Ok(Ok(len)) => len,
            };
            // Accounting answers are checked by their authenticator; Access
            // answers must carry a Message-Authenticator as well.
            let need_ma = self.require_ma && Code::from(request[0]) == Code::AccessRequest;
            match codec::open_response(&buf[..len], request, &self.secret, need_ma) {
                Ok(p) => return Some(p),
                Err(e) => warn!(%server, "RADIUS answer dropped: {e}"),
            }
        }
    }
}
