//! Run checkpoints: `checkpoints/step-NNNNNNN/` holds the student and teacher
//! (whole networks with BN buffers, PyTorch names), the optimiser state and a
//! JSON state; `checkpoints/latest` names the newest complete one. Each
//! checkpoint is written into a temporary folder and renamed into place, and
//! `latest` is replaced atomically, so a crash at any moment leaves the previous
//! checkpoint usable. The previous checkpoint is kept; older ones are removed.
//! `checksums.json` records the size and CRC-32 of every other file, so a
//! checkpoint damaged on disk is found on resume ([`resumable`]) and the one
//! before it used.

use crate::{Error, Result};
use engine::{ParamStore, Tensor};
use nets::m2t::{M2t, Which};
use nets::weights::{Part, export, f32_values, import, write_atomic};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

/// What, besides weights, a run needs to continue exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Steps completed: the next step to run.
    pub step: usize,
    /// The run's seed. Data order and augmentation are pure functions of
    /// (seed, epoch, position), so no generator state needs saving.
    pub seed: u64,
    /// Lines of `metrics.jsonl` written up to this checkpoint; a resumed run
    /// drops any lines after them.
    pub metrics_lines: usize,
    /// Corrupt images skipped so far.
    pub skipped_images: usize,
    /// Seconds of training so far.
    pub train_seconds: f64,
    /// fp16 runs: the dynamic loss scale and its count of overflow-free
    /// steps, so a resumed run skips and grows exactly as the original.
    #[serde(default)]
    pub loss_scale: Option<(f32, u32)>,
}

/// Whether run folder `run` holds a checkpoint: a `latest`, or any
/// `step-N` folder (a run killed between a checkpoint's rename and its
/// `latest`, or one whose `latest` was lost, still holds its checkpoints).
pub fn holds_checkpoints(run: &Path) -> bool {
    let root = run.join("checkpoints");
    root.join("latest").exists()
        || fs::read_dir(&root).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("step-"))
        })
}

/// The checkpoint folder of a run folder, or the folder itself if it is a checkpoint.
pub fn locate(path: &Path) -> Result<PathBuf> {
    if path.join("state.json").is_file() {
        return Ok(path.to_path_buf());
    }
    let dir = named_by_latest(path)?;
    if dir.join("state.json").is_file() {
        Ok(dir)
    } else {
        Err(Error::data(
            &dir,
            "checkpoints/latest names a checkpoint that is missing or incomplete",
        ))
    }
}

/// The checkpoint folder `checkpoints/latest` of run `run` names, present
/// or not: a usage error if there is no `latest`, a data error if it names
/// anything but a `step-N` of this run.
fn named_by_latest(run: &Path) -> Result<PathBuf> {
    let latest = run.join("checkpoints").join("latest");
    let name = fs::read_to_string(&latest).map_err(|_| {
        Error::Usage(format!("{}: no checkpoint here (expected a run folder with checkpoints/latest, or a checkpoint folder with state.json)", run.display()))
    })?;
    let name = name.trim();
    // A plain `step-N` name: `latest` must not lead out of the run folder.
    if !name.starts_with("step-") || name.contains(['/', '\\']) {
        return Err(Error::data(
            &latest,
            format!("names {name:?}, not a checkpoint of this run (step-NNNNNNN)"),
        ));
    }
    Ok(run.join("checkpoints").join(name))
}

fn optimizer_file(dir: &Path) -> PathBuf {
    dir.join("optimizer.safetensors")
}

/// The copy of the run's configuration a checkpoint keeps, so that resume can
/// tell an edited `config.toml`.
pub fn config_file(dir: &Path) -> PathBuf {
    dir.join("config.toml")
}

/// The folder name of the checkpoint after `step` steps.
pub fn folder_name(step: usize) -> String {
    format!("step-{step:07}")
}

/// Writes a checkpoint of `model`, the optimiser `velocity`, `state` and the
/// run's `config` (TOML) under `run/checkpoints/`, and points `latest` at it.
/// Returns its folder.
pub fn save(
    run: &Path,
    model: &M2t,
    velocity: &Tensor,
    state: &State,
    config: &str,
) -> Result<PathBuf> {
    let root = run.join("checkpoints");
    fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    let name = folder_name(state.step);
    let tmp = root.join(format!(".{name}.tmp"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    for (which, file) in [
        (Which::Student, "student.safetensors"),
        (Which::Teacher, "teacher.safetensors"),
    ] {
        let (store, buffers) = model.network(which);
        export(&tmp.join(file), store, buffers, Part::Whole)?;
        pause_for_tests();
    }
    let host = velocity.to_vec::<f32>()?;
    let data: &[u8] = bytemuck::cast_slice(&host);
    let view = TensorView::new(Dtype::F32, vec![velocity.numel()], data)
        .map_err(|e| Error::data(&tmp, e.to_string()))?;
    let bytes = safetensors::serialize([("velocity", view)], None)
        .map_err(|e| Error::data(&tmp, e.to_string()))?;
    write_atomic(&optimizer_file(&tmp), &bytes)?;
    pause_for_tests();
    let json = serde_json::to_vec_pretty(state).map_err(|e| Error::data(&tmp, e.to_string()))?;
    write_atomic(&tmp.join("state.json"), &json)?;
    write_atomic(&config_file(&tmp), config.as_bytes())?;
    write_checksums(&tmp)?;

    let dir = root.join(&name);
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
    let previous = fs::read_to_string(root.join("latest")).ok();
    write_atomic(&root.join("latest"), name.as_bytes())?;
    prune(&root, &name, previous.as_deref().map(str::trim))?;
    Ok(dir)
}

/// The file of a checkpoint that records its other files' sizes and CRCs.
const CHECKSUMS: &str = "checksums.json";

/// One file's size and CRC-32.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Checksum {
    bytes: u64,
    crc32: u32,
}

fn checksum(path: &Path) -> Result<Checksum> {
    let data = fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut crc = flate2::Crc::new();
    crc.update(&data);
    Ok(Checksum {
        bytes: data.len() as u64,
        crc32: crc.sum(),
    })
}

/// Records the checksum of every file in `dir` in its `checksums.json`.
fn write_checksums(dir: &Path) -> Result<()> {
    let mut sums = std::collections::BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != CHECKSUMS {
            sums.insert(name, checksum(&entry.path())?);
        }
    }
    let json = serde_json::to_vec_pretty(&sums).map_err(|e| Error::data(dir, e.to_string()))?;
    Ok(write_atomic(&dir.join(CHECKSUMS), &json)?)
}

/// Checks every file `checksums.json` lists; why not, naming the files.
/// A checkpoint written before checksums existed is taken as it is.
pub fn verify(dir: &Path) -> std::result::Result<(), String> {
    if !dir.join("state.json").is_file() {
        return Err("state.json is missing".into());
    }
    let Ok(text) = fs::read(dir.join(CHECKSUMS)) else {
        return Ok(());
    };
    let sums: std::collections::BTreeMap<String, Checksum> =
        serde_json::from_slice(&text).map_err(|e| format!("{CHECKSUMS} is unreadable: {e}"))?;
    let bad: Vec<String> = sums
        .iter()
        .filter_map(|(name, want)| match checksum(&dir.join(name)) {
            Err(_) => Some(format!("{name} is missing")),
            Ok(got) if got.bytes != want.bytes => Some(format!(
                "{name} has {} bytes, {} were written",
                got.bytes, want.bytes
            )),
            Ok(got) if got != *want => Some(format!("{name} fails its CRC-32")),
            Ok(_) => None,
        })
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join(", "))
    }
}

/// The newest checkpoint of `run` whose files pass [`verify`], with a
/// warning for each newer one that did not, and `latest` pointed at it. An
/// error, naming each checkpoint and what is wrong with it, if none passes.
pub fn resumable(run: &Path) -> Result<(PathBuf, Vec<String>)> {
    let root = run.join("checkpoints");
    let mut candidates: Vec<PathBuf> = Vec::new();
    let mut warnings = Vec::new();
    // A `latest` that leads out of the run folder is refused, not worked
    // around; a missing one, or one naming a missing checkpoint, is damage.
    match named_by_latest(run) {
        Ok(dir) => candidates.push(dir),
        Err(e @ Error::Usage(_)) => warnings.push(e.to_string()),
        Err(e) => return Err(e),
    }
    let mut others: Vec<PathBuf> = fs::read_dir(&root)
        .map_err(|e| Error::io(&root, e))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("step-"))
        .map(|e| e.path())
        .filter(|p| !candidates.contains(p))
        .collect();
    others.sort();
    candidates.extend(others.into_iter().rev());
    for dir in candidates {
        match verify(&dir) {
            Ok(()) => {
                if !warnings.is_empty() {
                    let name = dir.file_name().unwrap_or_default().to_string_lossy();
                    write_atomic(&root.join("latest"), name.as_bytes())?;
                }
                return Ok((dir, warnings));
            }
            Err(why) => warnings.push(format!("{}: {why}", dir.display())),
        }
    }
    Err(Error::data(
        &root,
        format!("no valid checkpoint to resume: {}", warnings.join("; ")),
    ))
}

/// Test hook: with `M2T_TEST_SLOW_CHECKPOINT_MS` set, each checkpoint file
/// is followed by that pause, so a test's kill can land inside a write.
fn pause_for_tests() {
    if let Some(ms) = std::env::var("M2T_TEST_SLOW_CHECKPOINT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Removes every checkpoint but `keep` and `previous`, and temporary folders
/// left by interrupted saves.
fn prune(root: &Path, keep: &str, previous: Option<&str>) -> Result<()> {
    let entries = fs::read_dir(root).map_err(|e| Error::io(root, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let stale_tmp = name.starts_with(".step-") && name.ends_with(".tmp");
        let old = name.starts_with("step-") && name != keep && Some(name.as_str()) != previous;
        if stale_tmp || old {
            fs::remove_dir_all(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
        }
    }
    Ok(())
}

/// Reads a checkpoint's state.
pub fn load_state(dir: &Path) -> Result<State> {
    let path = dir.join("state.json");
    let text = fs::read(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_slice(&text)
        .map_err(|e| Error::data(&path, format!("invalid checkpoint state: {e}")))
}

/// Loads one network of a checkpoint into `model`.
pub fn restore_network(dir: &Path, model: &mut M2t, which: Which) -> Result<()> {
    let file = match which {
        Which::Student => "student.safetensors",
        Which::Teacher => "teacher.safetensors",
    };
    let (store, buffers) = model.network_mut(which);
    Ok(import(&dir.join(file), store, buffers, Part::Whole)?)
}

/// The optimiser velocity saved for `store`.
pub fn load_velocity(dir: &Path, store: &ParamStore) -> Result<Vec<f32>> {
    let path = optimizer_file(dir);
    let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::data(&path, format!("not a valid safetensors file: {e}")))?;
    let view = file
        .tensor("velocity")
        .map_err(|_| Error::data(&path, "no `velocity` tensor"))?;
    if view.dtype() != Dtype::F32 || view.shape() != [store.flat_len()] {
        return Err(Error::data(
            &path,
            format!(
                "velocity is {:?} {:?}, expected F32 [{}]: was this checkpoint made with another configuration?",
                view.dtype(),
                view.shape(),
                store.flat_len()
            ),
        ));
    }
    Ok(f32_values(&view))
}
