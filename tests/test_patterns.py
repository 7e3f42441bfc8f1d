"""Patterns bind values, respect outside users, and report why they refuse."""
import numpy as np

from graphopt import GraphBuilder
from graphopt.passmanager import PassContext, PassManager, PassResult, rule_pass
from graphopt.patterns import Const, P, Rule, X, apply_rules, match_node
from graphopt.plugins.cpu import run_reference


def neg_neg(extra_user: bool):
    b = GraphBuilder()
    x = b.input("x", (3,))
    n1 = b.op("Neg", x)
    n2 = b.op("Neg", n1)
    b.output(b.op("Relu", n2), "y")
    if extra_user:
        b.output(b.op("Sigmoid", n1), "z")
    return b.graph


RULE = Rule("neg_neg_to_identity", P("Neg", P("Neg", X)), lambda g, m: m.replace_with(m["x"]) or True)


def test_rule_fires_and_keeps_numbers():
    g = neg_neg(False)
    before = g.clone()
    modified, stats = apply_rules(g, [RULE])
    assert modified and stats.applied["neg_neg_to_identity"] == 1
    assert [n.op_type for n in g] == ["Relu"]
    g.verify()
    x = {"x": np.array([1, -2, 3], np.float32)}
    np.testing.assert_array_equal(run_reference(g, x)[0], run_reference(before, x)[0])


def test_rule_refuses_when_intermediate_has_outside_user():
    g = neg_neg(True)
    modified, stats = apply_rules(g, [RULE])
    assert not modified
    ((rule, reason), count), = stats.refused.items()
    assert rule == "neg_neg_to_identity" and "has 2 users" in reason and count == 1


def test_check_reason_and_const_binding_and_commutative():
    b = GraphBuilder()
    x = b.input("x", (2,))
    y = b.op("Add", np.float32(0), x)
    b.output(y, "y")
    pat = P("Add", X, Const("c"), commutative=True)
    m = match_node(pat, y.producer)
    assert m is not None and m["x"] is x and float(m.const("c")) == 0.0
    rule = Rule("add_zero_to_x", pat, lambda g, m: m.replace_with(m["x"]) or True,
                check=lambda g, m: None if not np.any(m.const("c")) else "constant is not zero")
    modified, _ = apply_rules(b.graph, [rule])
    assert modified and b.graph.outputs[0] is x


def test_attribute_constraints():
    b = GraphBuilder()
    x = b.input("x", (2, 3))
    t = b.op("Transpose", x, perm=[1, 0])
    b.output(t)
    assert match_node(P("Transpose", X, perm=[1, 0]), t.producer)
    assert match_node(P("Transpose", X, perm=lambda p: p == [0, 1]), t.producer) is None


def test_rule_pass_reports_through_pass_manager():
    rule_pass("test_only_neg_neg", [RULE], opt_level=3)
    g = neg_neg(True)
    report = PassManager(["test_only_neg_neg"], PassContext(verify=True)).run(g)
    row = report.to_json()["passes"][0]
    assert row["pass"] == "test_only_neg_neg"
    assert row["refused"][0]["reason"].endswith("has 2 users")
    assert "refused neg_neg_to_identity" in str(report.table())
