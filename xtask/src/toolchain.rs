//! Installs what building and testing need, each step only when missing.

use std::{ffi::OsString, path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

/// Debian's rustc, which ships `core` prebuilt for bpfel-unknown-none.
pub const BPF_RUSTC: &str = "/usr/bin/rustc";
/// Debian's clippy for that rustc (package rust-web-clippy), which lints
/// session-ebpf for bpfel-unknown-none (`cargo xtask lint-ebpf`).
pub const BPF_CLIPPY_DRIVER: &str = "/usr/bin/clippy-driver";
const BPF_CORE_DIR: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Packages for the eBPF build: the BPF core library, and LLVM 22 for bpf-linker.
const EBPF_PACKAGES: &[&str] = &[
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
/// Packages for `test-kernel` besides QEMU: the guest's init, depmod/modprobe,
/// the initramfs packer, the kernel modules' decompressor and, for a guest of
/// another architecture, mmdebstrap for its root.
const QEMU_PACKAGES: &[&str] = &["busybox-static", "kmod", "cpio", "xz-utils", "mmdebstrap"];
/// Packages for the tests and the demo.
const NET_PACKAGES: &[&str] = &[
    "iproute2",
    "nftables",
    "iperf3",
    "util-linux",
    "dnsmasq-base",
    "freeradius",
    "freeradius-utils",
    "freeradius-postgresql",
    "postgresql",
];
/// Packages for the browser tests: Chromium and its WebDriver.
const BROWSER_PACKAGES: &[&str] = &["chromium", "chromium-driver"];

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into())
}

fn cargo_bin() -> PathBuf {
    home().join(".cargo/bin")
}

/// PATH with ~/.cargo/bin first, where `cargo install` puts bpf-linker.
pub fn path_with_cargo_bin() -> OsString {
    let mut paths = vec![cargo_bin()];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(paths).unwrap()
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

pub fn apt_install(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "missing Debian packages {}: install them as root (apt-get install {})",
            missing.join(", "),
            missing.join(" ")
        );
    }
    println!("==> installing Debian packages: {}", missing.join(" "));
    crate::run(Command::new("apt-get").arg("update").arg("-q"))?;
    crate::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn bpf_linker_works() -> bool {
    Command::new(cargo_bin().join("bpf-linker"))
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        || Command::new("bpf-linker")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
}

/// Debian's rustc with the BPF core library, and bpf-linker built against LLVM 22.
pub fn ensure_ebpf() -> Result<()> {
    let has_core = std::fs::read_dir(BPF_CORE_DIR).is_ok_and(|mut d| {
        d.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libcore-")))
    });
    if !has_core || !std::path::Path::new(BPF_RUSTC).exists() || !bpf_linker_works() {
        apt_install(EBPF_PACKAGES)?;
    }
    if !bpf_linker_works() {
        println!("==> installing bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (takes about 4 minutes)");
        let mut path = vec![PathBuf::from(LLVM_PREFIX).join("bin")];
        path.extend(std::env::split_paths(&path_with_cargo_bin()));
        crate::run(
            Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
                .args([
                    "install",
                    "bpf-linker",
                    "--version",
                    BPF_LINKER_VERSION,
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ])
                .env("LLVM_PREFIX", LLVM_PREFIX)
                .env("PATH", std::env::join_paths(path)?),
        )
        .context("building bpf-linker")?;
    }
    Ok(())
}

/// Debian's clippy-driver matching its rustc, for `lint-ebpf`.
pub fn ensure_ebpf_clippy() -> Result<()> {
    if std::path::Path::new(BPF_CLIPPY_DRIVER).exists() {
        return Ok(());
    }
    apt_install(&["rust-web-clippy"])
}

pub fn ensure_qemu(arch: crate::arch::Arch) -> Result<()> {
    apt_install(QEMU_PACKAGES)?;
    apt_install(&[arch.qemu_system().1])
}

/// mmdebstrap, for the package's install check.
pub fn ensure_mmdebstrap() -> Result<()> {
    apt_install(&["mmdebstrap"])
}

/// lintian, for `cargo xtask package`.
pub fn ensure_lintian() -> Result<()> {
    apt_install(&["lintian"])
}

pub fn ensure_net_tools() -> Result<()> {
    apt_install(NET_PACKAGES)
}

/// Installs Chromium and chromedriver for the browser tests.
pub fn ensure_browser() -> Result<()> {
    apt_install(BROWSER_PACKAGES)
}

/// Mounts bpffs at /sys/fs/bpf if nothing is there (as systemd does at boot).
pub fn ensure_bpffs() -> Result<()> {
    let mounted = Command::new("mountpoint")
        .args(["-q", "/sys/fs/bpf"])
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        println!("==> mounting bpffs at /sys/fs/bpf");
        std::fs::create_dir_all("/sys/fs/bpf").ok();
        crate::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    Ok(())
}
