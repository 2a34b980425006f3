//! The pretraining loader (pairs of augmented views, prefetched on worker
//! threads) and the evaluation batch iterator.
//!
//! Batches are a pure function of `(seed, step)`, whatever the number of
//! workers and wherever a run starts:
//!
//! - epoch `e` visits the dataset in the order of a Fisher–Yates shuffle of
//!   `0..len` driven by `Rng::new(seed ^ mix(e))`, where `mix` is the
//!   SplitMix64 output function ([`epoch_order`]);
//! - step `s` is epoch `s / steps_per_epoch`, positions
//!   `(s mod steps_per_epoch)·B ..` of that order; the tail that does not
//!   fill a batch is dropped; with `W` data-parallel ranks, `B` is the
//!   global batch `W·b` and rank `r` takes its `r`-th slice of `b`;
//! - the sample at position `p` of epoch `e` draws both of its views (view
//!   one, then view two) from one `Rng` seeded by `(seed, e, p)`.
//!
//! Each image is read and decoded once for both views. The views are drawn
//! from the image's full size (its header), then a JPEG is decoded at the
//! smallest DCT scale (1/8, 1/4, 1/2 or 1) at which both crops still span
//! the output size, and the crops are mapped onto the reduced image.
//!
//! An image that cannot be read or decoded is replaced by the next readable
//! one in the epoch order (wrapping) and counted in [`PairBatch::skipped`];
//! the replacement keeps its own label.

use crate::augment::GpuAugmenter;
use crate::augment::{AugmentConfig, View, ViewParams, apply_view, eval_view};
use crate::data::{Dataset, Image, ImageError, divisor_for};
use crate::{Error, Result};
use engine::{Rng, Tensor};
use rayon::prelude::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Batches each worker may have ready ahead of the consumer.
pub const PREFETCH_PER_WORKER: usize = 2;

/// Where the views are rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Augmentation {
    /// On the worker threads: batches carry finished f32 views.
    Host,
    /// On a GPU: workers decode the images and draw each view's parameters
    /// (the same random draws as on the host); [`PairBatch::views`] renders
    /// them with a [`GpuAugmenter`].
    Device,
}

/// The two views of a batch, finished or drawn.
#[derive(Debug)]
pub enum Views {
    /// View one and view two of each sample, `[B, S, S, C]` f32.
    Host {
        /// View one.
        view1: Tensor,
        /// View two.
        view2: Tensor,
    },
    /// The decoded images and the parameters of each one's two views.
    Drawn {
        /// The samples' images.
        images: Vec<Image>,
        /// View one's parameters per image.
        one: Vec<ViewParams>,
        /// View two's parameters per image.
        two: Vec<ViewParams>,
    },
}

/// One training step's input.
#[derive(Debug)]
pub struct PairBatch {
    /// The global step this batch is for.
    pub step: usize,
    /// The epoch the step belongs to.
    pub epoch: usize,
    /// The two views.
    pub views: Views,
    /// Unreadable images skipped while assembling this batch.
    pub skipped: usize,
    /// How long [`PairLoader::next`] blocked waiting for this batch.
    pub wait: Duration,
}

impl PairBatch {
    /// The two views as tensors: as they are, or rendered by `gpu` on its
    /// device when they were drawn for it.
    pub fn views(&self, gpu: Option<&GpuAugmenter>) -> Result<(Tensor, Tensor)> {
        match (&self.views, gpu) {
            (Views::Host { view1, view2 }, _) => Ok((view1.clone(), view2.clone())),
            (Views::Drawn { images, one, two }, Some(gpu)) => {
                let refs: Vec<&Image> = images.iter().collect();
                let pixels = gpu.upload(&refs)?;
                Ok((gpu.views(&pixels, one)?, gpu.views(&pixels, two)?))
            }
            (Views::Drawn { .. }, None) => {
                Err(loader_error("views drawn for a GPU need a GPU augmenter"))
            }
        }
    }
}

/// Time the workers spent in each stage of the samples assembled so far,
/// summed over workers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stages {
    /// Reading a file or a pack record (and checking its checksum).
    pub read: Duration,
    /// Decoding (header and pixels).
    pub decode: Duration,
    /// Drawing both views' parameters and the decoding scale.
    pub draw: Duration,
    /// Rendering both views (host augmentation), or moving the decoded
    /// image into the batch (device augmentation).
    pub augment: Duration,
    /// Samples assembled (skipped images not counted).
    pub samples: u64,
}

/// [`Stages`] as the workers add to it.
#[derive(Debug, Default)]
struct StageClock {
    nanos: [AtomicU64; 4],
    samples: AtomicU64,
}

/// The stages' slots in [`StageClock::nanos`].
const READ: usize = 0;
const DECODE: usize = 1;
const DRAW: usize = 2;
const AUGMENT: usize = 3;

impl StageClock {
    /// Adds the time since `*since` to `stage`, and restarts `*since`.
    fn lap(&self, stage: usize, since: &mut Instant) {
        let now = Instant::now();
        let nanos = (now - *since).as_nanos() as u64;
        self.nanos[stage].fetch_add(nanos, Ordering::Relaxed);
        *since = now;
    }

    fn snapshot(&self) -> Stages {
        let at = |k: usize| Duration::from_nanos(self.nanos[k].load(Ordering::Relaxed));
        Stages {
            read: at(READ),
            decode: at(DECODE),
            draw: at(DRAW),
            augment: at(AUGMENT),
            samples: self.samples.load(Ordering::Relaxed),
        }
    }
}

/// One sample: its image, decoded at the scale its views allow, and both
/// views' parameters on that image.
struct Sample {
    image: Image,
    one: ViewParams,
    two: ViewParams,
}

/// Yields [`PairBatch`]es in step order from `start_step` on, assembled on
/// worker threads ahead of time (see the module docs for the data order).
pub struct PairLoader {
    assembler: Arc<Assembler>,
    steps_per_epoch: usize,
    start_step: usize,
    next_step: usize,
    source: Source,
}

/// Where batches come from.
enum Source {
    /// Built on the caller's thread, on demand.
    Inline(EpochOrder),
    /// Worker `w` builds steps `start_step + w + k·n` and sends them on
    /// channel `w`, so reading the channels round-robin gives step order.
    Workers {
        channels: Vec<Receiver<Result<PairBatch>>>,
        stop: Arc<AtomicBool>,
        handles: Vec<JoinHandle<()>>,
    },
}

impl PairLoader {
    /// A loader over `dataset` in batches of `batch_size` (the last partial
    /// batch of each epoch is dropped), starting at `start_step`.
    ///
    /// `workers` threads each build whole batches, up to two each ahead of
    /// the consumer; with 0 workers batches are built inside [`next`].
    /// `augmentation` says where the views are rendered.
    ///
    /// [`next`]: PairLoader::next
    pub fn new(
        dataset: Arc<Dataset>,
        cfg: AugmentConfig,
        (batch_size, seed): (usize, u64),
        workers: usize,
        start_step: usize,
        augmentation: Augmentation,
    ) -> Result<PairLoader> {
        Self::for_rank(
            dataset,
            cfg,
            (batch_size, seed),
            (0, 1),
            workers,
            start_step,
            augmentation,
        )
    }

    /// Rank `rank` of `world` data-parallel ranks' loader: its `batch_size`
    /// images of each global batch of `world·batch_size` (see
    /// [`crate::distributed`]), each drawn exactly as one device with the
    /// global batch draws it.
    pub fn for_rank(
        dataset: Arc<Dataset>,
        cfg: AugmentConfig,
        (batch_size, seed): (usize, u64),
        (rank, world): (usize, usize),
        workers: usize,
        start_step: usize,
        augmentation: Augmentation,
    ) -> Result<PairLoader> {
        if batch_size == 0 {
            return Err(Error::Usage("batch size must be positive".into()));
        }
        if rank >= world {
            return Err(Error::Usage(format!(
                "rank {rank} of {world}: expected a rank below the world size"
            )));
        }
        let global = batch_size * world;
        let steps_per_epoch = dataset.len() / global;
        if steps_per_epoch == 0 {
            return Err(Error::Usage(format!(
                "{} has fewer images than one batch of {global}",
                dataset.describe()
            )));
        }
        let assembler = Arc::new(Assembler {
            dataset,
            cfg,
            batch_size,
            rank: (rank, world),
            seed,
            steps_per_epoch,
            augmentation,
            clock: StageClock::default(),
        });
        let source = if workers == 0 {
            Source::Inline(EpochOrder::default())
        } else {
            spawn_workers(&assembler, workers, start_step)?
        };
        Ok(PairLoader {
            assembler,
            steps_per_epoch,
            start_step,
            next_step: start_step,
            source,
        })
    }

    /// Full global batches per epoch: `len / (world·batch_size)`.
    pub fn steps_per_epoch(&self) -> usize {
        self.steps_per_epoch
    }

    /// The time spent in each stage so far, summed over the workers
    /// (batches built ahead of the consumer included).
    pub fn stages(&self) -> Stages {
        self.assembler.clock.snapshot()
    }

    /// The step the next call to [`PairLoader::next`] returns.
    pub fn next_step(&self) -> usize {
        self.next_step
    }

    /// The next batch. An error (every image unreadable, a worker that
    /// died) is returned here; the loader does not advance past it.
    #[allow(clippy::should_implement_trait)] // fallible and endless: not an Iterator
    pub fn next(&mut self) -> Result<PairBatch> {
        let started = Instant::now();
        let step = self.next_step;
        let mut batch = match &mut self.source {
            Source::Inline(order) => self
                .assembler
                .batch(step, order, &AtomicBool::new(false))?
                .ok_or_else(|| loader_error("stopped"))?,
            Source::Workers { channels, .. } => {
                let channel = &channels[(step - self.start_step) % channels.len()];
                channel
                    .recv()
                    .map_err(|_| loader_error("a worker thread stopped unexpectedly"))??
            }
        };
        self.next_step += 1;
        batch.wait = started.elapsed();
        Ok(batch)
    }
}

impl Drop for PairLoader {
    fn drop(&mut self) {
        if let Source::Workers {
            channels,
            stop,
            handles,
        } = &mut self.source
        {
            // Stop between samples, and unblock workers waiting to send.
            stop.store(true, Ordering::Relaxed);
            channels.clear();
            for handle in handles.drain(..) {
                let _ = handle.join();
            }
        }
    }
}

/// Starts `n` workers for the steps from `start_step` on.
fn spawn_workers(assembler: &Arc<Assembler>, n: usize, start_step: usize) -> Result<Source> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut channels = Vec::with_capacity(n);
    let mut handles = Vec::with_capacity(n);
    for w in 0..n {
        let (tx, rx) = sync_channel(PREFETCH_PER_WORKER);
        let (assembler, stop) = (Arc::clone(assembler), Arc::clone(&stop));
        let handle = std::thread::Builder::new()
            .name(format!("loader-{w}"))
            .spawn(move || work(&assembler, start_step + w, n, &stop, &tx))
            .map_err(|e| loader_error(format!("cannot start a worker thread: {e}")))?;
        channels.push(rx);
        handles.push(handle);
    }
    Ok(Source::Workers {
        channels,
        stop,
        handles,
    })
}

/// A worker's loop: build steps `first, first + stride, ..` and send them
/// until the loader is dropped or a batch fails (the error is sent).
fn work(
    assembler: &Assembler,
    first: usize,
    stride: usize,
    stop: &AtomicBool,
    tx: &SyncSender<Result<PairBatch>>,
) {
    let mut order = EpochOrder::default();
    for step in (first..).step_by(stride) {
        let batch = match assembler.batch(step, &mut order, stop) {
            Ok(Some(batch)) => Ok(batch),
            Ok(None) => return,
            Err(e) => Err(e),
        };
        let failed = batch.is_err();
        if tx.send(batch).is_err() || failed {
            return;
        }
    }
}

/// Everything needed to build any step's batch.
struct Assembler {
    dataset: Arc<Dataset>,
    cfg: AugmentConfig,
    batch_size: usize,
    /// This loader's rank and the number of ranks.
    rank: (usize, usize),
    seed: u64,
    steps_per_epoch: usize,
    augmentation: Augmentation,
    clock: StageClock,
}

impl Assembler {
    /// Step `step`'s epoch and the position in its order of this rank's
    /// first image.
    fn first_position(&self, step: usize) -> (usize, usize) {
        let within = step % self.steps_per_epoch;
        let positions = crate::distributed::rank_positions(within, self.batch_size, self.rank);
        (step / self.steps_per_epoch, positions.start)
    }

    /// The batch for `step`, or `None` if `stop` was raised meanwhile.
    fn batch(
        &self,
        step: usize,
        order: &mut EpochOrder,
        stop: &AtomicBool,
    ) -> Result<Option<PairBatch>> {
        let (epoch, first) = self.first_position(step);
        let perm = order.get(self.seed, epoch, self.dataset.len());
        if self.augmentation == Augmentation::Device {
            return self.drawn(step, perm, stop);
        }
        let n = self.cfg.sample_len();
        let mut view1 = vec![0f32; self.batch_size * n];
        let mut view2 = vec![0f32; self.batch_size * n];
        let mut skipped = 0;
        for (b, (out1, out2)) in view1
            .chunks_exact_mut(n)
            .zip(view2.chunks_exact_mut(n))
            .enumerate()
        {
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let s = self.sample(perm, epoch, first + b, &mut skipped)?;
            let mut clock = Instant::now();
            apply_view(&s.image, &s.one, &self.cfg, out1);
            apply_view(&s.image, &s.two, &self.cfg, out2);
            self.clock.lap(AUGMENT, &mut clock);
        }
        let shape = [
            self.batch_size,
            self.cfg.size,
            self.cfg.size,
            self.cfg.channels,
        ];
        Ok(Some(PairBatch {
            step,
            epoch,
            views: Views::Host {
                view1: Tensor::from_vec(view1, shape)?,
                view2: Tensor::from_vec(view2, shape)?,
            },
            skipped,
            wait: Duration::ZERO,
        }))
    }

    /// The batch for `step` as images and drawn view parameters: the same
    /// images and random draws as [`Assembler::batch`] renders on the host.
    fn drawn(&self, step: usize, perm: &[usize], stop: &AtomicBool) -> Result<Option<PairBatch>> {
        let (epoch, first) = self.first_position(step);
        let (mut images, mut one, mut two) = (Vec::new(), Vec::new(), Vec::new());
        let mut skipped = 0;
        for pos in first..first + self.batch_size {
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let s = self.sample(perm, epoch, pos, &mut skipped)?;
            let mut clock = Instant::now();
            images.push(s.image);
            one.push(s.one);
            two.push(s.two);
            self.clock.lap(AUGMENT, &mut clock);
        }
        Ok(Some(PairBatch {
            step,
            epoch,
            views: Views::Drawn { images, one, two },
            skipped,
            wait: Duration::ZERO,
        }))
    }

    /// The sample at position `pos` of epoch `epoch`: the first readable
    /// image at or after `pos` in `perm` (wrapping), counting the unreadable
    /// ones in `skipped`, with the views drawn from the position's seed.
    fn sample(
        &self,
        perm: &[usize],
        epoch: usize,
        pos: usize,
        skipped: &mut usize,
    ) -> Result<Sample> {
        let seed = sample_seed(self.seed, epoch, pos);
        for k in 0..perm.len() {
            match self.try_sample(perm[(pos + k) % perm.len()], seed) {
                Ok(sample) => return Ok(sample),
                Err(_) => *skipped += 1,
            }
        }
        Err(loader_error(format!(
            "no readable image in {}",
            self.dataset.describe()
        )))
    }

    /// Image `index` with both views drawn from `seed`: read, header, draws,
    /// then a decode at the reduced scale the crops allow.
    fn try_sample(&self, index: usize, seed: u64) -> Result<Sample, ImageError> {
        let mut clock = Instant::now();
        let encoded = self.dataset.read(index)?;
        self.clock.lap(READ, &mut clock);
        let fail = |detail| self.dataset.image_error(index, detail);
        let size = encoded.dimensions().map_err(fail)?;
        self.clock.lap(DECODE, &mut clock);
        let mut rng = Rng::new(seed);
        let mut one = ViewParams::draw(size, View::One, &self.cfg, &mut rng);
        let mut two = ViewParams::draw(size, View::Two, &self.cfg, &mut rng);
        let crops = [one.crop, two.crop].map(|c| (c.height, c.width));
        let divisor = divisor_for(&crops, self.cfg.size);
        self.clock.lap(DRAW, &mut clock);
        let (image, divisor) = encoded.decode(divisor).map_err(fail)?;
        if divisor > 1 {
            one.crop = one.crop.reduced(divisor, size);
            two.crop = two.crop.reduced(divisor, size);
        }
        self.clock.lap(DECODE, &mut clock);
        self.clock.samples.fetch_add(1, Ordering::Relaxed);
        Ok(Sample { image, one, two })
    }
}

/// The current epoch's order, recomputed when the epoch changes.
#[derive(Default)]
struct EpochOrder {
    epoch: Option<usize>,
    perm: Vec<usize>,
}

impl EpochOrder {
    fn get(&mut self, seed: u64, epoch: usize, len: usize) -> &[usize] {
        if self.epoch != Some(epoch) {
            self.perm = epoch_order(seed, epoch, len);
            self.epoch = Some(epoch);
        }
        &self.perm
    }
}

/// The order in which epoch `epoch` visits a `len`-image dataset: a
/// Fisher–Yates shuffle (`i` from `len − 1` down to 1 swaps with
/// `below(i + 1)`) driven by `Rng::new(seed ^ mix(epoch))`.
pub fn epoch_order(seed: u64, epoch: usize, len: usize) -> Vec<usize> {
    let mut rng = Rng::new(seed ^ mix(epoch as u64));
    let mut perm: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        perm.swap(i, rng.below(i + 1));
    }
    perm
}

/// The seed of the augmentation `Rng` of position `pos` in epoch `epoch`.
fn sample_seed(seed: u64, epoch: usize, pos: usize) -> u64 {
    // A constant separates this stream from the epoch orders' seeds.
    mix(mix(mix(seed ^ 0xa076_1d64_78bd_642f) ^ epoch as u64) ^ pos as u64)
}

/// SplitMix64's output function: a bijective mix of 64 bits.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// An error from the loader itself rather than from a file.
fn loader_error(detail: impl Into<String>) -> Error {
    Error::data("data loader", detail)
}

/// One batch of [`eval_batches`].
pub struct EvalBatch {
    /// `[b, S, S, C]` eval views.
    pub images: Tensor,
    /// Their labels (−1 for an unlabelled dataset).
    pub labels: Vec<i64>,
    /// Their indices in the dataset: unreadable images leave gaps.
    pub indices: Vec<usize>,
}

/// Evaluation batches of `dataset` in order: up to `batch` images (a batch
/// of 0 counts as 1) through [`eval_view`]. Unreadable images are left out;
/// images are decoded in parallel on the rayon pool.
pub fn eval_batches<'a>(
    dataset: &'a Dataset,
    cfg: &AugmentConfig,
    batch: usize,
) -> impl Iterator<Item = Result<EvalBatch>> + use<'a> {
    let cfg = cfg.clone();
    let batch = batch.max(1);
    let mut next = 0;
    std::iter::from_fn(move || {
        let n = cfg.sample_len();
        let mut pixels = Vec::with_capacity(batch * n);
        let mut labels = Vec::with_capacity(batch);
        let mut indices = Vec::with_capacity(batch);
        while labels.len() < batch && next < dataset.len() {
            let end = (next + batch - labels.len()).min(dataset.len());
            let samples: Vec<Option<(Vec<f32>, i64, usize)>> = (next..end)
                .into_par_iter()
                .map(|i| {
                    let image = dataset.image(i).ok()?;
                    let mut out = vec![0f32; n];
                    eval_view(&image, &cfg, &mut out);
                    Some((out, dataset.label(i).unwrap_or(-1), i))
                })
                .collect();
            next = end;
            for (out, label, i) in samples.into_iter().flatten() {
                pixels.extend_from_slice(&out);
                labels.push(label);
                indices.push(i);
            }
        }
        if labels.is_empty() {
            return None;
        }
        let shape = [labels.len(), cfg.size, cfg.size, cfg.channels];
        Some(
            Tensor::from_vec(pixels, shape)
                .map(|images| EvalBatch {
                    images,
                    labels,
                    indices,
                })
                .map_err(Error::from),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::{TempDir, write_corrupt_jpeg, write_image};
    use crate::data::{open, synthetic};

    fn synthetic_set(n: usize) -> Arc<Dataset> {
        Arc::new(synthetic(n, 8, 3, 11).train)
    }

    fn cfg() -> AugmentConfig {
        AugmentConfig::new(8, 3).unwrap()
    }

    fn run(
        ds: &Arc<Dataset>,
        workers: usize,
        start: usize,
        steps: usize,
    ) -> Vec<(usize, usize, Vec<f32>, Vec<f32>)> {
        let mut loader = PairLoader::new(
            Arc::clone(ds),
            cfg(),
            (4, 99),
            workers,
            start,
            Augmentation::Host,
        )
        .unwrap();
        (0..steps)
            .map(|_| {
                let b = loader.next().unwrap();
                let (view1, view2) = b.views(None).unwrap();
                assert_eq!(view1.dims(), &[4, 8, 8, 3]);
                let v1 = view1.to_vec::<f32>().unwrap();
                let v2 = view2.to_vec::<f32>().unwrap();
                (b.step, b.epoch, v1, v2)
            })
            .collect()
    }

    #[test]
    fn views_drawn_for_a_gpu_render_like_host_views() {
        let ds = synthetic_set(12);
        let host = run(&ds, 0, 0, 3);
        let gpu = GpuAugmenter::new(engine::Device::Emulator, cfg(), engine::DType::F32).unwrap();
        let mut loader =
            PairLoader::new(Arc::clone(&ds), cfg(), (4, 99), 2, 0, Augmentation::Device).unwrap();
        for (step, want) in host.iter().enumerate() {
            let b = loader.next().unwrap();
            assert!(matches!(b.views, Views::Drawn { .. }));
            assert!(b.views(None).is_err(), "drawn views need the augmenter");
            let (v1, v2) = b.views(Some(&gpu)).unwrap();
            assert_eq!(v1.device(), engine::Device::Emulator);
            for (got, want) in [(v1, &want.2), (v2, &want.3)] {
                let got = got.to_vec::<f32>().unwrap();
                let worst = got
                    .iter()
                    .zip(want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(worst < 1e-4, "step {step}: views differ by {worst}");
            }
        }
    }

    #[test]
    fn batches_depend_only_on_seed_and_step() {
        let ds = synthetic_set(42); // 10 steps per epoch, 2 images dropped
        let full = run(&ds, 0, 0, 25);
        assert_eq!((full[9].0, full[9].1, full[10].1, full[24].1), (9, 0, 1, 2));
        assert_ne!(full[0].2, full[0].3, "the two views differ");
        assert_ne!(full[0].2, full[10].2, "epochs differ");
        for (workers, start) in [(1, 0), (3, 0), (2, 13), (0, 13)] {
            let resumed = run(&ds, workers, start, 25 - start);
            assert_eq!(
                resumed[..],
                full[start..],
                "workers {workers}, start {start}"
            );
        }
    }

    #[test]
    fn epoch_orders_are_distinct_permutations() {
        let a = epoch_order(5, 0, 100);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(a, epoch_order(5, 1, 100));
        assert_ne!(a, epoch_order(6, 0, 100));
        assert_eq!(a, epoch_order(5, 0, 100));
        assert!(epoch_order(5, 0, 0).is_empty());
    }

    #[test]
    fn corrupt_images_are_replaced_and_counted() {
        let dir = TempDir::new("loader-skip");
        for i in 0..3 {
            write_image(&dir.path().join(format!("c/{i}.png")), 10, i);
        }
        write_corrupt_jpeg(&dir.path().join("c/bad.jpg"));
        let ds = Arc::new(open(dir.path()).unwrap().train);
        for workers in [0, 2] {
            let mut loader = PairLoader::new(
                Arc::clone(&ds),
                cfg(),
                (2, 1),
                workers,
                0,
                Augmentation::Host,
            )
            .unwrap();
            assert_eq!(loader.steps_per_epoch(), 2);
            for _epoch in 0..3 {
                // Every position of the 4-image epoch is used once.
                let skipped: usize = (0..2).map(|_| loader.next().unwrap().skipped).sum();
                assert_eq!(skipped, 1);
            }
        }
    }

    #[test]
    fn ranks_split_each_global_batch_into_the_slices_one_device_draws() {
        let ds = synthetic_set(40);
        let views = |batch: PairBatch| match batch.views {
            Views::Host { view1, view2 } => [view1, view2].map(|v| v.to_vec::<f32>().unwrap()),
            Views::Drawn { .. } => unreachable!("host augmentation"),
        };
        let mut whole =
            PairLoader::new(Arc::clone(&ds), cfg(), (12, 5), 2, 0, Augmentation::Host).unwrap();
        let mut ranks: Vec<PairLoader> = (0..3)
            .map(|r| {
                PairLoader::for_rank(
                    Arc::clone(&ds),
                    cfg(),
                    (4, 5),
                    (r, 3),
                    1,
                    0,
                    Augmentation::Host,
                )
                .unwrap()
            })
            .collect();
        assert_eq!(ranks[2].steps_per_epoch(), whole.steps_per_epoch());
        // Seven steps: past the end of the first epoch (3 steps of 12).
        for _ in 0..7 {
            let expected = views(whole.next().unwrap());
            let mut joined = [Vec::new(), Vec::new()];
            for loader in &mut ranks {
                for (all, part) in joined.iter_mut().zip(views(loader.next().unwrap())) {
                    all.extend(part);
                }
            }
            assert_eq!(joined, expected);
        }
        assert!(PairLoader::for_rank(ds, cfg(), (4, 5), (3, 3), 0, 0, Augmentation::Host).is_err());
    }

    #[test]
    fn an_unreadable_dataset_is_an_error_not_a_hang() {
        let dir = TempDir::new("loader-bad");
        for i in 0..3 {
            write_corrupt_jpeg(&dir.path().join(format!("c/{i}.jpg")));
        }
        let ds = Arc::new(open(dir.path()).unwrap().train);
        for workers in [0, 2] {
            let mut loader = PairLoader::new(
                Arc::clone(&ds),
                cfg(),
                (2, 1),
                workers,
                0,
                Augmentation::Host,
            )
            .unwrap();
            let err = loader.next().unwrap_err();
            assert!(err.to_string().contains("no readable image"), "{err}");
            assert!(loader.next().is_err());
        }
    }

    #[test]
    fn rejects_datasets_smaller_than_a_batch() {
        let err = PairLoader::new(synthetic_set(3), cfg(), (4, 0), 0, 0, Augmentation::Host)
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("fewer images than one batch"),
            "{err}"
        );
        assert!(
            PairLoader::new(synthetic_set(3), cfg(), (0, 0), 0, 0, Augmentation::Host).is_err()
        );
    }

    #[test]
    fn dropping_stops_the_workers_promptly() {
        let ds = Arc::new(synthetic(256, 64, 3, 0).train);
        let cfg = AugmentConfig::new(64, 3).unwrap();
        let mut loader = PairLoader::new(ds, cfg, (128, 0), 4, 0, Augmentation::Host).unwrap();
        let b = loader.next().unwrap();
        let (_, view2) = b.views(None).unwrap();
        assert_eq!((b.step, view2.dims()), (0, &[128, 64, 64, 3][..]));
        assert_eq!(loader.next_step(), 1);
        let started = Instant::now();
        drop(loader);
        // At most one image per worker is finished after the stop flag.
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn eval_batches_are_in_order_and_skip_corrupt_images() {
        let dir = TempDir::new("loader-eval");
        for (class, i) in [("a", 0), ("a", 1), ("b", 2), ("b", 3), ("b", 4)] {
            write_image(&dir.path().join(format!("{class}/{i}.png")), 12, i);
        }
        write_corrupt_jpeg(&dir.path().join("a/2_bad.jpg"));
        let ds = open(dir.path()).unwrap().train;
        let cfg = cfg();
        let batches: Vec<_> = eval_batches(&ds, &cfg, 2).map(|b| b.unwrap()).collect();
        let labels: Vec<Vec<i64>> = batches.iter().map(|b| b.labels.clone()).collect();
        assert_eq!(labels, [vec![0, 0], vec![1, 1], vec![1]]);
        let indices: Vec<Vec<usize>> = batches.iter().map(|b| b.indices.clone()).collect();
        assert_eq!(
            indices,
            [vec![0, 1], vec![3, 4], vec![5]],
            "the corrupt image is a gap"
        );
        assert_eq!(batches[2].images.dims(), &[1, 8, 8, 3]);
        // Deterministic, and equal to eval_view of the images.
        let again: Vec<_> = eval_batches(&ds, &cfg, 3).map(|b| b.unwrap()).collect();
        let mut want = vec![0f32; cfg.sample_len()];
        eval_view(&ds.image(3).unwrap(), &cfg, &mut want);
        assert_eq!(
            again[0].images.to_vec::<f32>().unwrap()[2 * 192..],
            want[..]
        );
        // Unlabelled datasets get −1.
        let pixels = vec![0u8; 2 * 8 * 8 * 3];
        let unlabelled = Dataset::from_pixels("u", pixels, (8, 8, 3), None).unwrap();
        let b = eval_batches(&unlabelled, &cfg, 8).next().unwrap().unwrap();
        assert_eq!(
            (b.images.dims(), b.labels),
            (&[2, 8, 8, 3][..], vec![-1, -1])
        );
    }
}
