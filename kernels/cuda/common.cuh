// Prelude of every kernel family: 16-bit storage types with round-to-nearest-
// even conversions, typed loads and stores, and block reductions. NVRTC sees
// this file followed by one family's source; the emulator compiles the same
// pair as host C++ after emu.h. No CUDA headers, so CI needs only NVRTC.
#pragma once

#ifndef EMULATED
typedef unsigned long long uint64_t;
typedef long long int64_t;
typedef unsigned int uint32_t;
typedef unsigned short uint16_t;
typedef unsigned char uint8_t;
#define DYNAMIC_SHARED(T, name)                                    \
    extern __shared__ __align__(16) unsigned char name##_bytes[]; \
    T* name = reinterpret_cast<T*>(name##_bytes)
#endif

// 16-bit floats travel as their bits; arithmetic is always in f32.
struct bf16 {
    uint16_t bits;
};
struct f16 {
    uint16_t bits;
};

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __uint_as_float(static_cast<uint32_t>(x.bits) << 16); }
__device__ __forceinline__ float to_f32(f16 x) {
    uint32_t sign = static_cast<uint32_t>(x.bits & 0x8000u) << 16;
    uint32_t exp = (x.bits >> 10) & 0x1Fu, man = x.bits & 0x3FFu;
    if (exp == 0x1Fu) return __uint_as_float(sign | 0x7F800000u | (man << 13));  // inf, nan
    if (exp != 0) return __uint_as_float(sign | ((exp + 112u) << 23) | (man << 13));
    // Subnormal: the mantissa is an integer count of 2^-24.
    float mag = static_cast<float>(man) * 5.9604644775390625e-8f;
    return sign ? -mag : mag;
}

template <class T>
__device__ __forceinline__ T from_f32(float x);

template <>
__device__ __forceinline__ float from_f32<float>(float x) {
    return x;
}

template <>
__device__ __forceinline__ bf16 from_f32<bf16>(float x) {
    uint32_t u = __float_as_uint(x);
    bf16 r;
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) {
        r.bits = static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN, sign kept
    } else {
        r.bits = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    }
    return r;
}

template <>
__device__ __forceinline__ f16 from_f32<f16>(float x) {
    uint32_t u = __float_as_uint(x);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7FFFFFFFu;
    f16 r;
    if (a > 0x7F800000u) {
        r.bits = static_cast<uint16_t>(sign | 0x7E00u | ((a >> 13) & 0x3FFu));
    } else if (a >= 0x477FF000u) {
        r.bits = static_cast<uint16_t>(sign | 0x7C00u);  // rounds past the largest f16: infinity
    } else if (a >= 0x38800000u) {
        // Normal: rebias the exponent and round the 13 dropped bits to nearest even.
        uint32_t v = a - 0x38000000u;
        v = (v + 0xFFFu + ((v >> 13) & 1u)) >> 13;
        r.bits = static_cast<uint16_t>(sign | v);
    } else if (a > 0x33000000u) {
        // Subnormal: shift the full significand right and round to nearest even.
        uint32_t exp = a >> 23;
        uint32_t man = (a & 0x7FFFFFu) | 0x800000u;
        uint32_t shift = 126u - exp;  // 14..24
        uint32_t kept = man >> shift;
        uint32_t dropped = man & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1u);
        if (dropped > half || (dropped == half && (kept & 1u))) kept++;
        r.bits = static_cast<uint16_t>(sign | kept);
    } else {
        r.bits = static_cast<uint16_t>(sign);  // at most half the smallest subnormal: ±0
    }
    return r;
}

// max(v, 0) that keeps NaN, as PyTorch's ReLU does (fmaxf(NaN, 0) is 0), so
// non-finite weights reach the checks on losses and features.
__device__ __forceinline__ float relu_keep_nan(float v) { return v > 0.0f || v != v ? v : 0.0f; }

template <class T>
__device__ __forceinline__ float load(const T* p, int64_t i) {
    return to_f32(p[i]);
}

template <class T>
__device__ __forceinline__ void store(T* p, int64_t i, float v) {
    p[i] = from_f32<T>(v);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, offset));
    return v;
}

// Sum over a block whose size is a multiple of 32 (at most 1024); every thread
// gets the total. `scratch` holds 32 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    unsigned lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

// Grid-stride loop over [0, n).
#define FOR_EACH(i, n)                                                                                   \
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (int64_t)(n); \
         i += static_cast<int64_t>(blockDim.x) * gridDim.x)
