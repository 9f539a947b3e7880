//! A small blocking HTTP/1.1 client for the control API on its unix socket,
//! used by the CLI (which never opens the database itself) and by the tests.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the agent at {socket}: {err} (is `session-agent run` running? choose the socket with --api-socket)")]
    Connect { socket: PathBuf, err: io::Error },
    #[error("talking to the agent at {socket}: {err}")]
    Io { socket: PathBuf, err: io::Error },
    #[error("the agent sent a malformed response: {0}")]
    Protocol(String),
    /// The API answered with an error.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
}

/// A response: status and body (JSON when it parses, else a string).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
    /// How long to wait for the agent to bind its socket.
    connect_wait: Duration,
    /// Longest wait for an answer (`None`: no limit).
    read_timeout: Option<Duration>,
}

struct Head {
    status: u16,
    len: Option<usize>,
    chunked: bool,
}

impl ApiClient {
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_path_buf(),
            connect_wait: Duration::ZERO,
            read_timeout: None,
        }
    }

    /// Waits up to `wait` for the agent to bind its socket (one just started).
    pub fn waiting(mut self, wait: Duration) -> Self {
        self.connect_wait = wait;
        self
    }

    /// Gives up on an answer after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = Some(timeout);
        self
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A connection to the socket, waiting for it as [`ApiClient::waiting`] says.
    pub fn stream(&self) -> Result<UnixStream, ClientError> {
        let deadline = std::time::Instant::now() + self.connect_wait;
        loop {
            match UnixStream::connect(&self.socket) {
                Ok(s) => {
                    s.set_read_timeout(self.read_timeout)
                        .map_err(|e| self.io(e))?;
                    return Ok(s);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(err) => {
                    return Err(ClientError::Connect {
                        socket: self.socket.clone(),
                        err,
                    })
                }
            }
        }
    }

    fn io(&self, source: io::Error) -> ClientError {
        ClientError::Io {
            socket: self.socket.clone(),
            err: source,
        }
    }

    /// Sends a request (`Connection: close`) with `headers` (`Name: value`
    /// lines; `Content-Type: application/json` unless one is given) and reads
    /// the answer's head.
    fn open(
        &self,
        method: &str,
        path: &str,
        headers: &[&str],
        body: &[u8],
    ) -> Result<(BufReader<UnixStream>, Head), ClientError> {
        let mut s = self.stream()?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: session-agent\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if !headers
            .iter()
            .any(|h| h.to_ascii_lowercase().starts_with("content-type:"))
        {
            head.push_str("Content-Type: application/json\r\n");
        }
        for h in headers {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).map_err(|e| self.io(e))?;
        // The server may answer (413) before reading a large body.
        let _ = s.write_all(body);
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| self.io(e))?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| ClientError::Protocol(format!("status line {line:?}")))?;
        let mut h = Head {
            status,
            len: None,
            chunked: false,
        };
        loop {
            line.clear();
            if r.read_line(&mut line).map_err(|e| self.io(e))? == 0 {
                break;
            }
            let l = line.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.strip_prefix("content-length:") {
                h.len = v.trim().parse().ok();
            }
            if l.starts_with("transfer-encoding:") && l.contains("chunked") {
                h.chunked = true;
            }
        }
        Ok((r, h))
    }

    /// Sends a request and returns the reply, whatever its status.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, ClientError> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        self.exchange(method, path, &[], body.as_bytes())
    }

    /// Sends a request with a raw body and extra header lines, and returns
    /// the reply, whatever its status.
    pub fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[&str],
        body: &[u8],
    ) -> Result<Reply, ClientError> {
        let (mut r, h) = self.open(method, path, headers, body)?;
        let mut buf = Vec::new();
        if h.chunked {
            let mut line = String::new();
            loop {
                line.clear();
                r.read_line(&mut line).map_err(|e| self.io(e))?;
                let n = usize::from_str_radix(line.trim(), 16)
                    .map_err(|_| ClientError::Protocol(format!("chunk size {line:?}")))?;
                if n == 0 {
                    break;
                }
                let mut chunk = vec![0; n + 2];
                r.read_exact(&mut chunk).map_err(|e| self.io(e))?;
                buf.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(n) = h.len {
            buf.resize(n, 0);
            r.read_exact(&mut buf).map_err(|e| self.io(e))?;
        } else {
            r.read_to_end(&mut buf).map_err(|e| self.io(e))?;
        }
        let body = serde_json::from_slice(&buf)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&buf).into_owned()));
        Ok(Reply {
            status: h.status,
            body,
        })
    }

    /// Sends a request; a non-2xx reply becomes [`ClientError::Api`].
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let r = self.send(method, path, body)?;
        if (200..300).contains(&r.status) {
            return Ok(r.body);
        }
        // The API's error body; anything else (a proxy's page) as it came.
        let (code, message) =
            match serde_json::from_value::<crate::views::ApiErrorBody>(r.body.clone()) {
                Ok(e) => (e.code, e.message),
                Err(_) => ("http_error".into(), r.body.to_string()),
            };
        Err(ClientError::Api {
            status: r.status,
            code,
            message,
        })
    }

    /// Follows a server-sent-events stream, calling `on_event(name, data)` for each
    /// event until it returns false or the stream ends.
    pub fn follow(
        &self,
        path: &str,
        timeout: Option<Duration>,
        mut on_event: impl FnMut(&str, &str) -> bool,
    ) -> Result<(), ClientError> {
        let (r, h) = self.open("GET", path, &["Accept: text/event-stream"], b"")?;
        if !(200..300).contains(&h.status) {
            // Read the error body the ordinary way.
            drop(r);
            self.call("GET", path, None)?;
            return Err(ClientError::Protocol(format!("HTTP {}", h.status)));
        }
        r.get_ref()
            .set_read_timeout(timeout.or(self.read_timeout))
            .map_err(|e| self.io(e))?;
        let mut body: Box<dyn BufRead> = if h.chunked {
            Box::new(BufReader::new(Dechunk {
                inner: r,
                left: 0,
                done: false,
            }))
        } else {
            Box::new(r)
        };
        let (mut name, mut data) = (String::new(), String::new());
        let mut line = String::new();
        loop {
            line.clear();
            if body.read_line(&mut line).map_err(|e| self.io(e))? == 0 {
                return Ok(());
            }
            let l = line.trim_end_matches(['\r', '\n']);
            if l.is_empty() {
                if !data.is_empty() && !on_event(&name, &data) {
                    return Ok(());
                }
                name.clear();
                data.clear();
            } else if let Some(v) = l.strip_prefix("event:") {
                name = v.trim().to_string();
            } else if let Some(v) = l.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(v.trim_start());
            }
        }
    }
}

/// Reads the payload of a chunked body.
struct Dechunk<R> {
    inner: R,
    left: usize,
    done: bool,
}

impl<R: BufRead> Read for Dechunk<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            self.inner.read_line(&mut line)?;
            if line.trim().is_empty() {
                // The CRLF after the previous chunk.
                line.clear();
                self.inner.read_line(&mut line)?;
            }
            if line.is_empty() {
                self.done = true;
                return Ok(0);
            }
            let n = usize::from_str_radix(line.trim(), 16)
                .map_err(|_| io::Error::other(format!("bad chunk size {line:?}")))?;
            if n == 0 {
                self.done = true;
                return Ok(0);
            }
            self.left = n;
        }
        let want = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            self.done = true;
        }
        self.left -= n;
        Ok(n)
    }
}
