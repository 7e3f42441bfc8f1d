"""The CPU backend's memory plan, in-place execution and prepared kernels, checked by numbers.

The plan reuses buffers (its peak is below the sum of the intermediates); running
with prepared kernels and in-place steps gives the numbers of the plain registry
interpreter (``fast=False``) and of onnxruntime, at -O0 and -O2.
"""
import numpy as np
import pytest

import graphopt
from graphopt.builder import GraphBuilder
from graphopt.memory import value_nbytes
from graphopt.plugins.cpu import CpuExecutable

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from samples import models  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    module, example = models.resnet_style(batch=1)
    path = models.export_onnx(module, example, tmp_path_factory.mktemp("resnet") / "resnet.onnx",
                              dynamic_batch=False)
    return path, {"input": example[0].numpy()}


def plain(graph, feeds):
    """The registry kernels alone, node by node (no prepared kernels, nothing in place)."""
    return CpuExecutable(graph, fast=False).run(feeds)


def test_resnet_plan_reuses_buffers(resnet):
    path, feeds = resnet
    model = graphopt.compile(str(path), backend="cpu", level=0)
    inter = [v for n in model.graph for v in n.outputs if v not in set(model.graph.outputs)]
    total = sum(value_nbytes(v) for v in inter)
    plan = model.executable.plan
    assert not plan.unplanned and len(plan.offsets) == len(inter)
    assert 0 < model.stats["planned_peak_bytes"] == plan.peak_bytes < total / 2
    # buffers that share memory never live at the same time
    lts = sorted(plan.lifetimes, key=lambda lt: plan.offsets[lt.value])
    for a in lts:
        for b in lts:
            if a is not b and a.start <= b.end and b.start <= a.end:
                oa, ob = plan.offsets[a.value], plan.offsets[b.value]
                assert oa + a.nbytes <= ob or ob + b.nbytes <= oa


def test_resnet_O0_outputs_equal_reference(resnet):
    path, feeds = resnet
    model = graphopt.compile(str(path), backend="cpu", level=0)
    assert model.stats["inplace_steps"] >= 9  # BatchNorm, Relu and the residual Adds over dying Conv results
    (got,) = model.run(feeds)
    (want,) = plain(model.graph, feeds)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    (ref,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    (again,) = model.run(feeds)  # nothing a run leaves behind changes the next one
    np.testing.assert_array_equal(again, got)


@pytest.mark.parametrize("name", ["mobilenet_v2_style", "bert_style"])
def test_samples_O2_match_plain_interpreter_and_onnxruntime(name, tmp_path):
    module, example = models.BUILDERS[name](batch=2)
    path = models.export_onnx(module, example, tmp_path / f"{name}.onnx")  # symbolic batch
    feeds = {n: x.numpy() for n, x in zip(module.input_names, example)}
    model = graphopt.compile(str(path), backend="cpu", level=2)
    (got,) = model.run(feeds)
    (want,) = plain(graphopt.load(str(path)), feeds)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)  # fusion reassociates
    (ref,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    plan = model.executable.plan  # planned for the shapes of the run
    assert not plan.unplanned and 0 < plan.peak_bytes < plan.naive_bytes


CONVS = [  # (input shape, weight shape, attrs); half of them take the flat im2col (stride 1, padded rows
    # at most 25% wider than the output rows), half the window view
    ((2, 4, 12, 12), (6, 4, 3, 3), {"pads": [1, 1, 1, 1]}),
    ((2, 4, 9, 7), (6, 4, 3, 3), {"pads": [1, 1, 1, 1]}),
    ((1, 4, 9, 7), (6, 4, 3, 2), {"pads": [0, 1, 2, 0], "dilations": [2, 1]}),
    ((2, 4, 9, 8), (6, 4, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    ((1, 4, 9, 8), (6, 4, 1, 1), {"strides": [2, 3]}),
    ((2, 6, 8, 8), (6, 1, 3, 3), {"pads": [1, 1, 1, 1], "group": 6}),
    ((1, 6, 8, 8), (12, 1, 3, 3), {"pads": [1, 1, 1, 1], "group": 6, "strides": [2, 2]}),
    ((1, 6, 5, 5), (4, 3, 3, 3), {"auto_pad": "SAME_UPPER", "group": 2}),
    ((2, 3, 11), (5, 3, 4), {"pads": [2, 1]}),
    ((1, 2, 5, 6, 4), (3, 2, 3, 3, 3), {"pads": [1, 1, 1, 1, 1, 1]}),
    ((1, 2, 4, 12, 12), (3, 2, 3, 1, 3), {"pads": [1, 0, 1, 1, 0, 1]}),
    ((1, 4, 16, 16), (8, 2, 3, 3), {"pads": [1, 2, 1, 2], "group": 2, "dilations": [1, 2]}),
]


@pytest.mark.parametrize("xs,ws,attrs", CONVS)
def test_prepared_conv_with_epilogue_matches_registry(xs, ws, attrs):
    """Conv, FusedConv with a residual epilogue, FusedConv with an activation (run before the crop)."""
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = b.input("x", xs)
    w = rng.standard_normal(ws).astype(np.float32)
    bias = rng.standard_normal(ws[0]).astype(np.float32)
    y = b.op("Conv", x, w, bias, **attrs)
    r = b.input("r", y.type.shape)
    z = b.op("FusedConv", x, w, bias, r, domain="ai.graphopt", epilogue="relu(add(acc, in1))", **attrs)
    a = b.op("FusedConv", x, w, bias, domain="ai.graphopt", epilogue="min(max(acc, 0.0), 6.0)", **attrs)
    b.output(y, "y")
    b.output(z, "z")
    b.output(a, "a")
    feeds = {"x": rng.standard_normal(xs).astype(np.float32), "r": rng.standard_normal(y.type.shape).astype(np.float32)}
    exe = CpuExecutable(b.graph)
    assert exe.stats["prepared_steps"] == 3
    got, want = exe.run(feeds), plain(b.graph, feeds)
    for g, e in zip(got, want):
        assert g.shape == e.shape and g.dtype == e.dtype
        np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)


def test_inplace_never_overwrites_a_value_read_later():
    """Relu may write over the Conv result only where nothing aliasing it is read afterwards."""
    b = GraphBuilder()
    x = b.input("x", (1, 2, 4, 4))
    c = b.op("Conv", x, np.ones((2, 2, 1, 1), np.float32))
    flat = b.op("Flatten", c)           # a view of c, read at the end
    r = b.op("Relu", b.op("Neg", c))    # Neg's result dies at Relu: overwritten
    s = b.op("Relu", c)                 # c dies here, but its view is still to be read: not overwritten
    b.output(b.op("Add", b.op("Flatten", b.op("Add", r, s)), flat), "y")
    exe = CpuExecutable(b.graph)
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 2, 4, 4)).astype(np.float32)}
    steps = {st.node.op_type + str(i): st.inplace for i, st in enumerate(exe.interp.steps)}
    assert steps["Relu3"] and not steps["Relu4"]
    np.testing.assert_array_equal(exe.run(feeds)[0], plain(b.graph, feeds)[0])


def test_inputs_and_outputs_are_never_overwritten():
    b = GraphBuilder()
    x = b.input("x", (3,))
    y = b.op("Relu", x)
    b.output(y, "y")
    b.output(b.op("Neg", y), "z")
    x0 = np.array([-1.0, 0.5, 2.0], np.float32)
    keep = x0.copy()
    y, z = CpuExecutable(b.graph).run({"x": x0})
    np.testing.assert_array_equal(x0, keep)
    np.testing.assert_array_equal(y, [0.0, 0.5, 2.0])
    np.testing.assert_array_equal(z, [-0.0, -0.5, -2.0])


def test_threads_sharing_one_executable_keep_their_own_workspaces(resnet):
    """Conv scratch buffers (im2col columns, padded inputs) persist between runs, one set per
    thread: four threads running one executable on different inputs get each their own answer."""
    from concurrent.futures import ThreadPoolExecutor

    graph = resnet[0] if isinstance(resnet, tuple) else resnet
    exe = CpuExecutable(graphopt.optimize(graph, level=2))
    name = exe.graph.inputs[0].name
    rng = np.random.default_rng(7)
    feeds = [{name: rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(8)]
    alone = [exe.run(f)[0] for f in feeds]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda f: [exe.run(f)[0] for _ in range(5)], feeds))
    for want, runs in zip(alone, together):
        for got in runs:
            np.testing.assert_array_equal(got, want)
