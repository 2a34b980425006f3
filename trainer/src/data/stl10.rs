//! STL-10 binary version (`stl10_binary/`).
//!
//! `*_X.bin` hold 96×96 RGB images, each stored channel-major and, within a
//! channel, column-major (MATLAB order): byte `c·96² + x·96 + y` is pixel
//! (row y, column x) of channel c. `*_y.bin` hold one label byte per image,
//! 1..=10.
//!
//! Pretraining uses `unlabeled` + `train` (100 000 + 5 000 images);
//! evaluation uses `train` and `test`.

use super::{Dataset, Splits, read_records};
use crate::{Error, Result};
use std::path::Path;
use std::sync::Arc;

const SIDE: usize = 96;
const PLANE: usize = SIDE * SIDE;
const CLASSES: usize = 10;

/// Whether `dir` holds STL-10 image files.
pub(super) fn detect(dir: &Path) -> bool {
    dir.join("train_X.bin").is_file() || dir.join("unlabeled_X.bin").is_file()
}

/// Reads whichever of `unlabeled`, `train` and `test` are present
/// (`unlabeled` or `train` is required).
pub(super) fn open(dir: &Path) -> Result<Splits> {
    let block = |stem: &str| -> Result<Option<Arc<Vec<u8>>>> {
        let path = dir.join(format!("{stem}_X.bin"));
        if path.is_file() {
            read_images(&path).map(|p| Some(Arc::new(p)))
        } else {
            Ok(None)
        }
    };
    let dataset = |name: &str, blocks: Vec<Arc<Vec<u8>>>, labels: Option<Vec<i64>>| {
        let num_classes = labels.as_ref().map(|_| CLASSES);
        Dataset::memory(name.into(), blocks, (SIDE, SIDE, 3), labels, num_classes)
    };

    let unlabeled = block("unlabeled")?;
    let train = match block("train")? {
        Some(images) => Some((read_labels(dir, "train", &images)?, images)),
        None => None,
    };
    let test = match block("test")? {
        Some(images) => {
            let labels = read_labels(dir, "test", &images)?;
            Some(dataset("STL-10 test", vec![images], Some(labels)))
        }
        None => None,
    };

    let (pretrain, labelled_train) = match (unlabeled, train) {
        (Some(u), Some((labels, t))) => (
            dataset("STL-10 unlabeled+train", vec![u, t.clone()], None),
            Some(dataset("STL-10 train", vec![t], Some(labels))),
        ),
        (Some(u), None) => (dataset("STL-10 unlabeled", vec![u], None), None),
        (None, Some((labels, t))) => {
            let train = dataset("STL-10 train", vec![t], Some(labels));
            (train.clone(), Some(train))
        }
        (None, None) => return Err(Error::data(dir, "no unlabeled_X.bin or train_X.bin")),
    };
    Ok(Splits {
        train: pretrain,
        labelled_train,
        test,
    })
}

/// Reads a `*_X.bin` file into HWC images.
fn read_images(path: &Path) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    let mut pixels = Vec::with_capacity(len as usize);
    read_records(path, 3 * PLANE, |record| {
        for y in 0..SIDE {
            for x in 0..SIDE {
                let at = x * SIDE + y;
                pixels.extend([record[at], record[PLANE + at], record[2 * PLANE + at]]);
            }
        }
        Ok(())
    })?;
    Ok(pixels)
}

/// Reads `{stem}_y.bin` for the images in `images`, mapping 1..=10 to 0..=9.
fn read_labels(dir: &Path, stem: &str, images: &[u8]) -> Result<Vec<i64>> {
    let path = dir.join(format!("{stem}_y.bin"));
    if !path.is_file() {
        return Err(Error::data(
            &path,
            format!("missing labels for {stem}_X.bin"),
        ));
    }
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let n = images.len() / (3 * PLANE);
    if bytes.len() != n {
        return Err(Error::data(
            &path,
            format!("{} labels for {n} images in {stem}_X.bin", bytes.len()),
        ));
    }
    bytes
        .iter()
        .enumerate()
        .map(|(i, &b)| match b {
            1..=10 => Ok(i64::from(b) - 1),
            _ => Err(Error::data(
                &path,
                format!("label {b} of image {i} is not in 1..=10"),
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{open, testutil::TempDir};
    use super::*;

    /// The stored (transposed) bytes of an image whose HWC pixel (y, x, c)
    /// is `(y + 3x + 7c + k) mod 256`.
    fn stored_image(k: usize) -> Vec<u8> {
        let mut r = vec![0u8; 3 * PLANE];
        for c in 0..3 {
            for x in 0..SIDE {
                for y in 0..SIDE {
                    r[c * PLANE + x * SIDE + y] = ((y + 3 * x + 7 * c + k) % 256) as u8;
                }
            }
        }
        r
    }

    fn write(dir: &Path, name: &str, bytes: Vec<u8>) {
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    fn write_stl(dir: &Path) {
        write(
            dir,
            "unlabeled_X.bin",
            [stored_image(0), stored_image(1)].concat(),
        );
        write(
            dir,
            "train_X.bin",
            [stored_image(2), stored_image(3)].concat(),
        );
        write(dir, "train_y.bin", vec![1, 10]);
        write(dir, "test_X.bin", stored_image(4));
        write(dir, "test_y.bin", vec![5]);
    }

    #[test]
    fn reads_stl10_and_transposes_to_hwc() {
        let root = TempDir::new("stl10");
        let dir = root.path().join("stl10_binary");
        std::fs::create_dir(&dir).unwrap();
        write_stl(&dir);
        let s = open(root.path()).unwrap();
        assert_eq!((s.train.len(), s.train.num_classes()), (4, None));
        let labelled = s.labelled_train.unwrap();
        assert_eq!(
            (labelled.len(), labelled.label(0), labelled.label(1)),
            (2, Some(0), Some(9))
        );
        let test = s.test.unwrap();
        assert_eq!(
            (test.len(), test.label(0), test.num_classes()),
            (1, Some(4), Some(10))
        );
        // Pretraining image 3 is train image 1 (k = 3).
        for (img, k) in [(s.train.image(3).unwrap(), 3), (test.image(0).unwrap(), 4)] {
            assert_eq!((img.height, img.width, img.channels), (96, 96, 3));
            for (y, x, c) in [(0, 1, 0), (1, 0, 0), (5, 17, 2), (95, 2, 1)] {
                let want = ((y + 3 * x + 7 * c + k) % 256) as u8;
                assert_eq!(img.data[(y * SIDE + x) * 3 + c], want, "({y},{x},{c})");
            }
        }
    }

    #[test]
    fn train_only_stl10_pretrains_on_train() {
        let dir = TempDir::new("stl10-train");
        write(dir.path(), "train_X.bin", stored_image(0));
        write(dir.path(), "train_y.bin", vec![3]);
        let s = open(dir.path()).unwrap();
        assert_eq!((s.train.len(), s.train.label(0)), (1, Some(2)));
        assert!(s.labelled_train.is_some() && s.test.is_none());
    }

    #[test]
    fn malformed_stl10_files_are_data_errors() {
        let cases: [(&str, &str, Vec<u8>); 4] = [
            (
                "truncated images",
                "train_X.bin",
                stored_image(0)[..1000].to_vec(),
            ),
            ("label count", "train_y.bin", vec![1]),
            ("label range", "test_y.bin", vec![0]),
            (
                "truncated unlabeled",
                "unlabeled_X.bin",
                vec![0; 3 * PLANE + 1],
            ),
        ];
        for (what, file, bytes) in cases {
            let dir = TempDir::new("stl10-bad");
            write_stl(dir.path());
            write(dir.path(), file, bytes);
            let err = open(dir.path()).unwrap_err();
            assert!(matches!(err, Error::Data { .. }), "{what}: {err}");
        }
    }
}
