"""Move Transposes down through elementwise ops until they meet and cancel, and merge
chains of reshaping ops.

    Transpose(f(Transpose(x, p)), q)              => f(x)                   [p then q is the identity]
    Transpose(Add(Transpose(x, p), c), q)         => Add(x, c')             [c' = c permuted by p^-1]
    Transpose(Mul(Transpose(x, p), Transpose(y, p)), q)  => Mul(x, y)
    Transpose(Sub(Transpose(x, p), y), q)         => Sub(x, Transpose(y, p^-1))   [2 Transposes become 1]
    Unsqueeze(Unsqueeze(x, a1), a2)               => Unsqueeze(x, a)
    Reshape(Squeeze|Unsqueeze|Flatten(x), s)      => Reshape(x, s)          [s copies no intermediate dim]
    Reshape(Transpose(x, p), s)                   => Reshape(x, s)          [p moves only axes of size 1]
    Squeeze|Unsqueeze|Flatten|Reshape(Squeeze|Unsqueeze|Flatten|Reshape(x))  => Reshape(x, its static shape)

A Transpose ``T(x, p)`` with one reader is followed down a chain of elementwise
ops (the registry's ``elementwise`` ops, one reader each) to a value read only
by Transposes. Rewriting the chain to work on ``x`` moves ``p`` to the end of
it, where it composes with each Transpose there (eliminate_noops's
``Transpose(Transpose(x))`` rule, applied here directly). The other operands of
the chain come along: a constant is permuted (after broadcasting it to full
rank), a tensor of one element needs nothing, an operand that is ``T(y, p)``
becomes ``y``, any other operand of full rank gets a ``Transpose(y, p^-1)``.
Transposes are counted before and after per candidate, and the chain is
rewritten only when the count goes down; elementwise ops commute with a
permutation of their operands, so the numbers are exactly the same.

Transpose(Transpose(x)) itself, Reshape(Reshape(x)) and the Squeeze/Unsqueeze
pairs are eliminate_noops's.
"""
from __future__ import annotations

import numpy as np

from graphopt.ir import Graph, Node, TensorType, Value
from graphopt.ops.registry import get_schema
from graphopt.passmanager import PassContext, PassResult, register_pass
from graphopt.patterns import Match, P, Rule, X

from ._rewrite_util import rules_result, swap_const
from ._util import remove_dead_from
from .eliminate_noops import _perm, bypass, const_ints

NOT_PERMUTABLE = frozenset({"CastLike", "SwiGLU"})  # read a type / split an axis: not pointwise in every operand
RESHAPING = ("Squeeze", "Unsqueeze", "Flatten", "Reshape")


def _inverse(p: list[int]) -> list[int]:
    inv = [0] * len(p)
    for i, a in enumerate(p):
        inv[a] = i
    return inv


def _pointwise(n: Node) -> bool:
    if n.domain not in ("", "ai.onnx") or n.op_type in NOT_PERMUTABLE or len(n.outputs) != 1:
        return False
    s = get_schema(n.op_type, n.domain)
    return s is not None and s.elementwise


def _rank(v: Value | None) -> int | None:
    return None if v is None or v.shape is None else len(v.shape)


def _one_element(v: Value) -> bool:
    return v.type is not None and v.type.is_static and v.type.numel() == 1


# -- Transposes through elementwise chains ---------------------------------------------------

class _Plan:
    """What sinking ``T(x, p)`` would do: the chain, its operands, the Transposes at the end."""

    def __init__(self, t: Node, p: list[int]):
        self.t, self.p = t, p
        self.chain: list[Node] = []
        self.dying: list[Node] = []      # operand Transposes T(y, p) left without readers
        self.inserted = 0                 # Transpose(y, p^-1) to write
        self.ends: list[Node] = []

    def transposes_after(self) -> int:
        after = self.inserted
        for f in self.ends:
            q = _perm(f, len(self.p))
            after += [self.p[i] for i in q] != list(range(len(self.p)))
        return after

    def transposes_before(self) -> int:
        return 1 + len(self.dying) + len(self.ends)


def _same_transpose(v: Value, p: list[int]) -> bool:
    n = v.producer
    return n is not None and n.op_type == "Transpose" and n.domain == "" and _perm(n, _rank(n.input(0))) == p


def _operand_cost(plan: _Plan, node: Node, v: Value, cur: Value) -> str | None:
    """Count what operand ``v`` of ``node`` needs; a reason when it cannot come along."""
    rank = len(plan.p)
    if v is cur or v.const is not None or _one_element(v):
        return None
    if _same_transpose(v, plan.p):
        readers = v.producer.output.users
        if readers == [node] and not v.is_graph_output and v.producer not in plan.dying:
            plan.dying.append(v.producer)
        return None
    if _rank(v) != rank:
        return f"operand {v.name!r} of {node.op_type} has a lower rank and is not a constant"
    plan.inserted += 1
    return None


def plan_sink(t: Node) -> _Plan | str | None:
    """The plan for sinking Transpose ``t``, a reason it cannot be done, or None (nothing to meet)."""
    p = _perm(t, _rank(t.input(0)))
    if p is None:
        return None
    plan = _Plan(t, p)
    cur = t.output
    while True:
        users = cur.users
        if users and all(u.op_type == "Transpose" and u.domain == "" for u in users):
            if not plan.chain:
                return None  # Transpose(Transpose(x)): eliminate_noops
            if cur.is_graph_output:
                return "a value on the way is a graph output"
            plan.ends = users
            break
        if cur.is_graph_output:
            return None
        if len(users) != 1 or not _pointwise(users[0]):
            return None
        node = users[0]
        if _rank(node.output) != len(p):
            return None
        for v in node.inputs:
            if v is not None:
                why = _operand_cost(plan, node, v, cur)
                if why:
                    return why
        plan.chain.append(node)
        cur = node.output
    if plan.transposes_after() >= plan.transposes_before():
        return (f"would leave {plan.transposes_after()} Transposes for {plan.transposes_before()}")
    return plan


def _permuted_const(c: np.ndarray, inv: list[int]) -> np.ndarray:
    full = c.reshape((1,) * (len(inv) - c.ndim) + c.shape)
    return np.ascontiguousarray(full.transpose(inv))


def apply_sink(g: Graph, plan: _Plan) -> None:
    p, inv = plan.p, _inverse(plan.p)
    cur, new = plan.t.output, plan.t.input(0)
    for node in plan.chain:
        for i, v in enumerate(node.inputs):
            if v is None:
                continue
            if v is cur:
                node.set_input(i, new)
            elif v.const is not None and not _one_element(v):
                swap_const(g, node, i, _permuted_const(np.asarray(v.const), inv))
            elif _one_element(v):
                continue
            elif _same_transpose(v, p):
                node.set_input(i, v.producer.input(0))
            else:
                tv = g.make_node("Transpose", [v], {"perm": inv}, before=node,
                                 output_types=[None if v.type is None else
                                               TensorType(v.dtype, tuple(v.shape[a] for a in inv))])
                node.set_input(i, tv.output)
        out = node.output
        if out.type is not None and out.shape is not None:
            out.type = TensorType(out.dtype, tuple(out.shape[a] for a in inv))
        cur, new = out, out
    for f in plan.ends:
        q = _perm(f, len(p))
        composed = [p[i] for i in q]
        if composed == list(range(len(p))):
            bypass(g, f, new)
        else:
            f.attrs["perm"] = composed
        if f.graph is g and f.input(0) is not new:
            f.set_input(0, new)
    remove_dead_from(g, [*plan.ends, *plan.dying])


def _sink(g: Graph, m: Match) -> bool | str:
    plan = plan_sink(m.root)
    if plan is None:
        return False
    if isinstance(plan, str):
        return plan
    apply_sink(g, plan)
    return True


# -- reshaping chains --------------------------------------------------------------------------

def _unsqueeze_unsqueeze(g: Graph, m: Match) -> bool | str:
    outer, inner, x = m.root, m.root.input(0).producer, m["x"]
    k1, a1 = const_ints(inner, 1, "axes")
    k2, a2 = const_ints(outer, 1, "axes")
    r = _rank(x)
    if not (k1 and k2) or a1 is None or a2 is None or r is None:
        return "axes or rank not known"
    mid, final = r + len(a1), r + len(a1) + len(a2)
    a1 = sorted(a + mid if a < 0 else a for a in a1)
    a2 = sorted(a + final if a < 0 else a for a in a2)
    kept = [i for i in range(final) if i not in a2]  # where the intermediate's axes land
    axes = sorted(a2 + [kept[a] for a in a1])
    if outer.input(1) is not None:
        outer.set_input(1, g.add_initializer(f"{outer.name}_axes", np.array(axes, np.int64)))
    else:
        outer.attrs["axes"] = axes
    outer.set_input(0, x)
    return True


def _reshape_after_reshaping(g: Graph, m: Match) -> bool | str:
    outer, x = m.root, m["x"]
    if len(outer.inputs) < 2:
        return "shape given as an attribute (opset < 5)"
    known, shape = const_ints(outer, 1, "shape")
    if not known or shape is None:
        return False
    if 0 in shape and not outer.attrs.get("allowzero", 0):
        return "0 in the shape copies a dim of the intermediate"
    outer.set_input(0, x)
    return True


def unit_axes_only(x: Value, perm: list[int]) -> bool:
    """Does ``Transpose(x, perm)`` move only axes of static size 1, leaving the other axes in
    their order (so that the data, read in row-major order, is unchanged: a reshape)?"""
    if x.shape is None or len(perm) != len(x.shape):
        return False
    moved = [a for a in perm if x.shape[a] != 1]
    return moved == sorted(moved)


def _reshape_of_unit_transpose(g: Graph, m: Match) -> bool | str:
    """Reshape(Transpose(x, p), s) => Reshape(x, s) when p only moves axes of size 1 (timm's
    ConvNeXt head: [B, 1, 1, C] -> [B, C, 1, 1] -> [B, C])."""
    outer, t, x = m.root, m.root.input(0).producer, m["x"]
    if len(outer.inputs) < 2 or x.shape is None:
        return False
    p = _perm(t, len(x.shape))
    if not unit_axes_only(x, p):
        return False
    known, shape = const_ints(outer, 1, "shape")
    if not known or shape is None:
        return "shape not constant"
    if not outer.attrs.get("allowzero", 0) and any(d == 0 and (i >= len(p) or p[i] != i) for i, d in enumerate(shape)):
        return "0 in the shape copies a dim the Transpose moved"
    outer.set_input(0, x)
    return True


def _static_reshape(g: Graph, m: Match) -> bool | str:
    outer, x = m.root, m["x"]
    out = outer.output
    if outer.op_type == "Reshape" == outer.input(0).producer.op_type:
        return False  # eliminate_noops's
    if out.type is None or not out.type.is_static or g.root.opset_imports.get("", 17) < 5:
        return False
    shape = g.add_initializer(f"{outer.name}_shape", np.array(out.shape, np.int64))
    new = g.make_node("Reshape", [x, shape], before=outer, output_types=[out.type])
    return bypass(g, outer, new.output)


RULES = [
    Rule("transpose_through_elementwise_to_cancel", P("Transpose", X), _sink),
    Rule("unsqueeze_unsqueeze_to_unsqueeze", P("Unsqueeze", P("Unsqueeze", X)), _unsqueeze_unsqueeze),
    Rule("reshape_after_reshaping_to_reshape", P("Reshape", P(RESHAPING[:3], X)), _reshape_after_reshaping,
         allow_shared=True),
    Rule("reshaping_chain_to_static_reshape", P(RESHAPING, P(RESHAPING, X)), _static_reshape),
    Rule("reshape_of_unit_transpose_to_reshape", P("Reshape", P("Transpose", X)), _reshape_of_unit_transpose,
         allow_shared=True),
]


@register_pass("cancel_transposes", opt_level=2, kind="graph", order=26)
def cancel_transposes(graph: Graph, ctx: PassContext) -> PassResult:
    """Transpose(f(Transpose(x, p)), p^-1) => f(x) for elementwise f; merges Unsqueeze/Reshape chains."""
    return rules_result(graph, RULES)


__all__ = ["RULES", "apply_sink", "cancel_transposes", "plan_sink", "unit_axes_only"]
