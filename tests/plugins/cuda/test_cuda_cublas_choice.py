"""cuBLAS for GEMM on the `cuda` backend, on the CuPy stand-in: which views cuBLAS can address
(``plan_gemm``), the column-major call it gets (checked by running it: the fake cuBLAS is a
NumPy GEMM over the very pointers and leading dimensions passed), the generated epilogue after
it, the timed choice under ``auto`` (a fake timer) and its cache, ``cublas`` and ``generated``
modes, CUDA-graph replay of cuBLAS steps, and emulation refusing cuBLAS."""
import functools
import json

import numpy as np
import pytest

import graphopt
from cuda_harness import needs_emu
from fake_cupy import fake_gpu  # noqa: F401  (the fixture)
from graphopt.builder import GraphBuilder
from graphopt.errors import GraphoptError
from graphopt.plugins.cpu import run_reference
from graphopt.plugins.cuda import cublas
from graphopt.buildcache import cache_dir
from graphopt.plugins.cuda.gemm import make_matmul
from graphopt.plugins.cuda.specs import View
from graphopt.plugins.cuda.tc_gemm import make_tc_matmul

pytestmark = needs_emu
RNG = np.random.default_rng(0)


def w(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


# -- which GEMMs cuBLAS can run, and the call --------------------------------------------------------


def test_contiguous_matmul_is_one_untransposed_call():
    call = cublas.plan_gemm(make_matmul(5, 7, 3))
    assert (call.m, call.n, call.k, call.batch) == (7, 5, 3, 1)  # Cᵀ = Bᵀ Aᵀ: m is our N
    assert (call.transa, call.lda, call.transb, call.ldb, call.ldc) == (cublas.OP_N, 7, cublas.OP_N, 3, 7)
    assert call.out_dtype == "float32"  # no epilogue: cuBLAS writes the output


def test_transposed_and_broadcast_operands():
    # B read transposed (Gemm transB: B is (N, K) in memory), A broadcast over a batch of 4
    spec = make_matmul(5, 7, 3, (4,), a=View("float32", (0, 3, 1)), b=View("float32", (21, 1, 3)))
    call = cublas.plan_gemm(spec)
    assert (call.transa, call.lda) == (cublas.OP_T, 3)
    assert (call.stride_a, call.stride_b, call.stride_c, call.batch) == (21, 0, 35, 4)


@pytest.mark.parametrize("spec, why", [
    (make_matmul(5, 7, 3, a=View("float32", (-3, 1), 12)), "reversed"),
    (make_matmul(5, 7, 3, (2, 3), a=View("float32", (0, 15, 3, 1))), "batch dims of A do not collapse"),
    (make_matmul(5, 7, 3, b=View("float32", (14, 2))), "B has no unit-stride"),
    (make_matmul(5, 7, 0), "empty"),
])
def test_views_cublas_cannot_address_stay_generated(spec, why):
    reason = cublas.plan_gemm(spec)
    assert isinstance(reason, str) and why in reason
    assert cublas.decide("cublas", spec, reason, None, None)["choice"] == "generated"


def test_float16_accumulates_in_float32_for_an_epilogue():
    from graphopt.plugins.cuda.lowerings.matmul import bias_fn as _bias_fn
    from graphopt.plugins.cuda.specs import Epilogue

    ep = Epilogue(_bias_fn("float16"), (View("float16", (0, 1)),))
    spec = make_tc_matmul(16, 32, 64, a=View.contiguous("float16", (16, 64)), b=View.contiguous("float16", (64, 32)),
                          epilogue=ep)
    call = cublas.plan_gemm(spec)
    assert call.in_dtype == "float16" and call.out_dtype == "float32" and call.stride_c == 16 * 32
    e = cublas.epilogue_spec(spec)
    assert e.inputs[0].dtype == "float32" and e.outs[0].dtype == "float16"


def test_decide_times_once_and_caches(monkeypatch, tmp_path):
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path))
    spec = make_matmul(64, 64, 64)
    call = cublas.plan_gemm(spec)
    timed = []

    def timings():
        timed.append(1)
        return 3.0, 1.5

    key = cublas._choice_key(spec, call, ("90", "120900"))
    first = cublas.decide("auto", spec, call, timings, key)
    assert first["choice"] == "cublas" and first["reason"] == "timed on this device" and first["cublas_ms"] == 1.5
    again = cublas.decide("auto", spec, call, timings, key)
    assert again["choice"] == "cublas" and again["reason"] == "cached timing" and timed == [1]
    # another GPU (compute capability) or cuBLAS is another key: timed again
    assert cublas._choice_key(spec, call, ("80", "120900")) != key
    # a corrupt entry is timed again, not trusted
    (path,) = cache_dir("cuda-gemm").glob("*.json")
    path.write_text("{")
    assert cublas.decide("auto", spec, call, lambda: (1.0, 2.0), key)["choice"] == "generated"
    assert json.loads(path.read_text())["choice"] == "generated"
    assert cublas.decide("generated", spec, call, None, key)["choice"] == "generated"


def test_unknown_mode_is_one_line():
    with pytest.raises(GraphoptError, match=r"^gemm='fast': use one of 'auto', 'generated', 'cublas'$"):
        cublas.check_mode("fast")


# -- the launch plan on the stand-in -------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _gemm_graph():
    """A plain MatMul, a Gemm with transB, alpha and a bias (+Relu after fusion), a broadcast
    batched MatMul with a residual, a float16 MatMul."""
    b = GraphBuilder()
    x = b.input("x", (6, 12))
    h = b.op("MatMul", x, w(12, 16))
    g = b.op("Relu", b.op("Gemm", h, w(10, 16), w(10), transB=1, alpha=0.5))
    t = b.input("t", (3, 10, 4))
    bm = b.op("Add", b.op("MatMul", g, t), w(6, 4))  # (3, 6, 4): A broadcast over the batch
    hx = b.input("hx", (8, 16), "float16")
    hy = b.op("MatMul", hx, w(16, 8, dtype=np.float16))
    b.output(h, "h")
    b.output(bm, "bm")
    b.output(hy, "hy")
    return b.graph


def gemm_graph():
    return _gemm_graph().clone()


def feeds(seed=0):
    r = np.random.default_rng(seed)
    return {"x": r.standard_normal((6, 12)).astype(np.float32), "t": r.standard_normal((3, 10, 4)).astype(np.float32),
            "hx": r.standard_normal((8, 16)).astype(np.float16)}


def check(outs, f):
    for name, got, want in zip(("h", "bm", "hy"), outs, run_reference(gemm_graph(), f)):
        tol = 2e-3 if name == "hy" else 1e-4
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=tol, atol=tol, err_msg=name)


def test_cublas_mode_runs_every_gemm_on_cublas_with_the_generated_epilogue(fake_gpu):
    cp, _ = fake_gpu
    m = graphopt.compile(gemm_graph(), backend="cuda", gemm="cublas")
    gemm = m.stats["gemm"]
    assert gemm["mode"] == "cublas" and len(gemm["cublas"]) == 4 and gemm["generated"] == []
    for seed in range(3):  # direct, then captured, then replayed
        cp.blas.calls.clear()
        f = feeds(seed)
        check(m(*f.values()), f)
        assert len(cp.blas.calls) == 4
    assert m.executable.cuda_graph is not None
    calls = cp.blas.calls
    assert {c["batch"] for c in calls} == {1, 3} and {c["transa"] for c in calls} == {cublas.OP_N, cublas.OP_T}
    assert all(c["computeType"] == cublas.COMPUTE_32F for c in calls)
    # epilogues (the bias+Relu of the Gemm, the residual Add) run as generated kernels after the call
    assert sum(1 for c in gemm["choices"].values() if c["choice"] == "cublas") == 4
    assert any(c["Ctype"] == 0 for c in calls) and any(c["Ctype"] == 2 for c in calls)  # fp32 acc, fp16 direct


def test_generated_mode_changes_nothing(fake_gpu, monkeypatch):
    cp, _ = fake_gpu
    monkeypatch.setattr(cublas, "time_on_device", lambda *a, **k: pytest.fail("timed under gemm='generated'"))
    m = graphopt.compile(gemm_graph(), backend="cuda", gemm="generated")
    exe = m.executable
    assert len(cp.loaded_cubins) == exe.stats["kernels"]  # no epilogue kernels
    assert [s.fn.name for s in exe.steps] == [l.kernel.name for l in exe.lowered.launches]
    assert m.stats["gemm"]["cublas"] == [] and len(m.stats["gemm"]["generated"]) == 4
    f = feeds(1)
    check(m(*f.values()), f)
    assert cp.blas.calls == []


def test_auto_keeps_the_faster_per_shape_and_reuses_the_choice(fake_gpu, monkeypatch):
    cp, _ = fake_gpu
    timed = []

    def fake_time(run, stream, reps=cublas.REPS):  # cuBLAS wins on batched GEMMs only
        timed.append(run.kind)
        return (0.5 if run.spec.batch else 2.0) if run.kind == "cublas" else 1.0

    monkeypatch.setattr(cublas, "time_on_device", fake_time)
    m = graphopt.compile(gemm_graph(), backend="cuda")
    gemm = m.stats["gemm"]
    assert gemm["mode"] == "auto" and len(gemm["cublas"]) == 1 and len(gemm["generated"]) == 3
    (batched,) = gemm["cublas"]
    assert gemm["choices"][batched]["shape"] == "6x4x10 batch [3]"
    assert gemm["choices"][batched]["cublas_ms"] == 0.5 and len(timed) == 8
    f = feeds(2)
    cp.blas.calls.clear()
    check(m(*f.values()), f)
    assert [c["batch"] for c in cp.blas.calls] == [3]
    # a second compile (another process, same GPU): the choices come from the cache, nothing is timed
    timed.clear()
    m2 = graphopt.compile(gemm_graph(), backend="cuda")
    assert timed == [] and m2.stats["gemm"]["cublas"] == gemm["cublas"]
    assert {c["reason"] for c in m2.stats["gemm"]["choices"].values()} == {"cached timing"}


def test_a_refused_capture_runs_without_a_cuda_graph(fake_gpu, monkeypatch):
    cp, _ = fake_gpu
    m = graphopt.compile(gemm_graph(), backend="cuda", gemm="cublas")
    stream = m.executable.stream

    def refuse():
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(stream, "begin_capture", refuse)
    for seed in range(3):
        f = feeds(seed)
        check(m(*f.values()), f)
    assert m.executable.cuda_graph is None
    assert m.stats["cuda_graph"].startswith("off: capture failed (RuntimeError: operation not permitted")


def test_emulation_has_no_cublas():
    with pytest.raises(GraphoptError, match=r"^gemm='cublas' needs the 'cuda' backend"):
        graphopt.compile(gemm_graph(), backend="cuda-emu", gemm="cublas")
    with pytest.raises(GraphoptError, match=r"^gemm='x': use one of"):
        graphopt.compile(gemm_graph(), backend="cuda-emu", gemm="x")
