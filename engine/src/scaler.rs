//! Dynamic loss scaling for fp16 training: the loss is multiplied by a large
//! scale before backward so small gradients survive f16, the f32 gradients
//! are unscaled before the update, and a step whose gradients overflowed is
//! skipped while the scale backs off. bf16 has f32's range and needs none.

use crate::error::{Error, Result};
use crate::params::ParamStore;
use rayon::prelude::*;

/// Initial scale, 2¹⁶ (PyTorch's `GradScaler` default).
pub const INIT_SCALE: f32 = 65536.0;
/// Scale multiplier after [`GROWTH_INTERVAL`] overflow-free steps.
pub const GROWTH_FACTOR: f32 = 2.0;
/// Scale multiplier after an overflow.
pub const BACKOFF_FACTOR: f32 = 0.5;
/// Overflow-free steps between two growths.
pub const GROWTH_INTERVAL: u32 = 2000;
/// The scale never backs off below this.
pub const MIN_SCALE: f32 = 1.0;

/// The scaler's state machine. Each step: backward from `loss · scale()`,
/// [`LossScaler::unscale_and_check`] the store, then
/// [`LossScaler::update`], which says whether to skip the optimiser step.
#[derive(Clone, Debug, PartialEq)]
pub struct LossScaler {
    scale: f32,
    /// Overflow-free steps since the last growth or overflow.
    good_steps: u32,
    /// Multiplier after `growth_interval` overflow-free steps.
    pub growth_factor: f32,
    /// Multiplier after an overflow.
    pub backoff_factor: f32,
    /// Overflow-free steps between growths.
    pub growth_interval: u32,
    /// Lower bound of the scale.
    pub min_scale: f32,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler {
            scale: INIT_SCALE,
            good_steps: 0,
            growth_factor: GROWTH_FACTOR,
            backoff_factor: BACKOFF_FACTOR,
            growth_interval: GROWTH_INTERVAL,
            min_scale: MIN_SCALE,
        }
    }
}

impl LossScaler {
    /// A scaler with the default constants, starting at [`INIT_SCALE`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The current loss scale.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// Overflow-free steps since the last growth or overflow.
    pub fn good_steps(&self) -> u32 {
        self.good_steps
    }

    /// Restores a saved state (`scale()`, `good_steps()`), e.g. when resuming.
    pub fn restore(&mut self, scale: f32, good_steps: u32) -> Result<()> {
        if !(scale.is_finite() && scale >= self.min_scale) || good_steps >= self.growth_interval {
            return Err(Error::Param(format!(
                "loss scaler state: scale {scale} (finite, at least {}) and {good_steps} good steps (under {})",
                self.min_scale, self.growth_interval
            )));
        }
        self.scale = scale;
        self.good_steps = good_steps;
        Ok(())
    }

    /// Divides every gradient of `store` by the scale in place and reports
    /// whether any result is NaN or ±∞. On a GPU: one kernel and a 4-byte
    /// read of its flag.
    pub fn unscale_and_check(&self, store: &mut ParamStore) -> Result<bool> {
        let inv_scale = 1.0 / self.scale;
        let grads = store.grads_mut();
        if grads.gpu_mut()?.is_some() {
            return crate::optim::cuda::unscale_and_check(grads, inv_scale);
        }
        Ok(grads
            .slice_mut::<f32>()?
            .par_iter_mut()
            .map(|g| {
                *g *= inv_scale;
                !g.is_finite()
            })
            .reduce(|| false, |a, b| a || b))
    }

    /// Advances the state machine after a step's check; returns true if the
    /// optimiser step must be skipped. An overflow backs the scale off (not
    /// below `min_scale`) and restarts the count; `growth_interval`
    /// overflow-free steps in a row grow it (unless that would overflow f32).
    pub fn update(&mut self, found_inf: bool) -> bool {
        if found_inf {
            self.scale = (self.scale * self.backoff_factor).max(self.min_scale);
            self.good_steps = 0;
            return true;
        }
        self.good_steps += 1;
        if self.good_steps >= self.growth_interval {
            let grown = self.scale * self.growth_factor;
            if grown.is_finite() {
                self.scale = grown;
            }
            self.good_steps = 0;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_two_to_the_sixteen() {
        let s = LossScaler::new();
        assert_eq!(s.scale(), 65536.0);
        assert_eq!(s.good_steps(), 0);
    }

    #[test]
    fn grows_after_exactly_the_interval_of_good_steps() {
        let mut s = LossScaler::new();
        for step in 1..GROWTH_INTERVAL {
            assert!(!s.update(false));
            assert_eq!(s.scale(), INIT_SCALE, "grew early at step {step}");
            assert_eq!(s.good_steps(), step);
        }
        assert!(!s.update(false));
        assert_eq!(s.scale(), INIT_SCALE * 2.0);
        assert_eq!(s.good_steps(), 0);
        // The next growth needs a full interval again.
        for _ in 0..GROWTH_INTERVAL - 1 {
            s.update(false);
        }
        assert_eq!(s.scale(), INIT_SCALE * 2.0);
        s.update(false);
        assert_eq!(s.scale(), INIT_SCALE * 4.0);
    }

    #[test]
    fn overflow_skips_backs_off_and_restarts_the_count() {
        let mut s = LossScaler::new();
        for _ in 0..GROWTH_INTERVAL - 1 {
            s.update(false);
        }
        assert!(s.update(true), "an overflowed step must be skipped");
        assert_eq!(s.scale(), INIT_SCALE / 2.0);
        assert_eq!(s.good_steps(), 0);
        // The good steps before the overflow no longer count.
        s.update(false);
        assert_eq!(s.scale(), INIT_SCALE / 2.0);
        for _ in 0..GROWTH_INTERVAL - 1 {
            assert!(!s.update(false));
        }
        assert_eq!(s.scale(), INIT_SCALE);
    }

    #[test]
    fn never_backs_off_below_the_minimum_nor_grows_to_infinity() {
        let mut s = LossScaler::new();
        for _ in 0..40 {
            assert!(s.update(true));
        }
        assert_eq!(s.scale(), MIN_SCALE);
        let mut s = LossScaler {
            growth_interval: 1,
            ..LossScaler::new()
        };
        for _ in 0..300 {
            s.update(false);
        }
        assert_eq!(s.scale(), 2f32.powi(127));
    }

    #[test]
    fn restores_a_saved_state_and_rejects_a_bad_one() {
        let mut s = LossScaler::new();
        s.restore(1024.0, 17).unwrap();
        assert_eq!((s.scale(), s.good_steps()), (1024.0, 17));
        for (scale, good) in [
            (f32::INFINITY, 0),
            (0.5, 0),
            (f32::NAN, 0),
            (8.0, GROWTH_INTERVAL),
        ] {
            assert!(matches!(s.restore(scale, good), Err(Error::Param(_))));
        }
        assert_eq!((s.scale(), s.good_steps()), (1024.0, 17));
    }
}
