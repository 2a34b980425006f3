//! Upper bounds on the size flags, and the memory a pretraining step needs,
//! checked against what the device has: an impossible run is refused at once
//! with the reason, instead of overflowing, or running until the kernel
//! kills it.

use crate::config::RunConfig;
use crate::{Error, Result};
use engine::{DType, Device};
use nets::resnet::{Arch, Stem};

/// Largest `--bs`.
pub const MAX_BS: usize = 65_536;
/// Largest `--res`, in pixels.
pub const MAX_RES: usize = 4096;
/// Largest `--width` (torchvision's widest ResNets have 128).
pub const MAX_WIDTH: usize = 1024;
/// Largest `--proj-hidden` and `--proj-out`.
pub const MAX_HEAD: usize = 65_536;
/// Largest `--workers`.
pub const MAX_WORKERS: usize = 1024;
/// Most data-parallel ranks (processes) in one job.
pub const MAX_WORLD: usize = 65_536;

/// Refuses `value` above `max` for flag `--name`.
pub fn at_most(name: &str, value: usize, max: usize) -> Result<usize> {
    if value > max {
        return Err(Error::Usage(format!("--{name} {value}: at most {max}")));
    }
    Ok(value)
}

/// Bytes of a pretraining run, estimated from below: what it certainly needs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MemoryEstimate {
    /// Student and teacher weights, and the student's gradients.
    pub parameters: f64,
    /// The optimiser's momentum buffer.
    pub optimizer: f64,
    /// Activations the student keeps for its backward pass.
    pub activations: f64,
    /// Images held in host memory (the synthetic dataset).
    pub data: f64,
    /// Batches the data loader's workers hold in host memory.
    pub loader: f64,
}

impl MemoryEstimate {
    /// The estimate for `cfg`, with activations stored as `precision`.
    pub fn of_run(cfg: &RunConfig, precision: DType) -> MemoryEstimate {
        let backbone = backbone_params(cfg.arch, cfg.stem, cfg.channels, cfg.width);
        let features = (8 * cfg.width * cfg.arch.expansion()) as f64;
        let (hidden, out) = (cfg.proj_hidden as f64, cfg.proj_out as f64);
        let projector = features * hidden + hidden * out;
        let predictor = 2.0 * out * hidden;
        let student = backbone + projector + predictor;
        let teacher = backbone + projector;
        let views = 2.0 * cfg.bs as f64;
        MemoryEstimate {
            parameters: 4.0 * (2.0 * student + teacher),
            optimizer: 4.0 * student,
            activations: views
                * activations_per_image(cfg.arch, cfg.stem, cfg.res, cfg.width)
                * precision.size_in_bytes() as f64,
            data: 0.0,
            loader: 0.0,
        }
    }

    /// With the batches `workers` loader threads hold: each has
    /// `prefetch` batches queued and one in the making, of both views in
    /// f32 when the host augments, of the uint8 crops when a GPU does.
    pub fn with_loader(
        mut self,
        cfg: &RunConfig,
        workers: usize,
        prefetch: usize,
        gpu: bool,
    ) -> Self {
        let pixels = (cfg.bs * cfg.res * cfg.res * cfg.channels) as f64;
        let batch = if gpu { pixels } else { 2.0 * 4.0 * pixels };
        self.loader = (workers * (prefetch + 1)) as f64 * batch;
        self
    }

    /// What lives on the training device: the networks and their step.
    fn model(&self) -> f64 {
        self.parameters + self.optimizer + self.activations
    }

    /// What lives in host memory besides: images and loader batches.
    fn host(&self) -> f64 {
        self.data + self.loader
    }

    /// Everything together.
    pub fn total(&self) -> f64 {
        self.model() + self.host()
    }

    /// Refuses the run if the estimate exceeds the memory it lives in: all
    /// of it in available host RAM for the CPU and the emulator; on a GPU
    /// the model in the GPU's memory and the data in the host's. Memory that
    /// cannot be read is not checked.
    pub fn check_fits(&self, device: Device) -> Result<()> {
        if matches!(device, Device::Cuda(_)) {
            self.check(self.model(), device)?;
            self.check(self.host(), Device::Cpu)
        } else {
            self.check(self.total(), device)
        }
    }

    fn check(&self, needed: f64, device: Device) -> Result<()> {
        let Some((available, what)) = available_memory(device) else {
            return Ok(());
        };
        if needed <= available {
            return Ok(());
        }
        let gib = |b: f64| format!("{:.1} GiB", b / (1u64 << 30) as f64);
        let on_gpu = matches!(device, Device::Cuda(_));
        let mut parts = Vec::new();
        if !on_gpu || self.model() == needed {
            parts.extend([
                format!("parameters and gradients {}", gib(self.parameters)),
                format!("optimiser {}", gib(self.optimizer)),
                format!("activations {}", gib(self.activations)),
            ]);
        }
        if self.data > 0.0 && !on_gpu {
            parts.push(format!("images {}", gib(self.data)));
        }
        if self.loader > 0.0 && !on_gpu {
            parts.push(format!("loader batches {}", gib(self.loader)));
        }
        Err(Error::Usage(format!(
            "this run needs at least {} ({}) but {what} has {}; lower --bs, --res, --width, --proj-hidden or --workers",
            gib(needed),
            parts.join(", "),
            gib(available)
        )))
    }
}

/// Bytes of memory `device` offers, and how to name it.
pub(crate) fn available_memory(device: Device) -> Option<(f64, String)> {
    match device {
        Device::Cuda(n) => {
            let report = kernels::probe::probe();
            let gpu = report.devices.ok()?.into_iter().find(|d| d.ordinal == n)?;
            Some((gpu.memory_bytes as f64, format!("cuda:{n}")))
        }
        _ => {
            let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
            let kib: f64 = meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            // A container's cgroup limit can be far below the machine's.
            let cgroup: Option<f64> = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
                .ok()
                .and_then(|v| v.trim().parse().ok());
            match cgroup {
                Some(limit) if limit < 1024.0 * kib => {
                    Some((limit, "the host (its cgroup's memory.max)".into()))
                }
                _ => Some((1024.0 * kib, "the host (MemAvailable)".into())),
            }
        }
    }
}

/// The spatial side of each stage's output and the stem's, for `res` pixels.
fn sides(stem: Stem, res: usize) -> (f64, [f64; 4]) {
    let (stem_side, first) = match stem {
        Stem::Small => (res as f64, res as f64),
        Stem::ImageNet => ((res as f64 / 2.0).ceil(), (res as f64 / 4.0).ceil()),
    };
    let stage = |i: i32| (first / 2f64.powi(i)).ceil().max(1.0);
    (stem_side, [stage(0), stage(1), stage(2), stage(3)])
}

/// Parameters of a ResNet backbone (convolutions and batch norms).
fn backbone_params(arch: Arch, stem: Stem, in_channels: usize, width: usize) -> f64 {
    let kernel = match stem {
        Stem::Small => 9.0,
        Stem::ImageNet => 49.0,
    };
    let w = width as f64;
    let mut total = kernel * in_channels as f64 * w + 2.0 * w;
    let mut inputs = w;
    for (i, &blocks) in arch.blocks().iter().enumerate() {
        let planes = w * 2f64.powi(i as i32);
        for b in 0..blocks {
            let block = if arch.bottleneck() {
                inputs * planes + 9.0 * planes * planes + planes * 4.0 * planes + 12.0 * planes
            } else {
                9.0 * inputs * planes + 9.0 * planes * planes + 4.0 * planes
            };
            let out = planes * arch.expansion() as f64;
            let downsample = if b == 0 && (i > 0 || inputs != out) {
                inputs * out + 2.0 * out
            } else {
                0.0
            };
            total += block + downsample;
            inputs = out;
        }
    }
    total
}

/// Values one image's forward keeps for the backward: each convolution's
/// output and its batch norm's, in every block (ReLUs and pooling not counted).
fn activations_per_image(arch: Arch, stem: Stem, res: usize, width: usize) -> f64 {
    let (stem_side, stage_sides) = sides(stem, res);
    let w = width as f64;
    let mut values = 2.0 * stem_side * stem_side * w;
    for (i, (&blocks, side)) in arch.blocks().iter().zip(stage_sides).enumerate() {
        let planes = w * 2f64.powi(i as i32);
        let per_block = if arch.bottleneck() {
            planes + planes + 4.0 * planes
        } else {
            2.0 * planes
        };
        values += 2.0 * blocks as f64 * per_block * side * side;
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;
    use nets::m2t::{M2t, M2tConfig};
    use nets::resnet::ResNetConfig;

    #[test]
    fn parameter_estimate_matches_the_built_networks() {
        for arch in [Arch::ResNet18, Arch::ResNet50] {
            for stem in [Stem::Small, Stem::ImageNet] {
                let backbone = ResNetConfig {
                    arch,
                    stem,
                    in_channels: 3,
                    width: 4,
                };
                let model = M2t::new(
                    M2tConfig {
                        proj_hidden: 32,
                        proj_out: 16,
                        pred_hidden: 32,
                        ..M2tConfig::new(backbone)
                    },
                    0,
                )
                .unwrap();
                let built = model.student().num_params() as f64;
                let backbone = backbone_params(arch, stem, 3, 4);
                let features = (32 * arch.expansion()) as f64;
                let estimated = backbone + features * 32.0 + 32.0 * 16.0 + 2.0 * 16.0 * 32.0;
                assert!(
                    (estimated / built - 1.0).abs() < 0.05,
                    "{arch} {stem:?}: estimated {estimated}, built {built}"
                );
            }
        }
    }

    #[test]
    fn bounds_refuse_with_the_flag() {
        assert_eq!(at_most("width", 64, MAX_WIDTH).unwrap(), 64);
        let err = at_most("width", usize::MAX, MAX_WIDTH).unwrap_err();
        assert!(err.to_string().contains("at most 1024"), "{err}");
    }
}
