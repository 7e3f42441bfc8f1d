"""Bad input gets one clear line, a non-zero exit, no traceback and no output file."""
import os
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402


def cli(*args, cwd=None):
    env = dict(os.environ, GRAPHOPT_NO_PLUGINS="1")
    return subprocess.run([sys.executable, "-m", "graphopt", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def assert_one_line_error(r, *needles):
    assert r.returncode != 0, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert lines[0].startswith("graphopt: error: "), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])


def relu_model(path, op="Relu", domain="", opset=17):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    node = helper.make_node(op, ["x"], ["y"], name="n0", domain=domain)
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    m = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=imports, ir_version=8)
    onnx.save(m, path)
    return path


@pytest.fixture
def good(tmp_path):
    return relu_model(tmp_path / "good.onnx")


def test_truncated_file(tmp_path, good):
    data = good.read_bytes()
    bad = tmp_path / "trunc.onnx"
    bad.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out.onnx"
    r = cli("optimize", bad, "-o", out)
    assert_one_line_error(r, "trunc.onnx")
    assert not out.exists()


def test_random_bytes(tmp_path):
    bad = tmp_path / "noise.onnx"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    out = tmp_path / "out.onnx"
    r = cli("optimize", bad, "-o", out)
    assert_one_line_error(r, "noise.onnx")
    assert not out.exists()


def test_missing_file(tmp_path):
    r = cli("inspect", tmp_path / "nope.onnx")
    assert_one_line_error(r, "nope.onnx")


def test_cyclic_graph(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="first"),
             helper.make_node("Relu", ["a"], ["b"], name="second"),
             helper.make_node("Identity", ["a"], ["y"], name="third")]
    m = helper.make_model(helper.make_graph(nodes, "cyc", [x], [y]), opset_imports=[helper.make_opsetid("", 17)],
                          ir_version=8)
    p = tmp_path / "cyclic.onnx"
    p.write_bytes(m.SerializeToString())
    out = tmp_path / "out.onnx"
    r = cli("optimize", p, "-o", out)
    assert_one_line_error(r, "cyclic.onnx", "cycle")
    assert not out.exists()


def test_missing_input(tmp_path, good):
    npz = tmp_path / "in.npz"
    np.savez(npz, other=np.zeros((2, 3), np.float32))
    out = tmp_path / "out.npz"
    r = cli("run", good, "--inputs", npz, "-o", out)
    assert_one_line_error(r, "'other'")
    np.savez(npz)
    r = cli("run", good, "--inputs", npz, "-o", out)
    assert_one_line_error(r, "missing input 'x'")
    assert not out.exists()


def test_wrong_input_shape_and_dtype(tmp_path, good):
    npz = tmp_path / "in.npz"
    out = tmp_path / "out.npz"
    np.savez(npz, x=np.zeros((3, 3), np.float32))
    r = cli("run", good, "--inputs", npz, "-o", out)
    assert_one_line_error(r, "input 'x'", "(3, 3)", "float32[2,3]")
    np.savez(npz, x=np.zeros((2, 3), np.int64))
    r = cli("run", good, "--inputs", npz, "-o", out)
    assert_one_line_error(r, "input 'x'", "int64")
    assert not out.exists()


def test_unknown_op_fails_only_at_run_time(tmp_path):
    p = relu_model(tmp_path / "custom.onnx", op="Frobnicate", domain="com.example")
    r = cli("inspect", p)
    assert r.returncode == 0 and "com.example::Frobnicate" in r.stdout
    out = tmp_path / "out.npz"
    r = cli("run", p, "-o", out)
    assert_one_line_error(r, "com.example::Frobnicate", "n0")
    assert not out.exists()


def test_external_data_escaping_the_model_folder(tmp_path):
    from onnx.external_data_helper import set_external_data

    inner = tmp_path / "model"
    inner.mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(6, dtype=np.float32).tobytes())
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 3], np.zeros(6, np.float32).tobytes(), raw=True)
    set_external_data(w, location="../secret.bin", offset=0, length=24)
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], initializer=[w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    p = inner / "evil.onnx"
    p.write_bytes(m.SerializeToString())
    out = tmp_path / "out.onnx"
    r = cli("optimize", p, "-o", out)
    assert_one_line_error(r, "secret.bin")
    assert not out.exists()


def test_debug_shows_the_traceback(tmp_path):
    bad = tmp_path / "noise.onnx"
    bad.write_bytes(b"\x00\xff" * 100)
    r = cli("inspect", bad, "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_every_verb_has_help_with_an_example():
    from graphopt.cli import build_parser

    parser = build_parser()
    assert set(parser.verb_parsers) >= {"optimize", "compile", "run", "verify", "bench", "inspect", "passes",
                                        "backends", "quantize", "compare", "cache"}
    for verb, p in parser.verb_parsers.items():
        text = p.format_help()
        assert "example" in text and f"graphopt {verb}" in text.split("example")[1], verb
    r = cli("run", "--help")
    assert r.returncode == 0 and "examples:" in r.stdout and "--input-shape" in r.stdout


def test_backend_option_without_a_value(good):
    r = cli("run", good, "--option", "gemm")
    assert_one_line_error(r, "--option", "KEY=VALUE")


def test_backend_option_the_backend_refuses(good):
    r = cli("run", good, "--backend", "cuda-emu", "--option", "gemm=cublas")
    assert_one_line_error(r, "gemm", "cuda")


def test_misspelt_option_is_refused_by_name(good):
    r = cli("run", good, "--option", "gemmm=cublas")
    assert_one_line_error(r, "unknown option 'gemmm'")
