"""samples/models.py: every sample exports (TorchScript exporter, opset 17, dynamic batch)
to a file that passes onnx's full check, loads in onnxruntime and matches torch eager, at
the example batch and at another batch; the graphs hold the ops later tests rely on."""
import collections
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from samples import models  # noqa: E402

# One tolerance for all: measured differences vs torch eager are <= 1e-6 absolute
# (BERT-style 9.5e-7 on outputs up to ~4 after its last LayerNorm), so BERT needs no
# looser bound; rtol also covers the larger-magnitude transformer outputs.
TOL = dict(rtol=1e-4, atol=1e-5)
BN_MODELS = ["vgg_style", "resnet_style", "mobilenet_v2_style"]


def _session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    # no onnxruntime graph rewrites: we compare the graph as exported
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module", params=list(models.SAMPLES))
def exported(request, tmp_path_factory):
    name = request.param
    module, inputs = models.SAMPLES[name]()
    path = tmp_path_factory.mktemp(name) / f"{name}.onnx"
    assert models.export_onnx(name, path) == path
    return name, module, inputs, path


def _torch_out(module, inputs):
    with torch.no_grad():
        return module(*inputs).numpy()


def test_export_checks_and_matches_torch(exported):
    name, module, inputs, path = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.ir_version <= 10 and proto.opset_import[0].version == 17
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    want_names = ["input_ids", "attention_mask"] if name == "bert_style" else ["input"]
    assert [i.name for i in proto.graph.input] == want_names
    assert [o.name for o in proto.graph.output] == ["output"]
    assert all(i.type.tensor_type.shape.dim[0].dim_param == "batch" for i in proto.graph.input)

    sess = _session(path)
    for batch_inputs in (inputs, models.example_inputs(name, batch=3)):  # the batch dim is dynamic
        feeds = {n: x.numpy() for n, x in zip(want_names, batch_inputs)}
        got = sess.run(None, feeds)[0]
        want = _torch_out(module, batch_inputs)
        assert got.shape == want.shape and np.isfinite(want).all()
        np.testing.assert_allclose(got, want, **TOL)


def test_graph_holds_expected_ops(exported):
    name, module, inputs, path = exported
    proto = onnx.load(str(path))
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    if name in BN_MODELS:
        # exported with training=PRESERVE: the TorchScript exporter would otherwise fold
        # every BatchNorm into its Conv, and BN-folding tests would have nothing to do
        n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())
        assert ops["BatchNormalization"] == n_bn > 0
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
        for node in (n for n in proto.graph.node if n.op_type == "BatchNormalization"):
            mean, var = inits[node.input[3]], inits[node.input[4]]
            assert np.abs(mean).max() > 1e-3 and np.abs(var - 1).max() > 1e-3  # non-trivial statistics
    if name == "mnist_convnet":  # x.view(x.size(0), -1) with a dynamic batch
        assert {"Shape", "Gather", "Unsqueeze", "Concat", "Reshape"} <= set(ops)
    if name == "mobilenet_v2_style":
        groups = [a.i for n in proto.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
        assert max(groups) > 1  # depthwise convolutions
        assert ops["Clip"] > 0 and ops["Add"] >= 1  # ReLU6, residual
    if name == "resnet_style":
        assert ops["Add"] == 3 and ops["GlobalAveragePool"] == 1
    if name == "bert_style":
        # opset 17: nn.LayerNorm exports as one LayerNormalization node (not a ReduceMean
        # chain); nn.GELU() as the Erf chain (a Gelu op exists only from opset 20)
        assert ops["Softmax"] == 2 and ops["Erf"] == 2 and ops["LayerNormalization"] == 5
        assert ops["ReduceMean"] == 0 and ops["Gelu"] == 0
        assert {"Shape", "Gather", "Unsqueeze", "Concat", "Reshape"} <= set(ops)
    if name == "gpt_style_block":  # tanh GELU decomposed (Tanh, Mul chain); causal mask as Where
        assert ops["Tanh"] == 1 and ops["Softmax"] == 1 and ops["Where"] == 1 and ops["LayerNormalization"] == 2


def test_builders_are_deterministic():
    a, xa = models.resnet_style()
    b, xb = models.resnet_style()
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert all(torch.equal(p, q) for p, q in zip(xa, xb))
    assert not a.training


def test_bert_mask_is_applied_and_accepts_float():
    module, (ids, mask) = models.bert_style()
    assert ids.dtype == mask.dtype == torch.int64 and int(mask.min()) == 0
    with torch.no_grad():
        y_int = module(ids, mask)
        y_float = module(ids, mask.float())
        y_nomask = module(ids, torch.ones_like(mask))
    torch.testing.assert_close(y_int, y_float)
    assert not torch.allclose(y_int[1], y_nomask[1])  # the padded sequence changes
    torch.testing.assert_close(y_int[0], y_nomask[0])  # the full one does not


def test_export_module_with_inputs_and_static_batch(tmp_path):
    module, inputs = models.mnist_convnet()
    path = models.export_onnx(module, inputs, tmp_path / "m.onnx", 17, False)
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    got = _session(path).run(None, {"input": inputs[0].numpy()})[0]
    np.testing.assert_allclose(got, _torch_out(module, inputs), **TOL)


def test_ir_version_follows_opset():
    assert models._ir_version_for(17) == 8
    assert models._ir_version_for(18) == 8
    assert models._ir_version_for(21) == 10


def test_script_writes_files(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, str(ROOT / "samples" / "models.py"), "--out", str(tmp_path),
                        "mnist_convnet"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "mnist_convnet.onnx").is_file()
    assert r.stdout.startswith("mnist_convnet: 17 nodes") and "Conv:2" in r.stdout
