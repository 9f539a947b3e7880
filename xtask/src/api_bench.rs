//! `cargo xtask bench-api` and `bench-fleet`: the control API benchmark
//! (tests/tests/api_bench.rs) and the fleet benchmark (tests/tests/fleet_bench.rs:
//! logins and accounting against FreeRADIUS with PostgreSQL) against a release
//! build of the agent.

use anyhow::Result;

/// Runs the ignored benchmark test `test` of session-tests.
pub fn run(test: &str) -> Result<()> {
    crate::require_root("the benchmark")?;
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
                test,
                "--",
                "--ignored",
                "--nocapture",
            ])
            .env("SESSION_AGENT_BIN", &bin),
    )
}
