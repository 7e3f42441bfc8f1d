"""samples/zoo.py: a few real families build with trained-looking random weights,
export with both torch.onnx exporters (static and dynamic axes), load in
onnxruntime and match torch eager; the onnx wheel's light models get sane weights;
the torchvision stand-in timm needs never leaks to transformers.

Kept to a CI budget (~20 s on 2 cores): tiny sizes, one dynamo export (the slow
exporter). benchmarks/bench_passes.py exports every family with both exporters."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from samples import zoo  # noqa: E402

ATOL = 1e-4  # measured differences vs torch eager are <= 2e-6 on the tiny families


def _run(proto, feeds):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _torch(module, feeds, names):
    with torch.no_grad():
        return module(*(torch.from_numpy(feeds[n]) for n in names)).numpy()


def test_families_cover_the_issue_list():
    wanted = {"hf_bert", "hf_distilbert", "hf_roberta", "hf_albert", "hf_electra", "hf_gpt2", "hf_gpt_neox",
              "hf_llama", "hf_qwen2", "hf_t5_encoder", "hf_whisper_encoder", "hf_vit", "hf_deit", "hf_swin",
              "hf_convnext", "hf_clip_vision", "hf_mobilevit", "hf_segformer", "timm_efficientnet_b0",
              "timm_mobilenetv3", "timm_resnet18", "timm_convnext", "timm_vit"}
    assert wanted <= set(zoo.FAMILIES)
    with pytest.raises(KeyError, match="unknown zoo family 'nope'"):
        zoo.build("nope")


@pytest.mark.parametrize("name,exporter,dynamic", [
    ("hf_bert", "torchscript", True),
    ("hf_llama", "torchscript", False),
    ("hf_vit", "dynamo", True),
])
def test_export_matches_torch(name, exporter, dynamic):
    module, example = zoo.build(name)
    proto = zoo.export(name, exporter=exporter, dynamic=dynamic)
    assert [i.name for i in proto.graph.input] == list(zoo.input_names(name))
    assert proto.ir_version <= 10  # onnxruntime 1.31 reads IR <= 13
    names = zoo.input_names(name)
    feeds = zoo.feeds(name, proto)
    for n, t in zip(names, example):  # feeds() gives build()'s example inputs
        np.testing.assert_array_equal(feeds[n], t.numpy())
    np.testing.assert_allclose(_run(proto, feeds), _torch(module, feeds, names), rtol=1e-4, atol=ATOL)
    if dynamic:  # another batch (and sequence length) through the symbolic axes
        other = zoo.feeds(name, proto, batch=3, seq=8, seed=5)
        np.testing.assert_allclose(_run(proto, other), _torch(module, other, names), rtol=1e-4, atol=ATOL)
    # cached per process, a fresh copy each call: editing one does not touch the next
    proto.graph.ClearField("node")
    assert len(zoo.export(name, exporter=exporter, dynamic=dynamic).graph.node) > 0


def test_weights_look_trained():
    module, _ = zoo.build("hf_llama")
    norms = [m.weight for m in module.modules() if type(m).__name__ == "LlamaRMSNorm"]
    assert norms and all(not torch.all(w == 1) for w in norms)
    bert, _ = zoo.build("hf_bert")
    biases = [m.bias for m in bert.modules() if isinstance(m, torch.nn.Linear)]
    assert biases and all(b.abs().min() > 0 for b in biases)
    lns = [m for m in bert.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert all(not torch.all(m.weight == 1) and m.bias.abs().max() > 0 for m in lns)


def test_timm_family_with_standin():
    if not zoo.timm_available():
        pytest.skip("timm is not installed")
    module, (x,) = zoo.build("timm_resnet18")
    bns = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not torch.all(m.running_var == 1) for m in bns)  # measured statistics
    proto = zoo.export("timm_resnet18", exporter="torchscript")
    feeds = zoo.feeds("timm_resnet18", proto)
    np.testing.assert_allclose(_run(proto, feeds), _torch(module, feeds, ("pixel_values",)), rtol=1e-4, atol=ATOL)
    # the stand-in was only there while timm imported: transformers sees no torchvision
    assert "torchvision" not in sys.modules or importlib.util.find_spec("torchvision") is not None


def test_exporter_failure_is_one_line(monkeypatch):
    class NotATensor(torch.nn.Module):
        def forward(self, pixel_values):
            return {"a": {pixel_values}}  # a set: neither exporter writes that

    fam = zoo.Family(lambda size, attn: NotATensor(), "image", library="timm")
    monkeypatch.setitem(zoo.FAMILIES, "bad", fam)
    with pytest.raises(zoo.ZooUnsupported, match=r"^bad: the torchscript exporter cannot export it: \w+") as e:
        zoo.export("bad", exporter="torchscript")
    assert "\n" not in str(e.value)


def test_onnx_zoo_weights():
    proto = zoo.onnx_zoo("squeezenet")
    assert [i.name for i in proto.graph.input] == ["data_0"]  # weights are initializers now
    assert not any(n.op_type == "ConstantOfShape" for n in proto.graph.node)
    out = _run(proto, zoo.onnx_zoo_feeds(proto))
    assert np.isfinite(out).all() and 0 < out.max() < 0.9  # a softmax that is not saturated
    convs = [t for t in proto.graph.initializer if t.name.endswith("_w_0")]
    w = onnx.numpy_helper.to_array(convs[0])
    assert 0.2 < w.std() * np.sqrt(np.prod(w.shape[1:]) / 2) < 5  # He-normal scale


def test_llama_fuses_rmsnorm_rotary_and_grouped_attention():
    """LLaMA's export (GQA: 4 query heads, 2 K/V heads): at opset 23 every RMSNorm, rotary
    embedding and attention is one ONNX node (K/V unrepeated) and onnxruntime gives the export's
    outputs; at the export's own opset the CPU backend's lowering writes graphopt's fused ops."""
    import graphopt
    from graphopt.onnx_io import to_onnx_model

    proto = zoo.export("hf_llama", exporter="torchscript")
    feeds = zoo.feeds("hf_llama", proto)
    want = _run(proto, feeds)
    out = to_onnx_model(graphopt.optimize(graphopt.load(proto), level=2, target_opset=23), target_opset=23)
    counts = {op: sum(n.op_type == op for n in out.graph.node) for op in
              ("RMSNormalization", "RotaryEmbedding", "Attention", "Expand", "Softmax", "ReduceMean")}
    assert counts == {"RMSNormalization": 5, "RotaryEmbedding": 4, "Attention": 2, "Expand": 0, "Softmax": 0,
                      "ReduceMean": 0}  # static axes: the folded cos/sin caches are halved at the batch size
    att = next(n for n in out.graph.node if n.op_type == "Attention")
    shapes = {v.name: v for v in onnx.shape_inference.infer_shapes(out).graph.value_info}
    assert shapes[att.input[1]].type.tensor_type.shape.dim[1].dim_value == 2  # K with its 2 heads
    np.testing.assert_allclose(_run(out, feeds), want, rtol=1e-4, atol=ATOL)
    compiled = graphopt.compile(proto, backend="cpu", level=2)
    fused = {n.qualified_op for n in compiled.graph if n.domain == "ai.graphopt"}
    assert {"ai.graphopt::RMSNormalization", "ai.graphopt::RotaryEmbedding", "ai.graphopt::Attention"} <= fused
    np.testing.assert_allclose(compiled.run(feeds)[0], want, rtol=1e-4, atol=ATOL)
