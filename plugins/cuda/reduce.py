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

A ``RowFusion`` (``FusedRowReduce``) replaces the load of ``x`` with a prologue
expression over other tensors, evaluated as each pass reads the row (its
further results, values also read outside, are written during the first pass),
and the store of the result with an epilogue expression over it and further
tensors, evaluated as it is stored: one kernel for the whole row computation.

>>> spec = make_row_reduce("softmax", x_shape=(6, 10), axes=(1,))   # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from graphopt.errors import UnsupportedOpError

from .ew import collapse
from .kernel import Helper, Kernel, Param, ctype_of, kernel_source
from .scalar import ScalarFn, c_float, decompose, half_helpers, index_type, load, max_extent, offset_expr, store
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
class RowFusion:
    """Pointwise work fused into a row kernel. The kernel reads tensors ``a0..`` (``args``: their
    dtypes) instead of ``x``: ``row`` computes the row's element from ``loads`` (for each operand of
    the fns, the tensor it reads and its view over the row kernel's dims) and ``first`` computes it
    together with the ``extras`` results (views like x's), stored in the first pass. ``epilogue``
    maps the row result and ``epi_loads`` to ``y`` and the ``outs`` (views like y's: over the kept
    dims for a reduction); None stores the row result in ``y``."""

    args: tuple[str, ...]
    row: ScalarFn
    loads: tuple[tuple[int, View], ...]
    first: ScalarFn | None = None
    extras: tuple[View, ...] = ()
    epilogue: ScalarFn | None = None
    epi_loads: tuple[tuple[int, View], ...] = ()
    outs: tuple[View, ...] = ()

    def views(self) -> list[tuple[View, bool]]:
        """Every view, each with whether it is over x's dims (else over y's)."""
        return ([(v, True) for _, v in self.loads] + [(v, True) for v in self.extras]
                + [(v, False) for _, v in self.epi_loads] + [(v, False) for v in self.outs])

    def with_views(self, views: Sequence[View]) -> "RowFusion":
        it = iter(views)
        return replace(self, loads=tuple((a, next(it)) for a, _ in self.loads),
                       extras=tuple(next(it) for _ in self.extras),
                       epi_loads=tuple((a, next(it)) for a, _ in self.epi_loads),
                       outs=tuple(next(it) for _ in self.outs))


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
    fusion: RowFusion | None = None  # with a fusion, x is not read (it gives the row's dtype and dims)

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
                    eps: float = 1e-5, dtype: str = "float32", fusion: RowFusion | None = None) -> ReduceSpec:
    """A reduction of ``x_shape`` over ``axes`` (views default to contiguous tensors).

    For reductions ``y`` strides are over the kept dims; for normalizations over all dims.
    ``aux_in`` views (LayerNorm scale/bias) are over the reduced dims, ``aux_out`` over the kept ones.
    ``fusion``'s views are over all dims (its loads and extras) or like y's (the epilogue's).
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
    # a fusion's views split into their row and column parts, collapsed with the others
    fviews = [] if fusion is None else fusion.views()
    full = [over_x or kind in NORMALIZATIONS for _, over_x in fviews]
    f_rows = [View(v.dtype, tuple(v.strides[i] for i in kept), v.offset) if f else v
              for (v, _), f in zip(fviews, full)]
    f_cols = [View(v.dtype, tuple(v.strides[i] for i in axes) if f else (0,) * len(cols), 0)
              for (v, _), f in zip(fviews, full)]
    nf = len(fviews)
    rdims, rviews = collapse(rows, [x_rows, y_rows, *f_rows, *aux_out])
    cdims, cviews = collapse(cols, [x_cols, y_cols, *f_cols, *aux_in])
    xv = View(x.dtype, rviews[0].strides + cviews[0].strides, x.offset)
    yv = View(y.dtype, rviews[1].strides + (cviews[1].strides if kind in NORMALIZATIONS else ()), y.offset)
    fvs = [View(r.dtype, r.strides + (c.strides if f else ()), r.offset)
           for r, c, f in zip(rviews[2:2 + nf], cviews[2:2 + nf], full)]
    ncols = prod(cdims)
    if ncols <= 1024:
        tx, rpb = 32, max(1, min(4, prod(rdims)))
    else:
        tx, rpb = (128 if ncols <= 4096 else 256), 1
    extents = [max_extent(rdims + (cdims if len(v.strides) > len(rdims) else ()), v.strides, v.offset)
               for v in (xv, yv, *fvs)]
    idx = index_type(prod(rdims) * max(ncols, 1), *extents)
    return ReduceSpec(kind, tuple(rdims), tuple(cdims), xv, yv, tuple(cviews[2 + nf:]), tuple(rviews[2 + nf:]),
                      float(eps), tx, rpb, idx, None if fusion is None else fusion.with_views(fvs))


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
    fu = spec.fusion
    params = [Param("y", f"{ctype_of(spec.y.dtype)}*")]
    if fu is None:
        params.append(Param("x", f"const {ctype_of(spec.x.dtype)}*"))
    else:  # results first (y, the epilogue's others, the prologue's extras), then the tensors read
        params += [Param(f"o{i}", f"{ctype_of(v.dtype)}*") for i, v in enumerate(fu.outs)]
        params += [Param(f"e{i}", f"{ctype_of(v.dtype)}*") for i, v in enumerate(fu.extras)]
        params += [Param(f"a{i}", f"const {ctype_of(d)}*") for i, d in enumerate(fu.args)]
    if kind == "layernorm":
        params += [Param(f"p{i}", f"const {ctype_of(v.dtype)}*") for i, v in enumerate(spec.aux_in)]
        params += [Param(f"q{i}", f"{ctype_of(v.dtype)}*") for i, v in enumerate(spec.aux_out)]
    yd = spec.y.dtype
    ops: set[str] = set()

    def reduce_call(op: str, var: str) -> str:
        ops.add(op)
        return f"{var} = go_block_{op}({var}, go_sh);" if block else f"{var} = go_warp_{op}({var});"

    ccoords = [f"k{d}" for d in range(len(spec.cols))]

    def at(ptr: str, base: str, v: View, cols: bool) -> str:
        """The element of ``ptr`` (view ``v``, row offset ``base``) at this row's column k (if ``cols``)."""
        return f"{ptr}[{base} + {offset_expr(ccoords, v.strides[nr:])}]" if cols else f"{ptr}[{base}]"

    def element(first: bool) -> list[str]:
        """Lines defining ``xv``, the row's element at column k (and, in the first pass, storing the extras)."""
        if fu is None:
            return [f"const float xv = {load(spec.x.dtype, at('x', 'xb', spec.x, True))};"]
        ins = [load(v.dtype, at(f"a{a}", f"lb{j}", v, True)) for j, (a, v) in enumerate(fu.loads)]
        if not (first and fu.extras):
            return fu.row.emit(ins, "xv")
        names = [f"xv_e{i}" for i in range(len(fu.extras))]
        lines = fu.first.emit_many(ins, ["xv", *names])
        return lines + [f"{at(f'e{i}', f'eb{i}', v, True)} = {store(v.dtype, n)};"
                        for i, (v, n) in enumerate(zip(fu.extras, names))]

    def put(value: str, cols: bool) -> list[str]:
        """Lines storing the row result ``value`` at column k (if ``cols``), through the epilogue."""
        if fu is None or fu.epilogue is None:
            return [f"{at('y', 'yb', spec.y, cols)} = {store(yd, value)};"]
        ins = ["res", *(load(v.dtype, at(f"a{a}", f"gb{j}", v, cols)) for j, (a, v) in enumerate(fu.epi_loads))]
        names = [f"res_o{i}" for i in range(1 + len(fu.outs))]
        lines = [f"const float res = {value};", *fu.epilogue.emit_many(ins, names)]
        outs = [("y", "yb", spec.y), *((f"o{i}", f"ob{i}", v) for i, v in enumerate(fu.outs))]
        return lines + [f"{at(p, b, v, cols)} = {store(v.dtype, n)};" for (p, b, v), n in zip(outs, names)]

    def col_loop(body: list[str], first: bool = False) -> list[str]:
        lines = [f"if (active) for ({I} c = threadIdx.x; c < {C}; c += {spec.tx}) {{"]
        lines += ["    " + s for s in decompose("c", spec.cols, "k", I)]
        lines += ["    " + s for s in element(first) + body]
        lines.append("}")
        return lines

    L: list[str] = []
    if block:
        L.append("__shared__ float go_sh[32];")
    L.append(f"const {I} row = ({I})blockIdx.x * {spec.rpb} + threadIdx.y;")
    L.append(f"const bool active = row < {spec.nrows};")
    L += decompose("row", spec.rows, "r", I)
    rcoords = [f"r{d}" for d in range(nr)]
    bases = [("xb", spec.x)] if fu is None else [
        *((f"lb{j}", v) for j, (_, v) in enumerate(fu.loads)), *((f"eb{i}", v) for i, v in enumerate(fu.extras)),
        *((f"gb{j}", v) for j, (_, v) in enumerate(fu.epi_loads)), *((f"ob{i}", v) for i, v in enumerate(fu.outs))]
    for b, v in [*bases, ("yb", spec.y)]:
        L.append(f"const {I} {b} = {offset_expr(rcoords, v.strides[:nr], v.offset)};")
    if kind in REDUCTIONS and kind != "logsumexp":
        op, ident, pre, post = REDUCTIONS[kind]
        L.append(f"float acc = {ident};")
        L += col_loop([f"acc = {_COMBINE[op].format(a='acc', b=pre.format(x='xv'))};"], first=True)
        L.append(reduce_call(op, "acc"))
        L.append("if (active && threadIdx.x == 0) {")
        L += ["    " + s for s in put(post.format(a="acc", C=C), cols=False)]
        L.append("}")
    elif kind in ("logsumexp", "softmax", "logsoftmax"):
        L.append("float m = -GO_INF;")
        L += col_loop(["m = fmaxf(m, xv);"], first=True)
        L.append(reduce_call("max", "m"))
        L.append("float s = 0.0f;")
        L += col_loop(["s += expf(xv - m);"])
        L.append(reduce_call("sum", "s"))
        if kind == "logsumexp":
            L.append(f"if (active && threadIdx.x == 0) y[yb] = {store(yd, 'm + logf(s)')};")
        else:
            L.append("const float inv = 1.0f / s, lse = m + logf(s);")
            out = "expf(xv - m) * inv" if kind == "softmax" else "xv - lse"
            L += col_loop(put(out, cols=True))
    else:  # layernorm: two-pass mean and variance
        L.append("float s = 0.0f;")
        L += col_loop(["s += xv;"], first=True)
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
        L += col_loop(put(terms, cols=True))
        for i, (v, val) in enumerate(zip(spec.aux_out, ("mean", "rstd"))):
            L.append(f"if (active && threadIdx.x == 0) q{i}[{offset_expr(rcoords, v.strides, v.offset)}] = "
                     f"{store(v.dtype, val)};")
    src = kernel_source(name, spec.tx * spec.rpb, params, L,
                        f"row {kind}: {spec.nrows} rows x {C} cols, {spec.tx} threads per row, {spec.rpb} rows per block")
    dts = [spec.x.dtype, yd, *(v.dtype for v in (*spec.aux_in, *spec.aux_out))]
    fn_helpers: tuple[Helper, ...] = ()
    if fu is not None:
        dts += [*fu.args, *(v.dtype for v, _ in fu.views())]
        fns = [f for f in (fu.row, fu.first, fu.epilogue) if f is not None]
        fn_helpers = tuple(dict.fromkeys(h for f in fns for h in f.helpers))
    return Kernel(name, src, tuple(params), reduce_helpers(ops, block) + half_helpers(*dts) + fn_helpers, True, spec)
