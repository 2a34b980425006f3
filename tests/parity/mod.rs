//! GPU parity cases. Each case runs ops on a GPU device — the SIMT emulator
//! in CI, a CUDA GPU on the GPU machine — and the CPU reference backend from
//! the same inputs, and compares them with dtype-aware tolerances. The CPU
//! ops are independent implementations: nothing here derives the reference
//! from a kernel.
//!
//! Each family module exports `CASES`; on the emulator every case also
//! asserts, with [`expect_launched`], which kernels it ran, and
//! `tests/emulated.rs` checks from those lists that every kernel in
//! `kernels/cuda` has a case.

use engine::{DType, Device, Rng, Tensor};

pub mod augment;
pub mod batchnorm;
pub mod cast;
pub mod conv;
pub mod elementwise;
pub mod knn;
pub mod linear;
pub mod loss;
pub mod optim;
pub mod pool;
pub mod step;

/// One parity case: a name and a function of the device under test.
pub type Case = (&'static str, fn(Device));

/// Every family, with its cases.
pub const FAMILIES: &[(&str, &[Case])] = &[
    ("augment", augment::CASES),
    ("batchnorm", batchnorm::CASES),
    ("cast", cast::CASES),
    ("conv", conv::CASES),
    ("elementwise", elementwise::CASES),
    ("knn", knn::CASES),
    ("linear", linear::CASES),
    ("loss", loss::CASES),
    ("optim", optim::CASES),
    ("pool", pool::CASES),
    ("step", step::CASES),
];

/// The source of every family module, for the coverage check.
pub const SOURCES: &[&str] = &[
    include_str!("augment.rs"),
    include_str!("batchnorm.rs"),
    include_str!("cast.rs"),
    include_str!("conv.rs"),
    include_str!("elementwise.rs"),
    include_str!("knn.rs"),
    include_str!("linear.rs"),
    include_str!("loss.rs"),
    include_str!("optim.rs"),
    include_str!("pool.rs"),
    include_str!("step.rs"),
];

/// Runs every case of `family` on `device`, naming the case that fails.
pub fn run_family(family: &str, device: Device) {
    let (_, cases) = FAMILIES
        .iter()
        .find(|(f, _)| *f == family)
        .expect("known family");
    assert!(!cases.is_empty(), "family {family} has no cases");
    for (name, case) in *cases {
        eprintln!("{family}/{name} on {device}");
        kernels::take_launch_log();
        case(device);
    }
}

/// The CUDA device to test, or `None` after printing why there is none —
/// straight to stderr, past the test harness's capture, so a CI log shows
/// every skip.
pub fn cuda_device() -> Option<Device> {
    match kernels::probe::probe().usable() {
        Ok(_) => Some(Device::Cuda(0)),
        Err(why) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "skipped: no GPU ({why})");
            None
        }
    }
}

/// On the emulator, asserts that every kernel in `kernels` ran since the
/// last call (and clears the log). A real GPU keeps no log.
pub fn expect_launched(device: Device, kernels: &[&str]) {
    if device != Device::Emulator {
        return;
    }
    let log = kernels::take_launch_log();
    for k in kernels {
        assert!(
            log.contains(k),
            "kernel {k} did not run; the case launched {log:?}"
        );
    }
}

/// Uniform f32 values in `[lo, hi)` on the CPU.
pub fn uniform(shape: &[usize], seed: u64, lo: f32, hi: f32) -> Tensor {
    let mut rng = Rng::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| rng.range(lo as f64, hi as f64) as f32)
        .collect();
    Tensor::from_vec(v, shape.to_vec()).unwrap()
}

/// `t` rounded to `dtype` on the CPU: the exact inputs both sides see.
pub fn rounded(t: &Tensor, dtype: DType) -> Tensor {
    t.to_dtype(dtype).unwrap()
}

/// `t` (already in its final dtype) copied to `device`.
pub fn to(device: Device, t: &Tensor) -> Tensor {
    t.to_device(device).unwrap()
}

/// Relative tolerance for results stored in `dtype`: a few units in the last
/// place of the storage type, plus f32 accumulation-order differences.
pub fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 2e-5,
        DType::F16 => 2e-3,
        DType::BF16 => 1.6e-2,
        _ => 0.0,
    }
}

/// Asserts `|got − want| ≤ rtol·max(1, max|want|)` elementwise (NaN never
/// passes), naming `what` and the worst element.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, rtol: f64) {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes differ");
    let (g, w) = (got.to_f64_vec().unwrap(), want.to_f64_vec().unwrap());
    let scale = w.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let (mut worst, mut at) = (0.0f64, 0);
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let err = (a - b).abs();
        if err.is_nan() || err > worst {
            (worst, at) = (if err.is_nan() { f64::INFINITY } else { err }, i);
        }
    }
    assert!(
        worst <= rtol * scale,
        "{what}: error {worst:.3e} at element {at} (got {}, want {}) exceeds {rtol:.1e} × {scale:.3}",
        g.get(at).copied().unwrap_or(f64::NAN),
        w.get(at).copied().unwrap_or(f64::NAN)
    );
}

/// Asserts bit-identical values.
pub fn assert_bits_equal(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes differ");
    assert_eq!(got.dtype(), want.dtype(), "{what}: dtypes differ");
    let (g, w) = (got.to_f64_vec().unwrap(), want.to_f64_vec().unwrap());
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!(
            a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
            "{what}: element {i}: got {a}, want {b}"
        );
    }
}

/// The float types GPU kernels store activations in.
pub const GPU_DTYPES: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

/// One `#[test]` per parity family, each running the family's cases on the
/// device `$device` gives (`Option<Device>`: `None` skips, having said why),
/// and a check that the list covers [`FAMILIES`]. The one list of families
/// for the emulated and the CUDA test binaries.
#[macro_export]
macro_rules! parity_tests {
    ($device:expr) => {
        $crate::parity_tests!(@ $device; augment, batchnorm, cast, conv, elementwise, knn, linear, loss, optim, pool, step);
    };
    (@ $device:expr; $($family:ident),*) => {
        $(
            #[test]
            fn $family() {
                if let Some(device) = $device {
                    $crate::parity::run_family(stringify!($family), device);
                }
            }
        )*

        #[test]
        fn every_family_has_a_test() {
            let tested: std::collections::BTreeSet<&str> = [$(stringify!($family)),*].into();
            let families = $crate::parity::FAMILIES.iter().map(|(f, _)| *f).collect();
            assert_eq!(tested, families);
        }
    };
}
