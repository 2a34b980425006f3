//! CIFAR-10 and CIFAR-100 binary versions.
//!
//! Each record is the label byte(s) followed by a 32×32 RGB image stored
//! channel-major (1024 red, 1024 green, 1024 blue bytes, rows in order).
//! CIFAR-10 has one label byte; CIFAR-100 has two (coarse, fine) and we use
//! the fine label.

use super::{Dataset, Splits, read_records};
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const SIDE: usize = 32;
const PLANE: usize = SIDE * SIDE;

/// `data_batch_1.bin`..`data_batch_5.bin` and `test_batch.bin` (optional).
pub(super) fn open_cifar10(dir: &Path) -> Result<Splits> {
    let train_files: Vec<PathBuf> = (1..=5)
        .map(|i| dir.join(format!("data_batch_{i}.bin")))
        .collect();
    let train = read("CIFAR-10 train", &train_files, 1, 10)?;
    let test = optional(dir.join("test_batch.bin"), |p| {
        read("CIFAR-10 test", &[p], 1, 10)
    })?;
    Ok(Splits::new(train, test))
}

/// `train.bin` and `test.bin` (optional), fine labels.
pub(super) fn open_cifar100(dir: &Path) -> Result<Splits> {
    let train = read("CIFAR-100 train", &[dir.join("train.bin")], 2, 100)?;
    let test = optional(dir.join("test.bin"), |p| {
        read("CIFAR-100 test", &[p], 2, 100)
    })?;
    Ok(Splits::new(train, test))
}

/// Reads `path` with `read` if it exists.
fn optional(
    path: PathBuf,
    read: impl FnOnce(PathBuf) -> Result<Dataset>,
) -> Result<Option<Dataset>> {
    if path.is_file() {
        read(path).map(Some)
    } else {
        Ok(None)
    }
}

/// Reads the records of `files` into one dataset; the label used is the
/// last of the `label_bytes` bytes.
fn read(name: &str, files: &[PathBuf], label_bytes: usize, num_classes: usize) -> Result<Dataset> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for path in files {
        if !path.is_file() {
            return Err(Error::data(path, format!("missing {name} file")));
        }
        read_records(path, label_bytes + 3 * PLANE, |record| {
            let label = record[label_bytes - 1];
            if label as usize >= num_classes {
                return Err(Error::data(
                    path,
                    format!(
                        "label {label} of record {} is not below {num_classes}",
                        labels.len()
                    ),
                ));
            }
            labels.push(i64::from(label));
            let chw = &record[label_bytes..];
            pixels.extend((0..PLANE).flat_map(|p| [chw[p], chw[PLANE + p], chw[2 * PLANE + p]]));
            Ok(())
        })?;
    }
    Ok(Dataset::memory(
        name.to_string(),
        vec![Arc::new(pixels)],
        (SIDE, SIDE, 3),
        Some(labels),
        Some(num_classes),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::{open, testutil::TempDir};
    use super::*;

    /// A record whose pixel (y, x) in channel c is `(y + 2x + 50c + k) mod 256`.
    fn record(labels: &[u8], k: usize) -> Vec<u8> {
        let mut r = labels.to_vec();
        for c in 0..3 {
            for y in 0..SIDE {
                for x in 0..SIDE {
                    r.push(((y + 2 * x + 50 * c + k) % 256) as u8);
                }
            }
        }
        r
    }

    fn check_pixels(ds: &Dataset, i: usize, k: usize) {
        let img = ds.image(i).unwrap();
        assert_eq!((img.height, img.width, img.channels), (32, 32, 3));
        for (y, x, c) in [(0, 0, 0), (3, 5, 1), (31, 30, 2), (7, 0, 2)] {
            let want = ((y + 2 * x + 50 * c + k) % 256) as u8;
            assert_eq!(img.data[(y * SIDE + x) * 3 + c], want, "({y},{x},{c})");
        }
    }

    fn write_cifar10(dir: &Path) {
        for b in 1..=5 {
            let bytes: Vec<u8> = (0..2)
                .flat_map(|i| record(&[(b + i) as u8 % 10], b * 2 + i))
                .collect();
            std::fs::write(dir.join(format!("data_batch_{b}.bin")), bytes).unwrap();
        }
        std::fs::write(dir.join("test_batch.bin"), record(&[7], 99)).unwrap();
    }

    #[test]
    fn reads_cifar10_in_either_folder() {
        let root = TempDir::new("cifar10");
        let dir = root.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&dir).unwrap();
        write_cifar10(&dir);
        for path in [root.path(), dir.as_path()] {
            let s = open(path).unwrap();
            assert_eq!((s.train.len(), s.train.num_classes()), (10, Some(10)));
            assert_eq!(s.train.label(3), Some(3)); // batch 2, record 1
            check_pixels(&s.train, 3, 5);
            let test = s.test.unwrap();
            assert_eq!((test.len(), test.label(0)), (1, Some(7)));
            check_pixels(&test, 0, 99);
            assert!(s.labelled_train.is_some());
        }
    }

    #[test]
    fn reads_cifar100_fine_labels() {
        let dir = TempDir::new("cifar100");
        let train: Vec<u8> = [record(&[3, 42], 1), record(&[19, 99], 2)].concat();
        std::fs::write(dir.path().join("train.bin"), train).unwrap();
        std::fs::write(dir.path().join("test.bin"), record(&[0, 5], 3)).unwrap();
        let s = open(dir.path()).unwrap();
        assert_eq!((s.train.len(), s.train.num_classes()), (2, Some(100)));
        assert_eq!((s.train.label(0), s.train.label(1)), (Some(42), Some(99)));
        check_pixels(&s.train, 1, 2);
        assert_eq!(s.test.unwrap().label(0), Some(5));
    }

    #[test]
    fn malformed_cifar_files_are_data_errors() {
        let check = |dir: &TempDir, what: &str| {
            let err = open(dir.path()).unwrap_err();
            assert!(matches!(err, Error::Data { .. }), "{what}: {err}");
        };
        let dir = TempDir::new("cifar-bad");
        write_cifar10(dir.path());
        let mut bytes = record(&[1], 0);
        bytes.pop();
        std::fs::write(dir.path().join("data_batch_2.bin"), bytes).unwrap();
        check(&dir, "truncated record");

        let dir = TempDir::new("cifar-bad");
        write_cifar10(dir.path());
        std::fs::write(dir.path().join("test_batch.bin"), record(&[10], 0)).unwrap();
        check(&dir, "label out of range");

        let dir = TempDir::new("cifar-bad");
        write_cifar10(dir.path());
        std::fs::remove_file(dir.path().join("data_batch_4.bin")).unwrap();
        check(&dir, "missing batch");

        let dir = TempDir::new("cifar-bad");
        std::fs::write(dir.path().join("train.bin"), &record(&[1, 2], 0)[..100]).unwrap();
        check(&dir, "truncated CIFAR-100");

        let dir = TempDir::new("cifar-bad");
        std::fs::write(dir.path().join("train.bin"), Vec::new()).unwrap();
        check(&dir, "empty CIFAR-100");
    }
}
