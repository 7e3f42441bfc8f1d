"""The squeeze-excitation pieces on the native kernels (plugins/cpu/native_small.py,
native/reduce.h) against the registry's NumPy kernels: reductions over trailing axes,
the global pools, the small-plane 1x1 conv, the per-channel Mul, and a whole SE block.
"""
import math

import numpy as np
import pytest

from graphopt.builder import GraphBuilder
from graphopt.expr import parse_exprs
from graphopt.plugins.cpu import CpuExecutable, native, native_small
from graphopt.plugins.cpu.nativeexpr import conv_epilogue

pytestmark = pytest.mark.skipif(not native.status()[0], reason=f"native kernels unavailable: {native.status()[1]}")

RTOL, ATOL = 1e-4, 1e-5
HSIG = "min(max(add(mul(0.16666667, acc), 0.5), 0.0), 1.0)"


def _reduce_graph(op, xs, opset=17, axes=None, **attrs):
    b = GraphBuilder(opset=opset)
    x = b.input("x", xs)
    if axes is not None and opset >= 18:
        y = b.op(op, x, np.array(axes, np.int64), **attrs)
    elif axes is not None:
        y = b.op(op, x, axes=axes, **attrs)
    else:
        y = b.op(op, x, **attrs)
    b.output(y, "y")
    return b.graph


def _compare(g, feeds, native_steps=1, rtol=RTOL, atol=ATOL):
    exe = CpuExecutable(g)
    assert exe.stats["native_steps"] == native_steps
    got = exe.run(feeds)[0]
    want = CpuExecutable(g, fast=False).run(feeds)[0]
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    return got


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceSum", "ReduceMax"])
@pytest.mark.parametrize("xs,axes,keepdims,opset", [
    ((1, 576, 7, 7), [2, 3], 1, 17),     # the SE squeeze
    ((2, 5, 1, 1), [-2, -1], 1, 18),     # 1x1 planes, negative axes, axes as an input
    ((2, 3, 13, 17), [3], 0, 17),        # one axis, a row of 17: one vector and a tail
    ((3, 40, 56, 56), [1, 2, 3], 0, 18),  # rows of 3 blocks, parallel
    ((4, 6), None, 1, 17),               # no axes: all of them
])
def test_trailing_reductions_match_registry(op, xs, axes, keepdims, opset):
    rng = np.random.default_rng(3)
    g = _reduce_graph(op, xs, opset, axes, keepdims=keepdims)
    _compare(g, {"x": rng.standard_normal(xs).astype(np.float32)})


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("xs", [(1, 960, 7, 7), (2, 3, 1, 1), (1, 7, 5, 3, 2), (1, 4, 9)])
def test_global_pools_match_registry(op, xs):
    rng = np.random.default_rng(4)
    _compare(_reduce_graph(op, xs), {"x": rng.standard_normal(xs).astype(np.float32)})


def test_nan_and_inf_propagate_as_in_numpy():
    xs = (2, 6, 7, 7)
    x = np.random.default_rng(5).standard_normal(xs).astype(np.float32)
    x[0, 1, 3, 3] = np.nan          # a NaN in the vector part of a row
    x[0, 2, 6, 6] = np.nan          # in its tail
    x[1, 0, 0, 0] = np.inf
    x[1, 1, 2, 2] = -np.inf
    x[1, 3, 0, 0], x[1, 3, 0, 1] = np.inf, -np.inf   # inf - inf: NaN in the sum
    for op in ("ReduceMean", "ReduceSum", "ReduceMax"):
        with np.errstate(invalid="ignore"):  # the reference's inf - inf
            got = _compare(_reduce_graph(op, xs, axes=[2, 3]), {"x": x})
        assert np.isnan(got[0, 1]).all() and np.isnan(got[0, 2]).all()
        assert np.isnan(got[1, 3]).all() == (op != "ReduceMax")
    got = _compare(_reduce_graph("ReduceMax", xs, axes=[2, 3]), {"x": x})
    assert got[1, 0, 0, 0] == np.inf and np.isfinite(got[1, 1, 0, 0])


def test_a_long_row_of_large_values_keeps_float32_accuracy():
    # 3136 and 200,000 values near 1e4: a plain float32 running sum drifts past rtol 1e-4
    rng = np.random.default_rng(6)
    for n in (3136, 200_000):
        x = (1e4 + rng.standard_normal((2, 3, n)) * 100).astype(np.float32)
        exact = x.astype(np.float64).sum(axis=-1)
        g = _reduce_graph("ReduceSum", x.shape, axes=[2], keepdims=0)
        got = _compare(g, {"x": x}, rtol=1e-6, atol=0)
        np.testing.assert_allclose(got, exact, rtol=1e-6)
        g = _reduce_graph("ReduceMean", x.shape, axes=[2], keepdims=0)
        np.testing.assert_allclose(_compare(g, {"x": x}, rtol=1e-6, atol=0), exact / n, rtol=1e-6)


def test_other_axes_and_dtypes_keep_the_registry_kernel():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    _compare(_reduce_graph("ReduceMean", x.shape, axes=[1]), {"x": x}, native_steps=0)       # not trailing
    _compare(_reduce_graph("ReduceSum", x.shape, axes=[1, 3]), {"x": x}, native_steps=0)     # not contiguous
    _compare(_reduce_graph("ReduceMax", x.shape, axes=[], noop_with_empty_axes=1), {"x": x}, native_steps=0)
    b = GraphBuilder()
    xd = b.input("x", (2, 3, 4), "float64")
    b.output(b.op("ReduceMean", xd, axes=[2]), "y")
    _compare(b.graph, {"x": rng.standard_normal((2, 3, 4))}, native_steps=0)


def test_non_contiguous_and_empty_inputs_fall_back():
    calls = []

    def fallback(x):
        calls.append(x.shape)
        return np.zeros((1, 4, 1, 1), np.float32) if x.size == 0 else x.mean(axis=(2, 3), keepdims=True)

    fn = native_small.prepare_reduce("ReduceMean", 2, True, fallback)
    x = np.random.default_rng(9).standard_normal((1, 4, 6, 8)).astype(np.float32)
    view = x[:, :, :, ::2]
    np.testing.assert_allclose(fn(view), view.mean(axis=(2, 3), keepdims=True), rtol=RTOL, atol=ATOL)
    empty = np.zeros((1, 4, 0, 3), np.float32)
    assert fn(empty).shape == (1, 4, 1, 1)
    assert calls == [view.shape, empty.shape]
    np.testing.assert_allclose(fn(x), x.mean(axis=(2, 3), keepdims=True), rtol=RTOL, atol=ATOL)
    assert len(calls) == 2


def _conv1x1(c, m, rng):
    return rng.standard_normal((m, c, 1, 1)).astype(np.float32), rng.standard_normal(m).astype(np.float32)


@pytest.mark.parametrize("c,m", [(8, 16), (16, 8), (24, 97), (576, 144), (144, 576), (7, 130)])
@pytest.mark.parametrize("xs_plane", [(1, 1, 1), (2, 1, 1), (1, 3, 3)])
def test_small_conv_matches_numpy(c, m, xs_plane):
    # the panels of 64 output channels (the last one narrower, M not a multiple of 16), 2 batches,
    # a 3x3 plane (9 positions, strided reads), each epilogue form
    rng = np.random.default_rng(c * 1000 + m)
    w, b = _conv1x1(c, m, rng)
    n, h, wd = xs_plane
    x = rng.standard_normal((n, c, h, wd)).astype(np.float32)
    res = rng.standard_normal((n, m, h, wd)).astype(np.float32)
    acc = np.einsum("mc,nchw->nmhw", w[:, :, 0, 0].astype(np.float64), x.astype(np.float64)) + b[:, None, None]
    hsig = conv_epilogue(parse_exprs(HSIG)[0])
    cases = [(None, -math.inf, math.inf, None, acc), (None, 0.0, 6.0, None, np.clip(acc, 0, 6)),
             (None, 0.0, math.inf, res, np.maximum(acc + res, 0)),
             (hsig, -math.inf, math.inf, None, np.clip(acc / 6 + 0.5, 0, 1))]
    for prog, lo, hi, r, want in cases:
        run = native_small.small_plane_conv(w, b, {}, [1, 1], [1, 1], prog, lo, hi)
        got = run(x, r)
        assert got.shape == (n, m, h, wd) and got.flags.c_contiguous
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL * math.sqrt(c))


def test_small_conv_refuses_what_it_does_not_compute():
    w, b = _conv1x1(8, 16, np.random.default_rng(1))
    assert native_small.small_plane_conv(w, b, {"group": 2}, [1, 1], [1, 1], None, 0.0, 1.0) is None
    assert native_small.small_plane_conv(w, b, {}, [1, 1], [2, 2], None, 0.0, 1.0) is None
    assert native_small.small_plane_conv(w, b, {"pads": [1, 1, 1, 1]}, [1, 1], [1, 1], None, 0.0, 1.0) is None


@pytest.mark.parametrize("xs,ss,swap", [
    ((1, 576, 7, 7), (1, 576, 1, 1), False),   # the SE excitation
    ((2, 16, 9, 13), (2, 16, 1, 1), True),     # the gate first, batch 2, rows of 117
    ((1, 8, 3, 60), (1, 8, 3, 1), False),       # rows of the last axis only
])
def test_channel_scale_mul_matches_registry_bit_for_bit(xs, ss, swap):
    rng = np.random.default_rng(12)
    b = GraphBuilder()
    x, s = b.input("x", xs), b.input("s", ss)
    h = b.op("Relu", x)  # a fresh intermediate: the product may be written over it
    b.output(b.op("Mul", *((s, h) if swap else (h, s))), "y")
    feeds = {"x": rng.standard_normal(xs).astype(np.float32), "s": rng.standard_normal(ss).astype(np.float32)}
    feeds["x"].reshape(-1)[::53] = np.nan
    exe = CpuExecutable(b.graph)
    assert exe.stats["native_steps"] >= 1
    want = CpuExecutable(b.graph, fast=False).run(feeds)[0]
    for _ in range(2):  # the second run reuses what the first left
        np.testing.assert_array_equal(exe.run(feeds)[0], want)


def test_channel_scale_leaves_other_muls_and_strided_inputs_to_numpy():
    calls = []

    def fallback(a, b):
        calls.append(a.shape)
        return a * b

    assert native_small.prepare_channel_scale((1, 8, 7, 7), (1, 1, 7, 7), 0, fallback) is None   # not per row
    assert native_small.prepare_channel_scale((1, 8, 7, 7), (1, 8, 7, 7), 0, fallback) is None   # no broadcast
    assert native_small.prepare_channel_scale((1, 4, 2, 2), (1, 4, 1, 1), 0, fallback) is None   # too small
    fn, fn_inplace = native_small.prepare_channel_scale((1, 64, 4, 8), (1, 64, 1, 1), 0, fallback)
    assert fn_inplace is None  # no in-place fallback given
    rng = np.random.default_rng(13)
    x = rng.standard_normal((1, 64, 4, 16)).astype(np.float32)[..., ::2]
    s = rng.standard_normal((1, 64, 1, 1)).astype(np.float32)
    np.testing.assert_array_equal(fn(x, s), x * s)
    assert calls == [x.shape]
    xc = np.ascontiguousarray(x)
    np.testing.assert_array_equal(fn(xc, s), xc * s)
    assert calls == [x.shape]


def test_squeeze_excitation_block_matches_registry():
    # x * hardsigmoid(fc2(relu(fc1(mean over H, W)))), as in MobileNetV3 (and GlobalAveragePool
    # for the squeeze, as in EfficientNet's SiLU/Sigmoid form), through the CPU backend's fusion
    import graphopt

    rng = np.random.default_rng(11)
    for squeeze, act, gate in (("ReduceMean", "Relu", "HardSigmoid"), ("GlobalAveragePool", "Sigmoid", "Sigmoid")):
        b = GraphBuilder()
        x = b.input("x", (1, 96, 7, 7))
        s = b.op("ReduceMean", x, axes=[2, 3], keepdims=1) if squeeze == "ReduceMean" else b.op(squeeze, x)
        w1, b1 = _conv1x1(96, 24, rng)
        w2, b2 = _conv1x1(24, 96, rng)
        h = b.op(act, b.op("Conv", s, w1, b1))
        if act == "Sigmoid":
            h = b.op("Mul", b.op("Conv", s, w1, b1), h)  # SiLU
        g = b.op(gate, b.op("Conv", h, w2, b2))
        b.output(b.op("Mul", x, g), "y")
        feeds = {"x": rng.standard_normal((1, 96, 7, 7)).astype(np.float32)}
        want = CpuExecutable(b.graph, fast=False).run(feeds)[0]
        model = graphopt.compile(b.graph, backend="cpu", level=2)
        exe = model.executable
        assert exe.stats["native_steps"] >= 3  # the squeeze and both FCs
        np.testing.assert_allclose(exe.run(feeds)[0], want, rtol=RTOL, atol=ATOL)
