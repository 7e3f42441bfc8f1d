"""graphopt/opcount.py: the before/after op table and model-size line that `graphopt
optimize` prints, and its --json form."""
import json

import numpy as np

import graphopt
from graphopt import GraphBuilder
from graphopt.cli import main
from graphopt.opcount import compare, op_counts, weight_bytes


def _model():
    b = GraphBuilder(opset=17)
    x = b.input("x", (2, 4))
    w = np.arange(16, dtype=np.float32).reshape(4, 4)
    y = b.op("Add", b.op("MatMul", b.op("Identity", x), w), np.ones(4, np.float32))
    b.output(b.op("Relu", y), "y")
    return b.graph


def test_counts_and_sizes():
    g = _model()
    opt = graphopt.optimize(g, level=2)
    diff = compare(g, opt)
    assert op_counts(g) == {"Identity": 1, "MatMul": 1, "Add": 1, "Relu": 1}
    assert diff.after == op_counts(opt) == {"Gemm": 1, "Relu": 1}
    rows = {r["op"]: (r["before"], r["after"]) for r in diff.to_json()["ops"]}
    assert rows == {"Identity": (1, 0), "MatMul": (1, 0), "Add": (1, 0), "Relu": (1, 1), "Gemm": (0, 1)}
    assert diff.to_json()["nodes"] == {"before": 4, "after": 2}
    assert weight_bytes(g) == 16 * 4 + 4 * 4 == diff.weights_after
    text = diff.table().render(terminal=False)
    assert text.splitlines()[-1].split() == ["total", "4", "2", "-2"]
    assert ["Gemm", "0", "1", "+1"] in [ln.split() for ln in text.splitlines()]
    assert diff.size_line() == "model size: weights 80 B -> 80 B"


def test_optimize_prints_the_table_and_json(tmp_path, capsys):
    src = graphopt.save(_model(), tmp_path / "m.onnx")
    out = tmp_path / "o.onnx"
    assert main(["optimize", str(src), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    lines = [ln.split() for ln in text.splitlines()]
    assert ["Relu", "1", "1"] in lines and ["total", "4", "2", "-2"] in lines
    line = next(ln for ln in text.splitlines() if ln.startswith("model size:"))
    assert f"file {src.stat().st_size} B -> {out.stat().st_size} B" in line
    assert main(["optimize", str(src), "-o", str(out), "--json"]) == 0
    model = json.loads(capsys.readouterr().out)["model"]
    assert model["nodes"] == {"before": 4, "after": 2}
    assert model["file_bytes"] == {"before": src.stat().st_size, "after": out.stat().st_size}
    assert {"op": "Gemm", "before": 0, "after": 1} in model["ops"]
