//! Every reader of untrusted bytes, fed one input at a time: the mutation
//! test in CI (`trainer/tests/mutation.rs`) and the cargo-fuzz targets in
//! `fuzz/` drive the readers through here.
//!
//! A reader must answer any input with an error or a valid result: no
//! panic, no hang, and no allocation larger than the input justifies.
//! Readers open files, so each input is written to a scratch folder first.

use crate::data::{self, Image};
use nets::m2t::{M2t, M2tConfig, Which};
use nets::resnet::{Arch, ResNetConfig, Stem};
use nets::weights::Part;
use std::path::Path;

/// One reader of untrusted bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reader {
    /// An MNIST-style IDX images file (the labels file beside it is valid).
    IdxImages,
    /// An IDX labels file (the images file beside it is valid).
    IdxLabels,
    /// A CIFAR-10 binary batch.
    Cifar10,
    /// An STL-10 `train_X.bin` (with `train_y.bin` beside it).
    Stl10,
    /// A network's safetensors weights (`nets::weights::import`).
    Safetensors,
    /// A checkpoint's `state.json`.
    StateJson,
    /// A `--config` TOML file (and the same bytes as a saved `config.toml`).
    ConfigToml,
    /// A JPEG image in an ImageFolder.
    Jpeg,
    /// A PNG image in an ImageFolder.
    Png,
}

impl Reader {
    /// Every reader.
    pub const ALL: [Reader; 9] = [
        Reader::IdxImages,
        Reader::IdxLabels,
        Reader::Cifar10,
        Reader::Stl10,
        Reader::Safetensors,
        Reader::StateJson,
        Reader::ConfigToml,
        Reader::Jpeg,
        Reader::Png,
    ];

    /// Valid inputs to grow mutations from.
    pub fn seeds(self) -> Vec<Vec<u8>> {
        match self {
            Reader::IdxImages => {
                let plain = idx(&[3, 4, 5], &pixels(60));
                vec![gzipped(&plain), plain]
            }
            Reader::IdxLabels => vec![idx(&[3], &[0, 9, 2])],
            Reader::Cifar10 => vec![[vec![3u8], pixels(3072), vec![7u8], pixels(3072)].concat()],
            Reader::Stl10 => vec![pixels(96 * 96 * 3)],
            Reader::Safetensors => vec![tiny_weights()],
            Reader::StateJson => vec![
                serde_json::to_vec(&crate::checkpoint::State {
                    step: 4,
                    seed: 1,
                    metrics_lines: 4,
                    skipped_images: 0,
                    train_seconds: 1.5,
                    loss_scale: Some((65536.0, 3)),
                })
                .expect("a state serialises"),
            ],
            Reader::ConfigToml => vec![
                b"arch = \"resnet18\"\nbs = 16\nwidth = 8\nproj-hidden = 64\nsteps = 2\nlr = 0.1\ncrop-min = 0.2\n".to_vec(),
            ],
            Reader::Jpeg => vec![encoded(image::ImageFormat::Jpeg)],
            Reader::Png => vec![encoded(image::ImageFormat::Png)],
        }
    }

    /// Feeds `input` to the reader, in `scratch` (an empty folder of its
    /// own). `Ok` or `Err` are both fine answers; the message is the error.
    pub fn read(self, input: &[u8], scratch: &Path) -> Result<(), String> {
        let write = |name: &str, bytes: &[u8]| {
            std::fs::write(scratch.join(name), bytes).map_err(|e| e.to_string())
        };
        let err = |e: crate::Error| e.to_string();
        match self {
            Reader::IdxImages | Reader::IdxLabels => {
                let (images, labels) = if self == Reader::IdxImages {
                    (input.to_vec(), idx(&[3], &[0, 9, 2]))
                } else {
                    (idx(&[3, 4, 5], &pixels(60)), input.to_vec())
                };
                write("train-images-idx3-ubyte", &images)?;
                write("train-labels-idx1-ubyte", &labels)?;
                touch_every_image(scratch)
            }
            Reader::Cifar10 => {
                for i in 1..=5 {
                    write(&format!("data_batch_{i}.bin"), input)?;
                }
                touch_every_image(scratch)
            }
            Reader::Stl10 => {
                write("train_X.bin", input)?;
                write("train_y.bin", &[1u8; 1])?;
                touch_every_image(scratch)
            }
            Reader::Safetensors => {
                write("weights.safetensors", input)?;
                let mut model = tiny_model();
                let (store, buffers) = model.network_mut(Which::Teacher);
                nets::weights::import(
                    &scratch.join("weights.safetensors"),
                    store,
                    buffers,
                    Part::Whole,
                )
                .map_err(|e| e.to_string())
            }
            Reader::StateJson => {
                write("state.json", input)?;
                crate::checkpoint::load_state(scratch)
                    .map(|_| ())
                    .map_err(err)
            }
            Reader::ConfigToml => {
                write("config.toml", input)?;
                let path = scratch.join("config.toml");
                // The same bytes as a saved config.toml, which must hold every
                // key: only that it answers counts.
                let _ = crate::config::RunConfig::load(&path);
                crate::config::PretrainOptions::from_file(&path)
                    .map(|_| ())
                    .map_err(err)
            }
            Reader::Jpeg | Reader::Png => {
                let class = scratch.join("class");
                std::fs::create_dir_all(&class).map_err(|e| e.to_string())?;
                let name = if self == Reader::Jpeg {
                    "a.jpg"
                } else {
                    "a.png"
                };
                std::fs::write(class.join(name), input).map_err(|e| e.to_string())?;
                touch_every_image(scratch)
            }
        }
    }
}

/// Opens the dataset in `dir` and decodes each of its images.
fn touch_every_image(dir: &Path) -> Result<(), String> {
    let splits = data::open(dir).map_err(|e| e.to_string())?;
    for set in [
        Some(&splits.train),
        splits.labelled_train.as_ref(),
        splits.test.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        for i in 0..set.len() {
            let image: Image = set.image(i).map_err(|e| e.to_string())?;
            if image.data.len() != image.height * image.width * image.channels {
                return Err(format!(
                    "image {i} has {} bytes for its size",
                    image.data.len()
                ));
            }
            let _ = set.label(i);
        }
    }
    Ok(())
}

/// An IDX file of unsigned bytes with `dims`.
fn idx(dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut out = (0x0800u32 | dims.len() as u32).to_be_bytes().to_vec();
    for d in dims {
        out.extend(d.to_be_bytes());
    }
    out.extend(payload);
    out
}

/// `bytes` gzipped, as Fashion-MNIST ships its files.
fn gzipped(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).expect("writing to memory");
    gz.finish().expect("writing to memory")
}

/// `n` varied bytes.
fn pixels(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 37 % 251) as u8).collect()
}

/// A 13×9 RGB image encoded as `format`.
fn encoded(format: image::ImageFormat) -> Vec<u8> {
    let img = image::RgbImage::from_fn(13, 9, |x, y| {
        image::Rgb([(x * 19) as u8, (y * 27) as u8, 77])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encoding to memory");
    out.into_inner()
}

/// The smallest M2T model: a width-1 ResNet-18 with 2-wide heads.
fn tiny_model() -> M2t {
    let backbone = ResNetConfig {
        arch: Arch::ResNet18,
        stem: Stem::Small,
        in_channels: 1,
        width: 1,
    };
    let config = M2tConfig {
        proj_hidden: 2,
        proj_out: 2,
        pred_hidden: 2,
        ..M2tConfig::new(backbone)
    };
    M2t::new(config, 0).expect("a valid configuration")
}

/// The teacher of [`tiny_model`], exported as torchvision-named safetensors.
fn tiny_weights() -> Vec<u8> {
    let model = tiny_model();
    let (store, buffers) = model.network(Which::Teacher);
    nets::weights::export_bytes(store, buffers, Part::Whole).expect("a tiny model exports")
}

/// Grows mutated inputs from seeds, reproducibly from one seed number:
/// bit flips, truncations, huge and negative 32-bit sizes (both byte
/// orders), spliced headers, inserted and deleted runs.
pub struct Mutator {
    state: u64,
}

impl Mutator {
    /// A mutator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Mutator {
        Mutator {
            state: seed ^ 0x9e37_79b9_7f4a_7c15,
        }
    }

    fn next(&mut self) -> u64 {
        // splitmix64
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// One mutation (or a few stacked) of one of `seeds`.
    pub fn mutate(&mut self, seeds: &[Vec<u8>]) -> Vec<u8> {
        let mut v = seeds[self.below(seeds.len())].clone();
        for _ in 0..1 + self.below(3) {
            self.mutate_once(&mut v, seeds);
        }
        v
    }

    fn mutate_once(&mut self, v: &mut Vec<u8>, seeds: &[Vec<u8>]) {
        // Header bytes matter most: half the edits land in the first 64.
        let at = |m: &mut Mutator, len: usize| {
            if m.below(2) == 0 {
                m.below(len.min(64))
            } else {
                m.below(len)
            }
        };
        match self.below(7) {
            0 if !v.is_empty() => {
                for _ in 0..1 + self.below(8) {
                    let i = at(self, v.len());
                    v[i] ^= 1 << self.below(8);
                }
            }
            1 => {
                let keep = self.below(v.len() + 1);
                v.truncate(keep);
            }
            2 if v.len() >= 4 => {
                const SIZES: [u32; 8] = [
                    0,
                    1,
                    0x7fff_ffff,
                    0x8000_0000,
                    0xffff_ffff,
                    0xffff_fffe,
                    0x0001_0000,
                    0x4000_0000,
                ];
                let size = SIZES[self.below(SIZES.len())];
                let bytes = if self.below(2) == 0 {
                    size.to_be_bytes()
                } else {
                    size.to_le_bytes()
                };
                let i = at(self, v.len() - 3);
                v[i..i + 4].copy_from_slice(&bytes);
            }
            3 => {
                // Another seed's header on this body.
                let other = &seeds[self.below(seeds.len())];
                let cut = self.below(other.len().min(64) + 1);
                let rest = v.get(cut..).unwrap_or(&[]).to_vec();
                *v = [&other[..cut], &rest[..]].concat();
            }
            4 => {
                let i = self.below(v.len() + 1);
                let run: Vec<u8> = (0..1 + self.below(16)).map(|_| self.next() as u8).collect();
                v.splice(i..i, run);
            }
            5 if !v.is_empty() => {
                let i = self.below(v.len());
                let end = (i + 1 + self.below(16)).min(v.len());
                v.drain(i..end);
            }
            _ => {
                let i = at(self, v.len().max(1));
                if let Some(b) = v.get_mut(i) {
                    *b = [0, 0xff, 0x7f, 0x80][self.below(4)];
                }
            }
        }
    }
}
