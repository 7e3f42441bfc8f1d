"""Reductions over any set of axes, Softmax / LogSoftmax and LayerNormalization: the
row kernels of ``reduce.py`` (float32, float16 or bfloat16 tensors, float32 math inside);
LRN, a window over channels, on an index kernel.

>>> lower_graph(softmax_graph).launches[0].kernel.name   # doctest: +SKIP
'go_rowred_...'
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from graphopt.ir import Node
from graphopt.ops.registry import node_opset

from ..index_kernels import lrn_body, ptr
from ..reduce import make_row_reduce, render_row_reduce
from ..scalar import broadcast_strides, contiguous_strides
from ..specs import View
from .common import emit_copy, emit_index_kernel, float_only, unused, window_floats
from .registry import lowering, static_shape

if TYPE_CHECKING:
    from ..lower import Lowerer

_REDUCE_KIND = {"ReduceSum": "sum", "ReduceMean": "mean", "ReduceMax": "max", "ReduceMin": "min",
                "ReduceProd": "prod", "ReduceSumSquare": "sumsq", "ReduceL1": "l1", "ReduceL2": "l2",
                "ReduceLogSumExp": "logsumexp"}


def row_floats(node: Node) -> str | None:
    """Row kernels read and write float32, float16 or bfloat16 and compute in float32."""
    return window_floats(node)


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


@lowering(*_REDUCE_KIND, check=row_floats)
def lower_reduce(node: Node, lw: Lowerer) -> None:
    x, y = node.input(0), node.output
    xs = static_shape(x, node)
    axes = _reduce_axes(node, lw, len(xs))
    if axes is None:
        emit_copy(node, lw, x, y)
        return
    spec = make_row_reduce(_REDUCE_KIND[node.op_type], xs, axes, dtype=x.dtype)
    lw.emit(node, render_row_reduce(spec), spec, [y, x])


@lowering("Softmax", "LogSoftmax", check=row_floats)
def lower_softmax(node: Node, lw: Lowerer) -> None:
    x, y = node.input(0), node.output
    xs = static_shape(x, node)
    r = len(xs)
    if node_opset(node) < 13:  # coerced to 2-D at axis: normalize over all trailing dims
        axes = list(range(node.attr("axis", 1) % r, r))
    else:
        axes = [node.attr("axis", -1) % r]
    spec = make_row_reduce("softmax" if node.op_type == "Softmax" else "logsoftmax", xs, axes, dtype=x.dtype)
    lw.emit(node, render_row_reduce(spec), spec, [y, x])


@lowering("LayerNormalization", check=row_floats)
def lower_layernorm(node: Node, lw: Lowerer) -> None:
    x, scale, bias = node.input(0), node.input(1), node.input(2)
    xs = static_shape(x, node)
    r = len(xs)
    axis = node.attr("axis", -1) % r
    axes = list(range(axis, r))
    norm_shape = xs[axis:]
    aux_in = [View(v.dtype, broadcast_strides(static_shape(v, node), norm_shape)) for v in (scale, bias) if v is not None]
    stats = node.outputs[1:3]
    outs = stats[:2] if not unused(node, 2) else stats[:1] if not unused(node, 1) else []  # InvStdDev needs Mean's slot
    aux_out = [View(v.dtype, contiguous_strides(xs[:axis])) for v in outs]
    spec = make_row_reduce("layernorm", xs, axes, aux_in=aux_in, aux_out=aux_out, eps=node.attr("epsilon", 1e-5),
                           dtype=x.dtype)
    args = [node.output, x, *(v for v in (scale, bias) if v is not None), *outs]
    lw.emit(node, render_row_reduce(spec), spec, args)


@lowering("LRN", check=float_only)
def lower_lrn(node: Node, lw: Lowerer) -> None:
    """A thread per element sums the squares over its channel window (``index_kernels.py``)."""
    x, y = node.input(0), node.output
    shape = static_shape(x, node)
    body = lrn_body(shape, int(node.attr("size")), float(node.attr("alpha", 1e-4)), float(node.attr("beta", 0.75)),
                    float(node.attr("bias", 1.0)), x.dtype)
    emit_index_kernel(lw, node, "lrn", shape, [ptr("y", y.dtype, False), ptr("x", x.dtype)], body,
                      f"LRN size {node.attr('size')} over {list(shape)}", [y, x], [x.dtype])
