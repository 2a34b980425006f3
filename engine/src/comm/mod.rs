//! Collectives between data-parallel ranks: the all-reduce that averages
//! gradients and batch-norm buffers, behind one [`Communicator`] trait.
//!
//! [`nccl::NcclComm`] is the transport across GPUs and machines: NCCL's
//! all-reduce on each rank's CUDA device. [`host_group`] is its stand-in, as
//! the CPU reference stands in for cuDNN and cuBLAS on the emulator: `N`
//! ranks as threads of one process, exchanging through host memory. It sums
//! in rank order, so its results do not depend on which thread arrives
//! first, and it never hangs: a rank that fails (or leaves) ends every other
//! rank's collective with an error naming it, and a collective that waits
//! past the group's timeout fails.

pub mod nccl;

use crate::error::{Error, Result};
use crate::{DType, Tensor};
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Elements per all-reduce bucket (1 MiB of f32): small enough to overlap
/// with the backward where the transport allows it, large enough that a
/// ResNet-50's gradients take about a hundred calls.
pub const BUCKET_ELEMENTS: usize = 1 << 18;

/// One rank's end of a group of data-parallel ranks.
pub trait Communicator: Send {
    /// This rank, `0..world_size()`.
    fn rank(&self) -> usize;

    /// Ranks in the group.
    fn world_size(&self) -> usize;

    /// Replaces `data` (this rank's contribution, the same length on every
    /// rank) with the elementwise mean over the ranks.
    fn all_reduce_mean_host(&mut self, data: &mut [f32]) -> Result<()>;

    /// Replaces the f32 tensor `buf` with the elementwise mean of every
    /// rank's `buf`, [`BUCKET_ELEMENTS`] at a time.
    fn all_reduce_mean(&mut self, buf: &mut Tensor) -> Result<()> {
        let len = buf.numel();
        for first in (0..len).step_by(BUCKET_ELEMENTS) {
            self.start_mean(buf, first..len.min(first + BUCKET_ELEMENTS))?;
        }
        self.wait()
    }

    /// Starts replacing elements `range` of the f32 tensor `buf` with their
    /// mean over the ranks; they hold it once [`Self::wait`] returns. Every
    /// rank starts the same ranges in the same order. The host stand-in
    /// averages at once; NCCL queues the average on a stream of its own,
    /// so it overlaps the backward pass still running.
    fn start_mean(&mut self, buf: &mut Tensor, range: Range<usize>) -> Result<()> {
        buf.expect_dtype("all_reduce", &[DType::F32])?;
        if self.world_size() == 1 {
            return Ok(());
        }
        let part = buf
            .reshape([buf.numel()])?
            .narrow(range.start, range.len())?;
        let mut host = part.to_vec::<f32>()?;
        drop(part);
        self.all_reduce_mean_host(&mut host)?;
        let mean = Tensor::from_vec(host, [range.len()])?.to_device(buf.device())?;
        buf.copy_from_at(range.start, &mean)
    }

    /// Waits until every mean started is in its buffer (on a GPU: orders
    /// the device's stream after them).
    fn wait(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A reason for a rank to stop taking part, raised by any thread (the
/// trainer's watch over the other ranks' processes) and seen by the waits of
/// a communicator holding a clone. The first reason raised is kept.
#[derive(Clone, Debug, Default)]
pub struct Alarm(Arc<Mutex<Option<String>>>);

impl Alarm {
    /// Raises the alarm with `why`, unless it is raised already.
    pub fn raise(&self, why: impl Into<String>) {
        let mut reason = self.0.lock().unwrap_or_else(|p| p.into_inner());
        reason.get_or_insert_with(|| why.into());
    }

    /// The reason, once raised.
    pub fn raised(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The state the ranks of a [`host_group`] share.
#[derive(Debug)]
struct Round {
    /// Each rank's contribution to the collective in progress.
    slots: Vec<Option<Vec<f32>>>,
    /// Collectives completed so far.
    completed: u64,
    /// The last completed collective's result.
    result: Arc<Vec<f32>>,
    /// Why the group can no longer run collectives.
    failed: Option<String>,
}

#[derive(Debug)]
struct Shared {
    round: Mutex<Round>,
    done: Condvar,
    timeout: Duration,
}

impl Shared {
    fn fail(&self, why: String) {
        let mut round = self.round.lock().unwrap_or_else(|p| p.into_inner());
        round.failed.get_or_insert(why);
        self.done.notify_all();
    }
}

/// `n` ranks in one process (threads), all-reducing through host memory
/// (the emulator's stand-in for NCCL): their communicators, rank order. A
/// collective that waits longer than `timeout` for the other ranks fails.
pub fn host_group(n: usize, timeout: Duration) -> Result<Vec<HostComm>> {
    if n == 0 {
        return Err(Error::Comm("a group needs at least one rank".into()));
    }
    let shared = Arc::new(Shared {
        round: Mutex::new(Round {
            slots: vec![None; n],
            completed: 0,
            result: Arc::new(Vec::new()),
            failed: None,
        }),
        done: Condvar::new(),
        timeout,
    });
    Ok((0..n)
        .map(|rank| HostComm {
            rank,
            world: n,
            shared: shared.clone(),
        })
        .collect())
}

/// One rank of a [`host_group`]. Dropping it (a rank that ended, or failed
/// and unwound) ends the others' collectives with an error naming it.
#[derive(Debug)]
pub struct HostComm {
    rank: usize,
    world: usize,
    shared: Arc<Shared>,
}

impl HostComm {
    /// Ends the group's collectives on every rank with `why`, naming this
    /// rank: what a rank calls when its own step failed.
    pub fn abort(&self, why: &str) {
        self.shared
            .fail(format!("rank {} failed: {why}", self.rank));
    }
}

impl Drop for HostComm {
    fn drop(&mut self) {
        self.shared
            .fail(format!("rank {} left the group", self.rank));
    }
}

impl Communicator for HostComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_mean_host(&mut self, data: &mut [f32]) -> Result<()> {
        let shared = &self.shared;
        let mut round = shared.round.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = &round.failed {
            return Err(Error::Comm(why.clone()));
        }
        let mine = round.completed;
        round.slots[self.rank] = Some(data.to_vec());
        if round.slots.iter().all(Option::is_some) {
            let parts: Vec<Vec<f32>> = round.slots.iter_mut().map(|s| s.take().unwrap()).collect();
            if parts.iter().any(|p| p.len() != data.len()) {
                let lens: Vec<usize> = parts.iter().map(Vec::len).collect();
                let why = format!("ranks all-reduced different lengths {lens:?}");
                round.failed = Some(why.clone());
                shared.done.notify_all();
                return Err(Error::Comm(why));
            }
            // Summed in rank order, whichever thread arrived last.
            let n = parts.len() as f64;
            let mean = (0..data.len())
                .map(|i| (parts.iter().map(|p| p[i] as f64).sum::<f64>() / n) as f32)
                .collect();
            round.result = Arc::new(mean);
            round.completed += 1;
            shared.done.notify_all();
        } else {
            let deadline = Instant::now() + shared.timeout;
            while round.completed == mine {
                if let Some(why) = &round.failed {
                    return Err(Error::Comm(why.clone()));
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    let missing: Vec<usize> = (0..self.world)
                        .filter(|&r| round.slots[r].is_none())
                        .collect();
                    let why = format!(
                        "rank {} waited {:.0?} for rank(s) {missing:?} to join an all-reduce",
                        self.rank, shared.timeout
                    );
                    round.failed = Some(why.clone());
                    shared.done.notify_all();
                    return Err(Error::Comm(why));
                }
                round = shared
                    .done
                    .wait_timeout(round, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        data.copy_from_slice(&round.result);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alarm_keeps_its_first_reason_for_every_clone() {
        let alarm = Alarm::default();
        let watch = alarm.clone();
        assert_eq!(watch.raised(), None);
        alarm.raise("rank 3 ended");
        alarm.raise("rank 1 ended");
        assert_eq!(watch.raised().as_deref(), Some("rank 3 ended"));
    }
}
