//! Batch normalisation over the channel (last) axis of NHWC `[n,h,w,c]` or
//! `[n,c]` tensors, in three modes: batch statistics (training), fixed running
//! statistics (evaluation), and Momentum BN (the M2T teacher).
//!
//! All three normalise as `y = γ·(x − μ̂)/sqrt(σ̂² + ε) + b`, with
//! `μ̂ = a·μ_b + const` and `σ̂² = b·v_b + const` for the batch mean `μ_b` and
//! biased variance `v_b`; one backward serves every mode through `(a, b)`.
//! Statistics and running buffers are always f32.

mod cpu;
mod cuda;
pub(crate) mod groups;

use super::with_float;
use crate::error::{Error, Result, same_shape, shape_err};
use crate::{DType, Scalar, Tensor};

/// Which Bessel correction Momentum BN applies to a view's batch variance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BesselCorrection {
    /// The authors' release: `n/(n−1)` applied on top of the already unbiased
    /// variance (so `(n/(n−1))²` on the biased one). The default.
    #[default]
    Double,
    /// The plain unbiased variance, corrected once.
    Single,
}

impl BesselCorrection {
    /// Factor applied to the unbiased batch variance.
    fn extra_factor(self, n: usize) -> f64 {
        match self {
            BesselCorrection::Double => n as f64 / (n as f64 - 1.0),
            BesselCorrection::Single => 1.0,
        }
    }
}

/// Which statistics normalise the batch.
#[derive(Clone, Copy, Debug)]
pub enum BnNorm<'a> {
    /// Training mode: this batch's mean and biased variance.
    Batch,
    /// Evaluation mode: fixed statistics (e.g. running mean and variance), f32 `[c]`.
    Running {
        /// Per-channel mean.
        mean: &'a Tensor,
        /// Per-channel variance.
        var: &'a Tensor,
    },
    /// Momentum BN (m2t-method.md §3): `μ̂ = β·μ_b + (1−β)·μ_hist`,
    /// `σ̂² = β·s²_b·corr + (1−β)·σ²_hist`, with `s²_b` the unbiased batch variance.
    Momentum {
        /// History mean, f32 `[c]`.
        mean: &'a Tensor,
        /// History variance, f32 `[c]`.
        var: &'a Tensor,
        /// Weight of the batch statistics, 1 → 0 over training (read from
        /// device memory on a GPU: it changes every step).
        beta: &'a Scalar,
        /// Extra Bessel correction of the batch variance.
        correction: BesselCorrection,
    },
}

/// Per-channel statistics of one batch, as the running and history updates need them.
#[derive(Clone, Debug)]
pub struct BatchStats {
    /// Batch mean, f32 `[c]`.
    pub mean: Tensor,
    /// Unbiased batch variance, f32 `[c]`.
    pub var: Tensor,
    /// Values per channel that produced them (n·h·w).
    pub count: usize,
}

/// What a batch norm applies after normalising: ResNet's block joins, fused
/// into the normalisation on a GPU.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Epilogue<'a> {
    /// Just `bn(x)`.
    None,
    /// `max(bn(x), 0)`.
    Relu,
    /// `max(bn(x) + residual, 0)`.
    AddRelu(&'a Tensor),
}

/// The per-channel constants of one forward.
#[derive(Debug)]
enum Coefficients {
    /// The CPU forward's, in f64.
    Cpu {
        mean_hat: Vec<f64>,
        batch_mean: Vec<f64>,
        inv_std: Vec<f64>,
    },
    /// The GPU forward's f32 table (rows as in `kernels/cuda/batchnorm.cu`).
    Gpu(Tensor),
}

/// The fused ReLU, if any, with its output: where that is not positive the
/// gradient stops.
#[derive(Debug)]
enum Gate {
    None,
    Relu(Tensor),
    /// The gated gradient is also the residual's.
    AddRelu(Tensor),
}

/// What backward needs from a batch-norm forward.
#[derive(Debug)]
pub(crate) struct BnSaved {
    x: Tensor,
    gamma: Tensor,
    coefficients: Coefficients,
    gate: Gate,
    /// `∂μ̂/∂μ_b`.
    a: f64,
    /// `∂σ̂²/∂v_b` (v_b the biased batch variance).
    b: f64,
    /// Whether `a` and `b` come from a per-step β (in a device cell) that
    /// the backward takes as launch arguments, so a graph cannot replay it.
    per_step: bool,
}

/// Gradients of a batch norm.
#[derive(Debug)]
pub(crate) struct BnGrads {
    pub dx: Tensor,
    pub dgamma: Tensor,
    pub dbeta: Tensor,
    /// The residual's, after [`Epilogue::AddRelu`].
    pub dresidual: Option<Tensor>,
}

/// Fails unless `t` is an f32 `[c]` tensor (statistics and buffers).
fn check_stats(op: &'static str, t: &Tensor, c: usize) -> Result<()> {
    t.expect_dtype(op, &[DType::F32])?;
    if t.dims() != [c] {
        return Err(shape_err(
            op,
            format!("statistics have shape {}, expected [{c}]", t.shape()),
        ));
    }
    Ok(())
}

fn f32_stats(op: &'static str, t: &Tensor, c: usize) -> Result<Vec<f64>> {
    check_stats(op, t, c)?;
    t.to_f64_vec()
}

fn f32_tensor(v: Vec<f64>) -> Result<Tensor> {
    let n = v.len();
    Tensor::from_vec(v.into_iter().map(|x| x as f32).collect::<Vec<_>>(), [n])
}

/// `(a, b)` = `(∂μ̂/∂μ_b, ∂σ̂²/∂v_b)` for `n` values per channel: Momentum BN's
/// `σ̂²` weighs the biased variance by `β·n/(n−1)·corr`.
fn mode_weights(norm: &BnNorm, n: usize) -> (f64, f64) {
    match *norm {
        BnNorm::Batch => (1.0, 1.0),
        BnNorm::Running { .. } => (0.0, 0.0),
        BnNorm::Momentum {
            beta, correction, ..
        } => (
            beta.value(),
            beta.value() * momentum_var_factor(correction, n),
        ),
    }
}

/// Momentum BN's factor on the biased batch variance, besides β: `n/(n−1)·corr`.
fn momentum_var_factor(correction: BesselCorrection, n: usize) -> f64 {
    n as f64 / (n as f64 - 1.0) * correction.extra_factor(n)
}

/// Normalises `x`, then applies `epilogue`; returns the output, the batch
/// statistics (not for [`BnNorm::Running`]) and what backward needs.
///
/// On the CPU, `γ` and `β` have `x`'s dtype; on a GPU they are f32 whatever
/// `x`'s (f32, bf16 or f16).
pub(crate) fn forward(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    norm: BnNorm,
    eps: f64,
    epilogue: Epilogue,
) -> Result<(Tensor, Option<BatchStats>, BnSaved)> {
    const OP: &str = "batch_norm";
    if !matches!(x.shape().rank(), 2 | 4) {
        return Err(shape_err(
            OP,
            format!("expected [n,c] or [n,h,w,c], got {}", x.shape()),
        ));
    }
    let c = *x.dims().last().unwrap_or(&0);
    if c == 0 {
        return Err(shape_err(
            OP,
            format!("input {} has no channels", x.shape()),
        ));
    }
    for (what, p) in [("gamma", gamma), ("beta", beta)] {
        if p.dims() != [c] {
            return Err(shape_err(
                OP,
                format!(
                    "{what} has shape {}, input {} has {c} channels",
                    p.shape(),
                    x.shape()
                ),
            ));
        }
    }
    if let Epilogue::AddRelu(residual) = epilogue {
        same_shape(OP, x.shape(), residual.shape())?;
        x.expect_same_dtype(OP, residual)?;
    }
    let n = x.numel() / c;
    let needs_batch = !matches!(norm, BnNorm::Running { .. });
    if needs_batch && n < 2 {
        return Err(shape_err(
            OP,
            format!(
                "batch statistics need more than one value per channel, input {}",
                x.shape()
            ),
        ));
    }
    if let BnNorm::Running { mean, var } | BnNorm::Momentum { mean, var, .. } = norm {
        check_stats(OP, mean, c)?;
        check_stats(OP, var, c)?;
    }
    if let Some(g) = x.gpu() {
        return cuda::forward(g, x, gamma, beta, norm, eps, epilogue);
    }
    let dt = x.expect_same_dtype(OP, gamma)?;
    x.expect_same_dtype(OP, beta)?;
    let (a, b) = mode_weights(&norm, n);
    let (y, stats, coefficients) = with_float!(OP, dt, T => {
        let xs = x.as_slice::<T>()?;
        let (batch_mean, biased_var) = if needs_batch {
            cpu::mean_and_biased_var(xs, c)
        } else {
            (vec![0.0; c], vec![0.0; c])
        };
        let (mean_hat, var_hat) = match norm {
            BnNorm::Batch => (batch_mean.clone(), biased_var.clone()),
            BnNorm::Running { mean, var } => (f32_stats(OP, mean, c)?, f32_stats(OP, var, c)?),
            BnNorm::Momentum { mean, var, beta, .. } => {
                let beta = beta.value();
                let (hm, hv) = (f32_stats(OP, mean, c)?, f32_stats(OP, var, c)?);
                let mh = (0..c).map(|j| a * batch_mean[j] + (1.0 - beta) * hm[j]).collect();
                let vh = (0..c).map(|j| b * biased_var[j] + (1.0 - beta) * hv[j]).collect();
                (mh, vh)
            }
        };
        let inv_std: Vec<f64> = var_hat.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let (residual, relu) = match epilogue {
            Epilogue::None => (None, false),
            Epilogue::Relu => (None, true),
            Epilogue::AddRelu(r) => (Some(r.as_slice::<T>()?), true),
        };
        let y = cpu::normalize::<T>(
            xs,
            (gamma.as_slice()?, beta.as_slice()?),
            (&mean_hat, &inv_std),
            residual,
            relu,
        );
        let stats = if needs_batch {
            let unbiased = n as f64 / (n as f64 - 1.0);
            Some(BatchStats {
                mean: f32_tensor(batch_mean.clone())?,
                var: f32_tensor(biased_var.iter().map(|v| v * unbiased).collect())?,
                count: n,
            })
        } else {
            None
        };
        let y = Tensor::from_vec(y, x.shape().clone())?;
        Ok::<_, Error>((y, stats, Coefficients::Cpu { mean_hat, batch_mean, inv_std }))
    })?;
    let gate = match epilogue {
        Epilogue::None => Gate::None,
        Epilogue::Relu => Gate::Relu(y.clone()),
        Epilogue::AddRelu(_) => Gate::AddRelu(y.clone()),
    };
    let saved = BnSaved {
        x: x.clone(),
        gamma: gamma.clone(),
        coefficients,
        gate,
        a,
        b,
        per_step: false,
    };
    Ok((y, stats, saved))
}

/// Gradients of [`forward`] for the output gradient `dy`.
pub(crate) fn backward(s: &BnSaved, dy: &Tensor) -> Result<BnGrads> {
    const OP: &str = "batch_norm backward";
    same_shape(OP, s.x.shape(), dy.shape())?;
    let (mean_hat, batch_mean, inv_std) = match (&s.coefficients, dy.gpu()) {
        (Coefficients::Gpu(table), Some(g)) => return cuda::backward(g, s, table, dy),
        (
            Coefficients::Cpu {
                mean_hat,
                batch_mean,
                inv_std,
            },
            None,
        ) => (mean_hat, batch_mean, inv_std),
        _ => {
            return Err(Error::Device {
                op: OP,
                device: dy.device(),
            });
        }
    };
    let relu_out = match &s.gate {
        Gate::None => None,
        Gate::Relu(y) | Gate::AddRelu(y) => Some(y),
    };
    let c = s.gamma.numel();
    let wants_residual = matches!(s.gate, Gate::AddRelu(_));
    let (dx, dgamma, dbeta, dresidual) = with_float!(OP, s.x.dtype(), T => {
        let (dx, dgamma, dbeta, gated) = cpu::backward::<T>(
            s.x.as_slice()?,
            dy.as_slice()?,
            relu_out.map(|y| y.as_slice()).transpose()?,
            s.gamma.as_slice()?,
            &cpu::Coefficients { mean_hat, batch_mean, inv_std, a: s.a, b: s.b },
        );
        Ok::<_, Error>((
            Tensor::from_vec(dx, s.x.shape().clone())?,
            Tensor::from_vec(dgamma, [c])?,
            Tensor::from_vec(dbeta, [c])?,
            // The gated gradient is also the residual's.
            wants_residual.then(|| Tensor::from_vec(gated, s.x.shape().clone())).transpose()?,
        ))
    })?;
    Ok(BnGrads {
        dx,
        dgamma,
        dbeta,
        dresidual,
    })
}

/// Fails unless both buffers are f32 `[c]`; checked before either is written.
fn check_buffers(op: &'static str, [mean, var]: [&Tensor; 2], c: usize) -> Result<()> {
    for t in [mean, var] {
        if t.dims() != [c] {
            return Err(shape_err(
                op,
                format!("buffer has shape {}, expected [{c}]", t.shape()),
            ));
        }
        t.expect_dtype(op, &[DType::F32])?;
    }
    Ok(())
}

/// `buf ← (1 − w)·buf + w·batch` for the mean and variance buffers together
/// (already checked by [`check_buffers`]): both are borrowed before either is written.
fn blend_into(
    [mean, var]: [&mut Tensor; 2],
    [batch_mean, batch_var]: [Vec<f64>; 2],
    w: f64,
) -> Result<()> {
    let (mean, var) = (mean.slice_mut::<f32>()?, var.slice_mut::<f32>()?);
    for (buf, batch) in [(mean, batch_mean), (var, batch_var)] {
        for (h, b) in buf.iter_mut().zip(batch) {
            *h = ((1.0 - w) * *h as f64 + w * b) as f32;
        }
    }
    Ok(())
}

/// Training-mode running update (PyTorch's rule):
/// `running ← (1 − momentum)·running + momentum·batch`, with the unbiased batch variance.
pub fn update_running_stats(
    mean: &mut Tensor,
    var: &mut Tensor,
    stats: &BatchStats,
    momentum: f64,
) -> Result<()> {
    const OP: &str = "update_running_stats";
    let c = stats.mean.numel();
    check_stats(OP, &stats.mean, c)?;
    check_stats(OP, &stats.var, c)?;
    check_buffers(OP, [mean, var], c)?;
    if let Some(g) = mean.gpu() {
        let gpu = g.gpu.clone();
        return cuda::update_running_stats(&gpu, mean, var, stats, momentum);
    }
    let (bm, bv) = (stats.mean.to_f64_vec()?, stats.var.to_f64_vec()?);
    blend_into([mean, var], [bm, bv], momentum)
}

/// Momentum BN's lazy history update, once per iteration after both teacher views
/// (m2t-method.md §3): `μ_h ← β·(μ₁+μ₂)/2 + (1−β)·μ_h` and
/// `σ²_h ← β·(s²₁+s²₂)/2·corr + (1−β)·σ²_h`, with `corr = n/(n−1)` for
/// [`BesselCorrection::Double`] and 1 for [`BesselCorrection::Single`].
pub fn momentum_bn_update(
    mean: &mut Tensor,
    var: &mut Tensor,
    view1: &BatchStats,
    view2: &BatchStats,
    beta: impl Into<Scalar>,
    correction: BesselCorrection,
) -> Result<()> {
    const OP: &str = "momentum_bn_update";
    let beta = &beta.into();
    let c = view1.mean.numel();
    if view1.count < 2 {
        return Err(shape_err(
            OP,
            format!(
                "{} value(s) per channel: batch statistics need at least 2",
                view1.count
            ),
        ));
    }
    if view2.mean.numel() != c || view1.count != view2.count {
        return Err(Error::Shape {
            op: OP,
            detail: format!(
                "views differ: {} channels × {} values vs {} channels × {} values",
                c,
                view1.count,
                view2.mean.numel(),
                view2.count
            ),
        });
    }
    for t in [&view1.mean, &view1.var, &view2.mean, &view2.var] {
        check_stats(OP, t, c)?;
    }
    check_buffers(OP, [mean, var], c)?;
    let corr = correction.extra_factor(view1.count);
    if let Some(g) = mean.gpu() {
        let gpu = g.gpu.clone();
        return cuda::momentum_bn_update(&gpu, mean, var, [view1, view2], beta, corr);
    }
    let avg = |a: &Tensor, b: &Tensor| -> Result<Vec<f64>> {
        let (a, b) = (a.to_f64_vec()?, b.to_f64_vec()?);
        Ok(a.iter().zip(&b).map(|(x, y)| (x + y) / 2.0).collect())
    };
    let batch_mean = avg(&view1.mean, &view2.mean)?;
    let batch_var: Vec<f64> = avg(&view1.var, &view2.var)?
        .iter()
        .map(|v| v * corr)
        .collect();
    blend_into([mean, var], [batch_mean, batch_var], beta.value())
}
