"""The tensor-core mainloop shared by the float16/bfloat16 GEMM and the implicit-GEMM
convolutions: a multistage ``cp.async`` pipeline into swizzled shared memory, ``ldmatrix``
fragment loads and ``mma.sync.m16n8k16``, plus split-K with an in-kernel fixup.

What a block does, as CUTLASS's multistage kernels and Triton's pipelined loops do it:

* **Global -> shared, asynchronously.** Each operand tile (``BM x BK`` of A, ``BN x BK`` of B)
  is cut into copies of ``vec`` elements (16 bytes when the operand's layout allows: the
  contiguous extent and every other stride a multiple of 8 elements); every thread issues
  its share with ``cp.async`` (``.cg`` for 16 bytes, L1 bypassed), out-of-range copies with
  a source size of 0 (zero fill), so no tile size needs to divide a matrix. ``stages - 1``
  tiles are in flight while one is multiplied; one ``__syncthreads`` per k-tile. An operand
  whose layout allows no vector (odd strides, the NCHW im2col gather) is loaded element by
  element into the same pipeline (a synchronous load, the same shared layout).
* **Shared layout.** An operand whose k is contiguous in memory is kept ``[rows][BK]`` (rows
  are m or n); one whose m/n is contiguous ``[BK][rows]``; unpadded, each row's 16-byte chunks
  XOR-swizzled (``swizzle.py``, ``SmemTile``) so that the eight 16-byte rows an ``ldmatrix``
  phase reads, and the eight chunks a ``cp.async`` wavefront writes, fall in eight different
  bank quads. Copies and fragment loads go through the same swizzle; its offsets are
  computed once per thread before the loop (``hoist_offsets``).
* **Fragments.** ``ldmatrix.x4`` loads one 16x16 A fragment or two 16x8 B fragments per
  call; ``.trans`` when m/n is the contiguous dim, so ``transA``/``transB`` and row-major
  ``[K, N]`` weights need no copies.
* **Split-K.** When the output tiles cannot fill the GPU (BERT-base at batch 1: a 128x768
  GEMM is 24 tiles of 64x64 for 132 SMs) the K range is split over ``split`` blocks per
  tile. Each block stores its float32 partial tile to a workspace, counts itself in with an
  ``atomicAdd`` on the tile's counter, and the last one to arrive sums the partials *in
  split order* (deterministic, whichever block is last), runs the epilogue, stores, and
  resets the counter to 0 for the next launch. One launch, no memset.

Each instruction helper has two bodies: the PTX on the device, and a *portable twin* for
host emulation that reproduces the instruction's data movement bit for bit:

* ``cp.async`` twin: copies are queued per thread and performed only when that thread
  waits for their group (``cp.async.wait_group N`` performs every group but the N newest),
  as late as the hardware may perform them: a schedule that reads a stage before waiting
  for it, or without the barrier after the wait, reads stale shared memory under
  emulation too.
* ``ldmatrix`` twin: each lane publishes its row address to a per-warp scratch, and reads
  its two 16-bit values per matrix from the rows of the lanes the PTX layout names.
* ``mma`` twin (``tc_gemm.py``): the lanes' fragments are published the same way and each
  lane multiplies the A rows and B columns its accumulators need.

The schedule (tile, warps, stages, split) comes from a table keyed by the GEMM's shape and
the target GPU's SM count and shared memory (``choose_schedule``).

>>> t, split = choose_schedule(4096, 4096, 4096, 1)
>>> (t.bm, t.bn, t.stages, split)
(128, 128, 4, 1)
>>> t, split = choose_schedule(128, 768, 768, 1)
>>> (t.bm, t.bn, split)
(64, 64, 5)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .kernel import Helper
from .specs import ceil_div
from .swizzle import c_eval, swizzle_chunk_c

# ---------------------------------------------------------------------------------------------
# Target GPUs and schedules


@dataclass(frozen=True)
class Gpu:
    """What the schedule table needs to know of a GPU."""

    name: str
    sm_count: int
    smem_per_block: int  # bytes a block may opt into (cudaFuncAttributeMaxDynamicSharedMemorySize)


GPUS = {
    "H100": Gpu("H100 SXM", 132, 227 * 1024),
    "H200": Gpu("H200", 132, 227 * 1024),
    "A100": Gpu("A100", 108, 163 * 1024),
    "L4": Gpu("L4", 58, 99 * 1024),
}
STATIC_SMEM_LIMIT = 48 * 1024  # more than this needs dynamic shared memory and the function attribute


def target_gpu() -> Gpu:
    """The GPU schedules are chosen for: ``GRAPHOPT_CUDA_GPU`` (a key of ``GPUS``), else an H100.

    >>> target_gpu().sm_count
    132
    """
    name = os.environ.get("GRAPHOPT_CUDA_GPU", "H100")
    if name not in GPUS:
        from graphopt.errors import GraphoptError

        raise GraphoptError(f"GRAPHOPT_CUDA_GPU={name!r} is not a known GPU ({', '.join(GPUS)})")
    return GPUS[name]


@dataclass(frozen=True)
class TcTile:
    """A block tile on tensor cores: ``bm x bn`` outputs, ``bk`` of K per stage (elements;
    bytes for int8), ``warps_m x warps_n`` warps each owning a ``wm x wn`` piece, and
    ``stages`` shared-memory buffers in the pipeline."""

    bm: int
    bn: int
    bk: int
    warps_m: int
    warps_n: int
    stages: int = 1

    @property
    def threads(self) -> int:
        return 32 * self.warps_m * self.warps_n

    @property
    def wm(self) -> int:
        return self.bm // self.warps_m

    @property
    def wn(self) -> int:
        return self.bn // self.warps_n


# The table. Warp tiles are multiples of 16x16 (one ldmatrix.x4 of A, one of two B fragments).
# Bytes are for k-major operands; unpadded (swizzled) rows made every tile a fifth smaller. A fifth
# stage in the bytes padding took would cost the gathered-im2col stem 45 registers on sm_80.
TILES = {
    "128x128": TcTile(128, 128, 32, 2, 4, 4),  # warp 64x32, 256 threads, 64 KB
    "128x64": TcTile(128, 64, 32, 2, 2, 4),    # warp 64x32, 128 threads, 48 KB (static)
    "64x128": TcTile(64, 128, 32, 2, 2, 4),    # warp 32x64
    "64x64": TcTile(64, 64, 32, 2, 2, 4),      # warp 32x32, 32 KB
    "64x32": TcTile(64, 32, 32, 2, 2, 4),      # warp 32x16: few output channels
    "16x64": TcTile(16, 64, 32, 1, 4, 4),      # warp 16x16: a few rows (batch-1 classifiers)
}
MIN_KTILES_PER_SPLIT = 4  # a split shorter than this never fills its pipeline
MAX_SPLIT = 16


def smem_bytes(t: TcTile) -> int:
    """Shared memory of the pipeline: ``stages`` x (A tile + B tile), unpadded (swizzled) rows,
    whichever dim of an operand is contiguous."""
    return t.stages * (t.bm + t.bn) * t.bk * 2


def fit_stages(t: TcTile, gpu: Gpu) -> TcTile:
    """``t`` with as many of its stages as the GPU's shared memory holds (at least 2)."""
    from dataclasses import replace

    while t.stages > 2 and smem_bytes(t) > gpu.smem_per_block:
        t = replace(t, stages=t.stages - 1)
    return t


def choose_schedule(M: int, N: int, K: int, nz: int, gpu: Gpu | None = None,
                    bk: int = 32) -> tuple[TcTile, int]:
    """(tile, split) for an ``M x N x K`` GEMM repeated ``nz`` times on ``gpu``: the biggest tile
    whose blocks still fill every SM; when even the smallest does not, split K over more blocks
    (each split at least ``MIN_KTILES_PER_SPLIT`` k-tiles long)."""
    gpu = gpu or target_gpu()
    if M <= 16 and N >= 64:
        names = ["16x64"]
    elif N <= 32:
        names = ["64x32"]
    else:
        names = ["128x128", "128x64" if M >= N else "64x128", "64x64"]
    for name in names:
        t = TILES[name]
        if M >= t.bm and N >= t.bn and ceil_div(M, t.bm) * ceil_div(N, t.bn) * nz >= gpu.sm_count:
            return fit_stages(t, gpu), 1
    t = fit_stages(TILES[names[-1]], gpu)
    blocks = ceil_div(M, t.bm) * ceil_div(N, t.bn) * nz
    ktiles = ceil_div(K, bk)
    split = max(1, min(gpu.sm_count // blocks, ktiles // MIN_KTILES_PER_SPLIT, MAX_SPLIT))
    return t, normal_split(ktiles, split)


def normal_split(ktiles: int, split: int) -> int:
    """The number of non-empty splits when ``ktiles`` are dealt ``ceil(ktiles / split)`` at a time."""
    if split <= 1:
        return 1
    return ceil_div(ktiles, ceil_div(ktiles, split))


# ---------------------------------------------------------------------------------------------
# Instruction helpers: PTX on the device, a portable twin on the host

SMEM_ADDR_HELPER = Helper("go_smem_addr", """\
__device__ __forceinline__ unsigned go_smem_addr(const void* p) {  // a generic pointer into shared memory as a .shared address
#if defined(__CUDA_ARCH__)
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
#else
    return 0;
#endif
}
""")

CP_ASYNC_HELPER = Helper("go_cp_async", """\
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ < 800
// cp.async twin: a thread's copies wait in its queue until it waits for their group, the latest
// moment the hardware may complete them. A full queue completes its oldest copy early (also legal).
struct go_cp_entry { unsigned char* dst; const unsigned char* src; unsigned short n, src_n; unsigned group; };
static thread_local go_cp_entry go_cp_q[512][64];
static thread_local int go_cp_len[512];
static thread_local unsigned go_cp_open[512];
static inline int go_cp_tid() { return (int)(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)); }
static inline void go_cp_do(const go_cp_entry& e) {
    if (e.src_n) memcpy(e.dst, e.src, e.src_n);
    if (e.n > e.src_n) memset(e.dst + e.src_n, 0, e.n - e.src_n);
}
static inline void go_cp_pop(int t, int count) {
    for (int i = 0; i < count; ++i) go_cp_do(go_cp_q[t][i]);
    go_cp_len[t] -= count;
    memmove(go_cp_q[t], go_cp_q[t] + count, sizeof(go_cp_entry) * go_cp_len[t]);
}
#endif
// Queue a copy of n bytes (16: .cg, bypassing L1; 8 or 4: .ca) of which the first src_n come from
// global memory and the rest are zero; src_n = 0 reads nothing.
template <int N>
__device__ __forceinline__ void go_cp_async(void* dst, const void* src, int src_n) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if (N == 16)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\\n" :: "r"(go_smem_addr(dst)), "l"(src), "r"(src_n));
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\\n"
                     :: "r"(go_smem_addr(dst)), "l"(src), "n"(N), "r"(src_n));
#else
    const int t = go_cp_tid();
    go_cp_entry e{(unsigned char*)dst, (const unsigned char*)src, (unsigned short)N, (unsigned short)src_n, 0u};
    if (t >= 512) { go_cp_do(e); return; }
    if (go_cp_len[t] == 64) go_cp_pop(t, 1);
    e.group = go_cp_open[t];
    go_cp_q[t][go_cp_len[t]++] = e;
#endif
}
__device__ __forceinline__ void go_cp_async_begin() {  // the twin's queue starts empty in every block
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ < 800
    const int t = go_cp_tid();
    if (t < 512) { go_cp_len[t] = 0; go_cp_open[t] = 0; }
#endif
}
__device__ __forceinline__ void go_cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\\n" ::);
#else
    const int t = go_cp_tid();
    if (t < 512) ++go_cp_open[t];
#endif
}
// Wait until at most N of this thread's committed groups are pending.
template <int N>
__device__ __forceinline__ void go_cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\\n" :: "n"(N));
#else
    const int t = go_cp_tid();
    if (t >= 512) return;
    int count = 0;
    while (count < go_cp_len[t] && go_cp_q[t][count].group + N < go_cp_open[t]) ++count;
    go_cp_pop(t, count);
#endif
}
""")

LDSM_HELPER = Helper("go_ldsm", """\
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ < 750
// ldmatrix twin: lanes 8q..8q+7 give the rows of matrix q; lane (g = lane/4, t = lane%4) receives
// row g, columns 2t and 2t+1 of each matrix, or with .trans rows 2t and 2t+1 of column g.
__device__ __forceinline__ void go_ldsm_twin(unsigned* r, const unsigned short* p, int nmat, bool trans) {
    __shared__ const unsigned short* go_ldsm_rows[1024];
    const int tid = (int)(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
    const int lane = tid & 31, base = tid - lane, g = lane >> 2, t = lane & 3;
    go_ldsm_rows[tid] = p;
    __syncwarp();
    for (int q = 0; q < nmat; ++q) {
        if (trans) {
            const unsigned short* r0 = go_ldsm_rows[base + q * 8 + 2 * t];
            const unsigned short* r1 = go_ldsm_rows[base + q * 8 + 2 * t + 1];
            r[q] = (unsigned)r0[g] | ((unsigned)r1[g] << 16);
        } else {
            const unsigned short* row = go_ldsm_rows[base + q * 8 + g];
            r[q] = (unsigned)row[2 * t] | ((unsigned)row[2 * t + 1] << 16);
        }
    }
    __syncwarp();  // the scratch is rewritten by the next call
}
#endif
// Four 8x8 matrices of 16-bit values from shared memory; p is this lane's row (16 bytes, aligned).
__device__ __forceinline__ void go_ldsm_x4(unsigned* r, const unsigned short* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(go_smem_addr(p)));
#else
    go_ldsm_twin(r, p, 4, false);
#endif
}
__device__ __forceinline__ void go_ldsm_x4_trans(unsigned* r, const unsigned short* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(go_smem_addr(p)));
#else
    go_ldsm_twin(r, p, 4, true);
#endif
}
""")

FENCE_HELPER = Helper("go_fence", """\
__device__ __forceinline__ void go_fence() {  // order this thread's global writes before what follows, GPU-wide
#if defined(__CUDA_ARCH__)
    __threadfence();
#else
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}
__device__ __forceinline__ float go_ldcg(const float* p) {  // a load that skips L1 (written by another block)
#if defined(__CUDA_ARCH__)
    float v;
    asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p));
    return v;
#else
    return *(volatile const float*)p;
#endif
}
""")

MAINLOOP_HELPERS = (SMEM_ADDR_HELPER, CP_ASYNC_HELPER, LDSM_HELPER)


# ---------------------------------------------------------------------------------------------
# Operands


@dataclass(frozen=True)
class Operand:
    """How one GEMM operand reaches shared memory.

    ``kmajor``: k is the contiguous dim of the shared tile (rows are m or n); else m/n is.
    ``vec``: elements per copy (8: 16-byte ``cp.async``; 4, 2: 8/4-byte; 1: a synchronous load).
    ``setup(u, mn)``: C lines run once before the loop for copy ``u`` whose m/n index in the tile
    is ``mn``. ``fetch(u, k)``: (lines, pointer, valid) of copy ``u`` at the operand's k index
    ``k`` (an expression); ``base``: a pointer that is always safe to name (with 0 bytes read).
    ``ctype``: the element C type of the pointer (16-bit values as ``unsigned short``)."""

    kmajor: bool
    vec: int
    setup: Callable[[int, str], list[str]]
    fetch: Callable[[int, str], tuple[list[str], str, str]]
    base: str


def vector_width(extent: int, strides: Sequence[int], offset: int, unit: int, limit: int = 8) -> int:
    """The widest copy (8, 4, 2 elements, else 1) along a dim of unit stride and ``extent``
    elements, given the operand's other ``strides`` and element ``offset``: every copy must be
    aligned to its size and never straddle the dim's end."""
    if unit != 1:
        return 1
    for v in (8, 4, 2):
        if v <= limit and extent % v == 0 and offset % v == 0 and all(s % v == 0 for s in strides):
            return v
    return 1


def view_operand(ptr: str, base_off: str, s_mn: int, s_k: int, MN: int, K: int, mn0: str, I: str,
                 other_strides: Sequence[int] = (), offset: int = 0, name: str = "a") -> Operand:
    """A strided matrix operand ``ptr[base_off + mn * s_mn + k * s_k]`` (``mn`` from ``mn0``)."""
    if s_k == 1 and (abs(s_mn) != 1 or MN == 1):
        kmajor, vec = True, vector_width(K, (s_mn, *other_strides), offset, 1)
    elif s_mn == 1:
        kmajor, vec = False, vector_width(MN, (s_k, *other_strides), offset, 1)
    else:
        kmajor, vec = abs(s_k) <= abs(s_mn), 1
    if any(s < 0 for s in (s_mn, s_k, *other_strides)):
        vec = 1

    def term(idx: str, s: int) -> str:
        return idx if s == 1 else f"({idx}) * {s}"

    def setup(u: int, mn: str) -> list[str]:
        return [f"const {I} {name}m{u} = {mn0} + {mn};",
                f"const bool {name}v{u} = {name}m{u} < {MN};",
                f"const unsigned short* const {name}p{u} = {ptr} + {base_off} + ({name}v{u} ? "
                f"{term(f'{name}m{u}', s_mn)} : 0);"]

    def fetch(u: int, k: str) -> tuple[list[str], str, str]:
        return [f"const {I} {name}k{u} = {k};"], f"{name}p{u} + {term(f'{name}k{u}', s_k)}", \
            f"{name}v{u} && {name}k{u} < {K}"

    return Operand(kmajor, vec, setup, fetch, ptr)


# ---------------------------------------------------------------------------------------------
# The shared layout: unpadded tiles, 16-byte chunks XOR-swizzled (swizzle.py)


@dataclass(frozen=True)
class SmemTile:
    """One operand's tile in a pipeline stage: ``rows x cols`` 16-bit values from element ``base``
    of the stage, unpadded, each row's 16-byte chunks placed by ``swizzle.swizzle_chunk``. Rows
    are m or n (``cols`` = BK) for a k-major operand, k (``cols`` = BM or BN) for an m/n-major one.

    >>> SmemTile(64, 32, 0).at("r", "c")
    '0 + (((r) * 4 + ((c) >> 3)) ^ (((r) >> 1) & 7)) * 8 + ((c) & 7)'
    """

    rows: int
    cols: int
    base: int

    def __post_init__(self):
        chunks = self.cols // 8
        if self.cols % 8 or chunks & (chunks - 1) or (self.rows * self.cols) % 64:
            raise ValueError(f"a swizzled tile is whole 128-byte lines of power-of-two rows of 16-byte chunks, "
                             f"not {self.rows}x{self.cols} halves")

    def at(self, row: str, col: str) -> str:
        """The element offset from the stage's start of (``row``, ``col``), a C expression."""
        return f"{self.base} + {swizzle_chunk_c(row, f'({col}) >> 3', self.cols // 8)} * 8 + (({col}) & 7)"


def smem_tiles(t: TcTile, a_kmajor: bool, b_kmajor: bool) -> tuple[SmemTile, SmemTile]:
    """The A and B tiles of one stage (A first, B right after it)."""
    a = SmemTile(t.bm, t.bk, 0) if a_kmajor else SmemTile(t.bk, t.bm, 0)
    b = SmemTile(t.bn, t.bk, t.bm * t.bk) if b_kmajor else SmemTile(t.bk, t.bn, t.bm * t.bk)
    return a, b


def copy_slots(vec: int, tile: SmemTile, NT: int) -> list[tuple[int, str, str, bool]]:
    """Per copy ``u`` of a thread into ``tile`` (``vec`` elements each): (u, row, col, guarded), C
    expressions over ``tid``; consecutive threads take consecutive copies of a row."""
    cpr = tile.cols // vec
    total = tile.rows * cpr
    out = []
    for u in range(ceil_div(total, NT)):
        if NT % cpr == 0:
            row, col = f"(tid / {cpr} + {u * (NT // cpr)})", f"(tid % {cpr}) * {vec}"
        else:
            row, col = f"((tid + {u * NT}) / {cpr})", f"((tid + {u * NT}) % {cpr}) * {vec}"
        out.append((u, row, col, (u + 1) * NT > total))
    return out


def ldsm_slots(t: TcTile, kmajor: bool, operand: str) -> dict[tuple[int, int], tuple[str, str]]:
    """(fragment step, k step ``ks``) -> (row, col) of this lane's row address for one
    ``ldmatrix.x4``, C expressions over ``lane`` and ``wm``/``wn``. A: step ``i`` loads the 16x16
    fragment of rows ``wm + 16 i``; B: step ``j`` the two 16x8 fragments of columns ``wn + 16 j``.
    Lanes 8q..8q+7 address matrix q's eight rows (one phase each)."""
    steps = (t.wm if operand == "a" else t.wn) // 16
    out = {}
    for f in range(steps):
        for ks in range(t.bk // 16):
            if operand == "a" and kmajor:  # As[m][k]: lanes 0-15 rows 0-15 at k 0, lanes 16-31 the same rows at k 8
                rc = (f"wm + {16 * f} + (lane & 15)", f"{16 * ks} + (lane >> 4) * 8")
            elif operand == "a":  # As[k][m], transposed: k row (lane & 7) + 8 (lane >> 4), m column 8 ((lane >> 3) & 1)
                rc = (f"{16 * ks} + (lane >> 4) * 8 + (lane & 7)", f"wm + {16 * f} + ((lane >> 3) & 1) * 8")
            elif kmajor:  # Bs[n][k]: matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15)
                rc = (f"wn + {16 * f} + (lane >> 4) * 8 + (lane & 7)", f"{16 * ks} + ((lane >> 3) & 1) * 8")
            else:  # Bs[k][n], transposed: the same four matrices
                rc = (f"{16 * ks} + ((lane >> 3) & 1) * 8 + (lane & 7)", f"wn + {16 * f} + (lane >> 4) * 8")
            out[(f, ks)] = rc
    return out


def thread_values(t: TcTile) -> dict[str, np.ndarray]:
    """Every thread's ``tid``, ``lane``, ``wm``, ``wn`` (as ``tc_gemm.tc_prologue`` defines them)."""
    tid = np.arange(t.threads)
    warp = tid >> 5
    return {"tid": tid, "lane": tid & 31, "wm": (warp // t.warps_n) * t.wm, "wn": (warp % t.warps_n) * t.wn}


def hoist_offsets(name: str, exprs: Sequence[str], env: dict[str, np.ndarray]) -> tuple[list[str], list[str]]:
    """Per-thread offsets computed once, before the loop: one ``const int`` per class of ``exprs``
    that differ by a constant in every thread (``env``: the free names' values, one per thread),
    and each expression as its class's register plus that constant. A swizzled offset is not
    linear in the fragment or copy index, but most steps move it by a constant; this keeps one
    register per step that does not.

    >>> hoist_offsets("o", ["tid * 4", "tid * 4 + 8", "tid ^ 1"], {"tid": np.arange(4)})
    (['const int o0 = tid * 4;', 'const int o1 = tid ^ 1;'], ['o0', 'o0 + 8', 'o1'])
    """
    values = [np.broadcast_to(c_eval(e, **env), env[next(iter(env))].shape) for e in exprs]
    leaders: list[int] = []
    decls, uses = [], []
    for i, e in enumerate(exprs):
        for n, j in enumerate(leaders):
            d = values[i] - values[j]
            if (d == d[0]).all():
                uses.append(f"{name}{n}" + (f" + {d[0]}" if d[0] > 0 else f" - {-d[0]}" if d[0] < 0 else ""))
                break
        else:
            decls.append(f"const int {name}{len(leaders)} = {e};")
            uses.append(f"{name}{len(leaders)}")
            leaders.append(i)
    return decls, uses


# ---------------------------------------------------------------------------------------------
# The mainloop


@dataclass(frozen=True)
class Mainloop:
    """The rendered pieces of a tensor-core kernel's mainloop."""

    lines: list[str]  # from the shared-memory declaration to the accumulators after the last k-tile
    smem: int  # bytes of shared memory
    dynamic: bool  # past the static limit: declared extern, sized at launch


def cp_async_prologue(S: int, load_stage) -> list[str]:
    """The pipeline's prologue, which both mainloops (mma.sync here, wgmma) start with: the first
    ``S - 1`` k-tiles of the block's range put in flight by ``load_stage(stage, k_tile)``'s copies,
    one commit group each (an empty group past the range, so that the waits count alike)."""
    return [f"// prologue: the first {S - 1} k-tiles in flight",
            "#pragma unroll",
            f"for (int s = 0; s < {S - 1}; ++s) {{",
            "    if (kt_begin + s < kt_end) {",
            *("        " + x for x in load_stage("s", "(kt_begin + s)")),
            "    }",
            "    go_cp_async_commit();",
            "}"]


def copy_lines(op: Operand, u: int, nm: str, guarded: bool, k0: str, dst: str) -> list[str]:
    """One thread's copy ``u`` of operand ``nm`` for the k-tile starting at ``k0``, into the shared
    address ``dst``: a ``cp.async`` of ``op.vec`` elements (size 0, zero fill, when out of range)
    or one element loaded synchronously; inside ``if (<nm>g<u>)`` when the copy may not exist.
    Shared by the mma.sync and wgmma mainloops."""
    kidx = f"{k0} + {nm}c{u}" if op.kmajor else f"{k0} + {nm}r{u}"
    lines, ptr, valid = op.fetch(u, kidx)
    if op.vec > 1:
        body = lines + [f"go_cp_async<{op.vec * 2}>({dst}, ({valid}) ? (const void*)({ptr}) : "
                        f"(const void*){op.base}, ({valid}) ? {op.vec * 2} : 0);"]
    else:
        body = lines + [f"*({dst}) = ({valid}) ? *({ptr}) : (unsigned short)0;"]
    return [f"if ({nm}g{u}) {{" if guarded else "{", *("    " + x for x in body), "}"]


def render_mainloop(t: TcTile, K: int, A: Operand, B: Operand, mma: str, I: str,
                    k_range: tuple[str, str] | None = None) -> Mainloop:
    """C lines that leave ``acc[MI][NI][4]`` (float) holding this block's sums over the k-tiles
    ``k_range`` (expressions; all of them by default). Expects ``tid``, ``warp``, ``lane`` and
    the tile origin to be defined by the caller's prologue (``Operand.setup`` uses them)."""
    BK, NT, S = t.bk, t.threads, t.stages
    MI, NI = t.wm // 16, t.wn // 8
    assert t.wm % 16 == 0 and t.wn % 16 == 0 and BK % 16 == 0 and S >= 2, t
    ta, tb = smem_tiles(t, A.kmajor, B.kmajor)
    stage_h = (t.bm + t.bn) * BK
    smem = S * stage_h * 2
    dynamic = smem > STATIC_SMEM_LIMIT
    decl = f"__shared__ __align__(128) unsigned char go_smem[{smem}];"
    L = (["#if defined(__CUDA_ARCH__)  // sized at launch: more than a static array may hold",
          "extern __shared__ __align__(128) unsigned char go_smem[];", "#else", decl, "#endif"]
         if dynamic else [decl])
    L.append("unsigned short* const smem_h = reinterpret_cast<unsigned short*>(go_smem);")
    kt0, kt1 = k_range or ("0", str(ceil_div(K, BK)))
    L += [f"const int kt_begin = {kt0}, kt_end = {kt1};"]
    env = thread_values(t)
    loads = []  # (operand, copies, where each copy lands in a stage, prefix)
    for op, tile, nm in ((A, ta, "a"), (B, tb, "b")):
        cps = copy_slots(op.vec, tile, NT)
        for u, row, col, guarded in cps:
            L.append(f"const int {nm}r{u} = {row}, {nm}c{u} = {col};")
            L += op.setup(u, f"{nm}r{u}" if op.kmajor else f"{nm}c{u}")
            if guarded:
                L.append(f"const bool {nm}g{u} = tid + {u * NT} < {tile.rows * tile.cols // op.vec};")
        decls, dst = hoist_offsets(f"{nm}_st", [tile.at(row, col) for _, row, col, _ in cps], env)
        L += decls
        loads.append((op, cps, dst, nm))

    # one stage's copies: into stage s (an expression), the k-tile kt
    def load_stage(s: str, kt: str) -> list[str]:
        out = []
        for op, cps, dsts, nm in loads:
            for (u, _, _, guarded), d in zip(cps, dsts):
                out += copy_lines(op, u, nm, guarded, f"{kt} * {BK}", f"smem_h + {s} * {stage_h} + {d}")
        return out

    L += [f"float acc[{MI}][{NI}][4];", "#pragma unroll",
          f"for (int i = 0; i < {MI}; ++i)", "    #pragma unroll",
          f"    for (int j = 0; j < {NI}; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.0f;"]
    # this lane's ldmatrix rows per (fragment step, k step), relative to a stage's start
    lds = {}
    for op, tile, nm in ((A, ta, "a"), (B, tb, "b")):
        slots = ldsm_slots(t, op.kmajor, nm)
        decls, uses = hoist_offsets(f"{nm}_ld", [tile.at(r, c) for r, c in slots.values()], env)
        L += decls
        lds[nm] = dict(zip(slots, uses))
    lda = "go_ldsm_x4" if A.kmajor else "go_ldsm_x4_trans"
    ldb = "go_ldsm_x4" if B.kmajor else "go_ldsm_x4_trans"
    compute = [f"const unsigned short* const st_h = smem_h + ((kt - kt_begin) % {S}) * {stage_h};"]
    for ks in range(BK // 16):
        compute += [f"{{  // k {16 * ks}..{16 * ks + 15} of the tile", f"    unsigned af[{MI}][4], bf[{NI}][2];"]
        compute += [f"    {lda}(af[{i}], st_h + {lds['a'][(i, ks)]});" for i in range(MI)]
        for j in range(NI // 2):
            compute += ["    {", "        unsigned r[4];", f"        {ldb}(r, st_h + {lds['b'][(j, ks)]});",
                        f"        bf[{2 * j}][0] = r[0]; bf[{2 * j}][1] = r[1]; "
                        f"bf[{2 * j + 1}][0] = r[2]; bf[{2 * j + 1}][1] = r[3];", "    }"]
        compute += ["    #pragma unroll", f"    for (int i = 0; i < {MI}; ++i)", "        #pragma unroll",
                    f"        for (int j = 0; j < {NI}; ++j) {mma}(acc[i][j], af[i], bf[j]);", "}"]
    L += ["go_cp_async_begin();",
          *cp_async_prologue(S, load_stage),
          "#pragma unroll 1  // the loop body is the pipeline: unrolled, ptxas would only add registers",
          "for (int kt = kt_begin; kt < kt_end; ++kt) {",
          f"    go_cp_async_wait<{S - 2}>();  // this thread's copies of k-tile kt have landed",
          "    __syncthreads();  // everyone's have; and the stage loaded next is no longer read",
          "    {",
          f"        const int kn = kt + {S - 1};",
          "        if (kn < kt_end) {",
          f"            const int sn = (kn - kt_begin) % {S};",
          *("            " + x for x in load_stage("sn", "kn")),
          "        }",
          "        go_cp_async_commit();",
          "    }",
          *("    " + x for x in compute),
          "}",
          "go_cp_async_wait<0>();  // nothing left in flight (an empty group at most)"]
    return Mainloop(L, smem, dynamic)


def splitk_lines(t: TcTile, split: int, tile_id: str, zb: str, ks: str, tiles: int) -> list[str]:
    """After the mainloop of split ``ks``: publish the partial tile, and let only the last of the
    ``split`` blocks of this output tile go on, with ``acc`` the sum of all partials in split order.
    Needs ``ws`` (float workspace, ``split`` x ``BM*BN`` per tile) and ``ctr`` (int per tile, 0
    between launches)."""
    MI, NI = t.wm // 16, t.wn // 8
    per = t.bm * t.bn
    slot = f"(((warp * {MI} + i) * {NI} + j) * 4 + r) * 32 + lane"
    return [
        f"float* const ws_tile = ws + (({zb}) * {tiles} + ({tile_id})) * {split * per};",
        "#pragma unroll",
        f"for (int i = 0; i < {MI}; ++i)", "    #pragma unroll",
        f"    for (int j = 0; j < {NI}; ++j)", "        #pragma unroll",
        f"        for (int r = 0; r < 4; ++r) ws_tile[({ks}) * {per} + {slot}] = acc[i][j][r];",
        "go_fence();",
        "__syncthreads();  // every warp is past the mainloop: its shared memory is free",
        "int& go_ticket = *reinterpret_cast<int*>(go_smem);  // no static byte past a 48 KB static pipeline",
        f"if (tid == 0) go_ticket = atomicAdd(&ctr[({zb}) * {tiles} + ({tile_id})], 1);",
        "__syncthreads();",
        f"if (go_ticket != {split - 1}) return;  // not the last split of this tile",
        "go_fence();",
        f"float tot[{MI}][{NI}][4];",
        "#pragma unroll 1  // one split at a time: unrolled, every split's loads would be live at once",
        f"for (int q = 0; q < {split}; ++q) {{",
        "    #pragma unroll",
        f"    for (int i = 0; i < {MI}; ++i)", "        #pragma unroll",
        f"        for (int j = 0; j < {NI}; ++j)", "            #pragma unroll",
        "            for (int r = 0; r < 4; ++r) {",
        f"                const float p = q == ({ks}) ? acc[i][j][r] : go_ldcg(&ws_tile[q * {per} + {slot}]);",
        "                tot[i][j][r] = q == 0 ? p : tot[i][j][r] + p;",
        "            }",
        "}",
        "#pragma unroll",
        f"for (int i = 0; i < {MI}; ++i)", "    #pragma unroll",
        f"    for (int j = 0; j < {NI}; ++j)", "        #pragma unroll",
        "        for (int r = 0; r < 4; ++r) acc[i][j][r] = tot[i][j][r];",
        f"if (tid == 0) ctr[({zb}) * {tiles} + ({tile_id})] = 0;  // ready for the next launch",
    ]


def splitk_range(K: int, bk: int, split: int, ks: str) -> tuple[str, str]:
    """The k-tiles of split ``ks`` (an expression): ``ceil(KT / split)`` each, the last shorter."""
    kt = ceil_div(K, bk)
    per = ceil_div(kt, split)
    return f"({ks}) * {per}", f"min(({ks}) * {per} + {per}, {kt})"
