"""ATen converters for views and data movement (reshape, permute, cat, split,
slice, indexing, padding) and for arithmetic on symbolic sizes (``sym_size``,
``operator.mul`` on SymInts, ...).

A reshape target that mixes static sizes and SymInts is written with Reshape's
own wildcards where torch's symbolic shapes prove it right (0: "this input dim",
-1: "whatever is left"), so ``view(x, [sym_size(x, 0), 256])`` becomes
``Reshape(x, [0, 256])`` and stays foldable; anything else is assembled from
``Shape``/``Gather``/``Concat`` at run time.
"""
from __future__ import annotations

import math
import operator

import numpy as np

from ..ir import Value
from .aten_math import floor_div
from .aten_table import converter, norm_axes, norm_axis

_INT64_MAX = 2 ** 63 - 1


def _same_sym(a, b) -> bool:
    """Whether two symbolic sizes are the same expression (torch's SymInt)."""
    try:
        return a.node.expr == b.node.expr
    except AttributeError:
        return False


def _is_sym(x) -> bool:
    return hasattr(x, "node") and hasattr(x.node, "expr")


def _shape_target(cx, x: Value, sizes, in_fake, out_fake) -> tuple[Value, bool]:
    """The 1-D shape tensor for view/reshape/expand-like targets, using torch's
    symbolic output sizes to replace SymInts by Reshape's 0 where they equal the
    input dim at the same index. Returns (tensor, uses_zero_copy)."""
    items = list(sizes)
    if not any(isinstance(s, Value) for s in items):
        return cx.ints(items), False
    resolved = list(items)
    used_zero = False
    if out_fake is not None and in_fake is not None:
        for i, s in enumerate(items):
            if isinstance(s, Value) and i < len(in_fake.shape) and _same_sym(out_fake.shape[i], in_fake.shape[i]):
                resolved[i] = 0
                used_zero = True
        left = [i for i, s in enumerate(resolved) if isinstance(s, Value)]
        if len(left) == 1 and -1 not in resolved:
            resolved[left[0]] = -1
    return cx.ints(resolved), used_zero


def _fake(node_arg):
    return getattr(node_arg, "meta", {}).get("val")


@converter("aten.view.default", "aten._unsafe_view.default", "aten.reshape.default", "aten.view_copy.default")
def view(cx, x, sizes):
    sizes = list(sizes)
    if any(isinstance(s, int) and s == 0 for s in sizes):
        return cx.op("Reshape", x, cx.ints(sizes), allowzero=1)  # a real empty dim, not "copy"
    target, _ = _shape_target(cx, x, sizes, _fake(cx.node.args[0]), cx.out)
    return cx.op("Reshape", x, target)


@converter("aten.flatten.using_ints")
def flatten(cx, x, start_dim=0, end_dim=-1):
    r = cx.rank(x)
    if r == 0:
        return cx.op("Reshape", x, cx.const([1], "int64"))
    s, e = norm_axis(start_dim, r), norm_axis(end_dim, r)
    if s == e:
        return x
    # Reshape's 0 keeps a leading dim; dims after the -1 are spelled out (static or from Shape)
    return cx.op("Reshape", x, cx.ints([0] * s + [-1] + [cx.dim(x, i) for i in range(e + 1, r)]))


@converter("aten.permute.default", "aten.permute_copy.default")
def permute(cx, x, dims):
    perm = [norm_axis(d, cx.rank(x)) for d in dims]
    if perm == list(range(len(perm))):
        return x
    return cx.op("Transpose", x, perm=perm)


@converter("aten.transpose.int", "aten.transpose_copy.int")
def transpose(cx, x, dim0, dim1):
    r = cx.rank(x)
    if r < 2:
        return x
    perm = list(range(r))
    a, b = norm_axis(dim0, r), norm_axis(dim1, r)
    perm[a], perm[b] = perm[b], perm[a]
    return permute(cx, x, perm)


@converter("aten.t.default", "aten.numpy_T.default")
def t(cx, x):
    r = cx.rank(x)
    return x if r < 2 else permute(cx, x, list(range(r))[::-1])


@converter("aten.expand.default", "aten.expand_copy.default")
def expand(cx, x, sizes, implicit=False):
    sizes = list(sizes)
    r = cx.rank(x)
    lead = len(sizes) - r
    in_fake = _fake(cx.node.args[0])
    target = []
    for i, s in enumerate(sizes):
        j = i - lead
        if j >= 0 and (isinstance(s, int) and s == -1):
            target.append(1)  # Expand's broadcast keeps the input dim
        elif j >= 0 and isinstance(s, Value) and in_fake is not None and cx.out is not None \
                and _same_sym(cx.out.shape[i], in_fake.shape[j]):
            target.append(1)
        else:
            target.append(s)
    if all(isinstance(s, int) and s == 1 for s in target) and lead == 0:
        return x
    return cx.op("Expand", x, cx.ints(target))


@converter("aten.expand_as.default")
def expand_as(cx, x, other):
    return cx.op("Expand", x, cx.shape_of(other))


@converter("aten.repeat.default")
def repeat(cx, x, repeats):
    repeats = list(repeats)
    r = cx.rank(x)
    if len(repeats) > r:
        x = cx.op("Reshape", x, cx.ints([1] * (len(repeats) - r) + [cx.dim(x, i) for i in range(r)]))
    return cx.op("Tile", x, cx.ints(repeats))


@converter("aten.unsqueeze.default", "aten.unsqueeze_copy.default")
def unsqueeze(cx, x, dim):
    axis = norm_axis(dim, cx.rank(x) + 1)
    return cx.op("Unsqueeze", x, cx.const([axis], "int64"))


def _squeeze(cx, x, dims):
    r = cx.rank(x)
    fake = _fake(cx.node.args[0])
    shape = fake.shape if fake is not None else x.shape
    axes = [a for a in norm_axes(dims, r) if isinstance(shape[a], int) and shape[a] == 1] if r else []
    if not axes:
        return x
    return cx.op("Squeeze", x, cx.const(axes, "int64"))


@converter("aten.squeeze.dims", "aten.squeeze_copy.dims")
def squeeze_dims(cx, x, dims):
    return _squeeze(cx, x, dims)


@converter("aten.squeeze.dim", "aten.squeeze_copy.dim")
def squeeze_dim(cx, x, dim):
    return _squeeze(cx, x, [dim])


@converter("aten.squeeze.default", "aten.squeeze_copy.default")
def squeeze(cx, x):
    return _squeeze(cx, x, None)


@converter("aten.cat.default", "aten.concat.default", "aten.concatenate.default")
def cat(cx, tensors, dim=0):
    dt = cx.out_dtype()
    out_rank = len(cx.out.shape)
    # torch.cat skips 1-D empty tensors (legacy behaviour) when joining higher-rank ones
    parts = [cx.cast(t, dt) for t in tensors if not (t.shape == (0,) and out_rank > 1)]
    if len(parts) == 1:
        return parts[0]
    return cx.op("Concat", *parts, axis=norm_axis(dim, out_rank))


@converter("aten.stack.default")
def stack(cx, tensors, dim=0):
    r = cx.rank(tensors[0])
    axis = norm_axis(dim, r + 1)
    ax = cx.const([axis], "int64")
    dt = cx.out_dtype()
    return cx.op("Concat", *[cx.op("Unsqueeze", cx.cast(t, dt), ax) for t in tensors], axis=axis)


def _split(cx, x, sizes, axis):
    if any(isinstance(s, Value) for s in sizes):
        outs, start = [], 0
        for s in sizes:
            end = cx.op("Add", cx.scalar(start), cx.scalar(s)) if isinstance(s, Value) or isinstance(start, Value) \
                else start + s
            outs.append(cx.op("Slice", x, cx.ints([start]), cx.ints([end]), cx.const([axis], "int64")))
            start = end
        return tuple(outs)
    if len(sizes) == 1:
        return (x,)
    outs = cx.op("Split", x, cx.const(np.asarray(sizes, np.int64), "int64"), axis=axis, num_outputs=len(sizes))
    return tuple(outs)


def _out_sizes(cx, axis):
    return [cx.sym_name(o.shape[axis]) if not _is_sym(o.shape[axis]) else None for o in cx.out]


@converter("aten.split_with_sizes.default", "aten.split_with_sizes_copy.default")
def split_with_sizes(cx, x, split_sizes, dim=0):
    return _split(cx, x, list(split_sizes), norm_axis(dim, cx.rank(x)))


@converter("aten.split.Tensor", "aten.split_copy.Tensor")
def split(cx, x, split_size, dim=0):
    axis = norm_axis(dim, cx.rank(x))
    sizes = _out_sizes(cx, axis)
    if any(s is None for s in sizes):
        cx.unsupported("split of a dynamic dim into a dynamic number of pieces")
    return _split(cx, x, sizes, axis)


@converter("aten.unbind.int", "aten.unbind_copy.int")
def unbind(cx, x, dim=0):
    axis = norm_axis(dim, cx.rank(x))
    n = cx.dim(x, axis)
    if not isinstance(n, int):
        cx.unsupported("unbind along a dynamic dim")
    ax = cx.const([axis], "int64")
    return tuple(cx.op("Squeeze", p, ax) for p in _split(cx, x, [1] * n, axis))


@converter("aten.chunk.default")
def chunk(cx, x, chunks, dim=0):
    axis = norm_axis(dim, cx.rank(x))
    return _split(cx, x, _out_sizes(cx, axis), axis)


@converter("aten.slice.Tensor", "aten.slice_copy.Tensor")
def slice_(cx, x, dim=0, start=None, end=None, step=1):
    axis = norm_axis(dim, cx.rank(x))
    start = 0 if start is None else start
    end = _INT64_MAX if end is None else end
    size = x.shape[axis]
    if isinstance(start, int) and isinstance(end, int) and step == 1 and start in (0,) and \
            (end >= _INT64_MAX or (isinstance(size, int) and end >= size)):
        return x  # the whole dim
    if isinstance(end, int) and end > _INT64_MAX:
        end = _INT64_MAX
    return cx.op("Slice", x, cx.ints([start]), cx.ints([end]), cx.const([axis], "int64"), cx.ints([step]))


@converter("aten.select.int", "aten.select_copy.int")
def select(cx, x, dim, index):
    axis = norm_axis(dim, cx.rank(x))
    size = x.shape[axis]
    if isinstance(index, int) and index < 0 and isinstance(size, int):
        index += size
    return cx.op("Gather", x, cx.scalar(index), axis=axis)


@converter("aten.index_select.default")
def index_select(cx, x, dim, index):
    return cx.op("Gather", x, cx.cast(index, "int64"), axis=norm_axis(dim, cx.rank(x)))


@converter("aten.index.Tensor", "aten._unsafe_index.Tensor")
def index(cx, x, indices):
    """``x[..., idx, ...]`` with one index tensor, or several on adjacent dims (broadcast together)."""
    pos = [i for i, t in enumerate(indices) if t is not None]
    if not pos:
        return x
    if any(indices[i].dtype == "bool" for i in pos):
        cx.unsupported("boolean mask indexing (its output size depends on the data)")
    if pos != list(range(pos[0], pos[-1] + 1)):
        cx.unsupported("index tensors on non-adjacent dims")
    first = pos[0]
    if len(pos) == 1:
        return cx.op("Gather", x, cx.cast(indices[first], "int64"), axis=first)
    # several adjacent index tensors: flatten those dims and gather with a linear index
    r = cx.rank(x)
    dims = [cx.dim(x, i) for i in pos]
    linear = None
    for i, d in zip(pos, dims):
        idx = cx.cast(indices[i], "int64")
        dv = cx.scalar(d)
        idx = cx.op("Add", idx, cx.op("Mul", cx.op("Cast", cx.op("Less", idx, cx.const(0, "int64")), to=7), dv))
        linear = idx if linear is None else cx.op("Add", cx.op("Mul", linear, dv), idx)
    block = math.prod(dims) if all(isinstance(d, int) for d in dims) else -1
    flat = cx.op("Reshape", x, cx.ints([0] * first + [block] + [cx.dim(x, i) for i in range(pos[-1] + 1, r)]))
    return cx.op("Gather", flat, linear, axis=first)


@converter("aten.constant_pad_nd.default")
def constant_pad_nd(cx, x, pad, value=0):
    return _pad(cx, x, pad, "constant", value)


def _pad(cx, x, pad, mode, value=0):
    r = cx.rank(x)
    pad = list(pad)
    begins, ends = [0] * r, [0] * r
    for k in range(len(pad) // 2):  # torch pads from the last dim backwards
        axis = r - 1 - k
        begins[axis], ends[axis] = pad[2 * k], pad[2 * k + 1]
    if all(isinstance(p, int) and p == 0 for p in begins + ends):
        return x
    pads = cx.ints(begins + ends)
    if mode == "constant":
        return cx.op("Pad", x, pads, cx.tensor(value, x.dtype), mode="constant")
    return cx.op("Pad", x, pads, mode=mode)


@converter("aten.reflection_pad1d.default", "aten.reflection_pad2d.default", "aten.reflection_pad3d.default")
def reflection_pad(cx, x, padding):
    return _pad(cx, x, padding, "reflect")


@converter("aten.replication_pad1d.default", "aten.replication_pad2d.default", "aten.replication_pad3d.default")
def replication_pad(cx, x, padding):
    return _pad(cx, x, padding, "edge")


@converter("aten.flip.default")
def flip(cx, x, dims):
    axes = norm_axes(dims, cx.rank(x))
    n = len(axes)
    return cx.op("Slice", x, cx.const([-1] * n, "int64"), cx.const([-_INT64_MAX] * n, "int64"),
                 cx.const(axes, "int64"), cx.const([-1] * n, "int64"))


@converter("aten.roll.default")
def roll(cx, x, shifts, dims=()):
    shifts, dims = list(shifts), list(dims)
    if not dims:
        flat = cx.op("Reshape", x, cx.const([-1], "int64"))
        rolled = roll_axis(cx, flat, shifts[0], 0)
        return cx.op("Reshape", rolled, cx.shape_of(x))
    for s, d in zip(shifts, dims):
        x = roll_axis(cx, x, s, norm_axis(d, cx.rank(x)))
    return x


def roll_axis(cx, x, shift, axis):
    n = cx.dim(x, axis)
    if not isinstance(n, int) or not isinstance(shift, int):
        cx.unsupported("roll over a dynamic dim")
    s = shift % n if n else 0
    if s == 0:
        return x
    ax = cx.const([axis], "int64")
    head = cx.op("Slice", x, cx.ints([n - s]), cx.ints([n]), ax)
    tail = cx.op("Slice", x, cx.ints([0]), cx.ints([n - s]), ax)
    return cx.op("Concat", head, tail, axis=axis)


# ---------------------------------------------------------------------------
# tuples and symbolic sizes


@converter("operator.getitem")
def getitem(cx, seq, i):
    v = seq[i]
    if v is None:
        cx.unsupported(f"output {i} of {cx.node.args[0].target} (not converted: nothing read it)")
    return v


@converter("aten.sym_size.int", "aten.sym_size")
def sym_size(cx, x, dim):
    return cx.dim(x, dim)


@converter("aten.sym_numel.default", "aten.numel.default")
def sym_numel(cx, x):
    return cx.numel(x)


@converter("aten.sym_stride.int")
def sym_stride(cx, x, dim):
    r = cx.rank(x)
    axis = norm_axis(dim, r)
    if axis == r - 1:
        return 1
    return cx.numel(x, list(range(axis + 1, r)))


def _sym_binary(op_type):
    def conv(cx, a, b):
        if not isinstance(a, Value) and not isinstance(b, Value):
            return {"Add": operator.add, "Sub": operator.sub, "Mul": operator.mul}[op_type](a, b)
        dt = "float32" if any(isinstance(v, float) or (isinstance(v, Value) and v.dtype.startswith("float"))
                              for v in (a, b)) else "int64"
        return cx.op(op_type, cx.scalar(a, dt), cx.scalar(b, dt))

    return conv


converter("operator.add")(_sym_binary("Add"))
converter("operator.sub")(_sym_binary("Sub"))
converter("operator.mul")(_sym_binary("Mul"))


def _nonneg_by_positive(cx, b) -> bool:
    """Whether torch proves the dividend >= 0 and the divisor is a positive constant: then
    Python's // is ONNX's truncating Div (the usual case for sizes)."""
    arg = cx.node.args[0]
    expr = getattr(getattr(getattr(arg, "meta", {}).get("val"), "node", None), "expr", None)
    return isinstance(b, int) and b > 0 and bool(getattr(expr, "is_nonnegative", False))


def _sym_floor_div(cx, a, b):
    if _nonneg_by_positive(cx, b):
        return cx.op("Div", cx.scalar(a), cx.scalar(b))
    return floor_div(cx, cx.scalar(a), cx.scalar(b))


@converter("operator.floordiv")
def sym_floordiv(cx, a, b):
    if not isinstance(a, Value) and not isinstance(b, Value):
        return a // b
    return _sym_floor_div(cx, a, b)


@converter("operator.mod")
def sym_mod(cx, a, b):
    if not isinstance(a, Value) and not isinstance(b, Value):
        return a % b
    return cx.op("Sub", cx.scalar(a), cx.op("Mul", _sym_floor_div(cx, a, b), cx.scalar(b)))


@converter("operator.truediv")
def sym_truediv(cx, a, b):
    if not isinstance(a, Value) and not isinstance(b, Value):
        return a / b
    return cx.op("Div", cx.scalar(a, "float32"), cx.scalar(b, "float32"))


@converter("operator.neg")
def sym_neg(cx, a):
    return -a if not isinstance(a, Value) else cx.op("Neg", a)


@converter("torch.sym_max", "torch.sym_min")
def sym_max(cx, a, b):
    is_max = cx.node.target.__name__ == "sym_max"
    if not isinstance(a, Value) and not isinstance(b, Value):
        return max(a, b) if is_max else min(a, b)
    return cx.op("Max" if is_max else "Min", cx.scalar(a), cx.scalar(b))


@converter("torch.sym_float")
def sym_float(cx, a):
    return float(a) if not isinstance(a, Value) else cx.cast(a, "float32")


@converter("torch.sym_int", "math.floor", "math.trunc")
def sym_int(cx, a):
    if not isinstance(a, Value):
        return int(math.floor(a)) if cx.node.target is math.floor else int(a)
    if a.dtype.startswith("float"):
        a = cx.op("Floor", a) if cx.node.target is math.floor else a
    return cx.cast(a, "int64")


@converter("math.ceil")
def sym_ceil(cx, a):
    if not isinstance(a, Value):
        return int(math.ceil(a))
    return cx.cast(cx.op("Ceil", a) if a.dtype.startswith("float") else a, "int64")


def _sym_compare(op_type, negate=False):
    def conv(cx, a, b):
        if not isinstance(a, Value) and not isinstance(b, Value):
            return {"Equal": operator.eq, "Less": operator.lt, "LessOrEqual": operator.le,
                    "Greater": operator.gt, "GreaterOrEqual": operator.ge}[op_type](a, b) != negate
        out = cx.op(op_type, cx.scalar(a), cx.scalar(b))
        return cx.op("Not", out) if negate else out

    return conv


converter("operator.eq")(_sym_compare("Equal"))
converter("operator.ne")(_sym_compare("Equal", negate=True))
converter("operator.lt")(_sym_compare("Less"))
converter("operator.le")(_sym_compare("LessOrEqual"))
converter("operator.gt")(_sym_compare("Greater"))
converter("operator.ge")(_sym_compare("GreaterOrEqual"))


@converter("torch.sym_not")
def sym_not(cx, a):
    return (not a) if not isinstance(a, Value) else cx.op("Not", a)


# ---------------------------------------------------------------------------
# gather and scatter-free cumulative ops (opset 17 spellings without GatherElements/CumSum kernels)


@converter("aten.gather.default")
def gather(cx, x, dim, index, sparse_grad=False):
    """``torch.gather`` as a one-hot select: Where(index == arange(n), x, 0) summed over the new axis.

    Exact for every dtype (one term survives), and works with dynamic dims."""
    r = cx.rank(x)
    d = norm_axis(dim, r)
    if r == 0:
        return x
    n = cx.dim(x, d)
    idx = cx.cast(index, "int64")
    if isinstance(n, int):
        idx_fix = cx.op("Add", idx, cx.op("Mul", cx.op("Cast", cx.op("Less", idx, cx.const(0, "int64")), to=7),
                                             cx.const(n, "int64")))
        ar = cx.const(np.arange(n, dtype=np.int64).reshape([1] * r + [n]), "int64")
    else:
        nn_ = cx.scalar(n)
        idx_fix = cx.op("Add", idx, cx.op("Mul", cx.op("Cast", cx.op("Less", idx, cx.const(0, "int64")), to=7), nn_))
        ar = cx.op("Reshape", cx.op("Range", cx.scalar(0), nn_, cx.scalar(1)), cx.const([1] * r + [-1], "int64"))
    onehot = cx.op("Equal", cx.op("Unsqueeze", idx_fix, cx.const([r], "int64")), ar)
    # index may be smaller than x in the other dims: crop x to it
    if not (x.shape is not None and index.shape is not None and all(
            isinstance(a, int) and a == b for j, (a, b) in enumerate(zip(x.shape, index.shape)) if j != d)):
        others = [j for j in range(r) if j != d]
        ends = cx.op("Gather", cx.shape_of(index), cx.const(others, "int64"), axis=0)
        x = cx.op("Slice", x, cx.const([0] * len(others), "int64"), ends, cx.const(others, "int64"))
    perm = [j for j in range(r) if j != d] + [d]
    xa = cx.op("Unsqueeze", cx.op("Transpose", x, perm=perm) if perm != list(range(r)) else x,
               cx.const([d], "int64"))
    work = x.dtype if x.dtype != "bool" else "int32"
    picked = cx.op("Where", onehot, cx.cast(xa, work), cx.const(0, work))
    out = cx.op("ReduceSum", picked, cx.const([-1], "int64"), keepdims=0)
    return cx.cast(out, x.dtype)
