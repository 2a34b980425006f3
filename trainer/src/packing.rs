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
use crate::limits::{MAX_WORKERS, at_most};
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

/// What `trainer pack` wrote.
#[derive(Debug)]
pub struct Summary {
    /// Images packed.
    pub records: usize,
    /// Of which the training split.
    pub train_len: usize,
    /// Of which resized and re-encoded.
    pub resized: usize,
    /// The pack's size in bytes.
    pub bytes: u64,
    /// `path: reason` of each image skipped as unreadable.
    pub skipped: Vec<String>,
    /// Classes.
    pub classes: usize,
}

/// Runs `trainer pack`: packs, then names the skipped images on stderr and
/// prints the summary.
pub fn run(args: PackArgs) -> Result<()> {
    let s = pack(&args)?;
    for line in &s.skipped {
        eprintln!("skipped {line}");
    }
    let resized = match args.max_side {
        0 => "none resized".to_string(),
        side => format!("{} resized to a short side of {side}", s.resized),
    };
    println!(
        "packed {} images ({} train, {} val) of {} classes into {}: {:.1} MiB; {resized}, \
         {} stored as they were; {} unreadable images skipped",
        s.records,
        s.train_len,
        s.records - s.train_len,
        s.classes,
        args.out.display(),
        s.bytes as f64 / (1 << 20) as f64,
        s.records - s.resized,
        s.skipped.len()
    );
    Ok(())
}

/// Packs `args.data` into `args.out`.
pub fn pack(args: &PackArgs) -> Result<Summary> {
    if !(1..=100).contains(&args.quality) {
        return Err(Error::Usage(format!(
            "--quality {}: between 1 and 100",
            args.quality
        )));
    }
    if args.workers == Some(0) {
        return Err(Error::Usage("--workers 0: at least 1".into()));
    }
    at_most("workers", args.workers.unwrap_or(1), MAX_WORKERS)?;
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
                        let r = pack_one(set.source(i).expect("an ImageFolder"), args);
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
    let classes = splits.train.class_names();
    let bytes = writer.finish(classes, train_len, args.max_side)?;
    std::fs::rename(&partial, &args.out).map_err(|e| Error::io(&args.out, e))?;
    Ok(Summary {
        records,
        train_len,
        resized,
        bytes,
        skipped,
        classes: classes.len(),
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::AugmentConfig;
    use crate::data::testutil::{TempDir, jpeg_bytes as jpeg, write_image};
    use crate::loader::{Augmentation, PairLoader, Views};
    use std::sync::Arc;

    fn put(root: &Path, name: &str, bytes: &[u8]) {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    fn args(data: &Path, out: &Path, max_side: u32) -> PackArgs {
        PackArgs {
            data: data.to_path_buf(),
            out: out.to_path_buf(),
            max_side,
            quality: 90,
            workers: Some(2),
        }
    }

    #[test]
    fn bad_images_are_skipped_counted_and_named_and_labels_never_shift() {
        let dir = TempDir::new("pack-bad-images");
        let root = dir.path().join("folder");
        put(&root, "train/a/0.jpg", &jpeg(20, 16, 0));
        put(&root, "train/a/1_zero.jpg", &[]);
        put(&root, "train/a/2_text.jpg", b"not an image, just text");
        let whole = jpeg(40, 30, 1);
        put(&root, "train/a/3_cut.jpg", &whole[..whole.len() / 2]);
        // A JPEG named .png: decoded by content, so kept.
        put(&root, "train/a/4_disguised.png", &jpeg(18, 18, 2));
        put(&root, "train/a/5_large.jpg", &jpeg(60, 40, 3));
        write_image(&root.join("train/b/0.png"), 12, 4);
        put(&root, "train/b/1.jpg", &jpeg(16, 20, 5));
        put(&root, "val/a/0.jpg", &jpeg(16, 16, 6));
        put(&root, "val/b/0_cut.jpg", &whole[..whole.len() - 40]);

        let out = dir.path().join("p.m2tpack");
        let s = pack(&args(&root, &out, 32)).unwrap();
        assert_eq!((s.records, s.train_len, s.classes, s.resized), (6, 5, 2, 1));
        let skipped: Vec<&str> = s.skipped.iter().map(String::as_str).collect();
        assert_eq!(skipped.len(), 4, "{skipped:?}");
        for name in ["1_zero.jpg", "2_text.jpg", "3_cut.jpg", "0_cut.jpg"] {
            assert!(
                skipped.iter().any(|l| l.contains(name)),
                "{name}: {skipped:?}"
            );
        }

        let splits = crate::data::open(&out).unwrap();
        let pack = splits.train.pack().unwrap();
        assert_eq!(pack.classes, ["a", "b"]);
        // Every record's label is its own folder's class.
        for r in &pack.records {
            let class = r.source.split('/').nth(1).unwrap();
            assert_eq!(pack.classes[r.label as usize], class, "{}", r.source);
        }
        let large = pack
            .records
            .iter()
            .find(|r| r.source.contains("5_large"))
            .unwrap();
        assert_eq!((large.height, large.width), (32, 48));
        let test = splits.test.unwrap();
        assert_eq!((test.len(), test.label(0)), (1, Some(0)));
        for i in 0..splits.train.len() {
            assert!(splits.train.image(i).is_ok(), "record {i}");
        }

        // The folder itself: the loader skips and counts the three bad
        // training images every epoch (a run of them counts each attempt);
        // the pack has none left to skip.
        let cfg = AugmentConfig::new(8, 3).unwrap();
        let folder = Arc::new(crate::data::open(&root).unwrap().train);
        let packed = Arc::new(splits.train);
        for (set, bad) in [(Arc::clone(&folder), true), (packed, false)] {
            let n = set.len();
            let mut loader =
                PairLoader::new(set, cfg.clone(), (n, 7), 2, 0, Augmentation::Host).unwrap();
            for _ in 0..3 {
                let skipped = loader.next().unwrap().skipped;
                assert_eq!(skipped >= 3, bad, "{skipped}");
            }
        }
        // Evaluation leaves exactly those three out, every other image with
        // its own folder's label.
        let readable: Vec<_> = crate::loader::eval_batches(&folder, &cfg, 3)
            .flat_map(|b| {
                let b = b.unwrap();
                b.indices.into_iter().zip(b.labels)
            })
            .collect();
        assert_eq!(readable.len(), 5);
        for (i, label) in readable {
            let path = folder.source(i).unwrap();
            let class = path.parent().unwrap().file_name().unwrap();
            assert_eq!(["a", "b"][label as usize], class, "{}", path.display());
        }
    }

    #[test]
    fn a_lossless_size_pack_gives_the_folders_batches() {
        let dir = TempDir::new("pack-same");
        let root = dir.path().join("folder");
        // Large enough for 1/2 to 1/8 scaled decoding at 8 px.
        for i in 0..10 {
            let (w, h) = (40 + 7 * i, 90 - 4 * i);
            put(&root, &format!("c{}/{i}.jpg", i % 3), &jpeg(w, h, i));
        }
        write_image(&root.join("c1/z.png"), 30, 9);
        let out = dir.path().join("p.m2tpack");
        let s = pack(&args(&root, &out, 0)).unwrap();
        assert_eq!((s.records, s.resized), (11, 0));

        let folder = Arc::new(crate::data::open(&root).unwrap().train);
        let packed = Arc::new(crate::data::open(&out).unwrap().train);
        assert_eq!(folder.len(), packed.len());
        for i in 0..folder.len() {
            assert_eq!(folder.label(i), packed.label(i));
            assert_eq!(folder.image(i).unwrap(), packed.image(i).unwrap());
        }
        let cfg = AugmentConfig::new(8, 3).unwrap();
        let run = |set: &Arc<crate::data::Dataset>, augmentation| {
            let mut loader =
                PairLoader::new(Arc::clone(set), cfg.clone(), (4, 3), 2, 0, augmentation).unwrap();
            (0..6).map(|_| loader.next().unwrap()).collect::<Vec<_>>()
        };
        for (a, b) in run(&folder, Augmentation::Host)
            .iter()
            .zip(&run(&packed, Augmentation::Host))
        {
            let (a1, a2) = a.views(None).unwrap();
            let (b1, b2) = b.views(None).unwrap();
            assert_eq!(a1.to_vec::<f32>().unwrap(), b1.to_vec::<f32>().unwrap());
            assert_eq!(a2.to_vec::<f32>().unwrap(), b2.to_vec::<f32>().unwrap());
        }
        let mut reduced = 0;
        for (a, b) in run(&folder, Augmentation::Device)
            .iter()
            .zip(&run(&packed, Augmentation::Device))
        {
            let (
                Views::Drawn { images, one, two },
                Views::Drawn {
                    images: i2,
                    one: o2,
                    two: t2,
                },
            ) = (&a.views, &b.views)
            else {
                panic!("device batches are drawn");
            };
            assert_eq!((images, one, two), (i2, o2, t2));
            reduced += images.iter().filter(|im| im.width < 40).count();
        }
        assert!(reduced > 0, "some images were decoded at a reduced scale");
    }
}
