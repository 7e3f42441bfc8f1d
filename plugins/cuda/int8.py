"""int8 kernels for graphopt's fused int8 ops: a tiled ``__dp4a`` GEMM (QGemm,
QMatMul, and QConv as an implicit GEMM) and a direct depthwise QConv, both with
fixed-point requantization and the Relu/Clip epilogue in registers
(``requant.py``), bit-exact with the NumPy reference.

**Arithmetic.** ``__dp4a`` multiplies four signed bytes. A uint8 operand is
shifted to int8 on load (``u ^ 0x80 == u - 128``) and so is its zero point, so
every product is signed x signed. With ``a' = a - za`` unfolded,

    acc = sum_k (a - za)(b - zb) = sum a'b' - zb[n] * sum_k a'[m, k] - za * sum_k b'[k, n] + K za zb[n] + bias[n]

``sum a'b'`` is the dp4a accumulation. For a constant B (weights) everything
but the row sum is folded per output column at compile time into ``qp[n].cc``;
the row sum of A (only when some ``zb`` is not zero) and, for a runtime B, its
column sum (only when ``za`` is not zero) are extra dp4a's against
``0x01010101``. A convolution's padding reads ``za`` (the centered zero), the
K tail beyond the reduction reads zero. Accumulation wraps modulo 2**32, like
the hardware; the lowering proves at compile time that the exact accumulator
fits in int32, so the wrapped result is the exact one.

**Schedule.** A block computes a ``BM x BN`` tile; each thread a ``TM x TN``
micro-tile of int32 accumulators, its rows and columns interleaved across the
threads (thread ``t`` owns rows ``t, t + BM/TM, ...``), so neighbouring threads
store neighbouring outputs: along n for a GEMM, along m (pixels) for a
convolution, whose output is NCHW. Per ``BK4`` words of K the block stages A
as ``As[k4][m]`` and B as ``Bs[k4][n]`` (4 bytes of K per 32-bit word) in shared
memory. Constant weights are packed at compile time as ``(groups*N, K4)``
words, K contiguous, so B is one 32-bit load per word; A is one word load when
its rows are 4-byte aligned with contiguous K, else four guarded byte loads
(the im2col gather of a convolution).

>>> spec = make_int8_gemm(5, 7, 9, out=QuantOut("uint8", 3))   # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .gemm import SM_COUNT, im2col_gather, pick_tile
from .kernel import Kernel, Param, ctype_of, kernel_source
from .requant import RSHIFT_HELPER, QuantOut, finish_lines
from .scalar import contiguous_strides, decompose, index_type, max_extent, offset_expr
from .spatial import THREADS, WindowGeometry, _in_offset, _out_loop, _window_loops, geometry
from .specs import OnePerElement, TiledLaunch, View, ceil_div, kernel_name, prod



@dataclass(frozen=True)
class Int8Tile:
    bm: int
    bn: int
    bk4: int  # 32-bit words of K per slice (4 bytes each)
    tm: int
    tn: int

    @property
    def threads(self) -> int:
        return (self.bm // self.tm) * (self.bn // self.tn)


INT8_TILES = {
    "128x128": Int8Tile(128, 128, 8, 8, 8),
    "64x64": Int8Tile(64, 64, 8, 4, 4),
    "32x32": Int8Tile(32, 32, 8, 4, 4),
    "64x16": Int8Tile(64, 16, 8, 4, 2),  # few output channels, many pixels
    "16x64": Int8Tile(16, 64, 8, 2, 4),  # few rows (batch-1 GEMM)
}


def choose_int8_tile(M: int, N: int, batch: int) -> Int8Tile:
    if N <= 16 and M > 32:
        return INT8_TILES["64x16"]
    return pick_tile(INT8_TILES, M, N, batch, SM_COUNT)


def conv_mnk(geo: WindowGeometry, groups: int) -> tuple[int, int, int]:
    """A convolution as a GEMM per group: m = (image, output pixel), n = output channel of the
    group, k = (input channel of the group, kernel position)."""
    return geo.n * prod(geo.out_spatial), geo.c_out // groups, (geo.c_in // groups) * prod(geo.kernel)


@dataclass(frozen=True)
class Int8GemmSpec(TiledLaunch):
    M: int
    N: int
    K: int
    batch: tuple[int, ...]  # GEMM batch dims (blockIdx.z); a convolution's groups instead
    a: View | None  # int8/uint8 A, strides over batch + (m, k); None for a convolution (im2col of x)
    conv: WindowGeometry | None  # a convolution (its im2col is A), with ``groups``
    a_dtype: str
    a_zp: int  # A's zero point shifted to int8: the value of padding
    b: View | None  # runtime int8/uint8 B, strides over batch + (k, n); None: packed constant words
    c: View | None  # output strides over batch + (m, n); None for a convolution (NCHW)
    out: QuantOut
    row_sums: bool
    col_sums: bool
    a_words: bool
    tile: Int8Tile
    index_t: str
    groups: int = 1

    @property
    def K4(self) -> int:
        return ceil_div(self.K, 4)

    @property
    def nz(self) -> int:
        return self.groups if self.conv else prod(self.batch)


def shifted_zp(zp: int, dtype: str) -> int:
    """A zero point in the int8 domain that dp4a multiplies (uint8 values are shifted by -128)."""
    return int(zp) - 128 if dtype == "uint8" else int(zp)


def make_int8_gemm(M: int, N: int, K: int, batch: Sequence[int] = (), *, out: QuantOut, a: View | None = None,
                   a_zp: int = 0, b: View | None = None, c: View | None = None, conv: WindowGeometry | None = None, groups: int = 1,
                   a_dtype: str | None = None, row_sums: bool = False, col_sums: bool = False,
                   tile: Int8Tile | None = None) -> Int8GemmSpec:
    """``y[batch, m, n] = out(sum_k (a - za)(b - zb) + cc[n])``; ``b=None`` reads packed constant words.
    ``a_zp`` is A's raw zero point (shifted here)."""
    batch = tuple(int(d) for d in batch)
    if conv is not None:
        M, N, K = conv_mnk(conv, groups)
        a_dtype = a_dtype or "uint8"
        extents = [conv.n * conv.c_in * prod(conv.in_spatial), conv.numel_out]
        a_words = False
    else:
        a = a or View.contiguous("uint8", (*batch, M, K))
        a_dtype = a.dtype
        c = c or View.contiguous(out.dtype, (*batch, M, N))
        extents = [max_extent((*batch, M, K), a.strides, a.offset), max_extent((*batch, M, N), c.strides, c.offset)]
        if b is not None:
            extents.append(max_extent((*batch, K, N), b.strides, b.offset))
        sam, sak = a.strides[-2:]
        a_words = (sak == 1 and K % 4 == 0 and a.offset % 4 == 0 and all(s % 4 == 0 for s in a.strides[:-1]))
    tile = tile or choose_int8_tile(M, N, groups if conv else prod(batch))
    extents.append((conv.c_out if conv else N) * ceil_div(K, 4))
    return Int8GemmSpec(M, N, K, batch, a, conv, a_dtype, shifted_zp(a_zp, a_dtype), b, c, out, bool(row_sums),
                        bool(col_sums and b is not None), a_words, tile, index_type(*extents), int(groups))


def _byte(dtype: str, elem: str) -> str:
    """An element of an int8/uint8 tensor as the unsigned bits of its int8-shifted value."""
    return f"((unsigned){elem} ^ 0x80u)" if dtype == "uint8" else f"((unsigned)(unsigned char){elem})"


def _or_byte(dtype: str, elem: str) -> str:
    return f"wd |= ({_byte(dtype, elem)} & 0xffu) << (8 * j);"


def _pack_bytes(elem_at, I: str, K: int) -> list[str]:
    """Lines or-ing four bytes ``elem_at(k)`` (k = 4*kw + j, guarded by k < K) into ``wd``."""
    return ["#pragma unroll", "for (int j = 0; j < 4; ++j) {", f"    const {I} k = 4 * kw + j;",
            f"    if (k < {K}) {{", *("        " + s for s in elem_at("k")), "    }", "}"]


def _params(spec_out: QuantOut, y_t: str, a_t: str, b_t: str) -> list[Param]:
    ps = [Param("y", f"{y_t}*"), Param("a", f"const {a_t}*"), Param("b", f"const {b_t}*"), Param("qp", "const int*")]
    if spec_out.dequantized:
        ps.append(Param("fs", "const double*"))
    return ps


def render_int8_gemm(spec: Int8GemmSpec) -> Kernel:
    name = kernel_name("i8gemm", spec)
    t = spec.tile
    BM, BN, BK4, TM, TN, NT = t.bm, t.bn, t.bk4, t.tm, t.tn, t.threads
    RM, RN = BM // TM, BN // TN
    I = spec.index_t
    M, N, K, K4 = spec.M, spec.N, spec.K, spec.K4
    conv = spec.conv
    m_fast = conv is not None
    b_t = "int" if spec.b is None else ctype_of(spec.b.dtype)
    params = _params(spec.out, ctype_of(spec.out.dtype), ctype_of(spec.a_dtype), b_t)
    L = [f"__shared__ __align__(16) int As[{BK4}][{BM + 4}];", f"__shared__ __align__(16) int Bs[{BK4}][{BN + 4}];",
         "const int tid = threadIdx.x;",
         f"const int ty = tid % {RM}, tx = tid / {RM};" if m_fast else f"const int tx = tid % {RN}, ty = tid / {RN};",
         f"const {I} m0 = ({I})blockIdx.y * {BM}, n0 = ({I})blockIdx.x * {BN};"]
    nb = len(spec.batch)
    bco = [f"z{d}" for d in range(nb)]
    if conv:
        L.append(f"const {I} g = blockIdx.z, cbase = g * {N};")
    else:
        L += decompose(f"({I})blockIdx.z", spec.batch, "z", I)
        L.append(f"const {I} ab = {offset_expr(bco, spec.a.strides[:nb], spec.a.offset)};")
        L.append("const " + I + " cbase = 0;")
        if spec.b is not None:
            L.append(f"const {I} bb = {offset_expr(bco, spec.b.strides[:nb], spec.b.offset)};")

    # -- A: word (m, kw) of the k-packed activation ------------------------------------------
    if conv:
        opix, ksz = prod(conv.out_spatial), prod(conv.kernel)
        xs = contiguous_strides((conv.n, conv.c_in, *conv.in_spatial))
        la = [f"const {I} img = m / {opix};"]

        def a_at(k):
            lines = [f"const {I} ci = {k} / {ksz};", f"{I} kr = {k} % {ksz};", f"{I} pr = m % {opix};"]
            gather, sp = im2col_gather(I, conv.kernel, conv.out_spatial, conv.in_spatial, conv.strides, conv.pads,
                                       conv.dilations, xs[2:])
            lines += gather
            terms = [f"img * {xs[0]}", f"(g * {conv.c_in // spec.groups} + ci) * {xs[1]}", *sp]
            zp_bits = spec.a_zp & 0xFF
            elem = _byte(spec.a_dtype, "a[" + " + ".join(terms) + "]")
            return lines + [f"const unsigned bv = inb ? {elem} : {zp_bits}u;", "wd |= (bv & 0xffu) << (8 * j);"]

        la += _pack_bytes(a_at, I, K)
    else:
        sam, sak = spec.a.strides[nb:]
        if spec.a_words:
            flip = " ^ 0x80808080u" if spec.a_dtype == "uint8" else ""
            la = [f"wd = *reinterpret_cast<const unsigned*>(a + ab + {offset_expr(['m', '4 * kw'], (sam, 1))}){flip};"]
        else:
            la = _pack_bytes(lambda k: [_or_byte(spec.a_dtype, "a[ab + " + offset_expr(["m", k], (sam, sak)) + "]")],
                             I, K)

    # -- B: word (kw, n) ---------------------------------------------------------------------------
    if spec.b is None:
        lb = [f"wd = (unsigned)b[(cbase + n) * {K4} + kw];"]
        b_kfast = True
    else:
        sbk, sbn = spec.b.strides[nb:]
        lb = _pack_bytes(lambda k: [_or_byte(spec.b.dtype, "b[bb + " + offset_expr([k, "n"], (sbk, sbn)) + "]")],
                         I, K)
        b_kfast = False

    b_split = f"kq = l % {BK4}, nn = l / {BK4}" if b_kfast else f"nn = l % {BN}, kq = l / {BN}"
    L += [f"int acc[{TM}][{TN}], rs[{TM}], cs[{TN}];",
          "#pragma unroll", f"for (int i = 0; i < {TM}; ++i) {{ rs[i] = 0; for (int j = 0; j < {TN}; ++j) acc[i][j] = 0; }}",
          "#pragma unroll", f"for (int j = 0; j < {TN}; ++j) cs[j] = 0;",
          f"for ({I} kw0 = 0; kw0 < {K4}; kw0 += {BK4}) {{",
          f"    for (int l = tid; l < {BM * BK4}; l += {NT}) {{",
          f"        const int mm = l % {BM}, kq = l / {BM};",
          f"        const {I} m = m0 + mm, kw = kw0 + kq;",
          "        unsigned wd = 0u;",
          f"        if (m < {M} && kw < {K4}) {{", *("            " + s for s in la), "        }",
          "        As[kq][mm] = (int)wd;", "    }",
          f"    for (int l = tid; l < {BN * BK4}; l += {NT}) {{",
          f"        const int {b_split};",
          f"        const {I} n = n0 + nn, kw = kw0 + kq;",
          "        unsigned wd = 0u;",
          f"        if (n < {N} && kw < {K4}) {{", *("            " + s for s in lb), "        }",
          "        Bs[kq][nn] = (int)wd;", "    }",
          "    __syncthreads();",
          "    #pragma unroll",
          f"    for (int kk = 0; kk < {BK4}; ++kk) {{",
          f"        int ra[{TM}], rb[{TN}];",
          "        #pragma unroll", f"        for (int i = 0; i < {TM}; ++i) ra[i] = As[kk][ty + i * {RM}];",
          "        #pragma unroll", f"        for (int j = 0; j < {TN}; ++j) rb[j] = Bs[kk][tx + j * {RN}];",
          "        #pragma unroll", f"        for (int i = 0; i < {TM}; ++i)",
          "            #pragma unroll", f"            for (int j = 0; j < {TN}; ++j) acc[i][j] = __dp4a(ra[i], rb[j], acc[i][j]);"]
    if spec.row_sums:
        L += ["        #pragma unroll", f"        for (int i = 0; i < {TM}; ++i) rs[i] = __dp4a(ra[i], 0x01010101, rs[i]);"]
    if spec.col_sums:
        L += ["        #pragma unroll", f"        for (int j = 0; j < {TN}; ++j) cs[j] = __dp4a(0x01010101, rb[j], cs[j]);"]
    L += ["    }", "    __syncthreads();", "}"]

    # -- epilogue: corrections, requantization, store ------------------------------------------
    acc = ("(int)((unsigned)acc[i][j] + (unsigned)qp[ch * 4] - (unsigned)qp[ch * 4 + 3] * (unsigned)rs[i]"
           f" - {spec.a_zp & 0xFFFFFFFF}u * (unsigned)cs[j])")
    if conv:
        opix = prod(conv.out_spatial)
        dst = f"y[(m / {opix} * {conv.c_out} + ch) * {opix} + m % {opix}]"
    else:
        dst = f"y[{offset_expr([*bco, 'm', 'n'], spec.c.strides, spec.c.offset)}]"
    st = [f"const {I} m = m0 + ty + i * {RM}, n = n0 + tx + j * {RN};", f"if (m < {M} && n < {N}) {{",
          f"    const {I} ch = cbase + n;", f"    const int a32 = {acc};",
          *("    " + s for s in finish_lines(spec.out, "a32", "ch")), f"    {dst} = v;", "}"]
    L += ["#pragma unroll", f"for (int i = 0; i < {TM}; ++i)", "    #pragma unroll", f"    for (int j = 0; j < {TN}; ++j) {{",
          *("        " + s for s in st), "    }"]
    what = (f"conv {conv.c_in}->{conv.c_out} kernel {list(conv.kernel)} groups {spec.groups}" if conv
            else f"batch {list(spec.batch)}, B {'packed' if spec.b is None else spec.b.dtype}")
    src = kernel_source(name, NT, params, L,
                        f"int8 dp4a gemm {M}x{N}x{K} ({what}) -> {spec.out.dtype}; tile {BM}x{BN}x{4 * BK4}, "
                        f"micro-tile {TM}x{TN}, {NT} threads, {I} indices")
    return Kernel(name, src, tuple(params), (RSHIFT_HELPER,), True, spec)


# -- depthwise ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Int8DepthwiseSpec(OnePerElement):
    """One thread per output: ``sum (x - x_zp) * wc`` over the window, ``wc`` the centered weights
    (int32, ``(c_out, kernel...)``), then ``qp[c].cc`` and the output stage."""

    geo: WindowGeometry
    x_dtype: str
    x_zp: int
    out: QuantOut
    index_t: str

    @property
    def work(self) -> int:
        return self.geo.numel_out


def make_int8_depthwise(x_shape, w_shape, out_spatial, *, x_dtype: str, x_zp: int, out: QuantOut, strides=None,
                        pads=None, dilations=None) -> Int8DepthwiseSpec:
    geo = geometry(x_shape, w_shape[0], w_shape[2:], out_spatial, strides, pads, dilations)
    idx = index_type(geo.numel_out, geo.n * geo.c_in * prod(geo.in_spatial))
    return Int8DepthwiseSpec(geo, x_dtype, int(x_zp), out, idx)


def render_int8_depthwise(spec: Int8DepthwiseSpec) -> Kernel:
    geo = spec.geo
    I = spec.index_t
    name = kernel_name("i8dw", spec)
    ksz = prod(geo.kernel)
    params = _params(spec.out, ctype_of(spec.out.dtype), ctype_of(spec.x_dtype), "int")
    kpos = " + ".join(f"k{d} * {prod(geo.kernel[d + 1:])}" for d in range(len(geo.kernel))) or "0"
    inner = [f"const {I} ic = ch / {geo.c_out // geo.c_in};", "int acc = 0;"]
    inner += _window_loops(geo, I, [f"if (inb) acc += ((int)a[{_in_offset(geo, 'ic')}] - {spec.x_zp}) * "
                                    f"b[ch * {ksz} + {kpos}];"])
    inner += finish_lines(spec.out, "(int)((unsigned)acc + (unsigned)qp[ch * 4])", "ch")
    inner.append("y[i] = v;")
    src = kernel_source(name, THREADS, params, _out_loop(geo, I, inner),
                        f"int8 depthwise conv {geo.c_in}->{geo.c_out} channels, kernel {list(geo.kernel)} "
                        f"-> {spec.out.dtype}")
    return Kernel(name, src, tuple(params), (RSHIFT_HELPER,), False, spec)
