//! Row-wise L2 normalisation, the symmetric M2T loss and softmax cross-entropy.
//! Reductions run in f64 whatever the input float type on the CPU, in f32 on
//! a GPU.

mod cuda;

use super::real::Real;
use super::with_float;
use crate::error::{Result, same_shape, shape_err};
use crate::{DType, Tensor};
use rayon::prelude::*;

/// Norms below this are clamped, as in PyTorch's `F.normalize`.
pub(crate) const NORM_EPS: f64 = 1e-12;

fn rows_of(op: &'static str, x: &Tensor) -> Result<(usize, usize)> {
    let &[n, f] = x.expect_rank(op, 2)? else {
        unreachable!()
    };
    Ok((n, f))
}

/// `y = x / max(‖x‖, 1e-12)` per row of `[n,f]`; also returns the clamped
/// norms, `[n]` (f64 on the CPU, f32 on a GPU).
pub(crate) fn l2_normalize(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let (n, f) = rows_of("l2_normalize", x)?;
    if let Some(g) = x.gpu() {
        return cuda::l2_normalize(g, x, n, f);
    }
    with_float!("l2_normalize", x.dtype(), T => {
        let xs = x.as_slice::<T>()?;
        let norms: Vec<f64> = xs
            .par_chunks(f.max(1))
            .map(|r| r.iter().map(|v| v.to_f64().powi(2)).sum::<f64>().sqrt().max(NORM_EPS))
            .collect();
        let y: Vec<T> = xs
            .par_chunks(f.max(1))
            .zip(&norms)
            .flat_map_iter(|(r, &nrm)| r.iter().map(move |v| T::from_f64(v.to_f64() / nrm)))
            .collect();
        let n = norms.len();
        Ok((Tensor::from_vec(y, x.shape().clone())?, Tensor::from_vec(norms, [n])?))
    })
}

/// `dx = (dy − y·⟨y, dy⟩) / ‖x‖` per row (just `dy / ε` where the norm was clamped).
pub(crate) fn l2_normalize_backward(y: &Tensor, norms: &Tensor, dy: &Tensor) -> Result<Tensor> {
    same_shape("l2_normalize backward", y.shape(), dy.shape())?;
    let (n, f) = rows_of("l2_normalize backward", y)?;
    if let Some(g) = y.gpu() {
        return cuda::l2_normalize_backward(g, y, norms, dy, n, f);
    }
    let norms = norms.as_slice::<f64>()?;
    with_float!("l2_normalize backward", y.dtype(), T => {
        let dx: Vec<T> = y
            .as_slice::<T>()?
            .par_chunks(f.max(1))
            .zip(dy.as_slice::<T>()?.par_chunks(f.max(1)))
            .zip(norms)
            .flat_map_iter(|((y, g), &nrm)| {
                let dot = if nrm > NORM_EPS {
                    y.iter().zip(g).map(|(a, b)| a.to_f64() * b.to_f64()).sum()
                } else {
                    0.0
                };
                y.iter().zip(g).map(move |(y, g)| T::from_f64((g.to_f64() - y.to_f64() * dot) / nrm))
            })
            .collect();
        Tensor::from_vec(dx, y.shape().clone())
    })
}

/// Row-wise dot products of two `[n,f]` tensors.
fn row_dots<T: Real>(a: &[T], b: &[T], f: usize) -> Vec<f64> {
    a.chunks(f.max(1))
        .zip(b.chunks(f.max(1)))
        .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x.to_f64() * y.to_f64()).sum())
        .collect()
}

/// The symmetric M2T loss over unit vectors:
/// `mean_i[(2 − 2⟨q1_i, k1_i⟩) + (2 − 2⟨q2_i, k2_i⟩)]`, a scalar.
pub(crate) fn m2t_loss(q1: &Tensor, k1: &Tensor, q2: &Tensor, k2: &Tensor) -> Result<Tensor> {
    let (n, f) = rows_of("m2t_loss", q1)?;
    for t in [k1, q2, k2] {
        same_shape("m2t_loss", q1.shape(), t.shape())?;
        q1.expect_same_dtype("m2t_loss", t)?;
    }
    if n == 0 {
        return Err(shape_err("m2t_loss", "empty batch"));
    }
    if let Some(g) = q1.gpu() {
        return cuda::m2t_loss(g, [q1, k1, q2, k2], n);
    }
    with_float!("m2t_loss", q1.dtype(), T => {
        let d1 = row_dots::<T>(q1.as_slice()?, k1.as_slice()?, f);
        let d2 = row_dots::<T>(q2.as_slice()?, k2.as_slice()?, f);
        let loss: f64 = d1.iter().zip(&d2).map(|(a, b)| 4.0 - 2.0 * a - 2.0 * b).sum::<f64>() / n as f64;
        Ok(Tensor::scalar(T::from_f64(loss)))
    })
}

/// Gradient of the M2T loss with respect to `a` in the pair `(a, partner)`:
/// `−2·partner·dloss/n`, with `dloss` the scalar gradient of the loss.
pub(crate) fn m2t_loss_backward(partner: &Tensor, dloss: &Tensor) -> Result<Tensor> {
    let (n, _) = rows_of("m2t_loss backward", partner)?;
    if let Some(g) = partner.gpu() {
        return cuda::m2t_loss_backward(g, partner, dloss, n);
    }
    let dloss = dloss.to_f64_vec()?[0];
    let scale = -2.0 * dloss / n as f64;
    with_float!("m2t_loss backward", partner.dtype(), T => {
        let g: Vec<T> = partner.as_slice::<T>()?.iter().map(|&p| T::from_f64(p.to_f64() * scale)).collect();
        Tensor::from_vec(g, partner.shape().clone())
    })
}

/// Fails unless every label is in `0..c`.
fn check_labels(op: &'static str, labels: &[i64], c: usize) -> Result<()> {
    match labels
        .iter()
        .enumerate()
        .find(|&(_, &l)| l < 0 || l as usize >= c)
    {
        Some((i, &l)) => Err(shape_err(
            op,
            format!("label {l} at row {i} is outside 0..{c}"),
        )),
        None => Ok(()),
    }
}

/// Mean softmax cross-entropy of `[n,c]` logits against i64 labels in `0..c`;
/// returns the scalar loss and the softmax probabilities backward needs.
/// Labels on a GPU are not range-checked (that would wait for the device):
/// there an out-of-range label makes the loss NaN.
pub(crate) fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<(Tensor, Tensor)> {
    const OP: &str = "cross_entropy";
    let (n, c) = rows_of(OP, logits)?;
    labels.expect_dtype(OP, &[DType::I64])?;
    if labels.dims() != [n] {
        return Err(shape_err(
            OP,
            format!(
                "labels {} must be [{n}] for logits {}",
                labels.shape(),
                logits.shape()
            ),
        ));
    }
    if n == 0 {
        return Err(shape_err(OP, "empty batch"));
    }
    if let Some(g) = logits.gpu() {
        return cuda::cross_entropy(g, logits, labels, n, c);
    }
    let ls = labels.as_slice::<i64>()?;
    check_labels(OP, ls, c)?;
    with_float!(OP, logits.dtype(), T => {
        let mut probs = vec![T::ZERO; n * c];
        let mut loss = 0.0;
        for ((row, p), &l) in logits.as_slice::<T>()?.chunks(c).zip(probs.chunks_mut(c)).zip(ls) {
            let max = row.iter().map(|v| v.to_f64()).fold(f64::NEG_INFINITY, f64::max);
            let exps: Vec<f64> = row.iter().map(|v| (v.to_f64() - max).exp()).collect();
            let total: f64 = exps.iter().sum();
            loss += total.ln() + max - row[l as usize].to_f64();
            p.iter_mut().zip(exps).for_each(|(p, e)| *p = T::from_f64(e / total));
        }
        Ok((Tensor::scalar(T::from_f64(loss / n as f64)), Tensor::from_vec(probs, [n, c])?))
    })
}

/// `dlogits = (softmax − onehot)·dloss/n`.
pub(crate) fn cross_entropy_backward(
    probs: &Tensor,
    labels: &Tensor,
    dloss: &Tensor,
) -> Result<Tensor> {
    let (n, c) = rows_of("cross_entropy backward", probs)?;
    if let Some(g) = probs.gpu() {
        return cuda::cross_entropy_backward(g, probs, labels, dloss, n, c);
    }
    let dloss = dloss.to_f64_vec()?[0];
    let ls = labels.as_slice::<i64>()?;
    let scale = dloss / n as f64;
    with_float!("cross_entropy backward", probs.dtype(), T => {
        let mut g: Vec<T> = probs.as_slice::<T>()?.iter().map(|&p| T::from_f64(p.to_f64() * scale)).collect();
        for (row, &l) in g.chunks_mut(c).zip(ls) {
            row[l as usize] -= T::from_f64(scale);
        }
        Tensor::from_vec(g, [n, c])
    })
}
