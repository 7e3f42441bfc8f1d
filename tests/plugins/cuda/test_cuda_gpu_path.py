"""The `cuda` backend's own code (NVRTC cache keys, device buffers, arena views, launch
arguments, CUDA-graph capture and replay) run against a stand-in for CuPy whose
"device" is host memory and whose kernels are the same kernels under emulation.
What it cannot show is the real driver; benchmarks/bench_cuda.py does that on a GPU."""
import numpy as np

from cuda_harness import needs_emu
from fake_cupy import fake_gpu  # noqa: F401  (the fixture)
from graphopt.builder import GraphBuilder
from graphopt.plugin_loader import get_backend
from graphopt.plugins.cpu import run_reference
from graphopt.plugins.cuda import compile_nvrtc

pytestmark = needs_emu


def mlp():
    b = GraphBuilder()
    x = b.input("x", (5, 12))
    rng = np.random.default_rng(0)
    h = b.op("Relu", b.op("Add", b.op("MatMul", x, rng.standard_normal((12, 16)).astype(np.float32)),
                          rng.standard_normal(16).astype(np.float32)))
    y = b.op("Softmax", b.op("MatMul", h, rng.standard_normal((16, 3)).astype(np.float32)), axis=-1)
    b.output(y, "y")
    b.output(h, "h")
    return b.graph


def test_cuda_backend_runs_its_plan_and_replays_a_cuda_graph(fake_gpu):
    cp, compiles = fake_gpu
    g = mlp()
    be = get_backend("cuda")
    assert be.is_available() == (True, "")
    exe = be.compile(g)
    n = exe.stats["kernels"]  # one translation unit, one cubin per kernel
    assert compiles == [("sm_90", compile_nvrtc.NVRTC_OPTIONS)] * n and len(cp.loaded_cubins) == n
    per_run = exe.stats["launches"]
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal((5, 12)).astype(np.float32)
        got = exe.run({"x": x})
        want = run_reference(g, {"x": x})
        for a, r in zip(got, want):
            np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5)
    # run 1 launches directly, run 2 captures and replays, run 3 only replays: same kernels every time
    assert len(cp.launches) == 3 * per_run
    assert cp.launches[:per_run] == cp.launches[per_run:2 * per_run] == cp.launches[2 * per_run:]
    assert exe.cuda_graph is not None


def test_nvrtc_binaries_are_cached_by_content(fake_gpu):
    cp, compiles = fake_gpu
    g = mlp()
    get_backend("cuda").compile(g)
    get_backend("cuda").compile(g)
    n = len(cp.loaded_cubins) // 2
    assert len(compiles) == n  # the second compile: a cache hit for every kernel
    assert cp.loaded_cubins[:n] == cp.loaded_cubins[n:]


def test_a_gpu_older_than_sm80_is_refused_with_the_reason(fake_gpu):
    cp, _ = fake_gpu
    cp.COMPUTE_CAPABILITY = "75"
    ok, why = get_backend("cuda").is_available()
    assert not ok and why.startswith("the GPU has compute capability 7.5; the cuda backend needs 8.0 or newer")
