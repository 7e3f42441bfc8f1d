"""The cuda-emu backend on whole graphs vs the CPU reference: views, folded constants,
the memory arena, outputs that are inputs or constants, every lowered op family, clear
errors for unsupported ops and dynamic shapes, and the `cuda` backend's availability."""
import numpy as np
import pytest

import graphopt
from cuda_harness import assert_ptxas_clean, needs_emu, needs_nvcc
from graphopt.builder import GraphBuilder
from graphopt.errors import InputError, UnsupportedOpError
from graphopt.ops.registry import get_schema
from graphopt.plugin_loader import get_backend
from graphopt.plugins.cpu import run_reference
from graphopt.plugins.cuda.compile_emu import kernel_batch

pytestmark = needs_emu
GRAPHS = {}  # name -> (ops it needs, build() -> (graph, feeds))


def graph_case(*ops):
    def deco(fn):
        GRAPHS[fn.__name__] = (ops, fn)
        return fn
    return deco


def rnd(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@graph_case("Add", "Relu", "Sigmoid", "Mul", "Greater", "Where", "Cast")
def elementwise_chain():
    b = GraphBuilder()
    x, y = b.input("x", (4, 1, 5)), b.input("y", (3, 1))
    z = b.op("Add", x, y)
    m = b.op("Mul", b.op("Sigmoid", b.op("Relu", z)), np.float32(2.0))
    w = b.op("Where", b.op("Greater", m, x), m, z)
    b.output(w, "w")
    b.output(b.op("Cast", w, to=7), "k")
    return b.graph, {"x": rnd(4, 1, 5), "y": rnd(3, 1, seed=1)}


@graph_case("Add", "Mul", "Neg")
def folds_constants_and_passes_through():
    b = GraphBuilder()
    x = b.input("x", (2, 3))
    c = b.op("Mul", b.op("Add", np.ones((2, 3), np.float32), np.float32(2.0)), np.float32(0.5))  # all constant
    y = b.op("Add", x, c)
    b.output(y, "y")
    b.output(c, "c")  # a folded constant as an output
    b.output(b.op("Neg", y), "n")
    return b.graph, {"x": rnd(2, 3)}


@graph_case("Reshape", "Transpose", "Relu", "Flatten", "Unsqueeze", "Squeeze")
def views_and_transposes():
    b = GraphBuilder()
    x = b.input("x", (2, 3, 4))
    r = b.op("Reshape", b.op("Relu", x), np.array([6, 4], np.int64))
    t = b.op("Transpose", r, perm=[1, 0])
    f = b.op("Flatten", t, axis=1)
    u = b.op("Unsqueeze", f, np.array([0], np.int64))
    b.output(b.op("Relu", b.op("Squeeze", u, np.array([0], np.int64))), "y")
    b.output(b.op("Reshape", x, np.array([-1], np.int64)), "flat")  # a view that is a graph output: copied
    return b.graph, {"x": rnd(2, 3, 4)}


@graph_case("Slice", "Concat", "Split", "Expand", "Gather", "Pad")
def data_movement():
    b = GraphBuilder()
    x = b.input("x", (4, 6))
    s = b.op("Slice", x, np.array([3, 1], np.int64), np.array([-5, 6], np.int64), np.array([0, 1], np.int64),
             np.array([-1, 2], np.int64))  # reversed rows, every other column
    c = b.op("Concat", s, b.op("Slice", x, np.array([0], np.int64), np.array([3], np.int64),
                                np.array([1], np.int64)), axis=1)
    p1, p2 = b.op("Split", c, np.array([2, 4], np.int64), axis=1, num_outputs=2)
    e = b.op("Expand", b.op("Slice", x, np.array([0], np.int64), np.array([1], np.int64), np.array([0], np.int64)),
             np.array([3, 6], np.int64))
    g = b.op("Gather", x, np.array([[3, -1], [0, 2]], np.int64), axis=0)
    pd = b.op("Pad", x, np.array([1, 0, 0, 2], np.int64), np.array(9.0, np.float32), mode="constant")
    for v, n in ((p1, "p1"), (p2, "p2"), (e, "e"), (g, "g"), (pd, "pd")):
        b.output(v, n)
    return b.graph, {"x": rnd(4, 6)}


@graph_case("MatMul", "Gemm", "Add", "Relu")
def gemm_family():
    b = GraphBuilder()
    x = b.input("x", (2, 5, 7))
    h = b.op("Relu", b.op("Add", b.op("MatMul", x, rnd(7, 9, seed=2)), rnd(9, seed=3)))
    flat = b.op("MatMul", h, rnd(2, 9, 4, seed=4))  # batched with a matching batch dim
    g = b.op("Gemm", b.input("a", (6, 3)), rnd(5, 3, seed=5), rnd(5, seed=6), transB=1, alpha=0.5, beta=2.0)
    v = b.op("MatMul", rnd(7, seed=7), b.input("m", (7, 3)))  # 1-D by 2-D
    for val, n in ((flat, "y"), (g, "g"), (v, "v")):
        b.output(val, n)
    return b.graph, {"x": rnd(2, 5, 7), "a": rnd(6, 3, seed=8), "m": rnd(7, 3, seed=9)}


@graph_case("Conv", "Relu", "MaxPool", "AveragePool", "GlobalAveragePool", "BatchNormalization", "Add")
def cnn_ops():
    b = GraphBuilder()
    x = b.input("x", (2, 3, 11, 11))
    c = b.op("Relu", b.op("Conv", x, rnd(8, 3, 3, 3, seed=1), rnd(8, seed=2), pads=[1, 1, 1, 1], strides=[2, 2]))
    bn = b.op("BatchNormalization", c, rnd(8, seed=3), rnd(8, seed=4), rnd(8, seed=5),
              np.abs(rnd(8, seed=6)) + 0.5)
    dw = b.op("Conv", bn, rnd(8, 1, 3, 3, seed=7), None, pads=[1, 1, 1, 1], group=8)
    mp = b.op("MaxPool", b.op("Add", dw, bn), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    ap = b.op("AveragePool", bn, kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)
    b.output(b.op("GlobalAveragePool", mp), "gap")
    b.output(ap, "ap")
    return b.graph, {"x": rnd(2, 3, 11, 11)}


@graph_case("Conv")
def pointwise_convs_are_batched_gemms():
    b = GraphBuilder()
    x = b.input("x", (2, 5, 3, 7))
    b.output(b.op("Conv", x, rnd(6, 5, 1, 1, seed=1), rnd(6, seed=2)), "with_bias")
    b.output(b.op("Conv", x, rnd(4, 5, 1, 1, seed=3)), "no_bias")
    return b.graph, {"x": rnd(2, 5, 3, 7)}


@graph_case("Softmax", "LayerNormalization", "ReduceMean", "ReduceMax", "ReduceSum")
def normalizations():
    b = GraphBuilder()
    x = b.input("x", (2, 5, 40))
    b.output(b.op("Softmax", x, axis=-1), "sm")
    b.output(b.op("LayerNormalization", x, rnd(40, seed=1), rnd(40, seed=2), axis=-1, epsilon=1e-5), "ln")
    b.output(b.op("ReduceMean", x, np.array([1], np.int64), keepdims=1), "rm")
    b.output(b.op("ReduceMax", x, np.array([0, 2], np.int64), keepdims=0), "rx")
    b.output(b.op("ReduceSum", x, np.array([-1], np.int64), keepdims=0), "rs")
    return b.graph, {"x": rnd(2, 5, 40)}


@graph_case("MatMul", "Gemm", "Cast", "Relu", "Transpose")
def float16_on_tensor_cores():
    b = GraphBuilder()
    x = b.input("x", (3, 20, 24), "float16")
    h = b.op("MatMul", x, rnd(24, 16, seed=1).astype(np.float16))
    g = b.op("Gemm", b.op("Cast", b.input("a", (9, 12)), to=10), rnd(12, 8, seed=2).astype(np.float16),
             rnd(8, seed=3).astype(np.float16))
    b.output(b.op("Relu", b.op("Cast", h, to=1)), "h")
    b.output(b.op("Transpose", g, perm=[1, 0]), "g")
    return b.graph, {"x": rnd(3, 20, 24).astype(np.float16), "a": rnd(9, 12, seed=4)}


@graph_case("MatMul", "Relu", "Concat")
def empty_tensors_in_between():
    b = GraphBuilder()
    x = b.input("x", (3, 0))
    e = b.op("Relu", x)  # no work: no launch, no buffer
    b.output(b.op("MatMul", e, rnd(0, 4)), "zeros")  # K = 0: the product is all zeros
    b.output(b.op("Concat", e, b.input("y", (3, 2)), axis=1), "cat")
    return b.graph, {"x": np.zeros((3, 0), np.float32), "y": rnd(3, 2)}


def fused(b, op, *inputs, num_outputs=1, **attrs):
    return b.op(op, *inputs, domain="ai.graphopt", num_outputs=num_outputs, **attrs)


@graph_case("FusedElementwise")
def fused_elementwise_outputs_of_two_shapes():
    b = GraphBuilder()
    x, y = b.input("x", (3, 4)), b.input("y", (2, 3, 4))
    r, m, c = fused(b, "FusedElementwise", x, y, num_outputs=3,
                    expr="t0 = add(in0, 0.5); relu(t0), mul(t0, in1), cast<int64>(gt(in0, 0.0))")
    for v, n in ((r, "r"), (m, "m"), (c, "c")):
        b.output(v, n)
    return b.graph, {"x": rnd(3, 4), "y": rnd(2, 3, 4, seed=1)}


@graph_case("FusedConv", "FusedGemm", "FusedMatMul")
def fused_epilogues():
    b = GraphBuilder()
    x = b.input("x", (2, 3, 7, 7))
    res = b.input("res", (2, 4, 7, 7))
    b.output(fused(b, "FusedConv", x, rnd(4, 3, 3, 3, seed=1), rnd(4, seed=2), res, pads=[1, 1, 1, 1],
                   epilogue="relu(add(acc, in1))"), "conv")
    b.output(fused(b, "FusedConv", x, rnd(5, 3, 1, 1, seed=3), None, rnd(5, 1, 1, seed=4),
                   epilogue="mul(sigmoid(acc), in1)"), "conv1x1")
    a = b.input("a", (5, 6))
    b.output(fused(b, "FusedGemm", a, rnd(6, 3, seed=5), rnd(3, seed=6), rnd(5, 1, seed=7), beta=0.5,
                   epilogue="tanh(mul(acc, in1))"), "gemm")
    b.output(fused(b, "FusedMatMul", rnd(6, seed=8), b.input("m", (2, 6, 4)), rnd(4, seed=9),
                   epilogue="add(acc, in1)"), "vecmat")
    return b.graph, {"x": rnd(2, 3, 7, 7), "res": rnd(2, 4, 7, 7, seed=10), "a": rnd(5, 6, seed=11),
                     "m": rnd(2, 6, 4, seed=12)}


@graph_case("Attention")
def attention_layouts():
    b = GraphBuilder()
    q, k, v = b.input("q", (2, 3, 5, 8)), b.input("kt", (2, 3, 8, 6)), b.input("v", (2, 3, 6, 8))
    b.output(fused(b, "Attention", q, k, v, rnd(5, 6, seed=1), scale=0.3, k_transposed=1, mask_type="additive"),
             "bhsd")
    p = b.input("p", (2, 4, 12))  # [B, S, H*D] with 3 heads
    key_mask = b.input("mask", (2, 1, 1, 4))
    b.output(fused(b, "Attention", p, p, p, key_mask, scale=0.5, layout="BSHD", num_heads=3,
                   mask_type="additive"), "bshd")
    mask = np.where(np.random.default_rng(3).random((2, 1, 1, 4)) < 0.3, -1e4, 0).astype(np.float32)
    mask[..., 0] = 0
    return b.graph, {"q": rnd(2, 3, 5, 8), "kt": rnd(2, 3, 8, 6, seed=1), "v": rnd(2, 3, 6, 8, seed=2),
                     "p": rnd(2, 4, 12, seed=3), "mask": mask}


def _missing(ops):
    return [op for op in ops if get_schema(op) is None and get_schema(op, "ai.graphopt") is None]


@pytest.fixture(scope="module")
def compiled():
    """Every graph case compiled inside one batch: a single host compile for the module."""
    be = get_backend("cuda-emu")
    out = {}
    with kernel_batch():
        for name, (ops, build) in GRAPHS.items():
            if _missing(ops):
                continue
            g, feeds = build()
            out[name] = (g, feeds, be.compile(g))
    return out


@pytest.mark.parametrize("name", list(GRAPHS))
def test_graph_matches_cpu_reference(compiled, name):
    missing = _missing(GRAPHS[name][0])
    if missing:
        pytest.skip(f"ops not in the registry yet: {missing}")
    g, feeds, exe = compiled[name]
    got = exe.run(feeds)
    want = run_reference(g, feeds)
    assert len(got) == len(want)
    for v, a, r in zip(g.outputs, got, want):
        assert a.shape == r.shape and a.dtype == r.dtype, v.name
        tol = 1e-4 if name != "float16_on_tensor_cores" else 1e-2  # half-precision outputs
        np.testing.assert_allclose(a.astype(np.float32), r.astype(np.float32), rtol=tol, atol=tol,
                                   err_msg=f"{name}: output {v.name}")


def test_plan_reuses_buffers_and_counts_the_work(compiled):
    g, feeds, exe = compiled["elementwise_chain"]
    s = exe.stats
    assert s["backend"] == "cuda-emu" and s["launches"] == s["kernels"] == 7
    assert exe.lowered.plan.peak_bytes < exe.lowered.plan.naive_bytes  # buffers are shared over time
    assert all(sched.startswith("ElementwiseSpec(") for sched in s["schedules"].values())


def test_constant_subgraphs_fold_and_outputs_may_be_constants(compiled):
    g, feeds, exe = compiled["folds_constants_and_passes_through"]
    assert exe.stats["folded_at_compile_time"] == 2
    assert exe.stats["launches"] == 2
    c = exe.run(feeds)[1]
    np.testing.assert_array_equal(c, np.full((2, 3), 1.5, np.float32))


def test_fused_ops_are_one_kernel_each(compiled):
    kinds = [l.node.op_type for l in compiled["fused_epilogues"][2].lowered.launches]
    assert kinds == ["FusedConv", "FusedConv", "FusedGemm", "FusedMatMul"]
    ew = compiled["fused_elementwise_outputs_of_two_shapes"][2].lowered.launches
    assert [len(l.kernel.spec.outs) for l in ew] == [2, 1]  # one kernel per output shape
    assert len(compiled["attention_layouts"][2].lowered.launches) == 2


def test_pointwise_conv_uses_the_gemm_kernel(compiled):
    g, feeds, exe = compiled["pointwise_convs_are_batched_gemms"]
    assert [type(l.kernel.spec).__name__ for l in exe.lowered.launches] == ["MatmulSpec", "MatmulSpec"]


def test_views_cost_no_kernels(compiled):
    if "views_and_transposes" not in compiled:
        pytest.skip("shape ops not in the registry yet")
    g, feeds, exe = compiled["views_and_transposes"]
    kinds = [l.node.op_type for l in exe.lowered.launches]
    assert kinds.count("Reshape") == 1  # only the one that is a graph output is copied
    assert "Flatten" not in kinds and "Squeeze" not in kinds and "Unsqueeze" not in kinds


def test_unsupported_op_is_one_clear_error():
    b = GraphBuilder()
    x = b.input("x", (3,))
    y = b.graph.make_node("Mystery", [x], domain="custom.ops", name="m1").output
    b.output(y)
    be = get_backend("cuda-emu")
    assert not be.supports(b.graph.nodes[0])
    with pytest.raises(UnsupportedOpError, match=r"unsupported op custom\.ops::Mystery \(node 'm1'\) on backend "
                                                 r"'cuda-emu'"):
        be.compile(b.graph)


def test_symbolic_input_dims_compile_per_shape_at_first_run():
    b = GraphBuilder()
    x = b.input("x", ("batch", 4))
    b.output(b.op("Relu", b.op("Add", x, rnd(4))), "y")
    exe = get_backend("cuda-emu").compile(b.graph)
    for n in (3, 5, 3):
        feed = rnd(n, 4, seed=n)
        np.testing.assert_allclose(exe.run({"x": feed})[0], run_reference(b.graph, {"x": feed})[0], rtol=1e-6)
    assert exe.stats["specializations"] == 2 and exe.stats["backend"] == "cuda-emu"


def test_shape_inputs_are_specialized_by_value():
    """A small integer input read as a Reshape's shape is bound per run, as a shape tensor."""
    b = GraphBuilder()
    x = b.input("x", (2, 6))
    y = b.op("Relu", b.op("Reshape", x, b.input("shape", (2,), "int64")))
    b.output(y, "y")
    exe = get_backend("cuda-emu").compile(b.graph)
    for shape in ([3, 4], [4, 3], [3, 4]):
        feeds = {"x": rnd(2, 6), "shape": np.array(shape, np.int64)}
        got = exe.run(feeds)[0]
        assert got.shape == tuple(shape)
        np.testing.assert_array_equal(got, run_reference(b.graph, feeds)[0])
    assert exe.stats["specializations"] == 2 and exe.stats["launches"] >= 1
    assert exe.stats["signatures"] == ["x[2,6] shape[2] shape=[4, 3]", "x[2,6] shape[2] shape=[3, 4]"]  # LRU order


def test_shapes_computed_from_data_are_refused_by_name_under_strict():
    """(Without ``strict`` the Reshape runs on the host: test_cuda_fallback.py.)"""
    b = GraphBuilder()
    x = b.input("x", (2, 6))
    shape = b.op("Cast", b.op("Abs", b.input("s", (2,))), to=7)  # a shape from float data
    b.output(b.op("Relu", b.op("Reshape", x, shape)), "y")
    with pytest.raises(UnsupportedOpError, match="node 'relu_1' .*has no static shape"):
        graphopt.compile(b.graph, backend="cuda-emu", strict=True)


def test_unsupported_ops_fail_at_compile_time_even_with_symbolic_dims():
    b = GraphBuilder()
    x = b.input("x", ("n",))
    b.output(b.graph.make_node("Mystery", [x], domain="custom.ops", name="m2").output)
    with pytest.raises(UnsupportedOpError, match="custom.ops::Mystery"):
        get_backend("cuda-emu").compile(b.graph)


def test_inputs_are_checked_and_outputs_may_alias_inputs(compiled):
    b = GraphBuilder()
    x = b.input("x", (2, 2))
    b.output(b.op("Relu", x), "y")
    b.graph.add_output(x)
    exe = get_backend("cuda-emu").compile(b.graph)
    feed = rnd(2, 2)
    y, xo = exe.run({"x": feed})
    np.testing.assert_array_equal(xo, feed)
    assert xo is not feed
    with pytest.raises(InputError, match="dtype float64"):
        exe.run({"x": feed.astype(np.float64)})
    strided = rnd(2, 2, seed=5).T  # a non-contiguous feed is read correctly
    np.testing.assert_array_equal(exe.run({"x": strided})[0], np.maximum(strided, 0))


def test_public_compile_api_runs_on_cuda_emu():
    b = GraphBuilder()
    x = b.input("x", (3, 4))
    b.output(b.op("Sigmoid", b.op("Add", x, rnd(4))), "y")
    model = graphopt.compile(b.graph, backend="cuda-emu")
    feed = rnd(3, 4, seed=3)
    np.testing.assert_allclose(model(feed)[0], run_reference(b.graph, {"x": feed})[0], rtol=1e-5, atol=1e-6)


def test_lowering_pipeline_names_only_registered_passes():
    from graphopt.passmanager import all_passes

    registered = {p.name for p in all_passes()}
    for name in ("cuda", "cuda-emu"):
        pipeline = get_backend(name).lowering_pipeline(None)
        assert set(pipeline) <= registered


def test_cuda_backend_says_why_it_is_unavailable():
    ok, why = get_backend("cuda").is_available()
    try:
        import cupy  # noqa: F401
    except ImportError:
        assert not ok and why == "CuPy is not installed (pip install cupy-cuda13x)"


@needs_nvcc
def test_compile_option_nvcc_check_reports_resources():
    b = GraphBuilder()
    x = b.input("x", (4, 70))
    b.output(b.op("Softmax", x, axis=-1), "y")
    model = graphopt.compile(b.graph, backend="cuda-emu", nvcc_check=True)
    (info,) = model.stats["ptxas"].values()
    assert info["registers"] > 0 and info["spill_stores"] == 0


@needs_nvcc
def test_every_kernel_of_these_graphs_compiles_for_sm90(compiled):
    from graphopt.plugins.cuda.compile_nvcc import nvcc_check

    kernels = list({k.name: k for _, _, exe in compiled.values() for k in exe.lowered.kernels}.values())
    assert_ptxas_clean(nvcc_check(kernels), kernels)


@needs_nvcc
def test_nvcc_check_compiles_a_wgmma_kernel_for_sm90a_beside_the_rest(monkeypatch):
    # once a process runs wgmma (GRAPHOPT_CUDA_MMA or the self-check), cuda-emu's nvcc_check must
    # compile those kernels for the one arch they have, the others for the arch asked for
    from graphopt.plugins.cuda.compile_nvcc import nvcc_check

    monkeypatch.setenv("GRAPHOPT_CUDA_MMA", "wgmma")
    b = GraphBuilder()
    x = b.input("x", (128, 64), "float16")
    b.output(b.op("Softmax", b.op("MatMul", x, np.ones((64, 128), np.float16)), axis=-1), "y")
    model = graphopt.compile(b.graph, backend="cuda-emu", nvcc_check=True, gemm="generated")
    kernels = model.executable.lowered.kernels
    assert any(getattr(k.spec, "engine", None) == "wgmma" for k in kernels)
    assert set(model.stats["ptxas"]) == {k.name for k in kernels}
    assert set(nvcc_check(kernels, "sm_90")) == {k.name for k in kernels}
