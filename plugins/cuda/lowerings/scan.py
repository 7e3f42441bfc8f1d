"""Ops that walk one axis: CumSum and CumProd (one thread per fiber, in order), ArgMax /
ArgMin (one thread per result) and TopK (one thread per element, its rank counted over the
fiber), on the index kernels of ``index_kernels.py``.

>>> lower_graph(cumsum_graph).launches[0].kernel.name     # doctest: +SKIP
'go_cumsum_...'
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from graphopt.ir import Node

from ..index_kernels import arg_reduce_body, cumsum_body, ptr, topk_body
from .common import emit_index_kernel, known_dtypes
from .registry import lowering, static_shape

if TYPE_CHECKING:
    from ..lower import Lowerer


def _numeric(node: Node) -> str | None:
    why = known_dtypes(node)
    if why:
        return why
    if node.input(0).dtype == "bool":
        return f"{node.op_type} on bool"
    return None


@lowering("CumSum", "CumProd", check=_numeric)
def lower_cumsum(node: Node, lw: Lowerer) -> None:
    x, y = node.input(0), node.output
    shape = static_shape(x, node)
    axis = int(np.ravel(lw.require_const(node, 1, "axis"))[0]) % len(shape)
    product = node.op_type == "CumProd"
    emit_index_kernel(lw, node, "cumprod" if product else "cumsum", shape[:axis] + shape[axis + 1:],
                      [ptr("y", y.dtype, False), ptr("x", x.dtype)],
          cumsum_body(shape, axis, bool(node.attr("exclusive", 0)), bool(node.attr("reverse", 0)), x.dtype, product),
          f"{node.op_type} axis {axis} of {list(shape)}", [y, x], [x.dtype])


@lowering("ArgMax", "ArgMin", check=_numeric)
def lower_arg_reduce(node: Node, lw: Lowerer) -> None:
    x, y = node.input(0), node.output
    shape = static_shape(x, node)
    axis = node.attr("axis", 0) % len(shape)
    body = arg_reduce_body(shape, axis, bool(node.attr("keepdims", 1)), node.op_type == "ArgMax",
                           bool(node.attr("select_last_index", 0)), x.dtype)
    emit_index_kernel(lw, node, "argred", static_shape(y, node), [ptr("y", "int64", False), ptr("x", x.dtype)], body,
          f"{node.op_type} axis {axis} of {list(shape)}", [y, x], [x.dtype])


@lowering("TopK", check=_numeric)
def lower_topk(node: Node, lw: Lowerer) -> None:
    x, vals, idx = node.input(0), node.outputs[0], node.outputs[1]
    shape = static_shape(x, node)
    axis = node.attr("axis", -1) % len(shape)
    k = int(np.ravel(lw.require_const(node, 1, "K"))[0]) if node.input(1) is not None else int(node.attr("k"))
    body = topk_body(shape, axis, k, bool(node.attr("largest", 1)), x.dtype)
    emit_index_kernel(lw, node, "topk", shape,
                      [ptr("y", vals.dtype, False), ptr("yi", "int64", False), ptr("x", x.dtype)], body,
          f"TopK k={k} axis {axis} of {list(shape)}", [vals, idx, x], [x.dtype])
