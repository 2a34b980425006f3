//! `trainer info --check`: a smoke test of every backend this machine has.
//!
//! On each GPU device (the emulator, then each CUDA GPU) it runs a
//! convolution forward and backward in f32 and bf16 (cuDNN), a matrix
//! product forward and backward (cuBLAS), a whole tiny M2T step with its SGD
//! update in f32 and bf16 (the batch-norm, elementwise, pooling, loss,
//! linear, optimiser and cast kernel families) and a batch of augmented
//! views (the augmentation family), each against the CPU backend. The CPU
//! backend itself is checked against plain f64 loops. Each check is one
//! line, `pass` or `FAIL` with the error, so a library that fails to load
//! or to run names itself.

use crate::augment::{AugmentConfig, GpuAugmenter, View, ViewParams, apply_view};
use crate::data::Image;
use engine::ops::Conv2dParams;
use engine::optim::Sgd;
use engine::{DType, Device, Rng, Tape, Tensor};
use nets::m2t::{M2t, M2tConfig};
use nets::resnet::{Arch, ResNetConfig, Stem};

/// One check's outcome: the largest error relative to the tolerance's
/// scale, or why it failed.
pub type Outcome = std::result::Result<String, String>;

/// A named check of one device.
type Check = (&'static str, fn(Device) -> Outcome);

/// The checks of one device, in order, each with its name.
pub fn run(device: Device) -> Vec<(&'static str, Outcome)> {
    let mut checks: Vec<Check> = vec![
        ("convolution f32 forward+backward", |d| conv(d, DType::F32)),
        ("matrix product f32 forward+backward", product),
    ];
    if device.is_gpu() {
        checks.extend::<[Check; 4]>([
            ("convolution bf16 forward+backward", |d| {
                conv(d, DType::BF16)
            }),
            ("M2T step f32 (all training kernels)", |d| {
                step(d, DType::F32)
            }),
            ("M2T step bf16 (all training kernels, casts)", |d| {
                step(d, DType::BF16)
            }),
            ("augmentation (view kernels)", augmentation),
        ]);
    } else {
        checks.push(("M2T step f32, run twice: identical", cpu_step));
    }
    checks
        .into_iter()
        .map(|(name, check)| {
            // A library that panics inside a check fails that check alone.
            let outcome =
                std::panic::catch_unwind(|| check(device)).unwrap_or_else(|p| Err(panic_text(&p)));
            (name, outcome)
        })
        .collect()
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Uniform values in `[-scale, scale)`, as a CPU tensor of `dtype`'s values.
fn uniform(shape: &[usize], seed: u64, scale: f64, dtype: DType) -> Result<Tensor, String> {
    let mut rng = Rng::new(seed);
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.range(-scale, scale) as f32).collect();
    // Rounded to the dtype and back, so both sides see the same numbers.
    Tensor::from_vec(v, shape.to_vec())
        .and_then(|t| t.to_dtype(dtype))
        .and_then(|t| t.to_dtype(DType::F32))
        .map_err(err)
}

/// `|got − want| ≤ rtol·max(1, max|want|)` elementwise, NaN never passing;
/// the worst error as a fraction of the allowed one.
fn compare(what: &str, got: &Tensor, want: &[f64], rtol: f64) -> Result<f64, String> {
    let got = got.to_f64_vec().map_err(err)?;
    if got.len() != want.len() {
        return Err(format!("{what}: {} values, want {}", got.len(), want.len()));
    }
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let mut worst = 0.0f64;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let e = (g - w).abs();
        if e.is_nan() || e > rtol * scale {
            return Err(format!(
                "{what}: element {i} is {g}, want {w} (tolerance {:.1e})",
                rtol * scale
            ));
        }
        worst = worst.max(e / (rtol * scale));
    }
    Ok(worst)
}

fn worst_of(errors: &[f64]) -> String {
    format!(
        "worst error {:.2} of the tolerance",
        errors.iter().fold(0.0f64, |a, &b| a.max(b))
    )
}

/// Forward output, input gradient and weight gradient of one convolution on
/// `device`, for the output gradient `dy_of(y's shape)`.
fn conv_on(
    device: Device,
    dtype: DType,
    (x, w, p): (&Tensor, &Tensor, Conv2dParams),
    dy_of: &dyn Fn(&[usize]) -> Result<Tensor, String>,
) -> Result<[Tensor; 3], String> {
    let on = |t: &Tensor| t.to_dtype(dtype).and_then(|t| t.to_device(device));
    let mut tape = Tape::new();
    let xv = tape.param(on(x).map_err(err)?);
    let wv = tape.param(on(w).map_err(err)?);
    let y = tape.conv2d(&xv, &wv, p).map_err(err)?;
    let out = y.value().clone();
    let dy = on(&dy_of(y.shape().dims())?).map_err(err)?;
    let g = tape.backward_with(&y, dy).map_err(err)?;
    let grad = |v| g.get(v).cloned().ok_or("a gradient is missing");
    Ok([out, grad(&xv)?, grad(&wv)?])
}

/// A 3×3 convolution (stride 2, padding 1, odd sizes) against f64 loops on
/// the CPU, or against the CPU backend on a GPU.
fn conv(device: Device, dtype: DType) -> Outcome {
    let p = Conv2dParams {
        stride: 2,
        padding: 1,
    };
    let x = uniform(&[2, 9, 7, 5], 1, 1.0, dtype)?;
    let w = uniform(&[6, 3, 3, 5], 2, 0.5, dtype)?;
    let dy_of = |shape: &[usize]| uniform(shape, 3, 1.0, dtype);
    let got = conv_on(device, dtype, (&x, &w, p), &dy_of)?;
    let want: [Vec<f64>; 3] = if device.is_gpu() {
        let cpu = conv_on(Device::Cpu, DType::F32, (&x, &w, p), &dy_of)?;
        [0, 1, 2].map(|i| cpu[i].to_f64_vec().unwrap_or_default())
    } else {
        let dy = dy_of(got[0].dims())?;
        naive_conv(&x, &w, &dy, p).map_err(err)?
    };
    // bf16 stores the results, in units of its 8-bit mantissa.
    let rtol = if dtype == DType::F32 { 1e-4 } else { 1.6e-2 };
    let mut errors = Vec::new();
    for (i, what) in ["y", "dx", "dw"].iter().enumerate() {
        errors.push(compare(what, &got[i], &want[i], rtol)?);
    }
    Ok(worst_of(&errors))
}

/// y, dx and dw of an NHWC × KRSC convolution in f64, by the definition.
fn naive_conv(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    p: Conv2dParams,
) -> engine::Result<[Vec<f64>; 3]> {
    let (xv, wv, dyv) = (x.to_f64_vec()?, w.to_f64_vec()?, dy.to_f64_vec()?);
    let [n, h, wd, c] = [x.dims()[0], x.dims()[1], x.dims()[2], x.dims()[3]];
    let [k, r, s, _] = [w.dims()[0], w.dims()[1], w.dims()[2], w.dims()[3]];
    let [_, oh, ow, _] = [dy.dims()[0], dy.dims()[1], dy.dims()[2], dy.dims()[3]];
    let (mut y, mut dx, mut dw) = (
        vec![0.0; n * oh * ow * k],
        vec![0.0; xv.len()],
        vec![0.0; wv.len()],
    );
    for (b, i, j, o) in indices4(n, oh, ow, k) {
        let out = ((b * oh + i) * ow + j) * k + o;
        for (u, v) in (0..r).flat_map(|u| (0..s).map(move |v| (u, v))) {
            let (yi, xj) = (
                (i * p.stride + u) as isize - p.padding as isize,
                (j * p.stride + v) as isize - p.padding as isize,
            );
            if yi < 0 || xj < 0 || yi >= h as isize || xj >= wd as isize {
                continue;
            }
            for ch in 0..c {
                let xi = ((b * h + yi as usize) * wd + xj as usize) * c + ch;
                let wi = ((o * r + u) * s + v) * c + ch;
                y[out] += xv[xi] * wv[wi];
                dx[xi] += dyv[out] * wv[wi];
                dw[wi] += dyv[out] * xv[xi];
            }
        }
    }
    Ok([y, dx, dw])
}

/// Every index of an `a × b × c × d` array, in row-major order.
fn indices4(
    a: usize,
    b: usize,
    c: usize,
    d: usize,
) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    (0..a).flat_map(move |i| {
        (0..b).flat_map(move |j| (0..c).flat_map(move |k| (0..d).map(move |l| (i, j, k, l))))
    })
}

/// `x·wᵀ + b` forward and backward against f64 loops (the CPU) or the CPU
/// backend (a GPU, where cuBLAS computes it).
fn product(device: Device) -> Outcome {
    let (m, kd, n) = (5, 37, 3);
    let x = uniform(&[m, kd], 4, 1.0, DType::F32)?;
    let w = uniform(&[n, kd], 5, 0.5, DType::F32)?;
    let dy = uniform(&[m, n], 6, 1.0, DType::F32)?;
    let run = |dev: Device| -> Result<[Tensor; 3], String> {
        let to = |t: &Tensor| t.to_device(dev).map_err(err);
        let mut tape = Tape::new();
        let (xv, wv) = (tape.param(to(&x)?), tape.param(to(&w)?));
        let y = tape.linear(&xv, &wv, None).map_err(err)?;
        let out = y.value().clone();
        let g = tape.backward_with(&y, to(&dy)?).map_err(err)?;
        let grad = |v| g.get(v).cloned().ok_or("a gradient is missing");
        Ok([out, grad(&xv)?, grad(&wv)?])
    };
    let got = run(device)?;
    let want: [Vec<f64>; 3] = if device.is_gpu() {
        let cpu = run(Device::Cpu)?;
        [0, 1, 2].map(|i| cpu[i].to_f64_vec().unwrap_or_default())
    } else {
        let (xv, wv, dyv) = (
            x.to_f64_vec().map_err(err)?,
            w.to_f64_vec().map_err(err)?,
            dy.to_f64_vec().map_err(err)?,
        );
        let (mut y, mut dx, mut dw) = (vec![0.0; m * n], vec![0.0; m * kd], vec![0.0; n * kd]);
        for (i, j, l, _) in indices4(m, n, kd, 1) {
            y[i * n + j] += xv[i * kd + l] * wv[j * kd + l];
            dx[i * kd + l] += dyv[i * n + j] * wv[j * kd + l];
            dw[j * kd + l] += dyv[i * n + j] * xv[i * kd + l];
        }
        [y, dx, dw]
    };
    let mut errors = Vec::new();
    for (i, what) in ["y", "dx", "dw"].iter().enumerate() {
        errors.push(compare(what, &got[i], &want[i], 1e-4)?);
    }
    Ok(worst_of(&errors))
}

/// A width-4 ResNet-18 M2T model with `hidden`/`out`-wide heads.
fn tiny_model(precision: DType, (hidden, out): (usize, usize)) -> Result<M2t, String> {
    let backbone = ResNetConfig {
        arch: Arch::ResNet18,
        stem: Stem::Small,
        in_channels: 3,
        width: 4,
    };
    M2t::new(
        M2tConfig {
            proj_hidden: hidden,
            proj_out: out,
            pred_hidden: hidden,
            precision,
            ..M2tConfig::new(backbone)
        },
        42,
    )
    .map_err(err)
}

/// `steps` M2T steps, each with its SGD update, on `model`: the losses and
/// the student's weights after them.
fn train(mut model: M2t, steps: usize) -> Result<(Vec<f64>, Tensor), String> {
    let mut sgd = Sgd::new(model.student(), 0.9, 1e-4).map_err(err)?;
    let mut losses = Vec::new();
    for k in 0..steps {
        let v1 = uniform(&[8, 9, 7, 3], 10 + k as u64, 1.0, DType::F32)?;
        let v2 = uniform(&[8, 9, 7, 3], 20 + k as u64, 1.0, DType::F32)?;
        let numbers = model.schedule(k, 4, 0.05).map_err(err)?;
        losses.push(model.step(&v1, &v2, &numbers).map_err(err)?.loss);
        sgd.step(model.student_mut(), numbers.lr).map_err(err)?;
    }
    Ok((losses, model.student().values().clone()))
}

/// M2T steps of `precision` on `device` against the f32 CPU steps. In f32,
/// two steps (the second on the device's own update): the losses and the
/// updated student weights. In bf16 one step's loss: a width-4 network's
/// gradients are dominated by cancellation, so bf16 rounding moves them far
/// more than in a real network (as in the parity tests), and 64-wide heads
/// keep the heads' batch norm well conditioned.
fn step(device: Device, precision: DType) -> Outcome {
    let (heads, steps, rtol) = if precision == DType::F32 {
        ((16, 8), 2, 1e-3)
    } else {
        ((64, 32), 1, 1e-2)
    };
    let (want_loss, want_w) = train(tiny_model(DType::F32, heads)?, steps)?;
    let model = tiny_model(precision, heads)?
        .to_device(device)
        .map_err(err)?;
    let (got_loss, got_w) = train(model, steps)?;
    let loss = compare(
        "loss",
        &Tensor::from_vec(got_loss, [steps]).map_err(err)?,
        &want_loss,
        rtol,
    )?;
    if precision != DType::F32 {
        return Ok(worst_of(&[loss]));
    }
    let weights = compare(
        "student weights",
        &got_w,
        &want_w.to_f64_vec().map_err(err)?,
        rtol,
    )?;
    Ok(worst_of(&[loss, weights]))
}

/// The CPU's M2T step is a pure function of its inputs: two runs agree bit
/// for bit, with finite losses.
fn cpu_step(_: Device) -> Outcome {
    let (a, wa) = train(tiny_model(DType::F32, (16, 8))?, 2)?;
    let (b, wb) = train(tiny_model(DType::F32, (16, 8))?, 2)?;
    let (wa, wb) = (wa.to_f64_vec().map_err(err)?, wb.to_f64_vec().map_err(err)?);
    if !a.iter().all(|l| l.is_finite()) {
        return Err(format!("losses {a:?} are not finite"));
    }
    if a != b || wa.iter().zip(&wb).any(|(x, y)| x.to_bits() != y.to_bits()) {
        return Err(format!("two runs differ: losses {a:?} and {b:?}"));
    }
    Ok(format!("losses {:.4} {:.4}", a[0], a[1]))
}

/// Both views of two images on the GPU against the CPU pipeline for the same
/// drawn parameters.
fn augmentation(device: Device) -> Outcome {
    let cfg = AugmentConfig::new(8, 3).map_err(err)?;
    let images: Vec<Image> = (0..2)
        .map(|s| Image {
            data: (0..11 * 13 * 3)
                .map(|i| ((i * 37 + s * 101) % 256) as u8)
                .collect(),
            height: 11,
            width: 13,
            channels: 3,
        })
        .collect();
    let refs: Vec<&Image> = images.iter().collect();
    let aug = GpuAugmenter::new(device, cfg.clone(), DType::F32).map_err(err)?;
    let batch = aug.upload(&refs).map_err(err)?;
    let mut rng = Rng::new(7);
    let mut errors = Vec::new();
    for which in [View::One, View::Two] {
        let params: Vec<ViewParams> = images
            .iter()
            .map(|im| ViewParams::draw((im.height, im.width), which, &cfg, &mut rng))
            .collect();
        let got = aug.views(&batch, &params).map_err(err)?;
        let mut want = vec![0f32; images.len() * cfg.sample_len()];
        for ((im, p), out) in images
            .iter()
            .zip(&params)
            .zip(want.chunks_exact_mut(cfg.sample_len()))
        {
            apply_view(im, p, &cfg, out);
        }
        let want: Vec<f64> = want.iter().map(|&v| v as f64).collect();
        errors.push(compare("views", &got, &want, 1e-4)?);
    }
    Ok(worst_of(&errors))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn the_cpu_checks_pass_and_can_fail() {
        for (name, outcome) in run(Device::Cpu) {
            assert!(outcome.is_ok(), "{name}: {outcome:?}");
        }
        // The f64 reference is a real one: a wrong weight is caught.
        let p = Conv2dParams {
            stride: 2,
            padding: 1,
        };
        let x = uniform(&[1, 5, 5, 2], 1, 1.0, DType::F32).unwrap();
        let w = uniform(&[3, 3, 3, 2], 2, 0.5, DType::F32).unwrap();
        let dy = uniform(&[1, 3, 3, 3], 3, 1.0, DType::F32).unwrap();
        let [y, _, _] = conv_on(Device::Cpu, DType::F32, (&x, &w, p), &|_| Ok(dy.clone())).unwrap();
        let [want, _, _] = naive_conv(&x, &w, &dy, p).unwrap();
        assert!(compare("y", &y, &want, 1e-5).is_ok());
        let mut wrong = want.clone();
        wrong[4] += 0.01;
        assert!(compare("y", &y, &wrong, 1e-5).is_err());
    }

    #[test]
    fn the_emulator_checks_pass_and_launch_every_kernel_family() {
        kernels::take_launch_log();
        let outcomes = run(Device::Emulator);
        for (name, outcome) in &outcomes {
            assert!(outcome.is_ok(), "{name}: {outcome:?}");
        }
        let launched: BTreeSet<&str> = kernels::take_launch_log()
            .into_iter()
            .filter_map(|k| kernels::registry::find(k).map(|(f, _)| f.name))
            .collect();
        let families: BTreeSet<&str> = kernels::registry::FAMILIES
            .iter()
            .map(|f| f.name)
            .filter(|f| *f != "selftest")
            .collect();
        assert_eq!(launched, families);
    }
}
