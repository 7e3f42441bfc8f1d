"""Fold the shape arithmetic that exporters write, symbolic dims included.

    Reshape(x: [N, 4, 8], Concat(Unsqueeze(Gather(Shape(x), 0)), [-1]))  =>  Reshape(x, [0, -1])
    Gather(Shape(x: [N, 4, 8]), 2)                                        =>  8
    Div(Gather(Shape(x: [N, 768]), 1), 12)                                =>  64
    Expand(y: [N, 1], Concat(Shape(y)[0:1], [5]))                         =>  Expand(y, [1, 5])

One forward sweep gives every small integer tensor computed from shapes a
*shape value*: its entries, each an int, a dim of some tensor (``x.shape[i]``,
with its symbol when the type has one) or unknown. It flows through Shape,
Size, Gather, Slice, Concat, Unsqueeze, Squeeze, Reshape, Cast, Identity,
Add/Sub/Mul/Div/Mod/Max/Min (ints computed by the reference kernels; ``d + 0``,
``d * 1``, ``d - 0``, ``d / 1`` and ``d * 0`` exactly), Equal and Where when
decidable. A shape value whose entries are all ints becomes a constant where
something that is not itself folded reads it. Reshape's shape becomes a
constant when each symbolic entry is the input's own dim at the same position
(written as 0, "copy", valid as long as ``allowzero=0``); Expand's when each
is the dim it would broadcast against (written as 1), or, for one entry left
over, -1 where every other entry is a positive literal. What nobody reads after
that is removed.

Sizes that come from values are derived here too, where the registry's
inference cannot see them: ``Range(0, d, 1)`` has d elements; a ``Slice``
keeps the axes it does not slice, and ``x[:d]`` on a static axis of n has
``min(n,d)`` elements (a dim named so), which broadcasting against d makes d
(a broadcast runs only when the two are equal or one is 1, and
``min(n, d) = 1 < d`` needs ``n = 1``); ``Expand`` broadcasts its input with
its shape value. ``Equal(dim, c)`` is false for a negative c (no dim is), so
torch's ``Where(Equal(shape, -1), 1, shape)`` before an Expand is decided and
goes (``where_decided``).

Each node is also inferred again on the way: types written before folding
carry placeholder symbols (ONNX's ``unk__N``) where a dim depended on a value
inference could not see; now that it can, the placeholder is bound to the dim
it stands for and the type is rewritten (``dims_resolved``), which is what lets
``Reshape(Slice(x), [B, T, 4, 8])`` see that B and T are its input's own dims.
Work is linear in the graph's size (one sweep to analyse, one to rewrite).

Why entries are ints and dims, not expressions: onnxslim and onnxruntime's symbolic
shape inference carry dim expressions (``B*4``, ``S+1``), and sympy could. Measured on
the zoo's 36 dynamic transformers exports (``benchmarks/bench_dim_exprs.py``, a sympy
prototype of this sweep in which every entry may be an expression, Equal is decided by
simplification and a Reshape's -1 is solved symbolically; results in
``benchmarks/results/dim_exprs_2026-12-07.md``): it removes 9 nodes in one export
(MobileViT TorchScript, a ``[B*4, 16, -1]`` reshape) and none in the other 35, at 1.4x
the optimize time over all of them (12.8 s -> 17.9 s). The shape chains left in the
others are Reshapes to ``[B, S, ...]`` of a flattened ``[B*S, ...]`` tensor, which need B
and S from another tensor at run time whatever the engine. So neither sympy (which
would also be a new dependency of ``import graphopt``) nor a dim-expression engine of
our own: the sweep stays; a family that needs products of dims is the case for adding
them (monomials would do: products and exact division, no sums).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from graphopt import dtypes
from graphopt.ir import Graph, Node, TensorType, Value
from graphopt.ops.registry import KernelContext, get_schema
from graphopt.ops.shape_ops import SHAPE_VALUE, constant_value, slice_range
from graphopt.passmanager import PassContext, PassResult, register_pass

from ._util import remove_dead_from, replace_with_constant

MAX_ENTRIES = 64  # only small tensors are shape values
_ARITH = ("Add", "Sub", "Mul", "Div", "Mod", "Max", "Min")
_BROADCAST = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Mod", "Where", "And", "Or", "Xor", "Equal", "Less",
                        "LessOrEqual", "Greater", "GreaterOrEqual", "Max", "Min", "BitShift", "PRelu"})


def _min_of(dim) -> str | None:
    """d for the dim ``min(n,d)`` (a static axis sliced to a symbolic length), else None."""
    if isinstance(dim, str) and dim.startswith("min(") and dim.endswith(")"):
        return dim[4:-1].split(",", 1)[1]
    return None


@dataclass(frozen=True, eq=False)
class DimOf:
    """``value.shape[axis]`` at run time; ``name`` is its symbol when the type has one."""

    value: Value
    axis: int
    name: str | None


class DimClasses:
    """Which dim symbols are the same size: a union-find over symbols (and ints).

    Types that ONNX's shape inference wrote before folding carry placeholder
    symbols (``unk__3``) wherever a dim depended on a value it could not see;
    inferring the node again once that value is known binds the placeholder to
    the real dim (``unk__3 -> B``, ``unk__5 -> 32``). Only a symbol that no
    graph input names is ever bound, and only once: the symbols of the inputs
    and ints are facts, not guesses.
    """

    def __init__(self, fixed: set[str]):
        self.parent: dict = {}
        self.fixed = fixed

    def find(self, d):
        if d is None or isinstance(d, int):
            return d
        root = d
        while root in self.parent:
            root = self.parent[root]
        while d != root:  # path compression
            self.parent[d], d = root, self.parent[d]
        return root

    def bind(self, old, new) -> None:
        """Record that dim ``old`` (from a type) is dim ``new`` (from inference)."""
        ro, rn = self.find(old), self.find(new)
        if ro == rn or rn is None or not isinstance(ro, str) or ro in self.fixed:
            return
        self.parent[ro] = rn

    def same(self, x, y) -> bool:
        """Are shape-value entries ``x`` and ``y`` equal at run time?"""
        if not isinstance(x, DimOf) or not isinstance(y, DimOf):
            return False
        if x.value is y.value and x.axis == y.axis:
            return True
        return x.name is not None and self.find(x.name) == self.find(y.name)

    def is_dim(self, entry, value: Value, axis: int) -> bool:
        """Is ``entry`` (of a shape value) equal to ``value.shape[axis]`` at run time?"""
        if not isinstance(entry, DimOf):
            return False
        if entry.value is value and entry.axis == axis:
            return True
        shape = value.shape
        d = shape[axis] if shape is not None and 0 <= axis < len(shape) else None
        return isinstance(d, str) and entry.name is not None and self.find(d) == self.find(entry.name)


@dataclass(frozen=True)
class ShapeValue:
    entries: tuple  # int | DimOf | None (unknown)
    scalar: bool
    dtype: str

    @property
    def known(self) -> bool:
        return all(isinstance(e, int) for e in self.entries)

    def array(self) -> np.ndarray:
        a = np.array(self.entries, dtype=dtypes.to_numpy(self.dtype))
        return a.reshape(()) if self.scalar else a


def _ints(sv: "ShapeValue | None") -> list[int] | None:
    return list(sv.entries) if sv is not None and sv.known else None


class _Sweep:
    def __init__(self):
        self.sv: dict[Value, ShapeValue] = {}
        self.dims = DimClasses(set())
        self.stats: Counter = Counter()
        self.refused: Counter = Counter()

    # -- lookup ---------------------------------------------------------------
    def get(self, v: Value | None) -> ShapeValue | None:
        if v is None:
            return None
        s = self.sv.get(v)
        if s is not None or v.const is None:
            return s
        a = np.asarray(v.const)
        if a.ndim > 1 or a.size > MAX_ENTRIES or a.dtype.kind not in "iub":
            return None
        s = ShapeValue(tuple(int(x) for x in a.reshape(-1)), a.ndim == 0, v.dtype or dtypes.from_numpy(a.dtype))
        self.sv[v] = s
        return s

    def ints(self, node: Node, i: int, attr: str) -> tuple[bool, list[int] | None]:
        """Input ``i`` or attribute ``attr`` as known ints (``(True, None)`` when absent)."""
        v = node.input(i)
        if v is not None:
            got = _ints(self.get(v))
            return got is not None, got
        a = node.attrs.get(attr)
        return True, None if a is None else [int(x) for x in np.asarray(a).reshape(-1)]

    # -- transfer functions -------------------------------------------------------
    def visit(self, node: Node) -> ShapeValue | None:
        if node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
            return None
        fn = getattr(self, "_" + node.op_type.lower(), None)
        if fn is None and node.op_type in _ARITH:
            fn = self._arith
        return None if fn is None else fn(node)

    def _shape(self, node: Node):
        x = node.input(0)
        if x is None or x.shape is None:
            return None
        rank = len(x.shape)
        start = node.attrs.get("start", 0) or 0
        end = node.attrs.get("end")
        start = min(max(start + rank if start < 0 else start, 0), rank)
        end = rank if end is None else min(max(end + rank if end < 0 else end, 0), rank)
        canon = [self.dims.find(d) for d in x.shape]
        dims = [c if isinstance(c, int) else DimOf(x, i, d) for i, (d, c) in enumerate(zip(x.shape, canon))]
        dims = dims[start:max(start, end)]
        return ShapeValue(tuple(dims), False, "int64")

    def _size(self, node: Node):
        x = node.input(0)
        if x is None or x.shape is None:
            return None
        dims = [self.dims.find(d) for d in x.shape]
        if not all(isinstance(d, int) for d in dims):
            return None
        return ShapeValue((int(np.prod(dims, dtype=np.int64)),), True, "int64")

    def _constant(self, node: Node):
        try:
            a = constant_value(node.attrs)
        except Exception:
            return None
        if a.ndim > 1 or a.size > MAX_ENTRIES or a.dtype.kind not in "iub":
            return None
        return ShapeValue(tuple(int(x) for x in a.reshape(-1)), a.ndim == 0, dtypes.from_numpy(a.dtype))

    def _identity(self, node: Node):
        return self.get(node.input(0))

    def _cast(self, node: Node):
        s = self.get(node.input(0))
        to = node.attrs.get("to")
        to = dtypes.from_onnx(to) if isinstance(to, (int, np.integer)) else to
        if s is None or to is None or to not in dtypes.INT_TYPES | {"bool"}:
            return None
        if to == "bool":
            return ShapeValue(tuple(bool(e) if isinstance(e, int) else None for e in s.entries), s.scalar, to)
        if s.known:  # wrap-around as the kernel would
            a = s.array().astype(dtypes.to_numpy(to))
            return ShapeValue(tuple(int(x) for x in a.reshape(-1)), s.scalar, to)
        return ShapeValue(s.entries, s.scalar, to)  # dims fit any int type that can hold them

    def _gather(self, node: Node):
        s, idx = self.get(node.input(0)), self.get(node.input(1))
        if s is None or s.scalar or idx is None or not idx.known or node.attrs.get("axis", 0) not in (0, -1):
            return None
        n = len(s.entries)
        if not all(-n <= i < n for i in idx.entries):
            return None
        return ShapeValue(tuple(s.entries[i] for i in idx.entries), idx.scalar, s.dtype)

    def _slice(self, node: Node):
        s = self.get(node.input(0))
        if s is None or s.scalar:
            return None
        parts = [self.ints(node, i, a) for i, a in ((1, "starts"), (2, "ends"), (3, "axes"), (4, "steps"))]
        if not all(k for k, _ in parts):
            return None
        starts, ends, axes, steps = (v for _, v in parts)
        if starts is None or ends is None or len(starts) != 1 or axes not in (None, [0], [-1]):
            return None
        step = 1 if steps is None else steps[0]
        if step == 0:
            return None
        lo, hi, _ = slice_range(starts[0], ends[0], step, len(s.entries))
        return ShapeValue(tuple(s.entries[lo:hi if hi >= 0 else None:step]), False, s.dtype)

    def _concat(self, node: Node):
        if node.attrs.get("axis") not in (0, -1):
            return None
        parts = [self.get(v) for v in node.inputs]
        if not parts or any(p is None or p.scalar for p in parts):
            return None
        entries = tuple(e for p in parts for e in p.entries)
        return ShapeValue(entries, False, parts[0].dtype) if len(entries) <= MAX_ENTRIES else None

    def _reshape(self, node: Node):
        """A shape value reshaped to 1-D or to a scalar (dynamo writes ``Reshape(n, [1])``)."""
        s = self.get(node.input(0))
        target = _ints(self.get(node.input(1)))
        if s is None or target is None:
            return None
        n = len(s.entries)
        if target == [] and n == 1:
            return ShapeValue(s.entries, True, s.dtype)
        if len(target) != 1:
            return None
        t = target[0]
        copy = t == 0 and not s.scalar and not node.attrs.get("allowzero", 0)
        return ShapeValue(s.entries, False, s.dtype) if t in (-1, n) or copy else None

    def _unsqueeze(self, node: Node):
        s = self.get(node.input(0))
        known, axes = self.ints(node, 1, "axes")
        if s is None or not s.scalar or not known or axes not in ([0], [-1]):
            return None
        return ShapeValue(s.entries, False, s.dtype)

    def _squeeze(self, node: Node):
        s = self.get(node.input(0))
        known, axes = self.ints(node, 1, "axes")
        if s is None or s.scalar or len(s.entries) != 1 or not known or axes not in (None, [0], [-1]):
            return None
        return ShapeValue(s.entries, True, s.dtype)

    @staticmethod
    def _broadcast(a: ShapeValue, b: ShapeValue):
        """Pairs of entries under broadcasting, or None when lengths do not broadcast."""
        la, lb = len(a.entries), len(b.entries)
        n = max(la, lb)
        if la not in (1, n) or lb not in (1, n):
            return None
        pick = (lambda e, k: e[0] if len(e) == 1 else e[k])
        return [(pick(a.entries, k), pick(b.entries, k)) for k in range(n)], a.scalar and b.scalar

    def _arith(self, node: Node):
        a, b = self.get(node.input(0)), self.get(node.input(1))
        if a is None or b is None or len(node.inputs) != 2 or a.dtype not in dtypes.INT_TYPES:
            return None
        if a.known and b.known:  # the reference kernel decides integer semantics (Div truncates)
            schema = get_schema(node.op_type)
            try:
                (y,) = schema.kernel([a.array(), b.array()], schema.resolve_attrs(node.attrs),
                                     KernelContext(node=node))[:1]
            except Exception:
                return None
            y = np.asarray(y)
            if y.ndim > 1:
                return None
            return ShapeValue(tuple(int(x) for x in y.reshape(-1)), y.ndim == 0, a.dtype)
        pairs = self._broadcast(a, b)
        if pairs is None:
            return None
        pairs, scalar = pairs
        op = node.op_type
        out = []
        for x, y in pairs:
            if op in ("Add", "Sub") and y == 0:
                out.append(x)
            elif op == "Add" and x == 0:
                out.append(y)
            elif op in ("Mul", "Div") and y == 1:
                out.append(x)
            elif op == "Mul" and x == 1:
                out.append(y)
            elif op == "Mul" and 0 in (x, y):
                out.append(0)
            elif op == "Sub" and self.dims.same(x, y):
                out.append(0)
            elif op in ("Max", "Min") and self.dims.same(x, y):
                out.append(x)
            else:
                out.append(None)
        return ShapeValue(tuple(out), scalar, a.dtype)

    def _equal(self, node: Node):
        a, b = self.get(node.input(0)), self.get(node.input(1))
        if a is None or b is None:
            return None
        pairs = self._broadcast(a, b)
        if pairs is None:
            return None
        pairs, scalar = pairs
        out = []
        for x, y in pairs:
            if isinstance(x, int) and isinstance(y, int):
                out.append(int(x == y))
            elif self.dims.same(x, y):
                out.append(1)
            elif isinstance(x, DimOf) and isinstance(y, int) and y < 0 or isinstance(y, DimOf) and isinstance(x, int) and x < 0:
                out.append(0)  # a dim is never negative (torch's expand writes Equal(shape, -1))
            else:
                out.append(None)
        return ShapeValue(tuple(out), scalar, "bool")

    def _where(self, node: Node):
        c, a, b = (self.get(node.input(i)) for i in range(3))
        if c is None or a is None or b is None:
            return None
        n = max(len(c.entries), len(a.entries), len(b.entries))
        if any(len(s.entries) not in (1, n) for s in (c, a, b)):
            return None
        pick = (lambda s, k: s.entries[0] if len(s.entries) == 1 else s.entries[k])
        out = []
        for k in range(n):
            cond = pick(c, k)
            out.append(None if cond is None else pick(a, k) if cond else pick(b, k))
        return ShapeValue(tuple(out), c.scalar and a.scalar and b.scalar, a.dtype)

    # -- the sweep ------------------------------------------------------------------
    def relate_dims(self, node: Node) -> None:
        """Infer ``node`` again (its inputs may be constants by now) and record which
        dims of the types it has are the same as the dims inference finds."""
        schema = get_schema(node.op_type, node.domain)
        if schema is None or schema.infer is None or not node.outputs:
            return
        try:
            types = schema.infer(node, schema.resolve_attrs(node.attrs))
        except Exception:
            return
        sym = self.symbolic_shape(node)
        if sym is not None and types and types[0] is not None and types[0].shape is not None \
                and len(types[0].shape) == len(sym):
            types = [TensorType(types[0].dtype, tuple(s if s is not None else d for s, d in zip(sym, types[0].shape))),
                     *types[1:]]
        for v, t in zip(node.outputs, types or ()):
            if t is None or t.shape is None or v.shape is None or len(t.shape) != len(v.shape):
                continue
            for old, new in zip(v.shape, t.shape):
                if old is not None and new is not None and old != new:
                    self.dims.bind(old, new)
            # the type says what is known now, so the next node's inference starts from it
            shape = tuple(self.dims.find(d) if d is not None else self.dims.find(n) for d, n in zip(v.shape, t.shape))
            if shape != v.shape:
                v.type = TensorType(v.type.dtype, shape)
                self.stats["dims_resolved"] += 1

    # -- dims the registry's inference does not see -------------------------------------
    def dim_name(self, e) -> int | str | None:
        """A shape-value entry as a dim: an int, its symbol's class, or None."""
        if isinstance(e, int):
            return e
        return self.dims.find(e.name) if isinstance(e, DimOf) and e.name is not None else None

    def symbolic_shape(self, node: Node) -> list | None:
        """Output dims (None where unknown) from the shape values of the inputs, for the
        ops whose size comes from a value: Range(0, d, 1) has d elements; Slice keeps the
        axes it does not slice, and ``x[:d]`` on a static axis n has ``min(n, d)``
        elements (a dim that broadcasting then equates with d, see ``broadcast``)."""
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            return None
        if op == "Range":
            start, limit, delta = (self.get(node.input(i)) for i in range(3))
            if start and delta and start.known and delta.known and start.entries == (0,) and delta.entries == (1,) \
                    and limit is not None and len(limit.entries) == 1:
                return [self.dim_name(limit.entries[0])]
            return None
        if op == "Slice":
            return self.slice_shape(node)
        if op == "Expand":
            x, shp = node.input(0), self.get(node.input(1))
            if x is None or x.shape is None or shp is None or shp.scalar:
                return None
            return self.broadcast([x.shape, [self.dim_name(e) for e in shp.entries]])
        if op in _BROADCAST and len(node.outputs) == 1:
            shapes = [v.shape for v in node.inputs if v is not None]
            return None if any(sh is None for sh in shapes) or not shapes else self.broadcast(shapes)
        return None

    def slice_shape(self, node: Node) -> list | None:
        x = node.input(0)
        if x is None or x.shape is None or len(node.inputs) < 3:
            return None
        starts, ends = self.get(node.input(1)), self.get(node.input(2))
        axes_known, axes = self.ints(node, 3, "axes")
        steps_known, steps = self.ints(node, 4, "steps")
        if starts is None or ends is None or not axes_known or not steps_known or not starts.known:
            return None
        rank = len(x.shape)
        axes = list(range(len(starts.entries))) if axes is None else [a + rank if a < 0 else a for a in axes]
        steps = [1] * len(axes) if steps is None else steps
        if len(axes) != len(ends.entries) or len(axes) != len(starts.entries) or not all(0 <= a < rank for a in axes):
            return None
        out = [self.dims.find(d) for d in x.shape]  # the axes not sliced keep their dims
        for a, st, e, step in zip(axes, starts.entries, ends.entries, steps):
            d = self.dim_name(e)
            if isinstance(e, int) or st != 0 or step != 1 or d is None:
                out[a] = None  # an int range is the registry's business; other forms are unknown
                continue
            n = out[a]
            out[a] = d if n == d else f"min({n},{d})" if isinstance(n, int) else None
        return out

    def broadcast(self, shapes: list) -> list:
        """Broadcast dims by class; ``min(n, d)`` against d is d (the broadcast runs only
        when they are equal or one is 1, and min(n, d) = 1 < d needs n = 1)."""
        rank = max(len(sh) for sh in shapes)
        out = []
        for i in range(rank):
            dims = {self.dims.find(sh[len(sh) - rank + i]) for sh in shapes if len(sh) - rank + i >= 0}
            dims.discard(1)
            if None in dims:
                out.append(None)
                continue
            named = {d for d in dims if not (isinstance(d, str) and d.startswith("min("))}
            mins = {d for d in dims if d not in named}
            if len(named) == 1 and all(self.dims.find(_min_of(m)) == next(iter(named)) for m in mins):
                out.append(next(iter(named)))
            elif not dims:
                out.append(1)
            elif len(dims) == 1:
                out.append(next(iter(dims)))
            else:
                out.append(None)
        return out

    def publish(self, v: Value, s: ShapeValue) -> None:
        """Let shape inference of later nodes read what is known (``SHAPE_VALUE`` meta:
        ints and symbols; an entry without either keeps the whole value unpublished)."""
        dims = []
        for e in s.entries:
            d = self.dims.find(e.name) if isinstance(e, DimOf) else e
            if d is None:
                return
            dims.append(d)
        v.meta[SHAPE_VALUE] = tuple(dims)

    def analyse(self, g: Graph) -> None:
        self.dims.fixed.update(d for v in g.inputs if v.shape is not None for d in v.shape if isinstance(d, str))
        for node in g:
            for sg in node.subgraphs():
                self.analyse(sg)
            if node.op_type not in ("Shape", "Size", "Constant"):  # their own types never relate dims
                self.relate_dims(node)
            s = self.visit(node)
            if s is not None and len(s.entries) <= MAX_ENTRIES:
                out = node.output
                if out.dtype is not None and out.dtype != s.dtype:
                    continue  # an op we read wrongly: better not to fold
                self.sv[out] = s
                self.publish(out, s)

    def rewrite(self, g: Graph) -> None:
        seeds: list = []
        for node in list(g):
            for sg in node.subgraphs():
                self.rewrite(sg)
            if node.graph is not g:
                continue
            if node.op_type in ("Reshape", "Expand") and node.domain in ("", "ai.onnx") and len(node.inputs) > 1:
                self.shape_argument(g, node, seeds)
            if node.op_type == "Where" and node.domain in ("", "ai.onnx"):
                self.decided_where(g, node, seeds)
            for v in node.outputs:
                s = self.sv.get(v)
                if s is None or not s.known or v.const is not None:
                    continue
                if v.is_graph_output or any(not self.folded(u) for u in v.users):
                    old = v.producer
                    replace_with_constant(g, v, s.array())
                    self.stats["shape_values_folded"] += 1
                    seeds.append(old)
        self.stats["nodes_removed"] += remove_dead_from(g, seeds)

    def decided_where(self, g: Graph, node: Node, seeds: list) -> None:
        """Where(c, a, b) on shape values with every entry of c known and equal => a or b
        (torch's expand writes Where(Equal(shape, -1), 1, shape), and no dim is -1)."""
        c = self.get(node.input(0))  # folded to a constant by now, or a shape value
        out = node.outputs[0]
        if c is None or not c.known or len(set(c.entries)) != 1 or out.is_graph_output:
            return
        pick = node.input(1 if c.entries[0] else 2)
        if pick is None or pick.shape is None or out.shape is None or tuple(pick.shape) != tuple(out.shape) \
                or pick.dtype != out.dtype:
            return
        out.replace_all_uses_with(pick)
        if pick not in self.sv and out in self.sv:
            self.sv[pick] = self.sv[out]
        self.stats["where_decided"] += 1
        seeds.append(node)

    def folded(self, node: Node) -> bool:
        """Will ``node`` itself become a constant (so folding its inputs is wasted)?"""
        return all((s := self.sv.get(v)) is not None and s.known for v in node.outputs)

    def shape_argument(self, g: Graph, node: Node, seeds: list) -> None:
        x, shp = node.input(0), node.input(1)
        s = self.sv.get(shp) if shp is not None and shp.const is None else None
        if s is None or s.known or s.scalar:
            return
        entries = list(s.entries)
        if node.op_type == "Reshape":
            new = self.reshape_target(node, entries)
            if isinstance(new, str):
                self.refused[("fold_shape_arithmetic", new)] += 1
                return
            node.attrs.pop("allowzero", None)  # the target holds no literal 0: both modes agree
        else:  # Expand: a 1 keeps the input's dim
            rank = len(x.shape) if x.shape is not None else None
            off = None if rank is None else len(entries) - rank
            new = [1 if off is not None and i - off >= 0 and self.dims.is_dim(e, x, i - off) else e
                   for i, e in enumerate(entries)]
            if not all(isinstance(e, int) for e in new):
                self.refused[("fold_shape_arithmetic", "Expand shape has a dim that is not the input's own")] += 1
                return
        const = g.add_initializer(f"{shp.name}_folded", np.array(new, dtype=dtypes.to_numpy(s.dtype)))
        node.set_input(1, const)
        self.stats[f"{node.op_type.lower()}_shapes_folded"] += 1
        seeds.append(shp)

    def reshape_target(self, node: Node, entries: list) -> list[int] | str:
        """Reshape's target as ints: a symbolic entry that is the input's own dim at the
        same position becomes 0 (copy); one entry left over becomes -1 when every other
        entry is a positive literal (so -1 is determined even for empty tensors).
        A reason when neither works."""
        x = node.input(0)
        if node.attrs.get("allowzero", 0) and any(e == 0 for e in entries if isinstance(e, int)):
            return "Reshape with allowzero=1 and a literal 0"
        new = [0 if self.dims.is_dim(e, x, i) else e for i, e in enumerate(entries)]
        left = [i for i, e in enumerate(new) if not isinstance(e, int)]
        if not left:
            return new
        if len(left) == 1 and -1 not in new and all(e > 0 for i, e in enumerate(new) if i != left[0]):
            new[left[0]] = -1
            return new
        return "Reshape shape has a dim that is not the input's own"


@register_pass("fold_shape_arithmetic", opt_level=1, kind="graph", order=15)
def fold_shape_arithmetic(graph: Graph, ctx: PassContext) -> PassResult:
    """Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1])) => Reshape(x, [0, -1]); known dims => constants."""
    sweep = _Sweep()
    sweep.analyse(graph)
    sweep.rewrite(graph)
    stats = {k: v for k, v in sweep.stats.items() if v}
    return PassResult(bool(stats), stats, sweep.refused)
