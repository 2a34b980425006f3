//! Convolutions on a CUDA GPU through cuDNN (NHWC activations, KRSC weights,
//! fp32 compute). Descriptors and algorithms are found once per shape with
//! `cudnnFind…Ex` and cached; the emulator runs the CPU reference instead.

use super::{Conv2dParams, ConvGeometry};
use crate::cuda_libs::{Choice, ConvKey, ConvPlan, CudaLibs, FIND_WORKSPACE, cudnn_ok, with_libs};
use crate::error::{Error, Result};
use crate::ops::gpu::on_host;
use crate::tensor::GpuBuffer;
use crate::{DType, Device, Tensor};
use cudarc::cudnn::sys as cudnn;
use std::ffi::c_void;

fn data_type(dtype: DType) -> Result<cudnn::cudnnDataType_t> {
    Ok(match dtype {
        DType::F32 => cudnn::cudnnDataType_t::CUDNN_DATA_FLOAT,
        DType::BF16 => cudnn::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
        DType::F16 => cudnn::cudnnDataType_t::CUDNN_DATA_HALF,
        other => {
            return Err(Error::DType {
                op: "conv2d",
                expected: "f32, bf16 or f16 on a GPU".into(),
                got: other,
            });
        }
    })
}

fn key(g: &ConvGeometry, dtype: DType) -> ConvKey {
    ConvKey {
        input: [g.n, g.h, g.w, g.c],
        weight: [g.k, g.r, g.s, g.c],
        stride: g.stride,
        padding: g.padding,
        dtype,
        deterministic: crate::deterministic(),
    }
}

fn new_plan(g: &ConvGeometry, dtype: DType) -> Result<ConvPlan> {
    let dt = data_type(dtype)?;
    let nhwc = cudnn::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC;
    let mut plan = ConvPlan {
        x: std::ptr::null_mut(),
        y: std::ptr::null_mut(),
        w: std::ptr::null_mut(),
        conv: std::ptr::null_mut(),
        forward: None,
        backward_data: None,
        backward_filter: None,
    };
    let i = |v: usize| v as i32;
    // SAFETY: descriptor creation and setup; the plan destroys them on drop.
    unsafe {
        cudnn_ok(
            "cudnnCreateTensorDescriptor",
            cudnn::cudnnCreateTensorDescriptor(&mut plan.x),
        )?;
        cudnn_ok(
            "cudnnCreateTensorDescriptor",
            cudnn::cudnnCreateTensorDescriptor(&mut plan.y),
        )?;
        cudnn_ok(
            "cudnnCreateFilterDescriptor",
            cudnn::cudnnCreateFilterDescriptor(&mut plan.w),
        )?;
        cudnn_ok(
            "cudnnCreateConvolutionDescriptor",
            cudnn::cudnnCreateConvolutionDescriptor(&mut plan.conv),
        )?;
        cudnn_ok(
            "cudnnSetTensor4dDescriptor",
            cudnn::cudnnSetTensor4dDescriptor(plan.x, nhwc, dt, i(g.n), i(g.c), i(g.h), i(g.w)),
        )?;
        cudnn_ok(
            "cudnnSetTensor4dDescriptor",
            cudnn::cudnnSetTensor4dDescriptor(plan.y, nhwc, dt, i(g.n), i(g.k), i(g.oh), i(g.ow)),
        )?;
        // KRSC is cuDNN's NHWC filter layout.
        cudnn_ok(
            "cudnnSetFilter4dDescriptor",
            cudnn::cudnnSetFilter4dDescriptor(plan.w, dt, nhwc, i(g.k), i(g.c), i(g.r), i(g.s)),
        )?;
        cudnn_ok(
            "cudnnSetConvolution2dDescriptor",
            cudnn::cudnnSetConvolution2dDescriptor(
                plan.conv,
                i(g.padding),
                i(g.padding),
                i(g.stride),
                i(g.stride),
                1,
                1,
                cudnn::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                cudnn::cudnnDataType_t::CUDNN_DATA_FLOAT,
            ),
        )?;
    }
    Ok(plan)
}

/// The plan for `g`, created on first use.
fn plan<'a>(libs: &'a mut CudaLibs, g: &ConvGeometry, dtype: DType) -> Result<&'a mut ConvPlan> {
    Ok(match libs.plans.entry(key(g, dtype)) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => e.insert(new_plan(g, dtype)?),
    })
}

/// The fields of a `cudnnFind…Ex` result that the choice needs, alike for
/// the three directions' result types.
trait AlgoPerf {
    type Algo: Copy + std::fmt::Debug;
    fn algo(&self) -> Self::Algo;
    fn status(&self) -> cudnn::cudnnStatus_t;
    fn time(&self) -> f32;
    fn memory(&self) -> usize;
    fn math(&self) -> cudnn::cudnnMathType_t;
    fn determinism(&self) -> cudnn::cudnnDeterminism_t;
    /// The algorithm's number in cuDNN's enum, a fixed order.
    fn algo_number(&self) -> u32;
}

macro_rules! algo_perf {
    ($perf:ty, $algo:ty) => {
        impl AlgoPerf for $perf {
            type Algo = $algo;
            fn algo(&self) -> $algo {
                self.algo
            }
            fn status(&self) -> cudnn::cudnnStatus_t {
                self.status
            }
            fn time(&self) -> f32 {
                self.time
            }
            fn memory(&self) -> usize {
                self.memory
            }
            fn math(&self) -> cudnn::cudnnMathType_t {
                self.mathType
            }
            fn determinism(&self) -> cudnn::cudnnDeterminism_t {
                self.determinism
            }
            fn algo_number(&self) -> u32 {
                self.algo as u32
            }
        }
    };
}
algo_perf!(
    cudnn::cudnnConvolutionFwdAlgoPerf_t,
    cudnn::cudnnConvolutionFwdAlgo_t
);
algo_perf!(
    cudnn::cudnnConvolutionBwdDataAlgoPerf_t,
    cudnn::cudnnConvolutionBwdDataAlgo_t
);
algo_perf!(
    cudnn::cudnnConvolutionBwdFilterAlgoPerf_t,
    cudnn::cudnnConvolutionBwdFilterAlgo_t
);

/// The algorithms that succeeded among `cudnnFind…Ex` results (`what`),
/// fastest first. For f32 only those measured without tensor cores count,
/// and they run with FMA math, so f32 never runs as TF32. With
/// `deterministic`, only those cuDNN reports as deterministic, in cuDNN's
/// own fixed order rather than by time, so every process chooses alike.
fn succeeded<P: AlgoPerf>(
    results: &[P],
    what: &str,
    (dtype, deterministic): (DType, bool),
) -> Result<Vec<Choice<P::Algo>>> {
    use cudnn::cudnnMathType_t as M;
    let f32_math = |m: M| matches!(m, M::CUDNN_FMA_MATH | M::CUDNN_DEFAULT_MATH);
    let mut ok: Vec<&P> = results
        .iter()
        .filter(|r| r.status() == cudnn::cudnnStatus_t::CUDNN_STATUS_SUCCESS)
        .filter(|r| dtype != DType::F32 || f32_math(r.math()))
        .filter(|r| {
            !deterministic || r.determinism() == cudnn::cudnnDeterminism_t::CUDNN_DETERMINISTIC
        })
        .collect();
    if deterministic {
        // Not by measured time: timing noise could choose another algorithm
        // in another process, and another algorithm sums in another order.
        ok.sort_by_key(|r| (r.algo_number(), r.math() as u32));
    } else {
        ok.sort_by(|a, b| a.time().total_cmp(&b.time()));
    }
    if ok.is_empty() {
        let tried: Vec<String> = results
            .iter()
            .map(|r| {
                format!(
                    "{:?} {:?} {:?} {:?}",
                    r.algo(),
                    r.status(),
                    r.math(),
                    r.determinism()
                )
            })
            .collect();
        return Err(crate::cuda_libs::lib_failure(
            what,
            format!(
                "no usable{} algorithm ({})",
                if deterministic { " deterministic" } else { "" },
                tried.join(", ")
            ),
        ));
    }
    Ok(ok
        .into_iter()
        .map(|r| Choice {
            algo: r.algo(),
            workspace: r.memory(),
            math: if dtype == DType::F32 {
                M::CUDNN_FMA_MATH
            } else {
                r.math()
            },
        })
        .collect())
}

/// Runs one `cudnnFind…Ex` call `find` (given the result count and array
/// pointers) and returns the algorithms that succeeded, fastest first.
fn measured<P: AlgoPerf>(
    what: &str,
    dtype: DType,
    find: impl FnOnce(*mut i32, *mut P) -> cudnn::cudnnStatus_t,
) -> Result<Vec<Choice<P::Algo>>> {
    // SAFETY: plain C structs; zero is a valid value of each field.
    let mut results: [P; MAX_ALGOS] = unsafe { std::mem::zeroed() };
    let mut count = 0;
    cudnn_ok(what, find(&mut count, results.as_mut_ptr()))?;
    succeeded(
        &results[..count as usize],
        what,
        (dtype, crate::deterministic()),
    )
}

const ONE: f32 = 1.0;
const ZERO: f32 = 0.0;

fn one() -> *const c_void {
    (&ONE as *const f32).cast()
}

fn zero() -> *const c_void {
    (&ZERO as *const f32).cast()
}

fn ptr(t: &Tensor) -> *mut c_void {
    t.device_ptr() as *mut c_void
}

/// One direction of a convolution: finds its algorithms once per shape with
/// `find` (given the search workspace), then runs the fastest with `run`
/// (given the algorithm and a workspace of the size it needs), timed as
/// `label` when profiling. An algorithm that fails to run is dropped and the
/// next one tried, so one bad recommendation does not fail the shape for good.
fn find_then_run<A: Copy + std::fmt::Debug>(
    label: &'static str,
    libs: &mut CudaLibs,
    (geo, dtype): (&ConvGeometry, DType),
    slot: fn(&mut ConvPlan) -> &mut Option<Vec<Choice<A>>>,
    find: impl FnOnce(&ConvPlan, cudnn::cudnnHandle_t, *mut c_void, usize) -> Result<Vec<Choice<A>>>,
    run: impl Fn(&ConvPlan, cudnn::cudnnHandle_t, A, *mut c_void, usize) -> Result<()>,
) -> Result<()> {
    let handle = libs.cudnn;
    if slot(plan(libs, geo, dtype)?).is_none() {
        if libs.gpu.capturing() {
            return Err(crate::cuda_libs::lib_failure(
                label,
                "no algorithm chosen yet for this shape, and the search cannot run during a graph capture: run the step once before capturing it",
            ));
        }
        let (ws, ws_len) = libs.workspace(FIND_WORKSPACE)?;
        let p = plan(libs, geo, dtype)?;
        // Each search starts from the dtype's math type, not the one the
        // previous direction's run left on the shared descriptor.
        // SAFETY: a live descriptor.
        cudnn_ok("cudnnSetConvolutionMathType", unsafe {
            cudnn::cudnnSetConvolutionMathType(p.conv, search_math(dtype))
        })?;
        let found = find(p, handle, ws as *mut c_void, ws_len)?;
        *slot(p) = Some(found);
    }
    let mut failures = Vec::new();
    loop {
        let Some(&choice) = slot(plan(libs, geo, dtype)?)
            .as_ref()
            .and_then(|c| c.first())
        else {
            return Err(crate::cuda_libs::lib_failure(
                label,
                format!(
                    "every algorithm found failed to run: {}",
                    failures.join("; ")
                ),
            ));
        };
        let need = choice.workspace;
        let (ws, _) = libs.workspace(need)?;
        let gpu = libs.gpu.clone();
        let plan = plan(libs, geo, dtype)?;
        // SAFETY: a live descriptor; the math type is one cuDNN itself reported.
        cudnn_ok("cudnnSetConvolutionMathType", unsafe {
            cudnn::cudnnSetConvolutionMathType(plan.conv, choice.math)
        })?;
        match gpu.timed(label, || {
            run(plan, handle, choice.algo, ws as *mut c_void, need)
        })? {
            Ok(()) => return Ok(()),
            // A failure during a capture may be the capture's, not the
            // algorithm's: keep the plan.
            Err(e) if gpu.capturing() => return Err(e),
            Err(e) => {
                failures.push(format!("{:?}: {e}", choice.algo));
                slot(plan).as_mut().expect("searched above").remove(0);
            }
        }
    }
}

/// The math type an algorithm search runs with: tensor cores for 16-bit
/// data, plain FMA for f32.
fn search_math(dtype: DType) -> cudnn::cudnnMathType_t {
    if dtype == DType::F32 {
        cudnn::cudnnMathType_t::CUDNN_FMA_MATH
    } else {
        cudnn::cudnnMathType_t::CUDNN_TENSOR_OP_MATH
    }
}

/// Room for every algorithm cuDNN reports.
const MAX_ALGOS: usize = 16;

pub(super) fn forward(
    g: &GpuBuffer,
    x: &Tensor,
    w: &Tensor,
    geo: &ConvGeometry,
    p: Conv2dParams,
) -> Result<Tensor> {
    let dtype = x.dtype();
    if g.device == Device::Emulator {
        let out = Some([geo.n, geo.oh, geo.ow, geo.k].into());
        let [y] = on_host(g, dtype, [x, w], [out], move |[x, w]| {
            Ok([Some(super::forward(&x, &w, p)?)])
        })?;
        return Ok(y.expect("forward output"));
    }
    let y = Tensor::gpu_empty(g, [geo.n, geo.oh, geo.ow, geo.k], dtype)?;
    // SAFETY (the cuDNN calls below): valid descriptors and device buffers of
    // the described sizes; alpha/beta are f32 for every data type (fp32 compute).
    with_libs(g.device, &g.gpu, |libs| {
        find_then_run(
            "cudnn conv forward",
            libs,
            (geo, dtype),
            |plan| &mut plan.forward,
            |plan, handle, ws, ws_len| {
                measured::<cudnn::cudnnConvolutionFwdAlgoPerf_t>(
                    "cudnnFindConvolutionForwardAlgorithmEx",
                    dtype,
                    |count, results| unsafe {
                        cudnn::cudnnFindConvolutionForwardAlgorithmEx(
                            handle,
                            plan.x,
                            ptr(x),
                            plan.w,
                            ptr(w),
                            plan.conv,
                            plan.y,
                            ptr(&y),
                            MAX_ALGOS as i32,
                            count,
                            results,
                            ws,
                            ws_len,
                        )
                    },
                )
            },
            |plan, handle, algo, ws, need| {
                cudnn_ok("cudnnConvolutionForward", unsafe {
                    cudnn::cudnnConvolutionForward(
                        handle,
                        one(),
                        plan.x,
                        ptr(x),
                        plan.w,
                        ptr(w),
                        plan.conv,
                        algo,
                        ws,
                        need,
                        zero(),
                        plan.y,
                        ptr(&y),
                    )
                })
            },
        )
    })?;
    Ok(y)
}

pub(super) fn backward(
    g: &GpuBuffer,
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    geo: &ConvGeometry,
    p: Conv2dParams,
    (want_dx, want_dw): (bool, bool),
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let dtype = x.dtype();
    if g.device == Device::Emulator {
        let shapes = [
            want_dx.then(|| x.shape().clone()),
            want_dw.then(|| w.shape().clone()),
        ];
        let [dx, dw] = on_host(g, dtype, [x, w, dy], shapes, move |[x, w, dy]| {
            let (dx, dw) = super::backward(&x, &w, &dy, p, (want_dx, want_dw))?;
            Ok([dx, dw])
        })?;
        return Ok((dx, dw));
    }
    let dx = want_dx
        .then(|| Tensor::gpu_empty(g, x.shape().clone(), dtype))
        .transpose()?;
    let dw = want_dw
        .then(|| Tensor::gpu_empty(g, w.shape().clone(), dtype))
        .transpose()?;
    // SAFETY (the cuDNN calls below): as in `forward`.
    with_libs(g.device, &g.gpu, |libs| {
        if let Some(dx) = &dx {
            find_then_run(
                "cudnn conv backward data",
                libs,
                (geo, dtype),
                |plan| &mut plan.backward_data,
                |plan, handle, ws, ws_len| {
                    measured::<cudnn::cudnnConvolutionBwdDataAlgoPerf_t>(
                        "cudnnFindConvolutionBackwardDataAlgorithmEx",
                        dtype,
                        |count, results| unsafe {
                            cudnn::cudnnFindConvolutionBackwardDataAlgorithmEx(
                                handle,
                                plan.w,
                                ptr(w),
                                plan.y,
                                ptr(dy),
                                plan.conv,
                                plan.x,
                                ptr(dx),
                                MAX_ALGOS as i32,
                                count,
                                results,
                                ws,
                                ws_len,
                            )
                        },
                    )
                },
                |plan, handle, algo, ws, need| {
                    cudnn_ok("cudnnConvolutionBackwardData", unsafe {
                        cudnn::cudnnConvolutionBackwardData(
                            handle,
                            one(),
                            plan.w,
                            ptr(w),
                            plan.y,
                            ptr(dy),
                            plan.conv,
                            algo,
                            ws,
                            need,
                            zero(),
                            plan.x,
                            ptr(dx),
                        )
                    })
                },
            )?;
        }
        if let Some(dw) = &dw {
            find_then_run(
                "cudnn conv backward filter",
                libs,
                (geo, dtype),
                |plan| &mut plan.backward_filter,
                |plan, handle, ws, ws_len| {
                    measured::<cudnn::cudnnConvolutionBwdFilterAlgoPerf_t>(
                        "cudnnFindConvolutionBackwardFilterAlgorithmEx",
                        dtype,
                        |count, results| unsafe {
                            cudnn::cudnnFindConvolutionBackwardFilterAlgorithmEx(
                                handle,
                                plan.x,
                                ptr(x),
                                plan.y,
                                ptr(dy),
                                plan.conv,
                                plan.w,
                                ptr(dw),
                                MAX_ALGOS as i32,
                                count,
                                results,
                                ws,
                                ws_len,
                            )
                        },
                    )
                },
                |plan, handle, algo, ws, need| {
                    cudnn_ok("cudnnConvolutionBackwardFilter", unsafe {
                        cudnn::cudnnConvolutionBackwardFilter(
                            handle,
                            one(),
                            plan.x,
                            ptr(x),
                            plan.y,
                            ptr(dy),
                            plan.conv,
                            algo,
                            ws,
                            need,
                            zero(),
                            plan.w,
                            ptr(dw),
                        )
                    })
                },
            )?;
        }
        Ok(())
    })?;
    Ok((dx, dw))
}

/// The algorithms cuDNN chose for a convolution already run on `device`
/// (forward, backward data, backward filter; `None` for a direction not yet
/// run), or `None` if it has not run there.
pub(crate) fn chosen_algorithms(
    device: Device,
    gpu: &std::sync::Arc<kernels::Gpu>,
    x: &[usize; 4],
    w: &[usize; 4],
    p: Conv2dParams,
    dtype: DType,
) -> Result<Option<[Option<String>; 3]>> {
    let key = ConvKey {
        input: *x,
        weight: *w,
        stride: p.stride,
        padding: p.padding,
        dtype,
        deterministic: crate::deterministic(),
    };
    with_libs(device, gpu, |libs| {
        Ok(libs.plans.get(&key).map(|plan| {
            [
                first_algo(&plan.forward),
                first_algo(&plan.backward_data),
                first_algo(&plan.backward_filter),
            ]
        }))
    })
}

/// The algorithm a direction runs with, once searched.
fn first_algo<A: std::fmt::Debug>(choices: &Option<Vec<Choice<A>>>) -> Option<String> {
    choices
        .as_ref()
        .and_then(|c| c.first())
        .map(|c| format!("{:?}", c.algo))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cudnn::cudnnConvolutionFwdAlgo_t as Algo;
    use cudnn::cudnnMathType_t as M;
    use cudnn::cudnnStatus_t as S;

    fn perf(algo: Algo, status: S, time: f32, math: M) -> cudnn::cudnnConvolutionFwdAlgoPerf_t {
        // SAFETY: a plain C struct; zero is a valid value of each field.
        let mut p: cudnn::cudnnConvolutionFwdAlgoPerf_t = unsafe { std::mem::zeroed() };
        (p.algo, p.status, p.time, p.mathType, p.memory) = (algo, status, time, math, 64);
        p.determinism = cudnn::cudnnDeterminism_t::CUDNN_DETERMINISTIC;
        p
    }

    #[test]
    fn deterministic_mode_keeps_only_deterministic_algorithms() {
        let mut fast = perf(
            Algo::CUDNN_CONVOLUTION_FWD_ALGO_FFT,
            S::CUDNN_STATUS_SUCCESS,
            0.5,
            M::CUDNN_TENSOR_OP_MATH,
        );
        fast.determinism = cudnn::cudnnDeterminism_t::CUDNN_NON_DETERMINISTIC;
        let slow = perf(
            Algo::CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
            S::CUDNN_STATUS_SUCCESS,
            2.0,
            M::CUDNN_TENSOR_OP_MATH,
        );
        let free = succeeded(&[fast, slow], "find", (DType::BF16, false)).unwrap();
        assert_eq!(algos(&free)[0], Algo::CUDNN_CONVOLUTION_FWD_ALGO_FFT);
        let fixed = succeeded(&[fast, slow], "find", (DType::BF16, true)).unwrap();
        assert_eq!(algos(&fixed), [Algo::CUDNN_CONVOLUTION_FWD_ALGO_GEMM]);
        // Among deterministic ones, the order is cuDNN's enum, not the times.
        let quick = perf(
            Algo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
            S::CUDNN_STATUS_SUCCESS,
            0.1,
            M::CUDNN_TENSOR_OP_MATH,
        );
        for results in [[slow, quick], [quick, slow]] {
            let order = succeeded(&results, "find", (DType::BF16, true)).unwrap();
            assert_eq!(
                algos(&order),
                [
                    Algo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
                    Algo::CUDNN_CONVOLUTION_FWD_ALGO_GEMM
                ]
            );
        }
        let none = succeeded(&[fast], "find", (DType::BF16, true)).unwrap_err();
        assert!(
            none.to_string()
                .contains("no usable deterministic algorithm")
                && none.to_string().contains("CUDNN_NON_DETERMINISTIC"),
            "{none}"
        );
    }

    fn algos<A: Copy>(choices: &[Choice<A>]) -> Vec<A> {
        choices.iter().map(|c| c.algo).collect()
    }

    #[test]
    fn successes_fastest_first_and_f32_without_tensor_cores() {
        let results = [
            perf(
                Algo::CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
                S::CUDNN_STATUS_SUCCESS,
                3.0,
                M::CUDNN_FMA_MATH,
            ),
            perf(
                Algo::CUDNN_CONVOLUTION_FWD_ALGO_FFT,
                S::CUDNN_STATUS_NOT_SUPPORTED,
                0.1,
                M::CUDNN_FMA_MATH,
            ),
            perf(
                Algo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
                S::CUDNN_STATUS_SUCCESS,
                1.0,
                M::CUDNN_TENSOR_OP_MATH,
            ),
            perf(
                Algo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                S::CUDNN_STATUS_SUCCESS,
                2.0,
                M::CUDNN_DEFAULT_MATH,
            ),
        ];
        let bf16 = succeeded(&results, "find", (DType::BF16, false)).unwrap();
        assert_eq!(
            algos(&bf16),
            [
                Algo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
                Algo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                Algo::CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
            ]
        );
        assert_eq!(bf16[0].math, M::CUDNN_TENSOR_OP_MATH);
        assert_eq!(bf16[0].workspace, 64);
        let f32 = succeeded(&results, "find", (DType::F32, false)).unwrap();
        assert_eq!(
            algos(&f32),
            [
                Algo::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                Algo::CUDNN_CONVOLUTION_FWD_ALGO_GEMM
            ]
        );
        assert!(f32.iter().all(|c| c.math == M::CUDNN_FMA_MATH));
    }

    #[test]
    fn no_success_names_every_result() {
        let results = [perf(
            Algo::CUDNN_CONVOLUTION_FWD_ALGO_FFT,
            S::CUDNN_STATUS_NOT_SUPPORTED,
            0.1,
            M::CUDNN_FMA_MATH,
        )];
        let e = succeeded(
            &results,
            "cudnnFindConvolutionForwardAlgorithmEx",
            (DType::F32, false),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("cudnnFindConvolutionForwardAlgorithmEx")
                && e.contains("CUDNN_CONVOLUTION_FWD_ALGO_FFT CUDNN_STATUS_NOT_SUPPORTED"),
            "{e}"
        );
    }
}
