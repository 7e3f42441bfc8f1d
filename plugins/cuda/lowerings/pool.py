"""Pools: MaxPool / AveragePool (NCHW, or the ``ai.graphopt`` NHWC forms) on the
window kernel (``spatial.py``); global pools as row reductions (NCHW) or as a window
pool over the whole image (NHWC).

>>> lower_graph(pool_graph).launches[0].kernel.name      # doctest: +SKIP
'go_pool_...'
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from graphopt.ir import Node

from ..reduce import make_row_reduce, render_row_reduce
from ..spatial import make_pool, render_pool
from .common import FUSED_DOMAIN, layout_of, spatial_dims, unused, window_attrs, window_floats
from .registry import lowering, static_shape

if TYPE_CHECKING:
    from ..lower import Lowerer

def _pool_check(node: Node) -> str | None:
    # MaxPool also moves int8/uint8 (a pass-through op of int8 islands): max is exact in float32
    int8_max = node.op_type == "MaxPool" and {node.input(0).dtype, node.output.dtype} <= {"int8", "uint8"}
    why = None if int8_max else window_floats(node)
    if why:
        return why
    if node.op_type == "MaxPool" and not unused(node, 1):
        return "MaxPool with a used Indices output"
    return None


def _nhwc_pool_check(node: Node) -> str | None:
    if node.attr("layout", "NHWC") != "NHWC":
        return f"{node.qualified_op} with layout {node.attr('layout')!r}"
    return _pool_check(node) if node.op_type in ("MaxPool", "AveragePool") else window_floats(node)


@lowering("MaxPool", "AveragePool", check=_pool_check)
@lowering("MaxPool", "AveragePool", domain=FUSED_DOMAIN, check=_nhwc_pool_check)
def lower_pool(node: Node, lw: Lowerer) -> None:
    x, y = node.input(0), node.output
    layout = layout_of(node)
    xs, ys = static_shape(x, node), static_shape(y, node)
    kernel = list(node.attr("kernel_shape"))
    osp = spatial_dims(ys, layout)
    strides, pads, dilations = window_attrs(node, xs, kernel, osp, layout)
    kind = "max" if node.op_type == "MaxPool" else "avg"
    spec = make_pool(kind, xs, kernel, osp, strides=strides, pads=pads, dilations=dilations,
                     count_include_pad=bool(node.attr("count_include_pad", 0)), dtype=x.dtype, layout=layout)
    lw.emit(node, render_pool(spec), spec, [y, x])


@lowering("GlobalAveragePool", "GlobalMaxPool", domain=FUSED_DOMAIN, check=_nhwc_pool_check)
def lower_global_pool_nhwc(node: Node, lw: Lowerer) -> None:
    """Over channels-last data a global pool is a window pool whose window is the whole image:
    a thread per (image, channel), neighbouring threads on neighbouring channels."""
    x, y = node.input(0), node.output
    xs = static_shape(x, node)
    sp = list(xs[1:-1])
    spec = make_pool("avg" if node.op_type == "GlobalAveragePool" else "max", xs, sp, [1] * len(sp),
                     dtype=x.dtype, layout="NHWC")
    lw.emit(node, render_pool(spec), spec, [y, x])


@lowering("GlobalAveragePool", "GlobalMaxPool", check=window_floats)
def lower_global_pool(node: Node, lw: Lowerer) -> None:
    x, y = node.input(0), node.output
    xs = static_shape(x, node)
    kind = "mean" if node.op_type == "GlobalAveragePool" else "max"
    spec = make_row_reduce(kind, xs, list(range(2, len(xs))), dtype=x.dtype)
    lw.emit(node, render_row_reduce(spec), spec, [y, x])
