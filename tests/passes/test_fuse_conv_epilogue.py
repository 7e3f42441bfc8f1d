"""fuse_conv_epilogue: bias, activation, residual and the following pointwise chain run in
the epilogue of Conv / ConvTranspose / Gemm / MatMul; refusals carry their reason."""
from collections import Counter

import numpy as np
import pytest

from graphopt.backend import Backend
from graphopt.builder import GraphBuilder
from graphopt.plugin_loader import register_backend
from graphopt.testing import assert_same_outputs, run_passes

rng = np.random.default_rng(0)


def W(*shape, s=0.3):
    return (rng.standard_normal(shape) * s).astype(np.float32)


def fuse(g, passes=("fuse_conv_epilogue",), **ctx):
    before = g.clone()
    report = run_passes(g, list(passes), **ctx)
    return before, report.records[0]


def conv_graph(act, bias_add=True):
    b = GraphBuilder(opset=20)
    x = b.input("x", ("n", 3, 6, 6))
    y = b.op("Conv", x, W(4, 3, 3, 3), pads=[1, 1, 1, 1])
    if bias_add:
        y = b.op("Add", y, W(1, 4, 1, 1))
    b.output(act(b, y), "y")
    return b.graph


ACTIVATIONS = {
    "relu": (lambda b, y: b.op("Relu", y), "relu(acc)"),
    "relu6": (lambda b, y: b.op("Clip", y, np.float32(0), np.float32(6)), "min(max(acc, 0.0), 6.0)"),
    "sigmoid": (lambda b, y: b.op("Sigmoid", y), "sigmoid(acc)"),
    "silu": (lambda b, y: b.op("Mul", y, b.op("Sigmoid", y)), "mul(acc, sigmoid(acc))"),
    "hardswish": (lambda b, y: b.op("HardSwish", y), "mul(acc, min(max(add(div(acc, 6.0), 0.5), 0.0), 1.0))"),
    "gelu": (lambda b, y: b.op("Gelu", y), "mul(mul(0.5, acc), add(1.0, erf(mul(acc, 0.70710677))))"),
    "gelu_erf_decomposed": (
        lambda b, y: b.op("Mul", b.op("Mul", y, b.op("Add", b.op("Erf", b.op("Div", y, np.float32(1.4142135))),
                                                      np.float32(1.0))), np.float32(0.5)),
        "mul(mul(acc, add(erf(div(acc, 1.4142135)), 1.0)), 0.5)"),
    "tanh": (lambda b, y: b.op("Tanh", y), "tanh(acc)"),
    "leaky_relu": (lambda b, y: b.op("LeakyRelu", y, alpha=0.1), "select(ge(acc, 0.0), acc, mul(acc, 0.1))"),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_bias_folds_and_activation_runs_in_the_epilogue(name):
    act, expr = ACTIVATIONS[name]
    g = conv_graph(act)
    before, rec = fuse(g)
    (node,) = g.nodes
    assert node.qualified_op == "ai.graphopt::FusedConv" and node.output.name == "y"
    assert node.attrs["epilogue"] == expr and node.attrs["layout"] == "NCHW"
    assert node.input(2).shape == (4,) and rec.stats["bias_folded"] == 1
    assert_same_outputs(before, g, batch=2)


def test_residual_add_and_the_chain_after_it():
    b = GraphBuilder()
    x = b.input("x", (2, 4, 5, 5))
    r = b.input("r", (2, 4, 5, 5))
    scale = b.input("scale", (4, 1, 1))
    y = b.op("Conv", x, W(4, 4, 3, 3), W(4), pads=[1, 1, 1, 1])
    y = b.op("Relu", b.op("Add", r, y))
    y = b.op("Mul", b.op("Add", y, np.float32(1.0)), scale)
    b.output(y, "y")
    before, rec = fuse(b.graph)
    (node,) = b.graph.nodes
    assert node.attrs["epilogue"] == "mul(add(relu(add(in1, acc)), 1.0), in2)"
    assert [v.name for v in node.inputs[3:]] == ["r", "scale"]
    assert rec.stats == {"FusedConv": 1, "ops_absorbed": 4}
    assert_same_outputs(before, b.graph)


def test_conv_with_two_users_is_refused():
    b = GraphBuilder()
    x = b.input("x", (1, 3, 4, 4))
    c = b.op("Conv", x, W(2, 3, 1, 1))
    b.output(b.op("Relu", c), "y")
    b.output(b.op("MaxPool", c, kernel_shape=[2, 2]), "z")
    _, rec = fuse(b.graph)
    assert not rec.modified
    assert rec.refused == {("conv_epilogue", "Conv output has 2 users"): 1}
    assert [n.op_type for n in b.graph] == ["Conv", "Relu", "MaxPool"]


def test_operand_that_would_grow_the_output_is_refused():
    b = GraphBuilder()
    x = b.input("x", (1, 3, 4, 4))
    c = b.op("Conv", x, W(2, 3, 1, 1))
    b.output(b.op("Add", c, b.input("big", (5, 1, 2, 4, 4))), "y")
    _, rec = fuse(b.graph)
    assert not rec.modified
    assert rec.refused == {("conv_epilogue", "Add operand not broadcastable as bias/residual"): 1}


def test_conv_output_that_is_a_graph_output_keeps_its_value():
    b = GraphBuilder()
    x = b.input("x", (1, 3, 4, 4))
    c = b.op("Conv", x, W(2, 3, 1, 1))
    b.output(c, "c")
    b.output(b.op("Relu", c), "y")
    _, rec = fuse(b.graph)
    assert not rec.modified and rec.refused == {("conv_epilogue", "Conv output is a graph output"): 1}


def test_gemm_bias_becomes_c_and_matmul_takes_bias_and_gelu():
    b = GraphBuilder(opset=20)
    x = b.input("x", ("n", 8))
    h = b.op("Gemm", x, W(16, 8), transB=1)
    h = b.op("Tanh", b.op("Add", h, W(16)))
    m = b.op("MatMul", b.op("Reshape", h, np.array([-1, 2, 16], np.int64)), W(16, 4))
    m = b.op("Gelu", b.op("Add", W(4), m))
    b.output(m, "y")
    before, rec = fuse(b.graph)
    gemm, reshape, mm = b.graph.nodes
    assert gemm.op_type == "FusedGemm" and gemm.attrs["epilogue"] == "tanh(acc)" and gemm.input(2).shape == (16,)
    assert mm.op_type == "FusedMatMul" and len(mm.inputs) == 3
    assert mm.attrs["epilogue"].startswith("t0 = add(in1, acc); mul(mul(0.5, t0)")
    assert rec.stats == {"FusedGemm": 1, "FusedMatMul": 1, "ops_absorbed": 4, "bias_folded": 1}
    assert_same_outputs(before, b.graph, batch=4)


def test_conv_transpose_epilogue():
    b = GraphBuilder()
    x = b.input("x", (1, 4, 3, 3))
    y = b.op("ConvTranspose", x, W(4, 2, 3, 3), strides=[2, 2])
    b.output(b.op("Sigmoid", b.op("Add", y, W(2, 1, 1))), "y")
    before, rec = fuse(b.graph)
    (node,) = b.graph.nodes
    assert node.op_type == "FusedConvTranspose" and node.attrs["epilogue"] == "sigmoid(acc)"
    assert_same_outputs(before, b.graph)


def test_an_existing_fused_conv_grows_and_nhwc_bias_folds_on_the_last_axis():
    b = GraphBuilder()
    x = b.input("x", (2, 3, 6, 6))
    y = b.op("Conv", x, W(4, 3, 3, 3), pads=[1, 1, 1, 1])
    y = b.op("Add", y, W(4, 1, 1))
    b.output(b.op("HardSigmoid", b.op("Add", y, b.input("r", (2, 4, 6, 6)))), "y")
    g = b.graph
    before = g.clone()
    run_passes(g, ["convert_layout_nhwc"], level=3)
    assert Counter(n.op_type for n in g) == Counter({"Transpose": 3, "FusedConv": 1, "Add": 2, "HardSigmoid": 1})
    run_passes(g, ["fuse_conv_epilogue"])
    conv = next(n for n in g if n.op_type == "FusedConv")
    assert conv.attrs["layout"] == "NHWC" and conv.input(2).shape == (4,)
    assert conv.attrs["epilogue"] == "min(max(add(mul(0.2, add(acc, in1)), 0.5), 0.0), 1.0)"
    assert_same_outputs(before, g)


class _NoFusedConv(Backend):
    name = "no-fused-conv"

    def supports(self, node):
        return node.op_type != "FusedConv"


def test_a_backend_without_the_fused_op_keeps_the_graph():
    register_backend("no-fused-conv", _NoFusedConv)
    g = conv_graph(ACTIVATIONS["relu"][0], bias_add=False)
    _, rec = fuse(g, backend="no-fused-conv")
    assert not rec.modified and [n.op_type for n in g] == ["Conv", "Relu"]
    assert rec.refused == {("conv_epilogue", "backend 'no-fused-conv' cannot run FusedConv"): 1}


def test_runs_from_level_2_only():
    g = conv_graph(ACTIVATIONS["relu"][0])
    _, rec = fuse(g, level=1)
    assert not rec.modified and len(g) == 3


# -- the sample ResNet-style CNN, exported to ONNX -------------------------------------------------


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    models = pytest.importorskip("samples.models")
    import graphopt

    path = models.export_onnx("resnet_style", tmp_path_factory.mktemp("resnet") / "resnet_style.onnx")
    return graphopt.optimize(graphopt.load(str(path)), level=2)


@pytest.mark.parametrize("lowering", [["fuse_conv_epilogue", "convert_layout_nhwc", "fuse_elementwise"],
                                      ["convert_layout_nhwc", "fuse_conv_epilogue", "fuse_elementwise"]])
def test_resnet_every_conv_carries_its_activation_and_residual(resnet, lowering):
    g = resnet.clone()
    assert Counter(n.op_type for n in g)["BatchNormalization"] == 0  # folded by the graph passes
    report = run_passes(g, lowering, level=3)
    counts = Counter(n.op_type for n in g)
    assert counts == Counter({"FusedConv": 9, "Transpose": 1, "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1})
    convs = [n for n in g if n.op_type == "FusedConv"]
    assert all(n.attrs["layout"] == "NHWC" for n in convs)
    residual = [n for n in convs if "add(" in n.attrs["epilogue"]]
    plain = [n for n in convs if not n.attrs["epilogue"]]
    assert len(residual) == 3 and all(n.attrs["epilogue"].startswith("relu(") for n in residual)
    # the only convs without an epilogue are the 1x1 downsample shortcuts (no activation in the model)
    assert len(plain) == 2 and all(n.attrs["kernel_shape"] == [1, 1] for n in plain)
    assert all(n.attrs["epilogue"] == "relu(acc)" for n in convs if n not in residual + plain)
    nhwc = next(r for r in report.records if r.name == "convert_layout_nhwc" and r.modified)
    assert nhwc.stats["transposes_remaining"] <= 2
    assert_same_outputs(resnet, g, batch=2)
