// cuda_emu.h - host emulation of the CUDA C subset that graphopt's renderers emit.
//
// The generated kernel source is compiled unchanged by the host C++ compiler
// with `g++ -fopenmp -include cuda_emu.h`.
//
//   * Blocks run in parallel on a few host threads (an OpenMP loop over the grid);
//     each host thread runs one block at a time.
//   * A block's threads are fibers (user-level stacks) on that host thread, run
//     one after another: thread 0 runs until its next barrier, then thread 1, ...
//     A kernel without barriers runs its threads as a plain loop, no fibers.
//   * __syncthreads() is a block barrier: a fiber yields, and the block goes on
//     once every live thread has yielded. __syncwarp() and the warp shuffles are
//     warp barriers: the 32 threads of a warp run round after round to the next
//     one, so shuffles need only warp-uniform control flow, as on a GPU.
//   * __shared__ is `static thread_local`: one copy per host thread, hence per
//     running block. threadIdx / blockIdx are per host thread and set before a
//     fiber resumes; blockDim / gridDim are per launch.
//
// Checked builds (compile_emu.py adds the flags; see docs/cuda.md, "Checked emulation"):
//   GO_EMU_CHECK_ASAN  compiled with AddressSanitizer; a report during a launch makes
//                      the launch fail with the report's text (go_emu_check_report).
//   GO_EMU_CHECK_RACE  the order of threads within each barrier phase, the order of
//                      blocks and the bytes shared memory starts with come from a
//                      seed (go_emu_set_seed); a caller runs several seeds and
//                      compares results bit for bit. Threads reaching different
//                      barriers in one phase fail the launch.
// Checked builds run blocks on one host thread, with __shared__ as plain statics
// in one linker section (so AddressSanitizer puts red zones around each array,
// and the race check can fill them all).
//
// What this cannot check: races between blocks other than through the block
// order, memory-model subtleties, real timing, tensor-core / cp.async
// instructions (the renderers emit portable twins for those), bank conflicts.
#pragma once
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include <sys/mman.h>
#include <mutex>
#include <type_traits>

#if defined(GO_EMU_CHECK_ASAN) || defined(GO_EMU_CHECK_RACE)
#define GO_EMU_CHECKED 1
#endif
#ifdef GO_EMU_CHECK_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

struct uint3 { unsigned int x, y, z; };
struct dim3 { unsigned int x, y, z; };
struct __attribute__((aligned(8))) float2 { float x, y; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
static inline float2 make_float2(float x, float y) { return float2{x, y}; }
static inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

#define __global__
#define __device__
#define __host__
#define __noinline__ __attribute__((noinline))
#ifdef GO_EMU_CHECKED
// static: a __shared__ array in an inline helper would be a COMDAT variable, which cannot
// share the section with the others
#define __forceinline__ static inline __attribute__((always_inline))
#define __shared__ static __attribute__((section("go_emu_shared")))
#else
#define __forceinline__ inline __attribute__((always_inline))
#define __shared__ static thread_local
#endif
#define __constant__ static const
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define warpSize 32

// Set by the scheduler before a fiber (CUDA thread) resumes; external linkage (hidden by
// -fvisibility) so the compiler reloads them after every barrier.
thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;

extern "C" void go_emu_swap(void** save_sp, void* to_sp);

namespace go_emu {
// -- context switch ---------------------------------------------------------------------------
// A fiber's saved state is its stack pointer; the callee-saved registers sit on its stack.
// (glibc's swapcontext would also save the signal mask: a system call per switch.)
#if defined(__x86_64__)
asm(R"(
    .text
    .p2align 4
    .globl go_emu_swap
    .hidden go_emu_swap
    .type go_emu_swap, @function
go_emu_swap:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size go_emu_swap, .-go_emu_swap
)");
static const int kSavedWords = 6;
#elif defined(__aarch64__)
asm(R"(
    .text
    .p2align 4
    .globl go_emu_swap
    .hidden go_emu_swap
    .type go_emu_swap, %function
go_emu_swap:
    sub sp, sp, #160
    stp x19, x20, [sp, #0]
    stp x21, x22, [sp, #16]
    stp x23, x24, [sp, #32]
    stp x25, x26, [sp, #48]
    stp x27, x28, [sp, #64]
    stp x29, x30, [sp, #80]
    stp d8, d9, [sp, #96]
    stp d10, d11, [sp, #112]
    stp d12, d13, [sp, #128]
    stp d14, d15, [sp, #144]
    mov x2, sp
    str x2, [x0]
    mov sp, x1
    ldp x19, x20, [sp, #0]
    ldp x21, x22, [sp, #16]
    ldp x23, x24, [sp, #32]
    ldp x25, x26, [sp, #48]
    ldp x27, x28, [sp, #64]
    ldp x29, x30, [sp, #80]
    ldp d8, d9, [sp, #96]
    ldp d10, d11, [sp, #112]
    ldp d12, d13, [sp, #128]
    ldp d14, d15, [sp, #144]
    add sp, sp, #160
    ret
    .size go_emu_swap, .-go_emu_swap
)");
#else
#error "cuda_emu.h: fibers are implemented for x86-64 and AArch64 only"
#endif

enum State : unsigned char { kReady, kAtWarp, kAtBlock, kDone };

#ifdef GO_EMU_CHECK_ASAN
static const size_t kStack = 512 * 1024 + 4096;  // red zones around every local array
#else
static const size_t kStack = 256 * 1024 + 4096;  // not a power of two, and tops coloured:
#endif                                           // see start_fiber

// One per host thread: the fibers of the block it runs.
struct Worker {
    char* stacks = nullptr;
    int cur = -1;                 // the running fiber, -1 on the host stack
    void* sched_sp = nullptr;
    const int* round = nullptr;   // the lanes of the running round, in order, and where it is
    int round_n = 0, round_pos = 0;
    void (*call)(void*) = nullptr;
    void* ctx = nullptr;
    void* sp[1024];
    State state[1024];
    int site[1024];                // where each fiber yielded (the barrier's place in the source)
    unsigned char shfl_parity[1024];
    uint3 tid[1024];               // threadIdx of each linear thread number, for this launch's blockDim
    unsigned long long shfl_buf[2][1024];
#ifdef GO_EMU_CHECK_ASAN
    void* fake_stack[1024];
    const void* sched_bottom = nullptr;
    size_t sched_size = 0;
#endif
};

static thread_local Worker* worker_ = nullptr;
static thread_local int linear_tid;  // threadIdx flattened, x fastest (as CUDA numbers warps)
static int team_size;
static int failure;                  // why the running launch failed (go_emu_check_report says more)
static char failure_text[4096];

static void fail(const char* fmt, const char* what) {
#pragma omp critical(go_emu_failure)
    if (!failure) {
        failure = 1;
        snprintf(failure_text, sizeof failure_text, fmt, what);
    }
}

#ifdef GO_EMU_CHECK_ASAN
// A report fails the launch that caused it; with -fsanitize-recover=address the process goes on.
static void go_emu_on_asan_report(const char* report) { fail("%s", report); }
#endif

static Worker* worker() {
    Worker* w = worker_;
    if (!w) w = worker_ = new Worker();
    return w;
}

// Stacks for a full block (1024 fibers) are mapped once per host thread and never unmapped:
// reserved, not committed (a fiber touches a few pages), and an address range that was a
// fiber stack never comes back as other memory (AddressSanitizer's shadow would still hold
// the stack frames' red zones there).
//
// The lowest page of each stack is its guard. Checked builds (one library in a process of its
// own) make it PROT_NONE, so an overflow faults. Other builds cannot: every emulation library
// has its own thread_local Worker, a test process loads hundreds of libraries, and a
// PROT_NONE page per fiber is a memory map of its own -- 2,048 per Worker reached the kernel's
// 65,530 maps per process after ~30 Workers, and then a thread could no longer start. There
// the guard holds a canary, checked when the block ends (check_stacks): an overflow fails the
// launch instead of faulting, one mapping per Worker.
static const unsigned long long kCanary = 0x9e3779b97f4a7c15ull;
static const int kCanaryWords = 8;  // at the guard page's top, right below the usable stack

static void ensure_stacks(Worker* w) {
    if (w->stacks) return;
    char* s = (char*)mmap(nullptr, 1024 * kStack, PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (s == MAP_FAILED) {
        fprintf(stderr, "cuda_emu: cannot map fiber stacks\n");
        abort();
    }
#ifdef GO_EMU_CHECKED
    for (int i = 0; i < 1024; ++i) mprotect(s + (size_t)i * kStack, 4096, PROT_NONE);  // overflow faults, never corrupts
#endif
    w->stacks = s;
}

#ifndef GO_EMU_CHECKED
static unsigned long long* canary_of(Worker* w, int t) {
    return (unsigned long long*)(w->stacks + (size_t)t * kStack + 4096) - kCanaryWords;
}
#endif

// After a block: did a fiber write below its stack? (Checked builds fault there instead.)
static void check_stacks(Worker* w, int nt) {
#ifndef GO_EMU_CHECKED
    for (int t = 0; t < nt; ++t) {
        const unsigned long long* c = canary_of(w, t);
        for (int i = 0; i < kCanaryWords; ++i)
            if (c[i] != kCanary) {
                fail("a thread overflowed its %s (an emulated thread's stack is 256 KiB)", "stack");
                return;
            }
    }
#else
    (void)w;
    (void)nt;
#endif
}

// -- yielding (in a fiber) and resuming (on the host stack) -------------------------------------
static void set_thread(const Worker* w, int t) {
    linear_tid = t;
    threadIdx = w->tid[t];
}

// Where a fiber that stops goes: straight to the next lane of its round that is ready (one
// switch instead of two through the scheduler), else back to the scheduler. Checked builds
// always go back: AddressSanitizer is told about each switch, and the scheduler's stack is
// the only one it needs to know.
static void* next_sp(Worker* w) {
#ifndef GO_EMU_CHECK_ASAN
    for (int p = w->round_pos + 1; p < w->round_n; ++p) {
        const int u = w->round[p];
        if (w->state[u] == kReady) {
            w->round_pos = p;
            w->cur = u;
            set_thread(w, u);
            return w->sp[u];
        }
    }
#endif
    w->cur = -1;
    return w->sched_sp;
}

__attribute__((noinline)) static void yield(State why, int site) {
    Worker* w = worker_;
    const int t = w->cur;
    if (t < 0) {  // a barrier in a kernel launched as a plain loop: compile_emu scans for barriers
        fprintf(stderr, "cuda_emu: a barrier in a kernel that was launched without fibers\n");
        abort();
    }
    w->state[t] = why;
    w->site[t] = site;
#ifdef GO_EMU_CHECK_ASAN
    __sanitizer_start_switch_fiber(&w->fake_stack[t], w->sched_bottom, w->sched_size);
#endif
    go_emu_swap(&w->sp[t], next_sp(w));  // whoever resumes t has set threadIdx and cur for it
#ifdef GO_EMU_CHECK_ASAN
    __sanitizer_finish_switch_fiber(w->fake_stack[t], &w->sched_bottom, &w->sched_size);
#endif
}

// `site` numbers the barrier's place in the source (__COUNTER__ at the call): the compiler may
// duplicate a call, so a return address would not name it.
static inline void block_barrier(int site) { yield(kAtBlock, site); }
static inline void warp_barrier(int site) { yield(kAtWarp, site); }

static void fiber_main() {
    Worker* w = worker_;
#ifdef GO_EMU_CHECK_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &w->sched_bottom, &w->sched_size);
#endif
    w->call(w->ctx);
    w = worker_;
    w->state[w->cur] = kDone;
#ifdef GO_EMU_CHECK_ASAN
    __sanitizer_start_switch_fiber(nullptr, w->sched_bottom, w->sched_size);
#endif
    void* dead;
    go_emu_swap(&dead, next_sp(w));
    __builtin_unreachable();
}

static void start_fiber(Worker* w, int t) {
    // Each fiber's hot words (its top frames) start at another offset in the page, so that
    // hundreds of them do not all fall in the same few cache sets (they would, 128 KiB apart).
    char* top = w->stacks + (size_t)(t + 1) * kStack - (size_t)(t % 64) * 64;  // 16-byte aligned
    void** sp = (void**)top;
#ifndef GO_EMU_CHECKED
    for (int i = 0; i < kCanaryWords; ++i) canary_of(w, t)[i] = kCanary;
#endif
#ifdef GO_EMU_CHECK_ASAN
    __asan_unpoison_memory_region(w->stacks + (size_t)t * kStack + 4096, kStack - 4096);
#endif
#if defined(__x86_64__)
    *--sp = nullptr;                 // fiber_main's return address: it never returns
    *--sp = (void*)&fiber_main;      // go_emu_swap's `ret` enters fiber_main
    for (int i = 0; i < kSavedWords; ++i) *--sp = nullptr;
#else
    sp -= 20;
    memset(sp, 0, 20 * sizeof(void*));
    sp[11] = (void*)&fiber_main;     // x30: go_emu_swap's `ret` enters fiber_main
#endif
    w->sp[t] = sp;
    w->state[t] = kReady;
    w->shfl_parity[t] = 0;
}

// Run the ready lanes of one round, from position `pos` of `lanes` on, each to its next stop.
static void run_round(Worker* w, const int* lanes, int n, int pos) {
    w->round = lanes;
    w->round_n = n;
    w->round_pos = pos;
    const int t = lanes[pos];
    set_thread(w, t);
    w->cur = t;
#ifdef GO_EMU_CHECK_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, w->stacks + (size_t)t * kStack, kStack);
#endif
    go_emu_swap(&w->sched_sp, w->sp[t]);
#ifdef GO_EMU_CHECK_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

// -- checked builds: seeded orders and shared-memory fill -------------------------------------
#ifdef GO_EMU_CHECK_RACE
static unsigned seed_;
static unsigned long long rng_;
static unsigned next_rand() {
    rng_ ^= rng_ << 13;
    rng_ ^= rng_ >> 7;
    rng_ ^= rng_ << 17;
    return (unsigned)(rng_ >> 11);
}
static void order(int* idx, int n) {  // seed 0: in order, 1: reversed, others: shuffled
    for (int i = 0; i < n; ++i) idx[i] = seed_ == 1 ? n - 1 - i : i;
    if (seed_ >= 2)
        for (int i = n - 1; i > 0; --i) {
            const int j = (int)(next_rand() % (unsigned)(i + 1)), x = idx[i];
            idx[i] = idx[j];
            idx[j] = x;
        }
}
#endif

#ifdef GO_EMU_CHECKED
extern "C" char __start_go_emu_shared[] __attribute__((weak, visibility("hidden")));
extern "C" char __stop_go_emu_shared[] __attribute__((weak, visibility("hidden")));
// Shared memory starts each block holding the seed's garbage (not zeros), so a read
// before any write shows up as a difference between seeds. Writes red zones too: no ASan.
__attribute__((no_sanitize_address)) static void fill_shared(unsigned seed) {
    if (!__start_go_emu_shared) return;  // no kernel of this library has shared memory
    const unsigned char byte = (unsigned char)(seed == 0 ? 0xff : seed == 1 ? 0x7f : 0x55 + seed);
    volatile unsigned long long* p = (volatile unsigned long long*)__start_go_emu_shared;  // the section is aligned
    volatile unsigned long long* const end = (volatile unsigned long long*)__stop_go_emu_shared;
    for (; p + 1 <= end; ++p) *p = 0x0101010101010101ull * byte;
    for (volatile unsigned char* q = (volatile unsigned char*)p; q < (volatile unsigned char*)end; ++q) *q = byte;
}

static void check_sites(Worker* w, const int* ts, int n, State at, const char* what) {
    int site = -1;
    for (int i = 0; i < n; ++i)
        if (w->state[ts[i]] == at) {
            if (site >= 0 && w->site[ts[i]] != site) fail("threads of one %s reached different barriers", what);
            site = w->site[ts[i]];
        }
}
#endif

// Run one block: the warps in turn, each warp's fibers round by round to its next warp
// barrier until every live fiber waits at a block barrier; then the next phase.
static void run_block(Worker* w, int nt) {
    int idx[1024];
    for (int i = 0; i < nt; ++i) idx[i] = i;
    for (int t = 0; t < nt; ++t) start_fiber(w, t);
    const int nwarps = (nt + 31) / 32;
    for (bool live = true; live;) {
        live = false;
#ifdef GO_EMU_CHECK_RACE
        int warps[32];
        order(warps, nwarps);  // a new order of warps, and of lanes in each warp, every phase
#endif
        for (int wi = 0; wi < nwarps; ++wi) {
#ifdef GO_EMU_CHECK_RACE
            const int warp = warps[wi], n = (nt - 32 * warp < 32) ? nt - 32 * warp : 32;
            int lanes[32];
            order(lanes, n);
            for (int i = 0; i < n; ++i) lanes[i] += 32 * warp;
#else
            const int warp = wi, n = (nt - 32 * warp < 32) ? nt - 32 * warp : 32;
            int* lanes = idx + 32 * warp;
#endif
            for (;;) {
                for (int i = 0; i < n; ++i)
                    if (w->state[lanes[i]] == kReady) {
                        run_round(w, lanes, n, i);
#ifdef GO_EMU_CHECK_ASAN
                        continue;  // no hand-off between fibers: the next ready lane is ours to start
#else
                        break;     // the lanes hand off to each other to the end of the round
#endif
                    }
                int at_warp = 0, at_block = 0;
                for (int i = 0; i < n; ++i) {
                    at_warp += w->state[lanes[i]] == kAtWarp;
                    at_block += w->state[lanes[i]] == kAtBlock;
                }
                if (!at_warp) break;
#ifdef GO_EMU_CHECK_RACE
                if (at_block) fail("threads of one %s reached different barriers (a warp barrier and a block barrier)", "warp");
                check_sites(w, lanes, n, kAtWarp, "warp");
#endif
                for (int i = 0; i < n; ++i)
                    if (w->state[lanes[i]] == kAtWarp) w->state[lanes[i]] = kReady;
            }
        }
#ifdef GO_EMU_CHECK_RACE
        check_sites(w, idx, nt, kAtBlock, "block");
#endif
        for (int t = 0; t < nt; ++t)
            if (w->state[t] == kAtBlock) {
                w->state[t] = kReady;
                live = true;
            }
    }
}

template <class F>
static void call_body(void* f) { (*(F*)f)(); }

static int threads_for(long nb) {
    static int configured = -1;
    if (configured < 0) {
        const char* s = getenv("GRAPHOPT_EMU_THREADS");
        const int n = s ? atoi(s) : 0;
        configured = n > 0 ? n : omp_get_num_procs();
    }
#ifdef GO_EMU_CHECKED
    return 1;
#else
    return (int)(nb < configured ? nb : configured);
#endif
}

static std::mutex launch_mutex;

// Run `body` (one kernel call, as seen by one thread) over the grid. `barriers`: the kernel
// (or a helper it calls) has __syncthreads, __syncwarp or shuffles, so its threads need fibers.
template <class F>
static int launch(const unsigned* d, bool barriers, F&& body) {
    std::lock_guard<std::mutex> guard(launch_mutex);
    const long nt = (long)d[3] * d[4] * d[5];
    const long nb = (long)d[0] * d[1] * d[2];
    if (nt <= 0 || nt > 1024) return -1;
    if (nb == 0) return 0;
    gridDim = dim3{d[0], d[1], d[2]};
    blockDim = dim3{d[3], d[4], d[5]};
    team_size = (int)nt;
    failure = 0;
#ifdef GO_EMU_CHECK_ASAN
    __asan_set_error_report_callback(go_emu_on_asan_report);  // process-wide: this library's, while it runs
#endif
    using Body = typename std::remove_reference<F>::type;
    const int nw = threads_for(nb);
    const long chunk = barriers ? 1 : (nb / (8L * nw) > 0 ? nb / (8L * nw) : 1);
#ifdef GO_EMU_CHECK_RACE
    long* blocks = new long[nb];
    for (long b = 0; b < nb; ++b) blocks[b] = seed_ == 1 ? nb - 1 - b : b;
    if (seed_ >= 2)
        for (long i = nb - 1; i > 0; --i) {
            const long j = (long)(next_rand() % (unsigned long long)(i + 1)), x = blocks[i];
            blocks[i] = blocks[j];
            blocks[j] = x;
        }
#endif
    omp_set_dynamic(0);
#pragma omp parallel num_threads(nw)
    {
        Worker* w = worker();
        for (int t = 0; t < (int)nt; ++t)
            w->tid[t] = uint3{(unsigned)(t % d[3]), (unsigned)((t / d[3]) % d[4]), (unsigned)(t / (d[3] * d[4]))};
        if (barriers) {
            ensure_stacks(w);
            w->call = &call_body<Body>;
            w->ctx = (void*)&body;
        }
#pragma omp for schedule(dynamic, chunk)
        for (long i = 0; i < nb; ++i) {
#ifdef GO_EMU_CHECK_RACE
            const long b = blocks[i];
            fill_shared(seed_);
#else
            const long b = i;
#endif
            blockIdx = uint3{(unsigned)(b % d[0]), (unsigned)((b / d[0]) % d[1]), (unsigned)(b / ((long)d[0] * d[1]))};
            if (barriers) {
                run_block(w, (int)nt);
                check_stacks(w, (int)nt);
            } else {
#ifdef GO_EMU_CHECK_RACE
                int idx[1024];
                order(idx, (int)nt);
                for (int i = 0; i < (int)nt; ++i) {
                    set_thread(w, idx[i]);
                    body();
                }
#else
                for (int t = 0; t < (int)nt; ++t) {
                    set_thread(w, t);
                    body();
                }
#endif
            }
        }
    }
#ifdef GO_EMU_CHECK_RACE
    delete[] blocks;
#endif
    return failure ? -3 : 0;
}

// -- warp shuffles: through a per-block scratch and one warp barrier (double-buffered) ---------
template <class T>
static inline T exchange(int site, T v, int src) {
    static_assert(sizeof(T) <= sizeof(unsigned long long), "shuffle of a type wider than 8 bytes");
    Worker* w = worker_;
    const int t = linear_tid;
    const int p = w->shfl_parity[t];
    w->shfl_parity[t] ^= 1;
    memcpy(&w->shfl_buf[p][t], &v, sizeof(T));
    warp_barrier(site);
    w = worker_;
    T r;
    memcpy(&r, &w->shfl_buf[p][src], sizeof(T));
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

namespace go_emu {
template <class T>
static inline T shfl_xor(int site, unsigned, T v, int mask, int width = 32) {
    const int lane = linear_tid & 31;
    const int src = lane ^ mask;
    return exchange(site, v, lane_src(src, width, src / width > lane / width));
}
template <class T>
static inline T shfl_down(int site, unsigned, T v, unsigned delta, int width = 32) {
    const int lane = linear_tid & 31;
    return exchange(site, v, lane_src(lane + (int)delta, width, (lane % width) + (int)delta >= width));
}
template <class T>
static inline T shfl_up(int site, unsigned, T v, unsigned delta, int width = 32) {
    const int lane = linear_tid & 31;
    return exchange(site, v, lane_src(lane - (int)delta, width, (lane % width) < (int)delta));
}
template <class T>
static inline T shfl(int site, unsigned, T v, int src_lane, int width = 32) {
    const int lane = linear_tid & 31;
    return exchange(site, v, lane_src((lane / width) * width + src_lane % width, width, false));
}
}  // namespace go_emu

// Macros, so that each barrier in the kernel source has its own number (the race check's
// barrier-divergence test compares them).
#define __syncthreads() go_emu::block_barrier(__COUNTER__)
#define __syncwarp(...) go_emu::warp_barrier(__COUNTER__)
#define __shfl_xor_sync(...) go_emu::shfl_xor(__COUNTER__, __VA_ARGS__)
#define __shfl_down_sync(...) go_emu::shfl_down(__COUNTER__, __VA_ARGS__)
#define __shfl_up_sync(...) go_emu::shfl_up(__COUNTER__, __VA_ARGS__)
#define __shfl_sync(...) go_emu::shfl(__COUNTER__, __VA_ARGS__)

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

// -- Hopper twins: wgmma.mma_async from shared-memory descriptors -----------------------------
// What the hardware does, as the PTX ISA describes it, on the emulated shared memory:
//   * A descriptor's addresses are 18-bit offsets in the block's shared window; the twin's window
//     starts at the block's shared array rounded down to 1024 bytes (wg_set_window), so an
//     address keeps the low bits that the swizzle reads, as a real shared address would.
//   * The 128-byte swizzle acts on the final byte address: bits 4-6 (the 16-byte chunk in a
//     128-byte row) ^= bits 7-9 (the row within a 1024-byte pattern).
//   * K-major (imm-trans 0), 128-byte swizzle: ((8,m),(T,2)):((8T,SBO),(1,T)) -- a row of m/n every
//     128 bytes, eight-row groups SBO apart, the 16 k of one instruction contiguous (LBO unused).
//     MN-major (imm-trans 1): ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO)) -- 64 m/n contiguous in a
//     128-byte row, the next 64 LBO away, a row per k, eight-k groups SBO apart.
//   * The accumulator of m64nNk16: thread t of the warpgroup (warp w, lane: g = lane/4, q = lane%4)
//     holds d[4j + 2h + e] = D[16w + g + 8h][8j + 2q + e].
//   * wgmma.mma_async only queues the operation; it happens at the wait_group that covers its
//     group, the latest moment the hardware may read shared memory and write the registers (as
//     the cp.async twin does), so a schedule that refills a stage too early reads the new data.
namespace go_emu {
static thread_local unsigned char* wg_window_ = nullptr;
static inline void wg_set_window(const void* p) { wg_window_ = (unsigned char*)((uintptr_t)p & ~(uintptr_t)1023); }
static inline unsigned wg_smem_addr(const void* p) { return (unsigned)((const unsigned char*)p - wg_window_); }

typedef float (*wg_widen_fn)(unsigned short);
struct WgOp { unsigned long long da, db; float* d; int n; bool ta, tb; wg_widen_fn widen; unsigned group; };
static thread_local WgOp wg_q[512][16];
static thread_local int wg_len[512];
static thread_local unsigned wg_open[512];

static inline int wg_tid() { return (int)(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)); }

// Byte address of element (mn, k) of one instruction's operand under a descriptor.
static inline unsigned wg_address(unsigned long long desc, int mn, int k, bool mn_major) {
    const unsigned start = (unsigned)(desc & 0x3FFF) << 4;
    const unsigned lbo = (unsigned)((desc >> 16) & 0x3FFF) << 4;
    const unsigned sbo = (unsigned)((desc >> 32) & 0x3FFF) << 4;
    const unsigned base_offset = (unsigned)(desc >> 49) & 7u, mode = (unsigned)(desc >> 62);
    if (mode != 1u || base_offset != 0u) fail("cuda_emu: the wgmma twin models the 128-byte swizzle with base offset 0 only (%s)", "descriptor");
    unsigned a = mn_major ? start + (unsigned)(mn % 64) * 2u + (unsigned)(mn / 64) * lbo + (unsigned)(k % 8) * 128u + (unsigned)(k / 8) * sbo
                          : start + (unsigned)(mn / 8) * sbo + (unsigned)(mn % 8) * 128u + (unsigned)k * 2u;
    a ^= ((a >> 7) & 7u) << 4;
    return a & 0x3FFFFu;
}

static inline float wg_elem(const WgOp& op, bool is_a, int mn, int k) {
    unsigned short bits;
    memcpy(&bits, wg_window_ + wg_address(is_a ? op.da : op.db, mn, k, is_a ? op.ta : op.tb), 2);
    return op.widen(bits);
}

static inline void wg_do(const WgOp& op) {
    const int t = wg_tid() & 127, w = t >> 5, g = (t & 31) >> 2, q = t & 3;
    for (int j = 0; j < op.n / 8; ++j)
        for (int h = 0; h < 2; ++h)
            for (int e = 0; e < 2; ++e) {
                const int m = 16 * w + g + 8 * h, n = 8 * j + 2 * q + e;
                float s = op.d[4 * j + 2 * h + e];
                for (int k = 0; k < 16; ++k) s = fmaf(wg_elem(op, true, m, k), wg_elem(op, false, n, k), s);
                op.d[4 * j + 2 * h + e] = s;
            }
}

static inline void wg_pop(int t, int count) {
    for (int i = 0; i < count; ++i) wg_do(wg_q[t][i]);
    wg_len[t] -= count;
    memmove(wg_q[t], wg_q[t] + count, sizeof(WgOp) * wg_len[t]);
}

static inline void wg_begin() {
    const int t = wg_tid();
    if (t < 512) { wg_len[t] = 0; wg_open[t] = 0; }
}
// D (n/2 floats of this thread) += A * B, A and B read through their descriptors when it is waited for.
static inline void wg_mma(unsigned long long da, unsigned long long db, float* d, int n, bool ta, bool tb, wg_widen_fn widen) {
    const int t = wg_tid();
    WgOp op{da, db, d, n, ta, tb, widen, 0u};
    if (t >= 512) { wg_do(op); return; }
    if (wg_len[t] == 16) wg_pop(t, 1);  // a full queue performs its oldest early (also legal)
    op.group = wg_open[t];
    wg_q[t][wg_len[t]++] = op;
}
static inline void wg_commit() {
    const int t = wg_tid();
    if (t < 512) ++wg_open[t];
}
static inline void wg_wait(int pending) {  // at most `pending` committed groups still in flight
    const int t = wg_tid();
    if (t >= 512) return;
    int count = 0;
    while (count < wg_len[t] && wg_q[t][count].group + (unsigned)pending < wg_open[t]) ++count;
    wg_pop(t, count);
}
}  // namespace go_emu

// -- Hopper twins: mbarrier and TMA (cp.async.bulk.tensor) ------------------------------------
// An mbarrier (8 bytes of shared memory) counts pending arrivals and a transaction count of bytes;
// its current phase completes when both reach zero: the phase bit flips and the arrivals reload.
// try_wait.parity(p) is true once the phase of parity p has completed (the current phase's bit
// is no longer p).
// A TMA load is queued on its mbarrier and performed (box copied, out-of-bounds elements zero,
// 128-byte swizzle on the shared address, complete_tx of the whole box) when a thread waits on
// that mbarrier: the latest moment the hardware may land it, so reading a stage before waiting
// reads stale data. Blocks run their threads as cooperative fibers, so a wait that cannot
// complete once the queue is drained would spin forever: the twin fails the launch instead.
// The twin's tensor map is graphopt's own 128-byte record (wgmma_tma.emu_tensor_map writes it):
// the driver's CUtensorMap is opaque.
namespace go_emu {
struct MBar { unsigned short count, pending; unsigned phase; int tx; };
static_assert(sizeof(MBar) == 12, "mbarrier twin");
// The twin keeps each mbarrier's state beside the block's shared memory, keyed by its address.
static thread_local const void* mbar_key_[64];
static thread_local MBar mbar_state_[64];
static thread_local int mbar_n_ = 0;
static inline MBar& mbar_of(const void* bar) {
    for (int i = 0; i < mbar_n_; ++i) if (mbar_key_[i] == bar) return mbar_state_[i];
    if (mbar_n_ == 64) { fail("cuda_emu: more than 64 mbarriers in one block (%s)", "mbarrier"); return mbar_state_[0]; }
    mbar_key_[mbar_n_] = bar;
    mbar_state_[mbar_n_] = MBar{0, 0, 0, 0};
    return mbar_state_[mbar_n_++];
}
struct TensorMapTwin {  // 128 bytes, written by the host (wgmma_tma.emu_tensor_map)
    unsigned long long magic, base;        // magic: "GOTMAP01"
    unsigned long long dim[2], stride1;    // elements along the inner / outer dim; bytes between outer rows
    unsigned box[2], elem_bytes, swizzle;  // box extents (elements), element size, swizzle span (0 or 128)
    unsigned char pad[128 - 56];
};
static_assert(sizeof(TensorMapTwin) == 128, "tensor map twin");
struct TmaOp { unsigned char* dst; const TensorMapTwin* map; int x, y; const void* bar; };
static thread_local TmaOp tma_q_[256];
static thread_local int tma_n_ = 0;

static inline void mbar_complete_if_done(MBar& b) {
    if (b.pending == 0 && b.tx == 0) { b.phase ^= 1u; b.pending = b.count; }
}
static inline void mbar_init(const void* bar, unsigned count) {
    MBar& b = mbar_of(bar);
    b = MBar{(unsigned short)count, (unsigned short)count, 0u, 0};
}
static inline void mbar_arrive_expect_tx(const void* bar, unsigned bytes) {
    MBar& b = mbar_of(bar);
    b.tx += (int)bytes;
    if (b.pending == 0) { fail("cuda_emu: an mbarrier arrival beyond its count (%s)", "mbarrier"); return; }
    --b.pending;
    mbar_complete_if_done(b);
}
static inline void tma_do(const TmaOp& op) {
    const TensorMapTwin& m = *op.map;
    if (m.magic != 0x313050414d544f47ULL) { fail("cuda_emu: not a graphopt tensor map (%s)", "TMA"); return; }
    const unsigned row_bytes = m.box[0] * m.elem_bytes;
    const unsigned dst0 = wg_smem_addr(op.dst);
    for (unsigned r = 0; r < m.box[1]; ++r)
        for (unsigned c = 0; c < m.box[0]; ++c) {
            unsigned a = dst0 + r * row_bytes + c * m.elem_bytes;
            if (m.swizzle == 128) a ^= ((a >> 7) & 7u) << 4;
            const long long gx = (long long)op.x + c, gy = (long long)op.y + r;
            unsigned char* d = wg_window_ + a;
            if (gx < 0 || gy < 0 || (unsigned long long)gx >= m.dim[0] || (unsigned long long)gy >= m.dim[1])
                memset(d, 0, m.elem_bytes);
            else
                memcpy(d, (const unsigned char*)(uintptr_t)m.base + gy * m.stride1 + gx * m.elem_bytes, m.elem_bytes);
        }
    MBar& b = mbar_of(op.bar);
    b.tx -= (int)(m.box[0] * m.box[1] * m.elem_bytes);
    mbar_complete_if_done(b);
}
static inline void tma_load_2d(void* dst, const void* map, int x, int y, const void* bar) {
    if ((wg_smem_addr(dst) & 1023u) != 0 && ((const TensorMapTwin*)map)->swizzle == 128)
        fail("cuda_emu: a 128-byte-swizzled TMA box must land on a 1024-byte boundary (%s)", "TMA");
    if (tma_n_ == 256) { tma_do(tma_q_[0]); memmove(tma_q_, tma_q_ + 1, sizeof(TmaOp) * 255); --tma_n_; }
    tma_q_[tma_n_++] = TmaOp{(unsigned char*)dst, (const TensorMapTwin*)map, x, y, bar};
}
static inline bool mbar_try_wait(const void* bar, unsigned parity) {
    int keep = 0;
    for (int i = 0; i < tma_n_; ++i) {  // land every load this mbarrier counts, in issue order
        if (tma_q_[i].bar == bar) tma_do(tma_q_[i]);
        else tma_q_[keep++] = tma_q_[i];
    }
    tma_n_ = keep;
    if ((mbar_of(bar).phase & 1u) != (parity & 1u)) return true;
    fail("cuda_emu: an mbarrier wait that cannot complete: its phase of parity %s is still open "
         "with nothing left in flight (a deadlock on the GPU)", parity & 1u ? "1" : "0");
    return true;
}
static inline void tma_begin() {  // a block starts with no mbarrier and nothing in flight
    mbar_n_ = 0;
    tma_n_ = 0;
}
}  // namespace go_emu

// -- the library's C interface besides the per-kernel launch wrappers --------------------------
typedef int (*go_emu_launch_fn)(const unsigned*, void* const*);

// Run `n` launches in order: fns[i](dims + 6 i, args[i]). Returns -1 when all ran, else the
// index of the launch that failed (its code in *rc).
extern "C" __attribute__((visibility("default"))) int go_emu_run_list(
        int n, const go_emu_launch_fn* fns, const unsigned* dims, void* const* const* args, int* rc) {
    for (int i = 0; i < n; ++i) {
        const int r = fns[i](dims + 6 * i, args[i]);
        if (r != 0) {
            *rc = r;
            return i;
        }
    }
    return -1;
}

extern "C" __attribute__((visibility("default"))) const char* go_emu_check_report() { return go_emu::failure_text; }

#ifdef GO_EMU_CHECK_RACE
extern "C" __attribute__((visibility("default"))) void go_emu_set_seed(unsigned seed) {
    go_emu::seed_ = seed;
    go_emu::rng_ = 0x9e3779b97f4a7c15ull * (seed + 1);
}
#endif

