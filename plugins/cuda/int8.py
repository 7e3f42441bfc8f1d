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


def gemm_prologue(spec: Int8GemmSpec) -> list[str]:
    """The block's tile origin ``m0``/``n0``, its batch coordinates (or group ``g``), the channel
    base ``cbase`` and the batch offsets of A (``ab``) and a runtime B (``bb``)."""
    I = spec.index_t
    L = [f"const {I} m0 = ({I})blockIdx.y * {spec.tile.bm}, n0 = ({I})blockIdx.x * {spec.tile.bn};"]
    nb = len(spec.batch)
    bco = [f"z{d}" for d in range(nb)]
    if spec.conv:
        return L + [f"const {I} g = blockIdx.z, cbase = g * {spec.N};"]
    L += decompose(f"({I})blockIdx.z", spec.batch, "z", I)
    L.append(f"const {I} ab = {offset_expr(bco, spec.a.strides[:nb], spec.a.offset)};")
    L.append("const " + I + " cbase = 0;")
    if spec.b is not None:
        L.append(f"const {I} bb = {offset_expr(bco, spec.b.strides[:nb], spec.b.offset)};")
    return L


def _a_word(spec: Int8GemmSpec) -> list[str]:
    """Lines setting ``wd`` to word (m, kw) of the k-packed, int8-shifted A."""
    I, K = spec.index_t, spec.K
    conv = spec.conv
    if conv:
        opix, ksz = prod(conv.out_spatial), prod(conv.kernel)
        xs = contiguous_strides((conv.n, conv.c_in, *conv.in_spatial))

        def a_at(k):
            lines = [f"const {I} ci = {k} / {ksz};", f"{I} kr = {k} % {ksz};", f"{I} pr = m % {opix};"]
            gather, sp = im2col_gather(I, conv.kernel, conv.out_spatial, conv.in_spatial, conv.strides, conv.pads,
                                       conv.dilations, xs[2:])
            lines += gather
            terms = [f"img * {xs[0]}", f"(g * {conv.c_in // spec.groups} + ci) * {xs[1]}", *sp]
            zp_bits = spec.a_zp & 0xFF
            elem = _byte(spec.a_dtype, "a[" + " + ".join(terms) + "]")
            return lines + [f"const unsigned bv = inb ? {elem} : {zp_bits}u;", "wd |= (bv & 0xffu) << (8 * j);"]

        return [f"const {I} img = m / {opix};", *_pack_bytes(a_at, I, K)]
    sam, sak = spec.a.strides[len(spec.batch):]
    if spec.a_words:
        flip = " ^ 0x80808080u" if spec.a_dtype == "uint8" else ""
        return [f"wd = *reinterpret_cast<const unsigned*>(a + ab + {offset_expr(['m', '4 * kw'], (sam, 1))}){flip};"]
    return _pack_bytes(lambda k: [_or_byte(spec.a_dtype, "a[ab + " + offset_expr(["m", k], (sam, sak)) + "]")], I, K)


def stage_lines(spec: Int8GemmSpec, bk4: int) -> list[str]:
    """Lines (inside the loop over ``kw0``, run by all ``tid``) that fill ``As[kq][mm]`` and
    ``Bs[kq][nn]`` with words ``kw0 .. kw0 + bk4`` of the tile's A rows and B columns; words
    past K read zero."""
    I, M, N, K4 = spec.index_t, spec.M, spec.N, spec.K4
    BM, BN, NT = spec.tile.bm, spec.tile.bn, spec.tile.threads
    if spec.b is None:  # packed constant words, K contiguous: kq fastest reads consecutive words
        lb = [f"wd = (unsigned)b[(cbase + n) * {K4} + kw];"]
        b_split = f"kq = l % {bk4}, nn = l / {bk4}"
    else:
        sbk, sbn = spec.b.strides[len(spec.batch):]
        lb = _pack_bytes(lambda k: [_or_byte(spec.b.dtype, "b[bb + " + offset_expr([k, "n"], (sbk, sbn)) + "]")],
                         I, spec.K)
        b_split = f"nn = l % {BN}, kq = l / {BN}"
    return [f"for (int l = tid; l < {BM * bk4}; l += {NT}) {{",
            f"    const int mm = l % {BM}, kq = l / {BM};",
            f"    const {I} m = m0 + mm, kw = kw0 + kq;",
            "    unsigned wd = 0u;",
            f"    if (m < {M} && kw < {K4}) {{", *("        " + s for s in _a_word(spec)), "    }",
            "    As[kq][mm] = (int)wd;", "}",
            f"for (int l = tid; l < {BN * bk4}; l += {NT}) {{",
            f"    const int {b_split};",
            f"    const {I} n = n0 + nn, kw = kw0 + kq;",
            "    unsigned wd = 0u;",
            f"    if (n < {N} && kw < {K4}) {{", *("        " + s for s in lb), "    }",
            "    Bs[kq][nn] = (int)wd;", "}"]


def store_lines(spec: Int8GemmSpec, m: str, n: str, acc: str, rs: str, cs: str) -> list[str]:
    """The guarded store of output (m, n): the int32 accumulator ``acc`` plus the folded
    constant, minus ``zb[n]`` x row sum ``rs`` and ``za`` x column sum ``cs``, requantized."""
    I = spec.index_t
    a32 = (f"(int)((unsigned){acc} + (unsigned)qp[ch * 4] - (unsigned)qp[ch * 4 + 3] * (unsigned){rs}"
           f" - {spec.a_zp & 0xFFFFFFFF}u * (unsigned){cs})")
    conv = spec.conv
    if conv:
        opix = prod(conv.out_spatial)
        dst = f"y[(m / {opix} * {conv.c_out} + ch) * {opix} + m % {opix}]"
    else:
        bco = [f"z{d}" for d in range(len(spec.batch))]
        dst = f"y[{offset_expr([*bco, 'm', 'n'], spec.c.strides, spec.c.offset)}]"
    return [f"const {I} m = {m}, n = {n};", f"if (m < {spec.M} && n < {spec.N}) {{",
            f"    const {I} ch = cbase + n;", f"    const int a32 = {a32};",
            *("    " + s for s in finish_lines(spec.out, "a32", "ch")), f"    {dst} = v;", "}"]


def describe(spec: Int8GemmSpec) -> str:
    conv = spec.conv
    what = (f"conv {conv.c_in}->{conv.c_out} kernel {list(conv.kernel)} groups {spec.groups}" if conv
            else f"batch {list(spec.batch)}, B {'packed' if spec.b is None else spec.b.dtype}")
    return f"{spec.M}x{spec.N}x{spec.K} ({what}) -> {spec.out.dtype}"


def gemm_params(spec: Int8GemmSpec) -> list[Param]:
    b_t = "int" if spec.b is None else ctype_of(spec.b.dtype)
    return _params(spec.out, ctype_of(spec.out.dtype), ctype_of(spec.a_dtype), b_t)


def render_int8_gemm(spec: Int8GemmSpec) -> Kernel:
    name = kernel_name("i8gemm", spec)
    t = spec.tile
    BM, BN, BK4, TM, TN, NT = t.bm, t.bn, t.bk4, t.tm, t.tn, t.threads
    RM, RN = BM // TM, BN // TN
    I = spec.index_t
    params = gemm_params(spec)
    L = [f"__shared__ __align__(16) int As[{BK4}][{BM + 4}];", f"__shared__ __align__(16) int Bs[{BK4}][{BN + 4}];",
         "const int tid = threadIdx.x;",
         f"const int ty = tid % {RM}, tx = tid / {RM};" if spec.conv else f"const int tx = tid % {RN}, ty = tid / {RN};",
         *gemm_prologue(spec)]
    L += [f"int acc[{TM}][{TN}], rs[{TM}], cs[{TN}];",
          "#pragma unroll", f"for (int i = 0; i < {TM}; ++i) {{ rs[i] = 0; for (int j = 0; j < {TN}; ++j) acc[i][j] = 0; }}",
          "#pragma unroll", f"for (int j = 0; j < {TN}; ++j) cs[j] = 0;",
          f"for ({I} kw0 = 0; kw0 < {spec.K4}; kw0 += {BK4}) {{", *("    " + s for s in stage_lines(spec, BK4)),
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
    st = store_lines(spec, f"m0 + ty + i * {RM}", f"n0 + tx + j * {RN}", "acc[i][j]", "rs[i]", "cs[j]")
    L += ["#pragma unroll", f"for (int i = 0; i < {TM}; ++i)", "    #pragma unroll", f"    for (int j = 0; j < {TN}; ++j) {{",
          *("        " + s for s in st), "    }"]
    src = kernel_source(name, NT, params, L,
                        f"int8 dp4a gemm {describe(spec)}; tile {BM}x{BN}x{4 * BK4}, "
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
