"""eliminate_dead_code: what reaches no output goes (subgraph reads count); inputs stay."""
import numpy as np

from graphopt import GraphBuilder
from graphopt.ir import Graph, TensorType
from graphopt.testing import assert_same_outputs, run_passes


def ops(g):
    return [n.op_type for n in g]


def test_dead_branch_and_unused_initializer_go():
    b = GraphBuilder()
    x = b.input("x", ("n", 4))
    unused = b.input("unused", (2,))
    w = b.const(np.full(4, 2, np.float32), "w")
    dead = b.op("Mul", b.op("Exp", x), w)       # Exp -> Mul read by nobody
    b.op("Neg", dead)
    b.const(np.zeros(3, np.float32), "orphan")
    b.output(b.op("Relu", x), "y")
    g0 = b.graph.clone()
    rep = run_passes(b.graph, ["eliminate_dead_code"], fixed_point=False)
    rec = rep.records[0]
    assert rec.modified and rec.stats == {"nodes_removed": 3, "initializers_removed": 2}
    assert ops(b.graph) == ["Relu"] and not b.graph.initializers
    assert [v.name for v in b.graph.inputs] == ["x", "unused"]  # graph inputs are never removed
    assert unused.num_uses == 0 and x.users == [b.graph.nodes[0]]
    assert_same_outputs(g0, b.graph)


def test_nothing_dead_is_not_modified():
    b = GraphBuilder()
    x = b.input("x", (3,))
    a = b.op("Exp", x)
    b.output(a, "a")
    b.output(b.op("Add", a, np.float32(1)), "y")  # an output read by another node stays too
    rep = run_passes(b.graph, ["eliminate_dead_code"], fixed_point=False)
    assert not rep.records[0].modified and ops(b.graph) == ["Exp", "Add"]
    assert len(b.graph.initializers) == 1


def _if_graph(if_is_output=True):
    """y = If(c, then: Neg(p) [+ dead Sigmoid(q)], else: Relu(p)); p live, q read only by the dead Sigmoid.
    Without ``if_is_output`` the output is Abs(x) and the If is dead."""
    b = GraphBuilder("outer")
    x = b.input("x", (2,))
    cond = b.input("c", (), "bool")
    p = b.op("Exp", x)
    q = b.op("Tanh", x)
    then = Graph("then", parent=b.graph)
    then.make_node("Sigmoid", [q])                           # dead inside the branch
    then.add_output(then.make_node("Neg", [p]).output)
    els = Graph("else", parent=b.graph)
    els.add_output(els.make_node("Relu", [p]).output)
    node = b.graph.make_node("If", [cond], {"then_branch": then, "else_branch": els},
                             output_types=[TensorType("float32", (2,))])
    b.output(node.output if if_is_output else b.op("Abs", x), "y")
    return b.graph, q


def test_subgraph_reads_keep_outer_nodes_and_dead_reads_do_not():
    g, q = _if_graph()
    g0 = g.clone()
    rep = run_passes(g, ["eliminate_dead_code"], fixed_point=False)
    assert rep.records[0].stats["nodes_removed"] == 2  # Sigmoid in the branch, then Tanh outside
    assert ops(g) == ["Exp", "If"]
    then = g.nodes[1].attrs["then_branch"]
    assert ops(then) == ["Neg"] and q.num_uses == 0
    for c in (True, False):
        assert_same_outputs(g0, g, {"x": np.array([1, -2], np.float32), "c": np.array(c)})


def test_dead_node_with_subgraph_forgets_its_reads():
    g, q = _if_graph(if_is_output=False)
    g0 = g.clone()
    run_passes(g, ["eliminate_dead_code"], fixed_point=False)  # verify=True: no stale use is left
    x = g.inputs[0]
    assert ops(g) == ["Abs"] and x.users == g.nodes and q.num_uses == 0
    assert_same_outputs(g0, g, {"x": np.array([1, -2], np.float32), "c": np.array(True)})
