//! A whole step's device work captured once as a CUDA graph and replayed in
//! one launch, sparing the thousands of kernel launches of a ResNet step
//! (on the emulator, a recording replayed in order, with the same rules).
//!
//! What a captured step must respect, or the capture fails with a message
//! saying which rule broke:
//! - it only queues device work: no copies to or from the host, no waits;
//! - numbers that change between steps are read from device cells
//!   ([`crate::StepScalars`]), since launch arguments are frozen;
//! - inputs and results live in buffers made before the capture, whose
//!   addresses the graph keeps; what the step allocates it also frees;
//! - cuDNN's algorithm searches and workspace growth happen before it: run
//!   the step once eagerly with the same shapes first.

use crate::{Device, Error, Result};
use kernels::{Gpu, Graph};
use std::sync::Arc;

/// Recorded device work, replayed by [`StepGraph::launch`].
pub struct StepGraph {
    gpu: Arc<Gpu>,
    graph: Graph,
}

impl std::fmt::Debug for StepGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StepGraph({:?})", self.graph)
    }
}

/// Runs `body` with `device` capturing: its device work is recorded, not
/// run. Returns `body`'s result and the graph; if `body` fails, the capture
/// is abandoned and its error returned.
pub fn capture<R, E: From<Error>>(
    device: Device,
    body: impl FnOnce() -> std::result::Result<R, E>,
) -> std::result::Result<(R, StepGraph), E> {
    if device == Device::Cpu {
        return Err(Error::Device {
            op: "graph capture (CUDA devices and the emulator only)",
            device,
        }
        .into());
    }
    let gpu = crate::device::gpu(device)?;
    gpu.begin_capture().map_err(Error::from)?;
    let result = body();
    let graph = gpu.end_capture();
    let r = result?;
    let graph = graph.map_err(Error::from)?;
    Ok((r, StepGraph { gpu, graph }))
}

impl StepGraph {
    /// Queues one replay of the captured work.
    pub fn launch(&self) -> Result<()> {
        Ok(self.gpu.launch_graph(&self.graph)?)
    }
}
