//! The flat-buffer kernels of the optimisers, the EMA, gradient accumulation
//! and loss scaling on a GPU (`kernels/cuda/optim.cu`). Callers check that
//! the buffers they write are not shared before calling these.

use crate::error::{Error, Result};
use crate::ops::gpu::{BLOCK, kernel_for, same_device};
use crate::params::ParamStore;
use crate::tensor::GpuBuffer;
use crate::{DType, Scalar, Tensor};
use kernels::{Arg, LaunchConfig};

/// The GPU memory of a tensor the caller already knows is on a GPU.
fn gpu_of(t: &Tensor) -> Result<&GpuBuffer> {
    t.gpu().ok_or(Error::Device {
        op: "optimiser kernel (host tensor)",
        device: t.device(),
    })
}

/// `acc += g`: one parameter's gradient (f32, bf16 or f16) into its range of
/// the flat f32 gradient buffer.
pub(crate) fn accumulate_grad(acc: &Tensor, g: &Tensor) -> Result<()> {
    same_device("accumulate_grads", &[acc, g])?;
    let kernel = kernel_for!("accumulate_grads", g.dtype(), "accumulate_grad")?;
    let n = g.numel();
    if n == 0 {
        return Ok(());
    }
    gpu_of(acc)?.gpu.launch(
        kernel,
        LaunchConfig::for_elements(n, BLOCK),
        &[acc.arg(), g.arg(), Arg::I64(n as i64)],
    )?;
    Ok(())
}

/// SGD with momentum over the whole flat buffers, in one launch; nothing
/// changes when the device flag `skip` (an i32 word) is set.
pub(crate) fn sgd_step(
    w: &Tensor,
    g: &Tensor,
    v: &Tensor,
    lr: &Scalar,
    (momentum, weight_decay): (f32, f32),
    skip: &Tensor,
) -> Result<()> {
    let n = w.numel();
    let lr = lr.cell(gpu_of(w)?)?;
    gpu_of(w)?.gpu.launch(
        "sgd_momentum_step",
        LaunchConfig::for_elements(n, BLOCK),
        &[
            w.arg(),
            g.arg(),
            v.arg(),
            Arg::I64(n as i64),
            lr.arg(),
            Arg::F32(momentum),
            Arg::F32(weight_decay),
            skip.arg(),
        ],
    )?;
    Ok(())
}

/// Elements per LARS chunk: one block of [`BLOCK`] threads handles 16 each.
const LARS_CHUNK: usize = 4096;
/// Grid cap of the LARS kernels.
const MAX_BLOCKS: usize = 65_535;
/// Int64 fields per chunk row; must match `LARS_CHUNK_FIELDS` in optim.cu.
const LARS_CHUNK_FIELDS: usize = 5;

/// LARS's per-chunk table on the device, built once for a store's layout,
/// and the scratch the norm pass writes its per-chunk sums to.
#[derive(Debug)]
pub(crate) struct LarsTable {
    /// (offset, numel, adapted) per parameter, to reject another layout.
    layout: Vec<(usize, usize, bool)>,
    chunks: Tensor,
    partials: Tensor,
    n_chunks: usize,
}

fn lars_layout(store: &ParamStore) -> Vec<(usize, usize, bool)> {
    store
        .infos()
        .iter()
        .map(|i| (i.offset, i.shape.numel(), i.kind.lars_adapted()))
        .collect()
}

impl LarsTable {
    /// Splits every parameter into chunks of at most [`LARS_CHUNK`] elements
    /// and uploads the rows (see optim.cu) to the store's device.
    pub(crate) fn new(store: &ParamStore) -> Result<Self> {
        let layout = lars_layout(store);
        let mut rows: Vec<i64> = Vec::new();
        for &(offset, numel, adapted) in &layout {
            let first = (rows.len() / LARS_CHUNK_FIELDS) as i64;
            let count = numel.div_ceil(LARS_CHUNK);
            for k in 0..count {
                let begin = offset + k * LARS_CHUNK;
                let end = (begin + LARS_CHUNK).min(offset + numel);
                rows.extend([
                    begin as i64,
                    end as i64,
                    first,
                    count as i64,
                    adapted as i64,
                ]);
            }
        }
        let n_chunks = rows.len() / LARS_CHUNK_FIELDS;
        let device = store.device();
        Ok(LarsTable {
            layout,
            chunks: Tensor::from_vec(rows, [n_chunks * LARS_CHUNK_FIELDS])?.to_device(device)?,
            partials: Tensor::zeros([2 * n_chunks], DType::F32, device)?,
            n_chunks,
        })
    }

    /// Fails unless `store` has the layout this table was built for.
    pub(crate) fn check_layout(&self, store: &ParamStore) -> Result<()> {
        if lars_layout(store) == self.layout {
            Ok(())
        } else {
            Err(Error::Param(
                "LARS was built for a store of another layout".into(),
            ))
        }
    }

    /// One LARS update: the chunk norms, then the update, two launches;
    /// nothing changes when the device flag `skip` is set.
    pub(crate) fn step(
        &self,
        (w, g, v): (&Tensor, &Tensor, &Tensor),
        lr: &Scalar,
        (eta, momentum, weight_decay): (f32, f32, f32),
        skip: &Tensor,
    ) -> Result<()> {
        same_device("LARS step", &[w, g, v, &self.chunks])?;
        if self.n_chunks == 0 {
            return Ok(());
        }
        let gpu = &gpu_of(w)?.gpu;
        let lr = lr.cell(gpu_of(w)?)?;
        // Both kernels grid-stride over chunks, so the grid may be capped.
        let blocks = LaunchConfig::blocks(self.n_chunks.min(MAX_BLOCKS) as u32, BLOCK);
        let n_chunks = Arg::I64(self.n_chunks as i64);
        gpu.launch(
            "lars_chunk_norms",
            blocks,
            &[
                w.arg(),
                g.arg(),
                self.chunks.arg(),
                n_chunks,
                self.partials.arg(),
            ],
        )?;
        gpu.launch(
            "lars_momentum_step",
            blocks,
            &[
                w.arg(),
                g.arg(),
                v.arg(),
                self.chunks.arg(),
                n_chunks,
                self.partials.arg(),
                lr.arg(),
                Arg::F32(eta),
                Arg::F32(momentum),
                Arg::F32(weight_decay),
                skip.arg(),
            ],
        )?;
        Ok(())
    }
}

/// `t ← m·t + (1 − m)·s` over the first `t.numel()` elements of `s`; an exact
/// device copy when `m = 0`.
pub(crate) fn ema_update(t: &Tensor, s: &Tensor, m: &Scalar) -> Result<()> {
    same_device("ema_update", &[t, s])?;
    let (tg, sg) = (gpu_of(t)?, gpu_of(s)?);
    let n = t.numel();
    if m.value() == 0.0 && !m.is_per_step() {
        // Bit-exact, even over a teacher holding non-finite values.
        tg.gpu.copy(&sg.buf, 0, &tg.buf, 0, n * 4)?;
        return Ok(());
    }
    tg.gpu.launch(
        "ema_teacher_update",
        LaunchConfig::for_elements(n, BLOCK),
        &[t.arg(), s.arg(), Arg::I64(n as i64), m.cell(tg)?.arg()],
    )?;
    Ok(())
}

/// A zeroed 8-byte device scratch for the one-word results of a reduction.
fn flag_scratch(g: &GpuBuffer) -> Result<kernels::Buffer> {
    Ok(g.gpu.alloc_zeroed(8)?)
}

/// Reads back the scratch words: (f32 at byte 0, i32 flag at byte 4).
fn read_scratch(g: &GpuBuffer, scratch: &kernels::Buffer) -> Result<(f32, bool)> {
    let mut bytes = [0u8; 8];
    g.gpu.read(scratch, 0, &mut bytes)?;
    let value = f32::from_le_bytes(bytes[..4].try_into().expect("4 bytes"));
    let flag = i32::from_le_bytes(bytes[4..].try_into().expect("4 bytes"));
    Ok((value, flag != 0))
}

/// `grads *= inv_scale` in one launch; true if any result is NaN or ±∞
/// (one 4-byte read-back).
pub(crate) fn unscale_and_check(grads: &Tensor, inv_scale: f32) -> Result<bool> {
    let g = gpu_of(grads)?;
    let scratch = flag_scratch(g)?;
    let n = grads.numel();
    g.gpu.launch(
        "unscale_grads_check_finite",
        LaunchConfig::for_elements(n, BLOCK),
        &[
            grads.arg(),
            Arg::I64(n as i64),
            Arg::F32(inv_scale),
            Arg::Ptr(&scratch, 4),
        ],
    )?;
    Ok(read_scratch(g, &scratch)?.1)
}

/// `grads /= scale` with the scale and overflow flag of a device loss
/// scaler's `state` (see [`crate::scaler::DeviceScaler`]), one launch.
pub(crate) fn unscale_by_state(grads: &Tensor, state: &Tensor) -> Result<()> {
    let n = grads.numel();
    gpu_of(grads)?.gpu.launch(
        "unscale_grads_by_state",
        LaunchConfig::for_elements(n, BLOCK),
        &[grads.arg(), Arg::I64(n as i64), state.arg()],
    )?;
    Ok(())
}

/// One step of the device loss scaler's state machine, one thread.
pub(crate) fn loss_scale_update(
    state: &Tensor,
    (growth, backoff): (f32, f32),
    interval: u32,
    min_scale: f32,
) -> Result<()> {
    gpu_of(state)?.gpu.launch(
        "loss_scale_update",
        LaunchConfig::blocks(1, 32),
        &[
            state.arg(),
            Arg::F32(growth),
            Arg::F32(backoff),
            Arg::I32(interval.min(i32::MAX as u32) as i32),
            Arg::F32(min_scale),
        ],
    )?;
    Ok(())
}

/// (Σg² over the finite elements, accumulated in f32 in a fixed order;
/// whether all are finite), in two launches and one 8-byte read-back.
pub(crate) fn grad_sum_squares(grads: &Tensor) -> Result<(f32, bool)> {
    let g = gpu_of(grads)?;
    let scratch = flag_scratch(g)?;
    queue_grad_sum_squares(grads, (&scratch, 0))?;
    let (sum_sq, nonfinite) = read_scratch(g, &scratch)?;
    Ok((sum_sq, !nonfinite))
}

/// Queues [`grad_sum_squares`] without reading it back: Σg² (f32) at byte
/// `offset` of `out` and the non-finite flag (i32, 1 when any is NaN or ±∞)
/// after it. Allocates and frees only its own partials, so it may be captured.
pub(crate) fn queue_grad_sum_squares(
    grads: &Tensor,
    (out, offset): (&kernels::Buffer, usize),
) -> Result<()> {
    let g = gpu_of(grads)?;
    let n = grads.numel();
    let config = LaunchConfig::for_elements(n, BLOCK);
    let blocks = config.grid.0 as usize;
    let partials = g.gpu.alloc(4 * blocks)?;
    g.gpu.fill_bytes(out, offset + 4, 4, 0)?;
    g.gpu.launch(
        "grad_sum_squares_partials",
        config,
        &[
            grads.arg(),
            Arg::I64(n as i64),
            Arg::ptr(&partials),
            Arg::Ptr(out, offset + 4),
        ],
    )?;
    g.gpu.launch(
        "sum_partials",
        LaunchConfig::blocks(1, 1024),
        &[
            Arg::ptr(&partials),
            Arg::I64(blocks as i64),
            Arg::Ptr(out, offset),
        ],
    )?;
    Ok(())
}
