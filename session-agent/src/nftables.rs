//! The nftables table that keeps the LANs from forwarding from boot until the
//! datapath is attached ("closed until attached").
//!
//! The package's boot unit runs `session-agent close-lans`, which loads the
//! table with `nft` ([`close_lans`]) before the network comes up; `run` removes
//! it once every LAN is attached and configured ([`open_lans`]), over
//! netfilter's netlink, so the agent itself needs no `nft`. A crash after that
//! leaves the pinned datapath enforcing, as always.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::error::{AgentError, Result};
use crate::netlink::{failed, kernel_socket};
use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST};

/// The nftables table (family `inet`) that keeps the LANs from forwarding from
/// boot until the datapath is attached: the package's boot unit loads it with
/// `nft` ([`closed_lans_ruleset`]), the agent removes it once every LAN is
/// attached and configured ([`open_lans`]).
pub const CLOSED_LANS_TABLE: &str = "session_agent_closed";

/// An interface name `nft` takes between double quotes and the kernel accepts
/// (at most 15 bytes, none of `/`, `:`, white space, quotes or backslashes).
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '/' | ':' | '"' | '\\' | '\''))
}

/// The `nft -f` script of [`CLOSED_LANS_TABLE`]: nothing is forwarded from or
/// to `lans` (the gateway's own traffic with its clients, DHCP, DNS and the
/// portal, still flows). Loading it again replaces it. `None` if a name is not
/// an interface name.
pub fn closed_lans_ruleset(lans: &[String]) -> Option<String> {
    if lans.is_empty() || !lans.iter().all(|l| valid_ifname(l)) {
        return None;
    }
    let set = lans
        .iter()
        .map(|l| format!("\"{l}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let t = CLOSED_LANS_TABLE;
    Some(format!(
        "add table inet {t}\n\
         delete table inet {t}\n\
         table inet {t} {{\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter - 10; policy accept;\n\
         \t\tiifname {{ {set} }} counter drop comment \"closed until session-agent attaches\"\n\
         \t\toifname {{ {set} }} counter drop comment \"closed until session-agent attaches\"\n\
         \t}}\n\
         }}\n"
    ))
}

/// Loads [`closed_lans_ruleset`] with `nft -f -` (replacing an earlier one).
pub fn close_lans(lans: &[String]) -> Result<()> {
    let what = format!("closing the LANs {} with nft", lans.join(", "));
    if lans.is_empty() {
        return Ok(());
    }
    if let Some(bad) = lans.iter().find(|l| !valid_ifname(l)) {
        return Err(AgentError::BadIfname(bad.clone()));
    }
    let script = closed_lans_ruleset(lans).unwrap_or_default();
    let mut nft = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| AgentError::Io {
            what: format!("{what}: running nft (Debian package nftables)"),
            source: e,
        })?;
    nft.stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(|e| AgentError::Io {
            what: format!("{what}: writing the ruleset to nft"),
            source: e,
        })?;
    let out = nft.wait_with_output().map_err(|e| AgentError::Io {
        what: format!("{what}: waiting for nft"),
        source: e,
    })?;
    if !out.status.success() {
        return Err(AgentError::NftRefused {
            what,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

// nfnetlink (include/uapi/linux/netfilter/nfnetlink.h, nf_tables.h).
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_DELTABLE: u16 = 2;
const NFTA_TABLE_NAME: u16 = 1;
const NFPROTO_INET: u8 = 1;

/// One nfnetlink message: header, `struct nfgenmsg`, attributes.
fn nfnl_message(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.push(family);
    m.push(0); // NFNETLINK_V0
    m.extend_from_slice(&res_id.to_be_bytes());
    m.extend_from_slice(attrs);
    m
}

/// A string attribute, NUL-terminated and padded to 4 bytes.
fn nla_string(kind: u16, value: &str) -> Vec<u8> {
    let len = 4 + value.len() + 1;
    let mut a = Vec::with_capacity(len.next_multiple_of(4));
    a.extend_from_slice(&(len as u16).to_ne_bytes());
    a.extend_from_slice(&kind.to_ne_bytes());
    a.extend_from_slice(value.as_bytes());
    a.resize(len.next_multiple_of(4), 0);
    a
}

/// Removes [`CLOSED_LANS_TABLE`] over netfilter's netlink (no `nft` needed):
/// `true` if it was there, `false` if not (nothing was closed).
pub fn open_lans() -> Result<bool> {
    let what =
        format!("removing the nftables table inet {CLOSED_LANS_TABLE} that kept the LANs closed");
    let socket = match kernel_socket(netlink_sys::protocols::NETLINK_NETFILTER, &what) {
        Ok(s) => s,
        // A kernel without nfnetlink has no nftables table to remove.
        Err(AgentError::Netlink { source, .. })
            if source.raw_os_error() == Some(libc::EPROTONOSUPPORT) =>
        {
            return Ok(false)
        }
        Err(e) => return Err(e),
    };
    let seq = std::process::id();
    let res = NFNL_SUBSYS_NFTABLES;
    let mut batch = nfnl_message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, res, &[]);
    batch.extend(nfnl_message(
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELTABLE,
        NLM_F_REQUEST | NLM_F_ACK,
        seq.wrapping_add(1),
        NFPROTO_INET,
        0,
        &nla_string(NFTA_TABLE_NAME, CLOSED_LANS_TABLE),
    ));
    batch.extend(nfnl_message(
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq.wrapping_add(2),
        0,
        res,
        &[],
    ));
    socket.send(&batch, 0).map_err(|e| failed(&what, e))?;
    let mut rx = vec![0u8; 8192];
    loop {
        let n = socket
            .recv(&mut &mut rx[..], 0)
            .map_err(|e| failed(&what, e))?;
        let mut at = 0;
        while at + 20 <= n {
            let len = u32::from_ne_bytes(rx[at..at + 4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(rx[at + 4..at + 6].try_into().unwrap());
            let mseq = u32::from_ne_bytes(rx[at + 8..at + 12].try_into().unwrap());
            // NLMSG_ERROR: an errno (0: the acknowledgement) for the removal,
            // or the batch refused as a whole (no nf_tables: nothing was closed).
            if kind == 2 && (seq..=seq.wrapping_add(2)).contains(&mseq) {
                let code = i32::from_ne_bytes(rx[at + 16..at + 20].try_into().unwrap());
                return match -code {
                    0 => Ok(true),
                    libc::ENOENT | libc::EOPNOTSUPP | libc::EPROTONOSUPPORT => Ok(false),
                    errno => Err(failed(&what, std::io::Error::from_raw_os_error(errno))),
                };
            }
            if len < 16 {
                break;
            }
            at += len.next_multiple_of(4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_drops_what_is_forwarded_from_or_to_each_lan() {
        let r = closed_lans_ruleset(&["wlan0".into(), "br-lan.10".into()]).unwrap();
        assert!(
            r.starts_with(
                "add table inet session_agent_closed\ndelete table inet session_agent_closed\n"
            ),
            "{r}"
        );
        assert!(r.contains("hook forward"), "{r}");
        assert!(
            r.contains("iifname { \"wlan0\", \"br-lan.10\" } counter drop"),
            "{r}"
        );
        assert!(
            r.contains("oifname { \"wlan0\", \"br-lan.10\" } counter drop"),
            "{r}"
        );
    }

    #[test]
    fn names_nft_or_the_kernel_would_refuse_are_refused() {
        for bad in ["", "a\"b", "sixteen-chars-xx", "a b", "a/b", "a:1", "a\\b"] {
            assert!(!valid_ifname(bad), "{bad:?}");
            assert_eq!(closed_lans_ruleset(&[bad.to_string()]), None, "{bad:?}");
        }
        assert!(valid_ifname("fifteen-chars-x"));
        assert!(matches!(
            close_lans(&["a b".into()]),
            Err(AgentError::BadIfname(n)) if n == "a b"
        ));
        assert_eq!(closed_lans_ruleset(&[]), None);
    }
}
