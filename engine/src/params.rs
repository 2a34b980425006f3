//! Flat parameter storage: every parameter of a network is a named view into
//! one f32 master buffer, and its gradient a view into a second buffer with the
//! same offsets, so zero-grad, the optimiser and the EMA are single loops (or,
//! on a GPU, single kernels) over contiguous memory.

use crate::error::{Error, Result};
use crate::tape::{Gradients, Tape, Var};
use crate::{DType, Device, Shape, Tensor};
use std::collections::HashMap;

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

    /// The whole value buffer, writable (fails while views are alive).
    pub fn values_mut(&mut self) -> Result<&mut [f32]> {
        self.values.slice_mut::<f32>()
    }

    /// Value buffer (writable) and gradient buffer together, for optimisers.
    pub(crate) fn values_and_grads_mut(&mut self) -> Result<(&mut [f32], &[f32])> {
        let grads = self.grads.as_slice::<f32>()?;
        Ok((self.values.slice_mut::<f32>()?, grads))
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
        let offset = i.offset;
        self.values.slice_mut::<f32>()?[offset..offset + data.len()].copy_from_slice(data);
        Ok(())
    }

    /// Puts every parameter on `tape` as a gradient-tracked variable.
    pub fn attach(&self, tape: &mut Tape) -> ParamVars {
        ParamVars(self.ids().map(|id| tape.param(self.value(id))).collect())
    }

    /// Adds the gradients that `grads` holds for `vars` into the gradient buffer,
    /// consuming `vars` so the value buffer is free to be updated afterwards.
    pub fn accumulate_grads(&mut self, vars: ParamVars, grads: &Gradients) -> Result<()> {
        if vars.0.len() != self.infos.len() {
            return Err(Error::Param(format!(
                "{} variables for a store of {} parameters",
                vars.0.len(),
                self.infos.len()
            )));
        }
        let buf = self.grads.slice_mut::<f32>()?;
        for (info, var) in self.infos.iter().zip(&vars.0) {
            let Some(g) = grads.get(var) else { continue };
            let g = g.as_slice::<f32>()?;
            buf[info.offset..info.offset + g.len()]
                .iter_mut()
                .zip(g)
                .for_each(|(a, b)| *a += b);
        }
        Ok(())
    }

    /// Sets every gradient to zero.
    pub fn zero_grad(&mut self) -> Result<()> {
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
