"""The IR keeps its use-def links, order and invariants through every mutation."""
import numpy as np
import pytest

from graphopt import GraphBuilder
from graphopt.errors import VerifyError
from graphopt.ir import Graph, Node, TensorType
from graphopt.plugins.cpu import run_reference


def small():
    b = GraphBuilder("g")
    x = b.input("x", ("batch", 4))
    r = b.op("Relu", x)
    s = b.op("Sigmoid", x)
    y = b.op("Add", r, s)
    b.output(y, "y")
    return b.graph, x, r, s, y


def test_uses_and_producers_follow_mutations():
    g, x, r, s, y = small()
    assert r.producer.op_type == "Relu" and [n.op_type for n in x.users] == ["Relu", "Sigmoid"]
    add = y.producer
    neg = g.make_node("Neg", [x], before=add).output
    r.replace_all_uses_with(neg)
    assert r.num_uses == 0 and neg.users == [add]
    g.remove(r.producer)
    assert [n.op_type for n in g] == ["Sigmoid", "Neg", "Add"]
    g.verify()
    feeds = {"x": np.array([[1, -2, 3, -4]], np.float32)}
    (out,) = run_reference(g, feeds)
    xv = feeds["x"]
    np.testing.assert_allclose(out, -xv + 1 / (1 + np.exp(-xv)), rtol=1e-6)


def test_replacing_a_graph_output_moves_the_output():
    g, x, r, s, y = small()
    y.replace_all_uses_with(r)
    assert g.outputs == [r] and r.is_graph_output and not y.is_graph_output


def test_remove_refuses_live_node():
    g, x, r, s, y = small()
    with pytest.raises(VerifyError, match="still used"):
        g.remove(r.producer)


def test_verify_catches_use_before_definition_and_cycles():
    g, x, r, s, y = small()
    g.move_before(r.producer, y.producer)  # Add now reads Relu's output before it exists
    with pytest.raises(VerifyError, match="before it is defined"):
        g.verify()
    g.toposort()
    g.verify()
    # a cycle: Relu reads Add's output
    r.producer.set_input(0, y)
    with pytest.raises(VerifyError, match="cycle"):
        g.toposort()


def test_toposort_is_deterministic_and_keeps_legal_order():
    g, *_ = small()
    before = [n.name for n in g]
    g.toposort()
    assert [n.name for n in g] == before


def test_unique_names_and_symbolic_shapes():
    g, x, r, s, y = small()
    n1 = g.make_node("Relu", [x])
    assert n1.output.name != r.name and n1.name != r.producer.name
    assert y.type == TensorType("float32", ("batch", 4))


def test_clone_is_deep_and_independent():
    g, x, r, s, y = small()
    c = g.clone()
    c.verify()
    assert [n.op_type for n in c] == [n.op_type for n in g]
    cr = next(iter(c))
    c.make_node("Neg", [cr.output])
    assert len(c) == len(g) + 1
    assert all(n.graph is g for n in g)


def test_subgraph_outer_reads_are_uses_and_round_trip_clone():
    b = GraphBuilder("outer")
    x = b.input("x", (2,))
    cond = b.input("c", (), "bool")
    then = Graph("then", parent=b.graph)
    t = then.make_node("Neg", [x]).output  # reads the outer x
    then.add_output(t)
    els = Graph("else", parent=b.graph)
    e = els.make_node("Relu", [x]).output
    els.add_output(e)
    node = b.graph.make_node("If", [cond], {"then_branch": then, "else_branch": els})
    b.output(node.output, "y")
    g = b.graph
    g.verify()
    assert node.outer_inputs() == [x]
    assert {u.op_type for u in x.users} == {"Neg", "Relu"}
    c = g.clone()
    c.verify()
    cif = next(iter(c))
    assert cif.subgraphs()[0].parent is c
    assert cif.outer_inputs()[0] is c.inputs[0]


def test_printer_is_readable():
    g, *_ = small()
    text = str(g)
    assert "graph g(%x: float32[batch,4])" in text and "= Add(%relu, %sigmoid)" in text


def test_networkx_view_supports_reachability():
    import networkx as nx

    g, x, r, s, y = small()
    dg = g.to_networkx()
    assert nx.has_path(dg, r.producer, y.producer)
    assert not nx.has_path(dg, r.producer, s.producer)
