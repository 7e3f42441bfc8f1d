"""The PyTorch frontend end to end: graphopt.load/compile on an nn.Module (names,
dynamic dims, torch tensors in and out, one-line errors), the via="onnx"
fallback, and every sample model against torch eager."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
from torch.export import Dim  # noqa: E402

import graphopt  # noqa: E402
from graphopt.errors import GraphoptError, UnsupportedOpError  # noqa: E402


class Net(nn.Module):
    """Conv/BN/pool/linear with a buffer and a lifted constant."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(8, 4)
        self.register_buffer("offset", torch.tensor([0.5]))

    def forward(self, image, scale):
        y = self.features(image).mean((2, 3))
        return self.head(y) * scale + self.offset + torch.tensor([1.0, 2.0, 3.0, 4.0]), y.amax(-1)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    m = Net().eval()
    bn = m.features[1]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 1.5)
    return m


@pytest.fixture(scope="module")
def net_inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 1, generator=g)


@pytest.fixture(scope="module")
def dynamic_net(net, net_inputs):
    spec = {"image": {0: Dim("batch")}, "scale": {0: Dim("batch")}}
    return graphopt.compile(net, example_inputs=net_inputs, dynamic_shapes=spec)


def test_graph_names_follow_the_module(net, net_inputs):
    g = graphopt.load(net, net_inputs)
    assert g.opset_imports == {"": 17}
    assert [v.name for v in g.inputs] == ["image", "scale"]
    assert [v.name for v in g.outputs] == ["output_0", "output_1"]
    inits = set(g.initializers)
    assert {"features.0.weight", "features.0.bias", "features.1.running_mean", "head.weight", "offset"} <= inits
    assert "features.1.num_batches_tracked" not in inits  # unused buffers are dropped
    assert any(name.startswith(("lifted_tensor", "c_lifted")) for name in inits)
    assert {"Conv", "BatchNormalization", "Relu", "MaxPool", "Gemm"} <= {n.op_type for n in g}
    assert g.inputs[0].type.shape == (2, 3, 8, 8)


def test_single_output_is_named_output():
    g = graphopt.load(nn.Linear(3, 2), (torch.randn(4, 3),))
    assert [v.name for v in g.outputs] == ["output"]
    assert [n.op_type for n in g] == ["Gemm"]
    assert g.inputs[0].name == "input"


def test_output_that_is_an_input_gets_an_identity():
    class PassThrough(nn.Module):
        def forward(self, x):
            return x, x.clone() * 2

    g = graphopt.load(PassThrough(), (torch.randn(3),))
    assert [v.name for v in g.outputs] == ["output_0", "output_1"]
    assert g.outputs[0].producer.op_type == "Identity"


def test_dynamic_batch_runs_at_two_sizes_and_returns_torch_tensors(net, dynamic_net):
    assert dynamic_net.graph.inputs[0].type.shape == ("batch", 3, 8, 8)
    assert dynamic_net.graph.inputs[1].type.shape == ("batch", 1)
    for batch in (1, 5):
        image, scale = torch.randn(batch, 3, 8, 8), torch.randn(batch, 1)
        out = dynamic_net(image, scale)
        assert all(isinstance(o, torch.Tensor) for o in out)
        with torch.no_grad():
            want = net(image, scale)
        for o, w in zip(out, want):
            assert o.shape == w.shape
            torch.testing.assert_close(o, w, rtol=1e-5, atol=1e-5)


def test_numpy_in_numpy_out(dynamic_net, net_inputs):
    out = dynamic_net(*(a.numpy() for a in net_inputs))
    assert all(isinstance(o, np.ndarray) for o in out)


def test_symint_arithmetic_becomes_shape_ops():
    class Fold(nn.Module):
        def forward(self, x):
            b, t, d = x.shape
            return x.reshape(b * t, d) + torch.zeros(b * t, 1)

    x = torch.randn(2, 3, 4)
    g = graphopt.load(Fold(), (x,), dynamic_shapes={"x": {0: Dim("batch"), 1: Dim("seq")}})
    kinds = [n.op_type for n in g]
    assert {"Shape", "Gather", "Mul"} <= set(kinds)
    assert g.inputs[0].type.shape == ("batch", "seq", 4)
    assert g.outputs[0].type.shape == ("batch*seq", 4)
    from graphopt.plugins.cpu.backend import run_reference

    for shape in ((2, 3, 4), (5, 7, 4)):
        x = torch.randn(*shape)
        (got,) = run_reference(g, {"x": x.numpy()})
        np.testing.assert_allclose(got, Fold()(x).numpy(), rtol=1e-6)


def test_gelu_is_spelled_with_opset_17_ops():
    g = graphopt.load(nn.GELU(), (torch.randn(4),))
    kinds = [n.op_type for n in g]
    assert "Gelu" not in kinds and "Erf" in kinds
    g = graphopt.load(nn.GELU(approximate="tanh"), (torch.randn(4),))
    assert "Tanh" in [n.op_type for n in g]


class UsesFFT(nn.Module):
    def forward(self, x):
        y = x * 2
        return torch.fft.fft(y).real


class UsesDet(nn.Module):
    def forward(self, x):
        return torch.linalg.det(x) + 1


@pytest.mark.parametrize("module,x,op,code", [
    (UsesFFT(), torch.randn(4, 8), "aten._fft_r2c", "return torch.fft.fft(y).real"),
    (UsesDet(), torch.randn(3, 3), "aten._linalg_det", "return torch.linalg.det(x) + 1"),
], ids=["fft", "det"])
def test_unsupported_op_is_one_line_naming_op_and_source(module, x, op, code):
    with pytest.raises(UnsupportedOpError) as info:
        graphopt.load(module, (x,))
    msg = str(info.value)
    assert "\n" not in msg
    assert op in msg and code in msg
    assert "test_torch_frontend.py:" in msg and "in forward" in msg
    assert 'via="onnx"' in msg


def test_graph_break_is_one_line_with_the_fallback_hint(capfd):
    class DataDependent(nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x * 2
            return x

    with pytest.raises(GraphoptError) as info:
        graphopt.load(DataDependent(), (torch.randn(3),))
    msg = str(info.value)
    assert not isinstance(info.value, UnsupportedOpError)
    assert "\n" not in msg and "DataDependent" in msg and 'via="onnx"' in msg
    assert "if x.sum() > 0" in msg
    out, err = capfd.readouterr()
    assert "def forward" not in out + err  # torch's partial-graph dump stays off the console


def test_via_onnx_fallback_gives_the_same_outputs(net, net_inputs, dynamic_net):
    """module_to_onnx_bytes: loadable by onnxruntime (IR version lowered), same names and
    dynamic batch as the direct frontend, same outputs through graphopt."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from graphopt.frontends.torch_onnx import min_ir_version, module_to_onnx_bytes

    spec = {"image": {0: Dim("batch")}, "scale": {0: Dim("batch")}}
    data = module_to_onnx_bytes(net, net_inputs, dynamic_shapes=spec)
    model = onnx.load_from_string(data)
    opset = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")][0]
    assert model.ir_version == min_ir_version(opset) <= 10
    image, scale = torch.randn(3, 3, 8, 8), torch.randn(3, 1)
    with torch.no_grad():
        want = net(image, scale)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    for a, b in zip(sess.run(None, {"image": image.numpy(), "scale": scale.numpy()}), want):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-5, atol=1e-5)

    via_onnx = graphopt.compile(data)
    assert [v.name for v in via_onnx.graph.outputs] == ["output_0", "output_1"]
    assert via_onnx.graph.inputs[0].type.shape[0] == "batch"
    for a, b in zip(via_onnx(image, scale), dynamic_net(image, scale)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_capture_uses_eval_mode_and_leaves_the_module_as_it_was():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.BatchNorm1d(4)).train()
    m[2].eval()  # a mixed module: its flags must come back as they were
    x = torch.randn(3, 4)
    g = graphopt.load(m, (x,))
    assert [mod.training for mod in m.modules()] == [True, True, True, False]
    assert "Dropout" not in [n.op_type for n in g]
    m.eval()
    with torch.no_grad():
        want = m(x)
    torch.testing.assert_close(graphopt.compile(g)(x)[0], want, rtol=1e-5, atol=1e-5)


def test_structured_outputs_are_flattened_and_named_by_their_keys():
    class Structured(nn.Module):
        def forward(self, x):
            return {"logits": x * 2, "extra": (x + 1, [x - 1])}

    x = torch.randn(2, 3)
    cm = graphopt.compile(Structured(), example_inputs=(x,))
    assert cm.output_names == ["logits", "extra.0", "extra.1.0"]
    got = cm(x)
    for g_, w in zip(got, (x * 2, x + 1, x - 1)):
        torch.testing.assert_close(g_, w)
