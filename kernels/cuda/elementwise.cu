// ReLU and addition (the residual join), elementwise over flat tensors.

template <class T>
__device__ __forceinline__ void relu_forward(const T* __restrict__ x, T* __restrict__ y, int64_t n) {
    FOR_EACH(i, n) {
        float v = load(x, i);
        store(y, i, relu_keep_nan(v));
    }
}

// dx = dy where the output y is positive, else 0.
template <class T>
__device__ __forceinline__ void relu_backward(const T* __restrict__ y, const T* __restrict__ dy, T* __restrict__ dx,
                                              int64_t n) {
    FOR_EACH(i, n) { store(dx, i, load(y, i) > 0.0f ? load(dy, i) : 0.0f); }
}

template <class T>
__device__ __forceinline__ void add(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ y, int64_t n) {
    FOR_EACH(i, n) { store(y, i, load(a, i) + load(b, i)); }
}

extern "C" __global__ void relu_forward_f32(const float* x, float* y, int64_t n) { relu_forward(x, y, n); }
extern "C" __global__ void relu_forward_bf16(const bf16* x, bf16* y, int64_t n) { relu_forward(x, y, n); }
extern "C" __global__ void relu_forward_f16(const f16* x, f16* y, int64_t n) { relu_forward(x, y, n); }

extern "C" __global__ void relu_backward_f32(const float* y, const float* dy, float* dx, int64_t n) {
    relu_backward(y, dy, dx, n);
}
extern "C" __global__ void relu_backward_bf16(const bf16* y, const bf16* dy, bf16* dx, int64_t n) {
    relu_backward(y, dy, dx, n);
}
extern "C" __global__ void relu_backward_f16(const f16* y, const f16* dy, f16* dx, int64_t n) {
    relu_backward(y, dy, dx, n);
}

extern "C" __global__ void add_f32(const float* a, const float* b, float* y, int64_t n) { add(a, b, y, n); }
extern "C" __global__ void add_bf16(const bf16* a, const bf16* b, bf16* y, int64_t n) { add(a, b, y, n); }
extern "C" __global__ void add_f16(const f16* a, const f16* b, f16* y, int64_t n) { add(a, b, y, n); }
