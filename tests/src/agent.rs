//! Running the session-agent binary inside a hotspot's gateway namespace and
//! talking to it through its CLI.

use crate::netns::ns_command;
use crate::topo::Hotspot;
use serde::Deserialize;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of the agent binary: `$SESSION_AGENT_BIN`, else
/// `<workspace>/target/debug/session-agent`. Panics if it does not exist.
pub fn agent_bin() -> PathBuf {
    let p = agent_bin_path();
    if !p.is_file() {
        panic!(
            "session-agent binary not found at {}: build it with \
             `cargo build -p session-agent` or run `cargo xtask test` \
             (or point SESSION_AGENT_BIN at it)",
            p.display()
        );
    }
    p
}

/// [`agent_bin`] without the panic.
pub fn agent_bin_opt() -> Option<PathBuf> {
    Some(agent_bin_path()).filter(|p| p.is_file())
}

fn agent_bin_path() -> PathBuf {
    match std::env::var_os("SESSION_AGENT_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target/debug/session-agent"),
    }
}

/// One entry of `session-agent clients --json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ClientStats {
    pub mac: String,
    pub up_bytes: u64,
    pub down_bytes: u64,
    pub up_packets: u64,
    pub down_packets: u64,
    pub allowed: bool,
    pub blocked_packets: u64,
    pub garden_packets: u64,
    pub garden_bytes: u64,
    #[serde(default)]
    pub spoof_packets: u64,
    #[serde(default)]
    pub unknown_packets: u64,
}

/// `SESSION_TESTS_TC_ATTACH`: the `--tc-attach` mode of every agent a test starts.
pub fn tc_attach_override() -> Option<String> {
    std::env::var("SESSION_TESTS_TC_ATTACH")
        .ok()
        .filter(|m| !m.is_empty())
}

/// The capabilities the packaged service keeps (its unit's `CapabilityBoundingSet`).
pub const SERVICE_CAPS: &[&str] = &["bpf", "perfmon", "net_admin", "net_bind_service", "net_raw"];

/// `SESSION_TESTS_CAPS=service`: every agent a test starts runs with only
/// [`SERVICE_CAPS`] (through `setpriv`), as the systemd unit runs it.
pub fn service_caps_only() -> bool {
    std::env::var("SESSION_TESTS_CAPS").is_ok_and(|v| v == "service")
}

/// How to start the agent; reusable to restart it with the same settings.
#[derive(Debug, Clone)]
pub struct AgentBuilder {
    pub ns: String,
    pub lans: Vec<String>,
    pub pin_root: PathBuf,
    /// Session database (`--db`); the store is `hybrid` unless `extra` says otherwise.
    pub db: PathBuf,
    /// Control API socket (`--api-socket`).
    pub api_socket: PathBuf,
    pub extra: Vec<String>,
    /// Environment of the agent process.
    pub env: Vec<(String, String)>,
    /// Run with only [`SERVICE_CAPS`] (also set for every agent by `SESSION_TESTS_CAPS=service`).
    pub service_caps: bool,
    /// Of [`SERVICE_CAPS`], those the agent runs without (with `service_caps`).
    pub without_caps: Vec<String>,
}

/// An agent process that ended: how, and what it wrote.
#[derive(Debug)]
pub struct Exited {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl AgentBuilder {
    /// Agent on the hotspot's LAN interface with the hotspot's pin root.
    pub fn new(hs: &Hotspot) -> AgentBuilder {
        AgentBuilder {
            ns: hs.gw_ns.clone(),
            lans: vec![hs.lan_if.clone()],
            pin_root: hs.pin_root.clone(),
            db: hs.state_dir.join("sessions.redb"),
            api_socket: hs.state_dir.join("api.sock"),
            extra: Vec::new(),
            env: Vec::new(),
            service_caps: service_caps_only(),
            without_caps: Vec::new(),
        }
    }

    /// Sets a variable in the agent's environment.
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_string(), value.into()));
        self
    }

    /// Runs the agent with only the capabilities of the packaged service.
    pub fn service_caps(mut self) -> Self {
        self.service_caps = true;
        self
    }

    /// Runs the agent with the capabilities of the packaged service but `cap`
    /// (e.g. "net_bind_service").
    pub fn service_caps_without(mut self, cap: &str) -> Self {
        self.service_caps = true;
        self.without_caps.push(cap.to_string());
        self
    }

    /// Adds raw arguments to `session-agent run`.
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.extra.push(a.into());
        self
    }

    pub fn walled_garden(self, spec: &str) -> Self {
        self.arg("--walled-garden").arg(spec)
    }

    pub fn portal_port(self, port: u16) -> Self {
        self.arg("--portal-port").arg(port.to_string())
    }

    /// The operator page on `listen` over HTTPS, its accounts in `accounts`,
    /// its certificate and key `admin-cert.pem` and `admin-key.pem` in `dir`
    /// (made at the first start).
    pub fn operator_page(self, listen: std::net::SocketAddr, accounts: &Path, dir: &Path) -> Self {
        self.arg("--admin-listen")
            .arg(listen.to_string())
            .arg("--admin-accounts")
            .arg(accounts.display().to_string())
            .arg("--admin-cert")
            .arg(dir.join("admin-cert.pem").display().to_string())
            .arg("--admin-key")
            .arg(dir.join("admin-key.pem").display().to_string())
    }

    /// The `session-agent run` command line.
    fn command(&self) -> Command {
        let bin = agent_bin();
        let mut cmd = if self.service_caps {
            // Bounding set and inheritable set cut to the unit's capabilities:
            // uid 0 gets no others when it executes the agent.
            let mut c = ns_command(&self.ns, "setpriv");
            let keep: Vec<String> = SERVICE_CAPS
                .iter()
                .filter(|c| !self.without_caps.iter().any(|w| w == *c))
                .map(|c| format!("+{c}"))
                .collect();
            c.arg(format!("--bounding-set=-all,{}", keep.join(",")))
                .arg("--inh-caps=-all")
                .arg("--")
                .arg(&bin);
            c
        } else {
            ns_command(&self.ns, bin.to_str().unwrap())
        };
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.arg("run");
        for l in &self.lans {
            cmd.arg("--lan").arg(l);
        }
        cmd.arg("--pin-root").arg(&self.pin_root);
        cmd.arg("--db").arg(&self.db);
        cmd.arg("--api-socket").arg(&self.api_socket);
        // Runs a whole test file with one TC attach mode (e.g. netlink on a TCX kernel).
        if let Some(m) = tc_attach_override() {
            if !self.extra.iter().any(|a| a == "--tc-attach") {
                cmd.arg("--tc-attach").arg(m);
            }
        }
        cmd.args(&self.extra);
        cmd
    }

    /// Runs `session-agent run` to its end (killed, and a panic, after
    /// `timeout`): for an agent that must not start.
    pub fn run_to_exit(&self, timeout: Duration) -> Exited {
        let mut cmd = self.command();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let cmdline = format!("{cmd:?}");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmdline}: {e}"));
        let deadline = Instant::now() + timeout;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "agent still running after {timeout:?}: {cmdline}\nstdout:\n{}\nstderr:\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        Exited {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts `session-agent run` and waits for `READY` on stdout.
    pub fn start(&self) -> Agent {
        let mut cmd = self.command();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let cmdline = format!("{cmd:?}");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmdline}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let l2 = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                l2.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let l3 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.trim() != "READY" {
                    l3.lock().unwrap().push_str(&format!("[stdout] {line}\n"));
                }
                let _ = tx.send(line);
            }
        });
        let mut agent = Agent {
            child: Some(child),
            log,
            builder: self.clone(),
            cmdline,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(l) if l.trim() == "READY" => break,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected)
                | Err(mpsc::RecvTimeoutError::Timeout)
                    if !agent.is_running() =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                    panic!(
                        "agent exited before READY: {}\nstderr:\n{}",
                        agent.cmdline,
                        agent.log()
                    );
                }
                Err(_) => {}
            }
            if Instant::now() > deadline {
                panic!(
                    "agent did not print READY within 30 s: {}\nstderr:\n{}",
                    agent.cmdline,
                    agent.log()
                );
            }
        }
        agent
    }
}

/// A running (or killed) agent process. Dropping it stops the process
/// (SIGTERM, then SIGKILL); pins are removed by the [`Hotspot`]'s drop.
pub struct Agent {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    builder: AgentBuilder,
    cmdline: String,
}

impl Agent {
    /// Everything the agent wrote to stderr (and unexpected stdout lines).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Whether [`Agent::log`] comes to hold `what` within `timeout` (its
    /// lines reach the test through a pipe read by a thread of its own, a
    /// little after the agent wrote them).
    pub fn log_shows(&self, what: impl Fn(&str) -> bool, timeout: std::time::Duration) -> bool {
        let end = std::time::Instant::now() + timeout;
        loop {
            if what(&self.log()) {
                return true;
            }
            if std::time::Instant::now() >= end {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The last `n` bytes of [`Agent::log`], for failure messages.
    pub fn log_tail(&self) -> String {
        let l = self.log();
        let n = 6000;
        if l.len() > n {
            let mut start = l.len() - n;
            while !l.is_char_boundary(start) {
                start += 1;
            }
            format!("...{}", &l[start..])
        } else {
            l
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The process's resident memory (VmRSS), KiB; `None` once it has ended.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// The CPU time the process has used (user and system), in ms; `None`
    /// once it has ended.
    pub fn cpu_ms(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()?)).ok()?;
        // The fields after the command's closing parenthesis: utime is the
        // 12th, stime the 13th, in clock ticks.
        let f: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
        let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf reads a constant of the system.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Some(ticks as f64 * 1000.0 / hz)
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child process by pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    /// Waits up to `timeout` for the agent to end on its own; its exit
    /// status, or `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.child.as_mut()?;
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                // The threads reading its pipes finish with them.
                std::thread::sleep(Duration::from_millis(100));
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM and wait (up to 10 s) for a clean exit; returns the exit
    /// status. Panics if it does not exit in time.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("agent already stopped");
        // SAFETY: signalling our own child process by pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "agent did not exit within 10 s of SIGTERM\nstderr:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, and panics unless the agent exits cleanly (its programs stay
    /// attached from the pins).
    pub fn stop(&mut self) {
        let st = self.terminate();
        assert!(
            st.success(),
            "SIGTERM exit: {st}\nagent log:\n{}",
            self.log_tail()
        );
    }

    /// `session-agent detach --lan IFACE` with this agent's pin root; panics
    /// with the output if it fails.
    pub fn detach(&self, iface: &str) {
        let pin = self.builder.pin_root.display().to_string();
        self.cli_ok(&["detach", "--lan", iface, "--pin-root", &pin]);
    }

    /// Starts a new agent process with the same settings (same pin root).
    pub fn restart(&self) -> Agent {
        self.builder.start()
    }

    pub fn builder(&self) -> &AgentBuilder {
        &self.builder
    }

    /// A client of the agent's control API (its unix socket).
    pub fn api(&self) -> crate::api::ApiClient {
        crate::api::ApiClient::new(&self.builder.api_socket)
    }

    /// The Prometheus text of `GET /metrics`.
    pub fn metrics(&self) -> String {
        self.api()
            .get("/metrics")
            .body
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Runs `session-agent ARGS` in the gateway namespace.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(&self.builder.ns, args)
    }

    fn cli_ok(&self, args: &[&str]) -> Output {
        let out = self.cli(args);
        if !out.status.success() {
            panic!(
                "session-agent {args:?} failed ({}):\nstdout: {}\nstderr: {}\nagent log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            );
        }
        out
    }

    fn pin_args(&self) -> Vec<String> {
        // One client table serves every LAN: any LAN's pins reach it.
        let mut v = vec!["--lan".to_string(), self.builder.lans[0].clone()];
        v.push("--pin-root".to_string());
        v.push(self.builder.pin_root.display().to_string());
        v
    }

    /// `session-agent clients --json` for this agent's LAN(s) and pin root.
    pub fn clients(&self) -> Vec<ClientStats> {
        let mut args = vec!["clients".to_string()];
        args.extend(self.pin_args());
        args.push("--json".to_string());
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let out = self.cli_ok(&a);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "cannot parse `session-agent clients --json` output: {e}\n{}\nagent log:\n{}",
                String::from_utf8_lossy(&out.stdout),
                self.log_tail()
            )
        })
    }

    /// The entry for `mac`, if the agent knows it.
    pub fn client(&self, mac: &str) -> Option<ClientStats> {
        self.clients().into_iter().find(|c| c.mac == mac)
    }

    /// The entry for `mac`, or all zeros (not allowed) if unknown.
    pub fn client_or_zero(&self, mac: &str) -> ClientStats {
        self.client(mac).unwrap_or(ClientStats {
            mac: mac.to_string(),
            up_bytes: 0,
            down_bytes: 0,
            up_packets: 0,
            down_packets: 0,
            allowed: false,
            blocked_packets: 0,
            garden_packets: 0,
            garden_bytes: 0,
            spoof_packets: 0,
            unknown_packets: 0,
        })
    }

    fn mac_cmd(&self, verb: &str, mac: &str) {
        let mut args = vec![verb.to_string(), "--mac".to_string(), mac.to_string()];
        args.extend(self.pin_args());
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        self.cli_ok(&a);
    }

    /// `session-agent allow --mac MAC`.
    pub fn allow(&self, mac: &str) {
        self.mac_cmd("allow", mac);
    }

    /// `session-agent block --mac MAC`.
    pub fn block(&self, mac: &str) {
        self.mac_cmd("block", mac);
    }

    /// `session-agent limit --mac MAC --down-mbits M --up-mbits M`.
    pub fn limit(&self, mac: &str, mbits: u64) {
        let m = mbits.to_string();
        let mut args = vec!["limit", "--mac", mac, "--down-mbits", &m, "--up-mbits", &m];
        let pins = self.pin_args();
        args.extend(pins.iter().map(|s| s.as_str()));
        self.cli_ok(&args);
    }
}

/// The agent's HTB class `5a:1` (slot 0) on `dev` in `ns`, as `tc class show`
/// prints it (`tc -j` prints no JSON for classes).
pub fn htb_class_1(ns: &str, dev: &str) -> Option<String> {
    let out = crate::ns_command(ns, "tc")
        .args(["class", "show", "dev", dev, "classid", "5a:1"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("spawn tc");
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    s.starts_with("class htb 5a:1 ").then_some(s)
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child process by pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `session-agent ARGS` inside namespace `ns` and returns its output.
pub fn cli(ns: &str, args: &[&str]) -> Output {
    let bin = agent_bin();
    ns_command(ns, bin.to_str().unwrap())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn session-agent {args:?}: {e}"))
}

/// Runs `session-agent ARGS` in the root namespace.
pub fn cli_root(args: &[&str]) -> Output {
    Command::new(agent_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn session-agent {args:?}: {e}"))
}

/// Runs `session-agent ARGS --api-socket SOCK`: a CLI subcommand that talks to
/// a running agent over its socket.
pub fn cli_over_socket(sock: &Path, args: &[&str]) -> Output {
    Command::new(agent_bin())
        .args(args)
        .arg("--api-socket")
        .arg(sock)
        .stdin(Stdio::null())
        .output()
        .expect("spawn session-agent")
}

/// Runs `cmd` with `input` on its standard input; what it printed.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .expect("a piped stdin")
        .write_all(input)
        .unwrap_or_else(|e| panic!("write to {cmd:?}: {e}"));
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait for {cmd:?}: {e}"))
}

/// `session-agent admin passwd --accounts FILE [--staff NAME]`, the password on
/// standard input.
pub fn admin_passwd(accounts: &Path, staff: Option<&str>, password: &str) -> Output {
    let mut cmd = Command::new(agent_bin());
    cmd.args(["admin", "passwd", "--accounts"]).arg(accounts);
    if let Some(s) = staff {
        cmd.args(["--staff", s]);
    }
    run_with_input(&mut cmd, format!("{password}\n").as_bytes())
}
