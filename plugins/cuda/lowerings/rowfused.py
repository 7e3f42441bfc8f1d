"""The CUDA lowering of ``ai.graphopt::FusedRowReduce``: one row kernel (``reduce.py``) whose
loads evaluate the prologue and whose stores evaluate the epilogue (``RowFusion``).

Each of the node's inputs that an expression reads is one kernel argument; the
prologue reads it through a view broadcast to the row input's shape, the
epilogue through one broadcast to the row result's. The prologue's further
results (values read outside) have the row input's shape and are written during
the first pass over the row.

>>> lowered = lower_graph(graph, backend_name="cuda-emu")   # doctest: +SKIP
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from graphopt.errors import UnsupportedOpError
from graphopt.expr import Input, dtype_of, inputs_used, renumber
from graphopt.ir import Node
from graphopt.ops.fused import FUSED_DOMAIN, row_exprs, row_op, row_result_shape

from ..exprc import expr_fn
from ..reduce import RowFusion, make_row_reduce, render_row_reduce
from ..scalar import HALF_TYPES, broadcast_strides
from ..specs import View
from .registry import lowering, static_shape

if TYPE_CHECKING:
    from ..lower import Lowerer

# FusedRowReduce kind -> row kernel kind
KERNEL_KIND = {"softmax": "softmax", "log_softmax": "logsoftmax", "layernorm": "layernorm",
               "reduce_mean": "mean", "reduce_sum": "sum", "reduce_max": "max"}
ROW_DTYPES = ("float32", *HALF_TYPES)


def _plan(node: Node):
    """``(kind, own operands, inputs, prologue, epilogue)`` of the node."""
    _, n_own = row_op(node.attrs)
    attrs = {"epilogue": "", **node.attrs}
    pro, epi = row_exprs(attrs, len(node.outputs), f"node {node.name!r}")
    return attrs["kind"], list(node.inputs[:n_own]), list(node.inputs[n_own:]), pro, epi


def _fns(node: Node):
    """The kernel's scalar functions and which inputs they read: ``(row, first, epilogue,
    loaded, epi_loaded)``, the last two being node-input indices in the functions' operand order."""
    kind, own, ins, pro, epi = _plan(node)
    loaded = inputs_used(pro)
    pro = [renumber(e, {u: k for k, u in enumerate(loaded)}) for e in pro]
    dts = [ins[u].dtype for u in loaded]
    row = expr_fn(pro[:1], dts)
    first = expr_fn(pro, dts) if len(pro) > 1 else None
    if epi == [Input(0)]:
        return row, first, None, loaded, []
    epi_loaded = [i - 1 for i in inputs_used(epi) if i > 0]
    remap = {0: 0, **{u + 1: k + 1 for k, u in enumerate(epi_loaded)}}
    x_dtype = dtype_of(pro[0], dts)
    epilogue = expr_fn([renumber(e, remap) for e in epi], [x_dtype, *(ins[u].dtype for u in epi_loaded)])
    return row, first, epilogue, loaded, epi_loaded


def _check(node: Node) -> str | None:
    try:
        kind, own, ins, pro, epi = _plan(node)
        if any(v is not None and v.dtype not in ROW_DTYPES for v in own):
            return f"FusedRowReduce operands of {'/'.join(v.dtype for v in own if v is not None)}"
        x_dtype = dtype_of(pro[0], [v.dtype for v in ins])
        if x_dtype not in ROW_DTYPES:
            return f"FusedRowReduce over {x_dtype} rows has no CUDA kernel ({', '.join(ROW_DTYPES)} only)"
        _fns(node)
    except UnsupportedOpError as exc:
        return str(exc)
    return None


@lowering("FusedRowReduce", domain=FUSED_DOMAIN, check=_check)
def lower_fused_row_reduce(node: Node, lw: Lowerer) -> None:
    kind, own, ins, pro, epi = _plan(node)
    row, first, epilogue, loaded, epi_loaded = _fns(node)
    shapes = [static_shape(v, node) for v in ins]
    x_shape = tuple(np.broadcast_shapes(*(shapes[u] for u in inputs_used(pro[0])))) if inputs_used(pro[0]) else ()
    if not x_shape:
        raise UnsupportedOpError(f"node {node.name!r} (FusedRowReduce): a scalar row input")
    acc_shape = row_result_shape(row_op(node.attrs)[0], {"keepdims": node.attrs.get("keepdims", 1)}, x_shape)
    # results over y's dims: all of x's for a normalization, the kept ones for a reduction
    y_shape = x_shape if kind in ("softmax", "log_softmax", "layernorm") else x_shape[:-1]
    n_epi = len(epi)
    for v in node.outputs[:n_epi]:
        if static_shape(v, node) != tuple(acc_shape):
            raise UnsupportedOpError(f"node {node.name!r} (FusedRowReduce): epilogue result {v.name!r} does not "
                                     f"have the row result's shape {acc_shape}")
    for v in node.outputs[n_epi:]:
        if static_shape(v, node) != x_shape:
            raise UnsupportedOpError(f"node {node.name!r} (FusedRowReduce): extra result {v.name!r} does not have "
                                     f"the row input's shape {x_shape}")

    used = sorted(set(loaded) | set(epi_loaded))
    arg = {u: k for k, u in enumerate(used)}

    def epi_view(u: int) -> View:
        st = broadcast_strides(shapes[u], acc_shape)
        return View(ins[u].dtype, st[:len(y_shape)])  # a kept last dim of 1 is not one of y's dims

    fusion = RowFusion(
        args=tuple(ins[u].dtype for u in used), row=row, first=first,
        loads=tuple((arg[u], View(ins[u].dtype, broadcast_strides(shapes[u], x_shape))) for u in loaded),
        extras=tuple(View.contiguous(v.dtype, x_shape) for v in node.outputs[n_epi:]),
        epilogue=epilogue, epi_loads=tuple((arg[u], epi_view(u)) for u in epi_loaded),
        outs=tuple(View.contiguous(v.dtype, y_shape) for v in node.outputs[1:n_epi]))
    aux_in = [View(v.dtype, broadcast_strides(static_shape(v, node), x_shape[-1:])) for v in own if v is not None]
    x_dtype = dtype_of(pro[0], [v.dtype for v in ins])
    spec = make_row_reduce(KERNEL_KIND[kind], x_shape, [len(x_shape) - 1], x=View.contiguous(x_dtype, x_shape),
                           y=View.contiguous(node.output.dtype, y_shape), aux_in=aux_in,
                           eps=node.attrs.get("epsilon", 1e-5), fusion=fusion)
    lw.emit(node, render_row_reduce(spec), spec,
            [*node.outputs, *(ins[u] for u in used), *(v for v in own if v is not None)])
