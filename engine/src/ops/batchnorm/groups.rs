//! Ghost batch norm: the batch split into `G` equal groups of images, each
//! normalised over its own statistics — what `G` data-parallel ranks each
//! see of their own batch, on one device.
//!
//! The batch is the outermost axis of NHWC `[n,h,w,c]` and `[n,c]`, so a
//! group is a contiguous range: each runs the ordinary forward and backward
//! on a view, the outputs are joined, and `dγ`, `dβ` summed. The reported
//! statistics are the mean of the groups' (mean and unbiased variance, with
//! one group's count), which is what averaging the ranks' freshly updated
//! running buffers or Momentum-BN history gives: those updates are affine
//! in the statistics.

use super::{BatchStats, BnGrads, BnNorm, BnSaved, Epilogue, update_running_stats};
use crate::error::{Result, same_shape, shape_err};
use crate::ops::elementwise;
use crate::{DType, Shape, Tensor};

/// What backward needs from a grouped forward: one saved forward per group.
#[derive(Debug)]
pub(crate) struct GroupedSaved(Vec<BnSaved>);

/// [`super::forward`] over `groups` equal slices of the batch. One group
/// (or fixed statistics, which grouping cannot change) is the plain forward.
pub(crate) fn forward(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    (norm, eps): (BnNorm, f64),
    epilogue: Epilogue,
    groups: usize,
) -> Result<(Tensor, Option<BatchStats>, GroupedSaved)> {
    if groups == 1 || matches!(norm, BnNorm::Running { .. }) {
        let (y, stats, saved) = super::forward(x, gamma, beta, norm, eps, epilogue)?;
        return Ok((y, stats, GroupedSaved(vec![saved])));
    }
    let group = group_shape(x.shape(), groups)?;
    let size = group.numel();
    let (mut ys, mut stats, mut saved) = (Vec::new(), Vec::new(), Vec::new());
    for g in 0..groups {
        let residual;
        let epilogue = match epilogue {
            Epilogue::AddRelu(r) => {
                same_shape("batch_norm", x.shape(), r.shape())?;
                residual = r.view(g * size, group.clone());
                Epilogue::AddRelu(&residual)
            }
            other => other,
        };
        let xg = x.view(g * size, group.clone());
        let (y, s, sv) = super::forward(&xg, gamma, beta, norm, eps, epilogue)?;
        ys.push(y);
        stats.extend(s);
        saved.push(sv);
    }
    let stats = if stats.is_empty() {
        None
    } else {
        Some(mean_of_groups(&stats)?)
    };
    Ok((Tensor::concat_outer(&ys)?, stats, GroupedSaved(saved)))
}

/// [`super::backward`] group by group: `dx` (and the residual's gradient)
/// joined, `dγ` and `dβ` summed over the groups.
pub(crate) fn backward(s: &GroupedSaved, dy: &Tensor) -> Result<BnGrads> {
    let [first, rest @ ..] = &s.0[..] else {
        unreachable!("a forward saves at least one group")
    };
    if rest.is_empty() {
        return super::backward(first, dy);
    }
    let group = first.x.shape().clone();
    let mut whole = group.dims().to_vec();
    whole[0] *= s.0.len();
    same_shape("batch_norm backward", &Shape::from(whole), dy.shape())?;
    let grads =
        s.0.iter()
            .enumerate()
            .map(|(g, saved)| super::backward(saved, &dy.view(g * group.numel(), group.clone())))
            .collect::<Result<Vec<_>>>()?;
    let join = |part: fn(&BnGrads) -> &Tensor| {
        Tensor::concat_outer(&grads.iter().map(|g| part(g).clone()).collect::<Vec<_>>())
    };
    let sum = |part: fn(&BnGrads) -> &Tensor| {
        grads[1..]
            .iter()
            .try_fold(part(&grads[0]).clone(), |acc, g| {
                elementwise::add(&acc, part(g))
            })
    };
    let dresidual = match grads[0].dresidual {
        Some(_) => Some(join(|g| {
            g.dresidual.as_ref().expect("every group's epilogue")
        })?),
        None => None,
    };
    Ok(BnGrads {
        dx: join(|g| &g.dx)?,
        dgamma: sum(|g| &g.dgamma)?,
        dbeta: sum(|g| &g.dbeta)?,
        dresidual,
    })
}

/// One group's shape: the batch of `shape` split `groups` ways; fails
/// unless the split is exact and leaves each group at least two values
/// per channel.
fn group_shape(shape: &Shape, groups: usize) -> Result<Shape> {
    const OP: &str = "ghost batch_norm";
    let dims = shape.dims();
    let n = dims.first().copied().unwrap_or(0);
    if groups == 0 || n % groups != 0 {
        return Err(shape_err(
            OP,
            format!("a batch of {n} does not split into {groups} equal groups"),
        ));
    }
    let mut group = dims.to_vec();
    group[0] = n / groups;
    let per_channel: usize = group[..group.len() - 1].iter().product();
    if per_channel < 2 {
        return Err(shape_err(
            OP,
            format!(
                "{groups} groups of input {shape} leave {per_channel} value per channel: batch statistics need at least 2"
            ),
        ));
    }
    Ok(Shape::from(group))
}

/// The mean of the groups' statistics, as a running mean over the groups
/// with the running-statistics update (on the statistics' device).
fn mean_of_groups(stats: &[BatchStats]) -> Result<BatchStats> {
    let owned = |t: &Tensor| -> Result<Tensor> {
        let mut copy = Tensor::zeros(t.shape().clone(), DType::F32, t.device())?;
        copy.copy_from(t)?;
        Ok(copy)
    };
    let (mut mean, mut var) = (owned(&stats[0].mean)?, owned(&stats[0].var)?);
    for (k, s) in stats.iter().enumerate().skip(1) {
        update_running_stats(&mut mean, &mut var, s, 1.0 / (k + 1) as f64)?;
    }
    Ok(BatchStats {
        mean,
        var,
        count: stats[0].count,
    })
}
