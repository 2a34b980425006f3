//! How fast one M2T step could possibly run on a given card: every op of
//! the step with its FLOPs and the bytes it must move at least, each bound
//! below by the card's dense peak for the precision and its memory
//! bandwidth (a roofline), and their sum. `trainer bench` reports model
//! FLOPs and MFU against the same table of cards.
//!
//! Model FLOPs count the multiply-adds (×2) of convolutions and linear
//! layers, forward and backward, as MFU is usually counted; element-wise
//! ops (batch norm, ReLU, pooling, the optimiser) count only their bytes.
//! The step: two teacher forwards, two student forwards and backwards
//! (backward data and backward weights, except the stem's gradient with
//! respect to the images), the EMA, the casts of the f32 master weights to
//! the compute precision, the gradient accumulation and check, and SGD.

use crate::{Error, Result};
use engine::DType;
use nets::resnet::{Arch, Stem};
use std::collections::BTreeMap;

/// A GPU's dense peaks (no structured sparsity), from its data sheet.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Card {
    /// The `--card` name.
    pub key: &'static str,
    /// What the data sheet calls it.
    pub name: &'static str,
    /// FP32 without tensor cores (the engine never runs f32 as TF32), TFLOP/s.
    pub fp32_tflops: f64,
    /// BF16 tensor cores with f32 accumulation, TFLOP/s.
    pub bf16_tflops: f64,
    /// FP16 tensor cores with f32 accumulation, TFLOP/s.
    pub fp16_tflops: f64,
    /// Memory bandwidth, GB/s.
    pub bandwidth_gbs: f64,
}

/// The cards `--card` knows.
pub const CARDS: &[Card] = &[
    card("a100", "A100 SXM4 80 GB", 19.5, 312.0, 312.0, 2039.0),
    card("a100-pcie", "A100 PCIe 80 GB", 19.5, 312.0, 312.0, 1935.0),
    card("h100-sxm", "H100 SXM5", 66.9, 989.4, 989.4, 3350.0),
    card("h100-pcie", "H100 PCIe", 51.2, 756.5, 756.5, 2000.0),
    card("h200", "H200 SXM", 66.9, 989.4, 989.4, 4800.0),
    card("l40s", "L40S", 91.6, 362.1, 362.1, 864.0),
    card("l4", "L4", 30.3, 121.0, 121.0, 300.0),
    card("a10", "A10", 31.2, 125.0, 125.0, 600.0),
    card("rtx-4090", "GeForce RTX 4090", 82.6, 165.2, 165.2, 1008.0),
    card("rtx-3090", "GeForce RTX 3090", 35.6, 71.0, 71.0, 936.0),
];

const fn card(
    key: &'static str,
    name: &'static str,
    fp32_tflops: f64,
    bf16_tflops: f64,
    fp16_tflops: f64,
    bandwidth_gbs: f64,
) -> Card {
    Card {
        key,
        name,
        fp32_tflops,
        bf16_tflops,
        fp16_tflops,
        bandwidth_gbs,
    }
}

impl Card {
    /// The card `--card key` names.
    pub fn by_key(key: &str) -> Result<&'static Card> {
        let key = key.to_ascii_lowercase();
        CARDS.iter().find(|c| c.key == key).ok_or_else(|| {
            let known: Vec<&str> = CARDS.iter().map(|c| c.key).collect();
            Error::Usage(format!(
                "--card {key}: expected one of {}",
                known.join(", ")
            ))
        })
    }

    /// The card a GPU's name (as the driver reports it) is, if in the table.
    pub fn by_gpu_name(name: &str) -> Option<&'static Card> {
        let has = |s: &str| name.contains(s);
        let key = if has("H200") {
            "h200"
        } else if has("H100") && has("PCIe") {
            "h100-pcie"
        } else if has("H100") {
            "h100-sxm"
        } else if has("A100") && has("PCIe") {
            "a100-pcie"
        } else if has("A100") {
            "a100"
        } else if has("L40S") {
            "l40s"
        } else if has("4090") {
            "rtx-4090"
        } else if has("3090") {
            "rtx-3090"
        } else if name.trim_end().ends_with(" L4") {
            "l4"
        } else if name.trim_end().ends_with(" A10") {
            "a10"
        } else {
            return None;
        };
        CARDS.iter().find(|c| c.key == key)
    }

    /// Dense peak FLOP/s in `dtype`.
    pub fn peak_flops(&self, dtype: DType) -> f64 {
        1e12 * match dtype {
            DType::BF16 => self.bf16_tflops,
            DType::F16 => self.fp16_tflops,
            _ => self.fp32_tflops,
        }
    }

    /// Memory bandwidth in bytes per second.
    pub fn bandwidth(&self) -> f64 {
        self.bandwidth_gbs * 1e9
    }
}

/// The network and batch of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    /// Backbone.
    pub arch: Arch,
    /// Stem.
    pub stem: Stem,
    /// Pairs per step (each view is a batch of this many images).
    pub bs: usize,
    /// Image size.
    pub res: usize,
    /// Backbone width.
    pub width: usize,
    /// Image channels.
    pub channels: usize,
    /// Projector and predictor hidden width.
    pub proj_hidden: usize,
    /// Projector output width.
    pub proj_out: usize,
}

/// One convolution: input NHWC, weight KRSC, stride, padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConvShape {
    /// `[n, h, w, c]`.
    pub input: [usize; 4],
    /// `[k, r, s, c]`.
    pub weight: [usize; 4],
    /// Stride.
    pub stride: usize,
    /// Zero padding.
    pub padding: usize,
}

impl ConvShape {
    /// The output `[n, h, w, k]`.
    pub fn output(&self) -> [usize; 4] {
        let [n, h, w, _] = self.input;
        let [k, r, s, _] = self.weight;
        let o = |x: usize, f: usize| (x + 2 * self.padding - f) / self.stride + 1;
        [n, o(h, r), o(w, s), k]
    }

    /// Multiply-adds × 2 of one direction (forward, backward data or
    /// backward weights cost the same).
    pub fn flops(&self) -> f64 {
        let [n, oh, ow, k] = self.output();
        let [_, r, s, c] = self.weight;
        2.0 * (n * oh * ow * k * r * s * c) as f64
    }
}

/// What a batch norm is fused with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum BnKind {
    /// Batch norm alone (the shortcut's).
    Plain,
    /// Then ReLU.
    Relu,
    /// Then the residual add and ReLU.
    AddRelu,
}

/// One layer of a network, for one view of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Layer {
    /// A convolution; `stem` for the first, whose input needs no gradient.
    Conv { shape: ConvShape, stem: bool },
    /// Training-mode batch norm over `[n, h, w, c]` (`[n, 1, 1, c]` in the heads).
    Bn { shape: [usize; 4], kind: BnKind },
    /// The stem's 3×3/2 max pool, input to output.
    MaxPool {
        input: [usize; 4],
        output: [usize; 4],
    },
    /// The global average pool of `[n, h, w, c]`.
    AvgPool { input: [usize; 4] },
    /// `[n, fin] → [n, fout]` with bias.
    Linear { n: usize, fin: usize, fout: usize },
}

/// The backbone's layers in order, for one view (the layout of nets::resnet).
pub fn backbone_layers(net: &Net) -> Vec<Layer> {
    let (n, res, width) = (net.bs, net.res, net.width);
    let mut layers = Vec::new();
    let conv = |layers: &mut Vec<Layer>, input: [usize; 4], k, f, stride, padding, stem| {
        let shape = ConvShape {
            input,
            weight: [k, f, f, input[3]],
            stride,
            padding,
        };
        layers.push(Layer::Conv { shape, stem });
        shape.output()
    };
    let image = [n, res, res, net.channels];
    let mut x = match net.stem {
        Stem::ImageNet => {
            let y = conv(&mut layers, image, width, 7, 2, 3, true);
            layers.push(Layer::Bn {
                shape: y,
                kind: BnKind::Relu,
            });
            // 3×3/2 max pool, padding 1.
            let pooled = [n, y[1].div_ceil(2), y[2].div_ceil(2), width];
            layers.push(Layer::MaxPool {
                input: y,
                output: pooled,
            });
            pooled
        }
        Stem::Small => {
            let y = conv(&mut layers, image, width, 3, 1, 1, true);
            layers.push(Layer::Bn {
                shape: y,
                kind: BnKind::Relu,
            });
            y
        }
    };
    let arch = net.arch;
    for (stage, &blocks) in arch.blocks().iter().enumerate() {
        let planes = width << stage;
        for b in 0..blocks {
            let stride = if stage > 0 && b == 0 { 2 } else { 1 };
            let out = planes * arch.expansion();
            let bn = |layers: &mut Vec<Layer>, y: [usize; 4], kind| {
                layers.push(Layer::Bn { shape: y, kind });
                y
            };
            let h = if arch.bottleneck() {
                let h = conv(&mut layers, x, planes, 1, 1, 0, false);
                let h = bn(&mut layers, h, BnKind::Relu);
                let h = conv(&mut layers, h, planes, 3, stride, 1, false);
                let h = bn(&mut layers, h, BnKind::Relu);
                conv(&mut layers, h, out, 1, 1, 0, false)
            } else {
                let h = conv(&mut layers, x, planes, 3, stride, 1, false);
                let h = bn(&mut layers, h, BnKind::Relu);
                conv(&mut layers, h, planes, 3, 1, 1, false)
            };
            if stride != 1 || x[3] != out {
                let s = conv(&mut layers, x, out, 1, stride, 0, false);
                layers.push(Layer::Bn {
                    shape: s,
                    kind: BnKind::Plain,
                });
            }
            x = bn(&mut layers, h, BnKind::AddRelu);
        }
    }
    layers.push(Layer::AvgPool { input: x });
    layers
}

/// A head's layers: Linear, batch norm + ReLU, Linear.
fn mlp(n: usize, fin: usize, hidden: usize, fout: usize) -> [Layer; 3] {
    [
        Layer::Linear {
            n,
            fin,
            fout: hidden,
        },
        Layer::Bn {
            shape: [n, 1, 1, hidden],
            kind: BnKind::Relu,
        },
        Layer::Linear {
            n,
            fin: hidden,
            fout,
        },
    ]
}

/// The parameters (f32 master copies) of the student and of the teacher.
pub fn params(net: &Net) -> (usize, usize) {
    let count = |layers: &[Layer]| -> usize {
        layers
            .iter()
            .map(|l| match *l {
                Layer::Conv { shape, .. } => shape.weight.iter().product(),
                Layer::Bn { shape, .. } => 2 * shape[3],
                Layer::Linear { fin, fout, .. } => fin * fout + fout,
                Layer::MaxPool { .. } | Layer::AvgPool { .. } => 0,
            })
            .sum()
    };
    let (teacher, predictor) = heads(net);
    let teacher = count(&backbone_layers(net)) + count(&teacher);
    (teacher + count(&predictor), teacher)
}

/// The projector's and the predictor's layers.
fn heads(net: &Net) -> ([Layer; 3], [Layer; 3]) {
    let feature = 8 * net.width * net.arch.expansion();
    let (n, hidden, out) = (net.bs, net.proj_hidden, net.proj_out);
    (mlp(n, feature, hidden, out), mlp(n, out, hidden, out))
}

/// One op of the step: its name and shape, how many times the step runs it,
/// and the FLOPs and least bytes of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct Op {
    /// What and on what shape, e.g. `conv fwd [128, 56, 56, 64]*[64, 3, 3, 64]/1,1`.
    pub name: String,
    /// Runs per step.
    pub count: usize,
    /// FLOPs of one run (0 for element-wise ops).
    pub flops: f64,
    /// Bytes one run must read and write at least.
    pub bytes: f64,
}

impl Op {
    /// The least seconds all runs of this op take on `card` in `dtype`.
    pub fn bound(&self, card: &Card, dtype: DType) -> f64 {
        let compute = self.flops / card.peak_flops(dtype);
        let memory = self.bytes / card.bandwidth();
        self.count as f64 * compute.max(memory)
    }

    /// Whether its bytes, not its FLOPs, bound it on `card` in `dtype`.
    pub fn memory_bound(&self, card: &Card, dtype: DType) -> bool {
        self.bytes / card.bandwidth() > self.flops / card.peak_flops(dtype)
    }
}

/// The ops of one M2T step in `dtype`, merged by name.
pub fn step_ops(net: &Net, dtype: DType) -> Vec<Op> {
    let e = dtype.size_in_bytes() as f64;
    let numel = |s: [usize; 4]| s.iter().product::<usize>() as f64;
    let mut ops: BTreeMap<String, Op> = BTreeMap::new();
    let mut add = |name: String, count: usize, flops: f64, bytes: f64| {
        ops.entry(name.clone())
            .or_insert(Op {
                name,
                count: 0,
                flops,
                bytes,
            })
            .count += count;
    };
    let (projector, predictor) = heads(net);
    let backbone = backbone_layers(net);
    // Forwards: 2 views × (teacher + student); backwards: the student's 2.
    let nets: [(&[Layer], usize, usize); 3] =
        [(&backbone, 4, 2), (&projector, 4, 2), (&predictor, 2, 2)];
    for (layers, forwards, backwards) in nets {
        for layer in layers {
            match *layer {
                Layer::Conv { .. } | Layer::Linear { .. } => {
                    // Each direction is as many FLOPs and moves x, w and y once.
                    let (what, wrt_weights, name, f, [x, w, y], data_grad) = match *layer {
                        Layer::Conv { shape, stem } => (
                            "conv",
                            "filter",
                            format!(
                                "{:?}*{:?}/{},{}",
                                shape.input, shape.weight, shape.stride, shape.padding
                            ),
                            shape.flops(),
                            [shape.input, shape.weight, shape.output()].map(numel),
                            !stem,
                        ),
                        Layer::Linear { n, fin, fout } => (
                            "linear",
                            "weight",
                            format!("[{n}, {fin}]x[{fin}, {fout}]"),
                            2.0 * (n * fin * fout) as f64,
                            [n * fin, fin * fout, n * fout].map(|v| v as f64),
                            true,
                        ),
                        _ => unreachable!("matched above"),
                    };
                    let bytes = (x + w + y) * e;
                    add(format!("{what} fwd {name}"), forwards, f, bytes);
                    if data_grad {
                        add(format!("{what} bwd data {name}"), backwards, f, bytes);
                    }
                    add(
                        format!("{what} bwd {wrt_weights} {name}"),
                        backwards,
                        f,
                        bytes,
                    );
                }
                Layer::Bn { shape, kind } => {
                    let add_read = if kind == BnKind::AddRelu { 1.0 } else { 0.0 };
                    let what = match kind {
                        BnKind::Plain => "bn",
                        BnKind::Relu => "bn+relu",
                        BnKind::AddRelu => "bn+add+relu",
                    };
                    let x = numel(shape);
                    // Forward reads x (and the shortcut), writes y; backward
                    // reads x and dy, writes dx (and the shortcut's gradient).
                    add(
                        format!("{what} fwd {shape:?}"),
                        forwards,
                        0.0,
                        (2.0 + add_read) * x * e,
                    );
                    add(
                        format!("{what} bwd {shape:?}"),
                        backwards,
                        0.0,
                        (3.0 + add_read) * x * e,
                    );
                }
                Layer::MaxPool { input, output } => {
                    let (x, y) = (numel(input), numel(output));
                    add(
                        format!("max pool fwd {input:?}"),
                        forwards,
                        0.0,
                        (x + y) * e,
                    );
                    add(
                        format!("max pool bwd {input:?}"),
                        backwards,
                        0.0,
                        (2.0 * x + y) * e,
                    );
                }
                Layer::AvgPool { input } => {
                    let (x, y) = (numel(input), (input[0] * input[3]) as f64);
                    add(
                        format!("avg pool fwd {input:?}"),
                        forwards,
                        0.0,
                        (x + y) * e,
                    );
                    add(
                        format!("avg pool bwd {input:?}"),
                        backwards,
                        0.0,
                        (x + y) * e,
                    );
                }
            }
        }
    }
    // The flat f32 buffers: EMA (read t and s, write t); the casts of both
    // networks' weights to the compute precision; zeroing and accumulating
    // the gradients; their check; SGD (read w, g, v, write w, v).
    let (student, teacher) = params(net);
    let (p, t) = (student as f64, teacher as f64);
    add("ema teacher".into(), 1, 0.0, 12.0 * t);
    if dtype != DType::F32 {
        add("cast weights".into(), 1, 0.0, (4.0 + e) * (p + t));
    }
    add(
        "zero + accumulate grads".into(),
        1,
        0.0,
        (4.0 + 8.0 + e) * p,
    );
    if dtype == DType::F16 {
        add("unscale grads".into(), 1, 0.0, 8.0 * p);
    }
    add("grad check".into(), 1, 0.0, 4.0 * p);
    add("sgd".into(), 1, 0.0, 20.0 * p);
    ops.into_values().collect()
}

/// Model FLOPs of a step: its convolutions and linear layers.
pub fn model_flops(ops: &[Op]) -> f64 {
    ops.iter().map(|o| o.count as f64 * o.flops).sum()
}

/// Least bytes a step moves.
pub fn step_bytes(ops: &[Op]) -> f64 {
    ops.iter().map(|o| o.count as f64 * o.bytes).sum()
}

/// The least seconds of a step on `card`: the sum of its ops' bounds, and
/// the part of it that memory-bound ops take.
pub fn step_bound(ops: &[Op], card: &Card, dtype: DType) -> (f64, f64) {
    let total = ops.iter().map(|o| o.bound(card, dtype)).sum();
    let memory = ops
        .iter()
        .filter(|o| o.memory_bound(card, dtype))
        .map(|o| o.bound(card, dtype))
        .sum();
    (total, memory)
}

/// Prints the roofline table of a step on `card` (text, or one JSON line
/// per op and a total), with measured milliseconds beside an op's bound
/// where `measured` (ms of one run, by op name) has them.
pub fn print_table(
    net: &Net,
    dtype: DType,
    card: &Card,
    measured: &BTreeMap<String, f64>,
    json_out: bool,
) {
    let ops = step_ops(net, dtype);
    let precision = crate::pretrain::precision_name(dtype);
    let (total, memory) = step_bound(&ops, card, dtype);
    let flops = model_flops(&ops);
    let bytes = step_bytes(&ops);
    if json_out {
        for o in &ops {
            let mut line = serde_json::json!({
                "op": o.name, "count": o.count, "flops": o.flops, "bytes": o.bytes,
                "bound_ms": 1e3 * o.bound(card, dtype),
                "memory_bound": o.memory_bound(card, dtype),
            });
            if let Some(ms) = measured.get(&o.name) {
                line["measured_ms"] = serde_json::json!(ms * o.count as f64);
            }
            println!("{line}");
        }
        println!(
            "{}",
            serde_json::json!({
                "total": true, "card": card.key, "precision": precision,
                "model_flops": flops, "bytes": bytes, "bound_ms": 1e3 * total,
                "memory_bound_ms": 1e3 * memory,
                "pairs_per_s_bound": net.bs as f64 / total,
            })
        );
        return;
    }
    println!(
        "roofline of one M2T step: {} ({} stem), width {}, bs {}, {} px, {precision} on {} ({:.1} TFLOP/s dense, {:.0} GB/s)",
        net.arch,
        net.stem,
        net.width,
        net.bs,
        net.res,
        card.name,
        card.peak_flops(dtype) / 1e12,
        card.bandwidth_gbs
    );
    println!(
        "{:<64} {:>5} {:>12} {:>12} {:>10} {:>10}",
        "op (the longest bounds first)", "count", "GFLOP", "MB", "bound ms", "measured"
    );
    let mut by_bound: Vec<&Op> = ops.iter().collect();
    by_bound.sort_by(|a, b| b.bound(card, dtype).total_cmp(&a.bound(card, dtype)));
    for o in by_bound {
        let n = o.count as f64;
        let measured = measured
            .get(&o.name)
            .map_or("-".to_string(), |ms| format!("{:.3}", ms * n));
        let tag = if o.memory_bound(card, dtype) {
            " mem"
        } else {
            ""
        };
        println!(
            "{:<64} {:>5} {:>12.3} {:>12.2} {:>10.4}{tag:<4} {measured:>6}",
            o.name,
            o.count,
            n * o.flops / 1e9,
            n * o.bytes / 1e6,
            1e3 * o.bound(card, dtype),
        );
    }
    println!(
        "total: {:.1} GFLOP (model FLOPs), {:.0} MB moved at least; bound {:.3} ms/step ({:.3} ms of it memory-bound ops), at most {:.0} pairs/s",
        flops / 1e9,
        bytes / 1e6,
        1e3 * total,
        1e3 * memory,
        net.bs as f64 / total
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(arch: Arch, stem: Stem, bs: usize, res: usize) -> Net {
        Net {
            arch,
            stem,
            bs,
            res,
            width: 64,
            channels: 3,
            proj_hidden: 4096,
            proj_out: 256,
        }
    }

    #[test]
    fn resnet50_has_its_convolutions_and_forward_flops() {
        let n = net(Arch::ResNet50, Stem::ImageNet, 1, 224);
        let convs: Vec<ConvShape> = backbone_layers(&n)
            .into_iter()
            .filter_map(|l| match l {
                Layer::Conv { shape, .. } => Some(shape),
                _ => None,
            })
            .collect();
        // The stem, 16 blocks of three, 4 downsamples.
        assert_eq!(convs.len(), 53);
        let forward: f64 = convs.iter().map(|c| c.flops()).sum();
        // ≈ 4.1 G multiply-adds per 224-px image, the usual figure.
        assert!((forward / 2e9 - 4.09).abs() < 0.05, "{}", forward / 2e9);
    }

    /// A ResNet-18 of width 1 on one-channel 8-px images, batch 2, heads
    /// 4 wide (3 out): every FLOP counted here by hand, layer by layer.
    #[test]
    fn a_tiny_networks_step_flops_match_a_count_by_hand() {
        let tiny = Net {
            arch: Arch::ResNet18,
            stem: Stem::Small,
            bs: 2,
            res: 8,
            width: 1,
            channels: 1,
            proj_hidden: 4,
            proj_out: 3,
        };
        // Forward FLOPs per image, 2·out_h·out_w·k·r·s·c per convolution.
        let stem = 2 * 8 * 8 * 9; // 3×3, 1 → 1 channel at 8×8
        let stage1 = 4 * stem; // two blocks of two such convolutions
        // Stages 2–4 halve the side and double the channels: conv1 (stride
        // 2), conv2, the 1×1/2 shortcut, then a block of two conv2s.
        let stage = |side: usize, c: usize| {
            let conv1 = 2 * side * side * (2 * c) * 9 * c;
            let conv2 = 2 * side * side * (2 * c) * 9 * (2 * c);
            let shortcut = 2 * side * side * (2 * c) * c;
            conv1 + conv2 + shortcut + 2 * conv2
        };
        let backbone = stem + stage1 + stage(4, 1) + stage(2, 2) + stage(1, 4);
        assert_eq!(backbone, 18_048);
        // Features 8·width = 8; projector 8 → 4 → 3; predictor 3 → 4 → 3.
        let projector = 2 * (8 * 4 + 4 * 3);
        let predictor = 2 * (3 * 4 + 4 * 3);
        let teacher = 2 * (backbone + projector); // two views, forward
        let student = backbone + projector + predictor;
        // Two views forward, and backward (data + weights) but the stem's
        // gradient with respect to the images.
        let per_image = teacher + 2 * student + 2 * (2 * student - stem);
        let step = 2 * per_image; // batch 2
        assert_eq!(step, 286_144);
        for dtype in [DType::F32, DType::BF16] {
            let ops = step_ops(&tiny, dtype);
            assert_eq!(model_flops(&ops), step as f64, "{dtype}");
        }
        // The stem and the first stage's four convolutions share a shape:
        // 2·2·64·9 FLOPs and x, w, y in bf16 each, forward four times
        // (teacher and student, two views), backward data twice for all
        // but the stem.
        let ops = step_ops(&tiny, DType::BF16);
        let find = |name: &str| ops.iter().find(|o| o.name == name).expect(name);
        let shape = "[2, 8, 8, 1]*[1, 3, 3, 1]/1,1";
        let fwd = find(&format!("conv fwd {shape}"));
        assert_eq!((fwd.count, fwd.flops), (5 * 4, 2.0 * 2.0 * 64.0 * 9.0));
        assert_eq!(fwd.bytes, 2.0 * (128.0 + 9.0 + 128.0));
        assert_eq!(find(&format!("conv bwd data {shape}")).count, 4 * 2);
        assert_eq!(find(&format!("conv bwd filter {shape}")).count, 5 * 2);
        // The parameters the optimiser and EMA move are the model's own.
        let model = nets::m2t::M2t::new(
            nets::m2t::M2tConfig {
                proj_hidden: 4,
                proj_out: 3,
                pred_hidden: 4,
                ..nets::m2t::M2tConfig::new(nets::resnet::ResNetConfig {
                    arch: Arch::ResNet18,
                    stem: Stem::Small,
                    in_channels: 1,
                    width: 1,
                })
            },
            0,
        )
        .unwrap();
        assert_eq!(
            params(&tiny),
            (model.student().num_params(), model.teacher().num_params())
        );
        // The bound is the sum of each op's larger of compute and memory time.
        let card = Card::by_key("h200").unwrap();
        let (total, memory) = step_bound(&ops, card, DType::BF16);
        let by_hand: f64 = ops
            .iter()
            .map(|o| {
                let t = (o.flops / 989.4e12).max(o.bytes / 4800e9);
                o.count as f64 * t
            })
            .sum();
        assert!(
            (total - by_hand).abs() <= 1e-12 * by_hand,
            "{total} vs {by_hand}"
        );
        assert!(memory > 0.0 && memory <= total);
    }

    #[test]
    fn resnet18_counts_its_convolutions() {
        // Small stem, then 8 blocks of two and 3 downsamples.
        let convs = backbone_layers(&net(Arch::ResNet18, Stem::Small, 2, 32))
            .into_iter()
            .filter(|l| matches!(l, Layer::Conv { .. }))
            .count();
        assert_eq!(convs, 20);
    }

    #[test]
    fn cards_are_found_by_key_and_by_driver_name() {
        assert_eq!(Card::by_key("H200").unwrap().bandwidth_gbs, 4800.0);
        assert!(
            Card::by_key("tpu")
                .unwrap_err()
                .to_string()
                .contains("h100-sxm")
        );
        for (name, key) in [
            ("NVIDIA H100 80GB HBM3", "h100-sxm"),
            ("NVIDIA H100 PCIe", "h100-pcie"),
            ("NVIDIA H200", "h200"),
            ("NVIDIA A100-SXM4-80GB", "a100"),
            ("NVIDIA GeForce RTX 4090", "rtx-4090"),
            ("NVIDIA L4", "l4"),
            ("NVIDIA L40S", "l40s"),
        ] {
            assert_eq!(Card::by_gpu_name(name).map(|c| c.key), Some(key), "{name}");
        }
        assert_eq!(Card::by_gpu_name("Tesla T4"), None);
    }
}
