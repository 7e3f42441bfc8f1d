"""convert_layout_nhwc: convolutions run channels-last, the layout follows the data through
layout-agnostic ops, and Transposes are left only at the edges."""
from collections import Counter

import numpy as np
import pytest

from graphopt.builder import GraphBuilder
from graphopt.passmanager import default_pipeline
from graphopt.testing import assert_same_outputs, run_passes

rng = np.random.default_rng(0)


def W(*shape, s=0.3):
    return (rng.standard_normal(shape) * s).astype(np.float32)


def nhwc(g, **ctx):
    ctx.setdefault("level", 3)
    before = g.clone()
    report = run_passes(g, ["convert_layout_nhwc"], **ctx)
    return before, report.records[0]


def ops(g):
    return Counter(n.qualified_op for n in g)


def conv(b, x, cin, cout, k=3, **kw):
    return b.op("Conv", x, W(cout, cin, k, k), W(cout), pads=[k // 2] * 4, kernel_shape=[k, k], **kw)


def test_plain_cnn_keeps_one_transpose_at_each_edge():
    b = GraphBuilder()
    x = b.input("x", ("n", 3, 8, 8))
    h = b.op("Relu", conv(b, x, 3, 8))
    h = b.op("MaxPool", h, kernel_shape=[2, 2], strides=[2, 2])
    h2 = b.op("Add", conv(b, h, 8, 8), h)                          # residual
    h3 = b.op("Concat", h2, b.op("AveragePool", h, kernel_shape=[3, 3], pads=[1, 1, 1, 1]), axis=1)
    y = b.op("Sigmoid", b.op("Mul", h3, W(16, 1, 1)))              # per-channel constant, permuted
    b.output(y, "y")
    before, rec = nhwc(b.graph)
    assert rec.modified and rec.stats["convs_converted"] == 2
    assert rec.stats["transposes_remaining"] == 2
    assert ops(b.graph) == Counter({"Transpose": 2, "ai.graphopt::FusedConv": 2, "Relu": 1, "Add": 1, "Concat": 1,
                                    "ai.graphopt::MaxPool": 1, "ai.graphopt::AveragePool": 1, "Mul": 1,
                                    "Sigmoid": 1})
    first, last = b.graph.nodes[0], b.graph.nodes[-1]
    assert first.op_type == last.op_type == "Transpose" and last.output.name == "y"
    assert first.attrs["perm"] == [0, 2, 3, 1] and last.attrs["perm"] == [0, 3, 1, 2]
    cv = next(n for n in b.graph if n.op_type == "FusedConv")
    assert cv.attrs["layout"] == "NHWC" and cv.input(1).shape == (8, 3, 3, 3) and cv.output.shape == ("n", 8, 8, 8)
    assert next(n for n in b.graph if n.op_type == "Concat").attrs["axis"] == 3
    assert next(n for n in b.graph if n.op_type == "Mul").input(1).shape == (1, 1, 1, 16)
    assert_same_outputs(before, b.graph, batch=2)


def test_classifier_tail_needs_no_transpose_and_batchnorm_follows():
    b = GraphBuilder()
    x = b.input("x", ("n", 3, 8, 8))
    h = conv(b, x, 3, 8)
    h = b.op("BatchNormalization", h, W(8) + 1, W(8), W(8), np.abs(W(8)) + 0.5)
    h = b.op("GlobalAveragePool", b.op("Relu", h))
    y = b.op("Gemm", b.op("Flatten", h, axis=1), W(10, 8), W(10), transB=1)
    b.output(y, "logits")
    before, rec = nhwc(b.graph)
    assert rec.stats["transposes_remaining"] == 1 and rec.stats["transposes_avoided"] == 1
    assert [n.op_type for n in b.graph] == ["Transpose", "FusedConv", "Mul", "Add", "Relu", "GlobalAveragePool",
                                           "Flatten", "Gemm"]
    assert next(n for n in b.graph if n.op_type == "Mul").input(1).shape == (8,)
    assert_same_outputs(before, b.graph, batch=3)


def test_transposes_of_a_channels_last_model_cancel_completely():
    b = GraphBuilder()
    x = b.input("x", (2, 8, 8, 3))                                   # an NHWC model input
    h = b.op("Transpose", x, perm=[0, 3, 1, 2])
    h = b.op("Relu", conv(b, h, 3, 4))
    b.output(b.op("Transpose", h, perm=[0, 2, 3, 1]), "y")           # and output
    before, rec = nhwc(b.graph)
    assert rec.stats["transposes_remaining"] == 0 and rec.stats["transposes_cancelled"] == 1
    assert [n.op_type for n in b.graph] == ["FusedConv", "Relu"] and b.graph.nodes[0].input(0).name == "x"
    assert_same_outputs(before, b.graph)


def test_reduction_axes_are_remapped_and_its_output_needs_no_transpose():
    b = GraphBuilder(opset=13)
    x = b.input("x", (2, 3, 6, 6))
    h = conv(b, x, 3, 4)
    se = b.op("ReduceMean", h, axes=[2, 3], keepdims=1)              # squeeze-excite style
    h = b.op("Mul", h, b.op("Sigmoid", se))
    b.output(b.op("ReduceMax", h, axes=[-1, 2], keepdims=0), "pooled")
    before, rec = nhwc(b.graph)
    red = [n for n in b.graph if n.op_type.startswith("Reduce")]
    assert [n.attrs["axes"] for n in red] == [[1, 2], [1, 2]]
    assert rec.stats["transposes_remaining"] == 1
    assert_same_outputs(before, b.graph)


def test_an_op_that_cannot_follow_gets_the_nchw_value_back():
    b = GraphBuilder()
    x = b.input("x", (1, 3, 5, 5))
    h = b.op("Relu", conv(b, x, 3, 4))
    b.output(b.op("Softmax", h, axis=1), "a")                        # over channels: stays NCHW
    b.output(b.op("LpNormalization", h, axis=1), "b")
    before, rec = nhwc(b.graph)
    assert rec.stats["transposes_inserted"] == 2                      # the input's, and one back, shared
    back = [n for n in b.graph if n.op_type == "Transpose" and n.attrs["perm"] == [0, 3, 1, 2]]
    assert len(back) == 1 and {u.op_type for u in back[0].output.users} == {"Softmax", "LpNormalization"}
    assert_same_outputs(before, b.graph)


def test_non_constant_weights_and_low_levels_are_left_alone():
    b = GraphBuilder()
    x = b.input("x", (1, 3, 5, 5))
    b.output(b.op("Conv", x, b.input("w", (2, 3, 3, 3))), "y")
    _, rec = nhwc(b.graph)
    assert not rec.modified and rec.refused == {("convert_layout_nhwc", "Conv weight is not a constant"): 1}
    b = GraphBuilder()
    x = b.input("x", (1, 3, 5, 5))
    b.output(conv(b, x, 3, 2), "y")
    _, rec = nhwc(b.graph, level=2)
    assert not rec.modified and [n.op_type for n in b.graph] == ["Conv"]
    assert "convert_layout_nhwc" not in [p.name for p in default_pipeline(2, "lowering")]
    assert "convert_layout_nhwc" in [p.name for p in default_pipeline(3, "lowering")]


def test_fused_conv_with_residual_and_grouped_weights():
    b = GraphBuilder()
    x = b.input("x", (2, 4, 6, 6))
    r = b.input("r", (2, 4, 6, 6))
    h = b.op("Conv", x, W(4, 1, 3, 3), pads=[1, 1, 1, 1], group=4)  # depthwise
    b.output(b.op("Relu", b.op("Add", h, r)), "y")
    g = b.graph
    before = g.clone()
    run_passes(g, ["fuse_conv_epilogue"])
    _, rec = nhwc(g)
    (cv,) = [n for n in g if n.op_type == "FusedConv"]
    assert cv.attrs["layout"] == "NHWC" and cv.attrs["epilogue"] == "relu(add(acc, in1))"
    assert cv.input(3).shape == (2, 6, 6, 4) and rec.stats["transposes_remaining"] == 3
    assert_same_outputs(before, g)


def test_sample_mobilenet_keeps_at_most_two_transposes():
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    models = pytest.importorskip("samples.models")
    g = models.load_graph("mobilenet_v2_style", level=2)
    before = g.clone()
    report = run_passes(g, ["convert_layout_nhwc", "fuse_conv_epilogue", "fuse_elementwise"], level=3)
    rec = next(r for r in report.records if r.name == "convert_layout_nhwc")
    assert rec.stats["transposes_remaining"] <= 2
    assert sum(1 for n in g if n.op_type == "Transpose") <= 2
    assert all(n.attrs["layout"] == "NHWC" for n in g if n.op_type == "FusedConv")
    assert not [n for n in g if n.op_type in ("Conv", "Clip", "Relu", "Add")]
    assert_same_outputs(before, g, batch=2)
