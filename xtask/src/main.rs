//! Project tasks: `cargo xtask build-ebpf | test | demo`.

mod api_bench;
mod arch;
mod bench;
mod demo;
mod kernel;
mod layers;
mod package;
mod schemathesis;
mod toolchain;

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "session-agent build, test and demo tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Control API benchmark: create+connect operations per second and p99 latency at 1 and 64 clients.
    BenchApi,
    /// Fleet benchmark: code logins per second through the agent against FreeRADIUS with
    /// PostgreSQL at 1, 10 and 100 at once (against radclient), and accounting at 10,000 sessions.
    BenchFleet,
    /// A busy hotspot compressed (root): paying clients' traffic while sessions are bought,
    /// paused, resumed and topped up, 5,000 hostile MACs, kill -9 and restarts and reloads;
    /// checks every byte charged once against nftables. The test suite runs 40 s of it.
    Soak {
        /// How long the schedule runs.
        #[arg(long, default_value_t = 30)]
        minutes: u64,
        /// Plays a run's schedule again (the seed a report names).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Install the eBPF toolchain if missing, then build session-ebpf for bpfel-unknown-none.
    BuildEbpf,
    /// Run Debian's clippy on session-ebpf for bpfel-unknown-none: its lints (every
    /// `unsafe` block with a `// SAFETY:` note) fail the run.
    LintEbpf,
    /// Run the whole test suite (root: real traffic in network namespaces), then a
    /// smoke subset on Debian's 6.1 kernel in QEMU.
    Test {
        /// Skip the smoke run on Linux 6.1 in QEMU.
        #[arg(long)]
        no_kernel: bool,
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run tests inside a QEMU guest (TCG) booting one of Debian's kernels
    /// (default 6.1, which has no TCX). Root: the tests need it in the guest too.
    TestKernel {
        /// Debian kernel series (package linux-image-<series>*-<flavour>: amd64-unsigned,
        /// arm64-unsigned, armmp).
        #[arg(long, default_value = "6.1")]
        kernel: String,
        /// The guest's architecture: another than this host's boots under qemu-system-aarch64
        /// or qemu-system-arm (`virt` machine) with cross-built tests and a Debian root of
        /// that architecture (mmdebstrap).
        #[arg(long, value_enum, default_value_t = arch::Arch::host())]
        arch: arch::Arch,
        /// Test executable to run, by target name (a file in tests/), `NAME:FILTER` for
        /// only some of its tests, `bench:NAME` for a benchmark's program-cost scenario
        /// (repeatable, or comma separated) [default: datapath, counting, restart].
        #[arg(long = "test", value_name = "NAME", value_delimiter = ',')]
        tests: Vec<String>,
        /// Stop the guest after this many minutes.
        #[arg(long, default_value_t = 60)]
        timeout_minutes: u64,
        /// Guest memory (QEMU -m).
        #[arg(long, default_value = "2G")]
        memory: String,
        /// Build the tests, the guest's root and the initramfs, and stop before booting.
        #[arg(long)]
        no_boot: bool,
        /// Set the guest kernel's `net.core.bpf_jit_enable` (0 or 1) before the tests
        /// [default: the kernel's own].
        #[arg(long, value_name = "0|1")]
        bpf_jit: Option<u8>,
        /// Test name filters and libtest flags for every executable (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Check that the agent's modules stay in their layers: no import from a
    /// lower layer to a higher one, none between front ends or between
    /// features, no files importing each other in a circle (run by `test`).
    Layers {
        /// Also print which unit imports which.
        #[arg(long)]
        graph: bool,
    },
    /// Only the schemathesis run of `test`: the control API against its OpenAPI document.
    Schemathesis,
    /// Build the Debian package (target/package/session-agent_*.deb) and run lintian on it.
    Package {
        /// The package's architecture: another than this host's is cross-built with
        /// Debian's rustc and cross gcc.
        #[arg(long, value_enum, default_value_t = arch::Arch::host())]
        arch: arch::Arch,
        /// Skip lintian.
        #[arg(long)]
        no_lintian: bool,
        /// Then install it into a throwaway Debian root (mmdebstrap, with systemd),
        /// verify its unit, remove and purge it.
        #[arg(long)]
        install_check: bool,
    },
    /// Run a demo hotspot in network namespaces with a live per-client table.
    Demo {
        /// How long to run before cleaning up (Ctrl-C stops earlier).
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Benchmark session-agent against no program, nftables and tc HTB; writes
    /// BENCHMARKS.md and bench/results.json.
    Bench {
        /// Fewer runs, clients and cases (a few minutes).
        #[arg(long)]
        quick: bool,
        /// Only these scenarios (numbers or names, comma separated): 1 program-cost,
        /// 2 forwarding, 3 rate-limit, 4 quota, 5 agent-cost.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Runs per figure (default 5, 2 with --quick).
        #[arg(long)]
        runs: Option<u32>,
        /// Only rewrite BENCHMARKS.md from bench/results.json, measuring nothing.
        #[arg(long)]
        report: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::BuildEbpf => {
            toolchain::ensure_ebpf()?;
            let obj = build_ebpf()?;
            println!(
                "built {} ({} bytes)",
                obj.display(),
                std::fs::metadata(&obj)?.len()
            );
            Ok(())
        }
        Cmd::LintEbpf => {
            toolchain::ensure_ebpf()?;
            toolchain::ensure_ebpf_clippy()?;
            lint_ebpf()
        }
        Cmd::Test { args, no_kernel } => test(args, no_kernel),
        Cmd::TestKernel {
            kernel,
            arch,
            tests,
            timeout_minutes,
            memory,
            no_boot,
            bpf_jit,
            args,
        } => {
            require_root("test-kernel")?;
            toolchain::ensure_ebpf()?;
            toolchain::ensure_net_tools()?;
            toolchain::ensure_qemu(arch)?;
            arch.ensure_toolchain()?;
            let tests = if tests.is_empty() && !arch.is_host() {
                kernel::ARM_SMOKE_TESTS
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            } else if tests.is_empty() {
                kernel::DEFAULT_TESTS
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            } else {
                tests
            };
            let opts = kernel::Options {
                kernel,
                arch,
                tests,
                args,
                timeout: std::time::Duration::from_secs(timeout_minutes * 60),
                memory,
                bpf_jit,
            };
            let guest = kernel::prepare(&opts)?;
            if no_boot {
                return Ok(());
            }
            guest.boot(&opts)
        }
        Cmd::BenchApi => api_bench::run("api_bench"),
        Cmd::BenchFleet => api_bench::run("fleet_bench"),
        Cmd::Soak { minutes, seed } => soak(minutes, seed),
        Cmd::Layers { graph } => layers::run(&root_dir(), graph),
        Cmd::Package {
            arch,
            no_lintian,
            install_check,
        } => {
            toolchain::ensure_ebpf()?;
            arch.ensure_toolchain()?;
            let deb = package::build(arch)?;
            if !no_lintian {
                package::lintian(&deb)?;
            }
            if install_check {
                require_root("the install check (chroot)")?;
                package::install_check(&deb, arch)?;
            }
            Ok(())
        }
        Cmd::Schemathesis => {
            require_root("schemathesis (it starts an agent in a test hotspot)")?;
            toolchain::ensure_ebpf()?;
            toolchain::ensure_net_tools()?;
            toolchain::ensure_bpffs()?;
            let bin = build_agent()?;
            schemathesis::run(&bin)
        }
        Cmd::Demo { seconds } => {
            require_root("the demo")?;
            toolchain::ensure_ebpf()?;
            toolchain::ensure_net_tools()?;
            let bin = build_agent()?;
            demo::run(&bin, seconds)
        }
        Cmd::Bench { report: true, .. } => bench::rewrite_report(),
        Cmd::Bench {
            quick, only, runs, ..
        } => {
            require_root("the benchmark")?;
            toolchain::ensure_ebpf()?;
            toolchain::ensure_net_tools()?;
            toolchain::ensure_bpffs()?;
            let bin = build_agent()?;
            bench::run(&bin, quick, &only, runs)
        }
    }
}

pub fn root_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root_dir())
        .env("CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS", "fallback");
    c
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Builds the eBPF object the same way the agent's build script does.
fn build_ebpf() -> Result<PathBuf> {
    let target_dir = root_dir().join("target/ebpf");
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root_dir().join("session-ebpf"))
        .args([
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "--target-dir",
        ])
        .arg(&target_dir)
        .env("RUSTC", toolchain::BPF_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("PATH", toolchain::path_with_cargo_bin())
        .env("CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS", "fallback")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET");
    run(&mut c)?;
    Ok(target_dir.join("bpfel-unknown-none/release/session-ebpf"))
}

/// Checks session-ebpf with Debian's clippy-driver (the rustup one has no core
/// for the BPF target), with the build's compiler and flags; the crate's
/// `[lints]` deny undocumented unsafe blocks.
fn lint_ebpf() -> Result<()> {
    println!("==> clippy on session-ebpf (bpfel-unknown-none)");
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root_dir().join("session-ebpf"))
        .args(["check", "--release", "--target", "bpfel-unknown-none"])
        .arg("--target-dir")
        .arg(root_dir().join("target/ebpf-clippy"))
        .env("RUSTC", toolchain::BPF_RUSTC)
        .env("RUSTC_WORKSPACE_WRAPPER", toolchain::BPF_CLIPPY_DRIVER)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("PATH", toolchain::path_with_cargo_bin())
        .env("CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS", "fallback")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET");
    run(&mut c).context("session-ebpf has clippy errors (above)")
}

/// Builds the agent (which embeds the eBPF object) and returns its path.
pub fn build_agent() -> Result<PathBuf> {
    build_agent_for(arch::Arch::host())
}

/// Builds the agent for `arch` (cross-built when it is not this host's).
pub fn build_agent_for(arch: arch::Arch) -> Result<PathBuf> {
    println!("==> building session-agent ({})", arch.triple());
    let (mut c, target) = arch.cargo();
    run(c.args(["build", "-p", "session-agent"]).args(&target))?;
    Ok(arch.out_dir("debug").join("session-agent"))
}

fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} needs root (network namespaces, BPF): run it with sudo, or as root");
    }
    Ok(())
}

/// Test files that `test` runs a second time with netlink TC filters.
const NETLINK_TESTS: &[&str] = &[
    "counting",
    "blocking",
    "restart",
    "detach",
    "redirect",
    "garden_names",
];
/// Test files that `test` runs again with the agent holding only the packaged
/// unit's capabilities.
const SERVICE_CAPS_TESTS: &[&str] = &[
    "counting",
    "blocking",
    "restart",
    "vouchers",
    "portal",
    "redirect",
    "garden_names",
    "radius",
];

/// `cargo xtask soak`: the soak test's long run, on a release agent.
fn soak(minutes: u64, seed: Option<u64>) -> Result<()> {
    require_root("the soak (it builds a test hotspot)")?;
    toolchain::ensure_ebpf()?;
    toolchain::ensure_net_tools()?;
    toolchain::ensure_bpffs()?;
    println!("==> building session-agent (release)");
    run(cargo().args(["build", "--release", "-p", "session-agent"]))?;
    let bin = root_dir().join("target/release/session-agent");
    println!("==> soak: {minutes} min (the report: target/soak/report.md and soak.png)");
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--release",
        "-p",
        "session-tests",
        "--test",
        "soak",
        "--",
        "--nocapture",
    ])
    .env("SESSION_AGENT_BIN", &bin)
    .env("SESSION_SOAK_SECS", (minutes * 60).to_string());
    if let Some(seed) = seed {
        cmd.env("SESSION_SOAK_SEED", seed.to_string());
    }
    run(&mut cmd)?;
    println!("==> soak passed: target/soak/report.md and target/soak/soak.png");
    Ok(())
}

fn test(args: Vec<String>, no_kernel: bool) -> Result<()> {
    println!("==> cargo xtask layers");
    layers::run(&root_dir(), false)?;
    require_root("the test suite")?;
    disk_check("before the build", MIN_FREE_GIB)?;
    toolchain::ensure_ebpf()?;
    toolchain::ensure_net_tools()?;
    toolchain::ensure_browser()?;
    toolchain::ensure_bpffs()?;
    toolchain::ensure_ebpf_clippy()?;
    lint_ebpf()?;
    let bin = build_agent()?;
    println!("==> cargo test --workspace");
    run(cargo()
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(&args)
        .env("SESSION_AGENT_BIN", &bin))?;
    // The legacy attach of kernels before 6.6, on this kernel too.
    println!("==> real-traffic tests again with --tc-attach netlink");
    run(cargo()
        .args(["test", "-p", "session-tests", "--no-fail-fast"])
        .args(NETLINK_TESTS.iter().flat_map(|t| ["--test", t]))
        .args(&args)
        .env("SESSION_AGENT_BIN", &bin)
        .env("SESSION_TESTS_TC_ATTACH", "netlink"))?;
    println!("==> real-traffic tests again with only the service's capabilities");
    run(cargo()
        .args(["test", "-p", "session-tests", "--no-fail-fast"])
        .args(SERVICE_CAPS_TESTS.iter().flat_map(|t| ["--test", t]))
        .args(&args)
        .env("SESSION_AGENT_BIN", &bin)
        .env("SESSION_TESTS_CAPS", "service"))?;
    schemathesis::run(&bin)?;
    if no_kernel {
        return Ok(());
    }
    disk_check(
        "before the QEMU guests and the arm64 build",
        MIN_FREE_GIB_GUESTS,
    )?;
    // The arm64 package and the arm64 guest's tests are cross-built while the
    // x86 guests run (a guest under TCG keeps about one core busy).
    // Everything apt installs comes first: two apt-gets at once would fight over dpkg's lock.
    toolchain::ensure_qemu(arch::Arch::host())?;
    toolchain::ensure_qemu(arch::Arch::Arm64)?;
    toolchain::ensure_lintian()?;
    arch::Arch::Arm64.ensure_toolchain()?;
    let arm64 = arm64_build();
    println!("==> smoke tests on Linux 6.1 in QEMU (cargo xtask test-kernel runs more)");
    kernel::run(&smoke("6.1", arch::Arch::host(), kernel::SMOKE_TESTS, 30))?;
    println!("==> counting, sessions and restart on Linux 6.12 in QEMU");
    let t = std::time::Instant::now();
    kernel::run(&smoke(
        "6.12",
        arch::Arch::host(),
        kernel::NEWER_SMOKE_TESTS,
        10,
    ))?;
    println!(
        "==> Linux 6.12 smoke tests took {} s",
        t.elapsed().as_secs()
    );
    arm64.join()?;
    println!("==> the arm64 smoke on Debian's arm64 6.12 in QEMU (Cortex-A53)");
    let t = std::time::Instant::now();
    kernel::run(&smoke(
        "6.12",
        arch::Arch::Arm64,
        kernel::ARM_SMOKE_TESTS,
        20,
    ))?;
    println!("==> the arm64 smoke took {} s", t.elapsed().as_secs());
    disk_check("at the end", 0)?;
    Ok(())
}

/// Free disk the whole suite needs from a clean clone: the native debug and
/// release builds, the x86 guests' tests, the arm64 package and tests, the
/// kernels and the guests' roots (about 6 GB in all, measured), with a margin.
const MIN_FREE_GIB: u64 = 8;
/// What is still needed once the native tests have run (about 2.5 GB).
const MIN_FREE_GIB_GUESTS: u64 = 4;

/// Prints the free space beside target/ and refuses to go on below `need`
/// GiB: a full disk otherwise shows as a linker's bus error deep in a build.
fn disk_check(stage: &str, need: u64) -> Result<()> {
    let target = root_dir().join("target");
    std::fs::create_dir_all(&target)?;
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(&target)
        .output()
        .context("running df")?;
    let free: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("df printed no free space for {}", target.display()))?;
    let gib = free as f64 / (1u64 << 30) as f64;
    println!(
        "==> disk: {gib:.1} GiB free beside {} {stage}",
        target.display()
    );
    if gib < need as f64 {
        bail!(
            "only {gib:.1} GiB free beside {} {stage}; the test suite needs about {need} GiB: \
             free some (`cargo clean` removes old builds)",
            target.display()
        );
    }
    Ok(())
}

/// A smoke run of `cargo xtask test`: these tests on Debian's `series` for
/// `arch`, stopped after `minutes`.
fn smoke(series: &str, arch: arch::Arch, tests: &[&str], minutes: u64) -> kernel::Options {
    kernel::Options {
        kernel: series.into(),
        arch,
        tests: tests.iter().map(|s| s.to_string()).collect(),
        args: Vec::new(),
        timeout: std::time::Duration::from_secs(minutes * 60),
        memory: "2G".into(),
        bpf_jit: None,
    }
}

/// In the background: `cargo xtask package --arch arm64` (with lintian) and the
/// arm64 guest's tests and root (`test-kernel --arch arm64 --no-boot`), their
/// output in target/arm64-build.log, shown when they fail.
/// If `cargo xtask test` stops early (a guest failed), the child xtask is
/// killed and no further step starts; a cargo it was running finishes its
/// build alone. (The child stays in the terminal's process group, so that
/// Ctrl-C still stops all of it.)
fn arm64_build() -> Background {
    let child = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
    let running = child.clone();
    let handle = std::thread::spawn(move || {
        let log_path = root_dir().join("target/arm64-build.log");
        let exe = std::env::current_exe()?;
        let started = std::time::Instant::now();
        let steps: [&[&str]; 2] = [
            &["package", "--arch", "arm64"],
            &[
                "test-kernel",
                "--arch",
                "arm64",
                "--kernel",
                "6.12",
                "--no-boot",
            ],
        ];
        let log = std::fs::File::create(&log_path)?;
        for args in steps {
            // At the lowest priority: the guest beside it is what everything waits for.
            let mut child = Command::new("nice")
                .args(["-n", "19"])
                .arg(&exe)
                .args(args)
                .current_dir(root_dir())
                .stdout(log.try_clone()?)
                .stderr(log.try_clone()?)
                .spawn()?;
            running.store(child.id() as i32, std::sync::atomic::Ordering::SeqCst);
            let status = child.wait();
            running.store(0, std::sync::atomic::Ordering::SeqCst);
            let status = status?;
            if !status.success() {
                let text = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                for l in tail.into_iter().rev() {
                    println!("    [arm64] {l}");
                }
                bail!(
                    "xtask {} failed ({status}); its output is in {}",
                    args.join(" "),
                    log_path.display()
                );
            }
        }
        println!(
            "==> the arm64 package and the arm64 guest's tests were built in the background in {} s ({})",
            started.elapsed().as_secs(),
            log_path.display()
        );
        Ok(())
    });
    Background {
        handle: Some(handle),
        child,
    }
}

/// Work on a thread that runs children one after another.
struct Background {
    handle: Option<std::thread::JoinHandle<Result<()>>>,
    /// The running child's pid (0: none running).
    child: std::sync::Arc<std::sync::atomic::AtomicI32>,
}

impl Background {
    fn join(mut self) -> Result<()> {
        self.handle
            .take()
            .expect("joined once")
            .join()
            .map_err(|_| anyhow::anyhow!("the background thread panicked"))?
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let pid = self.child.load(std::sync::atomic::Ordering::SeqCst);
        if self.handle.is_some() && pid > 0 {
            // Not joined: `cargo xtask test` is stopping early.
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
}
