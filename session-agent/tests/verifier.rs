//! The datapath loads on this kernel: what each program cost its verifier
//! (instructions processed, out of 1,000,000), printed for the kernel table in
//! README, and, where the kernel's JIT is on, compiled by it (a JIT that cannot
//! translate an instruction leaves the program to the interpreter, silently
//! unless `bpf_jit_harden`/ALWAYS_ON say otherwise). Needs root and bpffs.

mod common;

use common::*;

#[test]
fn every_program_loads_and_says_what_it_cost_the_verifier() {
    let h = ProgramHarness::new("sa-verifier", &test_garden())
        .unwrap_or_else(|e| panic!("loading the datapath: {e}"));
    let jit = std::fs::read_to_string("/proc/sys/net/core/bpf_jit_enable")
        .map(|s| s.trim() != "0")
        .unwrap_or(false);
    for name in [PROG_TC_INGRESS, PROG_TC_EGRESS, PROG_XDP_INGRESS] {
        let info = h
            .ebpf
            .program(name)
            .unwrap_or_else(|| panic!("no program {name}"))
            .info()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        // (None on kernels before 5.16, which do not say.)
        let cost = info.verified_instruction_count();
        let native = info.size_jitted();
        println!(
            "verifier cost of {name}: {cost:?} instructions of 1000000; JIT {native} bytes of {} machine code",
            std::env::consts::ARCH
        );
        assert!(cost.is_none_or(|c| c < 1_000_000), "{name}: {cost:?}");
        assert!(
            !jit || native > 0,
            "{name}: the kernel's JIT is on but left the program to the interpreter"
        );
    }
}
