"""lower_qdq_int8: QDQ patterns -> QConv/QGemm/QMatMul/QAdd and int8 data movement;
the lowered graph equals the QDQ graph's float simulation within one quantization step."""
from collections import Counter

import numpy as np
import pytest

from graphopt.builder import GraphBuilder
from graphopt.passmanager import PassContext, PassManager
from graphopt.plugins.cpu.backend import run_reference

RNG = np.random.default_rng(0)


def qdq(b, v, scale, zp, dtype=np.uint8):
    s, z = np.float32(scale), np.array(zp, dtype)
    return b.op("DequantizeLinear", b.op("QuantizeLinear", v, s, z), s, z)


def wdq(b, w, axis=0):
    """A symmetric int8 per-channel weight read through DequantizeLinear."""
    red = tuple(i for i in range(w.ndim) if i != axis)
    s = (np.abs(w).max(axis=red) / 127).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / s.reshape(shape)), -127, 127).astype(np.int8)
    return b.op("DequantizeLinear", q, s, np.zeros_like(s, np.int8), axis=axis), s


def bdq(b, bias, x_scale, w_scale):
    s = (np.float32(x_scale) * w_scale).astype(np.float32)
    q = np.rint(bias / s).astype(np.int32)
    return b.op("DequantizeLinear", q, s, np.zeros_like(s, np.int32), axis=0)


def lower(g):
    g = g.clone()
    rep = PassManager(["lower_qdq_int8"], PassContext(verify=True), fixed_point=False).run(g)
    return g, rep


def qdq_convnet(pool_scale=0.05, seed=0):
    rng = np.random.default_rng(seed)
    b = GraphBuilder(opset=17)
    x = b.input("x", ("N", 3, 8, 8))
    xd = qdq(b, x, 0.03, 128)
    w, ws = wdq(b, (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32))
    c = b.op("Conv", xd, w, bdq(b, (rng.standard_normal(8) * 0.1).astype(np.float32), 0.03, ws), pads=[1, 1, 1, 1])
    r = qdq(b, b.op("Relu", c), 0.05, 0)
    p = qdq(b, b.op("MaxPool", r, kernel_shape=[2, 2], strides=[2, 2]), pool_scale, 0)
    w2, _ = wdq(b, (rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32))
    c2 = qdq(b, b.op("Conv", p, w2, pads=[1, 1, 1, 1]), 0.08, 120)
    a = qdq(b, b.op("Relu", b.op("Add", c2, p)), 0.06, 0)
    f = qdq(b, b.op("Flatten", a), 0.06, 0)
    wg, wgs = wdq(b, (rng.standard_normal((10, 128)) * 0.1).astype(np.float32))
    y = b.op("Gemm", f, wg, bdq(b, (rng.standard_normal(10) * 0.1).astype(np.float32), 0.06, wgs), transB=1)
    b.output(y, "y")
    return b.graph


def test_structure_of_a_lowered_convnet():
    g, rep = lower(qdq_convnet())
    ops = Counter(n.qualified_op for n in g)
    assert ops == Counter({"QuantizeLinear": 1, "ai.graphopt::QConv": 2, "MaxPool": 1, "ai.graphopt::QAdd": 1,
                           "Flatten": 1, "ai.graphopt::QGemm": 1})
    by = {n.op_type: n for n in g}
    assert by["MaxPool"].input(0).dtype == "uint8" and by["MaxPool"].output.dtype == "uint8"
    assert by["QGemm"].output.dtype == "float32" and by["QGemm"].output.name == "y"  # float logits keep their name
    assert by["QAdd"].attrs["activation"] == "Relu"
    qconvs = [n for n in g if n.op_type == "QConv"]
    assert qconvs[0].attrs["activation"] == "Relu" and qconvs[0].input(8).dtype == "int32"
    assert qconvs[1].attrs.get("activation", "") == "" and len(qconvs[1].inputs) == 8
    applied = rep.summary()[0]["applied"]
    assert applied["conv_relu_qdq_to_qconv"] == 1 and applied["dq_op_q_to_int8_op"] == 2


def test_lowered_equals_qdq_simulation_within_one_step():
    g = qdq_convnet()
    low, _ = lower(g)
    # compare every int8 tensor: the lowered graph keeps the Q outputs' names
    names = [n.output.name for n in g if n.op_type == "QuantizeLinear"]
    g2, low2 = g.clone(), low.clone()
    for h in (g2, low2):
        by = {v.name: v for v in h.values()}
        for nm in names:
            if nm in by:
                h.add_output(by[nm])
    feeds = {"x": RNG.standard_normal((3, 3, 8, 8)).astype(np.float32)}
    a, b = run_reference(g2, feeds), run_reference(low2, feeds)
    assert len(a) == len(b) == 1 + len(names)
    for x, y in zip(a[1:], b[1:]):
        assert x.dtype == y.dtype and x.dtype in (np.uint8, np.int8)
        assert np.abs(x.astype(int) - y.astype(int)).max() <= 1
    # float logits: the last int8 tensor may differ by one step (0.06), through the last layer's |w|
    wdq_node = g.nodes[-1].input(1).producer
    w = wdq_node.input(0).const * wdq_node.input(1).const[:, None]
    assert np.abs(a[0] - b[0]).max() <= 0.06 * np.abs(w).sum(1).max()


def test_must_not_fire_when_pool_scales_differ():
    g, rep = lower(qdq_convnet(pool_scale=0.07))
    assert any(n.op_type == "MaxPool" and n.input(0).dtype == "float32" for n in g)
    refused = rep.summary()[0]["refused"]
    assert refused[("dq_op_q_to_int8_op", "input and output scales differ")] == 1
    feeds = {"x": RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)}
    np.testing.assert_allclose(run_reference(g, feeds)[0], run_reference(qdq_convnet(0.07), feeds)[0], atol=0.2)


def test_must_not_fire_when_the_conv_output_has_another_reader():
    b = GraphBuilder(opset=17)
    x = b.input("x", (1, 2, 4, 4))
    w, _ = wdq(b, RNG.standard_normal((2, 2, 1, 1)).astype(np.float32))
    c = b.op("Conv", qdq(b, x, 0.02, 128), w)
    b.output(qdq(b, b.op("Relu", c), 0.02, 0), "y")
    b.output(c, "raw")  # the float Conv output is also a model output
    g, rep = lower(b.graph)
    # the Q-rooted rule refuses (fusing would hide "raw"); the Conv still lowers, with a float output
    assert any("readers" in why for (_, why) in rep.summary()[0]["refused"])
    (qc,) = [n for n in g if n.op_type == "QConv"]
    assert qc.output.dtype == "float32" and qc.output.name == "raw" and "activation" not in qc.attrs
    assert any(n.op_type == "Relu" for n in g)
    feeds = {"x": RNG.standard_normal((1, 2, 4, 4)).astype(np.float32)}
    for a, b_ in zip(run_reference(g, feeds), run_reference(b.graph, feeds)):
        np.testing.assert_allclose(a, b_, atol=1e-5)


def test_must_not_fire_on_a_weight_quantized_along_the_wrong_axis():
    b = GraphBuilder(opset=17)
    x = b.input("x", (2, 4))
    w, _ = wdq(b, RNG.standard_normal((4, 3)).astype(np.float32), axis=0)  # per input row: not lowerable
    b.output(qdq(b, b.op("MatMul", qdq(b, x, 0.02, 128), w), 0.05, 128), "y")
    g, rep = lower(b.graph)
    assert "QMatMul" not in {n.op_type for n in g} and not rep.records[0].modified
    assert any("axis 0" in why for (_, why) in rep.summary()[0]["refused"])


@pytest.mark.parametrize("act", [None, "Relu", "Clip"])
def test_matmul_with_bias_add_and_activation(act):
    b = GraphBuilder(opset=17)
    x = b.input("x", (2, 3, 8))
    w, ws = wdq(b, (RNG.standard_normal((8, 5)) * 0.3).astype(np.float32), axis=1)
    h = b.op("Add", b.op("MatMul", qdq(b, x, 0.02, 128), w), bdq(b, (RNG.standard_normal(5) * 0.1).astype(np.float32),
                                                                0.02, ws))
    if act == "Relu":
        h = b.op("Relu", h)
    elif act == "Clip":
        h = b.op("Clip", h, np.float32(-0.5), np.float32(0.5))
    b.output(qdq(b, h, 0.01, 100), "y")
    g, rep = lower(b.graph)
    ops = [n.op_type for n in g]
    assert ops == ["QuantizeLinear", "QMatMul", "DequantizeLinear"]
    assert g.nodes[1].attrs.get("activation", "") == (act or "")
    feeds = {"x": (RNG.standard_normal((2, 3, 8)) * 2).astype(np.float32)}
    d = np.abs(run_reference(g, feeds)[0] - run_reference(b.graph, feeds)[0]).max()
    assert d <= 0.01 + 1e-6  # at most one output step
