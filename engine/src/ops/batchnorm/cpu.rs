//! CPU batch norm over channels-last rows: per-channel sums in f64 over fixed
//! row blocks (so results do not depend on thread scheduling), then one fused
//! multiply-add per element with per-channel coefficients.

use crate::ops::elementwise::relu_value;
use crate::ops::real::Real;
use rayon::prelude::*;

/// Rows per parallel task; fixed so reductions are deterministic.
const ROWS_PER_TASK: usize = 256;

/// Per-channel sums of `term(x_row, y_row, acc)` over all rows of two
/// channels-last arrays, accumulated block by block in a fixed order.
fn channel_sums<T: Real>(
    x: &[T],
    y: &[T],
    c: usize,
    term: impl Fn(&[T], &[T], &mut [f64]) + Sync,
) -> Vec<f64> {
    let block = c * ROWS_PER_TASK;
    let partials: Vec<Vec<f64>> = x
        .par_chunks(block)
        .zip(y.par_chunks(block))
        .map(|(xb, yb)| {
            let mut acc = vec![0.0; c];
            for (xr, yr) in xb.chunks_exact(c).zip(yb.chunks_exact(c)) {
                term(xr, yr, &mut acc);
            }
            acc
        })
        .collect();
    partials.into_iter().fold(vec![0.0; c], |mut s, p| {
        s.iter_mut().zip(p).for_each(|(s, p)| *s += p);
        s
    })
}

/// Per-channel mean and biased variance (two passes).
pub(super) fn mean_and_biased_var<T: Real>(x: &[T], c: usize) -> (Vec<f64>, Vec<f64>) {
    let n = (x.len() / c) as f64;
    let sum = channel_sums(x, x, c, |xr, _, acc| {
        acc.iter_mut().zip(xr).for_each(|(a, &v)| *a += v.to_f64());
    });
    let mean: Vec<f64> = sum.into_iter().map(|s| s / n).collect();
    let sq = channel_sums(x, x, c, |xr, _, acc| {
        for ((a, &v), m) in acc.iter_mut().zip(xr).zip(&mean) {
            let d = v.to_f64() - m;
            *a += d * d;
        }
    });
    (mean, sq.into_iter().map(|s| s / n).collect())
}

/// `out = k0·dy + k1·x + k2` per channel, in parallel row blocks.
fn affine<T: Real>(x: &[T], dy: &[T], c: usize, k: &[[T; 3]]) -> Vec<T> {
    let block = c * ROWS_PER_TASK;
    let mut out = vec![T::ZERO; x.len()];
    out.par_chunks_mut(block).enumerate().for_each(|(b, ob)| {
        let start = b * block;
        let xb = &x[start..start + ob.len()];
        let db = &dy[start..start + ob.len()];
        for ((or, xr), dr) in ob
            .chunks_exact_mut(c)
            .zip(xb.chunks_exact(c))
            .zip(db.chunks_exact(c))
        {
            for (((o, &xv), &g), k) in or.iter_mut().zip(xr).zip(dr).zip(k) {
                *o = k[0] * g + k[1] * xv + k[2];
            }
        }
    });
    out
}

/// `y = γ·(x − μ̂)·r + β` as `y = (γr)·x + (β − γr·μ̂)`, then, in the same
/// pass, `+ residual` and `max(·, 0)` where asked (the same arithmetic as the
/// separate add and ReLU ops, without two more passes over memory).
pub(super) fn normalize<T: Real>(
    x: &[T],
    (gamma, beta): (&[T], &[T]),
    (mean, inv_std): (&[f64], &[f64]),
    residual: Option<&[T]>,
    relu: bool,
) -> Vec<T> {
    let c = gamma.len();
    let k: Vec<(T, T)> = (0..c)
        .map(|j| {
            let scale = gamma[j].to_f64() * inv_std[j];
            (
                T::from_f64(scale),
                T::from_f64(beta[j].to_f64() - scale * mean[j]),
            )
        })
        .collect();
    let block = c * ROWS_PER_TASK;
    let mut out = vec![T::ZERO; x.len()];
    out.par_chunks_mut(block).enumerate().for_each(|(b, ob)| {
        let start = b * block;
        let xb = &x[start..start + ob.len()];
        let rb = residual.map(|r| &r[start..start + ob.len()]);
        for (i, (or, xr)) in ob.chunks_exact_mut(c).zip(xb.chunks_exact(c)).enumerate() {
            for ((o, &xv), &(scale, shift)) in or.iter_mut().zip(xr).zip(&k) {
                *o = scale * xv + shift;
            }
            if let Some(rb) = rb {
                let rr = &rb[i * c..][..c];
                or.iter_mut().zip(rr).for_each(|(o, &r)| *o += r);
            }
            if relu {
                or.iter_mut().for_each(|o| *o = relu_value(*o));
            }
        }
    });
    out
}

/// The per-channel constants of one forward.
pub(super) struct Coefficients<'a> {
    pub mean_hat: &'a [f64],
    pub batch_mean: &'a [f64],
    pub inv_std: &'a [f64],
    pub a: f64,
    pub b: f64,
}

/// `dx = γ·r·[dy − a·Σdy/n − b·r²·(x − μ_b)·Σdy·(x − μ̂)/n]`,
/// `dγ = r·Σdy·(x − μ̂)`, `dβ = Σdy`; `dx` is evaluated as `k0·dy + k1·x + k2`.
pub(super) fn backward<T: Real>(
    x: &[T],
    dy: &[T],
    gamma: &[T],
    k: &Coefficients,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let c = gamma.len();
    let n = (x.len() / c) as f64;
    let sum_dy = channel_sums(dy, dy, c, |dr, _, acc| {
        acc.iter_mut().zip(dr).for_each(|(a, &g)| *a += g.to_f64());
    });
    let sum_dy_xc = channel_sums(x, dy, c, |xr, dr, acc| {
        for (((a, &xv), &g), m) in acc.iter_mut().zip(xr).zip(dr).zip(k.mean_hat) {
            *a += g.to_f64() * (xv.to_f64() - m);
        }
    });
    let coeff: Vec<[T; 3]> = (0..c)
        .map(|j| {
            let (g, r) = (gamma[j].to_f64(), k.inv_std[j]);
            let slope = -g * r * r * r * k.b * sum_dy_xc[j] / n;
            let offset = -g * r * k.a * sum_dy[j] / n - slope * k.batch_mean[j];
            [T::from_f64(g * r), T::from_f64(slope), T::from_f64(offset)]
        })
        .collect();
    let dx = affine(x, dy, c, &coeff);
    let dgamma = (0..c)
        .map(|j| T::from_f64(sum_dy_xc[j] * k.inv_std[j]))
        .collect();
    let dbeta = sum_dy.into_iter().map(T::from_f64).collect();
    (dx, dgamma, dbeta)
}
