//! Batch norm in every mode, forward and backward, in every GPU dtype; the
//! fused BN+ReLU and BN+add+ReLU against the CPU's batch_norm, add and relu;
//! the running-statistics and Momentum-BN history updates.

use super::*;
use engine::ops::{BatchStats, BesselCorrection, BnNorm, momentum_bn_update, update_running_stats};
use engine::{Error, Scalar, Tape};

pub const CASES: &[Case] = &[
    ("batch_mode", batch_mode),
    ("running_mode", running_mode),
    ("momentum_mode", momentum_mode),
    ("fused_relu", fused_relu),
    ("fused_add_relu", fused_add_relu),
    ("buffer_updates", buffer_updates),
    ("grid_stride", grid_stride),
    ("ghost_groups", ghost_groups),
];

const EPS: f64 = 1e-5;

/// f32 results of reductions (statistics, dγ, dβ) against the CPU's f64.
const REDUCED_TOL: f64 = 1e-4;

/// Awkward shapes: 3 channels; 37 channels (two channel tiles, three row
/// chunks, both ragged); one image with several pixels; 2-D; 18 row chunks.
const SHAPES: &[&[usize]] = &[
    &[2, 3, 5, 3],
    &[2, 5, 7, 37],
    &[1, 2, 3, 5],
    &[7, 5],
    &[4, 12, 12, 6],
];

#[derive(Clone, Copy, Debug)]
enum Mode {
    Batch,
    Running,
    Momentum(f64, BesselCorrection),
}

impl Mode {
    /// Momentum BN's β as the ops take it (unused by the other modes).
    fn beta(self) -> Scalar {
        match self {
            Mode::Momentum(beta, _) => beta.into(),
            _ => 0.0.into(),
        }
    }
}

const MOMENTUM_MODES: [Mode; 2] = [
    Mode::Momentum(0.7, BesselCorrection::Double),
    Mode::Momentum(0.25, BesselCorrection::Single),
];

/// What follows the normalisation.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fused {
    No,
    Relu,
    AddRelu,
}

/// One problem, on the CPU: x, dy and the residual already rounded to the
/// activation dtype; γ, β and the fixed statistics f32.
struct Problem {
    dtype: DType,
    x: Tensor,
    dy: Tensor,
    residual: Tensor,
    gamma: Tensor,
    beta: Tensor,
    mean: Tensor,
    var: Tensor,
    /// Ghost-BN groups of the batch (1: plain batch norm).
    groups: usize,
}

impl Problem {
    fn new(shape: &[usize], dtype: DType, seed: u64) -> Problem {
        let c = *shape.last().unwrap();
        // Per-channel offsets and spreads, so the statistics differ from the
        // fixed ones and the mean is not small against the spread.
        let shift = uniform(&[c], seed, -2.0, 2.0).to_vec::<f32>().unwrap();
        let spread = uniform(&[c], seed + 1, 0.3, 3.0).to_vec::<f32>().unwrap();
        let x: Vec<f32> = uniform(shape, seed + 2, -1.0, 1.0)
            .to_vec::<f32>()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, v)| shift[i % c] + spread[i % c] * v)
            .collect();
        let x = Tensor::from_vec(x, shape.to_vec()).unwrap();
        Problem {
            dtype,
            x: rounded(&x, dtype),
            dy: rounded(&uniform(shape, seed + 3, -1.0, 1.0), dtype),
            residual: rounded(&uniform(shape, seed + 4, -1.5, 1.5), dtype),
            gamma: uniform(&[c], seed + 5, 0.5, 1.5),
            beta: uniform(&[c], seed + 6, -0.5, 0.5),
            mean: uniform(&[c], seed + 7, -1.0, 1.0),
            var: uniform(&[c], seed + 8, 0.5, 2.0),
            groups: 1,
        }
    }
}

fn norm<'a>(mode: Mode, mean: &'a Tensor, var: &'a Tensor, beta: &'a Scalar) -> BnNorm<'a> {
    match mode {
        Mode::Batch => BnNorm::Batch,
        Mode::Running => BnNorm::Running { mean, var },
        Mode::Momentum(_, correction) => BnNorm::Momentum {
            mean,
            var,
            beta,
            correction,
        },
    }
}

/// A forward and backward's results, on the CPU.
struct Results {
    y: Tensor,
    stats: Option<BatchStats>,
    dx: Tensor,
    dgamma: Tensor,
    dbeta: Tensor,
    dresidual: Option<Tensor>,
}

fn host(t: &Tensor) -> Tensor {
    t.to_device(Device::Cpu).unwrap()
}

/// The CPU in f32: batch_norm, then add and relu as separate ops.
fn reference(p: &Problem, mode: Mode, fused: Fused) -> Results {
    let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let mut tape = Tape::new();
    tape.set_bn_groups(p.groups).unwrap();
    let x = tape.param(f32(&p.x));
    let residual = tape.param(f32(&p.residual));
    let (gamma, beta) = (tape.param(p.gamma.clone()), tape.param(p.beta.clone()));
    let beta_mbn = mode.beta();
    let (h, stats) = tape
        .batch_norm(
            &x,
            &gamma,
            &beta,
            norm(mode, &p.mean, &p.var, &beta_mbn),
            EPS,
        )
        .unwrap();
    let y = match fused {
        Fused::No => h,
        Fused::Relu => tape.relu(&h).unwrap(),
        Fused::AddRelu => {
            let joined = tape.add(&h, &residual).unwrap();
            tape.relu(&joined).unwrap()
        }
    };
    let value = y.value().clone();
    let g = tape.backward_with(&y, f32(&p.dy)).unwrap();
    Results {
        y: value,
        stats,
        dx: g.get(&x).unwrap().clone(),
        dgamma: g.get(&gamma).unwrap().clone(),
        dbeta: g.get(&beta).unwrap().clone(),
        dresidual: g.get(&residual).cloned(),
    }
}

/// The same on `device` in the problem's dtype, through the fused tape ops.
fn on_device(device: Device, p: &Problem, mode: Mode, fused: Fused) -> Results {
    let (mean, var) = (to(device, &p.mean), to(device, &p.var));
    let beta_mbn = mode.beta();
    let norm = norm(mode, &mean, &var, &beta_mbn);
    let mut tape = Tape::new();
    tape.set_bn_groups(p.groups).unwrap();
    let x = tape.param(to(device, &p.x));
    let residual = tape.param(to(device, &p.residual));
    let gamma = tape.param(to(device, &p.gamma));
    let beta = tape.param(to(device, &p.beta));
    let (y, stats) = match fused {
        Fused::No => tape.batch_norm(&x, &gamma, &beta, norm, EPS),
        Fused::Relu => tape.batch_norm_relu(&x, &gamma, &beta, norm, EPS),
        Fused::AddRelu => tape.batch_norm_add_relu(&x, &residual, &gamma, &beta, norm, EPS),
    }
    .unwrap();
    assert_eq!(y.value().device(), device);
    assert_eq!(y.value().dtype(), p.dtype);
    let value = host(y.value());
    let g = tape.backward_with(&y, to(device, &p.dy)).unwrap();
    let grad = |v| host(g.get(v).unwrap());
    Results {
        y: value,
        stats,
        dx: grad(&x),
        dgamma: grad(&gamma),
        dbeta: grad(&beta),
        dresidual: g.get(&residual).map(host),
    }
}

/// Runs `mode` and `fused` on both sides and compares everything.
fn check(device: Device, p: &Problem, mode: Mode, fused: Fused) {
    let what = format!(
        "{mode:?} {fused:?} {} {:?} in {} group(s)",
        p.dtype,
        p.x.dims(),
        p.groups
    );
    let want = reference(p, mode, fused);
    let got = on_device(device, p, mode, fused);
    let tol = tolerance(p.dtype);
    // Activations are compared after rounding the f32 reference to their dtype.
    let in_dtype = |t: &Tensor| t.to_dtype(p.dtype).unwrap();
    assert_close(&format!("{what} y"), &got.y, &in_dtype(&want.y), tol);
    assert_close(&format!("{what} dx"), &got.dx, &in_dtype(&want.dx), tol);
    assert_close(
        &format!("{what} dγ"),
        &got.dgamma,
        &want.dgamma,
        REDUCED_TOL,
    );
    assert_close(&format!("{what} dβ"), &got.dbeta, &want.dbeta, REDUCED_TOL);
    match (&got.stats, &want.stats) {
        (Some(g), Some(w)) => {
            assert_eq!(g.count, w.count, "{what} count");
            assert_eq!(
                g.mean.device(),
                device,
                "{what}: statistics stay on the GPU"
            );
            assert_close(
                &format!("{what} mean"),
                &host(&g.mean),
                &w.mean,
                REDUCED_TOL,
            );
            assert_close(&format!("{what} var"), &host(&g.var), &w.var, REDUCED_TOL);
        }
        (None, None) => {}
        _ => panic!("{what}: statistics returned on one side only"),
    }
    // The residual's gradient is dy where the output is positive: exactly.
    match (&got.dresidual, &want.dresidual) {
        (Some(g), Some(w)) => assert_bits_equal(&format!("{what} d residual"), g, &in_dtype(w)),
        (None, None) => assert_ne!(fused, Fused::AddRelu),
        _ => panic!("{what}: residual gradient on one side only"),
    }
}

fn batch_mode(device: Device) {
    for &dtype in &GPU_DTYPES {
        for (i, shape) in SHAPES.iter().enumerate() {
            let p = Problem::new(shape, dtype, 10 * i as u64);
            check(device, &p, Mode::Batch, Fused::No);
        }
    }
    // A mean of 1000 against a spread of about 0.1, where E[x²] − E[x]² in
    // f32 would lose the variance entirely: the Welford statistics keep it.
    let x = uniform(&[4, 6, 6, 5], 90, 999.8, 1000.2);
    let (gamma, beta) = (uniform(&[5], 91, 0.5, 1.5), uniform(&[5], 92, -0.5, 0.5));
    let batch_stats = |x: &Tensor, gamma: &Tensor, beta: &Tensor| {
        let mut tape = Tape::no_grad();
        let (x, gamma, beta) = (
            tape.constant(x.clone()),
            tape.constant(gamma.clone()),
            tape.constant(beta.clone()),
        );
        let (_, stats) = tape
            .batch_norm(&x, &gamma, &beta, BnNorm::Batch, EPS)
            .unwrap();
        stats.unwrap()
    };
    let want = batch_stats(&x, &gamma, &beta);
    let got = batch_stats(&to(device, &x), &to(device, &gamma), &to(device, &beta));
    assert_close("mean near 1000", &host(&got.mean), &want.mean, 1e-6);
    assert_close("variance near mean 1000", &host(&got.var), &want.var, 1e-4);
    expect_launched(
        device,
        &[
            "bn_stats_partial_f32",
            "bn_stats_partial_bf16",
            "bn_stats_partial_f16",
            "bn_batch_finalize",
            "bn_apply_f32",
            "bn_apply_bf16",
            "bn_apply_f16",
            "bn_backward_partial_f32",
            "bn_backward_partial_bf16",
            "bn_backward_partial_f16",
            "bn_backward_finalize",
            "bn_backward_apply_f32",
            "bn_backward_apply_bf16",
            "bn_backward_apply_f16",
        ],
    );
}

fn running_mode(device: Device) {
    for &dtype in &GPU_DTYPES {
        // Fixed statistics need no batch: one value per channel is fine.
        for (i, shape) in SHAPES.iter().chain([&[1, 1, 1, 5][..]].iter()).enumerate() {
            let p = Problem::new(shape, dtype, 100 + 10 * i as u64);
            check(device, &p, Mode::Running, Fused::No);
        }
    }
    expect_launched(
        device,
        &[
            "bn_running_coefficients",
            "bn_apply_f32",
            "bn_apply_bf16",
            "bn_apply_f16",
            "bn_backward_partial_f32",
            "bn_backward_partial_bf16",
            "bn_backward_partial_f16",
            "bn_backward_finalize",
            "bn_backward_apply_f32",
            "bn_backward_apply_bf16",
            "bn_backward_apply_f16",
        ],
    );

    // Batch statistics of one value per channel are an error, as on the CPU;
    // so are 16-bit γ and β on a GPU.
    let p = Problem::new(&[1, 1, 1, 5], DType::BF16, 150);
    let (mean, var) = (to(device, &p.mean), to(device, &p.var));
    let mut tape = Tape::no_grad();
    let x = tape.constant(to(device, &p.x));
    let (gamma, beta) = (
        tape.constant(to(device, &p.gamma)),
        tape.constant(to(device, &p.beta)),
    );
    for mode in [Mode::Batch, MOMENTUM_MODES[0]] {
        let beta_mbn = mode.beta();
        let err = tape
            .batch_norm(&x, &gamma, &beta, norm(mode, &mean, &var, &beta_mbn), EPS)
            .unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{mode:?}: {err}");
    }
    let gamma16 = tape.constant(to(device, &rounded(&p.gamma, DType::BF16)));
    let err = tape
        .batch_norm(
            &x,
            &gamma16,
            &beta,
            norm(Mode::Running, &mean, &var, &0.0.into()),
            EPS,
        )
        .unwrap_err();
    assert!(matches!(err, Error::DType { .. }), "{err}");
}

fn momentum_mode(device: Device) {
    for &dtype in &GPU_DTYPES {
        for (i, shape) in SHAPES.iter().enumerate() {
            let p = Problem::new(shape, dtype, 200 + 10 * i as u64);
            check(device, &p, MOMENTUM_MODES[i % 2], Fused::No);
        }
    }
    // Both corrections on one shape.
    let p = Problem::new(&[2, 3, 5, 3], DType::F32, 290);
    check(device, &p, MOMENTUM_MODES[1], Fused::No);
    expect_launched(
        device,
        &[
            "bn_stats_partial_f32",
            "bn_stats_partial_bf16",
            "bn_stats_partial_f16",
            "bn_momentum_finalize",
            "bn_apply_f32",
            "bn_apply_bf16",
            "bn_apply_f16",
            "bn_backward_finalize",
            "bn_backward_apply_f32",
        ],
    );
}

fn fused_relu(device: Device) {
    let modes = [Mode::Batch, MOMENTUM_MODES[0], Mode::Running];
    for &dtype in &GPU_DTYPES {
        for (i, shape) in SHAPES.iter().enumerate() {
            let p = Problem::new(shape, dtype, 300 + 10 * i as u64);
            check(device, &p, modes[i % modes.len()], Fused::Relu);
        }
    }
    expect_launched(
        device,
        &[
            "bn_apply_relu_f32",
            "bn_apply_relu_bf16",
            "bn_apply_relu_f16",
            "bn_relu_backward_partial_f32",
            "bn_relu_backward_partial_bf16",
            "bn_relu_backward_partial_f16",
            "bn_relu_backward_apply_f32",
            "bn_relu_backward_apply_bf16",
            "bn_relu_backward_apply_f16",
            "bn_batch_finalize",
            "bn_momentum_finalize",
            "bn_running_coefficients",
            "bn_backward_finalize",
        ],
    );
}

fn fused_add_relu(device: Device) {
    let modes = [Mode::Batch, MOMENTUM_MODES[1], Mode::Running];
    for &dtype in &GPU_DTYPES {
        for (i, shape) in SHAPES.iter().enumerate() {
            let p = Problem::new(shape, dtype, 400 + 10 * i as u64);
            check(device, &p, modes[i % modes.len()], Fused::AddRelu);
        }
    }
    expect_launched(
        device,
        &[
            "bn_apply_add_relu_f32",
            "bn_apply_add_relu_bf16",
            "bn_apply_add_relu_f16",
            "bn_add_relu_backward_partial_f32",
            "bn_add_relu_backward_partial_bf16",
            "bn_add_relu_backward_partial_f16",
            "bn_backward_apply_f32",
            "bn_backward_apply_bf16",
            "bn_backward_apply_f16",
            "bn_backward_finalize",
        ],
    );
}

/// Statistics of `c` channels from `count` values each, on the CPU.
fn stats(c: usize, count: usize, seed: u64) -> BatchStats {
    BatchStats {
        mean: uniform(&[c], seed, -2.0, 2.0),
        var: uniform(&[c], seed + 1, 0.1, 4.0),
        count,
    }
}

fn stats_on(device: Device, s: &BatchStats) -> BatchStats {
    BatchStats {
        mean: to(device, &s.mean),
        var: to(device, &s.var),
        count: s.count,
    }
}

/// Fresh mean and variance buffers on the CPU and on `device`.
fn buffers(device: Device, c: usize, seed: u64) -> [Tensor; 4] {
    let (mean, var) = (
        uniform(&[c], seed, -1.0, 1.0),
        uniform(&[c], seed + 1, 0.5, 2.0),
    );
    let (dm, dv) = (to(device, &mean), to(device, &var));
    [mean, var, dm, dv]
}

fn assert_buffers(what: &str, got: [&Tensor; 2], want: [&Tensor; 2]) {
    for (name, g, w) in [("mean", got[0], want[0]), ("var", got[1], want[1])] {
        assert_eq!(g.dims(), w.dims());
        assert_close(
            &format!("{what} {name}"),
            &host(g),
            w,
            tolerance(DType::F32),
        );
    }
}

fn buffer_updates(device: Device) {
    let c = 37;
    let (s1, s2) = (stats(c, 12, 500), stats(c, 12, 510));
    let (d1, d2) = (stats_on(device, &s1), stats_on(device, &s2));

    let [mut mean, mut var, mut dmean, mut dvar] = buffers(device, c, 520);
    for momentum in [0.1, 0.5] {
        update_running_stats(&mut mean, &mut var, &s1, momentum).unwrap();
        update_running_stats(&mut dmean, &mut dvar, &d1, momentum).unwrap();
        assert_buffers(
            &format!("running update (momentum {momentum})"),
            [&dmean, &dvar],
            [&mean, &var],
        );
    }

    for (k, correction) in [BesselCorrection::Double, BesselCorrection::Single]
        .into_iter()
        .enumerate()
    {
        let [mut mean, mut var, mut dmean, mut dvar] = buffers(device, c, 530 + k as u64);
        for beta in [1.0, 0.6, 0.0] {
            momentum_bn_update(&mut mean, &mut var, &s1, &s2, beta, correction).unwrap();
            momentum_bn_update(&mut dmean, &mut dvar, &d1, &d2, beta, correction).unwrap();
            assert_buffers(
                &format!("history update ({correction:?}, β = {beta})"),
                [&dmean, &dvar],
                [&mean, &var],
            );
        }
    }
    expect_launched(
        device,
        &["bn_running_stats_update", "momentum_bn_history_update"],
    );

    // Failed updates change neither buffer: a shared variance buffer, one
    // value per channel, views of different sizes.
    let before = [host(&dmean), host(&dvar)];
    let shared = dvar.clone();
    let err = update_running_stats(&mut dmean, &mut dvar, &d1, 0.1).unwrap_err();
    assert!(matches!(err, Error::BufferInUse { .. }), "{err}");
    drop(shared);
    let single = BatchStats {
        count: 1,
        ..stats_on(device, &s1)
    };
    let err = momentum_bn_update(
        &mut dmean,
        &mut dvar,
        &single,
        &single,
        0.5,
        BesselCorrection::Double,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let other = stats_on(device, &stats(c, 13, 540));
    let err = momentum_bn_update(
        &mut dmean,
        &mut dvar,
        &d1,
        &other,
        0.5,
        BesselCorrection::Double,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    assert_bits_equal("mean after failed updates", &host(&dmean), &before[0]);
    assert_bits_equal("var after failed updates", &host(&dvar), &before[1]);
}

/// Over four million elements: the elementwise kernels' grid (at most 4096
/// blocks of 256 threads, 4 elements each) loops, 260 channels make ragged
/// channel tiles, and 443 row chunks take the finalize kernels several steps.
fn grid_stride(device: Device) {
    let p = Problem::new(&[4, 64, 64, 260], DType::BF16, 600);
    check(device, &p, MOMENTUM_MODES[0], Fused::AddRelu);
    expect_launched(
        device,
        &[
            "bn_stats_partial_bf16",
            "bn_momentum_finalize",
            "bn_apply_add_relu_bf16",
            "bn_add_relu_backward_partial_bf16",
            "bn_backward_finalize",
            "bn_backward_apply_bf16",
        ],
    );
}

/// Ghost batch norm: the batch's groups normalised separately, in every
/// mode, fused or not, against the CPU's grouped batch_norm, add and relu.
fn ghost_groups(device: Device) {
    for &dtype in &GPU_DTYPES {
        for (i, (shape, groups)) in [(&[4, 3, 5, 3][..], 2), (&[12, 7][..], 3)]
            .iter()
            .enumerate()
        {
            let mut p = Problem::new(shape, dtype, 700 + 10 * i as u64);
            p.groups = *groups;
            for mode in [Mode::Batch, MOMENTUM_MODES[0]] {
                for fused in [Fused::No, Fused::Relu, Fused::AddRelu] {
                    check(device, &p, mode, fused);
                }
            }
        }
    }
}
