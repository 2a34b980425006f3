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
    let mut captured =
        CapturedStep::capture(&mut graphed, &v1, &v2, &numbers, |store, lr, skip| {
            Ok(graphed_sgd.step_unless(store, lr.clone(), skip)?)
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
    let mut captured = CapturedStep::capture(&mut model, &v1, &v2, &numbers, |store, lr, skip| {
        Ok(sgd.step_unless(store, lr.clone(), skip)?)
    })
    .unwrap();
    let (up, down) = tests::transfers_during(Device::Emulator, || {
        captured
            .run(&mut model, (&v1, &v2), (1, TOTAL), lr(1))
            .unwrap();
    });
    assert_eq!(up, (2, 16), "the step's three numbers and its input slot");
    assert_eq!(
        down,
        (1, 28),
        "the loss, the scaler's state and the gradient check"
    );
}

/// fp16 with overflows injected (a scale far too large, growing after every
/// good step): the captured step's on-device skip and scale changes are the
/// host scaler's, step by step, and so are the weights.
#[test]
fn a_captured_fp16_step_skips_and_rescales_as_the_host_scaler_does() {
    let _device = take_device();
    const STEPS: usize = 8;
    let inject = |model: &mut M2t| {
        let scaler = model.scaler_mut().expect("fp16 has a scaler");
        scaler.growth_interval = 1;
        scaler.restore(2f32.powi(11), 0).unwrap();
    };
    let (mut eager, mut eager_sgd) = pair(Device::Emulator, DType::F16);
    let (mut graphed, mut graphed_sgd) = pair(Device::Emulator, DType::F16);
    inject(&mut eager);
    inject(&mut graphed);
    let mut want = Vec::new();
    for k in 0..STEPS {
        let (v1, v2) = views(k);
        let numbers = eager.schedule(k, STEPS, lr(k)).unwrap();
        let report = eager.step(&v1, &v2, &numbers).unwrap();
        if !report.skip_update {
            eager_sgd.step(eager.student_mut(), numbers.lr).unwrap();
        }
        let (scale, good) = eager.loss_scale().unwrap().unwrap();
        want.push((report.loss.to_bits(), report.skip_update, scale, good));
    }
    let skips = want.iter().filter(|w| w.1).count();
    assert!(
        skips > 0 && skips < STEPS,
        "the injection must overflow some steps but not all: {want:?}"
    );

    // Step 0 eagerly with the host scaler, the rest captured.
    let mut got = Vec::new();
    let (v1, v2) = views(0);
    let numbers = graphed.schedule(0, STEPS, lr(0)).unwrap();
    let report = graphed.step(&v1, &v2, &numbers).unwrap();
    if !report.skip_update {
        graphed_sgd.step(graphed.student_mut(), numbers.lr).unwrap();
    }
    let (scale, good) = graphed.loss_scale().unwrap().unwrap();
    got.push((report.loss.to_bits(), report.skip_update, scale, good));
    let (v1, v2) = views(1);
    let numbers = graphed.schedule(1, STEPS, lr(1)).unwrap();
    let mut captured =
        CapturedStep::capture(&mut graphed, &v1, &v2, &numbers, |store, lr, skip| {
            Ok(graphed_sgd.step_unless(store, lr.clone(), skip)?)
        })
        .unwrap();
    for k in 1..STEPS {
        let (v1, v2) = views(k);
        captured.stage(&graphed, k % 2, (&v1, &v2)).unwrap();
        captured.launch(&mut graphed, (k, STEPS), lr(k)).unwrap();
        let r = captured.results(k).unwrap();
        let s = r.scaler.expect("fp16 results carry the scaler");
        got.push((r.loss.to_bits(), s.skipped, s.scale, s.good_steps));
    }
    assert_eq!(
        got, want,
        "(loss bits, skipped, scale, good steps) per step"
    );
    assert_eq!(
        graphed.loss_scale().unwrap(),
        eager.loss_scale().unwrap(),
        "the scaler state a checkpoint saves"
    );
    check(
        "student weights",
        &values(graphed.student().values()),
        &values(eager.student().values()),
        0.0,
    );
    check(
        "SGD velocity",
        &values(graphed_sgd.velocity()),
        &values(eager_sgd.velocity()),
        0.0,
    );
    let err = graphed.step(&v1, &v2, &numbers).unwrap_err();
    assert!(err.to_string().contains("lives on the device"), "{err}");
}

/// The two input slots: a replay reads the slot of its step, so views
/// staged into the other slot meanwhile do not reach it; and results are
/// read a step late from their own host copy.
#[test]
fn a_replay_reads_its_own_slot_and_results_arrive_a_step_late() {
    let _device = take_device();
    let (mut eager, mut eager_sgd) = pair(Device::Emulator, DType::F32);
    let want: Vec<f64> = (0..4)
        .map(|k| eager_step(&mut eager, &mut eager_sgd, k))
        .collect();
    let (mut model, mut sgd) = pair(Device::Emulator, DType::F32);
    eager_step(&mut model, &mut sgd, 0);
    let (v1, v2) = views(1);
    let numbers = model.schedule(1, TOTAL, lr(1)).unwrap();
    let mut captured = CapturedStep::capture(&mut model, &v1, &v2, &numbers, |store, lr, skip| {
        Ok(sgd.step_unless(store, lr.clone(), skip)?)
    })
    .unwrap();
    // Step 1's views into slot 1 and step 2's into slot 0 before either
    // replay, then step 3's into slot 1 while step 2 is queued.
    let (a1, a2) = views(1);
    let (b1, b2) = views(2);
    captured.stage(&model, 1, (&a1, &a2)).unwrap();
    captured.stage(&model, 0, (&b1, &b2)).unwrap();
    captured.launch(&mut model, (1, TOTAL), lr(1)).unwrap();
    captured.launch(&mut model, (2, TOTAL), lr(2)).unwrap();
    let (c1, c2) = views(3);
    captured.stage(&model, 1, (&c1, &c2)).unwrap();
    let one = captured.results(1).unwrap();
    captured.launch(&mut model, (3, TOTAL), lr(3)).unwrap();
    let two = captured.results(2).unwrap();
    let three = captured.results(3).unwrap();
    let got = [want[0], one.loss, two.loss, three.loss];
    check("losses", &got, &want, 0.0);
    assert!(one.grads_finite && two.grads_finite && three.grads_finite);
    assert_eq!(one.scaler, None, "no scaler outside fp16");
}

#[test]
fn another_model_and_mismatched_views_are_refused_with_the_reason() {
    let _device = take_device();
    let (v1, v2) = views(0);
    let (mut model, mut sgd) = pair(Device::Emulator, DType::F32);
    let numbers = model.schedule(0, TOTAL, lr(0)).unwrap();
    let mut captured = CapturedStep::capture(&mut model, &v1, &v2, &numbers, |store, lr, skip| {
        Ok(sgd.step_unless(store, lr.clone(), skip)?)
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
