//! `trainer bench --ops`: the ops of one network, one at a time — every
//! distinct convolution (forward, backward data, backward filter: the cuDNN
//! algorithm and TFLOP/s) and the fused batch-norm kernels (GB/s against
//! the card's peak bandwidth). Times are the profiler's (CUDA events on a
//! GPU), medians over repetitions after a warm-up that includes cuDNN's
//! algorithm search.

use crate::{Error, Result};
use engine::ops::{BnNorm, Conv2dParams, cudnn_algorithms};
use engine::profile::{self, Report};
use engine::{DType, Device, Rng, Tape, Tensor};
use nets::resnet::{Arch, Stem};
use serde_json::json;
use std::collections::BTreeMap;

/// One distinct convolution of a network: input NHWC, weight KRSC, stride,
/// padding, and how many layers have it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConvShape {
    /// `[n, h, w, c]`.
    pub input: [usize; 4],
    /// `[k, r, s, c]`.
    pub weight: [usize; 4],
    /// Stride.
    pub stride: usize,
    /// Zero padding.
    pub padding: usize,
}

impl ConvShape {
    fn output(&self) -> [usize; 4] {
        let [n, h, w, _] = self.input;
        let [k, r, s, _] = self.weight;
        let o = |x: usize, f: usize| (x + 2 * self.padding - f) / self.stride + 1;
        [n, o(h, r), o(w, s), k]
    }

    /// Multiply-adds × 2 of one direction.
    fn flops(&self) -> f64 {
        let [n, oh, ow, k] = self.output();
        let [_, r, s, c] = self.weight;
        2.0 * (n * oh * ow * k * r * s * c) as f64
    }
}

/// Every convolution of `arch` at batch `n`, `res` px, with `stem`, by
/// distinct shape, with its count (the ResNet layout of nets::resnet).
pub fn conv_shapes(
    arch: Arch,
    stem: Stem,
    n: usize,
    res: usize,
    width: usize,
) -> BTreeMap<ConvShape, usize> {
    let mut shapes = BTreeMap::new();
    let mut add = |input: [usize; 4], k: usize, f: usize, stride: usize, padding: usize| {
        *shapes
            .entry(ConvShape {
                input,
                weight: [k, f, f, input[3]],
                stride,
                padding,
            })
            .or_insert(0) += 1;
        let o = |x: usize| (x + 2 * padding - f) / stride + 1;
        [input[0], o(input[1]), o(input[2]), k]
    };
    let mut x = match stem {
        Stem::ImageNet => {
            let y = add([n, res, res, 3], width, 7, 2, 3);
            [n, y[1].div_ceil(2), y[2].div_ceil(2), width] // 3×3/2 max pool, padding 1
        }
        Stem::Small => add([n, res, res, 3], width, 3, 1, 1),
    };
    for (stage, &blocks) in arch.blocks().iter().enumerate() {
        let planes = width << stage;
        for b in 0..blocks {
            let stride = if stage > 0 && b == 0 { 2 } else { 1 };
            let out = planes * arch.expansion();
            let h = if arch.bottleneck() {
                let h = add(x, planes, 1, 1, 0);
                let h = add(h, planes, 3, stride, 1);
                add(h, out, 1, 1, 0)
            } else {
                let h = add(x, planes, 3, stride, 1);
                add(h, planes, 3, 1, 1)
            };
            if stride != 1 || x[3] != out {
                add(x, out, 1, stride, 0);
            }
            x = h;
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

/// `trainer bench --ops`.
pub fn run(
    device: Device,
    dtype: DType,
    (arch, stem, bs, res, width): (Arch, Stem, usize, usize, usize),
    reps: usize,
    json_out: bool,
) -> Result<()> {
    if device == Device::Cpu {
        return Err(Error::Usage(
            "--ops times the GPU path's kernels: use --device cuda (or emulator); for the CPU, cargo bench -p benches --bench conv_cpu".into(),
        ));
    }
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
    for (shape, count) in conv_shapes(arch, stem, bs, res, width) {
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
        reps,
        bandwidth,
        json_out,
        &mut rng,
    )
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
    reps: usize,
    bandwidth: f64,
    json_out: bool,
    rng: &mut Rng,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet50_has_its_distinct_convolutions() {
        let shapes = conv_shapes(Arch::ResNet50, Stem::ImageNet, 128, 224, 64);
        // 53 convolutions: the stem, 16 blocks of three, and 4 downsamples.
        assert_eq!(shapes.values().sum::<usize>(), 53);
        let stem = ConvShape {
            input: [128, 224, 224, 3],
            weight: [64, 7, 7, 3],
            stride: 2,
            padding: 3,
        };
        assert_eq!(shapes.get(&stem), Some(&1));
        assert_eq!(stem.output(), [128, 112, 112, 64]);
        // The last stage's 3×3 convolutions at 7×7 (two blocks after the first).
        let late = ConvShape {
            input: [128, 7, 7, 512],
            weight: [512, 3, 3, 512],
            stride: 1,
            padding: 1,
        };
        assert_eq!(shapes.get(&late), Some(&2));
        assert_eq!(
            late.flops(),
            2.0 * (128usize * 7 * 7 * 512 * 9 * 512) as f64
        );
    }

    #[test]
    fn resnet18_counts_its_convolutions() {
        // Small stem, then 8 blocks of two and 3 downsamples.
        assert_eq!(
            conv_shapes(Arch::ResNet18, Stem::Small, 2, 32, 64)
                .values()
                .sum::<usize>(),
            20
        );
    }
}
