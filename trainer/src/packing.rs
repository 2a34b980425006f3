//! `trainer pack`: an ImageFolder (with its `train/` and `val/` splits) into
//! one pack file ([`crate::data::pack`]), on all cores.
//!
//! An image whose short side is at most `--max-side` is stored as its file's
//! bytes, so a pack of small enough images decodes to exactly the folder's
//! pixels; a larger one is resized (antialiased) to that short side and
//! re-encoded as a JPEG at `--quality`. An image that cannot be decoded is
//! skipped, counted and named; every record carries its own label, so
//! skipping never shifts the others'.

use crate::data::pack::Writer;
use crate::data::{self, Dataset, JpegDecoder};
use crate::{Error, Result};
use clap::Args;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Options of `trainer pack`.
#[derive(Args, Debug)]
pub struct PackArgs {
    /// The ImageFolder to pack: class subfolders, or `train/` plus `val/`
    /// (or `test/`) folders of them. `val/` becomes the pack's test split.
    #[arg(long)]
    pub data: PathBuf,
    /// The pack file to write (replaced if it exists).
    #[arg(long)]
    pub out: PathBuf,
    /// Resize images whose short side is longer to this short side (enough
    /// for 224-px crops by default); 0 keeps every image as it is.
    #[arg(long, default_value_t = 256)]
    pub max_side: u32,
    /// JPEG quality (1-100) of the resized images.
    #[arg(long, default_value_t = 90)]
    pub quality: i32,
    /// Threads decoding and encoding [default: all cores].
    #[arg(long)]
    pub workers: Option<usize>,
}

/// What became of one image.
struct Packed {
    bytes: Vec<u8>,
    size: (u32, u32),
    resized: bool,
}

/// Runs `trainer pack`.
pub fn run(args: PackArgs) -> Result<()> {
    if !(1..=100).contains(&args.quality) {
        return Err(Error::Usage(format!(
            "--quality {}: between 1 and 100",
            args.quality
        )));
    }
    if args.workers == Some(0) {
        return Err(Error::Usage("--workers 0: at least 1".into()));
    }
    let splits = data::open(&args.data)?;
    let sets: Vec<&Dataset> = std::iter::once(&splits.train)
        .chain(splits.test.as_ref())
        .collect();
    if splits.train.source(0).is_none() {
        return Err(Error::Usage(format!(
            "trainer pack reads an ImageFolder; {} is {}",
            args.data.display(),
            splits.train.describe()
        )));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.workers.unwrap_or(0))
        .build()
        .map_err(|e| Error::Usage(format!("cannot start the packing threads: {e}")))?;
    let total: usize = sets.iter().map(|s| s.len()).sum();
    let progress = indicatif::ProgressBar::new(total as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "packing {bar:40} {pos}/{len} images, {per_sec}, ETA {eta}",
        )
        .expect("a valid template"),
    );

    let partial = partial_path(&args.out);
    let mut writer = Writer::create(&partial)?;
    let (mut resized, mut skipped) = (0, Vec::new());
    let mut train_len = 0;
    for (k, set) in sets.iter().enumerate() {
        // Chunks keep memory bounded and the records in folder order.
        let chunk = 64 * pool.current_num_threads();
        for start in (0..set.len()).step_by(chunk) {
            let end = (start + chunk).min(set.len());
            let results: Vec<Result<Packed, String>> = pool.install(|| {
                (start..end)
                    .into_par_iter()
                    .map(|i| {
                        let r = pack_one(set.source(i).expect("an ImageFolder"), &args);
                        progress.inc(1);
                        r
                    })
                    .collect()
            });
            for (i, result) in (start..end).zip(results) {
                let path = set.source(i).expect("an ImageFolder");
                match result {
                    Ok(p) => {
                        let label = set.label(i).expect("ImageFolders are labelled") as u32;
                        resized += usize::from(p.resized);
                        writer.push(&p.bytes, label, p.size, relative(path, &args.data))?;
                    }
                    Err(detail) => skipped.push(format!("{}: {detail}", path.display())),
                }
            }
        }
        if k == 0 {
            train_len = writer.len();
        }
    }
    progress.finish_and_clear();
    if train_len == 0 {
        let _ = std::fs::remove_file(&partial);
        return Err(Error::data(
            &args.data,
            "no readable training image to pack",
        ));
    }
    let records = writer.len();
    let bytes = writer.finish(splits.train.class_names(), train_len, args.max_side)?;
    std::fs::rename(&partial, &args.out).map_err(|e| Error::io(&args.out, e))?;
    for line in &skipped {
        eprintln!("skipped {line}");
    }
    println!(
        "packed {records} images ({train_len} train, {} val) of {} classes into {}: {:.1} MiB, \
         {resized} resized to a short side of {}, {} stored as they were; {} unreadable skipped",
        records - train_len,
        splits.train.class_names().len(),
        args.out.display(),
        bytes as f64 / (1 << 20) as f64,
        args.max_side,
        records - resized,
        skipped.len()
    );
    Ok(())
}

/// `out` with `.partial` appended: written there, renamed when complete.
fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// `path` relative to the packed folder, as UTF-8 (lossily).
fn relative(path: &Path, root: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// Decodes one file (checking it is readable) and returns what to store.
fn pack_one(path: &Path, args: &PackArgs) -> Result<Packed, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let (image, _) = data::decode_bytes(&bytes, 1, JpegDecoder::Turbo)?;
    let (h, w) = (image.height, image.width);
    let short = h.min(w);
    let max = args.max_side as usize;
    if max == 0 || short <= max {
        return Ok(Packed {
            bytes,
            size: (h as u32, w as u32),
            resized: false,
        });
    }
    // The short side becomes `max`, the long one keeps the aspect ratio.
    let scale = max as f64 / short as f64;
    let (nh, nw) = (
        ((h as f64 * scale).round() as u32).max(1),
        ((w as f64 * scale).round() as u32).max(1),
    );
    let rgb =
        image::RgbImage::from_raw(w as u32, h as u32, image.data).ok_or("decoded size mismatch")?;
    let small = image::imageops::resize(&rgb, nw, nh, image::imageops::FilterType::Triangle);
    let out = turbojpeg::Image {
        pixels: small.as_raw().as_slice(),
        width: nw as usize,
        pitch: nw as usize * 3,
        height: nh as usize,
        format: turbojpeg::PixelFormat::RGB,
    };
    let jpeg = turbojpeg::compress(out, args.quality, turbojpeg::Subsamp::Sub2x2)
        .map_err(|e| format!("re-encoding: {e}"))?;
    Ok(Packed {
        bytes: jpeg.to_vec(),
        size: (nh, nw),
        resized: true,
    })
}
