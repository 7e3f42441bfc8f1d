"""graphopt quantize: static (npz calibration), dynamic, float16; one-line errors, no partial output."""
import json

import numpy as np
import pytest

from quant_models import build_convnet
from graphopt.cli import main

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture
def model(tmp_path):
    import graphopt

    return graphopt.save(build_convnet(), tmp_path / "m.onnx")


@pytest.fixture
def npz(tmp_path):
    p = tmp_path / "calib.npz"
    np.savez(p, x=np.random.default_rng(0).standard_normal((40, 3, 8, 8)).astype(np.float32))
    return p


def test_static_with_report_and_budget(model, npz, tmp_path, capsys):
    out, rep = tmp_path / "m.int8.onnx", tmp_path / "rep.json"
    code = main(["quantize", str(model), "--calibration", str(npz), "-o", str(out), "--method", "entropy",
                 "--accuracy-budget", "0.05", "--batch-size", "8", "--report", str(rep)])
    assert code == 0
    text = capsys.readouterr().out
    assert "method=entropy" in text and "SQNR dB" in text and f"wrote {out}" in text
    r = json.loads(rep.read_text())
    assert r["calibration_batches"] == 5 and r["budget_met"] and [q["layer"] for q in r["quantized"]]
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": np.zeros((2, 3, 8, 8), np.float32)})[0]
    assert y.shape == (2, 10)
    assert sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(out)).graph.node) == 6


def test_json_and_other_modes(model, tmp_path, capsys):
    for mode in ("dynamic", "float16", "bfloat16"):
        out = tmp_path / f"m.{mode}.onnx"
        assert main(["quantize", str(model), "--mode", mode, "-o", str(out), "--json"]) == 0
        j = json.loads(capsys.readouterr().out)
        assert j["mode"] == mode and out.exists()
    ops = {n.op_type for n in onnx.load(str(tmp_path / "m.dynamic.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops


@pytest.mark.parametrize("setup,args,msg", [
    (None, [], "needs --calibration"),
    ("missing", ["--calibration", "nope.npz"], "no such calibration file"),
    ("wrong_name", [], "no array for model input 'x'"),
    ("wrong_shape", [], "not samples of the input's shape"),
    ("wrong_dtype", [], "is int32, the model expects float32"),
])
def test_bad_input_is_one_line_and_writes_nothing(model, tmp_path, capsys, setup, args, msg):
    out = tmp_path / "out.onnx"
    p = tmp_path / "c.npz"
    if setup == "wrong_name":
        np.savez(p, y=np.zeros((4, 3, 8, 8), np.float32))
    elif setup == "wrong_shape":
        np.savez(p, x=np.zeros((4, 8, 8), np.float32))
    elif setup == "wrong_dtype":
        np.savez(p, x=np.zeros((4, 3, 8, 8), np.int32))
    if setup and setup != "missing":
        args = ["--calibration", str(p)]
    code = main(["quantize", str(model), "-o", str(out), *args])
    err = capsys.readouterr().err
    assert code == 1 and msg in err and len(err.strip().splitlines()) == 1 and err.startswith("graphopt: error:")
    assert not out.exists() and not list(tmp_path.glob(".out.onnx*"))


def test_samples_as_full_inputs(model, tmp_path):
    p = tmp_path / "each.npz"
    np.savez(p, x=np.random.default_rng(0).standard_normal((3, 2, 3, 8, 8)).astype(np.float32))
    rep = tmp_path / "r.json"
    assert main(["quantize", str(model), "--calibration", str(p), "-o", str(tmp_path / "o.onnx"),
                 "--report", str(rep)]) == 0
    assert json.loads(rep.read_text())["calibration_batches"] == 3
