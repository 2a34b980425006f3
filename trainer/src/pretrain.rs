//! `trainer pretrain`: resolve the configuration, then run Momentum² Teacher
//! step by step with metrics, kNN monitoring, checkpoints and exact resume.

use crate::augment::AugmentConfig;
use crate::augment::GpuAugmenter;
use crate::checkpoint::{self, State};
use crate::config::{DataSource, OptimizerKind, PretrainOptions, RunConfig};
use crate::data::{self, Fingerprint, Splits};
use crate::eval;
use crate::limits::{self, MemoryEstimate};
use crate::loader::{Augmentation, PairBatch, PairLoader};
use crate::run_lock::RunLock;
use crate::{Error, Result, interrupt, plot};
use engine::comm::Communicator;
use engine::ops::BesselCorrection;
use engine::optim::{Lars, Sgd};
use engine::schedule::LrSchedule;
use engine::{DType, Device};
use engine::{ParamStore, Scalar, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use nets::m2t::{CapturedStep, M2t, M2tConfig, StepReport, StepResults, StepSchedule, Which};
use nets::resnet::{ResNetConfig, Stem};
use serde_json::json;
use std::fs;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Images of the synthetic dataset (train split).
const SYNTHETIC_IMAGES: usize = 2048;

/// The optimiser of the run.
pub enum Optimizer {
    /// SGD, momentum 0.9.
    Sgd(Sgd),
    /// LARS, η = 0.001, momentum 0.9.
    Lars(Lars),
}

impl Optimizer {
    /// The configured optimiser over `store`.
    pub fn new(kind: OptimizerKind, wd: f64, store: &ParamStore) -> Result<Self> {
        Ok(match kind {
            OptimizerKind::Sgd => Optimizer::Sgd(Sgd::new(store, 0.9, wd as f32)?),
            OptimizerKind::Lars => Optimizer::Lars(Lars::new(store, 0.001, 0.9, wd as f32)?),
        })
    }

    /// One update with learning rate `lr`.
    pub fn step(&mut self, store: &mut ParamStore, lr: &Scalar) -> engine::Result<()> {
        self.step_unless(store, lr, None)
    }

    /// One update, cancelled on a GPU by the device flag `skip` when set.
    pub fn step_unless(
        &mut self,
        store: &mut ParamStore,
        lr: &Scalar,
        skip: Option<&Tensor>,
    ) -> engine::Result<()> {
        match self {
            Optimizer::Sgd(o) => o.step_unless(store, lr.clone(), skip),
            Optimizer::Lars(o) => o.step_unless(store, lr.clone(), skip),
        }
    }

    /// The momentum buffer, for checkpoints.
    pub fn velocity(&self) -> &Tensor {
        match self {
            Optimizer::Sgd(o) => o.velocity(),
            Optimizer::Lars(o) => o.velocity(),
        }
    }

    fn set_velocity(&mut self, v: &[f32]) -> Result<()> {
        match self {
            Optimizer::Sgd(o) => o.set_velocity(v)?,
            Optimizer::Lars(o) => o.set_velocity(v)?,
        }
        Ok(())
    }
}

/// The memory of the synthetic dataset at `res` pixels: train and test images.
fn synthetic_images(res: usize) -> MemoryEstimate {
    let images = (SYNTHETIC_IMAGES + SYNTHETIC_IMAGES / 5) as f64;
    MemoryEstimate {
        data: images * (res * res * 3) as f64,
        ..MemoryEstimate::default()
    }
}

/// Opens the images a configuration names.
pub fn open_data(source: &DataSource, res: usize, seed: u64) -> Result<Splits> {
    match source {
        DataSource::Path(p) => data::open(p),
        DataSource::Synthetic => Ok(data::synthetic(SYNTHETIC_IMAGES, res, 3, seed)),
    }
}

/// The M2T model a configuration describes.
pub fn model_config(cfg: &RunConfig) -> M2tConfig {
    let backbone = ResNetConfig {
        arch: cfg.arch,
        stem: cfg.stem,
        in_channels: cfg.channels,
        width: cfg.width,
    };
    M2tConfig {
        proj_hidden: cfg.proj_hidden,
        proj_out: cfg.proj_out,
        pred_hidden: cfg.proj_hidden,
        teacher_bn: cfg.teacher_bn,
        correction: match cfg.mbn_correction.as_str() {
            "single" => BesselCorrection::Single,
            _ => BesselCorrection::Double,
        },
        ema_base: cfg.ema,
        bn_groups: cfg.bn_group,
        ..M2tConfig::new(backbone)
    }
}

/// Where and in what precision a run computes, from `--device` and `--precision`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The device.
    pub device: Device,
    /// Activations and conv/linear weights: f32, or bf16/f16 on a GPU.
    pub precision: DType,
}

/// Resolves `--device` (auto, cpu, cuda, cuda:N, emulator) and
/// `--precision` (bf16, fp16, fp32); also returns the line to print when
/// `auto` falls back to the CPU. A requested GPU that cannot be used is an
/// error saying why. The default precision is bf16 on a GPU of compute
/// capability 8.0 or newer, else fp32. `emulator` runs the CUDA backend's
/// kernels on the CPU (slow; for testing the GPU path without a GPU).
pub fn resolve_device(
    device: Option<&str>,
    precision: Option<&str>,
) -> Result<(Placement, Option<String>)> {
    let requested = device.unwrap_or("auto");
    let ordinal = match requested {
        "cpu" | "auto" | "emulator" => None,
        "cuda" => Some(0),
        d => match d.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Some(n),
            _ => {
                return Err(usage(format!(
                    "--device {d}: expected auto, cpu, cuda, cuda:N or emulator"
                )));
            }
        },
    };
    let (device, compute_capability, note) = if requested == "cpu" {
        (Device::Cpu, None, None)
    } else if requested == "emulator" {
        // Emulated kernels have no arch limits: every precision is allowed.
        (Device::Emulator, Some((0, 0)), None)
    } else {
        let report = kernels::probe::probe();
        let gpu = match report.usable() {
            Err(why) => Err(why),
            Ok(_) => {
                let devices = report.devices.as_ref().expect("usable implies devices");
                let n = ordinal.unwrap_or(0);
                devices.get(n).map(|d| d.compute_capability).ok_or_else(|| {
                    format!("no cuda:{n}; the driver reports {} GPU(s)", devices.len())
                })
            }
        };
        match (gpu, ordinal) {
            (Ok(cc), _) => (Device::Cuda(ordinal.unwrap_or(0)), Some(cc), None),
            (Err(why), None) => (
                Device::Cpu,
                None,
                Some(format!("device auto: running on the CPU ({why})")),
            ),
            (Err(why), Some(_)) => {
                return Err(usage(format!(
                    "--device {requested}: {why}; `trainer info` shows what was found"
                )));
            }
        }
    };
    let precision = match (precision, compute_capability) {
        (Some("fp32"), _) | (None, None) => DType::F32,
        (None, Some(cc)) => {
            if cc.0 >= 8 && device != Device::Emulator {
                DType::BF16
            } else {
                DType::F32
            }
        }
        (Some(p @ ("bf16" | "fp16")), None) => {
            return Err(usage(format!(
                "--precision {p}: the CPU backend trains in fp32; 16-bit training needs a GPU"
            )));
        }
        (Some("bf16"), Some(cc)) if cc.0 < 8 && device != Device::Emulator => {
            return Err(usage(format!(
                "--precision bf16 needs compute capability 8.0 or newer (this GPU is {}.{}); use fp16",
                cc.0, cc.1
            )));
        }
        (Some("bf16"), _) => DType::BF16,
        (Some("fp16"), _) => DType::F16,
        (Some(p), _) => {
            return Err(usage(format!(
                "--precision {p}: expected bf16, fp16 or fp32"
            )));
        }
    };
    Ok((Placement { device, precision }, note))
}

/// The `--precision` spelling of a compute dtype.
pub fn precision_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bf16",
        DType::F16 => "fp16",
        _ => "fp32",
    }
}

/// Whether `--cuda-graph` (on, off, or unset: on on a GPU unless profiling)
/// captures the step; refused on the CPU, and with `--profile` when asked for.
pub fn use_cuda_graph(flag: Option<&str>, device: Device, profile: bool) -> Result<bool> {
    match (flag, device) {
        (Some("on"), Device::Cpu) => Err(usage(
            "--cuda-graph on needs a GPU (--device cuda) or the emulator (--device emulator); the CPU runs each step as it comes",
        )),
        (Some("on"), _) if profile => Err(usage(
            "--profile times each launch, and a replayed graph is one launch: profile with --cuda-graph off",
        )),
        (Some("on"), _) => Ok(true),
        (Some("off"), _) => Ok(false),
        (Some(other), _) => Err(usage(format!("--cuda-graph {other}: expected on or off"))),
        (None, Device::Cpu) => Ok(false),
        (None, _) => Ok(!profile),
    }
}

fn usage(msg: impl Into<String>) -> Error {
    Error::Usage(msg.into())
}

/// Resolves flags (already layered over any `--config` file) against the data.
/// `world_size` data-parallel ranks each train on `--bs` pairs per step:
/// the epoch length and the default learning rate follow the global batch.
fn resolve(
    o: &PretrainOptions,
    splits: &Splits,
    source: DataSource,
    (device, world_size): (Device, usize),
) -> Result<RunConfig> {
    let arch = o.arch.ok_or_else(|| {
        usage("missing --arch (resnet18, resnet34, resnet50, resnet101 or resnet152)")
    })?;
    let bs =
        o.bs.ok_or_else(|| usage("missing --bs (pairs of views per step)"))?;
    limits::at_most("bs", bs, limits::MAX_BS)?;
    if bs < 2 {
        return Err(usage(format!(
            "--bs {bs}: batch norm needs at least 2 images per batch"
        )));
    }
    let images = splits.train.len();
    let global = bs * world_size;
    if global > images {
        let what = if world_size == 1 {
            format!("--bs {bs}")
        } else {
            format!("the global batch {world_size}×{bs}")
        };
        return Err(usage(format!(
            "{what} is larger than the dataset ({images} images)"
        )));
    }
    let res = o.res.unwrap_or(match splits.train.native_size() {
        Some((h, w)) => h.min(w),
        None => 224,
    });
    if res < 8 {
        return Err(usage(format!("--res {res}: at least 8 pixels")));
    }
    limits::at_most("res", res, limits::MAX_RES)?;
    let stem = o.stem.unwrap_or(Stem::for_res(res));
    let optimizer = match o.optimizer.as_deref().unwrap_or("sgd") {
        "sgd" => OptimizerKind::Sgd,
        "lars" => OptimizerKind::Lars,
        other => return Err(usage(format!("--optimizer {other}: expected sgd or lars"))),
    };
    let steps_per_epoch = images / global;
    let (steps, epochs) = match (o.steps, o.epochs) {
        (Some(s), _) => (s, s as f64 / steps_per_epoch as f64),
        (None, Some(0)) => {
            return Err(usage(
                "--epochs 0: train at least one epoch (--steps 0 writes the initial checkpoint)",
            ));
        }
        (None, e) => {
            let e = e.unwrap_or(100);
            let steps = e
                .checked_mul(steps_per_epoch)
                .ok_or_else(|| usage(format!("--epochs {e}: too many")))?;
            (steps, e as f64)
        }
    };
    let lr = o.lr.unwrap_or(match optimizer {
        OptimizerKind::Sgd => 0.05 * global as f64 / 256.0,
        OptimizerKind::Lars if epochs >= 300.0 => 0.3 * global as f64 / 256.0,
        OptimizerKind::Lars => 0.45 * global as f64 / 256.0,
    });
    let wd = o.wd.unwrap_or(match optimizer {
        OptimizerKind::Sgd => 1e-4,
        OptimizerKind::Lars => 1e-6,
    });
    let ema = o.ema.unwrap_or(0.99);
    if !(0.0..1.0).contains(&ema) {
        return Err(usage(format!("--ema {ema}: expected a momentum in [0, 1)")));
    }
    if !(lr.is_finite() && lr > 0.0) {
        return Err(usage(format!(
            "--lr {lr}: expected a positive learning rate"
        )));
    }
    if !(wd.is_finite() && wd >= 0.0) {
        return Err(usage(format!("--wd {wd}: expected a weight decay ≥ 0")));
    }
    let mbn_correction = match o.mbn_correction.as_deref().unwrap_or("double") {
        c @ ("double" | "single") => c.to_string(),
        other => {
            return Err(usage(format!(
                "--mbn-correction {other}: expected double or single"
            )));
        }
    };
    let bn_group = crate::distributed::bn_group(bs, o.bn_group)?;
    let crop_min = o.crop_min.unwrap_or(0.08);
    if !(crop_min > 0.0 && crop_min <= 1.0) {
        return Err(usage(format!(
            "--crop-min {crop_min}: expected a fraction in (0, 1]"
        )));
    }
    let warmup_steps = match o.warmup_steps {
        Some(w) => w.min(steps),
        None => o
            .warmup_epochs
            .unwrap_or(10)
            .saturating_mul(steps_per_epoch)
            .min(steps / 10),
    };
    let positive = |name: &str, v: Option<usize>, default: usize| -> Result<usize> {
        match v.unwrap_or(default) {
            0 => Err(usage(format!("--{name} 0: must be at least 1"))),
            v => Ok(v),
        }
    };
    let size = |name: &str, v: Option<usize>, default: usize, max: usize| {
        limits::at_most(name, positive(name, v, default)?, max)
    };
    Ok(RunConfig {
        arch,
        bs,
        stem,
        res,
        channels: splits.train.channels(),
        steps,
        epochs,
        optimizer,
        lr,
        wd,
        warmup_steps,
        ema,
        teacher_bn: o.teacher_bn.unwrap_or_default(),
        mbn_correction,
        bn_group,
        world_size,
        proj_hidden: size("proj-hidden", o.proj_hidden, 4096, limits::MAX_HEAD)?,
        proj_out: size("proj-out", o.proj_out, 256, limits::MAX_HEAD)?,
        width: size("width", o.width, 64, limits::MAX_WIDTH)?,
        crop_min,
        seed: o.seed.unwrap_or(0),
        knn_every: o.knn_every.unwrap_or(10),
        knn_memory: o.knn_memory.unwrap_or_else(|| {
            let rows = splits.labelled_train.as_ref().map_or(0, |d| d.len());
            let width = size("width", o.width, 64, limits::MAX_WIDTH).unwrap_or(64);
            eval::default_knn_memory(device, rows, 8 * width * arch.expansion())
        }),
        knn_queries: o.knn_queries.unwrap_or(0),
        knn_every_steps: o.knn_every_steps.unwrap_or(0),
        monitor_memory: Some(o.monitor_memory.or(o.knn_memory).unwrap_or(10_000)),
        monitor_queries: Some(o.monitor_queries.or(o.knn_queries).unwrap_or(0)),
        log_every: positive("log-every", o.log_every, 10)?,
        checkpoint_every: o.checkpoint_every.unwrap_or(0),
        data_fingerprint: Some(Fingerprint::of(splits, data_root(&source))),
        data: source,
    })
}

/// The dataset the flags name.
fn data_source(o: &PretrainOptions) -> Result<DataSource> {
    match (&o.data, o.dataset.as_deref()) {
        (Some(p), _) => Ok(DataSource::Path(canonical(p))),
        (None, None | Some("fashion-mnist")) => Ok(DataSource::Path(canonical(Path::new(
            data::FASHION_MNIST_DIR,
        )))),
        (None, Some("synthetic")) => Ok(DataSource::Synthetic),
        (None, Some(other)) => Err(usage(format!(
            "--dataset {other}: expected fashion-mnist or synthetic (or pass --data PATH)"
        ))),
    }
}

/// `path` made absolute and free of links, so that a resumed run reads the
/// same files from any working directory; as given if it does not exist (the
/// dataset reader then says so).
fn canonical(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The folder a data source reads, if it reads one.
fn data_root(source: &DataSource) -> Option<&Path> {
    match source {
        DataSource::Path(p) => Some(p),
        DataSource::Synthetic => None,
    }
}

/// Refuses to resume on data whose fingerprint differs from the one saved
/// when the run started, naming what changed.
fn refuse_changed_data(cfg: &RunConfig, splits: &Splits) -> Result<()> {
    let Some(saved) = &cfg.data_fingerprint else {
        return Ok(());
    };
    let changes = Fingerprint::of(splits, data_root(&cfg.data)).changes_since(saved);
    if changes.is_empty() {
        return Ok(());
    }
    let what = data_root(&cfg.data).unwrap_or(Path::new("synthetic data"));
    Err(Error::data(
        what,
        format!(
            "the dataset changed since the run started ({}); --resume continues only on the same data",
            changes.join("; ")
        ),
    ))
}

/// Refuses a checkpoint that disagrees with its own folder, the run's
/// configuration (as the checkpoint saved it) or the metrics it covers:
/// resume promises to continue exactly.
fn check_resumable(cfg: &RunConfig, dir: &Path, state: &State, metrics_path: &Path) -> Result<()> {
    let saved_config = checkpoint::config_file(dir);
    if saved_config.is_file() {
        let changes = cfg.changes_since(&RunConfig::load(&saved_config)?);
        if !changes.is_empty() {
            return Err(usage(format!(
                "--resume continues with the run's saved configuration, but config.toml changed since the checkpoint ({}); restore it, or start a new run with --config",
                changes.join(", ")
            )));
        }
    }
    let refuse = |why: String| {
        Err(Error::data(
            dir,
            format!("{why}; --resume cannot continue this checkpoint exactly"),
        ))
    };
    if dir.file_name() != Some(checkpoint::folder_name(state.step).as_ref()) {
        return refuse(format!(
            "state.json says step {}, but the folder is another step's",
            state.step
        ));
    }
    if state.step > cfg.steps || state.seed != cfg.seed {
        return refuse(format!(
            "state.json says step {} with seed {}, the run has {} steps with seed {}",
            state.step, state.seed, cfg.steps, cfg.seed
        ));
    }
    // A line is logged every log-every steps and at the end, so the last line
    // the checkpoint covers is less than log-every steps before it.
    let text = fs::read_to_string(metrics_path).unwrap_or_default();
    let steps: Vec<u64> = text
        .lines()
        .take(state.metrics_lines)
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .unwrap_or(u64::MAX)
        })
        .collect();
    let last = steps.last().copied().unwrap_or(0);
    let consistent = steps.len() == state.metrics_lines
        && last <= state.step as u64
        && (state.step as u64 - last) < cfg.log_every as u64;
    if !consistent {
        return refuse(format!(
            "state.json says step {} after {} metric lines, but metrics.jsonl has {} of them, the last at step {}",
            state.step,
            state.metrics_lines,
            steps.len(),
            last
        ));
    }
    Ok(())
}

fn default_out(cfg: &RunConfig) -> PathBuf {
    let data = match &cfg.data {
        DataSource::Synthetic => "synthetic".to_string(),
        DataSource::Path(p) => p
            .file_name()
            .map_or("data".into(), |n| n.to_string_lossy().to_string()),
    };
    PathBuf::from("runs").join(format!("{}-{data}", cfg.arch))
}

/// Appends metric lines to `metrics.jsonl`.
struct Metrics {
    file: fs::File,
    lines: usize,
}

impl Metrics {
    /// Opens the run's metrics, keeping only the first `keep` lines (those
    /// covered by the checkpoint being resumed).
    fn open(path: &Path, keep: usize) -> Result<Self> {
        let kept: Vec<String> = match fs::File::open(path) {
            Ok(f) => BufReader::new(f)
                .lines()
                .take(keep)
                .collect::<Result<_, _>>()
                .map_err(|e| Error::io(path, e))?,
            Err(_) => Vec::new(),
        };
        // Rewrite atomically, so a crash here cannot lose the kept history.
        let text: String = kept.iter().map(|l| format!("{l}\n")).collect();
        nets::weights::write_atomic(path, text.as_bytes())?;
        let file = fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Metrics {
            file,
            lines: kept.len(),
        })
    }

    fn write(&mut self, path: &Path, line: serde_json::Value) -> Result<()> {
        // One write call per line: a crash or a full disk can tear only the
        // last line, which no checkpoint counts and a resume drops.
        self.file
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|e| Error::io(path, e))?;
        self.file.flush().map_err(|e| Error::io(path, e))?;
        self.lines += 1;
        Ok(())
    }

    fn sync(&self, path: &Path) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::io(path, e))
    }
}

/// `(step, value)` points of one curve.
type Series = Vec<(usize, f64)>;

/// Loss and kNN points of a run's metrics, and the kNN panel's reference
/// lines (from the monitor's step-0 line), for the plot.
fn curves(path: &Path) -> (Series, Series, Vec<(&'static str, f64)>) {
    let (mut loss, mut knn, mut references) = (Vec::new(), Vec::new(), Vec::new());
    let Ok(text) = fs::read_to_string(path) else {
        return (loss, knn, references);
    };
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let step = v["step"].as_u64().unwrap_or(0) as usize;
        if let Some(l) = v["loss"].as_f64() {
            loss.push((step, l));
        }
        if let Some(a) = v["knn_acc"].as_f64() {
            knn.push((step, a));
        }
        if let (Some(untrained), Some(raw)) = (v["knn_acc"].as_f64(), v["knn_raw_pixels"].as_f64())
        {
            references = vec![
                ("untrained", 100.0 * untrained),
                ("raw pixels", 100.0 * raw),
            ];
        }
    }
    (loss, knn, references)
}

/// Runs `trainer pretrain`.
pub fn run(flags: PretrainOptions) -> Result<()> {
    let world = crate::distributed::world_from_env(|name| std::env::var(name).ok())?;
    let gpus = flags.gpus.unwrap_or(1);
    crate::distributed::check_launch(gpus, world.as_ref())?;
    match world {
        Some(w) if w.size > 1 => {
            if let Some(d) = flags
                .device
                .as_deref()
                .filter(|d| !matches!(*d, "auto" | "cuda"))
            {
                return Err(usage(format!(
                    "--device {d}: each data-parallel rank runs on its own GPU; drop --device"
                )));
            }
            let visible = kernels::probe::list_devices().map_err(Error::Usage)?.len();
            let gpu = crate::distributed::gpu_of(w.local_rank, visible)?;
            let comm = crate::distributed::join(&w, gpu)?;
            let flags = PretrainOptions {
                device: Some(format!("cuda:{gpu}")),
                ..flags
            };
            run_rank(flags, Some(comm))
        }
        None if gpus > 1 => crate::distributed::launch(gpus),
        _ => run_rank(flags, None),
    }
}

/// Whether this process writes the run's files: the only process, or rank 0.
fn is_lead(comm: &Ranks) -> bool {
    comm.as_ref().is_none_or(|c| c.rank() == 0)
}

/// This process's communicator when it is one of several data-parallel
/// ranks; `None` for a one-process run.
pub type Ranks = Option<Box<dyn Communicator>>;

/// Pretrains as one process, or as one rank of a data-parallel job joined
/// by `comm` (whose rank 0 alone writes the run folder; the others read it
/// to resume, so it must be on storage they all see).
pub fn run_rank(flags: PretrainOptions, mut comm: Ranks) -> Result<()> {
    let world_size = comm.as_ref().map_or(1, |c| c.world_size());
    let lead = is_lead(&comm);
    engine::set_deterministic(flags.deterministic);
    let resume = flags.resume || (flags.auto_resume && auto_resume_finds_a_run(&flags, lead)?);
    // A resumed run takes the run folder's lock before anything else, so a
    // second trainer is refused at once; a new run once it is known to fit.
    let (cfg, out, splits, placement, resumed_lock, graph_flag) = if resume {
        let out = flags
            .out
            .clone()
            .ok_or_else(|| usage("--resume needs --out DIR (the run to continue)"))?;
        if !out.join("config.toml").is_file() {
            return Err(usage(format!(
                "--resume: {} holds no run (no config.toml)",
                out.display()
            )));
        }
        let lock = lead.then(|| RunLock::acquire(&out)).transpose()?;
        let cfg = RunConfig::load(&out.join("config.toml"))?;
        if cfg.world_size != world_size {
            return Err(usage(format!(
                "--resume: {} was trained on {} data-parallel rank(s), this job has {world_size}; resume it with --gpus {} (or as many torchrun/srun processes): its batch norm and data order depend on the ranks",
                out.display(),
                cfg.world_size,
                cfg.world_size
            )));
        }
        let placement = resolve_device(flags.device.as_deref(), flags.precision.as_deref())?;
        let splits = open_data(&cfg.data, cfg.res, cfg.seed)?;
        refuse_changed_flags(&flags, &cfg, &splits, placement.0.device)?;
        refuse_changed_data(&cfg, &splits)?;
        (cfg, out, splits, placement, lock, None)
    } else {
        let opts = match &flags.config {
            Some(file) => flags.clone().over(PretrainOptions::from_file(file)?),
            None => flags.clone(),
        };
        // Checked first: cheaper than opening the data.
        let placement = resolve_device(opts.device.as_deref(), opts.precision.as_deref())?;
        let source = data_source(&opts)?;
        if source == DataSource::Synthetic {
            // Generated at --res before the run is resolved: check that first.
            let res = limits::at_most("res", opts.res.unwrap_or(32), limits::MAX_RES)?;
            synthetic_images(res).check_fits(placement.0.device)?;
        }
        let splits = open_data(&source, opts.res.unwrap_or(32), opts.seed.unwrap_or(0))?;
        let cfg = resolve(&opts, &splits, source, (placement.0.device, world_size))?;
        let out = opts.out.clone().unwrap_or_else(|| default_out(&cfg));
        if lead {
            refuse_existing_run(&out)?;
        }
        let graph_flag = opts.cuda_graph.clone();
        (cfg, out, splits, placement, None, graph_flag)
    };
    let (placement, note) = placement;
    if let (Some(note), true) = (note, lead) {
        eprintln!("{note}");
    }
    let workers = limits::at_most(
        "workers",
        flags.workers.unwrap_or_else(rayon::current_num_threads),
        limits::MAX_WORKERS,
    )?;
    // The data is already in memory (and so out of what is available).
    MemoryEstimate::of_run(&cfg, placement.precision)
        .with_loader(
            &cfg,
            workers,
            crate::loader::PREFETCH_PER_WORKER,
            placement.device != Device::Cpu,
        )
        .check_fits(placement.device)?;
    // Held by the lead until the run returns.
    let _lock = match resumed_lock {
        Some(lock) => Some(lock),
        None if lead => {
            let lock = RunLock::acquire(&out)?;
            // Again under the lock: a run may have started since.
            refuse_existing_run(&out)?;
            Some(lock)
        }
        None => None,
    };
    let graph_flag = flags.cuda_graph.as_deref().or(graph_flag.as_deref());
    let cuda_graph = if world_size > 1 {
        // The ranks' all-reduces and BN-buffer averages run between the
        // step and the update, outside a captured step.
        if graph_flag == Some("on") {
            return Err(usage(
                "--cuda-graph on: data-parallel steps run eagerly in this build (the all-reduces are not captured); use --cuda-graph off",
            ));
        }
        false
    } else {
        use_cuda_graph(graph_flag, placement.device, flags.profile)?
    };
    if lead && flags.profile && graph_flag.is_none() && placement.device != Device::Cpu {
        eprintln!(
            "--profile: steps run eagerly, without the CUDA graph (a replay is one launch; the tables time each)"
        );
    }
    train(
        &cfg,
        &out,
        splits,
        resume,
        workers,
        (placement, &mut comm),
        (flags.profile, cuda_graph),
    )
}

/// `--auto-resume`: whether `--out` holds a checkpoint to resume (else the
/// run starts), said in one line.
fn auto_resume_finds_a_run(flags: &PretrainOptions, lead: bool) -> Result<bool> {
    let out = flags
        .out
        .as_ref()
        .ok_or_else(|| usage("--auto-resume needs --out DIR (the run to resume or start)"))?;
    let found = checkpoint::holds_checkpoints(out);
    if !lead {
        return Ok(found);
    }
    if found {
        eprintln!(
            "auto-resume: {} holds a checkpoint; resuming it",
            out.display()
        );
    } else {
        eprintln!(
            "auto-resume: no checkpoint in {}; starting the run",
            out.display()
        );
    }
    Ok(found)
}

/// Refuses flags given with `--resume` that would change the saved run: each
/// given flag (over any `--config` file) must resolve to the saved value.
/// The flags of where a run computes may change; so may nothing else.
fn refuse_changed_flags(
    flags: &PretrainOptions,
    saved: &RunConfig,
    splits: &Splits,
    device: Device,
) -> Result<()> {
    let given: Vec<String> = flags
        .given()
        .into_iter()
        .filter(|f| {
            !matches!(
                f.as_str(),
                "--out" | "--workers" | "--device" | "--precision" | "--cuda-graph"
            )
        })
        .collect();
    if given.is_empty() {
        return Ok(());
    }
    let mut base = PretrainOptions::from(saved.clone());
    if let Some(file) = &flags.config {
        base = PretrainOptions::from_file(file)?.over(base);
    }
    let opts = flags.clone().over(base);
    let mut asked = resolve(
        &opts,
        splits,
        data_source(&opts)?,
        (device, saved.world_size),
    )?;
    // The data itself is checked by its fingerprint, and the output folder
    // is the run's.
    asked.data_fingerprint = saved.data_fingerprint.clone();
    let changes = asked.changes_since(saved);
    if changes.is_empty() {
        return Ok(());
    }
    // Name the flags given; values derived from them (epochs from bs) follow.
    let named: Vec<&String> = changes
        .iter()
        .filter(|c| {
            given
                .iter()
                .any(|f| c.starts_with(&format!("{}:", &f[2..])))
        })
        .collect();
    let changes = if named.is_empty() {
        changes.iter().collect()
    } else {
        named
    };
    Err(usage(format!(
        "--resume continues the run saved in config.toml; these flags differ from it (flag: saved → given):\n  {}\nrerun with the saved values, or drop the flags",
        changes
            .iter()
            .map(|c| format!("--{c}"))
            .collect::<Vec<_>>()
            .join("\n  ")
    )))
}

/// Refuses to start a new run in a folder that holds one.
fn refuse_existing_run(out: &Path) -> Result<()> {
    if checkpoint::holds_checkpoints(out) {
        return Err(usage(format!(
            "{} already holds a run: pass --resume to continue it, or another --out",
            out.display()
        )));
    }
    Ok(())
}

/// Prints the `--profile` tables and saves them as `profile.txt` in `out`.
fn report_profile(out: &Path) -> Result<()> {
    let report = engine::profile::finish()?;
    eprint!("{report}");
    nets::weights::write_atomic(&out.join("profile.txt"), report.to_string().as_bytes())?;
    Ok(())
}

fn train(
    cfg: &RunConfig,
    out: &Path,
    splits: Splits,
    resume: bool,
    workers: usize,
    (placement, comm): (Placement, &mut Ranks),
    (profile, cuda_graph): (bool, bool),
) -> Result<()> {
    let lead = is_lead(comm);
    let channels = splits.train.channels();
    if channels != cfg.channels {
        return Err(Error::data(
            out,
            format!(
                "the data now has {channels} channels, the run was configured for {}",
                cfg.channels
            ),
        ));
    }
    let mut model = M2t::new(
        M2tConfig {
            precision: placement.precision,
            ..model_config(cfg)
        },
        cfg.seed,
    )?;
    fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let metrics_path = out.join("metrics.jsonl");
    let config_toml = cfg.to_toml();

    let mut state = State {
        step: 0,
        seed: cfg.seed,
        metrics_lines: 0,
        skipped_images: 0,
        train_seconds: 0.0,
        loss_scale: None,
    };
    let resumed_from = if resume {
        let (dir, damaged) = checkpoint::resumable(out)?;
        for why in damaged {
            eprintln!("warning: checkpoint skipped, {why}");
        }
        Some(dir)
    } else {
        None
    };
    if let Some(dir) = &resumed_from {
        state = checkpoint::load_state(dir)?;
        check_resumable(cfg, dir, &state, &metrics_path)?;
        checkpoint::restore_network(dir, &mut model, Which::Student)?;
        checkpoint::restore_network(dir, &mut model, Which::Teacher)?;
        if let (Some(scaler), Some((scale, good_steps))) = (model.scaler_mut(), state.loss_scale) {
            scaler.restore(scale, good_steps)?;
        }
        if lead {
            eprintln!(
                "resuming {} at step {}/{}",
                out.display(),
                state.step,
                cfg.steps
            );
        }
    } else if lead {
        nets::weights::write_atomic(&out.join("config.toml"), config_toml.as_bytes())?;
    }
    if let Some(comm) = comm {
        same_step_on_every_rank(comm.as_mut(), state.step)?;
    }
    // Built and restored on the host, then moved: the optimiser state is
    // created where the parameters live.
    let mut model = model.to_device(placement.device)?;
    let mut optimizer = Optimizer::new(cfg.optimizer, cfg.wd, model.student())?;
    if let Some(dir) = &resumed_from {
        optimizer.set_velocity(&checkpoint::load_velocity(dir, model.student())?)?;
    }
    let mut metrics = lead
        .then(|| Metrics::open(&metrics_path, state.metrics_lines))
        .transpose()?;
    if lead {
        eprintln!(
            "on {} in {}{}",
            placement.device,
            precision_name(placement.precision),
            match cfg.world_size {
                1 => String::new(),
                n => format!(", rank 0 of {n} data-parallel ranks"),
            }
        );
        let batch = match cfg.world_size {
            1 => format!("{} pairs", cfg.bs),
            n => format!("{n}×{} pairs", cfg.bs),
        };
        eprintln!(
            "{} {} stem, width {}, {} params; {}; {} steps of {batch} at {} px",
            cfg.arch,
            cfg.stem,
            cfg.width,
            model.student().num_params(),
            splits.train.describe(),
            cfg.steps,
            cfg.res
        );
        for warning in splits.label_warnings() {
            eprintln!("{warning}");
        }
    }
    if state.step >= cfg.steps {
        if !lead {
            return Ok(());
        }
        // A finished run resumed again changes nothing; a fresh `--steps 0`
        // run saves the initial networks.
        interrupt::install();
        if !resume {
            state.loss_scale = model.loss_scale()?;
            let dir = checkpoint::save(out, &model, optimizer.velocity(), &state, &config_toml)?;
            eprintln!("checkpoint: {}", dir.display());
        }
        return finish(cfg, out, &model, &splits, &state, &metrics_path, None);
    }

    let aug = AugmentConfig::new(cfg.res, channels)?;
    let train_aug = AugmentConfig {
        crop_scale: (cfg.crop_min, 1.0),
        ..aug.clone()
    };
    let train_set = Arc::new(splits.train.clone());
    // On a GPU the workers only decode and draw; the views are rendered there.
    let gpu_augmenter = match placement.device {
        Device::Cpu => None,
        device => Some(GpuAugmenter::new(
            device,
            train_aug.clone(),
            placement.precision,
        )?),
    };
    let augmentation = if gpu_augmenter.is_some() {
        Augmentation::Device
    } else {
        Augmentation::Host
    };
    let rank = comm.as_ref().map_or((0, 1), |c| (c.rank(), c.world_size()));
    let mut loader = PairLoader::for_rank(
        train_set,
        train_aug,
        (cfg.bs, cfg.seed),
        rank,
        workers,
        state.step,
        augmentation,
    )?;
    let steps_per_epoch = loader.steps_per_epoch();
    let schedule = LrSchedule {
        base_lr: cfg.lr,
        warmup_iters: cfg.warmup_steps,
        total_iters: cfg.steps,
    };
    interrupt::install();

    let bar = lead.then(|| progress_bar(cfg.steps, state.step)).flatten();
    let checkpoint_every = if cfg.checkpoint_every == 0 {
        steps_per_epoch
    } else {
        cfg.checkpoint_every
    };
    if let (Some(metrics), true) = (&mut metrics, cfg.knn_every_steps > 0 && state.step == 0) {
        // The curve's first point and its reference lines, on the monitor's sets.
        if let Some(untrained) = knn_monitor(&model, &splits, &aug, monitor_sizes(cfg))? {
            let raw = raw_pixel_monitor(&splits, &aug, monitor_sizes(cfg))?;
            eprintln!(
                "step 0: kNN {:.2}% untrained, {:.2}% raw pixels (monitor sets)",
                100.0 * untrained,
                100.0 * raw
            );
            let line = json!({"step": 0, "knn_acc": untrained, "knn_raw_pixels": raw});
            metrics.write(&metrics_path, line)?;
        }
    }
    if profile {
        engine::profile::start(placement.device)?;
    }
    let mut progress = Progress {
        cfg,
        out,
        splits: &splits,
        aug: &aug,
        metrics_path: &metrics_path,
        config_toml: &config_toml,
        steps_per_epoch,
        checkpoint_every,
        profile,
        state,
        metrics,
        lead,
        window: (Instant::now(), 0, 0.0),
        final_knn: None,
        last_checkpoint: resumed_from,
        bar,
    };
    let mut graphed: Option<GraphedStep> = None;
    // A replayed step whose results are read after the next is queued.
    let mut pending: Option<(usize, f64, StepSchedule)> = None;
    for step in progress.state.step..cfg.steps {
        let started = Instant::now();
        let step_range = engine::nvtx::open(engine::profile::Kind::Step, || format!("step {step}"));
        let batch = {
            let _r = engine::nvtx::phase("data wait");
            loader.next()?
        };
        progress.state.skipped_images += batch.skipped;
        progress.window.2 += batch.wait.as_secs_f64();
        let lr = schedule.at(step);
        let mut overhead = 0.0;
        if let Some(graph) = &mut graphed {
            let numbers = graph.queue(
                &mut model,
                &batch,
                gpu_augmenter.as_ref(),
                (step, cfg.steps),
                lr,
            )?;
            drop(step_range);
            if let Some((k, lr, numbers)) = pending.take() {
                let outcome = Outcome::replayed(graph.step.results(k)?, k, lr, &numbers);
                overhead += progress.record(&outcome, false, &mut model, &optimizer)?;
            }
            pending = Some((step, lr, numbers));
            if progress.drain_due(step + 1) {
                let (k, lr, numbers) = pending.take().expect("queued above");
                let outcome = Outcome::replayed(graph.step.results(k)?, k, lr, &numbers);
                overhead += progress.record(&outcome, true, &mut model, &optimizer)?;
            }
        } else {
            let (view1, view2) = {
                let _r = engine::nvtx::phase("augment");
                batch.views(gpu_augmenter.as_ref())?
            };
            let numbers = model.schedule(step, cfg.steps, lr)?;
            let report = match comm {
                Some(comm) => {
                    let report = nets::data_parallel::step(
                        &mut model,
                        comm.as_mut(),
                        (&view1, &view2),
                        &numbers,
                    )?;
                    stop_together(comm.as_mut())?;
                    report
                }
                None => model.step(&view1, &view2, &numbers)?,
            };
            // fp16 overflow is the loss scaler's business: it lowers the
            // scale and the update is skipped. Anything else non-finite is
            // divergence, found before the update.
            let grads_finite = report.skip_update
                || !report.loss.is_finite()
                || model.student().grad_norm()?.is_some();
            let outcome = Outcome {
                step,
                lr,
                report,
                grads_finite,
            };
            progress.check_finite(&outcome)?;
            if !report.skip_update {
                let _r = engine::nvtx::phase("optimizer");
                optimizer.step(model.student_mut(), &numbers.lr)?;
            }
            drop(step_range);
            if profile && (step + 1).is_multiple_of(cfg.log_every) {
                engine::profile::flush()?;
            }
            // Captured after the first eager step, which made cuDNN's choices.
            if cuda_graph && step + 1 < cfg.steps {
                let next = model.schedule(step + 1, cfg.steps, schedule.at(step + 1))?;
                graphed = Some(GraphedStep::capture(
                    &mut model,
                    &mut optimizer,
                    (&view1, &view2),
                    &next,
                )?);
            }
            overhead += progress.record(&outcome, true, &mut model, &optimizer)?;
        }
        progress.state.train_seconds += started.elapsed().as_secs_f64() - overhead;
    }
    let Progress {
        state,
        bar,
        final_knn,
        ..
    } = progress;
    if let Some(b) = &bar {
        b.finish();
    }
    if state.skipped_images > 0 {
        eprintln!(
            "skipped {} corrupt or unreadable images",
            state.skipped_images
        );
    }
    if !lead {
        return Ok(());
    }
    if profile {
        report_profile(out)?;
    }
    finish(cfg, out, &model, &splits, &state, &metrics_path, final_knn)
}

/// Refuses ranks that resumed from different checkpoints (a run folder not
/// shared by every node, or one written to meanwhile).
fn same_step_on_every_rank(comm: &mut dyn Communicator, step: usize) -> Result<()> {
    // In 16-bit halves, each exact in f32 and in a mean of equal values.
    let halves = [(step >> 16) as f32, (step & 0xffff) as f32];
    let mut mean = halves;
    comm.all_reduce_mean_host(&mut mean)?;
    if mean != halves {
        return Err(usage(format!(
            "rank {} starts at step {step}, and another rank elsewhere: every rank must resume the same checkpoint, from a run folder they all see",
            comm.rank()
        )));
    }
    Ok(())
}

/// Raises the interrupt flag on every rank when any rank received SIGINT
/// or SIGTERM, so all stop after the same step (and rank 0 checkpoints it).
fn stop_together(comm: &mut dyn Communicator) -> Result<()> {
    let mut any = [f32::from(u8::from(interrupt::requested()))];
    comm.all_reduce_mean_host(&mut any)?;
    if any[0] > 0.0 {
        interrupt::request();
    }
    Ok(())
}

/// What one step did, as the loop learns it: at once for an eager step, a
/// step later for a replayed one.
struct Outcome {
    step: usize,
    lr: f64,
    report: StepReport,
    /// Whether every gradient was finite (a skipped fp16 step's may not be).
    grads_finite: bool,
}

impl Outcome {
    fn replayed(results: StepResults, step: usize, lr: f64, numbers: &StepSchedule) -> Outcome {
        Outcome {
            step,
            lr,
            report: StepReport {
                loss: results.loss,
                ema_momentum: numbers.ema_momentum.value(),
                mbn_beta: numbers.mbn_beta.value(),
                skip_update: results.skipped(),
            },
            grads_finite: results.skipped() || results.grads_finite,
        }
    }
}

/// The run's bookkeeping after each step: divergence checks, metrics, the
/// kNN monitor, checkpoints and interrupts.
struct Progress<'a> {
    cfg: &'a RunConfig,
    out: &'a Path,
    splits: &'a Splits,
    aug: &'a AugmentConfig,
    metrics_path: &'a Path,
    config_toml: &'a str,
    steps_per_epoch: usize,
    checkpoint_every: usize,
    profile: bool,
    state: State,
    /// The lead's metrics file; other ranks write nothing.
    metrics: Option<Metrics>,
    /// Whether this process is the only one or rank 0: it alone runs the
    /// kNN monitor, logs and checkpoints.
    lead: bool,
    /// Since the last metrics line: its start, pairs and data wait (s).
    window: (Instant, usize, f64),
    final_knn: Option<f64>,
    last_checkpoint: Option<PathBuf>,
    bar: Option<ProgressBar>,
}

impl Progress<'_> {
    /// Whether the kNN monitor runs after step `done` (counted from 1).
    fn knn_due(&self, done: usize) -> bool {
        let epoch = done / self.steps_per_epoch;
        let every_steps = self.cfg.knn_every_steps;
        (done.is_multiple_of(self.steps_per_epoch)
            && self.cfg.knn_every > 0
            && epoch.is_multiple_of(self.cfg.knn_every))
            || (every_steps > 0 && done.is_multiple_of(every_steps))
    }

    /// Whether the model must be at step `done` when it is recorded: for a
    /// checkpoint, the kNN monitor, the end, or an interrupt.
    fn drain_due(&self, done: usize) -> bool {
        done == self.cfg.steps
            || done.is_multiple_of(self.checkpoint_every)
            || self.knn_due(done)
            || interrupt::requested()
    }

    /// Stops the run, naming the step, when `o` diverged.
    fn check_finite(&self, o: &Outcome) -> Result<()> {
        let kept = describe(&self.last_checkpoint);
        if !o.report.loss.is_finite() {
            return Err(Error::Diverged(format!(
                "step {}: the M2T loss (student predictions vs teacher targets, both views) is {}; stopped. Last good checkpoint: {kept}. Try a lower --lr.",
                o.step + 1,
                o.report.loss
            )));
        }
        if !o.grads_finite {
            return Err(Error::Diverged(format!(
                "step {}: non-finite gradients (loss {}); stopped, nothing saved after it. Last good checkpoint: {kept}. Try a lower --lr.",
                o.step + 1,
                o.report.loss
            )));
        }
        Ok(())
    }

    /// Records step `o`: checks it, logs it, and — when `drained`, i.e. the
    /// model is at this step — runs the kNN monitor, checkpoints and stops
    /// on an interrupt when due. Returns the seconds the monitor and the
    /// checkpoint took.
    fn record(
        &mut self,
        o: &Outcome,
        drained: bool,
        model: &mut M2t,
        optimizer: &Optimizer,
    ) -> Result<f64> {
        self.check_finite(o)?;
        let cfg = self.cfg;
        self.state.step = o.step + 1;
        self.window.1 += cfg.bs * cfg.world_size;
        if !self.lead {
            // Another rank: the lead checkpoints at the step all stop at.
            if drained && interrupt::requested() {
                return Err(Error::Interrupted(format!(
                    "stopped at step {}/{} with the other ranks; rank 0 checkpointed it",
                    self.state.step, cfg.steps
                )));
            }
            return Ok(0.0);
        }
        let overhead = Instant::now();
        let knn_acc = if drained && self.knn_due(self.state.step) {
            // Stopped by an interrupt, the monitor gives no value; the step
            // is still checkpointed below before the run stops.
            match knn_monitor(model, self.splits, self.aug, monitor_sizes(cfg)) {
                Err(Error::Interrupted(_)) => None,
                other => other?,
            }
        } else {
            None
        };
        let state = &mut self.state;
        if state.step == cfg.steps && monitor_sizes(cfg) == final_sizes(cfg) {
            self.final_knn = knn_acc;
        }
        if state.step.is_multiple_of(cfg.log_every) || state.step == cfg.steps || knn_acc.is_some()
        {
            let (start, pairs, wait) = self.window;
            let secs = start.elapsed().as_secs_f64();
            let mut line = json!({
                "step": state.step,
                "epoch": state.step as f64 / self.steps_per_epoch as f64,
                "loss": o.report.loss,
                "lr": o.lr,
                "ema_m": o.report.ema_momentum,
                "mbn_beta": o.report.mbn_beta,
                "pairs_per_s": pairs as f64 / secs.max(1e-9),
                "data_wait_ms": 1000.0 * wait,
                "skipped_images": state.skipped_images,
            });
            if let Some(acc) = knn_acc {
                line["knn_acc"] = json!(acc);
            }
            let message = format!(
                "step {}/{} loss {:.4} lr {:.4} {:.1} pairs/s",
                state.step,
                cfg.steps,
                o.report.loss,
                o.lr,
                pairs as f64 / secs.max(1e-9)
            );
            match &self.bar {
                Some(b) => b.set_message(message),
                None => eprintln!(
                    "{message}{}",
                    knn_acc.map_or(String::new(), |a| format!(" kNN {:.2}%", 100.0 * a))
                ),
            }
            if let Some(metrics) = &mut self.metrics {
                metrics.write(self.metrics_path, line)?;
            }
            self.window = (Instant::now(), 0, 0.0);
        }
        if let Some(b) = &self.bar {
            b.set_position(state.step as u64);
        }
        let interrupted = drained && interrupt::requested();
        let checkpoint_due =
            state.step.is_multiple_of(self.checkpoint_every) || state.step == cfg.steps;
        if drained && (checkpoint_due || interrupted) {
            // On disk before the checkpoint that counts them, even after a power loss.
            if let Some(metrics) = &self.metrics {
                metrics.sync(self.metrics_path)?;
                state.metrics_lines = metrics.lines;
            }
            state.loss_scale = model.loss_scale()?;
            self.last_checkpoint = Some(checkpoint::save(
                self.out,
                model,
                optimizer.velocity(),
                state,
                self.config_toml,
            )?);
        }
        if interrupted {
            if let Some(b) = &self.bar {
                b.abandon();
            }
            if self.profile {
                report_profile(self.out)?;
            }
            return Err(Error::Interrupted(format!(
                "checkpointed at step {}/{}; continue with: trainer --resume --out {}",
                state.step,
                cfg.steps,
                self.out.display()
            )));
        }
        Ok(overhead.elapsed().as_secs_f64())
    }
}

/// A run's captured step and, per input slot, where the compute stream
/// stood after the last replay that read it: the copy stream stages the
/// next step's views into the free slot while the current step runs.
struct GraphedStep {
    step: CapturedStep,
    free: [engine::pipeline::Mark; 2],
    device: Device,
}

impl GraphedStep {
    /// Captures the step (the optimiser's update included) after an eager
    /// step on views shaped like `views`, with step `next`'s numbers.
    fn capture(
        model: &mut M2t,
        optimizer: &mut Optimizer,
        (view1, view2): (&Tensor, &Tensor),
        next: &StepSchedule,
    ) -> Result<GraphedStep> {
        let step = CapturedStep::capture(model, view1, view2, next, |store, lr, skip| {
            Ok(optimizer.step_unless(store, lr, skip)?)
        })?;
        let device = model.device();
        let free = [
            engine::pipeline::mark(device)?,
            engine::pipeline::mark(device)?,
        ];
        Ok(GraphedStep { step, free, device })
    }

    /// Renders `batch`'s views into slot `k % 2` on the copy stream, then
    /// queues replay `k` of `total` after them; waits for nothing.
    fn queue(
        &mut self,
        model: &mut M2t,
        batch: &PairBatch,
        augmenter: Option<&GpuAugmenter>,
        (k, total): (usize, usize),
        lr: f64,
    ) -> Result<StepSchedule> {
        let slot = k % 2;
        let staging = engine::nvtx::phase("augment");
        let ((), staged) = engine::pipeline::on_copy_stream(self.device, &self.free[slot], || {
            let (view1, view2) = batch.views(augmenter)?;
            Ok::<(), Error>(self.step.stage(model, slot, (&view1, &view2))?)
        })?;
        drop(staging);
        engine::pipeline::wait_for(self.device, &staged)?;
        let numbers = self.step.launch(model, (k, total), lr)?;
        self.free[slot] = engine::pipeline::mark(self.device)?;
        Ok(numbers)
    }
}

/// A checkpoint folder for messages.
fn describe(checkpoint: &Option<PathBuf>) -> String {
    checkpoint
        .as_ref()
        .map_or("none yet".into(), |d| d.display().to_string())
}

fn progress_bar(total: usize, at: usize) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(total as u64).with_position(at as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed} < {eta}] {msg}")
    {
        bar.set_style(style);
    }
    Some(bar)
}

/// Memory and query sizes of the periodic kNN monitor.
fn monitor_sizes(cfg: &RunConfig) -> (usize, usize) {
    (
        cfg.monitor_memory.unwrap_or(cfg.knn_memory),
        cfg.monitor_queries.unwrap_or(cfg.knn_queries),
    )
}

/// Memory and query sizes of the kNN at the end of the run.
fn final_sizes(cfg: &RunConfig) -> (usize, usize) {
    (cfg.knn_memory, cfg.knn_queries)
}

/// kNN accuracy of the teacher on the test split with `(memory, queries)`
/// images, if the data has labels.
fn knn_monitor(
    model: &M2t,
    splits: &Splits,
    aug: &AugmentConfig,
    (memory_limit, query_limit): (usize, usize),
) -> Result<Option<f64>> {
    let (Some(memory), Some(queries)) = (&splits.labelled_train, &splits.test) else {
        return Ok(None);
    };
    let acc = eval::knn_of_network(
        model,
        Which::Teacher,
        memory,
        queries,
        aug,
        memory_limit,
        query_limit,
    )?;
    Ok(Some(acc))
}

/// Raw pixels' kNN accuracy on the monitor's sets (the data has labels:
/// the network's monitor ran on them).
fn raw_pixel_monitor(splits: &Splits, aug: &AugmentConfig, sizes: (usize, usize)) -> Result<f64> {
    let (Some(memory), Some(queries)) = (&splits.labelled_train, &splits.test) else {
        return Err(Error::Usage("kNN needs a labelled dataset".into()));
    };
    eval::knn_of_pixels((memory, queries), aug, sizes)
}

/// Final kNN (`final_knn` if the monitor measured the last step), summary.json
/// and curves.png.
fn finish(
    cfg: &RunConfig,
    out: &Path,
    model: &M2t,
    splits: &Splits,
    state: &State,
    metrics_path: &Path,
    final_knn: Option<f64>,
) -> Result<()> {
    let aug = AugmentConfig::new(cfg.res, splits.train.channels())?;
    // The monitor's value when it ran at the last step; otherwise measure now.
    let (loss, mut knn_points, references) = curves(metrics_path);
    let knn = match final_knn {
        Some(a) => Some(a),
        None => {
            let acc = knn_monitor(model, splits, &aug, final_sizes(cfg)).map_err(|e| match e {
                Error::Interrupted(why) => Error::Interrupted(format!(
                    "{why}; the checkpoint at step {}/{} is saved; `trainer knn --checkpoint {}` measures the final kNN",
                    state.step,
                    cfg.steps,
                    out.display()
                )),
                other => other,
            })?;
            // The curve shows the monitor's sets only.
            if let Some(a) = acc.filter(|_| monitor_sizes(cfg) == final_sizes(cfg)) {
                knn_points.push((state.step, a));
            }
            acc
        }
    };
    let summary = json!({
        "steps": state.step,
        "epochs": cfg.epochs,
        "final_loss": loss.last().map(|&(_, l)| l),
        "knn_acc": knn,
        "train_seconds": state.train_seconds,
        "pairs_per_s": if state.train_seconds > 0.0 { (state.step * cfg.bs * cfg.world_size) as f64 / state.train_seconds } else { 0.0 },
        "skipped_images": state.skipped_images,
        "params": model.student().num_params(),
    });
    let text =
        serde_json::to_string_pretty(&summary).map_err(|e| Error::data(out, e.to_string()))?;
    nets::weights::write_atomic(&out.join("summary.json"), text.as_bytes())?;
    plot::write_curves(
        &out.join("curves.png"),
        &loss,
        &knn_points
            .iter()
            .map(|&(s, a)| (s, 100.0 * a))
            .collect::<Vec<_>>(),
        &references,
    )?;
    match knn {
        Some(a) => println!("kNN accuracy (teacher, k=200): {:.2}%", 100.0 * a),
        None => println!("no labelled test split: kNN skipped"),
    }
    println!("run folder: {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::comm::host_group;
    use std::time::Duration;

    #[test]
    fn ranks_that_resumed_different_steps_are_refused() {
        for steps in [[3, 3], [70_000, 70_000], [3, 6], [5, 65_541]] {
            let comms = host_group(2, Duration::from_secs(10)).unwrap();
            let results: Vec<Result<()>> = std::thread::scope(|scope| {
                let ranks: Vec<_> = comms
                    .into_iter()
                    .zip(steps)
                    .map(|(mut comm, step)| {
                        scope.spawn(move || same_step_on_every_rank(&mut comm, step))
                    })
                    .collect();
                ranks.into_iter().map(|r| r.join().unwrap()).collect()
            });
            let agreed = steps[0] == steps[1];
            for r in results {
                match r {
                    Ok(()) => assert!(agreed, "{steps:?} accepted"),
                    Err(e) => {
                        assert!(!agreed, "{steps:?}: {e}");
                        assert!(e.to_string().contains("must resume the same checkpoint"));
                    }
                }
            }
        }
    }
}
