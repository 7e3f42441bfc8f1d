"""The native depthwise convs against the registry's NumPy Conv: by rows (plugins/cpu/native/depthwise.h)
and with 16 channels in the vector lanes (dwlanes.h, which takes narrow planes by default); every
geometry test runs through both (the ``kernel`` fixture moves ``native.LANES_MAX_WIDTH``).

Whole output rows from the phase planes (stride-1 KxK kernels loading each input row once for a
block of output rows, small planes as compressed flat positions; 3x3 stride 2 straight from x):
stride 1 and 2 (and mixed), asymmetric pads,
dilation, channel multipliers, batch 2, planes narrower than a vector, 1xN and Nx1 planes,
rows wider than one block of vectors, planes split into row bands, x read in place (a
masked last load), and every kind of epilogue: none, a clamp, a residual, the activations
applied in registers (HardSigmoid, HardSwish, Sigmoid, SiLU) and other programs (GELU, tanh)
run over each stored band.
"""
import numpy as np
import pytest

from graphopt.builder import GraphBuilder
from graphopt.plugins.cpu import CpuExecutable, native

pytestmark = pytest.mark.skipif(not native.status()[0], reason=f"native kernels unavailable: {native.status()[1]}")

GEOMETRIES = [  # (x shape, w shape, attrs); group = input channels unless given
    ((2, 8, 14, 14), (8, 1, 3, 3), {"pads": [1, 1, 1, 1]}),                          # batch 2, one vector a row
    ((1, 8, 28, 30), (8, 1, 5, 5), {"pads": [2, 2, 2, 2], "strides": [2, 2]}),
    ((1, 6, 15, 13), (6, 1, 3, 5), {"pads": [2, 0, 1, 1], "strides": [1, 2]}),      # uneven pads and strides
    ((1, 8, 16, 16), (8, 1, 3, 3), {"pads": [2, 2, 2, 2], "dilations": [2, 2]}),
    ((1, 4, 9, 9), (12, 1, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),        # multiplier 3
    ((1, 4, 3, 3), (4, 1, 3, 3), {"pads": [1, 1, 1, 1]}),                            # 9 outputs a plane
    ((1, 16, 7, 7), (16, 1, 5, 5), {"pads": [2, 2, 2, 2]}),                          # 7x7: rows of 7 lanes
    ((1, 4, 1, 40), (4, 1, 1, 3), {"pads": [0, 1, 0, 1]}),                           # a 1xN plane
    ((1, 4, 40, 1), (4, 1, 3, 1), {"pads": [1, 0, 1, 0]}),                           # an Nx1 plane
    ((1, 4, 20, 20), (4, 1, 3, 1), {}),                                              # x read in place
    ((1, 3, 5, 21), (3, 1, 2, 1), {}),                                               # in place, masked tail
    ((1, 3, 6, 150), (3, 1, 3, 3), {"pads": [1, 1, 1, 1]}),                          # rows of 10 vectors
    ((1, 2, 70, 70), (2, 1, 3, 3), {"pads": [1, 1, 1, 1]}),                          # two row bands
    ((2, 5, 23, 37), (5, 1, 3, 3), {"pads": [0, 1, 1, 0], "strides": [2, 2]}),
    # stride 1, KxK: input rows loaded once for a block of output rows (dw_s1)
    ((1, 6, 20, 37), (6, 1, 5, 5), {"pads": [2, 2, 2, 2]}),                          # blocks of 8, 8, 4 rows
    ((1, 4, 11, 18), (4, 1, 7, 7), {"pads": [3, 3, 3, 3]}),
    ((1, 8, 7, 7), (8, 1, 7, 7), {"pads": [3, 3, 3, 3]}),                            # 7x7 by rows, not flat
    ((1, 5, 13, 21), (5, 1, 3, 3), {"pads": [1, 0, 1, 2]}),
    # 3x3 stride 2 with one column of left padding, read from x itself (dw_s2x3): several chunks of
    # 16 outputs (a row of 35, one of 65: two groups of four), no top pad, a channel multiplier
    ((1, 16, 40, 70), (16, 1, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    ((2, 8, 33, 130), (8, 1, 3, 3), {"pads": [0, 1, 0, 0], "strides": [2, 2]}),
    ((1, 6, 31, 31), (12, 1, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    ((1, 8, 41, 140), (8, 1, 5, 5), {"pads": [2, 2, 1, 1], "strides": [2, 2]}),     # 5x5 (phase planes): 70 a row
    # channels past one block of 16 lanes (a partial last block), batch 2
    ((2, 20, 7, 7), (20, 1, 5, 5), {"pads": [2, 2, 2, 2]}),
    ((1, 33, 9, 8), (33, 1, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    ((1, 40, 6, 6), (40, 1, 7, 7), {"pads": [3, 3, 3, 3]}),
]


@pytest.fixture(params=["rows", "lanes"])
def kernel(request, monkeypatch):
    """Run the test's multiplier-1 convs by rows, or all with the channels in the lanes."""
    monkeypatch.setattr(native, "LANES_MAX_WIDTH", -1 if request.param == "rows" else 1 << 30)
    return request.param

EPILOGUES = [  # (epilogue over acc, residual input)
    (None, False), ("relu(acc)", False), ("min(max(acc, 0.0), 6.0)", False), ("relu(add(acc, in1))", True),
    ("add(in1, acc)", True),
    ("mul(acc, min(max(add(div(acc, 6.0), 0.5), 0.0), 1.0))", False),                # HardSwish
    ("min(max(add(mul(0.2, acc), 0.5), 0.0), 1.0)", False),                          # HardSigmoid
    ("mul(acc, sigmoid(acc))", False), ("sigmoid(acc)", False),                      # SiLU, Sigmoid
    ("mul(mul(0.5, acc), add(1.0, erf(mul(acc, 0.7071067811865476))))", False),     # GELU: a program
    ("tanh(acc)", False),
]


def _graph(xs, ws, attrs, epilogue=None, residual=False, bias=True):
    rng = np.random.default_rng(3)
    b = GraphBuilder()
    x = b.input("x", xs)
    attrs = {"group": xs[1], **attrs}
    w = rng.standard_normal(ws).astype(np.float32)
    bv = rng.standard_normal(ws[0]).astype(np.float32) if bias else None
    if epilogue is None:
        y = b.op("Conv", x, w, bv, **attrs)
    else:
        extra = []
        if residual:
            out = CpuExecutable(_graph(xs, ws, attrs, bias=bias)).run({"x": np.zeros(xs, np.float32)})[0]
            extra = [b.input("r", out.shape)]
        y = b.op("FusedConv", x, w, bv, *extra, domain="ai.graphopt", epilogue=epilogue, **attrs)
    b.output(y, "y")
    return b.graph


def _check(g, special=False):
    rng = np.random.default_rng(4)
    feeds = {v.name: (rng.standard_normal(v.type.shape) * 2).astype(np.float32) for v in g.inputs}
    if special:  # NaN and infinities through the taps, the bias and the epilogue
        flat = feeds["x"].reshape(-1)
        flat[::7] = np.nan
        flat[3::11] = np.inf
        flat[5::13] = -np.inf
    exe = CpuExecutable(g)
    with np.errstate(all="ignore"):
        want = CpuExecutable(g, fast=False).run(feeds)[0]
        got = exe.run(feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, equal_nan=True)
    assert exe.stats["native_steps"] == 1
    return got


@pytest.mark.parametrize("xs,ws,attrs", GEOMETRIES)
def test_depthwise_geometries_match_registry(xs, ws, attrs, kernel):
    for epilogue, residual in EPILOGUES[:4] + EPILOGUES[5:6] + EPILOGUES[7:8] + EPILOGUES[9:10]:
        _check(_graph(xs, ws, attrs, epilogue, residual))
    _check(_graph(xs, ws, attrs, bias=False))


@pytest.mark.parametrize("epilogue,residual", EPILOGUES)
def test_depthwise_epilogues_match_registry(epilogue, residual, kernel):
    for xs, ws, attrs in (GEOMETRIES[1], GEOMETRIES[6], GEOMETRIES[10], GEOMETRIES[11], GEOMETRIES[15]):
        _check(_graph(xs, ws, attrs, epilogue, residual))
        _check(_graph(xs, ws, attrs, epilogue, residual, bias=False))


@pytest.mark.parametrize("epilogue,residual", EPILOGUES)
def test_depthwise_special_values_match_registry(epilogue, residual, kernel):
    _check(_graph((1, 8, 14, 14), (8, 1, 3, 3), {"pads": [1, 1, 1, 1]}, epilogue, residual), special=True)
    _check(_graph((1, 8, 30, 40), (8, 1, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}, epilogue, residual),
           special=True)


def test_in_place_geometry_is_read_in_place():
    # the masked last load is what keeps these within x (no planes, no slack)
    for xs, ws in (((1, 4, 20, 20), [3, 1]), ((1, 3, 5, 21), [2, 1])):
        plan = native._Plan(xs, ws, [1, 1], [1, 1], {"group": xs[1]}, xs[1], 1)
        assert plan.direct


def test_a_clamp_epilogue_gives_the_bits_of_conv_then_clip(kernel):
    # the accumulation order is the registry-independent contract of the kernel: the clamp after
    # the same sums, so relu(conv) from the kernel is bit for bit the kernel's conv, clipped
    xs, ws, attrs = GEOMETRIES[1]
    plain = _check(_graph(xs, ws, attrs))
    clamped = _check(_graph(xs, ws, attrs, "min(max(acc, 0.0), 6.0)"))
    np.testing.assert_array_equal(clamped, np.minimum(np.maximum(plain, 0.0), 6.0))


def _random_geometries(count, seed=5):
    """Depthwise geometries drawn at random: every plane height, so that every split of a plane's rows
    into blocks occurs (a 9-row remainder once went uncomputed)."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        c, m, k, s = int(rng.integers(1, 5)), int(rng.integers(1, 4)), int(rng.choice([1, 3, 5, 7])), int(rng.integers(1, 3))
        n, h, w, p = int(rng.integers(1, 3)), int(rng.integers(1, 41)), int(rng.integers(1, 41)), int(rng.integers(0, k // 2 + 1))
        attrs = {"pads": [p] * 4, "strides": [s, s], "group": c}
        if h + 2 * p < k or w + 2 * p < k:
            continue
        plan = native._Plan((n, c, h, w), [k, k], [s, s], [1, 1], attrs, c, m)
        if plan.direct and plan.P < 16:  # NumPy's conv runs these
            continue
        out.append(((n, c, h, w), (c * m, 1, k, k), attrs))
    return out


@pytest.mark.parametrize("xs,ws,attrs", _random_geometries(40))
def test_random_depthwise_geometries_match_registry(xs, ws, attrs, kernel):
    _check(_graph(xs, ws, attrs, "mul(acc, sigmoid(acc))"))


def test_narrow_planes_take_the_lanes_and_wide_ones_the_rows():
    w = np.ones((16, 1, 3, 3), np.float32)
    fn, _ = native.prepare_conv(None, {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "group": 16}, w, None, None, None)
    for side, variant in ((7, native.LANES), (56, -1)):
        fn(np.ones((1, 16, side, side), np.float32))
    plans = {p.wo: p.variant for p in fn.plans.values()}
    assert plans == {7: native.LANES, 56: -1}
