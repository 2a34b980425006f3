//! Run checkpoints: `checkpoints/step-NNNNNNN/` holds the student and teacher
//! (whole networks with BN buffers, PyTorch names), the optimiser state and a
//! JSON state; `checkpoints/latest` names the newest complete one. Each
//! checkpoint is written into a temporary folder and renamed into place, and
//! `latest` is replaced atomically, so a crash at any moment leaves the previous
//! checkpoint usable. The previous checkpoint is kept; older ones are removed.

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

/// The checkpoint folder of a run folder, or the folder itself if it is a checkpoint.
pub fn locate(path: &Path) -> Result<PathBuf> {
    if path.join("state.json").is_file() {
        return Ok(path.to_path_buf());
    }
    let latest = path.join("checkpoints").join("latest");
    let name = fs::read_to_string(&latest).map_err(|_| {
        Error::Usage(format!("{}: no checkpoint here (expected a run folder with checkpoints/latest, or a checkpoint folder with state.json)", path.display()))
    })?;
    let name = name.trim();
    // A plain `step-N` name: `latest` must not lead out of the run folder.
    if !name.starts_with("step-") || name.contains(['/', '\\']) {
        return Err(Error::data(
            &latest,
            format!("names {name:?}, not a checkpoint of this run (step-NNNNNNN)"),
        ));
    }
    let dir = path.join("checkpoints").join(name);
    if dir.join("state.json").is_file() {
        Ok(dir)
    } else {
        Err(Error::data(
            &dir,
            "checkpoints/latest names a checkpoint that is missing or incomplete",
        ))
    }
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
    }
    let host = velocity.to_vec::<f32>()?;
    let data: &[u8] = bytemuck::cast_slice(&host);
    let view = TensorView::new(Dtype::F32, vec![velocity.numel()], data)
        .map_err(|e| Error::data(&tmp, e.to_string()))?;
    let bytes = safetensors::serialize([("velocity", view)], None)
        .map_err(|e| Error::data(&tmp, e.to_string()))?;
    write_atomic(&optimizer_file(&tmp), &bytes)?;
    let json = serde_json::to_vec_pretty(state).map_err(|e| Error::data(&tmp, e.to_string()))?;
    write_atomic(&tmp.join("state.json"), &json)?;
    write_atomic(&config_file(&tmp), config.as_bytes())?;

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
