//! Builds the eBPF object (session-ebpf) that the agent embeds.
//!
//! The object is compiled with Debian's `rustc` (it ships `core` prebuilt for
//! bpfel-unknown-none) and linked by `bpf-linker`; `cargo xtask build-ebpf`
//! installs both. `SESSION_EBPF_OBJECT=/path/to/object` embeds a prebuilt one.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const BPF_RUSTC: &str = "/usr/bin/rustc";

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join("session-ebpf.o");
    println!("cargo:rerun-if-env-changed=SESSION_EBPF_OBJECT");
    for p in [
        "session-ebpf/src",
        "session-ebpf/Cargo.toml",
        "session-ebpf/Cargo.lock",
        "session-ebpf/.cargo/config.toml",
        "session-common/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    if let Some(obj) = env::var_os("SESSION_EBPF_OBJECT") {
        std::fs::copy(&obj, &out).unwrap_or_else(|e| panic!("SESSION_EBPF_OBJECT={obj:?}: {e}"));
        return;
    }
    let cargo_bin = home().join(".cargo/bin");
    let linker_ok = cargo_bin.join("bpf-linker").exists() || which("bpf-linker");
    if !Path::new(BPF_RUSTC).exists() || !linker_ok {
        panic!(
            "\n\nThe eBPF toolchain is missing ({BPF_RUSTC} with the bpfel-unknown-none core, and bpf-linker).\n\
             Run `cargo xtask build-ebpf` once: it installs Debian's rustc-web and bpf-linker.\n\n"
        );
    }
    let target_dir = root.join("target/ebpf");
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root.join("session-ebpf"))
        .args(["build", "--release", "--target", "bpfel-unknown-none"])
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's settings (host target, flags, wrappers) must not leak into the BPF build.
    for (k, _) in env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if (k.starts_with("CARGO_") && k != "CARGO_HOME")
            || k.starts_with("RUSTC")
            || k == "RUSTFLAGS"
            || k == "RUSTDOC"
        {
            cmd.env_remove(&k);
        }
    }
    let path = env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![cargo_bin];
    paths.extend(env::split_paths(&path));
    cmd.env("PATH", env::join_paths(paths).unwrap())
        .env("RUSTC", BPF_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS", "fallback");
    let status = cmd.status().expect("running cargo for session-ebpf");
    assert!(status.success(), "building session-ebpf failed ({status})");
    let built = target_dir.join("bpfel-unknown-none/release/session-ebpf");
    std::fs::copy(&built, &out).unwrap_or_else(|e| panic!("copying {}: {e}", built.display()));
}

fn home() -> PathBuf {
    env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into())
}

fn which(bin: &str) -> bool {
    env::var_os("PATH").is_some_and(|p| env::split_paths(&p).any(|d| d.join(bin).exists()))
}
