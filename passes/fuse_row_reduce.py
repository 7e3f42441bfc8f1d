"""Mul(Softmax(FusedElementwise[add(in0, in1)](s, m)), 2) => ai.graphopt::FusedRowReduce[kind=softmax,
prologue="add(in0, in1)", epilogue="mul(acc, 2.0)"](s, m)

A row op over the last axis (Softmax, LogSoftmax, LayerNormalization, ReduceMean,
ReduceSum, ReduceMax) takes in the pointwise node that computes its input (a
``FusedElementwise`` group, or a single elementwise op) as its prologue, and the
pointwise node that reads its result as its epilogue: one kernel that computes
the row's elements as it loads them, reduces, and applies the epilogue as it
stores. Runs after ``fuse_elementwise``, whose groups are whole nodes by then.

Outside uses: a prologue value read outside (a pre-LayerNorm residual ``x + f(x)``
that is also the next residual) becomes an extra output, written as the row is
first read; the row op's own result read outside is an epilogue output. Of several pointwise
readers of the result, a lone ``Cast`` is taken (mixed precision's float32 LayerNorm
feeding a residual and, through a Cast, the next float16 MatMul: one kernel stores
both). An extra
output must have the row input's shape (the kernel writes it element by element
of the rows), so a smaller value read outside keeps its node out. An epilogue
keeps the row op's result shape: it may not broadcast it up (``Sub(x, ReduceMean(x))``
stays two kernels) nor read a prologue value.

Legality: the row axis is the last one (for Softmax before opset 13, ``axis`` is the
last axis), LayerNormalization's Mean/InvStdDev are unused and its statistics
float32, and merging must not create a cycle: no node outside the merged nodes may
be both reachable from them and reach them (``x = Add(a, b); w = MatMul(x, v);
LayerNormalization(x, w)``), searched from the members' outside readers up to the
last member's position, as in ``fuse_elementwise``. The prologue is elementwise, so
each row's elements depend only on the inputs at that row's coordinates.

>>> from graphopt.builder import GraphBuilder
>>> from graphopt.testing import run_passes
>>> b = GraphBuilder(); x = b.input("x", (2, 3))
>>> _ = b.output(b.op("Softmax", b.op("Mul", x, 0.5), axis=-1), "y")
>>> _ = run_passes(b.graph, ["fuse_row_reduce"])
>>> [(n.op_type, n.attrs["kind"], n.attrs["prologue"]) for n in b.graph]
[('FusedRowReduce', 'softmax', 'mul(in0, 0.5)')]
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from graphopt import dtypes
from graphopt.expr import Const, Expr, Input, format_exprs, substitute
from graphopt.ir import Graph, Node, Value
from graphopt.ops.fused import FUSED_DOMAIN, row_result_shape
from graphopt.ops.reduce import reduce_axes
from graphopt.ops.registry import node_opset
from graphopt.passmanager import PassContext, PassResult, register_pass

from ._util import remove_dead_from
from .fuse_elementwise import _check_outputs, _same_shape, _top_level, node_exprs

RULE = "fuse_row_reduce"
KINDS = {"Softmax": "softmax", "LogSoftmax": "log_softmax", "LayerNormalization": "layernorm",
         "ReduceMean": "reduce_mean", "ReduceSum": "reduce_sum", "ReduceMax": "reduce_max"}


def _is_last(axis, rank: int) -> bool:
    return axis is not None and -rank <= int(axis) < rank and int(axis) % rank == rank - 1


def row_attrs(node: Node) -> tuple[dict | None, str | None]:
    """The FusedRowReduce attributes (kind, epsilon, keepdims) a row op becomes, or a reason it
    cannot be one (None, None: not a row op at all)."""
    kind = KINDS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if kind is None:
        return None, None
    x = node.input(0)
    if x is None or x.type is None or x.shape is None or not x.shape:
        return None, f"{node.op_type} input has no known rank"
    if x.dtype not in dtypes.FLOAT_TYPES:
        return None, f"{node.op_type} on {x.dtype}"
    rank = len(x.shape)
    attrs = {"kind": kind}
    if kind in ("softmax", "log_softmax"):
        axis = node.attrs.get("axis", 1 if node_opset(node) < 13 else -1)
        if not _is_last(axis, rank):
            return None, f"{node.op_type} over axis {axis}, not the last"
    elif kind == "layernorm":
        if not _is_last(node.attrs.get("axis", -1), rank):
            return None, f"LayerNormalization from axis {node.attrs.get('axis')}, not the last only"
        if any(v.num_uses or v.is_graph_output for v in node.outputs[1:]):
            return None, "LayerNormalization Mean/InvStdDev are used"
        if node.attrs.get("stash_type", 1) != 1:
            return None, "LayerNormalization stash_type is not float32"
        attrs["epsilon"] = float(node.attrs.get("epsilon", 1e-5))
    else:
        if node.input(1) is not None:
            axes = node.input(1).const
            if axes is None:
                return None, f"{node.op_type} axes are computed"
            axes = [int(a) for a in np.ravel(axes)]
        else:
            axes = node.attrs.get("axes")
        red = reduce_axes(axes, rank, node.attrs.get("noop_with_empty_axes", 0))
        if red != (rank - 1,):
            return None, f"{node.op_type} over axes {list(red) if red is not None else 'none'}, not the last only"
        attrs["keepdims"] = int(node.attrs.get("keepdims", 1))
    return attrs, None


class _RowFuser:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.owner = _top_level(graph)
        self.refused: Counter = Counter()
        self.renumber()

    def renumber(self) -> None:
        self.pos = {n: i for i, n in enumerate(self.graph)}

    def users(self, n: Node):
        for v in n.outputs:
            for u in v.users:
                yield self.owner.get(u, u)

    def readers(self, v: Value):
        return {self.owner.get(u, u) for u in v.users}

    def cycle_through(self, members: list[Node]) -> Node | None:
        """A node outside ``members`` on a path from one member to another, or None."""
        inside = set(members)
        limit = max(self.pos[m] for m in members)
        stack = [u for m in members for u in self.users(m) if u not in inside]
        seen = set(stack)
        first = {u: u for u in stack}  # node -> the node that left the members
        while stack:
            x = stack.pop()
            if self.pos.get(x, limit + 1) >= limit:
                continue  # at or after the last member: it cannot reach one
            for u in self.users(x):
                if u in inside:
                    return first[x]
                if u not in seen:
                    seen.add(u)
                    first[u] = first[x]
                    stack.append(u)
        return None

    def has_pointwise_neighbour(self, row: Node) -> bool:
        near = [row.input(0).producer if row.input(0) is not None else None, *self.users(row)]
        return any(n is not None and n.graph is self.graph and node_exprs(n) is not None for n in near)

    def refuse(self, why: str) -> None:
        self.refused[(RULE, why)] += 1

    # -- choosing the members ---------------------------------------------------------------
    def prologue_node(self, row: Node) -> Node | None:
        p = row.input(0).producer
        if p is None or p.graph is not self.graph or node_exprs(p) is None:
            return None
        x = row.input(0)
        if any(v is not None and v.producer is p for v in row.inputs[1:]):
            self.refuse(f"{row.op_type} reads a value of {p.op_type} as an operand besides its input")
            return None
        for v in p.outputs:
            outside = self.readers(v) - {row}
            if (outside or v.is_graph_output) and not _same_shape(v.shape, x.shape):
                self.refuse(f"{p.op_type} value {v.name!r} is read outside and does not have the row's shape")
                return None
        via = self.cycle_through([p, row])
        if via is not None:
            self.refuse(f"fusing {p.op_type} into {row.op_type} would create a cycle through {via.op_type}")
            return None
        return p

    def epilogue_node(self, row: Node, pro: Node | None) -> Node | None:
        users = self.readers(row.output)
        pointwise = [u for u in users if u.graph is self.graph and node_exprs(u) is not None]
        casts = [u for u in pointwise if u.op_type == "Cast"]
        if len(pointwise) > 1 and len(casts) == 1:
            pointwise = casts  # a Cast only changes the stored type: the row kernel writes both results
        if len(pointwise) != 1:
            return None
        (e,) = pointwise
        acc_shape = row.output.shape
        if any(v.producer is pro for v in e.inputs if v is not None and pro is not None):
            self.refuse(f"{e.op_type} after {row.op_type} reads the prologue's value")
            return None
        for v in e.outputs:
            if not _same_shape(v.shape, acc_shape):
                self.refuse(f"{e.op_type} after {row.op_type} changes the row result's shape")
                return None
        via = self.cycle_through([m for m in (pro, row, e) if m is not None])
        if via is not None:
            self.refuse(f"fusing {e.op_type} into {row.op_type} would create a cycle through {via.op_type}")
            return None
        return e

    # -- building the fused node ----------------------------------------------------------------
    def build(self, row: Node, attrs: dict, pro: Node | None, epi: Node | None, inline: bool):
        ext: dict[Value, int] = {}

        def arg(v: Value, shift: int = 0) -> Expr:
            c = v.const
            if inline and c is not None and c.size == 1 and c.dtype.kind in "biuf":
                return Const(c.reshape(()).item(), v.dtype)
            if v not in ext:
                ext[v] = len(ext)
            return Input(ext[v] + shift)

        def live(v: Value, inside: set[Node]) -> bool:
            return v.is_graph_output or bool(self.readers(v) - inside)

        members = [m for m in (pro, row, epi) if m is not None]
        inside = set(members)
        x = row.input(0)
        pro_env: dict[Value, Expr] = {x: arg(x)} if pro is None else {}
        if pro is not None:
            args = [None if v is None else arg(v) for v in pro.inputs]
            for out, e in zip(pro.outputs, node_exprs(pro)):
                pro_env[out] = substitute(e, lambda i: args[i.index])
        extras = [v for v in (pro.outputs if pro is not None else ()) if live(v, {row})]
        epi_env: dict[Value, Expr] = {row.output: Input(0)}
        epi_outs = [row.output] if live(row.output, inside) else []
        if epi is not None:
            args = [None if v is None else epi_env.get(v) or arg(v, 1) for v in epi.inputs]
            for out, e in zip(epi.outputs, node_exprs(epi)):
                epi_env[out] = substitute(e, lambda i: args[i.index])
            epi_outs += [v for v in epi.outputs if live(v, inside)]
        inputs = list(ext)
        pro_exprs = [pro_env[x]] + [pro_env[v] for v in extras]
        epi_exprs = [epi_env[v] for v in epi_outs]
        if not epi_exprs:
            return [], {}, [], f"{row.op_type} result is unused"
        why = (_check_outputs(inputs, [x, *extras], pro_exprs)
               or _check_outputs([row.output, *inputs], epi_outs, epi_exprs))
        own = list(row.inputs[1:3]) + [None] * (3 - len(row.inputs)) if attrs["kind"] == "layernorm" else []
        node_attrs = dict(attrs, prologue=format_exprs(pro_exprs),
                          epilogue="" if epi_exprs == [Input(0)] else format_exprs(epi_exprs, acc=True))
        return [*own, *inputs], node_attrs, epi_outs + extras, why

    def fuse(self, row: Node, attrs: dict, pro: Node | None, epi: Node | None) -> bool:
        for inline in (True, False):
            inputs, node_attrs, outs, why = self.build(row, attrs, pro, epi, inline)
            if why is None:
                break
        else:
            self.refuse(why)
            return False
        members = [m for m in (pro, row, epi) if m is not None]
        last = members[-1]
        node = self.graph.make_node("FusedRowReduce", inputs, node_attrs, num_outputs=len(outs),
                                    output_names=[o.name for o in outs], output_types=[o.type for o in outs],
                                    domain=FUSED_DOMAIN, name=f"fused_{row.name}", after=last)
        for old, new in zip(outs, node.outputs):
            self.graph.replace_value(old, new, take_name=True)
        remove_dead_from(self.graph, members)
        self.graph.toposort()  # a reader of an extra output may have come before the fused node
        self.renumber()
        return True

    def run(self) -> PassResult:
        stats: Counter = Counter()
        for row in list(self.graph):
            if row.graph is not self.graph:
                continue  # removed as a member of an earlier fusion
            attrs, why = row_attrs(row)
            if attrs is None:
                if why is not None and self.has_pointwise_neighbour(row):
                    self.refuse(why)
                continue
            pro = self.prologue_node(row)
            epi = self.epilogue_node(row, pro)
            if (pro is None and epi is None) or not self.fuse(row, attrs, pro, epi):
                continue
            stats["rows_fused"] += 1
            stats["prologues"] += pro is not None
            stats["epilogues"] += epi is not None
        return PassResult(bool(stats), dict(stats), self.refused)


@register_pass("fuse_row_reduce", opt_level=2, kind="lowering", order=45)
def fuse_row_reduce(graph: Graph, ctx: PassContext) -> PassResult:
    """Softmax(FusedElementwise[add(in0, in1)](s, m)) => FusedRowReduce[kind=softmax, prologue="add(in0, in1)"](s, m)"""
    if ctx.level < 2:
        return PassResult(False, refused=Counter({(RULE, "operator fusion needs -O2"): 1}))
    return _RowFuser(graph).run()
