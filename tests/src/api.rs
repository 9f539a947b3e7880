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

    /// Sends one request (`Connection: close`) with an optional raw body.
    pub fn raw(&self, method: &str, path: &str, body: Option<&[u8]>) -> std::io::Result<Response> {
        let mut s = UnixStream::connect(&self.socket)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let body = body.unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: session-agent\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let mut r = BufReader::new(s);
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

    /// Creates a session with the seed-003 arguments; returns its view.
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
