//! The service manager's notification protocol (`sd_notify(3)`), spoken over the
//! datagram socket systemd names in `$NOTIFY_SOCKET`: `READY=1` once every LAN is
//! attached and every listener is bound, `WATCHDOG=1` from the poll loop, `RELOADING=1` and
//! `STOPPING=1` around a reload and a stop, `STATUS=` for `systemctl status`.
//!
//! Without `$NOTIFY_SOCKET` (not started by systemd) every call does nothing.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where notifications go, read once from the environment.
struct Notifier {
    socket: UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
}

fn notifier() -> Option<&'static Notifier> {
    static N: OnceLock<Option<Notifier>> = OnceLock::new();
    N.get_or_init(|| {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        match connect(&path) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(socket = ?path, "cannot reach the service manager's notification socket: {e}");
                None
            }
        }
    })
    .as_ref()
}

fn connect(path: &std::ffi::OsStr) -> io::Result<Notifier> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_bytes();
    let addr = match bytes.first() {
        // An abstract socket: `@name`.
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(&bytes[1..])?
        }
        Some(b'/') => std::os::unix::net::SocketAddr::from_pathname(path)?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET is neither a path nor an abstract name",
            ))
        }
    };
    Ok(Notifier {
        socket: UnixDatagram::unbound()?,
        addr,
    })
}

/// Sends `state` (newline-separated `KEY=VALUE` lines). Errors are logged once per
/// kind and otherwise ignored: notifications are advice to the service manager.
pub fn notify(state: &str) {
    let Some(n) = notifier() else { return };
    if let Err(e) = n.socket.send_to_addr(state.as_bytes(), &n.addr) {
        tracing::debug!("service manager notification {state:?} failed: {e}");
    }
}

/// `READY=1` with a status line.
pub fn ready(status: &str) {
    notify(&format!("READY=1\nSTATUS={status}"));
}

/// `STOPPING=1`.
pub fn stopping() {
    notify("STOPPING=1\nSTATUS=stopping: charging the last usage");
}

/// `RELOADING=1` with the monotonic time systemd's `Type=notify-reload` expects.
pub fn reloading() {
    notify(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the configuration",
        monotonic_usec()
    ));
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer to a local.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// The watchdog interval systemd asks for (`WatchdogSec=`), when it is meant
/// for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings the watchdog at most every half interval; called from the poll loop, so
/// a poll that stops making progress stops the pings and systemd restarts the agent.
pub struct Watchdog {
    every: Option<Duration>,
    start: Instant,
    /// Milliseconds since `start` of the last ping.
    last_ms: AtomicU64,
}

impl Watchdog {
    pub fn from_env() -> Self {
        Watchdog {
            every: watchdog_interval().map(|d| d / 2),
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// Whether systemd watches this process.
    pub fn enabled(&self) -> bool {
        self.every.is_some() && notifier().is_some()
    }

    /// Sends `WATCHDOG=1` if half the interval passed since the last ping.
    pub fn ping(&self) {
        let Some(every) = self.every else { return };
        let now = self.start.elapsed().as_millis() as u64;
        let last = self.last_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= every.as_millis() as u64 || last == 0 {
            self.last_ms.store(now.max(1), Ordering::Relaxed);
            notify("WATCHDOG=1");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_a_socket_named_by_path_or_abstract_name() {
        let dir = std::env::temp_dir().join(format!("sd-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = connect(path.as_os_str()).unwrap();
        n.socket.send_to_addr(b"READY=1", &n.addr).unwrap();
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        std::fs::remove_dir_all(&dir).ok();

        use std::os::linux::net::SocketAddrExt;
        let name = format!("sd-notify-test-{}", std::process::id());
        let abs = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&abs).unwrap();
        let n = connect(std::ffi::OsStr::new(&format!("@{name}"))).unwrap();
        n.socket.send_to_addr(b"WATCHDOG=1", &n.addr).unwrap();
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        assert!(connect(std::ffi::OsStr::new("relative")).is_err());
    }
}
