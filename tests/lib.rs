//! Cross-crate integration tests live in `tests/`; this library holds what
//! several of them share: the GPU parity cases ([`parity`]), run on the SIMT
//! emulator by `tests/emulated.rs` and on a CUDA GPU by `tests/cuda_parity.rs`.

pub mod parity;
