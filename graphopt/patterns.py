"""Declarative patterns and rewrite rules.

A pattern is a tree of ``P(op_type, *inputs, **attrs)`` over variables
(``Var("x")``, or the shorthand module constants ``X, W, B``), constants
(``Const("c")``) and ``Any``. A ``Rule`` pairs a pattern with a rewrite and an
optional ``check`` that returns a *reason* when the rule must not fire; the
reasons are counted into the pass report.

>>> rule = Rule("relu_relu_to_relu", P("Relu", P("Relu", X)),
...             rewrite=lambda g, m: m.replace_with(m["x"]) or True)

Intermediate nodes of a match (all but the root) are consumed by the rewrite,
so a match whose intermediate output has users outside the pattern is refused
with the reason "<op> has N users", unless the rule says
``allow_shared=True``.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .ir import Graph, Node, Value


class Var:
    """Matches any value (or only a constant with ``const=True``) and binds it by name."""

    def __init__(self, name: str, const: bool = False, pred: Callable[[Value], bool] | None = None):
        self.name = name
        self.const = const
        self.pred = pred

    def __repr__(self) -> str:
        return f"Var({self.name})"


def Const(name: str) -> Var:  # noqa: N802 - reads like a pattern constructor
    return Var(name, const=True)


class _AnyValue:
    def __repr__(self) -> str:
        return "Any"


Any_ = _AnyValue()
X, Y, W, B = Var("x"), Var("y"), Var("w"), Var("b")


class P:
    """An op pattern. ``op_type`` may be a string or a tuple of alternatives.

    ``attrs`` values are either literals to compare with or callables
    ``attr_value -> bool``. ``commutative=True`` also tries the two inputs swapped.
    ``name`` binds the matched node in ``match.nodes``.
    """

    def __init__(self, op_type: str | tuple[str, ...], *inputs, name: str | None = None,
                 commutative: bool = False, domain: str = "", output: int = 0, **attrs: Any):
        self.op_types = (op_type,) if isinstance(op_type, str) else tuple(op_type)
        self.inputs = inputs
        self.name = name
        self.commutative = commutative
        self.domain = domain
        self.output = output
        self.attrs = attrs

    def __repr__(self) -> str:
        return f"P({'|'.join(self.op_types)}, {', '.join(map(repr, self.inputs))})"


@dataclass
class Match:
    """The result of a successful match: bound values and nodes."""

    root: Node
    values: dict[str, Value] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    matched: list[Node] = field(default_factory=list)  # root first
    graph: Graph | None = None

    def __getitem__(self, name: str) -> Value:
        return self.values[name]

    def node(self, name: str) -> Node:
        return self.nodes[name]

    def const(self, name: str) -> np.ndarray:
        return self.values[name].const

    def replace_with(self, value: Value) -> None:
        """Make the root's output read ``value`` instead; dead nodes go in DCE."""
        self.root.output.replace_all_uses_with(value)


def _match(pat, value: Value | None, m: Match) -> bool:
    if pat is Any_:
        return True
    if isinstance(pat, Var):
        if value is None:
            return False
        if pat.const and value.const is None:
            return False
        if pat.pred is not None and not pat.pred(value):
            return False
        bound = m.values.get(pat.name)
        if bound is not None:
            return bound is value
        m.values[pat.name] = value
        return True
    if isinstance(pat, P):
        if value is None or value.producer is None:
            return False
        node = value.producer
        if node.op_type not in pat.op_types or node.domain != pat.domain or value.index != pat.output:
            return False
        for k, want in pat.attrs.items():
            have = node.attrs.get(k)
            if callable(want):
                if not want(have):
                    return False
            elif have != want:
                return False
        orders = [list(pat.inputs)]
        if pat.commutative and len(pat.inputs) == 2:
            orders.append([pat.inputs[1], pat.inputs[0]])
        for order in orders:
            if len(order) > len(node.inputs):
                continue
            saved = (dict(m.values), dict(m.nodes), list(m.matched))
            m.matched.append(node)
            if pat.name:
                m.nodes[pat.name] = node
            if all(_match(p, node.inputs[i], m) for i, p in enumerate(order)):
                return True
            m.values, m.nodes, m.matched = saved
        return False
    raise TypeError(f"bad pattern element {pat!r}")


def match_node(pattern: P, node: Node, graph: Graph | None = None) -> Match | None:
    """Match ``pattern`` rooted at ``node`` (on its output ``pattern.output``)."""
    if node.op_type not in pattern.op_types or pattern.output >= len(node.outputs):
        return None
    m = Match(root=node, graph=graph if graph is not None else node.graph)
    if _match(pattern, node.outputs[pattern.output], m):
        return m
    return None


@dataclass
class Rule:
    """``name``: ``<source>_to_<target>``. ``rewrite(graph, match)`` changes the
    graph and returns True, or returns a string: the reason it declined."""

    name: str
    pattern: P
    rewrite: Callable[[Graph, Match], bool | str | None]
    check: Callable[[Graph, Match], str | None] | None = None
    allow_shared: bool = False
    doc: str = ""


@dataclass
class RuleStats:
    applied: Counter = field(default_factory=Counter)
    refused: Counter = field(default_factory=Counter)  # (rule, reason) -> count

    def merge(self, other: "RuleStats") -> None:
        self.applied.update(other.applied)
        self.refused.update(other.refused)


def shared_intermediate(m: Match) -> str | None:
    """A reason if an intermediate node's outputs are read outside the match."""
    inside = set(m.matched)
    for n in m.matched[1:]:
        for v in n.outputs:
            outside = [u for u in v.users if u not in inside]
            if outside or v.is_graph_output:
                users = v.num_uses + (1 if v.is_graph_output else 0)
                return f"{n.op_type} {n.name!r} has {users} users"
    return None


class RewriteLimit:
    """While active, rules apply at most ``n`` rewrites in all (then every rule stops), and each
    rewrite is recorded as ``(rule name, matched node name)``: how ``graphopt bisect`` narrows a
    failing pass down to one rewrite (LLVM's ``-opt-bisect-limit``, for rules).

    >>> with RewriteLimit(1) as limit:                    # doctest: +SKIP
    ...     apply_rules(graph, rules)
    >>> limit.applied                                     # doctest: +SKIP
    [('neg_neg_to_identity', 'n2')]
    """

    active: "RewriteLimit | None" = None

    def __init__(self, n: int | None):
        self.n = n
        self.applied: list[tuple[str, str]] = []
        self._outer: RewriteLimit | None = None

    def exhausted(self) -> bool:
        return self.n is not None and len(self.applied) >= self.n

    def __enter__(self) -> "RewriteLimit":
        self._outer, RewriteLimit.active = RewriteLimit.active, self
        return self

    def __exit__(self, *exc) -> None:
        RewriteLimit.active = self._outer


def apply_rules(graph: Graph, rules: list[Rule], max_sweeps: int = 4) -> tuple[bool, RuleStats]:
    """Sweep the graph applying ``rules`` until none fires (bounded sweeps).

    One sweep visits each node once; nodes created by a rewrite are visited in
    the next sweep. Returns ``(modified, stats)``.
    """
    by_op: dict[str, list[Rule]] = {}
    for r in rules:
        for op in r.pattern.op_types:
            by_op.setdefault(op, []).append(r)
    stats = RuleStats()
    modified = False
    for _ in range(max_sweeps):
        fired = False
        refused: Counter = Counter()
        for node in graph.nodes:
            if node.graph is not graph:  # removed by an earlier rewrite in this sweep
                continue
            for rule in by_op.get(node.op_type, ()):
                m = match_node(rule.pattern, node, graph)
                if m is None:
                    continue
                reason = None if rule.allow_shared else shared_intermediate(m)
                if reason is None and rule.check is not None:
                    reason = rule.check(graph, m)
                limit = RewriteLimit.active
                if reason is None and limit is not None and limit.exhausted():
                    return modified, stats
                if reason is None:
                    res = rule.rewrite(graph, m)
                    if isinstance(res, str):
                        reason = res
                    elif res is False:
                        continue
                if reason is not None:
                    refused[(rule.name, reason)] += 1
                    continue
                stats.applied[rule.name] += 1
                if limit is not None:
                    limit.applied.append((rule.name, node.name))
                remove_dead(graph, m.matched)
                fired = modified = True
                break
        # a refusal is reported once, as seen by the last sweep
        stats.refused = refused
        if not fired:
            break
    return modified, stats


def remove_dead(graph: Graph, nodes: list[Node]) -> int:
    """Remove those of ``nodes`` (in order) whose outputs nobody reads any more."""
    removed = 0
    for n in nodes:
        if n.graph is graph and not any(v.num_uses or v.is_graph_output for v in n.outputs):
            graph.remove(n)
            removed += 1
    return removed
