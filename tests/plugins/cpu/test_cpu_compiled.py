"""The CPU backend's compiled forms, checked by numbers against the registry kernels.

An ``ExprProgram`` is compiled into straight-line Python that writes into operands it
may overwrite; the interpreter's step list is compiled into one function. These tests
check that both give the registry's numbers (``graphopt.expr.evaluate``, the plain
interpreter ``fast=False``), never write into an array that is read afterwards, and
name the failing node as the step loop does.
"""
import numpy as np
import pytest

from graphopt.builder import GraphBuilder
from graphopt.errors import GraphoptError
from graphopt.expr import evaluate, parse_exprs
from graphopt.plugins.cpu import CpuExecutable
from graphopt.plugins.cpu.exprcode import ExprProgram

RTOL, ATOL = 1e-6, 1e-7

EXPRS = [  # (expression, input shapes, input dtypes)
    ("relu(add(in0, in1))", [(3, 4), (3, 4)], ["float32"] * 2),
    ("t0 = add(in1, in0); mul(mul(t0, add(erf(div(t0, 1.4142135)), 1.0)), 0.5)", [(2, 8), (8,)], ["float32"] * 2),
    ("mul(sub(1.0, cast<float32>(in0)), -10000.0)", [(1, 1, 1, 5)], ["int64"]),
    ("mul(sub(1.0, cast<float32>(in0)), -10000.0)", [(1, 5)], ["float64"]),
    ("add(in0, in1)", [(4, 1), (1, 5)], ["float32"] * 2),                  # result bigger than either operand
    ("mul(add(in0, 1.0), sub(in0, in1))", [(3, 1), (3, 6)], ["float32"] * 2),  # in0 read twice, broadcast
    ("add(add(in0, in1), in2)", [(), (), ()], ["float32"] * 3),             # 0-d: NumPy scalars in between
    ("select(gt(in0, 0.0), in0, mul(in0, 0.1))", [(7,)], ["float32"]),     # a registry kernel's result
    ("sqrt(abs(sub(in0, in1)))", [(2, 3), (2, 3)], ["float64"] * 2),
]


@pytest.mark.parametrize("text,shapes,dts", EXPRS)
@pytest.mark.parametrize("scratch", [(), (0,)])
def test_expr_program_matches_registry_and_spares_what_is_not_scratch(text, shapes, dts, scratch):
    rng = np.random.default_rng(0)
    xs = [np.asarray(rng.standard_normal(s) * 3).astype(d) for s, d in zip(shapes, dts)]
    (expr,) = parse_exprs(text)
    want = evaluate(expr, xs)
    keep = [x.copy() for x in xs]
    prog = ExprProgram(expr, [x.dtype for x in xs])
    got = prog([x.copy() if i in scratch else x for i, x in enumerate(xs)], scratch)
    assert np.shape(got) == np.shape(want) and np.asarray(got).dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    for x, k, i in zip(xs, keep, range(len(xs))):
        if i not in scratch:
            np.testing.assert_array_equal(x, k)


def test_expr_program_writes_into_the_scratch_input_and_nothing_else():
    (expr,) = parse_exprs("relu(add(in0, in1))")
    a, b = np.array([-2.0, 1.0], np.float32), np.ones(2, np.float32)
    prog = ExprProgram(expr, [np.float32, np.float32])
    assert prog([a, b], scratch=(0,)) is a
    np.testing.assert_array_equal(a, [0.0, 2.0])
    np.testing.assert_array_equal(b, [1.0, 1.0])
    fresh = prog([a, b])
    assert fresh is not a and fresh is not b
    np.testing.assert_array_equal(fresh, [1.0, 3.0])


def test_donated_input_is_not_written_while_a_view_of_it_is_still_read():
    """Mul's first input dies there, but its second input is a view of the same buffer,
    read after the first step of the fused expression: nothing may be written in place."""
    b = GraphBuilder()
    x = b.input("x", (2, 3))
    c = b.op("Relu", b.op("Neg", x))
    view = b.op("Reshape", c, np.array([2, 3], np.int64))
    y = b.op("FusedElementwise", c, view, domain="ai.graphopt", expr="mul(add(in0, 1.0), sub(in1, 2.0))")
    b.output(y, "y")
    exe = CpuExecutable(b.graph)
    feeds = {"x": np.random.default_rng(2).standard_normal((2, 3)).astype(np.float32)}
    assert not exe.interp.steps[-1].inplace
    np.testing.assert_array_equal(exe.run(feeds)[0], CpuExecutable(b.graph, fast=False).run(feeds)[0])


def test_compiled_run_names_the_failing_node_as_the_step_loop_does():
    b = GraphBuilder()
    a = b.input("a", ("n", 3))
    w = b.input("w", ("k", 2))
    b.output(b.op("MatMul", b.op("Relu", a), w, name="mm"), "m")  # prepared: np.matmul on the wrong shapes
    exe = CpuExecutable(b.graph)
    inputs = [np.ones((2, 3), np.float32), np.ones((4, 2), np.float32)]
    assert exe.interp._compiled is not None
    with pytest.raises(GraphoptError) as compiled:
        exe.interp.run(inputs)
    with pytest.raises(GraphoptError) as loop:
        exe.interp.run(inputs, record={})  # the step loop
    assert str(compiled.value) == str(loop.value)
    assert str(compiled.value).startswith("node 'mm' (MatMul) failed on inputs (float32[2, 3], float32[4, 2]): "
                                          "ValueError: matmul")


def test_compiled_run_reports_a_registry_kernel_failure():
    b = GraphBuilder()
    a = b.input("a", ("n", 3))
    w = b.input("w", ("k", 2))
    b.output(b.op("Concat", b.op("Neg", a), w, axis=0, name="cat"), "c")
    exe = CpuExecutable(b.graph)
    inputs = [np.ones((2, 3), np.float32), np.ones((4, 2), np.float32)]
    with pytest.raises(GraphoptError, match=r"^node 'cat' \(Concat\) failed on inputs \(float32\[2, 3\], "
                                            r"float32\[4, 2\]\): ValueError: "):
        exe.interp.run(inputs)


def test_compiled_and_step_loop_give_the_same_outputs():
    rng = np.random.default_rng(3)
    b = GraphBuilder()
    x = b.input("x", (2, 4, 8))
    w = rng.standard_normal((8, 8)).astype(np.float32)
    h = b.op("FusedMatMul", x, w, rng.standard_normal(8).astype(np.float32), domain="ai.graphopt",
             epilogue="add(in1, acc)")
    n = b.op("LayerNormalization", h, np.ones(8, np.float32), np.zeros(8, np.float32), axis=-1)
    s = b.op("Shape", n)  # a registry kernel between prepared steps
    r = b.op("Reshape", b.op("Relu", n), s)
    b.output(r, "y")
    b.output(h, "h")
    exe = CpuExecutable(b.graph)
    inputs = [rng.standard_normal((2, 4, 8)).astype(np.float32)]
    got, loop = exe.interp.run(inputs), exe.interp.run(inputs, record={})
    want = CpuExecutable(b.graph, fast=False).run({"x": inputs[0]})
    for g, l, e in zip(got, loop, want):
        np.testing.assert_array_equal(g, l)
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


ATTENTION = [  # (q, k, v, mask shapes, attributes)
    ((1, 16, 64), (1, 16, 64), (1, 16, 64), (1, 1, 1, 16), {"layout": "BSHD", "num_heads": 4}),
    ((2, 5, 12), (2, 7, 12), (2, 7, 6), (2, 1, 5, 7), {"layout": "BSHD", "num_heads": 3}),
    ((2, 3, 80), (2, 90, 80), (2, 90, 80), None, {"layout": "BSHD", "num_heads": 2}),   # rows over SHORT_ROW
    ((1, 4, 8), (1, 6, 8), (1, 6, 8), (3, 1, 4, 6), {"layout": "BSHD", "num_heads": 2}),  # mask widens the batch
    ((1, 4, 2, 8), (1, 6, 2, 8), (1, 6, 2, 8), (1, 1, 1, 6), {"layout": "BSHD", "num_heads": 2}),  # 4-D BSHD
    ((2, 3, 5, 8), (2, 3, 6, 8), (2, 3, 6, 4), (5, 6), {"layout": "BHSD"}),
    ((2, 3, 5, 8), (2, 3, 8, 6), (2, 3, 6, 4), None, {"layout": "BHSD", "k_transposed": 1}),
]


@pytest.mark.parametrize("qs,ks,vs,ms,attrs", ATTENTION)
def test_prepared_attention_matches_registry(qs, ks, vs, ms, attrs, monkeypatch):
    monkeypatch.setenv("GRAPHOPT_CPU_NATIVE", "0")  # the NumPy path (test_native.py checks the C kernel)
    rng = np.random.default_rng(4)
    b = GraphBuilder()
    names = ["q", "k", "v"] + (["mask"] if ms else [])
    shapes = [qs, ks, vs] + ([ms] if ms else [])
    ins = [b.input(n, s) for n, s in zip(names, shapes)]
    b.output(b.op("Attention", *ins, domain="ai.graphopt", scale=0.3,
                  mask_type="additive" if ms else "none", **attrs), "y")
    feeds = {n: (rng.standard_normal(s) * 2).astype(np.float32) for n, s in zip(names, shapes)}
    exe = CpuExecutable(b.graph)
    assert exe.stats["prepared_steps"] == 1
    (got,), (want,) = exe.run(feeds), CpuExecutable(b.graph, fast=False).run(feeds)
    assert got.shape == want.shape and got.dtype == want.dtype and got.flags.c_contiguous
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_prepared_attention_leaves_a_bad_head_count_to_the_registry():
    b = GraphBuilder()
    ins = [b.input(n, (1, "s", "h")) for n in "qkv"]
    b.output(b.op("Attention", *ins, domain="ai.graphopt", scale=0.5, layout="BSHD", num_heads=4), "y")
    x = np.ones((1, 3, 6), np.float32)
    with pytest.raises(GraphoptError, match="hidden size 6 is not a multiple of num_heads=4"):
        CpuExecutable(b.graph).interp.run([x, x, x])


@pytest.mark.parametrize("shape,idx,axis", [
    ((10, 4), np.array([[1, -1, 0, 9]], np.int64), 0),
    ((3, 5, 2), np.array([-5, 4, 0], np.int32), 1),
    ((3, 5, 2), np.array(1, np.int64), -1),
    ((6,), np.array([], np.int64), 0),
])
def test_prepared_gather_matches_registry(shape, idx, axis):
    b = GraphBuilder()
    x = b.input("x", shape)
    i = b.input("i", idx.shape, "int64" if idx.dtype == np.int64 else "int32")
    b.output(b.op("Gather", x, i, axis=axis), "y")
    feeds = {"x": np.random.default_rng(5).standard_normal(shape).astype(np.float32), "i": idx}
    exe = CpuExecutable(b.graph)
    assert exe.stats["prepared_steps"] == 1
    (got,), (want,) = exe.run(feeds), CpuExecutable(b.graph, fast=False).run(feeds)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_prepared_gather_out_of_range_is_the_registry_error():
    b = GraphBuilder()
    table = b.const(np.arange(12, dtype=np.float32).reshape(4, 3), "table")
    i = b.input("i", (2,), "int64")
    b.output(b.op("Gather", table, i), "y")
    for fast in (True, False):
        with pytest.raises(GraphoptError, match="Gather indices out of range for axis 0 of size 4"):
            CpuExecutable(b.graph, fast=fast).run({"i": np.array([1, -5], np.int64)})


@pytest.mark.parametrize("shape,with_b", [((1, 16, 64), True), ((2, 3, 7), False), ((4, 128, 96), True)])
def test_prepared_layernorm_matches_registry(shape, with_b):
    """Small inputs take Scale and B tiled to their shape; the last one is over TILE_MAX."""
    rng = np.random.default_rng(6)
    b = GraphBuilder()
    x = b.input("x", shape)
    ins = [x, rng.standard_normal(shape[-1]).astype(np.float32)]
    if with_b:
        ins.append(rng.standard_normal(shape[-1]).astype(np.float32))
    b.output(b.op("LayerNormalization", *ins, axis=-1, epsilon=1e-5), "y")
    feeds = {"x": (rng.standard_normal(shape) * 3 + 1).astype(np.float32)}
    exe = CpuExecutable(b.graph)
    assert exe.stats["prepared_steps"] == 1
    for _ in range(2):  # the second run reuses the per-shape constants
        (got,), (want,) = exe.run(feeds), CpuExecutable(b.graph, fast=False).run(feeds)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_constant_operands_bound_and_tiled_give_the_registry_numbers():
    """A bias row, a column and a scalar as constants of a fused MatMul epilogue, a FusedGemm
    epilogue and pointwise ops (the first input constant, so not donated)."""
    rng = np.random.default_rng(7)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    b = GraphBuilder()
    x = b.input("x", (2, 5, 8))
    r = b.input("r", (2, 5, 6))
    m = b.op("FusedMatMul", x, f32(8, 6), f32(6), f32(5, 1), r, domain="ai.graphopt",
             epilogue="relu(add(mul(add(in1, acc), in2), in3))")
    g = b.op("FusedGemm", b.op("Flatten", x, axis=2), f32(8, 3), f32(3), f32(3), domain="ai.graphopt",
             epilogue="sub(acc, mul(in1, 2.0))")
    p = b.op("Sub", f32(6), b.op("Mul", m, f32(5, 1)))
    b.output(p, "p")
    b.output(g, "g")
    exe = CpuExecutable(b.graph)
    assert exe.stats["prepared_steps"] == 5
    feeds = {"x": f32(2, 5, 8), "r": f32(2, 5, 6)}
    for got, want in zip(exe.run(feeds), CpuExecutable(b.graph, fast=False).run(feeds)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_run_holds_the_collector_off_and_restores_its_state():
    import gc

    b = GraphBuilder()
    x = b.input("x", (4,))
    b.output(b.op("Relu", x), "y")
    exe = CpuExecutable(b.graph)
    seen = []
    exe.interp.run = lambda inputs, **kw: seen.append(gc.isenabled()) or [inputs[0]]
    feeds = {"x": np.ones(4, np.float32)}
    assert gc.isenabled()
    exe.run(feeds)
    assert seen == [False] and gc.isenabled()
    gc.disable()
    try:
        exe.run(feeds)
        assert seen == [False, False] and not gc.isenabled()  # a caller's choice is kept
    finally:
        gc.enable()
