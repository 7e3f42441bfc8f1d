"""graphopt bisect: the first pass (and rewrite) that changes a model's outputs, and the sub-graph
that shows it."""
import numpy as np

from graphopt.builder import GraphBuilder
from graphopt.patterns import P, RewriteLimit, Rule, X, apply_rules
from graphopt.testing import assert_same_outputs


def _neg_chain(n):
    b = GraphBuilder()
    y = b.input("x", (3,))
    for _ in range(n):
        y = b.op("Neg", b.op("Neg", y))
    b.output(b.op("Relu", y), "y")
    return b.graph


def test_rewrite_limit_stops_rules_after_n_rewrites_and_names_each():
    rules = [Rule("neg_neg_to_x", P("Neg", P("Neg", X)), lambda g, m: m.replace_with(m["x"]) or True)]
    g = _neg_chain(3)
    before = g.clone()
    with RewriteLimit(2) as limit:
        modified, stats = apply_rules(g, rules)
    assert modified and stats.applied["neg_neg_to_x"] == 2 and len(limit.applied) == 2
    assert all(rule == "neg_neg_to_x" and node for rule, node in limit.applied)
    assert [n.op_type for n in g].count("Neg") == 2
    assert_same_outputs(before, g, feeds={"x": np.array([1.0, -2.0, 0.5], np.float32)})
    with RewriteLimit(None) as unlimited:  # no limit: every rewrite, still recorded
        apply_rules(g, rules)
    assert len(unlimited.applied) == 1 and [n.op_type for n in g] == ["Relu"]
    assert RewriteLimit.active is None
