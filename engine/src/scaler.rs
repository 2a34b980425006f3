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

/// Words of [`DeviceScaler`]'s state: the scale (f32), good steps, the
/// overflow flag and the skip flag (i32s, stored as their bits).
pub const DEVICE_STATE_WORDS: usize = 4;

/// The loss scaler's state machine on a GPU, for captured fp16 steps: the
/// scale lives in device memory, the backward pass seeds from it, one kernel
/// unscales the gradients and flags an overflow, another advances the state
/// exactly as [`LossScaler::update`] does and sets the skip flag the
/// optimiser kernels read ([`crate::optim::Sgd::step_unless`]). The host
/// learns what happened from [`DeviceScaler::state`] when it reads it.
#[derive(Clone, Debug)]
pub struct DeviceScaler {
    /// `[scale, good steps, overflow, skip]`, four 4-byte words.
    state: crate::Tensor,
    growth_factor: f32,
    backoff_factor: f32,
    growth_interval: u32,
    min_scale: f32,
}

/// What one step left in a [`DeviceScaler`]'s state.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScalerState {
    /// The scale for the next step.
    pub scale: f32,
    /// Overflow-free steps since the last growth or overflow.
    pub good_steps: u32,
    /// Whether the step overflowed and its update was skipped.
    pub skipped: bool,
}

impl ScalerState {
    /// Decodes the four state words (as f32 values holding their bits).
    pub fn from_words(words: &[f32]) -> ScalerState {
        ScalerState {
            scale: words[0],
            good_steps: words[1].to_bits(),
            skipped: words[3].to_bits() != 0,
        }
    }
}

impl DeviceScaler {
    /// The state of `host` on `device` (a GPU).
    pub fn new(host: &LossScaler, device: crate::Device) -> Result<DeviceScaler> {
        if !device.is_gpu() {
            return Err(Error::Device {
                op: "device loss scaler",
                device,
            });
        }
        let words = [host.scale, f32::from_bits(host.good_steps), 0.0, 0.0];
        Ok(DeviceScaler {
            state: crate::Tensor::from_vec(words.to_vec(), [DEVICE_STATE_WORDS])?
                .to_device(device)?,
            growth_factor: host.growth_factor,
            backoff_factor: host.backoff_factor,
            growth_interval: host.growth_interval,
            min_scale: host.min_scale,
        })
    }

    /// The state words, e.g. to copy into a step's results.
    pub fn state(&self) -> &crate::Tensor {
        &self.state
    }

    /// The current scale as a device tensor of `shape` (one element): the
    /// seed of the backward pass of the scaled loss.
    pub fn seed(&self, shape: crate::Shape) -> Result<crate::Tensor> {
        self.state.view(0, [1].into()).reshape(shape)
    }

    /// The skip flag: set when the last step overflowed.
    pub fn skip_flag(&self) -> crate::Tensor {
        self.state.view(3, [1].into())
    }

    /// Unscales `store`'s gradients by the current scale, flags an overflow
    /// and advances the state: two launches, nothing read back.
    pub fn unscale_and_update(&self, store: &mut ParamStore) -> Result<()> {
        let grads = store.grads_mut();
        grads.gpu_mut()?;
        crate::optim::cuda::unscale_by_state(grads, &self.state)?;
        crate::optim::cuda::loss_scale_update(
            &self.state,
            (self.growth_factor, self.backoff_factor),
            self.growth_interval,
            self.min_scale,
        )
    }

    /// Reads the state (waits for the device).
    pub fn read(&self) -> Result<ScalerState> {
        Ok(ScalerState::from_words(&self.state.to_vec::<f32>()?))
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
