//! Every custom CUDA kernel, run by the SIMT emulator against the CPU
//! reference (the cases are in `tests/parity`), and a coverage check that
//! every `__global__` kernel in `kernels/cuda` has an emulated test.

use engine::Device;
use std::collections::BTreeSet;
use tests::parity;

tests::parity_tests!(Some(Device::Emulator));

/// Kernel names quoted inside `expect_launched(..)` calls of `source`.
fn asserted_kernels(source: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for call in source.split("expect_launched(").skip(1) {
        let list = &call[..call.find(");").unwrap_or(call.len())];
        names.extend(list.split('"').skip(1).step_by(2).map(str::to_string));
    }
    names
}

#[test]
fn every_kernel_is_emulated() {
    let mut covered: BTreeSet<String> = parity::SOURCES
        .iter()
        .flat_map(|s| asserted_kernels(s))
        .collect();
    // The emulator's own tests launch the self-test kernels by name.
    let selftests = include_str!("../../kernels/tests/emulator.rs");
    covered.extend(
        selftests
            .split('"')
            .skip(1)
            .step_by(2)
            .filter(|s| s.starts_with("selftest_"))
            .map(str::to_string),
    );
    let all: Vec<&str> = kernels::registry::all_kernels().map(|k| k.name).collect();
    let missing: Vec<&&str> = all.iter().filter(|k| !covered.contains(**k)).collect();
    eprintln!(
        "emulated {}/{} kernels",
        all.len() - missing.len(),
        all.len()
    );
    assert!(
        missing.is_empty(),
        "kernels without an emulated test: {missing:?}"
    );
    let unknown: Vec<&String> = covered
        .iter()
        .filter(|k| !all.contains(&k.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "tests name kernels that do not exist: {unknown:?}"
    );
}
