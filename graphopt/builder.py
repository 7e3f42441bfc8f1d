"""``GraphBuilder``: the one way tests, importers and samples build graphs.

>>> b = GraphBuilder("mlp")
>>> x = b.input("x", (4, 8))
>>> w = b.const(np.ones((8, 2), np.float32), "w")
>>> y = b.op("Relu", b.op("MatMul", x, w))
>>> b.output(y, "y")
>>> b.graph.outputs[0].type
TensorType(dtype='float32', shape=(4, 2))
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .ir import Graph, TensorType, Value
from .ops.registry import infer_node


class GraphBuilder:
    def __init__(self, name: str = "graph", opset: int = 17, graph: Graph | None = None):
        self.graph = graph if graph is not None else Graph(name)
        if graph is None:
            self.graph.opset_imports = {"": opset}

    def input(self, name: str, shape: Sequence[int | str | None] | None, dtype: str = "float32") -> Value:
        return self.graph.add_input(name, TensorType(dtype, None if shape is None else tuple(shape)))

    def const(self, array, name: str = "const") -> Value:
        """An initializer holding ``array`` (NumPy scalars and lists are accepted)."""
        return self.graph.add_initializer(name, np.asarray(array))

    def op(self, op_type: str, *inputs: Value | np.ndarray | float | int | None, num_outputs: int = 1,
           domain: str = "", name: str = "", attrs: dict[str, Any] | None = None,
           **kw_attrs: Any) -> Value | tuple[Value, ...]:
        """Append a node; NumPy arrays and Python numbers among ``inputs`` become
        initializers. Returns the output value, or a tuple when ``num_outputs > 1``.

        Attributes come as keywords, or in ``attrs`` for names the builder itself
        uses (``b.op("Split", x, num_outputs=3, attrs={"num_outputs": 3})``)."""
        attrs = {**kw_attrs, **(attrs or {})}
        vals: list[Value | None] = []
        for x in inputs:
            if x is None or isinstance(x, Value):
                vals.append(x)
            else:
                arr = np.asarray(x)
                if arr.dtype == np.float64 and not isinstance(x, np.ndarray):
                    arr = arr.astype(np.float32)
                vals.append(self.const(arr, f"{op_type.lower()}_c"))
        node = self.graph.make_node(op_type, vals, attrs, num_outputs=num_outputs, domain=domain, name=name)
        infer_node(node)
        return node.outputs[0] if num_outputs == 1 else tuple(node.outputs)

    def output(self, value: Value, name: str | None = None) -> Value:
        """Mark ``value`` as a graph output (renaming it to ``name`` if given and free)."""
        if name and name != value.name:
            names = self.graph._all_names()
            if name not in names:
                names.discard(value.name)
                if value.name in self.graph.initializers:
                    self.graph.initializers[name] = self.graph.initializers.pop(value.name)
                value.name = name
                names.add(name)
        self.graph.add_output(value)
        return value
