"""Recognise rotary position embeddings written out op by op (LLaMA, Qwen2, GPT-NeoX, Mistral...).

    Add(Mul(x, cos), Mul(Concat(Neg(x[..., h:]), x[..., :h]), sin))
        => ai.graphopt::RotaryEmbedding(x, cos, sin)                         (fuse_rotary, any opset)
        => RotaryEmbedding(x, Expand(cos[..., :h]), Expand(sin[..., :h]))   (fuse_rotary_onnx, opset 23)
    Concat(<the above on q[..., :r]>, q[..., r:])  => the same with rotary_dim r on q (partial rotary)

This is transformers' ``q * cos + rotate_half(q) * sin`` on the heads [B, H, S,
D], ``cos``/``sin`` of the full rotary width ([1, 1, S, D] after the
``unsqueeze(1)``), both operand orders of every Mul and the Add. The Slices must
be the two halves of the last axis and the Neg on the second; cos and sin
must broadcast into x without growing it. GPT-NeoX rotates only the first
``rotary_pct`` of each head: the rotated slice concatenated with the rest of
the head becomes one node with ``rotary_dim``.

``fuse_rotary`` writes graphopt's own ``RotaryEmbedding`` (``graphopt/ops/fused.py``),
which takes cos and sin as the model computed them: the same arithmetic, so the
result is the same bits. ONNX's ``RotaryEmbedding`` (opset 23) takes half-width
caches [B, S, D/2] instead (onnxruntime wants their batch equal to X's), so
``fuse_rotary_onnx`` needs proof that the two halves of cos and sin are equal:
it follows them back to ``Cos``/``Sin`` of ``Concat(f, f)`` (through Unsqueeze,
Cast and scalar Mul, which keep the halves equal), slices the first half and
expands it to the batch once per model (shared by every layer). Refusals say
what differed ("cos is not Cos(Concat(f, f)): its halves may differ").

>>> import numpy as np
>>> from graphopt.builder import GraphBuilder
>>> from graphopt.testing import run_passes
>>> b = GraphBuilder(); x = b.input("x", (2, 4, 6, 8)); cos, sin = b.input("cos", (1, 1, 6, 8)), b.input("sin", (1, 1, 6, 8))
>>> lo = b.op("Slice", x, np.array([0]), np.array([4]), np.array([-1]))
>>> hi = b.op("Slice", x, np.array([4]), np.array([8]), np.array([-1]))
>>> rot = b.op("Concat", b.op("Neg", hi), lo, axis=-1)
>>> _ = b.output(b.op("Add", b.op("Mul", x, cos), b.op("Mul", rot, sin)), "y")
>>> _ = run_passes(b.graph, ["fuse_rotary", "eliminate_dead_code"])
>>> [(n.qualified_op, n.attrs) for n in b.graph]
[('ai.graphopt::RotaryEmbedding', {'rotary_dim': 0})]
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from graphopt.ir import Graph, Node, TensorType, Value
from graphopt.ops.fused import FUSED_DOMAIN
from graphopt.ops.registry import broadcast_shapes
from graphopt.passmanager import PassContext, PassResult, register_pass

from ._rewrite_util import OpsetGate, scalar_of
from ._util import remove_dead_from
from .eliminate_noops import const_ints
from .fuse_layernorm import FLOATS

RULE = "rotate_half_to_rotary_embedding"
BIG = 1 << 62  # a Slice end at or past this is "to the end"


def _op(v: Value | None, *op_types: str) -> Node | None:
    p = None if v is None else v.producer
    return p if p is not None and p.op_type in op_types and p.domain == "" and p.graph is v.graph else None


def _last_axis_slice(v: Value) -> tuple[Value, int, int] | None:
    """(x, start, end) when ``v = x[..., start:end]`` (a step-1 Slice of the last axis)."""
    s = _op(v, "Slice")
    if s is None or s.input(0).shape is None:
        return None
    x, rank = s.input(0), len(s.input(0).shape)
    ok = [const_ints(s, i, attr) for i, attr in ((1, "starts"), (2, "ends"), (3, "axes"), (4, "steps"))]
    if any(not known for known, _ in ok[:2]) or not ok[2][0] or not ok[3][0]:
        return None
    (_, starts), (_, ends), (_, axes), (_, steps) = ok
    axes = axes if axes is not None else list(range(len(starts)))
    if len(starts) != 1 or len(ends) != 1 or [a % rank for a in axes] != [rank - 1] or steps not in (None, [1]):
        return None
    n = x.shape[-1]
    if not isinstance(n, int):
        return None
    start, end = starts[0], ends[0]
    start, end = (start + n if start < 0 else start), (n if end >= BIG else end + n if end < 0 else min(end, n))
    return x, start, end


def _rotate_half(v: Value) -> Value | None:
    """x when ``v = Concat(Neg(x[..., h:]), x[..., :h], axis=-1)`` with h half of x's last axis."""
    c = _op(v, "Concat")
    if c is None or len(c.inputs) != 2 or v.shape is None or c.attrs.get("axis") not in (-1, len(v.shape) - 1):
        return None
    neg = _op(c.input(0), "Neg")
    hi = None if neg is None else _last_axis_slice(neg.input(0))
    lo = _last_axis_slice(c.input(1))
    if hi is None or lo is None or hi[0] is not lo[0]:
        return None
    x, n = lo[0], lo[0].shape[-1]
    return x if n % 2 == 0 and hi[1:] == (n // 2, n) and lo[1:] == (0, n // 2) else None


def _fits(shape, into) -> bool:
    try:
        return shape is not None and tuple(broadcast_shapes(shape, into)) == tuple(into)
    except Exception:  # noqa: BLE001 -- shapes that do not broadcast at all
        return False


def match(add: Node) -> dict | str | None:
    """The rotary embedding ending at ``add``: {x, cos, sin, nodes, out, rotary_dim}, a reason, or None."""
    if add.op_type != "Add" or add.domain != "":
        return None
    m1, m2 = _op(add.input(0), "Mul"), _op(add.input(1), "Mul")
    if m1 is None or m2 is None:
        return None
    for a, b in ((m1, m2), (m2, m1)):
        for rot_i in (0, 1):
            x = _rotate_half(b.input(rot_i))
            if x is None:
                continue
            sin = b.input(1 - rot_i)
            cos = a.input(1) if a.input(0) is x else a.input(0) if a.input(1) is x else None
            if cos is None:
                return "x * cos reads another tensor than rotate_half(x)"
            return _checked(add, x, cos, sin, [add, a, b, b.input(rot_i).producer])
    return None


def _checked(add: Node, x: Value, cos: Value, sin: Value, nodes: list[Node]) -> dict | str:
    if x.dtype not in FLOATS or x.shape is None or add.output.shape != x.shape:
        return "x's type or shape unknown, or grown by cos/sin"
    if not (_fits(cos.shape, x.shape) and _fits(sin.shape, x.shape)) or cos.dtype != x.dtype or sin.dtype != x.dtype:
        return "cos or sin does not broadcast into x, or differs in type"
    for n in nodes[1:]:
        if n.output.num_uses != 1 or n.output.is_graph_output:
            return f"{n.op_type} inside the rotation has {n.output.num_uses + int(n.output.is_graph_output)} users"
    m = {"x": x, "cos": cos, "sin": sin, "nodes": nodes, "out": add.output, "rotary_dim": 0}
    return _partial(m)


def _partial(m: dict) -> dict:
    """GPT-NeoX's partial rotary: x = q[..., :r] and the result concatenated with q[..., r:]."""
    out = m["out"]
    sl = _last_axis_slice(m["x"])
    if sl is None or sl[1] != 0 or out.num_uses != 1 or out.is_graph_output:
        return m
    q, _, r = sl
    cat = out.users[0]
    if cat.op_type != "Concat" or cat.domain != "" or len(cat.inputs) != 2 or cat.input(0) is not out \
            or cat.attrs.get("axis") not in (-1, len(q.shape) - 1):
        return m
    rest = _last_axis_slice(cat.input(1))
    if rest is None or rest[0] is not q or rest[1:] != (r, q.shape[-1]) or r == q.shape[-1]:
        return m
    return {**m, "x": q, "out": cat.output, "rotary_dim": r, "nodes": [cat, *m["nodes"]]}


# -- writing ---------------------------------------------------------------------------

def _write_fused(graph: Graph, m: dict, ctx: PassContext) -> Node | str:
    out = m["out"]
    node = graph.make_node("RotaryEmbedding", [m["x"], m["cos"], m["sin"]], {"rotary_dim": m["rotary_dim"]},
                           output_types=[out.type], domain=FUSED_DOMAIN, name="rotary", before=out.producer)
    graph.replace_value(out, node.output, take_name=True)
    return node


def equal_halves(v: Value) -> Value | np.ndarray | None:
    """The 3-D [B|1, S, D] value whose halves along the last axis are equal and whose
    unsqueeze at axis 1 ``v`` is, when ``v`` comes from ``Cos``/``Sin`` of ``Concat(f, f)``
    through Unsqueeze(1), Cast and Mul by a scalar constant (each keeps the halves equal);
    for a constant ``v`` (a static export's folded caches) the array, its halves compared."""
    if v.const is not None:
        a = np.asarray(v.const)
        h = a.shape[-1] // 2 if a.ndim else 0
        if a.ndim != 4 or a.shape[1] != 1 or not np.array_equal(a[..., :h], a[..., h:]):
            return None
        return a[:, 0]
    three = None
    while True:
        p = v.producer
        if p is None or p.domain != "":
            return None
        if p.op_type == "Unsqueeze" and three is None:
            known, axes = const_ints(p, 1, "axes")
            if not known or axes not in ([1], [-3]) or v.shape is None or len(v.shape) != 4:
                return None
            three = p.input(0)
            v = three
        elif p.op_type == "Cast" or (p.op_type == "Mul" and (scalar_of(p.input(0)) is not None
                                                            or scalar_of(p.input(1)) is not None)):
            v = p.input(1) if p.op_type == "Mul" and scalar_of(p.input(0)) is not None else p.input(0)
        elif p.op_type in ("Cos", "Sin"):
            c = _op(p.input(0), "Concat")
            ok = c is not None and len(c.inputs) == 2 and c.input(0) is c.input(1) \
                and c.attrs.get("axis") in (-1, len(c.output.shape or ()) - 1)
            return three if ok and three is not None and len(three.shape or ()) == 3 else None
        else:
            return None


class _Caches:
    """Half-width cos/sin caches expanded to the batch, one per (cache, batch source), so that
    every layer's RotaryEmbedding reads the same two values."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.made: dict[tuple, Value] = {}

    def half(self, source: Value, three: Value | np.ndarray, x: Value, before: Node) -> Value:
        """[batch, S, D/2] from ``three`` ([B|1, S, D], ``equal_halves`` of ``source``)."""
        key = (id(source), x.shape[0])
        if key in self.made:
            return self.made[key]
        g = self.graph
        b, s, d = three.shape
        h = d // 2
        batch = x.shape[0]
        if isinstance(three, np.ndarray):
            whole = isinstance(batch, int) and batch != b  # a static batch: the cache at its size
            half = g.add_initializer("rotary_cache", np.ascontiguousarray(
                np.broadcast_to(three[..., :h], (batch, s, h)) if whole else three[..., :h]))
            self.made[key] = half
            if whole:
                return half
        else:
            half = g.make_node("Slice", [three, g.add_initializer("rotary_half_start", np.array([0], np.int64)),
                                         g.add_initializer("rotary_half_end", np.array([h], np.int64)),
                                         g.add_initializer("rotary_half_axis", np.array([-1], np.int64))],
                               output_types=[TensorType(three.dtype, (b, s, h))], name="rotary_half",
                               before=before).output  # the first layer's: every later one comes after it
        if batch != b:
            if isinstance(batch, int):
                shape = g.add_initializer("rotary_batch", np.array([batch, 1, 1], np.int64))
            else:  # the batch from X itself: X's producer comes before ``before``
                dim = g.make_node("Shape", [x], {"start": 0, "end": 1}, output_types=[TensorType("int64", (1,))],
                                  name="rotary_batch_dim", before=before).output
                ones = g.add_initializer("rotary_ones", np.array([1, 1], np.int64))
                shape = g.make_node("Concat", [dim, ones], {"axis": 0}, output_types=[TensorType("int64", (3,))],
                                    name="rotary_batch", before=before).output
            half = g.make_node("Expand", [half, shape], output_types=[TensorType(three.dtype, (batch, s, h))],
                               name="rotary_expand", before=before).output
        self.made[key] = half
        return half


def _plan_onnx(m: dict) -> dict | str:
    x = m["x"]
    if len(x.shape) != 4:
        return f"rank {len(x.shape)} input: the 4-D heads [B, H, S, D] are what is matched"
    halves = [equal_halves(v) for v in (m["cos"], m["sin"])]  # a Value or an array each
    if any(h is None for h in halves):
        return "cos or sin is not Cos/Sin(Concat(f, f)) unsqueezed at axis 1: its halves may differ"
    rd = m["rotary_dim"] or x.shape[-1]
    if any(h.shape[-1] != rd or h.shape[1] != x.shape[2] or h.shape[0] not in (1, x.shape[0]) for h in halves):
        return "cos or sin is not [B|1, S, rotary_dim]"
    return {"halves": halves}


def _write_onnx(graph: Graph, m: dict, plan: dict, caches: _Caches) -> Node:
    out, x = m["out"], m["x"]
    before = out.producer
    cos, sin = (caches.half(v, h, x, before) for v, h in zip((m["cos"], m["sin"]), plan["halves"]))
    attrs = {"rotary_embedding_dim": m["rotary_dim"]} if m["rotary_dim"] else {}
    node = graph.make_node("RotaryEmbedding", [x, cos, sin], attrs, output_types=[out.type], name="rotary",
                           before=before)
    graph.replace_value(out, node.output, take_name=True)
    return node


def _sweep(graph: Graph, fuse) -> tuple[Counter, Counter]:
    stats: Counter = Counter()
    refused: Counter = Counter()
    for node in list(graph):
        if node.graph is not graph:
            continue
        m = match(node)
        if m is None:
            continue
        new = m if isinstance(m, str) else fuse(m)
        if isinstance(new, str):
            refused[(RULE, new)] += 1
            continue
        remove_dead_from(graph, list(m["nodes"]))
        stats[RULE] += 1
        stats["partial"] += int(bool(m["rotary_dim"]))
    return stats, refused


@register_pass("fuse_rotary", opt_level=2, kind="lowering", order=13)
def fuse_rotary(graph: Graph, ctx: PassContext) -> PassResult:
    """x * cos + rotate_half(x) * sin => ai.graphopt::RotaryEmbedding(x, cos, sin) (any opset)."""
    stats, refused = _sweep(graph, lambda m: _write_fused(graph, m, ctx))
    return PassResult(bool(stats), {k: v for k, v in stats.items() if v}, refused)


@register_pass("fuse_rotary_onnx", opt_level=2, kind="graph", order=53)
def fuse_rotary_onnx(graph: Graph, ctx: PassContext) -> PassResult:
    """x * cos + rotate_half(x) * sin => RotaryEmbedding(x, cos[..., :h], sin[..., :h]) (opset >= 23)."""
    caches = _Caches(graph)
    fuse = OpsetGate(graph, ctx, 23).fuse(_plan_onnx, lambda m, plan: _write_onnx(graph, m, plan, caches))
    stats, refused = _sweep(graph, fuse)
    return PassResult(bool(stats), {k: v for k, v in stats.items() if v}, refused)


__all__ = ["equal_halves", "fuse_rotary", "fuse_rotary_onnx", "match"]
