// Casts between f32 and the 16-bit storage types, rounding to nearest even
// (f16 overflows to ±infinity), bit-identical to the CPU backend's casts.

template <class From, class To>
__device__ __forceinline__ void cast(const From* __restrict__ x, To* __restrict__ y, int64_t n) {
    FOR_EACH(i, n) { store(y, i, load(x, i)); }
}

extern "C" __global__ void cast_f32_to_bf16(const float* x, bf16* y, int64_t n) { cast(x, y, n); }
extern "C" __global__ void cast_f32_to_f16(const float* x, f16* y, int64_t n) { cast(x, y, n); }
extern "C" __global__ void cast_bf16_to_f32(const bf16* x, float* y, int64_t n) { cast(x, y, n); }
extern "C" __global__ void cast_f16_to_f32(const f16* x, float* y, int64_t n) { cast(x, y, n); }
