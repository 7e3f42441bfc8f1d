"""Reductions (ReduceSum/Mean/Max/Min/Prod/L1/L2/LogSum/LogSumExp/SumSquare) and ArgMax/ArgMin.

``axes`` is an attribute in older opsets and an input in newer ones (ReduceSum
from 13, the others from 18); a node carries whichever its model's opset uses,
so both are read: the input if present, else the attribute. No axes means all
axes, unless ``noop_with_empty_axes`` says none: then the result keeps the input's
shape, and the reductions with a pointwise part (L1, L2, LogSum, SumSquare) still
apply it, as onnxruntime and onnx's reference do.
"""
from __future__ import annotations

import numpy as np

from ..ir import Node, TensorType
from .registry import in_type, normalize_axis, register_op
from .shape_ops import values_of


def reduce_axes(axes, rank: int, noop_with_empty_axes: int, node: Node | None = None) -> tuple[int, ...] | None:
    """The axes to reduce (sorted, normalized); None means "identity" (noop_with_empty_axes)."""
    if axes is None or len(axes) == 0:
        return None if noop_with_empty_axes else tuple(range(rank))
    return tuple(sorted({normalize_axis(int(a), rank, node) for a in axes}))


def _axes_of(inputs: list, attrs: dict):
    if len(inputs) > 1 and inputs[1] is not None:
        return [int(a) for a in np.asarray(inputs[1]).reshape(-1)]
    return attrs.get("axes")


def _reduce_infer(node: Node, attrs: dict):
    x = in_type(node, 0)
    if x is None:
        return [None]
    if node.input(1) is not None:
        axes = values_of(node.input(1))
        if axes is None:  # computed axes: the rank is only known with keepdims
            keep = x.shape is not None and attrs["keepdims"]
            return [TensorType(x.dtype, (None,) * len(x.shape) if keep else None)]
    else:
        axes = attrs.get("axes")
    if x.shape is None:
        return [x]
    red = reduce_axes(axes, len(x.shape), attrs["noop_with_empty_axes"], node)
    if red is None:
        return [x]
    if attrs["keepdims"]:
        shape = tuple(1 if i in red else d for i, d in enumerate(x.shape))
    else:
        shape = tuple(d for i, d in enumerate(x.shape) if i not in red)
    return [TensorType(x.dtype, shape)]


def _float(x: np.ndarray) -> np.ndarray:
    # integer inputs are reduced in float64 where the math needs it (mean, logs, roots)
    return x if x.dtype.kind == "f" else x.astype(np.float64)


def _logsumexp(x, axes, keep):
    xf = _float(x)
    m = np.max(xf, axis=axes, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    out = np.log(np.sum(np.exp(xf - m), axis=axes, keepdims=True)) + m
    return out if keep else np.squeeze(out, axis=axes)


_REDUCERS = {
    "ReduceSum": lambda x, ax, k: np.sum(x, axis=ax, keepdims=k),
    "ReduceMean": lambda x, ax, k: np.mean(_float(x), axis=ax, keepdims=k),
    "ReduceMax": lambda x, ax, k: np.max(x, axis=ax, keepdims=k),
    "ReduceMin": lambda x, ax, k: np.min(x, axis=ax, keepdims=k),
    "ReduceProd": lambda x, ax, k: np.prod(x, axis=ax, keepdims=k),
    "ReduceL1": lambda x, ax, k: np.sum(np.abs(x), axis=ax, keepdims=k),
    "ReduceL2": lambda x, ax, k: np.sqrt(np.sum(np.square(_float(x)), axis=ax, keepdims=k)),
    "ReduceLogSum": lambda x, ax, k: np.log(np.sum(_float(x), axis=ax, keepdims=k)),
    "ReduceLogSumExp": _logsumexp,
    "ReduceSumSquare": lambda x, ax, k: np.sum(np.square(x), axis=ax, keepdims=k),
}

# the identity of each reduction over an empty set (ReduceMax of nothing is -inf, as ONNX says)
_EMPTY = {"ReduceSum": 0, "ReduceMean": np.nan, "ReduceProd": 1, "ReduceL1": 0, "ReduceL2": 0,
          "ReduceLogSum": -np.inf, "ReduceLogSumExp": -np.inf, "ReduceSumSquare": 0}


def _empty_fill(op_type: str, dt: np.dtype):
    if dt == np.bool_ and op_type in ("ReduceMax", "ReduceMin"):
        return op_type == "ReduceMin"
    if op_type == "ReduceMax":
        return -np.inf if dt.kind == "f" else np.iinfo(dt).min
    if op_type == "ReduceMin":
        return np.inf if dt.kind == "f" else np.iinfo(dt).max
    return _EMPTY[op_type]


def _reduction(op_type, fn):
    @register_op(op_type, inputs=["data", "?axes"], attrs={"axes": None, "keepdims": 1, "noop_with_empty_axes": 0},
                 infer=_reduce_infer)
    def kernel(inputs, attrs, ctx, _fn=fn, _op=op_type):
        x = inputs[0]
        axes = reduce_axes(_axes_of(inputs, attrs), x.ndim, attrs["noop_with_empty_axes"], ctx.node)
        if axes is None:  # no axis is reduced, yet the pointwise part (abs, square, log) applies, as in ORT
            axes = ()
        keep = bool(attrs["keepdims"])
        if x.size == 0:
            shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape)) if keep else \
                tuple(d for i, d in enumerate(x.shape) if i not in axes)
            return [np.full(shape, _empty_fill(_op, x.dtype), dtype=x.dtype)]
        with np.errstate(divide="ignore"):
            y = _fn(x, axes, keep)
        return [np.asarray(y).astype(x.dtype, copy=False)]

    kernel.__name__ = op_type.lower()


for _name, _fn in _REDUCERS.items():
    _reduction(_name, _fn)


def _arg_infer(node: Node, attrs: dict):
    x = in_type(node, 0)
    if x is None or x.shape is None:
        return [TensorType("int64", None)]
    axis = normalize_axis(attrs["axis"], len(x.shape), node)
    if attrs["keepdims"]:
        shape = tuple(1 if i == axis else d for i, d in enumerate(x.shape))
    else:
        shape = tuple(d for i, d in enumerate(x.shape) if i != axis)
    return [TensorType("int64", shape)]


def _arg(op_type, fn):
    @register_op(op_type, inputs=["data"], attrs={"axis": 0, "keepdims": 1, "select_last_index": 0},
                 infer=_arg_infer)
    def kernel(inputs, attrs, ctx, _fn=fn):
        x = inputs[0]
        axis = normalize_axis(attrs["axis"], x.ndim, ctx.node)
        rest = [d for i, d in enumerate(x.shape) if i != axis]
        if x.size == 0 and 0 in rest:  # no row to search: an empty result (NumPy would raise)
            shape = [1 if i == axis else d for i, d in enumerate(x.shape)] if attrs["keepdims"] else rest
            return [np.zeros(shape, np.int64)]
        if attrs["select_last_index"]:
            # the last extreme is the first one of the reversed axis
            idx = x.shape[axis] - 1 - _fn(np.flip(x, axis=axis), axis=axis)
        else:
            idx = _fn(x, axis=axis)
        if attrs["keepdims"]:
            idx = np.expand_dims(idx, axis)
        return [np.asarray(idx, dtype=np.int64)]

    kernel.__name__ = op_type.lower()


_arg("ArgMax", np.argmax)
_arg("ArgMin", np.argmin)
