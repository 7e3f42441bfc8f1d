"""Malformed or hostile models: one ModelLoadError line naming the file and the culprit,
no big allocation, and a failed save leaves no file behind."""
import os
import tracemalloc

import numpy as np
import pytest
from onnx import TensorProto, helper

from graphopt import GraphBuilder
from graphopt.errors import GraphoptError, ModelLoadError
from graphopt.onnx_io import load_onnx, save_onnx


def one_line(exc_info, *needles):
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


@pytest.fixture
def good(tmp_path, make_model, vi):
    m = make_model([helper.make_node("Relu", ["x"], ["y"], name="n0")], [vi("x", [2, 3])], [vi("y", [2, 3])])
    p = tmp_path / "good.onnx"
    p.write_bytes(m.SerializeToString())
    return p


def save(tmp_path, model, name):
    p = tmp_path / name
    p.write_bytes(model.SerializeToString())
    return p


def test_truncated_random_empty_missing_and_directory(tmp_path, good):
    data = good.read_bytes()
    cases = {"trunc.onnx": data[: len(data) // 2], "noise.onnx": np.random.default_rng(0).integers(
        0, 256, 4096, dtype=np.uint8).tobytes(), "empty.onnx": b""}
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ModelLoadError) as ei:
            load_onnx(tmp_path / name)
        one_line(ei, name)
    with pytest.raises(ModelLoadError) as ei:
        load_onnx(tmp_path / "nope.onnx")
    one_line(ei, "nope.onnx", "no such file")
    (tmp_path / "dir.onnx").mkdir()
    with pytest.raises(ModelLoadError) as ei:
        load_onnx(tmp_path / "dir.onnx")
    one_line(ei, "dir.onnx", "directory")
    with pytest.raises(ModelLoadError, match="protobuf parse failed"):
        load_onnx(data[:-3])


def test_every_truncation_is_a_clean_error_or_a_valid_graph(good):
    data = good.read_bytes()
    for cut in range(0, len(data), 3):
        try:
            load_onnx(data[:cut])
        except ModelLoadError as exc:
            assert "\n" not in str(exc)


def test_cyclic_graph(tmp_path, make_model, vi):
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="first"),
             helper.make_node("Relu", ["a"], ["b"], name="second"),
             helper.make_node("Identity", ["a"], ["y"], name="third")]
    p = save(tmp_path, make_model(nodes, [vi("x", [2])], [vi("y", [2])], name="cyc"), "cyclic.onnx")
    with pytest.raises(ModelLoadError) as ei:
        load_onnx(p)
    one_line(ei, "cyclic.onnx", "cycle", "'first'")


def test_undefined_input_duplicate_output_and_missing_graph_output(tmp_path, make_model, vi):
    io = ([vi("x", [2])], [vi("y", [2])])
    p = save(tmp_path, make_model([helper.make_node("Add", ["x", "ghost"], ["y"], name="adder")], *io), "undef.onnx")
    with pytest.raises(ModelLoadError) as ei:
        load_onnx(p)
    one_line(ei, "undef.onnx", "'adder'", "'ghost'")
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="a"), helper.make_node("Neg", ["x"], ["y"], name="b")]
    p = save(tmp_path, make_model(nodes, *io), "dup.onnx")
    with pytest.raises(ModelLoadError) as ei:
        load_onnx(p)
    one_line(ei, "dup.onnx", "'y'", "duplicate")
    p = save(tmp_path, make_model([helper.make_node("Relu", ["x"], ["x"], name="c")], *io), "redef.onnx")
    with pytest.raises(ModelLoadError) as ei:
        load_onnx(p)
    one_line(ei, "redef.onnx", "'x'", "graph input")
    p = save(tmp_path, make_model([helper.make_node("Relu", ["x"], ["z"])], *io), "noout.onnx")
    with pytest.raises(ModelLoadError) as ei:
        load_onnx(p)
    one_line(ei, "noout.onnx", "graph output 'y'")


def absurd_tensor(name="w", dims=(2 ** 40, 2 ** 40)):
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(dims))
    t.raw_data = b"\0" * 16
    return t


def test_absurd_inline_shapes_are_refused_without_allocating(tmp_path, make_model, vi):
    io = ([vi("x", [2])], [vi("y", [2])])
    cases = {
        "huge.onnx": [absurd_tensor()],
        "mismatch.onnx": [absurd_tensor(dims=(1000,))],
        "negative.onnx": [absurd_tensor(dims=(-4,))],
    }
    tracemalloc.start()
    try:
        for fname, inits in cases.items():
            p = save(tmp_path, make_model([helper.make_node("Add", ["x", "w"], ["y"])], *io, inits), fname)
            with pytest.raises(ModelLoadError) as ei:
                load_onnx(p)
            one_line(ei, fname, "'w'")
        typed = TensorProto(name="w", data_type=TensorProto.INT64, dims=[3, 3], int64_data=[1, 2, 3])  # 3 for 9
        p = save(tmp_path, make_model([helper.make_node("Add", ["x", "w"], ["y"])], *io, [typed]), "typed.onnx")
        with pytest.raises(ModelLoadError) as ei:
            load_onnx(p)
        one_line(ei, "typed.onnx", "'w'", "int64_data")
        # a Constant node's tensor attribute, and a ConstantOfShape asking for 2**80 elements
        big = absurd_tensor("")
        p = save(tmp_path, make_model([helper.make_node("Constant", [], ["y"], value=big, name="k")], [], io[1]),
                 "const.onnx")
        with pytest.raises(ModelLoadError) as ei:
            load_onnx(p)
        one_line(ei, "const.onnx", "attribute 'value' of node 'k'")
        shape = np.array([2 ** 40, 2 ** 40], np.int64)
        p = save(tmp_path, make_model([helper.make_node("ConstantOfShape", ["s"], ["y"], name="fill")], [], io[1],
                                      {"s": shape}), "fill.onnx")
        with pytest.raises(ModelLoadError) as ei:
            load_onnx(p)
        one_line(ei, "fill.onnx", "'fill'")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2 ** 20


def test_unsupported_element_type_on_an_input_is_named(tmp_path, make_model, vi):
    x = helper.make_tensor_value_info("x", 99, [2])
    p = save(tmp_path, make_model([helper.make_node("Relu", ["x"], ["y"])], [x], [vi("y", [2])]), "etype.onnx")
    with pytest.raises(ModelLoadError) as ei:
        load_onnx(p)
    one_line(ei, "etype.onnx", "'x'", "element type 99")


def test_failed_save_leaves_no_file(tmp_path):
    b = GraphBuilder("g")
    x = b.input("x", (1024,))
    y = b.op("Add", x, np.ones(1024, np.float32))
    z = b.graph.make_node("FusedThing", [y], domain="ai.graphopt", name="fused0").output
    b.output(z, "z")
    out = tmp_path / "out.onnx"
    for ext in (False, True):
        with pytest.raises(GraphoptError, match="fused0"):
            save_onnx(b.graph, out, external_data=ext)
        assert os.listdir(tmp_path) == []
    b.graph.nodes[0].attrs["bad"] = object()  # cannot be an ONNX attribute
    with pytest.raises(GraphoptError, match="'bad'"):
        save_onnx(b.graph, out, keep_fused=True)
    assert os.listdir(tmp_path) == []
    with pytest.raises(GraphoptError, match="does not exist"):
        save_onnx(b.graph, tmp_path / "missing" / "out.onnx")


def test_existing_file_is_untouched_by_a_failed_save(tmp_path, good):
    before = good.read_bytes()
    b = GraphBuilder("g")
    x = b.input("x", (2,))
    b.output(b.graph.make_node("FusedThing", [x], domain="ai.graphopt").output, "y")
    with pytest.raises(GraphoptError):
        save_onnx(b.graph, good)
    assert good.read_bytes() == before and sorted(os.listdir(good.parent)) == ["good.onnx"]
