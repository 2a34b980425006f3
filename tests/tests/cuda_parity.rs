//! The parity cases of `tests/parity` on a CUDA GPU: every CUDA op against
//! the CPU op. Without a usable GPU each test prints "skipped: no GPU" and
//! why; `scripts/gpu-check.sh` runs them on the GPU machine.

use tests::parity;

macro_rules! families {
    ($($family:ident),*) => {
        $(
            #[test]
            fn $family() {
                if let Some(device) = parity::cuda_device() {
                    parity::run_family(stringify!($family), device);
                }
            }
        )*
    };
}

families!(
    augment,
    batchnorm,
    cast,
    conv,
    elementwise,
    linear,
    loss,
    optim,
    pool,
    step
);
