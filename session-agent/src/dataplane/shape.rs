//! `session-agent run --shaper htb`: speed limits enforced by HTB classes
//! instead of the datapath's token buckets.
//!
//! Policing drops what exceeds the limit, so TCP loses packets and retransmits;
//! shaping queues it, so TCP slows down without losses (at the cost of
//! queueing delay). The LAN gets an HTB root qdisc `5a:` (download); upload
//! goes through an IFB device with its own HTB `5a:`, to which the datapath
//! redirects a shaped client's packets. Each limited client has a class
//! `5a:<slot + 1>` with `rate = ceil = limit` on each device, chosen by the
//! datapath through `skb->priority`; everyone else is not classified and goes
//! out directly. The classes are made with iproute2's `tc`.

use std::process::{Command, Stdio};

use session_common::{ShaperMode, SHAPE_HTB_MAJOR};

use crate::{
    error::{AgentError, Result},
    iface,
};

/// How speed limits are enforced.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Shaper {
    /// Token buckets in the datapath drop what exceeds the limit: no queueing
    /// delay, but TCP retransmits.
    #[default]
    Police,
    /// HTB classes queue what exceeds the limit: no retransmits, but queueing
    /// delay. Needs TC ingress and the kernel's IFB and HTB.
    Htb,
}

impl Shaper {
    /// The mode as the pinned `ShaperConfig` stores it.
    pub fn mode(self) -> u32 {
        match self {
            Shaper::Police => ShaperMode::Police as u32,
            Shaper::Htb => ShaperMode::Htb as u32,
        }
    }

    /// The mode a pinned `ShaperConfig` holds; `None` for a code this
    /// version does not know (pins of another version).
    pub fn from_mode(mode: u32) -> Option<Self> {
        match ShaperMode::try_from(mode).ok()? {
            ShaperMode::Police => Some(Shaper::Police),
            ShaperMode::Htb => Some(Shaper::Htb),
        }
    }
}

/// Frame bytes HTB charges per full-size packet beyond the IP bytes the agent
/// counts (the Ethernet header).
const L2_OVERHEAD: u64 = 14;
const FULL_PACKET: u64 = 1500;
/// TCP payload of a full-size IPv4 segment with timestamps. A limit is the
/// goodput a client's speed test shows: the class carries the headers on top.
/// (The policer's bucket counts IP bytes; its burst gives a short test about
/// the same allowance.)
const TCP_PAYLOAD: u64 = 1448;

/// The txqueuelen of the IFB device: as much queue for upload as a veth or
/// Ethernet device has for download (HTB's leaves are pfifo of that length).
const IFB_TXQUEUELEN: &str = "1000";

/// Name of the IFB device that shapes `lan`'s upload (at most 15 characters,
/// one per LAN name).
pub fn ifb_name(lan: &str) -> String {
    if lan.len() <= 11 {
        format!("ifb-{lan}")
    } else {
        // FNV-1a: stable across versions and processes.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in lan.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("ifb_{:011x}", h >> 20)
    }
}

/// `tc` handle of a class id, `5a:1f`.
fn class_handle(classid: u32) -> String {
    format!("{:x}:{:x}", classid >> 16, classid & 0xffff)
}

fn handle_str() -> String {
    format!("{SHAPE_HTB_MAJOR:x}:")
}

/// Runs an iproute2 command; its stdout, or an error naming the command and its stderr.
fn run(prog: &str, args: &[&str]) -> Result<String> {
    let command = format!("{prog} {}", args.join(" "));
    let out = Command::new(prog).args(args).stdin(Stdio::null()).output();
    finished(command, out)
}

/// The stdout of a command that ran, or an error naming it and its stderr.
fn finished(command: String, out: std::io::Result<std::process::Output>) -> Result<String> {
    let out = out.map_err(|source| AgentError::ShapeTool {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(AgentError::ShapeCommand {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The device's root qdisc is the agent's HTB.
fn has_our_root(dev: &str) -> Result<bool> {
    let out = run("tc", &["-j", "qdisc", "show", "dev", dev, "root"])?;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let want = handle_str();
    Ok(v.as_array().into_iter().flatten().any(|q| {
        q["kind"] == "htb" && q["handle"].as_str() == Some(want.as_str()) && q["root"] == true
    }))
}

/// The kind of link `name` is (`ifb`, `veth`, ...), `None` if there is no such link.
fn link_kind(name: &str) -> Result<Option<String>> {
    if iface::index(name).is_err() {
        return Ok(None);
    }
    let out = run("ip", &["-j", "-d", "link", "show", "dev", name])?;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    Ok(Some(
        v[0]["linkinfo"]["info_kind"]
            .as_str()
            .unwrap_or("")
            .to_string(),
    ))
}

/// Makes an HTB root on `dev` unless there is one of the agent's already
/// (which keeps its classes, e.g. across a restart).
fn ensure_root(dev: &str) -> Result<()> {
    if has_our_root(dev)? {
        return Ok(());
    }
    let h = handle_str();
    run(
        "tc",
        &[
            "qdisc", "replace", "dev", dev, "root", "handle", &h, "htb", "default", "0",
        ],
    )?;
    Ok(())
}

/// Sets up shaping for `lan`: the HTB root on the LAN and the IFB device with
/// its HTB root. Returns the IFB's interface index, for the datapath.
pub fn setup(lan: &str) -> Result<u32> {
    iface::index(lan)?;
    let ifb = ifb_name(lan);
    match link_kind(&ifb)? {
        None => {
            run("ip", &["link", "add", &ifb, "type", "ifb"])?;
        }
        Some(k) if k == "ifb" => {}
        Some(k) => {
            return Err(AgentError::ShapeDevice {
                name: ifb,
                lan: lan.into(),
                reason: format!("a {k} device has that name"),
            })
        }
    }
    run(
        "ip",
        &[
            "link",
            "set",
            "dev",
            &ifb,
            "txqueuelen",
            IFB_TXQUEUELEN,
            "up",
        ],
    )?;
    ensure_root(lan)?;
    ensure_root(&ifb)?;
    iface::index(&ifb)
}

/// Removes what [`setup`] made for `lan` (what is already gone is skipped).
pub fn teardown(lan: &str) -> Result<()> {
    if iface::index(lan).is_ok() && has_our_root(lan)? {
        run("tc", &["qdisc", "del", "dev", lan, "root"])?;
    }
    let ifb = ifb_name(lan);
    if link_kind(&ifb)?.as_deref() == Some("ifb") {
        run("ip", &["link", "del", "dev", &ifb])?;
    }
    Ok(())
}

/// Whether `lan` has an IFB device of the agent's (so there may be something to tear down).
pub fn ifb_exists(lan: &str) -> bool {
    iface::index(&ifb_name(lan)).is_ok()
}

/// One HTB class of a shaped client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    pub dev: String,
    pub classid: u32,
    /// IP bytes per second.
    pub rate_bytes: u64,
}

impl Class {
    /// The arguments of `tc` that create or change the class.
    ///
    /// The burst is tc's usual one, 1 ms at the rate plus a full-size frame,
    /// not `--burst-ms`: a deep bucket lets HTB send in bursts that fill the
    /// queue further (measured: 70 ms instead of 22 ms of RTT for one TCP
    /// flow at 20 Mbit/s, same goodput).
    fn args(&self) -> Vec<String> {
        let frame_bytes = self.rate_bytes.saturating_mul(FULL_PACKET + L2_OVERHEAD) / TCP_PAYLOAD;
        let rate = format!("{}bit", frame_bytes.saturating_mul(8));
        let burst = (frame_bytes / 1000 + FULL_PACKET + L2_OVERHEAD).to_string();
        [
            "class",
            "replace",
            "dev",
            &self.dev,
            "parent",
            &handle_str(),
            "classid",
            &class_handle(self.classid),
            "htb",
            "rate",
            &rate,
            "ceil",
            &rate,
            "burst",
            &burst,
            "cburst",
            &burst,
            "quantum",
            "65536",
        ]
        .map(String::from)
        .to_vec()
    }
}

/// Creates or changes a class.
pub fn set_class(class: &Class) -> Result<()> {
    let args = class.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run("tc", &args)?;
    Ok(())
}

/// Creates or changes many classes with one `tc -batch`.
pub fn set_classes(classes: &[Class]) -> Result<()> {
    if classes.is_empty() {
        return Ok(());
    }
    let mut script = String::new();
    for c in classes {
        script += &c.args().join(" ");
        script.push('\n');
    }
    let command = format!("tc -batch - ({} classes)", classes.len());
    let mut child = Command::new("tc")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| AgentError::ShapeTool {
            command: command.clone(),
            source,
        })?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(script.as_bytes())
            .map_err(|source| AgentError::ShapeTool {
                command: command.clone(),
                source,
            })?;
    }
    finished(command, child.wait_with_output()).map(|_| ())
}

/// Deletes the class `classid` on `dev` if it exists.
pub fn del_class(dev: &str, classid: u32) -> Result<()> {
    let id = class_handle(classid);
    if iface::index(dev).is_err() {
        return Ok(());
    }
    let shown = run("tc", &["class", "show", "dev", dev, "classid", &id])?;
    if shown.trim().is_empty() {
        return Ok(());
    }
    run("tc", &["class", "del", "dev", dev, "classid", &id])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifb_names_fit_and_differ() {
        assert_eq!(ifb_name("lan0"), "ifb-lan0");
        assert_eq!(ifb_name("wlan0-hotsp"), "ifb-wlan0-hotsp");
        let a = ifb_name("wlan0-hotspot1");
        let b = ifb_name("wlan0-hotspot2");
        assert!(a.len() <= 15 && b.len() <= 15, "{a} {b}");
        assert_ne!(a, b);
        assert!(a.starts_with("ifb_"));
    }

    #[test]
    fn class_handles_are_hex() {
        assert_eq!(class_handle(0x5a_0001), "5a:1");
        assert_eq!(class_handle(0x5a_ffff), "5a:ffff");
    }

    #[test]
    fn class_arguments() {
        let c = Class {
            dev: "lan0".into(),
            classid: 0x5a_0003,
            rate_bytes: 2_500_000,
        };
        assert_eq!(
            c.args().join(" "),
            "class replace dev lan0 parent 5a: classid 5a:3 htb rate 20911600bit ceil 20911600bit \
             burst 4127 cburst 4127 quantum 65536"
        );
    }

    #[test]
    fn modes_round_trip() {
        for s in [Shaper::Police, Shaper::Htb] {
            assert_eq!(Shaper::from_mode(s.mode()), Some(s));
        }
        assert_eq!(Shaper::from_mode(7), None);
    }
}
