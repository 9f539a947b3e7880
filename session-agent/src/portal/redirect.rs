//! Clients that have not paid are sent to the portal (`--portal-redirect`).
//!
//! The datapath hands a client's TCP to port 80 outside the walled garden to
//! this responder: `bpf_sk_assign` puts each packet on the responder's socket
//! without changing its addresses, and a routing rule delivers the packets the
//! datapath marked locally ([`crate::netlink::route_marked_locally`]). The
//! listeners are transparent (`IP_TRANSPARENT`), so that each connection is
//! accepted and answered as the address the client asked for, and marked, so
//! that the egress program passes the answers to a client that has not paid.
//! Every request gets a `302 Found` to the portal with the client's MAC, its
//! IP and the URL it asked for as query parameters, then the connection closes.
//! (The client's other TCP is reset by the datapath itself; UDP is dropped.)
//!
//! Why not nftables' `redirect`: a rule set flushed by the operator's firewall
//! script would then forward unpaid traffic; here the datapath decides, and
//! without the responder or the routing rule the packet is dropped.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use session_model::MacAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::error::{AgentError, Result};
use crate::gateway::Gateway;

/// The query parameters the portal is sent, by name (an empty name leaves
/// that parameter out). CoovaChilli's names by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectParams {
    pub mac: String,
    pub ip: String,
    pub url: String,
}

impl Default for RedirectParams {
    fn default() -> Self {
        Self {
            mac: "mac".into(),
            ip: "ip".into(),
            url: "userurl".into(),
        }
    }
}

impl RedirectParams {
    /// A name that is not a plain query parameter name.
    pub fn check(&self) -> std::result::Result<(), String> {
        for (key, name) in [("mac", &self.mac), ("ip", &self.ip), ("url", &self.url)] {
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(format!(
                    "captive.redirect_param_{key} = '{name}': only letters, digits, '-', '_' and '.' (or empty to leave it out)"
                ));
            }
        }
        Ok(())
    }
}

/// The portal redirect as the daemon runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectOptions {
    /// The responder's TCP port, on the loopback addresses (not reachable from
    /// elsewhere by itself: the datapath hands clients' port-80 connections to it).
    pub port: u16,
    /// The mark of steered packets and of the responder's answers.
    pub mark: u32,
    /// The routing table whose default route is local.
    pub table: u32,
    /// Where clients are sent.
    pub portal_url: String,
    pub params: RedirectParams,
}

impl RedirectOptions {
    /// The responder on its default port, mark and table, sending clients to `portal_url`.
    pub fn new(portal_url: String) -> Self {
        Self {
            port: 3990,
            mark: 0x5e55,
            table: 0x5e55,
            portal_url,
            params: RedirectParams::default(),
        }
    }
}

/// The most connections answered at once; more are closed at once.
const MAX_CONNECTIONS: usize = 512;
/// Time a client has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// The responder's listeners (IPv4 and IPv6), bound before the datapath
/// steers anything to them.
pub fn listen(opts: &RedirectOptions) -> Result<Vec<std::net::TcpListener>> {
    let mut out = Vec::new();
    for v6 in [false, true] {
        let l = crate::sys::transparent_listener(v6, opts.port, opts.mark).map_err(|e| {
            let addr: std::net::SocketAddr = if v6 {
                (std::net::Ipv6Addr::LOCALHOST, opts.port).into()
            } else {
                (std::net::Ipv4Addr::LOCALHOST, opts.port).into()
            };
            // IP_TRANSPARENT and SO_MARK take CAP_NET_ADMIN.
            AgentError::listen(
                "the portal redirect's responder",
                addr,
                Some(opts.port),
                "--redirect-port (captive.redirect_port)",
                &[crate::error::CAP_NET_ADMIN],
                e,
            )
        })?;
        out.push(l);
    }
    Ok(out)
}

/// Answers every connection on `listeners` until the task is dropped or one
/// of them fails for good.
pub async fn serve(
    gw: Arc<Gateway>,
    opts: RedirectOptions,
    listeners: Vec<std::net::TcpListener>,
) -> Result<()> {
    let opts = Arc::new(opts);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut loops = tokio::task::JoinSet::new();
    for l in listeners {
        let l = tokio::net::TcpListener::from_std(l)
            .map_err(|e| AgentError::from_io("serving the portal redirect", e))?;
        let (gw, opts, slots) = (gw.clone(), opts.clone(), slots.clone());
        let addr = l
            .local_addr()
            .map_or_else(|_| format!("port {}", opts.port), |a| a.to_string());
        loops.spawn(async move {
            loop {
                let (stream, peer) = match l.accept().await {
                    Ok(c) => c,
                    Err(e) if crate::sys::listener_gone(&e) => {
                        return Err(AgentError::ListenerFailed {
                            what: "the portal redirect's responder".into(),
                            addr,
                            cause: e,
                        });
                    }
                    Err(e) => {
                        // Out of descriptors and the like: try again soon.
                        warn!("portal redirect: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let stats = gw.stats();
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    stats.redirect_dropped.fetch_add(1, Relaxed);
                    debug!(%peer, "portal redirect: too many connections, closed");
                    continue;
                };
                let (gw, opts) = (gw.clone(), opts.clone());
                tokio::spawn(async move {
                    let stats = gw.stats();
                    match answer(stream, peer, &gw, &opts).await {
                        Ok(Answer::Redirected) => stats.redirects.fetch_add(1, Relaxed),
                        Ok(Answer::BadRequest) => stats.redirect_bad_requests.fetch_add(1, Relaxed),
                        Err(e) => {
                            debug!(%peer, "portal redirect: {e}");
                            stats.redirect_dropped.fetch_add(1, Relaxed)
                        }
                    };
                    drop(permit);
                });
            }
        });
    }
    while let Some(r) = loops.join_next().await {
        match r {
            Ok(Err(e)) => return Err(e),
            Ok(Ok(())) => {}
            Err(e) => {
                return Err(AgentError::Io {
                    what: "the portal redirect".into(),
                    source: io::Error::other(e.to_string()),
                })
            }
        }
    }
    Ok(())
}

enum Answer {
    Redirected,
    BadRequest,
}

async fn answer(
    mut s: TcpStream,
    peer: SocketAddr,
    gw: &Gateway,
    opts: &RedirectOptions,
) -> io::Result<Answer> {
    // The address the client asked for: the transparent socket's own.
    let asked = s.local_addr()?;
    let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut s))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request head"))??;
    let refused = if head.len() >= MAX_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        Some(if head.windows(2).any(|w| w == b"\r\n") {
            Refusal::HeadTooLarge
        } else {
            Refusal::TargetTooLong
        })
    } else {
        None
    };
    let req = match refused {
        None => Request::parse(&head).ok_or(Refusal::NotHttp),
        Some(r) => Err(r),
    };
    let req = match req {
        Ok(req) => req,
        Err(r) => {
            s.write_all(&r.answer()).await?;
            close(s).await;
            return Ok(Answer::BadRequest);
        }
    };
    let ip = crate::neigh::canonical(peer.ip());
    let mac = crate::neigh::mac_for_ip(gw, ip).await.ok();
    let userurl = req.url(asked);
    let location = location(opts, mac, ip, &userurl);
    debug!(%peer, %userurl, %location, "portal redirect");
    let body = format!(
        "<!doctype html><title>Sign in</title><p><a href=\"{}\">Sign in to use the network</a></p>\n",
        crate::web::html::escape(&location)
    );
    let mut out = format!(
        "HTTP/1.1 302 Found\r\nLocation: {location}\r\nCache-Control: no-cache, no-store\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if req.method != "HEAD" {
        out.push_str(&body);
    }
    s.write_all(out.as_bytes()).await?;
    close(s).await;
    Ok(Answer::Redirected)
}

/// Why a request gets no redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    NotHttp,
    TargetTooLong,
    HeadTooLarge,
}

impl Refusal {
    /// The whole answer: the API's `{code, message}` error body.
    fn answer(self) -> Vec<u8> {
        let (status, code, message) = match self {
            Refusal::NotHttp => (
                "400 Bad Request",
                "bad_request",
                "not an HTTP/1 request: send METHOD /path HTTP/1.1, then Name: value headers"
                    .to_string(),
            ),
            Refusal::TargetTooLong => (
                "414 URI Too Long",
                "uri_too_long",
                format!("the request target is longer than {MAX_HEAD} bytes"),
            ),
            Refusal::HeadTooLarge => (
                "431 Request Header Fields Too Large",
                "headers_too_large",
                format!("the request head is larger than {MAX_HEAD} bytes: send fewer or shorter headers"),
            ),
        };
        let body = serde_json::to_string(&session_api::ApiErrorBody {
            code: code.into(),
            message,
        })
        .unwrap_or_default();
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// Ends the answer with a FIN, reading what the client still sends (a request
/// body) for a moment: closing with unread data would send a reset, which may
/// reach the client before it read the answer.
async fn close(mut s: TcpStream) {
    if s.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let mut left = 64 * 1024usize;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while left > 0 {
            match s.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// Reads up to the end of the request head (or [`MAX_HEAD`] bytes).
async fn read_head(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() >= MAX_HEAD {
            buf.truncate(MAX_HEAD);
            return Ok(buf);
        }
    }
}

/// What the responder reads of a request: its method, target and Host.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub host: Option<String>,
}

impl Request {
    /// The request line and the Host header of an HTTP/1 head; `None` for
    /// anything else.
    pub fn parse(head: &[u8]) -> Option<Request> {
        let text = String::from_utf8_lossy(head);
        let mut lines = text.split("\r\n");
        let mut parts = lines.next()?.split(' ');
        let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some()
            || !version.starts_with("HTTP/1.")
            || method.is_empty()
            || !method.bytes().all(|b| b.is_ascii_uppercase())
            || target.is_empty()
            || !target.bytes().all(|b| b.is_ascii_graphic())
        {
            return None;
        }
        let host = lines
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("host"))
            .map(|(_, v)| v.trim().to_string())
            .filter(|h| {
                !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
            });
        Some(Request {
            method: method.into(),
            target: target.into(),
            host,
        })
    }

    /// The URL the client asked for: its absolute target, or `http://` with
    /// its Host (the address it connected to without one) and its path.
    pub fn url(&self, asked: SocketAddr) -> String {
        let t = &self.target;
        if t.starts_with("http://") || t.starts_with("https://") {
            return t.clone();
        }
        let host = self.host.clone().unwrap_or_else(|| match asked.ip() {
            IpAddr::V6(a) => format!("[{a}]"),
            a => a.to_string(),
        });
        let path = if t.starts_with('/') { t.as_str() } else { "/" };
        format!("http://{host}{path}")
    }
}

/// The portal URL with the client's parameters.
pub fn location(opts: &RedirectOptions, mac: Option<MacAddr>, ip: IpAddr, url: &str) -> String {
    let mut out = opts.portal_url.clone();
    let mut sep = if out.contains('?') { '&' } else { '?' };
    let mac = mac.map(|m| {
        let a = m.octets();
        format!(
            "{:02X}-{:02X}-{:02X}-{:02X}-{:02X}-{:02X}",
            a[0], a[1], a[2], a[3], a[4], a[5]
        )
    });
    let ip = ip.to_string();
    let p = &opts.params;
    for (name, value) in [
        (&p.mac, mac.as_deref()),
        (&p.ip, Some(ip.as_str())),
        (&p.url, Some(url)),
    ] {
        let Some(value) = value.filter(|_| !name.is_empty()) else {
            continue;
        };
        out.push(sep);
        out.push_str(name);
        out.push('=');
        out.extend(percent_encoding::utf8_percent_encode(value, QUERY_VALUE));
        sep = '&';
    }
    out
}

/// What a query value keeps as it is: RFC 3986's unreserved characters.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(url: &str) -> RedirectOptions {
        RedirectOptions {
            port: 3990,
            mark: 0x5e55,
            table: 0x5e55,
            portal_url: url.into(),
            params: RedirectParams::default(),
        }
    }

    #[test]
    fn the_location_carries_mac_ip_and_the_url_asked_for_percent_encoded() {
        let mac = MacAddr::new([0x02, 0xaa, 0, 0, 0, 0x0b]);
        let l = location(
            &opts("http://10.0.0.1:8908/portal"),
            Some(mac),
            "10.0.0.7".parse().unwrap(),
            "http://detect.test/generate_204?a=1&b=2",
        );
        assert_eq!(
            l,
            "http://10.0.0.1:8908/portal?mac=02-AA-00-00-00-0B&ip=10.0.0.7&userurl=http%3A%2F%2Fdetect.test%2Fgenerate_204%3Fa%3D1%26b%3D2"
        );
    }

    #[test]
    fn a_portal_url_with_a_query_gets_more_parameters_and_empty_names_are_left_out() {
        let mut o = opts("https://portal.example/login?site=3");
        o.params.mac = String::new();
        let l = location(&o, None, "fd00::7".parse().unwrap(), "http://x/");
        assert_eq!(
            l,
            "https://portal.example/login?site=3&ip=fd00%3A%3A7&userurl=http%3A%2F%2Fx%2F"
        );
    }

    #[test]
    fn the_url_asked_for_comes_from_host_and_path_or_the_address_connected_to() {
        let asked: SocketAddr = "[2001:db8::5]:80".parse().unwrap();
        let r = Request::parse(b"GET /generate_204 HTTP/1.1\r\nhost: detect.test\r\n\r\n").unwrap();
        assert_eq!(r.url(asked), "http://detect.test/generate_204");
        let r = Request::parse(b"GET /x HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(r.url(asked), "http://[2001:db8::5]/x");
        let r = Request::parse(b"GET http://a.test/p HTTP/1.1\r\nHost: a.test\r\n\r\n").unwrap();
        assert_eq!(r.url(asked), "http://a.test/p");
        // A Host that could break the Location header is not used.
        let r = Request::parse(b"GET / HTTP/1.1\r\nHost: a\"b<c\r\n\r\n").unwrap();
        assert_eq!(r.host, None);
    }

    #[test]
    fn what_is_not_an_http_request_head_is_refused() {
        for bad in [
            &b"\x16\x03\x01\x02\x00\x01\x00"[..],
            b"GET\r\n\r\n",
            b"GET / SSH-2.0\r\n\r\n",
            b"get / HTTP/1.1\r\n\r\n",
            b"GET /a b HTTP/1.1\r\n\r\n",
            b"",
        ] {
            assert_eq!(Request::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn refusals_carry_a_json_error_body() {
        for (r, status, code) in [
            (Refusal::NotHttp, "400", "bad_request"),
            (Refusal::TargetTooLong, "414", "uri_too_long"),
            (Refusal::HeadTooLarge, "431", "headers_too_large"),
        ] {
            let a = String::from_utf8(r.answer()).unwrap();
            let (head, body) = a.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
            assert!(
                head.contains(&format!("Content-Length: {}", body.len())),
                "{head}"
            );
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["code"], code);
            assert!(!v["message"].as_str().unwrap().is_empty());
        }
    }

    #[test]
    fn parameter_names_that_are_not_plain_are_refused() {
        let mut p = RedirectParams::default();
        assert!(p.check().is_ok());
        p.url = "user url".into();
        assert!(p.check().unwrap_err().contains("redirect_param_url"));
    }
}
