//! Pretraining options: the same keys as command-line flags (`--proj-hidden`)
//! and as a TOML file (`proj-hidden = 512`); flags override the file, the file
//! overrides the defaults, and the resolved [`RunConfig`] is saved with the run.

use crate::data::Fingerprint;
use crate::{Error, Result};
use clap::Args;
use nets::m2t::TeacherBn;
use nets::resnet::{Arch, Stem};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Every pretraining option, each optional so that flags can be layered over a
/// config file and the file over the defaults.
#[derive(Args, Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PretrainOptions {
    /// Backbone: resnet18, resnet34, resnet50, resnet101 or resnet152 [required].
    #[arg(long, value_parser = parse::<Arch>)]
    #[serde(default, with = "opt_str")]
    pub arch: Option<Arch>,
    /// Pairs of views per step (batch size), at most 65536; with data
    /// parallel, per GPU, as in the release's configs (the global batch is
    /// N·bs) [required].
    #[arg(long)]
    pub bs: Option<usize>,
    /// Stem: imagenet (7×7/2 conv + max-pool) or small (3×3/1 conv, for 28–96 px)
    /// [default: small below 128 px, else imagenet].
    #[arg(long, value_parser = parse::<Stem>)]
    #[serde(default, with = "opt_str")]
    pub stem: Option<Stem>,
    /// Crop size of the augmented views in pixels, 8 to 4096 [default: the dataset's image size, 224 for ImageFolder].
    #[arg(long)]
    pub res: Option<usize>,
    /// Dataset on disk: an MNIST/Fashion-MNIST IDX folder, CIFAR-10/100 or STL-10 binary folder, or an ImageFolder.
    #[arg(long, conflicts_with = "dataset")]
    pub data: Option<PathBuf>,
    /// A named dataset: fashion-mnist (/usr/share/datasets/fashion-mnist) or synthetic [default: fashion-mnist].
    #[arg(long)]
    pub dataset: Option<String>,
    /// Training length in epochs [default: 100].
    #[arg(long, conflicts_with = "steps")]
    pub epochs: Option<usize>,
    /// Training length in steps (overrides --epochs); 0 writes the initial checkpoint and exits.
    #[arg(long)]
    pub steps: Option<usize>,
    /// auto, cpu, cuda[:N], or emulator (the CUDA kernels run on the CPU, for
    /// testing the GPU path without a GPU) [default: auto].
    #[arg(long)]
    pub device: Option<String>,
    /// bf16, fp16 or fp32 [default: bf16 on a GPU, fp32 on the CPU].
    #[arg(long)]
    pub precision: Option<String>,
    /// on: capture the whole step (fp16 loss scaling, gradient check and
    /// update included) as a CUDA graph after the first step and replay it,
    /// the next step's views staged on a copy stream meanwhile and each
    /// step's loss read a step later; off: launch every kernel from the host.
    /// May change on --resume [default: on on a GPU, off with --profile; the
    /// CPU has no graphs].
    #[arg(long, value_name = "on|off")]
    pub cuda_graph: Option<String>,
    /// sgd or lars [default: sgd].
    #[arg(long)]
    pub optimizer: Option<String>,
    /// Peak learning rate [default: 0.05·B/256 for SGD, 0.45·B/256 for LARS
    /// (0.3 from 300 epochs), B the global batch: bs, or N·bs on N GPUs].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Weight decay on every parameter [default: 1e-4 for SGD, 1e-6 for LARS].
    #[arg(long)]
    pub wd: Option<f64>,
    /// Linear warm-up epochs, clamped to a tenth of the run [default: 10].
    #[arg(long)]
    pub warmup_epochs: Option<usize>,
    /// Linear warm-up in steps (overrides --warmup-epochs).
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// EMA momentum at the start, rising to 1 by cosine [default: 0.99].
    #[arg(long)]
    pub ema: Option<f64>,
    /// Teacher batch norm: momentum (the method) or plain (the ablation) [default: momentum].
    #[arg(long, value_parser = parse::<TeacherBn>)]
    #[serde(default, with = "opt_str")]
    pub teacher_bn: Option<TeacherBn>,
    /// Momentum BN's Bessel correction: double (the release: n/(n−1) on top of
    /// the unbiased variance) or single [default: double].
    #[arg(long)]
    pub mbn_correction: Option<String>,
    /// Ghost batch norm: every batch norm (student, teacher's Momentum BN,
    /// heads) normalises each of G equal groups of the --bs images over the
    /// group's own statistics, the statistics G GPUs with --bs/G each would
    /// see; the Momentum-BN history moves by the mean of the groups'. --bs
    /// must split into groups of at least 2 [default: 1, plain batch norm].
    #[arg(long, value_name = "G")]
    pub bn_group: Option<usize>,
    /// Projector (and predictor) hidden width, at most 65536 [default: 4096].
    #[arg(long)]
    pub proj_hidden: Option<usize>,
    /// Projector output width, at most 65536 [default: 256].
    #[arg(long)]
    pub proj_out: Option<usize>,
    /// Backbone width: channels of the first stage, 64 in torchvision, at most 1024 [default: 64].
    #[arg(long)]
    pub width: Option<usize>,
    /// Smallest RandomResizedCrop area, as a fraction of the image [default: 0.08].
    #[arg(long)]
    pub crop_min: Option<f64>,
    /// Run folder for config, metrics, checkpoints and plots [default: runs/<arch>-<dataset>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in --out from its last valid checkpoint, exactly.
    /// The run's own flags may be given again unchanged (a requeued job
    /// reruns its command line); a flag whose value differs from the saved
    /// config.toml is refused, except --workers, --device, --precision and
    /// --deterministic.
    #[arg(long, conflicts_with = "auto_resume")]
    #[serde(skip)]
    pub resume: bool,
    /// Resume the run in --out if it holds a checkpoint, else start it: the
    /// flag for a job script that a scheduler may start many times.
    #[arg(long)]
    #[serde(skip)]
    pub auto_resume: bool,
    /// Seed of initialisation, data order and augmentation [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// TOML file with any of these options (flags win).
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Time every phase, layer and kernel family (CUDA events on a GPU) and
    /// print the tables at the end (also saved as profile.txt in the run
    /// folder). Adds a little overhead per launch.
    #[arg(long)]
    #[serde(skip)]
    pub profile: bool,
    /// Bit-reproducible steps on a GPU: only cuDNN's deterministic
    /// convolution algorithms (cuBLAS and the engine's own kernels reduce in
    /// a fixed order anyway). Two runs of one command, and a resumed run,
    /// then give the same losses bit for bit, as the CPU always does. Costs
    /// speed on shapes whose fastest algorithm is not deterministic; may be
    /// changed on --resume.
    #[arg(long)]
    #[serde(skip)]
    pub deterministic: bool,
    /// Data-parallel processes on this machine, one per GPU, joined by
    /// NCCL, as in the authors' 8-GPU runs: --bs is then the batch of each
    /// GPU, batch norm normalises over it, and the default learning rate
    /// and the epoch length follow the global batch (N·bs). Across machines,
    /// start one trainer per GPU with torchrun or srun instead: the rank is
    /// read from RANK/WORLD_SIZE/LOCAL_RANK or SLURM_PROCID/SLURM_NTASKS/
    /// SLURM_LOCALID, and rank 0's address from MASTER_ADDR/MASTER_PORT.
    /// --bn-group N gives the same per-GPU batch norm on one device
    /// [default: 1].
    #[arg(long, value_name = "N")]
    #[serde(skip)]
    pub gpus: Option<usize>,
    /// Data-loading threads, at most 1024 [default: the number of cores].
    #[arg(long)]
    pub workers: Option<usize>,
    /// kNN monitor every N epochs (0: only at the end) [default: 10].
    #[arg(long)]
    pub knn_every: Option<usize>,
    /// Labelled training images used as kNN memory (0: all) [default: all on
    /// a GPU whose memory holds their features, else 10000].
    #[arg(long)]
    pub knn_memory: Option<usize>,
    /// Test images used as kNN queries (0: all) [default: all].
    #[arg(long)]
    pub knn_queries: Option<usize>,
    /// kNN monitor every N steps instead (0: by --knn-every), on the
    /// --monitor-memory/--monitor-queries sets; it also measures the untrained
    /// network and raw pixels on those sets at step 0, drawn as reference
    /// lines in curves.png. The end of the run still uses --knn-memory and
    /// --knn-queries [default: 0].
    #[arg(long)]
    pub knn_every_steps: Option<usize>,
    /// Labelled training images used as the monitor's kNN memory (0: all)
    /// [default: --knn-memory].
    #[arg(long)]
    pub monitor_memory: Option<usize>,
    /// Test images used as the monitor's kNN queries (0: all)
    /// [default: --knn-queries].
    #[arg(long)]
    pub monitor_queries: Option<usize>,
    /// Steps between metric lines [default: 10].
    #[arg(long)]
    pub log_every: Option<usize>,
    /// Steps between checkpoints (0: every epoch) [default: 0].
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
}

/// Parses a flag value with `T`'s `FromStr`, keeping just the message.
pub(crate) fn parse<T: std::str::FromStr<Err = nets::Error>>(s: &str) -> Result<T, String> {
    s.parse().map_err(|e: nets::Error| match e {
        nets::Error::Config(message) => message,
        other => other.to_string(),
    })
}

/// Deserialises `Option<T>` through `T`'s `FromStr`.
mod opt_str {
    use serde::{Deserialize, Deserializer, de::Error};
    use std::fmt::Display;
    use std::str::FromStr;

    pub fn deserialize<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        Option::<String>::deserialize(d)?
            .map(|s| s.parse().map_err(D::Error::custom))
            .transpose()
    }
}

/// (De)serialises `T` through its `Display`/`FromStr`.
mod as_str {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use std::fmt::Display;
    use std::str::FromStr;

    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

/// Where the images come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataSource {
    /// A dataset folder on disk (format detected from its contents).
    Path(PathBuf),
    /// Generated images with learnable structure.
    Synthetic,
}

/// The optimiser.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    /// SGD with momentum 0.9.
    Sgd,
    /// LARS, η = 0.001, momentum 0.9.
    Lars,
}

/// A fully resolved pretraining configuration, as saved in `config.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RunConfig {
    /// Backbone depth.
    #[serde(with = "as_str")]
    pub arch: Arch,
    /// Pairs per step (of each rank).
    pub bs: usize,
    /// Stem.
    #[serde(with = "as_str")]
    pub stem: Stem,
    /// Crop size.
    pub res: usize,
    /// Image channels of the data (1 or 3).
    pub channels: usize,
    /// Images.
    pub data: DataSource,
    /// Steps in the whole run.
    pub steps: usize,
    /// Epochs the steps correspond to (fractional for `--steps` runs).
    pub epochs: f64,
    /// Optimiser.
    pub optimizer: OptimizerKind,
    /// Peak learning rate.
    pub lr: f64,
    /// Weight decay.
    pub wd: f64,
    /// Warm-up steps.
    pub warmup_steps: usize,
    /// EMA momentum at the start.
    pub ema: f64,
    /// Teacher batch norm.
    #[serde(with = "as_str")]
    pub teacher_bn: TeacherBn,
    /// Momentum BN's Bessel correction: "double" or "single".
    pub mbn_correction: String,
    /// Ghost-BN groups per batch (1: plain batch norm). Absent, and 1, in
    /// runs made before it existed.
    #[serde(default = "one")]
    pub bn_group: usize,
    /// Data-parallel ranks: `bs` is each rank's batch, the global batch
    /// `world_size·bs`. Absent, and 1, in runs made before it existed.
    #[serde(default = "one")]
    pub world_size: usize,
    /// Projector and predictor hidden width.
    pub proj_hidden: usize,
    /// Projector output width.
    pub proj_out: usize,
    /// Backbone width.
    pub width: usize,
    /// Smallest RandomResizedCrop area fraction.
    pub crop_min: f64,
    /// Seed.
    pub seed: u64,
    /// kNN monitor period in epochs (0: only at the end).
    pub knn_every: usize,
    /// kNN memory size (0: all).
    pub knn_memory: usize,
    /// kNN queries (0: all).
    pub knn_queries: usize,
    /// kNN monitor period in steps (0: by `knn_every`). Absent (0) in runs
    /// made before it existed, as are the monitor's sizes (then the kNN ones).
    #[serde(default)]
    pub knn_every_steps: usize,
    /// The monitor's kNN memory size (0: all).
    #[serde(default)]
    pub monitor_memory: Option<usize>,
    /// The monitor's kNN queries (0: all).
    #[serde(default)]
    pub monitor_queries: Option<usize>,
    /// Steps between metric lines.
    pub log_every: usize,
    /// Steps between checkpoints (0: every epoch).
    pub checkpoint_every: usize,
    /// What the data was when the run started; `--resume` refuses other data.
    /// Absent in runs made before fingerprints were saved. Last: a TOML table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_fingerprint: Option<Fingerprint>,
}

fn one() -> usize {
    1
}

impl RunConfig {
    /// Reads a saved `config.toml`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let run: RunConfig = toml::from_str(&text)
            .map_err(|e| Error::Usage(format!("{}: {}", path.display(), e.message())))?;
        // An edited file must not drive an allocation the flags would refuse.
        use crate::limits::{MAX_BS, MAX_HEAD, MAX_RES, MAX_WIDTH};
        for (key, value, max) in [
            ("bs", run.bs, MAX_BS),
            ("res", run.res, MAX_RES),
            ("width", run.width, MAX_WIDTH),
            ("proj-hidden", run.proj_hidden, MAX_HEAD),
            ("proj-out", run.proj_out, MAX_HEAD),
            ("log-every", run.log_every, usize::MAX),
            ("bn-group", run.bn_group, run.bs),
            ("world-size", run.world_size, crate::limits::MAX_WORLD),
        ] {
            if value == 0 || value > max {
                return Err(Error::Usage(format!(
                    "{}: {key} = {value}, expected 1 to {max}",
                    path.display()
                )));
            }
        }
        if !matches!(run.mbn_correction.as_str(), "double" | "single") {
            return Err(Error::Usage(format!(
                "{}: mbn-correction = {:?}, expected \"double\" or \"single\"",
                path.display(),
                run.mbn_correction
            )));
        }
        Ok(run)
    }

    /// The TOML text saved with the run.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# could not serialise the config: {e}\n"))
    }

    /// Each setting that differs from `earlier`, as `key: old → new`.
    pub fn changes_since(&self, earlier: &RunConfig) -> Vec<String> {
        let table = |c: &RunConfig| toml::Table::try_from(c).unwrap_or_default();
        let (now, before) = (table(self), table(earlier));
        let mut keys: Vec<&String> = now.keys().chain(before.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|k| now.get(*k) != before.get(*k))
            .map(|k| {
                let show = |t: &toml::Table| t.get(k).map_or("unset".into(), |v| v.to_string());
                format!("{k}: {} → {}", show(&before), show(&now))
            })
            .collect()
    }
}

impl PretrainOptions {
    /// Reads a `--config` TOML file: option keys as on the command line, or a
    /// run's saved `config.toml` (which then reproduces that run).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Usage(format!("--config {}: {e}", path.display())))?;
        toml::from_str(&text).or_else(|e| match toml::from_str::<RunConfig>(&text) {
            Ok(run) => Ok(PretrainOptions::from(run)),
            Err(_) => Err(Error::Usage(format!(
                "--config {}: {}",
                path.display(),
                e.message().trim()
            ))),
        })
    }
}

impl From<RunConfig> for PretrainOptions {
    /// The options that resolve to `run` again on the same data.
    fn from(run: RunConfig) -> Self {
        let (data, dataset) = match run.data {
            DataSource::Path(p) => (Some(p), None),
            DataSource::Synthetic => (None, Some("synthetic".to_string())),
        };
        let optimizer = match run.optimizer {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Lars => "lars",
        };
        PretrainOptions {
            arch: Some(run.arch),
            bs: Some(run.bs),
            stem: Some(run.stem),
            res: Some(run.res),
            data,
            dataset,
            steps: Some(run.steps),
            optimizer: Some(optimizer.to_string()),
            lr: Some(run.lr),
            wd: Some(run.wd),
            warmup_steps: Some(run.warmup_steps),
            ema: Some(run.ema),
            teacher_bn: Some(run.teacher_bn),
            mbn_correction: Some(run.mbn_correction),
            bn_group: Some(run.bn_group),
            proj_hidden: Some(run.proj_hidden),
            proj_out: Some(run.proj_out),
            width: Some(run.width),
            crop_min: Some(run.crop_min),
            seed: Some(run.seed),
            knn_every: Some(run.knn_every),
            knn_memory: Some(run.knn_memory),
            knn_queries: Some(run.knn_queries),
            knn_every_steps: Some(run.knn_every_steps),
            monitor_memory: run.monitor_memory,
            monitor_queries: run.monitor_queries,
            log_every: Some(run.log_every),
            checkpoint_every: Some(run.checkpoint_every),
            ..PretrainOptions::default()
        }
    }
}

/// Implements the layering of options over one another, and the list of the
/// options a command line sets, over every optional field.
macro_rules! layered {
    ($($f:ident),*) => {
        impl PretrainOptions {
            /// Each option of `self` where set, else `base`'s. Options that set
            /// the same thing in two ways (`epochs`/`steps`,
            /// `warmup-epochs`/`warmup-steps`, `data`/`dataset`) go as pairs:
            /// if `self` sets either, `base` sets neither.
            pub fn over(self, mut base: PretrainOptions) -> PretrainOptions {
                if self.epochs.is_some() || self.steps.is_some() {
                    (base.epochs, base.steps) = (None, None);
                }
                if self.warmup_epochs.is_some() || self.warmup_steps.is_some() {
                    (base.warmup_epochs, base.warmup_steps) = (None, None);
                }
                if self.data.is_some() || self.dataset.is_some() {
                    (base.data, base.dataset) = (None, None);
                }
                PretrainOptions { $($f: self.$f.or(base.$f),)* resume: self.resume, auto_resume: self.auto_resume, config: self.config, profile: self.profile, deterministic: self.deterministic, gpus: self.gpus }
            }

            /// The flags of the options that are set, e.g. `--proj-hidden`.
            pub fn given(&self) -> Vec<String> {
                let mut flags = Vec::new();
                $(if self.$f.is_some() {
                    flags.push(format!("--{}", stringify!($f).replace('_', "-")));
                })*
                if self.config.is_some() {
                    flags.push("--config".into());
                }
                flags
            }
        }
    };
}

layered!(
    arch,
    bs,
    stem,
    res,
    data,
    dataset,
    epochs,
    steps,
    device,
    precision,
    cuda_graph,
    optimizer,
    lr,
    wd,
    warmup_epochs,
    warmup_steps,
    ema,
    teacher_bn,
    mbn_correction,
    bn_group,
    proj_hidden,
    proj_out,
    width,
    crop_min,
    out,
    seed,
    workers,
    knn_every,
    knn_memory,
    knn_queries,
    knn_every_steps,
    monitor_memory,
    monitor_queries,
    log_every,
    checkpoint_every
);
