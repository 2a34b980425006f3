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
