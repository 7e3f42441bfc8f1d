"""More math: Mod, BitShift, BitwiseNot, BitCast, Shrink, Swish, SwiGLU, Det,
CumSum, CumProd, Trilu.

Like the other pointwise rows, results keep the input's dtype (ONNX ops do not
promote); integer arithmetic stays in integers.
"""
from __future__ import annotations

import numpy as np

from .. import dtypes
from ..errors import ShapeError
from ..ir import Node, TensorType
from .elementwise import _sigmoid
from .registry import REQUIRED, broadcast_infer, in_type, normalize_axis, register_op, same_as_input


@register_op("Mod", inputs=["A", "B"], attrs={"fmod": 0}, infer=broadcast_infer(), elementwise=True)
def mod(inputs, attrs, ctx):
    """``fmod=1``: C's fmod (sign of the dividend); ``fmod=0``: Python's mod (sign of the divisor).

    An integer division by zero gives 0, as ORT does."""
    a, b = inputs
    with np.errstate(divide="ignore", invalid="ignore"):
        if attrs["fmod"]:
            y = np.fmod(a, b)
        else:
            y = np.mod(a, b)
    return [np.asarray(y).astype(a.dtype, copy=False)]


@register_op("BitShift", inputs=["X", "Y"], attrs={"direction": REQUIRED}, infer=broadcast_infer(),
             elementwise=True)
def bit_shift(inputs, attrs, ctx):
    x, y = inputs
    if attrs["direction"] == "LEFT":
        out = np.left_shift(x, y.astype(x.dtype, copy=False))
    elif attrs["direction"] == "RIGHT":
        out = np.right_shift(x, y.astype(x.dtype, copy=False))
    else:
        raise ShapeError(f"BitShift direction {attrs['direction']!r} (expected LEFT or RIGHT)")
    return [out.astype(x.dtype, copy=False)]


@register_op("BitwiseNot", inputs=["X"], infer=same_as_input(0), elementwise=True)
def bitwise_not(inputs, attrs, ctx):
    return [np.invert(inputs[0])]


def _to_dtype(attrs) -> str:
    to = attrs["to"]
    return dtypes.from_onnx(to) if isinstance(to, int) else to


def _bitcast_infer(node: Node, attrs: dict):
    t = in_type(node, 0)
    return [TensorType(_to_dtype(attrs), None if t is None else t.shape)]


@register_op("BitCast", inputs=["input"], attrs={"to": REQUIRED}, infer=_bitcast_infer)
def bit_cast(inputs, attrs, ctx):
    """The same bytes read as another type of the same width (little endian)."""
    shape = inputs[0].shape
    x = np.ascontiguousarray(inputs[0])  # (0-d comes back 1-d: the shape is restored below)
    target = dtypes.to_numpy(_to_dtype(attrs))
    if target.itemsize != x.dtype.itemsize or target == object or x.dtype == object:
        raise ShapeError(f"BitCast from {x.dtype} to {target}: the widths differ")
    if x.dtype.byteorder == ">":
        x = x.astype(x.dtype.newbyteorder("<"))
    return [x.view(target).reshape(shape)]


@register_op("Shrink", inputs=["input"], attrs={"bias": 0.0, "lambd": 0.5}, infer=same_as_input(0),
             elementwise=True)
def shrink(inputs, attrs, ctx):
    """``x - bias`` above ``lambd``, ``x + bias`` below ``-lambd``, 0 between."""
    x = inputs[0]
    lambd, bias = attrs["lambd"], attrs["bias"]
    xf = x.astype(np.float64) if x.dtype.kind in "iu" else x
    y = np.where(xf < -lambd, xf + bias, np.where(xf > lambd, xf - bias, 0))
    return [y.astype(x.dtype, copy=False)]


def _swish(a: np.ndarray, alpha: float) -> np.ndarray:
    return a * _sigmoid(a * a.dtype.type(alpha) if a.dtype.kind == "f" else a * alpha)


@register_op("Swish", inputs=["X"], attrs={"alpha": 1.0}, infer=same_as_input(0), elementwise=True)
def swish(inputs, attrs, ctx):
    """``x * sigmoid(alpha * x)``."""
    x = inputs[0]
    return [_swish(x, attrs["alpha"]).astype(x.dtype, copy=False)]


@register_op("SwiGLU", inputs=["A", "B"], attrs={"alpha": 1.0}, infer=same_as_input(0), elementwise=True)
def swiglu(inputs, attrs, ctx):
    """``Swish_alpha(A) * B`` (same shapes, no broadcasting)."""
    a, b = inputs
    if a.shape != b.shape:
        raise ShapeError(f"SwiGLU inputs of shapes {list(a.shape)} and {list(b.shape)} (must be equal)")
    return [(_swish(a, attrs["alpha"]) * b).astype(a.dtype, copy=False)]


def _det_infer(node: Node, attrs: dict):
    t = in_type(node, 0)
    if t is None or t.shape is None:
        return [t]
    return [TensorType(t.dtype, tuple(t.shape[:-2]))]


@register_op("Det", inputs=["X"], infer=_det_infer)
def det(inputs, attrs, ctx):
    """Determinant of the last two axes (batched)."""
    x = inputs[0]
    work = np.float64 if x.dtype == np.float64 else np.float32
    return [np.asarray(np.linalg.det(x.astype(work, copy=False))).astype(x.dtype)]


def _cumulative(op_type, ufunc, identity):
    @register_op(op_type, inputs=["x", "axis"], attrs={"exclusive": 0, "reverse": 0}, infer=same_as_input(0))
    def kernel(inputs, attrs, ctx):
        x, axis = inputs
        a = normalize_axis(int(np.asarray(axis).reshape(-1)[0]), x.ndim, ctx.node)
        y = np.flip(x, a) if attrs["reverse"] else x
        if attrs["exclusive"] and y.shape[a]:
            # shift by one along the axis: the first element is the identity
            pad = np.full_like(np.take(y, [0], axis=a), identity)
            y = np.concatenate([pad, np.take(y, np.arange(y.shape[a] - 1), axis=a)], axis=a)
        out = ufunc.accumulate(y, axis=a, dtype=x.dtype)
        if attrs["reverse"]:
            out = np.flip(out, a)
        return [np.ascontiguousarray(out)]

    kernel.__name__ = op_type.lower()
    kernel.__doc__ = f"Running {ufunc.__name__} along ``axis`` (``exclusive``: skip the current element; " \
                     f"``reverse``: from the end)."


_cumulative("CumSum", np.add, 0)
_cumulative("CumProd", np.multiply, 1)


@register_op("Trilu", inputs=["input", "?k"], attrs={"upper": 1}, infer=same_as_input(0))
def trilu(inputs, attrs, ctx):
    """Upper (or lower) triangle of the last two axes from diagonal ``k``; the rest is zero."""
    x = inputs[0]
    k = int(np.asarray(inputs[1]).reshape(-1)[0]) if len(inputs) > 1 and inputs[1] is not None else 0
    return [np.triu(x, k) if attrs["upper"] else np.tril(x, k)]
