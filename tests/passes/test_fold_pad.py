"""fold_pad: a constant spatial Pad folds into Conv/AveragePool/MaxPool pads where that
is exact, and stays (with its reason) where it is not."""
import numpy as np
import pytest

from graphopt import GraphBuilder
from graphopt.testing import assert_same_outputs, run_passes

from pass_helpers import ops, refusals

RNG = np.random.default_rng(0)
I64 = np.int64
F32 = np.float32


def rand(*shape):
    return RNG.standard_normal(shape).astype(F32)


def fold(g):
    return run_passes(g, ["fold_pad", "eliminate_dead_code"], fixed_point=False).records[0]


def pads(*p):
    return np.array(p, I64)


# (name, body(b, x) -> y, ops left, attributes of the last node afterwards, opset)
FOLDS = [
    ("conv", lambda b, x: b.op("Conv", b.op("Pad", x, pads(0, 0, 1, 2, 0, 0, 3, 1)), rand(4, 3, 3, 3)),
     ["Conv"], {"pads": [1, 2, 3, 1]}, 17),
    ("conv_with_own_pads_and_value_input", lambda b, x: b.op(
        "Conv", b.op("Pad", x, pads(0, 0, 1, 1, 0, 0, 1, 1), F32(0)), rand(4, 3, 3, 3), rand(4), pads=[1, 0, 0, 2]),
     ["Conv"], {"pads": [2, 1, 1, 3]}, 17),
    ("conv_valid", lambda b, x: b.op("Conv", b.op("Pad", x, pads(0, 0, 1, 1, 0, 0, 1, 1)), rand(2, 3, 3, 3),
                                     auto_pad="VALID"), ["Conv"], {"pads": [1, 1, 1, 1], "auto_pad": "NOTSET"}, 17),
    ("conv_opset18_axes", lambda b, x: b.op("Conv", b.op("Pad", x, pads(2, 0, 1, 1), None, pads(2, -1)),
                                            rand(4, 3, 3, 3)), ["Conv"], {"pads": [2, 0, 1, 1]}, 18),
    ("conv_opset2_attributes", lambda b, x: b.op("Conv", b.op("Pad", x, pads=[0, 0, 1, 1, 0, 0, 1, 1]),
                                                 rand(4, 3, 3, 3)), ["Conv"], {"pads": [1, 1, 1, 1]}, 9),
    ("average_pool_count_include_pad", lambda b, x: b.op(
        "AveragePool", b.op("Pad", x, pads(0, 0, 1, 1, 0, 0, 1, 1)), kernel_shape=[3, 3], count_include_pad=1,
        pads=[1, 1, 0, 0]), ["AveragePool"], {"pads": [2, 2, 1, 1], "count_include_pad": 1}, 17),
    ("average_pool_becomes_count_include_pad", lambda b, x: b.op(
        "AveragePool", b.op("Pad", x, pads(0, 0, 0, 1, 0, 0, 2, 1)), kernel_shape=[2, 3], strides=[2, 2]), ["AveragePool"], {"pads": [0, 1, 2, 1], "count_include_pad": 1}, 17),
    ("max_pool_minus_inf", lambda b, x: b.op(
        "MaxPool", b.op("Pad", x, pads(0, 0, 1, 1, 0, 0, 1, 1), F32(-np.inf)), kernel_shape=[3, 3], strides=[2, 2]),
     ["MaxPool"], {"pads": [1, 1, 1, 1]}, 17),
    ("max_pool_after_relu_zero", lambda b, x: b.op(
        "MaxPool", b.op("Pad", b.op("Relu", x), pads(0, 0, 1, 1, 0, 0, 1, 1)), kernel_shape=[3, 3], strides=[2, 2]),
     ["Relu", "MaxPool"], {"pads": [1, 1, 1, 1]}, 17),
]


@pytest.mark.parametrize("name,body,left,attrs,opset", FOLDS, ids=[f[0] for f in FOLDS])
def test_folds_and_keeps_numbers(name, body, left, attrs, opset):
    b = GraphBuilder(opset=opset)
    b.output(body(b, b.input("x", ("n", 3, 7, 8))), "y")
    g0 = b.graph.clone()
    rec = fold(b.graph)
    assert rec.modified and sum(rec.stats.values()) == 1
    assert ops(b.graph) == left
    last = b.graph.nodes[-1]
    assert {k: last.attrs.get(k) for k in attrs} == attrs
    assert b.graph.outputs[0].type == g0.outputs[0].type
    assert_same_outputs(g0, b.graph)


def refused(body, opset=17):
    return refusals(lambda b: body(b, b.input("x", (2, 3, 7, 8))), ["fold_pad"], opset)


def conv(b, y):
    return b.op("Conv", y, rand(4, 3, 3, 3))


SPATIAL = pads(0, 0, 1, 1, 0, 0, 1, 1)


@pytest.mark.parametrize("body,why", [
    (lambda b, x: conv(b, b.op("Pad", x, SPATIAL, mode="reflect")), "Pad mode 'reflect'"),
    (lambda b, x: conv(b, b.op("Pad", x, SPATIAL, F32(1.5))), "pad value 1.5 is not 0"),
    (lambda b, x: conv(b, b.op("Pad", x, SPATIAL, F32(-0.0))), "pad value -0 is not 0"),
    (lambda b, x: conv(b, b.op("Pad", x, SPATIAL, b.input("v", ()))), "pad value not constant"),
    (lambda b, x: conv(b, b.op("Pad", x, b.input("p", (8,), "int64"))), "pads not constant"),
    (lambda b, x: b.op("Conv", b.op("Pad", x, pads(0, 1, 0, 0, 0, 0, 0, 0)), rand(4, 4, 3, 3)),
     "Pad pads the batch or channel axis"),
    (lambda b, x: conv(b, b.op("Pad", x, pads(0, 0, -1, 0, 0, 0, 2, 0))), "negative pads crop"),
    (lambda b, x: b.op("Conv", b.op("Pad", x, SPATIAL), rand(4, 3, 3, 3), auto_pad="SAME_UPPER"),
     "Conv auto_pad=SAME_UPPER"),
    (lambda b, x: b.op("AveragePool", b.op("Pad", x, SPATIAL), kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
     "AveragePool count_include_pad=0 with pads of its own"),
    (lambda b, x: b.op("MaxPool", b.op("Pad", x, SPATIAL), kernel_shape=[3, 3]),
     "pad value 0 is not -inf (and x is not a Relu output above it)"),
    (lambda b, x: b.op("MaxPool", b.op("Pad", b.op("Relu", x), pads(0, 0, 3, 0, 0, 0, 0, 0)), kernel_shape=[3, 3]),
     "a MaxPool window would cover padding only"),
    (lambda b, x: b.op("MaxPool", b.op("Pad", x, SPATIAL, F32(-np.inf)), kernel_shape=[3, 3], num_outputs=2),
     "MaxPool Indices are read"),
    (lambda b, x: b.op("AveragePool", b.op("Pad", x, pads(0, 0, 0, 0, 0, 0, 2, 0)), kernel_shape=[2, 2],
                       strides=[2, 2], ceil_mode=1), "AveragePool ceil_mode=1 (a window may not start in the end pads)"),
], ids=["reflect", "value", "negative_zero", "value_input", "pads_input", "channel_axis", "negative", "same_upper",
        "avgpool_own_pads", "maxpool_zero", "maxpool_window_of_pads", "maxpool_indices", "ceil_mode"])
def test_near_misses_are_refused_with_reason(body, why):
    assert refused(body) == {why}


def test_shared_pad_is_refused():
    def body(b, x):
        p = b.op("Pad", x, SPATIAL, name="p")
        return conv(b, p), b.op("Relu", p)
    assert refused(body) == {"Pad 'p' has 2 users"}
