"""fuse_elementwise: connected pointwise groups become one FusedElementwise node; cycles,
outside uses, shapes and dtypes are respected; the numbers stay the same."""
import time
from collections import Counter

import numpy as np
import pytest

from graphopt.builder import GraphBuilder
from graphopt.expr import parse_exprs
from graphopt.passmanager import default_pipeline
from graphopt.testing import assert_same_outputs, run_passes

rng = np.random.default_rng(0)


def fuse(g, **ctx):
    before = g.clone()
    report = run_passes(g, ["fuse_elementwise"], **ctx)
    return before, report.records[0]


def ops(g):
    return Counter(n.op_type for n in g)


def test_chain_with_broadcast_operands_becomes_one_node():
    b = GraphBuilder()
    x = b.input("x", ("n", 3, 4))
    s = b.input("s", (3, 1))
    y = b.op("Relu", b.op("Add", b.op("Mul", x, s), np.float32(0.5)))
    b.output(b.op("Sigmoid", y), "y")
    before, rec = fuse(b.graph)
    assert rec.modified and rec.stats == {"groups_fused": 1, "ops_fused": 4}
    (node,) = b.graph.nodes
    assert node.qualified_op == "ai.graphopt::FusedElementwise"
    assert node.attrs["expr"] == "sigmoid(relu(add(mul(in0, in1), 0.5)))"
    assert [v.name for v in node.inputs] == ["x", "s"] and node.output.name == "y"
    assert node.output.type.shape == ("n", 3, 4)
    assert not b.graph.initializers  # the inlined scalar went with the Add
    assert_same_outputs(before, b.graph, batch=3)


def test_cycle_through_a_non_fusible_node_is_refused():
    # a = Exp(x) feeds a Conv and the Add that reads the Conv: fusing Exp with the Add
    # would make the fused node both feed and read the Conv
    b = GraphBuilder()
    x = b.input("x", (1, 2, 4, 4))
    a = b.op("Exp", x)
    c = b.op("Conv", a, rng.standard_normal((2, 2, 1, 1)).astype(np.float32))
    y = b.op("Add", a, c)
    b.output(b.op("Tanh", y), "y")
    before, rec = fuse(b.graph)
    assert rec.stats == {"groups_fused": 1, "ops_fused": 2}  # Add + Tanh only
    assert rec.refused == {("fuse_elementwise", "fusing Exp into Add would create a cycle through Conv"): 1}
    assert [n.op_type for n in b.graph] == ["Exp", "Conv", "FusedElementwise"]
    b.graph.verify()
    assert_same_outputs(before, b.graph)


def test_cycle_through_an_earlier_group_is_seen_on_the_contracted_graph():
    # Original graph: no path from A to B but the edge A -> B. Once C = {c0, c1, c2} is
    # one node, A -> X -> C -> Y -> B is a path, so A and B must stay apart.
    b = GraphBuilder()
    x, z = b.input("x", (3, 3)), b.input("z", (3, 3))
    w = np.eye(3, dtype=np.float32)
    a = b.op("Neg", x, name="A")
    xm = b.op("MatMul", a, w, name="X")
    c0 = b.op("Exp", z, name="c0")
    c1 = b.op("Abs", xm, name="c1")
    c2 = b.op("Add", c0, c1, name="c2")
    y = b.op("MatMul", c0, w, name="Y")
    b.output(b.op("Add", a, y, name="B"), "out")
    b.output(c2, "c2")
    before, rec = fuse(b.graph)
    assert [n.op_type for n in b.graph] == ["Neg", "MatMul", "FusedElementwise", "MatMul", "Add"]
    assert len(b.graph.nodes[2].outputs) == 2  # c0 is read by Y
    assert rec.refused == {("fuse_elementwise", "fusing Neg into Add would create a cycle through MatMul"): 1}
    assert_same_outputs(before, b.graph)


def test_value_used_outside_becomes_an_extra_output():
    b = GraphBuilder()
    x = b.input("x", (2, 5))
    t = b.op("Tanh", b.op("Mul", x, np.float32(2.0)))
    y = b.op("Add", t, np.float32(1.0))
    m = b.op("MatMul", t, np.ones((5, 2), np.float32))   # t is read outside the group
    b.output(b.op("Sigmoid", y), "y")
    b.output(m, "m")
    b.output(t, "t")                                      # and is a graph output
    before, rec = fuse(b.graph)
    fused = [n for n in b.graph if n.op_type == "FusedElementwise"]
    assert len(fused) == 1 and len(fused[0].outputs) == 2
    assert fused[0].attrs["expr"] == "t0 = tanh(mul(in0, 2.0)); t0, sigmoid(add(t0, 1.0))"
    assert [v.name for v in b.graph.outputs] == ["y", "m", "t"]
    assert [n.op_type for n in b.graph] == ["FusedElementwise", "MatMul"]
    assert_same_outputs(before, b.graph)


def test_single_op_groups_are_left_alone_and_a_second_run_changes_nothing():
    b = GraphBuilder()
    x = b.input("x", (2, 3))
    r = b.op("Relu", x)
    c = b.op("MatMul", r, np.ones((3, 3), np.float32))
    b.output(b.op("Neg", c), "y")
    _, rec = fuse(b.graph)
    assert not rec.modified and ops(b.graph) == Counter({"Relu": 1, "MatMul": 1, "Neg": 1})

    b = GraphBuilder()
    x = b.input("x", (2, 3))
    b.output(b.op("Exp", b.op("Relu", x)), "y")
    run_passes(b.graph, ["fuse_elementwise"])
    _, rec = fuse(b.graph)
    assert not rec.modified and ops(b.graph) == Counter({"FusedElementwise": 1})


def test_fused_nodes_merge_with_their_neighbours():
    b = GraphBuilder()
    x = b.input("x", (4,))
    f = b.op("FusedElementwise", x, domain="ai.graphopt", expr="t0 = neg(in0); t0, exp(t0)", num_outputs=2)
    b.output(b.op("Add", f[0], f[1]), "y")
    before, rec = fuse(b.graph)
    (node,) = b.graph.nodes
    assert node.attrs["expr"] == "t0 = neg(in0); add(t0, exp(t0))"
    assert_same_outputs(before, b.graph)


def test_constants_are_inlined_only_when_shapes_allow():
    b = GraphBuilder()
    x = b.input("x", (3,))
    big = b.op("Add", x, np.ones((1, 1), np.float32))      # the constant raises the rank
    b.output(b.op("Relu", b.op("Mul", big, np.float32(3.0))), "y")
    before, rec = fuse(b.graph)
    (node,) = b.graph.nodes
    assert len(node.inputs) == 3 and node.output.type.shape == (1, 3)
    assert_same_outputs(before, b.graph)


def test_integer_bool_and_cast_chains_keep_dtypes():
    b = GraphBuilder()
    i = b.input("i", (2, 3), "int64")
    x = b.input("x", (2, 3))
    k = b.op("Div", b.op("Mul", i, np.int64(3)), np.int64(-2))
    cond = b.op("Not", b.op("Greater", k, np.int64(0)))
    y = b.op("Where", cond, b.op("Cast", k, to=1), x)
    b.output(b.op("Add", y, np.float32(1)), "y")
    b.output(k, "k")
    before, rec = fuse(b.graph)
    assert ops(b.graph) == Counter({"FusedElementwise": 1})
    node = b.graph.nodes[0]
    assert [v.dtype for v in node.outputs] == ["float32", "int64"] or [v.dtype for v in node.outputs] == \
        ["int64", "float32"]
    assert_same_outputs(before, b.graph)


def test_erf_gelu_and_layernorm_style_arithmetic_fuse_with_the_numbers_kept():
    b = GraphBuilder()
    x = b.input("x", (2, 8, 16))
    g = b.op("Mul", b.op("Mul", x, b.op("Add", b.op("Erf", b.op("Div", x, np.float32(1.4142135))),
                                          np.float32(1.0))), np.float32(0.5))
    d = b.op("Sub", g, b.input("mean", (2, 8, 1)))
    y = b.op("Add", b.op("Mul", b.op("Div", d, b.op("Sqrt", b.op("Add", b.input("var", (2, 8, 1)),
                                                                 np.float32(1e-5)))),
                         rng.standard_normal(16).astype(np.float32)), rng.standard_normal(16).astype(np.float32))
    b.output(y, "y")
    before, rec = fuse(b.graph)
    assert ops(b.graph) == Counter({"FusedElementwise": 1}) and rec.stats["ops_fused"] == 11
    assert_same_outputs(before, b.graph)


def test_expression_survives_onnx_export_with_keep_fused():
    pytest.importorskip("onnx")
    from graphopt.onnx_io import from_onnx_model, to_onnx_model

    b = GraphBuilder()
    x = b.input("x", (2, 3))
    t = b.op("Sigmoid", b.op("Add", x, np.float32(1)))
    b.output(b.op("Mul", x, t), "y")
    b.output(t, "t")
    before, _ = fuse(b.graph)
    back = from_onnx_model(to_onnx_model(b.graph, keep_fused=True))
    (node,) = back.nodes
    assert node.domain == "ai.graphopt" and parse_exprs(node.attrs["expr"]) == parse_exprs(
        b.graph.nodes[0].attrs["expr"])
    assert_same_outputs(before, back)


def test_runs_from_level_2_only():
    b = GraphBuilder()
    x = b.input("x", (2,))
    b.output(b.op("Exp", b.op("Neg", x)), "y")
    _, rec = fuse(b.graph, level=1)
    assert not rec.modified and ops(b.graph) == Counter({"Neg": 1, "Exp": 1})
    assert "fuse_elementwise" not in [p.name for p in default_pipeline(1, "lowering")]
    assert "fuse_elementwise" in [p.name for p in default_pipeline(2, "lowering")]


def test_many_groups_and_long_chains_stay_fast():
    # 300 blocks of MatMul -> 6 pointwise ops with a skip from the block's input: the
    # legality search stays inside each block, so the pass is linear in practice
    b = GraphBuilder()
    h = b.input("x", (2, 4))
    w = np.eye(4, dtype=np.float32)
    for _ in range(300):
        m = b.op("MatMul", h, w)
        t = b.op("Tanh", b.op("Add", m, h))
        h = b.op("Relu", b.op("Sub", b.op("Mul", t, np.float32(0.5)), b.op("Neg", h)))
    b.output(h, "y")
    before, _ = fuse(b.graph)  # warm-up of the imports happens here too
    assert ops(b.graph)["FusedElementwise"] == 300
    chain = GraphBuilder()
    y = chain.input("x", (3,))
    for k in range(2000):
        y = chain.op("Add" if k % 2 else "Mul", y, np.float32(1.0))
    chain.output(y, "y")
    t0 = time.perf_counter()
    g0, rec = fuse(chain.graph, verify=False)
    assert time.perf_counter() - t0 < 10 and len(chain.graph) == 1
    assert_same_outputs(g0, chain.graph)
    assert_same_outputs(before, b.graph)
