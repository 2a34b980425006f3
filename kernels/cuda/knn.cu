// The kNN monitor on the device: unit rows, then for each query the k most
// similar memory rows and their similarity-weighted vote (trainer/src/knn.rs
// is the CPU reference, which these follow number for number).

__device__ __forceinline__ bool knn_finite(float x) { return (__float_as_uint(x) & 0x7F800000u) != 0x7F800000u; }

// Scales each of `rows` rows of `dim` floats to unit L2 norm, one thread per
// row: the norm summed in f64 in row order and clamped to 1e-12, each value
// scaled in f64 and rounded, as the CPU does. *nonfinite = 1 if a value is
// NaN or ±∞ (zeroed before the launch).
extern "C" __global__ void knn_normalize_rows(float* __restrict__ x, int64_t rows, int64_t dim,
                                              int* __restrict__ nonfinite) {
    FOR_EACH(r, rows) {
        float* row = x + r * dim;
        double sum = 0.0;
        bool bad = false;
        for (int64_t j = 0; j < dim; ++j) {
            const double v = row[j];
            sum += v * v;
            bad |= !knn_finite(row[j]);
        }
        const double norm = sqrt(sum);
        const double scale = 1.0 / (norm > 1e-12 ? norm : 1e-12);
        for (int64_t j = 0; j < dim; ++j) row[j] = static_cast<float>(static_cast<double>(row[j]) * scale);
        if (bad) *nonfinite = 1;
    }
}

// A float's order as an unsigned key: a larger float has a larger key.
__device__ __forceinline__ uint32_t knn_key(float v) {
    const uint32_t u = __float_as_uint(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Exclusive prefix sum of `v` over a block (a multiple of 32 threads), and
// the block's total in *total; `scratch` holds 32 words of shared memory.
__device__ __forceinline__ uint32_t knn_block_scan(uint32_t v, uint32_t* scratch, uint32_t* total) {
    const unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    uint32_t x = v;
    for (int d = 1; d < 32; d <<= 1) {
        const uint32_t y = __shfl_up_sync(0xFFFFFFFFu, x, d);
        if (lane >= static_cast<unsigned>(d)) x += y;
    }
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 31) scratch[warp] = x;
    __syncthreads();
    uint32_t before = 0, all = 0;
    for (unsigned w = 0; w < warps; ++w) {
        if (w < warp) before += scratch[w];
        all += scratch[w];
    }
    *total = all;
    return before + x - v;
}

// One block per query row of `sims` ([queries, rows], cosine similarities):
// the k largest similarities (equal ones taken in memory order, as the CPU
// breaks ties), each voting for its row's label with weight
// exp((sim − best) / temperature) in f64; the class with the largest sum
// (the lowest on a tie) goes to predicted[query]. The k-th largest value is
// found bit by bit on order-preserving keys (32 counting passes), then the
// chosen rows are gathered in index order. Dynamic shared memory: k int64
// indices, k f64 weights and `classes` f64 scores. `temperature` is an f64's
// bits.
extern "C" __global__ void __launch_bounds__(256)
    knn_vote(const float* __restrict__ sims, const int64_t* __restrict__ labels, int64_t rows, int k, int classes,
             uint64_t temperature_bits, int64_t* __restrict__ predicted) {
    DYNAMIC_SHARED(double, shared);
    double* weights = shared;
    double* scores = shared + k;
    int64_t* chosen = reinterpret_cast<int64_t*>(shared + k + classes);
    __shared__ uint32_t scratch[32];
    const float* row = sims + static_cast<int64_t>(blockIdx.x) * rows;
    const double temperature = __longlong_as_double(static_cast<long long>(temperature_bits));

    // The k-th largest key: the largest t with at least k keys ≥ t.
    uint32_t t = 0, total = 0;
    for (int b = 31; b >= 0; --b) {
        const uint32_t candidate = t | (1u << b);
        uint32_t count = 0;
        for (int64_t i = threadIdx.x; i < rows; i += blockDim.x) count += knn_key(row[i]) >= candidate;
        knn_block_scan(count, scratch, &total);
        if (total >= static_cast<uint32_t>(k)) t = candidate;
    }
    uint32_t above = 0;
    for (int64_t i = threadIdx.x; i < rows; i += blockDim.x) above += knn_key(row[i]) > t;
    knn_block_scan(above, scratch, &above);
    const uint32_t ties_wanted = static_cast<uint32_t>(k) - above;

    // Gather the chosen rows in index order, tile by tile.
    uint32_t taken = 0, ties_seen = 0;
    for (int64_t start = 0; start < rows && taken < static_cast<uint32_t>(k); start += blockDim.x) {
        const int64_t i = start + threadIdx.x;
        const uint32_t key = i < rows ? knn_key(row[i]) : 0;
        const uint32_t tie = i < rows && key == t;
        uint32_t tile_ties = 0, tile_taken = 0;
        const uint32_t tie_rank = ties_seen + knn_block_scan(tie, scratch, &tile_ties);
        const uint32_t take = i < rows && (key > t || (tie && tie_rank < ties_wanted));
        const uint32_t slot = taken + knn_block_scan(take, scratch, &tile_taken);
        if (take) chosen[slot] = i;
        ties_seen += tile_ties;
        taken += tile_taken;
    }
    __syncthreads();

    // The best similarity is the largest key's.
    float best_local = row[chosen[0]];
    for (int j = threadIdx.x; j < k; j += blockDim.x) best_local = fmaxf(best_local, row[chosen[j]]);
    __shared__ float best_shared[32];
    best_local = warp_max(best_local);
    if (threadIdx.x % 32 == 0) best_shared[threadIdx.x / 32] = best_local;
    __syncthreads();
    double best = best_shared[0];
    for (unsigned w = 1; w < blockDim.x / 32; ++w) best = fmax(best, static_cast<double>(best_shared[w]));
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
        weights[j] = exp((static_cast<double>(row[chosen[j]]) - best) / temperature);
    }
    __syncthreads();
    for (int c = threadIdx.x; c < classes; c += blockDim.x) {
        double score = 0.0;
        for (int j = 0; j < k; ++j) {
            if (labels[chosen[j]] == c) score += weights[j];
        }
        scores[c] = score;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int winner = 0;
        for (int c = 1; c < classes; ++c) {
            if (scores[c] > scores[winner]) winner = c;
        }
        predicted[blockIdx.x] = winner;
    }
}
