//! The evaluation and tooling subcommands: knn, linear-eval, embed, export, info.

use crate::augment::AugmentConfig;
use crate::checkpoint;
use crate::config::{DataSource, RunConfig};
use crate::data::{Dataset, Splits};
use crate::eval;
use crate::output::write_user_file;
use crate::pretrain::{Placement, model_config, open_data, resolve_device};
use crate::{Error, Result};
use clap::{Args, ValueEnum};
use engine::{DType, Device, Tensor};
use nets::m2t::{M2t, M2tConfig, Which};
use nets::weights::{Part, export_bytes, f32_values};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::path::{Path, PathBuf};

/// Which network of a checkpoint.
#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum Network {
    /// The EMA teacher (the one the method evaluates).
    #[default]
    Teacher,
    /// The student.
    Student,
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Network::Teacher => "teacher",
            Network::Student => "student",
        })
    }
}

impl From<Network> for Which {
    fn from(n: Network) -> Which {
        match n {
            Network::Teacher => Which::Teacher,
            Network::Student => Which::Student,
        }
    }
}

/// Where an evaluation computes.
#[derive(Args, Debug, Default)]
pub struct EvalDevice {
    /// auto, cpu, cuda[:N] or emulator: a GPU computes the features in
    /// batches in the precision, and for kNN keeps the memory bank there
    /// and votes there too [default: auto].
    #[arg(long)]
    pub device: Option<String>,
    /// bf16, fp16 or fp32 [default: bf16 on a GPU, fp32 on the CPU].
    #[arg(long)]
    pub precision: Option<String>,
}

impl EvalDevice {
    /// The placement these flags resolve to (saying why `auto` chose the CPU).
    fn resolve(&self) -> Result<Placement> {
        let (placement, note) = resolve_device(self.device.as_deref(), self.precision.as_deref())?;
        if let Some(note) = note {
            eprintln!("{note}");
        }
        Ok(placement)
    }
}

/// A checkpoint loaded with the configuration of its run.
pub struct Loaded {
    /// The run's resolved configuration.
    pub config: RunConfig,
    /// Student and teacher.
    pub model: M2t,
}

impl Loaded {
    /// The dataset to evaluate on: `data`, or the run's own. Images whose
    /// channel count differs from the network's are converted (grey ↔ RGB).
    fn splits(&self, data: Option<&PathBuf>) -> Result<Splits> {
        let source = data.map_or(self.config.data.clone(), |p| DataSource::Path(p.clone()));
        let splits = open_data(&source, self.config.res, self.config.seed)?;
        for warning in splits.label_warnings() {
            eprintln!("{warning}");
        }
        Ok(splits)
    }

    /// The evaluation transform at the run's resolution and channels.
    fn eval_transform(&self) -> Result<AugmentConfig> {
        AugmentConfig::new(self.config.res, self.config.channels)
    }
}

/// Loads the model of a run folder (its latest checkpoint) or of a checkpoint folder.
pub fn load_checkpoint(path: &Path) -> Result<Loaded> {
    load_checkpoint_on(
        path,
        Placement {
            device: Device::Cpu,
            precision: DType::F32,
        },
    )
}

/// [`load_checkpoint`], the model on `placement`'s device in its precision.
pub fn load_checkpoint_on(path: &Path, placement: Placement) -> Result<Loaded> {
    let dir = checkpoint::locate(path)?;
    let run = dir
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| Error::data(&dir, "checkpoint folder is not inside a run folder"))?;
    let config = RunConfig::load(&run.join("config.toml"))?;
    let shape = M2tConfig {
        precision: placement.precision,
        ..model_config(&config)
    };
    let mut model = M2t::new(shape, config.seed)?;
    checkpoint::restore_network(&dir, &mut model, Which::Student)?;
    checkpoint::restore_network(&dir, &mut model, Which::Teacher)?;
    let model = model.to_device(placement.device)?;
    Ok(Loaded { config, model })
}

/// Options of `trainer knn`.
#[derive(Args, Debug)]
pub struct KnnArgs {
    /// Run folder (uses its latest checkpoint) or checkpoint folder.
    #[arg(long, required_unless_present = "raw_pixels")]
    pub checkpoint: Option<PathBuf>,
    /// Labelled dataset to evaluate on [default: the run's dataset].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Neighbours.
    #[arg(long, default_value_t = eval::KNN_K)]
    pub k: usize,
    /// Temperature of the weighted vote.
    #[arg(long, default_value_t = eval::KNN_T)]
    pub t: f64,
    /// Network whose backbone features are used.
    #[arg(long, value_enum, default_value_t = Network::Teacher)]
    pub which: Network,
    /// Labelled training images used as memory (0: all) [default: all on a
    /// GPU whose memory holds their features, else 10000].
    #[arg(long)]
    pub memory: Option<usize>,
    /// Test images used as queries (0: all).
    #[arg(long, default_value_t = 0)]
    pub queries: usize,
    /// Evaluate raw centred pixels instead of a network (needs --data; --res sets the size).
    #[arg(long)]
    pub raw_pixels: bool,
    /// Image size for --raw-pixels [default: the dataset's].
    #[arg(long)]
    pub res: Option<usize>,
    /// Where the network's features and the vote are computed.
    #[command(flatten)]
    pub place: EvalDevice,
}

/// The labelled training split (kNN memory, probe training) and the test split.
fn labelled<'a>(splits: &'a Splits, what: &Path) -> Result<(&'a Dataset, &'a Dataset)> {
    match (&splits.labelled_train, &splits.test) {
        (Some(train), Some(test)) => Ok((train, test)),
        _ => Err(Error::Usage(format!(
            "{}: evaluation needs labelled train and test splits",
            what.display()
        ))),
    }
}

/// Runs `trainer knn`; prints and returns the accuracy.
pub fn knn(args: KnnArgs) -> Result<f64> {
    if args.k == 0 || args.t.is_nan() || args.t <= 0.0 {
        return Err(Error::Usage(format!(
            "--k {} --t {}: need k ≥ 1 and t > 0",
            args.k, args.t
        )));
    }
    let (memory, queries, label) = if args.raw_pixels {
        let data = args
            .data
            .clone()
            .ok_or_else(|| Error::Usage("--raw-pixels needs --data".into()))?;
        let splits = open_data(&DataSource::Path(data.clone()), 0, 0)?;
        let (memory, queries) = labelled(&splits, &data)?;
        let res = args
            .res
            .or(memory.native_size().map(|(h, w)| h.min(w)))
            .unwrap_or(224);
        crate::limits::at_most("res", res, crate::limits::MAX_RES)?;
        let aug = AugmentConfig::new(res, memory.channels())?;
        let limit = args.memory.unwrap_or(eval::CPU_KNN_MEMORY);
        let (mem, q) = eval::centred_pixel_features(memory, queries, &aug, limit, args.queries)?;
        (mem, q, (memory.num_classes(), "raw pixels".to_string()))
    } else {
        let path = args
            .checkpoint
            .clone()
            .ok_or_else(|| Error::Usage("--checkpoint is required".into()))?;
        let loaded = load_checkpoint_on(&path, args.place.resolve()?)?;
        let splits = loaded.splits(args.data.as_ref())?;
        let (memory, queries) = labelled(&splits, &path)?;
        let aug = loaded.eval_transform()?;
        let which = Which::from(args.which);
        let model = &loaded.model;
        let dim = model.config().backbone.feature_dim();
        let limit = args
            .memory
            .unwrap_or_else(|| eval::default_knn_memory(model.device(), memory.len(), dim));
        if model.device().is_gpu() {
            let classes = memory
                .num_classes()
                .ok_or_else(|| Error::Usage("kNN needs a labelled dataset".into()))?;
            let mem = eval::device_network_features(model, which, memory, &aug, limit)?;
            let q = eval::device_network_features(model, which, queries, &aug, args.queries)?;
            let (rows, n) = (mem.labels.len(), q.labels.len());
            let acc = crate::knn::knn_accuracy_device(mem, q, args.k, args.t, classes)?;
            return Ok(report_knn(&args, &args.which.to_string(), acc, (rows, n)));
        }
        let mem = eval::network_features(model, which, memory, &aug, limit)?;
        let q = eval::network_features(model, which, queries, &aug, args.queries)?;
        (mem, q, (memory.num_classes(), args.which.to_string()))
    };
    let (classes, label) = label;
    let classes = classes.ok_or_else(|| Error::Usage("kNN needs a labelled dataset".into()))?;
    let acc = crate::knn::knn_accuracy(&memory, &queries, args.k, args.t, classes)?;
    Ok(report_knn(
        &args,
        &label,
        acc,
        (memory.len(), queries.len()),
    ))
}

/// Prints `trainer knn`'s result line; returns the accuracy.
fn report_knn(args: &KnnArgs, label: &str, acc: f64, (memory, queries): (usize, usize)) -> f64 {
    println!(
        "knn {label} k={} t={}: {:.2}% ({memory} memory, {queries} queries)",
        args.k,
        args.t,
        100.0 * acc,
    );
    acc
}

/// Options of `trainer export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Run folder (uses its latest checkpoint) or checkpoint folder.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Output safetensors file (torchvision names and layout).
    #[arg(long)]
    pub out: PathBuf,
    /// Network to export.
    #[arg(long, value_enum, default_value_t = Network::Teacher)]
    pub which: Network,
}

/// Runs `trainer export`: the backbone for `torchvision.models.resnetXX().load_state_dict(..., strict=False)`.
pub fn export_backbone(args: ExportArgs) -> Result<()> {
    let loaded = load_checkpoint(&args.checkpoint)?;
    let (store, buffers) = loaded.model.network(args.which.into());
    write_user_file(&args.out, &export_bytes(store, buffers, Part::Backbone)?)?;
    println!(
        "wrote {} ({} backbone, {}, torchvision names)",
        args.out.display(),
        args.which,
        loaded.config.arch
    );
    Ok(())
}

/// Options of `trainer embed`.
#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// Run folder (uses its latest checkpoint) or checkpoint folder.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Dataset to embed (its test split if it has one, else its training split).
    #[arg(long, conflicts_with = "input", required_unless_present = "input")]
    pub data: Option<PathBuf>,
    /// Safetensors file with `images`: f32 [N,H,W,C], already normalised.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Output safetensors file with `features` [N,F]; for --data also `labels`
    /// [N] and `indices` [N] (each row's image in the split, which unreadable
    /// images leave out), and for image folders each row's file in the
    /// metadata's `sources`.
    #[arg(long)]
    pub out: PathBuf,
    /// Network whose backbone embeds.
    #[arg(long, value_enum, default_value_t = Network::Teacher)]
    pub which: Network,
    /// Where the network's features are computed.
    #[command(flatten)]
    pub place: EvalDevice,
}

/// The `images` tensor of a safetensors file: NHWC f32 values and the shape.
fn read_images(path: &Path, channels: usize) -> Result<(Vec<f32>, Vec<usize>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::data(path, format!("not a valid safetensors file: {e}")))?;
    let view = file
        .tensor("images")
        .map_err(|_| Error::data(path, "no `images` tensor"))?;
    let shape = view.shape().to_vec();
    if view.dtype() != Dtype::F32 || shape.len() != 4 || shape[3] != channels {
        return Err(Error::data(
            path,
            format!(
                "`images` is {:?} {shape:?}; expected F32 [N,H,W,{channels}]",
                view.dtype()
            ),
        ));
    }
    Ok((f32_values(&view), shape))
}

/// Which images of a dataset split the rows of `embed --data` are.
struct RowSources {
    /// Whether the split has labels.
    labelled: bool,
    /// Each row's index in the split.
    indices: Vec<i64>,
    /// The safetensors metadata: the split, and each row's file (image
    /// folders; non-UTF-8 bytes shown lossily) as a JSON list.
    metadata: std::collections::HashMap<String, String>,
}

impl RowSources {
    fn new(set: &Dataset, indices: &[usize]) -> RowSources {
        let mut metadata = std::collections::HashMap::from([("split".to_string(), set.describe())]);
        let sources: Option<Vec<String>> = indices
            .iter()
            .map(|&i| set.source(i).map(|p| p.to_string_lossy().into_owned()))
            .collect();
        if let Some(sources) = sources.filter(|s| !s.is_empty()) {
            metadata.insert(
                "sources".into(),
                serde_json::Value::from(sources).to_string(),
            );
        }
        RowSources {
            labelled: set.label(0).is_some(),
            indices: indices.iter().map(|&i| i as i64).collect(),
            metadata,
        }
    }
}

/// A 1-D i64 tensor view of `values` for the file `out`.
fn i64_view<'a>(values: &'a [i64], out: &Path) -> Result<TensorView<'a>> {
    TensorView::new(Dtype::I64, vec![values.len()], bytemuck::cast_slice(values))
        .map_err(|e| Error::data(out, e.to_string()))
}

/// Names each image of `set` that `indices` (the embedded rows) leaves out.
fn report_skipped(set: &Dataset, indices: &[usize]) {
    let mut embedded = indices.iter().copied().peekable();
    let mut skipped = 0;
    for i in 0..set.len() {
        if embedded.next_if_eq(&i).is_some() {
            continue;
        }
        skipped += 1;
        match set.image(i) {
            Err(e) => eprintln!("skipped {e}"),
            Ok(_) => eprintln!("skipped image {i} of {}", set.describe()),
        }
    }
    if skipped > 0 {
        eprintln!("skipped {skipped} unreadable images; `indices` maps rows to images");
    }
}

/// Runs `trainer embed`.
pub fn embed(args: EmbedArgs) -> Result<()> {
    let loaded = load_checkpoint_on(&args.checkpoint, args.place.resolve()?)?;
    let which = Which::from(args.which);
    let (features, rows) = match (&args.input, &args.data) {
        (Some(input), _) => {
            let (pixels, shape) = read_images(input, loaded.config.channels)?;
            if shape[..3].contains(&0) {
                return Err(Error::data(
                    input,
                    format!("`images` is {shape:?}: no images to embed"),
                ));
            }
            // A batch at a time, so a large file does not need all activations at once.
            let image_len = shape[1..].iter().product::<usize>().max(1);
            let (mut data, mut dim) = (Vec::new(), loaded.model.config().backbone.feature_dim());
            for chunk in pixels.chunks(image_len * eval::FEATURE_BATCH) {
                let n = chunk.len() / image_len;
                let images = Tensor::from_vec(chunk.to_vec(), [n, shape[1], shape[2], shape[3]])?;
                let f = loaded.model.features(which, &images)?;
                dim = f.dims()[1];
                data.extend_from_slice(f.as_slice::<f32>()?);
            }
            (
                crate::knn::Features {
                    data,
                    dim,
                    labels: Vec::new(),
                },
                None,
            )
        }
        (None, Some(data)) => {
            let splits = loaded.splits(Some(data))?;
            let set = splits.test.as_ref().unwrap_or(&splits.train);
            let aug = loaded.eval_transform()?;
            let (f, indices) = eval::indexed_network_features(&loaded.model, which, set, &aug, 0)?;
            report_skipped(set, &indices);
            (f, Some(RowSources::new(set, &indices)))
        }
        (None, None) => return Err(Error::Usage("pass --data PATH or --input FILE".into())),
    };
    let n = features.data.len() / features.dim.max(1);
    let mut tensors = vec![(
        "features".to_string(),
        TensorView::new(
            Dtype::F32,
            vec![n, features.dim],
            bytemuck::cast_slice(&features.data),
        )
        .map_err(|e| Error::data(&args.out, e.to_string()))?,
    )];
    let mut metadata = None;
    if let Some(rows) = &rows {
        if rows.labelled {
            tensors.push(("labels".to_string(), i64_view(&features.labels, &args.out)?));
        }
        tensors.push(("indices".to_string(), i64_view(&rows.indices, &args.out)?));
        metadata = Some(rows.metadata.clone());
    }
    let bytes = safetensors::serialize(tensors, metadata)
        .map_err(|e| Error::data(&args.out, e.to_string()))?;
    write_user_file(&args.out, &bytes)?;
    println!(
        "wrote {} features of dimension {} to {}",
        n,
        features.dim,
        args.out.display()
    );
    Ok(())
}

/// Options of `trainer info`.
#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Also run a smoke test on each backend (the CPU, the emulator, each
    /// GPU): convolutions forward and backward in f32 and bf16, a matrix
    /// product, an M2T step and the augmentation kernels, each against the
    /// CPU. Exit code 1 when a check fails on any device.
    #[arg(long, conflicts_with = "library_path")]
    pub check: bool,
    /// Print only the LD_LIBRARY_PATH the trainer runs with (the CUDA library
    /// folders it chose first), for programs that embed the engine.
    #[arg(long)]
    pub library_path: bool,
    /// Describe this dataset instead (a folder, or a pack from `trainer
    /// pack`: its header, classes, image sizes, and every record's checksum,
    /// checked). Exit code 1 when a pack has corrupt records.
    #[arg(long, conflicts_with_all = ["check", "library_path"])]
    pub data: Option<PathBuf>,
}

/// Runs `trainer info`.
pub fn info(args: InfoArgs) -> Result<()> {
    if args.library_path {
        println!("{}", std::env::var("LD_LIBRARY_PATH").unwrap_or_default());
        return Ok(());
    }
    if let Some(path) = &args.data {
        return describe_data(path);
    }
    println!("trainer {}", env!("CARGO_PKG_VERSION"));
    println!(
        "cpu: reference backend (f32), {} threads (RAYON_NUM_THREADS to change)",
        rayon::current_num_threads()
    );
    let report = kernels::probe::probe();
    print_cuda_report(&report);
    let fm = std::path::Path::new(crate::data::FASHION_MNIST_DIR);
    if fm.is_dir() {
        println!("fashion-mnist: {}", fm.display());
    } else {
        println!("fashion-mnist: missing (apt-get install dataset-fashion-mnist)");
    }
    if args.check {
        run_checks(&report)?;
    }
    Ok(())
}

/// `trainer info --data PATH`: each split, and for a pack its format,
/// classes, stored sizes and a check of every record's checksum.
fn describe_data(path: &Path) -> Result<()> {
    let splits = crate::data::open(path)?;
    for set in [Some(&splits.train), splits.test.as_ref()]
        .into_iter()
        .flatten()
    {
        println!("{}", set.describe());
    }
    let Some(pack) = splits.train.pack() else {
        return Ok(());
    };
    let bytes = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    let max_side = match pack.max_side {
        0 => "sizes as packed".to_string(),
        side => format!("short sides at most {side}"),
    };
    println!(
        "pack: format version {}, {} records ({} train, {} val), {:.1} MiB, {max_side}",
        crate::data::pack::VERSION,
        pack.records.len(),
        pack.train_len,
        pack.records.len() - pack.train_len,
        bytes as f64 / (1 << 20) as f64
    );
    let mut shorts: Vec<u32> = pack.records.iter().map(|r| r.height.min(r.width)).collect();
    shorts.sort_unstable();
    let mean_bytes = pack.records.iter().map(|r| u64::from(r.len)).sum::<u64>()
        / pack.records.len().max(1) as u64;
    println!(
        "images: short side {}..{} (median {}), {mean_bytes} bytes each on average",
        shorts.first().unwrap_or(&0),
        shorts.last().unwrap_or(&0),
        shorts.get(shorts.len() / 2).unwrap_or(&0)
    );
    println!(
        "classes ({}): {}",
        pack.classes.len(),
        pack.classes.join(", ")
    );
    let corrupt = pack.corrupt_records();
    if corrupt.is_empty() {
        println!("checksums: all {} records ok", pack.records.len());
        return Ok(());
    }
    for &i in &corrupt {
        eprintln!("{}: checksum mismatch", pack.record_name(i).display());
    }
    Err(Error::data(
        path,
        format!(
            "{} of {} records are corrupt",
            corrupt.len(),
            pack.records.len()
        ),
    ))
}

/// `trainer info --check`: every backend's checks, one line each, then the
/// files each CUDA library was loaded from — listed after the checks, since
/// cuDNN loads its engines only when a convolution first needs them.
fn run_checks(report: &kernels::probe::Report) -> Result<()> {
    let gpus: Vec<Device> = report
        .devices
        .iter()
        .flatten()
        .map(|g| Device::Cuda(g.ordinal))
        .collect();
    let mut failed = 0;
    // GPUs first: on a machine lent for minutes they are what matters.
    let mut devices = Vec::new();
    match report.usable() {
        Ok(_) => devices.extend(gpus),
        Err(why) if gpus.is_empty() => {
            println!("no GPU: {why}; checking the CPU and the emulator")
        }
        Err(why) => {
            // A GPU the engine cannot use is a failure, not an absence.
            failed += 1;
            println!(
                "FAIL  cuda      {} GPUs found, none usable: {why}",
                gpus.len()
            );
        }
    }
    devices.extend([Device::Cpu, Device::Emulator]);
    for device in devices {
        let label = device.to_string();
        for (name, outcome) in crate::check::run(device) {
            match outcome {
                Ok(detail) => println!("pass  {label:<9} {name}: {detail}"),
                Err(why) => {
                    failed += 1;
                    println!("FAIL  {label:<9} {name}: {why}");
                }
            }
        }
    }
    for stem in [
        "libcuda",
        "libnvrtc",
        "libnvJitLink",
        "libcublas",
        "libcudnn",
        "libnccl",
    ] {
        let folders = kernels::probe::loaded_folders(stem);
        for (dir, files) in &folders {
            println!("loaded {stem}: {}: {}", dir.display(), files.join(" "));
        }
        if folders.len() > 1 {
            println!(
                "warning: {stem} files come from {} folders; a library mixed from two installs may fail",
                folders.len()
            );
        }
    }
    if failed > 0 {
        return Err(Error::Check(format!("{failed} checks failed")));
    }
    println!("all checks passed");
    Ok(())
}

/// What `trainer info` says about CUDA: each library (NCCL too) with its version and
/// path or "missing", the GPUs, and whether `--device cuda` can work.
fn print_cuda_report(report: &kernels::probe::Report) {
    for lib in &report.libraries {
        match (&lib.path, &lib.version) {
            (Some(path), Some(version)) => {
                println!("cuda {}: {version} ({})", lib.name, path.display())
            }
            _ => println!("cuda {}: missing", lib.name),
        }
    }
    let nccl = kernels::probe::nccl();
    match (&nccl.path, &nccl.version) {
        (Some(path), Some(version)) => println!("cuda nccl: {version} ({})", path.display()),
        _ => println!(
            "cuda nccl: not found (only data parallel on more than one GPU needs it; PyTorch's environment ships it under site-packages/nvidia/nccl/lib, or set M2T_CUDA_LIBS)"
        ),
    }
    println!(
        "library path: LD_LIBRARY_PATH={}",
        std::env::var("LD_LIBRARY_PATH").unwrap_or_default()
    );
    for (name, dir) in kernels::probe::library_folders() {
        println!(
            "warning: cuda {name} is in {} but not on the library path",
            dir.display()
        );
    }
    let dirs = kernels::probe::search_dirs();
    for group in kernels::probe::GROUPS {
        let Some(dir) = kernels::probe::choose_folder(&dirs, group) else {
            continue;
        };
        let (required, optional) = group.missing_in(&dir);
        if !required.is_empty() {
            println!(
                "warning: cuda {}: {} lacks {}",
                group.name,
                dir.display(),
                required.join(", ")
            );
        }
        if !optional.is_empty() {
            println!(
                "note: cuda {}: {} has no {} (the engines in it are unavailable)",
                group.name,
                dir.display(),
                optional.join(", ")
            );
        }
    }
    if report
        .libraries
        .iter()
        .any(|l| l.name == "cudnn" && l.path.is_some())
    {
        println!("cuda cudnn files: {}", kernels::probe::cudnn_files());
        let folders = kernels::probe::loaded_folders("libcudnn").len();
        if folders > 1 {
            println!(
                "warning: cuDNN is loaded from {folders} folders and refuses sub-libraries of different versions; point M2T_CUDA_LIBS at one cuDNN install"
            );
        }
    }
    match &report.devices {
        Ok(devices) => {
            for d in devices {
                println!(
                    "cuda:{}: {}, compute capability {}.{}, {:.1} GiB",
                    d.ordinal,
                    d.name,
                    d.compute_capability.0,
                    d.compute_capability.1,
                    d.memory_bytes as f64 / (1u64 << 30) as f64
                );
            }
        }
        Err(why) => println!("cuda devices: none ({why})"),
    }
    match report.usable() {
        Ok(d) => println!("--device auto uses cuda:{}", d.ordinal),
        Err(why) => println!("--device auto uses the CPU: {why}"),
    }
    println!(
        "kernel cache: {}",
        kernels::nvrtc::cache_dir().map_or("off (no HOME)".into(), |d| d.display().to_string())
    );
}

/// Options of `trainer linear-eval`.
#[derive(Args, Debug)]
pub struct LinearEvalArgs {
    /// Run folder (uses its latest checkpoint) or checkpoint folder.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Labelled dataset [default: the run's dataset].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Epochs (the method's 80 at ImageNet scale; fewer suit small data).
    #[arg(long, default_value_t = 80)]
    pub epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 256)]
    pub bs: usize,
    /// Learning rate [default: 0.2·bs/256].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Training images per epoch (0: all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Network whose frozen backbone is probed.
    #[arg(long, value_enum, default_value_t = Network::Teacher)]
    pub which: Network,
    /// Where the network's features are computed.
    #[command(flatten)]
    pub place: EvalDevice,
}

/// Runs `trainer linear-eval`.
pub fn linear_eval(args: LinearEvalArgs) -> Result<()> {
    let lr = args.lr.unwrap_or(0.2 * args.bs as f64 / 256.0);
    if args.bs < 2 {
        return Err(Error::Usage(format!(
            "--bs {}: batch norm needs at least 2 images per batch",
            args.bs
        )));
    }
    crate::limits::at_most("bs", args.bs, crate::limits::MAX_BS)?;
    if !(lr.is_finite() && lr > 0.0) {
        return Err(Error::Usage(format!(
            "--lr {lr}: expected a positive learning rate"
        )));
    }
    if args.epochs == 0 {
        return Err(Error::Usage("--epochs 0: train at least one epoch".into()));
    }
    // After the flags, so that a usage error stays one line, before any device note.
    let loaded = load_checkpoint_on(&args.checkpoint, args.place.resolve()?)?;
    let splits = loaded.splits(args.data.as_ref())?;
    let (train, test) = labelled(&splits, &args.checkpoint)?;
    let aug = loaded.eval_transform()?;
    let report = eval::linear_eval(
        &loaded.model,
        args.which.into(),
        train,
        test,
        &aug,
        args.epochs,
        args.bs,
        lr,
        args.limit,
        loaded.config.seed,
    )?;
    for (e, acc) in report.per_epoch.iter().enumerate() {
        println!("epoch {}: top-1 {:.2}%", e + 1, 100.0 * acc);
    }
    println!(
        "linear eval {:?}: best top-1 {:.2}%",
        args.which,
        100.0 * report.best
    );
    Ok(())
}
