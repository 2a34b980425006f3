//! ImageFolder: one subfolder of `.jpg`/`.jpeg`/`.png` files per class,
//! classes numbered in name order (torchvision's `ImageFolder`), optionally
//! under `train/` and `val/` (or `test/`). Files are decoded on demand and
//! always converted to RGB.

use super::{Dataset, Splits};
use crate::{Error, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Reads `root` as one labelled split, or as `train/` + `val/`|`test/`.
pub(super) fn open(root: &Path) -> Result<Splits> {
    let train_dir = root.join("train");
    if !train_dir.is_dir() {
        let (train, _) = scan(root, "ImageFolder", None)?;
        return Ok(Splits::new(train, None));
    }
    let (train, classes) = scan(&train_dir, "ImageFolder train", None)?;
    let test = match ["val", "test"]
        .map(|s| root.join(s))
        .into_iter()
        .find(|p| p.is_dir())
    {
        Some(dir) => Some(scan(&dir, "ImageFolder val", Some(&classes))?.0),
        None => None,
    };
    Ok(Splits::new(train, test))
}

/// Lists the images under the class folders of `dir`. Labels follow
/// `classes` when given (a validation split uses the training classes),
/// else the sorted folder names, which are returned. Names are compared as
/// the OS gives them: two folders whose names differ only in bytes that are
/// not UTF-8 are two classes.
fn scan(dir: &Path, name: &str, classes: Option<&[OsString]>) -> Result<(Dataset, Vec<OsString>)> {
    let mut class_dirs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let class = path.file_name().map(OsString::from);
        let hidden = |c: &OsString| c.as_encoded_bytes().starts_with(b".");
        if let Some(class) = class.filter(|c| !hidden(c) && path.is_dir()) {
            class_dirs.push((class, path));
        }
    }
    class_dirs.sort();
    if class_dirs.is_empty() {
        return Err(Error::data(
            dir,
            "not a recognised dataset: no class subfolders (an ImageFolder has one \
             folder of .jpg/.jpeg/.png files per class)",
        ));
    }
    let classes: Vec<OsString> = match classes {
        Some(c) => c.to_vec(),
        None => class_dirs.iter().map(|(c, _)| c.clone()).collect(),
    };

    let mut files = Vec::new();
    let mut labels = Vec::new();
    for (class, path) in &class_dirs {
        let label = classes
            .iter()
            .position(|c| c == class)
            .ok_or_else(|| Error::data(path, "class folder not present in the training split"))?;
        let before = files.len();
        collect_images(path, &mut files)?;
        labels.resize(files.len(), label as i64);
        files[before..].sort();
    }
    if files.is_empty() {
        return Err(Error::data(
            dir,
            "no .jpg/.jpeg/.png images in the class folders",
        ));
    }
    let names = classes
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let dataset = Dataset::files(name.to_string(), files, labels, names);
    Ok((dataset, classes))
}

/// Appends the image files under `dir`, recursing into real subfolders
/// (not symlinked ones, so link cycles cannot trap us).
fn collect_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_images(&path, out)?;
        } else if is_image_name(&path) && path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// Whether the extension is `.jpg`, `.jpeg` or `.png` (any case).
fn is_image_name(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        ["jpg", "jpeg", "png"]
            .iter()
            .any(|x| e.eq_ignore_ascii_case(x))
    })
}

#[cfg(test)]
mod tests {
    use super::super::{open, testutil::*};
    use super::*;

    /// The committed fixture for end-to-end tests.
    fn fixture_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/imagefolder")
    }

    #[test]
    fn reads_a_flat_image_folder_and_skips_corrupt_files() {
        let dir = TempDir::new("folder");
        let root = dir.path();
        write_image(&root.join("b_dog/1.png"), 6, 1);
        write_image(&root.join("b_dog/nested/2.JPG"), 5, 2);
        write_image(&root.join("a_cat/3.jpeg"), 4, 3);
        write_corrupt_jpeg(&root.join("a_cat/0_bad.jpg"));
        std::fs::write(root.join("a_cat/notes.txt"), "ignored").unwrap();
        std::fs::create_dir(root.join(".hidden")).unwrap();
        std::fs::create_dir(root.join("c_empty")).unwrap();

        let s = open(root).unwrap();
        let ds = &s.train;
        assert_eq!((ds.len(), ds.channels(), ds.num_classes()), (4, 3, Some(3)));
        assert_eq!(ds.native_size(), None);
        assert!(s.test.is_none() && s.labelled_train.is_some());
        let labels: Vec<_> = (0..4).map(|i| ds.label(i).unwrap()).collect();
        assert_eq!(labels, [0, 0, 1, 1]);
        // Sorted within the class: the corrupt file comes first.
        let err = ds.image(0).unwrap_err();
        assert!(err.path.ends_with("a_cat/0_bad.jpg"), "{err}");
        let img = ds.image(1).unwrap();
        assert_eq!(
            (img.height, img.width, img.channels, img.data.len()),
            (4, 4, 3, 48)
        );
        let png = ds.image(2).unwrap();
        assert_eq!(png.data[..3], [40, 0, 0]); // lossless: the exact pixel
        assert_eq!(ds.image(3).unwrap().width, 5);
    }

    #[test]
    fn class_names_that_differ_only_in_invalid_utf8_are_two_classes() {
        use std::os::unix::ffi::OsStrExt;
        let dir = TempDir::new("folder-bytes");
        for (i, name) in [&b"cat\xff"[..], &b"cat\xfe"[..]].into_iter().enumerate() {
            let class = dir.path().join(std::ffi::OsStr::from_bytes(name));
            write_image(&class.join("1.png"), 3, i as u8);
        }
        let s = open(dir.path()).unwrap();
        assert_eq!(s.train.num_classes(), Some(2));
        assert_eq!((s.train.label(0), s.train.label(1)), (Some(0), Some(1)));
    }

    #[test]
    fn reads_train_and_val_splits_with_training_classes() {
        let dir = TempDir::new("folder-split");
        let root = dir.path();
        for class in ["x", "y", "z"] {
            write_image(&root.join(format!("train/{class}/a.png")), 3, 0);
        }
        write_image(&root.join("val/z/a.png"), 3, 0);
        let s = open(root).unwrap();
        assert_eq!(s.train.len(), 3);
        let val = s.test.unwrap();
        assert_eq!(
            (val.len(), val.label(0), val.num_classes()),
            (1, Some(2), Some(3))
        );

        write_image(&root.join("val/w/a.png"), 3, 0);
        let err = open(root).unwrap_err();
        assert!(
            err.to_string()
                .contains("not present in the training split"),
            "{err}"
        );
    }

    #[test]
    fn folders_without_images_are_data_errors() {
        let dir = TempDir::new("folder-empty");
        let err = open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("no class subfolders"), "{err}");
        std::fs::create_dir(dir.path().join("cls")).unwrap();
        let err = open(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("no .jpg/.jpeg/.png images"),
            "{err}"
        );
    }

    #[test]
    fn committed_fixture_opens() {
        let s = open(&fixture_dir()).unwrap();
        assert_eq!((s.train.len(), s.train.num_classes()), (8, Some(2)));
        for i in 0..s.train.len() {
            let img = s.train.image(i).unwrap();
            assert_eq!((img.height, img.width, img.channels), (8, 8, 3));
        }
    }

    /// Regenerates `tests/fixtures/imagefolder`: two classes (horizontal and
    /// vertical stripes) of four 8×8 images, two PNG and two JPEG each.
    /// Run with `cargo test -p trainer --lib write_fixture -- --ignored`.
    #[test]
    #[ignore]
    fn write_fixture() {
        let root = fixture_dir();
        let _ = std::fs::remove_dir_all(&root);
        for (class, vertical) in [("horizontal", false), ("vertical", true)] {
            for (i, ext) in ["png", "png", "jpg", "jpg"].iter().enumerate() {
                let tint = [60 + 40 * i as u8, 200 - 30 * i as u8, 120];
                let img = image::RgbImage::from_fn(8, 8, |x, y| {
                    let t = if vertical { x } else { y } as usize;
                    let on = (t + i) % 4 < 2;
                    image::Rgb(tint.map(|v| if on { v } else { v / 4 }))
                });
                let path = root.join(format!("{class}/{i}.{ext}"));
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                img.save(&path).unwrap();
            }
        }
    }
}
