//! Errors of the agent, each naming the problem and, where there is one, the fix.

use std::{io, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no interface named '{0}' in this network namespace (see `ip link`)")]
    UnknownInterface(String),
    #[error("'{input}' is not a MAC address: {reason}")]
    BadMac { input: String, reason: String },
    #[error("'{input}' is not a walled-garden entry: {reason} (expected CIDR[:PORT], e.g. 203.0.113.0/24:443 or [2001:db8::/32]:443)")]
    BadGarden { input: String, reason: String },
    #[error("cannot open the packet socket that sends held DNS answers on: {source}; the walled garden by name needs CAP_NET_RAW and the AF_PACKET family (the packaged service has both)")]
    PacketSocket {
        #[source]
        source: io::Error,
    },
    #[error("{path}: not the garden names changed through the API ({reason}); fix the file, or remove it to start from the configuration's names")]
    GardenNamesFile {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("'{input}' is not a garden name: {reason} (expected NAME[:PORT] or *.SUFFIX[:PORT], e.g. pay.example.com or *.cdn.example.com:443)")]
    BadGardenDomain { input: String, reason: String },
    #[error("the kernel's verifier refused {what}: this kernel cannot run this datapath (see the README's kernel table); the end of its log:\n{log}")]
    Verifier { what: String, log: String },
    #[error("permission denied {what}: run as root, or with CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN as the packaged service does{}", missing_note())]
    NotPermitted { what: String },
    #[error("this kernel has no BPF support ({0}); session-agent needs Linux >= 6.1 with CONFIG_BPF_SYSCALL")]
    NoBpf(String),
    #[error(
        "no BPF filesystem at {path}: mount one with `mount -t bpf bpf /sys/fs/bpf` ({source})"
    )]
    NoBpffs { path: PathBuf, source: io::Error },
    #[error("session-agent is not attached to {iface}: no pins in {dir} (start it with `session-agent run --lan {iface}`)")]
    NotAttached { iface: String, dir: PathBuf },
    #[error("the datapath of {0} is loaded but not attached yet: the agent is starting (wait until it is ready: `systemctl status session-agent`), or it stopped before attaching (see its log)")]
    NotAttachedYet(String),
    #[error("no interface is attached under {0} (start `session-agent run --lan IFACE` first)")]
    NothingAttached(PathBuf),
    #[error("{0} is not a client's address (a client's MAC is unicast and not all zeros)")]
    NotAClientMac(session_common::MacAddr),
    #[error("MAC address {mac} belongs to device {device_id}, which has sessions: remove that device first (DELETE /v1/devices/{device_id}, `session-agent devices remove`) or move it to another MAC")]
    MacHasSessions {
        mac: session_model::MacAddr,
        device_id: i64,
    },
    #[error("slot {slot} of the client table (opened through {iface}) has no client: it was forgotten since it was looked up")]
    NoEntry { iface: String, slot: u32 },
    #[error("the client table of {iface} is full ({max} clients)")]
    TableFull { iface: String, max: u32 },
    #[error("the pinned maps in {dir} do not match this version of session-agent ({reason}); run `session-agent detach --lan {iface}` and start again")]
    IncompatiblePins {
        iface: String,
        dir: PathBuf,
        reason: String,
    },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    /// A routing-netlink request the kernel refused or could not be made.
    #[error("{what} (netlink): {source}")]
    Netlink {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}: {source}")]
    Store {
        what: String,
        source: session_model::ModelError,
    },
    #[error(transparent)]
    Model(#[from] session_model::ModelError),
    #[error("this kernel has no TCX (it needs Linux >= 6.6): use `--tc-attach auto` or `--tc-attach netlink` (`tc_attach` in the config file)")]
    NoTcx,
    #[error("{what}: {message}")]
    Bpf { what: String, message: String },
    #[error("shaping {lan}: cannot use {name} as its IFB device: {reason}")]
    ShapeDevice {
        name: String,
        lan: String,
        reason: String,
    },
    #[error(
        "--shaper htb needs --ingress tc: XDP cannot hand upload to the IFB device that shapes it"
    )]
    ShaperNeedsTc,
    #[error("'{0}' is not an interface name nft takes (at most 15 characters; none of / : \" ' \\ or white space)")]
    BadIfname(String),
    #[error("{what}: nft refused the ruleset ({status}): {stderr}")]
    NftRefused {
        what: String,
        status: String,
        stderr: String,
    },
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;

impl AgentError {
    /// Classifies an OS error from a BPF or netlink operation.
    pub fn from_io(what: impl Into<String>, e: io::Error) -> Self {
        let what = what.into();
        match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => Self::NotPermitted { what },
            Some(libc::ENOSYS) => Self::NoBpf(what),
            _ => Self::Io { what, source: e },
        }
    }

    /// Classifies an aya error, keeping its whole chain of causes.
    pub fn bpf(what: impl Into<String>, e: impl std::error::Error) -> Self {
        /// How much of a verifier's log an error keeps.
        const VERIFIER_LOG_LINES: usize = 40;
        let what = what.into();
        let mut message = e.to_string();
        let mut src = e.source();
        let mut io_kind = None;
        while let Some(s) = src {
            if let Some(ioe) = s.downcast_ref::<io::Error>() {
                io_kind = ioe.raw_os_error();
            }
            message.push_str(": ");
            message.push_str(&s.to_string());
            src = s.source();
        }
        // Without the capabilities the verifier refuses what it would take with
        // them: say what is missing rather than blame the kernel.
        if !missing_caps().is_empty() {
            return Self::NotPermitted { what };
        }
        if let Some((_, log)) = message.split_once("Verifier output:") {
            // The verifier's refusal (EACCES too): its last lines say why.
            let lines: Vec<&str> = log.trim().lines().collect();
            let tail = lines[lines.len().saturating_sub(VERIFIER_LOG_LINES)..].join("\n");
            if !tail.is_empty() {
                return Self::Verifier { what, log: tail };
            }
        }
        match io_kind {
            Some(libc::EPERM) | Some(libc::EACCES) => Self::NotPermitted { what },
            Some(libc::ENOSYS) => Self::NoBpf(what),
            _ => Self::Bpf { what, message },
        }
    }
}

/// The capabilities the datapath needs, by number (linux/capability.h).
const NEEDED_CAPS: [(u32, &str); 3] = [(39, "CAP_BPF"), (38, "CAP_PERFMON"), (12, "CAP_NET_ADMIN")];

/// Which of [`NEEDED_CAPS`] this process's effective set lacks.
pub fn missing_caps() -> Vec<&'static str> {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return Vec::new();
    };
    let Some(eff) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
    else {
        return Vec::new();
    };
    NEEDED_CAPS
        .iter()
        .filter(|(bit, _)| eff & (1u64 << bit) == 0)
        .map(|(_, name)| *name)
        .collect()
}

fn missing_note() -> String {
    let m = missing_caps();
    if m.is_empty() {
        String::new()
    } else {
        format!(" (this process lacks {})", m.join(", "))
    }
}
