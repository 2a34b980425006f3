//! Helpers shared by the GPU halves (`cuda.rs`) of the ops. The same code
//! drives a CUDA GPU and the SIMT emulator ([`crate::Device::Emulator`]).

use crate::error::{Error, Result};
use crate::{Device, Tensor};

/// Threads per block of the elementwise kernels.
pub(crate) const BLOCK: u32 = 256;

/// The kernel `$base` for `$dtype` (`_f32`, `_bf16` or `_f16`), or a dtype error.
macro_rules! kernel_for {
    ($op:expr, $dtype:expr, $base:literal) => {
        match $dtype {
            $crate::DType::F32 => Ok(concat!($base, "_f32")),
            $crate::DType::BF16 => Ok(concat!($base, "_bf16")),
            $crate::DType::F16 => Ok(concat!($base, "_f16")),
            other => Err($crate::Error::DType {
                op: $op,
                expected: "f32, bf16 or f16 (the GPU kernels' types)".into(),
                got: other,
            }),
        }
    };
}
pub(crate) use kernel_for;

/// Fails unless every tensor is on the device of the first.
pub(crate) fn same_device(op: &'static str, tensors: &[&Tensor]) -> Result<Device> {
    let device = tensors[0].device();
    match tensors.iter().find(|t| t.device() != device) {
        Some(t) => Err(Error::Shape {
            op,
            detail: format!("operands on different devices: {device} and {}", t.device()),
        }),
        None => Ok(device),
    }
}

/// Runs a CPU op for the emulator, where cuDNN and cuBLAS do not exist:
/// the inputs are copied to the host (16-bit ones widened to f32), `op` runs
/// the CPU reference, and its outputs are rounded back to `dtype` and copied
/// to `device`. Only the emulator takes this path; its copies are not
/// counted as the program's transfers ([`kernels::stand_in`]).
pub(crate) fn on_host<const N: usize, const M: usize>(
    device: Device,
    dtype: crate::DType,
    inputs: [&Tensor; N],
    op: impl FnOnce([Tensor; N]) -> Result<[Option<Tensor>; M]>,
) -> Result<[Option<Tensor>; M]> {
    debug_assert_eq!(device, Device::Emulator);
    kernels::stand_in(|| host_stand_in(device, dtype, inputs, op))
}

fn host_stand_in<const N: usize, const M: usize>(
    device: Device,
    dtype: crate::DType,
    inputs: [&Tensor; N],
    op: impl FnOnce([Tensor; N]) -> Result<[Option<Tensor>; M]>,
) -> Result<[Option<Tensor>; M]> {
    let host = inputs.map(|t| {
        let h = t.to_device(Device::Cpu)?;
        match h.dtype() {
            crate::DType::BF16 | crate::DType::F16 => h.to_dtype(crate::DType::F32),
            _ => Ok(h),
        }
    });
    let mut ready = Vec::with_capacity(N);
    for h in host {
        ready.push(h?);
    }
    let outputs = op(ready.try_into().expect("N inputs"))?;
    let mut moved = Vec::with_capacity(M);
    for o in outputs {
        moved.push(
            o.map(|t| t.to_dtype(dtype)?.to_device(device))
                .transpose()?,
        );
    }
    Ok(moved.try_into().expect("M outputs"))
}
