"""Helpers every lowering family shares: dtype checks (the reasons ``supports()``
gives), copies and expression kernels, and the window geometry of convolutions
and pools (``auto_pad`` resolved).

>>> float_only(node)        # doctest: +SKIP
'Relu on int32 has no CUDA kernel (float32 or float16 only)'
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from graphopt.errors import UnsupportedOpError
from graphopt.expr import Expr, inputs_used, renumber
from graphopt.ir import Node, Value
from graphopt.ops.fused import FUSED_DOMAIN

from ..ew import make_elementwise, render_elementwise
from ..index_kernels import make_index_kernel, render_index_kernel
from ..exprc import expr_fn
from ..kernel import CTYPES
from ..scalar import broadcast_strides, identity
from ..specs import View, prod
from .registry import static_shape

if TYPE_CHECKING:
    from ..lower import Lowerer

__all__ = ["FUSED_DOMAIN", "emit_copy", "emit_expressions", "emit_index_kernel", "float_only", "fn_check",
           "known_dtypes", "layout_of",
           "spatial_dims", "unused", "window_attrs", "window_floats"]

def float_only(node: Node, allowed: tuple[str, ...] = ("float32", "float16")) -> str | None:
    """float32 or float16 tensors (float16 is stored as halves and computed in float32), or
    the ``allowed`` float types; integer constants (axes, shapes) are attributes in disguise
    and do not count."""
    kinds = {v.dtype for v in [*node.inputs, *node.outputs]
             if v is not None and not (v.is_const and v.dtype not in allowed)}
    if kinds <= set(allowed):
        return None
    return f"{node.op_type} on {'/'.join(sorted(kinds))} has no CUDA kernel ({' or '.join(allowed)} only)"


def window_floats(node: Node) -> str | None:
    """Convolutions and pools also run on bfloat16 storage (loads and stores convert)."""
    return float_only(node, ("float32", "float16", "bfloat16"))


def known_dtypes(node: Node) -> str | None:
    for v in [*node.inputs, *node.outputs]:
        if v is not None and v.dtype not in CTYPES:
            return f"dtype {v.dtype} of {v.name!r} has no CUDA kernels"
    return None


def unused(node: Node, i: int) -> bool:
    return len(node.outputs) <= i or (not node.outputs[i].num_uses and not node.outputs[i].is_graph_output)


def emit_copy(node: Node, lw: Lowerer, x: Value, y: Value) -> None:
    shape = static_shape(y, node)
    spec = make_elementwise(shape, View.contiguous(y.dtype, shape), [View.contiguous(x.dtype, shape)],
                            identity(y.dtype))
    lw.emit(node, render_elementwise(spec), spec, [y, x])


def fn_check(make) -> str | None:
    try:
        make()
    except UnsupportedOpError as exc:
        return str(exc)
    return None


def emit_expressions(node: Node, lw: Lowerer, exprs: list[Expr], ins: list[Value], outs: list[Value]) -> None:
    """``outs[i] = exprs[i](ins)`` with broadcasting: one kernel per distinct output shape."""
    by_shape: dict[tuple, list[int]] = {}
    for i, v in enumerate(outs):
        by_shape.setdefault(static_shape(v, node), []).append(i)
    for oshape, idxs in by_shape.items():
        group = [exprs[i] for i in idxs]
        used = inputs_used(group)
        remap = {u: k for k, u in enumerate(used)}
        fn = expr_fn([renumber(e, remap) for e in group], [ins[u].dtype for u in used])
        views = [View(ins[u].dtype, broadcast_strides(static_shape(ins[u], node), oshape)) for u in used]
        spec = make_elementwise(oshape, [View.contiguous(outs[i].dtype, oshape) for i in idxs], views, fn)
        lw.emit(node, render_elementwise(spec), spec, [*(outs[i] for i in idxs), *(ins[u] for u in used)])


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


def window_attrs(node: Node, x_shape, kernel, out_sp, layout: str = "NCHW"):
    """strides, begin+end pads (auto_pad resolved), dilations; ``out_sp`` the output's spatial dims."""
    in_sp = x_shape[1:-1] if layout == "NHWC" else x_shape[2:]
    nd = len(in_sp)
    strides = list(node.attr("strides") or [1] * nd)
    dilations = list(node.attr("dilations") or [1] * nd)
    pads = _conv_pads(node, in_sp, kernel, strides, dilations, out_sp)
    return strides, pads, dilations


def layout_of(node: Node) -> str:
    return node.attr("layout", "NCHW") if node.domain == FUSED_DOMAIN else "NCHW"


def spatial_dims(shape, layout: str):
    return shape[1:-1] if layout == "NHWC" else shape[2:]


def emit_index_kernel(lw: Lowerer, node: Node, family: str, shape, params, body, comment: str, args: list[Value],
                      dtypes=()) -> None:
    """A launch of an ``index_kernels.py`` kernel over ``shape``; ``args`` in ``params`` order."""
    spec = make_index_kernel(family, shape, params, body, comment,
                             extents=[prod(static_shape(v, node)) for v in args], dtypes=dtypes)
    lw.emit(node, render_index_kernel(spec), spec, args)
