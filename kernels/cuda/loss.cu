// Row-wise L2 normalisation, the symmetric M2T loss and softmax cross-entropy.
// Row kernels run one block per row (a multiple of 32 threads, so the block
// reductions see whole warps); every reduction is in f32 and in a fixed
// order, so results are deterministic. Scalar loss gradients are read from
// device memory: the host never waits for them.

// Norms below this are clamped, as in PyTorch's F.normalize.
#define NORM_EPS 1e-12f

__device__ __forceinline__ float negative_infinity() { return __uint_as_float(0xFF800000u); }
__device__ __forceinline__ float quiet_nan() { return __uint_as_float(0x7FC00000u); }

// Maximum over a block whose size is a multiple of 32; every thread gets it.
// `scratch` holds 32 floats of shared memory.
__device__ __forceinline__ float block_max(float v, float* scratch) {
    unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_max(v);
    __syncthreads();  // scratch may still be read by a previous reduction
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : negative_infinity();
    return warp_max(v);
}

// y = x / max(|x|, eps) for the row of this block; norms[row] = max(|x|, eps).
template <class T>
__device__ __forceinline__ void l2_normalize_forward(const T* __restrict__ x, T* __restrict__ y,
                                                     float* __restrict__ norms, int64_t features) {
    __shared__ float scratch[32];
    int64_t row = blockIdx.x * features;
    float squares = 0.0f;
    for (int64_t j = threadIdx.x; j < features; j += blockDim.x) {
        float v = load(x, row + j);
        squares += v * v;
    }
    float norm = fmaxf(sqrtf(block_sum(squares, scratch)), NORM_EPS);
    for (int64_t j = threadIdx.x; j < features; j += blockDim.x) store(y, row + j, load(x, row + j) / norm);
    if (threadIdx.x == 0) norms[blockIdx.x] = norm;
}

// dx = (dy - y * <y, dy>) / norm; where the norm was clamped the output did
// not depend on the direction, so the dot term is dropped: dx = dy / eps.
template <class T>
__device__ __forceinline__ void l2_normalize_backward(const T* __restrict__ y, const float* __restrict__ norms,
                                                      const T* __restrict__ dy, T* __restrict__ dx,
                                                      int64_t features) {
    __shared__ float scratch[32];
    int64_t row = blockIdx.x * features;
    float norm = norms[blockIdx.x];
    float partial = 0.0f;
    for (int64_t j = threadIdx.x; j < features; j += blockDim.x) partial += load(y, row + j) * load(dy, row + j);
    float dot = block_sum(partial, scratch);
    if (!(norm > NORM_EPS)) dot = 0.0f;
    for (int64_t j = threadIdx.x; j < features; j += blockDim.x) {
        store(dx, row + j, (load(dy, row + j) - load(y, row + j) * dot) / norm);
    }
}

// mean_i[(2 - 2<q1_i, k1_i>) + (2 - 2<q2_i, k2_i>)] = 4 - 2 * sum / rows.
// One block: the inputs are a few hundred unit vectors, and a single block
// reduces them in a fixed order without a second launch.
template <class T>
__device__ __forceinline__ void m2t_loss_forward(const T* __restrict__ q1, const T* __restrict__ k1,
                                                 const T* __restrict__ q2, const T* __restrict__ k2,
                                                 T* __restrict__ loss, int64_t rows, int64_t numel) {
    __shared__ float scratch[32];
    float partial = 0.0f;
    for (int64_t i = threadIdx.x; i < numel; i += blockDim.x) {
        partial += load(q1, i) * load(k1, i) + load(q2, i) * load(k2, i);
    }
    float dots = block_sum(partial, scratch);
    if (threadIdx.x == 0) store(loss, 0, 4.0f - 2.0f * dots / static_cast<float>(rows));
}

// d loss / d a = -2 * partner * dloss / rows for each input a of a pair.
template <class T>
__device__ __forceinline__ void m2t_loss_backward(const T* __restrict__ partner, const T* __restrict__ dloss,
                                                  T* __restrict__ grad, int64_t rows, int64_t numel) {
    float scale = -2.0f * load(dloss, 0) / static_cast<float>(rows);
    FOR_EACH(i, numel) { store(grad, i, load(partner, i) * scale); }
}

// Softmax of the row of this block into probs, and the row's loss
// log(sum exp) + max - logit[label] into row_loss (NaN for a label outside
// 0..classes: labels on the device are not checked by the host).
template <class T>
__device__ __forceinline__ void cross_entropy_forward(const T* __restrict__ logits, const int64_t* __restrict__ labels,
                                                      T* __restrict__ probs, float* __restrict__ row_loss,
                                                      int64_t classes) {
    __shared__ float scratch[32];
    int64_t row = blockIdx.x * classes;
    float largest = negative_infinity();
    for (int64_t j = threadIdx.x; j < classes; j += blockDim.x) largest = fmaxf(largest, load(logits, row + j));
    largest = block_max(largest, scratch);
    float partial = 0.0f;
    for (int64_t j = threadIdx.x; j < classes; j += blockDim.x) partial += expf(load(logits, row + j) - largest);
    float total = block_sum(partial, scratch);
    for (int64_t j = threadIdx.x; j < classes; j += blockDim.x) {
        store(probs, row + j, expf(load(logits, row + j) - largest) / total);
    }
    if (threadIdx.x == 0) {
        int64_t label = labels[blockIdx.x];
        row_loss[blockIdx.x] =
            label >= 0 && label < classes ? logf(total) + largest - load(logits, row + label) : quiet_nan();
    }
}

// The mean of the per-row losses, in one block.
template <class T>
__device__ __forceinline__ void cross_entropy_mean(const float* __restrict__ row_loss, T* __restrict__ loss,
                                                   int64_t rows) {
    __shared__ float scratch[32];
    float partial = 0.0f;
    for (int64_t i = threadIdx.x; i < rows; i += blockDim.x) partial += row_loss[i];
    float sum = block_sum(partial, scratch);
    if (threadIdx.x == 0) store(loss, 0, sum / static_cast<float>(rows));
}

// dlogits = (probs - onehot(label)) * dloss / rows; a label outside
// 0..classes matches no column.
template <class T>
__device__ __forceinline__ void cross_entropy_backward(const T* __restrict__ probs,
                                                       const int64_t* __restrict__ labels,
                                                       const T* __restrict__ dloss, T* __restrict__ dlogits,
                                                       int64_t rows, int64_t classes) {
    float scale = load(dloss, 0) / static_cast<float>(rows);
    FOR_EACH(i, rows * classes) {
        float g = load(probs, i) * scale;
        if (labels[i / classes] == i % classes) g -= scale;
        store(dlogits, i, g);
    }
}

extern "C" __global__ void l2_normalize_forward_f32(const float* x, float* y, float* norms, int64_t features) {
    l2_normalize_forward(x, y, norms, features);
}
extern "C" __global__ void l2_normalize_forward_bf16(const bf16* x, bf16* y, float* norms, int64_t features) {
    l2_normalize_forward(x, y, norms, features);
}
extern "C" __global__ void l2_normalize_forward_f16(const f16* x, f16* y, float* norms, int64_t features) {
    l2_normalize_forward(x, y, norms, features);
}

extern "C" __global__ void l2_normalize_backward_f32(const float* y, const float* norms, const float* dy, float* dx,
                                                     int64_t features) {
    l2_normalize_backward(y, norms, dy, dx, features);
}
extern "C" __global__ void l2_normalize_backward_bf16(const bf16* y, const float* norms, const bf16* dy, bf16* dx,
                                                      int64_t features) {
    l2_normalize_backward(y, norms, dy, dx, features);
}
extern "C" __global__ void l2_normalize_backward_f16(const f16* y, const float* norms, const f16* dy, f16* dx,
                                                     int64_t features) {
    l2_normalize_backward(y, norms, dy, dx, features);
}

extern "C" __global__ void __launch_bounds__(1024) m2t_loss_forward_f32(const float* q1, const float* k1, const float* q2, const float* k2,
                                                float* loss, int64_t rows, int64_t numel) {
    m2t_loss_forward(q1, k1, q2, k2, loss, rows, numel);
}
extern "C" __global__ void __launch_bounds__(1024) m2t_loss_forward_bf16(const bf16* q1, const bf16* k1, const bf16* q2, const bf16* k2,
                                                 bf16* loss, int64_t rows, int64_t numel) {
    m2t_loss_forward(q1, k1, q2, k2, loss, rows, numel);
}
extern "C" __global__ void __launch_bounds__(1024) m2t_loss_forward_f16(const f16* q1, const f16* k1, const f16* q2, const f16* k2, f16* loss,
                                                int64_t rows, int64_t numel) {
    m2t_loss_forward(q1, k1, q2, k2, loss, rows, numel);
}

extern "C" __global__ void m2t_loss_backward_f32(const float* partner, const float* dloss, float* grad, int64_t rows,
                                                 int64_t numel) {
    m2t_loss_backward(partner, dloss, grad, rows, numel);
}
extern "C" __global__ void m2t_loss_backward_bf16(const bf16* partner, const bf16* dloss, bf16* grad, int64_t rows,
                                                  int64_t numel) {
    m2t_loss_backward(partner, dloss, grad, rows, numel);
}
extern "C" __global__ void m2t_loss_backward_f16(const f16* partner, const f16* dloss, f16* grad, int64_t rows,
                                                 int64_t numel) {
    m2t_loss_backward(partner, dloss, grad, rows, numel);
}

extern "C" __global__ void cross_entropy_forward_f32(const float* logits, const int64_t* labels, float* probs,
                                                     float* row_loss, int64_t classes) {
    cross_entropy_forward(logits, labels, probs, row_loss, classes);
}
extern "C" __global__ void cross_entropy_forward_bf16(const bf16* logits, const int64_t* labels, bf16* probs,
                                                      float* row_loss, int64_t classes) {
    cross_entropy_forward(logits, labels, probs, row_loss, classes);
}
extern "C" __global__ void cross_entropy_forward_f16(const f16* logits, const int64_t* labels, f16* probs,
                                                     float* row_loss, int64_t classes) {
    cross_entropy_forward(logits, labels, probs, row_loss, classes);
}

extern "C" __global__ void __launch_bounds__(1024) cross_entropy_mean_f32(const float* row_loss, float* loss, int64_t rows) {
    cross_entropy_mean(row_loss, loss, rows);
}
extern "C" __global__ void __launch_bounds__(1024) cross_entropy_mean_bf16(const float* row_loss, bf16* loss, int64_t rows) {
    cross_entropy_mean(row_loss, loss, rows);
}
extern "C" __global__ void __launch_bounds__(1024) cross_entropy_mean_f16(const float* row_loss, f16* loss, int64_t rows) {
    cross_entropy_mean(row_loss, loss, rows);
}

extern "C" __global__ void cross_entropy_backward_f32(const float* probs, const int64_t* labels, const float* dloss,
                                                      float* dlogits, int64_t rows, int64_t classes) {
    cross_entropy_backward(probs, labels, dloss, dlogits, rows, classes);
}
extern "C" __global__ void cross_entropy_backward_bf16(const bf16* probs, const int64_t* labels, const bf16* dloss,
                                                       bf16* dlogits, int64_t rows, int64_t classes) {
    cross_entropy_backward(probs, labels, dloss, dlogits, rows, classes);
}
extern "C" __global__ void cross_entropy_backward_f16(const f16* probs, const int64_t* labels, const f16* dloss,
                                                      f16* dlogits, int64_t rows, int64_t classes) {
    cross_entropy_backward(probs, labels, dloss, dlogits, rows, classes);
}
