//! Training curves as a PNG: the loss (top panel) and the kNN accuracy
//! (bottom panel) against the step, sharing the step axis so the two line up.
//!
//! Drawn with `plotters` into an RGB buffer, with DejaVu Sans embedded (no
//! system font lookup), and encoded with `png`.

use crate::{Error, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::ops::Range;
use std::path::Path;
use std::sync::Once;

const WIDTH: u32 = 800;
const HEIGHT: u32 = 500;
/// Each panel is half the image, stacked.
const PANEL_HEIGHT: u32 = HEIGHT / 2;
/// Series with at most this many points also get a marker per point, so sparse
/// measurements (and a lone point, which has no line) stay visible.
const MARKER_MAX_POINTS: usize = 60;

const GRID: RGBColor = RGBColor(228, 228, 228);
const MUTED: RGBColor = RGBColor(120, 120, 120);
const LOSS_COLOUR: RGBColor = RGBColor(31, 119, 180);
const KNN_COLOUR: RGBColor = RGBColor(214, 95, 0);
/// Colours of the kNN panel's reference lines, in order.
const REFERENCE_COLOURS: [RGBColor; 2] = [RGBColor(148, 103, 189), RGBColor(44, 160, 44)];

/// The font family name the plot registers DejaVu Sans under.
const FONT: &str = "sans-serif";

/// Writes an 800×500 RGB PNG of the training curves to `path`.
///
/// `loss` holds `(step, loss)` pairs and `knn` holds `(step, accuracy)` pairs
/// with the accuracy in percent (100 × what
/// [`knn_accuracy`](crate::knn::knn_accuracy) returns), plotted as given.
/// Points need not be sorted; NaN and infinite values are left out. An empty
/// series leaves its panel framed with a short note instead of a curve.
/// `references` are `(label, accuracy in percent)` drawn as dashed
/// horizontal lines across the kNN panel (the untrained network, raw pixels).
///
/// The image is written to a temporary file next to `path` and renamed over
/// it, so a reader never sees a half-written plot.
pub fn write_curves(
    path: &Path,
    loss: &[(usize, f64)],
    knn: &[(usize, f64)],
    references: &[(&str, f64)],
) -> Result<()> {
    static FONT_REGISTERED: Once = Once::new();
    FONT_REGISTERED.call_once(|| {
        // The embedded file is a valid font; a failure would only lose text.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
    let (loss, knn) = (finite_sorted(loss), finite_sorted(knn));
    let steps = step_axis(&loss, &knn);
    let mut rgb = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    let drawn = (|| -> std::result::Result<(), String> {
        let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
        let (top, bottom) = root.split_vertically(PANEL_HEIGHT);
        let references: Vec<(&str, f64)> = references
            .iter()
            .copied()
            .filter(|r| r.1.is_finite())
            .collect();
        let panels = [
            (
                &top,
                "training loss",
                "M2T loss",
                &loss,
                LOSS_COLOUR,
                "no loss yet",
                &[][..],
                SeriesLabelPosition::UpperRight,
            ),
            (
                &bottom,
                "kNN accuracy",
                "top-1 %",
                &knn,
                KNN_COLOUR,
                "no kNN measurement yet",
                &references[..],
                // Away from where the curve ends: the accuracy rises.
                SeriesLabelPosition::LowerRight,
            ),
        ];
        for (area, title, series, points, colour, empty_note, references, legend) in panels {
            panel(
                area,
                (title, series, empty_note),
                points,
                references,
                (steps.clone(), legend),
                colour,
            )
            .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())
    })();
    drawn.map_err(|e| Error::io(path, io::Error::other(format!("drawing the curves: {e}"))))?;
    save(path, &rgb)
}

/// One panel: a titled chart of `points` over `steps`, with axis labels, a
/// light grid and a legend at `legend`, or its frame and `empty_note`
/// without points; `references` as dashed horizontal lines.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    (title, series, empty_note): (&str, &str, &str),
    points: &[(f64, f64)],
    references: &[(&str, f64)],
    (steps, legend): (Range<f64>, SeriesLabelPosition),
    colour: RGBColor,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let levels: Vec<(f64, f64)> = references.iter().map(|r| (steps.start, r.1)).collect();
    let values = [points, &levels[..]].concat();
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 17))
        .margin(8)
        .margin_right(20)
        .x_label_area_size(34)
        .y_label_area_size(64)
        .build_cartesian_2d(steps.clone(), value_axis(&values))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&|step| format!("{step:.0}"))
        .light_line_style(TRANSPARENT)
        .bold_line_style(GRID)
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 13))
        .draw()?;
    if points.is_empty() {
        let (w, h) = area.dim_in_pixel();
        area.draw(&Text::new(
            empty_note.to_string(),
            (w as i32 / 2 - 70, h as i32 / 2),
            (FONT, 14).into_font().color(&MUTED),
        ))?;
        return Ok(());
    }
    chart
        .draw_series(LineSeries::new(
            points.iter().copied(),
            colour.stroke_width(2),
        ))?
        .label(series)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
    if points.len() <= MARKER_MAX_POINTS {
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
    }
    for (&(label, level), reference) in references.iter().zip(REFERENCE_COLOURS.iter().cycle()) {
        let style = reference.stroke_width(2);
        chart
            .draw_series(DashedLineSeries::new(
                [(steps.start, level), (steps.end, level)],
                8,
                5,
                style,
            ))?
            .label(format!("{label} {level:.1}%"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], style));
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.85))
        .border_style(GRID)
        .label_font((FONT, 12))
        .draw()
}

/// Finite points ordered by step, as floats.
fn finite_sorted(points: &[(usize, f64)]) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = points
        .iter()
        .filter(|p| p.1.is_finite())
        .map(|&(s, v)| (s as f64, v))
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The step axis both panels share: every point's step, at least one wide.
fn step_axis(a: &[(f64, f64)], b: &[(f64, f64)]) -> Range<f64> {
    let steps = a.iter().chain(b).map(|p| p.0);
    let lo = steps.clone().fold(f64::INFINITY, f64::min);
    let hi = steps.fold(f64::NEG_INFINITY, f64::max);
    if lo > hi {
        0.0..1.0
    } else if hi - lo < 1.0 {
        lo - 1.0..hi + 1.0
    } else {
        lo..hi
    }
}

/// The value axis: the points' range padded by 8% (by a tenth of the value,
/// or 1, when they are all equal), finite even for extreme values.
fn value_axis(points: &[(f64, f64)]) -> Range<f64> {
    let lo = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    if lo > hi {
        return 0.0..1.0;
    }
    let pad = if hi > lo {
        0.16 * (hi / 2.0 - lo / 2.0)
    } else if lo == 0.0 {
        1.0
    } else {
        0.1 * lo.abs()
    };
    // A quarter of f64's range at most, so the axis's width stays finite.
    let limit = f64::MAX / 4.0;
    let (lo, hi) = ((lo - pad).max(-limit), (hi + pad).min(limit));
    if lo < hi { lo..hi } else { lo - 1.0..hi + 1.0 }
}

/// Writes the PNG to a temporary file beside `path`, then renames it over
/// `path`.
fn save(path: &Path, rgb: &[u8]) -> Result<()> {
    let name = path.file_name().ok_or_else(|| {
        Error::io(
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "not a file path"),
        )
    })?;
    // Hidden and tagged with the process id, so a crashed run's leftover is
    // recognisable and two processes never share a temporary file.
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let written =
        encode(&tmp, rgb).and_then(|()| fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if written.is_err() {
        // Best effort: the error worth reporting is the one already in hand.
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Writes `rgb` as an 8-bit RGB PNG to `file`, synced to disk so the
/// rename in [`save`] never exposes an incomplete file after a crash.
fn encode(file: &Path, rgb: &[u8]) -> Result<()> {
    let io_error = |e| Error::io(file, e);
    let png_error = |e: png::EncodingError| match e {
        png::EncodingError::IoError(e) => Error::io(file, e),
        other => Error::io(file, io::Error::other(other)),
    };
    let mut out = BufWriter::new(File::create(file).map_err(io_error)?);
    let mut encoder = png::Encoder::new(&mut out, WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(png_error)?;
    writer.write_image_data(rgb).map_err(png_error)?;
    writer.finish().map_err(png_error)?;
    let out = out.into_inner().map_err(|e| io_error(e.into_error()))?;
    out.sync_all().map_err(io_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;
    use std::path::PathBuf;

    /// A fresh directory under the system temp dir for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("trainer-plot-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    }

    /// Decodes `path`, checking it is an 800×500 RGB image.
    fn decode(path: &Path) -> Vec<u8> {
        let file = BufReader::new(File::open(path).expect("open png"));
        let mut reader = png::Decoder::new(file).read_info().expect("png header");
        let mut rgb = vec![0; reader.output_buffer_size().expect("buffer size")];
        let info = reader.next_frame(&mut rgb).expect("png data");
        assert_eq!((info.width, info.height), (WIDTH, HEIGHT));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        rgb
    }

    /// Pixels of `colour` in the rows `top..bottom`.
    fn count(rgb: &[u8], top: u32, bottom: u32, colour: RGBColor) -> usize {
        let row = 3 * WIDTH as usize;
        rgb[top as usize * row..bottom as usize * row]
            .chunks_exact(3)
            .filter(|p| *p == [colour.0, colour.1, colour.2])
            .count()
    }

    /// Near-black pixels (text, axes) in the rows `top..bottom`.
    fn dark(rgb: &[u8], top: u32, bottom: u32) -> usize {
        let row = 3 * WIDTH as usize;
        rgb[top as usize * row..bottom as usize * row]
            .chunks_exact(3)
            .filter(|p| p.iter().all(|&c| c < 100))
            .count()
    }

    #[test]
    fn writes_both_panels() -> Result<()> {
        let dir = scratch("both");
        let path = dir.join("curves.png");
        let loss: Vec<(usize, f64)> = (0..2000)
            .map(|s| (s, 4.0 / (1.0 + s as f64 / 100.0)))
            .collect();
        let knn = [
            (0, 10.0),
            (500, 42.0),
            (1000, 61.0),
            (1500, 70.0),
            (2000, 74.0),
        ];
        // A reference above every point widens the axis to show it.
        let references = [("untrained", 30.0), ("raw pixels", 78.0)];
        write_curves(&path, &loss, &knn, &references)?;
        let rgb = decode(&path);
        assert!(count(&rgb, 0, PANEL_HEIGHT, LOSS_COLOUR) > 500);
        assert!(count(&rgb, PANEL_HEIGHT, HEIGHT, KNN_COLOUR) > 500);
        for colour in REFERENCE_COLOURS {
            // Dashed across the panel (about 600 px wide), in the kNN panel only.
            assert!(
                count(&rgb, PANEL_HEIGHT, HEIGHT, colour) > 600,
                "{colour:?}"
            );
            assert_eq!(count(&rgb, 0, PANEL_HEIGHT, colour), 0, "{colour:?}");
        }
        // Each curve stays in its own panel.
        assert_eq!(count(&rgb, PANEL_HEIGHT, HEIGHT, LOSS_COLOUR), 0);
        assert_eq!(count(&rgb, 0, PANEL_HEIGHT, KNN_COLOUR), 0);
        // Text and frames in both halves.
        assert!(dark(&rgb, 0, PANEL_HEIGHT) > 1000);
        assert!(dark(&rgb, PANEL_HEIGHT, HEIGHT) > 1000);
        // Overwriting works and leaves no temporary file behind.
        write_curves(&path, &loss[..10], &[], &[])?;
        decode(&path);
        assert_eq!(
            fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?.count(),
            1
        );
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn degenerate_inputs_still_plot() -> Result<()> {
        let dir = scratch("degenerate");
        let path = dir.join("curves.png");
        type Series<'a> = &'a [(usize, f64)];
        let cases: [(Series, Series); 9] = [
            (&[], &[]),
            (&[(0, 1.5)], &[]),
            (&[], &[(7, 0.5)]),
            (&[(3, 2.0), (3, 2.0)], &[(3, 1.0)]),
            (&[(0, f64::NAN), (1, f64::INFINITY)], &[(5, f64::NAN)]),
            (&[(0, 0.0), (10, 0.0), (20, 0.0)], &[(0, 0.0), (10, 0.0)]),
            (
                &[(9, -1e-9), (2, 3e-9), (5, f64::NAN), (0, 1e-9)],
                &[(1, 1.0)],
            ),
            (&[(0, -5e7), (usize::MAX, 8e12)], &[(1 << 40, 0.3)]),
            (&[(0, f64::MAX), (1, -f64::MAX)], &[(0, f64::MIN_POSITIVE)]),
        ];
        for (loss, knn) in cases {
            write_curves(&path, loss, knn, &[("untrained", 61.0)])?;
            decode(&path);
        }
        // An all-empty plot still has both frames and notes.
        write_curves(&path, &[], &[], &[])?;
        let rgb = decode(&path);
        assert!(count(&rgb, 0, PANEL_HEIGHT, MUTED) > 0);
        assert!(count(&rgb, PANEL_HEIGHT, HEIGHT, MUTED) > 0);
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn unwritable_path_is_an_error() {
        let dir = scratch("unwritable");
        let err = write_curves(&dir.join("missing/curves.png"), &[(0, 1.0)], &[], &[]);
        assert!(matches!(err, Err(Error::Io { .. })), "{err:?}");
        assert!(write_curves(Path::new("/"), &[], &[], &[]).is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}
