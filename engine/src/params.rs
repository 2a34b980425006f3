//! Flat parameter storage: every parameter of a network is a named view into
//! one f32 master buffer, and its gradient a view into a second buffer with the
//! same offsets, so zero-grad, the optimiser and the EMA are single loops (or,
//! on a GPU, single kernels) over contiguous memory. A store is built on the
//! host and moved to a GPU with [`ParamStore::to_device`].

use crate::error::{Error, Result};
use crate::tape::{Gradients, Tape, Var};
use crate::{DType, Device, Shape, Tensor};
use rayon::prelude::*;
use std::collections::HashMap;
use std::ops::Range;

/// Offsets are rounded up to this many elements (256 bytes), so views keep the
/// buffer's alignment for vector loads (and device buffers' 256-byte alignment).
const ALIGN: usize = 64;

/// What a parameter is, which decides how optimisers treat it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamKind {
    /// A convolution or linear weight.
    Weight,
    /// A bias.
    Bias,
    /// A batch-norm scale γ.
    BnScale,
    /// A batch-norm shift β.
    BnShift,
}

impl ParamKind {
    /// True if LARS applies its trust ratio; biases and BN parameters are
    /// excluded (they still get weight decay).
    pub fn lars_adapted(self) -> bool {
        self == ParamKind::Weight
    }
}

/// Name, shape, kind and place of one parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamInfo {
    /// Unique name, e.g. `layer1.0.conv1.weight`.
    pub name: String,
    /// Shape of the view.
    pub shape: Shape,
    /// How optimisers treat it.
    pub kind: ParamKind,
    /// First element in the flat buffers.
    pub offset: usize,
}

/// Handle of one parameter in the store that issued it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamId(usize);

/// Collects parameters (name, shape, kind, initial values) before the flat
/// buffers are allocated.
#[derive(Debug, Default)]
pub struct ParamStoreBuilder {
    values: Vec<f32>,
    infos: Vec<ParamInfo>,
    index: HashMap<String, usize>,
}

impl ParamStoreBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a parameter with its initial values; fails on a repeated name or a
    /// value count that does not fill `shape`.
    pub fn add(
        &mut self,
        name: impl Into<String>,
        shape: impl Into<Shape>,
        kind: ParamKind,
        init: Vec<f32>,
    ) -> Result<ParamId> {
        let (name, shape) = (name.into(), shape.into());
        if init.len() != shape.numel() {
            return Err(Error::Param(format!(
                "{name}: {} initial values for shape {shape}",
                init.len()
            )));
        }
        if self.index.contains_key(&name) {
            return Err(Error::Param(format!("{name} is declared twice")));
        }
        let offset = self.values.len().next_multiple_of(ALIGN);
        self.values.resize(offset, 0.0);
        self.values.extend(init);
        self.index.insert(name.clone(), self.infos.len());
        self.infos.push(ParamInfo {
            name,
            shape,
            kind,
            offset,
        });
        Ok(ParamId(self.infos.len() - 1))
    }

    /// Allocates the value and gradient buffers (gradients zeroed).
    pub fn build(mut self) -> Result<ParamStore> {
        let len = self.values.len().next_multiple_of(ALIGN);
        self.values.resize(len, 0.0);
        Ok(ParamStore {
            values: Tensor::from_vec(self.values, [len])?,
            grads: Tensor::zeros([len], DType::F32, Device::Cpu)?,
            infos: self.infos,
            index: self.index,
        })
    }
}

/// A network's parameters in one flat f32 buffer, with gradients alongside.
#[derive(Debug)]
pub struct ParamStore {
    values: Tensor,
    grads: Tensor,
    infos: Vec<ParamInfo>,
    index: HashMap<String, usize>,
}

impl ParamStore {
    /// Every parameter, in declaration order.
    pub fn infos(&self) -> &[ParamInfo] {
        &self.infos
    }

    /// The parameter handles, in declaration order.
    pub fn ids(&self) -> impl Iterator<Item = ParamId> + use<> {
        (0..self.infos.len()).map(ParamId)
    }

    /// One parameter's description.
    pub fn info(&self, id: ParamId) -> &ParamInfo {
        &self.infos[id.0]
    }

    /// Looks a parameter up by name.
    pub fn find(&self, name: &str) -> Option<ParamId> {
        self.index.get(name).copied().map(ParamId)
    }

    /// Number of trainable scalars (padding excluded).
    pub fn num_params(&self) -> usize {
        self.infos.iter().map(|i| i.shape.numel()).sum()
    }

    /// Length of the flat buffers, padding included.
    pub fn flat_len(&self) -> usize {
        self.values.numel()
    }

    /// The device holding the buffers.
    pub fn device(&self) -> Device {
        self.values.device()
    }

    /// The flat value buffer.
    pub fn values(&self) -> &Tensor {
        &self.values
    }

    /// The flat gradient buffer.
    pub fn grads(&self) -> &Tensor {
        &self.grads
    }

    /// A parameter's values (a view sharing the flat buffer).
    pub fn value(&self, id: ParamId) -> Tensor {
        let i = &self.infos[id.0];
        self.values.view(i.offset, i.shape.clone())
    }

    /// A parameter's accumulated gradient (a view sharing the flat buffer).
    pub fn grad(&self, id: ParamId) -> Tensor {
        let i = &self.infos[id.0];
        self.grads.view(i.offset, i.shape.clone())
    }

    /// A copy of the store on `device` (values and gradients, same layout),
    /// never sharing memory with this one.
    pub fn to_device(&self, device: Device) -> Result<ParamStore> {
        Ok(ParamStore {
            values: fresh_copy(&self.values, device)?,
            grads: fresh_copy(&self.grads, device)?,
            infos: self.infos.clone(),
            index: self.index.clone(),
        })
    }

    /// The whole value buffer, writable on the host (fails while views are
    /// alive, and on a GPU store: use [`Self::set`] there).
    pub fn values_mut(&mut self) -> Result<&mut [f32]> {
        if self.device().is_gpu() {
            return Err(Error::Device {
                op: "ParamStore::values_mut (host access; use set, or to_device(Device::Cpu))",
                device: self.device(),
            });
        }
        self.values.slice_mut::<f32>()
    }

    /// On a GPU store: the value buffer, checked writable (no live views),
    /// and the gradient buffer, for the optimiser and EMA kernels.
    pub(crate) fn gpu_values_and_grads(&mut self) -> Result<(&Tensor, &Tensor)> {
        if self.values.gpu_mut()?.is_none() {
            return Err(Error::Device {
                op: "GPU parameter update (host store)",
                device: self.device(),
            });
        }
        Ok((&self.values, &self.grads))
    }

    /// Value buffer (writable) and gradient buffer together, for optimisers.
    pub(crate) fn values_and_grads_mut(&mut self) -> Result<(&mut [f32], &[f32])> {
        let grads = self.grads.as_slice::<f32>()?;
        Ok((self.values.slice_mut::<f32>()?, grads))
    }

    /// The gradient buffer, for in-place passes over it (loss unscaling).
    pub(crate) fn grads_mut(&mut self) -> &mut Tensor {
        &mut self.grads
    }

    /// Overwrites one parameter's values.
    pub fn set(&mut self, id: ParamId, data: &[f32]) -> Result<()> {
        let i = &self.infos[id.0];
        if data.len() != i.shape.numel() {
            return Err(Error::Param(format!(
                "{}: {} values for shape {}",
                i.name,
                data.len(),
                i.shape
            )));
        }
        write_f32(&mut self.values, i.offset, data)
    }

    /// The whole value buffer cast to `dtype` in one pass (one kernel on a
    /// GPU): the 16-bit working weights of mixed precision, at the same
    /// offsets as the f32 masters. For f32 it is the value buffer itself
    /// (shared, so updates fail while it is alive).
    pub fn cast_values(&self, dtype: DType) -> Result<Tensor> {
        self.values.to_dtype(dtype)
    }

    /// Puts the parameters on `tape` for mixed-precision compute in `dtype`:
    /// weights and biases as views of one [`Self::cast_values`] copy (a single
    /// cast), batch-norm γ and β as f32 views (normalisation runs in f32).
    /// [`Self::attach`] for f32. Gradients come back in each variable's dtype;
    /// [`Self::accumulate_grads`] adds them into the f32 gradient buffer.
    pub fn attach_mixed(&self, tape: &mut Tape, dtype: DType) -> Result<ParamVars> {
        if dtype == DType::F32 {
            return Ok(self.attach(tape));
        }
        let flat = self.cast_values(dtype)?;
        Ok(ParamVars(
            self.infos
                .iter()
                .map(|i| match i.kind {
                    ParamKind::BnScale | ParamKind::BnShift => {
                        tape.param(self.values.view(i.offset, i.shape.clone()))
                    }
                    ParamKind::Weight | ParamKind::Bias => {
                        tape.param(flat.view(i.offset, i.shape.clone()))
                    }
                })
                .collect(),
        ))
    }

    /// The L2 norm of the whole gradient buffer, or `None` if any gradient is
    /// NaN or ±∞. One kernel and one 8-byte read-back on a GPU, where the sum
    /// of squares is accumulated in f32 (so gradients beyond ~1e19 read as an
    /// infinite norm); f64 on the host.
    pub fn grad_norm(&self) -> Result<Option<f64>> {
        if self.grads.gpu().is_some() {
            let (sum_sq, finite) = crate::optim::cuda::grad_sum_squares(&self.grads)?;
            return Ok(finite.then(|| (sum_sq as f64).sqrt()));
        }
        let g = self.grads.as_slice::<f32>()?;
        if !g.par_iter().all(|v| v.is_finite()) {
            return Ok(None);
        }
        Ok(Some(
            g.par_iter()
                .map(|&v| (v as f64) * (v as f64))
                .sum::<f64>()
                .sqrt(),
        ))
    }

    /// Queues [`Self::grad_norm`]'s reduction on a GPU store without reading
    /// it back: Σg² (f32) into `out[0]` and, into `out[1]`, the bits of an
    /// i32 that is 1 when a gradient is NaN or ±∞. `out` is two f32 words on
    /// the store's device. Nothing waits, so a captured step may hold it.
    pub fn queue_grad_check(&self, out: &Tensor) -> Result<()> {
        match out.gpu_range() {
            Some((buf, offset, 8)) if self.grads.gpu().is_some() && out.dtype() == DType::F32 => {
                crate::optim::cuda::queue_grad_sum_squares(&self.grads, (buf, offset))
            }
            _ => Err(Error::Param(format!(
                "a queued gradient check writes two f32 words on the store's GPU, not {} {} on {}",
                out.numel(),
                out.dtype(),
                out.device()
            ))),
        }
    }

    /// Puts every parameter on `tape` as a gradient-tracked variable.
    pub fn attach(&self, tape: &mut Tape) -> ParamVars {
        ParamVars(self.ids().map(|id| tape.param(self.value(id))).collect())
    }

    /// Adds the gradients that `grads` holds for `vars` into the gradient buffer,
    /// consuming `vars` so the value buffer is free to be updated afterwards.
    /// Gradients may be f32 or 16-bit (from [`Self::attach_mixed`]); on a GPU
    /// store they must be on its device (one kernel per parameter, no sync).
    pub fn accumulate_grads(&mut self, vars: ParamVars, grads: &Gradients) -> Result<()> {
        self.check_vars(&vars)?;
        for (info, var) in self.infos.iter().zip(&vars.0) {
            if let Some(g) = grads.get(var) {
                Self::check_grad(info, g)?;
            }
        }
        for (i, var) in vars.0.iter().enumerate() {
            if let Some(g) = grads.get(var) {
                self.accumulate_grad(i, g)?;
            }
        }
        Ok(())
    }

    /// The gradient buffer's all-reduce buckets, in the order a backward
    /// pass completes them: ranges of whole parameters of at least
    /// [`crate::comm::BUCKET_ELEMENTS`] (but the last), from the end of the
    /// buffer back. Together they cover it.
    pub fn grad_buckets(&self) -> Vec<Range<usize>> {
        let mut buckets = Vec::new();
        let mut end = self.grads.numel();
        for info in self.infos.iter().rev() {
            if end - info.offset >= crate::comm::BUCKET_ELEMENTS || info.offset == 0 {
                buckets.push(info.offset..end);
                end = info.offset;
            }
        }
        if end > 0 {
            buckets.push(0..end);
        }
        buckets
    }

    /// Backpropagates `loss` (seeded with `seed`) from `tape` into the
    /// gradient buffer, zeroed first, and hands the buffer to `bucket_done`
    /// with each of [`Self::grad_buckets`] as soon as the backward has
    /// completed every parameter in it, so a data-parallel step can average
    /// the last layers' gradients while the first layers' are computed.
    /// `vars` are this store's variables on `tape`.
    pub fn backward_in_buckets(
        &mut self,
        tape: Tape,
        (loss, seed): (&Var, Tensor),
        vars: ParamVars,
        mut bucket_done: impl FnMut(&mut Tensor, Range<usize>) -> Result<()>,
    ) -> Result<()> {
        self.check_vars(&vars)?;
        self.zero_grad()?;
        let buckets = self.grad_buckets();
        let bucket_of: Vec<usize> = self
            .infos
            .iter()
            .map(|i| buckets.iter().position(|b| b.contains(&i.offset)))
            .collect::<Option<_>>()
            .ok_or_else(|| Error::Param("a parameter outside every bucket".into()))?;
        let mut missing = vec![0usize; buckets.len()];
        for &b in &bucket_of {
            missing[b] += 1;
        }
        tape.backward_streaming(loss, seed, &vars.0, |i, g| {
            if let Some(g) = g {
                Self::check_grad(&self.infos[i], &g)?;
                self.accumulate_grad(i, &g)?;
            }
            let b = bucket_of[i];
            missing[b] -= 1;
            if missing[b] == 0 {
                bucket_done(&mut self.grads, buckets[b].clone())?;
            }
            Ok(())
        })?;
        Ok(())
    }

    fn check_vars(&self, vars: &ParamVars) -> Result<()> {
        if vars.0.len() != self.infos.len() {
            return Err(Error::Param(format!(
                "{} variables for a store of {} parameters",
                vars.0.len(),
                self.infos.len()
            )));
        }
        Ok(())
    }

    fn check_grad(info: &ParamInfo, g: &Tensor) -> Result<()> {
        if g.numel() != info.shape.numel() {
            return Err(Error::Param(format!(
                "{}: gradient of shape {} for a parameter of shape {}",
                info.name,
                g.shape(),
                info.shape
            )));
        }
        Ok(())
    }

    /// Adds `g` (f32 or 16-bit, on the store's device) into parameter
    /// `index`'s gradient: one kernel on a GPU, no sync.
    fn accumulate_grad(&mut self, index: usize, g: &Tensor) -> Result<()> {
        let info = &self.infos[index];
        if self.grads.gpu_mut()?.is_some() {
            let acc = self.grads.view(info.offset, info.shape.clone());
            return crate::optim::cuda::accumulate_grad(&acc, g);
        }
        let g = g.to_dtype(DType::F32)?;
        let g = g.as_slice::<f32>()?;
        let offset = info.offset;
        self.grads.slice_mut::<f32>()?[offset..offset + g.len()]
            .iter_mut()
            .zip(g)
            .for_each(|(a, b)| *a += b);
        Ok(())
    }

    /// Sets every gradient to zero.
    pub fn zero_grad(&mut self) -> Result<()> {
        if let Some(g) = self.grads.gpu_mut()? {
            g.gpu.fill_bytes(&g.buf, 0, g.buf.len_bytes(), 0)?;
            return Ok(());
        }
        self.grads.slice_mut::<f32>()?.fill(0.0);
        Ok(())
    }

    /// Fails unless the first `self.infos().len()` parameters of `other` have the
    /// same names, shapes and offsets as this store's (the EMA's twin layout).
    pub fn check_prefix_of(&self, other: &ParamStore) -> Result<()> {
        if other.infos.len() < self.infos.len() {
            return Err(Error::Param(format!(
                "store of {} parameters cannot be a prefix of one with {}",
                self.infos.len(),
                other.infos.len()
            )));
        }
        match self.infos.iter().zip(&other.infos).find(|(a, b)| a != b) {
            Some((a, b)) => Err(Error::Param(format!(
                "layouts differ: {} {} at {} vs {} {} at {}",
                a.name, a.shape, a.offset, b.name, b.shape, b.offset
            ))),
            None => Ok(()),
        }
    }
}

/// A copy of `t` on `device` in memory of its own (also when it is already there).
fn fresh_copy(t: &Tensor, device: Device) -> Result<Tensor> {
    if t.device() != device {
        // Crossing devices always lands in a new buffer.
        return t.to_device(device);
    }
    match t.gpu() {
        Some(g) => {
            let copy = Tensor::gpu_empty(g, t.shape().clone(), t.dtype())?;
            let bytes = t.numel() * t.dtype().size_in_bytes();
            g.gpu
                .copy(&g.buf, 0, &copy.gpu().expect("on the GPU").buf, 0, bytes)?;
            Ok(copy)
        }
        None => Tensor::from_vec(t.to_vec::<f32>()?, t.shape().clone()),
    }
}

/// Writes `data` into an f32 tensor from element `offset`, on any device
/// (fails while other references to its storage are alive). `t` is a whole
/// buffer, not a view: the store's flat buffers and optimiser state.
pub(crate) fn write_f32(t: &mut Tensor, offset: usize, data: &[f32]) -> Result<()> {
    if offset + data.len() > t.numel() {
        return Err(Error::Param(format!(
            "{} values at {offset} overflow a buffer of {}",
            data.len(),
            t.numel()
        )));
    }
    if let Some(g) = t.gpu_mut()? {
        g.gpu
            .write(&g.buf, offset * 4, bytemuck::cast_slice(data))?;
        return Ok(());
    }
    t.slice_mut::<f32>()?[offset..offset + data.len()].copy_from_slice(data);
    Ok(())
}

/// The tape variables of a store's parameters, from [`ParamStore::attach`].
#[derive(Debug)]
pub struct ParamVars(Vec<Var>);

impl ParamVars {
    /// Wraps variables in declaration order, e.g. f64 or 16-bit copies of a
    /// store's parameters made by the caller.
    pub fn from_vars(vars: Vec<Var>) -> Self {
        ParamVars(vars)
    }

    /// The variable of parameter `id`.
    ///
    /// # Panics
    /// If `id` was issued by a different store.
    pub fn get(&self, id: ParamId) -> &Var {
        &self.0[id.0]
    }
}
