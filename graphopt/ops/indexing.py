"""Indexing ops: GatherElements, GatherND, ScatterElements (and the old Scatter),
ScatterND, TensorScatter, OneHot, NonZero, Unique, Compress, TopK, ReverseSequence.

Index arithmetic is vectorized (fancy indexing, ``np.take_along_axis``, the
``ufunc.at`` scatter-reductions); negative indices count from the end as ONNX
says, and an index out of range is an error naming the op, never a wild read.
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from ..ir import Node, TensorType
from .registry import check_tensor_size, in_type, normalize_axis, register_op, same_as_input
from .shape_ops import values_of


def _norm_index(idx: np.ndarray, dim: int, what: str) -> np.ndarray:
    idx = np.asarray(idx).astype(np.int64, copy=False)
    if idx.size and (idx.min() < -dim or idx.max() >= dim):
        raise ShapeError(f"{what}: index out of range for a dimension of size {dim}")
    return np.where(idx < 0, idx + dim, idx)


# ---------------------------------------------------------------------------
# GatherElements, GatherND


def _gather_elements_infer(node: Node, attrs: dict):
    x, idx = in_type(node, 0), in_type(node, 1)
    if x is None:
        return [None]
    return [TensorType(x.dtype, None if idx is None else idx.shape)]


@register_op("GatherElements", inputs=["data", "indices"], attrs={"axis": 0}, infer=_gather_elements_infer)
def gather_elements(inputs, attrs, ctx):
    """``out[i][j][k] = data[index[i][j][k]][j][k]`` for axis 0 (``np.take_along_axis``)."""
    x, idx = inputs
    axis = normalize_axis(attrs["axis"], x.ndim, ctx.node)
    if idx.ndim == x.ndim:  # indices may be shorter than data off the axis: the result has their shape
        x = x[tuple(slice(None) if i == axis else slice(0, n) for i, n in enumerate(idx.shape))]
    return [np.take_along_axis(x, _norm_index(idx, x.shape[axis], "GatherElements"), axis=axis)]


def _gather_nd_infer(node: Node, attrs: dict):
    x, idx = in_type(node, 0), in_type(node, 1)
    if x is None:
        return [None]
    if x.shape is None or idx is None or idx.shape is None or not isinstance(idx.shape[-1], int):
        return [TensorType(x.dtype, None)]
    b, k = attrs["batch_dims"], idx.shape[-1]
    return [TensorType(x.dtype, tuple(idx.shape[:-1]) + tuple(x.shape[b + k:]))]


@register_op("GatherND", inputs=["data", "indices"], attrs={"batch_dims": 0}, infer=_gather_nd_infer)
def gather_nd(inputs, attrs, ctx):
    """Slices of ``data`` addressed by the last axis of ``indices`` (after ``batch_dims`` shared axes)."""
    x, idx = inputs
    b = int(attrs["batch_dims"])
    k = idx.shape[-1]
    if b + k > x.ndim or x.shape[:b] != idx.shape[:b]:
        raise ShapeError(f"GatherND: indices {list(idx.shape)} with batch_dims={b} do not fit data "
                         f"{list(x.shape)}")
    nb = int(np.prod(x.shape[:b], dtype=np.int64))
    xr = x.reshape((nb,) + x.shape[b:])
    ir = idx.reshape(nb, -1, k).astype(np.int64, copy=False)
    coords = tuple(_norm_index(ir[..., j], x.shape[b + j], "GatherND") for j in range(k))
    out = xr[(np.arange(nb)[:, None],) + coords]
    return [out.reshape(idx.shape[:-1] + x.shape[b + k:])]


# ---------------------------------------------------------------------------
# scatters

_REDUCE = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _reduction_ufunc(attrs: dict, op: str):
    red = attrs.get("reduction") or "none"
    if red == "none":
        return None
    if red not in _REDUCE:
        raise ShapeError(f"{op}: unknown reduction {red!r} (none, add, mul, max or min)")
    return _REDUCE[red]


def _scatter_elements(inputs, attrs, ctx, op):
    x, idx, upd = inputs
    axis = normalize_axis(attrs["axis"], x.ndim, ctx.node)
    idx = _norm_index(idx, x.shape[axis], op)
    if idx.shape != upd.shape:
        raise ShapeError(f"{op}: indices {list(idx.shape)} and updates {list(upd.shape)} differ in shape")
    full = list(np.indices(idx.shape, sparse=True))
    full[axis] = idx
    out = x.copy()
    fn = _reduction_ufunc(attrs, op)
    if fn is None:
        out[tuple(full)] = upd
    else:
        fn.at(out, tuple(full), upd)
    return [out]


@register_op("ScatterElements", inputs=["data", "indices", "updates"], attrs={"axis": 0, "reduction": "none"},
             infer=same_as_input(0))
def scatter_elements(inputs, attrs, ctx):
    """``out = data; out[index[i][j]][j] (op)= updates[i][j]`` for axis 0; reductions accumulate repeats."""
    return _scatter_elements(inputs, attrs, ctx, "ScatterElements")


@register_op("Scatter", inputs=["data", "indices", "updates"], attrs={"axis": 0}, infer=same_as_input(0))
def scatter(inputs, attrs, ctx):
    """Opset 9-10 name of ScatterElements (no reduction)."""
    return _scatter_elements(inputs, attrs, ctx, "Scatter")


@register_op("ScatterND", inputs=["data", "indices", "updates"], attrs={"reduction": "none"},
             infer=same_as_input(0))
def scatter_nd(inputs, attrs, ctx):
    """``out[indices[i]] (op)= updates[i]`` where the last axis of ``indices`` addresses a slice."""
    x, idx, upd = inputs
    k = idx.shape[-1]
    if k > x.ndim or upd.shape != idx.shape[:-1] + x.shape[k:]:
        raise ShapeError(f"ScatterND: indices {list(idx.shape)} and updates {list(upd.shape)} do not fit "
                         f"data {list(x.shape)}")
    coords = tuple(_norm_index(idx[..., j], x.shape[j], "ScatterND") for j in range(k))
    out = x.copy()
    fn = _reduction_ufunc(attrs, "ScatterND")
    if fn is None:
        out[coords] = upd
    else:
        fn.at(out, coords, upd)
    return [out]


@register_op("TensorScatter", inputs=["past_cache", "update", "?write_indices"], attrs={"mode": "linear", "axis": -2},
             infer=same_as_input(0))
def tensor_scatter(inputs, attrs, ctx):
    """KV-cache update: ``update`` written into ``past_cache`` along ``axis`` from each batch's write index
    (modulo the cache length in ``circular`` mode)."""
    past, upd = inputs[:2]
    w = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
    axis = normalize_axis(attrs["axis"], past.ndim, ctx.node)
    if axis == 0:
        raise ShapeError("TensorScatter: axis 0 is the batch axis")
    batch, cap, seq = past.shape[0], past.shape[axis], upd.shape[axis]
    starts = np.zeros(batch, np.int64) if w is None else np.asarray(w).astype(np.int64).reshape(-1)
    pos = starts[:, None] + np.arange(seq)[None, :]
    if attrs["mode"] == "circular":
        pos %= cap
    elif attrs["mode"] != "linear":
        raise ShapeError(f"TensorScatter mode {attrs['mode']!r} (linear or circular)")
    if pos.size and (pos.min() < 0 or pos.max() >= cap):
        raise ShapeError(f"TensorScatter: writes past the cache length {cap}")
    out = past.copy()
    ov, uv = np.moveaxis(out, axis, 1), np.moveaxis(upd, axis, 1)  # views: (B, S, ...)
    ov[np.arange(batch)[:, None], pos] = uv
    return [out]


# ---------------------------------------------------------------------------
# OneHot, NonZero, Unique, Compress


def _onehot_infer(node: Node, attrs: dict):
    idx, vals = in_type(node, 0), in_type(node, 2)
    if vals is None:
        return [None]
    if idx is None or idx.shape is None:
        return [TensorType(vals.dtype, None)]
    depth = values_of(node.input(1))
    d = depth[0] if depth is not None and len(depth) == 1 else None
    shape = list(idx.shape)
    axis = attrs["axis"]
    axis = axis + len(shape) + 1 if axis < 0 else axis
    shape.insert(axis, d)
    return [TensorType(vals.dtype, tuple(shape))]


@register_op("OneHot", inputs=["indices", "depth", "values"], attrs={"axis": -1}, infer=_onehot_infer)
def one_hot(inputs, attrs, ctx):
    """``values[1]`` where the new ``axis`` equals the index, ``values[0]`` elsewhere (negative indices
    count from ``depth``; indices out of range give an all-off row)."""
    idx, depth, vals = inputs
    d = int(np.asarray(depth).reshape(-1)[0])
    axis = normalize_axis(attrs["axis"], idx.ndim + 1, ctx.node)
    i = np.asarray(idx)
    check_tensor_size(i.shape + (d,), np.asarray(vals).dtype, ctx.node)
    i = np.where(i < 0, i + d, i).astype(np.int64)
    shape = [1] * (idx.ndim + 1)
    shape[axis] = d
    hot = np.expand_dims(i, axis) == np.arange(d).reshape(shape)
    vals = np.asarray(vals).reshape(-1)
    return [np.where(hot, vals[1], vals[0]).astype(vals.dtype)]


def _nonzero_infer(node: Node, attrs: dict):
    t = in_type(node, 0)
    return [TensorType("int64", (None if t is None or t.shape is None else len(t.shape), None))]


@register_op("NonZero", inputs=["X"], infer=_nonzero_infer)
def non_zero(inputs, attrs, ctx):
    """The coordinates of the non-zero elements, one row per axis, in row-major order."""
    x = np.asarray(inputs[0])
    if x.ndim == 0:
        return [np.zeros((0, int(bool(x))), np.int64)]
    return [np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1)]


def _unique_infer(node: Node, attrs: dict):
    t = in_type(node, 0)
    if t is None:
        return [None] * len(node.outputs)
    axis = attrs.get("axis")
    if axis is None or t.shape is None:
        y = TensorType(t.dtype, (None,) if axis is None else None)
    else:
        a = normalize_axis(axis, len(t.shape), node)
        y = TensorType(t.dtype, tuple(None if i == a else d for i, d in enumerate(t.shape)))
    n_in = t.shape[normalize_axis(axis, len(t.shape), node)] if axis is not None and t.shape is not None else None
    return [y, TensorType("int64", (None,)), TensorType("int64", (n_in,)), TensorType("int64", (None,))][
        :len(node.outputs)]


@register_op("Unique", inputs=["X"], outputs=["Y", "?indices", "?inverse_indices", "?counts"],
             attrs={"axis": None, "sorted": 1}, infer=_unique_infer)
def unique(inputs, attrs, ctx):
    """Unique elements (or slices along ``axis``), sorted or in order of first occurrence, with the
    first index of each, the inverse map and the counts."""
    x = inputs[0]
    axis = attrs.get("axis")
    if axis is not None:
        axis = normalize_axis(axis, x.ndim, ctx.node)
    y, first, inv, counts = np.unique(x if axis is not None else x.reshape(-1), return_index=True,
                                      return_inverse=True, return_counts=True, axis=axis)
    inv = inv.reshape(-1)
    if not attrs["sorted"]:
        order = np.argsort(first, kind="stable")  # by first occurrence
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        y = np.take(y, order, axis=0 if axis is None else axis)
        first, counts, inv = first[order], counts[order], rank[inv]
    i64 = lambda a: np.asarray(a, dtype=np.int64)  # noqa: E731
    return [y, i64(first), i64(inv), i64(counts)]


def _compress_infer(node: Node, attrs: dict):
    t = in_type(node, 0)
    if t is None:
        return [None]
    axis = attrs.get("axis")
    if axis is None or t.shape is None:
        return [TensorType(t.dtype, (None,) if axis is None else None)]
    a = normalize_axis(axis, len(t.shape), node)
    return [TensorType(t.dtype, tuple(None if i == a else d for i, d in enumerate(t.shape)))]


@register_op("Compress", inputs=["input", "condition"], attrs={"axis": None}, infer=_compress_infer)
def compress(inputs, attrs, ctx):
    """The slices along ``axis`` (or the flattened elements) where ``condition`` is true."""
    x, cond = inputs
    axis = attrs.get("axis")
    cond = np.asarray(cond).astype(bool).reshape(-1)
    if axis is None:
        return [np.compress(cond, x.reshape(-1))]
    return [np.compress(cond, x, axis=normalize_axis(axis, x.ndim, ctx.node))]


# ---------------------------------------------------------------------------
# TopK, ReverseSequence


def _topk_infer(node: Node, attrs: dict):
    t = in_type(node, 0)
    if t is None:
        return [None, None]
    if t.shape is None:
        return [TensorType(t.dtype, None), TensorType("int64", None)]
    k = values_of(node.input(1)) if node.input(1) is not None else [attrs.get("k")]
    a = normalize_axis(attrs["axis"], len(t.shape), node)
    kk = k[0] if k is not None and len(k) == 1 and isinstance(k[0], int) else None
    shape = tuple(kk if i == a else d for i, d in enumerate(t.shape))
    return [TensorType(t.dtype, shape), TensorType("int64", shape)]


@register_op("TopK", inputs=["X", "?K"], outputs=["Values", "Indices"], attrs={"axis": -1, "largest": 1, "sorted": 1,
                                                                                 "k": None},
             infer=_topk_infer)
def top_k(inputs, attrs, ctx):
    """The ``k`` largest (or smallest) along ``axis``, sorted; equal values keep the lower index first."""
    x = inputs[0]
    k = int(np.asarray(inputs[1]).reshape(-1)[0]) if len(inputs) > 1 and inputs[1] is not None else int(attrs["k"])
    axis = normalize_axis(attrs["axis"], x.ndim, ctx.node)
    n = x.shape[axis]
    if not 0 <= k <= n:
        raise ShapeError(f"TopK: k={k} for an axis of size {n}")
    if attrs["largest"]:
        # stable ascending sort of the reversed axis, read backwards: descending, ties by lower index
        rev = np.argsort(np.flip(x, axis), axis=axis, kind="stable")
        order = (n - 1) - np.flip(rev, axis)
    else:
        order = np.argsort(x, axis=axis, kind="stable")
    idx = np.take(order, np.arange(k), axis=axis)
    return [np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)]


@register_op("ReverseSequence", inputs=["input", "sequence_lens"], attrs={"batch_axis": 1, "time_axis": 0},
             infer=same_as_input(0))
def reverse_sequence(inputs, attrs, ctx):
    """Per batch entry ``b``, the first ``sequence_lens[b]`` steps along ``time_axis`` reversed."""
    x, lens = inputs
    ba = normalize_axis(attrs["batch_axis"], x.ndim, ctx.node)
    ta = normalize_axis(attrs["time_axis"], x.ndim, ctx.node)
    lens = np.asarray(lens).astype(np.int64).reshape(-1)
    t = np.arange(x.shape[ta])[None, :]
    src = np.where(t < lens[:, None], lens[:, None] - 1 - t, t)  # (batch, time)
    shape = [1] * x.ndim
    shape[ba], shape[ta] = x.shape[ba], x.shape[ta]
    src = src if ba < ta else src.T
    return [np.take_along_axis(x, np.broadcast_to(src.reshape(shape), x.shape), axis=ta)]
