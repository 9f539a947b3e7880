//! Network namespaces: creation, removal, running code and commands inside.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

/// Panics with a clear message unless running as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        panic!(
            "this test needs root (network namespaces, veths, nftables, bpffs); \
             euid is {euid}: run it as root, e.g. via `cargo xtask test`"
        );
    }
}

/// A short identifier unique within this machine for the lifetime of this
/// process: `sa` + pid + per-process counter (letters and digits only).
pub fn unique_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("sa{:x}x{n}", std::process::id())
}

/// The pid encoded in a name made from [`unique_id`] (`sa<hexpid>x<n>...`).
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("sa")?;
    let (hex, tail) = rest.split_once('x')?;
    let digits = tail.chars().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || hex.is_empty() {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

/// Removes namespaces and pin roots left behind by test processes that no
/// longer exist (e.g. killed by a timeout before their cleanup ran). Runs
/// once per process.
pub fn remove_stale() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let dead = |name: &str| {
            owner_pid(name).is_some_and(|pid| {
                pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            })
        };
        if let Ok(rd) = std::fs::read_dir("/run/netns") {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if dead(&name) {
                    let _ = Command::new("ip").args(["netns", "del", &name]).output();
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir("/sys/fs/bpf") {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(id) = name.strip_prefix("sa-test-") {
                    if dead(id) {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
    });
}

/// Runs `f` on a fresh thread that has joined the network namespace `ns`
/// (only the network namespace), and returns its result. Sockets created in
/// `f` stay in that namespace and can be used from any thread afterwards.
/// A panic in `f` is propagated.
pub fn in_netns<F, R>(ns: &str, f: F) -> R
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        let handle = s.spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: a valid namespace fd; affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                panic!("setns({path}): {}", std::io::Error::last_os_error());
            }
            f()
        });
        match handle.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

/// A `Command` that runs `program` inside the network namespace `ns` via
/// `nsenter --net` (mount namespace and /sys/fs/bpf stay visible, unlike
/// `ip netns exec`).
pub fn ns_command(ns: &str, program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(program);
    c
}

/// Runs a command, panicking with its output if it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "command failed ({}): {cmd:?}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// `ip ARGS...` (root namespace), panicking on failure.
pub fn ip(args: &[&str]) -> Output {
    run_ok(Command::new("ip").args(args))
}

/// `ip -n NS ARGS...`, panicking on failure.
pub fn ip_n(ns: &str, args: &[&str]) -> Output {
    run_ok(Command::new("ip").arg("-n").arg(ns).args(args))
}

/// Writes a sysctl (`net.ipv4.ip_forward` style) inside namespace `ns`.
pub fn sysctl(ns: &str, key: &str, value: &str) {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    in_netns(ns, || {
        std::fs::write(&path, value).unwrap_or_else(|e| panic!("sysctl {key}={value}: {e}"))
    });
}

/// Makes sure a bpffs is mounted at /sys/fs/bpf.
pub fn ensure_bpffs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let mounted = mounts.lines().any(|l| {
            let mut f = l.split_whitespace();
            let _src = f.next();
            f.next() == Some("/sys/fs/bpf") && f.next() == Some("bpf")
        });
        if !mounted {
            let _ = std::fs::create_dir_all("/sys/fs/bpf");
            run_ok(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]));
        }
    });
}

/// An owned network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name` (replacing a stale one of the same name) with
    /// loopback up.
    pub fn new(name: &str) -> Netns {
        if std::path::Path::new(&format!("/run/netns/{name}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
        ip(&["netns", "add", name]);
        let ns = Netns {
            name: name.to_string(),
        };
        ip_n(name, &["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn owner_pid_parses_unique_ids() {
        assert_eq!(owner_pid("sa1f2x0-gw"), Some(0x1f2));
        assert_eq!(owner_pid("sa-test-x"), None);
        assert_eq!(owner_pid("sa-demo-gw"), None);
        assert_eq!(owner_pid("saabcx-c0"), None);
        assert_eq!(owner_pid(&super::unique_id()), Some(std::process::id()));
    }
}
