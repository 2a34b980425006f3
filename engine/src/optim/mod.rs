//! Optimisers and the EMA teacher update, each one pass over the flat buffers
//! (on a GPU, one kernel; LARS two). Optimiser state lives on the store's device.

pub(crate) mod cuda;

use crate::error::{Error, Result};
use crate::params::{ParamStore, write_f32};
use crate::{DType, Scalar, Tensor};
use rayon::prelude::*;

/// Elements per parallel task in the flat-buffer loops.
const GRAIN: usize = 1 << 15;

fn zeros_like_store(store: &ParamStore) -> Result<Tensor> {
    Tensor::zeros([store.flat_len()], DType::F32, store.device())
}

/// A zero word on a GPU store's device: the skip flag of updates the host
/// does not gate (`None` on the CPU).
fn never_skip(store: &ParamStore) -> Result<Option<Tensor>> {
    match store.device().is_gpu() {
        true => Ok(Some(Tensor::zeros([1], DType::F32, store.device())?)),
        false => Ok(None),
    }
}

/// The skip flag a GPU update reads: `skip`, else the optimiser's `never`.
fn gate<'a>(
    store: &ParamStore,
    skip: Option<&'a Tensor>,
    never: &'a Option<Tensor>,
) -> Result<&'a Tensor> {
    match (skip, never) {
        (Some(flag), Some(_)) if flag.device() == store.device() && flag.numel() == 1 => Ok(flag),
        (None, Some(never)) => Ok(never),
        (Some(flag), _) => Err(Error::Param(format!(
            "a skip flag of {} word(s) on {} cannot gate an update of parameters on {} (GPU updates only)",
            flag.numel(),
            flag.device(),
            store.device()
        ))),
        (None, None) => Err(Error::Param("no skip flag on the CPU".into())),
    }
}

/// Fails unless `velocity` was made for a store of `store`'s layout length,
/// on its device.
fn check_matches(velocity: &Tensor, store: &ParamStore) -> Result<()> {
    if velocity.numel() != store.flat_len() {
        return Err(Error::Param(format!(
            "optimiser state has {} elements but the store has {}; was it built for another store?",
            velocity.numel(),
            store.flat_len()
        )));
    }
    if velocity.device() != store.device() {
        return Err(Error::Param(format!(
            "optimiser state is on {} but the store is on {}",
            velocity.device(),
            store.device()
        )));
    }
    Ok(())
}

/// Overwrites a whole velocity buffer (any device) from host values.
fn set_velocity(velocity: &mut Tensor, data: &[f32]) -> Result<()> {
    if data.len() != velocity.numel() {
        return Err(Error::Param(format!(
            "{} velocity values for optimiser state of {}",
            data.len(),
            velocity.numel()
        )));
    }
    write_f32(velocity, 0, data)
}

/// SGD with momentum and L2 weight decay, PyTorch's rule:
/// `v ← μ·v + (g + wd·w)`, `w ← w − lr·v`.
#[derive(Debug)]
pub struct Sgd {
    /// Momentum μ.
    pub momentum: f32,
    /// Weight decay, applied to every parameter.
    pub weight_decay: f32,
    velocity: Tensor,
    never: Option<Tensor>,
}

impl Sgd {
    /// An optimiser for `store` with zeroed velocity.
    pub fn new(store: &ParamStore, momentum: f32, weight_decay: f32) -> Result<Self> {
        Ok(Sgd {
            momentum,
            weight_decay,
            velocity: zeros_like_store(store)?,
            never: never_skip(store)?,
        })
    }

    /// The velocity buffer (same layout as the store), for checkpoints.
    pub fn velocity(&self) -> &Tensor {
        &self.velocity
    }

    /// Overwrites the velocity buffer from host values on any device, e.g.
    /// when resuming.
    pub fn set_velocity(&mut self, data: &[f32]) -> Result<()> {
        set_velocity(&mut self.velocity, data)
    }

    /// One update with learning rate `lr` from the store's accumulated gradients.
    pub fn step(&mut self, store: &mut ParamStore, lr: impl Into<Scalar>) -> Result<()> {
        self.step_unless(store, lr, None)
    }

    /// [`Sgd::step`], which on a GPU the device flag `skip` (from
    /// [`crate::scaler::DeviceScaler::skip_flag`]) cancels when set, without
    /// the host reading it. A flag is refused on the CPU.
    pub fn step_unless(
        &mut self,
        store: &mut ParamStore,
        lr: impl Into<Scalar>,
        skip: Option<&Tensor>,
    ) -> Result<()> {
        check_matches(&self.velocity, store)?;
        let (mu, wd) = (self.momentum, self.weight_decay);
        let lr = lr.into();
        if store.device().is_gpu() || skip.is_some() {
            let skip = gate(store, skip, &self.never)?;
            let (w, g) = store.gpu_values_and_grads()?;
            self.velocity.gpu_mut()?;
            return cuda::sgd_step(w, g, &self.velocity, &lr, (mu, wd), skip);
        }
        let lr = lr.value() as f32;
        let (w, g) = store.values_and_grads_mut()?;
        let v = self.velocity.slice_mut::<f32>()?;
        w.par_chunks_mut(GRAIN)
            .zip(g.par_chunks(GRAIN).zip(v.par_chunks_mut(GRAIN)))
            .for_each(|(w, (g, v))| {
                for ((w, &g), v) in w.iter_mut().zip(g).zip(v) {
                    *v = mu * *v + (g + wd * *w);
                    *w -= lr * *v;
                }
            });
        Ok(())
    }
}

/// LARS (m2t-method.md §4): per parameter tensor,
/// `local = η·‖w‖/(‖g‖ + wd·‖w‖)` (1 for biases and BN parameters, or when a
/// norm is zero), `v ← μ·v + lr·local·(g + wd·w)`, `w ← w − v`.
#[derive(Debug)]
pub struct Lars {
    /// Trust coefficient η.
    pub eta: f32,
    /// Momentum μ.
    pub momentum: f32,
    /// Weight decay, applied to every parameter.
    pub weight_decay: f32,
    velocity: Tensor,
    /// The chunk table of the GPU kernels, for a store on a GPU.
    table: Option<cuda::LarsTable>,
    never: Option<Tensor>,
}

impl Lars {
    /// An optimiser for `store` with zeroed velocity (and, on a GPU, its
    /// per-tensor chunk table uploaded once).
    pub fn new(store: &ParamStore, eta: f32, momentum: f32, weight_decay: f32) -> Result<Self> {
        let table = if store.device().is_gpu() {
            Some(cuda::LarsTable::new(store)?)
        } else {
            None
        };
        Ok(Lars {
            eta,
            momentum,
            weight_decay,
            velocity: zeros_like_store(store)?,
            table,
            never: never_skip(store)?,
        })
    }

    /// The velocity buffer (same layout as the store), for checkpoints.
    pub fn velocity(&self) -> &Tensor {
        &self.velocity
    }

    /// Overwrites the velocity buffer from host values on any device, e.g.
    /// when resuming.
    pub fn set_velocity(&mut self, data: &[f32]) -> Result<()> {
        set_velocity(&mut self.velocity, data)
    }

    /// One update with learning rate `lr` from the store's accumulated gradients.
    pub fn step(&mut self, store: &mut ParamStore, lr: impl Into<Scalar>) -> Result<()> {
        self.step_unless(store, lr, None)
    }

    /// [`Lars::step`], cancelled on a GPU by the device flag `skip` (see
    /// [`Sgd::step_unless`]).
    pub fn step_unless(
        &mut self,
        store: &mut ParamStore,
        lr: impl Into<Scalar>,
        skip: Option<&Tensor>,
    ) -> Result<()> {
        check_matches(&self.velocity, store)?;
        let lr = lr.into();
        if let Some(table) = &self.table {
            table.check_layout(store)?;
            let skip = gate(store, skip, &self.never)?;
            let (w, g) = store.gpu_values_and_grads()?;
            self.velocity.gpu_mut()?;
            let hyper = (self.eta, self.momentum, self.weight_decay);
            return table.step((w, g, &self.velocity), &lr, hyper, skip);
        }
        if skip.is_some() {
            gate(store, skip, &self.never)?;
        }
        let lr = lr.value() as f32;
        let (eta, mu, wd) = (self.eta as f64, self.momentum, self.weight_decay);
        let ranges: Vec<_> = store
            .infos()
            .iter()
            .map(|i| (i.offset..i.offset + i.shape.numel(), i.kind.lars_adapted()))
            .collect();
        let (w, g) = store.values_and_grads_mut()?;
        let v = self.velocity.slice_mut::<f32>()?;
        let norm = |x: &[f32]| x.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
        let local: Vec<f32> = ranges
            .par_iter()
            .map(|(r, adapted)| {
                let (wn, gn) = (norm(&w[r.clone()]), norm(&g[r.clone()]));
                if *adapted && wn > 0.0 && gn > 0.0 {
                    (eta * wn / (gn + wd as f64 * wn)) as f32
                } else {
                    1.0
                }
            })
            .collect();
        for ((r, _), local) in ranges.into_iter().zip(local) {
            let scale = lr * local;
            for ((w, &g), v) in w[r.clone()].iter_mut().zip(&g[r.clone()]).zip(&mut v[r]) {
                *v = mu * *v + scale * (g + wd * *w);
                *w -= *v;
            }
        }
        Ok(())
    }
}

/// The EMA teacher update `t ← m·t + (1 − m)·s` over the teacher's parameters,
/// which must be a layout prefix of the student's (the predictor comes last in
/// the student and has no twin). `m = 0` copies the student exactly.
pub fn ema_update(
    teacher: &mut ParamStore,
    student: &ParamStore,
    m: impl Into<Scalar>,
) -> Result<()> {
    teacher.check_prefix_of(student)?;
    let m = m.into();
    if teacher.device().is_gpu() {
        let t = teacher.gpu_values_and_grads()?.0;
        return cuda::ema_update(t, student.values(), &m);
    }
    let m = m.value() as f32;
    let n = teacher.flat_len();
    let s = &student.values().as_slice::<f32>()?[..n];
    let t = teacher.values_mut()?;
    if m == 0.0 {
        // An exact copy, even of a teacher holding non-finite values.
        t.copy_from_slice(s);
        return Ok(());
    }
    t.par_chunks_mut(GRAIN)
        .zip(s.par_chunks(GRAIN))
        .for_each(|(t, s)| {
            for (t, &s) in t.iter_mut().zip(s) {
                *t = m * *t + (1.0 - m) * s;
            }
        });
    Ok(())
}
