"""Prepared kernels: per-node state the CPU backend computes once, at compile time.

The registry's NumPy kernels are the definition of every op; they take the
attributes as a dict and re-derive everything on each call. For the ops that
dominate inference (Conv, MatMul, Gemm, their fused forms, pointwise ops and
expressions, BatchNormalization, LayerNormalization, reshapes) ``prepare``
returns a ``Prepared`` kernel instead: constant operands already converted
(a Conv weight as its GEMM matrix, a BatchNormalization as one scale and
shift), expressions compiled to a straight line of NumPy ufunc calls that
write into buffers which die there (``out=``), shape-dependent geometry cached
per input shape. It computes the same thing with the same NumPy operations
(results equal to float32 rounding); anything it does not recognize (other
dtypes, runtime weights, unusual attributes) gets ``None`` and runs on the
registry kernel.

>>> import numpy as np
>>> from graphopt.builder import GraphBuilder
>>> b = GraphBuilder(); x = b.input("x", (1, 2, 4, 4))
>>> y = b.op("Conv", x, np.ones((3, 2, 1, 1), np.float32)); _ = b.output(y, "y")
>>> node = next(iter(b.graph)); p = prepare(node, {"group": 1}, [None, node.inputs[1].const])
>>> p.inputs, p.fn(np.ones((1, 2, 4, 4), np.float32)).shape
((0,), (1, 3, 4, 4))
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from graphopt import dtypes
from graphopt.expr import Expr, Input, node_to_expr, nodes_in_order, parse_exprs
from graphopt.ir import Node
from graphopt.ops.registry import KernelContext, get_schema
from graphopt.ops.windows import geometry, spatial_attrs, window_view

from .exprcode import ExprProgram, Source

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass
class Prepared:
    """``fn(*arrays)`` computes the node's single output from the node inputs ``inputs``
    (indices; constant operands are already inside ``fn``).

    ``fresh``: the result is a new array that nothing else references (so a later node may
    overwrite it when it dies there). ``donate``: the position in ``inputs`` whose array
    ``fn_inplace`` may overwrite with the result (the interpreter uses it when that array
    is fresh and dies at this node). ``build(inplace)`` makes ``fn`` or ``fn_inplace`` where
    they are None, on first use (``function``): generating both for a long expression
    costs as much as the rest of the compile.
    """

    fn: Callable | None
    inputs: tuple[int, ...]
    fresh: bool = True
    donate: int | None = None
    fn_inplace: Callable | None = None
    build: Callable[[bool], Callable] | None = None

    def function(self, inplace: bool = False) -> Callable:
        """``fn_inplace`` or ``fn``, built now if it was left to ``build``."""
        f = self.fn_inplace if inplace else self.fn
        if f is None and self.build is not None:
            f = self.build(inplace)
            if inplace:
                self.fn_inplace = f
            else:
                self.fn = f
        return f


class _Lazy:
    """A function made on its first call (a fallback that usually never runs)."""

    __slots__ = ("make", "fn")

    def __init__(self, make: Callable[[], Callable]):
        self.make, self.fn = make, None

    def __call__(self, *args):
        if self.fn is None:
            self.fn = self.make()
        return self.fn(*args)


def _dtype(v) -> np.dtype | None:
    t = None if v is None else v.type
    if t is None or not t.dtype or t.dtype == "string":
        return None
    try:
        return np.dtype(dtypes.to_numpy(t.dtype))
    except Exception:
        return None


def _static_shape(v) -> tuple | None:
    t = None if v is None else v.type
    if t is None or t.shape is None or not all(isinstance(d, int) for d in t.shape):
        return None
    return tuple(t.shape)


# ---------------------------------------------------------------------------
# pointwise nodes: an ExprProgram (exprcode.py) with the op's result semantics


def _finish(shape: tuple, r: np.ndarray, inputs) -> np.ndarray:
    """The result as an array of the op's broadcast shape that no input shares (as ``ops.fused._finish``)."""
    if r.shape != shape:
        return np.array(np.broadcast_to(r, shape))
    if any(r is x for x in inputs) or not r.flags.writeable:
        return np.array(r)
    return r


def _bcast(r: np.ndarray, shape: tuple) -> np.ndarray:
    return np.array(np.broadcast_to(r, shape))


def _args(names: Sequence[str]) -> str:
    """``names`` as the source of a tuple."""
    return "(" + "".join(f"{n}, " for n in names) + ")"


def _constant_operands(consts: Sequence | None, indices, shape: tuple | None) -> dict[int, np.ndarray]:
    """The constant inputs among ``indices``, to be bound into the generated code. One that
    broadcasts over a (static, small) result ``shape`` is tiled to it: NumPy broadcasts a
    row over a short last axis one row at a time (1 us to add a bias to 16 rows of 64),
    a same-shape operand in one pass (0.4 us), with the same values."""
    out = {}
    for i in indices:
        c = consts[i] if consts is not None and i < len(consts) else None
        if not isinstance(c, np.ndarray):
            continue
        if shape and 1 < c.size < math.prod(shape) <= TILE_MAX:
            try:
                c = np.ascontiguousarray(np.broadcast_to(c, shape))
            except ValueError:
                pass
        out[i] = c
    return out


def _expression(node: Node, expr: Expr, consts: Sequence | None = None) -> Prepared | None:
    """A pointwise node of float output as an ``ExprProgram`` (the first input donatable,
    constant inputs bound in)."""
    if any(v is None for v in node.inputs) or _dtype(node.outputs[0]) not in FLOATS:
        return None
    dts = [_dtype(v) for v in node.inputs]
    n_in = len(node.inputs)
    static = _static_shape(node.outputs[0])
    used = sorted({n.index for n in nodes_in_order([expr]) if isinstance(n, Input)})
    shapes: dict[tuple, tuple] = {}

    def shape_of(xs):  # the broadcast shape of the inputs the expression reads, once per input shapes
        key = tuple(xs[i].shape for i in used)
        got = shapes.get(key)
        if got is None:
            got = shapes[key] = np.broadcast_shapes(*key)
        return got

    bound = _constant_operands(consts, range(n_in), static)
    runtime = tuple(i for i in range(n_in) if i not in bound)

    programs: list[ExprProgram] = []  # made on first use: the native program usually runs instead

    def build(scratch: tuple[int, ...]) -> Callable:
        if not programs:
            programs.append(ExprProgram(expr, dts))
        prog = programs[0]
        src = Source()
        params = [src.ref(bound[i], "k") if i in bound else f"in{i}" for i in range(n_in)]
        src.line(f"def fn({', '.join(params[i] for i in runtime)}):")
        r = prog.emit(src, params, scratch)
        if prog.fresh_result:
            # a ufunc's result: new (or a given-up input), writeable, of the inputs' broadcast shape,
            # but a NumPy scalar where they are all 0-d
            if static:
                src.line(f"if {r}.shape != {static!r}:", 1)
                src.line(f"{r} = {src.ref(_bcast, '_bcast')}({r}, {static!r})", 2)
            else:
                src.line(f"if {r}.__class__ is not {src.ref(np.ndarray, 'ndarray')}:", 1)
                src.line(f"{r} = {src.ref(np.array, 'array')}({r})", 2)
            src.line(f"return {r}", 1)
        else:
            shape = repr(static) if static is not None else f"{src.ref(shape_of, 'shape_of')}({_args(params)})"
            kept = _args([p for i, p in enumerate(params) if i not in scratch])
            src.line(f"return {src.ref(_finish, '_finish')}({shape}, {r}, {kept})", 1)
        return src.function("fn", f"graphopt {node.op_type}")

    donatable = static is not None and dts[0] in FLOATS and _static_shape(node.inputs[0]) == static and 0 not in bound
    native = _native_expression(node, expr, dts, consts, runtime, lambda: build(()))
    if native is not None:
        fn, fn_inplace = native
        return Prepared(fn, runtime, donate=0 if donatable and fn_inplace else None, fn_inplace=fn_inplace)
    if donatable:
        return Prepared(None, runtime, donate=0, build=lambda inplace: build((0,) if inplace else ()))
    return Prepared(None, runtime, build=lambda inplace: build(()))


def _native_expression(node: Node, expr: Expr, dts: list, consts, runtime: tuple[int, ...],
                       numpy_fn: Callable[[], Callable]) -> tuple[Callable, Callable | None] | None:
    """``(fn, fn_inplace or None)`` running ``expr`` as a native program (``nativeexpr.py``) over
    the node's inputs (constant ones bound in), where one takes it and beats NumPy; arrays it
    does not take run the NumPy function ``numpy_fn()`` makes (on first need)."""
    if _dtype(node.outputs[0]) != np.float32:
        return None
    from . import nativeexpr

    names = [None if d is None else dtypes.from_numpy(d) for d in dts]
    prog = nativeexpr.compile_program([expr], names)
    if prog is None or not prog.worth_it or prog.out_kinds != [0]:
        return None
    fallback = _Lazy(numpy_fn)
    src = Source()
    params = [f"in{i}" for i in runtime]
    args = [f"in{i}" if i in runtime else src.ref(consts[i], "k") for i in range(len(node.inputs))]
    run, fb = src.ref(prog.run, "run"), src.ref(fallback, "fallback")
    fns = []
    for out in ("", ", in0"):
        if out and (0 not in runtime or names[0] != "float32"):
            fns.append(None)
            continue
        src.line(f"def fn{len(fns)}({', '.join(params)}):")
        src.line(f"r = {run}({_args(args)}{out})", 1)
        src.line(f"return {fb}({', '.join(params)}) if r is None else r", 1)
        fns.append(src.function(f"fn{len(fns)}", f"graphopt native {node.op_type}"))
    for f in fns:
        if f is not None:
            f.native = True
    return fns[0], fns[1]


def _prepare_pointwise(node: Node, attrs: dict, consts) -> Prepared | None:
    expr = node_to_expr(node, [Input(i) if v is not None else None for i, v in enumerate(node.inputs)])
    prep = None if expr is None else _expression(node, expr, consts)
    if prep is not None and node.op_type == "Mul":
        return _channel_scale(node, prep) or prep
    return prep


def _channel_scale(node: Node, prep: Prepared) -> Prepared | None:
    """``Mul(x, s)`` with ``s`` of shape (N, C, 1, 1) (a squeeze-excitation gate; either operand
    order) on the native kernel (``native_small.prepare_channel_scale``), ``prep`` running what
    it does not take; None for other Muls."""
    shapes = [_static_shape(v) for v in node.inputs]
    out = _static_shape(node.outputs[0])
    if prep.inputs != (0, 1) or out is None or None in shapes or _dtype(node.outputs[0]) != np.float32 \
            or any(_dtype(v) != np.float32 for v in node.inputs) or out not in shapes:
        return None
    from . import native_small

    big = shapes.index(out)
    inplace = _Lazy(lambda: prep.function(True)) if prep.donate == 0 else None
    got = native_small.prepare_channel_scale(out, shapes[1 - big], big, _Lazy(prep.function), inplace)
    if got is None:
        return None
    fn, fn_inplace = got
    return Prepared(fn, prep.inputs, donate=None if fn_inplace is None else 0, fn_inplace=fn_inplace)


def _prepare_fused_elementwise(node: Node, attrs: dict, consts) -> Prepared | None:
    exprs = parse_exprs(attrs["expr"]) if attrs["expr"] else [Input(0)]
    return _expression(node, exprs[0], consts) if len(exprs) == 1 == len(node.outputs) else None


# ---------------------------------------------------------------------------
# epilogues of the fused base ops


def _with_epilogue(node: Node, attrs: dict, n_base: int, base: Callable, base_inputs: tuple[int, ...],
                   bound: Sequence = (), contiguous: bool = False, consts: Sequence | None = None
                   ) -> Prepared | None:
    """``base``, then the node's ``epilogue`` over its result (``acc``, scratch) and the extra inputs.

    ``base`` is called on the arrays of ``base_inputs`` followed by the constants ``bound``;
    ``contiguous``: it always returns a new C-contiguous array (else that is checked per call);
    ``consts``: the node's constant inputs, bound in (``_constant_operands``).
    """
    text = attrs.get("epilogue", "")
    (expr,) = parse_exprs(text) if text else [Input(0)]
    nb = len(base_inputs)
    if expr == Input(0):
        return Prepared(_bind_trailing(base, nb, bound), base_inputs)
    extra = tuple(range(n_base, len(node.inputs)))
    if any(node.inputs[i] is None for i in extra):
        return None
    fixed = _constant_operands(consts, extra, _static_shape(node.outputs[0]))
    runtime = tuple(i for i in extra if i not in fixed)

    def numpy_fn() -> Callable:
        prog = ExprProgram(expr, [_dtype(node.inputs[0])] + [_dtype(node.inputs[i]) for i in extra])
        src = Source()
        params = [f"x{i}" for i in range(nb)]
        names = ["acc"] + [src.ref(fixed[i], "k") if i in fixed else f"in{j + 1}" for j, i in enumerate(extra)]
        src.line(f"def fn({', '.join(params + [n for n in names[1:] if n.startswith('in')])}):")
        call_args = params + [src.ref(c, "b") for c in bound]
        src.line(f"acc = {src.ref(base, 'base')}({', '.join(call_args)})", 1)
        if contiguous:
            r = prog.emit(src, names, (0,), 1)
        else:
            src.line("if acc.flags.c_contiguous:", 1)
            r = prog.emit(src, names, (0,), 2)
            src.line("else:  # a strided acc (a Conv's cropped flat result) is read once into a new contiguous array",
                     1)
            prog.emit(src, names, (), 2)
        src.line(f"if {r}.shape != acc.shape:", 1)
        src.line(f"{r} = {src.ref(np.ascontiguousarray, 'contiguous')}({src.ref(np.broadcast_to, 'bto')}({r}, "
                 f"acc.shape))", 2)
        src.line(f"return {r}", 1)
        return src.function("fn", f"graphopt {node.op_type}")

    if contiguous:
        native = _native_epilogue(node, expr, extra, consts, fixed, base, nb, bound, _Lazy(numpy_fn))
        if native is not None:
            return Prepared(native, base_inputs + runtime)
    return Prepared(numpy_fn(), base_inputs + runtime)


def _native_epilogue(node: Node, expr: Expr, extra: tuple[int, ...], consts, fixed: dict, base: Callable, nb: int,
                     bound: Sequence, numpy_fn: Callable) -> Callable | None:
    """``base``, then the epilogue as a native program written over ``acc`` (a new contiguous
    array), where one takes it and beats NumPy; ``numpy_fn`` runs what it does not take."""
    if _dtype(node.outputs[0]) != np.float32:
        return None
    from . import nativeexpr

    dts = [_dtype(node.inputs[0])] + [_dtype(node.inputs[i]) for i in extra]
    prog = nativeexpr.compile_program([expr], [None if d is None else dtypes.from_numpy(d) for d in dts])
    if prog is None or not prog.worth_it or prog.out_kinds != [0]:
        return None
    src = Source()
    params = [f"x{i}" for i in range(nb)]
    runtime = [f"in{j + 1}" for j, i in enumerate(extra) if i not in fixed]
    operands = ["acc"] + [src.ref(consts[i], "k") if i in fixed else f"in{j + 1}" for j, i in enumerate(extra)]
    src.line(f"def fn({', '.join(params + runtime)}):")
    src.line(f"acc = {src.ref(base, 'base')}({', '.join(params + [src.ref(c, 'b') for c in bound])})", 1)
    src.line(f"r = {src.ref(prog.run, 'run')}({_args(operands)}, acc)", 1)
    src.line(f"return {src.ref(numpy_fn, 'fallback')}({', '.join(params + runtime)}) if r is None else r", 1)
    fn = src.function("fn", f"graphopt native {node.op_type}")
    fn.native = True
    return fn


def _bind_trailing(fn: Callable, n: int, bound: Sequence) -> Callable:
    """``fn`` of ``n`` arrays followed by the constants ``bound``, as a function of the arrays."""
    if not bound:
        return fn
    src = Source()
    params = ", ".join(f"x{i}" for i in range(n))
    src.line(f"def fn({params}):")
    src.line(f"return {src.ref(fn, 'fn')}({', '.join([params] + [src.ref(c, 'b') for c in bound])})", 1)
    return src.function("fn", "graphopt bound")


# ---------------------------------------------------------------------------
# Conv: im2col (one copy out of a stride-trick view) and one GEMM per group, weights as matrices

FLAT_WASTE = 1.25  # most extra GEMM columns (padded row width / output width) the flat im2col may cost


def _zero_pad(x: np.ndarray, pb: Sequence[int], pe: Sequence[int], tail: int = 0,
              ws: "_Workspace | None" = None) -> np.ndarray:
    """``x`` (N, C, *S) zero-padded on its spatial axes, as (N, C, prod(padded S) + tail) when ``tail``.
    With a workspace the padded buffer is kept: its border stays zero, only the interior is written."""
    sizes = tuple(n + b + e for n, b, e in zip(x.shape[2:], pb, pe))
    shape = x.shape[:2] + (math.prod(sizes) + tail,)
    flat = np.zeros(shape, x.dtype) if ws is None else ws.get("pad", shape, x.dtype, zero=True)
    xp = flat[:, :, :math.prod(sizes)].reshape(x.shape[:2] + sizes)
    xp[(slice(None), slice(None)) + tuple(slice(b, b + n) for b, n in zip(pb, x.shape[2:]))] = x
    return flat if tail else xp


class _Workspace(threading.local):
    """Scratch buffers a kernel keeps between runs (im2col columns, padded inputs), one set per
    thread, so that several threads may run one executable. Large temporaries allocated on
    every run come from fresh pages (glibc maps big blocks and returns them when freed), and
    faulting them in cost as much as the GEMM itself on the sample CNNs."""

    def __init__(self):
        self.buffers: dict[tuple, np.ndarray] = {}

    def get(self, tag: str, shape: tuple, dtype, zero: bool = False) -> np.ndarray:
        key = (tag, shape, np.dtype(dtype))
        a = self.buffers.get(key)
        if a is None:
            a = self.buffers[key] = np.zeros(shape, dtype) if zero else np.empty(shape, dtype)
        return a


class _ConvGeometry:
    """How a Conv reads one input shape.

    Stride 1 ("flat"): the padded input is one flat row per channel, and the window at
    kernel offset k is the same row shifted by a constant, so im2col copies whole
    contiguous rows; the GEMM computes the output at every padded column (a few extra
    columns, dropped afterwards). Otherwise: the (N, C, *out, *kernel) window view.
    """

    def __init__(self, shape: tuple, ks: list[int], strides, dilations, attrs: dict):
        self.out, self.pb, self.pe = geometry(shape[2:], ks, attrs)
        self.padded = any(self.pb) or any(self.pe)
        psize = [n + b + e for n, b, e in zip(shape[2:], self.pb, self.pe)]
        waste = math.prod(psize[1:]) / max(1, math.prod(self.out[1:]))
        self.flat = all(s == 1 for s in strides) and math.prod(ks) > 1 and waste <= FLAT_WASTE
        if self.flat:
            fs = [math.prod(psize[i + 1:]) for i in range(len(ks))]  # flat stride of each spatial axis
            self.tail = sum((k - 1) * d * f for k, d, f in zip(ks[1:], dilations[1:], fs[1:]))
            self.cols = self.out[0] * fs[0]
            self.k_strides = tuple(d * f for d, f in zip(dilations, fs))
            self.full = (self.out[0], *psize[1:])
        self.o_size = math.prod(self.out)


def _conv_base(w: np.ndarray, b: np.ndarray | None, attrs: dict, activation: Callable | None = None) -> Callable:
    """``conv(x)``; ``activation(y)``, an epilogue of the result alone, runs on the whole GEMM result
    (contiguous, before the flat path's padded columns are dropped)."""
    ks = [int(k) for k in (attrs.get("kernel_shape") or w.shape[2:])]
    r = len(ks)
    m, cg = w.shape[:2]
    g = int(attrs.get("group", 1))
    strides, dilations, _, _ = spatial_attrs(attrs, ks)
    k_size = math.prod(ks)
    mg = m // g
    wmat = np.ascontiguousarray(w.reshape(g, mg, cg * k_size))
    w2 = wmat[0] if g == 1 else wmat
    bias = None if b is None else b.reshape((m, 1))
    pointwise = k_size == 1
    order = (0, 1, 2) + tuple(range(3 + r, 3 + 2 * r)) + tuple(range(3, 3 + r))
    cache: dict[tuple, _ConvGeometry] = {}
    ws = _Workspace()

    def conv(x):
        geo = cache.get(x.shape)
        if geo is None:
            if x.ndim != r + 2 or x.shape[1] != cg * g:
                raise ValueError(f"Conv input {list(x.shape)} does not fit weight {list(w.shape)}, group={g}")
            geo = cache[x.shape] = _ConvGeometry(x.shape, ks, strides, dilations, attrs)
        n = x.shape[0]
        shape = (n, cg * k_size) if g == 1 else (n, g, cg * k_size)
        if geo.flat:
            xp = _zero_pad(x, geo.pb, geo.pe, geo.tail or 1, ws)
            s = xp.strides
            v = np.lib.stride_tricks.as_strided(xp, (n, g * cg, *ks, geo.cols),
                                                (s[0], s[1], *(k * s[2] for k in geo.k_strides), s[2]))
            cols = ws.get("cols", shape + (geo.cols,), x.dtype)
            np.copyto(cols.reshape(v.shape), v)
        else:
            xp = _zero_pad(x, geo.pb, geo.pe, 0, ws) if geo.padded else x
            if pointwise and g == 1:
                if any(s != 1 for s in strides):
                    xp = xp[(slice(None), slice(None)) + tuple(slice(0, (o - 1) * s + 1, s)
                                                               for o, s in zip(geo.out, strides))]
                cols = xp.reshape(n, cg, geo.o_size)
            else:
                v = window_view(xp, ks, strides, dilations, geo.out).reshape((n, g, cg) + tuple(geo.out) + tuple(ks))
                vt = v.transpose(order)
                cols = ws.get("cols", shape + (geo.o_size,), x.dtype)
                np.copyto(cols.reshape(vt.shape), vt)
        y = np.matmul(w2, cols)
        y = y.reshape(n, m, -1)
        if bias is not None:
            y += bias
        if activation is not None:
            y = activation(y)
        if geo.flat:
            return y.reshape((n, m) + geo.full)[(slice(None), slice(None), slice(None))
                                                 + tuple(slice(0, o) for o in geo.out[1:])]
        return y.reshape((n, m) + tuple(geo.out))

    return conv


def _prepare_conv(node: Node, attrs: dict, consts) -> Prepared | None:
    if len(node.outputs) != 1 or node.domain and attrs.get("layout", "NCHW") != "NCHW":
        return None
    x, w = node.inputs[0], consts[1]
    b = consts[2] if len(consts) > 2 else None
    has_b = len(node.inputs) > 2 and node.inputs[2] is not None
    dt = _dtype(x)
    if w is None or (has_b and b is None) or dt not in FLOATS or w.dtype != dt or (b is not None and b.dtype != dt):
        return None
    if w.ndim < 3 or int(attrs.get("group", 1)) < 1 or w.shape[0] % int(attrs.get("group", 1)):
        return None
    if node.domain and len(node.inputs) <= 3 and attrs.get("epilogue"):  # an activation: fused into the base
        prog = ExprProgram(parse_exprs(attrs["epilogue"])[0], [dt])

        def activation(y):
            r = prog([y], (0,))
            return r if r.shape == y.shape else np.ascontiguousarray(np.broadcast_to(r, y.shape))

        numpy_conv = Prepared(_conv_base(w, b, attrs, activation), (0,))
    else:
        base = _conv_base(w, b, attrs)
        numpy_conv = Prepared(base, (0,)) if not node.domain else _with_epilogue(node, attrs, 3, base, (0,))
    return _native_conv(node, attrs, w, b, numpy_conv) or numpy_conv


def _native_conv(node: Node, attrs: dict, w, b, numpy_conv: Prepared | None) -> Prepared | None:
    """The conv on the native kernels (``native.py``) where they run here and take its epilogue;
    ``numpy_conv`` runs the shapes they do not."""
    if numpy_conv is None or w.dtype != np.float32:
        return None
    from . import native

    text = attrs.get("epilogue", "") if node.domain else ""
    got = native.prepare_conv(node, attrs, w, b, parse_exprs(text)[0] if text else None, numpy_conv.fn)
    if got is None:
        return None
    fn, inputs = got
    # the epilogue's in<k> is node input 2 + k
    inputs = tuple(i if i == 0 else 2 + i for i in inputs)
    return Prepared(fn, inputs) if inputs == numpy_conv.inputs else None


# ---------------------------------------------------------------------------
# MatMul, Gemm


def _native_gemm() -> Callable | None:
    """The native GEMM (NumPy's OpenBLAS on the native pool, ``native.gemm_fn``), or None."""
    from . import native

    return native.gemm_fn()


def _packed_gemm(b: np.ndarray) -> Callable | None:
    """The native product with the constant ``b`` packed once (``native.packed_gemm``), or None."""
    from . import native

    return native.packed_gemm(b)


def _prepare_matmul(node: Node, attrs: dict, consts) -> Prepared | None:
    a, b = node.inputs[0], node.inputs[1]
    dt = _dtype(a)
    ta, tb = a.type, None if b is None else b.type
    if dt not in FLOATS or _dtype(b) != dt or ta.shape is None or tb is None or tb.shape is None \
            or len(ta.shape) < 2 or len(tb.shape) < 2:
        return None
    bc = consts[1]
    mm = _native_gemm() if dt == np.float32 and len(tb.shape) == 2 else None
    base = np.matmul if mm is None else mm
    packed = _packed_gemm(bc) if bc is not None and mm is not None else None
    if packed is not None:  # the constant B, packed once
        base, inputs, bound = packed, (0,), ()
    elif bc is not None:  # the constant B is bound into the call
        base, inputs, bound = base, (0,), (np.ascontiguousarray(bc),)
    else:
        base, inputs, bound = base, (0, 1), ()
    if not node.domain:
        return Prepared(_bind_trailing(base, len(inputs), bound), inputs)
    return _with_epilogue(node, attrs, 2, base, inputs, bound, contiguous=True, consts=consts)


def _prepare_gemm(node: Node, attrs: dict, consts) -> Prepared | None:
    a, bv = node.inputs[0], node.inputs[1]
    dt = _dtype(a)
    b, c = consts[1], consts[2] if len(consts) > 2 else None
    has_c = len(node.inputs) > 2 and node.inputs[2] is not None
    if dt not in FLOATS or b is None or b.dtype != dt or (has_c and (c is None or c.dtype != dt)):
        return None
    # B^T as a C-contiguous copy: with one row of A, NumPy's product with a transposed view is
    # 25x slower (1.4 ms vs 0.05 ms for 1280x1000) than with the same matrix laid out row-major
    bm = np.ascontiguousarray(b.T) if attrs["transB"] else b
    alpha, beta, trans_a = attrs["alpha"], attrs["beta"], attrs["transA"]
    cc = None if c is None or beta == 0.0 else (c if beta == 1.0 else c * beta)
    mm = _native_gemm() if dt == np.float32 else None
    packed = _packed_gemm(bm) if mm is not None else None

    def base(x):
        if packed is not None:
            y = packed(x, trans_a, alpha)
        elif mm is not None:
            y = mm(x, bm, trans_a, alpha)
        else:
            y = (x.T if trans_a else x) @ bm
            if alpha != 1.0:
                y *= np.asarray(alpha, dtype=y.dtype)
        if cc is not None:
            if cc.ndim <= y.ndim and np.broadcast_shapes(cc.shape, y.shape) == y.shape:
                y += cc
            else:
                y = y + cc
        return y

    if not node.domain:
        return Prepared(base, (0,))
    return _with_epilogue(node, attrs, 3, base, (0,), contiguous=True, consts=consts)


# ---------------------------------------------------------------------------
# normalizations


def _prepare_batchnorm(node: Node, attrs: dict, consts) -> Prepared | None:
    """One scale and shift per channel, computed as the registry kernel computes them."""
    x = node.inputs[0]
    dt = _dtype(x)
    if len(node.outputs) != 1 or attrs["training_mode"] or not attrs["spatial"] or dt != np.float32 \
            or any(c is None for c in consts[1:5]) or x.type.shape is None or len(x.type.shape) < 2:
        return None
    scale, b, mean, var = (c.astype(np.float32) for c in consts[1:5])
    inv = scale / np.sqrt(var + np.float32(attrs["epsilon"]))
    shift = b - mean * inv
    bshape = (-1,) + (1,) * (len(x.type.shape) - 2)
    inv, shift = inv.reshape(bshape), shift.reshape(bshape)

    def fn(x):
        y = x * inv
        y += shift
        return y

    def fn_inplace(x):
        np.multiply(x, inv, out=x)
        np.add(x, shift, out=x)
        return x

    return Prepared(fn, (0,), donate=0, fn_inplace=fn_inplace)


def _prepare_channel_layernorm(node: Node, attrs: dict, consts) -> Prepared | None:
    """The registry kernel (a transpose to channels-last and back around LayerNormalization) with
    its attributes resolved once, for ``native.upgrade`` to replace where the kernels run: float32
    with constant Scale (and B) of one value per channel."""
    x = node.inputs[0]
    scale = consts[1]
    b = consts[2] if len(consts) > 2 else None
    has_b = len(node.inputs) > 2 and node.inputs[2] is not None
    if len(node.outputs) != 1 or _dtype(x) != np.float32 or scale is None or scale.dtype != np.float32 \
            or scale.ndim != 1 or (has_b and (b is None or b.dtype != np.float32 or b.shape != scale.shape)) \
            or _dtype_stash(attrs) != np.float32:
        return None
    kernel = get_schema("ChannelLayerNormalization", "ai.graphopt").kernel
    ctx = KernelContext(node=node)
    args = [scale] + ([b] if has_b else [])

    def fn(x):
        return kernel([x, *args], attrs, ctx)[0]

    return Prepared(fn, (0,), True)


def _prepare_layernorm(node: Node, attrs: dict, consts) -> Prepared | None:
    """The registry kernel's formula over the last axis, with its temporaries reused."""
    x = node.inputs[0]
    dt = _dtype(x)
    shape = x.type.shape if x.type is not None else None
    scale = consts[1]
    b = consts[2] if len(consts) > 2 else None
    has_b = len(node.inputs) > 2 and node.inputs[2] is not None
    if len(node.outputs) != 1 or dt != np.float32 or shape is None or attrs["axis"] not in (-1, len(shape) - 1) \
            or scale is None or scale.dtype != dt or (has_b and (b is None or b.dtype != dt)) \
            or _dtype_stash(attrs) != np.float32:
        return None
    eps = np.float32(attrs["epsilon"])
    per_shape: dict[tuple, tuple] = {}

    def constants(shape: tuple) -> tuple:
        n = shape[-1]
        avg = np.full((n, 1), 1.0 / n, dt)
        sc, bb = scale, b
        if math.prod(shape) <= TILE_MAX:
            # Scale and B tiled to the input's shape: NumPy broadcasts a row over a short last
            # axis one row at a time (1 us for 16 rows of 64), a same-shape operand in one pass
            try:
                sc = np.ascontiguousarray(np.broadcast_to(scale, shape))
                bb = None if b is None else np.ascontiguousarray(np.broadcast_to(b, shape))
            except ValueError:
                sc, bb = scale, b
        if len(per_shape) >= 16:
            per_shape.clear()
        per_shape[shape] = got = (avg, sc, bb)
        return got

    def fn(x):
        # row means as one matrix-vector product each (x @ 1/n): fewer NumPy calls than
        # reduce-then-divide, which is what a LayerNorm over a short row costs
        avg, sc, bb = per_shape.get(x.shape) or constants(x.shape)
        d = x - x @ avg
        var = np.square(d) @ avg
        var += eps
        np.sqrt(var, out=var)
        d /= var
        d *= sc
        if bb is not None:
            d += bb
        return d

    return Prepared(fn, (0,))


def _prepare_rmsnorm(node: Node, attrs: dict, consts) -> Prepared | None:
    """RMSNormalization over the last axis (float32, constant scale): the row mean of squares as
    one matrix-vector product (as ``_prepare_layernorm``), then one division and one product."""
    x = node.inputs[0]
    shape = x.type.shape if x.type is not None else None
    scale = consts[1]
    if _dtype(x) != np.float32 or shape is None or attrs["axis"] not in (-1, len(shape) - 1) \
            or scale is None or scale.dtype != np.float32 or _dtype_stash(attrs) != np.float32:
        return None
    eps = np.float32(attrs["epsilon"])
    avg: dict[int, np.ndarray] = {}

    def fn(x):
        n = x.shape[-1]
        w = avg.get(n)
        if w is None:
            w = avg[n] = np.full((n, 1), 1.0 / n, np.float32)
        ms = np.square(x) @ w
        ms += eps
        np.sqrt(ms, out=ms)
        y = x / ms
        y *= scale
        return y

    return Prepared(fn, (0,))


TILE_MAX = 1 << 15  # most elements of an input whose LayerNorm Scale and B are kept tiled to its shape


def _dtype_stash(attrs) -> np.dtype | None:
    st = attrs["stash_type"]
    try:
        return np.dtype(dtypes.to_numpy(dtypes.from_onnx(st) if isinstance(st, int) else st))
    except Exception:
        return None


SHORT_ROW = 64  # rows up to this long take their maximum as columns of a transposed copy


def _row_max(s: np.ndarray) -> np.ndarray:
    """``s.max(axis=-1, keepdims=True)``. NumPy reduces short rows one at a time (4 us for 64
    rows of 16); as the columns of a transposed copy they reduce in one vectorized pass. The
    maximum is exact, so the values are the same."""
    n = s.shape[-1]
    if n > SHORT_ROW or s.size == 0:
        return s.max(axis=-1, keepdims=True)
    return np.maximum.reduce(np.ascontiguousarray(s.reshape(-1, n).T), 0).reshape(s.shape[:-1] + (1,))


def _softmax_rows(s: np.ndarray) -> np.ndarray:
    """The registry's softmax over the last axis (``ops.norm._softmax``), in place in ``s``."""
    np.subtract(s, _row_max(s), out=s)
    np.exp(s, out=s)
    np.divide(s, np.add.reduce(s, -1, None, None, True), out=s)
    return s


def _prepare_attention(node: Node, attrs: dict, consts) -> Prepared | None:
    """The registry kernel's computation in float32, in place in the score buffer through the softmax.

    With 3-D inputs in layout BSHD the heads are split by one reshape and transpose each, and
    the heads are merged by the reshape that copies the result; anything that path does not
    take (other ranks, shapes the registry refuses) runs on the registry kernel.
    """
    from graphopt.ops.fused import _attention_check, _split_heads, attention

    has_mask = len(node.inputs) > 3 and node.inputs[3] is not None
    n_in = 4 if has_mask else 3
    if any(_dtype(node.inputs[i]) != np.float32 for i in range(n_in)) or len(node.outputs) != 1:
        return None
    _attention_check(node, attrs, has_mask)
    layout, heads, k_t = attrs["layout"], int(attrs["num_heads"]), attrs["k_transposed"]
    scale = np.float32(attrs["scale"])
    ctx = KernelContext(node=node, opset=_opset(node))

    def registry(*xs):
        return attention(list(xs), attrs, ctx)[0]

    def general(q, k, v, mask=None):
        kt = k if k_t else np.swapaxes(_split_heads(k, heads, layout), -1, -2)
        s = np.matmul(_split_heads(q, heads, layout), kt)
        s *= scale
        if mask is not None:
            s = s + mask if np.broadcast_shapes(s.shape, mask.shape) != s.shape else np.add(s, mask, out=s)
        o = np.matmul(_softmax_rows(s), _split_heads(v, heads, layout))
        if layout == "BSHD":
            o = o.transpose(0, 2, 1, 3)
            if q.ndim == 3:
                o = o.reshape(o.shape[0], o.shape[1], -1)
        return np.ascontiguousarray(o)

    if layout != "BSHD" or any(node.inputs[i].type.shape is None or len(node.inputs[i].type.shape) != 3
                               for i in range(3)):
        return Prepared(general, tuple(range(n_in)))
    matmul, multiply, add = np.matmul, np.multiply, np.add

    def bshd(q, k, v, mask=None):
        if q.ndim != 3 or k.ndim != 3 or v.ndim != 3 or q.shape[2] % heads or k.shape[2] % heads \
                or v.shape[2] % heads:
            return registry(q, k, v, *(() if mask is None else (mask,)))
        b, n, _ = q.shape
        s = matmul(q.reshape(b, n, heads, -1).transpose(0, 2, 1, 3),
                   k.reshape(k.shape[0], k.shape[1], heads, -1).transpose(0, 2, 3, 1))
        multiply(s, scale, out=s)
        if mask is not None:
            try:
                add(s, mask, out=s)
            except ValueError:  # the mask broadcasts the scores bigger
                s = s + mask
        o = matmul(_softmax_rows(s), v.reshape(v.shape[0], v.shape[1], heads, -1).transpose(0, 2, 1, 3))
        # merging the heads of (B, S, H, D) copies into a new contiguous array
        return o.transpose(0, 2, 1, 3).reshape(o.shape[0], o.shape[2], -1)

    return Prepared(bshd, tuple(range(n_in)))


# ---------------------------------------------------------------------------
# reshapes: the registry computes the target once per input shape, then a plain reshape


def _prepare_reshape(node: Node, attrs: dict, consts) -> Prepared | None:
    if len(node.outputs) != 1 or any(v is not None and c is None for v, c in list(zip(node.inputs, consts))[1:]):
        return None
    schema = get_schema(node.op_type, node.domain)
    ctx = KernelContext(node=node, opset=_opset(node))
    rest = list(consts[1:])
    targets: dict[tuple, tuple] = {}

    def fn(x):
        t = targets.get(x.shape)
        if t is None:
            t = targets[x.shape] = schema.kernel([x, *rest], attrs, ctx)[0].shape
        return x.reshape(t)

    return Prepared(fn, (0,), fresh=False)


def _prepare_gather(node: Node, attrs: dict, consts) -> Prepared | None:
    """``np.take``, which reads negative indices as the registry kernel maps them; an index out
    of range (or of a type ``take`` refuses) goes to the registry kernel for its error."""
    x = node.inputs[0]
    rank = None if x.type is None or x.type.shape is None else len(x.type.shape)
    if len(node.outputs) != 1 or rank is None or not -rank <= attrs["axis"] < rank:
        return None
    axis = attrs["axis"] % rank
    schema = get_schema("Gather")
    ctx = KernelContext(node=node, opset=_opset(node))
    take = np.take

    def fn(data, idx):
        try:
            return take(data, idx, axis)
        except (IndexError, TypeError, ValueError):
            return schema.kernel([data, idx], attrs, ctx)[0]

    return Prepared(fn, (0, 1))


def _prepare_pool(node: Node, attrs: dict, consts) -> Prepared | None:
    """A 2-D float32 MaxPool (no Indices) or AveragePool on the native kernels; None (the registry
    kernel) where they do not run."""
    if len(node.outputs) != 1 or _dtype(node.inputs[0]) != np.float32:
        return None
    from . import native

    schema = get_schema(node.op_type)
    ctx = KernelContext(node=node, opset=_opset(node))
    fn = native.prepare_pool(node.op_type, attrs, ctx.opset, lambda x: schema.kernel([x], attrs, ctx)[0])
    return None if fn is None else Prepared(fn, (0,))


def _prepare_reduce(node: Node, attrs: dict, consts) -> Prepared | None:
    """ReduceSum/Mean/Max and GlobalAveragePool/GlobalMaxPool of float32 over trailing axes (an
    NCHW plane) on the native kernels (``native_small.prepare_reduce``); other axes, dtypes or
    computed axes: None (the registry kernel)."""
    from graphopt.ops.reduce import _axes_of, reduce_axes

    x = node.inputs[0]
    shape = None if x is None or x.type is None else x.type.shape
    if len(node.outputs) != 1 or _dtype(x) != np.float32 or shape is None:
        return None
    rank = len(shape)
    if node.op_type.startswith("Global"):
        axes, keep = tuple(range(2, rank)), True
    else:
        if len(node.inputs) > 1 and node.inputs[1] is not None and consts[1] is None:
            return None
        axes = reduce_axes(_axes_of(list(consts), attrs), rank, attrs["noop_with_empty_axes"], node)
        keep = bool(attrs["keepdims"])
    if not axes or axes != tuple(range(axes[0], rank)):
        return None
    from . import native_small

    schema = get_schema(node.op_type)
    ctx = KernelContext(node=node, opset=_opset(node))
    rest = list(consts[1:])
    fn = native_small.prepare_reduce(node.op_type, axes[0], keep,
                                     lambda x: schema.kernel([x, *rest], attrs, ctx)[0])
    return None if fn is None else Prepared(fn, (0,))


def _opset(node: Node) -> int:
    from graphopt.ops.registry import node_opset

    return node_opset(node)


PREPARERS: dict[tuple[str, str], Callable] = {
    ("", "Conv"): _prepare_conv, ("ai.graphopt", "FusedConv"): _prepare_conv,
    ("", "MatMul"): _prepare_matmul, ("ai.graphopt", "FusedMatMul"): _prepare_matmul,
    ("", "Gemm"): _prepare_gemm, ("ai.graphopt", "FusedGemm"): _prepare_gemm,
    ("", "BatchNormalization"): _prepare_batchnorm,
    ("", "LayerNormalization"): _prepare_layernorm,
    ("ai.graphopt", "ChannelLayerNormalization"): _prepare_channel_layernorm,
    ("", "RMSNormalization"): _prepare_rmsnorm, ("ai.graphopt", "RMSNormalization"): _prepare_rmsnorm,
    ("ai.graphopt", "FusedElementwise"): _prepare_fused_elementwise,
    ("ai.graphopt", "Attention"): _prepare_attention,
    ("", "Gather"): _prepare_gather,
    ("", "MaxPool"): _prepare_pool, ("", "AveragePool"): _prepare_pool,
    **{("", op): _prepare_reduce for op in ("ReduceSum", "ReduceMean", "ReduceMax", "GlobalAveragePool",
                                            "GlobalMaxPool")},
    **{("", op): _prepare_reshape for op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze")},
    # the ops whose expression form is the registry kernel's own computation, and the activations
    # whose expression is their definition computed in float32 (the registry's Gelu computes in
    # float64; the fused elementwise kernels of -O2 use these same expressions)
    **{("", op): _prepare_pointwise for op in ("Relu", "Add", "Sub", "Mul", "Div", "Clip", "Neg", "Abs", "Exp",
                                                "Sqrt", "Tanh", "Sigmoid", "Erf", "Max", "Min", "Gelu", "HardSwish",
                                                "HardSigmoid", "LeakyRelu", "Elu", "Selu", "Softsign", "Mish")},
}


def prepare(node: Node, attrs: dict, consts: Sequence[np.ndarray | None]) -> Prepared | None:
    """A ``Prepared`` kernel for ``node`` (attributes resolved, ``consts[i]`` the constant value
    of input ``i`` or None), or None when the registry kernel should run it."""
    make = PREPARERS.get((node.domain, node.op_type))
    if make is None:
        return None
    prep = make(node, attrs, list(consts))
    if prep is not None and (node.domain, node.op_type) in NATIVE_OPS:
        from . import native

        fn = native.upgrade(node, attrs, list(consts), prep.function())
        if fn is not None:  # the NumPy path stays as its fallback for what the kernel does not take
            prep = Prepared(fn, prep.inputs, prep.fresh)
    return prep


# ops whose Prepared NumPy kernel native.upgrade may replace (Conv decides inside _prepare_conv,
# where its epilogue is parsed)
NATIVE_OPS = {("", "LayerNormalization"), ("ai.graphopt", "ChannelLayerNormalization"), ("ai.graphopt", "Attention")}
