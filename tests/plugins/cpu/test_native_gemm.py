"""GEMMs on NumPy's OpenBLAS split over the native pool (plugins/cpu/native/blas.h) against
NumPy's matmul and the registry's MatMul/Gemm kernels."""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from graphopt.builder import GraphBuilder
from graphopt.plugins.cpu import CpuExecutable, native

pytestmark = pytest.mark.skipif(not native.blas_status()[0], reason=f"native GEMM unavailable: {native.blas_status()[1]}")


@pytest.mark.parametrize("m,k,n", [(128, 96, 300), (37, 64, 1000), (300, 5, 17), (16, 200, 16), (3, 64, 64),
                                   (1, 1280, 1000), (0, 8, 8)])
def test_gemm_matches_numpy(m, k, n):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
    mm = native.gemm_fn()
    np.testing.assert_allclose(mm(a, b), a @ b, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(mm(np.ascontiguousarray(a.T), b, True, 0.5), 0.5 * (a @ b), rtol=1e-5, atol=1e-4)


def test_batched_strided_and_refused_inputs():
    rng = np.random.default_rng(1)
    mm = native.gemm_fn()
    x = rng.standard_normal((2, 40, 48)).astype(np.float32)
    w = rng.standard_normal((48, 70)).astype(np.float32)
    np.testing.assert_allclose(mm(x, w), x @ w, rtol=1e-5, atol=1e-4)
    xt = x.transpose(1, 0, 2)  # not contiguous: copied first
    np.testing.assert_allclose(mm(xt, w), xt @ w, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(mm(x, w[:, ::2]), x @ w[:, ::2], rtol=1e-5, atol=1e-4)
    assert mm(x.astype(np.float64), w).dtype == np.float64  # NumPy's matmul for other dtypes
    with pytest.raises(ValueError):
        mm(x, w[:40])
    with pytest.raises(ValueError, match="shapes"):
        native.library().gemm(x[0], w, np.empty((40, 69), np.float32), False, False, 1.0, 0.0)


def test_four_threads_at_once():
    rng = np.random.default_rng(2)
    mm = native.gemm_fn()
    pairs = [(rng.standard_normal((64 + 8 * i, 96)).astype(np.float32), rng.standard_normal((96, 200)).astype(
        np.float32)) for i in range(4)]

    def work(pair):
        a, b = pair
        for _ in range(10):
            np.testing.assert_allclose(mm(a, b), a @ b, rtol=1e-5, atol=1e-4)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(work, pairs))  # an assertion in a thread is raised here


@pytest.mark.parametrize("op,attrs", [("MatMul", {}), ("Gemm", {"transB": 1, "alpha": 0.5, "beta": 2.0}),
                                      ("Gemm", {"transA": 1})])
def test_matmul_and_gemm_nodes_match_registry(op, attrs):
    rng = np.random.default_rng(3)
    b = GraphBuilder()
    shape = (64, 48) if attrs.get("transA") else (3, 48, 64) if op == "MatMul" else (48, 64)
    x = b.input("x", shape)
    w = rng.standard_normal((96, 64) if attrs.get("transB") else (64, 96)).astype(np.float32)
    ins = [x, w] + ([rng.standard_normal(96).astype(np.float32)] if op == "Gemm" else [])
    b.output(b.op(op, *ins, **attrs), "y")
    feeds = {"x": rng.standard_normal(shape).astype(np.float32)}
    np.testing.assert_allclose(CpuExecutable(b.graph).run(feeds)[0], CpuExecutable(b.graph, fast=False).run(feeds)[0],
                               rtol=1e-5, atol=1e-4)


def test_numpys_blas_threads_are_left_as_they_were():
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def counts():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["internal_api"] == "openblas"]

    mm = native.gemm_fn()
    before = counts()
    a, b = np.ones((256, 128), np.float32), np.ones((128, 512), np.float32)
    for _ in range(5):
        mm(a, b)
        mm(a[:1], b)
    assert counts() == before
