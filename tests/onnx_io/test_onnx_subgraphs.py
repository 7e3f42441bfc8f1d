"""If/Loop bodies import as Graphs with parent links; their outer-scope reads are the
outer Value objects; the round trip runs in onnxruntime with the same numbers."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from graphopt.errors import ModelLoadError
from graphopt.onnx_io import from_onnx_model, to_onnx_model
from graphopt.ops.registry import get_schema
from graphopt.plugins.cpu import run_reference


def if_model(make_model, vi):
    # y = cond ? relu(x) * w : -x   (both branches read x and w from the outer graph)
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["t0"]), helper.make_node("Mul", ["t0", "w"], ["t"])],
                               "then", [], [vi("t", [3])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [vi("e", [3])])
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g, name="branch")]
    return make_model(nodes, [vi("x", [3]), vi("cond", [], TensorProto.BOOL)], [vi("y", [3])],
                      {"w": np.array([1, 2, 3], np.float32)})


def loop_model(make_model, vi):
    # acc_{i+1} = acc_i + step * x   for i < n; also scans out each acc
    body = helper.make_graph(
        [helper.make_node("Mul", ["step", "x"], ["inc"]),
         helper.make_node("Add", ["acc", "inc"], ["acc_out"]),
         helper.make_node("Identity", ["c_in"], ["c_out"]),
         helper.make_node("Identity", ["acc_out"], ["scan"])],
        "body", [vi("i", [], TensorProto.INT64), vi("c_in", [], TensorProto.BOOL), vi("acc", [2])],
        [vi("c_out", [], TensorProto.BOOL), vi("acc_out", [2]), vi("scan", [2])])
    nodes = [helper.make_node("Loop", ["n", "", "acc0"], ["acc_final", "scans"], body=body, name="loop")]
    return make_model(nodes, [vi("x", [2]), vi("acc0", [2]), vi("n", [], TensorProto.INT64)],
                      [vi("acc_final", [2]), vi("scans", ["iters", 2])], {"step": np.array(0.5, np.float32)})


def test_if_branches_resolve_outer_values_and_round_trip(make_model, vi, ort_run):
    m = if_model(make_model, vi)
    g = from_onnx_model(m)
    (node,) = g.nodes
    then_g, else_g = node.attrs["then_branch"], node.attrs["else_branch"]
    assert then_g.parent is g and else_g.parent is g
    x, w = g.inputs[0], g.initializers["w"]
    assert then_g.nodes[0].inputs[0] is x and then_g.nodes[1].inputs[1] is w
    assert set(node.outer_inputs()) == {x, w}
    g.verify()
    out = to_onnx_model(g)
    onnx.checker.check_model(out, full_check=True)
    feeds = {"x": np.array([-1, 2, 3], np.float32)}
    for c in (True, False):
        feeds["cond"] = np.array(c)
        np.testing.assert_array_equal(ort_run(out, feeds)[0], ort_run(m, feeds)[0])
    if get_schema("If") is not None and get_schema("If").kernel is not None:
        feeds["cond"] = np.array(True)
        np.testing.assert_array_equal(run_reference(g, feeds)[0], ort_run(m, feeds)[0])


def test_loop_body_with_outer_scope_reference_round_trips(make_model, vi, ort_run):
    m = loop_model(make_model, vi)
    g = from_onnx_model(m)
    body = g.nodes[0].attrs["body"]
    assert body.parent is g and body.nodes[0].inputs == (g.initializers["step"], g.inputs[0])
    assert [v.name for v in body.inputs] == ["i", "c_in", "acc"]
    out = to_onnx_model(g)
    onnx.checker.check_model(out, full_check=True)
    feeds = {"x": np.array([1, 2], np.float32), "acc0": np.zeros(2, np.float32), "n": np.array(3, np.int64)}
    for a, b in zip(ort_run(out, feeds), ort_run(m, feeds)):
        np.testing.assert_array_equal(a, b)
    assert out.graph.node[0].input == ["n", "", "acc0"]


def test_inner_names_shadowing_outer_ones_still_resolve_inside(make_model, vi, ort_run):
    # the branch defines its own "x" (shadowing the graph input) and reads it
    then_g = helper.make_graph([helper.make_node("Neg", ["x"], ["x_inner"], name="outer_read"),
                                helper.make_node("Relu", ["x_inner"], ["x2"]),
                                helper.make_node("Identity", ["x2"], ["r"])], "then", [], [vi("r", [2])])
    shadow = helper.make_graph([helper.make_node("Abs", ["x"], ["t"], name="outer_x"),
                                helper.make_node("Neg", ["t"], ["y"], name="shadowing"),
                                helper.make_node("Sigmoid", ["y"], ["r2"], name="reads_inner")],
                               "else", [], [vi("r2", [2])])
    m = make_model([helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=shadow)],
                   [vi("x", [2]), vi("c", [], TensorProto.BOOL)], [vi("y", [2])])
    g = from_onnx_model(m)
    else_g = g.nodes[0].attrs["else_branch"]
    inner_y = else_g.nodes[1].output
    assert else_g.nodes[2].inputs[0] is inner_y and inner_y is not g.outputs[0]
    assert inner_y.name != g.outputs[0].name  # IR names are unique across scopes
    out = to_onnx_model(g)
    onnx.checker.check_model(out, full_check=True)
    for c in (True, False):
        feeds = {"x": np.array([-1, 2], np.float32), "c": np.array(c)}
        np.testing.assert_allclose(ort_run(out, feeds)[0], ort_run(m, feeds)[0], rtol=1e-6)


def test_nested_subgraph_reads_a_value_two_scopes_up(make_model, vi, ort_run):
    inner_then = helper.make_graph([helper.make_node("Add", ["acc", "x"], ["it"])], "it", [], [vi("it", [2])])
    inner_else = helper.make_graph([helper.make_node("Sub", ["acc", "x"], ["ie"])], "ie", [], [vi("ie", [2])])
    body = helper.make_graph(
        [helper.make_node("If", ["flag"], ["acc_out"], then_branch=inner_then, else_branch=inner_else),
         helper.make_node("Identity", ["c_in"], ["c_out"])],
        "body", [vi("i", [], TensorProto.INT64), vi("c_in", [], TensorProto.BOOL), vi("acc", [2])],
        [vi("c_out", [], TensorProto.BOOL), vi("acc_out", [2])])
    m = make_model([helper.make_node("Loop", ["n", "", "a0"], ["res"], body=body)],
                   [vi("x", [2]), vi("a0", [2]), vi("n", [], TensorProto.INT64), vi("flag", [], TensorProto.BOOL)],
                   [vi("res", [2])])
    g = from_onnx_model(m)
    inner = g.nodes[0].attrs["body"].nodes[0].attrs["then_branch"]
    assert inner.parent.parent is g and inner.nodes[0].inputs[1] is g.inputs[0]
    g.verify()
    out = to_onnx_model(g)
    onnx.checker.check_model(out, full_check=True)
    feeds = {"x": np.array([1, 2], np.float32), "a0": np.zeros(2, np.float32), "n": np.array(4, np.int64),
             "flag": np.array(False)}
    np.testing.assert_array_equal(ort_run(out, feeds)[0], [-4, -8])


def test_subgraph_reading_an_undefined_name_is_refused(make_model, vi):
    then_g = helper.make_graph([helper.make_node("Neg", ["ghost"], ["t"], name="haunted")], "then", [],
                               [vi("t", [2])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [vi("e", [2])])
    m = make_model([helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
                   [vi("x", [2]), vi("c", [], TensorProto.BOOL)], [vi("y", [2])])
    with pytest.raises(ModelLoadError, match=r"node 'haunted' \(Neg\) reads 'ghost'"):
        from_onnx_model(m)


def test_branch_reading_the_if_nodes_own_output_is_a_cycle(make_model, vi):
    then_g = helper.make_graph([helper.make_node("Neg", ["y"], ["t"])], "then", [], [vi("t", [2])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [], [vi("e", [2])])
    m = make_model([helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g, name="selfref")],
                   [vi("x", [2]), vi("c", [], TensorProto.BOOL)], [vi("y", [2])])
    with pytest.raises(ModelLoadError, match="cycle.*selfref"):
        from_onnx_model(m)
