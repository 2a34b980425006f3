//! The parity cases of `tests/parity` on a CUDA GPU: every CUDA op against
//! the CPU op. Without a usable GPU each test prints "skipped: no GPU" and
//! why; `scripts/gpu-check.sh` runs them on the GPU machine.

tests::parity_tests!(tests::parity::cuda_device());
