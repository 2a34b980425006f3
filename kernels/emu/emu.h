// The SIMT emulator's view of CUDA: what a kernel source needs to compile as
// host C++. Each CUDA thread of a block is a fiber; `__syncthreads` and the
// warp primitives are scheduling points, so threads really interleave there.
// Included before common.cuh when a family is built for the emulator.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#define EMULATED 1

struct uint3 {
    unsigned x, y, z;
};

namespace emu {

struct Thread {
    uint3 idx;
    unsigned linear;  // x + y * blockDim.x + z * blockDim.x * blockDim.y
};

extern thread_local Thread* current;
extern thread_local uint3 block_idx, block_dim, grid_dim;

enum ExchangeKind { kSync, kIdx, kUp, kDown, kXor };

void syncthreads(int line);
uint64_t warp_exchange(unsigned mask, uint64_t bits, ExchangeKind kind, int arg, int width, int line);
void* dynamic_shared();

template <class T>
uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    uint64_t b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}

template <class T>
T from_bits(uint64_t b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}

}  // namespace emu

#define threadIdx (emu::current->idx)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)
#define warpSize 32

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
// Blocks of one launch run one after another on one OS thread, so a
// thread-local static is exactly "one copy per block".
#define __shared__ static thread_local

#define __syncthreads() emu::syncthreads(__LINE__)
#define __syncwarp(mask) (void)emu::warp_exchange((mask), 0, emu::kSync, 0, 32, __LINE__)
#define DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(emu::dynamic_shared())

#define __shfl_sync(mask, v, src, ...) emu_shfl(mask, v, emu::kIdx, src, __LINE__, ##__VA_ARGS__)
#define __shfl_up_sync(mask, v, d, ...) emu_shfl(mask, v, emu::kUp, d, __LINE__, ##__VA_ARGS__)
#define __shfl_down_sync(mask, v, d, ...) emu_shfl(mask, v, emu::kDown, d, __LINE__, ##__VA_ARGS__)
#define __shfl_xor_sync(mask, v, m, ...) emu_shfl(mask, v, emu::kXor, m, __LINE__, ##__VA_ARGS__)

template <class T>
inline T emu_shfl(unsigned mask, T v, emu::ExchangeKind kind, int arg, int line, int width = 32) {
    return emu::from_bits<T>(emu::warp_exchange(mask, emu::to_bits(v), kind, arg, width, line));
}

// Fibers of a block share one OS thread and never preempt each other, so
// plain read-modify-writes are atomic here.
template <class T>
inline T atomicAdd(T* p, T v) {
    T old = *p;
    *p = old + v;
    return old;
}
template <class T>
inline T atomicMax(T* p, T v) {
    T old = *p;
    *p = std::max(old, v);
    return old;
}
template <class T>
inline T __ldg(const T* p) {
    return *p;
}

using std::max;
using std::min;

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return std::min(1.0f, std::max(0.0f, x)); }
inline unsigned __float_as_uint(float x) {
    unsigned u;
    std::memcpy(&u, &x, 4);
    return u;
}
inline float __uint_as_float(unsigned u) {
    float x;
    std::memcpy(&x, &u, 4);
    return x;
}
inline double __longlong_as_double(long long x) {
    double d;
    std::memcpy(&d, &x, 8);
    return d;
}
inline float __int_as_float(int i) { return __uint_as_float(static_cast<unsigned>(i)); }
inline int __float_as_int(float x) { return static_cast<int>(__float_as_uint(x)); }
