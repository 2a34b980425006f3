//! Network weights as safetensors with PyTorch's names and layouts. A backbone
//! export loads into `torchvision.models.resnetXX()` with
//! `load_state_dict(..., strict=False)` (only `fc.*` and `num_batches_tracked`
//! missing), and torchvision weights can start a run here. Whole-network files
//! add the heads under `projector.*` / `predictor.*`, as an
//! `nn.Sequential(Linear, BatchNorm1d, ReLU, Linear)` would name them.
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

/// Which tensors of a network a file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The ResNet backbone only (what torchvision loads).
    Backbone,
    /// Every parameter and BN buffer, heads included.
    Whole,
}

impl Part {
    fn includes(self, name: &str) -> bool {
        self == Part::Whole || !(name.starts_with("projector.") || name.starts_with("predictor."))
    }
}

/// Tensors torchvision has that a backbone here does not, and may be ignored.
fn ignorable(name: &str) -> bool {
    name.starts_with("fc.") || name.ends_with(".num_batches_tracked")
}

/// KRSC → OIHW for rank-4 weights (the engine's layout to PyTorch's); other
/// shapes unchanged. Returns the PyTorch shape and data.
pub fn to_torch_layout(shape: &[usize], data: &[f32]) -> (Vec<usize>, Vec<f32>) {
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

/// OIHW → KRSC for rank-4 weights, given the PyTorch shape; other shapes unchanged.
pub fn from_torch_layout(oihw: &[usize], data: &[f32]) -> Vec<f32> {
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

/// The tensors of `part` under PyTorch's names, in PyTorch's layout, f32.
fn torch_tensors(
    store: &ParamStore,
    buffers: &BnBuffers,
    part: Part,
) -> Result<BTreeMap<String, TorchTensor>> {
    let mut out = BTreeMap::new();
    for id in store.ids() {
        let info = store.info(id);
        if part.includes(&info.name) {
            let value = store.value(id);
            out.insert(
                info.name.clone(),
                to_torch_layout(info.shape.dims(), &value.to_vec::<f32>()?),
            );
        }
    }
    for i in 0..buffers.len() {
        if part.includes(buffers.name(i)) {
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

/// The elements of a little-endian f32 safetensors tensor (the file's bytes
/// need not be aligned for f32).
pub fn f32_values(view: &TensorView) -> Vec<f32> {
    view.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
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
    // A leftover of a crash is removed (a link itself, never its target), and
    // the file is made anew, never opened through a link someone put there.
    let _ = fs::remove_file(&tmp);
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        // A full disk must not leave a partial file behind.
        let _ = fs::remove_file(&tmp);
        return Err(io(e));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Persist the rename itself; not every filesystem lets a directory be synced.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Exports `part` of a network (its parameters `store` and BN statistics
/// `buffers`) to `path`: safetensors, f32, PyTorch names and OIHW convolutions.
pub fn export(path: &Path, store: &ParamStore, buffers: &BnBuffers, part: Part) -> Result<()> {
    write_atomic(path, &export_bytes(store, buffers, part)?)
}

/// The safetensors bytes [`export`] writes, for a caller that writes them itself.
pub fn export_bytes(store: &ParamStore, buffers: &BnBuffers, part: Part) -> Result<Vec<u8>> {
    let tensors = torch_tensors(store, buffers, part)?;
    let views = tensors
        .iter()
        .map(|(name, (shape, data))| {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(data))
                .map_err(|e| Error::Config(format!("{name}: {e}")))?;
            Ok((name.clone(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, None).map_err(|e| Error::Config(e.to_string()))
}

/// Imports `part` of a network from a PyTorch-named safetensors file into
/// `store`/`buffers`. Every missing, unexpected, mis-shaped or non-f32 tensor is
/// listed in one [`Error::Mismatch`]; nothing is changed unless all match.
/// torchvision's `fc.*` and `num_batches_tracked` are ignored, and so are the
/// heads when importing only the backbone.
pub fn import(
    path: &Path,
    store: &mut ParamStore,
    buffers: &mut BnBuffers,
    part: Part,
) -> Result<()> {
    let bytes = fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| Error::Format {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let expected = torch_tensors(store, buffers, part)?;
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
            let data = f32_values(&view);
            loaded.insert(name.clone(), from_torch_layout(shape, &data));
        }
    }
    let known: HashSet<&String> = expected.keys().collect();
    let mut unexpected: Vec<&str> = file
        .names()
        .into_iter()
        .filter(|n| !known.contains(&n.to_string()) && !ignorable(n) && part.includes(n))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_planted_at_the_temporary_name_is_not_written_through() {
        let dir = std::env::temp_dir().join(format!("nets-write-atomic-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(".out.tmp")).unwrap();
        write_atomic(&dir.join("out"), b"new").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::read(dir.join("out")).unwrap(), b"new");
        assert!(!dir.join(".out.tmp").exists());
        // A failed write leaves no temporary file.
        assert!(write_atomic(&dir.join("missing/out"), b"x").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
