//! `kernels`: the CUDA C kernels of the engine and everything needed to run them.
//!
//! - [`registry`]: every kernel family (`kernels/cuda/<family>.cu`) and its
//!   kernels' parameter kinds, generated at build time from the sources.
//! - [`nvrtc`]: compiles a family with NVRTC to a CUBIN for the exact device
//!   arch (with `-lineinfo`), cached on disk by source, options, NVRTC version
//!   and arch.
//! - [`Gpu`]: a device to launch kernels on — a real CUDA GPU or the SIMT
//!   emulator, which runs the same sources compiled as host C++. Both sit
//!   behind one launch wrapper, so argument marshalling, grid arithmetic and
//!   buffer handling are the same code; only the final call differs.
//! - [`probe`]: finds the CUDA libraries (also inside Python environments)
//!   and reports what is present, without ever panicking.

mod emulator;
mod error;
mod gpu;
pub mod nvrtc;
pub mod probe;
pub mod registry;

pub use emulator::take_launch_log;
pub use error::{Error, Result};
pub use gpu::{
    Arg, Buffer, CudaParts, Gpu, Graph, LaunchConfig, Mark, Readback, Stamp, Transfers, Word,
};
