//! Where a tensor lives, and the GPU behind each non-CPU device.

use crate::error::{Error, Result};
use kernels::Gpu;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

/// A compute device.
///
/// Every tensor records its device; ops check that their operands agree and
/// dispatch to that device's kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// The CPU reference backend (rayon-parallel).
    #[default]
    Cpu,
    /// A CUDA GPU, by ordinal.
    Cuda(usize),
    /// The CUDA backend's own kernels run by the SIMT emulator on the CPU:
    /// the same launch path as [`Device::Cuda`], for testing it without a
    /// GPU. Convolutions and matrix products, which cuDNN and cuBLAS do on a
    /// GPU, run through the CPU reference here. Slow; for tests.
    Emulator,
}

impl Device {
    /// Whether tensors on this device live in GPU (or emulated GPU) memory.
    pub fn is_gpu(self) -> bool {
        !matches!(self, Device::Cpu)
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
            Device::Emulator => f.write_str("emulator"),
        }
    }
}

static DETERMINISTIC: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Asks for bit-reproducible results on every device, as PyTorch's
/// `use_deterministic_algorithms` does: cuDNN convolutions choose only among
/// the algorithms cuDNN reports as deterministic (from the next shape
/// searched on). cuBLAS runs without atomics on one stream with a fixed
/// workspace, and the engine's kernels and the CPU backend reduce in a fixed
/// order, in either mode. Off by default: the fastest algorithm of some
/// shapes sums in no fixed order.
pub fn set_deterministic(on: bool) {
    DETERMINISTIC.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether [`set_deterministic`] is on.
pub fn deterministic() -> bool {
    DETERMINISTIC.load(std::sync::atomic::Ordering::Relaxed)
}

/// The kernel launcher of a GPU `device`, the one the engine's ops use, for
/// crates that launch kernels of their own (the trainer's GPU augmentation);
/// wrap the buffers they fill with [`crate::Tensor::from_gpu_buffer`].
pub fn gpu_launcher(device: Device) -> Result<Arc<Gpu>> {
    if !device.is_gpu() {
        return Err(Error::Device {
            op: "gpu_launcher",
            device,
        });
    }
    gpu(device)
}

/// Waits until `device` has finished all queued work (a no-op on the CPU),
/// e.g. before reading a clock.
pub fn synchronize(device: Device) -> Result<()> {
    if device.is_gpu() {
        gpu(device)?.synchronize()?;
    }
    Ok(())
}

/// The most memory `device`'s pool has held at once, in bytes (`None` on
/// the CPU and the emulator).
pub fn memory_high_water(device: Device) -> Result<Option<u64>> {
    if !device.is_gpu() {
        return Ok(None);
    }
    Ok(gpu(device)?.pool_high_water()?)
}

/// The kernel launcher of a GPU device, created on first use and shared.
pub(crate) fn gpu(device: Device) -> Result<Arc<Gpu>> {
    static GPUS: OnceLock<Mutex<HashMap<Device, Arc<Gpu>>>> = OnceLock::new();
    let mut gpus = GPUS.get_or_init(Default::default).lock().unwrap();
    if let Some(g) = gpus.get(&device) {
        return Ok(g.clone());
    }
    let g = Arc::new(match device {
        Device::Cuda(i) => Gpu::cuda(i)?,
        Device::Emulator => Gpu::emulator(),
        Device::Cpu => unreachable!("the CPU has no kernel launcher"),
    });
    gpus.insert(device, g.clone());
    Ok(g)
}
