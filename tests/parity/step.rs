//! One whole M2T step of a tiny ResNet-18 (basic blocks) and ResNet-50
//! (bottlenecks) on the device against the same step on the CPU: EMA, the
//! teacher's Momentum-BN forwards and lazy history update, two student
//! forwards, the loss, backward into the flat gradient buffer, and an SGD
//! update.

use super::*;
use engine::optim::Sgd;
use nets::m2t::{M2t, M2tConfig, Which};
use nets::resnet::{Arch, ResNetConfig, Stem};

pub const CASES: &[Case] = &[
    ("f32", step_f32),
    ("resnet50_f32", step_resnet50_f32),
    ("bf16", step_bf16),
];

/// `arch` with the small stem, width 4, heads `hidden`/`out` wide.
pub fn tiny_with(arch: Arch, precision: DType, (hidden, out): (usize, usize)) -> M2t {
    let backbone = ResNetConfig {
        arch,
        stem: Stem::Small,
        in_channels: 3,
        width: 4,
    };
    let config = M2tConfig {
        proj_hidden: hidden,
        proj_out: out,
        pred_hidden: hidden,
        precision,
        ..M2tConfig::new(backbone)
    };
    M2t::new(config, 42).unwrap()
}

fn tiny(arch: Arch) -> M2t {
    tiny_with(arch, DType::F32, (16, 8))
}

/// Runs steps `0..steps` (of 4), each followed by SGD; returns the model
/// and the losses.
fn run(mut model: M2t, steps: usize) -> (M2t, Vec<f64>) {
    let mut sgd = Sgd::new(model.student(), 0.9, 1e-4).unwrap();
    let mut losses = Vec::new();
    for k in 0..steps {
        let v1 = uniform(&[4, 9, 7, 3], 500 + k as u64, -1.0, 1.0);
        let v2 = uniform(&[4, 9, 7, 3], 600 + k as u64, -1.0, 1.0);
        let numbers = model.schedule(k, 4, 0.05).unwrap();
        losses.push(model.step(&v1, &v2, &numbers).unwrap().loss);
        sgd.step(model.student_mut(), numbers.lr).unwrap();
    }
    (model, losses)
}

fn compare(device: Device, arch: Arch, steps: usize, rtol: f64) {
    let (want, want_loss) = run(tiny(arch), steps);
    let (got, got_loss) = run(tiny(arch).to_device(device).unwrap(), steps);
    assert_eq!(got.device(), device);
    for (k, (g, w)) in got_loss.iter().zip(&want_loss).enumerate() {
        assert!(
            (g - w).abs() <= rtol * w.abs().max(1.0),
            "step {k} loss {g} vs {w}"
        );
    }
    let flat = |t: &Tensor| Tensor::from_vec(t.to_vec::<f32>().unwrap(), [t.numel()]).unwrap();
    assert_close(
        "student gradients",
        &flat(got.student().grads()),
        &flat(want.student().grads()),
        rtol,
    );
    assert_close(
        "student weights",
        &flat(got.student().values()),
        &flat(want.student().values()),
        rtol,
    );
    assert_close(
        "teacher weights",
        &flat(got.teacher().values()),
        &flat(want.teacher().values()),
        rtol,
    );
    for which in [Which::Student, Which::Teacher] {
        let ((_, gb), (_, wb)) = (got.network(which), want.network(which));
        for i in 0..wb.len() {
            assert_close(
                &format!("{which:?} {} mean", wb.name(i)),
                gb.mean(i),
                wb.mean(i),
                rtol,
            );
            assert_close(
                &format!("{which:?} {} var", wb.name(i)),
                gb.var(i),
                wb.var(i),
                rtol,
            );
        }
    }
}

/// Two steps, so the second runs on weights the device's own update made.
fn step_f32(device: Device) {
    compare(device, Arch::ResNet18, 2, 1e-3);
}

/// One step: the width-4 ResNet-50's 53 batch norms give it gradients of
/// order 10², so after one SGD step at lr 0.05 the next loss amplifies the
/// 1e-4 that f32 summation order leaves in them to 1e-2 (uniformly across
/// layers, as rounding does and a wrong kernel would not).
fn step_resnet50_f32(device: Device) {
    compare(device, Arch::ResNet50, 1, 1e-3);
}

/// Mixed precision against the f32 CPU step. A width-4 network's gradients
/// are dominated by cancellation (batch norm over nearly equal values), so
/// bf16 rounding moves them far more than it would in a real network (each
/// op's bf16 kernel has its own tight parity case): here the forward results
/// — the loss and the Momentum-BN history — are compared closely, and the
/// gradients only for being finite and of the same overall size. Batch 8
/// and 64-wide heads keep the heads' 1-D batch norm well conditioned.
fn step_bf16(device: Device) {
    let v1 = uniform(&[8, 9, 7, 3], 500, -1.0, 1.0);
    let v2 = uniform(&[8, 9, 7, 3], 600, -1.0, 1.0);
    let mut want = tiny_with(Arch::ResNet18, DType::F32, (64, 32));
    let mut got = tiny_with(Arch::ResNet18, DType::BF16, (64, 32))
        .to_device(device)
        .unwrap();
    let (w, g) = (
        want.step(&v1, &v2, &want.schedule(0, 4, 0.05).unwrap())
            .unwrap(),
        got.step(&v1, &v2, &got.schedule(0, 4, 0.05).unwrap())
            .unwrap(),
    );
    assert!(
        (g.loss - w.loss).abs() <= 1e-2 * w.loss,
        "loss {} vs {}",
        g.loss,
        w.loss
    );
    let ((_, gb), (_, wb)) = (got.network(Which::Teacher), want.network(Which::Teacher));
    for i in 0..wb.len() {
        assert_close(
            &format!("teacher {} mean", wb.name(i)),
            gb.mean(i),
            wb.mean(i),
            3e-2,
        );
        assert_close(
            &format!("teacher {} var", wb.name(i)),
            gb.var(i),
            wb.var(i),
            3e-2,
        );
    }
    let norm = |m: &M2t| m.student().grad_norm().unwrap().expect("finite gradients");
    let ratio = norm(&got) / norm(&want);
    assert!(
        (0.5..2.0).contains(&ratio),
        "gradient norm ratio bf16/f32 {ratio}"
    );
}
