"""Losses: NegativeLogLikelihoodLoss, SoftmaxCrossEntropyLoss.

Training ops by purpose, but plain functions of their inputs, so an inference
graph that computes a loss (evaluation, exported training graphs) runs too.
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..ir import Node, TensorType
from .registry import in_type, register_op


def _nll(logp: np.ndarray, target: np.ndarray, weight: np.ndarray | None, ignore_index, reduction: str):
    """``-logp[n, target[n, ...], ...] * weight[target]`` with ignored targets weighing 0; then reduced."""
    target = np.asarray(target).astype(np.int64)
    c = logp.shape[1]
    ignored = np.zeros(target.shape, bool) if ignore_index is None else target == ignore_index
    safe = np.where(ignored, 0, target)
    if safe.size and (safe.min() < 0 or safe.max() >= c):
        raise ShapeError(f"loss target out of range for {c} classes")
    picked = np.take_along_axis(logp, safe[:, None], axis=1)[:, 0]
    w = np.ones(target.shape) if weight is None else weight.astype(np.float64)[safe]
    w = np.where(ignored, 0.0, w)
    loss = -picked * w
    if reduction == "none":
        return loss
    if reduction == "sum":
        return np.array(loss.sum())
    if reduction == "mean":
        total = w.sum()
        return np.array(loss.sum() / total if total else 0.0)
    raise ShapeError(f"loss reduction {reduction!r} (none, sum or mean)")


def _loss_infer(node: Node, attrs: dict):
    x, t = in_type(node, 0), in_type(node, 1)
    if x is None:
        return [None] * len(node.outputs)
    shape = (t.shape if t is not None else None) if attrs["reduction"] == "none" else ()
    return [TensorType(x.dtype, shape), TensorType(x.dtype, x.shape)][:len(node.outputs)]


@register_op("NegativeLogLikelihoodLoss", inputs=["input", "target", "?weight"], outputs=["loss"],
             attrs={"ignore_index": None, "reduction": "mean"}, infer=_loss_infer)
def negative_log_likelihood_loss(inputs, attrs, ctx):
    """``input`` (N, C, ...) holds log-probabilities; ``mean`` divides by the summed weights."""
    x, t = inputs[:2]
    w = inputs[2] if len(inputs) > 2 else None
    y = _nll(x.astype(np.float64), t, w, attrs.get("ignore_index"), attrs["reduction"])
    return [y.astype(x.dtype)]


@register_op("SoftmaxCrossEntropyLoss", inputs=["scores", "labels", "?weights"], outputs=["output", "?log_prob"],
             attrs={"ignore_index": None, "reduction": "mean"}, infer=_loss_infer)
def softmax_cross_entropy_loss(inputs, attrs, ctx):
    """NegativeLogLikelihoodLoss of ``log_softmax(scores)`` along the class axis 1 (also returned)."""
    x, t = inputs[:2]
    w = inputs[2] if len(inputs) > 2 else None
    xf = x.astype(np.float64)
    s = xf - xf.max(axis=1, keepdims=True)
    logp = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
    y = _nll(logp, t, w, attrs.get("ignore_index"), attrs["reduction"])
    return [y.astype(x.dtype), logp.astype(x.dtype)]
