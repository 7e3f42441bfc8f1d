"""Tiled shared-memory SIMT GEMM (float32) with a fused epilogue, for
MatMul / Gemm / batched MatMul, and convolution as an implicit GEMM.

One block computes a ``BM x BN`` tile of C; each of its threads a ``TM x TN``
micro-tile held in registers. Per ``BK`` slice of the reduction the block
stages A (as ``As[k][m]``) and B (``Bs[k][n]``) in shared memory with guarded
loads (zero outside the matrix, so no size needs to be a multiple of a tile),
then every thread runs ``BK`` rank-1 updates with ``fmaf``. The epilogue
(alpha, bias, activation, residual... any ``ScalarFn`` over the accumulator and
operands read at the output coordinates) runs on the registers before the one
store.

Operands are views with strides, so transposed inputs (``transA``/``transB``,
a transposed K in attention) and broadcast batch dims cost nothing. For a
convolution, B is the im2col matrix gathered on the fly from NCHW input
(strides, pads, dilation), one GEMM per group (``blockIdx.z``).

>>> spec = make_matmul(M=5, N=7, K=3)         # doctest: +SKIP
>>> kernel = render_gemm(spec)                # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from .kernel import Kernel, Param, ctype_of, kernel_source
from .scalar import (c_float, compute_dtype, contiguous_strides, decompose, half_helpers, index_type, load, max_extent,
                     offset_expr, store)
from .specs import Epilogue, TiledLaunch, View, ceil_div, kernel_name, prod

SM_COUNT = 132  # H100 SXM: enough blocks to fill it decide the tile


@dataclass(frozen=True)
class Tile:
    bm: int
    bn: int
    bk: int
    tm: int
    tn: int
    min_blocks: int = 2  # blocks per SM the register budget must allow

    @property
    def threads(self) -> int:
        return (self.bm // self.tm) * (self.bn // self.tn)

    @property
    def smem_bytes(self) -> int:
        return 4 * self.bk * (self.bm + self.bn + 8)


TILES = {
    "128x128": Tile(128, 128, 8, 8, 8, min_blocks=1),  # 64 accumulators per thread
    "64x64": Tile(64, 64, 16, 4, 4),
    "32x32": Tile(32, 32, 16, 4, 4),
    "16x64": Tile(16, 64, 16, 2, 4),
}


def pick_tile(tiles: dict, M: int, N: int, batch: int, sm_count: int = SM_COUNT):
    """The biggest of ``tiles`` ("128x128", "64x64", else "32x32") that still gives every SM a
    block; skinny M gets the flat "16x64"."""
    if M <= 16 and N > 32:
        return tiles["16x64"]
    for name in ("128x128", "64x64"):
        t = tiles[name]
        if M >= t.bm and N >= t.bn and ceil_div(M, t.bm) * ceil_div(N, t.bn) * batch >= sm_count:
            return t
    return tiles["32x32"]


def choose_tile(M: int, N: int, batch: int) -> Tile:
    return pick_tile(TILES, M, N, batch)


@dataclass(frozen=True)
class MatmulSpec(TiledLaunch):
    M: int
    N: int
    K: int
    batch: tuple[int, ...]  # broadcast batch shape of the output
    a: View  # strides over batch + (m, k)
    b: View  # strides over batch + (k, n)
    c: View  # strides over batch + (m, n)
    alpha: float
    epilogue: Epilogue  # operand strides over batch + (m, n)
    tile: Tile
    index_t: str

    @property
    def nbatch(self) -> int:
        return prod(self.batch)

    @property
    def nz(self) -> int:
        return self.nbatch


def make_matmul(M: int, N: int, K: int, batch: Sequence[int] = (), *, a: View | None = None,
                b: View | None = None, c: View | None = None, alpha: float = 1.0,
                epilogue: Epilogue | None = None, tile: Tile | None = None) -> MatmulSpec:
    """C[batch, m, n] = epilogue(alpha * sum_k A[batch, m, k] B[batch, k, n], operands...)."""
    batch = tuple(int(d) for d in batch)
    a = a or View.contiguous("float32", (*batch, M, K))
    b = b or View.contiguous("float32", (*batch, K, N))
    c = c or View.contiguous("float32", (*batch, M, N))
    epilogue = epilogue or Epilogue()
    tile = tile or choose_tile(M, N, prod(batch))
    out_dims = (*batch, M, N)
    idx = index_type(max_extent((*batch, M, K), a.strides, a.offset), max_extent((*batch, K, N), b.strides, b.offset),
                     max_extent(out_dims, c.strides, c.offset),
                     *(max_extent(out_dims, v.strides, v.offset) for v in epilogue.operands))
    return MatmulSpec(M, N, K, batch, a, b, c, float(alpha), epilogue, tile, idx)


@dataclass(frozen=True)
class ConvSpec:
    """NCHW convolution (any number of spatial dims) as an implicit GEMM per group:
    M = out channels per group, N = batch x output pixels, K = in channels per group x kernel."""

    n: int
    c: int
    k: int  # output channels
    in_spatial: tuple[int, ...]
    kernel: tuple[int, ...]
    out_spatial: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]  # begin pads only: the end pads are implied by out_spatial
    dilations: tuple[int, ...]
    groups: int
    alpha: float
    epilogue: Epilogue  # operand strides over the output's (n, k, *spatial)
    tile: Tile
    index_t: str
    dtype: str = "float32"  # of x, w and y (float16 is stored as halves, computed in float32)

    @property
    def gemm_mnk(self) -> tuple[int, int, int]:
        kg, cg = self.k // self.groups, self.c // self.groups
        return kg, self.n * prod(self.out_spatial), cg * prod(self.kernel)

    def grid(self) -> tuple[int, int, int]:
        M, N, _ = self.gemm_mnk
        return (ceil_div(N, self.tile.bn), ceil_div(M, self.tile.bm), self.groups)

    def block(self) -> tuple[int, int, int]:
        return (self.tile.threads, 1, 1)

    @property
    def empty(self) -> bool:
        M, N, _ = self.gemm_mnk
        return M == 0 or N == 0


def make_conv(x_shape: Sequence[int], w_shape: Sequence[int], out_spatial: Sequence[int], *,
              strides: Sequence[int] | None = None, pads: Sequence[int] | None = None,
              dilations: Sequence[int] | None = None, groups: int = 1, alpha: float = 1.0,
              epilogue: Epilogue | None = None, tile: Tile | None = None, dtype: str = "float32") -> ConvSpec:
    n, c, *sp = (int(d) for d in x_shape)
    k, _, *ks = (int(d) for d in w_shape)
    nd = len(sp)
    strides = tuple(strides or (1,) * nd)
    pads = tuple(pads or (0,) * nd)[:nd]
    dilations = tuple(dilations or (1,) * nd)
    epilogue = epilogue or Epilogue()
    spec0 = ConvSpec(n, c, k, tuple(sp), tuple(ks), tuple(int(d) for d in out_spatial), strides, pads, dilations,
                     groups, float(alpha), epilogue, TILES["32x32"], "int", dtype)
    M, N, K = spec0.gemm_mnk
    tile = tile or choose_tile(M, N, groups)
    out_shape = (n, k, *spec0.out_spatial)
    idx = index_type(n * c * prod(sp), k * (c // max(groups, 1)) * prod(ks), prod(out_shape), N * max(M, 1),
                     *(max_extent(out_shape, v.strides, v.offset) for v in epilogue.operands))
    return ConvSpec(**{**spec0.__dict__, "tile": tile, "index_t": idx})


def _epilogue_lines(ep: Epilogue, coords: Sequence[str], acc: str) -> list[str]:
    """C lines defining ``v`` (float) from the accumulator and the epilogue operands at ``coords``."""
    if ep.fn is None:
        return [f"const float v = {acc};"]
    ins = [acc]
    lines = []
    for i, v in enumerate(ep.operands):
        elem = load(v.dtype, f"e{i}[{offset_expr(coords, v.strides, v.offset)}]")
        lines.append(f"const {ctype_of(compute_dtype(v.dtype))} e{i}v = {elem};")
        ins.append(f"e{i}v")
    return lines + ep.fn.emit(ins, "v")


def _epilogue_helpers(ep: Epilogue, *dtypes: str):
    return (ep.fn.helpers if ep.fn else ()) + half_helpers(*dtypes, *(v.dtype for v in ep.operands))


def _render_tiled(name: str, tile: Tile, params: list[Param], I: str, M: int, N: int, K: int,
                  prologue: list[str], load_a: Callable[[str, str], list[str]], a_k_fast: bool,
                  load_b: Callable[[str, str], list[str]], b_n_fast: bool,
                  store: Callable[[str, str, str], list[str]], comment: str, helpers=()) -> Kernel:
    BM, BN, BK, TM, TN, NT = tile.bm, tile.bn, tile.bk, tile.tm, tile.tn, tile.threads

    # Global -> registers -> shared, one slice ahead: the loads of slice k+1 are in flight while
    # slice k is multiplied. Each thread moves a fixed number of elements of each operand.
    def staging(reg: str, dst: str, rows: int, cols: int, fast_cols: bool, load, r0: str, c0: str,
                rlim: int, clim: int, transpose: bool) -> tuple[list[str], list[str]]:
        assert rows * cols % NT == 0, "tiles are chosen so that every thread moves the same count"
        n = rows * cols // NT
        split = f"rr = l / {cols}, cc = l % {cols}" if fast_cols else f"rr = l % {rows}, cc = l / {rows}"
        fetch = ["#pragma unroll", f"for (int u = 0; u < {n}; ++u) {{",
                 f"    const int l = threadIdx.x + u * {NT}, {split};",
                 f"    const {I} gr = {r0} + rr, gc = {c0} + cc;",
                 "    float t = 0.0f;",
                 f"    if (gr < {rlim} && gc < {clim}) {{"]
        fetch += ["        " + s for s in load("gr", "gc")]
        fetch += ["    }", f"    {reg}[u] = t;", "}"]
        commit = ["#pragma unroll", f"for (int u = 0; u < {n}; ++u) {{",
                  f"    const int l = threadIdx.x + u * {NT}, {split};",
                  f"    {dst}[{'cc' if transpose else 'rr'}][{'rr' if transpose else 'cc'}] = {reg}[u];", "}"]
        return [f"float {reg}[{n}];", "{"] + fetch + ["}"], ["{"] + commit + ["}"]

    # rows padded by 4 floats: 16-byte aligned rows for float4 fragment reads
    L = [f"__shared__ __align__(16) float As[{BK}][{BM + 4}];", f"__shared__ __align__(16) float Bs[{BK}][{BN + 4}];",
         f"const int tx = threadIdx.x % {BN // TN}, ty = threadIdx.x / {BN // TN};",
         f"const {I} m0 = ({I})blockIdx.y * {BM}, n0 = ({I})blockIdx.x * {BN};"]
    L += prologue
    L.append(f"float acc[{TM}][{TN}];")
    L.append(f"#pragma unroll\nfor (int i = 0; i < {TM}; ++i)\n    #pragma unroll\n"
             f"    for (int j = 0; j < {TN}; ++j) acc[i][j] = 0.0f;")
    fa, ca = staging("pa", "As", BM, BK, a_k_fast, load_a, "m0", "kn", M, K, True)
    fb, cb = staging("pb", "Bs", BK, BN, b_n_fast, load_b, "kn", "n0", K, N, False)
    decl = [fa[0], fb[0]]
    fetch = fa[1:] + fb[1:]
    L += decl + [f"{I} kn = 0;"] + fetch + ca + cb + ["__syncthreads();"]
    L.append(f"for ({I} k0 = 0; k0 < {K}; k0 += {BK}) {{")
    body = [f"kn = k0 + {BK};",
            f"const bool more = kn < {K};  // the same for the whole block",
            "if (more) {", *("    " + s for s in fetch), "}",
            "#pragma unroll",
            f"for (int kk = 0; kk < {BK}; ++kk) {{",
            f"    float ra[{TM}], rb[{TN}];",
            *_fragment_read("ra", "As", TM, "ty"),
            *_fragment_read("rb", "Bs", TN, "tx"),
            "    #pragma unroll",
            f"    for (int i = 0; i < {TM}; ++i)",
            "        #pragma unroll",
            f"        for (int j = 0; j < {TN}; ++j) acc[i][j] = fmaf(ra[i], rb[j], acc[i][j]);",
            "}",
            "__syncthreads();",
            "if (more) {", *("    " + s for s in ca + cb), "    __syncthreads();", "}"]
    L += ["    " + s for s in body]
    L.append("}")
    L += ["#pragma unroll", f"for (int i = 0; i < {TM}; ++i) {{", "    #pragma unroll",
          f"    for (int j = 0; j < {TN}; ++j) {{",
          f"        const {I} m = m0 + ty * {TM} + i, n = n0 + tx * {TN} + j;",
          f"        if (m < {M} && n < {N}) {{"]
    L += ["            " + s for s in store("m", "n", "acc[i][j]")]
    L += ["        }", "    }", "}"]
    src = kernel_source(name, NT, params, L,
                        f"{comment}; tile {BM}x{BN}x{BK}, micro-tile {TM}x{TN}, {NT} threads, {I} indices",
                        min_blocks=tile.min_blocks)
    return Kernel(name, src, tuple(params), tuple(helpers), True, None)


def _fragment_read(reg: str, smem: str, n: int, idx: str) -> list[str]:
    """Registers ``reg[0..n)`` from ``smem[kk][idx * n ...]``: 16-byte reads when ``n`` allows."""
    if n % 4 == 0:
        return ["    #pragma unroll", f"    for (int q = 0; q < {n // 4}; ++q) {{",
                f"        const float4 t4 = reinterpret_cast<const float4*>(&{smem}[kk][{idx} * {n}])[q];",
                f"        {reg}[4 * q] = t4.x; {reg}[4 * q + 1] = t4.y; {reg}[4 * q + 2] = t4.z; {reg}[4 * q + 3] = t4.w;",
                "    }"]
    return ["    #pragma unroll", f"    for (int i = 0; i < {n}; ++i) {reg}[i] = {smem}[kk][{idx} * {n} + i];"]


def _epilogue_params(ep: Epilogue) -> list[Param]:
    return [Param(f"e{i}", f"const {ctype_of(v.dtype)}*") for i, v in enumerate(ep.operands)]


def _scaled(acc: str, alpha: float) -> str:
    return acc if alpha == 1.0 else f"({c_float(alpha)} * {acc})"


def render_gemm(spec: MatmulSpec) -> Kernel:
    name = kernel_name("gemm", spec)
    I = spec.index_t
    nb = len(spec.batch)
    params = [Param("y", f"{ctype_of(spec.c.dtype)}*"), Param("a", f"const {ctype_of(spec.a.dtype)}*"),
              Param("b", f"const {ctype_of(spec.b.dtype)}*")]
    params += _epilogue_params(spec.epilogue)
    bcoords = [f"z{d}" for d in range(nb)]
    pro = decompose("(" + I + ")blockIdx.z", spec.batch, "z", I)
    pro.append(f"const {I} ab = {offset_expr(bcoords, spec.a.strides[:nb], spec.a.offset)};")
    pro.append(f"const {I} bb = {offset_expr(bcoords, spec.b.strides[:nb], spec.b.offset)};")
    sam, sak = spec.a.strides[nb:]
    sbk, sbn = spec.b.strides[nb:]

    def load_a(m, k):
        return [f"t = {load(spec.a.dtype, f'a[ab + {offset_expr([m, k], (sam, sak))}]')};"]

    def load_b(k, n):
        return [f"t = {load(spec.b.dtype, f'b[bb + {offset_expr([k, n], (sbk, sbn))}]')};"]

    def store_c(m, n, acc):
        coords = [*bcoords, m, n]
        lines = _epilogue_lines(spec.epilogue, coords, _scaled(acc, spec.alpha))
        return lines + [f"y[{offset_expr(coords, spec.c.strides, spec.c.offset)}] = {store(spec.c.dtype, 'v')};"]

    fn_key = spec.epilogue.fn.key if spec.epilogue.fn else "store"
    k = _render_tiled(name, spec.tile, params, I, spec.M, spec.N, spec.K, pro, load_a, abs(sak) <= abs(sam),
                      load_b, abs(sbn) <= abs(sbk), store_c,
                      f"gemm {spec.M}x{spec.N}x{spec.K} batch {list(spec.batch)}, epilogue {fn_key}",
                      _epilogue_helpers(spec.epilogue, spec.a.dtype, spec.b.dtype, spec.c.dtype))
    return Kernel(k.name, k.source, k.params, k.helpers, True, spec)


def im2col_gather(I: str, kernel, out_spatial, in_spatial, strides, pads, dilations,
                  x_strides) -> tuple[list[str], list[str]]:
    """Lines that split the kernel position ``kr`` and the output pixel ``pr`` (both defined,
    mutable) into input coordinates ``id0..``, with ``inb`` saying whether they exist; and the
    offset terms of those coordinates (spatial strides ``x_strides``)."""
    lines, terms = ["bool inb = true;"], []
    for d in range(len(kernel) - 1, -1, -1):
        lines += [f"const {I} kd{d} = kr % {kernel[d]}; kr /= {kernel[d]};",
                  f"const {I} od{d} = pr % {out_spatial[d]}; pr /= {out_spatial[d]};",
                  f"const {I} id{d} = od{d} * {strides[d]} - {pads[d]} + kd{d} * {dilations[d]};",
                  f"inb = inb && id{d} >= 0 && id{d} < {in_spatial[d]};"]
        terms.append(f"id{d} * {x_strides[d]}" if x_strides[d] != 1 else f"id{d}")
    return lines, terms


def render_conv(spec: ConvSpec) -> Kernel:
    name = kernel_name("conv", spec)
    I = spec.index_t
    M, N, K = spec.gemm_mnk
    nd = len(spec.in_spatial)
    kg, cg = spec.k // spec.groups, spec.c // spec.groups
    T = ctype_of(spec.dtype)
    params = [Param("y", f"{T}*"), Param("x", f"const {T}*"), Param("w", f"const {T}*")]
    params += _epilogue_params(spec.epilogue)
    opix = prod(spec.out_spatial)
    ksz = prod(spec.kernel)
    x_str = contiguous_strides((spec.n, spec.c, *spec.in_spatial))
    pro = [f"const {I} g = blockIdx.z;"]

    def load_a(m, k):  # weights [K, C/g, *kernel], row m of group g
        return [f"t = {load(spec.dtype, f'w[(g * {kg} + {m}) * {K} + {k}]')};"]

    def load_b(k, n):  # im2col element (c, kernel pos) x (image, output pixel)
        lines = [f"const {I} ci = {k} / {ksz};", f"{I} kr = {k} % {ksz};",
                 f"const {I} nb = {n} / {opix};", f"{I} pr = {n} % {opix};"]
        gather, terms = im2col_gather(I, spec.kernel, spec.out_spatial, spec.in_spatial, spec.strides, spec.pads,
                                      spec.dilations, x_str[2:])
        lines += gather
        elem = f"x[{' + '.join([f'nb * {x_str[0]}', f'(g * {cg} + ci) * {x_str[1]}', *terms])}]"
        lines.append(f"if (inb) t = {load(spec.dtype, elem)};")
        return lines

    def store_y(m, n, acc):
        lines = [f"const {I} onb = {n} / {opix}, opx = {n} % {opix};", f"const {I} oc = g * {kg} + {m};"]
        coords = ["onb", "oc"]
        rem = "opx"
        for d in range(nd - 1, -1, -1):
            lines.append(f"const {I} os{d} = {rem} % {spec.out_spatial[d]};")
            if d:
                lines.append(f"const {I} or{d} = {rem} / {spec.out_spatial[d]};")
                rem = f"or{d}"
        coords += [f"os{d}" for d in range(nd)]
        lines += _epilogue_lines(spec.epilogue, coords, _scaled(acc, spec.alpha))
        lines.append(f"y[(onb * {spec.k} + oc) * {opix} + opx] = {store(spec.dtype, 'v')};")
        return lines

    fn_key = spec.epilogue.fn.key if spec.epilogue.fn else "store"
    k = _render_tiled(name, spec.tile, params, I, M, N, K, pro, load_a, True, load_b, True, store_y,
                      f"conv implicit gemm {M}x{N}x{K}, groups {spec.groups}, epilogue {fn_key}",
                      _epilogue_helpers(spec.epilogue, spec.dtype))
    return Kernel(k.name, k.source, k.params, k.helpers, True, spec)
