"""Shape and data-movement ops: Reshape, Flatten, Transpose, (Un)Squeeze, Concat,
Split, Slice, Gather, Shape, Size, ConstantOfShape, Expand, Range, Pad, Tile,
Constant, EyeLike (Resize and Upsample are in ``resize.py``).

Inference reads shape-giving inputs (Reshape's shape, Slice's starts/ends...)
when they are constants, and also when they are *shape values*: small int64
tensors computed from shapes (``Shape`` -> ``Gather`` -> ``Concat``), whose
possibly symbolic contents are recorded in ``value.meta["shape_value"]``. That
is how ``Reshape(x, Concat(Shape(x)[0:1], [-1]))`` keeps a symbolic batch.
Where nothing is known the rank is kept if it can be, else the shape is unknown.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .. import dtypes
from ..errors import ShapeError
from ..ir import Node, TensorType, Value
from .registry import REQUIRED, broadcast_shapes, check_tensor_size, in_type, normalize_axis, register_op

SHAPE_VALUE = "shape_value"   # Value.meta key: the (possibly symbolic) contents of a 1-D int tensor
_MAX_SHAPE_VALUE = 64         # only small tensors are tracked


# ---------------------------------------------------------------------------
# helpers


def values_of(v: Value | None) -> list | None:
    """The contents of a small int tensor as a list (ints, or symbols for shape values), or None.

    A 0-d tensor gives a one-element list.
    """
    if v is None:
        return None
    if v.const is not None:
        a = np.asarray(v.const)
        if a.ndim > 1 or a.size > _MAX_SHAPE_VALUE or a.dtype.kind not in "iub":
            return None
        return [int(x) for x in a.reshape(-1)]
    sv = v.meta.get(SHAPE_VALUE)
    return None if sv is None else list(sv)


def _set_shape_value(node: Node, dims: Sequence | None, i: int = 0) -> None:
    out = node.outputs[i]
    if dims is None or len(dims) > _MAX_SHAPE_VALUE:
        out.meta.pop(SHAPE_VALUE, None)
    else:
        out.meta[SHAPE_VALUE] = tuple(dims)


def _input_or_attr(inputs: list, i: int, attrs: dict, name: str):
    """An optional input if present, else the attribute (the two forms of older and newer opsets)."""
    if len(inputs) > i and inputs[i] is not None:
        return [int(x) for x in np.asarray(inputs[i]).reshape(-1)]
    v = attrs.get(name)
    return None if v is None else [int(x) for x in v]


def _node_ints(node: Node, i: int, attrs: dict, name: str) -> tuple[bool, list | None]:
    """Inference twin of ``_input_or_attr``: (known, values). Absent everywhere is known-as-None."""
    v = node.input(i)
    if v is not None:
        vals = values_of(v)
        return vals is not None, vals
    a = attrs.get(name)
    return True, None if a is None else [int(x) for x in a]


def _prod(dims: Sequence) -> int | str | None:
    """Product of dims; a single symbolic dim times ones stays that symbol."""
    syms = [d for d in dims if not isinstance(d, int)]
    ints = math.prod(d for d in dims if isinstance(d, int))
    if not syms:
        return ints
    if len(syms) == 1 and ints == 1 and syms[0] is not None:
        return syms[0]
    return None


def _dtype_of(node: Node, i: int = 0) -> str | None:
    t = in_type(node, i)
    return None if t is None else t.dtype


def _unknown_like(node: Node, rank: int | None, i: int = 0):
    dt = _dtype_of(node, i)
    if dt is None:
        return [None]
    return [TensorType(dt, None if rank is None else (None,) * rank)]


def _rank(node: Node, i: int = 0) -> int | None:
    t = in_type(node, i)
    return None if t is None or t.shape is None else len(t.shape)


def _static_len(node: Node, i: int) -> int | None:
    """The length of a 1-D input when its type says so."""
    t = in_type(node, i)
    if t is None or t.shape is None or len(t.shape) != 1 or not isinstance(t.shape[0], int):
        return None
    return t.shape[0]


# ---------------------------------------------------------------------------
# Reshape, Flatten


def reshape_dims(in_shape: Sequence | None, target: Sequence, allowzero: bool = False) -> tuple:
    """Resolve Reshape's 0 (copy) and -1 (infer) over dims that may be symbolic."""
    out = list(target)
    if not allowzero:
        for i, d in enumerate(out):
            if d == 0:
                out[i] = in_shape[i] if in_shape is not None and i < len(in_shape) else None
    if -1 in out:
        k = out.index(-1)
        rest = out[:k] + out[k + 1:]
        out[k] = None
        if in_shape is not None and None not in in_shape and None not in rest:
            in_syms = sorted(d for d in in_shape if isinstance(d, str))
            out_syms = sorted(d for d in rest if isinstance(d, str))
            num = math.prod(d for d in in_shape if isinstance(d, int))
            den = math.prod(d for d in rest if isinstance(d, int))
            if in_syms == out_syms and den and num % den == 0:
                out[k] = num // den
            elif len(out_syms) == 0 and len(in_syms) == 1 and den and num == den:
                out[k] = in_syms[0]   # (B, 3, 4) -> (12, -1): the leftover is exactly B
    return tuple(out)


def _reshape_infer(node: Node, attrs: dict):
    x = in_type(node, 0)
    known, target = _node_ints(node, 1, attrs, "shape")
    if x is None:
        return [None]
    if not known or target is None:
        n = _static_len(node, 1)
        return [TensorType(x.dtype, None if n is None else (None,) * n)]
    if x.shape is not None and all(isinstance(d, int) for d in x.shape) and all(isinstance(d, int) for d in target):
        if not attrs["allowzero"] and any(d == 0 and i >= len(x.shape) for i, d in enumerate(target)):
            raise ShapeError(f"Reshape node {node.name!r}: a 0 in shape {list(target)} copies a dim the "
                             f"{len(x.shape)}-D input does not have")
        resolved = [x.shape[i] if d == 0 and not attrs["allowzero"] else d for i, d in enumerate(target)]
        why = reshape_problem(x.shape, resolved)
        if why:
            raise ShapeError(f"Reshape node {node.name!r}: {why}")
    return [TensorType(x.dtype, reshape_dims(x.shape, target, bool(attrs["allowzero"])))]


@register_op("Reshape", inputs=["data", "?shape"], attrs={"allowzero": 0, "shape": None}, infer=_reshape_infer)
def reshape(inputs, attrs, ctx):
    """``shape`` input (opset 5+) or attribute (opset 1-4); 0 copies the input dim unless ``allowzero``."""
    x = inputs[0]
    target = [int(d) for d in _input_or_attr(inputs, 1, attrs, "shape")]
    if not attrs["allowzero"]:
        if any(d == 0 and i >= x.ndim for i, d in enumerate(target)):
            raise ShapeError(f"Reshape node {_name(ctx)}: a 0 in shape {target} copies a dim the "
                             f"{x.ndim}-D input does not have")
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    why = reshape_problem(x.shape, target)
    if why:
        raise ShapeError(f"Reshape node {_name(ctx)}: {why}")
    return [x.reshape(target)]


def _name(ctx) -> str:
    return repr(ctx.node.name) if ctx is not None and ctx.node is not None else "?"


def reshape_problem(in_shape: Sequence[int], target: Sequence[int]) -> str | None:
    """Why static ``in_shape`` cannot be reshaped to ``target`` (0s already resolved), or None.

    >>> reshape_problem((4,), [-1, 10 ** 12])
    'cannot reshape [4] (4 elements) to [-1, 1000000000000]'
    """
    num = math.prod(in_shape)
    rest = [d for d in target if d != -1]
    if target.count(-1) > 1 or any(d < -1 for d in target):
        return f"shape {list(target)} has more than one -1 or a negative dim"
    den = math.prod(rest)
    fits = (num % den == 0) if -1 in target and den else (num == 0 if -1 in target else num == den)
    return None if fits else f"cannot reshape {list(in_shape)} ({num} elements) to {list(target)}"


def _flatten_axis(axis: int, rank: int, node: Node | None) -> int:
    # Flatten's axis ranges over [-r, r] (r itself means "everything in the first dim")
    if not -rank <= axis <= rank:
        raise ShapeError(f"Flatten axis {axis} is out of range for rank {rank}"
                         + (f" (node {node.name!r})" if node is not None else ""))
    return axis + rank if axis < 0 else axis


def _flatten_infer(node: Node, attrs: dict):
    x = in_type(node, 0)
    if x is None:
        return [None]
    if x.shape is None:
        return [TensorType(x.dtype, (None, None))]
    axis = _flatten_axis(attrs["axis"], len(x.shape), node)
    return [TensorType(x.dtype, (_prod(x.shape[:axis]), _prod(x.shape[axis:])))]


@register_op("Flatten", inputs=["input"], attrs={"axis": 1}, infer=_flatten_infer)
def flatten(inputs, attrs, ctx):
    x = inputs[0]
    axis = _flatten_axis(attrs["axis"], x.ndim, ctx.node)
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


# ---------------------------------------------------------------------------
# Transpose, Squeeze, Unsqueeze


def _perm(attrs, rank):
    perm = attrs.get("perm")
    return list(range(rank))[::-1] if perm is None else [int(p) for p in perm]


def _transpose_infer(node: Node, attrs: dict):
    x = in_type(node, 0)
    if x is None or x.shape is None:
        return [x]
    perm = _perm(attrs, len(x.shape))
    if sorted(perm) != list(range(len(x.shape))):
        raise ShapeError(f"Transpose node {node.name!r}: perm {perm} does not fit rank {len(x.shape)}")
    return [TensorType(x.dtype, tuple(x.shape[p] for p in perm))]


@register_op("Transpose", inputs=["data"], attrs={"perm": None}, infer=_transpose_infer)
def transpose(inputs, attrs, ctx):
    y = np.transpose(inputs[0], _perm(attrs, inputs[0].ndim))
    return [np.ascontiguousarray(y) if y.ndim else y.copy()]  # ascontiguousarray makes a scalar 1-d


def _squeeze_infer(node: Node, attrs: dict):
    x = in_type(node, 0)
    known, axes = _node_ints(node, 1, attrs, "axes")
    if x is None:
        return [None]
    if x.shape is None or not known:
        return [TensorType(x.dtype, None)]
    r = len(x.shape)
    if axes is None:
        if any(not isinstance(d, int) for d in x.shape):
            return [TensorType(x.dtype, None)]  # which symbolic dims are 1 is unknown
        out = tuple(d for d in x.shape if d != 1)
    else:
        axes = {normalize_axis(a, r, node) for a in axes}
        for a in axes:
            if isinstance(x.shape[a], int) and x.shape[a] != 1:
                raise ShapeError(f"Squeeze node {node.name!r}: axis {a} has size {x.shape[a]}, not 1")
        out = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    sv = values_of(node.input(0))
    _set_shape_value(node, sv if sv is not None and len(out) == 0 and len(sv) == 1 else None)
    return [TensorType(x.dtype, out)]


@register_op("Squeeze", inputs=["data", "?axes"], attrs={"axes": None}, infer=_squeeze_infer)
def squeeze(inputs, attrs, ctx):
    x = inputs[0]
    axes = _input_or_attr(inputs, 1, attrs, "axes")
    if axes is None:
        return [np.squeeze(x)]
    return [np.squeeze(x, axis=tuple(normalize_axis(a, x.ndim, ctx.node) for a in axes))]


def _unsqueeze_axes(axes, rank, node=None) -> list[int]:
    out_rank = rank + len(axes)
    norm = sorted(normalize_axis(a, out_rank, node) for a in axes)
    if len(set(norm)) != len(norm):
        raise ShapeError(f"Unsqueeze{'' if node is None else f' node {node.name!r}'}: repeated axes {list(axes)}")
    return norm


def _unsqueeze_infer(node: Node, attrs: dict):
    x = in_type(node, 0)
    known, axes = _node_ints(node, 1, attrs, "axes")
    if x is None:
        return [None]
    if x.shape is None or not known or axes is None:
        n = _static_len(node, 1)
        return [TensorType(x.dtype, None if n is None or x.shape is None else (None,) * (len(x.shape) + n))]
    dims = list(x.shape)
    for a in _unsqueeze_axes(axes, len(dims), node):
        dims.insert(a, 1)
    sv = values_of(node.input(0))
    _set_shape_value(node, sv if sv is not None and len(dims) == 1 else None)
    return [TensorType(x.dtype, tuple(dims))]


@register_op("Unsqueeze", inputs=["data", "?axes"], attrs={"axes": None}, infer=_unsqueeze_infer)
def unsqueeze(inputs, attrs, ctx):
    x = inputs[0]
    axes = _input_or_attr(inputs, 1, attrs, "axes")
    y = x
    for a in _unsqueeze_axes(axes, x.ndim, ctx.node):
        y = np.expand_dims(y, a)
    return [y]


# ---------------------------------------------------------------------------
# Concat, Split


def _merge_dim(dims):
    ints = [d for d in dims if isinstance(d, int)]
    if ints:
        return ints[0]
    syms = [d for d in dims if d is not None]
    return syms[0] if syms else None


def _concat_infer(node: Node, attrs: dict):
    types = [v.type if v is not None else None for v in node.inputs]
    if not types or types[0] is None:
        return [None]
    dt = next((t.dtype for t in types if t is not None), None)
    shapes = [t.shape for t in types if t is not None and t.shape is not None]
    if not shapes:
        return [TensorType(dt, None)]
    r = len(shapes[0])
    if any(len(s) != r for s in shapes):
        raise ShapeError(f"Concat node {node.name!r}: inputs of ranks {sorted({len(s) for s in shapes})}")
    axis = normalize_axis(attrs["axis"], r, node)
    out = []
    for i in range(r):
        if i == axis:
            if len(shapes) < len(types):
                out.append(None)
                continue
            ax = [s[i] for s in shapes]
            rest = [d for d in ax if d != 0]
            if all(isinstance(d, int) for d in ax):
                out.append(sum(ax))
            else:  # a symbolic dim survives only next to empty pieces
                out.append(rest[0] if len(rest) == 1 else None)
        else:
            out.append(_merge_dim([s[i] for s in shapes]))
    if r == 1:
        parts = [values_of(v) for v in node.inputs]
        _set_shape_value(node, None if any(p is None for p in parts) else [d for p in parts for d in p])
    return [TensorType(dt, tuple(out))]


@register_op("Concat", inputs=["*inputs"], attrs={"axis": REQUIRED}, infer=_concat_infer)
def concat(inputs, attrs, ctx):
    axis = normalize_axis(attrs["axis"], inputs[0].ndim, ctx.node)
    return [np.concatenate(inputs, axis=axis)]


def split_sizes(dim: int, n_out: int, split: list | None, num_outputs: int | None) -> list[int]:
    """Lengths of Split's pieces: explicit, ``num_outputs`` (last one smaller), or equal."""
    if split is not None:
        if sum(split) != dim:
            raise ShapeError(f"Split lengths {split} do not add up to {dim}")
        return list(split)
    n = num_outputs or n_out
    if num_outputs:
        chunk = -(-dim // n)
        return [min(chunk, max(dim - i * chunk, 0)) for i in range(n)]
    if dim % n:
        raise ShapeError(f"Split of {dim} into {n} equal parts")
    return [dim // n] * n


def _split_infer(node: Node, attrs: dict):
    x = in_type(node, 0)
    n_out = len(node.outputs)
    if x is None:
        return [None] * n_out
    if x.shape is None:
        return [TensorType(x.dtype, None)] * n_out
    axis = normalize_axis(attrs["axis"], len(x.shape), node)
    known, split = _node_ints(node, 1, attrs, "split")
    dim = x.shape[axis]
    if known and isinstance(dim, int):
        sizes = split_sizes(dim, n_out, split, attrs.get("num_outputs"))
    else:
        sizes = [None] * n_out
    return [TensorType(x.dtype, x.shape[:axis] + (s,) + x.shape[axis + 1:]) for s in sizes]


@register_op("Split", inputs=["input", "?split"], outputs=["*outputs"],
             attrs={"axis": 0, "split": None, "num_outputs": None}, infer=_split_infer)
def split(inputs, attrs, ctx):
    x = inputs[0]
    axis = normalize_axis(attrs["axis"], x.ndim, ctx.node)
    n_out = len(ctx.node.outputs) if ctx.node is not None else (attrs.get("num_outputs") or 1)
    sizes = split_sizes(x.shape[axis], n_out, _input_or_attr(inputs, 1, attrs, "split"), attrs.get("num_outputs"))
    return list(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


# ---------------------------------------------------------------------------
# Slice


def slice_range(start: int, end: int, step: int, dim: int) -> tuple[int, int, int]:
    """ONNX Slice clamping: ``(start, stop, length)``; ``stop == -1`` means "past index 0" for negative steps."""
    if step == 0:
        raise ShapeError("Slice step of 0")
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        length = max(0, -(-(end - start) // step))
    else:
        # a start before the first element clamps to it (not to -1, which Python reads as the last)
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
        length = max(0, -(-(start - end) // -step))
    return start, end, length


def _slice_args(starts, ends, axes, steps, rank, node=None):
    """(starts, ends, axes, steps) with the defaults filled in; None if starts/ends are not known ints."""
    if starts is None or ends is None or any(not isinstance(s, int) for s in starts + ends):
        return None
    axes = list(range(len(starts))) if axes is None else [normalize_axis(a, rank, node) for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    return starts, ends, axes, steps


_SLICE_PARTS = ((1, "starts"), (2, "ends"), (3, "axes"), (4, "steps"))  # inputs from opset 10, attrs before


def _slice_infer(node: Node, attrs: dict):
    x = in_type(node, 0)
    if x is None:
        return [None]
    if x.shape is None:
        return [TensorType(x.dtype, None)]
    got = [_node_ints(node, i, attrs, name) for i, name in _SLICE_PARTS]
    args = _slice_args(*(v for _, v in got), len(x.shape), node) if all(k for k, _ in got) else None
    if args is None:
        return [TensorType(x.dtype, (None,) * len(x.shape))]
    out = list(x.shape)
    for s, e, a, st in zip(*args):
        d = x.shape[a]
        if isinstance(d, int):
            out[a] = slice_range(s, e, st, d)[2]
        elif not (st == 1 and s == 0 and e >= 2 ** 31 - 1):
            out[a] = None  # anything but the full range of a symbolic dim is unknown
    sv = values_of(node.input(0))
    if sv is not None and len(x.shape) == 1:
        s, e, _, st = next(zip(*args), (0, 2 ** 63 - 1, 0, 1))
        lo, hi, _ = slice_range(s, e, st, len(sv))
        _set_shape_value(node, sv[lo:hi if hi >= 0 else None:st])
    else:
        _set_shape_value(node, None)
    return [TensorType(x.dtype, tuple(out))]


@register_op("Slice", inputs=["data", "?starts", "?ends", "?axes", "?steps"],
             attrs={"starts": None, "ends": None, "axes": None}, infer=_slice_infer)
def slice_(inputs, attrs, ctx):
    x = inputs[0]
    args = _slice_args(*(_input_or_attr(inputs, i, attrs, name) for i, name in _SLICE_PARTS), x.ndim, ctx.node)
    index = [slice(None)] * x.ndim
    for s, e, a, st in zip(*args):
        lo, hi, _ = slice_range(s, e, st, x.shape[a])
        index[a] = slice(lo, hi if hi >= 0 else None, st)
    return [x[tuple(index)].copy()]


# ---------------------------------------------------------------------------
# Gather, Shape, Size


def _gather_infer(node: Node, attrs: dict):
    x, idx = in_type(node, 0), in_type(node, 1)
    if x is None:
        return [None]
    if x.shape is None or idx is None or idx.shape is None:
        return [TensorType(x.dtype, None)]
    axis = normalize_axis(attrs["axis"], len(x.shape), node)
    sv, iv = values_of(node.input(0)), values_of(node.input(1))
    if sv is not None and iv is not None and len(x.shape) == 1 and len(idx.shape) <= 1:
        picked = [sv[i] for i in iv if -len(sv) <= i < len(sv)]
        _set_shape_value(node, picked if len(picked) == len(iv) else None)
    else:
        _set_shape_value(node, None)
    return [TensorType(x.dtype, x.shape[:axis] + idx.shape + x.shape[axis + 1:])]


@register_op("Gather", inputs=["data", "indices"], attrs={"axis": 0}, infer=_gather_infer)
def gather(inputs, attrs, ctx):
    x, idx = inputs
    axis = normalize_axis(attrs["axis"], x.ndim, ctx.node)
    idx = np.asarray(idx).astype(np.int64, copy=False)
    dim = x.shape[axis]
    if idx.size and (idx.min() < -dim or idx.max() >= dim):
        raise ShapeError(f"Gather indices out of range for axis {axis} of size {dim}")
    return [np.take(x, np.where(idx < 0, idx + dim, idx), axis=axis)]


def _shape_range(rank: int, attrs: dict) -> tuple[int, int]:
    start = attrs.get("start") or 0
    end = attrs.get("end")
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = rank if end is None else min(max(end + rank if end < 0 else end, 0), rank)
    return start, max(start, end)


def _shape_infer(node: Node, attrs: dict):
    x = in_type(node, 0)
    if x is None or x.shape is None:
        _set_shape_value(node, None)
        return [TensorType("int64", (None,))]
    lo, hi = _shape_range(len(x.shape), attrs)
    dims = x.shape[lo:hi]
    _set_shape_value(node, dims if all(d is not None for d in dims) else None)
    return [TensorType("int64", (hi - lo,))]


@register_op("Shape", inputs=["data"], attrs={"start": 0, "end": None}, infer=_shape_infer)
def shape(inputs, attrs, ctx):
    x = inputs[0]
    lo, hi = _shape_range(x.ndim, attrs)
    return [np.array(x.shape[lo:hi], dtype=np.int64)]


@register_op("Size", inputs=["data"], infer=lambda node, attrs: [TensorType("int64", ())])
def size(inputs, attrs, ctx):
    return [np.array(inputs[0].size, dtype=np.int64)]


# ---------------------------------------------------------------------------
# ConstantOfShape, Expand, Range, Tile


def _cos_value(attrs) -> np.ndarray:
    v = attrs.get("value")
    return np.zeros(1, np.float32) if v is None else np.asarray(v).reshape(-1)[:1]


def _shape_target(node: Node, i: int):
    """The dims named by shape input ``i`` (ints or symbols), or a tuple of unknowns of the right rank."""
    vals = values_of(node.input(i))
    if vals is not None:
        return tuple(vals)
    n = _static_len(node, i)
    return None if n is None else (None,) * n


def _cos_infer(node: Node, attrs: dict):
    return [TensorType(dtypes.from_numpy(_cos_value(attrs).dtype), _shape_target(node, 0))]


@register_op("ConstantOfShape", inputs=["input"], attrs={"value": None}, infer=_cos_infer)
def constant_of_shape(inputs, attrs, ctx):
    v = _cos_value(attrs)
    shape = tuple(int(d) for d in np.asarray(inputs[0]).reshape(-1))
    check_tensor_size(shape, v.dtype, ctx.node)
    return [np.full(shape, v[0], dtype=v.dtype)]


def _expand_infer(node: Node, attrs: dict):
    x = in_type(node, 0)
    if x is None:
        return [None]
    target = _shape_target(node, 1)
    if x.shape is None or target is None:
        return [TensorType(x.dtype, None)]
    # a dim of 1 in the target keeps the input's dim, whatever it is
    rank = max(len(x.shape), len(target))
    xs = (1,) * (rank - len(x.shape)) + tuple(x.shape)
    ts = (1,) * (rank - len(target)) + tuple(target)
    out = []
    for a, b in zip(xs, ts):
        if b == 1:
            out.append(a)
        elif a == 1 or a == b:
            out.append(b)
        else:
            out.append(broadcast_shapes((a,), (b,))[0])
    return [TensorType(x.dtype, tuple(out))]


@register_op("Expand", inputs=["input", "shape"], infer=_expand_infer)
def expand(inputs, attrs, ctx):
    x, shp = inputs
    out = np.broadcast_shapes(x.shape, tuple(int(d) for d in np.asarray(shp).reshape(-1)))
    check_tensor_size(out, x.dtype, ctx.node)
    return [np.array(np.broadcast_to(x, out))]


def _range_len(start, limit, delta) -> int:
    return max(int(math.ceil((float(limit) - float(start)) / float(delta))), 0)


def _range_infer(node: Node, attrs: dict):
    t = in_type(node, 0)
    if t is None:
        return [None]
    c = [node.input(i).const if node.input(i) is not None else None for i in range(3)]
    n = _range_len(*(np.asarray(a).item() for a in c)) if all(a is not None for a in c) else None
    return [TensorType(t.dtype, (n,))]


@register_op("Range", inputs=["start", "limit", "delta"], infer=_range_infer)
def range_(inputs, attrs, ctx):
    start, limit, delta = (np.asarray(a) for a in inputs)
    n = _range_len(start.item(), limit.item(), delta.item())
    check_tensor_size((n,), start.dtype, ctx.node)
    # start + i*delta (not a running sum), as ONNX defines it
    return [(start + np.arange(n, dtype=np.int64).astype(start.dtype) * delta).astype(start.dtype)]


def _tile_infer(node: Node, attrs: dict):
    x = in_type(node, 0)
    if x is None:
        return [None]
    reps = values_of(node.input(1))
    if x.shape is None:
        return [TensorType(x.dtype, None)]
    if reps is None:
        return [TensorType(x.dtype, (None,) * len(x.shape))]
    out = tuple(d * r if isinstance(d, int) and isinstance(r, int) else d if r == 1 else None
                for d, r in zip(x.shape, reps))
    return [TensorType(x.dtype, out)]


@register_op("Tile", inputs=["input", "repeats"], infer=_tile_infer)
def tile(inputs, attrs, ctx):
    x, reps = inputs
    reps = tuple(int(r) for r in np.asarray(reps).reshape(-1))
    if len(reps) != x.ndim:
        raise ShapeError(f"Tile node {_name(ctx)}: {len(reps)} repeats for a {x.ndim}-D input")
    check_tensor_size([d * r for d, r in zip(x.shape, reps)], x.dtype, ctx.node)
    return [np.tile(x, reps)]


# ---------------------------------------------------------------------------
# Pad


def _pad_args(inputs, attrs, rank, opset):
    """(pads per axis as (begin, end), mode, constant) from either opset form."""
    if opset < 11 or len(inputs) < 2 or inputs[1] is None:
        pads = [int(p) for p in attrs.get("pads") or attrs.get("paddings") or []]
        value = attrs.get("value", 0.0)
        axes = None
    else:
        pads = [int(p) for p in np.asarray(inputs[1]).reshape(-1)]
        value = inputs[2] if len(inputs) > 2 and inputs[2] is not None else 0
        axes = None if len(inputs) < 4 or inputs[3] is None else [int(a) for a in np.asarray(inputs[3]).reshape(-1)]
    return _pad_pairs(pads, axes, rank), attrs.get("mode", "constant"), value


def _pad_pairs(pads, axes, rank, node=None):
    axes = list(range(rank)) if axes is None else [normalize_axis(a, rank, node) for a in axes]
    n = len(axes)
    if len(pads) != 2 * n:
        raise ShapeError(f"Pad: {len(pads)} pads for {n} axes")
    pairs = [(0, 0)] * rank
    for i, a in enumerate(axes):
        pairs[a] = (pads[i], pads[i + n])
    return pairs


def _pad_infer(node: Node, attrs: dict):
    x = in_type(node, 0)
    if x is None:
        return [None]
    if x.shape is None:
        return [x]
    r = len(x.shape)
    if node.input(1) is not None:
        pads = values_of(node.input(1))
        axes = None
        if node.input(3) is not None:
            axes = values_of(node.input(3))
            if axes is None:
                return [TensorType(x.dtype, (None,) * r)]
    else:
        pads, axes = attrs.get("pads") or attrs.get("paddings"), None
    if pads is None or any(not isinstance(p, int) for p in pads):
        return [TensorType(x.dtype, (None,) * r)]
    pairs = _pad_pairs(list(pads), axes, r, node)
    out = tuple(d + b + e if isinstance(d, int) else d if b == e == 0 else None
                for d, (b, e) in zip(x.shape, pairs))
    return [TensorType(x.dtype, out)]


@register_op("Pad", inputs=["data", "?pads", "?constant_value", "?axes"],
             attrs={"mode": "constant", "pads": None, "value": 0.0}, infer=_pad_infer)
def pad(inputs, attrs, ctx):
    """constant/reflect/edge/wrap padding; negative pads crop first."""
    x = inputs[0]
    pairs, mode, value = _pad_args(inputs, attrs, x.ndim, ctx.opset)
    crop = tuple(slice(max(-b, 0), x.shape[i] - max(-e, 0)) for i, (b, e) in enumerate(pairs))
    x = x[crop]
    width = [(max(b, 0), max(e, 0)) for b, e in pairs]
    check_tensor_size([d + b + e for d, (b, e) in zip(x.shape, width)], x.dtype, ctx.node)
    if not any(b or e for b, e in width):
        return [x.copy()]
    if mode == "constant":
        return [np.pad(x, width, mode="constant", constant_values=np.asarray(value).reshape(-1)[0]
                       if np.size(value) else 0)]
    if mode not in ("reflect", "edge", "wrap"):
        raise ShapeError(f"Pad mode {mode!r} (expected constant, reflect, edge or wrap)")
    return [np.pad(x, width, mode=mode)]


# ---------------------------------------------------------------------------
# Constant, EyeLike


_CONST_ATTRS = {"value": None, "value_float": None, "value_floats": None, "value_int": None, "value_ints": None,
                "value_string": None, "value_strings": None, "sparse_value": None}


def constant_value(attrs: dict) -> np.ndarray:
    """The tensor a Constant node holds, whichever attribute carries it."""
    for name, conv in (("value", np.asarray), ("value_float", lambda v: np.array(v, np.float32)),
                       ("value_floats", lambda v: np.array(v, np.float32).reshape(-1)),
                       ("value_int", lambda v: np.array(v, np.int64)),
                       ("value_ints", lambda v: np.array(v, np.int64).reshape(-1)),
                       ("value_string", lambda v: np.array(v, dtype=object)),
                       ("value_strings", lambda v: np.array(list(v), dtype=object)),
                       ("sparse_value", np.asarray)):
        v = attrs.get(name)
        if v is not None:
            return conv(v)
    raise ShapeError("Constant node has no value attribute")


def _constant_infer(node: Node, attrs: dict):
    a = constant_value(attrs)
    if a.ndim <= 1 and a.dtype.kind in "iu":
        _set_shape_value(node, [int(x) for x in a.reshape(-1)] if a.ndim == 1 else None)
    return [TensorType(dtypes.from_numpy(a.dtype), tuple(a.shape))]


@register_op("Constant", attrs=_CONST_ATTRS, infer=_constant_infer)
def constant(inputs, attrs, ctx):
    return [constant_value(attrs).copy()]


def _eyelike_dtype(node_or_x_dtype, attrs) -> str | None:
    dt = attrs.get("dtype")
    if dt is None:
        return node_or_x_dtype
    return dtypes.from_onnx(dt) if isinstance(dt, int) else dt


def _eyelike_infer(node: Node, attrs: dict):
    x = in_type(node, 0)
    if x is None:
        return [None]
    return [TensorType(_eyelike_dtype(x.dtype, attrs), x.shape)]


@register_op("EyeLike", inputs=["input"], attrs={"dtype": None, "k": 0}, infer=_eyelike_infer)
def eye_like(inputs, attrs, ctx):
    x = inputs[0]
    if x.ndim != 2:
        raise ShapeError(f"EyeLike of a {x.ndim}-D input (needs 2-D)")
    dt = dtypes.to_numpy(_eyelike_dtype(dtypes.from_numpy(x.dtype), attrs))
    return [np.eye(x.shape[0], x.shape[1], k=int(attrs["k"]), dtype=dt)]


from . import resize as _resize  # noqa: E402,F401  (registers Resize and Upsample)

__all__ = ["SHAPE_VALUE", "values_of", "reshape_dims", "split_sizes", "slice_range", "constant_value"]
