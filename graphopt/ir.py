"""The graph IR: ``Graph``, ``Node``, ``Value``, ``TensorType``.

A ``Value`` is produced by at most one ``Node`` (or is a graph input, or an
initializer holding a constant array) and knows its uses as ``(node, index)``
pairs. A ``Graph`` keeps its nodes in a doubly linked list in topological
order. The mutation methods keep producer/use links, graph outputs and the
node list consistent, so passes never need to scan the whole graph to answer
"who uses this value?".

>>> g = Graph("g")
>>> x = g.add_input("x", TensorType("float32", (2, 3)))
>>> y = g.make_node("Relu", [x]).output
>>> g.add_output(y)
>>> [n.op_type for n in g]
['Relu']
"""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from . import dtypes
from .errors import VerifyError

Dim = int | str | None  # static size, symbolic name, or unknown


@dataclass(frozen=True)
class TensorType:
    """Element type plus shape; ``shape=None`` means the rank is unknown."""

    dtype: str
    shape: tuple[Dim, ...] | None = None

    def __post_init__(self):
        if self.shape is not None and not isinstance(self.shape, tuple):
            object.__setattr__(self, "shape", tuple(self.shape))

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def numel(self) -> int | None:
        if not self.is_static:
            return None
        return int(np.prod(self.shape, dtype=np.int64))

    def __str__(self) -> str:
        if self.shape is None:
            return f"{self.dtype}[?]"
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype}[{dims}]"


class Value:
    """An SSA value: a graph input, an initializer, or a node's output."""

    __slots__ = ("name", "type", "producer", "index", "_uses", "const", "graph", "meta")

    def __init__(self, name: str, type: TensorType | None = None, const: np.ndarray | None = None):
        self.name = name
        self.type = type
        self.producer: Node | None = None
        self.index = 0
        self._uses: dict[tuple[Node, int], None] = {}
        self.const = const
        self.graph: Graph | None = None
        self.meta: dict[str, Any] = {}

    @property
    def uses(self) -> list[tuple["Node", int]]:
        return list(self._uses)

    @property
    def users(self) -> list["Node"]:
        """The distinct nodes that read this value, in first-use order."""
        return list(dict.fromkeys(n for n, _ in self._uses))

    @property
    def num_uses(self) -> int:
        return len(self._uses)

    @property
    def dtype(self) -> str | None:
        return None if self.type is None else self.type.dtype

    @property
    def shape(self) -> tuple[Dim, ...] | None:
        return None if self.type is None else self.type.shape

    @property
    def is_const(self) -> bool:
        return self.const is not None

    @property
    def is_graph_output(self) -> bool:
        return self.graph is not None and self in self.graph._output_set

    @property
    def is_graph_input(self) -> bool:
        return self.graph is not None and self in self.graph._input_set

    def replace_all_uses_with(self, other: "Value") -> None:
        """Make every reader of ``self`` (graph outputs included) read ``other``."""
        if other is self:
            return
        for node, i in list(self._uses):
            node.set_input(i, other)
        g = self.graph
        if g is not None and self in g._output_set:
            g.replace_output(self, other)

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}" if self.type else f"%{self.name}"


_node_ids = itertools.count()


class Node:
    """One operation. ``attrs`` holds Python values: int, float, str, bytes,
    lists of those, ``np.ndarray`` tensors, or ``Graph`` subgraphs."""

    __slots__ = ("op_type", "domain", "name", "_inputs", "outputs", "attrs", "graph",
                 "prev", "next", "_id", "meta")

    def __init__(self, op_type: str, inputs: Sequence[Value | None] = (), outputs: Sequence[Value] = (),
                 attrs: dict[str, Any] | None = None, name: str = "", domain: str = ""):
        self.op_type = op_type
        self.domain = domain
        self.name = name
        self._inputs: list[Value | None] = []
        self.outputs: list[Value] = []
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.graph: Graph | None = None
        self.prev: Node | None = None
        self.next: Node | None = None
        self._id = next(_node_ids)
        self.meta: dict[str, Any] = {}
        for v in inputs:
            self._append_input(v)
        for i, v in enumerate(outputs):
            self._attach_output(v, i)

    # -- inputs ---------------------------------------------------------------
    @property
    def inputs(self) -> tuple[Value | None, ...]:
        return tuple(self._inputs)

    def _append_input(self, v: Value | None) -> None:
        self._inputs.append(v)
        if v is not None:
            v._uses[(self, len(self._inputs) - 1)] = None

    def set_input(self, i: int, v: Value | None) -> None:
        old = self._inputs[i]
        if old is not None:
            old._uses.pop((self, i), None)
        self._inputs[i] = v
        if v is not None:
            v._uses[(self, i)] = None

    def set_inputs(self, values: Sequence[Value | None]) -> None:
        for i, old in enumerate(self._inputs):
            if old is not None:
                old._uses.pop((self, i), None)
        self._inputs = []
        for v in values:
            self._append_input(v)

    def _attach_output(self, v: Value, i: int) -> None:
        if v.producer is not None and v.producer is not self:
            raise VerifyError(f"value {v.name!r} already produced by node {v.producer.name!r}")
        v.producer = self
        v.index = i
        self.outputs.append(v)

    @property
    def output(self) -> Value:
        """The single output (most ops have one)."""
        return self.outputs[0]

    def input(self, i: int) -> Value | None:
        return self._inputs[i] if i < len(self._inputs) else None

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    @property
    def qualified_op(self) -> str:
        return f"{self.domain}::{self.op_type}" if self.domain not in ("", "ai.onnx") else self.op_type

    def subgraphs(self) -> list["Graph"]:
        out = []
        for a in self.attrs.values():
            if isinstance(a, Graph):
                out.append(a)
            elif isinstance(a, list) and a and isinstance(a[0], Graph):
                out.extend(a)
        return out

    def outer_inputs(self) -> list[Value]:
        """Values of enclosing graphs that this node's subgraphs read (implicit inputs)."""
        seen: dict[Value, None] = {}
        for sg in self.subgraphs():
            for v in sg.free_values():
                seen[v] = None
        return list(seen)

    def __hash__(self) -> int:
        return self._id

    def __eq__(self, other) -> bool:
        return self is other

    def __lt__(self, other: "Node") -> bool:  # for heaps: creation order
        return self._id < other._id

    def __repr__(self) -> str:
        ins = ", ".join("None" if v is None else f"%{v.name}" for v in self._inputs)
        outs = ", ".join(f"%{v.name}" for v in self.outputs)
        return f"{outs} = {self.qualified_op}({ins})"


class Graph:
    """A dataflow graph: inputs, initializers, nodes (in topological order), outputs."""

    def __init__(self, name: str = "graph", parent: "Graph | None" = None):
        self.name = name
        self.parent = parent
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.initializers: dict[str, Value] = {}
        self._input_set: dict[Value, None] = {}
        self._output_set: dict[Value, int] = {}
        self._head: Node | None = None
        self._tail: Node | None = None
        self._len = 0
        self._names: set[str] = set()
        self._name_counters: dict[str, int] = {}
        # model-level information carried through import/export
        self.opset_imports: dict[str, int] = {"": 17}
        self.doc_string = ""
        self.metadata: dict[str, str] = {}
        self.model_info: dict[str, Any] = {}  # producer_name, ir_version, model_version, ...
        self.value_info: dict[str, TensorType] = {}
        self.meta: dict[str, Any] = {}

    # -- naming ---------------------------------------------------------------
    def _all_names(self) -> set[str]:
        return self._names if self.parent is None else self.parent._all_names()

    def unique_name(self, base: str = "v") -> str:
        """A value/node name not yet used in this graph (or its parents)."""
        names = self._all_names()
        if base not in names:
            names.add(base)
            return base
        root = self if self.parent is None else self.root
        k = root._name_counters.get(base, 0)
        while True:
            k += 1
            cand = f"{base}_{k}"
            if cand not in names:
                root._name_counters[base] = k
                names.add(cand)
                return cand

    @property
    def root(self) -> "Graph":
        g = self
        while g.parent is not None:
            g = g.parent
        return g

    def _claim(self, v: Value) -> None:
        names = self._all_names()
        if v.name in names and v.graph is not self:
            # a clash is renamed rather than silently aliased
            v.name = self.unique_name(v.name)
        else:
            names.add(v.name)
        v.graph = self

    def new_value(self, name: str = "v", type: TensorType | None = None) -> Value:
        v = Value(self.unique_name(name), type)
        v.graph = self
        return v

    # -- inputs, outputs, initializers ------------------------------------------
    def add_input(self, name: str, type: TensorType | None) -> Value:
        v = Value(name, type)
        self._claim(v)
        self.inputs.append(v)
        self._input_set[v] = None
        return v

    def add_initializer(self, name: str, array: np.ndarray) -> Value:
        """A constant tensor value; ``name`` is made unique if taken."""
        array = np.asarray(array)
        v = Value(name, TensorType(dtypes.from_numpy(array.dtype), tuple(int(d) for d in array.shape)), array)
        self._claim(v)
        self.initializers[v.name] = v
        return v

    def remove_initializer(self, v: Value) -> None:
        if v.num_uses or v.is_graph_output:
            raise VerifyError(f"initializer {v.name!r} still has uses")
        self.initializers.pop(v.name, None)
        self._all_names().discard(v.name)

    def rename_value(self, v: Value, name: str) -> str:
        """Rename ``v`` to ``name`` (made unique if another value holds it); an
        initializer's key follows. Returns the name ``v`` got."""
        g = v.graph if v.graph is not None else self
        if name == v.name:
            return name
        names = g._all_names()
        old = v.name
        names.discard(old)
        if name in names:
            name = g.unique_name(name)
        else:
            names.add(name)
        v.name = name
        if g.initializers.get(old) is v:
            g.initializers[name] = g.initializers.pop(old)
        return name

    def replace_value_blocker(self, old: Value, new: Value) -> str | None:
        """Why ``replace_value(old, new)`` cannot keep the graph-output name, or None."""
        g = old.graph
        if old is new or g is None or old not in g._output_set:
            return None
        if new.graph is not g:
            return f"graph output {old.name!r} would become {new.name!r} of an enclosing graph"
        if new in g._input_set:
            return f"graph output {old.name!r} would become graph input {new.name!r}"
        if new in g._output_set:
            return f"graph output {old.name!r} would become graph output {new.name!r}"
        return None

    def replace_value(self, old: Value, new: Value, *, take_name: bool = False) -> bool:
        """Make every reader of ``old`` read ``new``, keeping graph-output names.

        Exported models must keep their output names, so when ``old`` is a graph
        output ``new`` takes over its name; when ``new`` cannot (it is a graph
        input, already an output, or lives in an enclosing graph) nothing changes
        and the result is False (callers keep an ``Identity`` or leave the node).
        ``take_name=True`` also hands the name over where nothing demands it.

        >>> g = Graph(); x = g.add_input("x", TensorType("float32", (2,)))
        >>> r = g.make_node("Relu", [x]).output; n = g.make_node("Neg", [r]).output
        >>> g.add_output(n); g.rename_value(n, "y")
        'y'
        >>> g.replace_value(n, r), g.outputs[0].name
        (True, 'y')
        """
        if old is new:
            return True
        if self.replace_value_blocker(old, new) is not None:
            return False
        g = old.graph
        renamable = (g is not None and new.graph is g and new not in g._input_set
                     and new not in g._output_set)
        move_name = renamable and (old.is_graph_output or take_name)
        old.replace_all_uses_with(new)
        if move_name:
            name = old.name
            g.rename_value(old, name + "_replaced")
            g.rename_value(new, name)
        return True

    def add_output(self, v: Value) -> None:
        self.outputs.append(v)
        self._output_set[v] = self._output_set.get(v, 0) + 1

    def replace_output(self, old: Value, new: Value) -> None:
        for i, o in enumerate(self.outputs):
            if o is old:
                self.outputs[i] = new
                self._output_set[new] = self._output_set.get(new, 0) + 1
        self._output_set.pop(old, None)

    # -- nodes -----------------------------------------------------------------
    def __iter__(self) -> Iterator[Node]:
        n = self._head
        while n is not None:
            nxt = n.next
            yield n
            n = nxt

    def __len__(self) -> int:
        return self._len

    @property
    def nodes(self) -> list[Node]:
        return list(self)

    def _link(self, node: Node, before: Node | None) -> None:
        if node.graph is not None:
            raise VerifyError(f"node {node.name!r} already belongs to a graph")
        node.graph = self
        if not node.name:
            node.name = self.unique_name(node.op_type.lower())
        for v in node.outputs:
            if v.graph is not self:
                self._claim(v)
        if before is None:  # append
            node.prev, node.next = self._tail, None
            if self._tail is not None:
                self._tail.next = node
            else:
                self._head = node
            self._tail = node
        else:
            node.prev, node.next = before.prev, before
            if before.prev is not None:
                before.prev.next = node
            else:
                self._head = node
            before.prev = node
        self._len += 1

    def append(self, node: Node) -> Node:
        self._link(node, None)
        return node

    def insert_before(self, anchor: Node, node: Node) -> Node:
        self._link(node, anchor)
        return node

    def insert_after(self, anchor: Node, node: Node) -> Node:
        self._link(node, anchor.next)
        return node

    def make_node(self, op_type: str, inputs: Sequence[Value | None], attrs: dict | None = None,
                  num_outputs: int = 1, output_names: Sequence[str] | None = None,
                  output_types: Sequence[TensorType | None] | None = None, domain: str = "",
                  name: str = "", before: Node | None = None, after: Node | None = None) -> Node:
        """Create a node with fresh output values and put it in the graph.

        Appended at the end, or placed ``before``/``after`` an existing node.
        """
        names = list(output_names) if output_names else [op_type.lower()] * num_outputs
        types = list(output_types) if output_types else [None] * len(names)
        outs = [Value(self.unique_name(n), t) for n, t in zip(names, types)]
        for v in outs:
            v.graph = self
        node = Node(op_type, inputs, outs, attrs, name=self.unique_name(name) if name else "", domain=domain)
        if before is not None:
            self.insert_before(before, node)
        elif after is not None:
            self.insert_after(after, node)
        else:
            self.append(node)
        return node

    def remove(self, node: Node, *, force: bool = False) -> None:
        """Unlink ``node``; its outputs must be unused unless ``force``."""
        if not force:
            for v in node.outputs:
                if v.num_uses or v.is_graph_output:
                    raise VerifyError(f"cannot remove node {node.name!r}: output {v.name!r} is still used")
        node.set_inputs([])
        self._unlink(node)

    def _unlink(self, node: Node) -> None:
        """Take ``node`` out of the node list (its use-def links stay as they are)."""
        if node.prev is not None:
            node.prev.next = node.next
        else:
            self._head = node.next
        if node.next is not None:
            node.next.prev = node.prev
        else:
            self._tail = node.prev
        node.prev = node.next = None
        node.graph = None
        self._len -= 1

    def move_before(self, anchor: Node, node: Node) -> None:
        """Relocate ``node`` (already in this graph) to just before ``anchor``."""
        if node is anchor:
            return
        self._unlink(node)
        self._link(node, anchor)

    # -- queries ---------------------------------------------------------------
    def free_values(self) -> list[Value]:
        """Values read here (or in nested graphs) but defined in an enclosing graph."""
        local: set[Value] = set(self.inputs) | set(self.initializers.values())
        free: dict[Value, None] = {}
        for n in self:
            for v in n.inputs:
                if v is not None and v not in local and v.graph is not self:
                    free[v] = None
            for v in n.outer_inputs():
                if v.graph is not self and v not in local:
                    free[v] = None
            local.update(n.outputs)
        return list(free)

    def node_inputs(self, node: Node) -> list[Value]:
        """Explicit inputs plus the implicit ones read by its subgraphs."""
        vals = [v for v in node.inputs if v is not None]
        if node.attrs and any(isinstance(a, (Graph, list)) for a in node.attrs.values()):
            vals.extend(node.outer_inputs())
        return vals

    def toposort(self) -> None:
        """Reorder nodes topologically, keeping the current order wherever it is legal
        (Kahn's algorithm with the current position as priority: deterministic)."""
        nodes = list(self)
        pos = {n: i for i, n in enumerate(nodes)}
        indeg: dict[Node, int] = {}
        succ: dict[Node, list[Node]] = {n: [] for n in nodes}
        for n in nodes:
            preds = {v.producer for v in self.node_inputs(n)
                     if v.producer is not None and v.producer in pos}
            indeg[n] = len(preds)
            for p in preds:
                succ[p].append(n)
        heap = [(pos[n], n) for n in nodes if indeg[n] == 0]
        heapq.heapify(heap)
        order = []
        while heap:
            _, n = heapq.heappop(heap)
            order.append(n)
            for s in succ[n]:
                indeg[s] -= 1
                if indeg[s] == 0:
                    heapq.heappush(heap, (pos[s], s))
        if len(order) != len(nodes):
            stuck = next(n for n in nodes if indeg[n] > 0)
            raise VerifyError(f"graph {self.name!r} has a cycle through node {stuck.name!r} ({stuck.op_type})")
        self._head = self._tail = None
        prev = None
        for n in order:
            n.prev, n.next = prev, None
            if prev is None:
                self._head = n
            else:
                prev.next = n
            prev = n
        self._tail = prev

    def to_networkx(self):
        """A ``networkx.DiGraph`` view (nodes are ``Node`` objects) for graph algorithms."""
        import networkx as nx

        dg = nx.DiGraph()
        for n in self:
            dg.add_node(n)
            for v in self.node_inputs(n):
                if v.producer is not None and v.producer.graph is self:
                    dg.add_edge(v.producer, n)
        return dg

    def verify(self) -> None:
        """Check SSA form, topological order, use-def links and known types.

        Raises ``VerifyError`` naming the first node or value at fault.
        """
        defined: set[Value] = set()
        outer: set[Value] = set()
        g = self.parent
        while g is not None:
            outer.update(g._visible_values())
            g = g.parent
        names: dict[str, Value] = {}

        def define(v: Value, where: str) -> None:
            if v in defined:
                raise VerifyError(f"value {v.name!r} defined twice ({where})")
            other = names.get(v.name)
            if other is not None and other is not v:
                raise VerifyError(f"two values share the name {v.name!r} ({where})")
            names[v.name] = v
            defined.add(v)

        for v in self.inputs:
            define(v, "graph input")
        for name, v in self.initializers.items():
            if v.const is None:
                raise VerifyError(f"initializer {name!r} has no data")
            if name != v.name:
                raise VerifyError(f"initializer key {name!r} differs from its value's name {v.name!r}")
            define(v, "initializer")
        count = 0
        prev = None
        for n in self:
            count += 1
            if n.graph is not self:
                raise VerifyError(f"node {n.name!r} is linked into graph {self.name!r} but does not belong to it")
            if n.prev is not prev:
                raise VerifyError(f"node list corrupt at {n.name!r}")
            prev = n
            for i, v in enumerate(n.inputs):
                if v is None:
                    continue
                if v not in defined and v not in outer:
                    raise VerifyError(
                        f"node {n.name!r} ({n.op_type}) reads {v.name!r} before it is defined "
                        f"(not topologically sorted, a cycle, or a dangling value)")
                if (n, i) not in v._uses:
                    raise VerifyError(f"use of {v.name!r} by node {n.name!r} is not recorded")
            for sg in n.subgraphs():
                if sg.parent is None:
                    raise VerifyError(f"subgraph {sg.name!r} of node {n.name!r} has no parent link")
                sg.verify()
            for i, v in enumerate(n.outputs):
                if v.producer is not n or v.index != i:
                    raise VerifyError(f"output {v.name!r} of node {n.name!r} has a wrong producer link")
                define(v, f"output of node {n.name!r}")
        if count != self._len or prev is not self._tail:
            raise VerifyError(f"node list of graph {self.name!r} is corrupt")
        for v in defined:
            for (user, _) in v._uses:
                if user.graph is None:
                    raise VerifyError(f"value {v.name!r} lists a use by removed node {user.name!r}")
        for v in self.outputs:
            if v not in defined and v not in outer:
                raise VerifyError(f"graph output {v.name!r} is not defined")

    def _visible_values(self) -> set[Value]:
        vals = set(self.inputs) | set(self.initializers.values())
        for n in self:
            vals.update(n.outputs)
        return vals

    def values(self) -> Iterable[Value]:
        """Every value defined in this graph (inputs, initializers, node outputs)."""
        yield from self.inputs
        yield from self.initializers.values()
        for n in self:
            yield from n.outputs

    def clone(self) -> "Graph":
        """A deep copy (constants are shared, read-only)."""
        return clone_graph(self)

    def adopt(self, src: "Graph") -> None:
        """Take the inputs, initializers, nodes and outputs of ``src`` (which must not be
        used afterwards); ``self`` stays the object its callers hold, and keeps its name,
        parent, metadata and ``meta``. For passes that rebuild a whole graph elsewhere
        (the onnxsim pass) and hand the result back in place."""
        keep = {k: getattr(self, k) for k in ("name", "parent", "meta", "metadata", "model_info", "doc_string")}
        self.__dict__.update(src.__dict__)
        self.__dict__.update(keep)
        for v in [*self.inputs, *self.initializers.values()]:
            v.graph = self
        for n in self:
            n.graph = self
            for v in n.outputs:
                v.graph = self
            for sg in n.subgraphs():
                sg.parent = self

    def __str__(self) -> str:
        from .printer import format_graph

        return format_graph(self)


def clone_graph(g: Graph, parent: Graph | None = None, vmap: dict[Value, Value] | None = None) -> Graph:
    vmap = {} if vmap is None else vmap
    ng = Graph(g.name, parent)
    ng.opset_imports = dict(g.opset_imports)
    ng.doc_string = g.doc_string
    ng.metadata = dict(g.metadata)
    ng.model_info = dict(g.model_info)
    ng.value_info = dict(g.value_info)
    ng.meta = dict(g.meta)
    if parent is None:
        ng._names = set(g._names)
        ng._name_counters = dict(g._name_counters)
    for v in g.inputs:
        nv = Value(v.name, v.type)
        nv.graph = ng
        nv.meta = dict(v.meta)
        ng.inputs.append(nv)
        ng._input_set[nv] = None
        vmap[v] = nv
    for name, v in g.initializers.items():
        nv = Value(v.name, v.type, v.const)
        nv.graph = ng
        ng.initializers[name] = nv
        vmap[v] = nv
    for n in g:
        attrs = {}
        for k, a in n.attrs.items():
            if isinstance(a, Graph):
                attrs[k] = clone_graph(a, ng, vmap)
            elif isinstance(a, list) and a and isinstance(a[0], Graph):
                attrs[k] = [clone_graph(s, ng, vmap) for s in a]
            else:
                attrs[k] = a
        outs = []
        for v in n.outputs:
            nv = Value(v.name, v.type)
            nv.graph = ng
            nv.meta = dict(v.meta)
            vmap[v] = nv
            outs.append(nv)
        nn_ = Node(n.op_type, [None if v is None else vmap.get(v, v) for v in n.inputs], outs, attrs,
                   name=n.name, domain=n.domain)
        nn_.meta = dict(n.meta)
        for sg in nn_.subgraphs():
            sg.parent = ng
        nn_.graph = None
        # link without renaming: names were already unique in the source graph
        nn_.graph = ng
        nn_.prev, nn_.next = ng._tail, None
        if ng._tail is not None:
            ng._tail.next = nn_
        else:
            ng._head = nn_
        ng._tail = nn_
        ng._len += 1
    for v in g.outputs:
        ng.add_output(vmap.get(v, v))
    return ng
