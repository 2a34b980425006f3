//! Layers: each owns named handles into the network's flat parameter store, and
//! batch-norm layers an index into the network's [`BnBuffers`].

use crate::{Error, Result};
use engine::ops::{
    BatchStats, BesselCorrection, BnNorm, Conv2dParams, momentum_bn_update, update_running_stats,
};
use engine::{
    DType, ParamId, ParamKind, ParamStoreBuilder, ParamVars, Rng, Scalar, Tape, Tensor, Var,
};

/// Batch-norm ε, PyTorch's default and the method's.
pub const BN_EPS: f64 = 1e-5;
/// Training-mode running-statistics momentum (PyTorch's 0.1).
pub const BN_MOMENTUM: f64 = 0.1;

/// Declares a network's parameters and batch-norm buffers, in order.
pub struct NetBuilder {
    /// The parameters declared so far.
    pub params: ParamStoreBuilder,
    /// `(name, channels)` of each batch-norm layer declared so far.
    pub bn_layers: Vec<(String, usize)>,
    /// Initialisation randomness.
    pub rng: Rng,
}

impl NetBuilder {
    /// An empty network whose initial weights are drawn from `seed`.
    pub fn new(seed: u64) -> Self {
        NetBuilder {
            params: ParamStoreBuilder::new(),
            bn_layers: Vec::new(),
            rng: Rng::new(seed),
        }
    }
}

/// How batch-norm layers normalise in one forward pass.
#[derive(Clone, Copy, Debug)]
pub enum BnMode<'a> {
    /// Batch statistics (training); each layer reports them for the running update.
    Train,
    /// The buffers' statistics (evaluation).
    Eval,
    /// Momentum BN with weight `beta` on the batch statistics; each layer reports
    /// them for the lazy history update.
    Momentum {
        /// Weight of the batch statistics, 1 → 0 over training.
        beta: &'a Scalar,
        /// Extra Bessel correction (the release's double correction by default).
        correction: BesselCorrection,
    },
}

/// Per-layer statistics buffers: running mean/variance for ordinary BN, or the
/// Momentum-BN history. Initial mean 0, variance 1.
#[derive(Clone, Debug)]
pub struct BnBuffers {
    names: Vec<String>,
    mean: Vec<Tensor>,
    var: Vec<Tensor>,
}

impl BnBuffers {
    /// Fresh buffers (mean 0, variance 1) for the given `(name, channels)` layers.
    pub fn new(layers: &[(String, usize)]) -> Result<Self> {
        let make = |c: usize, v: f32| Tensor::from_vec(vec![v; c], [c]);
        Ok(BnBuffers {
            names: layers.iter().map(|(n, _)| n.clone()).collect(),
            mean: layers
                .iter()
                .map(|&(_, c)| make(c, 0.0))
                .collect::<Result<_, _>>()?,
            var: layers
                .iter()
                .map(|&(_, c)| make(c, 1.0))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The buffers copied to `device`.
    pub fn to_device(&self, device: engine::Device) -> Result<Self> {
        let move_all = |v: &[Tensor]| {
            v.iter()
                .map(|t| t.to_device(device))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(BnBuffers {
            names: self.names.clone(),
            mean: move_all(&self.mean)?,
            var: move_all(&self.var)?,
        })
    }

    /// Number of batch-norm layers.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True for a network without batch norm.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Layer `i`'s name (its parameters are `{name}.weight` and `{name}.bias`).
    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// Layer `i`'s mean buffer.
    pub fn mean(&self, i: usize) -> &Tensor {
        &self.mean[i]
    }

    /// Layer `i`'s variance buffer.
    pub fn var(&self, i: usize) -> &Tensor {
        &self.var[i]
    }

    /// Every layer's mean buffer, then every variance buffer, to update in
    /// place (the data-parallel average).
    pub fn tensors_mut(&mut self) -> impl Iterator<Item = &mut Tensor> {
        self.mean.iter_mut().chain(self.var.iter_mut())
    }

    /// Overwrites layer `i`'s buffers; `mean` and `var` must have its channel count.
    pub fn set(&mut self, i: usize, mean: &[f32], var: &[f32]) -> Result<()> {
        let c = self.mean[i].numel();
        if mean.len() != c || var.len() != c {
            return Err(Error::Config(format!(
                "{}: {} mean and {} variance values for {c} channels",
                self.names[i],
                mean.len(),
                var.len()
            )));
        }
        let device = self.mean[i].device();
        self.mean[i] = Tensor::from_vec(mean.to_vec(), [c])?.to_device(device)?;
        self.var[i] = Tensor::from_vec(var.to_vec(), [c])?.to_device(device)?;
        Ok(())
    }

    /// The training-mode running update from one forward's statistics.
    pub fn update_running(&mut self, stats: &[Option<BatchStats>], momentum: f64) -> Result<()> {
        for (i, s) in stats.iter().enumerate() {
            if let Some(s) = s {
                update_running_stats(&mut self.mean[i], &mut self.var[i], s, momentum)?;
            }
        }
        Ok(())
    }

    /// Momentum BN's lazy history update from both views' statistics.
    pub fn update_momentum(
        &mut self,
        view1: &[Option<BatchStats>],
        view2: &[Option<BatchStats>],
        beta: &Scalar,
        correction: BesselCorrection,
    ) -> Result<()> {
        for (i, (a, b)) in view1.iter().zip(view2).enumerate() {
            if let (Some(a), Some(b)) = (a, b) {
                momentum_bn_update(&mut self.mean[i], &mut self.var[i], a, b, beta, correction)?;
            }
        }
        Ok(())
    }
}

/// One forward pass's context: the tape, the parameter variables, the BN mode
/// and buffers, and the batch statistics each BN layer reports.
pub struct Forward<'a> {
    /// Where ops are recorded (or not, for a no-grad tape).
    pub tape: &'a mut Tape,
    /// The network's parameters on `tape`.
    pub params: &'a ParamVars,
    /// How batch norm normalises.
    pub mode: BnMode<'a>,
    /// Running statistics or Momentum-BN history.
    pub buffers: &'a BnBuffers,
    /// Batch statistics per BN layer, filled in as the forward runs.
    pub stats: Vec<Option<BatchStats>>,
}

impl<'a> Forward<'a> {
    /// A forward pass over `buffers.len()` BN layers.
    pub fn new(
        tape: &'a mut Tape,
        params: &'a ParamVars,
        mode: BnMode<'a>,
        buffers: &'a BnBuffers,
    ) -> Self {
        Forward {
            tape,
            params,
            mode,
            buffers,
            stats: vec![None; buffers.len()],
        }
    }
}

/// A bias-free convolution with Kaiming-normal (fan-out, ReLU gain) init.
#[derive(Clone, Debug)]
pub struct Conv2d {
    /// KRSC weight.
    pub weight: ParamId,
    /// Stride and padding.
    pub params: Conv2dParams,
}

impl Conv2d {
    /// Declares `{name}.weight` of shape `[cout, k, k, cin]`.
    pub fn new(
        b: &mut NetBuilder,
        name: &str,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let std = (2.0 / (cout * kernel * kernel) as f64).sqrt();
        let init = b.rng.normal_vec(cout * kernel * kernel * cin, std);
        Ok(Conv2d {
            weight: b.params.add(
                format!("{name}.weight"),
                [cout, kernel, kernel, cin],
                ParamKind::Weight,
                init,
            )?,
            params: Conv2dParams { stride, padding },
        })
    }

    /// `conv(x)`.
    pub fn forward(&self, f: &mut Forward, x: &Var) -> Result<Var> {
        Ok(f.tape.conv2d(x, f.params.get(self.weight), self.params)?)
    }
}

/// Batch norm over the last axis, γ = 1 and β = 0 initially.
#[derive(Clone, Debug)]
pub struct BatchNorm {
    /// Scale γ (`{name}.weight`).
    pub gamma: ParamId,
    /// Shift β (`{name}.bias`).
    pub beta: ParamId,
    /// Index into the network's [`BnBuffers`].
    pub index: usize,
}

impl BatchNorm {
    /// Declares `{name}.weight`, `{name}.bias` and the buffers of a `channels`-wide BN.
    pub fn new(b: &mut NetBuilder, name: &str, channels: usize) -> Result<Self> {
        let gamma = b.params.add(
            format!("{name}.weight"),
            [channels],
            ParamKind::BnScale,
            vec![1.0; channels],
        )?;
        let beta = b.params.add(
            format!("{name}.bias"),
            [channels],
            ParamKind::BnShift,
            vec![0.0; channels],
        )?;
        b.bn_layers.push((name.to_string(), channels));
        Ok(BatchNorm {
            gamma,
            beta,
            index: b.bn_layers.len() - 1,
        })
    }

    /// Normalises `x` as `f.mode` says, recording the batch statistics.
    pub fn forward(&self, f: &mut Forward, x: &Var) -> Result<Var> {
        let norm = self.norm(f);
        let (gamma, beta) = (f.params.get(self.gamma), f.params.get(self.beta));
        let (y, stats) = f.tape.batch_norm(x, gamma, beta, norm, BN_EPS)?;
        f.stats[self.index] = stats;
        Ok(y)
    }

    /// `relu(bn(x))`, one fused kernel on a GPU.
    pub fn forward_relu(&self, f: &mut Forward, x: &Var) -> Result<Var> {
        let norm = self.norm(f);
        let (gamma, beta) = (f.params.get(self.gamma), f.params.get(self.beta));
        let (y, stats) = f.tape.batch_norm_relu(x, gamma, beta, norm, BN_EPS)?;
        f.stats[self.index] = stats;
        Ok(y)
    }

    /// `relu(bn(x) + skip)`, the end of a residual block, one fused kernel on a GPU.
    pub fn forward_add_relu(&self, f: &mut Forward, x: &Var, skip: &Var) -> Result<Var> {
        let norm = self.norm(f);
        let (gamma, beta) = (f.params.get(self.gamma), f.params.get(self.beta));
        let (y, stats) = f
            .tape
            .batch_norm_add_relu(x, skip, gamma, beta, norm, BN_EPS)?;
        f.stats[self.index] = stats;
        Ok(y)
    }

    /// The statistics `f.mode` normalises with.
    fn norm<'a>(&self, f: &Forward<'a>) -> BnNorm<'a> {
        let buffers: &'a BnBuffers = f.buffers;
        let (mean, var) = (buffers.mean(self.index), buffers.var(self.index));
        match f.mode {
            BnMode::Train => BnNorm::Batch,
            BnMode::Eval => BnNorm::Running { mean, var },
            BnMode::Momentum { beta, correction } => BnNorm::Momentum {
                mean,
                var,
                beta,
                correction,
            },
        }
    }
}

/// A fully connected layer with bias, PyTorch's default init (U(±1/√fan_in)).
#[derive(Clone, Debug)]
pub struct Linear {
    /// `[out, in]` weight.
    pub weight: ParamId,
    /// `[out]` bias.
    pub bias: ParamId,
}

impl Linear {
    /// Declares `{name}.weight` and `{name}.bias`.
    pub fn new(b: &mut NetBuilder, name: &str, fin: usize, fout: usize) -> Result<Self> {
        let bound = 1.0 / (fin as f64).sqrt();
        let w = b.rng.uniform_vec(fout * fin, bound);
        let bias = b.rng.uniform_vec(fout, bound);
        Ok(Linear {
            weight: b
                .params
                .add(format!("{name}.weight"), [fout, fin], ParamKind::Weight, w)?,
            bias: b
                .params
                .add(format!("{name}.bias"), [fout], ParamKind::Bias, bias)?,
        })
    }

    /// `x·wᵀ + b`.
    pub fn forward(&self, f: &mut Forward, x: &Var) -> Result<Var> {
        Ok(f.tape
            .linear(x, f.params.get(self.weight), Some(f.params.get(self.bias)))?)
    }
}

/// A store's parameters on `tape` as `dtype` copies (f64 for gradient checks);
/// the plain [`engine::ParamStore::attach`] when `dtype` is f32.
pub fn attach_as(store: &engine::ParamStore, tape: &mut Tape, dtype: DType) -> Result<ParamVars> {
    if dtype == DType::F32 {
        return Ok(store.attach(tape));
    }
    let vars = store
        .ids()
        .map(|id| Ok(tape.param(store.value(id).to_dtype(dtype)?)))
        .collect::<Result<_>>()?;
    Ok(ParamVars::from_vars(vars))
}
