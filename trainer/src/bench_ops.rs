//! `trainer bench --ops`: the ops of one network, one at a time — every
//! distinct convolution (forward, backward data, backward filter: the cuDNN
//! algorithm and TFLOP/s) and the fused batch-norm kernels (GB/s against
//! the card's peak bandwidth). Times are the profiler's (CUDA events on a
//! GPU), medians over repetitions after a warm-up that includes cuDNN's
//! algorithm search.

use crate::roofline::{Card, ConvShape, Layer, Net, backbone_layers};
use crate::{Error, Result};
use engine::ops::{BnNorm, Conv2dParams, cudnn_algorithms};
use engine::profile::{self, Report};
use engine::{DType, Device, Rng, Tape, Tensor};
use nets::resnet::Arch;
use serde_json::json;
use std::collections::BTreeMap;

/// Every convolution of `net`'s backbone (one view) by distinct shape, with
/// how many layers have it.
pub fn conv_shapes(net: &Net) -> BTreeMap<ConvShape, usize> {
    let mut shapes = BTreeMap::new();
    for layer in backbone_layers(net) {
        if let Layer::Conv { shape, .. } = layer {
            *shapes.entry(shape).or_insert(0) += 1;
        }
    }
    shapes
}

/// Milliseconds per repetition of each kernel family and library call.
fn per_call(report: &Report, reps: usize) -> BTreeMap<String, f64> {
    report
        .kernels
        .iter()
        .map(|r| (r.name.clone(), r.ms / reps as f64))
        .collect()
}

fn random(shape: &[usize], dtype: DType, device: Device, rng: &mut Rng) -> Result<Tensor> {
    let n = shape.iter().product();
    Ok(Tensor::from_vec(rng.normal_vec(n, 1.0), shape.to_vec())?
        .to_dtype(dtype)?
        .to_device(device)?)
}

/// Runs `f` once to warm up, then `reps` times under the profiler; the
/// per-repetition milliseconds by kernel family.
fn timed(
    device: Device,
    reps: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<BTreeMap<String, f64>> {
    f()?;
    engine::synchronize(device)?;
    profile::start(device)?;
    for _ in 0..reps {
        f()?;
    }
    Ok(per_call(&profile::finish()?, reps))
}

/// `trainer bench --ops`: times the ops on `device`, then, given a `card`,
/// prints the step's roofline at its peaks with the measured times beside
/// the bounds (a CUDA GPU's only: the emulator's mean nothing).
pub fn run(
    device: Device,
    dtype: DType,
    net: &Net,
    card: Option<&Card>,
    (reps, json_out): (usize, bool),
) -> Result<()> {
    if device == Device::Cpu {
        return Err(Error::Usage(
            "--ops times the GPU path's kernels: use --device cuda (or emulator), or --card NAME for the bounds alone; for the CPU, cargo bench -p benches --bench conv_cpu".into(),
        ));
    }
    let (arch, stem, bs, res, width) = (net.arch, net.stem, net.bs, net.res, net.width);
    let mut measured = BTreeMap::new();
    let bandwidth = match device {
        Device::Cuda(i) => kernels::probe::list_devices()
            .ok()
            .and_then(|d| d.into_iter().find(|d| d.ordinal == i))
            .map_or(0.0, |d| d.memory_bandwidth),
        _ => 0.0,
    };
    let mut rng = Rng::new(5);
    let conv_labels = [
        "cudnn conv forward",
        "cudnn conv backward data",
        "cudnn conv backward filter",
    ];
    if !json_out {
        println!(
            "convolutions of {arch} ({stem} stem), batch {bs}, {res} px, {} on {device}",
            crate::pretrain::precision_name(dtype)
        );
        println!(
            "{:<44} {:>5} {:>26} {:>26} {:>26}",
            "input * weight / stride, padding",
            "count",
            "forward ms  TFLOP/s",
            "backward data",
            "backward filter"
        );
    }
    for (shape, count) in conv_shapes(net) {
        let x = random(&shape.input, dtype, device, &mut rng)?;
        let w = random(&shape.weight, dtype, device, &mut rng)?;
        let dy = random(&shape.output(), dtype, device, &mut rng)?;
        let p = Conv2dParams {
            stride: shape.stride,
            padding: shape.padding,
        };
        let ms = timed(device, reps, || {
            let mut tape = Tape::new();
            let (xv, wv) = (tape.param(x.clone()), tape.param(w.clone()));
            let y = tape.conv2d(&xv, &wv, p)?;
            tape.backward_with(&y, dy.clone())?;
            Ok(())
        })?;
        let algos =
            cudnn_algorithms(device, shape.input, shape.weight, p, dtype)?.unwrap_or_default();
        let cells: Vec<(f64, f64, String)> = conv_labels
            .iter()
            .zip(&algos)
            .map(|(label, algo)| {
                let t = ms.get(*label).copied().unwrap_or(f64::NAN);
                (
                    t,
                    shape.flops() / (t / 1e3) / 1e12,
                    algo.clone().unwrap_or_default(),
                )
            })
            .collect();
        let name = format!(
            "{:?}*{:?}/{},{}",
            shape.input, shape.weight, shape.stride, shape.padding
        );
        for (dir, (t, _, _)) in ["fwd", "bwd data", "bwd filter"].iter().zip(&cells) {
            if t.is_finite() {
                measured.insert(format!("conv {dir} {name}"), *t);
            }
        }
        if json_out {
            let dirs: Vec<_> = cells
                .iter()
                .map(|(t, tf, a)| json!({"ms": t, "tflops": tf, "algo": a}))
                .collect();
            println!(
                "{}",
                json!({"op": "conv", "shape": name, "count": count, "forward": dirs[0], "backward_data": dirs[1], "backward_filter": dirs[2]})
            );
        } else {
            // The emulator runs convolutions on the host: no cuDNN times.
            let cell = |(t, tf, _): &(f64, f64, String)| {
                if t.is_nan() {
                    format!("{:>10} {:>8}", "-", "-")
                } else {
                    format!("{t:>10.3} {tf:>8.1}")
                }
            };
            println!(
                "{name:<44} {count:>5} {:>26} {:>26} {:>26}",
                cell(&cells[0]),
                cell(&cells[1]),
                cell(&cells[2])
            );
            for (dir, (_, _, algo)) in ["fwd", "bwd data", "bwd filter"].iter().zip(&cells) {
                if !algo.is_empty() {
                    println!("{:>50} {dir}: {algo}", "");
                }
            }
        }
    }
    batch_norm_kernels(
        device,
        dtype,
        (arch, bs, res, width),
        (reps, bandwidth, json_out),
        &mut rng,
        &mut measured,
    )?;
    if let Some(card) = card {
        if !matches!(device, Device::Cuda(_)) {
            measured.clear();
        }
        crate::roofline::print_table(net, dtype, card, &measured, json_out);
    }
    Ok(())
}

/// The fused BN+ReLU and BN+add+ReLU at each stage's output shape, in GB/s
/// under a simple traffic model: forward reads x twice (statistics, then
/// apply) and writes y; backward reads x and dy twice (reduction, then dx)
/// and y once (the ReLU mask) and writes dx; the residual adds a read
/// forward and a write backward.
fn batch_norm_kernels(
    device: Device,
    dtype: DType,
    (arch, bs, res, width): (Arch, usize, usize, usize),
    (reps, bandwidth, json_out): (usize, f64, bool),
    rng: &mut Rng,
    measured: &mut BTreeMap<String, f64>,
) -> Result<()> {
    if !json_out {
        let peak = if bandwidth > 0.0 {
            format!("; peak {:.0} GB/s", bandwidth / 1e9)
        } else {
            String::new()
        };
        println!("fused batch norm (training mode){peak}");
        println!(
            "{:<36} {:>10} {:>9} {:>7} {:>10} {:>9} {:>7}",
            "op, shape", "fwd ms", "GB/s", "of peak", "bwd ms", "GB/s", "of peak"
        );
    }
    let size = dtype.size_in_bytes() as f64;
    let base = if res >= 128 { res / 4 } else { res };
    for stage in 0..4 {
        let side = (base >> stage).max(1);
        let c = (width << stage) * arch.expansion();
        let shape = [bs, side, side, c];
        let numel = (bs * side * side * c) as f64;
        let x = random(&shape, dtype, device, rng)?;
        let skip = random(&shape, dtype, device, rng)?;
        let dy = random(&shape, dtype, device, rng)?;
        let gamma = Tensor::full([c], 1.0, DType::F32, device)?;
        let beta = Tensor::full([c], 0.0, DType::F32, device)?;
        for residual in [false, true] {
            let forward = |tape: &mut Tape| -> Result<engine::Var> {
                let (xv, gv, bv) = (
                    tape.param(x.clone()),
                    tape.param(gamma.clone()),
                    tape.param(beta.clone()),
                );
                let y = if residual {
                    let sv = tape.param(skip.clone());
                    tape.batch_norm_add_relu(&xv, &sv, &gv, &bv, BnNorm::Batch, 1e-5)?
                        .0
                } else {
                    tape.batch_norm_relu(&xv, &gv, &bv, BnNorm::Batch, 1e-5)?.0
                };
                Ok(y)
            };
            let fwd = timed(device, reps, || forward(&mut Tape::no_grad()).map(drop))?;
            // Backward alone: each repetition's forward runs before the profiler starts.
            let mut bwd_ms = 0.0;
            for _ in 0..reps.max(1) {
                let mut tape = Tape::new();
                let y = forward(&mut tape)?;
                engine::synchronize(device)?;
                profile::start(device)?;
                tape.backward_with(&y, dy.clone())?;
                bwd_ms += per_call(&profile::finish()?, 1).values().sum::<f64>();
            }
            let fwd_ms: f64 = fwd.values().sum();
            let bwd_ms = bwd_ms / reps.max(1) as f64;
            let extra = if residual { 1.0 } else { 0.0 };
            let (fwd_bytes, bwd_bytes) =
                ((3.0 + extra) * numel * size, (6.0 + extra) * numel * size);
            let gbs = |bytes: f64, ms: f64| bytes / (ms / 1e3) / 1e9;
            let share = |bytes: f64, ms: f64| {
                if bandwidth > 0.0 {
                    format!("{:.0}%", 100.0 * bytes / (ms / 1e3) / bandwidth)
                } else {
                    "-".into()
                }
            };
            let op = if residual { "bn+add+relu" } else { "bn+relu" };
            measured.insert(format!("{op} fwd {shape:?}"), fwd_ms);
            measured.insert(format!("{op} bwd {shape:?}"), bwd_ms);
            if json_out {
                println!(
                    "{}",
                    json!({"op": op, "shape": shape, "forward_ms": fwd_ms, "forward_gbs": gbs(fwd_bytes, fwd_ms), "backward_ms": bwd_ms, "backward_gbs": gbs(bwd_bytes, bwd_ms), "peak_gbs": bandwidth / 1e9})
                );
            } else {
                println!(
                    "{:<36} {fwd_ms:>10.3} {:>9.0} {:>7} {bwd_ms:>10.3} {:>9.0} {:>7}",
                    format!("{op} {shape:?}"),
                    gbs(fwd_bytes, fwd_ms),
                    share(fwd_bytes, fwd_ms),
                    gbs(bwd_bytes, bwd_ms),
                    share(bwd_bytes, bwd_ms)
                );
            }
        }
    }
    Ok(())
}
