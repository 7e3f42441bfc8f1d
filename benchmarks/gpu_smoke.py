"""The first thing a GPU session runs (about 30 s): does the `cuda` backend work on this device at all?

    python3 benchmarks/gpu_smoke.py

Prints the device and versions, then for a few whole graphs of the emulation tests (a CNN, GEMMs
with epilogues, float16 on tensor cores, attention) compiles them for ``cuda`` (NVRTC for this
device's SM), runs each three times -- direct launches, capture and replay, replay -- and compares
with the NumPy CPU reference at the emulation test's tolerance, the replays bit for bit with the
first run. One ``smoke <case>: PASS|FAIL ...`` line per case as soon as it is known; the exit
status is the number of failures (0: everything passed). Without a GPU it exits 2 at once, with
the backend's reason.
"""
from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "plugins" / "cuda")]

# (case in test_cuda_backend.GRAPHS, rtol/atol): whole graphs covering the main kernel families
CASES = {"cnn_ops": 1e-4, "gemm_family": 1e-4, "fused_epilogues": 1e-4, "float16_on_tensor_cores": 1e-2,
         "attention_layouts": 1e-4, "normalizations": 1e-4}


def versions() -> str:
    import cupy

    from graphopt.plugins.cuda import device
    from graphopt.plugins.cuda.compile_nvrtc import nvrtc_version

    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return (f"device {name}, compute capability {device.compute_capability()}, "
            f"{props['multiProcessorCount']} SMs; driver {cupy.cuda.runtime.driverGetVersion()}, "
            f"runtime {cupy.cuda.runtime.runtimeGetVersion()}, NVRTC {'.'.join(map(str, nvrtc_version()))}, "
            f"CuPy {cupy.__version__}, NumPy {np.__version__}")


def run_case(name: str, tol: float) -> str:
    from graphopt.plugin_loader import get_backend
    from graphopt.plugins.cpu import run_reference
    from test_cuda_backend import GRAPHS

    _, build = GRAPHS[name]
    g, feeds = build()
    want = run_reference(g, feeds)
    t0 = time.perf_counter()
    exe = get_backend("cuda").compile(g)
    compile_s = time.perf_counter() - t0
    runs = [exe.run(feeds) for _ in range(3)]
    worst = 0.0
    for v, got, ref in zip(g.outputs, runs[0], want):
        if got.shape != ref.shape or got.dtype != ref.dtype:
            raise AssertionError(f"{v.name}: {got.dtype}{got.shape} vs the reference's {ref.dtype}{ref.shape}")
        np.testing.assert_allclose(got.astype(np.float32), ref.astype(np.float32), rtol=tol, atol=tol, err_msg=v.name)
        if got.size:
            worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))))
    for later in runs[1:]:
        for a, b in zip(later, runs[0]):
            np.testing.assert_array_equal(a, b, strict=True)
    return (f"max abs err {worst:.2e}, {exe.stats['kernels']} kernels, compile {compile_s:.1f}s, "
            f"cuda_graph: {exe.stats['cuda_graph']}")


def main() -> int:
    from graphopt.plugin_loader import get_backend

    ok, why = get_backend("cuda").is_available()
    if not ok:
        print(f"smoke: no GPU: {why}", flush=True)
        return 2
    print(f"smoke: {versions()}", flush=True)
    failures = 0
    for name, tol in CASES.items():
        t0 = time.perf_counter()
        try:
            detail = run_case(name, tol)
            print(f"smoke {name}: PASS in {time.perf_counter() - t0:.1f}s ({detail})", flush=True)
        except Exception as exc:
            failures += 1
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            print(f"smoke {name}: FAIL {type(exc).__name__}: {first}", flush=True)
            traceback.print_exc(limit=-4)
    print(f"smoke: {len(CASES) - failures} of {len(CASES)} passed", flush=True)
    return failures


if __name__ == "__main__":
    sys.exit(main())
