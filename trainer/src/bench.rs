//! `trainer bench`: full M2T steps (EMA, teacher forwards, student forward and
//! backward on two views, SGD) on synthetic data, timed.

use crate::config::parse;
use crate::limits::{MAX_BS, MAX_HEAD, MAX_RES, MAX_WIDTH, at_most};
use crate::pretrain::{precision_name, resolve_device};
use crate::{Error, Result};
use clap::Args;
use engine::optim::Sgd;
use engine::{Device, Rng, Tensor};
use nets::m2t::{CapturedStep, M2t, M2tConfig};
use nets::resnet::{Arch, ResNetConfig, Stem};
use serde_json::json;
use std::time::Instant;

/// Options of `trainer bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Backbone.
    #[arg(long, value_parser = parse::<Arch>, required_unless_present_any = ["jit", "ops", "loader"])]
    pub arch: Option<Arch>,
    /// Pairs per step [--loader: 64].
    #[arg(long, required_unless_present_any = ["jit", "ops", "loader"])]
    pub bs: Option<usize>,
    /// Image size [--loader: 224].
    #[arg(long, required_unless_present_any = ["jit", "ops", "loader"])]
    pub res: Option<usize>,
    /// Stem [default: small below 128 px, else imagenet].
    #[arg(long, value_parser = parse::<Stem>)]
    pub stem: Option<Stem>,
    /// auto, cpu, cuda[:N] or emulator.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// bf16, fp16 or fp32 [default: fp32 on the CPU].
    #[arg(long)]
    pub precision: Option<String>,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Backbone width.
    #[arg(long, default_value_t = 64)]
    pub width: usize,
    /// Projector and predictor hidden width.
    #[arg(long, default_value_t = 4096)]
    pub proj_hidden: usize,
    /// Projector output width.
    #[arg(long, default_value_t = 256)]
    pub proj_out: usize,
    /// Image channels.
    #[arg(long, default_value_t = 3)]
    pub channels: usize,
    /// Print one JSON line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Instead of steps, time the network's ops one by one on the GPU:
    /// every distinct convolution (forward, backward data, backward filter,
    /// with cuDNN's algorithm and TFLOP/s) and the fused batch-norm kernels
    /// (GB/s against the card's peak) [default network: resnet50, bs 128,
    /// 224 px]. --steps sets the repetitions.
    #[arg(long)]
    pub ops: bool,
    /// Also time every phase, layer and kernel family over the timed steps
    /// (CUDA events on a GPU) and print the tables to stderr; the overhead
    /// of the timing shows in the step times.
    #[arg(long)]
    pub profile: bool,
    /// Capture the step (M2T step and SGD update) as a CUDA graph after the
    /// warm-up step and time its replays: one launch per step instead of
    /// thousands. GPU (or emulator) only; bf16 or fp32.
    #[arg(long)]
    pub cuda_graph: bool,
    /// Only cuDNN's deterministic convolution algorithms (see `trainer
    /// pretrain --deterministic`), to measure what bit-reproducibility costs.
    #[arg(long)]
    pub deterministic: bool,
    /// Instead of steps, time compiling and loading every CUDA kernel family
    /// on the GPU (NVRTC, or the disk cache when warm).
    #[arg(long)]
    pub jit: bool,
    /// Instead of steps, time the input pipeline alone on --data: pairs/s,
    /// per worker, and the workers' time split between reading, decoding,
    /// drawing and augmenting. No model runs.
    #[arg(long, requires = "data")]
    pub loader: bool,
    /// --loader: the dataset (a folder or a pack from `trainer pack`).
    #[arg(long)]
    pub data: Option<std::path::PathBuf>,
    /// --loader: worker threads [default: all cores].
    #[arg(long)]
    pub workers: Option<usize>,
    /// --loader: where the views are rendered: host (the workers augment)
    /// or device (the workers read, decode and draw; a GPU renders, and the
    /// batch's upload is timed when one is there).
    #[arg(long, default_value = "host")]
    pub augment: String,
    /// --loader: timed batches, after one warm-up batch per worker [default:
    /// 10 per worker: each worker builds up to 2 batches ahead, so a short
    /// window would count batches built before it].
    #[arg(long)]
    pub batches: Option<usize>,
    /// --loader: the JPEG decoder, turbojpeg (libjpeg-turbo, with scaled
    /// decoding) or image (zune-jpeg, full size).
    #[arg(long, default_value = "turbojpeg")]
    pub decoder: String,
}

/// `trainer bench --jit`: compile (or load from the disk cache) and load
/// every kernel family on CUDA device 0; reports the total and per family.
fn jit(json: bool) -> Result<()> {
    let t = Instant::now();
    let gpu =
        kernels::Gpu::cuda(0).map_err(|e| Error::Usage(format!("--jit needs a CUDA GPU: {e}")))?;
    let setup = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let families = gpu.load_all().map_err(|e| Error::Usage(e.to_string()))?;
    let total = t.elapsed().as_secs_f64();
    let cached = families.iter().filter(|f| f.2).count();
    let state = if cached == families.len() {
        "warm"
    } else if cached == 0 {
        "cold"
    } else {
        "mixed"
    };
    if json {
        let rows: Vec<_> = families
            .iter()
            .map(|(name, secs, hit)| json!({"family": name, "s": secs, "cached": hit}))
            .collect();
        println!(
            "{}",
            json!({"jit": state, "families": families.len(), "load_s": total, "context_s": setup, "per_family": rows})
        );
    } else {
        println!(
            "kernel JIT ({state}): {} families in {:.3} s (context setup {setup:.3} s)",
            families.len(),
            total
        );
        for (name, secs, hit) in &families {
            println!(
                "  {name:<12} {:>8.1} ms{}",
                secs * 1000.0,
                if *hit { " (cache)" } else { "" }
            );
        }
    }
    Ok(())
}

/// Peak resident memory of this process in MiB (Linux), 0 where unknown.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Runs `trainer bench`.
pub fn run(args: BenchArgs) -> Result<()> {
    engine::set_deterministic(args.deterministic);
    if args.jit {
        return jit(args.json);
    }
    if args.loader {
        return crate::bench_loader::run(&args);
    }
    for (name, value, max) in [
        ("bs", args.bs.unwrap_or(0), MAX_BS),
        ("res", args.res.unwrap_or(0), MAX_RES),
        ("width", args.width, MAX_WIDTH),
        ("proj-hidden", args.proj_hidden, MAX_HEAD),
        ("proj-out", args.proj_out, MAX_HEAD),
    ] {
        at_most(name, value, max)?;
    }
    if args.ops {
        let (placement, note) = resolve_device(Some(&args.device), args.precision.as_deref())?;
        if let Some(note) = note {
            eprintln!("{note}");
        }
        let (arch, bs, res) = (
            args.arch.unwrap_or(Arch::ResNet50),
            args.bs.unwrap_or(128),
            args.res.unwrap_or(224),
        );
        let stem = args.stem.unwrap_or(Stem::for_res(res));
        let net = (arch, stem, bs, res, args.width);
        return crate::bench_ops::run(
            placement.device,
            placement.precision,
            net,
            args.steps.max(1),
            args.json,
        );
    }
    let (arch, bs, res) = (
        args.arch.expect("required by clap"),
        args.bs.expect("required by clap"),
        args.res.expect("required by clap"),
    );
    let (placement, note) = resolve_device(Some(&args.device), args.precision.as_deref())?;
    if let Some(note) = note {
        eprintln!("{note}");
    }
    for (flag, value, least) in [
        ("--bs", bs, 2),
        ("--res", res, 8),
        ("--steps", args.steps, 1),
    ] {
        if value < least {
            return Err(Error::Usage(format!("{flag} {value}: at least {least}")));
        }
    }
    if args.cuda_graph && placement.device == Device::Cpu {
        return Err(Error::Usage(
            "--cuda-graph needs a GPU (--device cuda) or the emulator (--device emulator)".into(),
        ));
    }
    if args.cuda_graph && args.profile {
        return Err(Error::Usage(
            "--profile times each launch, and a replayed graph is one launch: profile without --cuda-graph".into(),
        ));
    }
    let stem = args.stem.unwrap_or(Stem::for_res(res));
    let backbone = ResNetConfig {
        arch,
        stem,
        in_channels: args.channels,
        width: args.width,
    };
    let config = M2tConfig {
        proj_hidden: args.proj_hidden,
        proj_out: args.proj_out,
        pred_hidden: args.proj_hidden,
        precision: placement.precision,
        ..M2tConfig::new(backbone)
    };
    let mut model = M2t::new(config, 0)?.to_device(placement.device)?;
    let mut sgd = Sgd::new(model.student(), 0.9, 1e-4)?;
    let mut rng = Rng::new(1);
    let shape = [bs, res, res, args.channels];
    let n = shape.iter().product();
    // On the model's device from the start: the step is timed, not uploads
    // (a training run's views are drawn on the GPU by the augmentation kernels).
    let (v1, v2) = (
        Tensor::from_vec(rng.normal_vec(n, 1.0), shape)?.to_device(placement.device)?,
        Tensor::from_vec(rng.normal_vec(n, 1.0), shape)?.to_device(placement.device)?,
    );
    let total = args.steps + 1;
    let lr = 0.01;
    let mut times = Vec::new();
    let mut captured: Option<CapturedStep> = None;
    for k in 0..total {
        // The first step (cuDNN searches, kernel loading) is not profiled.
        if args.profile && k == 1 {
            engine::profile::start(placement.device)?;
        }
        let t = Instant::now();
        let _step = engine::nvtx::open(engine::profile::Kind::Step, || format!("step {k}"));
        match &mut captured {
            Some(graph) => {
                graph.run(&mut model, (&v1, &v2), (k, total), lr)?;
            }
            None => {
                let numbers = model.schedule(k, total, lr)?;
                model.step(&v1, &v2, &numbers)?;
                let _r = engine::nvtx::phase("optimizer");
                sgd.step(model.student_mut(), numbers.lr)?;
            }
        }
        engine::synchronize(placement.device)?;
        if k > 0 {
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        // Captured after the warm-up step, which made the cuDNN choices.
        if args.cuda_graph && k == 0 {
            let numbers = model.schedule(1, total, lr)?;
            captured = Some(CapturedStep::capture(
                &mut model,
                &v1,
                &v2,
                &numbers,
                |store, lr| Ok(sgd.step(store, lr.clone())?),
            )?);
        }
    }
    if args.profile {
        eprint!("{}", engine::profile::finish()?);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let (device, peak_mb) = match placement.device {
        Device::Cpu => (
            format!("cpu ({} threads)", rayon::current_num_threads()),
            peak_rss_mb(),
        ),
        Device::Emulator => (
            "emulator (CUDA kernels on the CPU)".to_string(),
            peak_rss_mb(),
        ),
        d => {
            let name = kernels::probe::probe()
                .devices
                .ok()
                .and_then(|all| {
                    all.into_iter()
                        .find(|i| Device::Cuda(i.ordinal) == d)
                        .map(|i| i.name)
                })
                .unwrap_or_default();
            let peak = engine::memory_high_water(d)?.unwrap_or(0) as f64 / (1u64 << 20) as f64;
            (format!("{d} ({name})"), peak)
        }
    };
    let precision = precision_name(placement.precision);
    let pairs_per_s = bs as f64 / (median / 1000.0);
    if args.json {
        let line = json!({
            "arch": arch.to_string(), "bs": bs, "res": res, "stem": stem.to_string(),
            "precision": precision, "device": device, "steps": args.steps,
            "cuda_graph": args.cuda_graph,
            "step_ms_median": median, "pairs_per_s": pairs_per_s, "peak_mem_mb": peak_mb,
        });
        println!("{line}");
    } else {
        let graph = if args.cuda_graph { ", CUDA graph" } else { "" };
        println!(
            "{} {stem} stem, width {}, bs {}, {} px, {precision}{graph} on {device}: {median:.1} ms/step (median of {}), {pairs_per_s:.1} pairs/s, peak memory {peak_mb:.0} MiB",
            arch, args.width, bs, res, args.steps,
        );
    }
    Ok(())
}
