//! Training curves as a PNG: the loss (top panel) and the kNN accuracy
//! (bottom panel) against the step, sharing the step axis so the two line up.
//!
//! Everything is drawn here, with a built-in 5×7 bitmap font, so the trainer
//! needs no plotting or font dependency; the file is encoded with `png`.

use crate::{Error, Result};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::path::Path;

const WIDTH: i64 = 800;
const HEIGHT: i64 = 500;
/// Each panel is half the image, stacked.
const PANEL_HEIGHT: i64 = HEIGHT / 2;
/// Plot-area insets within a panel: room for the title above, the y tick
/// labels on the left (at least; wider labels widen it), and the x tick
/// labels plus "step" below.
const MIN_INSET_LEFT: i64 = 60;
const INSET_RIGHT: i64 = 22;
const INSET_TOP: i64 = 34;
const INSET_BOTTOM: i64 = 48;
/// Glyphs are drawn at this multiple of 5×7 pixels.
const SCALE: i64 = 2;
/// Series with at most this many points also get a marker per point, so sparse
/// measurements (and a lone point, which has no line) stay visible.
const MARKER_MAX_POINTS: usize = 60;

type Rgb = [u8; 3];
const WHITE: Rgb = [255, 255, 255];
const BLACK: Rgb = [0, 0, 0];
const GRID: Rgb = [228, 228, 228];
const MUTED: Rgb = [120, 120, 120];
const LOSS_COLOUR: Rgb = [31, 119, 180];
const KNN_COLOUR: Rgb = [214, 95, 0];

/// Writes a ~800×500 RGB PNG of the training curves to `path`.
///
/// `loss` holds `(step, loss)` pairs and `knn` holds `(step, accuracy)` pairs
/// with the accuracy in percent (100 × what
/// [`knn_accuracy`](crate::knn::knn_accuracy) returns), plotted as given.
/// Points need not be sorted; NaN and infinite values are left out. An empty
/// series leaves its panel framed with a short note instead of a curve.
///
/// The image is written to a temporary file next to `path` and renamed over
/// it, so a reader never sees a half-written plot.
pub fn write_curves(path: &Path, loss: &[(usize, f64)], knn: &[(usize, f64)]) -> Result<()> {
    let panels = [
        Panel::new(
            0,
            "training loss",
            finite_sorted(loss),
            LOSS_COLOUR,
            "no loss yet",
        ),
        Panel::new(
            PANEL_HEIGHT,
            "kNN acc %",
            finite_sorted(knn),
            KNN_COLOUR,
            "no kNN measurement yet",
        ),
    ];
    let steps = step_axis(&panels[0].points, &panels[1].points);
    // One left edge for both panels, wide enough for either's tick labels, so
    // the step axes line up.
    let widest = panels
        .iter()
        .flat_map(|p| p.y_ticks.iter().map(|(_, label)| text_width(label)))
        .max()
        .unwrap_or(0);
    let left = (widest + 18).clamp(MIN_INSET_LEFT, WIDTH / 3);
    let mut canvas = Canvas::new();
    for panel in &panels {
        canvas.panel(panel, left, steps);
    }
    save(path, &canvas)
}

/// What one panel shows, worked out before anything is drawn.
struct Panel {
    /// Top edge of the panel in the image.
    top: i64,
    title: &'static str,
    /// `(step, value)` points to plot, finite and ordered by step.
    points: Vec<(f64, f64)>,
    colour: Rgb,
    /// Shown instead of a curve when there are no points.
    empty_note: &'static str,
    /// The value axis, padded around the points (`None` without points).
    values: Option<Range>,
    /// Value-axis ticks and their labels.
    y_ticks: Vec<(f64, String)>,
}

impl Panel {
    fn new(
        top: i64,
        title: &'static str,
        points: Vec<(f64, f64)>,
        colour: Rgb,
        empty_note: &'static str,
    ) -> Self {
        let values = Range::of(points.iter().map(|p| p.1))
            .map(|r| r.padded(0.08, |v| if v == 0.0 { 1.0 } else { v.abs() * 0.1 }));
        let y_ticks = values.map_or_else(Vec::new, |range| {
            let (ticks, step) = ticks(range, 4, 0.0);
            ticks
                .into_iter()
                .map(|v| (v, tick_label(v, step)))
                .collect()
        });
        Panel {
            top,
            title,
            points,
            colour,
            empty_note,
            values,
            y_ticks,
        }
    }
}

/// The finite points of `series` as `(step, value)`, ordered by step (stable,
/// so equal steps keep their order).
fn finite_sorted(series: &[(usize, f64)]) -> Vec<(f64, f64)> {
    let mut points: Vec<(f64, f64)> = series
        .iter()
        .filter(|(_, v)| v.is_finite())
        .map(|&(s, v)| (s as f64, v))
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    points
}

/// A value range drawn along one axis.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Range {
    lo: f64,
    hi: f64,
}

impl Range {
    /// The smallest range holding `values`, or `None` when there are none.
    fn of(values: impl Iterator<Item = f64>) -> Option<Range> {
        values.fold(None, |r, v| {
            Some(match r {
                None => Range { lo: v, hi: v },
                Some(Range { lo, hi }) => Range {
                    lo: lo.min(v),
                    hi: hi.max(v),
                },
            })
        })
    }

    /// Widened by `fraction` of its span on each side; a single value gets
    /// `fallback(value)` on each side so it sits in the middle of the axis.
    fn padded(self, fraction: f64, fallback: impl Fn(f64) -> f64) -> Range {
        let span = self.hi - self.lo;
        let pad = if span > 0.0 {
            span * fraction
        } else {
            fallback(self.lo)
        };
        Range {
            lo: self.lo - pad,
            hi: self.hi + pad,
        }
    }

    /// Where `v` falls between `a` (at `lo`) and `b` (at `hi`), in pixels.
    /// Clamped to that span, so overflowing ranges cannot send a line
    /// drawing loop billions of pixels away.
    fn to_pixel(self, v: f64, a: i64, b: i64) -> i64 {
        let t = (v - self.lo) / (self.hi - self.lo);
        let p = (a as f64 + t * (b - a) as f64).round() as i64;
        p.clamp(a.min(b), a.max(b))
    }
}

/// The step axis shared by both panels, over every plotted step. A single
/// step gets half a step either side, so it is the only (integer) tick.
fn step_axis(loss: &[(f64, f64)], knn: &[(f64, f64)]) -> Option<Range> {
    Range::of(loss.iter().chain(knn).map(|p| p.0)).map(|r| r.padded(0.02, |_| 0.5))
}

/// Evenly spaced round values (1, 2 or 5 × 10ⁿ apart, whichever is nearest
/// the span over `target`) inside `range`, with their spacing. Steps are integers, so `min_step`
/// keeps the step axis from ticking at fractions.
fn ticks(range: Range, target: usize, min_step: f64) -> (Vec<f64>, f64) {
    let raw = (range.hi - range.lo) / target.max(1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let nice = match raw / magnitude {
        r if r < 1.5 => 1.0,
        r if r < 3.0 => 2.0,
        r if r < 7.0 => 5.0,
        _ => 10.0,
    };
    let step = (nice * magnitude).max(min_step);
    let first = (range.lo / step).ceil();
    let last = (range.hi / step).floor();
    // Ranges at the edges of f64 (zero or infinite spans) get no ticks rather
    // than an endless loop.
    if !(step > 0.0 && step.is_finite() && last - first <= 100.0) {
        return (Vec::new(), 1.0);
    }
    let (first, last) = (first as i64, last as i64);
    // Multiples of the step (not a running sum) so labels stay round.
    let values = (first..=last).map(|i| i as f64 * step).collect();
    (values, step)
}

/// `v` as a tick label for ticks `step` apart: just enough decimals to tell
/// neighbours apart, or scientific notation for very large or small values.
fn tick_label(v: f64, step: f64) -> String {
    let v = v + 0.0; // -0.0 → 0.0
    let step_exp = step.log10().floor();
    if v != 0.0 && (v.abs() >= 1e6 || step < 1e-4) {
        let digits = (v.abs().log10().floor() - step_exp).max(0.0) as usize;
        format!("{v:.digits$e}")
    } else {
        let decimals = (-step_exp).max(0.0) as usize;
        format!("{v:.decimals$}")
    }
}

/// `v` to about four significant digits, for the latest value of a curve.
fn short_value(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e5 || v.abs() < 1e-3) {
        format!("{v:.3e}")
    } else {
        let decimals = (3.0 - v.abs().log10().floor()).clamp(0.0, 4.0) as usize;
        format!("{v:.decimals$}")
    }
}

/// An inclusive pixel rectangle.
#[derive(Clone, Copy, Debug)]
struct Rect {
    left: i64,
    top: i64,
    right: i64,
    bottom: i64,
}

impl Rect {
    fn contains(self, x: i64, y: i64) -> bool {
        (self.left..=self.right).contains(&x) && (self.top..=self.bottom).contains(&y)
    }
}

/// An RGB image being drawn on.
struct Canvas {
    rgb: Vec<u8>,
}

impl Canvas {
    fn new() -> Self {
        Canvas {
            rgb: WHITE.repeat((WIDTH * HEIGHT) as usize),
        }
    }

    /// Sets one pixel; anything off the image is ignored.
    fn put(&mut self, x: i64, y: i64, c: Rgb) {
        if (0..WIDTH).contains(&x) && (0..HEIGHT).contains(&y) {
            let at = 3 * (y * WIDTH + x) as usize;
            self.rgb[at..at + 3].copy_from_slice(&c);
        }
    }

    fn fill(&mut self, r: Rect, c: Rgb) {
        for y in r.top..=r.bottom {
            for x in r.left..=r.right {
                self.put(x, y, c);
            }
        }
    }

    /// `s` with its top-left corner at `(x, y)`; characters the font lacks
    /// show as boxes.
    fn text(&mut self, x: i64, y: i64, s: &str, c: Rgb) {
        for (i, ch) in s.chars().enumerate() {
            let gx = x + i as i64 * 6 * SCALE;
            for (row, bits) in glyph(ch).iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        let (px, py) = (gx + col * SCALE, y + row as i64 * SCALE);
                        self.fill(
                            Rect {
                                left: px,
                                top: py,
                                right: px + SCALE - 1,
                                bottom: py + SCALE - 1,
                            },
                            c,
                        );
                    }
                }
            }
        }
    }

    /// A 2-px line from `a` to `b` (Bresenham), drawn only inside `clip`.
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), clip: Rect, c: Rgb) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = ((x1 - x0).signum(), (y1 - y0).signum());
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            for (px, py) in [(x, y), (x + 1, y), (x, y + 1), (x + 1, y + 1)] {
                if clip.contains(px, py) {
                    self.put(px, py, c);
                }
            }
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// One panel: title, frame, grid, ticks and curve, with the plot area's
    /// left edge at `left` and the steps spread over `steps`.
    fn panel(&mut self, panel: &Panel, left: i64, steps: Option<Range>) {
        let plot = Rect {
            left,
            top: panel.top + INSET_TOP,
            right: WIDTH - INSET_RIGHT,
            bottom: panel.top + PANEL_HEIGHT - INSET_BOTTOM,
        };
        let text_height = 7 * SCALE;
        let title_y = plot.top - text_height - 10;
        self.text(plot.left, title_y, panel.title, BLACK);
        if let Some(&(_, last)) = panel.points.last() {
            let note = format!("last {}", short_value(last));
            self.text(plot.right - text_width(&note), title_y, &note, panel.colour);
        }
        let (Some(steps), Some(values)) = (steps, panel.values) else {
            let x = (plot.left + plot.right - text_width(panel.empty_note)) / 2;
            let y = (plot.top + plot.bottom - text_height) / 2;
            self.text(x, y, panel.empty_note, MUTED);
            self.frame(plot);
            return;
        };

        for (v, label) in &panel.y_ticks {
            let y = values.to_pixel(*v, plot.bottom, plot.top);
            self.fill(
                Rect {
                    top: y,
                    bottom: y,
                    ..plot
                },
                GRID,
            );
            self.fill(
                Rect {
                    left: plot.left - 5,
                    top: y,
                    right: plot.left - 1,
                    bottom: y,
                },
                BLACK,
            );
            self.text(
                plot.left - 9 - text_width(label),
                y - text_height / 2,
                label,
                BLACK,
            );
        }
        let (x_ticks, x_step) = step_ticks(steps, plot);
        for &s in x_ticks.iter().filter(|&&s| s >= 0.0) {
            let x = steps.to_pixel(s, plot.left, plot.right);
            self.fill(
                Rect {
                    left: x,
                    right: x,
                    ..plot
                },
                GRID,
            );
            self.fill(
                Rect {
                    left: x,
                    top: plot.bottom + 1,
                    right: x,
                    bottom: plot.bottom + 5,
                },
                BLACK,
            );
            let label = tick_label(s, x_step);
            // Centred under the tick, but never past the image's right edge.
            let width = text_width(&label);
            let label_x = (x - width / 2).min(WIDTH - 2 - width);
            self.text(label_x, plot.bottom + 9, &label, BLACK);
        }
        let axis_name = "step";
        let x = (plot.left + plot.right - text_width(axis_name)) / 2;
        self.text(x, plot.bottom + 13 + text_height, axis_name, MUTED);

        let pixels: Vec<(i64, i64)> = panel
            .points
            .iter()
            .map(|&(s, v)| {
                (
                    steps.to_pixel(s, plot.left, plot.right),
                    values.to_pixel(v, plot.bottom, plot.top),
                )
            })
            .collect();
        for pair in pixels.windows(2) {
            self.line(pair[0], pair[1], plot, panel.colour);
        }
        if pixels.len() <= MARKER_MAX_POINTS {
            for &(x, y) in &pixels {
                self.fill(
                    Rect {
                        left: x - 2,
                        top: y - 2,
                        right: x + 3,
                        bottom: y + 3,
                    },
                    panel.colour,
                );
            }
        }
        self.frame(plot);
    }

    /// A 1-px black border just outside `plot`.
    fn frame(&mut self, plot: Rect) {
        let outer = Rect {
            left: plot.left - 1,
            top: plot.top - 1,
            right: plot.right + 1,
            bottom: plot.bottom + 1,
        };
        for r in [
            Rect {
                bottom: outer.top,
                ..outer
            },
            Rect {
                top: outer.bottom,
                ..outer
            },
            Rect {
                right: outer.left,
                ..outer
            },
            Rect {
                left: outer.right,
                ..outer
            },
        ] {
            self.fill(r, BLACK);
        }
    }
}

/// Step-axis ticks: as many as fit without their labels touching.
fn step_ticks(steps: Range, plot: Rect) -> (Vec<f64>, f64) {
    let mut best = ticks(steps, 1, 1.0);
    for target in (2..=8).rev() {
        let (values, step) = ticks(steps, target, 1.0);
        let widest = values
            .iter()
            .map(|&v| text_width(&tick_label(v, step)))
            .max()
            .unwrap_or(0);
        let spacing = step / (steps.hi - steps.lo) * (plot.right - plot.left) as f64;
        if spacing >= (widest + 4 * SCALE * 2) as f64 {
            best = (values, step);
            break;
        }
    }
    best
}

/// Width in pixels of `s` drawn by [`Canvas::text`].
fn text_width(s: &str) -> i64 {
    (s.chars().count() as i64 * 6 - 1).max(0) * SCALE
}

/// The 5×7 bitmap of `c` plus a descender row (for g, p, y), one byte per
/// row, bit 4 the leftmost column. Holds the digits, number punctuation and
/// the letters the labels use.
fn glyph(c: char) -> [u8; 8] {
    match c {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E, 0x00],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E, 0x00],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F, 0x00],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E, 0x00],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02, 0x00],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E, 0x00],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E, 0x00],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08, 0x00],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E, 0x00],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C, 0x00],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C, 0x00],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00, 0x00],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03, 0x00],
        ' ' => [0x00; 8],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11, 0x00],
        'a' => [0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F, 0x00],
        'c' => [0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E, 0x00],
        'e' => [0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E, 0x00],
        'g' => [0x00, 0x00, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E],
        'i' => [0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E, 0x00],
        'k' => [0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12, 0x00],
        'l' => [0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E, 0x00],
        'm' => [0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11, 0x00],
        'n' => [0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11, 0x00],
        'o' => [0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E, 0x00],
        'p' => [0x00, 0x00, 0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10],
        'r' => [0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10, 0x00],
        's' => [0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E, 0x00],
        't' => [0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06, 0x00],
        'u' => [0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D, 0x00],
        'y' => [0x00, 0x00, 0x11, 0x11, 0x11, 0x0F, 0x01, 0x0E],
        _ => [0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F, 0x00],
    }
}

/// Encodes `canvas` to a temporary file beside `path`, then renames it over
/// `path`.
fn save(path: &Path, canvas: &Canvas) -> Result<()> {
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
        encode(&tmp, canvas).and_then(|()| fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if written.is_err() {
        // Best effort: the error worth reporting is the one already in hand.
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Writes `canvas` as an 8-bit RGB PNG to `file`, synced to disk so the
/// rename in [`save`] never exposes an incomplete file after a crash.
fn encode(file: &Path, canvas: &Canvas) -> Result<()> {
    let io_error = |e| Error::io(file, e);
    let png_error = |e: png::EncodingError| match e {
        png::EncodingError::IoError(e) => Error::io(file, e),
        other => Error::io(file, io::Error::other(other)),
    };
    let mut out = BufWriter::new(File::create(file).map_err(io_error)?);
    let mut encoder = png::Encoder::new(&mut out, WIDTH as u32, HEIGHT as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(png_error)?;
    writer.write_image_data(&canvas.rgb).map_err(png_error)?;
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
        assert_eq!((info.width, info.height), (WIDTH as u32, HEIGHT as u32));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        rgb
    }

    /// Pixels of `colour` in the rows `top..bottom`.
    fn count(rgb: &[u8], top: i64, bottom: i64, colour: Rgb) -> usize {
        let row = 3 * WIDTH as usize;
        rgb[top as usize * row..bottom as usize * row]
            .chunks_exact(3)
            .filter(|p| *p == colour)
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
        write_curves(&path, &loss, &knn)?;
        let rgb = decode(&path);
        assert!(count(&rgb, 0, PANEL_HEIGHT, LOSS_COLOUR) > 500);
        assert!(count(&rgb, PANEL_HEIGHT, HEIGHT, KNN_COLOUR) > 500);
        // Each curve stays in its own panel.
        assert_eq!(count(&rgb, PANEL_HEIGHT, HEIGHT, LOSS_COLOUR), 0);
        assert_eq!(count(&rgb, 0, PANEL_HEIGHT, KNN_COLOUR), 0);
        // Text and frames in both halves.
        assert!(count(&rgb, 0, PANEL_HEIGHT, BLACK) > 1000);
        assert!(count(&rgb, PANEL_HEIGHT, HEIGHT, BLACK) > 1000);
        // Overwriting works and leaves no temporary file behind.
        write_curves(&path, &loss[..10], &[])?;
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
            write_curves(&path, loss, knn)?;
            decode(&path);
        }
        // An all-empty plot still has both frames and notes.
        write_curves(&path, &[], &[])?;
        let rgb = decode(&path);
        assert!(count(&rgb, 0, PANEL_HEIGHT, MUTED) > 0);
        assert!(count(&rgb, PANEL_HEIGHT, HEIGHT, MUTED) > 0);
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn unwritable_path_is_an_error() {
        let dir = scratch("unwritable");
        let err = write_curves(&dir.join("missing/curves.png"), &[(0, 1.0)], &[]);
        assert!(matches!(err, Err(Error::Io { .. })), "{err:?}");
        assert!(write_curves(Path::new("/"), &[], &[]).is_err());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn tick_labels_are_round() {
        let (values, step) = ticks(Range { lo: 0.03, hi: 0.97 }, 4, 0.0);
        let labels: Vec<String> = values.iter().map(|&v| tick_label(v, step)).collect();
        assert_eq!(labels, ["0.2", "0.4", "0.6", "0.8"]);
        assert_eq!(tick_label(-0.0, 0.5), "0.0");
        assert_eq!(tick_label(1500.0, 500.0), "1500");
        assert_eq!(tick_label(2e-5, 1e-5), "2e-5");
        assert_eq!(tick_label(3e7, 1e7), "3e7");
        assert_eq!(short_value(0.23456), "0.2346");
        assert_eq!(short_value(86.91), "86.91");
        let (steps, step) = ticks(Range { lo: -0.5, hi: 3.5 }, 8, 1.0);
        assert_eq!((steps, step), (vec![0.0, 1.0, 2.0, 3.0], 1.0));
    }
}
