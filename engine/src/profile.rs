//! `--profile`: where the time of a run goes — per phase (EMA, teacher
//! forward, student forward/backward, optimiser, data wait), per layer and
//! backward op (the NVTX ranges of [`crate::nvtx`]), and per kernel family
//! (each `kernels/cuda/<family>.cu`, cuDNN and cuBLAS calls). On a GPU the
//! times come from CUDA events on the compute stream, so they are device
//! times; on the CPU (and the emulator) from the host clock.

use crate::Device;
use crate::device::gpu;
use crate::error::Result;
use kernels::{Gpu, Stamp};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// What a timed range is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// One training step, the denominator of the shares.
    Step,
    /// A phase of the step.
    Phase,
    /// A layer, head, or backward op.
    Layer,
}

struct State {
    gpu: Option<Arc<Gpu>>,
    pending: Vec<(String, Kind, Stamp, Stamp)>,
    totals: HashMap<(Kind, String), (u64, f64)>,
    kernels: HashMap<&'static str, (u64, f64)>,
}

static ON: AtomicBool = AtomicBool::new(false);
static STATE: Mutex<Option<State>> = Mutex::new(None);

/// Starts timing on `device` (restarting if already on).
pub fn start(device: Device) -> Result<()> {
    let gpu = if device.is_gpu() {
        Some(gpu(device)?)
    } else {
        None
    };
    if let Some(g) = &gpu {
        g.set_profiling(true);
    }
    *STATE.lock().unwrap() = Some(State {
        gpu,
        pending: Vec::new(),
        totals: HashMap::new(),
        kernels: HashMap::new(),
    });
    ON.store(true, Ordering::Release);
    Ok(())
}

/// Whether timing is on.
pub fn is_on() -> bool {
    ON.load(Ordering::Acquire)
}

/// A stamp on the profiled device's clock, if timing is on.
pub(crate) fn stamp() -> Option<Stamp> {
    if !is_on() {
        return None;
    }
    let state = STATE.lock().unwrap();
    match state.as_ref()?.gpu.as_ref() {
        Some(g) => g.stamp().ok(),
        None => Some(Stamp::Host(std::time::Instant::now())),
    }
}

/// Records a range that started at `start` and ends now.
pub(crate) fn record(name: String, kind: Kind, start: Stamp) {
    if let Some(end) = stamp()
        && let Some(state) = STATE.lock().unwrap().as_mut()
    {
        state.pending.push((name, kind, start, end));
    }
}

/// Folds the pending measurements into the totals (waits for the device);
/// call now and then in long runs to bound memory.
pub fn flush() -> Result<()> {
    let mut guard = STATE.lock().unwrap();
    let Some(state) = guard.as_mut() else {
        return Ok(());
    };
    for (name, kind, start, end) in state.pending.drain(..) {
        let ms = start.ms_until(&end)?;
        let e = state.totals.entry((kind, name)).or_default();
        *e = (e.0 + 1, e.1 + ms);
    }
    if let Some(g) = &state.gpu {
        for (label, ms) in g.take_timings()? {
            let e = state.kernels.entry(label).or_default();
            *e = (e.0 + 1, e.1 + ms);
        }
    }
    Ok(())
}

/// Stops timing and returns the tables.
pub fn finish() -> Result<Report> {
    flush()?;
    ON.store(false, Ordering::Release);
    let Some(state) = STATE.lock().unwrap().take() else {
        return Ok(Report::default());
    };
    if let Some(g) = &state.gpu {
        g.set_profiling(false);
    }
    let rows = |kind: Kind| {
        let mut r: Vec<Row> = state
            .totals
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|((_, name), &(calls, ms))| Row {
                name: name.clone(),
                calls,
                ms,
            })
            .collect();
        r.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        r
    };
    let mut kernels: Vec<Row> = state
        .kernels
        .iter()
        .map(|(name, &(calls, ms))| Row {
            name: name.to_string(),
            calls,
            ms,
        })
        .collect();
    kernels.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    Ok(Report {
        steps: rows(Kind::Step),
        phases: rows(Kind::Phase),
        layers: rows(Kind::Layer),
        kernels,
    })
}

/// One line of a table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Range name or kernel family.
    pub name: String,
    /// How many times it ran.
    pub calls: u64,
    /// Total milliseconds.
    pub ms: f64,
}

/// The tables of [`finish`], each sorted by total time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Whole steps.
    pub steps: Vec<Row>,
    /// Phases of a step.
    pub phases: Vec<Row>,
    /// Layers, heads and backward ops.
    pub layers: Vec<Row>,
    /// Kernel families and library calls (GPU only).
    pub kernels: Vec<Row>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let steps: u64 = self.steps.iter().map(|r| r.calls).sum();
        let step_ms: f64 = self.steps.iter().map(|r| r.ms).sum();
        if steps > 0 {
            writeln!(
                f,
                "{steps} steps, {:.2} ms per step",
                step_ms / steps as f64
            )?;
        }
        for (title, rows) in [
            ("phase", &self.phases),
            ("layer / backward op", &self.layers),
            ("kernel family", &self.kernels),
        ] {
            if rows.is_empty() {
                continue;
            }
            writeln!(
                f,
                "{title:<28} {:>8} {:>12} {:>10} {:>7}",
                "calls", "total ms", "ms/step", "share"
            )?;
            for r in rows {
                let per_step = if steps > 0 { r.ms / steps as f64 } else { r.ms };
                let share = if step_ms > 0.0 {
                    format!("{:.1}%", 100.0 * r.ms / step_ms)
                } else {
                    "-".into()
                };
                writeln!(
                    f,
                    "{:<28} {:>8} {:>12.2} {:>10.3} {:>7}",
                    r.name, r.calls, r.ms, per_step, share
                )?;
            }
        }
        Ok(())
    }
}
