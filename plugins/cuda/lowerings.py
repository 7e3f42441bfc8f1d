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
from graphopt.expr import Expr, Input, inputs_used, node_to_expr, parse_exprs, renumber
from graphopt.ir import Node, Value
from graphopt.ops.registry import all_schemas, node_opset

from .attention import make_attention, render_attention
from .conv_nhwc import make_conv_nhwc, render_conv_nhwc
from .ew import make_elementwise, render_elementwise
from .exprc import expr_fn
from .gemm import make_conv, make_matmul, render_conv, render_gemm
from .kernel import CTYPES
from .lower import Lowerer, lowering, static_shape
from .movement import make_gather, make_pad, render_gather, render_pad
from .reduce import make_row_reduce, render_row_reduce
from .resize import make_resize, render_resize
from .scalar import ScalarFn, broadcast_strides, contiguous_strides, identity
from .spatial import make_depthwise, make_pool, render_depthwise, render_pool
from .specs import Epilogue, View
from .tc_gemm import MMA_HELPERS, TcMatmulSpec, make_tc_matmul, render_tc_matmul

FUSED_DOMAIN = "ai.graphopt"


def _shape(v: Value, node: Node) -> tuple[int, ...]:
    return static_shape(v, node)


def _float_only(node: Node, allowed: tuple[str, ...] = ("float32", "float16")) -> str | None:
    """float32 or float16 tensors (float16 is stored as halves and computed in float32), or
    the ``allowed`` float types; integer constants (axes, shapes) are attributes in disguise
    and do not count."""
    kinds = {v.dtype for v in [*node.inputs, *node.outputs]
             if v is not None and not (v.is_const and v.dtype not in allowed)}
    if kinds <= set(allowed):
        return None
    return f"{node.op_type} on {'/'.join(sorted(kinds))} has no CUDA kernel ({' or '.join(allowed)} only)"


def _window_floats(node: Node) -> str | None:
    """Convolutions and pools also run on bfloat16 storage (loads and stores convert)."""
    return _float_only(node, ("float32", "float16", "bfloat16"))


def _known_dtypes(node: Node) -> str | None:
    for v in [*node.inputs, *node.outputs]:
        if v is not None and v.dtype not in CTYPES:
            return f"dtype {v.dtype} of {v.name!r} has no CUDA kernels"
    return None


def _gemm_dtypes(node: Node, n_base: int = 3) -> str | None:
    """float32 on SIMT cores, or float16 / bfloat16 on tensor cores: all base operands alike."""
    kinds = {v.dtype for v in [*node.inputs[:n_base], *node.outputs] if v is not None}
    if kinds in ({"float32"}, {"float16"}, {"bfloat16"}):
        return None
    return (f"{node.op_type} on {'/'.join(sorted(kinds))} has no CUDA kernel (float32, or float16 or bfloat16 "
            "on tensor cores)")


def _matmul_spec(dtype: str, M, N, K, batch=(), *, a, b, c, alpha=1.0, epilogue=None):
    """A SIMT spec for float32, a tensor-core spec for float16 and bfloat16."""
    if dtype in MMA_HELPERS:
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


def _node_expr(node: Node) -> tuple[Expr | None, list[Value]]:
    """One elementwise node as an expression over its present inputs (``in0``... in order)."""
    present = [v for v in node.inputs if v is not None]
    args, k = [], 0
    for v in node.inputs:
        args.append(None if v is None else Input(k))
        k += v is not None
    return node_to_expr(node, args), present


def _fn_check(make) -> str | None:
    try:
        make()
    except UnsupportedOpError as exc:
        return str(exc)
    return None


def _ew_check(node: Node) -> str | None:
    why = _known_dtypes(node)
    if why:
        return why
    e, present = _node_expr(node)
    if e is None:
        return f"{node.op_type} has no expression form"
    return _fn_check(lambda: expr_fn([e], [v.dtype for v in present]))


def _emit_expressions(node: Node, lw: Lowerer, exprs: list[Expr], ins: list[Value], outs: list[Value]) -> None:
    """``outs[i] = exprs[i](ins)`` with broadcasting: one kernel per distinct output shape."""
    by_shape: dict[tuple, list[int]] = {}
    for i, v in enumerate(outs):
        by_shape.setdefault(_shape(v, node), []).append(i)
    for oshape, idxs in by_shape.items():
        group = [exprs[i] for i in idxs]
        used = inputs_used(group)
        remap = {u: k for k, u in enumerate(used)}
        fn = expr_fn([renumber(e, remap) for e in group], [ins[u].dtype for u in used])
        views = [View(ins[u].dtype, broadcast_strides(_shape(ins[u], node), oshape)) for u in used]
        spec = make_elementwise(oshape, [View.contiguous(outs[i].dtype, oshape) for i in idxs], views, fn)
        lw.emit(node, render_elementwise(spec), spec, [*(outs[i] for i in idxs), *(ins[u] for u in used)])


def _elementwise_ops() -> list[str]:
    return sorted(s.op_type for s in all_schemas() if s.elementwise and s.domain == "")


@lowering(*_elementwise_ops(), check=_ew_check)
def lower_elementwise(node: Node, lw: Lowerer) -> None:
    e, present = _node_expr(node)
    _emit_expressions(node, lw, [e], present, [node.output])


def _fused_exprs(node: Node) -> list[Expr]:
    text = node.attr("expr", "")
    return parse_exprs(text) if text else [Input(0)]


def _fused_ew_check(node: Node) -> str | None:
    why = _known_dtypes(node)
    if why:
        return why
    return _fn_check(lambda: expr_fn(_fused_exprs(node), [v.dtype for v in node.inputs]))


@lowering("FusedElementwise", domain=FUSED_DOMAIN, check=_fused_ew_check)
def lower_fused_elementwise(node: Node, lw: Lowerer) -> None:
    _emit_expressions(node, lw, _fused_exprs(node), list(node.inputs), list(node.outputs))


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
    # (x - mean) / sqrt(var + eps) * scale + bias
    fn = expr_fn(parse_exprs(f"add(mul(div(sub(in0, in3), sqrt(add(in4, {float(eps)!r}))), in1), in2)"),
                 [v.dtype for v in (x, scale, bias, mean, var)])
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


def _bias_fn(bias_dtype: str, beta: float = 1.0) -> ScalarFn:
    """``acc + beta * bias``: Gemm's C, Conv's B."""
    text = "add(in0, in1)" if beta == 1.0 else f"add(in0, mul(in1, {beta!r}))"
    return expr_fn(parse_exprs(text), ["float32", bias_dtype])


def _epilogue(node: Node, n_base: int, out_shape, base: tuple[ScalarFn, View, Value] | None,
              to_kernel_view=lambda v: v) -> tuple[Epilogue, list[Value]]:
    """The kernel epilogue of a GEMM-family node: its base operand (bias, C) and, for a fused
    node, its ``epilogue`` expression over the accumulator and the extra inputs (views broadcast
    to the output, then mapped to the kernel's coordinates by ``to_kernel_view``)."""
    fn, views, args = None, [], []
    if base is not None:
        fn, view, value = base
        views.append(to_kernel_view(view))
        args.append(value)
    text = node.attr("epilogue", "") if node.domain == FUSED_DOMAIN else ""
    e = parse_exprs(text)[0] if text else Input(0)
    if e != Input(0):
        extras = list(node.inputs[n_base:])
        ep_fn = expr_fn([e], ["float32", *(v.dtype for v in extras)])
        fn = ep_fn if fn is None else fn.then(ep_fn)
        views += [to_kernel_view(View(v.dtype, broadcast_strides(_shape(v, node), out_shape))) for v in extras]
        args += extras
    return Epilogue(fn, tuple(views)), args


def _epilogue_check(node: Node, n_base: int) -> str | None:
    if node.domain != FUSED_DOMAIN or not node.attr("epilogue", ""):
        return None
    extras = [v.dtype for v in node.inputs[n_base:]]
    return _fn_check(lambda: expr_fn(parse_exprs(node.attr("epilogue")), ["float32", *extras]))


def _gemm_check(n_base: int):
    return lambda node: _gemm_dtypes(node, n_base) or _epilogue_check(node, n_base)


@lowering("MatMul", check=_gemm_check(2))
@lowering("FusedMatMul", domain=FUSED_DOMAIN, check=_gemm_check(2))
def lower_matmul(node: Node, lw: Lowerer) -> None:
    a, b = node.input(0), node.input(1)
    y = node.output
    dt = y.dtype
    ash, bsh = _shape(a, node), _shape(b, node)
    ast, bst = contiguous_strides(ash), contiguous_strides(bsh)
    a_vec, b_vec = len(ash) == 1, len(bsh) == 1
    if a_vec:
        ash, ast = (1, ash[0]), (0, ast[0])
    if b_vec:
        bsh, bst = (bsh[0], 1), (bst[0], 0)
    M, K = ash[-2:]
    N = bsh[-1]
    batch = tuple(np.broadcast_shapes(ash[:-2], bsh[:-2]))
    av = View(dt, broadcast_strides(ash[:-2], batch, ast[:-2]) + ast[-2:])
    bv = View(dt, broadcast_strides(bsh[:-2], batch, bst[:-2]) + bst[-2:])

    def to_kernel_view(v: View) -> View:  # (*batch, [M], [N]) of the output -> (*batch, M, N)
        st = list(v.strides)
        if a_vec:
            st.insert(len(st) - (0 if b_vec else 1), 0)
        if b_vec:
            st.append(0)
        return View(v.dtype, tuple(st), v.offset)

    ep, ep_args = _epilogue(node, 2, _shape(y, node), None, to_kernel_view)
    spec = _matmul_spec(dt, M, N, K, batch, a=av, b=bv, c=View.contiguous(dt, (*batch, M, N)), epilogue=ep)
    lw.emit(node, _render_matmul(spec), spec, [y, a, b, *ep_args])


@lowering("Gemm", check=_gemm_check(3))
@lowering("FusedGemm", domain=FUSED_DOMAIN, check=_gemm_check(3))
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
    base = None
    if c is not None and beta != 0.0:
        base = (_bias_fn(c.dtype, beta), View(c.dtype, broadcast_strides(_shape(c, node), (M, N))), c)
    ep, ep_args = _epilogue(node, 3, (M, N), base)
    spec = _matmul_spec(dt, M, N, K, a=View(dt, ast), b=View(dt, bst), c=View.contiguous(dt, (M, N)),
                        alpha=node.attr("alpha", 1.0), epilogue=ep)
    lw.emit(node, _render_matmul(spec), spec, [y, a, b, *ep_args])


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


def _window_attrs(node: Node, x_shape, kernel, out_sp, layout: str = "NCHW"):
    """strides, begin+end pads (auto_pad resolved), dilations; ``out_sp`` the output's spatial dims."""
    in_sp = x_shape[1:-1] if layout == "NHWC" else x_shape[2:]
    nd = len(in_sp)
    strides = list(node.attr("strides") or [1] * nd)
    dilations = list(node.attr("dilations") or [1] * nd)
    pads = _conv_pads(node, in_sp, kernel, strides, dilations, out_sp)
    return strides, pads, dilations


def _layout(node: Node) -> str:
    return node.attr("layout", "NCHW") if node.domain == FUSED_DOMAIN else "NCHW"


def _spatial(shape, layout: str):
    return shape[1:-1] if layout == "NHWC" else shape[2:]


def _conv_check(node: Node) -> str | None:
    why = _window_floats(node) or _epilogue_check(node, 3)
    if why:
        return why
    if _layout(node) not in ("NCHW", "NHWC"):
        return f"{node.qualified_op} with layout {node.attr('layout')!r} (the CUDA kernels take NCHW or NHWC)"
    x = node.input(0)
    if x.type is not None and x.type.rank is not None and x.type.rank < 3:
        return "Conv needs at least one spatial dim"
    return None


@lowering("Conv", check=_conv_check)
@lowering("FusedConv", domain=FUSED_DOMAIN, check=_conv_check)
def lower_conv(node: Node, lw: Lowerer) -> None:
    """NCHW: implicit GEMM (``gemm.py``); NHWC (``FusedConv[layout="NHWC"]``, W as
    ``[O, *kernel, C/group]``): implicit GEMM over channels-last data (``conv_nhwc.py``).
    Either way depthwise runs on the window kernel and a pointwise conv is a batched GEMM."""
    x, w, b = node.input(0), node.input(1), node.input(2)
    y = node.output
    layout = _layout(node)
    nhwc = layout == "NHWC"
    xs, ws, ys = _shape(x, node), _shape(w, node), _shape(y, node)
    ksp, osp = _spatial(ws, layout), _spatial(ys, layout)
    strides, pads, dilations = _window_attrs(node, xs, ksp, osp, layout)
    groups = int(node.attr("group", 1))
    dt = y.dtype
    chan = (0,) * (len(ys) - 1) + (1,) if nhwc else (0, 1) + (0,) * (len(ys) - 2)
    base = None if b is None else (_bias_fn(b.dtype), View(b.dtype, chan), b)
    ep, ep_args = _epilogue(node, 3, ys, base)
    args = [y, x, w, *ep_args]
    if groups > 1 and ws[-1 if nhwc else 1] == 1:  # depthwise: one input channel per group
        spec = make_depthwise(xs, ws, osp, strides=strides, pads=pads, dilations=dilations, epilogue=ep, dtype=dt,
                              layout=layout)
        lw.emit(node, render_depthwise(spec), spec, args)
        return
    if groups == 1 and all(k == 1 for k in ksp) and set(strides) == {1} and not any(pads):
        ops = [_pixels_view(v, osp, nhwc) for v in ep.operands]
        if all(v is not None for v in ops):
            _emit_pointwise_conv(node, lw, xs[0], int(np.prod(osp)), ws[0], int(np.prod(ws[1:])),
                                 Epilogue(ep.fn, tuple(ops)), nhwc, args)
            return
        if not nhwc:
            raise UnsupportedOpError(f"node {node.name!r}: an epilogue operand does not walk the pixels in order")
    if nhwc:
        spec = make_conv_nhwc(xs, ws, osp, strides=strides, pads=pads[:len(strides)], dilations=dilations,
                              groups=groups, epilogue=ep, dtype=dt)
        lw.emit(node, render_conv_nhwc(spec), spec, args)
        return
    spec = make_conv(xs, ws, osp, strides=strides, pads=pads[:len(strides)], dilations=dilations, groups=groups,
                     epilogue=ep, dtype=dt)
    lw.emit(node, render_conv(spec), spec, args)


def _emit_pointwise_conv(node: Node, lw: Lowerer, n: int, pix: int, k: int, c: int, ep: Epilogue, nhwc: bool,
                         args: list[Value]) -> None:
    """A 1x1 convolution as a GEMM batched over images, no im2col index math:
    NCHW ``y[n] = W[K, C] @ x[n][C, pixels]``; NHWC ``y[n] = x[n][pixels, C] @ W[K, C]^T``."""
    y, x, w = args[:3]
    dt = y.dtype
    if nhwc:
        spec = _matmul_spec(dt, pix, k, c, (n,), a=View(dt, (pix * c, c, 1)), b=View(dt, (0, 1, c)),
                            c=View(dt, (pix * k, k, 1)), epilogue=ep)
        lw.emit(node, _render_matmul(spec), spec, [y, x, w, *args[3:]])
        return
    spec = _matmul_spec(dt, k, pix, c, (n,), a=View(dt, (0, c, 1)), b=View(dt, (c * pix, pix, 1)),
                        c=View(dt, (k * pix, pix, 1)), epilogue=ep)
    lw.emit(node, _render_matmul(spec), spec, [y, w, x, *args[3:]])  # A is the weight, B the image


def _pixels_view(v: View, spatial, nhwc: bool) -> View | None:
    """A view over the output's (n, c, *spatial) (NCHW) or (n, *spatial, c) (NHWC) as one over the
    pointwise GEMM's (n, pixel, c) / (n, c, pixel); None when its spatial dims do not nest like a
    contiguous tensor's (a per-channel bias and a residual in the output's layout do)."""
    sp_strides = v.strides[1:-1] if nhwc else v.strides[2:]
    inner = sp_strides[-1]
    if any(st != inner * int(np.prod(spatial[i + 1:])) for i, st in enumerate(sp_strides)):
        return None
    if nhwc:
        return View(v.dtype, (v.strides[0], inner, v.strides[-1]), v.offset)
    return View(v.dtype, v.strides[:2] + (inner,), v.offset)


def _pool_check(node: Node) -> str | None:
    # MaxPool also moves int8/uint8 (a pass-through op of int8 islands): max is exact in float32
    int8_max = node.op_type == "MaxPool" and {node.input(0).dtype, node.output.dtype} <= {"int8", "uint8"}
    why = None if int8_max else _window_floats(node)
    if why:
        return why
    if node.op_type == "MaxPool" and not _unused(node, 1):
        return "MaxPool with a used Indices output"
    return None


def _nhwc_pool_check(node: Node) -> str | None:
    if node.attr("layout", "NHWC") != "NHWC":
        return f"{node.qualified_op} with layout {node.attr('layout')!r}"
    return _pool_check(node) if node.op_type in ("MaxPool", "AveragePool") else _window_floats(node)


@lowering("MaxPool", "AveragePool", check=_pool_check)
@lowering("MaxPool", "AveragePool", domain=FUSED_DOMAIN, check=_nhwc_pool_check)
def lower_pool(node: Node, lw: Lowerer) -> None:
    x, y = node.input(0), node.output
    layout = _layout(node)
    xs, ys = _shape(x, node), _shape(y, node)
    kernel = list(node.attr("kernel_shape"))
    osp = _spatial(ys, layout)
    strides, pads, dilations = _window_attrs(node, xs, kernel, osp, layout)
    kind = "max" if node.op_type == "MaxPool" else "avg"
    spec = make_pool(kind, xs, kernel, osp, strides=strides, pads=pads, dilations=dilations,
                     count_include_pad=bool(node.attr("count_include_pad", 0)), dtype=x.dtype, layout=layout)
    lw.emit(node, render_pool(spec), spec, [y, x])


@lowering("GlobalAveragePool", "GlobalMaxPool", domain=FUSED_DOMAIN, check=_nhwc_pool_check)
def lower_global_pool_nhwc(node: Node, lw: Lowerer) -> None:
    """Over channels-last data a global pool is a window pool whose window is the whole image:
    a thread per (image, channel), neighbouring threads on neighbouring channels."""
    x, y = node.input(0), node.output
    xs = _shape(x, node)
    sp = list(xs[1:-1])
    spec = make_pool("avg" if node.op_type == "GlobalAveragePool" else "max", xs, sp, [1] * len(sp),
                     dtype=x.dtype, layout="NHWC")
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


@lowering("GlobalAveragePool", "GlobalMaxPool", check=_window_floats)
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


# -- attention ---------------------------------------------------------------------------------------


def _attention_check(node: Node) -> str | None:
    why = _float_only(node)
    if why:
        return why
    if node.attr("layout", "BHSD") not in ("BHSD", "BSHD"):
        return f"Attention layout {node.attr('layout')!r}"
    if node.attr("layout", "BHSD") == "BSHD" and int(node.attr("num_heads", 0)) < 1:
        return "Attention with layout 'BSHD' needs num_heads"
    return None


def _heads_view(dtype: str, b: int, s: int, h: int, d: int) -> View:
    """[B, S, H, D] memory (or [B, S, H*D]) seen as (B, H, S, D)."""
    st = contiguous_strides((b, s, h, d))
    return View(dtype, (st[0], st[2], st[1], st[3]))


@lowering("Attention", domain=FUSED_DOMAIN, check=_attention_check)
def lower_attention(node: Node, lw: Lowerer) -> None:
    q, k, v = node.inputs[:3]
    mask = node.input(3)
    y = node.output
    qs, ks, vs = _shape(q, node), _shape(k, node), _shape(v, node)
    if node.attr("layout", "BHSD") == "BHSD":
        sq, d = qs[-2:]
        sk, dv = vs[-2:]
        batch = tuple(np.broadcast_shapes(qs[:-2], ks[:-2], vs[:-2]))

        def view(val: Value, shape, swap=False) -> View:
            st = contiguous_strides(shape)
            last = (st[-1], st[-2]) if swap else st[-2:]
            return View(val.dtype, broadcast_strides(shape[:-2], batch, st[:-2]) + tuple(last))

        qv, kv, vv = view(q, qs), view(k, ks, bool(node.attr("k_transposed", 0))), view(v, vs)
        ov = View.contiguous(y.dtype, (*batch, sq, dv))
    else:
        h = int(node.attr("num_heads"))
        b, sq, sk = qs[0], qs[1], ks[1]
        d = qs[-1] // h if len(qs) == 3 else qs[-1]
        dv = vs[-1] // h if len(vs) == 3 else vs[-1]
        batch = (b, h)
        qv, kv = _heads_view(q.dtype, b, sq, h, d), _heads_view(k.dtype, b, sk, h, d)
        vv = _heads_view(v.dtype, b, sk, h, dv)
        ov = _heads_view(y.dtype, b, sq, h, dv)
    bias = None if mask is None else View(mask.dtype, broadcast_strides(_shape(mask, node), (*batch, sq, sk)))
    spec = make_attention(batch, sq, sk, d, dv, q=qv, k=kv, v=vv, out=ov, bias=bias, scale=float(node.attr("scale")))
    lw.emit(node, render_attention(spec), spec, [y, q, k, v, *([mask] if mask is not None else [])])


# -- resize ------------------------------------------------------------------------------------------


def _resize_check(node: Node) -> str | None:
    mode = node.attr("mode", "nearest")
    if node.attr("coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize":
        return "Resize with tf_crop_and_resize"
    if mode != "nearest":
        return _float_only(node)
    return _known_dtypes(node)


@lowering("Resize", "Upsample", check=_resize_check)
def lower_resize(node: Node, lw: Lowerer) -> None:
    from graphopt.ops import resize as ref

    x, y = node.input(0), node.output
    xs, ys = _shape(x, node), _shape(y, node)
    mode = node.attr("mode", "nearest")
    if node.op_type == "Upsample" or node_opset(node) < 11:  # asymmetric coordinates, nearest floors/ceils
        scales = lw.const(node.input(1)) if node.input(1) is not None else node.attr("scales")
        if scales is None:
            raise UnsupportedOpError(f"node {node.name!r} ({node.op_type}): scales must be a constant")
        sc = [float(v) for v in np.ravel(scales)]
        mode = {"bilinear": "linear", "trilinear": "linear"}.get(mode, mode)
        kw = dict(mode=mode, nearest_mode="simple")
        ctm = "asymmetric"
    else:
        scales, sizes = lw.const(node.input(2)), lw.const(node.input(3))
        if (node.input(2) is not None and scales is None) or (node.input(3) is not None and sizes is None):
            raise UnsupportedOpError(f"node {node.name!r} (Resize): scales and sizes must be constants")
        _, sc, _ = ref._plan(xs, ref._opt([None, None, scales], 2), ref._opt([None, None, None, sizes], 3),
                             node.attr("axes"), node.attr("keep_aspect_ratio_policy", "stretch"))
        ctm = node.attr("coordinate_transformation_mode", "half_pixel")
        kw = dict(mode=mode, nearest_mode=node.attr("nearest_mode", "round_prefer_floor"),
                  cubic_a=node.attr("cubic_coeff_a", -0.75), exclude_outside=bool(node.attr("exclude_outside", 0)),
                  antialias=bool(node.attr("antialias", 0)))
    taps, tables = [0] * len(xs), []
    for a, (n_in, n_out) in enumerate(zip(xs, ys)):
        if n_out == n_in and sc[a] == 1.0:
            continue
        idx, w = ref.axis_taps(ref.source_coords(ctm, n_out, n_in, sc[a]), n_in, sc[a], **kw)
        taps[a] = idx.shape[1]
        tables.append(lw.new_const(f"{node.name}_taps{a}", idx.astype(np.int32)))
        if mode != "nearest":
            tables.append(lw.new_const(f"{node.name}_weights{a}", w.astype(np.float32)))
    if not any(taps):
        emit_copy(node, lw, x, y)
        return
    if 0 in xs and 0 not in ys:
        raise UnsupportedOpError(f"node {node.name!r} (Resize): an empty input resized to a non-empty output")
    spec = make_resize(xs, ys, x.dtype, taps, weighted=mode != "nearest")
    lw.emit(node, render_resize(spec), spec, [y, x, *tables])


from . import qlowerings  # noqa: E402,F401  (registers the quantized ops' lowerings)
