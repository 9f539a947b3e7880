//! `cargo xtask package`: the Debian package of the agent, built with
//! `dpkg-deb` from a staged tree: the release binary (eBPF embedded), the
//! systemd unit, `/etc/session-agent/config.toml` (a conffile: README's
//! configuration with every line commented out), sysusers.d and tmpfiles.d
//! entries, the maintainer scripts in `package/`, the docs, and the manual
//! pages and shell completions the binary generates from its command line.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::arch::Arch;

const MAINTAINER: &str = "session-agent maintainers <maintainers@session-agent.example>";

fn version() -> Result<String> {
    let toml = fs::read_to_string(crate::root_dir().join("Cargo.toml"))?;
    toml.lines()
        .find_map(|l| {
            l.strip_prefix("version = \"")
                .and_then(|r| r.strip_suffix('"'))
        })
        .map(str::to_string)
        .context("no version in the workspace Cargo.toml")
}

/// README's example configuration, every line commented out: the packaged
/// `/etc/session-agent/config.toml` shows every option and its default.
pub fn config_file(readme: &str) -> Result<String> {
    let start = readme
        .find("```toml\n# /etc/session-agent/config.toml")
        .context(
            "README has no configuration block starting with `# /etc/session-agent/config.toml`",
        )?;
    let body = &readme[start + "```toml\n".len()..];
    let end = body
        .find("```")
        .context("unterminated configuration block in README")?;
    let mut out = String::from(
        "# session-agent configuration. Every key is optional except lans; the values\n\
         # shown are the defaults unless marked \"example\". Uncomment and change what\n\
         # you need, then: systemctl enable --now session-agent\n\
         # (after a change: systemctl reload session-agent; see the README).\n\n",
    );
    for line in body[..end].lines().skip(2) {
        if line.is_empty() {
            out.push('\n');
        } else if line.starts_with('[') {
            out.push_str(line);
            out.push('\n');
        } else {
            out.push_str("# ");
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

fn write(path: &Path, contents: impl AsRef<[u8]>, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(d) = path.parent() {
        fs::create_dir_all(d)?;
    }
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn gzip_n(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension("");
    write(&tmp, contents, 0o644)?;
    crate::run(Command::new("gzip").args(["-9n", "-f"]).arg(&tmp))?;
    Ok(())
}

fn dir_size_kib(root: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        let Ok(m) = fs::symlink_metadata(p) else {
            return 0;
        };
        if m.is_dir() {
            fs::read_dir(p)
                .map(|rd| rd.flatten().map(|e| walk(&e.path())).sum())
                .unwrap_or(0)
        } else {
            m.len().div_ceil(1024)
        }
    }
    walk(root)
}

/// Builds the package for `arch` (cross-built when it is not this host's);
/// returns the `.deb`'s path.
pub fn build(arch: Arch) -> Result<PathBuf> {
    let root = crate::root_dir();
    let version = version()?;
    let deb_arch = arch.deb();
    println!(
        "==> building session-agent {version} (release, {})",
        arch.triple()
    );
    let (mut cargo, target) = arch.cargo();
    crate::run(
        cargo
            .args(["build", "--release", "-p", "session-agent"])
            .args(&target),
    )?;
    let bin = arch.out_dir("release").join("session-agent");
    let name = format!("session-agent_{version}-1_{deb_arch}");
    let stage = root.join("target/package").join(&name);
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    let pkg = root.join("package");
    println!("==> staging {}", stage.display());

    let sbin = stage.join("usr/sbin/session-agent");
    fs::create_dir_all(sbin.parent().unwrap())?;
    // Debug info stays in target/: the package carries the stripped binary.
    crate::run(
        Command::new(arch.objcopy())
            .args(["--strip-debug", "--strip-unneeded"])
            .arg(&bin)
            .arg(&sbin),
    )
    .context("stripping the binary (binutils' objcopy)")?;
    write(&sbin, fs::read(&sbin)?, 0o755)?;
    let docs = stage_docs(&mut arch.run_binary(&bin), &stage)?;
    write(
        &stage.join("usr/lib/systemd/system/session-agent.service"),
        fs::read(pkg.join("session-agent.service"))?,
        0o644,
    )?;
    write(
        &stage.join("usr/lib/systemd/system/session-agent-close-lans.service"),
        fs::read(pkg.join("session-agent-close-lans.service"))?,
        0o644,
    )?;
    write(
        &stage.join("usr/lib/sysusers.d/session-agent.conf"),
        fs::read(pkg.join("sysusers.conf"))?,
        0o644,
    )?;
    write(
        &stage.join("usr/lib/tmpfiles.d/session-agent.conf"),
        fs::read(pkg.join("tmpfiles.conf"))?,
        0o644,
    )?;
    let readme = fs::read_to_string(root.join("README.md"))?;
    write(
        &stage.join("etc/session-agent/config.toml"),
        config_file(&readme)?,
        0o644,
    )?;
    let doc = stage.join("usr/share/doc/session-agent");
    write(
        &doc.join("copyright"),
        fs::read(pkg.join("copyright"))?,
        0o644,
    )?;
    gzip_n(&doc.join("README.md.gz"), &readme)?;
    let date = Command::new("date")
        .args(["-R", "-u", "-d", "@0"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    gzip_n(
        &doc.join("changelog.Debian.gz"),
        &format!(
            "session-agent ({version}-1) unstable; urgency=medium\n\n  * Package of session-agent {version}.\n\n -- {MAINTAINER}  {date}\n"
        ),
    )?;
    write(
        &stage.join("usr/share/session-agent/portal-texts.toml"),
        fs::read(root.join("session-agent/portal/texts.toml"))?,
        0o644,
    )?;

    let debian = stage.join("DEBIAN");
    for s in ["postinst", "prerm", "postrm"] {
        write(&debian.join(s), fs::read(pkg.join(s))?, 0o755)?;
    }
    write(
        &debian.join("conffiles"),
        "/etc/session-agent/config.toml\n",
        0o644,
    )?;
    let control = format!(
        "Package: session-agent\n\
         Version: {version}-1\n\
         Section: net\n\
         Priority: optional\n\
         Architecture: {deb_arch}\n\
         Maintainer: {MAINTAINER}\n\
         Installed-Size: {}\n\
         Depends: libc6 (>= 2.34), libgcc-s1 (>= 4.2), passwd, procps, nftables\n\
         Recommends: systemd\n\
         Homepage: https://github.com/session-agent/session-agent\n\
         Description: eBPF traffic metering and sessions for Wi-Fi hotspot gateways\n \
         session-agent counts every client's traffic per MAC address in the kernel,\n \
         lets only walled-garden traffic through for clients that have not paid,\n \
         enforces data budgets and speed limits, and keeps time and data sessions,\n \
         vouchers and a portal page, with an HTTP/JSON control API, Prometheus\n \
         metrics and the RFC 8908 captive-portal API.\n",
        dir_size_kib(&stage)
    );
    write(&debian.join("control"), control, 0o644)?;
    // md5sums of every file outside DEBIAN/.
    let mut sums = String::new();
    let mut files = Vec::new();
    fn collect(p: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = fs::read_dir(p) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    collect(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
    }
    for top in ["usr", "etc"] {
        collect(&stage.join(top), &mut files);
    }
    files.sort();
    for f in files.iter().filter(|f| !f.starts_with(stage.join("etc"))) {
        let out = Command::new("md5sum").arg(f).output()?;
        let sum = String::from_utf8_lossy(&out.stdout);
        let sum = sum.split_whitespace().next().unwrap_or("");
        let rel = f.strip_prefix(&stage)?.display();
        sums.push_str(&format!("{sum}  {rel}\n"));
    }
    write(&debian.join("md5sums"), sums, 0o644)?;

    let deb = root.join("target/package").join(format!("{name}.deb"));
    crate::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    check_contents(&deb, &docs)?;
    println!("==> {}", deb.display());
    Ok(deb)
}

/// Where the completions go, by the directory `generate-docs` writes them to.
const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "usr/share/bash-completion/completions"),
    ("zsh", "usr/share/zsh/vendor-completions"),
    ("fish", "usr/share/fish/vendor_completions.d"),
];

/// The manual pages (gzipped, as Debian wants them) and the shell completions,
/// generated from the binary's command line (`session-agent generate-docs`);
/// returns their paths in the package.
fn stage_docs(bin: &mut Command, stage: &Path) -> Result<Vec<String>> {
    let out = crate::root_dir().join("target/package/docs");
    if out.exists() {
        fs::remove_dir_all(&out)?;
    }
    crate::run(bin.arg("generate-docs").arg("--out").arg(&out))
        .context("generating the manual pages and completions")?;
    let mut staged = Vec::new();
    let man8 = stage.join("usr/share/man/man8");
    for e in fs::read_dir(out.join("man8"))? {
        let page = e?.path();
        let name = page.file_name().unwrap().to_string_lossy().into_owned();
        gzip_n(
            &man8.join(format!("{name}.gz")),
            &fs::read_to_string(&page)?,
        )?;
        staged.push(format!("usr/share/man/man8/{name}.gz"));
    }
    for (shell, dir) in COMPLETIONS {
        for e in fs::read_dir(out.join(shell))? {
            let file = e?.path();
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            write(&stage.join(dir).join(&name), fs::read(&file)?, 0o644)?;
            staged.push(format!("{dir}/{name}"));
        }
    }
    staged.sort();
    Ok(staged)
}

/// The `.deb` holds the binary, its manual page and completions for the three
/// shells, and every other staged page.
fn check_contents(deb: &Path, docs: &[String]) -> Result<()> {
    let out = Command::new("dpkg-deb")
        .arg("--contents")
        .arg(deb)
        .output()
        .context("dpkg-deb --contents")?;
    let listing = String::from_utf8_lossy(&out.stdout);
    let files: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|f| f.trim_start_matches("./"))
        .collect();
    let mut wanted = vec![
        "usr/sbin/session-agent".to_string(),
        "usr/share/man/man8/session-agent.8.gz".to_string(),
    ];
    for (shell, dir) in COMPLETIONS {
        if !docs.iter().any(|d| d.starts_with(dir)) {
            bail!("no {shell} completion was generated");
        }
    }
    wanted.extend(docs.iter().cloned());
    let missing: Vec<&str> = wanted
        .iter()
        .map(String::as_str)
        .filter(|w| !files.contains(w))
        .collect();
    if !missing.is_empty() {
        bail!("{} lacks {}", deb.display(), missing.join(", "));
    }
    println!(
        "    {} manual pages and completions for bash, zsh and fish",
        docs.len() - COMPLETIONS.len()
    );
    Ok(())
}

/// Runs lintian on the package, printing its tags; fails on errors.
pub fn lintian(deb: &Path) -> Result<()> {
    crate::toolchain::ensure_lintian()?;
    println!("==> lintian {}", deb.display());
    let out = Command::new("lintian")
        .args(["--no-tag-display-limit", "--info"])
        .arg(deb)
        .output()
        .context("running lintian")?;
    let text = String::from_utf8_lossy(&out.stdout);
    std::io::stdout().write_all(text.as_bytes()).ok();
    if text.lines().any(|l| l.starts_with("E: ")) {
        bail!("lintian found errors in {}", deb.display());
    }
    Ok(())
}

/// Installs the package into a throwaway Debian root made by mmdebstrap (with
/// systemd, so the maintainer scripts use sysusers.d and tmpfiles.d), checks what
/// it put there, verifies the unit with `systemd-analyze verify`, then removes
/// and purges it and checks what stays and what goes.
pub fn install_check(deb: &Path, arch: Arch) -> Result<()> {
    crate::toolchain::ensure_mmdebstrap()?;
    let root = crate::root_dir().join("target/package/debroot");
    let tarball = crate::root_dir().join(format!(
        "target/package/debroot-{}-systemd-procps-nftables.tar",
        arch.deb()
    ));
    if !tarball.exists() {
        println!(
            "==> making a throwaway Debian root with mmdebstrap (cached in {})",
            tarball.display()
        );
        crate::run(
            Command::new("mmdebstrap")
                .arg(format!("--architectures={}", arch.deb()))
                .args([
                    "--variant=minbase",
                    // procps: ExecReload's kill, on every Debian system but minbase;
                    // nftables: the boot unit that keeps the LANs closed until attached.
                    "--include=systemd,procps,nftables",
                    "--quiet",
                    "bookworm",
                ])
                .arg(&tarball),
        )
        .context("mmdebstrap (needs a reachable Debian mirror)")?;
    }
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    fs::create_dir_all(&root)?;
    crate::run(
        Command::new("tar")
            .arg("-xf")
            .arg(&tarball)
            .arg("-C")
            .arg(&root),
    )?;
    // What a booted system has mounted, for the maintainer scripts' tools.
    let proc_mount = ProcMount::new(&root.join("proc"))?;
    let in_root = |args: &[&str]| -> Result<String> {
        let out = Command::new("chroot")
            .arg(&root)
            .args(args)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output()
            .with_context(|| format!("chroot {args:?}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!(
                "in the Debian root, {args:?} failed ({}):\n{text}",
                out.status
            );
        }
        Ok(text)
    };
    fs::copy(deb, root.join("tmp/session-agent.deb"))?;
    println!("==> dpkg -i in {}", root.display());
    print!("{}", in_root(&["dpkg", "-i", "/tmp/session-agent.deb"])?);
    let group = in_root(&["getent", "group", "session-agent"])?;
    println!("    group: {}", group.trim());
    for (path, mode) in [
        ("/var/lib/session-agent", "750"),
        ("/run/session-agent", "750"),
    ] {
        let st = in_root(&["stat", "-c", "%a %U %G", path])?;
        if st.trim() != format!("{mode} root session-agent") {
            bail!("{path}: {st}");
        }
    }
    for doc in INSTALLED_DOCS {
        if !root.join(doc).exists() {
            bail!("dpkg -i did not install /{doc}");
        }
    }
    let v = in_root(&["/usr/sbin/session-agent", "--version"])?;
    println!("    {}", v.trim());
    for unit in [
        UNIT,
        "/usr/lib/systemd/system/session-agent-close-lans.service",
    ] {
        println!("==> systemd-analyze verify {unit}");
        print!("{}", in_root(&["systemd-analyze", "verify", unit])?);
    }
    println!("==> systemd-analyze security --offline=true session-agent.service");
    let readme = fs::read_to_string(crate::root_dir().join("README.md"))?;
    let version = in_root(&["systemd-analyze", "--version"])?;
    let security = in_root(&["systemd-analyze", "security", "--offline=true", UNIT])?;
    match check_exposure(&readme, &version, &security) {
        Ok(said) => println!("    {said}"),
        Err(e) => {
            print!("{security}");
            return Err(e);
        }
    }
    // The configuration as shipped parses (only lans is missing).
    let cfg = in_root(&[
        "/usr/sbin/session-agent",
        "check-config",
        "--config",
        "/etc/session-agent/config.toml",
        "--lan",
        "lo",
    ])
    .context("the shipped configuration does not check")?;
    println!("    {}", cfg.trim());
    if arch.is_host() {
        foreground_run(&root)?;
    } else {
        foreground_run_in_guest(&root, arch)?;
    }
    println!("==> dpkg --remove: the configuration and the state stay");
    in_root(&["dpkg", "--remove", "session-agent"])?;
    for kept in ["/etc/session-agent/config.toml", "/var/lib/session-agent"] {
        if !root.join(kept.trim_start_matches('/')).exists() {
            bail!("{kept} did not survive dpkg --remove");
        }
    }
    if root.join("usr/sbin/session-agent").exists() {
        bail!("the binary survived dpkg --remove");
    }
    for doc in INSTALLED_DOCS {
        if root.join(doc).exists() {
            bail!("/{doc} survived dpkg --remove");
        }
    }
    println!("==> dpkg --purge: nothing stays");
    in_root(&["dpkg", "--purge", "session-agent"])?;
    for gone in ["etc/session-agent", "var/lib/session-agent"] {
        if root.join(gone).exists() {
            bail!("/{gone} survived dpkg --purge");
        }
    }
    drop(proc_mount);
    fs::remove_dir_all(&root)?;
    println!("==> the package installs, verifies, removes and purges cleanly");
    Ok(())
}

/// The unit, where the package puts it.
const UNIT: &str = "/usr/lib/systemd/system/session-agent.service";

/// How README quotes the unit's exposure: "... rates it **2.4 OK** (systemd 252".
const EXPOSURE_QUOTE: &str = "`systemd-analyze security --offline=true` rates it **";

/// The exposure README quotes ("2.4 OK") and the systemd version it names.
fn readme_exposure(readme: &str) -> Result<(String, u32)> {
    let rest = readme
        .split_once(EXPOSURE_QUOTE)
        .map(|(_, r)| r)
        .with_context(|| format!("README has no {EXPOSURE_QUOTE}FIGURE** (systemd VERSION"))?;
    let (figure, rest) = rest
        .split_once("**")
        .context("README's exposure figure has no closing **")?;
    let version = rest
        .strip_prefix(" (systemd ")
        .map(|r| {
            r.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|v| v.parse().ok())
        .context("README's exposure figure is not followed by (systemd VERSION")?;
    Ok((figure.to_string(), version))
}

/// The overall exposure in `systemd-analyze security`'s output: its figure
/// and word ("2.4 OK").
fn measured_exposure(output: &str) -> Result<String> {
    output
        .lines()
        .find_map(|l| {
            l.split_once("Overall exposure level for ")?
                .1
                .split_once(": ")
        })
        .map(|(_, v)| v.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .context("systemd-analyze security printed no overall exposure level")
}

/// Checks what `systemd-analyze security --offline=true` measured (with the
/// systemd of `systemd-analyze --version`) against README's figure; says what
/// it measured, or how README and the unit differ.
fn check_exposure(readme: &str, version: &str, security: &str) -> Result<String> {
    let (quoted, quoted_version) = readme_exposure(readme)?;
    let measured = measured_exposure(security)?;
    let systemd: u32 = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no systemd version in {version:?}"))?;
    if systemd != quoted_version {
        bail!(
            "README quotes the exposure of systemd {quoted_version}, this is systemd {systemd} \
             (it rates the unit {measured}): measure it with systemd {quoted_version}, or quote \
             this one"
        );
    }
    let figure = |s: &str| {
        s.split_whitespace()
            .next()
            .and_then(|f| f.parse::<f64>().ok())
    };
    match (figure(&measured), figure(&quoted)) {
        (Some(m), Some(q)) if m > q => bail!(
            "systemd-analyze security rates the unit {measured}, above README's {quoted}: \
             harden the unit again (see the rows marked ✗ above 0.0)"
        ),
        (Some(m), Some(q)) if m < q => bail!(
            "systemd-analyze security rates the unit {measured}, below README's {quoted}: \
             put {measured} in README (\"Hardening\")"
        ),
        (Some(_), Some(_)) => Ok(format!(
            "exposure {measured} (systemd {systemd}), as README says"
        )),
        _ => bail!("cannot compare the exposure measured, {measured:?}, with README's, {quoted:?}"),
    }
}

/// What `man session-agent` and the shells' completion find once installed.
const INSTALLED_DOCS: [&str; 4] = [
    "usr/share/man/man8/session-agent.8.gz",
    "usr/share/bash-completion/completions/session-agent",
    "usr/share/zsh/vendor-completions/_session-agent",
    "usr/share/fish/vendor_completions.d/session-agent.fish",
];

/// The unit's `ExecStart=` command line and `CapabilityBoundingSet=`.
fn unit_command(unit: &str) -> Result<(Vec<String>, Vec<String>)> {
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::to_string)
            .with_context(|| format!("no {key} in the unit"))
    };
    let argv = value("ExecStart=")?
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let caps = value("CapabilityBoundingSet=")?
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
        .collect();
    Ok((argv, caps))
}

/// The two units' command lines and capabilities, as installed in `root`.
struct Units {
    argv: Vec<String>,
    caps: Vec<String>,
    close_argv: Vec<String>,
    close_caps: Vec<String>,
}

impl Units {
    fn read(root: &Path) -> Result<Self> {
        let units = root.join("usr/lib/systemd/system");
        let (argv, caps) = unit_command(&fs::read_to_string(units.join("session-agent.service"))?)?;
        let (close_argv, close_caps) = unit_command(&fs::read_to_string(
            units.join("session-agent-close-lans.service"),
        )?)?;
        Ok(Units {
            argv,
            caps,
            close_argv,
            close_caps,
        })
    }
}

/// setpriv's `--bounding-set` for only these capabilities.
fn bounding_set(caps: &[String]) -> String {
    format!(
        "--bounding-set=-all,{}",
        caps.iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",")
    )
}

/// Where the units' checks put the agent's pins.
const CHECK_PINS: &str = "/sys/fs/bpf/sa-pkg-check";

/// The shipped configuration with a LAN (`lan0`) and pins of its own while
/// the units run; the shipped file again on drop.
struct LanConfig {
    path: PathBuf,
    shipped: String,
}

impl LanConfig {
    fn write(root: &Path) -> Result<Self> {
        let path = root.join("etc/session-agent/config.toml");
        let shipped = fs::read_to_string(&path)?;
        fs::write(
            &path,
            format!("lans = [\"lan0\"]\npin_root = \"{CHECK_PINS}\"\n{shipped}"),
        )?;
        Ok(LanConfig { path, shipped })
    }
}

impl Drop for LanConfig {
    fn drop(&mut self) {
        let _ = fs::write(&self.path, &self.shipped);
    }
}

/// Where systemd cannot run: the unit's exact command line, as root with only
/// the unit's capabilities, inside the Debian root, serving a LAN of a network
/// namespace made for it. Waits for READY, asks the installed CLI for the
/// status over the socket the package's tmpfiles entry made, stops it with
/// SIGTERM and detaches.
fn foreground_run(root: &Path) -> Result<()> {
    use std::io::BufRead;
    let Units {
        argv,
        caps,
        close_argv,
        close_caps,
    } = Units::read(root)?;
    println!(
        "==> the unit's command line with its capabilities ({}): {}",
        caps.join(", "),
        argv.join(" ")
    );
    let ns = format!("sa-pkg-{}", std::process::id());
    let pins = CHECK_PINS;
    let _config = LanConfig::write(root)?;
    struct Cleanup {
        ns: String,
        sys: PathBuf,
    }
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
            let _ = Command::new("umount")
                .arg("-R")
                .arg("-l")
                .arg(&self.sys)
                .status();
            let _ = fs::remove_dir_all(CHECK_PINS);
        }
    }
    let _cleanup = Cleanup {
        ns: ns.clone(),
        sys: root.join("sys"),
    };
    crate::run(Command::new("ip").args(["netns", "add", &ns]))?;
    let ip_n = |args: &[&str]| crate::run(Command::new("ip").args(["-n", &ns]).args(args));
    ip_n(&[
        "link", "add", "lan0", "type", "veth", "peer", "name", "lan0p",
    ])?;
    ip_n(&["addr", "add", "10.99.0.1/24", "dev", "lan0"])?;
    ip_n(&["link", "set", "lan0", "up"])?;
    ip_n(&["link", "set", "lan0p", "up"])?;
    ip_n(&["link", "set", "lo", "up"])?;
    // /sys with bpffs, as on a booted system.
    fs::create_dir_all(root.join("sys"))?;
    crate::run(
        Command::new("mount")
            .arg("--rbind")
            .arg("/sys")
            .arg(root.join("sys")),
    )?;
    let _ = Command::new("mount")
        .arg("--make-rslave")
        .arg(root.join("sys"))
        .status();
    let netns = format!("--net=/run/netns/{ns}");
    let bounding = bounding_set(&caps);
    // The boot unit's command line with its capabilities: the LAN is closed.
    let closed_table = |ns: &str| {
        Command::new("ip")
            .args(["netns", "exec", ns, "nft", "list", "table", "inet"])
            .arg("session_agent_closed")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    println!(
        "==> the boot unit's command line with its capabilities ({}): {}",
        close_caps.join(", "),
        close_argv.join(" ")
    );
    crate::run(
        Command::new("nsenter")
            .arg(&netns)
            .arg("--")
            .arg("chroot")
            .arg(root)
            .args([
                "setpriv",
                &bounding_set(&close_caps),
                "--inh-caps=-all",
                "--",
            ])
            .args(&close_argv)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
    )?;
    if !closed_table(&ns) {
        bail!("the boot unit's command left no nftables table inet session_agent_closed");
    }
    println!("    lan0 closed: table inet session_agent_closed loaded");
    let mut child = Command::new("nsenter")
        .arg(&netns)
        .arg("--")
        .arg("chroot")
        .arg(root)
        .args(["setpriv", &bounding, "--inh-caps=-all", "--"])
        .args(&argv)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting the unit's command line")?;
    let stdout = child.stdout.take().context("agent stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(|l| l.ok())
        {
            let _ = tx.send(line);
        }
    });
    let ready = loop {
        match rx.recv_timeout(std::time::Duration::from_secs(30)) {
            Ok(l) if l.trim() == "READY" => break true,
            Ok(_) => {}
            Err(_) => break false,
        }
    };
    if !ready {
        let _ = child.kill();
        let out = child.wait_with_output()?;
        bail!(
            "the unit's command line did not get READY: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let status = Command::new("nsenter")
        .arg(&netns)
        .arg("--")
        .arg("chroot")
        .arg(root)
        .args(["/usr/sbin/session-agent", "status"])
        .output()?;
    if !status.status.success() {
        bail!(
            "session-agent status over /run/session-agent/api.sock failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
    }
    if closed_table(&ns) {
        bail!("READY, but the table that kept the LANs closed since boot is still there");
    }
    println!("    READY; the boot table is gone; `session-agent status` answers over /run/session-agent/api.sock:");
    for l in String::from_utf8_lossy(&status.stdout).lines().take(4) {
        println!("      {l}");
    }
    // SAFETY: kill has no memory effects; the pid is our child's.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "the agent did not stop cleanly on SIGTERM ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!("    stopped cleanly on SIGTERM");
    crate::run(
        Command::new("nsenter")
            .arg(&netns)
            .arg("--")
            .arg("chroot")
            .arg(root)
            .args([
                "/usr/sbin/session-agent",
                "detach",
                "--lan",
                "lan0",
                "--pin-root",
                pins,
            ]),
    )?;
    Ok(())
}

/// For another architecture, whose programs reach this kernel only through
/// qemu-user (which passes neither `bpf` nor nftables' netlink): the same run
/// as `foreground_run`, in a QEMU guest of that architecture booting Debian's
/// 6.12 kernel, with the installed root (read-only over 9p, tmpfs on its /run,
/// /var/lib/session-agent and /tmp) as the units' root.
fn foreground_run_in_guest(root: &Path, arch: Arch) -> Result<()> {
    let units = Units::read(root)?;
    let _config = LanConfig::write(root)?;
    let words = |v: &[String]| v.join(" ");
    println!(
        "==> in a QEMU {} guest: the boot unit's command line ({}) and the agent unit's ({}), each with its capabilities",
        arch.deb(),
        words(&units.close_argv),
        words(&units.argv)
    );
    let body = format!(
        r#"R={root}
pkg_check() {{
  mount -t tmpfs -o mode=0755 tmpfs $R/run || return 1
  mount -t tmpfs -o mode=0750 tmpfs $R/var/lib/session-agent || return 1
  mount -t tmpfs tmpfs $R/tmp || return 1
  mount -t proc proc $R/proc && mount --rbind /sys $R/sys && mount --rbind /dev $R/dev || return 1
  chroot $R chgrp session-agent /var/lib/session-agent || return 1
  chroot $R install -d -m 0750 -g session-agent /run/session-agent || return 1
  ip netns add pkg && ip -n pkg link add lan0 type veth peer name lan0p || return 1
  ip -n pkg addr add 10.99.0.1/24 dev lan0
  ip -n pkg link set lan0 up; ip -n pkg link set lan0p up; ip -n pkg link set lo up
  in_root() {{ nsenter --net=/run/netns/pkg -- chroot $R env PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }}
  in_root setpriv {close_bounding} --inh-caps=-all -- {close_argv} || {{ echo "the boot unit's command line failed"; return 1; }}
  in_root nft list table inet session_agent_closed > /dev/null || {{ echo "the boot unit's command left no table inet session_agent_closed"; return 1; }}
  echo "    lan0 closed: table inet session_agent_closed loaded"
  # nsenter, chroot, env and setpriv each exec the next: $! is the agent.
  nsenter --net=/run/netns/pkg -- chroot $R env PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    setpriv {bounding} --inh-caps=-all -- {argv} > /tmp/agent.out 2> /tmp/agent.err &
  local pid=$!
  for i in $(seq 240); do grep -qx READY /tmp/agent.out && break; kill -0 $pid 2>/dev/null || break; sleep 0.5; done
  grep -qx READY /tmp/agent.out || {{ echo "the unit's command line did not get READY:"; cat /tmp/agent.err; return 1; }}
  in_root /usr/sbin/session-agent status > /tmp/status.out || {{ echo "session-agent status over /run/session-agent/api.sock failed"; return 1; }}
  if in_root nft list table inet session_agent_closed > /dev/null 2>&1; then
    echo "READY, but the table that kept the LANs closed since boot is still there"; return 1
  fi
  echo "    READY on $(uname -m); the boot table is gone; session-agent status answers over /run/session-agent/api.sock:"
  head -4 /tmp/status.out | sed 's/^/      /'
  kill -TERM $pid
  wait $pid || {{ echo "the agent did not stop cleanly on SIGTERM ($?)"; cat /tmp/agent.err; return 1; }}
  echo "    stopped cleanly on SIGTERM"
  in_root /usr/sbin/session-agent detach --lan lan0 --pin-root {pins} || return 1
}}
pkg_check || status=1
"#,
        root = crate::kernel::shell_quote(&root.display().to_string()),
        close_bounding = bounding_set(&units.close_caps),
        bounding = bounding_set(&units.caps),
        pins = CHECK_PINS,
        close_argv = words(&units.close_argv),
        argv = words(&units.argv),
    );
    crate::kernel::run_script(arch, "6.12", &body, std::time::Duration::from_secs(15 * 60))
        .context("the units' command lines in the guest")
}

/// /proc mounted in the Debian root while it is used; unmounted on drop.
struct ProcMount(PathBuf);

impl ProcMount {
    fn new(at: &Path) -> Result<Self> {
        fs::create_dir_all(at)?;
        crate::run(Command::new("mount").args(["-t", "proc", "proc"]).arg(at))?;
        Ok(ProcMount(at.to_path_buf()))
    }
}

impl Drop for ProcMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    /// What the install check measures in its Debian 12 root, measured here on
    /// the unit as packaged, when this machine's systemd is the one README names.
    #[test]
    fn the_readme_quotes_the_exposure_systemd_analyze_measures_of_the_unit() {
        let readme = include_str!("../../README.md");
        let (_, quoted_version) = super::readme_exposure(readme).unwrap();
        let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
            eprintln!("no systemd-analyze here: the install check measures it");
            return;
        };
        let version = String::from_utf8_lossy(&version.stdout).to_string();
        if !version.starts_with(&format!("systemd {quoted_version} ")) {
            eprintln!("systemd here is not {quoted_version}: the install check measures it");
            return;
        }
        let dir = std::env::temp_dir().join(format!("xtask-exposure-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let unit = dir.join("session-agent.service");
        std::fs::write(&unit, include_str!("../../package/session-agent.service")).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true"])
            .arg(&unit)
            .output()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let security = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{security}");
        if let Err(e) = super::check_exposure(readme, &version, &security) {
            panic!("{e}\n{security}");
        }
    }

    #[test]
    fn an_exposure_other_than_the_readmes_fails_the_install_check() {
        let readme =
            "`systemd-analyze security --offline=true` rates it **2.4 OK** (systemd 252); ...";
        let version = "systemd 252 (252.38-1~deb12u1)\n+PAM +AUDIT\n";
        let security = |figure: &str| {
            format!(
                "✗ UMask=   Files created by service are group-readable by default   0.1\n\n\
                     → Overall exposure level for session-agent.service: {figure} 🙂\n"
            )
        };
        assert_eq!(
            super::check_exposure(readme, version, &security("2.4 OK")).unwrap(),
            "exposure 2.4 OK (systemd 252), as README says"
        );
        for (figure, says) in [
            ("2.6 OK", "above README's 2.4 OK"),
            ("2.2 OK", "below README's 2.4 OK"),
        ] {
            let e = super::check_exposure(readme, version, &security(figure)).unwrap_err();
            assert!(e.to_string().contains(says), "{e}");
        }
        let e = super::check_exposure(readme, "systemd 257 (257.9)\n", &security("2.4 OK"))
            .unwrap_err();
        assert!(e.to_string().contains("systemd 252"), "{e}");
    }

    #[test]
    fn the_packaged_configuration_is_readmes_with_every_key_commented_out() {
        let readme = include_str!("../../README.md");
        let cfg = super::config_file(readme).unwrap();
        for l in cfg.lines() {
            assert!(
                l.is_empty() || l.starts_with('#') || l.starts_with('['),
                "an active line in the packaged configuration: {l:?}"
            );
        }
        for key in [
            "poll_ms = 250",
            "provider = \"hybrid\"",
            "lans = [\"wlan0\", \"eth1\"]",
        ] {
            assert!(
                cfg.lines().any(|l| l.starts_with(&format!("# {key}"))),
                "{key} missing:\n{cfg}"
            );
        }
        assert!(
            cfg.contains("\n[store]\n") && cfg.contains("\n[captive]\n"),
            "{cfg}"
        );
    }
}
