//! MNIST-style IDX files (MNIST, Fashion-MNIST), plain or gzipped.
//!
//! Layout: a big-endian header — magic `0x0000_08NN` (`0x08` = unsigned
//! bytes, `NN` = number of dimensions), then one `u32` per dimension — and
//! the bytes. Images are `0x00000803` (count, rows, cols), labels
//! `0x00000801` (count).

use super::{Dataset, Splits, class_count};
use crate::{Error, Result};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Whether `dir` holds MNIST-style training images.
pub(super) fn detect(dir: &Path) -> bool {
    find(dir, "train-images-idx3-ubyte").is_some()
}

/// Reads the train split and, if present, the `t10k` test split.
pub(super) fn open(dir: &Path) -> Result<Splits> {
    let train = split(dir, "train", true)?.ok_or_else(|| Error::data(dir, "no training images"))?;
    Ok(Splits::new(train, split(dir, "t10k", false)?))
}

/// `dir/name` or `dir/name.gz`, whichever exists.
fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join(format!("{name}.gz"))]
        .into_iter()
        .find(|p| p.is_file())
}

/// The images and labels with file prefix `prefix`; `None` when the images
/// are absent and not `required`.
fn split(dir: &Path, prefix: &str, required: bool) -> Result<Option<Dataset>> {
    let images_name = format!("{prefix}-images-idx3-ubyte");
    let labels_name = format!("{prefix}-labels-idx1-ubyte");
    let Some(images_path) = find(dir, &images_name) else {
        return if required {
            Err(Error::data(dir, format!("missing {images_name}[.gz]")))
        } else {
            Ok(None)
        };
    };
    let labels_path = find(dir, &labels_name)
        .ok_or_else(|| Error::data(dir, format!("missing {labels_name}[.gz]")))?;

    let (dims, pixels) = parse(&images_path, 3)?;
    let (n, rows, cols) = (dims[0], dims[1], dims[2]);
    if rows == 0 || cols == 0 {
        return Err(Error::data(
            &images_path,
            format!("empty images ({rows}×{cols})"),
        ));
    }
    let (label_dims, labels) = parse(&labels_path, 1)?;
    if label_dims[0] != n {
        return Err(Error::data(
            &labels_path,
            format!(
                "{} labels for {n} images in {}",
                label_dims[0],
                images_path.display()
            ),
        ));
    }
    let labels: Vec<i64> = labels.into_iter().map(i64::from).collect();
    let num_classes = class_count(&labels);
    let name = format!("IDX {prefix}");
    Ok(Some(Dataset::memory(
        name,
        vec![Arc::new(pixels)],
        (rows, cols, 1),
        Some(labels),
        Some(num_classes),
    )))
}

/// Reads an IDX file of unsigned bytes with `rank` dimensions, plain or
/// gzipped: its dimensions and payload, checked against each other.
fn parse(path: &Path, rank: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut magic = [0u8; 2];
    let n = file.read(&mut magic).map_err(|e| Error::io(path, e))?;
    let head = std::io::Cursor::new(magic[..n].to_vec());
    if magic[..n] == [0x1f, 0x8b] {
        parse_from(path, GzDecoder::new(head.chain(file)), rank)
    } else {
        parse_from(path, head.chain(file), rank)
    }
}

/// [`parse`] from a reader. Reads no more than the header declares plus one
/// byte, so a gzip bomb (or a huge file) fails at that size instead of
/// filling memory.
fn parse_from(path: &Path, reader: impl Read, rank: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let bad_gzip = |e: std::io::Error| Error::data(path, format!("bad gzip data: {e}"));
    let header_len = 4 + 4 * rank;
    let mut reader = std::io::BufReader::new(reader);
    let mut header = Vec::with_capacity(header_len);
    (&mut reader)
        .take(header_len as u64)
        .read_to_end(&mut header)
        .map_err(bad_gzip)?;
    if header.len() < header_len {
        return Err(Error::data(
            path,
            format!("truncated IDX header ({} bytes)", header.len()),
        ));
    }
    let word =
        |i: usize| u32::from_be_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let expected = 0x0800 | rank as u32;
    if word(0) != expected {
        return Err(Error::data(
            path,
            format!(
                "bad IDX magic 0x{:08x} (expected 0x{expected:08x})",
                word(0)
            ),
        ));
    }
    let dims: Vec<usize> = (0..rank).map(|d| word(4 + 4 * d) as usize).collect();
    let payload = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .filter(|&p| p < u64::MAX)
        .ok_or_else(|| Error::data(path, format!("header says {dims:?}: too large")))?;
    // A gzip bomb's header may claim as much as its stream expands to.
    if let Some((bytes, host)) = crate::limits::available_memory(engine::Device::Cpu)
        && payload as f64 > bytes
    {
        return Err(Error::data(
            path,
            format!("header says {dims:?}: {payload} bytes, more than {host} has"),
        ));
    }
    // Grown as data arrives, so a header claiming terabytes allocates nothing.
    let mut bytes = Vec::new();
    reader
        .take(payload + 1)
        .read_to_end(&mut bytes)
        .map_err(bad_gzip)?;
    if bytes.len() as u64 != payload {
        let held = if bytes.len() as u64 > payload {
            "more".to_string()
        } else {
            bytes.len().to_string()
        };
        return Err(Error::data(
            path,
            format!("header says {dims:?} but the file holds {held} data bytes"),
        ));
    }
    Ok((dims, bytes))
}

#[cfg(test)]
mod tests {
    use super::super::{FASHION_MNIST_DIR, testutil::TempDir};
    use super::*;
    use flate2::{Compression, write::GzEncoder};
    use std::io::Write;

    fn idx_images(n: u32, rows: u32, cols: u32) -> Vec<u8> {
        let mut b = vec![0, 0, 8, 3];
        for d in [n, rows, cols] {
            b.extend(d.to_be_bytes());
        }
        b.extend((0..n * rows * cols).map(|i| (i % 251) as u8));
        b
    }

    fn idx_labels(labels: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 8, 1];
        b.extend((labels.len() as u32).to_be_bytes());
        b.extend(labels);
        b
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// Writes train (3 images) and test (2 images) files, gzipped or not.
    fn write_set(dir: &Path, gzip: bool) {
        let files = [
            ("train-images-idx3-ubyte", idx_images(3, 2, 4)),
            ("train-labels-idx1-ubyte", idx_labels(&[1, 0, 9])),
            ("t10k-images-idx3-ubyte", idx_images(2, 2, 4)),
            ("t10k-labels-idx1-ubyte", idx_labels(&[2, 3])),
        ];
        for (name, bytes) in files {
            if gzip {
                std::fs::write(dir.join(format!("{name}.gz")), gz(&bytes)).unwrap();
            } else {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
    }

    #[test]
    fn reads_plain_and_gzipped_idx() {
        for gzip in [false, true] {
            let dir = TempDir::new("idx");
            write_set(dir.path(), gzip);
            let s = super::super::open(dir.path()).unwrap();
            assert_eq!(s.train.len(), 3);
            assert_eq!(s.train.native_size(), Some((2, 4)));
            assert_eq!(s.train.channels(), 1);
            assert_eq!(s.train.num_classes(), Some(10));
            assert_eq!(s.train.label(2), Some(9));
            let img = s.train.image(1).unwrap();
            assert_eq!(img.data, (8..16).collect::<Vec<u8>>());
            assert_eq!((img.height, img.width, img.channels), (2, 4, 1));
            let test = s.test.unwrap();
            assert_eq!((test.len(), test.label(1)), (2, Some(3)));
            assert_eq!(s.labelled_train.unwrap().len(), 3);
        }
    }

    #[test]
    fn malformed_idx_files_are_data_errors() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("truncated pixels", idx_images(3, 2, 4)[..30].to_vec()),
            ("truncated header", vec![0, 0, 8, 3, 0]),
            ("wrong magic", idx_labels(&[1, 2, 3])),
            ("truncated gzip", gz(&idx_images(3, 2, 4))[..20].to_vec()),
            ("corrupt gzip", {
                let mut g = gz(&idx_images(3, 2, 4));
                let n = g.len();
                g[n - 6] ^= 0xff; // the CRC / length trailer
                g
            }),
        ];
        for (what, bytes) in cases {
            let dir = TempDir::new("idx-bad");
            write_set(dir.path(), false);
            std::fs::write(dir.path().join("train-images-idx3-ubyte"), bytes).unwrap();
            let err = super::super::open(dir.path()).unwrap_err();
            assert!(matches!(err, Error::Data { .. }), "{what}: {err}");
        }
        // Label count mismatch.
        let dir = TempDir::new("idx-bad");
        write_set(dir.path(), false);
        std::fs::write(dir.path().join("train-labels-idx1-ubyte"), idx_labels(&[1])).unwrap();
        let err = super::super::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("1 labels for 3 images"), "{err}");
        // Test images without test labels.
        let dir = TempDir::new("idx-bad");
        write_set(dir.path(), false);
        std::fs::remove_file(dir.path().join("t10k-labels-idx1-ubyte")).unwrap();
        let err = super::super::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("t10k-labels"), "{err}");
    }

    #[test]
    fn reading_stops_at_the_declared_size() {
        /// Counts the bytes handed out.
        struct Counted<R>(R, std::rc::Rc<std::cell::Cell<u64>>);
        impl<R: Read> Read for Counted<R> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.read(buf)?;
                self.1.set(self.1.get() + n as u64);
                Ok(n)
            }
        }
        // A header for 3 images of 2×4, then a gigabyte where 24 bytes belong.
        let header = idx_images(3, 2, 4)[..16].to_vec();
        let count = std::rc::Rc::new(std::cell::Cell::new(0));
        let endless = Counted(
            header.chain(std::io::repeat(7).take(1 << 30)),
            count.clone(),
        );
        let err = parse_from(Path::new("bomb"), endless, 3).unwrap_err();
        assert!(err.to_string().contains("holds more data bytes"), "{err}");
        assert!(count.get() < 1 << 20, "read {} bytes", count.get());

        // The same through gzip: a small file that inflates far beyond its header.
        let mut bomb = idx_images(3, 2, 4)[..16].to_vec();
        bomb.extend(vec![0u8; 64 << 20]);
        let dir = TempDir::new("idx-bomb");
        write_set(dir.path(), false);
        std::fs::write(dir.path().join("train-images-idx3-ubyte.gz"), gz(&bomb)).unwrap();
        std::fs::remove_file(dir.path().join("train-images-idx3-ubyte")).unwrap();
        let err = super::super::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("holds more data bytes"), "{err}");

        // A header claiming what the stream really expands to is refused if
        // no machine's memory could hold it, before reading the stream.
        let mut huge = vec![0, 0, 8, 3];
        for d in [65535u32, 65535, 65535] {
            huge.extend(d.to_be_bytes());
        }
        let count = std::rc::Rc::new(std::cell::Cell::new(0));
        let claimed = Counted(huge.chain(std::io::repeat(7).take(1 << 30)), count.clone());
        let err = parse_from(Path::new("bomb"), claimed, 3).unwrap_err();
        assert!(err.to_string().contains("more than the host"), "{err}");
        assert_eq!(count.get(), 16, "read past the header");
    }

    #[test]
    fn reads_installed_fashion_mnist() {
        if !Path::new(FASHION_MNIST_DIR).is_dir() {
            println!("skipping: {FASHION_MNIST_DIR} is absent");
            return;
        }
        let s = super::super::open(std::path::Path::new(super::super::FASHION_MNIST_DIR)).unwrap();
        assert_eq!(s.train.len(), 60_000);
        assert_eq!(s.train.native_size(), Some((28, 28)));
        assert_eq!(s.train.num_classes(), Some(10));
        let test = s.test.unwrap();
        assert_eq!(test.len(), 10_000);
        // Balanced classes: 6000 training images each.
        let mut counts = [0usize; 10];
        for i in 0..s.train.len() {
            counts[s.train.label(i).unwrap() as usize] += 1;
        }
        assert_eq!(counts, [6000; 10]);
        // Real images: neither blank nor saturated.
        let img = s.train.image(0).unwrap();
        let mean = img.data.iter().map(|&v| v as f64).sum::<f64>() / img.data.len() as f64;
        assert!(mean > 5.0 && mean < 250.0, "mean {mean}");
    }
}
