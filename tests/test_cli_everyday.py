"""The CLI as users of onnxsim, Polygraphy and onnxruntime expect it: input shapes, verify running the
written file, compare, compile --emit, quantize's opset and batch checks, one-line errors, plain tables."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

from graphopt.cli import main  # noqa: E402
from graphopt.commands.inputs import make_feeds, parse_input_shapes, resolve_shapes  # noqa: E402
from graphopt.errors import InputError  # noqa: E402


def cli(*args, input=None):
    env = dict(os.environ, GRAPHOPT_NO_PLUGINS="1")
    return subprocess.run([sys.executable, "-m", "graphopt", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120, input=input)


def one_line_error(r, *needles):
    assert r.returncode != 0, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def save(model, path):
    onnx.save(model, str(path))
    return path


def seq_model(path, op="Add", opset=17):
    """out[batch, seq] = x op y: a BERT-like pair of inputs with a batch and a sequence dim."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "seq"])
    g = helper.make_graph([helper.make_node(op, ["x", "y"], ["out"], name="n0")], "g", [x, y], [out])
    return save(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8), path)


def relu_model(path, op="Relu", opset=17):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    g = helper.make_graph([helper.make_node(op, ["x"], ["y"], name="n0")], "g", [x], [y])
    return save(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8), path)


def run_main(capsys, *args):
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


# -- 1. shapes and inputs ----------------------------------------------------------------------

def test_input_shapes_resolve_by_name_and_never_fill_other_dims():
    import graphopt

    b = graphopt.builder.GraphBuilder()
    x, m = b.input("input_ids", ("batch", "seq"), "int64"), b.input("mask", ("batch", "seq"), "int64")
    b.output(b.op("Add", x, m), "y")
    g = b.graph
    with pytest.raises(InputError, match=r"input 'input_ids' dim 1 \('seq'\) is symbolic.*--input-shape input_ids:1,N"):
        resolve_shapes(g, {}, batch=1)
    shapes = resolve_shapes(g, parse_input_shapes(["input_ids:2,7"]), batch=1)
    assert shapes == {"input_ids": (2, 7), "mask": (2, 7)}  # the mask takes batch and seq from the symbols
    assert resolve_shapes(g, {"input_ids": (4, 9), "mask": (4, 9)}, batch=1)["mask"] == (4, 9)
    with pytest.raises(InputError, match="sets symbolic dim 'seq' to 8, but --input-shape input_ids set it to 7"):
        resolve_shapes(g, {"input_ids": (2, 7), "mask": (2, 8)})
    with pytest.raises(InputError, match="2 dims given.*rank 2|3 dims given"):
        resolve_shapes(g, {"input_ids": (2, 7, 1)})
    with pytest.raises(InputError, match="no input 'ids'.*input_ids, mask"):
        resolve_shapes(g, {"ids": (1, 2)})
    with pytest.raises(InputError, match="expected NAME:D0"):
        parse_input_shapes(["1,128"])
    assert parse_input_shapes(["input:0:1,3", "s:"]) == {"input:0": (1, 3), "s": ()}
    feeds = make_feeds(g, None, {"input_ids": (3, 5)}, batch=1)
    assert feeds["input_ids"].shape == feeds["mask"].shape == (3, 5)
    assert g.inputs[0].type.shape == ("batch", "seq")  # the graph itself is left symbolic


def test_run_and_bench_take_input_shapes(tmp_path, capsys):
    m = seq_model(tmp_path / "seq.onnx")
    rc, _, _ = run_main(capsys, "run", m, "-o", tmp_path / "o.npz")
    assert rc == 1 and not (tmp_path / "o.npz").exists()
    r = cli("run", m)
    one_line_error(r, "input 'x' dim 1 ('seq') is symbolic", "--input-shape x:1,N")
    rc, out, _ = run_main(capsys, "compare", m, "--runners", "onnxruntime,cpu", "--input-shape", "x:3,5", "--json")
    res = json.loads(out)
    assert rc == 0 and res["ok"] and res["inputs"] == {"x": [3, 5], "y": [3, 5]}
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "y": np.ones((2, 3), np.float32)}
    np.savez(tmp_path / "in.npz", **feeds)
    rc, out, _ = run_main(capsys, "bench", m, "--inputs", tmp_path / "in.npz", "--repeat", "2", "--warmup", "0",
                          "--json")
    res = json.loads(out)
    assert rc == 0 and res["inputs"] == {"x": [2, 3], "y": [2, 3]} and res["graphopt_ms"] > 0
    rc, out, _ = run_main(capsys, "bench", m, "--input-shape", "x:4,2", "--repeat", "1", "--json")
    assert json.loads(out)["inputs"] == {"x": [4, 2], "y": [4, 2]}
    rc, _, _ = run_main(capsys, "run", m, "--inputs", tmp_path / "in.npz", "--input-shape", "x:3,3")
    assert rc == 1  # the file's x is [2, 3]: a contradiction, not a silent choice


# -- 2. verify runs the written file; compare ---------------------------------------------------

def test_verify_runs_the_optimized_file_in_onnxruntime(tmp_path, capsys, monkeypatch):
    import graphopt

    m = relu_model(tmp_path / "m.onnx")
    rc, out, _ = run_main(capsys, "verify", m, "--json")
    res = json.loads(out)
    assert rc == 0 and res["ok"] and [r["against"] for r in res["optimized_file"]] == ["optimized file, onnxruntime"]
    real_save = graphopt.save

    def broken_export(graph, path, **kw):  # an exporter bug: the written file computes something else
        g = graph.clone()
        next(iter(g)).op_type = "Neg"
        return real_save(g, path, **kw)

    monkeypatch.setattr(graphopt, "save", broken_export)
    rc, out, _ = run_main(capsys, "verify", m, "--json")
    res = json.loads(out)
    assert rc == 3 and not res["ok"]
    assert all(r["ok"] for r in res["outputs"]) and not res["optimized_file"][0]["ok"]


def test_compare_two_models_two_runners_and_saved_outputs(tmp_path, capsys):
    a, b = relu_model(tmp_path / "a.onnx"), relu_model(tmp_path / "b.onnx", op="Abs")
    rc, out, _ = run_main(capsys, "compare", a, b, "--json")
    res = json.loads(out)
    row = res["outputs"][0]
    assert rc == 3 and not res["ok"] and row["max_abs"] > 0 and (row["rtol"], row["atol"]) == (1e-4, 1e-5)
    rc, out, _ = run_main(capsys, "compare", a, "--runners", "onnxruntime,cpu")
    assert rc == 0 and "all outputs match" in out and "max abs err" in out
    ref = tmp_path / "ref.npz"
    rc, out, _ = run_main(capsys, "compare", a, "--save-outputs", ref)
    assert rc == 0
    with np.load(ref) as z:
        x, y = z["input:x"], z["y"]
    np.testing.assert_array_equal(y, np.maximum(x, 0))  # onnxruntime's Relu of the saved inputs
    rc, out, _ = run_main(capsys, "compare", a, "--runner", "cpu", "--load-outputs", ref, "--json")
    assert rc == 0 and json.loads(out)["ok"]
    rc, out, _ = run_main(capsys, "compare", b, "--load-outputs", ref, "--json")
    assert rc == 3  # Abs differs from the saved Relu outputs on the saved (negative) inputs
    r = cli("compare", a)
    one_line_error(r, "nothing to compare with")


# -- 3. compile --emit ---------------------------------------------------------------------------

def test_compile_emit_writes_source_launch_plan_and_report(tmp_path, capsys):
    import graphopt
    from graphopt.commands.inputs import specialize
    from graphopt.plugin_loader import get_backend
    from graphopt.plugins.cuda.kernel import translation_unit

    ok, why = get_backend("cuda-emu").is_available()
    if not ok:
        pytest.skip(why)
    m = seq_model(tmp_path / "seq.onnx", op="Mul")
    out = tmp_path / "emit"
    rc, text, _ = run_main(capsys, "compile", m, "--backend", "cuda-emu", "--input-shape", "x:2,33", "--emit", out)
    assert rc == 0, text
    plan = json.loads((out / "launch_plan.json").read_text())
    src = (out / "kernels.cu").read_text()
    report = json.loads((out / "report.json").read_text())
    assert plan["launches"] and report["backend"]["launches"] == len(plan["launches"])
    for launch in plan["launches"]:
        assert f"void __launch_bounds__({int(np.prod(launch['block']))}) {launch['kernel']}(" in src
        assert [(a["tensor"], a["buffer"]) for a in launch["args"]] == [("out", "output"), ("x", "input"),
                                                                        ("y", "input")]
    assert "float32[2,33]" in (out / "graph.txt").read_text()
    # the files describe the executable that computes the model: same source, right numbers
    g = graphopt.load(m)
    cm = graphopt.compile(specialize(g, {"x": (2, 33), "y": (2, 33)}), backend="cuda-emu")
    assert translation_unit(cm.executable.lowered.kernels) == src
    x, y = np.random.default_rng(0).standard_normal((2, 2, 33)).astype(np.float32)
    np.testing.assert_allclose(cm(x, y)[0], x * y, rtol=1e-6)
    r = cli("compile", m, "--backend", "cuda-emu", "--emit", tmp_path / "e2")
    one_line_error(r, "dim 1 ('seq') is symbolic")
    assert not (tmp_path / "e2").exists()


# -- 4. quantize: the opset is raised, the batch checked first ----------------------------------

def conv_model(path, opset):
    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], rng.standard_normal(108).astype(np.float32))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 6, 6])
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                           helper.make_node("Relu", ["c"], ["y"], name="relu")], "g", [x], [y], initializer=[w])
    return save(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=4), path)


def test_quantize_raises_an_old_opset_and_says_so(tmp_path, capsys):
    m = conv_model(tmp_path / "m9.onnx", opset=9)
    rng = np.random.default_rng(1)
    data = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", x=data)
    out = tmp_path / "q.onnx"
    rc, text, _ = run_main(capsys, "quantize", m, "--calibration", tmp_path / "cal.npz", "--batch-size", "8", "-o", out)
    assert rc == 0 and "raised the model's opset from 9 to 13 (per-channel weight scales need opset 13)" in text
    q = onnx.load(str(out))
    assert {o.domain: o.version for o in q.opset_import}[""] == 13
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)
    x = data[:2]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    want = ort.InferenceSession(str(m), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    step = (want.max() - want.min()) / 255
    assert np.abs(got - want).max() <= 4 * step  # int8 activations and weights: a few steps at most


def test_quantize_checks_the_calibration_batch_before_any_work(tmp_path, capsys, monkeypatch):
    import graphopt.quantize as gq

    m = conv_model(tmp_path / "m.onnx", opset=17)
    np.savez(tmp_path / "cal.npz", x=np.zeros((5, 3, 8, 8), np.float32))
    monkeypatch.setattr(gq, "quantize_static", lambda *a, **k: pytest.fail("calibrated before checking"))
    rc, _, err = run_main(capsys, "quantize", m, "--calibration", tmp_path / "cal.npz", "-o", tmp_path / "q.onnx")
    assert rc == 1 and "5 sample(s), fewer than one batch of 32: use --batch-size 5" in err
    assert not (tmp_path / "q.onnx").exists()


# -- 5. errors ---------------------------------------------------------------------------------------

def test_argparse_errors_are_one_line_with_a_hint(tmp_path):
    m = relu_model(tmp_path / "m.onnx")
    line = one_line_error(cli("run", m, "--batchh", "2"), "graphopt run: error: unrecognized argument --batchh",
                          "did you mean --batch?")
    assert line.endswith("(see 'graphopt run --help')")
    one_line_error(cli("bench", m, "--repeat", "0"), "--repeat", "must be at least 1")
    one_line_error(cli("run", m, "--batch", "-1"), "--batch", "must be at least 1")
    one_line_error(cli("verify", m, "--rtol", "nan"), "--rtol")


def test_broken_pipe_old_opset_warning_and_wrong_verify_input(tmp_path):
    p = subprocess.run(f"{sys.executable} -m graphopt passes | head -1", shell=True, capture_output=True,
                       text=True, env=dict(os.environ, GRAPHOPT_NO_PLUGINS="1"), timeout=120)
    assert p.stdout.startswith("pass") and p.stderr == "", p.stderr
    old = relu_model(tmp_path / "old.onnx", opset=9)
    r = cli("inspect", old)
    assert r.returncode == 0 and r.stderr.strip().splitlines() == [
        f"graphopt: warning: {old}: opset 9 is older than 11; graphopt's ops follow opset 11 and newer, so some "
        "nodes may not run"], r.stderr
    m = relu_model(tmp_path / "m.onnx")
    np.savez(tmp_path / "in.npz", z=np.zeros((2, 3), np.float32))
    one_line_error(cli("verify", m, "--inputs", tmp_path / "in.npz"), "unknown input 'z'", "x")
    np.savez(tmp_path / "in.npz", x=np.zeros((3, 3), np.float32))
    one_line_error(cli("verify", m, "--inputs", tmp_path / "in.npz"), "input 'x' has shape (3, 3)")


def test_a_failing_command_leaves_no_output(tmp_path, capsys):
    m = relu_model(tmp_path / "m.onnx")
    out = tmp_path / "o.onnx"
    rc, _, err = run_main(capsys, "optimize", m, "-o", out, "--report", tmp_path / "nodir" / "r.json")
    assert rc == 1 and "--report" in err and "does not exist" in err and not out.exists()


def test_api_refuses_bad_levels_and_pass_lists(tmp_path):
    import graphopt

    g = graphopt.load(relu_model(tmp_path / "m.onnx"))
    for level in (7, -1, 2.5, True):
        with pytest.raises(InputError, match="level must be 0, 1, 2 or 3"):
            graphopt.optimize(g, level=level)
        with pytest.raises(InputError, match="level must be 0, 1, 2 or 3"):
            graphopt.compile(g, level=level)
    with pytest.raises(InputError, match="pass names"):
        graphopt.optimize(g, passes=[3])
    one = graphopt.optimize(g, passes="eliminate_dead_code,fold_constants", return_report=True)[1]
    assert [r.name for r in one.records][:2] == ["eliminate_dead_code", "fold_constants"] or one.records


# -- 6. tables ----------------------------------------------------------------------------------------

def test_tables_are_plain_when_piped_and_json_is_unchanged(capsys):
    rc, out, _ = run_main(capsys, "passes")
    lines = out.splitlines()
    assert lines[0].split() == ["pass", "kind", "level", "source", "rewrite"]
    rc, js, _ = run_main(capsys, "passes", "--json")
    rows = json.loads(js)
    assert len(lines) == len(rows) + 1  # one row per line, never wrapped
    assert all(line.split()[0] == r["name"] for line, r in zip(lines[1:], rows))
    assert set(rows[0]) == {"name", "kind", "level", "source", "summary"}
