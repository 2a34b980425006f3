//! NCCL's communicator on a real GPU (the machines lent have one, so one
//! rank): a data-parallel M2T step whose gradient buffer, BN buffers and
//! loss go through NCCL's all-reduce equals the same step without NCCL bit
//! for bit; buckets (also started on the side stream), host values and a captured all-reduce pass through
//! unchanged; and a rank that never joins, or the watch's alarm, ends NCCL's
//! set-up in bounded time with the communicator aborted. Without a usable
//! GPU each test prints "skipped: no GPU"; `scripts/gpu-check.sh` runs them
//! (with the library path the trainer uses, where NCCL is found).

use engine::comm::nccl::{self, NcclComm};
use engine::comm::{Alarm, BUCKET_ELEMENTS, Communicator};
use engine::optim::Sgd;
use engine::{DType, Device, Rng, Tensor};
use nets::data_parallel;
use nets::m2t::M2t;
use nets::resnet::Arch;
use std::time::{Duration, Instant};
use tests::parity::step::tiny_with;

/// The GPU, with NCCL found; else why not, printed.
fn gpu_with_nccl() -> Option<Device> {
    let device = tests::parity::cuda_device()?;
    match nccl::version() {
        Ok(_) => Some(device),
        Err(why) => {
            eprintln!("skipped: no NCCL ({why})");
            None
        }
    }
}

/// A one-rank communicator on `device`.
fn one_rank(device: Device) -> NcclComm {
    let id = nccl::unique_id().unwrap();
    NcclComm::new(
        device,
        &id,
        (0, 1),
        Duration::from_secs(60),
        Alarm::default(),
    )
    .unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    let values: Vec<f32> = t.to_vec().unwrap();
    values.iter().map(|v| v.to_bits()).collect()
}

fn views(k: usize) -> (Tensor, Tensor) {
    let mut rng = Rng::new(10 + k as u64);
    let mut view = || Tensor::from_vec(rng.normal_vec(4 * 8 * 8 * 3, 1.0), [4, 8, 8, 3]).unwrap();
    (view(), view())
}

fn model(device: Device) -> (M2t, Sgd) {
    let model = tiny_with(Arch::ResNet18, DType::F32, (16, 8))
        .to_device(device)
        .unwrap();
    let sgd = Sgd::new(model.student(), 0.9, 1e-4).unwrap();
    (model, sgd)
}

#[test]
fn on_cuda_a_one_rank_nccl_step_equals_the_step_without_nccl() {
    let Some(device) = gpu_with_nccl() else {
        return;
    };
    // The same algorithms for both models: results then repeat bit for bit.
    engine::set_deterministic(true);
    let (mut plain, mut plain_sgd) = model(device);
    let (mut ranked, mut ranked_sgd) = model(device);
    let mut comm = one_rank(device);
    for k in 0..3 {
        let (v1, v2) = views(k);
        let numbers = plain.schedule(k, 3, 0.05).unwrap();
        let ranked_numbers = ranked.schedule(k, 3, 0.05).unwrap();
        let want = plain.step(&v1, &v2, &numbers).unwrap();
        let got = data_parallel::step(&mut ranked, &mut comm, (&v1, &v2), &ranked_numbers).unwrap();
        // The loss is averaged as f32.
        let f32_bits = |loss: f64| (loss as f32).to_bits();
        assert_eq!(f32_bits(got.loss), f32_bits(want.loss), "step {k}: loss");
        assert_eq!(
            bits(ranked.student().grads()),
            bits(plain.student().grads()),
            "step {k}: gradients"
        );
        plain_sgd.step(plain.student_mut(), numbers.lr).unwrap();
        ranked_sgd
            .step(ranked.student_mut(), ranked_numbers.lr)
            .unwrap();
        assert_eq!(
            bits(ranked.student().values()),
            bits(plain.student().values()),
            "step {k}: weights"
        );
    }
    println!(
        "one-rank NCCL {:?}: 3 M2T steps equal the steps without NCCL bit for bit",
        nccl::version().unwrap()
    );
}

#[test]
fn on_cuda_buckets_host_values_and_a_captured_all_reduce_pass_through_one_rank() {
    let Some(device) = gpu_with_nccl() else {
        return;
    };
    let mut comm = one_rank(device);
    let mut rng = Rng::new(3);
    // Two full buckets and a partial one.
    let n = 2 * BUCKET_ELEMENTS + BUCKET_ELEMENTS / 2 + 3;
    let values = rng.normal_vec(n, 1.0);
    let mut t = Tensor::from_vec(values.clone(), [n])
        .unwrap()
        .to_device(device)
        .unwrap();
    comm.all_reduce_mean(&mut t).unwrap();
    assert_eq!(t.to_vec::<f32>().unwrap(), values);
    // Host values through the staging buffer, grown then reused.
    for len in [1000, 70_000, 3] {
        let want = rng.normal_vec(len, 1.0);
        let mut got = want.clone();
        comm.all_reduce_mean_host(&mut got).unwrap();
        assert_eq!(got, want, "{len} host values");
    }
    // Captured in a CUDA graph after a copy into a zeroed buffer, then
    // replayed: the buffer holds the values only once the graph has run.
    let mut captured = Tensor::zeros([n], DType::F32, device).unwrap();
    let ((), graph) = engine::graph::capture(device, || {
        captured.copy_from(&t)?;
        comm.all_reduce_mean(&mut captured)
    })
    .unwrap();
    assert!(captured.to_vec::<f32>().unwrap().iter().all(|&v| v == 0.0));
    graph.launch().unwrap();
    graph.launch().unwrap();
    engine::synchronize(device).unwrap();
    assert_eq!(captured.to_vec::<f32>().unwrap(), values);
    // Started bucket by bucket on the side stream, last first (as the
    // backward completes them), after a copy queued on the compute stream:
    // in place once waited for, eagerly and captured then replayed.
    let by_buckets = |comm: &mut NcclComm, buf: &mut Tensor| -> engine::Result<()> {
        buf.copy_from(&t)?;
        for first in (0..n).step_by(BUCKET_ELEMENTS).rev() {
            comm.start_mean(buf, first..n.min(first + BUCKET_ELEMENTS))?;
        }
        comm.wait()
    };
    let mut eager = Tensor::zeros([n], DType::F32, device).unwrap();
    by_buckets(&mut comm, &mut eager).unwrap();
    assert_eq!(eager.to_vec::<f32>().unwrap(), values);
    let mut replayed = Tensor::zeros([n], DType::F32, device).unwrap();
    let ((), graph) =
        engine::graph::capture(device, || by_buckets(&mut comm, &mut replayed)).unwrap();
    assert!(replayed.to_vec::<f32>().unwrap().iter().all(|&v| v == 0.0));
    graph.launch().unwrap();
    engine::synchronize(device).unwrap();
    assert_eq!(replayed.to_vec::<f32>().unwrap(), values);
}

/// Rank 0's set-up of a two-rank communicator whose rank 1 never comes:
/// its error and how long it took.
fn set_up_without_rank_one(device: Device, timeout: Duration, alarm: Alarm) -> (String, Duration) {
    let id = nccl::unique_id().unwrap();
    let start = Instant::now();
    let err = NcclComm::new(device, &id, (0, 2), timeout, alarm).unwrap_err();
    (err.to_string(), start.elapsed())
}

#[test]
fn on_cuda_a_rank_that_never_joins_ends_the_set_up_in_bounded_time() {
    let Some(device) = gpu_with_nccl() else {
        return;
    };
    let (err, took) = set_up_without_rank_one(device, Duration::from_secs(5), Alarm::default());
    assert!(
        err.contains("rank 0 of 2") && err.contains("did not finish within 5s"),
        "{err}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
    println!("a missing rank: {err} ({took:.1?})");
}

#[test]
fn on_cuda_the_alarm_stops_the_set_up_at_once_naming_the_rank() {
    let Some(device) = gpu_with_nccl() else {
        return;
    };
    let alarm = Alarm::default();
    let raise = alarm.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        raise.raise("rank 1 ended or lost its connection to rank 0");
    });
    let (err, took) = set_up_without_rank_one(device, Duration::from_secs(120), alarm);
    assert!(
        err.contains("rank 0 of 2") && err.contains("rank 1 ended"),
        "{err}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
}
