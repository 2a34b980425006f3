// Max pooling (square windows, implicit -inf padding) and global average
// pooling over NHWC tensors. Channels are the fastest axis, so consecutive
// threads read consecutive addresses. Sums accumulate in f32.

// Max pooling indexes in 32 bits (64-bit division is slow on a GPU): the host
// checks that pixel counts and one image's elements fit in int; only image
// offsets are 64-bit.

// The first maximum, in scan order, of the window of output pixel (oh, ow)
// in channel `ch` of `image`: its offset in the image, and its value. Padded
// positions are skipped, so they never win; the first element always does
// unless a later one is strictly greater (the CPU backend's rule, NaN
// included).
template <class T>
__device__ __forceinline__ int window_argmax(const T* __restrict__ image, int h, int w, int c, int ch, int oh, int ow,
                                             int kernel, int stride, int padding, float* best_value) {
    int h0 = oh * stride - padding, w0 = ow * stride - padding;
    int r_end = min(kernel, h - h0), s_end = min(kernel, w - w0);
    int best_at = -1;
    float best = 0.0f;
    for (int r = max(0, -h0); r < r_end; r++) {
        for (int s = max(0, -w0); s < s_end; s++) {
            int i = ((h0 + r) * w + (w0 + s)) * c + ch;
            float v = load(image, i);
            if (best_at < 0 || v > best) {
                best = v;
                best_at = i;
            }
        }
    }
    *best_value = best;
    return best_at;
}

// Threads: x over channels, y over output pixels. Blocks: x over groups of
// pixels, y over groups of channels.
template <class T>
__device__ __forceinline__ void max_pool_forward(const T* __restrict__ x, T* __restrict__ y, int n, int h, int w,
                                                 int c, int out_h, int out_w, int kernel, int stride, int padding) {
    int ch = blockIdx.y * blockDim.x + threadIdx.x;
    int pixel = blockIdx.x * blockDim.y + threadIdx.y;
    // No barriers here, so threads past the edge may leave.
    if (ch >= c || pixel >= n * out_h * out_w) return;
    int ow = pixel % out_w, rest = pixel / out_w;
    int oh = rest % out_h, img = rest / out_h;
    float best;
    window_argmax(x + static_cast<int64_t>(img) * h * w * c, h, w, c, ch, oh, ow, kernel, stride, padding, &best);
    store(y, static_cast<int64_t>(pixel) * c + ch, best);
}

// The first and last output index whose window covers input index i along
// one axis: o*stride - padding <= i < o*stride - padding + kernel. The range
// is empty (first > last) where stride > kernel leaves i in no window.
__device__ __forceinline__ int first_window(int i, int kernel, int stride, int padding) {
    int lowest = i + padding - kernel + 1;
    return lowest <= 0 ? 0 : (lowest + stride - 1) / stride;
}
__device__ __forceinline__ int last_window(int i, int stride, int padding, int out) {
    return min((i + padding) / stride, out - 1);
}

// Max-pool backward works on tiles of MAX_TILE_H x MAX_TILE_W input pixels by
// 32 channels, with blocks of 32 x MAX_ROWS threads. It finds the maximum of
// each window that covers the tile once (not once per input it covers), keeps
// its position and gradient in shared memory, and then each input sums the
// gradients of the windows it won. Windows go through shared memory in
// row-major chunks of WINDOW_CHUNK, so any window size fits, and every input
// still adds its windows in output order, as the CPU backend does. No atomics.
#define MAX_TILE_H 8
#define MAX_TILE_W 16
#define MAX_ROWS 8
#define PIXELS_PER_THREAD (MAX_TILE_H * MAX_TILE_W / MAX_ROWS)
#define WINDOW_CHUNK 64

template <class T>
__device__ __forceinline__ void max_pool_backward(const T* __restrict__ x, const T* __restrict__ dy,
                                                  T* __restrict__ dx, int h, int w, int c, int out_h, int out_w,
                                                  int kernel, int stride, int padding) {
    __shared__ int winner[WINDOW_CHUNK][32];
    __shared__ float window_grad[WINDOW_CHUNK][32];
    __shared__ int row_first[MAX_TILE_H], row_last[MAX_TILE_H], col_first[MAX_TILE_W], col_last[MAX_TILE_W];
    int lane = threadIdx.x, ch = blockIdx.y * 32 + lane;
    bool live = ch < c;
    int tiles_w = (w + MAX_TILE_W - 1) / MAX_TILE_W, tiles_h = (h + MAX_TILE_H - 1) / MAX_TILE_H;
    int tile_col = blockIdx.x % tiles_w, tile_row = (blockIdx.x / tiles_w) % tiles_h;
    int img = blockIdx.x / (tiles_w * tiles_h);
    int h0 = tile_row * MAX_TILE_H, w0 = tile_col * MAX_TILE_W;
    int tile_h = min(MAX_TILE_H, h - h0), tile_w = min(MAX_TILE_W, w - w0);
    const T* image = x + static_cast<int64_t>(img) * h * w * c;
    const T* grad = dy + static_cast<int64_t>(img) * out_h * out_w * c;

    // The windows of each tile row and column; all of them, for the tile.
    if (threadIdx.y == 0 && lane < tile_h) {
        row_first[lane] = first_window(h0 + lane, kernel, stride, padding);
        row_last[lane] = last_window(h0 + lane, stride, padding, out_h);
    }
    if (threadIdx.y == 1 && lane < tile_w) {
        col_first[lane] = first_window(w0 + lane, kernel, stride, padding);
        col_last[lane] = last_window(w0 + lane, stride, padding, out_w);
    }
    int oh0 = first_window(h0, kernel, stride, padding), ow0 = first_window(w0, kernel, stride, padding);
    int rows = last_window(h0 + tile_h - 1, stride, padding, out_h) - oh0 + 1;
    int cols = last_window(w0 + tile_w - 1, stride, padding, out_w) - ow0 + 1;
    int windows = rows > 0 && cols > 0 ? rows * cols : 0;

    float acc[PIXELS_PER_THREAD];
#pragma unroll
    for (int k = 0; k < PIXELS_PER_THREAD; k++) acc[k] = 0.0f;

    for (int start = 0; start < windows; start += WINDOW_CHUNK) {
        int end = min(start + WINDOW_CHUNK, windows);
        __syncthreads();  // the previous chunk is consumed; the row/column ranges are written
        for (int j = start + threadIdx.y; j < end; j += MAX_ROWS) {
            int oh = oh0 + j / cols, ow = ow0 + j % cols;
            if (live) {
                float best;
                winner[j - start][lane] = window_argmax(image, h, w, c, ch, oh, ow, kernel, stride, padding, &best);
                window_grad[j - start][lane] = load(grad, (oh * out_w + ow) * c + ch);
            }
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < PIXELS_PER_THREAD; k++) {
            int q = threadIdx.y + k * MAX_ROWS, r = q / MAX_TILE_W, s = q % MAX_TILE_W;
            if (live && r < tile_h && s < tile_w) {
                int self = ((h0 + r) * w + (w0 + s)) * c + ch;
                for (int oh = row_first[r]; oh <= row_last[r]; oh++) {
                    for (int ow = col_first[s]; ow <= col_last[s]; ow++) {
                        int j = (oh - oh0) * cols + (ow - ow0) - start;
                        if (j >= 0 && j < end - start && winner[j][lane] == self) acc[k] += window_grad[j][lane];
                    }
                }
            }
        }
    }
#pragma unroll
    for (int k = 0; k < PIXELS_PER_THREAD; k++) {
        int q = threadIdx.y + k * MAX_ROWS, r = q / MAX_TILE_W, s = q % MAX_TILE_W;
        if (live && r < tile_h && s < tile_w) {
            store(dx, static_cast<int64_t>(img) * h * w * c + ((h0 + r) * w + (w0 + s)) * c + ch, acc[k]);
        }
    }
}

// Global average pool [n, pixels, c] -> [n, c]. A block is 32 channels (x) by
// AVG_SLICES pixel slices (y): each warp reads 32 consecutive channels of one
// pixel, and the slices are summed in shared memory in a fixed order.
#define AVG_CHANNELS 32
#define AVG_SLICES 8

template <class T>
__device__ __forceinline__ void global_avg_pool_forward(const T* __restrict__ x, T* __restrict__ y, int64_t pixels,
                                                        int64_t c) {
    __shared__ float partial[AVG_SLICES][AVG_CHANNELS];
    int64_t groups = (c + AVG_CHANNELS - 1) / AVG_CHANNELS;
    int64_t image = blockIdx.x / groups;
    int64_t ch = (blockIdx.x % groups) * AVG_CHANNELS + threadIdx.x;
    float acc = 0.0f;
    if (ch < c) {
        for (int64_t p = threadIdx.y; p < pixels; p += AVG_SLICES) acc += load(x, (image * pixels + p) * c + ch);
    }
    partial[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && ch < c) {
        float sum = 0.0f;
        for (int s = 0; s < AVG_SLICES; s++) sum += partial[s][threadIdx.x];
        store(y, image * c + ch, pixels > 0 ? sum / static_cast<float>(pixels) : 0.0f);
    }
}

// dx[n, p, c] = dy[n, c] * scale, with scale = 1/pixels rounded to f32 as the
// CPU backend rounds it.
template <class T>
__device__ __forceinline__ void global_avg_pool_backward(const T* __restrict__ dy, T* __restrict__ dx, int64_t n,
                                                         int64_t pixels, int64_t c, float scale) {
    FOR_EACH(i, n * pixels * c) {
        int64_t ch = i % c, image = i / (pixels * c);
        store(dx, i, load(dy, image * c + ch) * scale);
    }
}

extern "C" __global__ void max_pool_forward_f32(const float* x, float* y, int n, int h, int w, int c,
                                                int out_h, int out_w, int kernel, int stride, int padding) {
    max_pool_forward(x, y, n, h, w, c, out_h, out_w, kernel, stride, padding);
}
extern "C" __global__ void max_pool_forward_bf16(const bf16* x, bf16* y, int n, int h, int w, int c,
                                                 int out_h, int out_w, int kernel, int stride, int padding) {
    max_pool_forward(x, y, n, h, w, c, out_h, out_w, kernel, stride, padding);
}
extern "C" __global__ void max_pool_forward_f16(const f16* x, f16* y, int n, int h, int w, int c,
                                                int out_h, int out_w, int kernel, int stride, int padding) {
    max_pool_forward(x, y, n, h, w, c, out_h, out_w, kernel, stride, padding);
}

extern "C" __global__ void max_pool_backward_f32(const float* x, const float* dy, float* dx, int h, int w, int c,
                                                 int out_h, int out_w, int kernel, int stride, int padding) {
    max_pool_backward(x, dy, dx, h, w, c, out_h, out_w, kernel, stride, padding);
}
extern "C" __global__ void max_pool_backward_bf16(const bf16* x, const bf16* dy, bf16* dx, int h, int w, int c,
                                                  int out_h, int out_w, int kernel, int stride, int padding) {
    max_pool_backward(x, dy, dx, h, w, c, out_h, out_w, kernel, stride, padding);
}
extern "C" __global__ void max_pool_backward_f16(const f16* x, const f16* dy, f16* dx, int h, int w, int c,
                                                 int out_h, int out_w, int kernel, int stride, int padding) {
    max_pool_backward(x, dy, dx, h, w, c, out_h, out_w, kernel, stride, padding);
}

extern "C" __global__ void global_avg_pool_forward_f32(const float* x, float* y, int64_t pixels, int64_t c) {
    global_avg_pool_forward(x, y, pixels, c);
}
extern "C" __global__ void global_avg_pool_forward_bf16(const bf16* x, bf16* y, int64_t pixels, int64_t c) {
    global_avg_pool_forward(x, y, pixels, c);
}
extern "C" __global__ void global_avg_pool_forward_f16(const f16* x, f16* y, int64_t pixels, int64_t c) {
    global_avg_pool_forward(x, y, pixels, c);
}

extern "C" __global__ void global_avg_pool_backward_f32(const float* dy, float* dx, int64_t n, int64_t pixels,
                                                        int64_t c, float scale) {
    global_avg_pool_backward(dy, dx, n, pixels, c, scale);
}
extern "C" __global__ void global_avg_pool_backward_bf16(const bf16* dy, bf16* dx, int64_t n, int64_t pixels,
                                                         int64_t c, float scale) {
    global_avg_pool_backward(dy, dx, n, pixels, c, scale);
}
extern "C" __global__ void global_avg_pool_backward_f16(const f16* dy, f16* dx, int64_t n, int64_t pixels, int64_t c,
                                                        float scale) {
    global_avg_pool_backward(dy, dx, n, pixels, c, scale);
}
