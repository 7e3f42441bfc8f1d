"""Normalizations (BatchNormalization in inference form, Instance-, Layer-, Group-,
LpNormalization) and the softmax family.

Statistics are computed in float32 at least (LayerNormalization's ``stash_type``),
then the result is cast back to the input's dtype.
"""
from __future__ import annotations

import math

import numpy as np

from .. import dtypes
from ..errors import ShapeError, UnsupportedOpError
from ..ir import Node, TensorType
from .registry import in_type, normalize_axis, register_op, same_as_input


def _stats_dtype(dt: np.dtype) -> np.dtype:
    return np.dtype(np.float64) if np.dtype(dt) == np.float64 else np.dtype(np.float32)


def _channel(a: np.ndarray, rank: int) -> np.ndarray:
    """A per-channel vector shaped to broadcast against (N, C, *spatial)."""
    return a.reshape((-1,) + (1,) * (rank - 2))


def _bn_infer(node: Node, attrs: dict):
    t = in_type(node, 0)
    out = [t]
    for i in range(1, len(node.outputs)):  # the running statistics, as given
        out.append(in_type(node, 3 if i % 2 else 4))
    return out


@register_op("BatchNormalization", inputs=["X", "scale", "B", "input_mean", "input_var"],
             outputs=["Y", "?running_mean", "?running_var"],
             attrs={"epsilon": 1e-5, "momentum": 0.9, "training_mode": 0, "spatial": 1, "is_test": 0},
             infer=_bn_infer)
def batch_normalization(inputs, attrs, ctx):
    """Inference form: ``(x - mean) / sqrt(var + eps) * scale + B`` per channel.

    Training (``training_mode=1``) is refused; the optional statistics outputs of
    older opsets are the running statistics unchanged.
    """
    if attrs["training_mode"]:
        name = ctx.node.name if ctx.node is not None else "?"
        raise UnsupportedOpError(f"BatchNormalization node {name!r} has training_mode=1 (inference only)")
    x, scale, b, mean, var = inputs
    if not attrs["spatial"] and x.ndim > 2:
        # opset < 9 spatial=0: statistics per (C, *spatial) element instead of per channel
        scale, b, mean, var = (a.reshape(x.shape[1:]) for a in (scale, b, mean, var))
        bshape = (1,) + x.shape[1:]
    else:
        bshape = (-1,) + (1,) * (x.ndim - 2)
    sd = _stats_dtype(x.dtype)
    inv = scale.astype(sd) / np.sqrt(var.astype(sd) + sd.type(attrs["epsilon"]))
    shift = b.astype(sd) - mean.astype(sd) * inv
    y = x.astype(sd, copy=False) * inv.reshape(bshape) + shift.reshape(bshape)
    outs = [y.astype(x.dtype, copy=False)]
    n_out = len(ctx.node.outputs) if ctx.node is not None else 1
    return outs + [mean, var, mean, var][: n_out - 1]


@register_op("InstanceNormalization", inputs=["input", "scale", "B"], attrs={"epsilon": 1e-5},
             infer=same_as_input(0))
def instance_normalization(inputs, attrs, ctx):
    x, scale, b = inputs
    sd = _stats_dtype(x.dtype)
    xf = x.astype(sd, copy=False)
    axes = tuple(range(2, x.ndim))
    mean = xf.mean(axis=axes, keepdims=True)
    var = ((xf - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (xf - mean) / np.sqrt(var + sd.type(attrs["epsilon"]))
    y = y * _channel(scale.astype(sd), x.ndim) + _channel(b.astype(sd), x.ndim)
    return [y.astype(x.dtype, copy=False)]


def _stash(attrs) -> str:
    """The dtype of the returned statistics (as ORT: stash_type, whatever the input's dtype)."""
    return dtypes.from_onnx(attrs["stash_type"]) if isinstance(attrs["stash_type"], int) else attrs["stash_type"]


def _stats_compute(x: np.ndarray, attrs) -> np.dtype:
    # never narrower than the input: float64 models keep float64 accuracy
    return np.dtype(np.float64) if x.dtype == np.float64 else np.dtype(dtypes.to_numpy(_stash(attrs)))


def _ln_infer(node: Node, attrs: dict):
    t = in_type(node, 0)
    if t is None:
        return [None] * len(node.outputs)
    out = [t]
    if len(node.outputs) > 1:
        stat_shape = None
        if t.shape is not None:
            axis = normalize_axis(attrs["axis"], len(t.shape), node)
            stat_shape = tuple(t.shape[:axis]) + (1,) * (len(t.shape) - axis)
        out += [TensorType(_stash(attrs), stat_shape)] * (len(node.outputs) - 1)
    return out


@register_op("LayerNormalization", inputs=["X", "Scale", "?B"], outputs=["Y", "?Mean", "?InvStdDev"],
             attrs={"axis": -1, "epsilon": 1e-5, "stash_type": 1}, infer=_ln_infer)
def layer_normalization(inputs, attrs, ctx):
    """Normalize over the axes from ``axis`` on; Mean and InvStdDev keep those axes as 1s."""
    x, scale = inputs[:2]
    b = inputs[2] if len(inputs) > 2 else None
    axis = normalize_axis(attrs["axis"], x.ndim, ctx.node)
    sd = _stats_compute(x, attrs)
    xf = x.astype(sd, copy=False)
    axes = tuple(range(axis, x.ndim))
    mean = xf.mean(axis=axes, keepdims=True)
    d = xf - mean
    inv = 1.0 / np.sqrt((d * d).mean(axis=axes, keepdims=True) + sd.type(attrs["epsilon"]))
    y = d * inv * scale.astype(sd, copy=False)
    if b is not None:
        y = y + b.astype(sd, copy=False)
    st = dtypes.to_numpy(_stash(attrs))
    return [y.astype(x.dtype, copy=False), mean.astype(st, copy=False), inv.astype(st, copy=False)]


@register_op("GroupNormalization", inputs=["X", "scale", "bias"], attrs={"epsilon": 1e-5, "num_groups": None,
                                                                         "stash_type": 1},
             infer=same_as_input(0))
def group_normalization(inputs, attrs, ctx):
    """Statistics per (N, group); scale and bias per group (opset 18) or per channel (opset 21)."""
    x, scale, b = inputs
    g = int(attrs["num_groups"])
    n, c = x.shape[:2]
    if c % g:
        raise ShapeError(f"GroupNormalization: {c} channels are not divisible into {g} groups")
    sd = _stats_compute(x, attrs)
    xg = x.astype(sd, copy=False).reshape(n, g, -1)
    mean = xg.mean(axis=2, keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=2, keepdims=True)
    y = ((xg - mean) / np.sqrt(var + sd.type(attrs["epsilon"]))).reshape(x.shape)
    if scale.size == g and g != c:
        scale, b = np.repeat(scale, c // g), np.repeat(b, c // g)
    y = y * _channel(scale.astype(sd), x.ndim) + _channel(b.astype(sd), x.ndim)
    return [y.astype(x.dtype, copy=False)]


@register_op("LpNormalization", inputs=["input"], attrs={"axis": -1, "p": 2}, infer=same_as_input(0))
def lp_normalization(inputs, attrs, ctx):
    """``x / ||x||_p`` along ``axis``; a zero norm gives 0 (not NaN), as ORT does."""
    x = inputs[0]
    sd = _stats_dtype(x.dtype)
    xf = x.astype(sd, copy=False)
    axis = normalize_axis(attrs["axis"], x.ndim, ctx.node)
    p = attrs["p"]
    if p == 1:
        norm = np.abs(xf).sum(axis=axis, keepdims=True)
    elif p == 2:
        norm = np.sqrt((xf * xf).sum(axis=axis, keepdims=True))
    else:
        raise UnsupportedOpError(f"LpNormalization with p={p} (ONNX allows 1 or 2)")
    with np.errstate(invalid="ignore", divide="ignore"):
        y = np.where(norm == 0, 0, xf / norm)
    return [y.astype(x.dtype, copy=False)]


# ---------------------------------------------------------------------------
# softmax family: before opset 13 the input is coerced to 2-D at ``axis``


def _softmax_frame(x: np.ndarray, attrs: dict, ctx):
    """``(x2, axis)``: the array to normalize along ``axis`` (2-D coerced for opset < 13)."""
    opset = ctx.opset if ctx is not None else 17
    axis = attrs["axis"]
    if axis is None:
        axis = 1 if opset < 13 else -1
    axis = normalize_axis(axis, x.ndim, ctx.node if ctx is not None else None)
    if opset < 13:
        rows = math.prod(x.shape[:axis])
        return x.reshape(rows, -1), 1
    return x, axis


def _softmax_family(op_type, fn):
    @register_op(op_type, inputs=["input"], attrs={"axis": None}, infer=same_as_input(0))
    def kernel(inputs, attrs, ctx, _fn=fn):
        x = inputs[0]
        if x.size == 0:  # nothing to normalize (max and argmax of an empty row would raise)
            return [x.copy()]
        xf, axis = _softmax_frame(x.astype(_stats_dtype(x.dtype), copy=False), attrs, ctx)
        return [_fn(xf, axis).reshape(x.shape).astype(x.dtype, copy=False)]

    kernel.__name__ = op_type.lower()


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax(x, axis):
    s = x - x.max(axis=axis, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=axis, keepdims=True))


def _hardmax(x, axis):
    # one-hot of the first maximum along axis
    idx = np.expand_dims(np.argmax(x, axis=axis), axis)
    y = np.zeros_like(x)
    np.put_along_axis(y, idx, 1, axis=axis)
    return y


_softmax_family("Softmax", _softmax)
_softmax_family("LogSoftmax", _log_softmax)
_softmax_family("Hardmax", _hardmax)


@register_op("LRN", inputs=["X"], attrs={"alpha": 1e-4, "beta": 0.75, "bias": 1.0, "size": None},
             infer=same_as_input(0))
def lrn(inputs, attrs, ctx):
    """Local response normalization across channels: a window sum over squared channels."""
    x = inputs[0]
    sd = _stats_dtype(x.dtype)
    xf = x.astype(sd, copy=False)
    size = int(attrs["size"])
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = np.pad(xf * xf, [(0, 0), (lo, hi)] + [(0, 0)] * (x.ndim - 2))
    csum = np.concatenate([np.zeros_like(sq[:, :1]), np.cumsum(sq, axis=1)], axis=1)
    window = csum[:, size:] - csum[:, :-size]
    y = xf / (attrs["bias"] + attrs["alpha"] / size * window) ** attrs["beta"]
    return [y.astype(x.dtype, copy=False)]

