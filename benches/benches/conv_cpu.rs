//! CPU convolution throughput for every distinct conv shape of ResNet-18 at
//! batch 32, through the engine's public API (`Tape::conv2d`).
//!
//! For each shape it times the forward on a [`Tape::no_grad`] tape, and the
//! backward (data and filter gradients) as the `Tape::backward_with` call of a
//! recording tape on which `x` and `w` are both parameters. Each figure is the
//! median of a few repetitions after one warm-up.
//!
//! FLOPs: forward `2·N·OH·OW·K·R·S·C`; backward twice that (dx and dw).
//! A 1×1 stride-1 convolution is exactly one GEMM (no im2col), so the `gemm`
//! rows time plain GEMMs through the same path: `gemm` is 8192 rows
//! (32·16·16) × 256 → 256, the baseline that `fwd/gemm` divides by, and
//! `gemm.32k` is 32768 rows (32·32·32) × 256 → 256, whose 32 MiB output
//! shows what large fresh allocations cost. The benchmark uses mimalloc, the
//! trainer's allocator, so freed buffers are reused as they are in training.
//!
//! `fwd/same` divides the time of the GEMM a conv amounts to
//! (`[N·OH·OW, R·S·C] · [R·S·C, K]`, run as a 1×1 conv so it is chunked alike)
//! by the conv's forward time. In f32 on a CPU with AVX2 or AVX-512 the
//! other convolutions run as direct kernels (no im2col), so above 1 they
//! beat a plain GEMM of their size.
//!
//! ```text
//! cargo bench -p benches --bench conv_cpu            # CIFAR stem, 32 px (default)
//! cargo bench -p benches --bench conv_cpu -- 224     # ImageNet stem, 224 px
//! CONV_BENCH_RES=224 CONV_BENCH_REPS=3 cargo bench -p benches --bench conv_cpu
//! ```

use engine::ops::Conv2dParams;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use engine::{Result, Tape, Tensor};
use std::time::{Duration, Instant};

const BATCH: usize = 32;

/// One convolution shape and how many times it occurs in the network.
struct ConvShape {
    name: &'static str,
    /// Input height = width.
    hw: usize,
    c: usize,
    k: usize,
    /// Kernel height = width.
    rs: usize,
    stride: usize,
    pad: usize,
    count: usize,
}

impl ConvShape {
    const fn new(
        name: &'static str,
        hw: usize,
        c: usize,
        k: usize,
        rs: usize,
        stride: usize,
        count: usize,
    ) -> Self {
        ConvShape {
            name,
            hw,
            c,
            k,
            rs,
            stride,
            pad: rs / 2,
            count,
        }
    }

    fn out_hw(&self) -> usize {
        (self.hw + 2 * self.pad - self.rs) / self.stride + 1
    }

    fn fwd_flops(&self) -> f64 {
        let o = self.out_hw();
        2.0 * (BATCH * o * o * self.k * self.rs * self.rs * self.c) as f64
    }

    fn params(&self) -> Conv2dParams {
        Conv2dParams {
            stride: self.stride,
            padding: self.pad,
        }
    }

    fn describe(&self) -> String {
        format!(
            "{BATCH},{h},{h},{c} → {k}, {r}×{r}, s{s}, p{p}",
            h = self.hw,
            c = self.c,
            k = self.k,
            r = self.rs,
            s = self.stride,
            p = self.pad
        )
    }
}

/// The conv shapes of one ResNet-18 stage after the first: the strided 3×3
/// that opens it, the three 3×3s at the new resolution, and the 1×1/2 downsample.
fn stage(name: [&'static str; 3], hw_in: usize, c_in: usize) -> [ConvShape; 3] {
    let (hw, c) = (hw_in / 2, c_in * 2);
    [
        ConvShape::new(name[0], hw_in, c_in, c, 3, 2, 1),
        ConvShape::new(name[1], hw, c, c, 3, 1, 3),
        ConvShape::new(name[2], hw_in, c_in, c, 1, 2, 1),
    ]
}

/// ResNet-18's distinct conv shapes. `res` 32: the CIFAR variant (3×3/1
/// stem, no max pool); 224: the ImageNet stem (7×7/2, then a 3×3/2 max pool).
fn resnet18_shapes(res: usize) -> Vec<ConvShape> {
    let (stem, hw1) = if res == 224 {
        (ConvShape::new("stem", 224, 3, 64, 7, 2, 1), 56)
    } else {
        (ConvShape::new("stem", res, 3, 64, 3, 1, 1), res)
    };
    let mut v = vec![stem, ConvShape::new("layer1", hw1, 64, 64, 3, 1, 4)];
    v.extend(stage(["layer2.0.conv1", "layer2", "layer2.ds"], hw1, 64));
    v.extend(stage(
        ["layer3.0.conv1", "layer3", "layer3.ds"],
        hw1 / 2,
        128,
    ));
    v.extend(stage(
        ["layer4.0.conv1", "layer4", "layer4.ds"],
        hw1 / 4,
        256,
    ));
    v
}

/// Deterministic values in [-1, 1) (xorshift64*).
fn pseudo_random(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let bits = s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40; // 24 bits
            bits as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Median time and minor page faults of one op.
#[derive(Clone, Copy, Default)]
struct Sample {
    time: Duration,
    /// Minor page faults during the call, where `/proc/self/stat` is readable.
    faults: Option<u64>,
}

struct Timing {
    fwd: Sample,
    bwd: Sample,
    /// Forward of the same-size GEMM (a 1×1 conv over the im2col matrix's shape).
    same_gemm: Sample,
}

/// The process's minor page-fault count (Linux; `None` elsewhere).
fn minor_faults() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name: state is 0, minflt is 7.
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(7)?
        .parse()
        .ok()
}

/// Runs `f`, timing it and counting the page faults it takes; its result is
/// returned so that it is dropped outside the timed region.
fn timed<R>(f: impl FnOnce() -> Result<R>) -> Result<(Sample, R)> {
    let faults = minor_faults();
    let t = Instant::now();
    let r = f()?;
    let time = t.elapsed();
    let faults = faults.zip(minor_faults()).map(|(a, b)| b - a);
    Ok((Sample { time, faults }, r))
}

/// Median forward (no-grad tape) and backward (`backward_with`) times of one shape.
fn time_conv(shape: &ConvShape, reps: usize) -> Result<Timing> {
    let (hw, c, k, rs) = (shape.hw, shape.c, shape.k, shape.rs);
    let o = shape.out_hw();
    let x = Tensor::from_vec(pseudo_random(BATCH * hw * hw * c, 1), [BATCH, hw, hw, c])?;
    // Scale like a Kaiming init so activations stay O(1).
    let scale = (3.0 / (rs * rs * c) as f32).sqrt();
    let w_data = pseudo_random(k * rs * rs * c, 2)
        .into_iter()
        .map(|v| v * scale)
        .collect();
    let w = Tensor::from_vec(w_data, [k, rs, rs, c])?;
    let dy = Tensor::from_vec(pseudo_random(BATCH * o * o * k, 3), [BATCH, o, o, k])?;
    let p = shape.params();

    // The GEMM this conv lowers to, `[N·OH·OW, R·S·C] × [R·S·C, K]`, as a 1×1
    // stride-1 conv over `[N, OH, OW, R·S·C]` (so it is chunked the same way).
    let patch = rs * rs * c;
    let gx = Tensor::from_vec(
        pseudo_random(BATCH * o * o * patch, 4),
        [BATCH, o, o, patch],
    )?;
    let gw = w.reshape([k, 1, 1, patch])?;
    let pointwise = Conv2dParams {
        stride: 1,
        padding: 0,
    };

    // Each measurement runs back to back (warm-up, then `reps`), so the
    // allocator is in the steady state of that op rather than of whatever ran
    // before it (the engine allocates its outputs and im2col buffers per call).
    let no_grad_conv = |x: &Tensor, w: &Tensor, p: Conv2dParams| -> Result<Sample> {
        let mut tape = Tape::no_grad();
        let (xv, wv) = (tape.constant(x.clone()), tape.constant(w.clone()));
        let (sample, y) = timed(|| tape.conv2d(&xv, &wv, p))?;
        debug_assert_eq!(y.shape().dims()[..3], [BATCH, o, o]);
        Ok(sample)
    };
    let fwd = median_of(reps, || no_grad_conv(&x, &w, p))?;
    // Backward: x and w are parameters, so both gradients are computed; only the
    // `backward_with` call is timed.
    let bwd = median_of(reps, || {
        let mut tape = Tape::new();
        let xv = tape.param(x.clone());
        let wv = tape.param(w.clone());
        let y = tape.conv2d(&xv, &wv, p)?;
        let (sample, grads) = timed(|| tape.backward_with(&y, dy.clone()))?;
        assert!(grads.get(&xv).is_some() && grads.get(&wv).is_some());
        Ok(sample)
    })?;
    let same_gemm = median_of(reps, || no_grad_conv(&gx, &gw, pointwise))?;
    Ok(Timing {
        fwd,
        bwd,
        same_gemm,
    })
}

/// Median time (and median fault count) of `reps` calls of `f` after one
/// untimed warm-up call.
fn median_of(reps: usize, mut f: impl FnMut() -> Result<Sample>) -> Result<Sample> {
    f()?;
    let samples = (0..reps).map(|_| f()).collect::<Result<Vec<_>>>()?;
    let mut times: Vec<_> = samples.iter().map(|s| s.time).collect();
    times.sort();
    let mut faults: Option<Vec<u64>> = samples.iter().map(|s| s.faults).collect();
    if let Some(f) = faults.as_mut() {
        f.sort();
    }
    Ok(Sample {
        time: times[reps / 2],
        faults: faults.map(|f| f[reps / 2]),
    })
}

/// A fault count (in thousands from 1000 on), or `-` where it was not measured.
fn kilo(faults: Option<u64>) -> String {
    match faults {
        None => "-".into(),
        Some(f) if f < 1000 => f.to_string(),
        Some(f) => format!("{:.1}k", f as f64 / 1e3),
    }
}

fn gflops(flops: f64, t: Duration) -> f64 {
    flops / t.as_secs_f64() / 1e9
}

fn ms(t: Duration) -> f64 {
    t.as_secs_f64() * 1e3
}

/// Resolution from the first numeric argument, else `CONV_BENCH_RES`, else 32.
/// (`cargo bench` passes `--bench` to the binary; flags are ignored.)
fn resolution() -> usize {
    let arg = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .or_else(|| std::env::var("CONV_BENCH_RES").ok());
    match arg.as_deref().map(str::trim) {
        None | Some("") | Some("32") | Some("cifar") => 32,
        Some("224") | Some("imagenet") => 224,
        Some(other) => {
            eprintln!(
                "unsupported resolution {other:?}: use 32 (CIFAR stem) or 224 (ImageNet stem)"
            );
            std::process::exit(2);
        }
    }
}

fn main() -> Result<()> {
    let res = resolution();
    let default_reps = if res == 224 { 3 } else { 5 };
    let reps = std::env::var("CONV_BENCH_REPS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&r| r > 0)
        .unwrap_or(default_reps);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "conv2d CPU benchmark: ResNet-18 ({}), batch {BATCH}, f32 NHWC/KRSC, {threads} hardware threads, \
         median of {reps} after 1 warm-up",
        if res == 224 {
            "ImageNet stem, 224 px"
        } else {
            "CIFAR stem, 32 px"
        }
    );
    println!("fwd FLOPs = 2·N·OH·OW·K·R·S·C; bwd FLOPs = 2× fwd (dx and dw)");
    println!();

    let gemm = |name, hw| ConvShape {
        name,
        hw,
        c: 256,
        k: 256,
        rs: 1,
        stride: 1,
        pad: 0,
        count: 0,
    };
    let gemms = [gemm("gemm", 16), gemm("gemm.32k", 32)];
    let started = Instant::now();
    let gemm_times = gemms
        .iter()
        .map(|g| time_conv(g, reps))
        .collect::<Result<Vec<_>>>()?;
    let base_rate = gflops(gemms[0].fwd_flops(), gemm_times[0].fwd.time);

    let line = |name: &str, count: &str, shape: &str, t: &Timing, flops: f64| {
        let fwd_rate = gflops(flops, t.fwd.time);
        println!(
            "{name:<15} {count:>3}  {shape:<30} {:>8.2} {:>8.1} {:>8.2} {:>8.2} {:>8.2} {:>8.1} {:>7} {:>7}",
            ms(t.fwd.time),
            fwd_rate,
            fwd_rate / base_rate,
            t.same_gemm.time.as_secs_f64() / t.fwd.time.as_secs_f64(),
            ms(t.bwd.time),
            gflops(2.0 * flops, t.bwd.time),
            kilo(t.fwd.faults),
            kilo(t.bwd.faults),
        );
    };
    let header = format!(
        "{:<15} {:>3}  {:<30} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7}",
        "layer",
        "×",
        "shape (N,H,W,C → K, R×S, s, p)",
        "fwd ms",
        "fwd GF/s",
        "fwd/gemm",
        "fwd/same",
        "bwd ms",
        "bwd GF/s",
        "fwd pf",
        "bwd pf",
    );
    let rule = "-".repeat(header.chars().count());
    println!("{header}\n{rule}");
    for (g, t) in gemms.iter().zip(&gemm_times) {
        line(g.name, "-", &g.describe(), t, g.fwd_flops());
    }

    let mut net_flops = 0.0;
    let mut net = Timing {
        fwd: Sample::default(),
        bwd: Sample::default(),
        same_gemm: Sample::default(),
    };
    for shape in resnet18_shapes(res) {
        let t = time_conv(&shape, reps)?;
        let flops = shape.fwd_flops();
        line(
            shape.name,
            &shape.count.to_string(),
            &shape.describe(),
            &t,
            flops,
        );
        net_flops += shape.count as f64 * flops;
        for (sum, s) in [
            (&mut net.fwd, t.fwd),
            (&mut net.bwd, t.bwd),
            (&mut net.same_gemm, t.same_gemm),
        ] {
            sum.time += s.time * shape.count as u32;
            sum.faults = Some(sum.faults.unwrap_or(0) + s.faults.unwrap_or(0) * shape.count as u64)
                .filter(|_| s.faults.is_some());
        }
    }
    println!("{rule}");
    let what = format!("{:.1} GFLOP fwd / batch", net_flops / 1e9);
    line("total (×count)", "", &what, &net, net_flops);
    println!(
        "\nfwd/gemm: fwd GFLOP/s ÷ the `gemm` row's. fwd/same: time of the same-size GEMM \
         ([N·OH·OW, R·S·C]·[R·S·C, K] as a 1×1 conv) ÷ the conv's forward time.\n\
         pf: minor page faults per call (median), i.e. output and im2col buffers that \
         the allocator got fresh from the kernel on that call."
    );
    println!("whole run: {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
