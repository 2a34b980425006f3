//! Datasets: MNIST-style IDX files, CIFAR-10/100 and STL-10 binaries,
//! ImageFolder trees of JPEG/PNG files, packs of them (`trainer pack`), and a
//! synthetic generator.
//!
//! [`open`] detects the format from a directory or a pack file and returns
//! its [`Splits`]. Fixed-size formats are read into memory once (as HWC
//! `u8`); ImageFolder and pack images are decoded on demand by
//! [`Dataset::image`] (or read with [`Dataset::read`] and decoded at a
//! reduced scale), which reports an image it cannot read as an
//! [`ImageError`] so the loader can count and skip it.

mod cifar;
mod decode;
mod fingerprint;
mod folder;
mod idx;
pub mod pack;
mod stl10;
mod synthetic;
#[cfg(test)]
pub(crate) mod testutil;

pub use decode::{JpegDecoder, decode as decode_bytes, divisor_for};
pub use fingerprint::Fingerprint;
pub use synthetic::synthetic;

use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the `dataset-fashion-mnist` package installs Fashion-MNIST.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// One decoded image: `height × width × channels` bytes in HWC order.
///
/// Images from a [`Dataset`] are never empty and `data` always holds exactly
/// `height · width · channels` bytes; the augmentations rely on this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// Pixels, row by row, channels interleaved.
    pub data: Vec<u8>,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
}

/// An image file that could not be read or decoded.
///
/// Always recoverable: the rest of the dataset is fine, and the loader counts
/// and skips the sample. `?` turns it into an [`Error::Data`] where a caller
/// wants to treat it as fatal.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{}: unreadable image: {detail}", path.display())]
pub struct ImageError {
    /// The file.
    pub path: PathBuf,
    /// Why it could not be used.
    pub detail: String,
}

impl From<ImageError> for Error {
    fn from(e: ImageError) -> Self {
        Error::data(e.path, format!("unreadable image: {}", e.detail))
    }
}

/// Where a dataset's pixels live.
#[derive(Clone, Debug)]
enum Pixels {
    /// Equal-size HWC images back to back, in one or more shared blocks
    /// (STL-10's pretraining split is `unlabeled` followed by `train`).
    Memory {
        blocks: Vec<Arc<Vec<u8>>>,
        height: usize,
        width: usize,
    },
    /// Image files decoded on demand (ImageFolder).
    Files(Vec<PathBuf>),
    /// Records `start..start + len` of a pack, decoded on demand.
    Packed { pack: Arc<pack::Pack>, start: usize },
}

/// One image as read, before decoding: encoded bytes, or pixels already.
pub enum Encoded<'a> {
    /// A file's or a pack record's bytes, with the decoder to use.
    Bytes(std::borrow::Cow<'a, [u8]>, JpegDecoder),
    /// An in-memory format's pixels (a copy).
    Pixels(Image),
}

impl Encoded<'_> {
    /// `(height, width)` at full size, from the header alone.
    pub fn dimensions(&self) -> Result<(usize, usize), String> {
        match self {
            Encoded::Bytes(bytes, decoder) => decode::dimensions(bytes, *decoder),
            Encoded::Pixels(image) => Ok((image.height, image.width)),
        }
    }

    /// The image, reduced by `divisor` (1, 2, 4 or 8) where the decoder can
    /// (see [`divisor_for`]), and the divisor that applied.
    pub fn decode(self, divisor: usize) -> Result<(Image, usize), String> {
        match self {
            Encoded::Bytes(bytes, decoder) => decode::decode(&bytes, divisor, decoder),
            Encoded::Pixels(image) => Ok((image, 1)),
        }
    }
}

/// A list of images with optional integer labels.
///
/// Cloning is cheap for in-memory formats: the pixel blocks are shared.
#[derive(Clone, Debug)]
pub struct Dataset {
    name: String,
    pixels: Pixels,
    len: usize,
    channels: usize,
    labels: Option<Vec<i64>>,
    num_classes: Option<usize>,
    /// Class names in label order, where the format has them.
    class_names: Vec<String>,
    decoder: JpegDecoder,
}

impl Dataset {
    /// A dataset over `blocks` of `height × width × channels` HWC images; the
    /// readers have already checked the sizes and labels.
    fn memory(
        name: String,
        blocks: Vec<Arc<Vec<u8>>>,
        (height, width, channels): (usize, usize, usize),
        labels: Option<Vec<i64>>,
        num_classes: Option<usize>,
    ) -> Dataset {
        let len = blocks.iter().map(|b| b.len()).sum::<usize>() / (height * width * channels);
        Dataset {
            name,
            pixels: Pixels::Memory {
                blocks,
                height,
                width,
            },
            len,
            channels,
            labels,
            num_classes,
            class_names: Vec::new(),
            decoder: JpegDecoder::default(),
        }
    }

    /// A dataset of equal-size images held in memory: `pixels` holds them
    /// back to back, each `height × width × channels` bytes in HWC order.
    /// Labels, when given, must be one per image and non-negative; the class
    /// count is then the largest label plus one.
    pub fn from_pixels(
        name: impl Into<String>,
        pixels: Vec<u8>,
        (height, width, channels): (usize, usize, usize),
        labels: Option<Vec<i64>>,
    ) -> Result<Dataset> {
        let name = name.into();
        let bad = |why: String| Err(Error::Usage(format!("dataset {name}: {why}")));
        if height == 0 || width == 0 || !(channels == 1 || channels == 3) {
            return bad(format!(
                "bad image shape {height}×{width}×{channels} (channels must be 1 or 3)"
            ));
        }
        let image_len = height * width * channels;
        if !pixels.len().is_multiple_of(image_len) {
            return bad(format!(
                "{} bytes is not a whole number of {image_len}-byte images",
                pixels.len()
            ));
        }
        let n = pixels.len() / image_len;
        let num_classes = match &labels {
            None => None,
            Some(l) if l.len() != n => return bad(format!("{} labels for {n} images", l.len())),
            Some(l) if l.iter().any(|&v| v < 0) => return bad("negative label".into()),
            Some(l) => Some(l.iter().max().map_or(0, |&m| m as usize + 1)),
        };
        Ok(Dataset::memory(
            name,
            vec![Arc::new(pixels)],
            (height, width, channels),
            labels,
            num_classes,
        ))
    }

    /// An ImageFolder dataset: `files[i]` has label `labels[i]`, a number
    /// into `class_names`.
    fn files(
        name: String,
        files: Vec<PathBuf>,
        labels: Vec<i64>,
        class_names: Vec<String>,
    ) -> Dataset {
        Dataset {
            name,
            len: files.len(),
            pixels: Pixels::Files(files),
            channels: 3,
            labels: Some(labels),
            num_classes: Some(class_names.len()),
            class_names,
            decoder: JpegDecoder::default(),
        }
    }

    /// Records `range` of `pack` as a dataset.
    fn packed(name: String, pack: &Arc<pack::Pack>, range: std::ops::Range<usize>) -> Dataset {
        let labels = pack.records[range.clone()]
            .iter()
            .map(|r| i64::from(r.label))
            .collect();
        Dataset {
            name,
            len: range.len(),
            pixels: Pixels::Packed {
                pack: Arc::clone(pack),
                start: range.start,
            },
            channels: 3,
            labels: Some(labels),
            num_classes: Some(pack.classes.len()),
            class_names: pack.classes.clone(),
            decoder: JpegDecoder::default(),
        }
    }

    /// The same images decoded by `decoder` (JPEGs in files and packs).
    pub fn with_decoder(mut self, decoder: JpegDecoder) -> Dataset {
        self.decoder = decoder;
        self
    }

    /// The number of images.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the dataset has no images.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Channels of every image: 1 (grey) or 3 (RGB; ImageFolder files are
    /// always converted to RGB).
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Image `i`: a copy for in-memory formats, a freshly decoded file for
    /// ImageFolder. Only ImageFolder files can fail, and such a failure
    /// concerns that one file.
    ///
    /// # Panics
    /// If `i >= len()`, like slice indexing.
    pub fn image(&self, i: usize) -> Result<Image, ImageError> {
        self.read(i)?
            .decode(1)
            .map(|(image, _)| image)
            .map_err(|detail| self.image_error(i, detail))
    }

    /// Image `i` before decoding: a file's or a pack record's bytes (checked
    /// against the record's checksum), or an in-memory image's pixels.
    ///
    /// # Panics
    /// If `i >= len()`, like slice indexing.
    pub fn read(&self, i: usize) -> Result<Encoded<'_>, ImageError> {
        assert!(i < self.len, "image {i} of a {}-image dataset", self.len);
        match &self.pixels {
            Pixels::Files(files) => std::fs::read(&files[i])
                .map(|bytes| Encoded::Bytes(bytes.into(), self.decoder))
                .map_err(|e| self.image_error(i, e.to_string())),
            Pixels::Packed { pack, start } => pack
                .bytes(start + i)
                .map(|bytes| Encoded::Bytes(bytes.into(), self.decoder))
                .map_err(|detail| self.image_error(i, detail)),
            Pixels::Memory { .. } => Ok(Encoded::Pixels(self.memory_image(i))),
        }
    }

    /// The error for image `i`, named by its file or pack record.
    pub fn image_error(&self, i: usize, detail: String) -> ImageError {
        let path = match &self.pixels {
            Pixels::Files(files) => files[i].clone(),
            Pixels::Packed { pack, start } => pack.record_name(start + i),
            Pixels::Memory { .. } => PathBuf::from(format!("{} image {i}", self.name)),
        };
        ImageError { path, detail }
    }

    /// A copy of in-memory image `i`.
    fn memory_image(&self, i: usize) -> Image {
        match &self.pixels {
            Pixels::Memory {
                blocks,
                height,
                width,
            } => {
                let image_len = height * width * self.channels;
                let mut at = i * image_len;
                for block in blocks {
                    if at < block.len() {
                        return Image {
                            data: block[at..at + image_len].to_vec(),
                            height: *height,
                            width: *width,
                            channels: self.channels,
                        };
                    }
                    at -= block.len();
                }
                unreachable!("blocks hold exactly `len` images")
            }
            _ => unreachable!("only called for in-memory datasets"),
        }
    }

    /// The label of image `i`, if the dataset is labelled (and `i` in range).
    pub fn label(&self, i: usize) -> Option<i64> {
        self.labels.as_ref()?.get(i).copied()
    }

    /// Class names in label order (ImageFolders and packs; empty for
    /// formats without names).
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// The pack the images are read from, if any.
    pub fn pack(&self) -> Option<&pack::Pack> {
        match &self.pixels {
            Pixels::Packed { pack, .. } => Some(pack),
            _ => None,
        }
    }

    /// The number of classes, if the dataset is labelled.
    pub fn num_classes(&self) -> Option<usize> {
        self.num_classes
    }

    /// `(height, width)` shared by all images, for fixed-size formats.
    pub fn native_size(&self) -> Option<(usize, usize)> {
        match self.pixels {
            Pixels::Memory { height, width, .. } => Some((height, width)),
            Pixels::Files(_) | Pixels::Packed { .. } => None,
        }
    }

    /// A warning when some classes have no images: a class count taken as
    /// the largest label plus one is then larger than it looks.
    pub fn sparse_labels_warning(&self) -> Option<String> {
        let (labels, classes) = (self.labels.as_ref()?, self.num_classes?);
        let mut used = vec![false; classes];
        for &l in labels {
            if let Some(slot) = usize::try_from(l).ok().and_then(|l| used.get_mut(l)) {
                *slot = true;
            }
        }
        let present = used.iter().filter(|&&u| u).count();
        (present < classes).then(|| {
            format!(
                "warning: {}: labels use {present} of {classes} class numbers (0..{classes}); \
                 evaluation counts all {classes} classes",
                self.name
            )
        })
    }

    /// The file of image `i`, for file-backed datasets (ImageFolder).
    pub fn source(&self, i: usize) -> Option<&Path> {
        match &self.pixels {
            Pixels::Files(files) => files.get(i).map(PathBuf::as_path),
            Pixels::Memory { .. } | Pixels::Packed { .. } => None,
        }
    }

    /// One line for logs, e.g. `CIFAR-10 train: 50000 images, 32×32×3, 10 classes`.
    pub fn describe(&self) -> String {
        let size = match self.native_size() {
            Some((h, w)) => format!("{h}×{w}×{}", self.channels),
            None => format!("variable size, {} channels", self.channels),
        };
        let classes = match self.num_classes {
            Some(k) => format!("{k} classes"),
            None => "unlabelled".to_string(),
        };
        format!("{}: {} images, {size}, {classes}", self.name, self.len)
    }
}

/// The parts of a dataset the trainer uses.
#[derive(Clone, Debug)]
pub struct Splits {
    /// What pretraining iterates (for STL-10: `unlabeled` + `train`).
    pub train: Dataset,
    /// Labelled training images for kNN / linear evaluation, if any.
    pub labelled_train: Option<Dataset>,
    /// Held-out labelled images, if the dataset has them.
    pub test: Option<Dataset>,
}

impl Splits {
    /// Splits whose pretraining set is also the labelled training set (when
    /// it has labels).
    fn new(train: Dataset, test: Option<Dataset>) -> Splits {
        let labelled_train = train.labels.is_some().then(|| train.clone());
        Splits {
            train,
            labelled_train,
            test,
        }
    }
}

impl Splits {
    /// Warnings about the labels of every split, for the log.
    pub fn label_warnings(&self) -> Vec<String> {
        [
            Some(&self.train),
            self.labelled_train.as_ref(),
            self.test.as_ref(),
        ]
        .into_iter()
        .flatten()
        .filter_map(Dataset::sparse_labels_warning)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
    }
}

/// Opens the dataset in directory `path`, detecting its format:
///
/// - MNIST / Fashion-MNIST IDX files (`train-images-idx3-ubyte[.gz]`,
///   `train-labels-idx1-ubyte[.gz]`, optional `t10k-*` test files);
/// - CIFAR-10 binary (`data_batch_1.bin`..`data_batch_5.bin`, `test_batch.bin`),
///   or the folder holding `cifar-10-batches-bin/`;
/// - CIFAR-100 binary (`train.bin`, `test.bin`; fine labels), or the folder
///   holding `cifar-100-binary/`;
/// - STL-10 binary (`unlabeled_X.bin`, `train_X.bin`, `train_y.bin`,
///   `test_X.bin`, `test_y.bin`), or the folder holding `stl10_binary/`;
/// - otherwise an ImageFolder: one subfolder of `.jpg/.jpeg/.png` files per
///   class (classes sorted by name), or `train/` plus `val/` or `test/`
///   folders of that shape;
/// - or, for a file, a pack written by `trainer pack` ([`pack`]).
///
/// Truncated or malformed files give [`Error::Data`]; nothing is downloaded.
pub fn open(path: &Path) -> Result<Splits> {
    if !path.exists() {
        return Err(missing(path));
    }
    if path.is_file() && pack::detect(path) {
        return open_pack(path);
    }
    if !path.is_dir() {
        return Err(Error::data(
            path,
            "expected a dataset directory (MNIST-style IDX files, CIFAR-10/100 or \
             STL-10 binaries, or an ImageFolder of class subfolders) or a pack \
             written by `trainer pack`",
        ));
    }
    let dir = format_dir(path);
    let splits = if idx::detect(&dir) {
        idx::open(&dir)
    } else if dir.join("data_batch_1.bin").is_file() {
        cifar::open_cifar10(&dir)
    } else if dir.join("train.bin").is_file() {
        cifar::open_cifar100(&dir)
    } else if stl10::detect(&dir) {
        stl10::open(&dir)
    } else {
        folder::open(&dir)
    }?;
    check_test_labels(&splits, &dir)?;
    Ok(splits)
}

/// A pack's training records, and its `val` records as the test split.
fn open_pack(path: &Path) -> Result<Splits> {
    let pack = Arc::new(pack::Pack::open(path)?);
    let (n, train_len) = (pack.records.len(), pack.train_len);
    if train_len == 0 {
        return Err(Error::data(path, "the pack has no training images"));
    }
    let train = Dataset::packed("pack train".into(), &pack, 0..train_len);
    let test = (n > train_len).then(|| Dataset::packed("pack val".into(), &pack, train_len..n));
    Ok(Splits::new(train, test))
}

/// The folder holding a dataset's files: `path`, or the folder a release
/// unpacks to inside it (`cifar-10-batches-bin/` and the like).
fn format_dir(path: &Path) -> PathBuf {
    ["cifar-10-batches-bin", "cifar-100-binary", "stl10_binary"]
        .iter()
        .map(|sub| path.join(sub))
        .find(|inner| inner.is_dir())
        .unwrap_or_else(|| path.to_path_buf())
}

/// Refuses test labels that name no class of the labelled training split,
/// when the dataset opens rather than at the final evaluation.
fn check_test_labels(splits: &Splits, dir: &Path) -> Result<()> {
    let (Some(train), Some(test)) = (&splits.labelled_train, &splits.test) else {
        return Ok(());
    };
    let (Some(classes), Some(labels)) = (train.num_classes, &test.labels) else {
        return Ok(());
    };
    match labels
        .iter()
        .enumerate()
        .find(|&(_, &l)| !usize::try_from(l).is_ok_and(|l| l < classes))
    {
        Some((i, label)) => Err(Error::data(
            dir,
            format!(
                "{}: image {i} has label {label}, but {} has classes 0..{classes}",
                test.name, train.name
            ),
        )),
        None => Ok(()),
    }
}

/// The error for a dataset path that does not exist.
fn missing(path: &Path) -> Error {
    if path == Path::new(FASHION_MNIST_DIR) {
        Error::data(
            path,
            "Fashion-MNIST is not installed; install it with \
             `apt-get install dataset-fashion-mnist`",
        )
    } else {
        Error::data(path, "no such dataset directory")
    }
}

/// Reads `path` as back-to-back records of `record_len` bytes, handing each
/// to `f` in turn, and returns how many there were. A file that is empty or
/// not a whole number of records is a data error.
fn read_records(
    path: &Path,
    record_len: usize,
    mut f: impl FnMut(&[u8]) -> Result<()>,
) -> Result<usize> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len == 0 || len % record_len as u64 != 0 {
        return Err(Error::data(
            path,
            format!("{len} bytes is not a whole number of {record_len}-byte records (truncated?)"),
        ));
    }
    let count = (len / record_len as u64) as usize;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut record = vec![0u8; record_len];
    for _ in 0..count {
        reader
            .read_exact(&mut record)
            .map_err(|e| Error::io(path, e))?;
        f(&record)?;
    }
    Ok(count)
}

/// The largest label plus one, for readers whose class count is not fixed.
fn class_count(labels: &[i64]) -> usize {
    labels.iter().max().map_or(0, |&m| m as usize + 1)
}

#[cfg(test)]
mod tests {
    use super::testutil::TempDir;
    use super::*;

    #[test]
    fn missing_paths_and_files_are_data_errors() {
        let dir = TempDir::new("data-missing");
        let err = open(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(err, Error::Data { .. }), "{err}");
        let file = dir.path().join("file.bin");
        std::fs::write(&file, b"x").unwrap();
        let err = open(&file).unwrap_err();
        assert!(
            err.to_string().contains("expected a dataset directory"),
            "{err}"
        );
    }

    #[test]
    fn fashion_mnist_hint_names_the_package() {
        let err = missing(Path::new(FASHION_MNIST_DIR));
        assert!(
            err.to_string()
                .contains("apt-get install dataset-fashion-mnist")
        );
    }

    #[test]
    fn from_pixels_validates_and_indexes() {
        let pixels: Vec<u8> = (0..2 * 2 * 2 * 3).map(|v| v as u8).collect();
        let ds = Dataset::from_pixels("t", pixels, (2, 2, 3), Some(vec![0, 4])).unwrap();
        assert_eq!((ds.len(), ds.channels(), ds.num_classes()), (2, 3, Some(5)));
        assert_eq!(ds.native_size(), Some((2, 2)));
        assert_eq!(ds.image(1).unwrap().data, (12..24).collect::<Vec<u8>>());
        assert_eq!((ds.label(1), ds.label(2)), (Some(4), None));
        assert_eq!(ds.describe(), "t: 2 images, 2×2×3, 5 classes");
        assert!(Dataset::from_pixels("t", vec![0; 13], (2, 2, 3), None).is_err());
        assert!(Dataset::from_pixels("t", vec![0; 12], (2, 2, 3), Some(vec![])).is_err());
        assert!(Dataset::from_pixels("t", vec![0; 12], (2, 2, 3), Some(vec![-1])).is_err());
        assert!(Dataset::from_pixels("t", vec![0; 8], (2, 2, 2), None).is_err());
    }

    #[test]
    fn multi_block_indexing_crosses_blocks() {
        let a = Arc::new(vec![1u8; 4]);
        let b = Arc::new(vec![2u8; 8]);
        let ds = Dataset::memory("t".into(), vec![a, b], (2, 2, 1), None, None);
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.image(0).unwrap().data, vec![1; 4]);
        assert_eq!(ds.image(2).unwrap().data, vec![2; 4]);
        assert_eq!(ds.describe(), "t: 3 images, 2×2×1, unlabelled");
    }

    #[test]
    fn image_errors_convert_to_data_errors() {
        let e = ImageError {
            path: "x.jpg".into(),
            detail: "bad".into(),
        };
        assert!(matches!(Error::from(e), Error::Data { .. }));
    }
}
