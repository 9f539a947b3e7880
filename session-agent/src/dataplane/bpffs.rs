//! The BPF filesystem that holds the pins.

use std::{ffi::CString, path::Path};

use crate::error::{AgentError, Result};

const BPF_FS_MAGIC: u32 = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain data, valid all zeros.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statfs.
    let ok = unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0;
    // A filesystem magic is 32 bits; f_type is a signed 32-bit word on armhf,
    // where this one reads as negative.
    ok && st.f_type as u32 == BPF_FS_MAGIC
}

/// Makes sure `pin_root` lives on a BPF filesystem, mounting /sys/fs/bpf if
/// nothing is mounted there yet (as systemd does at boot), then creates it.
pub fn prepare(pin_root: &Path) -> Result<()> {
    let base = Path::new("/sys/fs/bpf");
    if pin_root.starts_with(base) && !is_bpffs(base) {
        std::fs::create_dir_all(base).map_err(|e| AgentError::NoBpffs {
            path: base.into(),
            source: e,
        })?;
        let (src, ty, dst) = (c"bpf", c"bpf", CString::new("/sys/fs/bpf").unwrap());
        // SAFETY: NUL-terminated strings that outlive the call; no mount data.
        if unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) } != 0
        {
            let e = std::io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM) => AgentError::NotPermitted {
                    what: "mounting /sys/fs/bpf (or mount it beforehand: `mount -t bpf bpf /sys/fs/bpf`, as systemd does at boot)".into(),
                    needs: &[crate::error::CAP_SYS_ADMIN],
                },
                _ => AgentError::NoBpffs {
                    path: base.into(),
                    source: e,
                },
            });
        }
    }
    std::fs::create_dir_all(pin_root)
        .map_err(|e| AgentError::file(format!("creating {}", pin_root.display()), e))?;
    if !is_bpffs(pin_root) {
        return Err(AgentError::NoBpffs {
            path: pin_root.into(),
            source: std::io::Error::other("not on a BPF filesystem"),
        });
    }
    Ok(())
}
