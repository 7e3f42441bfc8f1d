"""benchmarks/gpu_smoke.py, the first step of a GPU session, run on the CuPy stand-in: its cases
compile for ``cuda`` (real NVRTC), run three times against the CPU reference, and print one
PASS/FAIL line each; a wrong result is a FAIL line and a non-zero exit, not a crash."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from cuda_harness import needs_emu
from fake_cupy import fake_gpu  # noqa: F401  (the fixture)

pytestmark = needs_emu
SMOKE = Path(__file__).resolve().parents[3] / "benchmarks" / "gpu_smoke.py"


@pytest.fixture
def smoke():
    spec = importlib.util.spec_from_file_location("gpu_smoke", SMOKE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_smoke_passes_on_a_working_backend(smoke, fake_gpu, monkeypatch, capsys):
    monkeypatch.setattr(smoke, "CASES", {"gemm_family": 1e-4})
    monkeypatch.setattr(smoke, "versions", lambda: "device stand-in")
    assert smoke.main() == 0
    out = capsys.readouterr().out
    assert "smoke gemm_family: PASS" in out and "cuda_graph: captured" in out and "smoke: 1 of 1 passed" in out


def test_smoke_reports_a_wrong_result_as_a_failure(smoke, fake_gpu, monkeypatch, capsys):
    import graphopt.plugins.cpu as cpu

    real = cpu.run_reference
    monkeypatch.setattr(cpu, "run_reference", lambda g, f: [np.asarray(r) + 1 for r in real(g, f)])
    monkeypatch.setattr(smoke, "CASES", {"gemm_family": 1e-4})
    monkeypatch.setattr(smoke, "versions", lambda: "device stand-in")
    assert smoke.main() == 1
    assert "smoke gemm_family: FAIL AssertionError" in capsys.readouterr().out
