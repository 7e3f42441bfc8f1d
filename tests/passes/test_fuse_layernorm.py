"""fuse_layernorm: the ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div chain (and the other
spellings exporters write) becomes LayerNormalization, gamma and beta fold into it;
near misses and old opsets are refused with a reason.

Tolerance: rtol 1e-4 / atol 1e-5 (the float32 default): the fused op computes the same
statistics, only the order of a few roundings differs.
"""
import numpy as np
import pytest

from graphopt import GraphBuilder
from graphopt.testing import assert_same_outputs, run_passes

RNG = np.random.default_rng(0)


def ops(g):
    return [n.op_type for n in g]


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def mean(b, v, axes, opset):
    if opset >= 18:
        return b.op("ReduceMean", v, np.array(axes, np.int64))
    return b.op("ReduceMean", v, axes=axes)


def chain(b, x, axes=(-1,), opset=17, square="pow", divide="div", eps=1e-5):
    """(x - mean) / sqrt(var + eps) as exporters spell it."""
    axes = list(axes)
    d = b.op("Sub", x, mean(b, x, axes, opset))
    sq = b.op("Pow", d, np.float32(2)) if square == "pow" else b.op("Mul", d, d)
    ve = b.op("Add", mean(b, sq, axes, opset), np.float32(eps))
    if divide == "div":
        return b.op("Div", d, b.op("Sqrt", ve))
    if divide == "reciprocal":
        return b.op("Mul", b.op("Reciprocal", b.op("Sqrt", ve)), d)
    return b.op("Mul", d, b.op("Pow", ve, np.float32(-0.5)))


def affine(b, n, gamma=None, beta=None):
    if gamma is not None:
        n = b.op("Mul", n, gamma)
    if beta is not None:
        n = b.op("Add", beta, n)  # the constant first: Add is commutative
    return n


def fuse(build, opset=17, shape=(2, 5, 8), **ctx):
    b = GraphBuilder(opset=opset)
    x = b.input("x", shape)
    b.output(build(b, x), "y")
    g0 = b.graph.clone()
    report = run_passes(b.graph, ["fuse_layernorm", "eliminate_dead_code"], **ctx)
    return g0, b.graph, report.records[0]


CASES = [
    ("pow_div_gamma_beta", lambda b, x: affine(b, chain(b, x), rand(8), rand(8)), 17),
    ("mul_square_reciprocal", lambda b, x: affine(b, chain(b, x, square="mul", divide="reciprocal"),
                                                  rand(8), rand(8)), 17),
    ("rsqrt_as_pow", lambda b, x: affine(b, chain(b, x, divide="rsqrt"), rand(8), rand(8)), 17),
    ("no_gamma_no_beta", lambda b, x: chain(b, x), 17),
    ("gamma_only", lambda b, x: affine(b, chain(b, x), gamma=rand(1, 1, 8)), 17),
    ("beta_only", lambda b, x: affine(b, chain(b, x), beta=rand(8)), 17),
    ("axes_as_input_opset18", lambda b, x: affine(b, chain(b, x, opset=18), rand(8), rand(8)), 18),
    ("last_two_axes", lambda b, x: affine(b, chain(b, x, axes=(1, 2), eps=1e-12), rand(5, 8), rand(8)), 17),
    ("scalar_gamma", lambda b, x: affine(b, chain(b, x), np.float32(3), rand(8)), 17),
]


@pytest.mark.parametrize("name,build,opset", CASES, ids=[c[0] for c in CASES])
def test_chain_becomes_layernormalization(name, build, opset):
    g0, g, rec = fuse(build, opset)
    assert rec.modified
    assert ops(g) == ["LayerNormalization"]
    ln = g.nodes[0]
    assert g.outputs[0].name == "y"
    assert ln.input(1).const.shape == tuple(g.inputs[0].shape[ln.attrs["axis"]:])  # full normalized shape
    assert_same_outputs(g0, g)


def test_attributes_and_rule_counts():
    g0, g, rec = fuse(lambda b, x: affine(b, chain(b, x, axes=(-2, -1), eps=1e-6), rand(5, 8), rand(5, 8)))
    ln = g.nodes[0]
    assert ln.attrs["axis"] == 1 and ln.attrs["epsilon"] == pytest.approx(1e-6)
    assert rec.stats == {"layernorm_chain_to_layernormalization": 1, "mul_layernorm_to_layernorm": 1,
                         "add_layernorm_to_layernorm": 1}


def test_float16_chain_within_float16_tolerance():
    b = GraphBuilder(opset=17)
    x = b.input("x", (2, 4, 16), "float16")
    b.output(affine(b, chain(b, x), rand(16).astype(np.float16), rand(16).astype(np.float16)), "y")
    g0 = b.graph.clone()
    assert run_passes(b.graph, ["fuse_layernorm", "eliminate_dead_code"]).records[0].modified
    assert ops(b.graph) == ["LayerNormalization"] and b.graph.nodes[0].input(1).dtype == "float16"
    assert_same_outputs(g0, b.graph, rtol=1e-2, atol=1e-2)  # the chain rounds to float16 at every step


def test_old_opset_is_refused_unless_a_target_opset_allows_it():
    build = lambda b, x: affine(b, chain(b, x, opset=14), rand(8), rand(8))  # noqa: E731
    g0, g, rec = fuse(build, opset=14)
    assert not rec.modified and ops(g) == ops(g0)
    assert {why for (_, why) in rec.refused} == {"opset 14 < 17"}
    assert g.opset_imports[""] == 14

    g0, g, rec = fuse(build, opset=14, target_opset=17)
    assert ops(g) == ["LayerNormalization"] and g.opset_imports[""] == 17
    assert_same_outputs(g0, g)


def refused(build, shape=(2, 5, 8), opset=17):
    g0, g, rec = fuse(build, opset, shape)
    assert ops(g) == ops(g0)
    return {why for (_, why) in rec.refused}


def test_other_axes_are_refused():
    assert refused(lambda b, x: chain(b, x, axes=(1,)), shape=(2, 4, 3, 3)) == {
        "normalizes axes [1], not the last ones"}


def test_deviation_read_elsewhere_is_refused():
    def build(b, x):
        n = chain(b, x)
        d = n.producer.input(0)  # x - mean, read by the Pow, the Div and a Relu
        return b.op("Add", n, b.op("Relu", d))
    assert refused(build) == {"Sub 'sub_1' has 3 users"}


def test_mean_and_variance_over_different_axes_are_refused():
    def build(b, x):
        d = b.op("Sub", x, b.op("ReduceMean", x, axes=[-1]))
        ve = b.op("Add", b.op("ReduceMean", b.op("Pow", d, np.float32(2)), axes=[-2, -1]), np.float32(1e-5))
        return b.op("Div", d, b.op("Sqrt", ve))
    assert refused(build) == {"mean and variance reduce different axes"}


def test_gamma_along_an_unnormalized_axis_is_not_folded():
    b = GraphBuilder(opset=17)
    x = b.input("x", (2, 5, 8))
    b.output(b.op("Mul", chain(b, x), rand(5, 1)), "y")  # varies along axis 1: a per-row scale
    g0 = b.graph.clone()
    rec = run_passes(b.graph, ["fuse_layernorm", "eliminate_dead_code"]).records[0]
    assert ops(b.graph) == ["LayerNormalization", "Mul"]
    assert ("mul_layernorm_to_layernorm", "constant varies along axes that are not normalized") in rec.refused
    assert_same_outputs(g0, b.graph)


def test_exported_bert_at_opset_14(tmp_path):
    pytest.importorskip("torch")
    import graphopt
    from samples.models import export_onnx

    g = graphopt.optimize(graphopt.load(export_onnx("bert_style", tmp_path / "b.onnx", opset=14)))
    g0 = g.clone()
    rec = run_passes(g, ["fuse_layernorm", "eliminate_dead_code"], target_opset=17).records[0]
    assert rec.stats["layernorm_chain_to_layernormalization"] == 5  # embeddings + 2 per layer
    assert rec.stats["add_layernorm_to_layernorm"] == 5
    assert "ReduceMean" not in ops(g) and g.opset_imports[""] == 17
    assert_same_outputs(g0, g, rtol=1e-4, atol=1e-4)
