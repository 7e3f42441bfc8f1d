"""fuse_rmsnorm_onnx / fuse_rmsnorm: RMS normalization written out op by op (every form the
torch exporters write) becomes RMSNormalization (opset 23) or ai.graphopt::RMSNormalization
(lowering, any opset); numbers against the unfused graph on the reference (float32: the
division reassociates, rtol 1e-4 / atol 1e-5), in onnxruntime, and the CPU backend's kernel."""
import numpy as np
import pytest

from graphopt import GraphBuilder
from graphopt.testing import assert_same_outputs, random_feeds, run_passes
from pass_helpers import ops, refusals

RNG = np.random.default_rng(0)
N = 16


def rms(b, x, square="mul", inverse="reciprocal", gamma=True, axes=(-1,), eps=1e-6):
    sq = b.op("Mul", x, x) if square == "mul" else b.op("Pow", x, np.float32(2.0))
    ms = b.op("ReduceMean", sq, np.array(axes, np.int64), keepdims=1)
    ve = b.op("Add", ms, np.float32(eps))
    if inverse == "div_x":
        y = b.op("Div", x, b.op("Sqrt", ve))
    else:
        r = {"reciprocal": lambda: b.op("Reciprocal", b.op("Sqrt", ve)),
             "one_over": lambda: b.op("Div", np.float32(1.0), b.op("Sqrt", ve)),
             "pow": lambda: b.op("Pow", ve, np.float32(-0.5))}[inverse]()
        y = b.op("Mul", x, r)
    if gamma is True:
        gamma = (1 + 0.3 * RNG.standard_normal(N)).astype(np.float32)
    return y if gamma is None else b.op("Mul", gamma, y)


def graph(opset=23, **kw):
    b = GraphBuilder(opset=opset)
    x = b.input("x", ("batch", 5, N))
    b.output(rms(b, x, **kw), "y")
    return b.graph


@pytest.mark.parametrize("square", ["mul", "pow"])
@pytest.mark.parametrize("inverse", ["reciprocal", "one_over", "pow", "div_x"])
def test_every_exported_form_becomes_rmsnormalization(square, inverse):
    g = graph(square=square, inverse=inverse)
    g0 = g.clone()
    rec = run_passes(g, ["fuse_rmsnorm_onnx", "eliminate_dead_code"]).records[0]
    assert rec.stats == {"rmsnorm_chain_to_rmsnormalization": 1, "mul_rmsnorm_to_rmsnorm": 1}
    assert ops(g) == ["RMSNormalization"]
    (node,) = g
    assert node.attrs["axis"] == 2 and node.attrs["epsilon"] == pytest.approx(1e-6)
    assert_same_outputs(g0, g)


def test_without_gamma_the_scale_is_ones():
    g = graph(gamma=None)
    g0 = g.clone()
    run_passes(g, ["fuse_rmsnorm_onnx", "eliminate_dead_code"])
    assert ops(g) == ["RMSNormalization"] and (g.nodes[0].input(1).const == 1).all()
    assert_same_outputs(g0, g)


def test_older_opsets_need_a_target_and_the_lowering_takes_any():
    assert refusals(lambda b: rms(b, b.input("x", (2, 5, N))), ["fuse_rmsnorm_onnx"], opset=18) == {"opset 18 < 23"}
    g = graph(opset=18)
    g0 = g.clone()
    run_passes(g, ["fuse_rmsnorm", "eliminate_dead_code"])
    assert [n.qualified_op for n in g] == ["ai.graphopt::RMSNormalization"]
    assert_same_outputs(g0, g)
    g = graph(opset=18)
    run_passes(g, ["fuse_rmsnorm_onnx", "eliminate_dead_code"], target_opset=23)
    assert ops(g) == ["RMSNormalization"] and g.opset_imports[""] == 23


def test_what_is_not_rms_normalization_is_left():
    assert refusals(lambda b: rms(b, b.input("x", (2, N, 5)), axes=(1,)), ["fuse_rmsnorm_onnx"], opset=23) \
        == {"normalizes axes [1], not the last ones"}
    # gamma that varies along a normalized-out axis stays a Mul after the RMSNormalization
    g = graph(gamma=RNG.standard_normal((5, 1)).astype(np.float32))
    g0 = g.clone()
    rec = run_passes(g, ["fuse_rmsnorm_onnx", "eliminate_dead_code"]).records[0]
    assert ops(g) == ["RMSNormalization", "Mul"]
    assert ("mul_rmsnorm_to_rmsnorm", "gamma varies along axes that are not normalized") in rec.refused
    assert_same_outputs(g0, g)


def test_onnxruntime_runs_the_fused_model():
    ort = pytest.importorskip("onnxruntime")
    from graphopt.onnx_io import to_onnx_model

    g = graph()
    g0 = g.clone()
    run_passes(g, ["fuse_rmsnorm_onnx", "eliminate_dead_code"])
    feeds = random_feeds(g0)
    want, got = (ort.InferenceSession(to_onnx_model(h).SerializeToString()).run(None, feeds)[0] for h in (g0, g))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("domain_pass", ["fuse_rmsnorm_onnx", "fuse_rmsnorm"])
def test_cpu_kernel_matches_the_reference(domain_pass):
    from graphopt.plugins.cpu.backend import CpuExecutable

    b = GraphBuilder(opset=23)
    x = b.input("x", (3, 7, 96))
    N_ = 96
    gamma = (1 + 0.3 * RNG.standard_normal(N_)).astype(np.float32)
    sq = b.op("Mul", x, x)
    r = b.op("Reciprocal", b.op("Sqrt", b.op("Add", b.op("ReduceMean", sq, np.array([-1]), keepdims=1),
                                             np.float32(1e-5))))
    b.output(b.op("Mul", gamma, b.op("Mul", x, r)), "y")
    run_passes(b.graph, [domain_pass, "eliminate_dead_code"])
    assert ops(b.graph) == ["RMSNormalization"]
    feeds = {"x": (RNG.standard_normal((3, 7, 96)) * 3).astype(np.float32)}
    fast, ref = CpuExecutable(b.graph).run(feeds)[0], CpuExecutable(b.graph, fast=False).run(feeds)[0]
    np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-6)
