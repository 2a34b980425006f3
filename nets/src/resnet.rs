//! The ResNet family in torchvision's v1.5 layout (stride on the bottleneck's
//! 3×3 conv), with parameter names matching torchvision's state dict.

use crate::layers::{BatchNorm, Conv2d, Forward, NetBuilder};
use crate::{Error, Result};
use engine::Var;
use engine::ops::PoolParams;
use std::fmt;
use std::str::FromStr;

/// Depth and block type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// BasicBlock ×[2, 2, 2, 2].
    ResNet18,
    /// BasicBlock ×[3, 4, 6, 3].
    ResNet34,
    /// Bottleneck ×[3, 4, 6, 3].
    ResNet50,
    /// Bottleneck ×[3, 4, 23, 3].
    ResNet101,
    /// Bottleneck ×[3, 8, 36, 3].
    ResNet152,
}

impl Arch {
    /// Every architecture, shallowest first.
    pub const ALL: [Arch; 5] = [
        Arch::ResNet18,
        Arch::ResNet34,
        Arch::ResNet50,
        Arch::ResNet101,
        Arch::ResNet152,
    ];

    /// Blocks per stage.
    pub fn blocks(self) -> [usize; 4] {
        match self {
            Arch::ResNet18 => [2, 2, 2, 2],
            Arch::ResNet34 | Arch::ResNet50 => [3, 4, 6, 3],
            Arch::ResNet101 => [3, 4, 23, 3],
            Arch::ResNet152 => [3, 8, 36, 3],
        }
    }

    /// True for the bottleneck architectures (50 and deeper).
    pub fn bottleneck(self) -> bool {
        !matches!(self, Arch::ResNet18 | Arch::ResNet34)
    }

    /// Output channels of a block relative to its planes.
    pub fn expansion(self) -> usize {
        if self.bottleneck() { 4 } else { 1 }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let depth = match self {
            Arch::ResNet18 => 18,
            Arch::ResNet34 => 34,
            Arch::ResNet50 => 50,
            Arch::ResNet101 => 101,
            Arch::ResNet152 => 152,
        };
        write!(f, "resnet{depth}")
    }
}

impl FromStr for Arch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Arch::ALL
            .into_iter()
            .find(|a| a.to_string() == s)
            .ok_or_else(|| Error::Config(format!("unknown arch '{s}': expected resnet18, resnet34, resnet50, resnet101 or resnet152")))
    }
}

/// The network's first layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stem {
    /// 7×7/2 conv, padding 3, then 3×3/2 max-pool (224-px images).
    ImageNet,
    /// 3×3/1 conv, padding 1, no max-pool (28–96-px images).
    Small,
}

impl Stem {
    /// The stem that suits `res`-pixel images: small below 128 px.
    pub fn for_res(res: usize) -> Stem {
        if res < 128 {
            Stem::Small
        } else {
            Stem::ImageNet
        }
    }
}

impl fmt::Display for Stem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stem::ImageNet => "imagenet",
            Stem::Small => "small",
        })
    }
}

impl FromStr for Stem {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "imagenet" => Ok(Stem::ImageNet),
            "small" => Ok(Stem::Small),
            _ => Err(Error::Config(format!(
                "unknown stem '{s}': expected imagenet or small"
            ))),
        }
    }
}

/// Everything that shapes a ResNet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResNetConfig {
    /// Depth and block type.
    pub arch: Arch,
    /// First layers.
    pub stem: Stem,
    /// Image channels: 1 (grey) or 3 (RGB).
    pub in_channels: usize,
    /// Channels of the stem and the first stage; torchvision's is 64. Smaller
    /// widths make small, fast networks for tests and CPU runs.
    pub width: usize,
}

impl ResNetConfig {
    /// torchvision's network: ImageNet stem, RGB, width 64.
    pub fn torchvision(arch: Arch) -> Self {
        ResNetConfig {
            arch,
            stem: Stem::ImageNet,
            in_channels: 3,
            width: 64,
        }
    }

    /// Width of the pooled features: 8·width·expansion (512 or 2048 at width 64).
    pub fn feature_dim(&self) -> usize {
        8 * self.width * self.arch.expansion()
    }

    fn validate(&self) -> Result<()> {
        if !matches!(self.in_channels, 1 | 3) {
            return Err(Error::Config(format!(
                "in_channels must be 1 or 3, got {}",
                self.in_channels
            )));
        }
        if self.width == 0 {
            return Err(Error::Config("width must be at least 1".into()));
        }
        Ok(())
    }
}

/// A residual block: basic (two 3×3 convs) or bottleneck (1×1, 3×3, 1×1).
#[derive(Clone, Debug)]
struct Block {
    /// `layer{stage}.{index}`, also its NVTX range.
    name: String,
    convs: Vec<(Conv2d, BatchNorm)>,
    downsample: Option<(Conv2d, BatchNorm)>,
}

impl Block {
    fn new(
        b: &mut NetBuilder,
        name: &str,
        cin: usize,
        planes: usize,
        stride: usize,
        bottleneck: bool,
    ) -> Result<Self> {
        let expansion = if bottleneck { 4 } else { 1 };
        let cout = planes * expansion;
        let mut unit = |i: usize, cin, cout, k, s, p| -> Result<(Conv2d, BatchNorm)> {
            Ok((
                Conv2d::new(b, &format!("{name}.conv{i}"), cin, cout, k, s, p)?,
                BatchNorm::new(b, &format!("{name}.bn{i}"), cout)?,
            ))
        };
        let convs = if bottleneck {
            vec![
                unit(1, cin, planes, 1, 1, 0)?,
                unit(2, planes, planes, 3, stride, 1)?,
                unit(3, planes, cout, 1, 1, 0)?,
            ]
        } else {
            vec![
                unit(1, cin, planes, 3, stride, 1)?,
                unit(2, planes, planes, 3, 1, 1)?,
            ]
        };
        let downsample = if stride != 1 || cin != cout {
            Some((
                Conv2d::new(b, &format!("{name}.downsample.0"), cin, cout, 1, stride, 0)?,
                BatchNorm::new(b, &format!("{name}.downsample.1"), cout)?,
            ))
        } else {
            None
        };
        Ok(Block {
            name: name.to_string(),
            convs,
            downsample,
        })
    }

    fn forward(&self, f: &mut Forward, x: &Var) -> Result<Var> {
        let _range = engine::nvtx::range(&self.name);
        // The shortcut first, so the last BN can fuse the join and the ReLU.
        let skip = match &self.downsample {
            Some((conv, bn)) => {
                let y = conv.forward(f, x)?;
                bn.forward(f, &y)?
            }
            None => x.clone(),
        };
        let mut h = x.clone();
        let last = self.convs.len() - 1;
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            let y = conv.forward(f, &h)?;
            h = if i < last {
                bn.forward_relu(f, &y)?
            } else {
                bn.forward_add_relu(f, &y, &skip)?
            };
        }
        Ok(h)
    }
}

/// A ResNet backbone: stem, four stages, global average pool (no `fc`).
#[derive(Clone, Debug)]
pub struct ResNet {
    config: ResNetConfig,
    conv1: Conv2d,
    bn1: BatchNorm,
    stages: Vec<Vec<Block>>,
}

impl ResNet {
    /// Declares the backbone's parameters with torchvision's names.
    pub fn new(b: &mut NetBuilder, config: ResNetConfig) -> Result<Self> {
        config.validate()?;
        let w = config.width;
        let conv1 = match config.stem {
            Stem::ImageNet => Conv2d::new(b, "conv1", config.in_channels, w, 7, 2, 3)?,
            Stem::Small => Conv2d::new(b, "conv1", config.in_channels, w, 3, 1, 1)?,
        };
        let bn1 = BatchNorm::new(b, "bn1", w)?;
        let mut cin = w;
        let mut stages = Vec::new();
        for (s, &count) in config.arch.blocks().iter().enumerate() {
            let planes = w << s;
            let mut blocks = Vec::new();
            for i in 0..count {
                let stride = if s > 0 && i == 0 { 2 } else { 1 };
                let name = format!("layer{}.{i}", s + 1);
                blocks.push(Block::new(
                    b,
                    &name,
                    cin,
                    planes,
                    stride,
                    config.arch.bottleneck(),
                )?);
                cin = planes * config.arch.expansion();
            }
            stages.push(blocks);
        }
        Ok(ResNet {
            config,
            conv1,
            bn1,
            stages,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ResNetConfig {
        &self.config
    }

    /// NHWC images `[n,h,w,in_channels]` → pooled features `[n, feature_dim]`.
    pub fn forward(&self, f: &mut Forward, x: &Var) -> Result<Var> {
        let stem = engine::nvtx::range("stem");
        let y = self.conv1.forward(f, x)?;
        let mut h = self.bn1.forward_relu(f, &y)?;
        if self.config.stem == Stem::ImageNet {
            h = f.tape.max_pool2d(&h, PoolParams::RESNET_STEM)?;
        }
        drop(stem);
        for block in self.stages.iter().flatten() {
            h = block.forward(f, &h)?;
        }
        Ok(f.tape.global_avg_pool(&h)?)
    }
}
