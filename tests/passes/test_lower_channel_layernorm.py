"""lower_channel_layernorm: timm's LayerNorm2d (Transpose to channels-last, LayerNormalization over
the last axis, Transpose back) becomes one ai.graphopt::ChannelLayerNormalization, with the same
numbers on the NumPy reference and on the CPU backend's native kernel; refusals name the node."""
import numpy as np
import pytest

from graphopt import GraphBuilder
from graphopt.testing import assert_same_outputs, run_passes
from pass_helpers import ops, refusals

RNG = np.random.default_rng(5)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def layernorm2d(b, x, c, bias=True, eps=1e-6, rank=4):
    t = b.op("Transpose", x, perm=[0, *range(2, rank), 1])
    ln = b.op("LayerNormalization", t, rand(c), *([rand(c)] if bias else []), axis=-1, epsilon=eps)
    return b.op("Transpose", ln, perm=[0, rank - 1, *range(1, rank - 1)])


@pytest.mark.parametrize("shape,bias", [((1, 40, 7, 9), True), ((2, 16, 5, 5), False), ((1, 24, 33), True),
                                        ((1, 8, 3, 4, 5), True)])
def test_layernorm2d_becomes_one_op_with_the_same_numbers(shape, bias):
    b = GraphBuilder()
    x = b.input("x", shape)
    b.output(b.op("Relu", layernorm2d(b, b.op("Sigmoid", x), shape[1], bias, rank=len(shape))), "y")
    before = b.graph.clone()
    rec = run_passes(b.graph, ["lower_channel_layernorm"], fixed_point=False).records[0]
    assert rec.modified and ops(b.graph) == ["Sigmoid", "ChannelLayerNormalization", "Relu"]
    assert_same_outputs(before, b.graph, rtol=1e-5, atol=1e-5)


def test_the_cpu_backend_lowers_it_and_runs_it_natively():
    import graphopt
    from graphopt.plugins.cpu import native

    b = GraphBuilder()
    x = b.input("x", (2, 40, 13, 11))  # 143 positions: whole vectors of 16 and a tail of 15
    b.output(layernorm2d(b, x, 40), "y")
    model = graphopt.compile(b.graph.clone(), backend="cpu", level=2)
    assert [n.op_type for n in model.graph] == ["ChannelLayerNormalization"]
    if native.status()[0]:
        assert model.stats["native_steps"] == 1
    feeds = {"x": rand(2, 40, 13, 11) * 3 + 1}
    feeds["x"][1, :, 4, 5] = np.nan  # one position's NaN stays in that position
    want = graphopt.compile(b.graph, backend="cpu", level=0).run(feeds)[0]
    got = model.run(feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.isnan(got[1, :, 4, 5]).all() and np.isnan(got).sum() == 40


def test_refusals_name_the_node():
    def other_reader(b):  # the channels-last tensor is read by another node: it is needed anyway
        x = b.input("x", (1, 8, 4, 4))
        t = b.op("Transpose", x, perm=[0, 2, 3, 1])
        ln = b.op("LayerNormalization", t, rand(8), axis=-1)
        return b.op("Transpose", ln, perm=[0, 3, 1, 2]), b.op("Relu", t)

    def wrong_perm(b):  # normalizes over W, not the channels
        x = b.input("x", (1, 8, 4, 4))
        t = b.op("Transpose", x, perm=[0, 1, 2, 3])
        return b.op("Transpose", b.op("LayerNormalization", t, rand(4), axis=-1), perm=[0, 1, 2, 3])

    def two_axes(b):
        x = b.input("x", (1, 8, 4, 4))
        t = b.op("Transpose", x, perm=[0, 2, 3, 1])
        return b.op("Transpose", b.op("LayerNormalization", t, rand(4, 8), axis=-2), perm=[0, 3, 1, 2])

    def not_back(b):
        x = b.input("x", (1, 8, 4, 4))
        return b.op("LayerNormalization", b.op("Transpose", x, perm=[0, 2, 3, 1]), rand(8), axis=-1)

    def runtime_scale(b):
        x, s = b.input("x", (1, 8, 4, 4)), b.input("s", (8,))
        t = b.op("Transpose", x, perm=[0, 2, 3, 1])
        return b.op("Transpose", b.op("LayerNormalization", t, s, axis=-1), perm=[0, 3, 1, 2])

    passes = ["lower_channel_layernorm"]
    assert any("other readers" in why for why in refusals(other_reader, passes))
    assert any("not a channels-first tensor" in why for why in refusals(wrong_perm, passes))
    assert any("not the last" in why for why in refusals(two_axes, passes))
    assert any("not transposed back" in why for why in refusals(not_back, passes))
    assert any("not a constant" in why for why in refusals(runtime_scale, passes))
