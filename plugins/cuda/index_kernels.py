"""Kernels that compute each output element from indices: one thread per element of an
iteration shape in a grid-stride loop, its coordinates ``c0..`` decomposed from the flat
index ``i``, and a body of C statements that reads the inputs and stores.

The ops whose work is "find the source element(s) of this output element" share this
one kernel shape, each with a body printed by a ``*_body`` function here:
GatherElements, GatherND, Tile, OneHot, Trilu, EyeLike, ArgMax/ArgMin, LRN, Einsum,
ConvTranspose (as a gather over the input pixels that reach each output pixel), and
the fiber-serial kernels whose iteration shape leaves out one axis and loops over it:
CumSum, CumProd, ScatterElements, ScatterND (one thread per inner element, updates in order, so
duplicate indices combine exactly as the reference applies them) and TopK (one thread
per element, its rank counted over the fiber).

Shapes are static and baked in; inputs are contiguous; 16-bit floats are loaded and
stored through ``scalar.load``/``store`` where the body computes, moved as bits where
it only copies.

>>> spec = make_index_kernel("tile", (4, 6), [Param("y", "float*"), Param("x", "const float*")],
...                          ["y[i] = x[(c0 % 2) * 3 + (c1 % 3)];"], "tile [2, 3] -> [4, 6]")
>>> render_index_kernel(spec).name.startswith("go_tile_")
True
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .kernel import Kernel, Param, ctype_of, kernel_source
from .scalar import HALF_TYPES, c_literal, compute_dtype, contiguous_strides, decompose, half_helpers, index_type
from .scalar import load as _load
from .scalar import store as _store
from .specs import OnePerElement, kernel_name, prod

THREADS = OnePerElement.THREADS


@dataclass(frozen=True)
class IndexKernelSpec(OnePerElement):
    family: str
    shape: tuple[int, ...]  # the iteration shape (one thread per element)
    params: tuple[Param, ...]
    body: tuple[str, ...]  # C statements over c0.., i; every pointer parameter by name
    comment: str
    index_t: str
    dtypes: tuple[str, ...] = ()  # storage dtypes whose conversion helpers the body calls

    @property
    def work(self) -> int:
        return prod(self.shape)


def make_index_kernel(family: str, shape: Sequence[int], params: Sequence[Param], body: Sequence[str], comment: str,
                      *, extents: Sequence[int] = (), dtypes: Sequence[str] = ()) -> IndexKernelSpec:
    """``extents``: element counts of the tensors the body indexes (64-bit indices past 2^31)."""
    shape = tuple(int(d) for d in shape)
    return IndexKernelSpec(family, shape, tuple(params), tuple(body), comment,
                           index_type(prod(shape), *extents),
                           tuple(d for d in dict.fromkeys(dtypes) if d in HALF_TYPES))


def render_index_kernel(spec: IndexKernelSpec) -> Kernel:
    name = kernel_name(spec.family, spec)
    I = spec.index_t
    n = prod(spec.shape)
    L = [f"for ({I} i = ({I})blockIdx.x * {THREADS} + threadIdx.x; i < {n}; i += ({I})gridDim.x * {THREADS}) {{"]
    L += ["    " + s for s in decompose("i", spec.shape, "c", I)]
    L += ["    " + s for s in spec.body]
    L.append("}")
    src = kernel_source(name, THREADS, spec.params, L, spec.comment)
    return Kernel(name, src, spec.params, half_helpers(*spec.dtypes), False, spec)


# -- small printing helpers ------------------------------------------------------------------------


def ptr(name: str, dtype: str, const: bool = True) -> Param:
    return Param(name, f"{'const ' if const else ''}{ctype_of(dtype)}*")


def linear(coords: Sequence[str], strides: Sequence[int]) -> str:
    terms = [c if s == 1 else f"{c} * {s}" for c, s in zip(coords, strides) if s != 0]
    return " + ".join(terms) if terms else "0"


def coords(n: int, prefix: str = "c") -> list[str]:
    return [f"{prefix}{d}" for d in range(n)]


def _index_in_range(var: str, extent: int) -> list[str]:
    """``var`` (a long long read from an index tensor) with negatives counted from the end."""
    return [f"if ({var} < 0) {var} += {extent};"]


def load(dtype: str, expr: str) -> str:
    """An element as its compute type (float for 16-bit floats)."""
    return _load(dtype, expr)


def store(dtype: str, expr: str) -> str:
    return _store(dtype, expr)


def zero(dtype: str) -> str:
    return f"({ctype_of(dtype)})0"


# -- gathers -----------------------------------------------------------------------------------------


def gather_elements_body(data_shape, idx_shape, axis: int, dtype: str) -> list[str]:
    """``y[c] = x[c with c[axis] = idx[c]]``; an index outside the axis reads zero."""
    xs = contiguous_strides(data_shape)
    c = coords(len(idx_shape))
    src = [f"j * {xs[d]}" if d == axis else f"{c[d]} * {xs[d]}" for d in range(len(c))]
    return ["long long j = (long long)ix[i];", *_index_in_range("j", data_shape[axis]),
            f"y[i] = (j >= 0 && j < {data_shape[axis]}) ? x[{' + '.join(src)}] : {zero(dtype)};"]


def gather_nd_body(data_shape, idx_shape, batch_dims: int, dtype: str) -> list[str]:
    """``y[b.., q.., r..] = x[b.., idx[b.., q.., :], r..]``."""
    k = idx_shape[-1]
    xs = contiguous_strides(data_shape)
    nq = len(idx_shape) - 1  # batch and query coordinates of the output
    c = coords(nq + len(data_shape) - batch_dims - k)
    lines = [f"long long o = {linear(c[:batch_dims], xs[:batch_dims])};", "bool ok = true;",
             f"const long long ib = (long long)({linear(c[:nq], contiguous_strides(idx_shape[:-1]))}) * {k};"]
    for t in range(k):
        d = batch_dims + t
        lines += [f"{{ long long j = (long long)ix[ib + {t}];", "  " + _index_in_range("j", data_shape[d])[0],
                  f"  ok = ok && j >= 0 && j < {data_shape[d]}; o += j * {xs[d]}; }}"]
    rest = linear(c[nq:], xs[batch_dims + k:])
    lines.append(f"y[i] = ok ? x[o + {rest}] : {zero(dtype)};")
    return lines


def tile_body(in_shape) -> list[str]:
    c = coords(len(in_shape))
    xs = contiguous_strides(in_shape)
    return [f"y[i] = x[{linear([f'({cc} % {n})' for cc, n in zip(c, in_shape)], xs) if in_shape else '0'}];"]


def one_hot_body(idx_shape, depth: int, axis: int) -> list[str]:
    """``y[c] = idx[c without axis] == c[axis] ? on : off`` (``v`` holds ``[off, on]``)."""
    c = coords(len(idx_shape) + 1)
    rest = c[:axis] + c[axis + 1:]
    return [f"long long j = (long long)ix[{linear(rest, contiguous_strides(idx_shape))}];",
            *_index_in_range("j", depth), f"y[i] = (j == (long long){c[axis]}) ? v[1] : v[0];"]


def trilu_body(upper: bool, k: int, dtype: str, rank: int) -> list[str]:
    r, col = f"c{rank - 2}", f"c{rank - 1}"
    keep = f"(long long){col} - (long long){r} {'>=' if upper else '<='} {k}LL"
    return [f"y[i] = ({keep}) ? x[i] : {zero(dtype)};"]


def eye_like_body(k: int, dtype: str) -> list[str]:
    one = c_literal(1, compute_dtype(dtype))
    val = store(dtype, one) if dtype in HALF_TYPES else one
    return [f"y[i] = ((long long)c1 - (long long)c0 == {k}LL) ? ({ctype_of(dtype)}){val} : {zero(dtype)};"]


def arg_reduce_body(in_shape, axis: int, keepdims: bool, largest: bool, last: bool, dtype: str) -> list[str]:
    """Index of the first extreme element along ``axis`` (``last``: the first walking from the
    end, as the reference flips the axis); a NaN wins over numbers, the first NaN met stays."""
    xs = contiguous_strides(in_shape)
    r, n = len(in_shape), in_shape[axis]
    oc = coords(r if keepdims else r - 1)
    src = [oc[d] if d < axis or keepdims else oc[d - 1] for d in range(r) if d != axis]
    base = linear(src, [xs[d] for d in range(r) if d != axis])
    T = ctype_of(compute_dtype(dtype))
    nan = " || v != v" if compute_dtype(dtype) in ("float32", "float64") else ""
    first, step, stop = (n - 1, -1, "t >= 0") if last else (0, 1, f"t < {n}")
    return [f"const long long b = {base};", f"{T} best = {load(dtype, f'x[b + {first} * {xs[axis]}]')};",
            f"long long at = {first};",
            f"for (long long t = {first + step}; {stop}; t += {step}) {{",
            f"    const {T} v = {load(dtype, f'x[b + t * {xs[axis]}]')};",
            f"    if (best == best && (v {'>' if largest else '<'} best{nan})) {{ best = v; at = t; }}", "}",
            "y[i] = at;"]


def lrn_body(shape, size: int, alpha: float, beta: float, bias: float, dtype: str) -> list[str]:
    """``x / (bias + alpha / size * sum of x^2 over the channel window) ^ beta``."""
    xs = contiguous_strides(shape)
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    C = shape[1]
    return ["float s = 0.0f;",
            f"for (long long t = (long long)c1 - {lo}; t <= (long long)c1 + {hi}; ++t) {{",
            f"    if (t < 0 || t >= {C}) continue;",
            f"    const float v = {load(dtype, f'x[i + (t - (long long)c1) * {xs[1]}]')}; s += v * v;", "}",
            f"const float a = {load(dtype, 'x[i]')};",
            f"const float r = a / powf({c_literal(bias, 'float32')} + {c_literal(alpha / size, 'float32')} * s, "
            f"{c_literal(beta, 'float32')});",
            f"y[i] = {store(dtype, 'r')};"]


def einsum_body(terms: Sequence[str], out: str, strides: Sequence[Sequence[int]], sizes: dict[str, int],
                dtypes: Sequence[str], out_dtype: str) -> list[str]:
    """Each output element: the sum over the letters not in the output of the operands' product.
    Letters are explicit (no ``...``), ``strides`` per operand dim (0 where it broadcasts); the
    accumulator is the compute type of the output."""
    red = [ch for ch in dict.fromkeys("".join(terms)) if ch not in out]
    var = {ch: f"c{k}" for k, ch in enumerate(out)}
    var.update({ch: f"r{k}" for k, ch in enumerate(red)})
    T = ctype_of(compute_dtype(out_dtype))
    lines = [f"{T} acc = ({T})0;"]
    for k, ch in enumerate(red):
        lines.append(f"{'    ' * k}for (long long r{k} = 0; r{k} < {sizes[ch]}; ++r{k}) {{")
    ind = "    " * len(red)
    prod_terms = []
    for j, (t, st) in enumerate(zip(terms, strides)):
        prod_terms.append(f"({T}){load(dtypes[j], f'x{j}[{linear([var[ch] for ch in t], st)}]')}")
    lines.append(f"{ind}acc += {' * '.join(prod_terms) or f'({T})1'};")
    for k in reversed(range(len(red))):
        lines.append(f"{'    ' * k}}}")
    lines.append(f"y[i] = {store(out_dtype, 'acc')};")
    return lines


def conv_transpose_body(x_shape, w_shape, out_shape, strides, dilations, begins, group: int, has_bias: bool,
                        dtype: str) -> list[str]:
    """``y[n, m, o..] = b[m] + sum over the group's input channels and the kernel taps k with
    o + begin = i * stride + k * dilation of x[n, c, i..] * w[c, m mod Mg, k..]``."""
    r = len(x_shape) - 2
    mg = w_shape[1]
    cg = x_shape[1] // group
    xs, ws = contiguous_strides(x_shape), contiguous_strides(w_shape)
    lines = ["float acc = " + (load(dtype, "b[c1]") if has_bias else "0.0f") + ";",
             f"const long long g = (long long)c1 / {mg}, mm = (long long)c1 % {mg};",
             f"for (long long ci = g * {cg}; ci < (g + 1) * {cg}; ++ci) {{"]
    ind = "    "
    for d in range(r):
        lines.append(f"{ind * (d + 1)}for (long long k{d} = 0; k{d} < {w_shape[2 + d]}; ++k{d}) {{")
        pad = ind * (d + 2)
        lines.append(f"{pad}const long long p{d} = (long long)c{2 + d} + {begins[d]} - k{d} * {dilations[d]};")
        s = strides[d]
        lines.append(f"{pad}if (p{d} < 0 || p{d} % {s} != 0 || p{d} / {s} >= {x_shape[2 + d]}) continue;")
    ind_in = ind * (r + 1)
    xi = " + ".join([f"(long long)c0 * {xs[0]}", f"ci * {xs[1]}"] + [f"(p{d} / {strides[d]}) * {xs[2 + d]}"
                                                                      for d in range(r)])
    wi = " + ".join([f"ci * {ws[0]}", f"mm * {ws[1]}"] + [f"k{d} * {ws[2 + d]}" for d in range(r)])
    lines.append(f"{ind_in}acc += {load(dtype, f'x[{xi}]')} * {load(dtype, f'w[{wi}]')};")
    for d in reversed(range(r)):
        lines.append(f"{ind * (d + 1)}}}")
    lines.append("}")
    lines.append(f"y[i] = {store(dtype, 'acc')};")
    return lines


# -- integer-exact binary ops: a body per op where C's operator is not NumPy's ---------------------


def mod_body(a_strides, b_strides, fmod: bool, dtype: str, rank: int) -> list[str]:
    """``y = a mod b`` as NumPy's ``fmod`` (``fmod``: the dividend's sign) or ``mod`` (the
    divisor's sign; a float zero takes the divisor's sign). An integer divisor of 0 gives 0, and
    so does -1 (C's ``MIN % -1`` traps on x86); a float divisor of 0 gives NaN (``fmod``)."""
    cs = coords(rank)
    c, t = compute_dtype(dtype), ctype_of(compute_dtype(dtype))
    L = [f"const {t} a = {load(dtype, f'pa[{linear(cs, a_strides)}]')};",
         f"const {t} b = {load(dtype, f'pb[{linear(cs, b_strides)}]')};"]
    if c in ("float32", "float64"):
        fn, sign = ("fmodf", "copysignf") if c == "float32" else ("fmod", "copysign")
        L.append(f"{t} r = {fn}(a, b);")
        if not fmod:
            L.append(f"if (r != 0) {{ if ((b < 0) != (r < 0)) r += b; }} else r = {sign}(({t})0, b);")
    else:
        signed = not c.startswith("uint") and c != "bool"
        L.append(f"{t} r = (b == 0{' || b == -1' if signed else ''}) ? ({t})0 : ({t})(a % b);")
        if not fmod and signed:
            L.append("if (r != 0 && ((r < 0) != (b < 0))) r += b;")
    return L + [f"y[i] = {store(dtype, 'r')};"]


def bit_shift_body(a_strides, b_strides, left: bool, dtype: str, rank: int) -> list[str]:
    """``y = a << b`` or ``a >> b`` with NumPy's rules where C has none: a shift by the type's
    width or more (a negative one included) gives 0, or -1 right-shifting a negative value; a
    left shift wraps (done unsigned); a right shift of a signed value is arithmetic."""
    cs = coords(rank)
    t, bits = ctype_of(dtype), 8 * int(np.dtype(dtype).itemsize)
    wide = f"(unsigned long long)b < {bits}ULL"
    if left:
        shifted, past = f"({t})((unsigned long long)a << b)", f"({t})0"
    else:
        signed = not dtype.startswith("uint")
        shifted, past = f"({t})(a >> b)", (f"(a < 0 ? ({t})-1 : ({t})0)" if signed else f"({t})0")
    return [f"const {t} a = pa[{linear(cs, a_strides)}];",
            f"const {t} b = pb[{linear(cs, b_strides)}];",
            f"y[i] = ({wide}) ? {shifted} : {past};"]


# -- fiber-serial kernels: the iteration shape leaves one axis out ---------------------------------


def fiber_base(shape, axis: int) -> tuple[list[str], int]:
    """C lines defining ``b``, the offset of this thread's fiber (coords over ``shape`` without
    ``axis``), and the element stride along ``axis``."""
    st = contiguous_strides(shape)
    return [f"const long long b = {linear(coords(len(shape) - 1), st[:axis] + st[axis + 1:])};"], st[axis]


def cumsum_body(shape, axis: int, exclusive: bool, reverse: bool, dtype: str, product: bool = False) -> list[str]:
    """One thread per fiber along ``axis``: the running sum (``product``: CumProd's running
    product) in the compute type, stored at each step."""
    base, s = fiber_base(shape, axis)
    n = shape[axis]
    T = ctype_of(compute_dtype(dtype))
    t = f"({n - 1} - t)" if reverse else "t"
    step = "    acc *= v;" if product else "    acc += v;"
    lines = [*base, f"{T} acc = ({T}){int(product)};", f"for (long long t = 0; t < {n}; ++t) {{",
             f"    const long long at = b + {t} * {s};", f"    const {T} v = {load(dtype, 'x[at]')};"]
    if exclusive:
        lines += [f"    y[at] = {store(dtype, 'acc')};", step]
    else:
        lines += [step, f"    y[at] = {store(dtype, 'acc')};"]
    lines.append("}")
    return lines


REDUCE_EXPR = {"add": "({d} + {u})", "mul": "({d} * {u})", "max": "(({u} > {d}) ? {u} : {d})",
               "min": "(({u} < {d}) ? {u} : {d})"}


def _combine(reduction: str, dtype: str, dst: str, upd: str) -> str:
    """``dst = upd`` or ``dst = dst (+ * max min) upd``, 16-bit floats combined in float32."""
    if reduction == "none":
        return f"{dst} = {upd};"
    return f"{dst} = {store(dtype, REDUCE_EXPR[reduction].format(d=load(dtype, dst), u=load(dtype, upd)))};"


def scatter_elements_body(data_shape, upd_shape, axis: int, reduction: str, dtype: str) -> list[str]:
    """One thread per fiber of ``updates`` along ``axis``: the destinations of a fiber lie on
    one fiber of the output, so no two threads meet; updates apply in order."""
    us = contiguous_strides(upd_shape)
    ds = contiguous_strides(data_shape)
    c = coords(len(upd_shape) - 1)
    ub = linear(c, us[:axis] + us[axis + 1:])
    db = linear(c, ds[:axis] + ds[axis + 1:])
    return [f"const long long ub = {ub}, db = {db};",
            f"for (long long t = 0; t < {upd_shape[axis]}; ++t) {{",
            f"    long long j = (long long)ix[ub + t * {us[axis]}];",
            "    " + _index_in_range("j", data_shape[axis])[0],
            f"    if (j < 0 || j >= {data_shape[axis]}) continue;",
            "    " + _combine(reduction, dtype, f"y[db + j * {ds[axis]}]", f"u[ub + t * {us[axis]}]"), "}"]


def scatter_nd_body(data_shape, idx_shape, reduction: str, dtype: str) -> list[str]:
    """One thread per element of a slice (``data.shape[k:]``); the index tuples apply in order."""
    k = idx_shape[-1]
    n_upd = prod(idx_shape[:-1])
    ds = contiguous_strides(data_shape)
    slice_n = prod(data_shape[k:])
    lines = [f"for (long long q = 0; q < {n_upd}; ++q) {{", "    long long o = 0; bool ok = true;"]
    for t in range(k):
        lines += [f"    {{ long long j = (long long)ix[q * {k} + {t}];",
                  "      " + _index_in_range("j", data_shape[t])[0],
                  f"      ok = ok && j >= 0 && j < {data_shape[t]}; o += j * {ds[t]}; }}"]
    lines += ["    if (!ok) continue;", "    " + _combine(reduction, dtype, "y[o + i]", f"u[q * {slice_n} + i]"), "}"]
    return lines


def topk_body(shape, axis: int, k: int, largest: bool, dtype: str) -> list[str]:
    """One thread per element: its rank in the fiber (ties by lower index first, as the
    reference's stable sort); ranks below ``k`` store value and index."""
    st = contiguous_strides(shape)
    out_shape = tuple(k if d == axis else n for d, n in enumerate(shape))
    os_ = contiguous_strides(out_shape)
    c = coords(len(shape))
    n = shape[axis]
    T = ctype_of(compute_dtype(dtype))
    better = ">" if largest else "<"
    base_x = linear([cc for d, cc in enumerate(c) if d != axis], [s for d, s in enumerate(st) if d != axis])
    base_y = linear([cc for d, cc in enumerate(c) if d != axis], [s for d, s in enumerate(os_) if d != axis])
    me = f"c{axis}"
    return [f"const long long b = {base_x}, ob = {base_y};", f"const {T} v = {load(dtype, 'x[i]')};",
            "long long rank = 0;", f"for (long long t = 0; t < {n}; ++t) {{",
            f"    const {T} w = {load(dtype, f'x[b + t * {st[axis]}]')};",
            f"    rank += (w {better} v) || (w == v && t < (long long){me});", "}",
            f"if (rank < {k}) {{ y[ob + rank * {os_[axis]}] = x[i]; yi[ob + rank * {os_[axis]}] = (long long){me}; }}"]


