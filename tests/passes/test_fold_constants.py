"""fold_constants: constant subgraphs become initializers, names and dtypes kept, size capped."""
import numpy as np

from graphopt import GraphBuilder
from graphopt.ir import TensorType
from graphopt.testing import assert_same_outputs, run_passes


def ops(g):
    return [n.op_type for n in g]


def fold(g, **ctx):
    return run_passes(g, ["fold_constants"], fixed_point=False, **ctx).records[0]


def test_constant_chain_folds_in_one_sweep_and_keeps_dtypes():
    b = GraphBuilder()
    x = b.input("x", (2, 3))
    w = b.op("Mul", b.op("Add", np.ones((2, 3), np.float32), np.float32(2)), np.float32(0.5))  # 1.5
    idx = b.op("Cast", b.op("Constant", value=np.array([1, 0], np.int64)), to=6)             # int32
    y = b.op("Gather", b.op("Add", x, w), idx, axis=0)
    b.output(y, "y")
    g0 = b.graph.clone()
    rec = fold(b.graph)
    assert rec.modified and rec.stats == {"nodes_folded": 3, "constant_nodes": 1}
    assert ops(b.graph) == ["Add", "Gather"]
    add, gather = b.graph.nodes
    np.testing.assert_array_equal(add.input(1).const, np.full((2, 3), 1.5, np.float32))
    assert gather.input(1).const.dtype == np.int32
    assert len(b.graph.initializers) == 2  # the inputs of folded nodes went with them
    assert_same_outputs(g0, b.graph)


def test_folded_graph_output_keeps_its_name_and_static_shape_folds():
    b = GraphBuilder()
    x = b.input("x", ("n", 4, 5))
    shp = b.op("Shape", x, start=1)            # [4, 5]: the sliced part is static
    size = b.op("Size", b.op("Relu", b.input("z", (2, 3))))
    b.output(b.op("Mul", shp, np.int64(2)), "scaled")
    b.output(size, "size")
    b.output(b.op("Shape", x), "full")         # symbolic dim 0: stays
    g0 = b.graph.clone()
    rec = fold(b.graph)
    assert rec.stats == {"shapes_folded": 2, "nodes_folded": 1}
    assert [v.name for v in b.graph.outputs] == ["scaled", "size", "full"]
    scaled, size_v, full = b.graph.outputs
    np.testing.assert_array_equal(scaled.const, [8, 10])
    assert size_v.const.dtype == np.int64 and size_v.const.shape == () and int(size_v.const) == 6
    assert full.producer.op_type == "Shape"
    feeds = {"x": np.zeros((3, 4, 5), np.float32), "z": np.zeros((2, 3), np.float32)}
    assert_same_outputs(g0, b.graph, feeds)


def test_size_cap_refuses_to_blow_a_model_up():
    b = GraphBuilder()
    x = b.input("x", (1,))
    big = b.op("ConstantOfShape", np.array([1000, 1000], np.int64), value=np.array([0.5], np.float32))
    small = b.op("ConstantOfShape", np.array([4], np.int64), value=np.array([1.0], np.float32))
    b.output(b.op("Add", big, x), "y")
    b.output(b.op("Add", small, x), "z")
    rec = fold(b.graph, fold_size_limit=1000)
    assert ops(b.graph) == ["ConstantOfShape", "Add", "Add"]  # the small one folded
    ((rule, why), n), = rec.refused.items()
    assert rule == "fold_constants" and "1000000 elements exceeds fold_size_limit=1000" in why and n == 1


def test_fold_limit_in_bytes():
    """fold_limit (bytes) replaces the element cap: 4000-byte outputs fold under 4096, not under 1000."""
    def build():
        b = GraphBuilder()
        x = b.input("x", (1,))
        tiled = b.op("Tile", np.ones((10,), np.float32), np.array([100], np.int64))  # 40 bytes -> 4000 bytes
        b.output(b.op("Add", tiled, x), "y")
        return b.graph

    g = build()
    g0 = g.clone()
    rec = fold(g, options={"fold_limit": 1000})
    assert ops(g) == ["Tile", "Add"]
    assert {why for _, why in rec.refused} == {"Tile output of 4000 bytes exceeds fold_limit=1000 and its inputs"}
    g = build()
    rec = fold(g, options={"fold_limit": 4096})
    assert ops(g) == ["Add"] and not rec.refused
    assert_same_outputs(g0, g, {"x": np.array([0.25], np.float32)})


def test_fold_limit_from_optimize_and_the_cli(tmp_path):
    import graphopt
    from graphopt.cli import main

    b = GraphBuilder()
    x = b.input("x", (1,))
    b.output(b.op("Add", b.op("Tile", np.ones((10,), np.float32), np.array([100], np.int64)), x), "y")
    assert [n.op_type for n in graphopt.optimize(b.graph, fold_limit=0)] == ["Tile", "Add"]
    assert [n.op_type for n in graphopt.optimize(b.graph)] == ["Add"]  # default: 1M elements
    src = graphopt.save(b.graph, tmp_path / "m.onnx")
    assert main(["optimize", str(src), "-o", str(tmp_path / "o.onnx"), "--fold-limit", "100"]) == 0
    assert [n.op_type for n in graphopt.load(tmp_path / "o.onnx")] == ["Tile", "Add"]


def test_does_not_fire_on_inputs_random_ops_or_mismatching_types():
    b = GraphBuilder()
    x = b.input("x", (3,))
    y = b.op("Relu", x)
    r = b.graph.make_node("RandomNormal", [], {"shape": [3]}, output_types=[TensorType("float32", (3,))]).output
    b.output(y, "y")
    b.output(r, "r")
    # an Add whose IR type says int64 although its constant inputs are float32
    wrong = b.graph.make_node("Add", [b.const(np.ones(2, np.float32)), b.const(np.ones(2, np.float32))],
                              output_types=[TensorType("int64", (2,))]).output
    b.output(wrong, "wrong")
    rec = fold(b.graph)
    assert not rec.modified and ops(b.graph) == ["Relu", "RandomNormal", "Add"]
    reasons = {why for (_, why) in rec.refused}
    assert "RandomNormal is not deterministic" in reasons
    assert any("disagrees with the IR type: dtype float32, expected int64" in r for r in reasons)


def test_inside_subgraphs():
    from graphopt.ir import Graph

    b = GraphBuilder()
    x = b.input("x", (2,))
    c = b.input("c", (), "bool")
    w = b.const(np.array([1, 2], np.float32), "w")
    then = Graph("then", parent=b.graph)
    t = then.make_node("Neg", [w]).output                 # reads an outer constant: folds inside
    then.add_output(then.make_node("Add", [x, t]).output)
    els = Graph("else", parent=b.graph)
    els.add_output(els.make_node("Identity", [x]).output)
    node = b.graph.make_node("If", [c], {"then_branch": then, "else_branch": els},
                             output_types=[TensorType("float32", (2,))])
    b.output(node.output, "y")
    g0 = b.graph.clone()
    rec = fold(b.graph)
    assert rec.stats == {"nodes_folded": 1} and ops(then) == ["Add"] and len(then.initializers) == 1
    for cv in (True, False):
        assert_same_outputs(g0, b.graph, {"x": np.array([3, 4], np.float32), "c": np.array(cv)})


def test_dequantize_of_a_constant_weight_is_kept():
    """A QDQ weight stays int8: folding its DequantizeLinear would hide the int8 layer."""
    b = GraphBuilder()
    x = b.input("x", (2, 4))
    w = b.op("DequantizeLinear", np.arange(-8, 8, dtype=np.int8).reshape(4, 4), np.float32(0.1))
    b.output(b.op("MatMul", x, w), "y")
    before = b.graph.clone()
    report = run_passes(b.graph, ["fold_constants"])
    assert [n.op_type for n in b.graph] == ["DequantizeLinear", "MatMul"]
    assert any("int8 weight" in why for (_, why) in report.summary()[0]["refused"])
    assert_same_outputs(before, b.graph)
