//! Data-parallel M2T: each rank runs [`M2t::step`] on its own batch, then
//! the ranks average what DDP would keep in step.
//!
//! What is per rank and what is averaged (README, "Data parallel"):
//! - Batch norm — the student's, the teacher's Momentum BN, the heads' —
//!   normalises over the rank's own batch, as in the authors' release; one
//!   device reproduces it with [`crate::m2t::M2tConfig::bn_groups`].
//! - The student's gradient buffer is averaged before the optimiser, so
//!   every rank applies the same update and the weights (and the EMA
//!   teacher) stay identical. It is averaged in buckets of whole
//!   parameters, each started as soon as the backward pass has completed
//!   it (the last layers first), as DDP does.
//! - The BN buffers — the student's running statistics and the teacher's
//!   Momentum-BN history — are averaged after each step. The release wraps
//!   the model in DDP with `broadcast_buffers`, but its batch norms replace
//!   their buffer tensors every forward, so DDP's broadcast (of the tensors
//!   it listed at wrap time) never reaches them and each rank's history
//!   drifts on its own; rank 0's is the one saved. Averaging keeps the ranks
//!   consistent and uses every rank's statistics: the updates are affine in
//!   the statistics, so the averaged buffers are those a single history
//!   moved by the mean of the ranks' statistics would hold — exactly what
//!   ghost batch norm with one group per rank computes on one device.
//! - The reported loss is the mean of the ranks' (the loss of the global
//!   batch).

use crate::layers::BnBuffers;
use crate::m2t::{M2t, StepReport, StepSchedule, Which};
use crate::{Error, Result};
use engine::Tensor;
use engine::comm::Communicator;

/// One data-parallel M2T iteration on this rank's views: the local step
/// with its gradients averaged over `comm`'s ranks as the backward pass
/// completes them, then the BN-buffer and loss averages. The
/// caller applies the optimiser to the averaged gradients. fp16 is refused:
/// each rank's loss scaler would decide alone whether to skip the update.
pub fn step(
    model: &mut M2t,
    comm: &mut dyn Communicator,
    (view1, view2): (&Tensor, &Tensor),
    schedule: &StepSchedule,
) -> Result<StepReport> {
    if model.scaler().is_some() && comm.world_size() > 1 {
        return Err(Error::Config(
            "data-parallel fp16 is not supported (each rank's loss scaler would skip different steps); use bf16 or fp32".into(),
        ));
    }
    let report = model.step_averaged((view1, view2), schedule, Some(&mut *comm))?;
    for which in [Which::Student, Which::Teacher] {
        average_buffers(model.network_mut(which).1, comm)?;
    }
    let mut loss = [report.loss as f32];
    comm.all_reduce_mean_host(&mut loss)?;
    Ok(StepReport {
        loss: loss[0] as f64,
        ..report
    })
}

/// Replaces every layer's mean and variance buffers with their mean over
/// the ranks, in place where they live: on a GPU, all queued on NCCL's side
/// stream and waited for once, with no copy through the host.
pub fn average_buffers(buffers: &mut BnBuffers, comm: &mut dyn Communicator) -> Result<()> {
    if comm.world_size() == 1 {
        return Ok(());
    }
    for buffer in buffers.tensors_mut() {
        let len = buffer.numel();
        comm.start_mean(buffer, 0..len)?;
    }
    Ok(comm.wait()?)
}
