"""Normalizations added after ``norm.py``: MeanVarianceNormalization, RMSNormalization.

Statistics are computed in float32 at least (float64 inputs stay float64), then
the result is cast back to the input's dtype.
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOpError
from .registry import normalize_axis, register_op, same_as_input


def _work(dt: np.dtype) -> np.dtype:
    return np.dtype(np.float64) if dt == np.float64 else np.dtype(np.float32)


@register_op("MeanVarianceNormalization", inputs=["X"], attrs={"axes": [0, 2, 3]}, infer=same_as_input(0))
def mean_variance_normalization(inputs, attrs, ctx):
    """``(x - E[x]) / (sqrt(E[x^2] - E[x]^2) + 1e-9)`` over ``axes`` (ONNX's function body)."""
    x = inputs[0]
    axes = tuple(normalize_axis(a, x.ndim, ctx.node) for a in attrs["axes"])
    xf = x.astype(_work(x.dtype), copy=False)
    mean = xf.mean(axis=axes, keepdims=True)
    var = (xf * xf).mean(axis=axes, keepdims=True) - mean * mean
    y = (xf - mean) / (np.sqrt(np.maximum(var, 0)) + 1e-9)
    return [y.astype(x.dtype, copy=False)]


@register_op("RMSNormalization", inputs=["X", "scale"], attrs={"axis": -1, "epsilon": 1e-5, "stash_type": 1},
             infer=same_as_input(0))
def rms_normalization(inputs, attrs, ctx):
    """``x / sqrt(mean(x^2) + epsilon) * scale`` over the axes from ``axis`` on."""
    x, scale = inputs
    if attrs["stash_type"] not in (1, 11):
        raise UnsupportedOpError(f"RMSNormalization with stash_type={attrs['stash_type']}")
    axis = normalize_axis(attrs["axis"], x.ndim, ctx.node)
    wd = _work(x.dtype)
    xf = x.astype(wd, copy=False)
    ms = (xf * xf).mean(axis=tuple(range(axis, x.ndim)), keepdims=True)
    y = xf / np.sqrt(ms + wd.type(attrs["epsilon"])) * scale.astype(wd, copy=False)
    return [y.astype(x.dtype, copy=False)]
