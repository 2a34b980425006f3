//! ReLU and addition on a GPU (`kernels/cuda/elementwise.cu`).

use crate::Tensor;
use crate::error::Result;
use crate::ops::gpu::{BLOCK, kernel_for, same_device};
use crate::tensor::GpuBuffer;
use kernels::{Arg, LaunchConfig};

pub(super) fn relu(g: &GpuBuffer, x: &Tensor) -> Result<Tensor> {
    let kernel = kernel_for!("relu", x.dtype(), "relu_forward")?;
    let y = Tensor::gpu_empty(g, x.shape().clone(), x.dtype())?;
    let n = x.numel();
    g.gpu.launch(
        kernel,
        LaunchConfig::for_elements(n, BLOCK),
        &[x.arg(), y.arg(), Arg::I64(n as i64)],
    )?;
    Ok(y)
}

pub(super) fn relu_backward(g: &GpuBuffer, y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    same_device("relu backward", &[y, dy])?;
    let kernel = kernel_for!(
        "relu backward",
        y.expect_same_dtype("relu backward", dy)?,
        "relu_backward"
    )?;
    let dx = Tensor::gpu_empty(g, y.shape().clone(), y.dtype())?;
    let n = y.numel();
    g.gpu.launch(
        kernel,
        LaunchConfig::for_elements(n, BLOCK),
        &[y.arg(), dy.arg(), dx.arg(), Arg::I64(n as i64)],
    )?;
    Ok(dx)
}

pub(super) fn add(g: &GpuBuffer, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    same_device("add", &[a, b])?;
    let kernel = kernel_for!("add", a.dtype(), "add")?;
    let y = Tensor::gpu_empty(g, a.shape().clone(), a.dtype())?;
    let n = a.numel();
    g.gpu.launch(
        kernel,
        LaunchConfig::for_elements(n, BLOCK),
        &[a.arg(), b.arg(), y.arg(), Arg::I64(n as i64)],
    )?;
    Ok(y)
}
