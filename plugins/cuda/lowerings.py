"""The CUDA lowering of each op: from a node to kernel specs, rendered kernels
and launches. One function per op family; ``@lowering(...)`` registers it and
its ``check`` (a reason the node cannot run, or None) answers ``supports()``.

A lowering reads static shapes from the node's types, constant operands
(axes, pads, perm, slice bounds...) from the compile-time constants, builds a
spec with ``make_*`` (which picks the schedule for those shapes) and emits it.
"""
from __future__ import annotations

import numpy as np

from graphopt.errors import UnsupportedOpError
from graphopt.ir import Node, Value
from graphopt.ops.registry import node_opset

from . import cspell
from .ew import make_elementwise, render_elementwise
from .gemm import make_conv, make_matmul, render_conv, render_gemm
from .kernel import CTYPES
from .lower import Lowerer, lowering, static_shape
from .movement import make_gather, make_pad, render_gather, render_pad
from .reduce import make_row_reduce, render_row_reduce
from .scalar import ScalarFn, broadcast_strides, c_float, contiguous_strides, identity
from .spatial import make_depthwise, make_pool, render_depthwise, render_pool
from .tc_gemm import TcMatmulSpec, make_tc_matmul, render_tc_matmul
from .specs import Epilogue, View


def _shape(v: Value, node: Node) -> tuple[int, ...]:
    return static_shape(v, node)


def _float_only(node: Node) -> str | None:
    """float32 or float16 tensors (float16 is stored as halves and computed in float32);
    integer constants (axes, shapes) are attributes in disguise and do not count."""
    kinds = {v.dtype for v in [*node.inputs, *node.outputs]
             if v is not None and not (v.is_const and v.dtype not in ("float32", "float16"))}
    if kinds <= {"float32", "float16"}:
        return None
    return f"{node.op_type} on {'/'.join(sorted(kinds))} has no CUDA kernel (float32 or float16 only)"


def _known_dtypes(node: Node) -> str | None:
    for v in [*node.inputs, *node.outputs]:
        if v is not None and v.dtype not in CTYPES:
            return f"dtype {v.dtype} of {v.name!r} has no CUDA kernels"
    return None


def _gemm_dtypes(node: Node) -> str | None:
    """float32 on SIMT cores, or float16 on tensor cores: all operands alike."""
    kinds = {v.dtype for v in [*node.inputs, *node.outputs] if v is not None}
    if kinds in ({"float32"}, {"float16"}):
        return None
    return f"{node.op_type} on {'/'.join(sorted(kinds))} has no CUDA kernel (float32, or float16 on tensor cores)"


def _matmul_spec(dtype: str, M, N, K, batch=(), *, a, b, c, alpha=1.0, epilogue=None):
    """A SIMT spec for float32, a tensor-core spec for float16."""
    if dtype == "float16":
        return make_tc_matmul(M, N, K, batch, a=a, b=b, c=c, alpha=alpha, epilogue=epilogue)
    return make_matmul(M, N, K, batch, a=a, b=b, c=c, alpha=alpha, epilogue=epilogue)


def _render_matmul(spec):
    return render_tc_matmul(spec) if isinstance(spec, TcMatmulSpec) else render_gemm(spec)


def _unused(node: Node, i: int) -> bool:
    return len(node.outputs) <= i or (not node.outputs[i].num_uses and not node.outputs[i].is_graph_output)


# -- elementwise and strided copies ------------------------------------------------------------------


def emit_copy(node: Node, lw: Lowerer, x: Value, y: Value) -> None:
    shape = _shape(y, node)
    spec = make_elementwise(shape, View.contiguous(y.dtype, shape), [View.contiguous(x.dtype, shape)],
                            identity(y.dtype))
    lw.emit(node, render_elementwise(spec), spec, [y, x])


def _ew_check(node: Node) -> str | None:
    why = _known_dtypes(node) or cspell.node_supported(node)
    if why:
        return why
    try:
        cspell.op_scalar_fn(node)
    except UnsupportedOpError as exc:
        return str(exc)
    return None


@lowering(*sorted(cspell.SUPPORTED), check=_ew_check)
def lower_elementwise(node: Node, lw: Lowerer) -> None:
    out = node.output
    oshape = _shape(out, node)
    ins = [v for v in node.inputs if v is not None]
    views = [View(v.dtype, broadcast_strides(_shape(v, node), oshape)) for v in ins]
    spec = make_elementwise(oshape, View.contiguous(out.dtype, oshape), views, cspell.op_scalar_fn(node))
    lw.emit(node, render_elementwise(spec), spec, [out, *ins])


@lowering("BatchNormalization", check=lambda n: _float_only(n) or (None if _unused(n, 1) else
                                                                     "BatchNormalization in training mode"))
def lower_batchnorm(node: Node, lw: Lowerer) -> None:
    x, scale, bias, mean, var = node.inputs[:5]
    eps = node.attr("epsilon", 1e-5)
    oshape = _shape(node.output, node)
    chan = [0] * len(oshape)
    if len(oshape) > 1:
        chan[1] = 1
    views = [View.contiguous(x.dtype, oshape)] + [View(v.dtype, tuple(chan)) for v in (scale, bias, mean, var)]
    fn = ScalarFn.from_template("batchnorm", 5, "float32",
                                f"(({{0}} - {{3}}) * rsqrtf({{4}} + {c_float(eps)}) * {{1}} + {{2}})")
    spec = make_elementwise(oshape, View.contiguous(node.output.dtype, oshape), views, fn)
    lw.emit(node, render_elementwise(spec), spec, [node.output, x, scale, bias, mean, var])


@lowering("Transpose", check=_known_dtypes)
def lower_transpose(node: Node, lw: Lowerer) -> None:
    x, y = node.input(0), node.output
    xs = _shape(x, node)
    perm = node.attr("perm") or list(range(len(xs)))[::-1]
    st = contiguous_strides(xs)
    oshape = tuple(xs[p] for p in perm)
    spec = make_elementwise(oshape, View.contiguous(y.dtype, oshape), [View(x.dtype, tuple(st[p] for p in perm))],
                            identity(y.dtype))
    lw.emit(node, render_elementwise(spec), spec, [y, x])


@lowering("Expand", check=_known_dtypes)
def lower_expand(node: Node, lw: Lowerer) -> None:
    x, y = node.input(0), node.output
    oshape = _shape(y, node)
    spec = make_elementwise(oshape, View.contiguous(y.dtype, oshape),
                            [View(x.dtype, broadcast_strides(_shape(x, node), oshape))], identity(y.dtype))
    lw.emit(node, render_elementwise(spec), spec, [y, x])


def _slice_params(node: Node, lw: Lowerer, rank: int):
    if node_opset(node) < 10:
        starts, ends = node.attr("starts"), node.attr("ends")
        axes, steps = node.attr("axes"), None
    else:
        starts = lw.require_const(node, 1, "starts")
        ends = lw.require_const(node, 2, "ends")
        axes = lw.const(node.input(3))
        steps = lw.const(node.input(4))
    axes = list(range(len(starts))) if axes is None else [int(a) % rank for a in np.ravel(axes)]
    steps = [1] * len(axes) if steps is None else [int(s) for s in np.ravel(steps)]
    return [int(s) for s in np.ravel(starts)], [int(e) for e in np.ravel(ends)], axes, steps


@lowering("Slice", check=_known_dtypes)
def lower_slice(node: Node, lw: Lowerer) -> None:
    x, y = node.input(0), node.output
    xs = _shape(x, node)
    st = list(contiguous_strides(xs))
    shape, strides, offset = list(xs), list(st), 0
    for s, e, a, step in zip(*_slice_params(node, lw, len(xs))):
        if step == 0:
            raise UnsupportedOpError(f"node {node.name!r} (Slice): step 0")
        start, stop, step = slice(s, e, step).indices(xs[a])
        shape[a] = len(range(start, stop, step))
        offset += start * st[a] if shape[a] else 0
        strides[a] = st[a] * step
    spec = make_elementwise(shape, View.contiguous(y.dtype, shape), [View(x.dtype, tuple(strides), offset)],
                            identity(y.dtype))
    lw.emit(node, render_elementwise(spec), spec, [y, x])


@lowering("Concat", check=_known_dtypes)
def lower_concat(node: Node, lw: Lowerer) -> None:
    y = node.output
    oshape = _shape(y, node)
    axis = node.attr("axis") % len(oshape)
    ost = contiguous_strides(oshape)
    at = 0
    for x in node.inputs:
        if x is None:
            continue
        xs = _shape(x, node)
        spec = make_elementwise(xs, View(y.dtype, ost, at * ost[axis]), [View.contiguous(x.dtype, xs)],
                                identity(y.dtype))
        lw.emit(node, render_elementwise(spec), spec, [y, x])
        at += xs[axis]


@lowering("Split", check=_known_dtypes)
def lower_split(node: Node, lw: Lowerer) -> None:
    x = node.input(0)
    xs = _shape(x, node)
    axis = node.attr("axis", 0) % len(xs)
    st = contiguous_strides(xs)
    at = 0
    for y in node.outputs:
        ys = _shape(y, node)
        spec = make_elementwise(ys, View.contiguous(y.dtype, ys), [View(x.dtype, st, at * st[axis])],
                                identity(y.dtype))
        lw.emit(node, render_elementwise(spec), spec, [y, x])
        at += ys[axis]


@lowering("Gather", check=_known_dtypes)
def lower_gather(node: Node, lw: Lowerer) -> None:
    data, idx = node.input(0), node.input(1)
    spec = make_gather(_shape(data, node), data.dtype, _shape(idx, node), idx.dtype, node.attr("axis", 0))
    lw.emit(node, render_gather(spec), spec, [node.output, data, idx])


@lowering("Pad", check=_known_dtypes)
def lower_pad(node: Node, lw: Lowerer) -> None:
    x = node.input(0)
    xs = _shape(x, node)
    r = len(xs)
    if node_opset(node) < 11:
        pads, value = node.attr("pads"), node.attr("value", 0.0)
    else:
        pads = [int(p) for p in np.ravel(lw.require_const(node, 1, "pads"))]
        cv = lw.const(node.input(2))
        value = 0.0 if cv is None or cv.size == 0 else float(np.ravel(cv)[0])
        axes = lw.const(node.input(3))
        if axes is not None:
            ax = [int(a) % r for a in np.ravel(axes)]
            full = [0] * (2 * r)
            for i, a in enumerate(ax):
                full[a], full[r + a] = pads[i], pads[len(ax) + i]
            pads = full
    mode = node.attr("mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    spec = make_pad(xs, x.dtype, pads, mode, value)
    lw.emit(node, render_pad(spec), spec, [node.output, x])


# -- GEMM family ---------------------------------------------------------------------------------------


def _add_fn(n: int = 2, beta: float = 1.0) -> ScalarFn:
    b = "" if beta == 1.0 else f"{c_float(beta)} * "
    return ScalarFn.from_template(f"add{n}", 2, "float32", f"({{0}} + {b}{{1}})")


@lowering("MatMul", check=_gemm_dtypes)
def lower_matmul(node: Node, lw: Lowerer) -> None:
    a, b = node.input(0), node.input(1)
    y = node.output
    dt = y.dtype
    ash, bsh = _shape(a, node), _shape(b, node)
    ast, bst = contiguous_strides(ash), contiguous_strides(bsh)
    if len(ash) == 1:
        ash, ast = (1, ash[0]), (0, ast[0])
    if len(bsh) == 1:
        bsh, bst = (bsh[0], 1), (bst[0], 0)
    M, K = ash[-2:]
    N = bsh[-1]
    batch = tuple(np.broadcast_shapes(ash[:-2], bsh[:-2]))
    av = View(dt, broadcast_strides(ash[:-2], batch, ast[:-2]) + ast[-2:])
    bv = View(dt, broadcast_strides(bsh[:-2], batch, bst[:-2]) + bst[-2:])
    spec = _matmul_spec(dt, M, N, K, batch, a=av, b=bv, c=View.contiguous(dt, (*batch, M, N)))
    lw.emit(node, _render_matmul(spec), spec, [y, a, b])


@lowering("Gemm", check=_gemm_dtypes)
def lower_gemm(node: Node, lw: Lowerer) -> None:
    a, b, c = node.input(0), node.input(1), node.input(2)
    y = node.output
    dt = y.dtype
    ash, bsh = _shape(a, node), _shape(b, node)
    ast, bst = contiguous_strides(ash), contiguous_strides(bsh)
    if node.attr("transA", 0):
        ash, ast = ash[::-1], ast[::-1]
    if node.attr("transB", 0):
        bsh, bst = bsh[::-1], bst[::-1]
    M, K = ash
    N = bsh[1]
    beta = float(node.attr("beta", 1.0))
    ep, args = Epilogue(), [y, a, b]
    if c is not None and beta != 0.0:
        ep = Epilogue(_add_fn(2, beta), (View(dt, broadcast_strides(_shape(c, node), (M, N))),))
        args.append(c)
    spec = _matmul_spec(dt, M, N, K, a=View(dt, ast), b=View(dt, bst), c=View.contiguous(dt, (M, N)),
                        alpha=node.attr("alpha", 1.0), epilogue=ep)
    lw.emit(node, _render_matmul(spec), spec, args)


def _conv_pads(node: Node, in_sp, kernel, strides, dilations, out_sp) -> list[int]:
    nd = len(in_sp)
    auto = node.attr("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i in range(nd):
            total = max(0, (out_sp[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_sp[i])
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            begin.append(lo)
            end.append(total - lo)
        return begin + end
    if auto == "VALID":
        return [0] * (2 * nd)
    return list(node.attr("pads") or [0] * (2 * nd))


def _window_attrs(node: Node, x_shape, kernel, out_sp):
    nd = len(x_shape) - 2
    strides = list(node.attr("strides") or [1] * nd)
    dilations = list(node.attr("dilations") or [1] * nd)
    pads = _conv_pads(node, x_shape[2:], kernel, strides, dilations, out_sp)
    return strides, pads, dilations


def _conv_check(node: Node) -> str | None:
    why = _float_only(node)
    if why:
        return why
    x = node.input(0)
    if x.type is not None and x.type.rank is not None and x.type.rank < 3:
        return "Conv needs at least one spatial dim"
    return None


@lowering("Conv", check=_conv_check)
def lower_conv(node: Node, lw: Lowerer) -> None:
    x, w, b = node.input(0), node.input(1), node.input(2)
    y = node.output
    xs, ws, ys = _shape(x, node), _shape(w, node), _shape(y, node)
    strides, pads, dilations = _window_attrs(node, xs, ws[2:], ys[2:])
    groups = int(node.attr("group", 1))
    dt = y.dtype
    ep, args = Epilogue(), [y, x, w]
    if b is not None:
        ep = Epilogue(_add_fn(), (View(b.dtype, (0, 1) + (0,) * (len(ys) - 2)),))
        args.append(b)
    if groups > 1 and ws[1] == 1:  # depthwise: one input channel per group
        spec = make_depthwise(xs, ws, ys[2:], strides=strides, pads=pads, dilations=dilations, epilogue=ep, dtype=dt)
        lw.emit(node, render_depthwise(spec), spec, args)
        return
    if groups == 1 and all(k == 1 for k in ws[2:]) and set(strides) == {1} and not any(pads):
        # a pointwise conv is a batched GEMM: y[n] = W[K, C] @ x[n][C, pixels]; no im2col index math
        pix = int(np.prod(ys[2:]))
        K, C = ws[0], ws[1]
        bias_ops = (View(b.dtype, (0, 1, 0)),) if b is not None else ()
        spec = _matmul_spec(dt, K, pix, C, (xs[0],), a=View(dt, (0, C, 1)), b=View(dt, (C * pix, pix, 1)),
                            c=View(dt, (K * pix, pix, 1)), epilogue=Epilogue(ep.fn, bias_ops))
        lw.emit(node, _render_matmul(spec), spec, [y, w, x, *args[3:]])  # A is the weight, B the image
        return
    spec = make_conv(xs, ws, ys[2:], strides=strides, pads=pads[:len(strides)], dilations=dilations, groups=groups,
                     epilogue=ep, dtype=dt)
    lw.emit(node, render_conv(spec), spec, args)


def _pool_check(node: Node) -> str | None:
    why = _float_only(node)
    if why:
        return why
    if node.op_type == "MaxPool" and not _unused(node, 1):
        return "MaxPool with a used Indices output"
    return None


@lowering("MaxPool", "AveragePool", check=_pool_check)
def lower_pool(node: Node, lw: Lowerer) -> None:
    x, y = node.input(0), node.output
    xs, ys = _shape(x, node), _shape(y, node)
    kernel = list(node.attr("kernel_shape"))
    strides, pads, dilations = _window_attrs(node, xs, kernel, ys[2:])
    kind = "max" if node.op_type == "MaxPool" else "avg"
    spec = make_pool(kind, xs, kernel, ys[2:], strides=strides, pads=pads, dilations=dilations,
                     count_include_pad=bool(node.attr("count_include_pad", 0)), dtype=x.dtype)
    lw.emit(node, render_pool(spec), spec, [y, x])


# -- reductions and normalizations -------------------------------------------------------------------

_REDUCE_KIND = {"ReduceSum": "sum", "ReduceMean": "mean", "ReduceMax": "max", "ReduceMin": "min",
                "ReduceProd": "prod", "ReduceSumSquare": "sumsq", "ReduceL1": "l1", "ReduceL2": "l2",
                "ReduceLogSumExp": "logsumexp"}


def _reduce_axes(node: Node, lw: Lowerer, rank: int) -> list[int] | None:
    """The reduced axes; None means 'none' (noop_with_empty_axes)."""
    axes = None
    if node.input(1) is not None:
        axes = lw.require_const(node, 1, "axes")
    elif node.attr("axes") is not None:
        axes = node.attr("axes")
    if axes is None or np.size(axes) == 0:
        return None if node.attr("noop_with_empty_axes", 0) else list(range(rank))
    return sorted({int(a) % rank for a in np.ravel(axes)})


@lowering(*_REDUCE_KIND, check=_float_only)
def lower_reduce(node: Node, lw: Lowerer) -> None:
    x, y = node.input(0), node.output
    xs = _shape(x, node)
    axes = _reduce_axes(node, lw, len(xs))
    if axes is None:
        emit_copy(node, lw, x, y)
        return
    spec = make_row_reduce(_REDUCE_KIND[node.op_type], xs, axes, dtype=x.dtype)
    lw.emit(node, render_row_reduce(spec), spec, [y, x])


@lowering("GlobalAveragePool", "GlobalMaxPool", check=_float_only)
def lower_global_pool(node: Node, lw: Lowerer) -> None:
    x, y = node.input(0), node.output
    xs = _shape(x, node)
    kind = "mean" if node.op_type == "GlobalAveragePool" else "max"
    spec = make_row_reduce(kind, xs, list(range(2, len(xs))), dtype=x.dtype)
    lw.emit(node, render_row_reduce(spec), spec, [y, x])


@lowering("Softmax", "LogSoftmax", check=_float_only)
def lower_softmax(node: Node, lw: Lowerer) -> None:
    x, y = node.input(0), node.output
    xs = _shape(x, node)
    r = len(xs)
    if node_opset(node) < 13:  # coerced to 2-D at axis: normalize over all trailing dims
        axes = list(range(node.attr("axis", 1) % r, r))
    else:
        axes = [node.attr("axis", -1) % r]
    spec = make_row_reduce("softmax" if node.op_type == "Softmax" else "logsoftmax", xs, axes, dtype=x.dtype)
    lw.emit(node, render_row_reduce(spec), spec, [y, x])


@lowering("LayerNormalization", check=_float_only)
def lower_layernorm(node: Node, lw: Lowerer) -> None:
    x, scale, bias = node.input(0), node.input(1), node.input(2)
    xs = _shape(x, node)
    r = len(xs)
    axis = node.attr("axis", -1) % r
    axes = list(range(axis, r))
    norm_shape = xs[axis:]
    aux_in = [View(v.dtype, broadcast_strides(_shape(v, node), norm_shape)) for v in (scale, bias) if v is not None]
    stats = node.outputs[1:3]
    outs = stats[:2] if not _unused(node, 2) else stats[:1] if not _unused(node, 1) else []  # InvStdDev needs Mean's slot
    aux_out = [View(v.dtype, contiguous_strides(xs[:axis])) for v in outs]
    spec = make_row_reduce("layernorm", xs, axes, aux_in=aux_in, aux_out=aux_out, eps=node.attr("epsilon", 1e-5),
                           dtype=x.dtype)
    args = [node.output, x, *(v for v in (scale, bias) if v is not None), *outs]
    lw.emit(node, render_row_reduce(spec), spec, args)
