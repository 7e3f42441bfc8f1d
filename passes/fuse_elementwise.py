"""Relu(Add(Mul(x, s), b)) => ai.graphopt::FusedElementwise[expr="relu(add(mul(in0, in1), in2))"](x, s, b)

Every connected group of pointwise/broadcast ops (``schema.elementwise``, an
existing ``FusedElementwise`` included) becomes one ``FusedElementwise`` node whose
``expr`` attribute holds the group's scalar expressions (``graphopt.expr``): one
kernel, one pass over memory. The group's external values are the node's inputs;
size-1 constants are inlined as literals when that keeps every output's shape.

Outside uses: a group value read outside the group (or a graph output) becomes
one more output of the fused node, rather than cutting the group there. The
kernel then writes a tensor that would have been written anyway, and the values
it reads are read once instead of twice.

Legality: groups grow along producer -> consumer edges, visiting nodes in
topological order. Merging the group A of a producer into the group B of the
node being visited would create a cycle exactly when some node outside A and B
is reachable from A and reaches B, e.g. ``a = Exp(x); c = Conv(a); y = Add(a, c)``:
fusing Exp with Add would make the fused node both feed and read the Conv. This
is checked on the contracted graph (earlier groups count as single nodes) by a
search from A's outside users; nodes not visited yet are singletons after B in
topological order, so the search never leaves the part of the graph already
visited. Such a refusal is counted in the report with the op on the path.

Groups of a single op are left alone. Fused nodes sit where the last op of their
group was; a reader of an extra output that came earlier moves after it
(``Graph.toposort`` keeps every other node where it was).

A trailing row op (Softmax, LogSoftmax, LayerNormalization, ReduceMean/Sum/Max
over the last axis) is taken in by ``fuse_row_reduce``, which runs next: the group
feeding it becomes the prologue of a ``FusedRowReduce`` (evaluated per element as
the row is loaded), the group reading it the epilogue (as it is stored), with the
same cycle check and the same rule for values read outside.

>>> from graphopt.builder import GraphBuilder
>>> from graphopt.testing import run_passes
>>> b = GraphBuilder(); x = b.input("x", (2, 3))
>>> _ = b.output(b.op("Relu", b.op("Add", x, 1.0)), "y")
>>> _ = run_passes(b.graph, ["fuse_elementwise"])
>>> [(n.op_type, n.attrs["expr"]) for n in b.graph]
[('FusedElementwise', 'relu(add(in0, 1.0))')]
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from graphopt.expr import Const, Expr, Input, dtype_of, format_exprs, inputs_used, node_to_expr, parse_exprs, substitute
from graphopt.ir import Graph, Node, Value
from graphopt.ops.fused import FUSED_DOMAIN
from graphopt.ops.registry import broadcast_shapes
from graphopt.passmanager import PassContext, PassResult, register_pass

from ._util import remove_dead_from

RULE = "fuse_elementwise"


def node_exprs(node: Node) -> list[Expr] | None:
    """The node's outputs as expressions over its own inputs (``in<i>`` = input i), or
    None when the node is not pointwise work an expression can hold."""
    if node.domain == FUSED_DOMAIN and node.op_type == "FusedElementwise":
        try:
            exprs = parse_exprs(node.attrs.get("expr", ""))
        except Exception:
            return None
        return exprs if len(exprs) == len(node.outputs) else None
    if node.attrs and node.subgraphs():
        return None
    if any(v is not None and (v.type is None or v.dtype in (None, "string")) for v in node.inputs):
        return None
    if len(node.outputs) != 1 or node.output.type is None:
        return None
    e = node_to_expr(node, [None if v is None else Input(i) for i, v in enumerate(node.inputs)])
    if e is None or dtype_of(e, [None if v is None else v.dtype for v in node.inputs]) != node.output.dtype:
        return None
    return [e]


class _Groups:
    """Union-find over the fusible nodes, with member lists (in visiting order) and the
    nodes outside each group that read it (kept up to date by ``union``)."""

    def __init__(self):
        self.parent: dict[Node, Node] = {}
        self.members: dict[Node, list[Node]] = {}
        self.readers: dict[Node, set[Node]] = {}

    def add(self, n: Node, readers) -> None:
        self.parent[n] = n
        self.members[n] = [n]
        self.readers[n] = set(readers)

    def __contains__(self, n: Node) -> bool:
        return n in self.parent

    def find(self, n: Node) -> Node:
        root = n
        while self.parent[root] is not root:
            root = self.parent[root]
        while self.parent[n] is not root:
            self.parent[n], n = root, self.parent[n]
        return root

    def union(self, a: Node, b: Node) -> Node:
        """Merge two groups; work in the size of the smaller one (so linearithmic overall)."""
        a, b = self.find(a), self.find(b)
        if len(self.members[a]) + len(self.readers[a]) < len(self.members[b]) + len(self.readers[b]):
            a, b = b, a
        ra, rb = self.readers[a], self.readers.pop(b)
        ra.difference_update(self.members[b])
        ra.update(u for u in rb if u not in self.parent or self.find(u) is not a)
        self.parent[b] = a
        self.members[a] += self.members.pop(b)
        return a


def _top_level(graph: Graph) -> dict[Node, Node]:
    """Nodes of nested subgraphs -> the node of ``graph`` that holds them."""
    owner: dict[Node, Node] = {}

    def walk(g: Graph, top: Node) -> None:
        for m in g:
            owner[m] = top
            for sg in m.subgraphs():
                walk(sg, top)

    for n in graph:
        for sg in n.subgraphs():
            walk(sg, n)
    return owner


class _Fuser:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.order = list(graph)
        self.pos = {n: i for i, n in enumerate(self.order)}
        self.owner = _top_level(graph)
        self.groups = _Groups()
        self.exprs: dict[Node, list[Expr]] = {}
        self.refused: Counter = Counter()

    def users(self, n: Node):
        for v in n.outputs:
            for u in v.users:
                yield self.owner.get(u, u)

    def cycle_through(self, a: Node, b: Node, limit: int) -> Node | None:
        """A node outside groups ``a`` and ``b`` on a path from ``a`` to ``b``, or None."""
        g = self.groups
        ends = {a, b}
        stack = [u for u in g.readers[a] if u not in g or g.find(u) not in ends]
        first: dict[Node, Node] = {u: u for u in stack}  # node -> the node that left group a
        seen = set(stack)
        while stack:
            x = stack.pop()
            if self.pos.get(x, limit + 1) > limit:
                continue  # not visited yet: a singleton after b, it cannot reach b
            root = g.find(x) if x in g else None
            if root is b:
                return first[x]
            for u in (g.readers[root] if root is not None else self.users(x)):
                if u not in seen and not (u in g and g.find(u) is a):
                    seen.add(u)
                    first[u] = first[x]
                    stack.append(u)
        return None

    def group(self) -> list[list[Node]]:
        g = self.groups
        for v in self.order:
            exprs = node_exprs(v)
            if exprs is None:
                continue
            self.exprs[v] = exprs
            g.add(v, self.users(v))
            for x in dict.fromkeys(x for x in v.inputs if x is not None):
                p = x.producer
                if p is None or p not in g:
                    continue
                a, b = g.find(p), g.find(v)
                if a is b:
                    continue
                via = self.cycle_through(a, b, self.pos[v])
                if via is not None:
                    self.refused[(RULE, f"fusing {p.op_type} into {v.op_type} would create a cycle "
                                        f"through {via.op_type}")] += 1
                    continue
                g.union(a, b)
        return [sorted(ms, key=self.pos.__getitem__) for ms in g.members.values() if len(ms) > 1]

    # -- building one fused node --------------------------------------------------
    def outside_outputs(self, members: list[Node]) -> list[Value]:
        inside = set(members)
        outs = []
        for m in members:
            for v in m.outputs:
                if v.is_graph_output or any(self.owner.get(u, u) not in inside for u in v.users):
                    outs.append(v)
        return outs

    def build(self, members: list[Node], inline: bool):
        env: dict[Value, Expr] = {}
        ext: dict[Value, int] = {}

        def arg(v: Value) -> Expr:
            if v in env:
                return env[v]
            c = v.const
            if inline and c is not None and c.size == 1 and c.dtype.kind in "biuf":
                return Const(c.reshape(()).item(), v.dtype)
            if v not in ext:
                ext[v] = len(ext)
            return Input(ext[v])

        for m in members:
            args = [None if v is None else arg(v) for v in m.inputs]
            for out, e in zip(m.outputs, self.exprs[m]):
                env[out] = substitute(e, lambda inp: args[inp.index])
        outs = self.outside_outputs(members)
        return list(ext), outs, [env[o] for o in outs]

    def fuse(self, members: list[Node]) -> bool:
        for inline in (True, False):
            inputs, outs, exprs = self.build(members, inline)
            why = _check_outputs(inputs, outs, exprs)
            if why is None:
                break
        else:
            self.refused[(RULE, why)] += 1
            return False
        last = members[-1]
        node = self.graph.make_node("FusedElementwise", inputs, {"expr": format_exprs(exprs)},
                                    num_outputs=len(outs), output_names=[o.name for o in outs],
                                    output_types=[o.type for o in outs], domain=FUSED_DOMAIN,
                                    name=f"fused_{last.name}", after=last)
        for old, new in zip(outs, node.outputs):
            self.graph.replace_value(old, new, take_name=True)
        remove_dead_from(self.graph, list(members))
        return True


def _same_shape(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return len(a) == len(b) and all(x == y or (x is None and not isinstance(y, int)) for x, y in zip(a, b))


def _check_outputs(inputs: list[Value], outs: list[Value], exprs: list[Expr]) -> str | None:
    """Why the fused node would not reproduce the group's outputs (dtype, shape), or None."""
    dts = [v.dtype for v in inputs]
    for o, e in zip(outs, exprs):
        if dtype_of(e, dts) != o.dtype:
            return f"output {o.name!r} would change dtype"
        used = inputs_used(e)
        shape = broadcast_shapes(*[inputs[i].shape for i in used]) if used else ()
        if o.shape is not None and not _same_shape(shape, o.shape):
            return f"output {o.name!r} would change shape"
    return None


@register_pass("fuse_elementwise", opt_level=2, kind="lowering", order=40)
def fuse_elementwise(graph: Graph, ctx: PassContext) -> PassResult:
    """Relu(Add(Mul(x, s), b)) => FusedElementwise[expr="relu(add(mul(in0, in1), in2))"](x, s, b)"""
    if ctx.level < 2:
        return PassResult(False, refused=Counter({(RULE, "operator fusion needs -O2"): 1}))
    fuser = _Fuser(graph)
    stats: Counter = Counter()
    for members in fuser.group():
        if fuser.fuse(members):
            stats["groups_fused"] += 1
            stats["ops_fused"] += len(members)
    if stats:
        graph.toposort()
    return PassResult(bool(stats), dict(stats), fuser.refused)
