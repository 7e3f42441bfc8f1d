"""Elementwise / broadcast kernels (and every strided copy: Transpose, Slice,
Expand, Concat and Split slots are elementwise identities over views).

Each thread handles ``vec`` consecutive elements in a grid-stride loop. Shapes
and strides are baked into the source; dimensions are first collapsed (size-1
dims dropped, neighbours merged where every view is contiguous across them),
so a contiguous op is a 1-D loop and, when sizes and offsets allow, reads and
writes ``float4``.

>>> from graphopt.expr import parse_exprs
>>> from graphopt.plugins.cuda.exprc import expr_fn
>>> spec = make_elementwise((4, 5), View.contiguous("float32", (4, 5)), [View("float32", (0, 1))],
...                         expr_fn(parse_exprs("relu(in0)"), ["float32"]))
>>> spec.shape, spec.inputs[0].strides       # a row broadcast down the rows
((4, 5), (0, 1))
>>> "go_ew_" in render_elementwise(spec).name
True
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .kernel import Kernel, Param, ctype_of, kernel_source
from .scalar import (HALF_TYPES, ScalarFn, compute_dtype, decompose, half_helpers, index_type, load, max_extent,
                     offset_expr, store)
from .specs import MAX_BLOCKS, View, ceil_div, kernel_name, prod, round_up


@dataclass(frozen=True)
class ElementwiseSpec:
    shape: tuple[int, ...]  # iteration (= output) shape after collapsing
    outs: tuple[View, ...]  # one per result of ``fn``
    inputs: tuple[View, ...]
    fn: ScalarFn
    threads: int
    vec: int
    index_t: str

    @property
    def numel(self) -> int:
        return prod(self.shape)

    def grid(self) -> tuple[int, int, int]:
        return (min(max(ceil_div(self.numel, self.threads * self.vec), 1), MAX_BLOCKS), 1, 1)

    def block(self) -> tuple[int, int, int]:
        return (self.threads, 1, 1)


def collapse(shape: Sequence[int], views: Sequence[View]) -> tuple[tuple[int, ...], list[View]]:
    """Drop size-1 dims and merge neighbours that every view walks contiguously."""
    keep = [i for i, d in enumerate(shape) if d != 1]
    dims = [shape[i] for i in keep]
    strides = [[v.strides[i] for i in keep] for v in views]
    i = len(dims) - 1
    while i > 0:
        if all(s[i - 1] == s[i] * dims[i] for s in strides):
            dims[i - 1] *= dims[i]
            del dims[i]
            for s in strides:
                s[i - 1] = s[i]
                del s[i]
        i -= 1
    return tuple(dims), [View(v.dtype, tuple(s), v.offset) for v, s in zip(views, strides)]


def make_elementwise(shape: Sequence[int], out: View | Sequence[View], inputs: Sequence[View],
                     fn: ScalarFn) -> ElementwiseSpec:
    """Collapse dimensions and choose threads, vector width and index width for this shape.
    ``out`` is one view per result of ``fn`` (all of ``shape``)."""
    outs = (out,) if isinstance(out, View) else tuple(out)
    if fn.arity != len(inputs) or len(fn.out_dtypes) != len(outs):
        raise ValueError(f"{fn.key} maps {fn.arity} inputs to {len(fn.out_dtypes)} results; "
                         f"{len(inputs)} inputs and {len(outs)} outputs given")
    shape = tuple(int(d) for d in shape)
    dims, views = collapse(shape, [*outs, *inputs])
    if any(d == 0 for d in shape):
        dims, views = (0,), [View(v.dtype, (0,), v.offset) for v in views]
    out_vs, in_vs = tuple(views[:len(outs)]), tuple(views[len(outs):])
    out_v = out_vs[0]
    numel = prod(dims)
    vec = 1
    if (len(dims) == 1 and numel % 4 == 0 and numel >= 4 and out_v.strides == (1,) and out_v.offset % 4 == 0
            and len(out_vs) == 1 and out_v.dtype == "float32"
            and all(v.dtype == "float32" and (v.strides == (0,) or (v.strides == (1,) and v.offset % 4 == 0))
                    for v in in_vs)):
        vec = 4
    threads = min(256, max(32, round_up(ceil_div(max(numel, 1), vec), 32)))
    idx = index_type(numel, *(max_extent(dims, v.strides, v.offset) for v in views))
    return ElementwiseSpec(dims, out_vs, in_vs, fn, threads, vec, idx)


def render_elementwise(spec: ElementwiseSpec) -> Kernel:
    name = kernel_name("ew", spec)
    ys = [f"y{k}" if len(spec.outs) > 1 else "y" for k in range(len(spec.outs))]
    params = [Param(y, f"{ctype_of(v.dtype)}*") for y, v in zip(ys, spec.outs)]
    params += [Param(f"x{i}", f"const {ctype_of(v.dtype)}*") for i, v in enumerate(spec.inputs)]
    I = spec.index_t
    T = spec.threads
    body: list[str] = []
    if spec.vec == 4:
        n = spec.numel // 4
        body.append(f"for ({I} i = ({I})blockIdx.x * {T} + threadIdx.x; i < {n}; i += ({I})gridDim.x * {T}) {{")
        for j, v in enumerate(spec.inputs):
            if v.strides == (0,):
                body.append(f"    const float b{j} = x{j}[{v.offset}];")
            else:
                body.append(f"    const float4 a{j} = reinterpret_cast<const float4*>(x{j} + {v.offset})[i];")
        body.append("    float4 r;")
        for lane in "xyzw":
            ins = [f"b{j}" if v.strides == (0,) else f"a{j}.{lane}" for j, v in enumerate(spec.inputs)]
            body.append("    {")
            body += ["        " + s for s in spec.fn.emit(ins, "v")]
            body.append(f"        r.{lane} = v;")
            body.append("    }")
        body.append(f"    reinterpret_cast<float4*>(y + {spec.outs[0].offset})[i] = r;")
        body.append("}")
    else:
        n = spec.numel
        body.append(f"for ({I} i = ({I})blockIdx.x * {T} + threadIdx.x; i < {n}; i += ({I})gridDim.x * {T}) {{")
        body += ["    " + s for s in decompose("i", spec.shape, "c", I)]
        coords = [f"c{d}" for d in range(len(spec.shape))]
        ins = []
        moves = spec.fn.out_dtype in HALF_TYPES  # a move of 16-bit float bits: no conversions
        for j, v in enumerate(spec.inputs):
            ct = ctype_of(v.dtype if moves else compute_dtype(v.dtype))
            elem = f"x{j}[{offset_expr(coords, v.strides, v.offset)}]"
            body.append(f"    const {ct} a{j} = {elem if moves else load(v.dtype, elem)};")
            ins.append(f"a{j}")
        vs = [f"v{k}" for k in range(len(spec.outs))]
        body += ["    " + s for s in spec.fn.emit_many(ins, vs)]
        for y, v, ov in zip(ys, vs, spec.outs):
            body.append(f"    {y}[{offset_expr(coords, ov.strides, ov.offset)}] = {v if moves else store(ov.dtype, v)};")
        body.append("}")
    src = kernel_source(name, T, params, body,
                        f"elementwise {spec.fn.key} over {list(spec.shape)}: {T} threads, vec {spec.vec}, {I} indices")
    helpers = spec.fn.helpers + half_helpers(*(v.dtype for v in (*spec.outs, *spec.inputs)))
    return Kernel(name, src, tuple(params), helpers, False, spec)
