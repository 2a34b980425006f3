// The bias of a fully connected layer; cuBLAS does the matrix products.

// y[i, j] += b[j] over rows of `features` values.
template <class T>
__device__ __forceinline__ void bias_add(T* __restrict__ y, const T* __restrict__ b, int64_t rows, int features) {
    FOR_EACH(i, rows * features) { store(y, i, load(y, i) + load(b, i % features)); }
}

// db[j] = Σ_i dy[i, j]: one thread per feature walks the rows (consecutive
// threads read consecutive features, so each row read is coalesced).
template <class T>
__device__ __forceinline__ void bias_grad(const T* __restrict__ dy, T* __restrict__ db, int64_t rows, int features) {
    FOR_EACH(j, features) {
        float sum = 0.0f;
        for (int64_t i = 0; i < rows; i++) sum += load(dy, i * features + j);
        store(db, j, sum);
    }
}

extern "C" __global__ void bias_add_rows_f32(float* y, const float* b, int64_t rows, int features) {
    bias_add(y, b, rows, features);
}
extern "C" __global__ void bias_add_rows_bf16(bf16* y, const bf16* b, int64_t rows, int features) {
    bias_add(y, b, rows, features);
}
extern "C" __global__ void bias_add_rows_f16(f16* y, const f16* b, int64_t rows, int features) {
    bias_add(y, b, rows, features);
}

extern "C" __global__ void bias_grad_f32(const float* dy, float* db, int64_t rows, int features) {
    bias_grad(dy, db, rows, features);
}
extern "C" __global__ void bias_grad_bf16(const bf16* dy, bf16* db, int64_t rows, int features) {
    bias_grad(dy, db, rows, features);
}
extern "C" __global__ void bias_grad_f16(const f16* dy, f16* db, int64_t rows, int features) {
    bias_grad(dy, db, rows, features);
}
