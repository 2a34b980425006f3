//! CPU batch norm: per-channel reductions in f64 over fixed row blocks (so the
//! result does not depend on thread scheduling), then elementwise passes.

use crate::ops::real::Real;
use rayon::prelude::*;

/// Rows per parallel task; fixed so reductions are deterministic.
const ROWS_PER_TASK: usize = 512;

/// Per-channel `Σ term(i)` over every row, `i` the flat index of row·c + channel.
fn channel_sum(len: usize, c: usize, term: impl Fn(usize) -> f64 + Sync) -> Vec<f64> {
    let rows = len / c;
    let partials: Vec<Vec<f64>> = (0..rows.div_ceil(ROWS_PER_TASK))
        .into_par_iter()
        .map(|block| {
            let mut acc = vec![0.0; c];
            for row in block * ROWS_PER_TASK..((block + 1) * ROWS_PER_TASK).min(rows) {
                for (j, a) in acc.iter_mut().enumerate() {
                    *a += term(row * c + j);
                }
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
    let mean: Vec<f64> = channel_sum(x.len(), c, |i| x[i].to_f64())
        .into_iter()
        .map(|s| s / n)
        .collect();
    let var = channel_sum(x.len(), c, |i| (x[i].to_f64() - mean[i % c]).powi(2))
        .into_iter()
        .map(|s| s / n)
        .collect();
    (mean, var)
}

pub(super) fn normalize<T: Real>(
    x: &[T],
    gamma: &[T],
    beta: &[T],
    mean: &[f64],
    inv_std: &[f64],
) -> Vec<T> {
    let c = gamma.len();
    let mut y = vec![T::ZERO; x.len()];
    y.par_chunks_mut(c * ROWS_PER_TASK)
        .zip(x.par_chunks(c * ROWS_PER_TASK))
        .for_each(|(y, x)| {
            for (i, (y, &x)) in y.iter_mut().zip(x).enumerate() {
                let j = i % c;
                let xhat = (x.to_f64() - mean[j]) * inv_std[j];
                *y = T::from_f64(gamma[j].to_f64() * xhat + beta[j].to_f64());
            }
        });
    y
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
/// `dγ = r·Σdy·(x − μ̂)`, `dβ = Σdy`.
pub(super) fn backward<T: Real>(
    x: &[T],
    dy: &[T],
    gamma: &[T],
    k: &Coefficients,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let c = gamma.len();
    let n = (x.len() / c) as f64;
    let sum_dy = channel_sum(x.len(), c, |i| dy[i].to_f64());
    let sum_dy_xc = channel_sum(x.len(), c, |i| {
        dy[i].to_f64() * (x[i].to_f64() - k.mean_hat[i % c])
    });
    let mut dx = vec![T::ZERO; x.len()];
    dx.par_chunks_mut(c * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(block, dx)| {
            let base = block * c * ROWS_PER_TASK;
            for (o, d) in dx.iter_mut().enumerate() {
                let (i, j) = (base + o, o % c);
                let r = k.inv_std[j];
                let centred = x[i].to_f64() - k.batch_mean[j];
                let v =
                    dy[i].to_f64() - k.a * sum_dy[j] / n - k.b * r * r * centred * sum_dy_xc[j] / n;
                *d = T::from_f64(gamma[j].to_f64() * r * v);
            }
        });
    let dgamma = (0..c)
        .map(|j| T::from_f64(sum_dy_xc[j] * k.inv_std[j]))
        .collect();
    let dbeta = sum_dy.into_iter().map(T::from_f64).collect();
    (dx, dgamma, dbeta)
}
