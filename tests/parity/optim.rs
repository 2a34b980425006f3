//! Parameter store, optimisers, EMA and mixed-precision helpers on the flat
//! buffers: the same store built on the CPU and moved to the device, driven
//! through the same public calls, compared after every step.

use super::*;
use engine::optim::{Lars, Sgd, ema_update};
use engine::scaler::{DeviceScaler, LossScaler};
use engine::{Error, ParamId, ParamKind, ParamStore, ParamStoreBuilder, StepScalars, Tape};

pub const CASES: &[Case] = &[
    ("gradients", gradients),
    ("sgd", sgd),
    ("lars", lars),
    ("ema", ema),
    ("cast_values", cast_values),
    ("loss_scaler", loss_scaler),
    ("device_loss_scaler", device_loss_scaler),
    ("copy_selected", copy_selected),
];

type Layout = &'static [(&'static str, &'static [usize], ParamKind)];

/// Awkward sizes (none a multiple of the block; one parameter spans two LARS
/// chunks of 4096), LARS-excluded kinds, and the trust ratio's zero-norm
/// cases: an all-zero weight, and a weight whose gradient is zero.
const LAYOUT: Layout = &[
    ("stem.weight", &[3], ParamKind::Weight),
    ("stem.bn.gamma", &[5], ParamKind::BnScale),
    ("stem.bn.beta", &[5], ParamKind::BnShift),
    ("layer.weight", &[7, 10], ParamKind::Weight),
    ("wide.weight", &[257], ParamKind::Weight),
    ("big.weight", &[60, 70], ParamKind::Weight),
    ("zero.weight", &[4], ParamKind::Weight),
    ("frozen.weight", &[6], ParamKind::Weight),
    ("head.bias", &[1], ParamKind::Bias),
];

/// A CPU store of `layout` with random values.
fn cpu_store(layout: &[(&str, &[usize], ParamKind)], seed: u64) -> ParamStore {
    let mut rng = engine::Rng::new(seed);
    let mut b = ParamStoreBuilder::new();
    for &(name, dims, kind) in layout {
        let n: usize = dims.iter().product();
        let init = if name == "zero.weight" {
            vec![0.0; n]
        } else {
            rng.uniform_vec(n, 1.0)
        };
        b.add(name, dims.to_vec(), kind, init).unwrap();
    }
    b.build().unwrap()
}

/// Adds `g` (any float dtype, on the CPU) to the gradient of `id`: backward
/// from the parameter's own variable, attached for mixed precision in `g`'s
/// dtype (batch-norm parameters stay f32, so their `g` is widened exactly).
fn add_grad(store: &mut ParamStore, id: ParamId, g: &Tensor) {
    let mut tape = Tape::new();
    let vars = store.attach_mixed(&mut tape, g.dtype()).unwrap();
    let seed = to(
        store.device(),
        &g.to_dtype(vars.get(id).value().dtype()).unwrap(),
    );
    let grads = tape.backward_with(vars.get(id), seed).unwrap();
    store.accumulate_grads(vars, &grads).unwrap();
}

/// Random gradients for every parameter, scaled per parameter so LARS's trust
/// ratios differ; the frozen weight's is zero.
fn random_grads(store: &ParamStore, seed: u64) -> Vec<(ParamId, Tensor)> {
    store
        .ids()
        .enumerate()
        .map(|(i, id)| {
            let info = store.info(id);
            let scale = [0.5f32, 3.0, 0.01, 1.0][i % 4];
            let g = if info.name == "frozen.weight" {
                Tensor::zeros(info.shape.clone(), DType::F32, Device::Cpu).unwrap()
            } else {
                uniform(info.shape.dims(), seed + i as u64, -scale, scale)
            };
            (id, g)
        })
        .collect()
}

/// Zeroes both stores' gradients and adds the same fresh gradients to each.
fn fresh_grads(cpu: &mut ParamStore, dev: &mut ParamStore, seed: u64) {
    cpu.zero_grad().unwrap();
    dev.zero_grad().unwrap();
    for (id, g) in random_grads(cpu, seed) {
        add_grad(cpu, id, &g);
        add_grad(dev, id, &g);
    }
}

/// f32-level agreement: the norms use another summation order.
const RTOL: f64 = 1e-6;

fn gradients(device: Device) {
    let mut cpu = cpu_store(LAYOUT, 1);
    let mut dev = cpu.to_device(device).unwrap();
    assert_eq!(dev.device(), device);
    assert_bits_equal("to_device values", dev.values(), cpu.values());
    assert_bits_equal("to_device grads", dev.grads(), cpu.grads());

    // Two f32 passes, then 16-bit gradients (mixed precision) on top.
    let ids: Vec<ParamId> = cpu.ids().collect();
    for (seed, dtype) in [
        (10, DType::F32),
        (20, DType::F32),
        (30, DType::BF16),
        (40, DType::F16),
    ] {
        for (id, g) in random_grads(&cpu, seed) {
            // The second pass skips every other parameter.
            if seed == 20 && ids.iter().position(|&i| i == id).unwrap() % 2 == 1 {
                continue;
            }
            let g = rounded(&g, dtype);
            add_grad(&mut cpu, id, &g);
            add_grad(&mut dev, id, &g);
        }
        // Both sides add the same f32 values in the same order.
        assert_bits_equal(
            &format!("grads after {dtype} pass"),
            dev.grads(),
            cpu.grads(),
        );
    }
    let first = dev.ids().next().unwrap();
    assert_bits_equal("grad view", &dev.grad(first), &cpu.grad(first));

    // A live view blocks zeroing; then everything is zero.
    let view = dev.grad(first);
    assert!(matches!(dev.zero_grad(), Err(Error::BufferInUse { .. })));
    drop(view);
    dev.zero_grad().unwrap();
    assert!(
        dev.grads()
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .all(|&g| g == 0.0)
    );

    // A gradient of the wrong size (3 values for the 257 of wide.weight) is
    // refused before anything is added.
    let mut tape = Tape::new();
    let vars = dev.attach(&mut tape);
    let seed = to(device, &uniform(&[3], 7, -1.0, 1.0));
    let x = tape.param(seed.clone());
    let wide = dev.find("wide.weight").unwrap();
    let list = dev
        .ids()
        .map(|id| {
            if id == wide {
                x.clone()
            } else {
                vars.get(id).clone()
            }
        })
        .collect();
    drop(vars);
    let grads = tape.backward_with(&x, seed).unwrap();
    let err = dev
        .accumulate_grads(engine::ParamVars::from_vars(list), &grads)
        .unwrap_err();
    assert!(matches!(err, Error::Param(_)), "{err}");
    assert!(
        dev.grads()
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .all(|&g| g == 0.0)
    );

    // set uploads into one parameter's range only; a host view of a GPU
    // store's values is refused.
    let big = dev.find("big.weight").unwrap();
    let data = uniform(&[60, 70], 8, -3.0, 3.0).to_vec::<f32>().unwrap();
    dev.set(big, &data).unwrap();
    cpu.set(big, &data).unwrap();
    assert_bits_equal("set", dev.values(), cpu.values());
    assert!(matches!(dev.values_mut(), Err(Error::Device { .. })));
    let back = dev.to_device(Device::Cpu).unwrap();
    assert_bits_equal("back on the host", back.values(), cpu.values());

    expect_launched(
        device,
        &[
            "accumulate_grad_f32",
            "accumulate_grad_bf16",
            "accumulate_grad_f16",
            "cast_f32_to_bf16",
            "cast_f32_to_f16",
        ],
    );
}

fn sgd(device: Device) {
    let mut cpu = cpu_store(LAYOUT, 2);
    let mut dev = cpu.to_device(device).unwrap();
    let (mu, wd) = (0.9, 1e-2);
    let mut cpu_opt = Sgd::new(&cpu, mu, wd).unwrap();
    let mut dev_opt = Sgd::new(&dev, mu, wd).unwrap();
    assert_eq!(dev_opt.velocity().device(), device);
    // Resume from a non-zero velocity, as after a checkpoint.
    let v0 = uniform(&[cpu.flat_len()], 3, -0.1, 0.1)
        .to_vec::<f32>()
        .unwrap();
    cpu_opt.set_velocity(&v0).unwrap();
    dev_opt.set_velocity(&v0).unwrap();

    for (step, lr) in [0.1f32, 0.05, 0.02].into_iter().enumerate() {
        fresh_grads(&mut cpu, &mut dev, 100 + 10 * step as u64);
        cpu_opt.step(&mut cpu, lr).unwrap();
        dev_opt.step(&mut dev, lr).unwrap();
        assert_close(
            &format!("sgd values, step {step}"),
            dev.values(),
            cpu.values(),
            RTOL,
        );
        assert_close(
            &format!("sgd velocity, step {step}"),
            dev_opt.velocity(),
            cpu_opt.velocity(),
            RTOL,
        );
    }

    // Live views block the update and nothing is written; the wrong store
    // (another device) is refused.
    let before = dev.values().to_vec::<f32>().unwrap();
    let view = dev.value(dev.ids().next().unwrap());
    assert!(matches!(
        dev_opt.step(&mut dev, 0.1),
        Err(Error::BufferInUse { .. })
    ));
    drop(view);
    assert_eq!(dev.values().to_vec::<f32>().unwrap(), before);
    assert!(matches!(cpu_opt.step(&mut dev, 0.1), Err(Error::Param(_))));
    assert!(matches!(dev_opt.step(&mut cpu, 0.1), Err(Error::Param(_))));

    expect_launched(device, &["sgd_momentum_step", "accumulate_grad_f32"]);
}

fn lars(device: Device) {
    let mut cpu = cpu_store(LAYOUT, 4);
    let mut dev = cpu.to_device(device).unwrap();
    // Weight decay well above the release's, so it shows in the trust ratio.
    let (eta, mu, wd) = (1e-3, 0.9, 1e-2);
    let mut cpu_opt = Lars::new(&cpu, eta, mu, wd).unwrap();
    let mut dev_opt = Lars::new(&dev, eta, mu, wd).unwrap();

    for (step, lr) in [4.8f32, 3.2, 1.6].into_iter().enumerate() {
        fresh_grads(&mut cpu, &mut dev, 200 + 10 * step as u64);
        cpu_opt.step(&mut cpu, lr).unwrap();
        dev_opt.step(&mut dev, lr).unwrap();
        for id in cpu.ids() {
            let name = &cpu.info(id).name;
            assert_close(
                &format!("lars {name}, step {step}"),
                &dev.value(id),
                &cpu.value(id),
                RTOL,
            );
        }
        assert_close(
            &format!("lars velocity, step {step}"),
            dev_opt.velocity(),
            cpu_opt.velocity(),
            RTOL,
        );
    }
    // A store of the same length whose layout differs (a weight turned
    // into a bias) is refused.
    let mut relabelled: Vec<_> = LAYOUT.to_vec();
    relabelled[3].2 = ParamKind::Bias;
    let mut other = cpu_store(&relabelled, 5).to_device(device).unwrap();
    assert_eq!(other.flat_len(), dev.flat_len());
    assert!(matches!(
        dev_opt.step(&mut other, 0.1),
        Err(Error::Param(_))
    ));

    expect_launched(
        device,
        &[
            "lars_chunk_norms",
            "lars_momentum_step",
            "accumulate_grad_f32",
        ],
    );
}

fn ema(device: Device) {
    let student = cpu_store(LAYOUT, 6);
    let mut teacher = cpu_store(&LAYOUT[..LAYOUT.len() - 2], 7);
    let dev_student = student.to_device(device).unwrap();
    let mut dev_teacher = teacher.to_device(device).unwrap();

    for m in [0.99f32, 0.5] {
        ema_update(&mut teacher, &student, m).unwrap();
        ema_update(&mut dev_teacher, &dev_student, m).unwrap();
        assert_close(
            &format!("ema m={m}"),
            dev_teacher.values(),
            teacher.values(),
            RTOL,
        );
    }
    assert_bits_equal("student untouched", dev_student.values(), student.values());

    // m = 0 copies the student's prefix exactly.
    ema_update(&mut dev_teacher, &dev_student, 0.0).unwrap();
    let n = dev_teacher.flat_len();
    let want = student.values().to_vec::<f32>().unwrap()[..n].to_vec();
    let want = Tensor::from_vec(want, [n]).unwrap();
    assert_bits_equal("ema m=0", dev_teacher.values(), &want);
    // So does m = 0 read from a step cell (the kernel, not a copy), even over
    // a teacher that m = NaN has filled with NaN.
    ema_update(&mut dev_teacher, &dev_student, f32::NAN).unwrap();
    let zero = StepScalars::new(device, 1).unwrap().set(&[0.0]).unwrap();
    ema_update(&mut dev_teacher, &dev_student, &zero[0]).unwrap();
    assert_bits_equal("ema m=0 from a cell", dev_teacher.values(), &want);

    // A live view of the teacher blocks the update; a non-prefix is refused.
    let view = dev_teacher.value(dev_teacher.ids().next().unwrap());
    let blocked = ema_update(&mut dev_teacher, &dev_student, 0.5);
    assert!(matches!(blocked, Err(Error::BufferInUse { .. })));
    drop(view);
    let mut longer = student.to_device(device).unwrap();
    let wrong = ema_update(&mut longer, &dev_teacher, 0.5);
    assert!(matches!(wrong, Err(Error::Param(_))), "{wrong:?}");

    expect_launched(device, &["ema_teacher_update"]);
}

fn cast_values(device: Device) {
    let mut cpu = cpu_store(LAYOUT, 9);
    // Rounding ties, overflow past f16, subnormals, non-finite values.
    let wide = cpu.find("wide.weight").unwrap();
    let mut v = uniform(&[257], 10, -1e3, 1e3).to_vec::<f32>().unwrap();
    let special = [
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
        1.0 + 1.0 / 2048.0,
        65520.0,
        -1e6,
        3.0e-5,
        1e-40,
        -0.0,
        f32::NAN,
        f32::INFINITY,
    ];
    v[..special.len()].copy_from_slice(&special);
    cpu.set(wide, &v).unwrap();
    let dev = cpu.to_device(device).unwrap();

    for dtype in [DType::BF16, DType::F16] {
        let got = dev.cast_values(dtype).unwrap();
        assert_eq!((got.device(), got.dtype()), (device, dtype));
        assert_bits_equal(
            &format!("cast_values {dtype}"),
            &got,
            &cpu.cast_values(dtype).unwrap(),
        );
    }
    expect_launched(device, &["cast_f32_to_bf16", "cast_f32_to_f16"]);
}

fn loss_scaler(device: Device) {
    let mut cpu = cpu_store(LAYOUT, 11);
    let mut dev = cpu.to_device(device).unwrap();
    let scaler = LossScaler::new();
    let scale = scaler.scale();

    // Gradients as backward from `loss · scale` leaves them.
    cpu.zero_grad().unwrap();
    dev.zero_grad().unwrap();
    for (id, g) in random_grads(&cpu, 300) {
        let scaled: Vec<f32> = g
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .map(|x| x * scale)
            .collect();
        let g = Tensor::from_vec(scaled, g.shape().clone()).unwrap();
        add_grad(&mut cpu, id, &g);
        add_grad(&mut dev, id, &g);
    }
    let (cpu_norm, dev_norm) = (cpu.grad_norm().unwrap(), dev.grad_norm().unwrap());
    let (cpu_norm, dev_norm) = (cpu_norm.unwrap(), dev_norm.unwrap());
    assert!(
        (dev_norm - cpu_norm).abs() <= RTOL * cpu_norm,
        "{dev_norm} vs {cpu_norm}"
    );

    assert!(!scaler.unscale_and_check(&mut cpu).unwrap());
    assert!(!scaler.unscale_and_check(&mut dev).unwrap());
    assert_bits_equal("unscaled grads", dev.grads(), cpu.grads());

    // One NaN, then one ∞, anywhere in the buffer is found by both checks.
    let big = cpu.find("big.weight").unwrap();
    for (at, bad) in [(4123, f32::NAN), (17, f32::NEG_INFINITY)] {
        cpu.zero_grad().unwrap();
        dev.zero_grad().unwrap();
        let mut g = vec![0.5f32; 4200];
        g[at] = bad;
        let g = Tensor::from_vec(g, [60, 70]).unwrap();
        add_grad(&mut cpu, big, &g);
        add_grad(&mut dev, big, &g);
        assert_eq!(
            dev.grad_norm().unwrap(),
            None,
            "{bad} not seen by grad_norm"
        );
        assert!(scaler.unscale_and_check(&mut cpu).unwrap());
        assert!(
            scaler.unscale_and_check(&mut dev).unwrap(),
            "{bad} not found"
        );
        assert_bits_equal(&format!("unscaled with {bad}"), dev.grads(), cpu.grads());
    }
    // An overflow from unscaling itself (a scale below one) is caught too.
    let mut tiny = LossScaler::new();
    tiny.min_scale = 0.0;
    tiny.restore(0.25, 0).unwrap();
    dev.zero_grad().unwrap();
    let g = Tensor::from_vec(vec![f32::MAX; 4200], [60, 70]).unwrap();
    add_grad(&mut dev, big, &g);
    assert!(tiny.unscale_and_check(&mut dev).unwrap());

    expect_launched(
        device,
        &[
            "unscale_grads_check_finite",
            "grad_sum_squares_partials",
            "sum_partials",
            "accumulate_grad_f32",
        ],
    );
}

/// The loss scaler's state machine on the device against the host's, over
/// steps that overflow (a NaN, an ∞) or not, with a growth interval of two
/// and a floor it reaches; the skip flag it sets stops an SGD update.
fn device_loss_scaler(device: Device) {
    let mut cpu = cpu_store(LAYOUT, 12);
    let mut dev = cpu.to_device(device).unwrap();
    let mut host = LossScaler::new();
    host.growth_interval = 2;
    host.min_scale = 2.0;
    host.restore(8.0, 1).unwrap();
    let scaler = DeviceScaler::new(&host, device).unwrap();
    let mut sgd = Sgd::new(&dev, 0.9, 1e-4).unwrap();
    let big = cpu.find("big.weight").unwrap();
    let steps: [Option<f32>; 7] = [
        None,
        Some(f32::NAN),
        Some(f32::INFINITY),
        Some(f32::NAN),
        None,
        None,
        None,
    ];
    for (k, bad) in steps.into_iter().enumerate() {
        cpu.zero_grad().unwrap();
        dev.zero_grad().unwrap();
        let mut g: Vec<f32> = (0..4200).map(|i| (i % 97) as f32 * 0.25).collect();
        if let Some(bad) = bad {
            g[1234] = bad;
        }
        let g = Tensor::from_vec(g, [60, 70]).unwrap();
        add_grad(&mut cpu, big, &g);
        add_grad(&mut dev, big, &g);
        let found = host.unscale_and_check(&mut cpu).unwrap();
        let skip = host.update(found);
        scaler.unscale_and_update(&mut dev).unwrap();
        let state = scaler.read().unwrap();
        let want = (host.scale(), host.good_steps(), skip);
        assert_eq!(
            (state.scale, state.good_steps, state.skipped),
            want,
            "step {k}: (scale, good steps, skipped)"
        );
        assert_bits_equal(&format!("step {k} unscaled"), dev.grads(), cpu.grads());
        let before = dev.values().to_f64_vec().unwrap();
        let flag = scaler.skip_flag();
        sgd.step_unless(&mut dev, 0.1, Some(&flag)).unwrap();
        let changed = dev.values().to_f64_vec().unwrap() != before;
        assert_eq!(
            changed, !skip,
            "step {k}: the update ran {changed}, skip {skip}"
        );
    }
    let mut host_sgd = Sgd::new(&cpu, 0.9, 1e-4).unwrap();
    let err = host_sgd
        .step_unless(&mut cpu, 0.1, Some(&scaler.skip_flag()))
        .unwrap_err();
    assert!(err.to_string().contains("GPU updates only"), "{err}");
    expect_launched(
        device,
        &[
            "unscale_grads_by_state",
            "loss_scale_update",
            "sgd_momentum_step",
        ],
    );
}

/// A slot cell picks which of two buffers a copy reads, in every dtype.
fn copy_selected(device: Device) {
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let a = rounded(&uniform(&[3, 5, 7], 1, -1.0, 1.0), dtype);
        let b = rounded(&uniform(&[3, 5, 7], 2, -1.0, 1.0), dtype);
        let slot = StepScalars::new(device, 1).unwrap();
        for (which, want) in [(0.0, &a), (1.0, &b)] {
            let cell = slot.set(&[which]).unwrap();
            let dst = Tensor::zeros([3, 5, 7], dtype, device).unwrap();
            engine::pipeline::copy_selected(
                &dst,
                (&to(device, &a), &to(device, &b)),
                cell[0].device_cell().unwrap(),
            )
            .unwrap();
            assert_eq!(
                dst.to_f64_vec().unwrap(),
                want.to_f64_vec().unwrap(),
                "{dtype} slot {which}"
            );
        }
    }
    expect_launched(device, &["copy_selected_u16"]);
}
