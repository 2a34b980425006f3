//! The Momentum² Teacher model (m2t-method.md §1–§3): a student (backbone,
//! projector, predictor) trained by SGD or LARS, and a teacher (backbone,
//! projector) that follows it by EMA and normalises with Momentum BN.

use crate::heads::Mlp;
use crate::layers::{BN_MOMENTUM, BnBuffers, BnMode, Forward, NetBuilder};
use crate::resnet::{ResNet, ResNetConfig};
use crate::{Error, Result};
use engine::comm::Communicator;
use engine::graph::StepGraph;
use engine::ops::{BatchStats, BesselCorrection};
use engine::optim::ema_update;
use engine::pipeline::{Readback, copy_at, copy_selected};
use engine::scaler::{DeviceScaler, LossScaler, ScalerState};
use engine::schedule::{ema_momentum, mbn_beta};
use engine::{DType, Device, ParamStore, ParamVars, Scalar, StepScalars, Tape, Tensor, Var};
use std::fmt;
use std::str::FromStr;

/// How the teacher's batch-norm layers normalise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum TeacherBn {
    /// Momentum BN in every layer (the method).
    #[default]
    Momentum,
    /// Ordinary per-view batch statistics (the paper's ablation).
    Plain,
}

impl fmt::Display for TeacherBn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TeacherBn::Momentum => "momentum",
            TeacherBn::Plain => "plain",
        })
    }
}

impl FromStr for TeacherBn {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "momentum" => Ok(TeacherBn::Momentum),
            "plain" => Ok(TeacherBn::Plain),
            _ => Err(Error::Config(format!(
                "unknown teacher BN '{s}': expected momentum or plain"
            ))),
        }
    }
}

/// Everything that shapes the M2T model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct M2tConfig {
    /// The backbone.
    pub backbone: ResNetConfig,
    /// Projector hidden width (4096 in the method).
    pub proj_hidden: usize,
    /// Projector output and predictor input/output width (256).
    pub proj_out: usize,
    /// Predictor hidden width (4096).
    pub pred_hidden: usize,
    /// Teacher batch norm: Momentum BN or the plain ablation.
    pub teacher_bn: TeacherBn,
    /// Momentum BN's Bessel correction (the release's double one by default).
    pub correction: BesselCorrection,
    /// EMA momentum at the start, m0 (0.99).
    pub ema_base: f64,
    /// The type activations and conv/linear weights are computed in: f32,
    /// or bf16/f16 on a GPU (mixed precision over the f32 master weights;
    /// batch norm, the normalisation and the loss stay f32).
    pub precision: DType,
    /// Ghost batch norm: every batch norm (student, teacher's Momentum BN,
    /// heads) normalises `bn_groups` equal slices of the batch separately,
    /// as that many data-parallel ranks would. 1 is plain batch norm.
    pub bn_groups: usize,
}

impl M2tConfig {
    /// The method's heads and schedules around `backbone`.
    pub fn new(backbone: ResNetConfig) -> Self {
        M2tConfig {
            backbone,
            proj_hidden: 4096,
            proj_out: 256,
            pred_hidden: 4096,
            teacher_bn: TeacherBn::Momentum,
            correction: BesselCorrection::Double,
            ema_base: 0.99,
            precision: DType::F32,
            bn_groups: 1,
        }
    }
}

/// Which network of the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Which {
    /// The network trained by the optimiser.
    Student,
    /// The EMA network, the one evaluated and exported.
    Teacher,
}

/// What one iteration reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    /// The symmetric loss, in [0, 8].
    pub loss: f64,
    /// The EMA momentum used this iteration.
    pub ema_momentum: f64,
    /// The Momentum-BN β used this iteration.
    pub mbn_beta: f64,
    /// True when fp16 gradients overflowed: the loss scale was lowered and
    /// the caller must skip this step's optimiser update.
    pub skip_update: bool,
}

/// The student/teacher pair with their parameters and BN buffers.
pub struct M2t {
    config: M2tConfig,
    backbone: ResNet,
    projector: Mlp,
    predictor: Mlp,
    student: ParamStore,
    teacher: ParamStore,
    student_bn: BnBuffers,
    teacher_bn: BnBuffers,
    /// The dynamic loss scale of fp16 training.
    scaler: Option<LossScaler>,
    /// Its state on the device once a step is captured: the scale then
    /// lives there, and `scaler` is brought up to date by [`M2t::loss_scale`].
    device_scaler: Option<DeviceScaler>,
    /// Where the per-step numbers live: EMA momentum, β, learning rate.
    cells: StepScalars,
}

/// The numbers of one step, from [`M2t::schedule`].
#[derive(Clone, Debug)]
pub struct StepSchedule {
    /// The EMA momentum m.
    pub ema_momentum: Scalar,
    /// Momentum BN's β.
    pub mbn_beta: Scalar,
    /// The optimiser's learning rate.
    pub lr: Scalar,
}

impl M2t {
    /// A freshly initialised pair; the teacher is an exact copy of the student.
    pub fn new(config: M2tConfig, seed: u64) -> Result<Self> {
        if config.proj_hidden == 0 || config.proj_out == 0 || config.pred_hidden == 0 {
            return Err(Error::Config("head widths must be at least 1".into()));
        }
        // The teacher declares the same leading layers as the student, so its
        // parameters and BN layers are a layout prefix of the student's.
        let declare = |with_predictor: bool| -> Result<_> {
            let mut b = NetBuilder::new(seed);
            let backbone = ResNet::new(&mut b, config.backbone)?;
            let projector = Mlp::new(
                &mut b,
                "projector",
                config.backbone.feature_dim(),
                config.proj_hidden,
                config.proj_out,
            )?;
            let predictor = if with_predictor {
                Some(Mlp::new(
                    &mut b,
                    "predictor",
                    config.proj_out,
                    config.pred_hidden,
                    config.proj_out,
                )?)
            } else {
                None
            };
            let buffers = BnBuffers::new(&b.bn_layers)?;
            Ok((backbone, projector, predictor, b.params.build()?, buffers))
        };
        let (backbone, projector, predictor, student, student_bn) = declare(true)?;
        let (_, _, _, mut teacher, teacher_bn) = declare(false)?;
        ema_update(&mut teacher, &student, 0.0)?;
        Ok(M2t {
            config,
            backbone,
            projector,
            predictor: predictor.expect("declared with a predictor"),
            student,
            teacher,
            student_bn,
            teacher_bn,
            scaler: (config.precision == DType::F16).then(LossScaler::new),
            device_scaler: None,
            cells: StepScalars::new(Device::Cpu, 3)?,
        })
    }

    /// The fp16 loss scaler (`None` in other precisions), e.g. to checkpoint it.
    pub fn scaler(&self) -> Option<&LossScaler> {
        self.scaler.as_ref()
    }

    /// The fp16 loss scaler, writable (to restore it when resuming).
    pub fn scaler_mut(&mut self) -> Option<&mut LossScaler> {
        self.scaler.as_mut()
    }

    /// The fp16 loss scaler's state (scale, good steps), read from the device
    /// once a captured step keeps it there; `None` in other precisions.
    pub fn loss_scale(&mut self) -> Result<Option<(f32, u32)>> {
        if let (Some(host), Some(device)) = (&mut self.scaler, &self.device_scaler) {
            let state = device.read()?;
            host.restore(state.scale, state.good_steps)?;
        }
        Ok(self.scaler.as_ref().map(|s| (s.scale(), s.good_steps())))
    }

    /// The pair moved to `device` (parameters, gradients and BN buffers).
    pub fn to_device(self, device: Device) -> Result<M2t> {
        if self.device_scaler.is_some() {
            return Err(Error::Config(
                "a model whose step was captured stays on its device".into(),
            ));
        }
        Ok(M2t {
            student: self.student.to_device(device)?,
            teacher: self.teacher.to_device(device)?,
            student_bn: self.student_bn.to_device(device)?,
            teacher_bn: self.teacher_bn.to_device(device)?,
            cells: StepScalars::new(device, 3)?,
            ..self
        })
    }

    /// Where the parameters live.
    pub fn device(&self) -> Device {
        self.student.device()
    }

    /// `images` on this model's device, in its compute precision.
    fn input(&self, images: &Tensor) -> Result<Tensor> {
        Ok(images
            .to_device(self.device())?
            .to_dtype(self.config.precision)?)
    }

    /// `x` in f32, where normalisation and the loss run.
    fn widened(&self, tape: &mut Tape, x: &Var) -> Result<Var> {
        Ok(if x.value().dtype() == DType::F32 {
            x.clone()
        } else {
            tape.cast(x, DType::F32)?
        })
    }

    /// The configuration.
    pub fn config(&self) -> &M2tConfig {
        &self.config
    }

    /// The student's parameters (and accumulated gradients).
    pub fn student(&self) -> &ParamStore {
        &self.student
    }

    /// The student's parameters, for the optimiser step.
    pub fn student_mut(&mut self) -> &mut ParamStore {
        &mut self.student
    }

    /// The teacher's parameters.
    pub fn teacher(&self) -> &ParamStore {
        &self.teacher
    }

    /// A network's parameters and BN buffers (running statistics for the
    /// student, Momentum-BN history for the teacher).
    pub fn network(&self, which: Which) -> (&ParamStore, &BnBuffers) {
        match which {
            Which::Student => (&self.student, &self.student_bn),
            Which::Teacher => (&self.teacher, &self.teacher_bn),
        }
    }

    /// A network's parameters and BN buffers, writable (import, resume).
    pub fn network_mut(&mut self, which: Which) -> (&mut ParamStore, &mut BnBuffers) {
        match which {
            Which::Student => (&mut self.student, &mut self.student_bn),
            Which::Teacher => (&mut self.teacher, &mut self.teacher_bn),
        }
    }

    /// The backbone's structure (shared by student and teacher).
    pub fn backbone(&self) -> &ResNet {
        &self.backbone
    }

    /// Eval-mode backbone features `[n, feature_dim]` of NHWC images: the
    /// student normalises with its running statistics, the teacher with its
    /// Momentum-BN history.
    pub fn features(&self, which: Which, images: &Tensor) -> Result<Tensor> {
        Ok(self
            .device_features(which, images)?
            .to_device(Device::Cpu)?)
    }

    /// [`M2t::features`] left on the model's device (f32), computed there in
    /// the training precision: for evaluation that stays on the GPU.
    pub fn device_features(&self, which: Which, images: &Tensor) -> Result<Tensor> {
        let (store, buffers) = self.network(which);
        let mut tape = Tape::no_grad();
        let params = store.attach_mixed(&mut tape, self.config.precision)?;
        let mut f = Forward::new(&mut tape, &params, BnMode::Eval, buffers);
        let x = f.tape.constant(self.input(images)?);
        let h = self.backbone.forward(&mut f, &x)?;
        Ok(self.widened(&mut tape, &h)?.value().clone())
    }

    /// Student output for one view (from [`Self::input`]):
    /// `normalize(predictor(projector(backbone(x))))`.
    fn student_view(
        &self,
        tape: &mut Tape,
        params: &ParamVars,
        x: &Tensor,
    ) -> Result<(Var, Vec<Option<BatchStats>>)> {
        let mut f = Forward::new(tape, params, BnMode::Train, &self.student_bn);
        let x = f.tape.constant(x.clone());
        let h = self.backbone.forward(&mut f, &x)?;
        let z = self.projector.forward(&mut f, &h)?;
        let p = self.predictor.forward(&mut f, &z)?;
        let stats = f.stats;
        let p = self.widened(tape, &p)?;
        Ok((tape.l2_normalize(&p)?, stats))
    }

    /// Teacher target for one view (from [`Self::input`]), without gradient:
    /// `normalize(projector(backbone(x)))`.
    /// `tape` is a no-grad tape holding the teacher's parameters, shared by
    /// both views so the weights are cast once per step.
    fn teacher_view(
        &self,
        tape: &mut Tape,
        params: &ParamVars,
        mode: BnMode,
        x: &Tensor,
    ) -> Result<(Tensor, Vec<Option<BatchStats>>)> {
        let mut f = Forward::new(tape, params, mode, &self.teacher_bn);
        let x = f.tape.constant(x.clone());
        let h = self.backbone.forward(&mut f, &x)?;
        let z = self.projector.forward(&mut f, &h)?;
        let stats = f.stats;
        let z = self.widened(tape, &z)?;
        Ok((tape.l2_normalize(&z)?.value().clone(), stats))
    }

    /// The per-step numbers of iteration `k` of `total` — EMA momentum and
    /// Momentum-BN β from the method's schedules, and the learning rate `lr`
    /// — written to this model's step cells (one 12-byte copy on a GPU),
    /// where the step's kernels, and a captured step's replays, read them.
    pub fn schedule(&self, k: usize, total: usize, lr: f64) -> Result<StepSchedule> {
        let m = ema_momentum(k, total, self.config.ema_base);
        let beta = mbn_beta(k, total);
        let [ema_momentum, mbn_beta, lr]: [Scalar; 3] = self
            .cells
            .set(&[m, beta, lr])?
            .try_into()
            .expect("three cells");
        Ok(StepSchedule {
            ema_momentum,
            mbn_beta,
            lr,
        })
    }

    /// One M2T iteration on two views of a batch (NHWC f32, on any device:
    /// they are moved to the model's) with the numbers of `schedule`: the
    /// EMA update, the teacher's two forwards on the crossed views with the
    /// lazy Momentum-BN history update, the student's two forwards and the
    /// backward pass. The student's gradient buffer then holds this step's
    /// gradients; the caller applies the optimiser with `schedule.lr`.
    pub fn step(
        &mut self,
        view1: &Tensor,
        view2: &Tensor,
        schedule: &StepSchedule,
    ) -> Result<StepReport> {
        self.step_averaged((view1, view2), schedule, None)
    }

    /// [`Self::step`] as one of `comm`'s data-parallel ranks: each bucket of
    /// the student's gradient buffer is averaged over the ranks as soon as
    /// the backward pass has completed it (see
    /// [`engine::ParamStore::backward_in_buckets`]), so the buffer holds the
    /// mean of the ranks' gradients when the step returns.
    pub fn step_averaged(
        &mut self,
        (view1, view2): (&Tensor, &Tensor),
        schedule: &StepSchedule,
        comm: Option<&mut dyn Communicator>,
    ) -> Result<StepReport> {
        if self.device_scaler.is_some() {
            return Err(Error::Config(
                "this fp16 model's loss scale lives on the device since its step was captured: run the captured step".into(),
            ));
        }
        // Each view is moved and cast once, for the teacher and the student.
        let (view1, view2) = (&self.input(view1)?, &self.input(view2)?);
        let loss = self.queue_step(view1, view2, schedule, comm)?;
        let skip_update = match &mut self.scaler {
            Some(scaler) => {
                let found_inf = scaler.unscale_and_check(&mut self.student)?;
                scaler.update(found_inf)
            }
            None => false,
        };
        // Read last: on a GPU this waits for the queue, which is now full.
        let loss = loss.to_f64_vec()?[0];
        Ok(StepReport {
            loss,
            ema_momentum: schedule.ema_momentum.value(),
            mbn_beta: schedule.mbn_beta.value(),
            skip_update,
        })
    }

    /// [`Self::step`]'s device work, queued without reading anything back,
    /// on views already in the model's device and precision; returns the
    /// loss (f32 `[1]`, on the device).
    fn queue_step(
        &mut self,
        view1: &Tensor,
        view2: &Tensor,
        schedule: &StepSchedule,
        comm: Option<&mut dyn Communicator>,
    ) -> Result<Tensor> {
        use engine::nvtx::phase;
        {
            let _r = phase("ema");
            ema_update(
                &mut self.teacher,
                &self.student,
                schedule.ema_momentum.clone(),
            )?;
        }
        let beta = &schedule.mbn_beta;
        let mode = match self.config.teacher_bn {
            TeacherBn::Momentum => BnMode::Momentum {
                beta,
                correction: self.config.correction,
            },
            TeacherBn::Plain => BnMode::Train,
        };
        // Both views see the same history: it moves only after the second.
        let teacher = phase("teacher forward");
        let mut teacher_tape = Tape::no_grad();
        teacher_tape.set_bn_groups(self.config.bn_groups)?;
        let teacher_params = self
            .teacher
            .attach_mixed(&mut teacher_tape, self.config.precision)?;
        let (k1, teacher_stats2) =
            self.teacher_view(&mut teacher_tape, &teacher_params, mode, view2)?;
        let (k2, teacher_stats1) =
            self.teacher_view(&mut teacher_tape, &teacher_params, mode, view1)?;
        drop((teacher_tape, teacher_params, teacher));
        let history = phase("teacher BN history");
        match self.config.teacher_bn {
            TeacherBn::Momentum => self.teacher_bn.update_momentum(
                &teacher_stats1,
                &teacher_stats2,
                beta,
                self.config.correction,
            )?,
            TeacherBn::Plain => {
                self.teacher_bn
                    .update_running(&teacher_stats2, BN_MOMENTUM)?;
                self.teacher_bn
                    .update_running(&teacher_stats1, BN_MOMENTUM)?;
            }
        }
        drop(history);

        let student = phase("student forward");
        let mut tape = Tape::new();
        tape.set_bn_groups(self.config.bn_groups)?;
        let params = self
            .student
            .attach_mixed(&mut tape, self.config.precision)?;
        let (q1, stats1) = self.student_view(&mut tape, &params, view1)?;
        let (q2, stats2) = self.student_view(&mut tape, &params, view2)?;
        let (k1, k2) = (tape.constant(k1), tape.constant(k2));
        let loss = tape.m2t_loss(&q1, &k1, &q2, &k2)?;
        let loss_tensor = loss.value().clone();
        drop(student);
        let backward = phase("student backward");
        let seed = match (&self.device_scaler, &self.scaler) {
            // A captured fp16 step seeds from the device's scale.
            (Some(device), _) => device.seed(loss.shape().clone())?,
            // fp16: scale the loss so small gradients do not flush to zero.
            (None, Some(scaler)) => Tensor::full(
                loss.shape().clone(),
                scaler.scale() as f64,
                DType::F32,
                self.device(),
            )?,
            (None, None) => Tensor::full(
                loss.shape().clone(),
                1.0,
                loss.value().dtype(),
                self.device(),
            )?,
        };
        match comm {
            Some(comm) => {
                self.student
                    .backward_in_buckets(tape, (&loss, seed), params, |grads, range| {
                        comm.start_mean(grads, range)
                    })?;
                comm.wait()?;
            }
            None => self
                .student
                .backward_in_buckets(tape, (&loss, seed), params, |_, _| Ok(()))?,
        }
        drop(backward);
        self.student_bn.update_running(&stats1, BN_MOMENTUM)?;
        self.student_bn.update_running(&stats2, BN_MOMENTUM)?;
        Ok(loss_tensor)
    }
}

/// Words of a captured step's results: the loss, the device loss scaler's
/// four state words (zero without one), Σg² and the non-finite-gradient flag.
const RESULT_WORDS: usize = 7;

/// A whole training step — [`M2t::step`], fp16's loss scaling, the gradient
/// check and the optimiser's update — captured once as a CUDA graph and
/// replayed: one launch per step instead of thousands. Results are the eager
/// step's: bit for bit on the emulator, and on a GPU up to cuDNN algorithms
/// that sum in no fixed order.
///
/// The graph reads its views from one of two input slots, the one a device
/// cell names, so the next step's views can be staged into the other slot
/// (on the copy stream) while a step runs; and it leaves its results where
/// [`CapturedStep::launch`] queues their copy to page-locked host memory, so
/// the host reads a step's results after queueing the next.
pub struct CapturedStep {
    graph: StepGraph,
    /// The captured model's step cells, which identify it: the graph
    /// reads and writes that model's buffers by address.
    cells: StepScalars,
    /// The input slot the next replay reads (0.0 or 1.0).
    slot: StepScalars,
    /// Two slots of the two views, in the model's device and precision.
    inputs: [[Tensor; 2]; 2],
    /// The graph's results, [`RESULT_WORDS`] f32 words.
    results: Tensor,
    /// One host copy of the results per slot: step k's lands in k % 2.
    readbacks: [Readback; 2],
    /// Whether the loss scaler runs on the device (fp16).
    scaled: bool,
}

/// What a replayed step left in its results.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepResults {
    /// The symmetric loss.
    pub loss: f64,
    /// Whether every (unscaled) gradient was finite.
    pub grads_finite: bool,
    /// fp16: the loss scaler after the step, and whether it skipped the update.
    pub scaler: Option<ScalerState>,
}

impl StepResults {
    fn from_words(words: &[f32], scaled: bool) -> StepResults {
        StepResults {
            loss: words[0] as f64,
            grads_finite: words[6].to_bits() == 0,
            scaler: scaled.then(|| ScalerState::from_words(&words[1..5])),
        }
    }

    /// Whether the step's update was skipped (fp16 overflow).
    pub fn skipped(&self) -> bool {
        self.scaler.is_some_and(|s| s.skipped)
    }
}

impl CapturedStep {
    /// Captures a step on views shaped like `view1` and `view2`, then
    /// `update` (the optimiser, given the student's parameters, the
    /// learning rate's cell and, in fp16, the device flag that skips the
    /// update), with the cells of `schedule` (from [`M2t::schedule`] on this
    /// model). Runs nothing: [`CapturedStep::run`] does. Slot 0 holds these
    /// views.
    ///
    /// The model must have run an eager step with these shapes first: cuDNN's
    /// algorithm searches and workspace growth cannot be captured. In fp16
    /// the loss scaler's state moves to the device here, where the step
    /// advances it; [`M2t::loss_scale`] reads it.
    pub fn capture(
        model: &mut M2t,
        view1: &Tensor,
        view2: &Tensor,
        schedule: &StepSchedule,
        update: impl FnOnce(&mut ParamStore, &Scalar, Option<&Tensor>) -> Result<()>,
    ) -> Result<Self> {
        let device = model.device();
        if let Some(host) = &model.scaler {
            model.device_scaler = Some(DeviceScaler::new(host, device)?);
        }
        let mut inputs = Vec::with_capacity(4);
        for _slot in 0..2 {
            for v in [view1, view2] {
                let v = model.input(v)?;
                let mut own = Tensor::zeros(v.shape().clone(), v.dtype(), device)?;
                own.copy_from(&v)?;
                inputs.push(own);
            }
        }
        let mut inputs = inputs.into_iter();
        let mut pair = || -> [Tensor; 2] { [inputs.next().unwrap(), inputs.next().unwrap()] };
        let inputs = [pair(), pair()];
        let views = inputs[0]
            .iter()
            .map(|v| Tensor::zeros(v.shape().clone(), v.dtype(), device))
            .collect::<engine::Result<Vec<_>>>()?;
        let slot = StepScalars::new(device, 1)?;
        let slot_cell = slot.set(&[0.0])?;
        let mut results = Tensor::zeros([RESULT_WORDS], DType::F32, device)?;
        let ((), graph) = engine::graph::capture(device, || {
            let cell = slot_cell[0].device_cell().ok_or(engine::Error::Device {
                op: "captured step (the slot cell)",
                device,
            })?;
            for (i, view) in views.iter().enumerate() {
                copy_selected(view, (&inputs[0][i], &inputs[1][i]), cell)?;
            }
            let step_loss = model.queue_step(&views[0], &views[1], schedule, None)?;
            let skip = match &model.device_scaler {
                Some(scaler) => {
                    scaler.unscale_and_update(&mut model.student)?;
                    copy_at(&mut results, 1, scaler.state())?;
                    Some(scaler.skip_flag())
                }
                None => None,
            };
            model.student.queue_grad_check(&results.narrow(5, 2)?)?;
            update(&mut model.student, &schedule.lr, skip.as_ref())?;
            Ok::<(), Error>(copy_at(&mut results, 0, &step_loss)?)
        })?;
        Ok(CapturedStep {
            graph,
            cells: model.cells.clone(),
            slot,
            inputs,
            readbacks: [
                Readback::new(device, RESULT_WORDS)?,
                Readback::new(device, RESULT_WORDS)?,
            ],
            results,
            scaled: model.device_scaler.is_some(),
        })
    }

    fn check_model(&self, model: &M2t) -> Result<()> {
        if !self.cells.same_cells(&model.cells) {
            return Err(Error::Config(
                "this captured step belongs to another model (or to this one before it moved device)".into(),
            ));
        }
        Ok(())
    }

    /// Copies two views (shaped as at the capture) into input slot `slot`
    /// (0 or 1), on whichever stream work goes to now: wrapped in
    /// [`engine::pipeline::on_copy_stream`], while a step runs.
    pub fn stage(
        &mut self,
        model: &M2t,
        slot: usize,
        (view1, view2): (&Tensor, &Tensor),
    ) -> Result<()> {
        self.check_model(model)?;
        for (own, v) in self.inputs[slot % 2].iter_mut().zip([view1, view2]) {
            let v = model.input(v)?;
            if v.shape() != own.shape() {
                return Err(Error::Config(format!(
                    "the captured step takes views of {}, not {}",
                    own.shape(),
                    v.shape()
                )));
            }
            own.copy_from(&v)?;
        }
        Ok(())
    }

    /// Queues iteration `k` of `total` with learning rate `lr` on the views
    /// staged in slot `k % 2`: writes the step's numbers and the slot,
    /// replays the graph and queues the copy of its results, waiting for
    /// nothing. Returns the step's schedule; [`CapturedStep::results`] reads
    /// what it did.
    pub fn launch(
        &mut self,
        model: &mut M2t,
        (k, total): (usize, usize),
        lr: f64,
    ) -> Result<StepSchedule> {
        self.check_model(model)?;
        let schedule = model.schedule(k, total, lr)?;
        self.slot.set(&[(k % 2) as f64])?;
        self.graph.launch()?;
        self.readbacks[k % 2].queue(&self.results)?;
        Ok(schedule)
    }

    /// The results of iteration `k`, launched last or the time before: waits
    /// for that replay only.
    pub fn results(&self, k: usize) -> Result<StepResults> {
        let words = self.readbacks[k % 2].wait()?;
        Ok(StepResults::from_words(&words, self.scaled))
    }

    /// Iteration `k` of `total` with learning rate `lr` on two new views, in
    /// one call: [`CapturedStep::stage`], [`CapturedStep::launch`] and
    /// [`CapturedStep::results`]. The optimiser's update is part of the
    /// replay; `skip_update` says whether fp16's scaler skipped it.
    pub fn run(
        &mut self,
        model: &mut M2t,
        views: (&Tensor, &Tensor),
        (k, total): (usize, usize),
        lr: f64,
    ) -> Result<StepReport> {
        self.stage(model, k % 2, views)?;
        let schedule = self.launch(model, (k, total), lr)?;
        let results = self.results(k)?;
        Ok(StepReport {
            loss: results.loss,
            ema_momentum: schedule.ema_momentum.value(),
            mbn_beta: schedule.mbn_beta.value(),
            skip_update: results.skipped(),
        })
    }
}
