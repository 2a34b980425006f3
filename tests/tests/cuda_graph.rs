//! A captured training step (CUDA graph; a recording on the emulator, under
//! the same rules) replays the eager step, with each step's own EMA
//! momentum, Momentum-BN β, learning rate and views: bit for bit on the
//! emulator, and within f32 rounding on a CUDA GPU, where cuDNN may pick
//! algorithms that sum in no fixed order. Without a usable GPU the CUDA
//! tests print "skipped: no GPU" and why; `scripts/gpu-check.sh` runs them.

use engine::optim::Sgd;
use engine::{DType, Device, Rng, Tensor};
use nets::m2t::{CapturedStep, M2t, Which};
use nets::resnet::Arch;
use std::sync::{Mutex, MutexGuard};
use tests::parity::step::tiny_with;

const TOTAL: usize = 5;

/// A capture takes the whole device, as on CUDA, where it captures the
/// device's one stream: the tests, which share the emulator, take turns.
static DEVICE_IN_USE: Mutex<()> = Mutex::new(());

fn take_device() -> MutexGuard<'static, ()> {
    DEVICE_IN_USE.lock().unwrap_or_else(|e| e.into_inner())
}

fn views(k: usize) -> (Tensor, Tensor) {
    let mut rng = Rng::new(10 + k as u64);
    let mut view = || Tensor::from_vec(rng.normal_vec(4 * 8 * 8 * 3, 1.0), [4, 8, 8, 3]).unwrap();
    (view(), view())
}

/// A learning rate that changes every step, so a graph that froze the
/// capture's would drift.
fn lr(k: usize) -> f64 {
    0.05 / (k + 1) as f64
}

fn pair(device: Device, precision: DType) -> (M2t, Sgd) {
    let model = tiny_with(Arch::ResNet18, precision, (16, 8))
        .to_device(device)
        .unwrap();
    let sgd = Sgd::new(model.student(), 0.9, 1e-4).unwrap();
    (model, sgd)
}

fn eager_step(model: &mut M2t, sgd: &mut Sgd, k: usize) -> f64 {
    let (v1, v2) = views(k);
    let numbers = model.schedule(k, TOTAL, lr(k)).unwrap();
    let report = model.step(&v1, &v2, &numbers).unwrap();
    sgd.step(model.student_mut(), numbers.lr).unwrap();
    report.loss
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// Fails unless `got` matches `want`: bit for bit when `rtol` is 0, else
/// each element within `rtol` of the larger of its magnitude and 1.
fn check(what: &str, got: &[f64], want: &[f64], rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let off = got.iter().zip(want).position(|(g, w)| match rtol {
        0.0 => g.to_bits() != w.to_bits(),
        _ => (g - w).abs() > rtol * w.abs().max(1.0),
    });
    if let Some(i) = off {
        panic!("{what} differ at {i}: {} vs {}", got[i], want[i]);
    }
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_f64_vec().unwrap()
}

fn replays_the_eager_step(device: Device, precision: DType, rtol: f64) {
    let _device = take_device();
    let (mut eager, mut eager_sgd) = pair(device, precision);
    let (mut graphed, mut graphed_sgd) = pair(device, precision);
    let mut eager_losses = Vec::new();
    let mut graph_losses = Vec::new();
    for k in 0..TOTAL {
        eager_losses.push(eager_step(&mut eager, &mut eager_sgd, k));
    }
    // Step 0 eagerly (as on a GPU, where it makes cuDNN's choices), then
    // capture once and replay for steps 1..TOTAL on new views.
    graph_losses.push(eager_step(&mut graphed, &mut graphed_sgd, 0));
    let (v1, v2) = views(1);
    let numbers = graphed.schedule(1, TOTAL, lr(1)).unwrap();
    let teacher_before = bits(graphed.teacher().values());
    let mut captured = CapturedStep::capture(&mut graphed, &v1, &v2, &numbers, |store, lr| {
        Ok(graphed_sgd.step(store, lr.clone())?)
    })
    .unwrap();
    assert_eq!(
        bits(graphed.teacher().values()),
        teacher_before,
        "capturing ran the step"
    );
    for k in 1..TOTAL {
        let (v1, v2) = views(k);
        let report = captured
            .run(&mut graphed, (&v1, &v2), (k, TOTAL), lr(k))
            .unwrap();
        graph_losses.push(report.loss);
    }
    check("losses", &graph_losses, &eager_losses, rtol);
    for (what, got, want) in [
        (
            "student weights",
            graphed.student().values(),
            eager.student().values(),
        ),
        (
            "student gradients",
            graphed.student().grads(),
            eager.student().grads(),
        ),
        (
            "teacher weights",
            graphed.teacher().values(),
            eager.teacher().values(),
        ),
        ("SGD velocity", graphed_sgd.velocity(), eager_sgd.velocity()),
    ] {
        check(what, &values(got), &values(want), rtol);
    }
    for which in [Which::Student, Which::Teacher] {
        let ((_, got), (_, want)) = (graphed.network(which), eager.network(which));
        for i in 0..want.len() {
            let name = format!("{which:?} {}", want.name(i));
            check(
                &format!("{name} mean"),
                &values(got.mean(i)),
                &values(want.mean(i)),
                rtol,
            );
            check(
                &format!("{name} var"),
                &values(got.var(i)),
                &values(want.var(i)),
                rtol,
            );
        }
    }
}

#[test]
fn a_captured_f32_step_replays_the_eager_step_exactly() {
    replays_the_eager_step(Device::Emulator, DType::F32, 0.0);
}

#[test]
fn a_captured_bf16_step_replays_the_eager_step_exactly() {
    replays_the_eager_step(Device::Emulator, DType::BF16, 0.0);
}

#[test]
fn on_cuda_a_captured_f32_step_replays_the_eager_step() {
    if let Some(device) = tests::parity::cuda_device() {
        replays_the_eager_step(device, DType::F32, 1e-4);
    }
}

#[test]
fn on_cuda_a_captured_bf16_step_replays_the_eager_step() {
    if let Some(device) = tests::parity::cuda_device() {
        replays_the_eager_step(device, DType::BF16, 1e-2);
    }
}

#[test]
fn a_replay_reads_back_only_the_loss() {
    let _device = take_device();
    let (mut model, mut sgd) = pair(Device::Emulator, DType::BF16);
    eager_step(&mut model, &mut sgd, 0);
    let (v1, v2) = views(1);
    let (v1, v2) = (
        v1.to_device(Device::Emulator).unwrap(),
        v2.to_device(Device::Emulator).unwrap(),
    );
    let numbers = model.schedule(1, TOTAL, lr(1)).unwrap();
    let mut captured = CapturedStep::capture(&mut model, &v1, &v2, &numbers, |store, lr| {
        Ok(sgd.step(store, lr.clone())?)
    })
    .unwrap();
    let (up, down) = tests::transfers_during(Device::Emulator, || {
        captured
            .run(&mut model, (&v1, &v2), (1, TOTAL), lr(1))
            .unwrap();
    });
    assert_eq!(up, (1, 12), "the step's three numbers");
    assert_eq!(down, (1, 4), "the loss");
}

#[test]
fn fp16_another_model_and_mismatched_views_are_refused_with_the_reason() {
    let _device = take_device();
    let (mut model, mut sgd) = pair(Device::Emulator, DType::F16);
    let (v1, v2) = views(0);
    let numbers = model.schedule(0, TOTAL, lr(0)).unwrap();
    let err = CapturedStep::capture(&mut model, &v1, &v2, &numbers, |store, lr| {
        Ok(sgd.step(store, lr.clone())?)
    })
    .err()
    .expect("fp16 refused");
    assert!(err.to_string().contains("fp16's loss scaler"), "{err}");

    let (mut model, mut sgd) = pair(Device::Emulator, DType::F32);
    let numbers = model.schedule(0, TOTAL, lr(0)).unwrap();
    let mut captured = CapturedStep::capture(&mut model, &v1, &v2, &numbers, |store, lr| {
        Ok(sgd.step(store, lr.clone())?)
    })
    .unwrap();
    let (mut other, _) = pair(Device::Emulator, DType::F32);
    let err = captured
        .run(&mut other, (&v1, &v2), (0, TOTAL), lr(0))
        .unwrap_err();
    assert!(
        err.to_string().contains("belongs to another model"),
        "{err}"
    );
    let small = Tensor::zeros([2, 8, 8, 3], DType::F32, Device::Cpu).unwrap();
    let err = captured
        .run(&mut model, (&small, &small), (0, TOTAL), lr(0))
        .unwrap_err();
    assert!(err.to_string().contains("takes views of"), "{err}");
}
