//! The HTTP server answers some requests before any route sees them: a request
//! line or header that is not HTTP/1.1 (`400`), a target longer than 65534 bytes
//! (`414`), a head larger than its read buffer (`431`). It sends those with an
//! empty body and closes the connection. [`JsonErrors`] wraps a listener so that
//! each of these answers carries the API's `{code, message}` body instead.
//!
//! The server writes its own answer as one head without a body and without a
//! `Content-Type`, which no route sends (every error of the API is JSON, every
//! page HTML); that head is replaced as it is written.

use std::{
    io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use std::{net::SocketAddr, time::Duration};

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::warn;

use crate::error::AgentError;

/// A listener whose connections carry [`ErrorBodies`].
pub struct JsonErrors<L>(pub L);

impl<L: Listener> Listener for JsonErrors<L> {
    type Io = ErrorBodies<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.0.accept().await;
        (ErrorBodies::new(io), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// A connection whose bodiless `400`, `414` and `431` answers get a JSON body.
pub struct ErrorBodies<S> {
    inner: S,
    /// An answer being written in place of the server's.
    pending: Vec<u8>,
    at: usize,
}

impl<S> ErrorBodies<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            at: 0,
        }
    }
}

/// What replaces the server's own answer in `head`, if `head` is one.
pub fn replacement(head: &[u8]) -> Option<Vec<u8>> {
    let rest = head.strip_prefix(b"HTTP/1.1 ")?;
    let (status, code, message) = match rest.get(..4)? {
        b"400 " => (
            "400 Bad Request",
            "bad_request",
            "the request line or a header is not valid HTTP/1.1: send METHOD /path HTTP/1.1, then Name: value headers",
        ),
        b"414 " => (
            "414 URI Too Long",
            "uri_too_long",
            "the request target is longer than 65534 bytes: send long data in a JSON body",
        ),
        b"431 " => (
            "431 Request Header Fields Too Large",
            "headers_too_large",
            "the request head is larger than the server reads (about 400 KB): send fewer or shorter headers",
        ),
        _ => return None,
    };
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = std::str::from_utf8(&head[..end]).ok()?.to_ascii_lowercase();
    if end != head.len() || text.contains("\r\ncontent-type:") {
        return None;
    }
    let body = serde_json::to_vec(&session_api::ApiErrorBody {
        code: code.into(),
        message: message.into(),
    })
    .ok()?;
    let mut out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    Some(out)
}

impl<S: AsyncWrite + Unpin> ErrorBodies<S> {
    /// Writes what is left of a replaced answer.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.at < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.at += n;
        }
        self.pending.clear();
        self.at = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ErrorBodies<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

// Not vectored: the server then writes each head in one piece, which
// `replacement` looks at whole.
impl<S: AsyncWrite + Unpin> AsyncWrite for ErrorBodies<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        if let Some(answer) = replacement(buf) {
            this.pending = answer;
            // Flush and shutdown write the rest if the socket is full now.
            if let Poll::Ready(Err(e)) = this.drain(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

pub async fn bind_tcp(
    addr: SocketAddr,
    what: &str,
    setting: &str,
) -> Result<tokio::net::TcpListener, AgentError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| AgentError::listen(what, addr, Some(addr.port()), setting, &[], e))
}

/// The address of a TCP listener, as logs and errors name it.
pub fn tcp_addr(l: &tokio::net::TcpListener) -> String {
    l.local_addr().map(|a| a.to_string()).unwrap_or_default()
}

/// A listener as axum serves it, whose socket failing for good
/// ([`crate::sys::listener_gone`]) is handed to its owner instead of retried
/// forever (axum's own listeners retry every accept error).
pub struct Watched<L> {
    inner: L,
    what: &'static str,
    addr: String,
    failed: Option<tokio::sync::oneshot::Sender<AgentError>>,
}

impl<L> Watched<L> {
    pub fn new(
        inner: L,
        what: &'static str,
        addr: String,
    ) -> (Self, tokio::sync::oneshot::Receiver<AgentError>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let w = Watched {
            inner,
            what,
            addr,
            failed: Some(tx),
        };
        (w, rx)
    }
}

/// The accept of tokio's listeners, errors and all.
pub trait Accept: Send + 'static {
    type Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    type Addr: Send;
    fn accept_one(
        &mut self,
    ) -> impl std::future::Future<Output = io::Result<(Self::Io, Self::Addr)>> + Send;
    fn addr(&self) -> io::Result<Self::Addr>;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;
    async fn accept_one(&mut self) -> io::Result<(Self::Io, Self::Addr)> {
        tokio::net::TcpListener::accept(self).await
    }
    fn addr(&self) -> io::Result<Self::Addr> {
        tokio::net::TcpListener::local_addr(self)
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;
    async fn accept_one(&mut self) -> io::Result<(Self::Io, Self::Addr)> {
        tokio::net::UnixListener::accept(self).await
    }
    fn addr(&self) -> io::Result<Self::Addr> {
        tokio::net::UnixListener::local_addr(self)
    }
}

impl<L: Accept> axum::serve::Listener for Watched<L> {
    type Io = L::Io;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept_one().await {
                Ok(c) => return c,
                Err(e) if crate::sys::listener_gone(&e) => {
                    if let Some(tx) = self.failed.take() {
                        let _ = tx.send(AgentError::ListenerFailed {
                            what: self.what.into(),
                            addr: self.addr.clone(),
                            cause: e,
                        });
                    }
                    std::future::pending::<()>().await;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) => {}
                Err(e) => {
                    // Out of descriptors and the like: try again soon.
                    warn!(addr = %self.addr, "{}: accept failed: {e}", self.what);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Sends `request` to a router served through [`JsonErrors`] on a real socket.
    async fn exchange(request: Vec<u8>) -> String {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
        let server = tokio::spawn(async move {
            axum::serve(JsonErrors(tcp), app).await.unwrap();
        });
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The server may answer and close before it read all of a long request.
        let _ = s.write_all(&request).await;
        let mut out = Vec::new();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await;
        server.abort();
        String::from_utf8_lossy(&out).into_owned()
    }

    fn body_of(answer: &str) -> serde_json::Value {
        let (_, body) = answer.split_once("\r\n\r\n").expect(answer);
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
    }

    #[tokio::test]
    async fn a_100_kb_target_gets_414_with_a_json_error() {
        let path = format!("/{}", "a".repeat(100 * 1024));
        let a = exchange(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()).await;
        assert!(a.starts_with("HTTP/1.1 414 "), "{a:.200}");
        assert!(a.contains("content-type: application/json"), "{a:.300}");
        assert_eq!(body_of(&a)["code"], "uri_too_long");
    }

    #[tokio::test]
    async fn a_broken_request_line_or_header_gets_400_with_a_json_error() {
        for bad in [
            &b"GET / HTTP/1.1\r\nHost x\r\n\r\n"[..],
            b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            let a = exchange(bad.to_vec()).await;
            assert!(a.starts_with("HTTP/1.1 400 "), "{a}");
            let b = body_of(&a);
            assert_eq!(b["code"], "bad_request", "{a}");
            assert!(b["message"].as_str().unwrap().contains("HTTP/1.1"), "{a}");
        }
    }

    #[tokio::test]
    async fn a_head_too_large_gets_431_with_a_json_error() {
        let mut req = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..600 {
            req.extend_from_slice(format!("x-pad-{i}: {}\r\n", "b".repeat(1000)).as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        let a = exchange(req).await;
        assert!(a.starts_with("HTTP/1.1 431 "), "{a:.200}");
        assert_eq!(body_of(&a)["code"], "headers_too_large");
    }

    #[tokio::test]
    async fn answers_of_routes_pass_as_they_are() {
        let a = exchange(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()).await;
        assert!(
            a.starts_with("HTTP/1.1 200 ") && a.ends_with("hello"),
            "{a}"
        );
    }
}
