//! What a steady-state M2T step on the GPU path moves between host and
//! device, counted on the emulator (its own process: the count is global to
//! the device). Anything beyond the step's three numbers and the loss read
//! is a hidden stall per step.

use engine::optim::Sgd;
use engine::{DType, Device, Rng, Tensor};
use nets::resnet::Arch;
use tests::parity::step::tiny_with;

#[test]
fn a_step_reads_back_only_the_loss() {
    let device = Device::Emulator;
    let mut model = tiny_with(Arch::ResNet18, DType::BF16, (16, 8))
        .to_device(device)
        .unwrap();
    let mut sgd = Sgd::new(model.student(), 0.9, 1e-4).unwrap();
    let mut rng = Rng::new(2);
    let mut view = || {
        Tensor::from_vec(rng.normal_vec(4 * 8 * 8 * 3, 1.0), [4, 8, 8, 3])
            .unwrap()
            .to_device(device)
            .unwrap()
    };
    let (v1, v2) = (view(), view());
    let mut step = |k| {
        let numbers = model.schedule(k, 10, 0.05).unwrap();
        model.step(&v1, &v2, &numbers).unwrap();
        sgd.step(model.student_mut(), numbers.lr).unwrap();
    };
    step(0);
    let (up, down) = tests::transfers_during(device, || step(1));
    assert_eq!(
        up,
        (1, 12),
        "uploads in a step: EMA momentum, β and the learning rate, in one copy"
    );
    assert_eq!(down, (1, 4), "reads in a step: the f32 loss only");
}
