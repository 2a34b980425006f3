//! CPU batch norm over channels-last rows: per-channel sums in f64 over fixed
//! row blocks, combined in block order (so results do not depend on thread
//! scheduling), then one fused multiply-add per element with per-channel
//! coefficients. Each pass runs through [`vectorized`], and works on eight
//! channels at a time so that the compiler keeps them in one vector.

use crate::ops::elementwise::relu_value;
use crate::ops::real::Real;
use crate::ops::simd::vectorized;
use rayon::prelude::*;

/// Rows per parallel task; fixed so reductions are deterministic.
const ROWS_PER_TASK: usize = 256;

/// Channels handled together.
const LANES: usize = 8;

/// `f(a[j], b[j], c[j], d[j])` for every channel `j`, in groups of
/// [`LANES`] (operands a pass does not need are given twice and unused).
#[inline(always)]
fn per_channel<A, B: Copy, C: Copy, D: Copy>(
    a: &mut [A],
    (b, c, d): (&[B], &[C], &[D]),
    f: impl Fn(&mut A, B, C, D),
) {
    let mut a8 = a.chunks_exact_mut(LANES);
    let (mut b8, mut c8, mut d8) = (
        b.chunks_exact(LANES),
        c.chunks_exact(LANES),
        d.chunks_exact(LANES),
    );
    for (((a, b), c), d) in (&mut a8).zip(&mut b8).zip(&mut c8).zip(&mut d8) {
        for i in 0..LANES {
            f(&mut a[i], b[i], c[i], d[i]);
        }
    }
    let tails = a8.into_remainder().iter_mut().zip(b8.remainder());
    for (((a, &b), &c), &d) in tails.zip(c8.remainder()).zip(d8.remainder()) {
        f(a, b, c, d);
    }
}

/// Sums per-channel vectors in order.
fn sum_in_order(parts: impl IntoIterator<Item = Vec<f64>>, c: usize) -> Vec<f64> {
    parts.into_iter().fold(vec![0.0; c], |mut s, p| {
        s.iter_mut().zip(p).for_each(|(s, p)| *s += p);
        s
    })
}

/// Per-channel mean and biased variance: each row block's mean and sum of
/// squared deviations (two passes over the block while it is in cache), then
/// the blocks merged in order by Chan's pairwise rule.
pub(super) fn mean_and_biased_var<T: Real>(x: &[T], c: usize) -> (Vec<f64>, Vec<f64>) {
    let blocks: Vec<(f64, Vec<f64>, Vec<f64>)> = x
        .par_chunks(c * ROWS_PER_TASK)
        .map(|xb| {
            vectorized(|| {
                let rows = (xb.len() / c) as f64;
                let mut mean = vec![0.0; c];
                for xr in xb.chunks_exact(c) {
                    per_channel(&mut mean, (xr, xr, xr), |s, v, _, _| *s += v.to_f64());
                }
                mean.iter_mut().for_each(|s| *s /= rows);
                let mut m2 = vec![0.0; c];
                for xr in xb.chunks_exact(c) {
                    per_channel(&mut m2, (xr, &mean, &mean), |a, v, m, _| {
                        let d = v.to_f64() - m;
                        *a += d * d;
                    });
                }
                (rows, mean, m2)
            })
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
    let block = c * ROWS_PER_TASK;
    let mut out = vec![T::ZERO; x.len()];
    out.par_chunks_mut(block).enumerate().for_each(|(b, ob)| {
        let start = b * block;
        let xb = &x[start..start + ob.len()];
        let rb = residual.map(|r| &r[start..start + ob.len()]);
        vectorized(|| {
            for (i, (or, xr)) in ob.chunks_exact_mut(c).zip(xb.chunks_exact(c)).enumerate() {
                per_channel(or, (xr, &scale, &shift), |o, x, s, t| *o = s * x + t);
                if let Some(rb) = rb {
                    let rr = &rb[i * c..][..c];
                    per_channel(or, (rr, rr, rr), |o, r, _, _| *o += r);
                }
                if relu {
                    per_channel(or, (xr, xr, xr), |o, _, _, _| *o = relu_value(*o));
                }
            }
        })
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

/// What backward returns: `dx`, `dγ`, `dβ`, and the output gradient after
/// the ReLU gate (the residual's gradient).
pub(super) type Grads<T> = (Vec<T>, Vec<T>, Vec<T>, Vec<T>);

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
    let block = c * ROWS_PER_TASK;
    let mut gated = vec![T::ZERO; x.len()];
    let sums: Vec<(Vec<f64>, Vec<f64>)> = gated
        .par_chunks_mut(block)
        .enumerate()
        .map(|(b, gb)| {
            let start = b * block;
            let (xb, db) = (&x[start..][..gb.len()], &dy[start..][..gb.len()]);
            let yb = relu_out.map(|y| &y[start..][..gb.len()]);
            vectorized(|| {
                let (mut sum_g, mut sum_gx) = (vec![0.0; c], vec![0.0; c]);
                for (i, gr) in gb.chunks_exact_mut(c).enumerate() {
                    let (xr, dr) = (&xb[i * c..][..c], &db[i * c..][..c]);
                    match yb {
                        Some(yb) => per_channel(gr, (dr, &yb[i * c..][..c], dr), |g, d, y, _| {
                            *g = if y > T::ZERO { d } else { T::ZERO }
                        }),
                        None => gr.copy_from_slice(dr),
                    }
                    per_channel(&mut sum_g, (gr, gr, gr), |s, g, _, _| *s += g.to_f64());
                    per_channel(&mut sum_gx, (gr, xr, k.mean_hat), |s, g, x, m| {
                        *s += g.to_f64() * (x.to_f64() - m)
                    });
                }
                (sum_g, sum_gx)
            })
        })
        .collect();
    let (sum_g, sum_gx): (Vec<_>, Vec<_>) = sums.into_iter().unzip();
    let (sum_dy, sum_dy_xc) = (sum_in_order(sum_g, c), sum_in_order(sum_gx, c));
    let mut k0 = Vec::with_capacity(c);
    let mut k1 = Vec::with_capacity(c);
    let mut k2 = Vec::with_capacity(c);
    for j in 0..c {
        let (g, r) = (gamma[j].to_f64(), k.inv_std[j]);
        let slope = -g * r * r * r * k.b * sum_dy_xc[j] / n;
        let offset = -g * r * k.a * sum_dy[j] / n - slope * k.batch_mean[j];
        k0.push(T::from_f64(g * r));
        k1.push(T::from_f64(slope));
        k2.push(T::from_f64(offset));
    }
    let mut dx = vec![T::ZERO; x.len()];
    dx.par_chunks_mut(block).enumerate().for_each(|(b, ob)| {
        let start = b * block;
        let (xb, gb) = (&x[start..][..ob.len()], &gated[start..][..ob.len()]);
        vectorized(|| {
            for ((or, xr), gr) in ob
                .chunks_exact_mut(c)
                .zip(xb.chunks_exact(c))
                .zip(gb.chunks_exact(c))
            {
                per_channel(or, (gr, &k0, &k0), |o, g, k0, _| *o = k0 * g);
                per_channel(or, (xr, &k1, &k1), |o, x, k1, _| *o += k1 * x);
                per_channel(or, (&k2, &k2, &k2), |o, k2, _, _| *o += k2);

            }
        })
    });
    let dgamma = (0..c)
        .map(|j| T::from_f64(sum_dy_xc[j] * k.inv_std[j]))
        .collect();
    let dbeta = sum_dy.into_iter().map(T::from_f64).collect();
    (dx, dgamma, dbeta, gated)
}
