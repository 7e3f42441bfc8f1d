"""onnxsim pass: runs onnx-simplifier on the graph when named (alone or as +onnxsim on
top of a level), keeps names and numbers, never joins a default pipeline, and says
clearly when onnxsim is missing or fails."""
import sys

import numpy as np
import pytest

import graphopt
from graphopt import GraphBuilder
from graphopt.cli import main
from graphopt.errors import InputError, PassError
from graphopt.passmanager import default_pipeline
from graphopt.testing import assert_same_outputs, run_passes

from pass_helpers import ops

onnxsim = pytest.importorskip("onnxsim")


def build():
    """y = Relu(Identity(x) + (c1 + c2)): onnxsim folds the constants and drops the Identity."""
    b = GraphBuilder(opset=17)
    x = b.input("x", ("n", 4))
    c = b.op("Add", np.ones(4, np.float32), np.full(4, 2, np.float32))
    b.output(b.op("Relu", b.op("Add", b.op("Identity", x), c)), "y")
    return b.graph


def test_simplifies_in_place_and_keeps_names_and_numbers():
    g = build()
    g0 = g.clone()
    rec = run_passes(g, ["onnxsim"], fixed_point=False).records[0]
    assert rec.modified and rec.stats == {"nodes_removed": 2}
    assert ops(g) == ["Add", "Relu"]
    assert [v.name for v in g.inputs] == ["x"] and g.outputs[0].name == "y"
    assert g.inputs[0].shape == ("n", 4)
    assert_same_outputs(g0, g)


def test_second_run_on_the_same_graph_does_not_call_onnxsim(monkeypatch):
    g = build()
    run_passes(g, ["onnxsim"], fixed_point=False)
    monkeypatch.setattr(onnxsim, "simplify", lambda *a, **k: pytest.fail("onnxsim called again"))
    assert not run_passes(g, ["onnxsim"], fixed_point=False).records[0].modified


def test_nothing_to_simplify_is_not_modified():
    b = GraphBuilder(opset=17)
    b.output(b.op("Relu", b.input("x", (2, 3))), "y")
    assert not run_passes(b.graph, ["onnxsim"], fixed_point=False).records[0].modified


def test_in_no_default_pipeline():
    for level in range(4):
        assert "onnxsim" not in [p.name for p in default_pipeline(level)]


def test_plus_adds_onnxsim_before_the_level_pipeline():
    g, report = graphopt.optimize(build(), level=2, passes=["+onnxsim"], return_report=True)
    names = [r.name for r in report.records if r.iteration == 1]
    assert names[0] == "onnxsim" and "fold_constants" in names and "simplify_algebra" in names
    assert ops(g) == ["Add", "Relu"]
    assert_same_outputs(build(), g)


def test_named_list_and_plus_entries_do_not_mix():
    with pytest.raises(InputError, match="not both"):
        graphopt.optimize(build(), passes=["onnxsim", "+fold_constants"])


def test_missing_onnxsim_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxsim", None)  # import onnxsim raises ImportError
    with pytest.raises(PassError, match=r"pass 'onnxsim' .*needs the onnxsim package \(pip install onnxsim\)"):
        run_passes(build(), ["onnxsim"])


def test_onnxsim_failure_leaves_the_graph_and_says_why(monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("boom\nmore")
    monkeypatch.setattr(onnxsim, "simplify", boom)
    g = build()
    rec = run_passes(g, ["onnxsim"], fixed_point=False).records[0]
    assert not rec.modified and ops(g) == ["Add", "Identity", "Add", "Relu"]
    assert {why for (_, why) in rec.refused} == {"onnxsim failed: boom"}


def test_cli_passes_plus_onnxsim_writes_a_model_onnxruntime_runs(tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    src, dst = tmp_path / "m.onnx", tmp_path / "m.opt.onnx"
    graphopt.save(build(), src)
    assert main(["optimize", str(src), "-o", str(dst), "--passes", "+onnxsim", "--json"]) == 0
    assert '"pass": "onnxsim"' in capsys.readouterr().out
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    (y,) = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(y, np.maximum(x + 3, 0), rtol=1e-6)
    assert main(["optimize", str(src), "-o", str(dst), "--passes", "onnxsim,eliminate_dead_code"]) == 0
