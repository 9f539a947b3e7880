//! `cargo xtask test-kernel`: runs test executables built on this host inside a
//! QEMU guest that boots one of Debian's kernels (6.1 by default: no TCX).
//!
//! The guest has no network device and no disk. Its root is the host's root,
//! shared read-only over virtio-9p, with tmpfs on /tmp, /run and /var/tmp and
//! bpffs on /sys/fs/bpf; the test executables, the agent and the kernel's
//! modules are all reached through that share. One small writable share
//! brings the exit status back. QEMU runs under TCG: KVM is not used.
//!
//! A guest of another architecture (`--arch arm64|armhf`: Debian's arm64 or
//! armmp kernel on QEMU's `virt` machine) cannot run the host's programs: its
//! root is a Debian root of its own architecture (mmdebstrap, with the tools the
//! tests call), and the host's root is shared beside it, at /host, from which
//! the workspace (the cross-built tests and agent, the kernel's modules) is
//! bound at the same paths as on the host.

use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::arch::Arch;

/// Test executables run when none is named: the datapath program tests and
/// the real-traffic counting and restart tests (about 3.5 minutes under TCG).
pub const DEFAULT_TESTS: &[&str] = &["datapath", "counting", "restart"];

/// What `cargo xtask test` runs on the oldest kernel (about 9 minutes under TCG):
/// the netlink filters' life cycle, every datapath program test, the gate's and
/// the portal redirect's, exact counts against nftables, kill -9 and restart;
/// the verifier's cost of each program, and the gate's cheaper flood cases
/// (MACs without a slot, the gateway as a relay, source routes, fragments).
pub const SMOKE_TESTS: &[&str] = &[
    "verifier",
    "tc_attach",
    "datapath",
    "gate",
    "gate_floods:macs_without_a_slot_get_only",
    "gate_floods:a_paying_clients_dns_through_the_gateway_is_usage_until_the_cut_off",
    "gate_floods:source_routed_packets_never_pass",
    "gate_floods:later_fragments_pass_only",
    "redirect_datapath",
    "names_datapath",
    "counting:exact_counts_tcp_udp_ipv4_ipv6_match_reference",
    "restart:kill9_keeps_dataplane_and_restart_continues_counters",
];

/// What `cargo xtask test` runs on Debian's 6.12 as well (about 140 s in the guest under
/// TCG, plus the kernel's download): exact counts, a data session cut off under
/// TCP, the portal redirect, kill -9 and restart, with TCX links; what the
/// verifier spent on each program, a DNS tunnel through the gateway, the
/// gateway's addresses from its local routing table, and the wall clock stepped
/// a day either way under a connected time session (only a throwaway guest may
/// step its clock).
pub const NEWER_SMOKE_TESTS: &[&str] = &[
    "verifier",
    "floods:a_dns_tunnel_through_the_gateway",
    "floods:the_gateways_addresses_are_the_kernels",
    "counting:exact_counts_tcp_udp_ipv4_ipv6_match_reference",
    "sessions_data:data_session_cut_off_under_tcp_download",
    "redirect:an_unpaid_client_is_sent_to_the_portal_and_its_other_tcp_is_reset_at_once",
    "restart:kill9_keeps_dataplane_and_restart_continues_counters",
    "clock_step",
];

/// What `cargo xtask test-kernel --arch arm64|armhf` runs when no test is named, and
/// what `cargo xtask test` runs on arm64's 6.12: the verifier's cost of each
/// program (loaded by the arm64 JIT), the gate's frame tests, exact counts against
/// nftables, a data cut-off under TCP, kill -9 and restart, and the program's
/// cost per packet against a no-op program in the same guest (the datapath
/// benchmark's first scenario, `bench:datapath`).
pub const ARM_SMOKE_TESTS: &[&str] = &[
    "verifier",
    "gate",
    "counting:exact_counts_tcp_udp_ipv4_ipv6_match_reference",
    "sessions_data:data_session_cut_off_under_tcp_download",
    "restart:kill9_keeps_dataplane_and_restart_continues_counters",
    "bench:datapath",
];

/// Tools the tests call, for the Debian root of a guest of another architecture;
/// busybox-static is the initramfs's shell.
const GUEST_ROOT_PACKAGES: &str =
    "busybox-static,iproute2,nftables,iperf3,kmod,mount,util-linux,procps,libcap2-bin";

/// Modules needed before the host root can be mounted (Debian builds them as modules).
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];

/// Printed by the guest with the tests' exit status, in case the status file is lost.
const STATUS_MARKER: &str = "SESSION-VM-STATUS=";

/// How the guest marks itself as a throwaway machine, for tests that change
/// what they must not change on a real one (`clock_step` steps the wall
/// clock): a word on its kernel command line, and a variable its pid 1
/// exports. A test checks both.
const GUEST_CMDLINE_MARK: &str = "session_test_guest=1";
const GUEST_ENV_MARK: &str = "SESSION_TEST_GUEST=1";

pub struct Options {
    /// Debian kernel series, e.g. "6.1".
    pub kernel: String,
    pub arch: Arch,
    /// Test executables (target names) to run.
    pub tests: Vec<String>,
    /// Arguments for every test executable (libtest filters and flags).
    pub args: Vec<String>,
    pub timeout: Duration,
    pub memory: String,
    /// `net.core.bpf_jit_enable` for the guest, if not the kernel's default.
    pub bpf_jit: Option<u8>,
}

pub fn run(opts: &Options) -> Result<()> {
    prepare(opts)?.boot(opts)
}

/// A guest ready to boot: its kernel, initramfs and scripts.
pub struct Prepared {
    kernel: Kernel,
    initrd: PathBuf,
    out: PathBuf,
}

/// Fetches the kernel, builds the agent and the tests (for the guest's
/// architecture), the guest's root if it needs its own, and the initramfs.
pub fn prepare(opts: &Options) -> Result<Prepared> {
    let agent = crate::build_agent_for(opts.arch)?;
    let exes = build_tests(&opts.tests, opts.arch)?;
    stage(&opts.kernel, opts.arch, |out, kernel, guest_root| {
        write_guest_scripts(out, kernel, &agent, &exes, opts, guest_root)
    })
}

/// The kernel, the guest's own root (another architecture), the initramfs and
/// an empty status share, for which `script` writes the guest's scripts.
fn stage(
    series: &str,
    arch: Arch,
    script: impl FnOnce(&Path, &Kernel, Option<&Path>) -> Result<()>,
) -> Result<Prepared> {
    let work = crate::root_dir().join("target/kernel");
    std::fs::create_dir_all(&work)?;
    let kernel = fetch_kernel(&work, series, arch)?;
    let guest_root = if arch.is_host() {
        None
    } else {
        Some(guest_root(&work, arch)?)
    };
    println!("==> building the initramfs");
    let initrd = build_initramfs(&work, &kernel, arch, guest_root.as_deref())?;
    let out = work.join(format!("out-{}", arch.deb()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    script(&out, &kernel, guest_root.as_deref())?;
    Ok(Prepared {
        kernel,
        initrd,
        out,
    })
}

impl Prepared {
    /// Boots the guest; an error unless every test passed.
    pub fn boot(&self, opts: &Options) -> Result<()> {
        let kernel = &self.kernel;
        println!(
            "==> booting Linux {} ({}) under QEMU (TCG, no KVM; everything runs 10-50x slower)",
            kernel.release,
            opts.arch.deb()
        );
        match boot(kernel, &self.initrd, &self.out, opts)? {
            0 => {
                println!("==> all tests passed on Linux {}", kernel.release);
                Ok(())
            }
            s => bail!("tests failed on Linux {} (exit status {s})", kernel.release),
        }
    }
}

/// Boots a guest of `arch` on Debian's `series` kernel, with the workspace at
/// its path, and runs `body` (bash, after the guest's mounts; it sets `status`
/// to fail); an error unless the guest reports status 0.
pub fn run_script(arch: Arch, series: &str, body: &str, timeout: Duration) -> Result<()> {
    let guest = stage(series, arch, |out, kernel, guest_root| {
        let keep = [crate::root_dir(), out.to_path_buf()];
        write_script(out, kernel, None, &keep, body, guest_root)
    })?;
    guest.boot(&Options {
        kernel: series.into(),
        arch,
        tests: Vec::new(),
        args: Vec::new(),
        timeout,
        memory: "1G".into(),
        bpf_jit: None,
    })
}

pub struct Kernel {
    /// `uname -r` of the guest, e.g. 6.1.0-56-amd64.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// The package's root: `lib/modules/<release>` is below it.
    pub root: PathBuf,
}

/// The newest `linux-image-<series>…-<flavour>` package apt knows.
fn kernel_package(series: &str, arch: Arch) -> Result<Option<String>> {
    let out = Command::new("apt-cache")
        .args(["search", "--names-only"])
        .arg(format!(
            "^linux-image-{}[.-].*-{}$",
            series.replace('.', "\\."),
            arch.kernel_flavour()
        ))
        .output()
        .context("running apt-cache (Debian's apt is needed to fetch the kernel)")?;
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| !n.contains("-cloud-") && !n.contains("-rt-"))
        .map(String::from)
        .collect();
    names.sort_by_key(|n| version_key(n));
    Ok(names.pop())
}

/// Orders package names by their numbers (6.1.0-9 before 6.1.0-56).
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or(0))
        .collect()
}

fn fetch_kernel(work: &Path, series: &str, arch: Arch) -> Result<Kernel> {
    let mut pkg = kernel_package(series, arch)?;
    if pkg.is_none() {
        crate::run(Command::new("apt-get").args(["update", "-q"]))?;
        pkg = kernel_package(series, arch)?;
    }
    let flavour = arch.kernel_flavour();
    let Some(pkg) = pkg else {
        bail!("no Debian package linux-image-{series}*-{flavour}: is the Debian release that ships Linux {series} in apt's sources (and {} in dpkg's architectures)?", arch.deb());
    };
    let pkg = if arch.is_host() {
        pkg
    } else {
        format!("{pkg}:{}", arch.deb())
    };
    let dir = work.join(pkg.replace(':', "_"));
    let done = dir.join(".extracted");
    if !done.exists() {
        println!("==> downloading {pkg}");
        let _ = std::fs::remove_dir_all(&dir);
        let dl = work.join("deb");
        let _ = std::fs::remove_dir_all(&dl);
        std::fs::create_dir_all(&dl)?;
        crate::run(
            Command::new("apt-get")
                .args(["download", "-q"])
                .arg(&pkg)
                .current_dir(&dl),
        )?;
        let deb = std::fs::read_dir(&dl)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download left no .deb")?;
        println!("==> extracting {}", deb.display());
        crate::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
        std::fs::remove_dir_all(&dl)?;
    }
    let release = std::fs::read_dir(dir.join("lib/modules"))
        .with_context(|| format!("{pkg} has no lib/modules"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .context("no module directory in the kernel package")?;
    let vmlinuz = dir.join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.exists() {
        bail!("{} missing from {pkg}", vmlinuz.display());
    }
    if !done.exists() {
        // The package leaves modules.dep to its postinst.
        crate::run(Command::new("depmod").arg("-b").arg(&dir).arg(&release))?;
        std::fs::write(&done, "")?;
    }
    Ok(Kernel {
        release,
        vmlinuz,
        root: dir,
    })
}

/// A test executable to run in the guest.
#[derive(Clone)]
struct TestExe {
    /// Target name (`datapath`, `counting`, ...).
    name: String,
    path: PathBuf,
    /// Its package's directory, the working directory `cargo test` would give it.
    dir: PathBuf,
    /// Test name filter for this executable only (`NAME:FILTER`).
    filter: Option<String>,
    /// A benchmark (`bench:NAME`): run without libtest's flags, its quick
    /// program-cost scenario only.
    bench: bool,
}

/// Builds the test executables for `arch` and returns those asked for (`NAME`,
/// `NAME:FILTER` or `bench:NAME`), in that order.
fn build_tests(specs: &[String], arch: Arch) -> Result<Vec<TestExe>> {
    println!(
        "==> building test executables ({}): {}",
        arch.triple(),
        specs.join(" ")
    );
    let (mut cargo, target) = arch.cargo();
    cargo.args([
        "test",
        "-p",
        "session-agent",
        "-p",
        "session-tests",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    // Only the targets asked for: a cross build of every test file would double
    // the build (which runs beside a guest in `cargo xtask test`).
    for spec in specs {
        let (kind, spec) = match spec.strip_prefix("bench:") {
            Some(name) => ("--bench", name),
            None => ("--test", spec.as_str()),
        };
        cargo.args([kind, spec.split(':').next().unwrap_or(spec)]);
    }
    let out = cargo
        .args(&target)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the tests failed");
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let bench = v["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "bench"));
        if v["reason"] != "compiler-artifact" || (v["profile"]["test"] != true && !bench) {
            continue;
        }
        let (Some(exe), Some(name), Some(manifest)) = (
            v["executable"].as_str(),
            v["target"]["name"].as_str(),
            v["manifest_path"].as_str(),
        ) else {
            continue;
        };
        let dir = Path::new(manifest).parent().unwrap_or(Path::new("/"));
        found.push(TestExe {
            name: name.to_string(),
            path: PathBuf::from(exe),
            dir: dir.to_path_buf(),
            filter: None,
            bench,
        });
    }
    specs
        .iter()
        .map(|spec| {
            let (bench, spec) = match spec.strip_prefix("bench:") {
                Some(name) => (true, name),
                None => (false, spec.as_str()),
            };
            let (n, filter) = match spec.split_once(':') {
                Some((n, f)) => (n, Some(f.to_string())),
                None => (spec, None),
            };
            found
                .iter()
                .find(|f| f.name == n && f.bench == bench)
                .map(|f| TestExe {
                    filter,
                    ..f.clone()
                })
                .with_context(|| {
                    let all: Vec<&str> = found.iter().map(|f| f.name.as_str()).collect();
                    format!(
                        "no test executable named {n} (there are: {})",
                        all.join(", ")
                    )
                })
        })
        .collect()
}

/// The boot modules and what they depend on, dependencies first.
fn boot_modules(kernel: &Kernel) -> Result<Vec<PathBuf>> {
    let mdir = kernel.root.join("lib/modules").join(&kernel.release);
    let dep = std::fs::read_to_string(mdir.join("modules.dep"))?;
    let deps: std::collections::HashMap<&str, Vec<&str>> = dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| (m, d.split_whitespace().collect()))
        .collect();
    fn visit<'a>(
        m: &'a str,
        deps: &std::collections::HashMap<&'a str, Vec<&'a str>>,
        out: &mut Vec<&'a str>,
    ) {
        if out.contains(&m) {
            return;
        }
        // modules.dep lists every indirect dependency too, loadable in reverse order.
        for d in deps.get(m).into_iter().flatten().rev() {
            visit(d, deps, out);
        }
        out.push(m);
    }
    // Built into the kernel (6.12 builds virtio_pci in): nothing to load.
    let builtin = std::fs::read_to_string(mdir.join("modules.builtin")).unwrap_or_default();
    let is_builtin = |name: &str| {
        builtin.lines().any(|l| {
            let base = l.rsplit('/').next().unwrap_or(l);
            base.split('.').next() == Some(name)
        })
    };
    let mut order = Vec::new();
    for name in BOOT_MODULES {
        if is_builtin(name) {
            continue;
        }
        let file = deps
            .keys()
            .find(|k| {
                let base = k.rsplit('/').next().unwrap_or(k);
                base.split('.').next() == Some(name)
            })
            .with_context(|| format!("module {name} not in {}", kernel.release))?;
        visit(file, &deps, &mut order);
    }
    Ok(order.into_iter().map(|m| mdir.join(m)).collect())
}

fn build_initramfs(
    work: &Path,
    kernel: &Kernel,
    arch: Arch,
    guest_root: Option<&Path>,
) -> Result<PathBuf> {
    let dir = work.join(format!("initramfs-{}", arch.deb()));
    let _ = std::fs::remove_dir_all(&dir);
    for d in ["bin", "modules", "proc", "sys", "dev", "newroot"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    // The guest's own busybox: the host's, or the one in its Debian root.
    let busybox = guest_root
        .map(|r| r.join("bin/busybox"))
        .unwrap_or_else(|| PathBuf::from("/bin/busybox"));
    std::fs::copy(&busybox, dir.join("bin/busybox")).with_context(|| {
        format!(
            "copying {} (Debian package busybox-static)",
            busybox.display()
        )
    })?;
    let mut order = String::new();
    for m in boot_modules(kernel)? {
        let mut name = m.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(plain) = name.strip_suffix(".xz") {
            // busybox insmod needs plain .ko files (6.12's are xz-compressed).
            let out = Command::new("xz")
                .arg("-dc")
                .arg(&m)
                .output()
                .with_context(|| format!("decompressing {} (xz-utils)", m.display()))?;
            if !out.status.success() {
                bail!(
                    "xz -dc {}: {}",
                    m.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            name = plain.to_string();
            std::fs::write(dir.join("modules").join(&name), out.stdout)?;
        } else if name.ends_with(".zst") {
            bail!("compressed module {name}: busybox insmod needs plain .ko files");
        } else {
            std::fs::copy(&m, dir.join("modules").join(&name))
                .with_context(|| format!("copying {}", m.display()))?;
        }
        order.push_str(&name);
        order.push('\n');
    }
    std::fs::write(dir.join("modules/order"), order)?;
    let out = work.join(format!("out-{}", arch.deb()));
    // The host's root is the guest's, or (another architecture) beside the guest's own.
    let mounts = match guest_root {
        None => format!(
            r#"if ! mount -t 9p -o $opts,ro,cache=loose hostroot /newroot; then
  echo "{STATUS_MARKER}97 (cannot mount the host root)"; poweroff -f
fi
if ! mount -t 9p -o $opts out /newroot{out}; then
  echo "{STATUS_MARKER}97 (cannot mount the status share)"; poweroff -f
fi
umount /proc /sys /dev
exec switch_root /newroot /bin/bash {out}/guest.sh"#,
            out = out.display()
        ),
        Some(_) => format!(
            r#"if ! mount -t 9p -o $opts,ro,cache=loose guestroot /newroot; then
  echo "{STATUS_MARKER}97 (cannot mount the guest's root)"; poweroff -f
fi
if ! mount -t 9p -o $opts,ro,cache=loose hostroot /newroot/host; then
  echo "{STATUS_MARKER}97 (cannot mount the host root)"; poweroff -f
fi
if ! mount -t 9p -o $opts out /newroot/vmout; then
  echo "{STATUS_MARKER}97 (cannot mount the status share)"; poweroff -f
fi
umount /proc /sys /dev
exec switch_root /newroot /bin/bash /vmout/guest.sh"#
        ),
    };
    let init = format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules/order); do insmod /modules/$m || echo "insmod $m failed"; done
opts=trans=virtio,version=9p2000.L,msize=524288
{mounts}
"#
    );
    std::fs::write(dir.join("init"), init)?;
    set_mode(&dir.join("init"), 0o755)?;
    let cpio = work.join(format!("initramfs-{}.cpio", arch.deb()));
    let f = std::fs::File::create(&cpio)?;
    crate::run(
        Command::new("sh")
            .args([
                "-c",
                "find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0",
            ])
            .current_dir(&dir)
            .stdout(f),
    )
    .context("packing the initramfs (Debian package cpio)")?;
    Ok(cpio)
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The guest's pid 1 after switch_root (runs the tests and powers off), and
/// the modprobe the kernel calls to load modules on demand.
fn write_guest_scripts(
    out: &Path,
    kernel: &Kernel,
    agent: &Path,
    exes: &[TestExe],
    opts: &Options,
    guest_root: Option<&Path>,
) -> Result<()> {
    let args: Vec<String> = opts.args.iter().map(|a| shell_quote(a)).collect();
    // What the guest reads from the host: the workspace, the binaries, the status share.
    let mut keep: Vec<PathBuf> = vec![crate::root_dir(), out.to_path_buf()];
    keep.extend(agent.parent().map(Path::to_path_buf));
    for t in exes {
        keep.push(t.dir.clone());
        keep.extend(t.path.parent().map(Path::to_path_buf));
    }
    let mut runs = String::new();
    if let Some(jit) = opts.bpf_jit {
        runs.push_str(&format!(
            "if echo {jit} > /proc/sys/net/core/bpf_jit_enable; then echo \"==> [guest] bpf_jit_enable set to {jit}\"; else echo \"==> [guest] bpf_jit_enable cannot be set to {jit}\"; status=98; fi\n"
        ));
    }
    for t in exes {
        if t.bench {
            runs.push_str(&format!(
                "run {} {} env SESSION_BENCH_ONLY=program_cost SESSION_BENCH_QUICK=1 SESSION_BENCH_RUNS=1 {}\n",
                shell_quote(&format!("bench {}", t.name)),
                shell_quote(&t.dir.display().to_string()),
                shell_quote(&t.path.display().to_string()),
            ));
            continue;
        }
        let filter = t.filter.as_deref().map(shell_quote).unwrap_or_default();
        runs.push_str(&format!(
            "run {} {} {} --test-threads=1 --color never {filter} {}\n",
            shell_quote(&t.name),
            shell_quote(&t.dir.display().to_string()),
            shell_quote(&t.path.display().to_string()),
            args.join(" ")
        ));
    }
    write_script(out, kernel, Some(agent), &keep, &runs, guest_root)
}

/// Writes the guest's pid 1 (`guest.sh`): the mounts, then `body` (bash, which
/// may call `run NAME DIR COMMAND...` and sets `status` on failure), then the
/// status back to the host and power off; and the modprobe the kernel calls.
fn write_script(
    out: &Path,
    kernel: &Kernel,
    agent: Option<&Path>,
    keep: &[PathBuf],
    body: &str,
    guest_root: Option<&Path>,
) -> Result<()> {
    let modprobe = out.join("modprobe");
    std::fs::write(
        &modprobe,
        format!(
            "#!/bin/sh\nexec /sbin/modprobe -d {} \"$@\"\n",
            shell_quote(&kernel.root.display().to_string())
        ),
    )?;
    set_mode(&modprobe, 0o755)?;
    let agent = agent
        .map(|a| {
            format!(
                "SESSION_AGENT_BIN={}",
                shell_quote(&a.display().to_string())
            )
        })
        .unwrap_or_default();
    let script = format!(
        r#"#!/bin/bash
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root RUST_BACKTRACE=1 {GUEST_ENV_MARK} {agent}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
{scratch}{no_btf}mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
echo {modprobe} > /proc/sys/kernel/modprobe
ip link set lo up
echo "==> [guest] Linux $(uname -r) ($(uname -m)), $(nproc) CPUs, BPF JIT $(cat /proc/sys/net/core/bpf_jit_enable 2>/dev/null || echo absent), kernel BTF $(test -e /sys/kernel/btf/vmlinux && echo visible || echo hidden or absent)"
status=${{early:-0}}
run() {{
  local name=$1 dir=$2; shift 2
  echo "==> [guest] running $name"
  local start=$(date +%s)
  (cd "$dir" && "$@")
  local rc=$?
  echo "==> [guest] $name: exit $rc after $(( $(date +%s) - start )) s"
  [ $rc -eq 0 ] || status=$rc
}}
{body}# What the kernel said about BPF (a JIT that gave up on an instruction says so here).
dmesg | grep -E "NOT YET|bpf_jit" | head -20 | sed 's/^/==> [guest] kernel: /'
echo $status > {out}/status
sync
echo "{STATUS_MARKER}$status"
echo o > /proc/sysrq-trigger
sleep 30
"#,
        scratch = match guest_root {
            None => scratch_mounts(keep),
            Some(r) => host_binds(r, keep, out)?,
        },
        // Small boards' kernels often have no BTF: in a guest of another
        // architecture the kernel's BTF is hidden, so the datapath loads without it.
        no_btf = match guest_root {
            None => "",
            Some(_) => {
                "if [ -d /sys/kernel/btf ] && ! mount -t tmpfs -o ro tmpfs /sys/kernel/btf; then\n  \
                 echo \"==> [guest] cannot hide the kernel's BTF: this run fails\"; early=1\nfi\n"
            }
        },
        modprobe = shell_quote(&modprobe.display().to_string()),
        out = shell_quote(&out.display().to_string()),
    );
    std::fs::write(out.join("guest.sh"), script)?;
    Ok(())
}

/// Shell lines for a guest with a root of its own architecture: fresh tmpfs on
/// /tmp, /run and /var/tmp, then the host's directories in `keep` bound from
/// /host at the same paths, and the status share at `out`. Mount points outside
/// the tmpfs are made in the (read-only) root on the host before the boot.
fn host_binds(root: &Path, keep: &[PathBuf], out: &Path) -> Result<String> {
    let scratch = ["/tmp", "/run", "/var/tmp"];
    let mut lines = String::new();
    for d in scratch {
        lines.push_str(&format!("mount -t tmpfs tmpfs {d}\n"));
    }
    let mut keep: Vec<&PathBuf> = keep.iter().collect();
    keep.sort();
    keep.dedup_by(|b, a| b.starts_with(a.as_path()));
    for p in keep {
        if !scratch.iter().any(|d| p.starts_with(d)) {
            std::fs::create_dir_all(root.join(p.strip_prefix("/").unwrap_or(p)))
                .with_context(|| format!("making {} in the guest's root", p.display()))?;
        }
        let p = shell_quote(&p.display().to_string());
        lines.push_str(&format!("mkdir -p {p} && mount --rbind /host{p} {p}\n"));
    }
    let out = shell_quote(&out.display().to_string());
    lines.push_str(&format!("mount --bind /vmout {out}\n"));
    Ok(lines)
}

/// A Debian root of the guest's architecture with the tools the tests call,
/// made once by mmdebstrap (through qemu-user) and kept in `work`.
fn guest_root(work: &Path, arch: Arch) -> Result<PathBuf> {
    let dir = work.join(format!("root-{}", arch.deb()));
    let done = dir.join(".made");
    if !done.exists() {
        println!(
            "==> making a Debian {} root for the guest with mmdebstrap ({GUEST_ROOT_PACKAGES})",
            arch.deb()
        );
        let _ = std::fs::remove_dir_all(&dir);
        crate::run(
            Command::new("mmdebstrap")
                .arg(format!("--architectures={}", arch.deb()))
                .args(["--variant=minbase", "--quiet"])
                .arg(format!("--include={GUEST_ROOT_PACKAGES}"))
                .arg("bookworm")
                .arg(&dir),
        )
        .context("mmdebstrap (needs a reachable Debian mirror and qemu-user in binfmt_misc)")?;
        std::fs::write(&done, "")?;
    }
    for d in ["host", "vmout"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    Ok(dir)
}

/// Shell lines giving the guest fresh tmpfs on /tmp, /run and /var/tmp while the
/// paths in `keep` that lie under them (a clone in /tmp, say) stay visible.
fn scratch_mounts(keep: &[PathBuf]) -> String {
    let mut out = String::new();
    for d in ["/tmp", "/run", "/var/tmp"] {
        let mut under: Vec<&PathBuf> = keep.iter().filter(|p| p.starts_with(d)).collect();
        under.sort();
        // A kept directory brings everything below it along.
        under.dedup_by(|b, a| b.starts_with(a.as_path()));
        for (i, p) in under.iter().enumerate() {
            let p = shell_quote(&p.display().to_string());
            out.push_str(&format!(
                "mkdir -p /dev/shm/keep{i} && mount --rbind {p} /dev/shm/keep{i}\n"
            ));
        }
        out.push_str(&format!("mount -t tmpfs tmpfs {d}\n"));
        for (i, p) in under.iter().enumerate() {
            let p = shell_quote(&p.display().to_string());
            out.push_str(&format!(
                "mkdir -p {p} && mount --rbind /dev/shm/keep{i} {p} && umount -l /dev/shm/keep{i}\n"
            ));
        }
    }
    out
}

/// Boots the guest, streams its console and returns the tests' exit status.
fn boot(kernel: &Kernel, initrd: &Path, out: &Path, opts: &Options) -> Result<i32> {
    let arch = opts.arch;
    let (qemu, qemu_package) = arch.qemu_system();
    let mut cmd = Command::new(qemu);
    // Boards' cores: the arm64 guest is a Cortex-A53 (Allwinner H5/H6, Raspberry
    // Pi 3: ARMv8.0, no LSE atomics, so the JIT's exclusive-load loops run), the
    // armhf one a Cortex-A15 on `virt` (the H3's Cortex-A7 lacks nothing the
    // kernel's ARM JIT uses; QEMU's `virt` wants an A15 or later with a GIC).
    let (machine, cpu, console) = match arch {
        Arch::Amd64 => (None, "max", "ttyS0"),
        Arch::Arm64 => (Some("virt"), "cortex-a53", "ttyAMA0"),
        // highmem=off: the PCIe window above 4 GiB is out of reach of a kernel without LPAE.
        Arch::Armhf => (Some("virt,highmem=off"), "cortex-a15", "ttyAMA0"),
    };
    if let Some(m) = machine {
        cmd.args(["-machine", m]);
    }
    cmd.args(["-accel", "tcg", "-cpu", cpu, "-smp", "2", "-m"])
        .arg(&opts.memory)
        .args([
            "-display",
            "none",
            "-no-reboot",
            "-nic",
            "none",
            "-monitor",
            "none",
        ])
        .args(["-serial", "stdio", "-kernel"])
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!(
            "console={console} panic=-1 quiet loglevel=4 mitigations=off {GUEST_CMDLINE_MARK}"
        ))
        .args([
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ])
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=out,security_model=none",
            out.display()
        ));
    if !arch.is_host() {
        let root = crate::root_dir()
            .join("target/kernel")
            .join(format!("root-{}", arch.deb()));
        cmd.arg("-virtfs").arg(format!(
            "local,path={},mount_tag=guestroot,security_model=none,readonly=on,multidevs=remap",
            root.display()
        ));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // The guest dies with this process, whatever ends it (Ctrl-C included).
    // SAFETY: the closure runs between fork and exec and calls only prctl,
    // which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {qemu} (Debian package {qemu_package})"))?;
    let pid = child.id();
    let timed_out = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    {
        let (timed_out, done, limit) = (timed_out.clone(), done.clone(), opts.timeout);
        std::thread::spawn(move || {
            while started.elapsed() < limit {
                if done.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            timed_out.store(true, Ordering::Relaxed);
            // SAFETY: kill has no memory preconditions; `pid` is our child's.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        });
    }
    let mut marker = None;
    let stdout = child.stdout.take().unwrap();
    for line in BufReader::new(stdout).split(b'\n') {
        let line = String::from_utf8_lossy(&line?).into_owned();
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix(STATUS_MARKER) {
            marker = rest.split_whitespace().next().and_then(|s| s.parse().ok());
        }
        println!("{line}");
    }
    let st = child.wait()?;
    done.store(true, Ordering::Relaxed);
    println!(
        "==> guest stopped after {} s ({st})",
        started.elapsed().as_secs()
    );
    if timed_out.load(Ordering::Relaxed) {
        bail!(
            "the guest did not finish within {} minutes; it was stopped",
            opts.timeout.as_secs() / 60
        );
    }
    let file: Option<i32> = std::fs::read_to_string(out.join("status"))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    match file.or(marker) {
        Some(s) => Ok(s),
        None if !st.success() => bail!("QEMU ended ({st}) before the tests finished"),
        None => {
            bail!("the guest stopped without reporting the tests' status (see its console above)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_keeps_what_the_guest_reads() {
        let keep = [
            PathBuf::from("/tmp/ci"),
            PathBuf::from("/tmp/ci/target/debug"),
            PathBuf::from("/tmp/other/target"),
            PathBuf::from("/srv/x"),
        ];
        let s = scratch_mounts(&keep);
        assert!(s.contains("mount --rbind '/tmp/ci' /dev/shm/keep0"), "{s}");
        assert!(
            s.contains("mount --rbind '/tmp/other/target' /dev/shm/keep1"),
            "{s}"
        );
        assert!(!s.contains("target/debug"), "kept through its parent: {s}");
        assert!(!s.contains("/srv/x"), "not under a scratch directory: {s}");
        assert_eq!(s.matches("mount -t tmpfs").count(), 3);
        let tmpfs = s.find("mount -t tmpfs tmpfs /tmp").unwrap();
        assert!(s.find("/dev/shm/keep0 '/tmp/ci'").unwrap() > tmpfs, "{s}");
    }
}
