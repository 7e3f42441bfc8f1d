"""Hostile models through `graphopt optimize`: each class refused with one line naming the thing,
a non-zero exit, no output file left, nothing outside the model's folder read and no big
allocation (docs/verification.md lists the classes with these tests)."""
import os
import tracemalloc

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.cli import main

vi = helper.make_tensor_value_info


def _save(folder, nodes, inputs, outputs, inits=(), opset=17, extra_opsets=(), name="evil.onnx"):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=[numpy_helper.from_array(np.asarray(a), n)
                                                                      for n, a in inits])
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    m = helper.make_model(g, opset_imports=imports, ir_version=8)
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_bytes(m.SerializeToString())
    return p


def _branch(n, prefix):
    nodes = [helper.make_node("Constant", [], [f"{prefix}{i}"], value=numpy_helper.from_array(np.float32(i)))
             for i in range(n)]
    return helper.make_graph(nodes, prefix, [], [vi(f"{prefix}{i}", TensorProto.FLOAT, []) for i in range(n)])


def _loop_body(n_inputs):
    ins = [vi("i", TensorProto.INT64, []), vi("cond_in", TensorProto.BOOL, []), vi("x_in", TensorProto.FLOAT, [1])]
    return helper.make_graph([helper.make_node("Identity", ["cond_in" if n_inputs else "c"], ["cond_out"]),
                              helper.make_node("Identity", ["x_in" if n_inputs else "x0"], ["x_out"])], "body",
                             ins[:n_inputs], [vi("cond_out", TensorProto.BOOL, []), vi("x_out", TensorProto.FLOAT, [1])])


def if_branches_of_different_arity(folder):
    node = helper.make_node("If", ["c"], ["o"], name="choose", then_branch=_branch(2, "t"),
                            else_branch=_branch(1, "e"))
    return _save(folder, [node], [vi("c", TensorProto.BOOL, [])], [vi("o", TensorProto.FLOAT, [])]), \
        ["'choose'", "then_branch makes outputs: 2", "needs 1"]


def loop_body_without_inputs(folder):
    node = helper.make_node("Loop", ["M", "c", "x0"], ["x_final"], name="spin", body=_loop_body(0))
    return _save(folder, [node], [vi("x0", TensorProto.FLOAT, [1]), vi("c", TensorProto.BOOL, [])],
                 [vi("x_final", TensorProto.FLOAT, [1])], [("M", np.array(3, np.int64))]), \
        ["'spin'", "body takes inputs: 0", "needs 3"]


def scan_body_of_wrong_arity(folder):
    body = helper.make_graph([helper.make_node("Identity", ["s"], ["s_out"])], "body",
                             [vi("s", TensorProto.FLOAT, [2])], [vi("s_out", TensorProto.FLOAT, [2])])
    node = helper.make_node("Scan", ["s0", "xs"], ["s_final"], name="scanner", body=body, num_scan_inputs=1)
    return _save(folder, [node], [vi("s0", TensorProto.FLOAT, [2]), vi("xs", TensorProto.FLOAT, [3, 2])],
                 [vi("s_final", TensorProto.FLOAT, [2])], opset=16), ["'scanner'", "body takes inputs: 1", "needs 2"]


def opset_from_the_future(folder):
    relu = helper.make_node("Relu", ["x"], ["y"], name="r")
    return _save(folder, [relu], [vi("x", TensorProto.FLOAT, [2])], [vi("y", TensorProto.FLOAT, [2])],
                 opset=onnx.defs.onnx_opset_version() + 1), ["opset", "newer than any graphopt knows"]


def ml_opset_from_the_future(folder):
    relu = helper.make_node("Relu", ["x"], ["y"], name="r")
    return _save(folder, [relu], [vi("x", TensorProto.FLOAT, [2])], [vi("y", TensorProto.FLOAT, [2])],
                 extra_opsets=[("ai.onnx.ml", 99)]), ["'ai.onnx.ml'", "newer than any graphopt knows"]


def _bomb(op, folder):
    big = 10 ** 11
    f = TensorProto.FLOAT
    cases = {
        "Tile": ([helper.make_node("Tile", ["x", "r"], ["y"], name="bomb")], [vi("x", f, [2])],
                 [("r", np.array([big], np.int64))]),
        "Expand": ([helper.make_node("Expand", ["x", "s"], ["y"], name="bomb")], [vi("x", f, [1])],
                   [("s", np.array([10 ** 6, 10 ** 6], np.int64))]),
        "ConstantOfShape": ([helper.make_node("ConstantOfShape", ["s"], ["y"], name="bomb")], [],
                            [("s", np.array([10 ** 6, 10 ** 6], np.int64))]),
        "Range": ([helper.make_node("Range", ["a", "b", "d"], ["y"], name="bomb")], [],
                  [("a", np.float32(0)), ("b", np.float32(1e12)), ("d", np.float32(1))]),
        "Resize": ([helper.make_node("Resize", ["x", "", "sc"], ["y"], name="bomb")], [vi("x", f, [1, 1, 4, 4])],
                   [("sc", np.array([1, 1, 1e5, 1e5], np.float32))]),
        "Reshape": ([helper.make_node("Reshape", ["x", "s"], ["y"], name="bomb")], [vi("x", f, [4])],
                    [("s", np.array([-1, 10 ** 12], np.int64))]),
    }
    nodes, inputs, inits = cases[op]
    needles = ["'bomb'", op, "cannot reshape" if op == "Reshape" else "GRAPHOPT_MAX_TENSOR_BYTES"]
    return _save(folder, nodes, inputs, [vi("y", f, None)], inits), needles


def _outside(folder):
    """A file beside the model's folder, which no model in it may read."""
    outside = folder.parent / "secret.bin"
    outside.write_bytes(np.arange(6, dtype=np.float32).tobytes())
    return outside


def _external(folder, location):
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2, 3])
    for k, v in (("location", location), ("offset", "0"), ("length", "24")):
        w.external_data.add(key=k, value=v)
    w.data_location = TensorProto.EXTERNAL
    folder.mkdir(parents=True, exist_ok=True)
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [vi("x", TensorProto.FLOAT, [2, 3])],
                          [vi("y", TensorProto.FLOAT, [2, 3])], initializer=[w])
    p = folder / "evil.onnx"
    p.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString())
    return p


def external_data_through_a_hard_link(folder):
    p = _external(folder, "w.bin")
    os.link(_outside(folder), folder / "w.bin")
    return p, ["'w'", "w.bin", "hard links"]


def external_data_through_a_symlink(folder):
    p = _external(folder, "w.bin")
    (folder / "w.bin").symlink_to(_outside(folder))
    return p, ["'w'", "w.bin", "symbolic link"]


def external_data_through_dotdot(folder):
    _outside(folder)
    return _external(folder, "../secret.bin"), ["'w'", "../secret.bin", "'..'"]


def external_data_at_an_absolute_path(folder):
    return _external(folder, str(_outside(folder))), ["'w'", "secret.bin", "absolute"]


CLASSES = {
    "If branches of different arity": if_branches_of_different_arity,
    "Loop body without inputs": loop_body_without_inputs,
    "Scan body of the wrong arity": scan_body_of_wrong_arity,
    "opset newer than graphopt knows": opset_from_the_future,
    "ai.onnx.ml opset newer than graphopt knows": ml_opset_from_the_future,
    "external data through a hard link": external_data_through_a_hard_link,
    "external data through a symbolic link": external_data_through_a_symlink,
    "external data through '..'": external_data_through_dotdot,
    "external data at an absolute path": external_data_at_an_absolute_path,
    **{f"{op} to 10^11+ elements" if op != "Reshape" else "Reshape to an impossible size":
       (lambda folder, op=op: _bomb(op, folder)) for op in ("Tile", "Expand", "ConstantOfShape", "Range", "Resize",
                                                            "Reshape")},
}


@pytest.fixture
def files_read(monkeypatch):
    """(device, inode) of every file opened to be read, by path or by descriptor."""
    import builtins

    seen = set()
    real_open, real_fdopen = builtins.open, os.fdopen

    def note(fd):
        st = os.fstat(fd)
        seen.add((st.st_dev, st.st_ino))

    def spy_open(file, mode="r", *a, **k):
        f = real_open(file, mode, *a, **k)
        if "r" in mode or "+" in mode:
            note(f.fileno())
        return f

    def spy_fdopen(fd, *a, **k):
        note(fd)
        return real_fdopen(fd, *a, **k)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "fdopen", spy_fdopen)
    return seen


@pytest.mark.parametrize("case", list(CLASSES))
def test_optimize_refuses_in_one_line_and_writes_nothing(case, tmp_path, capsys, files_read):
    model, needles = CLASSES[case](tmp_path / "model")
    out = tmp_path / "out" / "opt.onnx"
    out.parent.mkdir()
    tracemalloc.start()
    try:
        rc = main(["optimize", str(model), "-o", str(out)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    outside = tmp_path / "secret.bin"
    if outside.exists():  # nothing outside the model's folder was read
        st = outside.stat()
        assert (st.st_dev, st.st_ino) not in files_read
        assert files_read  # (the spy sees reads: the model itself was read)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and err[0].startswith("graphopt: error: "), err
    assert "Traceback" not in err[0] and "evil.onnx" in err[0]
    for n in needles:
        assert n in err[0], (n, err[0])
    assert list(out.parent.iterdir()) == []  # no output, not even a temporary file
    assert peak < 64 << 20  # refused before anything big was allocated


@pytest.mark.parametrize("op", ["Tile", "Expand", "ConstantOfShape", "Range", "Resize", "Pad", "OneHot"])
def test_sizes_computed_at_run_time_are_checked_before_allocating(op, monkeypatch):
    """The same bombs with their sizes as run-time inputs: refused by the kernel, naming the node."""
    import graphopt
    from graphopt.builder import GraphBuilder
    from graphopt.errors import ShapeError

    monkeypatch.setenv("GRAPHOPT_MAX_TENSOR_BYTES", "1M")
    b = GraphBuilder()
    if op == "Tile":
        y = b.op("Tile", b.input("x", (2,)), b.input("r", (1,), "int64"))
        feeds = {"x": np.ones(2, np.float32), "r": np.array([10 ** 6], np.int64)}
    elif op == "Expand":
        y = b.op("Expand", b.input("x", (1,)), b.input("s", (2,), "int64"))
        feeds = {"x": np.ones(1, np.float32), "s": np.array([1000, 1000], np.int64)}
    elif op == "ConstantOfShape":
        y = b.op("ConstantOfShape", b.input("s", (2,), "int64"))
        feeds = {"s": np.array([1000, 1000], np.int64)}
    elif op == "Range":
        y = b.op("Range", b.input("a", (), "int64"), b.input("l", (), "int64"), b.input("d", (), "int64"))
        feeds = {"a": np.array(0), "l": np.array(10 ** 6), "d": np.array(1)}
    elif op == "Resize":
        y = b.op("Resize", b.input("x", (1, 1, 2, 2)), None, None, b.input("s", (4,), "int64"))
        feeds = {"x": np.ones((1, 1, 2, 2), np.float32), "s": np.array([1, 1, 1000, 1000], np.int64)}
    elif op == "Pad":
        y = b.op("Pad", b.input("x", (2,)), b.input("p", (2,), "int64"))
        feeds = {"x": np.ones(2, np.float32), "p": np.array([0, 10 ** 6], np.int64)}
    else:
        y = b.op("OneHot", b.input("i", (3,), "int64"), b.input("d", (1,), "int64"),
                 b.const(np.array([0, 1], np.float32)))
        feeds = {"i": np.array([0, 1, 2]), "d": np.array([10 ** 6], np.int64)}
    y.producer.name = "bomb"
    b.output(y, "y")
    m = graphopt.compile(b.graph, level=0)
    with pytest.raises(ShapeError, match=r"node 'bomb' .* would make .* more than the 1 MiB"):
        m.run(feeds)


def test_the_limit_is_an_environment_variable(tmp_path, capsys, monkeypatch):
    model = _save(tmp_path, [helper.make_node("Tile", ["x", "r"], ["y"], name="tiler")],
                  [vi("x", TensorProto.FLOAT, [1000])], [vi("y", TensorProto.FLOAT, None)],
                  [("r", np.array([300], np.int64))], name="tile.onnx")
    out = tmp_path / "o.onnx"
    assert main(["optimize", str(model), "-o", str(out)]) == 0  # 1.2 MB: fine by default
    out.unlink()
    monkeypatch.setenv("GRAPHOPT_MAX_TENSOR_BYTES", "1M")
    assert main(["optimize", str(model), "-o", str(out)]) != 0 and not out.exists()
    assert "'tiler'" in capsys.readouterr().err
    monkeypatch.setenv("GRAPHOPT_MAX_TENSOR_BYTES", "lots")
    assert main(["optimize", str(model), "-o", str(out)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "GRAPHOPT_MAX_TENSOR_BYTES='lots'" in err[0]


def test_save_never_writes_what_the_full_checker_rejects(tmp_path):
    import graphopt
    from graphopt.builder import GraphBuilder
    from graphopt.errors import GraphoptError

    b = GraphBuilder()
    x = b.input("x", (2, 3))
    b.output(b.op("Add", x, b.const(np.ones(3, np.int64))), "y")  # float32 + int64: no ONNX model
    out = tmp_path / "bad.onnx"
    with pytest.raises(GraphoptError, match=r"bad.onnx: not written: onnx's checker rejects the model"):
        graphopt.save(b.graph, out)
    assert list(tmp_path.iterdir()) == []
    b = GraphBuilder()
    b.output(b.op("Relu", b.input("x", (2, 3))), "y")
    graphopt.save(b.graph, out, external_data=True)  # checked without the data file in place
    onnx.checker.check_model(str(out), full_check=True)


def test_dims_only_onnx_inference_contradicts_are_written_unknown(tmp_path):
    # ConvTranspose with SAME_UPPER and output_padding: onnxruntime and graphopt make 15 rows, onnx's
    # shape inference says 17; the optimized file must pass the checker and still run right
    import graphopt

    rng = np.random.default_rng(0)
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[3, 3],
                            dilations=[2, 1], output_padding=[2, 1])
    src = _save(tmp_path, [node], [vi("x", TensorProto.FLOAT, [1, 4, 5, 7])], [vi("y", TensorProto.FLOAT, None)],
                [("w", rng.standard_normal((4, 2, 2, 2)).astype(np.float32))], name="convt.onnx")
    g = graphopt.load(src)
    assert g.outputs[0].shape == (1, 2, 15, 21)
    out = tmp_path / "opt.onnx"
    assert main(["optimize", str(src), "-o", str(out)]) == 0
    onnx.checker.check_model(str(out), full_check=True)
    dims = onnx.load(out).graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_value if d.HasField("dim_value") else None for d in dims] == [1, 2, None, 21]
    import onnxruntime as ort

    x = rng.standard_normal((1, 4, 5, 7)).astype(np.float32)
    want = ort.InferenceSession(str(src)).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(out)).run(None, {"x": x})[0]
    assert want.shape == got.shape == (1, 2, 15, 21)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_the_read_spy_sees_external_data_that_is_read(tmp_path, files_read):
    """(So that its silence above means something.)"""
    p = _external(tmp_path / "model", "w.bin")
    (tmp_path / "model" / "w.bin").write_bytes(np.arange(6, dtype=np.float32).tobytes())
    assert main(["optimize", str(p), "-o", str(tmp_path / "opt.onnx")]) == 0
    st = (tmp_path / "model" / "w.bin").stat()
    assert (st.st_dev, st.st_ino) in files_read


def test_a_pool_after_a_contradicted_dim_keeps_its_ceil_mode(tmp_path):
    # onnx's inference says 17 rows after this ConvTranspose (graphopt and onnxruntime: 15); the
    # ceil-mode pool then makes 8 rows of 15, and floor mode would make 8 of 17 but 7 of 15: the file
    # must keep ceil_mode (only the contradicted dims are written unknown) and still compute the same
    import onnxruntime as ort

    rng = np.random.default_rng(1)
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["t"], auto_pad="SAME_UPPER", strides=[3, 3],
                              dilations=[2, 1], output_padding=[2, 1]),
             helper.make_node("MaxPool", ["t"], ["y"], kernel_shape=[2, 1], strides=[2, 1], ceil_mode=1)]
    src = _save(tmp_path, nodes, [vi("x", TensorProto.FLOAT, [1, 4, 5, 7])],
                [vi("t", TensorProto.FLOAT, None), vi("y", TensorProto.FLOAT, None)],
                [("w", rng.standard_normal((4, 2, 2, 2)).astype(np.float32))], name="convt_pool.onnx")
    out = tmp_path / "opt.onnx"
    assert main(["optimize", str(src), "-o", str(out), "-O0"]) == 0
    pool = next(n for n in onnx.load(out).graph.node if n.op_type == "MaxPool")
    assert [a.i for a in pool.attribute if a.name == "ceil_mode"] == [1]
    x = rng.standard_normal((1, 4, 5, 7)).astype(np.float32)
    want = ort.InferenceSession(str(src)).run(None, {"x": x})
    got = ort.InferenceSession(str(out)).run(None, {"x": x})
    assert want[1].shape == got[1].shape == (1, 2, 8, 21)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
