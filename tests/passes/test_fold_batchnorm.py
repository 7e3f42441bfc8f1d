"""fold_batchnorm: BN and per-channel Mul/Add fold into Conv, ConvTranspose and Gemm
weights; near misses are refused with a reason.

Tolerance: rtol 1e-4 *and* atol 1e-4 (not 1e-5): folding reassociates
``(x*w)*f`` into ``x*(w*f)``, and f (up to ~3 here) multiplies the rounding the
conv already accumulated over its whole reduction.
"""
import numpy as np
import pytest

from graphopt import GraphBuilder
from graphopt.testing import assert_same_outputs, run_passes

RNG = np.random.default_rng(0)
TOL = dict(rtol=1e-4, atol=1e-4)


def ops(g):
    return [n.op_type for n in g]


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def fold(g, **ctx):
    return run_passes(g, ["fold_batchnorm"], fixed_point=False, **ctx).records[0]


def bn_params(c):
    return (RNG.uniform(0.5, 2, c).astype(np.float32), rand(c), rand(c), RNG.uniform(0.2, 2, c).astype(np.float32))


def bn(b, y, c, eps=1e-3):
    return b.op("BatchNormalization", y, *bn_params(c), epsilon=eps)


# (name, build(b) -> y, op left)
FOLDS = [
    ("conv", lambda b: bn(b, b.op("Conv", b.input("x", (2, 3, 8, 8)), rand(4, 3, 3, 3), rand(4), pads=[1] * 4), 4),
     "Conv"),
    ("conv_no_bias_groups", lambda b: bn(b, b.op("Conv", b.input("x", (1, 4, 6, 6)), rand(6, 2, 3, 3), group=2), 6),
     "Conv"),
    ("depthwise", lambda b: bn(b, b.op("Conv", b.input("x", (1, 4, 5, 5)), rand(4, 1, 3, 3), group=4), 4),
     "Conv"),
    ("conv_transpose_groups", lambda b: bn(b, b.op("ConvTranspose", b.input("x", (1, 4, 5, 5)), rand(4, 3, 3, 3),
                                                   rand(6), group=2, strides=[2, 2]), 6), "ConvTranspose"),
    ("conv_transpose_no_bias", lambda b: bn(b, b.op("ConvTranspose", b.input("x", (2, 3, 4, 4)),
                                                    rand(3, 5, 2, 2)), 5), "ConvTranspose"),
    ("gemm", lambda b: bn(b, b.op("Gemm", b.input("a", ("m", 6)), rand(6, 5), rand(5), beta=0.5), 5), "Gemm"),
    ("gemm_transb_no_c", lambda b: bn(b, b.op("Gemm", b.input("a", (3, 6)), rand(5, 6), transB=1, alpha=2.0), 5),
     "Gemm"),
    ("conv_mul_add", lambda b: b.op("Add", b.op("Mul", b.op("Conv", b.input("x", (1, 3, 6, 6)), rand(4, 3, 1, 1)),
                                                 rand(1, 4, 1, 1)), rand(4, 1, 1)), "Conv"),
    ("const_first_scalar", lambda b: b.op("Mul", np.float32(3), b.op("Conv", b.input("x", (1, 2, 4, 4)),
                                                                       rand(3, 2, 3, 3), rand(3))), "Conv"),
    ("gemm_mul_add_matrix", lambda b: b.op("Add", b.op("Mul", b.op("Gemm", b.input("a", (3, 6)), rand(5, 6),
                                                                   rand(3, 1), transB=1), rand(1, 5)),
                                           rand(3, 5)), "Gemm"),
    ("conv_bn_mul_chain", lambda b: b.op("Mul", bn(b, b.op("Conv", b.input("x", (1, 2, 5, 5)), rand(3, 2, 3, 3)), 3),
                                         rand(3, 1, 1)), "Conv"),
]


@pytest.mark.parametrize("name,build,left", FOLDS, ids=[f[0] for f in FOLDS])
def test_folds_and_keeps_numbers(name, build, left):
    b = GraphBuilder(opset=17)
    b.output(build(b), "y")
    g0 = b.graph.clone()
    report = run_passes(b.graph, ["fold_batchnorm", "eliminate_dead_code"])
    assert report.records[0].modified
    assert ops(b.graph) == [left]
    assert b.graph.outputs[0].name == "y"
    assert len(b.graph.initializers) == len(b.graph.nodes[0].inputs) - 1  # old weights and BN params gone
    assert_same_outputs(g0, b.graph, **TOL)


def test_rule_names_count_what_fired():
    b = GraphBuilder(opset=17)
    b.output(build_conv_bn(b), "y")
    rec = fold(b.graph)
    assert rec.stats == {"batchnorm_conv_to_conv": 1}


def build_conv_bn(b, x=None, w=None):
    x = b.input("x", (1, 2, 4, 4)) if x is None else x
    return bn(b, b.op("Conv", x, rand(3, 2, 3, 3) if w is None else w), 3)


def test_shared_weight_is_copied_not_written():
    b = GraphBuilder(opset=17)
    x = b.input("x", (1, 2, 4, 4))
    w = b.const(rand(3, 2, 3, 3), "w")
    b.output(build_conv_bn(b, x, w), "y")
    b.output(b.op("Conv", x, w), "z")  # the same weight, unfolded
    w_before = w.const.copy()
    g0 = b.graph.clone()
    assert fold(b.graph).modified
    assert ops(b.graph) == ["Conv", "Conv"]
    np.testing.assert_array_equal(w.const, w_before)
    assert b.graph.nodes[0].input(1) is not b.graph.nodes[1].input(1)
    assert_same_outputs(g0, b.graph, **TOL)


def test_float16_conv_folds_within_float16_tolerance():
    b = GraphBuilder(opset=17)
    x = b.input("x", (1, 2, 4, 4), "float16")
    y = b.op("Conv", x, rand(3, 2, 3, 3).astype(np.float16), rand(3).astype(np.float16))
    scale, shift, mean, var = (p.astype(np.float16) for p in bn_params(3))
    b.output(b.op("BatchNormalization", y, scale, shift, mean, var), "y")
    g0 = b.graph.clone()
    assert fold(b.graph).modified and ops(b.graph) == ["Conv"]
    assert b.graph.nodes[0].input(1).dtype == "float16"
    assert_same_outputs(g0, b.graph, rtol=1e-2, atol=1e-2)  # float16 weights rounded once more


def refused(build, opset=17):
    b = GraphBuilder(opset=opset)
    out = build(b)
    for i, v in enumerate(out if isinstance(out, tuple) else (out,)):
        b.output(v, f"y{i}")
    g0 = b.graph.clone()
    rec = fold(b.graph)
    assert not rec.modified and ops(b.graph) == ops(g0)
    return {why for (_, why) in rec.refused}


def test_conv_with_two_users_is_refused():
    def build(b):
        y = b.op("Conv", b.input("x", (1, 2, 4, 4)), rand(3, 2, 3, 3), name="c1")
        return bn(b, y, 3), b.op("Relu", y)
    assert refused(build) == {"Conv 'c1' has 2 users"}


def test_weights_not_constant_are_refused():
    def build(b):
        return bn(b, b.op("Conv", b.input("x", (1, 2, 4, 4)), b.input("w", (3, 2, 3, 3))), 3)
    assert refused(build) == {"weights not constant"}


def test_scale_and_bias_not_per_channel_are_refused():
    def build(b):
        y1 = b.op("Conv", b.input("x", (1, 2, 4, 4)), rand(3, 2, 3, 3))
        y2 = b.op("Conv", b.input("x2", (1, 2, 4, 4)), rand(3, 2, 3, 3))
        # a vector along the last axis (width), and a per-channel shape that grows the rank
        return b.op("Mul", y1, rand(2)), b.op("Add", y2, rand(1, 1, 3, 1, 1))
    assert refused(build) == {"scale not per-channel", "bias not per-channel"}


def test_training_mode_and_non_constant_statistics_are_refused():
    def build(b):
        y1 = b.op("Conv", b.input("x", (1, 2, 4, 4)), rand(3, 2, 3, 3))
        y2 = b.op("Conv", b.input("x2", (1, 2, 4, 4)), rand(3, 2, 3, 3))
        scale, shift, mean, _ = bn_params(3)
        return (b.op("BatchNormalization", y1, *bn_params(3), training_mode=1),
                b.op("BatchNormalization", y2, scale, shift, mean, b.input("var", (3,))))
    assert refused(build) == {"BatchNormalization in training mode", "BatchNormalization parameters not constant"}


def test_gemm_add_that_would_grow_the_output_is_refused():
    def build(b):
        return b.op("Add", b.op("Gemm", b.input("a", (3, 6)), rand(6, 5)), rand(2, 3, 5))
    assert refused(build) == {"bias broadcasts beyond the Gemm output"}
