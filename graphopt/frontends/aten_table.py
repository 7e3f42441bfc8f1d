"""The ATen converter table and the context converters build IR with.

``CONVERTERS`` maps an ATen overload name (``"aten.add.Tensor"``), an ATen
packet name (``"aten.clone"``: every overload) or a Python callable's name
(``"operator.getitem"``) to a converter. A converter receives a
``ConvertContext`` bound to one FX node, then that node's arguments with FX
nodes replaced by what they converted to (IR ``Value``s, Python numbers,
tuples), and returns a ``Value`` (or a tuple of them, or a Python number)::

    @converter("aten.relu.default")
    def relu(cx, x):
        return cx.op("Relu", x)

Symbolic integers (``SymInt``: sizes of dynamic dims and arithmetic on them)
are 0-d int64 ``Value``s; one whose value torch knows statically is a plain
``int``. ``cx.ints([...])`` packs a mix of both into a 1-D shape tensor.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from .. import dtypes
from ..builder import GraphBuilder
from ..errors import UnsupportedOpError
from ..ir import TensorType, Value

CONVERTERS: dict[str, Callable] = {}

# keyword arguments of ATen factory/copy ops that do not change what is computed
IGNORED_KWARGS = frozenset({"device", "layout", "pin_memory", "memory_format", "non_blocking", "generator",
                             "requires_grad"})


def converter(*names: str):
    """Register ``fn`` as the converter of the ATen ops ``names``."""

    def deco(fn):
        for n in names:
            CONVERTERS[n] = fn
        return fn

    return deco


def target_name(target: Any) -> str:
    """``aten.add.Tensor`` for an OpOverload, ``operator.mul`` for a Python callable."""
    if isinstance(target, str):
        return target
    kind = type(target).__name__
    if kind in ("OpOverload", "OpOverloadPacket"):
        return str(target)                         # aten.add.Tensor
    if "higher_order" in (getattr(target, "__module__", "") or "") and callable(getattr(target, "name", None)):
        return f"higher_order.{target.name()}"     # cond, while_loop, map...
    mod = getattr(target, "__module__", None) or ""
    mod = {"_operator": "operator", "torch.fx.experimental.sym_node": "torch", "builtins": ""}.get(mod, mod)
    qual = getattr(target, "__name__", repr(target))
    return f"{mod}.{qual}" if mod else qual


def lookup(target: Any) -> tuple[str, Callable | None]:
    """The op's name and its converter (exact overload first, then the packet)."""
    name = target_name(target)
    fn = CONVERTERS.get(name)
    if fn is None and name.count(".") >= 2:
        fn = CONVERTERS.get(name.rsplit(".", 1)[0])
    return name, fn


# ---------------------------------------------------------------------------
# dtypes

_TORCH_TO_IR = {
    "float32": "float32", "float": "float32", "float16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "float64": "float64", "double": "float64", "int8": "int8",
    "int16": "int16", "int32": "int32", "int64": "int64", "long": "int64", "int": "int32",
    "uint8": "uint8", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64", "bool": "bool",
    "complex64": "complex64", "complex128": "complex128",
}


def ir_dtype(torch_dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    name = str(torch_dtype).replace("torch.", "")
    try:
        return _TORCH_TO_IR[name]
    except KeyError:
        raise UnsupportedOpError(f"torch dtype {torch_dtype} has no graphopt equivalent") from None


def torch_dtype(ir: str):
    import torch

    return getattr(torch, ir)


def _category(dt: str) -> int:
    if dt == "bool":
        return 0
    if dt in dtypes.INT_TYPES:
        return 1
    if dt.startswith("complex"):
        return 3
    return 2


def promote_types(a: str | None, b: str | None) -> str | None:
    if a is None:
        return b
    if b is None:
        return a
    import torch

    return ir_dtype(torch.promote_types(torch_dtype(a), torch_dtype(b)))


def _combine_categories(higher: str | None, lower: str | None) -> str | None:
    # c10::combine_categories: a tensor keeps its dtype unless the other group is of a higher category
    if higher is None:
        return lower
    if lower is None:
        return higher
    if _category(higher) >= 2 and _category(higher) >= _category(lower):
        return higher
    if higher == "bool" or _category(lower) > _category(higher):
        return promote_types(higher, lower)
    return higher


def result_type(*operands) -> str:
    """PyTorch's type promotion over IR values and Python scalars.

    Tensors of rank > 0 outrank 0-d tensors, which outrank Python scalars, unless a
    lower group is of a higher category (bool < int < float < complex):

    >>> # int64 tensor + 2.5 -> float32; float16 tensor + 0-d float32 -> float16
    """
    dim = zero = wrapped = None
    for x in operands:
        if isinstance(x, Value):
            dt = x.dtype
            if x.shape is not None and len(x.shape) == 0:
                zero = promote_types(zero, dt)
            else:
                dim = promote_types(dim, dt)
        elif isinstance(x, bool):
            wrapped = promote_types(wrapped, "bool")
        elif isinstance(x, int):
            wrapped = promote_types(wrapped, "int64")
        elif isinstance(x, float):
            wrapped = promote_types(wrapped, "float32")
        elif isinstance(x, complex):
            wrapped = promote_types(wrapped, "complex64")
    out = _combine_categories(dim, _combine_categories(zero, wrapped))
    if out is None:
        raise UnsupportedOpError("type promotion found no tensor or scalar operand")
    return out


# ---------------------------------------------------------------------------
# the context


class ConvertContext:
    """What a converter builds with: the builder, the FX node being converted and
    helpers for constants, casts and shape tensors."""

    def __init__(self, builder: GraphBuilder, sym_name: Callable[[Any], Any]):
        self.b = builder
        self.graph = builder.graph
        self.node = None          # the torch.fx.Node being converted
        self.sym_name = sym_name  # SymInt/sympy expr -> IR dim (int | str | None)
        self._consts: dict[tuple, Value] = {}
        self._shapes: dict[Value, Value] = {}
        self.env_value: Callable[[Any], Any] = lambda fx_node: None  # what an FX node converted to


    # -- what torch knows about the node ------------------------------------------
    @property
    def out(self):
        """The node's ``meta["val"]``: a FakeTensor, a tuple of them, or a SymInt."""
        return self.node.meta.get("val")

    def out_at(self, i: int | None = None):
        v = self.out
        if i is not None and isinstance(v, (tuple, list)):
            v = v[i]
        return v

    def out_dtype(self, i: int | None = None) -> str:
        v = self.out_at(0 if i is None else i)
        return ir_dtype(v.dtype)

    def out_type(self, i: int | None = None) -> TensorType | None:
        v = self.out_at(0 if i is None else i)
        if v is None or not hasattr(v, "dtype") or not hasattr(v, "shape"):
            return None
        return TensorType(ir_dtype(v.dtype), tuple(self.sym_name(d) for d in v.shape))

    def out_shape(self, i: int | None = None) -> tuple | None:
        t = self.out_type(i)
        return None if t is None else t.shape

    def uses_output(self, i: int) -> bool:
        """Whether anything reads output ``i`` of a multi-output node (through getitem)."""
        import operator

        for u in self.node.users:
            if u.target is operator.getitem and u.args[1] == i:
                return True
        return False

    def unsupported(self, why: str):
        """Raise the one-line UnsupportedOpError for the current node (the driver adds where)."""
        raise UnsupportedOpError(why)

    # -- building ---------------------------------------------------------------
    def op(self, op_type: str, *inputs: Value | None, num_outputs: int = 1, **attrs):
        for x in inputs:
            if x is not None and not isinstance(x, Value):
                raise TypeError(f"{op_type} input {x!r} is not a Value (use cx.const)")
        name = self.node.name if self.node is not None else ""
        out = self.b.op(op_type, *inputs, num_outputs=num_outputs, name=name, attrs=attrs)
        first = out if num_outputs == 1 else out[0]
        first.producer.meta["torch_node"] = name  # which FX node this IR node came from
        return out

    def const(self, value, dtype: str | None = None, name: str = "const") -> Value:
        """An initializer (shared between equal small constants)."""
        arr = np.asarray(value, dtype=None if dtype is None else dtypes.to_numpy(dtype))
        if dtype is None and arr.dtype == np.float64 and not isinstance(value, np.ndarray):
            arr = arr.astype(np.float32)
        key = None
        if arr.size <= 16:
            key = (str(arr.dtype), arr.shape, arr.tobytes())
            hit = self._consts.get(key)
            if hit is not None:
                return hit
        v = self.b.const(arr, name)
        if key is not None:
            self._consts[key] = v
        return v

    def cast(self, v: Value, dtype: str) -> Value:
        if v.dtype == dtype:
            return v
        if v.is_const and v.const.size <= 16:
            return self.const(np.asarray(v.const).astype(dtypes.to_numpy(dtype)), name=v.name)
        return self.op("Cast", v, to=dtypes.ONNX_CODES[dtype])

    def tensor(self, x, dtype: str) -> Value:
        """``x`` (a Value, a Python number or a SymInt value) as a tensor of ``dtype``."""
        if isinstance(x, Value):
            return self.cast(x, dtype)
        if isinstance(x, (list, tuple)):
            return self.const(np.asarray(x), dtype)
        return self.const(x, dtype)

    def as_value(self, x) -> Value:
        """A Value for ``x``; Python numbers keep their natural dtype (int64, float32, bool)."""
        if isinstance(x, Value):
            return x
        if isinstance(x, bool):
            return self.const(x, "bool")
        if isinstance(x, int):
            return self.const(x, "int64")
        return self.const(x, "float32")

    def rank(self, v: Value) -> int:
        if v.shape is None:
            raise UnsupportedOpError(f"the rank of {v.name!r} is unknown")
        return len(v.shape)

    def shape_of(self, v: Value) -> Value:
        s = self._shapes.get(v)
        if s is None:
            s = self._shapes[v] = self.op("Shape", v)
        return s

    def dim(self, v: Value, i: int):
        """Dim ``i`` of ``v``: an int when static, else a 0-d int64 Value."""
        r = self.rank(v)
        i = i + r if i < 0 else i
        d = v.shape[i]
        if isinstance(d, int):
            return d
        return self.op("Gather", self.shape_of(v), self.const(i, "int64"), axis=0)

    def ints(self, items: Sequence) -> Value:
        """A 1-D int64 tensor from ints and 0-d (or 1-element) int Values."""
        if all(isinstance(x, (int, np.integer)) for x in items):
            return self.const(np.asarray([int(x) for x in items], np.int64), "int64", name="shape")
        parts: list[Value] = []
        run: list[int] = []
        for x in items:
            if isinstance(x, Value):
                if run:
                    parts.append(self.const(np.asarray(run, np.int64), "int64", name="shape"))
                    run = []
                x = self.cast(x, "int64")
                parts.append(self.op("Unsqueeze", x, self.const([0], "int64")) if self.rank(x) == 0
                             else x)
            else:
                run.append(int(x))
        if run:
            parts.append(self.const(np.asarray(run, np.int64), "int64", name="shape"))
        return parts[0] if len(parts) == 1 else self.op("Concat", *parts, axis=0)

    def scalar(self, x, dtype: str = "int64") -> Value:
        """``x`` as a 0-d tensor (Range and friends want scalars)."""
        if isinstance(x, Value):
            x = self.cast(x, dtype)
            if x.shape is not None and len(x.shape) == 1:
                x = self.op("Squeeze", x, self.const([0], "int64"))
            return x
        return self.const(x, dtype)

    def numel(self, v: Value, axes: Sequence[int] | None = None):
        """Product of (some) dims of ``v``: an int when static, else a 0-d int64 Value."""
        r = self.rank(v)
        axes = range(r) if axes is None else [a % r if r else a for a in axes]
        dims = [v.shape[a] for a in axes]
        if all(isinstance(d, int) for d in dims):
            return math.prod(dims)
        shp = self.op("Gather", self.shape_of(v), self.const(np.asarray(list(axes), np.int64), "int64"), axis=0)
        return self.op("ReduceProd", shp, keepdims=0)


def norm_axis(axis: int, rank: int) -> int:
    if not -max(rank, 1) <= axis < max(rank, 1):
        raise UnsupportedOpError(f"dim {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def norm_axes(axes, rank: int) -> list[int]:
    if axes is None:
        return list(range(rank))
    if isinstance(axes, int):
        axes = [axes]
    return sorted({norm_axis(int(a), rank) for a in axes})
