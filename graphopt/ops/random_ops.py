"""Random generators: RandomNormal, RandomUniform, RandomNormalLike, RandomUniformLike,
Bernoulli, Multinomial.

The draws come from NumPy's ``Generator``: seeded by the node's ``seed``
attribute when it has one (the same draws on every run), else by the
executable's ``ctx.rng``, else fresh entropy. No runtime produces the same
numbers as another for the same seed, so tests compare shapes, dtypes and
statistics, never values.
"""
from __future__ import annotations

import numpy as np

from .. import dtypes
from ..errors import ShapeError
from ..ir import Node, TensorType
from .registry import REQUIRED, in_type, register_op


def _rng(attrs: dict, ctx) -> np.random.Generator:
    seed = attrs.get("seed")
    if seed is not None:
        return np.random.default_rng(int(np.float32(seed).view(np.uint32)))
    if ctx is not None and ctx.rng is not None:
        return ctx.rng
    return np.random.default_rng()


def _dtype_attr(attrs: dict, default: str | None) -> str | None:
    dt = attrs.get("dtype")
    if dt is None:
        return default
    return dtypes.from_onnx(dt) if isinstance(dt, int) else dt


def _shape_infer(node: Node, attrs: dict):
    return [TensorType(_dtype_attr(attrs, "float32"), tuple(int(d) for d in attrs["shape"]))]


def _like_infer(node: Node, attrs: dict):
    t = in_type(node, 0)
    if t is None:
        return [None]
    return [TensorType(_dtype_attr(attrs, t.dtype), t.shape)]


def _normal(rng, shape, attrs, dt):
    return (rng.standard_normal(shape) * attrs["scale"] + attrs["mean"]).astype(dt)


def _uniform(rng, shape, attrs, dt):
    return rng.uniform(attrs["low"], attrs["high"], shape).astype(dt)


@register_op("RandomNormal", attrs={"dtype": 1, "mean": 0.0, "scale": 1.0, "seed": None, "shape": REQUIRED},
             infer=_shape_infer)
def random_normal(inputs, attrs, ctx):
    dt = dtypes.to_numpy(_dtype_attr(attrs, "float32"))
    return [_normal(_rng(attrs, ctx), tuple(int(d) for d in attrs["shape"]), attrs, dt)]


@register_op("RandomUniform", attrs={"dtype": 1, "high": 1.0, "low": 0.0, "seed": None, "shape": REQUIRED},
             infer=_shape_infer)
def random_uniform(inputs, attrs, ctx):
    dt = dtypes.to_numpy(_dtype_attr(attrs, "float32"))
    return [_uniform(_rng(attrs, ctx), tuple(int(d) for d in attrs["shape"]), attrs, dt)]


def _like(inputs, attrs, ctx, draw):
    x = inputs[0]
    dt = dtypes.to_numpy(_dtype_attr(attrs, dtypes.from_numpy(x.dtype)))
    return [draw(_rng(attrs, ctx), x.shape, attrs, dt)]


@register_op("RandomNormalLike", inputs=["input"], attrs={"dtype": None, "mean": 0.0, "scale": 1.0, "seed": None},
             infer=_like_infer)
def random_normal_like(inputs, attrs, ctx):
    return _like(inputs, attrs, ctx, _normal)


@register_op("RandomUniformLike", inputs=["input"], attrs={"dtype": None, "high": 1.0, "low": 0.0, "seed": None},
             infer=_like_infer)
def random_uniform_like(inputs, attrs, ctx):
    return _like(inputs, attrs, ctx, _uniform)


@register_op("Bernoulli", inputs=["input"], attrs={"dtype": None, "seed": None}, infer=_like_infer)
def bernoulli(inputs, attrs, ctx):
    """1 with probability ``input``, else 0."""
    p = inputs[0]
    dt = dtypes.to_numpy(_dtype_attr(attrs, dtypes.from_numpy(p.dtype)))
    return [(_rng(attrs, ctx).random(p.shape) < p).astype(dt)]


def _multinomial_infer(node: Node, attrs: dict):
    t = in_type(node, 0)
    batch = t.shape[0] if t is not None and t.shape is not None else None
    return [TensorType(_dtype_attr(attrs, "int32"), (batch, int(attrs["sample_size"])))]


@register_op("Multinomial", inputs=["input"], attrs={"dtype": 6, "sample_size": 1, "seed": None},
             infer=_multinomial_infer)
def multinomial(inputs, attrs, ctx):
    """``sample_size`` class indices per row drawn from the unnormalized log-probabilities ``input``."""
    logits = inputs[0].astype(np.float64)
    if logits.ndim != 2:
        raise ShapeError(f"Multinomial input of rank {logits.ndim} (needs [batch, classes])")
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
    u = _rng(attrs, ctx).random((logits.shape[0], int(attrs["sample_size"])))
    idx = np.minimum((u[:, :, None] > cdf[:, None, :]).sum(axis=2), logits.shape[1] - 1)
    return [idx.astype(dtypes.to_numpy(_dtype_attr(attrs, "int32")))]
