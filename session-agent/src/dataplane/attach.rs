//! Loading, attaching and pinning the datapath on one LAN interface.
//!
//! Maps and links live under `<pin root>/<iface>/`. On start the agent loads
//! the programs against the pinned maps (so counters survive) and swaps them
//! into the pinned links atomically, so enforcement never lapses; without pins
//! it attaches and pins afresh.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        tc::TcAttachOptions,
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use session_common::{PROG_TC_EGRESS, PROG_TC_INGRESS, PROG_XDP_INGRESS};

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IngressHook {
    /// TC ingress (TCX): works on every driver, keeps GSO.
    Tc,
    /// XDP: for drivers with native XDP support.
    Xdp,
}

pub fn pin_dir(pin_root: &Path, iface: &str) -> PathBuf {
    pin_root.join(iface)
}

/// The loaded datapath of one interface; dropping it leaves the pinned links in place.
pub struct Attached {
    pub iface: String,
    pub dir: PathBuf,
    pub ebpf: Ebpf,
}

pub fn attach(pin_root: &Path, iface_name: &str, ingress: IngressHook) -> Result<Attached> {
    iface::index(iface_name)?;
    bpffs::prepare(pin_root)?;
    let dir = pin_dir(pin_root, iface_name);
    std::fs::create_dir_all(&dir)
        .map_err(|e| AgentError::from_io(format!("creating {}", dir.display()), e))?;
    let mut ebpf = load(&dir, iface_name)?;
    match ingress {
        IngressHook::Tc => {
            attach_tc(
                &mut ebpf,
                iface_name,
                &dir,
                PROG_TC_INGRESS,
                TcAttachType::Ingress,
                LINK_TC_INGRESS,
            )?;
            remove_link(&dir.join(LINK_XDP_INGRESS))?;
        }
        IngressHook::Xdp => {
            attach_xdp(&mut ebpf, iface_name, &dir)?;
            remove_link(&dir.join(LINK_TC_INGRESS))?;
        }
    }
    attach_tc(
        &mut ebpf,
        iface_name,
        &dir,
        PROG_TC_EGRESS,
        TcAttachType::Egress,
        LINK_TC_EGRESS,
    )?;
    Ok(Attached {
        iface: iface_name.to_string(),
        dir,
        ebpf,
    })
}

/// Loads the object against the maps pinned in `dir` (creating and pinning
/// them if absent), without loading or attaching any program.
pub fn load(dir: &Path, iface_name: &str) -> Result<Ebpf> {
    EbpfLoader::new()
        .default_map_pin_directory(dir)
        .load(OBJECT)
        .map_err(|e| {
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

/// `load()` of the program types the datapath uses.
trait LoadProgram {
    fn load_program(&mut self) -> std::result::Result<(), aya::programs::ProgramError>;
}

impl LoadProgram for SchedClassifier {
    fn load_program(&mut self) -> std::result::Result<(), aya::programs::ProgramError> {
        self.load()
    }
}

impl LoadProgram for Xdp {
    fn load_program(&mut self) -> std::result::Result<(), aya::programs::ProgramError> {
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
        .map_err(|e| AgentError::from_io(format!("removing {}", path.display()), e))
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
/// and the HTB qdisc and IFB device of `--shaper htb`.
pub fn detach(pin_root: &Path, iface_name: &str) -> Result<()> {
    let dir = pin_dir(pin_root, iface_name);
    if !dir.join(session_common::MAP_CLIENTS).exists() && !dir.join(LINK_TC_EGRESS).exists() {
        return Err(AgentError::NotAttached {
            iface: iface_name.into(),
            dir,
        });
    }
    let htb = crate::dataplane::Maps::open(pin_root, iface_name)
        .map(|m| m.shaper() == Shaper::Htb)
        .unwrap_or(false);
    for l in [LINK_TC_INGRESS, LINK_XDP_INGRESS, LINK_TC_EGRESS] {
        remove_link(&dir.join(l))?;
    }
    // The programs no longer hand packets to them: remove the shaping devices.
    if htb || shape::ifb_exists(iface_name) {
        shape::teardown(iface_name)?;
    }
    std::fs::remove_dir_all(&dir)
        .map_err(|e| AgentError::from_io(format!("removing {}", dir.display()), e))
}
