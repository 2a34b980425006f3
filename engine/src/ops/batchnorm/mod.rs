//! Batch normalisation over the channel (last) axis of NHWC `[n,h,w,c]` or
//! `[n,c]` tensors, in three modes: batch statistics (training), fixed running
//! statistics (evaluation), and Momentum BN (the M2T teacher).
//!
//! All three normalise as `y = γ·(x − μ̂)/sqrt(σ̂² + ε) + b`, with
//! `μ̂ = a·μ_b + const` and `σ̂² = b·v_b + const` for the batch mean `μ_b` and
//! biased variance `v_b`; one backward serves every mode through `(a, b)`.
//! Statistics and running buffers are always f32.

mod cpu;

use super::with_float;
use crate::error::{Error, Result, same_shape, shape_err};
use crate::{DType, Tensor};

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
        /// Weight of the batch statistics, 1 → 0 over training.
        beta: f64,
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

/// What backward needs from a batch-norm forward.
#[derive(Debug)]
pub(crate) struct BnSaved {
    x: Tensor,
    gamma: Tensor,
    mean_hat: Vec<f64>,
    batch_mean: Vec<f64>,
    inv_std: Vec<f64>,
    /// `∂μ̂/∂μ_b`.
    a: f64,
    /// `∂σ̂²/∂v_b` (v_b the biased batch variance).
    b: f64,
}

fn f32_stats(op: &'static str, t: &Tensor, c: usize) -> Result<Vec<f64>> {
    t.expect_dtype(op, &[DType::F32])?;
    if t.dims() != [c] {
        return Err(shape_err(
            op,
            format!("statistics have shape {}, expected [{c}]", t.shape()),
        ));
    }
    t.to_f64_vec()
}

fn f32_tensor(v: Vec<f64>) -> Result<Tensor> {
    let n = v.len();
    Tensor::from_vec(v.into_iter().map(|x| x as f32).collect::<Vec<_>>(), [n])
}

/// Normalises `x`; returns the output, the batch statistics (not for
/// [`BnNorm::Running`]) and what backward needs.
pub(crate) fn forward(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    norm: BnNorm,
    eps: f64,
) -> Result<(Tensor, Option<BatchStats>, BnSaved)> {
    const OP: &str = "batch_norm";
    if !matches!(x.shape().rank(), 2 | 4) {
        return Err(shape_err(
            OP,
            format!("expected [n,c] or [n,h,w,c], got {}", x.shape()),
        ));
    }
    let c = *x.dims().last().unwrap_or(&0);
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
    let dt = x.expect_same_dtype(OP, gamma)?;
    x.expect_same_dtype(OP, beta)?;
    let n = x.numel() / c.max(1);
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
    with_float!(OP, dt, T => {
        let xs = x.as_slice::<T>()?;
        let (batch_mean, biased_var) = if needs_batch {
            cpu::mean_and_biased_var(xs, c)
        } else {
            (vec![0.0; c], vec![0.0; c])
        };
        let nf = n as f64;
        let unbiased = nf / (nf - 1.0);
        let (mean_hat, var_hat, a, b) = match norm {
            BnNorm::Batch => (batch_mean.clone(), biased_var.clone(), 1.0, 1.0),
            BnNorm::Running { mean, var } => {
                (f32_stats(OP, mean, c)?, f32_stats(OP, var, c)?, 0.0, 0.0)
            }
            BnNorm::Momentum { mean, var, beta, correction } => {
                let (hm, hv) = (f32_stats(OP, mean, c)?, f32_stats(OP, var, c)?);
                let k = unbiased * correction.extra_factor(n);
                let mh = (0..c).map(|j| beta * batch_mean[j] + (1.0 - beta) * hm[j]).collect();
                let vh = (0..c).map(|j| beta * k * biased_var[j] + (1.0 - beta) * hv[j]).collect();
                (mh, vh, beta, beta * k)
            }
        };
        let inv_std: Vec<f64> = var_hat.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let y = cpu::normalize::<T>(
            xs,
            gamma.as_slice()?,
            beta.as_slice()?,
            &mean_hat,
            &inv_std,
        );
        let stats = if needs_batch {
            Some(BatchStats {
                mean: f32_tensor(batch_mean.clone())?,
                var: f32_tensor(biased_var.iter().map(|v| v * unbiased).collect())?,
                count: n,
            })
        } else {
            None
        };
        let saved = BnSaved { x: x.clone(), gamma: gamma.clone(), mean_hat, batch_mean, inv_std, a, b };
        Ok((Tensor::from_vec(y, x.shape().clone())?, stats, saved))
    })
}

/// Gradients `(dx, dγ, dβ)` of [`forward`].
pub(crate) fn backward(s: &BnSaved, dy: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    same_shape("batch_norm backward", s.x.shape(), dy.shape())?;
    with_float!("batch_norm backward", s.x.dtype(), T => {
        let (dx, dgamma, dbeta) = cpu::backward::<T>(
            s.x.as_slice()?,
            dy.as_slice()?,
            s.gamma.as_slice()?,
            &cpu::Coefficients { mean_hat: &s.mean_hat, batch_mean: &s.batch_mean, inv_std: &s.inv_std, a: s.a, b: s.b },
        );
        let c = s.gamma.numel();
        Ok((
            Tensor::from_vec(dx, s.x.shape().clone())?,
            Tensor::from_vec(dgamma, [c])?,
            Tensor::from_vec(dbeta, [c])?,
        ))
    })
}

/// `buf ← (1 − w)·buf + w·batch` for the mean and variance buffers together:
/// both are checked and borrowed before either is written.
fn blend_into(
    op: &'static str,
    [mean, var]: [&mut Tensor; 2],
    [batch_mean, batch_var]: [Vec<f64>; 2],
    w: f64,
) -> Result<()> {
    let c = batch_mean.len();
    for t in [&*mean, &*var] {
        if t.dims() != [c] {
            return Err(shape_err(
                op,
                format!("buffer has shape {}, expected [{c}]", t.shape()),
            ));
        }
    }
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
    let (bm, bv) = (
        f32_stats(OP, &stats.mean, c)?,
        f32_stats(OP, &stats.var, c)?,
    );
    blend_into(OP, [mean, var], [bm, bv], momentum)
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
    beta: f64,
    correction: BesselCorrection,
) -> Result<()> {
    const OP: &str = "momentum_bn_update";
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
    let corr = correction.extra_factor(view1.count);
    let avg = |a: &Tensor, b: &Tensor| -> Result<Vec<f64>> {
        let (a, b) = (f32_stats(OP, a, c)?, f32_stats(OP, b, c)?);
        Ok(a.iter().zip(&b).map(|(x, y)| (x + y) / 2.0).collect())
    };
    let batch_mean = avg(&view1.mean, &view2.mean)?;
    let batch_var: Vec<f64> = avg(&view1.var, &view2.var)?
        .iter()
        .map(|v| v * corr)
        .collect();
    blend_into(OP, [mean, var], [batch_mean, batch_var], beta)
}
