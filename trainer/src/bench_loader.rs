//! `trainer bench --loader`: the input pipeline alone (no model), as
//! pretraining runs it: [`PairLoader`] workers reading, decoding, drawing and
//! augmenting (host) or only drawing (device) pairs of views.

use crate::augment::{AugmentConfig, GpuAugmenter};
use crate::bench::BenchArgs;
use crate::data::{self, Image, JpegDecoder};
use crate::limits::{MAX_BS, MAX_RES, MAX_WORKERS, at_most};
use crate::loader::{Augmentation, PairLoader, Stages, Views};
use crate::pretrain::resolve_device;
use crate::{Error, Result};
use engine::{DType, Device};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Output size when `--res` is not given.
const DEFAULT_RES: usize = 224;
/// Pairs per batch when `--bs` is not given.
const DEFAULT_BS: usize = 64;

/// Runs `trainer bench --loader`.
pub fn run(args: &BenchArgs) -> Result<()> {
    let path = args
        .data
        .as_ref()
        .ok_or_else(|| Error::Usage("--loader needs --data PATH (a folder or a pack)".into()))?;
    let (res, bs) = (
        args.res.unwrap_or(DEFAULT_RES),
        args.bs.unwrap_or(DEFAULT_BS),
    );
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    at_most("workers", workers, MAX_WORKERS)?;
    at_most("bs", bs, MAX_BS)?;
    at_most("res", res, MAX_RES)?;
    let batches = args.batches.unwrap_or(10 * workers);
    for (flag, value, least) in [
        ("--bs", bs, 1),
        ("--res", res, 8),
        ("--workers", workers, 1),
        ("--batches", batches, 1),
    ] {
        if value < least {
            return Err(Error::Usage(format!("{flag} {value}: at least {least}")));
        }
    }
    let augmentation = match args.augment.as_str() {
        "host" => Augmentation::Host,
        "device" => Augmentation::Device,
        other => {
            return Err(Error::Usage(format!(
                "--augment {other}: expected host or device"
            )));
        }
    };
    let decoder: JpegDecoder = args.decoder.parse().map_err(Error::Usage)?;
    // Uploads are timed only on a real GPU; on the CPU there is nothing to
    // upload, and the emulator's copies say nothing about a GPU's.
    let upload_to = match augmentation {
        Augmentation::Device => match resolve_device(Some(&args.device), None)?.0.device {
            d @ Device::Cuda(_) => Some(d),
            _ => None,
        },
        Augmentation::Host => None,
    };

    let dataset = data::open(path)?.train.with_decoder(decoder);
    let described = dataset.describe();
    let cfg = AugmentConfig::new(res, 3)?;
    let gpu = upload_to
        .map(|d| GpuAugmenter::new(d, cfg.clone(), DType::F32).map(|g| (g, d)))
        .transpose()?;
    let mut loader = PairLoader::new(Arc::new(dataset), cfg, (bs, 0), workers, 0, augmentation)?;

    // Warm-up: one batch per worker, so every worker has started.
    for _ in 0..workers {
        consume(&mut loader, gpu.as_ref())?;
    }
    let before = loader.stages();
    let started = Instant::now();
    let (mut skipped, mut upload) = (0, Duration::ZERO);
    for _ in 0..batches {
        let (s, u) = consume(&mut loader, gpu.as_ref())?;
        skipped += s;
        upload += u;
    }
    let wall = started.elapsed().as_secs_f64();
    let stages = difference(loader.stages(), before);
    let pairs_per_s = (bs * batches) as f64 / wall;
    let per_pair = |d: Duration| d.as_secs_f64() * 1e3 / stages.samples.max(1) as f64;
    let split = [
        ("read", stages.read),
        ("decode", stages.decode),
        ("draw", stages.draw),
        (
            match augmentation {
                Augmentation::Host => "augment",
                Augmentation::Device => "assemble",
            },
            stages.augment,
        ),
    ];
    let busy: f64 = split.iter().map(|(_, d)| d.as_secs_f64()).sum();
    let upload_ms = gpu
        .is_some()
        .then(|| upload.as_secs_f64() * 1e3 / batches as f64);
    let augment_name = match augmentation {
        Augmentation::Host => "host",
        Augmentation::Device => "device",
    };
    if args.json {
        let ms: serde_json::Map<String, serde_json::Value> = split
            .iter()
            .map(|(name, d)| (name.to_string(), json!(per_pair(*d))))
            .collect();
        println!(
            "{}",
            json!({
                "loader": described, "res": res, "bs": bs, "workers": workers,
                "augment": augment_name, "decoder": args.decoder, "batches": batches,
                "wall_s": wall, "pairs_per_s": pairs_per_s,
                "pairs_per_s_per_worker": pairs_per_s / workers as f64,
                "skipped": skipped, "ms_per_pair": ms, "upload_ms_per_batch": upload_ms,
            })
        );
        return Ok(());
    }
    println!(
        "loader: {described}; {res} px, bs {bs}, {workers} workers, {augment_name} augmentation, {} decoder",
        args.decoder
    );
    println!(
        "  {pairs_per_s:.1} pairs/s ({:.1} per worker): {} batches in {wall:.2} s, {skipped} unreadable images skipped",
        pairs_per_s / workers as f64,
        batches
    );
    let parts: Vec<String> = split
        .iter()
        .map(|(name, d)| {
            format!(
                "{name} {:.3} ms ({:.0}%)",
                per_pair(*d),
                100.0 * d.as_secs_f64() / busy.max(1e-12)
            )
        })
        .collect();
    println!("  worker time per pair: {}", parts.join(", "));
    if let Some(ms) = upload_ms {
        println!("  upload to the GPU: {ms:.3} ms per batch (on the consuming thread)");
    }
    Ok(())
}

/// Takes the next batch (uploading its images when `gpu` is given); returns
/// its skipped count and the upload time.
fn consume(
    loader: &mut PairLoader,
    gpu: Option<&(GpuAugmenter, Device)>,
) -> Result<(usize, Duration)> {
    let batch = loader.next()?;
    let mut upload = Duration::ZERO;
    if let (Some((gpu, device)), Views::Drawn { images, .. }) = (gpu, &batch.views) {
        let refs: Vec<&Image> = images.iter().collect();
        let started = Instant::now();
        gpu.upload(&refs)?;
        engine::synchronize(*device)?;
        upload = started.elapsed();
    }
    Ok((batch.skipped, upload))
}

/// `after − before`, stage by stage.
fn difference(after: Stages, before: Stages) -> Stages {
    Stages {
        read: after.read - before.read,
        decode: after.decode - before.decode,
        draw: after.draw - before.draw,
        augment: after.augment - before.augment,
        samples: after.samples - before.samples,
    }
}
