//! The agent's control API from the tests: the CLI's client and the server's
//! view types (`session_api`), with assertions on top.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde_json::Value;
pub use session_api::{DeviceView, SessionView, StatusView};

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

/// The control API's client (`session_api::ApiClient`, the CLI's), with the
/// tests' conveniences: it waits for a starting agent's socket, and a failed
/// exchange is a panic naming the request.
#[derive(Debug, Clone)]
pub struct ApiClient {
    inner: session_api::ApiClient,
}

impl ApiClient {
    pub fn new(socket: &Path) -> Self {
        Self {
            inner: session_api::ApiClient::new(socket)
                .waiting(Duration::from_secs(5))
                .timeout(Duration::from_secs(30)),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        self.inner.socket()
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
        self.inner
            .exchange(method, path, headers, body)
            .map(Response::from)
            .map_err(std::io::Error::other)
    }

    /// Subscribes to `GET /v1/events{query}` (e.g. `?device=3`); events are collected
    /// in the background.
    pub fn events(&self, query: &str) -> EventStream {
        EventStream::open(self, query)
    }

    /// Sends one request (`Connection: close`) with an optional raw body.
    pub fn raw(&self, method: &str, path: &str, body: Option<&[u8]>) -> std::io::Result<Response> {
        self.raw_with_headers(method, path, &[], body.unwrap_or_default())
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Response {
        self.inner
            .send(method, path, body)
            .map(Response::from)
            .unwrap_or_else(|e| panic!("{method} {path} over {}: {e}", self.socket().display()))
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Response {
        self.request("POST", path, Some(body))
    }

    /// The answer to `GET path`, read as the server's view type `T`.
    #[track_caller]
    pub fn view<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let v = self.get(path).ok(path);
        serde_json::from_value(v.clone()).unwrap_or_else(|e| {
            panic!("GET {path}: not a {}: {e}: {v}", std::any::type_name::<T>())
        })
    }

    /// The device with this MAC (created by the agent when it first saw the MAC, or now).
    pub fn device_id(&self, mac: &str) -> i64 {
        let r = self.get(&format!("/v1/devices/by-mac/{mac}"));
        let d = if r.status == 404 {
            let made = self.post("/v1/devices", &serde_json::json!({ "mac": mac }));
            if made.status == 409 {
                // The agent saw the MAC between the two requests and made its device.
                self.get(&format!("/v1/devices/by-mac/{mac}"))
                    .ok("device by MAC")
            } else {
                made.ok("create device")
            }
        } else {
            r.ok("device by MAC")
        };
        let d: DeviceView = serde_json::from_value(d).expect("a device");
        d.id
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

    /// The session as the server's own view type.
    pub fn session_view(&self, id: i64) -> SessionView {
        self.view(&format!("/v1/sessions/{id}"))
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

impl From<session_api::Reply> for Response {
    fn from(r: session_api::Reply) -> Self {
        Self {
            status: r.status,
            body: r.body,
        }
    }
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
            .inner
            .stream()
            .unwrap_or_else(|e| panic!("events: connect {}: {e}", api.socket().display()));
        // The stream stays open: no read timeout.
        s.set_read_timeout(None).expect("events: no timeout");
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
