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

use sd_notify::NotifyState;

/// An abstract `$NOTIFY_SOCKET` (`@name`), read once. The sd-notify crate
/// reaches a socket by path only; an abstract one is reached here.
fn abstract_socket() -> Option<&'static (UnixDatagram, std::os::unix::net::SocketAddr)> {
    static N: OnceLock<Option<(UnixDatagram, std::os::unix::net::SocketAddr)>> = OnceLock::new();
    N.get_or_init(|| {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        match abstract_addr(&path)? {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::warn!(socket = ?path, "cannot reach the service manager's notification socket: {e}");
                None
            }
        }
    })
    .as_ref()
}

/// The socket and address of `@name`; `None` for a path.
fn abstract_addr(
    path: &std::ffi::OsStr,
) -> Option<io::Result<(UnixDatagram, std::os::unix::net::SocketAddr)>> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    let name = path.as_bytes().strip_prefix(b"@")?;
    Some(
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| Ok((UnixDatagram::unbound()?, a))),
    )
}

/// Whether systemd (or whoever started the agent) listens for notifications.
fn listened() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Sends `states`. Errors are logged and otherwise ignored: notifications are
/// advice to the service manager.
pub fn notify(states: &[NotifyState]) {
    let sent = match abstract_socket() {
        Some((socket, addr)) => {
            let msg: String = states.iter().map(|s| format!("{s}\n")).collect();
            socket.send_to_addr(msg.as_bytes(), addr).map(|_| ())
        }
        None => sd_notify::notify(states),
    };
    if let Err(e) = sent {
        tracing::debug!("service manager notification {states:?} failed: {e}");
    }
}

/// `READY=1` with a status line.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STOPPING=1`.
pub fn stopping() {
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: charging the last usage"),
    ]);
}

/// `RELOADING=1` with the monotonic time systemd's `Type=notify-reload` expects.
pub fn reloading() {
    let now = NotifyState::monotonic_usec_now().unwrap_or(NotifyState::MonotonicUsec(0));
    notify(&[
        NotifyState::Reloading,
        now,
        NotifyState::Status("reloading the configuration"),
    ]);
}

/// The watchdog interval systemd asks for (`WatchdogSec=`), when it is meant
/// for this process.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
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
        self.every.is_some() && listened()
    }

    /// Sends `WATCHDOG=1` if half the interval passed since the last ping.
    pub fn ping(&self) {
        let Some(every) = self.every else { return };
        let now = self.start.elapsed().as_millis() as u64;
        let last = self.last_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= every.as_millis() as u64 || last == 0 {
            self.last_ms.store(now.max(1), Ordering::Relaxed);
            notify(&[NotifyState::Watchdog]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_abstract_socket_is_reached_by_name_and_a_path_is_left_to_sd_notify() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("sd-notify-test-{}", std::process::id());
        let abs = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&abs).unwrap();
        let (socket, addr) = abstract_addr(std::ffi::OsStr::new(&format!("@{name}")))
            .unwrap()
            .unwrap();
        socket.send_to_addr(b"WATCHDOG=1\n", &addr).unwrap();
        let mut buf = [0u8; 64];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1\n");
        assert!(abstract_addr(std::ffi::OsStr::new("/run/systemd/notify")).is_none());
        assert_eq!(format!("{}", NotifyState::Status("x")), "STATUS=x");
    }
}
