//! L2 normalisation, the M2T loss and cross-entropy on a GPU
//! (`kernels/cuda/loss.cu`). Scalar loss gradients stay on the device: the
//! backward kernels read them there, so no op waits for the GPU.

use super::check_labels;
use crate::error::{Result, shape_err};
use crate::ops::gpu::{BLOCK, kernel_for, same_device};
use crate::tensor::GpuBuffer;
use crate::{DType, Tensor};
use kernels::{Arg, LaunchConfig};

/// Threads of the single block that reduces a whole batch to one loss.
const REDUCE_BLOCK: u32 = 1024;

/// One block per row of `len` elements: the row rounded up to whole warps
/// (the block reductions need them), at most 256 threads.
fn per_row(op: &'static str, rows: usize, len: usize) -> Result<LaunchConfig> {
    let grid =
        u32::try_from(rows).map_err(|_| shape_err(op, format!("{rows} rows exceed a launch")))?;
    let block = (len.div_ceil(32) * 32).clamp(32, 256) as u32;
    Ok(LaunchConfig::blocks(grid, block))
}

/// Fails unless `dloss` is a one-element tensor of `dtype`.
fn check_dloss(op: &'static str, dloss: &Tensor, dtype: DType) -> Result<()> {
    if dloss.numel() != 1 {
        return Err(shape_err(
            op,
            format!("the loss gradient must be a scalar, got {}", dloss.shape()),
        ));
    }
    dloss.expect_dtype(op, &[dtype])?;
    Ok(())
}

/// The labels on the GPU of `like`. Host labels are range-checked first;
/// labels already on the device are not (that would wait for the GPU): an
/// out-of-range one gives a NaN loss and no one-hot term in the gradient.
fn device_labels(
    op: &'static str,
    labels: &Tensor,
    like: &Tensor,
    classes: usize,
) -> Result<Tensor> {
    labels.expect_dtype(op, &[DType::I64])?;
    if labels.gpu().is_none() {
        check_labels(op, labels.as_slice()?, classes)?;
        return labels.to_device(like.device());
    }
    same_device(op, &[like, labels])?;
    Ok(labels.clone())
}

pub(super) fn l2_normalize(
    g: &GpuBuffer,
    x: &Tensor,
    n: usize,
    f: usize,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "l2_normalize";
    let kernel = kernel_for!(OP, x.dtype(), "l2_normalize_forward")?;
    let y = Tensor::gpu_empty(g, x.shape().clone(), x.dtype())?;
    let norms = Tensor::gpu_empty(g, [n], DType::F32)?;
    if n > 0 {
        g.gpu.launch(
            kernel,
            per_row(OP, n, f)?,
            &[x.arg(), y.arg(), norms.arg(), Arg::I64(f as i64)],
        )?;
    }
    Ok((y, norms))
}

pub(super) fn l2_normalize_backward(
    g: &GpuBuffer,
    y: &Tensor,
    norms: &Tensor,
    dy: &Tensor,
    n: usize,
    f: usize,
) -> Result<Tensor> {
    const OP: &str = "l2_normalize backward";
    same_device(OP, &[y, norms, dy])?;
    norms.expect_dtype(OP, &[DType::F32])?;
    if norms.dims() != [n] {
        return Err(shape_err(
            OP,
            format!("norms {} must be [{n}]", norms.shape()),
        ));
    }
    let kernel = kernel_for!(OP, y.expect_same_dtype(OP, dy)?, "l2_normalize_backward")?;
    let dx = Tensor::gpu_empty(g, y.shape().clone(), y.dtype())?;
    if n > 0 {
        g.gpu.launch(
            kernel,
            per_row(OP, n, f)?,
            &[y.arg(), norms.arg(), dy.arg(), dx.arg(), Arg::I64(f as i64)],
        )?;
    }
    Ok(dx)
}

pub(super) fn m2t_loss(g: &GpuBuffer, pairs: [&Tensor; 4], n: usize) -> Result<Tensor> {
    const OP: &str = "m2t_loss";
    same_device(OP, &pairs)?;
    let [q1, k1, q2, k2] = pairs;
    let kernel = kernel_for!(OP, q1.dtype(), "m2t_loss_forward")?;
    let loss = Tensor::gpu_empty(g, [], q1.dtype())?;
    g.gpu.launch(
        kernel,
        LaunchConfig::blocks(1, REDUCE_BLOCK),
        &[
            q1.arg(),
            k1.arg(),
            q2.arg(),
            k2.arg(),
            loss.arg(),
            Arg::I64(n as i64),
            Arg::I64(q1.numel() as i64),
        ],
    )?;
    Ok(loss)
}

pub(super) fn m2t_loss_backward(
    g: &GpuBuffer,
    partner: &Tensor,
    dloss: &Tensor,
    n: usize,
) -> Result<Tensor> {
    const OP: &str = "m2t_loss backward";
    same_device(OP, &[partner, dloss])?;
    check_dloss(OP, dloss, partner.dtype())?;
    let kernel = kernel_for!(OP, partner.dtype(), "m2t_loss_backward")?;
    let grad = Tensor::gpu_empty(g, partner.shape().clone(), partner.dtype())?;
    let numel = partner.numel();
    g.gpu.launch(
        kernel,
        LaunchConfig::for_elements(numel, BLOCK),
        &[
            partner.arg(),
            dloss.arg(),
            grad.arg(),
            Arg::I64(n as i64),
            Arg::I64(numel as i64),
        ],
    )?;
    Ok(grad)
}

/// Two launches: softmax and per-row losses, then their mean in one block
/// (a fixed summation order, so the loss is deterministic).
pub(super) fn cross_entropy(
    g: &GpuBuffer,
    logits: &Tensor,
    labels: &Tensor,
    n: usize,
    c: usize,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "cross_entropy";
    let labels = device_labels(OP, labels, logits, c)?;
    let dtype = logits.dtype();
    let forward = kernel_for!(OP, dtype, "cross_entropy_forward")?;
    let mean = kernel_for!(OP, dtype, "cross_entropy_mean")?;
    let probs = Tensor::gpu_empty(g, [n, c], dtype)?;
    let row_loss = Tensor::gpu_empty(g, [n], DType::F32)?;
    let loss = Tensor::gpu_empty(g, [], dtype)?;
    g.gpu.launch(
        forward,
        per_row(OP, n, c)?,
        &[
            logits.arg(),
            labels.arg(),
            probs.arg(),
            row_loss.arg(),
            Arg::I64(c as i64),
        ],
    )?;
    g.gpu.launch(
        mean,
        LaunchConfig::blocks(1, REDUCE_BLOCK),
        &[row_loss.arg(), loss.arg(), Arg::I64(n as i64)],
    )?;
    Ok((loss, probs))
}

pub(super) fn cross_entropy_backward(
    g: &GpuBuffer,
    probs: &Tensor,
    labels: &Tensor,
    dloss: &Tensor,
    n: usize,
    c: usize,
) -> Result<Tensor> {
    const OP: &str = "cross_entropy backward";
    if labels.dims() != [n] {
        return Err(shape_err(
            OP,
            format!("labels {} must be [{n}]", labels.shape()),
        ));
    }
    let labels = device_labels(OP, labels, probs, c)?;
    same_device(OP, &[probs, dloss])?;
    check_dloss(OP, dloss, probs.dtype())?;
    let kernel = kernel_for!(OP, probs.dtype(), "cross_entropy_backward")?;
    let dlogits = Tensor::gpu_empty(g, [n, c], probs.dtype())?;
    g.gpu.launch(
        kernel,
        LaunchConfig::for_elements(n * c, BLOCK),
        &[
            probs.arg(),
            labels.arg(),
            dloss.arg(),
            dlogits.arg(),
            Arg::I64(n as i64),
            Arg::I64(c as i64),
        ],
    )?;
    Ok(dlogits)
}
