"""quantize_static: where QDQ goes, what the report says, onnxruntime runs the result,
and the accuracy budget sends sensitive layers back to float."""
from collections import Counter

import numpy as np
import pytest

from quant_models import batches, build_convnet
from graphopt.builder import GraphBuilder
from graphopt.plugins.cpu.backend import run_reference
from graphopt.quantize import lower_int8, quantize_static
from graphopt.quantize.qdq import plan_qdq


def ops(g):
    return Counter(n.op_type for n in g)


def reader(v, op):
    return next(n for n in v.users if n.op_type == op)


def test_qdq_structure_on_a_small_convnet(convnet, calib):
    qg, rep = quantize_static(convnet, calib, optimize=False, return_report=True)
    qg.verify()
    c = ops(qg)
    # activations: x, relu1, pool, conv2, relu2 (after the residual), flatten; weights 3 + biases 2
    assert c["QuantizeLinear"] == 6
    assert c["DequantizeLinear"] == 6 + 3 + 2
    assert [r["layer"] for r in rep.quantized] == ["conv1", "conv2", "residual", "fc"]
    assert rep.float_layers == []
    by = {n.name: n for n in qg}
    # Relu is fused: one Q after it, none between Conv and Relu
    conv1 = by["conv1"]
    assert [u.op_type for u in conv1.output.users] == ["Relu"]
    # the pool keeps its input's scale, so DQ -> MaxPool -> Q is exact
    pool = by["pool"]
    q_in = pool.input(0).producer  # DequantizeLinear
    q_out = reader(pool.output, "QuantizeLinear")
    assert q_in.op_type == "DequantizeLinear"
    assert q_in.input(1).const == q_out.input(1).const and q_in.input(2).const == q_out.input(2).const
    # the residual Add reads two dequantized tensors with their own scales
    add = by["residual"]
    s = [v.producer.input(1).const for v in add.inputs]
    assert all(v.producer.op_type == "DequantizeLinear" for v in add.inputs) and s[0] != s[1]
    # weights: int8 per output channel, symmetric; biases int32 with scale x_scale * w_scale
    w = conv1.input(1).producer
    assert w.input(0).const.dtype == np.int8 and w.attrs["axis"] == 0 and w.input(1).const.shape == (8,)
    assert not np.any(w.input(2).const)
    b = conv1.input(2).producer
    x_scale = conv1.input(0).producer.input(1).const
    assert b.input(0).const.dtype == np.int32
    np.testing.assert_array_equal(b.input(1).const, (np.float32(x_scale) * w.input(1).const).astype(np.float32))
    # the logits stay float (a graph output with no reader is not quantized)
    assert qg.outputs[0].producer.op_type == "Gemm" and qg.outputs[0].name == "y"


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
@pytest.mark.parametrize("act", ["uint8", "int8"])
def test_every_method_is_close_to_float_and_lowering_matches(convnet, calib, method, act):
    qg, rep = quantize_static(convnet, calib, method=method, activation_type=act, optimize=False,
                              return_report=True)
    feeds = batches(seed=9, n=1)[0]
    ref = run_reference(convnet, feeds)[0]
    got = run_reference(qg, feeds)[0]
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert rel < 0.1, rel
    assert all(r.sqnr_db > 20 for r in rep.layer_errors), rep.table()
    zp = [n.input(2).const for n in qg if n.op_type == "QuantizeLinear"]
    assert all(z.dtype == np.dtype(act) for z in zp)
    if act == "int8":
        assert all(z == 0 for z in zp)
    low = run_reference(lower_int8(qg), feeds)[0]
    assert np.abs(low - got).max() <= 1e-4 * np.abs(ref).max() + 1e-5


def test_exported_qdq_model_runs_in_onnxruntime(convnet, calib, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import graphopt

    qg = quantize_static(convnet, calib, optimize=False, diagnostics=False)
    path = graphopt.save(qg, tmp_path / "q.onnx")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feeds = batches(seed=5, n=1)[0]
    np.testing.assert_allclose(sess.run(None, feeds)[0], run_reference(qg, feeds)[0], rtol=1e-5, atol=1e-5)


def test_per_tensor_weights_and_graph_input_order(convnet, calib):
    qg = quantize_static(convnet, calib, per_channel=False, optimize=False, diagnostics=False)
    for n in qg:
        if n.op_type == "DequantizeLinear" and n.input(0).const is not None and n.input(0).const.dtype == np.int8:
            assert n.input(1).const.size == 1 and "axis" not in n.attrs
    assert qg.nodes[0].op_type == "QuantizeLinear" and qg.nodes[0].input(0).name == "x"


def test_exclude_keeps_a_layer_float_and_requantizes_around_it(convnet, calib):
    qg, rep = quantize_static(convnet, calib, exclude=["conv2"], optimize=False, return_report=True)
    assert {"layer": "conv2", "op": "Conv", "reason": "excluded by the caller"} in rep.float_layers
    by = {n.name: n for n in qg}
    assert by["conv2"].input(1).const is not None  # float weight kept
    # the residual now has one float input: it is not quantized either
    assert any(f["layer"] == "residual" and "not both inputs" in f["reason"] for f in rep.float_layers)


def test_must_not_quantize_a_conv_with_a_runtime_weight(calib):
    b = GraphBuilder(opset=17)
    x = b.input("x", ("N", 3, 8, 8))
    w = b.input("w", (4, 3, 3, 3))
    b.output(b.op("Conv", x, w, name="dyn_conv"), "y")
    plan = plan_qdq(b.graph)
    assert plan.layers == [] and plan.values == []
    assert plan.float_nodes == [("dyn_conv", "Conv", "weight is not a constant")]


def test_concat_shares_one_scale_across_inputs():
    rng = np.random.default_rng(0)
    b = GraphBuilder(opset=17)
    x = b.input("x", ("N", 2, 4, 4))
    a = b.op("Conv", x, rng.standard_normal((3, 2, 1, 1)).astype(np.float32), name="ca")
    c = b.op("Conv", x, rng.standard_normal((3, 2, 1, 1)).astype(np.float32) * 5, name="cb")
    cat = b.op("Concat", a, c, axis=1, name="cat")
    y = b.op("Conv", cat, rng.standard_normal((2, 6, 1, 1)).astype(np.float32), name="cc")
    b.output(y, "y")
    qg = quantize_static(b.graph, batches((2, 2, 4, 4), 3), optimize=False, diagnostics=False)
    by = {n.name: n for n in qg}
    scales = {float(v.producer.input(1).const) for v in by["cat"].inputs}
    q_after = reader(by["cat"].output, "QuantizeLinear")
    assert scales == {float(q_after.input(1).const)}  # one group: the union of both ranges
    low = lower_int8(qg)
    assert "Concat" in ops(low) and all(v.dtype == "uint8" for n in low if n.op_type == "Concat" for v in n.inputs)


def test_matmul_bias_and_attention_matmul():
    """MatMul + bias Add (a BERT projection) quantizes as one layer; an activation x
    activation MatMul (Q.K^T) quantizes both inputs per tensor."""
    rng = np.random.default_rng(0)
    b = GraphBuilder(opset=17)
    x = b.input("x", (2, 5, 8))
    q = b.op("Add", b.op("MatMul", x, rng.standard_normal((8, 8)).astype(np.float32), name="proj"),
             (rng.standard_normal(8) * 0.1).astype(np.float32), name="proj_bias")
    kt = b.op("Transpose", q, perm=[0, 2, 1], name="kt")
    s = b.op("MatMul", q, kt, name="scores")
    b.output(b.op("Softmax", s, axis=-1), "p")
    data = [{"x": rng.standard_normal((2, 5, 8)).astype(np.float32)} for _ in range(4)]
    qg, rep = quantize_static(b.graph, data, optimize=False, return_report=True)
    assert [r["layer"] for r in rep.quantized] == ["proj", "scores"]
    by = {n.name: n for n in qg}
    bias = by["proj_bias"].input(1).producer
    assert bias.op_type == "DequantizeLinear" and bias.input(0).const.dtype == np.int32
    assert all(v.producer.op_type == "DequantizeLinear" for v in by["scores"].inputs)
    low = lower_int8(qg)
    assert Counter(n.op_type for n in low)["QMatMul"] == 2
    f = data[0]
    np.testing.assert_allclose(run_reference(low, f)[0], run_reference(qg, f)[0], atol=2e-3)
    assert np.abs(run_reference(qg, f)[0] - run_reference(b.graph, f)[0]).max() < 0.05


def test_accuracy_budget_sends_the_most_sensitive_layer_back_to_float():
    """An input feature 1000x larger than the rest (and nearly ignored by fc1's weights)
    sets fc1's input scale: fc1 loses most of its precision, is the most sensitive
    layer, and is the one that goes back to float; the budget then holds."""
    rng = np.random.default_rng(0)
    b = GraphBuilder(opset=17)
    x = b.input("x", ("N", 16))
    w1 = rng.standard_normal((16, 16)).astype(np.float32) * 0.3
    w1[0] *= 1e-4
    h = b.op("Relu", b.op("Gemm", x, w1, name="fc1"))
    h = b.op("Relu", b.op("Gemm", h, rng.standard_normal((16, 16)).astype(np.float32) * 0.3, name="fc2"))
    b.output(b.op("Gemm", h, rng.standard_normal((16, 4)).astype(np.float32), name="fc3"), "y")
    data = []
    for _ in range(4):
        xb = rng.standard_normal((32, 16)).astype(np.float32)
        xb[:, 0] *= 1000.0
        data.append({"x": xb})
    kw = dict(optimize=False, metric="relative_error", return_report=True)
    _, loose = quantize_static(b.graph, data, **kw)
    worst = min(loose.layer_errors, key=lambda r: r.local_sqnr_db)
    assert worst.layer == "fc1" and worst.local_sqnr_db < 20 < min(r.local_sqnr_db for r in loose.layer_errors
                                                                   if r.layer != "fc1")
    budget = 0.05
    assert loose.metric_value > budget
    qg, rep = quantize_static(b.graph, data, accuracy_budget=budget, **kw)
    assert rep.budget_met and rep.metric_value <= budget < rep.metric_before_fallback
    assert [f["layer"] for f in rep.float_layers] == ["fc1"]
    assert "accuracy budget" in rep.float_layers[0]["reason"]
    assert [r["layer"] for r in rep.quantized] == ["fc2", "fc3"]
    assert "budget 0.05: met" in rep.table() and "float: fc1" in rep.table()
    assert rep.to_json()["float_layers"][0]["layer"] == "fc1"
    assert [r.layer for r in rep.layer_errors] == ["fc2", "fc3"]


def test_one_shot_iterator_is_calibrated_and_measured(convnet):
    it = iter(batches(n=5))
    qg, rep = quantize_static(convnet, it, optimize=False, return_report=True, measure_batches=2)
    assert rep.calibration_batches == 5 and rep.layer_errors


def test_bad_calibration_data_is_one_clear_error(convnet):
    from graphopt.errors import GraphoptError

    with pytest.raises(GraphoptError, match="empty"):
        quantize_static(convnet, [], optimize=False)
    with pytest.raises(GraphoptError, match="iterable of input dicts"):
        quantize_static(convnet, batches(n=1)[0], optimize=False)
    with pytest.raises(GraphoptError, match="method"):
        quantize_static(convnet, batches(n=1), method="kl", optimize=False)


def test_optimize_first_is_the_default():
    # an opset-13 model with a foldable Identity: quantize_static runs -O2 first, and it still works
    g = build_convnet(opset=13)
    qg = quantize_static(g, batches(n=2), diagnostics=False)
    assert ops(qg)["QuantizeLinear"] >= 5
