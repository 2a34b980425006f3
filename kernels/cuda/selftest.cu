// Kernels that test the launch path and the emulator itself: reductions and
// a barrier-ordered exchange with known answers, and deliberately broken
// kernels (a missing barrier, a barrier some threads skip, a shuffle with
// exited lanes, a write past the end) that the emulator must catch or
// visibly mis-compute. The broken ones are for the emulator only: on a GPU
// their behaviour is undefined.

// out[block] = the sum of x over the block's slice (block_sum: shuffles + shared).
extern "C" __global__ void selftest_block_sum(const float* x, float* out, int n) {
    __shared__ float scratch[32];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float total = block_sum(i < n ? x[i] : 0.0f, scratch);
    if (threadIdx.x == 0) out[blockIdx.x] = total;
}

// Per warp: out[warp] = sum by __shfl_down_sync; out[warps + warp] = lane 7's
// value broadcast by __shfl_sync; up[i] = x[i - 1] within the warp (lane 0 keeps its own).
extern "C" __global__ void selftest_warp_shuffles(const float* x, float* out, float* up) {
    unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    float v = x[threadIdx.x];
    float sum = v;
    for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_down_sync(0xFFFFFFFFu, sum, offset);
    float seventh = __shfl_sync(0xFFFFFFFFu, v, 7);
    up[threadIdx.x] = __shfl_up_sync(0xFFFFFFFFu, v, 1);
    if (lane == 0) {
        out[warp] = sum;
        out[warps + warp] = seventh;
    }
}

// y = x reversed within each block, through shared memory.
extern "C" __global__ void selftest_reverse_in_block(const float* x, float* y) {
    DYNAMIC_SHARED(float, s);
    unsigned t = threadIdx.x, base = blockIdx.x * blockDim.x;
    s[t] = x[base + t];
    __syncthreads();
    y[base + t] = s[blockDim.x - 1 - t];
}

// Broken: the same exchange without the barrier.
extern "C" __global__ void selftest_reverse_missing_barrier(const float* x, float* y) {
    DYNAMIC_SHARED(float, s);
    unsigned t = threadIdx.x, base = blockIdx.x * blockDim.x;
    s[t] = x[base + t];
    y[base + t] = s[blockDim.x - 1 - t];
}

// Broken: thread 0 exits before a barrier the others wait at.
extern "C" __global__ void selftest_partial_barrier(float* y) {
    if (threadIdx.x == 0) return;
    __syncthreads();
    y[threadIdx.x] = 1.0f;
}

// Broken: odd lanes exit, even lanes shuffle with a full mask.
extern "C" __global__ void selftest_shuffle_inactive_lanes(float* y) {
    if (threadIdx.x % 2) return;
    y[threadIdx.x] = __shfl_xor_sync(0xFFFFFFFFu, 1.0f, 1);
}

// Broken: writes one element past the end.
extern "C" __global__ void selftest_write_past_end(float* y, int n) {
    if (threadIdx.x == 0) y[n] = 1.0f;
}

// Broken: every block reads what block 0 writes in the same launch, which
// only works if block 0 happens to run first.
extern "C" __global__ void selftest_reads_block_zero(float* flag, float* out) {
    if (threadIdx.x != 0) return;
    if (blockIdx.x == 0) *flag = 1.0f;
    out[blockIdx.x] = *flag;
}
