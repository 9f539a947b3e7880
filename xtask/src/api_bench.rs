//! `cargo xtask bench-api`: the control API benchmark (tests/tests/api_bench.rs)
//! against a release build of the agent.

use anyhow::Result;

pub fn run() -> Result<()> {
    crate::require_root("the API benchmark")?;
    crate::toolchain::ensure_ebpf()?;
    crate::toolchain::ensure_net_tools()?;
    crate::toolchain::ensure_bpffs()?;
    println!("==> building session-agent (release)");
    crate::run(crate::cargo().args(["build", "--release", "-p", "session-agent"]))?;
    let bin = crate::root_dir().join("target/release/session-agent");
    crate::run(
        crate::cargo()
            .args([
                "test",
                "--release",
                "-p",
                "session-tests",
                "--test",
                "api_bench",
                "--",
                "--ignored",
                "--nocapture",
            ])
            .env("SESSION_AGENT_BIN", &bin),
    )
}
