"""Row reductions: ReduceSum/Mean/Max/Min/Prod/SumSquare/L1/L2/LogSumExp,
Softmax, LogSoftmax, LayerNormalization, GlobalAveragePool/GlobalMaxPool.

The input is seen as ``rows x cols`` through a view (any set of reduced axes:
the reduced dims are the "cols", the kept dims the "rows", each with its own
strides). One warp reduces a row when it has at most 1024 elements (a block
holds several rows as ``threadIdx.y``); longer rows get a whole block. Partial
results combine with warp shuffles (``__shfl_xor_sync``), then across warps
through shared memory; every thread ends with the total, so normalizations
make their second and third passes without another broadcast. Threads past
the last row still take part in the shuffles (block-uniform control flow).

>>> spec = make_row_reduce("softmax", x_shape=(6, 10), axes=(1,))   # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from graphopt.errors import UnsupportedOpError

from .ew import collapse
from .kernel import Helper, Kernel, Param, ctype_of, kernel_source
from .scalar import c_float, decompose, half_helpers, index_type, load, max_extent, offset_expr, store
from .specs import View, ceil_div, kernel_name, prod

# kind -> (combine op, identity, per-element pre-map, post-map of the total with C = count)
REDUCTIONS = {
    "sum": ("sum", "0.0f", "{x}", "{a}"),
    "mean": ("sum", "0.0f", "{x}", "({a} / (float){C})"),
    "max": ("max", "(-GO_INF)", "{x}", "{a}"),
    "min": ("min", "GO_INF", "{x}", "{a}"),
    "prod": ("prod", "1.0f", "{x}", "{a}"),
    "sumsq": ("sum", "0.0f", "({x} * {x})", "{a}"),
    "l1": ("sum", "0.0f", "fabsf({x})", "{a}"),
    "l2": ("sum", "0.0f", "({x} * {x})", "sqrtf({a})"),
    "logsumexp": None,  # two passes: max, then sum of exp
}
NORMALIZATIONS = ("softmax", "logsoftmax", "layernorm")
_COMBINE = {"sum": "{a} + {b}", "max": "fmaxf({a}, {b})", "min": "fminf({a}, {b})", "prod": "{a} * {b}"}
_IDENT = {"sum": "0.0f", "max": "(-GO_INF)", "min": "GO_INF", "prod": "1.0f"}


@dataclass(frozen=True)
class ReduceSpec:
    kind: str
    rows: tuple[int, ...]  # kept dims (collapsed)
    cols: tuple[int, ...]  # reduced dims (collapsed)
    x: View  # strides over rows + cols
    y: View  # strides over rows (+ cols for normalizations)
    aux_in: tuple[View, ...] = ()  # LayerNormalization scale, bias: strides over cols
    aux_out: tuple[View, ...] = ()  # LayerNormalization mean, inv std dev: strides over rows
    eps: float = 1e-5
    tx: int = 32  # threads per row
    rpb: int = 4  # rows per block
    index_t: str = "int"

    @property
    def nrows(self) -> int:
        return prod(self.rows)

    @property
    def ncols(self) -> int:
        return prod(self.cols)

    def grid(self) -> tuple[int, int, int]:
        return (max(ceil_div(self.nrows, self.rpb), 1), 1, 1)

    def block(self) -> tuple[int, int, int]:
        return (self.tx, self.rpb, 1)


def make_row_reduce(kind: str, x_shape: Sequence[int], axes: Sequence[int], *, x: View | None = None,
                    y: View | None = None, aux_in: Sequence[View] = (), aux_out: Sequence[View] = (),
                    eps: float = 1e-5, dtype: str = "float32") -> ReduceSpec:
    """A reduction of ``x_shape`` over ``axes`` (views default to contiguous tensors).

    For reductions ``y`` strides are over the kept dims; for normalizations over all dims.
    ``aux_in`` views (LayerNorm scale/bias) are over the reduced dims, ``aux_out`` over the kept ones.
    """
    if kind not in REDUCTIONS and kind not in NORMALIZATIONS:
        raise UnsupportedOpError(f"no CUDA row reduction {kind!r}")
    shape = tuple(int(d) for d in x_shape)
    rank = len(shape)
    axes = sorted({a % rank for a in axes}) if rank else []
    kept = [i for i in range(rank) if i not in axes]
    x = x or View.contiguous(dtype, shape)
    if y is None:
        y = View.contiguous(dtype, shape) if kind in NORMALIZATIONS else \
            View.contiguous(dtype, [shape[i] for i in kept])
    rows = [shape[i] for i in kept]
    cols = [shape[i] for i in axes]
    x_rows = View(x.dtype, tuple(x.strides[i] for i in kept), x.offset)
    x_cols = View(x.dtype, tuple(x.strides[i] for i in axes), 0)
    if kind in NORMALIZATIONS:
        y_rows = View(y.dtype, tuple(y.strides[i] for i in kept), y.offset)
        y_cols = View(y.dtype, tuple(y.strides[i] for i in axes), 0)
    else:
        y_rows, y_cols = y, View(y.dtype, (0,) * len(cols), 0)
    rdims, rviews = collapse(rows, [x_rows, y_rows, *aux_out])
    cdims, cviews = collapse(cols, [x_cols, y_cols, *aux_in])
    nr, nc = len(rdims), len(cdims)
    xv = View(x.dtype, rviews[0].strides + cviews[0].strides, x.offset)
    yv = View(y.dtype, rviews[1].strides + (cviews[1].strides if kind in NORMALIZATIONS else ()), y.offset)
    ncols = prod(cdims)
    if ncols <= 1024:
        tx, rpb = 32, max(1, min(4, prod(rdims)))
    else:
        tx, rpb = (128 if ncols <= 4096 else 256), 1
    idx = index_type(prod(rdims) * max(ncols, 1), max_extent(rdims + cdims, xv.strides, xv.offset),
                     max_extent(rdims + (cdims if kind in NORMALIZATIONS else ()), yv.strides, yv.offset))
    return ReduceSpec(kind, tuple(rdims), tuple(cdims), xv, yv, tuple(cviews[2:]), tuple(rviews[2:]),
                      float(eps), tx, rpb, idx)


def reduce_helpers(ops: set[str], block: bool) -> tuple[Helper, ...]:
    out = []
    for op in sorted(ops):
        comb = _COMBINE[op].format(a="v", b=f"__shfl_xor_sync(0xffffffffu, v, o)")
        out.append(Helper(f"go_warp_{op}", f"__device__ __forceinline__ float go_warp_{op}(float v) {{\n"
                          f"    for (int o = 16; o > 0; o >>= 1) v = {comb};\n    return v;\n}}\n"))
        if block:
            # all warps reduce the per-warp partials, so every thread gets the total
            out.append(Helper(f"go_block_{op}", f"""\
__device__ __forceinline__ float go_block_{op}(float v, float* sh) {{
    v = go_warp_{op}(v);
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    v = lane < (int)(blockDim.x >> 5) ? sh[lane] : {_IDENT[op]};
    return go_warp_{op}(v);
}}
"""))
    return tuple(out)


def render_row_reduce(spec: ReduceSpec) -> Kernel:
    name = kernel_name("red", spec)
    I = spec.index_t
    nr = len(spec.rows)
    C = spec.ncols
    block = spec.tx > 32
    kind = spec.kind
    params = [Param("y", f"{ctype_of(spec.y.dtype)}*"), Param("x", f"const {ctype_of(spec.x.dtype)}*")]
    if kind == "layernorm":
        params += [Param(f"p{i}", f"const {ctype_of(v.dtype)}*") for i, v in enumerate(spec.aux_in)]
        params += [Param(f"q{i}", f"{ctype_of(v.dtype)}*") for i, v in enumerate(spec.aux_out)]
    yd = spec.y.dtype
    ops: set[str] = set()

    def reduce_call(op: str, var: str) -> str:
        ops.add(op)
        return f"{var} = go_block_{op}({var}, go_sh);" if block else f"{var} = go_warp_{op}({var});"

    xr, xc = spec.x.strides[:nr], spec.x.strides[nr:]
    yr, yc = spec.y.strides[:nr], spec.y.strides[nr:]
    ccoords = [f"k{d}" for d in range(len(spec.cols))]

    def col_loop(body: list[str]) -> list[str]:
        lines = [f"if (active) for ({I} c = threadIdx.x; c < {C}; c += {spec.tx}) {{"]
        lines += ["    " + s for s in decompose("c", spec.cols, "k", I)]
        lines.append(f"    const float xv = {load(spec.x.dtype, f'x[xb + {offset_expr(ccoords, xc)}]')};")
        lines += ["    " + s for s in body]
        lines.append("}")
        return lines

    L: list[str] = []
    if block:
        L.append("__shared__ float go_sh[32];")
    L.append(f"const {I} row = ({I})blockIdx.x * {spec.rpb} + threadIdx.y;")
    L.append(f"const bool active = row < {spec.nrows};")
    L += decompose("row", spec.rows, "r", I)
    rcoords = [f"r{d}" for d in range(nr)]
    L.append(f"const {I} xb = {offset_expr(rcoords, xr, spec.x.offset)};")
    L.append(f"const {I} yb = {offset_expr(rcoords, yr, spec.y.offset)};")
    if kind in REDUCTIONS and kind != "logsumexp":
        op, ident, pre, post = REDUCTIONS[kind]
        L.append(f"float acc = {ident};")
        L += col_loop([f"acc = {_COMBINE[op].format(a='acc', b=pre.format(x='xv'))};"])
        L.append(reduce_call(op, "acc"))
        L.append(f"if (active && threadIdx.x == 0) y[yb] = {store(yd, post.format(a='acc', C=C))};")
    elif kind in ("logsumexp", "softmax", "logsoftmax"):
        L.append("float m = -GO_INF;")
        L += col_loop(["m = fmaxf(m, xv);"])
        L.append(reduce_call("max", "m"))
        L.append("float s = 0.0f;")
        L += col_loop(["s += expf(xv - m);"])
        L.append(reduce_call("sum", "s"))
        if kind == "logsumexp":
            L.append(f"if (active && threadIdx.x == 0) y[yb] = {store(yd, 'm + logf(s)')};")
        else:
            L.append("const float inv = 1.0f / s, lse = m + logf(s);")
            out = "expf(xv - m) * inv" if kind == "softmax" else "xv - lse"
            L += col_loop([f"y[yb + {offset_expr(ccoords, yc)}] = {store(yd, out)};"])
    else:  # layernorm: two-pass mean and variance
        L.append("float s = 0.0f;")
        L += col_loop(["s += xv;"])
        L.append(reduce_call("sum", "s"))
        L.append(f"const float mean = s / (float){C};")
        L.append("float q = 0.0f;")
        L += col_loop(["const float d = xv - mean;", "q += d * d;"])
        L.append(reduce_call("sum", "q"))
        L.append(f"const float rstd = rsqrtf(q / (float){C} + {c_float(spec.eps)});")
        terms = "(xv - mean) * rstd"
        for i, v in enumerate(spec.aux_in):
            term = load(v.dtype, f"p{i}[{offset_expr(ccoords, v.strides, v.offset)}]")
            terms = f"{terms} * {term}" if i == 0 else f"{terms} + {term}"
        L += col_loop([f"y[yb + {offset_expr(ccoords, yc)}] = {store(yd, terms)};"])
        for i, (v, val) in enumerate(zip(spec.aux_out, ("mean", "rstd"))):
            L.append(f"if (active && threadIdx.x == 0) q{i}[{offset_expr(rcoords, v.strides, v.offset)}] = "
                     f"{store(v.dtype, val)};")
    src = kernel_source(name, spec.tx * spec.rpb, params, L,
                        f"row {kind}: {spec.nrows} rows x {C} cols, {spec.tx} threads per row, {spec.rpb} rows per block")
    dts = [spec.x.dtype, yd, *(v.dtype for v in (*spec.aux_in, *spec.aux_out))]
    return Kernel(name, src, tuple(params), reduce_helpers(ops, block) + half_helpers(*dts), True, spec)
