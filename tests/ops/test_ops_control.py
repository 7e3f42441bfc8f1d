"""If, Loop and Scan: ONNX models made with onnx.helper, imported, run on the reference and
compared with onnx's reference evaluator (subgraphs need the importer, not the builder)."""
import numpy as np
import pytest
from onnx import TensorProto, helper
from op_oracle import check_model, rand

from graphopt.errors import GraphoptError, UnsupportedOpError

F, B, I = TensorProto.FLOAT, TensorProto.BOOL, TensorProto.INT64


def vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def model(nodes, inputs, outputs, inits=(), opset=17):
    from onnx import numpy_helper

    g = helper.make_graph(nodes, "g", inputs, outputs,
                          initializer=[numpy_helper.from_array(a, n) for n, a in dict(inits).items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


# ---------------------------------------------------------------------------
# If


def if_model():
    # (y, z) = cond ? (x * w, sum(x)) : (-x, max(x)); both branches read outer values
    then_g = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["t"]),
                                helper.make_node("ReduceSum", ["x"], ["ts"], keepdims=0)],
                               "then", [], [vi("t", [3]), vi("ts", [])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"]),
                                helper.make_node("ReduceMax", ["x"], ["es"], keepdims=0)],
                               "else", [], [vi("e", [3]), vi("es", [])])
    node = helper.make_node("If", ["c"], ["y", "z"], then_branch=then_g, else_branch=else_g)
    return model([node], [vi("x", [3]), vi("c", [], B)], [vi("y", [3]), vi("z", [])],
                 {"w": np.array([1, 2, 3], np.float32)})


@pytest.mark.parametrize("cond", [True, False])
def test_if(cond):
    g, _ = check_model(if_model(), {"x": rand(3), "c": np.array(cond)})
    node = g.nodes[0]
    assert [v.type.shape for v in node.outputs] == [(3,), ()]


# ---------------------------------------------------------------------------
# Loop


def loop_model(m_input: bool, cond_input: bool, n_scan: int = 1):
    """acc += x * step each iteration; body cond is i < 3 (when the loop has a cond); scan out acc."""
    nodes = [helper.make_node("Mul", ["x", "step"], ["inc"]),
             helper.make_node("Add", ["acc", "inc"], ["acc_out"]),
             helper.make_node("Less", ["i", "three"], ["c_out"])]
    outs = [vi("c_out", [], B), vi("acc_out", [2])]
    for k in range(n_scan):
        nodes.append(helper.make_node("Mul", ["acc_out", "i_f"], [f"scan{k}"]))
        outs.append(vi(f"scan{k}", [2]))
    nodes.insert(0, helper.make_node("Cast", ["i"], ["i_f"], to=F))
    body = helper.make_graph(nodes, "body", [vi("i", [], I), vi("c_in", [], B), vi("acc", [2])], outs,
                             initializer=[helper.make_tensor("three", I, [], [3])])
    node = helper.make_node("Loop", ["M" if m_input else "", "cond" if cond_input else "", "acc0"],
                            ["acc_final"] + [f"scans{k}" for k in range(n_scan)], body=body)
    inputs = [vi("x", [2]), vi("acc0", [2])]
    if m_input:
        inputs.append(vi("M", [], I))
    if cond_input:
        inputs.append(vi("cond", [], B))
    return model([node], inputs, [vi("acc_final", [2])] + [vi(f"scans{k}", [None, 2]) for k in range(n_scan)],
                 {"step": np.array(0.5, np.float32)})


@pytest.mark.parametrize("m,cond", [(2, True), (10, True), (None, True), (5, False)])
def test_loop(m, cond):
    feeds = {"x": rand(2), "acc0": rand(2, seed=1), "cond": np.array(cond)}
    if m is not None:
        feeds["M"] = np.array(m, np.int64)
    # the reference cannot stack zero iterations
    g, got = check_model(loop_model(m is not None, True), feeds, oracle="ort" if not cond else "ref")
    expect_iters = 0 if not cond else min(m or 99, 4)  # the body's cond turns false after i == 3
    assert got[1].shape == (expect_iters, 2)
    assert len(g.nodes[0].outputs[1].type.shape) == 2 and g.nodes[0].outputs[1].type.shape[1] == 2


def test_loop_without_cond_input_ignores_the_body_cond():
    # ONNX: with a trip count and no cond input the body's cond output is ignored (a for loop);
    # ORT stops on it anyway and the reference stops at once, so the numbers are checked by hand
    from graphopt.onnx_io import from_onnx_model
    from graphopt.plugins.cpu import run_reference

    x, acc0 = rand(2), rand(2, seed=1)
    g = from_onnx_model(loop_model(True, False))
    acc, scans = run_reference(g, {"x": x, "acc0": acc0, "M": np.array(6, np.int64)})
    accs = acc0 + np.arange(1, 7)[:, None] * (x * np.float32(0.5))
    np.testing.assert_allclose(acc, accs[-1], rtol=1e-6)
    np.testing.assert_allclose(scans, accs * np.arange(6, dtype=np.float32)[:, None], rtol=1e-6)


def test_loop_with_zero_iterations_gives_empty_scan_outputs():
    g, got = check_model(loop_model(True, False, n_scan=2), {"x": rand(2), "acc0": rand(2, seed=1),
                                                             "M": np.array(0, np.int64)}, oracle="ort")
    assert got[1].shape == (0, 2) and got[2].dtype == np.float32


def test_loop_without_bound_is_refused():
    from graphopt.onnx_io import from_onnx_model
    from graphopt.plugins.cpu import run_reference

    g = from_onnx_model(loop_model(False, False))
    with pytest.raises(UnsupportedOpError, match="never end"):
        run_reference(g, {"x": rand(2), "acc0": rand(2)})


# ---------------------------------------------------------------------------
# Scan


def scan_model(in_axes=None, in_dirs=None, out_axes=None, out_dirs=None, x_shape=(4, 3)):
    """state += x_t; out_t = state * 2; also a second scan input y_t read the same way."""
    body = helper.make_graph(
        [helper.make_node("Add", ["s", "xt"], ["s_out"]),
         helper.make_node("Mul", ["s_out", "two"], ["o1"]),
         helper.make_node("Sub", ["yt", "s_out"], ["o2"])],
        "body", [vi("s", [3]), vi("xt", [3]), vi("yt", [3])], [vi("s_out", [3]), vi("o1", [3]), vi("o2", [3])],
        initializer=[helper.make_tensor("two", F, [], [2.0])])
    attrs = {"num_scan_inputs": 2}
    for k, v in (("scan_input_axes", in_axes), ("scan_input_directions", in_dirs),
                 ("scan_output_axes", out_axes), ("scan_output_directions", out_dirs)):
        if v is not None:
            attrs[k] = v
    node = helper.make_node("Scan", ["s0", "x", "y"], ["s_final", "out1", "out2"], body=body, **attrs)
    return model([node], [vi("s0", [3]), vi("x", list(x_shape)), vi("y", list(x_shape))],
                 [vi("s_final", [3]), vi("out1", None), vi("out2", None)])


@pytest.mark.parametrize("kw,x_shape", [
    ({}, (4, 3)),
    ({"in_dirs": [1, 0]}, (4, 3)),
    ({"in_axes": [1, -1]}, (3, 5)),
    ({"out_axes": [1, -1]}, (4, 3)),
    ({"out_dirs": [0, 1], "in_dirs": [0, 1]}, (4, 3)),
])
def test_scan(kw, x_shape):
    # the reference knows only the default axes and directions
    g, got = check_model(scan_model(x_shape=x_shape, **kw),
                         {"s0": rand(3), "x": rand(*x_shape, seed=1), "y": rand(*x_shape, seed=2)},
                         oracle="ort" if kw else "ref")
    for v, a in zip(g.nodes[0].outputs, got):
        assert v.type.shape is None or len(v.type.shape) == a.ndim


def test_scan_opset8_batches_with_sequence_lens():
    # opset 8: batch axis 0 everywhere, per-entry lengths; shorter scan outputs are zero-padded (as ORT)
    body = helper.make_graph([helper.make_node("Add", ["s_in", "x"], ["s_out"]),
                              helper.make_node("Identity", ["s_out"], ["y"])],
                             "body", [vi("s_in", [2]), vi("x", [2])], [vi("s_out", [2]), vi("y", [2])])
    node = helper.make_node("Scan", ["lens", "init", "xs"], ["final", "ys"], body=body, num_scan_inputs=1,
                            directions=[1])
    m = model([node], [vi("lens", [3], I), vi("init", [3, 2]), vi("xs", [3, 4, 2])],
              [vi("final", [3, 2]), vi("ys", [3, 4, 2])], opset=8)
    feeds = {"lens": np.array([4, 2, 3], np.int64), "init": rand(3, 2), "xs": rand(3, 4, 2)}
    check_model(m, feeds, oracle="ort")


def test_body_failure_names_the_node_inside():
    body = helper.make_graph([helper.make_node("Reshape", ["acc", "bad"], ["r"], name="bad_reshape"),
                              helper.make_node("Identity", ["c_in"], ["c_out"])],
                             "body", [vi("i", [], I), vi("c_in", [], B), vi("acc", [2])],
                             [vi("c_out", [], B), vi("r", [2])],
                             initializer=[helper.make_tensor("bad", I, [1], [3])])
    m = model([helper.make_node("Loop", ["M", "", "a0"], ["res"], body=body)], [vi("a0", [2]), vi("M", [], I)],
              [vi("res", [2])])
    from graphopt.onnx_io import from_onnx_model
    from graphopt.plugins.cpu import run_reference

    with pytest.raises(GraphoptError, match="bad_reshape"):
        run_reference(from_onnx_model(m), {"a0": rand(2), "M": np.array(2, np.int64)})
