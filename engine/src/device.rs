//! Where a tensor lives.

use std::fmt;

/// A compute device.
///
/// Every tensor records its device; ops check that their operands agree and
/// dispatch to that device's kernels. This build has the CPU reference backend;
/// the CUDA backend adds kernels behind [`Device::Cuda`] without changing the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// The CPU reference backend (rayon-parallel).
    #[default]
    Cpu,
    /// A CUDA GPU, by ordinal.
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}
