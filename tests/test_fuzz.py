"""graphopt fuzz: a CI-sized differential run, the classification of each outcome on real and
planted disagreements, minimized reproducers, and the command line."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.cli import main
from graphopt.errors import GraphoptError, UnsupportedOpError
from graphopt.fuzz import Checker, fuzz, generate, minimize
from graphopt.fuzz.check import differ
from graphopt.fuzz.run import table_rows
from graphopt.ops.registry import get_schema


def _model(nodes, inputs, outputs, inits=(), opset=18):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=[numpy_helper.from_array(a, n) for n, a in inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def test_ci_sized_run_agrees_with_onnxruntime_on_every_level():
    stats = fuzz(seed=2026, count=30, backends=["cpu"], levels=[0, 1, 2, 3])
    assert stats.graphs == 30
    for (backend, level), counts in stats.counts.items():
        assert sum(counts.values()) == 30
        assert counts["mismatch"] == 0 and counts["crash"] == 0, (backend, level, stats.summary())
        assert counts["ok"] >= 25, (level, dict(counts))  # the graphs are valid: onnxruntime runs them
    assert len(stats.ops_seen) >= 30  # many different ops in 30 graphs


def test_what_optimize_writes_passes_the_checker_and_agrees_on_onnxruntime():
    stats = fuzz(seed=77, count=12, backends=["ort-optimized"], levels=[2])
    counts = stats.counts[("ort-optimized", 2)]
    assert counts["mismatch"] == counts["crash"] == 0 and counts["ok"] >= 10, stats.summary()


def test_a_wrong_graph_pass_shows_in_the_optimized_file(monkeypatch):
    from graphopt import passmanager
    from graphopt.patterns import P, Rule, X

    passmanager.all_passes()
    monkeypatch.setattr(passmanager, "_PASSES", dict(passmanager._PASSES))
    passmanager.rule_pass("wrong_relu", [Rule("relu_to_neg", P("Relu", X), lambda g, m: (
        m.replace_with(g.make_node("Neg", [m["x"]], output_types=[m["x"].type], before=m.root).output) or True))],
        opt_level=2)
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [3, 4])], [_vi("y", [3, 4])])
    checker = Checker(model, {"x": x})
    assert checker.classify("ort-optimized", 1).kind == "ok"  # -O1 does not run it
    assert checker.classify("ort-optimized", 2).kind == "mismatch"


def test_cuda_emu_takes_its_share():
    from graphopt.plugin_loader import get_backend

    ok, why = get_backend("cuda-emu").is_available()
    if not ok:
        pytest.skip(why)
    stats = fuzz(seed=3, count=1, backends=["cuda-emu"], levels=[2], share={"cuda-emu": 1.0})
    counts = stats.counts[("cuda-emu", 2)]
    assert counts["mismatch"] == counts["crash"] == 0 and sum(counts.values()) == 1, stats.summary()
    assert sum(fuzz(seed=3, count=3, backends=["cuda-emu"], levels=[2], share={"cuda-emu": 0.0})
               .counts[("cuda-emu", 2)].values()) == 0


def test_graphs_are_reproducible_from_seed_and_index():
    a, fa, _ = generate(11, 42)
    b, fb, _ = generate(11, 42)
    assert a.SerializeToString() == b.SerializeToString()
    assert fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)
    onnx.checker.check_model(a, full_check=True)
    assert generate(11, 43)[0].SerializeToString() != a.SerializeToString()


def test_ops_filter_and_unknown_op():
    rows = table_rows(["MatMul", "Div"])
    assert set(rows) == {"MatMul", "Div", "DivInt"}
    model, _, _ = generate(0, 1, rows)
    assert {n.op_type for n in model.graph.node} <= {"MatMul", "Div", "Round", "Clip", "Cast"}
    with pytest.raises(GraphoptError, match="no fuzz generator for op 'Frobnicate'"):
        table_rows(["Frobnicate"])


@pytest.fixture
def broken_trilu(monkeypatch):
    """Trilu's kernel ignores ``upper=0`` (returns the upper triangle): a planted wrong kernel."""
    s = get_schema("Trilu")
    real = s.kernel

    def wrong(inputs, attrs, ctx):
        return real(inputs, {**attrs, "upper": 1}, ctx)

    monkeypatch.setattr(s, "kernel", wrong)


def test_a_planted_wrong_kernel_is_a_mismatch_minimized_to_its_node(tmp_path, broken_trilu):
    stats = fuzz(seed=4, count=12, ops=["Trilu", "Add", "Relu", "Transpose"], backends=["cpu"], levels=[0, 2],
                 out_dir=tmp_path)
    assert stats.counts[("cpu", 0)]["mismatch"] >= 1 and stats.counts[("cpu", 2)]["mismatch"] >= 1
    written = [c for c in stats.cases if c.folder and not c.duplicate_of]
    assert written and all(c.outcome.kind == "mismatch" for c in stats.cases)
    for case in written:
        folder = tmp_path / case.folder
        model = onnx.load(folder / "model.onnx")
        info = json.loads((folder / "case.json").read_text())
        assert [n.op_type for n in model.graph.node] == ["Trilu"], info  # the few-node reproducer
        assert all(a.name == "upper" and a.i == 0 for a in model.graph.node[0].attribute if a.name == "upper")
        assert info["level"] == case.level and info["nodes"] >= info["minimized_nodes"] == 1
        z = np.load(folder / "inputs.npz")
        feeds = {k: z[k] for k in z.files}
        assert Checker(model, feeds).classify("cpu", case.level).kind == "mismatch"
        # the command the case names reproduces it: verify fails with exit status 3
        assert main(["verify", str(folder / "model.onnx"), "--inputs", str(folder / "inputs.npz"),
                     f"-O{case.level}"]) == 3


def test_a_kernel_that_raises_is_a_crash_and_a_missing_one_is_unsupported(monkeypatch):
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    model = _model([helper.make_node("Trilu", ["x"], ["y"])], [_vi("x", [2, 3])], [_vi("y", [2, 3])])
    checker = Checker(model, {"x": x})
    assert checker.classify("cpu", 0).kind == "ok"
    s = get_schema("Trilu")

    def boom(inputs, attrs, ctx):
        raise ValueError("planted")

    monkeypatch.setattr(s, "kernel", boom)
    out = checker.classify("cpu", 0)
    assert out.kind == "crash" and "planted" in out.message

    def missing(inputs, attrs, ctx):
        raise UnsupportedOpError("unsupported op Trilu (planted)")

    monkeypatch.setattr(s, "kernel", missing)
    assert checker.classify("cpu", 0).kind == "unsupported"


def test_onnxruntime_divergence_is_told_apart_by_the_reference():
    # Hardmax of a row holding NaN: onnx's reference and graphopt mark the NaN (NumPy's argmax),
    # onnxruntime another element: the disagreement is onnxruntime's
    x = np.array([[0.5, np.nan, 2.0], [1.0, -1.0, 0.0]], np.float32)
    model = _model([helper.make_node("Hardmax", ["x"], ["y"], axis=1)], [_vi("x", [2, 3])], [_vi("y", [2, 3])])
    checker = Checker(model, {"x": x})
    assert checker.ort is not None and differ(checker.ort, checker.ref[0]) is not None
    assert checker.classify("cpu", 2).kind == "ort_divergence"


def test_models_nobody_runs_are_invalid_not_failures():
    model = _model([helper.make_node("Reshape", ["x", "s"], ["y"])], [_vi("x", [4])], [_vi("y", None)],
                   [("s", np.array([3, 5], np.int64))])
    out = Checker(model, {"x": np.ones(4, np.float32)}).classify("cpu", 0)
    assert out.kind == "invalid", out


def test_minimize_keeps_the_failing_node_and_feeds_it_the_values_it_saw():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Exp", ["a"], ["b"]),
             helper.make_node("Neg", ["b"], ["c"]), helper.make_node("Sigmoid", ["c"], ["d"]),
             helper.make_node("Tanh", ["d"], ["y"]), helper.make_node("Abs", ["x"], ["z"])]
    model = _model(nodes, [_vi("x", [3, 4])], [_vi("y", [3, 4]), _vi("z", [3, 4])])
    feeds = {"x": rng.standard_normal((3, 4)).astype(np.float32)}

    def has_neg(m, f):  # "fails" while a Neg remains and is fed what it saw in the full model
        negs = [n for n in m.graph.node if n.op_type == "Neg"]
        if negs and negs[0].input[0] in f:
            assert np.allclose(f[negs[0].input[0]], np.exp(np.maximum(feeds["x"], 0)))
        return bool(negs)

    small, small_feeds = minimize(model, feeds, has_neg)
    assert [n.op_type for n in small.graph.node] == ["Neg"]
    assert list(small_feeds) == ["b"]


def test_command_line(tmp_path, capsys, broken_trilu):
    assert main(["fuzz", "--count", "2", "--level", "1", "--seed", "5", "--out", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert "cpu" in out and "-O1" in out and "2 graphs" in out
    report = tmp_path / "r.json"
    rc = main(["fuzz", "--ops", "Trilu", "--count", "6", "--level", "0", "--out", str(tmp_path / "cases"),
               "--report", str(report), "--json", "--no-isolate"])  # the planted kernel lives in this process
    assert rc == 3
    result = json.loads(report.read_text())
    assert result["results"][0]["mismatch"] >= 1 and (tmp_path / "cases").is_dir()
    assert main(["fuzz", "--ops", "NoSuchOp", "--count", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NoSuchOp" in err


def test_recheck_says_which_failures_of_a_report_are_fixed(tmp_path, capsys, monkeypatch, broken_trilu):
    report = tmp_path / "r.json"
    assert main(["fuzz", "--ops", "Trilu", "--count", "4", "--level", "0", "--out", str(tmp_path / "cases"),
                 "--report", str(report), "--no-isolate", "--no-minimize"]) == 3
    failed = {c["graph"] for c in json.loads(report.read_text())["cases"]}
    again = tmp_path / "again.json"
    assert main(["fuzz", "--recheck", str(report), "--no-isolate", "--report", str(again)]) == 3  # still broken
    rows = json.loads(again.read_text())["rows"]
    assert {r["graph"] for r in rows} == failed and all(r["now"] == "mismatch" for r in rows)
    capsys.readouterr()
    monkeypatch.undo()  # the kernel fixed
    assert main(["fuzz", "--recheck", str(report), "--no-isolate"]) == 0
    out = capsys.readouterr().out
    assert f"{len(failed)} fixed, 0 still failing" in out and "mismatch  ok" in out
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert main(["fuzz", "--recheck", str(tmp_path / "bad.json")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.json" in err and "not a report" in err


def test_an_output_of_dequantize_linear_may_differ_by_one_quantization_step():
    from graphopt.fuzz.check import _quantization_steps

    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]), helper.make_node("Relu", ["x"], ["r"])]
    model = _model(nodes, [_vi("x", [4])], [_vi("y", [4]), _vi("r", [4])],
                   [("s", np.float32(0.1)), ("z", np.uint8(128))])
    steps = _quantization_steps(model)
    assert steps[1] is None and steps[0] == pytest.approx(0.1)
    ref = [np.array([0.1, 0.2, 0.3, 0.4], np.float32), np.zeros(4, np.float32)]
    one_step = [ref[0] + np.float32(0.1) * np.array([1, 0, -1, 0], np.float32), ref[1]]
    assert differ(ref, one_step, steps=steps) is None
    assert differ(ref, [ref[0] + np.float32(0.2), ref[1]], steps=steps) is not None
    assert differ(ref, [ref[0], ref[1] + np.float32(0.1)], steps=steps) is not None  # not for the float output


SEGV_PLUGIN = '''
import os, signal
from graphopt.passmanager import PassResult, register_pass


@register_pass("segv_on_softsign", opt_level=2, order=99)
def segv(graph, ctx):
    "Kills the process on a Softsign, as a crashing native kernel would."
    if any(n.op_type == "Softsign" for n in graph):
        os.kill(os.getpid(), signal.SIGSEGV)
    return PassResult(False)
'''


def test_a_crash_by_a_signal_costs_one_cell_in_a_worker_process(tmp_path):
    plugin = tmp_path / "segv_plugin.py"
    plugin.write_text(SEGV_PLUGIN)
    stats = fuzz(seed=4, count=2, ops=["Softsign", "Relu"], backends=["cpu"], levels=[2, 0],
                 out_dir=tmp_path / "cases", isolate=True, plugins=[str(plugin)])
    assert stats.graphs == 2
    # -O0 runs no pass: checked by a fresh worker after the one checking -O2 died
    assert stats.counts[("cpu", 0)]["ok"] == 2
    assert stats.counts[("cpu", 2)]["crash"] == 1 and stats.counts[("cpu", 2)]["ok"] == 1
    case = next(c for c in stats.cases if c.level == 2)
    assert "SIGSEGV" in case.outcome.message and case.minimized_nodes is None
    info = json.loads((tmp_path / "cases" / case.folder / "case.json").read_text())
    assert info["graph"] == case.index and "Softsign" in info["ops"]


# -- reproducers of the 10,000-graph run (benchmarks/results/fuzz-10000-2026-12-07.txt) -------------


def test_gelu_tanh_then_lp_normalization_of_a_length_one_axis_g1407():
    """GELU (tanh) of -12.9 is -0; the CPU kernels' tanh gave -(1 - 2^-24) there, so 1 + tanh kept a
    residue of -3.9e-7 and LpNormalization (p=1 over an axis of length 1: x / |x|) turned it into -1
    where onnxruntime gives 0."""
    x = np.array([-12.921913, 0.2998771, -2.0876524, 5.121686], np.float32).reshape(1, 4, 1, 1)
    model = _model([helper.make_node("Gelu", ["x"], ["g"], approximate="tanh"),
                    helper.make_node("LpNormalization", ["g"], ["y"], axis=2, p=1)],
                   [_vi("x", [1, 4, 1, 1])], [_vi("y", [1, 4, 1, 1])], opset=21)
    checker = Checker(model, {"x": x})
    for level in (0, 2):
        assert checker.classify("cpu", level).kind == "ok", level
    # tanh is exactly +-1 where float32 rounds it there (|x| > 13 ln 2), as onnxruntime gives it
    t = np.array([-9.02, 9.02, -12.9, 20.0, 9.0], np.float32)
    model = _model([helper.make_node("Tanh", ["x"], ["y"])], [_vi("x", [5])], [_vi("y", [5])])
    assert Checker(model, {"x": t}).classify("cpu", 2).kind == "ok"


def test_a_ceil_mode_pool_onnx_infers_wrong_is_written_in_floor_mode_g9926():
    """LpPool (ceil_mode=1, kernel 1, stride 2) of a length-2 axis: ONNX drops the second window,
    which would start past the input (size 1, as onnxruntime's kernel and graphopt give); onnx's
    inference counts it (2), and onnxruntime planned a buffer by that size: after -O2 folded the
    BatchNormalization, it refused the written file. Floor mode has the same windows and the size
    onnx's inference gets right."""
    rng = np.random.default_rng(9926)
    r = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    inits = [("w", r(3, 2, 2)), ("b", r(3)), ("scale", r(3)), ("bias", r(3)), ("mean", r(3)),
             ("var", np.abs(r(3)) + 0.5), ("c", r(7, 3, 2)), ("lo", np.float32(0)), ("hi", np.float32(6))]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["conv"], pads=[1, 0]),
             helper.make_node("BatchNormalization", ["conv", "scale", "bias", "mean", "var"], ["bn"]),
             helper.make_node("Add", ["bn", "c"], ["add"]),
             helper.make_node("Clip", ["add", "lo", "hi"], ["clip"]),
             helper.make_node("LpPool", ["bn"], ["pool"], ceil_mode=1, kernel_shape=[1], p=3, strides=[2]),
             helper.make_node("IsNaN", ["pool"], ["nan"])]
    model = _model(nodes, [_vi("x", [7, 2, 2])], [_vi("clip", [7, 3, 2]), _vi("nan", None, TensorProto.BOOL)],
                   inits, opset=20)
    checker = Checker(model, {"x": r(7, 2, 2)})
    assert checker.ort[1].shape == (7, 3, 1)
    for level in (1, 2):
        assert checker.classify("ort-optimized", level).kind == "ok", level


@pytest.mark.parametrize("op, shape, attrs", [
    ("LpPool", (7, 5, 3, 1), dict(p=1, kernel_shape=[2, 1], dilations=[2, 2])),            # g7764
    ("MaxPool", (3, 4, 5, 5), dict(kernel_shape=[2, 1], dilations=[2, 2], ceil_mode=1)),  # g2555, H 1 -> 5
])
def test_same_padding_with_dilations_follows_the_spec_where_onnxruntime_does_not(op, shape, attrs):
    """SAME: output ceil(in / stride), pads (out - 1) * stride + (k - 1) * dilation + 1 - in, the odd
    one at the end (ONNX's pooling spec). onnxruntime pads by the undilated kernel (output 2 for an
    input of 3 in g7764), so graphopt's SAME model is checked against onnxruntime on the same pool
    with those pads written out."""
    import onnxruntime as ort

    from graphopt.fuzz.check import run_graphopt

    pads_begin, pads_end = [], []
    for n, k, d in zip(shape[2:], attrs["kernel_shape"], attrs["dilations"]):
        total = max((n - 1) + (k - 1) * d + 1 - n, 0)
        pads_begin.append(total // 2)
        pads_end.append(total - total // 2)
    x = np.random.default_rng(7764).standard_normal(shape).astype(np.float32)
    same = _model([helper.make_node(op, ["x"], ["y"], auto_pad="SAME_UPPER", **attrs)],
                  [_vi("x", list(shape))], [_vi("y", None)], opset=21)
    explicit = _model([helper.make_node(op, ["x"], ["y"], pads=pads_begin + pads_end, **attrs)],
                      [_vi("x", list(shape))], [_vi("y", None)], opset=21)
    want = ort.InferenceSession(explicit.SerializeToString()).run(None, {"x": x})
    assert want[0].shape == shape  # stride 1: SAME keeps the size
    for level in (0, 2):
        got, exc = run_graphopt(same, {"x": x}, "cpu", level)
        assert exc is None and differ(want, got) is None, (level, exc)
