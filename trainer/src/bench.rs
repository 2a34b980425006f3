//! `trainer bench`: full M2T steps (EMA, teacher forwards, student forward and
//! backward on two views, SGD) on synthetic data, timed.

use crate::config::parse;
use crate::pretrain::check_device;
use crate::{Error, Result};
use clap::Args;
use engine::optim::Sgd;
use engine::{Rng, Tensor};
use nets::m2t::{M2t, M2tConfig};
use nets::resnet::{Arch, ResNetConfig, Stem};
use serde_json::json;
use std::time::Instant;

/// Options of `trainer bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Backbone.
    #[arg(long, value_parser = parse::<Arch>)]
    pub arch: Arch,
    /// Pairs per step.
    #[arg(long)]
    pub bs: usize,
    /// Image size.
    #[arg(long)]
    pub res: usize,
    /// Stem [default: small below 128 px, else imagenet].
    #[arg(long, value_parser = parse::<Stem>)]
    pub stem: Option<Stem>,
    /// auto, cpu or cuda[:N].
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
    if let Some(note) = check_device(Some(&args.device), args.precision.as_deref())? {
        eprintln!("{note}");
    }
    for (flag, value, least) in [
        ("--bs", args.bs, 2),
        ("--res", args.res, 8),
        ("--steps", args.steps, 1),
    ] {
        if value < least {
            return Err(Error::Usage(format!("{flag} {value}: at least {least}")));
        }
    }
    let stem = args.stem.unwrap_or(Stem::for_res(args.res));
    let backbone = ResNetConfig {
        arch: args.arch,
        stem,
        in_channels: args.channels,
        width: args.width,
    };
    let config = M2tConfig {
        proj_hidden: args.proj_hidden,
        proj_out: args.proj_out,
        pred_hidden: args.proj_hidden,
        ..M2tConfig::new(backbone)
    };
    let mut model = M2t::new(config, 0)?;
    let mut sgd = Sgd::new(model.student(), 0.9, 1e-4)?;
    let mut rng = Rng::new(1);
    let shape = [args.bs, args.res, args.res, args.channels];
    let n = shape.iter().product();
    let (v1, v2) = (
        Tensor::from_vec(rng.normal_vec(n, 1.0), shape)?,
        Tensor::from_vec(rng.normal_vec(n, 1.0), shape)?,
    );
    let total = args.steps + 1;
    let mut times = Vec::new();
    for k in 0..total {
        let t = Instant::now();
        model.step(&v1, &v2, k, total)?;
        sgd.step(model.student_mut(), 0.01)?;
        if k > 0 {
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let device = format!("cpu ({} threads)", rayon::current_num_threads());
    let pairs_per_s = args.bs as f64 / (median / 1000.0);
    if args.json {
        let line = json!({
            "arch": args.arch.to_string(), "bs": args.bs, "res": args.res, "stem": stem.to_string(),
            "precision": "fp32", "device": device, "steps": args.steps,
            "step_ms_median": median, "pairs_per_s": pairs_per_s, "peak_mem_mb": peak_rss_mb(),
        });
        println!("{line}");
    } else {
        println!(
            "{} {stem} stem, width {}, bs {}, {} px, fp32 on {device}: {median:.1} ms/step (median of {}), {pairs_per_s:.1} pairs/s, peak memory {:.0} MiB",
            args.arch,
            args.width,
            args.bs,
            args.res,
            args.steps,
            peak_rss_mb()
        );
    }
    Ok(())
}
