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
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

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
    if size > crate::limits::MAX_WORLD {
        return Err(Error::Usage(format!(
            "a job of {size} processes: at most {}",
            crate::limits::MAX_WORLD
        )));
    }
    let master = match (var("MASTER_ADDR"), number("MASTER_PORT")?) {
        (Some(addr), Some(port)) => Some((
            addr,
            u16::try_from(port)
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| Error::Usage(format!("MASTER_PORT={port}: not a TCP port")))?,
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
/// of more than one process) with the one-line reason this machine cannot
/// run it. One process is always fine.
pub fn check_launch(gpus: usize, world: Option<&World>) -> Result<()> {
    if gpus == 0 {
        return Err(Error::Usage("--gpus 0: expected at least 1".into()));
    }
    if let Some(w) = world.filter(|w| w.size > 1 && gpus > 1 && gpus != w.size) {
        return Err(Error::Usage(format!(
            "--gpus {gpus} inside a launcher's job of {} processes: the launcher starts one trainer per GPU; drop --gpus",
            w.size
        )));
    }
    let processes = world.map_or(gpus, |w| w.size);
    if processes <= 1 {
        return Ok(());
    }
    let none = |why: String| {
        Error::Usage(format!(
            "data parallel on {processes} processes needs CUDA GPUs, and this machine has none usable ({why})"
        ))
    };
    kernels::probe::probe().usable().map_err(none)?;
    let devices = kernels::probe::list_devices().map_err(none)?.len();
    engine::comm::nccl::version()
        .map_err(|e| Error::Usage(format!("data parallel on {processes} processes: {e}")))?;
    match world {
        Some(w) => gpu_of(w.local_rank, devices).map(|_| ()),
        None if devices < gpus => Err(Error::Usage(format!(
            "--gpus {gpus}: this machine has {devices} usable GPU(s)"
        ))),
        None => Ok(()),
    }
}

/// The GPU of local rank `local_rank` among the `visible` ones: its own
/// ordinal, or the only GPU a scheduler left visible to the process (as
/// `srun --gpus-per-task 1` does).
pub fn gpu_of(local_rank: usize, visible: usize) -> Result<usize> {
    match visible {
        1 => Ok(0),
        n if local_rank < n => Ok(local_rank),
        n => Err(Error::Usage(format!(
            "local rank {local_rank} needs its own GPU, and this process sees {n}"
        ))),
    }
}

/// Joins the job `world` describes over NCCL, on GPU `gpu`: rank 0 hands
/// out the NCCL id (see [`crate::bootstrap`]).
pub fn join(world: &World, gpu: usize) -> Result<Box<dyn engine::comm::Communicator>> {
    crate::bootstrap::connect_nccl(
        world,
        engine::Device::Cuda(gpu),
        crate::bootstrap::Timeouts::default(),
    )
}

/// `--gpus N` on one machine: runs this command once per GPU, as ranks
/// `0..N` of a job whose rank 0 hands out the NCCL id on a free local port,
/// and waits for them (see [`supervise`]).
pub fn launch(gpus: usize) -> Result<()> {
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| Error::Usage(format!("--gpus {gpus}: no free local port for rank 0: {e}")))?
        .port();
    let exe = std::env::current_exe().map_err(|e| {
        Error::Usage(format!(
            "--gpus {gpus}: cannot find this trainer's binary: {e}"
        ))
    })?;
    // The children see the whole terminal's SIGINT themselves; the
    // launcher outlives them to report which rank ended the job.
    crate::interrupt::install();
    let mut children = Vec::with_capacity(gpus);
    for rank in 0..gpus {
        let child = Command::new(&exe)
            .args(std::env::args_os().skip(1))
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", gpus.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .spawn()
            .map_err(|e| Error::io(&exe, e));
        match child {
            Ok(c) => children.push(c),
            Err(e) => {
                stop(&mut children, Signal::Kill);
                return Err(e);
            }
        }
    }
    supervise(children, Duration::from_secs(30))
}

/// How [`stop`] ends the ranks still running.
#[derive(Clone, Copy)]
enum Signal {
    /// SIGTERM: each stops after its step, as on Ctrl-C.
    Term,
    /// SIGKILL.
    Kill,
}

fn stop<'a>(children: impl IntoIterator<Item = &'a mut Child>, signal: Signal) {
    for child in children {
        match signal {
            // SAFETY: signals a child process this launcher started and
            // has not yet reaped, so its pid is still its own.
            Signal::Term => unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            },
            Signal::Kill => {
                let _ = child.kill();
            }
        }
    }
}

/// Waits for the ranks `children` (rank order). When one fails, or the
/// launcher itself is interrupted, the others get SIGTERM, then SIGKILL
/// after `grace`; the error names the first rank seen failing and how.
pub fn supervise(children: Vec<Child>, grace: Duration) -> Result<()> {
    let mut running: Vec<(usize, Child)> = children.into_iter().enumerate().collect();
    let mut first_failure: Option<(usize, ExitStatus)> = None;
    let mut terminated: Option<Instant> = None;
    let mut killed = false;
    while !running.is_empty() {
        let mut i = 0;
        while i < running.len() {
            match running[i].1.try_wait() {
                Ok(Some(status)) => {
                    let (rank, _) = running.remove(i);
                    if !status.success() {
                        first_failure.get_or_insert((rank, status));
                    }
                }
                Ok(None) => i += 1,
                Err(e) => {
                    return Err(Error::Ranks(format!(
                        "waiting for rank {}: {e}",
                        running[i].0
                    )));
                }
            }
        }
        let children = running.iter_mut().map(|(_, c)| c);
        if terminated.is_none() && (first_failure.is_some() || crate::interrupt::requested()) {
            stop(children, Signal::Term);
            terminated = Some(Instant::now());
        } else if !killed && terminated.is_some_and(|t| t.elapsed() > grace) {
            stop(children, Signal::Kill);
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match first_failure {
        None => Ok(()),
        Some((rank, status)) => {
            let how = match (status.code(), status.signal()) {
                (Some(code), _) => format!("exited with code {code}"),
                (None, Some(signal)) => format!("was killed by signal {signal}"),
                (None, None) => format!("ended ({status})"),
            };
            let why = format!("rank {rank} {how}; the other ranks were stopped");
            Err(match status.code() {
                Some(2) => Error::Usage(why),
                Some(130) => Error::Interrupted(why),
                _ => Error::Ranks(why),
            })
        }
    }
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
            vec![
                ("RANK", "0"),
                ("WORLD_SIZE", "2"),
                ("MASTER_ADDR", "a"),
                ("MASTER_PORT", "0"),
            ],
            vec![
                ("RANK", "0"),
                ("WORLD_SIZE", "1000000000"),
                ("MASTER_ADDR", "a"),
                ("MASTER_PORT", "1"),
            ],
        ] {
            assert!(world_from_env(env(&bad)).is_err(), "{bad:?}");
        }
    }

    fn shell(script: &str) -> Child {
        Command::new("sh").args(["-c", script]).spawn().unwrap()
    }

    #[test]
    fn a_failed_rank_stops_the_others_and_is_named() {
        let started = Instant::now();
        let sleeper = shell("sleep 60");
        let sleeper_pid = sleeper.id();
        let err = supervise(
            vec![sleeper, shell("sleep 0.2; exit 3")],
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "rank 1 exited with code 3; the other ranks were stopped"
        );
        assert_eq!(err.exit_code(), 1);
        // SIGTERM ended the sleeping rank at once, not the grace period.
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        // SAFETY: signal 0 only asks whether the (reaped) pid still exists.
        assert_ne!(unsafe { libc::kill(sleeper_pid as libc::pid_t, 0) }, 0);

        let err = supervise(
            vec![shell("exit 2"), shell("exit 0")],
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
        assert!(
            err.to_string().starts_with("rank 0 exited with code 2"),
            "{err}"
        );
        assert!(supervise(vec![shell("exit 0"), shell("true")], Duration::from_secs(5)).is_ok());
    }

    #[test]
    fn a_rank_that_ignores_sigterm_is_killed_after_the_grace_period() {
        let started = Instant::now();
        let stubborn = shell("trap '' TERM; sleep 60");
        let err =
            supervise(vec![stubborn, shell("exit 1")], Duration::from_millis(500)).unwrap_err();
        assert!(
            err.to_string().starts_with("rank 1 exited with code 1"),
            "{err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn gpus_inside_a_launchers_job_must_match_it() {
        let world = World {
            rank: 0,
            size: 16,
            local_rank: 0,
            master: Some(("node0".into(), 29500)),
        };
        let err = check_launch(8, Some(&world)).unwrap_err().to_string();
        assert!(err.contains("drop --gpus"), "{err}");
        assert!(check_launch(0, None).is_err());
        assert_eq!(gpu_of(5, 1).unwrap(), 0);
        assert_eq!(gpu_of(5, 8).unwrap(), 5);
        assert!(gpu_of(8, 8).is_err());
        assert!(check_launch(1, None).is_ok());
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
