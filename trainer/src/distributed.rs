//! Data-parallel pretraining: which images each rank trains on, where a
//! process learns its rank (torchrun's or Slurm's variables), and the checks
//! that refuse a multi-GPU launch this machine cannot run.
//!
//! The data order: step `s` of one device with batch `W·B` takes positions
//! `s·W·B ..` of the epoch order (see [`crate::loader`]); with `W` ranks of
//! `B` each, rank `r` takes the `r`-th slice of `B` of those. So a
//! data-parallel run sees the images, and each rank the group, that one
//! device sees with `--bs W·B --bn-group W`.

use crate::loader::epoch_order;
use crate::{Error, Result};
use std::ops::Range;

/// `--bn-group` checked against `--bs`: it must split the batch into equal
/// groups of at least two images (the heads' batch norm sees one value per
/// image and channel).
pub fn bn_group(bs: usize, group: Option<usize>) -> Result<usize> {
    let g = group.unwrap_or(1);
    if g == 0 || !bs.is_multiple_of(g) || bs / g < 2 {
        return Err(Error::Usage(format!(
            "--bn-group {g}: --bs {bs} must split into {g} equal groups of at least 2 images"
        )));
    }
    Ok(g)
}

/// Positions in the epoch order of rank `rank`'s `per_rank` images at step
/// `step` of the epoch, with `world` ranks.
pub fn rank_positions(step: usize, per_rank: usize, (rank, world): (usize, usize)) -> Range<usize> {
    let first = step * per_rank * world + rank * per_rank;
    first..first + per_rank
}

/// The images rank `rank` of `world` trains on in epoch `epoch` of a
/// `len`-image dataset, in step order: a pure function of its arguments.
/// The tail that does not fill a global batch is dropped, as on one device.
pub fn epoch_shard(
    seed: u64,
    epoch: usize,
    len: usize,
    per_rank: usize,
    (rank, world): (usize, usize),
) -> Vec<usize> {
    let order = epoch_order(seed, epoch, len);
    let steps = len / (per_rank * world);
    (0..steps)
        .flat_map(|s| order[rank_positions(s, per_rank, (rank, world))].to_vec())
        .collect()
}

/// This process's place in a data-parallel job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct World {
    /// Global rank, `0..size`.
    pub rank: usize,
    /// Processes in the job.
    pub size: usize,
    /// Rank on this machine: the GPU it drives.
    pub local_rank: usize,
    /// Where rank 0 hands out the NCCL id (`MASTER_ADDR:MASTER_PORT`).
    pub master: Option<(String, u16)>,
}

/// The job a launcher described in the environment (`var` reads a
/// variable): torchrun's `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, or Slurm's
/// `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`; the master address
/// from `MASTER_ADDR` and `MASTER_PORT` for both. `None` outside a launcher.
pub fn world_from_env(var: impl Fn(&str) -> Option<String>) -> Result<Option<World>> {
    let number = |name: &str| -> Result<Option<usize>> {
        var(name)
            .map(|v| {
                v.trim().parse().map_err(|_| {
                    Error::Usage(format!("{name}={v:?}: expected a non-negative integer"))
                })
            })
            .transpose()
    };
    let (rank, size, local) = match (number("RANK")?, number("WORLD_SIZE")?) {
        (Some(r), Some(s)) => (r, s, number("LOCAL_RANK")?.unwrap_or(r)),
        _ => match (number("SLURM_PROCID")?, number("SLURM_NTASKS")?) {
            (Some(r), Some(s)) => (r, s, number("SLURM_LOCALID")?.unwrap_or(r)),
            _ => return Ok(None),
        },
    };
    if size == 0 || rank >= size {
        return Err(Error::Usage(format!(
            "rank {rank} of a job of {size}: expected a rank below the world size"
        )));
    }
    let master = match (var("MASTER_ADDR"), number("MASTER_PORT")?) {
        (Some(addr), Some(port)) => Some((
            addr,
            u16::try_from(port)
                .map_err(|_| Error::Usage(format!("MASTER_PORT={port}: not a TCP port")))?,
        )),
        _ => None,
    };
    if size > 1 && master.is_none() {
        return Err(Error::Usage(format!(
            "a job of {size} processes needs MASTER_ADDR and MASTER_PORT (rank 0's host and a free port)"
        )));
    }
    Ok(Some(World {
        rank,
        size,
        local_rank: local,
        master,
    }))
}

/// Refuses a data-parallel launch (`--gpus N` above 1, or a launcher's job
/// of more than one process) with the one-line reason this build or
/// machine cannot run it. One process is always fine.
pub fn check_launch(gpus: usize, world: Option<&World>) -> Result<()> {
    let processes = world.map_or(gpus, |w| w.size);
    if gpus == 0 {
        return Err(Error::Usage("--gpus 0: expected at least 1".into()));
    }
    if processes <= 1 && gpus <= 1 {
        return Ok(());
    }
    let none = |why: String| {
        Error::Usage(format!(
            "data parallel on {processes} processes needs CUDA GPUs, and this machine has none usable ({why})"
        ))
    };
    kernels::probe::probe().usable().map_err(none)?;
    let devices = kernels::probe::list_devices().map_err(none)?;
    if devices.len() < gpus {
        return Err(Error::Usage(format!(
            "--gpus {gpus}: this machine has {} usable GPU(s)",
            devices.len()
        )));
    }
    Err(Error::Usage(format!(
        "data parallel on {processes} processes: this build has the ghost-BN, sharding and all-reduce pieces but no multi-process launcher yet; use --bn-group on one GPU"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn torchrun_and_slurm_variables_give_the_rank() {
        let master = [("MASTER_ADDR", "node0"), ("MASTER_PORT", "29500")];
        let torchrun = [
            &master[..],
            &[("RANK", "5"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "1")],
        ]
        .concat();
        let w = world_from_env(env(&torchrun)).unwrap().unwrap();
        assert_eq!((w.rank, w.size, w.local_rank), (5, 8, 1));
        assert_eq!(w.master, Some(("node0".into(), 29500)));
        let slurm = [
            &master[..],
            &[
                ("SLURM_PROCID", "3"),
                ("SLURM_NTASKS", "4"),
                ("SLURM_LOCALID", "3"),
            ],
        ]
        .concat();
        let w = world_from_env(env(&slurm)).unwrap().unwrap();
        assert_eq!((w.rank, w.size, w.local_rank), (3, 4, 3));
        assert_eq!(world_from_env(env(&[])).unwrap(), None);
        for bad in [
            vec![
                ("RANK", "4"),
                ("WORLD_SIZE", "4"),
                ("MASTER_ADDR", "a"),
                ("MASTER_PORT", "1"),
            ],
            vec![("RANK", "x"), ("WORLD_SIZE", "4")],
            vec![("RANK", "0"), ("WORLD_SIZE", "2")],
            vec![
                ("RANK", "0"),
                ("WORLD_SIZE", "2"),
                ("MASTER_ADDR", "a"),
                ("MASTER_PORT", "70000"),
            ],
        ] {
            assert!(world_from_env(env(&bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bn_group_must_split_the_batch_into_groups_of_two() {
        assert_eq!(bn_group(8, None).unwrap(), 1);
        assert_eq!(bn_group(8, Some(4)).unwrap(), 4);
        for bad in [0, 3, 8] {
            let err = bn_group(8, Some(bad)).unwrap_err().to_string();
            assert!(err.contains("equal groups of at least 2"), "{err}");
        }
    }
}
