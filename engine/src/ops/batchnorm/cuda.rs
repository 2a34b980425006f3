//! Batch norm on a GPU (`kernels/cuda/batchnorm.cu`). A forward is three
//! launches (per-chunk Welford partials, their merge into a per-channel table,
//! the elementwise apply with its fused epilogue), two in evaluation mode; a
//! backward is three (per-chunk sums, their merge into dγ, dβ and dx's
//! coefficients, the elementwise dx). Nothing is read back to the host.

use super::{BatchStats, BnGrads, BnNorm, BnSaved, Coefficients, Epilogue, Gate, mode_weights};
use crate::error::Result;
use crate::ops::gpu::{BLOCK, kernel_for, same_device};
use crate::tensor::GpuBuffer;
use crate::{DType, Scalar, Tensor};
use kernels::{Arg, Gpu, LaunchConfig};

/// Rows of the per-channel table: batch mean, unbiased batch variance, scale,
/// shift, normalising mean, inverse std (in this order, as the kernels index them).
const TABLE_ROWS: usize = 6;
/// Channels per reduction block (`kTileChannels`).
const TILE_CHANNELS: usize = 32;
/// Rows a partial-reduction block walks side by side (`kRowLanes`).
const ROW_LANES: u32 = 8;
/// Chunks a finalize block merges side by side (`kMergeLanes`).
const MERGE_LANES: u32 = 32;
/// Elements (or rows) each thread loads together (`kUnroll`).
const UNROLL: usize = 4;
/// Partial-reduction blocks: several waves on a large GPU, so that the last,
/// partial wave costs little.
const TARGET_BLOCKS: usize = 4096;
/// Fewest rows per chunk (one unrolled step of every row lane): smaller
/// chunks cost more to merge than to read.
const MIN_CHUNK_ROWS: usize = ROW_LANES as usize * UNROLL;

/// The elementwise kernels' launch: each thread takes `UNROLL` elements per
/// step of its grid-stride loop.
fn elementwise_launch(numel: usize) -> LaunchConfig {
    LaunchConfig::for_elements(numel.div_ceil(UNROLL), BLOCK)
}

/// How the reductions split `rows × c`: channel tiles across, row chunks down.
/// Fixed by the shape alone, so results do not depend on the GPU.
struct Split {
    rows: usize,
    c: usize,
    tiles: u32,
    chunks: usize,
    rows_per_chunk: usize,
}

impl Split {
    fn new(rows: usize, c: usize) -> Split {
        let tiles = c.div_ceil(TILE_CHANNELS).max(1);
        let max_chunks = (TARGET_BLOCKS / tiles).max(1);
        let wanted = rows.div_ceil(MIN_CHUNK_ROWS).clamp(1, max_chunks);
        let rows_per_chunk = rows.div_ceil(wanted).max(1);
        Split {
            rows,
            c,
            tiles: tiles as u32,
            // Recounted so no chunk is empty.
            chunks: rows.div_ceil(rows_per_chunk).max(1),
            rows_per_chunk,
        }
    }

    fn partial_launch(&self) -> LaunchConfig {
        LaunchConfig {
            grid: (self.tiles, self.chunks as u32, 1),
            block: (TILE_CHANNELS as u32, ROW_LANES, 1),
            shared_bytes: 0,
        }
    }

    fn finalize_launch(&self) -> LaunchConfig {
        LaunchConfig {
            grid: (self.tiles, 1, 1),
            block: (TILE_CHANNELS as u32, MERGE_LANES, 1),
            shared_bytes: 0,
        }
    }

    /// Workspace for two per-channel values per chunk.
    fn partials(&self, g: &GpuBuffer) -> Result<Tensor> {
        Tensor::gpu_empty(g, [self.chunks, 2, self.c], DType::F32)
    }

    fn rows_arg(&self) -> Arg<'static> {
        Arg::I64(self.rows as i64)
    }

    fn c_arg(&self) -> Arg<'static> {
        Arg::I32(self.c as i32)
    }

    fn rows_per_chunk_arg(&self) -> Arg<'static> {
        Arg::I64(self.rows_per_chunk as i64)
    }
}

/// The GPU half of [`super::forward`]; shapes and statistics are checked.
pub(super) fn forward(
    g: &GpuBuffer,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    norm: BnNorm,
    eps: f64,
    epilogue: Epilogue,
) -> Result<(Tensor, Option<BatchStats>, BnSaved)> {
    const OP: &str = "batch_norm";
    let mut operands = vec![x, gamma, beta];
    if let BnNorm::Running { mean, var } | BnNorm::Momentum { mean, var, .. } = norm {
        operands.extend([mean, var]);
    }
    if let Epilogue::AddRelu(residual) = epilogue {
        operands.push(residual);
    }
    same_device(OP, &operands)?;
    gamma.expect_dtype(OP, &[DType::F32])?;
    beta.expect_dtype(OP, &[DType::F32])?;
    let dt = x.dtype();
    let apply = match epilogue {
        Epilogue::None => kernel_for!(OP, dt, "bn_apply")?,
        Epilogue::Relu => kernel_for!(OP, dt, "bn_apply_relu")?,
        Epilogue::AddRelu(_) => kernel_for!(OP, dt, "bn_apply_add_relu")?,
    };
    let numel = x.numel();
    let c = gamma.numel();
    let split = Split::new(numel / c, c);
    let (a, b) = mode_weights(&norm, split.rows);
    let table = Tensor::gpu_empty(g, [TABLE_ROWS, c], DType::F32)?;
    let eps = Arg::F32(eps as f32);

    let stats = if let BnNorm::Running { mean, var } = norm {
        g.gpu.launch(
            "bn_running_coefficients",
            LaunchConfig::for_elements(c, BLOCK),
            &[
                mean.arg(),
                var.arg(),
                gamma.arg(),
                beta.arg(),
                eps,
                table.arg(),
                split.c_arg(),
            ],
        )?;
        None
    } else {
        let partial = split.partials(g)?;
        g.gpu.launch(
            kernel_for!(OP, dt, "bn_stats_partial")?,
            split.partial_launch(),
            &[
                x.arg(),
                partial.arg(),
                split.rows_arg(),
                split.c_arg(),
                split.rows_per_chunk_arg(),
            ],
        )?;
        let head = [
            partial.arg(),
            Arg::I64(split.chunks as i64),
            split.rows_per_chunk_arg(),
            split.rows_arg(),
            split.c_arg(),
            gamma.arg(),
            beta.arg(),
        ];
        match norm {
            BnNorm::Momentum {
                mean,
                var,
                beta,
                correction,
            } => {
                let beta = beta.cell(g)?;
                let var_factor = super::momentum_var_factor(correction, split.rows);
                let tail = [
                    mean.arg(),
                    var.arg(),
                    beta.arg(),
                    Arg::F32(var_factor as f32),
                    eps,
                    table.arg(),
                ];
                g.gpu.launch(
                    "bn_momentum_finalize",
                    split.finalize_launch(),
                    &[&head[..], &tail].concat(),
                )?;
            }
            _ => g.gpu.launch(
                "bn_batch_finalize",
                split.finalize_launch(),
                &[&head[..], &[eps, table.arg()]].concat(),
            )?,
        }
        Some(BatchStats {
            mean: table.view(0, [c].into()),
            var: table.view(c, [c].into()),
            count: split.rows,
        })
    };

    let y = Tensor::gpu_empty(g, x.shape().clone(), dt)?;
    let mut args = vec![x.arg()];
    if let Epilogue::AddRelu(residual) = epilogue {
        args.push(residual.arg());
    }
    args.extend([table.arg(), y.arg(), Arg::I64(numel as i64), split.c_arg()]);
    g.gpu.launch(apply, elementwise_launch(numel), &args)?;

    let gate = match epilogue {
        Epilogue::None => Gate::None,
        Epilogue::Relu => Gate::Relu(y.clone()),
        Epilogue::AddRelu(_) => Gate::AddRelu(y.clone()),
    };
    let saved = BnSaved {
        x: x.clone(),
        gamma: gamma.clone(),
        coefficients: Coefficients::Gpu(table),
        gate,
        a,
        b,
        per_step: matches!(norm, BnNorm::Momentum { beta, .. } if beta.is_per_step()),
    };
    Ok((y, stats, saved))
}

/// The GPU half of [`super::backward`], from the forward's `table`.
pub(super) fn backward(g: &GpuBuffer, s: &BnSaved, table: &Tensor, dy: &Tensor) -> Result<BnGrads> {
    const OP: &str = "batch_norm backward";
    same_device(OP, &[&s.x, dy])?;
    if s.per_step && g.gpu.capturing() {
        return Err(kernels::Error::Capture(
            "the backward of Momentum BN takes its per-step β as a launch argument, which a graph would freeze".into(),
        )
        .into());
    }
    let dt = s.x.expect_same_dtype(OP, dy)?;
    let (x, numel, c) = (&s.x, s.x.numel(), s.gamma.numel());
    let split = Split::new(numel / c, c);
    let partial = split.partials(g)?;
    let tail = [
        table.arg(),
        partial.arg(),
        split.rows_arg(),
        split.c_arg(),
        split.rows_per_chunk_arg(),
    ];
    // After the fused add, the gated gradient is written once: it is the
    // residual's gradient and dx's input.
    let mut dresidual = None;
    match &s.gate {
        Gate::None => g.gpu.launch(
            kernel_for!(OP, dt, "bn_backward_partial")?,
            split.partial_launch(),
            &[&[x.arg(), dy.arg()][..], &tail].concat(),
        )?,
        Gate::Relu(y) => g.gpu.launch(
            kernel_for!(OP, dt, "bn_relu_backward_partial")?,
            split.partial_launch(),
            &[&[x.arg(), dy.arg(), y.arg()][..], &tail].concat(),
        )?,
        Gate::AddRelu(y) => {
            let gated = Tensor::gpu_empty(g, x.shape().clone(), dt)?;
            g.gpu.launch(
                kernel_for!(OP, dt, "bn_add_relu_backward_partial")?,
                split.partial_launch(),
                &[&[x.arg(), dy.arg(), y.arg(), gated.arg()][..], &tail].concat(),
            )?;
            dresidual = Some(gated);
        }
    }

    let dgamma = Tensor::gpu_empty(g, [c], DType::F32)?;
    let dbeta = Tensor::gpu_empty(g, [c], DType::F32)?;
    let coeff = Tensor::gpu_empty(g, [3, c], DType::F32)?;
    g.gpu.launch(
        "bn_backward_finalize",
        split.finalize_launch(),
        &[
            partial.arg(),
            Arg::I64(split.chunks as i64),
            split.rows_arg(),
            split.c_arg(),
            s.gamma.arg(),
            table.arg(),
            Arg::F32(s.a as f32),
            Arg::F32(s.b as f32),
            dgamma.arg(),
            dbeta.arg(),
            coeff.arg(),
        ],
    )?;

    let dx = Tensor::gpu_empty(g, x.shape().clone(), dt)?;
    let (apply, mut args) = match &s.gate {
        Gate::Relu(y) => (
            kernel_for!(OP, dt, "bn_relu_backward_apply")?,
            vec![x.arg(), dy.arg(), y.arg()],
        ),
        _ => (
            kernel_for!(OP, dt, "bn_backward_apply")?,
            vec![x.arg(), dresidual.as_ref().unwrap_or(dy).arg()],
        ),
    };
    args.extend([coeff.arg(), dx.arg(), Arg::I64(numel as i64), split.c_arg()]);
    g.gpu.launch(apply, elementwise_launch(numel), &args)?;
    Ok(BnGrads {
        dx,
        dgamma,
        dbeta,
        dresidual,
    })
}

/// Fails unless both buffers can be written in place (no other live
/// reference), before either is.
fn check_exclusive(mean: &mut Tensor, var: &mut Tensor) -> Result<()> {
    mean.gpu_mut()?;
    var.gpu_mut()?;
    Ok(())
}

/// The GPU half of [`super::update_running_stats`] on `gpu`, the buffers';
/// shapes and dtypes are checked.
pub(super) fn update_running_stats(
    gpu: &Gpu,
    mean: &mut Tensor,
    var: &mut Tensor,
    stats: &BatchStats,
    momentum: f64,
) -> Result<()> {
    const OP: &str = "update_running_stats";
    same_device(OP, &[mean, var, &stats.mean, &stats.var])?;
    check_exclusive(mean, var)?;
    let c = mean.numel();
    gpu.launch(
        "bn_running_stats_update",
        LaunchConfig::for_elements(c, BLOCK),
        &[
            mean.arg(),
            var.arg(),
            stats.mean.arg(),
            stats.var.arg(),
            Arg::F32(momentum as f32),
            Arg::I32(c as i32),
        ],
    )?;
    Ok(())
}

/// The GPU half of [`super::momentum_bn_update`] on `gpu`, the buffers';
/// shapes, dtypes and counts are checked, `correction` is the variance's extra factor.
pub(super) fn momentum_bn_update(
    gpu: &Gpu,
    mean: &mut Tensor,
    var: &mut Tensor,
    [view1, view2]: [&BatchStats; 2],
    beta: &Scalar,
    correction: f64,
) -> Result<()> {
    const OP: &str = "momentum_bn_update";
    same_device(
        OP,
        &[mean, var, &view1.mean, &view1.var, &view2.mean, &view2.var],
    )?;
    check_exclusive(mean, var)?;
    let c = mean.numel();
    let beta = beta.cell(mean.gpu().expect("checked to be on a GPU"))?;
    gpu.launch(
        "momentum_bn_history_update",
        LaunchConfig::for_elements(c, BLOCK),
        &[
            mean.arg(),
            var.arg(),
            view1.mean.arg(),
            view1.var.arg(),
            view2.mean.arg(),
            view2.var.arg(),
            beta.arg(),
            Arg::F32(correction as f32),
            Arg::I32(c as i32),
        ],
    )?;
    Ok(())
}
