// Optimiser, EMA and mixed-precision helpers over a ParamStore's flat f32
// buffers (values, gradients, velocity share one layout). Parameters and
// optimiser state are always f32; only incoming gradients may be 16-bit.

__device__ __forceinline__ bool is_finite(float x) { return (__float_as_uint(x) & 0x7F800000u) != 0x7F800000u; }

// acc[i] += g[i]: one parameter's gradient into its range of the flat buffer.
template <class T>
__device__ __forceinline__ void accumulate_grad(float* __restrict__ acc, const T* __restrict__ g, int64_t n) {
    FOR_EACH(i, n) { acc[i] += load(g, i); }
}

extern "C" __global__ void accumulate_grad_f32(float* acc, const float* g, int64_t n) { accumulate_grad(acc, g, n); }
extern "C" __global__ void accumulate_grad_bf16(float* acc, const bf16* g, int64_t n) { accumulate_grad(acc, g, n); }
extern "C" __global__ void accumulate_grad_f16(float* acc, const f16* g, int64_t n) { accumulate_grad(acc, g, n); }

// PyTorch's SGD: v ← μ·v + (g + wd·w), w ← w − lr·v, over the whole buffer
// (padding is zero in w, g and v, and stays zero). The learning rate, which
// changes every step, is read from device memory so a captured step replays;
// so is the skip flag that fp16's loss scaler sets on an overflowed step.
extern "C" __global__ void sgd_momentum_step(float* __restrict__ w, const float* __restrict__ g, float* __restrict__ v,
                                             int64_t n, const float* __restrict__ lr_cell, float momentum,
                                             float weight_decay, const int* __restrict__ skip) {
    if (*skip != 0) return;
    const float lr = *lr_cell;
    FOR_EACH(i, n) {
        float vi = momentum * v[i] + (g[i] + weight_decay * w[i]);
        v[i] = vi;
        w[i] -= lr * vi;
    }
}

// LARS works on chunks that never straddle two parameter tensors. Each chunk
// is a row of LARS_CHUNK_FIELDS int64s in a table uploaded once per
// optimiser: its first and one-past-last element, the index of its tensor's
// first chunk, its tensor's chunk count, and whether the tensor is
// LARS-adapted (1) or not (0).
#define LARS_CHUNK_FIELDS 5

// Pass 1: per chunk, Σw² and Σg² into partials[2c], partials[2c + 1]. One
// block per chunk (grid-stride over chunks); no atomics, so the per-tensor
// sums of pass 2 are deterministic. Non-adapted tensors need no norms.
extern "C" __global__ void lars_chunk_norms(const float* __restrict__ w, const float* __restrict__ g,
                                            const int64_t* __restrict__ chunks, int64_t n_chunks,
                                            float* __restrict__ partials) {
    __shared__ float scratch[32];
    for (int64_t c = blockIdx.x; c < n_chunks; c += gridDim.x) {
        const int64_t* row = chunks + c * LARS_CHUNK_FIELDS;
        float w2 = 0.0f, g2 = 0.0f;
        if (row[4] != 0) {
            for (int64_t i = row[0] + threadIdx.x; i < row[1]; i += blockDim.x) {
                w2 += w[i] * w[i];
                g2 += g[i] * g[i];
            }
        }
        w2 = block_sum(w2, scratch);
        g2 = block_sum(g2, scratch);
        if (threadIdx.x == 0) {
            partials[2 * c] = w2;
            partials[2 * c + 1] = g2;
        }
    }
}

// Pass 2: each block sums its tensor's chunk partials (the same order in every
// block of the tensor), forms the trust ratio
//   local = η·‖w‖/(‖g‖ + wd·‖w‖)   (1 if not adapted or a norm is zero)
// and updates its chunk: v ← μ·v + lr·local·(g + wd·w), w ← w − v.
extern "C" __global__ void lars_momentum_step(float* __restrict__ w, const float* __restrict__ g,
                                              float* __restrict__ v, const int64_t* __restrict__ chunks,
                                              int64_t n_chunks, const float* __restrict__ partials,
                                              const float* __restrict__ lr_cell, float eta, float momentum,
                                              float weight_decay, const int* __restrict__ skip) {
    __shared__ float scratch[32];
    if (*skip != 0) return;
    const float lr = *lr_cell;
    for (int64_t c = blockIdx.x; c < n_chunks; c += gridDim.x) {
        const int64_t* row = chunks + c * LARS_CHUNK_FIELDS;
        const bool adapted = row[4] != 0;
        float w2 = 0.0f, g2 = 0.0f;
        if (adapted) {
            for (int64_t k = row[2] + threadIdx.x; k < row[2] + row[3]; k += blockDim.x) {
                w2 += partials[2 * k];
                g2 += partials[2 * k + 1];
            }
        }
        const float w_norm = sqrtf(block_sum(w2, scratch));
        const float g_norm = sqrtf(block_sum(g2, scratch));
        const float local =
            adapted && w_norm > 0.0f && g_norm > 0.0f ? eta * w_norm / (g_norm + weight_decay * w_norm) : 1.0f;
        const float scale = lr * local;
        for (int64_t i = row[0] + threadIdx.x; i < row[1]; i += blockDim.x) {
            float vi = momentum * v[i] + scale * (g[i] + weight_decay * w[i]);
            v[i] = vi;
            w[i] -= vi;
        }
    }
}

// The EMA teacher: t ← m·t + (1 − m)·s over the teacher's (prefix) length,
// m read from device memory (it changes every step); m = 0 copies exactly,
// even over non-finite teacher values.
extern "C" __global__ void ema_teacher_update(float* __restrict__ teacher, const float* __restrict__ student,
                                              int64_t n, const float* __restrict__ momentum) {
    const float keep = *momentum, take = 1.0f - keep;
    FOR_EACH(i, n) { teacher[i] = keep == 0.0f ? student[i] : keep * teacher[i] + take * student[i]; }
}

// Dynamic loss scaling: g ← g·(1/scale), and *found_inf = 1 if any unscaled
// gradient is NaN or ±∞ (the flag is zeroed before the launch; every writer
// writes the same value).
extern "C" __global__ void unscale_grads_check_finite(float* __restrict__ g, int64_t n, float inv_scale,
                                                      int* __restrict__ found_inf) {
    bool bad = false;
    FOR_EACH(i, n) {
        float x = g[i] * inv_scale;
        g[i] = x;
        bad |= !is_finite(x);
    }
    if (bad) *found_inf = 1;
}

// The same with the scale read from the device loss scaler's state (see
// loss_scale_update), so a captured fp16 step unscales by each step's scale.
extern "C" __global__ void unscale_grads_by_state(float* __restrict__ g, int64_t n, int* __restrict__ state) {
    const float inv_scale = 1.0f / __int_as_float(state[0]);
    bool bad = false;
    FOR_EACH(i, n) {
        float x = g[i] * inv_scale;
        g[i] = x;
        bad |= !is_finite(x);
    }
    if (bad) state[2] = 1;
}

// The loss scaler's state machine on the device, one thread, after the
// unscale: state = [scale (f32 bits), good steps, overflow flag, skip flag].
// An overflow backs the scale off (not below min_scale), restarts the count
// and sets skip, which the optimiser kernels read; `interval` good steps in a
// row grow the scale unless that overflows f32. The overflow flag is cleared
// for the next step. As engine/src/scaler.rs does on the host.
extern "C" __global__ void loss_scale_update(int* __restrict__ state, float growth, float backoff, int interval,
                                             float min_scale) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    float scale = __int_as_float(state[0]);
    int good = state[1];
    const bool overflow = state[2] != 0;
    if (overflow) {
        scale = fmaxf(scale * backoff, min_scale);
        good = 0;
    } else {
        good += 1;
        if (good >= interval) {
            const float grown = scale * growth;
            if (is_finite(grown)) scale = grown;
            good = 0;
        }
    }
    state[0] = __float_as_int(scale);
    state[1] = good;
    state[2] = 0;
    state[3] = overflow ? 1 : 0;
}

// dst ← srcs[*slot] (slot 0 or 1), in 16-bit words: a captured step reads
// the input buffer its cell names, while the other one is being filled.
extern "C" __global__ void copy_selected_u16(uint16_t* __restrict__ dst, const uint16_t* __restrict__ src0,
                                             const uint16_t* __restrict__ src1, const int* __restrict__ slot,
                                             int64_t n) {
    const uint16_t* src = *slot == 0 ? src0 : src1;
    FOR_EACH(i, n) { dst[i] = src[i]; }
}

// Global gradient check, pass 1: each block's Σg² over its finite elements
// into partials[blockIdx.x], and *found_nonfinite = 1 if any element is NaN or
// ±∞. The blocks' shares depend only on n and the grid, and pass 2 adds the
// partials in one fixed order, so the sum is the same on every run.
extern "C" __global__ void grad_sum_squares_partials(const float* __restrict__ g, int64_t n,
                                                     float* __restrict__ partials, int* __restrict__ found_nonfinite) {
    __shared__ float scratch[32];
    float acc = 0.0f;
    bool bad = false;
    FOR_EACH(i, n) {
        float x = g[i];
        if (is_finite(x)) {
            acc += x * x;
        } else {
            bad = true;
        }
    }
    if (bad) *found_nonfinite = 1;
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

// Pass 2, one block: *sum = Σ partials[0..count).
extern "C" __global__ void __launch_bounds__(1024) sum_partials(const float* __restrict__ partials, int64_t count,
                                                                float* __restrict__ sum) {
    __shared__ float scratch[32];
    float acc = 0.0f;
    for (int64_t i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
    acc = block_sum(acc, scratch);
    if (threadIdx.x == 0) *sum = acc;
}
