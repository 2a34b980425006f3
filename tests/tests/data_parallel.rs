//! Data parallel on emulated devices, ranks as threads joined by the host
//! all-reduce that stands in for NCCL:
//! 1. one step on 2 ranks with batch B each equals one device with batch 2B
//!    and ghost batch norm in 2 groups (loss, gradients, weights after SGD,
//!    BN buffers and Momentum-BN history), up to f32 summation order;
//! 2. a 2-rank run interrupted by a checkpoint and resumed equals the
//!    uninterrupted one bit for bit;
//! 3. every epoch's shards are disjoint and cover the epoch, for 1–8 ranks;
//! 4. a rank that fails (or hangs) stops the others with an error, in
//!    bounded time.

use engine::comm::{Communicator, HostComm, host_group};
use engine::optim::Sgd;
use engine::{DType, Device, Rng, Tensor};
use nets::data_parallel;
use nets::m2t::{M2t, M2tConfig, Which};
use nets::resnet::Arch;
use std::time::{Duration, Instant};
use tests::parity::step::tiny_with;
use trainer::checkpoint::{self, State};

const TOTAL: usize = 4;
const TIMEOUT: Duration = Duration::from_secs(60);
/// Images per rank.
const B: usize = 4;

/// The width-4 ResNet-18 pair of the parity tests, with `bn_groups`, on
/// the emulator.
fn model(bn_groups: usize) -> M2t {
    let tiny = *tiny_with(Arch::ResNet18, DType::F32, (16, 8)).config();
    M2t::new(M2tConfig { bn_groups, ..tiny }, 42)
        .unwrap()
        .to_device(Device::Emulator)
        .unwrap()
}

/// Step `k`'s two views of the global batch of `n` images.
fn global_views(k: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(100 + k as u64);
    let len = n * 8 * 8 * 3;
    (rng.normal_vec(len, 1.0), rng.normal_vec(len, 1.0))
}

/// Images `first..first + count` of a global view.
fn images(view: &[f32], first: usize, count: usize) -> Tensor {
    let per = 8 * 8 * 3;
    let part = view[first * per..(first + count) * per].to_vec();
    Tensor::from_vec(part, [count, 8, 8, 3]).unwrap()
}

fn lr(k: usize) -> f64 {
    0.05 / (k + 1) as f64
}

/// Everything the equivalence compares, on the host.
#[derive(Debug, PartialEq)]
struct Snapshot {
    loss: f64,
    grads: Vec<f32>,
    weights: Vec<f32>,
    teacher: Vec<f32>,
    buffers: Vec<f32>,
}

fn buffers(model: &M2t) -> Vec<f32> {
    let mut all = Vec::new();
    for which in [Which::Student, Which::Teacher] {
        let (_, b) = model.network(which);
        for i in 0..b.len() {
            all.extend(b.mean(i).to_vec::<f32>().unwrap());
            all.extend(b.var(i).to_vec::<f32>().unwrap());
        }
    }
    all
}

fn snapshot(model: &M2t, loss: f64, grads: Vec<f32>) -> Snapshot {
    Snapshot {
        loss,
        grads,
        weights: model.student().values().to_vec().unwrap(),
        teacher: model.teacher().values().to_vec().unwrap(),
        buffers: buffers(model),
    }
}

/// Steps `from..to` on one rank of a data-parallel group, each followed by
/// SGD; returns the last step's snapshot (gradients before the update).
fn rank_steps(
    model: &mut M2t,
    sgd: &mut Sgd,
    comm: &mut dyn Communicator,
    (from, to): (usize, usize),
) -> nets::Result<Snapshot> {
    let world = comm.world_size();
    let first = comm.rank() * B;
    let mut last = None;
    for k in from..to {
        let (v1, v2) = global_views(k, world * B);
        let (v1, v2) = (images(&v1, first, B), images(&v2, first, B));
        let schedule = model.schedule(k, TOTAL, lr(k))?;
        let report = data_parallel::step(model, comm, (&v1, &v2), &schedule)?;
        let grads = model.student().grads().to_vec()?;
        sgd.step(model.student_mut(), schedule.lr)?;
        last = Some((report.loss, grads));
    }
    let (loss, grads) = last.expect("at least one step");
    Ok(snapshot(model, loss, grads))
}

/// Runs `body` on every rank of a `world`-rank host group, one thread each.
fn on_ranks<T: Send>(world: usize, body: impl Fn(HostComm) -> T + Sync) -> Vec<T> {
    let comms = host_group(world, TIMEOUT).unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|comm| s.spawn(|| body(comm)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= 2e-4 * scale,
        "{what}: max difference {worst:e} against largest value {scale:e}"
    );
}

#[test]
fn two_ranks_equal_one_device_with_two_ghost_groups() {
    let ranks = on_ranks(2, |mut comm| {
        let mut m = model(1);
        let mut sgd = Sgd::new(m.student(), 0.9, 1e-4).unwrap();
        rank_steps(&mut m, &mut sgd, &mut comm, (0, 1)).unwrap()
    });
    // The ranks agree exactly: they applied the same averaged update.
    assert_eq!(ranks[0], ranks[1]);

    let mut single = model(2);
    let mut sgd = Sgd::new(single.student(), 0.9, 1e-4).unwrap();
    let (v1, v2) = global_views(0, 2 * B);
    let (v1, v2) = (images(&v1, 0, 2 * B), images(&v2, 0, 2 * B));
    let schedule = single.schedule(0, TOTAL, lr(0)).unwrap();
    let report = single.step(&v1, &v2, &schedule).unwrap();
    let grads = single.student().grads().to_vec().unwrap();
    sgd.step(single.student_mut(), schedule.lr.clone()).unwrap();
    let want = snapshot(&single, report.loss, grads);

    let got = &ranks[0];
    assert!(
        (got.loss - want.loss).abs() <= 1e-5 * want.loss.abs(),
        "loss {} vs {}",
        got.loss,
        want.loss
    );
    assert!(
        want.grads.iter().any(|g| *g != 0.0),
        "the step has gradients"
    );
    assert_close("gradients", &got.grads, &want.grads);
    assert_close("weights after SGD", &got.weights, &want.weights);
    assert_close("teacher", &got.teacher, &want.teacher);
    assert_close(
        "BN buffers and Momentum-BN history",
        &got.buffers,
        &want.buffers,
    );
    // Not the plain-BN result: ghost groups matter, so the test can fail.
    let mut plain = model(1);
    plain.step(&v1, &v2, &schedule).unwrap();
    let plain_grads = plain.student().grads().to_vec::<f32>().unwrap();
    let differs = plain_grads
        .iter()
        .zip(&want.grads)
        .any(|(a, b)| (a - b).abs() > 1e-3 * b.abs().max(1e-3));
    assert!(
        differs,
        "batch norm over 2B gives other gradients than 2 groups of B"
    );
}

#[test]
fn a_two_rank_run_resumed_from_a_checkpoint_is_bit_identical() {
    let uninterrupted = on_ranks(2, |mut comm| {
        let mut m = model(1);
        let mut sgd = Sgd::new(m.student(), 0.9, 1e-4).unwrap();
        rank_steps(&mut m, &mut sgd, &mut comm, (0, 3)).unwrap()
    });
    let dir = std::env::temp_dir().join(format!("m2t-dp-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Two steps, a checkpoint from rank 0 only, then every process ends.
    on_ranks(2, |mut comm| {
        let mut m = model(1);
        let mut sgd = Sgd::new(m.student(), 0.9, 1e-4).unwrap();
        rank_steps(&mut m, &mut sgd, &mut comm, (0, 2)).unwrap();
        if comm.rank() == 0 {
            let state = State {
                step: 2,
                seed: 42,
                metrics_lines: 0,
                skipped_images: 0,
                train_seconds: 0.0,
                loss_scale: None,
            };
            checkpoint::save(&dir, &m, sgd.velocity(), &state, "").unwrap();
        }
    });
    // Every rank restores rank 0's checkpoint and runs the last step.
    let resumed = on_ranks(2, |mut comm| {
        let at = dir.join("checkpoints").join(checkpoint::folder_name(2));
        let mut m = model(1);
        checkpoint::restore_network(&at, &mut m, Which::Student).unwrap();
        checkpoint::restore_network(&at, &mut m, Which::Teacher).unwrap();
        let mut sgd = Sgd::new(m.student(), 0.9, 1e-4).unwrap();
        let velocity = checkpoint::load_velocity(&at, m.student()).unwrap();
        sgd.set_velocity(&velocity).unwrap();
        rank_steps(&mut m, &mut sgd, &mut comm, (2, 3)).unwrap()
    });
    let _ = std::fs::remove_dir_all(&dir);
    let bits = |s: &Snapshot| -> Vec<u32> {
        (s.weights
            .iter()
            .chain(&s.teacher)
            .chain(&s.buffers)
            .chain(&s.grads))
        .map(|v| v.to_bits())
        .collect()
    };
    for rank in 0..2 {
        assert_eq!(
            resumed[rank].loss.to_bits(),
            uninterrupted[rank].loss.to_bits()
        );
        assert!(
            bits(&resumed[rank]) == bits(&uninterrupted[rank]),
            "rank {rank}"
        );
    }
}

#[test]
fn shards_are_disjoint_and_cover_each_epoch() {
    let len = 103;
    for world in 1..=8 {
        for per_rank in [1, 3] {
            for epoch in [0, 5] {
                let order = trainer::loader::epoch_order(7, epoch, len);
                let global = per_rank * world;
                let used = (len / global) * global;
                let mut seen = vec![0u32; len];
                for rank in 0..world {
                    let shard =
                        trainer::distributed::epoch_shard(7, epoch, len, per_rank, (rank, world));
                    assert_eq!(shard.len(), used / world, "world {world} rank {rank}");
                    for &i in &shard {
                        seen[i] += 1;
                    }
                }
                // Every image of the epoch's full global batches exactly once;
                // the dropped tail is the same as on one device.
                for (pos, &i) in order.iter().enumerate() {
                    let want = u32::from(pos < used);
                    assert_eq!(seen[i], want, "world {world} per-rank {per_rank} image {i}");
                }
            }
        }
    }
    // Rank r's images of a step are the r-th slice of the one-device batch:
    // what ghost batch norm's group r sees.
    let order = trainer::loader::epoch_order(7, 0, len);
    let shard = trainer::distributed::epoch_shard(7, 0, len, 3, (1, 2));
    assert_eq!(&shard[..3], &order[3..6]);
    assert_eq!(&shard[3..6], &order[9..12]);
}

#[test]
fn a_failing_rank_stops_the_others_with_an_error() {
    let started = Instant::now();
    let results = on_ranks(3, |mut comm| {
        if comm.rank() == 1 {
            comm.abort("out of memory");
            return Err("aborted".to_string());
        }
        let mut data = vec![1.0f32; 8];
        comm.all_reduce_mean_host(&mut data)
            .map_err(|e| e.to_string())
    });
    for rank in [0, 2] {
        let err = results[rank].as_ref().unwrap_err();
        assert!(err.contains("rank 1 failed: out of memory"), "{err}");
    }
    assert!(
        started.elapsed() < TIMEOUT,
        "ended by the failure, not the timeout"
    );

    // A rank that silently never joins: the others time out.
    let comms = host_group(2, Duration::from_millis(300)).unwrap();
    let mut comms = comms.into_iter();
    let (mut first, _hung) = (comms.next().unwrap(), comms.next().unwrap());
    let started = Instant::now();
    let err = first
        .all_reduce_mean_host(&mut [1.0])
        .unwrap_err()
        .to_string();
    assert!(err.contains("waited") && err.contains("[1]"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}
