//! Helpers shared by the data and loader tests.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("trainer-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a `side × side` RGB image whose pixels encode `seed`, as PNG or
/// JPEG depending on the extension of `path`.
pub(crate) fn write_image(path: &Path, side: u32, seed: u8) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    let img = image::RgbImage::from_fn(side, side, |x, y| {
        image::Rgb([
            seed.wrapping_mul(40),
            (x * 255 / side) as u8,
            (y * 255 / side) as u8,
        ])
    });
    img.save(path).unwrap();
}

/// Writes a file named like a JPEG that is not one: a JPEG header cut short.
pub(crate) fn write_corrupt_jpeg(path: &Path) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, [0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, b'J', b'F']).unwrap();
}

/// A `w × h` JPEG (TurboJPEG, quality 90, 4:2:0) of smooth gradients whose
/// blue channel depends on `seed`.
pub(crate) fn jpeg_bytes(w: usize, h: usize, seed: usize) -> Vec<u8> {
    let pixels: Vec<u8> = (0..w * h)
        .flat_map(|i| {
            let (x, y) = (i % w, i / w);
            [
                (x * 255 / w) as u8,
                (y * 255 / h) as u8,
                (seed * 50 % 256) as u8,
            ]
        })
        .collect();
    let image = turbojpeg::Image {
        pixels: &pixels[..],
        width: w,
        pitch: w * 3,
        height: h,
        format: turbojpeg::PixelFormat::RGB,
    };
    turbojpeg::compress(image, 90, turbojpeg::Subsamp::Sub2x2)
        .unwrap()
        .to_vec()
}
