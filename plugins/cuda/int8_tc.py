"""int8 tensor-core GEMM: ``mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32`` for the int8
QGemm / QMatMul / QConv GEMMs where it pays, the ``__dp4a`` kernel (``int8.py``) for the rest.

The kernel is the dp4a kernel with a different inner product: the same spec fields, the
same staging of A and B as int8-shifted, k-packed 32-bit words in shared memory
(``As[k/4][m]``, ``Bs[k/4][n]``; im2col gather, packed constant weights, runtime B), the
same folded per-channel constant and the same requantization epilogue (``int8.stage_lines``
and ``int8.store_lines``). Only the work between the two barriers differs: each warp owns a
``WM x WN`` piece of the block tile as ``WM/16 x WN/8`` int32 accumulator fragments, and per
32 bytes of K loads its fragments straight from the staged words — the m16n8k32 s8 layout is
4 consecutive bytes of K per register, which is exactly one staged word:

    lane = 4 g + t:  a0 = A[g][4t..4t+3]    a1 = A[g+8][4t..]    a2 = A[g][16+4t..]   a3 = A[g+8][16+4t..]
                     b0 = B[4t..4t+3][g]    b1 = B[16+4t..][g]
                     c0 = C[g][2t]  c1 = C[g][2t+1]  c2 = C[g+8][2t]  c3 = C[g+8][2t+1]

The row sums of A (needed when a weight zero point is not 0) and the column sums of a
runtime B (when A's zero point is not 0) are mma's too, against a fragment of ones.

The MMA is a helper with two bodies, like ``tc_gemm.go_mma_16816``: inline PTX on sm_80+,
and a portable twin elsewhere (host emulation, pre-Ampere devices) that gathers the warp's A
rows and B columns from the other lanes' registers following that layout (through a per-warp
scratch in shared memory: two ``__syncwarp`` instead of sixteen shuffles, each of which is a
block-wide barrier under emulation) and sums them with ``__dp4a``, so emulation checks the
fragment indexing bit for bit.

>>> spec = pick_int8_gemm(256, 256, 512, out=QuantOut("int8"))   # doctest: +SKIP
>>> type(spec).__name__, spec.tile                                   # doctest: +SKIP
('Int8MmaGemmSpec', TcTile(bm=32, bn=32, bk=32, warps_m=2, warps_n=2))
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

from .gemm import SM_COUNT, pick_tile
from .int8 import (Int8GemmSpec, Int8Tile, describe, gemm_params, gemm_prologue, make_int8_gemm, render_int8_gemm,
                   stage_lines, store_lines)
from .kernel import Helper, Kernel, kernel_source
from .requant import RSHIFT_HELPER
from .specs import kernel_name
from .tc_gemm import TcTile


# The float16 path's tile type (``bk``: bytes of K per shared-memory slice, a multiple of 32, one
# mma k-step each), keyed like the dp4a tiles so that ``pick_tile`` chooses among them the same way.
INT8_MMA_TILES = {
    "128x128": TcTile(128, 128, 64, 2, 4),  # warp tile 64x32: 16 mma per k-step
    "64x64": TcTile(64, 64, 64, 2, 2),      # warp tile 32x32
    "32x32": TcTile(32, 32, 32, 2, 2),      # warp tile 16x16
    "16x64": TcTile(16, 64, 32, 1, 4),      # few rows: warp tile 16x16
}

# Where tensor cores pay: both output extents fill at least one fragment, K at least two
# k-steps, and enough work that the launch is not all fixed cost. Smaller GEMMs (batch-1
# classifiers, the first convolution of an image, K of a few channels) stay on dp4a.
MMA_MIN_MN = 16
MMA_MIN_K = 64
MMA_MIN_MACS = 1 << 18


@dataclass(frozen=True)
class Int8MmaGemmSpec(Int8GemmSpec):
    """An ``Int8GemmSpec`` run on tensor cores; ``tile`` is a ``TcTile``."""


def mma_pays(spec: Int8GemmSpec) -> bool:
    return (min(spec.M, spec.N) >= MMA_MIN_MN and spec.K >= MMA_MIN_K
            and spec.M * spec.N * spec.K * spec.nz >= MMA_MIN_MACS)


def pick_int8_gemm(M: int, N: int, K: int, batch: Sequence[int] = (), *,
                   tile: Int8Tile | TcTile | None = None, **kw) -> Int8GemmSpec:
    """``make_int8_gemm`` (same arguments), on tensor cores where ``mma_pays`` or where ``tile``
    is a ``TcTile``; a dp4a ``tile`` forces dp4a."""
    spec = make_int8_gemm(M, N, K, batch, tile=tile if isinstance(tile, Int8Tile) else None, **kw)
    if tile is None and mma_pays(spec):
        tile = pick_tile(INT8_MMA_TILES, spec.M, spec.N, spec.nz, SM_COUNT)
    if not isinstance(tile, TcTile):
        return spec
    return Int8MmaGemmSpec(**{**{f.name: getattr(spec, f.name) for f in fields(spec)}, "tile": tile})


def render_int8(spec: Int8GemmSpec) -> Kernel:
    """The kernel of a spec from ``pick_int8_gemm``."""
    return render_int8_mma(spec) if isinstance(spec, Int8MmaGemmSpec) else render_int8_gemm(spec)


MMA_S8_HELPER = Helper("go_mma_16832_s8", """\
// D = A(16x32, row) * B(32x8, col) + C: signed 8-bit inputs, int32 accumulators; one warp, every lane calls it.
__device__ __forceinline__ void go_mma_16832_s8(int* c, const unsigned* a, const unsigned* b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\\n"
                 : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    // portable twin: each lane publishes its six fragment registers to a per-warp scratch in shared memory,
    // then gathers what its accumulators need following the layout above: lane (g, t) holds word t (bytes
    // 4t..4t+3) of A rows g (a0) and g+8 (a1), word 4+t of the same rows (a2, a3), words t and 4+t of B
    // column g (b0, b1); its C elements are rows g, g+8 at columns 2t, 2t+1. Two __syncwarp, where shuffles
    // would take sixteen: under emulation every one of them is a barrier of the whole block.
    __shared__ unsigned go_mma_s8_regs[1024][6];
    const int tid = threadIdx.x, lane = tid & 31, base = tid - lane, g = lane >> 2, t = lane & 3;
    for (int r = 0; r < 4; ++r) go_mma_s8_regs[tid][r] = a[r];
    go_mma_s8_regs[tid][4] = b[0];
    go_mma_s8_regs[tid][5] = b[1];
    __syncwarp();
    for (int h = 0; h < 2; ++h)
        for (int e = 0; e < 2; ++e) {
            int sum = c[h * 2 + e];
            for (int s = 0; s < 4; ++s) {
                const unsigned* ra = go_mma_s8_regs[base + g * 4 + s];            // A row g + 8h, words s, 4+s
                const unsigned* rb = go_mma_s8_regs[base + (2 * t + e) * 4 + s];  // B column 2t+e, words s, 4+s
                sum = __dp4a((int)ra[h], (int)rb[4], sum);
                sum = __dp4a((int)ra[h + 2], (int)rb[5], sum);
            }
            c[h * 2 + e] = sum;
        }
    __syncwarp();  // the scratch is rewritten by the next call
#endif
}
""")


def render_int8_mma(spec: Int8MmaGemmSpec) -> Kernel:
    name = kernel_name("i8mma", spec)
    t = spec.tile
    BM, BN, BK4, NT = t.bm, t.bn, t.bk // 4, t.threads
    MI, NI = t.wm // 16, t.wn // 8
    I = spec.index_t
    params = gemm_params(spec)
    # 8 words of padding make the row stride 8 or 24 (mod 32): one fragment load's 32 words hit 32 banks
    L = [f"__shared__ __align__(16) int As[{BK4}][{BM + 8}];", f"__shared__ __align__(16) int Bs[{BK4}][{BN + 8}];",
         "const int tid = threadIdx.x, warp = tid >> 5, grp = (tid & 31) >> 2, tig = tid & 3;",
         f"const int wm = (warp / {t.warps_n}) * {t.wm}, wn = (warp % {t.warps_n}) * {t.wn};",
         *gemm_prologue(spec),
         f"int acc[{MI}][{NI}][4], rs[{MI}][4], cs[{NI}][4];",
         *(["const unsigned ones[4] = {0x01010101u, 0x01010101u, 0x01010101u, 0x01010101u};"]
           if spec.row_sums or spec.col_sums else []),
         "#pragma unroll", f"for (int r = 0; r < 4; ++r) {{",
         f"    for (int i = 0; i < {MI}; ++i) {{ rs[i][r] = 0; for (int j = 0; j < {NI}; ++j) acc[i][j][r] = 0; }}",
         f"    for (int j = 0; j < {NI}; ++j) cs[j][r] = 0;", "}",
         f"for ({I} kw0 = 0; kw0 < {spec.K4}; kw0 += {BK4}) {{", *("    " + s for s in stage_lines(spec, BK4)),
         "    __syncthreads();",
         "    #pragma unroll",
         f"    for (int ks = 0; ks < {BK4}; ks += 8) {{",
         f"        unsigned af[{MI}][4], bf[{NI}][2];",
         "        #pragma unroll",
         f"        for (int i = 0; i < {MI}; ++i) {{",
         "            const int r = wm + i * 16 + grp;",
         "            af[i][0] = (unsigned)As[ks + tig][r]; af[i][1] = (unsigned)As[ks + tig][r + 8];",
         "            af[i][2] = (unsigned)As[ks + 4 + tig][r]; af[i][3] = (unsigned)As[ks + 4 + tig][r + 8];",
         "        }",
         "        #pragma unroll",
         f"        for (int j = 0; j < {NI}; ++j) {{",
         "            const int cn = wn + j * 8 + grp;",
         "            bf[j][0] = (unsigned)Bs[ks + tig][cn]; bf[j][1] = (unsigned)Bs[ks + 4 + tig][cn];",
         "        }",
         "        #pragma unroll",
         f"        for (int i = 0; i < {MI}; ++i)",
         "            #pragma unroll",
         f"            for (int j = 0; j < {NI}; ++j) go_mma_16832_s8(acc[i][j], af[i], bf[j]);"]
    if spec.row_sums:  # A x ones: every column of the fragment holds its row's sum
        L += ["        #pragma unroll", f"        for (int i = 0; i < {MI}; ++i) go_mma_16832_s8(rs[i], af[i], ones);"]
    if spec.col_sums:  # ones x B: every row holds its column's sum
        L += ["        #pragma unroll", f"        for (int j = 0; j < {NI}; ++j) go_mma_16832_s8(cs[j], ones, bf[j]);"]
    L += ["    }", "    __syncthreads();", "}"]
    st = store_lines(spec, "m0 + wm + i * 16 + grp + h * 8", "n0 + wn + j * 8 + tig * 2 + e",
                     "acc[i][j][h * 2 + e]", "rs[i][h * 2]", "cs[j][e]")
    L += ["#pragma unroll", f"for (int i = 0; i < {MI}; ++i)", "    #pragma unroll",
          f"    for (int j = 0; j < {NI}; ++j)", "        #pragma unroll",
          "        for (int h = 0; h < 2; ++h)", "            #pragma unroll",
          "            for (int e = 0; e < 2; ++e) {", *("                " + s for s in st), "            }"]
    src = kernel_source(name, NT, params, L,
                        f"int8 tensor-core gemm (mma m16n8k32 s8) {describe(spec)}; tile {BM}x{BN}x{t.bk}, "
                        f"warp tile {t.wm}x{t.wn}, {NT} threads, {I} indices")
    return Kernel(name, src, tuple(params), (RSHIFT_HELPER, MMA_S8_HELPER), True, spec)
