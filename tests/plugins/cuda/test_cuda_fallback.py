"""Nodes with no CUDA kernel run on the host inside the compiled model (partition.py), named
in stats with the reason; ``strict`` refuses them; a node that cannot run anywhere (no
reference kernel, a data-dependent shape) is refused by name. And per-signature
specialization folds what became static before nodes are checked (specialize.py)."""
import numpy as np
import pytest

import graphopt
from cuda_harness import needs_emu
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
    """Relu -> Hardmax (no kernel) -> Mul, and an integer Mod (no kernel) feeding a Cast."""
    b = GraphBuilder(opset=18)
    x = b.input("x", (batch, 7))
    k = b.input("k", (batch, 7), "int64")
    h = b.op("Hardmax", b.op("Relu", b.op("Add", x, np.float32(0.25))), axis=-1)
    b.output(b.op("Mul", h, x), "y")
    m = b.op("Mod", k, np.array(3, np.int64))
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
    assert set(hosts) == {"Hardmax", "Mod"}, static.stats["host_nodes"]
    assert "no CUDA kernel for Hardmax" in hosts["Hardmax"]["why"]
    assert "Mod has no expression form" in hosts["Mod"]["why"]
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
    assert st["specializations"] == 2 and {h["op"] for h in st["host_nodes"]} == {"Hardmax", "Mod"}
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
    """Pad's constant value computed from data: the kernel bakes its value in, so the node must
    run on the host rather than pad with the default 0."""
    b = GraphBuilder(opset=18)
    x = b.input("x", (2, 3))
    value = b.op("ReduceMax", x, keepdims=0)
    b.output(b.op("Pad", x, np.array([1, 0, 0, 2], np.int64), value), "y")
    m = get_backend("cuda-emu").compile(b.graph)
    feeds = {"x": rnd(2, 3)}
    np.testing.assert_array_equal(m.run(feeds)[0], run_reference(b.graph, feeds)[0])
    assert [h["op"] for h in m.stats["host_nodes"]] == ["Pad"]
    assert "constant_value (input 2) must be a constant" in m.stats["host_nodes"][0]["why"]
