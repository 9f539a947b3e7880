//! The datapath loads on this kernel: what each program cost its verifier
//! (instructions processed, out of 1,000,000), printed for the kernel table in
//! README. Needs root and bpffs.

mod common;

use common::*;

#[test]
fn every_program_loads_and_says_what_it_cost_the_verifier() {
    let h = ProgramHarness::new("sa-verifier", &test_garden())
        .unwrap_or_else(|e| panic!("loading the datapath: {e}"));
    for name in [PROG_TC_INGRESS, PROG_TC_EGRESS, PROG_XDP_INGRESS] {
        let info = h
            .ebpf
            .program(name)
            .unwrap_or_else(|| panic!("no program {name}"))
            .info()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        // (None on kernels before 5.16, which do not say.)
        let cost = info.verified_instruction_count();
        println!("verifier cost of {name}: {cost:?} instructions of 1000000");
        assert!(cost.is_none_or(|c| c < 1_000_000), "{name}: {cost:?}");
    }
}
