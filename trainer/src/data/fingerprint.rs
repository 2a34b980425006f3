//! A cheap fingerprint of a dataset, saved with a run so that `--resume`
//! refuses data that changed: what the readers found (format, counts, image
//! size, classes) and the names, sizes and modification times of the files
//! they read, hashed.

use super::{Dataset, Pixels, Splits};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// Every file name the fixed-size readers use; whichever exist in the
/// format's folder are the dataset's files.
const KNOWN_FILES: &[&str] = &[
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
    "test_batch.bin",
    "train.bin",
    "test.bin",
    "unlabeled_X.bin",
    "train_X.bin",
    "train_y.bin",
    "test_X.bin",
    "test_y.bin",
];

/// What identifies a dataset's contents, cheaply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Fingerprint {
    /// Each split as the readers describe it: name, count, size, classes.
    pub splits: Vec<String>,
    /// Files read.
    pub files: usize,
    /// Their total size in bytes.
    pub bytes: u64,
    /// FNV-1a hash of each file's path (relative to the dataset folder),
    /// size and modification time, in hex.
    pub index: String,
}

impl Fingerprint {
    /// The fingerprint of `splits`, opened from `root` (`None`: generated).
    pub fn of(splits: &Splits, root: Option<&Path>) -> Fingerprint {
        let sets = [
            Some(&splits.train),
            splits.labelled_train.as_ref(),
            splits.test.as_ref(),
        ];
        let described: Vec<String> = sets.iter().flatten().map(|d| d.describe()).collect();
        let files = root.map_or_else(Vec::new, |r| source_files(r, &sets));
        let mut hash = Fnv::new();
        let mut bytes = 0;
        for file in &files {
            let meta = std::fs::metadata(file).ok();
            let size = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            bytes += size;
            let relative = root.and_then(|r| file.strip_prefix(r).ok()).unwrap_or(file);
            hash.write(relative.as_os_str().as_encoded_bytes());
            hash.write(&size.to_le_bytes());
            hash.write(&modified.to_le_bytes());
        }
        Fingerprint {
            splits: described,
            files: files.len(),
            bytes,
            index: format!("{:016x}", hash.0),
        }
    }

    /// What differs from `earlier`, one phrase per field; empty if nothing.
    pub fn changes_since(&self, earlier: &Fingerprint) -> Vec<String> {
        let mut changes = Vec::new();
        if self.splits != earlier.splits {
            changes.push(format!(
                "splits were [{}], now [{}]",
                earlier.splits.join("; "),
                self.splits.join("; ")
            ));
        }
        if self.files != earlier.files {
            changes.push(format!("{} files, now {}", earlier.files, self.files));
        }
        if self.bytes != earlier.bytes {
            changes.push(format!("{} bytes, now {}", earlier.bytes, self.bytes));
        }
        if self.index != earlier.index && changes.is_empty() {
            changes.push("file names, sizes or modification times differ".into());
        }
        changes
    }
}

/// The files behind `sets`: an ImageFolder's images, a pack, or the known files of a
/// fixed-size format in the folder [`super::open`] read.
fn source_files(root: &Path, sets: &[Option<&Dataset>]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = sets
        .iter()
        .flatten()
        .filter_map(|d| match &d.pixels {
            Pixels::Files(f) => Some(f.clone()),
            Pixels::Packed { pack, .. } => Some(vec![pack.path().to_path_buf()]),
            Pixels::Memory { .. } => None,
        })
        .flatten()
        .collect();
    if files.is_empty() {
        let dir = super::format_dir(root);
        files = KNOWN_FILES
            .iter()
            .map(|name| dir.join(name))
            .filter(|p| p.is_file())
            .collect();
    }
    files.sort();
    files.dedup();
    files
}

/// 64-bit FNV-1a: stable across Rust versions, unlike `DefaultHasher`.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn fingerprint_changes_with_a_file_and_names_the_change() {
        let dir = TempDir::new("fingerprint");
        let root = dir.path();
        for class in ["a", "b"] {
            write_image(&root.join(format!("{class}/1.png")), 4, 1);
        }
        let before = Fingerprint::of(&super::super::open(root).unwrap(), Some(root));
        assert_eq!(
            before,
            Fingerprint::of(&super::super::open(root).unwrap(), Some(root))
        );
        write_image(&root.join("b/2.png"), 4, 2);
        let after = Fingerprint::of(&super::super::open(root).unwrap(), Some(root));
        let changes = after.changes_since(&before);
        assert!(
            changes.iter().any(|c| c.contains("2 files, now 3")),
            "{changes:?}"
        );
    }
}
