//! The headless-browser driver proven on its own: Chromium inside a network
//! namespace fills a form served from that namespace and follows a redirect.

use session_tests::{in_netns, require_root, unique_id, Browser, Netns};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const FORM: &str = "<!doctype html><html><head><title>Voucher</title>\
    <meta name=viewport content=\"width=device-width\"></head><body>\
    <h1>Enter your voucher</h1>\
    <form method=get action=/redeem>\
    <input name=code autofocus>\
    <button type=submit id=go>Redeem</button>\
    </form></body></html>";

/// A tiny HTTP server on a namespace's loopback: `/` is a form, `/redeem`
/// redirects to `/done`, `/done` echoes the code. Records request targets.
struct FormServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FormServer {
    fn start(ns: &str) -> FormServer {
        let listener = in_netns(ns, || TcpListener::bind("127.0.0.1:0")).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local_addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, halt) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let log = log.clone();
                        std::thread::spawn(move || serve(conn, &log));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        });
        FormServer {
            addr,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FormServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Answers one request (`Connection: close`); idle or broken connections
/// (e.g. a browser's speculative preconnect) are dropped.
fn serve(mut conn: TcpStream, log: &Mutex<Vec<String>>) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    log.lock().unwrap().push(target.clone());
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let code = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("code="))
        .unwrap_or("");
    let (status, extra, body) = match path {
        "/" => ("200 OK", String::new(), FORM.to_string()),
        "/redeem" => (
            "302 Found",
            format!("Location: /done?code={code}\r\n"),
            String::new(),
        ),
        "/done" => (
            "200 OK",
            String::new(),
            format!(
                "<!doctype html><html><head><title>Done</title>\
                 <meta name=viewport content=\"width=device-width\"></head><body>\
                 <p id=result>Voucher {} accepted</p></body></html>",
                html_escape(code)
            ),
        ),
        _ => ("404 Not Found", String::new(), "not found".to_string()),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\n{extra}Content-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(resp.as_bytes());
}

fn target_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = manifest.parent().unwrap_or(manifest);
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    }
}

#[test]
fn the_browser_fills_a_form_and_follows_a_redirect_inside_a_namespace() {
    require_root();
    let t0 = Instant::now();
    let ns = Netns::new(&format!("{}-web", unique_id()));
    let server = FormServer::start(ns.name());
    let base = format!("http://{}", server.addr);

    let browser = Browser::start(ns.name());
    let started = t0.elapsed();
    browser.set_page_load_timeout(Duration::from_secs(15));

    browser.goto(&format!("{base}/"));
    assert_eq!(browser.title(), "Voucher");
    assert!(
        browser.page_text().contains("Enter your voucher"),
        "form page text: {:?}",
        browser.page_text()
    );
    assert!(browser.try_find("#no-such-thing").is_none());
    let width = browser.execute("return window.innerWidth", &[]);
    assert_eq!(width, serde_json::json!(360), "phone-width viewport");

    browser.find("input[name=code]").type_text("ABC-123");
    let typed = browser.execute(
        "return arguments[0] + document.querySelector('input').value",
        &[serde_json::json!("typed:")],
    );
    assert_eq!(typed, serde_json::json!("typed:ABC-123"));
    let button = browser.find("#go");
    assert_eq!(button.text(), "Redeem");
    button.click();

    let text = browser.wait_for_text("ABC-123", Duration::from_secs(15));
    let url = browser.current_url();
    assert!(
        url.ends_with("/done?code=ABC-123"),
        "final URL {url:?} (page text {text:?})"
    );
    assert!(
        text.contains("Voucher ABC-123 accepted"),
        "page text {text:?}"
    );
    assert_eq!(browser.title(), "Done");
    assert_eq!(browser.find("#result").text(), "Voucher ABC-123 accepted");
    let seen = server.requests();
    for want in ["/", "/redeem?code=ABC-123", "/done?code=ABC-123"] {
        assert!(
            seen.iter().any(|r| r == want),
            "server never saw {want:?}; requests: {seen:?}"
        );
    }

    let shot = target_dir().join("browser-selftest.png");
    let _ = std::fs::remove_file(&shot);
    browser.screenshot(&shot);
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("read {}: {e}", shot.display()));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG (first bytes {:?})",
        shot.display(),
        &png[..png.len().min(8)]
    );
    let size = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    assert!(
        png.len() > 24 && &png[12..16] == b"IHDR",
        "no IHDR in {}",
        shot.display()
    );
    assert_eq!(
        (size(16), size(20)),
        (360, 800),
        "screenshot size (phone screen)"
    );
    eprintln!(
        "browser started in {started:?}, self-test body done in {:?}; screenshot {} ({} bytes)",
        t0.elapsed(),
        shot.display(),
        png.len()
    );
}
