"""Remove operations that do not change their input, as a list of rules.

    Identity(x)                              => x
    Dropout(x)            [mask unread, inference]       => x
    Cast(x: T, to=T)                         => x
    Reshape(x: [a, b], [a, b] | [0, b] | [a, -1])         => x
    Transpose(x, perm=[0, 1, ...])           => x
    Transpose(Transpose(x, p1), p2)          => Transpose(x, p1[p2])   (or x when that is the identity)
    Reshape(Reshape(x, s1), s2)              => Reshape(x, s2)         (a 0 in s2 must not need s1's result)
    Squeeze(Unsqueeze(x, a), a)              => x
    Unsqueeze(Squeeze(x, a), a)              => x
    Flatten(x: [n, m], axis=1)               => x
    Expand(x, s)        [s broadcasts to x's own shape]  => x
    Concat(x)                                => x
    Slice(x)            [every range is the whole axis]  => x
    Pad(x, pads=0)                           => x

A removed node's output that is a graph output keeps its name: the value that
replaces it is renamed, or, when it cannot be (a graph input), the node becomes
an ``Identity`` carrying the name. Subgraphs are cleaned too.
"""
from __future__ import annotations

import numpy as np

from graphopt import dtypes
from graphopt.ir import Graph, Node, Value
from graphopt.ops.shape_ops import values_of
from graphopt.passmanager import PassContext, PassResult, register_pass
from graphopt.patterns import Match, P, Rule, RuleStats, Var, X, apply_rules

from ._util import is_deterministic

SHAPE = Var("shape")
_BIG = 2 ** 31 - 1  # exporters write INT_MAX (or INT64_MAX) for "to the end"


# -- helpers -------------------------------------------------------------------

def bypass(g: Graph, node: Node, new: Value) -> bool | str:
    """Make the readers of ``node``'s first output read ``new``, keeping a graph-output name."""
    out = node.outputs[0]
    if g.replace_value(out, new):
        return True
    why = g.replace_value_blocker(out, new)
    if node.op_type == "Identity":
        return why
    ident = g.make_node("Identity", [new], before=node, output_types=[out.type])
    g.replace_value(out, ident.output)  # a fresh value can always take the name
    return True


def const_ints(node: Node, i: int, attr: str) -> tuple[bool, list[int] | None]:
    """Input ``i`` (newer opsets) or attribute ``attr`` (older) as ints: ``(known, values)``;
    absent in both forms is ``(True, None)``."""
    v = node.input(i)
    if v is not None:
        if v.const is None or np.asarray(v.const).dtype.kind not in "iu":
            return False, None
        return True, [int(x) for x in np.asarray(v.const).reshape(-1)]
    a = node.attrs.get(attr)
    return True, None if a is None else [int(x) for x in np.asarray(a).reshape(-1)]


def _norm_axes(axes: list[int], rank: int | None) -> set[int] | None:
    if rank is None and any(a < 0 for a in axes):
        return None
    out = {a + rank if a < 0 else a for a in axes}
    return out if len(out) == len(axes) else None


def _rank(v: Value | None) -> int | None:
    return None if v is None or v.shape is None else len(v.shape)


# -- checks and rewrites ---------------------------------------------------------

def _to_input(g: Graph, m: Match) -> bool | str:
    return bypass(g, m.root, m["x"])


def _check_dropout(g: Graph, m: Match) -> str | bool | None:
    if not is_deterministic(m.root):
        return "Dropout may run in training mode"
    if len(m.root.outputs) > 1 and (m.root.outputs[1].num_uses or m.root.outputs[1].is_graph_output):
        return "Dropout mask is read"
    return None


def _check_cast(g: Graph, m: Match) -> str | bool | None:
    to = m.root.attrs.get("to")
    to = dtypes.from_onnx(to) if isinstance(to, (int, np.integer)) else to
    have = m["x"].dtype
    if have is None:
        return False
    return None if have == to else False


def _check_castlike(g: Graph, m: Match) -> str | bool | None:
    have, like = m["x"].dtype, m.root.input(1).dtype
    return None if have is not None and have == like else False


def _check_reshape(g: Graph, m: Match) -> str | bool | None:
    node, x = m.root, m["x"]
    out = node.output
    if x.type is not None and x.type.is_static and out.type is not None and out.type.shape == x.shape:
        return None
    if x.shape is None:
        return False
    known, target = const_ints(node, 1, "shape")
    if not known or target is None:
        return False
    if len(target) != len(x.shape):
        return False
    allowzero = node.attrs.get("allowzero", 0)
    inferred = 0
    for i, (t, d) in enumerate(zip(target, x.shape)):
        if (t == 0 and not allowzero) or (isinstance(d, int) and t == d):
            continue
        if t == -1:
            inferred += 1  # the one dim left over: every other one is kept, so it is kept too
            continue
        return False
    return None if inferred <= 1 else False


def _perm(node: Node, rank: int | None) -> list[int] | None:
    p = node.attrs.get("perm")
    if p is None:
        return None if rank is None else list(range(rank))[::-1]
    return [int(a) for a in p]


def _check_transpose(g: Graph, m: Match) -> str | bool | None:
    p = _perm(m.root, _rank(m["x"]))
    return None if p is not None and p == list(range(len(p))) else False


def _transpose_transpose(g: Graph, m: Match) -> bool | str:
    outer, x = m.root, m["x"]
    inner = outer.input(0).producer
    p1 = _perm(inner, _rank(x))
    p2 = _perm(outer, None if p1 is None else len(p1))
    if p1 is None or p2 is None or len(p1) != len(p2):
        return "rank unknown"
    composed = [p1[i] for i in p2]
    if composed == list(range(len(composed))):
        return bypass(g, outer, x)
    outer.set_input(0, x)
    outer.attrs["perm"] = composed
    return True


def _reshape_reshape(g: Graph, m: Match) -> bool | str:
    outer, x = m.root, m["x"]
    inner = outer.input(0).producer
    if len(inner.inputs) < 2 or len(outer.inputs) < 2:
        return "shape given as an attribute (opset < 5)"
    if outer.attrs.get("allowzero", 0):  # every entry is literal: s2 alone decides
        outer.set_input(0, x)
        return True
    known, s2 = const_ints(outer, 1, "shape")
    if not known or s2 is None:
        return "last shape is not a constant"
    _, s1 = const_ints(inner, 1, "shape")
    mid = inner.output.shape
    new = list(s2)
    for i, t in enumerate(s2):
        if t != 0:
            continue
        if s1 is not None and i < len(s1) and s1[i] == 0 and not inner.attrs.get("allowzero", 0):
            continue  # both copy dim i of x
        if mid is not None and i < len(mid) and isinstance(mid[i], int):
            new[i] = mid[i]  # the intermediate dim is known: write it out
            continue
        return f"0 at position {i} copies an intermediate dim that is not known"
    outer.set_input(0, x)
    if new != s2:
        outer.set_input(1, g.add_initializer(outer.input(1).name, np.array(new, np.int64)))
    return True


def _squeeze_pair(m: Match) -> tuple[list[int] | None, list[int]] | str:
    """(Squeeze axes, Unsqueeze axes) of the matched pair, or a reason."""
    outer = m.root
    inner = outer.input(0).producer
    sq, un = (outer, inner) if outer.op_type == "Squeeze" else (inner, outer)
    known_s, sa = const_ints(sq, 1, "axes")
    known_u, ua = const_ints(un, 1, "axes")
    if not (known_u and known_s) or ua is None:
        return "axes are not constants"
    return sa, ua


def _squeeze_unsqueeze(g: Graph, m: Match) -> str | bool | None:
    axes = _squeeze_pair(m)
    if isinstance(axes, str):
        return axes
    sa, ua = axes
    mid_rank = _rank(m.root.input(0))
    if mid_rank is None and _rank(m["x"]) is not None:
        mid_rank = _rank(m["x"]) + len(ua)
    if sa is None:  # squeeze every 1: only the inserted ones if x has none
        xs = m["x"].shape
        if xs is None or not all(isinstance(d, int) and d != 1 for d in xs):
            return "Squeeze without axes on an input that may have dims of 1"
        return None
    u, s = _norm_axes(ua, mid_rank), _norm_axes(sa, mid_rank)
    return None if u is not None and u == s else False


def _unsqueeze_squeeze(g: Graph, m: Match) -> str | bool | None:
    axes = _squeeze_pair(m)
    if isinstance(axes, str):
        return axes
    sa, ua = axes
    if sa is None:
        return "Squeeze without axes"
    r = _rank(m["x"])
    s, u = _norm_axes(sa, r), _norm_axes(ua, r)
    return None if s is not None and s == u else False


def _check_flatten(g: Graph, m: Match) -> str | bool | None:
    xs = m["x"].shape
    if xs is None or len(xs) != 2:
        return False
    axis = m.root.attrs.get("axis", 1)
    axis = axis + 2 if axis < 0 else axis
    if axis == 1 or (axis == 0 and xs[0] == 1) or (axis == 2 and xs[1] == 1):
        return None
    return False


def _check_expand(g: Graph, m: Match) -> str | bool | None:
    xs = m["x"].shape
    target = values_of(m["shape"])
    if xs is None or target is None or len(target) > len(xs):
        return False
    for t, d in zip(target, xs[len(xs) - len(target):]):
        if t == 1 or (t is not None and t == d):
            continue
        return False
    return None


def _check_concat(g: Graph, m: Match) -> str | bool | None:
    return None if len(m.root.inputs) == 1 else False


def _check_slice(g: Graph, m: Match) -> str | bool | None:
    node, xs = m.root, m["x"].shape
    parts = [const_ints(node, i, name) for i, name in ((1, "starts"), (2, "ends"), (3, "axes"), (4, "steps"))]
    starts, ends, axes, steps = (v for _, v in parts)
    if not all(k for k, _ in parts) or starts is None or ends is None or xs is None:
        return False
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    for s, e, a, st in zip(starts, ends, axes, steps):
        if not -len(xs) <= a < len(xs):
            return False
        d = xs[a]
        whole_start = s == 0 or (isinstance(d, int) and s <= -d)
        whole_end = e >= _BIG or (isinstance(d, int) and e >= d)
        if st != 1 or not (whole_start and whole_end):
            return False
    return None


def _check_pad(g: Graph, m: Match) -> str | bool | None:
    node = m.root
    if node.input(1) is not None:
        known, pads = const_ints(node, 1, "pads")
    else:
        pads = node.attrs.get("pads", node.attrs.get("paddings"))
        known = pads is not None
    return None if known and pads is not None and not any(int(p) for p in pads) else False


def noop_rule(name: str, pattern: P, check, rewrite=_to_input, **kw) -> Rule:
    """A rule whose ``check`` says None (fire), False (not a no-op: no report) or a
    reason (a near miss, reported)."""
    def rw(g: Graph, m: Match) -> bool | str:
        verdict = check(g, m) if check is not None else None
        return rewrite(g, m) if verdict is None else verdict

    return Rule(name, pattern, rw, allow_shared=kw.pop("allow_shared", False), doc=kw.pop("doc", ""))


RULES = [
    noop_rule("identity_to_input", P("Identity", X), None),
    noop_rule("dropout_to_input", P("Dropout", X), _check_dropout),
    noop_rule("cast_to_same_type_to_input", P("Cast", X), _check_cast),
    noop_rule("castlike_to_same_type_to_input", P("CastLike", X), _check_castlike),
    noop_rule("reshape_to_same_shape_to_input", P("Reshape", X), _check_reshape),
    noop_rule("transpose_identity_to_input", P("Transpose", X), _check_transpose),
    noop_rule("transpose_transpose_to_transpose", P("Transpose", P("Transpose", X)), None, _transpose_transpose,
              allow_shared=True),
    noop_rule("reshape_reshape_to_reshape", P("Reshape", P("Reshape", X)), None, _reshape_reshape,
              allow_shared=True),
    noop_rule("squeeze_unsqueeze_to_input", P("Squeeze", P("Unsqueeze", X)), _squeeze_unsqueeze,
              allow_shared=True),
    noop_rule("unsqueeze_squeeze_to_input", P("Unsqueeze", P("Squeeze", X)), _unsqueeze_squeeze,
              allow_shared=True),
    noop_rule("flatten_2d_to_input", P("Flatten", X), _check_flatten),
    noop_rule("expand_to_same_shape_to_input", P("Expand", X, SHAPE), _check_expand),
    noop_rule("concat_single_to_input", P("Concat", X), _check_concat),
    noop_rule("slice_everything_to_input", P("Slice", X), _check_slice),
    noop_rule("pad_zero_to_input", P("Pad", X), _check_pad),
]


def _apply(graph: Graph, stats: RuleStats) -> bool:
    modified, st = apply_rules(graph, RULES)
    stats.merge(st)
    for node in graph:
        for sg in node.subgraphs():
            modified |= _apply(sg, stats)
    return modified


@register_pass("eliminate_noops", opt_level=1, kind="graph", order=20)
def eliminate_noops(graph: Graph, ctx: PassContext) -> PassResult:
    """Identity(x) => x; Transpose(Transpose(x)) => Transpose(x); Reshape(x, its own shape) => x; ..."""
    stats = RuleStats()
    modified = _apply(graph, stats)
    return PassResult.from_rules(modified, stats)


__all__ = ["RULES", "bypass", "const_ints", "eliminate_noops"]
