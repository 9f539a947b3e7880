//! The Debian architectures the agent is built for, and how to build for one
//! that is not this host's: Debian's rustc (`rustc-web`) with the target's
//! standard library from Debian's multiarch (`libstd-rust-web-dev:<arch>`),
//! Debian's cross gcc as the linker, a target directory of its own
//! (`target/<arch>`, so the host's builds keep theirs), and qemu-user to run
//! what was built. rustup cannot download other targets here; Debian's archive
//! can bring the one its rustc needs.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    Amd64,
    Arm64,
    Armhf,
}

impl Arch {
    /// The architecture this xtask runs on.
    pub fn host() -> Arch {
        match std::env::consts::ARCH {
            "aarch64" => Arch::Arm64,
            "arm" => Arch::Armhf,
            _ => Arch::Amd64,
        }
    }

    pub fn is_host(self) -> bool {
        self == Arch::host()
    }

    /// Debian's name (`dpkg --print-architecture`).
    pub fn deb(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
            Arch::Armhf => "armhf",
        }
    }

    /// Rust's target triple, the one Debian's standard library is built for.
    pub fn triple(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-unknown-linux-gnu",
            Arch::Arm64 => "aarch64-unknown-linux-gnu",
            Arch::Armhf => "armv7-unknown-linux-gnueabihf",
        }
    }

    /// The GNU triple: the cross tools' prefix and `/usr/<gnu>` (the target's libc).
    pub fn gnu(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-linux-gnu",
            Arch::Arm64 => "aarch64-linux-gnu",
            Arch::Armhf => "arm-linux-gnueabihf",
        }
    }

    /// The flavour of Debian's kernel package for this architecture
    /// (`linux-image-<version>-<flavour>`).
    pub fn kernel_flavour(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64-unsigned",
            Arch::Arm64 => "arm64-unsigned",
            Arch::Armhf => "armmp",
        }
    }

    /// The QEMU system emulator and its Debian package.
    pub fn qemu_system(self) -> (&'static str, &'static str) {
        match self {
            Arch::Amd64 => ("qemu-system-x86_64", "qemu-system-x86"),
            Arch::Arm64 => ("qemu-system-aarch64", "qemu-system-arm"),
            Arch::Armhf => ("qemu-system-arm", "qemu-system-arm"),
        }
    }

    /// The qemu-user emulator (package qemu-user-static) for this architecture.
    fn qemu_user(self) -> &'static str {
        match self {
            Arch::Amd64 => "qemu-x86_64-static",
            Arch::Arm64 => "qemu-aarch64-static",
            Arch::Armhf => "qemu-arm-static",
        }
    }

    /// Where cargo puts this architecture's builds.
    pub fn target_dir(self) -> PathBuf {
        let target = crate::root_dir().join("target");
        if self.is_host() {
            target
        } else {
            target.join(self.deb())
        }
    }

    /// The directory of a profile's outputs (`debug`, `release`).
    pub fn out_dir(self, profile: &str) -> PathBuf {
        if self.is_host() {
            self.target_dir().join(profile)
        } else {
            self.target_dir().join(self.triple()).join(profile)
        }
    }

    /// `cargo` for this architecture: the host's as it is, or a cross build
    /// (pass the returned arguments after the subcommand).
    pub fn cargo(self) -> (Command, Vec<String>) {
        let mut c = crate::cargo();
        if self.is_host() {
            return (c, Vec::new());
        }
        let upper = self.triple().to_uppercase().replace('-', "_");
        let lower = self.triple().replace('-', "_");
        let gcc = format!("{}-gcc", self.gnu());
        c.env("RUSTC", crate::toolchain::BPF_RUSTC)
            .env("CARGO_TARGET_DIR", self.target_dir())
            .env(format!("CARGO_TARGET_{upper}_LINKER"), &gcc)
            .env(format!("CC_{lower}"), &gcc)
            .env(format!("AR_{lower}"), format!("{}-ar", self.gnu()))
            // The package is stripped and the tests run once: no debug info
            // or incremental caches, which would only take disk.
            .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
            .env("CARGO_INCREMENTAL", "0")
            .env_remove("RUSTFLAGS");
        (c, vec!["--target".into(), self.triple().into()])
    }

    /// A command that runs a binary built for this architecture on this host
    /// (through qemu-user, with the cross libc, for a foreign one).
    pub fn run_binary(self, bin: &Path) -> Command {
        if self.is_host() {
            return Command::new(bin);
        }
        let mut c = Command::new(self.qemu_user());
        c.arg("-L").arg(format!("/usr/{}", self.gnu())).arg(bin);
        c
    }

    /// binutils' objcopy for this architecture.
    pub fn objcopy(self) -> String {
        if self.is_host() {
            "objcopy".into()
        } else {
            format!("{}-objcopy", self.gnu())
        }
    }

    /// Installs what a cross build needs: the architecture in dpkg, Debian's
    /// rustc and its standard library for the target, the cross gcc and libc,
    /// and qemu-user with binfmt_misc (for running and installing the result).
    pub fn ensure_toolchain(self) -> Result<()> {
        if self.is_host() {
            return Ok(());
        }
        let foreign = Command::new("dpkg")
            .arg("--print-foreign-architectures")
            .output()?;
        if !String::from_utf8_lossy(&foreign.stdout)
            .split_whitespace()
            .any(|a| a == self.deb())
        {
            println!("==> dpkg --add-architecture {}", self.deb());
            crate::run(Command::new("dpkg").args(["--add-architecture", self.deb()]))?;
            crate::run(Command::new("apt-get").args(["update", "-q"]))?;
        }
        let std = format!("libstd-rust-web-dev:{}", self.deb());
        let gcc = format!("gcc-{}", self.gnu());
        let libc = format!(
            "libc6-dev-{}-cross",
            match self {
                Arch::Armhf => "armhf",
                a => a.deb(),
            }
        );
        crate::toolchain::apt_install(&[
            "rustc-web",
            &std,
            &gcc,
            &libc,
            "qemu-user-static",
            "binfmt-support",
            // mmdebstrap's check that a foreign root's programs can run.
            "arch-test",
        ])?;
        ensure_binfmt(self)
    }
}

/// binfmt_misc mounted and this architecture's qemu-user registered (mmdebstrap
/// runs a foreign root's maintainer scripts through it).
fn ensure_binfmt(arch: Arch) -> Result<()> {
    let dir = Path::new("/proc/sys/fs/binfmt_misc");
    if !dir.join("register").exists() {
        crate::run(
            Command::new("mount")
                .args(["-t", "binfmt_misc", "binfmt_misc"])
                .arg(dir),
        )?;
    }
    let name = arch.qemu_user().trim_end_matches("-static");
    if !dir.join(name).exists() {
        crate::run(Command::new("update-binfmts").args(["--enable", name]))?;
    }
    if !dir.join(name).exists() {
        bail!(
            "binfmt_misc has no {name} after update-binfmts --enable {name} (package qemu-user-static)"
        );
    }
    Ok(())
}
