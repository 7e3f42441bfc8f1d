"""External data: written next to the model, read back identically; read only from
beneath the model's folder, every escape or inconsistency refused before allocating."""
import os
import tracemalloc

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from graphopt import GraphBuilder
from graphopt.errors import ModelLoadError
from graphopt.onnx_io import load_onnx, save, save_onnx
from graphopt.plugins.cpu import run_reference


def weighted_graph():
    rng = np.random.default_rng(0)
    b = GraphBuilder("ext")
    x = b.input("x", ("n", 256))
    w1 = b.const(rng.standard_normal(256).astype(np.float32), "w1")      # 1 KiB: external
    w2 = b.const(rng.standard_normal(256).astype(np.float16), "w2")      # 512 B: stays inline
    w3 = b.const(rng.standard_normal((4, 256)).astype(np.float32), "w3")
    h = b.op("Mul", b.op("Add", x, w1), b.op("Cast", w2, to=1))
    b.output(b.op("Add", h, w3), "y")
    return b.graph


def test_save_with_external_data_and_reload(tmp_path, ort_run):
    g = weighted_graph()
    path = save_onnx(g, tmp_path / "model.onnx", external_data=True)
    data = tmp_path / "model.onnx.data"
    assert path == tmp_path / "model.onnx" and data.exists()
    assert sorted(os.listdir(tmp_path)) == ["model.onnx", "model.onnx.data"]
    m = onnx.load(path, load_external_data=False)
    where = {t.name: t.data_location for t in m.graph.initializer}
    assert where == {"w1": TensorProto.EXTERNAL, "w2": TensorProto.DEFAULT, "w3": TensorProto.EXTERNAL}
    assert path.stat().st_size < 4096 and data.stat().st_size >= (256 + 4 * 256) * 4
    onnx.checker.check_model(str(path), full_check=True)
    g2 = load_onnx(path)
    for name, v in g.initializers.items():
        np.testing.assert_array_equal(g2.initializers[name].const, v.const)
        assert g2.initializers[name].const.dtype == v.const.dtype
    x = np.random.default_rng(3).standard_normal((4, 256)).astype(np.float32)
    np.testing.assert_allclose(ort_run(path, {"x": x})[0], run_reference(g, {"x": x})[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(run_reference(g2, {"x": x})[0], run_reference(g, {"x": x})[0])


def test_large_models_go_external_by_themselves(tmp_path, monkeypatch):
    monkeypatch.setattr(save, "AUTO_EXTERNAL_BYTES", 2048)
    save_onnx(weighted_graph(), tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").exists()
    save_onnx(weighted_graph(), tmp_path / "small.onnx", external_data=False)
    assert not (tmp_path / "small.onnx.data").exists()


def test_reads_external_data_written_by_onnx(tmp_path, make_model, vi):
    w = np.arange(4096, dtype=np.float32).reshape(64, 64)
    m = make_model([helper.make_node("Add", ["x", "w"], ["y"])], [vi("x", [64, 64])], [vi("y", [64, 64])],
                   {"w": w})
    sub = tmp_path / "weights"
    sub.mkdir()
    onnx.save_model(m, tmp_path / "m.onnx", save_as_external_data=True, location="weights/w.bin",
                    size_threshold=0)
    g = load_onnx(tmp_path / "m.onnx")
    np.testing.assert_array_equal(g.initializers["w"].const, w)


def external_model(tmp_path, location, *, offset=0, length=24, dims=(2, 3), folder="model"):
    inner = tmp_path / folder
    inner.mkdir(exist_ok=True)
    w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=list(dims))
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        w.external_data.add(key=k, value=v)
    w.data_location = TensorProto.EXTERNAL
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], initializer=[w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    p = inner / "evil.onnx"
    p.write_bytes(m.SerializeToString())
    return p


def refused(p, *needles):
    with pytest.raises(ModelLoadError) as ei:
        load_onnx(p)
    msg = str(ei.value)
    assert "\n" not in msg and "evil.onnx" in msg and "'w'" in msg, msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


@pytest.fixture
def secret(tmp_path):
    s = tmp_path / "secret.bin"
    s.write_bytes(np.arange(6, dtype=np.float32).tobytes())
    return s


def test_escaping_locations_are_refused(tmp_path, secret):
    refused(external_model(tmp_path, "../secret.bin"), "'..'", "../secret.bin")
    refused(external_model(tmp_path, "sub/../../secret.bin"), "'..'")
    refused(external_model(tmp_path, "..\\secret.bin"), "'..'")
    refused(external_model(tmp_path, str(secret)), "absolute", "secret.bin")


@pytest.fixture(params=["dir_fd", "paths"])
def walk(request, monkeypatch):
    """Both ways of opening beneath the folder: fd by fd (POSIX), and checked paths (elsewhere)."""
    from graphopt.onnx_io import external_data

    if request.param == "paths":
        monkeypatch.setattr(external_data, "_WALK_WITH_FDS", False)
    return request.param


def test_symlinks_are_refused(tmp_path, secret, walk):
    p = external_model(tmp_path, "link.bin")
    (p.parent / "link.bin").symlink_to(secret)
    refused(p, "symbolic link")
    (p.parent / "linkdir").symlink_to(tmp_path)
    refused(external_model(tmp_path, "linkdir/secret.bin"), "symbolic link", "linkdir")


def test_not_a_regular_file_or_missing(tmp_path, walk):
    p = external_model(tmp_path, "adir")
    (p.parent / "adir").mkdir()
    refused(p, "not a regular file")
    refused(external_model(tmp_path, "nothere.bin"), "nothere.bin")
    os.mkfifo(p.parent / "fifo")  # would block a plain open()
    refused(external_model(tmp_path, "fifo"), "not a regular file")
    (p.parent / "file").write_bytes(b"")
    refused(external_model(tmp_path, "file/w.bin"), "not a folder")


def test_offsets_and_lengths_are_checked_against_the_file(tmp_path, walk):
    inner = tmp_path / "model"
    inner.mkdir()
    (inner / "w.bin").write_bytes(np.arange(6, dtype=np.float32).tobytes())
    refused(external_model(tmp_path, "w.bin", offset=8, length=24), "beyond the end")
    refused(external_model(tmp_path, "w.bin", offset=0, length=20), "does not match")
    refused(external_model(tmp_path, "w.bin", offset=100, length=0, dims=(0,)), "beyond the end")
    refused(external_model(tmp_path, "w.bin", offset=0, length=24, dims=(3, 3)), "does not match")
    ok = external_model(tmp_path, "w.bin", offset=0, length=24)
    np.testing.assert_array_equal(load_onnx(ok).initializers["w"].const, np.arange(6).reshape(2, 3))
    ok = external_model(tmp_path, "./w.bin", offset=12, length=12, dims=(3,))
    np.testing.assert_array_equal(load_onnx(ok).initializers["w"].const, [3, 4, 5])


def test_absurd_external_shape_is_refused_before_allocating(tmp_path):
    inner = tmp_path / "model"
    inner.mkdir()
    (inner / "w.bin").write_bytes(b"\0" * 64)
    tracemalloc.start()
    try:
        refused(external_model(tmp_path, "w.bin", offset=0, length=2 ** 62, dims=(2 ** 40, 2 ** 40)), "declares")
        refused(external_model(tmp_path, "w.bin", offset=0, length=2 ** 32, dims=(2 ** 30,)), "beyond the end")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2 ** 20


def test_external_data_needs_a_folder(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.bin").write_bytes(b"\0" * 24)
    p = external_model(tmp_path, "w.bin")
    with pytest.raises(ModelLoadError, match="base_dir"):
        load_onnx(p.read_bytes())
    g = load_onnx(p.read_bytes(), base_dir=p.parent)
    assert g.initializers["w"].const.shape == (2, 3)


def test_hard_links_are_refused_before_anything_is_read(tmp_path, secret, walk, monkeypatch):
    from graphopt.onnx_io import external_data

    p = external_model(tmp_path, "hard.bin")
    os.link(secret, p.parent / "hard.bin")  # the same file as one outside the model's folder
    opened = []
    monkeypatch.setattr(external_data.os, "fdopen", lambda *a, **k: opened.append(a) or open(*a, **k))
    refused(p, "hard.bin", "2 hard links")
    assert not opened  # refused on the open descriptor, before a byte was read


def test_a_file_system_mounted_beneath_the_folder_is_refused(tmp_path, walk, monkeypatch):
    from graphopt.onnx_io import external_data

    p = external_model(tmp_path, "mnt/w.bin")
    (p.parent / "mnt").mkdir()
    (p.parent / "mnt" / "w.bin").write_bytes(np.zeros(6, np.float32).tobytes())
    real_stat, real_lstat = os.stat, os.lstat

    def moved(st):  # what stat says of a mount point: another device
        return os.stat_result((st.st_mode, st.st_ino, st.st_dev + 1) + tuple(st)[3:])

    def fake_stat(path, *a, **k):
        st = real_stat(path, *a, **k)
        return moved(st) if str(path).endswith("mnt") else st

    monkeypatch.setattr(external_data.os, "stat", fake_stat)
    monkeypatch.setattr(external_data.os, "lstat", lambda path: moved(real_lstat(path))
                        if str(path).endswith("mnt") else real_lstat(path))
    refused(p, "another file system", "mnt")
