//! A headless Chromium driven over WebDriver, inside a network namespace.
//!
//! [`Browser::start`] runs Debian's `chromedriver` (package `chromium-driver`)
//! in a namespace; chromedriver starts `chromium` there, so every page the
//! browser loads goes through that namespace's network. The WebDriver client
//! is a minimal HTTP/1.1 JSON client over `std::net::TcpStream` (one
//! connection per command, `Connection: close`), connecting from a thread
//! that joined the namespace, since chromedriver listens on its loopback.
//!
//! Every command panics on failure with the WebDriver error JSON and the tail
//! of chromedriver's log; every socket operation has a timeout, so a hung
//! browser fails the test instead of hanging it.

use crate::netns::{in_netns, ns_command, unique_id};
use serde_json::{json, Value};
use std::fmt;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Debian's Chromium launcher (package `chromium`).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's ChromeDriver (package `chromium-driver`).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The W3C WebDriver key of an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long chromedriver may take to answer `/status` with `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Socket timeout while creating the session (Chromium starts).
const SESSION_TIMEOUT: Duration = Duration::from_secs(90);
/// Page load timeout set at session creation.
const DEFAULT_PAGE_LOAD: Duration = Duration::from_secs(20);
/// Script timeout set at session creation.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(20);
/// Socket timeout margin over the longest browser-side timeout.
const IO_MARGIN: Duration = Duration::from_secs(10);
/// Socket timeout of the final `DELETE /session`.
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of chromedriver's log shown in panic messages.
const LOG_TAIL_BYTES: usize = 6000;

/// A failed WebDriver command: an HTTP or transport failure, or a W3C error.
#[derive(Debug, Clone)]
pub struct WdError {
    /// HTTP status (0 when no response was received).
    pub status: u16,
    /// W3C error code (`no such element`, ...), or `transport`.
    pub error: String,
    /// The response body (the error JSON), or the transport error.
    pub detail: String,
}

impl fmt::Display for WdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (HTTP {}): {}", self.error, self.status, self.detail)
    }
}

impl WdError {
    fn transport(detail: String) -> WdError {
        WdError {
            status: 0,
            error: "transport".into(),
            detail,
        }
    }
}

/// A headless Chromium in a network namespace, controlled through
/// chromedriver. Quits the browser, kills chromedriver and everything it
/// started, and removes the temporary profile on drop.
pub struct Browser {
    ns: String,
    port: u16,
    session: String,
    child: Child,
    profile: PathBuf,
    log: PathBuf,
    io_timeout_ms: AtomicU64,
    /// `MAP name address` rules of the host resolver.
    hosts: Vec<String>,
    opts: BrowserOptions,
}

/// How [`Browser::start_with`] starts the browser.
#[derive(Debug, Clone, Default)]
pub struct BrowserOptions {
    /// A desktop window (1280x900) instead of a phone's screen.
    pub desktop: bool,
    /// A PEM certificate the browser trusts for HTTPS, by its public key
    /// (`--ignore-certificate-errors-spki-list`): the agent's own, self-signed.
    pub trust_cert: Option<PathBuf>,
}

impl fmt::Debug for Browser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Browser")
            .field("ns", &self.ns)
            .field("port", &self.port)
            .field("session", &self.session)
            .field("chromedriver_pid", &self.child.id())
            .field("log", &self.log)
            .finish()
    }
}

/// An element found by [`Browser::find`] or [`Browser::try_find`].
#[derive(Debug, Clone)]
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

impl Browser {
    /// Starts chromedriver inside namespace `ns`, waits until it is ready and
    /// opens a session of a fresh headless Chromium: a phone screen (window
    /// and emulated viewport 360x800 CSS pixels at device pixel ratio 1),
    /// temporary profile, no proxy, no sandbox. Panics with a clear
    /// message if Chromium or chromedriver is missing or does not start.
    pub fn start(ns: &str) -> Browser {
        Self::start_with_hosts(ns, &[])
    }

    /// [`Browser::start`], with names the browser resolves to the addresses
    /// given (every other name stays unknown).
    pub fn start_with_hosts(ns: &str, hosts: &[(&str, std::net::IpAddr)]) -> Browser {
        Self::start_with(ns, hosts, BrowserOptions::default())
    }

    /// [`Browser::start_with_hosts`], with a window and trust as `opts` say.
    pub fn start_with(
        ns: &str,
        hosts: &[(&str, std::net::IpAddr)],
        opts: BrowserOptions,
    ) -> Browser {
        for (bin, pkg) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            if !Path::new(bin).exists() {
                panic!(
                    "{bin} not found (Debian package {pkg}): install the browser with \
                     `apt-get install chromium chromium-driver`"
                );
            }
        }
        let port = in_netns(ns, || {
            TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
        })
        .unwrap_or_else(|e| panic!("pick a free port in namespace {ns}: {e}"));

        let id = unique_id();
        let tmp = std::env::temp_dir();
        let profile = tmp.join(format!("session-tests-chromium-{id}"));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile)
            .unwrap_or_else(|e| panic!("create profile dir {}: {e}", profile.display()));
        let log = tmp.join(format!("session-tests-chromedriver-{id}.log"));
        let log_file =
            File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let log_err = log_file
            .try_clone()
            .unwrap_or_else(|e| panic!("dup {}: {e}", log.display()));

        let child = ns_command(ns, CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--enable-chrome-logs")
            .env("XDG_CONFIG_HOME", profile.join("xdg-config"))
            .env("XDG_CACHE_HOME", profile.join("xdg-cache"))
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                let _ = std::fs::remove_dir_all(&profile);
                panic!("spawn chromedriver in namespace {ns}: {e}")
            });

        let mut browser = Browser {
            ns: ns.to_string(),
            port,
            session: String::new(),
            child,
            profile,
            log,
            io_timeout_ms: AtomicU64::new(0),
            hosts: hosts
                .iter()
                .map(|(name, ip)| match ip {
                    std::net::IpAddr::V6(a) => format!("MAP {name} [{a}]"),
                    a => format!("MAP {name} {a}"),
                })
                .collect(),
            opts,
        };
        browser.set_io_timeout(DEFAULT_PAGE_LOAD.max(SCRIPT_TIMEOUT));
        browser.wait_ready();
        browser.new_session();
        browser
    }

    fn wait_ready(&mut self) {
        let t0 = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "chromedriver exited before becoming ready ({status}){}",
                    self.log_tail()
                );
            }
            let last = match self.request("GET", "/status", None, Duration::from_secs(5)) {
                Ok(v) if v["ready"] == json!(true) => return,
                Ok(v) => v.to_string(),
                Err(e) => e.to_string(),
            };
            if t0.elapsed() > READY_TIMEOUT {
                panic!(
                    "chromedriver on 127.0.0.1:{} in namespace {} not ready after {:?}; \
                     last /status: {last}{}",
                    self.port,
                    self.ns,
                    READY_TIMEOUT,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn new_session(&mut self) {
        let profile = format!("--user-data-dir={}", self.profile.display());
        // No name lookups: a test's client namespaces reach no resolver, and a
        // lookup the browser makes of its own accord would stall page loads
        // until it times out. Names a test maps come first.
        let mut rules = self.hosts.clone();
        rules.push("MAP * ~NOTFOUND, EXCLUDE *.*.*.*".into());
        let resolver = format!("--host-resolver-rules={}", rules.join(", "));
        let (w, h) = if self.opts.desktop {
            (1280, 900)
        } else {
            (360, 800)
        };
        let mut args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            format!("--window-size={w},{h}"),
            profile,
            "--no-proxy-server".into(),
            "--no-first-run".into(),
            "--no-default-browser-check".into(),
            resolver,
        ];
        if let Some(cert) = &self.opts.trust_cert {
            args.push(format!(
                "--ignore-certificate-errors-spki-list={}",
                spki_sha256_base64(cert)
            ));
        }
        let mut chrome = json!({ "binary": CHROMIUM, "args": args });
        if !self.opts.desktop {
            chrome["mobileEmulation"] =
                json!({ "deviceMetrics": { "width": 360, "height": 800, "pixelRatio": 1.0 } });
        }
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "pageLoadStrategy": "normal",
                    "proxy": { "proxyType": "direct" },
                    "timeouts": {
                        "implicit": 0,
                        "pageLoad": DEFAULT_PAGE_LOAD.as_millis() as u64,
                        "script": SCRIPT_TIMEOUT.as_millis() as u64,
                    },
                    "goog:chromeOptions": chrome,
                }
            }
        });
        let v = self
            .request("POST", "/session", Some(&caps), SESSION_TIMEOUT)
            .unwrap_or_else(|e| {
                panic!(
                    "WebDriver new session (starting {CHROMIUM}) failed: {e}{}",
                    self.log_tail()
                )
            });
        self.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("WebDriver new session: no sessionId in {v}"))
            .to_string();
    }

    /// The network namespace the browser runs in.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// The file receiving chromedriver's (and Chromium's) output. It is
    /// removed on drop unless the thread is panicking.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Navigates to `url` and waits for the page load (bounded by the page
    /// load timeout).
    pub fn goto(&self, url: &str) {
        self.cmd(
            "POST",
            "/url",
            Some(&json!({ "url": url })),
            &format!("goto {url}"),
        );
    }

    /// The URL of the current page.
    pub fn current_url(&self) -> String {
        as_string(self.cmd("GET", "/url", None, "current_url"), "current_url")
    }

    /// The title of the current page.
    pub fn title(&self) -> String {
        as_string(self.cmd("GET", "/title", None, "title"), "title")
    }

    /// The visible text of the page (`document.body.innerText`).
    pub fn page_text(&self) -> String {
        self.try_page_text()
            .unwrap_or_else(|e| self.fail("page_text", &e))
    }

    fn try_page_text(&self) -> Result<String, WdError> {
        let v = self.session_call(
            "POST",
            "/execute/sync",
            Some(&json!({
                "script": "return document.body ? document.body.innerText : ''",
                "args": [],
            })),
        )?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// Polls the page text until it contains `needle` and returns it; panics
    /// with the last text seen after `timeout`.
    pub fn wait_for_text(&self, needle: &str, timeout: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let last = match self.try_page_text() {
                Ok(text) if text.contains(needle) => return text,
                Ok(text) => format!("page text: {text:?}"),
                Err(e) => format!("error: {e}"),
            };
            if t0.elapsed() > timeout {
                let url = self
                    .session_call("GET", "/url", None)
                    .map(|v| v.to_string())
                    .unwrap_or_else(|e| e.to_string());
                panic!(
                    "text {needle:?} did not appear within {timeout:?}; url {url}; last {last}{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The first element matching the CSS selector `css`; panics if none.
    pub fn find(&self, css: &str) -> Element<'_> {
        self.try_find(css).unwrap_or_else(|| {
            let url = self
                .session_call("GET", "/url", None)
                .map(|v| v.to_string())
                .unwrap_or_default();
            panic!(
                "no element matches {css:?} on {url}; page text: {:?}",
                self.try_page_text().unwrap_or_default()
            )
        })
    }

    /// The first element matching the CSS selector `css`, if any.
    pub fn try_find(&self, css: &str) -> Option<Element<'_>> {
        let body = json!({ "using": "css selector", "value": css });
        match self.session_call("POST", "/element", Some(&body)) {
            Ok(v) => {
                let id = v[ELEMENT_KEY]
                    .as_str()
                    .unwrap_or_else(|| panic!("find {css:?}: no element reference in {v}"))
                    .to_string();
                Some(Element { browser: self, id })
            }
            Err(e) if e.error == "no such element" => None,
            Err(e) => self.fail(&format!("find {css:?}"), &e),
        }
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the
    /// page and returns its result.
    pub fn execute(&self, script: &str, args: &[Value]) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": args })),
            "execute",
        )
    }

    /// Saves a PNG screenshot of the viewport to `path` (creating its parent
    /// directory).
    pub fn screenshot(&self, path: &Path) {
        let v = self.cmd("GET", "/screenshot", None, "screenshot");
        let b64 = v
            .as_str()
            .unwrap_or_else(|| panic!("screenshot: expected a base64 string, got {v}"));
        let png = decode_base64(b64).unwrap_or_else(|e| panic!("screenshot: {e}"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Sets how long a navigation may take before it fails (the socket
    /// timeout follows it).
    pub fn set_page_load_timeout(&self, timeout: Duration) {
        self.cmd(
            "POST",
            "/timeouts",
            Some(&json!({ "pageLoad": timeout.as_millis() as u64 })),
            "set_page_load_timeout",
        );
        self.set_io_timeout(timeout.max(SCRIPT_TIMEOUT));
    }

    fn set_io_timeout(&self, browser_side: Duration) {
        let t = browser_side + IO_MARGIN;
        self.io_timeout_ms
            .store(t.as_millis() as u64, Ordering::Relaxed);
    }

    fn io_timeout(&self) -> Duration {
        Duration::from_millis(self.io_timeout_ms.load(Ordering::Relaxed))
    }

    /// A command on the session, panicking on failure.
    fn cmd(&self, method: &str, path: &str, body: Option<&Value>, what: &str) -> Value {
        self.session_call(method, path, body)
            .unwrap_or_else(|e| self.fail(what, &e))
    }

    fn session_call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, WdError> {
        let full = format!("/session/{}{path}", self.session);
        self.request(method, &full, body, self.io_timeout())
    }

    fn fail(&self, what: &str, e: &WdError) -> ! {
        panic!("WebDriver {what} failed: {e}{}", self.log_tail())
    }

    /// One WebDriver request; returns the `value` of the answer.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Value, WdError> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, resp) = in_netns(&self.ns, || http(addr, method, path, &body, timeout))
            .map_err(|e| WdError::transport(format!("{method} {path}: {e}")))?;
        let text = String::from_utf8_lossy(&resp);
        let mut v: Value = serde_json::from_str(&text).map_err(|e| WdError {
            status,
            error: "invalid response".into(),
            detail: format!("{method} {path}: {e}: {text}"),
        })?;
        let value = v["value"].take();
        if (200..300).contains(&status) && value.get("error").is_none() {
            return Ok(value);
        }
        Err(WdError {
            status,
            error: value["error"]
                .as_str()
                .unwrap_or("unknown error")
                .to_string(),
            detail: format!("{method} {path}: {text}"),
        })
    }

    fn log_tail(&self) -> String {
        let data = std::fs::read(&self.log).unwrap_or_default();
        let start = data.len().saturating_sub(LOG_TAIL_BYTES);
        format!(
            "\n--- tail of {} ---\n{}\n--- end ---",
            self.log.display(),
            String::from_utf8_lossy(&data[start..])
        )
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = self.request("DELETE", &path, None, QUIT_TIMEOUT);
        }
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: plain kill(2) of the process group led by our own child
        // (started with process_group(0)); it has not been reaped yet, so
        // the id cannot have been reused.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        kill_processes_using(&self.profile);
        for _ in 0..20 {
            match std::fs::remove_dir_all(&self.profile) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => break,
            }
        }
        if std::thread::panicking() {
            eprintln!("chromedriver log kept at {}", self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// Kills every process whose command line mentions `profile` (a Chromium
/// that escaped chromedriver's process group).
fn kill_processes_using(profile: &Path) {
    let needle = profile.to_string_lossy().into_owned();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in rd.flatten() {
        let Some(pid) = e
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            // SAFETY: plain kill(2); at worst the signal reaches nothing.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

impl Element<'_> {
    fn call(&self, method: &str, what: &str, body: Option<&Value>) -> Value {
        let path = format!("/element/{}/{what}", self.id);
        self.browser
            .cmd(method, &path, body, &format!("element {what}"))
    }

    /// Types `text` into the element (keyboard input, after focusing it).
    pub fn type_text(&self, text: &str) {
        self.call("POST", "value", Some(&json!({ "text": text })));
    }

    /// Clicks the element (waiting for a navigation it starts).
    pub fn click(&self) {
        self.call("POST", "click", Some(&json!({})));
    }

    /// The element's visible text.
    pub fn text(&self) -> String {
        as_string(self.call("GET", "text", None), "element text")
    }
}

fn as_string(v: Value, what: &str) -> String {
    match v {
        Value::String(s) => s,
        other => panic!("WebDriver {what}: expected a string, got {other}"),
    }
}

/// Sends one HTTP/1.1 request (`Connection: close`) and returns the status
/// and body of the answer (Content-Length, chunked or until close).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;

    let bad = |m: String| std::io::Error::new(ErrorKind::InvalidData, m);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = read_some(&mut s, &mut chunk, timeout)?;
        if n == 0 {
            return Err(bad(format!(
                "connection closed inside the response head: {:?}",
                String::from_utf8_lossy(&buf)
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut rest = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "content-length" {
            length = Some(
                v.parse::<usize>()
                    .map_err(|_| bad(format!("bad Content-Length {v:?}")))?,
            );
        } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        }
    }
    match length {
        Some(len) if !chunked => {
            while rest.len() < len {
                let n = read_some(&mut s, &mut chunk, timeout)?;
                if n == 0 {
                    return Err(bad(format!(
                        "connection closed after {} of {len} body bytes",
                        rest.len()
                    )));
                }
                rest.extend_from_slice(&chunk[..n]);
            }
            rest.truncate(len);
        }
        _ => loop {
            let n = read_some(&mut s, &mut chunk, timeout)?;
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&chunk[..n]);
        },
    }
    if chunked {
        rest = dechunk(&rest).ok_or_else(|| bad("malformed chunked body".into()))?;
    }
    Ok((status, rest))
}

fn read_some(s: &mut TcpStream, buf: &mut [u8], timeout: Duration) -> std::io::Result<usize> {
    loop {
        match s.read(buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(std::io::Error::new(
                    ErrorKind::TimedOut,
                    format!("no answer within {timeout:?}"),
                ))
            }
            r => return r,
        }
    }
}

/// Decodes a complete `Transfer-Encoding: chunked` body.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n")?;
        let size_field = std::str::from_utf8(&data[..eol]).ok()?;
        let size_hex = size_field.split(';').next()?.trim();
        let size = usize::from_str_radix(size_hex, 16).ok()?;
        data = &data[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// Decodes standard base64 (`A-Z a-z 0-9 + /`, `=` padding optional,
/// ASCII whitespace ignored).
/// base64 of the SHA-256 of a PEM certificate's SubjectPublicKeyInfo, as
/// Chromium's `--ignore-certificate-errors-spki-list` takes it.
pub fn spki_sha256_base64(pem: &Path) -> String {
    let text = std::fs::read_to_string(pem).unwrap_or_else(|e| panic!("{}: {e}", pem.display()));
    let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = decode_base64(&b64).unwrap_or_else(|e| panic!("{}: {e}", pem.display()));
    // One DER element at `at`: (tag, start of content, end).
    let tlv = |at: usize| -> (u8, usize, usize) {
        let tag = der[at];
        let first = der[at + 1] as usize;
        let (len, head) = if first < 0x80 {
            (first, 2)
        } else {
            let n = first & 0x7f;
            let len = der[at + 2..at + 2 + n]
                .iter()
                .fold(0usize, |a, b| (a << 8) | *b as usize);
            (len, 2 + n)
        };
        (tag, at + head, at + head + len)
    };
    // Certificate { tbsCertificate { [0] version?, serial, signature, issuer,
    // validity, subject, subjectPublicKeyInfo, ... }, ... }
    let (_, cert, _) = tlv(0);
    let (_, tbs, _) = tlv(cert);
    let mut at = tbs;
    if der[at] == 0xa0 {
        at = tlv(at).2;
    }
    for _ in 0..5 {
        at = tlv(at).2;
    }
    let (tag, _, end) = tlv(at);
    assert_eq!(tag, 0x30, "no SubjectPublicKeyInfo in {}", pem.display());
    let digest = ring::digest::digest(&ring::digest::SHA256, &der[at..end]);
    encode_base64(digest.as_ref())
}

fn encode_base64(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn decode_base64(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits, mut symbols, mut pad) = (0u32, 0u32, 0usize, 0usize);
    for (i, c) in s.bytes().enumerate() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                pad += 1;
                continue;
            }
            b' ' | b'\t' | b'\r' | b'\n' => continue,
            _ => return Err(format!("invalid base64 byte {c:#04x} at offset {i}")),
        };
        if pad > 0 {
            return Err(format!("base64 data after padding at offset {i}"));
        }
        symbols += 1;
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if symbols % 4 == 1 || pad > 2 || (pad > 0 && (symbols + pad) % 4 != 0) {
        return Err(format!(
            "truncated base64: {symbols} symbols and {pad} padding characters"
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{dechunk, decode_base64};

    #[test]
    fn base64_decodes_the_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("Zg==", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg==", "foob"),
            ("Zm9vYmE=", "fooba"),
            ("Zm9vYmFy", "foobar"),
            ("Zm9vYmE", "fooba"),
            ("Zm9v\nYmFy\r\n", "foobar"),
        ];
        for (enc, dec) in cases {
            assert_eq!(decode_base64(enc).unwrap(), dec.as_bytes(), "{enc:?}");
        }
    }

    #[test]
    fn base64_decodes_every_byte_value() {
        let all: Vec<u8> = (0..=255).collect();
        let enc =
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7\
                   PD0+P0BBQkNERUZHSElKS0xNTk9QUVJTVFVWV1hZWltcXV5fYGFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3\
                   eHl6e3x9fn+AgYKDhIWGh4iJiouMjY6PkJGSk5SVlpeYmZqbnJ2en6ChoqOkpaanqKmqq6ytrq+wsbKz\
                   tLW2t7i5uru8vb6/wMHCw8TFxsfIycrLzM3Oz9DR0tPU1dbX2Nna29zd3t/g4eLj5OXm5+jp6uvs7e7v\
                   8PHy8/T19vf4+fr7/P3+/w==";
        assert_eq!(decode_base64(enc).unwrap(), all);
        assert_eq!(
            decode_base64("iVBORw0KGgo=").unwrap(),
            b"\x89PNG\r\n\x1a\n".to_vec()
        );
    }

    #[test]
    fn base64_rejects_malformed_input() {
        assert!(decode_base64("Zm9v!").is_err());
        assert!(decode_base64("Z").is_err());
        assert!(decode_base64("Zg=").is_err());
        assert!(decode_base64("Zg===").is_err());
        assert!(decode_base64("Zg==Zg==").is_err());
        assert!(decode_base64("Zm9v-_").is_err());
    }

    #[test]
    fn chunked_bodies_are_reassembled() {
        assert_eq!(
            dechunk(b"4\r\nWiki\r\n6;x=y\r\npedia \r\n0\r\n\r\n").unwrap(),
            b"Wikipedia "
        );
        assert!(dechunk(b"4\r\nWi").is_none());
    }
}
