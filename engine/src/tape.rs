//! The autograd tape: the forward pass recorded as data, one [`Node`] per op,
//! and a backward pass that walks it in reverse.
//!
//! A [`Var`] is a value plus, when it needs a gradient, its slot on the tape.
//! Ops whose inputs need no gradient (or any op on a no-grad tape) record
//! nothing, so the teacher's forward keeps no activations alive. Backward
//! consumes the tape and drops each node, with its saved tensors, as soon as
//! that node is done.

use crate::error::{Error, Result, shape_err};
use crate::ops::batchnorm::groups::{self as bn_groups, GroupedSaved};
use crate::ops::batchnorm::{BatchStats, BnGrads, BnNorm, Epilogue};
use crate::ops::{Conv2dParams, PoolParams, cast, conv, elementwise, linear, loss, pool};
use crate::{DType, Shape, Tensor};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT_TAPE_ID: AtomicU64 = AtomicU64::new(1);

/// A value in a computation, tracked for gradients when it depends on a parameter.
#[derive(Clone, Debug)]
pub struct Var {
    value: Tensor,
    /// `(tape id, slot)` when gradients flow to this value.
    slot: Option<(u64, usize)>,
}

impl Var {
    /// The value.
    pub fn value(&self) -> &Tensor {
        &self.value
    }

    /// The value's shape.
    pub fn shape(&self) -> &Shape {
        self.value.shape()
    }

    /// True when backward will produce a gradient for this value.
    pub fn requires_grad(&self) -> bool {
        self.slot.is_some()
    }
}

/// One recorded op: its inputs' slots (`None` where no gradient is needed), its
/// output slot, and what its backward needs.
#[derive(Debug)]
enum Node {
    Conv2d {
        x: Option<usize>,
        w: Option<usize>,
        out: usize,
        saved_x: Tensor,
        saved_w: Tensor,
        params: Conv2dParams,
    },
    BatchNorm {
        x: Option<usize>,
        gamma: Option<usize>,
        beta: Option<usize>,
        out: usize,
        saved: GroupedSaved,
    },
    /// `max(bn(x), 0)`, fused.
    BatchNormRelu {
        x: Option<usize>,
        gamma: Option<usize>,
        beta: Option<usize>,
        out: usize,
        saved: GroupedSaved,
    },
    /// `max(bn(x) + residual, 0)`, fused.
    BatchNormAddRelu {
        x: Option<usize>,
        residual: Option<usize>,
        gamma: Option<usize>,
        beta: Option<usize>,
        out: usize,
        saved: GroupedSaved,
    },
    Relu {
        x: Option<usize>,
        out: usize,
        saved_y: Tensor,
    },
    Add {
        a: Option<usize>,
        b: Option<usize>,
        out: usize,
    },
    MaxPool {
        x: Option<usize>,
        out: usize,
        saved: pool::MaxSaved,
        input: Shape,
    },
    GlobalAvgPool {
        x: Option<usize>,
        out: usize,
        input: Shape,
    },
    Linear {
        x: Option<usize>,
        w: Option<usize>,
        b: Option<usize>,
        out: usize,
        saved_x: Tensor,
        saved_w: Tensor,
    },
    L2Normalize {
        x: Option<usize>,
        out: usize,
        saved_y: Tensor,
        norms: Tensor,
    },
    M2tLoss {
        /// Slots of `q1, k1, q2, k2`.
        inputs: [Option<usize>; 4],
        out: usize,
        saved: [Tensor; 4],
    },
    CrossEntropy {
        logits: Option<usize>,
        out: usize,
        probs: Tensor,
        labels: Tensor,
    },
    Reshape {
        x: Option<usize>,
        out: usize,
        input: Shape,
    },
    Cast {
        x: Option<usize>,
        out: usize,
        from: DType,
    },
}

impl Node {
    fn name(&self) -> &'static str {
        match self {
            Node::Conv2d { .. } => "conv2d",
            Node::BatchNorm { .. } => "batch_norm",
            Node::BatchNormRelu { .. } => "batch_norm_relu",
            Node::BatchNormAddRelu { .. } => "batch_norm_add_relu",
            Node::Relu { .. } => "relu",
            Node::Add { .. } => "add",
            Node::MaxPool { .. } => "max_pool2d",
            Node::GlobalAvgPool { .. } => "global_avg_pool",
            Node::Linear { .. } => "linear",
            Node::L2Normalize { .. } => "l2_normalize",
            Node::M2tLoss { .. } => "m2t_loss",
            Node::CrossEntropy { .. } => "cross_entropy",
            Node::Reshape { .. } => "reshape",
            Node::Cast { .. } => "cast",
        }
    }

    fn out(&self) -> usize {
        match *self {
            Node::Conv2d { out, .. }
            | Node::BatchNorm { out, .. }
            | Node::BatchNormRelu { out, .. }
            | Node::BatchNormAddRelu { out, .. }
            | Node::Relu { out, .. }
            | Node::Add { out, .. }
            | Node::MaxPool { out, .. }
            | Node::GlobalAvgPool { out, .. }
            | Node::Linear { out, .. }
            | Node::L2Normalize { out, .. }
            | Node::M2tLoss { out, .. }
            | Node::CrossEntropy { out, .. }
            | Node::Reshape { out, .. }
            | Node::Cast { out, .. } => out,
        }
    }

    fn inputs(&self) -> Vec<Option<usize>> {
        match *self {
            Node::Conv2d { x, w, .. } => vec![x, w],
            Node::BatchNorm { x, gamma, beta, .. } | Node::BatchNormRelu { x, gamma, beta, .. } => {
                vec![x, gamma, beta]
            }
            Node::BatchNormAddRelu {
                x,
                residual,
                gamma,
                beta,
                ..
            } => vec![x, residual, gamma, beta],
            Node::Add { a, b, .. } => vec![a, b],
            Node::Linear { x, w, b, .. } => vec![x, w, b],
            Node::M2tLoss { inputs, .. } => inputs.to_vec(),
            Node::Relu { x, .. }
            | Node::MaxPool { x, .. }
            | Node::GlobalAvgPool { x, .. }
            | Node::L2Normalize { x, .. }
            | Node::Reshape { x, .. }
            | Node::Cast { x, .. } => vec![x],
            Node::CrossEntropy { logits, .. } => vec![logits],
        }
    }
}

/// Records ops for a backward pass, or (see [`Tape::no_grad`]) records nothing.
#[derive(Debug)]
pub struct Tape {
    id: u64,
    recording: bool,
    nodes: Vec<Node>,
    slots: usize,
    /// Per slot, the first node that read it (`None`: no node yet): once
    /// backward has passed that node, the slot's gradient is complete.
    first_reader: Vec<Option<usize>>,
    /// Groups each batch norm splits its batch into (ghost BN).
    bn_groups: usize,
}

impl Default for Tape {
    fn default() -> Self {
        Tape::new()
    }
}

impl Tape {
    /// A recording tape.
    pub fn new() -> Self {
        Tape {
            id: NEXT_TAPE_ID.fetch_add(1, Ordering::Relaxed),
            recording: true,
            nodes: Vec::new(),
            slots: 0,
            first_reader: Vec::new(),
            bn_groups: 1,
        }
    }

    /// A tape that records nothing: ops just compute, and intermediates are freed
    /// as soon as the caller drops them (the teacher's forward).
    pub fn no_grad() -> Self {
        Tape {
            recording: false,
            ..Tape::new()
        }
    }

    /// Makes every batch norm from now on normalise each of `groups` equal
    /// slices of its batch over the slice's own statistics ("ghost" batch
    /// norm: what `groups` data-parallel ranks would each compute), and
    /// report the mean of the slices' statistics. 1, the default, is plain
    /// batch norm; batches that do not split into groups of at least two
    /// values per channel are refused by the op.
    pub fn set_bn_groups(&mut self, groups: usize) -> Result<()> {
        if groups == 0 {
            return Err(Error::Tape("batch norm needs at least one group".into()));
        }
        self.bn_groups = groups;
        Ok(())
    }

    /// True unless this is a [`Tape::no_grad`] tape.
    pub fn is_recording(&self) -> bool {
        self.recording
    }

    /// Number of recorded ops.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when no op has been recorded.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// A value that needs no gradient (inputs, labels, frozen weights).
    pub fn constant(&self, value: Tensor) -> Var {
        Var { value, slot: None }
    }

    /// A value that needs a gradient (a parameter). On a no-grad tape this is a constant.
    pub fn param(&mut self, value: Tensor) -> Var {
        let slot = self.recording.then(|| (self.id, self.new_slot()));
        Var { value, slot }
    }

    fn new_slot(&mut self) -> usize {
        self.slots += 1;
        self.first_reader.push(None);
        self.slots - 1
    }

    fn slot_of(&self, v: &Var) -> Result<Option<usize>> {
        match v.slot {
            Some((tape, _)) if tape != self.id => Err(Error::Tape(
                "a variable from another tape was passed to this one".into(),
            )),
            Some((_, s)) => Ok(Some(s)),
            None => Ok(None),
        }
    }

    /// Wraps an op's output; records `node` (built from the input slots and the
    /// output slot) only if recording and some input needs a gradient.
    fn record(
        &mut self,
        inputs: &[&Var],
        value: Tensor,
        node: impl FnOnce(&[Option<usize>], usize) -> Node,
    ) -> Result<Var> {
        let slots = inputs
            .iter()
            .map(|v| self.slot_of(v))
            .collect::<Result<Vec<_>>>()?;
        if !self.recording || slots.iter().all(Option::is_none) {
            return Ok(Var { value, slot: None });
        }
        let index = self.nodes.len();
        for &slot in slots.iter().flatten() {
            self.first_reader[slot].get_or_insert(index);
        }
        let out = self.new_slot();
        self.nodes.push(node(&slots, out));
        Ok(Var {
            value,
            slot: Some((self.id, out)),
        })
    }

    /// 2-D convolution of NHWC `x` with KRSC weights `w` (no bias).
    pub fn conv2d(&mut self, x: &Var, w: &Var, params: Conv2dParams) -> Result<Var> {
        let y = conv::forward(&x.value, &w.value, params)?;
        let (saved_x, saved_w) = (x.value.clone(), w.value.clone());
        self.record(&[x, w], y, |s, out| Node::Conv2d {
            x: s[0],
            w: s[1],
            out,
            saved_x,
            saved_w,
            params,
        })
    }

    /// Batch normalisation over the last axis of `[n,c]` or `[n,h,w,c]`.
    ///
    /// Returns the output and, except for [`BnNorm::Running`], the batch
    /// statistics, for [`crate::ops::update_running_stats`] or
    /// [`crate::ops::momentum_bn_update`].
    pub fn batch_norm(
        &mut self,
        x: &Var,
        gamma: &Var,
        beta: &Var,
        norm: BnNorm,
        eps: f64,
    ) -> Result<(Var, Option<BatchStats>)> {
        self.record_bn(
            [x, gamma, beta],
            Epilogue::None,
            None,
            (norm, eps),
            |s, out, saved| Node::BatchNorm {
                x: s[0],
                gamma: s[1],
                beta: s[2],
                out,
                saved,
            },
        )
    }

    /// `max(batch_norm(x), 0)`: [`Tape::batch_norm`] then [`Tape::relu`], one
    /// kernel on a GPU.
    pub fn batch_norm_relu(
        &mut self,
        x: &Var,
        gamma: &Var,
        beta: &Var,
        norm: BnNorm,
        eps: f64,
    ) -> Result<(Var, Option<BatchStats>)> {
        self.record_bn(
            [x, gamma, beta],
            Epilogue::Relu,
            None,
            (norm, eps),
            |s, out, saved| Node::BatchNormRelu {
                x: s[0],
                gamma: s[1],
                beta: s[2],
                out,
                saved,
            },
        )
    }

    /// `max(batch_norm(x) + residual, 0)`: a residual block's join,
    /// [`Tape::batch_norm`], [`Tape::add`] and [`Tape::relu`] in one kernel on
    /// a GPU. `residual` has `x`'s shape and dtype.
    pub fn batch_norm_add_relu(
        &mut self,
        x: &Var,
        residual: &Var,
        gamma: &Var,
        beta: &Var,
        norm: BnNorm,
        eps: f64,
    ) -> Result<(Var, Option<BatchStats>)> {
        self.record_bn(
            [x, gamma, beta],
            Epilogue::AddRelu(&residual.value),
            Some(residual),
            (norm, eps),
            |s, out, saved| Node::BatchNormAddRelu {
                x: s[0],
                gamma: s[1],
                beta: s[2],
                residual: s[3],
                out,
                saved,
            },
        )
    }

    /// Runs a batch-norm forward with `epilogue` and records it as `node`;
    /// `residual` is the epilogue's residual variable, if any.
    fn record_bn(
        &mut self,
        [x, gamma, beta]: [&Var; 3],
        epilogue: Epilogue,
        residual: Option<&Var>,
        (norm, eps): (BnNorm, f64),
        node: impl FnOnce(&[Option<usize>], usize, GroupedSaved) -> Node,
    ) -> Result<(Var, Option<BatchStats>)> {
        let (y, stats, saved) = bn_groups::forward(
            &x.value,
            &gamma.value,
            &beta.value,
            (norm, eps),
            epilogue,
            self.bn_groups,
        )?;
        let mut vars = vec![x, gamma, beta];
        vars.extend(residual);
        let y = self.record(&vars, y, |s, out| node(s, out, saved))?;
        Ok((y, stats))
    }

    /// `max(x, 0)`.
    pub fn relu(&mut self, x: &Var) -> Result<Var> {
        let y = elementwise::relu(&x.value)?;
        let saved_y = y.clone();
        self.record(&[x], y, |s, out| Node::Relu {
            x: s[0],
            out,
            saved_y,
        })
    }

    /// Elementwise `a + b` (same shape): the residual join.
    pub fn add(&mut self, a: &Var, b: &Var) -> Result<Var> {
        let y = elementwise::add(&a.value, &b.value)?;
        self.record(&[a, b], y, |s, out| Node::Add {
            a: s[0],
            b: s[1],
            out,
        })
    }

    /// Max pooling of NHWC `x`; ties go to the first element in scan order.
    pub fn max_pool2d(&mut self, x: &Var, params: PoolParams) -> Result<Var> {
        let (y, saved) = pool::max_forward(&x.value, params)?;
        let input = x.shape().clone();
        self.record(&[x], y, |s, out| Node::MaxPool {
            x: s[0],
            out,
            saved,
            input,
        })
    }

    /// `[n,h,w,c] → [n,c]`: the mean over each image's pixels.
    pub fn global_avg_pool(&mut self, x: &Var) -> Result<Var> {
        let y = pool::avg_forward(&x.value)?;
        let input = x.shape().clone();
        self.record(&[x], y, |s, out| Node::GlobalAvgPool {
            x: s[0],
            out,
            input,
        })
    }

    /// `x·wᵀ + b` for `x [n,in]`, `w [out,in]`, optional `b [out]`.
    pub fn linear(&mut self, x: &Var, w: &Var, b: Option<&Var>) -> Result<Var> {
        let y = linear::forward(&x.value, &w.value, b.map(Var::value))?;
        let (saved_x, saved_w) = (x.value.clone(), w.value.clone());
        let inputs: Vec<&Var> = [Some(x), Some(w), b].into_iter().flatten().collect();
        let has_bias = b.is_some();
        self.record(&inputs, y, |s, out| Node::Linear {
            x: s[0],
            w: s[1],
            b: if has_bias { s[2] } else { None },
            out,
            saved_x,
            saved_w,
        })
    }

    /// Scales each row of `[n,f]` to unit L2 norm (norms clamped at 1e-12).
    pub fn l2_normalize(&mut self, x: &Var) -> Result<Var> {
        let (y, norms) = loss::l2_normalize(&x.value)?;
        let saved_y = y.clone();
        self.record(&[x], y, |s, out| Node::L2Normalize {
            x: s[0],
            out,
            saved_y,
            norms,
        })
    }

    /// The symmetric M2T loss `mean_i[(2 − 2⟨q1,k1⟩) + (2 − 2⟨q2,k2⟩)]` over
    /// unit-norm `[n,f]` rows: student predictions `q`, teacher targets `k`.
    pub fn m2t_loss(&mut self, q1: &Var, k1: &Var, q2: &Var, k2: &Var) -> Result<Var> {
        let y = loss::m2t_loss(&q1.value, &k1.value, &q2.value, &k2.value)?;
        let saved = [q1, k1, q2, k2].map(|v| v.value.clone());
        self.record(&[q1, k1, q2, k2], y, |s, out| Node::M2tLoss {
            inputs: [s[0], s[1], s[2], s[3]],
            out,
            saved,
        })
    }

    /// Mean softmax cross-entropy of `[n,c]` logits against i64 `labels [n]`.
    pub fn cross_entropy(&mut self, logits: &Var, labels: &Tensor) -> Result<Var> {
        let (y, probs) = loss::cross_entropy(&logits.value, labels)?;
        let labels = labels.clone();
        self.record(&[logits], y, |s, out| Node::CrossEntropy {
            logits: s[0],
            out,
            probs,
            labels,
        })
    }

    /// The same values with another shape (e.g. flatten `[n,1,1,c]` to `[n,c]`).
    pub fn reshape(&mut self, x: &Var, shape: impl Into<Shape>) -> Result<Var> {
        let y = x.value.reshape(shape)?;
        let input = x.shape().clone();
        self.record(&[x], y, |s, out| Node::Reshape {
            x: s[0],
            out,
            input,
        })
    }

    /// Converts to another float dtype, rounding to nearest even; the gradient is
    /// cast back to the source dtype.
    pub fn cast(&mut self, x: &Var, to: DType) -> Result<Var> {
        let y = cast::cast(&x.value, to)?;
        let from = x.value.dtype();
        self.record(&[x], y, |s, out| Node::Cast { x: s[0], out, from })
    }

    /// Backpropagates from a scalar `loss` (seeded with 1), consuming the tape.
    pub fn backward(self, loss: &Var) -> Result<Gradients> {
        if loss.value.numel() != 1 {
            return Err(shape_err(
                "backward",
                format!("the loss must be a scalar, got shape {}", loss.shape()),
            ));
        }
        let seed = Tensor::full(
            loss.shape().clone(),
            1.0,
            loss.value.dtype(),
            loss.value.device(),
        )?;
        self.backward_with(loss, seed)
    }

    /// Backpropagates `seed` (the gradient of some scalar with respect to `out`),
    /// consuming the tape.
    pub fn backward_with(self, out: &Var, seed: Tensor) -> Result<Gradients> {
        self.backward_streaming(out, seed, &[], |_, _| Ok(()))
    }

    /// [`Self::backward_with`], handing the gradient of each of `watched`
    /// to `complete` (with its index in `watched`; `None` if the output
    /// does not depend on it) as soon as backward has passed every node that
    /// read it, so the variables read last in the forward pass come first,
    /// while the rest of the backward is still to run: how a data-parallel
    /// step starts averaging gradients early. Handed-over gradients are not
    /// kept in the returned [`Gradients`].
    pub fn backward_streaming(
        self,
        out: &Var,
        seed: Tensor,
        watched: &[Var],
        mut complete: impl FnMut(usize, Option<Tensor>) -> Result<()>,
    ) -> Result<Gradients> {
        let Some(start) = self.slot_of(out)? else {
            return Err(Error::Tape(
                "backward from a value that depends on no parameter (or a no-grad tape)".into(),
            ));
        };
        if seed.shape() != out.shape() || seed.dtype() != out.value.dtype() {
            return Err(shape_err(
                "backward",
                format!(
                    "seed {} {} does not match output {} {}",
                    seed.shape(),
                    seed.dtype(),
                    out.shape(),
                    out.value.dtype()
                ),
            ));
        }
        // Per node, the watched variables it is the first reader of.
        let mut completed_by: Vec<Vec<(usize, usize)>> = vec![Vec::new(); self.nodes.len()];
        for (i, var) in watched.iter().enumerate() {
            let slot = self.slot_of(var)?.ok_or_else(|| {
                Error::Tape("a watched variable needs a gradient on this tape".into())
            })?;
            match self.first_reader[slot] {
                Some(node) => completed_by[node].push((i, slot)),
                // Read by no node: nothing will ever flow into it.
                None => complete(i, None)?,
            }
        }
        let mut grads: Vec<Option<Tensor>> = vec![None; self.slots];
        grads[start] = Some(seed);
        for (index, node) in self.nodes.into_iter().enumerate().rev() {
            // Nodes the output does not depend on get no gradient; skip them.
            if let Some(dy) = grads[node.out()].take() {
                let _range = crate::nvtx::open(crate::profile::Kind::Layer, || {
                    format!("{} backward", node.name())
                });
                backward_node(node, &dy, &mut grads)?;
            }
            for &(i, slot) in &completed_by[index] {
                complete(i, grads[slot].take())?;
            }
        }
        Ok(Gradients {
            tape: self.id,
            grads,
        })
    }
}

/// Adds `g` to the gradient in `slot` (a value feeding several consumers).
fn accumulate(grads: &mut [Option<Tensor>], slot: Option<usize>, g: Tensor) -> Result<()> {
    let Some(slot) = slot else { return Ok(()) };
    grads[slot] = Some(match grads[slot].take() {
        Some(prev) => elementwise::add(&prev, &g)?,
        None => g,
    });
    Ok(())
}

/// Passes a batch norm's `dx`, `dγ` and `dβ` on.
fn accumulate_bn(
    grads: &mut [Option<Tensor>],
    [x, gamma, beta]: [Option<usize>; 3],
    g: BnGrads,
) -> Result<()> {
    accumulate(grads, x, g.dx)?;
    accumulate(grads, gamma, g.dgamma)?;
    accumulate(grads, beta, g.dbeta)
}

fn backward_node(node: Node, dy: &Tensor, grads: &mut [Option<Tensor>]) -> Result<()> {
    match node {
        Node::Conv2d {
            x,
            w,
            saved_x,
            saved_w,
            params,
            ..
        } => {
            let want = (x.is_some(), w.is_some());
            let (dx, dw) = conv::backward(&saved_x, &saved_w, dy, params, want)?;
            if let Some(dx) = dx {
                accumulate(grads, x, dx)?;
            }
            if let Some(dw) = dw {
                accumulate(grads, w, dw)?;
            }
            Ok(())
        }
        Node::BatchNorm {
            x,
            gamma,
            beta,
            saved,
            ..
        }
        | Node::BatchNormRelu {
            x,
            gamma,
            beta,
            saved,
            ..
        } => {
            let g = bn_groups::backward(&saved, dy)?;
            accumulate_bn(grads, [x, gamma, beta], g)
        }
        Node::BatchNormAddRelu {
            x,
            residual,
            gamma,
            beta,
            saved,
            ..
        } => {
            let mut g = bn_groups::backward(&saved, dy)?;
            if let Some(dresidual) = g.dresidual.take() {
                accumulate(grads, residual, dresidual)?;
            }
            accumulate_bn(grads, [x, gamma, beta], g)
        }
        Node::Relu { x, saved_y, .. } => {
            accumulate(grads, x, elementwise::relu_backward(&saved_y, dy)?)
        }
        Node::Add { a, b, .. } => {
            accumulate(grads, a, dy.clone())?;
            accumulate(grads, b, dy.clone())
        }
        Node::MaxPool {
            x, saved, input, ..
        } => accumulate(grads, x, pool::max_backward(dy, &saved, &input)?),
        Node::GlobalAvgPool { x, input, .. } => {
            accumulate(grads, x, pool::avg_backward(dy, &input)?)
        }
        Node::Linear {
            x,
            w,
            b,
            saved_x,
            saved_w,
            ..
        } => {
            let want = (x.is_some(), w.is_some(), b.is_some());
            let (dx, dw, db) = linear::backward(&saved_x, &saved_w, dy, want)?;
            if let Some(dx) = dx {
                accumulate(grads, x, dx)?;
            }
            if let Some(dw) = dw {
                accumulate(grads, w, dw)?;
            }
            if let Some(db) = db {
                accumulate(grads, b, db)?;
            }
            Ok(())
        }
        Node::L2Normalize {
            x, saved_y, norms, ..
        } => accumulate(grads, x, loss::l2_normalize_backward(&saved_y, &norms, dy)?),
        Node::M2tLoss { inputs, saved, .. } => {
            // Each input's partner in its dot product: q1↔k1, q2↔k2.
            for (i, partner) in [1, 0, 3, 2].into_iter().enumerate() {
                if inputs[i].is_some() {
                    let g = loss::m2t_loss_backward(&saved[partner], dy)?;
                    accumulate(grads, inputs[i], g)?;
                }
            }
            Ok(())
        }
        Node::CrossEntropy {
            logits,
            probs,
            labels,
            ..
        } => {
            let g = loss::cross_entropy_backward(&probs, &labels, dy)?;
            accumulate(grads, logits, g)
        }
        Node::Reshape { x, input, .. } => accumulate(grads, x, dy.reshape(input)?),
        Node::Cast { x, from, .. } => accumulate(grads, x, cast::cast(dy, from)?),
    }
}

impl fmt::Display for Tape {
    /// One line per recorded op: `#out = name(#in, …)`, `-` for inputs without gradient.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for node in &self.nodes {
            let inputs: Vec<String> = node
                .inputs()
                .iter()
                .map(|s| s.map_or("-".to_string(), |s| format!("#{s}")))
                .collect();
            writeln!(
                f,
                "#{} = {}({})",
                node.out(),
                node.name(),
                inputs.join(", ")
            )?;
        }
        Ok(())
    }
}

/// The gradients produced by [`Tape::backward`], looked up by [`Var`].
#[derive(Debug)]
pub struct Gradients {
    tape: u64,
    grads: Vec<Option<Tensor>>,
}

impl Gradients {
    /// The gradient of the loss with respect to `v`, kept for the leaves made
    /// with [`Tape::param`]. `None` if `v` needs no gradient, belongs to another
    /// tape, the loss does not depend on it, or it is an op's output (those
    /// gradients are freed as soon as backward has passed them on).
    pub fn get(&self, v: &Var) -> Option<&Tensor> {
        match v.slot {
            Some((tape, slot)) if tape == self.tape => self.grads[slot].as_ref(),
            _ => None,
        }
    }
}
