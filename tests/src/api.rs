//! A small HTTP/1.1 client for the agent's control API on its unix socket.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;

/// One response: status code and body (JSON when the body parses, else a string).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Value,
}

impl Response {
    /// Panics with the request and body unless the status is 2xx.
    #[track_caller]
    pub fn ok(self, what: &str) -> Value {
        assert!(
            (200..300).contains(&self.status),
            "{what}: HTTP {} {}",
            self.status,
            self.body
        );
        self.body
    }
}

#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
}

impl ApiClient {
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_path_buf(),
        }
    }

    /// Connects to the socket, waiting up to 5 s for the agent to bind it.
    fn open_stream(&self) -> std::io::Result<UnixStream> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match UnixStream::connect(&self.socket) {
                Ok(s) => return Ok(s),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `PATCH path` with a JSON body.
    pub fn patch(&self, path: &str, body: &Value) -> Response {
        self.request("PATCH", path, Some(body))
    }

    /// Sends a request with a raw body and extra header lines (`Name: value`), e.g. to
    /// send a wrong content type.
    pub fn raw_with_headers(
        &self,
        method: &str,
        path: &str,
        headers: &[&str],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let mut s = self.open_stream()?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: session-agent\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for h in headers {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes())?;
        // The server may answer (413) before reading a large body.
        let _ = s.write_all(body);
        read_response(BufReader::new(s))
    }

    /// Subscribes to `GET /v1/events{query}` (e.g. `?device=3`); events are collected
    /// in the background.
    pub fn events(&self, query: &str) -> EventStream {
        EventStream::open(self, query)
    }

    /// Sends one request (`Connection: close`) with an optional raw body.
    pub fn raw(&self, method: &str, path: &str, body: Option<&[u8]>) -> std::io::Result<Response> {
        let mut s = self.open_stream()?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let body = body.unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: session-agent\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        read_response(BufReader::new(s))
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Response {
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
        self.raw(method, path, bytes.as_deref())
            .unwrap_or_else(|e| panic!("{method} {path} over {}: {e}", self.socket.display()))
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Response {
        self.request("POST", path, Some(body))
    }

    /// The device with this MAC (created by the agent when it first saw the MAC, or now).
    pub fn device_id(&self, mac: &str) -> i64 {
        let r = self.get(&format!("/v1/devices/by-mac/{mac}"));
        let d = if r.status == 404 {
            self.post("/v1/devices", &serde_json::json!({ "mac": mac }))
                .ok("create device")
        } else {
            r.ok("device by MAC")
        };
        d["id"].as_i64().expect("device id")
    }

    /// Creates a session with the Flarehotspot SDK's `CreateSession` arguments; returns its view.
    #[allow(clippy::too_many_arguments)]
    pub fn create_session(
        &self,
        device: i64,
        session_type: u8,
        time_secs: u64,
        data_mb: f64,
        exp_days: Option<u32>,
        down_mbits: i32,
        up_mbits: i32,
        use_global_speed: bool,
    ) -> Value {
        self.post(
            &format!("/v1/devices/{device}/sessions"),
            &serde_json::json!({
                "type": session_type, "time_secs": time_secs, "data_mb": data_mb, "exp_days": exp_days,
                "down_mbits": down_mbits, "up_mbits": up_mbits, "use_global_speed": use_global_speed,
            }),
        )
        .ok("create session")
    }

    pub fn connect(&self, device: i64, notification: &str) -> Response {
        self.post(
            &format!("/v1/devices/{device}/connect"),
            &serde_json::json!({ "notification": notification }),
        )
    }

    pub fn disconnect(&self, device: i64, notification: &str) -> Response {
        self.post(
            &format!("/v1/devices/{device}/disconnect"),
            &serde_json::json!({ "notification": notification }),
        )
    }

    pub fn session(&self, id: i64) -> Value {
        self.get(&format!("/v1/sessions/{id}")).ok("show session")
    }

    pub fn sessions(&self, device: i64) -> Vec<Value> {
        match self
            .get(&format!("/v1/devices/{device}/sessions"))
            .ok("device sessions")
        {
            Value::Array(v) => v,
            other => panic!("sessions: expected an array, got {other}"),
        }
    }
}

/// Reads one HTTP/1.1 response.
fn read_response(mut r: BufReader<UnixStream>) -> std::io::Result<Response> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut len = None;
    let mut chunked = false;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let lower = l.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse::<usize>().ok();
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    let mut buf = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim(), 16).map_err(std::io::Error::other)?;
            if n == 0 {
                break;
            }
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            buf.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = len {
        buf.resize(n, 0);
        r.read_exact(&mut buf)?;
    } else {
        r.read_to_end(&mut buf)?;
    }
    let body = serde_json::from_slice(&buf)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&buf).into_owned()));
    Ok(Response { status, body })
}

/// A subscription to the agent's server-sent events, read on a background thread.
pub struct EventStream {
    rx: std::sync::mpsc::Receiver<(String, Value)>,
    seen: Vec<(String, Value)>,
    stream: UnixStream,
}

impl EventStream {
    fn open(api: &ApiClient, query: &str) -> EventStream {
        let mut s = api
            .open_stream()
            .unwrap_or_else(|e| panic!("events: connect {}: {e}", api.socket.display()));
        let head = format!(
            "GET /v1/events{query} HTTP/1.1\r\nHost: session-agent\r\nAccept: text/event-stream\r\n\r\n"
        );
        s.write_all(head.as_bytes()).expect("events: send request");
        let reader = s.try_clone().expect("clone stream");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(reader);
            let mut line = String::new();
            // Status line and headers.
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                if line.trim_end().is_empty() {
                    break;
                }
            }
            // Chunked body: chunk-size lines and SSE lines; SSE data lines start with "data:".
            let mut name = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let l = line.trim_end();
                if let Some(v) = l.strip_prefix("event:") {
                    name = v.trim().to_string();
                } else if let Some(v) = l.strip_prefix("data:") {
                    let v: Value = serde_json::from_str(v.trim())
                        .unwrap_or_else(|_| Value::String(v.to_string()));
                    if tx.send((name.clone(), v)).is_err() {
                        return;
                    }
                }
            }
        });
        let mut es = EventStream {
            rx,
            seen: Vec::new(),
            stream: s,
        };
        es.wait_for("subscription", Duration::from_secs(10), |n, _| n == "ready");
        es
    }

    /// Waits until an event matching `pred(name, data)` arrives (or was already
    /// received) and returns its data; panics after `timeout` with every event seen.
    #[track_caller]
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str, &Value) -> bool,
    ) -> Value {
        if let Some((_, v)) = self.seen.iter().find(|(n, v)| pred(n, v)) {
            return v.clone();
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((n, v)) => {
                    let hit = pred(&n, &v);
                    self.seen.push((n, v.clone()));
                    if hit {
                        return v;
                    }
                }
                Err(_) => panic!(
                    "no {what} event within {timeout:?}; events seen: {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Every event received so far (name, data).
    pub fn received(&mut self) -> Vec<(String, Value)> {
        while let Ok(e) = self.rx.try_recv() {
            self.seen.push(e);
        }
        self.seen.clone()
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}
