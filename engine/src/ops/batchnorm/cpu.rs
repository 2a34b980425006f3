//! CPU batch norm over channels-last rows: per-channel sums in f64 over fixed
//! row blocks, combined in block order (so results do not depend on thread
//! scheduling), then one fused multiply-add per element with per-channel
//! coefficients.
//!
//! Every pass is flat: the rows of a block are walked one period at a time,
//! a period being the fewest whole rows that fill whole 16-float vectors, with
//! the per-channel coefficients repeated to that length. The inner loops then
//! have no channel arithmetic and vectorise, built for the CPU's widest
//! instruction set through [`vectorized`] (each pass is an `#[inline(always)]`
//! function so it is compiled inside that copy).

use crate::ops::elementwise::relu_value;
use crate::ops::real::{Real, filled_by_blocks};
use crate::ops::simd::vectorized;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Rows per parallel task; fixed so reductions are deterministic.
const ROWS_PER_TASK: usize = 256;

/// Floats per vector the periods are sized for.
const VECTOR: usize = 16;

/// The period for `c` channels: the least common multiple of `c` and
/// [`VECTOR`] (it divides a block of [`ROWS_PER_TASK`] rows).
fn period(c: usize) -> usize {
    let gcd = 1 << c.trailing_zeros().min(VECTOR.trailing_zeros());
    c / gcd * VECTOR
}

/// Per-channel values repeated over a period.
fn tiled<T: Copy>(v: &[T], period: usize) -> Vec<T> {
    v.iter().copied().cycle().take(period).collect()
}

/// Folds period-long per-position sums into per-channel sums, in position order.
fn per_channel(sums: &[f64], c: usize) -> Vec<f64> {
    let mut out = vec![0.0; c];
    for chunk in sums.chunks(c) {
        out.iter_mut().zip(chunk).for_each(|(o, s)| *o += s);
    }
    out
}

/// Sums per-channel vectors in order.
fn sum_in_order(parts: impl IntoIterator<Item = Vec<f64>>, c: usize) -> Vec<f64> {
    parts.into_iter().fold(vec![0.0; c], |mut s, p| {
        s.iter_mut().zip(p).for_each(|(s, p)| *s += p);
        s
    })
}

/// Per-position sums over a block of `Σ (x − centre)^power` (power 1 or 2).
#[inline(always)]
fn block_sums<T: Real>(xb: &[T], centre: &[f64], squared: bool) -> Vec<f64> {
    let mut acc = vec![0.0; centre.len()];
    for chunk in xb.chunks(centre.len()) {
        for ((a, &x), &m) in acc.iter_mut().zip(chunk).zip(centre) {
            let d = x.to_f64() - m;
            *a += if squared { d * d } else { d };
        }
    }
    acc
}

/// Per-channel mean and biased variance: each row block's mean and sum of
/// squared deviations (two passes over the block while it is in cache), then
/// the blocks merged in order by Chan's pairwise rule.
pub(super) fn mean_and_biased_var<T: Real>(x: &[T], c: usize) -> (Vec<f64>, Vec<f64>) {
    let p = period(c);
    let zeros = vec![0.0; p];
    let blocks: Vec<(f64, Vec<f64>, Vec<f64>)> = x
        .par_chunks(c * ROWS_PER_TASK)
        .map(|xb| {
            let rows = (xb.len() / c) as f64;
            let sums = vectorized(
                #[inline(always)]
                || block_sums(xb, &zeros, false),
            );
            let mean: Vec<f64> = per_channel(&sums, c).iter().map(|s| s / rows).collect();
            let m2 = vectorized(
                #[inline(always)]
                || block_sums(xb, &tiled(&mean, p), true),
            );
            (rows, mean, per_channel(&m2, c))
        })
        .collect();
    let mut blocks = blocks.into_iter();
    let (mut n, mut mean, mut m2) = blocks.next().unwrap_or((0.0, vec![0.0; c], vec![0.0; c]));
    for (nb, mb, m2b) in blocks {
        let total = n + nb;
        for j in 0..c {
            let delta = mb[j] - mean[j];
            mean[j] += delta * nb / total;
            m2[j] += m2b[j] + delta * delta * n * nb / total;
        }
        n = total;
    }
    let var = m2.into_iter().map(|s| s / n.max(1.0)).collect();
    (mean, var)
}

/// One block of [`normalize`]: every element of `out` written.
#[inline(always)]
fn normalize_block<T: Real>(
    out: &mut [MaybeUninit<T>],
    x: &[T],
    residual: Option<&[T]>,
    (scale, shift): (&[T], &[T]),
    relu: bool,
) {
    let p = scale.len();
    let finish = |v: T, r: Option<T>| {
        let v = r.map_or(v, |r| v + r);
        if relu { relu_value(v) } else { v }
    };
    for (i, (oc, xc)) in out.chunks_mut(p).zip(x.chunks(p)).enumerate() {
        let coefficients = scale.iter().zip(shift);
        match residual {
            Some(r) => {
                let rc = &r[i * p..][..xc.len()];
                for (((o, &x), &r), (&s, &t)) in oc.iter_mut().zip(xc).zip(rc).zip(coefficients) {
                    o.write(finish(s * x + t, Some(r)));
                }
            }
            None => {
                for ((o, &x), (&s, &t)) in oc.iter_mut().zip(xc).zip(coefficients) {
                    o.write(finish(s * x + t, None));
                }
            }
        }
    }
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
    let scale: Vec<f64> = (0..c).map(|j| gamma[j].to_f64() * inv_std[j]).collect();
    let shift: Vec<T> = (0..c)
        .map(|j| T::from_f64(beta[j].to_f64() - scale[j] * mean[j]))
        .collect();
    let scale: Vec<T> = scale.into_iter().map(T::from_f64).collect();
    let p = period(c);
    let (scale, shift) = (tiled(&scale, p), tiled(&shift, p));
    let block = c * ROWS_PER_TASK;
    filled_by_blocks(x.len(), block, |b, ob| {
        let start = b * block;
        let xb = &x[start..start + ob.len()];
        let rb = residual.map(|r| &r[start..start + ob.len()]);
        vectorized(
            #[inline(always)]
            || normalize_block(ob, xb, rb, (&scale, &shift), relu),
        )
    })
}

/// The per-channel constants of one forward.
pub(super) struct Coefficients<'a> {
    pub mean_hat: &'a [f64],
    pub batch_mean: &'a [f64],
    pub inv_std: &'a [f64],
    pub a: f64,
    pub b: f64,
}

/// What backward returns: `dx`, `dγ`, `dβ`, and the output gradient after
/// the ReLU gate (the residual's gradient).
pub(super) type Grads<T> = (Vec<T>, Vec<T>, Vec<T>, Vec<T>);

/// One block of the gate and sums pass of [`backward`]: writes `g` into
/// `gated`, returns the per-position sums of `g` and `g·(x − μ̂)`.
#[inline(always)]
fn gate_and_sums<T: Real>(
    gated: &mut [T],
    (x, dy, relu_out): (&[T], &[T], Option<&[T]>),
    mean_hat: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    match relu_out {
        Some(y) => {
            for ((g, &d), &y) in gated.iter_mut().zip(dy).zip(y) {
                *g = if y > T::ZERO { d } else { T::ZERO };
            }
        }
        None => gated.copy_from_slice(dy),
    }
    let p = mean_hat.len();
    let (mut sum_g, mut sum_gx) = (vec![0.0; p], vec![0.0; p]);
    for (gc, xc) in gated.chunks(p).zip(x.chunks(p)) {
        let sums = sum_g.iter_mut().zip(sum_gx.iter_mut());
        for (((sg, sgx), &g), (&x, &m)) in sums.zip(gc).zip(xc.iter().zip(mean_hat)) {
            let g = g.to_f64();
            *sg += g;
            *sgx += g * (x.to_f64() - m);
        }
    }
    (sum_g, sum_gx)
}

/// One block of `dx = k0·g + k1·x + k2`: every element of `out` written.
#[inline(always)]
fn affine_block<T: Real>(out: &mut [MaybeUninit<T>], g: &[T], x: &[T], k: [&[T]; 3]) {
    let p = k[0].len();
    for ((oc, gc), xc) in out.chunks_mut(p).zip(g.chunks(p)).zip(x.chunks(p)) {
        let coefficients = k[0].iter().zip(k[1]).zip(k[2]);
        for (((o, &g), &x), ((&k0, &k1), &k2)) in oc.iter_mut().zip(gc).zip(xc).zip(coefficients) {
            o.write(k0 * g + k1 * x + k2);
        }
    }
}

/// `dx = γ·r·[g − a·Σg/n − b·r²·(x − μ_b)·Σg·(x − μ̂)/n]`,
/// `dγ = r·Σg·(x − μ̂)`, `dβ = Σg`, for `g` the output gradient `dy` gated
/// by the fused ReLU's output `y` where there is one; `dx` is evaluated as
/// `k0·g + k1·x + k2`. Two passes: the gate and both sums, then `dx`.
pub(super) fn backward<T: Real>(
    x: &[T],
    dy: &[T],
    relu_out: Option<&[T]>,
    gamma: &[T],
    k: &Coefficients,
) -> Grads<T> {
    let c = gamma.len();
    let n = (x.len() / c) as f64;
    let p = period(c);
    let mean_hat = tiled(k.mean_hat, p);
    let block = c * ROWS_PER_TASK;
    let mut gated = vec![T::ZERO; x.len()];
    let sums: Vec<(Vec<f64>, Vec<f64>)> = gated
        .par_chunks_mut(block)
        .enumerate()
        .map(|(b, gb)| {
            let start = b * block;
            let (xb, db) = (&x[start..][..gb.len()], &dy[start..][..gb.len()]);
            let yb = relu_out.map(|y| &y[start..][..gb.len()]);
            let (sum_g, sum_gx) = vectorized(
                #[inline(always)]
                || gate_and_sums(gb, (xb, db, yb), &mean_hat),
            );
            (per_channel(&sum_g, c), per_channel(&sum_gx, c))
        })
        .collect();
    let (sum_g, sum_gx): (Vec<_>, Vec<_>) = sums.into_iter().unzip();
    let (sum_dy, sum_dy_xc) = (sum_in_order(sum_g, c), sum_in_order(sum_gx, c));
    let mut coefficients = [Vec::new(), Vec::new(), Vec::new()];
    for j in 0..c {
        let (g, r) = (gamma[j].to_f64(), k.inv_std[j]);
        let slope = -g * r * r * r * k.b * sum_dy_xc[j] / n;
        let offset = -g * r * k.a * sum_dy[j] / n - slope * k.batch_mean[j];
        for (list, v) in coefficients.iter_mut().zip([g * r, slope, offset]) {
            list.push(T::from_f64(v));
        }
    }
    let [k0, k1, k2] = coefficients.map(|v| tiled(&v, p));
    let dx = filled_by_blocks(x.len(), block, |b, ob| {
        let start = b * block;
        let (xb, gb) = (&x[start..][..ob.len()], &gated[start..][..ob.len()]);
        vectorized(
            #[inline(always)]
            || affine_block(ob, gb, xb, [&k0, &k1, &k2]),
        )
    });
    let dgamma = (0..c)
        .map(|j| T::from_f64(sum_dy_xc[j] * k.inv_std[j]))
        .collect();
    let dbeta = sum_dy.into_iter().map(T::from_f64).collect();
    (dx, dgamma, dbeta, gated)
}
