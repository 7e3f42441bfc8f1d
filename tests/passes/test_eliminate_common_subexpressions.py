"""eliminate_common_subexpressions: equal nodes and equal initializers merge; random ops never."""
import numpy as np

from graphopt import GraphBuilder
from graphopt.ir import TensorType
from graphopt.testing import assert_same_outputs, run_passes


def ops(g):
    return [n.op_type for n in g]


def cse(g):
    return run_passes(g, ["eliminate_common_subexpressions"], fixed_point=False).records[0]


def test_duplicates_collapse_in_one_sweep_commutative_inputs_sorted():
    b = GraphBuilder()
    x = b.input("x", ("n", 4))
    y = b.input("y", ("n", 4))
    a1 = b.op("Exp", b.op("Add", x, y))
    a2 = b.op("Exp", b.op("Add", y, x))             # same after sorting Add's inputs
    s1 = b.op("Sub", x, y)
    s2 = b.op("Sub", y, x)                           # not commutative: stays
    c1 = b.op("LeakyRelu", x, alpha=0.01)
    c2 = b.op("LeakyRelu", x)                        # alpha=0.01 is the default: same node
    w1 = b.const(np.arange(4, dtype=np.float32), "w1")
    w2 = b.const(np.arange(4, dtype=np.float32), "w2")
    w3 = b.const(np.arange(4, dtype=np.int64), "w3")  # same values, other dtype: stays
    m1, m2 = b.op("Mul", x, w1), b.op("Mul", x, w2)
    out = b.op("Sum", a1, a2, s1, s2, c1, c2, m1, m2)
    b.output(out, "out")
    b.output(b.op("Cast", w3, to=1), "w3f")
    g0 = b.graph.clone()
    rec = cse(b.graph)
    assert rec.stats == {"nodes_merged": 4, "initializers_merged": 1}
    assert ops(b.graph) == ["Add", "Exp", "Sub", "Sub", "LeakyRelu", "Mul", "Sum", "Cast"]
    assert sorted(b.graph.initializers) == ["w1", "w3"]
    assert_same_outputs(g0, b.graph)


def test_graph_output_names_survive_a_merge():
    b = GraphBuilder()
    x = b.input("x", (3,))
    r1 = b.op("Relu", x)
    b.output(b.op("Neg", r1), "a")
    b.output(b.op("Relu", x), "r")                  # the duplicate is an output: the kept one takes its name
    g0 = b.graph.clone()
    rec = cse(b.graph)
    assert rec.modified and ops(b.graph) == ["Relu", "Neg"]
    assert [v.name for v in b.graph.outputs] == ["a", "r"] and b.graph.outputs[1] is r1
    assert_same_outputs(g0, b.graph)


def test_must_not_merge_random_ops_different_attrs_or_two_outputs():
    b = GraphBuilder()
    x = b.input("x", (2, 3))
    t = TensorType("float32", (2, 3))
    r1 = b.graph.make_node("RandomNormalLike", [x], output_types=[t]).output
    r2 = b.graph.make_node("RandomNormalLike", [x], output_types=[t]).output
    b.output(r1, "r1")
    b.output(r2, "r2")
    b.output(b.op("Transpose", x, perm=[1, 0]), "t1")
    b.output(b.op("Neg", b.op("Transpose", x, perm=[0, 1])), "t2")
    b.output(b.op("Relu", x), "o1")
    b.output(b.op("Relu", x), "o2")                   # both outputs: the names cannot be shared
    rec = cse(b.graph)
    assert not rec.modified
    assert ops(b.graph).count("RandomNormalLike") == 2 and ops(b.graph).count("Relu") == 2
    (rule, why), = rec.refused
    assert "would become graph output" in why


def test_empty_initializers_merge_too():
    # found by the fuzzer: hashing an array with a 0 in its shape raised (memoryview cannot cast it)
    b = GraphBuilder()
    x = b.input("x", (0, 3))
    e1 = b.const(np.zeros((0, 3), np.float32), "e1")
    e2 = b.const(np.zeros((0, 3), np.float32), "e2")
    b.output(b.op("Add", b.op("Add", x, e1), e2), "y")
    g0 = b.graph.clone()
    rec = cse(b.graph)
    assert rec.stats == {"initializers_merged": 1} and sorted(b.graph.initializers) == ["e1"]
    assert_same_outputs(g0, b.graph, feeds={"x": np.zeros((0, 3), np.float32)})
