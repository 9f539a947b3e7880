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
    /// The kernel refused an operation that takes the capabilities `needs`.
    #[error("permission denied {what}: {}", needs_note(needs))]
    NotPermitted { what: String, needs: &'static [Cap] },
    /// A listener that could not be opened: `reason` says why and what to change.
    #[error("cannot listen on {addr} for {what}: {reason}")]
    Listen {
        what: String,
        addr: String,
        reason: String,
    },
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
    /// A listener that stopped accepting connections while the agent ran.
    #[error("{what} stopped listening on {addr}: its socket was shut down or closed from outside ({cause}); the agent stops, for its service manager to start it again (Restart=on-failure)")]
    ListenerFailed {
        what: String,
        addr: String,
        cause: io::Error,
    },
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
    /// Classifies an OS error from a BPF operation.
    pub fn from_io(what: impl Into<String>, e: io::Error) -> Self {
        let what = what.into();
        match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => Self::NotPermitted {
                what,
                needs: DATAPATH_CAPS,
            },
            Some(libc::ENOSYS) => Self::NoBpf(what),
            _ => Self::Io { what, source: e },
        }
    }

    /// A file or directory operation that failed (its permissions are the
    /// file's, not a capability's).
    pub fn file(what: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    /// A listener on `addr` (for `what`, set by `setting`) that could not be
    /// bound; `needs` are the capabilities its socket options take besides
    /// CAP_NET_BIND_SERVICE for a port below 1024.
    pub fn listen(
        what: impl Into<String>,
        addr: impl std::fmt::Display,
        port: Option<u16>,
        setting: &str,
        needs: &'static [Cap],
        e: io::Error,
    ) -> Self {
        let denied = matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES));
        let low_port = port.is_some_and(|p| p < 1024);
        let reason = if e.kind() == io::ErrorKind::AddrInUse {
            format!("the address is in use: another program listens there (`ss -ltunp` names it); stop it, or set {setting} to a free address")
        } else if e.kind() == io::ErrorKind::AddrNotAvailable {
            format!("no interface of this host has that address (see `ip address`); set {setting} to one of its addresses")
        } else if denied && low_port && !lacking(&[CAP_NET_BIND_SERVICE]).is_empty() {
            format!("a port below 1024 needs CAP_NET_BIND_SERVICE, which this process lacks; run it as root with CAP_NET_BIND_SERVICE (the packaged unit has it), or set {setting} to a port from 1024 up")
        } else if denied && !lacking(needs).is_empty() {
            needs_note(needs)
        } else {
            format!("{e}; {setting} sets it")
        };
        Self::Listen {
            what: what.into(),
            addr: addr.to_string(),
            reason,
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
        if !lacking(DATAPATH_CAPS).is_empty() {
            return Self::NotPermitted {
                what,
                needs: DATAPATH_CAPS,
            };
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
            Some(libc::EPERM) | Some(libc::EACCES) => Self::NotPermitted {
                what,
                needs: DATAPATH_CAPS,
            },
            Some(libc::ENOSYS) => Self::NoBpf(what),
            _ => Self::Bpf { what, message },
        }
    }
}

/// A capability: its number (linux/capability.h) and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    bit: u32,
    pub name: &'static str,
}

pub const CAP_NET_BIND_SERVICE: Cap = Cap {
    bit: 10,
    name: "CAP_NET_BIND_SERVICE",
};
pub const CAP_NET_ADMIN: Cap = Cap {
    bit: 12,
    name: "CAP_NET_ADMIN",
};
pub const CAP_SYS_ADMIN: Cap = Cap {
    bit: 21,
    name: "CAP_SYS_ADMIN",
};
pub const CAP_PERFMON: Cap = Cap {
    bit: 38,
    name: "CAP_PERFMON",
};
pub const CAP_BPF: Cap = Cap {
    bit: 39,
    name: "CAP_BPF",
};

/// What loading and attaching the datapath takes: CAP_BPF (programs and
/// maps), CAP_PERFMON (the programs' pointer arithmetic), CAP_NET_ADMIN
/// (networking programs, attaching them).
pub const DATAPATH_CAPS: &[Cap] = &[CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN];

/// Which of `caps` this process's effective set lacks (none when the set
/// cannot be read).
pub fn lacking(caps: &[Cap]) -> Vec<Cap> {
    let Some(eff) = effective_caps() else {
        return Vec::new();
    };
    caps.iter()
        .filter(|c| eff & (1u64 << c.bit) == 0)
        .copied()
        .collect()
}

/// The effective capability set (`CapEff` of /proc/self/status).
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
}

/// "A", "A and B", "A, B and C".
fn names(caps: &[Cap]) -> String {
    match caps {
        [] => String::new(),
        [one] => one.name.to_string(),
        [rest @ .., last] => format!(
            "{} and {}",
            rest.iter().map(|c| c.name).collect::<Vec<_>>().join(", "),
            last.name
        ),
    }
}

/// Names the capabilities of `needs` this process lacks and how to grant
/// them, or, when it holds them all, what else refuses.
fn needs_note(needs: &[Cap]) -> String {
    let missing = lacking(needs);
    if missing.is_empty() {
        format!(
            "this process holds {}, which this takes, so something else refuses it: a security module (SELinux, AppArmor), a seccomp filter (the unit's SystemCallFilter=) or kernel lockdown",
            names(needs)
        )
    } else {
        let n = names(&missing);
        format!("this process lacks {n}; run it as root with {n} (the unit's CapabilityBoundingSet= and AmbientCapabilities=)")
    }
}
