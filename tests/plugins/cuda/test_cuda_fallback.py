"""Nodes with no CUDA kernel run on the host inside the compiled model (partition.py), named
in stats with the reason; ``strict`` refuses them; a node that cannot run anywhere (no
reference kernel, a data-dependent shape) is refused by name. And per-signature
specialization folds what became static before nodes are checked (specialize.py)."""
import numpy as np
import pytest

import graphopt
from cuda_harness import needs_emu
from fake_cupy import fake_gpu  # noqa: F401  (the fixture)
from graphopt.builder import GraphBuilder
from graphopt.errors import UnsupportedOpError
from graphopt.plugin_loader import get_backend
from graphopt.plugins.cpu import run_reference
from graphopt.plugins.cuda.compile_emu import kernel_batch
from graphopt.plugins.cuda.specialize import shape_inputs

pytestmark = needs_emu


def rnd(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _hardmax_between_kernels(batch="n"):
    """Relu -> Hardmax (no kernel) -> Mul, and an integer BitwiseNot (no kernel) feeding a Cast."""
    b = GraphBuilder(opset=18)
    x = b.input("x", (batch, 7))
    k = b.input("k", (batch, 7), "int64")
    h = b.op("Hardmax", b.op("Relu", b.op("Add", x, np.float32(0.25))), axis=-1)
    b.output(b.op("Mul", h, x), "y")
    m = b.op("BitwiseNot", k)
    b.output(b.op("Add", b.op("Cast", m, to=1), x), "z")
    return b.graph


def _feeds(n):
    rng = np.random.default_rng(n)
    return {"x": rnd(n, 7, seed=n), "k": rng.integers(-20, 20, (n, 7)).astype(np.int64)}


@pytest.fixture(scope="module")
def models():
    with kernel_batch():
        static = get_backend("cuda-emu").compile(_hardmax_between_kernels(batch=3))
        dynamic = graphopt.compile(_hardmax_between_kernels(), backend="cuda-emu", level=2)
    return static, dynamic


def test_nodes_without_kernels_run_on_the_host_and_match(models):
    static, _ = models
    feeds = _feeds(3)
    want = run_reference(_hardmax_between_kernels(batch=3), feeds)
    for a, r in zip(static.run(feeds), want):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6)
    hosts = {h["op"]: h for h in static.stats["host_nodes"]}
    assert set(hosts) == {"Hardmax", "BitwiseNot"}, static.stats["host_nodes"]
    assert "no CUDA kernel for Hardmax" in hosts["Hardmax"]["why"]
    assert "BitwiseNot has no expression form" in hosts["BitwiseNot"]["why"]
    assert static.stats["launches"] >= 3  # Add/Relu, Mul, Cast/Add still run as kernels
    assert any(p.startswith("host") for p in static.stats["partitions"])


def test_host_nodes_in_a_dynamic_model_through_the_public_api(models):
    _, dynamic = models
    for n in (2, 5):
        feeds = _feeds(n)
        want = run_reference(_hardmax_between_kernels(), feeds)
        for a, r in zip(dynamic.run(feeds), want):
            np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6)
    st = dynamic.stats
    assert st["specializations"] == 2 and {h["op"] for h in st["host_nodes"]} == {"Hardmax", "BitwiseNot"}
    assert st["signatures"] == ["x[2,7] k[2,7]", "x[5,7] k[5,7]"]


def test_strict_refuses_the_first_node_without_a_kernel():
    with pytest.raises(UnsupportedOpError, match=r"unsupported op Hardmax .*no CUDA kernel for Hardmax"):
        graphopt.compile(_hardmax_between_kernels(batch=3), backend="cuda-emu", strict=True)
    with pytest.raises(UnsupportedOpError, match="Hardmax"):  # symbolic dims: refused at compile time too
        graphopt.compile(_hardmax_between_kernels(), backend="cuda-emu", strict="true")


def test_a_node_no_one_can_run_is_refused_at_compile_time():
    b = GraphBuilder()
    x = b.input("x", ("n",))
    b.output(b.graph.make_node("Mystery", [x], domain="custom.ops", name="m3").output)
    with pytest.raises(UnsupportedOpError, match="custom.ops::Mystery.*no reference kernel"):
        get_backend("cuda-emu").compile(b.graph)


def test_specialization_folds_shape_subgraphs_before_checking_nodes():
    """Range and ConstantOfShape over Shape of a dynamic input have no kernel, but fold once the
    shape is bound: no host node, one signature per shape."""
    b = GraphBuilder(opset=18)
    x = b.input("x", ("n", 5))
    n = b.op("Gather", b.op("Shape", x), np.array(0, np.int64))
    pos = b.op("Range", np.array(0, np.int64), n, np.array(1, np.int64))
    ones = b.op("ConstantOfShape", b.op("Shape", x), value=np.array([2.0], np.float32))
    y = b.op("Add", b.op("Mul", x, ones), b.op("Unsqueeze", b.op("Cast", pos, to=1), np.array([1], np.int64)))
    b.output(y, "y")
    m = graphopt.compile(b.graph, backend="cuda-emu", level=2)
    for k in (3, 4):
        feeds = {"x": rnd(k, 5, seed=k)}
        np.testing.assert_allclose(m.run(feeds)[0], run_reference(b.graph, feeds)[0], rtol=1e-6)
    assert not m.stats.get("host_nodes")
    assert "partitions" not in m.stats and m.stats["specializations"] == 2


def test_shape_inputs_are_small_integer_inputs_read_only_as_shape_operands():
    b = GraphBuilder(opset=18)
    x = b.input("x", (2, 6))
    s = b.input("s", (2,), "int64")
    i = b.input("i", (2,), "int64")  # Gather indices: data, not a shape
    b.output(b.op("Reshape", b.op("Gather", x, i, axis=1), s), "y")
    assert [v.name for v in shape_inputs(b.graph)] == ["s"]


def test_an_optional_operand_computed_at_run_time_is_not_taken_for_its_default():
    """Pad's constant value computed from data (in float32 and float16): the kernel reads it from
    its tensor at run time rather than padding with the default 0."""
    b = GraphBuilder(opset=18)
    x = b.input("x", (2, 3))
    b.output(b.op("Pad", x, np.array([1, 0, 0, 2], np.int64), b.op("ReduceMax", x, keepdims=0)), "y")
    h = b.op("Cast", x, to=10)
    b.output(b.op("Pad", h, np.array([0, 1, 2, 0], np.int64), b.op("Cast", b.op("ReduceMin", x, keepdims=0), to=10)),
             "h")
    m = get_backend("cuda-emu").compile(b.graph)
    feeds = {"x": rnd(2, 3)}
    for a, r in zip(m.run(feeds), run_reference(b.graph, feeds)):
        np.testing.assert_array_equal(a, r)
    assert not m.stats.get("host_nodes")


def _onnx_graph(nodes, inputs, outputs, inits=()):
    from onnx import helper, numpy_helper

    from graphopt.onnx_io.importer import from_onnx_model

    g = helper.make_graph(nodes, "g", inputs, outputs,
                          initializer=[numpy_helper.from_array(a, n) for n, a in dict(inits).items()])
    return from_onnx_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=8))


def _vi(name, shape, elem=None):
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(name, elem or TensorProto.FLOAT, shape)


def test_control_flow_and_data_dependent_shapes_run_on_the_host_between_kernels():
    """If (its branches read a kernel's result from the enclosing graph), a Loop whose scan output's
    length is the trip count, and NonZero: host nodes; the kernels after the Loop and NonZero read
    shapes only a run knows, so their segments compile per run signature."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    B, I = TensorProto.BOOL, TensorProto.INT64
    then_g = helper.make_graph([helper.make_node("Mul", ["r", "w"], ["t"])], "then", [], [_vi("t", [4])])
    else_g = helper.make_graph([helper.make_node("Neg", ["r"], ["e"])], "else", [], [_vi("e", [4])])
    body = helper.make_graph([helper.make_node("Add", ["acc", "r"], ["acc_out"]),
                              helper.make_node("Identity", ["c_in"], ["c_out"]),
                              helper.make_node("Mul", ["acc_out", "w"], ["scan"])],
                             "body", [_vi("i", [], I), _vi("c_in", [], B), _vi("acc", [4])],
                             [_vi("c_out", [], B), _vi("acc_out", [4]), _vi("scan", [4])])
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("If", ["c"], ["f"], then_branch=then_g, else_branch=else_g),
             helper.make_node("Add", ["f", "x"], ["y"]),
             helper.make_node("Loop", ["m", "", "x"], ["acc_final", "scans"], body=body),
             helper.make_node("Sigmoid", ["scans"], ["s"]),
             helper.make_node("Greater", ["x", "zero"], ["pos"]),
             helper.make_node("NonZero", ["pos"], ["nz"]),
             helper.make_node("Squeeze", ["nz", "axis0"], ["idx"]),
             helper.make_node("Gather", ["r", "idx"], ["g"]),
             helper.make_node("Mul", ["g", "w2"], ["z"])]
    graph = _onnx_graph(nodes, [_vi("x", [4]), _vi("c", [], B), _vi("m", [], I)],
                        [_vi("y", [4]), _vi("s", [None, 4]), _vi("z", [None])],
                        {"w": np.float32([1, -2, 3, 0.5]), "w2": np.float32(3), "zero": np.float32(0),
                         "axis0": np.int64([0])})
    m = get_backend("cuda-emu").compile(graph)
    assert {h["op"] for h in m.stats["host_nodes"]} == {"If", "Loop", "NonZero"}
    rng = np.random.default_rng(3)
    for c, trips in ((True, 2), (False, 3), (True, 3)):
        feeds = {"x": rng.standard_normal(4).astype(np.float32), "c": np.array(c), "m": np.array(trips, np.int64)}
        got, want = m.run(feeds), run_reference(graph, feeds)
        assert [a.shape for a in got] == [a.shape for a in want]
        for a, r in zip(got, want):
            np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6)
    assert sum("compiled per run signature" in p for p in m.stats["partitions"]) >= 2
    assert m.stats["launches"] >= 3


def test_a_shape_computed_from_data_runs_its_node_on_the_host():
    """A Reshape to a shape computed by kernels from data: the Reshape runs on the host and the
    Relu after it compiles per run for the shape that run brings."""
    b = GraphBuilder()
    x = b.input("x", (2, 6))
    shape = b.op("Cast", b.op("Abs", b.input("s", (2,))), to=7)
    b.output(b.op("Relu", b.op("Reshape", x, shape)), "y")
    m = get_backend("cuda-emu").compile(b.graph)
    for s in ([3.0, 4.0], [-4.0, 3.0], [3.0, -4.0]):
        feeds = {"x": rnd(2, 6), "s": np.float32(s)}
        got = m.run(feeds)[0]
        assert got.shape == tuple(abs(int(d)) for d in s)
        np.testing.assert_array_equal(got, run_reference(b.graph, feeds)[0])
    assert [h["op"] for h in m.stats["host_nodes"]] == ["Reshape"]
    assert "depends on the data" in m.stats["host_nodes"][0]["why"]


def test_empty_results_launch_nothing():
    """A reduction whose kept dims include a 0 has an empty result: a constant, not a kernel (whose
    index math would divide by the zero extent); the reduction of an empty axis still runs."""
    b = GraphBuilder(opset=18)
    x = b.input("x", (2, 0, 4))
    b.output(b.op("ReduceSum", x, np.array([2], np.int64), keepdims=1), "empty")
    b.output(b.op("ReduceSum", x, np.array([1], np.int64), keepdims=1), "zeros")
    m = get_backend("cuda-emu").compile(b.graph)
    feeds = {"x": np.zeros((2, 0, 4), np.float32)}
    got = m.run(feeds)
    assert [a.shape for a in got] == [(2, 0, 1), (2, 1, 4)]
    np.testing.assert_array_equal(got[1], run_reference(b.graph, feeds)[1])
    assert m.stats["launches"] == 1 and not m.stats.get("host_nodes")


def test_an_empty_result_beside_non_empty_ones_is_a_graph_output():
    """Split of 4 into 3 parts gives [2, 2, 0]: the kernel writes the first two, and the empty third,
    a graph output, comes back empty (it raised 'produced by no kernel'), as onnxruntime gives it."""
    import onnxruntime as ort

    from graphopt.onnx_io import to_onnx_model

    b = GraphBuilder(opset=18)
    x = b.input("x", (4,), "int32")
    parts = b.op("Split", x, num_outputs=3, attrs={"axis": 0, "num_outputs": 3})
    for i, p in enumerate(parts):
        b.output(p, f"p{i}")
    feeds = {"x": np.array([3, -1, 7, 2], np.int32)}
    got = get_backend("cuda-emu").compile(b.graph).run(feeds)
    want = ort.InferenceSession(to_onnx_model(b.graph).SerializeToString()).run(None, feeds)
    assert [(a.dtype, a.shape) for a in got] == [(a.dtype, a.shape) for a in want]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_an_op_without_a_kernel_runs_as_its_onnx_function_body():
    """RMSNormalization and Swish have no CUDA kernel but ONNX defines them as functions of ops
    that have: their bodies replace them (stats name each) and every node runs on a kernel.
    Hardmax's body does not lower to kernels alone, so it stays a host node
    (test_nodes_without_kernels_run_on_the_host_and_match)."""
    b = GraphBuilder(opset=24)
    x = b.input("x", (3, 8))
    y = b.op("RMSNormalization", x, rnd(8, seed=1), axis=-1, epsilon=1e-5)
    b.output(b.op("Swish", y, alpha=0.75), "y")
    m = get_backend("cuda-emu").compile(b.graph)
    feeds = {"x": rnd(3, 8, seed=2)}
    np.testing.assert_allclose(m.run(feeds)[0], run_reference(b.graph, feeds)[0], rtol=1e-5, atol=1e-6)
    assert not m.stats.get("host_nodes")
    assert [e.split(" ")[1] for e in m.stats["expanded"]] == ["(RMSNormalization)", "(Swish)"]


def test_strict_on_the_command_line(tmp_path, capsys):
    """``graphopt run/compile --strict`` is the backend's strict=True: one line naming the node
    instead of a host node; without it the model runs (its Hardmax on the host)."""
    onnx = pytest.importorskip("onnx")
    from onnx import helper

    from graphopt.cli import main

    path = tmp_path / "hm.onnx"
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"], name="n0"),
                               helper.make_node("Hardmax", ["r"], ["y"], name="hm")], "g", [_vi("x", [2, 3])],
                              [_vi("y", [2, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    for verb in ("run", "compile"):
        assert main([verb, str(path), "--backend", "cuda-emu", "--strict"]) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["graphopt: error: unsupported op Hardmax (node 'hm') on backend 'cuda-emu': "
                       "no CUDA kernel for Hardmax"], err
    assert main(["compile", str(path), "--backend", "cuda-emu", "--json"]) == 0
    assert '"host_nodes"' in capsys.readouterr().out


def test_device_arrays_stay_on_the_device_around_a_host_node(fake_gpu, monkeypatch):
    """On ``cuda`` (the CuPy stand-in) a model with a host node runs on device arrays: CuPy in,
    CuPy out; the one value the host node reads comes down and its result goes up, nothing else
    leaves the device."""
    from fake_cupy import FakeArray

    cp, _ = fake_gpu
    b = GraphBuilder()
    x = b.input("x", (3, 7))
    h = b.op("Hardmax", b.op("Relu", x), axis=-1)
    b.output(b.op("Mul", h, x), "y")
    b.output(b.op("Sigmoid", x), "s")
    m = graphopt.compile(b.graph, backend="cuda", level=0)
    assert [p.split(":")[0] for p in m.stats["partitions"]] == ["device", "host hardmax_1 (Hardmax)", "device"]
    downloads = []
    real_get = FakeArray.get
    monkeypatch.setattr(FakeArray, "get", lambda self, *a, **k: downloads.append(self.a.shape) or real_get(self, *a, **k))
    feeds = {"x": rnd(3, 7, seed=4)}
    outs = m(cp.asarray(feeds["x"]))
    assert downloads == [(3, 7)]  # the Relu result the Hardmax reads
    assert all(isinstance(o, FakeArray) for o in outs)
    for got, want in zip(outs, run_reference(b.graph, feeds)):
        np.testing.assert_allclose(real_get(got), want, rtol=1e-5, atol=1e-6)
    got = m(cp.asarray(feeds["x"]), return_numpy=True)
    assert all(type(o) is np.ndarray for o in got)


def test_dropout_in_training_mode_is_not_taken_for_the_identity():
    """Dropout is a view only when its training_mode is a constant false: one computed at run time
    runs on the host, where the reference is the identity for false and refuses true (as the CPU
    backend does); a constant false stays a view."""
    b = GraphBuilder(opset=18)
    x = b.input("x", (2, 5))
    t = b.input("t", (), "bool")
    b.output(b.op("Mul", b.op("Dropout", b.op("Relu", x), np.float32(0.5), t), np.float32(2)), "y")
    m = get_backend("cuda-emu").compile(b.graph)
    assert [h["op"] for h in m.stats["host_nodes"]] == ["Dropout"]
    feeds = {"x": rnd(2, 5), "t": np.array(False)}
    np.testing.assert_array_equal(m.run(feeds)[0], run_reference(b.graph, feeds)[0])
    for exe in (m, graphopt.compile(b.graph, backend="cpu")):
        with pytest.raises(UnsupportedOpError, match="training_mode=True"):
            exe.run({**feeds, "t": np.array(True)})
    with pytest.raises(UnsupportedOpError, match="Dropout .*training_mode is not a constant false"):
        graphopt.compile(b.graph, backend="cuda-emu", strict=True)

    c = GraphBuilder(opset=18)
    x = c.input("x", (2, 5))
    c.output(c.op("Mul", c.op("Dropout", c.op("Relu", x), np.float32(0.5), np.array(False)), np.float32(2)), "y")
    m = get_backend("cuda-emu").compile(c.graph)
    assert not m.stats.get("host_nodes")
    np.testing.assert_array_equal(m.run({"x": feeds["x"]})[0], run_reference(c.graph, {"x": feeds["x"]})[0])


def test_a_folded_result_gives_its_readers_a_static_shape():
    """A causal mask built from the input's shape (Shape -> Range -> Less -> Where, as ONNX's
    Attention function body builds it) folds to a constant whose shape its data reader (the Add)
    then infers from, so the Add runs in a kernel rather than on the host for a shape it took to
    depend on the data."""
    b = GraphBuilder(opset=18)
    x = b.input("x", (4, 6))
    n = b.op("Gather", b.op("Shape", x), np.array(1, np.int64), axis=0)
    cols = b.op("Range", np.array(0, np.int64), n, np.array(1, np.int64))
    rows = b.op("Unsqueeze", b.op("Range", np.array(0, np.int64), np.array(4, np.int64), np.array(1, np.int64)),
                np.array([1], np.int64))
    mask = b.op("Where", b.op("Less", rows, cols), np.float32(-np.inf), np.float32(0))
    b.output(b.op("Add", x, mask), "y")
    m = get_backend("cuda-emu").compile(b.graph)
    assert not m.stats.get("host_nodes")
    feeds = {"x": rnd(4, 6)}
    np.testing.assert_array_equal(m.run(feeds)[0], run_reference(b.graph, feeds)[0])


def test_a_function_body_whose_ops_are_functions_themselves_is_expanded():
    """SoftmaxCrossEntropyLoss's body reads NegativeLogLikelihoodLoss, itself a function with no
    kernel: the body is taken once its own function ops are expanded, so the loss runs on kernels
    alone instead of on the host."""
    b = GraphBuilder(opset=13)
    x = b.input("x", (3, 5, 2))
    t = b.input("t", (3, 2), "int64")
    b.output(b.op("SoftmaxCrossEntropyLoss", x, t, reduction="mean"), "loss")
    m = get_backend("cuda-emu").compile(b.graph)
    feeds = {"x": rnd(3, 5, 2), "t": np.random.default_rng(1).integers(0, 5, (3, 2)).astype(np.int64)}
    np.testing.assert_allclose(m.run(feeds)[0], run_reference(b.graph, feeds)[0], rtol=1e-5, atol=1e-6)
    assert not m.stats.get("host_nodes")
    assert [e.split(" ")[1] for e in m.stats["expanded"]] == ["(SoftmaxCrossEntropyLoss)"]
