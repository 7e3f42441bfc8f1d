"""The packed-weight GEMM (plugins/cpu/native/sgemm.h): a constant B packed once into panels,
products against it in blocks. Checked against float64 NumPy on the shapes whose edges the
blocking has to get right, for MatMul and Gemm graphs against the registry kernels, and for
its promise that the split into blocks never changes a bit."""
import numpy as np
import pytest

from graphopt.builder import GraphBuilder
from graphopt.plugins.cpu import CpuExecutable, native

pytestmark = pytest.mark.skipif(not native.status()[0], reason=f"native kernels unavailable: {native.status()[1]}")

RNG = np.random.default_rng(7)


def _rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("m,k,n", [
    (1, 5, 3), (12, 32, 32), (13, 7, 33),       # one row; exactly one register block; a row and column past it
    (128, 768, 100), (197, 300, 70),            # BERT's and ViT's rows; K past one 256-row slice
    (600, 257, 65),                             # rows past one packed block of A, K one past a slice
    (3, 1, 40), (4, 0, 9),                      # K = 1, K = 0 (zeros)
])
def test_packed_product_matches_float64(m, k, n):
    a, b = _rand(m, k), _rand(k, n)
    mm = native.packed_gemm(b)
    want = a.astype(np.float64) @ b.astype(np.float64)
    got = mm(a)
    assert got.dtype == np.float32 and got.shape == (m, n)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1, k) ** 0.5)
    np.testing.assert_allclose(mm(np.ascontiguousarray(a.T), trans_a=True, alpha=0.5), 0.5 * want,
                               rtol=1e-5, atol=1e-5 * max(1, k) ** 0.5)


@pytest.mark.parametrize("m", range(1, 12))
def test_blocks_of_fewer_rows_than_the_register_block(m):
    # sgemm.h keeps only m rows of accumulators for a block of m < MR rows (a GEMV at batch 1
    # costs one row, not twelve): each row count, over a whole 32-column panel and a partial
    # one, with K past one 256-deep slice (the second slice accumulates into C)
    a, b = _rand(m, 300), _rand(300, 45)
    got = native.packed_gemm(b)(a)
    np.testing.assert_allclose(got, a.astype(np.float64) @ b.astype(np.float64), rtol=1e-5, atol=1e-4)
    # the same rows as the tail of a bigger product: identical bits (each row sums in one order)
    big = np.concatenate([_rand(12, 300), a])
    np.testing.assert_array_equal(native.packed_gemm(b)(big)[12:], got)


def test_leading_axes_strided_rows_and_other_dtypes():
    b = _rand(24, 40)
    mm = native.packed_gemm(b)
    a = _rand(2, 3, 5, 24)
    np.testing.assert_allclose(mm(a), a @ b, rtol=1e-5, atol=1e-5)
    wide = _rand(10, 48)
    np.testing.assert_allclose(mm(wide[:, ::2]), wide[:, ::2] @ b, rtol=1e-5, atol=1e-5)  # not contiguous
    a64 = a.astype(np.float64)
    np.testing.assert_allclose(mm(a64), a64 @ b, rtol=1e-6)  # the unpacked fallback
    assert native.packed_gemm(b.astype(np.float64)) is None
    with pytest.raises(ValueError):
        mm(_rand(3, 25))  # K does not fit: NumPy's error


def test_blocks_never_change_a_bit():
    # a row's sum runs over k in the same order whichever block of rows it is computed in
    a, b = _rand(700, 300), _rand(300, 90)
    mm = native.packed_gemm(b)
    whole = mm(a)
    for lo, hi in [(0, 1), (5, 17), (100, 700), (690, 700)]:
        np.testing.assert_array_equal(mm(a[lo:hi]), whole[lo:hi])


def test_the_switch_turns_it_off(monkeypatch):
    monkeypatch.setenv("GRAPHOPT_PACKED_GEMM", "0")
    assert native.packed_gemm(_rand(4, 4)) is None


def _check(g, feeds):
    want = CpuExecutable(g, fast=False).run(feeds)[0]
    got = CpuExecutable(g).run(feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_matmul_with_constant_weights_and_a_fused_epilogue():
    b = GraphBuilder()
    x = b.input("x", (1, 37, 64))
    y = b.op("FusedMatMul", x, _rand(64, 50), _rand(50), domain="ai.graphopt",
             epilogue="t0 = add(in1, acc); mul(mul(0.5, t0), add(1.0, erf(mul(t0, 0.70710677))))")
    b.output(y, "y")
    _check(b.graph, {"x": _rand(1, 37, 64)})
    b = GraphBuilder()
    x = b.input("x", (3, 20))
    b.output(b.op("MatMul", x, _rand(20, 33)), "y")
    _check(b.graph, {"x": _rand(3, 20)})


@pytest.mark.parametrize("attrs", [{}, {"transB": 1}, {"transA": 1, "alpha": 0.25, "beta": 2.0}])
def test_gemm_node(attrs):
    b = GraphBuilder()
    xs = (40, 13) if attrs.get("transA") else (13, 40)
    x = b.input("x", xs)
    w = _rand(17, 40) if attrs.get("transB") else _rand(40, 17)
    b.output(b.op("Gemm", x, w, _rand(17), **attrs), "y")
    _check(b.graph, {"x": _rand(*xs)})
