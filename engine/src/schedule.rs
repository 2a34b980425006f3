//! The per-iteration schedules of m2t-method.md §2 and §4. `k` is the
//! iteration (0-based) and `total` the number of iterations of the run.

use std::f64::consts::PI;

/// The learning rate at which warm-up starts.
pub const WARMUP_START_LR: f64 = 1e-6;

/// `(cos(π·k/total) + 1)/2`: 1 at the start, 0 at the end.
fn cosine_to_zero(k: usize, total: usize) -> f64 {
    let progress = (k as f64 / total.max(1) as f64).min(1.0);
    ((PI * progress).cos() + 1.0) / 2.0
}

/// Learning rate: linear warm-up from [`WARMUP_START_LR`] to `base_lr` over
/// `warmup_iters`, then cosine decay to 0 at `total_iters`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    /// Peak learning rate.
    pub base_lr: f64,
    /// Iterations of linear warm-up.
    pub warmup_iters: usize,
    /// Iterations in the whole run.
    pub total_iters: usize,
}

impl LrSchedule {
    /// The learning rate for iteration `k`.
    pub fn at(&self, k: usize) -> f64 {
        if k < self.warmup_iters {
            let t = k as f64 / self.warmup_iters as f64;
            WARMUP_START_LR + (self.base_lr - WARMUP_START_LR) * t
        } else {
            let decay = self.total_iters.saturating_sub(self.warmup_iters);
            self.base_lr * cosine_to_zero(k - self.warmup_iters, decay)
        }
    }
}

/// EMA momentum `m = 1 − (1 − m0)·(cos(π·k/K) + 1)/2`: `m0` at the start, 1 at the end.
pub fn ema_momentum(k: usize, total: usize, m0: f64) -> f64 {
    1.0 - (1.0 - m0) * cosine_to_zero(k, total)
}

/// Momentum-BN weight of the batch statistics, `β = (cos(π·k/K) + 1)/2`: 1 → 0.
pub fn mbn_beta(k: usize, total: usize) -> f64 {
    cosine_to_zero(k, total)
}
