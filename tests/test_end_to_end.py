"""The foundation's promise on models exported from PyTorch: `graphopt optimize` at -O2
removes nodes, writes a model that passes onnx's full check, runs in onnxruntime and
matches the original; `graphopt run --backend cpu` matches onnxruntime too."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from samples.models import export_onnx  # noqa: E402

MODELS = ["resnet_style", "bert_style"]


def cli(*args):
    env = dict(os.environ, GRAPHOPT_NO_PLUGINS="1")
    return subprocess.run([sys.executable, "-m", "graphopt", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module", params=MODELS)
def exported(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    path = d / f"{request.param}.onnx"
    export_onnx(request.param, path)
    return request.param, path


def feeds_for(path):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) else 2 for d in i.shape]
        if "int64" in i.type:
            hi = 2 if "mask" in i.name else 100
            feeds[i.name] = rng.integers(0, hi, shape).astype(np.int64)
            if "mask" in i.name:
                feeds[i.name][:, 0] = 1
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return sess, feeds


def test_optimize_removes_nodes_and_stays_correct(exported, tmp_path):
    name, src = exported
    dst = tmp_path / "opt.onnx"
    rep = tmp_path / "report.json"
    r = cli("optimize", src, "-o", dst, "-O2", "--report", rep)
    assert r.returncode == 0, r.stderr
    report = json.loads(rep.read_text())
    before, after = report["nodes_before"], report["nodes_after"]
    assert after < before, f"{name}: {before} -> {after}"
    print(f"{name}: {before} -> {after} nodes")
    onnx.checker.check_model(onnx.load(str(dst)), full_check=True)
    sess, feeds = feeds_for(src)
    expected = sess.run(None, feeds)
    got = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, feeds)
    for e, g in zip(expected, got):
        assert e.dtype == g.dtype and e.shape == g.shape
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)  # reassociated sums (BN folding, fusion)
    out_names = [o.name for o in sess.get_outputs()]
    assert [o.name for o in onnx.load(str(dst)).graph.output] == out_names


def test_run_on_cpu_backend_matches_onnxruntime(exported, tmp_path):
    name, src = exported
    sess, feeds = feeds_for(src)
    npz = tmp_path / "in.npz"
    np.savez(npz, **feeds)
    out = tmp_path / "out.npz"
    r = cli("run", src, "--backend", "cpu", "--inputs", npz, "-o", out)
    assert r.returncode == 0, r.stderr
    expected = sess.run(None, feeds)
    with np.load(out) as z:
        got = [z[o.name] for o in sess.get_outputs()]
    for e, g in zip(expected, got):
        assert e.dtype == g.dtype
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)


def test_verify_command_passes(exported):
    name, src = exported
    r = cli("verify", src, "-O2", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(r.stdout)
    assert res["ok"] and all(o["ok"] for o in res["outputs"])
