"""The transformer fusions on exported samples: `graphopt optimize --target-opset 20`
leaves one Gelu and one LayerNormalization per norm/activation of every layer, writes
opset 20, and the result runs in onnxruntime with the original's numbers.

Tolerance: the float32 default, rtol 1e-4 / atol 1e-5, over the whole model (measured
max abs error 1.2e-6 on outputs of magnitude ~4: onnxruntime's Gelu and
LayerNormalization kernels round in a different order than the chains they replace).
"""
import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from samples.models import example_inputs, export_onnx  # noqa: E402

# (sample, exported at opset, Gelu approximate, LayerNormalization count, Gelu count)
CASES = [
    ("bert_style", 17, "none", 5, 2),   # the exporter writes LayerNormalization itself at 17
    ("bert_style", 14, "none", 5, 2),   # ...and the ReduceMean/Pow/Sqrt/Div chain before 17
    ("gpt_style_block", 14, "tanh", 2, 1),
]


def cli(*args):
    env = dict(os.environ, GRAPHOPT_NO_PLUGINS="1")
    return subprocess.run([sys.executable, "-m", "graphopt", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def ort_run(model, feeds):
    data = model.SerializeToString() if not isinstance(model, (str, os.PathLike)) else str(model)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def optimize_and_compare(tmp_path, name, opset, target):
    """Export ``name`` at ``opset``, ``graphopt optimize --target-opset target`` it, check the
    result with onnx and against the original in onnxruntime; (op histogram, nodes, applied)."""
    src = export_onnx(name, tmp_path / "src.onnx", opset=opset)
    dst, rep = tmp_path / "opt.onnx", tmp_path / "report.json"
    r = cli("optimize", src, "-o", dst, "--target-opset", target, "--report", rep)
    assert r.returncode == 0, r.stderr

    model = onnx.load(str(dst))
    onnx.checker.check_model(model, full_check=True)
    assert {o.domain: o.version for o in model.opset_import}[""] == target
    applied = collections.Counter()
    for row in json.loads(rep.read_text())["passes"]:
        applied.update(row["applied"])

    inputs = example_inputs(name)
    feeds = {i.name: t.numpy() for i, t in zip(onnx.load(str(src)).graph.input, inputs)}
    (want,), (got,) = ort_run(src, feeds), ort_run(dst, feeds)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    return collections.Counter(n.op_type for n in model.graph.node), list(model.graph.node), applied


@pytest.mark.parametrize("name,opset,approximate,n_ln,n_gelu", CASES, ids=[f"{c[0]}-opset{c[1]}" for c in CASES])
def test_optimize_to_opset_20_fuses_every_layer_and_runs_in_onnxruntime(tmp_path, name, opset, approximate,
                                                                         n_ln, n_gelu):
    hist, nodes, applied = optimize_and_compare(tmp_path, name, opset, 20)
    assert hist["LayerNormalization"] == n_ln and hist["Gelu"] == n_gelu, hist
    assert not {"ReduceMean", "Erf", "Tanh", "Sqrt", "Pow"} & set(hist), hist
    assert {a.s.decode() for n in nodes if n.op_type == "Gelu" for a in n.attribute} == {approximate}
    if name == "bert_style":  # one Gelu in each encoder layer (the output keeps its exported name)
        gelu_outputs = sorted(n.output[0] for n in nodes if n.op_type == "Gelu")
        assert [o.split("/")[1] for o in gelu_outputs] == ["layers.0", "layers.1"]
    assert applied[f"gelu_{'erf' if approximate == 'none' else 'tanh'}_to_gelu"] == n_gelu
    assert applied["layernorm_chain_to_layernormalization"] == (0 if opset >= 17 else n_ln)


def test_optimize_to_opset_23_writes_onnx_attention_that_onnxruntime_runs(tmp_path):
    hist, nodes, applied = optimize_and_compare(tmp_path, "bert_style", 17, 23)
    assert hist["Attention"] == 2 and hist["Gelu"] == 2 and hist["LayerNormalization"] == 5, hist
    assert not {"Softmax", "Transpose", "Reshape"} & set(hist), hist  # the head split/merge went too
    assert applied["packed_heads"] == 2
    assert {a.name: a.i for n in nodes if n.op_type == "Attention" for a in n.attribute
            if a.name.endswith("num_heads")} == {"q_num_heads": 4, "kv_num_heads": 4}


def test_without_target_opset_gelu_is_refused_with_the_reason(tmp_path):
    src = export_onnx("bert_style", tmp_path / "src.onnx", opset=17)
    dst, rep = tmp_path / "opt.onnx", tmp_path / "report.json"
    r = cli("optimize", src, "-o", dst, "--report", rep)
    assert r.returncode == 0, r.stderr
    row = next(p for p in json.loads(rep.read_text())["passes"] if p["pass"] == "fuse_gelu")
    assert row["refused"] == [{"rule": "gelu_erf_to_gelu", "reason": "opset 17 < 20", "count": 2}]
    hist = collections.Counter(n.op_type for n in onnx.load(str(dst)).graph.node)
    assert hist["Erf"] == 2 and "Gelu" not in hist
