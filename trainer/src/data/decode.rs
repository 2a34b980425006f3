//! Decoding encoded images (JPEG, PNG) to RGB, JPEGs optionally at 1/2,
//! 1/4 or 1/8 of their size in the DCT domain.
//!
//! JPEGs go through libjpeg-turbo's TurboJPEG API by default: on the
//! benchmark's ImageNet-like photos it decodes a full-size image about 20%
//! faster than `image`'s zune-jpeg, and only it can decode at a reduced scale
//! (README, "Fast decoding"). `image` decodes everything else, and the JPEGs
//! TurboJPEG cannot turn into RGB (CMYK).

use super::Image;
use std::cell::RefCell;

/// Which library decodes JPEGs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum JpegDecoder {
    /// libjpeg-turbo through the `turbojpeg` crate; supports scaled decoding.
    #[default]
    Turbo,
    /// `image`'s decoder (zune-jpeg); always decodes at full size.
    Image,
}

impl std::str::FromStr for JpegDecoder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "turbojpeg" => Ok(JpegDecoder::Turbo),
            "image" => Ok(JpegDecoder::Image),
            _ => Err(format!("unknown decoder {s:?} (turbojpeg or image)")),
        }
    }
}

/// The most pixels a JPEG can code per byte: Huffman coding spends at least
/// a bit per 8×8 block and channel (a DC code; progressive scans), so 512
/// for grey images; twice that leaves room.
const MAX_PIXELS_PER_BYTE: usize = 1024;

/// The scale divisors of DCT-domain decoding, largest first.
pub const DIVISORS: [usize; 4] = [8, 4, 2, 1];

thread_local! {
    // One TurboJPEG handle per thread: creating one allocates its state.
    static TURBO: RefCell<Option<turbojpeg::Decompressor>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's TurboJPEG decompressor. A handle that
/// reported an error is dropped: libjpeg-turbo 2.x keeps state from a failed
/// decode (its Huffman tables) that fails every later one.
fn with_turbo<T>(
    f: impl FnOnce(&mut turbojpeg::Decompressor) -> Result<T, String>,
) -> Result<T, String> {
    TURBO.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(turbojpeg::Decompressor::new().map_err(|e| e.to_string())?);
        }
        let result = f(slot.as_mut().expect("just set"));
        if result.is_err() {
            *slot = None;
        }
        result
    })
}

/// Whether `bytes` start like a JPEG (SOI marker).
pub fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xff, 0xd8, 0xff])
}

/// `(height, width)` of an encoded image, from its header alone.
pub fn dimensions(bytes: &[u8], decoder: JpegDecoder) -> Result<(usize, usize), String> {
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    let (h, w) = if is_jpeg(bytes) && decoder == JpegDecoder::Turbo {
        let header = with_turbo(|d| d.read_header(bytes).map_err(|e| e.to_string()))?;
        (header.height, header.width)
    } else {
        let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| e.to_string())?;
        let (w, h) = reader.into_dimensions().map_err(|e| e.to_string())?;
        (h as usize, w as usize)
    };
    if h == 0 || w == 0 {
        return Err(format!("empty image ({w}×{h})"));
    }
    Ok((h, w))
}

/// Decodes `bytes` (by content, not name) to RGB. A JPEG decoded by
/// TurboJPEG is reduced by `divisor` (1, 2, 4 or 8) in the DCT domain to
/// `⌈h / divisor⌉ × ⌈w / divisor⌉`; everything else is decoded at full
/// size. Returns the image and the divisor that applied.
pub fn decode(
    bytes: &[u8],
    divisor: usize,
    decoder: JpegDecoder,
) -> Result<(Image, usize), String> {
    debug_assert!(DIVISORS.contains(&divisor), "divisor {divisor}");
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    if is_jpeg(bytes)
        && decoder == JpegDecoder::Turbo
        && let Some(image) = decode_turbo(bytes, divisor)?
    {
        return Ok((image, divisor));
    }
    Ok((decode_image(bytes)?, 1))
}

/// TurboJPEG's decode at 1/`divisor`; `None` for a colour space it cannot
/// convert to RGB (CMYK, YCCK), which `image` decodes instead.
fn decode_turbo(bytes: &[u8], divisor: usize) -> Result<Option<Image>, String> {
    with_turbo(|d| {
        let header = d.read_header(bytes).map_err(|e| e.to_string())?;
        if matches!(
            header.colorspace,
            turbojpeg::Colorspace::CMYK | turbojpeg::Colorspace::YCCK
        ) {
            return Ok(None);
        }
        if header.width == 0 || header.height == 0 {
            return Err("empty image".into());
        }
        // A corrupt header can claim up to 65535² pixels; refuse sizes the
        // data cannot hold before allocating for them.
        let pixels = header.width * header.height;
        if pixels > MAX_PIXELS_PER_BYTE * bytes.len() {
            return Err(format!(
                "{}×{} pixels cannot be coded in {} bytes (corrupt header?)",
                header.width,
                header.height,
                bytes.len()
            ));
        }
        // TurboJPEG picks the largest scale that fits the requested size:
        // exactly 1/divisor, whose size is the ceiling.
        let (width, height) = (
            header.width.div_ceil(divisor),
            header.height.div_ceil(divisor),
        );
        let mut pixels = vec![0u8; width * height * 3];
        let out = turbojpeg::Image {
            pixels: &mut pixels[..],
            width,
            pitch: width * 3,
            height,
            format: turbojpeg::PixelFormat::RGB,
        };
        // A truncated or corrupt stream is an error (libjpeg-turbo's
        // warnings fail the call), never a partly grey image.
        d.decompress(bytes, out).map_err(|e| e.to_string())?;
        Ok(Some(Image {
            data: pixels,
            height,
            width,
            channels: 3,
        }))
    })
}

/// `image`'s decode of any supported format to RGB.
fn decode_image(bytes: &[u8]) -> Result<Image, String> {
    let rgb = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .decode()
        .map_err(|e| e.to_string())?
        .into_rgb8();
    let (width, height) = (rgb.width() as usize, rgb.height() as usize);
    if width == 0 || height == 0 {
        return Err(format!("empty image ({width}×{height})"));
    }
    Ok(Image {
        data: rgb.into_raw(),
        height,
        width,
        channels: 3,
    })
}

/// The largest divisor at which every `(height, width)` extent in
/// `extents` still spans at least `size` decoded pixels on both axes, so a
/// `size × size` crop of it is never upsampled where the full image would
/// not be.
pub fn divisor_for(extents: &[(usize, usize)], size: usize) -> usize {
    DIVISORS
        .into_iter()
        .find(|&d| extents.iter().all(|&(h, w)| h.min(w) >= size * d))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `w × h` test JPEG.
    fn jpeg(w: usize, h: usize) -> Vec<u8> {
        super::super::testutil::jpeg_bytes(w, h, 2)
    }

    #[test]
    fn both_decoders_agree_and_scaled_decodes_are_smaller() {
        let bytes = jpeg(50, 37);
        assert_eq!(dimensions(&bytes, JpegDecoder::Turbo), Ok((37, 50)));
        assert_eq!(dimensions(&bytes, JpegDecoder::Image), Ok((37, 50)));
        let (turbo, d) = decode(&bytes, 1, JpegDecoder::Turbo).unwrap();
        let (zune, _) = decode(&bytes, 1, JpegDecoder::Image).unwrap();
        assert_eq!((turbo.height, turbo.width, d), (37, 50, 1));
        assert_eq!((zune.height, zune.width), (37, 50));
        // Two IDCT implementations: close, not bit-equal.
        let worst = turbo
            .data
            .iter()
            .zip(&zune.data)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(worst <= 8, "decoders differ by {worst}");
        for divisor in [2, 4, 8] {
            let (small, d) = decode(&bytes, divisor, JpegDecoder::Turbo).unwrap();
            assert_eq!(
                (small.height, small.width, d),
                (
                    37usize.div_ceil(divisor),
                    50usize.div_ceil(divisor),
                    divisor
                )
            );
            // `image` cannot scale: full size, divisor 1.
            let (full, d) = decode(&bytes, divisor, JpegDecoder::Image).unwrap();
            assert_eq!((full.width, d), (50, 1));
        }
    }

    #[test]
    fn bad_bytes_are_errors() {
        let bytes = jpeg(16, 16);
        for decoder in [JpegDecoder::Turbo, JpegDecoder::Image] {
            assert!(decode(&[], 1, decoder).is_err());
            assert!(dimensions(&[], decoder).is_err());
            assert!(decode(b"not an image at all", 1, decoder).is_err());
        }
        // Cut in the entropy-coded data: TurboJPEG refuses it, and decodes
        // the next good image as if nothing had happened.
        for _ in 0..2 {
            assert!(decode(&bytes[..bytes.len() / 2], 1, JpegDecoder::Turbo).is_err());
            assert!(decode(&bytes, 1, JpegDecoder::Turbo).is_ok());
        }
    }

    #[test]
    fn a_header_claiming_more_pixels_than_the_data_holds_is_refused() {
        let mut bytes = jpeg(16, 16);
        // SOF0's height and width fields follow its marker, length and precision.
        let sof = bytes.windows(2).position(|w| w == [0xff, 0xc0]).unwrap();
        bytes[sof + 5..sof + 9].copy_from_slice(&[0x75, 0x30, 0x75, 0x30]);
        let err = decode(&bytes, 1, JpegDecoder::Turbo).unwrap_err();
        assert!(err.contains("30000×30000 pixels cannot be coded"), "{err}");
    }

    #[test]
    fn divisor_keeps_every_crop_at_the_output_size() {
        assert_eq!(divisor_for(&[(2000, 1800), (1900, 3000)], 224), 8);
        assert_eq!(divisor_for(&[(2000, 1800), (500, 3000)], 224), 2);
        assert_eq!(divisor_for(&[(447, 500)], 224), 1);
        assert_eq!(divisor_for(&[(448, 448)], 224), 2);
        assert_eq!(divisor_for(&[], 224), 8);
    }
}
