"""The dense conv's GEMM route (plugins/cpu/native/conv_gemm.h): columns gathered from the
phase planes, one product per group and block of output channels against the weights packed
once (sgemm.h), bias and the epilogue applied per block. Forced on every geometry the register tiles are tested on and
compared with the registry's NumPy Conv; which convs may take it by default (``gemm_route``: a 1x1
always, a kxk timed against the tiles on its first run) is checked on the shapes it was measured on.
"""
import numpy as np
import pytest

from graphopt.plugins.cpu import CpuExecutable, native
from graphopt.plugins.cpu.native import _Plan, gemm_route

from test_native import ATOL, GEOMETRIES, RTOL, _conv_graph, _feeds

pytestmark = pytest.mark.skipif(not native.status()[0], reason=f"native kernels unavailable: {native.status()[1]}")

DENSE = [gm for gm in GEOMETRIES if gm[2].get("group", 1) == 1] + [
    ((1, 8, 12, 12), (16, 2, 3, 3), {"pads": [1, 1, 1, 1], "group": 4}),     # grouped: one GEMM per group
    ((2, 20, 7, 7), (72, 20, 3, 3), {"pads": [1, 1, 1, 1]}),                 # a 7x7 plane, batch 2
    ((1, 24, 9, 11), (40, 24, 1, 1), {"pads": [1, 0, 1, 2]}),                # a padded 1x1
]
EPILOGUES = [(None, False), ("relu(acc)", False), ("min(max(acc, 0.0), 6.0)", False),
             ("relu(add(acc, in1))", True), ("add(in1, acc)", True),
             ("mul(acc, sigmoid(acc))", False),                                 # a program (SiLU)
             ("mul(acc, min(max(add(div(acc, 6.0), 0.5), 0.0), 1.0))", False)]  # HardSwish


def _forced(g, feeds):
    """The node's output through the GEMM route (the variant after the tiles), and the reference."""
    node = next(iter(g))
    attrs = dict(node.attrs)
    epi = attrs.pop("epilogue", None)
    attrs.pop("layout", None)
    from graphopt.expr import parse_exprs

    w = node.inputs[1].const
    b = node.inputs[2].const if len(node.inputs) > 2 and node.inputs[2] is not None else None
    fn, _ = native.prepare_conv(node, attrs, w, b, parse_exprs(epi)[0] if epi else None, fallback=None)
    res = feeds.get("r")
    got = fn.run(feeds["x"], res, len(native.library().variants()))
    want = CpuExecutable(g, fast=False).run(feeds)[0]
    return got, want


@pytest.mark.parametrize("xs,ws,attrs", DENSE)
@pytest.mark.parametrize("epilogue,residual", EPILOGUES)
def test_gemm_route_matches_registry(xs, ws, attrs, epilogue, residual):
    g = _conv_graph(xs, ws, attrs, epilogue=epilogue, residual=residual)
    feeds = _feeds(g)
    got, want = _forced(g, feeds)
    assert got.flags.c_contiguous and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_gemm_route_passes_nan_through_the_clamp():
    g = _conv_graph((1, 8, 8, 8), (64, 8, 3, 3), {"pads": [1, 1, 1, 1]}, epilogue="min(max(acc, 0.0), 6.0)")
    feeds = _feeds(g)
    feeds["x"][0, 0, 3, 3] = np.nan
    got, want = _forced(g, feeds)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got).any()


@pytest.mark.parametrize("xs,ws,attrs,route", [
    ((1, 512, 7, 7), (512, 512, 3, 3), {"pads": [1, 1, 1, 1]}, "time"),     # ResNet's last stage
    ((1, 128, 14, 14), (32, 128, 3, 3), {"pads": [1, 1, 1, 1]}, "tiles"),   # DenseNet: too few outputs
    ((1, 64, 56, 56), (64, 64, 3, 3), {"pads": [1, 1, 1, 1]}, "tiles"),     # a big plane: tiles
    ((1, 256, 56, 56), (128, 256, 1, 1), {}, "gemm"),                       # a big 1x1: in place, GEMM
    ((1, 128, 55, 55), (16, 128, 1, 1), {}, "time"),                        # ... timed with few outputs
    ((1, 16, 56, 56), (16, 16, 1, 1), {}, "time"),
    ((1, 48, 14, 14), (288, 48, 1, 1), {}, "gemm"),                         # MobileNetV3's expansions
])
def test_route_choice_follows_the_measurements(xs, ws, attrs, route):
    g = _conv_graph(xs, ws, attrs)
    node = next(iter(g))
    plan = _Plan(xs, list(ws[2:]), attrs.get("strides", [1, 1]), [1, 1], attrs, 1, ws[0])
    assert gemm_route(plan, ws[1], ws[2] * ws[3]) == route
    if route != "tiles" and np.prod(xs) <= 65536:  # and the executable takes it (a 1x1) or times it (kxk), to the reference's numbers
        exe = CpuExecutable(g)
        feeds = _feeds(g)
        np.testing.assert_allclose(exe.run(feeds)[0], CpuExecutable(g, fast=False).run(feeds)[0], rtol=RTOL, atol=1e-3)
    assert node.op_type == "Conv"


def test_gemm_route_refuses_a_wrong_column_buffer():
    lib = native.library()
    x = np.ones((1, 4, 6, 6), np.float32)
    plan = _Plan(x.shape, [3, 3], [1, 1], [1, 1], {"pads": [1, 1, 1, 1]}, 1, 8)
    mr = lib.sgemm_panel()[0]
    w = np.empty(-(-8 // mr) * mr * 4 * 9, np.float32)
    lib.pack_a(np.ones((8, 4 * 9), np.float32), 1, w)
    with pytest.raises(ValueError, match="does not fit"):
        lib.pack_a(np.ones((8, 4 * 9), np.float32), 3, w)  # 8 rows are not 3 groups
    y = np.empty((1, 8, 6, 6), np.float32)
    planes = np.zeros(plan.planes_shape, np.float32)
    short = np.empty(4 * 9 * 36 - 1, np.float32)
    with pytest.raises(ValueError, match="geometry does not fit"):
        lib.conv(len(lib.variants()), plan.geometry, x, planes, w, plan.offs, None, None, y, -np.inf, np.inf, None,
                 short)
    lib.conv(len(lib.variants()), plan.geometry, x, planes, w, plan.offs, None, None, y, -np.inf, np.inf, None,
             np.empty(4 * 9 * 36, np.float32))
    inner = np.full((4, 4), 36.0, np.float32)  # every interior output sums 4 channels x 9 taps of ones
    np.testing.assert_array_equal(y[0, :, 1:5, 1:5], np.broadcast_to(inner, (8, 4, 4)))


def test_a_kxk_candidate_is_timed_against_the_tiles_and_keeps_its_choice(monkeypatch):
    # ResNet's last stage: the GEMM is a candidate, not the rule; the first run times it beside
    # each tile that fits the plane and keeps the fastest, to the reference's numbers, and every
    # later run uses that one (the same bits); a 1x1 conv on a small plane takes the GEMM
    # without timing
    nv = len(native.library().variants())
    timed, original = [], native._tune

    def spy(plan, variants, call, gemm=None):
        got = original(plan, variants, call, gemm)
        timed.append((gemm, got))
        return got

    monkeypatch.setattr(native, "_tune", spy)
    for ws, pads, expect in (((64, 64, 3, 3), [1, 1, 1, 1], [nv]), ((64, 64, 1, 1), [0, 0, 0, 0], [])):
        g = _conv_graph((1, 64, 7, 7), ws, {"pads": pads})
        exe = CpuExecutable(g)
        feeds = _feeds(g)
        first = exe.run(feeds)[0]
        np.testing.assert_allclose(first, CpuExecutable(g, fast=False).run(feeds)[0], rtol=RTOL, atol=1e-3)
        assert [gm for gm, _ in timed] == expect
        assert all(0 <= choice <= nv for _, choice in timed)
        np.testing.assert_array_equal(exe.run(feeds)[0], first)
        assert len(timed) == len(expect)  # timed once, on the first run
        timed.clear()


@pytest.mark.parametrize("threads", [1, 2])
def test_tuning_times_on_the_clock_that_sees_the_work(monkeypatch, threads):
    # one thread: the caller's CPU time (another process on the core does not inflate it); a pool:
    # the wall clock. The fastest candidate by that clock wins, the GEMM route among them.
    import time as _time

    lib = native.library()
    plan = _Plan((1, 64, 7, 7), [3, 3], [1, 1], [1, 1], {"pads": [1, 1, 1, 1]}, 1, 64)
    variants = lib.variants()
    gemm = len(variants)
    cost = {i: 5.0 + i for i in range(len(variants))}
    cost[gemm] = 1.0  # the fastest
    now = [0.0]

    def clock():
        return now[0]

    def refuse():
        raise AssertionError("the other clock")

    def call(i):
        now[0] += cost[i]

    monkeypatch.setattr(lib, "threads", lambda: threads)
    monkeypatch.setattr(_time, "thread_time", clock if threads == 1 else refuse)
    monkeypatch.setattr(_time, "perf_counter", refuse if threads == 1 else clock)
    assert native._tune(plan, variants, call, gemm) == gemm and plan.variant == gemm
