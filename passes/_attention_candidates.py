"""Attention near misses: every Softmax between two MatMuls that the attention
matchers leave unfused gets a reason in the report, naming what differed.

The matchers (``fuse_attention``, ``fuse_attention_onnx``) walk back from each
``MatMul(P, V)``; a candidate they never reach (the probabilities go through a
Dropout or a Reshape on the way to V, the scores through a Reshape or a second
bias) used to get no line at all. ``near_miss(softmax)`` finds such a Softmax
from its side -- a MatMul within a few nodes before it and one after it -- and
describes the path that kept the matcher away::

    "probabilities reach MatMul(P, V) through Reshape"
    "scores reach the Softmax through Reshape, Add (only a scale, a mask and Casts may sit there)"

``RefusalMemory`` keeps each candidate's reason across the runs of one pass
manager: a lowering pass that runs later (elementwise or row fusion) can take
the Softmax or its neighbours into a fused op, and the matcher's next run would
find nothing to refuse; the reason given before that still stands.

>>> import numpy as np
>>> from graphopt.builder import GraphBuilder
>>> b = GraphBuilder(); q, k, v = (b.input(n, (2, 4, 8, 16)) for n in "qkv")
>>> s = b.op("Reshape", b.op("MatMul", q, b.op("Transpose", k, perm=[0, 1, 3, 2])), np.array([2, 4, 8, 8]))
>>> p = b.op("Softmax", s, axis=-1)
>>> _ = b.output(b.op("MatMul", p, v), "y")
>>> near_miss(p.producer)
'scores reach the Softmax through Reshape (only a scale, a mask and Casts may sit there)'
"""
from __future__ import annotations

from graphopt.ir import Graph, Node, Value

HOPS = 4  # how far from the Softmax a MatMul may sit and still make it a candidate
MATMULS = ("MatMul", "FusedMatMul", "Einsum", "Gemm", "FusedGemm")


def _is_matmul(node: Node | None) -> bool:
    return node is not None and node.op_type in MATMULS


def _path_back(v: Value, hops: int) -> list[Node] | None:
    """The nodes from a MatMul (first) to the producer of ``v`` (last), through at most
    ``hops`` nodes that are not constants; None when no MatMul is that close."""
    p = v.producer
    if p is None or p.graph is not v.graph:
        return None
    if _is_matmul(p):
        return [p]
    if hops == 0:
        return None
    for x in p.inputs:
        if x is None or x.const is not None:
            continue
        path = _path_back(x, hops - 1)
        if path is not None:
            return [*path, p]
    return None


def _path_forward(v: Value, hops: int) -> list[Node] | None:
    """The nodes from a reader of ``v`` (first) to a MatMul that reads the chain as its
    first operand (last), through at most ``hops`` nodes; None when there is none."""
    for user in v.users:
        if _is_matmul(user) and user.input(0) is v:
            return [user]
    if hops == 0:
        return None
    for user in v.users:
        for out in user.outputs:
            path = _path_forward(out, hops - 1)
            if path is not None:
                return [user, *path]
    return None


def _names(nodes: list[Node]) -> str:
    return ", ".join(n.op_type for n in nodes)


def candidate_paths(sm: Node) -> tuple[list[Node], list[Node]] | None:
    """(MatMul ... producer of the scores, reader of the probabilities ... MatMul) around the
    Softmax ``sm``, or None when it is not a candidate (no MatMul close on both sides)."""
    before = _path_back(sm.input(0), HOPS) if sm.input(0) is not None else None
    after = _path_forward(sm.output, HOPS)
    return None if before is None or after is None else (before, after)


def fused_nearby(paths: tuple[list[Node], list[Node]] | None) -> bool:
    """Has another pass already taken nodes around the candidate into a fused op (so that
    what the matcher says now describes that pass's work, not the model)?"""
    return paths is not None and any(n.domain not in ("", "ai.onnx") for n in (*paths[0], *paths[1]))


def near_miss(sm: Node, paths: tuple[list[Node], list[Node]] | None = None) -> str | None:
    """Why the Softmax ``sm`` between two MatMuls is no attention the matchers take, from
    the paths around it; None when it is not a candidate (no MatMul close on both sides)."""
    paths = paths or candidate_paths(sm)
    if paths is None:
        return None
    before, after = paths
    if _is_matmul(before[-1]) and before[-1].op_type != "MatMul":
        return f"scores come from {before[-1].op_type}, not MatMul(Q, K^T)"
    if after[-1].op_type != "MatMul":
        return f"probabilities meet V in {after[-1].op_type}, not MatMul(P, V)"
    if len(after) > 1:
        return f"probabilities reach MatMul(P, V) through {_names(after[:-1])}"
    inner = [n for n in before[1:] if n.op_type not in ("Mul", "Div", "Add", "Where", "Cast")]
    if inner:
        return f"scores reach the Softmax through {_names(before[1:])} (only a scale, a mask and Casts may sit there)"
    return f"scores reach the Softmax through {_names(before[1:])}"


def softmaxes(graph: Graph) -> list[Node]:
    return [n for n in graph if n.op_type == "Softmax" and n.domain == ""]


class RefusalMemory:
    """The reason each attention candidate of ``graph`` was refused with, kept in
    ``ctx.options`` for the runs of one pass manager (per pass and graph), so that a
    candidate a later pass took into another fused op keeps its reason."""

    def __init__(self, options: dict, pass_name: str, graph: Graph):
        book = options.setdefault("_attention_refusals", {})
        held = book.get(pass_name)
        if held is None or held[0] is not graph:
            held = book[pass_name] = (graph, {})
        self.reasons: dict[Node, str] = held[1]

    def note(self, sm: Node, why: str, degraded: bool) -> str:
        """Record ``why`` for the Softmax ``sm`` (a reason from a graph that another fused op
        already changed -- ``degraded`` -- does not replace an earlier one); the reason to report."""
        if degraded and sm in self.reasons:
            return self.reasons[sm]
        self.reasons[sm] = why
        return why

    def fused(self, sm: Node) -> None:
        self.reasons.pop(sm, None)

    def gone(self, graph: Graph) -> list[str]:
        """Reasons of candidates that are no Softmax of ``graph`` any more (another pass took
        them into its fused op): they still stand."""
        return [why for sm, why in self.reasons.items() if sm.graph is not graph]


__all__ = ["RefusalMemory", "candidate_paths", "fused_nearby", "near_miss", "softmaxes"]
