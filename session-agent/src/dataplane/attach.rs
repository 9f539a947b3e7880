//! Loading, attaching and pinning the datapath on one LAN interface.
//!
//! One client table serves every LAN: its maps (entries, counters, budgets,
//! speed limits, address bindings) live under `<pin root>/:clients/`, so a
//! device is one client with one meter and one data budget whichever LAN port
//! it uses, and adding or removing a LAN changes no client's counters. Each
//! LAN's own maps (its configuration, garden, event ring, drop counters) and
//! links live under `<pin root>/<iface>/`. On start the agent loads the
//! programs against the pinned maps (so counters survive) and swaps them into
//! the pinned links atomically, so enforcement never lapses; without pins it
//! attaches and pins afresh.
//!
//! Kernels before 6.6 have no TCX: there the TC programs are netlink filters
//! on a clsact qdisc, with a fixed handle and priority. Such filters are not
//! links and cannot be pinned, but they stay on the interface when the agent
//! exits, and a new start replaces the program of the same filter in place.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        Link, LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use session_common::*;

pub use super::pins::{check_pins, clients_dir, pin_dir, CLIENTS_DIR, SHARED_MAPS};
use crate::{
    dataplane::{
        bpffs,
        shape::{self, Shaper},
    },
    error::{AgentError, Result},
    iface,
};

/// The eBPF object built from session-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/session-ebpf.o"));

const LINK_TC_INGRESS: &str = "link_tc_ingress";
const LINK_TC_EGRESS: &str = "link_tc_egress";
const LINK_XDP_INGRESS: &str = "link_xdp_ingress";

/// Where upload traffic is metered.
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
pub enum IngressHook {
    /// TC ingress (TCX): works on every driver, keeps GSO.
    #[default]
    Tc,
    /// XDP: for drivers with native XDP support.
    Xdp,
}

/// How the TC programs are attached.
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
pub enum TcAttach {
    /// TCX links where the kernel has them (Linux >= 6.6), netlink filters otherwise.
    #[default]
    Auto,
    /// TCX links (Linux >= 6.6).
    Tcx,
    /// Netlink filters on a clsact qdisc (any kernel).
    Netlink,
}

impl std::str::FromStr for TcAttach {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        <Self as clap::ValueEnum>::from_str(s, false)
            .map_err(|_| format!("{s:?}: expected \"auto\", \"tcx\" or \"netlink\""))
    }
}

/// The priority and handle of our netlink filters; fixed so that a restart
/// replaces them and `detach` finds them. The priority puts them before
/// filters added without one (the kernel counts down from 49152).
pub const NL_PRIORITY: u16 = 0x5e55;
pub const NL_HANDLE: u32 = 0x5e55;

/// The loaded datapath of one interface; dropping it leaves the pinned links in place.
pub struct Attached {
    pub iface: String,
    pub dir: PathBuf,
    pub ebpf: Ebpf,
    /// How the TC programs were attached (never `Auto`).
    pub tc: TcAttach,
}

/// Loads and attaches the datapath of `iface_name`; also returns its pinned
/// maps, opened (and given their epoch) before the programs attached, sharing
/// the client table's mappings with `beside` (another LAN's).
pub fn attach(
    pin_root: &Path,
    iface_name: &str,
    ingress: IngressHook,
    tc_attach: TcAttach,
    beside: Option<&super::Maps>,
) -> Result<(Attached, super::Maps)> {
    iface::index(iface_name)?;
    bpffs::prepare(pin_root)?;
    let dir = pin_dir(pin_root, iface_name);
    let mut ebpf = load(pin_root, iface_name)?;
    // The epoch seeds the client index: it must be set before any packet is seen.
    let maps = super::Maps::open_beside(pin_root, iface_name, beside)?;
    maps.ensure_epoch()?;
    let tc = {
        let egress: &mut SchedClassifier = loaded(&mut ebpf, PROG_TC_EGRESS)?;
        resolve(tc_attach, egress)?
    };
    if tc == TcAttach::Netlink {
        add_clsact(iface_name)?;
    }
    // The new attachment goes in before the other kind is removed, so
    // enforcement never lapses when the mode changes; for that moment a
    // passed packet runs both (TCX passes with TCX_NEXT) and counts twice.
    let tc_hook = |ebpf: &mut Ebpf, prog: &str, hook: TcAttachType, pin: &str| match tc {
        TcAttach::Netlink => {
            attach_nl(ebpf, iface_name, prog, hook)?;
            remove_link(&dir.join(pin))
        }
        _ => {
            attach_tc(ebpf, iface_name, &dir, prog, hook, pin)?;
            remove_nl(iface_name, hook)
        }
    };
    match ingress {
        IngressHook::Tc => {
            tc_hook(
                &mut ebpf,
                PROG_TC_INGRESS,
                TcAttachType::Ingress,
                LINK_TC_INGRESS,
            )?;
            remove_link(&dir.join(LINK_XDP_INGRESS))?;
        }
        IngressHook::Xdp => {
            attach_xdp(&mut ebpf, iface_name, &dir)?;
            remove_link(&dir.join(LINK_TC_INGRESS))?;
            remove_nl(iface_name, TcAttachType::Ingress)?;
        }
    }
    tc_hook(
        &mut ebpf,
        PROG_TC_EGRESS,
        TcAttachType::Egress,
        LINK_TC_EGRESS,
    )?;
    Ok((
        Attached {
            iface: iface_name.to_string(),
            dir,
            ebpf,
            tc,
        },
        maps,
    ))
}

/// Picks TCX or netlink for `Auto`, and refuses TCX where the kernel lacks it.
fn resolve(want: TcAttach, prog: &mut SchedClassifier) -> Result<TcAttach> {
    let fd = prog
        .fd()
        .map_err(|e| AgentError::bpf("probing for TCX", e))?
        .as_fd()
        .as_raw_fd();
    match (want, tcx_available(fd)?) {
        (TcAttach::Tcx, false) => Err(AgentError::NoTcx),
        (TcAttach::Auto, true) => Ok(TcAttach::Tcx),
        (TcAttach::Auto, false) => Ok(TcAttach::Netlink),
        (w, _) => Ok(w),
    }
}

/// Whether the kernel has TCX (Linux >= 6.6, whatever its version string
/// says): BPF_LINK_CREATE of a TCX link on interface index 0 fails with
/// ENODEV where TCX exists, and with EINVAL (unknown attach type) where not.
fn tcx_available(prog_fd: i32) -> Result<bool> {
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_TCX_EGRESS: u32 = 47;
    #[repr(C)]
    struct Attr {
        prog_fd: u32,
        target_ifindex: u32,
        attach_type: u32,
        flags: u32,
        _pad: [u64; 6],
    }
    let attr = Attr {
        prog_fd: prog_fd as u32,
        target_ifindex: 0,
        attach_type: BPF_TCX_EGRESS,
        flags: 0,
        _pad: [0; 6],
    };
    // SAFETY: bpf(2) reads `size_of::<Attr>()` bytes of the live, repr(C) `attr`.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            &attr as *const Attr,
            size_of::<Attr>() as u32,
        )
    };
    if fd >= 0 {
        // Not expected with no interface; a link nobody holds goes away on close.
        // SAFETY: the kernel just returned this fd, and nothing else owns it.
        drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENODEV) => Ok(true),
        Some(libc::EINVAL) => Ok(false),
        _ => Err(AgentError::from_io("probing the kernel for TCX", e)),
    }
}

/// The OS error at the bottom of an aya error, if any.
fn os_error(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(n) = c.downcast_ref::<aya::sys::NetlinkError>() {
            return n.raw_os_error();
        }
        if let Some(i) = c.downcast_ref::<io::Error>() {
            if i.raw_os_error().is_some() {
                return i.raw_os_error();
            }
        }
        cur = c.source();
    }
    None
}

/// Adds a clsact qdisc unless the interface has one (ours from an earlier
/// start, or the operator's: both are used as they are).
fn add_clsact(iface_name: &str) -> Result<()> {
    match tc::qdisc_add_clsact(iface_name) {
        Ok(()) => Ok(()),
        Err(e) if os_error(&e) == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(AgentError::bpf(
            format!("adding a clsact qdisc to {iface_name}"),
            e,
        )),
    }
}

fn nl_link(iface_name: &str, hook: TcAttachType) -> io::Result<SchedClassifierLink> {
    SchedClassifierLink::attached(
        iface_name,
        hook,
        NL_PRIORITY,
        TcHandle::from(NL_HANDLE),
        None,
    )
}

/// Puts the program into our netlink filter: replaces the program of an
/// existing filter atomically, or creates the filter.
fn attach_nl(ebpf: &mut Ebpf, iface_name: &str, prog: &str, hook: TcAttachType) -> Result<()> {
    let what = || format!("attaching {prog} to {iface_name} (netlink)");
    let p: &mut SchedClassifier = loaded(ebpf, prog)?;
    let existing = nl_link(iface_name, hook).map_err(|e| AgentError::from_io(what(), e))?;
    let id = match p.attach_to_link(existing) {
        Ok(id) => id,
        Err(e) if os_error(&e) == Some(libc::ENOENT) => p
            .attach_with_options(
                iface_name,
                hook,
                TcAttachOptions::Netlink(NlOptions {
                    priority: NL_PRIORITY,
                    handle: TcHandle::from(NL_HANDLE),
                    classid: None,
                }),
            )
            .map_err(|e| AgentError::bpf(what(), e))?,
        Err(e) => return Err(AgentError::bpf(what(), e)),
    };
    let link = p.take_link(id).map_err(|e| AgentError::bpf(what(), e))?;
    // Dropping the link would delete the filter; it must outlive the agent.
    std::mem::forget(link);
    Ok(())
}

/// Removes our netlink filter from a hook, if it is there.
fn remove_nl(iface_name: &str, hook: TcAttachType) -> Result<()> {
    // No interface: its filters went with it.
    let Ok(link) = nl_link(iface_name, hook) else {
        return Ok(());
    };
    match link.detach() {
        Ok(()) => Ok(()),
        // ENOENT: no such filter; EINVAL: no clsact qdisc at all.
        Err(e) if matches!(os_error(&e), Some(libc::ENOENT) | Some(libc::EINVAL)) => Ok(()),
        Err(e) => Err(AgentError::bpf(
            format!("removing the {hook:?} filter of {iface_name}"),
            e,
        )),
    }
}

/// Loads the object against the pinned maps of `iface_name` and the shared
/// client table (creating and pinning them if absent), without loading or
/// attaching any program.
pub fn load(pin_root: &Path, iface_name: &str) -> Result<Ebpf> {
    check_pins(pin_root, iface_name)?;
    let dir = pin_dir(pin_root, iface_name);
    let shared = clients_dir(pin_root);
    for d in [&dir, &shared] {
        std::fs::create_dir_all(d)
            .map_err(|e| AgentError::file(format!("creating {}", d.display()), e))?;
    }
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(&dir);
    for name in SHARED_MAPS {
        loader.map_pin_path(name, shared.join(name));
    }
    loader.load(OBJECT).map_err(|e| {
        let err = AgentError::bpf(format!("loading the datapath for {iface_name}"), &e);
        match (&e, err) {
            (
                aya::EbpfError::MapError(aya::maps::MapError::PinError { .. }),
                AgentError::Bpf { message, .. },
            ) => AgentError::IncompatiblePins {
                iface: iface_name.into(),
                dir: dir.to_path_buf(),
                reason: message,
            },
            (_, err) => err,
        }
    })
}

/// A pinned link that is still attached to a live interface, if there is one.
fn pinned_link(path: &Path) -> Result<Option<FdLink>> {
    match PinnedLink::from_pin(path) {
        Ok(p) => Ok(Some(FdLink::from(p))),
        Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AgentError::bpf(
            format!("opening pinned link {}", path.display()),
            e,
        )),
    }
}

/// A loaded TC or XDP program that can be attached with a pinnable link.
trait Attachable {
    /// Atomically swaps this program into an existing link.
    fn swap_into(&mut self, link: FdLink) -> std::result::Result<(), String>;
    /// Attaches afresh and hands over the link.
    fn attach_new(&mut self, iface_name: &str) -> std::result::Result<FdLink, String>;
}

struct Tc<'a>(&'a mut SchedClassifier, TcAttachType);
struct XdpProg<'a>(&'a mut Xdp);

impl Attachable for Tc<'_> {
    fn swap_into(&mut self, link: FdLink) -> std::result::Result<(), String> {
        let id = self.0.attach_to_link(from_fd_link(link)?);
        id.map(|_| ()).map_err(|e| e.to_string())
    }

    fn attach_new(&mut self, iface_name: &str) -> std::result::Result<FdLink, String> {
        let opts = TcAttachOptions::TcxOrder(LinkOrder::default());
        let id = self
            .0
            .attach_with_options(iface_name, self.1, opts)
            .map_err(|e| chain(&e))?;
        into_fd_link(self.0.take_link(id).map_err(|e| e.to_string())?)
    }
}

impl Attachable for XdpProg<'_> {
    fn swap_into(&mut self, link: FdLink) -> std::result::Result<(), String> {
        let id = self.0.attach_to_link(from_fd_link(link)?);
        id.map(|_| ()).map_err(|e| e.to_string())
    }

    fn attach_new(&mut self, iface_name: &str) -> std::result::Result<FdLink, String> {
        let id = self
            .0
            .attach(iface_name, XdpMode::Default)
            .map_err(|e| chain(&e))?;
        into_fd_link(self.0.take_link(id).map_err(|e| e.to_string())?)
    }
}

/// A pinned link as the program type's own link (checks the link's kind).
fn from_fd_link<L: TryFrom<FdLink, Error = LinkError>>(
    link: FdLink,
) -> std::result::Result<L, String> {
    L::try_from(link).map_err(|e| e.to_string())
}

/// A program's link as an fd link, to pin it.
fn into_fd_link<L: TryInto<FdLink, Error = LinkError>>(
    link: L,
) -> std::result::Result<FdLink, String> {
    link.try_into().map_err(|e| e.to_string())
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Swaps the program into the link pinned at `path` (no moment without
/// enforcement), or attaches it and pins the new link.
fn attach_pinned(mut p: impl Attachable, iface_name: &str, path: &Path, what: &str) -> Result<()> {
    if let Some(link) = pinned_link(path)? {
        match p.swap_into(link) {
            Ok(()) => return Ok(()),
            // The interface went away and came back: the old link is defunct.
            Err(e) => {
                tracing::warn!("replacing stale link {}: {e}", path.display());
                remove_link(path)?;
            }
        }
    }
    let link = p
        .attach_new(iface_name)
        .map_err(|message| AgentError::Bpf {
            what: what.to_string(),
            message,
        })?;
    link.pin(path)
        .map_err(|e| AgentError::bpf(format!("pinning {}", path.display()), e))?;
    Ok(())
}

/// The named program of the object, loaded into the kernel.
fn loaded<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut aya::programs::Program: TryInto<&'a mut T, Error = aya::programs::ProgramError>,
    T: LoadProgram + 'a,
{
    let p: &mut T = ebpf
        .program_mut(name)
        .ok_or_else(|| AgentError::Bpf {
            what: format!("loading {name}"),
            message: "program missing from the object".into(),
        })?
        .try_into()
        .map_err(|e| AgentError::bpf(format!("loading {name}"), e))?;
    p.load_program()
        .map_err(|e| AgentError::bpf(format!("loading {name}"), e))?;
    Ok(p)
}

/// `load()` of the program types the datapath uses; a loaded program is left as it is.
trait LoadProgram {
    fn load_program(&mut self) -> std::result::Result<(), aya::programs::ProgramError>;
}

impl LoadProgram for SchedClassifier {
    fn load_program(&mut self) -> std::result::Result<(), aya::programs::ProgramError> {
        if self.fd().is_ok() {
            return Ok(());
        }
        self.load()
    }
}

impl LoadProgram for Xdp {
    fn load_program(&mut self) -> std::result::Result<(), aya::programs::ProgramError> {
        if self.fd().is_ok() {
            return Ok(());
        }
        self.load()
    }
}

fn attach_tc(
    ebpf: &mut Ebpf,
    iface_name: &str,
    dir: &Path,
    prog: &str,
    hook: TcAttachType,
    pin: &str,
) -> Result<()> {
    let p: &mut SchedClassifier = loaded(ebpf, prog)?;
    attach_pinned(
        Tc(p, hook),
        iface_name,
        &dir.join(pin),
        &format!("attaching {prog} to {iface_name}"),
    )
}

fn attach_xdp(ebpf: &mut Ebpf, iface_name: &str, dir: &Path) -> Result<()> {
    let p: &mut Xdp = loaded(ebpf, PROG_XDP_INGRESS)?;
    attach_pinned(
        XdpProg(p),
        iface_name,
        &dir.join(LINK_XDP_INGRESS),
        &format!("attaching {PROG_XDP_INGRESS} to {iface_name}"),
    )
}

/// Detaches a pinned link at once (even while another process holds it) and removes the pin.
fn remove_link(path: &Path) -> Result<()> {
    let Some(fd) = obj_get(path)? else {
        return Ok(());
    };
    link_detach(fd.as_raw_fd());
    std::fs::remove_file(path)
        .map_err(|e| AgentError::file(format!("removing {}", path.display()), e))
}

/// BPF_OBJ_GET: opens a pinned object, `None` if there is no pin.
fn obj_get(path: &Path) -> Result<Option<OwnedFd>> {
    const BPF_OBJ_GET: libc::c_long = 7;
    #[repr(C)]
    struct Attr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        _pad: [u64; 6],
    }
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
        AgentError::Io {
            what: format!("pin path {}", path.display()),
            source: io::ErrorKind::InvalidInput.into(),
        }
    })?;
    let attr = Attr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        _pad: [0; 6],
    };
    // SAFETY: bpf(2) reads `size_of::<Attr>()` bytes of the live, repr(C)
    // `attr`, whose path points at the NUL-terminated `c`.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const Attr,
            size_of::<Attr>() as u32,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::NotFound => Ok(None),
            _ => Err(AgentError::from_io(
                format!("opening pin {}", path.display()),
                e,
            )),
        };
    }
    // SAFETY: the kernel just returned this fd, and nothing else owns it.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

/// BPF_LINK_DETACH; errors are ignored because removing the pin detaches too
/// once the last holder closes it.
fn link_detach(fd: i32) {
    const BPF_LINK_DETACH: libc::c_long = 34;
    #[repr(C)]
    struct Attr {
        link_fd: u32,
        _pad: [u32; 15],
    }
    let attr = Attr {
        link_fd: fd as u32,
        _pad: [0; 15],
    };
    // SAFETY: bpf(2) reads `size_of::<Attr>()` bytes of the live, repr(C) `attr`.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            &attr as *const Attr,
            size_of::<Attr>() as u32,
        )
    };
}

/// Removes the datapath from `iface` and deletes its pins (maps included),
/// and the HTB qdisc and IFB device of `--shaper htb`; detaching the last LAN
/// deletes the shared client table too.
pub fn detach(pin_root: &Path, iface_name: &str) -> Result<()> {
    let dir = pin_dir(pin_root, iface_name);
    if ![MAP_LAN, MAP_CLIENTS, LINK_TC_EGRESS]
        .iter()
        .any(|p| dir.join(p).exists())
    {
        return Err(AgentError::NotAttached {
            iface: iface_name.into(),
            dir,
        });
    }
    let htb = crate::dataplane::Maps::open(pin_root, iface_name)
        .map(|m| m.shaper().is_ok_and(|s| s == Shaper::Htb))
        .unwrap_or(false);
    for l in [LINK_TC_INGRESS, LINK_XDP_INGRESS, LINK_TC_EGRESS] {
        remove_link(&dir.join(l))?;
    }
    // Only our filters: the clsact qdisc may carry the operator's too.
    for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
        remove_nl(iface_name, hook)?;
    }
    // The programs no longer hand packets to them: remove the shaping devices.
    if htb || shape::ifb_exists(iface_name) {
        shape::teardown(iface_name)?;
    }
    std::fs::remove_dir_all(&dir)
        .map_err(|e| AgentError::file(format!("removing {}", dir.display()), e))?;
    // The last LAN takes the shared client table with it.
    let shared = clients_dir(pin_root);
    match crate::dataplane::Maps::attached_interfaces(pin_root) {
        Err(AgentError::NothingAttached(_)) if shared.exists() => std::fs::remove_dir_all(&shared)
            .map_err(|e| AgentError::file(format!("removing {}", shared.display()), e)),
        _ => Ok(()),
    }
}
