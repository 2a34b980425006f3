//! Casts between f32 and the 16-bit types on a GPU (`kernels/cuda/cast.cu`).

use crate::error::{Error, Result};
use crate::ops::gpu::BLOCK;
use crate::tensor::GpuBuffer;
use crate::{DType, Tensor};
use kernels::{Arg, LaunchConfig};

pub(super) fn cast(g: &GpuBuffer, x: &Tensor, to: DType) -> Result<Tensor> {
    let kernel = match (x.dtype(), to) {
        (DType::F32, DType::BF16) => "cast_f32_to_bf16",
        (DType::F32, DType::F16) => "cast_f32_to_f16",
        (DType::BF16, DType::F32) => "cast_bf16_to_f32",
        (DType::F16, DType::F32) => "cast_f16_to_f32",
        (from, _) => {
            return Err(Error::DType {
                op: "cast",
                expected: format!("a GPU cast between f32 and bf16/f16 (asked {from} → {to})"),
                got: from,
            });
        }
    };
    let y = Tensor::gpu_empty(g, x.shape().clone(), to)?;
    let n = x.numel();
    g.gpu.launch(
        kernel,
        LaunchConfig::for_elements(n, BLOCK),
        &[x.arg(), y.arg(), Arg::I64(n as i64)],
    )?;
    Ok(y)
}
