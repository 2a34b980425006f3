//! Numbers that change every step — the learning rate, the EMA momentum,
//! Momentum BN's β — as the kernels that use them read them.
//!
//! A CUDA graph replays its kernels with the arguments they were captured
//! with. So on a GPU these numbers live in device memory, written once per
//! step before the work is queued (or a graph replayed), and kernels read
//! them from there.

use crate::tensor::GpuBuffer;
use crate::{DType, Device, Error, Result, Tensor};

/// A number for one step: its value, and on a GPU the device cell (f32)
/// kernels read it from.
#[derive(Clone, Debug)]
pub struct Scalar {
    value: f64,
    cell: Option<Tensor>,
}

impl Scalar {
    /// The value.
    pub fn value(&self) -> f64 {
        self.value
    }

    /// Whether kernels read this number from a cell written each step (from
    /// [`StepScalars`]), rather than a constant.
    pub fn is_per_step(&self) -> bool {
        self.cell.is_some()
    }

    /// The device cell kernels read this number from (`None` for a constant
    /// or on the CPU), e.g. for a kernel outside the engine.
    pub fn device_cell(&self) -> Option<&Tensor> {
        self.cell.as_ref()
    }

    /// The f32 cell on `g`'s device that holds the value: this scalar's own,
    /// or a new one (one 4-byte copy, refused during a graph capture).
    pub(crate) fn cell(&self, g: &GpuBuffer) -> Result<Tensor> {
        match &self.cell {
            Some(cell) if cell.device() == g.device => Ok(cell.clone()),
            Some(cell) => Err(Error::Device {
                op: "step scalar (cell on another device)",
                device: cell.device(),
            }),
            None => Tensor::from_vec(vec![self.value as f32], [1])?.to_device(g.device),
        }
    }
}

impl From<f64> for Scalar {
    fn from(value: f64) -> Self {
        Scalar { value, cell: None }
    }
}

impl From<&Scalar> for Scalar {
    fn from(s: &Scalar) -> Self {
        s.clone()
    }
}

impl From<f32> for Scalar {
    fn from(value: f32) -> Self {
        Scalar::from(value as f64)
    }
}

/// The device cells of one step's numbers, written together in one copy.
/// On the CPU there are no cells: the scalars are plain values. Clones
/// share the cells.
#[derive(Clone, Debug)]
pub struct StepScalars {
    cells: Option<Tensor>,
    count: usize,
}

impl StepScalars {
    /// `count` cells on `device`.
    pub fn new(device: Device, count: usize) -> Result<Self> {
        let cells = match device {
            Device::Cpu => None,
            d => Some(Tensor::zeros([count], DType::F32, d)?),
        };
        Ok(StepScalars { cells, count })
    }

    /// Whether `other` is (a clone of) these device cells.
    pub fn same_cells(&self, other: &StepScalars) -> bool {
        matches!((&self.cells, &other.cells), (Some(a), Some(b)) if a.shares_storage(b))
    }

    /// Writes this step's values (one host-to-device copy on a GPU) and
    /// returns them as scalars, in order. The cells keep their addresses, so
    /// a graph captured with earlier scalars reads these values — and so do
    /// scalars kept from an earlier call, whose [`Scalar::value`] is then
    /// out of date: use a step's scalars for that step only.
    pub fn set(&self, values: &[f64]) -> Result<Vec<Scalar>> {
        if values.len() != self.count {
            return Err(Error::Param(format!(
                "{} step values for {} cells",
                values.len(),
                self.count
            )));
        }
        let Some(cells) = &self.cells else {
            return Ok(values.iter().map(|&v| Scalar::from(v)).collect());
        };
        let g = cells.gpu().expect("cells live on a GPU");
        let bits: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        // Written in place, whoever else holds the cells: a captured graph
        // reads them by address.
        g.gpu.write(&g.buf, 0, bytemuck::cast_slice(&bits))?;
        Ok(values
            .iter()
            .enumerate()
            .map(|(i, &value)| Scalar {
                value,
                cell: Some(cells.view(i, [1].into())),
            })
            .collect())
    }
}
