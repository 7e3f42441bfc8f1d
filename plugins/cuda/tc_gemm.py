"""Tensor-core GEMM: float16 or bfloat16 inputs, float32 accumulation, ``mma.sync.m16n8k16``
(``.f32.f16.f16.f32`` or ``.f32.bf16.bf16.f32``: the same fragment layout, so one kernel).

Each warp owns a ``WM x WN`` piece of the block tile and keeps ``WM/16 x WN/8``
accumulator fragments in registers. Per ``BK`` slice the block stages A as
``As[m][k]`` and B as ``Bs[n][k]`` (k contiguous, the layouts the ``row.col``
fragments want) with guarded loads, then every warp loads its A/B fragments
from shared memory and issues the MMAs. The epilogue runs in float32 on the
accumulators and stores float16 (or float32).

The MMA itself is a helper with two bodies: inline PTX on sm_80+ devices, and
a *portable twin* everywhere else (host emulation). The twin rebuilds the
warp's A rows and B columns from the other lanes' fragments with
``__shfl_sync``, following the PTX fragment layout, so emulation checks the
tile/warp/fragment index logic around the instruction; only real hardware
checks the instruction. Half<->float conversions are bit-exact software
routines (round to nearest even), shared by both paths. Either input type
is exact in float32, so the twin multiplies and accumulates in float32
(``fmaf``), as the tensor core does with its float32 accumulators.

>>> spec = make_tc_matmul(M=64, N=64, K=32)         # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .gemm import _epilogue_helpers, _epilogue_lines, _epilogue_params, _scaled
from .half import CONVERSIONS
from .kernel import Helper, Kernel, Param, ctype_of, kernel_source
from .scalar import decompose, half_helpers, index_type, max_extent, offset_expr
from .scalar import store as store_elem
from .specs import Epilogue, TiledLaunch, View, ceil_div, kernel_name, prod


@dataclass(frozen=True)
class TcTile:
    bm: int
    bn: int
    bk: int
    warps_m: int
    warps_n: int

    @property
    def threads(self) -> int:
        return 32 * self.warps_m * self.warps_n

    @property
    def wm(self) -> int:
        return self.bm // self.warps_m

    @property
    def wn(self) -> int:
        return self.bn // self.warps_n


TC_TILES = {"64x64": TcTile(64, 64, 32, 2, 2), "128x128": TcTile(128, 128, 32, 2, 4)}


@dataclass(frozen=True)
class TcMatmulSpec(TiledLaunch):
    M: int
    N: int
    K: int
    batch: tuple[int, ...]
    a: View  # float16 or bfloat16, strides over batch + (m, k)
    b: View  # the same dtype as a, strides over batch + (k, n)
    c: View  # a's dtype or float32 output, strides over batch + (m, n)
    alpha: float
    epilogue: Epilogue  # operands 16-bit floats or float32, strides over batch + (m, n)
    tile: TcTile
    index_t: str

    @property
    def nz(self) -> int:
        return prod(self.batch)


def make_tc_matmul(M: int, N: int, K: int, batch: Sequence[int] = (), *, a: View | None = None,
                   b: View | None = None, c: View | None = None, alpha: float = 1.0,
                   epilogue: Epilogue | None = None, tile: TcTile | None = None,
                   dtype: str = "float16") -> TcMatmulSpec:
    """``dtype`` (float16 or bfloat16) is the inputs' when views are not given."""
    batch = tuple(int(d) for d in batch)
    a = a or View.contiguous(dtype, (*batch, M, K))
    b = b or View.contiguous(a.dtype, (*batch, K, N))
    c = c or View.contiguous(a.dtype, (*batch, M, N))
    if a.dtype not in MMA_HELPERS or b.dtype != a.dtype:
        raise ValueError(f"tensor-core GEMM of {a.dtype} x {b.dtype} (float16 or bfloat16, both alike)")
    epilogue = epilogue or Epilogue()
    if tile is None:
        big = TC_TILES["128x128"]
        tile = big if ceil_div(M, 128) * ceil_div(N, 128) * prod(batch) >= 132 else TC_TILES["64x64"]
    out = (*batch, M, N)
    idx = index_type(max_extent((*batch, M, K), a.strides, a.offset), max_extent((*batch, K, N), b.strides, b.offset),
                     max_extent(out, c.strides, c.offset), *(max_extent(out, v.strides, v.offset)
                                                             for v in epilogue.operands))
    return TcMatmulSpec(M, N, K, batch, a, b, c, float(alpha), epilogue, tile, idx)


LD_H2_HELPER = Helper("go_ld_h2", """\
__device__ __forceinline__ unsigned go_ld_h2(const unsigned short* p) {  // two 16-bit values, p 4-byte aligned
#if defined(__CUDA_ARCH__)
    return *reinterpret_cast<const unsigned*>(p);
#else
    return (unsigned)p[0] | ((unsigned)p[1] << 16);
#endif
}
""")

_MMA_TEMPLATE = """\
// D = A(16x16, row) * B(16x8, col) + C, @T@ inputs, f32 accumulators: one warp, every lane calls it.
__device__ __forceinline__ void @NAME@(float* c, const unsigned* a, const unsigned* b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.@T@.@T@.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    // portable twin: lane (g = lane/4, t = lane%4) holds A rows g, g+8 at k = 2t, 2t+1 (a0, a1) and
    // 2t+8, 2t+9 (a2, a3); B column g at the same k (b0, b1); C rows g, g+8 at columns 2t, 2t+1.
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    float ar[2][16], bc[2][16];
    for (int s = 0; s < 4; ++s) {
        const int src = g * 4 + s;
        for (int r = 0; r < 4; ++r) {
            const unsigned v = __shfl_sync(0xffffffffu, a[r], src);
            const int row = r & 1, k = 2 * s + (r >> 1) * 8;
            ar[row][k] = @CVT@((unsigned short)(v & 0xffffu));
            ar[row][k + 1] = @CVT@((unsigned short)(v >> 16));
        }
    }
    for (int e = 0; e < 2; ++e)
        for (int s = 0; s < 4; ++s) {
            const int src = (2 * t + e) * 4 + s;
            for (int r = 0; r < 2; ++r) {
                const unsigned v = __shfl_sync(0xffffffffu, b[r], src);
                bc[e][2 * s + 8 * r] = @CVT@((unsigned short)(v & 0xffffu));
                bc[e][2 * s + 8 * r + 1] = @CVT@((unsigned short)(v >> 16));
            }
        }
    for (int h = 0; h < 2; ++h)
        for (int e = 0; e < 2; ++e) {
            float s = c[h * 2 + e];
            for (int k = 0; k < 16; ++k) s = fmaf(ar[h][k], bc[e][k], s);
            c[h * 2 + e] = s;
        }
#endif
}
"""


def _mma_helper(name: str, ptx_type: str, dtype: str) -> Helper:
    src = _MMA_TEMPLATE.replace("@NAME@", name).replace("@T@", ptx_type).replace("@CVT@", CONVERSIONS[dtype][0])
    return Helper(name, src)


# input dtype -> the m16n8k16 MMA helper on it
MMA_HELPERS = {"float16": _mma_helper("go_mma_16816", "f16", "float16"),
               "bfloat16": _mma_helper("go_mma_16816_bf16", "bf16", "bfloat16")}
MMA_HELPER = MMA_HELPERS["float16"]


def render_tc_matmul(spec: TcMatmulSpec) -> Kernel:
    name = kernel_name("tcgemm", spec)
    t = spec.tile
    I = spec.index_t
    BM, BN, BK, NT = t.bm, t.bn, t.bk, t.threads
    MI, NI = t.wm // 16, t.wn // 8
    nb = len(spec.batch)
    params = [Param("y", f"{ctype_of(spec.c.dtype)}*"), Param("a", "const unsigned short*"),
              Param("b", "const unsigned short*"), *_epilogue_params(spec.epilogue)]
    sam, sak = spec.a.strides[nb:]
    sbk, sbn = spec.b.strides[nb:]
    bco = [f"z{d}" for d in range(nb)]
    mma = MMA_HELPERS[spec.a.dtype]
    L = [f"__shared__ __align__(16) unsigned short As[{BM}][{BK + 8}];",
         f"__shared__ __align__(16) unsigned short Bs[{BN}][{BK + 8}];",
         "const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, grp = lane >> 2, tig = lane & 3;",
         f"const int wm = (warp / {t.warps_n}) * {t.wm}, wn = (warp % {t.warps_n}) * {t.wn};",
         f"const {I} m0 = ({I})blockIdx.y * {BM}, n0 = ({I})blockIdx.x * {BN};"]
    L += decompose(f"({I})blockIdx.z", spec.batch, "z", I)
    L.append(f"const {I} ab = {offset_expr(bco, spec.a.strides[:nb], spec.a.offset)};")
    L.append(f"const {I} bb = {offset_expr(bco, spec.b.strides[:nb], spec.b.offset)};")
    L.append(f"float acc[{MI}][{NI}][4];")
    L.append("#pragma unroll")
    L.append(f"for (int i = 0; i < {MI}; ++i) for (int j = 0; j < {NI}; ++j) for (int r = 0; r < 4; ++r) "
             "acc[i][j][r] = 0.0f;")
    a_kfast = abs(sak) <= abs(sam)
    b_nfast = abs(sbn) <= abs(sbk)
    L.append(f"for ({I} k0 = 0; k0 < {spec.K}; k0 += {BK}) {{")
    aidx = ["const int mm = l / %d, kk = l %% %d;" % (BK, BK)] if a_kfast else \
        ["const int mm = l %% %d, kk = l / %d;" % (BM, BM)]
    bidx = ["const int nn = l %% %d, kk = l / %d;" % (BN, BN)] if b_nfast else \
        ["const int nn = l / %d, kk = l %% %d;" % (BK, BK)]
    body = [f"for (int l = threadIdx.x; l < {BM * BK}; l += {NT}) {{", *("    " + s for s in aidx),
            f"    const {I} m = m0 + mm, k = k0 + kk;",
            f"    As[mm][kk] = (m < {spec.M} && k < {spec.K}) ? a[ab + {offset_expr(['m', 'k'], (sam, sak))}] "
            ": (unsigned short)0;", "}",
            f"for (int l = threadIdx.x; l < {BN * BK}; l += {NT}) {{", *("    " + s for s in bidx),
            f"    const {I} n = n0 + nn, k = k0 + kk;",
            f"    Bs[nn][kk] = (n < {spec.N} && k < {spec.K}) ? b[bb + {offset_expr(['k', 'n'], (sbk, sbn))}] "
            ": (unsigned short)0;", "}",
            "__syncthreads();",
            "#pragma unroll",
            f"for (int ks = 0; ks < {BK}; ks += 16) {{",
            f"    unsigned af[{MI}][4], bf[{NI}][2];",
            "    #pragma unroll",
            f"    for (int i = 0; i < {MI}; ++i) {{",
            "        const int r = wm + i * 16 + grp, c = ks + tig * 2;",
            "        af[i][0] = go_ld_h2(&As[r][c]); af[i][1] = go_ld_h2(&As[r + 8][c]);",
            "        af[i][2] = go_ld_h2(&As[r][c + 8]); af[i][3] = go_ld_h2(&As[r + 8][c + 8]);",
            "    }",
            "    #pragma unroll",
            f"    for (int j = 0; j < {NI}; ++j) {{",
            "        const int r = wn + j * 8 + grp, c = ks + tig * 2;",
            "        bf[j][0] = go_ld_h2(&Bs[r][c]); bf[j][1] = go_ld_h2(&Bs[r][c + 8]);",
            "    }",
            "    #pragma unroll",
            f"    for (int i = 0; i < {MI}; ++i)",
            "        #pragma unroll",
            f"        for (int j = 0; j < {NI}; ++j) {mma.name}(acc[i][j], af[i], bf[j]);",
            "}",
            "__syncthreads();"]
    L += ["    " + s for s in body]
    L.append("}")
    coords = [*bco, "m", "n"]
    ep = spec.epilogue
    store = [f"const {I} m = m0 + wm + i * 16 + grp + h * 8, n = n0 + wn + j * 8 + tig * 2 + e;",
             f"if (m < {spec.M} && n < {spec.N}) {{"]
    store += ["    " + s for s in _epilogue_lines(ep, coords, _scaled("acc[i][j][h * 2 + e]", spec.alpha))]
    store += [f"    y[{offset_expr(coords, spec.c.strides, spec.c.offset)}] = {store_elem(spec.c.dtype, 'v')};", "}"]
    L += ["#pragma unroll", f"for (int i = 0; i < {MI}; ++i)", "    #pragma unroll",
          f"    for (int j = 0; j < {NI}; ++j)", "        #pragma unroll",
          "        for (int h = 0; h < 2; ++h)", "            #pragma unroll",
          "            for (int e = 0; e < 2; ++e) {"]
    L += ["                " + s for s in store]
    L.append("            }")
    fn_key = ep.fn.key if ep.fn else "store"
    src = kernel_source(name, NT, params, L,
                        f"tensor-core gemm {spec.M}x{spec.N}x{spec.K} batch {list(spec.batch)}, {spec.a.dtype} in, "
                        f"f32 acc, {spec.c.dtype} out; tile {BM}x{BN}x{BK}, warp tile {t.wm}x{t.wn}; epilogue {fn_key}")
    helpers = tuple(dict.fromkeys((*half_helpers(spec.a.dtype), LD_H2_HELPER, mma,
                                   *_epilogue_helpers(ep, spec.c.dtype))))  # conversions before the MMA
    return Kernel(name, src, tuple(params), helpers, True, spec)
