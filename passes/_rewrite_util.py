"""Helpers the algebra and fusion passes share: constants read as scalars,
broadcast checks, rules applied into subgraphs, swapping a node's constant
input, and raising the model's opset when a rewrite writes a newer op.

>>> OpsetGate.blocker_for({"": 13}, 17, target=None)
'opset 13 < 17'
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Sequence

import numpy as np

from graphopt.ir import Graph, Node, Value
from graphopt.passmanager import PassContext, PassResult
from graphopt.patterns import Rule, RuleStats, apply_rules


# -- constants ----------------------------------------------------------------------

def scalar_of(v: Value | None) -> float | None:
    """The one value every element of constant ``v`` holds, or None (not a
    constant, empty, not numeric, or not all equal)."""
    if v is None or v.const is None:
        return None
    a = np.asarray(v.const)
    if a.size == 0 or a.dtype.kind not in "biuf":
        return None
    first = a.reshape(-1)[0]
    if not np.all(a == first):
        return None
    return float(first)


def approx(value: float | None, want: float, rtol: float = 1e-4) -> bool:
    """``value`` within ``rtol`` (relative) of ``want``: how the fusions recognise
    constants an exporter wrote with float32 rounding (1.4142135, 0.7978846)."""
    return value is not None and abs(value - want) <= rtol * abs(want)


def broadcasts_into(shape: Sequence | None, target: Sequence | None) -> bool:
    """True when broadcasting a tensor of ``shape`` against one of ``target``
    leaves ``target``'s shape unchanged (no new axes, no dim grown).

    >>> broadcasts_into((1, 4), ("n", 4)), broadcasts_into((4,), (4, 1)), broadcasts_into(("n", 1), ("n", 3))
    (True, False, True)
    """
    if shape is None or target is None or len(shape) > len(target):
        return False
    for d, t in zip(reversed(tuple(shape)), reversed(tuple(target))):
        if d == 1:
            continue
        if d is None or d != t:  # a symbol only matches the same symbol
            return False
    return True


def swap_const(graph: Graph, node: Node, i: int, array: np.ndarray) -> Value:
    """Make input ``i`` of ``node`` a new initializer holding ``array`` (the old
    constant may be shared with other nodes, so it is never written in place);
    the old initializer goes when nothing reads it any more."""
    old = node.input(i)
    new = graph.add_initializer(old.name if old is not None else f"{node.name}_in{i}", array)
    if i < len(node.inputs):
        node.set_input(i, new)
    else:
        node.set_inputs(list(node.inputs) + [None] * (i - len(node.inputs)) + [new])
    if old is not None and old.const is not None and graph.initializers.get(old.name) is old \
            and not old.num_uses and not old.is_graph_output:
        graph.remove_initializer(old)
    return new


# -- applying rules ----------------------------------------------------------------------

def apply_rules_deep(graph: Graph, rules: list[Rule], stats: RuleStats) -> bool:
    """``apply_rules`` on ``graph`` and every subgraph in it; stats merge into ``stats``."""
    modified, st = apply_rules(graph, rules)
    stats.merge(st)
    for node in graph:
        for sg in node.subgraphs():
            modified |= apply_rules_deep(sg, rules, stats)
    return modified


def rules_result(graph: Graph, rules: list[Rule]) -> PassResult:
    """A rule pass's body: ``rules`` applied to ``graph`` and its subgraphs, as a ``PassResult``."""
    stats = RuleStats()
    modified = apply_rules_deep(graph, rules, stats)
    return PassResult.from_rules(modified, stats)


def walk(graph: Graph) -> Iterator[Node]:
    """Every node of ``graph`` and of its subgraphs, outer before inner."""
    for n in graph:
        yield n
        for sg in n.subgraphs():
            yield from walk(sg)


# -- raising the opset ---------------------------------------------------------------------

_REDUCE_18 = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
              "ReduceMin", "ReduceProd", "ReduceSumSquare")


def _reduce_axes_to_input(graph: Graph, n: Node) -> None:
    axes = n.attrs.pop("axes", None)
    if axes is not None:
        init = graph.add_initializer(f"{n.name}_axes", np.asarray(axes, np.int64).reshape(-1))
        n.set_inputs([n.input(0), init])


def _split_num_outputs(graph: Graph, n: Node) -> None:
    if n.input(1) is None and "num_outputs" not in n.attrs:
        n.attrs["num_outputs"] = len(n.outputs)


def _roialign_old_default(graph: Graph, n: Node) -> None:
    n.attrs["coordinate_transformation_mode"] = "output_half_pixel"  # the default changed at 16


# Default-domain ops whose meaning or form changed at a version from 14 on (the
# changes that only add types or attributes with the old behaviour as default are
# left out). Per version: op -> (applies(node), adapter(graph, node) or None).
# With an adapter the node is rewritten into the new form; without one, raising
# the opset across that version is refused.
_CHANGED_AT: dict[int, dict[str, tuple[Callable[[Node], bool], Callable | None]]] = {
    14: {"BatchNormalization": (lambda n: len(n.outputs) > 1, None)},  # extra outputs mean training now
    16: {"RoiAlign": (lambda n: "coordinate_transformation_mode" not in n.attrs, _roialign_old_default)},
    18: {**{op: (lambda n: "axes" in n.attrs, _reduce_axes_to_input) for op in _REDUCE_18},
         "Split": (lambda n: n.input(1) is None and "num_outputs" not in n.attrs, _split_num_outputs)},
    20: {"DFT": (lambda n: True, None), "GridSample": (lambda n: True, None)},
    21: {"GroupNormalization": (lambda n: True, None)},  # scale and bias per channel, no longer per group
}
_CHECKED_FROM = 13  # raising from below this is refused: Softmax, Split, Squeeze... changed at 13


def default_opset(graph: Graph) -> int:
    ops = graph.root.opset_imports
    return int(ops.get("", ops.get("ai.onnx", 17)))


def _changed(n: Node, have: int, need: int):
    if n.domain not in ("", "ai.onnx"):
        return
    for version, table in _CHANGED_AT.items():
        entry = table.get(n.op_type)
        if have < version <= need and entry is not None and entry[0](n):
            yield version, entry[1]


class OpsetGate:
    """May a rewrite write an op that exists from opset ``need`` on?

    Yes when the model's default-domain opset is already ``need`` or more, or when
    ``ctx.target_opset >= need`` and raising the model to ``need`` changes no
    node it already has (the nodes of ``_CHANGED_AT`` with an adapter are moved to
    their new form when the opset is raised). ``reason()`` says why not (cached
    for the pass run); ``ensure()`` raises the opset, once, before the first rewrite.
    """

    def __init__(self, graph: Graph, ctx: PassContext, need: int):
        self.root = graph.root
        self.target = ctx.target_opset
        self.need = need
        self._reason: str | None = None
        self._checked = False

    @staticmethod
    def blocker_for(opsets: dict, need: int, target: int | None) -> str | None:
        have = int(opsets.get("", opsets.get("ai.onnx", 17)))
        if have >= need:
            return None
        if target is None or target < need:
            return f"opset {have} < {need}" + ("" if target is None else f" (target_opset {target})")
        if have < _CHECKED_FROM:
            return f"opset {have} < {need}: raising from below {_CHECKED_FROM} is not checked"
        return ""  # allowed so far: the nodes decide

    def reason(self) -> str | None:
        if default_opset(self.root) >= self.need:
            return None
        if not self._checked:
            self._checked = True
            self._reason = self.blocker_for(self.root.opset_imports, self.need, self.target)
            if self._reason == "":
                self._reason = self._node_blocker()
        return self._reason

    def _node_blocker(self) -> str | None:
        have = default_opset(self.root)
        for n in walk(self.root):
            for version, adapter in _changed(n, have, self.need):
                if adapter is None:
                    return (f"raising opset {have} to {self.need} would change {n.op_type} "
                            f"(node {n.name!r}, changed at opset {version})")
        return None

    def ensure(self) -> None:
        """Raise the model's opset to ``need`` (adapting nodes); a no-op when it is already there."""
        have = default_opset(self.root)
        if have >= self.need:
            return
        if self.reason() is not None:
            raise AssertionError(f"OpsetGate.ensure called although refused: {self.reason()}")
        for graph in _graphs(self.root):
            for n in list(graph):
                for _, adapter in _changed(n, have, self.need):
                    adapter(graph, n)
        ops = self.root.opset_imports
        ops.pop("ai.onnx", None)
        ops[""] = self.need

    def fuse(self, plan: Callable, write: Callable) -> Callable:
        """``fuse(m)`` for a matcher's sweep: ``plan(m)`` (a refusal or a plan), then this gate's
        reason, else the opset raised and ``write(m, plan)``'s new node.

        >>> fuse = OpsetGate(graph, ctx, 23).fuse(_plan, lambda m, p: _rewrite(graph, m, p))  # doctest: +SKIP
        """
        def fuse(m):
            p = plan(m)
            why = p if isinstance(p, str) else self.reason()
            if why is not None:
                return why
            self.ensure()
            return write(m, p)

        return fuse


def gated(rules: list[Rule], gate: OpsetGate) -> list[Rule]:
    """``rules`` that write an op the model's opset may not have yet: a match the
    rule's own check accepts is refused with ``gate.reason()`` ("opset 17 < 20"),
    and the opset is raised (``gate.ensure()``) just before the first rewrite.

    >>> modified, stats = apply_rules(graph, gated(RULES, OpsetGate(graph, ctx, 20)))  # doctest: +SKIP
    """
    def wrap(rule: Rule) -> Rule:
        def check(g: Graph, m) -> str | None:
            why = rule.check(g, m) if rule.check is not None else None
            return why if why is not None else gate.reason()

        def rewrite(g: Graph, m):
            gate.ensure()
            return rule.rewrite(g, m)

        return dataclasses.replace(rule, check=check, rewrite=rewrite)

    return [wrap(r) for r in rules]


def apply_gated(graph: Graph, ctx: PassContext, rules: list[Rule], need: int) -> PassResult:
    """The body of a pass whose rules write an op of opset ``need``: ``gated`` rules
    applied to ``graph`` and its subgraphs.

    >>> result = apply_gated(graph, ctx, RULES, need=20)  # doctest: +SKIP
    """
    stats = RuleStats()
    modified = apply_rules_deep(graph, gated(rules, OpsetGate(graph, ctx, need)), stats)
    return PassResult.from_rules(modified, stats)


def _graphs(g: Graph) -> Iterator[Graph]:
    yield g
    for n in g:
        for sg in n.subgraphs():
            yield from _graphs(sg)


__all__ = ["OpsetGate", "apply_gated", "apply_rules_deep", "approx", "broadcasts_into", "default_opset", "gated", "scalar_of",
           "swap_const", "walk"]
