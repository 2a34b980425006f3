//! Evaluation of a pretrained network: kNN on frozen features, the linear probe
//! of m2t-method.md §6, and raw-pixel baselines.

use crate::augment::AugmentConfig;
use crate::data::Dataset;
use crate::knn::{DeviceFeatures, Features, knn_accuracy, knn_accuracy_device};
use crate::loader::eval_batches;
use crate::{Error, Result};
use nets::m2t::{M2t, Which};

/// Images per forward pass when extracting features.
pub const FEATURE_BATCH: usize = 256;
/// kNN neighbours and temperature (m2t-method.md §6).
pub const KNN_K: usize = 200;
/// kNN temperature.
pub const KNN_T: f64 = 0.1;
/// kNN memory rows on the CPU when none are asked for.
pub const CPU_KNN_MEMORY: usize = 10_000;

/// The kNN memory (0: all) when none is asked for: the whole training set
/// (`rows` images of `dim` features) on a GPU where its f32 features take
/// at most a quarter of the memory (the rest holds the model, the queries
/// and the similarities), the rows that fit there if not; on the CPU
/// [`CPU_KNN_MEMORY`], whose search already takes seconds.
pub fn default_knn_memory(device: engine::Device, rows: usize, dim: usize) -> usize {
    let Some(budget) = feature_budget(device) else {
        return CPU_KNN_MEMORY;
    };
    let fits = budget / (4 * dim.max(1));
    if rows <= fits {
        0
    } else {
        fits.max(CPU_KNN_MEMORY)
    }
}

/// The bytes of features evaluation keeps on a CUDA `device`: a quarter of
/// its memory, the rest left to the model and the work; `None` elsewhere.
fn feature_budget(device: engine::Device) -> Option<usize> {
    let engine::Device::Cuda(ordinal) = device else {
        return None;
    };
    let memory = kernels::probe::probe()
        .devices
        .ok()
        .and_then(|all| all.into_iter().find(|d| d.ordinal == ordinal))
        .map_or(0, |d| d.memory_bytes);
    Some(memory / 4)
}

/// `limit` (0: all) images of `dataset`, in order, mapped by `f` from eval
/// views, with the dataset index of each row (unreadable images are left
/// out). Stops between batches after SIGINT or SIGTERM.
fn collect(
    dataset: &Dataset,
    aug: &AugmentConfig,
    limit: usize,
    mut f: impl FnMut(&engine::Tensor) -> Result<engine::Tensor>,
) -> Result<(Features, Vec<usize>)> {
    let (mut data, mut dim) = (Vec::new(), 0);
    let (labels, indices) = each_batch(dataset, aug, limit, |images, take| {
        let feats = f(images)?;
        dim = feats.dims()[1];
        data.extend_from_slice(&feats.as_slice::<f32>()?[..take * dim]);
        Ok(())
    })?;
    Ok((Features { data, dim, labels }, indices))
}

/// Runs `keep` on the eval views of `limit` (0: all) images of `dataset`, a
/// batch at a time, with how many of the batch's rows to keep; returns the
/// labels and dataset indices of the rows kept (unreadable images are left
/// out). Stops between batches after SIGINT or SIGTERM.
fn each_batch(
    dataset: &Dataset,
    aug: &AugmentConfig,
    limit: usize,
    mut keep: impl FnMut(&engine::Tensor, usize) -> Result<()>,
) -> Result<(Vec<i64>, Vec<usize>)> {
    let limit = if limit == 0 {
        dataset.len()
    } else {
        limit.min(dataset.len())
    };
    let (mut labels, mut indices) = (Vec::new(), Vec::new());
    for batch in eval_batches(dataset, aug, FEATURE_BATCH) {
        if crate::interrupt::requested() {
            return Err(Error::Interrupted(format!(
                "evaluation of {} stopped after {} images",
                dataset.describe(),
                labels.len()
            )));
        }
        let batch = batch?;
        let take = (limit - labels.len()).min(batch.labels.len());
        keep(&batch.images, take)?;
        labels.extend_from_slice(&batch.labels[..take]);
        indices.extend_from_slice(&batch.indices[..take]);
        if labels.len() >= limit {
            break;
        }
    }
    Ok((labels, indices))
}

/// Eval-mode backbone features of up to `limit` images (0: all), computed
/// and kept on the model's GPU in batches: the kNN memory bank.
pub fn device_network_features(
    model: &M2t,
    which: Which,
    dataset: &Dataset,
    aug: &AugmentConfig,
    limit: usize,
) -> Result<DeviceFeatures> {
    let rows = if limit == 0 {
        dataset.len()
    } else {
        limit.min(dataset.len())
    };
    let dim = model.config().backbone.feature_dim();
    let mut bank = engine::Tensor::zeros([rows * dim], engine::DType::F32, model.device())?;
    let mut filled = 0;
    let (labels, _) = each_batch(dataset, aug, limit, |images, take| {
        let feats = model.device_features(which, images)?;
        let n = feats.dims()[0];
        let kept = feats.reshape([n * dim])?.narrow(0, take * dim)?;
        engine::pipeline::copy_at(&mut bank, filled * dim, &kept)?;
        filled += take;
        Ok(())
    })?;
    Ok(DeviceFeatures {
        data: bank.narrow(0, filled * dim)?.reshape([filled, dim])?,
        labels,
    })
}

/// Eval-mode backbone features of up to `limit` images (0: all).
pub fn network_features(
    model: &M2t,
    which: Which,
    dataset: &Dataset,
    aug: &AugmentConfig,
    limit: usize,
) -> Result<Features> {
    Ok(indexed_network_features(model, which, dataset, aug, limit)?.0)
}

/// [`network_features`] with the dataset index of each row: unreadable
/// images are left out.
pub fn indexed_network_features(
    model: &M2t,
    which: Which,
    dataset: &Dataset,
    aug: &AugmentConfig,
    limit: usize,
) -> Result<(Features, Vec<usize>)> {
    collect(dataset, aug, limit, |images| {
        Ok(model.features(which, images)?)
    })
}

/// The normalised eval-view pixels of up to `limit` images, flattened.
pub fn pixel_features(dataset: &Dataset, aug: &AugmentConfig, limit: usize) -> Result<Features> {
    let (features, _) = collect(dataset, aug, limit, |images| {
        let n = images.dims()[0];
        Ok(images.reshape([n, images.numel() / n.max(1)])?)
    })?;
    Ok(features)
}

/// Raw pixels centred on the memory's mean, as kNN features: `memory_limit`
/// labelled training images as memory, `query_limit` test images as queries
/// (0: all).
pub fn centred_pixel_features(
    memory: &Dataset,
    queries: &Dataset,
    aug: &AugmentConfig,
    memory_limit: usize,
    query_limit: usize,
) -> Result<(Features, Features)> {
    let mem = pixel_features(memory, aug, memory_limit)?;
    let q = pixel_features(queries, aug, query_limit)?;
    Ok(crate::knn::centre_on(&mem, &q))
}

/// kNN top-1 accuracy of raw centred pixels, the bar a representation has
/// to clear, with `(memory, queries)` images (as in [`centred_pixel_features`]).
pub fn knn_of_pixels(
    (memory, queries): (&Dataset, &Dataset),
    aug: &AugmentConfig,
    (memory_limit, query_limit): (usize, usize),
) -> Result<f64> {
    let (mem, q) = centred_pixel_features(memory, queries, aug, memory_limit, query_limit)?;
    knn_accuracy(&mem, &q, KNN_K, KNN_T, classes(memory)?)
}

fn classes(memory: &Dataset) -> Result<usize> {
    memory
        .num_classes()
        .ok_or_else(|| Error::Usage("kNN needs a labelled dataset".into()))
}

/// kNN top-1 accuracy of a network's features: `memory_limit` labelled training
/// images as memory, `query_limit` test images as queries (0: all). A model
/// on a GPU computes it there: features in the training precision, the
/// memory bank, similarities, top-k and vote on the device.
pub fn knn_of_network(
    model: &M2t,
    which: Which,
    memory: &Dataset,
    queries: &Dataset,
    aug: &AugmentConfig,
    memory_limit: usize,
    query_limit: usize,
) -> Result<f64> {
    let classes = classes(memory)?;
    if model.device().is_gpu() {
        let mem = device_network_features(model, which, memory, aug, memory_limit)?;
        let q = device_network_features(model, which, queries, aug, query_limit)?;
        return knn_accuracy_device(mem, q, KNN_K, KNN_T, classes);
    }
    let mem = network_features(model, which, memory, aug, memory_limit)?;
    let q = network_features(model, which, queries, aug, query_limit)?;
    knn_accuracy(&mem, &q, KNN_K, KNN_T, classes)
}

/// Test rows per evaluation chunk of the linear probe.
const TEST_CHUNK: usize = 16 * FEATURE_BATCH;

/// The linear probe's test features, computed once: cached on the model's
/// device when they take at most a quarter of its memory (always on the CPU
/// and the emulator), else kept in host memory and uploaded a chunk at a time.
struct TestFeatures {
    cached: Option<engine::Tensor>,
    host: Features,
    labels: Vec<i64>,
    device: engine::Device,
}

impl TestFeatures {
    fn of(model: &M2t, which: Which, test: &Dataset, aug: &AugmentConfig) -> Result<TestFeatures> {
        let device = model.device();
        let bytes = 4 * test.len() * model.config().backbone.feature_dim();
        if feature_budget(device).is_none_or(|budget| bytes <= budget) {
            let f = device_or_host_features(model, which, test, aug)?;
            return Ok(TestFeatures {
                labels: f.labels,
                cached: Some(f.data),
                host: Features::default(),
                device,
            });
        }
        let host = network_features(model, which, test, aug, 0)?;
        Ok(TestFeatures {
            labels: host.labels.clone(),
            cached: None,
            host,
            device,
        })
    }

    /// The first row of each chunk of [`TEST_CHUNK`] rows.
    fn starts(&self) -> std::iter::StepBy<std::ops::Range<usize>> {
        (0..self.labels.len()).step_by(TEST_CHUNK)
    }

    /// The chunk from row `start`, on the model's device.
    fn chunk(&self, start: usize) -> Result<engine::Tensor> {
        let rows = self.labels.len();
        let n = TEST_CHUNK.min(rows - start);
        Ok(match &self.cached {
            Some(all) => {
                let dim = all.dims()[1];
                all.reshape([rows * dim])?
                    .narrow(start * dim, n * dim)?
                    .reshape([n, dim])?
            }
            None => {
                let dim = self.host.dim;
                engine::Tensor::from_vec(
                    self.host.data[start * dim..(start + n) * dim].to_vec(),
                    [n, dim],
                )?
                .to_device(self.device)?
            }
        })
    }
}

/// Every image's features as one `[rows, dim]` tensor on the model's
/// device (the host for a CPU model).
fn device_or_host_features(
    model: &M2t,
    which: Which,
    dataset: &Dataset,
    aug: &AugmentConfig,
) -> Result<DeviceFeatures> {
    if model.device().is_gpu() {
        return device_network_features(model, which, dataset, aug, 0);
    }
    let f = network_features(model, which, dataset, aug, 0)?;
    let rows = f.labels.len();
    Ok(DeviceFeatures {
        data: engine::Tensor::from_vec(f.data, [rows, f.dim])?,
        labels: f.labels,
    })
}

/// A probe loss above this has diverged: its logits are batch-normalised, so
/// a sane probe stays near ln(classes) (2.3 for 10 classes).
const DIVERGED_PROBE_LOSS: f64 = 1e4;

/// The error of a linear probe that diverged.
fn diverged(what: String) -> Error {
    Error::Diverged(format!("linear eval {what}; stopped. Try a lower --lr."))
}

/// What the linear probe reports.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearEvalReport {
    /// Test top-1 accuracy after each epoch.
    pub per_epoch: Vec<f64>,
    /// The best of them (the method reports the best).
    pub best: f64,
}

/// Linear evaluation (m2t-method.md §6) on a frozen backbone: Linear(F→classes,
/// weights N(0, 0.01²), bias 0) then BatchNorm1d(classes), SGD momentum 0.9,
/// no weight decay, learning rate `lr` with a per-iteration cosine over
/// `epochs`; training views are RandomResizedCrop + flip, test views the eval
/// transform; `train_limit` (0: all) caps the training images per epoch.
#[allow(clippy::too_many_arguments)]
pub fn linear_eval(
    model: &M2t,
    which: Which,
    train: &Dataset,
    test: &Dataset,
    aug: &AugmentConfig,
    epochs: usize,
    batch: usize,
    lr: f64,
    train_limit: usize,
    seed: u64,
) -> Result<LinearEvalReport> {
    use engine::optim::Sgd;
    use engine::schedule::LrSchedule;
    use engine::{ParamKind, Rng, Tape, Tensor};
    use nets::layers::{BN_MOMENTUM, BatchNorm, BnBuffers, BnMode, Forward, Linear, NetBuilder};

    let classes = classes(train)?;
    let dim = model.config().backbone.feature_dim();
    let mut b = NetBuilder::new(seed);
    let fc = Linear::new(&mut b, "fc", dim, classes)?;
    let bn = BatchNorm::new(&mut b, "bn", classes)?;
    let device = model.device();
    let mut buffers = BnBuffers::new(&b.bn_layers)?.to_device(device)?;
    let mut store = b.params.build()?;
    let mut rng = Rng::new(seed);
    store.set(fc.weight, &rng.normal_vec(classes * dim, 0.01))?;
    store.set(fc.bias, &vec![0.0; classes])?;
    debug_assert_eq!(store.info(fc.weight).kind, ParamKind::Weight);
    // The head trains where the backbone runs.
    let mut store = store.to_device(device)?;
    let mut sgd = Sgd::new(&store, 0.9, 0.0)?;

    let n = if train_limit == 0 {
        train.len()
    } else {
        train_limit.min(train.len())
    };
    let steps_per_epoch = n / batch;
    if steps_per_epoch == 0 || epochs == 0 {
        return Err(Error::Usage(format!(
            "linear eval needs ≥ 1 epoch and ≥ {batch} training images, has {n}"
        )));
    }
    let schedule = LrSchedule {
        base_lr: lr,
        warmup_iters: 0,
        total_iters: epochs * steps_per_epoch,
    };
    let test_features = TestFeatures::of(model, which, test, aug)?;
    let sample = aug.sample_len();
    let mut per_epoch = Vec::new();
    for epoch in 0..epochs {
        let order = crate::loader::epoch_order(seed, epoch, n);
        for (step, indices) in order.chunks_exact(batch).enumerate() {
            let mut pixels = vec![0.0f32; batch * sample];
            let mut labels = Vec::with_capacity(batch);
            for (slot, &i) in indices.iter().enumerate() {
                // Corrupt images are rare; a zero image keeps the batch shape.
                if let Ok(image) = train.image(i) {
                    let mut view_rng = Rng::new(seed ^ ((epoch as u64) << 32) ^ i as u64);
                    crate::augment::classifier_view(
                        &image,
                        aug,
                        &mut view_rng,
                        &mut pixels[slot * sample..(slot + 1) * sample],
                    );
                }
                labels.push(train.label(i).unwrap_or(0));
            }
            let images = Tensor::from_vec(pixels, [batch, aug.size, aug.size, aug.channels])?;
            let features = model.device_features(which, &images)?;
            let mut tape = Tape::new();
            let params = store.attach(&mut tape);
            let mut f = Forward::new(&mut tape, &params, BnMode::Train, &buffers);
            let x = f.tape.constant(features);
            let logits = fc.forward(&mut f, &x)?;
            let logits = bn.forward(&mut f, &logits)?;
            let stats = std::mem::take(&mut f.stats);
            let labels = Tensor::from_vec(labels, [batch])?.to_device(device)?;
            let loss = tape.cross_entropy(&logits, &labels)?;
            let loss_value = loss
                .value()
                .to_f64_vec()?
                .first()
                .copied()
                .unwrap_or(f64::NAN);
            let grads = tape.backward(&loss)?;
            store.zero_grad()?;
            store.accumulate_grads(params, &grads)?;
            // As in pretraining, a non-finite loss or gradient stops the probe
            // rather than reporting the accuracy of garbage weights; so does a
            // loss that batch-normalised logits reach only from exploded weights.
            let sane_loss = loss_value.is_finite() && loss_value <= DIVERGED_PROBE_LOSS;
            let finite_gradients = store.grad_norm()?.is_some();
            if !(sane_loss && finite_gradients) {
                let gradients = if finite_gradients {
                    "finite"
                } else {
                    "not finite"
                };
                return Err(diverged(format!(
                    "epoch {}, step {}: the probe's loss is {loss_value} and its gradients are {gradients}",
                    epoch + 1,
                    step + 1,
                )));
            }
            buffers.update_running(&stats, BN_MOMENTUM)?;
            sgd.step(
                &mut store,
                schedule.at(epoch * steps_per_epoch + step) as f32,
            )?;
        }
        // Test accuracy with the probe in eval mode, a chunk of rows at a time.
        let mut correct = 0;
        for start in test_features.starts() {
            let inputs = test_features.chunk(start)?;
            let mut tape = Tape::no_grad();
            let params = store.attach(&mut tape);
            let mut f = Forward::new(&mut tape, &params, BnMode::Eval, &buffers);
            let x = f.tape.constant(inputs);
            let logits = fc.forward(&mut f, &x)?;
            let logits = bn.forward(&mut f, &logits)?;
            let scores = logits.value().to_vec::<f32>()?;
            // Weights or BN statistics that overflowed give non-finite scores
            // even while the training loss, normalised by batch statistics, is finite.
            if scores.iter().any(|v| !v.is_finite()) {
                return Err(diverged(format!(
                    "epoch {}: the probe's test scores are not finite",
                    epoch + 1
                )));
            }
            let labels = &test_features.labels[start..];
            correct += scores
                .chunks(classes)
                .zip(labels)
                .filter(|&(row, &label)| {
                    let best = row
                        .iter()
                        .enumerate()
                        .fold(0, |b, (i, &v)| if v > row[b] { i } else { b });
                    best as i64 == label
                })
                .count();
        }
        let rows = test_features.labels.len();
        per_epoch.push(correct as f64 / rows.max(1) as f64);
    }
    let best = per_epoch.iter().copied().fold(0.0, f64::max);
    Ok(LinearEvalReport { per_epoch, best })
}
