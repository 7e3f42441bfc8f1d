"""The CPU backend's native conv kernels (plugins/cpu/native) against the registry's NumPy Conv.

Every geometry the phase-plane layout has to get right (padding on one side only,
strides, dilations, groups, depthwise multipliers, batches, 1x1 convs read in place,
planes narrower than a vector), every epilogue the kernels apply while storing, every
tile variant (which must agree to the bit), two Python threads at once, and the
switch that turns them off.
"""
import math
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from graphopt.builder import GraphBuilder
from graphopt.expr import parse_exprs
from graphopt.plugins.cpu import CpuExecutable, native

pytestmark = pytest.mark.skipif(not native.status()[0], reason=f"native kernels unavailable: {native.status()[1]}")

RTOL, ATOL = 1e-4, 1e-4  # float32 sums of up to 144 products of O(1) values, in another order

GEOMETRIES = [  # (x shape, w shape, attrs)
    ((1, 16, 32, 32), (16, 16, 3, 3), {"pads": [1, 1, 1, 1]}),
    ((2, 3, 17, 19), (8, 3, 3, 3), {"pads": [1, 1, 1, 1]}),                      # batch 2, odd sizes, M < tile
    ((1, 16, 20, 20), (32, 16, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}),
    ((1, 16, 21, 18), (24, 16, 1, 1), {"strides": [2, 2]}),                        # 1x1 stride 2: one phase read
    ((1, 32, 8, 8), (64, 32, 1, 1), {}),                                           # 1x1 read in place
    ((1, 8, 16, 16), (12, 8, 3, 3), {"pads": [2, 2, 2, 2], "dilations": [2, 2]}),
    ((1, 6, 15, 13), (10, 6, 5, 3), {"pads": [2, 0, 1, 1], "strides": [1, 2]}),    # uneven pads and strides
    ((1, 8, 12, 12), (16, 2, 3, 3), {"pads": [1, 1, 1, 1], "group": 4}),           # grouped
    ((2, 16, 16, 16), (16, 1, 3, 3), {"pads": [1, 1, 1, 1], "group": 16}),         # depthwise
    ((1, 8, 19, 19), (16, 1, 3, 3), {"pads": [1, 1, 1, 1], "group": 8, "strides": [2, 2]}),  # multiplier 2
    ((1, 4, 9, 9), (8, 4, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ((1, 4, 3, 3), (8, 4, 3, 3), {"pads": [1, 1, 1, 1]}),                          # 9 outputs: NumPy fallback
]


def _conv_graph(xs, w, attrs, bias=True, epilogue=None, residual=False):
    rng = np.random.default_rng(1)
    b = GraphBuilder()
    x = b.input("x", xs)
    wv = rng.standard_normal(w).astype(np.float32)
    ins = [x, wv, rng.standard_normal(w[0]).astype(np.float32) if bias else None]
    if epilogue is None:
        y = b.op("Conv", *ins, **attrs)
    else:
        extra = []
        if residual:
            out = CpuExecutable(_conv_graph(xs, w, attrs, bias)).run({"x": np.zeros(xs, np.float32)})[0]
            extra = [b.input("r", out.shape)]
        y = b.op("FusedConv", *ins, *extra, domain="ai.graphopt", epilogue=epilogue, **attrs)
    b.output(y, "y")
    return b.graph


def _feeds(g, seed=0):
    rng = np.random.default_rng(seed)
    return {v.name: (rng.standard_normal(v.type.shape) * 2).astype(np.float32) for v in g.inputs}


def _check(g, feeds=None, native_kernel=True):
    feeds = feeds or _feeds(g)
    fast = CpuExecutable(g)
    want = CpuExecutable(g, fast=False).run(feeds)[0]
    got = fast.run(feeds)[0]
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    if native_kernel:
        assert got.flags.c_contiguous  # a new array, not the NumPy path's cropped view
    return fast


@pytest.mark.parametrize("xs,ws,attrs", GEOMETRIES)
def test_conv_geometry_matches_registry(xs, ws, attrs):
    _check(_conv_graph(xs, ws, attrs))
    _check(_conv_graph(xs, ws, attrs, bias=False))


@pytest.mark.parametrize("epilogue,residual", [
    ("relu(acc)", False), ("min(max(acc, 0.0), 6.0)", False), ("relu(add(acc, in1))", True),
    ("add(in1, acc)", True), ("max(acc, -0.5)", False),
])
def test_fused_epilogues_match_registry(epilogue, residual):
    for xs, ws, attrs in GEOMETRIES[:3] + GEOMETRIES[8:10]:
        _check(_conv_graph(xs, ws, attrs, epilogue=epilogue, residual=residual))


def test_nan_passes_the_clamp_as_in_numpy():
    g = _conv_graph((1, 4, 8, 8), (8, 4, 3, 3), {"pads": [1, 1, 1, 1]}, epilogue="min(max(acc, 0.0), 6.0)")
    feeds = _feeds(g)
    feeds["x"][0, 0, 3, 3] = np.nan
    got = CpuExecutable(g).run(feeds)[0]
    want = CpuExecutable(g, fast=False).run(feeds)[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got).any()


def test_epilogue_plan_reads_clamps_and_residuals():
    plan = lambda t: native.epilogue_plan(parse_exprs(t)[0])
    assert plan("relu(add(acc, in1))") == (1, 0.0, math.inf)
    assert plan("min(max(acc, 0.0), 6.0)") == (None, 0.0, 6.0)
    assert plan("max(min(acc, 6.0), 0.0)") == (None, 0.0, 6.0)
    assert plan("add(in2, acc)") == (2, -math.inf, math.inf)
    assert plan("max(min(acc, 1.0), 2.0)") is None         # not a clamp: always 2
    assert plan("mul(acc, 2.0)") is None
    assert plan("relu(add(acc, acc))") is None
    assert native.epilogue_plan(None) == (None, -math.inf, math.inf)


def test_an_unsupported_epilogue_keeps_the_numpy_path_and_its_numbers():
    # a product with another input is neither a clamp/residual nor a program of acc alone
    g = _conv_graph((1, 4, 8, 8), (8, 4, 3, 3), {"pads": [1, 1, 1, 1]}, epilogue="mul(acc, in1)", residual=True)
    _check(g, native_kernel=False)
    assert CpuExecutable(g).stats["native_steps"] == 0


@pytest.mark.parametrize("xs", [(1, 24, 1, 1), (2, 24, 1, 1), (1, 24, 3, 3)])
@pytest.mark.parametrize("epilogue,residual", [(None, False), ("relu(acc)", False), ("relu(add(acc, in1))", True),
                                               ("min(max(add(mul(acc, 0.16666667), 0.5), 0.0), 1.0)", False)])
def test_small_plane_pointwise_convs_run_as_gemms(xs, epilogue, residual):
    # squeeze-excitation FCs and classifier heads: 1x1 convs on planes of fewer than 16 positions
    g = _conv_graph(xs, (40, 24, 1, 1), {}, epilogue=epilogue, residual=residual)
    exe = _check(g)
    assert exe.stats["native_steps"] == 1


def test_every_tile_variant_gives_the_same_bits():
    x = np.random.default_rng(3).standard_normal((1, 16, 12, 12)).astype(np.float32)
    attrs = {"pads": [1, 1, 1, 1]}
    g = _conv_graph((1, 16, 12, 12), (20, 16, 3, 3), attrs)
    node = next(iter(g))
    w, b = node.inputs[1].const, node.inputs[2].const
    fn, _ = native.prepare_conv(node, attrs, w, b, None, fallback=None)
    outs = [fn.run(x, None, v) for v in range(len(native.library().variants()))]
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    want = CpuExecutable(g, fast=False).run({"x": x})[0]
    np.testing.assert_allclose(outs[0], want, rtol=RTOL, atol=ATOL)


def test_strided_input_and_two_threads_at_once():
    g = _conv_graph((2, 8, 16, 16), (16, 8, 3, 3), {"pads": [1, 1, 1, 1]}, epilogue="relu(acc)")
    exe = CpuExecutable(g)
    ref = CpuExecutable(g, fast=False)
    big = np.random.default_rng(5).standard_normal((2, 8, 16, 32)).astype(np.float32)
    x = big[..., ::2]  # not contiguous
    np.testing.assert_allclose(exe.run({"x": x})[0], ref.run({"x": x})[0], rtol=RTOL, atol=ATOL)
    feeds = [{"x": np.random.default_rng(s).standard_normal((2, 8, 16, 16)).astype(np.float32)} for s in range(4)]
    assert_threads_agree(exe, feeds, [ref.run(f)[0] for f in feeds])


def assert_threads_agree(exe, feeds, wants, reps=20, rtol=RTOL, atol=ATOL):
    """One thread per feed runs ``exe`` ``reps`` times at once with the others; each must get its
    own ``wants``."""
    errors = []

    def work(i):
        try:
            for _ in range(reps):
                np.testing.assert_allclose(exe.run(feeds[i])[0], wants[i], rtol=rtol, atol=atol)
        except AssertionError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(feeds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_switched_off_by_environment():
    code = ("from graphopt.plugins.cpu import native; ok, why = native.status(); "
            "print(ok, why)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "GRAPHOPT_CPU_NATIVE": "0"}, check=True).stdout
    assert out.strip() == "False GRAPHOPT_CPU_NATIVE=0"


def test_sample_cnns_match_registry_with_native_convs():
    from samples import models

    for name in ("resnet_style", "mobilenet_v2_style"):
        module, example = models.BUILDERS[name](batch=2)
        import graphopt

        m = graphopt.compile(models.load_graph(name), backend="cpu", level=2)
        feeds = {v.name: x.numpy() for v, x in zip(m.graph.inputs, example)}
        want = CpuExecutable(models.load_graph(name), fast=False).run(feeds)[0]
        np.testing.assert_allclose(m.run(feeds)[0], want, rtol=1e-4, atol=1e-5)
        convs = [n for n in m.graph if n.op_type in ("Conv", "FusedConv")]
        pools = [n for n in m.graph if n.op_type in ("GlobalAveragePool", "ReduceMean")]  # test_native_reduce.py
        assert m.stats["native_steps"] == len(convs) + len(pools) and len(convs) >= 9


ATTENTION_CASES = [  # (layout, q, k/v, mask shape or None, heads)
    ("BSHD", (2, 16, 64), (2, 16, 64), (2, 1, 1, 16), 4),
    ("BSHD", (1, 7, 24), (1, 9, 24), None, 3),                 # Sk != Sq, D = 8 (no full vector)
    ("BSHD", (1, 5, 2, 40), (1, 6, 2, 40), (5, 6), 2),         # 4-D BSHD
    ("BHSD", (2, 4, 16, 16), (2, 4, 16, 16), (16, 16), 0),
    ("BHSD", (8, 10, 20), (8, 12, 20), (10, 12), 0),          # 3-D BHSD
    ("BHSD", (1, 2, 3, 32), (1, 2, 1100, 32), (1, 1, 1, 1100), 0),  # a score row past the stack buffer
]


@pytest.mark.parametrize("layout,qs,ks,ms,heads", ATTENTION_CASES)
def test_attention_matches_registry(layout, qs, ks, ms, heads):
    rng = np.random.default_rng(4)
    b = GraphBuilder()
    q, k, v = b.input("q", qs), b.input("k", ks), b.input("v", ks)
    ins = [q, k, v] + ([b.input("m", ms)] if ms else [])
    y = b.op("Attention", *ins, domain="ai.graphopt", scale=0.3, num_heads=heads, layout=layout,
             mask_type="additive" if ms else "none")
    b.output(y, "y")
    exe = CpuExecutable(b.graph)
    assert exe.stats["native_steps"] == 1
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in zip("qkvm", [qs, ks, ks, ms]) if s}
    if ms:
        feeds["m"][..., 0] = -1e9  # a masked key
    np.testing.assert_allclose(exe.run(feeds)[0], CpuExecutable(b.graph, fast=False).run(feeds)[0],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("b_,h,sq,sk,d,mask", [(1, 12, 37, 128, 64, False), (2, 3, 5, 70, 24, True),
                                                 (1, 2, 130, 17, 80, True)])
def test_attention_with_k_transposed_matches_registry(b_, h, sq, sk, d, mask):
    # K given as (B, H, D, Sk), as GPT-2's export hands it over; Sq not a multiple of the 6-row
    # blocks, Sk not of 16 keys, D past one and not a multiple of 4 vectors
    rng = np.random.default_rng(5)
    b = GraphBuilder()
    q, kt, v = b.input("q", (b_, h, sq, d)), b.input("kt", (b_, h, d, sk)), b.input("v", (b_, h, sk, d))
    ins = [q, kt, v] + ([b.input("m", (1, 1, sq, sk))] if mask else [])
    b.output(b.op("Attention", *ins, domain="ai.graphopt", scale=0.125, k_transposed=1,
                  mask_type="additive" if mask else "none"), "y")
    exe = CpuExecutable(b.graph)
    assert exe.stats["native_steps"] == 1
    feeds = {n.name: rng.standard_normal(n.type.shape).astype(np.float32) for n in b.graph.inputs}
    if mask:
        feeds["m"] = np.triu(np.full((sq, sk), -np.inf, np.float32), 1)[None, None]  # causal, as -inf
    np.testing.assert_allclose(exe.run(feeds)[0], CpuExecutable(b.graph, fast=False).run(feeds)[0],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape,bias", [((2, 16, 64), True), ((3, 5), False), ((4, 300), True), ((70, 512), True)])
def test_layernorm_matches_registry(shape, bias):
    rng = np.random.default_rng(6)
    b = GraphBuilder()
    x = b.input("x", shape)
    n = shape[-1]
    ins = [x, rng.standard_normal(n).astype(np.float32)] + ([rng.standard_normal(n).astype(np.float32)] if bias else [])
    b.output(b.op("LayerNormalization", *ins, axis=-1, epsilon=1e-5), "y")
    exe = CpuExecutable(b.graph)
    assert exe.stats["native_steps"] == 1
    feeds = {"x": (rng.standard_normal(shape) * 3 + 1).astype(np.float32)}
    np.testing.assert_allclose(exe.run(feeds)[0], CpuExecutable(b.graph, fast=False).run(feeds)[0],
                               rtol=1e-5, atol=1e-5)


def test_sample_transformers_match_registry_with_native_kernels():
    import graphopt
    from samples import models

    for name in ("bert_style", "gpt_style_block"):
        module, example = models.BUILDERS[name](batch=2)
        m = graphopt.compile(models.load_graph(name), backend="cpu", level=2)
        names = getattr(module, "input_names", ("input",))
        feeds = {n: x.numpy() for n, x in zip(names, example)}
        want = CpuExecutable(models.load_graph(name), fast=False).run(feeds)[0]
        np.testing.assert_allclose(m.run(feeds)[0], want, rtol=1e-4, atol=1e-5)
        steps = m.executable.interp.steps
        kinds = [st for st in steps if st.node.op_type in ("Attention", "LayerNormalization")]
        assert kinds and all(getattr(st.call, "native", False) for st in kinds)
        # the GELU epilogues and fused elementwise chains run as native expression programs
        assert any(getattr(st.call, "native", False) and st.node.op_type == "FusedMatMul" for st in steps)


POOLS = [  # (op, x shape, attrs)
    ("MaxPool", (1, 8, 112, 112), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("MaxPool", (2, 3, 13, 11), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),   # SqueezeNet's
    ("MaxPool", (1, 4, 111, 111), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),  # its first, wide
    ("MaxPool", (1, 2, 20, 50), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),  # stride 1: 16 columns at a time
    ("MaxPool", (1, 4, 9, 9), {"kernel_shape": [2, 3], "strides": [1, 2], "pads": [0, 2, 1, 0], "dilations": [2, 1]}),
    ("MaxPool", (1, 2, 3, 3), {"kernel_shape": [5, 5], "pads": [2, 2, 2, 2]}),
    ("AveragePool", (1, 8, 28, 28), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("AveragePool", (1, 8, 28, 28), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
                                     "count_include_pad": 1}),
    ("AveragePool", (2, 3, 14, 13), {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1,
                                     "count_include_pad": 1}),
    ("AveragePool", (1, 3, 7, 7), {"kernel_shape": [7, 7]}),
    ("AveragePool", (1, 2, 5, 6), {"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER", "strides": [2, 2]}),
]


@pytest.mark.parametrize("op,xs,attrs", POOLS)
def test_pools_match_registry(op, xs, attrs):
    rng = np.random.default_rng(7)
    b = GraphBuilder()
    x = b.input("x", xs)
    b.output(b.op(op, x, **attrs), "y")
    exe = CpuExecutable(b.graph)
    assert exe.stats["native_steps"] == 1
    feeds = {"x": rng.standard_normal(xs).astype(np.float32)}
    feeds["x"].reshape(-1)[::97] = np.nan if op == "MaxPool" else 0.0  # NaN propagates through the max
    np.testing.assert_allclose(exe.run(feeds)[0], CpuExecutable(b.graph, fast=False).run(feeds)[0],
                               rtol=1e-6, atol=1e-6)


def test_attention_nan_and_inf_scores_as_the_registry():
    # the vectorised softmax keeps the scalar one's rules: a NaN score makes its row NaN, -inf
    # masked keys get weight 0, a row of 40 keys runs 2 vectors and a tail of 8
    rng = np.random.default_rng(6)
    b = GraphBuilder()
    q, k, v, m = b.input("q", (1, 2, 9, 16)), b.input("k", (1, 2, 40, 16)), b.input("v", (1, 2, 40, 16)), \
        b.input("m", (1, 1, 9, 40))
    b.output(b.op("Attention", q, k, v, m, domain="ai.graphopt", scale=0.25, mask_type="additive",
                  layout="BHSD"), "y")
    feeds = {n.name: rng.standard_normal(n.type.shape).astype(np.float32) for n in b.graph.inputs}
    feeds["q"][0, 1, 3, 5] = np.nan
    feeds["m"][0, 0, :, 17] = -np.inf
    feeds["m"][0, 0, 2, 33] = np.nan  # in the tail of row 2
    got = CpuExecutable(b.graph).run(feeds)[0]
    want = CpuExecutable(b.graph, fast=False).run(feeds)[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[0, 1, 3]).all() and np.isnan(got[0, :, 2]).all()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
