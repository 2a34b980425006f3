//! The cuDNN and cuBLAS state of each CUDA device: one handle of each on the
//! device's compute stream, one grow-only cuDNN workspace, and the
//! convolution plans (descriptors and algorithms), found once per shape.

use crate::error::{Error, Result};
use crate::{DType, Device};
use cudarc::cublas::sys as cublas;
use cudarc::cudnn::sys as cudnn;
use kernels::{Buffer, Gpu};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// A library call's failure, as an engine error naming the call and why.
pub(crate) fn lib_failure(call: &str, why: impl std::fmt::Display) -> Error {
    Error::Gpu(kernels::Error::Driver(format!("{call} failed: {why}")))
}

/// A library call's failure status, as an engine error naming the call.
fn lib_err(call: &str, status: impl std::fmt::Debug) -> Error {
    lib_failure(call, format!("{status:?}"))
}

/// Checks a cuDNN status. A sub-library failure also names the cuDNN files
/// loaded, since it means an install mixed from two versions or folders.
pub(crate) fn cudnn_ok(call: &str, s: cudnn::cudnnStatus_t) -> Result<()> {
    use cudnn::cudnnStatus_t as S;
    match s {
        S::CUDNN_STATUS_SUCCESS => Ok(()),
        S::CUDNN_STATUS_SUBLIBRARY_VERSION_MISMATCH | S::CUDNN_STATUS_SUBLIBRARY_LOADING_FAILED => {
            Err(lib_failure(
                call,
                format!(
                    "{s:?}; cuDNN files loaded: {}",
                    kernels::probe::cudnn_files()
                ),
            ))
        }
        _ => Err(lib_err(call, s)),
    }
}

/// Checks a cuBLAS status.
pub(crate) fn cublas_ok(call: &str, s: cublas::cublasStatus_t) -> Result<()> {
    if s == cublas::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(lib_err(call, s))
    }
}

/// Everything that identifies one convolution's descriptors and algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ConvKey {
    /// Input `[n, h, w, c]`.
    pub input: [usize; 4],
    /// Weight `[k, r, s, c]`.
    pub weight: [usize; 4],
    pub stride: usize,
    pub padding: usize,
    pub dtype: DType,
    /// Whether only deterministic algorithms may be chosen.
    pub deterministic: bool,
}

/// One algorithm `cudnnFind…Ex` measured for one direction: the algorithm,
/// its workspace bytes, and the math type to run it with (set on the
/// descriptor before each run, since the directions share it).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Choice<A> {
    pub algo: A,
    pub workspace: usize,
    pub math: cudnn::cudnnMathType_t,
}

/// cuDNN descriptors of one convolution and the algorithms found for it.
pub(crate) struct ConvPlan {
    pub x: cudnn::cudnnTensorDescriptor_t,
    pub y: cudnn::cudnnTensorDescriptor_t,
    pub w: cudnn::cudnnFilterDescriptor_t,
    pub conv: cudnn::cudnnConvolutionDescriptor_t,
    /// Per direction, once searched: the algorithms that succeeded, fastest
    /// first. One that then fails to run is dropped for the next.
    pub forward: Option<Vec<Choice<cudnn::cudnnConvolutionFwdAlgo_t>>>,
    pub backward_data: Option<Vec<Choice<cudnn::cudnnConvolutionBwdDataAlgo_t>>>,
    pub backward_filter: Option<Vec<Choice<cudnn::cudnnConvolutionBwdFilterAlgo_t>>>,
}

impl Drop for ConvPlan {
    fn drop(&mut self) {
        // SAFETY: the descriptors were created by this plan and are destroyed once.
        unsafe {
            cudnn::cudnnDestroyTensorDescriptor(self.x);
            cudnn::cudnnDestroyTensorDescriptor(self.y);
            cudnn::cudnnDestroyFilterDescriptor(self.w);
            cudnn::cudnnDestroyConvolutionDescriptor(self.conv);
        }
    }
}

/// The per-device library state.
pub(crate) struct CudaLibs {
    pub gpu: Arc<Gpu>,
    pub cudnn: cudnn::cudnnHandle_t,
    pub cublas: cublas::cublasHandle_t,
    workspace: Option<Buffer>,
    /// cuBLAS's own workspace, set once: without it cuBLAS would allocate
    /// as it goes, which a graph capture cannot hold.
    cublas_workspace: Option<Buffer>,
    pub plans: HashMap<ConvKey, ConvPlan>,
}

// SAFETY: the handles are used only under the mutex in `with_libs`, from one
// thread at a time, always on the device's single stream.
unsafe impl Send for CudaLibs {}

impl Drop for CudaLibs {
    fn drop(&mut self) {
        // SAFETY: each handle was created by `new` (or is null) and is destroyed once.
        unsafe {
            if !self.cudnn.is_null() {
                cudnn::cudnnDestroy(self.cudnn);
            }
            if !self.cublas.is_null() {
                cublas::cublasDestroy_v2(self.cublas);
            }
        }
    }
}

/// cuBLAS's workspace: NVIDIA's recommended size for Hopper (32 MiB).
const CUBLAS_WORKSPACE: usize = 32 << 20;

/// The most memory an algorithm search may use as workspace.
pub(crate) const FIND_WORKSPACE: usize = 256 << 20;

impl CudaLibs {
    fn new(gpu: Arc<Gpu>) -> Result<CudaLibs> {
        let parts = gpu
            .cuda_parts()
            .expect("CUDA libraries belong to a CUDA device");
        let missing: Vec<&str> = [
            // SAFETY: presence checks only try to load the libraries.
            ("cuDNN", unsafe { cudnn::is_culib_present() }),
            ("cuBLAS", unsafe { cublas::is_culib_present() }),
        ]
        .into_iter()
        .filter(|(_, present)| !present)
        .map(|(name, _)| name)
        .collect();
        if !missing.is_empty() {
            return Err(Error::Gpu(kernels::Error::Unavailable(format!(
                "{} not found (PyTorch's environment ships them under site-packages/nvidia/*/lib; or set M2T_CUDA_LIBS)",
                missing.join(" and ")
            ))));
        }
        // The bindings are cuDNN 9's, and its engines must use the CUDA 13
        // libraries this process loads: another build would not fit them.
        // SAFETY: present, checked above; reads the versions only.
        let (version, cudart) =
            unsafe { (cudnn::cudnnGetVersion(), cudnn::cudnnGetCudartVersion()) };
        kernels::probe::check_cudnn_versions(version, cudart).map_err(|why| {
            Error::Gpu(kernels::Error::Unavailable(format!(
                "{why} ({})",
                kernels::probe::cudnn_files()
            )))
        })?;
        parts.ctx.bind_to_thread().map_err(kernels::Error::from)?;
        let stream = parts.stream.cu_stream();
        let mut libs = CudaLibs {
            gpu,
            cudnn: std::ptr::null_mut(),
            cublas: std::ptr::null_mut(),
            workspace: None,
            cublas_workspace: None,
            plans: HashMap::new(),
        };
        let cublas_workspace = libs.gpu.alloc(CUBLAS_WORKSPACE)?;
        // SAFETY: creating handles and binding them to the device's stream;
        // on an error, `Drop` destroys whichever handles were created.
        unsafe {
            cudnn_ok("cudnnCreate", cudnn::cudnnCreate(&mut libs.cudnn))?;
            cudnn_ok(
                "cudnnSetStream",
                cudnn::cudnnSetStream(libs.cudnn, stream as _),
            )?;
            cublas_ok("cublasCreate", cublas::cublasCreate_v2(&mut libs.cublas))?;
            cublas_ok(
                "cublasSetStream",
                cublas::cublasSetStream_v2(libs.cublas, stream as _),
            )?;
            // A fixed reduction order: no atomics (cuBLAS's default, made
            // explicit), one stream and the fixed workspace below.
            cublas_ok(
                "cublasSetAtomicsMode",
                cublas::cublasSetAtomicsMode(
                    libs.cublas,
                    cublas::cublasAtomicsMode_t::CUBLAS_ATOMICS_NOT_ALLOWED,
                ),
            )?;
            // Parity needs true f32 products: no TF32 behind our back, and
            // split-K partial sums kept in f32 for 16-bit inputs too.
            cublas_ok(
                "cublasSetMathMode",
                cublas::cublasSetMathMode(
                    libs.cublas,
                    cublas::cublasMath_t::CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION,
                ),
            )?;
            cublas_ok(
                "cublasSetWorkspace",
                cublas::cublasSetWorkspace_v2(
                    libs.cublas,
                    cublas_workspace.device_ptr().unwrap_or(0) as *mut std::ffi::c_void,
                    CUBLAS_WORKSPACE,
                ),
            )?;
        }
        libs.cublas_workspace = Some(cublas_workspace);
        Ok(libs)
    }

    /// The workspace, grown (never shrunk) to at least `bytes`; its address and size.
    pub fn workspace(&mut self, bytes: usize) -> Result<(u64, usize)> {
        if self
            .workspace
            .as_ref()
            .is_none_or(|w| w.len_bytes() < bytes)
        {
            if self.gpu.capturing() {
                return Err(lib_failure(
                    "cuDNN workspace",
                    format!(
                        "{bytes} bytes needed during a graph capture, more than the workspace has: run the step once before capturing it"
                    ),
                ));
            }
            self.workspace = None; // free the old one first
            self.workspace = Some(self.gpu.alloc(bytes.max(1))?);
        }
        let w = self.workspace.as_ref().unwrap();
        Ok((w.device_ptr().unwrap_or(0), w.len_bytes()))
    }
}

/// Runs `f` with the library state of `device` (created on first use).
pub(crate) fn with_libs<R>(
    device: Device,
    gpu: &Arc<Gpu>,
    f: impl FnOnce(&mut CudaLibs) -> Result<R>,
) -> Result<R> {
    static LIBS: OnceLock<Mutex<HashMap<Device, CudaLibs>>> = OnceLock::new();
    // A panic under the lock leaves the state as consistent as any error does.
    let mut all = LIBS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let libs = match all.entry(device) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(_) if gpu.capturing() => {
            return Err(lib_failure(
                "cuDNN and cuBLAS set-up",
                "the libraries are first used during a graph capture: run the step once before capturing it",
            ));
        }
        std::collections::hash_map::Entry::Vacant(e) => e.insert(CudaLibs::new(gpu.clone())?),
    };
    // The calling thread may have another device's context current.
    libs.gpu
        .cuda_parts()
        .expect("CUDA device")
        .ctx
        .bind_to_thread()
        .map_err(kernels::Error::from)?;
    f(libs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn conv_keys_separate_every_field() {
        let base = ConvKey {
            input: [2, 8, 8, 3],
            weight: [4, 3, 3, 3],
            stride: 1,
            padding: 1,
            dtype: DType::F32,
            deterministic: false,
        };
        let variants = [
            ConvKey {
                input: [3, 8, 8, 3],
                ..base
            },
            ConvKey {
                input: [2, 8, 9, 3],
                ..base
            },
            ConvKey {
                weight: [5, 3, 3, 3],
                ..base
            },
            ConvKey { stride: 2, ..base },
            ConvKey { padding: 0, ..base },
            ConvKey {
                dtype: DType::BF16,
                ..base
            },
            ConvKey {
                deterministic: true,
                ..base
            },
        ];
        let mut seen: HashSet<ConvKey> = HashSet::from([base]);
        for v in variants {
            assert!(seen.insert(v), "{v:?} collides");
        }
        assert!(!seen.insert(base));
    }
}
