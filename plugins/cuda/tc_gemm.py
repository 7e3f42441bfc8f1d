"""Tensor-core GEMM: float16 or bfloat16 inputs, float32 accumulation, ``mma.sync.m16n8k16``
(``.f32.f16.f16.f32`` or ``.f32.bf16.bf16.f32``: the same fragment layout, so one kernel).

The mainloop is ``mainloop.py``'s: a multistage ``cp.async`` pipeline of 16-byte copies into
padded shared memory, ``ldmatrix`` fragment loads, and split-K with an in-kernel fixup when the
output tiles cannot fill the GPU. Each warp owns a ``WM x WN`` piece of the block tile and
keeps ``WM/16 x WN/8`` accumulator fragments in registers. Operands are strided views: an
operand whose k is contiguous is staged ``[rows][k]``, one whose m/n is contiguous (row-major
``[K, N]`` weights, ``transA``) ``[k][rows]`` and read with ``ldmatrix.trans``, so no operand
is copied. The epilogue runs in float32 on the accumulators and stores float16/bfloat16 (two
neighbouring columns as one 32-bit store where the output allows) or float32.

The MMA itself is a helper with two bodies: inline PTX on sm_80+ devices, and a *portable
twin* everywhere else (host emulation). The twin publishes the warp's fragments to a per-warp
scratch in shared memory (two ``__syncwarp``) and rebuilds the A rows and B columns each lane's
accumulators need, following the PTX fragment layout, so emulation checks the
tile/warp/fragment index logic around the instruction; only real hardware checks the
instruction. Either input type is exact in float32, so the twin multiplies and accumulates in
float32 (``fmaf``, k in order), as the tensor core does with its float32 accumulators.

>>> spec = make_tc_matmul(M=64, N=64, K=32)
>>> spec.tile.bm, spec.split
(64, 1)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from .gemm import _epilogue_helpers, _epilogue_lines, _epilogue_params, _scaled
from .half import CONVERSIONS
from .kernel import Helper, Kernel, Param, ctype_of, kernel_source
from .mainloop import (FENCE_HELPER, MAINLOOP_HELPERS, TILES, Mainloop, Operand, TcTile, normal_split, render_mainloop,
                       splitk_lines, splitk_range, view_operand)
from .scalar import decompose, half_helpers, index_type, max_extent, offset_expr
from .scalar import store as store_elem
from .specs import Epilogue, TiledLaunch, View, ceil_div, kernel_name, prod
from .wgmma import WG_HELPER, choose_engine, choose_engine_schedule, render_wgmma_mainloop, wgmma_suits
from .wgmma_tma import TMA_HELPER, tensor_map_args

TC_TILES = TILES  # the mainloop's table: "128x128", "128x64", "64x128", "64x64", "64x32", "16x64"


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
    split: int = 1  # blocks per output tile along K (split-K); their partials meet in a workspace
    engine: str = "mma"  # "mma": mma.sync on warps (mainloop.py); "wgmma": warpgroups on sm_90a (wgmma.py)
    tma: bool = False  # wgmma only: stages loaded by TMA (wgmma_tma.py; tensor maps made at launch)

    @property
    def nz(self) -> int:
        return prod(self.batch)

    @property
    def tiles(self) -> int:
        return ceil_div(self.M, self.tile.bm) * ceil_div(self.N, self.tile.bn)

    def grid(self) -> tuple[int, int, int]:
        return (ceil_div(self.N, self.tile.bn), ceil_div(self.M, self.tile.bm), self.nz * self.split)

    @property
    def workspace(self) -> tuple[int, int]:
        """(float32 elements, int32 counters) the split-K fixup needs; (0, 0) without a split."""
        if self.split == 1:
            return 0, 0
        return self.nz * self.tiles * self.split * self.tile.bm * self.tile.bn, self.nz * self.tiles


def make_tc_matmul(M: int, N: int, K: int, batch: Sequence[int] = (), *, a: View | None = None,
                   b: View | None = None, c: View | None = None, alpha: float = 1.0,
                   epilogue: Epilogue | None = None, tile: TcTile | None = None, split: int | None = None,
                   dtype: str = "float16", engine: str | None = None, tma: bool = False) -> TcMatmulSpec:
    """``dtype`` (float16 or bfloat16) is the inputs' when views are not given; ``tile`` and
    ``split`` come from the schedule table (``mainloop.choose_schedule``, or
    ``wgmma.choose_wgmma_schedule``) unless given; ``engine`` ("mma" or "wgmma") from
    ``wgmma.engine()`` unless given; ``tma`` loads a wgmma GEMM's stages by TMA (``wgmma_tma.py``)."""
    batch = tuple(int(d) for d in batch)
    a = a or View.contiguous(dtype, (*batch, M, K))
    b = b or View.contiguous(a.dtype, (*batch, K, N))
    c = c or View.contiguous(a.dtype, (*batch, M, N))
    if a.dtype not in MMA_HELPERS or b.dtype != a.dtype:
        raise ValueError(f"tensor-core GEMM of {a.dtype} x {b.dtype} (float16 or bfloat16, both alike)")
    epilogue = epilogue or Epilogue()
    # the process's choice, where both operands are copied 16 bytes at a time
    engine = choose_engine(engine, lambda: None if wgmma_suits(M, N, K, a, b, len(batch)) else "narrow copies", tile)
    if tile is None:
        tile, auto_split = choose_engine_schedule(engine, M, N, K, prod(batch))
        split = auto_split if split is None else split
    split = normal_split(ceil_div(K, tile.bk), split or 1)
    out = (*batch, M, N)
    idx = index_type(max_extent((*batch, M, K), a.strides, a.offset), max_extent((*batch, K, N), b.strides, b.offset),
                     max_extent(out, c.strides, c.offset), *(max_extent(out, v.strides, v.offset)
                                                             for v in epilogue.operands))
    spec = TcMatmulSpec(M, N, K, batch, a, b, c, float(alpha), epilogue, tile, idx, split, engine, tma)
    if tma:
        from .wgmma_tma import tma_suits

        why = "a mma.sync GEMM" if engine != "wgmma" else tma_suits(spec)
        if why:
            raise ValueError(f"TMA loads for {why}")
    return spec


ST_H2_HELPER = Helper("go_st_h2", """\
__device__ __forceinline__ void go_st_h2(unsigned short* p, unsigned short lo, unsigned short hi) {  // p 4-byte aligned
#if defined(__CUDA_ARCH__)
    *reinterpret_cast<unsigned*>(p) = (unsigned)lo | ((unsigned)hi << 16);
#else
    p[0] = lo;
    p[1] = hi;
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
    // Every lane publishes its six registers to a per-warp scratch (two __syncwarp, where shuffles
    // would take 24: under emulation each is a barrier of the warp) and sums what its C needs.
    __shared__ unsigned @NAME@_regs[1024][6];
    const int tid = (int)(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
    const int lane = tid & 31, base = tid - lane, g = lane >> 2, t = lane & 3;
    for (int r = 0; r < 4; ++r) @NAME@_regs[tid][r] = a[r];
    @NAME@_regs[tid][4] = b[0];
    @NAME@_regs[tid][5] = b[1];
    __syncwarp();
    for (int h = 0; h < 2; ++h)
        for (int e = 0; e < 2; ++e) {
            float s = c[h * 2 + e];
            for (int k = 0; k < 16; ++k) {  // k = 2 * lane%4 (+1) (+8)
                const int src = (k & 7) >> 1, up = k >> 3, hi = (k & 1) * 16;
                const unsigned av = @NAME@_regs[base + g * 4 + src][h + 2 * up];
                const unsigned bv = @NAME@_regs[base + (2 * t + e) * 4 + src][4 + up];
                s = fmaf(@CVT@((unsigned short)((av >> hi) & 0xffffu)), @CVT@((unsigned short)((bv >> hi) & 0xffffu)), s);
            }
            c[h * 2 + e] = s;
        }
    __syncwarp();  // the scratch is rewritten by the next call
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


def tc_prologue(t: TcTile, I: str) -> list[str]:
    """The thread's place in the block: ``tid``, ``warp``, ``lane``, ``grp``, ``tig`` and its
    warp's origin ``wm``, ``wn`` in the block tile."""
    return ["const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, grp = lane >> 2, tig = lane & 3;",
            f"const int wm = (warp / {t.warps_n}) * {t.wm}, wn = (warp % {t.warps_n}) * {t.wn};",
            f"const {I} m0 = ({I})blockIdx.y * {t.bm}, n0 = ({I})blockIdx.x * {t.bn};"]


def fragment_store(t: TcTile, body: list[str]) -> list[str]:
    """``body`` once per pair of accumulators (``acc[i][j][2h]``, ``acc[i][j][2h+1]``: row ``m``,
    columns ``n`` and ``n + 1``), ``m`` and ``n`` (ints relative to ``m0``/``n0``) defined."""
    MI, NI = t.wm // 16, t.wn // 8
    return ["#pragma unroll", f"for (int i = 0; i < {MI}; ++i)", "    #pragma unroll",
            f"    for (int j = 0; j < {NI}; ++j)", "        #pragma unroll",
            "        for (int h = 0; h < 2; ++h) {",
            "            const int mt = wm + i * 16 + grp + h * 8, nt = wn + j * 8 + tig * 2;",
            *("            " + s for s in body), "        }"]


def pair_store(c: View, N: int) -> bool:
    """Whether the two columns a lane stores can be one 32-bit store: a 16-bit output, unit
    stride along n, every other stride, the offset and N even."""
    return (c.dtype in CONVERSIONS and c.strides[-1] == 1 and N % 2 == 0 and c.offset % 2 == 0
            and all(s % 2 == 0 for s in c.strides[:-1]))


def tc_store(I: str, M: int, N: int, ep: Epilogue, alpha: float, out_dtype: str, paired: bool,
             coords: Callable[[str, str], tuple[list[str], list[str]]], offset: Callable[[str, str], str]) -> list[str]:
    """The body of ``fragment_store``: the epilogue of the pair of accumulators at GEMM row
    ``m0 + mt``, columns ``n0 + nt`` (+1) and their store into ``y``. ``coords(m, n)`` gives the
    lines and the output coordinates the epilogue operands are read at; ``offset(m, n)`` the
    output element; ``paired``: both columns as one 32-bit store (``pair_store``)."""
    def element(e_lines: list[str]) -> list[str]:
        lines, cs = coords("m", "n")
        return lines + _epilogue_lines(ep, cs, _scaled("acc[i][j][h * 2 + e]", alpha)) + e_lines

    head = [f"const {I} m = m0 + mt, nn = n0 + nt;"]
    if paired:
        return head + [f"if (m < {M} && nn < {N}) {{", "    float vv[2];", "    #pragma unroll",
                       "    for (int e = 0; e < 2; ++e) {", f"        const {I} n = nn + e;",
                       *("        " + s for s in element(["vv[e] = v;"])), "    }",
                       f"    go_st_h2(&y[{offset('m', 'nn')}], {store_elem(out_dtype, 'vv[0]')}, "
                       f"{store_elem(out_dtype, 'vv[1]')});", "}"]
    return head + [f"if (m < {M}) {{", "    #pragma unroll", "    for (int e = 0; e < 2; ++e) {",
                   f"        const {I} n = nn + e;", f"        if (n < {N}) {{",
                   *("            " + s for s in element([f"y[{offset('m', 'n')}] = {store_elem(out_dtype, 'v')};"])),
                   "        }", "    }", "}"]


def tc_kernel_helpers(dtype: str, out_dtype: str, ep: Epilogue, split: int,
                      mma: Helper | None = None) -> tuple[Helper, ...]:
    """Conversions first (the MMA twin uses them), the mainloop's instructions, the MMA (``mma``:
    a wgmma helper, with its warpgroup instructions), the epilogue's."""
    mmas = (WG_HELPER, TMA_HELPER, mma) if mma is not None else (MMA_HELPERS[dtype],)
    return tuple(dict.fromkeys((*half_helpers(dtype), *MAINLOOP_HELPERS, *mmas,
                                *((FENCE_HELPER,) if split > 1 else ()), ST_H2_HELPER,
                                *_epilogue_helpers(ep, out_dtype))))


ENGINE_NOTES = {"mma": "mma.sync", "wgmma": "wgmma (sm_90a)"}  # how a kernel's comment line names its engine


def tc_mainloop(engine: str, t: TcTile, K: int, A: Operand, B: Operand, dtype: str, I: str,
                k_range: tuple[str, str] | None, tma=None) -> tuple[Mainloop, Helper | None]:
    """The mainloop of ``engine`` over operands ``A`` and ``B`` (``mainloop.render_mainloop`` or
    ``wgmma.render_wgmma_mainloop``; ``tma``: a wgmma GEMM's spec when TMA loads its stages) and
    the wgmma helper it calls (None for mma.sync), for ``tc_kernel_helpers``."""
    if engine == "wgmma":
        return render_wgmma_mainloop(t, K, A, B, dtype, I, k_range, tma)
    return render_mainloop(t, K, A, B, MMA_HELPERS[dtype].name, I, k_range), None


def render_tc_matmul(spec: TcMatmulSpec) -> Kernel:
    name = kernel_name("tcgemm", spec)
    t, I, nb = spec.tile, spec.index_t, len(spec.batch)
    params = [Param("y", f"{ctype_of(spec.c.dtype)}*"), Param("a", "const unsigned short*"),
              Param("b", "const unsigned short*"), *_epilogue_params(spec.epilogue)]
    if spec.split > 1:
        params += [Param("ws", "float*"), Param("ctr", "int*")]
    if spec.tma:  # 128-byte tensor maps in global memory (wgmma_tma.py)
        params += [Param("tma_a", "const unsigned char*"), Param("tma_b", "const unsigned char*")]
    sam, sak = spec.a.strides[nb:]
    sbk, sbn = spec.b.strides[nb:]
    bco = [f"z{d}" for d in range(nb)]
    L = tc_prologue(t, I)
    zb = f"({I})blockIdx.z" if spec.split == 1 else f"(({I})blockIdx.z / {spec.split})"
    if spec.split > 1:
        L.append(f"const int ks = blockIdx.z % {spec.split};")
    L.append(f"const {I} zb = {zb};")
    L += decompose("zb", spec.batch, "z", I)
    L.append(f"const {I} ab = {offset_expr(bco, spec.a.strides[:nb], spec.a.offset)};")
    L.append(f"const {I} bb = {offset_expr(bco, spec.b.strides[:nb], spec.b.offset)};")
    A = view_operand("a", "ab", sam, sak, spec.M, spec.K, "m0", I, spec.a.strides[:nb], spec.a.offset, "a")
    B = view_operand("b", "bb", sbn, sbk, spec.N, spec.K, "n0", I, spec.b.strides[:nb], spec.b.offset, "b")
    k_range = splitk_range(spec.K, t.bk, spec.split, "ks") if spec.split > 1 else None
    ml, wg_mma = tc_mainloop(spec.engine, t, spec.K, A, B, spec.a.dtype, I, k_range, spec if spec.tma else None)
    L += ml.lines
    if spec.split > 1:
        L += splitk_lines(t, spec.split, "blockIdx.y * gridDim.x + blockIdx.x", "zb", "ks", spec.tiles)
    ep = spec.epilogue
    L += fragment_store(t, tc_store(I, spec.M, spec.N, ep, spec.alpha, spec.c.dtype, pair_store(spec.c, spec.N),
                                    lambda m, n: ([], [*bco, m, n]),
                                    lambda m, n: offset_expr([*bco, m, n], spec.c.strides, spec.c.offset)))
    fn_key = ep.fn.key if ep.fn else "store"
    src = kernel_source(name, t.threads, params, L,
                        f"tensor-core gemm {spec.M}x{spec.N}x{spec.K} batch {list(spec.batch)}, {spec.a.dtype} in, "
                        f"f32 acc, {spec.c.dtype} out; tile {t.bm}x{t.bn}x{t.bk}, warp tile {t.wm}x{t.wn}, "
                        f"{t.stages} stages, copies of {A.vec}/{B.vec} elements, split-K {spec.split}; "
                        f"{ENGINE_NOTES[spec.engine]}; epilogue {fn_key}", min_blocks=1)
    return Kernel(name, src, tuple(params), tc_kernel_helpers(spec.a.dtype, spec.c.dtype, ep, spec.split, wg_mma),
                  True, spec, dyn_smem=ml.smem if ml.dynamic else 0, derived=tensor_map_args(spec) if spec.tma else ())
