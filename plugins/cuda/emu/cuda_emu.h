// cuda_emu.h - host emulation of the CUDA C subset that graphopt's renderers emit.
//
// The generated kernel source is compiled unchanged by the host C++ compiler
// with `g++ -fopenmp -include cuda_emu.h`. One thread block runs at a time and
// its threads are an OpenMP team:
//
//   * threadIdx / blockIdx are thread-local, blockDim / gridDim are per launch;
//   * __shared__ is `static`: one block-wide copy, visible to the whole team
//     (correct because only one block runs at a time);
//   * __syncthreads() is an OpenMP team barrier;
//   * warp shuffles exchange values through block-wide scratch plus one barrier
//     (double-buffered). That is only correct when every thread of the block
//     calls the shuffle (block-uniform control flow), which the renderers keep
//     to; a warp-divergent shuffle would deadlock here.
//
// What this cannot check: warp-synchronous code without __syncwarp, memory
// races between blocks, real timing, tensor-core / cp.async instructions (the
// renderers emit portable twins for those), and shared-memory bank conflicts.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <omp.h>
#include <mutex>

struct uint3 { unsigned int x, y, z; };
struct dim3 { unsigned int x, y, z; };
struct __attribute__((aligned(8))) float2 { float x, y; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
static inline float2 make_float2(float x, float y) { return float2{x, y}; }
static inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __shared__ static
#define __constant__ static const
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define warpSize 32

static thread_local uint3 threadIdx;
static thread_local uint3 blockIdx;
static dim3 blockDim;
static dim3 gridDim;

namespace go_emu {
static thread_local int linear_tid;   // threadIdx flattened, x fastest (as CUDA numbers warps)
static thread_local int shfl_parity;
static int team_size;
static unsigned long long shfl_buf[2][1024];

template <class T>
static inline T exchange(T v, int src) {
    static_assert(sizeof(T) <= sizeof(unsigned long long), "shuffle of a type wider than 8 bytes");
    const int p = shfl_parity;
    shfl_parity ^= 1;
    memcpy(&shfl_buf[p][linear_tid], &v, sizeof(T));
#pragma omp barrier
    T r;
    memcpy(&r, &shfl_buf[p][src], sizeof(T));
    return r;  // the next exchange uses the other buffer: one barrier per shuffle is enough
}

static inline int lane_src(int src_lane, int width, bool own) {
    const int t = linear_tid;
    int src = (t & ~31) | (src_lane & 31);
    if (own || src >= team_size) src = t;
    (void)width;
    return src;
}
}  // namespace go_emu

static inline void __syncthreads() {
#pragma omp barrier
}
static inline void __syncwarp(unsigned = 0xffffffffu) {
#pragma omp barrier
}

template <class T>
static inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
    const int lane = go_emu::linear_tid & 31;
    const int src = lane ^ mask;
    return go_emu::exchange(v, go_emu::lane_src(src, width, src / width > lane / width));
}
template <class T>
static inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
    const int lane = go_emu::linear_tid & 31;
    return go_emu::exchange(v, go_emu::lane_src(lane + (int)delta, width, (lane % width) + (int)delta >= width));
}
template <class T>
static inline T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) {
    const int lane = go_emu::linear_tid & 31;
    return go_emu::exchange(v, go_emu::lane_src(lane - (int)delta, width, (lane % width) < (int)delta));
}
template <class T>
static inline T __shfl_sync(unsigned, T v, int src_lane, int width = 32) {
    const int lane = go_emu::linear_tid & 31;
    return go_emu::exchange(v, go_emu::lane_src((lane / width) * width + src_lane % width, width, false));
}

template <class T>
static inline T atomicAdd(T* p, T v) {
    T old;
#pragma omp atomic capture
    { old = *p; *p += v; }
    return old;
}

// math and bit functions of the CUDA device library that the host lacks
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
#define __expf(x) expf(x)  // glibc declares its own __expf/__logf: a macro sidesteps them
#define __logf(x) logf(x)
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
static inline unsigned int __float_as_uint(float f) { unsigned int i; memcpy(&i, &f, 4); return i; }
static inline float __uint_as_float(unsigned int i) { float f; memcpy(&f, &i, 4); return f; }
template <class T> static inline T __ldg(const T* p) { return *p; }
// 4-way byte dot product with accumulate: signed (or unsigned) 8-bit lanes, 32-bit accumulator
// that wraps like the hardware's (unsigned arithmetic: no signed-overflow UB on the host)
static inline int __dp4a(int a, int b, int c) {
    unsigned s = (unsigned)c;
    for (int j = 0; j < 4; ++j) s += (unsigned)((int)(signed char)(a >> (8 * j)) * (int)(signed char)(b >> (8 * j)));
    return (int)s;
}
static inline unsigned __dp4a(unsigned a, unsigned b, unsigned c) {
    for (int j = 0; j < 4; ++j) c += ((a >> (8 * j)) & 0xffu) * ((b >> (8 * j)) & 0xffu);
    return c;
}
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }

namespace go_emu {
static std::mutex launch_mutex;

// Run `body` (one kernel call) over the grid: one block at a time, its threads
// as an OpenMP team. A kernel that uses shared memory or barriers needs a
// barrier between blocks so that no thread starts block b+1 (and overwrites
// __shared__ storage) while another still works on block b.
template <class F>
static int launch(const unsigned* d, bool sync_blocks, F&& body) {
    std::lock_guard<std::mutex> guard(launch_mutex);
    const long nt = (long)d[3] * d[4] * d[5];
    const long nb = (long)d[0] * d[1] * d[2];
    if (nt <= 0 || nt > 1024) return -1;
    if (nb == 0) return 0;
    gridDim = dim3{d[0], d[1], d[2]};
    blockDim = dim3{d[3], d[4], d[5]};
    team_size = (int)nt;
    int ok = 1;
    omp_set_dynamic(0);
#pragma omp parallel num_threads(nt)
    {
        if (omp_get_num_threads() != nt) {
#pragma omp atomic write
            ok = 0;
        } else {
            const int t = omp_get_thread_num();
            linear_tid = t;
            shfl_parity = 0;
            threadIdx = uint3{(unsigned)(t % d[3]), (unsigned)((t / d[3]) % d[4]), (unsigned)(t / (d[3] * d[4]))};
            for (long b = 0; b < nb; ++b) {
                blockIdx = uint3{(unsigned)(b % d[0]), (unsigned)((b / d[0]) % d[1]), (unsigned)(b / ((long)d[0] * d[1]))};
                body();
                if (sync_blocks) {
#pragma omp barrier
                }
            }
        }
    }
    return ok ? 0 : -2;
}
}  // namespace go_emu
