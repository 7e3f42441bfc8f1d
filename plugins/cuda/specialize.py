"""Specializing a graph to what one run's inputs fix: their shapes, and the values of
"shape inputs" (small integer inputs read where an op needs a constant: a Reshape's
shape, Slice's starts, TopK's K..., and Resize's float scales, as TensorRT's shape tensors).

A ``Specializer`` gives each run its signature (every input's shape, each shape input's
values) and, for a new signature, the graph specialized to it: input types made static,
shape inputs bound as constants, and the graph passes of the compile's level plus the
backend's lowering passes run again, so everything that became static (Shape, Range,
shape arithmetic, position ids, masks built from shapes) is folded before any node is
checked or lowered. Compiled executables are kept per signature in a bounded LRU cache.

>>> sp = Specializer(graph, level=2, lowering=["fuse_elementwise"])   # doctest: +SKIP
>>> key = sp.signature({"x": x})                                       # doctest: +SKIP
>>> g = sp.graph_for(key)                                              # doctest: +SKIP
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable, Mapping, Sequence

import numpy as np

from graphopt import dtypes
from graphopt.ir import Graph, TensorType, Value

# (op, input index) pairs whose operand must be known when kernels are generated
SHAPE_OPERANDS = {
    ("Reshape", 1), ("Expand", 1), ("Tile", 1), ("ConstantOfShape", 0), ("Range", 0), ("Range", 1), ("Range", 2),
    ("Slice", 1), ("Slice", 2), ("Slice", 3), ("Slice", 4), ("Pad", 1), ("Pad", 2), ("Pad", 3),
    ("Resize", 1), ("Resize", 2), ("Resize", 3), ("Upsample", 1), ("Squeeze", 1), ("Unsqueeze", 1),
    ("Split", 1), ("TopK", 1), ("OneHot", 1), ("CumSum", 1), ("CumProd", 1), ("Trilu", 1), ("CenterCropPad", 1),
    ("ReduceSum", 1), ("ReduceMean", 1), ("ReduceMax", 1), ("ReduceMin", 1), ("ReduceProd", 1),
    ("ReduceSumSquare", 1), ("ReduceL1", 1), ("ReduceL2", 1), ("ReduceLogSum", 1), ("ReduceLogSumExp", 1),
}
# float operands bound by value too: Resize's roi and scales, a Pad's constant value
FLOAT_SHAPE_OPERANDS = {("Resize", 1), ("Resize", 2), ("Upsample", 1), ("Pad", 2)}
MAX_SHAPE_INPUT = 16  # elements: a shape input is a scalar or a short vector
DEFAULT_CACHE = 8  # compiled signatures kept per model


def shape_inputs(graph: Graph, any_use: bool = False) -> list[Value]:
    """Graph inputs of an integer type with at most ``MAX_SHAPE_INPUT`` elements, every use of
    which is a shape operand (``SHAPE_OPERANDS``); with ``any_use``, every such input (a device
    segment's inputs from host nodes: their values may reach a shape through arithmetic)."""
    out = []
    for v in graph.inputs:
        t = v.type
        if t is None or (t.shape is not None and len(t.shape) > 1) or (t.is_static and t.numel() > MAX_SHAPE_INPUT):
            continue  # (a tensor of unknown rank may be one: a host node's result read as a shape)
        uses = list(v.uses)
        table = SHAPE_OPERANDS if t.dtype in dtypes.INT_TYPES else FLOAT_SHAPE_OPERANDS
        if uses and (all((n.op_type, i) in table for n, i in uses) or (any_use and t.dtype in dtypes.INT_TYPES)):
            out.append(v)
    return out


class Specializer:
    """Signatures of runs and the graphs specialized to them (see the module docstring)."""

    def __init__(self, graph: Graph, level: int = 2, lowering: Sequence[str] = (), options: Mapping | None = None,
                 bind_small_ints: bool = False):
        self.graph = graph
        self.level = level
        self.lowering = list(lowering)
        self.options = dict(options or {})
        self.values = shape_inputs(graph, any_use=bind_small_ints)

    @property
    def needed(self) -> bool:
        """Whether runs differ at all: a symbolic input dim or a shape input."""
        return bool(self.values) or not all(v.type is None or v.type.is_static for v in self.graph.inputs)

    def signature(self, feeds: Mapping[str, object]) -> tuple:
        """``(shapes, shape-input values)`` of one run's (checked) feeds; a sequence or optional
        input (no tensor type) has no shape here: only host nodes read it."""
        shapes = tuple(None if v.type is None else tuple(int(d) for d in np.shape(feeds[v.name]))
                       for v in self.graph.inputs)
        vals = tuple(tuple(x.item() for x in np.ravel(np.asarray(feeds[v.name]))) for v in self.values)
        return shapes, vals

    @staticmethod
    def describe(key: tuple, graph: Graph, values: Sequence[Value]) -> str:
        shapes, vals = key
        parts = [f"{v.name}[{','.join(map(str, s))}]" for v, s in zip(graph.inputs, shapes) if s is not None]
        parts += [f"{v.name}={list(x)}" for v, x in zip(values, vals)]
        return " ".join(parts)

    def graph_for(self, key: tuple) -> Graph:
        """A copy of the graph with static input shapes and the shape inputs as constants,
        re-optimized so that what became static is folded."""
        from graphopt.api import _pipeline
        from graphopt.ops.registry import infer_graph
        from graphopt.passmanager import PassContext, PassManager, get_pass

        shapes, vals = key
        g = self.graph.clone()
        for v, s in zip(g.inputs, shapes):
            if s is not None:
                v.type = TensorType(v.dtype, s)
        by_name = {v.name: v for v in g.inputs}
        for v, x in zip(self.values, vals):
            inp = by_name[v.name]
            c = g.add_initializer(f"{v.name}__specialized",
                                  np.array(x, dtypes.to_numpy(v.dtype)).reshape(shapes[self.graph.inputs.index(v)]))
            inp.replace_all_uses_with(c)
        infer_graph(g)
        ctx = PassContext(level=self.level, options=self.options)
        PassManager(_pipeline(self.level, None, None), ctx).run(g)
        if self.lowering and self.level > 0:
            PassManager([get_pass(p) for p in self.lowering], ctx).run(g)
        return g


class SignatureCache:
    """At most ``size`` values by key, least recently used dropped first."""

    def __init__(self, size: int = DEFAULT_CACHE):
        self.size = max(int(size), 1)
        self._items: OrderedDict[Hashable, object] = OrderedDict()
        self.compiled = 0  # signatures compiled so far (evicted ones included)

    def get(self, key: Hashable, make: Callable[[], object]):
        item = self._items.get(key)
        if item is None:
            item = self._items[key] = make()
            self.compiled += 1
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(key)
        return item

    def keys(self) -> list:
        return list(self._items)
