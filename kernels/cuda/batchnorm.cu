// Batch normalisation over the channel axis of NHWC activations seen as
// [rows, c] (channel fastest). Statistics and coefficients are f32; x, y and
// the gradients of activations are f32, bf16 or f16.
//
// Forward: bn_stats_partial reduces row chunks to per-channel Welford states,
// bn_{batch,momentum}_finalize merges them (Chan) and writes the per-channel
// table below, bn_apply* normalises (optionally fused with the residual add and
// ReLU). Backward: bn_*backward_partial reduces Σdy and Σdy·(x − μ̂) per chunk,
// bn_backward_finalize turns them into dγ, dβ and dx = k0·dy + k1·x + k2, and
// bn_*backward_apply evaluates dx.
//
// The per-channel table (f32 [6, c]), one row each:
//   0 batch mean, 1 unbiased batch variance (both returned as statistics),
//   2 scale γ·r, 3 shift β − γ·r·μ̂, 4 normalising mean μ̂, 5 r = 1/sqrt(σ̂² + ε).

constexpr int kBatchMeanRow = 0;
constexpr int kBatchVarRow = 1;
constexpr int kScaleRow = 2;
constexpr int kShiftRow = 3;
constexpr int kMeanHatRow = 4;
constexpr int kInvStdRow = 5;

// Channels per block of the reductions: one warp's lanes read consecutive
// channels of a row, so every load is coalesced.
constexpr int kTileChannels = 32;
// Rows a partial-reduction block walks side by side (blockDim.y).
constexpr int kRowLanes = 8;
// Chunks a finalize block merges side by side (blockDim.y). Finalize runs
// one block per channel tile, so its loop is latency-bound: many lanes,
// and kUnroll loads in flight per lane.
constexpr int kMergeLanes = 32;
// Elements (rows in the reductions) a thread loads together before using
// them: several requests in flight per thread are what saturates memory.
constexpr int kUnroll = 4;

// Count, mean and M2 = Σ(x − mean)² of one channel over some rows.
struct Welford {
    float n, mean, m2;
};

// Chan et al.'s pairwise merge; exact for empty sides.
__device__ __forceinline__ Welford welford_merge(Welford a, Welford b) {
    if (b.n == 0.0f) return a;
    if (a.n == 0.0f) return b;
    float n = a.n + b.n;
    float delta = b.mean - a.mean;
    float wb = b.n / n;
    Welford r;
    r.n = n;
    r.mean = a.mean + delta * wb;
    r.m2 = a.m2 + b.m2 + delta * delta * a.n * wb;
    return r;
}

// One more value into a running Welford state. The fast division (2 ulp)
// adds only a rounding-sized error to each update.
__device__ __forceinline__ void welford_push(Welford& w, float v) {
    w.n += 1.0f;
    float d = v - w.mean;
    w.mean += __fdividef(d, w.n);
    w.m2 += d * (v - w.mean);
}

// Rows [begin, end) of chunk `chunk` of `rows_per_chunk` rows.
__device__ __forceinline__ int64_t chunk_begin(int64_t chunk, int64_t rows_per_chunk) {
    return chunk * rows_per_chunk;
}
__device__ __forceinline__ int64_t chunk_end(int64_t chunk, int64_t rows_per_chunk, int64_t rows) {
    int64_t end = (chunk + 1) * rows_per_chunk;
    return end < rows ? end : rows;
}

// Tree merge of `kLanes` Welford states per channel in shared memory; the
// result lands in lane 0. Every thread of the block must call it.
template <int kLanes>
__device__ __forceinline__ void merge_lanes(Welford (*states)[kTileChannels]) {
    for (int half = kLanes / 2; half > 0; half /= 2) {
        if (threadIdx.y < static_cast<unsigned>(half)) {
            states[threadIdx.y][threadIdx.x] =
                welford_merge(states[threadIdx.y][threadIdx.x], states[threadIdx.y + half][threadIdx.x]);
        }
        __syncthreads();
    }
}

// Tree sum of two per-channel values over `kLanes` lanes; lane 0 gets the totals.
template <int kLanes>
__device__ __forceinline__ void sum_lanes(float (*sums)[kLanes][kTileChannels]) {
    for (int half = kLanes / 2; half > 0; half /= 2) {
        if (threadIdx.y < static_cast<unsigned>(half)) {
            for (int k = 0; k < 2; k++) sums[k][threadIdx.y][threadIdx.x] += sums[k][threadIdx.y + half][threadIdx.x];
        }
        __syncthreads();
    }
}

// Block (kTileChannels, kRowLanes), grid (channel tiles, chunks). Writes the
// chunk's per-channel mean and M2 to partial[chunk][2][c]; counts follow from
// the chunk geometry.
template <class T>
__device__ __forceinline__ void bn_stats_partial(const T* __restrict__ x, float* __restrict__ partial, int64_t rows,
                                                 int c, int64_t rows_per_chunk) {
    __shared__ Welford states[kRowLanes][kTileChannels];
    int ch = blockIdx.x * kTileChannels + threadIdx.x;
    int64_t chunk = blockIdx.y;
    Welford w = {0.0f, 0.0f, 0.0f};
    if (ch < c) {
        int64_t end = chunk_end(chunk, rows_per_chunk, rows);
        for (int64_t r = chunk_begin(chunk, rows_per_chunk) + threadIdx.y; r < end; r += kRowLanes * kUnroll) {
            float v[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; u++) {
                int64_t ru = r + u * kRowLanes;
                v[u] = ru < end ? load(x, ru * c + ch) : 0.0f;
            }
#pragma unroll
            for (int u = 0; u < kUnroll; u++) {
                if (r + u * kRowLanes < end) welford_push(w, v[u]);
            }
        }
    }
    states[threadIdx.y][threadIdx.x] = w;
    __syncthreads();
    merge_lanes<kRowLanes>(states);
    if (threadIdx.y == 0 && ch < c) {
        partial[(chunk * 2) * c + ch] = states[0][threadIdx.x].mean;
        partial[(chunk * 2 + 1) * c + ch] = states[0][threadIdx.x].m2;
    }
}

// Block (kTileChannels, kMergeLanes), grid (channel tiles). Merges the chunks'
// Welford states and fills the table. The normaliser is
//   μ̂ = batch_weight·μ_b + history_weight·μ_hist,
//   σ̂² = var_weight·v_b + history_weight·σ²_hist   (v_b the biased variance);
// without history (kMomentum false) μ̂ = μ_b and σ̂² = v_b.
template <bool kMomentum>
__device__ __forceinline__ void bn_stats_finalize(const float* __restrict__ partial, int64_t chunks,
                                                  int64_t rows_per_chunk, int64_t rows, int c,
                                                  const float* __restrict__ gamma, const float* __restrict__ beta,
                                                  const float* __restrict__ hist_mean,
                                                  const float* __restrict__ hist_var, float batch_weight,
                                                  float var_weight, float history_weight, float eps,
                                                  float* __restrict__ table) {
    __shared__ Welford states[kMergeLanes][kTileChannels];
    int ch = blockIdx.x * kTileChannels + threadIdx.x;
    Welford w = {0.0f, 0.0f, 0.0f};
    if (ch < c) {
        for (int64_t k = threadIdx.y; k < chunks; k += kMergeLanes * kUnroll) {
            Welford part[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; u++) {
                int64_t ku = k + u * kMergeLanes;
                bool in = ku < chunks;
                int64_t count = in ? chunk_end(ku, rows_per_chunk, rows) - chunk_begin(ku, rows_per_chunk) : 0;
                part[u].n = static_cast<float>(count);
                part[u].mean = in ? partial[(ku * 2) * c + ch] : 0.0f;
                part[u].m2 = in ? partial[(ku * 2 + 1) * c + ch] : 0.0f;
            }
#pragma unroll
            for (int u = 0; u < kUnroll; u++) w = welford_merge(w, part[u]);
        }
    }
    states[threadIdx.y][threadIdx.x] = w;
    __syncthreads();
    merge_lanes<kMergeLanes>(states);
    if (threadIdx.y == 0 && ch < c) {
        Welford total = states[0][threadIdx.x];
        float n = static_cast<float>(rows);
        float biased = total.m2 / n;
        float mean_hat = total.mean, var_hat = biased;
        if (kMomentum) {
            mean_hat = batch_weight * total.mean + history_weight * hist_mean[ch];
            var_hat = var_weight * biased + history_weight * hist_var[ch];
        }
        float r = 1.0f / sqrtf(var_hat + eps);
        float scale = gamma[ch] * r;
        table[kBatchMeanRow * c + ch] = total.mean;
        table[kBatchVarRow * c + ch] = total.m2 / (n - 1.0f);
        table[kScaleRow * c + ch] = scale;
        table[kShiftRow * c + ch] = beta[ch] - scale * mean_hat;
        table[kMeanHatRow * c + ch] = mean_hat;
        table[kInvStdRow * c + ch] = r;
    }
}

// What follows the affine normalisation in the apply kernels.
enum Epilogue { kPlain, kRelu, kAddRelu };

// A thread's walk over a flat [rows, c] tensor: elements tid, tid + stride,
// tid + 2·stride, … (stride = all threads of the grid), kUnroll per step of
// the loop, each with its channel, kept by adding the stride modulo c (no
// 64-bit modulo per element).
struct FlatWalk {
    int64_t next, stride;
    int ch, step;

    __device__ __forceinline__ explicit FlatWalk(int c) {
        next = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
        stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
        ch = static_cast<int>(next % c);
        step = static_cast<int>(stride % c);
    }

    // The next element's index; its channel goes to *channel.
    __device__ __forceinline__ int64_t take(int* channel, int c) {
        int64_t i = next;
        *channel = ch;
        next += stride;
        ch += step;
        if (ch >= c) ch -= c;
        return i;
    }
};

// y = scale·x + shift per channel [+ residual] [then ReLU], flat over n = rows·c elements.
template <class T, Epilogue kEpilogue>
__device__ __forceinline__ void bn_apply(const T* __restrict__ x, const T* __restrict__ residual,
                                         const float* __restrict__ table, T* __restrict__ y, int64_t n, int c) {
    const float* scale = table + kScaleRow * c;
    const float* shift = table + kShiftRow * c;
    for (FlatWalk w(c); w.next < n;) {
        float v[kUnroll], res[kUnroll];
        int chs[kUnroll];
        int64_t idx[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; u++) {
            idx[u] = w.take(&chs[u], c);
            bool in = idx[u] < n;
            v[u] = in ? load(x, idx[u]) : 0.0f;
            res[u] = kEpilogue == kAddRelu && in ? load(residual, idx[u]) : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < kUnroll; u++) {
            float out = v[u] * scale[chs[u]] + shift[chs[u]] + res[u];
            if (kEpilogue != kPlain) out = relu_keep_nan(out);
            if (idx[u] < n) store(y, idx[u], out);
        }
    }
}

// How the backward reads the incoming gradient: as is, or gated by the fused
// ReLU's output (y > 0), optionally also writing the gated gradient (which is
// the residual's gradient of the fused add).
enum GradGate { kUngated, kGated, kGatedWritten };

// Block (kTileChannels, kRowLanes), grid (channel tiles, chunks). Writes the
// chunk's per-channel Σg and Σg·(x − μ̂) to partial[chunk][2][c].
template <class T, GradGate kGate>
__device__ __forceinline__ void bn_backward_partial(const T* __restrict__ x, const T* __restrict__ dy,
                                                    const T* __restrict__ y, T* __restrict__ gated,
                                                    const float* __restrict__ table, float* __restrict__ partial,
                                                    int64_t rows, int c, int64_t rows_per_chunk) {
    __shared__ float sums[2][kRowLanes][kTileChannels];
    int ch = blockIdx.x * kTileChannels + threadIdx.x;
    int64_t chunk = blockIdx.y;
    float sum_g = 0.0f, sum_g_xc = 0.0f;
    if (ch < c) {
        float mean_hat = table[kMeanHatRow * c + ch];
        int64_t end = chunk_end(chunk, rows_per_chunk, rows);
        for (int64_t r = chunk_begin(chunk, rows_per_chunk) + threadIdx.y; r < end; r += kRowLanes * kUnroll) {
            float g[kUnroll], xv[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; u++) {
                int64_t ru = r + u * kRowLanes, i = ru * c + ch;
                bool in = ru < end;
                g[u] = in ? load(dy, i) : 0.0f;
                if (kGate != kUngated && in && !(load(y, i) > 0.0f)) g[u] = 0.0f;
                xv[u] = in ? load(x, i) : mean_hat;
            }
            // Stores only after every load is issued: they may alias as far as the compiler knows.
#pragma unroll
            for (int u = 0; u < kUnroll; u++) {
                int64_t ru = r + u * kRowLanes;
                if (kGate == kGatedWritten && ru < end) store(gated, ru * c + ch, g[u]);
                sum_g += g[u];
                sum_g_xc += g[u] * (xv[u] - mean_hat);
            }
        }
    }
    sums[0][threadIdx.y][threadIdx.x] = sum_g;
    sums[1][threadIdx.y][threadIdx.x] = sum_g_xc;
    __syncthreads();
    sum_lanes<kRowLanes>(sums);
    if (threadIdx.y == 0 && ch < c) {
        partial[(chunk * 2) * c + ch] = sums[0][0][threadIdx.x];
        partial[(chunk * 2 + 1) * c + ch] = sums[1][0][threadIdx.x];
    }
}

// Block (kTileChannels, kMergeLanes), grid (channel tiles). With Σg and
// Σg·(x − μ̂) over all rows, r = 1/sqrt(σ̂² + ε), a = ∂μ̂/∂μ_b, b = ∂σ̂²/∂v_b:
//   dγ = r·Σg·(x − μ̂), dβ = Σg,
//   dx = γr·g − b·γr³·Σg(x − μ̂)/n·(x − μ_b) − a·γr·Σg/n = k0·g + k1·x + k2.
// coeff is f32 [3, c] (k0, k1, k2).
__device__ __forceinline__ void bn_backward_finalize_impl(const float* __restrict__ partial, int64_t chunks,
                                                          int64_t rows, int c, const float* __restrict__ gamma,
                                                          const float* __restrict__ table, float a, float b,
                                                          float* __restrict__ dgamma, float* __restrict__ dbeta,
                                                          float* __restrict__ coeff) {
    __shared__ float sums[2][kMergeLanes][kTileChannels];
    int ch = blockIdx.x * kTileChannels + threadIdx.x;
    float sum_g = 0.0f, sum_g_xc = 0.0f;
    if (ch < c) {
        for (int64_t k = threadIdx.y; k < chunks; k += kMergeLanes * kUnroll) {
            float g[kUnroll], g_xc[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; u++) {
                int64_t ku = k + u * kMergeLanes;
                g[u] = ku < chunks ? partial[(ku * 2) * c + ch] : 0.0f;
                g_xc[u] = ku < chunks ? partial[(ku * 2 + 1) * c + ch] : 0.0f;
            }
#pragma unroll
            for (int u = 0; u < kUnroll; u++) {
                sum_g += g[u];
                sum_g_xc += g_xc[u];
            }
        }
    }
    sums[0][threadIdx.y][threadIdx.x] = sum_g;
    sums[1][threadIdx.y][threadIdx.x] = sum_g_xc;
    __syncthreads();
    sum_lanes<kMergeLanes>(sums);
    if (threadIdx.y == 0 && ch < c) {
        sum_g = sums[0][0][threadIdx.x];
        sum_g_xc = sums[1][0][threadIdx.x];
        float n = static_cast<float>(rows);
        float r = table[kInvStdRow * c + ch];
        float gr = gamma[ch] * r;
        float slope = -gr * r * r * b * sum_g_xc / n;
        coeff[ch] = gr;
        coeff[c + ch] = slope;
        coeff[2 * c + ch] = -gr * a * sum_g / n - slope * table[kBatchMeanRow * c + ch];
        dgamma[ch] = sum_g_xc * r;
        dbeta[ch] = sum_g;
    }
}

// dx = k0·g + k1·x + k2, with g = dy (gated by y > 0 when kGated), flat over n elements.
template <class T, bool kGated>
__device__ __forceinline__ void bn_backward_apply(const T* __restrict__ x, const T* __restrict__ dy,
                                                  const T* __restrict__ y, const float* __restrict__ coeff,
                                                  T* __restrict__ dx, int64_t n, int c) {
    for (FlatWalk w(c); w.next < n;) {
        float g[kUnroll], xv[kUnroll];
        int chs[kUnroll];
        int64_t idx[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; u++) {
            idx[u] = w.take(&chs[u], c);
            bool in = idx[u] < n;
            g[u] = in ? load(dy, idx[u]) : 0.0f;
            if (kGated && in && !(load(y, idx[u]) > 0.0f)) g[u] = 0.0f;
            xv[u] = in ? load(x, idx[u]) : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < kUnroll; u++) {
            int ch = chs[u];
            if (idx[u] < n) store(dx, idx[u], coeff[ch] * g[u] + coeff[c + ch] * xv[u] + coeff[2 * c + ch]);
        }
    }
}

// ---- Forward statistics -----------------------------------------------------

extern "C" __global__ void bn_stats_partial_f32(const float* x, float* partial, int64_t rows, int c,
                                                int64_t rows_per_chunk) {
    bn_stats_partial(x, partial, rows, c, rows_per_chunk);
}
extern "C" __global__ void bn_stats_partial_bf16(const bf16* x, float* partial, int64_t rows, int c,
                                                 int64_t rows_per_chunk) {
    bn_stats_partial(x, partial, rows, c, rows_per_chunk);
}
extern "C" __global__ void bn_stats_partial_f16(const f16* x, float* partial, int64_t rows, int c,
                                                int64_t rows_per_chunk) {
    bn_stats_partial(x, partial, rows, c, rows_per_chunk);
}

// Training mode: normalise with the batch's own mean and biased variance.
extern "C" __global__ void __launch_bounds__(1024) bn_batch_finalize(const float* partial, int64_t chunks, int64_t rows_per_chunk,
                                             int64_t rows, int c, const float* gamma, const float* beta, float eps,
                                             float* table) {
    bn_stats_finalize<false>(partial, chunks, rows_per_chunk, rows, c, gamma, beta, nullptr, nullptr, 1.0f, 1.0f,
                             0.0f, eps, table);
}

// Momentum BN: normalise with the batch statistics blended into the history,
// with weight β (read from device memory: it changes every step) for the
// batch mean and β·var_factor for its biased variance, 1 − β for the history.
extern "C" __global__ void __launch_bounds__(1024) bn_momentum_finalize(const float* partial, int64_t chunks, int64_t rows_per_chunk,
                                                int64_t rows, int c, const float* gamma, const float* beta,
                                                const float* hist_mean, const float* hist_var,
                                                const float* batch_weight, float var_factor, float eps,
                                                float* table) {
    const float b = *batch_weight;
    bn_stats_finalize<true>(partial, chunks, rows_per_chunk, rows, c, gamma, beta, hist_mean, hist_var, b,
                            b * var_factor, 1.0f - b, eps, table);
}

// Evaluation mode: the table from fixed statistics. There is no batch: its
// rows hold 0, which backward multiplies by a = b = 0.
extern "C" __global__ void bn_running_coefficients(const float* mean, const float* var, const float* gamma,
                                                   const float* beta, float eps, float* table, int c) {
    FOR_EACH(ch, c) {
        float r = 1.0f / sqrtf(var[ch] + eps);
        float scale = gamma[ch] * r;
        table[kBatchMeanRow * c + ch] = 0.0f;
        table[kBatchVarRow * c + ch] = 0.0f;
        table[kScaleRow * c + ch] = scale;
        table[kShiftRow * c + ch] = beta[ch] - scale * mean[ch];
        table[kMeanHatRow * c + ch] = mean[ch];
        table[kInvStdRow * c + ch] = r;
    }
}

// ---- Forward apply ----------------------------------------------------------

extern "C" __global__ void bn_apply_f32(const float* x, const float* table, float* y, int64_t n, int c) {
    bn_apply<float, kPlain>(x, nullptr, table, y, n, c);
}
extern "C" __global__ void bn_apply_bf16(const bf16* x, const float* table, bf16* y, int64_t n, int c) {
    bn_apply<bf16, kPlain>(x, nullptr, table, y, n, c);
}
extern "C" __global__ void bn_apply_f16(const f16* x, const float* table, f16* y, int64_t n, int c) {
    bn_apply<f16, kPlain>(x, nullptr, table, y, n, c);
}

extern "C" __global__ void bn_apply_relu_f32(const float* x, const float* table, float* y, int64_t n, int c) {
    bn_apply<float, kRelu>(x, nullptr, table, y, n, c);
}
extern "C" __global__ void bn_apply_relu_bf16(const bf16* x, const float* table, bf16* y, int64_t n, int c) {
    bn_apply<bf16, kRelu>(x, nullptr, table, y, n, c);
}
extern "C" __global__ void bn_apply_relu_f16(const f16* x, const float* table, f16* y, int64_t n, int c) {
    bn_apply<f16, kRelu>(x, nullptr, table, y, n, c);
}

extern "C" __global__ void bn_apply_add_relu_f32(const float* x, const float* residual, const float* table, float* y,
                                                 int64_t n, int c) {
    bn_apply<float, kAddRelu>(x, residual, table, y, n, c);
}
extern "C" __global__ void bn_apply_add_relu_bf16(const bf16* x, const bf16* residual, const float* table, bf16* y,
                                                  int64_t n, int c) {
    bn_apply<bf16, kAddRelu>(x, residual, table, y, n, c);
}
extern "C" __global__ void bn_apply_add_relu_f16(const f16* x, const f16* residual, const float* table, f16* y,
                                                 int64_t n, int c) {
    bn_apply<f16, kAddRelu>(x, residual, table, y, n, c);
}

// ---- Backward reductions ----------------------------------------------------

extern "C" __global__ void bn_backward_partial_f32(const float* x, const float* dy, const float* table,
                                                   float* partial, int64_t rows, int c, int64_t rows_per_chunk) {
    bn_backward_partial<float, kUngated>(x, dy, nullptr, nullptr, table, partial, rows, c, rows_per_chunk);
}
extern "C" __global__ void bn_backward_partial_bf16(const bf16* x, const bf16* dy, const float* table, float* partial,
                                                    int64_t rows, int c, int64_t rows_per_chunk) {
    bn_backward_partial<bf16, kUngated>(x, dy, nullptr, nullptr, table, partial, rows, c, rows_per_chunk);
}
extern "C" __global__ void bn_backward_partial_f16(const f16* x, const f16* dy, const float* table, float* partial,
                                                   int64_t rows, int c, int64_t rows_per_chunk) {
    bn_backward_partial<f16, kUngated>(x, dy, nullptr, nullptr, table, partial, rows, c, rows_per_chunk);
}

extern "C" __global__ void bn_relu_backward_partial_f32(const float* x, const float* dy, const float* y,
                                                        const float* table, float* partial, int64_t rows, int c,
                                                        int64_t rows_per_chunk) {
    bn_backward_partial<float, kGated>(x, dy, y, nullptr, table, partial, rows, c, rows_per_chunk);
}
extern "C" __global__ void bn_relu_backward_partial_bf16(const bf16* x, const bf16* dy, const bf16* y,
                                                         const float* table, float* partial, int64_t rows, int c,
                                                         int64_t rows_per_chunk) {
    bn_backward_partial<bf16, kGated>(x, dy, y, nullptr, table, partial, rows, c, rows_per_chunk);
}
extern "C" __global__ void bn_relu_backward_partial_f16(const f16* x, const f16* dy, const f16* y, const float* table,
                                                        float* partial, int64_t rows, int c,
                                                        int64_t rows_per_chunk) {
    bn_backward_partial<f16, kGated>(x, dy, y, nullptr, table, partial, rows, c, rows_per_chunk);
}

// Also writes the gated gradient: the residual's gradient, and dx's input.
extern "C" __global__ void bn_add_relu_backward_partial_f32(const float* x, const float* dy, const float* y,
                                                            float* gated, const float* table, float* partial,
                                                            int64_t rows, int c, int64_t rows_per_chunk) {
    bn_backward_partial<float, kGatedWritten>(x, dy, y, gated, table, partial, rows, c, rows_per_chunk);
}
extern "C" __global__ void bn_add_relu_backward_partial_bf16(const bf16* x, const bf16* dy, const bf16* y,
                                                             bf16* gated, const float* table, float* partial,
                                                             int64_t rows, int c, int64_t rows_per_chunk) {
    bn_backward_partial<bf16, kGatedWritten>(x, dy, y, gated, table, partial, rows, c, rows_per_chunk);
}
extern "C" __global__ void bn_add_relu_backward_partial_f16(const f16* x, const f16* dy, const f16* y, f16* gated,
                                                            const float* table, float* partial, int64_t rows, int c,
                                                            int64_t rows_per_chunk) {
    bn_backward_partial<f16, kGatedWritten>(x, dy, y, gated, table, partial, rows, c, rows_per_chunk);
}

extern "C" __global__ void __launch_bounds__(1024) bn_backward_finalize(const float* partial, int64_t chunks, int64_t rows, int c,
                                                const float* gamma, const float* table, float a, float b,
                                                float* dgamma, float* dbeta, float* coeff) {
    bn_backward_finalize_impl(partial, chunks, rows, c, gamma, table, a, b, dgamma, dbeta, coeff);
}

// ---- Backward apply ---------------------------------------------------------

extern "C" __global__ void bn_backward_apply_f32(const float* x, const float* dy, const float* coeff, float* dx,
                                                 int64_t n, int c) {
    bn_backward_apply<float, false>(x, dy, nullptr, coeff, dx, n, c);
}
extern "C" __global__ void bn_backward_apply_bf16(const bf16* x, const bf16* dy, const float* coeff, bf16* dx,
                                                  int64_t n, int c) {
    bn_backward_apply<bf16, false>(x, dy, nullptr, coeff, dx, n, c);
}
extern "C" __global__ void bn_backward_apply_f16(const f16* x, const f16* dy, const float* coeff, f16* dx, int64_t n,
                                                 int c) {
    bn_backward_apply<f16, false>(x, dy, nullptr, coeff, dx, n, c);
}

extern "C" __global__ void bn_relu_backward_apply_f32(const float* x, const float* dy, const float* y,
                                                      const float* coeff, float* dx, int64_t n, int c) {
    bn_backward_apply<float, true>(x, dy, y, coeff, dx, n, c);
}
extern "C" __global__ void bn_relu_backward_apply_bf16(const bf16* x, const bf16* dy, const bf16* y,
                                                       const float* coeff, bf16* dx, int64_t n, int c) {
    bn_backward_apply<bf16, true>(x, dy, y, coeff, dx, n, c);
}
extern "C" __global__ void bn_relu_backward_apply_f16(const f16* x, const f16* dy, const f16* y, const float* coeff,
                                                      f16* dx, int64_t n, int c) {
    bn_backward_apply<f16, true>(x, dy, y, coeff, dx, n, c);
}

// ---- Buffer updates (in place, f32 [c]) ------------------------------------

// Training mode's running statistics: buf ← (1 − momentum)·buf + momentum·batch.
extern "C" __global__ void bn_running_stats_update(float* mean, float* var, const float* batch_mean,
                                                   const float* batch_var, float momentum, int c) {
    FOR_EACH(ch, c) {
        mean[ch] = (1.0f - momentum) * mean[ch] + momentum * batch_mean[ch];
        var[ch] = (1.0f - momentum) * var[ch] + momentum * batch_var[ch];
    }
}

// Momentum BN's lazy history update from both views' statistics:
// μ_h ← β·(μ₁+μ₂)/2 + (1−β)·μ_h, σ²_h ← β·corr·(s²₁+s²₂)/2 + (1−β)·σ²_h,
// β read from device memory.
extern "C" __global__ void momentum_bn_history_update(float* mean, float* var, const float* mean1, const float* var1,
                                                      const float* mean2, const float* var2,
                                                      const float* beta_cell, float correction, int c) {
    const float beta = *beta_cell;
    FOR_EACH(ch, c) {
        mean[ch] = beta * 0.5f * (mean1[ch] + mean2[ch]) + (1.0f - beta) * mean[ch];
        var[ch] = beta * correction * 0.5f * (var1[ch] + var2[ch]) + (1.0f - beta) * var[ch];
    }
}
