//! Backbone weights as safetensors with torchvision's names and layouts, so
//! `torchvision.models.resnetXX().load_state_dict(..., strict=False)` loads an
//! exported file (only `fc.*` and `num_batches_tracked` missing), and
//! torchvision weights can start a run here.
//!
//! Inside the engine convolution weights are KRSC; in the file they are OIHW.
//! BN buffers are written as `{layer}.running_mean` / `{layer}.running_var`
//! (the teacher's are its Momentum-BN history).

use crate::layers::BnBuffers;
use crate::{Error, Result};
use engine::ParamStore;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::Path;

/// Heads are not part of a torchvision backbone.
fn is_backbone(name: &str) -> bool {
    !(name.starts_with("projector.") || name.starts_with("predictor."))
}

/// Tensors torchvision has that a backbone here does not, and may be ignored.
fn ignorable(name: &str) -> bool {
    name.starts_with("fc.") || name.ends_with(".num_batches_tracked")
}

/// KRSC → OIHW for rank-4 weights; other shapes unchanged.
fn to_torch_layout(shape: &[usize], data: &[f32]) -> (Vec<usize>, Vec<f32>) {
    let &[k, r, s, c] = shape else {
        return (shape.to_vec(), data.to_vec());
    };
    let mut out = vec![0.0; data.len()];
    for (i, &v) in data.iter().enumerate() {
        let (kk, rr, ss, cc) = (i / (r * s * c), i / (s * c) % r, i / c % s, i % c);
        out[((kk * c + cc) * r + rr) * s + ss] = v;
    }
    (vec![k, c, r, s], out)
}

/// OIHW → KRSC for rank-4 weights; other shapes unchanged.
fn from_torch_layout(oihw: &[usize], data: &[f32]) -> Vec<f32> {
    let &[_, c, r, s] = oihw else {
        return data.to_vec();
    };
    let mut out = vec![0.0; data.len()];
    for (i, &v) in data.iter().enumerate() {
        let (kk, cc, rr, ss) = (i / (c * r * s), i / (r * s) % c, i / s % r, i % s);
        out[((kk * r + rr) * s + ss) * c + cc] = v;
    }
    out
}

/// A tensor in torchvision's layout: shape and f32 data.
type TorchTensor = (Vec<usize>, Vec<f32>);

/// The backbone's tensors under torchvision's names, torchvision layout, f32.
fn backbone_tensors(
    store: &ParamStore,
    buffers: &BnBuffers,
) -> Result<BTreeMap<String, TorchTensor>> {
    let mut out = BTreeMap::new();
    for id in store.ids() {
        let info = store.info(id);
        if is_backbone(&info.name) {
            let value = store.value(id);
            out.insert(
                info.name.clone(),
                to_torch_layout(info.shape.dims(), value.as_slice::<f32>()?),
            );
        }
    }
    for i in 0..buffers.len() {
        if is_backbone(buffers.name(i)) {
            for (suffix, t) in [
                ("running_mean", buffers.mean(i)),
                ("running_var", buffers.var(i)),
            ] {
                out.insert(
                    format!("{}.{suffix}", buffers.name(i)),
                    (t.dims().to_vec(), t.to_vec::<f32>()?),
                );
            }
        }
    }
    Ok(out)
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, flushed to
/// disk, then renamed over the target, so a crash leaves the old file or the new.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::Config(format!("{} is not a file path", path.display())))?;
    let tmp = path.with_file_name(format!(".{}.tmp", file_name.to_string_lossy()));
    let mut f = fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Persist the rename itself; not every filesystem lets a directory be synced.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Exports the backbone of `store`/`buffers` to `path` (safetensors, f32,
/// torchvision names and OIHW layout).
pub fn export_backbone(path: &Path, store: &ParamStore, buffers: &BnBuffers) -> Result<()> {
    let tensors = backbone_tensors(store, buffers)?;
    let views = tensors
        .iter()
        .map(|(name, (shape, data))| {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(data))
                .map_err(|e| Error::Config(format!("{name}: {e}")))?;
            Ok((name.clone(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, None).map_err(|e| Error::Format {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    write_atomic(path, &bytes)
}

/// Imports backbone weights from a torchvision-named safetensors file into
/// `store`/`buffers`. Every missing, unexpected, mis-shaped or non-f32 tensor is
/// listed in one [`Error::Mismatch`]; nothing is changed unless all match.
pub fn import_backbone(path: &Path, store: &mut ParamStore, buffers: &mut BnBuffers) -> Result<()> {
    let bytes = fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| Error::Format {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let expected = backbone_tensors(store, buffers)?;
    let mut problems = Vec::new();
    let mut loaded: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for (name, (shape, _)) in &expected {
        let view = match file.tensor(name) {
            Ok(v) => v,
            Err(_) => {
                problems.push(format!("missing tensor {name} (expected f32 {shape:?})"));
                continue;
            }
        };
        if view.dtype() != Dtype::F32 {
            problems.push(format!("{name}: dtype {:?}, expected F32", view.dtype()));
        } else if view.shape() != shape.as_slice() {
            problems.push(format!(
                "{name}: shape {:?}, expected {shape:?}",
                view.shape()
            ));
        } else {
            let data: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            loaded.insert(name.clone(), from_torch_layout(shape, &data));
        }
    }
    let known: HashSet<&String> = expected.keys().collect();
    let mut unexpected: Vec<&str> = file
        .names()
        .into_iter()
        .filter(|n| !known.contains(&n.to_string()) && !ignorable(n))
        .collect();
    unexpected.sort();
    problems.extend(unexpected.iter().map(|n| format!("unexpected tensor {n}")));
    if !problems.is_empty() {
        return Err(Error::Mismatch {
            path: path.to_path_buf(),
            problems,
        });
    }
    for id in store.ids().collect::<Vec<_>>() {
        if let Some(data) = loaded.get(&store.info(id).name) {
            store.set(id, data)?;
        }
    }
    for i in 0..buffers.len() {
        let name = buffers.name(i).to_string();
        if let (Some(m), Some(v)) = (
            loaded.get(&format!("{name}.running_mean")),
            loaded.get(&format!("{name}.running_var")),
        ) {
            buffers.set(i, m, v)?;
        }
    }
    Ok(())
}
