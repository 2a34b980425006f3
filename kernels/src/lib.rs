//! `kernels`: the CUDA C sources of the engine's custom GPU kernels, their NVRTC
//! compilation and on-disk cache, and the SIMT emulator that runs the same
//! sources on the CPU in CI.
//!
//! Empty in this version: the engine runs on its CPU reference backend only.
//! The CUDA backend and the emulator are built on top of the `engine` crate's
//! `Device` abstraction.
